"""Integration: the real embedded backbone on a handful of real rows (skipped without data or package)."""
import gzip
import json
from pathlib import Path

import pytest
import torch

from armo_cli.features import Features
from tests.helpers import SHARED, cli, needs_embedded, needs_shared

pytestmark = [needs_embedded(), needs_shared()]


def real_rows(name: str, n: int, prefixes: tuple[str, ...] = ()) -> list[dict]:
    out = []
    with gzip.open(SHARED / name, "rt") as fh:
        for line in fh:
            r = json.loads(line)
            if not prefixes or r.get("source", "").startswith(prefixes):
                out.append(r)
                if len(out) == n:
                    break
    return out


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def real_pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    inp = write(d / "pairs.jsonl", real_rows("pairs.jsonl.gz", 24, ("hh_rlhf", "ultrafeedback", "pandalm")))
    out = d / "pairs.st"
    cli("extract", inp, "-o", out, "--max-length", "256", "--overflow", "truncate-prompt", "-q")
    return out


def test_extract_with_the_embedded_backbone(real_pairs):
    f = Features.load(real_pairs)
    assert f.meta.backbone["name"] == "smollm2-135m-instruct" and f.hidden_size == 576
    assert f.tensors["response_features"].shape[1:] == (2, 576)
    assert torch.isfinite(f.tensors["response_features"]).all()
    assert len(f.ids) + len(f.meta.report["skipped"]) == 24


@pytest.fixture(scope="module")
def real_regression(tmp_path_factory):
    d = tmp_path_factory.mktemp("realreg")
    rows = real_rows("ratings.jsonl.gz", 40, ("ultrafeedback",)) + real_rows("ratings.jsonl.gz", 40, ("xstest",))
    inp = write(d / "ratings.jsonl", rows)
    cli("extract", inp, "-o", d / "r.st", "--max-length", "256", "--overflow", "truncate-prompt", "-q")
    r = cli("fit-regression", d / "r.st", "--length-objective", "verbosity", "--range", "ultrafeedback-overall=1:10",
            "-o", d / "reg.st", "--json", d / "reg.json", "--min-rows", "10")
    return d, r.output


def test_fit_regression_on_real_ratings(real_regression):
    d, output = real_regression
    from armo_cli.heads import Regression

    reg = Regression.load(d / "reg.st")
    assert torch.isfinite(reg.weight).all()
    assert {"ultrafeedback-overall", "xstest-complied", "verbosity"} <= set(reg.objectives)
    assert "Pearson" in output and "xstest-complied" in output  # the metrics table
    rep = json.loads((d / "reg.json").read_text())
    assert rep["metrics"]["verbosity"]["pearson"] > 0.5  # length is easy to read off the features


def test_decorrelation_and_gating_on_real_features(real_regression, real_pairs, tmp_path):
    d, _ = real_regression
    r = cli("fit-decorrelation", real_pairs, "-r", d / "reg.st", "-o", tmp_path / "dec.st", "--json", tmp_path / "dec.json")
    assert "corr before" in r.output
    rep = json.loads((tmp_path / "dec.json").read_text())
    for o, row in rep["objectives_report"].items():
        assert abs(row["after"]) <= 1e-3, o
    r = cli("fit-gating", real_pairs, "-r", d / "reg.st", "-t", tmp_path / "dec.st", "-o", tmp_path / "g.st",
            "--steps", "50", "--hidden-dim", "64")
    assert "moe gate" in r.output and "linear BT head" in r.output


def test_evaluate_dev_eval_rows_with_the_default_model(tmp_path):
    from armo_cli.model import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "armo.json").exists():
        pytest.skip("no shipped default model")
    inp = write(tmp_path / "dev.jsonl", real_rows("dev-eval.jsonl.gz", 6))
    cli("evaluate", inp, "-o", tmp_path / "rep.json", "--max-length", "1024", "--overflow", "truncate-prompt", "-q")
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert sum(v["n"] for v in rep["subsets"].values()) == 6
    assert 0.0 <= rep["score"] <= 1.0
