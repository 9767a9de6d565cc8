import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import spearmanr
from armo_cli.heads import Decorrelation
from armo_cli.decorrelation import solve_lambda, transform_matrix
from armo_cli.stats import pearson, rankdata, spearman

from tests.helpers import armo, make_features, make_regression



def rewards(n=2000, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(n, generator=g)
    R = torch.rand(n, k, generator=g)
    coupling = torch.tensor([0.0, 0.5, 2.0, -1.0, 0.0])[:k]
    R = R + coupling * v[:, None] + 0.3 * (v[:, None] ** 3)
    R[:, -1] = v
    return R


def test_ranks_and_spearman_match_scipy():
    x = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 1.0])
    assert rankdata(x).tolist() == [5.0, 1.5, 3.5, 3.5, 6.0, 1.5]
    R = rewards()
    assert abs(spearman(R[:, 1], R[:, 4]) - spearmanr(R[:, 1], R[:, 4]).statistic) < 1e-10


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_every_objective_within_tolerance(method):
    R = rewards()
    v = R[:, -1]
    corr = pearson if method == "pearson" else spearman
    lams = torch.zeros(R.shape[1])
    for i in range(R.shape[1] - 1):
        lam, after, status = solve_lambda(R[:, i], v, method, 1e-3)
        assert status == "ok" and abs(after) <= 1e-3
        assert abs(corr(R[:, i] - lam * v, v)) <= 1e-3
        lams[i] = lam
    T = transform_matrix(lams, R.shape[1] - 1)
    adj = R @ T
    for i in range(R.shape[1]):  # applying T equals r - lambda r_v column by column
        expect = R[:, i] - (1.0 if i == R.shape[1] - 1 else lams[i]) * v
        assert torch.allclose(adj[:, i], expect, atol=1e-5)
    assert torch.allclose(adj[:, -1], torch.zeros_like(v), atol=1e-6)


def test_pearson_closed_form_matches_numeric_root():
    R = rewards().double()
    v = R[:, -1]
    for i in range(3):
        lam, _, _ = solve_lambda(R[:, i], v, "pearson")
        root = brentq(lambda l: pearson(R[:, i] - l * v, v), -100, 100, xtol=1e-12)
        assert abs(lam - root) < 1e-6


def test_bounds_keep_best_and_say_so():
    R = rewards()
    lam, after, status = solve_lambda(R[:, 2], R[:, -1], "spearman", 1e-3, bounds=(-0.1, 0.1))
    assert status == "bounded" and lam == pytest.approx(0.1) and abs(after) > 1e-3


def test_cli_end_to_end_and_errors(tmp_path):
    g = torch.Generator().manual_seed(0)
    d, n = 16, 400
    X = torch.randn(n, d, generator=g)
    W = torch.randn(3, d, generator=g)
    make_regression(tmp_path / "reg.safetensors", W, ["help", "safe", "verbosity"])
    f = make_features(tmp_path / "ref.safetensors", X)
    out = tmp_path / "dec.safetensors"
    res = armo("fit-decorrelation", str(f), "-r", str(tmp_path / "reg.safetensors"), "-o", str(out), "-q")
    assert res.code == 0, res.output
    dec = Decorrelation.load(out)
    rep = dec.meta.extra["objectives_report"]
    assert all(abs(r["after"]) <= 1e-3 for r in rep.values())
    assert dec.meta.method == "spearman" and dec.meta.reference_hash
    res = armo("fit-decorrelation", str(f), "-r", str(tmp_path / "reg.safetensors"), "-o", str(out), "--verbosity", "length")
    assert res.code == 2 and "--verbosity length: not an objective" in res.output
    small = make_features(tmp_path / "small.safetensors", X[:4])
    res = armo("fit-decorrelation", str(small), "-r", str(tmp_path / "reg.safetensors"), "-o", str(tmp_path / "s.st"))
    assert res.code == 2 and "need at least" in res.output
    other = make_features(tmp_path / "other.safetensors", X, backbone="b2")
    res = armo("fit-decorrelation", str(other), "-r", str(tmp_path / "reg.safetensors"), "-o", str(tmp_path / "o.st"))
    assert res.code == 2 and "backbone" in res.output


def test_a_status_other_than_ok_says_what_it_means():
    """`tolerance-not-reached` was printed with no hint whether it matters."""
    from armo_cli.decorrelation import status_note

    assert status_note("helpfulness", "tolerance-not-reached", -0.012, 1e-3) == (
        "helpfulness: tolerance-not-reached: |corr after| 0.0120 > --tolerance 0.001; a rank correlation moves in steps "
        "over these rows (ties), so no lambda brings it within --tolerance; the closest one is kept; it matters little: "
        "what is left of length in this objective is small")
    assert "still tracks length" in status_note("x", "bounded", 0.2, 1e-3)


