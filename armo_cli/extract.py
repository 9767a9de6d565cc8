"""`armo extract`: conversations -> response features f(x,y) and prompt features f(x), written as one
safetensors file; resumable chunks, shards and their merge, one writer per output."""
from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .version import __version__
from .artifacts import ChunkMeta, FeaturesMeta
from .backbones import Backbone, load_backbone
from .configs import ExtractConfig, MergeConfig
from .console import info, progress, warn
from .errors import ArmoError
from .context import RowContext
from .devices import choose_layout, default_chunk_size
from .forward import check_finite_features, is_out_of_memory
from .artifact_files import load_artifact, save_artifact, save_concatenated
from .jsonl import check_input_file, sha256_file, sha256_json
from .lm_objectives import TENSOR as LM_TENSOR, parse_lm_objectives
from .style import STYLE_MEASURES, STYLE_VERSION, TENSOR as STYLE_TENSOR, count_matrix
from .outputs import check_output_file
from .options import validate
from .rendering import Tree, tokenized
from .resumable import JobProgress
from .rows import Example, Skipped, Source, as_pairs, iter_examples, locked_source


@dataclass
class ExtractReport:
    rows: int = 0
    skipped: list[dict] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    chunks_computed: int = 0
    chunks_reused: int = 0
    tokens_computed: int = 0
    seconds: float = 0.0
    packing: str = ""  # the layout the computed chunks ran in (devices.choose_layout); "" when none was computed


def _scan(source: Source, ctx: RowContext, cfg: ExtractConfig, skipped: list[Skipped], hold: range = range(0)):
    """Validation pass: parse, tokenise and size every row before any compute. Returns
    (kept (index, content key, truncated) triples, objectives, is_pair, the trees of the kept rows whose
    positions are in `hold`: the first chunk, so that it is not rendered twice, and the kept rows' lengths in tokens)."""
    kept: list[tuple[int, str, bool]] = []
    lengths: list[int] = []
    held: list[Tree] = []
    objectives: dict[str, None] = {}
    is_pair: bool | None = None
    for i, ex, tree in tokenized(as_pairs(iter_examples(source, cfg.on_error, skipped)), ctx.renderer):
        where = f"{source.name}:{ex.line}"
        if is_pair is None:
            is_pair = ex.is_pair
        elif is_pair != ex.is_pair:
            raise ArmoError(f"{where}: mixes pairs and single responses in one file")
        tree = ctx.sized(ex, i, where, skipped, tree)
        if tree is None:
            continue
        for k in ex.ratings:
            objectives.setdefault(k, None)
        key = sha256_json([ex.id, ex.prompt, ex.responses, ex.ratings, ex.subset, tree.truncated])
        if len(kept) in hold:
            held.append(tree)
        kept.append((i, key, tree.truncated))
        lengths.append(tree.length)
    skipped.sort(key=lambda sk: sk.line)  # rows read ahead of a group may be skipped before its oversized ones
    return kept, list(objectives), bool(is_pair), held, lengths


def _chunk_tensors(trees: list[Tree], ctx: RowContext, objectives: list[str], on_batch, source_name: str,
                   layout: str) -> dict[str, torch.Tensor]:
    prompt, resp = ctx.encode(trees, on_batch, layout)
    check_finite_features(trees, prompt, resp, source_name, ctx.backbone.dtype)
    pair = len(trees[0].conts) == 2
    d = ctx.backbone.hidden_size
    out = {}
    if ctx.lm:  # their own tensor, as the features' columns are the hidden state's
        out[LM_TENSOR] = resp[..., d:] if pair else resp[:, 0, d:]
        resp = resp[..., :d]
    out |= {
        "prompt_features": prompt,
        "response_features": resp if pair else resp[:, 0],
        "prompt_lengths": torch.tensor([len(t.prompt) for t in trees]),
        "response_lengths": torch.tensor([[len(c) for c in t.conts] for t in trees]) if pair
        else torch.tensor([len(t.conts[0]) for t in trees]),
        "row_index": torch.tensor([t.example.line for t in trees]),
        # the responses' markdown marks, read from their text (style.py): what --style-objectives learns from
        STYLE_TENSOR: count_matrix([r for t in trees for r in t.example.responses]).reshape(
            len(trees), *((2,) if pair else ()), len(STYLE_MEASURES)),
    }
    if objectives:
        out["labels"] = torch.tensor(
            [[t.example.ratings.get(k, float("nan")) for k in objectives] for t in trees], dtype=torch.float32)
    return out


