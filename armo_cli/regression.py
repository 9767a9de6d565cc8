"""Stage 1's maths: multi-objective ridge regression from response features to absolute ratings.

One eigendecomposition of the training Gram matrix per distinct label mask gives the whole
regularisation path in closed form: w(a) = V diag(1/(e+a)) V^T X^T y. The artifact is heads.Regression; the job,
fitting.fit_regression.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

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


