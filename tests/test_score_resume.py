"""`armo score -o FILE` is a resumable job: rows are checked before any is scored, finished windows are kept in
FILE.parts/ (one sealed unit file each, resumable.JobProgress), and `--resume` reuses exactly the windows that still
match (model, settings, rows)."""
import json

import pytest

import armo_cli.scoring as scoring
from tests.helpers import armo, interrupted_after, write_jsonl

WINDOW = 16


@pytest.fixture
def rows(tiny_model, tmp_path, monkeypatch):
    """100 rows (single responses and pairs, mixed) in 7 windows of 16, and a counter of scored windows."""
    monkeypatch.setattr(scoring, "WINDOW_ROWS", WINDOW)
    r = [json.loads(x) for x in (tiny_model / "r.jsonl").read_text().splitlines()]
    p = [json.loads(x) for x in (tiny_model / "p.jsonl").read_text().splitlines()]
    mixed = [x for pair in zip(r[:50], p[:50]) for x in pair]
    calls = []
    real = scoring.score_trees

    def counted(model, bb, trees, *a, **k):
        calls.append([t.example.id for t in trees])
        return real(model, bb, trees, *a, **k)

    monkeypatch.setattr(scoring, "score_trees", counted)
    return {"rows": mixed, "input": write_jsonl(tmp_path / "in.jsonl", mixed), "calls": calls}


def score(tiny_model, tiny_backbone, inp, *args):
    return armo("score", "-m", str(tiny_model / "model"), str(inp), "--backbone", str(tiny_backbone), "--device", "cpu", "-q", *map(str, args))


def interrupted(monkeypatch, rows, n, run):
    """run() with a Ctrl-C while its (n+1)-th window is scored; after it, windows are counted afresh."""
    try:
        return interrupted_after(monkeypatch, n, run)
    finally:
        rows["calls"].clear()


def test_an_interrupted_score_resumes_to_the_same_file_scoring_only_what_was_left(tiny_model, tiny_backbone, rows,
                                                                                tmp_path, monkeypatch):
    plain = score(tiny_model, tiny_backbone, rows["input"])  # stdout: the reference
    assert plain.code == 0, plain.output
    n_windows = len(rows["calls"])
    assert n_windows == 7  # 100 rows, 16 per window
    out = tmp_path / "scores.jsonl"
    r = interrupted(monkeypatch, rows, 3, lambda: score(tiny_model, tiny_backbone, rows["input"], "-o", out))
    assert r.code == 130 and "rerun with --resume" in r.output
    assert not out.exists()  # the output appears only whole
    parts = tmp_path / "scores.jsonl.parts"
    assert sorted(p.name for p in parts.glob("chunk-*")) == [f"chunk-{i:06d}.safetensors" for i in range(3)]
    r = score(tiny_model, tiny_backbone, rows["input"], "-o", out, "--resume")
    assert r.code == 0, r.output
    # windows 4 to 7 only, and the file equals an uninterrupted run's output, byte for byte
    assert [c[0] for c in rows["calls"]] == [rows["rows"][i * WINDOW]["id"] for i in range(3, 7)]
    assert out.read_text() == plain.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "scores.jsonl"]  # no parts, no lock


def test_without_resume_earlier_progress_is_discarded(tiny_model, tiny_backbone, rows, tmp_path, monkeypatch):
    out = tmp_path / "scores.jsonl"
    stop = interrupted(monkeypatch, rows, 2, lambda: score(tiny_model, tiny_backbone, rows["input"], "-o", out))
    assert stop.code == 130
    r = score(tiny_model, tiny_backbone, rows["input"], "-o", out)
    assert r.code == 0, r.output
    assert len(rows["calls"]) == 7 and len(out.read_text().splitlines()) == 100
    assert not (tmp_path / "scores.jsonl.parts").exists()


