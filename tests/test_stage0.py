"""Stage 0 (stage0.py, lora.py): a LoRA adapter tuned with a Bradley-Terry loss lowers that loss, resumes to the same
weights, loads as a backbone with its own fingerprint, equals PEFT's own forward, and exports merged weights."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from armo_cli.backbones import load_backbone
from armo_cli.configs import TuneConfig
from armo_cli.errors import ArmoError
from armo_cli.features import Features
from armo_cli.forward import encode_trees
from armo_cli.rendering import Renderer
from armo_cli.rows import Source, as_pairs, iter_examples
from armo_cli.stage0 import tune_backbone

from tests.helpers import build_model, check_export_round_trip, pair_rows, rating_rows, write_jsonl

peft = pytest.importorskip("peft", reason="stage 0 needs peft (pip install peft)")


def tune(tmp_path, backbone, out="tuned", **kw):
    rows = tmp_path / "pairs.jsonl"
    if not rows.exists():
        write_jsonl(rows, pair_rows(40))
    cfg = TuneConfig(input=str(rows), output=str(tmp_path / out), backbone=str(backbone), device="cpu", quiet=True,
                     **{"batch_pairs": 8, "epochs": 4, "lr": 3e-3, "save_every": 3, **kw})
    return tune_backbone(cfg)


@pytest.fixture(scope="module")
def tuned(tiny_backbone, tmp_path_factory):
    d = tmp_path_factory.mktemp("stage0")
    return d, tune(d, tiny_backbone)


def test_a_tiny_run_lowers_the_bradley_terry_loss_on_its_pairs(tuned):
    d, rep = tuned
    assert rep["pairs"] == 40 and rep["steps"] == 20 and len(rep["train_losses"]) == 20
    assert rep["loss_before"] == pytest.approx(0.6931, abs=1e-4)  # the head starts at zero: every pair a tie
    assert rep["loss_after"] < rep["loss_before"] - 0.02 and rep["accuracy_after"] > 0.6
    assert rep["train_tokens_per_second"] > 0
    conf = json.loads((d / "tuned" / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 8 and conf["base_model_name_or_path"].endswith("tiny-llama")
    assert not (d / "tuned.parts").exists()


def test_a_run_at_a_middle_layer_tunes_only_the_blocks_below_it_and_its_head_reads_what_extract_reads(tuned, tiny_backbone,
                                                                                                     tmp_path):
    """--layer: the head reads the layer the features will come from (here after block 0 of 2, mean pooling); block 1
    gets no adapter. The report's loss is the head on the features extract reads through the adapter."""
    (tmp_path / "pairs.jsonl").write_text((tuned[0] / "pairs.jsonl").read_text())
    rep = tune(tmp_path, tiny_backbone, layer=1, pooling="mean", lr=3e-2)
    assert rep["settings"]["layer"] == -2 and rep["loss_after"] < rep["loss_before"] - 0.02
    folder = tmp_path / "tuned"
    keys = load_file(str(folder / "adapter_model.safetensors")).keys()
    assert keys and all(".layers.0." in k for k in keys)
    assert json.loads((folder / "adapter_config.json").read_text())["target_modules"].startswith(r"layers\.(0)\.")
    bb = load_backbone(str(folder), device="cpu", dtype="fp32")
    trees = [Renderer(bb.tokenizer).tokenize(ex, i)
             for i, ex in enumerate(as_pairs(iter_examples(Source(str(tmp_path / "pairs.jsonl")))))]
    feats = encode_trees(bb, trees, 10_000, layer=1, pooling="mean")[1]  # [N,2,d]
    head = load_file(str(folder / "reward_head.safetensors"))
    r = feats @ head["weight"][0] + head["bias"][0]
    loss = float(-torch.nn.functional.logsigmoid(r[:, 0] - r[:, 1]).mean())
    assert loss == pytest.approx(rep["loss_after"], abs=1e-4)
    assert float((r[:, 0] > r[:, 1]).float().mean()) == pytest.approx(rep["accuracy_after"])
    with pytest.raises(ArmoError, match="--layer 0: that is the embeddings"):
        tune(tmp_path, tiny_backbone, out="t0", layer=0)


