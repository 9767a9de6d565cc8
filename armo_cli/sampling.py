"""`armo sample`: reproducible slices of JSONL files (filter by field prefix, seeded sample, split)."""
from __future__ import annotations

import random

from .console import warn
from .errors import ArmoError
from .jsonl import display_name, dumps, iter_jsonl, sha256_json
from .outputs import check_output_file, write_text_atomic
from .configs import SampleConfig
from .options import validate
from .rows import parse_row
from .specs import parse_where


def _match(obj: dict, where: list[tuple[str, str]]) -> bool:
    return not where or any(str(obj.get(k, "")).startswith(v) for k, v in where)


def _by_prompt(rows: list[tuple[int, dict]], rng: random.Random, skip: int, n: int | None, name: str) -> list:
    """Shuffle whole prompt groups; skip groups until SKIP rows are passed, then take groups until N rows
    are reached. With one seed, `--n N` and `--skip N` therefore cut at the same group: no prompt is shared.
    A row without a 'prompt' field ('messages', TRL's implicit prompt) is grouped by the prompt every command
    reads from it, not with every other such row (the 'prompt' field itself keys as before, so that earlier
    slices stay reproducible)."""
    groups: dict[str, list] = {}
    for line, r in rows:
        prompt = r["prompt"] if "prompt" in r else parse_row(r, f"{name}:{line}").prompt
        groups.setdefault(sha256_json(prompt), []).append(r)
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
    name = display_name(cfg.input)
    numbered, total, fields = [], 0, set()
    for line, obj in iter_jsonl(cfg.input):
        if not isinstance(obj, dict):  # never a silent drop
            raise ArmoError(f"{name}:{line}: expected a JSON object, got {type(obj).__name__}")
        total += 1
        fields.update(obj)
        if _match(obj, where):
            numbered.append((line, obj))
    if where and total and not numbered:  # most often a misspelt field
        warn(f"no row of {total} matches --where {' '.join(cfg.where)} (the rows' fields: "
             f"{', '.join(sorted(map(str, fields))[:20])})")
    rng = random.Random(cfg.seed)
    if cfg.by_prompt:
        rows = _by_prompt(numbered, rng, cfg.skip, cfg.n, name)
    else:
        rows = [obj for _, obj in numbered]
        rng.shuffle(rows)
        rows = rows[cfg.skip:]
        if cfg.n is not None:
            rows = rows[: cfg.n]
    write_text_atomic(cfg.output, "".join(dumps(r) + "\n" for r in rows))
    return len(rows)
