"""armo_cli.api.RewardModel: load once, score rows; the same scores as `armo score`."""
from __future__ import annotations

import json

import pytest

from tests.helpers import armo, pair_rows, write_jsonl
from tests.serving import rows_of


def test_api_scores_equal_armo_score(tiny_model, tmp_path):
    from armo_cli import RewardModel

    rows = rows_of(10) + [dict(r, id=f"pair-{r['id']}") for r in pair_rows(4, seed=5)]
    f = write_jsonl(tmp_path / "rows.jsonl", rows)
    r = armo("score", "-m", str(tiny_model / "model"), str(f), "--format", "jsonl", "-q")
    assert r.code == 0
    cli_recs = [json.loads(line) for line in r.stdout.splitlines()]
    rm = RewardModel(tiny_model / "model")
    api_recs = rm.score(rows)
    assert [x["id"] for x in api_recs] == [x["id"] for x in cli_recs]
    for a, c in zip(api_recs, cli_recs):
        key = "margin" if "margin" in c else "score"
        assert abs(a[key] - c[key]) < 1e-6 and a.get("gating") == pytest.approx(c.get("gating"), abs=1e-6)
    singles = rows_of(10)
    assert rm.rewards([x["prompt"] for x in singles], [x["response"] for x in singles]) == pytest.approx(
        [c["score"] for c in cli_recs[:10]], abs=1e-6)
    assert rm.score([]) == []


def test_api_bad_row_names_its_index(tiny_model):
    from armo_cli import RewardModel
    from armo_cli.errors import ArmoError

    rm = RewardModel(tiny_model / "model")
    with pytest.raises(ArmoError, match=r"rows\[1\]: field 'prompt': missing"):
        rm.score([{"prompt": "a", "response": "b"}, {"response": "c"}])


def test_api_loads_an_exported_folder(tiny_model, tmp_path):
    """RewardModel takes what `armo export` wrote (imported once into armo's cache) and scores as the model does."""
    from armo_cli import RewardModel

    from tests.helpers import cli

    cli("export", "-m", tiny_model / "model", tmp_path / "hf")
    rows = rows_of(5, seed=23)
    direct = RewardModel(tiny_model / "model").score(rows)
    exported = RewardModel(tmp_path / "hf").score(rows)
    assert [r["score"] for r in exported] == pytest.approx([r["score"] for r in direct], abs=1e-4)
    again = RewardModel(tmp_path / "hf")  # the cached import is reused
    assert again.model.path == RewardModel(tmp_path / "hf").model.path
