"""The batched, tree-masked forward pass: token-budget batches sorted by length, order restored.

A pair is run as one tree [prompt | chosen | rejected] with an attention mask in which each response sees
the prompt and itself but not the other response, and position ids that restart after the prompt. The
prompt is therefore computed once, with no cache juggling and no padding. Rows that share a prompt (best-of-n
samples, a GRPO group, several pairs on one prompt) are run the same way, as one tree with every distinct
response of theirs after the one prompt, where that costs less than running them apart (`share_prompts`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from .backbones import Backbone
from .devices import attention_kernels, skips_padding
from .errors import ArmoError
from .rendering import Tree


def _flex_width(tokens: int) -> int:
    return -(-tokens // 128) * 128  # a whole number of FlexAttention's 128-token tiles


def place_trees(trees: list[Tree], layout: str = "rows") -> tuple[list[tuple[int, int]], int, int]:
    """(row, offset) of each tree in a batch, and the batch's rows and width. "rows": one tree per row,
    right-padded to the longest, under a dense 4D mask. "flex": all the batch's trees one after another in one
    row, under a FlexAttention block mask that skips the tiles crossing trees: no padding, no dense mask.
    Both give the same features (tests/test_extract.py)."""
    if layout == "rows":
        return [(i, 0) for i in range(len(trees))], len(trees), max(t.length for t in trees)
    places, o = [], 0
    for t in trees:
        places.append((0, o))
        o += t.length
    return places, 1, _flex_width(o)


def branch_spans(t: Tree, o: int = 0) -> list[tuple[int, int]]:
    """[start, end) of each distinct response of a tree (Tree.branches) placed at offset o: after its prompt,
    one after another."""
    spans, e = [], o + len(t.prompt)
    for c in t.branches()[0]:
        spans.append((e, e + len(c)))
        e += len(c)
    return spans


def tree_layout(trees: list[Tree], places: list[tuple[int, int]] | None = None, shape: tuple[int, int] | None = None):
    """input_ids, position_ids, segment ids and owners [B,L] of trees placed at (row, offset) (default: each tree
    its own row from 0): segment 0 the prompt, j the j-th distinct response (Tree.branches); owner the tree's
    index in `trees`; -1 both at padding. Each response sees its own tree's prompt and itself (see build_batch)."""
    if places is None:
        places, *shape = place_trees(trees)
    B, L = shape
    ids = torch.zeros(B, L, dtype=torch.long)
    pos = torch.zeros(B, L, dtype=torch.long)
    seg = torch.full((B, L), -1, dtype=torch.long)
    owner = torch.full((B, L), -1, dtype=torch.long)
    for i, (t, (b, o)) in enumerate(zip(trees, places)):
        p = len(t.prompt)
        ids[b, o:o + p] = torch.tensor(t.prompt)
        pos[b, o:o + p] = torch.arange(p)
        seg[b, o:o + p] = 0
        owner[b, o:o + t.length] = i
        for j, (c, (s, e)) in enumerate(zip(t.branches()[0], branch_spans(t, o))):
            ids[b, s:e] = torch.tensor(c)
            pos[b, s:e] = torch.arange(p, p + e - s)
            seg[b, s:e] = j + 1
    return ids, pos, seg, owner


def _allowed(q, kv, sq, sk, oq, ok):
    """Whether query q may attend key kv: causal, within its own tree, the prompt or its own response; and
    every position itself (padding too: no all-masked row, no NaN)."""
    return ((q >= kv) & (ok >= 0) & (oq == ok) & ((sk == 0) | (sk == sq))) | (q == kv)


def build_batch(trees: list[Tree], device: torch.device, dtype: torch.dtype,
                places: list[tuple[int, int]] | None = None, shape: tuple[int, int] | None = None):
    """input_ids, position_ids and a 4D additive mask for a batch of placed trees (default: one per row)."""
    ids, pos, seg, owner = tree_layout(trees, places, shape)
    B, L = ids.shape
    # the [B,1,L,L] mask is made where it is used: on a GPU, not on the host and then copied
    seg, owner = seg.to(device), owner.to(device)
    q = torch.arange(L, device=device)
    allowed = _allowed(q[None, :, None], q[None, None, :], seg[:, :, None], seg[:, None, :],
                       owner[:, :, None], owner[:, None, :])
    mask = torch.zeros(B, 1, L, L, dtype=dtype, device=device)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return ids.to(device), pos.to(device), mask


