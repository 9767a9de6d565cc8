#!/usr/bin/env bash
# The last-layer arm of the default model's ablation: the same pairs at hidden layer -1 (a full pass, about twice
# the cost of layer -18), a pairs-only model fitted on them, and the RMB selection, held-out, dev-eval and RMB
# features at -1.
# recipes/default_model_quality.py compares it with the pairs-only model at the chosen layer (same rows).
# Run after recipes/train_default.sh (it reads the slices in WORK); resumable like every extraction.
set -euo pipefail
DATA=${DATA:-../shared/data}
WORK=${WORK:-runs/default}
MAXLEN=${MAXLEN:-512}
EVAL_MAXLEN=${EVAL_MAXLEN:-1024}
SETS=${SETS:-"rmb-select heldout dev-eval rmb-eval"}  # rmb-select first: the layer rule reads it
A=$WORK/last-layer
mkdir -p "$A"
armo extract "$WORK/pairs.jsonl" -o "$A/pairs.features.safetensors" --layer -1 --max-length "$MAXLEN" \
  --overflow truncate-prompt --resume
for s in $SETS; do
  src=$WORK/$s.jsonl; [[ $s == dev-eval ]] && src=$DATA/dev-eval.jsonl.gz
  armo extract "$src" -o "$A/$s.features.safetensors" --layer -1 --max-length "$EVAL_MAXLEN" \
    --overflow truncate-prompt --on-error skip --resume
done
read -r -a flags < "$WORK/heads/gate-flags"  # the chosen gate's settings (recipes/fit_default.sh)
bash recipes/fit_pairs_only.sh "$A/pairs.features.safetensors" "$A/heads" "$A/models/pairsonly" "${flags[@]}"
echo "last-layer arm written to $A"
