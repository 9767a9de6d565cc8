"""`armo annotate` (#47): samples to preference pairs. Parity with SimPO's and RLHFlow's binarisation (their selection
re-implemented from their scripts, cited below), rules, steering, resume, bad input, and the pairs in TRL's DPOTrainer."""
import json
import random

import numpy as np
import pytest

from tests.helpers import armo, sentence, write_jsonl


def sample_rows(n: int = 12, k: int = 5, seed: int = 0) -> list[dict]:
    """Rows of K samples under the three field names the ecosystem uses, with a duplicate, a lone response and a
    prompt whose samples are all the same."""
    rng = random.Random(seed)
    fields = ["responses", "all_generated_responses", "completions"]
    rows = []
    for i in range(n):
        texts = [sentence(rng, rng.randint(2, 25)) for _ in range(k)]
        if i == 1:
            texts[-1] = texts[1]  # a duplicate
        prompt = sentence(rng, rng.randint(3, 12)) if i % 4 else [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": sentence(rng, 6)}]
        rows.append({"id": f"q{i}", "prompt": prompt, fields[i % 3]: texts})
    rows.append({"id": "lone", "prompt": "say one thing", "responses": ["one thing"]})
    rows.append({"id": "same", "prompt": "say it twice", "responses": ["it", "it", "it"]})
    return rows


def run(tiny_model, tiny_backbone, inp, out, *args):
    return armo("annotate", str(inp), "-m", str(tiny_model / "model"), "--backbone", str(tiny_backbone),
                "--device", "cpu", "-o", str(out), *map(str, args))


def read(path) -> list[dict]:
    return [json.loads(x) for x in open(path, encoding="utf-8")]


# --- the peers' selection, re-implemented from their scripts ---------------------------------------------------
def simpo_binarize(scores: list[float]) -> tuple[int, int]:
    """princeton-nlp/SimPO on_policy_data_gen/reward_model_annotate.py: chosen = np.argmax(all_rm_scores), rejected =
    np.argmin(all_rm_scores), for every prompt (a tie gives the same response on both sides)."""
    return int(np.argmax(scores)), int(np.argmin(scores))


def rlhflow_max_min(scores: list[float], k: int) -> tuple[int, int] | None:
    """RLHFlow/Online-RLHF: annotate_data/get_rewards.py drops a prompt with fewer than K responses; then
    dpo_iteration/run_dpo.py prepare_data(choose_type="max_min") takes idx0 = argmax, idx1 = argmin and keeps the pair
    only when their rewards differ."""
    if len(scores) < k:
        return None
    i0, i1 = int(np.argmax(scores)), int(np.argmin(scores))
    if scores[i0] > scores[i1]:
        return i0, i1
    if scores[i0] < scores[i1]:
        return i1, i0
    return None


def test_best_worst_pairs_match_simpo_and_rlhflow_and_every_difference_is_counted(tiny_model, tiny_backbone, tmp_path):
    rows = sample_rows()
    inp = write_jsonl(tmp_path / "s.jsonl", rows)
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "pairs.jsonl")
    assert r.code == 0, r.output
    pairs = {p["id"]: p for p in read(tmp_path / "pairs.jsonl")}
    scores = {s["id"]: s for s in read(tmp_path / "pairs.scores.jsonl")}
    assert list(scores) == [row["id"] for row in rows]  # every prompt, in input order, paired or not
    for row in rows:
        texts = next(row[f] for f in ("responses", "all_generated_responses", "completions") if f in row)
        s = [x["score"] for x in scores[row["id"]]["responses"]]
        assert len(s) == len(texts)
        sim = simpo_binarize(s)
        rlh = rlhflow_max_min(s, 5)
        if row["id"] == "lone":  # SimPO pairs the one response with itself; RLHFlow drops it (< K); armo: no pair
            assert sim == (0, 0) and rlh is None and row["id"] not in pairs
            assert scores["lone"]["no_pair"] == "fewer than two distinct responses"
        elif row["id"] == "same":
            assert sim == (0, 0) and rlh is None and "same" not in pairs
            assert scores["same"]["no_pair"] == "fewer than two distinct responses"
            assert [x.get("duplicate_of") for x in scores["same"]["responses"]] == [None, 0, 0]
        else:
            p = pairs[row["id"]]
            assert (p["chosen_index"], p["rejected_index"]) == sim == rlh
            assert p["chosen"] == [{"role": "assistant", "content": texts[sim[0]]}]
            assert p["rejected"] == [{"role": "assistant", "content": texts[sim[1]]}]
            assert p["score_chosen"] == s[sim[0]] and p["score_rejected"] == s[sim[1]]
            prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
            assert p["prompt"] == prompt
    assert scores["q1"]["responses"][4]["duplicate_of"] == 1
    assert scores["q1"]["responses"][4]["score"] == scores["q1"]["responses"][1]["score"]
    assert "no pair: fewer than two distinct responses" in r.output and "lone, same" in r.output


