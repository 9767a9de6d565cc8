"""armo inside real RLHF trainers, as they are installed (#36): TRL's GRPOTrainer runs a few steps on the CPU with
armo's reward function, in-process and against a live `armo serve`, and the rewards TRL logs are `armo score`'s on
the same prompt and completion texts."""
from __future__ import annotations

import json
import re
import textwrap

import pytest

from tests.helpers import CHATML, ROOT, armo, make_tokenizer, needs_embedded, write_jsonl

pytestmark = pytest.mark.clients


@pytest.fixture(autouse=True)
def _needs(request):
    needs = {"openrlhf": ("openrlhf.utils.agent", "pip install --no-deps openrlhf==0.11.2 aiohttp pylatexenc"),
             "verl": ("verl.workers.reward_manager", "pip install --no-deps verl==0.9.1 ray tensordict omegaconf")}
    words = request.node.name.split("[")[0].split("_")
    mod, how = next((needs[w] for w in words if w in needs), ("trl", "pip install trl==1.16.0"))
    pytest.importorskip(mod, reason=f"{mod} is not installed (.ci/run installs it: {how})")

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
    from tests.serving import KEY, Server

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



@pytest.mark.slow
def test_openrlhf_remote_reward_client_against_armo_serve(tiny_model, tmp_path, armo_cache):
    """OpenRLHF 0.11's own client for --remote_rm_url (SingleTurnAgentExecutor._fetch_rewards_via_http, aiohttp) against
    a live armo serve: batch and single-sample requests, with its `prompts` and `labels`; the rewards are armo score's,
    the objectives arrive in extra_logs, and a refused query surfaces as OpenRLHF surfaces it (retries, then a
    RuntimeError). OpenRLHF sends no Authorization header: serve it on loopback without --api-key."""
    import asyncio

    from openrlhf.utils.agent import SingleTurnAgentExecutor
    from tests.serving import Server, chatml, messages

    rows = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, ["sure", "ok then", "a good one", "it runs", "yes", "no"])]
    want = armo_scores(tiny_model / "model", [r["prompt"] for r in rows], [r["response"] for r in rows], tmp_path)
    queries = [chatml(messages(r["prompt"]), r["response"]) for r in rows]
    prompts = [chatml(messages(r["prompt"])) for r in rows]
    s = Server(tiny_model / "model", armo_cache)
    try:
        client = SingleTurnAgentExecutor(remote_rm_url=s.url + "/get_reward")
        (batch,) = asyncio.run(client._fetch_rewards_via_http(queries, prompts, [None] * len(rows)))
        assert batch["rewards"] == pytest.approx(want, abs=1e-5) and batch["scores"] == batch["rewards"]
        objectives = json.loads((tiny_model / "model" / "armo.json").read_text())["objectives"]
        assert sorted(batch["extra_logs"]) == sorted(objectives)
        for i in range(len(rows)):  # one query a request, as rollouts send them
            (one,) = asyncio.run(client._fetch_rewards_via_http(queries[i:i + 1], prompts[i:i + 1], ["label"]))
            assert one["rewards"] == pytest.approx(want[i:i + 1], abs=1e-5)
        with pytest.raises(RuntimeError, match="Request error for 5 times"):
            asyncio.run(client._fetch_rewards_via_http(["no markers"], ["not a prefix"], [None]))
    finally:
        s.stop()


def verl_batch(tok, rows):
    """verl's DataProto for rows, as its rollout leaves it: prompts left-padded, responses right-padded, one
    attention mask over both; the prompt text in extra_info (verl passes only the response to compute_score)."""
    import numpy as np
    import torch
    from verl import DataProto

    p_ids = [tok(r["prompt"], add_special_tokens=False).input_ids for r in rows]
    r_ids = [tok(r["response"], add_special_tokens=False).input_ids for r in rows]
    P, R, pad = max(map(len, p_ids)), max(map(len, r_ids)), tok.pad_token_id
    prompts = torch.tensor([[pad] * (P - len(x)) + x for x in p_ids])
    responses = torch.tensor([x + [pad] * (R - len(x)) for x in r_ids])
    mask = torch.tensor([[0] * (P - len(a)) + [1] * len(a) + [1] * len(b) + [0] * (R - len(b)) for a, b in zip(p_ids, r_ids)])
    return DataProto.from_dict(
        tensors={"prompts": prompts, "responses": responses, "attention_mask": mask},
        non_tensors={"data_source": np.array(["armo"] * len(rows), dtype=object),
                     "reward_model": np.array([{"ground_truth": None} for _ in rows], dtype=object),
                     "extra_info": np.array([{"prompt": r["prompt"]} for r in rows], dtype=object)})


