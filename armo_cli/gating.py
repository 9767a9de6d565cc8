"""Stage 2: the mixture-of-experts gate g(f(x)) over objectives, trained with Bradley-Terry on pairs.

Score R = g(f(x))^T (r @ T), r = W f(x,y) + b. Only the gate trains; the regression and the
decorrelation transform are frozen (and the transform is applied in training and evaluation alike).
"""
from __future__ import annotations

import dataclasses
import math

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .version import __version__
from .console import progress, show, table, info
from .decorrelation import Decorrelation, regression_hash, transform_hash
from .features import Features
from .errors import ArmoError, one_line
from .artifact_files import load_artifact, save_artifact
from .jsonl import dumps
from .outputs import check_outputs, write_text_atomic
from .artifacts import GatingMeta
from .devices import auto_device
from .configs import GatingConfig
from .options import validate
from .provenance import FeatureMeaning, require_compatible, require_one_meaning
from .regression import Regression


# A blocked objective's logit: exp(-1e9 / T) is exactly 0 in every float dtype, so its weight is exactly 0. Kept
# in the last layer's bias (not a mask buffer), so exported ArmoRM-format checkpoints carry it with no new code.
BLOCKED_LOGIT = -1e9


def blocked_objectives(T: torch.Tensor) -> list[int]:
    """Objectives whose adjusted reward is identically zero (a zero column of T: the length objective after
    decorrelation). Weight there only shrinks the score, so the gate may not choose them."""
    return [j for j in range(T.shape[1]) if not bool(T[:, j].any())]


def uniform_weights(T: torch.Tensor) -> torch.Tensor:
    """Equal weights over the objectives a gate may choose (a zeroed objective is left out): the baseline."""
    allowed = torch.ones(T.shape[1])
    allowed[blocked_objectives(T)] = 0.0
    return allowed / allowed.sum()


class Gate(nn.Module):
    """ArmoRM's GatingNetwork: an MLP ending in a softmax over the objectives, times a learnable scale."""

    def __init__(self, in_features: int, out_features: int, hidden_dim: int = 1024, n_hidden: int = 3,
                 temperature: float = 10.0, logit_scale: float = 1.0, dropout: float = 0.2):
        super().__init__()
        self.temperature = temperature
        self.dropout = dropout
        self.logit_scale = nn.Parameter(torch.ones(1) * logit_scale)
        layers = []
        d = in_features
        for _ in range(n_hidden):
            layers.append(nn.Linear(d, hidden_dim))
            d = hidden_dim
        layers.append(nn.Linear(d, out_features))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
                if self.dropout > 0:
                    x = F.dropout(x, p=self.dropout, training=self.training)
        # over the objectives (the last axis); the research code took it over chosen/rejected
        return F.softmax(x / self.temperature, dim=-1) * self.logit_scale[0]

    @torch.no_grad()
    def block(self, objectives: list[int]) -> None:
        """Give these objectives weight 0 whatever the prompt: zero rows and a pinned bias in the last layer."""
        if objectives:
            last = self.layers[-1]
            last.weight[objectives] = 0.0
            last.bias[objectives] = BLOCKED_LOGIT


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


def _load_parts(features: list[str], regression: str, decorrelation: str | None):
    reg = Regression.load(regression)
    if decorrelation:
        dec = Decorrelation.load(decorrelation)
        if dec.meta.objectives != reg.objectives:
            raise ArmoError(f"{decorrelation}: objectives {dec.meta.objectives} differ from {regression}'s {reg.objectives}")
        if dec.meta.regression_hash not in (None, regression_hash(reg)):
            raise ArmoError(f"{decorrelation}: fitted on another regression artifact than {regression}")
        require_compatible(reg.meaning, FeatureMeaning.of(dec.meta, decorrelation, prompt=False), regression, decorrelation)
    else:
        dec = Decorrelation.identity(reg.objectives)
    feats = [Features.load(p) for p in features]
    for f in feats:
        require_compatible(reg.meaning, f.meaning(prompt=False), regression, f.path)
        if not f.pair:
            raise ArmoError(f"{f.path}: features without pairs (extract rows with 'chosen' and 'rejected')")
    # the gate reads prompt features: all of them at one position (gate rule), recorded with the gate
    meaning = require_one_meaning([(f.meaning(prompt=True), f.path) for f in feats], prompt=True)
    return reg, dec, feats, meaning


