"""Which hidden layer of the backbone carries preference? A Bradley-Terry probe per layer.

Data (../shared/data/pairs.jsonl.gz):
  - training pairs: the permissively licensed sources (hh_rlhf, ultrafeedback, pandalm), a seeded slice;
  - an out-of-distribution *selection* slice of RMB pairs: RMB's prompts are split in two by a seeded
    shuffle, and only the first half is used here (the second half is left for evaluating a model whose
    layer was chosen with this script). No held-out, dev-eval or RMB evaluation row is read.
All layers come from one forward pass per pair (`encode_trees(..., layer=[0..n])`). Per layer, a linear
Bradley-Terry probe (logistic loss on chosen - rejected features, standardised with training statistics,
L2 strength chosen by cross-validation) is scored in-distribution (5-fold cross-validation grouped by
prompt) and out of distribution (fitted on all training pairs, scored on the selection slice).

    python studies/layer_probe.py --train 300 --ood 300 --json layer_probe.json

With `--work WORK` it probes a recipe run's own slices instead (recipes/train_default.sh): every training pair
in WORK/pairs.jsonl and every pair of the RMB selection slice WORK/rmb-select.jsonl (at --ood-max-length, the
recipe's 1024 for evaluation sets). Those rows already train and select; still no held-out or evaluation row.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import time
from pathlib import Path

import torch

from armo_cli.backbones import load_backbone
from armo_cli.forward import encode_trees
from armo_cli.rendering import Renderer, length_limit, sized_tree
from armo_cli.rows import parse_row

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pairs.jsonl.gz"
PERMISSIVE = ("hh_rlhf", "ultrafeedback", "pandalm")
L2_GRID = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]


def prompt_key(row: dict) -> str:
    return hashlib.sha256(json.dumps(row["prompt"], sort_keys=True).encode()).hexdigest()[:16]


def load_slices(path: Path, n_train: int, n_ood: int, seed: int) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in gzip.open(path, "rt")]
    rng = random.Random(seed)
    train = [r for r in rows if r["source"].startswith(PERMISSIVE)]
    rng.shuffle(train)
    rmb = [r for r in rows if r["source"].startswith("rmb")]
    prompts = sorted({prompt_key(r) for r in rmb})
    rng.shuffle(prompts)
    selection = set(prompts[: len(prompts) // 2])  # the other half is left for evaluation
    ood = [r for r in rmb if prompt_key(r) in selection]
    rng.shuffle(ood)
    return train[:n_train], ood[:n_ood]


def features(bb, rows: list[dict], layers: list[int], max_length: int, pooling: str = "last") -> tuple[torch.Tensor, list[str]]:
    """Response features [N,2,n_layers,d] of the pairs that fit (prompt truncated if needed), their prompts."""
    r = Renderer(bb.tokenizer)
    limit, name = length_limit(max_length, bb.model.config)
    trees, keys, skipped = [], [], []
    for i, row in enumerate(rows):
        ex = parse_row(row, f"row {i}")
        t = sized_tree(r, ex, i, f"row {i}", limit, name, "truncate-prompt", skipped)
        if t is not None:
            trees.append(t)
            keys.append(prompt_key(row))
    _, resp = encode_trees(bb, trees, batch_tokens=2048, max_padding=0.05, layer=layers, pooling=pooling)
    return resp, keys


def fit_probe(D: torch.Tensor, l2: float) -> torch.Tensor:
    """Logistic Bradley-Terry on differences D [n,d] (chosen - rejected), no intercept: P(chosen) = s(w.D)."""
    w = torch.zeros(D.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(D @ w)).mean() + 0.5 * l2 * (w @ w) / D.shape[0]
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mu) / sd for x in (train, *others)]


def accuracy(w: torch.Tensor, D: torch.Tensor) -> float:
    return float(((D @ w) > 0).double().mean())


def grouped_folds(keys: list[str], k: int, seed: int) -> list[torch.Tensor]:
    uniq = sorted(set(keys))
    random.Random(seed).shuffle(uniq)
    fold_of = {u: i % k for i, u in enumerate(uniq)}
    return [torch.tensor([fold_of[x] == f for x in keys]) for f in range(k)]


def probe_layer(Xtr: torch.Tensor, keys: list[str], Xood: torch.Tensor, folds: int, seed: int) -> dict:
    """Xtr [n,2,d], Xood [m,2,d] at one layer -> in-distribution CV accuracy, OOD accuracy, chosen L2."""
    masks = grouped_folds(keys, folds, seed)
    best = None
    for l2 in L2_GRID:  # strength by cross-validation on the training pairs only
        accs = []
        for va in masks:
            # standardise responses with the training fold's statistics, then take differences
            tr_r, va_r = standardise(Xtr[~va].reshape(-1, Xtr.shape[-1]).double(), Xtr[va].reshape(-1, Xtr.shape[-1]).double())
            tr_r, va_r = tr_r.reshape(-1, 2, Xtr.shape[-1]), va_r.reshape(-1, 2, Xtr.shape[-1])
            w = fit_probe(tr_r[:, 0] - tr_r[:, 1], l2)
            accs.append(accuracy(w, va_r[:, 0] - va_r[:, 1]))
        cv = sum(accs) / len(accs)
        if best is None or cv > best[0]:
            best = (cv, l2)
    cv, l2 = best
    tr_r, ood_r = standardise(Xtr.reshape(-1, Xtr.shape[-1]).double(), Xood.reshape(-1, Xood.shape[-1]).double())
    tr_r, ood_r = tr_r.reshape(-1, 2, Xtr.shape[-1]), ood_r.reshape(-1, 2, Xood.shape[-1])
    w = fit_probe(tr_r[:, 0] - tr_r[:, 1], l2)
    return {"cv_accuracy": cv, "ood_accuracy": accuracy(w, ood_r[:, 0] - ood_r[:, 1]), "l2": l2}


RULE = "among the layers whose OOD accuracy is within 0.02 of the best, the best CV accuracy"


def choose(results: list[dict], tolerance: float = 0.02) -> dict:
    """The layer to use. OOD accuracies at this n differ by less than their interval (about +-0.07), so the
    OOD maximum alone would pick noise; near it, the in-distribution accuracy breaks the tie."""
    top = max(r["ood_accuracy"] for r in results)
    return max((r for r in results if r["ood_accuracy"] >= top - tolerance), key=lambda r: (r["cv_accuracy"], r["layer"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--ood", type=int, default=300)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--json", default=None)
    ap.add_argument("--cache", default=None, help="save the features here, or reuse them if the file exists")
    ap.add_argument("--work", default=None, help="probe WORK/pairs.jsonl and WORK/rmb-select.jsonl (a recipe run)")
    ap.add_argument("--ood-max-length", type=int, default=None, help="max length of the selection pairs (default --max-length)")
    ap.add_argument("--pooling", default="last", choices=("last", "mean"), help="the response feature: last token or mean")
    args = ap.parse_args()
    ood_max = args.ood_max_length or args.max_length
    key = [args.train, args.ood, args.max_length, args.seed] + ([args.work, ood_max] if args.work else []) + (
        [args.pooling] if args.pooling != "last" else [])
    if not Path(args.data).exists():
        raise SystemExit(f"{args.data} is absent: nothing to probe")
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.cache and Path(args.cache).exists():  # features of an earlier run with the same arguments
        saved = torch.load(args.cache, weights_only=True)
        if saved["args"] != key:
            raise SystemExit(f"{args.cache}: features of other arguments ({saved['args']})")
        Xtr, keys, Xood = saved["Xtr"], saved["keys"], saved["Xood"]
    else:
        bb = load_backbone("smollm2-135m-instruct")
        if args.work:
            train_rows, ood_rows = (
                [json.loads(line) for line in (Path(args.work) / f"{stem}.jsonl").read_text().splitlines()]
                for stem in ("pairs", "rmb-select"))
        else:
            train_rows, ood_rows = load_slices(Path(args.data), args.train, args.ood, args.seed)
        n_layers = int(bb.model.config.num_hidden_layers)
        Xtr, keys = features(bb, train_rows, list(range(n_layers + 1)), args.max_length, args.pooling)
        Xood, _ = features(bb, ood_rows, list(range(n_layers + 1)), ood_max, args.pooling)
        if args.cache:
            torch.save({"args": key, "Xtr": Xtr, "keys": keys,
                        "Xood": Xood}, args.cache)
    n = Xtr.shape[2] - 1
    layers = list(range(n + 1))
    t1 = time.perf_counter()
    results = []
    for k in layers:
        r = probe_layer(Xtr[:, :, k], keys, Xood[:, :, k], args.folds, args.seed)
        results.append({"layer": k, "layer_from_end": k - (n + 1), **r})
    best = max(results, key=lambda r: (r["ood_accuracy"], r["layer"]))
    print(f"layer_probe ({args.pooling} pooling): {Xtr.shape[0]} training pairs ({args.work or ', '.join(PERMISSIVE)}), {Xood.shape[0]} RMB selection pairs, "
          f"max length {args.max_length}; features {t1 - t0:.0f} s (one pass per pair, all {n + 1} layers)")
    print(f"{'layer':>5} {'from end':>8} {'CV acc (in-dist)':>17} {'OOD acc (RMB sel.)':>19} {'L2':>7}")
    for r in results:
        mark = "  <- best OOD" if r is best else ""
        print(f"{r['layer']:>5} {r['layer_from_end']:>8} {r['cv_accuracy']:>17.3f} {r['ood_accuracy']:>19.3f} {r['l2']:>7g}{mark}")
    print(f"best layer by OOD accuracy: {best['layer']} (--layer {best['layer_from_end']}), "
          f"OOD {best['ood_accuracy']:.3f}, CV {best['cv_accuracy']:.3f}; last layer: OOD {results[-1]['ood_accuracy']:.3f}, "
          f"CV {results[-1]['cv_accuracy']:.3f}")
    chosen = choose(results)
    print(f"chosen ({RULE}): layer {chosen['layer']} (--layer {chosen['layer_from_end']}), "
          f"OOD {chosen['ood_accuracy']:.3f}, CV {chosen['cv_accuracy']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "layers": results, "best": best, "chosen": chosen, "rule": RULE,
                                               "train_pairs": int(Xtr.shape[0]), "ood_pairs": int(Xood.shape[0])}, indent=2))


if __name__ == "__main__":
    main()
