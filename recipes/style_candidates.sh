#!/usr/bin/env bash
# #46's candidates beside today's recipe, on recipes/train_default.sh's features (extracted with the style counts):
#   - today:        decorrelation against verbosity (Spearman, over the training pairs), as shipped
#   - style-set:    + a `markdown` style objective; decorrelation against verbosity and markdown over the set (Pearson)
#   - style-prompt: the same, zeroed among each prompt's responses (--within prompt), where a pair's contrast lives
#   - invariant-K:  today's recipe with the rating and preference heads fitted blind to form (--invariant-to): the top
#                   K directions of training responses' form-only swaps (studies/style_swaps.py: markdown against the
#                   same words in prose, padded against not) projected out of the features first
# Each with the shipped gate's settings (GATE_FLAGS), measured by `armo evaluate --features` on every evaluation set
# whose features exist (JSON reports in WORK/style/), and on the style probes' rows (studies/style_probe.py);
# studies/style_candidates_table.py reads them back and applies the rule. rmb-eval700: the first 700 pairs of the RMB
# evaluation slice (a random sample of it), where extracting all 2,000 does not fit the time there is.
set -euo pipefail
WORK=${WORK:-runs/default}
GATE_FLAGS=${GATE_FLAGS:---n-hidden 0 --temperature 100 --weight-decay 1.0 --steps 2000}
S=$WORK/style
mkdir -p "$S"
RANGES=(--range ultrafeedback-overall=1:10 --range prometheus-rubric=1:5
  --range xstest-complied=0:1 --range xstest-appropriate=0:1
  --range topicalchat-understandability=0:1 --range topicalchat-groundedness=0:1
  --range topicalchat-naturalness=1:3 --range topicalchat-coherence=1:3 --range topicalchat-engagingness=1:3
  --range topicalchat-overall=1:5)
PAIRS=$WORK/pairs.features.safetensors
SWAPS=$WORK/swaps.features.safetensors
RANKS=${RANKS:-2 4 8 16 32}
read -r -a gate <<< "$GATE_FLAGS"

# training responses only (the probes are built from held-out pairs), extracted as the training pairs are
python studies/style_swaps.py --input "$WORK/pairs.jsonl" --n-format 300 --n-length 150 -o "$WORK/swaps.jsonl"
armo extract "$WORK/swaps.jsonl" -o "$SWAPS" --layer "${LAYER:--18}" --pooling "${POOLING:-mean}" --max-length 512 \
  --overflow truncate-prompt --on-error skip --resume -q
# the format and length probes of 60 held-out pairs per set (studies/style_probe.py), extracted once for every model
for probe in "heldout=$WORK/heldout.jsonl" "dev-eval=${DATA:-../shared/data}/dev-eval.jsonl.gz" "rmb=$WORK/rmb-eval.jsonl" \
             "rmb-select=$WORK/rmb-select.jsonl"; do
  python studies/style_probe.py --input "${probe#*=}" --n 60 --rows-out "$WORK/probe-${probe%%=*}.jsonl"
  armo extract "$WORK/probe-${probe%%=*}.jsonl" -o "$WORK/probe-${probe%%=*}.features.safetensors" --layer "${LAYER:--18}" \
    --pooling "${POOLING:-mean}" --max-length 1024 --overflow truncate-prompt --on-error skip --resume -q
done

armo fit-regression "$WORK/ratings.features.safetensors" --length-objective verbosity "${RANGES[@]}" \
  --pairs "$PAIRS" --preference-objective preference -o "$S/regression.safetensors" -q
armo fit-regression "$WORK/ratings.features.safetensors" --length-objective verbosity --style-objectives markdown \
  "${RANGES[@]}" --pairs "$PAIRS" --preference-objective preference -o "$S/regression-style.safetensors" -q

fit() {  # NAME REGRESSION [fit-decorrelation flags...]
  local name=$1 reg=$2; shift 2
  armo fit-decorrelation "$PAIRS" -r "$reg" -o "$S/decorrelation-$name.safetensors" --json "$S/decorrelation-$name.json" "$@" -q
  armo fit-gating "$PAIRS" -r "$reg" -t "$S/decorrelation-$name.safetensors" "${gate[@]}" -o "$S/gating-$name.safetensors" -q
  armo assemble "$S/model-$name" -r "$reg" -t "$S/decorrelation-$name.safetensors" -g "$S/gating-$name.safetensors"
  measure "$name" "$S/model-$name"
}
measure() {  # NAME MODEL: every evaluation set whose features exist, and the style probes' rows
  local name=$1 model=$2
  for set in heldout dev-eval rmb-eval rmb-eval700 rmb-select probe-heldout probe-dev-eval probe-rmb probe-rmb-select; do
    [[ -f $WORK/$set.features.safetensors ]] || continue
    armo evaluate -m "$model" --features "$WORK/$set.features.safetensors" -o "$S/eval-$name-$set.json" \
      --pairs-output "$S/pairs-$name-$set.jsonl" -q
  done
}
measure shipped "${SHIPPED:-armo_cli/default_model}"
fit today "$S/regression.safetensors"
fit style-set "$S/regression-style.safetensors" --against verbosity,markdown --method pearson
fit style-prompt "$S/regression-style.safetensors" --against verbosity,markdown --method pearson --within prompt
for k in $RANKS; do
  armo fit-regression "$WORK/ratings.features.safetensors" --length-objective verbosity "${RANGES[@]}" --pairs "$PAIRS" \
    --preference-objective preference --invariant-to "$SWAPS" --invariant-rank "$k" -o "$S/regression-invariant-$k.safetensors" \
    --json "$S/regression-invariant-$k.json" -q
  fit "invariant-$k" "$S/regression-invariant-$k.safetensors"
done
echo "style candidates in $S"
