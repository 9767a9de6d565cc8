"""The default model on RMB's best-of-n rows, by category: accuracy with 95% intervals (rows resampled whole) beside
the random baseline 1 / (1 + losers), as `armo evaluate --benchmark best-of-n` scores them.

Reads what `armo evaluate ROWS -o REPORT --pairs-output RECORDS` wrote (the records: each row's scores, chosen
first) and groups RMB's 49 subsets into its sections: Harmlessness, and each Helpfulness category. The figures are
recomputed from the records with armo's own rule (armo_cli.benchmarks) and must equal the report's overall score.

    armo evaluate ../shared/data/rmb-bon.jsonl.gz -o rmb-bon-report.json --pairs-output rmb-bon-rows.jsonl \\
        --max-length 2048 --overflow skip --resume
    python studies/rmb_bon_categories.py rmb-bon-report.json rmb-bon-rows.jsonl [--markdown]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

from armo_cli.benchmarks import RowScores, best_of_n_result, bootstrap_ci


def section(subset: str) -> str:
    parts = subset.split("/")  # rmb-bon/Harmlessness/S2, rmb-bon/Helpfulness/Code/Data Management
    return parts[1] if parts[1] != "Helpfulness" else "/".join(parts[1:3])


def side(x) -> list[float]:
    return [y["score"] for y in x] if isinstance(x, list) else [x["score"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("records")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    report = json.loads(open(args.report).read())
    rows = []
    for line in open(args.records):
        r = json.loads(line)
        chosen = side(r["chosen"])
        rows.append((section(r["subset"]), RowScores(r["id"], r["subset"], chosen + side(r["rejected"]), len(chosen))))
    groups: dict[str, list[RowScores]] = defaultdict(list)
    for name, r in rows:
        groups[name].append(r)
    everything = [r for _, r in rows]
    out = []
    for name, rs in [("all rows", everything)] + sorted(groups.items()):
        results = [best_of_n_result(r) for r in rs]
        acc = sum(results) / len(results)
        ci = bootstrap_ci(results, lambda x: sum(x) / len(x), 1000, 0)
        base = sum(1 / (1 + len(r.rejected)) for r in rs) / len(rs)
        out.append((name, len(rs), acc, ci, base))
    bench = report.get("benchmark_report", report)
    overall = bench.get("score")
    if overall is not None and abs(overall - out[0][2]) > 1e-9:
        raise SystemExit(f"recomputed {out[0][2]:.6f} != the report's {overall:.6f}: records and report differ")
    if args.markdown:
        print("| rows | n | best-of-n accuracy | 95% CI | random baseline |")
        print("|---|---|---|---|---|")
    for name, n, acc, ci, base in out:
        if args.markdown:
            print(f"| {name} | {n} | {acc:.3f} | [{ci[0]:.3f}, {ci[1]:.3f}] | {base:.3f} |")
        else:
            print(f"{name:44s} n={n:5d}  accuracy {acc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]  random {base:.3f}")


if __name__ == "__main__":
    main()
