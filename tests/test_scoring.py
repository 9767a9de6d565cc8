import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from armo_cli.model import ArmoModel
from armo_cli.rewardbench import EXAMPLE_COUNTS, section_scores
from armo_cli.evaluate import evaluate_scores, pair_outcomes

from tests.helpers import armo, cli


def test_score_fields_and_coefficients_reproduce_the_score(tiny_model):
    d = tiny_model
    r = cli("score", "-m", d / "model", "--features", d / "r.st", "--top-k", "2")
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["id"] for x in recs] == [f"r{i}" for i in range(80)]
    model = ArmoModel.load(d / "model")
    objs, scale = model.objectives, model.gating.gate.logit_scale.item()
    for x in recs:
        assert set(x) >= {"id", "score", "rewards", "rewards_original", "gating", "coefficients", "top_objectives"}
        assert list(x["rewards"]) == objs and len(x["top_objectives"]) == 2
        s = sum(x["coefficients"][o] * x["rewards"][o] for o in objs)
        assert abs(s - x["score"]) < 1e-5
        assert abs(sum(x["gating"].values()) - scale) < 1e-4  # weights sum to the learned scale
        # the length objective reports tokens on its original scale
        assert x["rewards_original"]["verbosity"] > 0
    pairs = [json.loads(x) for x in cli("score", "-m", d / "model", "--features", d / "p.st").stdout.splitlines()]
    for x in pairs:
        assert abs(x["margin"] - (x["chosen"]["score"] - x["rejected"]["score"])) < 1e-6
        assert x["preferred"] == ("chosen" if x["margin"] > 0 else "rejected" if x["margin"] < 0 else "tie")


def test_fixed_weights_and_single_objective_override_the_gate(tiny_model):
    d = tiny_model
    m = ArmoModel.load(d / "model")
    a, b = m.objectives[0], m.objectives[1]
    x = json.loads(cli("score", "-m", d / "model", "--features", d / "r.st", "--weights", f"{a}=0.7,{b}=0.3").stdout.splitlines()[0])
    assert x["gating"][a] == pytest.approx(0.7) and x["gating"][b] == pytest.approx(0.3)
    T = m.decorrelation.transform
    r = torch.tensor([x["rewards"][o] for o in m.objectives])
    w = torch.zeros(len(m.objectives))
    w[0], w[1] = 0.7, 0.3
    assert x["score"] == pytest.approx(float(w @ (r @ T)), abs=1e-5)
    y = json.loads(cli("score", "-m", d / "model", "--features", d / "r.st", "--objective", a).stdout.splitlines()[0])
    assert y["score"] == pytest.approx(float((r @ T)[0]), abs=1e-5)
    bad = armo("score", "-m", str(d / "model"), "--features", str(d / "r.st"), "--weights", "nope=1")
    assert bad.code == 2 and "unknown objective 'nope'" in bad.output


def test_score_from_jsonl_matches_features_and_table_format(tiny_model, tiny_backbone):
    d = tiny_model
    a = [json.loads(x) for x in cli("score", "-m", d / "model", d / "r.jsonl", "-q").stdout.splitlines()]
    b = [json.loads(x) for x in cli("score", "-m", d / "model", "--features", d / "r.st").stdout.splitlines()]
    assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-5)
    t = cli("score", "-m", d / "model", "--features", d / "p.st", "--format", "table").stdout
    assert "|coef|" in t and "preferred" in t