def test_pick_pairs_rules_on_hand_made_scores():
    from armo_cli.annotate import FEW, FLOOR, MARGIN, TIE, pick_pairs

    t = ["a", "b", "c", "d"]
    s = [0.2, 0.9, 0.1, 0.5]
    assert pick_pairs(s, t) == ([(1, 2)], None)
    assert pick_pairs(s, t, "all") == ([(1, 2), (1, 0), (1, 3), (3, 2), (3, 0), (0, 2)], None)
    assert pick_pairs(s, t, "all", min_margin=0.35) == ([(1, 2), (1, 0), (1, 3), (3, 2)], None)
    assert pick_pairs(s, t, "all", max_pairs=2) == ([(1, 2), (1, 0)], None)
    rng = random.Random(0)
    got = {pick_pairs(s, t, "best-random", rng=rng)[0][0] for _ in range(50)}
    assert got == {(1, 0), (1, 2), (1, 3)}
    assert pick_pairs(s, t, eligible=[True, False, False, True]) == ([(3, 2)], None)  # the best clears no floor
    assert pick_pairs(s, t, eligible=[False] * 4) == ([], FLOOR)
    assert pick_pairs(s, t, eligible=[False, False, True, False]) == ([], MARGIN)  # only the worst may be chosen
    assert pick_pairs([0.3, 0.3], ["x", "y"]) == ([], TIE)
    assert pick_pairs([0.3, 0.3], ["x", "x"]) == ([], FEW)
    assert pick_pairs([0.5, 0.4], ["x", "y"], min_margin=0.2) == ([], MARGIN)
    # ties among the best or the worst: the first, as numpy's argmax and argmin
    assert pick_pairs([0.9, 0.1, 0.9, 0.1], t) == ([(0, 1)], None)


def test_decided_by_sums_to_the_margin(tiny_model, tiny_backbone, tmp_path):
    inp = write_jsonl(tmp_path / "s.jsonl", sample_rows(4))
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "p.jsonl", "--top-k", "50", "--rule", "all", "-q")
    assert r.code == 0, r.output
    pairs = read(tmp_path / "p.jsonl")
    assert len(pairs) > 4
    for p in pairs:
        assert sum(d["contribution"] for d in p["decided_by"]) == pytest.approx(p["margin"], abs=1e-5)
        assert p["margin"] > 0
        c = [abs(d["contribution"]) for d in p["decided_by"]]
        assert c == sorted(c, reverse=True)


