"""armo from Python: load a reward model once, score rows many times.

    from armo_cli import RewardModel
    rm = RewardModel()                       # the shipped default; or a model directory, or an exported folder
    rm.score([{"prompt": "Hi", "response": "Hello!"}])            # the records `armo score` writes
    rm.rewards(["Hi"], ["Hello!"])                                # one float per response

`armo score`, `armo serve` and the trainer adapters (armo_cli.adapters) all go through `score_trees`, so a row
gets the same score whichever door it came in by. Rows take any shape `armo score` accepts.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from .backbones import Backbone, load_backbone
from .configs import OVERFLOW
from .errors import ArmoError
from .context import RowContext
from .hf_format import load_model
from .model import ArmoModel
from .options import check_value
from .rendering import Renderer, Tree, tokenized
from .rows import Example, Skipped, parse_row, parse_samples_row
from .scoring import score_trees, steered, weights_for, window_records


class RewardModel:
    """A model and its backbone, loaded once. Thread-compatible, not thread-safe: one caller at a time (the
    server has one worker thread)."""

    def __init__(self, model: str | Path | ArmoModel | None = None, *, device: str | None = None, dtype: str | None = None,
                 backbone: str | Backbone | None = None, max_length: int | None = None, overflow: str = "error",
                 batch_tokens: int | None = None, top_k: int = 3, max_padding: float | None = None):
        check_value("--overflow", overflow, {"choices": OVERFLOW})
        self.model = model if isinstance(model, ArmoModel) else load_model(model)
        self.backbone = backbone if isinstance(backbone, Backbone) else load_backbone(
            backbone or self.model.backbone["name"], device, dtype, fast=True)
        # skip is not a policy here: every row gets a score (a row over the limit is an error)
        self.context = RowContext.for_model(self.model, self.backbone, max_length=max_length,
                                            overflow="error" if overflow == "skip" else overflow,
                                            batch_tokens=batch_tokens, max_padding=max_padding)
        self.overflow = overflow
        self.top_k = top_k

    @property
    def renderer(self) -> Renderer:
        return self.context.renderer

    @property
    def limit(self) -> int:
        return self.context.limit

    @property
    def objectives(self) -> list[str]:
        return self.model.objectives

    def info(self) -> dict:
        """What the model is: backbone, objectives, gate rule, feature layer, armo version."""
        from .version import __version__

        m = self.model
        return {"model": str(m.path), "backbone": m.backbone, "objectives": m.objectives, "gate_rule": m.gate_rule,
                "layer": m.meaning.layer, "pooling": m.meaning.pooling, "verbosity_objective": m.decorrelation.meta.verbosity,
                "max_length": self.limit, "overflow": self.overflow, "armo_version": __version__}

    def prepare(self, rows: Iterable[Any], source: str = "rows", start: int = 0, samples: bool = False) -> list[Tree]:
        """Parse and tokenise rows, applying the length policy. A bad row raises ArmoError naming
        `source[i]` (i counts from 0) and the field; `skip` is not a policy here: every row gets a score.
        `samples`: rows of unlabeled samples, as `annotate` reads them (rows.parse_samples_row)."""
        parse = parse_samples_row if samples else parse_row

        def parsed() -> Iterator[Example]:
            for i, obj in enumerate(rows, start):
                ex = parse(obj, f"{source}[{i}]")
                ex.line = i + 1
                yield ex

        trees = []
        for k, ex, tree in tokenized(parsed(), self.renderer):
            i = k + start
            where = f"{source}[{i}]"
            skipped: list[Skipped] = []
            t = self.context.sized(ex, i, where, skipped, tree)
            if t is None:
                raise ArmoError(f"{where}: {skipped[0].reason}")
            trees.append(t)
        return trees

    def score_prepared(self, trees: list[Tree], weights: torch.Tensor | None = None, top_k: int | None = None,
                       model: ArmoModel | None = None, on_batch: Callable[[int, int], None] | None = None) -> list[dict]:
        """Records of prepared rows, in the order given (whatever their indices); `on_batch` as in score_trees."""
        if not trees:
            return []
        model = model or self.model
        ordered = [_reindexed(t, i) for i, t in enumerate(trees)]
        with torch.no_grad():
            groups = score_trees(model, self.context, ordered, weights, "<rows>", on_batch)
        return window_records(model, groups, top_k or self.top_k)

    def score(self, rows: Iterable[Any], *, weights: str | None = None, objective: str | None = None,
              top_k: int | None = None) -> list[dict]:
        """The records `armo score` writes for these rows (dicts of any shape it accepts), in order."""
        w = weights_for(weights, objective, self.model.objectives)
        model = steered(self.model, objective)
        out: list[dict] = []
        it = iter(rows)
        start = 0
        while chunk := list(itertools.islice(it, 256)):  # one window at a time: memory stays flat
            out += self.score_prepared(self.prepare(chunk, start=start), w, top_k, model)
            start += len(chunk)
        return out

    def annotate(self, rows: Iterable[Any], *, rule: str = "best-worst", min_margin: float = 0.0,
                 max_pairs: int | None = None, require: Sequence[str] = (), weights: str | None = None,
                 objective: str | None = None, format: str = "conversational", top_k: int = 3,
                 seed: int = 0) -> tuple[list[dict], list[dict]]:
        """What `armo annotate` writes for these rows of samples (a prompt and `responses`, `all_generated_responses`
        or `completions`), in order: (the pair lines, one scores line per row). The options are annotate's."""
        from .annotate import parse_floors, prompt_records
        from .configs import AnnotateConfig
        from .options import validate

        cfg = AnnotateConfig(rule=rule, min_margin=min_margin, max_pairs=max_pairs, require=list(require),
                             weights=weights, objective=objective, format=format, top_k=top_k, seed=seed)
        validate(cfg)
        w = weights_for(weights, objective, self.model.objectives)
        model = steered(self.model, objective)
        floors = parse_floors(cfg.require, model.objectives)
        pairs: list[dict] = []
        scores: list[dict] = []
        it = iter(rows)
        start = 0
        while chunk := list(itertools.islice(it, 256)):  # one window at a time: memory stays flat
            trees = [_reindexed(t, i) for i, t in enumerate(self.prepare(chunk, start=start, samples=True))]
            if format == "standard" and any(len(t.example.prompt) != 1 for t in trees):
                raise ArmoError("format='standard' takes single-turn prompts; use the conversational format")
            with torch.no_grad():
                groups = score_trees(model, self.context, trees, w, "<rows>")
            placed = {i: (g, r) for g in groups for r, i in enumerate(g.index)}
            for i, t in enumerate(trees):
                g, r = placed[i]
                lines, line = prompt_records(t.example, {k: v[r] for k, v in g.explained.items()}, model.objectives,
                                             cfg, floors)
                pairs += lines
                scores.append(line)
            start += len(chunk)
        return pairs, scores

    def rewards(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response); a prompt is a string (one user turn) or a list of messages."""
        if len(prompts) != len(responses):
            raise ArmoError(f"rewards: {len(prompts)} prompts for {len(responses)} responses")
        return [r["score"] for r in self.score({"prompt": p, "response": y} for p, y in zip(prompts, responses))]


def _plain(x: Any) -> Any:
    """A Ray Data (numpy) batch cell as plain Python: arrays to lists, all the way down."""
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        x = x.tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


class AnnotateBatches:
    """`RewardModel.annotate` as a Ray Data batch class: one model per actor, loaded once; each batch of sample rows
    (columns `prompt`, a samples column, optional `id`) becomes a batch of pair rows, in TRL's DPO columns.

        ds.map_batches(AnnotateBatches, fn_constructor_kwargs={"model": "my-model", "rule": "best-worst"},
                       concurrency=4, batch_size=64)
    """

    COLUMNS = ("id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "chosen_index",
               "rejected_index", "margin", "decided_by")

    def __init__(self, model: str | None = None, *, device: str | None = None, backbone: str | None = None,
                 max_length: int | None = None, overflow: str = "error", **options: Any):
        self.rm = RewardModel(model, device=device, backbone=backbone, max_length=max_length, overflow=overflow)
        self.options = options

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        cols = {k: _plain(v) for k, v in batch.items()}
        n = len(next(iter(cols.values()))) if cols else 0
        rows = [{k: v[i] for k, v in cols.items() if v[i] is not None} for i in range(n)]
        pairs, _ = self.rm.annotate(rows, **self.options)
        return {c: [p[c] for p in pairs] for c in self.COLUMNS}


def _reindexed(t: Tree, i: int) -> Tree:
    import dataclasses

    return t if t.index == i else dataclasses.replace(t, index=i)
