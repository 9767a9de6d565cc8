#!/usr/bin/env bash
# Reproducible recipe for armo's shipped default model (embedded SmolLM2-135M-Instruct backbone),
# using only armo's own commands, trained on the permissively licensed sources of ../shared/data.
# Sized for a 2-core CPU (under an hour from scratch): subsampled rows, prompts truncated to MAXLEN tokens,
# and a gate of 3 x 256 (the paper's 3 x 1024 is sized for an 8B backbone; this keeps the shipped heads ~1 MB).
# On a GPU machine raise the sizes: N_RATINGS=5650 N_PAIRS=3800 MAXLEN=2048 GATE_HIDDEN=1024 bash examples/train_default.sh
set -euo pipefail
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/default}
OUT=${OUT:-armo_cli/default_model}
N_RATINGS=${N_RATINGS:-2500}   # of 5,650 permissive rating rows
N_PAIRS=${N_PAIRS:-2500}       # of 4,205 permissive pairs; the next N_HELDOUT are held out
N_HELDOUT=${N_HELDOUT:-400}
MAXLEN=${MAXLEN:-512}          # training rows
EVAL_MAXLEN=${EVAL_MAXLEN:-1024}  # evaluation rows: long enough that few are skipped
STEPS=${STEPS:-2000}
GATE_HIDDEN=${GATE_HIDDEN:-256}
mkdir -p "$WORK"

# Licences: MIT (UltraFeedback, HH-RLHF, USR Topical-Chat), Apache-2.0 (Prometheus, PandaLM), CC-BY-4.0 (XSTest).
R_SRC=(--where source=ultrafeedback --where source=xstest --where source=prometheus --where source=unieval_topical_chat)
P_SRC=(--where source=hh_rlhf --where source=ultrafeedback --where source=pandalm)
armo sample "$DATA/ratings.jsonl.gz" "${R_SRC[@]}" --n "$N_RATINGS" --seed 0 -o "$WORK/ratings.jsonl"
armo sample "$DATA/pairs.jsonl.gz" "${P_SRC[@]}" --n "$N_PAIRS" --seed 0 -o "$WORK/pairs.jsonl"
armo sample "$DATA/pairs.jsonl.gz" "${P_SRC[@]}" --skip "$N_PAIRS" --n "$N_HELDOUT" --seed 0 -o "$WORK/heldout.jsonl"

X=(--max-length "$MAXLEN" --overflow truncate-prompt --resume)
armo extract "$WORK/ratings.jsonl" -o "$WORK/ratings.features.safetensors" "${X[@]}"
armo extract "$WORK/pairs.jsonl" -o "$WORK/pairs.features.safetensors" "${X[@]}"

# Stage 1 with a length-derived verbosity objective (no source rates verbosity). Declared rating ranges.
armo fit-regression "$WORK/ratings.features.safetensors" --length-objective verbosity \
  --range ultrafeedback-overall=1:10 --range prometheus-rubric=1:5 \
  --range xstest-complied=0:1 --range xstest-appropriate=0:1 \
  --range topicalchat-understandability=0:1 --range topicalchat-groundedness=0:1 \
  --range topicalchat-naturalness=1:3 --range topicalchat-coherence=1:3 --range topicalchat-engagingness=1:3 \
  --range topicalchat-overall=1:5 \
  -o "$WORK/regression.safetensors" --json "$WORK/regression.json"
# Decorrelation on the training pairs as the reference set; the gate on the same pairs.
armo fit-decorrelation "$WORK/pairs.features.safetensors" -r "$WORK/regression.safetensors" \
  -o "$WORK/decorrelation.safetensors" --json "$WORK/decorrelation.json"
armo fit-gating "$WORK/pairs.features.safetensors" -r "$WORK/regression.safetensors" \
  -t "$WORK/decorrelation.safetensors" --steps "$STEPS" --hidden-dim "$GATE_HIDDEN" -o "$WORK/gating.safetensors" --json "$WORK/gating.json"
# The same gate without decorrelation, for the model card's comparison.
armo fit-gating "$WORK/pairs.features.safetensors" -r "$WORK/regression.safetensors" \
  --steps "$STEPS" --hidden-dim "$GATE_HIDDEN" -o "$WORK/gating-nodecor.safetensors" -q
rm -rf "$OUT.new"
armo assemble "$OUT.new" -r "$WORK/regression.safetensors" -t "$WORK/decorrelation.safetensors" -g "$WORK/gating.safetensors"

# Evaluation sets: the held-out pairs and dev-eval (never used in training).
# evaluation data is taken as it is: rows it cannot use (an empty response in dev-eval) are listed, not fatal
E=(--max-length "$EVAL_MAXLEN" --overflow truncate-prompt --on-error skip --resume)
armo extract "$WORK/heldout.jsonl" -o "$WORK/heldout.features.safetensors" "${E[@]}"
armo extract "$DATA/dev-eval.jsonl.gz" -o "$WORK/dev-eval.features.safetensors" "${E[@]}"
python benchmarks/default_model_quality.py --work "$WORK" --model "$OUT.new" --produced-by \
  "N_RATINGS=$N_RATINGS N_PAIRS=$N_PAIRS N_HELDOUT=$N_HELDOUT MAXLEN=$MAXLEN EVAL_MAXLEN=$EVAL_MAXLEN STEPS=$STEPS GATE_HIDDEN=$GATE_HIDDEN bash examples/train_default.sh"
rm -rf "$OUT" && mv "$OUT.new" "$OUT"
echo "default model written to $OUT"
