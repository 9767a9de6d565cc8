"""Typed metadata of armo's artifacts: one small dataclass per kind, with to/from JSON and validation.

Every safetensors artifact carries its metadata as JSON; a model directory carries `armo.json`. These
classes are the one place that says which fields each kind has, which are required and of what type.
`from_json` refuses a missing or mistyped field in one line naming the file and the field; fields this
version does not know are kept in `extra` and written back, so newer files pass through unharmed.
No torch here.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .errors import ArmoError

M = TypeVar("M", bound="Meta")


def _matches(value: Any, tp: Any) -> bool:
    """A light structural check of decoded JSON against a field's annotation."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True


@dataclass
class Meta:
    """Base of the typed metadata: `KIND` is the artifact kind the `kind` field must say."""

    KIND: ClassVar[str] = ""
    REQUIRED: ClassVar[tuple[str, ...]] = ()  # fields that must be present in the JSON
    TENSORS: ClassVar[tuple[str, ...]] = ()  # tensors the file must carry (checked on every load: a damaged or
    # foreign file is one line naming the file and what is missing, never a KeyError)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls: type[M], d: Any, where: str) -> M:
        if not isinstance(d, dict):
            raise ArmoError(f"{where}: metadata is not a JSON object")
        if cls.KIND and d.get("kind", cls.KIND) != cls.KIND:
            raise ArmoError(f"{where}: expected a '{cls.KIND}' artifact, found '{d.get('kind')}'")
        hints = typing.get_type_hints(cls)
        known, kw = set(), {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            known.add(f.name)
            required = f.name in cls.REQUIRED
            if f.name not in d:
                if required:
                    raise ArmoError(f"{where}: incomplete '{cls.KIND or cls.__name__}' artifact: metadata field '{f.name}' is missing")
                continue
            if not _matches(d[f.name], hints[f.name]):
                raise ArmoError(f"{where}: metadata field '{f.name}': expected {_show(hints[f.name])}, "
                                f"got {type(d[f.name]).__name__}")
            kw[f.name] = d[f.name]
        extra = {k: v for k, v in d.items() if k not in known and k != "kind"}
        return cls(**kw, extra=extra)

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.KIND} if self.KIND else {}
        for f in dataclasses.fields(self):
            if f.name != "extra":
                out[f.name] = getattr(self, f.name)
        return {**out, **self.extra}


