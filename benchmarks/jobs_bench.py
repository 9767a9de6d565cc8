"""What a resumable job costs over streaming (#34 §3 and §6): `armo score` to stdout (streamed, nothing kept) against
`armo score -o FILE` and `armo evaluate -o --pairs-output` (each a job: every row checked and keyed first, each window
kept as a unit in FILE.parts/), on the same rows with the embedded default model, in fresh processes, side by side.

    python benchmarks/jobs_bench.py [--rows 400] [--repeats 1]
    python benchmarks/before_after.py d619550 benchmarks/jobs_bench.py   # the same, on an earlier armo too

The rows are examples/pairs.jsonl repeated under new ids (two windows of 256 and more). Wall time per command, the
median of --repeats; the job's overhead is its time over streaming's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMO = [sys.executable, "-m", "armo_cli.cli"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    base = [json.loads(x) for x in (ROOT / "examples" / "pairs.jsonl").read_text().splitlines()]
    tmp = Path(tempfile.mkdtemp(prefix="armo-jobs-"))
    rows = tmp / "rows.jsonl"
    rows.write_text("".join(json.dumps({**base[i % len(base)], "id": f"row{i}"}) + "\n" for i in range(args.rows)))
    commands = {
        "score, streamed to stdout": ["score", str(rows), "-q"],
        "score -o FILE (a job)": ["score", str(rows), "-q", "-o", str(tmp / "s.jsonl")],
        "evaluate -o --pairs-output (a job)": ["evaluate", str(rows), "-q", "-o", str(tmp / "r.json"),
                                               "--pairs-output", str(tmp / "p.jsonl")],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            subprocess.run(ARMO + cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            times[name].append(time.perf_counter() - t0)
    stream = statistics.median(times["score, streamed to stdout"])
    print(f"{args.rows} pair rows (examples/pairs.jsonl repeated), default model, median of {args.repeats}:")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:36s} {t:7.2f} s   {t / stream:5.2f}x streaming")


if __name__ == "__main__":
    main()
