"""A fast start for `score` and `evaluate`: a small, exact Llama forward and a tokenizer that need no
transformers import.

Importing transformers' Llama code costs about 1.9 s on a 2-core CPU before any token is read; a short
`armo score` spent most of its time there. For a plain Llama backbone stored as one safetensors file
(the embedded backbone's cache, most local folders), this module computes the same hidden states with
torch alone (RMSNorm, rotary embeddings, grouped-query attention through scaled_dot_product_attention,
SwiGLU), and renders chat templates with jinja2 the way transformers does. Anything else (other
architectures, rope scaling, sharded weights) falls back to transformers. tests/test_fastpath.py holds the
parity tests against transformers (hidden states of every layer, tokens, rendered templates).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def supported(folder: Path) -> bool:
    """A folder this module can load exactly: a Llama config without rope scaling or tensor parallel
    slicing, one safetensors file and a tokenizer.json."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    rope = cfg.get("rope_parameters") or {}
    return (cfg.get("model_type") == "llama" and cfg.get("hidden_act", "silu") == "silu"
            and cfg.get("pretraining_tp", 1) == 1 and cfg.get("rope_scaling") in (None, {})
            and rope.get("rope_type", "default") == "default"
            and (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists())


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


@dataclass
class Flat:
    """Where the N real tokens of a right-padded [B,L] batch sit: `index` into the flattened B*L positions."""
    index: torch.Tensor
    B: int
    L: int

    @classmethod
    def from_valid(cls, valid: torch.Tensor) -> "Flat":
        return cls(valid.reshape(-1).nonzero().squeeze(1), valid.shape[0], valid.shape[1])

    def scatter(self, t: torch.Tensor) -> torch.Tensor:
        """[N,...] -> [B,L,...], zeros at the padding."""
        out = t.new_zeros(self.B * self.L, *t.shape[1:])
        out[self.index] = t
        return out.view(self.B, self.L, *t.shape[1:])

    def pad(self, t: torch.Tensor) -> torch.Tensor:
        """[N,H,hd] -> [B,H,L,hd], zeros at the padding."""
        return self.scatter(t).transpose(1, 2)

    def unpad(self, t: torch.Tensor) -> torch.Tensor:
        """[B,L,...] -> [N,...]."""
        return t.reshape(self.B * self.L, *t.shape[2:])[self.index]


class Attention(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.h, self.kv, self.hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        bias = getattr(c, "attention_bias", False)
        self.q_proj = nn.Linear(c.hidden_size, self.h * self.hd, bias=bias)
        self.k_proj = nn.Linear(c.hidden_size, self.kv * self.hd, bias=bias)
        self.v_proj = nn.Linear(c.hidden_size, self.kv * self.hd, bias=bias)
        self.o_proj = nn.Linear(self.h * self.hd, c.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                flat: Flat | None = None) -> torch.Tensor:
        if flat is not None:
            return self._forward_flat(x, cos, sin, mask, flat)
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.kv, self.hd).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        rep = self.h // self.kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.hd ** -0.5)
        return self.o_proj(o.transpose(1, 2).reshape(B, L, self.h * self.hd))

    def _forward_flat(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                      flat: Flat) -> torch.Tensor:
        # x is [N,d], the real tokens only: the projections skip the padding, and only attention, a few
        # percent of the work at these lengths, sees the padded [B,H,L,hd] layout
        N = x.shape[0]
        q = self.q_proj(x).view(N, self.h, self.hd)
        k = self.k_proj(x).view(N, self.kv, self.hd)
        v = self.v_proj(x).view(N, self.kv, self.hd)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        rep = self.h // self.kv
        q, k, v = flat.pad(q), flat.pad(k).repeat_interleave(rep, dim=1), flat.pad(v).repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.hd ** -0.5)
        return self.o_proj(flat.unpad(o.transpose(1, 2)).reshape(N, self.h * self.hd))


class MLP(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        bias = getattr(c, "mlp_bias", False)
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, mask, flat: Flat | None = None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, flat)
        return (x + self.mlp(self.post_attention_layernorm(x)),)  # a tuple, as transformers' blocks return


def _inv_freq(c: SimpleNamespace) -> torch.Tensor:
    theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", 10000.0))
    return 1.0 / theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim)