# --- against a set of objectives, over the set or within each prompt (#46) -----------------------------------------


def _reference_lambda(R, against, groups=None):
    """numpy's least squares on the (group-)centered rewards: the closed form the set decorrelation must equal."""
    import numpy as np

    X = R.double().numpy()
    if groups is None:
        Xc = X - X.mean(0)
    else:
        Xc = X.copy()
        for g in set(groups):
            rows = [i for i, x in enumerate(groups) if x == g]
            Xc[rows] -= X[rows].mean(0)
    lam, *_ = np.linalg.lstsq(Xc[:, against], Xc, rcond=None)
    return torch.from_numpy(lam), Xc


@pytest.mark.parametrize("within", ["set", "prompt"])
def test_set_decorrelation_matches_least_squares_and_zeroes_every_correlation(within):
    from armo_cli.decorrelation import centered, solve_set, set_transform

    R = rewards(k=5)
    R[:, 3] = R[:, 3] + 0.7 * R[:, 4] + 0.2 * torch.rand(R.shape[0], generator=torch.Generator().manual_seed(3))
    groups = [f"p{i // 4}" for i in range(R.shape[0])] if within == "prompt" else None
    against = [3, 4]
    lam = solve_set(R, against, groups)
    want, Xc = _reference_lambda(R, against, groups)
    others = [i for i in range(5) if i not in against]
    assert torch.allclose(lam[:, others], want[:, others], atol=1e-9)
    assert torch.equal(lam[:, against], torch.eye(2, dtype=lam.dtype))  # the objectives against go to 0
    T = set_transform(lam, against)
    after = centered(R.double() @ T.double(), groups)
    S = torch.from_numpy(Xc[:, against])
    for i in others:
        for j in range(2):
            assert abs(float(after[:, i] @ S[:, j]) / float(after[:, i].norm() * S[:, j].norm())) < 1e-5
    assert float(after[:, against].abs().max()) == 0.0
    # one objective against, over the set: the same lambda as the single-objective Pearson solve
    single = solve_set(R, [4])
    assert float(single[0, 0]) == pytest.approx(solve_lambda(R[:, 0], R[:, 4], "pearson")[0], abs=1e-6)


def test_set_decorrelation_refuses_collinear_objectives():
    from armo_cli.decorrelation import solve_set

    R = rewards(k=5)
    R[:, 3] = 2 * R[:, 4]
    with pytest.raises(ValueError, match="collinear"):
        solve_set(R, [3, 4])


def test_cli_against_a_set(tmp_path):
    g = torch.Generator().manual_seed(0)
    d, n = 16, 400
    X = torch.randn(n, d, generator=g)
    W = torch.randn(4, d, generator=g)
    reg = make_regression(tmp_path / "reg.safetensors", W, ["help", "safe", "verbosity", "markdown"])
    f = make_features(tmp_path / "ref.safetensors", X)
    out = tmp_path / "dec.safetensors"
    base = ("fit-decorrelation", f, "-r", reg, "-o", out)
    res = armo(*base, "--against", "verbosity,markdown")
    assert res.code == 2 and res.stderr.strip() == ("error: --against verbosity,markdown: solved in closed form for "
                                                    "Pearson correlation; add --method pearson")
    res = armo(*base, "--against", "verbosity,bold", "--method", "pearson")
    assert res.code == 2 and "'bold' is not an objective of" in res.stderr
    res = armo(*base, "--against", "verbosity,markdown", "--method", "pearson", "--json", tmp_path / "d.json")
    assert res.code == 0, res.stderr
    import json

    assert json.loads((tmp_path / "d.json").read_text())["against"] == ["verbosity", "markdown"]
    assert "pearson over the set, 400 reference responses" in res.stderr
    dec = Decorrelation.load(out)
    assert dec.meta.against == ["verbosity", "markdown"] and dec.meta.within == "set"
    rep = dec.meta.extra["objectives_report"]
    assert rep["markdown"]["status"] == rep["verbosity"]["status"] == "against"
    assert all(abs(r["after"][a]) <= 1e-6 for r in rep.values() for a in ("verbosity", "markdown"))
    assert abs(rep["help"]["before"]["markdown"]) > 0.05  # there was something to remove
    assert torch.equal(dec.transform[:, 2], torch.zeros(4)) and torch.equal(dec.transform[:, 3], torch.zeros(4))
