"""armo's GPU path at Llama-3-8B shape: throughput, MFU, memory and feature agreement, against the reference loop.

A randomly initialised LlamaModel is built from a config alone (default: Llama-3-8B's shape, bf16, sdpa; random
weights cost the same FLOPs as real ones; nothing is downloaded), with the embedded backbone's tokenizer. On the
same device, in one run, it measures:
  - `armo extract` (tree-masked pairs: the prompt once, both responses; length-sorted token-budget batches),
    end to end through armo's own extract() with the model passed in;
  - the reference loop of the research scripts: one sequence per forward pass, chosen and rejected each with
    the full prompt, batch size 1;
  - `armo score` on the same pairs (heads fitted on the extracted features with armo's own fit functions);
  - agreement: armo's features vs separate full passes in the same dtype (smallest and mean cosine);
  - which sdpa kernels accept armo's tree mask (a 4D additive mask rules out flash attention) and their speed,
    with the features of each compared to the default;
  - FlexAttention with a block mask computed from the trees' segment ids (no dense mask), against sdpa with the
    dense mask on the same batches: time after a compiling warm-up, and the feature difference (--no-flex skips
    it, for a rerun short of time).
Token counts: "processed" are the tokens each method runs (armo: prompt once; reference: prompt twice);
"reference-equivalent tokens/s" divides the reference loop's token count by each method's time, so the ratio
is the wall-time speed-up on the same pairs. FLOPs per forward: 2 x (non-embedding parameters) per token plus
attention, 4 x layers x d x (attended positions) per token; MFU = achieved / the GPU's dense bf16 peak.

Prepare the data once on a machine that has ../shared/data and armo's embedded backbone (writes an ignored folder
that travels to the GPU machine):
    python benchmarks/gpu_bench.py --prepare gpu_bench_data
On a GPU (bring gpu_bench_data; PYTHONPATH=. if armo is not installed):
    python benchmarks/gpu_bench.py --data gpu_bench_data --json gpu_bench.json
On this CPU, a tiny model of the same family (a few minutes, in CI):
    python benchmarks/gpu_bench.py --tiny
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from armo_cli.backbones import Backbone, BackboneSpec  # noqa: E402
from armo_cli.rendering import Renderer  # noqa: E402
from armo_cli.rows import parse_row  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "pairs.jsonl.gz"
# dense bf16 tensor-core peaks (TFLOP/s) of SXM parts, from NVIDIA's data sheets
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0)
TINY = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=8192)


def prepare(out: Path, n: int) -> None:
    """The tokenizer (from armo's cache of the embedded backbone) and the first N hh_rlhf pairs, into OUT."""
    from armo_cli.backbones import load_backbone

    bb = load_backbone("smollm2-135m-instruct", "cpu", "fp32", fast=True)
    folder = Path(bb.model.config._name_or_path) if hasattr(bb.model.config, "_name_or_path") else None
    src = folder if folder and (folder / "tokenizer.json").exists() else None
    if src is None:
        from armo_cli.backbones import find_named_gguf, gguf_cache_dir

        src, _ = gguf_cache_dir(find_named_gguf("smollm2-135m-instruct"))
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, out / "tokenizer" / name)
    rows = []
    with gzip.open(SHARED, "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["source"].startswith("hh_rlhf"):
                rows.append(r)
                if len(rows) == n:
                    break
    (out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"gpu_bench: wrote {out}/tokenizer and {len(rows)} hh_rlhf pairs to {out}/pairs.jsonl")


def load_tokenizer(data: Path | None):
    from transformers import AutoTokenizer

    if data is not None and (data / "tokenizer" / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    from armo_cli.backbones import find_named_gguf, gguf_cache_dir, load_backbone

    load_backbone("smollm2-135m-instruct", "cpu", "fp32", fast=True)  # converts once into armo's cache
    folder, _ = gguf_cache_dir(find_named_gguf("smollm2-135m-instruct"))
    return AutoTokenizer.from_pretrained(str(folder))


def random_backbone(tok, shape: dict, device: torch.device, dtype: torch.dtype) -> Backbone:
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=len(tok), attn_implementation="sdpa", **shape)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaModel(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval().requires_grad_(False)
    fp = "random-llama-" + "-".join(f"{k}{v}" for k, v in sorted(shape.items()))
    return Backbone(BackboneSpec(fp, "folder"), model, tok, device, dtype, fp)


def attended(prompt: int, conts: list[int]) -> int:
    """Sum over tokens of the positions each attends to (itself included), for a prompt shared by `conts`."""
    s = prompt * (prompt + 1) // 2
    for c in conts:
        s += c * prompt + c * (c + 1) // 2
    return s


def run_tokens(trees, batch_tokens: int, max_padding: float, layout: str) -> int:
    """Tokens armo's forward passes run in a layout, padding included."""
    from armo_cli.forward import place_trees, token_batches

    total = 0
    for batch in token_batches(trees, batch_tokens, max_padding, layout):
        _, rows, width = place_trees(batch, layout)
        total += rows * width
    return total


def flops(model, tokens: int, attended_positions: int) -> float:
    c = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    return 2.0 * params * tokens + 4.0 * c.num_hidden_layers * c.hidden_size * attended_positions


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def reference_loop(bb: Backbone, trees) -> tuple[float, torch.Tensor]:
    """One sequence per forward pass, batch size 1, each response with the full prompt."""
    feats = torch.empty(len(trees), 2, bb.hidden_size)
    sync(bb.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, t in enumerate(trees):
            for k, c in enumerate(t.conts):
                ids = torch.tensor([t.prompt + c], device=bb.device)
                feats[i, k] = bb.model(input_ids=ids, use_cache=False).last_hidden_state[0, -1].float().cpu()
    sync(bb.device)
    return time.perf_counter() - t0, feats


def timed_forward(bb: Backbone, trees, batch_tokens: int, max_padding: float, layout: str) -> float:
    from armo_cli.forward import encode_trees

    sync(bb.device)
    t0 = time.perf_counter()
    encode_trees(bb, trees, batch_tokens, None, max_padding, layout=layout)
    sync(bb.device)
    return time.perf_counter() - t0


LLAMA3_VOCAB = 128256  # Llama 3's vocabulary: the LM head the LM objectives read at 8B shape


def lm_study(bb: Backbone, trees, batch_tokens: int, max_padding: float, vocab: int) -> dict:
    """What the LM objectives cost at this shape (#37 §3): the same trees encoded without them, with lm-mean-logprob
    (the pass runs to the last layer and through the LM head at the response tokens) and with lm-pmi too (a second
    pass over the responses after an empty prompt), side by side. The random backbone has no LM head: a random one
    of `vocab` rows (untied, as Llama 3 8B's) stands in, in float32 as armo keeps it."""
    from armo_cli.forward import encode_trees
    from armo_cli.lm_objectives import LM_OBJECTIVES, MEAN_LOGPROB

    if "lm_head" not in bb.extra:
        g = torch.Generator(device="cpu").manual_seed(0)
        bb.extra["lm_head"] = (torch.randn(vocab, bb.hidden_size, generator=g) * 0.02).to(bb.device)
    tokens = sum(t.length for t in trees)
    out = {"vocab": vocab, "pairs": len(trees), "tokens": tokens}
    arms = {"features": [], "+ lm-mean-logprob": [MEAN_LOGPROB], "+ lm-pmi too": list(LM_OBJECTIVES)}
    with torch.no_grad():
        encode_trees(bb, trees[:4], batch_tokens, None, max_padding, lm=list(LM_OBJECTIVES))  # warm-up
        for name, lm in arms.items():
            reset_memory(bb.device)
            sync(bb.device)
            t0 = time.perf_counter()
            encode_trees(bb, trees, batch_tokens, None, max_padding, lm=lm)
            sync(bb.device)
            t = time.perf_counter() - t0
            out[name] = {"seconds": t, "tokens_per_s": tokens / t, "peak_memory_gib": peak_memory(bb.device)}
    for name in arms:
        out[name]["x_features"] = out[name]["seconds"] / out["features"]["seconds"]
    return out


def kernel_study(bb: Backbone, trees, batch_tokens: int, max_padding: float) -> list[dict]:
    """Which sdpa backends run armo's tree-masked batches, how fast, and whether they give the same features:
    armo's own choice (devices.attention_kernels), sdpa's choice with nothing forced, then each backend
    alone. Each is timed after a warm-up on a few trees; a backend that builds a plan per batch shape
    (cuDNN) pays for the shapes it has not met yet in whichever row meets them first."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import armo_cli.forward as fwd
    from armo_cli.forward import encode_trees

    out, ref = [], None
    names = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"]
    armo_kernels = fwd.attention_kernels
    for name in ["armo", None, *names]:
        ctx = sdpa_kernel([getattr(SDPBackend, name)]) if name not in (None, "armo") else contextlib.nullcontext()
        if name != "armo":  # armo's preference would override the backend forced here
            fwd.attention_kernels = lambda device: contextlib.nullcontext()
        try:
            with ctx, torch.no_grad():
                encode_trees(bb, trees[:4], batch_tokens, None, max_padding)  # warm-up (and the support check)
                sync(bb.device)
                t0 = time.perf_counter()
                _, R = encode_trees(bb, trees, batch_tokens, None, max_padding)
                sync(bb.device)
            dt = time.perf_counter() - t0
            if ref is None:
                ref = R
            diff = float((R - ref).abs().max())
            label = {"armo": "armo's choice", None: "sdpa's choice"}.get(name, name)
            out.append({"kernel": label, "seconds": dt, "max_abs_diff_vs_armo": diff})
        except RuntimeError as e:
            out.append({"kernel": name, "error": str(e).splitlines()[0][:120]})
        finally:
            fwd.attention_kernels = armo_kernels
    return out


def flex_study(bb: Backbone, trees, batch_tokens: int, max_padding: float) -> dict:
    """armo's flex layout (each batch's trees packed into one row under a FlexAttention block mask read off
    their spans: no padding, no dense mask) against one tree per padded row under sdpa's dense mask: time for
    the same trees, and the largest feature difference. The kernel compiles on first use, so the whole set
    runs once before the timed run (benchmarks/gpu_packing.py measures it on all pairs, and the compile)."""
    from armo_cli.forward import encode_trees

    def run(layout: str) -> tuple[float, torch.Tensor]:
        sync(bb.device)
        t0 = time.perf_counter()
        _, R = encode_trees(bb, trees, batch_tokens, None, max_padding, layout=layout)
        sync(bb.device)
        return time.perf_counter() - t0, R

    out: dict = {}
    with torch.no_grad():
        run("rows")
        out["sdpa_dense_mask_seconds"], ref = run("rows")
        try:
            t0 = time.perf_counter()
            run("flex")  # compiles
            out["flex_first_run_seconds"] = time.perf_counter() - t0
            out["flex_block_mask_seconds"], R = run("flex")
            out["max_abs_diff_vs_sdpa"] = float((R - ref).abs().max())
            out["min_cosine_vs_sdpa"] = float(torch.nn.functional.cosine_similarity(R, ref, dim=-1).min())
        except Exception as e:  # noqa: BLE001 - the study reports what failed; the rest of the table stands
            out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return out


def fit_model(features: Path, work: Path):
    """A model (heads fitted with armo's own functions: a preference objective, a length objective, decorrelation,
    a small gate) on extracted pair features, in WORK/model: what score and serve run at this shape."""
    from armo_cli.configs import DecorrelationConfig, GatingConfig, RegressionConfig
    from armo_cli.fitting import fit_decorrelation, fit_gating, fit_regression
    from armo_cli.model import ArmoModel, assemble

    fit_regression(RegressionConfig(pairs=[str(features)], preference_objective="preference",
                                    length_objective="verbosity", output=str(work / "reg.st"), quiet=True))
    fit_decorrelation(DecorrelationConfig(features=[str(features)], regression=str(work / "reg.st"),
                                          output=str(work / "dec.st"), quiet=True))
    fit_gating(GatingConfig(features=[str(features)], regression=str(work / "reg.st"), decorrelation=str(work / "dec.st"),
                            output=str(work / "gate.st"), steps=50, hidden_dim=64, quiet=True))
    assemble(work / "model", str(work / "reg.st"), str(work / "gate.st"), str(work / "dec.st"))
    return ArmoModel.load(work / "model")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepare", default=None, help="write the tokenizer and pairs into this folder, then stop")
    ap.add_argument("--data", default=None, help="a folder written by --prepare (default: examples/pairs.jsonl with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model of the same family (CPU, CI)")
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak (default: from its name)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-flex", action="store_true", help="skip the FlexAttention study (it compiles a kernel first)")
    ap.add_argument("--packing", default="auto", choices=("auto", "rows", "flex"),
                    help="armo extract's --packing (auto: rows for these 512 pairs, far under 2M tokens)")
    args = ap.parse_args()
    if args.prepare:
        prepare(Path(args.prepare), args.pairs)
        return

    from armo_cli.devices import auto_device, auto_dtype
    from armo_cli.configs import ExtractConfig, ScoreConfig
    from armo_cli.extract import extract
    from armo_cli.features import Features
    from armo_cli.devices import batch_defaults, default_chunk_size
    from armo_cli.score import score

    device = auto_device(args.device)
    dtype = auto_dtype(device, args.dtype)
    data = Path(args.data) if args.data else None
    pairs_file = data / "pairs.jsonl" if data else ROOT / "examples" / "pairs.jsonl"
    n = args.pairs if not args.tiny else min(args.pairs, 32)
    tok = load_tokenizer(data)
    bb = random_backbone(tok, TINY if args.tiny else LLAMA3_8B, device, dtype)
    work = Path(tempfile.mkdtemp(prefix="gpu_bench-"))
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()][:n]
    (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    renderer = Renderer(bb.tokenizer)
    trees = [renderer.tokenize(parse_row(r, f"pairs:{i}"), i) for i, r in enumerate(rows)]
    tok_armo = sum(t.length for t in trees)
    tok_ref = sum(len(t.prompt) * 2 + sum(len(c) for c in t.conts) for t in trees)
    att_armo = sum(attended(len(t.prompt), [len(c) for c in t.conts]) for t in trees)
    att_ref = sum(attended(len(t.prompt) + len(c), []) for t in trees for c in t.conts)
    batch_tokens, max_padding = batch_defaults(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)

    # armo extract, end to end (a warm-up run on a few pairs first: kernels, allocator)
    cfg = dict(backbone=bb.spec.name, device=str(device), quiet=True, batch_tokens=batch_tokens, packing=args.packing)
    (work / "warm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    extract(ExtractConfig(input=str(work / "warm.jsonl"), output=str(work / "warm.st"), **cfg), backbone=bb)
    reset_memory(device)
    armo_runs = []  # twice, each into a new file: the figure is the faster run; both are recorded
    for k in range(2):
        out_k = work / f"pairs{k}.st"
        sync(device)
        t0 = time.perf_counter()
        extract(ExtractConfig(input=str(work / "pairs.jsonl"), output=str(out_k), **cfg), backbone=bb)
        sync(device)
        armo_runs.append(time.perf_counter() - t0)
    t_armo = min(armo_runs)
    (work / "pairs1.st").replace(work / "pairs.st")
    mem_armo = peak_memory(device)
    feats = Features.load(work / "pairs.st")
    layout = feats.meta.report["packing"]  # what --packing chose
    # the forward passes alone (trees rendered beforehand): extract's time less its host work (reading,
    # the validation pass, rendering, writing)
    with torch.no_grad():
        t_fwd = timed_forward(bb, trees, batch_tokens, max_padding, layout)

    reset_memory(device)
    reference_loop(bb, trees[:2])  # warm-up
    t_ref, ref_feats = reference_loop(bb, trees)
    mem_ref = peak_memory(device)
    cos = torch.nn.functional.cosine_similarity(feats.tensors["response_features"].float(), ref_feats, dim=-1)

    # armo score on the same pairs: heads fitted with armo's own functions on the extracted features
    model = fit_model(work / "pairs.st", work)
    sc = ScoreConfig(input=str(work / "pairs.jsonl"), output=str(work / "scores.jsonl"), format="jsonl", quiet=True,
                     batch_tokens=batch_tokens)
    score(ScoreConfig(input=str(work / "warm.jsonl"), output=str(work / "w.jsonl"), format="jsonl", quiet=True), model=model, backbone=bb)
    sync(device)
    t0 = time.perf_counter()
    score(sc, model=model, backbone=bb)
    sync(device)
    t_score = time.perf_counter() - t0

    f_armo, f_ref = flops(bb.model, tok_armo, att_armo), flops(bb.model, tok_ref, att_ref)
    res = {
        "device": name, "dtype": str(dtype).replace("torch.", ""), "shape": "tiny" if args.tiny else "llama-3-8b",
        "params_non_embedding": sum(p.numel() for k, p in bb.model.named_parameters() if "embed" not in k),
        "pairs": len(trees), "tokens_armo": tok_armo, "tokens_reference": tok_ref, "batch_tokens": batch_tokens,
        "max_padding": max_padding, "chunk_size": default_chunk_size(device), "packing": layout,
        "padded_share": 1 - tok_armo / run_tokens(trees, batch_tokens, max_padding, layout),
        "armo_extract": {"seconds": t_armo, "seconds_each_run": armo_runs, "pairs_per_s": len(trees) / t_armo, "tokens_per_s": tok_armo / t_armo,
                         "reference_equivalent_tokens_per_s": tok_ref / t_armo, "tflops": f_armo / t_armo / 1e12,
                         "peak_memory_gib": mem_armo},
        "armo_forward_only": {"seconds": t_fwd, "pairs_per_s": len(trees) / t_fwd, "tokens_per_s": tok_armo / t_fwd,
                              "tflops": f_armo / t_fwd / 1e12, "peak_memory_gib": None},
        "reference_loop": {"seconds": t_ref, "pairs_per_s": len(trees) / t_ref, "tokens_per_s": tok_ref / t_ref,
                           "tflops": f_ref / t_ref / 1e12, "peak_memory_gib": mem_ref},
        "speedup_wall_time": t_ref / t_armo,
        "armo_score": {"seconds": t_score, "pairs_per_s": len(trees) / t_score},
        "agreement": {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())},
        "peak_tflops": peak, "kernels": [], "flex_attention": {"skipped": "not reached"},
    }
    if peak:
        res["armo_extract"]["mfu"] = res["armo_extract"]["tflops"] / peak
        res["reference_loop"]["mfu"] = res["reference_loop"]["tflops"] / peak
        res["armo_forward_only"]["mfu"] = res["armo_forward_only"]["tflops"] / peak
    # the main figures first, printed and written, so that a study that overruns the device's limit loses only itself
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    res["lm_objectives"] = lm_study(bb, trees, batch_tokens, max_padding,
                                    len(tok) if args.tiny else max(len(tok), LLAMA3_VOCAB))
    print_lm(res["lm_objectives"])
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    res["kernels"] = kernel_study(bb, trees[: min(len(trees), 64)], batch_tokens, max_padding)
    print_studies({"kernels": res["kernels"], "flex_attention": {"skipped": "next"}})
    res["flex_attention"] = ({"skipped": "--no-flex"} if args.no_flex
                             else flex_study(bb, trees[: min(len(trees), 64)], batch_tokens, max_padding))
    print_studies({"kernels": [], "flex_attention": res["flex_attention"]})
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


def print_table(r: dict) -> None:
    a, f = r["armo_extract"], r["reference_loop"]

    def mem(x):
        return "n/a (CPU)" if x is None else f"{x:.1f} GiB"

    def mfu(x):
        return f"{100 * x['mfu']:.1f}%" if "mfu" in x else "n/a"

    print(f"gpu_bench: {r['shape']} shape ({r['params_non_embedding'] / 1e9:.2f}B non-embedding parameters), {r['dtype']}, "
          f"{r['device']}; {r['pairs']} pairs, {r['tokens_armo']} tokens run by armo, {r['tokens_reference']} by the reference")
    print(f"armo's batches: {r['batch_tokens']} tokens, layout {r.get('packing', 'rows')}, at most {r['max_padding']:.0%} padding "
          f"({r['padded_share']:.1%} padded), "
          f"{r['chunk_size']} rows per chunk")
    print(f"{'':26s}{'seconds':>9s}{'pairs/s':>10s}{'tokens/s':>11s}{'TFLOP/s':>9s}{'MFU':>7s}{'peak mem':>12s}")
    print(f"{'armo extract':26s}{a['seconds']:9.2f}{a['pairs_per_s']:10.1f}{a['tokens_per_s']:11.0f}{a['tflops']:9.2f}"
          f"{mfu(a):>7s}{mem(a['peak_memory_gib']):>12s}")
    o = r["armo_forward_only"]
    print(f"{'  its forward passes only':26s}{o['seconds']:9.2f}{o['pairs_per_s']:10.1f}{o['tokens_per_s']:11.0f}{o['tflops']:9.2f}"
          f"{mfu(o):>7s}{'':>12s}")
    print(f"{'reference loop (bs 1)':26s}{f['seconds']:9.2f}{f['pairs_per_s']:10.1f}{f['tokens_per_s']:11.0f}{f['tflops']:9.2f}"
          f"{mfu(f):>7s}{mem(f['peak_memory_gib']):>12s}")
    print(f"armo vs reference: {r['speedup_wall_time']:.2f}x wall time on the same pairs "
          f"(reference-equivalent tokens/s {a['reference_equivalent_tokens_per_s']:.0f} vs {f['tokens_per_s']:.0f})")
    print(f"armo score: {r['armo_score']['pairs_per_s']:.1f} pairs/s; features vs separate full passes: "
          f"min cosine {r['agreement']['min_cosine']:.5f}, mean {r['agreement']['mean_cosine']:.5f}")
    print("armo extract, each run: " + ", ".join(f"{t:.2f} s" for t in a["seconds_each_run"]))
    if r["kernels"]:
        print_studies(r)


def print_lm(r: dict) -> None:
    print(f"LM objectives ({r['pairs']} pairs, {r['tokens']} tokens, LM head of {r['vocab']} words):")
    for name in ("features", "+ lm-mean-logprob", "+ lm-pmi too"):
        a = r[name]
        mem = f", peak {a['peak_memory_gib']:.1f} GiB" if a["peak_memory_gib"] is not None else ""
        print(f"  {name:18s} {a['seconds']:8.3f} s  {a['tokens_per_s']:10,.0f} tokens/s  {a['x_features']:5.2f}x{mem}")


def print_studies(r: dict) -> None:
    for k in r["kernels"]:
        if "error" in k:
            print(f"  sdpa {k['kernel']:32s} not usable with the tree mask: {k['error']}")
        else:
            print(f"  sdpa {k['kernel']:32s} {k['seconds']:8.3f} s  max |diff| vs armo's {k['max_abs_diff_vs_armo']:.2e}")
    fx = r["flex_attention"]
    if fx.get("skipped") == "next":
        return
    if "skipped" in fx:
        print(f"  flex layout (packed, block mask from spans) skipped ({fx['skipped']})")
    elif "error" in fx:
        print(f"  flex layout (packed, block mask from spans) failed: {fx['error']}")
    else:
        print(f"  flex layout (packed, block mask from spans) {fx['flex_block_mask_seconds']:8.3f} s vs rows under sdpa's dense mask "
              f"{fx['sdpa_dense_mask_seconds']:.3f} s (first run, compiling: {fx['flex_first_run_seconds']:.1f} s); "
              f"max |diff| {fx['max_abs_diff_vs_sdpa']:.2e}, min cosine {fx['min_cosine_vs_sdpa']:.5f}")


if __name__ == "__main__":
    main()
