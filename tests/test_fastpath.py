"""The fast path (armo_cli/fastpath.py) against transformers: the same hidden states at every layer, the
same tokens and the same rendered chat templates, so that score and evaluate may skip transformers."""
from __future__ import annotations

import pytest
import torch

from armo_cli import fastpath
from armo_cli.backbones import load_backbone
from armo_cli.forward import encode_trees
from armo_cli.rendering import Renderer
from armo_cli.rows import Source, iter_examples

from tests.helpers import needs_embedded, pair_rows, rating_rows, write_jsonl

CONVERSATIONS = [
    [{"role": "user", "content": "hello there"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why"},
     {"role": "assistant", "content": "because"}, {"role": "user", "content": "ok, and then?"}],
    [{"role": "user", "content": "  spaces\nand newlines\t"}, {"role": "assistant", "content": "ünïcödé ✓"}],
]


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def pair_of_backbones(request, tiny_backbone, tiny_llama3):
    folder = tiny_backbone if request.param == "chatml" else tiny_llama3
    slow = load_backbone(str(folder), device="cpu", dtype="fp32")
    fast = load_backbone(str(folder), device="cpu", dtype="fp32", fast=True)
    assert fast.extra.get("fast") and not slow.extra.get("fast")
    return slow, fast


def test_the_same_tokens_and_templates(pair_of_backbones):
    slow, fast = pair_of_backbones
    assert fast.tokenizer.chat_template == slow.tokenizer.chat_template
    assert fast.tokenizer.bos_token_id == slow.tokenizer.bos_token_id
    for conv in CONVERSATIONS:
        for gen in (False, True):
            a = slow.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            b = fast.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            assert a == b
            for special in (False, True):
                assert fast.tokenizer(a, add_special_tokens=special).input_ids == slow.tokenizer(a, add_special_tokens=special).input_ids
    rs, rf = Renderer(slow.tokenizer), Renderer(fast.tokenizer)
    assert (rs.gen_suffix, rs.template_hash, rs.adds_bos) == (rf.gen_suffix, rf.template_hash, rf.adds_bos)


def test_the_same_hidden_states_at_every_layer(pair_of_backbones):
    slow, fast = pair_of_backbones
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, slow.model.config.vocab_size, (2, 17), generator=g)
    with torch.no_grad():
        a = slow.model(input_ids=ids, output_hidden_states=True).hidden_states
        b = fast.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("layer", [-1, 1, 0])
def test_the_same_tree_masked_features(pair_of_backbones, tmp_path, layer):
    slow, fast = pair_of_backbones
    for rows in (pair_rows(7, seed=4), rating_rows(9, seed=2)):
        src = Source(str(write_jsonl(tmp_path / "x.jsonl", rows)))
        trees = [Renderer(slow.tokenizer).tokenize(ex, i) for i, ex in enumerate(iter_examples(src))]
        trees_f = [Renderer(fast.tokenizer).tokenize(ex, i) for i, ex in enumerate(iter_examples(src))]
        assert [t.prompt + sum(t.conts, []) for t in trees] == [t.prompt + sum(t.conts, []) for t in trees_f]
        ps, rs = encode_trees(slow, trees, 10_000, layer=layer)
        pf, rf = encode_trees(fast, trees_f, 10_000, layer=layer)
        assert torch.allclose(ps, pf, atol=1e-5) and torch.allclose(rs, rf, atol=1e-5)


