"""Adapters are downloaded and shared like models, and tune-backbone writes into folders and checkpoints: nothing in
them is trusted (#51 §5, §6, §10). Each hostile folder is given as `--backbone` to a real command: exit 2, one line
naming the file and the field, no hang, nothing written; tune-backbone never replaces a folder armo did not write
and never resumes from a checkpoint that was changed."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import armo, armo_process, pair_rows, write_jsonl

pytest.importorskip("peft", reason="stage 0 needs peft (pip install peft)")

CONF, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@pytest.fixture(scope="module")
def adapter(tiny_backbone, tmp_path_factory) -> Path:
    """A real adapter (rank 8) that tune-backbone wrote on the tiny backbone."""
    d = tmp_path_factory.mktemp("adapter")
    rows = write_jsonl(d / "pairs.jsonl", pair_rows(16))
    r = armo("tune-backbone", rows, "-o", d / "tuned", "--backbone", tiny_backbone, "--device", "cpu", "--batch-pairs", "8",
             "--eval-pairs", "0", "-q")
    assert r.code == 0, r.stderr
    return d / "tuned"


def _copy(adapter: Path, to: Path, **config) -> Path:
    shutil.copytree(adapter, to)
    conf = json.loads((to / CONF).read_text())
    (to / CONF).write_text(json.dumps({**conf, **config}))
    return to


def _edit_weights(folder: Path, edit) -> None:
    w = load_file(str(folder / WEIGHTS))
    edit(w)
    save_file(w, str(folder / WEIGHTS))


def _first_module(w: dict) -> str:
    return sorted(k for k in w if k.endswith("lora_A.weight"))[0][: -len("lora_A.weight")]


def _self_base(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d, base_model_name_or_path=".")
    return d, "names an adapter folder"


def _self_base_absolute(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d, base_model_name_or_path=str(d))
    return d, "names an adapter folder"


def _cycle(a: Path, d: Path) -> tuple[Path, str]:
    one, two = d / "one", d / "two"
    _copy(a, one, base_model_name_or_path=str(two))
    _copy(a, two, base_model_name_or_path=str(one))
    return one, "names an adapter folder"


def _ranks_disagree(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d)
    m = None

    def edit(w):
        nonlocal m
        m = _first_module(w)
        w[m + "lora_A.weight"] = w[m + "lora_A.weight"][:4].contiguous()  # rank 4 against lora_B's 8
    _edit_weights(d, edit)
    return d, "are not of rank 8, as adapter_config.json's field 'r' says"


def _config_lies_about_rank(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d, r=1000)  # the tensors have rank 8: merged with the config's scale the features would silently change
    return d, "are not of rank 1000"


def _huge_rank(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d, r=40)

    def edit(w):
        for k in list(w):
            if k.endswith("lora_A.weight"):
                w[k] = torch.zeros(40, w[k].shape[1])
            elif k.endswith("lora_B.weight"):
                w[k] = torch.zeros(w[k].shape[0], 40)
    _edit_weights(d, edit)
    return d, "rank 40 above the weight's own"


def _alpha_not_finite(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d)
    (d / CONF).write_text((d / CONF).read_text().replace('"lora_alpha": 16.0', '"lora_alpha": NaN'))
    assert "NaN" in (d / CONF).read_text()
    return d, "fields 'r' and 'lora_alpha': expected a positive rank and a number"


def _pickle_only(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d)
    (d / WEIGHTS).unlink()

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))
    (d / "adapter_model.bin").write_bytes(pickle.dumps(Boom()))
    return d, "no adapter_model.safetensors (armo reads safetensors adapters only)"


def _base_is_a_device(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d, base_model_name_or_path="/dev/zero")
    return d, "--backbone /dev/zero: no such file or folder"


def _base_outside_missing(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d, base_model_name_or_path="../../../nowhere/model")
    return d, "--backbone ../../../nowhere/model: no such file or folder"


def _base_is_a_fifo(a: Path, d: Path) -> tuple[Path, str]:
    d.mkdir()
    os.mkfifo(d / "model.gguf")
    _copy(a, d / "adapter", base_model_name_or_path=str(d / "model.gguf"))
    return d / "adapter", f"--backbone {d / 'model.gguf'}: no such file or folder"


def _weights_fifo(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d)
    (d / WEIGHTS).unlink()
    os.mkfifo(d / WEIGHTS)
    return d, f"{d / WEIGHTS}: not a regular file (a FIFO, a device or a socket)"


def _weights_dev_zero(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d)
    (d / WEIGHTS).unlink()
    (d / WEIGHTS).symlink_to("/dev/zero")
    return d, f"{d / WEIGHTS}: not a regular file (a FIFO, a device or a socket)"


def _config_fifo_beside(a: Path, d: Path) -> tuple[Path, str]:
    _copy(a, d)
    os.mkfifo(d / "notes")
    return d, f"{d / 'notes'}: not a regular file (a FIFO, a device or a socket); armo reads only regular files " \
              f"from an adapter folder"


BLOCKING = ("base a FIFO", "weights a FIFO", "weights a link to /dev/zero", "a FIFO beside")  # run in a child process
HOSTILE = {"base is itself": _self_base, "base is itself, absolute": _self_base_absolute, "two name each other": _cycle,
           "lora_A rank 4, lora_B rank 8": _ranks_disagree, "config r 1000, tensors rank 8": _config_lies_about_rank,
           "rank above the weight's": _huge_rank, "lora_alpha NaN": _alpha_not_finite, "a pickle only": _pickle_only,
           "base /dev/zero": _base_is_a_device, "base outside, missing": _base_outside_missing,
           "base a FIFO": _base_is_a_fifo, "weights a FIFO": _weights_fifo, "weights a link to /dev/zero": _weights_dev_zero,
           "a FIFO beside": _config_fifo_beside}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in BLOCKING else c for c in HOSTILE])
def test_a_hostile_adapter_is_one_line_and_exit_2(adapter, tmp_path, case):
    folder, message = HOSTILE[case](adapter, tmp_path / "hostile")
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "response": "b"}])
    out = tmp_path / "f.st"
    run = (lambda *a: armo_process(*a, timeout=90)) if case in BLOCKING else armo
    r = run("extract", rows, "--backbone", folder, "-o", out, "--device", "cpu", "-q")
    assert r.code == 2, (case, r.code, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], (case, r.stderr)
    assert not out.exists() and not list(tmp_path.glob("f.st*")) and not Path("PWNED").exists()


def test_unknown_target_modules_are_one_line(tiny_backbone, tmp_path):
    """PEFT's own NoMatchingPeftModuleError was exit 3, "a bug in armo"."""
    rows = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    r = armo("tune-backbone", rows, "-o", tmp_path / "a", "--backbone", tiny_backbone, "--device", "cpu",
             "--target-modules", "nosuch_proj", "-q")
    assert r.code == 2 and r.stderr.strip() == "error: --target-modules: nosuch_proj not in the backbone's blocks", r.stderr
    assert not (tmp_path / "a").exists()


