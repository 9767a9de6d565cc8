"""`score` and `evaluate`: a trained model applied to features, explained, and measured."""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

import torch
from rich.table import Table

from .version import __version__
from .backbones import Backbone, load_backbone
from .console import info, loading, plain, show, table, warn
from .features import Features
from .context import RowContext
from .forward import check_finite_features
from .rendering import Tree, tokenized
from .errors import ArmoError
from .jsonl import check_input_file, dumps, sha256_file, sha256_json
from .outputs import atomic_path, check_output_file, naming, write_texts_atomic
from .model import ArmoModel
from .configs import TIES, EvaluateConfig, ModelInputConfig, ScoreConfig
from . import specs
from .options import check_value, validate
from .provenance import require_compatible
from .heads import unscale
from .rewardbench import coverage_note, section_scores
from .progress import WindowProgress, discard_progress
from .rows import Skipped, Source, iter_examples, locked_source
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
    """The model as `--objective` should see it. Decorrelation subtracts the verbosity objective from every
    objective, itself included, so its decorrelated reward is 0 for every response and every pair would
    tie: `--objective` on the verbosity objective scores its raw reward instead (T = identity)."""
    if objective is not None and objective == model.decorrelation.meta.verbosity:
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
    """Rows of one window, scored: their trees (ids, lines, lengths) and the model's explanation."""

    trees: list[Tree]
    explained: dict[str, torch.Tensor]  # model.explain output, rows in the order of `trees`
    pair: bool
    n_chosen: int | None = None  # rows with lists of chosen and rejected responses: how many are chosen


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


def iter_windows(ctx: RowContext, source: Source, cfg: ModelInputConfig, window: int | None = None,
                 report: bool = True, notes: RowNotes | None = None) -> Iterator[list[Tree]]:
    """The rows of a source, tokenised and length-checked, a window at a time (a window whose rows were all
    skipped is an empty list). Skipped and prompt-truncated rows are listed at the end (and kept in `notes`);
    a source with no usable row is an error."""
    window = window or WINDOW_ROWS
    notes = notes if notes is not None else RowNotes()
    skipped = notes.skipped
    rows = tokenized(iter_examples(source, cfg.on_error, skipped, unique_ids=False), ctx.renderer, min(window, 256))
    usable = 0
    while True:
        trees, read = [], 0
        for index, ex, tree in itertools.islice(rows, window):  # each row as it comes: errors in file order
            read += 1
            t = ctx.sized(ex, index, f"{source.name}:{ex.line}", skipped, tree)
            if t is not None:
                trees.append(t)
                if t.truncated:
                    notes.truncated.append((ex.line, ex.id))
        if not read:
            break
        usable += len(trees)
        yield trees
    if report:
        for sk in sorted(skipped, key=lambda sk: sk.line):
            warn(f"skipped line {sk.line} ({sk.id}): {sk.reason}")
        if notes.truncated:
            lines = [str(line) for line, _ in notes.truncated]
            warn(f"truncated the prompt of {len(lines)} row{'s' * (len(lines) > 1)} to fit {ctx.limit_name} {ctx.limit} "
                 f"(--overflow truncate-prompt): line{'s' * (len(lines) > 1)} {', '.join(lines[:10])}"
                 + (f" and {len(lines) - 10} more" if len(lines) > 10 else ""))
    if not usable:
        raise ArmoError(f"{source.name}: no usable rows")


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
    for shape in dict.fromkeys((len(t.conts), t.example.n_chosen) for t in trees):  # single, pair, each list shape
        group = [t for t in trees if (len(t.conts), t.example.n_chosen) == shape]
        P, R = ctx.encode(group, on_batch)
        check_finite_features(group, P, R, source_name, ctx.backbone.dtype)
        groups.append(Scored(group, model.explain(P, R, weights), shape == (2, None), shape[1]))
    return groups


def model_context(model: ArmoModel, backbone: Backbone | None, cfg: ModelInputConfig) -> RowContext:
    """The row context `score` and `evaluate` run a model in (context.RowContext.for_model): its backbone, loaded
    here unless given (armo's fast Llama forward where it applies), checked to give the model's features."""
    bb = backbone or load_backbone(cfg.backbone or model.backbone["name"], cfg.device, cfg.dtype, fast=True)
    return RowContext.for_model(model, bb, max_length=cfg.max_length, overflow=cfg.overflow, batch_tokens=cfg.batch_tokens)


def window_records(model: ArmoModel, groups: list[Scored], top_k: int) -> list[dict]:
    """The records of one scored window, in input order."""
    out = []
    for g in groups:
        recs = _records(model, [t.example.id for t in g.trees], [t.example.subset for t in g.trees], g.explained,
                        g.pair, top_k, g.n_chosen)
        out += [(t.index, r) for t, r in zip(g.trees, recs)]
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
        progress = windows_job(cfg, model, ctx, source, weights, cfg.output, {"records": "score", "top_k": cfg.top_k},
                               lambda groups: window_records(model, groups, cfg.top_k))
        progress.publish()
        return progress.rows


