"""LM objectives (lm_objectives.py): read in the extraction pass, equal to transformers' own log-softmax of the LM
head, carried through every stage, refused where the features lack them, exported and imported."""
import json
from pathlib import Path

import pytest
import torch

from armo_cli.backbones import load_backbone
from armo_cli.errors import ArmoError
from armo_cli.features import Features
from armo_cli.forward import encode_trees
from armo_cli.lm_objectives import LM_OBJECTIVES, empty_prompt, parse_lm_objectives
from armo_cli.model import ArmoModel
from armo_cli.heads import Regression
from armo_cli.rendering import Renderer
from armo_cli.rows import Source, iter_examples

from tests.helpers import CHATML, ROOT, armo, check_export_round_trip, cli, make_tokenizer, pair_rows, rating_rows, write_jsonl


def make_lm_backbone(path: Path, tied: bool, seed: int = 0) -> Path:
    """A tiny random LlamaForCausalLM with its LM head: tied to the embeddings (as SmolLM2) or its own."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(CHATML, False)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=tied)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # a random head gives near-uniform log-probabilities; make them differ by response
        model.lm_head.weight.mul_(20.0)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["tied", "untied"])
def lm_backbone(request, tmp_path_factory) -> Path:
    return make_lm_backbone(tmp_path_factory.mktemp("lm") / request.param, tied=request.param == "tied")


def reference(folder: Path, prompt: list[int], cont: list[int]) -> float:
    """transformers' own: the mean log-softmax of LlamaForCausalLM's logits at the response's tokens."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    p = len(prompt)
    return float(torch.stack([lp[p - 1 + j, cont[j]] for j in range(len(cont))]).mean())


def trees_of(bb, rows, tmp_path):
    r = Renderer(bb.tokenizer)
    p = write_jsonl(tmp_path / "in.jsonl", rows)
    return [r.tokenize(ex, i) for i, ex in enumerate(iter_examples(Source(str(p))))]


ROWS = [
    {"id": "a", "prompt": "say hi", "chosen": "hello world", "rejected": "no"},
    {"id": "b", "prompt": "say hi", "chosen": "sure hello", "rejected": "hello world"},  # shares a prompt with a
    {"id": "c", "prompt": "write code", "chosen": "", "rejected": "python code please"},  # an empty response
    {"id": "d", "prompt": "why", "chosen": "tie", "rejected": "tie"},
]


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("layer", [-1, 1])
def test_lm_objectives_equal_transformers_log_softmax(lm_backbone, tmp_path, fast, layer, monkeypatch):
    import armo_cli.forward as fwd

    monkeypatch.setattr(fwd, "pass_cost", lambda config: (lambda L: float(L)))  # rows on one prompt share a tree
    bb = load_backbone(str(lm_backbone), device="cpu", dtype="fp32", fast=fast)
    assert bb.extra.get("fast", False) == fast
    trees = trees_of(bb, ROWS, tmp_path)
    P, R = encode_trees(bb, trees, 10_000, layer=layer, lm=list(LM_OBJECTIVES))
    P0, R0 = encode_trees(bb, trees, 10_000, layer=layer)
    assert R.shape == (4, 2, 32 + 2) and torch.equal(P, P0)
    assert torch.allclose(R[..., :32], R0, atol=1e-6)  # the features are the ones read without the LM head
    e = empty_prompt(bb)
    for i, t in enumerate(trees):
        for j, c in enumerate(t.conts):
            lp = reference(lm_backbone, t.prompt, c)
            assert float(R[i, j, 32]) == pytest.approx(lp, abs=1e-4)
            assert float(R[i, j, 33]) == pytest.approx(lp - reference(lm_backbone, e, c), abs=1e-4)
    assert float(R[3, 0, 32]) == float(R[3, 1, 32])  # identical sides: one computation, an exact tie
    assert len({round(float(x), 3) for x in R[..., 32].reshape(-1)}) > 4  # the values do tell responses apart
    apart = encode_trees(bb, trees, 10_000, layer=layer, lm=[LM_OBJECTIVES[1]], share=False)[1]
    assert torch.allclose(apart[..., 32], R[..., 33], atol=1e-5)  # shared prompts give what separate passes give