# --- §5 tune-backbone never replaces a folder armo did not write ----------------------------------------------------


def test_tune_backbone_refuses_a_users_own_adapter_folder(adapter, tiny_backbone, tmp_path):
    """A PEFT adapter folder of the user's (its config, a README and notes of their own) was deleted and rewritten."""
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copyfile(adapter / CONF, mine / CONF)
    shutil.copyfile(adapter / WEIGHTS, mine / WEIGHTS)
    (mine / "README.md").write_text("my adapter\n")
    (mine / "notes.txt").write_text("notes\n")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    rows = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    args = ["tune-backbone", rows, "-o", mine, "--backbone", tiny_backbone, "--device", "cpu", "--eval-pairs", "0", "-q"]
    r = armo(*args)
    assert r.code == 2 and r.stderr.strip() == (f"error: {mine}: folder is not empty and is not an adapter folder that "
                                                f"tune-backbone wrote; give a new folder, or --force to replace it")
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    assert armo(*args, "--force").code == 0
    assert not (mine / "notes.txt").exists() and (mine / "armo-stage0.json").is_file()
    assert armo(*args, "--seed", "1").code == 0  # now armo's own: replaced without --force


# --- §10 the checkpoint is checksummed and sealed ---------------------------------------------------------------


def _interrupted(tiny_backbone, tmp_path, monkeypatch, out: str = "tuned"):
    import armo_cli.stage0 as stage0
    from armo_cli.configs import TuneConfig

    rows = tmp_path / "pairs.jsonl"
    if not rows.exists():
        write_jsonl(rows, pair_rows(24))
    real, saves = stage0._save_checkpoint, []

    def stop(*a, **k):
        real(*a, **k)
        saves.append(1)
        raise KeyboardInterrupt  # after the first checkpoint (step 2)

    cfg = TuneConfig(input=str(rows), output=str(tmp_path / out), backbone=str(tiny_backbone), device="cpu", quiet=True,
                     batch_pairs=4, epochs=2, lr=3e-3, save_every=2, eval_pairs=0)
    monkeypatch.setattr(stage0, "_save_checkpoint", stop)
    with pytest.raises(KeyboardInterrupt):
        stage0.tune_backbone(cfg)
    monkeypatch.setattr(stage0, "_save_checkpoint", real)
    return cfg, tmp_path / f"{out}.parts" / "checkpoint.safetensors"