def shard_env(cfg: ExtractConfig) -> tuple[int, int, bool]:
    """(num_shards, shard_index, launched by torchrun/accelerate)."""
    if cfg.num_shards is not None:
        idx = cfg.shard_index or 0
        if not 0 <= idx < cfg.num_shards:
            raise ArmoError(f"--shard-index {idx}: must be in [0, {cfg.num_shards})")
        return cfg.num_shards, idx, False
    if cfg.shard_index is not None:
        raise ArmoError("--shard-index needs --num-shards")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return world, int(os.environ.get("RANK", "0")), True
    return 1, 0, False


def _shard_output(cfg: ExtractConfig) -> tuple[Path, Path, int, int, bool]:
    """(final output, the file this process writes, num_shards, shard_index, launched)."""
    num_shards, shard_index, launched = shard_env(cfg)
    out = Path(cfg.output)
    shard_out = out.with_name(f"{out.name}.shard-{shard_index}-of-{num_shards}") if launched else out
    return out, shard_out, num_shards, shard_index, launched


def extract(cfg: ExtractConfig, backbone: Backbone | None = None,
            after_chunk: Callable[[int], None] | None = None) -> ExtractReport:
    """Run `armo extract`: write one safetensors file of features (or one shard of it).

    Options are checked before anything is read; the output is locked for the run, so a second
    writer of the same output is refused instead of mixing its chunks into ours."""
    validate(cfg)
    if (cfg.input is None) == (cfg.dataset is None):
        raise ArmoError("give exactly one of INPUT or --dataset")
    if cfg.input is not None and cfg.input != "-":
        check_input_file(cfg.input)
    check_output_file(cfg.output, "--output", [cfg.input], stdout_ok=False)
    t0 = time.perf_counter()
    _, shard_out, _, _, _ = _shard_output(cfg)
    with locked_source(shard_out, cfg.input, cfg.dataset, cfg.split, cfg.quiet) as source:  # read twice: check, then compute
        return _extract(cfg, source, backbone, after_chunk, t0)


