"""What every path that runs the backbone over rows shares: `extract`, `score`, `evaluate`, the Python API, `serve`
and `tune-backbone`. One `RowContext` holds the backbone and its renderer, the length policy, the batch settings and
what the features it gives mean (layer, pooling, LM objectives); each path builds one and asks it to size rows and to
encode them, so that none of them sets these up its own way."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .backbones import Backbone
from .devices import batch_defaults
from .forward import canonical_layer, encode_trees
from .provenance import FeatureMeaning, require_compatible
from .rendering import Renderer, Tree, length_limit, sized_tree
from .rows import Example, Skipped


@dataclass
class RowContext:
    backbone: Backbone
    renderer: Renderer
    limit: int
    limit_name: str
    overflow: str = "error"
    layer: int = -1  # canonical (counted from the end)
    pooling: str = "last"
    lm: list[str] = field(default_factory=list)  # LM objectives read as extra response columns (lm_objectives.py)
    batch_tokens: int | None = None  # None: the device's default (devices.batch_defaults), read when rows are encoded
    max_padding: float | None = None

    @classmethod
    def for_model(cls, model: Any, bb: Backbone, *, max_length: int | None = None, overflow: str = "error",
                  batch_tokens: int | None = None, max_padding: float | None = None,
                  where: str = "--backbone") -> "RowContext":
        """The context a trained model reads its features in: its gate rule, layer, pooling and LM objectives, on
        a backbone checked to give them (name, fingerprint, layer, template)."""
        renderer = Renderer(bb.tokenizer, model.gate_rule)
        config = bb.model.config if bb.model is not None else bb.config
        m = model.meaning
        ctx = cls(bb, renderer, *length_limit(max_length, config), overflow,
                  canonical_layer(m.layer, int(config.num_hidden_layers)), m.pooling, list(model.regression.lm_objectives),
                  batch_tokens, max_padding)
        require_compatible(m, ctx.meaning(), str(model.path), f"{where} {bb.spec.name}", prompt=True, warn_dtype=False)
        return ctx

    @classmethod
    def for_features(cls, bb: Backbone, *, gate_rule: str = "generation-prompt", layer: int = -1, pooling: str = "last",
                     lm: list[str] | None = None, max_length: int | None = None, overflow: str = "error",
                     batch_tokens: int | None = None, max_padding: float | None = None) -> "RowContext":
        """The context `extract` writes features in (the weights may still be deferred: the config is enough)."""
        return cls(bb, Renderer(bb.tokenizer, gate_rule), *length_limit(max_length, bb.config), overflow,
                   canonical_layer(layer, int(bb.config.num_hidden_layers)), pooling, list(lm or []), batch_tokens,
                   max_padding)

    def meaning(self) -> FeatureMeaning:
        """What the features this context gives mean (provenance.FeatureMeaning)."""
        bb, r = self.backbone, self.renderer
        return FeatureMeaning(bb.spec.name, bb.fingerprint, bb.hidden_size, self.layer, tuple(r.gen_suffix), r.template_hash,
                              str(bb.dtype), r.gate_rule, self.pooling)

    def sized(self, ex: Example, index: int, where: str, skipped: list[Skipped], tree: Any = None,
              overflow: str | None = None) -> Tree | None:
        """A row tokenised (or its `tree` from Renderer.tokenize_many) under the length policy: the tree, or None
        (recorded in `skipped`)."""
        return sized_tree(self.renderer, ex, index, where, self.limit, self.limit_name, overflow or self.overflow,
                          skipped, tree)

    def batch_settings(self) -> tuple[int, float]:
        """(token budget, largest padded share): the given ones, else the device's (and forward's) defaults."""
        tokens, padding = batch_defaults(self.backbone.device, self.backbone.model)
        return self.batch_tokens or tokens, padding if self.max_padding is None else self.max_padding

    def encode(self, trees: list[Tree], on_batch: Callable[[int, int], None] | None = None,
               layout: str = "rows") -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and response features of rows (the LM objectives as extra response columns), in their order."""
        tokens, padding = self.batch_settings()
        return encode_trees(self.backbone, trees, tokens, on_batch, padding, self.layer, self.pooling, layout=layout,
                            lm=self.lm)
