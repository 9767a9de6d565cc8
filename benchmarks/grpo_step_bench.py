"""Time per GRPO step on this CPU with armo's reward in-process against a live `armo serve` on 127.0.0.1, side by
side in one run: TRL's GRPOTrainer, a tiny random Llama policy (the step is mostly generation and the reward),
4 completions a step (2 prompts x 2), the embedded default model as the reward (ArmoRewardFunc).

Run: python benchmarks/grpo_step_bench.py  (about 2 minutes on a 2-core CPU; needs trl and the serve extra)
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import GRPOConfig, GRPOTrainer

from armo_cli.adapters import ArmoRewardFunc
from armo_cli.backbones import BackboneSpec, gguf_cache_dir

PROMPTS = ["How can I learn Python?", "Write a haiku about rain.", "What is a reward model?", "Is it safe to eat raw eggs?"]


def step_seconds(reward, steps: int, tok) -> float:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    args = GRPOConfig(output_dir="/tmp/armo-grpo-bench", per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=32, max_steps=steps + 1, logging_steps=1, report_to="none", use_cpu=True,
                      bf16=False, save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=LlamaForCausalLM(cfg), reward_funcs=[reward], args=args, processing_class=tok,
                          train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS] * 8}))
    times = []

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):  # each step's wall time; the first one warms up and is dropped
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    trainer.add_callback(StepTimer())
    trainer.train()
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    # the policy speaks the embedded backbone's tokenizer (its dequantised folder in armo's cache)
    spec = BackboneSpec.resolve("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(str(gguf_cache_dir(spec.gguf)[0]))
    local = step_seconds(ArmoRewardFunc(), args.steps, tok)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "armo_cli.cli", "serve", "--port", str(port), "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ)
    try:
        server.stdout.readline()  # the address line: it answers from now on
        remote = step_seconds(ArmoRewardFunc(url=f"http://127.0.0.1:{port}"), args.steps, tok)
    finally:
        server.terminate()
        server.wait(60)
    print(f"grpo_step_bench: median seconds per GRPO step over {args.steps} steps (4 completions of up to 32 tokens)")
    print(f"| reward | s/step |\n|---|---|\n| in-process ArmoRewardFunc() | {local:.2f} |\n"
          f"| remote ArmoRewardFunc(url=...) | {remote:.2f} |")


if __name__ == "__main__":
    main()