def test_require_floor_and_steering_by_objective(tiny_model, tiny_backbone, tmp_path):
    rows = sample_rows(8)
    inp = write_jsonl(tmp_path / "s.jsonl", rows)
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "base.jsonl", "-q")
    assert r.code == 0, r.output
    scored = read(tmp_path / "base.scores.jsonl")
    objective = next(iter(scored[0]["responses"][0]["rewards"]))
    # a floor at the median reward of that objective: every chosen response clears it
    vals = sorted(x["rewards"][objective] for s in scored for x in s["responses"])
    floor = vals[len(vals) // 2]
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "f.jsonl", "--require", f"{objective}>={floor}", "-q")
    assert r.code == 0, r.output
    fs = {s["id"]: s for s in read(tmp_path / "f.scores.jsonl")}
    for p in read(tmp_path / "f.jsonl"):
        assert fs[p["id"]]["responses"][p["chosen_index"]]["rewards"][objective] >= floor
        assert fs[p["id"]]["responses"][p["chosen_index"]]["clears_require"] is True
    # the scores are the same ones: a floor steers the pick, not the score
    assert [x["score"] for s in scored for x in s["responses"]] == \
        [x["score"] for s in fs.values() for x in s["responses"]]
    # --objective: pairs picked by that objective's reward alone
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "o.jsonl", "--objective", objective, "-q")
    assert r.code == 0, r.output
    for p in read(tmp_path / "o.jsonl"):
        assert [d["objective"] for d in p["decided_by"]][0] == objective
    bad = run(tiny_model, tiny_backbone, inp, tmp_path / "x.jsonl", "--require", "nope>=0.5")
    assert bad.code == 2 and "unknown objective 'nope'" in bad.output and not (tmp_path / "x.jsonl").exists()
    bad = run(tiny_model, tiny_backbone, inp, tmp_path / "x.jsonl", "--require", f"{objective}>=high")
    assert bad.code == 2 and "'high' is not a number" in bad.output
    bad = run(tiny_model, tiny_backbone, inp, tmp_path / "x.jsonl", "--require", f"{objective}>=nan")
    assert bad.code == 2 and "give a finite number" in bad.output


@pytest.mark.parametrize("row,message", [
    ({"id": "a", "prompt": "p", "responses": []}, "field 'responses': an empty list of responses"),
    ({"id": "a", "prompt": "p", "responses": "just one string"}, "field 'responses': expected a list of responses, got str"),
    ({"id": "a", "prompt": "p", "responses": ["ok", 3]}, "field 'responses[1]': expected a string, got int"),
    ({"id": "a", "prompt": "p", "completions": [[{"role": "user", "content": "x"}]]},
     "field 'completions[0]': the last message must be the assistant's"),
    ({"id": "a", "prompt": "p", "chosen": "x", "rejected": "y"}, "already a preference"),
    ({"id": "a", "responses": ["x", "y"]}, "field 'prompt': missing"),
    ({"id": "a", "prompt": "p", "responses": ["x"], "completions": ["y"]}, "give one"),
    ({"id": "a", "prompt": "p"}, "no samples"),
])
def test_bad_rows_are_one_line_errors_naming_file_line_and_field(tiny_model, tiny_backbone, tmp_path, row, message):
    inp = write_jsonl(tmp_path / "s.jsonl", [{"id": "ok", "prompt": "p", "responses": ["x", "y"]}, row])
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "p.jsonl")
    assert r.code == 2, r.output
    assert r.stderr.strip().count("\n") == 0 and f"s.jsonl:2: " in r.stderr and message in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]


def test_duplicate_ids_mixed_shapes_and_skips(tiny_model, tiny_backbone, tmp_path):
    inp = write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "prompt": "p", "responses": ["x", "y"]},
                                             {"id": "a", "prompt": "q", "responses": ["x", "y"]}])
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "p.jsonl")
    assert r.code == 2 and "s.jsonl:2: field 'id': duplicate id 'a' (first on line 1)" in r.stderr
    # --on-error skip: a bad row is skipped and listed, the rest paired
    inp = write_jsonl(tmp_path / "t.jsonl", [{"id": "a", "prompt": "p", "responses": ["x", "yy yy"]},
                                             {"id": "b", "prompt": "p", "responses": "oops"}])
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "p.jsonl", "--on-error", "skip")
    assert r.code == 0, r.output
    assert "skipped line 2 (b)" in r.output
    assert [s["id"] for s in read(tmp_path / "p.scores.jsonl")] == ["a"]
    # the default scores path never replaces a file armo did not write
    (tmp_path / "mine.scores.jsonl").write_text("my notes\n")
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "mine.jsonl", "--on-error", "skip")
    assert r.code == 2 and "armo annotate did not write it" in r.output
    assert (tmp_path / "mine.scores.jsonl").read_text() == "my notes\n" and not (tmp_path / "mine.jsonl").exists()


@pytest.mark.slow
def test_many_responses_in_one_row(tiny_model, tiny_backbone, tmp_path):
    """10,000 responses to one prompt: scored (the prompt once), one pair, nothing lost."""
    rng = random.Random(3)
    texts = [sentence(rng, rng.randint(1, 4)) for _ in range(10_000)]
    inp = write_jsonl(tmp_path / "s.jsonl", [{"id": "big", "prompt": "name a thing", "responses": texts}])
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "p.jsonl", "-q")
    assert r.code == 0, r.output
    (s,) = read(tmp_path / "p.scores.jsonl")
    assert len(s["responses"]) == 10_000 and len(read(tmp_path / "p.jsonl")) == 1