@pytest.mark.parametrize("manager", ["naive", "batch"])
def test_verl_reward_managers_call_armos_compute_score(tiny_model, tmp_path, armo_cache, monkeypatch, manager):
    """verl 0.9's NaiveRewardManager (one sample a call) and BatchRewardManager (lists, with plural argument names)
    with armo's compute_score, in-process and against a live armo serve (verl's reward_kwargs, here a partial): the
    reward at each response's last token is armo score's, and the objectives are verl's reward_extra_info."""
    import functools

    from armo_cli.adapters import compute_score
    from tests.serving import Server
    from verl.workers.reward_manager import BatchRewardManager, NaiveRewardManager

    monkeypatch.setenv("ARMO_CACHE", str(armo_cache))
    tok = make_tokenizer(CHATML, adds_bos=False)
    rows = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, ["sure", "ok then", "a good one", "it runs"])]
    want = armo_scores(tiny_model / "model", [r["prompt"] for r in rows], [r["response"] for r in rows], tmp_path)
    s = Server(tiny_model / "model", armo_cache)
    try:
        for fn in (functools.partial(compute_score, model=str(tiny_model / "model")), functools.partial(compute_score, url=s.url)):
            rm = NaiveRewardManager(tok, 0, fn) if manager == "naive" else BatchRewardManager(tok, 0, fn)
            out = rm(verl_batch(tok, rows), return_dict=True)
            tensor, extra = out["reward_tensor"], out["reward_extra_info"]
            got = [float(tensor[i].sum()) for i in range(len(rows))]  # the reward sits at the last response token
            assert got == pytest.approx(want, abs=1e-5)
            assert extra["score"] == pytest.approx(want, abs=1e-5) and len(extra) > 2
    finally:
        s.stop()



