import torch
import pytest

from armo_cli.heads import Gate
from armo_cli.configs import GatingConfig
from armo_cli.fitting import fit_gating

from tests.helpers import armo, make_decorrelation, make_features, make_regression


def write_parts(tmp_path, P, R, W, objectives, T=None, ids=None):
    make_features(tmp_path / "pairs.safetensors", R, P=P, ids=ids, lengths=torch.full((P.shape[0], 2), 10))
    make_regression(tmp_path / "reg.safetensors", W, objectives)
    if T is not None:
        make_decorrelation(tmp_path / "dec.safetensors", T, tmp_path / "reg.safetensors")


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_gate_weights_sum_to_scale_over_objectives(shape):
    g = Gate(12, 5, hidden_dim=16, n_hidden=2, logit_scale=2.5)
    w = g(torch.randn(*shape, 12))
    assert w.shape == (*shape, 5)
    assert torch.allclose(w.sum(-1), torch.full(shape, 2.5), atol=1e-5)
    assert (w >= 0).all()


def synthetic_types(n=3000, d=16, seed=0):
    """Prompt type 0 prefers objective 0, type 1 objective 1; each pair is decided by its type's objective."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 2, (n,), generator=g)
    P = torch.randn(n, d, generator=g) * 0.5
    P[:, 0] += 3.0 * (2 * t - 1)
    R = torch.randn(n, 2, d, generator=g)
    a, b = R[:, 0, :2].clone(), R[:, 1, :2].clone()
    # chosen wins on its type's objective, the other objective is noise
    for i in range(n):
        j = int(t[i])
        hi, lo = max(a[i, j], b[i, j]), min(a[i, j], b[i, j])
        R[i, 0, j], R[i, 1, j] = hi + 0.1, lo
    W = torch.zeros(2, d)
    W[0, 0] = W[1, 1] = 1.0
    return P, R, W


def test_gate_beats_single_objective_and_uniform_on_held_out_pairs(tmp_path):
    P, R, W = synthetic_types()
    write_parts(tmp_path, P, R, W, ["a", "b"])
    rep = fit_gating(GatingConfig(features=[str(tmp_path / "pairs.safetensors")], regression=str(tmp_path / "reg.safetensors"),
                                  output=str(tmp_path / "gate.safetensors"), hidden_dim=32, n_hidden=2, steps=300,
                                  batch_size=256, lr=3e-3, temperature=1.0, quiet=True))
    m = {x["name"].split(" (")[0]: x["accuracy"] for x in rep["metrics"]}
    assert m["moe gate"] > 0.95
    assert m["moe gate"] > m["best single objective"] + 0.15
    assert m["moe gate"] > m["uniform weights"] + 0.1
    assert rep["pairs"]["val"] > 200


def test_only_gate_parameters_train(tmp_path, monkeypatch):
    P, R, W = synthetic_types(n=400)
    write_parts(tmp_path, P, R, W, ["a", "b"])
    seen = []
    real = torch.optim.AdamW

    def spy(params, *a, **k):
        params = list(params)
        seen.append(params)
        return real(params, *a, **k)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    fit_gating(GatingConfig(features=[str(tmp_path / "pairs.safetensors")], regression=str(tmp_path / "reg.safetensors"),
                            output=str(tmp_path / "gate.safetensors"), hidden_dim=8, n_hidden=1, steps=20, quiet=True))
    gate_params = seen[0]
    # 2 linear layers (weight, bias) + logit_scale; nothing of the regression (2 x 16) or transform
    assert sorted(tuple(p.shape) for p in gate_params) == sorted([(8, 16), (8,), (2, 8), (2,), (1,)])


def test_transform_is_applied_in_training_and_evaluation(tmp_path):
    # raw objective 'a' prefers the rejected (longer) response; a' = a - v prefers the chosen one
    n, d = 400, 4
    P = torch.randn(n, d)
    R = torch.zeros(n, 2, d)
    R[:, 0, 0], R[:, 0, 1] = 0.6, 0.1
    R[:, 1, 0], R[:, 1, 1] = 0.7, 0.5
    R[:, :, 2:] = torch.randn(n, 2, 2) * 0.01
    W = torch.zeros(2, d)
    W[0, 0] = W[1, 1] = 1.0
    T = torch.eye(2)
    T[1, :] -= torch.tensor([1.0, 1.0])
    write_parts(tmp_path, P, R, W, ["a", "verbosity"], T=T)
    rep = fit_gating(GatingConfig(features=[str(tmp_path / "pairs.safetensors")], regression=str(tmp_path / "reg.safetensors"),
                                  decorrelation=str(tmp_path / "dec.safetensors"), output=str(tmp_path / "g.safetensors"),
                                  hidden_dim=8, n_hidden=1, steps=20, quiet=True))
    m = {x["name"].split(" (")[0]: x["accuracy"] for x in rep["metrics"]}
    assert m["moe gate"] == 1.0 and m["uniform weights"] == 1.0
    rep0 = fit_gating(GatingConfig(features=[str(tmp_path / "pairs.safetensors")], regression=str(tmp_path / "reg.safetensors"),
                                   output=str(tmp_path / "g0.safetensors"), hidden_dim=8, n_hidden=1, steps=20, quiet=True))
    m0 = {x["name"].split(" (")[0]: x["accuracy"] for x in rep0["metrics"]}
    assert m0["uniform weights"] == 0.0  # identity transform: the raw rewards prefer the rejected side


def test_errors(tmp_path):

    P, R, W = synthetic_types(n=50)
    write_parts(tmp_path, P, R, W, ["a", "b"], T=torch.eye(2))
    make_regression(tmp_path / "reg3.safetensors", torch.randn(3, P.shape[1]), ["a", "b", "c"])
    make_decorrelation(tmp_path / "dec3.safetensors", torch.eye(3), tmp_path / "reg3.safetensors")
    r = armo("fit-gating", str(tmp_path / "pairs.safetensors"), "-r", str(tmp_path / "reg.safetensors"), "-t", str(tmp_path / "dec3.safetensors"), "-o", str(tmp_path / "x.st"), "-q")
    assert r.code == 2 and "objectives" in r.output and not (tmp_path / "x.st").exists()
    r = armo("fit-gating", str(tmp_path / "reg.safetensors"), "-r", str(tmp_path / "reg.safetensors"), "-o", str(tmp_path / "x.st"), "-q")
    assert r.code == 2 and "expected a 'features' artifact" in r.output


def test_fit_gating_on_cpu_and_on_cuda_give_the_same_gate(tmp_path):
    """--device cpu reproduces the default run exactly on a CPU machine; where CUDA exists, a CUDA run
    gives the same gate within float tolerance."""
    from armo_cli.heads import Gating

    P, R, W = synthetic_types(n=120)
    write_parts(tmp_path, P, R, W, ["a", "b"])
    common = dict(features=[str(tmp_path / "pairs.safetensors")], regression=str(tmp_path / "reg.safetensors"),
                  hidden_dim=8, n_hidden=1, steps=40, quiet=True, dropout=0.0)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gates = {}
    for dev in devices:
        fit_gating(GatingConfig(output=str(tmp_path / f"g-{dev}.st"), device=dev, **common))
        gates[dev] = Gating.load(tmp_path / f"g-{dev}.st").gate.state_dict()
    fit_gating(GatingConfig(output=str(tmp_path / "g-default.st"), **common))
    default = Gating.load(tmp_path / "g-default.st").gate.state_dict()
    if not torch.cuda.is_available():
        assert all(torch.equal(default[k], gates["cpu"][k]) for k in default)
    for dev in devices[1:]:
        assert all(torch.allclose(gates[dev][k], gates["cpu"][k], atol=1e-4, rtol=1e-3) for k in default), dev


def test_a_zeroed_objective_is_out_of_the_gates_choices(tmp_path):
    """After decorrelation the length objective's column of T is zero: its reward is 0 for every response, so
    weight on it would only shrink scores. The gate gives it exactly 0 for every prompt, trained or loaded."""
    from armo_cli.heads import Gating

    n, d = 400, 4
    P, R = torch.randn(n, d), torch.randn(n, 2, d)
    R[:, 0, 0] += 1.0
    W = torch.zeros(2, d)
    W[0, 0] = W[1, 1] = 1.0
    T = torch.eye(2)
    T[1, :] -= torch.tensor([1.0, 1.0])  # column 1 (verbosity) is zero
    write_parts(tmp_path, P, R, W, ["a", "verbosity"], T=T)
    rep = fit_gating(GatingConfig(features=[str(tmp_path / "pairs.safetensors")], regression=str(tmp_path / "reg.safetensors"),
                                  decorrelation=str(tmp_path / "dec.safetensors"), output=str(tmp_path / "g.safetensors"),
                                  hidden_dim=8, n_hidden=1, steps=60, lr=1e-2, quiet=True))
    assert rep["blocked_objectives"] == ["verbosity"]
    from armo_cli.gating import uniform_weights

    assert uniform_weights(T).tolist() == [1.0, 0.0] and uniform_weights(torch.eye(2)).tolist() == [0.5, 0.5]
    gate = Gating.load(tmp_path / "g.safetensors").gate
    w = gate(torch.randn(1000, d) * 10)
    assert (w[:, 1] == 0).all()
    assert torch.allclose(w[:, 0], gate.logit_scale.expand(1000))
    # without decorrelation nothing is blocked
    rep0 = fit_gating(GatingConfig(features=[str(tmp_path / "pairs.safetensors")], regression=str(tmp_path / "reg.safetensors"),
                                   output=str(tmp_path / "g0.safetensors"), hidden_dim=8, n_hidden=1, steps=20, quiet=True))
    assert rep0["blocked_objectives"] == []
    assert (Gating.load(tmp_path / "g0.safetensors").gate(torch.randn(50, d))[:, 1] > 0).all()
