"""Can the preference head be made blind to length before it is fitted (#13)?

length_correction_study.py subtracts a function of length from the preference reward after the fit. This
study removes length from the features first, then fits the head (`armo_cli.preference.fit_preference`, same
C grid and prompt-grouped cross-validation) on the projected features x P, so that its utility u = x.(P w)
is still one linear row of the regression layer (score, export and import would need nothing new).
P = I - Q Q^T projects out the span Q of some directions, computed on training data only (the training
pairs' and rating rows' responses):
  - "pooled": Cov(x, log length) over all training responses (u then has zero covariance with log length
    there, exactly);
  - "per source": that covariance within each training source's responses, within the pairs of each pair
    source (chosen - rejected against the log-length difference), and pooled over the pairs and over all;
  - "INLP k": k rounds of iterative nullspace projection (Ravfogel et al., 2020): a ridge of log length on
    the (standardised) projected features, its direction projected out, repeated; the in-sample R^2 of
    the last round's ridge is printed (how much length the features still hold linearly);
  - "INLP k + per source": both. (Not the other way round: once the pooled covariance is projected out, every
    remaining direction has zero covariance with log length on the reference, so a least-squares fit there has
    no signal, in-sample R^2 0, and INLP would pick noise.)
Per evaluation set: accuracy [95% bootstrap CI], Spearman(u, length), and the longer response's win share
beside the labels'. The targets (#13): |Spearman| <= 0.10 and longer wins <= labels on every set. The rule
that would adopt an arm uses the RMB selection slice only: among the arms that meet both targets there, the
most accurate there. No decorrelation or gate on top: the shipped gate routes everything to `preference`.

    python studies/length_nullspace_study.py --work runs/default --json out.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from armo_cli.features import Features
from armo_cli.preference import fit_preference
from armo_cli.evaluate import evaluate_scores
from source_experts_study import sources  # studies/ is on the path when a script there runs

EVAL = {"held-out": "heldout", "dev-eval": "dev-eval", "RMB evaluation": "rmb-eval", "RMB selection": "rmb-select"}
INLP = [8, 16, 32, 64]


def cov(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (X - X.mean(0)).T @ (y - y.mean()) / y.numel()


def inlp(ref: torch.Tensor, y: torch.Tensor, Q: torch.Tensor, k: int, alpha: float = 1e-3) -> tuple[torch.Tensor, float]:
    """Q [d,m] orthonormal, extended by k INLP directions; the in-sample R^2 of the last ridge."""
    d = ref.shape[1]
    mu, sd = ref.mean(0), ref.std(0) + 1e-6
    yc = y - y.mean()
    r2 = float("nan")
    for _ in range(k):
        Z = ((ref - mu) @ (torch.eye(d, dtype=ref.dtype) - Q @ Q.T)) / sd
        b = torch.linalg.solve(Z.T @ Z + alpha * Z.shape[0] * torch.eye(d, dtype=ref.dtype), Z.T @ yc)
        r2 = float(1 - ((yc - Z @ b) ** 2).sum() / (yc ** 2).sum())
        w = b / sd  # raw coordinates
        w = w - Q @ (Q.T @ w)
        Q = torch.cat([Q, (w / w.norm())[:, None]], 1)
    return Q, r2


def measure(u: torch.Tensor, lengths: torch.Tensor) -> dict:
    rep = evaluate_scores(u, ["all"] * u.shape[0], lengths, "loss", n_boot=1000)
    lb = rep["length_bias"]
    return {"accuracy": rep["accuracy_all"], "ci95": rep["subsets"]["all"]["ci95"], "spearman": lb["spearman_score_length"],
            "longer_wins": lb["longer_wins_model"], "labels_longer_wins": lb["longer_wins_labels"]}


def meets(m: dict) -> bool:
    return abs(m["spearman"]) <= 0.10 and m["longer_wins"] <= m["labels_longer_wins"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/default")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.work)
    tr = Features.load(work / "pairs.features.safetensors")
    ra = Features.load(work / "ratings.features.safetensors")
    R, LR = tr.tensors["response_features"].double(), torch.log1p(tr.tensors["response_lengths"].double())
    A, LA = ra.tensors["response_features"].double(), torch.log1p(ra.tensors["response_lengths"].double())
    groups = list(tr.meta.prompt_hashes or tr.ids)
    d = R.shape[-1]
    ev = {}
    for name, stem in EVAL.items():
        f = Features.load(work / f"{stem}.features.safetensors")
        ev[name] = (f.tensors["response_features"].double(), f.tensors["response_lengths"])
    src_r, src_a = sources(work, "pairs", tr.ids), sources(work, "ratings", ra.ids)
    ref, y = torch.cat([R.reshape(-1, d), A]), torch.cat([LR.reshape(-1), LA])

    pooled = [cov(ref, y)]
    per_source = [cov(R.reshape(-1, d), LR.reshape(-1)), cov(ref, y)]
    for s in sorted(set(src_r)):
        m = torch.tensor([x == s for x in src_r])
        per_source.append(cov(R[m].reshape(-1, d), LR[m].reshape(-1)))
        D, DL = R[m][:, 0] - R[m][:, 1], LR[m][:, 0] - LR[m][:, 1]
        per_source.append(D.T @ DL / DL.numel())
    for s in sorted(set(src_a)):
        m = torch.tensor([x == s for x in src_a])
        per_source.append(cov(A[m], LA[m]))
    empty = torch.zeros(d, 0, dtype=torch.float64)
    orth = lambda vs: torch.linalg.qr(torch.stack(vs, 1))[0]  # noqa: E731
    arms: dict[str, tuple[torch.Tensor, float]] = {"none": (empty, float("nan")), "pooled": (orth(pooled), float("nan")),
                                                   "per source": (orth(per_source), float("nan"))}
    for k in INLP:
        arms[f"INLP {k}"] = inlp(ref, y, empty, k)
    for k in INLP[1:3]:  # INLP's directions first: after the pooled covariance is gone, no ridge has a signal left
        Q, r2 = arms[f"INLP {k}"]
        arms[f"INLP {k} + per source"] = (torch.linalg.qr(torch.cat([Q, torch.stack(per_source, 1)], 1))[0], r2)

    rows = []
    for arm, (Q, r2) in arms.items():
        P = torch.eye(d, dtype=torch.float64) - Q @ Q.T
        h = fit_preference((R @ P).float(), groups)
        w = P @ h.weight.double()
        sets = {name: measure((X @ w).reshape(L.shape), L) for name, (X, L) in ev.items()}
        rows.append({"arm": arm, "directions": Q.shape[1], "inlp_r2_left": r2, "C": h.C,
                     "cv_accuracy": h.metrics["val_accuracy"], "sets": sets,
                     "meets_targets": {n: meets(m) for n, m in sets.items()}})
    eligible = [r for r in rows if r["meets_targets"]["RMB selection"]]
    rule = max(eligible, key=lambda r: r["sets"]["RMB selection"]["accuracy"]) if eligible else None
    print("| arm | directions | C | CV | " + " | ".join(f"{n}: acc [95% CI], Spearman, longer wins / labels" for n in EVAL)
          + " | targets met on |")
    for r in rows:
        cells = " | ".join(f"{m['accuracy']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}], {m['spearman']:+.3f}, "
                           f"{m['longer_wins']:.3f} / {m['labels_longer_wins']:.3f}" for m in r["sets"].values())
        met = ", ".join(n for n, ok in r["meets_targets"].items() if ok) or "none"
        print(f"| {r['arm']}{' (rule)' if r is rule else ''} | {r['directions']} | {r['C']:g} | {r['cv_accuracy']:.3f} | "
              f"{cells} | {met} |")
    for r in rows:
        if r["arm"].startswith("INLP") and "+" not in r["arm"]:
            print(f"{r['arm']}: in-sample R^2 of the last round's ridge of log length {r['inlp_r2_left']:.3f}")
    all_sets = [r["arm"] for r in rows if all(r["meets_targets"].values())]
    print(f"arms meeting both length targets on all {len(EVAL)} sets: {len(all_sets)} of {len(rows) - 1}"
          + (f" ({', '.join(all_sets)})" if all_sets else ""))
    print("rule (meets the targets on the RMB selection slice, most accurate there): "
          + (f"{rule['arm']}" if rule else "no arm"))
    if args.json:
        Path(args.json).write_text(json.dumps({"rule": rule["arm"] if rule else None, "arms": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
