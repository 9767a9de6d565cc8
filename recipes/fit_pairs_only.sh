#!/usr/bin/env bash
# A model from preference pairs alone: a Bradley-Terry preference objective plus a length objective, decorrelated
# against length, and a gate (with one objective left, it learns only the scale).
# Usage: fit_pairs_only.sh PAIR_FEATURES HEADS_DIR MODEL_DIR [fit-gating flags...]
set -euo pipefail
PAIRS=$1; F=$2; MODEL=$3; shift 3
mkdir -p "$F"
armo fit-regression --pairs "$PAIRS" --preference-objective preference --length-objective verbosity \
  -o "$F/regression-pairsonly.safetensors" -q
armo fit-decorrelation "$PAIRS" -r "$F/regression-pairsonly.safetensors" -o "$F/decorrelation-pairsonly.safetensors" -q
armo fit-gating "$PAIRS" -r "$F/regression-pairsonly.safetensors" -t "$F/decorrelation-pairsonly.safetensors" "$@" \
  -o "$F/gating-pairsonly.safetensors" -q
armo assemble "$MODEL" -r "$F/regression-pairsonly.safetensors" -t "$F/decorrelation-pairsonly.safetensors" \
  -g "$F/gating-pairsonly.safetensors"
