"""A benchmark script run on an earlier commit and on the working tree, alternately, in one run: for a refactor
that must not make anything slower (#34: startup_bench.py and extract_bench.py before and after).

The earlier commit is checked out in a temporary git worktree; each side runs the working tree's copy of the
script with its own armo on PYTHONPATH (the script is the same; only armo differs), --rounds times, alternating,
and both outputs are printed in full, round by round.

    python benchmarks/before_after.py ec18b4c benchmarks/startup_bench.py --repeats 3
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the earlier commit")
    ap.add_argument("script", help="the benchmark script (the working tree's copy runs on both sides)")
    ap.add_argument("--rounds", type=int, default=1, help="before/after pairs, alternating")
    args, rest = ap.parse_known_args()
    tmp = Path(tempfile.mkdtemp(prefix="armo-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tmp / "tree"), args.rev], check=True)
    try:
        for r in range(args.rounds):
            for name, tree in (("before", tmp / "tree"), ("after", ROOT)):
                env = {**os.environ, "PYTHONPATH": str(tree)}
                cmd = [sys.executable, str(ROOT / args.script), *rest]
                print(f"===== {name} ({args.rev if name == 'before' else 'working tree'}), round {r + 1}", flush=True)
                out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
                print(out.stdout.rstrip(), flush=True)
                if out.returncode:
                    print(out.stderr[-2000:], flush=True)
                    raise SystemExit(f"{name}: exit {out.returncode}")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "tree")], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