def _show(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


@dataclass
class FeaturesMeta(Meta):
    """An `armo extract` output (or a merge of its shards)."""

    KIND: ClassVar[str] = "features"
    TENSORS: ClassVar[tuple[str, ...]] = ("prompt_features", "response_features", "response_lengths", "prompt_lengths",
                                          "row_index")
    ids: list[str] = field(default_factory=list)
    pair: bool = False
    backbone: dict = field(default_factory=dict)
    objectives: list[str] = field(default_factory=list)
    gate_rule: str = "generation-prompt"
    input_hash: str = ""
    settings_key: str = ""
    report: dict = field(default_factory=dict)
    subsets: list[str | None] | None = None
    prompt_hashes: list[str] | None = None
    feature_meaning: dict | None = None
    job: dict | None = None
    shard: list | None = None
    missing_shards: list[int] | None = None
    job_key: str | None = None
    dtype: str | None = None
    gen_suffix: list[int] | None = None
    layer: int = -1
    template_hash: str | None = None
    max_length: int | None = None
    length_limit: int | None = None
    overflow: str | None = None
    input: str | None = None
    armo_version: str | None = None
    lm_objectives: list[str] | None = None  # the columns of the `lm_objectives` tensor (lm_objectives.py)
    style_measures: list[str] | None = None  # the columns of the `response_style` tensor (style.py); None: before #46
    REQUIRED: ClassVar[tuple[str, ...]] = ("ids", "pair", "backbone", "objectives", "gate_rule", "input_hash",
                                            "settings_key", "report")


@dataclass
class ChunkMeta(Meta):
    """One finished chunk of an extract job (OUT.parts/chunk-N.safetensors)."""

    KIND: ClassVar[str] = "features-chunk"
    TENSORS: ClassVar[tuple[str, ...]] = ("prompt_features", "response_features", "response_lengths", "prompt_lengths",
                                          "row_index")
    key: str = ""
    ids: list[str] = field(default_factory=list)
    subsets: list[str | None] = field(default_factory=list)
    prompt_hashes: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    REQUIRED: ClassVar[tuple[str, ...]] = ("key", "ids", "subsets", "prompt_hashes", "truncated")


@dataclass
class WindowMeta(Meta):
    """One finished window of a `score -o` or `evaluate` job (OUT.parts/chunk-N.safetensors): its rows' scores as
    tensors, a group per shape of row (single responses, pairs, each list shape). Group j's tensors are named
    `j.score`, `j.rewards`, `j.gating`, `j.coefficients` and `j.lengths`; its entry in `groups` says which rows they are
    (`ids`, `subsets`, `index`: the rows' places in the input) and their shape (`pair`, `n_chosen`)."""

    KIND: ClassVar[str] = "scores-window"
    key: str = ""
    groups: list[dict] = field(default_factory=list)
    REQUIRED: ClassVar[tuple[str, ...]] = ("key", "groups")


@dataclass
class RegressionMeta(Meta):
    KIND: ClassVar[str] = "regression"
    TENSORS: ClassVar[tuple[str, ...]] = ("weight", "bias")
    objectives: list[str] = field(default_factory=list)
    scales: dict = field(default_factory=dict)
    backbone: dict = field(default_factory=dict)
    hidden_size: int = 0
    feature_meaning: dict | None = None
    metrics: dict = field(default_factory=dict)
    alphas: dict | None = None
    preference: dict | None = None  # the preference objective's head: objective, C, folds, fold_of (prompt -> fold)
    armo_version: str | None = None
    lm_objectives: list[str] | None = None  # LM objectives it reads (the `lm_weight` tensor's columns), in this order
    invariance: dict | None = None  # heads fitted blind to form (#46): rank, pairs, explained, inputs, blind objectives
    REQUIRED: ClassVar[tuple[str, ...]] = ("objectives", "scales", "backbone", "hidden_size")


@dataclass
class DecorrelationMeta(Meta):
    KIND: ClassVar[str] = "decorrelation"
    TENSORS: ClassVar[tuple[str, ...]] = ("transform",)
    objectives: list[str] = field(default_factory=list)
    backbone: dict | None = None
    regression_hash: str | None = None
    reference_hash: str | None = None
    feature_meaning: dict | None = None
    identity: bool = False
    verbosity: str | None = None
    against: list[str] | None = None  # the objectives decorrelated against (#46); None: verbosity alone
    within: str | None = None         # "set" or "prompt"; None: set
    method: str | None = None
    armo_version: str | None = None
    REQUIRED: ClassVar[tuple[str, ...]] = ("objectives",)


@dataclass
class GateShape:
    in_features: int
    hidden_dim: int
    n_hidden: int
    temperature: float
    dropout: float = 0.0


@dataclass
class GatingMeta(Meta):
    KIND: ClassVar[str] = "gating"
    objectives: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    regression_hash: str = ""
    transform_hash: str | None = None
    backbone: dict | None = None
    feature_meaning: dict | None = None
    gate_rule: str | None = None
    metrics: list | None = None
    armo_version: str | None = None
    REQUIRED: ClassVar[tuple[str, ...]] = ("objectives", "config", "regression_hash")

    def shape(self, where: str) -> GateShape:
        c = self.config
        try:
            return GateShape(int(c["in_features"]), int(c["hidden_dim"]), int(c["n_hidden"]), float(c["temperature"]),
                             float(c.get("dropout", 0.0)))
        except (KeyError, TypeError, ValueError):
            raise ArmoError(f"{where}: metadata field 'config': expected in_features, hidden_dim, n_hidden, "
                            f"temperature (numbers)") from None


@dataclass
class Manifest(Meta):
    """`armo.json`: what a model directory holds and what features it reads."""

    KIND: ClassVar[str] = ""
    parts: dict[str, str] = field(default_factory=dict)
    armo_version: str | None = None
    backbone: dict = field(default_factory=dict)
    objectives: list[str] | None = None
    scales: dict | None = None
    hidden_size: int | None = None
    gate_rule: str | None = None
    gen_suffix: list[int] | None = None
    feature_meaning: dict | None = None
    imported_from: str | None = None


KINDS: dict[str, type[Meta]] = {c.KIND: c for c in (FeaturesMeta, ChunkMeta, WindowMeta, RegressionMeta, DecorrelationMeta, GatingMeta)}
