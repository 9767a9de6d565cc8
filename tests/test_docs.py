"""What the README says of the shipped default model is what its quality.json measured."""
import json
import re

from conftest import ROOT


def test_readme_quotes_the_default_models_measured_accuracy():
    q = json.loads((ROOT / "armo_cli/default_model/quality.json").read_text())["results"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"it is a weak reward model: ([0-9.]+) on held-out permissive pairs, ([0-9.]+) on dev-eval "
                  r"and ([0-9.]+) on an RMB slice", readme)
    assert m, "the README's summary sentence of the default model has moved; update this test"
    for quoted, name in zip(m.groups(), ["held-out pairs", "dev-eval", "RMB (out of distribution)"]):
        assert quoted == f"{q[name]['full model']['accuracy']:.3f}", name


def test_readme_quotes_the_default_models_hand_written_pairs():
    hw = json.loads((ROOT / "armo_cli/default_model/quality.json").read_text())["hand_written"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"the rejected side in (\d+) of the (\d+) hand-written pairs", readme)
    assert m, "the README's sentence on the hand-written pairs has moved; update this test"
    assert (int(m[1]), int(m[2])) == (hw["pairs"] - hw["full model"], hw["pairs"])
