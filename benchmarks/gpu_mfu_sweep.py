"""Where armo extract's GPU time goes at Llama-3-8B shape: the follow-up to gpu_bench.py's MFU figure.

On the same pairs and random backbone as gpu_bench.py, it times the forward passes alone (trees tokenized
beforehand), each setting twice in a row: "cold" is the first time that setting meets its batch shapes
(kernels that build a plan per shape, such as cuDNN attention, pay for it here, as every batch of a real
extract does, since length-sorted batches rarely repeat a shape), "warm" the second. Settings: sdpa's own
backend choice and each backend forced; token budgets per batch; and, for scale, a dense causal forward with
no mask at the same token count (the most this model and stack reach on the device). It also times rendering
and tokenizing on the host, and `armo extract` end to end at the default chunk size and with every pair in
one chunk.
    python benchmarks/gpu_mfu_sweep.py --data gpu_bench_data --json sweep.json      (GPU)
    python benchmarks/gpu_mfu_sweep.py --tiny --data gpu_bench_data                 (CPU check)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_bench import LLAMA3_8B, PEAKS, TINY, attended, flops, load_tokenizer, random_backbone, sync  # noqa: E402

from armo_cli.forward import encode_trees, token_batches  # noqa: E402
from armo_cli.rendering import Renderer  # noqa: E402
from armo_cli.rows import parse_row  # noqa: E402


def kernel_ctx(name: str | None):
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name)])


def timed(device, fn) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from armo_cli.devices import auto_device, auto_dtype
    from armo_cli.configs import ExtractConfig
    from armo_cli.extract import extract

    device = auto_device(None)
    dtype = auto_dtype(device, None)
    data = Path(args.data) if args.data else None
    tok = load_tokenizer(data)
    bb = random_backbone(tok, TINY if args.tiny else LLAMA3_8B, device, dtype)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    pairs_file = data / "pairs.jsonl" if data else ROOT / "examples" / "pairs.jsonl"
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()][: (32 if args.tiny else args.pairs)]
    renderer = Renderer(bb.tokenizer)
    t0 = time.perf_counter()
    trees = [renderer.tokenize(parse_row(r, f"pairs:{i}"), i) for i, r in enumerate(rows)]
    host_tokenize_s = time.perf_counter() - t0
    real = sum(t.length for t in trees)
    f_real = flops(bb.model, real, sum(attended(len(t.prompt), [len(c) for c in t.conts]) for t in trees))
    res: dict = {"device": name, "dtype": str(dtype), "pairs": len(trees), "tokens": real, "peak_tflops": peak,
                 "host_render_tokenize_seconds": host_tokenize_s, "forward_only": [], "extract": []}

    def row(label: str, seconds: float, padded: int | None = None) -> dict:
        r = {"setting": label, "seconds": seconds, "tflops_real_tokens": f_real / seconds / 1e12}
        if peak:
            r["mfu"] = r["tflops_real_tokens"] / peak
        if padded is not None:
            r["padded_share"] = 1 - real / padded
        return r

    def padded_tokens(bt: int, mp: float) -> int:
        return sum(len(b) * b[0].length for b in token_batches(trees, bt, mp))

    # warm-up on a few trees (the allocator, cuBLAS handles), then the sweep
    with torch.no_grad():
        encode_trees(bb, trees[:4], 32768, None, 0.25)
    settings = [(None, 32768, 0.25), ("CUDNN_ATTENTION", 32768, 0.25), ("EFFICIENT_ATTENTION", 32768, 0.25),
                ("MATH", 32768, 0.25), ("EFFICIENT_ATTENTION", 65536, 0.25), ("EFFICIENT_ATTENTION", 131072, 0.25),
                ("EFFICIENT_ATTENTION", 65536, 0.10), (None, 65536, 0.25)]
    for kern, bt, mp in settings:
        for pas in ("cold", "warm"):
            try:
                with kernel_ctx(kern), torch.no_grad():
                    s = timed(device, lambda: encode_trees(bb, trees, bt, None, mp))
                r = row(f"{kern or 'sdpa default'} budget {bt} max-padding {mp} {pas}", s, padded_tokens(bt, mp))
            except RuntimeError as e:
                r = {"setting": f"{kern} budget {bt} {pas}", "error": str(e).splitlines()[0][:100]}
            res["forward_only"].append(r)
            print(r, flush=True)

    # the most this stack reaches: a dense causal batch, no mask, the same number of tokens
    L = 512
    B = max(1, min(64, real // L))
    ids = torch.randint(0, len(tok), (B, L), device=device)
    with torch.no_grad():
        bb.model(input_ids=ids, use_cache=False)
        s = timed(device, lambda: bb.model(input_ids=ids, use_cache=False))
    f_dense = flops(bb.model, B * L, B * attended(L, []))
    d = {"setting": f"dense causal, no mask, {B}x{L}", "seconds": s, "tflops": f_dense / s / 1e12}
    if peak:
        d["mfu"] = d["tflops"] / peak
    res["dense_upper_bound"] = d
    print(d, flush=True)

    work = Path(tempfile.mkdtemp(prefix="gpu_sweep-"))
    (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for kern, chunk in [(None, 256), ("EFFICIENT_ATTENTION", 256), ("EFFICIENT_ATTENTION", 4096)]:
        cfg = ExtractConfig(input=str(work / "pairs.jsonl"), output=str(work / f"o-{chunk}-{kern}.st"), backbone=bb.spec.name,
                            device=str(device), quiet=True, chunk_size=chunk, batch_tokens=32768)
        label = f"extract end to end, {kern or 'sdpa default'}, chunk {chunk}"
        try:
            with kernel_ctx(kern):
                s = timed(device, lambda: extract(cfg, backbone=bb))
            r = row(label, s)
        except Exception as e:  # noqa: BLE001 - a backend this device lacks is reported, the rest stands
            r = {"setting": label, "error": str(e).splitlines()[0][:100]}
        res["extract"].append(r)
        print(r, flush=True)

    print(f"gpu_mfu_sweep: {name}, {len(trees)} pairs, {real} tokens; host render+tokenize {host_tokenize_s:.2f} s")
    for r in res["forward_only"] + [d] + res["extract"]:
        if "error" in r:
            print(f"  {r['setting']:60s} error: {r['error']}")
        else:
            mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "  n/a"
            pad = f"  padded {100 * r['padded_share']:4.1f}%" if "padded_share" in r else ""
            print(f"  {r['setting']:60s} {r['seconds']:7.2f} s {r.get('tflops_real_tokens', r.get('tflops')):8.1f} TFLOP/s {mfu}{pad}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
