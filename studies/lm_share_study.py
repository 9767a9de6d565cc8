"""A fixed share of an LM objective in the score (#33): does what the gate will not learn pay out of distribution?

The gate learns from the training pairs, where `lm-pmi` and `lm-mean-logprob` order pairs no better than chance, so it
gives them no weight; on dev-eval (LLMBar-style pairs) `lm-pmi` alone does better than the shipped model. This study
scores every pair with the gate's shares moved towards one LM objective,
    w_b(x) = (1 - b) * g(x) / sum(g(x)) + b * e_objective,    b = 0 (the candidate's own gate) .. 1 (the objective alone),
on the candidate's decorrelated rewards, and prints per set (and on the training pairs, in-sample): accuracy [95% CI], the paired difference from today's
model, Spearman(score, length) and the longer response's win share beside the labels'. The rule is #33's: (objective,
b) with the highest accuracy on the RMB selection slice (within 0.005, the smaller b); it would be adopted only if its
paired interval against today's model there lies above 0 and no evaluation set is worse beyond noise.

A fixed share fits the ArmoRM format: with the gate's weights summing to s, the transform T' = (1 - b) T + b T[:, j] 1^T
gives g . (r T') = (1 - b) g . (r T) + b s (r T)_j, so no new code would be needed to ship it.

    python studies/lm_share_study.py --work runs/default --model runs/default/models/lm \\
        --today runs/default/models/linear-T100 --json studies/results/lm_share_study.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from length_tradeoff_study import EVAL, N_BOOT, paired  # noqa: E402

from armo_cli.features import Features  # noqa: E402
from armo_cli.model import ArmoModel  # noqa: E402
from armo_cli.evaluate import evaluate_scores, pair_outcomes  # noqa: E402

SHARES = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
SELECTION = "RMB selection"
TRAIN = "training pairs"  # in-sample for the gate and the heads: shown, never used by the rule
LENGTH_SLACK = 0.02


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/default")
    ap.add_argument("--model", required=True, help="a model that reads the LM objectives (the recipe's lm candidate)")
    ap.add_argument("--today", required=True, help="today's model (the paired baseline)")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.work)
    model, today = ArmoModel.load(args.model), ArmoModel.load(args.today)
    lm = [o for o in model.objectives if o.startswith("lm-")]
    if not lm:
        sys.exit(f"{args.model}: reads no LM objective")
    sets, gate_share = {}, {}
    for name, stem in {**EVAL, TRAIN: "pairs"}.items():
        f = Features.load(work / f"{stem}.features.safetensors")
        with torch.no_grad():
            e = model.explain(f.tensors["prompt_features"], f.inputs(model.regression.lm_objectives))
            t = today.explain(f.tensors["prompt_features"], f.inputs(today.regression.lm_objectives))["score"]
            adjusted = model.regression.rewards(f.inputs(model.regression.lm_objectives)) @ model.decorrelation.transform
        g = e["gating"]
        gate_share[name] = {o: float((g / g.sum(-1, keepdim=True))[:, model.objectives.index(o)].mean()) for o in lm}
        sets[name] = (g / g.sum(-1, keepdim=True), adjusted, f.tensors["response_lengths"], pair_outcomes(t[:, 0] - t[:, 1], "loss"))
    arms = []
    for obj in lm:
        j = model.objectives.index(obj)
        for b in SHARES:
            out = {}
            for name, (shares, adjusted, L, base) in sets.items():
                w = (1 - b) * shares
                w[:, j] += b
                s = (w[:, None, :] * adjusted).sum(-1)
                rep = evaluate_scores(s, ["all"] * s.shape[0], L, "loss", N_BOOT, 0)
                lb = rep["length_bias"]
                out[name] = {"accuracy": rep["accuracy_all"], "ci95": rep["subsets"]["all"]["ci95"],
                             "minus_today": paired(pair_outcomes(s[:, 0] - s[:, 1], "loss"), base),
                             "spearman": lb["spearman_score_length"], "longer_wins": lb["longer_wins_model"],
                             "labels_longer_wins": lb["longer_wins_labels"],
                             "length_ok": lb["longer_wins_model"] <= lb["longer_wins_labels"] + LENGTH_SLACK}
            arms.append({"objective": obj, "b": b, "sets": out})
    top = max(a["sets"][SELECTION]["accuracy"] for a in arms)
    rule = min((a for a in arms if a["sets"][SELECTION]["accuracy"] >= top - 0.005), key=lambda a: a["b"])
    sel = rule["sets"][SELECTION]["minus_today"]["ci95"]
    worse = [n for n, m in rule["sets"].items() if n not in (SELECTION, TRAIN) and m["minus_today"]["ci95"][1] < 0]
    adopt = rule["b"] > 0 and sel[0] > 0 and not worse
    print("| objective | b | " + " | ".join(f"{n}: acc [95% CI]; - today [95% CI]; Spearman; longer wins / labels"
                                           for n in sets) + " |")
    for a in arms:
        cells = [f"{m['accuracy']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]; {m['minus_today']['mean']:+.3f} "
                 f"[{m['minus_today']['ci95'][0]:+.3f}, {m['minus_today']['ci95'][1]:+.3f}]; {m['spearman']:+.3f}; "
                 f"{m['longer_wins']:.3f} / {m['labels_longer_wins']:.3f}{'' if m['length_ok'] else ' (over)'}"
                 for m in a["sets"].values()]
        print(f"| {a['objective']} | {a['b']:.2f}{' (rule)' if a is rule else ''} | " + " | ".join(cells) + " |")
    print("the gate's mean share of the LM objectives (b = 0): " + "; ".join(
        f"{n}: " + ", ".join(f"{o} {v:.3f}" for o, v in sh.items()) for n, sh in gate_share.items()))
    picked = "b = 0 (the gate's own weights)" if rule["b"] == 0 else f"{rule['objective']} at b = {rule['b']:.2f}"
    print(f"rule (highest RMB selection accuracy, within 0.005 the smaller b): {picked}; "
          f"selection interval against today's model [{sel[0]:+.3f}, {sel[1]:+.3f}]"
          + (f"; worse beyond noise on {', '.join(worse)}" if worse else "") + f"; {'adopt' if adopt else 'not adopted'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rule": {"objective": rule["objective"], "b": rule["b"]}, "adopt": adopt,
                                               "worse": worse, "gate_share": gate_share, "arms": arms}, indent=2) + "\n")


if __name__ == "__main__":
    main()
