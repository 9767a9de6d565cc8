"""Rows with lists of responses (RewardBench 2, RM-Bench, RMB best-of-n), scored by each benchmark's own rule.

RewardBench 2's rules are checked against its authors' own functions (`reroll_and_score_dataset`,
`sample_stats`, `process_single_model`) from the `rewardbench` package on the registry. Importing that package
loads its model zoo, which needs transformers 4.51; so the test reads the package's installed `utils.py` and runs
those three functions from it, unchanged. RM-Bench's rule is checked on a fixture whose matrix is worked out by
hand from its authors' `compute_accuracy` (THU-KEG/RM-Bench)."""
from __future__ import annotations

import ast
import json
import math
import re
import random

import pytest

from tests.helpers import armo, interrupted_after, write_jsonl
from armo_cli.benchmarks import (RowScores, best_of_n_result, bootstrap_ci, detect, rb2_result, rb2_ties_score,
                                 rm_bench_levels, rm_bench_matrix, score_benchmark)
from armo_cli.errors import ArmoError


def authors_rewardbench2():
    """The three scoring functions of the installed rewardbench package, from its source."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("rewardbench")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("rewardbench is not installed (.ci/run installs it with --no-deps)")
    path = next(f for f in dist.files if str(f).endswith("rewardbench/utils.py")).locate()
    tree = ast.parse(path.read_text())
    wanted = {"reroll_and_score_dataset", "sample_stats", "process_single_model"}
    code = ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted], type_ignores=[])
    import numpy as np
    import pandas as pd
    from datasets import Dataset

    ns = {"np": np, "pd": pd, "Dataset": Dataset, "math": math}
    exec(compile(code, str(path), "exec"), ns)
    return ns


def random_rb2_rows(rng: random.Random, n: int, subset: str) -> list[RowScores]:
    rows = []
    for i in range(n):
        scores = [round(rng.gauss(0, 1), 1) for _ in range(4)]  # rounded: ties at the top happen
        rows.append(RowScores(f"{subset}-{i}", subset, scores, 1))
    return rows


def test_rewardbench2_rows_score_as_its_authors_code_does():
    ns = authors_rewardbench2()
    from datasets import Dataset

    rng = random.Random(0)
    rows = random_rb2_rows(rng, 200, "Math")
    flat = Dataset.from_dict({"text": [f"{r.id}/{k}" for r in rows for k in range(4)],
                              "scores": [s for r in rows for s in r.scores],
                              "id": [r.id for r in rows for _ in range(4)]})
    theirs = ns["reroll_and_score_dataset"](flat, [4] * len(rows), cols_to_combine=["text", "scores"])["results"]
    ours = [rb2_result(r.scores) for r in rows]
    assert ours == pytest.approx(theirs, abs=0) and any(0 < x < 1 for x in ours)  # ties shared the credit
    report = score_benchmark(rows, "rewardbench2", n_boot=50)
    assert report["subsets"]["Math"]["score"] == pytest.approx(sum(theirs) / len(theirs))
    assert report["score_kind"] == "rewardbench2, partial" and "Ties" in report["missing_subsets"]
    lo, hi = report["ci95"]  # every figure has its interval, rows resampled
    assert lo <= report["score"] <= hi


def test_rewardbench2_ties_score_is_its_authors_process_single_model():
    ns = authors_rewardbench2()
    from datasets import Dataset

    rng = random.Random(1)
    rows = []
    for pid in range(40):
        for kind in ("ref", "tied"):
            n_correct = 1 if kind == "ref" else rng.randint(2, 4)
            scores = [round(rng.gauss(0.5 if k < n_correct else 0, 1), 2) for k in range(n_correct + rng.randint(1, 3))]
            rows.append(RowScores(f"{kind}:{pid}", "Ties", scores, n_correct))
    rows = [r for r in rows if not (r.id.startswith("tied") and r.id.endswith(("7", "3")))]  # prompts with ref only
    ds = Dataset.from_dict({"id": [r.id for r in rows], "scores": [r.scores for r in rows],
                            "num_correct": [r.n_chosen for r in rows]})
    _, theirs = ns["process_single_model"](ds)
    assert rb2_ties_score(rows) == pytest.approx(theirs, abs=1e-12)
    with pytest.raises(ArmoError, match="'ref:N' or 'tied:N'"):
        rb2_ties_score([RowScores("x", "Ties", [1.0, 0.0], 1)])


def test_rm_bench_matrix_and_levels_on_a_worked_fixture():
    """Two rows; row 1: chosen (concise, plain, markdown) = (1, 2, 3), rejected = (0, 1.5, 2.5); row 2: every chosen
    response 0, every rejected 1 (all lost). Worked from the authors' compute_accuracy: entry (i, j) is the share of
    rows where chosen i > rejected j (a tie is a loss), hard the upper triangle, normal the diagonal, easy the lower."""
    rows = [RowScores("a", "chat", [1, 2, 3, 0, 1.5, 2.5], 3), RowScores("b", "chat", [0, 0, 0, 1, 1, 1], 3)]
    m = rm_bench_matrix(rows)
    assert m == [[0.5, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.5, 0.5]]
    assert rm_bench_levels(m) == {"hard": 0.0, "normal": 0.5, "easy": 0.5, "average": pytest.approx(1 / 3)}
    rep = score_benchmark(rows + [RowScores("c", "code", [2, 2, 2, 1, 1, 2], 3)], "rm-bench", n_boot=20)
    assert rep["domains"]["code"]["matrix"] == [[1.0, 1.0, 0.0]] * 3  # 2 > 2 is not a win
    assert rep["domains"]["code"]["hard"] == pytest.approx(1 / 3)  # (1 + 0 + 0) / 3
    assert rep["hard"] == pytest.approx((0.0 + 1 / 3) / 2)  # the mean over domains
    assert set(rep["ci95"]) == {"hard", "normal", "easy", "average", "style_gap"}
    assert rep["style_gap"] == pytest.approx(rep["easy"] - rep["hard"])  # what the model pays for style (#46)
    assert rep["domains"]["chat"]["style_gap"] == 0.5 and rep["domains"]["code"]["style_gap"] == pytest.approx(1 - 1 / 3)
    with pytest.raises(ArmoError, match="3 chosen and 3 rejected"):
        score_benchmark([RowScores("d", "chat", [1, 0], 1)], "rm-bench")


def test_best_of_n_ties_baseline_and_row_bootstrap():
    rows = [RowScores("a", "s", [1.0, 0.5, 0.2], 1), RowScores("b", "s", [1.0, 1.0], 1),
            RowScores("c", "s", [0.0, 0.5, 0.1, 0.2], 1)]
    assert [best_of_n_result(r) for r in rows] == [1.0, 0.0, 0.0]  # a tie is not above
    rep = score_benchmark(rows, "best-of-n", n_boot=200)
    assert rep["score"] == pytest.approx(1 / 3) and rep["subsets"]["s"]["ties"] == 1
    assert rep["random_baseline"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3)
    # intervals resample rows: one row resampled is always itself
    assert bootstrap_ci([0.25], lambda x: sum(x) / len(x), 100, 0) == [0.25, 0.25]
    lo, hi = rep["ci95"]
    assert 0.0 <= lo <= rep["score"] <= hi <= 1.0


def test_auto_names_the_rule_and_why():
    rb2 = [RowScores("a", "Math", [1, 0, 0, 0], 1), RowScores("ref:1", "Ties", [1, 0], 1)]
    assert detect(rb2, pairs=False)[0] == "rewardbench2"
    rmb = [RowScores("a", "chat", [1, 2, 3, 0, 0, 0], 3), RowScores("b", "safety-refuse", [1] * 6, 3)]
    assert detect(rmb, pairs=False)[0] == "rm-bench"
    assert detect([RowScores("a", "rmb-bon/Helpfulness/x", [1, 0, 0], 1)], pairs=False)[0] == "best-of-n"
    assert detect([RowScores("", "alpacaeval-easy", [], 1)], pairs=True)[0] == "rewardbench"
    assert detect([RowScores("", "mine", [], 1)], pairs=True) == ("pairs", "pairs without RewardBench subsets")


# --- through the commands --------------------------------------------------------------------------------


LIST_ROWS = [
    {"id": "m1", "subset": "Math", "prompt": "what is 2 and 2", "chosen": ["4"], "rejected": ["5", "22", "3"], "num_correct": 1},
    {"id": "m2", "subset": "Focus", "prompt": "say yes", "chosen": ["yes"], "rejected": ["no", "maybe", "sure"]},
    {"id": "ref:1", "subset": "Ties", "prompt": "name a color", "chosen": ["red"], "rejected": ["seven"]},
    {"id": "tied:1", "subset": "Ties", "prompt": "name a color", "chosen": ["red", "blue"], "rejected": ["seven", "dog"],
     "num_correct": 2},
]


def test_score_writes_a_record_for_every_response_and_shares_the_prompt(tiny_model, tmp_path):
    """A list row's responses run as one tree over one prompt: each gets the reward it gets scored alone (1e-5)."""
    f = write_jsonl(tmp_path / "lists.jsonl", LIST_ROWS)
    r = armo("score", "-m", tiny_model / "model", f, "-q")
    assert r.code == 0, r.stderr
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(len(x["chosen"]), len(x["rejected"])) for x in recs] == [(1, 3), (1, 3), (1, 1), (2, 2)]
    assert recs[0]["subset"] == "Math" and set(recs[0]["chosen"][0]) >= {"score", "rewards", "top_objectives"}
    singles = write_jsonl(tmp_path / "singles.jsonl", [{"prompt": row["prompt"], "response": x}
                                                       for row in LIST_ROWS for x in row["chosen"] + row["rejected"]])
    r = armo("score", "-m", tiny_model / "model", singles, "-q")
    alone = [json.loads(x)["score"] for x in r.stdout.splitlines()]
    together = [s["score"] for x in recs for s in x["chosen"] + x["rejected"]]
    assert together == pytest.approx(alone, abs=1e-5)


