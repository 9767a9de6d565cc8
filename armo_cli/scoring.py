"""The scoring core that `score`, `evaluate` and `annotate` share: a trained model applied to rows (tokenised, length-
checked, batched, a window at a time, resumable) or to features, explained, as tensors and as JSON records."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, TextIO

import torch

from .version import __version__
from .backbones import Backbone, load_backbone
from .console import info, progress, warn
from .features import Features
from .context import RowContext
from .forward import check_finite_features
from .rendering import Tree
from .errors import ArmoError
from .jsonl import check_input_file, sha256_file, sha256_json
from .outputs import StdoutText, atomic_path, check_output_file
from .model import ArmoModel
from .artifacts import WindowMeta
from .configs import ModelInputConfig
from . import specs
from .options import validate
from .provenance import require_compatible
from .heads import unscale
from .resumable import JobProgress
from .rows import Example, Skipped, Source, iter_examples, read_groups


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


def window_key(job: str, trees: list[Tree]) -> str:
    """A window's key: the job, and its rows as the model sees them (token ids, gate, truncation)."""
    return sha256_json([job, [[t.index, t.example.id, t.example.subset, t.gate, t.truncated, t.prompt, t.conts]
                              for t in trees]])


def windows_job(cfg: ModelInputConfig, model: ArmoModel, ctx: RowContext, source: Source, weights: torch.Tensor | None,
                anchor: str, settings: dict, check: Callable[[Tree], None] | None = None,
                notes: RowNotes | None = None, checked: Callable[[], None] | None = None,
                shard: tuple[int, int] = (0, 1),
                sink: Callable[[list[Scored]], None] | None = None) -> list[list[Scored]]:
    """Score a source window by window, each finished window kept in ANCHOR.parts/ (resumable.JobProgress), and return
    the scored windows in input order. Every row is read, checked (`check` too) and keyed first, so a bad row stops the
    job before any forward pass, leaving nothing behind; the first window's rows are held, and the rows of a window
    that `--resume` finds done are read but never rendered again. `checked` runs once every row is checked, before
    any forward pass: the checks that need the whole file. `shard` (index, count): score only that contiguous block
    of windows (`shard_windows`), every row still read and checked; the windows returned are that block's. `sink`: each
    scored window is handed to it, in input order, and not kept (memory holds one window; nothing is returned)."""
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
    done = 0
    mine = shard_windows(len(keys), *shard)
    try:
        n_rows = [sum(len(g["ids"]) for g in groups) for groups in rows_of]
        with scoring_progress(settings.get("records", "score"), sum(n_rows[w] for w in mine), cfg.quiet) as advance:
            for w, (start, rows, failure) in enumerate(_example_windows(source, cfg, WINDOW_ROWS, [])):
                if w >= len(keys):
                    raise ArmoError(f"{source.name}: the input changed while it was being read; run again")
                if w not in mine:
                    continue
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
                if sink is not None:
                    sink(window)
                    done += 1
                else:
                    out.append(window)
        if len(out) + done != len(mine):
            raise ArmoError(f"{source.name}: the input changed while it was being read; run again")
    except BaseException:
        units.abandon()
        raise
    if units.reused:
        info(f"--resume: {units.reused} of {len(keys)} windows were already scored", cfg.quiet)
    return out


def shard_windows(n: int, index: int, count: int) -> range:
    """Shard `index` of `count`: a contiguous block of the n windows (the blocks in shard order are the input's order,
    so shards' outputs join by concatenation)."""
    return range(index * n // count, (index + 1) * n // count)


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