def test_unsupported_folders_fall_back_to_transformers(tiny_backbone, tmp_path):
    import json
    import shutil

    folder = tmp_path / "scaled"
    shutil.copytree(tiny_backbone, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert fastpath.supported(tiny_backbone) and not fastpath.supported(folder)


@needs_embedded()
def test_the_embedded_backbone_gives_the_same_features(tmp_path):
    slow = load_backbone("smollm2-135m-instruct", device="cpu", dtype="fp32")
    fast = load_backbone("smollm2-135m-instruct", device="cpu", dtype="fp32", fast=True)
    assert fast.extra.get("fast") and fast.fingerprint == slow.fingerprint
    src = Source(str(write_jsonl(tmp_path / "p.jsonl", pair_rows(4, seed=1))))
    ts = [Renderer(slow.tokenizer).tokenize(ex, i) for i, ex in enumerate(iter_examples(src))]
    tf = [Renderer(fast.tokenizer).tokenize(ex, i) for i, ex in enumerate(iter_examples(src))]
    assert [t.prompt for t in ts] == [t.prompt for t in tf] and [t.conts for t in ts] == [t.conts for t in tf]
    ps, rs = encode_trees(slow, ts, 4096)
    pf, rf = encode_trees(fast, tf, 4096)
    assert torch.allclose(ps, pf, atol=1e-4) and torch.allclose(rs, rf, atol=1e-4)


def test_score_with_the_fast_path_never_imports_transformers(tiny_model, tiny_backbone, tmp_path):
    """In a fresh process (no module imported by another test): score rows, and transformers stays unloaded."""
    import json
    import subprocess
    import sys

    code = ("import sys, json\n"
            "from armo_cli.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers')), file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code, "score", "-m", str(tiny_model / "model"), str(tiny_model / "p.jsonl"),
                          "--backbone", str(tiny_backbone), "--device", "cpu", "-q", "-o", str(tmp_path / "s.jsonl")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stderr.strip().splitlines()[-1]) == []
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 60


def test_batches_may_hold_padding_only_where_the_forward_skips_it(pair_of_backbones):
    from armo_cli.devices import batch_defaults, skips_padding

    slow, fast = pair_of_backbones
    assert skips_padding(fast.model, fast.device) and not skips_padding(slow.model, slow.device)
    assert batch_defaults(fast.device, fast.model) == (2048, 0.5)
    assert batch_defaults(slow.device, slow.model) == (2048, 0.05)
    assert batch_defaults(torch.device("cuda"), fast.model) == (65536, 0.10)  # the GPU keeps the dense batch


def test_tokenize_many_equals_one_row_at_a_time(pair_of_backbones, monkeypatch):
    """One batched tokenizer call gives the trees of per-row tokenisation (both tokenizers, both templates,
    pairs and single responses); a row whose template fails gets its error in its place."""
    from armo_cli.errors import ArmoError
    from armo_cli.rows import parse_row


    for bb in pair_of_backbones:
        r = Renderer(bb.tokenizer)
        exs = [parse_row(row, f"x:{i}") for i, row in enumerate(pair_rows(9) + rating_rows(4))]
        many = r.tokenize_many(exs, list(range(len(exs))))
        one = [r.tokenize(ex, i) for i, ex in enumerate(exs)]
        assert [(t.index, t.prompt, t.conts, t.gate) for t in many] == [(t.index, t.prompt, t.conts, t.gate) for t in one]
        real = Renderer.texts

        def texts(self, ex):
            if ex is exs[4]:
                raise ArmoError("the chat template does not render the prompt as a prefix of the conversation")
            return real(self, ex)

        monkeypatch.setattr(Renderer, "texts", texts)
        mixed = r.tokenize_many(exs, list(range(len(exs))))
        assert isinstance(mixed[4], ArmoError) and all(not isinstance(t, ArmoError) for k, t in enumerate(mixed) if k != 4)
        assert [t.prompt for k, t in enumerate(mixed) if k != 4] == [t.prompt for k, t in enumerate(one) if k != 4]
        monkeypatch.undo()


def test_batches_use_the_rust_backend_only_where_it_agrees_with_the_wrapper(tiny_backbone, monkeypatch):
    from armo_cli.backbones import load_backbone

    tok = load_backbone(str(tiny_backbone), device="cpu", dtype="fp32").tokenizer
    assert Renderer(tok)._backend is not None
    real = tok.__class__.__call__

    def spaced(self, text, *a, **k):  # a wrapper that changes the text before its backend sees it
        return real(self, " " + text if isinstance(text, str) else [" " + t for t in text], *a, **k)

    monkeypatch.setattr(tok.__class__, "__call__", spaced)
    r = Renderer(tok)
    assert r._backend is None
    from armo_cli.rows import parse_row

    ex = parse_row({"prompt": "Hello THERE", "chosen": "ABC", "rejected": "Def"}, "x:1")
    assert r.tokenize_many([ex], [0])[0].prompt == r.encode(r.texts(ex)[0], bos=True)
