"""Fixtures shared by the tests (their helpers are plain functions in tests/helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import LLAMA3ISH, NO_SYSTEM, build_model, make_backbone, pair_rows, rating_rows, write_jsonl


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return make_backbone(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama3(tmp_path_factory) -> Path:
    return make_backbone(tmp_path_factory.mktemp("tiny3") / "tiny-llama3", template=LLAMA3ISH, adds_bos=True, seed=1)


@pytest.fixture(scope="session")
def armo_cache(tmp_path_factory) -> Path:
    """A cache of the test session's own: conversions made by tests never touch the user's cache. The
    user's finished backbone conversions (the embedded backbone: ~30 s to redo) are linked in, read-only."""
    from armo_cli.backbones import cache_root

    cache = tmp_path_factory.mktemp("armo-cache")
    real = cache_root() / "backbones"
    (cache / "backbones").mkdir()
    if real.is_dir():
        for d in real.iterdir():
            if (d / "model.safetensors").exists():
                (cache / "backbones" / d.name).symlink_to(d, target_is_directory=True)
    return cache


@pytest.fixture(autouse=True)
def _isolated_cache(armo_cache, monkeypatch):
    monkeypatch.setenv("ARMO_CACHE", str(armo_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(scope="session")
def tiny_model(tiny_backbone, tmp_path_factory):
    """A whole armo model on the tiny backbone, built with the CLI (rows in r.jsonl / p.jsonl beside it)."""
    d = tmp_path_factory.mktemp("model")
    return build_model(d, write_jsonl(d / "r.jsonl", rating_rows(80)),
                       write_jsonl(d / "p.jsonl", pair_rows(60, subsets=["alpacaeval-easy", "hep-go", "mine"])), tiny_backbone)


# A template that refuses a system turn, as Gemma's and Mistral's do (raise_exception), and a row that has one.


@pytest.fixture(scope="session")
def refusing_model(tmp_path_factory) -> dict:
    """A model on a tiny backbone whose chat template refuses system turns: {"backbone", "model"}."""
    d = tmp_path_factory.mktemp("refusing")
    bb = make_backbone(d / "backbone", template=NO_SYSTEM)
    build_model(d, write_jsonl(d / "r.jsonl", rating_rows(40)), write_jsonl(d / "p.jsonl", pair_rows(30)), bb, steps=5)
    return {"backbone": bb, "model": d / "model"}
