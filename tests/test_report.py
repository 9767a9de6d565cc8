"""The HTML report: one offline file, every section, figures whose numbers are the records' own."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.helpers import armo

pytest.importorskip("matplotlib")

SECTIONS = ("summary", "accuracy", "gate", "single", "length", "correlation")


@pytest.fixture(scope="module")
def evaluated(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    m = tiny_model / "model"
    r = armo("evaluate", "-m", str(m), str(tiny_model / "p.jsonl"), "-o", str(d / "report.json"),
             "--pairs-output", str(d / "pairs.jsonl"), "--html", str(d / "report.html"), "-q")
    assert r.code == 0, r.stderr
    return d


def test_one_offline_file_with_every_section(evaluated):
    html = (evaluated / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<html") == 1
    for sid in SECTIONS:
        assert f"<section id='{sid}'>" in html
    # nothing fetched at view time: src/href only to fragments of the page itself (SVG's <use xlink:href="#id">)
    # or embedded data (a heatmap's pixels); no script; no URL but the SVG/XML namespace names
    refs = re.findall(r"\b(?:src|href)\s*=\s*[\"']([^\"']*)", html)
    assert refs and all(r.startswith(("#", "data:image/png;base64,")) for r in refs), sorted(set(refs))[:5]
    assert "<script" not in html
    assert "<tr><th>feature layer</th><td>-1</td></tr><tr><th>response feature</th><td>its last token</td></tr>" in html
    urls = set(re.findall(r"https?://[^\s\"'<>]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    assert html.count("<svg") == 7  # accuracy, gate + coefficients, single objectives, length, correlations x2
    assert html.count("<details>") >= 6
    assert len(html) < 1_000_000


def test_figures_are_the_records_numbers(evaluated):
    from armo_cli.report import figure_data, report_from_files

    report, records = report_from_files(str(evaluated / "report.json"), str(evaluated / "pairs.jsonl"))
    data = figure_data(report, records)
    objectives = report["model_info"]["objectives"]
    subsets = {r["subset"] for r in records}
    assert set(data["gate_weights"]) == subsets
    for s in subsets:
        rs = [r for r in records if r["subset"] == s]
        for o in objectives:
            assert data["gate_weights"][s][o] == pytest.approx(sum(r["gating"][o] for r in rs) / len(rs), abs=1e-12)
            assert data["coefficients"][s][o] == pytest.approx(sum(r["coefficients"][o] for r in rs) / len(rs), abs=1e-12)
        # the full model's column is the evaluate report's accuracy
        assert data["single_objective_accuracy"][s]["full model"] == report["subsets"][s]["accuracy"]
        o = objectives[0]
        alone = sum((r["chosen"]["adjusted"][o] > r["rejected"]["adjusted"][o]) for r in rs) / len(rs)
        assert data["single_objective_accuracy"][s][o] == pytest.approx(alone)
    # the numbers are in the page's tables too (nothing only in a picture)
    html = (evaluated / "report.html").read_text()
    s0 = sorted(subsets)[0]
    assert f"{data['gate_weights'][s0][objectives[0]]:.3f}" in html
    # the length objective is zero after decorrelation: no correlation to draw
    v = report["model_info"]["verbosity_objective"]
    assert data["correlation_after"][v][objectives[0]] is None
    assert data["correlation_before"][v][v] == pytest.approx(1.0)


def test_armo_report_redraws_the_same_figures(evaluated):
    from armo_cli.report import dumps_figure_data, report_from_files

    r = armo("report", str(evaluated / "report.json"), "--pairs", str(evaluated / "pairs.jsonl"), "-o",
             str(evaluated / "again.html"))
    assert r.code == 0, r.stderr
    assert (evaluated / "again.html").read_text() == (evaluated / "report.html").read_text()
    rep, recs = report_from_files(str(evaluated / "report.json"), str(evaluated / "pairs.jsonl"))
    assert dumps_figure_data(rep, recs) == dumps_figure_data(rep, recs)


def test_report_refuses_records_without_explanations(evaluated, tmp_path):
    bad = tmp_path / "old.jsonl"
    bad.write_text(json.dumps({"id": "a", "subset": "s", "chosen": 1, "rejected": 0, "margin": 1}) + "\n")
    r = armo("report", str(evaluated / "report.json"), "--pairs", str(bad), "-o", str(tmp_path / "x.html"))
    assert r.code == 2 and "old.jsonl:1" in r.stderr and "field 'gating'" in r.stderr
    assert not (tmp_path / "x.html").exists()


def test_one_shape_for_a_scored_pair_and_armo_01_pairs_files_still_draw(evaluated, tiny_model, tmp_path):
    """evaluate's pairs file is `armo score`'s pair record with each side's length and adjusted rewards: the same
    paths (.chosen.score, .chosen.rewards, .margin, .gating) in both. A pairs file in armo 0.1's flat shape still
    draws the same figures."""
    from armo_cli.report import dumps_figure_data, report_from_files

    pairs = [json.loads(x) for x in (evaluated / "pairs.jsonl").read_text().splitlines()]
    r = armo("score", "-m", tiny_model / "model", tiny_model / "p.jsonl", "-q")
    scored = {x["id"]: x for x in map(json.loads, r.stdout.splitlines())}
    for rec in pairs:
        mine = scored[rec["id"]]
        assert set(mine) <= set(rec) and set(mine["chosen"]) <= set(rec["chosen"])
        assert rec["chosen"]["rewards"] == mine["chosen"]["rewards"] and rec["margin"] == mine["margin"]
        assert set(rec["chosen"]) - set(mine["chosen"]) == {"length", "adjusted"}
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({
        "id": x["id"], "subset": x["subset"], "chosen": x["chosen"]["score"], "rejected": x["rejected"]["score"],
        "margin": x["margin"], "chosen_length": x["chosen"]["length"], "rejected_length": x["rejected"]["length"],
        "gating": x["gating"], "coefficients": x["coefficients"],
        "rewards": {s: x[s]["rewards"] for s in ("chosen", "rejected")},
        "adjusted": {s: x[s]["adjusted"] for s in ("chosen", "rejected")}}) + "\n" for x in pairs))
    report = json.loads((evaluated / "report.json").read_text())
    report.pop("pairs_sha256")
    (tmp_path / "old-report.json").write_text(json.dumps(report))
    a = dumps_figure_data(*report_from_files(str(evaluated / "report.json"), str(evaluated / "pairs.jsonl")))
    b = dumps_figure_data(*report_from_files(str(tmp_path / "old-report.json"), str(old)))
    assert a == b


def test_report_refuses_the_pairs_of_another_run(evaluated, tiny_model, tmp_path):
    """A report redrawn from another run's pairs mixed one run's summary with another's figures, without a word."""
    import gzip

    report, pairs = evaluated / "report.json", evaluated / "pairs.jsonl"
    assert json.loads(report.read_text())["pairs_sha256"]
    gz = tmp_path / "pairs.jsonl.gz"
    gz.write_bytes(gzip.compress(pairs.read_bytes()))  # the same records, compressed: accepted
    assert armo("report", report, "--pairs", gz, "-o", tmp_path / "gz.html").code == 0
    # the same rows scored by the same model with other weights: the same ids and counts, other numbers
    other = tmp_path / "other.jsonl"
    r = armo("evaluate", "-m", tiny_model / "model", tiny_model / "p.jsonl", "--weights", "verbosity=1",
             "--pairs-output", other, "-q")
    assert r.code == 0, r.stderr
    r = armo("report", report, "--pairs", other, "-o", tmp_path / "x.html")
    assert (r.code, r.stderr) == (2, f"error: {other}: not the pairs file of {report} (its records differ from those "
                                     f"the report was computed from); give the --pairs-output file of the same "
                                     f"`armo evaluate` run\n")
    assert not (tmp_path / "x.html").exists()
    # a report from before the digest: the counts are checked
    old = tmp_path / "old.json"
    old.write_text(json.dumps({k: v for k, v in json.loads(report.read_text()).items() if k != "pairs_sha256"}))
    few = tmp_path / "few.jsonl"
    few.write_text("".join(pairs.read_text().splitlines(keepends=True)[:5]))
    r = armo("report", old, "--pairs", few, "-o", tmp_path / "x.html")
    want = {k: v["n"] for k, v in json.loads(report.read_text())["subsets"].items()}
    first = sorted(want)[0]
    got = sum(json.loads(x)["subset"] == first for x in few.read_text().splitlines())
    assert (r.code, r.stderr) == (2, f"error: {few}: not the pairs file of {old} (subset {first!r}: {got} pairs, the "
                                     f"report {want[first]})\n")
    # the same counts under another subset name: the message names the field and both names
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(pairs.read_text().replace(f'"subset": "{first}"', '"subset": "renamed"'))
    r = armo("report", old, "--pairs", renamed, "-o", tmp_path / "x.html")
    assert (r.code, r.stderr) == (2, f"error: {renamed}: not the pairs file of {old} (field 'subset': 'renamed' only "
                                     f"in the pairs; {first!r} only in the report)\n")
    assert armo("report", old, "--pairs", pairs, "-o", tmp_path / "y.html").code == 0


