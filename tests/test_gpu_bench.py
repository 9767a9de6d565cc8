"""benchmarks/gpu_bench.py --tiny: the GPU benchmark's whole path, on this CPU with a tiny model of the same family."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import needs_embedded

ROOT = Path(__file__).resolve().parents[1]


@needs_embedded()
def test_gpu_bench_tiny_runs_and_agrees(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--tiny", "--device", "cpu",
                          "--json", str(tmp_path / "g.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "armo extract" in out.stdout and "reference loop (bs 1)" in out.stdout
    r = json.loads((tmp_path / "g.json").read_text())
    assert r["pairs"] == 32 and r["tokens_reference"] > r["tokens_armo"]  # the prompt is run once, not twice
    assert r["agreement"]["min_cosine"] > 0.9999  # fp32: tree-masked features equal separate full passes
    usable = [k for k in r["kernels"] if "error" not in k]
    assert usable and all(k["max_abs_diff_vs_default"] < 1e-4 for k in usable)
    # FlexAttention with a block mask from the trees' segment ids gives the dense mask's features
    assert "error" not in r["flex_attention"], r["flex_attention"]
    assert r["flex_attention"]["max_abs_diff_vs_sdpa"] < 1e-4
