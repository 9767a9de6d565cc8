"""The HTML report of an evaluation: what the model values, where it wins, how length moves it.

Two steps, kept apart so that `armo report` redraws exactly what `armo evaluate --html` drew:
  - `figure_data(report, records)`: every number of every figure, from the evaluate report and its
    `--pairs-output` records alone (pure; tested against the records);
  - `render_report(report, records)`: one self-contained HTML file (inline SVG drawn by matplotlib, no
    script, no external `src`/`href`), each figure with a title, labelled axes, a caption saying how to read
    it, and its numbers in a collapsed table under it.
matplotlib is imported only here, and only when a report is asked for (`pip install 'armo-cli[report]'`).
"""
from __future__ import annotations

import html
import io
import json
import math
import re
from pathlib import Path

from .console import visible
from .errors import ArmoError
from .rewardbench import SECTIONS

BLUE, ORANGE, GREY = "#0072B2", "#E69F00", "#999999"  # Okabe-Ito: safe for colour-blind readers
SEQUENTIAL, DIVERGING = "cividis", "PuOr"            # both colour-blind-safe; the diverging one is centred at 0
MAX_POINTS = 3000                                     # scatter points drawn (all are in the table's statistics)


def check_available() -> None:
    """Before any work: the plotting library is there."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ArmoError("--html needs matplotlib: pip install 'armo-cli[report]'") from None


# --- numbers ----------------------------------------------------------------------------------------


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _pearson(a: list[float], b: list[float]) -> float | None:
    n = len(a)
    ma, mb = _mean(a), _mean(b)
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    if n < 2 or va <= 1e-24 or vb <= 1e-24:
        return None  # a constant objective (the length objective after decorrelation) has no correlation
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / math.sqrt(va * vb)


def _outcome(margin: float, ties: str) -> float:
    return 1.0 if margin > 0 else (0.5 if margin == 0 and ties == "half" else 0.0)


def subset_order(subsets: list[str]) -> list[tuple[str, str | None]]:
    """(subset, RewardBench section or None), RewardBench's subsets grouped by section in its order."""
    out, seen = [], set()
    for sec, names in SECTIONS.items():
        for s in names:
            if s in subsets:
                out.append((s, sec))
                seen.add(s)
    out += [(s, None) for s in subsets if s not in seen]
    return out


def figure_data(report: dict, records: list[dict]) -> dict:
    """Everything the report draws, computed from the evaluate report and its per-pair records."""
    records = [pair_view(r, f"pair {i + 1}") for i, r in enumerate(records)]
    if not records:
        raise ArmoError("the report needs the per-pair records (--pairs-output): none given")
    info = report.get("model_info") or {}
    objectives = info.get("objectives") or list(records[0]["gating"])
    verbosity = info.get("verbosity_objective")
    raw = set(info.get("decorrelated_against") or [verbosity])  # zero after decorrelation: read raw
    ties = (report.get("ties") or {}).get("rule", "loss")
    present = list(dict.fromkeys(r["subset"] for r in records))
    order = subset_order(present)
    by_subset = {s: [r for r in records if r["subset"] == s] for s, _ in order}

    accuracy = []
    for s, sec in order:
        v = report.get("subsets", {}).get(s)
        rs = by_subset[s]
        acc = v["accuracy"] if v else _mean([_outcome(r["margin"], ties) for r in rs])
        ci = v["ci95"] if v else [float("nan"), float("nan")]
        accuracy.append({"subset": s, "section": sec, "n": len(rs), "accuracy": acc, "ci95": ci})

    gate = {s: {o: _mean([r["gating"][o] for r in by_subset[s]]) for o in objectives} for s, _ in order}
    coef = {s: {o: _mean([r["coefficients"][o] for r in by_subset[s]]) for o in objectives} for s, _ in order}

    # each objective alone: its decorrelated reward decides the pair (the length objective, zero after
    # decorrelation, is read raw, as `score --objective` does)
    def single(r: dict, o: str) -> float:
        src = r["rewards"] if o in raw else r["adjusted"]
        return _outcome(src["chosen"][o] - src["rejected"][o], ties)

    single_acc = {s: {**{o: _mean([single(r, o) for r in by_subset[s]]) for o in objectives},
                      "full model": next(a["accuracy"] for a in accuracy if a["subset"] == s)} for s, _ in order}

    lb = report.get("length_bias") or {}
    points = [{"length_diff": r["chosen_length"] - r["rejected_length"], "margin": r["margin"]} for r in records]

    def corr(kind: str) -> dict:
        cols = {o: [r[kind][side][o] for r in records for side in ("chosen", "rejected")] for o in objectives}
        return {a: {b: _pearson(cols[a], cols[b]) for b in objectives} for a in objectives}

    summary = {"model": info.get("path", report.get("model")), "backbone": info.get("backbone"), "layer": info.get("layer"),
               "pooling": info.get("pooling", "last"),  # reports from before --pooling: the last token
               "gate_rule": info.get("gate_rule"), "objectives": objectives, "input": report.get("input"),
               "n": report.get("n", len(records)), "ties": ties, "score": report.get("score"),
               "score_kind": report.get("score_kind"), "sections": report.get("sections") or {},
               "accuracy_all": report.get("accuracy_all"), "weights": report.get("weights"), "objective": report.get("objective"),
               # reports from before these lists existed say nothing: None, shown as "not recorded"
               "skipped": report.get("skipped"), "truncated": report.get("truncated")}
    return {"summary": summary, "accuracy": accuracy, "gate_weights": gate, "coefficients": coef,
            "single_objective_accuracy": single_acc, "verbosity_objective": verbosity,
            "length": {"points": points, "spearman_score_length": lb.get("spearman_score_length"),
                       "longer_wins_model": lb.get("longer_wins_model"), "longer_wins_labels": lb.get("longer_wins_labels"),
                       "pairs_with_length_difference": lb.get("pairs_with_length_difference")},
            "correlation_before": corr("rewards"), "correlation_after": corr("adjusted")}


