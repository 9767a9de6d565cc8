"""The data slices of the default model's recipe (recipes/train_default.sh), fixed by seed.

From ../shared/data it writes, into --out:
  ratings.jsonl   every permissively licensed rating row (UltraFeedback, Prometheus, XSTest, USR Topical-Chat)
  pairs.jsonl     the permissive pairs (HH-RLHF, UltraFeedback, PandaLM) used for training
  heldout.jsonl   --heldout permissive pairs taken by whole prompt, from prompts that studies/layer_probe.py
                  never trained on, so the layer choice did not see them either
  rmb-eval.jsonl  --rmb RMB pairs (helpfulness and harmlessness), by whole prompt, from the half of RMB's
                  prompts that layer_probe.py left for evaluation (it chose the layer on the other half)
  rmb-select.jsonl --select RMB pairs from the other (selection) half: out-of-distribution validation on which
                  the recipe chooses the gate's size and regularisation; never trained on, never reported as a result
Prompts recur across sources (the data README: AlpacaEval and Vicuna prompts appear in PandaLM, Prometheus
and FairEval), so every training row whose prompt text also occurs in held-out, dev-eval or the RMB slice is
dropped, and the counts are printed. Slices are by prompt, never by row.

    python recipes/recipe_slices.py --out runs/default
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))  # layer_probe's split
from layer_probe import DATA, PERMISSIVE, load_slices, prompt_key  # noqa: E402  the probe's own split

RATING_SOURCES = ("ultrafeedback", "prometheus", "xstest", "unieval_topical_chat")


def prompt_text(prompt) -> str:
    """The prompt's user text, lower-cased with whitespace collapsed: the key for cross-source recurrence."""
    if isinstance(prompt, list):
        prompt = " ".join(m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user")
    return re.sub(r"\s+", " ", str(prompt)).strip().lower()


def by_prompt(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    """Whole prompt groups in a seeded order until N rows are reached."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(prompt_key(r), []).append(r)
    order = sorted(groups)
    rng.shuffle(order)
    out: list[dict] = []
    for key in order:
        if len(out) >= n:
            break
        out += groups[key]
    return out


def read(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def write(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA.parent))
    ap.add_argument("--out", required=True)
    ap.add_argument("--heldout", type=int, default=600)
    ap.add_argument("--rmb", type=int, default=2000)
    ap.add_argument("--select", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe-train", type=int, default=300, help="layer_probe.py's --train")
    ap.add_argument("--probe-seed", type=int, default=0, help="layer_probe.py's --seed")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    pairs = read(data / "pairs.jsonl.gz")
    probe_train, _ = load_slices(data / "pairs.jsonl.gz", args.probe_train, 0, args.probe_seed)
    probe_prompts = {prompt_text(r["prompt"]) for r in probe_train}
    # the probe's RMB split, reproduced: its selection half is every RMB prompt not in the evaluation half
    _, selection = load_slices(data / "pairs.jsonl.gz", 0, 10**9, args.probe_seed)
    selected = {prompt_key(r) for r in selection}
    rmb_eval_pool = [r for r in pairs if r["source"].startswith("rmb") and prompt_key(r) not in selected]
    rmb_eval = by_prompt(rmb_eval_pool, args.rmb, rng)

    permissive = [r for r in pairs if r["source"].startswith(PERMISSIVE)]
    heldout = by_prompt([r for r in permissive if prompt_text(r["prompt"]) not in probe_prompts], args.heldout, rng)
    dev = read(data / "dev-eval.jsonl.gz")
    rmb_select = by_prompt(selection, args.select, random.Random(f"{args.seed}-select"))
    evaluated = {prompt_text(r["prompt"]) for r in heldout + dev + rmb_eval + rmb_select}
    held_ids = {r["id"] for r in heldout}
    train_pairs = [r for r in permissive if r["id"] not in held_ids and prompt_text(r["prompt"]) not in evaluated]
    ratings_all = [r for r in read(data / "ratings.jsonl.gz") if r["source"].startswith(RATING_SOURCES)]
    ratings = [r for r in ratings_all if prompt_text(r["prompt"]) not in evaluated]

    for name, rows in (("ratings", ratings), ("pairs", train_pairs), ("heldout", heldout), ("rmb-eval", rmb_eval),
                       ("rmb-select", rmb_select)):
        write(out / f"{name}.jsonl", rows)
    dropped_pairs = len(permissive) - len(heldout) - len(train_pairs)
    print(f"recipe_slices: ratings {len(ratings)} (of {len(ratings_all)} permissive; {len(ratings_all) - len(ratings)} "
          f"share a prompt with an evaluation set), pairs {len(train_pairs)} (of {len(permissive)}: {len(heldout)} held out, "
          f"{dropped_pairs} share a prompt with an evaluation set), rmb-eval {len(rmb_eval)} "
          f"({len({r['source'] for r in rmb_eval})} categories), rmb-select {len(rmb_select)}, written to {out}")


if __name__ == "__main__":
    main()
