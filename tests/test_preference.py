"""The preference objective: a Bradley-Terry head fitted from pairs, one more row of the regression layer,
cross-fitted so that a gate never learns on rewards from a head that saw the same pair."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from armo_cli.preference import fit_bt, fit_preference
from armo_cli.heads import Regression

from tests.helpers import armo, cli, make_features


def synthetic_pairs(n=600, d=12, seed=0):
    """Pairs whose preference follows a known linear utility u = x.w_true (Bradley-Terry noise)."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(d, generator=g)
    X = torch.randn(n, 2, d, generator=g)
    u = X @ w_true
    p_first = torch.sigmoid(u[:, 0] - u[:, 1])
    first = torch.rand(n, generator=g) < p_first
    R = torch.where(first[:, None, None], X, X.flip(1))  # chosen first
    groups = [f"g{i // 2}" for i in range(n)]  # two pairs per prompt
    return R, groups, w_true


def test_the_head_recovers_the_utilitys_direction():
    R, groups, w_true = synthetic_pairs()
    head = fit_preference(R, groups, folds=3)
    cos = torch.nn.functional.cosine_similarity(head.weight.double(), w_true.double(), dim=0)
    assert cos >= 0.95, float(cos)
    # rewards on [0,1] over the training responses, utility order kept
    r = R.reshape(-1, R.shape[-1]) @ head.weight + head.bias
    assert float(r.min()) == pytest.approx(0.0, abs=1e-5) and float(r.max()) == pytest.approx(1.0, abs=1e-5)


def test_the_head_does_not_depend_on_the_units_of_a_feature():
    """A middle layer's residual stream has a few dimensions far larger than the rest. The head is fitted on
    features in units of their standard deviation, so rescaling a dimension leaves its rewards and its
    strength as they were (an unscaled L2 penalty would all but exempt the large dimension)."""
    R, groups, _ = synthetic_pairs(n=300, d=8, seed=7)
    big = R.clone()
    big[..., 2] *= 100.0
    a, b = fit_preference(R, groups, folds=3), fit_preference(big, groups, folds=3)
    assert a.C == b.C
    ra = R.reshape(-1, 8) @ a.weight + a.bias
    rb = big.reshape(-1, 8) @ b.weight + b.bias
    assert torch.allclose(ra, rb, atol=1e-5)
    assert torch.allclose(b.weight[2] * 100.0, a.weight[2], rtol=1e-4)


def test_the_strength_chosen_by_cross_validation_matches_scikit_learn_on_the_same_grid_and_folds():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    R, groups, _ = synthetic_pairs(n=400, d=10, seed=3)
    grid = [1e-3, 1e-2, 1e-1, 1.0]
    head = fit_preference(R, groups, grid=grid, folds=4, seed=1)
    D = (R[:, 0] - R[:, 1]).double().numpy()
    fold = np.array([head.fold_of[g] for g in groups])
    # each fold's differences in units of its training responses' standard deviations (ddof 1, as torch)
    sd = [R.double().numpy()[fold != k].reshape(-1, R.shape[-1]).std(0, ddof=1) for k in range(4)]
    theirs = []
    for C in grid:
        losses = []
        for k in range(4):
            tr = D[fold != k] / sd[k]
            sk = LogisticRegression(C=C, fit_intercept=False, tol=1e-10, max_iter=100_000)
            sk.fit(np.concatenate([tr, -tr]), np.concatenate([np.ones(len(tr)), np.zeros(len(tr))]))
            p = sk.predict_proba(D[fold == k] / sd[k])[:, 1]  # P(chosen beats rejected)
            losses.append(log_loss(np.ones(len(p)), p, labels=[0, 1]) * len(p))
        theirs.append(sum(losses) / len(D))
    ours = [m["cv_loss"] for m in head.metrics["grid"]]
    assert np.allclose(ours, theirs, rtol=1e-4), (ours, theirs)
    assert head.C == grid[int(np.argmin(theirs))]
    assert len(set(np.round(theirs, 4))) == len(grid)  # a real choice, not a tie
    # the cross-fitting heads are the cross-validation heads at the chosen C
    k0 = fold != 0
    sk = LogisticRegression(C=head.C, fit_intercept=False, tol=1e-10, max_iter=100_000)
    sk.fit(np.concatenate([D[k0], -D[k0]]) / sd[0], np.concatenate([np.ones(k0.sum()), np.zeros(k0.sum())]))
    cos = torch.nn.functional.cosine_similarity(head.fold_weight[0].double(), torch.from_numpy(sk.coef_[0] / sd[0]), dim=0)
    assert cos > 0.9999, float(cos)


def test_the_preference_head_needs_a_prompt_in_every_fold(tmp_path):
    R, groups, _ = synthetic_pairs(n=8, d=4, seed=0)  # 4 prompts
    make_features(tmp_path / "pairs.st", R, ids=[f"p{i}" for i in range(8)], prompt_hashes=groups)
    r = armo("fit-regression", "--pairs", tmp_path / "pairs.st", "--preference-objective", "pref",
             "-o", tmp_path / "reg.st", "-q")
    assert r.code == 2 and r.stderr.strip().endswith(
        "--pairs: 4 distinct prompts, fewer than --preference-folds 5; the preference head needs a prompt in every fold")
    assert not (tmp_path / "reg.st").exists()