# --- drawing ------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # subset and objective names are the user's text: `$...$` must not become TeX (or fail to parse as it)
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "armo", "font.size": 9, "axes.titlesize": 10,
                         "axes.spines.top": False, "axes.spines.right": False, "text.parse_math": False})
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    s = buf.getvalue()
    s = re.sub(r"<metadata>.*?</metadata>", "", s, flags=re.S)  # RDF boilerplate
    return s[s.find("<svg"):]  # drop the XML prolog and DOCTYPE (whose URL would be an external reference)


def _count(rows: list | None) -> str:
    """How many rows a list names, and the first few ids; None (an older report) is not zero."""
    if rows is None:
        return "not recorded"
    ids = [(r.get("id") or f"line {r.get('line')}") if isinstance(r, dict) else r for r in rows]
    return f"{len(ids)}" + (f": {', '.join(map(str, ids[:5]))}" + (" ..." if len(ids) > 5 else "") if ids else "")


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _text(v) -> str:
    """A value as HTML text: control characters in the user's names shown as escapes, as on the terminal."""
    return html.escape(visible(_fmt(v)))


def _summary(rows: list[list]) -> str:
    """A report's summary: a name and a value a line, always shown."""
    return "<table class='summary'>" + "".join(f"<tr><th>{_text(k)}</th><td>{_text(v)}</td></tr>" for k, v in rows) + "</table>"


def _table(header: list[str], rows: list[list], of: str | None = None) -> str:
    """A figure's numbers behind a toggle; `of` names them where a section has two figures."""
    h = "".join(f"<th>{_text(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{_text(c)}</td>" for c in r) + "</tr>" for r in rows)
    summary = "the numbers" + (f": {_text(of)}" if of else "")
    return f"<details><summary>{summary}</summary><table><tr>{h}</tr>{body}</table></details>"


def _accuracy_figure(plt, data: dict) -> str:
    acc = data["accuracy"]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(acc) + 1.2))
    y = list(range(len(acc)))[::-1]
    vals = [a["accuracy"] for a in acc]
    lo = [max(a["accuracy"] - a["ci95"][0], 0) if not math.isnan(a["ci95"][0]) else 0 for a in acc]
    hi = [max(a["ci95"][1] - a["accuracy"], 0) if not math.isnan(a["ci95"][1]) else 0 for a in acc]
    ax.barh(y, vals, xerr=[lo, hi], color=BLUE, ecolor="black", capsize=2, height=0.6)
    ax.axvline(0.5, color=GREY, linestyle="--", linewidth=1)
    labels = [f"{a['subset']} ({a['section']})" if a["section"] else a["subset"] for a in acc]
    ax.set_yticks(y, [f"{visible(lab)}  n={a['n']}" for lab, a in zip(labels, acc)])
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (share of pairs where chosen scores higher)")
    ax.set_title("Accuracy per subset, with 95% bootstrap intervals")
    return _svg(fig)