def test_repeated_rows_and_ids_are_scored_each_in_its_place(tiny_model, tmp_path):
    """A policy's identical samples and a dump that keys samples by their prompt's id: score and evaluate
    echo ids, so they take both (only extract, whose ids key a features file, refuses a repeated explicit id).
    A copy of a row without an id is told apart by '-k'."""
    from tests.helpers import pair_rows, write_jsonl

    d = tiny_model
    plain = {"prompt": "say hi", "response": "hi there"}
    rows = [plain, {"id": "p7", "prompt": "a", "response": "b"}, plain, {"id": "p7", "prompt": "a", "response": "c"}, plain]
    out = [json.loads(x) for x in cli("score", "-m", d / "model", write_jsonl(tmp_path / "s.jsonl", rows), "-q").stdout.splitlines()]
    h = out[0]["id"]
    assert [r["id"] for r in out] == [h, "p7", h + "-2", "p7", h + "-3"]
    assert out[0]["score"] == out[2]["score"] == out[4]["score"] and out[1]["score"] != out[3]["score"]
    pairs = [{k: v for k, v in r.items() if k != "id"} for r in pair_rows(3)]
    r = cli("evaluate", "-m", d / "model", write_jsonl(tmp_path / "p.jsonl", pairs + pairs[:1]), "-q",
               "--pairs-output", tmp_path / "po.jsonl", "-o", tmp_path / "rep.json")
    recs = [json.loads(x) for x in (tmp_path / "po.jsonl").read_text().splitlines()]
    assert [x["id"] for x in recs][3] == recs[0]["id"] + "-2" and recs[3]["margin"] == recs[0]["margin"]
    assert json.loads((tmp_path / "rep.json").read_text())["n"] == 4


def test_the_table_stays_readable_at_80_columns():
    """Objective names stay whole and no line passes 80 columns, with the longest name the shipped model has."""
    from rich.console import Console

    from armo_cli.score import render_table

    objs = ["topicalchat-understandability", "ultrafeedback-overall", "verbosity"]
    rec = {"id": "x", "chosen": {"score": 0.5, "rewards": {o: 1.19 for o in objs}},
           "rejected": {"score": 0.4, "rewards": {o: 0.2 for o in objs}}, "margin": 0.1, "preferred": "chosen",
           "gating": {o: 0.5 for o in objs}, "coefficients": {objs[0]: 0.9, objs[1]: -0.3, objs[2]: 0.0}}
    con = Console(width=80, record=True, file=open("/dev/null", "w"))
    con.print(render_table(rec))
    text = con.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert all(o in text for o in objs) and "|coef|" in text and "rejected" in text


def test_model_directory_with_missing_or_mismatched_part(tiny_model, tmp_path):
    m = tmp_path / "m"
    shutil.copytree(tiny_model / "model", m)
    (m / "gating.safetensors").unlink()
    r = armo("score", "-m", str(m), "--features", str(tiny_model / "r.st"))
    assert r.code == 2 and "gating part" in r.output
    shutil.rmtree(m)
    shutil.copytree(tiny_model / "model", m)
    shutil.copyfile(tiny_model / "reg.st", m / "regression.safetensors")
    # a regression refit with another strength no longer matches the gate
    cli("fit-regression", tiny_model / "r.st", "--length-objective", "verbosity", "--alphas", "1000", "-o", m / "regression.safetensors", "-q")
    r = armo("score", "-m", str(m), "--features", str(tiny_model / "r.st"))
    assert r.code == 2 and "part" in r.output and "another regression" in r.output


def test_section_arithmetic_by_hand():
    acc = {"alpacaeval-easy": 1.0, "alpacaeval-hard": 0.5, "mt-bench-hard": 0.25, "xstest-should-refuse": 1.0,
           "xstest-should-respond": 0.5, "math-prm": 0.5, "hep-go": 1.0, "anthropic_helpful": 0.6, "shp": 0.4}
    sections, score, info = section_scores(acc)
    chat = (1.0 * 100 + 0.5 * 95) / 195
    safety = (1.0 * 154 + 0.5 * 250) / 404
    reasoning = (0.5 * 984 + 1.0 * 164) / (984 + 164)
    assert sections["Chat"] == pytest.approx(chat)
    assert sections["Chat Hard"] == pytest.approx(0.25)
    assert sections["Safety"] == pytest.approx(safety)
    assert sections["Reasoning"] == pytest.approx(reasoning)
    assert sections["Prior Sets"] == pytest.approx(0.5)
    assert score == pytest.approx((chat + 0.25 + safety + reasoning + 0.5 * 0.5) / 4.5)
    assert EXAMPLE_COUNTS["xstest-should-refuse"] == 154 and EXAMPLE_COUNTS["xstest-should-respond"] == 250
    # 7 of the 23 section subsets: the score is marked partial and names what is missing
    from armo_cli.rewardbench import SECTIONS, coverage_note

    assert not info["complete"] and info["missing_subsets"]["Chat Hard"] == SECTIONS["Chat Hard"][1:]
    assert coverage_note(info).startswith("the RewardBench score uses 7 of its 23 section subsets (missing: Chat: "
                                          "alpacaeval-length, mt-bench-easy, mt-bench-med; Chat Hard: llmbar-natural")
    full = {sub: 0.5 for subs in SECTIONS.values() for sub in subs}
    _, _, info = section_scores(full)
    assert info["complete"] and info["missing_subsets"] == {} and coverage_note(info) is None


