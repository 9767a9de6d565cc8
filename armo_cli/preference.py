"""A preference objective fitted from pairs: a linear Bradley-Terry head, stored as one more row of the
regression layer so that decorrelation, the gate, score, export and import need no special case.

The head maximises the Bradley-Terry likelihood of chosen over rejected with an L2 penalty, written as
scikit-learn's LogisticRegression on the symmetric pairs (D, 1), (-D, 0) with D = (f(chosen) - f(rejected)) / s
(s: each feature dimension's standard deviation over the training responses, see `feature_scale`) and no
intercept:  min_w  C * sum_2n logloss + ||w||^2 / 2  =  2C * sum_n softplus(-D.w) + ||w||^2 / 2; the stored
row is w / s.
C is chosen from a half-decade grid by K-fold cross-validation grouped by prompt (the mean out-of-fold
Bradley-Terry loss over every pair): on the default model's pairs a single 20% split chose 1e-4 or 1e-3
depending on its seed; the 5-fold choice is steadier. The head is then refitted on every pair. Its utility
u = w.x is mapped to [0,1] over the training responses' range, like the ratings, so `rewards_original` is
the utility itself.

Cross-fitting: the same K folds give K heads at the chosen C, each fitted without one fold. A gate (and the
decorrelation) trained on these pairs gets, for each pair, the reward of the head that did not see it
(`out_of_fold`), never the in-sample one.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_C = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0]


def fit_bt(D: torch.Tensor, C: float, max_iter: int = 500, init: torch.Tensor | None = None) -> torch.Tensor:
    """The Bradley-Terry head for differences D [n,d] at strength C (float64, L-BFGS to a tight tolerance).
    The loss is strictly convex, so `init` (a warm start) changes the time, not the answer."""
    D = D.double()
    w = (torch.zeros(D.shape[1], dtype=torch.float64) if init is None else init.double().clone()).requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = 2 * C * F.softplus(-(D @ w)).sum() + 0.5 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def bt_accuracy(D: torch.Tensor, w: torch.Tensor) -> float:
    return float(((D.double() @ w) > 0).double().mean())


def grouped_folds(groups: list[str], k: int, seed: int) -> dict[str, int]:
    """Each prompt group's fold (0..k-1), by a seeded shuffle of the distinct groups."""
    uniq = sorted(set(groups))
    random.Random(seed).shuffle(uniq)
    return {g: i % k for i, g in enumerate(uniq)}


def out_of_fold(X: torch.Tensor, groups: list[str], fold_weight: torch.Tensor, fold_bias: torch.Tensor,
                fold_of: dict[str, int], full: torch.Tensor) -> torch.Tensor:
    """Cross-fitted rewards for rows X [N,...,d] with prompt keys `groups`: `full` [N,...] (the full head's
    rewards), except that a row whose prompt a head was fitted on gets the fold head that did not see it."""
    u = full.clone()
    fold = torch.tensor([fold_of.get(g, -1) for g in groups])
    for k in range(fold_weight.shape[0]):
        rows = fold == k
        if rows.any():
            u[rows] = X[rows].float() @ fold_weight[k] + fold_bias[k]
    return u


@dataclass
class PreferenceHead:
    weight: torch.Tensor  # [d]: the [0,1]-scaled row, reward = x.weight + bias
    bias: float
    lo: float  # the utility range over the training responses (reward 0 and 1)
    hi: float
    C: float
    fold_weight: torch.Tensor  # [K,d] scaled rows of the K cross-fitting heads
    fold_bias: torch.Tensor  # [K]
    fold_of: dict[str, int]  # prompt group -> the fold whose head did not see it
    metrics: dict


def _scaled(w: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, float, float, float]:
    """A head mapped to [0,1] over the utilities of the responses X [M,d]: (row, bias, lo, hi)."""
    u = X.double() @ w
    lo, hi = float(u.min()), float(u.max())
    span = hi - lo if hi > lo else 1.0
    return (w / span).float(), -lo / span, lo, hi


def feature_scale(X: torch.Tensor) -> torch.Tensor:
    """Per-dimension standard deviation of the responses X [M,d] (1 where a dimension is constant, as
    scikit-learn's StandardScaler). A head is fitted on x / scale, so that its L2 penalty weighs every
    dimension alike: a middle layer's residual stream has a few dimensions ten times the others, which an
    unscaled penalty all but leaves alone. The head is stored as w / scale, so `score` needs nothing new."""
    sd = X.double().std(0)
    return torch.where(sd > 1e-12, sd, torch.ones_like(sd))


def fit_preference(R: torch.Tensor, groups: list[str], grid: list[float] | None = None, seed: int = 0,
                   folds: int = 5) -> PreferenceHead:
    """R [N,2,d] pair response features (chosen, rejected), `groups` their prompt keys."""
    grid = list(grid or DEFAULT_C)
    d = R.shape[-1]
    D = (R[:, 0] - R[:, 1]).double()
    fold_of = grouped_folds(groups, folds, seed)
    fold = torch.tensor([fold_of[g] for g in groups])
    # each fold head scales by its own training responses: nothing of the held-out fold reaches it
    scales = [feature_scale(R[fold != k].reshape(-1, d)) for k in range(folds)]
    per_c, fold_heads = [], {}
    ws: list[torch.Tensor | None] = [None] * folds
    for C in sorted(grid):  # each fold's path warm-starts from its head at the previous C
        ws = [fit_bt(D[fold != k] / scales[k], C, init=ws[k]) for k in range(folds)]
        # every pair scored once, by the head fitted without its fold
        u = torch.cat([D[fold == k] @ (ws[k] / scales[k]) for k in range(folds)])
        per_c.append({"C": C, "cv_loss": float(F.softplus(-u).mean()), "cv_accuracy": float((u > 0).double().mean())})
        fold_heads[C] = ws
    best = min(per_c, key=lambda m: m["cv_loss"])  # first (strongest penalty) on a tie
    C = best["C"]
    X = R.reshape(-1, d)
    scale = feature_scale(X)
    w = fit_bt(D / scale, C) / scale
    row, bias, lo, hi = _scaled(w, X)
    fold_rows, fold_bias = [], []
    for k, wk in enumerate(fold_heads[C]):
        rk, bk, _, _ = _scaled(wk / scales[k], R[fold != k].reshape(-1, d))
        fold_rows.append(rk)
        fold_bias.append(bk)
    metrics = {"grid": per_c, "C": C, "n_pairs": int(D.shape[0]), "selection": f"{folds}-fold cross-validation by prompt",
               "train_accuracy": bt_accuracy(D, w), "val_accuracy": best["cv_accuracy"], "folds": folds,
               "feature_scale": "per-dimension standard deviation of the training responses (each fold head: its own)"}
    return PreferenceHead(row, bias, lo, hi, C, torch.stack(fold_rows), torch.tensor(fold_bias, dtype=torch.float32),
                          fold_of, metrics)
