"""Verbosity decorrelation: r_i' = r_i - lambda_i * r_v with Corr(r_i', r_v) = 0 on a reference set.

Stored as ArmoRM's `reward_transform_matrix`: r' = r @ T, T = I with T[v, :] -= lambda (lambda_v = 1,
so the verbosity objective's own adjusted reward is 0).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .version import __version__
from .console import show, table, warn
from .features import Features
from .errors import ArmoError
from .artifact_files import load_artifact, save_artifact
from .jsonl import dumps, sha256_json
from .outputs import check_outputs, write_text_atomic
from .artifacts import DecorrelationMeta
from .configs import DecorrelationConfig
from .options import validate
from .provenance import require_compatible
from .regression import Regression
from .stats import pearson, spearman



def _corr(method: str):
    return spearman if method == "spearman" else pearson


def solve_lambda(r: torch.Tensor, v: torch.Tensor, method: str = "spearman", tolerance: float = 1e-3,
                 bounds: tuple[float, float] | None = None, max_iter: int = 200) -> tuple[float, float, str]:
    """lambda with |Corr(r - lambda v, v)| <= tolerance; returns (lambda, corr after, status)."""
    r, v = r.double(), v.double()
    lo_b, hi_b = bounds if bounds is not None else (-float("inf"), float("inf"))
    vc = v - v.mean()
    lam0 = float(((r - r.mean()) @ vc) / (vc @ vc))  # Pearson's closed form
    corr = _corr(method)

    def f(lam: float) -> float:
        return corr(r - lam * v, v)

    if method == "pearson":
        lam = min(max(lam0, lo_b), hi_b)
        c = f(lam)
        return lam, c, "ok" if abs(c) <= tolerance else "bounded"
    lam = min(max(lam0, lo_b), hi_b)
    best = (abs(f(lam)), lam)
    if best[0] <= tolerance:
        return lam, f(lam), "ok"
    # f decreases in lambda: walk outwards from the Pearson solution until the sign flips
    f0 = f(lam)
    step = max(abs(lam), 1e-3)
    a, fa = lam, f0
    b = lam
    fb = f0
    for _ in range(100):
        b = a + step if f0 > 0 else a - step
        b = min(max(b, lo_b), hi_b)
        fb = f(b)
        if abs(fb) < best[0]:
            best = (abs(fb), b)
        if (fb <= 0) if f0 > 0 else (fb >= 0):
            break
        if b in (lo_b, hi_b):
            return best[1], f(best[1]), "bounded"
        a, fa = b, fb
        step *= 2
    else:
        return best[1], f(best[1]), "not-bracketed"
    for _ in range(max_iter):  # bisection on the bracket [a, b]
        m = 0.5 * (a + b)
        fm = f(m)
        if abs(fm) < best[0]:
            best = (abs(fm), m)
        if abs(fm) <= tolerance or abs(b - a) <= 1e-15 * max(1.0, abs(m)):
            break
        if (fm > 0) == (fa > 0):
            a, fa = m, fm
        else:
            b = m
    lam = best[1]
    c = f(lam)
    return lam, c, "ok" if abs(c) <= tolerance else "tolerance-not-reached"


STATUS_MEANING = {
    "tolerance-not-reached": "a rank correlation moves in steps over these rows (ties), so no lambda brings it "
                             "within --tolerance; the closest one is kept",
    "bounded": "lambda stopped at --lambda-range",
    "not-bracketed": "no lambda found changes the correlation's sign; the closest one is kept",
}


def status_note(objective: str, status: str, after: float, tolerance: float) -> str:
    """What a status other than 'ok' means, and whether it matters."""
    matters = ("it matters little: what is left of length in this objective is small" if abs(after) < 0.05 else
               "this objective still tracks length: check the reference rows (how many, how varied in length)")
    return (f"{objective}: {status}: |corr after| {abs(after):.4f} > --tolerance {tolerance:g}; "
            f"{STATUS_MEANING.get(status, status)}; {matters}")


def transform_matrix(lambdas: torch.Tensor, v: int) -> torch.Tensor:
    k = lambdas.numel()
    lam = lambdas.clone().float()
    lam[v] = 1.0
    T = torch.eye(k)
    T[v, :] -= lam
    return T


def _response_groups(f: Features) -> list[str]:
    """The prompt key of each response of `f.responses()` (pairs: chosen then rejected of each row)."""
    keys = f.meta.prompt_hashes or f.ids
    return [k for k in keys for _ in range(2)] if f.pair else list(keys)


def fit_decorrelation(cfg: DecorrelationConfig) -> dict:
    """Run `armo fit-decorrelation` and return its report."""
    validate(cfg)
    check_outputs(cfg.output, cfg.json, [cfg.regression, *cfg.features])
    reg = Regression.load(cfg.regression)
    if cfg.verbosity not in reg.objectives:
        raise ArmoError(f"--verbosity {cfg.verbosity}: not an objective of {cfg.regression} "
                        f"(it has: {', '.join(reg.objectives)}; add one with fit-regression --length-objective)")
    if not cfg.features:
        raise ArmoError("fit-decorrelation: give at least one reference features file")
    feats = [Features.load(p) for p in cfg.features]
    for f in feats:
        require_compatible(reg.meaning, f.meaning(prompt=False), cfg.regression, f.path)
    # out-of-fold rewards for a preference objective fitted on these pairs (its in-sample rewards would be
    # optimistic, and the transform would be fitted to them)
    R = torch.cat([reg.rewards_out_of_fold(f.responses(reg.lm_objectives, "the regression"), _response_groups(f))
                   for f in feats])
    if R.shape[0] < cfg.min_rows:
        raise ArmoError(f"reference set: {R.shape[0]} responses, need at least {cfg.min_rows}")
    v = reg.objectives.index(cfg.verbosity)
    rv = R[:, v]
    if float(rv.std()) == 0.0:
        raise ArmoError("reference set: the verbosity reward is constant, nothing to decorrelate against")
    corr = _corr(cfg.method)
    lambdas = torch.zeros(len(reg.objectives))
    rows = {}
    for i, o in enumerate(reg.objectives):
        before = corr(R[:, i], rv)
        if i == v:
            lambdas[i] = 1.0
            rows[o] = {"lambda": 1.0, "before": before, "after": 0.0, "status": "verbosity"}
            continue
        lam, after, status = solve_lambda(R[:, i], rv, cfg.method, cfg.tolerance, cfg.lambda_range)
        lambdas[i] = lam
        rows[o] = {"lambda": lam, "before": before, "after": after, "status": status}
    T = transform_matrix(lambdas, v)
    ref_hash = sha256_json([f.meta.input_hash for f in feats] + [f.meta.settings_key for f in feats])
    report = {
        "kind": "decorrelation", "armo_version": __version__, "objectives": reg.objectives, "verbosity": cfg.verbosity,
        "method": cfg.method, "tolerance": cfg.tolerance, "lambda_range": cfg.lambda_range, "objectives_report": rows,
        "reference_hash": ref_hash, "reference_rows": R.shape[0], "backbone": reg.meta.backbone,
        "feature_meaning": reg.meaning.to_json(),
        "regression_hash": regression_hash(reg),
    }
    save_artifact(cfg.output, {"transform": T, "lambdas": lambdas}, report)
    if cfg.json:
        write_text_atomic(cfg.json, dumps(report, indent=2) + "\n")
    show(table(f"fit-decorrelation ({cfg.method}, {R.shape[0]} reference responses) -> {cfg.output}",
               ["objective", "lambda", "corr before", "corr after", "status"],
               [[o, r["lambda"], r["before"], r["after"], r["status"]] for o, r in rows.items()]), cfg.quiet)
    for o, r in rows.items():
        if r["status"] != "ok" and not cfg.quiet:
            warn(status_note(o, r["status"], r["after"], cfg.tolerance))
    return report


def transform_hash(T: torch.Tensor) -> str:
    """Identity of a transform matrix: a gate records the one it was trained with."""
    return sha256_json(T.tolist())


def regression_hash(reg: Regression) -> str:
    h = hashlib.sha256(reg.weight.contiguous().numpy().tobytes())
    h.update(reg.bias.contiguous().numpy().tobytes())
    if reg.lm_weight is not None:
        h.update(reg.lm_weight.contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Decorrelation:
    transform: torch.Tensor
    meta: DecorrelationMeta

    @classmethod
    def load(cls, path: str | Path) -> "Decorrelation":
        t, m = load_artifact(path, "decorrelation")
        k = len(m.objectives)
        if tuple(t["transform"].shape) != (k, k):
            raise ArmoError(f"{path}: damaged decorrelation: transform {tuple(t['transform'].shape)} for {k} objectives")
        return cls(t["transform"], m)

    @classmethod
    def identity(cls, objectives: list[str]) -> "Decorrelation":
        return cls(torch.eye(len(objectives)), DecorrelationMeta(objectives=list(objectives), identity=True))
