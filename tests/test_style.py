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
