"""What the LM objectives cost, and what they say on armo's own examples: extraction with and without them, side by side.

Arms, on the same pairs, the embedded backbone (SmolLM2-135M, fp32, this CPU) and the default model's feature
settings (layer -18, mean pooling):
- features: today's extraction (the pass stops at layer -18);
- + lm-mean-logprob: the same pass run to the last layer and through the LM head at the response tokens;
- + lm-pmi too: and a second pass over every response after an empty prompt.
Each arm runs twice, alternating, after a warm-up; the faster run counts. Tokens/s counts the rows' own tokens (the
first pass's), so the ratio is the cost of each arm for the same work. Then, on examples/eval.jsonl and
examples/pairs.jsonl (hand-written pairs; not a benchmark), how often each LM objective alone prefers the chosen side,
and the README's first example (Canberra against Sydney).

    python benchmarks/lm_objectives_bench.py [--pairs N]   # about 2 minutes for 42 pairs
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from armo_cli.backbones import load_backbone
from armo_cli.devices import batch_defaults
from armo_cli.forward import encode_trees
from armo_cli.lm_objectives import LM_OBJECTIVES
from armo_cli.rendering import Renderer
from armo_cli.rows import parse_row

ROOT = Path(__file__).resolve().parents[1]
LAYER, POOLING = -18, "mean"
ARMS = {"features": [], "+ lm-mean-logprob": ["lm-mean-logprob"], "+ lm-pmi too": list(LM_OBJECTIVES)}


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=42, help="pairs of examples/pairs.jsonl + eval.jsonl to time")
    args = ap.parse_args()
    bb = load_backbone("smollm2-135m-instruct", device="cpu", dtype="fp32", fast=True)
    r = Renderer(bb.tokenizer)
    examples = rows(ROOT / "examples" / "pairs.jsonl") + rows(ROOT / "examples" / "eval.jsonl")
    trees = [r.tokenize(parse_row(x, f"examples:{i + 1}"), i) for i, x in enumerate(examples)]
    timed = trees[:args.pairs]
    tokens = sum(t.length for t in timed)
    batch_tokens, max_padding = batch_defaults(bb.device, bb.model)
    encode_trees(bb, timed[:4], batch_tokens, None, max_padding, LAYER, POOLING, lm=list(LM_OBJECTIVES))  # warm-up
    best = {a: float("inf") for a in ARMS}
    for _ in range(2):
        for arm, lm in ARMS.items():
            t0 = time.perf_counter()
            encode_trees(bb, timed, batch_tokens, None, max_padding, LAYER, POOLING, lm=lm)
            best[arm] = min(best[arm], time.perf_counter() - t0)
    print(f"extraction cost: {len(timed)} pairs, {tokens} tokens (prompt once, both responses), layer {LAYER}, "
          f"{POOLING} pooling, {torch.get_num_threads()} threads")
    print(f"{'arm':<20} {'seconds':>8} {'tokens/s':>9} {'x features':>11}")
    for arm, s in best.items():
        print(f"{arm:<20} {s:8.2f} {tokens / s:9,.0f} {s / best['features']:11.2f}")

    _, R = encode_trees(bb, trees, batch_tokens, None, max_padding, LAYER, POOLING, lm=list(LM_OBJECTIVES))
    d = bb.hidden_size
    n_pairs, n_eval = len(rows(ROOT / "examples" / "pairs.jsonl")), len(rows(ROOT / "examples" / "eval.jsonl"))
    print("\neach LM objective alone, chosen scored higher (hand-written examples, not a benchmark):")
    for j, name in enumerate(LM_OBJECTIVES):
        right = (R[:, 0, d + j] > R[:, 1, d + j]).tolist()
        print(f"  {name:<16} examples/pairs.jsonl {sum(right[:n_pairs])} of {n_pairs}, "
              f"examples/eval.jsonl {sum(right[n_pairs:])} of {n_eval}")
    t = r.tokenize(parse_row(rows(ROOT / "examples" / "pair.jsonl")[0], "examples/pair.jsonl:1"), 0)
    _, R1 = encode_trees(bb, [t], batch_tokens, None, max_padding, LAYER, POOLING, lm=list(LM_OBJECTIVES))
    for j, name in enumerate(LM_OBJECTIVES):
        print(f"  README example, {name}: Canberra {float(R1[0, 0, d + j]):+.3f}, Sydney {float(R1[0, 1, d + j]):+.3f}")


if __name__ == "__main__":
    main()
