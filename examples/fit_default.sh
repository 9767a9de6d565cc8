#!/usr/bin/env bash
# The heads of armo's default model, fitted on the features that examples/train_default.sh extracted (minutes).
# It fits stage 1, decorrelation and a few gate candidates; the gate is chosen on the RMB selection slice (pairs
# from sources the model never trained on), the ablation models are built with the same commands, and
# benchmarks/default_model_quality.py measures all of them on the three evaluation sets and writes the card.
set -euo pipefail
WORK=${WORK:-runs/default}
OUT=${OUT:-armo_cli/default_model}
PRODUCED_BY=${PRODUCED_BY:-bash examples/train_default.sh}
F=$WORK/heads
M=$WORK/models
mkdir -p "$F" "$M"
RANGES=(--range ultrafeedback-overall=1:10 --range prometheus-rubric=1:5
  --range xstest-complied=0:1 --range xstest-appropriate=0:1
  --range topicalchat-understandability=0:1 --range topicalchat-groundedness=0:1
  --range topicalchat-naturalness=1:3 --range topicalchat-coherence=1:3 --range topicalchat-engagingness=1:3
  --range topicalchat-overall=1:5)
PAIRS=$WORK/pairs.features.safetensors

# Stage 1: ridge objectives from the ratings, a length objective (no source rates verbosity), and a preference
# objective: a Bradley-Terry head on the training pairs, cross-fitted by prompt (5 folds).
armo fit-regression "$WORK/ratings.features.safetensors" --length-objective verbosity "${RANGES[@]}" \
  --pairs "$PAIRS" --preference-objective preference -o "$F/regression.safetensors" --json "$F/regression.json" -q
# The same without the preference objective (an ablation).
armo fit-regression "$WORK/ratings.features.safetensors" --length-objective verbosity "${RANGES[@]}" \
  -o "$F/regression-nopref.safetensors" -q
# Decorrelation against verbosity, on the training pairs as the reference set (out-of-fold preference rewards).
armo fit-decorrelation "$PAIRS" -r "$F/regression.safetensors" -o "$F/decorrelation.safetensors" --json "$F/decorrelation.json" -q
armo fit-decorrelation "$PAIRS" -r "$F/regression-nopref.safetensors" -o "$F/decorrelation-nopref.safetensors" -q

# Gate candidates: size and regularisation. Each is trained on the training pairs (early stopping on a
# prompt-grouped validation split of them) and scored on the RMB selection slice; the best there is shipped.
GATES=(
  "mlp3x256:--n-hidden 3 --hidden-dim 256 --steps 2000"
  "mlp1x128:--n-hidden 1 --hidden-dim 128 --weight-decay 0.1 --steps 2000"
  "linear:--n-hidden 0 --steps 2000"
  "linear-T100:--n-hidden 0 --temperature 100 --weight-decay 1.0 --steps 2000"   # held near uniform weights
)
CANDIDATES=()
for g in "${GATES[@]}"; do
  name=${g%%:*}; read -r -a flags <<< "${g#*:}"
  armo fit-gating "$PAIRS" -r "$F/regression.safetensors" -t "$F/decorrelation.safetensors" "${flags[@]}" \
    -o "$F/gating-$name.safetensors" --json "$F/gating-$name.json" -q
  armo assemble "$M/$name" -r "$F/regression.safetensors" -t "$F/decorrelation.safetensors" -g "$F/gating-$name.safetensors"
  CANDIDATES+=("$name=$M/$name")
done
CHOSEN=$(python benchmarks/gate_selection.py --select "$WORK/rmb-select.features.safetensors" \
  --json "$WORK/gate-selection.json" "${CANDIDATES[@]}")
FLAGS=""
for g in "${GATES[@]}"; do [[ ${g%%:*} == "$CHOSEN" ]] && FLAGS=${g#*:}; done
read -r -a flags <<< "$FLAGS"
echo "$FLAGS" > "$F/gate-flags"  # for examples/ablate_last_layer.sh

# Ablations with the chosen gate settings: without decorrelation; without the preference objective.
armo fit-gating "$PAIRS" -r "$F/regression.safetensors" "${flags[@]}" -o "$F/gating-nodecor.safetensors" -q
armo assemble "$M/nodecor" -r "$F/regression.safetensors" -g "$F/gating-nodecor.safetensors"
armo fit-gating "$PAIRS" -r "$F/regression-nopref.safetensors" -t "$F/decorrelation-nopref.safetensors" "${flags[@]}" \
  -o "$F/gating-nopref.safetensors" -q
armo assemble "$M/nopref" -r "$F/regression-nopref.safetensors" -t "$F/decorrelation-nopref.safetensors" \
  -g "$F/gating-nopref.safetensors"

# A pairs-only model (preference + length objectives, no ratings), as a user with only pairs would build it.
bash examples/fit_pairs_only.sh "$PAIRS" "$F" "$M/pairsonly" "${flags[@]}"

rm -rf "$OUT.new"
armo assemble "$OUT.new" -r "$F/regression.safetensors" -t "$F/decorrelation.safetensors" -g "$F/gating-$CHOSEN.safetensors"
python benchmarks/default_model_quality.py --work "$WORK" --model "$OUT.new" --produced-by "$PRODUCED_BY"
rm -rf "$OUT" && mv "$OUT.new" "$OUT"
echo "default model written to $OUT (gate: $CHOSEN)"