def test_resume_recomputes_only_the_windows_that_changed(tiny_model, tiny_backbone, rows, tmp_path, monkeypatch):
    """An edited row (window 3), other settings, or a torn last write: nothing that no longer matches is reused, and
    everything that still matches is."""
    out = tmp_path / "scores.jsonl"
    stop = interrupted(monkeypatch, rows, 5, lambda: score(tiny_model, tiny_backbone, rows["input"], "-o", out))
    assert stop.code == 130
    edited = [dict(x) for x in rows["rows"]]
    row = edited[2 * WINDOW + 3]
    row["response" if "response" in row else "chosen"] += " (edited)"
    inp2 = write_jsonl(tmp_path / "in2.jsonl", edited)
    ref = score(tiny_model, tiny_backbone, inp2)
    rows["calls"].clear()
    r = score(tiny_model, tiny_backbone, inp2, "-o", out, "--resume")
    assert r.code == 0, r.output
    # window 3 (edited) and windows 6 and 7 (never finished) only
    assert [c[0] for c in rows["calls"]] == [rows["rows"][i * WINDOW]["id"] for i in (2, 5, 6)]
    assert out.read_text() == ref.stdout

    # --top-k only shapes the records, built at the end: every window is reused; other weights share none
    out2 = tmp_path / "k.jsonl"
    stop = interrupted(monkeypatch, rows, 4, lambda: score(tiny_model, tiny_backbone, rows["input"], "-o", out2))
    assert stop.code == 130
    r = score(tiny_model, tiny_backbone, rows["input"], "-o", out2, "--resume", "--top-k", "2")
    assert r.code == 0, r.output
    assert len(rows["calls"]) == 7 - 4
    assert out2.read_text() == score(tiny_model, tiny_backbone, rows["input"], "--top-k", "2").stdout
    rows["calls"].clear()
    stop = interrupted(monkeypatch, rows, 4, lambda: score(tiny_model, tiny_backbone, rows["input"], "-o", out2))
    r = score(tiny_model, tiny_backbone, rows["input"], "-o", out2, "--resume", "--weights", "helpfulness=1")
    assert r.code == 0, r.output
    assert len(rows["calls"]) == 7

    # a run killed while writing a window leaves at most a temporary file (units are written atomically): ignored
    out3 = tmp_path / "t.jsonl"
    stop = interrupted(monkeypatch, rows, 2, lambda: score(tiny_model, tiny_backbone, rows["input"], "-o", out3))
    assert stop.code == 130
    (tmp_path / "t.jsonl.parts" / ".chunk-000002.safetensors.x1y2.tmp").write_bytes(b"torn")
    plain = score(tiny_model, tiny_backbone, rows["input"])
    rows["calls"].clear()
    r = score(tiny_model, tiny_backbone, rows["input"], "-o", out3, "--resume")
    assert r.code == 0, r.output
    assert len(rows["calls"]) == 5 and out3.read_text() == plain.stdout


def test_a_bad_row_stops_the_job_before_any_window_is_scored(tiny_model, tiny_backbone, rows, tmp_path):
    lines = rows["input"].read_text().splitlines()
    lines[95] = '{"prompt": "hi", "response": 3}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.jsonl"
    r = score(tiny_model, tiny_backbone, bad, "-o", out)
    assert r.code == 2 and f"{bad}:96: field 'response'" in r.output
    assert rows["calls"] == [] and sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "in.jsonl"]


def test_score_from_stdin_to_a_file_is_checked_and_resumable_too(tiny_model, tiny_backbone, rows, tmp_path):
    out = tmp_path / "scores.jsonl"
    text = rows["input"].read_text()
    r = armo("score", "-m", str(tiny_model / "model"), "-", "-o", str(out), "--backbone", str(tiny_backbone), "--device", "cpu", "-q", input=text)
    assert r.code == 0, r.output
    assert out.read_text() == score(tiny_model, tiny_backbone, rows["input"]).stdout
    bad = text.replace('"prompt"', '"prompt_"', 1)
    r = armo("score", "-m", str(tiny_model / "model"), "-", "-o", str(tmp_path / "b.jsonl"), "--backbone", str(tiny_backbone), "--device", "cpu", "-q", input=bad)
    assert r.code == 2 and r.output.startswith("error: <stdin>:1: ")
    assert not (tmp_path / "b.jsonl").exists() and not (tmp_path / "b.jsonl.parts").exists()


