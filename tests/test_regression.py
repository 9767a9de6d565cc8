import json

import numpy as np
import pytest
import torch
from armo_cli.configs import DEFAULT_ALPHAS
from armo_cli.heads import Regression
from armo_cli.regression import ridge_path, split_mask

from tests.helpers import armo, make_features



def synthetic(n=800, d=30, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    W = torch.randn(k, d, generator=g)
    noise = torch.tensor([0.5, 3.0, 10.0, 30.0])[:k]
    Y = X @ W.T + torch.randn(n, k, generator=g) * noise + 1.0
    # sources: each row rates only some objectives
    Y[: n // 4, 0] = float("nan")
    Y[n // 4: n // 2, 1] = float("nan")
    Y[n // 2:, 2] = float("nan")
    return X, Y


@pytest.mark.parametrize("intercept", [False, True])
def test_choices_and_weights_match_sklearn(intercept):
    from sklearn.linear_model import Ridge

    X, Y = synthetic()
    train = split_mask(X.shape[0], 0.2, 0)
    res = ridge_path(X, Y, train, DEFAULT_ALPHAS, intercept=intercept)
    Xn, Yn = X.double().numpy(), Y.double().numpy()
    for j in range(Y.shape[1]):
        lab = ~np.isnan(Yn[:, j])
        tr, va = lab & train.numpy(), lab & ~train.numpy()
        mses = []
        for a in DEFAULT_ALPHAS:
            p = Ridge(alpha=a, fit_intercept=intercept).fit(Xn[tr], Yn[tr, j]).predict(Xn[va])
            mses.append(((p - Yn[va, j]) ** 2).mean())
        a = DEFAULT_ALPHAS[int(np.argmin(mses))]
        assert res.alphas[j] == a
        np.testing.assert_allclose(res.val_mse[j].numpy(), mses, rtol=1e-6)
        ref = Ridge(alpha=a, fit_intercept=intercept).fit(Xn[lab], Yn[lab, j])
        rel = np.abs(ref.coef_ - res.weight[j].double().numpy()).max() / np.abs(ref.coef_).max()
        assert rel < 1e-4
        if intercept:
            assert abs(ref.intercept_ - float(res.bias[j])) < 1e-4 * max(1, abs(ref.intercept_))
    # the grid is actually searched: noisier objectives get stronger regularisation
    assert res.alphas[0] < res.alphas[3]


def test_refit_train_keeps_the_train_only_fit():
    from sklearn.linear_model import Ridge

    X, Y = synthetic()
    train = split_mask(X.shape[0], 0.2, 0)
    res = ridge_path(X, Y, train, DEFAULT_ALPHAS, refit="train")
    lab = ~torch.isnan(Y[:, 1])
    tr = (lab & train).numpy()
    ref = Ridge(alpha=res.alphas[1], fit_intercept=False).fit(X.double().numpy()[tr], Y.double().numpy()[tr, 1])
    assert np.abs(ref.coef_ - res.weight[1].double().numpy()).max() / np.abs(ref.coef_).max() < 1e-4


def fake_features(path, X, Y, objectives, backbone="b1", lengths=None):
    return make_features(path, X, Y, objectives, backbone=backbone, lengths=lengths)


def test_cli_scales_length_objective_report_and_errors(tmp_path):
    X, Y = synthetic()
    Y[:, 0] = Y[:, 0].clamp(-5, 5)
    f = fake_features(tmp_path / "f.safetensors", X, Y, ["a", "b", "c", "d"])
    out = tmp_path / "reg.safetensors"
    res = armo("fit-regression", str(f), "-o", str(out), "--range", "a=-10:10", "--length-objective", "verbosity", "--json", str(tmp_path / "rep.json"), "-q")
    assert res.code == 0, res.output
    reg = Regression.load(out)
    assert reg.objectives == ["a", "b", "c", "d", "verbosity"]
    assert reg.meta.scales["a"] == {"lo": -10.0, "hi": 10.0, "transform": "linear", "declared": True}
    assert reg.meta.scales["verbosity"]["transform"] == "log1p"
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert set(rep["metrics"]["b"]) >= {"mse", "pearson", "spearman", "n_train", "n_val", "alpha"}
    assert rep["metrics"]["verbosity"]["n_train"] + rep["metrics"]["verbosity"]["n_val"] == X.shape[0]
    # mismatched backbones are refused
    g = fake_features(tmp_path / "g.safetensors", X, Y, ["a", "b", "c", "d"], backbone="other")
    res = armo("fit-regression", str(f), str(g), "-o", str(tmp_path / "x.safetensors"), "-q")
    assert res.code == 2 and "backbone" in res.output and not (tmp_path / "x.safetensors").exists()
    # no labels at all
    h = fake_features(tmp_path / "h.safetensors", X, None, [])
    res = armo("fit-regression", str(h), "-o", str(tmp_path / "x.safetensors"), "-q")
    assert res.code == 2 and "no labels" in res.output
    # too few rows: skipped with a warning, or an error with --strict
    Y2 = Y.clone()
    Y2[5:, 3] = float("nan")
    k = fake_features(tmp_path / "k.safetensors", X, Y2, ["a", "b", "c", "d"])
    res = armo("fit-regression", str(k), "-o", str(tmp_path / "k.reg"), "-q")
    assert res.code == 0 and "skipping objective 'd'" in res.output
    res = armo("fit-regression", str(k), "-o", str(tmp_path / "k2.reg"), "-q", "--strict")
    assert res.code == 2 and "objective 'd'" in res.output


def test_a_rating_outside_its_declared_range_is_refused_naming_the_row(tmp_path):
    """--range h=1:10 on data rated 0..100 (a wrong scale) would map most rewards far outside [0,1]; it is bad
    input, one line, naming the file, the first row, the field and how many rows are outside."""
    from armo_cli.configs import RegressionConfig
    from armo_cli.errors import ArmoError
    from armo_cli.fitting import fit_regression

    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 8, generator=g)
    Y = torch.linspace(1, 10, 40)[:, None].clone()
    Y[7, 0], Y[30, 0] = 100.0, 0.0
    f = make_features(tmp_path / "r.st", X, Y, ["h"])
    out = tmp_path / "reg.st"
    with pytest.raises(ArmoError) as e:
        fit_regression(RegressionConfig(features=[str(f)], ranges={"h": (1.0, 10.0)}, output=str(out), quiet=True))
    assert str(e.value) == (f"{f}: row 'i7': field 'ratings.h' = 100 is outside --range h=1:10 (2 of 40 rated rows "
                            f"are; the data spans 0..100)")
    assert not out.exists()
    Y[7, 0], Y[30, 0] = 10.0, 1.0  # the range's own ends are inside it
    f = make_features(tmp_path / "r2.st", X, Y, ["h"])
    fit_regression(RegressionConfig(features=[str(f)], ranges={"h": (1.0, 10.0)}, output=str(out), quiet=True))
    assert out.exists()