def tree_blocks(trees: list[Tree], places: list[tuple[int, int]], shape: tuple[int, int],
                block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Which block x block tiles of the attention matrix [B,nb,nb] hold some allowed pair (`partial`, the mask
    then decides each pair) and which hold only allowed pairs (`full`, no mask needed), read off the trees'
    spans. A tree's prompt and responses are runs of the row; a query run sees the key runs of its own tree
    that are its prompt or itself, at or before it. A tile is full when it lies wholly in such a pair of runs,
    keys strictly before queries; `partial` may hold a tile whose pairs turn out all masked (a run crossing it
    sees nothing there), never one short of an allowed pair (tests/test_extract.py)."""
    B, L = shape
    nb = -(-L // block)
    partial = torch.zeros(B, nb, nb, dtype=torch.bool)
    full = torch.zeros(B, nb, nb, dtype=torch.bool)
    for t, (b, o) in zip(trees, places):
        prompt = (o, o + len(t.prompt))
        for (qa, qe), (ka, ke) in [(prompt, prompt)] + [x for r in branch_spans(t, o) for x in ((r, prompt), (r, r))]:
            partial[b, qa // block:(qe - 1) // block + 1, ka // block:(ke - 1) // block + 1] = True
            full[b, -(-qa // block):qe // block, -(-ka // block):ke // block] = True  # tiles wholly inside both runs
    i = torch.arange(nb)
    partial[:, i, i] = True  # every position sees itself, padding too
    partial &= i[:, None] >= i[None, :]
    full &= i[:, None] > i[None, :]
    return partial & ~full, full


def flex_batch(trees: list[Tree], device: torch.device, places: list[tuple[int, int]], shape: tuple[int, int],
               block: int = 128):
    """input_ids, position_ids and a FlexAttention BlockMask: build_batch's rule, evaluated only in the tiles
    that `tree_blocks` finds (tiles that cross trees are skipped, never computed). Built from the spans, not by
    create_block_mask, whose compile took 37 s in a fresh process on an H200 (benchmarks/gpu_packing.py)."""
    from torch.nn.attention.flex_attention import BlockMask

    ids, pos, seg, owner = tree_layout(trees, places, shape)
    seg, owner = seg.to(device), owner.to(device)

    def mask_mod(b, h, q, kv):
        return _allowed(q, kv, seg[b, q], seg[b, kv], owner[b, q], owner[b, kv])

    def blocks(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # per query tile: how many key tiles, and their indices in ascending order first
        order = torch.argsort((~tiles).to(torch.int8), dim=-1, stable=True)
        return tiles.sum(-1).to(torch.int32)[:, None].to(device), order.to(torch.int32)[:, None].to(device)

    partial, full = tree_blocks(trees, places, shape, block)
    n, idx = blocks(partial)
    fn, fidx = blocks(full)
    mask = BlockMask.from_kv_blocks(n, idx, fn, fidx, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=shape[1:] * 2)
    return ids.to(device), pos.to(device), mask


@contextlib.contextmanager
def _attention(model: Any, layout: str):
    """The backbone's attention for one layout: FlexAttention for "flex", its own otherwise."""
    impl = getattr(model.config, "_attn_implementation", None)
    if layout != "flex" or impl == "flex_attention":
        yield
        return
    model.set_attn_implementation("flex_attention")
    try:
        yield
    finally:
        model.set_attn_implementation(impl)


def resolve_layer(layer: int, n_layers: int) -> int:
    """--layer as an index into the backbone's `output_hidden_states`: 0 the embeddings, i the output of
    block i, n the last block after the final norm (what ArmoRM reads); negative counts from the end."""
    k = layer if layer >= 0 else n_layers + 1 + layer
    if not 0 <= k <= n_layers:
        raise ArmoError(f"--layer {layer}: the backbone has {n_layers} layers (give -{n_layers + 1}..{n_layers})")
    return k


def canonical_layer(layer: int, n_layers: int) -> int:
    """The one spelling recorded in artifacts: counted from the end, -1 = the last (after the final norm)."""
    return resolve_layer(layer, n_layers) - (n_layers + 1)


class _Stop(Exception):
    """Raised by a hook once the wanted layer is computed: the blocks above it are not run."""


def hidden_states(model: Any, layer: int = -1, also_last: bool = False, **inputs: Any):
    """The hidden states [B,L,d] at `layer` (see resolve_layer). A middle layer is read by a hook on its
    block, and the forward pass stops there: reading layer 20 of 30 costs two thirds of a full pass.
    `also_last`: the pass runs to the end and returns (hidden, the last layer after the final norm), for the
    LM head (lm_objectives)."""
    n = int(model.config.num_hidden_layers)
    k = resolve_layer(layer, n)
    if k == n:
        h = model(**inputs).last_hidden_state
        return (h, h) if also_last else h
    if k == 0 or not hasattr(model, "layers"):  # embeddings may be scaled after the embedding module (Gemma)
        out = model(**inputs, output_hidden_states=True)
        return (out.hidden_states[k], out.last_hidden_state) if also_last else out.hidden_states[k]
    captured: dict[str, torch.Tensor] = {}

    def hook(module: Any, args: Any, out: Any) -> None:
        captured["h"] = out[0] if isinstance(out, tuple) else out
        if not also_last:
            raise _Stop

    handle = model.layers[k - 1].register_forward_hook(hook)
    try:
        last = model(**inputs).last_hidden_state
    except _Stop:
        pass
    finally:
        handle.remove()
    return (captured["h"], last) if also_last else captured["h"]


@torch.inference_mode()
def forward_trees(model: Any, trees: list[Tree], device: torch.device, dtype: torch.dtype,
                  layer: int | list[int] = -1, pooling: str = "last", layout: str = "rows",
                  lm_head: torch.Tensor | None = None):
    """Return prompt features [B,d] and response features [B,m,d] (float32) for trees with up to m responses each,
    read at `layer` (default: the last, after the final norm). A list of layers reads them all from one
    pass: prompt [B,n,d] and responses [B,m,n,d]. `pooling`: a response's feature is its last token's
    hidden state ("last", ArmoRM's) or the mean over its tokens ("mean"); the prompt's is read at the gate.
    `layout`: see place_trees. `lm_head` [V,d]: the pass runs to the last layer and each response's features
    gain one column, the mean log-probability of its tokens (lm_objectives.mean_logprobs)."""
    if lm_head is not None and isinstance(layer, list):
        raise ArmoError("LM objectives are read with one feature layer, not a list")
    places, B, L = place_trees(trees, layout)
    if layout == "flex":
        ids, pos, mask = flex_batch(trees, device, places, (B, L))
    else:
        ids, pos, mask = build_batch(trees, device, dtype, places, (B, L))
    inputs = {"input_ids": ids, "position_ids": pos, "attention_mask": mask, "use_cache": False}
    last = None
    with attention_kernels(device), _attention(model, layout):
        if skips_padding(model, device) and not isinstance(layer, list) and layout == "rows":
            valid = torch.arange(L)[None] < torch.tensor([t.length for t in trees])[:, None]
            hidden = model.forward_flat(ids, pos, mask, valid, resolve_layer(layer, int(model.config.num_hidden_layers)),
                                        also_last=lm_head is not None)
            if lm_head is not None:
                hidden, last = hidden
        elif isinstance(layer, list):
            n = int(model.config.num_hidden_layers)
            hs = model(**inputs, output_hidden_states=True).hidden_states
            hidden = torch.stack([hs[resolve_layer(k, n)] for k in layer], dim=2)  # [B,L,n,d]
        elif lm_head is not None:
            hidden, last = hidden_states(model, layer, also_last=True, **inputs)
        else:
            hidden = hidden_states(model, layer, **inputs)
    m = max(len(t.conts) for t in trees)  # trees with fewer responses are padded: zeros, never read
    spans = []  # per tree, each response's [start, end) in its row (identical responses share one)
    for t, (_, o) in zip(trees, places):
        starts, which = branch_spans(t, o), t.branches()[1]
        end = starts[-1][1]
        spans.append([starts[j] for j in which] + [(end - 1, end)] * (m - len(which)))
    rows = torch.tensor([b for b, _ in places], device=hidden.device)
    gates = torch.tensor([o + t.gate for t, (_, o) in zip(trees, places)], device=hidden.device)
    prompt = hidden[rows, gates].float().cpu()
    if pooling == "mean":
        # one batched matmul sums each response's tokens (0/1 weights: exact in any dtype), then / its length;
        # a row's responses take its next slots
        slot = torch.zeros(len(trees), m, dtype=torch.long)
        used = [0] * B
        for i, (b, _) in enumerate(places):
            slot[i] = torch.arange(used[b], used[b] + m)
            used[b] += m
        w = torch.zeros(B, max(used), L)
        for i, ((b, _), sp) in enumerate(zip(places, spans)):
            for j, (s, e) in enumerate(sp):
                w[b, slot[i, j], s:e] = 1.0
        n = torch.tensor([[e - s for s, e in sp] for sp in spans], dtype=torch.float32)
        flat = hidden.reshape(B, L, -1)
        total = torch.bmm(w.to(device=hidden.device, dtype=hidden.dtype), flat).float().cpu()  # [B, slots, d']
        resp = (total[rows.cpu()[:, None], slot] / n[..., None]).reshape(len(trees), m, *hidden.shape[2:])
    else:
        ri = torch.tensor([[e - 1 for _, e in sp] for sp in spans], device=hidden.device)
        resp = hidden[rows[:, None], ri].float().cpu()
    if lm_head is not None:
        from .lm_objectives import mean_logprobs

        lm = [(b, o + len(t.prompt) - 1, s, e) for t, (b, o), sp in zip(trees, places, spans) for s, e in sp]
        softcap = getattr(model.config, "final_logit_softcapping", None)
        lp = mean_logprobs(last, ids, lm, lm_head, softcap).reshape(len(trees), m, 1)
        resp = torch.cat([resp, lp], -1)
    return prompt, resp


def token_batches(trees: list[Tree], batch_tokens: int, max_padding: float = 1.0,
                  layout: str = "rows") -> Iterator[list[Tree]]:
    """Length-sorted batches within the token budget. One tree per row: padding stays under `max_padding` of
    the batch (on a compute-bound CPU a padded token costs as much as a real one, so the CPU default keeps it
    near zero; a GPU trades some for larger batches). "flex": the trees fill the budget, with no padding."""
    order = sorted(trees, key=lambda t: -t.length)
    batch: list[Tree] = []
    real = 0
    for t in order:
        if batch:
            if layout == "flex":
                full = _flex_width(real + t.length) > batch_tokens
            else:
                padded = (len(batch) + 1) * batch[0].length
                full = padded > batch_tokens or 1 - (real + t.length) / padded > max_padding
            if full:
                yield batch
                batch, real = [], 0
        batch.append(t)
        real += t.length
    if batch:
        yield batch


@dataclass
class Shared:
    """Trees that share one prompt, run as one tree: the prompt once, then each distinct response of theirs.
    `slots` are the trees' places in the caller's list; `picks[i]` the tree's responses in `tree.conts`."""

    trees: list[Tree]
    slots: list[int]
    tree: Tree
    picks: list[list[int]]

    @classmethod
    def of(cls, trees: list[Tree], slots: list[int]) -> "Shared":
        conts: list[list[int]] = []
        at: dict[tuple[int, ...], int] = {}  # a response two of the trees share runs once
        picks = []
        for t in trees:
            pick = []
            for c in t.conts:
                if tuple(c) not in at:
                    at[tuple(c)] = len(conts)
                    conts.append(c)
                pick.append(at[tuple(c)])
            picks.append(pick)
        first = trees[0]
        return cls(trees, slots, Tree(first.index, first.example, first.prompt, conts, first.gate), picks)

    def halves(self) -> list["Shared"]:
        h = len(self.trees) // 2
        return [Shared.of(self.trees[:h], self.slots[:h]), Shared.of(self.trees[h:], self.slots[h:])]


def pass_cost(config: Any) -> Callable[[int], float] | None:
    """FLOPs of one forward pass over a sequence of L tokens under armo's dense tree mask: the projections and
    MLP grow with L, attention (every query against every key the mask lets through or not) with L^2. None for a
    config that does not give its shape (then every row runs apart)."""
    try:
        d = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        n = int(config.num_hidden_layers)
    except (AttributeError, TypeError, ValueError):
        return None
    hd = int(getattr(config, "head_dim", None) or d // heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    ff = int(getattr(config, "intermediate_size", None) or 4 * d)
    linear = 2 * (2 * d * heads * hd + 2 * d * kv * hd + 3 * d * ff)
    attention = 4 * heads * hd
    return lambda L: n * (linear * L + attention * L * L)


def share_prompts(trees: list[Tree], cost: Callable[[int], float] | None, budget: int) -> list[Shared]:
    """Group trees with the same prompt tokens (and gate) into Shared units, in order. A tree joins its prompt's
    open unit when that costs less than a pass of its own (`cost`; None never joins) and the unit stays within
    `budget` tokens; otherwise it opens a new one."""
    open_unit: dict[tuple, tuple[list[int], int]] = {}  # (gate, prompt) -> (slots, tokens) of the unit being filled
    groups: list[list[int]] = []
    for i, t in enumerate(trees):
        key = (t.gate, tuple(t.prompt))
        alone = t.length
        if cost is not None and key in open_unit:
            slots, tokens = open_unit[key]
            added = alone - len(t.prompt)
            if tokens + added <= budget and cost(tokens + added) - cost(tokens) < cost(alone):
                slots.append(i)
                open_unit[key] = (slots, tokens + added)
                continue
        groups.append([i])
        open_unit[key] = (groups[-1], alone)
    return [Shared.of([trees[i] for i in g], g) for g in groups]


def encode_trees(backbone: Backbone, trees: list[Tree], batch_tokens: int,
                 on_batch: Callable[[int, int], None] | None = None,
                 max_padding: float = 1.0, layer: int | list[int] = -1, pooling: str = "last",
                 share: bool = True, layout: str = "rows", lm: list[str] | tuple[str, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Features for trees in their given order (batches are length-sorted, order restored); with a list of
    layers, all of them from one pass ([N,n,d] and [N,m,n,d]). `lm`: LM objectives (lm_objectives.py), in that
    order, as extra columns of the response features ([N,m,d+q]): the first pass runs to the last layer for the
    LM head, and lm-pmi runs every response a second time after an empty prompt (its tokens count in
    `on_batch`, its rows do not).

    Trees with the same tokens are computed once and share the result: the same prompt and response get
    the same reward, bit for bit, wherever they sit in a call (a GRPO group of identical completions has
    zero spread, not float noise that a group normalisation would blow up). Trees with the same prompt run as
    one tree where that is cheaper (`share_prompts`; `share=False` runs each apart, for comparison). `layout`:
    see place_trees."""
    if not lm:
        return _encode(backbone, trees, batch_tokens, on_batch, max_padding, layer, pooling, share, layout)
    from .lm_objectives import MEAN_LOGPROB, PMI, empty_prompt, lm_head

    head = lm_head(backbone)
    prompt, resp = _encode(backbone, trees, batch_tokens, on_batch, max_padding, layer, pooling, share, layout, head)
    cols = {MEAN_LOGPROB: resp[..., -1]}
    if PMI in lm:
        e = empty_prompt(backbone)
        alone = [Tree(t.index, t.example, e, t.conts, len(e) - 1) for t in trees]
        tokens_only = (lambda rows, tokens: on_batch(0, tokens)) if on_batch else None
        _, r0 = _encode(backbone, alone, batch_tokens, tokens_only, max_padding, layer, pooling, share, layout, head)
        cols[PMI] = cols[MEAN_LOGPROB] - r0[..., -1]
    return prompt, torch.cat([resp[..., :-1], torch.stack([cols[n] for n in lm], -1)], -1)


def _encode(backbone: Backbone, trees: list[Tree], batch_tokens: int, on_batch: Callable[[int, int], None] | None,
            max_padding: float, layer: int | list[int], pooling: str, share: bool, layout: str,
            head: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    m = len(trees[0].conts)
    d = (len(layer), backbone.hidden_size) if isinstance(layer, list) else (backbone.hidden_size,)
    r_d = (*d[:-1], d[-1] + 1) if head is not None else d  # + the mean log-probability
    prompt = torch.empty(len(trees), *d)
    resp = torch.empty(len(trees), m, *r_d)
    copies: dict[tuple, list[int]] = {}
    for i, t in enumerate(trees):
        copies.setdefault((t.gate, tuple(t.prompt), *map(tuple, t.conts)), []).append(i)
    groups = list(copies.values())
    unique = [trees[g[0]] for g in groups]
    cost = pass_cost(backbone.model.config) if share else None
    units = share_prompts(unique, cost, batch_tokens)
    by_tree = {id(u.tree): u for u in units}
    for batch in token_batches([u.tree for u in units], batch_tokens, max_padding, layout):
        for part, (pf, rf) in forward_splitting(backbone, [by_tree[id(t)] for t in batch], layer, pooling, layout, head):
            for b, u in enumerate(part):
                for slot, pick in zip(u.slots, u.picks):
                    dst = torch.tensor(groups[slot])
                    prompt[dst] = pf[b]
                    resp[dst] = rf[b, pick]
        if on_batch:
            on_batch(sum(len(groups[s]) for t in batch for s in by_tree[id(t)].slots), sum(t.length for t in batch))
    return prompt, resp


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA/MPS/CPU allocation failures, whatever class this torch raises them as."""
    return type(e).__name__ == "OutOfMemoryError" or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def forward_splitting(backbone: Backbone, batch: list[Shared], layer: int | list[int] = -1, pooling: str = "last",
                      layout: str = "rows", head: torch.Tensor | None = None):
    """forward_trees on a batch of units; a batch that runs out of memory is split in two and retried, down to
    one unit, then to one tree, which then fails with an error naming its row and length. Yields (units,
    features) parts."""
    try:
        yield batch, forward_trees(backbone.model, [u.tree for u in batch], backbone.device, backbone.dtype, layer, pooling,
                                   layout, head)
        return
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        if backbone.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(batch) == 1 and len(batch[0].trees) == 1:
            t = batch[0].trees[0]
            raise ArmoError(f"line {t.example.line}: row {t.example.id!r} ({t.length} tokens) does not fit in memory "
                            f"on {backbone.device} even alone; use --max-length with --overflow truncate-prompt or skip") from None
    half = len(batch) // 2
    for part in ([[u] for u in batch[0].halves()] if len(batch) == 1 else [batch[:half], batch[half:]]):
        yield from forward_splitting(backbone, part, layer, pooling, layout, head)


def check_finite_features(trees: list[Tree], prompt: torch.Tensor, resp: torch.Tensor, source_name: str,
                          dtype: torch.dtype) -> None:
    """Never a silently wrong feature: NaN/inf hidden states (e.g. fp16 overflow) name their row."""
    bad = ~(torch.isfinite(prompt).all(-1) & torch.isfinite(resp).all(-1).all(-1))
    if bool(bad.any()):
        t = trees[int(bad.nonzero()[0])]
        raise ArmoError(f"{source_name}:{t.example.line}: row {t.example.id!r}: the backbone produced non-finite hidden "
                        f"states (NaN/inf) with dtype {dtype}; try --dtype fp32 or bf16")
