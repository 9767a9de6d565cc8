"""Does the preference objective gain from pairs built out of the rating rows (#13)?

The shipped `preference` head learns from the 3.4k training pairs only. The rating rows hold more comparisons:
several responses to one prompt with different ratings (UltraFeedback's chosen/rejected pair, XSTest's five
models per prompt, Topical-Chat's six responses per context, Prometheus). This study turns them into pairs
(within one prompt, the response rated higher on the source's primary objective is `chosen`, when the two differ
by at least the margin below), adds them to the training pairs, and refits the head with
`armo_cli.preference.fit_preference` (same C grid and prompt-grouped cross-validation as `fit-regression`).
Adding pairs can move the chosen C, so each arm is also compared with the training-pairs-only head refitted at
that arm's C ("same C"): what the added pairs themselves bring.
Per arm it prints accuracy with 95% bootstrap intervals on the held-out pairs, dev-eval, the RMB selection slice
and the RMB evaluation slice, and the paired interval against the training-pairs-only head. The rule that would
pick an arm is the project's: highest accuracy on the RMB selection slice.

    python studies/rating_pairs_study.py --work runs/default --json out.json
"""
from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

import torch

from armo_cli.features import Features
from armo_cli.preference import fit_preference
from armo_cli.evaluate import pair_outcomes
from armo_cli.stats import bootstrap_ci

# source prefix -> (objective that orders its responses, smallest rating difference that makes a pair)
PRIMARY = {"ultrafeedback": ("ultrafeedback-overall", 0.5), "xstest": ("xstest-appropriate", 0.5),
           "unieval": ("topicalchat-overall", 1.0), "prometheus": ("prometheus-rubric", 1.0)}
EVAL = {"held-out": "heldout", "dev-eval": "dev-eval", "RMB selection": "rmb-select", "RMB evaluation": "rmb-eval"}
N_BOOT = 1000


def rating_pairs(work: Path) -> tuple[Features, dict[str, list[tuple[int, int, str]]]]:
    """The ratings features and, per source, (chosen row, rejected row, prompt key) triples."""
    f = Features.load(work / "ratings.features.safetensors")
    ratings = {}
    for line in (work / "ratings.jsonl").read_text().splitlines():
        r = json.loads(line)
        ratings[r["id"]] = (r["source"].split("_")[0], r["ratings"])
    by_prompt = defaultdict(list)
    for i, (rid, key) in enumerate(zip(f.ids, f.meta.prompt_hashes or f.ids)):
        src, lab = ratings[rid]
        by_prompt[(src, key)].append((i, lab))
    out: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for (src, key), rows in by_prompt.items():
        obj, margin = PRIMARY[src]
        for (i, a), (j, b) in itertools.combinations(rows, 2):
            if obj in a and obj in b and abs(a[obj] - b[obj]) >= margin:
                out[src].append((i, j, key) if a[obj] > b[obj] else (j, i, key))
    return f, dict(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/default")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.work)
    tr = Features.load(work / "pairs.features.safetensors")
    R, groups = tr.tensors["response_features"].float(), list(tr.meta.prompt_hashes or tr.ids)
    rf, derived = rating_pairs(work)
    RF = rf.tensors["response_features"].float()
    ev = {name: Features.load(work / f"{stem}.features.safetensors").tensors["response_features"].float()
          for name, stem in EVAL.items()}
    arms = {"training pairs only": []} | {f"+ {s}": [s] for s in derived} | {"+ all rating pairs": list(derived)}
    print("pairs built from ratings: " + ", ".join(f"{s} {len(v)}" for s, v in derived.items()))
    rows, base, same_c = [], {}, {}
    for arm, srcs in arms.items():
        Rs, G = [R], list(groups)
        for s in srcs:
            ij = torch.tensor([(i, j) for i, j, _ in derived[s]])
            Rs.append(torch.stack([RF[ij[:, 0]], RF[ij[:, 1]]], 1))
            G += [k for _, _, k in derived[s]]
        h = fit_preference(torch.cat(Rs), G)
        sets = {}
        for name, X in ev.items():
            u = X @ h.weight
            o = pair_outcomes(u[:, 0] - u[:, 1], "loss")
            sets[name] = {"accuracy": float(o.mean()), "ci95": bootstrap_ci(o, N_BOOT, 0), "outcome": o}
            if not srcs:
                base[name] = o
            else:
                d = o - base[name]
                sets[name]["minus_pairs_only"] = {"mean": float(d.mean()), "ci95": bootstrap_ci(d, N_BOOT, 0)}
        if srcs:  # the added pairs' own effect: the training pairs alone at this arm's C
            if h.C not in same_c:
                same_c[h.C] = fit_preference(R, groups, grid=[h.C])
            u0 = same_c[h.C]
            for name, X in ev.items():
                u = X @ u0.weight
                d = sets[name]["outcome"] - pair_outcomes(u[:, 0] - u[:, 1], "loss")
                sets[name]["minus_same_c"] = {"mean": float(d.mean()), "ci95": bootstrap_ci(d, N_BOOT, 0)}
        for m in sets.values():
            m.pop("outcome")
        rows.append({"arm": arm, "added_pairs": sum(len(derived[s]) for s in srcs), "C": h.C, "sets": sets})
    chosen = max(rows, key=lambda r: (round(r["sets"]["RMB selection"]["accuracy"], 6), -r["added_pairs"]))
    print(f"| arm | pairs added | C | " + " | ".join(f"{n} [95% CI]; - pairs only; - same C" for n in EVAL) + " |")
    for r in rows:
        cells = []
        for n in EVAL:
            m = r["sets"][n]
            diffs = [m[k] for k in ("minus_pairs_only", "minus_same_c") if k in m]
            cells.append(f"{m['accuracy']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"
                         + "".join(f"; {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" for d in diffs))
        print(f"| {r['arm']}{' (rule)' if r is chosen else ''} | {r['added_pairs']} | {r['C']:g} | " + " | ".join(cells) + " |")
    print(f"rule (highest RMB selection accuracy): {chosen['arm']}; held-out {chosen['sets']['held-out']['accuracy']:.3f} "
          f"against the 0.65 target")
    if args.json:
        Path(args.json).write_text(json.dumps({"derived": {s: len(v) for s, v in derived.items()}, "rule": chosen["arm"],
                                               "arms": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