def test_the_head_can_start_from_a_fitted_preference_objective(tuned, tiny_backbone, tmp_path):
    """--init-head REGRESSION: the head starts as the regression's preference objective in its own units (its logit),
    so before any step the loss is that objective's on the pairs; a regression read elsewhere is refused."""
    from tests.helpers import cli

    (tmp_path / "pairs.jsonl").write_text((tuned[0] / "pairs.jsonl").read_text())
    write_jsonl(tmp_path / "r.jsonl", rating_rows(60))
    b = ["-b", tiny_backbone, "--device", "cpu", "-q", "--layer", "1", "--pooling", "mean"]
    cli("extract", tmp_path / "r.jsonl", "-o", tmp_path / "r.st", *b)
    cli("extract", tmp_path / "pairs.jsonl", "-o", tmp_path / "p.st", *b)
    cli("fit-regression", tmp_path / "r.st", "--pairs", tmp_path / "p.st", "--preference-objective", "preference",
        "--preference-folds", "3", "-o", tmp_path / "reg.st", "-q")
    rep = tune(tmp_path, tiny_backbone, layer=1, pooling="mean", init_head=str(tmp_path / "reg.st"), epochs=1)
    from armo_cli.heads import Regression

    reg = Regression.load(tmp_path / "reg.st")
    j, sc = reg.objectives.index("preference"), reg.meta.scales["preference"]
    r = reg.rewards(Features.load(tmp_path / "p.st").tensors["response_features"])[..., j] * (sc["hi"] - sc["lo"])
    want = float(-torch.nn.functional.logsigmoid(r[:, 0] - r[:, 1]).mean())
    assert rep["loss_before"] == pytest.approx(want, abs=1e-4) and abs(rep["loss_before"] - 0.693147) > 1e-4  # not zero-init
    assert rep["settings"]["init_head"]["objective"] == "preference"
    with pytest.raises(ArmoError, match="differs from"):  # fitted at layer 1, tuned at the last layer
        tune(tmp_path, tiny_backbone, out="t2", pooling="mean", init_head=str(tmp_path / "reg.st"))
    with pytest.raises(ArmoError, match="has no objective 'nope'"):
        tune(tmp_path, tiny_backbone, out="t3", layer=1, pooling="mean", init_head=f"{tmp_path / 'reg.st'}:nope")


def test_an_interrupted_run_resumes_to_the_same_adapter(tuned, tiny_backbone, tmp_path, monkeypatch):
    import armo_cli.stage0 as stage0

    real, saves = stage0._save_checkpoint, []

    def stop(*a, **k):
        real(*a, **k)
        saves.append(1)
        if len(saves) == 2:  # after step 6's checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(stage0, "_save_checkpoint", stop)
    (tmp_path / "pairs.jsonl").write_text((tuned[0] / "pairs.jsonl").read_text())
    with pytest.raises(KeyboardInterrupt):
        tune(tmp_path, tiny_backbone)
    assert (tmp_path / "tuned.parts" / "checkpoint.safetensors").exists() and not (tmp_path / "tuned").exists()
    monkeypatch.setattr(stage0, "_save_checkpoint", real)
    rep = tune(tmp_path, tiny_backbone, resume=True)
    want = load_file(str(tuned[0] / "tuned" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "tuned" / "adapter_model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert rep["train_losses"] == tuned[1]["train_losses"] and rep["loss_after"] == tuned[1]["loss_after"]
    # --resume on the finished adapter: up to date, nothing rewritten; other settings train again
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "tuned").iterdir()}
    assert tune(tmp_path, tiny_backbone, resume=True) == rep
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "tuned").iterdir()} == before
    assert tune(tmp_path, tiny_backbone, resume=True, epochs=1)["steps"] == 5


@pytest.mark.parametrize("fast", [False, True])
def test_an_adapter_is_a_backbone_equal_to_peft_s_own_forward(tuned, tiny_backbone, fast):
    from peft import PeftModel
    from transformers import AutoModel

    folder = tuned[0] / "tuned"
    base = load_backbone(str(tiny_backbone), device="cpu", dtype="fp32")
    bb = load_backbone(str(folder), device="cpu", dtype="fp32", fast=fast)
    assert bb.spec.kind == "adapter" and bb.fingerprint.startswith("lora-") and bb.fingerprint != base.fingerprint
    assert bb.info()["fingerprint"] == bb.fingerprint
    r = Renderer(base.tokenizer)
    trees = [r.tokenize(ex, i) for i, ex in enumerate(as_pairs(iter_examples(Source(str(tuned[0] / "pairs.jsonl")))))]
    own = PeftModel.from_pretrained(AutoModel.from_pretrained(str(tiny_backbone), dtype=torch.float32), str(folder)).eval()
    want = encode_trees(dataclasses.replace(base, model=own), trees, 10_000, layer=-1)[1]
    got = encode_trees(bb, trees, 10_000, layer=-1)[1]
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    assert float((got - encode_trees(base, trees, 10_000, layer=-1)[1]).abs().max()) > 1e-2  # it did change them


