"""Does the model pay for style (#46)? Probes from any held-out pairs, without RM-Bench.

Each pair is scored twice more with the content kept and only the form changed:
  - format: the chosen response as plain prose against the rejected one in markdown ("chosen plain"), and the other
    way round ("chosen markdown"). `to_plain` drops headers' marks, bullets, emphasis and table pipes and keeps every
    word; `to_markdown` dresses plain prose in a header, a bold lead sentence and a bulleted list, with the same words.
  - length: the chosen response as it is against the rejected one padded with a preamble and a closing summary that
    add nothing ("chosen short"), and the other way round ("chosen long").
A style-free model scores both sides of a probe as it scores the original pair: its accuracy is the same whichever
side wears the style, so the gap ("chosen markdown" minus "chosen plain"; "chosen long" minus "chosen short") is 0
within its interval (a paired bootstrap over the original pairs).

    python studies/style_probe.py --input ../shared/data/dev-eval.jsonl.gz --n 120 [-m MODEL] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

PREAMBLE = "Sure! Here is a complete answer to your question, step by step."
SUMMARY = "In summary:"
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _inline_text(tok) -> str:
    """An inline token's words without its marks (emphasis dropped, code spans kept as their text)."""
    parts = []
    for c in tok.children or []:
        if c.type in ("text", "code_inline"):
            parts.append(c.content)
        elif c.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)


def to_plain(text: str) -> str:
    """The same words as plain prose: blocks become sentences, list items run on, no markdown marks (code kept as it is,
    a code block's lines indented by nothing, since code is content)."""
    from armo_cli.style import _parser

    out: list[str] = []
    row: list[str] = []
    for tok in _parser().parse(text):
        if tok.type == "inline":
            words = _inline_text(tok).strip()
            if words:
                row.append(words)
        elif tok.type in ("fence", "code_block"):
            out.append(tok.content.rstrip("\n"))
        elif tok.type in ("paragraph_close", "heading_close", "tr_close"):
            if row:
                sentence = ", ".join(row) if tok.type == "tr_close" else " ".join(row)
                out.append(sentence if sentence[-1:] in ".!?:;" else sentence + ".")
                row = []
    blocks, para = [], []
    for s in out:  # short sentences run on as prose; code stays a block of its own
        if "\n" in s:
            if para:
                blocks.append(" ".join(para))
                para = []
            blocks.append(s)
        else:
            para.append(s)
    if para:
        blocks.append(" ".join(para))
    return "\n\n".join(blocks)


def to_markdown(text: str) -> str:
    """The same words in markdown: the first sentence as a header, the others as a bulleted list, each led by its
    first word in bold (one sentence alone: in bold). Text that is already markdown is returned as it is."""
    from armo_cli.style import style_counts

    if sum(style_counts(text).values()):
        return text
    sentences = [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]
    if not sentences:
        return text
    if len(sentences) == 1:
        return f"**{sentences[0]}**"

    def bullet(s: str) -> str:
        first, _, rest = s.partition(" ")
        return f"- **{first}** {rest}".rstrip()
    return f"### {sentences[0]}\n\n" + "\n".join(bullet(s) for s in sentences[1:])


def padded(text: str) -> str:
    """The same answer, longer: a preamble and a closing summary that restates its first sentence."""
    first = next((s for s in _SENTENCE.split(text.strip()) if s.strip()), text.strip())
    return f"{PREAMBLE}\n\n{text.strip()}\n\n{SUMMARY} {first}"


PROBES = {"chosen plain": (to_plain, to_markdown), "chosen markdown": (to_markdown, to_plain),
          "chosen short": (lambda t: t, padded), "chosen long": (padded, lambda t: t)}
GAPS = {"format": ("chosen markdown", "chosen plain"), "length": ("chosen long", "chosen short")}


def probe_rows(pairs: list[dict]) -> list[dict]:
    """Four probe rows per pair (PROBES), as pair rows with the probe as their subset; ids name the pair."""
    out = []
    for p in pairs:
        for name, (chosen, rejected) in PROBES.items():
            out.append({"id": f"{p['id']}/{name}", "subset": name, "prompt": p["prompt"], "chosen": chosen(p["chosen"]),
                        "rejected": rejected(p["rejected"])})
    return out


def gaps(outcomes: dict[str, list[float]], n_boot: int = 1000, seed: int = 0) -> dict:
    """Each gap's value and paired 95% bootstrap interval (the original pairs resampled)."""
    rng = random.Random(seed)
    n = len(next(iter(outcomes.values())))
    out = {}
    for name, (a, b) in GAPS.items():
        d = [x - y for x, y in zip(outcomes[a], outcomes[b])]
        boots = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
        out[name] = {"gap": sum(d) / n, "ci95": [boots[int(0.025 * (n_boot - 1))], boots[int(0.975 * (n_boot - 1))]]}
    return out


