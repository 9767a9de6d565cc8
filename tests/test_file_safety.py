"""Nothing lost, nothing silently wrong: folders armo did not write survive, a second writer of the same
output is refused, chunks of another input are never reused, and merges are complete or refused."""
from __future__ import annotations

import os
import stat
import subprocess
import tempfile
import sys

import pytest
import torch
from pathlib import Path

from armo_cli.backbones import load_backbone
from armo_cli.errors import ArmoError
from armo_cli.extract import ExtractConfig, extract, merge_features
from armo_cli.features import Features
from armo_cli.jobfiles import output_lock

from tests.helpers import armo, pair_rows, write_jsonl


@pytest.fixture(scope="module")
def bb(tiny_backbone):
    return load_backbone(str(tiny_backbone), device="cpu", dtype="fp32")


def _extract(bb, inp, out, after_chunk=None, **kw):
    return extract(ExtractConfig(input=str(inp), output=str(out), backbone="x", quiet=True, **kw), backbone=bb,
                   after_chunk=after_chunk)


def _interrupted_after_two_chunks(bb, inp, out):
    """An extract of chunks of 3 rows, stopped by Ctrl-C once its second chunk is written."""
    def stop(chunk: int) -> None:
        if chunk == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _extract(bb, inp, out, chunk_size=3, after_chunk=stop)


def _users_folder(path):
    path.mkdir()
    (path / "thesis.txt").write_text("years of work")
    return path


# --- folders: export, import, assemble, --model-dir --------------------------------------------------------
def test_export_never_deletes_a_users_folder(tiny_model, tmp_path, monkeypatch):
    model = tiny_model / "model"
    mine = _users_folder(tmp_path / "mine")
    r = armo("export", "-m", model, mine)
    assert r.code == 2 and "not empty" in r.stderr and "--force" in r.stderr
    assert (mine / "thesis.txt").read_text() == "years of work" and sorted(os.listdir(mine)) == ["thesis.txt"]
    # the model itself, and the current folder, are refused even with --force
    before = sorted(os.listdir(model))
    r = armo("export", "-m", model, model, "--force")
    assert r.code == 2 and "would replace the input" in r.stderr
    assert sorted(os.listdir(model)) == before
    monkeypatch.chdir(mine)
    r = armo("export", "-m", model, ".", "--force")
    assert r.code == 2 and "current folder" in r.stderr
    assert sorted(os.listdir(mine)) == ["thesis.txt"]


def test_export_replaces_an_earlier_export_and_force_replaces_a_foreign_folder(tiny_model, tmp_path):
    model = tiny_model / "model"
    out = tmp_path / "hf"
    assert armo("export", "-m", model, out).code == 0
    (out / "stale.txt").write_text("from the earlier export")
    assert armo("export", "-m", model, out).code == 0  # an earlier export is replaced whole
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    # normal permissions: folder 0777 & ~umask, files 0666 & ~umask (never mkdtemp's 0700 / mkstemp's 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((out / "config.json").stat().st_mode) == 0o666 & ~umask
    mine = _users_folder(tmp_path / "mine")
    assert armo("export", "-m", model, mine, "--force").code == 0
    assert not (mine / "thesis.txt").exists() and (mine / "config.json").exists()
    # nothing left beside the outputs (no .new-/.old- folders)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mine"]


