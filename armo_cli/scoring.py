"""`score` and `evaluate`: a trained model applied to features, explained, and measured."""
from __future__ import annotations

import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from rich.table import Table

from .backbones import DTYPES, Backbone, load_backbone
from .console import show, table
from .extract import ExtractConfig, extract
from .features import Features
from .rendering import OVERFLOW
from .errors import ArmoError
from .io import atomic_path, check_input_file, check_output_file, dumps, write_text_atomic, write_texts_atomic
from .model import ArmoModel
from .options import check_value, opt, validate
from .provenance import FeatureMeaning, require_compatible
from .regression import unscale
from .rewardbench import section_scores
from .rows import ON_ERROR
from .stats import bootstrap_ci, spearman


def parse_weights(spec: str, objectives: list[str]) -> torch.Tensor:
    """'helpfulness=0.7,safety=0.3' -> a weight vector over the model's objectives.

    Weights must be finite; a negative weight penalises its objective (steering away from it);
    objectives not named get 0; all-zero weights are refused (every score would be 0, every pair a tie)."""
    w = torch.zeros(len(objectives))
    for part in spec.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ArmoError(f"--weights: expected NAME=W, got {part!r}")
        name, val = part.split("=", 1)
        name = name.strip()
        if name not in objectives:
            raise ArmoError(f"--weights: unknown objective {name!r} (the model has: {', '.join(objectives)})")
        try:
            x = float(val)
        except ValueError:
            raise ArmoError(f"--weights: {name}: not a number ({val!r})") from None
        if not math.isfinite(x):
            raise ArmoError(f"--weights: {name}: must be a finite number ({val.strip()!r})")
        w[objectives.index(name)] = x
    if not bool(w.any()):
        raise ArmoError("--weights: every weight is zero; name at least one objective with a non-zero weight")
    return w


@dataclass
class ModelInputConfig:
    """What `score` and `evaluate` share: a model, rows or features, and how to run the backbone."""

    input: str | None = opt(None, "JSONL rows (any extract shape) or '-'.")
    model: str | None = opt(None, "Model directory (default: the shipped model).")
    features: str | None = opt(None, "Score extracted features instead of INPUT.")
    weights: str | None = opt(None, "NAME=W,... fixed weights instead of the gate (finite; negative penalises).")
    objective: str | None = opt(None, "Use one (decorrelated) objective as the score.")
    backbone: str | None = opt(None, "Override where the model's backbone is loaded from.")
    device: str | None = opt(None, "cuda, mps, cpu (default: best available).")
    dtype: str | None = opt(None, "bf16, fp16, fp32 (default: bf16 on CUDA, else fp32).", choices=(*DTYPES, "auto"))
    max_length: int | None = opt(None, "Longest prompt+response in tokens (default: the backbone's maximum positions).", min=1)
    overflow: str = opt("error", "Over the length limit: error | skip | truncate-prompt.", choices=OVERFLOW)
    on_error: str = opt("error", "Bad rows: error | skip (listed on stderr).", choices=ON_ERROR)
    batch_tokens: int | None = opt(None, "Token budget per batch.", min=1)
    quiet: bool = opt(False, "No progress bar or tables.")


@dataclass
class ScoreConfig(ModelInputConfig):
    output: str = opt("-", "Where to write the scores ('-': stdout).")
    format: str = opt("jsonl", "jsonl | table (default: table on a terminal).", choices=("jsonl", "table"))
    top_k: int = opt(3, "Objectives listed in top_objectives.", min=1)


def check_inputs(cfg: ModelInputConfig, outputs: dict[str, str | None]) -> None:
    """Before any work: options in range, exactly one of INPUT and --features, outputs writable."""
    validate(cfg)
    if cfg.features and cfg.input is not None:
        raise ArmoError("give INPUT or --features, not both")
    if cfg.features is None and cfg.input is None:
        raise ArmoError("give INPUT (JSONL or -) or --features FILE")
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


