"""Stage 1: multi-objective ridge regression from response features to absolute ratings.

One eigendecomposition of the training Gram matrix per distinct label mask gives the whole
regularisation path in closed form: w(a) = V diag(1/(e+a)) V^T X^T y.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .version import __version__
from .devices import auto_device
from .console import info, show, table, warn
from .features import Features
from .errors import ArmoError
from .artifact_files import load_artifact, save_artifact
from .jsonl import dumps
from .outputs import check_outputs, write_text_atomic
from .artifacts import RegressionMeta
from .configs import RegressionConfig
from .options import validate
from .lm_objectives import parse_lm_objectives
from .preference import fit_preference, out_of_fold
from .provenance import FeatureMeaning, require_one_meaning
from .stats import pearson, spearman



@dataclass
class RidgeResult:
    weight: torch.Tensor  # [k, d]
    bias: torch.Tensor  # [k]
    alphas: list[float]  # chosen per objective
    val_mse: torch.Tensor  # [k, len(grid)]
    metrics: list[dict]


def split_mask(n: int, val_fraction: float, seed: int) -> torch.Tensor:
    """True for training rows: a seeded permutation, the first val_fraction of it held out."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    train = torch.ones(n, dtype=torch.bool)
    train[perm[: int(round(n * val_fraction))]] = False
    return train


def _gram(X: torch.Tensor, Y: torch.Tensor, rows: torch.Tensor, dev: torch.device, block: int = 8192):
    """X^T X, X^T Y and the row sum over the selected rows, accumulated in float64 block by block,
    so memory holds only the features, the Gram matrix and one block."""
    d, g = X.shape[1], Y.shape[1]
    G = torch.zeros(d, d, dtype=torch.float64, device=dev)
    B = torch.zeros(d, g, dtype=torch.float64, device=dev)
    s = torch.zeros(d, dtype=torch.float64, device=dev)
    for i in range(0, X.shape[0], block):
        sel = rows[i:i + block]
        xb = X[i:i + block][sel].to(dev, torch.float64)
        G += xb.T @ xb
        B += xb.T @ Y[i:i + block][sel].to(dev, torch.float64)
        s += xb.sum(0)
    return G, B, s


def _val_predictions(X: torch.Tensor, rows: torch.Tensor, V: torch.Tensor, coef: torch.Tensor, shift: torch.Tensor,
                     dev: torch.device, block: int = 8192) -> torch.Tensor:
    """Predictions [A, n_val, g] for every grid value, block by block: X_val V coef(a)."""
    out = []
    for i in range(0, X.shape[0], block):
        xb = X[i:i + block][rows[i:i + block]].to(dev, torch.float64)
        if xb.shape[0]:
            out.append(torch.einsum("nd,adg->ang", (xb - shift) @ V, coef))
    return torch.cat(out, dim=1) if out else torch.zeros(coef.shape[0], 0, coef.shape[2], dtype=torch.float64, device=dev)


