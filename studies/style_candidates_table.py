"""#46's candidates side by side, and the rule that picks one: recipes/style_candidates.sh's reports read back.

For every candidate (the shipped model, today's recipe refitted, set and within-prompt decorrelation against a markdown
objective, heads fitted blind to form at several ranks): accuracy [95% CI] on each evaluation set, and the format and
length probes' gaps [95% CI] (studies/style_probe.py) on each set's probe rows.

The rule, decided before the numbers were read (the recipe's: the selection slice, then out of distribution):
  1. eligible: the format gap's interval on the RMB selection slice's probes holds 0;
  2. among those, the most accurate on the RMB selection slice;
  3. adopted for the default model only if, on every evaluation set (held-out, dev-eval, RMB evaluation), its accuracy
     is not below the shipped model's interval (its 95% lower bound).
The held-out, dev-eval and RMB evaluation probes are reported, never used to choose.

    python studies/style_candidates_table.py --work runs/default [--json studies/results/style_candidates.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from armo_cli.stats import bootstrap_ci  # noqa: E402
from style_probe import gaps, outcomes_by_probe  # noqa: E402

SETS = {"held-out": "heldout", "dev-eval": "dev-eval", "RMB evaluation": "rmb-eval", "RMB selection": "rmb-select"}
PROBES = {"held-out": "probe-heldout", "dev-eval": "probe-dev-eval", "RMB selection": "probe-rmb-select",
          "RMB evaluation": "probe-rmb"}


def candidates(style: Path) -> list[str]:
    names = sorted({p.name[len("eval-"):-len("-heldout.json")] for p in style.glob("eval-*-heldout.json")}
                   - {p.name[len("eval-"):-len("-probe-heldout.json")] + "-probe" for p in style.glob("eval-*-probe-heldout.json")})
    key = lambda n: (n == "refit", n != "shipped", n != "today", not n.startswith("style"),  # noqa: E731
                     int(n.rsplit("-", 1)[1]) if n.startswith("invariant-") else 0, n)
    return sorted(names, key=key)


def measure(work: Path, name: str) -> dict:
    style = work / "style"
    out: dict = {"accuracy": {}, "probes": {}}
    for label, s in SETS.items():
        f = style / f"pairs-{name}-{s}.jsonl"
        if s == "rmb-eval" and not f.exists():  # the slice's first 700 pairs, where all 2,000 were not extracted
            f = style / f"pairs-{name}-rmb-eval700.jsonl"
        if f.exists():  # accuracy over all pairs (a tie is a loss), the interval by armo's bootstrap over pairs
            won = torch.tensor([float(json.loads(x)["margin"] > 0) for x in f.open()], dtype=torch.float64)
            out["accuracy"][label] = {"accuracy": float(won.mean()), "ci95": bootstrap_ci(won, 1000, 0), "n": won.numel()}
    for label, s in PROBES.items():
        scored, rows = style / f"pairs-{name}-{s}.jsonl", work / f"{s}.jsonl"
        if not scored.exists() or not rows.exists():
            continue
        margins = {}
        for line in scored.open():
            r = json.loads(line)
            margins[r["id"]] = r["chosen"]["score"] - r["rejected"]["score"]
        base = list(dict.fromkeys(json.loads(x)["id"].rsplit("/", 1)[0] for x in rows.open()))
        oc, kept, left = outcomes_by_probe(margins, base)
        out["probes"][label] = {"pairs": len(kept), "left_out": len(left), **gaps(oc)}
    return out


def paired(work: Path, name: str, base: str = "shipped") -> dict:
    """Per set, NAME's accuracy minus BASE's on the same pairs, with a paired bootstrap interval (pairs resampled)."""
    style, out = work / "style", {}
    for label, s in SETS.items():
        for stem in ((s, "rmb-eval700") if s == "rmb-eval" else (s,)):
            fa, fb = style / f"pairs-{name}-{stem}.jsonl", style / f"pairs-{base}-{stem}.jsonl"
            if fa.exists() and fb.exists():
                a = torch.tensor([float(json.loads(x)["margin"] > 0) for x in fa.open()], dtype=torch.float64)
                b = torch.tensor([float(json.loads(x)["margin"] > 0) for x in fb.open()], dtype=torch.float64)
                d = a - b
                g = torch.Generator().manual_seed(0)
                boots = torch.stack([d[torch.randint(len(d), (len(d),), generator=g)].mean() for _ in range(1000)])
                out[label] = {"diff": float(d.mean()), "ci95": [float(boots.quantile(0.025)), float(boots.quantile(0.975))]}
                break
    return out


def choose(results: dict) -> dict:
    """The rule above, on measure()'s results; says why at each step."""
    shipped = results["shipped"]["accuracy"]
    eligible = [n for n, r in results.items() if n not in ("shipped", "refit") and "RMB selection" in r["probes"]
                and r["probes"]["RMB selection"]["format"]["ci95"][0] <= 0 <= r["probes"]["RMB selection"]["format"]["ci95"][1]]
    if not eligible:
        return {"eligible": [], "chosen": None, "adopt": False, "why": "no candidate's format gap holds 0 on the "
                                                                      "selection slice"}
    best = max(eligible, key=lambda n: results[n]["accuracy"].get("RMB selection", {}).get("accuracy", -1))
    losses = [s for s in ("held-out", "dev-eval", "RMB evaluation") if s in shipped and s in results[best]["accuracy"]
              and results[best]["accuracy"][s]["accuracy"] < shipped[s]["ci95"][0]]
    missing = [s for s in ("held-out", "dev-eval", "RMB evaluation") if s not in results[best]["accuracy"]]
    adopt = not losses and not missing
    why = (f"{best}: the most accurate on the selection slice among {len(eligible)} whose format gap holds 0 there; "
           + ("no evaluation set below the shipped model's interval" if adopt else
              f"below the shipped model's interval on {', '.join(losses)}" if losses else
              f"not measured on {', '.join(missing)}"))
    return {"eligible": eligible, "chosen": best, "adopt": adopt, "losses": losses, "missing": missing, "why": why}


