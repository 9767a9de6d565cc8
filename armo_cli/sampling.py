"""`armo sample`: reproducible slices of JSONL files (filter by field prefix, seeded sample, split)."""
from __future__ import annotations

import random

from .io import check_output_file, dumps, iter_jsonl, sha256_json, write_text_atomic
from .configs import SampleConfig
from .options import validate
from .specs import parse_where


def _match(obj: dict, where: list[tuple[str, str]]) -> bool:
    return not where or any(str(obj.get(k, "")).startswith(v) for k, v in where)


def _by_prompt(rows: list, rng: random.Random, skip: int, n: int | None) -> list:
    """Shuffle whole prompt groups; skip groups until SKIP rows are passed, then take groups until N rows
    are reached. With one seed, `--n N` and `--skip N` therefore cut at the same group: no prompt is shared."""
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(sha256_json(r.get("prompt")), []).append(r)
    order = sorted(groups)
    rng.shuffle(order)
    out, passed = [], 0
    for key in order:
        if passed < skip:
            passed += len(groups[key])
            continue
        if n is not None and len(out) >= n:
            break
        out += groups[key]
    return out


def sample(cfg: SampleConfig) -> int:
    """Write a seeded sample of the rows that match; returns how many rows were written."""
    validate(cfg)
    check_output_file(cfg.output, "--output", [cfg.input])
    where = parse_where(cfg.where)
    rows = [line for _, line in ((n, o) for n, o in iter_jsonl(cfg.input)) if isinstance(line, dict) and _match(line, where)]
    rng = random.Random(cfg.seed)
    if cfg.by_prompt:
        rows = _by_prompt(rows, rng, cfg.skip, cfg.n)
    else:
        rng.shuffle(rows)
        rows = rows[cfg.skip:]
        if cfg.n is not None:
            rows = rows[: cfg.n]
    write_text_atomic(cfg.output, "".join(dumps(r) + "\n" for r in rows))
    return len(rows)