def _tamper(path: Path, how: str) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    record = json.loads(meta["armo"])
    if how == "head shifted":  # the tensors rewritten, the metadata (checksum, seal) as it was
        last = max((k for k in tensors if k.startswith("param.")), key=lambda k: int(k.split(".")[1]))
        tensors[last] = tensors[last] + 0.5
    elif how == "step count edited":  # the metadata rewritten, the tensors as they were
        record["step"] = 32
        meta["armo"] = json.dumps(record)
    elif how == "tensor removed":
        tensors.pop("param.0")
    elif how == "forged with armo's own functions":  # checksum and an unkeyed seal recomputed by whoever edited it
        import hashlib

        from armo_cli.artifact_files import CHECKSUM_KEY, SEAL_KEY, tensors_sha256

        tensors["param.0"] = tensors["param.0"] + 0.5
        record.pop(SEAL_KEY)
        record[CHECKSUM_KEY] = tensors_sha256(tensors)
        record[SEAL_KEY] = hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=True).encode()).hexdigest()
        meta["armo"] = json.dumps(record)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["head shifted", "step count edited", "tensor removed", "forged with armo's own functions"])
def test_a_changed_checkpoint_is_never_resumed_from(tiny_backbone, tmp_path, monkeypatch, capsys, how):
    import dataclasses

    from armo_cli.stage0 import tune_backbone

    cfg, ckpt = _interrupted(tiny_backbone, tmp_path, monkeypatch)
    ref = tune_backbone(dataclasses.replace(cfg, output=str(tmp_path / "ref")))  # uninterrupted
    _tamper(ckpt, how)
    capsys.readouterr()
    rep = tune_backbone(dataclasses.replace(cfg, resume=True))
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert f"{ckpt}:" in err and "training starts over" in err, err
    assert rep["steps"] == ref["steps"] and rep["train_losses"] == ref["train_losses"]  # all 12 steps, from the start
    want, got = load_file(str(tmp_path / "ref" / WEIGHTS)), load_file(str(tmp_path / "tuned" / WEIGHTS))
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_an_intact_checkpoint_still_resumes(tiny_backbone, tmp_path, monkeypatch, capsys):
    import dataclasses

    from armo_cli.stage0 import tune_backbone

    cfg, ckpt = _interrupted(tiny_backbone, tmp_path, monkeypatch)
    capsys.readouterr()
    rep = tune_backbone(dataclasses.replace(cfg, resume=True, quiet=False))
    assert "resuming at" in capsys.readouterr().err
    assert rep["steps"] == 12 and len(rep["train_losses"]) == 12
