"""ArmoRM-format reward model (LlamaForRewardModelWithGating), as written by `armo export`.

Loads with AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True) and
returns ArmoRM's fields: rewards, gating_output, prompt_embedding, score (and logits = score).
Differences from the research release, on purpose: batches may be left- or right-padded (the
last token and position ids come from the attention mask), and the gate position follows the
rule stored in the config (`gating_token_pattern`, `gating_token_offset`). The features may come from a
middle layer (`armo_feature_layer`) and, with `armo_feature_pooling: "mean"`, from the mean of the response's
hidden states (the tokens after the last generation prompt) instead of its last token. With
`armo_lm_objectives`, the reward vector also reads the backbone's own LM head: `lm-mean-logprob`, the mean
log-probability of the response's tokens (those after the last generation prompt), and `lm-pmi`, that minus the
same after `armo_lm_empty_prompt` (a conversation with an empty user turn), through `lm_regression_layer`.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers.utils import ModelOutput


class GatingNetwork(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, temperature: float = 10,
                 logit_scale: float = 1.0, hidden_dim: int = 1024, n_hidden: int = 3):
        super().__init__()
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.ones(1) * logit_scale)
        layers = []
        for _ in range(n_hidden):
            layers.append(nn.Linear(in_features, hidden_dim))
            in_features = hidden_dim
        layers.append(nn.Linear(in_features, out_features, bias=bias))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        # softmax over the objectives
        x = F.softmax(x / self.temperature, dim=-1)
        return x * self.logit_scale[0]


@dataclass
class ArmoRMOutput(ModelOutput):
    rewards: torch.FloatTensor = None
    hidden_state: Optional[torch.FloatTensor] = None
    prompt_embedding: Optional[torch.FloatTensor] = None
    gating_output: Optional[torch.FloatTensor] = None
    score: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None


def find_gate_position(ids: list, pattern: list, offset: int) -> int:
    """Start of the last occurrence of `pattern` in `ids`, plus `offset`."""
    n = len(pattern)
    for start in range(len(ids) - n, -1, -1):
        if ids[start:start + n] == pattern:
            return start + offset
    raise ValueError("no assistant turn found for the gate: is the input rendered with the chat template?")


class LlamaForRewardModelWithGating(LlamaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        k = config.num_objectives
        self.regression_layer = nn.Linear(config.hidden_size, k, bias=getattr(config, "regression_bias", False))
        self.reward_transform_matrix = nn.Parameter(torch.eye(k), requires_grad=False)
        self.gating = GatingNetwork(config.hidden_size, k, temperature=config.gating_temperature,
                                    hidden_dim=config.gating_hidden_dim, n_hidden=config.gating_n_hidden)
        self.lm_objectives = list(getattr(config, "armo_lm_objectives", None) or [])
        if self.lm_objectives:
            self.lm_regression_layer = nn.Linear(len(self.lm_objectives), k, bias=False)
            if not getattr(config, "tie_word_embeddings", False):
                self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _lm_head(self) -> torch.Tensor:
        return self.lm_head.weight if hasattr(self, "lm_head") else self.model.embed_tokens.weight

    def _mean_logprob(self, last: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        """The mean log-probability of ids[start:] given ids[:start], from the final hidden states `last` [L,d]."""
        logits = last[start - 1:-1].float() @ self._lm_head().float().T
        return (logits.gather(1, ids[start:, None])[:, 0] - torch.logsumexp(logits, -1)).mean()

    def _lm_values(self, last: torch.Tensor, ids: torch.Tensor, start: int) -> torch.Tensor:
        """The LM objectives of one conversation (its real tokens `ids`, the response from `start`)."""
        mean = self._mean_logprob(last, ids, start)
        values = {"lm-mean-logprob": mean}
        if "lm-pmi" in self.lm_objectives:
            empty = torch.tensor(self.config.armo_lm_empty_prompt, device=ids.device)
            alone = torch.cat([empty, ids[start:]])[None]
            h = self.model(input_ids=alone, use_cache=False).last_hidden_state[0]
            values["lm-pmi"] = mean - self._mean_logprob(h, alone[0], len(empty))
        return torch.stack([values[n] for n in self.lm_objectives])

    def forward(self, input_ids: torch.LongTensor = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.LongTensor] = None, **kwargs) -> ArmoRMOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        layer = int(getattr(self.config, "armo_feature_layer", -1))
        if layer == -1:  # the last layer after the final norm, as the published ArmoRM reads it
            hidden = last_hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                              position_ids=position_ids, use_cache=False).last_hidden_state
        else:  # an intermediate layer: an index into output_hidden_states, counted from the end
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False, output_hidden_states=True)
            hidden, last_hidden = out.hidden_states[layer], out.last_hidden_state
        B, L = input_ids.shape
        ar = torch.arange(L, device=input_ids.device)
        last = (attention_mask.long() * ar).argmax(-1)  # the last real token, whatever the padding side
        rows = torch.arange(B, device=input_ids.device)
        pattern = list(self.config.gating_token_pattern)
        offset = int(self.config.gating_token_offset)
        mean = getattr(self.config, "armo_feature_pooling", "last") == "mean"
        gate_pos, pooled, lm = [], [], []
        for b in range(B):
            real = ar[attention_mask[b].bool()]
            ids = input_ids[b, real].tolist()
            gate_pos.append(int(real[find_gate_position(ids, pattern, offset)]))
            start = find_gate_position(ids, pattern, len(pattern))  # the response: every real token after it
            if mean:
                pooled.append(hidden[b, real[start:]].float().mean(0))
            if self.lm_objectives:
                lm.append(self._lm_values(last_hidden[b, real], input_ids[b, real], start))
        hidden_state = torch.stack(pooled).to(hidden.dtype) if mean else hidden[rows, last]
        rewards = self.regression_layer(hidden_state)
        if self.lm_objectives:
            rewards = rewards + self.lm_regression_layer(torch.stack(lm).to(rewards.dtype))
        prompt_embedding = hidden[rows, torch.tensor(gate_pos, device=input_ids.device)]
        gating_output = self.gating(prompt_embedding)
        rewards_adjusted = rewards @ self.reward_transform_matrix
        score = torch.sum(gating_output * rewards_adjusted, dim=1)
        return ArmoRMOutput(rewards=rewards, hidden_state=hidden_state, prompt_embedding=prompt_embedding,
                            gating_output=gating_output, score=score, logits=score)