def windows_job(cfg: ModelInputConfig, model: ArmoModel, ctx: RowContext, source: Source, weights: torch.Tensor | None,
                anchor: str, settings: dict, records: Callable[[list[Scored]], list[dict]],
                check: Callable[[Tree], None] | None = None, notes: RowNotes | None = None) -> WindowProgress:
    """Score a source window by window into ANCHOR.parts/ and return the completed progress (every window's
    records, in input order, in its data file). Every row is read and checked first (`check` too), so a bad
    row stops the job before any forward pass, leaving nothing behind. Each finished window is kept, keyed by
    the model, the settings and the window's token ids, and `--resume` reuses the windows that still match."""
    for trees in iter_windows(ctx, source, cfg, report=False):
        for t in trees:
            if check:
                check(t)
    job = sha256_json({"model": model_key(model), "weights": None if weights is None else weights.tolist(),
                       "objective": cfg.objective, "max_length": cfg.max_length, "overflow": cfg.overflow,
                       "on_error": cfg.on_error, "backbone": ctx.backbone.fingerprint, "dtype": str(ctx.backbone.dtype),
                       "armo_version": __version__, **settings})
    progress = WindowProgress(anchor, job, cfg.resume)
    try:
        for trees in iter_windows(ctx, source, cfg, notes=notes):
            progress.rows += len(trees)
            key = sha256_json([job, [[t.index, t.example.id, t.example.subset, t.gate, t.truncated, t.prompt, t.conts]
                                     for t in trees]])
            if progress.done(key):
                continue
            groups = score_trees(model, ctx, trees, weights, source.name)
            for g in groups:
                check_finite_scores(g.explained["score"], [t.example.id for t in g.trees])
            progress.add(key, "".join(dumps(r) + "\n" for r in records(groups)))
        progress.complete()
    except BaseException:
        progress.abandon()
        raise
    if progress.reused:
        info(f"--resume: {progress.reused} of {progress.pos} windows were already scored", cfg.quiet)
    return progress


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
        with naming("<stdout>"):  # a full disk behind a redirect is a failure, named
            yield sys.stdout
            sys.stdout.flush()
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
            "verbosity_objective": model.decorrelation.meta.verbosity,
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


def _evaluate_rows(cfg: EvaluateConfig, model: ArmoModel, ctx: RowContext, weights: torch.Tensor | None) -> tuple[list[dict], dict]:
    """The pair records of an input's rows, in input order, and what was skipped or truncated. With a file output,
    a resumable job (`windows_job`, progress beside the first output, kept until every output is written)."""
    notes = RowNotes()

    def check(t: Tree, name: str) -> None:
        if len(t.conts) != 2:
            raise ArmoError(f"{name}:{t.example.line}: evaluate needs pairs (rows with 'chosen' and 'rejected')")

    def window_pairs(groups: list[Scored], name: str) -> list[dict]:
        out = []
        for g in groups:
            for t in g.trees:
                check(t, name)
            out += pair_records(model, [t.example.id for t in g.trees], [t.example.subset or "all" for t in g.trees],
                                g.explained, torch.tensor([[len(c) for c in t.conts] for t in g.trees]))
        return out  # pairs only: one group per window, in input order

    return _rows_job(cfg, model, ctx, weights, "evaluate pairs", window_pairs, check, notes), notes.to_json()


