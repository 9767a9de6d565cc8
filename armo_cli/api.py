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
from .rows import Example, Skipped, parse_row
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

    def prepare(self, rows: Iterable[Any], source: str = "rows", start: int = 0) -> list[Tree]:
        """Parse and tokenise rows, applying the length policy. A bad row raises ArmoError naming
        `source[i]` (i counts from 0) and the field; `skip` is not a policy here: every row gets a score."""
        def parsed() -> Iterator[Example]:
            for i, obj in enumerate(rows, start):
                ex = parse_row(obj, f"{source}[{i}]")
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

    def rewards(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response); a prompt is a string (one user turn) or a list of messages."""
        if len(prompts) != len(responses):
            raise ArmoError(f"rewards: {len(prompts)} prompts for {len(responses)} responses")
        return [r["score"] for r in self.score({"prompt": p, "response": y} for p, y in zip(prompts, responses))]


def _reindexed(t: Tree, i: int) -> Tree:
    import dataclasses

    return t if t.index == i else dataclasses.replace(t, index=i)