def fit_gating(cfg: GatingConfig) -> dict:
    """Run `armo fit-gating` and return its report."""
    validate(cfg)
    check_outputs(cfg.output, cfg.json, [cfg.regression, cfg.decorrelation, *cfg.features])
    dev = auto_device(cfg.device)
    if not cfg.features:
        raise ArmoError("fit-gating: give at least one pair features file")
    t0 = time.perf_counter()
    reg, dec, feats, meaning = _load_parts(cfg.features, cfg.regression, cfg.decorrelation)
    if dec.meta.identity:
        info("no decorrelation artifact given: using the identity transform", cfg.quiet, done="note:", style="yellow")
    torch.manual_seed(cfg.seed)
    P = torch.cat([f.tensors["prompt_features"] for f in feats]).float()
    Rf = torch.cat([f.inputs(reg.lm_objectives, "the regression") for f in feats]).float()
    groups = [h for f in feats for h in (f.meta.prompt_hashes or f.ids)]
    T = dec.transform
    radj = adjusted_rewards(reg, T, Rf, groups)  # [N,2,k], frozen; out-of-fold for the preference objective
    fold_of = (reg.meta.preference or {}).get("fold_of", {})
    out_of_fold = sum(1 for g in groups if g in fold_of)
    tr = grouped_split(groups, cfg.val_fraction, cfg.seed)
    va = ~tr
    if int(tr.sum()) == 0:
        raise ArmoError("fit-gating: no training pairs after the validation split")
    if cfg.steps is None:  # small data gets a short run, large data today's 2000 steps
        cfg = dataclasses.replace(cfg, steps=sized_steps(int(tr.sum()), cfg.batch_size))
        info(f"{cfg.steps} steps at most (30 passes over {int(tr.sum())} training pairs; --steps sets it)", cfg.quiet,
             done="fit-gating:")
    k = len(reg.objectives)
    gate = Gate(P.shape[1], k, cfg.hidden_dim, cfg.n_hidden, cfg.temperature, cfg.logit_scale, cfg.dropout)
    blocked = blocked_objectives(T)
    gate.block(blocked)
    # the gate and its inputs on one device (checked before any work); the artifact is saved from the CPU
    gate, P, Rf, radj = gate.to(dev), P.to(dev), Rf.to(dev), radj.to(dev)
    tr, va = tr.to(dev), va.to(dev)
    Ptr, Rtr, Pva, Rva = P[tr], radj[tr], P[va], radj[va]
    with progress(cfg.quiet) as pbar:
        task = pbar.add_task("fit-gating", total=cfg.steps, rate="")
        run = train_bt(gate, lambda idx: pair_scores(gate(Ptr[idx]), Rtr[idx]),
                       (lambda: pair_scores(gate(Pva), Rva)) if Pva.shape[0] else None, Ptr.shape[0], cfg,
                       on_eval=lambda step, vl: pbar.update(task, rate=f"val loss {vl:.4f}"),
                       on_step=lambda: (gate.block(blocked), pbar.update(task, advance=1)))
        pbar.update(task, completed=cfg.steps)
    gate.block(blocked)  # the restored best state too, exactly
    metrics = compare(gate, P, Rf, radj, tr, va, reg, cfg)
    report = {
        "kind": "gating", "armo_version": __version__, "objectives": reg.objectives,
        "config": {"in_features": P.shape[1], "hidden_dim": cfg.hidden_dim, "n_hidden": cfg.n_hidden,
                   "temperature": cfg.temperature, "dropout": cfg.dropout},
        "training": {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size, "steps": cfg.steps,
                     **run, "seed": cfg.seed, "val_fraction": cfg.val_fraction},
        "pairs": {"train": int(tr.sum()), "val": int(va.sum())}, "metrics": metrics,
        "backbone": reg.meta.backbone, "regression_hash": regression_hash(reg),
        "feature_meaning": meaning.to_json(), "gate_rule": meaning.gate_rule,
        "decorrelation": "identity" if dec.meta.identity else dec.meta.reference_hash,
        "transform_hash": transform_hash(T), "logit_scale": gate.logit_scale.item(),
        "preference_out_of_fold_pairs": out_of_fold, "blocked_objectives": [reg.objectives[j] for j in blocked],
        "seconds": time.perf_counter() - t0,
    }
    save_artifact(cfg.output, {k_: v.cpu() for k_, v in gate.state_dict().items()}, report)
    if cfg.json:
        write_text_atomic(cfg.json, dumps(report, indent=2) + "\n")
    show(table(f"fit-gating: {int(tr.sum())} train / {int(va.sum())} validation pairs (grouped by prompt) -> {cfg.output}",
               ["scorer", "val accuracy", "val loss"],
               [[m["name"], m["accuracy"], m["loss"]] for m in metrics]), cfg.quiet)
    return report


@torch.no_grad()
def compare(gate: Gate, P, Rf, radj, tr, va, reg: Regression, cfg: GatingConfig) -> list[dict]:
    """The gate next to uniform weights, the best single objective and a linear BT control, on validation."""
    k = radj.shape[-1]
    out = []
    va_ = va if int(va.sum()) else tr

    def add(name: str, scores: torch.Tensor, **extra):
        out.append({"name": name, "accuracy": accuracy(scores), "loss": float(bt_loss(scores)), **extra})

    add("moe gate", pair_scores(gate(P[va_]), radj[va_]))
    add("uniform weights", pair_scores(torch.full((int(va_.sum()), k), 1.0 / k, device=radj.device), radj[va_]))
    j = best_single_objective(radj[tr])
    add(f"best single objective ({reg.objectives[j]})", radj[va_][:, :, j], objective=reg.objectives[j])
    with torch.enable_grad():
        w = train_linear_bt(Rf, tr, va, cfg)
    add("linear BT head (non-MoE)", Rf[va_] @ w)
    return out


@dataclass
class Gating:
    gate: Gate
    meta: GatingMeta

    @classmethod
    def load(cls, path: str | Path) -> "Gating":
        t, m = load_artifact(path, "gating")
        c = m.shape(str(path))
        try:
            gate = Gate(c.in_features, len(m.objectives), c.hidden_dim, c.n_hidden, c.temperature, 1.0, c.dropout)
            gate.load_state_dict(t)
        except (RuntimeError, ValueError) as e:
            raise ArmoError(f"{path}: the gate's tensors do not fit its config ({one_line(e)[:160]})") from None
        gate.eval().requires_grad_(False)
        return cls(gate, m)