def test_ties_rules_and_evaluate_report():
    scores = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [2.0, 2.0]])
    margin = scores[:, 0] - scores[:, 1]
    assert pair_outcomes(margin, "loss").tolist() == [1, 0, 0, 0]
    assert pair_outcomes(margin, "half").tolist() == [1, 0.5, 0, 0.5]
    lengths = torch.tensor([[10, 5], [3, 4], [8, 2], [1, 1]])
    rep = evaluate_scores(scores, ["a", "a", "b", "b"], lengths, "half", 200, 0)
    assert rep["subsets"]["a"]["accuracy"] == 0.75 and rep["subsets"]["b"]["accuracy"] == 0.25
    assert rep["ties"] == {"rule": "half", "count": 2}
    assert rep["score_kind"] == "macro-average" and rep["score"] == pytest.approx(0.5)
    assert rep["length_bias"]["longer_wins_labels"] == pytest.approx(2 / 3)
    rep = evaluate_scores(scores, ["a", "a", "b", "b"], lengths, "loss", 200, 0)
    assert rep["subsets"]["a"]["accuracy"] == 0.5 and rep["ties"]["count"] == 2


def test_evaluate_cli_report(tiny_model, tmp_path):
    d = tiny_model
    out, pairs = tmp_path / "rep.json", tmp_path / "pairs.jsonl"
    cli("evaluate", "-m", d / "model", "--features", d / "p.st", "-o", out, "--pairs-output", pairs, "-q")
    rep = json.loads(out.read_text())
    assert set(rep) >= {"model", "subsets", "sections", "score", "ties", "length_bias"}
    assert rep["subsets"]["mine"]["n"] == 20 and len(rep["subsets"]["mine"]["ci95"]) == 2
    assert set(rep["sections"]) == {"Chat", "Reasoning"}
    assert len(pairs.read_text().splitlines()) == 60
    # two of RewardBench's 23 section subsets: the score says it is partial, and a warning names the missing ones
    assert rep["score_kind"] == "rewardbench, partial" and not rep["rewardbench"]["complete"]
    r = armo("evaluate", "-m", str(d / "model"), "--features", str(d / "p.st"), "-o", str(out))
    assert r.code == 0 and "the RewardBench score uses 2 of its 23 section subsets" in " ".join(r.output.split())


def test_score_in_a_bash_pipeline(tiny_model):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    armo = Path(sys.executable).parent / "armo"
    cmd = f"cat {tiny_model / 'r.jsonl'} | head -5 | {armo} score -m {tiny_model / 'model'} -q - | jq .score"
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    vals = [float(x) for x in out.stdout.split()]
    assert len(vals) == 5