def _extract(cfg: ExtractConfig, source: Source, backbone: Backbone | None, after_chunk, t0: float) -> ExtractReport:
    out, shard_out, num_shards, shard_index, launched = _shard_output(cfg)
    # the weights are read after the validation pass and the --resume check: a bad row, or a finished job, is
    # reported without loading the model
    backbone = backbone or load_backbone(cfg.backbone, cfg.device, cfg.dtype, cfg.attn_implementation, defer_weights=True)
    lm = parse_lm_objectives(cfg.lm_objectives)
    # the layer and the length limit are checked here, before any work
    ctx = RowContext.for_features(backbone, gate_rule=cfg.gate_rule, layer=cfg.layer, pooling=cfg.pooling, lm=lm,
                                  max_length=cfg.max_length, overflow=cfg.overflow, batch_tokens=cfg.batch_tokens,
                                  max_padding=cfg.max_padding)
    renderer, layer, limit = ctx.renderer, ctx.layer, ctx.limit
    skipped: list[Skipped] = []
    display = source.name
    chunk_size = cfg.chunk_size or default_chunk_size(backbone.device)
    first = range(shard_index * chunk_size, (shard_index + 1) * chunk_size)  # this shard's first chunk
    kept, objectives, is_pair, held, lengths = _scan(source, ctx, cfg, skipped, first)
    if not kept:
        raise ArmoError(f"{display}: no usable rows")
    input_hash = sha256_file(source.path) if source.path else sha256_json([source.dataset, source.split])
    meaning = ctx.meaning()
    settings = {"backbone": backbone.fingerprint, "dtype": str(backbone.dtype), "gate_rule": cfg.gate_rule, "layer": layer,
                "template": renderer.template_hash, "max_length": cfg.max_length, "overflow": cfg.overflow,
                "objectives": objectives, "pair": is_pair}
    if cfg.pooling != "last":  # keyed only when set, so that runs from before pooling existed still resume
        settings["pooling"] = cfg.pooling
    if lm:
        settings["lm_objectives"] = lm
    settings["style"] = [STYLE_VERSION, *STYLE_MEASURES]  # chunks counted otherwise (or not at all) are computed again
    settings_key = sha256_json(settings)

    chunks = [kept[i:i + chunk_size] for i in range(0, len(kept), chunk_size)]
    mine = [c for c in range(len(chunks)) if c % num_shards == shard_index]
    tokens = sum(sum(lengths[c * chunk_size:(c + 1) * chunk_size]) for c in mine)  # this shard's, for --packing auto
    # A shard knows its whole job, so that `armo merge` can refuse missing, repeated or foreign shards.
    job = {"input_hash": input_hash, "settings_key": settings_key, "chunk_size": chunk_size,
           "num_shards": num_shards, "rows": len(kept), "chunks": len(chunks)}
    job["id"] = sha256_json(job)
    # chunk keys name the input itself too: chunks of another input are never reused, even unlocked
    chunk_keys = {c: sha256_json([settings_key, input_hash, [k for (_, k, _) in chunks[c]]]) for c in mine}
    job_key = sha256_json([settings_key, input_hash, [chunk_keys[c] for c in mine]])
    if cfg.resume and shard_out.exists():
        try:
            done: FeaturesMeta | None = load_artifact(shard_out, "features", tensors=False)[1]
        except ArmoError:
            done = None
        if done is not None and done.job_key == job_key:  # the same job finished before: nothing to do
            info(f"{shard_out}: {len(done.ids)} rows", cfg.quiet, done="up to date")
            if launched:
                _rank_merge(out, shard_index, num_shards, cfg.quiet)
            return ExtractReport(**{**done.report, "chunks_computed": 0, "chunks_reused": len(mine), "tokens_computed": 0})
    units = JobProgress(shard_out, "features-chunk", cfg.resume)
    try:
        files, report = _compute_chunks(cfg, source, ctx, chunks, mine, chunk_keys, units, objectives, after_chunk,
                                        {shard_index: held} if held else {}, tokens)
    except BaseException:
        units.abandon()  # nothing finished: nothing to resume, leave nothing behind
        raise
    meta = {
        "kind": "features", "armo_version": __version__, "backbone": backbone.info(), "dtype": str(backbone.dtype),
        "gate_rule": cfg.gate_rule, "gen_suffix": renderer.gen_suffix, "layer": layer, "template_hash": renderer.template_hash,
        "feature_meaning": meaning.to_json(), "max_length": cfg.max_length,
        "length_limit": limit if limit < (1 << 62) else None,
        "overflow": cfg.overflow, "input": display, "input_hash": input_hash, "objectives": objectives,
        "pair": is_pair, "shard": [shard_index, num_shards], "job": job, "settings_key": settings_key, "job_key": job_key,
        "lm_objectives": lm or None, "style_measures": list(STYLE_MEASURES),
    }
    report.rows = sum(len(chunks[c]) for c in mine)
    report.skipped = [vars(s) for s in skipped]
    report.seconds = time.perf_counter() - t0
    _join(files, [chunk_keys[c] for c in mine], shard_out, meta, report)
    units.discard()
    if launched:
        _rank_merge(out, shard_index, num_shards, cfg.quiet)
    info(f"{shard_out}: {report.rows} rows, {len(report.skipped)} skipped, "
         f"{len(report.truncated)} truncated, {report.chunks_computed} chunks computed, "
         f"{report.chunks_reused} reused", cfg.quiet or not cfg.announce, done="wrote")
    for s in report.skipped:
        warn(f"skipped line {s['line']} ({s['id']}): {s['reason']}")
    return report


