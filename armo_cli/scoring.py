"""`score` and `evaluate`: a trained model applied to features, explained, and measured."""
from __future__ import annotations

import contextlib
import time
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

import torch
from rich.table import Table

from .version import __version__
from .backbones import Backbone, load_backbone
from .console import info, loading, plain, progress, show, table, warn
from .features import Features
from .context import RowContext
from .forward import check_finite_features
from .rendering import Tree
from .errors import ArmoError
from .jsonl import check_input_file, dumps, sha256_file, sha256_json
from .outputs import StdoutText, atomic_path, check_output_file, write_texts_atomic
from .model import ArmoModel
from .artifacts import WindowMeta
from .configs import TIES, EvaluateConfig, ModelInputConfig, ScoreConfig
from . import specs
from .options import check_value, validate
from .provenance import require_compatible
from .heads import unscale
from .rewardbench import coverage_note, section_scores
from .resumable import JobProgress, discard_progress
from .rows import Example, Skipped, Source, iter_examples, locked_source, read_groups
from .stats import bootstrap_ci, spearman


def parse_weights(spec: str, objectives: list[str]) -> torch.Tensor:
    """'helpfulness=0.7,safety=0.3' -> a weight vector over the model's objectives (see specs.parse_weights)."""
    return torch.tensor(specs.parse_weights(spec, objectives))


def _source(cfg: ModelInputConfig) -> Source:
    return Source(path=cfg.input, dataset=cfg.dataset, split=cfg.split, quiet=cfg.quiet)


def check_inputs(cfg: ModelInputConfig, outputs: dict[str, str | None]) -> None:
    """Before any work: options in range, exactly one of INPUT, --dataset and --features, outputs writable."""
    validate(cfg)
    given = [name for name, v in (("INPUT", cfg.input), ("--dataset", cfg.dataset), ("--features", cfg.features)) if v]
    if len(given) > 1:
        raise ArmoError(f"give one of INPUT, --dataset and --features, not {' and '.join(given)}")
    if not given:
        raise ArmoError("give INPUT (JSONL or -), --dataset NAME or --features FILE")
    for src in (cfg.input, cfg.features):
        if src is not None and src != "-":
            check_input_file(src)
    named = [p for p in outputs.values() if p is not None and p != "-"]
    if len(set(map(str, named))) != len(named):
        raise ArmoError(f"{' and '.join(o for o, p in outputs.items() if p)}: give each output its own path")
    for option, path in outputs.items():
        check_output_file(path, option, [cfg.input, cfg.features, cfg.model])


