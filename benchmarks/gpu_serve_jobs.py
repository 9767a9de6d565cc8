"""#37 on a lent GPU: `armo serve` under OpenRLHF's load, extract's two layouts on a long job, and best-of-n rows, at
Llama-3-8B shape with random weights (bf16), in one run on one device. Each study prints its table and writes its JSON
as it ends, so a study that overruns the device's limit loses only itself.

1. serve: the server runs in this process (the one that holds the model: `serve.start_http`, the same pieces as
   `armo serve`, the batcher on the main thread), and OpenRLHF-shaped clients (one sample per /get_reward request,
   the prompt in ChatML, as OpenRLHF sends it) run in a process of their own (`serve_bench.py --drive`), 16 and 64 at
   once, with a new connection per request (OpenRLHF's `requests.post`) and kept alive. Offline `RewardModel.score`
   of the same rows runs before each load, alternately: served rows/s over offline rows/s (target >= 0.8), p50/p99
   latency, errors, the worker's batches, peak GPU memory.
2. flex: one job of about --flex-tokens tokens (the hh_rlhf pairs repeated under new ids) through `extract` with
   `--packing rows`, then `--packing flex` twice (the first pays FlexAttention's compile in this process, the second
   not): seconds, tokens/s, peak GPU memory, and the break-even job size for `auto` (compile / saving per token),
   against devices.FLEX_MIN_TOKENS (2M, derived in #16 from 126K tokens, not measured).
3. the LM objectives (#37 §3): gpu_bench.py's study alone (extraction without them, with lm-mean-logprob, with
   lm-pmi too, through a random untied LM head of Llama 3's 128,256 words), tokens/s side by side.
4. best-of-n: RewardBench 2-shaped rows (one chosen, three rejected, the responses taken from neighbouring pairs)
   scored as one tree per row against the same rows flattened into pairs, rows/s side by side, and whether both give
   each row the same verdict.

5. annotate (#47): K=8 samples per prompt (a pair's two responses and its neighbours'), `RewardModel.annotate` (one
   tree per prompt: the prompt once, eight responses after it, token-budget batches) against the batch-1 loop of
   SimPO's and RLHFlow's annotation scripts (one prompt+response sequence per forward pass, the prompt run again for
   every sample): tokens, seconds, tokens/s, and the largest score difference.
6. stage0 (#49/#50): `tune-backbone`'s training step with LoRA (rank 8, every linear layer of the blocks, armo's
   tree-masked pairs, the Bradley-Terry loss) on the random backbone, bf16 autocast, gradient checkpointing off and
   on: seconds per step and peak GPU memory (the base weights are the study's, in its dtype; tune-backbone itself
   loads a base in fp32).

Prepare once here (the same folder as gpu_bench.py):  python benchmarks/gpu_bench.py --prepare gpu_bench_data
On the GPU machine: bash benchmarks/gpu_device37.sh        On this CPU (CI):  python benchmarks/gpu_serve_jobs.py --tiny
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_bench import (LLAMA3_8B, LLAMA3_VOCAB, TINY, fit_model, lm_study, load_tokenizer, peak_memory,  # noqa: E402
                       print_lm, random_backbone, reset_memory, sync)


def environment(device: torch.device) -> dict:
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "device": "cpu"}
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name()
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            env["driver"] = None
    return env


def single_rows(pairs: list[dict], n: int) -> list[dict]:
    """Single-response rows (each pair's chosen, then its rejected), as a policy's samples: n of them (pairs whose
    responses are one text; a policy's sample is one turn)."""
    rows = [{"prompt": p["prompt"], "response": p[k]} for p in pairs for k in ("chosen", "rejected")
            if isinstance(p[k], str)]
    return [dict(rows[i % len(rows)], id=f"s{i}") for i in range(n)]


def serve_study(rm, rows: list[dict], clients: list[int], work: Path, device: torch.device) -> dict:
    from armo_cli.configs import ServeConfig
    from armo_cli.serve import listening_socket, make_app, start_http

    rows_file = work / "serve_rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rm.score(rows[:16])  # warm-up
    cfg = ServeConfig(quiet=True)
    app = make_app(rm, cfg)
    sock = listening_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server, http, batcher = start_http(app, cfg, sock)
    http.start()
    out: dict = {"rows": len(rows), "arms": []}
    reset_memory(device)
    try:
        for c in clients:
            for keep_alive in (False, True):
                sync(device)
                t0 = time.perf_counter()
                rm.score(rows)
                sync(device)
                offline = len(rows) / (time.perf_counter() - t0)
                res = work / f"serve_{c}_{int(keep_alive)}.json"
                cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_bench.py"), "--drive", url, "--rows-file",
                       str(rows_file), "--clients", str(c), "--json", str(res), *(["--keep-alive"] if keep_alive else [])]
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                b0, r0 = batcher.batches, batcher.rows
                batcher.run(lambda: proc.poll() is None)  # the model's worker on this thread, as in `armo serve`
                _, err = proc.communicate()
                if proc.returncode:
                    raise SystemExit(f"serve clients failed: {err[-2000:]}")
                r = json.loads(res.read_text())
                r.update(clients=c, connection="kept alive" if keep_alive else "new per request",
                         offline_rows_per_s=offline, ratio_to_offline=r["rows_per_s"] / offline,
                         rows_per_batch=(batcher.rows - r0) / max(batcher.batches - b0, 1))
                out["arms"].append(r)
    finally:
        server.should_exit = True
        http.join(timeout=30)
        sock.close()
    out["peak_memory_gib"] = peak_memory(device)
    return out


def repeated_pairs(pairs: list[dict], tokens_wanted: int, tokens_each: list[int]) -> list[dict]:
    """The pairs repeated under new ids until they hold about `tokens_wanted` tokens (armo's, the prompt once)."""
    out, total, i = [], 0, 0
    while total < tokens_wanted:
        out.append({**pairs[i % len(pairs)], "id": f"j{i}"})
        total += tokens_each[i % len(pairs)]
        i += 1
    return out


def flex_study(bb, job: list[dict], tokens: int, work: Path, device: torch.device) -> dict:
    from armo_cli.configs import ExtractConfig
    from armo_cli.devices import FLEX_MIN_TOKENS, supports_flex
    from armo_cli.extract import extract

    inp = work / "job.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in job))
    out: dict = {"pairs": len(job), "tokens": tokens, "flex_min_tokens": FLEX_MIN_TOKENS, "runs": []}
    if not supports_flex(bb.model):
        out["error"] = "this torch and transformers do not run FlexAttention for this model"
        return out
    for k, packing in enumerate(("rows", "flex", "flex")):
        reset_memory(device)
        sync(device)
        t0 = time.perf_counter()
        rep = extract(ExtractConfig(input=str(inp), output=str(work / f"job{k}.st"), backbone=bb.spec.name, quiet=True,
                                    packing=packing), backbone=bb)
        sync(device)
        t = time.perf_counter() - t0
        out["runs"].append({"packing": rep.packing, "first_flex_in_process": k == 1, "seconds": t,
                            "tokens_per_s": tokens / t, "peak_memory_gib": peak_memory(device)})
        (work / f"job{k}.st").unlink()
    rows_s, cold, warm = (r["seconds"] for r in out["runs"])
    compile_s = max(cold - warm, 0.0)
    saving = (rows_s - warm) / tokens  # seconds per token that flex saves once compiled
    out.update(compile_seconds=compile_s, saving_us_per_token=1e6 * saving,
               break_even_tokens=compile_s / saving if saving > 0 else None)
    return out


def bon_rows(pairs: list[dict], n: int) -> list[dict]:
    """RewardBench 2-shaped rows: one chosen and three rejected responses to one prompt (the rejected from this pair
    and its neighbour: realistic lengths; the content does not matter to the cost)."""
    out = []
    for i in range(n):
        a, b = pairs[i % len(pairs)], pairs[(i + 1) % len(pairs)]
        out.append({"id": f"b{i}", "prompt": a["prompt"], "chosen": [a["chosen"]],
                    "rejected": [a["rejected"], b["chosen"], b["rejected"]]})
    return out


def bon_study(rm, rows: list[dict], device: torch.device) -> dict:
    flat = [{"id": f"{r['id']}/{j}", "prompt": r["prompt"], "chosen": r["chosen"][0], "rejected": x}
            for r in rows for j, x in enumerate(r["rejected"])]

    def run(xs: list[dict]) -> tuple[list[dict], int, float]:
        tokens = [0]
        trees = rm.prepare(xs)
        sync(device)
        t0 = time.perf_counter()
        recs = rm.score_prepared(trees, on_batch=lambda n, t: tokens.__setitem__(0, tokens[0] + t))
        sync(device)
        return recs, tokens[0], time.perf_counter() - t0

    rm.score_prepared(rm.prepare(rows[:4] + flat[:4]))  # warm-up
    lists, tok_l, sec_l = run(rows)
    pairs, tok_p, sec_p = run(flat)
    same = sum((r["chosen"][0]["score"] > max(x["score"] for x in r["rejected"]))
               == all(p["margin"] > 0 for p in pairs[3 * i:3 * i + 3]) for i, r in enumerate(lists))
    return {"rows": len(rows), "pairs": len(flat), "trees": {"tokens": tok_l, "seconds": sec_l, "rows_per_s": len(rows) / sec_l},
            "flattened": {"tokens": tok_p, "seconds": sec_p, "rows_per_s": len(rows) / sec_p},
            "speedup": sec_p / sec_l, "same_verdict_rows": same}


def sample_rows(pairs: list[dict], n: int, k: int) -> list[dict]:
    """Rows of K samples per prompt: a pair's two responses, then its neighbours' (realistic lengths)."""
    out = []
    for i in range(n):
        texts, j = [], i
        while len(texts) < k:
            p = pairs[j % len(pairs)]
            texts += [x for x in (p["chosen"], p["rejected"]) if isinstance(x, str)]
            j += 1
        out.append({"id": f"a{i}", "prompt": pairs[i % len(pairs)]["prompt"], "responses": texts[:k]})
    return out


def annotate_study(rm, rows: list[dict], device: torch.device) -> dict:
    import armo_cli.api as api

    tokens = [0]
    real = api.score_trees

    def counted(model, ctx, trees, weights, name, on_batch=None):
        def both(n: int, t: int) -> None:
            tokens[0] += t
            if on_batch:
                on_batch(n, t)
        return real(model, ctx, trees, weights, name, both)

    rm.annotate(rows[:2])  # warm-up
    api.score_trees = counted
    try:
        sync(device)
        t0 = time.perf_counter()
        _, scores = rm.annotate(rows)
        sync(device)
        sec = time.perf_counter() - t0
    finally:
        api.score_trees = real
    ours = [[x["score"] for x in s["responses"]] for s in scores]
    loop_tokens, theirs = 0, []
    singles = [rm.prepare([{"prompt": r["prompt"], "response": y}]) for r in rows for y in r["responses"]]
    rm.score_prepared(singles[0])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for trees in singles:  # one sequence per forward pass, as their loops run
        theirs.append(rm.score_prepared(trees)[0]["score"])
        loop_tokens += trees[0].length
    sync(device)
    loop_sec = time.perf_counter() - t0
    k = len(rows[0]["responses"])
    flat = [x for s in ours for x in s]
    return {"prompts": len(rows), "k": k, "armo": {"tokens": tokens[0], "seconds": sec, "tokens_per_s": tokens[0] / sec},
            "batch-1 loop": {"tokens": loop_tokens, "seconds": loop_sec, "tokens_per_s": loop_tokens / loop_sec},
            "tokens_ratio": loop_tokens / tokens[0], "time_ratio": loop_sec / sec,
            "max_abs_score_diff": max(abs(a - b) for a, b in zip(flat, theirs))}


def stage0_study(bb, pairs: list[dict], device: torch.device, steps: int, batch: int) -> dict:
    """Seconds per training step and peak memory of tune-backbone's loop (stage0.pair_rewards, bt_loss, AdamW on LoRA
    and the head) on the random backbone, bf16 autocast where CUDA, gradient checkpointing off then on."""
    import contextlib

    from peft import LoraConfig, get_peft_model

    from armo_cli.context import RowContext
    from armo_cli.rendering import Renderer
    from armo_cli.rows import parse_row
    from armo_cli.stage0 import _checkpointing, bt_loss, pair_rewards

    renderer = Renderer(bb.tokenizer)
    ctx = RowContext.for_features(bb, layer=-1, pooling="last", max_length=1024, overflow="truncate-prompt")
    trees = []
    for i, p in enumerate(pairs):
        t = ctx.sized(parse_row(p, f"pairs:{i}"), i, f"pairs:{i}", [], renderer.tokenize(parse_row(p, f"pairs:{i}"), i))
        if t is not None:
            trees.append(t)
    peft = get_peft_model(bb.model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model = peft.get_base_model()
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()  # adapters train in fp32, as tune-backbone's
    head = torch.nn.Linear(bb.hidden_size, 1).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    out = {"pairs_per_step": batch, "steps": steps, "lora_params": sum(p.numel() for p in params), "runs": []}
    for ckpt in (False, True):
        if ckpt:
            _checkpointing(model, True)
            model.train()
        reset_memory(device)
        times, tokens = [], 0
        for s in range(steps + 1):  # the first step warms up
            chunk = [trees[(s * batch + j) % len(trees)] for j in range(batch)]
            sync(device)
            t0 = time.perf_counter()
            with autocast():
                r = pair_rewards(model, head, chunk, device, bb.dtype, "last", -1)
            loss = bt_loss(r.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync(device)
            if s:
                times.append(time.perf_counter() - t0)
                tokens += sum(t.length for t in chunk)
        out["runs"].append({"gradient_checkpointing": ckpt, "seconds_per_step": statistics.median(times),
                            "tokens_per_s": tokens / sum(times), "peak_memory_gib": peak_memory(device)})
    _checkpointing(model, False)
    model.eval()
    peft.unload()  # the backbone back as it was, for any study after this one
    return out


def print_annotate(r: dict) -> None:
    a, b = r["armo"], r["batch-1 loop"]
    print(f"annotate: {r['prompts']} prompts x K={r['k']} samples")
    print(f"  armo (one tree per prompt) {a['tokens']:>10,} tokens {a['seconds']:8.2f} s {a['tokens_per_s']:10,.0f} tok/s")
    print(f"  batch-1 loop (SimPO, RLHFlow) {b['tokens']:>7,} tokens {b['seconds']:8.2f} s {b['tokens_per_s']:10,.0f} tok/s")
    print(f"  {r['tokens_ratio']:.2f}x fewer tokens, {r['time_ratio']:.2f}x less time; max |score diff| "
          f"{r['max_abs_score_diff']:.1e}")


def print_stage0(r: dict) -> None:
    print(f"stage0: LoRA rank 8 on every block linear ({r['lora_params']:,} trained parameters), {r['pairs_per_step']} "
          f"pairs per step, {r['steps']} steps")
    for x in r["runs"]:
        mem = f"{x['peak_memory_gib']:.1f} GiB" if x["peak_memory_gib"] is not None else "n/a (CPU)"
        print(f"  gradient checkpointing {'on ' if x['gradient_checkpointing'] else 'off'}  {x['seconds_per_step']:8.3f} "
              f"s/step {x['tokens_per_s']:10,.0f} tok/s  peak {mem}")


def print_serve(r: dict) -> None:
    print(f"serve: {r['rows']} single-sample /get_reward requests per load; peak GPU memory "
          + (f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "n/a (CPU)"))
    print(f"  {'clients':>7s}  {'connection':16s}{'rows/s':>9s}{'offline':>9s}{'ratio':>7s}{'p50 ms':>8s}{'p99 ms':>8s}"
          f"{'rows/batch':>11s}{'errors':>7s}")
    for a in r["arms"]:
        print(f"  {a['clients']:7d}  {a['connection']:16s}{a['rows_per_s']:9.1f}{a['offline_rows_per_s']:9.1f}"
              f"{a['ratio_to_offline']:7.2f}{a['p50_ms']:8.0f}{a['p99_ms']:8.0f}{a['rows_per_batch']:11.1f}{a['errors']:7d}")


def print_flex(r: dict) -> None:
    if "error" in r:
        print(f"flex: {r['error']}")
        return
    print(f"flex: one extract job of {r['pairs']} pairs, {r['tokens']:,} tokens")
    for x in r["runs"]:
        mem = f"{x['peak_memory_gib']:.1f} GiB" if x["peak_memory_gib"] is not None else "n/a (CPU)"
        label = x["packing"] + (" (first in this process: compiles)" if x["first_flex_in_process"] else "")
        print(f"  {label:44s}{x['seconds']:9.2f} s{x['tokens_per_s']:12,.0f} tokens/s  peak {mem}")
    be = r["break_even_tokens"]
    print(f"  compile ~{r['compile_seconds']:.1f} s; flex saves {r['saving_us_per_token']:.2f} us/token once compiled; "
          f"break-even job {'never (no saving)' if be is None else f'{be:,.0f} tokens'} "
          f"(--packing auto turns to flex from {r['flex_min_tokens']:,})")


def print_bon(r: dict) -> None:
    t, f = r["trees"], r["flattened"]
    print(f"best-of-n: {r['rows']} rows of 1 chosen + 3 rejected ({r['pairs']} pairs flattened)")
    print(f"  one tree per row      {t['tokens']:>10,} tokens {t['seconds']:8.2f} s {t['rows_per_s']:8.1f} rows/s")
    print(f"  flattened into pairs  {f['tokens']:>10,} tokens {f['seconds']:8.2f} s {f['rows_per_s']:8.1f} rows/s")
    print(f"  trees {r['speedup']:.2f}x faster; the same verdict on {r['same_verdict_rows']} of {r['rows']} rows")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="a folder written by gpu_bench.py --prepare (default with --tiny: examples)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model of the same family, on the CPU (CI)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--json", default=None)
    ap.add_argument("--serve-rows", type=int, default=1024)
    ap.add_argument("--clients", default="16,64")
    ap.add_argument("--flex-tokens", type=int, default=1_000_000, help="the long job's size in tokens")
    ap.add_argument("--bon-rows", type=int, default=256)
    ap.add_argument("--annotate-prompts", type=int, default=64)
    ap.add_argument("--stage0-steps", type=int, default=5)
    ap.add_argument("--only", default="serve,annotate,bon,stage0,lm,flex", help="which studies, in this order")
    args = ap.parse_args()

    from armo_cli import RewardModel
    from armo_cli.configs import ExtractConfig
    from armo_cli.devices import auto_device, auto_dtype
    from armo_cli.extract import extract

    device = auto_device(args.device)
    dtype = auto_dtype(device, args.dtype)
    data = Path(args.data) if args.data else None
    pairs_file = data / "pairs.jsonl" if data else ROOT / "examples" / "pairs.jsonl"
    pairs = [json.loads(x) for x in pairs_file.read_text().splitlines()]
    if args.tiny:
        args.serve_rows, args.flex_tokens, args.bon_rows = min(args.serve_rows, 64), min(args.flex_tokens, 20_000), \
            min(args.bon_rows, 16)
        args.annotate_prompts, args.stage0_steps = min(args.annotate_prompts, 8), min(args.stage0_steps, 2)
        args.clients = ",".join(c for c in args.clients.split(",") if int(c) <= 16) or "4"
    tok = load_tokenizer(data)
    bb = random_backbone(tok, TINY if args.tiny else LLAMA3_8B, device, dtype)
    work = Path(tempfile.mkdtemp(prefix="gpu_serve_jobs-"))
    (work / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    extract(ExtractConfig(input=str(work / "pairs.jsonl"), output=str(work / "pairs.st"), backbone=bb.spec.name,
                          quiet=True), backbone=bb)
    model = fit_model(work / "pairs.st", work)
    rm = RewardModel(model, backbone=bb)
    res: dict = {"environment": environment(device), "shape": "tiny" if args.tiny else "llama-3-8b",
                 "dtype": str(dtype).replace("torch.", "")}
    print(f"gpu_serve_jobs: {res['shape']} shape, {res['dtype']}, {res['environment']}")

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")

    for study in args.only.split(","):
        try:
            run_study(study, args, res, rm, bb, tok, pairs, work, device)
        except Exception as e:  # noqa: BLE001 - one study's failure is reported; the others still run
            res[f"{study}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            print(f"gpu_serve_jobs: {study} failed: {res[f'{study}_error']}", flush=True)
        save()
    if "serve" in res:
        print(f"gpu_serve_jobs: median served/offline ratio "
              f"{statistics.median(a['ratio_to_offline'] for a in res['serve']['arms']):.2f}")


def run_study(study: str, args: argparse.Namespace, res: dict, rm, bb, tok, pairs: list[dict], work: Path,
              device: torch.device) -> None:
    from armo_cli.rendering import Renderer
    from armo_cli.rows import parse_row

    if study == "serve":
        res["serve"] = serve_study(rm, single_rows(pairs, args.serve_rows),
                                   [int(c) for c in args.clients.split(",")], work, device)
        print_serve(res["serve"])
    elif study == "bon":
        res["best_of_n"] = bon_study(rm, bon_rows(pairs, args.bon_rows), device)
        print_bon(res["best_of_n"])
    elif study == "annotate":
        res["annotate"] = annotate_study(rm, sample_rows(pairs, args.annotate_prompts, 8), device)
        print_annotate(res["annotate"])
    elif study == "stage0":
        res["stage0"] = stage0_study(bb, pairs, device, args.stage0_steps, 8)
        print_stage0(res["stage0"])
    elif study == "lm":  # #37 §3: gpu_bench.py's study of the LM objectives' cost, alone
        from armo_cli.devices import batch_defaults

        renderer = Renderer(bb.tokenizer)
        trees = [renderer.tokenize(parse_row(p, f"pairs:{i}"), i) for i, p in enumerate(pairs)]
        res["lm_objectives"] = lm_study(bb, trees, *batch_defaults(device),
                                        len(tok) if args.tiny else max(len(tok), LLAMA3_VOCAB))
        print_lm(res["lm_objectives"])
    elif study == "flex":
        renderer = Renderer(bb.tokenizer)
        each = [renderer.tokenize(parse_row(p, f"pairs:{i}"), i).length for i, p in enumerate(pairs)]
        job = repeated_pairs(pairs, args.flex_tokens, each)
        res["flex_job"] = flex_study(bb, job, sum(each[i % len(pairs)] for i in range(len(job))), work, device)
        print_flex(res["flex_job"])
    else:
        raise ValueError(f"--only: no study {study!r} (serve, annotate, bon, stage0, lm, flex)")

if __name__ == "__main__":
    main()