def _rows_job(cfg: EvaluateConfig, model: ArmoModel, ctx: RowContext, weights: torch.Tensor | None, kind: str,
              records: Callable[[list[Scored], str], list[dict]], check: Callable[[Tree, str], None],
              notes: RowNotes) -> list[dict]:
    """The records of an input's rows, in input order: streamed, or with a file output a resumable job (`windows_job`,
    progress beside the first output, kept until every output is written). `kind` keys the job's progress."""
    anchor = progress_anchor(cfg)
    if anchor is None:
        source = _source(cfg)
        return [r for groups in iter_scored(model, ctx, source, cfg, weights, notes=notes) for r in records(groups, source.name)]
    with locked_source(anchor, cfg.input, cfg.dataset, cfg.split, cfg.quiet) as source:
        progress = windows_job(cfg, model, ctx, source, weights, anchor, {"records": kind},
                               lambda groups: records(groups, source.name), lambda t: check(t, source.name), notes)
        return [json.loads(line) for line in progress.text().splitlines()]


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
    from .benchmarks import RowScores, detect, score_benchmark

    if cfg.html:
        from .report import check_available

        check_available()
    for flag, value in (("--features", cfg.features),):
        if value:
            raise ArmoError(f"{flag}: not yet for rows with lists of responses (RewardBench 2, RM-Bench, best-of-n); "
                            f"-o writes the report, --pairs-output each row's scores")
    ctx = model_context(model, None, cfg)
    notes = RowNotes()

    def check(t: Tree, name: str) -> None:
        if not (t.example.is_list or (t.example.is_pair and cfg.benchmark in ("auto", "best-of-n"))):
            raise ArmoError(f"{name}:{t.example.line}: --benchmark {cfg.benchmark} needs rows with lists of 'chosen' "
                            f"and 'rejected' responses")

    def window(groups: list[Scored], name: str) -> list[dict]:
        for g in groups:
            for t in g.trees:
                check(t, name)
        return [{**r, "subset": r.get("subset") or "all"} for r in window_records(model, groups, 3)]

    records = _rows_job(cfg, model, ctx, w, "evaluate lists", window, check, notes)

    def side(x: dict | list) -> list[float]:
        return [y["score"] for y in x] if isinstance(x, list) else [x["score"]]

    rows = [RowScores(r["id"], r["subset"], side(r["chosen"]) + side(r["rejected"]), len(side(r["chosen"])))
            for r in records]
    benchmark, why = (cfg.benchmark, "--benchmark") if cfg.benchmark != "auto" else detect(rows, pairs=False)
    report = {"model": str(model.path), "model_info": model_info(model), "input": _source(cfg).name,
              "weights": cfg.weights, "objective": cfg.objective, "benchmark_reason": why,
              **score_benchmark(rows, benchmark, cfg.bootstrap, cfg.seed), **notes.to_json()}
    texts = {}
    if cfg.pairs_output:
        texts[cfg.pairs_output] = "".join(dumps(r) + "\n" for r in records)
    if cfg.output:
        texts[cfg.output] = dumps(report, indent=2) + "\n"
    if cfg.html:
        from .report import render_benchmark_report

        texts[cfg.html] = render_benchmark_report(report)
    write_texts_atomic(texts)
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
        show(table(title, ["domain", "n", "hard", "normal", "easy", "average"],
                   [[d, v["n"], v["hard"], v["normal"], v["easy"], v["average"]] for d, v in report["domains"].items()]
                   + [["all domains", report["n"], report["hard"], report["normal"], report["easy"], report["average"]]]),
             quiet)
        for d, v in report["domains"].items():
            show(table(f"{d}: chosen style (rows) outscores rejected style (columns)", ["", *report["styles"]],
                       [[s, *row] for s, row in zip(report["styles"], v["matrix"])]), quiet)
        return
    base = report["benchmark"] == "best-of-n"
    show(table(title, ["subset", "n", "score", "95% CI", "ties", *(["random"] if base else [])],
               [[k, v["n"], v["score"], f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]", v["ties"],
                 *([v["random_baseline"]] if base else [])] for k, v in report["subsets"].items()]), quiet)
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
        ids, lengths = feats.ids, feats.tensors["response_lengths"]
        subsets = feats.meta.subsets or [None] * len(ids)
        rows_report = {k: feats.meta.report.get(k, []) for k in ("skipped", "truncated")}  # extract's, at extraction
    else:
        records, rows_report = _evaluate_rows(cfg, model, model_context(model, None, cfg), w)
        ids, subsets = [r["id"] for r in records], [r["subset"] for r in records]
        # the records hold each float32 score exactly: the same margins as the tensors they came from
        ex = {"score": torch.tensor([[r["chosen"]["score"], r["rejected"]["score"]] for r in records], dtype=torch.float32)}
        lengths = torch.tensor([[r["chosen"]["length"], r["rejected"]["length"]] for r in records])
    scores = ex["score"]
    check_finite_scores(scores, ids)
    subsets = [s if s is not None else "all" for s in subsets]
    report = evaluate_scores(scores, subsets, lengths, cfg.ties, cfg.bootstrap, cfg.seed)
    from .benchmarks import RowScores, detect

    benchmark, why = (cfg.benchmark, "--benchmark") if cfg.benchmark != "auto" else \
        detect([RowScores("", s, [], 1) for s in dict.fromkeys(subsets)], pairs=True)
    report = {"model": str(model.path), "model_info": model_info(model), "input": cfg.features or _source(cfg).name,
              "weights": cfg.weights, "objective": cfg.objective, "benchmark": benchmark, "benchmark_reason": why,
              **report, **rows_report}
    texts: dict[str, str] = {}
    if cfg.features:
        records = pair_records(model, ids, subsets, ex, lengths) if (cfg.pairs_output or cfg.html) else []
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
    if texts and not cfg.features:
        discard_progress(progress_anchor(cfg))  # every output is written: the job's progress has served
    rows = [[k, v["n"], v["accuracy"], f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]", v["ties"]] for k, v in report["subsets"].items()]
    show(table(f"evaluate: {report['n']} pairs, ties counted as {cfg.ties}", ["subset", "n", "accuracy", "95% CI", "ties"], rows), cfg.quiet)
    if report["sections"]:
        show(table("RewardBench sections", ["section", "score"], list(report["sections"].items())), cfg.quiet)
    lb = report["length_bias"]
    show(table("summary", ["metric", "value"], [
        [f"score ({report['score_kind']})", report["score"]],
        ["accuracy (all pairs)", report["accuracy_all"]],
        ["ties", report["ties"]["count"]],
        ["Spearman(score, length)", lb["spearman_score_length"]],
        ["longer response wins (model)", lb["longer_wins_model"]],
        ["longer response wins (labels)", lb["longer_wins_labels"]],
        ["rows skipped / prompts truncated", f"{len(report['skipped'])} / {len(report['truncated'])}"],
    ]), cfg.quiet)
    return report
