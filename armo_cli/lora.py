"""A PEFT LoRA adapter folder as a backbone: `--backbone ADAPTER_DIR` (adapter_config.json names the base, which may
be an armo named backbone such as the embedded one). The adapter is merged into the base's linear weights on load,
W + (lora_alpha / r) B A, so armo's own forward, transformers' and `armo export` all read the tuned backbone, and
nothing at scoring time needs PEFT. Plain LoRA only: what else PEFT can write (DoRA, rank-stabilised scaling,
per-module ranks, adapters on the embeddings or the LM head) is refused by name."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from .errors import ArmoError
from .jsonl import check_regular_files, sha256_file, sha256_json

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"(?:base_model\.model\.)?(?:model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file() and not (Path(path) / "config.json").exists()


def read_config(folder: Path) -> dict:
    """The adapter's config, checked (adapters are downloaded and shared like models: nothing in it is trusted)."""
    check_regular_files(folder, "an adapter folder")
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise ArmoError(f"{folder / CONFIG}: not readable JSON ({type(e).__name__})") from None
    where = folder / CONFIG
    if not isinstance(cfg, dict):
        raise ArmoError(f"{where}: expected a JSON object")
    if cfg.get("peft_type") != "LORA":
        raise ArmoError(f"{where}: field 'peft_type': armo reads LORA adapters, not {cfg.get('peft_type')!r}")
    base = cfg.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ArmoError(f"{where}: field 'base_model_name_or_path': the base backbone is not named")
    for key, why in (("use_dora", "DoRA"), ("use_rslora", "rank-stabilised scaling")):
        if cfg.get(key):
            raise ArmoError(f"{where}: field '{key}': {why} is not supported; train a plain LoRA adapter")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise ArmoError(f"{where}: field '{key}': per-module ranks are not supported")
    if cfg.get("modules_to_save"):
        raise ArmoError(f"{where}: field 'modules_to_save': fully trained modules are not supported (LoRA only)")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1 or isinstance(alpha, bool) \
            or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ArmoError(f"{where}: fields 'r' and 'lora_alpha': expected a positive rank and a number")
    return cfg


def base_path(folder: Path, cfg: dict) -> str:
    """The base as armo resolves it: a named backbone or hub id as written; a relative path from the adapter. The base
    is a backbone, never another adapter: a chain of adapters (one naming itself, two naming each other) is refused."""
    base = cfg["base_model_name_or_path"]
    p = Path(base).expanduser()
    if not p.is_absolute() and (folder / p).exists():
        p = (folder / p).resolve()
        base = str(p)
    if p.is_dir() and is_adapter_dir(p):
        raise ArmoError(f"{folder / CONFIG}: field 'base_model_name_or_path': names an adapter folder ({base}); the "
                        f"base must be a backbone (merge the other adapter into it first)")
    return base


def fingerprint(folder: Path, base_fingerprint: str) -> str:
    """The tuned backbone's identity: its base's and the adapter's own files."""
    return "lora-" + sha256_json([base_fingerprint, (folder / CONFIG).read_text(), sha256_file(weights_file(folder))])[:40]


def weights_file(folder: Path) -> Path:
    """The adapter's weights: safetensors only (a pickle, adapter_model.bin, is never read), a regular file."""
    path = folder / WEIGHTS
    if not path.is_file():
        raise ArmoError(f"{folder}: no {WEIGHTS} (armo reads safetensors adapters only)")
    check_regular_files(folder, "an adapter folder")
    return path


def deltas(folder: Path, cfg: dict) -> dict[str, torch.Tensor]:
    """{module path (as in the base model, e.g. layers.0.self_attn.q_proj): (alpha / r) B A}, from safetensors."""
    from safetensors.torch import load_file

    path = weights_file(folder)
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors' own errors
        raise ArmoError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        m = _KEY.fullmatch(k)
        if m is None:
            raise ArmoError(f"{path}: tensor '{k}': not a LoRA A or B weight (armo merges plain LoRA adapters only)")
        pairs.setdefault(m["module"], {})[m["ab"]] = v.float()
    r = int(cfg["r"])
    scale = float(cfg["lora_alpha"]) / r
    out = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ArmoError(f"{path}: module '{module}' has only its lora_{next(iter(ab))} weight")
        if module.endswith(("embed_tokens", "lm_head")):
            raise ArmoError(f"{path}: an adapter on '{module}' is not supported (the LM head is tied to it)")
        a, b = ab["A"], ab["B"]
        # the config's rank sets the scale: it must be the tensors' own, or the merged weights silently change
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise ArmoError(f"{path}: module '{module}': lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} are not of "
                            f"rank {r}, as {CONFIG}'s field 'r' says")
        if r > min(a.shape[1], b.shape[0]):
            raise ArmoError(f"{path}: module '{module}': rank {r} above the weight's own ({b.shape[0]} x {a.shape[1]})")
        out[module] = scale * b @ a
    if not out:
        raise ArmoError(f"{path}: holds no LoRA weights")
    return out


@torch.no_grad()
def merge_into(model: Any, folder: Path, cfg: dict) -> Any:
    """Add the adapter's deltas to the model's linear weights (in place), each checked to fit."""
    modules = dict(model.named_modules())
    for name, delta in deltas(folder, cfg).items():
        mod = modules.get(name)
        if mod is None or not hasattr(mod, "weight"):
            raise ArmoError(f"{folder / WEIGHTS}: module '{name}' is not in the base backbone")
        if tuple(mod.weight.shape) != tuple(delta.shape):
            raise ArmoError(f"{folder / WEIGHTS}: module '{name}': delta {tuple(delta.shape)} for a weight "
                            f"{tuple(mod.weight.shape)}")
        mod.weight.copy_((mod.weight.float() + delta.to(mod.weight.device)).to(mod.weight.dtype))  # summed in fp32
    return model
