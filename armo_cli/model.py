"""A model is one directory: `armo.json` beside the regression, decorrelation and gating artifacts."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Callable, TypeVar
from pathlib import Path

import torch

from .version import __version__
from .artifacts import Manifest
from .heads import Decorrelation, Gating, Regression, regression_hash, transform_hash
from .errors import ArmoError
from .console import info
from .jsonl import check_input_file, read_json_object
from .outputs import atomic_dir, atomic_path, check_output_dir
from .provenance import FeatureMeaning, require_compatible

T = TypeVar("T")
MANIFEST = "armo.json"
PART_FILES = {"regression": "regression.safetensors", "decorrelation": "decorrelation.safetensors",
              "gating": "gating.safetensors"}
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def is_model_dir(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(model_dir: str | Path) -> Manifest:
    d = Path(model_dir)
    if d.exists() and not d.is_dir():
        raise ArmoError(f"{model_dir}: is a file, expected an armo model directory")
    p = d / MANIFEST
    if not p.exists():
        raise ArmoError(f"{model_dir}: not an armo model directory (no {MANIFEST})")
    raw = read_json_object(p)
    if not isinstance(raw.get("parts", {}), dict):
        raise ArmoError(f"{p}: field 'parts': expected an object {{part: file name}}")
    m = Manifest.from_json(raw, str(p))
    for k, v in m.parts.items():
        if k not in PART_FILES or not isinstance(v, str) or Path(v).name != v:
            raise ArmoError(f"{p}: field 'parts.{k}': expected one of {', '.join(PART_FILES)} naming a file in the folder")
    return m


def write_manifest(model_dir: str | Path, manifest: Manifest | dict) -> None:
    data = manifest.to_json() if isinstance(manifest, Manifest) else manifest
    with atomic_path(Path(model_dir) / MANIFEST) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def check_model_dir(model_dir: str | Path, option: str = "--model-dir") -> None:
    """A folder that --model-dir may add parts to: new, empty, or an armo model directory."""
    check_output_dir(model_dir, is_model_dir, "an armo model directory")


def register_part(model_dir: str | Path, part: str, artifact: str | Path) -> Path:
    """Copy a fitted artifact into a model directory and record it in the manifest."""
    d = Path(model_dir)
    check_model_dir(d)
    d.mkdir(parents=True, exist_ok=True)
    target = d / PART_FILES[part]
    if Path(artifact).resolve() != target.resolve():
        with atomic_path(target) as tmp:
            shutil.copyfile(artifact, tmp)
    manifest = read_manifest(d) if (d / MANIFEST).exists() else Manifest()
    manifest.parts[part] = PART_FILES[part]
    manifest.armo_version = __version__
    if part == "regression":
        reg = Regression.load(target)
        manifest.backbone, manifest.objectives = reg.meta.backbone, reg.objectives
        manifest.scales, manifest.hidden_size = reg.meta.scales, reg.meta.hidden_size
    if part == "gating":
        # the model reads f(x) where its gate was trained to read it: the gate rule is the gate's
        meaning = FeatureMeaning.of(Gating.load(target).meta, str(target))
        manifest.gate_rule, manifest.feature_meaning = meaning.gate_rule, meaning.to_json()
        manifest.gen_suffix = list(meaning.gen_suffix) if meaning.gen_suffix else None
    write_manifest(d, manifest)
    return target


def fit_into_model_dir(fit: Callable[[], T], output: str, model_dir: str | None, part: str) -> T:
    """The one way a fit stage meets --model-dir: the folder is checked before the fit (a folder armo may
    not write is refused up front), the fitted artifact registered after it."""
    if model_dir:
        check_model_dir(model_dir)
    result = fit()
    if model_dir:
        register_part(model_dir, part, output)
        info(f"registered in {model_dir}", done=part)
    return result


# A model may carry the LoRA adapter its backbone is (stage 0), in this folder of its own: the manifest then names the
# backbone by this relative name, read as MODEL/backbone-adapter wherever the model directory is.
ADAPTER_DIR = "backbone-adapter"


def assemble(output: str | Path, regression: str, gating: str, decorrelation: str | None = None,
             force: bool = False, ship_adapter: bool = False) -> "ArmoModel":
    """Build a model directory from three artifacts (checked for agreement). The folder is built beside
    the output and takes its place only once it loads; an earlier model directory there is replaced.
    `ship_adapter`: the heads were fitted on a LoRA adapter backbone (stage 0); its files are copied into the model
    (ADAPTER_DIR), so that the model scores wherever it goes (the adapter's base is named in its config)."""
    for a in (regression, gating, decorrelation):
        if a is not None:
            check_input_file(a)
    check_output_dir(output, is_model_dir, "an armo model directory", force)
    with atomic_dir(output) as tmp:
        register_part(tmp, "regression", regression)
        if decorrelation:
            register_part(tmp, "decorrelation", decorrelation)
        register_part(tmp, "gating", gating)
        if ship_adapter:
            _copy_adapter(tmp)
        ArmoModel.load(tmp)
    return ArmoModel.load(output)


def _copy_adapter(model_dir: Path) -> None:
    from .backbones import load_backbone
    from .lora import CONFIG, WEIGHTS, is_adapter_dir

    manifest = read_manifest(model_dir)
    bb = manifest.backbone
    src = Path(str(bb.get("name")))
    if bb.get("kind") != "adapter" or not is_adapter_dir(src):
        raise ArmoError(f"--ship-adapter: the regression was fitted on {bb.get('name')}, not on a LoRA adapter folder "
                        f"that is here (armo tune-backbone writes one)")
    if load_backbone(str(src), defer_weights=True).fingerprint != bb.get("fingerprint"):
        raise ArmoError(f"--ship-adapter: {src} is not the adapter the regression was fitted on (its fingerprint differs)")
    dst = model_dir / ADAPTER_DIR
    dst.mkdir()
    for name in (CONFIG, WEIGHTS, "armo-stage0.json"):  # what loading needs, and its training record
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    manifest.backbone = {**bb, "name": ADAPTER_DIR}
    write_manifest(model_dir, manifest)


@dataclass
class ArmoModel:
    """Regression W, transform T and gate g, with the manifest that ties them to a backbone."""

    path: Path
    manifest: Manifest
    regression: Regression
    decorrelation: Decorrelation
    gating: Gating

    @property
    def objectives(self) -> list[str]:
        return self.regression.objectives

    @property
    def backbone(self) -> dict:
        """The backbone the model reads (a shipped adapter by its place inside the model directory)."""
        bb = self.manifest.backbone
        if bb.get("kind") == "adapter" and bb.get("name") == ADAPTER_DIR:
            return {**bb, "name": str(self.path / ADAPTER_DIR)}
        return bb

    @property
    def meaning(self) -> FeatureMeaning:
        """The features this model reads, gate rule included (older models: from the manifest)."""
        src = self.gating.meta if self.gating.meta.feature_meaning is not None else self.manifest
        return FeatureMeaning.of(src, str(self.path))

    @property
    def gate_rule(self) -> str:
        return self.meaning.gate_rule or "generation-prompt"

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> "ArmoModel":
        d = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
        m = read_manifest(d)
        parts = m.parts
        for need in ("regression", "gating"):
            if need not in parts:
                raise ArmoError(f"{d}: the model has no {need} part (fit it with --model-dir {d})")
            if not (d / parts[need]).exists():
                raise ArmoError(f"{d}: {need} part {parts[need]} is missing")
        reg = Regression.load(d / parts["regression"])
        if "decorrelation" in parts:
            if not (d / parts["decorrelation"]).exists():
                raise ArmoError(f"{d}: decorrelation part {parts['decorrelation']} is missing")
            dec = Decorrelation.load(d / parts["decorrelation"])
        else:
            dec = Decorrelation.identity(reg.objectives)
        gat = Gating.load(d / parts["gating"])
        rh = regression_hash(reg)
        if m.objectives != reg.objectives:
            raise ArmoError(f"{d}: regression part: objectives {reg.objectives} differ from the manifest's {m.objectives}")
        if m.backbone.get("fingerprint") != reg.meta.backbone.get("fingerprint"):
            raise ArmoError(f"{d}: regression part: fitted on another backbone than the manifest names")
        if dec.meta.objectives != reg.objectives:
            raise ArmoError(f"{d}: decorrelation part: objectives {dec.meta.objectives} differ from the regression's")
        if dec.meta.regression_hash not in (None, rh):
            raise ArmoError(f"{d}: decorrelation part: fitted on another regression than this model's")
        if gat.meta.objectives != reg.objectives:
            raise ArmoError(f"{d}: gating part: objectives {gat.meta.objectives} differ from the regression's")
        if gat.meta.regression_hash != rh:
            raise ArmoError(f"{d}: gating part: trained on another regression than this model's")
        if gat.meta.transform_hash not in (None, transform_hash(dec.transform)):
            raise ArmoError(f"{d}: gating part: trained with another decorrelation transform than this model's")
        in_features = gat.meta.shape(f"{d}: gating part").in_features
        if in_features != reg.weight.shape[1]:
            raise ArmoError(f"{d}: gating part: hidden size {in_features} != regression's {reg.weight.shape[1]}")
        if gat.meta.feature_meaning is not None:
            gm = FeatureMeaning.of(gat.meta, f"{d}: gating part")
            require_compatible(reg.meaning, gm.without_gate_rule(), f"{d}: regression part", f"{d}: gating part")
            if m.gate_rule not in (None, gm.gate_rule):
                raise ArmoError(f"{d}: the manifest's gate rule {m.gate_rule} differs from the gate's {gm.gate_rule}")
        return cls(d, m, reg, dec, gat)

    @torch.no_grad()
    def explain(self, prompt_features: torch.Tensor, response_features: torch.Tensor,
                weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Everything `score` reports. prompt [N,d], responses [N,m,d] -> rewards [N,m,k] on [0,1],
        gating [N,k], coefficients [N,k] (= g T^T, so score = coefficients . rewards), score [N,m].

        Each distinct feature row goes through the heads once: a matmul's result for a row can depend on
        where the row sits in the batch (the last rows of a block take another kernel), and equal inputs
        must give bit-equal rewards (identical responses tie exactly)."""
        N, m, d = response_features.shape
        T = self.decorrelation.transform
        k = T.shape[0]

        def per_response(x: torch.Tensor) -> torch.Tensor:
            r = self.regression.rewards(x)
            return torch.cat([r, r @ T], -1)

        def per_prompt(g: torch.Tensor) -> torch.Tensor:
            return torch.cat([g, g @ T.T], -1)

        rr = _distinct_rows(response_features.reshape(N * m, d), per_response).reshape(N, m, 2 * k)
        if weights is None:
            gc = _distinct_rows(prompt_features.float(), lambda p: per_prompt(self.gating.gate(p)))
        else:
            gc = per_prompt(weights.float().reshape(1, k)).expand(N, -1)
        r, rT = rr[..., :k], rr[..., k:]
        g, coef = gc[:, :k], gc[:, k:]
        score = (g[:, None, :] * rT).sum(-1)
        return {"rewards": r, "gating": g, "coefficients": coef, "score": score}


def _distinct_rows(x: torch.Tensor, f) -> torch.Tensor:
    """f applied to the distinct rows of x [n,d] only, its rows [n,...] returned in x's order."""
    if x.shape[0] <= 1:
        return f(x)
    u, inverse = torch.unique(x, dim=0, return_inverse=True)
    return f(u)[inverse]
