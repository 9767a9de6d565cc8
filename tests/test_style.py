"""Style measured from the text (#46): each kind of mark counted as a CommonMark reader sees it, on hand-written texts."""
import pytest
import torch

from armo_cli.errors import ArmoError
from armo_cli.style import STYLE_MEASURES, count_matrix, densities, parse_style_objectives, style_counts


def counts(**kw) -> dict:
    return {**dict.fromkeys(STYLE_MEASURES, 0), **kw}


TEXTS = {
    "plain prose": ("Canberra is the capital of Australia.", counts()),
    "markdown answer": ("## Answer\n\n**Canberra** is the capital.\n\n1. Sydney is larger\n2. Melbourne too\n",
                        counts(headers=1, emphasis=1, list_items=2)),
    # inside a fenced block nothing is a header, a list or emphasis: it is one block of code
    "a code block": ("```python\n# not a header\n- not a list\n**not bold**\n```\n", counts(code=1)),
    "a table": ("| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n", counts(table_rows=3)),
    "pipes that are no table": ("a | b\nc | d\n", counts()),
    "a list inside a quote": ("> - one\n> - two **bold**\n", counts(quotes=1, list_items=2, emphasis=1)),
    # text that only looks like markdown
    "arithmetic, identifiers, a hashtag, money": (
        "Compute 2 * 3 * 4 = 24 for snake_case_name; see #hashtag. It costs $5 and $10.", counts()),
    "a header needs its space": ("#not a header\n", counts()),
    "math, and math in a code span": ("The area is $\\pi r^2$ and $$\\int_0^1 x\\,dx$$ and \\(a+b\\) but `$x$` is code.",
                                      counts(math=3, code=1)),
    "emphasis of both kinds": ("*one* _two_ __three__ **four**", counts(emphasis=4)),
    "an indented code block": ("text\n\n    # code, not a header\n    - nor a list\n", counts(code=1)),
    # a bare number is an answer, not CommonMark's empty list item; a lone '#' no heading
    "an answer that is a number": ("12.", counts()),
    "empty marks": ("#\n\n-\n", counts()),
}


@pytest.mark.parametrize("name", list(TEXTS))
def test_style_counts_on_hand_written_texts(name):
    text, want = TEXTS[name]
    assert style_counts(text) == want


def test_densities_are_marks_per_token():
    c = count_matrix(["**a** *b*", "plain", "- x\n- y\n"])
    assert c.tolist() == [[0, 0, 2, 0, 0, 0, 0], [0] * 7, [0, 2, 0, 0, 0, 0, 0]]
    d = densities(c, torch.tensor([4, 1, 8]), ["markdown", "md-emphasis", "md-list_items"])
    assert d.tolist() == [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.25, 0.0, 0.25]]
    assert densities(c, torch.tensor([0, 0, 0]), ["markdown"]).tolist() == [[2.0], [0.0], [2.0]]  # no division by 0


@pytest.mark.parametrize("spec,message", [("", "name at least one of markdown"), ("bold", "'bold': not a style objective"),
                                          ("markdown,markdown", "'markdown' named twice")])
def test_style_objectives_are_named_exactly(spec, message):
    with pytest.raises(ArmoError, match=message):
        parse_style_objectives(spec)
    assert parse_style_objectives("markdown, md-headers") == ["markdown", "md-headers"]


def _markdown(text: str, k: int) -> str:
    """The same words dressed in markdown, three ways."""
    words = text.split()
    if k % 3 == 0:
        return "## " + " ".join(words[:2]) + "\n\n" + " ".join(words[2:])
    if k % 3 == 1:
        return "\n".join(f"- {w}" for w in words)
    return " ".join(f"**{w}**" if i % 2 else w for i, w in enumerate(words))


