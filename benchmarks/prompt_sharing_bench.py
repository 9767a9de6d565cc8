"""Rows that share a prompt, run as one tree (forward.share_prompts) against each row apart, side by side.

Workloads, from ../shared/data on the embedded backbone (SmolLM2-135M, fp32, this CPU):
- best-of-n: single responses, the rating rows of the first --prompts prompts that have at least --n responses
  (UltraFeedback-style: several completions of one prompt), n of each; what `score` gets from a policy's samples;
- group: --groups multi-turn hh_rlhf prompts with --group-size responses each, the responses taken from the next
  hh_rlhf pairs (a GRPO group's shape: a long conversation, short replies; the texts do not matter for speed);
- pairs: the first --pairs preference pairs as they come in pairs.jsonl.gz (prompts rarely repeat there: the
  check that sharing costs nothing where it finds little to share).
Each arm runs twice, alternating, after a warm-up; the faster of the two counts. Prints the wall time, tokens
computed, the ratio and the largest feature difference between the arms.
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from armo_cli.backbones import load_backbone
from armo_cli.devices import batch_defaults
from armo_cli.forward import encode_trees, pass_cost, share_prompts
from armo_cli.rendering import Renderer
from armo_cli.rows import parse_row

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def best_of_n(prompts: int, n: int) -> list[dict]:
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    with gzip.open(DATA / "ratings.jsonl.gz", "rt") as fh:
        for line in fh:
            r = json.loads(line)
            by_prompt[json.dumps(r["prompt"])].append({"prompt": r["prompt"], "response": r["response"]})
    groups = [g[:n] for g in by_prompt.values() if len(g) >= n][:prompts]
    return [r for g in groups for r in g]


def group(groups: int, n: int) -> list[dict]:
    hh = []
    with gzip.open(DATA / "pairs.jsonl.gz", "rt") as fh:
        for line in fh:
            r = json.loads(line)
            if r["source"].startswith("hh_rlhf"):
                hh.append(r)
                if len(hh) == groups * (1 + n // 2):
                    break
    prompts, donors = hh[:groups], hh[groups:]
    replies = [r[side] for r in donors for side in ("chosen", "rejected")]
    return [{"prompt": p["prompt"], "response": replies[(i * n + j) % len(replies)]}
            for i, p in enumerate(prompts) for j in range(n)]


def pairs(k: int) -> list[dict]:
    rows = []
    with gzip.open(DATA / "pairs.jsonl.gz", "rt") as fh:
        for line in fh:
            r = json.loads(line)
            rows.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]})
            if len(rows) == k:
                break
    return rows


def run(bb, trees, share: bool) -> tuple[float, torch.Tensor]:
    batch_tokens, max_padding = batch_defaults(bb.device, bb.model)
    t0 = time.perf_counter()
    _, resp = encode_trees(bb, trees, batch_tokens, None, max_padding, share=share)
    return time.perf_counter() - t0, resp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if not (DATA / "ratings.jsonl.gz").exists():
        raise SystemExit(f"{DATA} is absent: nothing to benchmark")
    torch.manual_seed(0)
    bb = load_backbone("smollm2-135m-instruct", device="cpu", dtype="fp32", fast=True)
    renderer = Renderer(bb.tokenizer)
    batch_tokens, _ = batch_defaults(bb.device, bb.model)
    cost = pass_cost(bb.model.config)
    results = {}
    for name, rows in (("best-of-n", best_of_n(args.prompts, args.n)), ("group", group(args.groups, args.group_size)),
                       ("pairs", pairs(args.pairs))):
        examples = [parse_row(r, f"{name}:{i}") for i, r in enumerate(rows)]
        trees = renderer.tokenize_many(examples, list(range(len(examples))))
        bad = [t for t in trees if not hasattr(t, "prompt")]
        assert not bad, bad[0]
        units = share_prompts(trees, cost, batch_tokens)
        apart_tokens = sum(t.length for t in trees)
        shared_tokens = sum(u.tree.length for u in units)
        run(bb, trees[:8], True)  # warm-up
        times = {True: [], False: []}
        feats = {}
        for _ in range(2):
            for share in (False, True):
                dt, feats[share] = run(bb, trees, share)
                times[share].append(dt)
        t_apart, t_shared = min(times[False]), min(times[True])
        diff = float((feats[True] - feats[False]).abs().max())
        cos = float(torch.nn.functional.cosine_similarity(feats[True].flatten(0, -2), feats[False].flatten(0, -2), dim=-1).min())
        results[name] = {"rows": len(trees), "units": len(units), "tokens_apart": apart_tokens,
                         "tokens_shared": shared_tokens, "seconds_apart": round(t_apart, 3),
                         "seconds_shared": round(t_shared, 3), "speedup": round(t_apart / t_shared, 3),
                         "max_abs_diff": diff, "min_cosine": cos}
    print(f"prompt sharing across rows, {bb.spec.name} fp32 on CPU (best of 2 runs each, alternating)")
    print(f"{'workload':<10} {'rows':>5} {'units':>6} {'tokens apart':>13} {'tokens shared':>14} "
          f"{'s apart':>8} {'s shared':>9} {'speedup':>8} {'max |diff|':>11} {'min cos':>8}")
    for name, r in results.items():
        print(f"{name:<10} {r['rows']:>5} {r['units']:>6} {r['tokens_apart']:>13,} {r['tokens_shared']:>14,} "
              f"{r['seconds_apart']:>8.2f} {r['seconds_shared']:>9.2f} {r['speedup']:>7.2f}x {r['max_abs_diff']:>11.2e} "
              f"{r['min_cosine']:>8.5f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
