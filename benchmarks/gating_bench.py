"""fit-gating with the default settings (3 x 1024 MLP, batch 1024, 2000 steps, AdamW, cosine) on
20,000 synthetic pairs with d = 576, timed end to end (including the comparison baselines)."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from armo_cli.configs import GatingConfig
from armo_cli.fitting import fit_gating
from armo_cli.artifact_files import save_raw_artifact


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--objectives", type=int, default=11)
    ap.add_argument("--no-early-stop", action="store_true", help="run all 2000 steps (the worst case)")
    args = ap.parse_args()
    n, d, k = args.pairs, args.dim, args.objectives
    g = torch.Generator().manual_seed(0)
    P = torch.randn(n, d, generator=g)
    R = torch.randn(n, 2, d, generator=g)
    W = torch.randn(k, d, generator=g) / d ** 0.5
    # prompts of a few kinds, each preferring a different objective
    kind = (P[:, :4].argmax(-1) * 3) % k
    pref = torch.stack([R[i, :, :] @ W[kind[i]] for i in range(n)])
    swap = pref[:, 1] > pref[:, 0]
    R[swap] = R[swap].flip(1)
    bb = {"name": "synthetic", "fingerprint": "synthetic", "hidden_size": d}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ids = [f"p{i}" for i in range(n)]
        save_raw_artifact(tmp / "pairs.st", {"prompt_features": P, "response_features": R,
                                         "response_lengths": torch.full((n, 2), 100), "prompt_lengths": torch.full((n,), 50),
                                         "row_index": torch.arange(n)},
                      {"kind": "features", "ids": ids, "prompt_hashes": ids, "subsets": None, "objectives": [],
                       "pair": True, "backbone": bb, "gate_rule": "generation-prompt", "input_hash": "h",
                       "settings_key": "s", "report": {}})
        save_raw_artifact(tmp / "reg.st", {"weight": W, "bias": torch.zeros(k)},
                      {"kind": "regression", "objectives": [f"o{i}" for i in range(k)], "scales": {}, "backbone": bb,
                       "hidden_size": d, "gate_rule": "generation-prompt"})
        t0 = time.perf_counter()
        rep = fit_gating(GatingConfig(features=[str(tmp / "pairs.st")], regression=str(tmp / "reg.st"),
                                      output=str(tmp / "gate.st"), quiet=True, steps=2000,
                                      patience=10 ** 9 if args.no_early_stop else GatingConfig.patience))
        dt = time.perf_counter() - t0
    tr = rep["training"]
    print(f"pairs={n} d={d} objectives={k} threads={torch.get_num_threads()}")
    print(f"fit-gating (defaults): {dt:8.1f} s  (target < 600 s); steps run {tr['steps_run']} of {tr['steps']}, best at {tr['best_step']}")
    for m in rep["metrics"]:
        print(f"  {m['name']:45s} val accuracy {m['accuracy']:.3f}  loss {m['loss']:.4f}")


if __name__ == "__main__":
    main()