def test_evaluate_detects_rewardbench2_and_writes_its_report(tiny_model, tmp_path):
    f = write_jsonl(tmp_path / "rb2.jsonl", LIST_ROWS)
    r = armo("evaluate", "-m", tiny_model / "model", f, "-o", tmp_path / "rep.json", "--bootstrap", "50")
    assert r.code == 0, r.stderr
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["benchmark"] == "rewardbench2" and "RewardBench 2's subsets" in rep["benchmark_reason"]
    assert sorted(rep["subsets"]) == ["Focus", "Math", "Ties"] and rep["score_kind"] == "rewardbench2, partial"
    assert "rewardbench2" in r.stderr
    r = armo("evaluate", "-m", tiny_model / "model", f, "--pairs-output", tmp_path / "rows.jsonl", "-q")
    assert r.code == 0, r.stderr
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    scored = [json.loads(x) for x in armo("score", "-m", tiny_model / "model", f, "-q").stdout.splitlines()]
    assert [x["chosen"] for x in rows] == [x["chosen"] for x in scored]  # armo score's records, one shape
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    r = armo("evaluate", "-m", tiny_model / "model", pairs, "--benchmark", "rm-bench")
    assert r.code == 2 and "--benchmark rm-bench needs rows with lists" in r.stderr


def test_extract_takes_a_list_row_as_its_pairs(tiny_backbone, tmp_path, armo_cache, monkeypatch):
    """For a features file and the gate, a list row is each chosen response against each rejected one (a best-of-n
    row with 3 losers is 3 pairs, a Ties row with 2 and 2 is 4): the same features as those pairs written out."""
    from armo_cli.features import Features

    monkeypatch.setenv("ARMO_CACHE", str(armo_cache))
    f = write_jsonl(tmp_path / "l.jsonl", LIST_ROWS)
    assert armo("extract", f, "--backbone", tiny_backbone, "-o", tmp_path / "l.st", "-q").code == 0
    flat = [{"id": f"{row['id']}/c{i}-r{j}", "subset": row["subset"], "prompt": row["prompt"], "chosen": c, "rejected": r}
            for row in LIST_ROWS for i, c in enumerate(row["chosen"]) for j, r in enumerate(row["rejected"])]
    g = write_jsonl(tmp_path / "p.jsonl", flat)
    assert armo("extract", g, "--backbone", tiny_backbone, "-o", tmp_path / "p.st", "-q").code == 0
    a, b = Features.load(tmp_path / "l.st"), Features.load(tmp_path / "p.st")
    assert a.ids == b.ids == [x["id"] for x in flat] and len(a.ids) == 3 + 3 + 1 + 4
    assert a.pair and a.tensors["response_features"].allclose(b.tensors["response_features"], atol=1e-5)