def test_evaluate_without_html_does_not_import_matplotlib(tiny_model, tmp_path):
    import subprocess
    import sys

    code = ("import sys; from armo_cli.cli import main\n"
            "try:\n    main(['evaluate', '-m', sys.argv[1], sys.argv[2], '-q', '-o', sys.argv[3]])\n"
            "except SystemExit: pass\n"
            "print('matplotlib' in sys.modules)")
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model / "model"), str(tiny_model / "p.jsonl"),
                          str(tmp_path / "r.json")], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 60
    assert time.time() - t0 < 120


def test_names_with_dollar_signs_are_drawn_as_written(tiny_model, tmp_path):
    """matplotlib reads `$...$` as TeX: a subset `a $\\frac{$ b` stopped the report with an internal error, and
    `x $\\alpha$` was drawn as `x α`."""
    from tests.helpers import write_jsonl

    rows = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "a", "prompt": "hi", "chosen": "a", "rejected": "b", "subset": "a $\\frac{$ b"},
        {"id": "b", "prompt": "hi", "chosen": "c", "rejected": "d", "subset": "x $\\alpha$"}])
    r = armo("evaluate", "-m", tiny_model / "model", rows, "-o", tmp_path / "r.json", "--html", tmp_path / "r.html", "-q")
    assert r.code == 0, r.stderr
    labels = re.findall(r"<text [^>]*>([^<]*)  n=1</text>", (tmp_path / "r.html").read_text())
    assert sorted(labels) == ["a $\\frac{$ b", "x $\\alpha$"]


