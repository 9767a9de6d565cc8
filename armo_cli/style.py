"""Style measured from a response's own text, without labels (#46): what reward models pay for beside length.

RM-Bench (Liu et al., 2024) shows that reward models prefer a detailed, markdown-formatted answer over a concise correct
one. Length is one axis (the verbosity objective); markdown is another that no rating sees. Each measure here counts
one kind of mark as a CommonMark parser reads the text (markdown-it-py, which rich already brings), so that text that
only looks like markdown is not counted: `2 * 3 * 4` is no emphasis, `snake_case_name` none either, `#hashtag` no
heading, and nothing inside a code block or a code span counts as anything but code.

A count becomes an objective as a density, marks per token of the response (`densities`): a long plain answer is not
more markdown than a short plain one. `markdown` is the sum of every kind.
"""
from __future__ import annotations

import re
from functools import lru_cache

import torch

STYLE_VERSION = 1  # how marks are counted: part of an extraction's key, so a change recounts instead of mixing
TENSOR = "response_style"  # a features file's tensor of counts: [N, (2,) len(STYLE_MEASURES)]
# The kinds of mark, in the order of a features file's `response_style` columns.
STYLE_MEASURES = ("headers", "list_items", "emphasis", "code", "table_rows", "math", "quotes")
# What `--style-objectives` takes: a kind (as `md-KIND`) or `markdown`, all of them together.
STYLE_OBJECTIVES = ("markdown", *(f"md-{m}" for m in STYLE_MEASURES))

_TOKEN_KINDS = {"heading_open": "headers", "list_item_open": "list_items", "strong_open": "emphasis",
                "em_open": "emphasis", "fence": "code", "code_block": "code", "code_inline": "code",
                "tr_open": "table_rows", "blockquote_open": "quotes"}
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# LaTeX as chat models write it: $$...$$, \[...\], \(...\), and $...$ by pandoc's rule (no space inside the dollars,
# no digit right after the closing one, so "$5 and $10" is money, not math)
_MATH = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<![\\$\w])\$(?=\S)[^$\n]*?(?<=\S)\$(?![\d$])", re.S)


@lru_cache(maxsize=1)
def _parser():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table")


def style_counts(text: str) -> dict[str, int]:
    """How many marks of each kind (STYLE_MEASURES) the text holds, as a CommonMark reader sees it."""
    counts = dict.fromkeys(STYLE_MEASURES, 0)
    blocks = _parser().parse(text)
    for i, tok in enumerate(blocks):
        # an item or a heading with nothing in it is no mark: "12." alone is CommonMark's empty list item, and an answer
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        empty = nxt is not None and (nxt.type == "list_item_close" or (nxt.type == "inline" and not nxt.content.strip()))
        kind = _TOKEN_KINDS.get(tok.type)
        if kind and not (tok.type in ("list_item_open", "heading_open") and empty):
            counts[kind] += 1
        if tok.type == "inline":  # the paragraph's own source: math is read there, code spans taken out first
            counts["math"] += len(_MATH.findall(_CODE_SPAN.sub(" ", tok.content)))
            for child in tok.children or []:
                kind = _TOKEN_KINDS.get(child.type)
                if kind:
                    counts[kind] += 1
    return counts


def count_matrix(texts: list[str]) -> torch.Tensor:
    """[n, len(STYLE_MEASURES)] counts of each text (equal texts are parsed once)."""
    seen: dict[str, list[int]] = {}
    rows = []
    for t in texts:
        if t not in seen:
            c = style_counts(t)
            seen[t] = [c[m] for m in STYLE_MEASURES]
        rows.append(seen[t])
    return torch.tensor(rows, dtype=torch.float32).reshape(len(texts), len(STYLE_MEASURES))


def densities(counts: torch.Tensor, lengths: torch.Tensor, objectives: list[str]) -> torch.Tensor:
    """[n, len(objectives)] marks per token: counts [n, S] (STYLE_MEASURES' columns) over lengths [n] in tokens."""
    per_token = counts.double() / lengths.double().clamp(min=1)[:, None]
    cols = []
    for name in objectives:
        if name == "markdown":
            cols.append(per_token.sum(1))
        else:
            cols.append(per_token[:, STYLE_MEASURES.index(name[len("md-"):])])
    return torch.stack(cols, 1) if cols else per_token[:, :0]


def parse_style_objectives(spec: str, option: str = "--style-objectives") -> list[str]:
    """`markdown,md-headers`: known names, each once."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    from .errors import ArmoError

    if not names:
        raise ArmoError(f"{option}: name at least one of {', '.join(STYLE_OBJECTIVES)}")
    for n in names:
        if n not in STYLE_OBJECTIVES:
            raise ArmoError(f"{option}: {n!r}: not a style objective (one of {', '.join(STYLE_OBJECTIVES)})")
    if len(set(names)) != len(names):
        raise ArmoError(f"{option}: {next(n for n in names if names.count(n) > 1)!r} named twice")
    return names