def check_finite_scores(scores: torch.Tensor, ids: list[str]) -> None:
    """A NaN score is an error, never a null in the output or a margin in an accuracy."""
    bad = ~torch.isfinite(scores.reshape(scores.shape[0], -1)).all(-1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ArmoError(f"row {ids[i]!r}: the model's score is not finite (NaN or inf); "
                        f"{int(bad.sum())} rows affected")


def load_features(model: ArmoModel, path: str) -> Features:
    """Extracted features, checked to mean what the model reads (backbone, layer, template, gate rule)."""
    f = Features.load(path)
    require_compatible(model.meaning, f.meaning(), str(model.path), path, prompt=True)
    return f


def steered(model: ArmoModel, objective: str | None) -> ArmoModel:
    """The model as `--objective` should see it. Decorrelation subtracts the verbosity objective (and any other it
    was decorrelated against, `--against`) from every objective, itself included, so its decorrelated reward is 0 for
    every response and every pair would tie: `--objective` on one of them scores its raw reward instead (T = identity)."""
    if objective is not None and objective in model.decorrelation.against:
        import dataclasses

        from .heads import Decorrelation

        return dataclasses.replace(model, decorrelation=Decorrelation.identity(model.objectives))
    return model


def weights_for(cfg_weights: str | None, objective: str | None, objectives: list[str]) -> torch.Tensor | None:
    """The fixed weights --weights or --objective ask for (None: the gate's)."""
    if cfg_weights and objective:
        raise ArmoError("give --weights or --objective, not both")
    if objective:
        if objective not in objectives:
            raise ArmoError(f"--objective: unknown objective {objective!r} (the model has: {', '.join(objectives)})")
        w = torch.zeros(len(objectives))
        w[objectives.index(objective)] = 1.0
        return w
    return parse_weights(cfg_weights, objectives) if cfg_weights else None


def _records(model: ArmoModel, ids: list[str], subsets: list[str | None], ex: dict[str, torch.Tensor], pair: bool,
             top_k: int, n_chosen: int | None = None) -> Iterator[dict]:
    """JSON-ready records from `model.explain` output for rows of one shape (single responses, pairs, or lists of
    `n_chosen` chosen responses and the rest rejected)."""
    objs = model.objectives
    scales = model.regression.meta.scales
    check_finite_scores(ex["score"], ids)
    orig = torch.stack([unscale(ex["rewards"][..., j], scales[o]) for j, o in enumerate(objs)], dim=-1)
    for i, rid in enumerate(ids):
        coef = ex["coefficients"][i]
        top = torch.argsort(coef.abs(), descending=True)[:top_k].tolist()

        def side(m: int) -> dict:
            r = ex["rewards"][i, m]
            return {"score": float(ex["score"][i, m]),
                    "rewards": {o: float(r[j]) for j, o in enumerate(objs)},
                    "rewards_original": {o: float(orig[i, m, j]) for j, o in enumerate(objs)},
                    "top_objectives": [{"objective": objs[j], "coefficient": float(coef[j]), "reward": float(r[j]),
                                        "contribution": float(coef[j] * r[j])} for j in top]}

        rec: dict = {"id": rid}
        if subsets[i] is not None:
            rec["subset"] = subsets[i]
        if n_chosen is not None:  # each side a list, in the row's order
            m = ex["score"].shape[1]
            rec.update(chosen=[side(j) for j in range(n_chosen)], rejected=[side(j) for j in range(n_chosen, m)])
        elif pair:
            c, r = side(0), side(1)
            margin = c["score"] - r["score"]
            rec.update(chosen=c, rejected=r, margin=margin,
                       preferred="chosen" if margin > 0 else "rejected" if margin < 0 else "tie")
        else:
            rec.update(side(0))
        rec["gating"] = {o: float(ex["gating"][i, j]) for j, o in enumerate(objs)}
        rec["coefficients"] = {o: float(coef[j]) for j, o in enumerate(objs)}
        yield rec


def score_records(model: ArmoModel, feats: Features, weights: torch.Tensor | None = None, top_k: int = 3) -> Iterator[dict]:
    """One JSON-ready record per row of a features file, in input order."""
    P = feats.tensors["prompt_features"]
    R = feats.inputs(model.regression.lm_objectives)
    ex = model.explain(P, R if feats.pair else R[:, None], weights)
    subsets = feats.meta.subsets or [None] * len(feats.ids)
    yield from _records(model, feats.ids, subsets, ex, feats.pair, top_k)


@dataclass
class Scored:
    """Rows of one shape (single responses, pairs, or one list shape), scored: which rows they are and the model's
    explanation, as tensors. Every output (JSONL records, evaluate's report) is built from these, at the end."""

    ids: list[str]
    subsets: list[str | None]
    index: list[int]  # the rows' places in their input
    lengths: torch.Tensor  # [N, m] each response's length in tokens
    explained: dict[str, torch.Tensor]  # model.explain output: score [N,m], rewards [N,m,k], gating, coefficients [N,k]
    pair: bool
    n_chosen: int | None = None  # rows with lists of chosen and rejected responses: how many are chosen

    @classmethod
    def of(cls, trees: list[Tree], explained: dict[str, torch.Tensor]) -> "Scored":
        """Rows of one shape (`shapes`) and their explanation."""
        (g,) = window_rows(trees)
        return cls(g["ids"], g["subsets"], g["index"], torch.tensor(g["lengths"], dtype=torch.int64), explained,
                   g["pair"], g["n_chosen"])

    @classmethod
    def cat(cls, groups: list["Scored"]) -> "Scored":
        """Groups of one shape as one (their rows in the order given)."""
        g0 = groups[0]
        return cls([i for g in groups for i in g.ids], [s for g in groups for s in g.subsets],
                   [i for g in groups for i in g.index], torch.cat([g.lengths for g in groups]),
                   {k: torch.cat([g.explained[k] for g in groups]) for k in g0.explained}, g0.pair, g0.n_chosen)


EXPLAINED = ("score", "rewards", "gating", "coefficients")  # what a window keeps of model.explain


def shapes(trees: list[Tree]) -> list[list[Tree]]:
    """A window's rows by shape (single responses, pairs, each list shape), as `score_trees` scores them."""
    key = lambda t: (len(t.conts), t.example.n_chosen)  # noqa: E731
    return [[t for t in trees if key(t) == k] for k in dict.fromkeys(map(key, trees))]


def window_rows(trees: list[Tree]) -> list[dict]:
    """What a scored window's unit must say of its rows, group by group: their ids, subsets, places, shape and
    lengths. The check pass computes it from the input; a unit that says anything else is scored again."""
    return [{"ids": [t.example.id for t in g], "subsets": [t.example.subset for t in g], "index": [t.index for t in g],
             "pair": len(g[0].conts) == 2 and g[0].example.n_chosen is None, "n_chosen": g[0].example.n_chosen,
             "lengths": [[len(c) for c in t.conts] for t in g]} for g in shapes(trees)]


def window_unit(window: list[Scored], key: str) -> tuple[dict[str, torch.Tensor], WindowMeta]:
    """A scored window as a resumable job's unit (artifacts.WindowMeta)."""
    tensors = {f"{j}.{k}": g.explained[k] for j, g in enumerate(window) for k in EXPLAINED}
    groups = [{"ids": g.ids, "subsets": g.subsets, "index": g.index, "pair": g.pair, "n_chosen": g.n_chosen,
               "lengths": g.lengths.tolist()} for g in window]
    return tensors, WindowMeta(key=key, groups=groups)


def unit_window(tensors: dict[str, torch.Tensor], meta: WindowMeta, rows: list[dict]) -> list[Scored] | None:
    """A unit back as its scored window, if it holds exactly the rows the input has there (`window_rows`) and a
    score for each; else None (it is scored again)."""
    if meta.groups != rows:
        return None
    out = []
    for j, g in enumerate(rows):
        ex = {k: tensors.get(f"{j}.{k}") for k in EXPLAINED}
        if any(t is None or t.shape[0] != len(g["ids"]) for t in ex.values()):
            return None
        out.append(Scored(g["ids"], g["subsets"], g["index"], torch.tensor(g["lengths"], dtype=torch.int64), ex,
                          g["pair"], g["n_chosen"]))
    return out


WINDOW_ROWS = 256  # rows read, scored and written at a time: memory holds one window, output starts early


@dataclass
class RowNotes:
    """What `--on-error skip` and the length policy did to a source's rows (extract's report has the same two
    lists): listed on stderr, and in evaluate's report."""

    skipped: list[Skipped] = field(default_factory=list)
    truncated: list[tuple[int, str]] = field(default_factory=list)  # (line, id): the prompt was cut to fit

    def to_json(self) -> dict:
        return {"skipped": [vars(s) for s in sorted(self.skipped, key=lambda s: s.line)],
                "truncated": [i for _, i in self.truncated]}


def _example_windows(source: Source, cfg: ModelInputConfig, window: int,
                     skipped: list[Skipped]) -> Iterator[tuple[int, list[Example], ArmoError | None]]:
    """The parsed rows of a source, `window` at a time: (index of the first, the rows, the error that stopped the
    reading after them or None). A window whose rows were all unreadable (--on-error skip) is an empty list."""
    start = 0
    for rows, failure in read_groups(iter_examples(source, cfg.on_error, skipped, unique_ids=False), window):
        yield start, rows, failure
        start += len(rows)


def _sized_window(ctx: RowContext, start: int, rows: list[Example], failure: ArmoError | None, name: str,
                  notes: RowNotes) -> list[Tree]:
    """A window's rows tokenised and length-checked; the error that stopped the reading is raised after the rows
    before it are checked, so that the first bad row in the file is the one reported."""
    trees = []
    for i, (ex, tree) in enumerate(zip(rows, ctx.renderer.tokenize_many(rows, list(range(start, start + len(rows))))),
                                   start):
        t = ctx.sized(ex, i, f"{name}:{ex.line}", notes.skipped, tree)
        if t is not None:
            trees.append(t)
            if t.truncated:
                notes.truncated.append((ex.line, ex.id))
    if failure is not None:
        raise failure
    return trees


def iter_windows(ctx: RowContext, source: Source, cfg: ModelInputConfig, window: int | None = None,
                 report: bool = True, notes: RowNotes | None = None) -> Iterator[list[Tree]]:
    """The rows of a source, tokenised and length-checked, a window at a time (a window whose rows were all
    skipped is an empty list). Skipped and prompt-truncated rows are listed at the end (and kept in `notes`);
    a source with no usable row is an error."""
    notes = notes if notes is not None else RowNotes()
    usable = 0
    for start, rows, failure in _example_windows(source, cfg, window or WINDOW_ROWS, notes.skipped):
        trees = _sized_window(ctx, start, rows, failure, source.name, notes)
        usable += len(trees)
        yield trees
    if report:
        report_notes(ctx, notes)
    if not usable:
        raise ArmoError(f"{source.name}: no usable rows")


def report_notes(ctx: RowContext, notes: RowNotes) -> None:
    """Skipped and prompt-truncated rows, on stderr."""
    for sk in sorted(notes.skipped, key=lambda sk: sk.line):
        warn(f"skipped line {sk.line} ({sk.id}): {sk.reason}")
    if notes.truncated:
        lines = [str(line) for line, _ in notes.truncated]
        warn(f"truncated the prompt of {len(lines)} row{'s' * (len(lines) > 1)} to fit {ctx.limit_name} {ctx.limit} "
             f"(--overflow truncate-prompt): line{'s' * (len(lines) > 1)} {', '.join(lines[:10])}"
             + (f" and {len(lines) - 10} more" if len(lines) > 10 else ""))


def iter_scored(model: ArmoModel, ctx: RowContext, source: Source, cfg: ModelInputConfig,
                weights: torch.Tensor | None = None, window: int | None = None,
                notes: RowNotes | None = None) -> Iterator[list[Scored]]:
    """Score rows straight from the batched forward pass, a window at a time (no features file): each
    window is tokenised, length-checked, batched by length (order restored) and explained. Yields, per
    window, one group for the single responses and one for the pairs that it holds."""
    for trees in iter_windows(ctx, source, cfg, window, notes=notes):
        groups = score_trees(model, ctx, trees, weights, source.name)
        if groups:
            yield groups


def score_trees(model: ArmoModel, ctx: RowContext, trees: list[Tree], weights: torch.Tensor | None, source_name: str,
                on_batch: Callable[[int, int], None] | None = None) -> list[Scored]:
    """Tokenised rows -> one scored group for the single responses and one for the pairs (the batched forward
    pass sorts by length and restores the order). `on_batch(rows, tokens)` after each forward batch (it may raise
    to stop the work: serve abandons a batch whose clients are gone)."""
    groups = []
    for group in shapes(trees):
        P, R = ctx.encode(group, on_batch)
        check_finite_features(group, P, R, source_name, ctx.backbone.dtype)
        groups.append(Scored.of(group, model.explain(P, R, weights)))
    return groups


@contextlib.contextmanager
def scoring_progress(description: str, total: int, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """Progress of a scoring job, moved after every forward batch rather than every window (a window of long list
    rows can take many minutes): rows done of all, rows/s and tokens/s; off a terminal a line at least every 30 s
    (console.LineProgress). Yields `advance(rows, tokens)`: a batch scored, or (tokens 0) rows found done."""
    pbar = progress(quiet)
    state = {"rows": 0, "tokens": 0, "t": time.perf_counter()}
    with pbar:
        task = pbar.add_task(description, total=total, rate="")

        def advance(rows: int, tokens: int) -> None:
            state["rows"] += rows if tokens else 0
            state["tokens"] += tokens
            dt = max(time.perf_counter() - state["t"], 1e-9)
            pbar.update(task, advance=rows, rate=f"{state['rows'] / dt:,.2f} rows/s, {state['tokens'] / dt:,.0f} tok/s")
        yield advance


def model_context(model: ArmoModel, backbone: Backbone | None, cfg: ModelInputConfig) -> RowContext:
    """The row context `score` and `evaluate` run a model in (context.RowContext.for_model): its backbone, loaded
    here unless given (armo's fast Llama forward where it applies), checked to give the model's features."""
    bb = backbone or load_backbone(cfg.backbone or model.backbone["name"], cfg.device, cfg.dtype, fast=True)
    return RowContext.for_model(model, bb, max_length=cfg.max_length, overflow=cfg.overflow, batch_tokens=cfg.batch_tokens)


def window_records(model: ArmoModel, groups: list[Scored], top_k: int) -> list[dict]:
    """The records of one scored window, in input order."""
    out = []
    for g in groups:
        out += zip(g.index, _records(model, g.ids, g.subsets, g.explained, g.pair, top_k, g.n_chosen))
    return [r for _, r in sorted(out, key=lambda x: x[0])]


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


def window_key(job: str, trees: list[Tree]) -> str:
    """A window's key: the job, and its rows as the model sees them (token ids, gate, truncation)."""
    return sha256_json([job, [[t.index, t.example.id, t.example.subset, t.gate, t.truncated, t.prompt, t.conts]
                              for t in trees]])


def windows_job(cfg: ModelInputConfig, model: ArmoModel, ctx: RowContext, source: Source, weights: torch.Tensor | None,
                anchor: str, settings: dict, check: Callable[[Tree], None] | None = None,
                notes: RowNotes | None = None, checked: Callable[[], None] | None = None) -> list[list[Scored]]:
    """Score a source window by window, each finished window kept in ANCHOR.parts/ (resumable.JobProgress), and return
    the scored windows in input order. Every row is read, checked (`check` too) and keyed first, so a bad row stops the
    job before any forward pass, leaving nothing behind; the first window's rows are held, and the rows of a window
    that `--resume` finds done are read but never rendered again. `checked` runs once every row is checked, before
    any forward pass: the checks that need the whole file."""
    notes = notes if notes is not None else RowNotes()
    job = sha256_json({"model": model_key(model), "weights": None if weights is None else weights.tolist(),
                       "objective": cfg.objective, "max_length": cfg.max_length, "overflow": cfg.overflow,
                       "on_error": cfg.on_error, "backbone": ctx.backbone.fingerprint, "dtype": str(ctx.backbone.dtype),
                       "armo_version": __version__, **settings})
    keys: list[str] = []
    rows_of: list[list[dict]] = []
    held: list[Tree] = []
    for w, trees in enumerate(iter_windows(ctx, source, cfg, notes=notes)):
        for t in trees:
            if check:
                check(t)
        keys.append(window_key(job, trees))
        rows_of.append(window_rows(trees))
        if w == 0:
            held = trees
    if checked:
        checked()
    units = JobProgress(anchor, "scores-window", cfg.resume)
    out: list[list[Scored]] = []
    try:
        n_rows = [sum(len(g["ids"]) for g in groups) for groups in rows_of]
        with scoring_progress(settings.get("records", "score"), sum(n_rows), cfg.quiet) as advance:
            for w, (start, rows, failure) in enumerate(_example_windows(source, cfg, WINDOW_ROWS, [])):
                if w >= len(keys):
                    raise ArmoError(f"{source.name}: the input changed while it was being read; run again")
                window = units.load(w, keys[w], lambda tensors, meta: unit_window(tensors, meta, rows_of[w]))
                if window is None:
                    trees = held if w == 0 else _sized_window(ctx, start, rows, failure, source.name, RowNotes())
                    if window_key(job, trees) != keys[w]:
                        raise ArmoError(f"{source.name}: the input changed while it was being read; run again")
                    window = score_trees(model, ctx, trees, weights, source.name, advance) if trees else []
                    for g in window:
                        check_finite_scores(g.explained["score"], g.ids)
                    units.save(w, *window_unit(window, keys[w]))
                else:
                    advance(n_rows[w], 0)
                out.append(window)
        if len(out) != len(keys):
            raise ArmoError(f"{source.name}: the input changed while it was being read; run again")
    except BaseException:
        units.abandon()
        raise
    if units.reused:
        info(f"--resume: {units.reused} of {len(keys)} windows were already scored", cfg.quiet)
    return out


def _load_model(model: str | None) -> ArmoModel:
    from .hf_format import load_model  # an armo model directory or an `armo export` folder

    return load_model(model)


def model_key(model: ArmoModel) -> str:
    """The model's parts, by content: what a resumed job must still be scoring with."""
    return sha256_json({part: sha256_file(model.path / name) for part, name in sorted(model.manifest.parts.items())})


@contextlib.contextmanager
def _text_output(path: str) -> Iterator[TextIO]:
    """stdout for '-', else a temporary file beside PATH that replaces it only when the block succeeds."""
    if path == "-":
        yield StdoutText()  # a full disk behind a redirect is a failure, named
        return
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        yield fh


# --- evaluate -----------------------------------------------------------------------------------


def pair_outcomes(margin: torch.Tensor, ties: str) -> torch.Tensor:
    """1 for a win (chosen > rejected), 0 for a loss, a tie as 0 ('loss') or 0.5 ('half')."""
    check_value("--ties", ties, {"choices": TIES})
    out = (margin > 0).double()
    if ties == "half":
        out[margin == 0] = 0.5
    return out


def model_info(model: ArmoModel) -> dict:
    """What a report says of the model it measured."""
    return {"path": str(model.path), "backbone": model.backbone.get("name"), "layer": model.meaning.layer,
            "pooling": model.meaning.pooling,
            "objectives": model.objectives, "gate_rule": model.gate_rule,
            "verbosity_objective": model.decorrelation.meta.verbosity, "decorrelated_against": model.decorrelation.against,
            "transform": model.decorrelation.transform.tolist()}


def pair_records(model: ArmoModel, ids: list[str], subsets: list[str], ex: dict[str, torch.Tensor],
                 lengths: torch.Tensor, top_k: int = 3) -> list[dict]:
    """`--pairs-output`: `armo score`'s record of each pair (one shape for a scored pair everywhere: `.chosen.score`,
    `.chosen.rewards`, `.margin`, `.gating`, ...), and on each side its length in tokens and its rewards after
    decorrelation (`adjusted`): everything the HTML report draws."""
    adj = ex["rewards"] @ model.decorrelation.transform
    out = []
    for i, rec in enumerate(_records(model, ids, subsets, ex, True, top_k)):
        for m, side in enumerate(("chosen", "rejected")):
            rec[side]["length"] = int(lengths[i, m])
            rec[side]["adjusted"] = {o: float(adj[i, m, j]) for j, o in enumerate(model.objectives)}
        out.append(rec)
    return out


def evaluate_scores(scores: torch.Tensor, subsets: list[str], lengths: torch.Tensor, ties: str = "loss",
                    n_boot: int = 1000, seed: int = 0) -> dict:
    """The evaluate report from pair scores [N,2], subset names and response lengths [N,2]."""
    margin = scores[:, 0] - scores[:, 1]
    outcome = pair_outcomes(margin, ties)
    per: dict[str, dict] = {}
    for name in dict.fromkeys(subsets):
        idx = torch.tensor([i for i, s in enumerate(subsets) if s == name])
        o = outcome[idx]
        per[name] = {"accuracy": float(o.mean()), "n": int(idx.numel()), "ci95": bootstrap_ci(o, n_boot, seed),
                     "ties": int((margin[idx] == 0).sum())}
    acc = {k: v["accuracy"] for k, v in per.items()}
    sections, rb_score, info = section_scores(acc)
    from .rewardbench import EXAMPLE_COUNTS, PRIOR_SETS

    other = [k for k in acc if k not in EXAMPLE_COUNTS and k not in PRIOR_SETS]
    macro = sum(acc[k] for k in other) / len(other) if other else None
    longer_c = lengths[:, 0] > lengths[:, 1]
    differ = lengths[:, 0] != lengths[:, 1]
    longer_wins_model = ((margin > 0) == longer_c)[differ & (margin != 0)]
    flat_scores = scores.reshape(-1)
    flat_len = lengths.reshape(-1).double()
    return {
        "subsets": per,
        "sections": sections,
        "score": rb_score if rb_score is not None else macro,
        "score_kind": ("macro-average" if rb_score is None else "rewardbench" if info["complete"]
                       else "rewardbench, partial"),
        "rewardbench": info,
        "macro_average_other": macro,
        "accuracy_all": float(outcome.mean()),
        "n": int(scores.shape[0]),
        "ties": {"rule": ties, "count": int((margin == 0).sum())},
        "length_bias": {
            "spearman_score_length": spearman(flat_scores, flat_len),
            "longer_wins_model": float(longer_wins_model.double().mean()) if longer_wins_model.numel() else None,
            "longer_wins_labels": float(longer_c[differ].double().mean()) if differ.any() else None,
            "pairs_with_length_difference": int(differ.sum()),
        },
    }


def progress_anchor(cfg: EvaluateConfig) -> str | None:
    """The file output beside which evaluate keeps its progress (its first)."""
    return next((p for p in (cfg.output, cfg.pairs_output, cfg.html) if p and p != "-"), None)


def _evaluate_rows(cfg: EvaluateConfig, model: ArmoModel, ctx: RowContext,
                   weights: torch.Tensor | None) -> tuple[list[Scored], dict]:
    """An input's pairs, scored (a group per window, in input order), and what was skipped or truncated."""
    notes = RowNotes()

    def check(t: Tree, name: str) -> None:
        if len(t.conts) != 2:
            raise ArmoError(f"{name}:{t.example.line}: evaluate needs pairs (rows with 'chosen' and 'rejected')")

    groups = [g for window in _scored_rows(cfg, model, ctx, weights, "evaluate pairs", check, notes) for g in window]
    return groups, notes.to_json()  # pairs only: one group per window, in input order


def _scored_rows(cfg: EvaluateConfig, model: ArmoModel, ctx: RowContext, weights: torch.Tensor | None, kind: str,
                 check: Callable[[Tree, str], None], notes: RowNotes,
                 checked: Callable[[], None] | None = None) -> list[list[Scored]]:
    """An input's rows scored, window by window in input order: every row read and checked first (`checked` then
    runs the checks that need the whole file), then scored; with a file output a resumable job (`windows_job`,
    progress beside the first output, kept until every output is written). `kind` keys the job."""
    anchor = progress_anchor(cfg)
    if anchor is None:
        source = _source(cfg)
        windows = list(iter_windows(ctx, source, cfg, notes=notes))  # evaluate keeps every result: the rows too
        for trees in windows:
            for t in trees:
                check(t, source.name)
        if checked:
            checked()
        with scoring_progress(kind, sum(map(len, windows)), cfg.quiet) as advance:
            return [score_trees(model, ctx, trees, weights, source.name, advance) if trees else [] for trees in windows]
    with locked_source(anchor, cfg.input, cfg.dataset, cfg.split, cfg.quiet) as source:
        return windows_job(cfg, model, ctx, source, weights, anchor, {"records": kind}, lambda t: check(t, source.name),
                           notes, checked)


def _has_lists(cfg: EvaluateConfig) -> bool:
    """Whether the input's rows hold lists of responses (RewardBench 2, RM-Bench, best-of-n): from --benchmark, or
    from the first row of a file (`auto`; stdin is read once, so there --benchmark names it)."""
    from .benchmarks import LIST_BENCHMARKS

    if cfg.benchmark != "auto":
        return cfg.benchmark in LIST_BENCHMARKS
    if cfg.features or cfg.input == "-":
        return False
    first = next(iter_examples(_source(cfg), "skip", []), None)
    return first is not None and first.is_list


def _evaluate_lists(cfg: EvaluateConfig, model: ArmoModel, w: torch.Tensor | None) -> dict:
    """evaluate on rows with lists of responses, scored by their benchmark's own rule (benchmarks.py). The rows'
    records (`armo score`'s, a list per side) go to --pairs-output; with a file output the scoring is a resumable job,
    as for pairs."""
    from .benchmarks import RowScores, RowShape, check_rows, detect, score_benchmark

    if cfg.html:
        from .report import check_available

        check_available()
    for flag, value in (("--features", cfg.features),):
        if value:
            raise ArmoError(f"{flag}: not yet for rows with lists of responses (RewardBench 2, RM-Bench, best-of-n); "
                            f"-o writes the report, --pairs-output each row's scores")
    ctx = model_context(model, None, cfg)
    notes = RowNotes()

    shapes: list[RowShape] = []
    rule: list[tuple[str, str]] = []

    def check(t: Tree, name: str) -> None:
        ex = t.example
        if not (ex.is_list or (ex.is_pair and cfg.benchmark in ("auto", "best-of-n"))):
            raise ArmoError(f"{name}:{ex.line}: --benchmark {cfg.benchmark} needs rows with lists of 'chosen' "
                            f"and 'rejected' responses")
        k = ex.n_chosen or 1
        shapes.append(RowShape(f"{name}:{ex.line}", ex.id, ex.subset or "all", k, len(ex.responses) - k))

    def checked() -> None:  # the rule is settled, and the whole file checked for it, before any forward pass
        shaped = [RowScores(r.id, r.subset, [0.0] * (r.n_chosen + r.n_rejected), r.n_chosen) for r in shapes]
        rule.append((cfg.benchmark, "--benchmark") if cfg.benchmark != "auto" else detect(shaped, pairs=False))
        check_rows(shapes, rule[0][0])

    windows = _scored_rows(cfg, model, ctx, w, "evaluate lists", check, notes, checked)
    rows = []
    for window in windows:  # each row's scores, in input order (a window holds a group per list shape)
        placed = [(i, RowScores(g.ids[r], g.subsets[r] or "all", g.explained["score"][r].tolist(), g.n_chosen or 1))
                  for g in window for r, i in enumerate(g.index)]
        rows += [x for _, x in sorted(placed, key=lambda x: x[0])]
    benchmark, why = rule[0]
    report = {"model": str(model.path), "model_info": model_info(model), "input": _source(cfg).name,
              "weights": cfg.weights, "objective": cfg.objective, "benchmark_reason": why,
              **score_benchmark(rows, benchmark, cfg.bootstrap, cfg.seed), **notes.to_json()}
    texts = {}
    if cfg.pairs_output:
        texts[cfg.pairs_output] = "".join(dumps({**r, "subset": r.get("subset") or "all"}) + "\n"
                                          for window in windows for r in window_records(model, window, 3))
    if cfg.output:
        texts[cfg.output] = dumps(report, indent=2) + "\n"
    if cfg.html:
        from .report import render_benchmark_report

        texts[cfg.html] = render_benchmark_report(report)
    write_texts_atomic(texts)
    if report["score_kind"].endswith(", partial"):
        warn(f"{benchmark}: missing {'; '.join(report['missing_subsets'])}: this score is not comparable with the "
             f"benchmark's leaderboard")
    if progress_anchor(cfg) is not None:
        discard_progress(progress_anchor(cfg))  # every output is written: the job's progress has served
    written = [p for p in (cfg.output, cfg.pairs_output, cfg.html) if p and p != "-"]
    if written:
        info(f"{', '.join(written)} ({report['n']} rows)", cfg.quiet, done="wrote")
    show_benchmark(report, cfg.quiet)
    return report


def show_benchmark(report: dict, quiet: bool) -> None:
    """The tables of a list benchmark's report."""
    title = f"evaluate ({report['benchmark']}: {report['benchmark_reason']}): {report['n']} rows"
    if report["benchmark"] == "rm-bench":
        show(table(title, ["domain", "n", "hard", "normal", "easy", "average", "style gap (easy - hard)"],
                   [[d, v["n"], v["hard"], v["normal"], v["easy"], v["average"], v["style_gap"]]
                    for d, v in report["domains"].items()]
                   + [["all domains", report["n"], report["hard"], report["normal"], report["easy"], report["average"],
                       report["style_gap"]]]), quiet)
        for d, v in report["domains"].items():
            show(table(f"{d}: chosen style (rows) outscores rejected style (columns)", ["", *report["styles"]],
                       [[s, *row] for s, row in zip(report["styles"], v["matrix"])]), quiet)
        return
    base = report["benchmark"] == "best-of-n"
    show(table(title, ["subset", "n", "score", "95% CI", "rows with a tie", *(["random"] if base else [])],
               [[k, v["n"], v["score"], f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]", v["ties"],
                 *([v["random_baseline"]] if base else [])] for k, v in report["subsets"].items()]), quiet)
    if report.get("goals"):
        show(table("by goal (RMB's Helpfulness and Harmlessness)", ["goal", "n", "score", "95% CI", "random"],
                   [[k, v["n"], v["score"], f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]", v["random_baseline"]]
                    for k, v in report["goals"].items()]), quiet)
    ci = report.get("ci95") or [float("nan")] * 2
    show(table("summary", ["metric", "value"], [[f"score ({report['score_kind']})", report["score"]],
                                                ["95% CI (rows resampled)", f"[{ci[0]:.3f}, {ci[1]:.3f}]"]]
               + ([["random baseline", report["random_baseline"]]] if base else [])), quiet)


def evaluate(cfg: EvaluateConfig) -> dict:
    """Run `armo evaluate` and return its report."""
    check_inputs(cfg, {"--output": cfg.output, "--pairs-output": cfg.pairs_output, "--html": cfg.html})
    if _has_lists(cfg):
        model = _load_model(cfg.model)
        w = weights_for(cfg.weights, cfg.objective, model.objectives)
        return _evaluate_lists(cfg, steered(model, cfg.objective), w)
    if cfg.resume:
        if progress_anchor(cfg) is None:
            raise ArmoError("--resume needs a file output (-o, --pairs-output or --html): the pairs already scored "
                            "are kept beside it")
        if cfg.features:
            raise ArmoError("--resume: evaluating --features is one quick step, with nothing to resume")
    if cfg.html:
        from .report import check_available

        check_available()
    model = _load_model(cfg.model)
    w = weights_for(cfg.weights, cfg.objective, model.objectives)
    model = steered(model, cfg.objective)
    if cfg.features:
        feats = load_features(model, cfg.features)
        if not feats.pair:
            raise ArmoError(f"{cfg.features}: evaluate needs pairs (rows with 'chosen' and 'rejected')")
        ex = model.explain(feats.tensors["prompt_features"], feats.inputs(model.regression.lm_objectives), w)
        groups = [Scored(feats.ids, feats.meta.subsets or [None] * len(feats.ids), list(range(len(feats.ids))),
                         feats.tensors["response_lengths"], ex, True)]
        rows_report = {k: feats.meta.report.get(k, []) for k in ("skipped", "truncated")}  # extract's, at extraction
    else:
        groups, rows_report = _evaluate_rows(cfg, model, model_context(model, None, cfg), w)
    pairs = Scored.cat(groups)  # tensors to the end: records are built only for the outputs that hold them
    check_finite_scores(pairs.explained["score"], pairs.ids)
    subsets = [s if s is not None else "all" for s in pairs.subsets]
    report = evaluate_scores(pairs.explained["score"], subsets, pairs.lengths, cfg.ties, cfg.bootstrap, cfg.seed)
    from .benchmarks import RowScores, detect

    benchmark, why = (cfg.benchmark, "--benchmark") if cfg.benchmark != "auto" else \
        detect([RowScores("", s, [], 1) for s in dict.fromkeys(subsets)], pairs=True)
    report = {"model": str(model.path), "model_info": model_info(model), "input": cfg.features or _source(cfg).name,
              "weights": cfg.weights, "objective": cfg.objective, "benchmark": benchmark, "benchmark_reason": why,
              **report, **rows_report}
    texts: dict[str, str] = {}
    records = [r for g in groups for r in pair_records(model, g.ids, [x if x is not None else "all" for x in g.subsets],
                                                         g.explained, g.lengths)] if (cfg.pairs_output or cfg.html) else []
    if cfg.pairs_output:
        texts[cfg.pairs_output] = "".join(dumps(r) + "\n" for r in records)
        # `armo report` checks that the pairs file it is given is this one, not another run's, and finds it here
        report["pairs_sha256"] = hashlib.sha256(texts[cfg.pairs_output].encode()).hexdigest()
        report["pairs_output"] = os.path.relpath(cfg.pairs_output, Path(cfg.output).parent) \
            if cfg.output and cfg.output != "-" else cfg.pairs_output  # relative to the report: they move together
    if cfg.output:
        texts[cfg.output] = dumps(report, indent=2) + "\n"
    if cfg.html:
        from .report import render_report

        texts[cfg.html] = render_report(report, records)
    write_texts_atomic(texts)  # the report and the per-pair file succeed or fail together
    written = [p for p in (cfg.output, cfg.pairs_output, cfg.html) if p and p != "-"]
    if written:
        info(f"{', '.join(written)} ({report['n']} pairs)", cfg.quiet, done="wrote")
    if report["score_kind"] == "rewardbench, partial":
        warn(coverage_note(report["rewardbench"]))
    if progress_anchor(cfg) is not None and not cfg.features:
        discard_progress(progress_anchor(cfg))  # every output is written: the job's progress has served
    rows = [[k, v["n"], v["accuracy"], f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]", v["ties"]] for k, v in report["subsets"].items()]
    show(table(f"evaluate: {report['n']} pairs, ties counted as {cfg.ties}", ["subset", "n", "accuracy", "95% CI",
                                                                               "pairs tied"], rows), cfg.quiet)
    if report["sections"]:
        show(table("RewardBench sections", ["section", "score"], list(report["sections"].items())), cfg.quiet)
    lb = report["length_bias"]
    show(table("summary", ["metric", "value"], [
        [f"score ({report['score_kind']})", report["score"]],
        ["accuracy (all pairs)", report["accuracy_all"]],
        ["pairs tied", report["ties"]["count"]],
        ["Spearman(score, length)", lb["spearman_score_length"]],
        ["longer response wins (model)", lb["longer_wins_model"]],
        ["longer response wins (labels)", lb["longer_wins_labels"]],
        ["rows skipped / prompts truncated", f"{len(report['skipped'])} / {len(report['truncated'])}"],
    ]), cfg.quiet)
    return report
