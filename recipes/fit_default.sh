#!/usr/bin/env bash
# The heads of armo's default model, fitted on the features that recipes/train_default.sh extracted (minutes).
# It fits stage 1, decorrelation and a few gate candidates; the gate is chosen on the RMB selection slice (pairs
# from sources the model never trained on), the ablation models are built with the same commands, and
# recipes/default_model_quality.py measures all of them on the three evaluation sets and writes the card.
set -euo pipefail
WORK=${WORK:-runs/default}
OUT=${OUT:-armo_cli/default_model}
PRODUCED_BY=${PRODUCED_BY:-bash recipes/train_default.sh}
F=$WORK/heads
M=$WORK/models
mkdir -p "$F" "$M"
RANGES=(--range ultrafeedback-overall=1:10 --range prometheus-rubric=1:5
  --range xstest-complied=0:1 --range xstest-appropriate=0:1
  --range topicalchat-understandability=0:1 --range topicalchat-groundedness=0:1
  --range topicalchat-naturalness=1:3 --range topicalchat-coherence=1:3 --range topicalchat-engagingness=1:3
  --range topicalchat-overall=1:5)
PAIRS=$WORK/pairs.features.safetensors
# #46: rating and preference heads fitted blind to form (--invariant-to the training swaps, the top INVARIANT_RANK
# directions; studies/style_candidates_table.py's rule picked the rank). Empty: the heads before #46, which see form.
INVARIANT_RANK=${INVARIANT_RANK-16}  # adopted by the rule (model card, #46); INVARIANT_RANK= fits today's heads
INV=(${INVARIANT_RANK:+--invariant-to "$WORK/swaps.features.safetensors" --invariant-rank "$INVARIANT_RANK"})

# Stage 1: ridge objectives from the ratings, a length objective (no source rates verbosity), and a preference
# objective: a Bradley-Terry head on the training pairs, cross-fitted by prompt (5 folds).
armo fit-regression "$WORK/ratings.features.safetensors" --length-objective verbosity "${RANGES[@]}" \
  --pairs "$PAIRS" --preference-objective preference "${INV[@]}" -o "$F/regression.safetensors" --json "$F/regression.json" -q
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
CHOSEN=$(python recipes/gate_selection.py --select "$WORK/rmb-select.features.safetensors" \
  --json "$WORK/gate-selection.json" "${CANDIDATES[@]}")
