"""`armo sample`: reproducible slices of JSONL files (filter by field prefix, seeded sample, split)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .io import ArmoError, dumps, iter_jsonl, write_text_atomic


@dataclass
class SampleConfig:
    input: str = "-"
    output: str = "-"
    n: int | None = None
    seed: int = 0
    where: list[str] = field(default_factory=list)  # FIELD=PREFIX (any of them matches)
    skip: int = 0  # drop the first SKIP rows of the shuffled order (disjoint slices with the same seed)


def _match(obj: dict, where: list[tuple[str, str]]) -> bool:
    return not where or any(str(obj.get(k, "")).startswith(v) for k, v in where)


def sample(cfg: SampleConfig) -> int:
    """Write a seeded sample of the rows that match; returns how many rows were written."""
    where = []
    for w in cfg.where:
        if "=" not in w:
            raise ArmoError(f"--where {w!r}: expected FIELD=PREFIX")
        where.append(tuple(w.split("=", 1)))
    rows = [line for _, line in ((n, o) for n, o in iter_jsonl(cfg.input)) if isinstance(line, dict) and _match(line, where)]
    rng = random.Random(cfg.seed)
    rng.shuffle(rows)
    rows = rows[cfg.skip:]
    if cfg.n is not None:
        rows = rows[: cfg.n]
    write_text_atomic(cfg.output, "".join(dumps(r) + "\n" for r in rows))
    return len(rows)
