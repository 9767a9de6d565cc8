"""The ArmoRM Hugging Face format (LlamaForRewardModelWithGating), both ways, safetensors only."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors import safe_open

from .version import __version__
from .backbones import cache_root, folder_fingerprint, load_backbone
from .console import info
from .heads import regression_hash, transform_hash
from .rendering import GATE_RULE_PATTERN_OFFSET, GATE_RULES, Renderer
from .errors import ArmoError, one_line
from .artifact_files import check_finite, save_artifact, save_tensors, tensors_sha256
from .artifacts import DecorrelationMeta, GatingMeta, RegressionMeta
from .jsonl import check_input_file, check_regular_files, is_regular_file, read_json_object, sha256_json
from .outputs import atomic_dir, check_output_dir
from .provenance import POOLINGS, FeatureMeaning
from .model import PART_FILES, ArmoModel, is_model_dir, write_manifest

MODELING = Path(__file__).parent / "hf_code" / "modeling_armo.py"
ARCH = "LlamaForRewardModelWithGating"

# The published checkpoint's 19 objectives, in order (RLHFlow/ArmoRM-Llama3-8B-v0.1 model card).
ARMORM_OBJECTIVES = [
    "helpsteer-helpfulness", "helpsteer-correctness", "helpsteer-coherence", "helpsteer-complexity",
    "helpsteer-verbosity", "ultrafeedback-overall_score", "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness", "ultrafeedback-honesty", "ultrafeedback-helpfulness", "beavertails-is_safe",
    "prometheus-score", "argilla-overall_quality", "argilla-judge_lm", "code-complexity", "code-style",
    "code-explanation", "code-instruction-following", "code-readability",
]


def is_export_dir(path: Path) -> bool:
    """An earlier `armo export` output: config.json naming armo's architecture."""
    if not is_regular_file(Path(path) / "config.json"):  # a FIFO would block the read
        return False
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(cfg, dict) and cfg.get("architectures") == [ARCH] and isinstance(cfg.get("armo"), dict)


