"""The examples and the README's quickstart with the real embedded backbone (no shared data needed)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, needs_embedded

pytestmark = needs_embedded()


@pytest.mark.slow
def test_pipeline_example_runs_end_to_end(tmp_path):
    env = dict(os.environ, WORK=str(tmp_path / "w"), STEPS="100", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    out = subprocess.run(["bash", str(ROOT / "examples" / "pipeline.sh")], capture_output=True, text=True, env=env, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads((tmp_path / "w" / "report.json").read_text())
    assert rep["n"] == 10
    assert (tmp_path / "w" / "hf" / "model.safetensors").exists()


def test_readme_quickstart_scores_with_the_shipped_model():
    from armo_cli.model import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "armo.json").exists():
        pytest.skip("no shipped default model")
    armo = Path(sys.executable).parent / "armo"
    out = subprocess.run([str(armo), "score", str(ROOT / "examples" / "pair.jsonl"), "--format", "table"],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "preferred" in out.stdout and "|coef|" in out.stdout
