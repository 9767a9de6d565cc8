"""The features file: what `armo extract` wrote, read back and checked."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .artifacts import FeaturesMeta
from .errors import ArmoError
from .artifact_files import load_artifact
from .lm_objectives import TENSOR as LM_TENSOR
from .style import TENSOR as STYLE_TENSOR
from .provenance import FeatureMeaning


@dataclass
class Features:
    """An extract output in memory."""

    path: str
    tensors: dict[str, torch.Tensor]
    meta: FeaturesMeta

    @classmethod
    def load(cls, path: str | Path) -> "Features":
        t, m = load_artifact(path, "features")
        if not m.ids:
            raise ArmoError(f"{path}: holds no rows (an extract shard that got none); `armo merge` it with the others")
        n, pair = len(m.ids), m.pair
        P, R = t["prompt_features"], t["response_features"]
        if P.ndim != 2 or R.ndim != (3 if pair else 2) or (pair and R.shape[1] != 2) or R.shape[-1] != P.shape[-1]:
            raise ArmoError(f"{path}: damaged features: prompt {tuple(P.shape)} and response {tuple(R.shape)} features "
                            f"do not fit {'pairs' if pair else 'single responses'}")
        for k, v in t.items():
            if v.shape[0] != n:
                raise ArmoError(f"{path}: damaged features: tensor '{k}' has {v.shape[0]} rows for {n} ids")
        lm = t.get(LM_TENSOR)
        if (lm is None) != (not m.lm_objectives) or (lm is not None and lm.shape != (*R.shape[:-1], len(m.lm_objectives))):
            raise ArmoError(f"{path}: damaged features: the '{LM_TENSOR}' tensor does not fit the LM objectives "
                            f"{m.lm_objectives or []} of the metadata")
        style = t.get(STYLE_TENSOR)
        if (style is None) != (not m.style_measures) or (
                style is not None and style.shape != (*R.shape[:-1], len(m.style_measures))):
            raise ArmoError(f"{path}: damaged features: the '{STYLE_TENSOR}' tensor does not fit the style measures "
                            f"{m.style_measures or []} of the metadata")
        if "labels" in t and t["labels"].shape[1:] != (len(m.objectives),):
            raise ArmoError(f"{path}: damaged features: labels {tuple(t['labels'].shape)} for {len(m.objectives)} objectives")
        return cls(str(path), t, m)

    @property
    def pair(self) -> bool:
        return self.meta.pair

    @property
    def ids(self) -> list[str]:
        return self.meta.ids

    @property
    def backbone(self) -> dict:
        return self.meta.backbone

    def meaning(self, prompt: bool = True) -> FeatureMeaning:
        """What these features mean; prompt=False leaves out the gate rule (response features only)."""
        return FeatureMeaning.of(self.meta, self.path, prompt)

    @property
    def hidden_size(self) -> int:
        return int(self.tensors["prompt_features"].shape[-1])

    def inputs(self, lm: list[str] | None = None, what: str = "the model") -> torch.Tensor:
        """The response features [N,(2,)d] with the LM objectives `lm` as extra columns [N,(2,)d+q] (what
        Regression.rewards reads). Features without one of them are refused, naming how to extract it."""
        r = self.tensors["response_features"]
        if not lm:
            return r
        have = self.meta.lm_objectives or []
        missing = [n for n in lm if n not in have]
        if missing:
            raise ArmoError(f"{self.path}: {what} needs the LM objective{'s' * (len(missing) > 1)} {', '.join(missing)}, "
                            f"which these features do not carry (extract them with --lm-objectives {','.join(lm)})")
        t = self.tensors[LM_TENSOR]
        return torch.cat([r, t[..., [have.index(n) for n in lm]]], -1)

    def responses(self, lm: list[str] | None = None, what: str = "the model") -> torch.Tensor:
        """All response inputs (see `inputs`) as [M,d(+q)] (pairs flattened chosen, rejected)."""
        r = self.inputs(lm, what)
        return r.reshape(-1, r.shape[-1])

    def response_lengths(self) -> torch.Tensor:
        return self.tensors["response_lengths"].reshape(-1)

    def style_densities(self, objectives: list[str]) -> torch.Tensor:
        """[M, len(objectives)] marks per token of every response (pairs flattened), for the style objectives."""
        from .style import STYLE_MEASURES, densities

        if self.meta.style_measures != list(STYLE_MEASURES):
            raise ArmoError(f"{self.path}: carries no style counts (extracted before armo measured style, #46); extract "
                            f"it again for --style-objectives")
        counts = self.tensors[STYLE_TENSOR]
        return densities(counts.reshape(-1, counts.shape[-1]), self.response_lengths(), objectives)
