"""Choose the default model's gate among candidates, on pairs from sources the model never trained on.

Each candidate is an assembled model directory (same regression and decorrelation, different gate settings).
All are scored on the selection features (RMB pairs from layer_probe.py's selection half); the one with the
highest accuracy there is chosen, ties (within 0.005) going to the earlier, listed candidate. Uniform weights
over the gate's allowed objectives are printed beside them. Prints a table on stderr and the chosen name on
stdout (for recipes/fit_default.sh). The selection slice is never reported as a result.

    python recipes/gate_selection.py --select rmb-select.features.safetensors name=model_dir ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from armo_cli.features import Features
from armo_cli.gating import uniform_weights
from armo_cli.model import ArmoModel
from armo_cli.evaluate import evaluate_scores


def accuracy_report(scores: torch.Tensor, lengths: torch.Tensor) -> dict:
    rep = evaluate_scores(scores, ["all"] * scores.shape[0], lengths, "loss", 1000, 0)
    return {"accuracy": rep["accuracy_all"], "ci95": rep["subsets"]["all"]["ci95"], "n": rep["n"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--select", required=True, help="pair features of the selection slice")
    ap.add_argument("--json", default=None)
    ap.add_argument("candidates", nargs="+", help="NAME=MODEL_DIR")
    args = ap.parse_args()
    feats = Features.load(args.select)
    P, R, L = (feats.tensors[k] for k in ("prompt_features", "response_features", "response_lengths"))
    rows, uniform = [], None
    for c in args.candidates:
        name, _, path = c.partition("=")
        model = ArmoModel.load(path)
        with torch.no_grad():
            rep = accuracy_report(model.explain(P, R)["score"], L)
            if uniform is None:
                uniform = accuracy_report(model.explain(P, R, uniform_weights(model.decorrelation.transform))["score"], L)
        gate_json = Path(path).parent.parent / "heads" / f"gating-{name}.json"
        val = None
        if gate_json.exists():  # the gate's own validation accuracy (training sources)
            val = next(m["accuracy"] for m in json.loads(gate_json.read_text())["metrics"] if m["name"] == "moe gate")
        rows.append({"name": name, "model": path, "selection": rep, "in_distribution_val_accuracy": val})
    best = rows[0]
    for r in rows[1:]:
        if r["selection"]["accuracy"] > best["selection"]["accuracy"] + 0.005:
            best = r
    print(f"gate selection on {args.select} ({feats.meta.input or ''}, {P.shape[0]} pairs):", file=sys.stderr)
    print(f"  {'candidate':18s} {'selection acc':>13s} {'95% CI':>16s} {'in-dist val acc':>16s}", file=sys.stderr)
    for r in rows + [{"name": "(uniform weights)", "selection": uniform, "in_distribution_val_accuracy": None}]:
        s = r["selection"]
        v = r["in_distribution_val_accuracy"]
        mark = "  <- chosen" if r is best else ""
        print(f"  {r['name']:18s} {s['accuracy']:13.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] "
              f"{'' if v is None else f'{v:16.3f}'}{mark}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"selection_features": args.select, "n": int(P.shape[0]), "candidates": rows,
                                               "uniform_weights": uniform, "chosen": best["name"],
                                               "rule": "highest selection accuracy; within 0.005 the earlier candidate"},
                                              indent=2) + "\n")
    print(best["name"])


if __name__ == "__main__":
    main()
