"""--layer: features from any hidden layer, recorded, checked by every stage, honoured by score and export."""
from __future__ import annotations

import json

import pytest
import torch

from armo_cli.backbones import load_backbone
from armo_cli.extract import ExtractConfig, extract
from armo_cli.features import Features
from armo_cli.forward import canonical_layer, resolve_layer

from tests.helpers import armo, build_model, check_export_round_trip, check_rows_score_as_features, pair_rows, write_jsonl


@pytest.fixture(scope="module")
def bb(tiny_backbone):
    return load_backbone(str(tiny_backbone), device="cpu", dtype="fp32")


@pytest.mark.parametrize("layer", [0, 1, -2, -1, 2])
def test_layer_features_equal_the_matching_hidden_states_of_a_full_pass(bb, tmp_path, layer):
    rows = pair_rows(5, seed=2)
    out = tmp_path / "f.st"
    extract(ExtractConfig(input=str(write_jsonl(tmp_path / "p.jsonl", rows)), output=str(out), backbone="x", quiet=True,
                          layer=layer, batch_tokens=10_000), backbone=bb)
    f = Features.load(out)
    n = bb.model.config.num_hidden_layers  # the tiny backbone has 2: hidden_states has 3 entries
    assert f.meta.layer == canonical_layer(layer, n) and f.meaning().layer == resolve_layer(layer, n) - (n + 1)
    from armo_cli.rendering import Renderer
    from armo_cli.rows import Source, iter_examples

    r = Renderer(bb.tokenizer)
    for i, ex in enumerate(iter_examples(Source(str(tmp_path / "p.jsonl")))):
        t = r.tokenize(ex, i)
        for j in range(2):
            with torch.no_grad():
                hs = bb.model(input_ids=torch.tensor([t.prompt + t.conts[j]]), output_hidden_states=True).hidden_states
            assert len(hs) == n + 1
            assert torch.allclose(f.tensors["response_features"][i, j], hs[layer][0, -1], atol=1e-5)
        with torch.no_grad():
            hp = bb.model(input_ids=torch.tensor([t.prompt]), output_hidden_states=True).hidden_states
        assert torch.allclose(f.tensors["prompt_features"][i], hp[layer][0, t.gate], atol=1e-5)


def test_layer_spellings_and_range():
    assert [resolve_layer(x, 30) for x in (-1, 0, 20, -11, 30)] == [30, 0, 20, 20, 30]
    assert canonical_layer(20, 30) == canonical_layer(-11, 30) == -11 and canonical_layer(30, 30) == -1
    from armo_cli.errors import ArmoError

    for bad in (31, -32):
        with pytest.raises(ArmoError, match=rf"--layer {bad}: the backbone has 30 layers \(give -31..30\)"):
            resolve_layer(bad, 30)


@pytest.fixture(scope="module")
def layer1_model(tiny_model, tiny_backbone, tmp_path_factory):
    """A whole model on layer 1 of the tiny backbone (ratings, pairs, regression, decorrelation, gate)."""
    return build_model(tmp_path_factory.mktemp("layer1"), tiny_model / "r.jsonl", tiny_model / "p.jsonl", tiny_backbone,
                       "--layer", "1", hidden=8, steps=20)


def test_a_layer_mismatch_between_stages_is_refused(tiny_model, layer1_model, tmp_path):
    d, w = tiny_model, layer1_model
    r = armo("fit-gating", w / "p.st", "-r", d / "reg.st", "-o", tmp_path / "g.st", "-q")
    assert r.code == 2 and "feature layer -2 differs from" in r.stderr and "'s -1" in r.stderr
    r = armo("fit-decorrelation", d / "p.st", "-r", w / "reg.st", "-o", tmp_path / "x.st", "-q")
    assert r.code == 2 and "feature layer -1 differs from" in r.stderr
    r = armo("evaluate", "-m", w / "model", "--features", d / "p.st", "-q")
    assert r.code == 2 and "feature layer" in r.stderr
    assert not any(tmp_path.iterdir())


def test_score_reads_the_models_layer(layer1_model, tiny_model, tiny_backbone):
    check_rows_score_as_features(layer1_model, tiny_model / "p.jsonl", tiny_backbone)


def test_export_and_import_keep_a_non_default_layer(layer1_model, tiny_model, tmp_path):
    w = layer1_model
    cfg = check_export_round_trip(w / "model", w / "p.st", tiny_model / "p.jsonl", tmp_path)
    assert cfg["armo_feature_layer"] == -2
    assert json.loads((tmp_path / "back" / "armo.json").read_text())["feature_meaning"]["layer"] == -2


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_all_layers_from_one_pass_equal_each_layer_alone(bb, tmp_path, pooling):
    """What studies/layer_probe.py relies on: one pass with a list of layers gives each layer's features."""
    from armo_cli.forward import encode_trees
    from armo_cli.rendering import Renderer
    from armo_cli.rows import Source, iter_examples

    r = Renderer(bb.tokenizer)
    trees = [r.tokenize(ex, i) for i, ex in enumerate(iter_examples(Source(str(write_jsonl(tmp_path / "p.jsonl", pair_rows(6))))))]
    P, R = encode_trees(bb, trees, 10_000, layer=[0, 1, 2, -1], pooling=pooling)
    assert P.shape[1:] == (4, bb.hidden_size) and R.shape[1:] == (2, 4, bb.hidden_size)
    for i, k in enumerate([0, 1, 2, -1]):
        p, rr = encode_trees(bb, trees, 10_000, layer=k, pooling=pooling)
        assert torch.allclose(P[:, i], p, atol=1e-5) and torch.allclose(R[:, :, i], rr, atol=1e-5)
