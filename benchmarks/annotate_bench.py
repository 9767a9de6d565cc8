"""`armo annotate` against the peers' annotation loops, side by side in one run on the same samples and model (#47).

Samples: the responses of ../shared/data/rmb-bon.jsonl.gz rows as unlabeled samples, K per prompt (a row's own
responses, topped up with the next rows' responses when it has fewer than K: rmb-bon rows hold 3 to 7), for the
first --prompts rows whose samples fit in --max-length. Model: the embedded default, exported to the ArmoRM format.
  - armo: `armo annotate`'s scoring and pair picking (RewardModel.annotate, the command's core): each prompt once,
    its K responses after it in one tree, length-sorted token-budget batches;
  - SimPO-style (princeton-nlp/SimPO on_policy_data_gen/reward_model_annotate.py): the exported model through
    AutoModelForSequenceClassification, one response per forward pass, the chat template applied to [user, assistant];
  - RLHFlow-style (RLHFlow/Online-RLHF annotate_data/get_rewards.py): the conversation rendered to text by the chat
    template, then tokenised and scored one text at a time (their pipeline runs batch_size 1).
Every arm's model is loaded before its clock starts. Printed per K: tokens through the backbone, wall seconds, the ratios, and the largest score difference (the targets:
at K=8, at least 1.5x fewer tokens and 3x less wall time than the batch-1 loops; scores equal within 1e-4).
Run: python benchmarks/annotate_bench.py [--prompts 24] [--json out.json]   (about 10 minutes on a 2-core CPU)
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rmb-bon.jsonl.gz"


def samples(path: Path, k: int, n: int, fits) -> list[dict]:
    """n rows of K samples each (a row's responses, topped up from the rows after it), those that `fits` keeps."""
    with gzip.open(path, "rt") as fh:
        rows = [json.loads(x) for x in fh]
    pool = [r["chosen"] + r["rejected"] for r in rows]
    out = []
    for i, r in enumerate(rows):
        texts, j = list(pool[i]), i + 1
        while len(texts) < k:
            texts += pool[j % len(pool)][:k - len(texts)]
            j += 1
        row = {"id": f"{r['id']}", "prompt": r["prompt"], "responses": texts[:k]}
        if fits(row):
            out.append(row)
        if len(out) == n:
            break
    return out


def armo_run(rm, rows: list[dict]) -> tuple[list[list[float]], int, float]:
    """`armo annotate`'s scoring and pair picking, the model loaded beforehand as the loops' is (RewardModel.annotate:
    the command's core, its lines equal to the command's in tests/test_annotate.py)."""
    import armo_cli.api as api

    tokens = [0]
    real = api.score_trees

    def counted(model_, ctx, trees, weights, name, on_batch=None):
        def both(r: int, t: int) -> None:
            tokens[0] += t
            if on_batch:
                on_batch(r, t)
        return real(model_, ctx, trees, weights, name, both)

    api.score_trees = counted
    try:
        t0 = time.perf_counter()
        _, scores = rm.annotate(rows)
        sec = time.perf_counter() - t0
    finally:
        api.score_trees = real
    return [[x["score"] for x in s["responses"]] for s in scores], tokens[0], sec


def messages(prompt, text: str) -> list[dict]:
    conv = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return conv + [{"role": "assistant", "content": text}]


def simpo_loop(rows: list[dict], hf, tok) -> tuple[list[list[float]], int, float]:
    tokens, out = 0, []
    t0 = time.perf_counter()
    with torch.no_grad():
        for r in rows:
            scores = []
            for cand in r["responses"]:
                ids = tok.apply_chat_template(messages(r["prompt"], cand), return_tensors="pt", return_dict=False)
                ids = ids["input_ids"] if hasattr(ids, "keys") else ids
                tokens += ids.shape[1]
                scores.append(hf(ids).score.float().item())
            out.append(scores)
    return out, tokens, time.perf_counter() - t0


def rlhflow_loop(rows: list[dict], hf, tok) -> tuple[list[list[float]], int, float]:
    tokens, out = 0, []
    t0 = time.perf_counter()
    with torch.no_grad():
        for r in rows:
            # their `.replace(bos_token, "")` undoes Llama-3's tokenizer adding a BOS again; here no special token
            # is added (SmolLM2's BOS is <|im_start|>, which that replace would strip from every turn)
            texts = [tok.apply_chat_template(messages(r["prompt"], c), tokenize=False) for c in r["responses"]]
            scores = []
            for t in texts:  # their pipeline: batch_size 1
                enc = tok(t, return_tensors="pt", add_special_tokens=False)
                tokens += enc["input_ids"].shape[1]
                scores.append(hf(**enc).score.float().item())
            out.append(scores)
    return out, tokens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=str(DATA))
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--k", default="5,8")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from armo_cli import RewardModel
    from armo_cli.model import DEFAULT_MODEL_DIR

    model = str(DEFAULT_MODEL_DIR)
    rm = RewardModel(model, max_length=args.max_length)
    tmp = Path(tempfile.mkdtemp(prefix="annotate-bench-"))
    hf_dir = tmp / "hf"
    subprocess.run([sys.executable, "-m", "armo_cli.cli", "export", str(hf_dir), "-m", model], check=True,
                   stdout=subprocess.DEVNULL)
    hf = AutoModelForSequenceClassification.from_pretrained(str(hf_dir), trust_remote_code=True,
                                                            dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(hf_dir))

    def fits(row: dict) -> bool:
        try:
            rm.prepare([{"prompt": row["prompt"], "chosen": row["responses"][:1], "rejected": row["responses"][1:]}])
            return True
        except Exception:
            return False

    results = {"threads": torch.get_num_threads(), "model": model, "prompts": args.prompts, "runs": {}}
    print(f"annotate_bench: {args.prompts} prompts, torch threads {torch.get_num_threads()}")
    print(f"{'K':>2} {'run':<14} {'tokens':>9} {'seconds':>8} {'tok ratio':>9} {'time ratio':>10} {'max |diff|':>10}")
    for k in (int(x) for x in args.k.split(",")):
        rows = samples(Path(args.input), k, args.prompts, fits)
        armo_run(rm, rows[:2])  # warm-up
        a_scores, a_tok, a_sec = armo_run(rm, rows)
        res = {"armo annotate": {"tokens": a_tok, "seconds": a_sec}}
        for name, loop in (("SimPO-style", simpo_loop), ("RLHFlow-style", rlhflow_loop)):
            s, t, sec = loop(rows, hf, tok)
            diff = max(abs(x - y) for sa, sb in zip(a_scores, s) for x, y in zip(sa, sb))
            res[name] = {"tokens": t, "seconds": sec, "tokens_ratio": t / a_tok, "time_ratio": sec / a_sec,
                         "max_abs_score_diff": diff}
        results["runs"][str(k)] = {"prompts": len(rows), **res}
        for name, v in res.items():
            print(f"{k:>2} {name:<14} {v['tokens']:>9,} {v['seconds']:>8.1f} {v.get('tokens_ratio', 1):>9.2f} "
                  f"{v.get('time_ratio', 1):>10.2f} {v.get('max_abs_score_diff', 0):>10.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
