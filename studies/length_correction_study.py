"""Can any correction by response length meet #13's length targets on every evaluation set?

The shipped gate gives all its weight to the `preference` objective, so the model's length bias is that
objective's. This study takes its raw reward u (out-of-fold on the training pairs) and subtracts the least-
squares fit of u on a length basis, fitted on a reference set: u' = u - basis(x) @ c. Bases: polynomials in
log(1 + true token count) of degree 1-3 (an oracle: a checkpoint cannot see the token count) and in the
`verbosity` objective's reward (what ArmoRM's transform matrix can use; degree 2 would need a second length
objective). Reference sets: the training pairs' responses, the training rating responses, both.
Per evaluation set it prints accuracy, Spearman(u', length) and the longer response's win share beside the
labels'. The targets: |Spearman| <= 0.10 and longer wins <= labels on every set.

    python studies/length_correction_study.py --work runs/default --model armo_cli/default_model --json out.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from armo_cli.features import Features
from armo_cli.model import ArmoModel
from armo_cli.evaluate import evaluate_scores

EVAL = ["heldout", "dev-eval", "rmb-eval", "rmb-select"]
BASES = {
    "log-length, degree 1 (oracle)": ("length", 1),
    "log-length, degree 2 (oracle)": ("length", 2),
    "log-length, degree 3 (oracle)": ("length", 3),
    "verbosity reward, degree 1": ("verbosity", 1),
    "verbosity reward, degree 2": ("verbosity", 2),
}
REFERENCES = {"training pairs": ["pairs"], "rating responses": ["ratings"], "both": ["pairs", "ratings"]}


def basis(kind: str, degree: int, verbosity: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    x = torch.log1p(lengths.double()) if kind == "length" else verbosity.double()
    return torch.stack([x ** p for p in range(1, degree + 1)], -1)


def measure(u: torch.Tensor, lengths: torch.Tensor) -> dict:
    """u, lengths [N,2] (chosen, rejected); the figures `armo evaluate` and the model card report."""
    rep = evaluate_scores(u, ["all"] * u.shape[0], lengths, "loss", n_boot=1)
    lb = rep["length_bias"]
    return {"accuracy": rep["accuracy_all"], "spearman": lb["spearman_score_length"],
            "longer_wins": lb["longer_wins_model"], "labels_longer_wins": lb["longer_wins_labels"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/default")
    ap.add_argument("--model", default="armo_cli/default_model")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.work)
    reg = ArmoModel.load(args.model).regression
    p, v = reg.objectives.index("preference"), reg.objectives.index("verbosity")
    data = {}
    for stem in ["pairs", "ratings", *EVAL]:
        f = Features.load(work / f"{stem}.features.safetensors")
        X = f.tensors["response_features"].float()
        flat = X.reshape(-1, X.shape[-1])
        # out-of-fold on the pairs the preference head was fitted on (cross-fitting); in-sample rewards would flatter
        r = reg.rewards_out_of_fold(flat, [k for k in (f.meta.prompt_hashes or f.ids) for _ in range(2)]) \
            if stem == "pairs" else reg.rewards(flat)
        shape = (-1, 2) if f.pair else (-1,)
        data[stem] = (r[:, p].double().reshape(shape), r[:, v].double().reshape(shape),
                      f.tensors["response_lengths"].reshape(shape))
    rows = [{"correction": "none", "reference": "", "sets": {s: measure(data[s][0], data[s][2]) for s in EVAL}}]
    for bname, (kind, deg) in BASES.items():
        for rname, stems in REFERENCES.items():
            B = torch.cat([basis(kind, deg, data[s][1], data[s][2]).reshape(-1, deg) for s in stems])
            u = torch.cat([data[s][0].reshape(-1) for s in stems])
            A = torch.cat([B, torch.ones(B.shape[0], 1, dtype=B.dtype)], 1)
            c = torch.linalg.lstsq(A, u[:, None]).solution[:deg, 0]
            sets = {s: measure(data[s][0] - basis(kind, deg, data[s][1], data[s][2]) @ c, data[s][2]) for s in EVAL}
            rows.append({"correction": bname, "reference": rname, "coef": c.tolist(), "sets": sets})
    for r in rows:
        r["meets_targets"] = all(abs(m["spearman"]) <= 0.10 and m["longer_wins"] <= m["labels_longer_wins"]
                                 for m in r["sets"].values())
    head = " | ".join(f"{s}: acc, Spearman, longer wins / labels" for s in EVAL)
    print(f"| correction | reference | {head} | targets met |")
    for r in rows:
        cells = " | ".join(f"{m['accuracy']:.3f}, {m['spearman']:+.3f}, {m['longer_wins']:.3f} / {m['labels_longer_wins']:.3f}"
                           for m in r["sets"].values())
        print(f"| {r['correction']} | {r['reference']} | {cells} | {'yes' if r['meets_targets'] else 'no'} |")
    print(f"corrections meeting both length targets on all {len(EVAL)} sets: {sum(r['meets_targets'] for r in rows[1:])} of {len(rows) - 1}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