def test_rewardbench_v1_sections_are_its_authors_calculate_scores_per_section():
    """armo's v1 section scores against the package's own function and constants, from its installed source."""
    import importlib.metadata

    from armo_cli.rewardbench import EXAMPLE_COUNTS, SECTIONS, section_scores

    try:
        dist = importlib.metadata.distribution("rewardbench")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("rewardbench is not installed (.ci/run installs it with --no-deps)")
    src = {str(f): f.locate().read_text() for f in dist.files if str(f).endswith(("rewardbench/utils.py", "rewardbench/constants.py"))}
    utils = ast.parse(next(v for k, v in src.items() if k.endswith("utils.py")))
    ns: dict = {}
    exec(compile(ast.Module([n for n in utils.body if isinstance(n, ast.FunctionDef)
                             and n.name == "calculate_scores_per_section"], type_ignores=[]), "utils", "exec"), ns)
    exec(next(v for k, v in src.items() if k.endswith("constants.py")), ns)
    assert ns["EXAMPLE_COUNTS"] == {k: v for k, v in EXAMPLE_COUNTS.items() if k in ns["EXAMPLE_COUNTS"]}
    assert {k: sorted(v) for k, v in ns["SUBSET_MAPPING"].items()} == {k: sorted(v) for k, v in SECTIONS.items()}
    rng = random.Random(2)
    acc = {s: rng.random() for subsets in SECTIONS.values() for s in subsets}
    theirs = ns["calculate_scores_per_section"](ns["EXAMPLE_COUNTS"], ns["SUBSET_MAPPING"], acc)
    ours, overall, info = section_scores(acc)
    assert ours == pytest.approx(theirs, abs=1e-12) and info["complete"]
    assert overall == pytest.approx(sum(theirs.values()) / 4)


