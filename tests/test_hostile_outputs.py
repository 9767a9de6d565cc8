"""Outputs never replace or follow what is not a regular file, armo removes only what it provably wrote, and what
--resume reuses is checked, not trusted (#31 §2-3). Every case runs through the real main(): exit code, one line,
and nothing of the user's lost or changed."""
from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
import torch

import armo_cli.scoring as scoring
from tests.helpers import armo, interrupted_after, pair_rows, rating_rows, write_jsonl
from armo_cli.jobfiles import PARTS_MARK


@pytest.fixture
def job(tiny_model, tiny_backbone, tmp_path, armo_cache, monkeypatch):
    """score/evaluate/sample runners on the tiny model, windows of 8 rows."""
    monkeypatch.setenv("ARMO_CACHE", str(armo_cache))
    monkeypatch.setattr(scoring, "WINDOW_ROWS", 8)
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"id": r["id"], "prompt": r["prompt"], "response": r["response"]}
                                                  for r in rating_rows(30)])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(24, subsets=["alpacaeval-easy", "mine"]))
    common = ["-m", tiny_model / "model", "--backbone", tiny_backbone, "--device", "cpu", "-q"]

    def score(*args):
        return armo("score", *common, rows, *args)

    def evaluate(*args):
        return armo("evaluate", *common, pairs, *args)

    return {"score": score, "evaluate": evaluate, "rows": rows, "pairs": pairs, "backbone": tiny_backbone,
            "common": common}


def one_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# --- devices and FIFOs are written through, never renamed over --------------------------------------------


