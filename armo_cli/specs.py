"""Parsers for the small option languages, side by side, with one error style: `FLAG 'SPEC': expected ...`.

    --range NAME=LO:HI        --lambda-range LO:HI       --alphas A,B,...
    --weights NAME=W,...      --where FIELD=PREFIX
No torch here: they run before anything heavy is imported (`parse_weights` returns floats per name).
"""
from __future__ import annotations

import math

from .errors import ArmoError


def _bad(flag: str, spec: str, what: str) -> ArmoError:
    return ArmoError(f"{flag} {spec!r}: {what}")


def _number(flag: str, spec: str, text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise _bad(flag, spec, f"{text.strip()!r} is not a number") from None
    if math.isnan(x):
        raise _bad(flag, spec, "NaN is not a number here")
    return x


def parse_ranges(specs: list[str] | None, flag: str = "--range") -> dict[str, tuple[float, float]]:
    """NAME=LO:HI (repeatable): the declared rating range of an objective."""
    out: dict[str, tuple[float, float]] = {}
    for s in specs or []:
        if "=" not in s or ":" not in s.split("=", 1)[1]:
            raise _bad(flag, s, "expected NAME=LO:HI")
        name, lohi = s.split("=", 1)
        lo_s, hi_s = lohi.split(":", 1)
        lo, hi = _number(flag, s, lo_s), _number(flag, s, hi_s)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise _bad(flag, s, "LO and HI must be finite")
        if hi <= lo:
            raise _bad(flag, s, "HI must be greater than LO")
        if not name.strip():
            raise _bad(flag, s, "expected NAME=LO:HI")
        if name.strip() in out:  # a later one silently winning would hide a typo in a long command
            raise _bad(flag, s, f"{name.strip()}: range given twice")
        out[name.strip()] = (lo, hi)
    return out


def parse_lambda_range(spec: str | None, flag: str = "--lambda-range") -> tuple[float, float] | None:
    """LO:HI, either side may be empty (unbounded)."""
    if spec is None:
        return None
    if spec.count(":") != 1:
        raise _bad(flag, spec, "expected LO:HI")
    lo_s, hi_s = spec.split(":")
    lo = _number(flag, spec, lo_s) if lo_s.strip() else -math.inf
    hi = _number(flag, spec, hi_s) if hi_s.strip() else math.inf
    if hi <= lo:
        raise _bad(flag, spec, "HI must be greater than LO")
    return lo, hi


def parse_alphas(spec: str | None, default: list[float], flag: str = "--alphas") -> list[float]:
    """A,B,...: the ridge strengths to choose from (each checked > 0 by the config)."""
    if spec is None:
        return list(default)
    parts = [p for p in spec.split(",") if p.strip()]
    if not parts:
        raise _bad(flag, spec, "expected comma-separated numbers")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise _bad(flag, spec, "expected comma-separated numbers") from None


def parse_weights(spec: str, objectives: list[str], flag: str = "--weights") -> list[float]:
    """NAME=W,...: fixed weights over the model's objectives (0 for those not named).

    Weights must be finite; a negative weight penalises its objective; all-zero weights are refused
    (every score would be 0 and every pair a tie)."""
    w = [0.0] * len(objectives)
    named: set[str] = set()
    for part in spec.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise _bad(flag, spec, f"expected NAME=W, got {part.strip()!r}")
        name, val = (x.strip() for x in part.split("=", 1))
        if name not in objectives:
            raise _bad(flag, spec, f"unknown objective {name!r} (the model has: {', '.join(objectives)})")
        x = _number(flag, spec, val)
        if not math.isfinite(x):
            raise _bad(flag, spec, f"{name}: the weight must be finite")
        if name in named:
            raise _bad(flag, spec, f"{name}: weight given twice")
        named.add(name)
        w[objectives.index(name)] = x
    if not any(w):
        raise _bad(flag, spec, "every weight is zero; name at least one objective with a non-zero weight")
    return w


def parse_where(specs: list[str] | None, flag: str = "--where") -> list[tuple[str, str]]:
    """FIELD=PREFIX (repeatable): a row matches if any FIELD starts with its PREFIX."""
    out = []
    for s in specs or []:
        if "=" not in s or not s.split("=", 1)[0].strip():
            raise _bad(flag, s, "expected FIELD=PREFIX")
        k, v = s.split("=", 1)
        out.append((k.strip(), v))
    return out
