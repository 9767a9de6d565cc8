"""The README's timing figures, each measured here in fresh processes: wall time and CPU time (user + system, of
the process and its children), the median of --repeats runs.

  - the first use of the embedded backbone (the GGUF file dequantised into a fresh cache), then scoring one pair
  - `armo score examples/pair.jsonl` (one pair, warm cache) and `armo score examples/pairs.jsonl` (32 pairs): the
    per-pair cost is their difference over 31
  - `armo --help`
  - `bash examples/pipeline.sh` (every stage on the example files)

Run on a quiet machine: python benchmarks/readme_timings.py  (about 3 minutes on a 2-core CPU)
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMO = [str(Path(sys.executable).parent / "armo")]


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall s, CPU s) of one run of `cmd`, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median(cmd: list[str], repeats: int, env: dict | None = None) -> tuple[float, float]:
    runs = [timed(cmd, env) for _ in range(repeats)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-pipeline", action="store_true", help="skip examples/pipeline.sh (about a minute and a half)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: the GGUF file is dequantised again
        rows.append(("first use: dequantise the GGUF file, then score one pair",
                     "ARMO_CACHE=EMPTY armo score examples/pair.jsonl -q",
                     timed([*ARMO, "score", "examples/pair.jsonl", "-q"], {"ARMO_CACHE": cache})))
    one = median([*ARMO, "score", "examples/pair.jsonl", "-q"], args.repeats)
    many = median([*ARMO, "score", "examples/pairs.jsonl", "-q"], args.repeats)
    rows.append(("score one pair (warm cache)", "armo score examples/pair.jsonl -q", one))
    rows.append(("score 32 pairs", "armo score examples/pairs.jsonl -q", many))
    rows.append(("each further pair", "(32 pairs - 1 pair) / 31", ((many[0] - one[0]) / 31, (many[1] - one[1]) / 31)))
    rows.append(("armo --help", "armo --help", median([*ARMO, "--help"], args.repeats)))
    if not args.no_pipeline:
        rows.append(("every stage on the examples", "bash examples/pipeline.sh",
                     timed(["bash", "examples/pipeline.sh"], {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})))
    print(f"readme_timings: {os.cpu_count()} CPUs, median of {args.repeats} runs (first use and pipeline: one run)")
    print("| what | command | wall | CPU |")
    print("|---|---|---|---|")
    for what, cmd, (wall, cpu) in rows:
        unit = (lambda x: f"{x * 1000:.0f} ms") if wall < 1 else (lambda x: f"{x:.1f} s")
        print(f"| {what} | `{cmd}` | {unit(wall)} | {unit(cpu)} |")


if __name__ == "__main__":
    main()