@pytest.mark.parametrize("command", ["score", "evaluate", "sample"])
def test_dev_null_stays_a_device(job, command):
    before = os.stat("/dev/null")
    if command == "sample":
        r = armo("sample", job["rows"], "--n", "3", "-o", "/dev/null")
    else:
        r = job[command]("-o", "/dev/null")
    assert r.code == 0, r.stderr
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert not list(Path("/dev").glob(".null.*"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_dev_full_is_a_write_failure_naming_the_path(job):
    r = job["score"]("-o", "/dev/full")
    assert r.code == 1 and one_line(r) == "error: /dev/full: No space left on device"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_a_fifo_gets_the_output_and_stays_a_fifo(job, tmp_path, command):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    ref = job[command]("-o", tmp_path / "ref.out")
    assert ref.code == 0, ref.stderr
    r = job[command]("-o", fifo)
    reader.join(30)
    assert r.code == 0, r.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert got == [(tmp_path / "ref.out").read_bytes()]


def test_an_output_under_a_file_says_so(job, tmp_path):
    (tmp_path / "afile").write_text("mine")
    r = job["score"]("-o", tmp_path / "afile" / "out.jsonl")
    assert r.code == 1 and one_line(r) == (f"error: {tmp_path / 'afile' / 'out.jsonl'}: cannot be created: "
                                           f"{tmp_path / 'afile'} is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "mine"


# --- only what armo wrote is removed; nothing in .parts/ is followed through a link ----------------------


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_a_link_planted_in_parts_is_never_written_through(job, tmp_path, command):
    victim = tmp_path / "victim.txt"
    victim.write_text("seventeen bytes!\n")
    out = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    parts.mkdir()
    (parts / PARTS_MARK).write_text("{}\n")
    (parts / "rows.jsonl").symlink_to(victim)
    r = job[command]("-o", out, "--resume")
    assert r.code == 2 and "a link or not a file in armo's progress folder" in one_line(r)
    assert victim.read_text() == "seventeen bytes!\n" and not out.exists()
    assert (parts / "rows.jsonl").is_symlink()


def test_a_user_folder_named_like_parts_is_not_deleted(job, tmp_path):
    """The issue's case: `ud.jsonl.parts` holding a file named rows.jsonl, not made by armo (no marker)."""
    parts = tmp_path / "ud.jsonl.parts"
    parts.mkdir()
    (parts / "rows.jsonl").write_text("my rows\n")
    for resume in ((), ("--resume",)):
        r = job["score"]("-o", tmp_path / "ud.jsonl", *resume)
        assert r.code == 2 and "not armo's progress folder (armo's marker .armo-parts is missing)" in one_line(r)
        assert (parts / "rows.jsonl").read_text() == "my rows\n" and not (tmp_path / "ud.jsonl").exists()


def test_a_user_file_named_like_the_lock_is_not_deleted(job, tmp_path):
    """The issue's case: `extract -o lg.st` beside a user file `lg.st.lock` without a pid."""
    lock = tmp_path / "lg.st.lock"
    lock.write_text("my notes\n")
    r = armo("extract", job["rows"], "--backbone", job["backbone"], "-o", tmp_path / "lg.st", "--device", "cpu", "-q")
    assert r.code == 2 and one_line(r).endswith("lg.st.lock: exists and armo did not write it (armo keeps its lock "
                                                "under this name); move it or choose another output path")
    assert lock.read_text() == "my notes\n" and not (tmp_path / "lg.st").exists()
    # a link there is refused too, and its target untouched
    lock.unlink()
    lock.symlink_to(tmp_path / "elsewhere")
    r = armo("extract", job["rows"], "--backbone", job["backbone"], "-o", tmp_path / "lg.st", "--device", "cpu", "-q")
    assert r.code == 2 and "a link where armo keeps its lock" in one_line(r) and not (tmp_path / "elsewhere").exists()


def test_a_stale_lock_armo_wrote_is_taken_over(job, tmp_path):
    (tmp_path / "s.jsonl.lock").write_text("armo-lock pid 999999\n")  # a killed run's
    r = job["score"]("-o", tmp_path / "s.jsonl")
    assert r.code == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("s.")) == ["s.jsonl"]


def test_report_without_o_keeps_a_page_armo_did_not_write(job, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    r = job["evaluate"]("-o", tmp_path / "report.json", "--pairs-output", tmp_path / "pairs-out.jsonl")
    assert r.code == 0, r.stderr
    monkeypatch.chdir(tmp_path)
    Path("report.html").write_text("<html>my page</html>")
    args = ("report", "report.json", "--pairs", "pairs-out.jsonl")
    r = armo(*args)
    assert r.code == 2 and one_line(r) == ("error: report.html: exists and armo did not write it; give -o report.html "
                                           "to replace it, or another path")
    assert Path("report.html").read_text() == "<html>my page</html>"
    assert armo(*args, "-o", "report.html").code == 0  # asked for: replaced
    assert "generator' content='armo report'" in Path("report.html").read_text()
    Path("report.html").write_text(Path("report.html").read_text().replace("<title>", "<title>old "))
    assert armo(*args).code == 0  # armo's own page: redrawn without -o
    assert "<title>old " not in Path("report.html").read_text()


# --- what --resume reuses is checked ---------------------------------------------------------------------


def _edit_unit(path: Path, edit: str) -> None:
    """Change a finished window's unit on disk as a flipped bit, a cut copy or a hand edit would. (A unit's rows are
    the check pass's, never its own metadata's: see test_file_safety for the seal that refuses an edited field.)"""
    from armo_cli.artifact_files import CHECKSUM_KEY, META_KEY, SEAL_KEY, save_raw_artifact, tensors_sha256
    from safetensors import safe_open

    raw = bytearray(path.read_bytes())
    if edit == "tensor":  # a score's bytes (the checksum no longer matches)
        raw[-3] ^= 0x01
        path.write_bytes(bytes(raw))
    elif edit == "cut":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    else:  # "forged": an id and a score changed, the file rewritten whole with a valid checksum and no seal
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()[META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta.pop(SEAL_KEY)
        meta["groups"][0]["ids"][0] = "forged"
        tensors["0.score"] = tensors["0.score"] + 1.0
        meta[CHECKSUM_KEY] = tensors_sha256(tensors)
        save_raw_artifact(path, tensors, meta)


@pytest.mark.parametrize("command,edit", [("score", "tensor"), ("score", "cut"),
                                          ("score", "forged"), ("evaluate", "tensor"), ("evaluate", "forged")])
def test_resume_scores_again_a_window_changed_on_disk(job, tmp_path, monkeypatch, command, edit):
    (tmp_path / "ref").mkdir()
    ref = tmp_path / "ref" / "out.json"  # the same names in another folder: the report records its pairs file's
    extra = ("--pairs-output", tmp_path / "ref" / "out-pairs.jsonl") if command == "evaluate" else ()
    assert job[command]("-o", ref, *extra).code == 0
    out = tmp_path / "out.json"
    extra = ("--pairs-output", tmp_path / "out-pairs.jsonl") if command == "evaluate" else ()
    r = interrupted_after(monkeypatch, 2, lambda: job[command]("-o", out, *extra))
    assert r.code == 130
    unit = tmp_path / "out.json.parts" / "chunk-000000.safetensors"
    before = unit.read_bytes()
    _edit_unit(unit, edit)
    assert unit.read_bytes() != before
    assert job[command]("-o", out, *extra, "--resume").code == 0
    assert out.read_bytes() == ref.read_bytes()
    if command == "evaluate":
        assert (tmp_path / "out-pairs.jsonl").read_bytes() == (tmp_path / "ref" / "out-pairs.jsonl").read_bytes()


# --- a failed write is the world's failure (exit 1), naming the path -----------------------------------------


def _armo_limited(args: list, env: dict, limit: int | None = None, stdout=None):
    """`armo ARGS` in a subprocess whose files may not grow past `limit` bytes (a full disk, as the writer sees it)."""
    import resource
    import signal
    import subprocess
    import sys

    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-c", "from armo_cli.cli import main; main()", *map(str, args)],
                          stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, **env}, preexec_fn=pre, text=True, timeout=300)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("command", ["sample", "score"])
def test_stdout_on_a_full_disk_is_exit_1(job, command, armo_cache):
    """`armo sample big.jsonl > full/s.jsonl` used to say "sampled 1 rows" and exit 0."""
    args = ["sample", job["rows"]] if command == "sample" else ["score", *job["common"], job["rows"]]
    with open("/dev/full", "w") as full:
        r = _armo_limited(args, {"ARMO_CACHE": str(armo_cache)}, stdout=full)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == ["error: <stdout>: No space left on device"]


@pytest.mark.slow
def test_extract_and_export_on_a_full_disk_are_exit_1_naming_the_path(job, tiny_model, tmp_path, armo_cache):
    env = {"ARMO_CACHE": str(armo_cache)}
    out = tmp_path / "f.st"
    r = _armo_limited(["extract", job["rows"], "--backbone", job["backbone"], "-o", out, "--device", "cpu", "-q"],
                      env, limit=2048)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {out}.parts/chunk-000000.safetensors: File too large"], r.stderr
    assert not out.exists()
    hf = tmp_path / "hf"
    r = _armo_limited(["export", "-m", tiny_model / "model", "--backbone", job["backbone"], hf], env, limit=4096)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {hf}/model.safetensors: File too large"], r.stderr
    assert not hf.exists() and not list(tmp_path.glob(".hf.*"))


# --- a short write to stdout is a failure, never a cut file with exit 0 (#51 §2, §9) ------------------------


@pytest.mark.parametrize("command", ["sample", "score"])
def test_a_short_write_to_stdout_is_exit_1(job, command, armo_cache, tmp_path):
    """A full disk behind a redirect takes the first 64 KiB and refuses the rest: Python's own stdout lost the rest
    silently (`armo sample big.jsonl > full/s.jsonl` said "sampled 1 rows", exit 0, 65,536 bytes of a 2 MB row; `score
    -q` of one window the same). A file-size limit gives the same short write without a full disk."""
    big = write_jsonl(tmp_path / "big.jsonl", [{"id": "big", "prompt": "p", "response": "word " * 40_000}])
    # score: the first window's records (8 rows) pass the limit in one write
    args = ["sample", big] if command == "sample" else ["score", *job["common"], job["rows"]]
    limit = 65_536 if command == "sample" else 4096
    with open(tmp_path / "out.jsonl", "w") as fh:
        r = _armo_limited(args, {"ARMO_CACHE": str(armo_cache)}, limit=limit, stdout=fh)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == ["error: <stdout>: File too large"]
    assert (tmp_path / "out.jsonl").stat().st_size == limit  # what the limit let through, and an error for the rest


@pytest.mark.parametrize("flag", ["--pairs-output", "-o"])
def test_evaluate_to_stdout_alone_is_exit_0(job, flag, capfd):
    """`evaluate --pairs-output - -q` wrote its output, then exited 3 ("a bug in armo"): with no file output there is
    no progress folder to discard."""
    r = job["evaluate"](flag, "-")
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    if flag == "-o":
        assert json.loads(r.stdout)["n"] == 24
    else:
        assert len(lines) == 24 and all("margin" in json.loads(x) for x in lines)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("failing", ["-o", "stdout"])
def test_evaluate_outputs_appear_together_or_not_at_all(job, tmp_path, failing, armo_cache):
    """When -o fails (a device that is full, or stdout behind a full disk), --pairs-output is not written either."""
    pairs_out = tmp_path / "pairs-out.jsonl"
    if failing == "-o":
        r = job["evaluate"]("-o", "/dev/full", "--pairs-output", pairs_out)
        assert r.code == 1 and one_line(r) == "error: /dev/full: No space left on device"
    else:
        with open("/dev/full", "w") as full:
            res = _armo_limited(["evaluate", *job["common"], job["pairs"], "-o", "-", "--pairs-output", pairs_out],
                                {"ARMO_CACHE": str(armo_cache)}, stdout=full)
        assert res.returncode == 1 and res.stderr.strip().splitlines() == ["error: <stdout>: No space left on device"]
    assert not pairs_out.exists() and not list(tmp_path.glob(".pairs-out*"))


# --- a unit forged with armo's own functions is computed again (#51 §7) ----------------------------------------


def _forge(path: Path, change, how: str, other_cache: Path | None = None) -> None:
    """Rewrite a finished unit with `change` applied to its tensors and a valid checksum, sealed as an attacker can:
    with the unkeyed hash armo's seal used to be ("unkeyed"), or with armo's own save under another user's secret
    ("other secret")."""
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import save_file

    from armo_cli.artifact_files import CHECKSUM_KEY, META_KEY, SEAL_KEY, save_raw_artifact, tensors_sha256

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[META_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    before = {k: v.clone() for k, v in tensors.items()}
    change(tensors)
    assert any(not torch.equal(before[k], tensors[k]) for k in before), sorted(tensors)  # the forgery changed something
    meta.pop(SEAL_KEY)
    meta.pop(CHECKSUM_KEY)
    if how == "unkeyed":
        meta[CHECKSUM_KEY] = tensors_sha256(tensors)
        meta[SEAL_KEY] = hashlib.sha256(json.dumps(meta, sort_keys=True, ensure_ascii=True).encode()).hexdigest()
        save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta)})
    else:
        import armo_cli.artifact_files as af

        old = os.environ.get("ARMO_CACHE")
        os.environ["ARMO_CACHE"] = str(other_cache)
        try:
            save_raw_artifact(path, tensors, meta, seal=True)
        finally:
            os.environ["ARMO_CACHE"] = old if old is not None else ""
            af._secrets.pop(str(other_cache / af.SEAL_SECRET), None)


