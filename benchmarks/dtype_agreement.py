"""Are bf16 features the same features as fp32 ones? (Why provenance allows a dtype difference with a warning.)

Extracts the embedded backbone's features of the first N permissively licensed pairs of
../shared/data/pairs.jsonl.gz (those within --max-length) in fp32 and in bf16 on this machine and prints the
cosine similarity of each prompt and response feature between the two, and how often a linear score's sign
would flip (the sign of a random direction's margin, as a stand-in for any linear head).
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import torch

from armo_cli.backbones import load_backbone
from armo_cli.forward import encode_trees
from armo_cli.rendering import Renderer
from armo_cli.rows import parse_row

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pairs.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: nothing to measure")
    rows = []
    for line in gzip.open(DATA, "rt"):
        r = json.loads(line)
        if r["source"].startswith(("hh_rlhf", "ultrafeedback", "pandalm")):
            rows.append(r)
        if len(rows) == args.pairs:
            break
    feats = {}
    for dt in ("fp32", "bf16"):
        bb = load_backbone("smollm2-135m-instruct", device="cpu", dtype=dt, fast=True)
        r = Renderer(bb.tokenizer)
        trees = [t for t in (r.tokenize(parse_row(row, f"row {i}"), i) for i, row in enumerate(rows))
                 if max(t.seq_lengths()) <= args.max_length]
        feats[dt] = encode_trees(bb, trees, 2048, max_padding=0.05)
    d = feats["fp32"][0].shape[-1]
    print(f"dtype_agreement: {len(trees)} pairs, embedded backbone, fp32 vs bf16 (CPU)")
    for j, name in enumerate(("prompt features", "response features")):
        a, b = feats["fp32"][j].reshape(-1, d), feats["bf16"][j].reshape(-1, d)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        print(f"  {name:<18} cosine min {float(cos.min()):.4f}  mean {float(cos.mean()):.4f}")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(100, d, generator=g)
    m32 = (feats["fp32"][1][:, 0] - feats["fp32"][1][:, 1]) @ w.T
    m16 = (feats["bf16"][1][:, 0] - feats["bf16"][1][:, 1]) @ w.T
    print(f"  margin sign flips over 100 random linear heads: {float((m32.sign() != m16.sign()).double().mean()):.4f}")


if __name__ == "__main__":
    main()
