"""`armo score`: each row's score and its explanation, as JSONL or a table, streamed or as a resumable job."""
from __future__ import annotations

import sys
from typing import Iterable

import torch
from rich.table import Table

from .backbones import Backbone, load_backbone
from .console import loading, plain
from .context import RowContext
from .errors import ArmoError
from .jsonl import dumps
from .model import ArmoModel
from .configs import ScoreConfig
from .resumable import discard_progress
from .rows import locked_source

from .scoring import (_load_model, _source, _text_output, check_inputs, iter_scored, load_features, model_context,
                      score_records, steered, weights_for, window_records, windows_job)


BAR_WIDTH = 8


def _bar(v: float, vmax: float, width: int = BAR_WIDTH) -> str:
    n = int(round(abs(v) / vmax * width)) if vmax > 0 else 0
    return ("[green]" if v >= 0 else "[red]") + "█" * n + "[/]"


def render_table(rec: dict) -> Table:
    """One row's explanation: per objective, the gate's weight, the coefficient (weight through the
    decorrelation), a bar of |coefficient| (green +, red -) and the rewards. No vertical rules, so that
    the longest objective names stay whole at 80 columns."""
    from rich import box

    if isinstance(rec.get("chosen"), list):  # a list row: one column per response, chosen ones first
        cols = {f"{s} {i + 1}": x for s in ("chosen", "rejected") for i, x in enumerate(rec[s])}
        title = f"{plain(rec['id'])}: " + ", ".join(f"{k} {x['score']:.4f}" for k, x in cols.items())
    elif "chosen" in rec:
        cols = {"chosen": rec["chosen"], "rejected": rec["rejected"]}
        title = (f"{plain(rec['id'])}: chosen {rec['chosen']['score']:.4f} vs rejected {rec['rejected']['score']:.4f} "
                 f"(margin {rec['margin']:+.4f}, preferred: {rec['preferred']})")
    else:
        cols = {"reward": rec}
        title = f"{plain(rec['id'])}: score {rec['score']:.4f}"
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("objective", overflow="fold", min_width=14)
    t.add_column("gate", justify="right")
    t.add_column("coef", justify="right")
    t.add_column("|coef|", justify="left", no_wrap=True, min_width=BAR_WIDTH)
    for name in cols:
        t.add_column(name, justify="right")
    vmax = max(abs(v) for v in rec["coefficients"].values()) or 1.0
    for o, c in sorted(rec["coefficients"].items(), key=lambda kv: -abs(kv[1])):
        rw = [side["rewards"][o] for side in cols.values()]
        t.add_row(plain(o), f"{rec['gating'][o]:.3f}", f"{c:+.4f}", _bar(c, vmax), *[f"{x:.3f}" for x in rw])
    return t


def score(cfg: ScoreConfig, model: ArmoModel | None = None, backbone: Backbone | None = None) -> int:
    """Run `armo score`; returns the number of rows written. `model` and `backbone` may be given loaded.

    Rows stream: each window of rows is written as soon as it is scored (stdout is flushed), so memory stays
    flat and the first results appear before the last rows are read; on stdout, the rows before a bad one
    have already been written when the error stops it. A JSONL file output (-o FILE) is a resumable job:
    see `_score_to_file`."""
    check_inputs(cfg, {"--output": cfg.output})
    fmt = cfg.format or ("table" if cfg.output == "-" and sys.stdout.isatty() else "jsonl")
    if cfg.resume:
        if cfg.output == "-":
            raise ArmoError("--resume needs --output FILE: the rows already scored are kept beside it")
        if cfg.features:
            raise ArmoError("--resume: scoring --features is one quick step, with nothing to resume")
        if fmt == "table":
            raise ArmoError("--resume writes JSONL: drop --format table")
    model = model or _load_model(cfg.model)
    w = weights_for(cfg.weights, cfg.objective, model.objectives)
    model = steered(model, cfg.objective)
    if cfg.features:
        feats = load_features(model, cfg.features)
        windows: Iterable[list[dict]] = [list(score_records(model, feats, w, cfg.top_k))]
    else:
        if backbone is None:
            with loading(f"loading the backbone {model.backbone['name']}", cfg.quiet):
                backbone = load_backbone(cfg.backbone or model.backbone["name"], cfg.device, cfg.dtype, fast=True)
        ctx = model_context(model, backbone, cfg)
        if cfg.output != "-" and fmt == "jsonl":
            return _score_to_file(cfg, model, ctx, w)
        source = _source(cfg)
        windows = (window_records(model, groups, cfg.top_k) for groups in iter_scored(model, ctx, source, cfg, w))
    n = 0
    with _text_output(cfg.output) as fh:
        if fmt == "table":
            from rich.console import Console

            width = None if cfg.output == "-" and sys.stdout.isatty() else 120
            con = Console(file=fh, width=width)
            for recs in windows:
                for rec in recs:
                    con.print(render_table(rec))
                n += len(recs)
                fh.flush()
        else:
            for recs in windows:
                fh.write("".join(dumps(r) + "\n" for r in recs))
                fh.flush()
                n += len(recs)
    return n


def _score_to_file(cfg: ScoreConfig, model: ArmoModel, ctx: RowContext, weights: torch.Tensor | None) -> int:
    """`score -o FILE` as a resumable job (`windows_job`): FILE appears, whole, at the end."""
    with locked_source(cfg.output, cfg.input, cfg.dataset, cfg.split, cfg.quiet) as source:
        windows = windows_job(cfg, model, ctx, source, weights, cfg.output, {"records": "score"})
        n = 0
        with _text_output(cfg.output) as fh:
            for window in windows:
                recs = window_records(model, window, cfg.top_k)
                fh.write("".join(dumps(r) + "\n" for r in recs))
                n += len(recs)
        discard_progress(cfg.output)
        return n