def test_parse_and_no_head(tiny_backbone, tmp_path):
    assert parse_lm_objectives("all") == list(LM_OBJECTIVES)
    assert parse_lm_objectives("lm-pmi") == ["lm-pmi"]
    for bad, msg in (("lm-foo", "unknown LM objective 'lm-foo'"), ("lm-pmi,lm-pmi", "named twice")):
        with pytest.raises(ArmoError, match=msg):
            parse_lm_objectives(bad)
    bb = load_backbone(str(tiny_backbone), device="cpu", dtype="fp32")  # a LlamaModel: no head, embeddings untied
    with pytest.raises(ArmoError, match="no LM head"):
        encode_trees(bb, trees_of(bb, ROWS[:1], tmp_path), 10_000, lm=["lm-mean-logprob"])


def build_lm_model(d: Path, backbone: Path) -> Path:
    """A whole model whose reward vector holds both LM objectives (the ratings' features carry none: only the pairs
    that fit the preference head, the LM columns' ranges, the decorrelation and the gate need them)."""
    b = ["-b", backbone, "--device", "cpu", "-q"]
    cli("extract", write_jsonl(d / "r.jsonl", rating_rows(80)), "-o", d / "r.st", *b)
    cli("extract", write_jsonl(d / "p.jsonl", pair_rows(60)), "-o", d / "p.st", "--lm-objectives", "all", *b)
    m = d / "model"
    cli("fit-regression", d / "r.st", "--length-objective", "verbosity", "--pairs", d / "p.st", "--preference-objective",
        "preference", "--preference-folds", "3", "--lm-objectives", "lm-pmi,lm-mean-logprob", "-o", d / "reg.st",
        "--model-dir", m, "-q")
    cli("fit-decorrelation", d / "p.st", "-r", d / "reg.st", "-o", d / "dec.st", "--model-dir", m, "-q")
    cli("fit-gating", d / "p.st", "-r", d / "reg.st", "-t", d / "dec.st", "-o", d / "gate.st", "--model-dir", m,
        "--hidden-dim", "8", "--steps", "30", "-q")
    return m


@pytest.fixture(scope="module")
def lm_model(lm_backbone, tmp_path_factory) -> Path:
    return build_lm_model(tmp_path_factory.mktemp("lm-model"), lm_backbone)


def test_lm_objectives_are_objectives_of_every_stage(lm_model, lm_backbone, tmp_path):
    d = lm_model.parent
    reg = Regression.load(d / "reg.st")
    assert reg.objectives == ["helpfulness", "safety", "verbosity", "preference", "lm-pmi", "lm-mean-logprob"]
    assert reg.lm_objectives == ["lm-pmi", "lm-mean-logprob"]
    feats = Features.load(d / "p.st")
    assert feats.meta.lm_objectives == list(LM_OBJECTIVES) and feats.tensors["lm_objectives"].shape == (60, 2, 2)
    r = reg.rewards(feats.inputs(reg.lm_objectives))  # mapped onto [0,1] by their range over the training responses
    for j in (4, 5):
        assert float(r[..., j].min()) == pytest.approx(0.0, abs=1e-6) and float(r[..., j].max()) == pytest.approx(1.0, abs=1e-6)
    # rows scored with armo's forward (read in the pass) equal the extracted features' scores
    by_rows = [json.loads(x) for x in armo("score", "-m", lm_model, d / "p.jsonl", "--backbone", lm_backbone,
                                            "--device", "cpu", "-q").stdout.splitlines()]
    by_feats = [json.loads(x) for x in armo("score", "-m", lm_model, "--features", d / "p.st").stdout.splitlines()]
    assert [x["margin"] for x in by_rows] == pytest.approx([x["margin"] for x in by_feats], abs=1e-5)
    side = by_rows[0]["chosen"]
    lm = feats.tensors["lm_objectives"][0, 0]  # score explains them: on [0,1] and in their own units (nats)
    assert side["rewards_original"]["lm-mean-logprob"] == pytest.approx(float(lm[0]), abs=1e-4)
    assert side["rewards_original"]["lm-pmi"] == pytest.approx(float(lm[1]), abs=1e-4)
    one = json.loads(armo("score", "-m", lm_model, "--features", d / "p.st", "--objective", "lm-pmi").stdout.splitlines()[0])
    assert one["gating"]["lm-pmi"] == 1.0 and sum(v != 0 for v in one["gating"].values()) == 1  # --objective takes them
    assert one["chosen"]["score"] == pytest.approx(sum(c * one["chosen"]["rewards"][o] for o, c in one["coefficients"].items()),
                                                   abs=1e-6)
    check_export_round_trip(lm_model, d / "p.st", d / "p.jsonl", tmp_path)


