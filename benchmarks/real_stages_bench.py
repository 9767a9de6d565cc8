"""Decorrelation and gating on real features of ../shared/data/pairs.jsonl.gz (embedded backbone).

Reuses the default-model recipe's features when present (runs/default/*.features.safetensors);
otherwise extracts --pairs permissive pairs itself (slow on a CPU: ~1 min per 40 pairs).
Prints the before/after correlation table and the gate comparison table.
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from armo_cli.configs import DecorrelationConfig
from armo_cli.fitting import fit_decorrelation
from armo_cli.configs import GatingConfig
from armo_cli.fitting import fit_gating
from armo_cli.configs import RegressionConfig
from armo_cli.fitting import fit_regression

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(ROOT / "runs" / "default"))
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--ratings", type=int, default=300)
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit("../shared/data is absent")
    work = Path(args.work)
    tmp = Path(tempfile.mkdtemp(prefix="armo-real-"))
    feats = {}
    for name, src, n, where in (("ratings", "ratings.jsonl.gz", args.ratings, ["ultrafeedback", "xstest", "prometheus"]),
                                ("pairs", "pairs.jsonl.gz", args.pairs, ["hh_rlhf", "ultrafeedback", "pandalm"])):
        f = work / f"{name}.features.safetensors"
        if not f.exists():
            rows = tmp / f"{name}.jsonl"
            w = sum((["--where", f"source={s}"] for s in where), [])
            subprocess.run(["armo", "sample", str(DATA / src), *w, "--n", str(n), "-o", str(rows)], check=True)
            f = tmp / f"{name}.features.safetensors"
            subprocess.run(["armo", "extract", str(rows), "-o", str(f), "--max-length", "512", "--overflow",
                            "truncate-prompt", "-q"], check=True)
        feats[name] = str(f)
        print(f"{name}: {f}")
    reg = tmp / "reg.st"
    fit_regression(RegressionConfig(features=[feats["ratings"]], output=str(reg), length_objective="verbosity"))
    fit_decorrelation(DecorrelationConfig(regression=str(reg), features=[feats["pairs"]], output=str(tmp / "dec.st")))
    fit_gating(GatingConfig(features=[feats["pairs"]], regression=str(reg), decorrelation=str(tmp / "dec.st"),
                            output=str(tmp / "gate.st"), steps=2000))


if __name__ == "__main__":
    main()
