"""The style probes of studies/style_probe.py (#46): the same words in another form, and the gap's paired interval."""
import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "studies"))
from style_probe import GAPS, PROBES, gaps, padded, probe_rows, to_markdown, to_plain  # noqa: E402

from armo_cli.style import style_counts  # noqa: E402

PLAIN = "Canberra is the capital of Australia. Sydney is larger. Melbourne is second."
MARKDOWN = ("## Capital\n\n**Canberra** is the capital of *Australia*.\n\n- Sydney is larger\n- Melbourne is second\n\n"
            "```\nprint(1)\n```\n\n| city | pop |\n|---|---|\n| Sydney | 5M |\n")


def words(text: str) -> list[str]:
    return [w.strip(".,*#-|`:") for w in text.split() if w.strip(".,*#-|`:")]


def test_to_markdown_dresses_the_same_words_and_to_plain_undresses_them():
    md = to_markdown(PLAIN)
    assert md == "### Canberra is the capital of Australia.\n\n- **Sydney** is larger.\n- **Melbourne** is second."
    assert style_counts(md) == {**style_counts(""), "headers": 1, "list_items": 2, "emphasis": 2}
    assert to_plain(md) == PLAIN and words(md) == words(PLAIN)
    assert to_markdown("One sentence only.") == "**One sentence only.**"
    assert to_markdown(MARKDOWN) == MARKDOWN  # already markdown: as it is


def test_to_plain_keeps_every_word_and_drops_every_mark():
    plain = to_plain(MARKDOWN)
    assert plain == ("Capital. Canberra is the capital of Australia. Sydney is larger. Melbourne is second. print(1) "
                     "city, pop. Sydney, 5M.")
    assert sum(style_counts(plain).values()) == 0
    assert words(plain) == ["Capital", "Canberra", "is", "the", "capital", "of", "Australia", "Sydney", "is", "larger",
                            "Melbourne", "is", "second", "print(1)", "city", "pop", "Sydney", "5M"]


def test_a_multi_line_code_block_stays_a_block():
    text = "Run this:\n\n```python\nx = 1\nprint(x)\n```\n\nThen **check** it."
    assert to_plain(text) == "Run this:\n\nx = 1\nprint(x)\n\nThen check it."


def test_probe_rows_and_gaps():
    pair = {"id": "p1", "prompt": "Capital of Australia?", "chosen": PLAIN, "rejected": "Sydney is the capital. It is big."}
    rows = probe_rows([pair])
    assert [r["subset"] for r in rows] == list(PROBES) and [r["id"] for r in rows][0] == "p1/chosen plain"
    by = {r["subset"]: r for r in rows}
    assert by["chosen plain"]["chosen"] == PLAIN and by["chosen plain"]["rejected"].startswith("### Sydney")
    assert by["chosen markdown"]["chosen"].startswith("### Canberra") and by["chosen markdown"]["rejected"] == pair["rejected"]
    assert by["chosen long"]["chosen"] == padded(PLAIN) and by["chosen short"]["rejected"] == padded(pair["rejected"])
    out = gaps({"chosen plain": [1, 0, 0, 1], "chosen markdown": [1, 1, 1, 1], "chosen short": [1, 1, 0, 0],
                "chosen long": [1, 1, 0, 0]}, n_boot=200)
    assert set(out) == set(GAPS) and out["format"]["gap"] == 0.5 and out["length"] == {"gap": 0.0, "ci95": [0.0, 0.0]}
    lo, hi = out["format"]["ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0


def test_the_study_runs_on_a_model_and_counts_the_pairs_it_leaves_out(tiny_model, tmp_path, capsys):
    import json

    from style_probe import card_section, main
    from tests.helpers import pair_rows, write_jsonl

    rows = pair_rows(6) + [{"id": "long", "prompt": "q", "chosen": "word " * 400, "rejected": "no"}]
    f = write_jsonl(tmp_path / "p.jsonl", [r for r in rows if isinstance(r["prompt"], str)])
    res = main(["--input", str(f), "-m", str(tiny_model / "model"), "--n", "10", "--max-length", "300",
                "--results", str(tmp_path / "all.json"), "--set", "tiny"])
    assert res["skipped_too_long"] == ["long"] and res["pairs"] == 4
    assert set(res["accuracy"]) == set(PROBES) and all(0.0 <= v <= 1.0 for v in res["accuracy"].values())
    saved = json.loads((tmp_path / "all.json").read_text())
    assert saved == {"tiny": res}
    row = card_section(saved)[6]
    assert row.startswith("| tiny | 4 (+1 too long) | ")


def test_probes_extracted_once_and_read_back_from_evaluate_give_the_same_result(tiny_model, tmp_path):
    """--rows-out then `armo evaluate --pairs-output` then --scored (how several models share one extraction) gives
    what scoring in the study gives, the too-long pair left out the same way."""
    from style_probe import main
    from tests.helpers import armo, pair_rows, write_jsonl

    rows = pair_rows(6) + [{"id": "long", "prompt": "q", "chosen": "word " * 400, "rejected": "no"}]
    f = write_jsonl(tmp_path / "p.jsonl", [r for r in rows if isinstance(r["prompt"], str)])
    model = str(tiny_model / "model")
    direct = main(["--input", str(f), "-m", model, "--n", "10", "--max-length", "300"])
    assert main(["--input", str(f), "--n", "10", "--rows-out", str(tmp_path / "probes.jsonl")]) is None
    res = armo("evaluate", str(tmp_path / "probes.jsonl"), "-m", model, "--max-length", "300", "--overflow", "skip",
               "--pairs-output", str(tmp_path / "scored.jsonl"), "-o", str(tmp_path / "e.json"), "-q")
    assert res.code == 0, res.output
    read = main(["--input", str(f), "--n", "10", "--scored", str(tmp_path / "scored.jsonl"), "-m", model])
    assert read["skipped_too_long"] == direct["skipped_too_long"] == ["long"]
    assert read["accuracy"] == direct["accuracy"] and read["gaps"] == direct["gaps"]


def test_the_candidates_rule_picks_on_the_selection_slice_and_adopts_only_without_a_loss():
    from style_candidates_table import choose

    def cand(sel_acc, sel_gap_ci, evals):
        return {"accuracy": {"RMB selection": {"accuracy": sel_acc, "ci95": [0, 1]},
                             **{s: {"accuracy": a, "ci95": [a - 0.03, a + 0.03]} for s, a in evals.items()}},
                "probes": {"RMB selection": {"format": {"gap": 0.0, "ci95": sel_gap_ci}}}}

    ev = {"held-out": 0.61, "dev-eval": 0.56, "RMB evaluation": 0.55}
    results = {"shipped": cand(0.60, [0.1, 0.3], ev),
               "a": cand(0.62, [0.05, 0.2], ev),                                   # not eligible: gap above 0
               "b": cand(0.59, [-0.05, 0.08], {**ev, "dev-eval": 0.54}),          # eligible, within the interval
               "c": cand(0.58, [-0.1, 0.02], ev)}
    d = choose(results)
    assert d["eligible"] == ["b", "c"] and d["chosen"] == "b" and d["adopt"] is True
    results["b"] = cand(0.59, [-0.05, 0.08], {**ev, "dev-eval": 0.52})             # below 0.53, the lower bound
    d = choose(results)
    assert d["chosen"] == "b" and d["adopt"] is False and d["losses"] == ["dev-eval"]
    del results["b"]["accuracy"]["RMB evaluation"]
    assert choose(results)["missing"] == ["RMB evaluation"]
    assert choose({"shipped": results["shipped"], "a": results["a"]})["chosen"] is None
