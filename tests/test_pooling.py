"""--pooling mean: f(x,y) from the mean of the response's hidden states, recorded, checked by every stage,
honoured by score, export and import."""
import json

import pytest

from armo_cli.provenance import FeatureMeaning

from tests.helpers import armo, build_model, check_export_round_trip, check_rows_score_as_features


@pytest.fixture(scope="module")
def mean_model(tiny_model, tiny_backbone, tmp_path_factory):
    """A whole model on mean-pooled features of the tiny backbone (last layer: only the pooling differs from
    tiny_model)."""
    return build_model(tmp_path_factory.mktemp("mean"), tiny_model / "r.jsonl", tiny_model / "p.jsonl", tiny_backbone,
                       "--pooling", "mean", hidden=8, steps=20)


def test_a_pooling_mismatch_between_stages_is_refused(tiny_model, mean_model, tmp_path):
    d, w = tiny_model, mean_model
    r = armo("fit-decorrelation", w / "p.st", "-r", d / "reg.st", "-o", tmp_path / "x.st", "-q")
    assert r.code == 2 and "pooling mean differs from" in r.stderr and "'s last" in r.stderr, r.stderr
    r = armo("evaluate", "-m", d / "model", "--features", w / "p.st", "-q")
    assert r.code == 2 and "pooling" in r.stderr
    assert not any(tmp_path.iterdir())


def test_score_reads_the_models_pooling(mean_model, tiny_model, tiny_backbone):
    """Scoring rows (armo's own Llama forward) gives what scoring the extracted features (transformers) gives."""
    check_rows_score_as_features(mean_model, tiny_model / "p.jsonl", tiny_backbone)
    assert json.loads((mean_model / "model" / "armo.json").read_text())["feature_meaning"]["pooling"] == "mean"


def test_export_and_import_keep_mean_pooling(mean_model, tiny_model, tmp_path):
    cfg = check_export_round_trip(mean_model / "model", mean_model / "p.st", tiny_model / "p.jsonl", tmp_path)
    assert cfg["armo_feature_pooling"] == "mean" and cfg["armo_feature_layer"] == -1
    assert json.loads((tmp_path / "back" / "armo.json").read_text())["feature_meaning"]["pooling"] == "mean"


def test_features_from_before_pooling_existed_mean_the_last_token():
    old = {"backbone": "b", "fingerprint": "f", "hidden_size": 4, "layer": -1}
    assert FeatureMeaning.from_json(old, "x").pooling == "last"
    with pytest.raises(Exception, match="malformed"):
        FeatureMeaning.from_json({**old, "pooling": "max"}, "x")


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_an_exported_model_scores_an_empty_response_as_armo_does(pooling, tiny_model, mean_model, tmp_path):
    """An empty response through the exported modeling code (its end-of-turn tokens: the last, or their mean),
    with left and right padding, beside a non-empty one."""
    from tests.helpers import check_exported_scores, cli, write_jsonl

    model = (tiny_model if pooling == "last" else mean_model) / "model"
    cli("export", "-m", model, tmp_path / "hf")
    rows = [{"prompt": "say hi", "chosen": "", "rejected": "hi there you"}]
    ours = json.loads(cli("score", "-m", model, write_jsonl(tmp_path / "r.jsonl", rows), "-q", "--device", "cpu").stdout)
    check_exported_scores(tmp_path / "hf", rows, [ours["chosen"]["score"], ours["rejected"]["score"]])