def test_cross_fitting_never_gives_a_pair_the_reward_of_a_head_that_saw_it(tmp_path):
    R, groups, _ = synthetic_pairs(n=300, d=8, seed=5)
    ids = [f"p{i}" for i in range(len(groups))]
    make_features(tmp_path / "pairs.st", R, ids=ids, prompt_hashes=groups)
    make_features(tmp_path / "ratings.st", R[:, 0], ids=[f"r{i}" for i in range(len(groups))])
    cli("fit-regression", tmp_path / "ratings.st", "--length-objective", "verbosity", "--pairs", tmp_path / "pairs.st",
        "--preference-objective", "pref", "--preference-folds", "4", "-o", tmp_path / "reg.st", "-q")
    reg = Regression.load(tmp_path / "reg.st")
    p = reg.meta.preference
    assert reg.objectives[-1] == "pref" and p["folds"] == 4 and set(p["fold_of"]) == set(groups)
    assert "standard deviation" in p["feature_scale"]  # the provenance says how the head was fitted
    j = reg.objectives.index("pref")
    oof = reg.rewards_out_of_fold(R, groups)[..., j]
    D = (R[:, 0] - R[:, 1]).double()
    fold = torch.tensor([p["fold_of"][g] for g in groups])
    for k in range(4):
        saw = fold != k
        # the fold's head is exactly the head fitted without fold k's prompts (on their own scale) ...
        sd = R[saw].reshape(-1, R.shape[-1]).double().std(0)
        w = fit_bt(D[saw] / sd, p["C"]) / sd
        u = R[saw].reshape(-1, R.shape[-1]).double() @ w
        row = (w / (u.max() - u.min())).float()
        assert torch.allclose(reg.fold_weight[k], row, atol=1e-5)
        # ... and the pairs of fold k (never seen by it) get their preference reward from it
        assert not bool((fold[~saw] != k).any())
        expect = R[~saw].float() @ reg.fold_weight[k] + reg.fold_bias[k]
        assert torch.allclose(oof[~saw], expect, atol=1e-6)
    # rows whose prompt the head never saw get the full head, like score does
    other = reg.rewards_out_of_fold(R[:3], ["unseen"] * 3)
    assert torch.allclose(other, reg.rewards(R[:3]))
    # the gate trains on the out-of-fold rewards
    cli("fit-gating", tmp_path / "pairs.st", "-r", tmp_path / "reg.st", "-o", tmp_path / "g.st", "--hidden-dim", "8",
        "--steps", "5", "-q", "--json", tmp_path / "g.json")
    assert json.loads((tmp_path / "g.json").read_text())["preference_out_of_fold_pairs"] == 300


def test_a_pairs_only_model_trains_decorrelates_and_scores(tiny_model, tmp_path):
    d = tiny_model
    m = tmp_path / "model"
    cli("fit-regression", "--pairs", d / "p.st", "--preference-objective", "pref", "--length-objective", "verbosity",
        "--preference-folds", "3", "-o", tmp_path / "reg.st", "--model-dir", m, "-q")
    reg = Regression.load(tmp_path / "reg.st")
    assert reg.objectives == ["verbosity", "pref"]
    cli("fit-decorrelation", d / "p.st", "-r", tmp_path / "reg.st", "-o", tmp_path / "dec.st", "--model-dir", m, "-q",
        "--json", tmp_path / "dec.json")
    rep = json.loads((tmp_path / "dec.json").read_text())["objectives_report"]
    assert abs(rep["pref"]["after"]) <= 1e-3  # decorrelated from verbosity like any objective
    cli("fit-gating", d / "p.st", "-r", tmp_path / "reg.st", "-t", tmp_path / "dec.st", "-o", tmp_path / "g.st",
        "--model-dir", m, "--hidden-dim", "8", "--steps", "10", "-q")
    recs = [json.loads(x) for x in cli("score", "-m", m, "--features", d / "p.st").stdout.splitlines()]
    assert len(recs) == 60 and set(recs[0]["chosen"]["rewards"]) == {"verbosity", "pref"}
    r = armo("evaluate", "-m", m, "--features", d / "p.st", "-q")
    assert r.code == 0


def test_preference_options_are_checked(tiny_model, tmp_path):
    d = tiny_model
    for args, msg in (
        (["--pairs", d / "p.st"], "--pairs and --preference-objective go together"),
        (["--preference-objective", "x"], "--pairs and --preference-objective go together"),
        (["--pairs", d / "r.st", "--preference-objective", "x"], "features without pairs"),
        ([d / "r.st", "--pairs", d / "p.st", "--preference-objective", "helpfulness"], "already rates an objective"),
        ([], "give at least one features file"),
    ):
        r = armo("fit-regression", *args, "-o", tmp_path / "reg.st", "-q")
        assert r.code == 2 and msg in r.stderr, (args, r.stderr)
        assert not (tmp_path / "reg.st").exists()