def _heatmap(plt, matrix: list[list[float | None]], rows: list[str], cols: list[str], title: str, cbar: str,
             diverging: bool, vmin: float | None = None, vmax: float | None = None) -> str:
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    m = np.array([[np.nan if v is None else v for v in r] for r in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(0.62 * len(cols) + 2.6, 0.36 * len(rows) + 1.6))
    finite = m[np.isfinite(m)]
    if diverging:
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-lim or -1, vmax=lim or 1)
        im = ax.imshow(m, cmap=DIVERGING, norm=norm, aspect="auto")
    else:
        im = ax.imshow(m, cmap=SEQUENTIAL, vmin=vmin if vmin is not None else (finite.min() if finite.size else 0),
                       vmax=vmax if vmax is not None else (finite.max() if finite.size else 1), aspect="auto")
    ax.set_xticks(range(len(cols)), [visible(c) for c in cols], rotation=40, ha="right")
    ax.set_yticks(range(len(rows)), [visible(r) for r in rows])
    if len(rows) * len(cols) <= 400:
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = m[i, j]
                txt = "n/a" if not np.isfinite(v) else (f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}")
                rgba = im.cmap(im.norm(v)) if np.isfinite(v) else (1, 1, 1, 1)
                dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
                ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.spines[:].set_visible(False)
    fig.colorbar(im, ax=ax, label=cbar, shrink=0.8)
    ax.set_title(title)
    return _svg(fig)


def _length_figure(plt, data: dict) -> str:
    pts = data["length"]["points"]
    step = max(1, math.ceil(len(pts) / MAX_POINTS))
    shown = pts[::step]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    win = [p for p in shown if p["margin"] > 0]
    lose = [p for p in shown if p["margin"] <= 0]
    ax.scatter([p["length_diff"] for p in win], [p["margin"] for p in win], s=9, alpha=0.6, color=BLUE,
               label="chosen scored higher")
    ax.scatter([p["length_diff"] for p in lose], [p["margin"] for p in lose], s=9, alpha=0.6, color=ORANGE, marker="x",
               label="rejected scored higher or tie")
    ax.axhline(0, color=GREY, linewidth=0.8)
    ax.axvline(0, color=GREY, linewidth=0.8)
    ax.set_xlabel("length difference, chosen − rejected (tokens)")
    ax.set_ylabel("score margin, chosen − rejected")
    ax.set_title("Does length move the score? Margin against length difference")
    ax.legend(loc="best", fontsize=8, frameon=False)
    return _svg(fig)


