"""A feature's meaning (backbone, hidden size, layer, chat template, gate rule, dtype) is checked by every
stage and by score/evaluate --features; each mismatch is refused in one line naming both values."""
from __future__ import annotations

import json

import pytest

from armo_cli.features import Features
from armo_cli.artifact_files import load_artifact, save_artifact
from armo_cli.model import ArmoModel
from armo_cli.provenance import FeatureMeaning

from tests.helpers import armo, make_features


def _b(tiny_backbone):
    return ["-b", tiny_backbone, "--device", "cpu", "-q"]


def _with_meaning(src, dst, **change):
    """A copy of a features file whose recorded meaning differs in `change`."""
    import dataclasses

    t, m = load_artifact(src, "features")
    m = dataclasses.replace(m, feature_meaning={**m.feature_meaning, **change},
                            **{k: v for k, v in change.items() if k in ("gate_rule", "dtype")})
    save_artifact(dst, t, m)
    return dst


@pytest.fixture(scope="module")
def eot(tiny_model, tiny_backbone, tmp_path_factory):
    """Pairs extracted with --gate-rule armo-eot, a gate trained on them, and a model from the default-rule
    ratings' regression: the model must read f(x) where its gate did."""
    d = tmp_path_factory.mktemp("eot")
    r = armo("extract", tiny_model / "p.jsonl", "-o", d / "p-eot.st", "--gate-rule", "armo-eot", *_b(tiny_backbone))
    assert r.code == 0, r.stderr
    r = armo("fit-gating", d / "p-eot.st", "-r", tiny_model / "reg.st", "-t", tiny_model / "dec.st", "-o", d / "gate.st",
             "--hidden-dim", "8", "--steps", "5", "-q")
    assert r.code == 0, r.stderr
    r = armo("assemble", d / "model", "-r", tiny_model / "reg.st", "-t", tiny_model / "dec.st", "-g", d / "gate.st")
    assert r.code == 0, r.stderr
    return d


def test_the_model_takes_its_gate_rule_from_the_gate_not_the_ratings(tiny_model, eot):
    assert Features.load(tiny_model / "r.st").meta.gate_rule == "generation-prompt"
    m = ArmoModel.load(eot / "model")
    assert m.gate_rule == "armo-eot" and m.manifest.gate_rule == "armo-eot"
    assert json.loads((eot / "model" / "armo.json").read_text())["feature_meaning"]["gate_rule"] == "armo-eot"


def test_features_read_at_another_gate_position_are_refused(tiny_model, eot, tmp_path):
    for cmd in ("score", "evaluate"):
        r = armo(cmd, "-m", eot / "model", "--features", tiny_model / "p.st", "-o", tmp_path / "x")
        assert r.code == 2, r.stderr
        assert "gate rule generation-prompt differs from" in r.stderr and "'s armo-eot" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    assert armo("evaluate", "-m", eot / "model", "--features", eot / "p-eot.st", "-q").code == 0


def test_score_from_rows_uses_the_models_gate_rule(tiny_model, eot, tiny_backbone):
    rows = tiny_model / "p.jsonl"
    by_rows = [json.loads(x) for x in armo("score", "-m", eot / "model", rows, "--backbone", tiny_backbone,
                                            "--device", "cpu", "-q").stdout.splitlines()]
    by_feats = [json.loads(x) for x in armo("score", "-m", eot / "model", "--features", eot / "p-eot.st").stdout.splitlines()]
    assert [x["id"] for x in by_rows] == [x["id"] for x in by_feats]
    for a, b in zip(by_rows, by_feats):
        assert a["margin"] == pytest.approx(b["margin"], abs=1e-5)


def test_a_gate_trained_on_mixed_gate_rules_is_refused(tiny_model, eot, tmp_path):
    r = armo("fit-gating", tiny_model / "p.st", eot / "p-eot.st", "-r", tiny_model / "reg.st", "-o", tmp_path / "g.st", "-q")
    assert r.code == 2 and "gate rule armo-eot differs from" in r.stderr and not (tmp_path / "g.st").exists()