def features_for(model: ArmoModel, cfg: ModelInputConfig, bb: Backbone | None = None) -> Features:
    """Either load extracted features (checked against the model) or extract them now."""
    features, input, backbone = cfg.features, cfg.input, cfg.backbone
    if features:
        f = Features.load(features)
        require_compatible(model.meaning, f.meaning(), str(model.path), features, prompt=True)
        return f
    bb = bb or load_backbone(backbone or model.backbone["name"], cfg.device, cfg.dtype)
    require_compatible(model.meaning, FeatureMeaning(bb.spec.name, bb.fingerprint, bb.hidden_size), str(model.path),
                       f"--backbone {backbone or model.backbone['name']}", warn_dtype=False)
    with tempfile.TemporaryDirectory(prefix="armo-score-") as tmp:
        out = Path(tmp) / "features.safetensors"
        extract(ExtractConfig(input=input, output=str(out), gate_rule=model.gate_rule,
                              max_length=cfg.max_length, overflow=cfg.overflow, on_error=cfg.on_error,
                              batch_tokens=cfg.batch_tokens, quiet=cfg.quiet, announce=False), backbone=bb)
        f = Features.load(out)
    require_compatible(model.meaning, f.meaning(), str(model.path), f"{input} (as extracted now)", prompt=True, warn_dtype=False)
    return f


def _weights(cfg_weights: str | None, objective: str | None, objectives: list[str]) -> torch.Tensor | None:
    if cfg_weights and objective:
        raise ArmoError("give --weights or --objective, not both")
    if objective:
        if objective not in objectives:
            raise ArmoError(f"--objective: unknown objective {objective!r} (the model has: {', '.join(objectives)})")
        w = torch.zeros(len(objectives))
        w[objectives.index(objective)] = 1.0
        return w
    return parse_weights(cfg_weights, objectives) if cfg_weights else None


def score_records(model: ArmoModel, feats: Features, weights: torch.Tensor | None = None, top_k: int = 3) -> Iterator[dict]:
    """One JSON-ready record per row, in input order."""
    objs = model.objectives
    scales = model.regression.meta["scales"]
    P = feats.tensors["prompt_features"]
    R = feats.tensors["response_features"]
    if not feats.pair:
        R = R[:, None]
    ex = model.explain(P, R, weights)
    check_finite_scores(ex["score"], feats.ids)
    orig = torch.stack([unscale(ex["rewards"][..., j], scales[o]) for j, o in enumerate(objs)], dim=-1)
    for i, rid in enumerate(feats.ids):
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
        if feats.meta.get("subsets"):
            rec["subset"] = feats.meta["subsets"][i]
        if feats.pair:
            c, r = side(0), side(1)
            margin = c["score"] - r["score"]
            rec.update(chosen=c, rejected=r, margin=margin,
                       preferred="chosen" if margin > 0 else "rejected" if margin < 0 else "tie")
        else:
            rec.update(side(0))
        rec["gating"] = {o: float(ex["gating"][i, j]) for j, o in enumerate(objs)}
        rec["coefficients"] = {o: float(coef[j]) for j, o in enumerate(objs)}
        yield rec


def _bar(v: float, vmax: float, width: int = 10) -> str:
    n = int(round(abs(v) / vmax * width)) if vmax > 0 else 0
    return ("[green]" if v >= 0 else "[red]") + "█" * n + "[/]"


def render_table(rec: dict) -> Table:
    sides = ["chosen", "rejected"] if "chosen" in rec else [None]
    title = f"{rec['id']}: " + (f"chosen {rec['chosen']['score']:.4f} vs rejected {rec['rejected']['score']:.4f} "
                                f"(margin {rec['margin']:+.4f}, preferred: {rec['preferred']})"
                                if sides[0] else f"score {rec['score']:.4f}")
    t = Table(title=title, title_justify="left")
    t.add_column("objective", overflow="fold", min_width=14)
    t.add_column("gate", justify="right")
    t.add_column("coefficient", justify="right")
    t.add_column("", justify="left", no_wrap=True, min_width=10)
    for s in sides:
        t.add_column(f"reward{' ' + s if s else ''}", justify="right")
    vmax = max(abs(v) for v in rec["coefficients"].values()) or 1.0
    for o, c in sorted(rec["coefficients"].items(), key=lambda kv: -abs(kv[1])):
        rw = [(rec[s] if s else rec)["rewards"][o] for s in sides]
        t.add_row(o, f"{rec['gating'][o]:.3f}", f"{c:+.4f}", _bar(c, vmax), *[f"{x:.3f}" for x in rw])
    return t


