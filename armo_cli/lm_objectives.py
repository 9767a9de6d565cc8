"""Language-model objectives: what the backbone's own LM head says about a response, read in the extraction pass.

    lm-mean-logprob  the mean log-probability of the response's tokens given the prompt (its tokens as the chat
                     template renders them: the content and the template's end-of-turn tokens)
    lm-pmi           the same minus the response's mean log-probability after an empty user turn: how much the
                     prompt explains the response (a fluent answer to another instruction scores low). Its second
                     pass runs the responses alone, sharing nothing with the first.

They are columns of the reward vector like any objective (regression.Regression's `lm_weight` maps them onto
[0,1]); the features file keeps them in their own tensor, `lm_objectives` [N,(2,)q], named in its metadata.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import ArmoError

MEAN_LOGPROB = "lm-mean-logprob"
PMI = "lm-pmi"
LM_OBJECTIVES = (MEAN_LOGPROB, PMI)
TENSOR = "lm_objectives"  # the features file's tensor


def parse_lm_objectives(spec: str | None, flag: str = "--lm-objectives") -> list[str]:
    """'lm-mean-logprob,lm-pmi' (or 'all') -> the names, in the order given, each once."""
    if not spec:
        return []
    names = list(LM_OBJECTIVES) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in LM_OBJECTIVES:
            raise ArmoError(f"{flag} {spec!r}: unknown LM objective {n!r} (choose from {', '.join(LM_OBJECTIVES)}, or all)")
    if len(set(names)) != len(names):
        raise ArmoError(f"{flag} {spec!r}: an objective is named twice")
    return names


def _safetensors_tensor(folder: Path, name: str) -> torch.Tensor | None:
    """One tensor from a folder's safetensors weights (one file or an index of shards), None if absent."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    files = [folder / "model.safetensors"]
    if index.exists():
        try:
            where = json.loads(index.read_text()).get("weight_map", {}).get(name)
        except (OSError, ValueError):
            where = None
        files = [folder / where] if where else []
    for f in files:
        if f.exists():
            with safe_open(str(f), framework="pt") as st:
                if name in st.keys():
                    return st.get_tensor(name)
    return None


def lm_head(backbone: Any) -> torch.Tensor:
    """The backbone's LM head weight [V,d] in float32 on its device: the input embeddings where the config ties them
    (SmolLM2, Llama 3.2 1B/3B), else `lm_head.weight` from its files. Loaded once per backbone: the log-probabilities
    are computed in float32 whatever the backbone's dtype (a bf16 logit is good to about 0.01 nats), and a 128k-word
    head is not converted again for every batch."""
    cached = backbone.extra.get("lm_head")
    if cached is not None:
        return cached
    model = backbone.ensure_model()
    config = backbone.config
    if getattr(config, "tie_word_embeddings", False):
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.embed_tokens
        w = emb.weight.detach().float()  # the same tensor in fp32: no copy
    else:
        folder = backbone.folder
        w = _safetensors_tensor(folder, "lm_head.weight") if folder is not None else None
        if w is None:
            raise ArmoError(f"--backbone {backbone.spec.name}: no LM head (its config does not tie the embeddings and its "
                            "files hold no lm_head.weight), so it cannot give LM objectives")
        if tuple(w.shape) != (int(config.vocab_size), backbone.hidden_size):
            raise ArmoError(f"--backbone {backbone.spec.name}: lm_head.weight {tuple(w.shape)} does not fit the model")
        w = w.to(device=backbone.device, dtype=torch.float32)
    backbone.extra["lm_head"] = w
    return w


def empty_prompt(backbone: Any) -> list[int]:
    """lm-pmi's second prompt: a conversation with one empty user turn, rendered with the generation prompt
    (the template's default system prompt, if it has one, included). Cached on the backbone."""
    ids = backbone.extra.get("empty_prompt")
    if ids is None:
        from .rendering import Renderer

        r = Renderer(backbone.tokenizer)
        ids = r.encode(r.render([{"role": "user", "content": ""}], generation_prompt=True), bos=True)
        backbone.extra["empty_prompt"] = ids
    return ids


def mean_logprobs(last: torch.Tensor, ids: torch.Tensor, spans: list[tuple[int, int, int]], head: torch.Tensor,
                  softcap: float | None = None, block: int = 1024) -> torch.Tensor:
    """The mean log-probability [n] of each response's tokens. `last`: final hidden states [B,L,d] (after the final
    norm); `ids`: the batch's token ids [B,L]; `spans`: (row, prev, start, end) per response, its tokens at
    [start, end) of the row and `prev` its prompt's last position, which predicts its first token (in a tree the
    position before `start` may be another response's). Logits are computed in float32, `block` positions at a
    time (a [block, V] matrix), and only where they predict a response token."""
    rows, at, target, owner = [], [], [], []
    for k, (b, prev, s, e) in enumerate(spans):
        pos = [prev] + list(range(s, e - 1))  # the token at s is predicted from the prompt's last position
        rows += [b] * len(pos)
        at += pos
        target += list(range(s, e))
        owner += [k] * len(pos)
    rows_t = torch.tensor(rows, device=last.device)
    at_t = torch.tensor(at, device=last.device)
    tgt = ids[rows_t, torch.tensor(target, device=last.device)]
    lp = torch.empty(len(at), dtype=torch.float32, device=last.device)
    w = head if head.dtype == torch.float32 else head.float()
    for i in range(0, len(at), block):
        h = last[rows_t[i:i + block], at_t[i:i + block]].float()
        logits = h @ w.T
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        lp[i:i + block] = logits.gather(1, tgt[i:i + block, None])[:, 0] - torch.logsumexp(logits, -1)
    total = torch.zeros(len(spans), dtype=torch.float32, device=last.device).index_add_(
        0, torch.tensor(owner, device=last.device), lp)
    n = torch.tensor([e - s for _, _, s, e in spans], dtype=torch.float32, device=last.device)
    return (total / n).cpu()
