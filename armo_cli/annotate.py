"""`armo annotate`: a policy's samples, several per prompt, scored and turned into preference pairs (TRL's DPO format).

The rows are scored by the shared core (scoring.py): each prompt once, its K responses after it in one tree, a
resumable job keyed by content. Pairs are then picked per prompt by pure functions (`pick_pairs`, `prompt_records`):
SimPO's and RLHFlow's best-against-worst by default, on distinct responses, where a tie or a lone response gives no
pair and says why. Every response's score and explanation go to a scores file beside the pairs, so nothing scored is
thrown away; the library returns the summary, and the CLI draws it.
"""
from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .configs import AnnotateConfig
from .console import info
from .errors import ArmoError
from .extract import shard_env
from .evaluate import model_info
from .jsonl import dumps
from .outputs import atomic_paths
from .rendering import Tree
from .resumable import discard_progress
from .rows import Example, iter_examples, locked_source
from .scoring import RowNotes, _load_model, check_inputs, model_context, steered, weights_for, windows_job

# Why a prompt gave no pair: counted in the summary, written in its scores line (never dropped silently).
FEW = "fewer than two distinct responses"
TIE = "its responses all score the same"
FLOOR = "no response clears --require"
MARGIN = "no margin above --min-margin"
NO_PAIR = (FEW, TIE, FLOOR, MARGIN)
SCORES_MARK = "annotate_scores"  # the key every scores line carries: how armo knows a scores file is its own
_FLOOR = re.compile(r"^\s*(.+?)\s*>=\s*(\S+)\s*$")


@dataclass(frozen=True)
class Floor:
    """`--require OBJECTIVE>=X`: a chosen response's reward on the objective is at least X (rewards are on the
    objective's training scale mapped to 0..1; a ridge head can go a little beyond it)."""

    objective: str
    index: int
    value: float


