"""`armo evaluate`: a model measured on pairs (accuracy, length bias, RewardBench sections) or on rows with lists of
responses by their benchmark's own rule (benchmarks.py); its JSON, per-pair and HTML reports."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch

from .console import info, show, table, warn
from .context import RowContext
from .rendering import Tree
from .errors import ArmoError
from .jsonl import dumps
from .outputs import write_texts_atomic
from .model import ArmoModel
from .configs import TIES, EvaluateConfig
from .options import check_value
from .rewardbench import coverage_note, section_scores
from .resumable import discard_progress
from .rows import iter_examples, locked_source
from .stats import bootstrap_ci, spearman

from . import scoring  # its score_trees looked up at call time (tests interrupt it there)
from .scoring import Scored, RowNotes, _load_model, _records, _source, check_finite_scores, check_inputs, iter_windows, load_features, model_context, scoring_progress, steered, weights_for, window_records, windows_job


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
            return [scoring.score_trees(model, ctx, trees, weights, source.name, advance) if trees else [] for trees in windows]
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
