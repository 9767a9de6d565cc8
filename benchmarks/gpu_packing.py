"""Packing a batch's trees into one row under a FlexAttention block mask ("flex"), against one tree per padded
row ("rows"), on the same pairs in one run (#16).

One tree per row pads each batch to its longest tree: at Llama-3-8B shape on an H200 the forward passes ran at
43% MFU with 10% of the batch padding and 37% with 25% (gpu_mfu_sweep_h200.json), close to a fixed efficiency
on every token run, real or padding. "flex" puts all of a batch's trees in one row, with a block mask read off
the trees' spans: tiles that cross trees are skipped, no padding is run and no dense mask is built (the
attention kernel compiles on first use). A third layout, several trees first-fit into rows of 1024 or 2048
tokens under a dense block-diagonal mask, was measured by the first version of this script and dropped: it
was slower than one tree per row (results/gpu_packing_h200_first.json).
For each layout: the forward passes over all pairs (after a warm-up pass over all of them: kernels, plans,
compiles), twice, the faster taken; the tokens run (padding included); MFU on real tokens; and the features
against one tree per row (largest difference, smallest cosine). Then `armo extract --packing` end to end,
twice each. --first-use: what flex costs a fresh process instead.
    python benchmarks/gpu_packing.py --data gpu_bench_data --json gpu_packing.json     (a GPU)
    python benchmarks/gpu_packing.py --tiny                                            (this CPU)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_bench import (LLAMA3_8B, PEAKS, TINY, attended, flops, load_tokenizer, random_backbone,  # noqa: E402
                       run_tokens, sync)

import armo_cli.forward as fwd  # noqa: E402
from armo_cli.rendering import Renderer  # noqa: E402
from armo_cli.rows import parse_row  # noqa: E402


def seconds(fn, device: torch.device) -> float:
    """Wall time of fn(), the device's queued work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def workdir(rows: list[dict], bb, device: torch.device, batch_tokens: int) -> tuple[Path, dict]:
    """A folder with the pairs (pairs.jsonl) and the first 8 (warm.jsonl), and extract's settings for them."""
    work = Path(tempfile.mkdtemp(prefix="gpu_packing-"))
    (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "warm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    return work, dict(backbone=bb.spec.name, device=str(device), quiet=True, batch_tokens=batch_tokens)


def record(res: dict, key: str, entry: dict, peak: float | None, json_path: str | None) -> str:
    """Add the entry's MFU (where the device's peak is known), append it to res[key], write the JSON so far;
    returns the MFU as printed."""
    if peak:
        entry["mfu"] = entry["tflops"] / peak
    res[key].append(entry)
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2) + "\n")
    return f"{100 * entry['mfu']:.1f}%" if peak else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None, help="a gpu_bench.py --prepare folder")
    ap.add_argument("--tiny", action="store_true", help="a tiny model of the same family (CPU)")
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--layouts", default="rows,flex", help="which layouts to run, in order (comma-separated)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--first-use", action="store_true",
                    help="only the first-use cost in this process: compiles (run it twice: the second process finds "
                         "torch's compile cache on disk)")
    args = ap.parse_args()

    from armo_cli.devices import auto_device, auto_dtype
    from armo_cli.configs import ExtractConfig
    from armo_cli.extract import extract
    from armo_cli.devices import batch_defaults
    from armo_cli.forward import encode_trees

    device = auto_device(None)
    dtype = auto_dtype(device, None)
    data = Path(args.data) if args.data else None
    pairs_file = data / "pairs.jsonl" if data else ROOT / "examples" / "pairs.jsonl"
    n = args.pairs if not args.tiny else min(args.pairs, 32)
    tok = load_tokenizer(data)
    bb = random_backbone(tok, TINY if args.tiny else LLAMA3_8B, device, dtype)
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()][:n]
    renderer = Renderer(bb.tokenizer)
    trees = [renderer.tokenize(parse_row(r, f"pairs:{i}"), i) for i, r in enumerate(rows)]
    real = sum(t.length for t in trees)
    f_real = flops(bb.model, real, sum(attended(len(t.prompt), [len(c) for c in t.conts]) for t in trees))
    batch_tokens, max_padding = batch_defaults(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    print(f"gpu_packing: {'tiny' if args.tiny else 'llama-3-8b'} shape, {str(dtype).replace('torch.', '')}, {name}; "
          f"{len(trees)} pairs, {real} real tokens; batches of {batch_tokens} tokens", flush=True)

    if args.first_use:
        first_use(bb, rows, trees, batch_tokens, device, args.json)
        return
    labels = {"rows": "one tree per row (10% padding at most)", "flex": "flex, one row per batch"}
    layouts = [(labels[k], k) for k in args.layouts.split(",")]
    res: dict = {"device": name, "dtype": str(dtype), "pairs": len(trees), "real_tokens": real,
                 "batch_tokens": batch_tokens, "peak_tflops": peak, "forward_only": [], "extract": []}
    ref = None
    print(f"{'forward passes':40s}{'first s':>9s}{'s':>8s}{'run tokens':>12s}{'padding':>9s}{'TFLOP/s':>9s}{'MFU':>7s}"
          f"{'max|diff|':>11s}{'min cos':>9s}", flush=True)
    for label, layout in layouts:
        row: dict = {"layout": label, "kind": layout}
        try:
            got: list = []

            def run(layout: str = layout) -> None:
                got[:] = encode_trees(bb, trees, batch_tokens, None, max_padding, layout=layout)

            with torch.no_grad():
                row["first_run_seconds"] = seconds(run, device)  # warm-up: kernels, plans, compiles
                times = [seconds(run, device) for _ in range(2)]
            P, R = got
        except Exception as e:  # noqa: BLE001 - the study reports what failed; the other layouts stand
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            print(f"{label:40s} failed: {row['error']}", flush=True)
            res["forward_only"].append(row)
            continue
        feats = torch.cat([P[:, None], R], 1).float()
        if ref is None:
            ref = feats
        tokens = run_tokens(trees, batch_tokens, max_padding, layout)
        row.update(seconds_each_run=times, seconds=min(times), run_tokens=tokens, padded_share=1 - real / tokens,
                   tflops=f_real / min(times) / 1e12, max_abs_diff_vs_rows=float((feats - ref).abs().max()),
                   min_cosine_vs_rows=float(torch.nn.functional.cosine_similarity(feats, ref, dim=-1).min()))
        mfu = record(res, "forward_only", row, peak, args.json)
        print(f"{label:40s}{row['first_run_seconds']:9.2f}{row['seconds']:8.2f}{tokens:12d}{row['padded_share']:9.1%}"
              f"{row['tflops']:9.2f}{mfu:>7s}{row['max_abs_diff_vs_rows']:11.2e}{row['min_cosine_vs_rows']:9.5f}", flush=True)

    work, cfg = workdir(rows, bb, device, batch_tokens)
    print("armo extract, end to end (each twice, after a warm-up on 8 pairs):", flush=True)
    for label, layout in layouts:
        if any(r["kind"] == layout and "error" in r for r in res["forward_only"]):
            continue
        extract(ExtractConfig(input=str(work / "warm.jsonl"), output=str(work / f"warm-{layout}.st"), packing=layout, **cfg),
                backbone=bb)
        times = [seconds(lambda k=k: extract(ExtractConfig(input=str(work / "pairs.jsonl"), output=str(work / f"p-{layout}-{k}.st"),
                                                           packing=layout, **cfg), backbone=bb), device) for k in range(2)]
        e = {"layout": label, "seconds_each_run": times, "seconds": min(times), "pairs_per_s": len(trees) / min(times),
             "tflops": f_real / min(times) / 1e12}
        mfu = record(res, "extract", e, peak, args.json)
        print(f"  {label:38s} {', '.join(f'{t:.2f} s' for t in times)}: {e['pairs_per_s']:.1f} pairs/s, "
              f"{e['tflops']:.1f} TFLOP/s, MFU {mfu}", flush=True)


def first_use(bb, rows, trees, batch_tokens: int, device: torch.device, json_path: str | None) -> None:
    """What flex costs a fresh process: `armo extract` on 8 pairs one tree per row (CUDA and cuBLAS start-up),
    the block mask alone, `extract` on the same 8 pairs with flex (the attention kernel's compile), then on all
    pairs with flex (a second compile, for varying shapes), twice."""
    from armo_cli.configs import ExtractConfig
    from armo_cli.extract import extract

    work, cfg = workdir(rows, bb, device, batch_tokens)
    out: dict = {}

    def timed(key: str, fn) -> None:
        out[key] = seconds(fn, device)
        print(f"  {key:44s} {out[key]:7.2f} s", flush=True)
        if json_path:
            Path(json_path).write_text(json.dumps(out, indent=2) + "\n")

    def run(packing: str, src: str, dst: str):
        extract(ExtractConfig(input=str(work / src), output=str(work / dst), packing=packing, **cfg), backbone=bb)

    print("first use in this process:", flush=True)
    timed("extract 8 pairs, one tree per row", lambda: run("rows", "warm.jsonl", "a.st"))
    places, B, L = fwd.place_trees(trees[:8], "flex")
    timed("the block mask alone (8 pairs)", lambda: fwd.flex_batch(trees[:8], device, places, (B, L)))
    timed("extract 8 pairs, flex", lambda: run("flex", "warm.jsonl", "b.st"))
    timed("extract all pairs, flex", lambda: run("flex", "pairs.jsonl", "c.st"))
    timed("extract all pairs, flex, again", lambda: run("flex", "pairs.jsonl", "d.st"))


if __name__ == "__main__":
    main()
