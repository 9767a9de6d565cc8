"""fit-regression --invariant-to (#46): rating and preference heads fitted blind to form, stored as rows on raw
features; the length and style heads still read form. Checked against scikit-learn on the projected features."""
import json

import numpy as np
import torch
from armo_cli.heads import Regression

from tests.helpers import armo, make_features

D = 12


def world(seed=0, n=600):
    """Features with a content part and a form direction u that the ratings and the preferences reward spuriously
    (a richer form comes with better labels in the training data), and swap pairs that differ along u (and a little
    noise) only."""
    g = torch.Generator().manual_seed(seed)
    u = torch.zeros(D)
    u[0], u[1] = 0.6, 0.8
    X = torch.randn(n, D, generator=g)
    y = X[:, 2:6].sum(1) + 2.0 * (X @ u) + 0.1 * torch.randn(n, generator=g)
    R = torch.randn(n // 2, 2, D, generator=g)
    good = R[:, :, 2:6].sum(-1) + 2.0 * (R @ u)
    R = torch.where((good[:, 0] >= good[:, 1])[:, None, None], R, R.flip(1))  # chosen first
    base = torch.randn(80, D, generator=g)
    swaps = torch.stack([base + 1.5 * u, base], 1) + 0.01 * torch.randn(80, 2, D, generator=g)
    return u, X, y, R, swaps


def files(tmp_path, seed=0):
    u, X, y, R, swaps = world(seed)
    f = make_features(tmp_path / "r.safetensors", X, y[:, None].clamp(-20, 20), ["a"])
    p = make_features(tmp_path / "p.safetensors", R, ids=[f"q{i}" for i in range(R.shape[0])])
    s = make_features(tmp_path / "s.safetensors", swaps, ids=[f"s{i}" for i in range(swaps.shape[0])])
    return u, X, y, f, p, s


def test_rating_and_preference_heads_are_blind_to_form_and_match_sklearn_on_projected_features(tmp_path):
    from sklearn.linear_model import Ridge

    u, X, y, f, p, s = files(tmp_path)
    out, rep = tmp_path / "reg.safetensors", tmp_path / "rep.json"
    res = armo("fit-regression", str(f), "--range", "a=-20:20", "--length-objective", "verbosity", "--pairs", str(p),
               "--preference-objective", "preference", "--invariant-to", str(s), "--invariant-rank", "1", "--intercept",
               "-o", str(out), "--json", str(rep), "-q")
    assert res.code == 0, res.output
    reg = Regression.load(out)
    W = reg.weight.double()
    i_a, i_len, i_pref = (reg.objectives.index(o) for o in ("a", "verbosity", "preference"))
    ud = u.double()
    # the swaps' one direction is u (up to sign), found from the pairs alone
    from safetensors.torch import load_file
    Q = load_file(str(out))["invariant_basis"].double()
    assert Q.shape == (D, 1) and abs(abs(float(Q[:, 0] @ ud)) - 1) < 1e-3
    report = json.loads(rep.read_text())
    assert report["invariance"]["rank"] == 1 and report["invariance"]["pairs"] == 80
    assert report["invariance"]["explained"] > 0.99
    assert report["invariance"]["blind"] == ["a", "preference"]
    for i in (i_a, i_pref):  # blind: moving a response along the span found changes nothing
        assert float((W[i] @ Q).abs().max()) < 1e-6 * float(W[i].norm())
    # the length head is fitted on raw features (it must be able to see form; here it sees noise, but is not projected)
    assert abs(float(W[i_len] @ ud)) > 1e-6 * float(W[i_len].norm())
    # the rating head is scikit-learn's ridge on x P at the chosen strength, the target scaled by its declared range
    P = np.eye(D) - Q.numpy() @ Q.numpy().T
    Xp = X.double().numpy() @ P
    target = (y.clamp(-20, 20).double().numpy() + 20) / 40
    ref = Ridge(alpha=report["alphas"]["a"], fit_intercept=True).fit(Xp, target)
    assert report["alphas"]["a"] < 100
    ref_w = P @ ref.coef_  # its model on raw x: (x P).w = x.(P w)
    assert np.abs(ref_w - W[i_a].numpy()).max() < 1e-4 * np.abs(ref_w).max()
    # without --invariant-to the same data pays for form, a lot
    plain = tmp_path / "plain.safetensors"
    assert armo("fit-regression", str(f), "--range", "a=-20:20", "--intercept", "--pairs", str(p), "--preference-objective",
                "preference", "-o", str(plain), "-q").code == 0
    W0 = Regression.load(plain).weight.double()
    assert float(W0[0] @ ud) > 0.3 * float(W0[0].norm())


def test_invariant_to_refuses_what_it_cannot_use(tmp_path):
    u, X, y, f, p, s = files(tmp_path)
    out = tmp_path / "x.safetensors"
    res = armo("fit-regression", str(f), "--invariant-to", str(f), "-o", str(out), "-q")
    assert res.code == 2 and res.output.count("\n") == 1 and "features without pairs" in res.output
    res = armo("fit-regression", str(f), "--invariant-to", str(s), "--invariant-rank", "100", "-o", str(out), "-q")
    assert res.code == 2 and "--invariant-rank 100" in res.output
    other = make_features(tmp_path / "o.safetensors", torch.randn(10, 2, D), backbone="other")
    res = armo("fit-regression", str(f), "--invariant-to", str(other), "-o", str(out), "-q")
    assert res.code == 2 and "backbone" in res.output
    assert not out.exists()