def test_control_characters_in_names_are_shown_not_written_raw(tiny_model, tmp_path):
    """A subset holding an escape sequence put raw ESC bytes into the page (and matplotlib warned of a missing
    glyph on stderr); it is drawn and tabled as its Python escape, as the terminal shows it."""
    from tests.helpers import write_jsonl

    rows = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "prompt": "hi", "chosen": "a", "rejected": "b",
                                               "subset": "s\x1b[2Jx"}])
    r = armo("evaluate", "-m", tiny_model / "model", rows, "--html", tmp_path / "r.html", "-q")
    assert r.code == 0 and r.stderr == ""
    page = (tmp_path / "r.html").read_text()
    assert "\x1b" not in page
    assert re.findall(r"<text [^>]*>([^<]*)  n=1</text>", page) == ["s\\x1b[2Jx"]
    assert "<td>s\\x1b[2Jx</td>" in page


def test_report_finds_its_pairs_file_and_both_commands_say_what_they_wrote(tiny_model, tmp_path, monkeypatch):
    """The README's names: `armo evaluate ... -o report.json --pairs-output pair-scores.jsonl`, then
    `armo report report.json` finds pair-scores.jsonl through the report (relative to the report's folder)."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    r = armo("evaluate", "-m", tiny_model / "model", tiny_model / "p.jsonl", "-o", "out/report.json",
             "--pairs-output", "out/pair-scores.jsonl", "-q")
    assert r.code == 0 and r.stdout == "" and "wrote" not in r.stderr, r.stderr
    r = armo("evaluate", "-m", tiny_model / "model", tiny_model / "p.jsonl", "-o", "out/report.json",
             "--pairs-output", "out/pair-scores.jsonl")
    assert r.code == 0 and "wrote out/report.json, out/pair-scores.jsonl (60 pairs)" in " ".join(r.stderr.split())
    assert json.loads(Path("out/report.json").read_text())["pairs_output"] == "pair-scores.jsonl"
    r = armo("report", "out/report.json")
    assert r.code == 0, r.stderr
    assert "wrote report.html (60 pairs, from out/report.json and out/pair-scores.jsonl)" in " ".join(r.stderr.split())
    assert Path("report.html").exists()
    os.rename("out", "moved")  # the report and its pairs file move together
    assert armo("report", "moved/report.json", "-o", "again.html", "-q").code == 0
    r = armo("evaluate", "-m", tiny_model / "model", tiny_model / "p.jsonl", "-o", "nopairs.json", "-q")
    r = armo("report", "nopairs.json", "-o", "x.html")
    assert r.code == 2 and r.stderr.strip() == ("error: nopairs.json: names no pairs file (written without "
                                                "--pairs-output, or by armo 0.1); give --pairs")


def test_each_toggle_names_its_numbers(evaluated):
    """Sections with two figures had two identical "the numbers" toggles."""
    html = (evaluated / "report.html").read_text()
    for section in re.findall(r"<section id='\w+'>.*?</section>", html, re.S):
        summaries = re.findall(r"<summary>(.*?)</summary>", section)
        assert len(summaries) == len(set(summaries)), summaries
    assert "<summary>the numbers: gate weights</summary>" in html and "<summary>the numbers: coefficients</summary>" in html