def readme_recipe(name: str) -> str:
    """The README's code block after `<!-- recipe: NAME`, as written (its list indentation removed)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- recipe: " + re.escape(name) + r"\b.*?-->\s*\n( *)```\w*\n(.*?)\n\1```", text, re.S)
    assert m, f"the README's {name} recipe has moved; update this test"
    return textwrap.dedent(m[2])


@needs_embedded()
def test_the_readme_trl_recipe_runs_as_written(tmp_path, armo_cache, monkeypatch):
    """The README's TRL block, executed as it stands with a CPU-sized policy: TRL logs the shipped model's rewards."""
    monkeypatch.chdir(tmp_path)
    policy, tok = tiny_policy(tmp_path)
    ns = {"policy": policy, "tokenizer": tok, "prompts": PROMPTS}
    exec(readme_recipe("trl"), ns)
    logs = ns["trainer"]._logs
    rows = [{"prompt": p, "response": c} for p, c in zip(logs["prompt"], logs["completion"])]
    r = armo("score", write_jsonl(tmp_path / "logged.jsonl", rows), "-q")
    assert list(logs["rewards"]["armo"]) == pytest.approx([json.loads(x)["score"] for x in r.stdout.splitlines()], abs=1e-5)


@needs_embedded()
def test_the_readme_openrlhf_recipe_serves_openrlhfs_client(tmp_path):
    """The README's OpenRLHF block: its `armo serve` line run as written (the shipped model) and OpenRLHF's own client
    sent to its --remote_rm_url."""
    import asyncio
    import shlex
    import socket
    import subprocess
    import sys

    from openrlhf.utils.agent import SingleTurnAgentExecutor
    from tests.serving import chatml, messages

    serve_line, train_line = readme_recipe("openrlhf").splitlines()
    url = re.search(r"--remote_rm_url (\S+)", train_line)[1]
    args = shlex.split(serve_line.rstrip("& "))
    assert args[:2] == ["armo", "serve"]
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", int(re.search(r":(\d+)/", url)[1]))) == 0:
            pytest.skip(f"{url}: its port is taken on this machine")
    proc = subprocess.Popen([sys.executable, "-c", "from armo_cli.cli import main; main()", *args[1:]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "http://" in proc.stdout.readline()
        rows = [{"prompt": "What is 2+2?", "response": "4"}, {"prompt": "Say hi", "response": "Hi!"}]
        queries = [chatml(messages(r["prompt"]), r["response"]) for r in rows]
        prompts = [chatml(messages(r["prompt"])) for r in rows]
        (out,) = asyncio.run(SingleTurnAgentExecutor(remote_rm_url=url)._fetch_rewards_via_http(queries, prompts, [None, None]))
        r = armo("score", write_jsonl(tmp_path / "rows.jsonl", rows), "-q")
        assert out["rewards"] == pytest.approx([json.loads(x)["score"] for x in r.stdout.splitlines()], abs=1e-5)
    finally:
        proc.terminate()
        proc.wait(60)


def test_the_readme_verl_recipe_loads_through_verls_own_loader(tiny_model, tmp_path, armo_cache, monkeypatch):
    """The README's verl file, written as it stands and loaded by verl's get_custom_reward_fn from the config keys the
    README names, scores through verl's NaiveRewardManager."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.workers.reward_manager import NaiveRewardManager

    monkeypatch.setenv("ARMO_CACHE", str(armo_cache))
    code = readme_recipe("verl")
    (tmp_path / "armo_reward.py").write_text(code)
    keys = dict(kv.split("=", 1) for kv in re.search(r"verl 0\.9: (.*)", code)[1].split())
    keys["reward.custom_reward_function.path"] = str(tmp_path / "armo_reward.py")  # the file, where we wrote it
    keys["reward.custom_reward_function.reward_kwargs"] = {"model": str(tiny_model / "model")}
    cfg = OmegaConf.create()
    for k, v in keys.items():
        OmegaConf.update(cfg, k, v, force_add=True)
    fn = get_custom_reward_fn(cfg)
    tok = make_tokenizer(CHATML, adds_bos=False)
    rows = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, ["sure", "ok then"])]
    out = NaiveRewardManager(tok, 0, fn)(verl_batch(tok, rows), return_dict=True)
    want = armo_scores(tiny_model / "model", [r["prompt"] for r in rows], [r["response"] for r in rows], tmp_path)
    assert [float(out["reward_tensor"][i].sum()) for i in range(len(rows))] == pytest.approx(want, abs=1e-5)


def test_dpo_trainer_trains_on_annotates_pairs_as_written(tiny_model, tmp_path, armo_cache):
    """#47: `armo annotate`'s pairs file loads with `datasets.load_dataset("json", ...)` and trains TRL's DPOTrainer as
    it is (every column armo adds left in), two CPU steps with a tiny policy."""
    import math

    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer

    rows = [{"id": f"q{i}", "prompt": p, "responses": [f"{p} yes", "no", f"maybe {p}", "I can help with that"]}
            for i, p in enumerate(PROMPTS)]
    out = tmp_path / "pairs.jsonl"
    r = armo("annotate", str(write_jsonl(tmp_path / "samples.jsonl", rows)), "-m", str(tiny_model / "model"),
             "-o", str(out), "-q")
    assert r.code == 0, r.output
    ds = load_dataset("json", data_files=str(out), split="train")
    assert len(ds) == len(PROMPTS) and {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"} <= set(ds.column_names)
    policy, tok = tiny_policy(tmp_path)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=2, max_steps=2, logging_steps=1,
                     report_to="none", use_cpu=True, bf16=False, save_strategy="no", max_length=64, seed=0)
    import copy

    # an in-memory policy has no hub name for TRL to load its reference from: the reference is given, a frozen copy
    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(policy), args=args, train_dataset=ds, processing_class=tok)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and len(losses) == 2 and all(math.isfinite(x) for x in losses)