def _compute_chunks(cfg: ExtractConfig, source: Source, ctx: RowContext, chunks: list, mine: list[int],
                    chunk_keys: dict[int, str], units: JobProgress, objectives: list[str], after_chunk,
                    held: dict[int, list[Tree]], tokens: int) -> tuple[list[Path], ExtractReport]:
    """Compute (or, with --resume, reuse) this shard's chunk files, in order. `held`: chunks whose trees the
    validation pass kept (the first), which are not rendered again. `tokens`: the shard's, for --packing auto."""
    report = ExtractReport()
    keep_index = {i for c in mine for (i, _, _) in chunks[c]}

    def wanted() -> Iterator[tuple[int, Example]]:
        for i, ex in enumerate(as_pairs(iter_examples(source, cfg.on_error, None))):
            if i in keep_index:
                yield i, ex

    stream = wanted()
    pbar = progress(cfg.quiet)
    rate = {"tokens": 0, "t": time.perf_counter()}
    files = []
    with pbar:
        task = pbar.add_task("extract", total=sum(len(chunks[c]) for c in mine), rate="")

        def on_batch(rows: int, tokens: int) -> None:
            rate["tokens"] += tokens
            report.tokens_computed += tokens
            dt = max(time.perf_counter() - rate["t"], 1e-9)
            pbar.update(task, advance=rows, rate=f"{rate['tokens'] / dt:,.0f} tok/s")

        def prepare(c: int) -> tuple[Path, list[Tree] | None]:
            """Read chunk c and render it (None when --resume finds it done). Run one chunk ahead on a
            helper thread, so that the host's rendering overlaps the accelerator's forward passes."""
            path = units.path(c)
            exs = [next(stream, (None, None)) for _ in chunks[c]]  # keep the stream aligned even for reused chunks
            if any(i != j for (i, _, _), (j, _) in zip(chunks[c], exs)):
                raise ArmoError(f"{source.name}: the input changed while it was being read; run again")
            # a finished chunk is reused only if it says of its rows what the input does (a chunk's ids become the
            # features file's)
            said = ([ex.id for _, ex in exs], [ex.subset for _, ex in exs], [sha256_json(ex.prompt)[:16] for _, ex in exs],
                    [ex.id for (_, _, truncated), (_, ex) in zip(chunks[c], exs) if truncated])
            if units.load(c, chunk_keys[c], lambda _, m: True if (m.ids, m.subsets, m.prompt_hashes, m.truncated) == said
                          else None):
                return path, None
            kept_trees = held.pop(c, None)
            if kept_trees is not None:
                return path, kept_trees
            trees = []
            examples = [ex for _, ex in exs]
            for (_, _, truncated), ex, tree in zip(chunks[c], examples, ctx.renderer.tokenize_many(examples, [j for j, _ in exs])):
                if isinstance(tree, ArmoError):
                    raise ArmoError(f"{source.name}:{ex.line}: {tree}")
                trees.append(ctx.renderer.truncate_prompt(tree, ctx.limit) if truncated else tree)
            return path, trees

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="armo-render")
        try:
            ahead = pool.submit(prepare, mine[0]) if mine else None
            for n, c in enumerate(mine):
                path, trees = ahead.result()
                ahead = pool.submit(prepare, mine[n + 1]) if n + 1 < len(mine) else None
                if trees is None:
                    report.chunks_reused += 1
                    pbar.update(task, advance=len(chunks[c]))
                    files.append(path)
                    continue
                if not report.packing:  # the weights are read when the first chunk needs computing (defer_weights)
                    report.packing = choose_layout(cfg.packing, ctx.backbone.device, ctx.backbone.ensure_model(), tokens)
                tensors = _tensors_or_rows(report, lambda layout: _chunk_tensors(
                    trees, ctx, objectives, on_batch, source.name, layout), cfg, ctx.backbone)
                units.save(c, tensors, ChunkMeta(key=chunk_keys[c], ids=[t.example.id for t in trees],
                                                 subsets=[t.example.subset for t in trees],
                                                 prompt_hashes=[sha256_json(t.example.prompt)[:16] for t in trees],
                                                 truncated=[t.example.id for t in trees if t.truncated]))
                report.chunks_computed += 1
                files.append(path)
                if after_chunk:
                    after_chunk(c)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return files, report


