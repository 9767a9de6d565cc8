"""Stage 2: the mixture-of-experts gate g(f(x)) over objectives, trained with Bradley-Terry on pairs.

Score R = g(f(x))^T (r @ T), r = W f(x,y) + b. Only the gate trains; the regression and the
decorrelation transform are frozen (and the transform is applied in training and evaluation alike). This module is
the maths (the Bradley-Terry loop, the baselines); the gate module and its artifact are in heads.py (Gate, Gating), the
job is fitting.fit_gating.
"""
from __future__ import annotations

import math

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .configs import GatingConfig
from .heads import Regression


def blocked_objectives(T: torch.Tensor) -> list[int]:
    """Objectives whose adjusted reward is identically zero (a zero column of T: the length objective after
    decorrelation). Weight there only shrinks the score, so the gate may not choose them."""
    return [j for j in range(T.shape[1]) if not bool(T[:, j].any())]


def uniform_weights(T: torch.Tensor) -> torch.Tensor:
    """Equal weights over the objectives a gate may choose (a zeroed objective is left out): the baseline."""
    allowed = torch.ones(T.shape[1])
    allowed[blocked_objectives(T)] = 0.0
    return allowed / allowed.sum()


def adjusted_rewards(reg: Regression, T: torch.Tensor, response_features: torch.Tensor,
                     groups: list[str] | None = None) -> torch.Tensor:
    """r' = (W f + b) @ T for features of any leading shape [..., d] -> [..., k]. With the rows' prompt keys,
    a preference objective fitted on these pairs gives out-of-fold rewards (no leakage into the gate)."""
    r = reg.rewards(response_features) if groups is None else reg.rewards_out_of_fold(response_features, groups)
    return r @ T


def pair_scores(weights: torch.Tensor, radj: torch.Tensor) -> torch.Tensor:
    """weights [N,k] (one gate evaluation per prompt), radj [N,2,k] -> scores [N,2]."""
    return (weights[:, None, :] * radj).sum(-1)


def bt_loss(scores: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(scores[:, 0] - scores[:, 1]).mean()


def accuracy(scores: torch.Tensor) -> float:
    return float((scores[:, 0] > scores[:, 1]).float().mean())


def grouped_split(groups: list[str], val_fraction: float, seed: int) -> torch.Tensor:
    """True for training rows; every row of a prompt group lands on the same side."""
    uniq = sorted(set(groups))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(uniq), generator=g).tolist()
    n_val = int(round(len(uniq) * val_fraction))
    val = {uniq[i] for i in perm[:n_val]}
    return torch.tensor([k not in val for k in groups])


def best_single_objective(radj: torch.Tensor) -> int:
    """The objective whose (adjusted) reward alone orders the most pairs right; radj [N,2,k]."""
    acc = [accuracy(radj[:, :, j]) for j in range(radj.shape[-1])]
    return max(range(len(acc)), key=lambda j: acc[j])


def sized_steps(n_train: int, batch_size: int, passes: int = 30, lo: int = 200, hi: int = 2000) -> int:
    """Training steps for `passes` passes over the training pairs, within [lo, hi]: 28 example pairs get 200 steps
    (seconds), a large set today's 2000."""
    return max(lo, min(hi, math.ceil(passes * n_train / batch_size)))


def train_bt(model: nn.Module, train_scores: Callable[[torch.Tensor], torch.Tensor],
             val_scores: Callable[[], torch.Tensor] | None, n_train: int, cfg: GatingConfig,
             on_eval: Callable[[int, float], None] | None = None, on_step: Callable[[], None] | None = None) -> dict:
    """The one Bradley-Terry training loop (the gate and the linear control both use it): AdamW with a
    cosine schedule on seeded minibatches of training pairs, validation loss every `eval_every` steps,
    early stopping after `patience` evaluations without improvement. The model ends in its best state.

    train_scores(idx) -> [B,2] scores of those training pairs; val_scores() -> [n_val,2] (None: no
    validation pairs, the training loss decides)."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1))
    best_loss, best_step = float("inf"), 0
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    bad, step, history = 0, 0, []
    for step in range(1, cfg.steps + 1):
        model.train()
        idx = torch.randint(0, n_train, (min(cfg.batch_size, n_train),), generator=g)  # seeded on the CPU
        idx = idx.to(next(model.parameters()).device)
        loss = bt_loss(train_scores(idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            with torch.no_grad():
                vl = float(bt_loss(val_scores())) if val_scores is not None else loss.item()
            history.append([step, loss.item(), vl])
            if on_eval:
                on_eval(step, vl)
            if vl < best_loss - 1e-6:
                best_loss, best_step, bad = vl, step, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if on_step:
            on_step()
    model.load_state_dict(best_state)
    model.eval()
    return {"steps_run": step, "best_step": best_step, "best_val_loss": best_loss, "history": history}


def train_linear_bt(X: torch.Tensor, tr: torch.Tensor, va: torch.Tensor, cfg: GatingConfig) -> torch.Tensor:
    """The non-MoE control: a linear Bradley-Terry head on response features X [N,2,d], same pairs, same
    budget, same loop as the gate. Returns its weight vector [d]."""
    head = nn.Linear(X.shape[-1], 1, bias=False).to(X.device)
    nn.init.zeros_(head.weight)
    Xtr, Xva = X[tr], X[va]
    train_bt(head, lambda idx: head(Xtr[idx]).squeeze(-1), (lambda: head(Xva).squeeze(-1)) if Xva.shape[0] else None,
             Xtr.shape[0], cfg)
    return head.weight.detach()[0].clone()


