"""The fit jobs, `armo fit-regression`, `fit-decorrelation` and `fit-gating`: read features, check what they mean, run a
stage's maths (regression.py, decorrelation.py, gating.py), write the artifact (heads.py) and return a report, which
the CLI draws (cli.py): nothing here prints a table."""
from __future__ import annotations

import dataclasses
import time

import torch

from .artifact_files import save_artifact
from .artifacts import DecorrelationMeta, GatingMeta, RegressionMeta
from .configs import DecorrelationConfig, GatingConfig, RegressionConfig
from .console import progress
from .decorrelation import centered, centered_corr, correlation, set_transform, solve_lambda, solve_set, transform_matrix
from .style import parse_style_objectives
from .devices import auto_device
from .errors import ArmoError
from .features import Features
from .invariance import invariant_basis, project_out
from .gating import (adjusted_rewards, accuracy, best_single_objective, blocked_objectives, bt_loss, grouped_split,
                     pair_scores, sized_steps, train_bt, train_linear_bt)
from .heads import Decorrelation, Gate, Regression, apply_scale, regression_hash, transform_hash
from .jsonl import dumps, sha256_json
from .lm_objectives import parse_lm_objectives
from .options import validate
from .outputs import check_outputs, write_text_atomic
from .preference import fit_preference
from .provenance import FeatureMeaning, require_compatible, require_one_meaning
from .regression import ridge_path, split_mask
from .version import __version__


def _parse_scale(values: torch.Tensor, name: str, declared: tuple[float, float] | None) -> dict:
    v = values[~torch.isnan(values)]
    lo, hi = declared if declared is not None else (float(v.min()), float(v.max()))
    return {"lo": float(lo), "hi": float(hi), "transform": "linear", "declared": declared is not None}