def export_model(model_dir: str | Path | None, out_dir: str | Path, backbone: str | None = None,
                 force: bool = False) -> Path:
    """Write an HF folder that AutoModelForSequenceClassification loads with trust_remote_code=True.

    The folder is written beside OUT and swapped in when complete; OUT may be new, empty, an earlier
    export (replaced) or, with `force`, any other folder; never the model itself or the current folder."""
    model = load_model(model_dir)
    check_output_dir(out_dir, is_export_dir, "an armo export", force, inputs=[model.path])
    bb = load_backbone(backbone or model.backbone["name"], device="cpu", dtype="fp32")
    if bb.fingerprint != model.backbone["fingerprint"]:
        raise ArmoError(f"--backbone: not the backbone this model was trained on ({model.backbone['name']})")
    if bb.model.config.model_type != "llama":
        raise ArmoError(f"export: only Llama-architecture backbones are supported (this one is {bb.model.config.model_type!r})")
    renderer = Renderer(bb.tokenizer, model.gate_rule)
    pattern = renderer.gen_suffix
    offset = GATE_RULE_PATTERN_OFFSET[renderer.gate_rule](len(pattern))
    gate = model.gating.gate
    cfg = bb.model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.update({
        "architectures": [ARCH],
        "auto_map": {"AutoModelForSequenceClassification": f"modeling_armo.{ARCH}"},
        "num_objectives": len(model.objectives),
        "gating_temperature": gate.temperature,
        "gating_hidden_dim": gate.layers[0].out_features if len(gate.layers) > 1 else None,
        "gating_n_hidden": len(gate.layers) - 1,
        "gating_token_pattern": pattern,
        "gating_token_offset": offset,
        # which hidden state the heads read (an index into output_hidden_states; -1 = last, as ArmoRM)
        "armo_feature_layer": model.meaning.layer,
        # how the response's hidden states become the feature: "last" (its last token, as ArmoRM) or "mean"
        "armo_feature_pooling": model.meaning.pooling,
        "regression_bias": bool(model.regression.bias.abs().sum() > 0),
        "objectives": model.objectives,
        "armo": {"version": __version__, "gate_rule": renderer.gate_rule, "scales": model.regression.meta.scales,
                 "feature_meaning": model.meaning.to_json(),
                 "backbone": model.backbone},
        "torch_dtype": "float32",
    })
    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in bb.model.state_dict().items()}
    lm = model.regression.lm_objectives
    if lm:  # the exported forward computes them (modeling_armo.py): the LM head, and lm-pmi's empty prompt
        from .lm_objectives import PMI, empty_prompt, lm_head

        head = lm_head(bb)
        cfg["armo_lm_objectives"] = lm
        if PMI in lm:
            cfg["armo_lm_empty_prompt"] = empty_prompt(bb)
        if not cfg.get("tie_word_embeddings", False):
            tensors["lm_head.weight"] = head.detach().float().contiguous().clone()
        tensors["lm_regression_layer.weight"] = model.regression.lm_weight.contiguous()
    tensors["regression_layer.weight"] = model.regression.weight.contiguous()
    if cfg["regression_bias"]:
        tensors["regression_layer.bias"] = model.regression.bias.contiguous()
    tensors["reward_transform_matrix"] = model.decorrelation.transform.contiguous()
    for k, v in gate.state_dict().items():
        tensors[f"gating.{k}"] = v.detach().contiguous().clone()
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        save_tensors(tensors, tmp / "model.safetensors", {"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        shutil.copyfile(MODELING, tmp / "modeling_armo.py")
        bb.tokenizer.save_pretrained(str(tmp))
    return out


def _weight_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files (sharded or one), each a regular file (a FIFO would hang the read)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) and Path(v).name == v for v in weight_map.values()):
            raise ArmoError(f"{index}: field 'weight_map': expected an object {{tensor: file name}}")
        files = sorted(set(weight_map.values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise ArmoError(f"{folder}: no safetensors weights (pickle checkpoints are not read)")
    out = []
    for fn in files:
        f = check_input_file(folder / fn)
        if not stat.S_ISREG(os.stat(f).st_mode):
            raise ArmoError(f"{f}: not a regular file")
        out.append(f)
    return out


def _head_shapes(files: list[Path], prefixes: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """The head tensors' shapes, from the safetensors headers alone: checked before anything is read or built."""
    out = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    if k.startswith(prefixes):
                        out[k] = tuple(sf.get_slice(k).get_shape())
        except Exception as e:  # safetensors' own error types
            raise ArmoError(f"{f}: not a readable safetensors file ({one_line(e)[:160]})") from None
    return out


def _read_weights(files: list[Path], names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Read only the named head tensors; never unpickle anything."""
    names, out = set(names), {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    if k in names:
                        out[k] = sf.get_tensor(k).float()
        except Exception as e:  # safetensors' own error types
            raise ArmoError(f"{f}: not a readable safetensors file ({one_line(e)[:160]})") from None
    check_finite(files[0].parent, out)
    return out


def _int_field(cfg: dict, key: str, where: Path, lo: int, default: int | None = None) -> int | None:
    v = cfg.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ArmoError(f"{where}: field '{key}': expected an integer >= {lo}, got {json.dumps(v)[:40]}")
    return v


def _sizes(cfg: dict, where: Path) -> tuple[int, int]:
    """num_objectives and hidden_size: what makes a config an ArmoRM checkpoint's."""
    k, d = _int_field(cfg, "num_objectives", where, 1), _int_field(cfg, "hidden_size", where, 1)
    for key, v in (("num_objectives", k), ("hidden_size", d)):
        if v is None:
            raise ArmoError(f"{where}: field '{key}': missing (not an ArmoRM-format checkpoint)")
    return k, d


def _check_heads(shapes: dict[str, tuple[int, ...]], cfg: dict, where: Path, folder: Path) -> tuple[int, int, int, int]:
    """num_objectives, hidden_size, the gate's hidden layers and width, with the config checked against the tensors'
    shapes (from the headers): a config that disagrees with its own weights is refused before anything is built."""
    k, d = _sizes(cfg, where)
    for key in ("regression_layer.weight", "gating.logit_scale"):
        if key not in shapes:
            raise ArmoError(f"{folder}: tensor '{key}' missing (not an ArmoRM-format checkpoint)")
    layers = sorted(int(n.split(".")[2]) for n in shapes if re.fullmatch(r"gating\.layers\.\d+\.weight", n))
    if not layers or layers != list(range(len(layers))):
        raise ArmoError(f"{folder}: the gate's layers (gating.layers.N.weight) are missing or not numbered 0..N")
    found_hidden = len(layers) - 1
    n_hidden = _int_field(cfg, "gating_n_hidden", where, 0, found_hidden)
    if n_hidden != found_hidden:
        raise ArmoError(f"{where}: field 'gating_n_hidden': {n_hidden}, but the weights have {found_hidden} hidden layers")
    found_width = shapes["gating.layers.0.weight"][0] if n_hidden else k
    width = _int_field(cfg, "gating_hidden_dim", where, 1, None) or found_width
    if n_hidden and width != found_width:
        raise ArmoError(f"{where}: field 'gating_hidden_dim': {width}, but gating.layers.0.weight has {found_width} rows")
    expected = {"regression_layer.weight": (k, d), "gating.logit_scale": (1,)}
    for i in range(n_hidden + 1):
        rows, cols = (k if i == n_hidden else width), (d if i == 0 else width)
        expected[f"gating.layers.{i}.weight"] = (rows, cols)
        expected[f"gating.layers.{i}.bias"] = (rows,)
    for name, shape in [("regression_layer.bias", (k,)), ("reward_transform_matrix", (k, k))]:
        if name in shapes:
            expected[name] = shape
    lm = cfg.get("armo_lm_objectives")
    if lm is not None:
        from .lm_objectives import PMI, parse_lm_objectives

        if not isinstance(lm, list) or not all(isinstance(n, str) for n in lm) or not lm:
            raise ArmoError(f"{where}: field 'armo_lm_objectives': expected a list of LM objective names")
        parse_lm_objectives(",".join(lm), f"{where}: field 'armo_lm_objectives'")
        expected["lm_regression_layer.weight"] = (k, len(lm))
        empty = cfg.get("armo_lm_empty_prompt")
        if PMI in lm and (not isinstance(empty, list) or not empty or not all(isinstance(i, int) and not isinstance(i, bool)
                                                                              and i >= 0 for i in empty)):
            raise ArmoError(f"{where}: field 'armo_lm_empty_prompt': expected the token ids of lm-pmi's empty prompt")
    for name, shape in expected.items():
        if shapes.get(name) != shape:
            got = "missing" if name not in shapes else f"shape {shapes[name]}"
            raise ArmoError(f"{folder}: tensor '{name}': {got}, expected {shape} (from {where.name}: num_objectives "
                            f"{k}, hidden_size {d}, {n_hidden} hidden gate layers of {width})")
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise ArmoError(f"{folder}: tensor '{extra[0]}': not part of an ArmoRM gate or head")
    return k, d, n_hidden, width


@contextlib.contextmanager
def _named_as(tmp: Path, source: str) -> Iterator[None]:
    """An error while the model is built names the checkpoint it came from, not the temporary build folder."""
    try:
        yield
    except ArmoError as e:
        raise ArmoError(str(e).replace(str(tmp), f"{source} (as imported)")) from None


HEAD_PREFIXES = ("regression_layer.", "reward_transform_matrix", "gating.", "lm_regression_layer.")


def export_key(folder: Path) -> str:
    """What an export folder's import depends on, by content only: its config, every head tensor as stored (read from
    the safetensors files, however they end) and the backbone's fingerprint; never the folder's path."""
    files = _weight_files(folder)
    heads = _read_weights(files, _head_shapes(files, HEAD_PREFIXES))
    return sha256_json([(folder / "config.json").read_text(encoding="utf-8"), tensors_sha256(heads),
                        folder_fingerprint(folder)])


def load_model(model: str | Path | None = None) -> ArmoModel:
    """The shipped default (None), an armo model directory, or a folder written by `armo export` (imported once
    into armo's cache, keyed by the folder's content, `export_key`): what every command's -m takes. An imported
    model reads its backbone from the folder it was given now, wherever an earlier copy was imported from."""
    if model is None or is_model_dir(Path(model)):
        return ArmoModel.load(model)
    p = Path(model).expanduser()
    if p.is_dir() and is_export_dir(p):
        folder = check_regular_files(p.resolve())
        target = cache_root() / "imported" / export_key(folder)[:32]
        if not is_model_dir(target):
            import_checkpoint(str(folder), target, quiet=True)
        loaded = ArmoModel.load(target)
        loaded.manifest.backbone = {**loaded.manifest.backbone, "name": str(folder)}
        return loaded
    return ArmoModel.load(model)  # its own one-line error names what is missing


def import_checkpoint(source: str, output: str | Path, objectives: list[str] | None = None,
                      force: bool = False, quiet: bool = False) -> ArmoModel:
    """An ArmoRM-format checkpoint (folder or hub id) -> an armo model directory; no remote code runs.

    The directory is built beside OUTPUT and swapped in once it loads; OUTPUT may be new, empty, an armo
    model directory (replaced) or, with `force`, any other folder; never the source itself."""
    p = Path(source).expanduser()
    check_output_dir(output, is_model_dir, "an armo model directory", force, inputs=[p] if p.exists() else [])
    if p.is_dir():
        folder = p.resolve()
        name = str(folder)
    else:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
        except Exception as e:
            raise ArmoError(f"import: {source} is not a folder or a reachable hub id ({type(e).__name__})") from None
        name = source
    check_regular_files(folder)  # before any read: a FIFO among the files would block it
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise ArmoError(f"{folder}: no config.json")
    cfg = read_json_object(cfg_path)
    _sizes(cfg, cfg_path)
    files = _weight_files(folder)
    shapes = _head_shapes(files, HEAD_PREFIXES)
    k, d, n_hidden, hidden_dim = _check_heads(shapes, cfg, cfg_path, folder)
    if objectives:
        if len(objectives) != k:
            raise ArmoError(f"--objectives: {len(objectives)} names for {k} objectives")
        names = objectives
    elif "objectives" in cfg:
        names = cfg["objectives"]
        if not isinstance(names, list) or len(names) != k or not all(isinstance(o, str) and o for o in names) \
                or len(set(names)) != k:
            raise ArmoError(f"{cfg_path}: field 'objectives': expected a list of {k} distinct names")
    elif k == len(ARMORM_OBJECTIVES):
        names = list(ARMORM_OBJECTIVES)
    else:
        names = [f"objective-{i}" for i in range(k)]
    temperature = cfg.get("gating_temperature", 10)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise ArmoError(f"{cfg_path}: field 'gating_temperature': expected a positive number")
    # the gate rule: armo's own exports say which; the published model reads the end-of-turn token
    armo = cfg.get("armo", {})
    if not isinstance(armo, dict):
        raise ArmoError(f"{cfg_path}: field 'armo': expected an object (armo's export record)")
    rule = armo.get("gate_rule", "armo-eot")
    if rule not in GATE_RULES:
        raise ArmoError(f"{cfg_path}: field 'armo.gate_rule': expected one of {', '.join(GATE_RULES)}, got {json.dumps(rule)[:40]}")
    if "scales" in armo and not isinstance(armo["scales"], dict):
        raise ArmoError(f"{cfg_path}: field 'armo.scales': expected an object")
    w = _read_weights(files, shapes)
    T = w.get("reward_transform_matrix", torch.eye(k))
    gate_sd = {key[len("gating."):]: v for key, v in w.items() if key.startswith("gating.")}
    fingerprint = folder_fingerprint(folder)
    backbone = {"name": name, "kind": "folder" if p.is_dir() else "hub", "fingerprint": fingerprint,
                "hidden_size": d, "model_type": cfg.get("model_type")}
    scales = armo.get("scales") or {o: {"lo": 0.0, "hi": 1.0, "transform": "linear", "declared": False} for o in names}
    # what the features mean: the checkpoint folder is the backbone now; layer, template and gate rule
    # come from an armo export's record, else the published model's (last layer, end-of-turn token)
    kept = armo.get("feature_meaning") if isinstance(armo.get("feature_meaning"), dict) else {}
    layer = cfg.get("armo_feature_layer", kept.get("layer", -1))
    if isinstance(layer, bool) or not isinstance(layer, int) or layer >= 0:
        raise ArmoError(f"{cfg_path}: field 'armo_feature_layer': expected a negative integer (-1 = the last layer)")
    pooling = cfg.get("armo_feature_pooling", kept.get("pooling", "last"))
    if pooling not in POOLINGS:
        raise ArmoError(f"{cfg_path}: field 'armo_feature_pooling': expected one of {', '.join(POOLINGS)}, got {pooling!r}")
    meaning = FeatureMeaning.from_json({**kept, "backbone": name, "fingerprint": fingerprint, "hidden_size": d,
                                        "gate_rule": rule, "dtype": None, "layer": layer, "pooling": pooling},
                                       str(cfg_path))
    with atomic_dir(output) as out, _named_as(out, name):
        bias = w.get("regression_layer.bias", torch.zeros(k))
        reg_meta = {"kind": "regression", "armo_version": __version__, "objectives": names, "scales": scales,
                    "backbone": backbone, "hidden_size": d, "imported_from": name, "metrics": {},
                    "feature_meaning": meaning.without_gate_rule().to_json(),
                    "lm_objectives": cfg.get("armo_lm_objectives")}
        reg_tensors = {"weight": w["regression_layer.weight"], "bias": bias}
        if "lm_regression_layer.weight" in w:
            reg_tensors["lm_weight"] = w["lm_regression_layer.weight"]
        save_artifact(out / PART_FILES["regression"], reg_tensors, RegressionMeta.from_json(reg_meta, name))
        from .heads import Regression

        rh = regression_hash(Regression.load(out / PART_FILES["regression"]))
        save_artifact(out / PART_FILES["decorrelation"], {"transform": T, "lambdas": torch.zeros(k)},
                      DecorrelationMeta.from_json(
                          {"armo_version": __version__, "objectives": names, "backbone": backbone, "regression_hash": rh,
                           "imported_from": name, "feature_meaning": meaning.without_gate_rule().to_json()}, name))
        save_artifact(out / PART_FILES["gating"], gate_sd,
                      GatingMeta.from_json(
                          {"armo_version": __version__, "objectives": names, "backbone": backbone, "regression_hash": rh,
                           "transform_hash": transform_hash(T), "imported_from": name,
                           "feature_meaning": meaning.to_json(), "gate_rule": rule,
                           "config": {"in_features": d, "hidden_dim": hidden_dim, "n_hidden": n_hidden,
                                      "temperature": float(temperature), "dropout": 0.0}}, name))
        write_manifest(out, {"armo_version": __version__, "backbone": backbone, "gate_rule": rule,
                             "feature_meaning": meaning.to_json(), "objectives": names,
                             "scales": scales, "hidden_size": d, "imported_from": name,
                             "parts": dict(PART_FILES)})
        ArmoModel.load(out)
    info(f"{name}: {k} objectives, gate rule {rule} -> {output}", quiet, done="imported")
    return ArmoModel.load(output)