def test_an_interrupted_list_evaluate_resumes_to_the_same_report(tiny_model, tmp_path, monkeypatch):
    import armo_cli.scoring as scoring

    monkeypatch.setattr(scoring, "WINDOW_ROWS", 2)
    copies = [{**r, "id": r["id"].replace(":1", f":{k}") if ":" in r["id"] else f"{r['id']}-{k}"}
              for k in range(3) for r in LIST_ROWS]  # each Ties id once
    f = write_jsonl(tmp_path / "l.jsonl", copies)
    args = ("evaluate", "-m", tiny_model / "model", f, "--bootstrap", "50", "-q")
    assert armo(*args, "-o", tmp_path / "ref.json").code == 0
    (tmp_path / "out").mkdir()
    assert interrupted_after(monkeypatch, 2, lambda: armo(*args, "-o", tmp_path / "out" / "ref.json")).code == 130
    assert (tmp_path / "out" / "ref.json.parts").is_dir()
    assert armo(*args, "-o", tmp_path / "out" / "ref.json", "--resume").code == 0
    assert (tmp_path / "out" / "ref.json").read_bytes() == (tmp_path / "ref.json").read_bytes()
    assert not (tmp_path / "out" / "ref.json.parts").exists()


def test_dataset_names_load_through_datasets_tested_with_a_local_folder(tiny_model, tmp_path, monkeypatch):
    """`--dataset allenai/reward-bench-2 --split test` goes to datasets.load_dataset(name, split=...), which also
    loads a local folder: the same path, offline. A parquet file is read as parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    folder = tmp_path / "reward-bench-2"
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", LIST_ROWS)
    ref = armo("evaluate", "-m", tiny_model / "model", write_jsonl(tmp_path / "l.jsonl", LIST_ROWS), "-o",
               tmp_path / "ref.json", "--bootstrap", "20", "-q")
    assert ref.code == 0, ref.stderr
    want = json.loads((tmp_path / "ref.json").read_text())
    pq.write_table(pa.Table.from_pylist(LIST_ROWS), tmp_path / "rb2.parquet")
    for src, split in ((folder, "test"), (tmp_path / "rb2.parquet", "train")):
        r = armo("evaluate", "-m", tiny_model / "model", "--dataset", src, "--split", split, "-o", tmp_path / "d.json",
                 "--bootstrap", "20", "-q")
        assert r.code == 0, r.stderr
        got = json.loads((tmp_path / "d.json").read_text())
        assert got["subsets"] == want["subsets"] and got["benchmark"] == "rewardbench2", src
    r = armo("evaluate", "-m", tiny_model / "model", tmp_path / "l.jsonl", "--dataset", folder)
    assert r.code == 2 and "give one of INPUT, --dataset and --features, not INPUT and --dataset" in r.stderr


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "folder"])
def test_a_split_that_is_not_there_is_an_error_naming_the_splits(tiny_model, tmp_path, monkeypatch, kind):
    """`--dataset rows.jsonl --split nosuch` was accepted silently (exit 0, the file's rows scored)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    if kind == "jsonl":
        src = write_jsonl(tmp_path / "rb2.jsonl", LIST_ROWS)
    elif kind == "parquet":
        src = tmp_path / "rb2.parquet"
        pq.write_table(pa.Table.from_pylist(LIST_ROWS), src)
    else:
        src = tmp_path / "reward-bench-2"
        src.mkdir()
        write_jsonl(src / "test.jsonl", LIST_ROWS)
    r = armo("evaluate", "-m", tiny_model / "model", "--dataset", src, "--split", "nosuch", "-o", tmp_path / "d.json", "-q")
    assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    if kind == "folder":  # datasets' own word, which names the splits there are
        assert r.stderr.startswith(f"error: --dataset {src}: could not load split 'nosuch'") and "test" in r.stderr
    else:
        assert r.stderr.strip() == (f"error: --split nosuch: {src} is one file, whose only split is 'train'; drop "
                                    f"--split (or give the dataset's folder or hub id)")
    assert not (tmp_path / "d.json").exists()


def test_html_reports_draw_the_rm_bench_matrix_and_the_subsets(tiny_model, tmp_path):
    """evaluate --html on list rows: RM-Bench's style matrix per domain as a heatmap, RewardBench 2's subsets and
    best-of-n's categories with intervals; `armo report` redraws the same page from the report alone."""
    pytest.importorskip("matplotlib")
    styles = ("short.", "a longer answer.", "**a longer answer.**")
    rm_rows = [{"id": f"{d}{i}", "domain": d, "prompt": f"q{i}", "chosen": [f"yes {s}" for s in styles],
                "rejected": [f"no {s}" for s in styles]} for d in ("chat", "math") for i in range(3)]
    f = write_jsonl(tmp_path / "rm.jsonl", rm_rows)
    r = armo("evaluate", "-m", tiny_model / "model", f, "-o", tmp_path / "rm.json", "--html", tmp_path / "rm.html",
             "--bootstrap", "20", "-q")
    assert r.code == 0, r.stderr
    page = (tmp_path / "rm.html").read_text()
    assert page.count("<svg") == 3 and "chat: chosen style against rejected style" in page  # two domains, the gap
    assert "What the model pays for style, per domain" in page and "<th>style gap (easy - hard)</th>" in page
    assert "rejected: detailed markdown" in page and "<td>hard</td>" in page
    assert armo("report", tmp_path / "rm.json", "-o", tmp_path / "again.html", "-q").code == 0
    assert (tmp_path / "again.html").read_text() == page
    g = write_jsonl(tmp_path / "rb2.jsonl", LIST_ROWS)
    r = armo("evaluate", "-m", tiny_model / "model", g, "--html", tmp_path / "rb2.html", "--bootstrap", "20", "-q")
    assert r.code == 0, r.stderr
    page = (tmp_path / "rb2.html").read_text()
    assert page.count("<svg") == 1 and "Ties subset has its own score" in page and "<td>Focus</td>" in page


def test_a_list_rows_features_equal_separate_passes(tiny_backbone):
    """One tree for a row's prompt and all its responses gives each response the features of its own full pass."""
    import torch

    from armo_cli.backbones import load_backbone
    from armo_cli.forward import encode_trees
    from armo_cli.rendering import Renderer
    from armo_cli.rows import parse_row

    bb = load_backbone(str(tiny_backbone), "cpu", "fp32")
    r = Renderer(bb.tokenizer)
    row = parse_row(LIST_ROWS[3], "t")  # 2 chosen, 2 rejected
    P, R = encode_trees(bb, [r.tokenize(row)], batch_tokens=10_000)
    alone = [r.tokenize(parse_row({"prompt": LIST_ROWS[3]["prompt"], "response": x}, "t"), i)
             for i, x in enumerate(row.responses)]
    P1, R1 = encode_trees(bb, alone, batch_tokens=10_000, share=False)
    assert R.shape == (1, 4, bb.hidden_size)
    assert torch.allclose(R[0], R1[:, 0], atol=1e-5) and torch.allclose(P[0].expand_as(P1), P1, atol=1e-5)


@pytest.fixture
def no_forward(monkeypatch):
    """Fails the test if any row is scored: the whole-file checks must stop a job before its first forward pass."""
    import armo_cli.scoring as scoring

    def refuse(*a, **k):
        raise AssertionError("a forward pass ran before the whole file was checked")

    monkeypatch.setattr(scoring, "score_trees", refuse)


TIES_ONLY_REF = [{"id": f"ref:{k}", "subset": "Ties", "prompt": f"name color {k}", "chosen": ["red"],
                  "rejected": ["seven"]} for k in range(3)]


@pytest.mark.parametrize("rows,where,message", [
    (LIST_ROWS + [LIST_ROWS[2]], 5, "field 'id': 'ref:1' again (first at {f}:3); each Ties row once"),
    (LIST_ROWS + [{**LIST_ROWS[2], "id": "r7"}], 5, "field 'id': a Ties row's id is 'ref:N' or 'tied:N'"),
])
@pytest.mark.parametrize("output", [True, False])
def test_ties_ids_are_checked_over_the_whole_file_before_scoring(tiny_model, tmp_path, no_forward, rows, where, message,
                                                                  output):
    """A Ties id given twice kept the last row while n counted both; it is refused, as a malformed one, before any
    row is scored (with a file output, a resumable job, and without one)."""
    f = write_jsonl(tmp_path / "l.jsonl", rows)
    out = ("-o", tmp_path / "r.json") if output else ()
    r = armo("evaluate", "-m", tiny_model / "model", f, *out, "-q")
    assert r.code == 2 and r.stderr.startswith(f"error: {f}:{where}: " + message.format(f=f)), r.stderr
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.json.parts").exists()


def test_rm_bench_shape_is_checked_before_scoring(tiny_model, tmp_path, no_forward):
    rows = [{"id": f"c{i}", "subset": "chat", "prompt": "q", "chosen": ["a", "b", "c"], "rejected": ["x", "y", "z"]}
            for i in range(3)] + [{"id": "short", "subset": "chat", "prompt": "q", "chosen": ["a", "b"], "rejected": ["x"]}]
    f = write_jsonl(tmp_path / "l.jsonl", rows)
    r = armo("evaluate", "-m", tiny_model / "model", f, "--benchmark", "rm-bench", "-o", tmp_path / "r.json", "-q")
    assert r.code == 2 and r.stderr.strip() == (f"error: {f}:4: RM-Bench rows have 3 chosen and 3 rejected responses "
                                                f"(2 and 1 here)"), r.stderr


def test_ties_without_its_tied_rows_is_partial(tiny_model, tmp_path):
    """A file with only the `ref:N` rows of Ties was scored as complete (Ties 0.30, overall 0.883)."""
    f = write_jsonl(tmp_path / "l.jsonl", LIST_ROWS[:2] + TIES_ONLY_REF)
    r = armo("evaluate", "-m", tiny_model / "model", f, "-o", tmp_path / "r.json", "--bootstrap", "20")
    assert r.code == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["benchmark"] == "rewardbench2" and rep["score_kind"] == "rewardbench2, partial"
    assert rep["ties_coverage"] == {"prompts": 3, "with_both": 0, "ref_only": [0, 1, 2], "tied_only": []}
    assert rep["missing_subsets"][-1] == ("Ties rows of 3 of 3 prompts (ref:N or tied:N without its other version); no "
                                          "prompt has both, so Ties has no score")
    assert rep["subsets"]["Ties"]["score"] is None  # not 0.30 read as Ties' own (#48 §5)
    assert rep["score"] == pytest.approx((rep["subsets"]["Math"]["score"] + rep["subsets"]["Focus"]["score"]) / 2)
    assert "warning: rewardbench2: missing Factuality; Precise IF; Safety; Ties rows of 3 of 3 prompts" in \
        " ".join(r.stderr.split())
    f = write_jsonl(tmp_path / "all.jsonl", LIST_ROWS)  # both versions of its one prompt: Ties is whole
    assert armo("evaluate", "-m", tiny_model / "model", f, "-o", tmp_path / "a.json", "--bootstrap", "20", "-q").code == 0
    rep = json.loads((tmp_path / "a.json").read_text())
    assert rep["ties_coverage"]["with_both"] == 1 and not any("Ties" in m for m in rep["missing_subsets"])


@pytest.mark.parametrize("k,n", [(1, 1), (1, 3), (2, 2), (3, 3), (2, 4), (4, 1)])
def test_best_of_n_random_baseline_is_an_exhaustive_count(k, n):
    """Every order of k chosen and n rejected responses equally likely: the share where every chosen one is above every
    rejected one (#48: armo printed 1 / (1 + n) whatever k, 0.25 for 3 against 3 where the chance is 0.05)."""
    import itertools

    from armo_cli.benchmarks import random_baseline

    row = RowScores("r", "s", [0.0] * (k + n), k)
    orders = list(itertools.permutations(range(k + n)))  # ranks of the k + n responses (0 = top)
    wins = sum(max(o[:k]) < min(o[k:]) for o in orders)
    assert random_baseline(row) == pytest.approx(wins / len(orders), abs=1e-12)
    assert random_baseline(RowScores("r", "s", [0.0] * 6, 3)) == pytest.approx(0.05)


def test_rm_bench_pools_safety_as_its_authors_do_and_marks_a_missing_domain():
    """RM-Bench's leaderboard has four domains: `safety-refuse` and `safety-response` rows are one Safety domain (armo
    averaged them apart, counting safety twice: 0.364/0.464/0.556 where the authors' code gave 0.302/0.443/0.567 on a
    120-row sample). A file without some domain is `partial`, naming it."""
    chat = [RowScores("c1", "chat", [1, 2, 3, 0, 1.5, 2.5], 3), RowScores("c2", "chat", [0, 0, 0, 1, 1, 1], 3)]
    refuse = [RowScores("s1", "safety-refuse", [3, 3, 3, 0, 0, 0], 3)]  # every cell won
    respond = [RowScores("s2", "safety-response", [0, 0, 0, 1, 1, 1], 3)]  # every cell lost
    rep = score_benchmark(chat + refuse + respond, "rm-bench", n_boot=20)
    assert list(rep["domains"]) == ["chat", "safety"]
    safety = rep["domains"]["safety"]
    assert safety["n"] == 2 and safety["subsets"] == {"safety-refuse": 1, "safety-response": 1}
    assert safety["matrix"] == rm_bench_matrix(refuse + respond) == [[0.5] * 3] * 3
    chat_levels = rm_bench_levels(rm_bench_matrix(chat))
    for k in ("hard", "normal", "easy", "average"):  # the mean over the two domains, not three
        assert rep[k] == pytest.approx((chat_levels[k] + 0.5) / 2)
    assert rep["score_kind"] == "rm-bench average of hard, normal and easy, over domains, partial"
    assert rep["missing_subsets"] == ["code", "math"]
    whole = chat + refuse + respond + [RowScores(f"{d}1", d, [1, 1, 1, 0, 0, 0], 3) for d in ("code", "math")]
    assert score_benchmark(whole, "rm-bench", n_boot=20)["missing_subsets"] == []


@pytest.mark.parametrize("subset", ["rmbench-chat", "alpacaeval", "xstest-should-refuse"])
def test_auto_refuses_rm_bench_shaped_rows_under_other_names(tiny_model, tmp_path, no_forward, subset):
    """Rows of 3 chosen and 3 rejected responses whose subset is not one of RM-Bench's domains were scored as
    best-of-n without a word: two rules that give different numbers, so auto stops and names both."""
    rows = [{"id": f"r{i}", "subset": subset, "prompt": "q", "chosen": ["a", "b", "c"], "rejected": ["x", "y", "z"]}
            for i in range(3)]
    f = write_jsonl(tmp_path / "l.jsonl", rows)
    r = armo("evaluate", "-m", tiny_model / "model", f, "-o", tmp_path / "r.json", "-q")
    assert r.code == 2 and r.stderr.strip() == (
        f"error: --benchmark auto: every row has 3 chosen and 3 rejected responses, as RM-Bench's, but their subsets "
        f"({subset}) are not RM-Bench's domains (chat, code, math, safety-*): give --benchmark rm-bench (its 3x3 style "
        f"matrix per subset) or --benchmark best-of-n (every chosen response above every rejected one)")
    assert not (tmp_path / "r.json").exists()


def test_each_rule_takes_rm_bench_shaped_rows_when_named(tiny_model, tmp_path):
    rows = [{"id": f"r{i}", "subset": "rmbench-chat", "prompt": "q", "chosen": ["a", "b", "c"],
             "rejected": ["x", "y", "z"]} for i in range(3)]
    f = write_jsonl(tmp_path / "l.jsonl", rows)
    for bench in ("rm-bench", "best-of-n"):
        r = armo("evaluate", "-m", tiny_model / "model", f, "--benchmark", bench, "-o", tmp_path / f"{bench}.json", "-q")
        assert r.code == 0, r.stderr
        assert json.loads((tmp_path / f"{bench}.json").read_text())["benchmark"] == bench


def test_progress_moves_with_every_batch_off_a_terminal(tiny_model, tmp_path, monkeypatch):
    """A 120-row RM-Bench run printed nothing for 14 minutes off a terminal: progress moved a window (256 rows) at a
    time. It now moves after every forward batch, with rows/s and tokens/s (a line at least every 30 s of work; here
    every update, the interval set to 0)."""
    import armo_cli.console as console

    real = console.LineProgress.__init__
    monkeypatch.setattr(console.LineProgress, "__init__", lambda self, every_s=30.0, clock=None: real(self, 0.0))
    rows = [{"id": f"r{i}", "domain": d, "prompt": f"question {i}", "chosen": ["a", "b b", "**c c**"],
             "rejected": ["x", "y y", "**z z**"]} for i in range(6) for d in ("chat", "math")]
    f = write_jsonl(tmp_path / "l.jsonl", rows)
    r = armo("evaluate", "-m", tiny_model / "model", f, "-o", tmp_path / "r.json", "--batch-tokens", "64")
    assert r.code == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("evaluate lists: ")]
    assert len(lines) >= 4, r.stderr  # one window of 12 rows, many batches
    assert all(re.search(r"^evaluate lists: \d+/12 \(\d+%\), [\d.,]+ rows/s, [\d,]+ tok/s, \d+ s(, ETA \d+ s)?$", x) for x in lines), lines
    assert lines[-1].startswith("evaluate lists: 12/12 (100%)")