def test_a_model_on_an_adapter_exports_merged_weights(tuned, tmp_path):
    folder = tuned[0] / "tuned"
    d = build_model(tmp_path, write_jsonl(tmp_path / "r.jsonl", rating_rows(60)), write_jsonl(tmp_path / "p.jsonl", pair_rows(30)),
                    folder)
    cfg = check_export_round_trip(d / "model", d / "p.st", d / "p.jsonl", tmp_path)  # armo's scores, exported: 1e-4
    assert cfg["armo"]["backbone"]["fingerprint"].startswith("lora-")
    hf = load_file(str(tmp_path / "hf" / "model.safetensors"))
    base = load_file(str(json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] + "/model.safetensors"))
    q = "layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(hf[f"model.{q}"], base[q])  # the merged weights, not the base's


def test_a_model_ships_its_adapter_and_scores_wherever_it_goes(tuned, tmp_path):
    """`assemble --ship-adapter` copies the adapter the heads were fitted on into the model (backbone-adapter/, named
    relatively in the manifest): moved elsewhere, with the original adapter folder gone, it gives the same scores."""
    import shutil

    from tests.helpers import armo, cli

    adapter = tmp_path / "adapter"
    shutil.copytree(tuned[0] / "tuned", adapter)
    d = build_model(tmp_path, write_jsonl(tmp_path / "r.jsonl", rating_rows(60)), write_jsonl(tmp_path / "p.jsonl", pair_rows(30)),
                    adapter)
    rows = d / "p.jsonl"
    before = cli("score", "-m", d / "model", rows, "--device", "cpu", "-q").stdout
    shipped = tmp_path / "shipped"
    cli("assemble", shipped, "-r", d / "reg.st", "-t", d / "dec.st", "-g", d / "gate.st", "--ship-adapter")
    manifest = json.loads((shipped / "armo.json").read_text())
    assert manifest["backbone"]["name"] == "backbone-adapter" and manifest["backbone"]["fingerprint"].startswith("lora-")
    assert sorted(p.name for p in (shipped / "backbone-adapter").iterdir()) == ["adapter_config.json",
                                                                                 "adapter_model.safetensors",
                                                                                 "armo-stage0.json"]
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(shipped, moved)
    shutil.rmtree(adapter)  # the folder the heads were fitted on is gone
    assert cli("score", "-m", moved, rows, "--device", "cpu", "-q").stdout == before
    # without the flag the model names the adapter's folder, which is gone now: refused in one line
    r = armo("score", "-m", d / "model", rows, "--device", "cpu", "-q")
    assert r.code != 0 and "adapter" in r.stderr and "Traceback" not in r.stderr
    # a regression fitted on a plain backbone has no adapter to ship
    plain = build_model(tmp_path / "plain", write_jsonl(tmp_path / "r2.jsonl", rating_rows(60)),
                        write_jsonl(tmp_path / "p2.jsonl", pair_rows(30)), json.loads(
                            (moved / "backbone-adapter" / "adapter_config.json").read_text())["base_model_name_or_path"])
    r = armo("assemble", tmp_path / "x", "-r", plain / "reg.st", "-g", plain / "gate.st", "--ship-adapter")
    assert r.code == 2 and "--ship-adapter: the regression was fitted on" in r.stderr and not (tmp_path / "x").exists()


def test_adapters_armo_cannot_merge_are_refused_by_name(tuned, tmp_path, tiny_backbone):
    import shutil

    src = tuned[0] / "tuned"
    cases = {"use_dora": (True, "DoRA is not supported"), "peft_type": ("IA3", "armo reads LORA adapters"),
             "modules_to_save": (["score"], "fully trained modules"), "base_model_name_or_path": ("", "base backbone")}
    for key, (value, message) in cases.items():
        d = tmp_path / key
        shutil.copytree(src, d)
        conf = json.loads((d / "adapter_config.json").read_text())
        (d / "adapter_config.json").write_text(json.dumps({**conf, key: value}))
        with pytest.raises(ArmoError, match=message):
            load_backbone(str(d), device="cpu", dtype="fp32")
    d = tmp_path / "embed"
    shutil.copytree(src, d)
    w = load_file(str(d / "adapter_model.safetensors"))
    w["base_model.model.embed_tokens.lora_A.weight"] = torch.zeros(8, 400)
    w["base_model.model.embed_tokens.lora_B.weight"] = torch.zeros(32, 8)
    save_file(w, str(d / "adapter_model.safetensors"))
    with pytest.raises(ArmoError, match="adapter on 'embed_tokens' is not supported"):
        load_backbone(str(d), device="cpu", dtype="fp32")
    with pytest.raises(ArmoError, match="--target-modules"):
        tune(tmp_path, tiny_backbone, out="bad", target_modules="embed_tokens")