@pytest.mark.parametrize("args, message", [
    (["--resume"], "--resume needs --output FILE"),
    (["--resume", "-o", "{tmp}/s.jsonl", "--format", "table"], "--resume writes JSONL: drop --format table"),
])
def test_resume_is_refused_where_there_is_nothing_to_keep(tiny_model, tiny_backbone, rows, tmp_path, args, message):
    r = score(tiny_model, tiny_backbone, rows["input"], *[a.format(tmp=tmp_path) for a in args])
    assert r.code == 2 and message in r.output
    r = armo("score", "-m", str(tiny_model / "model"), "--features", str(tiny_model / "r.st"), "--resume", "-o", str(tmp_path / "f.jsonl"))
    assert r.code == 2 and "--resume: scoring --features is one quick step" in r.output


def test_a_parts_folder_armo_did_not_write_is_left_alone(tiny_model, tiny_backbone, rows, tmp_path):
    parts = tmp_path / "scores.jsonl.parts"
    parts.mkdir()
    (parts / "notes.txt").write_text("mine")
    r = score(tiny_model, tiny_backbone, rows["input"], "-o", tmp_path / "scores.jsonl")
    assert r.code == 2 and "not armo's progress folder (it holds notes.txt)" in r.output
    assert (parts / "notes.txt").read_text() == "mine" and not (tmp_path / "scores.jsonl").exists()


def evaluate(tiny_model, tiny_backbone, inp, *args):
    return armo("evaluate", "-m", str(tiny_model / "model"), str(inp), "--backbone", str(tiny_backbone), "--device", "cpu", "-q", *map(str, args))


def test_an_interrupted_evaluate_resumes_to_the_same_report(tiny_model, tiny_backbone, rows, tmp_path, monkeypatch):
    """Progress is kept beside the first file output and removed only once every output is written."""
    pairs = [json.loads(x) for x in (tiny_model / "p.jsonl").read_text().splitlines()]  # 60 pairs: 4 windows
    inp = write_jsonl(tmp_path / "p.jsonl", pairs)
    ref = tmp_path / "ref"
    r = evaluate(tiny_model, tiny_backbone, inp, "-o", ref / "rep.json", "--pairs-output", ref / "pairs.jsonl")
    assert r.code == 0, r.output
    out = tmp_path / "out"
    r = interrupted(monkeypatch, rows, 2, lambda: evaluate(tiny_model, tiny_backbone, inp, "-o", out / "rep.json",
                                                           "--pairs-output", out / "pairs.jsonl"))
    assert r.code == 130 and "rerun with --resume" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["rep.json.parts"]
    r = evaluate(tiny_model, tiny_backbone, inp, "-o", out / "rep.json", "--pairs-output", out / "pairs.jsonl", "--resume")
    assert r.code == 0, r.output
    assert len(rows["calls"]) == 2
    assert (out / "rep.json").read_text() == (ref / "rep.json").read_text()
    assert (out / "pairs.jsonl").read_text() == (ref / "pairs.jsonl").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["pairs.jsonl", "rep.json"]
    # the same pairs evaluated without any file output (tables only) give the same report
    from armo_cli.configs import EvaluateConfig
    from armo_cli.evaluate import evaluate as run_evaluate

    rep = run_evaluate(EvaluateConfig(input=str(inp), model=str(tiny_model / "model"), backbone=str(tiny_backbone),
                                      device="cpu", quiet=True))
    assert json.loads(json.dumps(rep, default=str))["subsets"] == json.loads((ref / "rep.json").read_text())["subsets"]