def table(results: dict) -> list[str]:
    sets = [s for s in SETS if any(s in r["accuracy"] for r in results.values())]
    L = ["| candidate | " + " | ".join(f"{s} accuracy [95%]" for s in sets) + " | " +
         " | ".join(f"format gap, {s} [95%]" for s in PROBES if any(s in r["probes"] for r in results.values())) + " |"]
    probe_sets = [s for s in PROBES if any(s in r["probes"] for r in results.values())]
    L.append("|" + "---|" * (1 + len(sets) + len(probe_sets)))
    for name, r in results.items():
        cells = []
        for s in sets:
            a = r["accuracy"].get(s)
            cells.append(f"{a['accuracy']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]" if a else "")
        for s in probe_sets:
            p = r["probes"].get(s)
            cells.append(f"{p['format']['gap']:+.3f} [{p['format']['ci95'][0]:+.3f}, {p['format']['ci95'][1]:+.3f}]"
                         if p else "")
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    return L


def length_table(results: dict) -> list[str]:
    probe_sets = [s for s in PROBES if any(s in r["probes"] for r in results.values())]
    L = ["| candidate | " + " | ".join(f"length gap, {s} [95%]" for s in probe_sets) + " |",
         "|" + "---|" * (1 + len(probe_sets))]
    for name, r in results.items():
        cells = [f"{p['length']['gap']:+.3f} [{p['length']['ci95'][0]:+.3f}, {p['length']['ci95'][1]:+.3f}]"
                 if (p := r["probes"].get(s)) else "" for s in probe_sets]
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    return L


def card_section(out: dict) -> list[str]:
    """The model card's lines for the candidates and the rule's verdict (main()'s JSON)."""
    results, d = out["results"], out["decision"]
    rmb700 = out.get("rmb_eval_pairs")
    L = ["### Candidates against style (#46): before (shipped) and after", "",
         "Each candidate is today's recipe with one change, the shipped gate's settings, on the same features "
         "(`recipes/style_candidates.sh`): `style-set` / `style-prompt` decorrelate every objective against verbosity and "
         "a markdown objective over the set / among each prompt's responses; `invariant-K` fits the rating and preference "
         "heads on features with the top K directions of training responses' form-only swaps projected out "
         "(`fit-regression --invariant-to`, `studies/style_swaps.py`). Accuracy over all pairs (a tie is a loss) with "
         "bootstrap intervals; format gap: the style probe's \"chosen markdown\" minus \"chosen plain\" accuracy, paired "
         "bootstrap over 60 pairs per set (fewer where a probe is too long)."
         + (f" RMB evaluation: the {rmb700} scorable pairs of the slice's first 700 (all 2,000 were not extracted with "
            "style counts)."
            if rmb700 else ""), ""]
    L += table(results) + [""] + length_table(results) + [""]
    for n, diffs in out.get("paired", {}).items():
        L += [f"Paired, `{n}` minus `shipped` on the same pairs [95%]: " + "; ".join(
            f"{k} {v['diff']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" for k, v in diffs.items()) + ".", ""]
    L += ["`shipped` is the model before this refit; `refit` is the model shipped now: the chosen candidate's heads "
          "with the gate the recipe chose on the selection slice (`recipes/fit_default.sh`)." if "refit" in results else
          "`shipped` is the model shipped when these were measured.", "",
          "The rule, written before the candidates' selection-slice and RMB figures were read (a first scan of the "
          "preference head alone at several ranks, on held-out and dev-eval, had been seen): among candidates whose format gap holds 0 on the RMB selection "
          "slice's probes, the most accurate on that slice; adopted only if no evaluation set falls below the shipped "
          f"model's interval. Verdict: {d['why']}.", ""]
    return L


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/default")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    work = Path(args.work)
    results = {n: measure(work, n) for n in candidates(work / "style")}
    decision = choose(results)
    print("\n".join(table(results)))
    print()
    print("\n".join(length_table(results)))
    print()
    print(f"rule: {decision['why']}")
    out = {"results": results, "decision": decision,
           "paired": {n: paired(work, n) for n in (decision["chosen"], "refit") if n and n in results}}
    f = work / "style" / "pairs-shipped-rmb-eval.jsonl"
    if not f.exists() and (work / "style" / "pairs-shipped-rmb-eval700.jsonl").exists():
        out["rmb_eval_pairs"] = sum(1 for _ in (work / "style" / "pairs-shipped-rmb-eval700.jsonl").open())
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
