"""Do other linear views of the same features order pairs better (#13, held-out target 0.65)?

On the shipped recipe's features (`recipes/train_default.sh`: layer -18, mean pooling), three families:

1. the rating ridge on features scaled by their per-dimension standard deviation, as the preference head is
   (the stored row would be w / s, so `score` would need nothing new), against the raw ridge: each rating
   objective's validation Pearson (fit-regression's own split and alpha grid);
2. the preference head on other linear transforms of the features: whitened (all principal components of the
   training responses, each in units of its standard deviation), or the top k components only; each with
   `fit_preference`'s own C grid and prompt-grouped folds; accuracy of the head alone (before decorrelation) on the
   held-out pairs, dev-eval and both RMB slices, with the paired interval against the shipped head's (per-dimension
   scale only);
3. with `--layer-cache` (a `layer_probe.py --work --pooling mean --cache` file: every layer's features of the
   training pairs and the selection slice), the mean of a band of layers instead of one layer: CV and selection.

The rule is the pooling's: the highest RMB selection accuracy; an arm within 0.02 of the shipped one is decided by
in-distribution (cross-validated) accuracy, and the shipped arm wins ties.

    python studies/feature_transform_study.py --work runs/mean [--layer-cache runs/layer_probe_mean.pt] --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

import armo_cli.fitting as regression  # fit_regression, and the ridge_path it calls (patched below)
from armo_cli.configs import RegressionConfig
from armo_cli.features import Features
from armo_cli.preference import feature_scale, fit_preference
from armo_cli.stats import bootstrap_ci

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rating_pairs_study import EVAL, N_BOOT  # noqa: E402

RANGES = {"ultrafeedback-overall": (1, 10), "prometheus-rubric": (1, 5), "xstest-complied": (0, 1),
          "xstest-appropriate": (0, 1), "topicalchat-understandability": (0, 1), "topicalchat-groundedness": (0, 1),
          "topicalchat-naturalness": (1, 3), "topicalchat-coherence": (1, 3), "topicalchat-engagingness": (1, 3),
          "topicalchat-overall": (1, 5)}  # recipes/fit_default.sh's declared ranges
SHIPPED = "per-dimension scale (shipped)"
BANDS = [(13, 13), (11, 15), (13, 17), (10, 19), (8, 23), (1, 30)]  # layers (from the start; 13 is -18), inclusive


def ridge_pearsons(ratings: Path, scaled: bool) -> dict[str, float]:
    """fit-regression's validation Pearson per rating objective, its ridge on raw or per-dimension-scaled features."""
    plain = regression.ridge_path

    def on_scaled(X, Y, train, alphas, *a, **k):  # the same path on X / s; the row stored back as w / s
        s = feature_scale(X).float()
        res = plain(X / s, Y, train, alphas, *a, **k)
        res.weight = res.weight / s
        return res

    regression.ridge_path = on_scaled if scaled else plain
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rep = regression.fit_regression(RegressionConfig(features=[str(ratings)], ranges=RANGES, quiet=True,
                                                             output=f"{tmp}/r.safetensors"))
    finally:
        regression.ridge_path = plain
    return {o: m["pearson"] for o, m in rep["metrics"].items()}


def transforms(X: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Linear maps of the features [.., d], fitted on the training responses X [M,d] (no labels)."""
    mu = X.mean(0)
    _, V = torch.linalg.eigh(torch.cov(X.T))
    # fit_preference puts every coordinate in units of its standard deviation, so the principal components
    # come out whitened (each component's own scale, or any shrinkage of it, is undone there)
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {SHIPPED: lambda x: x,
                                                               "whitened (all principal components)": lambda x: (x - mu) @ V}
    for k in (64, 128, 256):
        out[f"top {k} principal components"] = lambda x, P=V[:, -k:]: (x - mu) @ P
    return out


def outcomes(row: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """1 where the head (a row over features R [n,2,d]) scores chosen above rejected."""
    u = R.double() @ row.double()
    return (u[:, 0] > u[:, 1]).double()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/mean")
    ap.add_argument("--layer-cache", help="layer_probe.py --cache file of the same recipe (optional)")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.work)
    out: dict = {"work": str(work)}

    raw, scaled = ridge_pearsons(work / "ratings.features.safetensors", False), ridge_pearsons(work / "ratings.features.safetensors", True)
    out["ridge"] = {o: {"raw": raw[o], "scaled": scaled[o]} for o in raw}
    print("1. rating ridge, validation Pearson: raw / per-dimension scale")
    for o, v in out["ridge"].items():
        print(f"   {o:32} {v['raw']:.3f} / {v['scaled']:.3f}")

    tr = Features.load(work / "pairs.features.safetensors")
    R, groups = tr.tensors["response_features"].double(), list(tr.meta.prompt_hashes or tr.ids)
    sets = {name: Features.load(work / f"{stem}.features.safetensors").tensors["response_features"].double()
            for name, stem in EVAL.items()}
    d = R.shape[-1]
    arms, base = [], {}
    print("2. preference head on linear transforms of the features")
    print(f"   {'arm':36} {'CV':>6} " + " ".join(f"{n:>16}" for n in sets))
    for name, T in transforms(R.reshape(-1, d)).items():
        head = fit_preference(T(R), groups)
        res = {}
        for s, F in sets.items():
            o = outcomes(head.weight, T(F))
            if name == SHIPPED:
                base[s] = o
            res[s] = {"accuracy": float(o.mean()), "ci95": bootstrap_ci(o, N_BOOT, 0)}
            if name != SHIPPED:
                diff = o - base[s]
                res[s]["minus_shipped"] = {"mean": float(diff.mean()), "ci95": bootstrap_ci(diff, N_BOOT, 0)}
        arms.append({"arm": name, "C": head.C, "cv_accuracy": head.metrics["val_accuracy"], "sets": res})
        print(f"   {name:36} {head.metrics['val_accuracy']:.3f} " + " ".join(f"{v['accuracy']:>16.3f}" for v in res.values()), flush=True)
    out["preference_arms"] = arms

    bands = []
    if args.layer_cache:
        c = torch.load(args.layer_cache, weights_only=True)
        print("3. preference head on the mean of a band of layers (training pairs and RMB selection slice of the cache)")
        for a, b in BANDS:
            Xtr, Xood = c["Xtr"][:, :, a:b + 1].double().mean(2), c["Xood"][:, :, a:b + 1].double().mean(2)
            head = fit_preference(Xtr, list(c["keys"]))
            sel = float(outcomes(head.weight, Xood).mean())
            bands.append({"layers": [a, b], "from_end": [a - 31, b - 31], "cv_accuracy": head.metrics["val_accuracy"],
                          "selection_accuracy": sel})
            print(f"   layers {a - 31:>3} to {b - 31:>3}: CV {head.metrics['val_accuracy']:.3f}, selection {sel:.3f}", flush=True)
    out["layer_bands"] = bands

    # the rule, over every preference arm (the shipped one first, so it wins ties)
    sel = "RMB selection"
    best = arms[0]
    for a in arms[1:]:
        gap = a["sets"][sel]["accuracy"] - best["sets"][sel]["accuracy"]
        if gap > 0.02 or (abs(gap) <= 0.02 and a["cv_accuracy"] > best["cv_accuracy"]):
            best = a
    out["rule"] = best["arm"]
    print(f"rule (selection accuracy, within 0.02 the CV accuracy): {best['arm']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
