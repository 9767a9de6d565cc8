"""Where the time of a short `armo score` goes, side by side in one run.

Printed, each the median of --repeats runs in fresh processes (warm file cache, embedded backbone
already dequantised):
  - the import floor: `python -c "import torch; from transformers import AutoModel"`, and the same plus
    transformers' Llama model code (modeling_utils and friends), which loading any Llama backbone imports
  - `armo --help`
  - `armo score` of one pair (examples/pair.jsonl) and of 32 pairs (examples/pairs.jsonl), to a file
and, inside one process, the steps of scoring: imports, model heads, backbone load, first pair, and the
per-row cost on 32 pairs. Target (#12): one pair within 1.5 s of the import floor; `armo --help` <= 0.5 s.
Also `armo extract` of a file whose first row is bad (the time to its one-line error), and, in fresh
processes, extract's backbone load before its validation pass: tokenizer and config only (the weights
deferred, as extract does) against the whole model.
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

ROOT = Path(__file__).resolve().parents[1]
ARMO = [sys.executable, "-m", "armo_cli.cli"]

STEPS = r"""
import json, sys, time
t0 = time.perf_counter()
from armo_cli.configs import ScoreConfig
from armo_cli.score import score
from armo_cli.model import ArmoModel
from armo_cli.backbones import load_backbone
t1 = time.perf_counter()
model = ArmoModel.load(None)
t2 = time.perf_counter()
bb = load_backbone(model.backbone["name"], fast=True)  # as score loads it
t3 = time.perf_counter()
score(ScoreConfig(input=sys.argv[1], output=sys.argv[3], quiet=True), backbone=bb, model=model)
t4 = time.perf_counter()
score(ScoreConfig(input=sys.argv[2], output=sys.argv[3], quiet=True), backbone=bb, model=model)
t5 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "model heads": t2 - t1, "backbone load": t3 - t2, "first pair": t4 - t3,
                  "32 pairs": t5 - t4}))
"""


LOAD = r"""
import sys, time
t0 = time.perf_counter()
from armo_cli.backbones import load_backbone
load_backbone("smollm2-135m-instruct", defer_weights=sys.argv[1] == "deferred")
print(time.perf_counter() - t0)
"""


def timed(cmd: list[str], repeats: int, ok: bool = True) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=ok, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    one, many = ROOT / "examples" / "pair.jsonl", ROOT / "examples" / "pairs.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "scores.jsonl")
        subprocess.run([*ARMO, "score", str(one), "-o", out, "-q"], check=True, cwd=ROOT)  # warm the caches once
        floor = timed([sys.executable, "-c", "import torch; from transformers import AutoModel"], args.repeats)
        floor_llama = timed([sys.executable, "-c", "import torch; from transformers import AutoModel; "
                                             "import transformers.models.llama.modeling_llama"], args.repeats)
        help_ = timed([*ARMO, "--help"], args.repeats)
        s1 = timed([*ARMO, "score", str(one), "-o", out, "-q"], args.repeats)
        s32 = timed([*ARMO, "score", str(many), "-o", out, "-q"], args.repeats)
        bad = Path(tmp) / "bad.jsonl"
        bad.write_text('{"prompt": "hi"}\n' + one.read_text())
        e_bad = timed([*ARMO, "extract", str(bad), "-o", str(Path(tmp) / "f.st"), "-q"], args.repeats, ok=False)
        load = {how: statistics.median(float(subprocess.run([sys.executable, "-c", LOAD, how], check=True, cwd=ROOT,
                                                             capture_output=True, text=True).stdout)
                                       for _ in range(args.repeats)) for how in ("deferred", "whole")}
        steps = [json.loads(subprocess.run([sys.executable, "-c", STEPS, str(one), str(many), out], check=True, cwd=ROOT,
                                           capture_output=True, text=True).stdout) for _ in range(args.repeats)]
    step = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
    print(f"startup_bench ({args.repeats} runs each, medians)")
    print(f"  import floor (torch + transformers AutoModel)  {floor:6.2f} s")
    print(f"  floor + transformers' Llama model code         {floor_llama:6.2f} s   (what loading any Llama backbone imports)")
    print(f"  armo --help                                    {help_:6.2f} s   (target <= 0.5 s)")
    print(f"  armo score, 1 pair                             {s1:6.2f} s   (floor + {s1 - floor:.2f} s; target <= +1.5 s)")
    print(f"  armo score, 32 pairs                           {s32:6.2f} s   ({(s32 - s1) / 31 * 1000:.0f} ms per extra pair)")
    print(f"  armo extract, bad first row: to the error      {e_bad:6.2f} s")
    print(f"  extract's load before validating, fresh process: tokenizer + config {load['deferred']:.2f} s, "
          f"whole model {load['whole']:.2f} s (the weights are read after the validation pass)")
    print("  in one process:")
    for k, v in step.items():
        print(f"    {k:<20} {v:6.2f} s")
    print(f"    per pair (32 pairs)  {step['32 pairs'] / 32 * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