def _tensors_or_rows(report: ExtractReport, compute: Callable[[str], dict], cfg: ExtractConfig,
                     backbone: Backbone) -> dict:
    """compute(report.packing). FlexAttention compiles a kernel on first use, which can fail where its stack is
    incomplete (no C++ compiler, a transformers whose flex path differs): a first chunk that fails so is never a
    traceback, and under auto never a job lost that one tree per row would finish."""
    try:
        return compute(report.packing)
    except Exception as e:
        if report.packing != "flex" or report.chunks_computed or isinstance(e, ArmoError) or is_out_of_memory(e):
            raise
        why = f"{type(e).__name__}: {str(e).strip()}".splitlines()[0]
        if cfg.packing == "flex":
            raise ArmoError(f"--packing flex: FlexAttention failed on {backbone.device} ({why}); use --packing rows") from None
        warn(f"FlexAttention failed on {backbone.device} ({why}); running one tree per row (--packing rows)")
        report.packing, report.tokens_computed = "rows", 0  # the first chunk's: nothing else was computed
        return compute(report.packing)


def _join(files: list[Path], keys: list[str], out: Path, meta: dict, report: ExtractReport) -> None:
    ids, subsets, truncated, prompts = [], [], [], []
    for f, key in zip(files, keys):
        m: ChunkMeta = load_artifact(f, "features-chunk", tensors=False)[1]
        if m.key != key:  # never join a chunk that some other job wrote
            raise ArmoError(f"{f}: this chunk belongs to another job; rerun without --resume")
        ids += m.ids
        subsets += m.subsets
        truncated += m.truncated
        prompts += m.prompt_hashes
    report.truncated = truncated
    typed = FeaturesMeta(**{k: v for k, v in meta.items() if k != "kind"}, ids=ids,
                         subsets=subsets if any(s is not None for s in subsets) else None,
                         prompt_hashes=prompts, report=asdict(report))
    save_concatenated(out, files, typed)


def merge(cfg: MergeConfig) -> dict:
    """Run `armo merge`: the report of merge_features."""
    validate(cfg)
    return merge_features(cfg.shards, cfg.output, cfg.allow_partial)