def card_section(results: dict) -> list[str]:
    """The model card's lines for the probes' results ({set name: main()'s result}), as measured."""
    L = ["## What the model pays for style (#46), measured", "",
         "`studies/style_probe.py`: held-out pairs scored again with the content kept and the form changed (the chosen "
         "side as plain prose or as markdown, same words; as it is or padded with a preamble and a summary that add "
         "nothing). A model that judges content alone has both gaps near 0.", "",
         "| set | pairs | chosen plain | chosen markdown | format gap [95%] | chosen short | chosen long | length gap [95%] |",
         "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        a, g = r["accuracy"], r["gaps"]
        f, ln = g["format"], g["length"]
        n = f"{r['pairs']}" + (f" (+{len(r['skipped_too_long'])} too long)" if r.get("skipped_too_long") else "")
        L.append(f"| {name} | {n} | {a['chosen plain']:.3f} | {a['chosen markdown']:.3f} | "
                 f"{f['gap']:+.3f} [{f['ci95'][0]:+.3f}, {f['ci95'][1]:+.3f}] | {a['chosen short']:.3f} | "
                 f"{a['chosen long']:.3f} | {ln['gap']:+.3f} [{ln['ci95'][0]:+.3f}, {ln['ci95'][1]:+.3f}] |")
    return L + [""]


def outcomes_by_probe(margins: dict[str, float], pair_ids: list[str]) -> tuple[dict[str, list[float]], list[str], list[str]]:
    """Each probe's outcomes (1: the chosen side wins) over the pairs whose four probes were all scored, in order;
    the pairs kept and the pairs left out (a probe too long for the backbone, skipped at extraction)."""
    kept = [p for p in pair_ids if all(f"{p}/{name}" in margins for name in PROBES)]
    left = [p for p in pair_ids if p not in kept]
    return {name: [float(margins[f"{p}/{name}"] > 0) for p in kept] for name in PROBES}, kept, left


def result(outcomes: dict[str, list[float]], kept: list[str], skipped: list[str], **about) -> dict:
    return {**about, "pairs": len(kept), "skipped_too_long": skipped,
            "accuracy": {k: sum(v) / len(v) for k, v in outcomes.items()}, "gaps": gaps(outcomes)}


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="held-out pair rows (JSONL, .gz ok), with string responses")
    ap.add_argument("-m", "--model", default=None, help="armo model (default: the shipped one)")
    ap.add_argument("--n", type=int, default=120, help="pairs, a seeded sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--rows-out", default=None, help="only write the probe rows of the sample (to extract once with "
                    "`armo extract --on-error skip` and score several models with `armo evaluate --features`)")
    ap.add_argument("--scored", default=None, help="read the probes' scores from `armo evaluate --pairs-output` of "
                    "those rows instead of scoring them here")
    ap.add_argument("--json", default=None)
    ap.add_argument("--results", default=None, help="a JSON of {set: result} to add this run to, under --set")
    ap.add_argument("--set", default=None, help="the set's name in --results")
    args = ap.parse_args(argv)
    from armo_cli.jsonl import iter_jsonl

    rows = [r for _, r in iter_jsonl(args.input) if isinstance(r.get("chosen"), str) and isinstance(r.get("rejected"), str)]
    random.Random(args.seed).shuffle(rows)
    rows = rows[:args.n]
    if args.rows_out:
        Path(args.rows_out).write_text("".join(json.dumps(r) + "\n" for r in probe_rows(rows)))
        return None
    if args.scored:
        margins = {r["id"]: r["chosen"]["score"] - r["rejected"]["score"] for _, r in iter_jsonl(args.scored)}
        out = result(*outcomes_by_probe(margins, [r["id"] for r in rows]), input=args.input, scored=args.scored,
                     model=args.model)
    else:
        from armo_cli.api import RewardModel
        from armo_cli.errors import ArmoError

        rm = RewardModel(args.model, max_length=args.max_length, overflow="truncate-prompt")
        kept = []
        for r in rows:  # a pair whose probes do not fit --max-length (a response alone too long) is left out, and counted
            try:
                rm.prepare(probe_rows([r]))
                kept.append(r)
            except ArmoError:
                pass
        probes = probe_rows(kept)
        margins = {p["id"]: r["margin"] for p, r in zip(probes, rm.score(probes))}
        out = result(*outcomes_by_probe(margins, [r["id"] for r in rows]), input=args.input, model=str(rm.model.path))
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if args.results:
        path = Path(args.results)
        results = json.loads(path.read_text()) if path.exists() else {}
        results[args.set or args.input] = out
        path.write_text(json.dumps(results, indent=2) + "\n")
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
