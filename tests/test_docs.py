"""What the README says of the shipped default model is what its quality.json measured."""
import json
import re

import pytest

from tests.helpers import ROOT, needs_embedded


def test_readme_quotes_the_default_models_measured_accuracy():
    q = json.loads((ROOT / "armo_cli/default_model/quality.json").read_text())["results"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"it is a weak reward model: ([0-9.]+) on held-out permissive pairs, ([0-9.]+) on dev-eval "
                  r"and ([0-9.]+) on an RMB slice", readme)
    assert m, "the README's summary sentence of the default model has moved; update this test"
    for quoted, name in zip(m.groups(), ["held-out pairs", "dev-eval", "RMB (out of distribution)"]):
        assert quoted == f"{q[name]['full model']['accuracy']:.3f}", name


def test_readme_quotes_the_adapter_candidates_figures_from_the_card():
    """The README's account of the stage-0 adapter candidate (#33) is the card's table: its intervals against today's
    model on held-out and RMB, and its Spearman on RMB."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    card = (ROOT / "armo_cli/default_model/MODEL_CARD.md").read_text().split("## Which candidate ships (#33)")[1]
    m = re.search(r"the adapter helped in distribution \(held-out ([+-][0-9.]+ \[[+-][0-9.]+, [+-][0-9.]+\])\) and hurt "
                  r"out of it \(RMB ([+-][0-9.]+ \[[+-][0-9.]+, [+-][0-9.]+\])\), where its scores rise more with length "
                  r"\(Spearman ([+-][0-9.]+) on RMB\)", readme)
    assert m, "the README's sentence on the adapter candidate has moved; update this test"

    def adapter_row(section: str) -> list[str]:
        part = card.split(f"### {section}\n")[1].split("\n### ")[0]
        return [c.strip() for c in next(x for x in part.splitlines() if x.startswith("| adapter |")).split("|")]

    held, rmb = adapter_row("held-out pairs"), adapter_row("RMB (out of distribution)")
    assert (m[1], m[2], m[3]) == (held[5], rmb[5], rmb[8])


def test_readme_quotes_the_default_models_hand_written_pairs():
    hw = json.loads((ROOT / "armo_cli/default_model/quality.json").read_text())["hand_written"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"the rejected side in (\d+) of the (\d+) hand-written pairs", readme)
    assert m, "the README's sentence on the hand-written pairs has moved; update this test"
    assert (int(m[1]), int(m[2])) == (hw["pairs"] - hw["full model"], hw["pairs"])


@needs_embedded()
@pytest.mark.slow
def test_readme_says_beside_the_commands_where_the_default_fails(tmp_path):
    """The first table a user sees shows the default model's wrong answer: the README says so beside the two
    commands, with figures that this test measures again (the quickstart pair's margin, the chat pairs right)."""
    import subprocess
    import sys

    readme = " ".join((ROOT / "README.md").read_text().split())
    head = readme[: readme.index("## A short tour")]
    m = re.search(r"over \"Canberra\", margin (-?[0-9.]+)\), gets (\d+) of the (\d+) chat pairs of `examples/eval.jsonl`", head)
    assert m, "the README's sentence on the default model's failures has moved; update this test"
    armo = [sys.executable, "-c", "from armo_cli.cli import main; main()"]
    out = subprocess.run([*armo, "score", str(ROOT / "examples/pair.jsonl"), "-q"], capture_output=True, text=True, timeout=600)
    assert f"{json.loads(out.stdout)['margin']:.3f}" == m[1]
    out = subprocess.run([*armo, "evaluate", str(ROOT / "examples/eval.jsonl"), "-o", str(tmp_path / "r.json"), "-q"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    chat = json.loads((tmp_path / "r.json").read_text())["subsets"]["chat"]
    assert (round(chat["accuracy"] * chat["n"]), chat["n"]) == (int(m[2]), int(m[3]))


def test_every_changelog_link_reaches_a_heading_of_the_details():
    """CHANGELOG.md's [details] links name headings of docs/changelog-details.md by GitHub's anchors (lower case,
    punctuation dropped, spaces as hyphens): a heading renamed without its link would send readers nowhere."""
    details = (ROOT / "docs/changelog-details.md").read_text()
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", details, re.M)}
    links = re.findall(r"changelog-details\.md#([\w\-]+)", (ROOT / "CHANGELOG.md").read_text())
    assert links and [a for a in links if a not in anchors] == []