def test_evaluate_refuses_a_single_response_before_scoring_anything(tiny_model, tiny_backbone, rows, tmp_path):
    pairs = (tiny_model / "p.jsonl").read_text().splitlines()
    single = (tiny_model / "r.jsonl").read_text().splitlines()[0]
    inp = tmp_path / "p.jsonl"
    inp.write_text("\n".join(pairs + [single]) + "\n")
    r = evaluate(tiny_model, tiny_backbone, inp, "-o", tmp_path / "rep.json")
    assert r.code == 2 and f"{inp}:61: evaluate needs pairs" in r.output
    assert rows["calls"] == [] and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "p.jsonl"]


def test_evaluate_resume_is_refused_where_there_is_nothing_to_keep(tiny_model, tiny_backbone, rows, tmp_path):
    r = evaluate(tiny_model, tiny_backbone, rows["input"], "--resume")
    assert r.code == 2 and "--resume needs a file output (-o, --pairs-output or --html)" in r.output
    r = armo("evaluate", "-m", str(tiny_model / "model"), "--features", str(tiny_model / "p.st"), "--resume", "-o", str(tmp_path / "r.json"))
    assert r.code == 2 and "--resume: evaluating --features is one quick step" in r.output


def test_a_parts_path_that_is_a_file_or_a_link_is_refused(tiny_model, tiny_backbone, rows, tmp_path):
    (tmp_path / "a.jsonl.parts").write_text("mine")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "b.jsonl.parts").symlink_to(tmp_path / "elsewhere")
    for name in ("a", "b"):
        r = score(tiny_model, tiny_backbone, rows["input"], "-o", tmp_path / f"{name}.jsonl")
        assert r.code == 2 and "not armo's progress folder (not a folder)" in r.output
    assert (tmp_path / "a.jsonl.parts").read_text() == "mine" and (tmp_path / "b.jsonl.parts").is_symlink()


def test_progress_of_an_earlier_armo_build_is_dropped_not_refused(tiny_model, tiny_backbone, rows, tmp_path, monkeypatch):
    """armo 0.2.0.dev builds kept a window job's progress as rows.jsonl and its index: known names, dropped on
    --resume (that progress is lost, never copied), and the job runs to the same output."""
    from armo_cli.jobfiles import PARTS_MARK

    out = tmp_path / "s.jsonl"
    parts = tmp_path / "s.jsonl.parts"
    parts.mkdir()
    (parts / PARTS_MARK).write_text("{}\n")
    for name in ("rows.jsonl", "index.jsonl", "index.jsonl.tmp"):
        (parts / name).write_text('{"job": "old"}\n')
    r = score(tiny_model, tiny_backbone, rows["input"], "-o", out, "--resume")
    assert r.code == 0, r.output
    assert len(rows["calls"]) == 7 and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "s.jsonl"]


def test_rows_are_rendered_once_for_the_check_and_once_more_only_where_scored(tiny_model, tiny_backbone, rows, tmp_path,
                                                                           monkeypatch):
    """The check pass keys every window and holds the first; a window that --resume finds done is read, not rendered."""
    from armo_cli.rendering import Renderer

    rendered = []
    real = Renderer.tokenize_many

    def counting(self, examples, *a, **k):
        rendered.append(len(examples))
        return real(self, examples, *a, **k)

    monkeypatch.setattr(Renderer, "tokenize_many", counting)
    out = tmp_path / "s.jsonl"
    assert score(tiny_model, tiny_backbone, rows["input"], "-o", out).code == 0
    assert sum(rendered) == 100 + (100 - WINDOW)  # the check pass, then every window but the first (held)
    rendered.clear()
    stop = interrupted(monkeypatch, rows, 3, lambda: score(tiny_model, tiny_backbone, rows["input"], "-o", out))
    assert stop.code == 130
    rendered.clear()
    assert score(tiny_model, tiny_backbone, rows["input"], "-o", out, "--resume").code == 0
    assert sum(rendered) == 100 + (100 - 3 * WINDOW)  # the check pass, then the 4 windows left
    rendered.clear()
    one = write_jsonl(tmp_path / "one.jsonl", rows["rows"][:WINDOW])
    assert score(tiny_model, tiny_backbone, one, "-o", tmp_path / "one-out.jsonl").code == 0
    assert sum(rendered) == WINDOW  # a one-window input is rendered once
