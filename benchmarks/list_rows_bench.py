"""What a best-of-n row costs as one tree (its prompt once, every response after it) against the same row flattened
into pairs (the chosen response against each rejected one, as a user without list rows would run it), side by side
in one run: tokens through the backbone and seconds, with the embedded default model.

Rows: the first --rows rows of ../shared/data/rmb-bon.jsonl.gz that fit in --max-length (or --input FILE). The
pairs run through armo too, so its prompt sharing applies to them as well (`--no-share` turns it off for both).
Also checked: both give each row the same best-of-n verdict.
Run: python benchmarks/list_rows_bench.py  (about 2 minutes on a 2-core CPU)
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import armo_cli.forward as forward
from armo_cli import RewardModel

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rmb-bon.jsonl.gz"


def run(rm: RewardModel, rows: list[dict]) -> tuple[list[dict], int, float]:
    tokens = [0]

    def count(n_rows: int, n_tokens: int) -> None:
        tokens[0] += n_tokens

    t0 = time.perf_counter()
    recs = rm.score_prepared(rm.prepare(rows), on_batch=count)
    return recs, tokens[0], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=str(DATA))
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--no-share", action="store_true", help="run every tree apart (no prompt sharing) in both")
    args = ap.parse_args()
    if args.no_share:
        real = forward.encode_trees
        forward.encode_trees = lambda *a, **k: real(*a, **{**k, "share": False})
    rm = RewardModel(max_length=args.max_length, overflow="truncate-prompt")
    rows = []
    with gzip.open(args.input, "rt") if args.input.endswith(".gz") else open(args.input) as fh:
        for line in fh:
            row = json.loads(line)
            try:
                rm.prepare([row])
            except Exception:
                continue  # a response alone over --max-length
            rows.append(row)
            if len(rows) == args.rows:
                break
    flat = [{"id": f"{r['id']}/{i}-{j}", "prompt": r["prompt"], "chosen": c, "rejected": x}
            for r in rows for i, c in enumerate(r["chosen"]) for j, x in enumerate(r["rejected"])]
    rm.score_prepared(rm.prepare(rows[:2]))  # warm-up
    lists, tok_l, sec_l = run(rm, rows)
    pairs, tok_p, sec_p = run(rm, flat)
    verdict_l = [min(x["score"] for x in r["chosen"]) > max(x["score"] for x in r["rejected"]) for r in lists]
    margins, k = [], 0
    for r in rows:
        n = len(r["chosen"]) * len(r["rejected"])
        margins.append(all(p["margin"] > 0 for p in pairs[k:k + n]))
        k += n
    print(f"list_rows_bench: {len(rows)} rows ({len(flat)} pairs), max length {args.max_length}, "
          f"prompt sharing {'off' if args.no_share else 'on'}")
    print("| | tokens | seconds |")
    print("|---|---|---|")
    print(f"| one tree per row | {tok_l:,} | {sec_l:.1f} |")
    print(f"| flattened into pairs | {tok_p:,} | {sec_p:.1f} |")
    print(f"pairs / trees: {tok_p / tok_l:.2f}x tokens, {sec_p / sec_l:.2f}x time; "
          f"same best-of-n verdict on {sum(a == b for a, b in zip(verdict_l, margins))} of {len(rows)} rows")


if __name__ == "__main__":
    main()
