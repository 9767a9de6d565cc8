"""The README's tour and training section, run as written (#32): every shell line in them, in a scratch folder
where the README's names are the example files (`rows.jsonl` is examples/score.jsonl, `pairs.jsonl`,
`ratings.jsonl`, `eval.jsonl` the examples of those names) and `my-model` is what the training section builds.
Each line must exit 0, and every file it names as an output must appear."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, needs_embedded

pytestmark = needs_embedded()

NAMES = {"rows.jsonl": "score.jsonl", "pairs.jsonl": "pairs.jsonl", "ratings.jsonl": "ratings.jsonl",
         "eval.jsonl": "eval.jsonl"}
OUTPUT_FLAGS = ("-o", "--pairs-output", "--html", "--model-dir")
LIST_FILES = {
    "rb2.jsonl": [{"id": "a", "subset": "Math", "prompt": "What is 2+2?", "chosen": ["4"], "rejected": ["5", "22", "3"],
                   "num_correct": 1},
                  {"id": "ref:1", "subset": "Ties", "prompt": "Name a color.", "chosen": ["Red."], "rejected": ["Seven."]},
                  {"id": "tied:1", "subset": "Ties", "prompt": "Name a color.", "chosen": ["Red.", "Blue."],
                   "rejected": ["Seven.", "Dog."], "num_correct": 2}],
    "rm-bench.jsonl": [{"id": "r", "domain": "chat", "prompt": "Say hi.", "chosen": ["Hi!", "Hi there!", "**Hi there!**"],
                        "rejected": ["Bye.", "Bye now.", "**Bye now.**"]}],
    "bon.jsonl": [{"id": "b", "subset": "rmb-bon/x", "prompt": "Say hi.", "chosen": ["Hi!"], "rejected": ["Bye.", "No."]}],
}


def readme_lines(start: str, end: str) -> list[tuple[str, str]]:
    """(section, line) for every shell line between two headings, in order; comments and blank lines dropped."""
    text = (ROOT / "README.md").read_text()
    part = text[text.index(start):text.index(end)]
    out, section = [], ""
    for block in re.finditer(r"^(###? [^\n]*)$|^```bash\n(.*?)^```", part, re.M | re.S):
        if block[1]:
            section = block[1]
            continue
        for line in block[2].splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append((section, line))
    return out


def outputs(line: str) -> list[str]:
    words = line.split("#")[0].split()
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w in OUTPUT_FLAGS and words[i + 1] != "-"]


@pytest.mark.slow
def test_the_tour_and_the_training_section_run_as_written(tmp_path, armo_cache):
    lines = readme_lines("## A short tour", "### Pipelines")
    training = [x for x in lines if x[0].startswith("### Train your own")]
    assert len(training) >= 6, "the training section has moved; update this test"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for name, example in NAMES.items():
        shutil.copyfile(ROOT / "examples" / example, tmp_path / name)
    for name, rows in LIST_FILES.items():  # small synthetic rows in each benchmark's schema
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "ARMO_CACHE": str(armo_cache), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    have_jq = shutil.which("jq") is not None
    ran = 0
    # the training section first: it builds the `my-model` that the tour's lines use
    for section, line in training + [x for x in lines if x not in training]:
        if line.startswith("pip install"):
            continue  # installs: what CI's and the README's set-up commands run
        if "| jq" in line and not have_jq:
            continue
        r = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, f"{section}: {line}\n{r.stderr[-2000:]}"
        for out in outputs(line):
            assert (tmp_path / out).exists(), f"{section}: {line}: {out} was not written"
        ran += 1
    assert ran >= 15
