"""armo's error contract, case by case, through the real entry point (`armo_cli.cli.main`).

Every case asserts the exit code, exactly one line on stderr that names what is wrong (file and line
where there is one), no traceback, and that the working folder holds exactly what it held before:
no partial output, no temporary file, no `OUT.parts/`, no lock file.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from armo_cli.artifact_files import save_artifact

from tests.helpers import (SYSTEM_PAIR, armo, make_features, make_regression, make_tokenizer, pair_rows, rating_rows,
                      write_jsonl)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@dataclass
class Ctx:
    tmp: Path
    backbone: Path
    model: Path  # an armo model directory (tiny backbone)
    ratings: Path  # rating features
    pairs: Path  # pair features
    reg: Path
    dec: Path

    def jsonl(self, name: str, rows: list) -> Path:
        return write_jsonl(self.tmp / name, rows)

    def text(self, name: str, text: str | bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    def extract(self, *args) -> list:
        return ["extract", *args, "-b", self.backbone, "--device", "cpu", "-q"]


GOOD = {"id": "a", "prompt": "hello", "response": "world", "ratings": {"x": 1}}


def extract_with(*opts):
    """A case: extracting one good row with these options."""
    return lambda c: (c.extract(c.jsonl("in.jsonl", [GOOD]), "-o", c.tmp / "o.st", *opts), None)
PAIR = {"id": "a", "prompt": "hello", "chosen": "yes", "rejected": "no"}
MANY = "".join(json.dumps({**GOOD, "id": f"r{i}"}) + "\n" for i in range(200))


def fake_features(path: Path, meta_drop: str | None = None, nan: bool = False, job: bool = True, shard=(0, 1),
                  job_id: str = "j", rows: int = 4, ids: int | None = None) -> Path:
    X = torch.randn(rows, 32)
    if nan:
        X[1, 3] = float("nan")
    return make_features(path, X, n_ids=ids, drop=meta_drop, shard=list(shard),
                         job={"id": job_id, "num_shards": shard[1], "rows": rows * shard[1]} if job else None)


def bad_model(ctx: Ctx, manifest: str) -> Path:
    d = ctx.tmp / "m"
    d.mkdir()
    (d / "armo.json").write_text(manifest)
    return d


# Each case: name -> (build(ctx) -> (args, stdin), exit code, pattern the one line must contain)
Case = tuple[Callable[[Ctx], tuple[list, str | bytes | None]], int, str]
CASES: dict[str, Case] = {
    # --- extract: rows ---------------------------------------------------------------------------
    "extract malformed JSON": (lambda c: (c.extract(c.text("in.jsonl", json.dumps(GOOD) + "\n{oops\n"), "-o", c.tmp / "o.st"), None),
                               2, r"in\.jsonl:2: malformed JSON"),
    "extract missing field": (lambda c: (c.extract(c.jsonl("in.jsonl", [{"prompt": "p"}]), "-o", c.tmp / "o.st"), None),
                              2, r"in\.jsonl:1: no response"),
    "extract empty prompt": (lambda c: (c.extract(c.jsonl("in.jsonl", [{"prompt": " ", "response": "r"}]), "-o", c.tmp / "o.st"), None),
                             2, r"in\.jsonl:1: field 'prompt': empty"),
    "extract non-numeric rating": (lambda c: (c.extract(c.jsonl("in.jsonl", [{**GOOD, "ratings": {"x": "high"}}]), "-o", c.tmp / "o.st"), None),
                                   2, r"in\.jsonl:1: field 'ratings\.x': not a number"),
    "extract infinite rating": (lambda c: (c.extract(c.text("in.jsonl", '{"prompt": "p", "response": "r", "ratings": {"x": 1e999}}\n'), "-o", c.tmp / "o.st"), None),
                                2, r"in\.jsonl:1: field 'ratings\.x': not a finite number"),
    "extract NaN literal": (lambda c: (c.extract(c.text("in.jsonl", '{"prompt": "p", "response": "r", "ratings": {"x": NaN}}\n'), "-o", c.tmp / "o.st"), None),
                            2, r"in\.jsonl:1: malformed JSON \(non-standard JSON constant NaN\)"),
    "extract repeated field": (lambda c: (c.extract(c.text("in.jsonl", json.dumps(GOOD) + '\n{"prompt": "p", "response": "a", "response": "b"}\n'), "-o", c.tmp / "o.st"), None),
                               2, r"in\.jsonl:2: malformed JSON \(field 'response' appears twice in one object; JSON would keep only the last\)"),
    "extract repeated nested field": (lambda c: (c.extract(c.text("in.jsonl", '{"prompt": "p", "response": "r", "ratings": {"x": 1, "x": 2}}\n'), "-o", c.tmp / "o.st"), None),
                                      2, r"in\.jsonl:1: malformed JSON \(field 'x' appears twice"),
    "extract non-UTF-8 bytes": (lambda c: (c.extract(c.text("in.jsonl", json.dumps(GOOD).encode() + b'\n{"prompt": "\xff\xfe"}\n'), "-o", c.tmp / "o.st"), None),
                                2, r"in\.jsonl:2: not UTF-8 text"),
    "extract truncated gz": (lambda c: (c.extract(c.text("in.jsonl.gz", gzip.compress(MANY.encode())[:-20]), "-o", c.tmp / "o.st"), None),
                             2, r"in\.jsonl\.gz:\d+: damaged or truncated gzip data"),
    "extract gz that is not gzip": (lambda c: (c.extract(c.text("in.jsonl.gz", json.dumps(GOOD) + "\n"), "-o", c.tmp / "o.st"), None),
                                    2, r"in\.jsonl\.gz:1: damaged or truncated gzip data"),
    "extract input is a folder": (lambda c: (c.extract((c.tmp / "d").mkdir() or c.tmp / "d", "-o", c.tmp / "o.st"), None),
                                  2, r"d: is a folder, expected a file"),
    "extract missing input": (lambda c: (c.extract(c.tmp / "nope.jsonl", "-o", c.tmp / "o.st"), None), 2, r"nope\.jsonl: no such file"),
    "extract deeply nested JSON": (lambda c: (c.extract(c.text("in.jsonl", "[" * 100000 + "]" * 100000 + "\n"), "-o", c.tmp / "o.st"), None),
                                   2, r"in\.jsonl:1: malformed JSON \(nested too deeply\)"),
    "extract lone surrogate": (lambda c: (c.extract(c.text("in.jsonl", '{"prompt": "\\ud800", "response": "r"}\n'), "-o", c.tmp / "o.st"), None),
                               2, r"in\.jsonl:1: field 'prompt': invalid Unicode"),
    "extract row not an object": (lambda c: (c.extract(c.text("in.jsonl", "[1, 2]\n"), "-o", c.tmp / "o.st"), None),
                                  2, r"in\.jsonl:1: expected a JSON object, got list"),
    "extract mixes pairs and singles": (lambda c: (c.extract(c.jsonl("in.jsonl", [GOOD, {**PAIR, "id": "b"}]), "-o", c.tmp / "o.st"), None),
                                        2, r"in\.jsonl:2: mixes pairs and single responses"),
    "extract duplicate id": (lambda c: (c.extract(c.jsonl("in.jsonl", [GOOD, GOOD]), "-o", c.tmp / "o.st"), None),
                             2, r"in\.jsonl:2: field 'id': duplicate id 'a'"),
    "extract over the backbone's positions": (lambda c: (c.extract(c.jsonl("in.jsonl", [{**GOOD, "response": "hello world " * 400}]), "-o", c.tmp / "o.st"), None),
                                              2, r"in\.jsonl:1: row 'a' has \d+ tokens, over the backbone's maximum positions 512"),
    "extract malformed stdin": (lambda c: (c.extract("-", "-o", c.tmp / "o.st"), json.dumps(GOOD) + "\n{oops\n"),
                                2, r"<stdin>:2: malformed JSON"),
    # --- extract: options --------------------------------------------------------------------------
    "extract --device gpu": (lambda c: (["extract", c.jsonl("in.jsonl", [GOOD]), "-o", c.tmp / "o.st", "-b", c.backbone, "--device", "gpu"], None),
                             2, r"--device gpu: expected cpu, cuda, cuda:N or mps"),
    "extract --device cuda without CUDA": (lambda c: (["extract", c.jsonl("in.jsonl", [GOOD]), "-o", c.tmp / "o.st", "-b", c.backbone, "--device", "cuda"], None),
                                           2, r"--device cuda: CUDA is not available"),
    "extract -o -": (lambda c: (c.extract(c.jsonl("in.jsonl", [GOOD]), "-o", "-"), None), 2, r"--output -: .*cannot go to stdout"),
    "extract -o a folder": (lambda c: (c.extract(c.jsonl("in.jsonl", [GOOD]), "-o", (c.tmp / "d").mkdir() or c.tmp / "d"), None),
                            2, r"--output .*d: is a folder"),
    "extract -o the input": (lambda c: (c.extract(c.jsonl("in.jsonl", [GOOD]), "-o", c.tmp / "in.jsonl"), None),
                             2, r"--output .*in\.jsonl: is also an input"),
    # --- score --------------------------------------------------------------------------------------
    "score --features and INPUT": (lambda c: (["score", "-m", c.model, c.jsonl("in.jsonl", [GOOD]), "--features", c.ratings], None),
                                   2, r"give one of INPUT, --dataset and --features, not INPUT and --features"),
    "score --weights nan": (lambda c: (["score", "-m", c.model, "--features", c.ratings, "--weights", "verbosity=nan"], None),
                            2, r"--weights 'verbosity=nan': NaN is not a number here"),
    "score --weights inf": (lambda c: (["score", "-m", c.model, "--features", c.ratings, "--weights", "verbosity=inf"], None),
                            2, r"--weights 'verbosity=inf': verbosity: the weight must be finite"),
    "score --weights all zero": (lambda c: (["score", "-m", c.model, "--features", c.ratings, "--weights", "verbosity=0"], None),
                                 2, r"--weights 'verbosity=0': every weight is zero"),
    "score --weights unknown": (lambda c: (["score", "-m", c.model, "--features", c.ratings, "--weights", "nope=1"], None),
                                2, r"--weights 'nope=1': unknown objective 'nope'"),
    "score --top-k 0": (lambda c: (["score", "-m", c.model, "--features", c.ratings, "--top-k", "0"], None),
                        2, r"--top-k 0: must be at least 1"),
    "score --format xml": (lambda c: (["score", "-m", c.model, "--features", c.ratings, "--format", "xml", "-o", c.tmp / "s.txt"], None),
                           2, r"--format xml: choose from jsonl, table"),
    "score NaN in features": (lambda c: (["score", "-m", c.model, "--features", fake_features(c.tmp / "f.st", nan=True), "-o", c.tmp / "s.jsonl"], None),
                              2, r"f\.st: tensor 'prompt_features' holds 1 non-finite values"),
    "score features with partial metadata": (lambda c: (["score", "-m", c.model, "--features", fake_features(c.tmp / "f.st", meta_drop="ids"), "-o", c.tmp / "s.jsonl"], None),
                                             2, r"f\.st: incomplete 'features' artifact: metadata field 'ids' is missing"),
    "score features with too few ids": (lambda c: (["score", "-m", c.model, "--features", fake_features(c.tmp / "f.st", rows=4, ids=3)], None),
                                        2, r"f\.st: damaged features: tensor '\w+' has 4 rows for 3 ids"),
    "score features with a mistyped field": (lambda c: (["score", "-m", c.model, "--features", make_features(c.tmp / "f.st", torch.zeros(2, 32), pair="yes")], None),
                                             2, r"f\.st: metadata field 'pair': expected bool, got str"),
    "score features not safetensors": (lambda c: (["score", "-m", c.model, "--features", c.jsonl("f.st", [GOOD])], None),
                                       2, r"f\.st: not a readable safetensors file"),
    "score armo.json not an object": (lambda c: (["score", "-m", bad_model(c, "[1, 2]"), "--features", c.ratings], None),
                                      2, r"armo\.json: expected a JSON object, got list"),
    "score armo.json malformed": (lambda c: (["score", "-m", bad_model(c, "{\"parts\": "), "--features", c.ratings], None),
                                  2, r"armo\.json:1: malformed JSON"),
    "score armo.json parts not an object": (lambda c: (["score", "-m", bad_model(c, '{"parts": 3}'), "--features", c.ratings], None),
                                            2, r"armo\.json: field 'parts'"),
    "score model is a file": (lambda c: (["score", "-m", c.jsonl("m.jsonl", [GOOD]), "--features", c.ratings], None),
                              2, r"m\.jsonl: is a file, expected an armo model directory"),
    "score -o the features": (lambda c: (["score", "-m", c.model, "--features", fake_features(c.tmp / "f.st"), "-o", c.tmp / "f.st"], None),
                              2, r"--output .*f\.st: is also an input"),
    # --- evaluate -------------------------------------------------------------------------------------
    "evaluate features as INPUT": (lambda c: (["evaluate", "-m", c.model, c.pairs, "-o", c.tmp / "r.json"], None), 2,
                                   r"p\.st:1: a safetensors file \(extracted features or fitted heads\), not JSONL rows; "
                                   r"score and evaluate take features as --features FILE"),
    "score heads as INPUT": (lambda c: (["score", "-m", c.model, c.reg], None), 2, r"reg\.st:1: a safetensors file"),
    "evaluate --ties": (lambda c: (["evaluate", "-m", c.model, "--features", c.pairs, "--ties", "maybe"], None),
                        2, r"--ties maybe: choose from loss, half"),
    "evaluate --bootstrap 0": (lambda c: (["evaluate", "-m", c.model, "--features", c.pairs, "--bootstrap", "0"], None),
                               2, r"--bootstrap 0: must be at least 1"),
    "evaluate same path twice": (lambda c: (["evaluate", "-m", c.model, "--features", c.pairs, "-o", c.tmp / "r.json", "--pairs-output", c.tmp / "r.json"], None),
                                 2, r"--output and --pairs-output: give each output its own path"),
    "evaluate single responses": (lambda c: (["evaluate", "-m", c.model, "--features", c.ratings, "-o", c.tmp / "r.json"], None),
                                  2, r"evaluate needs pairs"),
    "evaluate -o a folder": (lambda c: (["evaluate", "-m", c.model, "--features", c.pairs, "-o", (c.tmp / "d").mkdir() or c.tmp / "d"], None),
                             2, r"--output .*d: is a folder"),
    "evaluate no input": (lambda c: (["evaluate", "-m", c.model], None), 2, r"give INPUT \(JSONL or -\), --dataset NAME or --features FILE"),
    # --- fit-* ------------------------------------------------------------------------------------------
    "fit-regression --val-fraction 1.5": (lambda c: (["fit-regression", c.ratings, "--val-fraction", "1.5", "-o", c.tmp / "r.st"], None),
                                          2, r"--val-fraction 1.5: must be less than 1"),
    "fit-regression --alphas -1": (lambda c: (["fit-regression", c.ratings, "--alphas", "1,-1", "-o", c.tmp / "r.st"], None),
                                   2, r"--alphas -1(\.0)?: must be greater than 0"),
    "fit-regression --alphas x": (lambda c: (["fit-regression", c.ratings, "--alphas", "x", "-o", c.tmp / "r.st"], None),
                                  2, r"--alphas 'x': expected comma-separated numbers"),
    "fit-regression --refit": (lambda c: (["fit-regression", c.ratings, "--refit", "sometimes", "-o", c.tmp / "r.st"], None),
                               2, r"--refit sometimes: choose from all, train"),
    "fit-regression -o the input": (lambda c: (["fit-regression", fake_features(c.tmp / "f.st"), "-o", c.tmp / "f.st"], None),
                                    2, r"--output .*f\.st: is also an input"),
    "fit-regression --range": (lambda c: (["fit-regression", c.ratings, "--range", "helpfulness=5:1", "-o", c.tmp / "r.st"], None),
                               2, r"--range 'helpfulness=5:1': HI must be greater than LO"),
    "fit-regression --preference-folds 1": (lambda c: (["fit-regression", "--pairs", c.pairs, "--preference-objective", "p",
                                                        "--preference-folds", "1", "-o", c.tmp / "r.st"], None),
                                             2, r"--preference-folds 1: must be at least 2"),
    "fit-regression --pairs missing": (lambda c: (["fit-regression", "--pairs", c.tmp / "nope.st", "--preference-objective", "p",
                                                   "-o", c.tmp / "r.st"], None), 2, r"nope\.st: no such file"),
    "fit-gating --model-dir foreign folder": (
        lambda c: (["fit-gating", c.pairs, "-r", c.reg, "--steps", "2", "-o", c.tmp / "g.st",
                    "--model-dir", (c.tmp / "mine").mkdir() or (c.tmp / "mine" / "notes.txt").write_text("x") and c.tmp / "mine"], None),
        2, r"mine: folder is not empty and is not an armo model directory"),
    "fit-gating regression is features": (lambda c: (["fit-gating", c.pairs, "-r", c.pairs, "-o", c.tmp / "g.st"], None),
                                          2, r"expected a 'regression' artifact, found 'features'"),
    # --- merge --------------------------------------------------------------------------------------------
    "merge a file without a job": (lambda c: (["merge", fake_features(c.tmp / "a.st", job=False), "-o", c.tmp / "m.st"], None),
                                   2, r"a\.st: records no extract job"),
    "merge incomplete shards": (lambda c: (["merge", fake_features(c.tmp / "a.st", shard=(0, 2)), "-o", c.tmp / "m.st"], None),
                                2, r"merge: 1 of 2 shards missing \(indices 1\)"),
    "merge shards of two jobs": (lambda c: (["merge", fake_features(c.tmp / "a.st", shard=(0, 2), job_id="j1"),
                                             fake_features(c.tmp / "b.st", shard=(1, 2), job_id="j2"), "-o", c.tmp / "m.st"], None),
                                 2, r"b\.st: a shard of another extract job"),
    "merge a shard twice": (lambda c: (["merge", fake_features(c.tmp / "a.st", shard=(0, 2)), c.tmp / "a.st", "-o", c.tmp / "m.st"], None),
                            2, r"shard 0 of 2 is given twice"),
    # --- export / import / assemble --------------------------------------------------------------------------
    "export into the model": (lambda c: (["export", "-m", c.model, c.model], None), 2, r"would replace the input"),
    "export into the current folder": (lambda c: (["export", "-m", c.model, "."], None), 2, r"\.: is the current folder"),
    "export into a parent of the current folder": (lambda c: (["export", "-m", c.model, ".."], None), 2, r"\.\.: is the current folder or one of its parents"),
    "export into a file": (lambda c: (["export", "-m", c.model, c.jsonl("x.jsonl", [GOOD])], None), 2, r"x\.jsonl: is a file, expected a folder"),
    "import folder without config": (lambda c: (["import", (c.tmp / "ck").mkdir() or c.tmp / "ck", "-o", c.tmp / "out"], None),
                                     2, r"ck: no config\.json"),
    "import config not an object": (lambda c: (["import", (c.tmp / "ck").mkdir() or (c.tmp / "ck" / "config.json").write_text("[]") and c.tmp / "ck",
                                                "-o", c.tmp / "out"], None),
                                    2, r"config\.json: expected a JSON object, got list"),
    "import into its source": (lambda c: (["import", c.model, "-o", c.model], None), 2, r"would replace the input"),
    "assemble missing artifact": (lambda c: (["assemble", c.tmp / "mm", "-r", c.tmp / "nope.st", "-g", c.reg], None),
                                  2, r"nope\.st: no such file"),
    # --- sample ----------------------------------------------------------------------------------------------
    "sample --n -1": (lambda c: (["sample", c.jsonl("in.jsonl", [GOOD]), "--n", "-1"], None), 2, r"--n -1: must be at least 0"),
    "sample --skip -2": (lambda c: (["sample", c.jsonl("in.jsonl", [GOOD]), "--skip", "-2"], None), 2, r"--skip -2: must be at least 0"),
    "sample non-UTF-8": (lambda c: (["sample", c.text("in.jsonl", b'{"a": "\xff"}\n'), "-o", c.tmp / "s.jsonl"], None),
                         2, r"in\.jsonl:1: not UTF-8 text"),
}


# extract with one good row and a bad option value: (options, what the one line must say)
EXTRACT_OPTIONS = [
    (["--chunk-size", "-3"], r"--chunk-size -3: must be at least 1"),
    (["--chunk-size", "0"], r"--chunk-size 0: must be at least 1"),
    (["--chunk-size", "abc"], r"armo extract: Invalid value for '--chunk-size'"),
    (["--bogus"], r"armo extract: No such option: --bogus"),
    (["--on-error", "maybe"], r"--on-error maybe: choose from error, skip"),
    (["--overflow", "cut"], r"--overflow cut: choose from error, skip, truncate-prompt"),
    (["--gate-rule", "last"], r"--gate-rule last: choose from generation-prompt, armo-eot"),
    (["--max-length", "0"], r"--max-length 0: must be at least 1"),
    (["--max-length", "513"], r"--max-length 513: above the backbone's maximum positions 512 \(it was not trained on "
                              r"longer sequences\); give at most 512"),
    (["--max-padding", "1.5"], r"--max-padding 1.5: must be at most 1"),
    (["--batch-tokens", "0"], r"--batch-tokens 0: must be at least 1"),
    (["--layer", "7"], r"--layer 7: the backbone has 2 layers \(give -3..2\)"),
    (["--dtype", "fp8"], r"--dtype fp8: choose from"),
    (["--num-shards", "2", "--shard-index", "3"], r"--shard-index 3: must be in \[0, 2\)"),
    (["--shard-index", "1"], r"--shard-index needs --num-shards"),
]
CASES.update({"extract " + " ".join(opts): (extract_with(*opts), 2, msg) for opts, msg in EXTRACT_OPTIONS})

# the fit stages with a bad option value: (command, options, what the one line must say)
FIT_OPTIONS = [
    ("fit-decorrelation", ["--min-rows", "1"], r"--min-rows 1: must be at least 2"),
    ("fit-decorrelation", ["--method", "kendall"], r"--method kendall: choose from spearman, pearson"),
    ("fit-decorrelation", ["--tolerance", "0"], r"--tolerance 0(\.0)?: must be greater than 0"),
    ("fit-gating", ["--dropout", "1"], r"--dropout 1(\.0)?: must be less than 1"),
    ("fit-gating", ["--steps", "0"], r"--steps 0: must be at least 1"),
    ("fit-gating", ["--lr", "0"], r"--lr 0(\.0)?: must be greater than 0"),
    ("fit-gating", ["--device", "gpu"], r"--device gpu: expected cpu, cuda, cuda:N or mps"),
]


def fit_with(command: str, *opts: str):
    """A case: a fit stage on the tiny model's pairs and regression with these options."""
    return lambda c: ([command, c.pairs, "-r", c.reg, *opts, "-o", c.tmp / "out.st"], None)


