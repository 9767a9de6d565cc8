"""Device policy in one place: which device and dtype a command runs on, and the batch, chunk and layout defaults that
depend on it (measured where each says)."""
from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from .errors import ArmoError


def auto_device(device: str | None = None) -> torch.device:
    if device and device != "auto":
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise ArmoError(f"--device {device}: expected cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ArmoError(f"--device {device}: CUDA is not available on this machine")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ArmoError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ArmoError(f"--device {device}: MPS is not available on this machine")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ArmoError(f"--device {device}: expected cpu, cuda, cuda:N or mps")
        return dev
    if torch.cuda.is_available():
        if "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def auto_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    if dtype and dtype != "auto":
        if dtype not in DTYPES:
            raise ArmoError(f"--dtype: unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
        return DTYPES[dtype]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def skips_padding(model: Any, device: torch.device) -> bool:
    """Whether the forward pass leaves padding out of its projections: armo's own Llama forward
    (fastpath.forward_flat) on a CPU. On a GPU the dense padded batch is kept (it suits the kernels)."""
    return hasattr(model, "forward_flat") and device.type == "cpu"


def batch_defaults(device: torch.device, model: Any = None) -> tuple[int, float]:
    """(token budget per batch, largest padded share) for a device (and the model, where its forward may
    skip padding): the one home of these defaults.

    On a compute-bound CPU a padded token costs as much as a real one, so padding stays near zero, unless
    the forward skips padding (then only attention, a few percent of the work, sees it, and fewer, fuller
    batches win: a server's 16 mixed-length rows become one pass instead of several). On CUDA, measured at
    Llama-3-8B shape on an H200 (benchmarks/gpu_mfu_sweep.py, memory-efficient attention): 65536 tokens
    with at most 10% padding ran the forward passes at 43% MFU, 32768 tokens with at most 25% at 39.5%.
    MPS keeps the older default, unmeasured."""
    if device.type == "cpu":
        return 2048, 0.5 if model is not None and skips_padding(model, device) else 0.05
    if device.type == "cuda":
        return 65536, 0.10
    return 32768, 0.25


def default_chunk_size(device: torch.device) -> int:
    """Rows per resumable chunk when --chunk-size is not given: batches are length-sorted within a chunk,
    so an accelerator wants large ones (4096 rows: about a minute of an 8B backbone on an H200; 256 rows
    left 11% more time on the same pairs there); a CPU, where a chunk takes minutes, small ones."""
    return 256 if device.type == "cpu" else 4096


def attention_kernels(device: torch.device):
    """The sdpa kernels for armo's tree-masked batches. A 4D mask rules out flash attention; on CUDA sdpa
    would then pick cuDNN, which builds a plan for each new batch shape, and length-sorted batches rarely
    repeat one: on an H200 at 8B shape a first pass over 512 pairs took 7.0 s with sdpa's choice and 4.5 s
    with the memory-efficient kernel, which needs no plan (benchmarks/gpu_mfu_sweep.py). The math kernel
    stays allowed for what the efficient one refuses."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


# where --packing auto turns to flex (CUDA): measured on an H200 at Llama-3-8B shape (benchmarks/gpu_packing.py),
# extract ran 4.03 s against 4.62 s on 512 pairs (126K tokens): about 4.7 us less per token, after about 10 s of
# compiling FlexAttention's kernel in each new process. That pays from about 2M tokens.
FLEX_MIN_TOKENS = 2_000_000


def supports_flex(model: Any) -> bool:
    """Whether the backbone can run FlexAttention: this torch has it and the model's class declares it."""
    try:
        from torch.nn.attention.flex_attention import BlockMask  # noqa: F401
    except ImportError:
        return False
    return bool(getattr(model, "_supports_flex_attn", False)) and hasattr(model, "set_attn_implementation")


def choose_layout(packing: str, device: torch.device, model: Any, tokens: int) -> str:
    """--packing as a layout for a job of `tokens` tokens (see place_trees). auto: flex on CUDA for at least
    FLEX_MIN_TOKENS where the backbone supports it; rows otherwise."""
    if packing == "flex" and not supports_flex(model):
        raise ArmoError(f"--packing flex: {type(model).__name__} does not run FlexAttention with this torch and "
                        "transformers; use --packing rows")
    if packing == "auto":
        return "flex" if device.type == "cuda" and tokens >= FLEX_MIN_TOKENS and supports_flex(model) else "rows"
    return packing
