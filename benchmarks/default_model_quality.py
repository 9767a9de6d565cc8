"""Measure the default model's quality and write its model card (run by examples/train_default.sh).

On dev-eval and on held-out pairs it compares: the full model; uniform weights over the adjusted
objectives; the best single objective (chosen on the training pairs); the model without
decorrelation (its own gate, identity transform); and a linear Bradley-Terry head trained on the
same training pairs. It also reports the length diagnostics with and without decorrelation.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from armo_cli.features import Features
from armo_cli.gating import Gating, GatingConfig, best_single_objective, grouped_split, train_linear_bt
from armo_cli.model import ArmoModel
from armo_cli.scoring import evaluate_scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/default")
    ap.add_argument("--model", default="armo_cli/default_model")
    ap.add_argument("--produced-by", default="", help="the recipe command and sizes, for the card")
    args = ap.parse_args()
    work = Path(args.work)
    model = ArmoModel.load(args.model)
    nodecor = Gating.load(work / "gating-nodecor.safetensors")
    train = Features.load(work / "pairs.features.safetensors")
    k = len(model.objectives)
    T = model.decorrelation.transform
    I = torch.eye(k)

    # choices made on training pairs only
    radj_tr = model.regression.rewards(train.tensors["response_features"]) @ T
    best_j = best_single_objective(radj_tr)
    groups = train.meta.prompt_hashes or train.ids
    tr = grouped_split(groups, 0.1, 0)
    cfg = GatingConfig()
    w_lin = train_linear_bt(train.tensors["response_features"], tr, ~tr, cfg)

    sets = {"dev-eval": work / "dev-eval.features.safetensors", "held-out pairs": work / "heldout.features.safetensors"}
    results = {}
    for name, path in sets.items():
        f = Features.load(path)
        P, R, L = f.tensors["prompt_features"], f.tensors["response_features"], f.tensors["response_lengths"]
        r = model.regression.rewards(R)
        scorers = {
            "full model (gate + decorrelation)": model.explain(P, R)["score"],
            "uniform weights": (r @ T).mean(-1),
            f"best single objective ({model.objectives[best_j]})": (r @ T)[:, :, best_j],
            "without decorrelation (own gate, T = I)": (nodecor.gate(P)[:, None, :] * (r @ I)).sum(-1),
            "linear Bradley-Terry head (non-MoE)": R @ w_lin,
        }
        results[name] = {}
        for sname, s in scorers.items():
            rep = evaluate_scores(s.detach(), ["all"] * s.shape[0], L, "loss", 1000, 0)
            results[name][sname] = {"accuracy": rep["accuracy_all"], "n": rep["n"], "ci95": rep["subsets"]["all"]["ci95"],
                                    "length_bias": rep["length_bias"]}
    out = {"results": results, "best_single_objective": model.objectives[best_j]}
    (Path(args.model) / "quality.json").write_text(json.dumps(out, indent=2) + "\n")
    write_card(Path(args.model), model, work, results, args.produced_by)
    for name, rs in results.items():
        print(f"\n{name}")
        for sname, v in rs.items():
            lb = v["length_bias"]
            print(f"  {sname:48s} acc {v['accuracy']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] n={v['n']}  "
                  f"spearman(score,len) {lb['spearman_score_length']:+.3f}  longer wins {lb['longer_wins_model']:.3f} "
                  f"(labels {lb['longer_wins_labels']:.3f})")


def write_card(model_dir: Path, model: ArmoModel, work: Path, results: dict, produced_by: str = "") -> None:
    reg = model.regression.meta.to_json()
    dec = model.decorrelation.meta.to_json()
    gat = model.gating.meta.to_json()
    feats = {n: Features.load(work / f"{n}.features.safetensors").meta.to_json() for n in ("ratings", "pairs", "heldout", "dev-eval")}

    def src_counts(jsonl: Path) -> dict:
        c: dict = {}
        for line in jsonl.read_text().splitlines():
            s = json.loads(line).get("source", "?").split("/")[0]
            c[s] = c.get(s, 0) + 1
        return c

    lines = ["# armo default model: SmolLM2-135M-Instruct + ArmoRM-MoE heads", "",
             "Trained by `examples/train_default.sh`; every number below was written by "
             "`benchmarks/default_model_quality.py` from that run.", "",
             "## How it was produced", "",
             f"`{produced_by or 'bash examples/train_default.sh'}` on a 2-core CPU (no GPU machine was available), "
             "using only armo's own commands: sample, extract, fit-regression (with a length-derived `verbosity` "
             "objective), fit-decorrelation on the training pairs, fit-gating on the same pairs, assemble.", "",
             "## Backbone", "", f"- `{reg['backbone']['name']}` (fingerprint `{reg['backbone']['fingerprint'][:24]}`), "
             f"d = {reg['hidden_size']}, gate rule `{model.gate_rule}`", "",
             "## Training data (permissively licensed sources of ../shared/data only)", ""]
    for name, fn in (("stage 1 ratings", "ratings.jsonl"), ("gate + decorrelation pairs", "pairs.jsonl"),
                     ("held-out pairs (evaluation only)", "heldout.jsonl")):
        p = work / fn
        if p.exists():
            lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(src_counts(p).items())))
    lines += [f"- rows used after length limits: ratings {len(feats['ratings']['ids'])} "
              f"({len(feats['ratings']['report']['skipped'])} skipped, {len(feats['ratings']['report']['truncated'])} prompt-truncated), "
              f"pairs {len(feats['pairs']['ids'])} ({len(feats['pairs']['report']['skipped'])} skipped), "
              f"max length {feats['pairs']['max_length']} tokens", "",
              "Licences: UltraFeedback, HH-RLHF, USR Topical-Chat (MIT); Prometheus, PandaLM (Apache-2.0); XSTest (CC-BY-4.0).", "",
              "## Objectives and scales", "", "| objective | scale mapped to [0,1] | ridge alpha | val Pearson | n train |",
              "|---|---|---|---|---|"]
    for o in model.objectives:
        s = reg["scales"][o]
        m = reg["metrics"][o]
        scale = f"log1p(tokens) {s['lo']:.2f}..{s['hi']:.2f}" if s["transform"] == "log1p" else f"{s['lo']:g}..{s['hi']:g}"
        pear = "n/a" if m["pearson"] is None else f"{m['pearson']:.3f}"
        lines.append(f"| {o} | {scale} | {m['alpha']:g} | {pear} | {m['n_train']} |")
    lines += ["", "## Decorrelation", "", f"Method {dec.get('method')}, verbosity objective `{dec.get('verbosity')}`, "
              f"{dec.get('reference_rows')} reference responses.", "", "| objective | lambda | corr before | corr after |", "|---|---|---|---|"]
    for o, r in dec.get("objectives_report", {}).items():
        lines.append(f"| {o} | {r['lambda']:.4f} | {r['before']:+.4f} | {r['after']:+.4f} |")
    c, t = gat["config"], gat["training"]
    lines += ["", "## Gate", "", f"MLP {c['n_hidden']} x {c['hidden_dim']}, dropout {c['dropout']}, temperature {c['temperature']}; "
              f"AdamW lr {t['lr']}, batch {t['batch_size']}, {t['steps']} steps max (ran {t['steps_run']}, best at {t['best_step']}), "
              f"seed {t['seed']}; {gat['pairs']['train']} train / {gat['pairs']['val']} validation pairs.", "",
              "## Measured quality", "", "Accuracy = chosen scored strictly higher (ties count as losses); 95% bootstrap intervals.", ""]
    for name, rs in results.items():
        lines += [f"### {name}", "", "| scorer | accuracy | 95% CI | Spearman(score, length) | longer wins (model / labels) |",
                  "|---|---|---|---|---|"]
        for sname, v in rs.items():
            lb = v["length_bias"]
            lines.append(f"| {sname} | {v['accuracy']:.3f} | [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] | "
                         f"{lb['spearman_score_length']:+.3f} | {lb['longer_wins_model']:.3f} / {lb['longer_wins_labels']:.3f} |")
        lines.append("")
    lines += ["A 135M backbone is weak: these numbers are an honest, reproducible baseline, not a strong reward model.", ""]
    (model_dir / "MODEL_CARD.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