def parse_floors(specs: list[str], objectives: list[str]) -> list[Floor]:
    out = []
    for spec in specs:
        m = _FLOOR.match(spec)
        if not m:
            raise ArmoError(f"--require {spec!r}: expected OBJECTIVE>=X, e.g. xstest-appropriate>=0.5")
        name, raw = m.groups()
        if name not in objectives:
            raise ArmoError(f"--require {spec!r}: unknown objective {name!r} (the model has: {', '.join(objectives)})")
        try:
            value = float(raw)
        except ValueError:
            raise ArmoError(f"--require {spec!r}: {raw!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ArmoError(f"--require {spec!r}: give a finite number")
        out.append(Floor(name, objectives.index(name), value))
    return out


def distinct(texts: list[str]) -> list[int]:
    """The first index of each distinct response, in order: a duplicate is the same response, scored the same."""
    seen: set[str] = set()
    out = []
    for i, t in enumerate(texts):
        if t not in seen:
            seen.add(t)
            out.append(i)
    return out


def pick_pairs(scores: list[float], texts: list[str], rule: str = "best-worst", min_margin: float = 0.0,
               max_pairs: int | None = None, eligible: list[bool] | None = None,
               rng: random.Random | None = None) -> tuple[list[tuple[int, int]], str | None]:
    """(chosen, rejected) index pairs of one prompt's responses, and why there is none (NO_PAIR) when there is none.

    Among distinct responses: `best-worst` the first best (of those `eligible` to be chosen) against the first worst,
    as numpy's argmax and argmin pick them; `best-random` the best against one lower response drawn by `rng`; `all`
    every pair, largest margin first. A pair's margin must be above `min_margin` (so a tie is never a pair); at most
    `max_pairs` are kept."""
    idx = distinct(texts)
    if len(idx) < 2:
        return [], FEW
    if len({scores[i] for i in idx}) == 1:
        return [], TIE
    can = [i for i in idx if eligible is None or eligible[i]]
    if not can:
        return [], FLOOR
    best = max(can, key=lambda i: (scores[i], -i))
    if rule == "best-worst":
        cand = [(best, min(idx, key=lambda i: (scores[i], i)))]
    elif rule == "best-random":
        below = [j for j in idx if scores[best] - scores[j] > min_margin]
        cand = [(best, (rng or random.Random(0)).choice(below))] if below else []
    elif rule == "all":
        cand = sorted(((i, j) for i in can for j in idx if i != j),
                      key=lambda p: (-(scores[p[0]] - scores[p[1]]), p[0], p[1]))
    else:
        raise ArmoError(f"--rule {rule!r}: expected one of best-worst, best-random, all")
    pairs = [p for p in cand if scores[p[0]] - scores[p[1]] > min_margin]
    if not pairs:
        return [], MARGIN
    return pairs[:max_pairs] if max_pairs else pairs, None


def decided_by(coefficients: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, objectives: list[str],
               top_k: int) -> list[dict]:
    """The objectives that made a pair's margin: each one's share coefficient x (reward chosen - reward rejected),
    largest first; over all objectives they sum to the margin."""
    contrib = coefficients * (chosen - rejected)
    top = torch.argsort(contrib.abs(), descending=True)[:top_k].tolist()
    return [{"objective": objectives[j], "contribution": float(contrib[j])} for j in top]


def _conversation(ex: Example, fmt: str) -> object:
    if fmt == "standard":
        return ex.prompt[0]["content"]
    return [dict(m) for m in ex.prompt]


def _answer(text: str, fmt: str) -> object:
    return text if fmt == "standard" else [{"role": "assistant", "content": text}]


def prompt_records(ex: Example, explained: dict[str, torch.Tensor], objectives: list[str], cfg: AnnotateConfig,
                   floors: list[Floor]) -> tuple[list[dict], dict]:
    """One prompt's pair lines and its scores line, from its row and its responses' explanation (score [K],
    rewards [K,k], gating [k], coefficients [k])."""
    scores = [float(x) for x in explained["score"]]
    rewards = explained["rewards"]
    eligible = [all(float(rewards[i, f.index]) >= f.value for f in floors) for i in range(len(scores))] if floors else None
    rng = random.Random(f"{cfg.seed}\0{ex.id}")  # each prompt's own draw: the same in any shard, window or rerun
    pairs, reason = pick_pairs(scores, ex.responses, cfg.rule, cfg.min_margin, cfg.max_pairs, eligible, rng)
    first = {t: i for i, t in reversed(list(enumerate(ex.responses)))}
    lines = []
    for c, r in pairs:
        lines.append({"id": ex.id, "prompt": _conversation(ex, cfg.format), "chosen": _answer(ex.responses[c], cfg.format),
                      "rejected": _answer(ex.responses[r], cfg.format), "score_chosen": scores[c],
                      "score_rejected": scores[r], "chosen_index": c, "rejected_index": r, "margin": scores[c] - scores[r],
                      "decided_by": decided_by(explained["coefficients"], rewards[c], rewards[r], objectives, cfg.top_k)})
    responses = []
    for i, s in enumerate(scores):
        rec = {"index": i, "score": s, "rewards": {o: float(rewards[i, j]) for j, o in enumerate(objectives)}}
        if first[ex.responses[i]] != i:
            rec["duplicate_of"] = first[ex.responses[i]]
        if eligible is not None:
            rec["clears_require"] = eligible[i]
        responses.append(rec)
    scores_line = {"id": ex.id, SCORES_MARK: 1, "responses": responses,
                   "gating": {o: float(explained["gating"][j]) for j, o in enumerate(objectives)},
                   "coefficients": {o: float(explained["coefficients"][j]) for j, o in enumerate(objectives)},
                   "pairs": [[c, r] for c, r in pairs], "no_pair": reason}
    return lines, scores_line


def scores_path(cfg: AnnotateConfig) -> str:
    """--scores, or PAIRS.scores.jsonl beside --output."""
    if cfg.scores:
        return cfg.scores
    p = Path(cfg.output)
    stem = p.name[:-len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return str(p.with_name(stem + ".scores.jsonl"))


def _is_our_scores(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        return not first or SCORES_MARK in json.loads(first)
    except (OSError, ValueError, TypeError):
        return False


def _check(cfg: AnnotateConfig) -> str:
    """Options that settle before any work: outputs, and the default scores path never replacing a stranger's file."""
    if cfg.output in (None, "-"):
        raise ArmoError("annotate writes files: give -o PAIRS.jsonl (the scores go beside it, or to --scores)")
    if cfg.features:
        raise ArmoError("--features: annotate scores rows of samples (a prompt and its responses), not features")
    path = scores_path(cfg)
    check_inputs(cfg, {"--output": cfg.output, "--scores": path})
    if not cfg.scores and Path(path).exists() and not _is_our_scores(Path(path)):
        raise ArmoError(f"{path}: exists and armo annotate did not write it; name the scores file with --scores")
    return path


def summarize(scores_lines) -> dict:
    """The summary of a scores file's lines (RLHFlow prints the mean best and mean score): prompts, responses, pairs,
    the prompts without a pair by reason."""
    n = k = pairs = 0
    best = total = 0.0
    no_pair: dict[str, list[str]] = {}
    for line in scores_lines:
        s = [r["score"] for r in line["responses"]]
        n, k, pairs = n + 1, k + len(s), pairs + len(line["pairs"])
        best, total = best + max(s), total + sum(s)
        if line["no_pair"]:
            no_pair.setdefault(line["no_pair"], []).append(line["id"])
    return {"prompts": n, "responses": k, "pairs": pairs, "no_pair": no_pair,
            "mean_best_score": best / n if n else None, "mean_score": total / k if k else None}


def _read_lines(path: str):
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def _rank_merge(outputs: list[Path], rank: int, world: int, quiet: bool, timeout: float = 24 * 3600) -> None:
    """Under torchrun/accelerate: rank 0 waits for every rank's two files, then joins them in rank order (the shards
    are contiguous blocks of the input) and removes them."""
    if rank != 0:
        return
    shards = {out: [out.with_name(f"{out.name}.shard-{r}-of-{world}") for r in range(world)] for out in outputs}
    t0 = time.time()
    while not all(p.exists() for ps in shards.values() for p in ps):
        if time.time() - t0 > timeout:
            raise ArmoError(f"annotate: timed out waiting for the other ranks' shards of {outputs[0]}")
        time.sleep(0.5)
    with atomic_paths(outputs) as tmps:
        for tmp, out in zip(tmps, outputs):
            with open(tmp, "wb") as fh:
                for p in shards[out]:
                    fh.write(p.read_bytes())
    for ps in shards.values():
        for p in ps:
            p.unlink()
    info(f"{world} ranks into {outputs[0]}", quiet, done="merged")


def annotate(cfg: AnnotateConfig) -> dict:
    """Run `armo annotate`; returns its summary (prompts, responses, pairs, prompts without a pair by reason, mean
    best and mean score, as RLHFlow's script prints them)."""
    scores_file = _check(cfg)
    num_shards, shard_index, launched = shard_env(cfg)
    outputs = [Path(cfg.output), Path(scores_file)]
    mine = [p.with_name(f"{p.name}.shard-{shard_index}-of-{num_shards}") for p in outputs] if launched else outputs
    model = _load_model(cfg.model)
    w = weights_for(cfg.weights, cfg.objective, model.objectives)
    model = steered(model, cfg.objective)
    floors = parse_floors(cfg.require, model.objectives)
    ctx = model_context(model, None, cfg)
    notes = RowNotes()
    seen: dict[str, int] = {}

    def check(t: Tree) -> None:
        ex = t.example
        if ex.id in seen:  # pairs and scores are keyed by the row's id: two rows of one id would be one prompt
            raise ArmoError(f"{source.name}:{ex.line}: field 'id': duplicate id {ex.id!r} (first on line {seen[ex.id]})")
        seen[ex.id] = ex.line
        if cfg.format == "standard" and len(ex.prompt) != 1:
            raise ArmoError(f"{source.name}:{ex.line}: field 'prompt': --format standard takes a single user turn; "
                            f"this prompt has {len(ex.prompt)} messages (use the conversational format)")

    with locked_source(mine[0], cfg.input, cfg.dataset, cfg.split, cfg.quiet, samples=True) as source:
        with atomic_paths(mine) as (tmp_pairs, tmp_scores), \
                open(tmp_pairs, "w", encoding="utf-8") as fp, open(tmp_scores, "w", encoding="utf-8") as fs:
            # each window's lines are written as it is scored (memory holds one window): its rows' texts come from a
            # second reading of the input, kept in step (windows arrive in input order)
            rows = enumerate(iter_examples(source, cfg.on_error, [], unique_ids=False))

            def write(window: list) -> None:
                placed = {i: (g, r) for g in window for r, i in enumerate(g.index)}
                if not placed:
                    return
                last = max(placed)
                for i, ex in rows:
                    if i in placed:  # the others: another shard's, or skipped for length (--overflow skip: in the notes)
                        g, r = placed[i]
                        explained = {k: g.explained[k][r] for k in ("score", "rewards", "gating", "coefficients")}
                        lines, scores_line = prompt_records(ex, explained, model.objectives, cfg, floors)
                        fp.write("".join(dumps(x) + "\n" for x in lines))
                        fs.write(dumps(scores_line) + "\n")
                    if i == last:
                        return

            windows_job(cfg, model, ctx, source, w, str(mine[0]), {"records": "annotate"}, check, notes,
                        shard=(shard_index, num_shards), sink=write)
        discard_progress(str(mine[0]))  # both files are in place: the job's progress has served
    if launched:
        _rank_merge(outputs, shard_index, num_shards, cfg.quiet)
    summary_of = outputs[1] if not launched or shard_index == 0 else mine[1]
    summary = summarize(_read_lines(str(summary_of))) if summary_of.exists() else summarize([])
    return {"model": str(model.path), "model_info": model_info(model), "input": source.name, "output": cfg.output,
            "scores": scores_file, "shard": [shard_index, num_shards], "rule": cfg.rule, "min_margin": cfg.min_margin,
            "max_pairs": cfg.max_pairs, "require": [f"{f.objective}>={f.value:g}" for f in floors],
            "weights": cfg.weights, "objective": cfg.objective, **summary, **notes.to_json()}
