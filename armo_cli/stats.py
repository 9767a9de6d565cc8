"""Small statistics shared by every stage: ranks, correlations, bootstrap intervals."""
from __future__ import annotations

import torch


def rankdata(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based) along the last axis, ties sharing their mean rank (as scipy)."""
    x = x.double()
    order = torch.argsort(x, dim=-1, stable=True)
    xs = torch.gather(x, -1, order)
    n = x.shape[-1]
    ranks_sorted = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).expand_as(xs).clone()
    # group equal values: mean rank over each run of ties
    new = torch.ones_like(xs, dtype=torch.bool)
    new[..., 1:] = xs[..., 1:] != xs[..., :-1]
    gid = torch.cumsum(new.long(), dim=-1) - 1
    sums = torch.zeros_like(xs).scatter_add_(-1, gid, ranks_sorted)
    counts = torch.zeros_like(xs).scatter_add_(-1, gid, torch.ones_like(xs))
    mean = sums / counts.clamp_min(1)
    ranks_sorted = torch.gather(mean, -1, gid)
    out = torch.empty_like(xs)
    out.scatter_(-1, order, ranks_sorted)
    return out


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    den = (a.norm() * b.norm()).item()
    return float((a @ b).item() / den) if den > 0 else float("nan")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return pearson(rankdata(a), rankdata(b))


def bootstrap_ci(correct: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of a mean of per-item scores (1, 0.5 or 0)."""
    n = correct.numel()
    if n == 0:
        return [float("nan"), float("nan")]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g)
    means = correct.double()[idx].mean(dim=1)
    lo = torch.quantile(means, (1 - level) / 2).item()
    hi = torch.quantile(means, 1 - (1 - level) / 2).item()
    return [lo, hi]
