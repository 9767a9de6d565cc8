"""fit-regression's closed-form solver against a scikit-learn Ridge loop, side by side.

n = 20,000 rows, d = 576, 11 objectives rated by 5 sources (each row rates only its source's
objectives, as ../shared/data/ratings.jsonl.gz), grid 1e-4..1e4, validation split 0.2, refit on all.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from armo_cli.configs import DEFAULT_ALPHAS
from armo_cli.regression import ridge_path, split_mask


def problem(n=20_000, d=576, seed=0):
    g = torch.Generator().manual_seed(seed)
    sources = [[0], [1, 2], [3], [4, 5, 6, 7, 8, 9], [10]]  # objectives each source rates
    k = 11
    X = torch.randn(n, d, generator=g) + 0.3 * torch.randn(1, d, generator=g)
    W = torch.randn(k, d, generator=g) / d ** 0.5
    noise = torch.linspace(0.05, 2.0, k)
    Y = X @ W.T + torch.randn(n, k, generator=g) * noise
    src = torch.randint(0, len(sources), (n,), generator=g)
    mask = torch.zeros(n, k, dtype=torch.bool)
    for s, objs in enumerate(sources):
        for j in objs:
            mask[src == s, j] = True
    Y[~mask] = float("nan")
    return X, Y


def main() -> None:
    from sklearn.linear_model import Ridge

    torch.set_num_threads(torch.get_num_threads())
    X, Y = problem()
    train = split_mask(X.shape[0], 0.2, 0)
    t0 = time.perf_counter()
    res = ridge_path(X, Y, train, DEFAULT_ALPHAS)
    t_armo = time.perf_counter() - t0

    Xn, Yn = X.numpy().astype(np.float64), Y.numpy().astype(np.float64)
    tr_all = train.numpy()
    t0 = time.perf_counter()
    choices, coefs = [], []
    for j in range(Y.shape[1]):
        lab = ~np.isnan(Yn[:, j])
        tr, va = lab & tr_all, lab & ~tr_all
        mses = [((Ridge(alpha=a, fit_intercept=False).fit(Xn[tr], Yn[tr, j]).predict(Xn[va]) - Yn[va, j]) ** 2).mean()
                for a in DEFAULT_ALPHAS]
        a = DEFAULT_ALPHAS[int(np.argmin(mses))]
        choices.append(a)
        coefs.append(Ridge(alpha=a, fit_intercept=False).fit(Xn[lab], Yn[lab, j]).coef_)
    t_ref = time.perf_counter() - t0
    rel = max(np.abs(c - res.weight[j].double().numpy()).max() / np.abs(c).max() for j, c in enumerate(coefs))
    print(f"n={X.shape[0]} d={X.shape[1]} objectives={Y.shape[1]} sources=5 grid={len(DEFAULT_ALPHAS)}")
    print(f"armo closed form:     {t_armo:8.3f} s")
    print(f"scikit-learn loop:    {t_ref:8.3f} s  ({len(DEFAULT_ALPHAS) + 1} Ridge fits per objective)")
    print(f"speed-up:             {t_ref / t_armo:8.1f}x  (target >= 10x)")
    print(f"choices identical:    {choices == res.alphas}  {res.alphas}")
    print(f"max relative weight difference: {rel:.2e}")


if __name__ == "__main__":
    main()