def test_standard_format_and_a_multi_turn_prompt(tiny_model, tiny_backbone, tmp_path):
    inp = write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "prompt": "p one", "responses": ["x", "yy yy yy"]}])
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "p.jsonl", "--format", "standard", "-q")
    assert r.code == 0, r.output
    (p,) = read(tmp_path / "p.jsonl")
    assert p["prompt"] == "p one" and isinstance(p["chosen"], str) and {p["chosen"], p["rejected"]} == {"x", "yy yy yy"}
    inp = write_jsonl(tmp_path / "m.jsonl", sample_rows(4))
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "q.jsonl", "--format", "standard")
    assert r.code == 2 and "--format standard takes a single user turn" in r.stderr


@pytest.mark.slow
def test_sigterm_mid_job_then_resume_gives_the_uninterrupted_files_byte_for_byte(tiny_model, tiny_backbone, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    rows = sample_rows(900, k=4, seed=5)[:900]  # four windows of 256 rows
    inp = write_jsonl(tmp_path / "s.jsonl", rows)
    args = [str(inp), "-m", str(tiny_model / "model"), "--backbone", str(tiny_backbone), "--device", "cpu",
            "--rule", "best-random", "-q"]
    assert armo("annotate", *args, "-o", str(tmp_path / "ref.jsonl")).code == 0
    out = tmp_path / "out.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "armo_cli.cli", "annotate", *args, "-o", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "out.jsonl.parts"
    deadline = time.time() + 300
    while len(list(parts.glob("*.safetensors"))) < 1 and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, "the job ended before it could be stopped"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert not out.exists() and not (tmp_path / "out.scores.jsonl").exists()
    r = armo("annotate", *args, "-o", str(out), "--resume")
    assert r.code == 0, r.output
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert (tmp_path / "out.scores.jsonl").read_bytes() == (tmp_path / "ref.scores.jsonl").read_bytes()
    assert not parts.exists()


def test_the_python_call_equals_the_command(tiny_model, tiny_backbone, tmp_path):
    from armo_cli import RewardModel

    rows = sample_rows(6)
    inp = write_jsonl(tmp_path / "s.jsonl", rows)
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "p.jsonl", "--rule", "all", "--max-pairs", "3", "-q")
    assert r.code == 0, r.output
    rm = RewardModel(str(tiny_model / "model"), backbone=str(tiny_backbone), device="cpu")
    pairs, scores = rm.annotate(rows, rule="all", max_pairs=3)
    assert [json.dumps(p) for p in pairs] == [json.dumps(p) for p in read(tmp_path / "p.jsonl")]
    assert [json.dumps(s) for s in scores] == [json.dumps(s) for s in read(tmp_path / "p.scores.jsonl")]


