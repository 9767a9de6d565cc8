"""One preference head per training source, routed by a gate: does the mixture beat one head (#13)?

ArmoRM's idea is experts plus a prompt-dependent gate. Here the experts are Bradley-Terry heads
(`armo_cli.preference.fit_preference`, same grid and cross-fitting as the shipped `preference` objective),
one per source of the training pairs (the source is read from WORK/pairs.jsonl). Printed:
  1. each head's accuracy per held-out source, beside the one head fitted on all pairs;
  2. oracle routing (each pair scored by its own source's head) on the held-out pairs, and on the training
     pairs with out-of-fold rewards: the most a gate could get from these experts;
  3. learned gates (armo's `Gate`, trained by `train_bt` like `fit-gating`) over the experts alone, on
     standardised prompt features: accuracy on held-out and RMB selection pairs, and the mean weight share
     each held-out source's prompts give each expert.
Decorrelation is left out (the question is routing, not length).

    python studies/source_experts_study.py --work runs/default --json out.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from armo_cli.configs import GatingConfig
from armo_cli.features import Features
from armo_cli.heads import Gate
from armo_cli.gating import grouped_split, pair_scores, train_bt
from armo_cli.preference import PreferenceHead, fit_preference, out_of_fold

GATES = {"linear gate": {"n_hidden": 0}, "MLP 1x128 gate": {"n_hidden": 1, "hidden_dim": 128}}


def sources(work: Path, stem: str, ids: list[str]) -> list[str]:
    src = {}
    for line in (work / f"{stem}.jsonl").read_text().splitlines():
        r = json.loads(line)
        src[r["id"]] = r["source"].split("/")[0]
    return [src[i] for i in ids]


def acc(u: torch.Tensor) -> float:
    return float((u[:, 0] > u[:, 1]).double().mean())


def cross_fitted(h: PreferenceHead, R: torch.Tensor, groups: list[str]) -> torch.Tensor:
    """[N,2] rewards; pairs the head was fitted on get their fold's head (cross-fitting), others the full head."""
    return out_of_fold(R, groups, h.fold_weight, h.fold_bias, h.fold_of, R @ h.weight + h.bias)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/default")
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(args.work)
    tr = Features.load(work / "pairs.features.safetensors")
    ho = Features.load(work / "heldout.features.safetensors")
    sel = Features.load(work / "rmb-select.features.safetensors")
    R, P = tr.tensors["response_features"].float(), tr.tensors["prompt_features"].float()
    groups = tr.meta.prompt_hashes or tr.ids
    src_tr, src_ho = sources(work, "pairs", tr.ids), sources(work, "heldout", ho.ids)
    names = sorted(set(src_tr))
    heads = {"all pairs": fit_preference(R, groups)}
    for s in names:
        idx = [i for i, x in enumerate(src_tr) if x == s]
        heads[s] = fit_preference(R[idx], [groups[i] for i in idx])
    Rho = ho.tensors["response_features"].float()
    u_ho = {n: Rho @ h.weight + h.bias for n, h in heads.items()}
    out: dict = {"heads": {n: {"C": h.C, "n_pairs": h.metrics["n_pairs"]} for n, h in heads.items()}, "matrix": {}}
    print("1. accuracy of each head (rows) per held-out source (columns)")
    print("| head | " + " | ".join(f"{s} (n={src_ho.count(s)})" for s in names) + " | all |")
    for n, u in u_ho.items():
        row = {s: acc(u[torch.tensor([x == s for x in src_ho])]) for s in names} | {"all": acc(u)}
        out["matrix"][n] = row
        print(f"| {n} | " + " | ".join(f"{row[s]:.3f}" for s in [*names, 'all']) + " |")
    oracle_ho = torch.stack([u_ho[s][i] for i, s in enumerate(src_ho)])
    u_tr = {s: cross_fitted(heads[s], R, groups) for s in names}
    oracle_tr = torch.stack([u_tr[s][i] for i, s in enumerate(src_tr)])
    glob_tr = cross_fitted(heads["all pairs"], R, groups)
    out["oracle"] = {"heldout": acc(oracle_ho), "heldout_one_head": acc(u_ho["all pairs"]),
                     "train_out_of_fold": acc(oracle_tr), "train_out_of_fold_one_head": acc(glob_tr)}
    print(f"\n2. oracle routing: held-out {acc(oracle_ho):.3f} (one head {acc(u_ho['all pairs']):.3f}); "
          f"training pairs, out of fold {acc(oracle_tr):.3f} (one head {acc(glob_tr):.3f})")

    # 3. learned gates over the experts; prompt features standardised with the training pairs' statistics
    mu, sd = P.mean(0), P.std(0).clamp_min(1e-6)
    radj = torch.stack([u_tr[s] for s in names], -1)
    split = grouped_split(groups, 0.1, 0)
    Ptr, Rtr, Pva, Rva = (P[split] - mu) / sd, radj[split], (P[~split] - mu) / sd, radj[~split]
    evals = {"held-out": (ho, src_ho), "RMB selection": (sel, None)}
    out["gates"] = {}
    print("\n3. learned gates over the experts (accuracy; held-out: mean weight share per source)")
    for gname, kw in GATES.items():
        cfg = GatingConfig(features=[], regression="", output="", **{"steps": 2000, **kw})
        torch.manual_seed(cfg.seed)
        gate = Gate(P.shape[1], len(names), cfg.hidden_dim, cfg.n_hidden, cfg.temperature, cfg.logit_scale, cfg.dropout)
        train_bt(gate, lambda idx: pair_scores(gate(Ptr[idx]), Rtr[idx]), lambda: pair_scores(gate(Pva), Rva),
                 Ptr.shape[0], cfg)
        res = {}
        for ename, (f, src) in evals.items():
            Rf = f.tensors["response_features"].float()
            x = torch.stack([Rf @ heads[s].weight + heads[s].bias for s in names], -1)
            with torch.no_grad():
                w = gate((f.tensors["prompt_features"].float() - mu) / sd)
            res[ename] = {"accuracy": acc(pair_scores(w, x))}
            if src:
                share = w / w.sum(-1, keepdim=True)
                res[ename]["weight_share"] = {s: dict(zip(names, share[torch.tensor([y == s for y in src])].mean(0).tolist()))
                                              for s in names}
        out["gates"][gname] = res
        shares = "; ".join(f"{s}: " + "/".join(f"{v:.2f}" for v in d.values()) for s, d in res["held-out"]["weight_share"].items())
        print(f"- {gname}: held-out {res['held-out']['accuracy']:.3f}, RMB selection {res['RMB selection']['accuracy']:.3f}; "
              f"shares ({'/'.join(names)}) {shares}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