def render_report(report: dict, records: list[dict]) -> str:
    """The whole HTML report as a string."""
    check_available()
    data = figure_data(report, records)
    plt = _plt()
    s, acc = data["summary"], data["accuracy"]
    subsets = [a["subset"] for a in acc]
    objs = s["objectives"]
    parts = []

    # 1. summary
    rows = [["model", s["model"]], ["backbone", s["backbone"]], ["feature layer", s["layer"]],
            ["response feature", "mean of its tokens" if s["pooling"] == "mean" else "its last token"], ["gate rule", s["gate_rule"]],
            ["objectives", ", ".join(objs)], ["data", s["input"]], ["pairs", s["n"]],
            ["rows skipped", _count(s["skipped"])],
            ["prompts truncated to fit", _count(s["truncated"])],
            ["ties count as", "a loss" if s["ties"] == "loss" else "half a win"],
            ["accuracy, all pairs", s["accuracy_all"]], [f"score ({s['score_kind']})", s["score"]]]
    rows += [[f"RewardBench section: {k}", v] for k, v in s["sections"].items()]
    if s["weights"] or s["objective"]:
        rows.append(["scored with", f"fixed weights {s['weights']}" if s["weights"] else f"objective {s['objective']}"])
    parts.append(("summary", "Summary", _summary(rows), ""))

    # 2. accuracy
    parts.append(("accuracy", "Accuracy per subset", _accuracy_figure(plt, data),
                  "Each bar is the share of pairs whose chosen response scored higher; the whiskers are 95% bootstrap "
                  "intervals and the dashed line is chance (0.5)." +
                  _table(["subset", "section", "n", "accuracy", "95% low", "95% high"],
                         [[a["subset"], a["section"] or "", a["n"], a["accuracy"], a["ci95"][0], a["ci95"][1]] for a in acc])))

    # 3. the gate by subset
    gm = [[data["gate_weights"][r][o] for o in objs] for r in subsets]
    cm = [[data["coefficients"][r][o] for o in objs] for r in subsets]
    parts.append(("gate", "What the model values, by subset",
                  _heatmap(plt, gm, subsets, objs, "Mean gate weight per objective", "mean gate weight", False, vmin=0.0) +
                  _heatmap(plt, cm, subsets, objs, "Mean coefficient per objective (gate weights through the decorrelation)",
                           "mean coefficient", True),
                  "Rows are subsets, columns objectives. First map: the gate's mean weight (a row sums to the gate's "
                  "learned scale); darker means less weight. Second map: the mean coefficient g·Tᵀ that multiplies each objective's "
                  "reward in the score; purple pulls the score up with that reward, orange pushes it down, white is 0." +
                  _table(["subset", *[f"weight: {o}" for o in objs]], [[r, *row] for r, row in zip(subsets, gm)],
                         "gate weights") +
                  _table(["subset", *[f"coefficient: {o}" for o in objs]], [[r, *row] for r, row in zip(subsets, cm)],
                         "coefficients")))

    # 4. each objective alone
    cols = [*objs, "full model"]
    sm = [[data["single_objective_accuracy"][r][c] for c in cols] for r in subsets]
    v = data["verbosity_objective"]
    parts.append(("single", "Each objective alone",
                  _heatmap(plt, sm, subsets, [c + (" (raw)" if c == v else "") for c in cols],
                           "Accuracy per subset when one objective alone scores the pair", "accuracy", False, 0.0, 1.0),
                  "Each cell is the accuracy of scoring the pairs of that subset with one (decorrelated) objective only; the "
                  "last column is the full model. Lighter is better; 0.5 is chance." +
                  (f" The length objective `{_text(v)}` is zero after decorrelation, so its raw reward is shown." if v else "") +
                  _table(["subset", *cols], [[r, *row] for r, row in zip(subsets, sm)])))

    # 5. length
    ln = data["length"]
    parts.append(("length", "Length", _length_figure(plt, data),
                  "Each point is a pair: right of 0 the chosen response is longer, above 0 it scored higher. Points "
                  "spread along a rising diagonal would mean longer answers win regardless of quality." +
                  _table(["measure", "value"], [["Spearman(score, length) over all responses", ln["spearman_score_length"]],
                                                ["longer response scores higher (model)", ln["longer_wins_model"]],
                                                ["longer response is the chosen one (labels)", ln["longer_wins_labels"]],
                                                ["pairs whose lengths differ", ln["pairs_with_length_difference"]],
                                                ["points drawn", min(len(ln["points"]), MAX_POINTS)]])))

    # 6. objectives' correlations
    before = [[data["correlation_before"][a][b] for b in objs] for a in objs]
    after = [[data["correlation_after"][a][b] for b in objs] for a in objs]
    parts.append(("correlation", "How the objectives move together",
                  _heatmap(plt, before, objs, objs, "Correlation of the objectives' rewards, before decorrelation",
                           "Pearson correlation", True) +
                  _heatmap(plt, after, objs, objs, "… and after decorrelation", "Pearson correlation", True),
                  "Pearson correlation of two objectives' rewards over every evaluated response (chosen and rejected). "
                  "Decorrelation removes each objective's share of the length objective; n/a marks an objective that is "
                  "constant (the length objective after decorrelation)." +
                  _table(["objective", *objs], [[o, *row] for o, row in zip(objs, before)], "before decorrelation") +
                  _table(["objective (after)", *objs], [[o, *row] for o, row in zip(objs, after)], "after decorrelation")))

    return _page(f"armo evaluation: {s['input'] or ''}", _sections(parts))


