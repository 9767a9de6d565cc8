"""`armo sample`: reproducible slices of JSONL files (filter by field prefix, seeded sample, split)."""
from __future__ import annotations

import random

from .io import check_output_file, dumps, iter_jsonl, write_text_atomic
from .configs import SampleConfig
from .options import validate
from .specs import parse_where


def _match(obj: dict, where: list[tuple[str, str]]) -> bool:
    return not where or any(str(obj.get(k, "")).startswith(v) for k, v in where)


def sample(cfg: SampleConfig) -> int:
    """Write a seeded sample of the rows that match; returns how many rows were written."""
    validate(cfg)
    check_output_file(cfg.output, "--output", [cfg.input])
    where = parse_where(cfg.where)
    rows = [line for _, line in ((n, o) for n, o in iter_jsonl(cfg.input)) if isinstance(line, dict) and _match(line, where)]
    rng = random.Random(cfg.seed)
    rng.shuffle(rows)
    rows = rows[cfg.skip:]
    if cfg.n is not None:
        rows = rows[: cfg.n]
    write_text_atomic(cfg.output, "".join(dumps(r) + "\n" for r in rows))
    return len(rows)
