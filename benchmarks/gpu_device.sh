#!/usr/bin/env bash
# The #16 GPU run as one command for a lent GPU machine (no network there, armo not installed).
# Here, first:   python benchmarks/gpu_bench.py --prepare gpu_bench_data      (tokenizer + 512 hh_rlhf pairs, 4 MB)
# On the device: run(command="bash benchmarks/gpu_device.sh", carry=["gpu_bench_data"], timeout_s=300)
#                (add "--packing flex" for extract in the flex layout; auto is rows for these 512 pairs)
#                (about 2 minutes on an H200 in 2026-11: gpu_bench.py, then extract_host_bench.py)
#                a rerun short of time: "bash benchmarks/gpu_device.sh --no-flex"
# The device image already has torch, transformers, accelerate, typer, rich and safetensors; this path imports
# none of armo's other dependencies (jsonlines, datasets, gguf), so no wheels travel. Checked here with
# transformers 5.17 (the device's) and --tiny. Extra arguments go to gpu_bench.py.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"
# ends inside the device's 10-minute limit, so that the log and any JSON still come back
timeout "${BENCH_TIMEOUT:-500}" python3 benchmarks/gpu_bench.py --data gpu_bench_data --json "$OUT/gpu_bench.json" "$@" \
  2>&1 | tee "$OUT/gpu_bench.log"
# the host's share of extract on this machine's CPU (tokenising one row at a time vs in groups; a null forward)
timeout 60 python3 benchmarks/extract_host_bench.py --data gpu_bench_data 2>&1 | tee "$OUT/extract_host_bench.log"
