"""The fitted heads as artifacts: the regression (rewards per objective), the decorrelation transform and the gate,
each loaded from its safetensors file and checked. What scoring needs of the three stages, and nothing of how they
are fitted (the maths: regression.py, decorrelation.py, gating.py; the fit jobs: fitting.py)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .artifact_files import load_artifact
from .artifacts import DecorrelationMeta, GatingMeta, RegressionMeta
from .errors import ArmoError, one_line
from .jsonl import sha256_json
from .preference import out_of_fold
from .provenance import FeatureMeaning


def apply_scale(y: torch.Tensor, scale: dict) -> torch.Tensor:
    if scale["transform"] == "log1p":
        y = torch.log1p(y)
    return (y - scale["lo"]) / (scale["hi"] - scale["lo"])



def unscale(r: torch.Tensor, scale: dict) -> torch.Tensor:
    """A [0,1] prediction back on the objective's original scale (tokens for a length objective)."""
    y = r * (scale["hi"] - scale["lo"]) + scale["lo"]
    return torch.expm1(y) if scale["transform"] == "log1p" else y



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

    @property
    def against(self) -> list[str]:
        """The objectives every other was decorrelated from (their own decorrelated rewards are 0)."""
        return list(self.meta.against or ([self.meta.verbosity] if self.meta.verbosity else []))

    @classmethod
    def identity(cls, objectives: list[str]) -> "Decorrelation":
        return cls(torch.eye(len(objectives)), DecorrelationMeta(objectives=list(objectives), identity=True))


# A blocked objective's logit: exp(-1e9 / T) is exactly 0 in every float dtype, so its weight is exactly 0. Kept
# in the last layer's bias (not a mask buffer), so exported ArmoRM-format checkpoints carry it with no new code.
BLOCKED_LOGIT = -1e9



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