def _score_to(t: dict) -> None:
    key = next(k for k in t if k.endswith(".score"))
    t[key] = torch.full_like(t[key], 0.999)


def _swap_sides(t: dict) -> None:
    for k in [k for k in t if k.endswith((".score", ".rewards"))]:
        t[k] = t[k].flip(1).contiguous()


@pytest.mark.parametrize("command,change", [("score", _score_to), ("evaluate", _swap_sides)])
@pytest.mark.parametrize("how", ["unkeyed", "other secret"])
def test_a_forged_window_is_scored_again(job, tmp_path, monkeypatch, command, change, how):
    """A score changed to 0.999, chosen and rejected swapped: rewritten with a valid checksum and a seal made with
    armo's own (then unkeyed) hash, it was accepted by --resume."""
    (tmp_path / "ref").mkdir()
    ref = tmp_path / "ref" / "out.json"
    extra = ("--pairs-output", tmp_path / "ref" / "out-pairs.jsonl") if command == "evaluate" else ()
    assert job[command]("-o", ref, *extra).code == 0
    out = tmp_path / "out.json"
    extra = ("--pairs-output", tmp_path / "out-pairs.jsonl") if command == "evaluate" else ()
    assert interrupted_after(monkeypatch, 2, lambda: job[command]("-o", out, *extra)).code == 130
    unit = tmp_path / "out.json.parts" / "chunk-000000.safetensors"
    _forge(unit, change, how, tmp_path / "other-cache")
    assert job[command]("-o", out, *extra, "--resume").code == 0
    assert out.read_bytes() == ref.read_bytes()
    if command == "evaluate":
        assert (tmp_path / "out-pairs.jsonl").read_bytes() == (tmp_path / "ref" / "out-pairs.jsonl").read_bytes()