def ridge_path(X: torch.Tensor, Y: torch.Tensor, train: torch.Tensor, alphas: list[float],
               intercept: bool = False, refit: str = "all", device: torch.device | None = None) -> RidgeResult:
    """Fit every objective (column of Y, NaN = missing) on its own rows; choose alpha by val MSE."""
    dev = device or torch.device("cpu")
    if dev.type == "mps":
        dev = torch.device("cpu")  # no float64 on MPS
    n, d = X.shape
    k = Y.shape[1]
    labelled = ~torch.isnan(Y)
    W = torch.zeros(k, d, dtype=torch.float64)
    b = torch.zeros(k, dtype=torch.float64)
    chosen = [float("nan")] * k
    val_mse = torch.full((k, len(alphas)), float("nan"), dtype=torch.float64)
    metrics: list[dict] = [{} for _ in range(k)]
    a_grid = torch.tensor(alphas, dtype=torch.float64, device=dev)
    # objectives rated on exactly the same rows share one Gram matrix and one eigendecomposition
    groups: dict[bytes, list[int]] = {}
    for j in range(k):
        groups.setdefault(labelled[:, j].numpy().tobytes(), []).append(j)
    Yz = torch.nan_to_num(Y, nan=0.0)
    for objs in groups.values():
        rows = labelled[:, objs[0]]
        tr, va = rows & train, rows & ~train
        n_tr, n_va = int(tr.sum()), int(va.sum())
        Yg = Yz[:, objs]
        G, B, s = _gram(X, Yg, tr, dev)  # B: [d, g]
        G_raw, B_raw = G, B
        mx = s / max(n_tr, 1)
        my = Yz[tr][:, objs].to(dev, torch.float64).mean(0) if intercept else torch.zeros(len(objs), dtype=torch.float64, device=dev)
        if intercept:  # centring = an unpenalised intercept, as scikit-learn's fit_intercept
            G = G - n_tr * torch.outer(mx, mx)
            B = B - n_tr * torch.outer(mx, my)
        e, V = torch.linalg.eigh(G)
        Q = V.T @ B
        Yva = Yg[va].to(dev, torch.float64)
        coef = Q[None] / (e[None, :, None] + a_grid[:, None, None])  # [A, d, g]
        pred = _val_predictions(X, va, V, coef, mx if intercept else torch.zeros_like(mx), dev) + my
        mse = ((pred - Yva[None]) ** 2).mean(1)  # [A, g]
        best = torch.argmin(mse, dim=0)
        for gi, j in enumerate(objs):
            val_mse[j] = mse[:, gi].cpu()
            a = alphas[int(best[gi])]
            chosen[j] = a
            p = pred[int(best[gi]), :, gi].cpu()
            yv = Yva[:, gi].cpu()
            metrics[j] = {"n_train": n_tr, "n_val": n_va, "alpha": a, "mse": float(mse[int(best[gi]), gi]),
                          "pearson": pearson(p, yv) if n_va > 2 else float("nan"),
                          "spearman": spearman(p, yv) if n_va > 2 else float("nan")}
        if refit == "train":
            for gi, j in enumerate(objs):
                w = V @ coef[int(best[gi]), :, gi]
                W[j] = w.cpu()
                b[j] = (my[gi] - mx @ w).cpu() if intercept else 0.0
            continue
        G2, B2, s2 = _gram(X, Yg, va, dev)
        Ga, sa, Ba = G_raw + G2, s + s2, B_raw + B2
        n_all = n_tr + n_va
        mxa = sa / n_all
        mya = Yz[rows][:, objs].to(dev, torch.float64).mean(0) if intercept else torch.zeros(len(objs), dtype=torch.float64, device=dev)
        if intercept:
            Ga = Ga - n_all * torch.outer(mxa, mxa)
            Ba = Ba - n_all * torch.outer(mxa, mya)
        # one Cholesky solve per distinct chosen strength (cheaper than a second eigendecomposition)
        eye = torch.eye(d, dtype=torch.float64, device=dev)
        for a in sorted({chosen[j] for j in objs}):
            cols = [gi for gi, j in enumerate(objs) if chosen[j] == a]
            L = torch.linalg.cholesky(Ga + a * eye)
            sol = torch.cholesky_solve(Ba[:, cols], L)
            for c, gi in enumerate(cols):
                j = objs[gi]
                W[j] = sol[:, c].cpu()
                b[j] = (mya[gi] - mxa @ sol[:, c]).cpu() if intercept else 0.0
    return RidgeResult(W.float(), b.float(), chosen, val_mse, metrics)


def _parse_scale(values: torch.Tensor, name: str, declared: tuple[float, float] | None) -> dict:
    v = values[~torch.isnan(values)]
    lo, hi = declared if declared is not None else (float(v.min()), float(v.max()))
    return {"lo": float(lo), "hi": float(hi), "transform": "linear", "declared": declared is not None}


def apply_scale(y: torch.Tensor, scale: dict) -> torch.Tensor:
    if scale["transform"] == "log1p":
        y = torch.log1p(y)
    return (y - scale["lo"]) / (scale["hi"] - scale["lo"])


def unscale(r: torch.Tensor, scale: dict) -> torch.Tensor:
    """A [0,1] prediction back on the objective's original scale (tokens for a length objective)."""
    y = r * (scale["hi"] - scale["lo"]) + scale["lo"]
    return torch.expm1(y) if scale["transform"] == "log1p" else y