@pytest.mark.parametrize("change, what", [
    ({"layer": 5}, "feature layer 5 differs from"),
    ({"template_hash": "0123456789abcdef"}, "chat template 0123456789ab differs from"),
    ({"gen_suffix": [1, 2, 3]}, "chat template (generation suffix) [1, 2, 3] differs from"),
    ({"fingerprint": "another-backbone"}, "backbone another-back"),
    ({"hidden_size": 64}, "hidden size 64 differs from"),
])
def test_every_stage_refuses_features_of_another_meaning(tiny_model, tmp_path, change, what):
    bad_r = _with_meaning(tiny_model / "r.st", tmp_path / "r-bad.st", **change)
    bad_p = _with_meaning(tiny_model / "p.st", tmp_path / "p-bad.st", **change)
    for cmd in (["fit-regression", tiny_model / "r.st", bad_r, "--length-objective", "v", "-o", tmp_path / "o.st"],
                ["fit-decorrelation", bad_p, "-r", tiny_model / "reg.st", "-o", tmp_path / "o.st"],
                ["fit-gating", bad_p, "-r", tiny_model / "reg.st", "-o", tmp_path / "o.st"],
                ["score", "-m", tiny_model / "model", "--features", bad_r, "-o", tmp_path / "o.st"],
                ["evaluate", "-m", tiny_model / "model", "--features", bad_p, "-o", tmp_path / "o.st"]):
        r = armo(*cmd, "-q") if cmd[0].startswith("fit") else armo(*cmd)
        assert r.code == 2, (cmd[0], r.stderr)
        assert what in r.stderr, (cmd[0], r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.st").exists()


def test_a_dtype_difference_is_allowed_with_a_warning(tiny_model, tmp_path):
    bf16 = _with_meaning(tiny_model / "p.st", tmp_path / "p-bf16.st", dtype="torch.bfloat16")
    r = armo("evaluate", "-m", tiny_model / "model", "--features", bf16, "-q")
    assert r.code == 0
    assert "features computed in torch.bfloat16" in r.stderr and "torch.float32" in r.stderr


def test_legacy_artifacts_without_a_recorded_meaning_are_read_from_their_loose_fields():
    m = FeatureMeaning.of({"backbone": {"name": "x", "fingerprint": "f", "hidden_size": 8}, "gate_rule": "armo-eot",
                           "gen_suffix": [1, 2]}, "legacy")
    assert (m.fingerprint, m.hidden_size, m.layer, m.gen_suffix, m.gate_rule) == ("f", 8, -1, (1, 2), "armo-eot")
    assert FeatureMeaning.of({"backbone": {"name": "x", "fingerprint": "f", "hidden_size": 8}, "gate_rule": "armo-eot"},
                             "legacy", prompt=False).gate_rule is None


def test_the_shipped_model_refuses_features_read_at_another_gate_position_or_layer(tmp_path):
    """The shipped model records what its features mean; features read elsewhere are refused, naming both."""
    import torch

    default = ArmoModel.load(None)
    assert default.gate_rule == "generation-prompt"
    bb = default.backbone
    d = bb["hidden_size"]
    for change, message in (({"gate_rule": "armo-eot"}, "gate rule armo-eot differs from"),
                            ({"layer": -1}, f"feature layer -1 differs from {default.path}'s {default.meaning.layer}")):
        meaning = {**default.meaning.to_json(), **change}
        make_features(tmp_path / "f.st", torch.zeros(3, 2, d), gate_rule=meaning["gate_rule"], layer=meaning["layer"],
                      feature_meaning=meaning, backbone=bb["name"])
        r = armo("evaluate", "--features", tmp_path / "f.st", "-q")
        assert r.code == 2 and message in r.stderr, r.stderr


def test_written_features_record_their_meaning(tiny_model):
    f = Features.load(tiny_model / "p.st")
    m = f.meaning()
    assert m.layer == -1 and m.gate_rule == "generation-prompt" and m.dtype == "torch.float32"
    assert m.template_hash and m.gen_suffix == tuple(f.meta.gen_suffix)
