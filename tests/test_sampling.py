"""`armo sample`: seeded slices of JSONL rows (--n, --skip, --where, --by-prompt) for held-out and selection sets."""
import json

from tests.helpers import armo, cli, write_jsonl


def test_sample_skip_gives_disjoint_slices_of_one_shuffle(tmp_path):
    """The default-model recipe takes its held-out pairs with --skip: slices with one seed never overlap."""
    rows = [{"id": f"r{i}", "source": "a" if i % 3 else "b"} for i in range(50)]
    src = write_jsonl(tmp_path / "all.jsonl", rows)
    cli("sample", src, "--n", "20", "--seed", "3", "-o", tmp_path / "train.jsonl")
    cli("sample", src, "--n", "20", "--skip", "20", "--seed", "3", "-o", tmp_path / "held.jsonl")
    cli("sample", src, "--skip", "40", "--seed", "3", "-o", tmp_path / "rest.jsonl")
    ids = [[json.loads(x)["id"] for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in ("train", "held", "rest")]
    assert [len(x) for x in ids] == [20, 20, 10]
    assert sorted(ids[0] + ids[1] + ids[2]) == sorted(r["id"] for r in rows)  # disjoint and complete
    again = [json.loads(x)["id"] for x in cli("sample", src, "--n", "20", "--seed", "3").stdout.splitlines()]
    assert again == ids[0]  # seeded: the same slice every time
    only_b = [json.loads(x) for x in cli("sample", src, "--where", "source=b", "--seed", "3").stdout.splitlines()]
    assert len(only_b) == 17 and all(r["source"] == "b" for r in only_b)



def test_sample_by_prompt_never_splits_a_prompt_between_slices(tmp_path):
    """Held-out slices disjoint by prompt (several pairs share a prompt): --by-prompt cuts between prompts."""
    rows = [{"id": f"r{i}", "prompt": f"prompt {i % 13}", "chosen": "a", "rejected": "b"} for i in range(60)]
    src = write_jsonl(tmp_path / "all.jsonl", rows)
    cli("sample", src, "--by-prompt", "--n", "20", "--seed", "1", "-o", tmp_path / "a.jsonl")
    cli("sample", src, "--by-prompt", "--skip", "20", "--n", "20", "--seed", "1", "-o", tmp_path / "b.jsonl")
    a, b = ([json.loads(x) for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in "ab")
    pa, pb = {r["prompt"] for r in a}, {r["prompt"] for r in b}
    assert not pa & pb and len(a) >= 20 and len(b) >= 20
    for p in pa | pb:  # every row of a prompt lands in the slice that holds the prompt
        assert sum(r["prompt"] == p for r in a + b) == sum(r["prompt"] == p for r in rows)
    # without --by-prompt, the same row counts split prompts between the slices
    cli("sample", src, "--n", "20", "--seed", "1", "-o", tmp_path / "c.jsonl")
    cli("sample", src, "--skip", "20", "--n", "20", "--seed", "1", "-o", tmp_path / "d.jsonl")
    c, d = ({json.loads(x)["prompt"] for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()} for n in "cd")
    assert c & d



def test_sample_by_prompt_groups_messages_rows_by_their_own_prompt(tmp_path):
    """Rows in the 'messages' form have no 'prompt' field: each is grouped by the history before its response,
    not all into one group (which made --n take every row or none)."""
    rows = [{"id": f"m{i}", "messages": [{"role": "user", "content": f"question {i % 10}"},
                                         {"role": "assistant", "content": f"answer {i}"}]} for i in range(30)]
    src = write_jsonl(tmp_path / "m.jsonl", rows)
    r = armo("sample", src, "--by-prompt", "--n", "6", "--seed", "2", "-o", tmp_path / "a.jsonl")
    assert r.code == 0 and r.stderr.strip() == "sampled 6 rows"
    a = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len({x["messages"][0]["content"] for x in a}) == 2  # two whole prompts of three rows each



def test_sample_refuses_a_row_that_is_not_an_object_and_warns_when_nothing_matches(tmp_path):

    src = tmp_path / "s.jsonl"
    src.write_text('{"source": "hh", "prompt": "a"}\n[1, 2]\n')
    r = armo("sample", src, "-o", tmp_path / "o.jsonl")
    assert r.code == 2 and r.stderr.strip() == f"error: {src}:2: expected a JSON object, got list"
    assert not (tmp_path / "o.jsonl").exists()
    src.write_text('{"source": "hh", "prompt": "a"}\n')
    r = armo("sample", src, "--where", "src=hh", "--n", "5", "-o", tmp_path / "o.jsonl")
    assert r.code == 0
    assert r.stderr.splitlines() == ["warning: no row of 1 matches --where src=hh (the rows' fields: prompt, source)",
                                     "sampled 0 rows (--n 5: only 0 were left to take)"]