CASES.update({f"{cmd} " + " ".join(opts): (fit_with(cmd, *opts), 2, msg) for cmd, opts, msg in FIT_OPTIONS})


@pytest.fixture(scope="module")
def built(tiny_model, tiny_backbone) -> dict:
    return {"backbone": tiny_backbone, "model": tiny_model / "model", "ratings": tiny_model / "r.st",
            "pairs": tiny_model / "p.st", "reg": tiny_model / "reg.st", "dec": tiny_model / "dec.st"}


def test_there_are_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(name, built, tmp_path, monkeypatch):
    if "without CUDA" in name and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ctx = Ctx(tmp=work, **built)
    build, code, pattern = CASES[name]
    args, stdin = build(ctx)
    before = tree(work)
    model_before = tree(built["model"])
    r = armo(*args, input=stdin)
    lines = r.stderr.strip().splitlines()
    assert r.code == code, (r.code, r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), r.stderr
    import re

    assert re.search(pattern, lines[0]), (pattern, lines[0])
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stdout == ""
    assert tree(work) == before, "the failed command left files behind"
    assert tree(built["model"]) == model_before


# --- the world's failures and armo's own bugs ---------------------------------------------------------------
def test_a_full_disk_is_one_line_exit_1_and_leaves_nothing(built, tmp_path, monkeypatch):
    import errno

    import armo_cli.artifact_files as io  # where save_file is called

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(a[1]) if len(a) > 1 else None)

    monkeypatch.setattr(io, "save_file", full)
    before = tree(tmp_path)
    r = armo("fit-regression", built["ratings"], "--length-objective", "verbosity2", "-o", tmp_path / "r.st", "-q")
    assert r.code == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "No space left on device" in r.stderr
    assert "Traceback" not in r.stderr
    assert tree(tmp_path) == before


