"""`armo tune-backbone`, stage 0: a backbone tuned for preference, as ArmoRM's own backbone was a Bradley-Terry reward
model (FsfairX-LLaMA3-RM) before its heads were fitted. LoRA on the backbone's blocks and a linear head learn
together, with the Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)), on CPU or GPU, resumable. The head reads
the last layer, or (--layer) the one the features will be read from: then the blocks above it get no adapter and are
not run, so a layer-13-of-30 read-out trains at about twice the speed.

PEFT makes the LoRA modules and writes the adapter in its own format. The loop is armo's, not TRL's RewardTrainer,
because the pairs must be the tokens their features will be read from: rendered by armo's renderer (a chat marker
in user text stays text, which TRL's own tokenisation would not guarantee) and run as armo's trees (each pair's
prompt computed once: fewer tokens than TRL's two sequences per pair). The loop itself is thirty lines.

Under torchrun or accelerate, each rank takes its share of every step's pairs and the gradients are summed over ranks
(data parallel, as DistributedDataParallel would, done by hand because a step's pairs need not split evenly); every
rank holds the same weights, rank 0 writes the checkpoint and the adapter, and a checkpoint resumes on any number of
ranks, since a step's pairs and its loss (the mean over all of them) do not depend on how many ranks share them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import warnings
from pathlib import Path

import torch

from .backbones import load_backbone
from .configs import TuneConfig
from .context import RowContext
from .console import info, progress, warn
from .errors import ArmoError
from .forward import branch_spans, build_batch, canonical_layer, hidden_states, resolve_layer
from .jobfiles import claim_parts, make_parts, remove_parts
from .jsonl import check_input_file, sha256_file, sha256_json
from .lora import CONFIG, is_adapter_dir
from .options import validate
from .outputs import atomic_dir, check_output_dir
from .rendering import Tree, tokenized
from .rows import Skipped, Source, as_pairs, iter_examples, locked_source
from .version import __version__

CHECKPOINT = "checkpoint.safetensors"
_PART_FILE = re.compile(r"checkpoint\.safetensors|\.checkpoint\.safetensors\.\w+\.tmp")


def _pairs(source: Source, ctx: RowContext, cfg: TuneConfig, skipped: list[Skipped]) -> list[Tree]:
    trees = []
    for i, ex, tree in tokenized(as_pairs(iter_examples(source, cfg.on_error, skipped)), ctx.renderer):
        where = f"{source.name}:{ex.line}"
        if not ex.is_pair:
            raise ArmoError(f"{where}: tune-backbone needs pairs (fields 'chosen' and 'rejected')")
        t = ctx.sized(ex, i, where, skipped, tree)
        if t is not None:
            trees.append(t)
    if len(trees) < 2:
        raise ArmoError(f"{source.name}: {len(trees)} usable pairs; tune-backbone needs at least 2")
    return trees


def pair_rewards(model, head: torch.nn.Linear, trees: list[Tree], device: torch.device, dtype: torch.dtype,
                 pooling: str, layer: int = -1) -> torch.Tensor:
    """The head's rewards [B,2] of the pairs' responses, read at `layer` of one tree-masked pass (with grad; the
    blocks above the layer are not run)."""
    ids, pos, mask = build_batch(trees, device, dtype)
    hidden = hidden_states(model, layer, input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False)
    feats = []
    for b, t in enumerate(trees):
        spans, which = branch_spans(t), t.branches()[1]
        for j in which:
            s, e = spans[j]
            feats.append(hidden[b, s:e].mean(0) if pooling == "mean" else hidden[b, e - 1])
    return head(torch.stack(feats).float()).reshape(len(trees), 2)


def bt_loss(rewards: torch.Tensor) -> torch.Tensor:
    return -torch.nn.functional.logsigmoid(rewards[:, 0] - rewards[:, 1]).mean()


@torch.no_grad()
def mean_loss(model, head, trees: list[Tree], device, dtype, pooling: str, batch: int, layer: int = -1) -> tuple[float, float]:
    """(mean Bradley-Terry loss, accuracy) over pairs, without grad."""
    losses, right = [], 0
    for i in range(0, len(trees), batch):
        r = pair_rewards(model, head, trees[i:i + batch], device, dtype, pooling, layer)
        losses.append(float(bt_loss(r)) * r.shape[0])
        right += int((r[:, 0] > r[:, 1]).sum())
    return sum(losses) / len(trees), right / len(trees)


def _trainable(model, head) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad] + [(f"head.{n}", p) for n, p in head.named_parameters()]


def _save_checkpoint(path: Path, params, opt: torch.optim.Optimizer, meta: dict) -> None:
    """The parameters, the optimiser's state and the run's record, checksummed and sealed as a resume unit is
    (artifact_files: a changed tensor or an edited step count is refused on load)."""
    from .artifact_files import save_raw_artifact

    tensors = {}
    for i, (name, p) in enumerate(params):
        tensors[f"param.{i}"] = p.detach().clone().contiguous()
        for k, v in opt.state.get(p, {}).items():
            tensors[f"opt.{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().clone().contiguous()
    save_raw_artifact(path, tensors, {"kind": "stage0-checkpoint", "armo_version": __version__, **meta}, seal=True)


def _load_checkpoint(path: Path, params, opt: torch.optim.Optimizer, key: str) -> dict | None:
    """The checkpoint's record, its tensors put into the parameters and the optimiser; None if it is another job's
    (then the run starts over). One that is damaged, edited or incomplete is never resumed from: it is named, and the
    run starts over."""
    from .artifact_files import load_artifact

    try:
        tensors, meta = load_artifact(path, sealed=True)
        if meta.get("kind") != "stage0-checkpoint":
            raise ArmoError(f"{path}: not a tune-backbone checkpoint")
        if meta.get("key") != key:
            return None
        shapes = [tensors.get(f"param.{i}") for i in range(len(params))]
        if any(t is None or t.shape != p.shape for t, (_, p) in zip(shapes, params)):
            raise ArmoError(f"{path}: incomplete: its parameters are not this run's")
    except ArmoError as e:
        warn(f"{e}; training starts over")
        return None
    with torch.no_grad():
        for i, (name, p) in enumerate(params):
            p.copy_(tensors[f"param.{i}"])
            state = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
            if state:
                opt.state[p] = state
    return {k: meta[k] for k in ("key", "step", "losses", "before", "tokens", "seconds")}


def _initial_head(spec: str, ctx: RowContext, cfg: TuneConfig) -> tuple[torch.Tensor, float, dict]:
    """(weight [d], bias, record) of the head to start from: an objective of a fitted regression, in its own units
    (a Bradley-Terry objective's logit: the [0,1] mapping undone), checked to read the features this run tunes."""
    from .heads import Regression
    from .provenance import require_compatible

    path, _, objective = spec.partition(":")
    objective = objective or "preference"
    reg = Regression.load(path)
    if objective not in reg.objectives:
        raise ArmoError(f"--init-head {spec}: {path} has no objective {objective!r} (it has {', '.join(reg.objectives)})")
    require_compatible(reg.meaning, ctx.meaning(), path, f"tune-backbone --layer {cfg.layer} --pooling {cfg.pooling} on "
                       f"{ctx.backbone.spec.name}", warn_dtype=False)
    sc = reg.meta.scales[objective]
    if sc.get("transform") != "linear":
        raise ArmoError(f"--init-head {spec}: objective {objective!r} is not linear in the features ({sc.get('transform')})")
    j = reg.objectives.index(objective)
    span = sc["hi"] - sc["lo"]
    record = {"regression": str(path), "objective": objective, "sha256": sha256_file(path)}
    return reg.weight[j].float() * span, float(sc["lo"] + span * reg.bias[j]), record


def _finished(folder: Path, key: str) -> dict | None:
    """The report of a finished adapter at `folder` if it is this job's (same key), else None."""
    try:
        report = json.loads((folder / "armo-stage0.json").read_text()) if is_adapter_dir(folder) else None
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and report.get("key") == key else None


def is_stage0_dir(folder: Path) -> bool:
    """An adapter folder that tune-backbone wrote (its report beside PEFT's files): one it may replace. Any other
    folder, a PEFT adapter of the user's own included, needs --force."""
    try:
        report = json.loads((folder / "armo-stage0.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return is_adapter_dir(folder) and isinstance(report, dict) and report.get("kind") == "stage0"


def _checkpointing(model, on: bool) -> None:
    """Recompute the blocks' activations in the backward pass (transformers' gradient checkpointing, non-reentrant),
    by the name transformers uses now or the older one."""
    name = "activation_checkpointing" if hasattr(model, "activation_checkpointing_enable") else "gradient_checkpointing"
    if on:
        getattr(model, f"{name}_enable")(**{f"{name}_kwargs": {"use_reentrant": False}})
    else:
        getattr(model, f"{name}_disable")()


def ranks() -> tuple[int, int]:
    """(rank, world size) under torchrun or accelerate launch; (0, 1) in a single process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def tune_backbone(cfg: TuneConfig) -> dict:
    """Run `armo tune-backbone` and return its report (losses before and after, steps, tokens/s)."""
    validate(cfg)
    rank, world = ranks()
    if cfg.input is None:
        raise ArmoError("tune-backbone: give the pair rows (INPUT)")
    if cfg.input != "-":
        check_input_file(cfg.input)
    elif world > 1:
        raise ArmoError("tune-backbone: under several ranks, give the pairs as a file (each rank reads it), not stdin")
    if rank == 0:  # the writer: the other ranks only read
        check_output_dir(cfg.output, is_stage0_dir, "an adapter folder that tune-backbone wrote", cfg.force,
                         inputs=[cfg.input])
    targets = [m.strip() for m in cfg.target_modules.split(",") if m.strip()]
    if not targets or any(m in ("embed_tokens", "lm_head") for m in targets):
        raise ArmoError(f"--target-modules {cfg.target_modules!r}: name the blocks' linear layers (not the embeddings "
                        "or the LM head)")
    t0 = time.perf_counter()
    lock = locked_source(Path(cfg.output), cfg.input, None, "train", cfg.quiet) if rank == 0 else \
        contextlib.nullcontext(Source(path=cfg.input, quiet=cfg.quiet))
    with lock as source:  # one writer per output
        return _tune(cfg, source, targets, t0, rank, world)


def _all_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _tune(cfg: TuneConfig, source: Source, targets: list[str], t0: float, rank: int = 0, world: int = 1) -> dict:
    device = cfg.device
    if world > 1 and device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"  # one GPU per rank
    bb = load_backbone(cfg.backbone, device, "fp32")  # fp32: the adapter trains in full precision
    if cfg.bf16 and bb.device.type != "cuda":
        raise ArmoError(f"--bf16: CUDA only (this run is on {bb.device.type}); leave it out there")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if bb.device.type == "cuda" else "gloo")
    if bb.spec.kind == "adapter":
        raise ArmoError(f"--backbone {cfg.backbone}: already an adapter; tune its base, or merge it first")
    ctx = RowContext.for_features(bb, layer=cfg.layer, pooling=cfg.pooling, max_length=cfg.max_length, overflow=cfg.overflow)
    init = _initial_head(cfg.init_head, ctx, cfg) if cfg.init_head else None
    skipped: list[Skipped] = []
    trees = _pairs(source, ctx, cfg, skipped)
    input_hash = sha256_file(source.path) if source.path else sha256_json([t.prompt + t.conts[0] + t.conts[1] for t in trees])
    n_layers = int(bb.model.config.num_hidden_layers)
    read = resolve_layer(cfg.layer, n_layers)
    if read == 0:
        raise ArmoError(f"--layer {cfg.layer}: that is the embeddings, which no block's adapter changes; give a block's layer")
    settings = {k: getattr(cfg, k) for k in ("rank", "alpha", "target_modules", "pooling", "lr", "weight_decay", "epochs",
                                              "batch_pairs", "max_length", "overflow", "seed")}
    settings["layer"] = layer = canonical_layer(cfg.layer, n_layers)
    if init is not None:
        settings["init_head"] = {k: init[2][k] for k in ("objective", "sha256")}
    key = sha256_json([bb.fingerprint, input_hash, settings, len(trees), __version__])
    done = _finished(Path(cfg.output), key) if cfg.resume else None
    if done is not None:  # --resume on a finished run of the same job: nothing to do (as extract's "up to date")
        info(f"{cfg.output}: {done['pairs']} pairs, {done['steps']} steps", cfg.quiet, done="up to date")
        return done
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ArmoError("tune-backbone needs PEFT: pip install peft (or pip install 'armo-cli[tune]')") from None
    unknown = [m for m in targets if not any(n.endswith(f".{m}") for n, _ in bb.model.named_modules())]
    if unknown:  # before PEFT, whose own error for it is not one line
        raise ArmoError(f"--target-modules: {', '.join(unknown)} not in the backbone's blocks")
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PEFT calls a transformers method that transformers deprecates
        # blocks above the read layer cannot change what the head reads: they get no adapter (and are not run)
        # (a regex over module names: PEFT's layers_to_transform does not match a bare decoder's top-level "layers.N")
        modules = targets if read == n_layers else (
            rf"layers\.({'|'.join(map(str, range(read)))})\.\w+\.({'|'.join(map(re.escape, targets))})")
        peft = get_peft_model(bb.model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=modules,
                                                   lora_dropout=0.0, bias="none"))
    model = peft.get_base_model()  # the backbone with LoRA modules in place: armo's forward (and its layer hook) runs it
    if cfg.gradient_checkpointing:
        _checkpointing(model, True)
        model.train()  # transformers checkpoints only in training mode (the blocks have no dropout to switch on)
    head = torch.nn.Linear(bb.hidden_size, 1).to(bb.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    if init is not None:
        with torch.no_grad():
            head.weight[0].copy_(init[0])
            head.bias.fill_(init[1])
    params = _trainable(model, head)
    opt = torch.optim.AdamW([p for _, p in params], lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(trees) / cfg.batch_pairs)
    total = per_epoch * cfg.epochs
    parts = Path(cfg.output + ".parts")
    if rank == 0:
        claim_parts(parts, cfg.resume, _PART_FILE.fullmatch)
    _barrier(world)  # every rank reads the checkpoint before rank 0 may write a newer one
    record = _load_checkpoint(parts / CHECKPOINT, params, opt, key) if cfg.resume and (parts / CHECKPOINT).exists() else None
    _barrier(world)
    sample = torch.randperm(len(trees), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.eval_pairs].tolist()
    probe = [trees[j] for j in sorted(sample)]

    def measured() -> tuple[float | None, float | None]:
        return mean_loss(model, head, probe, bb.device, bb.dtype, cfg.pooling, cfg.batch_pairs, layer) if probe else (None, None)

    if record is None:
        before = measured()
        record = {"key": key, "step": 0, "losses": [], "before": before, "tokens": 0, "seconds": 0.0}
    elif not cfg.quiet and rank == 0:
        info(f"{parts / CHECKPOINT}: step {record['step']} of {total}", done="resuming at")
    if rank == 0:
        make_parts(parts)
    start, t_train = record["step"], time.perf_counter()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cfg.bf16 else contextlib.nullcontext
    pbar = progress(cfg.quiet or rank != 0)
    with pbar:
        task = pbar.add_task("tune", total=total, completed=start, rate="")
        for step in range(start, total):
            epoch, i = divmod(step, per_epoch)
            order = torch.randperm(len(trees), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
            batch = [trees[j] for j in order[i * cfg.batch_pairs:(i + 1) * cfg.batch_pairs].tolist()]
            mine = batch[rank::world]  # this rank's share of the step's pairs
            opt.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), dtype=torch.float64)
            for k in range(cfg.grad_accum):
                micro = mine[k::cfg.grad_accum]
                if not micro:
                    continue
                with autocast():
                    r = pair_rewards(model, head, micro, bb.device, bb.dtype, cfg.pooling, layer)
                # the step's loss is the mean over all its pairs: each micro-batch adds its share of that mean
                part = -torch.nn.functional.logsigmoid(r[:, 0] - r[:, 1]).sum() / len(batch)
                part.backward()
                loss_sum += part.detach().double().cpu()
            if world > 1:  # the gradient of the mean over every rank's pairs, the same on every rank
                for _, p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    _all_sum(p.grad, world)
                loss_sum = _all_sum(loss_sum.to(bb.device), world).cpu()
            opt.step()
            record["losses"].append(float(loss_sum))
            record["tokens"] += sum(t.length for t in batch)
            record["step"] = step + 1
            if record["step"] % cfg.save_every == 0 or record["step"] == total:
                record["seconds"] += time.perf_counter() - t_train
                t_train = time.perf_counter()
                if rank == 0:
                    _save_checkpoint(parts / CHECKPOINT, params, opt, record)
            rate = record["tokens"] / max(record["seconds"] + time.perf_counter() - t_train, 1e-9)
            pbar.update(task, advance=1, rate=f"loss {record['losses'][-1]:.3f}, {rate:,.0f} tok/s")
    if cfg.gradient_checkpointing:
        model.eval()
    after = measured()
    report = {"kind": "stage0", "key": key, "armo_version": __version__, "base": bb.spec.name, "base_fingerprint": bb.fingerprint,
              "input": source.name, "input_hash": input_hash, "pairs": len(trees), "steps": total, "settings": settings,
              "eval_pairs": len(probe), "loss_before": record["before"][0], "accuracy_before": record["before"][1],
              "loss_after": after[0], "accuracy_after": after[1], "train_losses": record["losses"],
              "train_tokens": record["tokens"], "train_seconds": record["seconds"],
              "train_tokens_per_second": record["tokens"] / max(record["seconds"], 1e-9),
              "skipped": [vars(s) for s in skipped], "seconds": time.perf_counter() - t0}
    report["ranks"] = world
    if rank != 0:  # rank 0 writes; the others hold the same weights
        _barrier(world)
        return report
    base = cfg.backbone if bb.spec.kind in ("named-gguf", "hub") else str(Path(cfg.backbone).expanduser().resolve())
    with atomic_dir(cfg.output) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PEFT calls a transformers method that transformers deprecates
        peft.save_pretrained(str(tmp), safe_serialization=True)
        conf = json.loads((tmp / CONFIG).read_text())
        conf["base_model_name_or_path"] = base  # armo's name for it: the embedded backbone is a name, not a hub id
        (tmp / CONFIG).write_text(json.dumps(conf, indent=2) + "\n")
        from .artifact_files import save_tensors

        save_tensors({"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()},
                     tmp / "reward_head.safetensors", {"format": "pt"})
        (tmp / "armo-stage0.json").write_text(json.dumps(report, indent=2) + "\n")
    remove_parts(parts)
    measured_text = (f", on {len(probe)} of its pairs: Bradley-Terry loss {record['before'][0]:.4f} -> {after[0]:.4f}, "
                     f"accuracy {record['before'][1]:.3f} -> {after[1]:.3f}") if probe else ""
    info(f"{cfg.output}: {len(trees)} pairs, {total} steps{measured_text}", cfg.quiet, done="wrote")
    for s in skipped:
        warn(f"skipped line {s.line} ({s.id}): {s.reason}")
    _barrier(world)
    return report