@pytest.mark.slow
def test_style_heads_fit_decorrelate_score_and_round_trip_through_transformers(tiny_backbone, tmp_path):
    """--style-objectives reads each training response's markdown density; fit-decorrelation --against removes it
    with the length from every objective; the model scores and explains it, and an export scores the same through
    transformers (the style heads are rows of the regression layer; T carries the rest)."""
    import json

    from armo_cli.heads import Decorrelation
    from tests.helpers import armo, check_export_round_trip, cli, pair_rows, rating_rows, write_jsonl

    ratings = [{**r, "response": _markdown(r["response"], k) if k % 2 else r["response"]}
               for k, r in enumerate(rating_rows(80))]
    pairs = [{**r, "chosen": _markdown(r["chosen"], k) if k % 2 else r["chosen"],
              "rejected": r["rejected"] if k % 2 else _markdown(r["rejected"], k)} for k, r in enumerate(pair_rows(40))]
    rf, pf = write_jsonl(tmp_path / "r.jsonl", ratings), write_jsonl(tmp_path / "p.jsonl", pairs)
    b = ["-b", tiny_backbone, "--device", "cpu", "-q"]
    cli("extract", rf, "-o", tmp_path / "r.st", *b)
    cli("extract", pf, "-o", tmp_path / "p.st", *b)
    m = tmp_path / "model"
    cli("fit-regression", tmp_path / "r.st", "--length-objective", "verbosity", "--style-objectives",
        "markdown,md-list_items", "-o", tmp_path / "reg.st", "--model-dir", m, "-q", "--json", tmp_path / "reg.json")
    rep = json.loads((tmp_path / "reg.json").read_text())
    assert rep["objectives"][-3:] == ["verbosity", "markdown", "md-list_items"]
    assert rep["style_objectives"] == ["markdown", "md-list_items"] and rep["scales"]["markdown"]["lo"] == 0.0
    cli("fit-decorrelation", tmp_path / "p.st", "-r", tmp_path / "reg.st", "-o", tmp_path / "dec.st", "--model-dir", m,
        "--against", "verbosity,markdown", "--method", "pearson", "-q")
    assert Decorrelation.load(tmp_path / "dec.st").meta.against == ["verbosity", "markdown"]
    cli("fit-gating", tmp_path / "p.st", "-r", tmp_path / "reg.st", "-t", tmp_path / "dec.st", "-o", tmp_path / "g.st",
        "--model-dir", m, "--hidden-dim", "16", "--steps", "30", "-q")
    s = ["--backbone", tiny_backbone, "--device", "cpu", "-q"]
    rec = json.loads(cli("score", "-m", m, pf, *s).stdout.splitlines()[0])
    assert {"markdown", "md-list_items", "verbosity"} <= set(rec["chosen"]["rewards"])
    cli("evaluate", "-m", m, pf, *s, "--pairs-output", tmp_path / "po.jsonl")
    adjusted = [json.loads(x)[side]["adjusted"] for x in (tmp_path / "po.jsonl").read_text().splitlines()
                for side in ("chosen", "rejected")]
    assert all(a["markdown"] == 0.0 and a["verbosity"] == 0.0 for a in adjusted)  # decorrelated away
    assert any(a["md-list_items"] != 0.0 for a in adjusted)
    raw = json.loads(cli("score", "-m", m, pf, *s, "--objective", "markdown").stdout.splitlines()[0])
    assert raw["chosen"]["score"] == pytest.approx(rec["chosen"]["rewards"]["markdown"], abs=1e-6)
    cfg = check_export_round_trip(m, tmp_path / "p.st", pf, tmp_path / "rt")
    assert cfg["objectives"][-2:] == ["markdown", "md-list_items"]


def test_style_objectives_need_features_that_carry_style(tmp_path):
    from tests.helpers import armo, make_features

    f = make_features(tmp_path / "old.st", torch.randn(30, 8), torch.rand(30, 1), ["help"])
    r = armo("fit-regression", f, "--style-objectives", "markdown", "-o", tmp_path / "reg.st")
    assert r.code == 2 and r.stderr.strip() == (f"error: {f}: carries no style counts (extracted before armo measured "
                                                f"style, #46); extract it again for --style-objectives")
    r = armo("fit-regression", f, "--style-objectives", "bold", "-o", tmp_path / "reg.st")
    assert r.code == 2 and "'bold': not a style objective" in r.stderr
    assert not (tmp_path / "reg.st").exists()