@pytest.mark.slow
def test_ray_data_map_batches_on_a_local_ray_equals_the_command(tiny_model, tiny_backbone, tmp_path):
    """The README's Ray recipe: `AnnotateBatches` in `map_batches` on a local Ray (CPU), two actors; the pairs are
    the command's (order aside: Ray returns batches as they finish)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (.ci/run installs it)")
    from armo_cli import AnnotateBatches

    rng = random.Random(7)  # a dataset's columns have one type each: string prompts, `responses`
    rows = [{"id": f"r{i}", "prompt": sentence(rng, 6), "responses": [sentence(rng, rng.randint(2, 20)) for _ in range(4)]}
            for i in range(10)]
    inp = write_jsonl(tmp_path / "s.jsonl", rows)
    r = run(tiny_model, tiny_backbone, inp, tmp_path / "p.jsonl", "-q")
    assert r.code == 0, r.output
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.from_items(rows)
        out = ds.map_batches(AnnotateBatches, fn_constructor_kwargs={"model": str(tiny_model / "model"),
                                                                    "backbone": str(tiny_backbone), "device": "cpu"},
                             concurrency=2, batch_size=4).take_all()
    finally:
        ray.shutdown()
    want = {p["id"]: p for p in read(tmp_path / "p.jsonl")}
    got = {p["id"]: AnnotatedRow(p) for p in out}
    assert set(got) == set(want)
    for k, p in want.items():  # batches of 4 against one of 10: the same pairs, scores within float noise
        assert rounded(got[k]) == rounded({c: p[c] for c in AnnotateBatches.COLUMNS})


def AnnotatedRow(p: dict) -> dict:  # noqa: N802
    """A Ray row back as JSON values (numpy scalars and arrays as Python's)."""
    from armo_cli.api import _plain

    return json.loads(json.dumps(_plain(dict(p)), default=float))


def rounded(x):
    if isinstance(x, float):
        return round(x, 5)
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return x


def test_two_shards_concatenated_are_one_run(tiny_model, tiny_backbone, tmp_path, monkeypatch):
    import armo_cli.scoring as scoring

    import armo_cli.annotate as annotate_mod

    monkeypatch.setattr(scoring, "WINDOW_ROWS", 4)  # 14 rows: four windows, two per shard
    kept, real = [], annotate_mod.windows_job

    def watched(*a, **k):  # memory holds one window: the job hands each to annotate's writer and keeps none
        kept.append(real(*a, **k))
        return kept[-1]

    monkeypatch.setattr(annotate_mod, "windows_job", watched)
    inp = write_jsonl(tmp_path / "s.jsonl", sample_rows(12))
    assert run(tiny_model, tiny_backbone, inp, tmp_path / "one.jsonl", "--rule", "best-random", "-q").code == 0
    for i in (0, 1):
        r = run(tiny_model, tiny_backbone, inp, tmp_path / f"part{i}.jsonl", "--rule", "best-random",
                "--num-shards", "2", "--shard-index", str(i), "-q")
        assert r.code == 0, r.output
    for kind in ("jsonl", "scores.jsonl"):
        parts = [(tmp_path / f"part{i}.{kind}").read_bytes() for i in (0, 1)]
        assert all(parts) and b"".join(parts) == (tmp_path / f"one.{kind}").read_bytes()
    assert kept == [[], [], []]


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_equal_one_process(tiny_model, tiny_backbone, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    inp = write_jsonl(tmp_path / "s.jsonl", sample_rows(600, k=3, seed=2))  # three windows of 256 rows
    assert run(tiny_model, tiny_backbone, inp, tmp_path / "one.jsonl", "-q").code == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "armo_cli.cli", "annotate", str(inp), "-m",
                        str(tiny_model / "model"), "--backbone", str(tiny_backbone), "--device", "cpu",
                        "-o", str(tmp_path / "dist.jsonl"), "-q"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    for kind in ("jsonl", "scores.jsonl"):
        assert (tmp_path / f"dist.{kind}").read_bytes() == (tmp_path / f"one.{kind}").read_bytes()
    assert not list(tmp_path.glob("*.shard-*"))


def test_dataset_and_stdin_inputs_give_the_files_a_path_gives(tiny_model, tiny_backbone, tmp_path):
    """`--dataset FILE` (a local file, read as datasets would) and `-` (stdin, spooled) are the same rows as INPUT."""
    rows = sample_rows(5)
    inp = write_jsonl(tmp_path / "s.jsonl", rows)
    assert run(tiny_model, tiny_backbone, inp, tmp_path / "a.jsonl", "-q").code == 0
    r = armo("annotate", "--dataset", str(inp), "-m", str(tiny_model / "model"), "--backbone", str(tiny_backbone),
             "--device", "cpu", "-o", str(tmp_path / "b.jsonl"), "-q")
    assert r.code == 0, r.output
    r = armo("annotate", "-", "-m", str(tiny_model / "model"), "--backbone", str(tiny_backbone), "--device", "cpu",
             "-o", str(tmp_path / "c.jsonl"), "-q", input=inp.read_text())
    assert r.code == 0, r.output
    for kind in ("jsonl", "scores.jsonl"):
        a = (tmp_path / f"a.{kind}").read_bytes()
        assert a and a == (tmp_path / f"b.{kind}").read_bytes() == (tmp_path / f"c.{kind}").read_bytes()