def test_score_streams_its_first_results_before_the_last_rows_are_read(tiny_model, tiny_backbone):
    """A reader on stdout sees the first window's records while the writer still holds the rest of the
    input back: results are written as each window of rows is scored, not after the whole file."""
    import select

    from armo_cli.scoring import WINDOW_ROWS

    rows = [json.loads(x) for x in (tiny_model / "r.jsonl").read_text().splitlines()]
    many = [{**rows[i % len(rows)], "id": f"s{i}"} for i in range(WINDOW_ROWS + 40)]
    p = subprocess.Popen([sys.executable, "-m", "armo_cli.cli", "score", "-m", str(tiny_model / "model"), "-",
                          "--backbone", str(tiny_backbone), "--device", "cpu", "-q"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        head = "".join(json.dumps(r) + "\n" for r in many[:WINDOW_ROWS + 1])
        p.stdin.write(head)
        p.stdin.flush()
        ready, _, _ = select.select([p.stdout], [], [], 120)
        assert ready, "no output while the input was still open"
        first = json.loads(p.stdout.readline())
        assert first["id"] == "s0"
        p.stdin.write("".join(json.dumps(r) + "\n" for r in many[WINDOW_ROWS + 1:]))
        p.stdin.close()
        rest = p.stdout.read().splitlines()
        assert p.wait(120) == 0, p.stderr.read()
    finally:
        p.kill()
    assert [json.loads(x)["id"] for x in rest] == [f"s{i}" for i in range(1, len(many))]


def test_rows_and_features_give_the_same_records(tiny_model, tiny_backbone):
    """The in-memory path (rows straight through the batched forward) equals scoring extracted features."""
    d = tiny_model
    by_rows = [json.loads(x) for x in cli("score", "-m", d / "model", d / "r.jsonl", "--backbone", tiny_backbone,
                                             "--device", "cpu", "-q").stdout.splitlines()]
    by_feats = [json.loads(x) for x in cli("score", "-m", d / "model", "--features", d / "r.st").stdout.splitlines()]
    assert [x["id"] for x in by_rows] == [x["id"] for x in by_feats]
    for a, b in zip(by_rows, by_feats):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        for o in a["rewards"]:
            assert a["rewards"][o] == pytest.approx(b["rewards"][o], abs=1e-5)


def test_mixed_pairs_and_single_responses_keep_their_order(tiny_model, tiny_backbone, tmp_path):
    from tests.helpers import write_jsonl

    r = [json.loads(x) for x in (tiny_model / "r.jsonl").read_text().splitlines()][:3]
    p = [json.loads(x) for x in (tiny_model / "p.jsonl").read_text().splitlines()][:3]
    mixed = write_jsonl(tmp_path / "m.jsonl", [r[0], p[0], r[1], p[1], p[2], r[2]])
    out = [json.loads(x) for x in cli("score", "-m", tiny_model / "model", mixed, "--backbone", tiny_backbone,
                                         "--device", "cpu", "-q").stdout.splitlines()]
    assert [x["id"] for x in out] == [r[0]["id"], p[0]["id"], r[1]["id"], p[1]["id"], p[2]["id"], r[2]["id"]]
    assert ["margin" in x for x in out] == [False, True, False, True, True, False]


def test_score_table_to_a_file(tiny_model, tmp_path):
    out = tmp_path / "t.txt"
    cli("score", "-m", tiny_model / "model", "--features", tiny_model / "p.st", "--format", "table", "-o", out)
    text = out.read_text()
    assert text.count("preferred:") == 60 and "objective" in text and "|coef|" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_objective_verbosity_scores_the_raw_length_reward_not_zero(tiny_model):
    """The decorrelated verbosity reward is 0 by construction; --objective verbosity scores the raw one."""
    d = tiny_model
    m = ArmoModel.load(d / "model")
    assert m.decorrelation.meta.verbosity == "verbosity"
    v = m.objectives.index("verbosity")
    T = m.decorrelation.transform
    assert torch.allclose(T[:, v], torch.zeros(T.shape[0]))  # what decorrelation does to verbosity itself
    recs = [json.loads(x) for x in cli("score", "-m", d / "model", "--features", d / "p.st", "--objective", "verbosity").stdout.splitlines()]
    assert all(r["chosen"]["score"] == pytest.approx(r["chosen"]["rewards"]["verbosity"], abs=1e-6) for r in recs)
    assert sum(r["preferred"] == "tie" for r in recs) == 0
    # any other objective is still the decorrelated one
    o = m.objectives[0]
    other = json.loads(cli("score", "-m", d / "model", "--features", d / "p.st", "--objective", o).stdout.splitlines()[0])
    r = torch.tensor([other["chosen"]["rewards"][x] for x in m.objectives])
    assert other["chosen"]["score"] == pytest.approx(float((r @ T)[0]), abs=1e-5)


def test_score_reports_the_first_bad_row_in_the_file(tiny_model, tiny_backbone, tmp_path, monkeypatch):
    """A row whose template fails (line 3) before a malformed line (line 5) in the same window: `score` names
    line 3, one line, exit 2, and writes nothing (rows are tokenised in groups, errors kept in file order)."""
    from armo_cli.errors import ArmoError
    from armo_cli.rendering import Renderer

    rows = (tiny_model / "r.jsonl").read_text().splitlines()[:6]
    rows[4] = '{"prompt": "hi", "response": "a"'
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(rows) + "\n")
    real = Renderer.texts

    def texts(self, ex):
        if ex.line == 3:
            raise ArmoError("the chat template does not render the prompt as a prefix of the conversation")
        return real(self, ex)

    monkeypatch.setattr(Renderer, "texts", texts)
    out = tmp_path / "scores.jsonl"
    r = armo("score", "-m", str(tiny_model / "model"), str(inp), "-o", str(out), "--backbone", str(tiny_backbone), "--device", "cpu", "-q")
    assert r.code == 2, r.output
    assert f"{inp}:3: the chat template does not render the prompt" in r.output and not out.exists()


def test_identical_responses_score_a_tie_that_evaluate_counts(tiny_model, tiny_backbone, tmp_path):
    from tests.helpers import write_jsonl

    p = [json.loads(x) for x in (tiny_model / "p.jsonl").read_text().splitlines()][:4]
    p[1]["rejected"] = p[1]["chosen"]
    rows = write_jsonl(tmp_path / "p.jsonl", p)
    b = ["-m", tiny_model / "model", "--backbone", tiny_backbone, "--device", "cpu", "-q"]
    out = [json.loads(x) for x in cli("score", rows, *b).stdout.splitlines()]
    assert out[1]["margin"] == 0.0 and out[1]["preferred"] == "tie"
    assert out[1]["chosen"]["score"] == out[1]["rejected"]["score"]
    assert [o["preferred"] for i, o in enumerate(out) if i != 1].count("tie") == 0
    rep = tmp_path / "rep.json"
    cli("evaluate", rows, *b, "-o", rep, "--ties", "half")
    assert json.loads(rep.read_text())["ties"] == {"rule": "half", "count": 1}


def test_evaluate_names_the_rows_it_skipped_and_the_prompts_it_truncated(tiny_model, tiny_backbone, tmp_path):
    """--on-error skip and --overflow truncate-prompt change what is measured: evaluate says which rows, on stderr, in
    its summary, in report.json and in the HTML report (not only in a count of pairs)."""

    lines = (tiny_model / "p.jsonl").read_text().splitlines()[:12]
    rows = [json.loads(x) for x in lines]
    rows[3]["prompt"] = "long " * 400 + "and then the question"  # over --max-length: its prompt is cut
    text = [json.dumps(r) for r in rows]
    text[7] = '{"prompt": "hi", "chosen": "a"}'  # no 'rejected': skipped
    inp = tmp_path / "p.jsonl"
    inp.write_text("\n".join(text) + "\n")
    out = tmp_path / "rep.json"
    r = armo("evaluate", "-m", str(tiny_model / "model"), str(inp), "--backbone", str(tiny_backbone), "--device", "cpu",
             "--max-length", "256", "--overflow", "truncate-prompt", "--on-error", "skip", "-o", str(out),
             "--pairs-output", str(tmp_path / "pairs.jsonl"))
    assert r.code == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["n"] == 11 and rep["truncated"] == [rows[3]["id"]]
    assert [(s["line"], s["id"]) for s in rep["skipped"]] == [(8, None)] and "rejected" in rep["skipped"][0]["reason"]
    assert ("truncated the prompt of 1 row to fit --max-length 256 (--overflow truncate-prompt): line 4"
            in r.stderr.replace("\n", " "))
    assert "skipped line 8" in r.stderr and "1 / 1" in r.stderr
    # the same rows from their features: extract's lists, carried into the report
    st = tmp_path / "p.st"
    assert armo("extract", str(inp), "-o", str(st), "--backbone", str(tiny_backbone), "--device", "cpu", "--max-length",
                "256", "--overflow", "truncate-prompt", "--on-error", "skip", "-q").code == 0
    out2 = tmp_path / "rep2.json"
    assert armo("evaluate", "-m", str(tiny_model / "model"), "--features", str(st), "-o", str(out2), "-q").code == 0
    rep2 = json.loads(out2.read_text())
    assert rep2["truncated"] == rep["truncated"] and rep2["skipped"] == rep["skipped"]
    pytest.importorskip("matplotlib")
    html = tmp_path / "r.html"
    assert armo("report", str(out), "--pairs", str(tmp_path / "pairs.jsonl"), "-o", str(html)).code == 0
    page = html.read_text()
    assert f"<th>prompts truncated to fit</th><td>1: {rows[3]['id']}</td>" in page
    assert "<th>rows skipped</th><td>1: line 8</td>" in page


def test_max_length_beyond_the_backbones_positions_is_refused(tiny_model, tiny_backbone, tmp_path):
    """Past max_position_embeddings the features are silently unreliable: score and the Python API (serve's path)
    refuse such a --max-length in one line; a config that extends its positions (rope_scaling) may go further."""
    from types import SimpleNamespace

    from armo_cli import RewardModel
    from armo_cli.errors import ArmoError
    from armo_cli.rendering import length_limit

    r = armo("score", "-m", str(tiny_model / "model"), str(tiny_model / "r.jsonl"), "--backbone", str(tiny_backbone), "--device", "cpu", "--max-length", "513", "-o", str(tmp_path / "s.jsonl"))
    assert r.code == 2 and "--max-length 513: above the backbone's maximum positions 512" in r.output
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ArmoError, match="--max-length 600: above the backbone's maximum positions 512"):
        RewardModel(tiny_model / "model", backbone=str(tiny_backbone), device="cpu", max_length=600)
    assert length_limit(512, SimpleNamespace(max_position_embeddings=512)) == (512, "--max-length")
    extended = SimpleNamespace(max_position_embeddings=512, rope_scaling={"type": "yarn", "factor": 4.0})
    assert length_limit(2048, extended) == (2048, "--max-length")