def _page(title: str, body: str) -> str:
    css = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
           "h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}"
           "table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;"
           "text-align:left}p.caption{font-size:.9em;color:#444}svg{max-width:100%;height:auto}"
           "details{margin:.3em 0}summary{cursor:pointer;color:#0072B2}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{GENERATOR}<title>{_text(title)}</title>"
            f"<style>{css}</style></head><body><h1>{_text(title)}</h1>{body}</body></html>\n")


SECTION_ID = re.compile(r"[a-z][a-z0-9-]*")


def _sections(parts: list[tuple[str, str, str, str]]) -> str:
    """The page's numbered sections: (id, title, figure HTML, caption HTML). An id is armo's own word, never the data's
    (an RM-Bench domain such as `chat' onmouseover='...` once reached an attribute); the title is text."""
    out = []
    for i, (sid, title, fig, cap) in enumerate(parts, 1):
        if not SECTION_ID.fullmatch(sid):
            raise ValueError(f"section id {sid!r}: not one of armo's own")
        out.append(f"<section id='{sid}'><h2>{i}. {_text(title)}</h2>{fig}"
                   + (f"<p class='caption'>{cap}</p>" if cap else "") + "</section>")
    return "".join(out)


def _score_figure(plt, subsets: dict, xlabel: str, baseline: bool) -> str:
    names = list(subsets)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.2))
    y = list(range(len(names)))[::-1]
    vals = [subsets[n]["score"] for n in names]
    ci = [subsets[n]["ci95"] for n in names]
    lo = [max(v - c[0], 0) if not math.isnan(c[0]) else 0 for v, c in zip(vals, ci)]
    hi = [max(c[1] - v, 0) if not math.isnan(c[1]) else 0 for v, c in zip(vals, ci)]
    ax.barh(y, vals, xerr=[lo, hi], color=BLUE, ecolor="black", capsize=2, height=0.6)
    if baseline:
        ax.scatter([subsets[n]["random_baseline"] for n in names], y, marker="|", s=200, color=ORANGE, zorder=3,
                   label="random baseline")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_yticks(y, [f"{visible(n)}  n={subsets[n]['n']}" for n in names])
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_title("Per subset, with 95% intervals (rows resampled)")
    return _svg(fig)


def _style_gap_figure(plt, report: dict) -> str:
    """RM-Bench's style gap (easy - hard) per domain and over all, with 95% intervals."""
    names = [*report["domains"], "all domains"]
    rows = [*report["domains"].values(), report]
    vals = [r["style_gap"] for r in rows]
    ci = [r["ci95"].get("style_gap", [float("nan")] * 2) for r in rows]
    lo = [max(v - c[0], 0) if not math.isnan(c[0]) else 0 for v, c in zip(vals, ci)]
    hi = [max(c[1] - v, 0) if not math.isnan(c[1]) else 0 for v, c in zip(vals, ci)]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.2))
    y = list(range(len(names)))[::-1]
    ax.barh(y, vals, xerr=[lo, hi], color=ORANGE, ecolor="black", capsize=2, height=0.6)
    ax.axvline(0, color=GREY, linestyle="--", linewidth=1)
    ax.set_yticks(y, [visible(n) for n in names])
    ax.set_xlim(-1, 1)
    ax.set_xlabel("style gap: easy accuracy minus hard accuracy")
    ax.set_title("What the model pays for style, per domain (95% intervals)")
    return _svg(fig)


