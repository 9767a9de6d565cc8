#!/usr/bin/env bash
# #46's candidates beside today's recipe, on recipes/train_default.sh's features (extracted with the style counts):
#   - today:        decorrelation against verbosity (Spearman, over the training pairs), as shipped
#   - style-set:    + a `markdown` style objective; decorrelation against verbosity and markdown over the set (Pearson)
#   - style-prompt: the same, zeroed among each prompt's responses (--within prompt), where a pair's contrast lives
# Each with the shipped gate's settings (GATE_FLAGS), measured by `armo evaluate --features` on every evaluation set
# whose features exist (JSON reports in WORK/style/). The format probe (studies/style_probe.py) then scores the models.
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
read -r -a gate <<< "$GATE_FLAGS"

armo fit-regression "$WORK/ratings.features.safetensors" --length-objective verbosity "${RANGES[@]}" \
  --pairs "$PAIRS" --preference-objective preference -o "$S/regression.safetensors" -q
armo fit-regression "$WORK/ratings.features.safetensors" --length-objective verbosity --style-objectives markdown \
  "${RANGES[@]}" --pairs "$PAIRS" --preference-objective preference -o "$S/regression-style.safetensors" -q

fit() {  # NAME REGRESSION [fit-decorrelation flags...]
  local name=$1 reg=$2; shift 2
  armo fit-decorrelation "$PAIRS" -r "$reg" -o "$S/decorrelation-$name.safetensors" --json "$S/decorrelation-$name.json" "$@" -q
  armo fit-gating "$PAIRS" -r "$reg" -t "$S/decorrelation-$name.safetensors" "${gate[@]}" -o "$S/gating-$name.safetensors" -q
  armo assemble "$S/model-$name" -r "$reg" -t "$S/decorrelation-$name.safetensors" -g "$S/gating-$name.safetensors"
  for set in heldout dev-eval rmb-eval rmb-select; do
    [[ -f $WORK/$set.features.safetensors ]] || continue
    armo evaluate -m "$S/model-$name" --features "$WORK/$set.features.safetensors" -o "$S/eval-$name-$set.json" -q
  done
}
fit today "$S/regression.safetensors"
fit style-set "$S/regression-style.safetensors" --against verbosity,markdown --method pearson
fit style-prompt "$S/regression-style.safetensors" --against verbosity,markdown --method pearson --within prompt
echo "style candidates in $S"
