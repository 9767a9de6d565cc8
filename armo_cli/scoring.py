"""`score` and `evaluate`: a trained model applied to features, explained, and measured."""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from rich.table import Table

from .backbones import load_backbone
from .console import show, table
from .features import ExtractConfig, Features, extract, require_same_backbone
from .io import ArmoError, atomic_path, dumps, write_text_atomic
from .model import ArmoModel
from .regression import unscale
from .rewardbench import section_scores
from .stats import bootstrap_ci, spearman


def parse_weights(spec: str, objectives: list[str]) -> torch.Tensor:
    """'helpfulness=0.7,safety=0.3' -> a weight vector over the model's objectives."""
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
            w[objectives.index(name)] = float(val)
        except ValueError:
            raise ArmoError(f"--weights: {name}: not a number ({val!r})") from None
    return w


@dataclass
class ModelInputConfig:
    """What `score` and `evaluate` share: a model, rows or features, and how to run the backbone."""

    input: str | None = None
    model: str | None = None  # None: the shipped default model
    features: str | None = None
    weights: str | None = None
    objective: str | None = None
    backbone: str | None = None  # override the manifest's backbone location
    device: str | None = None
    dtype: str | None = None
    max_length: int | None = None
    overflow: str = "error"
    on_error: str = "error"
    batch_tokens: int | None = None
    quiet: bool = False


@dataclass
class ScoreConfig(ModelInputConfig):
    output: str = "-"
    format: str = "jsonl"  # jsonl | table
    top_k: int = 3


def features_for(model: ArmoModel, cfg: ModelInputConfig) -> Features:
    """Either load extracted features (checked against the model) or extract them now."""
    features, input, backbone = cfg.features, cfg.input, cfg.backbone
    if features:
        f = Features.load(features)
        require_same_backbone(model.backbone, f.backbone, str(model.path), features)
        return f
    if input is None:
        raise ArmoError("give INPUT (JSONL or -) or --features FILE")
    bb = load_backbone(backbone or model.backbone["name"], cfg.device, cfg.dtype)
    require_same_backbone(model.backbone, bb.info(), str(model.path), f"--backbone {backbone or model.backbone['name']}")
    with tempfile.TemporaryDirectory(prefix="armo-score-") as tmp:
        out = Path(tmp) / "features.safetensors"
        extract(ExtractConfig(input=input, output=str(out), gate_rule=model.manifest.get("gate_rule", "generation-prompt"),
                              max_length=cfg.max_length, overflow=cfg.overflow, on_error=cfg.on_error,
                              batch_tokens=cfg.batch_tokens, quiet=cfg.quiet, announce=False), backbone=bb)
        return Features.load(out)


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


def score(cfg: ScoreConfig) -> int:
    """Run `armo score`; returns the number of rows written."""
    if cfg.format not in ("jsonl", "table"):
        raise ArmoError("--format: choose 'jsonl' or 'table'")
    model = ArmoModel.load(cfg.model)
    w = _weights(cfg.weights, cfg.objective, model.objectives)
    feats = features_for(model, cfg)
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
@dataclass
class EvaluateConfig(ModelInputConfig):
    ties: str = "loss"  # loss | half
    output: str | None = None
    pairs_output: str | None = None
    bootstrap: int = 1000
    seed: int = 0


def pair_outcomes(margin: torch.Tensor, ties: str) -> torch.Tensor:
    """1 for a win (chosen > rejected), 0 for a loss, a tie as 0 ('loss') or 0.5 ('half')."""
    if ties not in ("loss", "half"):
        raise ArmoError("--ties: choose 'loss' or 'half'")
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
    pair_outcomes(torch.zeros(1), cfg.ties)  # validate --ties before any compute
    model = ArmoModel.load(cfg.model)
    w = _weights(cfg.weights, cfg.objective, model.objectives)
    feats = features_for(model, cfg)
    if not feats.pair:
        raise ArmoError(f"{cfg.features or cfg.input}: evaluate needs pairs (rows with 'chosen' and 'rejected')")
    ex = model.explain(feats.tensors["prompt_features"], feats.tensors["response_features"], w)
    subsets = feats.meta.get("subsets") or ["all"] * len(feats.ids)
    subsets = [s if s is not None else "all" for s in subsets]
    report = evaluate_scores(ex["score"], subsets, feats.tensors["response_lengths"], cfg.ties, cfg.bootstrap, cfg.seed)
    report = {"model": str(model.path), **report}
    if cfg.pairs_output:
        lines = []
        for i, rid in enumerate(feats.ids):
            s = ex["score"][i]
            lines.append(dumps({"id": rid, "subset": subsets[i], "chosen": float(s[0]), "rejected": float(s[1]),
                                "margin": float(s[0] - s[1]),
                                "chosen_length": int(feats.tensors["response_lengths"][i, 0]),
                                "rejected_length": int(feats.tensors["response_lengths"][i, 1])}) + "\n")
        write_text_atomic(cfg.pairs_output, "".join(lines))
    if cfg.output:
        write_text_atomic(cfg.output, dumps(report, indent=2) + "\n")
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