def test_ids_subsets_and_values_print_as_written_never_as_markup(tiny_model, tmp_path):
    """Rich reads `[...]` as markup: an id `[/]` crashed `--format table` with a traceback, `[bold red]x` printed
    as a red `x`, and a rating `"[/]"` turned the one-line error into a crash."""
    from tests.helpers import write_jsonl

    m = tiny_model / "model"
    rows = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "[/]", "prompt": "hi", "chosen": "a", "rejected": "b", "subset": "[bold red]s"},
        {"id": "[bold red]x", "prompt": "hi [/] there", "chosen": "a", "rejected": "b", "subset": "[/]"}])
    r = armo("score", "-m", m, rows, "--format", "table", "-q")
    assert r.code == 0, r.stderr
    titles = [ln.split(":")[0] for ln in r.stdout.splitlines() if "margin" in ln]
    assert titles == ["[/]", "[bold red]x"]
    r = armo("evaluate", "-m", m, rows)
    assert r.code == 0, r.stderr
    subsets = sorted(ln.split("│")[1].strip() for ln in r.stderr.splitlines() if ln.startswith("│ ["))
    assert subsets == ["[/]", "[bold red]s"]
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "response": "r", "ratings": {"[red]x": "[/]"}}])
    r = armo("score", "-m", m, bad)
    assert (r.code, r.stderr) == (2, f"error: {bad}:1: field 'ratings.[red]x': not a number ('[/]')\n")


def test_control_characters_in_user_text_never_reach_the_terminal(tiny_model, tmp_path):
    """An id or subset holding an escape sequence (`\\x1b[2J` clears the screen) or a newline is printed as its
    Python escape, so the terminal shows what the file holds and an error stays on one line."""
    from tests.helpers import write_jsonl

    from armo_cli.console import plain

    assert plain("a\x1b[31mb\nc\td\x7f[/]é") == "a\\x1b[31mb\\nc\\td\\x7f\\[/]é"
    rows = write_jsonl(tmp_path / "c.jsonl", [{"id": "a\x1b[2J", "prompt": "hi", "chosen": "a", "rejected": "b",
                                               "subset": "s\x1b[31m"}])
    r = armo("score", "-m", tiny_model / "model", rows, "--format", "table", "-q")
    assert r.code == 0 and "\x1b" not in r.stdout and r.stdout.startswith("a\\x1b[2J: chosen")
    r = armo("evaluate", "-m", tiny_model / "model", rows)
    assert r.code == 0 and "\x1b" not in r.stderr and "│ s\\x1b[31m │" in r.stderr
