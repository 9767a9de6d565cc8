"""Option constraints live on the config dataclasses' fields; `validate` checks a config before any work.

    chunk_size: int = opt(256, "Rows per resumable chunk.", min=1)

`opt` keeps the help text and the constraint beside the default, so a command's checks cannot drift
from its config. No torch here: validation runs before anything heavy is imported.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, field, fields
from typing import Any, Iterable

from .errors import ArmoError


def opt(default: Any = MISSING, help: str = "", *, choices: Iterable[str] | None = None,
        min: float | None = None, max: float | None = None, above: float | None = None,
        below: float | None = None, flag: str | None = None, default_factory: Any = MISSING) -> Any:
    """A dataclass field with help and constraints: `min`/`max` are inclusive, `above`/`below` exclusive."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "min": min, "max": max,
            "above": above, "below": below, "flag": flag}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: Any) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def check_value(flag: str, value: Any, meta: dict) -> None:
    """One option value against its constraints; ArmoError naming the option otherwise."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ArmoError(f"{flag} {value}: choose from {', '.join(choices)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ArmoError(f"{flag} {value}: must be a finite number")
    lo, hi, above, below = meta.get("min"), meta.get("max"), meta.get("above"), meta.get("below")
    if lo is not None and value < lo:
        raise ArmoError(f"{flag} {value}: must be at least {lo:g}")
    if hi is not None and value > hi:
        raise ArmoError(f"{flag} {value}: must be at most {hi:g}")
    if above is not None and value <= above:
        raise ArmoError(f"{flag} {value}: must be greater than {above:g}")
    if below is not None and value >= below:
        raise ArmoError(f"{flag} {value}: must be less than {below:g}")


def validate(cfg: Any) -> None:
    """Check every constrained field of a config dataclass (lists element by element)."""
    for f in fields(cfg):
        if not f.metadata:
            continue
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            check_value(flag_of(f), v, f.metadata)