def test_an_unwritable_output_folder_is_exit_1(built, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    r = armo("evaluate", "-m", built["model"], "--features", built["pairs"], "-o", tmp_path / "report.json",
             "--pairs-output", blocker / "pairs.jsonl", "-q")
    assert r.code == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "afile" in r.stderr
    # the report and the per-pair file succeed or fail together
    assert not (tmp_path / "report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_internal_error_asks_for_a_report_and_hides_the_traceback(built, tmp_path, monkeypatch):
    import armo_cli.score as scoring

    def boom(*a, **k):
        raise ZeroDivisionError("synthetic bug")

    monkeypatch.setattr(scoring, "score_records", boom)
    r = armo("score", "-m", built["model"], "--features", built["ratings"], "-o", tmp_path / "s.jsonl")
    assert r.code == 3
    assert len(r.stderr.strip().splitlines()) == 1
    assert "internal error (ZeroDivisionError: synthetic bug)" in r.stderr and "please report" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "s.jsonl").exists()
    r = armo("--debug", "score", "-m", built["model"], "--features", built["ratings"], "-o", tmp_path / "s.jsonl")
    assert r.code == 3 and "Traceback" in r.stderr and "synthetic bug" in r.stderr
    r = armo("score", "-m", built["model"], "--features", built["ratings"], "-o", tmp_path / "s.jsonl", env={"ARMO_DEBUG": "1"})
    assert r.code == 3 and "Traceback" in r.stderr


def test_a_nan_score_is_an_error_not_a_null(built, tmp_path):
    """Finite but huge weights overflow to inf in float32; inf - inf in the score is NaN."""
    from armo_cli.model import ArmoModel

    m = ArmoModel.load(built["model"])
    W = torch.full_like(m.regression.weight, 3e38)
    W[:, ::2] = -3e38
    d = tmp_path / "nanmodel"
    save_artifact(tmp_path / "reg.st", {"weight": W, "bias": m.regression.bias}, m.regression.meta)
    from armo_cli.heads import regression_hash, transform_hash
    from armo_cli.heads import Regression

    rh = regression_hash(Regression.load(tmp_path / "reg.st"))
    gate_t = {k: v for k, v in m.gating.gate.state_dict().items()}
    import dataclasses

    save_artifact(tmp_path / "gate.st", gate_t, dataclasses.replace(
        m.gating.meta, regression_hash=rh, transform_hash=transform_hash(torch.eye(len(m.objectives)))))
    r = armo("assemble", d, "-r", tmp_path / "reg.st", "-g", tmp_path / "gate.st")
    assert r.code == 0, r.stderr
    for cmd in (["score", "-m", d, "--features", built["ratings"], "-o", tmp_path / "s.jsonl"],
                ["evaluate", "-m", d, "--features", built["pairs"], "-o", tmp_path / "e.json", "-q"]):
        r = armo(*cmd)
        assert r.code == 2, r.stderr
        assert "score is not finite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.jsonl").exists() and not (tmp_path / "e.json").exists()


