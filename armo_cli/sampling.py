"""`armo sample`: reproducible slices of JSONL files (filter by field prefix, seeded sample, split)."""
from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import ArmoError
from .io import check_output_file, dumps, iter_jsonl, write_text_atomic
from .options import opt, validate


@dataclass
class SampleConfig:
    input: str = opt("-", "JSONL file (.gz ok) or '-'.")
    output: str = opt("-", "Where to write the slice ('-': stdout).")
    n: int | None = opt(None, "Rows to keep (default: all that match).", min=0)
    seed: int = opt(0, "Seed of the shuffle.")
    where: list[str] = opt(help="FIELD=PREFIX; rows matching any are kept (repeatable).", default_factory=list)
    skip: int = opt(0, "Skip the first SKIP shuffled rows: disjoint slices with one seed.", min=0)


def _match(obj: dict, where: list[tuple[str, str]]) -> bool:
    return not where or any(str(obj.get(k, "")).startswith(v) for k, v in where)


def sample(cfg: SampleConfig) -> int:
    """Write a seeded sample of the rows that match; returns how many rows were written."""
    validate(cfg)
    check_output_file(cfg.output, "--output", [cfg.input])
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