def test_stages_refuse_features_without_the_lm_objectives_they_need(lm_model, lm_backbone, tmp_path):
    d = lm_model.parent
    cli("extract", d / "p.jsonl", "-o", tmp_path / "plain.st", "-b", lm_backbone, "--device", "cpu", "-q")
    need = "needs the LM objectives lm-pmi, lm-mean-logprob, which these features do not carry"
    for args in (("score", "-m", lm_model, "--features", tmp_path / "plain.st"),
                 ("evaluate", "-m", lm_model, "--features", tmp_path / "plain.st"),
                 ("fit-decorrelation", tmp_path / "plain.st", "-r", d / "reg.st", "-o", tmp_path / "x.st"),
                 ("fit-gating", tmp_path / "plain.st", "-r", d / "reg.st", "-t", d / "dec.st", "-o", tmp_path / "x.st"),
                 ("fit-regression", d / "r.st", "--lm-objectives", "lm-pmi", "-o", tmp_path / "x.st")):
        run = armo(*args)
        assert run.code == 2 and len(run.stderr.splitlines()) == 1, run.stderr
        assert ("plain.st" if args[0] != "fit-regression" else "r.st") in run.stderr
        assert "which these features do not carry (extract them with --lm-objectives" in run.stderr
        assert not (tmp_path / "x.st").exists()
    assert need in armo("score", "-m", lm_model, "--features", tmp_path / "plain.st").stderr