def test_negative_weights_are_allowed_and_penalise(built):
    from armo_cli.model import ArmoModel

    objs = ArmoModel.load(built["model"]).objectives
    a = objs[0]
    pos = [json.loads(x) for x in armo("score", "-m", built["model"], "--features", built["ratings"],
                                       "--weights", f"{a}=1").stdout.splitlines()]
    neg = [json.loads(x) for x in armo("score", "-m", built["model"], "--features", built["ratings"],
                                       "--weights", f"{a}=-1").stdout.splitlines()]
    assert len(pos) == len(neg) == 80
    for p, n in zip(pos, neg):
        assert n["score"] == pytest.approx(-p["score"], abs=1e-6)
        assert n["gating"][a] == -1.0


def test_stdin_errors_name_stdin_not_the_spool_file(built):
    rows = "".join(json.dumps(r) + "\n" for r in rating_rows(3)) + '{"prompt": "", "response": "r"}\n'
    r = armo("score", "-m", built["model"], "-", "-q", input=rows)
    assert r.code == 2 and r.stderr.strip() == "error: <stdin>:4: field 'prompt': empty"


def test_evaluate_features_of_pairs_and_rows_round_trip(built, tmp_path):
    """A sanity check that the cases above fail for their stated reason: the same commands with good
    values succeed."""
    r = armo("evaluate", "-m", built["model"], "--features", built["pairs"], "-o", tmp_path / "r.json",
             "--pairs-output", tmp_path / "p.jsonl", "-q")
    assert r.code == 0, r.stderr
    assert (tmp_path / "r.json").exists() and len((tmp_path / "p.jsonl").read_text().splitlines()) == 60
    rows = write_jsonl(tmp_path / "in.jsonl", pair_rows(3))
    r = armo("extract", rows, "-o", tmp_path / "o.st", "-b", built["backbone"], "--device", "cpu", "-q", "--chunk-size", "1")
    assert r.code == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "o.st", "p.jsonl", "r.json"]