def test_best_of_n_is_reported_per_goal_as_rmb_does():
    rows = [RowScores(f"h{i}", f"rmb-bon/Helpfulness/Code/x{i % 2}", [1.0, 0.0, 2.0 if i == 0 else 0.5], 1)
            for i in range(3)]
    rows += [RowScores("s0", "rmb-bon/Harmlessness/S1", [1.0, 0.0], 1), RowScores("o", "other", [0.0, 1.0], 1)]
    rep = score_benchmark(rows, "best-of-n", n_boot=20)
    assert list(rep["goals"]) == ["Harmlessness", "Helpfulness"]
    assert rep["goals"]["Helpfulness"]["n"] == 3 and rep["goals"]["Helpfulness"]["score"] == pytest.approx(2 / 3)
    assert rep["goals"]["Harmlessness"] == {"n": 1, "score": 1.0, "ci95": [1.0, 1.0], "random_baseline": 0.5}
    assert "goals" not in score_benchmark(rows[-1:], "best-of-n", n_boot=20)


def _published_shapes():
    """(name, rows, pairs?, the rule auto must pick or None for a refusal) for every row shape and subset name the
    three benchmarks publish, and the look-alikes #48 found."""
    from armo_cli.rewardbench import EXAMPLE_COUNTS

    def row(subset, k, n, rid="x"):
        return RowScores(rid, subset, [1.0] * k + [0.0] * n, k)

    out = [(f"RewardBench 2 {s}", [row(s, 1, 3)], False, "rewardbench2") for s in ("Factuality", "Precise IF", "Math",
                                                                                       "Safety", "Focus")]
    out.append(("RewardBench 2 Ties", [row("Ties", 2, 5, "ref:1"), row("Ties", 3, 4, "tied:1")], False, "rewardbench2"))
    out.append(("RewardBench 2, all subsets", [row(s, 1, 3) for s in ("Factuality", "Math")] + [row("Ties", 2, 2, "ref:2")],
                False, "rewardbench2"))
    out += [(f"RM-Bench {d}", [row(d, 3, 3)], False, "rm-bench") for d in ("chat", "math", "code", "safety-refuse",
                                                                            "safety-response")]
    out.append(("RM-Bench, all domains", [row(d, 3, 3) for d in ("chat", "math", "code", "safety-refuse")], False,
                "rm-bench"))
    out += [(f"RM-Bench GitHub file ({s})", [row(s, 3, 3)], False, None) for s in ("alpacaeval", "xstest-should-refuse",
                                                                                     "hep-python", "math-prm")]
    out.append(("rmbench-chat", [row("rmbench-chat", 3, 3)], False, None))
    out += [(f"RMB best-of-n ({s})", [row(s, 1, n)], False, "best-of-n")
            for s, n in (("rmb-bon/Helpfulness/Code", 2), ("rmb-bon/Harmlessness/S1", 3), ("rmb-bon/Helpfulness/Chat", 6))]
    out.append(("RewardBench 2 names, two chosen outside Ties", [row("Math", 2, 2)], False, None))
    out += [(f"RewardBench {s}", [RowScores("", s, [], 1)], True, "rewardbench") for s in EXAMPLE_COUNTS]
    out.append(("pairs of my own", [RowScores("", "mine", [], 1)], True, "pairs"))
    return out


@pytest.mark.parametrize("name,rows,pairs,rule", _published_shapes(), ids=[x[0] for x in _published_shapes()])
def test_auto_picks_the_right_rule_or_refuses_on_every_published_shape(name, rows, pairs, rule):
    """#48 §3: auto never picks the wrong rule: on every shape and name the benchmarks publish it picks theirs, and
    where shape and names do not settle it, it stops with one line naming the choices."""
    from armo_cli.errors import ArmoError

    if rule is None:
        with pytest.raises(ArmoError) as e:
            detect(rows, pairs=pairs)
        msg = str(e.value)
        assert "\n" not in msg and "--benchmark" in msg and "best-of-n" in msg
    else:
        assert detect(rows, pairs=pairs)[0] == rule
