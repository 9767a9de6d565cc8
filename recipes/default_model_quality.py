"""Measure the default model and its ablations on three evaluation sets; write quality.json and the model card.

Run by recipes/fit_default.sh after the recipe's models are assembled under WORK/models. Evaluation sets (never
trained on, never used to choose anything): the held-out permissive pairs (disjoint by prompt), dev-eval, and the
RMB evaluation slice (out of distribution). Scorers, each on every set:
  - the full model (preference objective, decorrelation, the gate chosen on the RMB selection slice);
  - uniform weights over the objectives the gate may choose (same rewards, same transform);
  - the best single objective, chosen on the training pairs (out-of-fold rewards for the preference objective);
  - a linear Bradley-Terry head on the response features, trained on the same pairs with the same loop (control);
  - ablation models built by the recipe with the same commands: without decorrelation, without the preference
    objective, and pairs-only models (preference + length objectives) at the chosen layer and at the last layer
    (the last-layer arm only where WORK/last-layer holds its features; see recipes/ablate_last_layer.sh), and the
    whole recipe on last-token features (where WORK/last-token holds it; see recipes/ablate_pooling.sh).
Accuracy counts ties as losses, with 95% bootstrap intervals; "vs full" is a paired bootstrap interval of the
full model's accuracy minus the scorer's. Length: Spearman(score, response length) over all responses, and the
share of pairs (lengths differing) where the longer response scores higher, beside the labels' share.

    python recipes/default_model_quality.py --work runs/default --model armo_cli/default_model.new
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from armo_cli.configs import GatingConfig
from armo_cli.features import Features
from armo_cli.gating import adjusted_rewards, best_single_objective, grouped_split, train_linear_bt, uniform_weights
from armo_cli.model import ArmoModel
from armo_cli.provenance import require_compatible
from armo_cli.evaluate import evaluate_scores, pair_outcomes
from armo_cli.stats import bootstrap_ci, spearman

SETS = {"held-out pairs": "heldout", "dev-eval": "dev-eval", "RMB (out of distribution)": "rmb-eval"}
PREVIOUS_CARD: Path | None = None
SELECTION = ("RMB selection slice (chose the gate; not a result)", "rmb-select")
N_BOOT = 1000
POOLING_ARM = "the recipe on last-token features (full model)"
POOLING_TEXT = {"last": "the response feature read at its last token", "mean": "the response feature the mean of its tokens' hidden states"}
ROOT = Path(__file__).resolve().parent
RESULTS = ROOT.parent / "studies" / "results"  # the studies' printed tables, read into the card
HAND = ROOT.parent / "examples" / "pairs.jsonl"


def row_groups(work: Path, stem: str, feats: Features) -> list[str]:
    """Per row: held-out pairs by source, dev-eval by subset, RMB by section (helpfulness by category)."""
    if feats.meta.subsets and any(s is not None for s in feats.meta.subsets):
        return [s or "all" for s in feats.meta.subsets]
    src = {}
    p = work / f"{stem}.jsonl"
    if p.exists():
        for line in p.read_text().splitlines():
            r = json.loads(line)
            parts = r.get("source", "?").split("/")
            src[r["id"]] = ("/".join(parts[1:3]) if parts[1] == "Helpfulness" else parts[1]) if parts[0] == "rmb" else parts[0]
    return [src.get(i, "?") for i in feats.ids]


def load_checked(path: Path, model: ArmoModel) -> Features:
    """Features the model can read (same backbone, layer, pooling, template, gate rule): a model fitted on a stage-0
    adapter's features must not be measured on the base backbone's."""
    f = Features.load(path)
    require_compatible(model.meaning, f.meaning(), str(model.path), str(path), prompt=True, warn_dtype=False)
    return f


def measure(scores: torch.Tensor, lengths: torch.Tensor, full_outcome: torch.Tensor | None) -> dict:
    rep = evaluate_scores(scores, ["all"] * scores.shape[0], lengths, "loss", N_BOOT, 0)
    out = {"accuracy": rep["accuracy_all"], "n": rep["n"], "ci95": rep["subsets"]["all"]["ci95"], "ties": rep["ties"]["count"],
           "length_bias": rep["length_bias"]}
    if full_outcome is not None:
        diff = full_outcome - pair_outcomes(scores[:, 0] - scores[:, 1], "loss")
        out["full_minus_this"] = {"mean": float(diff.mean()), "ci95": bootstrap_ci(diff, N_BOOT, 0)}
    else:
        # where the full model's length bias sits: across prompts (pair means) or inside pairs (differences)
        s, ll = scores.double(), torch.log1p(lengths.double())
        out["length_bias_parts"] = {"between_pairs": spearman(s.mean(1), ll.mean(1)),
                                    "within_pairs": spearman(s[:, 0] - s[:, 1], ll[:, 0] - ll[:, 1]),
                                    "mean_length": float(lengths.double().mean())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/default")
    ap.add_argument("--model", default="armo_cli/default_model")
    ap.add_argument("--produced-by", default="bash recipes/train_default.sh", help="the recipe command, for the card")
    ap.add_argument("--features", help="where the model's own features are, if not in --work (a stage-0 adapter's "
                    "extraction: recipes/train_stage0.sh); the ablations stay on --work's")
    ap.add_argument("--rmb-eval", default="rmb-eval", help="the RMB evaluation slice's stem in --work: rmb-eval700 is its "
                    "first 700 pairs (#46's refit, where all 2,000 were not extracted with style counts)")
    ap.add_argument("--previous-card", default=None, help="a card whose #33 section is carried over, labelled, when "
                    "WORK holds no candidates.json (#33's candidates were not re-run)")
    args = ap.parse_args()
    SETS["RMB (out of distribution)"] = args.rmb_eval
    global PREVIOUS_CARD
    PREVIOUS_CARD = Path(args.previous_card) if args.previous_card else None
    work, models = Path(args.work), Path(args.work) / "models"
    feat_dir = Path(args.features or args.work)
    model = ArmoModel.load(args.model)
    train = load_checked(feat_dir / "pairs.features.safetensors", model)
    lm = model.regression.lm_objectives  # the model's input: the features and the LM objectives it reads, if any
    Rtr = train.tensors["response_features"].float()
    groups = train.meta.prompt_hashes or train.ids
    # choices made on training pairs only
    radj_tr = adjusted_rewards(model.regression, model.decorrelation.transform, train.inputs(lm).float(), groups)
    best_j = best_single_objective(radj_tr)
    tr = grouped_split(groups, 0.1, 0)
    w_lin = train_linear_bt(Rtr, tr, ~tr, GatingConfig(steps=2000))
    uniform = uniform_weights(model.decorrelation.transform)

    arms = {"without decorrelation": (models / "nodecor", work),
            "without the preference objective": (models / "nopref", work),
            "pairs only (preference + length), chosen layer": (models / "pairsonly", work),
            "pairs only (preference + length), last layer": (work / "last-layer" / "models" / "pairsonly", work / "last-layer"),
            POOLING_ARM: (work / "last-token" / "models" / "full", work / "last-token")}
    results: dict[str, dict] = {}
    gate_means: dict[str, dict] = {}
    for set_name, stem in [*SETS.items(), SELECTION]:
        path = feat_dir / f"{stem}.features.safetensors"
        if not path.exists():
            continue
        f = load_checked(path, model)
        P, R, L = f.tensors["prompt_features"], f.tensors["response_features"], f.tensors["response_lengths"]
        RL = f.inputs(lm)
        with torch.no_grad():
            ex = model.explain(P, RL)
            full = ex["score"]
            full_outcome = pair_outcomes(full[:, 0] - full[:, 1], "loss")
            scorers = {
                "full model": full,
                "uniform weights": model.explain(P, RL, uniform)["score"],
                f"best single objective ({model.objectives[best_j]})": (model.regression.rewards(RL) @ model.decorrelation.transform)[:, :, best_j],
                "linear Bradley-Terry head (control)": R.float() @ w_lin,
            }
            for arm, (mdir, fdir) in arms.items():
                fp = fdir / f"{stem}.features.safetensors"
                if mdir.exists() and fp.exists():
                    am = ArmoModel.load(mdir)
                    fa = f if fp == path else load_checked(fp, am)
                    if fa.ids != f.ids:  # an arm with other rows (another layer's length limits) is not paired
                        keep = {i: k for k, i in enumerate(fa.ids)}
                        raise SystemExit(f"{fp}: rows differ from {path} ({len(keep)} vs {len(f.ids)})")
                    scorers[arm] = am.explain(fa.tensors["prompt_features"], fa.inputs(am.regression.lm_objectives))["score"]
        results[set_name] = {name: measure(s.detach(), L, None if name == "full model" else full_outcome)
                             for name, s in scorers.items()}
        grp = row_groups(work, stem, f)
        g = ex["gating"] / ex["gating"].sum(-1, keepdim=True)  # shares of the weight (the scale is shared)
        gate_means[set_name] = {}
        for name in sorted(set(grp)):
            idx = torch.tensor([i for i, x in enumerate(grp) if x == name])
            sel = full_outcome[idx]
            gate_means[set_name][name] = {"n": int(idx.numel()), "accuracy": float(sel.mean()),
                                          "weights": {o: float(g[idx, j].mean()) for j, o in enumerate(model.objectives)}}
    selection = json.loads((work / "gate-selection.json").read_text()) if (work / "gate-selection.json").exists() else None
    probe = json.loads((RESULTS / "layer_probe.json").read_text())
    targets = check_targets(results)
    out = {"results": results, "gate_weights_by_group": gate_means, "best_single_objective": model.objectives[best_j],
           "gate_selection": selection, "targets": targets,
           "hand_written": hand_written({"full model": Path(args.model), POOLING_ARM: arms[POOLING_ARM][0]})}
    (Path(args.model) / "quality.json").write_text(json.dumps(out, indent=2) + "\n")
    write_card(Path(args.model), model, work, out, probe, args.produced_by)
    for set_name, rs in results.items():
        print(f"\n{set_name}")
        for sname, v in rs.items():
            lb = v["length_bias"]
            d = v.get("full_minus_this")
            dd = f"  full-this {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else ""
            print(f"  {sname:48s} acc {v['accuracy']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] n={v['n']}  "
                  f"spearman {lb['spearman_score_length']:+.3f}  longer wins {lb['longer_wins_model']:.3f} "
                  f"(labels {lb['longer_wins_labels']:.3f}){dd}")
    print()
    for t in targets:
        print(f"{'PASS' if t['pass'] else 'MISS'}  {t['target']}: {t['measured']}")


def check_targets(results: dict) -> list[dict]:
    """The issue's targets, each with what was measured (nothing here is hard-coded: all from `results`)."""
    out = []
    h = results.get("held-out pairs", {}).get("full model")
    if h:
        out.append({"target": "held-out accuracy >= 0.65", "pass": h["accuracy"] >= 0.65, "measured": f"{h['accuracy']:.3f}"})
    for set_name, rs in results.items():
        if set_name == SELECTION[0]:
            continue
        full = rs["full model"]
        for sname, v in rs.items():
            if sname == "full model" or sname.startswith(("without", "pairs only")) or sname == POOLING_ARM:
                continue
            d = v["full_minus_this"]
            out.append({"target": f"{set_name}: full model not worse than {sname} (paired 95% CI of full - it reaches 0)",
                        "pass": d["ci95"][1] >= 0, "measured": f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"})
        lb = full["length_bias"]
        out.append({"target": f"{set_name}: |Spearman(score, length)| <= 0.10", "pass": abs(lb["spearman_score_length"]) <= 0.10,
                    "measured": f"{lb['spearman_score_length']:+.3f}"})
        out.append({"target": f"{set_name}: longer response wins no more often than the labels say",
                    "pass": lb["longer_wins_model"] <= lb["longer_wins_labels"],
                    "measured": f"model {lb['longer_wins_model']:.3f}, labels {lb['longer_wins_labels']:.3f}"})
    return out


def hand_written(models: dict[str, Path]) -> dict:
    """How often each model prefers the chosen side of the hand-written pairs of examples/pairs.jsonl (a correct,
    specific answer against a vague, wrong or unsafe one), scored from the rows."""
    from armo_cli.api import RewardModel

    rows = [json.loads(line) for line in HAND.read_text().splitlines()]
    out: dict = {"pairs": len(rows)}
    for name, d in models.items():
        if (d / "armo.json").exists():
            out[name] = sum(r["preferred"] == "chosen" for r in RewardModel(d, overflow="truncate-prompt").score(rows))
    return out


def findings(q: dict, model: ArmoModel, blocked: list[str]) -> list[str]:
    """Plain statements the tables support, written from the numbers (so they change when the numbers do)."""
    out = []
    shares = [(set_name, g, v["weights"]) for set_name, groups in q["gate_weights_by_group"].items() for g, v in groups.items()]
    top = {max(w, key=w.get) for _, _, w in shares}
    low = min(max(w.values()) for _, _, w in shares)
    if len(top) == 1:
        (o,) = top
        out.append(f"The gate routes every source and subset to one objective, `{o}` (at least {low:.2f} of its weight in "
                   f"every group): on these training pairs no other objective, after decorrelation, orders pairs better, so the "
                   f"mixture reduces to that objective. It does not route safety prompts to the XSTest objectives.")
    else:
        out.append(f"The gate's favourite objective differs across groups ({', '.join(sorted(top))}).")
    res = {k: v for k, v in q["results"].items() if k != SELECTION[0]}
    for set_name, rs in res.items():
        full, nd = rs["full model"]["length_bias"], rs.get("without decorrelation", {}).get("length_bias")
        if nd:
            out.append(f"{set_name}: Spearman(score, length) {full['spearman_score_length']:+.3f} with decorrelation, "
                       f"{nd['spearman_score_length']:+.3f} without.")
    chosen_arm, last_arm = "pairs only (preference + length), chosen layer", "pairs only (preference + length), last layer"
    both = [k for k, rs in res.items() if chosen_arm in rs and last_arm in rs]

    def like_for_like(k: str, rs: dict) -> str:
        return (f"{k}: chosen layer {rs[chosen_arm]['accuracy']:.3f} (Spearman {rs[chosen_arm]['length_bias']['spearman_score_length']:+.3f}), "
                f"last layer {rs[last_arm]['accuracy']:.3f} (Spearman {rs[last_arm]['length_bias']['spearman_score_length']:+.3f})")

    if both:
        out.append("Layer, like for like (pairs-only models, same pairs): " + "; ".join(like_for_like(k, res[k]) for k in both)
                   + ". The last-layer arm was run on " + ", ".join(both) + " only (`recipes/ablate_last_layer.sh`).")
    sel = q["results"].get(SELECTION[0], {})
    if chosen_arm in sel and last_arm in sel:
        a, b = sel[chosen_arm]["accuracy"], sel[last_arm]["accuracy"]
        out.append("On the RMB selection slice, where the layer rule is applied (sources the model never trained on): "
                   + like_for_like("selection slice", sel) + f". By that rule the chosen layer stays "
                   f"({'ahead' if a > b else 'behind'} by {abs(a - b):.3f}).")
    pooled = [(k, rs) for k, rs in q["results"].items() if POOLING_ARM in rs]
    if pooled:
        pooling = model.meaning.pooling
        out.append(f"Pooling, like for like (the whole recipe on {pooling}-pooled and on last-token features of the same "
                   f"rows; `recipes/ablate_pooling.sh`): " + "; ".join(
                       f"{k}: {pooling} {rs['full model']['accuracy']:.3f} (Spearman "
                       f"{rs['full model']['length_bias']['spearman_score_length']:+.3f}), last token "
                       f"{rs[POOLING_ARM]['accuracy']:.3f} (Spearman {rs[POOLING_ARM]['length_bias']['spearman_score_length']:+.3f})"
                       for k, rs in pooled) + ". The pooling is chosen on the RMB selection slice.")
    elif (RESULTS / "pooling_ablation.json").exists():  # the arm's features are not kept: its recorded run
        r = json.loads((RESULTS / "pooling_ablation.json").read_text())
        out.append(f"Pooling, like for like ({r['what'].split(': ', 1)[1]}; `recipes/ablate_pooling.sh`, recorded {r['recorded']}): "
                   + "; ".join(f"{k}: mean {v['mean']['accuracy']:.3f} (Spearman {v['mean']['spearman_score_length']:+.3f}), "
                               f"last token {v['last']['accuracy']:.3f} (Spearman {v['last']['spearman_score_length']:+.3f})"
                               for k, v in r["sets"].items())
                   + f"; the hand-written pairs: mean {r['hand_written']['mean']}, last token {r['hand_written']['last']} of "
                     f"{r['hand_written']['pairs']}. The pooling is chosen on the RMB selection slice.")
    hw = q.get("hand_written", {})
    if "full model" in hw:
        out.append(f"The hand-written pairs of `examples/pairs.jsonl` (a correct, specific answer against a vague, wrong or "
                   f"unsafe one): the model prefers the chosen side in {hw['full model']} of {hw['pairs']}"
                   + (f"; the recipe on last-token features in {hw[POOLING_ARM]}" if POOLING_ARM in hw else "")
                   + ". Below half means it prefers the vague or wrong answer more often than not.")
    parts = [(k, rs["full model"]["length_bias_parts"]) for k, rs in q["results"].items() if "length_bias_parts" in rs["full model"]]
    if parts:
        out.append("Where the length bias sits (full model; Spearman of pair-mean score with pair-mean log length, and of the "
                   "score difference with the log-length difference): " + "; ".join(
                       f"{k}: between pairs {v['between_pairs']:+.3f}, within pairs {v['within_pairs']:+.3f}, mean response "
                       f"{v['mean_length']:.0f} tokens" for k, v in parts) + ".")
    out.append("Decorrelation zeroes each objective's correlation with length on its reference set (the training pairs), "
               "but the preference objective's relation to length changes sign between distributions (negative on the "
               "HH-RLHF-heavy training pairs, positive on dev-eval and RMB), so a linear correction fitted on one set does "
               "not carry to the others.")
    return out


def current_studies(results: Path) -> list[str]:
    """Studies run on the shipped recipe's own features, written from their JSON."""
    out = []
    ft = results / "feature_transform_study.json"
    if ft.exists():
        r = json.loads(ft.read_text())
        ridge = r["ridge"]
        up = sum(v["scaled"] > v["raw"] for v in ridge.values())
        arms = r["preference_arms"]
        sel, ho = "RMB selection", "held-out"
        best_ho = max(arms, key=lambda a: a["sets"][ho]["accuracy"])
        rise = max(ridge.items(), key=lambda kv: kv[1]["scaled"] - kv[1]["raw"])
        fall = min(ridge.items(), key=lambda kv: kv[1]["scaled"] - kv[1]["raw"])
        text = (f"`studies/feature_transform_study.py`: the rating ridge on features scaled per dimension raises the "
                f"validation Pearson of {up} of {len(ridge)} rating objectives and lowers the rest (largest rise "
                f"{rise[0]} {rise[1]['raw']:.3f} to {rise[1]['scaled']:.3f}, largest fall {fall[0]} {fall[1]['raw']:.3f} "
                f"to {fall[1]['scaled']:.3f}), so it is not "
                f"adopted. The preference head alone (before decorrelation) on other linear transforms of the features ("
                + "; ".join(f"{a['arm']}: CV {a['cv_accuracy']:.3f}, held-out {a['sets'][ho]['accuracy']:.3f}, "
                            f"selection {a['sets'][sel]['accuracy']:.3f}" for a in arms)
                + f"): the rule keeps `{r['rule']}`; the best held-out accuracy of any arm is "
                  f"{best_ho['sets'][ho]['accuracy']:.3f} ({best_ho['arm']}).")
        if r["layer_bands"]:
            text += (" The mean of a band of layers instead of one (`--layer-cache`: CV on the cache's own prompt folds, and selection): " + "; ".join(
                f"layers {b['from_end'][0]} to {b['from_end'][1]}: {b['cv_accuracy']:.3f} / {b['selection_accuracy']:.3f}"
                for b in r["layer_bands"]) + ".")
        out.append(text)
    return out


def studies(results: Path) -> list[str]:
    """One line per study script whose results are in studies/results (what was tried for the targets, and why
    it was not adopted), written from their JSON."""
    out = []
    lc = results / "length_correction_study.json"
    if lc.exists():
        rows = json.loads(lc.read_text())
        met = sum(r["meets_targets"] for r in rows[1:])
        spread = {s: (min(r["sets"][s]["spearman"] for r in rows[1:]), max(r["sets"][s]["spearman"] for r in rows[1:]))
                  for s in rows[0]["sets"]}
        out.append(f"`studies/length_correction_study.py`: subtracting a fitted function of length from the preference "
                   f"reward ({len(rows) - 1} corrections: polynomials in the true log length or in the verbosity reward, "
                   f"fitted on the training pairs, the rating responses or both) meets both length targets on every set in "
                   f"{met} of them. Spearman(score, length) ranges per set: " + "; ".join(
                       f"{s} {a:+.3f} to {b:+.3f}" for s, (a, b) in spread.items()) + ".")
    se = results / "source_experts_study.json"
    if se.exists():
        r = json.loads(se.read_text())
        gates = "; ".join(f"{g}: held-out {v['held-out']['accuracy']:.3f}, RMB selection {v['RMB selection']['accuracy']:.3f}"
                          for g, v in r["gates"].items())
        out.append(f"`studies/source_experts_study.py`: one preference head per training source, each pair scored by its "
                   f"own source's head (oracle routing), gives {r['oracle']['heldout']:.3f} on held-out pairs (one head on all "
                   f"pairs: {r['oracle']['heldout_one_head']:.3f}); learned gates over those heads: {gates}.")
    ns = results / "length_nullspace_study.json"
    if ns.exists():
        r = json.loads(ns.read_text())
        arms = r["arms"][1:]
        spread = {s: (min(a["sets"][s]["spearman"] for a in arms), max(a["sets"][s]["spearman"] for a in arms))
                  for s in arms[0]["sets"]}
        inlp = [a for a in arms if a["arm"].startswith("INLP") and "+" not in a["arm"]]
        out.append(f"`studies/length_nullspace_study.py`: length projected out of the features before the preference "
                   f"head is fitted ({len(arms)} arms: the pooled covariance with log length, per-source covariances, "
                   f"iterative nullspace projection with {inlp[0]['directions']} to {inlp[-1]['directions']} directions, "
                   f"and both) meets both length targets on every set in "
                   f"{sum(all(a['meets_targets'].values()) for a in arms)} of them, and on the RMB selection slice in "
                   f"{sum(a['meets_targets']['RMB selection'] for a in arms)} (the rule adopts "
                   f"{'`' + r['rule'] + '`' if r['rule'] else 'none'}). Spearman(score, length) ranges per set: "
                   + "; ".join(f"{s} {a:+.3f} to {b:+.3f}" for s, (a, b) in spread.items())
                   + f"; after {inlp[-1]['directions']} rounds a ridge still explains {inlp[-1]['inlp_r2_left']:.2f} of "
                   f"log length's variance in-sample.")
    lt = results / "length_tradeoff_study.json"
    if lt.exists():
        r = json.loads(lt.read_text())
        met = [x["a"] for x in r["rows"] if all(m["meets_length_targets"] for m in x["sets"].values())]
        rule = next((x for x in r["rows"] if x["a"] == r["rule"]), None)
        text = (f"`studies/length_tradeoff_study.py`: the gate's weights mixed with uniform weights, a * gate + (1 - a) * "
                f"uniform for a = 1 (shipped) to 0. Both length targets hold on every set for "
                f"{'a = ' + ', '.join(f'{a:.1f}' for a in met) if met else 'no a'}. ")
        if rule:
            cells = "; ".join(f"{n} {m['accuracy']:.3f} (Spearman {m['spearman']:+.3f}, longer wins {m['longer_wins']:.3f} / "
                              f"{m['labels_longer_wins']:.3f})" for n, m in rule["sets"].items())
            c = rule["sets"]["held-out"]["minus_control"]
            text += (f"The largest a that meets them on the RMB selection slice, {rule['a']:.1f}, gives: {cells}; on the "
                     f"held-out pairs that is {c['mean']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] against the "
                     f"linear control.")
        out.append(text)
    ls = results / "lm_share_study.json"
    if ls.exists():
        r = json.loads(ls.read_text())
        rule = next(a for a in r["arms"] if a["objective"] == r["rule"]["objective"] and a["b"] == r["rule"]["b"])

        def arm(a: dict) -> str:
            return "; ".join(f"{n} {m['accuracy']:.3f} ({m['minus_today']['mean']:+.3f} [{m['minus_today']['ci95'][0]:+.3f}, "
                             f"{m['minus_today']['ci95'][1]:+.3f}])" for n, m in a["sets"].items())
        alone = {a["objective"]: a for a in r["arms"] if a["b"] == 1.0}
        top = max(v for sh in r["gate_share"].values() for v in sh.values())
        out.append(f"`studies/lm_share_study.py`: the `lm` candidate's gate gives the LM objectives at most {top:.3f} of "
                   f"its weight on average on any set; this study moves a fixed share b of every prompt's "
                   f"weight to one of them. The rule (highest RMB selection accuracy, within 0.005 the smaller b) picks "
                   + ("b = 0 (the gate's own weights)" if rule["b"] == 0 else f"{rule['objective']} at b = {rule['b']:.2f}")
                   + f": {arm(rule)} (in brackets: minus today's model, paired); "
                   + ("adopted" if r["adopt"] else "not adopted" + (f" (worse beyond noise on {', '.join(r['worse'])})"
                                                                     if r["worse"] else ""))
                   + ". Each LM objective alone: " + "; ".join(
                       f"{o}: " + ", ".join(f"{n} {m['accuracy']:.3f}" for n, m in a["sets"].items()) for o, a in alone.items())
                   + ".")
    rp = results / "rating_pairs_study.json"
    if rp.exists():
        r = json.loads(rp.read_text())
        arms = {a["arm"]: a for a in r["arms"]}
        rule = arms[r["rule"]]

        def cell(a: dict, s: str) -> str:
            m = a["sets"][s]
            d = m.get("minus_same_c")
            return f"{m['accuracy']:.3f}" + (f" ({d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}])" if d else "")
        sel = "RMB selection"
        other = max((a for a in r["arms"] if a is not rule), key=lambda a: a["sets"][sel]["accuracy"])
        out.append("`studies/rating_pairs_study.py`: pairs built from the rating rows (within a prompt, the response "
                   "rated higher wins: " + ", ".join(f"{s} {n}" for s, n in r["derived"].items()) + ") added to the "
                   f"preference head's training pairs. The rule (highest RMB selection accuracy) picks `{r['rule']}` "
                   f"(selection {rule['sets'][sel]['accuracy']:.3f}): held-out {cell(rule, 'held-out')}, RMB evaluation "
                   f"{cell(rule, 'RMB evaluation')}, dev-eval {cell(rule, 'dev-eval')}. Next on the selection slice: "
                   f"`{other['arm']}` ({other['sets'][sel]['accuracy']:.3f}): held-out {cell(other, 'held-out')}, RMB "
                   f"evaluation {cell(other, 'RMB evaluation')}, dev-eval {cell(other, 'dev-eval')} (in brackets: the paired "
                   f"difference from the training pairs alone refitted at the arm's C, {other['C']:g}). Best held-out over "
                   f"all arms: {max(a['sets']['held-out']['accuracy'] for a in r['arms']):.3f}.")
    return out


def probe_on_recipe(path: Path, layer: int) -> list[str]:
    """The layer probe rerun on the recipe's own training pairs and selection slice (`layer_probe.py --work`), if
    its results are saved: a check of the shipped layer with ten times the pairs, for the pooling it ran with."""
    if not path.exists():
        return []
    p = json.loads(path.read_text())
    pooling = p["args"].get("pooling", "last")
    rows = [r for r in p["layers"] if r["layer"] > 0]
    by_end = {r["layer_from_end"]: r for r in rows}
    ch, sh = p["chosen"], by_end[layer]

    def half(acc: float, n: int) -> float:  # normal-approximation 95% half-width
        return 1.96 * (acc * (1 - acc) / n) ** 0.5

    hw_cv, hw_sel = half(ch["cv_accuracy"], p["train_pairs"]), half(ch["ood_accuracy"], p["ood_pairs"])
    inside = (ch["cv_accuracy"] - sh["cv_accuracy"] < hw_cv) and (ch["ood_accuracy"] - sh["ood_accuracy"] < hw_sel)
    L = [f"Rerun on the recipe's own slices, {pooling}-pooled features (`layer_probe.py --work --pooling {pooling}`: "
         f"{p['train_pairs']} training pairs, "
         f"{p['ood_pairs']} RMB selection pairs): the rule picks layer {ch['layer_from_end']} (CV {ch['cv_accuracy']:.3f}, "
         f"selection {ch['ood_accuracy']:.3f}); the shipped layer {layer} scores CV {sh['cv_accuracy']:.3f}, selection "
         f"{sh['ood_accuracy']:.3f}. The 95% half-widths at these sizes are about ±{hw_cv:.3f} (CV) and ±{hw_sel:.3f} "
         f"(selection). CV accuracy over layers 1 to {rows[-1]['layer']} spans {min(r['cv_accuracy'] for r in rows):.3f} "
         f"to {max(r['cv_accuracy'] for r in rows):.3f}. "
         + ("Both differences are inside those half-widths, so the shipped layer is kept (moving it means extracting "
            "every set again)." if inside or ch["layer"] == sh["layer"] else
            "The rule's layer is ahead by more than a half-width: the next recipe run should use it."), "",
         f"<details><summary>probe table on the recipe's slices, {pooling}-pooled (all layers)</summary>", "",
         "| layer | from end | CV accuracy (in-dist) | RMB selection accuracy |", "|---|---|---|---|"]
    for r in rows:
        mark = " **(rule)**" if r["layer"] == ch["layer"] else (" (shipped)" if r["layer_from_end"] == layer else "")
        L.append(f"| {r['layer']} | {r['layer_from_end']}{mark} | {r['cv_accuracy']:.3f} | {r['ood_accuracy']:.3f} |")
    return L + ["", "</details>", ""]


def _counts(jsonl: Path) -> str:
    c: dict[str, int] = {}
    for line in jsonl.read_text().splitlines():
        s = json.loads(line).get("source", "?").split("/")[0]
        c[s] = c.get(s, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items()))


def skipped_why(report: dict) -> str:
    """'N skipped: n1 why1, n2 why2' from an extract report's skipped rows."""
    skipped = report.get("skipped", [])
    why = Counter("over the length limit" if "tokens:" in s["reason"] else
                  "with an empty response (which the armo that extracted them refused)" if s["reason"].endswith("empty response")
                  else s["reason"] for s in skipped)
    return f"{len(skipped)} skipped" + (": " + ", ".join(f"{n} {w}" for w, n in why.most_common()) if skipped else "")


def write_card(model_dir: Path, model: ArmoModel, work: Path, q: dict, probe: dict, produced_by: str) -> None:
    reg = model.regression.meta.to_json()
    dec = model.decorrelation.meta.to_json()
    gat = model.gating.meta.to_json()
    feats = {n: Features.load(work / f"{n}.features.safetensors").meta for n in ("ratings", "pairs")}
    layer = model.meaning.layer
    L = ["# armo default model: SmolLM2-135M-Instruct + ArmoRM-MoE heads", "",
         "Trained by `recipes/train_default.sh` (features) and `recipes/fit_default.sh` (heads); every number below "
         "was written by `recipes/default_model_quality.py` from that run, and by `studies/layer_probe.py` for "
         "the layer table.", "",
         "## How it was produced", "",
         f"`{produced_by}` on a 2-core CPU (no GPU), with armo's own commands: extract (hidden layer {layer}, "
         f"{POOLING_TEXT[model.meaning.pooling]}), "
         "fit-regression (ridge objectives from ratings, a length-derived `verbosity` objective, and a `preference` "
         "objective fitted from the training pairs by a Bradley-Terry head, cross-fitted by prompt"
         + (f"; the rating and preference heads fitted blind to form: `--invariant-to` {inv['pairs']} training swaps "
            f"(`studies/style_swaps.py`: the same words in markdown and in prose, padded and not), their top "
            f"{inv['rank']} directions projected out, which hold {inv['explained']:.0%} of the swaps' differences; #46"
            if (inv := reg.get("invariance")) else "")
         + "), fit-decorrelation against verbosity on the training pairs, fit-gating (gate settings chosen on an RMB "
         "selection slice), assemble."
         + (f" The RMB evaluation figures are on the slice's first {q['results']['RMB (out of distribution)']['full model']['n']} "
            "scorable pairs (of 700 drawn; the full 2,000-pair slice is `RMB_FULL=1`)."
            if SETS["RMB (out of distribution)"] == "rmb-eval700" and "RMB (out of distribution)" in q["results"] else ""), "",
         "## Backbone and feature layer", "",
         f"- `{reg['backbone']['name']}` (fingerprint `{reg['backbone']['fingerprint'][:24]}`), d = {reg['hidden_size']}, "
         f"gate rule `{model.gate_rule}`, features from hidden layer {layer} (counted from the end; -1 is the last "
         "layer after the final norm; intermediate layers are the residual stream before any norm), "
         f"{POOLING_TEXT[model.meaning.pooling]} (`--pooling {model.meaning.pooling}`)", "",
         f"Layer choice (`studies/layer_probe.py`): a linear Bradley-Terry probe per layer on {probe['train_pairs']} "
         f"permissive training pairs, scored in distribution (5-fold CV grouped by prompt) and on {probe['ood_pairs']} "
         "RMB pairs of the *selection* half of RMB's prompts (the evaluation slice below comes from the other half). "
         "Out of distribution no layer is clearly better than chance (95% intervals about ±0.07), so the rule is: among "
         "the layers whose selection accuracy is within 0.02 of the best, the one with the best in-distribution accuracy.", "",
         "<details><summary>probe table (all layers)</summary>", "", "| layer | from end | CV accuracy (in-dist) | RMB selection accuracy |",
         "|---|---|---|---|"]
    for r in probe["layers"]:
        mark = " **(chosen)**" if r["layer_from_end"] == layer else ""
        L.append(f"| {r['layer']} | {r['layer_from_end']}{mark} | {r['cv_accuracy']:.3f} | {r['ood_accuracy']:.3f} |")
    L += ["", "</details>", ""]
    for name in ("layer_probe_recipe_mean.json", "layer_probe_recipe.json"):  # mean-pooled, then last-token
        L += probe_on_recipe(RESULTS / name, layer)
    L += ["## Training data (permissively licensed sources of ../shared/data only)", ""]
    for name, fn in (("stage 1 ratings", "ratings.jsonl"), ("preference objective, decorrelation and gate pairs", "pairs.jsonl"),
                     ("held-out pairs (evaluation only)", "heldout.jsonl"),
                     ("RMB evaluation slice", f"{SETS['RMB (out of distribution)']}.jsonl"),
                     ("RMB selection slice (chose the gate)", "rmb-select.jsonl")):
        if (work / fn).exists():
            L.append(f"- {name}: {_counts(work / fn)}")
    fr, fp = feats["ratings"], feats["pairs"]
    L += [f"- rows used: ratings {len(fr.ids)} ({skipped_why(fr.report)}, "
          f"{len(fr.report.get('truncated', []))} prompt-truncated), pairs {len(fp.ids)} ({skipped_why(fp.report)}), "
          f"max length {fp.max_length} tokens",
          "- training rows whose prompt text recurs in an evaluation set were dropped (`recipes/recipe_slices.py`).", "",
          "Licences: UltraFeedback, HH-RLHF, USR Topical-Chat (MIT); Prometheus, PandaLM (Apache-2.0); XSTest (CC-BY-4.0). "
          "RMB (no licence file) only evaluates and selects; it never trains.", "",
          "## Objectives and scales", "", "| objective | scale mapped to [0,1] | strength | validation | n train |", "|---|---|---|---|---|"]
    for o in model.objectives:
        s, m = reg["scales"][o], reg["metrics"][o]
        scale = f"log1p(tokens) {s['lo']:.2f}..{s['hi']:.2f}" if s["transform"] == "log1p" else f"{s['lo']:.3g}..{s['hi']:.3g}"
        if m.get("val_accuracy") is not None:
            val = f"cross-validated pair accuracy {m['val_accuracy']:.3f}"
            strength = f"C {m['C']:g}"
        else:
            val = "n/a" if m.get("pearson") is None else f"Pearson {m['pearson']:.3f}"
            strength = f"alpha {m['alpha']:g}"
        L.append(f"| {o} | {scale} | {strength} | {val} | {m['n_train']} |")
    pref = reg.get("preference") or {}
    if pref:
        L += ["", f"The `{pref['objective']}` objective's strength C is chosen by {pref['folds']}-fold cross-validation grouped "
              "by prompt, and the same folds cross-fit it: every pair the gate and the decorrelation learn from gets a reward "
              "from a head that never saw it; the shipped head is fitted on all pairs."
              + (" It is fitted on the features in units of their standard deviation over the training responses (each "
                 "fold head over its own), so that the L2 penalty weighs every dimension alike, and stored in the "
                 "features' own units." if pref.get("feature_scale") else "")]
    L += ["", "## Decorrelation", "", f"Method {dec.get('method')}, against `{dec.get('verbosity')}`, "
          f"{dec.get('reference_rows')} reference responses (the training pairs).", "",
          "| objective | lambda | corr before | corr after |", "|---|---|---|---|"]
    for o, r in dec.get("objectives_report", {}).items():
        L.append(f"| {o} | {r['lambda']:.4f} | {r['before']:+.4f} | {r['after']:+.4f} |")
    c, t = gat["config"], gat["training"]
    blocked = gat.get("blocked_objectives") or []
    L += ["", "## Gate", "", (f"MLP {c['n_hidden']} x {c['hidden_dim']}, dropout {c['dropout']}" if c['n_hidden'] else
                                    "linear (no hidden layer)") + f", temperature {c['temperature']}; "
          f"AdamW lr {t['lr']}, weight decay {t['weight_decay']}, batch {t['batch_size']}, at most {t['steps']} steps (ran "
          f"{t['steps_run']}, best at {t['best_step']}), seed {t['seed']}; {gat['pairs']['train']} train / {gat['pairs']['val']} "
          "validation pairs (early stopping)."]
    if blocked:
        L.append(f"Objectives out of the gate's choices (zero after decorrelation): {', '.join(blocked)}.")
    sel = q.get("gate_selection")
    if sel:
        L += ["", f"Gate settings chosen on the RMB selection slice ({sel['n']} pairs; rule: {sel['rule']}):", "",
              "| candidate | selection accuracy | 95% CI | in-distribution validation accuracy |", "|---|---|---|---|"]
        for r in sel["candidates"]:
            s = r["selection"]
            v = r["in_distribution_val_accuracy"]
            L.append(f"| {r['name']}{' **(chosen)**' if r['name'] == sel['chosen'] else ''} | {s['accuracy']:.3f} | "
                     f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] | {'' if v is None else f'{v:.3f}'} |")
        u = sel["uniform_weights"]
        L.append(f"| uniform weights | {u['accuracy']:.3f} | [{u['ci95'][0]:.3f}, {u['ci95'][1]:.3f}] | |")
    L += ["", "## Measured quality", "", "Accuracy: chosen scored strictly higher (ties count as losses), 95% bootstrap intervals. "
          "\"full - this\": paired bootstrap interval of the full model's accuracy minus the scorer's (positive: the full "
          "model is better). Longer wins: share of pairs with different lengths where the longer response scores higher.", ""]
    for set_name, rs in q["results"].items():
        L += [f"### {set_name}", "", "| scorer | accuracy | 95% CI | full - this | Spearman(score, length) | longer wins (model / labels) |",
              "|---|---|---|---|---|---|"]
        for sname, v in rs.items():
            lb, d = v["length_bias"], v.get("full_minus_this")
            dd = f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else ""
            L.append(f"| {sname} | {v['accuracy']:.3f} | [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] | {dd} | "
                     f"{lb['spearman_score_length']:+.3f} | {lb['longer_wins_model']:.3f} / {lb['longer_wins_labels']:.3f} |")
        L.append("")
    if (work / "candidates.json").exists():  # #33: recipes/default_model_candidates.py's table and decision
        from default_model_candidates import card_section

        L += card_section(json.loads((work / "candidates.json").read_text()))
    elif PREVIOUS_CARD is not None and "## Which candidate ships (#33)" in PREVIOUS_CARD.read_text():
        old = PREVIOUS_CARD.read_text().split("## Which candidate ships (#33)")[1].split("\n## ")[0]
        L += ["## Which candidate ships (#33)", "",
              "*Measured on the model before #46's refit (today's recipe then, without `--invariant-to`) and not re-run "
              "with it: the candidates' features (the LM objectives, the stage-0 adapter) were not extracted again. The "
              "tables are as they were.*", old.strip("\n"), ""]
    L += ["## What the gate does: mean share of the gate's weight per objective, by source or subset", "",
          "Shares sum to 1 per row (the gate's learned scale is common to all prompts). Accuracy is the full model's on those pairs.", ""]
    short = [o for o in model.objectives if o not in blocked]
    for set_name, groups in q["gate_weights_by_group"].items():
        L += [f"### {set_name}", "", "| group | n | accuracy | " + " | ".join(short) + " |", "|---|---|---|" + "---|" * len(short)]
        for name, v in groups.items():
            L.append(f"| {name} | {v['n']} | {v['accuracy']:.3f} | " + " | ".join(f"{v['weights'][o]:.2f}" for o in short) + " |")
        L.append("")
    L += ["## Findings (computed from the tables above)", ""] + [f"- {x}" for x in findings(q, model, blocked)] + [""]
    if (RESULTS / "style_probe.json").exists():  # #46: what the model pays for style
        import sys

        sys.path.insert(0, str(ROOT.parent / "studies"))
        from style_probe import card_section as style_section

        L += style_section(json.loads((RESULTS / "style_probe.json").read_text()))
        if (RESULTS / "style_candidates.json").exists():  # #46's candidates and the rule's verdict
            from style_candidates_table import card_section as candidates_section

            L += candidates_section(json.loads((RESULTS / "style_candidates.json").read_text()))
    done, now = studies(RESULTS), current_studies(RESULTS)
    if done or now:
        L += ["## Studies toward the targets, not adopted", ""]
    if now:
        L += ["On the shipped recipe's features (layer -18, mean pooling):", ""] + [f"- {x}" for x in now] + [""]
    if done:
        L += ["These studies ran on last-token features at the same layer (the default model before `--pooling mean`), with the preference head fitted on unscaled features (before its feature scale).",
              ""] + [f"- {x}" for x in done] + [""]
    L += ["## Targets (from the issue), as measured", "", "| target | measured | met |", "|---|---|---|"]
    for t in q["targets"]:
        L.append(f"| {t['target']} | {t['measured']} | {'yes' if t['pass'] else '**no**'} |")
    rmb = q["results"].get("RMB (out of distribution)", {})
    best = max(rmb.items(), key=lambda kv: kv[1]["accuracy"]) if rmb else None
    L += ["", "A 135M general-purpose backbone is weak at judging responses: read these numbers as an honest, reproducible "
          "baseline, not a strong reward model." + (f" Out of distribution (RMB) the best scorer, {best[0]}, reaches "
                                                    f"{best[1]['accuracy']:.3f}." if best else ""), ""]
    (model_dir / "MODEL_CARD.md").write_text("\n".join(L))


if __name__ == "__main__":
    main()
