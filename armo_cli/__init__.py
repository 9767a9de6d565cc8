"""armo: interpretable multi-objective reward models (ArmoRM-MoE) from the command line."""

from .version import __version__

__all__ = ["RewardModel", "AnnotateBatches", "load_model", "__version__"]


def __getattr__(name: str):
    # lazy: `import armo_cli` (and `armo --help`) must not import torch
    if name in ("RewardModel", "AnnotateBatches", "load_model"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'armo_cli' has no attribute {name!r}")