def test_the_candidates_table_and_its_rule(lm_model, lm_backbone, tmp_path):
    """recipes/default_model_candidates.py on two models over the same features (today's reads no LM objective)."""
    import shutil
    import subprocess
    import sys

    sys.path.insert(0, str(ROOT / "recipes"))
    from default_model_candidates import choose

    d = lm_model.parent
    today = tmp_path / "today"
    cli("fit-regression", d / "r.st", "--length-objective", "verbosity", "--pairs", d / "p.st", "--preference-objective",
        "preference", "--preference-folds", "3", "-o", tmp_path / "reg.st", "--model-dir", today, "-q")
    cli("fit-decorrelation", d / "p.st", "-r", tmp_path / "reg.st", "-o", tmp_path / "dec.st", "--model-dir", today, "-q")
    cli("fit-gating", d / "p.st", "-r", tmp_path / "reg.st", "-t", tmp_path / "dec.st", "-o", tmp_path / "g.st",
        "--model-dir", today, "--hidden-dim", "8", "--steps", "30", "-q")
    work = tmp_path / "work"
    work.mkdir()
    for stem in ("pairs", "rmb-select", "heldout", "dev-eval", "rmb-eval"):
        shutil.copyfile(d / "p.st", work / f"{stem}.features.safetensors")
    shutil.copyfile(d / "p.jsonl", work / "rmb-select.jsonl")  # the rows the scoring cost is measured on
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "default_model_candidates.py"), "--work", str(work),
                          "--json", str(tmp_path / "c.json"), f"today={today}", f"lm={lm_model}"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads((tmp_path / "c.json").read_text())
    assert run.stdout.splitlines()[-1] == out["chosen"] and out["chosen"] in ("today", "lm")
    assert set(out["results"]) == {"RMB selection slice (chose the gate; not a result)", "held-out pairs", "dev-eval",
                                   "RMB (out of distribution)"}
    sel = out["results"]["RMB selection slice (chose the gate; not a result)"]
    assert set(sel) == {"today", "lm", "control: uniform weights", "control: linear Bradley-Terry head"}
    assert sel["today"]["vs_today"] == {"mean": 0.0, "ci95": [0.0, 0.0]} and sel["lm"]["n"] == 60
    # a model is measured only on features it can read: a candidate whose features come from another read-out
    # (a stage-0 adapter's heads pointed at the base backbone's extraction, say) is refused, not scored
    other = tmp_path / "other"
    other.mkdir()
    cli("extract", d / "p.jsonl", "-o", other / "p.st", "-b", lm_backbone, "--layer", "-2", "--device", "cpu", "-q")
    for stem in ("pairs", "rmb-select", "heldout", "dev-eval", "rmb-eval"):
        shutil.copyfile(other / "p.st", other / f"{stem}.features.safetensors")
    wrong = subprocess.run([sys.executable, str(ROOT / "recipes" / "default_model_candidates.py"), "--work", str(work),
                            f"today={today}", f"wrong={today}@{other}"], capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0 and "feature layer" in wrong.stderr and "extract the features again" in wrong.stderr
    # the model card's section, from the same JSON
    from default_model_candidates import card_section

    card = card_section(out)
    assert card[0] == "## Which candidate ships (#33)" and f"Decision: **{out['chosen']}**" in "\n".join(card)
    rows = [x for x in card if x.startswith("| today") or x.startswith("| lm")]
    assert len(rows) == 2 * 4 and all(x.count("|") == 10 for x in rows)
    assert f"- lm: {out['why']['lm']}" in card
    assert card[-2] == ("- not measured for this card (their features were not extracted: `recipes/train_stage0.sh`): "
                        "adapter, adapter-lm")
    with_adapter = {**out, "results": {k: {**v, "adapter": v["lm"]} for k, v in out["results"].items()}}
    assert card_section(with_adapter)[-2].startswith("- not measured for this card: adapter-lm (the adapter's features "
                                                     "were extracted without the LM objectives")
    cost = out["scoring_cost"]
    assert cost["pairs"] == 16 and cost["tokens"] > 0 and cost["today"] > 0 and cost["lm"] > 0
    assert sum(x.startswith("Cost to a user (`armo score`'s work on the same 16 RMB selection pairs") for x in card) == 1
    assert f"median of 2, load average {cost['load_average']:.1f} before it began; pairs per second): today " in "\n".join(card)
    # the gate's mean weights: each candidate's objectives, summing to 1; the LM objectives only where read
    assert set(sel["lm"]["gate_mean"]) >= {"lm-mean-logprob", "lm-pmi", "preference"}
    assert not any(o.startswith("lm-") for o in sel["today"]["gate_mean"])
    assert all(sum(v["gate_mean"].values()) == pytest.approx(1.0, abs=1e-5) for v in (sel["lm"], sel["today"]))
    assert sum(x.startswith("The gate's mean share of weight per objective") for x in card) == 4
    assert out["stage0"] == {}  # neither candidate reads an adapter
    from default_model_candidates import stage0_lines

    rec = {"pairs": 3382, "steps": 423, "eval_pairs": 256, "loss_before": 0.5992, "loss_after": 0.5751,
           "accuracy_before": 0.6602, "accuracy_after": 0.6836, "train_tokens": 940198, "train_seconds": 4216.6,
           "train_tokens_per_second": 223.0, "settings": {"rank": 8, "target_modules": "q_proj,v_proj", "layer": -18,
                                                          "init_head": {"objective": "preference"}, "epochs": 1,
                                                          "batch_pairs": 8, "lr": 1e-4}}
    assert stage0_lines({"adapter": rec, "adapter-lm": rec}) == [  # one adapter serving two candidates: told once
        "The stage-0 adapter (adapter, adapter-lm; `armo tune-backbone`, `recipes/train_stage0.sh`): rank 8 on q_proj,v_proj of the "
        "blocks below the feature layer (-18), its head starting from the fitted `preference` objective; 1 epoch of 3,382 training "
        "pairs (423 steps of 8, lr 0.0001), 940,198 tokens at 223 tokens/s on this CPU (1.2 h). On 256 of its own "
        "training pairs (in-sample): Bradley-Terry loss 0.599 -> 0.575, accuracy 0.660 -> 0.684.", ""]
    two = stage0_lines({"adapter": rec, "adapter-lm": {**rec, "steps": 1}})  # two adapters: each told, under its name
    assert [x.split(";")[0] for x in two if x] == ["The stage-0 adapter (adapter", "The stage-0 adapter (adapter-lm"]
    # the rule on numbers made to test it
    def res(sel_ci, eval_ci, acc=0.6):
        return {"vs_today": {"mean": 0, "ci95": sel_ci}, "accuracy": acc}, {"vs_today": {"mean": 0, "ci95": eval_ci}}

    a_sel, a_ev = res([0.01, 0.05], [-0.02, 0.03], 0.62)
    b_sel, b_ev = res([0.02, 0.08], [-0.04, -0.001], 0.65)  # better on the selection slice, worse on an evaluation set
    c_sel, c_ev = res([-0.01, 0.08], [0.0, 0.1], 0.66)  # not beyond noise on the selection slice
    results = {"sel": {"today": {"accuracy": 0.6}, "a": a_sel, "b": b_sel, "c": c_sel},
               "ev": {"a": a_ev, "b": b_ev, "c": c_ev}}
    chosen, why = choose(results, "today", "sel", ["ev"])
    assert chosen == "a" and why["a"] == "adopted" and "worse than today's model" in why["b"] and "does not lie above 0" in why["c"]
    d_sel, d_ev = res([-0.05, 0.01], [-0.03, -0.002])  # both: the card says both
    results["sel"]["d"], results["ev"]["d"] = d_sel, d_ev
    assert choose(results, "today", "sel", ["ev"])[1]["d"] == ("selection interval [-0.050, +0.010] does not lie above 0; "
                                                               "worse than today's model beyond noise on ev")
    # a candidate not measured on an evaluation set (its features unfinished) has not passed it
    results["sel"]["e"] = res([0.03, 0.09], [0.0, 0.1], 0.70)[0]
    chosen, why = choose(results, "today", "sel", ["ev", "ev2"])
    assert chosen == "today" and why["e"] == "not measured on ev, ev2 (no features of its own there yet)"
    assert why["a"] == "not measured on ev2 (no features of its own there yet)"
    results["ev2"] = {"a": a_ev, "e": a_ev}
    assert choose(results, "today", "sel", ["ev", "ev2"])[1]["e"] == "not measured on ev (no features of its own there yet)"
    results["sel"].pop("a")
    results["sel"].pop("e")
    assert choose(results, "today", "sel", ["ev"])[0] == "today"


def test_the_lm_share_study_and_its_claim_that_a_fixed_share_fits_the_armorm_format(lm_model, tmp_path):
    """studies/lm_share_study.py: b = 0 is the model's own gate; a fixed share b of an objective is the model with the
    transform T' = (1 - b) T + b T[:, j] 1^T (so it could ship without new code)."""
    import copy
    import shutil
    import subprocess
    import sys

    d = lm_model.parent
    work = tmp_path / "work"
    work.mkdir()
    for stem in ("pairs", "rmb-select", "heldout", "dev-eval", "rmb-eval"):
        shutil.copyfile(d / "p.st", work / f"{stem}.features.safetensors")
    run = subprocess.run([sys.executable, str(ROOT / "studies" / "lm_share_study.py"), "--work", str(work), "--model",
                          str(lm_model), "--today", str(lm_model), "--json", str(tmp_path / "s.json")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads((tmp_path / "s.json").read_text())
    arms = {(a["objective"], a["b"]): a for a in out["arms"]}
    assert set(o for o, _ in arms) == {"lm-pmi", "lm-mean-logprob"} and len(arms) == 16
    assert all(m["minus_today"] == {"mean": 0.0, "ci95": [0.0, 0.0]} for m in arms[("lm-pmi", 0.0)]["sets"].values())
    assert set(out["gate_share"]) == {"held-out", "dev-eval", "RMB evaluation", "RMB selection", "training pairs"}
    model = ArmoModel.load(lm_model)
    f = Features.load(d / "p.st")
    P, R = f.tensors["prompt_features"], f.inputs(model.regression.lm_objectives)
    j, b = model.objectives.index("lm-pmi"), 0.3
    with torch.no_grad():
        e = model.explain(P, R)
        g = e["gating"] / e["gating"].sum(-1, keepdim=True)
        w = (1 - b) * g
        w[:, j] += b
        want = (w[:, None, :] * (model.regression.rewards(R) @ model.decorrelation.transform)).sum(-1) * e["gating"].sum(-1)[:, None]
        shipped = copy.deepcopy(model)
        T = model.decorrelation.transform
        shipped.decorrelation.transform = (1 - b) * T + b * T[:, j:j + 1].expand_as(T)
        got = shipped.explain(P, R)["score"]
    assert torch.allclose(got, want, atol=1e-5)
    acc = float((got[:, 0] > got[:, 1]).float().mean())
    assert acc == pytest.approx(arms[("lm-pmi", 0.3)]["sets"]["held-out"]["accuracy"])