def fit_regression(cfg: RegressionConfig) -> dict:
    """Run `armo fit-regression` and return its report."""
    validate(cfg)
    check_outputs(cfg.output, cfg.json, [*cfg.features, *cfg.pairs, *cfg.invariant_to])
    if bool(cfg.pairs) != bool(cfg.preference_objective):
        raise ArmoError("--pairs and --preference-objective go together")
    if not cfg.features and not cfg.pairs:
        raise ArmoError("fit-regression: give at least one features file with ratings, or --pairs with --preference-objective")
    t0 = time.perf_counter()
    feats = [Features.load(p) for p in cfg.features]
    pair_feats = [Features.load(p) for p in cfg.pairs]
    for f in pair_feats:
        if not f.pair:
            raise ArmoError(f"--pairs {f.path}: features without pairs (extract rows with 'chosen' and 'rejected')")
    swap_feats = [Features.load(p) for p in cfg.invariant_to]
    meaning = require_one_meaning([(f.meaning(prompt=False), f.path) for f in feats + pair_feats + swap_feats])
    Q, invariance = (invariant_basis(swap_feats, cfg.invariant_rank) if swap_feats else (None, None))
    objectives: list[str] = []
    for f in feats:
        for o in f.meta.objectives:
            if o not in objectives:
                objectives.append(o)
    style = parse_style_objectives(cfg.style_objectives) if cfg.style_objectives else []
    for name, flag in ((cfg.length_objective, "--length-objective"), (cfg.preference_objective, "--preference-objective"),
                       *((n, "--style-objectives") for n in style)):
        if name and name in objectives:
            raise ArmoError(f"{flag} {name}: the data already rates an objective of that name")
    if {cfg.length_objective, cfg.preference_objective} & set(style):
        raise ArmoError("--style-objectives: a name that --length-objective or --preference-objective takes")
    if cfg.length_objective and cfg.length_objective == cfg.preference_objective:
        raise ArmoError("--length-objective and --preference-objective: give them different names")
    X_parts, Y_parts, L_parts = [], [], []
    origins: list[tuple[str, str]] = []  # (file, row id) of each response row, to name a bad rating
    for f in feats or pair_feats:  # without ratings, the length objective learns from the pairs' responses
        X = f.responses()
        origins += [(str(f.path), rid) for rid in f.ids for _ in range(X.shape[0] // max(len(f.ids), 1))]
        lab = f.tensors.get("labels")
        Y = torch.full((X.shape[0], len(objectives)), float("nan"))
        if lab is not None:
            if f.pair:
                raise ArmoError(f"{f.path}: pair features carry no ratings")
            for c, o in enumerate(f.meta.objectives):
                Y[:, objectives.index(o)] = lab[:, c]
        X_parts.append(X)
        Y_parts.append(Y)
        L_parts.append(f.response_lengths().float())
    X = torch.cat(X_parts)
    Y = torch.cat(Y_parts)
    lengths = torch.cat(L_parts)
    for o, (lo, hi) in cfg.ranges.items():
        if o not in objectives:
            raise ArmoError(f"--range {o}: no such objective (the data has: {', '.join(objectives) or 'none'})")
        y = Y[:, objectives.index(o)]
        rated = ~torch.isnan(y)
        outside = rated & ((y < lo) | (y > hi))
        if outside.any():  # a declared range the data does not keep is a wrong scale, never mapped silently
            i = int(outside.nonzero()[0])
            raise ArmoError(f"{origins[i][0]}: row {origins[i][1]!r}: field 'ratings.{o}' = {float(y[i]):g} is outside "
                            f"--range {o}={lo:g}:{hi:g} ({int(outside.sum())} of {int(rated.sum())} rated rows are; "
                            f"the data spans {float(y[rated].min()):g}..{float(y[rated].max()):g})")
    scales = {o: _parse_scale(Y[:, j], o, cfg.ranges.get(o)) for j, o in enumerate(objectives)}
    if cfg.length_objective:
        ll = torch.log1p(lengths)
        scales[cfg.length_objective] = {"lo": float(ll.min()), "hi": float(ll.max()), "transform": "log1p", "declared": False}
        Y = torch.cat([Y, lengths[:, None]], dim=1)
        objectives = objectives + [cfg.length_objective]
    if style:  # marks per token of each training response, read from its text at extraction (style.py)
        D = torch.cat([f.style_densities(style) for f in feats or pair_feats]).float()
        for j, name in enumerate(style):
            scales[name] = {"lo": float(D[:, j].min()), "hi": float(D[:, j].max()), "transform": "linear",
                            "declared": False}
        Y = torch.cat([Y, D], dim=1)
        objectives = objectives + style
    if not objectives and not cfg.preference_objective:
        raise ArmoError("fit-regression: the features carry no labels (extract rows with 'ratings', or add --length-objective)")
    keep, skipped = [], {}
    for j, o in enumerate(objectives):
        n_lab = int((~torch.isnan(Y[:, j])).sum())
        sc = scales[o]
        if n_lab < cfg.min_rows:
            skipped[o] = f"only {n_lab} labelled rows (need {cfg.min_rows})"
        elif sc["hi"] <= sc["lo"]:
            skipped[o] = "constant labels: no range to scale to [0,1]"
        else:
            keep.append(j)
    for o, why in skipped.items():
        if cfg.strict:
            raise ArmoError(f"objective {o!r}: {why}")
    if not keep and not cfg.preference_objective:
        raise ArmoError("fit-regression: no objective has enough labelled rows")
    objectives = [objectives[j] for j in keep]
    scales = {o: scales[o] for o in objectives}
    t1 = time.perf_counter()
    if keep:
        Y = torch.stack([apply_scale(Y[:, j], scales[objectives[i]]) for i, j in enumerate(keep)], dim=1)
        train = split_mask(X.shape[0], cfg.val_fraction, cfg.seed)
        fit = lambda X_, cols: ridge_path(X_, Y[:, cols], train, cfg.alphas, cfg.intercept, cfg.refit,  # noqa: E731
                                          auto_device(cfg.device))
        if Q is None:
            res = fit(X, list(range(len(objectives))))
            weight, bias, alphas, ridge_metrics = res.weight, res.bias, res.alphas, res.metrics
        else:  # rating heads blind to form; the length and style heads read it (they measure it)
            form = [i for i, o in enumerate(objectives) if o in style or o == cfg.length_objective]
            blind = [i for i in range(len(objectives)) if i not in form]
            weight, bias = torch.zeros(len(objectives), X.shape[1], dtype=torch.float64), torch.zeros(len(objectives), dtype=torch.float64)
            alphas, ridge_metrics = [None] * len(objectives), [None] * len(objectives)
            for cols, X_ in ((blind, project_out(X, Q)), (form, X)):
                if not cols:
                    continue
                res = fit(X_, cols)
                w = res.weight.double()
                weight[cols] = project_out(w, Q) if X_ is not X else w  # exact: (x P).w = x.(P w)
                bias[cols] = res.bias.double()
                for j, c in enumerate(cols):
                    alphas[c], ridge_metrics[c] = res.alphas[j], res.metrics[j]
            weight, bias = weight.to(res.weight.dtype), bias.to(res.bias.dtype)
    else:
        weight, bias, alphas, ridge_metrics = torch.zeros(0, X.shape[1]), torch.zeros(0), [], []
    metrics = {o: m for o, m in zip(objectives, ridge_metrics)}
    tensors = {}
    preference = None
    if cfg.preference_objective:
        R = torch.cat([f.tensors["response_features"] for f in pair_feats])
        groups = [h for f in pair_feats for h in (f.meta.prompt_hashes or f.ids)]
        if len(set(groups)) < cfg.preference_folds:
            raise ArmoError(f"--pairs: {len(set(groups))} distinct prompts, fewer than --preference-folds "
                            f"{cfg.preference_folds}; the preference head needs a prompt in every fold")
        head = fit_preference(R if Q is None else project_out(R, Q), groups, seed=cfg.seed, folds=cfg.preference_folds)
        if Q is not None:  # stored as rows on raw features, exactly (see invariance.py)
            head.weight, head.fold_weight = project_out(head.weight, Q), project_out(head.fold_weight, Q)
        name = cfg.preference_objective
        weight = torch.cat([weight, head.weight[None]])
        bias = torch.cat([bias, torch.tensor([head.bias], dtype=bias.dtype)])
        objectives = objectives + [name]
        scales[name] = {"lo": head.lo, "hi": head.hi, "transform": "linear", "declared": False, "source": "pairs"}
        hm = head.metrics
        # cross-validated: every pair trains K-1 fold heads and validates the other one
        metrics[name] = {"n_train": hm["n_pairs"], "n_val": hm["n_pairs"], "alpha": 1.0 / head.C,
                         "mse": None, "pearson": None, "spearman": None, "C": head.C,
                         "val_accuracy": hm["val_accuracy"], "grid": hm["grid"]}
        alphas = alphas + [1.0 / head.C]
        tensors = {"preference_fold_weight": head.fold_weight, "preference_fold_bias": head.fold_bias}
        preference = {"objective": name, "C": head.C, "folds": cfg.preference_folds, "fold_of": head.fold_of,
                      "pairs": [{"path": f.path, "input_hash": f.meta.input_hash, "rows": len(f.ids)} for f in pair_feats],
                      "selection": hm["selection"], "val_accuracy": hm["val_accuracy"],
                      "train_accuracy": hm["train_accuracy"], "feature_scale": hm["feature_scale"]}
    lm = parse_lm_objectives(cfg.lm_objectives)
    if lm:
        weight, bias, lm_weight = _lm_columns(lm, pair_feats or feats, objectives, scales, metrics, weight, bias)
        objectives = objectives + lm
        alphas = alphas + [None] * len(lm)
        tensors["lm_weight"] = lm_weight
    solve_s = time.perf_counter() - t1
    report = {
        "kind": "regression", "armo_version": __version__, "objectives": objectives, "scales": scales,
        "alphas": dict(zip(objectives, alphas)), "alpha_grid": cfg.alphas, "metrics": metrics,
        "skipped_objectives": skipped, "intercept": cfg.intercept, "refit": cfg.refit,
        "val_fraction": cfg.val_fraction, "seed": cfg.seed, "length_objective": cfg.length_objective,
        "style_objectives": style or None,
        "invariance": invariance and dict(invariance, inputs=[{"path": f.path, "input_hash": f.meta.input_hash,
                                                                "rows": len(f.ids)} for f in swap_feats],
                                          blind=[o for o in objectives if o not in (style or []) and
                                                 o != cfg.length_objective and o not in (lm or [])]),
        "preference": preference, "lm_objectives": lm or None,
        "backbone": (feats or pair_feats)[0].backbone, "hidden_size": X.shape[1], "feature_meaning": meaning.to_json(),
        "inputs": [{"path": f.path, "input_hash": f.meta.input_hash, "rows": len(f.ids)} for f in feats],
        "rows": X.shape[0], "solve_seconds": solve_s, "seconds": time.perf_counter() - t0,
    }
    if Q is not None:
        tensors["invariant_basis"] = Q.float()
    save_artifact(cfg.output, {"weight": weight, "bias": bias, **tensors}, RegressionMeta.from_json(report, cfg.output))
    if cfg.json:
        brief = {k: v for k, v in preference.items() if k != "fold_of"} if preference else None  # no prompt map
        write_text_atomic(cfg.json, dumps(dict(report, preference=brief), indent=2) + "\n")
    return report



def _lm_columns(lm: list[str], feats: list[Features], objectives: list[str], scales: dict, metrics: dict,
                weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The LM objectives as reward columns: each mapped onto [0,1] by its range over the training responses of
    `feats` (`scales`, `metrics` gain them). Returns the weight and bias with a zero row / the offset for each,
    and lm_weight [k, q]: 1/(hi - lo) where objective row meets its LM column."""
    d = weight.shape[1]
    values = torch.cat([f.responses(lm, "--lm-objectives")[:, d:] for f in feats])
    k0, q = len(objectives), len(lm)
    lm_weight = torch.zeros(k0 + q, q)
    offsets = []
    for c, name in enumerate(lm):
        v = values[:, c]
        lo, hi = float(v.min()), float(v.max())
        if not hi > lo:
            raise ArmoError(f"--lm-objectives {name}: constant over the {v.numel()} training responses; nothing to scale to [0,1]")
        scales[name] = {"lo": lo, "hi": hi, "transform": "linear", "declared": False, "source": "lm"}
        metrics[name] = {"n_train": v.numel(), "n_val": 0, "alpha": None, "mse": None, "pearson": None, "spearman": None,
                         "source": "lm"}
        lm_weight[k0 + c, c] = 1.0 / (hi - lo)
        offsets.append(-lo / (hi - lo))
    weight = torch.cat([weight, torch.zeros(q, d, dtype=weight.dtype)])
    bias = torch.cat([bias, torch.tensor(offsets, dtype=bias.dtype)])
    return weight, bias, lm_weight



def _response_groups(f: Features) -> list[str]:
    """The prompt key of each response of `f.responses()` (pairs: chosen then rejected of each row)."""
    keys = f.meta.prompt_hashes or f.ids
    return [k for k in keys for _ in range(2)] if f.pair else list(keys)



def fit_decorrelation(cfg: DecorrelationConfig) -> dict:
    """Run `armo fit-decorrelation` and return its report."""
    validate(cfg)
    check_outputs(cfg.output, cfg.json, [cfg.regression, *cfg.features])
    reg = Regression.load(cfg.regression)
    against = [a.strip() for a in cfg.against.split(",") if a.strip()] if cfg.against is not None else [cfg.verbosity]
    if cfg.verbosity not in reg.objectives and against == [cfg.verbosity]:
        raise ArmoError(f"--verbosity {cfg.verbosity}: not an objective of {cfg.regression} "
                        f"(it has: {', '.join(reg.objectives)}; add one with fit-regression --length-objective)")
    for a in against:
        if a not in reg.objectives:
            raise ArmoError(f"--against {cfg.against}: {a!r} is not an objective of {cfg.regression} (it has: "
                            f"{', '.join(reg.objectives)})")
    if not against or len(set(against)) != len(against):
        raise ArmoError(f"--against {cfg.against}: name each objective once")
    closed_form = len(against) > 1 or cfg.within == "prompt"
    if closed_form and cfg.method != "pearson":
        raise ArmoError(f"{'--against ' + cfg.against if len(against) > 1 else '--within prompt'}: solved in closed form "
                        f"for Pearson correlation; add --method pearson")
    if not cfg.features:
        raise ArmoError("fit-decorrelation: give at least one reference features file")
    feats = [Features.load(p) for p in cfg.features]
    for f in feats:
        require_compatible(reg.meaning, f.meaning(prompt=False), cfg.regression, f.path)
    # out-of-fold rewards for a preference objective fitted on these pairs (its in-sample rewards would be
    # optimistic, and the transform would be fitted to them)
    R = torch.cat([reg.rewards_out_of_fold(f.responses(reg.lm_objectives, "the regression"), _response_groups(f))
                   for f in feats])
    if R.shape[0] < cfg.min_rows:
        raise ArmoError(f"reference set: {R.shape[0]} responses, need at least {cfg.min_rows}")
    if closed_form:
        return _fit_set_decorrelation(cfg, reg, feats, R, against)
    v = reg.objectives.index(against[0])
    rv = R[:, v]
    if float(rv.std()) == 0.0:
        raise ArmoError("reference set: the verbosity reward is constant, nothing to decorrelate against")
    corr = correlation(cfg.method)
    lambdas = torch.zeros(len(reg.objectives))
    rows = {}
    for i, o in enumerate(reg.objectives):
        before = corr(R[:, i], rv)
        if i == v:
            lambdas[i] = 1.0
            rows[o] = {"lambda": 1.0, "before": before, "after": 0.0, "status": "verbosity"}
            continue
        lam, after, status = solve_lambda(R[:, i], rv, cfg.method, cfg.tolerance, cfg.lambda_range)
        lambdas[i] = lam
        rows[o] = {"lambda": lam, "before": before, "after": after, "status": status}
    T = transform_matrix(lambdas, v)
    ref_hash = sha256_json([f.meta.input_hash for f in feats] + [f.meta.settings_key for f in feats])
    report = {
        "kind": "decorrelation", "armo_version": __version__, "objectives": reg.objectives, "verbosity": against[0],
        "against": against, "within": "set",
        "method": cfg.method, "tolerance": cfg.tolerance, "lambda_range": cfg.lambda_range, "objectives_report": rows,
        "reference_hash": ref_hash, "reference_rows": R.shape[0], "backbone": reg.meta.backbone,
        "feature_meaning": reg.meaning.to_json(),
        "regression_hash": regression_hash(reg),
    }
    return _write_decorrelation(cfg, report, T, lambdas)


def _write_decorrelation(cfg: DecorrelationConfig, report: dict, T: torch.Tensor, lambdas: torch.Tensor) -> dict:
    save_artifact(cfg.output, {"transform": T, "lambdas": lambdas}, DecorrelationMeta.from_json(report, cfg.output))
    if cfg.json:
        write_text_atomic(cfg.json, dumps(report, indent=2) + "\n")
    return report


def _fit_set_decorrelation(cfg: DecorrelationConfig, reg: Regression, feats: list[Features], R: torch.Tensor,
                           against: list[str]) -> dict:
    """Decorrelation against several objectives, or within each prompt: one closed-form solve (decorrelation.solve_set);
    the report gives each objective's lambda and its correlation with each of them before and after."""
    groups = [k for f in feats for k in _response_groups(f)] if cfg.within == "prompt" else None
    idx = [reg.objectives.index(a) for a in against]
    try:
        lam = solve_set(R, idx, groups)
    except ValueError as e:
        raise ArmoError(f"reference set: {e}; nothing to decorrelate against") from None
    T = set_transform(lam, idx)
    before, after = centered(R, groups), centered(R.double() @ T.double(), groups)
    rows = {}
    for i, o in enumerate(reg.objectives):
        b = {a: centered_corr(before, i, j) for a, j in zip(against, idx)}
        c = {a: 0.0 if i in idx else centered_corr(torch.cat([after[:, i:i + 1], before[:, idx]], 1), 0, 1 + n)
             for n, a in enumerate(against)}
        worst = max((abs(x) for x in c.values() if x is not None), default=0.0)
        rows[o] = {"lambda": {a: float(lam[n, i]) for n, a in enumerate(against)}, "before": b, "after": c,
                   "status": "against" if i in idx else ("ok" if worst <= cfg.tolerance else "tolerance-not-reached")}
    ref_hash = sha256_json([f.meta.input_hash for f in feats] + [f.meta.settings_key for f in feats])
    report = {
        "kind": "decorrelation", "armo_version": __version__, "objectives": reg.objectives,
        "verbosity": cfg.verbosity if cfg.verbosity in against else None, "against": against, "within": cfg.within,
        "method": "pearson", "tolerance": cfg.tolerance, "lambda_range": None, "objectives_report": rows,
        "reference_hash": ref_hash, "reference_rows": R.shape[0],
        "reference_groups": len(set(groups)) if groups is not None else None, "backbone": reg.meta.backbone,
        "feature_meaning": reg.meaning.to_json(), "regression_hash": regression_hash(reg),
    }
    return _write_decorrelation(cfg, report, T, lam.float())



def _load_parts(features: list[str], regression: str, decorrelation: str | None):
    reg = Regression.load(regression)
    if decorrelation:
        dec = Decorrelation.load(decorrelation)
        if dec.meta.objectives != reg.objectives:
            raise ArmoError(f"{decorrelation}: objectives {dec.meta.objectives} differ from {regression}'s {reg.objectives}")
        if dec.meta.regression_hash not in (None, regression_hash(reg)):
            raise ArmoError(f"{decorrelation}: fitted on another regression artifact than {regression}")
        require_compatible(reg.meaning, FeatureMeaning.of(dec.meta, decorrelation, prompt=False), regression, decorrelation)
    else:
        dec = Decorrelation.identity(reg.objectives)
    feats = [Features.load(p) for p in features]
    for f in feats:
        require_compatible(reg.meaning, f.meaning(prompt=False), regression, f.path)
        if not f.pair:
            raise ArmoError(f"{f.path}: features without pairs (extract rows with 'chosen' and 'rejected')")
    # the gate reads prompt features: all of them at one position (gate rule), recorded with the gate
    meaning = require_one_meaning([(f.meaning(prompt=True), f.path) for f in feats], prompt=True)
    return reg, dec, feats, meaning



def fit_gating(cfg: GatingConfig) -> dict:
    """Run `armo fit-gating` and return its report."""
    validate(cfg)
    check_outputs(cfg.output, cfg.json, [cfg.regression, cfg.decorrelation, *cfg.features])
    dev = auto_device(cfg.device)
    if not cfg.features:
        raise ArmoError("fit-gating: give at least one pair features file")
    t0 = time.perf_counter()
    reg, dec, feats, meaning = _load_parts(cfg.features, cfg.regression, cfg.decorrelation)
    notes = ["no decorrelation artifact given: using the identity transform"] if dec.meta.identity else []
    torch.manual_seed(cfg.seed)
    P = torch.cat([f.tensors["prompt_features"] for f in feats]).float()
    Rf = torch.cat([f.inputs(reg.lm_objectives, "the regression") for f in feats]).float()
    groups = [h for f in feats for h in (f.meta.prompt_hashes or f.ids)]
    T = dec.transform
    radj = adjusted_rewards(reg, T, Rf, groups)  # [N,2,k], frozen; out-of-fold for the preference objective
    fold_of = (reg.meta.preference or {}).get("fold_of", {})
    out_of_fold = sum(1 for g in groups if g in fold_of)
    tr = grouped_split(groups, cfg.val_fraction, cfg.seed)
    va = ~tr
    if int(tr.sum()) == 0:
        raise ArmoError("fit-gating: no training pairs after the validation split")
    if cfg.steps is None:  # small data gets a short run, large data today's 2000 steps
        cfg = dataclasses.replace(cfg, steps=sized_steps(int(tr.sum()), cfg.batch_size))
        notes.append(f"{cfg.steps} steps at most (30 passes over {int(tr.sum())} training pairs; --steps sets it)")
    k = len(reg.objectives)
    gate = Gate(P.shape[1], k, cfg.hidden_dim, cfg.n_hidden, cfg.temperature, cfg.logit_scale, cfg.dropout)
    blocked = blocked_objectives(T)
    gate.block(blocked)
    # the gate and its inputs on one device (checked before any work); the artifact is saved from the CPU
    gate, P, Rf, radj = gate.to(dev), P.to(dev), Rf.to(dev), radj.to(dev)
    tr, va = tr.to(dev), va.to(dev)
    Ptr, Rtr, Pva, Rva = P[tr], radj[tr], P[va], radj[va]
    with progress(cfg.quiet) as pbar:
        task = pbar.add_task("fit-gating", total=cfg.steps, rate="")
        run = train_bt(gate, lambda idx: pair_scores(gate(Ptr[idx]), Rtr[idx]),
                       (lambda: pair_scores(gate(Pva), Rva)) if Pva.shape[0] else None, Ptr.shape[0], cfg,
                       on_eval=lambda step, vl: pbar.update(task, rate=f"val loss {vl:.4f}"),
                       on_step=lambda: (gate.block(blocked), pbar.update(task, advance=1)))
        pbar.update(task, completed=cfg.steps)
    gate.block(blocked)  # the restored best state too, exactly
    metrics = compare(gate, P, Rf, radj, tr, va, reg, cfg)
    report = {
        "kind": "gating", "armo_version": __version__, "objectives": reg.objectives,
        "config": {"in_features": P.shape[1], "hidden_dim": cfg.hidden_dim, "n_hidden": cfg.n_hidden,
                   "temperature": cfg.temperature, "dropout": cfg.dropout},
        "training": {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size, "steps": cfg.steps,
                     **run, "seed": cfg.seed, "val_fraction": cfg.val_fraction},
        "pairs": {"train": int(tr.sum()), "val": int(va.sum())}, "metrics": metrics,
        "backbone": reg.meta.backbone, "regression_hash": regression_hash(reg),
        "feature_meaning": meaning.to_json(), "gate_rule": meaning.gate_rule,
        "decorrelation": "identity" if dec.meta.identity else dec.meta.reference_hash,
        "transform_hash": transform_hash(T), "logit_scale": gate.logit_scale.item(),
        "preference_out_of_fold_pairs": out_of_fold, "blocked_objectives": [reg.objectives[j] for j in blocked],
        "seconds": time.perf_counter() - t0,
    }
    save_artifact(cfg.output, {k_: v.cpu() for k_, v in gate.state_dict().items()}, GatingMeta.from_json(report, cfg.output))
    if cfg.json:
        write_text_atomic(cfg.json, dumps(report, indent=2) + "\n")
    return {**report, "notes": notes}  # the notes are the CLI's to show, not the artifact's



@torch.no_grad()
def compare(gate: Gate, P, Rf, radj, tr, va, reg: Regression, cfg: GatingConfig) -> list[dict]:
    """The gate next to uniform weights, the best single objective and a linear BT control, on validation."""
    k = radj.shape[-1]
    out = []
    va_ = va if int(va.sum()) else tr

    def add(name: str, scores: torch.Tensor, **extra):
        out.append({"name": name, "accuracy": accuracy(scores), "loss": float(bt_loss(scores)), **extra})

    add("moe gate", pair_scores(gate(P[va_]), radj[va_]))
    add("uniform weights", pair_scores(torch.full((int(va_.sum()), k), 1.0 / k, device=radj.device), radj[va_]))
    j = best_single_objective(radj[tr])
    add(f"best single objective ({reg.objectives[j]})", radj[va_][:, :, j], objective=reg.objectives[j])
    with torch.enable_grad():
        w = train_linear_bt(Rf, tr, va, cfg)
    add("linear BT head (non-MoE)", Rf[va_] @ w)
    return out