def render_benchmark_report(report: dict) -> str:
    """The HTML report of a benchmark with lists of responses (RewardBench 2, RM-Bench, best-of-n), from its report
    alone: what the rule decided, per subset or domain; RM-Bench's style matrices as heatmaps."""
    check_available()
    plt = _plt()
    info = report.get("model_info") or {}
    bench = report["benchmark"]
    rows = [["model", report.get("model")], ["backbone", info.get("backbone")], ["data", report.get("input")],
            ["benchmark", bench], ["why this rule", report.get("benchmark_reason")], ["rows", report["n"]],
            [f"score ({report['score_kind']})", report["score"]], ["rows with a tie the rule decided", report["ties"]],
            ["rows skipped", _count(report.get("skipped", []))]]
    if "random_baseline" in report:
        rows.append(["random baseline", report["random_baseline"]])
    parts = [("summary", "Summary", _summary(rows), "")]
    if bench == "rm-bench":
        styles = report["styles"]
        for k, (name, d) in enumerate(report["domains"].items(), 1):
            parts.append((f"matrix-{k}", f"{name}: chosen style against rejected style",
                          _heatmap(plt, d["matrix"], [f"chosen: {s}" for s in styles], [f"rejected: {s}" for s in styles],
                                   f"{name}: how often the chosen response outscores the rejected one (n={d['n']})",
                                   "accuracy", False, 0.0, 1.0),
                          "Each cell is the share of rows where the chosen response in the row's style outscores the "
                          "rejected one in the column's. Above the diagonal (hard), the chosen answer is plainer than the "
                          "rejected one: a model that rewards style over substance is weak there." +
                          _table(["level", "accuracy", "95% low", "95% high"],
                                 [[k, d[k], d["ci95"][k][0], d["ci95"][k][1]]
                                  for k in ("hard", "normal", "easy", "average", "style_gap") if k in d])))
        parts.append(("levels", "Hard, normal and easy, by domain; the style gap",
                      _style_gap_figure(plt, report) if "style_gap" in report else "",
                      "The style gap is easy minus hard: how much more often the model is right when the right answer "
                      "is the fancier one. A model that judges content alone has a gap near 0; RM-Bench shows most "
                      "reward models do not." +
                      _table(["domain", "n", "hard", "normal", "easy", "average", "style gap (easy - hard)"],
                             [[k, d["n"], d["hard"], d["normal"], d["easy"], d["average"], d.get("style_gap")]
                              for k, d in report["domains"].items()])))
    else:
        subsets = report["subsets"]
        base = bench == "best-of-n"
        parts.append(("subsets", "Per subset" if not base else "Per category",
                      _score_figure(plt, subsets, "score (RewardBench 2's rule)" if not base else
                                    "accuracy (chosen above every rejected response)", base),
                      ("Bars are scores with 95% intervals from resampled rows" +
                       ("; the orange mark is the random baseline: the chance that a random order puts a row's k chosen responses above "
                        "its n rejected ones, 1 / C(k + n, k) (1 / (1 + n) for one chosen)." if base else
                        ". RewardBench 2's Ties subset has its own score, from pairs of ref and tied rows.")) +
                      _table(["subset", "n", "score", "95% low", "95% high", "rows with a tie", *(["random"] if base else [])],
                             [[k, v["n"], v["score"], v["ci95"][0], v["ci95"][1], v["ties"],
                               *([v["random_baseline"]] if base else [])] for k, v in subsets.items()])))
    return _page(f"armo evaluation ({bench}): {report.get('input') or ''}", _sections(parts))


PAIR_FIELDS = ("subset", "margin", "gating", "coefficients", "chosen.score", "chosen.length", "chosen.rewards",
               "chosen.adjusted", "rejected.score", "rejected.length", "rejected.rewards", "rejected.adjusted")


def pair_view(obj: object, where: str) -> dict:
    """What the report reads of one `--pairs-output` record: its own shape (`armo score`'s pair record, with each
    side's length and adjusted rewards), or the flat one armo 0.1 wrote."""
    if isinstance(obj, dict) and isinstance(obj.get("chosen"), (int, float)) and "rewards" in obj:  # armo 0.1
        obj = {**obj, **{s: {"score": obj[s], "length": obj.get(f"{s}_length"), "rewards": obj["rewards"].get(s),
                              "adjusted": (obj.get("adjusted") or {}).get(s)} for s in ("chosen", "rejected")}}
    for key in PAIR_FIELDS:
        value = obj
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            raise ArmoError(f"{where}: field '{key}': missing (write it with `armo evaluate --pairs-output`)")
    return {"subset": obj["subset"], "margin": obj["margin"], "gating": obj["gating"], "coefficients": obj["coefficients"],
            "chosen_length": obj["chosen"]["length"], "rejected_length": obj["rejected"]["length"],
            "rewards": {s: obj[s]["rewards"] for s in ("chosen", "rejected")},
            "adjusted": {s: obj[s]["adjusted"] for s in ("chosen", "rejected")}}


