"""Where in the response should f(x,y) be read? A Bradley-Terry probe per token position, at one layer.

Positions (the embedded backbone's ChatML ends a response with `<|im_end|>` and a newline): the last token
(the newline: what `--pooling last` reads), `<|im_end|>`, the last content token, the mean of the response's
tokens (what `--pooling mean` reads) and the mean of its content tokens. Per position, a linear probe (logistic
regression on standardised chosen - rejected features, no intercept, C chosen by 5-fold CV over contiguous
folds) is fitted on a recipe run's training pairs and scored on its held-out pairs and RMB selection slice,
with Spearman(score, length) beside each accuracy.

    python studies/position_probe.py --work runs/default --train 1800

This is the probe behind the pooling choice (CHANGELOG), as it ran in two steps, joined into one file.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from armo_cli.backbones import load_backbone
from armo_cli.forward import build_batch, resolve_layer, token_batches
from armo_cli.rendering import Renderer, sized_tree
from armo_cli.rows import parse_row

NAMES = ["last (newline)", "im_end", "last content", "mean response", "mean content"]


def position_features(bb, path: Path, max_length: int, limit: int, layer: int) -> dict:
    """Response features [N,2,5,d] at the five positions, and response lengths [N,2]."""
    r = Renderer(bb.tokenizer)
    trees = []
    for i, line in enumerate(path.read_text().splitlines()[:limit]):
        try:
            ex = parse_row(json.loads(line), f"{path}:{i + 1}")
            t = sized_tree(r, ex, i, f"{path}:{i + 1}", max_length, "--max-length", "truncate-prompt", [])
        except Exception:
            continue
        if t is not None and t.conts[0] != t.conts[1]:
            trees.append(t)
    k = resolve_layer(layer, int(bb.model.config.num_hidden_layers))
    out = torch.zeros(len(trees), 2, len(NAMES), bb.hidden_size)
    lens = torch.zeros(len(trees), 2)
    where = {id(t): i for i, t in enumerate(trees)}
    with torch.inference_mode():
        for batch in token_batches(trees, 4096, 0.1):
            ids, pos, mask = build_batch(batch, torch.device("cpu"), torch.float32)
            valid = torch.arange(ids.shape[1])[None] < torch.tensor([t.length for t in batch])[:, None]
            h = bb.model.forward_flat(ids, pos, mask, valid, k)
            for b, t in enumerate(batch):
                i, o = where[id(t)], len(t.prompt)
                for j, c in enumerate(t.conts):
                    s, e = o, o + len(c)
                    out[i, j, 0], out[i, j, 1], out[i, j, 2] = h[b, e - 1], h[b, e - 2], h[b, e - 3]
                    out[i, j, 3], out[i, j, 4] = h[b, s:e].mean(0), h[b, s:max(s + 1, e - 2)].mean(0)
                    lens[i, j] = len(c)
                    o = e
    return {"X": out, "lens": lens}


def main() -> None:
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/default")
    ap.add_argument("--train", type=int, default=1800, help="training pairs read (the first N lines)")
    ap.add_argument("--layer", type=int, default=-18)
    args = ap.parse_args()
    work = Path(args.work)
    bb = load_backbone("smollm2-135m-instruct", device="cpu", dtype="fp32", fast=True)
    tr = position_features(bb, work / "pairs.jsonl", 512, args.train, args.layer)
    sets = {n: position_features(bb, work / f"{n}.jsonl", 1024, 1 << 30, args.layer) for n in ("heldout", "rmb-select")}
    rng = np.random.RandomState(0)

    def fit(X: torch.Tensor, C: float) -> np.ndarray:
        D = (X[:, 0] - X[:, 1]).numpy()
        flip = rng.rand(len(D)) < 0.5  # half the pairs flipped: balanced labels without an intercept
        D[flip] *= -1
        return LogisticRegression(C=C, fit_intercept=False, max_iter=2000).fit(D, (~flip).astype(int)).coef_[0]

    for p, name in enumerate(NAMES):
        X = tr["X"][:, :, p]
        mu, sd = X.reshape(-1, X.shape[-1]).mean(0), X.reshape(-1, X.shape[-1]).std(0) + 1e-6
        Xn = (X - mu) / sd
        best = None
        for C in [1e-3, 1e-2, 1e-1, 1]:
            acc = []
            for f in np.array_split(np.arange(len(Xn)), 5):
                m = np.ones(len(Xn), bool)
                m[f] = False
                s = Xn[f] @ torch.tensor(fit(Xn[m], C), dtype=torch.float32)
                acc.append((s[:, 0] > s[:, 1]).float().mean().item())
            if best is None or np.mean(acc) > best[0]:
                best = (float(np.mean(acc)), C)
        w = torch.tensor(fit(Xn, best[1]), dtype=torch.float32)
        row = [f"{name:16s}", f"CV {best[0]:.3f} (C={best[1]:g})"]
        for n, d in sets.items():
            s = ((d["X"][:, :, p] - mu) / sd) @ w
            sp = spearmanr(s.flatten().numpy(), d["lens"].flatten().numpy()).correlation
            row.append(f"{n} {(s[:, 0] > s[:, 1]).float().mean().item():.3f} (Spearman {sp:+.2f}, n={len(s)})")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
