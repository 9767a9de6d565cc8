#!/usr/bin/env bash
# Stage 0 for the default model's candidates (#33): a LoRA adapter on the embedded backbone, tuned with a
# Bradley-Terry loss on the recipe's own training pairs (recipes/train_default.sh writes them to WORK), then every
# set extracted again through it into S0, where recipes/fit_default.sh finds them. Hours on a 2-core CPU; both steps
# resume (--resume). Measured here (2026-12-06): training 940k tokens in 1.2 h (223 tokens/s, other work beside it);
# the extraction without the LM objectives (LM=, the `adapter` candidate alone) 57 min at 1,160-1,330 tokens/s; with
# them (the default: one extraction serves `adapter` and `adapter-lm`) the pass runs all 30 blocks and the PMI pass,
# several hours.
#   - the adapter: rank 8 on the attention projections, one epoch at lr 1e-4; the head starts as the fitted
#     preference objective (--init-head), not zero, so that the adapter gets a gradient from the first step (with
#     both the head and LoRA's B at zero, nothing moves until the head has grown: 0.692 -> 0.684 in 50 steps here)
#   - its Bradley-Terry head reads what the features will read (LAYER and POOLING, as train_default.sh): the blocks
#     above layer 13 cannot change those features, so they get no adapter and are not run in training (about twice
#     as fast as tuning the whole backbone), and the adapter is 1.6 MB in fp32 (all seven linear layers: 4.2 MB, too
#     near the shipped model's 5 MB)
set -euo pipefail
WORK=${WORK:-runs/default}
S0=${S0:-runs/default-stage0}
MAXLEN=${MAXLEN:-512}
LAYER=${LAYER:--18}
POOLING=${POOLING:-mean}
mkdir -p "$S0"
INIT=${INIT:-$WORK/heads/regression.safetensors}  # the head starts as today's preference objective (fit_default.sh)
[[ -f $WORK/pairs.jsonl && -f $INIT ]] || { echo "run recipes/train_default.sh first: it writes $WORK/pairs.jsonl and (fitting) $INIT" >&2; exit 2; }
BASE=${BASE:-}                  # the base backbone (default: the embedded one; a dry run gives a tiny one)
armo tune-backbone "$WORK/pairs.jsonl" -o "$S0/adapter" ${BASE:+--backbone "$BASE"} --rank "${RANK:-8}" \
  --layer "$LAYER" --pooling "$POOLING" --init-head "$INIT" \
  --target-modules "${TARGETS:-q_proj,k_proj,v_proj,o_proj}" --epochs "${EPOCHS:-1}" --lr "${LR:-1e-4}" \
  --max-length "$MAXLEN" --overflow truncate-prompt --on-error skip --resume
WORK=$S0 BACKBONE=$S0/adapter LAYER=$LAYER POOLING=$POOLING FIT=0 bash recipes/train_default.sh
