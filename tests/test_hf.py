import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tests.helpers import armo, armo_process, check_export_round_trip, cli, pad_batch as _batch, pair_rows, write_jsonl


@pytest.fixture
def no_pickle(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_export_loads_in_transformers_and_matches_armo_score(tiny_model, tmp_path, no_pickle):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "hf"
    cli("export", "-m", tiny_model / "model", out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForRewardModelWithGating"]
    for key in ("num_objectives", "gating_temperature", "gating_hidden_dim", "gating_n_hidden", "gating_token_pattern"):
        assert key in cfg
    keys = set(load_file(str(out / "model.safetensors")))
    assert {"regression_layer.weight", "reward_transform_matrix", "gating.logit_scale", "gating.layers.0.weight"} <= keys
    assert not list(out.glob("*.bin"))
    model = AutoModelForSequenceClassification.from_pretrained(str(out), trust_remote_code=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    # the transform is kept, not reset to identity
    T = load_file(str(tiny_model / "model" / "decorrelation.safetensors"))["transform"]
    assert not torch.allclose(T, torch.eye(T.shape[0])) and torch.allclose(model.reward_transform_matrix, T)
    rows = [json.loads(x) for x in (tiny_model / "p.jsonl").read_text().splitlines()][:7]
    armo = [json.loads(x) for x in cli("score", "-m", tiny_model / "model", "--features", tiny_model / "p.st").stdout.splitlines()][:7]
    convs, expect, exp_rewards = [], [], []
    for row, rec in zip(rows, armo):
        prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        for side in ("chosen", "rejected"):
            convs.append(prompt + [{"role": "assistant", "content": row[side]}])
            expect.append(rec[side]["score"])
            exp_rewards.append(list(rec[side]["rewards"].values()))
    for pad_side in ("right", "left"):
        ids, mask = _batch(tok, convs, pad_side)
        with torch.no_grad():
            o = model(input_ids=ids, attention_mask=mask)
        assert torch.allclose(o.score, torch.tensor(expect), atol=1e-4), pad_side
        assert torch.allclose(o.logits, o.score)
        assert torch.allclose(o.rewards, torch.tensor(exp_rewards), atol=1e-4)
        assert o.gating_output.shape == (len(convs), cfg["num_objectives"]) and o.prompt_embedding.shape[-1] == cfg["hidden_size"]


def reference_armorm_forward(folder, convs):
    """The published LlamaForRewardModelWithGating forward, written out independently of armo."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    cfg = json.loads((folder / "config.json").read_text())
    sd = load_file(str(folder / "model.safetensors"))
    base = LlamaModel(LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "auto_map")}))
    base.load_state_dict({k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")})
    base.eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    pattern = tok("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False).input_ids
    scores, rewards = [], []
    for conv in convs:
        ids = tok.apply_chat_template(conv, tokenize=False)
        ids = tok(ids, add_special_tokens=False).input_ids
        with torch.no_grad():
            h = base(input_ids=torch.tensor([ids])).last_hidden_state[0]
        pos = max(i for i in range(len(ids) - len(pattern) + 1) if ids[i:i + len(pattern)] == pattern)
        r = h[-1] @ sd["regression_layer.weight"].T
        x = h[pos]
        n = cfg["gating_n_hidden"]
        for i in range(n + 1):
            x = x @ sd[f"gating.layers.{i}.weight"].T + sd[f"gating.layers.{i}.bias"]
            if i < n:
                x = F.relu(x)
        g = F.softmax(x / cfg["gating_temperature"], dim=-1) * sd["gating.logit_scale"][0]
        scores.append(float((g * (r @ sd["reward_transform_matrix"])).sum()))
        rewards.append(r)
    return scores, rewards


def make_armorm_checkpoint(backbone: Path, folder: Path, k: int = 19, hidden: int = 16) -> Path:
    cfg = json.loads((backbone / "config.json").read_text())
    d = cfg["hidden_size"]
    cfg.update({"architectures": ["LlamaForRewardModelWithGating"],
                "auto_map": {"AutoModelForSequenceClassification": "modeling_custom.LlamaForRewardModelWithGating"},
                "num_objectives": k, "gating_temperature": 10, "gating_hidden_dim": hidden, "gating_n_hidden": 3})
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(7)
    sd = {f"model.{n}": t for n, t in load_file(str(backbone / "model.safetensors")).items()}
    sd["regression_layer.weight"] = torch.randn(k, d, generator=g) * 0.3
    lam = torch.rand(k, generator=g) * 0.5
    lam[4] = 1.0  # helpsteer-verbosity is the published verbosity objective
    T = torch.eye(k)
    T[4, :] -= lam
    sd["reward_transform_matrix"] = T
    dims = [d, hidden, hidden, hidden, k]
    for i in range(4):
        sd[f"gating.layers.{i}.weight"] = torch.randn(dims[i + 1], dims[i], generator=g) * 0.5
        sd[f"gating.layers.{i}.bias"] = torch.randn(dims[i + 1], generator=g) * 0.1
    sd["gating.logit_scale"] = torch.tensor([1.3])
    save_file({k_: v.contiguous() for k_, v in sd.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    for f in backbone.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copyfile(f, folder / f.name)
    (folder / "modeling_custom.py").write_text("raise RuntimeError('remote code must not run')\n")
    return folder


def test_import_matches_the_checkpoints_own_forward(tiny_llama3, tmp_path, no_pickle):
    ckpt = make_armorm_checkpoint(tiny_llama3, tmp_path / "armorm")
    out = tmp_path / "imported"
    cli("import", ckpt, "-o", out)
    manifest = json.loads((out / "armo.json").read_text())
    assert manifest["objectives"][0] == "helpsteer-helpfulness" and len(manifest["objectives"]) == 19
    assert manifest["gate_rule"] == "armo-eot"
    rows = pair_rows(6, seed=5)
    inp = write_jsonl(tmp_path / "rows.jsonl", rows)
    recs = [json.loads(x) for x in cli("score", "-m", out, inp, "-q", "--device", "cpu").stdout.splitlines()]
    convs = []
    for row in rows:
        prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        convs += [prompt + [{"role": "assistant", "content": row[s]}] for s in ("chosen", "rejected")]
    ref, ref_rewards = reference_armorm_forward(ckpt, convs)
    ours = [rec[s]["score"] for rec in recs for s in ("chosen", "rejected")]
    assert ours == pytest.approx(ref, abs=1e-4)
    first = torch.tensor(list(recs[0]["chosen"]["rewards"].values()))
    assert torch.allclose(first, ref_rewards[0], atol=1e-4)


def test_import_generic_names_and_errors(tiny_llama3, tmp_path):

    ckpt = make_armorm_checkpoint(tiny_llama3, tmp_path / "c5", k=5)
    cli("import", ckpt, "-o", tmp_path / "m5")
    assert json.loads((tmp_path / "m5" / "armo.json").read_text())["objectives"] == [f"objective-{i}" for i in range(5)]
    cli("import", ckpt, "-o", tmp_path / "m5b", "--objectives", "a,b,c,d,e")
    assert json.loads((tmp_path / "m5b" / "armo.json").read_text())["objectives"] == list("abcde")
    (tmp_path / "plain").mkdir()
    shutil.copyfile(tiny_llama3 / "config.json", tmp_path / "plain" / "config.json")
    r = armo("import", str(tmp_path / "plain"), "-o", str(tmp_path / "x"))
    assert r.code == 2 and "num_objectives" in r.output


def test_import_reads_a_sharded_checkpoint(tiny_llama3, tmp_path, no_pickle):
    """model.safetensors.index.json with the heads split over two files imports like the single file."""
    ckpt = make_armorm_checkpoint(tiny_llama3, tmp_path / "single")
    sharded = tmp_path / "sharded"
    shutil.copytree(ckpt, sharded)
    sd = load_file(str(sharded / "model.safetensors"))
    (sharded / "model.safetensors").unlink()
    names = sorted(sd)
    first = {k: v for k, v in sd.items() if k.startswith("model.") or k == "regression_layer.weight"}
    second = {k: v for k, v in sd.items() if k not in first}
    save_file(first, str(sharded / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(second, str(sharded / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" if k in first else "model-00002-of-00002.safetensors" for k in names}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cli("import", ckpt, "-o", tmp_path / "a")
    cli("import", sharded, "-o", tmp_path / "b")
    for part in ("regression", "decorrelation", "gating"):
        a = load_file(str(tmp_path / "a" / f"{part}.safetensors"))
        b = load_file(str(tmp_path / "b" / f"{part}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_armo_eot_model_round_trips_through_export_and_import(tiny_model, tiny_backbone, tmp_path, no_pickle):
    """A model whose gate reads the end-of-turn token exports with that rule and imports back with it;
    the exported model, the imported model and armo score agree."""
    d = tiny_model
    cli("extract", d / "p.jsonl", "-o", tmp_path / "p-eot.st", "--gate-rule", "armo-eot", "-b", tiny_backbone,
        "--device", "cpu", "-q")
    cli("fit-gating", tmp_path / "p-eot.st", "-r", d / "reg.st", "-t", d / "dec.st", "-o", tmp_path / "g.st",
        "--hidden-dim", "8", "--steps", "10", "-q")
    cli("assemble", tmp_path / "m", "-r", d / "reg.st", "-t", d / "dec.st", "-g", tmp_path / "g.st")
    cfg = check_export_round_trip(tmp_path / "m", tmp_path / "p-eot.st", d / "p.jsonl", tmp_path, n=5)
    assert cfg["armo"]["gate_rule"] == "armo-eot" and cfg["gating_token_offset"] == -1
    assert json.loads((tmp_path / "back" / "armo.json").read_text())["gate_rule"] == "armo-eot"


# A config that disagrees with itself or its weights is refused before anything is built: one line naming the source
# folder's config.json and the field (never the temporary build folder), exit 2, nothing written (#31 §6).
BAD_CONFIGS = [
    ({"objectives": 5}, "field 'objectives': expected a list of 5 distinct names"),
    ({"objectives": ["a", "a", "b", "c", "d"]}, "field 'objectives': expected a list of 5 distinct names"),
    ({"gating_n_hidden": "three"}, "field 'gating_n_hidden': expected an integer >= 0, got \"three\""),
    ({"gating_n_hidden": 2}, "field 'gating_n_hidden': 2, but the weights have 3 hidden layers"),
    ({"gating_hidden_dim": 10 ** 12}, "field 'gating_hidden_dim': 1000000000000, but gating.layers.0.weight has 16 rows"),
    ({"gating_hidden_dim": 1e12}, "field 'gating_hidden_dim': expected an integer >= 1, got 1000000000000.0"),
    ({"gating_temperature": "hot"}, "field 'gating_temperature': expected a positive number"),
    ({"armo": [1, 2]}, "field 'armo': expected an object"),
    ({"armo": {"gate_rule": "<script>"}}, "field 'armo.gate_rule': expected one of generation-prompt, armo-eot, got \"<script>\""),
    ({"armo": {"scales": 3}}, "field 'armo.scales': expected an object"),
    ({"num_objectives": 6}, "tensor 'regression_layer.weight': shape (5, 32), expected (6, 32)"),
]


@pytest.mark.parametrize("change,message", BAD_CONFIGS)
def test_import_checks_the_config_before_it_acts(tiny_llama3, tmp_path, change, message):

    ckpt = make_armorm_checkpoint(tiny_llama3, tmp_path / "c", k=5)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, **change}))
    r = armo("import", ckpt, "-o", tmp_path / "m")
    assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert message in r.stderr and (str(ckpt) in r.stderr), r.stderr
    assert ".new-" not in r.stderr and not (tmp_path / "m").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_import_refuses_a_fifo_for_weights_without_hanging(tiny_llama3, tmp_path):
    import os


    ckpt = make_armorm_checkpoint(tiny_llama3, tmp_path / "c", k=5)
    (ckpt / "model.safetensors").unlink()
    os.mkfifo(ckpt / "model.safetensors")
    r = armo("import", ckpt, "-o", tmp_path / "m")
    assert r.code == 2 and r.stderr.strip() == (f"error: {ckpt / 'model.safetensors'}: not a regular file (a FIFO, a "
                                                f"device or a socket); armo reads only regular files from a model folder")


def test_every_command_that_takes_a_model_takes_an_export_folder(tiny_model, tmp_path):
    """`armo score -m EXPORTED` used to fail ("not an armo model directory") while serve and RewardModel took it."""

    hf = tmp_path / "hf"
    assert armo("export", "-m", tiny_model / "model", hf).code == 0
    a = armo("score", "-m", tiny_model / "model", tiny_model / "p.jsonl", "-q")
    b = armo("score", "-m", hf, tiny_model / "p.jsonl", "-q")
    assert a.code == 0 and b.code == 0, b.stderr
    sa = [json.loads(x)["margin"] for x in a.stdout.splitlines()]
    sb = [json.loads(x)["margin"] for x in b.stdout.splitlines()]
    assert sb == pytest.approx(sa, abs=1e-5)
    r = armo("evaluate", "-m", hf, tiny_model / "p.jsonl", "-o", tmp_path / "rep.json", "-q")
    assert r.code == 0, r.stderr


def test_exported_and_extracted_safetensors_follow_the_umask(tiny_model, tiny_backbone, tmp_path, armo_cache, monkeypatch):
    """safetensors creates its files 0600: an exported model.safetensors was -rw------- beside -rw-r--r-- files."""
    import os
    import stat

    from tests.helpers import rating_rows

    monkeypatch.setenv("ARMO_CACHE", str(armo_cache))
    old = os.umask(0o022)
    try:
        assert armo("export", "-m", tiny_model / "model", tmp_path / "hf").code == 0
        rows = write_jsonl(tmp_path / "r.jsonl", rating_rows(4))
        assert armo("extract", rows, "--backbone", tiny_backbone, "-o", tmp_path / "f.st", "-q").code == 0
    finally:
        os.umask(old)
    for f in (tmp_path / "hf" / "model.safetensors", tmp_path / "hf" / "config.json", tmp_path / "f.st"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o644, f


@pytest.mark.slow
@pytest.mark.parametrize("name", ["extra.safetensors", "config.json", "tokenizer.json"])
def test_import_never_blocks_on_a_fifo_in_the_folder(tiny_llama3, tmp_path, name):
    """A FIFO anywhere in a downloaded folder (`extra.safetensors` hung `armo import` until killed): refused by name
    before anything is read, whatever it is called."""
    import os

    ckpt = make_armorm_checkpoint(tiny_llama3, tmp_path / "c", k=5)
    (ckpt / name).unlink(missing_ok=True)
    os.mkfifo(ckpt / name)
    r = armo_process("import", ckpt, "-o", tmp_path / "m", timeout=60)
    assert r.code == 2, r.stderr
    assert r.stderr.strip() == (f"error: {ckpt / name}: not a regular file (a FIFO, a device or a socket); armo reads "
                                f"only regular files from a model folder")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_a_link_to_a_device_in_an_export_folder_is_refused(tiny_model, tmp_path):
    hf = tmp_path / "hf"
    cli("export", "-m", tiny_model / "model", hf)
    (hf / "zeros.safetensors").symlink_to("/dev/zero")
    r = armo_process("score", "-m", hf, tiny_model / "p.jsonl", "-q", timeout=60)
    assert r.code == 2 and r.stderr.strip().startswith(f"error: {hf / 'zeros.safetensors'}: not a regular file"), r.stderr


def _margins(r) -> list[float]:
    assert r.code == 0, r.stderr
    return [json.loads(x)["margin"] for x in r.stdout.splitlines()]


@pytest.mark.slow
def test_an_export_is_cached_by_its_content_never_by_its_path(tiny_model, tmp_path):
    """`-m EXPORT` imports once into armo's cache: that cache was keyed on the config and each weight file's first MiB,
    and kept the first folder's path. Once a scored export was deleted, every later export of the same model failed
    (`hf: not an armo model directory`), a renamed folder failed, and heads edited past the first MiB scored with the
    stale heads."""
    rows = tiny_model / "p.jsonl"
    want = _margins(armo("score", "-m", tiny_model / "model", rows, "-q"))
    first = tmp_path / "first"
    cli("export", "-m", tiny_model / "model", first)
    assert _margins(armo("score", "-m", first, rows, "-q")) == pytest.approx(want, abs=1e-5)
    shutil.rmtree(first)
    again = tmp_path / "again"
    cli("export", "-m", tiny_model / "model", again)
    assert _margins(armo("score", "-m", again, rows, "-q")) == pytest.approx(want, abs=1e-5)
    moved = tmp_path / "moved"
    again.rename(moved)
    assert _margins(armo("score", "-m", moved, rows, "-q")) == pytest.approx(want, abs=1e-5)



def test_heads_edited_past_the_first_mib_are_not_scored_stale(tmp_path):
    """A checkpoint of 2.4 MB whose regression layer is stored past its first MiB (safetensors orders tensors by
    name): edited in place, same size, it must score with the new heads."""
    from tests.helpers import make_backbone

    ckpt = make_armorm_checkpoint(make_backbone(tmp_path / "b", hidden=256), tmp_path / "hf", k=5)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "armo": {}}))  # an `armo export` folder, as -m takes it
    rows = write_jsonl(tmp_path / "p.jsonl", pair_rows(4))
    before = _margins(armo("score", "-m", ckpt, rows, "-q"))
    size = (ckpt / "model.safetensors").stat().st_size
    tensors = load_file(str(ckpt / "model.safetensors"))
    tensors["regression_layer.weight"] = -tensors["regression_layer.weight"]
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    data = (ckpt / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    start = 8 + n + json.loads(data[8:8 + n])["regression_layer.weight"]["data_offsets"][0]
    assert len(data) == size and start > 1 << 20  # the same size, and the edit lies past the first MiB
    after = _margins(armo("score", "-m", ckpt, rows, "-q"))
    assert after == pytest.approx([-m for m in before], abs=1e-5)  # r -> -r: every margin's sign flips
