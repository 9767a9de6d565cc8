"""Swap rows for #46's invariance candidate: training responses in two forms with the same content.

From a training pair file, a seeded sample of responses, each as a pair row whose two sides differ in form only:
  - format: the response in markdown (`style_probe.to_markdown`; as it is when it already has marks) against the
    same words as plain prose (`style_probe.to_plain`);
  - length: the response padded with a preamble and a summary that add nothing (`style_probe.padded`) against itself.
`armo extract` reads them as pairs; `armo fit-regression --invariant-to` projects the span of the two sides' feature
differences out of the features before the preference and rating heads are fitted. Training rows only: the probes
(studies/style_probe.py) are built from held-out pairs.

    python studies/style_swaps.py --input runs/default/pairs.jsonl --n-format 300 --n-length 150 -o swaps.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from style_probe import padded, to_markdown, to_plain  # noqa: E402


def swap_rows(pairs: list[dict], n_format: int, n_length: int, seed: int = 0) -> list[dict]:
    """Pair rows (prompt, chosen = the fancier form, rejected = the plainer one, subset = format | length)."""
    responses = [(p["id"], side, p["prompt"], p[side]) for p in pairs for side in ("chosen", "rejected")
                 if isinstance(p.get(side), str) and p[side].strip()]
    random.Random(seed).shuffle(responses)
    out = []
    for kind, n, fancy, plain in (("format", n_format, to_markdown, to_plain),
                                  ("length", n_length, padded, lambda t: t)):
        made = 0
        for rid, side, prompt, text in responses:
            if made == n:
                break
            a, b = fancy(text), plain(text)
            if a.strip() == b.strip():
                continue  # nothing to swap (a response with no sentences to dress)
            out.append({"id": f"{rid}/{side}/{kind}", "subset": kind, "prompt": prompt, "chosen": a, "rejected": b})
            made += 1
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="training pair rows (JSONL, .gz ok)")
    ap.add_argument("--n-format", type=int, default=300)
    ap.add_argument("--n-length", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    from armo_cli.jsonl import iter_jsonl

    rows = swap_rows([r for _, r in iter_jsonl(args.input)], args.n_format, args.n_length, args.seed)
    Path(args.output).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} swap rows in {args.output}")


if __name__ == "__main__":
    main()