@pytest.mark.parametrize("how", ["unkeyed", "other secret"])
def test_forged_features_are_extracted_again(job, tmp_path, how):
    from armo_cli.configs import ExtractConfig
    from armo_cli.extract import extract
    from armo_cli.features import Features

    out, ref = tmp_path / "f.st", tmp_path / "ref.st"
    assert armo("extract", job["rows"], "--backbone", job["backbone"], "-o", ref, "--device", "cpu", "--chunk-size", "8",
                "-q").code == 0

    def stop(c):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(ExtractConfig(input=str(job["rows"]), output=str(out), backbone=str(job["backbone"]), device="cpu",
                              quiet=True, chunk_size=8), after_chunk=stop)
    unit = tmp_path / "f.st.parts" / "chunk-000000.safetensors"

    def zeroed(t: dict) -> None:
        for k in t:
            if k.endswith("features"):
                t[k] = torch.zeros_like(t[k])
    _forge(unit, zeroed, how, tmp_path / "other-cache")
    assert armo("extract", job["rows"], "--backbone", job["backbone"], "-o", out, "--device", "cpu", "--chunk-size", "8",
                "--resume", "-q").code == 0
    a, b = Features.load(ref), Features.load(out)
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_progress_folders_and_the_secret_are_the_users_alone(job, tmp_path, monkeypatch, armo_cache):
    """Whatever the umask, OUT.parts/ is 0700 and the sealing secret 0600 (the secret is what makes a seal unforgeable)."""
    import stat as st_

    from armo_cli.artifact_files import SEAL_SECRET

    old = os.umask(0o000)
    try:
        r = interrupted_after(monkeypatch, 1, lambda: job["score"]("-o", tmp_path / "out.jsonl"))
    finally:
        os.umask(old)
    assert r.code == 130
    assert st_.S_IMODE(os.stat(tmp_path / "out.jsonl.parts").st_mode) == 0o700
    assert st_.S_IMODE(os.stat(armo_cache / SEAL_SECRET).st_mode) == 0o600


def _secret_in(cache: str, out) -> None:
    os.environ["ARMO_CACHE"] = cache
    from armo_cli.artifact_files import seal_secret

    out.put(seal_secret().hex())


@pytest.mark.slow
def test_ranks_creating_the_secret_at_once_all_read_the_same_one(tmp_path):
    """Ranks of a torchrun job start together on a fresh cache: the secret is written whole and linked in, so none
    reads it half-written and all seal with the one that won."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_secret_in, args=(str(tmp_path / "cache"), q)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert len(set(got)) == 1 and all(p.exitcode == 0 for p in procs)
    assert os.listdir(tmp_path / "cache") == ["seal.key"]  # no temporary file left
