"""benchmarks/gpu_bench.py --tiny: the GPU benchmark's whole path, on this CPU with a tiny model of the same family."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import needs_embedded

ROOT = Path(__file__).resolve().parents[1]


@needs_embedded()
@pytest.mark.slow
def test_gpu_bench_tiny_runs_and_agrees(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--tiny", "--device", "cpu",
                          "--json", str(tmp_path / "g.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "armo extract" in out.stdout and "reference loop (bs 1)" in out.stdout
    r = json.loads((tmp_path / "g.json").read_text())
    assert r["pairs"] == 32 and r["tokens_reference"] > r["tokens_armo"]  # the prompt is run once, not twice
    assert r["agreement"]["min_cosine"] > 0.9999  # fp32: tree-masked features equal separate full passes
    usable = [k for k in r["kernels"] if "error" not in k]
    assert usable[0]["kernel"] == "armo's choice" and all(k["max_abs_diff_vs_armo"] < 1e-4 for k in usable)
    assert r["armo_forward_only"]["seconds"] > 0 and 0 <= r["padded_share"] <= r["max_padding"]
    assert r["chunk_size"] == 256 and r["batch_tokens"] == 2048  # the CPU's defaults
    lm = r["lm_objectives"]  # the LM objectives' cost, side by side (#37 §3)
    assert lm["pairs"] == 32 and all(lm[a]["seconds"] > 0 for a in ("features", "+ lm-mean-logprob", "+ lm-pmi too"))
    assert "LM objectives (32 pairs" in out.stdout
    # FlexAttention with a block mask from the trees' segment ids gives the dense mask's features
    assert "error" not in r["flex_attention"], r["flex_attention"]
    assert r["flex_attention"]["max_abs_diff_vs_sdpa"] < 1e-4


@needs_embedded()
@pytest.mark.slow
def test_gpu_mfu_sweep_tiny_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_mfu_sweep.py"), "--tiny",
                          "--json", str(tmp_path / "s.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads((tmp_path / "s.json").read_text())
    ran = [x for x in r["forward_only"] if "error" not in x]
    # on a CPU sdpa's own choice and MATH run; the CUDA-only kernels are reported, not fatal
    assert {x["setting"].split(" budget")[0] for x in ran} >= {"sdpa default", "MATH"}
    assert all(0 <= x["padded_share"] < 1 and x["seconds"] > 0 for x in ran)
    assert r["dense_upper_bound"]["seconds"] > 0 and r["extract"][0]["seconds"] > 0


@needs_embedded()
def test_extract_host_bench_runs_and_agrees():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "extract_host_bench.py"), "--pairs", "40",
                          "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]  # it asserts that grouped tokenising equals one row at a time
    assert "transformers" in out.stdout and "armo extract with a null forward" in out.stdout


@needs_embedded()
@pytest.mark.slow
def test_gpu_packing_tiny_runs_and_the_layouts_agree(tmp_path):
    out = subprocess.run([sys.executable, "-W", "ignore::UserWarning", str(ROOT / "benchmarks" / "gpu_packing.py"), "--tiny",
                          "--json", str(tmp_path / "p.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads((tmp_path / "p.json").read_text())
    rows, flex = r["forward_only"]
    assert (rows["kind"], flex["kind"]) == ("rows", "flex") and "error" not in flex, flex
    assert flex["max_abs_diff_vs_rows"] < 1e-4 and flex["min_cosine_vs_rows"] > 0.9999  # fp32: the same features
    assert flex["run_tokens"] < rows["run_tokens"] and flex["padded_share"] < 128 * 4 / r["real_tokens"]  # tile rounding only
    assert [e["layout"] for e in r["extract"]] == [rows["layout"], flex["layout"]]


@needs_embedded()
@pytest.mark.slow
def test_gpu_serve_jobs_tiny_runs_every_study(tmp_path):
    """#37's prepared run on this CPU: serve with clients in a process of their own, best-of-n trees against pairs,
    the LM objectives' cost, and one extract job in both layouts."""
    out = subprocess.run([sys.executable, "-W", "ignore::UserWarning", str(ROOT / "benchmarks" / "gpu_serve_jobs.py"),
                          "--tiny", "--device", "cpu", "--json", str(tmp_path / "j.json")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads((tmp_path / "j.json").read_text())
    assert r["environment"]["torch"] and r["shape"] == "tiny"
    arms = r["serve"]["arms"]
    assert [(a["clients"], a["connection"]) for a in arms] == [(16, "new per request"), (16, "kept alive")]
    assert all(a["errors"] == 0 and a["rows_per_s"] > 0 and a["offline_rows_per_s"] > 0 for a in arms)
    assert all(a["rows_per_batch"] >= 1 for a in arms) and "median served/offline ratio" in out.stdout
    bon = r["best_of_n"]
    assert bon["rows"] == 16 and bon["pairs"] == 48 and bon["same_verdict_rows"] == 16
    assert bon["trees"]["tokens"] < bon["flattened"]["tokens"]  # each row's prompt once, not three times
    assert all(r["lm_objectives"][a]["seconds"] > 0 for a in ("features", "+ lm-mean-logprob", "+ lm-pmi too"))
    fx = r["flex_job"]
    assert "error" not in fx, fx
    assert [x["packing"] for x in fx["runs"]] == ["rows", "flex", "flex"] and fx["tokens"] >= 20_000
    an = r["annotate"]  # #47 at 8B shape on a GPU: the tree path against the peers' batch-1 loop, the same scores
    assert an["k"] == 8 and an["tokens_ratio"] > 1 and an["max_abs_score_diff"] < 1e-4
    st = r["stage0"]  # #49/#50: tune-backbone's step, gradient checkpointing off and on
    assert [x["gradient_checkpointing"] for x in st["runs"]] == [False, True]
    assert all(x["seconds_per_step"] > 0 for x in st["runs"]) and st["lora_params"] > 0