FLAGS=""
for g in "${GATES[@]}"; do [[ ${g%%:*} == "$CHOSEN" ]] && FLAGS=${g#*:}; done
read -r -a flags <<< "$FLAGS"
echo "$FLAGS" > "$F/gate-flags"  # for recipes/ablate_last_layer.sh

# Ablations with the chosen gate settings: without decorrelation; without the preference objective.
armo fit-gating "$PAIRS" -r "$F/regression.safetensors" "${flags[@]}" -o "$F/gating-nodecor.safetensors" -q
armo assemble "$M/nodecor" -r "$F/regression.safetensors" -g "$F/gating-nodecor.safetensors"
armo fit-gating "$PAIRS" -r "$F/regression-nopref.safetensors" -t "$F/decorrelation-nopref.safetensors" "${flags[@]}" \
  -o "$F/gating-nopref.safetensors" -q
armo assemble "$M/nopref" -r "$F/regression-nopref.safetensors" -t "$F/decorrelation-nopref.safetensors" \
  -g "$F/gating-nopref.safetensors"

# A pairs-only model (preference + length objectives, no ratings), as a user with only pairs would build it.
bash recipes/fit_pairs_only.sh "$PAIRS" "$F" "$M/pairsonly" "${flags[@]}"

# #33's candidates: today's recipe; + the LM objectives (where the features carry them: train_default.sh's LM=); the
# same two on a stage-0 adapter's features (where recipes/train_stage0.sh extracted them into S0). Each is fitted
# with the same commands and the chosen gate settings; recipes/default_model_candidates.py applies the rule (on
# the RMB selection slice, checked on the evaluation sets) and writes WORK/candidates.json.
S0=${S0:-runs/default-stage0}
S0_LM=${S0_LM:-$S0}  # the adapter's features with the LM objectives, where they were extracted apart from S0's
candidate() {  # NAME FEATURES_DIR [fit-regression flags...]: heads in FEATURES_DIR/heads, the model in M/NAME
  local name=$1 dir=$2; shift 2
  local h=$dir/heads
  mkdir -p "$h"
  armo fit-regression "$dir/ratings.features.safetensors" --length-objective verbosity "${RANGES[@]}" \
    --pairs "$dir/pairs.features.safetensors" --preference-objective preference "$@" -o "$h/regression-$name.safetensors" -q
  armo fit-decorrelation "$dir/pairs.features.safetensors" -r "$h/regression-$name.safetensors" \
    -o "$h/decorrelation-$name.safetensors" -q
  armo fit-gating "$dir/pairs.features.safetensors" -r "$h/regression-$name.safetensors" \
    -t "$h/decorrelation-$name.safetensors" "${flags[@]}" -o "$h/gating-$name.safetensors" -q
  armo assemble "$M/$name" -r "$h/regression-$name.safetensors" -t "$h/decorrelation-$name.safetensors" \
    -g "$h/gating-$name.safetensors"
}
has_lm() { python -c "import sys; from armo_cli.features import Features; sys.exit(0 if Features.load(sys.argv[1]).meta.lm_objectives else 1)" "$1"; }
CANDS=("today=$M/$CHOSEN")
FEATS=$WORK
PICK=(-r "$F/regression.safetensors" -t "$F/decorrelation.safetensors" -g "$F/gating-$CHOSEN.safetensors")
if has_lm "$PAIRS"; then
  candidate lm "$WORK" --lm-objectives all
  CANDS+=("lm=$M/lm")
fi
if [[ -f $S0/pairs.features.safetensors && -f $S0/ratings.features.safetensors ]]; then
  candidate adapter "$S0"
  CANDS+=("adapter=$M/adapter@$S0")
fi
if [[ -f $S0_LM/pairs.features.safetensors && -f $S0_LM/ratings.features.safetensors ]] \
    && has_lm "$S0_LM/pairs.features.safetensors"; then
  candidate adapter-lm "$S0_LM" --lm-objectives all
  CANDS+=("adapter-lm=$M/adapter-lm@$S0_LM")
fi
if (( ${#CANDS[@]} > 1 )); then
  WINNER=$(python recipes/default_model_candidates.py --work "$WORK" --json "$WORK/candidates.json" "${CANDS[@]}" | tail -1)
  if [[ $WINNER != today ]]; then
    case $WINNER in adapter) FEATS=$S0 ;; adapter-lm) FEATS=$S0_LM ;; *) FEATS=$WORK ;; esac
    h=$FEATS/heads
    PICK=(-r "$h/regression-$WINNER.safetensors" -t "$h/decorrelation-$WINNER.safetensors" -g "$h/gating-$WINNER.safetensors")
    [[ $WINNER == adapter* ]] && PICK+=(--ship-adapter)  # the model carries its stage-0 adapter (backbone-adapter/)
  fi
  echo "candidates: $WINNER chosen (WORK/candidates.json)"
fi

# where the gate gives the LM objectives no weight, would a fixed share pay? (studies/lm_share_study.py; the card's line)
if [[ -d $M/lm ]]; then
  python studies/lm_share_study.py --work "$WORK" --model "$M/lm" --today "$M/$CHOSEN" \
    --json "${STUDIES:-studies/results}/lm_share_study.json" > "$WORK/lm_share_study.txt"
fi

rm -rf "$OUT.new"
armo assemble "$OUT.new" "${PICK[@]}"
# an adapter's model is measured on its own extraction's features (FEATS, set with the winner)
python recipes/default_model_quality.py --work "$WORK" --features "$FEATS" --model "$OUT.new" --produced-by "$PRODUCED_BY" \
  --rmb-eval "${RMB_EVAL:-rmb-eval700}" --previous-card "$OUT/MODEL_CARD.md"
rm -rf "$OUT" && mv "$OUT.new" "$OUT"
echo "default model written to $OUT (gate: $CHOSEN)"