def merge_features(inputs: Iterable[str | Path], output: str | Path, allow_partial: bool = False) -> dict:
    """Join the shards of one extract job into one file, in the original row order.

    Every shard records its job (input, settings, chunking, number of shards). Shards of different jobs,
    a shard index given twice and missing shards are refused, naming them; `allow_partial` merges the
    shards that are there and reports the missing indices in the result."""
    inputs = [str(p) for p in inputs]
    if not inputs:
        raise ArmoError("merge: no inputs")
    check_output_file(output, "--output", inputs, stdout_ok=False)
    metas: list[tuple[str, FeaturesMeta]] = [(p, load_artifact(p, "features", tensors=False)[1]) for p in inputs]
    for p, m in metas:
        if m.job is None or not m.shard or not isinstance(m.shard[0], int) or "id" not in m.job:
            raise ArmoError(f"{p}: records no extract job (not a shard written by this armo version); extract it again")
    p0, m0 = metas[0]
    for p, m in metas[1:]:
        if m.job["id"] != m0.job["id"]:
            what = [k for k in ("input_hash", "settings_key", "chunk_size", "num_shards") if m.job.get(k) != m0.job.get(k)]
            raise ArmoError(f"{p}: a shard of another extract job than {p0} (differs in {', '.join(what) or 'job'}); "
                            f"merge only the shards of one job")
    num = int(m0.job["num_shards"])
    by_index: dict[int, str] = {}
    for p, m in metas:
        idx = m.shard[0]
        if idx in by_index:
            raise ArmoError(f"{p}: shard {idx} of {num} is given twice (also {by_index[idx]})")
        by_index[idx] = p
    missing = [i for i in range(num) if i not in by_index]
    if missing and not allow_partial:
        raise ArmoError(f"merge: {len(missing)} of {num} shards missing (indices {', '.join(map(str, missing))}); "
                        f"pass them all, or --allow-partial to merge what is there")
    parts = [load_artifact(p, "features") for p in inputs]
    full = [t for t, m in parts if m.ids]  # a shard that got no rows (fewer chunks than shards) adds none
    if not full:
        raise ArmoError("merge: the shards hold no rows")
    tensors = {k: torch.cat([t[k] for t in full]) for k in full[0]}
    ids = [i for _, m in parts for i in m.ids]
    subsets = [s for _, m in parts for s in (m.subsets or [None] * len(m.ids))]
    prompts = [h for _, m in parts for h in (m.prompt_hashes or [""] * len(m.ids))]
    if len(set(ids)) != len(ids):
        raise ArmoError("merge: the shards overlap (duplicate ids)")
    if not missing and len(ids) != int(m0.job["rows"]):
        raise ArmoError(f"merge: the shards hold {len(ids)} rows, but their job has {m0.job['rows']}")
    order = torch.argsort(tensors["row_index"], stable=True)
    tensors = {k: v[order] for k, v in tensors.items()}
    ids = [ids[i] for i in order.tolist()]
    subsets = [subsets[i] for i in order.tolist()]
    prompts = [prompts[i] for i in order.tolist()]
    reps = [m.report for _, m in parts]
    # skipped rows are listed by every shard's scan: keep one copy each
    seen, skipped = set(), []
    for s in (s for r in reps for s in r.get("skipped", [])):
        k = (s["line"], s["id"])
        if k not in seen:
            seen.add(k)
            skipped.append(s)
    report = {"rows": len(ids), "skipped": skipped, "truncated": [s for r in reps for s in r.get("truncated", [])],
              "chunks_computed": sum(r.get("chunks_computed", 0) for r in reps),
              "chunks_reused": sum(r.get("chunks_reused", 0) for r in reps),
              "tokens_computed": sum(r.get("tokens_computed", 0) for r in reps),
              "seconds": max(r.get("seconds", 0.0) for r in reps),
              "packing": ",".join(sorted({r.get("packing", "") for r in reps} - {""}))}
    meta = dataclasses.replace(parts[0][1], ids=ids, subsets=subsets if any(s is not None for s in subsets) else None,
                               shard=None if not missing else [sorted(by_index), num], missing_shards=missing,
                               prompt_hashes=prompts, report=report)
    save_artifact(output, tensors, meta)
    return {**report, "shards": len(inputs), "num_shards": num, "missing_shards": missing}


def _rank_merge(out: Path, rank: int, world: int, quiet: bool, timeout: float = 24 * 3600) -> None:
    """Under torchrun/accelerate: rank 0 waits for every rank's shard, then merges."""
    if rank != 0:
        return
    shards = [out.with_name(f"{out.name}.shard-{r}-of-{world}") for r in range(world)]
    t0 = time.time()
    while not all(s.exists() for s in shards):
        if time.time() - t0 > timeout:
            raise ArmoError(f"merge: timed out waiting for shards of {out}")
        time.sleep(1.0)
    merge_features(shards, out)
    for s in shards:
        s.unlink()
    info(f"{world} ranks into {out}", quiet, done="merged")
