#!/usr/bin/env bash
# The packing study as one command for a lent GPU machine (no network there, armo not installed):
#   run(command="bash benchmarks/gpu_packing.sh", carry=["gpu_bench_data"], timeout_s=335)
# First use in two fresh processes (the first with torch's compile cache cold, the second warm), then one tree
# per row against flex on the same pairs. About 3 minutes on an H200.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
for k in 1 2; do
  echo "process $k"
  timeout 90 python3 -W ignore::UserWarning benchmarks/gpu_packing.py --data gpu_bench_data ${TINY:-} --first-use --json "$OUT/first_use_$k.json"
done 2>&1 | tee "$OUT/first_use.log"
timeout 140 python3 -W ignore::UserWarning benchmarks/gpu_packing.py --data gpu_bench_data ${TINY:-} --layouts "${LAYOUTS:-rows,flex}" \
  --json "$OUT/gpu_packing.json" 2>&1 | tee "$OUT/gpu_packing.log"
