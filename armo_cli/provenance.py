"""What a feature means, and the one compatibility check every stage uses.

A feature vector is only comparable with another if both were read from the same backbone (fingerprint,
hidden size), at the same layer with the same pooling of the response's tokens, through the same chat template (its generation suffix and a hash of the
template text) and, for prompt features, at the same position (the gate rule). dtype is recorded too;
a dtype difference is allowed with a warning: bf16 and fp32 features of one backbone differ by rounding,
not in meaning (benchmarks/dtype_agreement.py, embedded backbone, 36 real pairs: cosine >= 0.9991), but
margins close to zero can change sign (4.2% of them over 100 random linear heads), so near-ties may flip.

Stages record the meaning of what they consumed: the regression and the decorrelation the response
features' meaning, the gate the prompt features' meaning (with its gate rule). A model directory's gate
rule is the gate's, never the ratings'.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import ArmoError

# The keys compared for response features; prompt features add the gate rule.
RESPONSE_KEYS = ("fingerprint", "hidden_size", "layer", "pooling", "gen_suffix", "template_hash")
# How a response's hidden states become f(x,y): its last token (ArmoRM's), or the mean over its tokens.
POOLINGS = ("last", "mean")


@dataclass(frozen=True)
class FeatureMeaning:
    """The provenance of a feature vector (None: not recorded by an older armo; not compared)."""

    backbone: str  # the name it was loaded by: shown in messages, not compared
    fingerprint: str
    hidden_size: int
    layer: int = -1
    gen_suffix: tuple[int, ...] | None = None
    template_hash: str | None = None
    dtype: str | None = None
    gate_rule: str | None = None  # where f(x) was read; None where prompt features are not used
    pooling: str = "last"  # f(x,y): the response's last token, or the mean of its tokens (older armo: last)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["gen_suffix"] = list(self.gen_suffix) if self.gen_suffix is not None else None
        return d

    @classmethod
    def from_json(cls, d: Any, where: str) -> "FeatureMeaning":
        if not isinstance(d, dict):
            raise ArmoError(f"{where}: field 'feature_meaning': expected an object")
        known = {f.name for f in fields(cls)}
        try:
            kw = {k: v for k, v in d.items() if k in known}
            if kw.get("pooling", "last") not in POOLINGS:
                raise ValueError
            if kw.get("gen_suffix") is not None:
                kw["gen_suffix"] = tuple(int(x) for x in kw["gen_suffix"])
            m = cls(**kw)
        except (TypeError, ValueError):
            raise ArmoError(f"{where}: field 'feature_meaning': incomplete or malformed") from None
        if not isinstance(m.fingerprint, str) or not isinstance(m.hidden_size, int):
            raise ArmoError(f"{where}: field 'feature_meaning': fingerprint and hidden_size are required")
        return m

    @classmethod
    def of(cls, meta: Any, where: str, prompt: bool = True) -> "FeatureMeaning":
        """The meaning recorded in an artifact's metadata (typed or a dict); older artifacts carry it as loose
        fields."""
        if hasattr(meta, "to_json"):
            meta = meta.to_json()
        if meta.get("feature_meaning") is not None:
            m = cls.from_json(meta["feature_meaning"], where)
        else:
            bb = meta.get("backbone")
            if not isinstance(bb, dict) or "fingerprint" not in bb or "hidden_size" not in bb:
                raise ArmoError(f"{where}: metadata field 'backbone' lacks fingerprint or hidden_size")
            gs = meta.get("gen_suffix")
            m = cls(backbone=str(bb.get("name")), fingerprint=str(bb["fingerprint"]), hidden_size=int(bb["hidden_size"]),
                    layer=int(meta.get("layer", -1)), gen_suffix=tuple(gs) if gs is not None else None,
                    template_hash=meta.get("template_hash"), dtype=meta.get("dtype"), gate_rule=meta.get("gate_rule"),
                    pooling=meta.get("pooling", "last"))
        return m if prompt else m.without_gate_rule()

    def without_gate_rule(self) -> "FeatureMeaning":
        return FeatureMeaning(**{**asdict(self), "gate_rule": None})

    def short(self, key: str) -> str:
        v = getattr(self, key)
        if key == "fingerprint" or key == "template_hash":
            return f"{str(v)[:12]} ({self.backbone})" if key == "fingerprint" else str(v)[:12]
        return str(list(v) if isinstance(v, tuple) else v)


NAMES = {"fingerprint": "backbone", "hidden_size": "hidden size", "layer": "feature layer", "pooling": "pooling", "gen_suffix":
         "chat template (generation suffix)", "template_hash": "chat template", "gate_rule": "gate rule", "dtype": "dtype"}


def require_compatible(expected: FeatureMeaning, got: FeatureMeaning, what_expected: str, what_got: str,
                       prompt: bool = False, warn_dtype: bool = True) -> None:
    """Refuse features whose meaning differs from what a stage or model expects (one line, both values).

    `prompt`: the prompt features are used too, so the gate rule must match as well."""
    keys = RESPONSE_KEYS + (("gate_rule",) if prompt else ())
    for k in keys:
        a, b = getattr(expected, k), getattr(got, k)
        if a is None or b is None:  # not recorded by an older armo
            continue
        if a != b:
            raise ArmoError(f"{what_got}: {NAMES[k]} {got.short(k)} differs from {what_expected}'s {expected.short(k)}; "
                            f"extract the features again with the same settings")
    if warn_dtype and expected.dtype and got.dtype and expected.dtype != got.dtype:
        from .console import warn

        warn(f"{what_got}: features computed in {got.dtype}, {what_expected} in {expected.dtype} "
             f"(allowed: the same backbone in another precision; near-tie pairs may flip)")


def require_one_meaning(items: list[tuple[FeatureMeaning, str]], prompt: bool = False) -> FeatureMeaning:
    """All inputs of a stage mean the same; returns that meaning."""
    first, where = items[0]
    for m, w in items[1:]:
        require_compatible(first, m, where, w, prompt)
    return first