def test_the_artifact_factory_writes_what_the_loaders_accept(tmp_path):
    from armo_cli.features import Features
    from armo_cli.heads import Regression

    make_regression(tmp_path / "r.st", torch.zeros(2, 4), ["a", "b"])
    assert Regression.load(tmp_path / "r.st").objectives == ["a", "b"]
    assert Features.load(make_features(tmp_path / "f.st", torch.zeros(3, 2, 4))).pair


# --- a conversation the backbone's chat template refuses ---------------------------------------------------
# Gemma's and Mistral's templates call raise_exception() on a system turn or on roles that do not alternate.
# That is bad input for this backbone (exit 2, file and line), not a bug in armo (it was exit 3).


@pytest.mark.parametrize("command", ["extract", "score", "evaluate"])
def test_a_conversation_the_template_refuses_is_bad_input(refusing_model, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    inp = write_jsonl(tmp_path / "in.jsonl", [PAIR, SYSTEM_PAIR, {**PAIR, "id": "c"}])
    args = {"extract": ["extract", inp, "-o", tmp_path / "o.st", "-b", refusing_model["backbone"], "--device", "cpu", "-q"],
            "score": ["score", inp, "-m", refusing_model["model"], "-o", tmp_path / "o.jsonl"],
            "evaluate": ["evaluate", inp, "-m", refusing_model["model"], "-o", tmp_path / "o.json"]}[command]
    before = tree(tmp_path)
    r = armo(*args)
    assert r.code == 2, (r.code, r.stderr)
    assert r.stderr.strip() == (f"error: {inp}:2: field 'prompt': the backbone's chat template refuses this "
                                f"conversation: System role not supported"), r.stderr
    assert r.stdout == "" and tree(tmp_path) == before


def test_the_python_api_raises_armo_error_for_a_refused_conversation(refusing_model):
    from armo_cli.api import RewardModel
    from armo_cli.errors import ArmoError

    rm = RewardModel(refusing_model["model"])
    assert len(rm.score([PAIR])) == 1
    with pytest.raises(ArmoError, match=r"^rows\[1\]: field 'prompt': the backbone's chat template refuses this "
                                        r"conversation: System role not supported$"):
        rm.score([PAIR, SYSTEM_PAIR])


def test_a_template_that_renders_nothing_is_refused_at_load():
    from armo_cli.errors import ArmoError
    from armo_cli.rendering import Renderer

    tok = make_tokenizer("{{ raise_exception('no chat here') }}", adds_bos=False)
    with pytest.raises(ArmoError, match=r"^the backbone's chat template cannot render a one-turn conversation: no chat here$"):
        Renderer(tok)