def report_from_files(report_path: str, pairs_path: str) -> tuple[dict, list[dict]]:
    """The report and its pairs file, checked to belong together: the report's summary and the figures drawn
    from the pairs must describe one run (the digest evaluate recorded; for reports without one, the counts)."""
    from .jsonl import iter_jsonl, read_json_object, text_sha256

    report = read_json_object(Path(report_path))
    records = []
    for line, obj in iter_jsonl(pairs_path):
        pair_view(obj, f"{pairs_path}:{line}")  # checked here, naming the line; read by figure_data
        records.append(obj)
    mismatch = f"{pairs_path}: not the pairs file of {report_path}"
    if isinstance(report.get("pairs_sha256"), str):
        if text_sha256(pairs_path) != report["pairs_sha256"]:
            raise ArmoError(f"{mismatch} (its records differ from those the report was computed from); give the "
                            f"--pairs-output file of the same `armo evaluate` run")
    counts: dict[str, int] = {}
    for r in records:
        counts[r["subset"]] = counts.get(r["subset"], 0) + 1
    want = {k: v.get("n") for k, v in report.get("subsets", {}).items() if isinstance(v, dict)}
    if want and counts != want:
        only_pairs, only_report = sorted(set(counts) - set(want)), sorted(set(want) - set(counts))
        if only_pairs or only_report:
            what = "; ".join(x for x in (
                f"field 'subset': {', '.join(map(repr, only_pairs))} only in the pairs" if only_pairs else "",
                f"{', '.join(map(repr, only_report))} only in the report" if only_report else "") if x)
        else:
            k = next(k for k in sorted(want) if counts[k] != want[k])
            what = f"subset {k!r}: {counts[k]} pairs, the report {want[k]}"
        raise ArmoError(f"{mismatch} ({what})")
    return report, records


# Marks a page as armo's, so that `armo report` without -o replaces only a report.html that armo wrote.
GENERATOR = "<meta name='generator' content='armo report'>"
DEFAULT_OUTPUT = "report.html"


def recorded_pairs(report_path: str) -> str:
    """The pairs file an evaluate report names (`pairs_output`), as written or beside the report."""
    from .jsonl import read_json_object

    name = read_json_object(Path(report_path)).get("pairs_output")
    if not isinstance(name, str):
        raise ArmoError(f"{report_path}: names no pairs file (written without --pairs-output, or by armo 0.1); give --pairs")
    return str(Path(report_path).parent / name)  # recorded relative to the report's folder


def _default_output(cfg) -> None:
    """Without -o, report.html: never a page armo did not write."""
    if cfg.output is None:
        cfg.output = DEFAULT_OUTPUT
        out = Path(cfg.output)
        if out.is_file() and GENERATOR.encode() not in out.read_bytes()[:4096]:
            raise ArmoError(f"{out}: exists and armo did not write it; give -o {out} to replace it, or another path")


def _write_benchmark_report(cfg) -> None:
    from .console import info
    from .jsonl import read_json_object
    from .outputs import check_output_file, write_texts_atomic

    _default_output(cfg)
    check_output_file(cfg.output, "--output", [cfg.report])
    check_available()
    report = read_json_object(Path(cfg.report))
    write_texts_atomic({cfg.output: render_benchmark_report(report)})
    info(f"{cfg.output} ({report.get('n')} rows, from {cfg.report})", cfg.quiet, done="wrote")


def write_report(cfg) -> None:
    """`armo report`: redraw the HTML report from saved evaluate outputs."""
    from .jsonl import check_input_file, read_json_object
    from .outputs import check_output_file, write_texts_atomic
    from .options import validate

    validate(cfg)
    check_input_file(cfg.report)
    if read_json_object(Path(cfg.report)).get("benchmark") in ("rewardbench2", "rm-bench", "best-of-n"):
        return _write_benchmark_report(cfg)  # drawn from the report alone
    if cfg.pairs is None:
        cfg.pairs = recorded_pairs(cfg.report)
    check_input_file(cfg.pairs)
    _default_output(cfg)
    check_output_file(cfg.output, "--output", [cfg.report, cfg.pairs])
    check_available()
    report, records = report_from_files(cfg.report, cfg.pairs)
    write_texts_atomic({cfg.output: render_report(report, records)})
    from .console import info

    info(f"{cfg.output} ({report.get('n')} pairs, from {cfg.report} and {cfg.pairs})", cfg.quiet, done="wrote")


def dumps_figure_data(report: dict, records: list[dict]) -> str:
    return json.dumps(figure_data(report, records), sort_keys=True)
