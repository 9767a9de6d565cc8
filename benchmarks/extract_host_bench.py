"""armo extract's host work, with the forward pass taken out: what a GPU waits on.

On a GPU, extract's forward passes are fast enough that the host's share shows (gpu_bench.py on an H200: 4.89 s
end to end, 4.20 s of forward passes, for 512 pairs at Llama-3-8B shape). This measures the host's part here,
side by side in one run:
  - tokenising the pairs one row at a time (Renderer.tokenize) vs in groups (Renderer.tokenize_many, one
    tokenizer call per group), with transformers' tokenizer (what extract loads) and armo's FastTokenizer;
  - `armo extract` end to end with a forward pass that returns zeros at once (hidden size 4096, as at 8B):
    reading, the validation pass, rendering, batching, writing, and a table of where that time goes.
    python benchmarks/extract_host_bench.py [--data gpu_bench_data] [--pairs 512]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_bench import load_tokenizer  # noqa: E402

from armo_cli.backbones import Backbone, BackboneSpec  # noqa: E402
from armo_cli.configs import ExtractConfig  # noqa: E402
from armo_cli.extract import extract  # noqa: E402
from armo_cli.rendering import Renderer  # noqa: E402
from armo_cli.rows import parse_row  # noqa: E402


class NullModel(torch.nn.Module):
    """A backbone's shape with no work: zeros for the last hidden state."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.config = types.SimpleNamespace(num_hidden_layers=32, max_position_embeddings=8192, hidden_size=hidden,
                                            model_type="llama", _attn_implementation="sdpa")

    def forward(self, input_ids: torch.Tensor, **_: object):
        return types.SimpleNamespace(last_hidden_state=torch.zeros(*input_ids.shape, self.hidden))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None, help="a gpu_bench.py --prepare folder (default: examples/pairs.jsonl)")
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = Path(args.data) if args.data else None
    pairs_file = data / "pairs.jsonl" if data else ROOT / "examples" / "pairs.jsonl"
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()][: args.pairs]
    exs = [parse_row(r, f"pairs:{i}") for i, r in enumerate(rows)]
    idx = list(range(len(exs)))

    tokenizers = {"transformers": load_tokenizer(data)}
    try:
        from armo_cli.backbones import find_named_gguf, gguf_cache_dir
        from armo_cli.fastpath import FastTokenizer

        folder = data / "tokenizer" if data else gguf_cache_dir(find_named_gguf("smollm2-135m-instruct"))[0]
        tokenizers["armo FastTokenizer"] = FastTokenizer(Path(folder))
    except Exception as e:  # noqa: BLE001 - the transformers row stands alone
        print(f"(FastTokenizer row skipped: {e})")
    print(f"extract_host_bench: {len(exs)} pairs from {pairs_file}, best of {args.repeats}")
    print(f"{'tokenizer':22s}{'one row at a time':>19s}{'groups of 256':>15s}{'ratio':>8s}")
    for name, tok in tokenizers.items():
        r = Renderer(tok)
        one = best_of(lambda: [r.tokenize(ex, i) for i, ex in zip(idx, exs)], args.repeats)

        def grouped():
            return [t for s in range(0, len(exs), 256) for t in r.tokenize_many(exs[s:s + 256], idx[s:s + 256])]

        many = best_of(grouped, args.repeats)
        a, b = [r.tokenize(ex, i) for i, ex in zip(idx, exs)], grouped()
        assert [(t.prompt, t.conts) for t in a] == [(t.prompt, t.conts) for t in b], "tokenize_many differs"
        print(f"{name:22s}{one:17.3f} s{many:13.3f} s{one / many:7.2f}x")

    bb = Backbone(BackboneSpec("null", "folder"), NullModel(4096), tokenizers["transformers"], torch.device("cpu"),
                  torch.float32, "null")
    work = Path(tempfile.mkdtemp(prefix="host_bench-"))
    (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = [0]

    def run() -> None:
        n[0] += 1
        extract(ExtractConfig(input=str(work / "pairs.jsonl"), output=str(work / f"o{n[0]}.st"), backbone="null",
                              quiet=True, batch_tokens=65536, max_padding=0.10, chunk_size=4096), backbone=bb)

    run()
    t = best_of(run, args.repeats)
    print(f"armo extract with a null forward (host work only; CUDA's batch and chunk defaults): {t:.3f} s")
    phases = phase_times(run, args.repeats)
    print("where it goes (mean of the runs; nested phases are parts of the one above them):")
    for name, label in PHASES.items():
        print(f"  {label:64s}{phases.get(name, 0.0):7.3f} s")


# (module, function) -> what it is; the rows of the phase table, nested ones indented under their parent
PHASES = {
    "_scan": "validation pass (read, render, tokenise, size, key every row)",
    "Renderer.texts": "  rendering the chat template",
    "Renderer._encode_batch": "  tokenising",
    "_chunk_tensors": "the chunk: batches, forward passes, features",
    "encode_trees": "  batching and the (null) forward passes",
    "save_artifact": "writing the chunk file",
    "_join": "writing the output (the chunks joined)",
}


def phase_times(run, repeats: int) -> dict[str, float]:
    """Mean seconds per run inside each function of PHASES, measured by wrapping them for these runs."""
    import armo_cli.context as context
    import armo_cli.extract as ex
    from armo_cli import rendering

    spent: dict[str, float] = {}
    saved = []
    for name in PHASES:
        owner, attr = (rendering.Renderer, name.split(".")[1]) if "." in name else (context if name == "encode_trees" else ex, name)
        fn = getattr(owner, attr)

        def timed(*a, _fn=fn, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t0

        saved.append((owner, attr, fn))
        setattr(owner, attr, timed)
    try:
        for _ in range(repeats):
            run()
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)
    return {k: v / repeats for k, v in spent.items()}


if __name__ == "__main__":
    main()
