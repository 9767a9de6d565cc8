"""armo inside RLHF trainers: a TRL reward function and a verl `compute_score`, in-process or against `armo serve`.

TRL (GRPOTrainer and friends):
    from armo_cli.adapters import ArmoRewardFunc
    trainer = GRPOTrainer(..., reward_funcs=[ArmoRewardFunc()])           # or ArmoRewardFunc(url="http://host:8000")
It takes TRL's `prompts`/`completions` (standard or conversational), returns one float per completion, and
when TRL passes `log_extra`/`log_metric`, logs each objective's reward as a completions-table column and its
mean as a metric.

verl (custom_reward_function.path pointing at a file that imports it, name=compute_score):
    from armo_cli.adapters import compute_score
verl passes only the response in `solution_str`; put the prompt in the dataset's `extra_info["prompt"]` (a
string or a list of messages). Model and server come from `reward_kwargs` (model=..., url=...) or from the
ARMO_MODEL / ARMO_URL environment variables.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Callable, Sequence

_MODELS: dict[Any, Any] = {}


def _local(model: str | None) -> Any:
    """One RewardModel per model path in this process (trainers call reward functions many times)."""
    if model not in _MODELS:
        from .api import RewardModel

        _MODELS[model] = RewardModel(model, overflow="truncate-prompt")
    return _MODELS[model]


def remote_score(url: str, rows: list[dict], api_key: str | None = None, timeout: float = 600.0) -> list[dict]:
    """POST rows to an `armo serve` /score route; its records, or a one-line error naming the server's reason."""
    req = urllib.request.Request(url.rstrip("/") + "/score", data=json.dumps({"rows": rows}).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {api_key}"} if api_key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            why = json.loads(e.read()).get("error", "")
        except ValueError:
            why = e.reason
        raise RuntimeError(f"armo server {url}: HTTP {e.code}: {why}") from None


def _score(rows: list[dict], model: str | None, url: str | None, api_key: str | None) -> list[dict]:
    if url:
        return remote_score(url, rows, api_key or os.environ.get("ARMO_API_KEY"))
    return _local(model).score(rows)


def _completion_text(c: Any) -> str:
    """A TRL completion: a string, or (conversational) a list of messages of which the assistant's are the response."""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "\n".join(m["content"] for m in c if isinstance(m, dict) and m.get("role", "assistant") == "assistant")
    raise TypeError(f"completion: expected a string or a list of messages, got {type(c).__name__}")


class ArmoRewardFunc:
    """A TRL reward function (`reward_funcs=[ArmoRewardFunc()]`); TRL names its column after `__name__`."""

    def __init__(self, model: str | None = None, url: str | None = None, api_key: str | None = None,
                 name: str = "armo", log_objectives: bool = True):
        self.model, self.url, self.api_key, self.log_objectives = model, url, api_key, log_objectives
        self.__name__ = name

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], log_extra: Callable | None = None,
                 log_metric: Callable | None = None, **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"armo reward: {len(prompts)} prompts for {len(completions)} completions")
        rows = [{"prompt": p, "response": _completion_text(c)} for p, c in zip(prompts, completions)]
        recs = _score(rows, self.model, self.url, self.api_key)
        if self.log_objectives and recs:
            for o in recs[0]["rewards"]:
                values = [r["rewards"][o] for r in recs]
                if log_extra is not None:
                    log_extra(f"{self.__name__}/{o}", values)
                if log_metric is not None:
                    log_metric(f"{self.__name__}/{o}", sum(values) / len(values))
        return [r["score"] for r in recs]


def compute_score(data_source: Any = None, solution_str: Any = None, ground_truth: Any = None, extra_info: Any = None,
                  model: str | None = None, url: str | None = None, api_key: str | None = None,
                  data_sources: Any = None, solution_strs: Any = None, ground_truths: Any = None, extra_infos: Any = None,
                  **kwargs: Any) -> Any:
    """verl's reward function: {"score": float, objective: reward, ...} for one sample (its NaiveRewardManager), or
    a list of them for lists: verl 0.9's BatchRewardManager passes the plural names (`solution_strs`, `extra_infos`,
    the latter a numpy array of dicts)."""
    if solution_strs is not None:
        solution_str = list(solution_strs)
        extra_info = list(extra_infos) if extra_infos is not None else None
    batch = isinstance(solution_str, (list, tuple))
    sols = solution_str if batch else [solution_str]
    infos = extra_info if batch else [extra_info]
    if infos is None:
        infos = [None] * len(sols)
    rows = []
    for i, (sol, info) in enumerate(zip(sols, infos)):
        prompt = info.get("prompt") if isinstance(info, dict) else None
        if prompt is None:
            raise ValueError(f"armo compute_score: sample {i} has no extra_info['prompt']: verl passes only the response "
                             "in solution_str, so put the prompt (a string or a list of messages) in the dataset's "
                             "extra_info['prompt']")
        rows.append({"prompt": prompt, "response": sol})
    recs = _score(rows, model or os.environ.get("ARMO_MODEL"), url or os.environ.get("ARMO_URL"), api_key)
    out = [{"score": r["score"], **r["rewards"]} for r in recs]
    return out if batch else out[0]