def score(cfg: ScoreConfig, model: ArmoModel | None = None, backbone: Backbone | None = None) -> int:
    """Run `armo score`; returns the number of rows written. `model` and `backbone` may be given loaded."""
    check_inputs(cfg, {"--output": cfg.output})
    model = model or ArmoModel.load(cfg.model)
    w = _weights(cfg.weights, cfg.objective, model.objectives)
    feats = features_for(model, cfg, backbone)
    records = list(score_records(model, feats, w, cfg.top_k))
    if cfg.format == "table":
        from rich.console import Console

        out = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120) if cfg.output == "-" else None
        if out is None:
            with atomic_path(cfg.output) as tmp, open(tmp, "w") as fh:
                c = Console(file=fh, width=120)
                for rec in records:
                    c.print(render_table(rec))
        else:
            for rec in records:
                out.print(render_table(rec))
    else:
        write_text_atomic(cfg.output, "".join(dumps(r) + "\n" for r in records))
    return len(records)


# --- evaluate -----------------------------------------------------------------------------------
TIES = ("loss", "half")


@dataclass
class EvaluateConfig(ModelInputConfig):
    ties: str = opt("loss", "loss (RewardBench: chosen must score higher) or half.", choices=TIES)
    output: str | None = opt(None, "Write the report as JSON (report.json).")
    pairs_output: str | None = opt(None, "Per-pair scores as JSONL.")
    bootstrap: int = opt(1000, "Bootstrap resamples for the 95% intervals.", min=1)
    seed: int = opt(0, "Seed of the bootstrap.")


def pair_outcomes(margin: torch.Tensor, ties: str) -> torch.Tensor:
    """1 for a win (chosen > rejected), 0 for a loss, a tie as 0 ('loss') or 0.5 ('half')."""
    check_value("--ties", ties, {"choices": TIES})
    out = (margin > 0).double()
    if ties == "half":
        out[margin == 0] = 0.5
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
        "score_kind": "rewardbench" if rb_score is not None else "macro-average",
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


def evaluate(cfg: EvaluateConfig) -> dict:
    """Run `armo evaluate` and return its report."""
    check_inputs(cfg, {"--output": cfg.output, "--pairs-output": cfg.pairs_output})
    model = ArmoModel.load(cfg.model)
    w = _weights(cfg.weights, cfg.objective, model.objectives)
    feats = features_for(model, cfg)
    if not feats.pair:
        raise ArmoError(f"{cfg.features or cfg.input}: evaluate needs pairs (rows with 'chosen' and 'rejected')")
    ex = model.explain(feats.tensors["prompt_features"], feats.tensors["response_features"], w)
    check_finite_scores(ex["score"], feats.ids)
    subsets = feats.meta.get("subsets") or ["all"] * len(feats.ids)
    subsets = [s if s is not None else "all" for s in subsets]
    report = evaluate_scores(ex["score"], subsets, feats.tensors["response_lengths"], cfg.ties, cfg.bootstrap, cfg.seed)
    report = {"model": str(model.path), **report}
    texts: dict[str, str] = {}
    if cfg.pairs_output:
        lines = []
        for i, rid in enumerate(feats.ids):
            s = ex["score"][i]
            lines.append(dumps({"id": rid, "subset": subsets[i], "chosen": float(s[0]), "rejected": float(s[1]),
                                "margin": float(s[0] - s[1]),
                                "chosen_length": int(feats.tensors["response_lengths"][i, 0]),
                                "rejected_length": int(feats.tensors["response_lengths"][i, 1])}) + "\n")
        texts[cfg.pairs_output] = "".join(lines)
    if cfg.output:
        texts[cfg.output] = dumps(report, indent=2) + "\n"
    write_texts_atomic(texts)  # the report and the per-pair file succeed or fail together
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
    ]), cfg.quiet)
    return report
