"""armo extract against a reference-style loop (one sequence per forward, full prompt each time).

Data: the first 64 pairs whose source starts with hh_rlhf in ../shared/data/pairs.jsonl.gz
(multi-turn, long shared histories). Both runs use the same loaded embedded backbone, in one process.
Also times the GGUF cold load (dequantise + cache) against the cached load.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from armo_cli.backbones import load_backbone
from armo_cli.extract import ExtractConfig, extract
from armo_cli.features import Features
from armo_cli.rendering import Renderer
from armo_cli.rows import Source, iter_examples

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pairs.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args()
    if not Path(args.data).exists():
        raise SystemExit(f"{args.data} is absent: nothing to benchmark")
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # cold: a fresh cache, so the GGUF file is dequantised and written; then the cached load
        os.environ["ARMO_CACHE"] = str(tmp / "cache")
        t0 = time.perf_counter()
        cold = load_backbone("smollm2-135m-instruct")
        t_cold = time.perf_counter() - t0
        del cold
        t0 = time.perf_counter()
        bb = load_backbone("smollm2-135m-instruct")
        t_cached = time.perf_counter() - t0
        assert bb.from_cache

        rows = []
        with gzip.open(args.data, "rt") as fh:
            for line in fh:
                r = json.loads(line)
                if r["source"].startswith("hh_rlhf"):
                    rows.append(r)
                    if len(rows) == args.pairs:
                        break
        inp = tmp / "hh.jsonl"
        inp.write_text("".join(json.dumps(r) + "\n" for r in rows))

        # reference: chosen and rejected each run with their full prompt, one sequence per pass
        renderer = Renderer(bb.tokenizer)
        ref = []
        ref_tokens = 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for ex in iter_examples(Source(str(inp))):
                tree = renderer.tokenize(ex)
                for c in tree.conts:
                    ids = torch.tensor([tree.prompt + c])
                    ref_tokens += ids.shape[1]
                    ref.append(bb.model(input_ids=ids).last_hidden_state[0, -1].float())
        t_ref = time.perf_counter() - t0
        ref = torch.stack(ref).reshape(len(rows), 2, -1)

        out = tmp / "armo.safetensors"
        t0 = time.perf_counter()
        rep = extract(ExtractConfig(input=str(inp), output=str(out), quiet=True), backbone=bb)
        t_armo = time.perf_counter() - t0
        f = Features.load(out)
        ours = f.tensors["response_features"]
        cos = torch.nn.functional.cosine_similarity(ours.reshape(-1, ours.shape[-1]), ref.reshape(-1, ref.shape[-1]), dim=-1)
        armo_tokens = rep.tokens_computed
        ideal = ref_tokens / armo_tokens
        ratio = t_ref / t_armo
        print(f"pairs: {len(rows)} (hh_rlhf, multi-turn), backbone smollm2-135m-instruct on {bb.device} {bb.dtype}")
        print(f"reference loop:   {t_ref:8.2f} s  ({ref_tokens} tokens, {ref_tokens / t_ref:,.0f} tok/s)")
        print(f"armo extract:     {t_armo:8.2f} s  ({armo_tokens} tokens, {armo_tokens / t_armo:,.0f} tok/s)")
        print(f"speed-up:         {ratio:8.3f}x")
        print(f"ideal ratio:      {ideal:8.3f}x  (reference tokens / armo tokens)")
        print(f"efficiency:       {ratio / ideal:8.3f}  (target >= 0.9)")
        print(f"min cosine sim:   {cos.min().item():.6f}  (target >= 0.9999)")
        print(f"GGUF cold load:   {t_cold:8.2f} s  (dequantise + write cache + load)")
        print(f"cached load:      {t_cached:8.2f} s  ({t_cold / t_cached:.1f}x faster, target >= 5x)")


if __name__ == "__main__":
    main()
