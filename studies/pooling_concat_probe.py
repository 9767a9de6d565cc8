"""Do the last-token and the mean-pooled features together order pairs better than either alone?

A linear Bradley-Terry probe (layer_probe.py's: standardised responses, logistic loss on chosen - rejected,
L2 by 5-fold cross-validation grouped by prompt on the training pairs) on three response features of the
same rows at the same layer: the last token's hidden state, the mean of the response's, and both side by side
(2d wide). It reads two recipe runs' features (recipes/train_default.sh with POOLING=last and POOLING=mean,
or recipes/ablate_pooling.sh) and fits on their training pairs only; it prints accuracy on the held-out
pairs, the RMB selection slice and the RMB evaluation slice, with paired bootstrap intervals of
both-minus-each, and on any extra pairs given with --hand (features of both poolings extracted from one file).

    python studies/pooling_concat_probe.py --last runs/default --mean runs/mean \
        [--hand LAST.safetensors MEAN.safetensors]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_probe import fit_probe, probe_layer, standardise  # noqa: E402

from armo_cli.features import Features  # noqa: E402
from armo_cli.stats import bootstrap_ci  # noqa: E402

SETS = ("heldout", "rmb-select", "rmb-eval")
ARMS = {"last": lambda l, m: l, "mean": lambda l, m: m, "last+mean": lambda l, m: torch.cat([l, m], -1)}


def prompt_key(row: dict) -> str:
    return hashlib.sha256(json.dumps(row["prompt"], sort_keys=True).encode()).hexdigest()[:16]


def both(last: Path, mean: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Response features [n,2,d] of the same rows from two files, refusing files of different rows."""
    a, b = Features.load(last), Features.load(mean)
    if a.ids != b.ids:
        raise SystemExit(f"{last} and {mean} hold different rows")
    return a.tensors["response_features"].double(), b.tensors["response_features"].double(), a.ids


def outcomes(w: torch.Tensor, Xtr: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """1 where the probe (fitted on Xtr's standardisation) scores chosen above rejected."""
    d = Xtr.shape[-1]
    _, x = standardise(Xtr.reshape(-1, d), X.reshape(-1, d))
    x = x.reshape(-1, 2, d)
    return ((x[:, 0] - x[:, 1]) @ w > 0).double()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--last", required=True, help="a recipe run's folder with last-token features")
    ap.add_argument("--mean", required=True, help="the same recipe's folder with mean-pooled features")
    ap.add_argument("--hand", nargs=2, metavar=("LAST", "MEAN"), help="features of extra pairs, both poolings")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    last, mean = Path(args.last), Path(args.mean)
    rows = {}
    for line in (mean / "pairs.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[r["id"]] = r
    tl, tm, ids = both(last / "pairs.features.safetensors", mean / "pairs.features.safetensors")
    keys = [prompt_key(rows[i]) for i in ids]
    sets = {s: both(last / f"{s}.features.safetensors", mean / f"{s}.features.safetensors")[:2] for s in SETS}
    if args.hand:
        sets["hand"] = both(Path(args.hand[0]), Path(args.hand[1]))[:2]
    out: dict[tuple[str, str], torch.Tensor] = {}
    print(f"{tl.shape[0]} training pairs; " + ", ".join(f"{s} {v[0].shape[0]}" for s, v in sets.items()))
    print(f"{'feature':>10} {'CV':>6} {'L2':>6} " + " ".join(f"{s:>10}" for s in sets))
    for name, cat in ARMS.items():
        Xtr = cat(tl, tm)
        r = probe_layer(Xtr, keys, cat(*sets["rmb-select"]), 5, args.seed)  # CV and its L2 on training pairs only
        d = Xtr.shape[-1]
        tr, = standardise(Xtr.reshape(-1, d))
        tr = tr.reshape(-1, 2, d)
        w = fit_probe(tr[:, 0] - tr[:, 1], r["l2"])
        for s, (l, m) in sets.items():
            out[(name, s)] = outcomes(w, Xtr, cat(l, m))
        assert abs(float(out[(name, "rmb-select")].mean()) - r["ood_accuracy"]) < 1e-12
        print(f"{name:>10} {r['cv_accuracy']:>6.3f} {r['l2']:>6g} " + " ".join(f"{float(out[(name, s)].mean()):>10.3f}" for s in sets))
    print("paired differences, 95% bootstrap intervals:")
    for s in sets:
        for other in ("mean", "last"):
            diff = out[("last+mean", s)] - out[(other, s)]
            lo, hi = bootstrap_ci(diff, 1000, args.seed)
            print(f"  {s}: last+mean - {other} = {float(diff.mean()):+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