def test_import_and_assemble_never_replace_a_users_folder(tiny_model, tmp_path):
    d = tiny_model
    hf = tmp_path / "hf"
    assert armo("export", "-m", d / "model", hf).code == 0
    for cmd in (["import", hf, "-o"], ["assemble", "-r", d / "reg.st", "-g", d / "gate.st", "-t", d / "dec.st"]):
        mine = _users_folder(tmp_path / "mine")
        args = [*cmd, mine] if cmd[0] == "import" else [cmd[0], mine, *cmd[1:]]
        r = armo(*args)
        assert r.code == 2 and "not empty" in r.stderr, r.stderr
        assert sorted(os.listdir(mine)) == ["thesis.txt"]
        # an armo model directory is replaced atomically; --force replaces a foreign folder
        assert armo(*args, "--force").code == 0
        assert (mine / "armo.json").exists() and not (mine / "thesis.txt").exists()
        assert armo(*args).code == 0  # now it is an armo model directory: replaced without --force
        import shutil

        shutil.rmtree(mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_model_dir_refuses_a_users_folder_before_fitting(tiny_model, tmp_path):
    d = tiny_model
    mine = _users_folder(tmp_path / "mine")
    r = armo("fit-gating", d / "p.st", "-r", d / "reg.st", "-o", tmp_path / "g.st", "--steps", "2", "--model-dir", mine, "-q")
    assert r.code == 2 and "not empty" in r.stderr
    assert not (tmp_path / "g.st").exists()  # refused before the fit, not after
    assert sorted(os.listdir(mine)) == ["thesis.txt"]


def test_a_failed_assemble_leaves_the_earlier_model_untouched(tiny_model, tmp_path):
    d = tiny_model
    out = tmp_path / "m"
    assert armo("assemble", out, "-r", d / "reg.st", "-g", d / "gate.st", "-t", d / "dec.st").code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # a gate trained on this regression, with a transform that is not its own: refused, old model intact
    r = armo("assemble", out, "-r", d / "reg.st", "-g", d / "gate.st")
    assert r.code == 2 and "another decorrelation transform" in r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# --- one writer per output ----------------------------------------------------------------------------------
def test_a_concurrent_second_writer_is_refused_and_the_first_output_is_its_own(bb, tiny_backbone, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", pair_rows(9, seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", [{**r, "id": "b-" + r["id"]} for r in pair_rows(9, seed=2)])
    out = tmp_path / "o.st"
    seen = []

    def second_writer(chunk: int) -> None:
        if chunk == 0:  # while the first job is running, a second job with another input wants the same -o
            seen.append(armo("extract", b, "-o", out, "-b", tiny_backbone, "--device", "cpu", "-q", "--chunk-size", "3"))

    _extract(bb, a, out, chunk_size=3, after_chunk=second_writer)
    assert len(seen) == 1 and seen[0].code == 2
    assert f"pid {os.getpid()}" in seen[0].stderr and "another armo process" in seen[0].stderr
    assert Features.load(out).ids == [f"p{i}" for i in range(9)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "o.st"]  # lock and parts gone


def test_a_lock_held_by_another_process_refuses_at_once(bb, tmp_path):
    out = tmp_path / "o.st"
    code = ("import sys, time; from armo_cli.jobfiles import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(ArmoError, match=rf"another armo process \(pid {p.pid}\)"):
            _extract(bb, write_jsonl(tmp_path / "a.jsonl", pair_rows(3)), out)
        assert not out.exists() and not (tmp_path / "o.st.parts").exists()
    finally:
        p.kill()
        p.wait()
    # the holder died without cleaning up: its lock file is stale and is taken over
    assert (tmp_path / "o.st.lock").exists()
    _extract(bb, tmp_path / "a.jsonl", out)
    assert Features.load(out).ids == ["p0", "p1", "p2"] and not (tmp_path / "o.st.lock").exists()


def test_output_lock_is_exclusive_within_one_process_too(tmp_path):
    with output_lock(tmp_path / "x"):
        with pytest.raises(ArmoError, match="another armo process"):
            with output_lock(tmp_path / "x"):
                pass
    with output_lock(tmp_path / "x"):  # released on exit
        pass


def test_chunks_of_another_input_are_never_reused(bb, tmp_path):
    rows = pair_rows(9, seed=4)
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    out = tmp_path / "o.st"
    _interrupted_after_two_chunks(bb, a, out)
    assert len(list((tmp_path / "o.st.parts").glob("chunk-*"))) == 2
    # another input whose first rows are the very same: the finished chunks are not its own
    b = write_jsonl(tmp_path / "b.jsonl", rows + [{**rows[0], "id": "extra"}])
    rep = _extract(bb, b, out, chunk_size=3, resume=True)
    assert rep.chunks_reused == 0 and rep.chunks_computed == 4
    assert Features.load(out).ids == [r["id"] for r in rows] + ["extra"]


def test_a_failed_first_chunk_leaves_no_parts_folder(bb, tmp_path, monkeypatch):
    out = tmp_path / "o.st"

    import armo_cli.resumable as resumable

    def failing_save(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(resumable, "save_artifact", failing_save)
    with pytest.raises(OSError):
        _extract(bb, write_jsonl(tmp_path / "a.jsonl", pair_rows(4)), out, chunk_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


# --- complete merges ----------------------------------------------------------------------------------------
def test_merge_refuses_partial_and_mixed_shard_sets(bb, tmp_path):
    inp = write_jsonl(tmp_path / "p.jsonl", pair_rows(13))
    other = write_jsonl(tmp_path / "q.jsonl", pair_rows(13, seed=5))
    shards = []
    for i in range(3):
        _extract(bb, inp, tmp_path / f"s{i}.st", chunk_size=2, num_shards=3, shard_index=i)
        shards.append(tmp_path / f"s{i}.st")
    _extract(bb, other, tmp_path / "x1.st", chunk_size=2, num_shards=3, shard_index=1)
    _extract(bb, inp, tmp_path / "c1.st", chunk_size=3, num_shards=3, shard_index=1)  # other chunking
    with pytest.raises(ArmoError, match=r"merge: 1 of 3 shards missing \(indices 2\)"):
        merge_features(shards[:2], tmp_path / "m.st")
    with pytest.raises(ArmoError, match=r"x1\.st: a shard of another extract job .*differs in input_hash"):
        merge_features([shards[0], tmp_path / "x1.st", shards[2]], tmp_path / "m.st")
    with pytest.raises(ArmoError, match=r"c1\.st: a shard of another extract job .*differs in chunk_size"):
        merge_features([shards[0], tmp_path / "c1.st", shards[2]], tmp_path / "m.st")
    assert not (tmp_path / "m.st").exists()
    # the CLI says the same, in one line, and writes nothing
    r = armo("merge", shards[0], shards[1], "-o", tmp_path / "m.st")
    assert r.code == 2 and "1 of 3 shards missing (indices 2)" in r.stderr and not (tmp_path / "m.st").exists()
    # --allow-partial merges what is there and lists what is missing
    r = armo("merge", shards[0], shards[2], "-o", tmp_path / "m.st", "--allow-partial")
    assert r.code == 0, r.stderr
    assert "merged 2 of 3 shards" in r.stderr and "missing shards: 1" in r.stderr
    f = Features.load(tmp_path / "m.st")
    assert f.meta.missing_shards == [1]
    kept = Features.load(shards[0]).ids + Features.load(shards[2]).ids
    assert f.ids == sorted(kept, key=lambda i: int(i[1:]))
    # the whole set merges, in the original order
    r = armo("merge", *reversed(shards), "-o", tmp_path / "all.st")
    assert r.code == 0 and "merged 3 of 3 shards" in r.stderr
    assert Features.load(tmp_path / "all.st").ids == [f"p{i}" for i in range(13)]
    assert torch.equal(Features.load(tmp_path / "all.st").tensors["row_index"], torch.arange(1, 14))


def test_tests_convert_backbones_into_their_own_cache(armo_cache):
    """The session's cache, not the user's: a conversion made by a test cannot pollute ~/.cache/armo."""
    from armo_cli.backbones import cache_root

    assert cache_root() == armo_cache and str(armo_cache).startswith(tempfile.gettempdir())
    assert armo_cache != Path.home() / ".cache" / "armo"


@pytest.mark.slow
def test_sigterm_stops_a_job_as_ctrl_c_does_and_resume_finishes_it(tiny_backbone, tmp_path):
    """A scheduler's SIGTERM (preemption, `timeout`) runs the same cleanups as Ctrl-C: exit 143, one line,
    finished chunks kept, no temporary file left; `--resume` then writes the uninterrupted run's features."""
    import signal
    import time

    inp = write_jsonl(tmp_path / "p.jsonl", pair_rows(600))
    args = [str(inp), "--backbone", str(tiny_backbone), "--device", "cpu", "--chunk-size", "8", "-q"]
    ref = tmp_path / "ref.st"
    assert armo("extract", *args, "-o", ref).code == 0
    out = tmp_path / "f.st"
    p = subprocess.Popen([sys.executable, "-m", "armo_cli.cli", "extract", *args, "-o", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "f.st.parts"
    deadline = time.time() + 120
    while len(list(parts.glob("chunk-*.safetensors"))) < 2 and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "the job ended before it could be stopped"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert err.strip() == "terminated (SIGTERM): finished work is kept; rerun with --resume"
    assert not out.exists() and len(list(parts.glob("chunk-*.safetensors"))) >= 2
    assert [f.name for f in tmp_path.rglob("*") if ".tmp" in f.name or f.name.endswith(".lock")] == []
    assert armo("extract", *args, "-o", out, "--resume").code == 0
    a, b = Features.load(ref), Features.load(out)
    assert a.ids == b.ids and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


# --- checksums: a damaged artifact is refused by name, never read as other numbers -----------------------------

def _flip_last_data_byte(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[-3] ^= 0x01  # the last tensor's data: the header and its metadata stay readable
    path.write_bytes(bytes(b))


def test_a_sealed_artifact_with_an_edited_field_is_refused(tmp_path):
    """A resumable job's units seal their metadata: an id edited in place (same length, tensors untouched) is refused,
    where an unsealed file would load with it."""
    import torch

    from armo_cli.artifact_files import load_artifact, save_raw_artifact

    for seal in (True, False):
        f = tmp_path / f"u{seal}.st"
        save_raw_artifact(f, {"x": torch.ones(2)}, {"kind": "features-chunk", "ids": ["r1", "r2"]}, seal=seal)
        f.write_bytes(f.read_bytes().replace(b'\\"r1\\"', b'\\"r9\\"', 1))
        if seal:
            with pytest.raises(ArmoError, match=rf"^{f}: damaged: its metadata does not match the seal written with it"):
                load_artifact(f)
        else:
            assert load_artifact(f)[1]["ids"] == ["r9", "r2"]


@pytest.mark.parametrize("part", ["p.st", "reg.st", "dec.st", "gate.st"])
def test_a_changed_byte_in_any_artifact_is_refused_naming_the_file(tiny_model, tmp_path, part):
    import shutil

    from armo_cli.artifact_files import load_artifact

    bad = tmp_path / part
    shutil.copy(tiny_model / part, bad)
    load_artifact(bad)  # intact: loads
    _flip_last_data_byte(bad)
    with pytest.raises(ArmoError, match=rf"^{bad}: damaged: its tensors do not match the checksum written with them"):
        load_artifact(bad)
    assert load_artifact(bad, tensors=False)[1]["kind"]  # the metadata alone still reads (resume checks, joins)


def test_a_damaged_model_part_stops_score_with_one_line(tiny_model, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model / "model", model)
    _flip_last_data_byte(model / "gating.safetensors")  # no other part records the gate's hash
    r = armo("score", "-m", model, tiny_model / "p.jsonl", "-q")
    assert r.code == 2 and r.stdout == ""
    assert r.stderr == (f"error: {model / 'gating.safetensors'}: damaged: its tensors do not match the checksum "
                        f"written with them (a changed byte or an unfinished copy); copy it again or re-create it\n")


def test_the_streamed_checksum_of_a_joined_file_is_the_in_memory_one(bb, tmp_path):
    import json

    from safetensors import safe_open

    from armo_cli.artifact_files import CHECKSUM_KEY, load_artifact, save_artifact, tensors_sha256

    out = tmp_path / "o.st"
    _extract(bb, write_jsonl(tmp_path / "a.jsonl", pair_rows(7)), out, chunk_size=3)  # three chunks, joined
    with safe_open(str(out), framework="pt") as f:
        stored = json.loads(f.metadata()["armo"])[CHECKSUM_KEY]
    tensors, meta = load_artifact(out, "features")
    assert stored == tensors_sha256(tensors)
    # an artifact from before checksums (armo 0.1.0) loads as before; one of a later armo without its checksum
    # was edited, and is refused (negated weights once loaded silently that way)
    import dataclasses

    for version in ("0.1.0", meta.armo_version):
        save_artifact(tmp_path / "old.st", tensors, dataclasses.replace(meta, armo_version=version))
        raw = (tmp_path / "old.st").read_bytes()
        old = raw.replace(f'\\"{CHECKSUM_KEY}\\": \\"{stored}\\", '.encode(), b"")  # not the last field
        old = old.replace(f', \\"{CHECKSUM_KEY}\\": \\"{stored}\\"'.encode(), b"")
        assert len(old) < len(raw)
        n = int.from_bytes(old[:8], "little") - (len(raw) - len(old))
        (tmp_path / "old.st").write_bytes(n.to_bytes(8, "little") + old[8:])
        if version == "0.1.0":
            assert torch.equal(load_artifact(tmp_path / "old.st", "features")[0]["response_features"],
                               tensors["response_features"])
        else:
            with pytest.raises(ArmoError, match=f"armo {version} writes '{CHECKSUM_KEY}' and it is missing"):
                load_artifact(tmp_path / "old.st", "features")


def test_resume_recomputes_a_chunk_whose_bytes_changed(bb, tmp_path):
    rows = write_jsonl(tmp_path / "a.jsonl", pair_rows(9, seed=2))
    out = tmp_path / "o.st"
    _interrupted_after_two_chunks(bb, rows, out)
    _flip_last_data_byte(tmp_path / "o.st.parts" / "chunk-000000.safetensors")
    rep = _extract(bb, rows, out, chunk_size=3, resume=True)
    assert (rep.chunks_reused, rep.chunks_computed) == (1, 2)
    _extract(bb, rows, tmp_path / "clean.st", chunk_size=3)
    assert torch.equal(Features.load(out).tensors["response_features"], Features.load(tmp_path / "clean.st").tensors["response_features"])
