"""Verbosity decorrelation: r_i' = r_i - lambda_i * r_v with Corr(r_i', r_v) = 0 on a reference set; and against a
set S of objectives (length and style, #46): r_i' = r_i - sum_j Lambda_ji r_j with Corr(r_i', r_j) = 0 for each j in S,
over the set or within each prompt.

Stored as ArmoRM's `reward_transform_matrix`: r' = r @ T, T = I with T[v, :] -= lambda (lambda_v = 1,
so the verbosity objective's own adjusted reward is 0). This module is the maths (solve_lambda, the transform); the
artifact is heads.Decorrelation, the job fitting.fit_decorrelation.
"""
from __future__ import annotations


import torch

from .stats import pearson, spearman


def correlation(method: str):
    return spearman if method == "spearman" else pearson


def solve_lambda(r: torch.Tensor, v: torch.Tensor, method: str = "spearman", tolerance: float = 1e-3,
                 bounds: tuple[float, float] | None = None, max_iter: int = 200) -> tuple[float, float, str]:
    """lambda with |Corr(r - lambda v, v)| <= tolerance; returns (lambda, corr after, status)."""
    r, v = r.double(), v.double()
    lo_b, hi_b = bounds if bounds is not None else (-float("inf"), float("inf"))
    vc = v - v.mean()
    lam0 = float(((r - r.mean()) @ vc) / (vc @ vc))  # Pearson's closed form
    corr = correlation(method)

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


def centered(X: torch.Tensor, groups: list[str] | None = None) -> torch.Tensor:
    """X [n, k] minus its mean (over the set), or minus each group's mean (`groups`: a key per row, e.g. its prompt):
    what a correlation within a prompt is computed on. A group of one row is all mean: it tells nothing within."""
    X = X.double()
    if groups is None:
        return X - X.mean(0)
    keys: dict[str, int] = {}
    idx = torch.tensor([keys.setdefault(g, len(keys)) for g in groups])
    sums = torch.zeros(len(keys), X.shape[1], dtype=X.dtype).index_add_(0, idx, X)
    n = torch.zeros(len(keys), dtype=X.dtype).index_add_(0, idx, torch.ones(len(groups), dtype=X.dtype))
    return X - (sums / n[:, None])[idx]


def centered_corr(Xc: torch.Tensor, a: int, b: int) -> float | None:
    """Pearson correlation of two centered columns (None where one is constant)."""
    x, y = Xc[:, a], Xc[:, b]
    d = float(x.norm() * y.norm())
    return float(x @ y) / d if d > 1e-24 else None


def solve_set(R: torch.Tensor, against: list[int], groups: list[str] | None = None) -> torch.Tensor:
    """Lambda [|S|, k] such that every r_i' = r_i - sum_j Lambda[j, i] r_j (j in S = `against`) has Pearson correlation 0
    with each r_j over the reference rows (within each group, where `groups` are given): one least-squares solve,
    Lambda = Cov(S)^-1 Cov(S, R). The objectives in S themselves go to 0 (Lambda[:, j] = e_j)."""
    Xc = centered(R, groups)
    S = Xc[:, against]
    G = S.T @ S
    if torch.linalg.matrix_rank(G) < len(against):
        raise ValueError("the objectives to decorrelate against are constant or collinear over the reference rows")
    lam = torch.linalg.solve(G, S.T @ Xc)
    for n, j in enumerate(against):
        lam[:, j] = 0.0
        lam[n, j] = 1.0
    return lam


def set_transform(lam: torch.Tensor, against: list[int]) -> torch.Tensor:
    """r' = r @ T: T = I with T[j, :] -= Lambda[j] for each j in `against` (ArmoRM's reward_transform_matrix)."""
    T = torch.eye(lam.shape[1], dtype=torch.float64)
    for n, j in enumerate(against):
        T[j, :] -= lam[n]
    return T.float()


def transform_matrix(lambdas: torch.Tensor, v: int) -> torch.Tensor:
    k = lambdas.numel()
    lam = lambdas.clone().float()
    lam[v] = 1.0
    T = torch.eye(k)
    T[v, :] -= lam
    return T


