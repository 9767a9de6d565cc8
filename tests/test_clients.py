"""armo inside real RLHF trainers, as they are installed (#36): TRL's GRPOTrainer runs a few steps on the CPU with
armo's reward function, in-process and against a live `armo serve`, and the rewards TRL logs are `armo score`'s on
the same prompt and completion texts."""
from __future__ import annotations

import json

import pytest

from conftest import CHATML, armo, make_tokenizer, write_jsonl

trl = pytest.importorskip("trl", reason="trl is not installed (.ci/run installs it: pip install trl==1.16.0)")
pytestmark = pytest.mark.clients

PROMPTS = ["how can you help", "write a short answer", "what is a good question", "explain the code",
           "say yes or no", "is this safe"]


def tiny_policy(tmp_path):
    """A random-init Llama-shaped policy with the tests' tokenizer (ChatML template): a CPU-sized GRPO run."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(CHATML, adds_bos=False)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg), tok


def run_grpo(tmp_path, reward_func, conversational: bool):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    policy, tok = tiny_policy(tmp_path)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS] if conversational else PROMPTS
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8, max_steps=2, logging_steps=1, report_to="none", use_cpu=True,
                      bf16=False, save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward_func], args=args,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok)
    trainer.train()
    return trainer


def armo_scores(model, prompts, completions, tmp_path) -> list[float]:
    """`armo score` of the prompt/completion texts TRL logged."""
    rows = [{"prompt": p, "response": c if isinstance(c, str) else c[-1]["content"]} for p, c in zip(prompts, completions)]
    r = armo("score", "-m", model, write_jsonl(tmp_path / "logged.jsonl", rows), "-q")
    assert r.code == 0, r.stderr
    return [json.loads(x)["score"] for x in r.stdout.splitlines()]


@pytest.mark.parametrize("conversational", [False, True], ids=["plain", "conversational"])
def test_grpo_logs_armos_rewards_in_process(tiny_model, tmp_path, armo_cache, monkeypatch, conversational):
    from armo_cli.adapters import ArmoRewardFunc

    monkeypatch.setenv("ARMO_CACHE", str(armo_cache))
    trainer = run_grpo(tmp_path, ArmoRewardFunc(str(tiny_model / "model")), conversational)
    logs = trainer._logs
    prompts, completions = list(logs["prompt"]), list(logs["completion"])
    logged = list(logs["rewards"]["armo"])
    assert len(logged) == len(completions) >= 4  # one generation batch: 2 prompts x 2 completions
    assert logged == pytest.approx(armo_scores(tiny_model / "model", prompts, completions, tmp_path), abs=1e-5)
    objectives = json.loads((tiny_model / "model" / "armo.json").read_text())["objectives"]
    assert sorted(logs["extra"]) == sorted(f"armo/{o}" for o in objectives)  # each objective a completions column
    metrics = {k for entry in trainer.state.log_history for k in entry}
    assert {f"armo/{o}" for o in objectives} <= metrics  # and a logged metric


def test_grpo_logs_armos_rewards_from_a_live_server(tiny_model, tmp_path, armo_cache):
    from armo_cli.adapters import ArmoRewardFunc
    from test_serve import KEY, Server

    s = Server(tiny_model / "model", armo_cache, "--api-key", KEY)
    try:
        trainer = run_grpo(tmp_path, ArmoRewardFunc(url=s.url, api_key=KEY), conversational=True)
    finally:
        s.stop()
    logs = trainer._logs
    prompts, completions = list(logs["prompt"]), list(logs["completion"])
    assert list(logs["rewards"]["armo"]) == pytest.approx(
        armo_scores(tiny_model / "model", prompts, completions, tmp_path), abs=1e-5)
    assert any(k.startswith("armo/") for k in logs["extra"])