def fit_regression(cfg: RegressionConfig) -> dict:
    """Run `armo fit-regression` and return its report."""
    validate(cfg)
    check_outputs(cfg.output, cfg.json, [*cfg.features, *cfg.pairs])
    if bool(cfg.pairs) != bool(cfg.preference_objective):
        raise ArmoError("--pairs and --preference-objective go together")
    if not cfg.features and not cfg.pairs:
        raise ArmoError("fit-regression: give at least one features file with ratings, or --pairs with --preference-objective")
    t0 = time.perf_counter()
    feats = [Features.load(p) for p in cfg.features]
    pair_feats = [Features.load(p) for p in cfg.pairs]
    for f in pair_feats:
        if not f.pair:
            raise ArmoError(f"--pairs {f.path}: features without pairs (extract rows with 'chosen' and 'rejected')")
    meaning = require_one_meaning([(f.meaning(prompt=False), f.path) for f in feats + pair_feats])
    objectives: list[str] = []
    for f in feats:
        for o in f.meta.objectives:
            if o not in objectives:
                objectives.append(o)
    for name, flag in ((cfg.length_objective, "--length-objective"), (cfg.preference_objective, "--preference-objective")):
        if name and name in objectives:
            raise ArmoError(f"{flag} {name}: the data already rates an objective of that name")
    if cfg.length_objective and cfg.length_objective == cfg.preference_objective:
        raise ArmoError("--length-objective and --preference-objective: give them different names")
    X_parts, Y_parts, L_parts = [], [], []
    origins: list[tuple[str, str]] = []  # (file, row id) of each response row, to name a bad rating
    for f in feats or pair_feats:  # without ratings, the length objective learns from the pairs' responses
        X = f.responses()
        origins += [(str(f.path), rid) for rid in f.ids for _ in range(X.shape[0] // max(len(f.ids), 1))]
        lab = f.tensors.get("labels")
        Y = torch.full((X.shape[0], len(objectives)), float("nan"))
        if lab is not None:
            if f.pair:
                raise ArmoError(f"{f.path}: pair features carry no ratings")
            for c, o in enumerate(f.meta.objectives):
                Y[:, objectives.index(o)] = lab[:, c]
        X_parts.append(X)
        Y_parts.append(Y)
        L_parts.append(f.response_lengths().float())
    X = torch.cat(X_parts)
    Y = torch.cat(Y_parts)
    lengths = torch.cat(L_parts)
    for o, (lo, hi) in cfg.ranges.items():
        if o not in objectives:
            raise ArmoError(f"--range {o}: no such objective (the data has: {', '.join(objectives) or 'none'})")
        y = Y[:, objectives.index(o)]
        rated = ~torch.isnan(y)
        outside = rated & ((y < lo) | (y > hi))
        if outside.any():  # a declared range the data does not keep is a wrong scale, never mapped silently
            i = int(outside.nonzero()[0])
            raise ArmoError(f"{origins[i][0]}: row {origins[i][1]!r}: field 'ratings.{o}' = {float(y[i]):g} is outside "
                            f"--range {o}={lo:g}:{hi:g} ({int(outside.sum())} of {int(rated.sum())} rated rows are; "
                            f"the data spans {float(y[rated].min()):g}..{float(y[rated].max()):g})")
    scales = {o: _parse_scale(Y[:, j], o, cfg.ranges.get(o)) for j, o in enumerate(objectives)}
    if cfg.length_objective:
        ll = torch.log1p(lengths)
        scales[cfg.length_objective] = {"lo": float(ll.min()), "hi": float(ll.max()), "transform": "log1p", "declared": False}
        Y = torch.cat([Y, lengths[:, None]], dim=1)
        objectives = objectives + [cfg.length_objective]
    if not objectives and not cfg.preference_objective:
        raise ArmoError("fit-regression: the features carry no labels (extract rows with 'ratings', or add --length-objective)")
    keep, skipped = [], {}
    for j, o in enumerate(objectives):
        n_lab = int((~torch.isnan(Y[:, j])).sum())
        sc = scales[o]
        if n_lab < cfg.min_rows:
            skipped[o] = f"only {n_lab} labelled rows (need {cfg.min_rows})"
        elif sc["hi"] <= sc["lo"]:
            skipped[o] = "constant labels: no range to scale to [0,1]"
        else:
            keep.append(j)
    for o, why in skipped.items():
        if cfg.strict:
            raise ArmoError(f"objective {o!r}: {why}")
        warn(f"skipping objective {o!r}: {why}")
    if not keep and not cfg.preference_objective:
        raise ArmoError("fit-regression: no objective has enough labelled rows")
    objectives = [objectives[j] for j in keep]
    scales = {o: scales[o] for o in objectives}
    t1 = time.perf_counter()
    if keep:
        Y = torch.stack([apply_scale(Y[:, j], scales[objectives[i]]) for i, j in enumerate(keep)], dim=1)
        train = split_mask(X.shape[0], cfg.val_fraction, cfg.seed)
        res = ridge_path(X, Y, train, cfg.alphas, cfg.intercept, cfg.refit, auto_device(cfg.device))
        weight, bias, alphas, ridge_metrics = res.weight, res.bias, res.alphas, res.metrics
    else:
        weight, bias, alphas, ridge_metrics = torch.zeros(0, X.shape[1]), torch.zeros(0), [], []
    metrics = {o: m for o, m in zip(objectives, ridge_metrics)}
    tensors = {}
    preference = None
    if cfg.preference_objective:
        R = torch.cat([f.tensors["response_features"] for f in pair_feats])
        groups = [h for f in pair_feats for h in (f.meta.prompt_hashes or f.ids)]
        if len(set(groups)) < cfg.preference_folds:
            raise ArmoError(f"--pairs: {len(set(groups))} distinct prompts, fewer than --preference-folds "
                            f"{cfg.preference_folds}; the preference head needs a prompt in every fold")
        head = fit_preference(R, groups, seed=cfg.seed, folds=cfg.preference_folds)
        name = cfg.preference_objective
        weight = torch.cat([weight, head.weight[None]])
        bias = torch.cat([bias, torch.tensor([head.bias], dtype=bias.dtype)])
        objectives = objectives + [name]
        scales[name] = {"lo": head.lo, "hi": head.hi, "transform": "linear", "declared": False, "source": "pairs"}
        hm = head.metrics
        # cross-validated: every pair trains K-1 fold heads and validates the other one
        metrics[name] = {"n_train": hm["n_pairs"], "n_val": hm["n_pairs"], "alpha": 1.0 / head.C,
                         "mse": None, "pearson": None, "spearman": None, "C": head.C,
                         "val_accuracy": hm["val_accuracy"], "grid": hm["grid"]}
        alphas = alphas + [1.0 / head.C]
        tensors = {"preference_fold_weight": head.fold_weight, "preference_fold_bias": head.fold_bias}
        preference = {"objective": name, "C": head.C, "folds": cfg.preference_folds, "fold_of": head.fold_of,
                      "pairs": [{"path": f.path, "input_hash": f.meta.input_hash, "rows": len(f.ids)} for f in pair_feats],
                      "selection": hm["selection"], "val_accuracy": hm["val_accuracy"],
                      "train_accuracy": hm["train_accuracy"], "feature_scale": hm["feature_scale"]}
    lm = parse_lm_objectives(cfg.lm_objectives)
    if lm:
        weight, bias, lm_weight = _lm_columns(lm, pair_feats or feats, objectives, scales, metrics, weight, bias)
        objectives = objectives + lm
        alphas = alphas + [None] * len(lm)
        tensors["lm_weight"] = lm_weight
    solve_s = time.perf_counter() - t1
    report = {
        "kind": "regression", "armo_version": __version__, "objectives": objectives, "scales": scales,
        "alphas": dict(zip(objectives, alphas)), "alpha_grid": cfg.alphas, "metrics": metrics,
        "skipped_objectives": skipped, "intercept": cfg.intercept, "refit": cfg.refit,
        "val_fraction": cfg.val_fraction, "seed": cfg.seed, "length_objective": cfg.length_objective,
        "preference": preference, "lm_objectives": lm or None,
        "backbone": (feats or pair_feats)[0].backbone, "hidden_size": X.shape[1], "feature_meaning": meaning.to_json(),
        "inputs": [{"path": f.path, "input_hash": f.meta.input_hash, "rows": len(f.ids)} for f in feats],
        "rows": X.shape[0], "solve_seconds": solve_s, "seconds": time.perf_counter() - t0,
    }
    save_artifact(cfg.output, {"weight": weight, "bias": bias, **tensors}, report)
    if cfg.json:
        brief = {k: v for k, v in preference.items() if k != "fold_of"} if preference else None  # no prompt map
        write_text_atomic(cfg.json, dumps(dict(report, preference=brief), indent=2) + "\n")
    show(table(f"fit-regression: {X.shape[0]} rows, d={X.shape[1]} -> {cfg.output}",
               ["objective", "n train", "n val", "alpha", "val MSE", "Pearson", "Spearman"],
               [[o, m["n_train"], m["n_val"], m["alpha"], m["mse"], m["pearson"], m["spearman"]] for o, m in metrics.items()]),
         cfg.quiet)
    if preference:
        info(f"preference objective {preference['objective']!r}: C {preference['C']:g}, cross-validated accuracy "
             f"{preference['val_accuracy']:.3f} ({preference['folds']} folds by prompt, also the cross-fitting folds)", cfg.quiet)
    return report


def _lm_columns(lm: list[str], feats: list[Features], objectives: list[str], scales: dict, metrics: dict,
                weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The LM objectives as reward columns: each mapped onto [0,1] by its range over the training responses of
    `feats` (`scales`, `metrics` gain them). Returns the weight and bias with a zero row / the offset for each,
    and lm_weight [k, q]: 1/(hi - lo) where objective row meets its LM column."""
    d = weight.shape[1]
    values = torch.cat([f.responses(lm, "--lm-objectives")[:, d:] for f in feats])
    k0, q = len(objectives), len(lm)
    lm_weight = torch.zeros(k0 + q, q)
    offsets = []
    for c, name in enumerate(lm):
        v = values[:, c]
        lo, hi = float(v.min()), float(v.max())
        if not hi > lo:
            raise ArmoError(f"--lm-objectives {name}: constant over the {v.numel()} training responses; nothing to scale to [0,1]")
        scales[name] = {"lo": lo, "hi": hi, "transform": "linear", "declared": False, "source": "lm"}
        metrics[name] = {"n_train": v.numel(), "n_val": 0, "alpha": None, "mse": None, "pearson": None, "spearman": None,
                         "source": "lm"}
        lm_weight[k0 + c, c] = 1.0 / (hi - lo)
        offsets.append(-lo / (hi - lo))
    weight = torch.cat([weight, torch.zeros(q, d, dtype=weight.dtype)])
    bias = torch.cat([bias, torch.tensor(offsets, dtype=bias.dtype)])
    return weight, bias, lm_weight


@dataclass
class Regression:
    """A fitted regression artifact: rewards r = W f(x,y) + b on [0,1] per objective, plus A l(x,y) where it reads LM
    objectives l (lm_objectives.py): its input is then the features with those as extra columns."""

    weight: torch.Tensor
    bias: torch.Tensor
    meta: RegressionMeta
    fold_weight: torch.Tensor | None = None  # the preference objective's cross-fitting heads [K,d], [K]
    fold_bias: torch.Tensor | None = None
    lm_weight: torch.Tensor | None = None  # [k, q]: the LM objectives' columns (meta.lm_objectives)

    @classmethod
    def load(cls, path: str | Path) -> "Regression":
        t, m = load_artifact(path, "regression")
        w, b, objs = t["weight"], t["bias"], m.objectives
        if w.ndim != 2 or w.shape[0] != len(objs) or tuple(b.shape) != (len(objs),):
            raise ArmoError(f"{path}: damaged regression: weight {tuple(w.shape)} and bias {tuple(b.shape)} "
                            f"do not fit {len(objs)} objectives")
        if any(o not in m.scales for o in objs):
            raise ArmoError(f"{path}: damaged regression: metadata field 'scales' does not cover every objective")
        fw, fb = t.get("preference_fold_weight"), t.get("preference_fold_bias")
        if m.preference is not None:
            p = m.preference
            if (p.get("objective") not in objs or not isinstance(p.get("fold_of"), dict) or fw is None or fb is None
                    or fw.shape != (int(p.get("folds", -1)), w.shape[1]) or fb.shape != (fw.shape[0],)):
                raise ArmoError(f"{path}: damaged regression: the preference objective's cross-fitting heads do not fit")
        lw = t.get("lm_weight")
        if (lw is None) != (not m.lm_objectives) or (lw is not None and lw.shape != (len(objs), len(m.lm_objectives))):
            raise ArmoError(f"{path}: damaged regression: the LM objectives' weights do not fit its metadata")
        return cls(w, b, m, fw, fb, lw)

    @property
    def lm_objectives(self) -> list[str]:
        """The LM objectives its input carries after the features, in order (none for most models)."""
        return self.meta.lm_objectives or []

    @property
    def objectives(self) -> list[str]:
        return self.meta.objectives

    @property
    def meaning(self) -> FeatureMeaning:
        """The response features this regression reads (no gate rule: it never sees prompt features)."""
        return FeatureMeaning.of(self.meta, "regression", prompt=False)

    def rewards(self, X: torch.Tensor) -> torch.Tensor:
        if self.lm_weight is None:
            return X.float() @ self.weight.T + self.bias
        d = self.weight.shape[1]
        if X.shape[-1] != d + self.lm_weight.shape[1]:
            raise ArmoError(f"the regression reads {d} features and the LM objectives {', '.join(self.lm_objectives)}; "
                            f"got {X.shape[-1]} columns")
        X = X.float()
        return X[..., :d] @ self.weight.T + X[..., d:] @ self.lm_weight.T + self.bias

    def rewards_out_of_fold(self, X: torch.Tensor, groups: list[str]) -> torch.Tensor:
        """Rewards for training a later stage on rows X [N,...,d] with prompt keys `groups`: the preference
        objective of a row whose prompt its head was fitted on comes from the cross-fitting head that did
        not see that prompt; every other row and objective as `rewards`."""
        r = self.rewards(X)
        p = self.meta.preference
        if not p:
            return r
        j = self.objectives.index(p["objective"])
        r[..., j] = out_of_fold(X[..., :self.weight.shape[1]], groups, self.fold_weight, self.fold_bias, p["fold_of"], r[..., j])
        return r