@dataclass
class Output:
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class LlamaBackbone(nn.Module):
    """The same module names as transformers' LlamaModel, so its safetensors load as they are."""

    def __init__(self, c: SimpleNamespace):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.inv_freq = _inv_freq(c)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, output_hidden_states: bool = False, **_: Any) -> Output:
        x = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand(input_ids.shape[0], -1)
        freqs = position_ids[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]
        mask = attention_mask if attention_mask is not None and attention_mask.ndim == 4 else None
        hidden = [x] if output_hidden_states else None
        for block in self.layers:
            x = block(x, cos, sin, mask)[0]
            if hidden is not None:
                hidden.append(x)
        x = self.norm(x)
        if hidden is not None:
            hidden[-1] = x  # as transformers: the last entry is after the final norm
        return Output(x, tuple(hidden) if hidden is not None else None)

    def forward_flat(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                     valid: torch.Tensor, k: int, also_last: bool = False):
        """Hidden states [B,L,d] at output_hidden_states index `k` (zeros at the padding), computed on the real
        tokens (`valid` [B,L]) only: the padding is left out of every projection and MLP, and blocks above `k`
        are not run (unless `also_last`: then every block runs, and the result is (hidden at k, the last layer
        after the final norm)). The same values as forward() (tests/test_fastpath.py)."""
        flat = Flat.from_valid(valid)
        ids, pos = input_ids.reshape(-1)[flat.index], position_ids.reshape(-1)[flat.index]
        x = self.embed_tokens(ids)
        freqs = pos[:, None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]
        n = len(self.layers)
        at_k = None
        for i, block in enumerate(self.layers[:n if also_last else k]):
            if i == k:
                at_k = x
            x = block(x, cos, sin, attention_mask, flat)[0]
        if not also_last:
            return flat.scatter(self.norm(x) if k == n else x)
        last = flat.scatter(self.norm(x))
        return (last if k == n else flat.scatter(at_k if at_k is not None else x)), last


def load_model(folder: Path, dtype: torch.dtype, device: torch.device) -> LlamaBackbone:
    from safetensors.torch import load_file

    raw = json.loads((folder / "config.json").read_text())
    raw.setdefault("head_dim", raw["hidden_size"] // raw["num_attention_heads"])
    raw.setdefault("num_key_value_heads", raw["num_attention_heads"])
    c = SimpleNamespace(**raw)
    with torch.device("meta"):
        model = LlamaBackbone(c)
    state = load_file(str(folder / "model.safetensors"))
    if any(k.startswith("model.") for k in state):  # a reward model (ArmoRM format): the backbone is under model.
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True, assign=True)
    model.inv_freq = _inv_freq(c).to(device)  # computed, not stored: made on the meta device above
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


@dataclass
class Encoding:
    input_ids: list[int] | list[list[int]]


class FastTokenizer:
    """The part of a transformers tokenizer that armo's rendering uses, on `tokenizers` and jinja2 alone."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cfg = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").exists() else {}
        self.special = {k: self._token(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        template = cfg.get("chat_template")
        if (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        self.chat_template = template
        bos = self.special.get("bos_token")
        self.bos_token_id = self.tok.token_to_id(bos) if bos else None
        self._compiled = None

    @staticmethod
    def _token(v: Any) -> str | None:
        return v.get("content") if isinstance(v, dict) else v

    @property
    def backend_tokenizer(self) -> Any:
        return self.tok

    @property
    def added_tokens_decoder(self) -> dict:
        return self.tok.get_added_tokens_decoder()

    def __call__(self, text: str | list[str], add_special_tokens: bool = True) -> Encoding:
        """Like a transformers tokenizer: a list of texts gives a list of id lists (one batched call)."""
        if isinstance(text, list):
            return Encoding([e.ids for e in self.tok.encode_batch(text, add_special_tokens=add_special_tokens)])
        return Encoding(self.tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        if tokenize:
            raise NotImplementedError("armo renders to text, then encodes")
        if self._compiled is None:
            import jinja2
            import jinja2.ext
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise jinja2.exceptions.TemplateError(message)

            def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
                return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            self._compiled = env.from_string(self.chat_template)
        return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                                     documents=None, **{k: v for k, v in self.special.items() if v is not None})
