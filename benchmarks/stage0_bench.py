"""What stage 0 costs on this machine (#33): `armo tune-backbone` on the embedded backbone, its Bradley-Terry head
reading the last layer (the whole backbone tuned and run) against the recipe's feature layer (13 of 30: the blocks
above it get no adapter and are not run), side by side in one process, alternating, on the same pairs.

    python benchmarks/stage0_bench.py [--data PAIRS.jsonl[.gz]] [--pairs 48] [--repeats 2]

The pairs: the first --pairs rows of --data (default ../shared/data/pairs.jsonl.gz, else examples/pairs.jsonl repeated
under new ids), at the recipe's --max-length 512, batches of 8 pairs. Prints training tokens/s per setting (the
median of --repeats; tune_backbone's own count: every token of each pair's tree, forward and backward) and the ratio.
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import statistics
import tempfile
from pathlib import Path

from armo_cli.configs import TuneConfig
from armo_cli.stage0 import tune_backbone

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"last layer (-1), whole backbone": -1, "feature layer (-18), blocks below it": -18}


def pairs(data: Path | None, n: int) -> list[dict]:
    if data is not None and data.exists():
        with (gzip.open if data.suffix == ".gz" else open)(data, "rt") as f:
            return [json.loads(x) for x in itertools.islice(f, n)]
    base = [json.loads(x) for x in (ROOT / "examples" / "pairs.jsonl").read_text().splitlines()]
    return [{**base[i % len(base)], "id": f"row{i}"} for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pairs.jsonl.gz")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="armo-stage0-"))
    rows = tmp / "pairs.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in pairs(args.data, args.pairs)))
    rates: dict[str, list[float]] = {k: [] for k in SETTINGS}
    tokens = {}
    for rep in range(args.repeats):
        for name, layer in SETTINGS.items():
            out = tmp / f"a{rep}{layer}"
            r = tune_backbone(TuneConfig(input=str(rows), output=str(out), layer=layer, pooling="mean", device="cpu",
                                         target_modules="q_proj,k_proj,v_proj,o_proj", eval_pairs=0,
                                         on_error="skip", quiet=True))
            rates[name].append(r["train_tokens_per_second"])
            tokens[name] = r["train_tokens"]
    src = args.data if args.data.exists() else "examples/pairs.jsonl"
    print(f"stage 0 on {args.pairs} pairs of {src} ({tokens[next(iter(SETTINGS))]:,} tokens per pass), "
          f"rank 8 on the attention projections, batches of 8, median of {args.repeats}")
    for name, v in rates.items():
        print(f"  {name:40s} {statistics.median(v):8.1f} tokens/s")
    a, b = (statistics.median(v) for v in rates.values())
    print(f"  ratio (feature layer / last layer)       {b / a:8.2f}x")


if __name__ == "__main__":
    main()