def _adapter(folder) -> dict:
    out = load_file(str(folder / "adapter_model.safetensors"))
    out.update({f"head.{k}": v for k, v in load_file(str(folder / "reward_head.safetensors")).items()})
    return out


def _close(a: dict, b: dict, atol: float = 2e-5) -> bool:
    """Equal within float tolerance; the head's bias aside: it adds to both sides of a pair, so its gradient is 0 up to
    rounding, which AdamW's normalised step turns into a random walk that no reward difference sees."""
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=1e-4) for k in a if k != "head.bias")


def test_grad_accum_and_gradient_checkpointing_give_the_same_adapter(tuned, tiny_backbone, tmp_path):
    """#49: micro-batches add up to the step's gradient; recomputed activations change nothing but memory."""
    (tmp_path / "pairs.jsonl").write_text((tuned[0] / "pairs.jsonl").read_text())
    want = _adapter(tuned[0] / "tuned")
    a = tune(tmp_path, tiny_backbone, out="accum", grad_accum=3)
    assert _close(_adapter(tmp_path / "accum"), want) and a["key"] == tuned[1]["key"]
    tune(tmp_path, tiny_backbone, out="ckpt", gradient_checkpointing=True)
    assert _close(_adapter(tmp_path / "ckpt"), want)
    with pytest.raises(ArmoError, match="--bf16: CUDA only"):
        tune(tmp_path, tiny_backbone, out="bf16", bf16=True)


def _torchrun(tmp_path, backbone, out, *extra, n=2, wait_for=None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    cmd = [str(torchrun), "--nproc-per-node", str(n), "-m", "armo_cli.cli", "tune-backbone", str(tmp_path / "pairs.jsonl"),
           "-o", str(tmp_path / out), "--backbone", str(backbone), "--device", "cpu", "--batch-pairs", "8", "--epochs",
           "4", "--lr", "3e-3", "--save-every", "3", "-q", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_two_gloo_ranks_train_the_adapter_one_process_trains(tuned, tiny_backbone, tmp_path):
    """#49: two CPU ranks (gloo) on the same global batch give one process's adapter, within float tolerance."""
    (tmp_path / "pairs.jsonl").write_text((tuned[0] / "pairs.jsonl").read_text())
    p = _torchrun(tmp_path, tiny_backbone, "dist")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert _close(_adapter(tmp_path / "dist"), _adapter(tuned[0] / "tuned"))
    rep = json.loads((tmp_path / "dist" / "armo-stage0.json").read_text())
    assert rep["ranks"] == 2 and rep["steps"] == tuned[1]["steps"] and rep["key"] == tuned[1]["key"]
    assert rep["train_losses"] == pytest.approx(tuned[1]["train_losses"], abs=1e-5)
    assert not (tmp_path / "dist.parts").exists()


@pytest.mark.slow
def test_an_interrupted_two_rank_run_resumes_on_one_rank(tuned, tiny_backbone, tmp_path):
    import signal
    import time

    (tmp_path / "pairs.jsonl").write_text((tuned[0] / "pairs.jsonl").read_text())
    p = _torchrun(tmp_path, tiny_backbone, "dist", "--save-every", "1")
    ckpt = tmp_path / "dist.parts" / "checkpoint.safetensors"
    deadline = time.time() + 300
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "the run ended before it could be stopped"
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert ckpt.exists() and not (tmp_path / "dist").exists()
    from armo_cli.artifact_files import load_artifact
    import armo_cli.stage0 as stage0

    done = load_artifact(ckpt, sealed=True)[1]["step"]
    assert 0 < done < tuned[1]["steps"]
    real, calls = stage0.pair_rewards, []

    def counted(*a, **k):
        calls.append(torch.is_grad_enabled())
        return real(*a, **k)

    stage0.pair_rewards = counted
    try:
        rep = tune(tmp_path, tiny_backbone, out="dist", resume=True, save_every=1)
    finally:
        stage0.pair_rewards = real
    assert rep["ranks"] == 1 and sum(calls) == tuned[1]["steps"] - done  # only the steps the two ranks had not done
    assert _close(_adapter(tmp_path / "dist"), _adapter(tuned[0] / "tuned"))
