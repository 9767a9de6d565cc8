#!/usr/bin/env bash
# The #37/#50 GPU run as one command for a lent GPU machine (no network there, armo not installed): serve under
# OpenRLHF's load, `annotate` at K=8 against the peers' batch-1 loop, best-of-n rows, tune-backbone's training step
# (LoRA, bf16, gradient checkpointing off and on), the LM objectives' cost and extract's layouts on a long job, at
# Llama-3-8B shape (benchmarks/gpu_serve_jobs.py; peft must be on the device, or carry its wheel in .whl), then the
# #16 table once more for the record of this device (gpu_bench.py --no-flex, if time is left).
# Here, first (both folders are ignored; they travel with `carry`):
#   python benchmarks/gpu_bench.py --prepare gpu_bench_data            (tokenizer + 512 hh_rlhf pairs, 4 MB)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl starlette==1.10.0 uvicorn==0.55.0     (armo serve's extra, 170 KB;
#       anyio, click and h11 are on the device already)
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl peft==0.21.2 accelerate==1.16.0
#       (the stage0 study's LoRA, the versions the tests here run with)
# On the device: run(command="bash benchmarks/gpu_device37.sh", carry=["gpu_bench_data", ".whl"], timeout_s=590)
# Estimated (not yet run on a GPU): about 6 minutes for gpu_serve_jobs.py on an H100; FLEX_TOKENS shortens the
# longest study (default 1M tokens, three extract runs).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "gpu_device37: the serve wheels did not install (carry .whl)"; exit 1; }
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"
timeout "${BENCH_TIMEOUT:-480}" python3 benchmarks/gpu_serve_jobs.py --data gpu_bench_data --json "$OUT/gpu_serve_jobs.json" \
  --flex-tokens "${FLEX_TOKENS:-1000000}" "$@" 2>&1 | tee "$OUT/gpu_serve_jobs.log"
