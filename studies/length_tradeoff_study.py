"""What does meeting #13's length targets cost in accuracy? The gate's weights mixed with uniform weights.

The shipped gate sends its weight to `preference`, whose Spearman(score, length) is near 0 on the held-out pairs
and strongly positive on dev-eval and RMB; uniform weights over the gate's objectives lean the other way out of
distribution (negative) and score near chance in distribution. This study scores every pair with the weights
    g_a(x) = a * g(x) / sum(g(x)) + (1 - a) * uniform,    a = 1 (the shipped model) .. 0 (uniform weights),
on the same decorrelated rewards, and prints per set: accuracy [95% CI], the paired difference from the shipped
model and from the linear Bradley-Terry control (as in default_model_quality.py), Spearman(score, length) and the
longer response's win share beside the labels'. The rule that would choose a uses the RMB selection slice only:
the largest a that meets both length targets there (|Spearman| <= 0.10, longer wins <= labels).

    python studies/length_tradeoff_study.py --work runs/default --model armo_cli/default_model --json out.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from armo_cli.configs import GatingConfig
from armo_cli.features import Features
from armo_cli.gating import grouped_split, train_linear_bt, uniform_weights
from armo_cli.model import ArmoModel
from armo_cli.evaluate import evaluate_scores, pair_outcomes
from armo_cli.stats import bootstrap_ci

EVAL = {"held-out": "heldout", "dev-eval": "dev-eval", "RMB evaluation": "rmb-eval", "RMB selection": "rmb-select"}
ALPHAS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
N_BOOT = 1000


def paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = a - b
    return {"mean": float(d.mean()), "ci95": bootstrap_ci(d, N_BOOT, 0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/default")
    ap.add_argument("--model", default="armo_cli/default_model")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.work)
    model = ArmoModel.load(args.model)
    train = Features.load(work / "pairs.features.safetensors")
    tr = grouped_split(train.meta.prompt_hashes or train.ids, 0.1, 0)
    w_lin = train_linear_bt(train.tensors["response_features"].float(), tr, ~tr, GatingConfig(steps=2000))  # the card's control
    uniform = uniform_weights(model.decorrelation.transform)
    sets = {}
    for name, stem in EVAL.items():
        f = Features.load(work / f"{stem}.features.safetensors")
        P, R, L = f.tensors["prompt_features"].float(), f.tensors["response_features"].float(), f.tensors["response_lengths"]
        with torch.no_grad():
            g = model.gating.gate(P)
            adjusted = model.regression.rewards(R) @ model.decorrelation.transform  # [N,2,k]
            control = R @ w_lin
        sets[name] = (g / g.sum(-1, keepdim=True), adjusted, L, pair_outcomes(control[:, 0] - control[:, 1], "loss"))
    rows, shipped = [], {}
    for a in ALPHAS:
        out = {}
        for name, (shares, adjusted, L, control) in sets.items():
            w = a * shares + (1 - a) * uniform
            s = (w[:, None, :] * adjusted).sum(-1)
            o = pair_outcomes(s[:, 0] - s[:, 1], "loss")
            rep = evaluate_scores(s, ["all"] * s.shape[0], L, "loss", N_BOOT, 0)
            lb = rep["length_bias"]
            if a == 1.0:
                shipped[name] = o
            out[name] = {"accuracy": rep["accuracy_all"], "ci95": rep["subsets"]["all"]["ci95"],
                         "minus_shipped": paired(o, shipped[name]), "minus_control": paired(o, control),
                         "spearman": lb["spearman_score_length"], "longer_wins": lb["longer_wins_model"],
                         "labels_longer_wins": lb["longer_wins_labels"]}
            out[name]["meets_length_targets"] = abs(lb["spearman_score_length"]) <= 0.10 and \
                lb["longer_wins_model"] <= lb["longer_wins_labels"]
        rows.append({"a": a, "sets": out})
    eligible = [r for r in rows if r["sets"]["RMB selection"]["meets_length_targets"]]
    rule = max(eligible, key=lambda r: r["a"]) if eligible else None
    print("| a | " + " | ".join(f"{n}: acc [95% CI]; - control [95% CI]; Spearman; longer wins / labels" for n in EVAL) + " |")
    for r in rows:
        cells = []
        for m in r["sets"].values():
            c = m["minus_control"]
            cells.append(f"{m['accuracy']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]; {c['mean']:+.3f} "
                         f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]; {m['spearman']:+.3f}; "
                         f"{m['longer_wins']:.3f} / {m['labels_longer_wins']:.3f}{' *' if m['meets_length_targets'] else ''}")
        print(f"| {r['a']:.1f}{' (rule)' if r is rule else ''} | " + " | ".join(cells) + " |")
    print("(* both length targets met on that set)")
    both = [r["a"] for r in rows if all(m["meets_length_targets"] for m in r["sets"].values())]
    print(f"a meeting both length targets on all {len(EVAL)} sets: {', '.join(f'{a:.1f}' for a in both) or 'none'}")
    if rule:
        ho = rule["sets"]["held-out"]
        print(f"rule (largest a meeting the length targets on the RMB selection slice): a = {rule['a']:.1f}; held-out "
              f"{ho['accuracy']:.3f}, {ho['minus_shipped']['mean']:+.3f} from the shipped model, "
              f"{ho['minus_control']['mean']:+.3f} [{ho['minus_control']['ci95'][0]:+.3f}, "
              f"{ho['minus_control']['ci95'][1]:+.3f}] from the control")
    else:
        print("rule: no a meets the length targets on the RMB selection slice")
    if args.json:
        Path(args.json).write_text(json.dumps({"rule": rule["a"] if rule else None, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
