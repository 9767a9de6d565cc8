import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from armo_cli.backbones import load_backbone
from armo_cli.extract import ExtractConfig, extract, merge_features
from armo_cli.features import Features
from armo_cli.forward import encode_trees, forward_trees
from armo_cli.rendering import Renderer
from armo_cli.errors import ArmoError
from armo_cli.rows import Source, iter_examples, parse_row

from tests.helpers import armo, pair_rows, rating_rows, write_jsonl



@pytest.fixture(scope="module")
def bb(tiny_backbone):
    return load_backbone(str(tiny_backbone), device="cpu", dtype="fp32")


def trees_for(bb, rows, tmp_path):
    p = write_jsonl(tmp_path / "in.jsonl", rows)
    r = Renderer(bb.tokenizer)
    return [r.tokenize(ex, i) for i, ex in enumerate(iter_examples(Source(str(p))))]


def test_prompt_tokens_are_a_prefix_and_match_whole_tokenisation(bb, tiny_llama3, tmp_path):
    for backbone in (bb, load_backbone(str(tiny_llama3), device="cpu", dtype="fp32")):
        r = Renderer(backbone.tokenizer)
        for t in trees_for(backbone, pair_rows(6), tmp_path):
            for j, resp in enumerate(t.example.responses):
                text = backbone.tokenizer.apply_chat_template(t.example.prompt + [{"role": "assistant", "content": resp}],
                                                              tokenize=False)
                whole = backbone.tokenizer(text, add_special_tokens=False).input_ids
                assert t.prompt + t.conts[j] == whole
                bos = backbone.tokenizer.bos_token_id
                assert (t.prompt + t.conts[j]).count(bos) == (1 if r.adds_bos else 0)


def test_llama3_style_template_gets_exactly_one_bos(tiny_llama3, tmp_path):
    b = load_backbone(str(tiny_llama3), device="cpu", dtype="fp32")
    r = Renderer(b.tokenizer)
    assert r.adds_bos
    t = trees_for(b, pair_rows(1), tmp_path)[0]
    assert t.prompt[0] == b.tokenizer.bos_token_id and t.prompt[1] != b.tokenizer.bos_token_id
    # armo-eot: the end-of-turn token 5 tokens before the response (header, role, end-header, blank line)
    r2 = Renderer(b.tokenizer, "armo-eot")
    t2 = r2.tokenize(t.example)
    assert t2.gate == len(t2.prompt) - len(r2.gen_suffix) - 1
    assert t2.prompt[t2.gate] == b.tokenizer.convert_tokens_to_ids("<|eot_id|>")


def test_tree_features_equal_separate_full_passes(bb, tmp_path):
    rows = pair_rows(7)
    rows[4]["chosen"] = ""  # an empty response is read at its end-of-turn tokens, like any other
    trees = trees_for(bb, rows, tmp_path)
    prompt, resp = encode_trees(bb, trees, batch_tokens=10_000)  # several trees per padded batch
    for i, t in enumerate(trees):
        for j in range(2):
            ids = torch.tensor([t.prompt + t.conts[j]])
            h = bb.model(input_ids=ids).last_hidden_state[0]
            assert torch.allclose(resp[i, j], h[-1], atol=1e-4)
        # the prompt feature equals the last hidden state of a prompt-only pass
        hp = bb.model(input_ids=torch.tensor([t.prompt])).last_hidden_state[0]
        assert torch.allclose(prompt[i], hp[-1], atol=1e-4)


@pytest.mark.parametrize("layer", [-1, 2])
def test_mean_pooling_is_the_mean_of_each_responses_hidden_states(bb, tmp_path, layer):
    """--pooling mean: f(x,y) is the mean of the response's hidden states (its tokens after the prompt) in a
    separate full pass, at any layer; the prompt feature is still read at the gate."""
    rows = pair_rows(7)
    rows[3]["rejected"] = rows[3]["chosen"]
    rows[5]["rejected"] = ""  # the mean of its end-of-turn tokens
    trees = trees_for(bb, rows, tmp_path)
    prompt, resp = encode_trees(bb, trees, batch_tokens=10_000, layer=layer, pooling="mean")
    for i, t in enumerate(trees):
        for j in range(2):
            ids = torch.tensor([t.prompt + t.conts[j]])
            h = bb.model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
            assert torch.allclose(resp[i, j], h[len(t.prompt):].mean(0), atol=1e-5)
        hp = bb.model(input_ids=torch.tensor([t.prompt]), output_hidden_states=True).hidden_states[layer][0]
        assert torch.allclose(prompt[i], hp[t.gate], atol=1e-5)
    assert torch.equal(resp[3, 0], resp[3, 1])


# renders the generation prompt after every user turn, and an assistant turn only when it has content
SKIPS_EMPTY = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|im_start|>user\\n' + m['content'] + '<|im_end|>\\n"
               "<|im_start|>assistant\\n' }}{% elif m['content'] %}{{ m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}")


def test_an_empty_response_is_scored_and_a_template_that_renders_it_as_nothing_is_refused(tiny_backbone, tmp_path):
    """Policies emit empty responses, and datasets hold them (a UltraFeedback 'chosen', a dev-eval 'rejected'):
    they are responses, scored through the template's end-of-turn tokens, not bad rows."""
    from tests.helpers import make_tokenizer

    inp = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi", "response": ""}, {"messages": [
        {"role": "user", "content": "hello"}, {"role": "assistant", "content": " "}]}, {"prompt": "hey", "response": [{"role": "assistant", "content": ""}]}])
    res = armo("extract", str(inp), "-o", str(tmp_path / "o.st"), "-b", str(tiny_backbone), "-q", "--device", "cpu")
    assert res.code == 0, res.output
    assert Features.load(tmp_path / "o.st").meta.report["skipped"] == []
    r = Renderer(make_tokenizer(SKIPS_EMPTY, adds_bos=False))
    assert r.texts(parse_row({"prompt": "hi", "response": "x"}, "f:1"))[1] == ["x<|im_end|>\n"]
    with pytest.raises(ArmoError, match="^the backbone's chat template renders this empty response as no tokens: nothing to score$"):
        r.texts(parse_row({"prompt": "hi", "response": ""}, "f:1"))


def test_a_pair_of_identical_responses_runs_once_and_ties_exactly(bb, tmp_path):
    """Same tokens, same feature: bit for bit, not two positions' float noise (which decided such 'ties' by
    a margin of ~5e-7 before), and the repeated response is not computed twice."""
    rows = pair_rows(5)
    rows[2]["rejected"] = rows[2]["chosen"]
    trees = trees_for(bb, rows, tmp_path)
    t = trees[2]
    assert t.length == len(t.prompt) + len(t.conts[0])
    prompt, resp = encode_trees(bb, trees, batch_tokens=10_000)
    assert torch.equal(resp[2, 0], resp[2, 1])
    h = bb.model(input_ids=torch.tensor([t.prompt + t.conts[0]])).last_hidden_state[0]
    assert torch.allclose(resp[2, 0], h[-1], atol=1e-4)
    assert not torch.equal(resp[1, 0], resp[1, 1])


def test_batched_padded_equals_one_at_a_time(bb, tmp_path):
    trees = trees_for(bb, pair_rows(9, seed=3), tmp_path)
    p_b, r_b = encode_trees(bb, trees, batch_tokens=100_000)
    singles = [forward_trees(bb.model, [t], bb.device, bb.dtype) for t in trees]
    p_1 = torch.cat([s[0] for s in singles])
    r_1 = torch.cat([s[1] for s in singles])
    assert torch.allclose(p_b, p_1, atol=1e-4) and torch.allclose(r_b, r_1, atol=1e-4)


def _extract(bb, inp, out, **kw):
    return extract(ExtractConfig(input=str(inp), output=str(out), backbone="x", quiet=True, **kw), backbone=bb)


def test_extract_ratings_output_layout(bb, tmp_path):
    inp = write_jsonl(tmp_path / "r.jsonl", rating_rows(10))
    out = tmp_path / "f.safetensors"
    _extract(bb, inp, out)
    f = Features.load(out)
    assert f.tensors["response_features"].shape == (10, 32)
    assert f.tensors["prompt_features"].shape == (10, 32)
    assert f.meta.objectives == ["helpfulness", "safety"]
    lab = f.tensors["labels"]
    assert lab.shape == (10, 2) and torch.isnan(lab[1, 0]) and not torch.isnan(lab[0, 0])
    assert f.ids == [f"r{i}" for i in range(10)]
    assert f.meta.backbone["fingerprint"] == bb.fingerprint and f.meta.input_hash


def test_resume_after_interruption_is_identical_and_recomputes_nothing(bb, tmp_path):
    inp = write_jsonl(tmp_path / "p.jsonl", pair_rows(20))
    full = tmp_path / "full.safetensors"
    _extract(bb, inp, full, chunk_size=4)
    out = tmp_path / "out.safetensors"

    def boom(c):
        if c == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(ExtractConfig(input=str(inp), output=str(out), chunk_size=4, quiet=True), backbone=bb, after_chunk=boom)
    assert not out.exists()
    rep = _extract(bb, inp, out, chunk_size=4, resume=True)
    assert rep.chunks_reused == 3 and rep.chunks_computed == 2
    a, b = Features.load(full), Features.load(out)
    assert a.ids == b.ids
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k
    assert not Path(str(out) + ".parts").exists()
    # a finished job rerun with --resume recomputes nothing and leaves the file as it was
    before = out.read_bytes()
    again = _extract(bb, inp, out, chunk_size=4, resume=True)
    assert again.chunks_computed == 0 and again.tokens_computed == 0 and out.read_bytes() == before


def test_shards_merge_to_the_single_run(bb, tmp_path):
    inp = write_jsonl(tmp_path / "p.jsonl", pair_rows(13))
    single = tmp_path / "single.safetensors"
    _extract(bb, inp, single, chunk_size=3)
    shards = []
    for i in range(2):
        s = tmp_path / f"s{i}.safetensors"
        _extract(bb, inp, s, chunk_size=3, num_shards=2, shard_index=i)
        shards.append(s)
    ids0, ids1 = Features.load(shards[0]).ids, Features.load(shards[1]).ids
    assert not set(ids0) & set(ids1)
    merged = tmp_path / "merged.safetensors"
    merge_features(shards, merged)
    a, b = Features.load(single), Features.load(merged)
    assert a.ids == b.ids
    assert torch.allclose(a.tensors["response_features"], b.tensors["response_features"], atol=1e-5)
    with pytest.raises(ArmoError, match="shard 0 of 2 is given twice"):
        merge_features([shards[0], shards[0]], tmp_path / "dup.safetensors")


def test_an_empty_shard_is_valid_and_merges(bb, tmp_path, armo_cache, monkeypatch):
    """3 rows in one chunk over 2 shards: shard 1 gets no rows. It is armo's own output and merges (through
    main(), as a user runs it)."""

    monkeypatch.setenv("ARMO_CACHE", str(armo_cache))
    inp = write_jsonl(tmp_path / "r.jsonl", rating_rows(3))
    single = tmp_path / "single.st"
    _extract(bb, inp, single)
    for i in range(2):
        _extract(bb, inp, tmp_path / f"s{i}.st", num_shards=2, shard_index=i)
    with pytest.raises(ArmoError, match="holds no rows .* `armo merge` it with the others"):
        Features.load(tmp_path / "s1.st")
    r = armo("merge", tmp_path / "s0.st", tmp_path / "s1.st", "-o", tmp_path / "merged.st")
    assert r.code == 0, r.stderr
    a, b = Features.load(single), Features.load(tmp_path / "merged.st")
    assert a.ids == b.ids and torch.equal(a.tensors["response_features"], b.tensors["response_features"])


def test_copies_of_a_row_without_an_id_get_ids_of_their_own_across_shards_too(bb, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "id"} for r in pair_rows(5)]
    inp = write_jsonl(tmp_path / "p.jsonl", rows + [rows[1], rows[3], rows[1]])
    single = tmp_path / "single.st"
    _extract(bb, inp, single, chunk_size=3)
    f = Features.load(single)
    assert f.ids[5:] == [f.ids[1] + "-2", f.ids[3] + "-2", f.ids[1] + "-3"] and len(set(f.ids)) == 8
    x = f.tensors["response_features"]
    assert torch.allclose(x[1], x[5], atol=1e-5) and torch.allclose(x[1], x[7], atol=1e-5)
    shards = [tmp_path / f"s{i}.st" for i in range(2)]
    for i, s in enumerate(shards):
        _extract(bb, inp, s, chunk_size=3, num_shards=2, shard_index=i)
    merge_features(shards, tmp_path / "merged.st")
    assert Features.load(tmp_path / "merged.st").ids == f.ids


def test_overflow_modes(bb, tmp_path):
    rows = pair_rows(6)
    rows[2]["prompt"] = " ".join(["hello world"] * 60)
    inp = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "o.safetensors"
    with pytest.raises(ArmoError, match=r"p\.jsonl:3: row 'p2' has \d+ tokens"):
        _extract(bb, inp, out, max_length=120)
    assert not out.exists()
    _extract(bb, inp, out, max_length=120, overflow="skip")
    f = Features.load(out)
    assert "p2" not in f.ids and [s["id"] for s in f.meta.report["skipped"]] == ["p2"]
    _extract(bb, inp, out, max_length=120, overflow="truncate-prompt")
    f = Features.load(out)
    assert "p2" in f.ids and f.meta.report["truncated"] == ["p2"]
    i = f.ids.index("p2")
    assert int(f.tensors["prompt_lengths"][i] + f.tensors["response_lengths"][i].max()) <= 120


@pytest.mark.parametrize("line,needle", [
    ('{"prompt": "hi", "chosen": "a", "rejected": "b"', "malformed JSON"),
    ('{"prompt": "hi", "chosen": "a"}', "field 'rejected': missing"),
    ('{"prompt": "  ", "response": "ok"}', "field 'prompt': empty"),
    ('{"prompt": "hi", "response": "ok", "ratings": {"helpfulness": "high"}}', "field 'ratings.helpfulness': not a number"),
    ('{"prompt": 5, "response": "ok"}', "field 'prompt'"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "field 'messages'"),
])
def test_bad_input_is_one_line_exit_2_no_output(tiny_backbone, tmp_path, line, needle):
    good = json.dumps({"prompt": "hello", "response": "world"})
    inp = tmp_path / "bad.jsonl"
    inp.write_text(good + "\n" + line + "\n")
    out = tmp_path / "o.safetensors"
    res = armo("extract", str(inp), "-o", str(out), "-b", str(tiny_backbone), "-q", "--device", "cpu")
    assert res.code == 2
    msg = res.output.strip().splitlines()
    assert any("bad.jsonl:2:" in m and needle in m for m in msg), res.output
    assert not out.exists()
    assert not list(tmp_path.glob("o.safetensors*"))


def test_on_error_skip_lists_rows(bb, tmp_path):
    inp = tmp_path / "mixed.jsonl"
    inp.write_text('{"id": "a", "prompt": "hi", "response": "ok"}\n{"id": "b", "prompt": "", "response": "x"}\n'
                   '{"id": "c", "prompt": "yo", "response": "fine"}\n')
    out = tmp_path / "o.safetensors"
    _extract(bb, inp, out, on_error="skip")
    f = Features.load(out)
    assert f.ids == ["a", "c"]
    assert f.meta.report["skipped"] == [{"line": 2, "id": "b", "reason": "field 'prompt': empty"}]


def test_skip_warnings_are_one_line_each_and_name_the_line_once(tiny_backbone, tmp_path):
    """However long the row's id, each skipped row is one warning line (not wrapped at 80 columns), and the
    reason does not repeat the file and line the warning already names."""

    long_id = "row-" + "x" * 120
    inp = tmp_path / "mixed.jsonl"
    inp.write_text(f'{{"id": "a", "prompt": "hi", "response": "ok"}}\n{{"id": "{long_id}", "prompt": "", "response": "x"}}\n')
    r = armo("extract", inp, "-o", tmp_path / "o.st", "-b", tiny_backbone, "--device", "cpu", "--on-error", "skip", "-q")
    assert r.code == 0, r.stderr
    assert r.stderr.splitlines() == [f"warning: skipped line 2 ({long_id}): field 'prompt': empty"]
    # the closing summary, too, is one line however long the output's path
    out = tmp_path / ("features-" + "y" * 100 + ".st")
    r = armo("extract", inp, "-o", out, "-b", tiny_backbone, "--device", "cpu", "--on-error", "skip")
    assert r.code == 0, r.stderr
    assert f"wrote {out}: 1 rows, 1 skipped, 0 truncated, 1 chunks computed, 0 reused" in r.stderr.splitlines(), r.stderr


def test_row_shapes_normalise_to_the_same_example():
    plain = parse_row({"prompt": "q", "chosen": "a", "rejected": "b"}, "f:1")
    trl = parse_row({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
                     "rejected": [{"role": "assistant", "content": "b"}]}, "f:1")
    implicit = parse_row({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                          "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}, "f:1")
    assert plain.prompt == trl.prompt == implicit.prompt and plain.responses == trl.responses == implicit.responses
    assert plain.id == trl.id  # stable content-hash ids
    msgs = parse_row({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "f:1")
    single = parse_row({"prompt": "q", "response": "a"}, "f:1")
    assert msgs.prompt == single.prompt and msgs.responses == single.responses == ["a"]


def test_stdin_and_dataset_inputs_match_file(tiny_backbone, tmp_path, bb):
    rows = rating_rows(5)
    inp = write_jsonl(tmp_path / "r.jsonl", rows)
    a = tmp_path / "a.safetensors"
    _extract(bb, inp, a)
    b = tmp_path / "b.safetensors"
    res = armo("extract", "-", "-o", str(b), "-b", str(tiny_backbone), "-q", "--device", "cpu", input=inp.read_text())
    assert res.code == 0, res.output
    c = tmp_path / "c.safetensors"
    extract(ExtractConfig(dataset=str(inp), split="train", output=str(c), quiet=True), backbone=bb)
    fa, fb, fc = Features.load(a), Features.load(b), Features.load(c)
    assert fa.ids == fb.ids == fc.ids
    assert torch.equal(fa.tensors["response_features"], fb.tensors["response_features"])
    assert torch.equal(fa.tensors["response_features"], fc.tensors["response_features"])


def test_hub_id_code_path_with_a_local_hub_cache(tiny_backbone, tmp_path, monkeypatch):
    # the hub branch (snapshot_download), served offline from a cache laid out as the hub client writes it
    cache = tmp_path / "hub"
    snap = cache / "models--armo-test--tiny" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in tiny_backbone.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (cache / "models--armo-test--tiny" / "refs").mkdir()
    (cache / "models--armo-test--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    b = load_backbone("armo-test/tiny", device="cpu", dtype="fp32")
    assert b.spec.kind == "hub" and b.hidden_size == 32
    with pytest.raises(ArmoError, match="not a file, folder or reachable hub id"):
        load_backbone("armo-test/absent", device="cpu")


def test_help_lists_every_subcommand():
    res = armo("--help")
    for cmd in ["extract", "merge", "fit-regression", "fit-decorrelation", "fit-gating", "assemble", "score", "evaluate",
                "export", "import", "sample"]:
        assert cmd in res.output, cmd
    for cmd in ["extract", "fit-regression", "score", "evaluate"]:
        r = armo(cmd, "--help")
        assert r.code == 0 and "Example" in r.output


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_shard_and_merge(tiny_backbone, tmp_path, bb):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    inp = write_jsonl(tmp_path / "p.jsonl", pair_rows(11))
    single = tmp_path / "single.safetensors"
    _extract(bb, inp, single, chunk_size=3)
    out = tmp_path / "dist.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "armo_cli.cli", "extract", str(inp), "-o", str(out),
                        "-b", str(tiny_backbone), "--device", "cpu", "--chunk-size", "3", "-q"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = Features.load(single), Features.load(out)
    assert a.ids == b.ids
    assert torch.allclose(a.tensors["response_features"], b.tensors["response_features"], atol=1e-5)
    assert not list(tmp_path.glob("dist.safetensors.shard-*"))


def test_a_batch_out_of_memory_is_split_and_retried(bb, tmp_path, monkeypatch):
    """A batch that raises out-of-memory is halved and retried; the features equal an unconstrained run;
    a single row that cannot fit fails with armo's error naming it."""
    import armo_cli.forward as fwd

    trees = trees_for(bb, pair_rows(9, seed=6), tmp_path)
    want_p, want_r = encode_trees(bb, trees, batch_tokens=100_000)
    real = fwd.forward_trees
    sizes = []

    def small_memory(model, batch, *a, **k):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, batch, *a, **k)

    monkeypatch.setattr(fwd, "forward_trees", small_memory)
    p, r = encode_trees(bb, trees, batch_tokens=100_000)
    assert sizes[:2] == [9, 4] and 5 in sizes and sum(s for s in sizes if s <= 2) == 9  # halves until they fit
    assert torch.allclose(p, want_p, atol=1e-5) and torch.allclose(r, want_r, atol=1e-5)

    def no_memory(model, batch, *a, **k):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 160 GB (out of memory)")

    monkeypatch.setattr(fwd, "forward_trees", no_memory)
    with pytest.raises(ArmoError, match=r"line \d+: row 'p\d+' \(\d+ tokens\) does not fit in memory on cpu even alone"):
        encode_trees(bb, trees[:3], batch_tokens=100_000)
    monkeypatch.setattr(fwd, "forward_trees", lambda *a, **k: (_ for _ in ()).throw(ValueError("not memory")))
    with pytest.raises(ValueError):  # other errors are not retried
        encode_trees(bb, trees[:3], batch_tokens=100_000)


def test_chunks_are_rendered_on_a_helper_thread_before_their_forward(bb, tmp_path, monkeypatch):
    """The first chunk reuses the validation pass's trees (no second rendering); later chunks are rendered
    on a helper thread (which starts on chunk c+1 when chunk c is handed over), each before its forward.
    The features and their order are those of one chunk, and an input that changes under the reader still
    fails with one line and leaves no output."""
    import threading

    import armo_cli.extract as ex_mod

    inp = write_jsonl(tmp_path / "p.jsonl", pair_rows(12))
    single = tmp_path / "single.safetensors"
    _extract(bb, inp, single, chunk_size=64)
    events = []
    real_tokenize, real_tensors = Renderer.tokenize_many, ex_mod._chunk_tensors

    def tokenize(self, exs, indices):
        events.extend(("render", i, threading.current_thread().name) for i in indices)
        return real_tokenize(self, exs, indices)

    def chunk_tensors(trees, *a, **k):
        events.append(("forward", trees[0].index, threading.current_thread().name))
        return real_tensors(trees, *a, **k)

    monkeypatch.setattr(Renderer, "tokenize_many", tokenize)
    monkeypatch.setattr(ex_mod, "_chunk_tensors", chunk_tensors)
    out = tmp_path / "chunked.safetensors"
    rep = _extract(bb, inp, out, chunk_size=4)
    a, b = Features.load(single), Features.load(out)
    assert a.ids == b.ids and rep.chunks_computed == 3
    for k in a.tensors:  # other chunks, other batches: equal up to float rounding
        assert torch.allclose(a.tensors[k].float(), b.tensors[k].float(), atol=1e-5), k
    assert [e for e in events if e[0] == "render" and e[2] == "MainThread"] == [("render", i, "MainThread") for i in range(12)]
    compute = [e for e in events if e[0] == "forward" or e[2].startswith("armo-render")]
    assert [e for e in compute if e[0] == "forward"] == [("forward", s, "MainThread") for s in (0, 4, 8)]
    assert not [e for e in compute if e[0] == "render" and e[1] < 4]  # chunk 0: the validation pass's trees
    for s in (4, 8):
        fwd = compute.index(("forward", s, "MainThread"))
        mine = [i for i, e in enumerate(compute) if e[0] == "render" and s <= e[1] < s + 4]
        assert len(mine) == 4 and max(mine) < fwd

    calls = {"n": 0}

    def tokenize_then_fail(self, exs, indices):
        calls["n"] += 1
        if calls["n"] > 2:  # the validation pass (one group), chunk 1; then chunk 2 fails
            raise ArmoError(f"{inp.name}:{indices[0] + 1}: the input changed while it was being read; run again")
        return real_tokenize(self, exs, indices)

    monkeypatch.setattr(Renderer, "tokenize_many", tokenize_then_fail)
    failed = tmp_path / "failed.safetensors"
    with pytest.raises(ArmoError, match="input changed"):
        _extract(bb, inp, failed, chunk_size=4)
    assert not failed.exists()


def test_device_defaults_and_cuda_attention_kernels():
    """CUDA's batch, padding and chunk defaults are the ones measured at 8B shape (gpu_mfu_sweep), and its
    tree-masked forward allows only the memory-efficient and math sdpa kernels (cuDNN builds a plan per
    batch shape; flash takes no mask). Elsewhere nothing is forced."""
    from armo_cli.devices import attention_kernels, batch_defaults, default_chunk_size

    cuda, cpu, mps = torch.device("cuda"), torch.device("cpu"), torch.device("mps")
    assert batch_defaults(cuda) == (65536, 0.10) and batch_defaults(mps) == (32768, 0.25)
    assert batch_defaults(cpu) == (2048, 0.05)
    assert default_chunk_size(cpu) == 256 and default_chunk_size(cuda) == 4096
    be = torch.backends.cuda
    before = (be.flash_sdp_enabled(), be.mem_efficient_sdp_enabled(), be.cudnn_sdp_enabled(), be.math_sdp_enabled())
    with attention_kernels(cpu):
        assert (be.flash_sdp_enabled(), be.mem_efficient_sdp_enabled(), be.cudnn_sdp_enabled(), be.math_sdp_enabled()) == before
    with attention_kernels(cuda):
        assert not be.flash_sdp_enabled() and not be.cudnn_sdp_enabled()
        assert be.mem_efficient_sdp_enabled() and be.math_sdp_enabled()
    assert (be.flash_sdp_enabled(), be.mem_efficient_sdp_enabled(), be.cudnn_sdp_enabled(), be.math_sdp_enabled()) == before


def test_chunk_size_default_is_recorded(bb, tmp_path):
    inp = write_jsonl(tmp_path / "p.jsonl", pair_rows(5))
    out = tmp_path / "o.safetensors"
    _extract(bb, inp, out)
    assert Features.load(out).meta.job["chunk_size"] == 256


@pytest.mark.parametrize("bad_render,bad_json,first", [(3, 5, 3), (4, 2, 2)])
def test_the_first_bad_row_in_the_file_is_reported_across_a_tokenised_group(bb, tmp_path, monkeypatch,
                                                                              bad_render, bad_json, first):
    """The validation pass tokenises rows in groups; a row whose template fails and a malformed line in the
    same group are still reported in file order (the first one), one line, no output."""
    rows = [json.dumps(r) for r in pair_rows(6)]
    rows[bad_json - 1] = '{"prompt": "hi", "chosen": "a", "rejected": "b"'
    inp = tmp_path / "p.jsonl"
    inp.write_text("\n".join(rows) + "\n")
    real = Renderer.texts

    def texts(self, ex):
        if ex.line == bad_render:
            raise ArmoError("the chat template does not render the prompt as a prefix of the conversation")
        return real(self, ex)

    monkeypatch.setattr(Renderer, "texts", texts)
    out = tmp_path / "o.safetensors"
    with pytest.raises(ArmoError) as e:
        _extract(bb, inp, out)
    expected = {3: "the chat template does not render the prompt", 2: "malformed JSON"}[first]
    assert str(e.value).startswith(f"{inp}:{first}: {expected}"), str(e.value)
    assert "\n" not in str(e.value) and not out.exists()


def test_tokenized_groups_keep_order_and_indices(bb):
    from armo_cli.extract import tokenized
    from armo_cli.rows import parse_row

    r = Renderer(bb.tokenizer)
    exs = [parse_row(row, f"x:{i}") for i, row in enumerate(pair_rows(7))]
    for group in (1, 3, 7, 100):
        got = list(tokenized(iter(exs), r, group))
        assert [(i, ex.id, t.prompt) for i, ex, t in got] == [(i, ex.id, r.tokenize(ex, i).prompt) for i, ex in enumerate(exs)]


def test_extract_reads_the_weights_only_when_a_chunk_is_computed(tiny_backbone, tmp_path, monkeypatch):
    """A bad row is reported, and a finished job found up to date, without the backbone's weights being
    read (an 8B model takes tens of seconds); a job that computes reads them once, and its features equal
    those of a backbone loaded whole."""
    import transformers

    from armo_cli.errors import ArmoError

    real = transformers.AutoModel.from_pretrained.__func__
    loads = []

    def counting(cls, *a, **k):
        loads.append(a[0])
        return real(cls, *a, **k)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", classmethod(counting))
    rows = pair_rows(6)
    bad = write_jsonl(tmp_path / "bad.jsonl", [*rows[:4], {"id": "x", "prompt": "hi"}, *rows[4:]])
    cfg = dict(backbone=str(tiny_backbone), device="cpu", dtype="fp32", quiet=True)
    with pytest.raises(ArmoError, match=r"bad\.jsonl:5: no response"):
        extract(ExtractConfig(input=str(bad), output=str(tmp_path / "bad.st"), **cfg))
    assert loads == [] and not list(tmp_path.glob("bad.st*"))

    good = write_jsonl(tmp_path / "good.jsonl", rows)
    out = tmp_path / "good.st"
    extract(ExtractConfig(input=str(good), output=str(out), **cfg))
    assert len(loads) == 1
    extract(ExtractConfig(input=str(good), output=str(out), resume=True, **cfg))  # up to date
    assert len(loads) == 1

    whole = tmp_path / "whole.st"
    _extract(load_backbone(str(tiny_backbone), device="cpu", dtype="fp32"), good, whole)
    a, b = Features.load(out), Features.load(whole)
    for k in ("prompt_features", "response_features"):
        assert torch.equal(a.tensors[k], b.tensors[k]), k


def test_unreadable_weights_are_one_line_after_validation_and_leave_nothing(tiny_backbone, tmp_path):
    import shutil


    broken = tmp_path / "broken"
    shutil.copytree(tiny_backbone, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    work = tmp_path / "work"
    work.mkdir()
    inp = write_jsonl(work / "in.jsonl", pair_rows(3))
    r = armo("extract", inp, "-o", work / "o.st", "-b", broken, "--device", "cpu", "-q")
    assert r.code == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"error: --backbone {broken}: could not load the model ("), r.stderr
    assert sorted(p.name for p in work.iterdir()) == ["in.jsonl"]


# --- rows that share a prompt run as one tree ----------------------------------------------------------------

def _shared_prompt_rows(pair: bool) -> list[dict]:
    """Three prompts with several rows each (a policy's samples, several pairs on one prompt), a row whose
    response another row of its prompt also has, a pair with identical sides, and rows with prompts of their own."""
    rows = []
    for p, prompt in enumerate(["say hi", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why"}],
                                "write code"]):
        for j in range(4):
            resp = f"answer {j} " + "word " * (3 * j + p)
            row = ({"prompt": prompt, "chosen": resp, "rejected": f"other {j} to {p}"} if pair
                   else {"prompt": prompt, "response": resp})
            rows.append({"id": f"r{p}-{j}", **row})
    rows.append({**rows[1], "id": "same-response-again"})
    rows[2] = {**rows[2], "chosen": "tie", "rejected": "tie"} if pair else rows[2]
    rows += [{"id": f"own{i}", **r} for i, r in enumerate(({"prompt": "alone", "chosen": "a", "rejected": "b"},) if pair
                                                            else ({"prompt": "alone", "response": "a"},))]
    return rows


@pytest.fixture
def always_share(monkeypatch):
    """A cost with no attention term: every row joins its prompt's tree (the tiny backbone's real cost, whose
    attention is dear next to its 32-wide projections, would join few)."""
    import armo_cli.forward as fwd

    monkeypatch.setattr(fwd, "pass_cost", lambda config: (lambda L: float(L)))


@pytest.mark.parametrize("pair", [False, True])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_rows_sharing_a_prompt_get_the_features_they_get_apart(bb, tmp_path, pair, pooling, always_share):
    import armo_cli.forward as fwd

    trees = trees_for(bb, _shared_prompt_rows(pair), tmp_path)
    units = fwd.share_prompts(trees, fwd.pass_cost(bb.model.config), 10_000)
    assert [len(u.trees) for u in units] == [5, 4, 4, 1]  # one tree per prompt; the repeated response runs once
    assert units[0].tree.length < sum(t.length for t in units[0].trees)
    assert units[0].picks[-1] == units[0].picks[1]
    shared = encode_trees(bb, trees, batch_tokens=10_000, pooling=pooling)
    apart = encode_trees(bb, trees, batch_tokens=10_000, pooling=pooling, share=False)
    for s, a in zip(shared, apart):
        assert torch.allclose(s, a, atol=1e-5), float((s - a).abs().max())
    if pair:  # identical sides stay one computation: an exact tie
        assert torch.equal(shared[1][2, 0], shared[1][2, 1])


def test_a_row_joins_its_prompts_tree_only_when_that_is_cheaper_and_fits(bb, tmp_path):
    from types import SimpleNamespace

    from armo_cli.forward import pass_cost, share_prompts

    trees = trees_for(bb, _shared_prompt_rows(False), tmp_path)
    n = len(trees)
    assert len(share_prompts(trees, None, 10_000)) == n  # no cost model: every row apart
    assert pass_cost(SimpleNamespace(hidden_size=8)) is None  # a config without its shape: no cost model
    cost = pass_cost(bb.model.config)  # FLOPs: the tiny backbone's attention is dear, so some rows join, some not
    units = share_prompts(trees, cost, 10_000)
    assert 4 < len(units) < n
    for u in units:  # each join was cheaper than the row's own pass, so each tree is cheaper than its rows apart
        assert len(u.trees) == 1 or cost(u.tree.length) < sum(cost(t.length) for t in u.trees)
    quadratic = lambda L: float(L * L) ** 2  # attention so dear that no row joins  # noqa: E731
    assert len(share_prompts(trees, quadratic, 10_000)) == n
    longest = max(t.length for t in trees)
    units = share_prompts(trees, lambda L: float(L), longest)  # linear cost: join while the budget allows
    assert all(u.tree.length <= longest or len(u.trees) == 1 for u in units) and len(units) < n


def test_a_shared_tree_out_of_memory_is_split_into_its_rows(bb, tmp_path, monkeypatch, always_share):
    import armo_cli.forward as fwd

    trees = trees_for(bb, _shared_prompt_rows(False), tmp_path)
    want = encode_trees(bb, trees, batch_tokens=10_000)
    real = fwd.forward_trees
    widths = []

    def small_memory(model, batch, *a, **k):
        widths.append(max(len(t.conts) for t in batch))
        if len(batch) > 1 or len(batch[0].conts) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(model, batch, *a, **k)

    monkeypatch.setattr(fwd, "forward_trees", small_memory)
    got = encode_trees(bb, trees, batch_tokens=10_000)
    assert 4 in widths and max(widths[-3:]) <= 2  # the 4-response tree was split into halves that fit
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5)


@pytest.fixture
def eager_flex(monkeypatch):
    """transformers compiles FlexAttention on first use: a minute of C++ builds on a CPU. The eager kernel gives
    the same values, so the tests check armo's layout and block mask without the compile (the GPU run compiles)."""
    import transformers.integrations.flex_attention as tf_flex
    from torch.nn.attention.flex_attention import flex_attention

    def eager(q, k, v, training=False, **kw):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(q, k, v, **kw)

    monkeypatch.setattr(tf_flex, "compile_friendly_flex_attention", eager)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_flex_packed_rows_give_the_features_of_one_tree_per_row(bb, tmp_path, pooling, eager_flex, always_share):
    """A batch's trees packed into one row under a FlexAttention block mask see only their own tree: the same
    features as one tree per row, for pairs, shared prompts, a tie, an empty response, and several layers read
    from one pass. (The eager FlexAttention used here applies the mask everywhere; which tiles the GPU kernel
    skips is tested against the dense mask below.)"""
    from armo_cli.forward import place_trees, token_batches

    rows = pair_rows(9, seed=4) + _shared_prompt_rows(True)
    rows[4]["chosen"] = ""
    trees = trees_for(bb, rows, tmp_path)
    assert any(len({b for b, _ in place_trees(batch, "flex")[0]}) < len(batch)  # a row holds several trees
               for batch in token_batches(trees, 10_000, 1.0, "flex"))
    for layer in (-1, [1, -1]):
        want = encode_trees(bb, trees, batch_tokens=10_000, pooling=pooling, layer=layer)
        got = encode_trees(bb, trees, batch_tokens=10_000, pooling=pooling, layer=layer, layout="flex")
        for g, w in zip(got, want):
            assert g.shape == w.shape and torch.allclose(g, w, atol=1e-5), float((g - w).abs().max())
    ties = encode_trees(bb, trees, batch_tokens=10_000, layout="flex")[1]
    assert torch.equal(ties[11, 0], ties[11, 1])  # _shared_prompt_rows' identical sides: still one computation
    # single responses (ratings, a policy's samples), and a gate inside the prompt (armo-eot)
    for rows, rule in ((rating_rows(9, seed=3) + _shared_prompt_rows(False), "generation-prompt"), (pair_rows(6), "armo-eot")):
        r = Renderer(bb.tokenizer, rule)
        trees = [r.tokenize(ex, i) for i, ex in enumerate(iter_examples(Source(str(write_jsonl(tmp_path / "s.jsonl", rows)))))]
        want = encode_trees(bb, trees, batch_tokens=10_000, pooling=pooling)
        got = encode_trees(bb, trees, batch_tokens=10_000, pooling=pooling, layout="flex")
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-5), float((g - w).abs().max())


@pytest.mark.parametrize("layout", ["rows", "flex"])
def test_batches_fit_the_budget_and_trees_never_overlap(bb, tmp_path, layout):
    from armo_cli.forward import place_trees, token_batches

    trees = trees_for(bb, pair_rows(40, seed=5), tmp_path)
    longest = max(t.length for t in trees)
    for budget in (longest, 3 * longest, 100_000):
        batches = list(token_batches(trees, budget, 1.0, layout))
        assert sorted(t.index for b in batches for t in b) == list(range(len(trees)))
        for batch in batches:
            places, B, L = place_trees(batch, layout)
            assert B * L <= budget or len(batch) == 1
            taken = torch.zeros(B, L, dtype=torch.int)
            for t, (b, o) in zip(batch, places):
                assert o + t.length <= L
                taken[b, o:o + t.length] += 1
            assert int(taken.max()) == 1
        if budget == 100_000:
            assert len(batches) == 1


@pytest.mark.parametrize("block", [4, 8, 16, 128])
def test_flex_tiles_cover_every_allowed_pair_and_full_tiles_hold_nothing_masked(bb, tmp_path, block):
    """The FlexAttention tiles armo reads off the trees' spans, against the dense mask's own tiling: no allowed
    pair outside a listed tile, no masked pair in a tile marked full, and tiles that cross trees skipped."""
    from armo_cli.forward import build_batch, place_trees, token_batches, tree_blocks

    trees = trees_for(bb, pair_rows(12, seed=7) + _shared_prompt_rows(True), tmp_path)
    for budget in (10_000, 640):
        for batch in token_batches(trees, budget, 1.0, "flex"):
            places, B, L = place_trees(batch, "flex")
            allowed = build_batch(batch, bb.device, torch.float32, places, (B, L))[2][:, 0] == 0
            partial, full = tree_blocks(batch, places, (B, L), block)
            nb = partial.shape[-1]
            grid = torch.zeros(B, nb * block, nb * block, dtype=torch.bool)
            grid[:, :L, :L] = allowed
            any_ = grid.view(B, nb, block, nb, block).any(4).any(2)
            grid[:, L:, :] = True  # past the row's end: no pair to mask
            grid[:, :, L:] = True
            all_ = grid.view(B, nb, block, nb, block).all(4).all(2)
            assert not (any_ & ~(partial | full)).any()
            assert not (full & ~all_).any() and not (partial & full).any()
            if len(batch) > 1 and block < L:
                assert (partial | full).sum() < (nb * (nb + 1) // 2) * B  # some tiles are skipped


def test_packing_auto_is_flex_only_on_cuda_for_long_jobs_and_flex_needs_a_model_that_runs_it(bb):
    from types import SimpleNamespace

    from armo_cli.devices import FLEX_MIN_TOKENS, choose_layout

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert choose_layout("auto", cuda, bb.model, FLEX_MIN_TOKENS) == "flex"
    assert choose_layout("auto", cuda, bb.model, FLEX_MIN_TOKENS - 1) == "rows"  # the compile would not pay
    assert choose_layout("auto", cpu, bb.model, 10 * FLEX_MIN_TOKENS) == "rows"
    assert choose_layout("rows", cuda, bb.model, 10 * FLEX_MIN_TOKENS) == "rows"
    assert choose_layout("flex", cpu, bb.model, 1) == "flex"
    plain = SimpleNamespace()  # armo's own Llama forward declares no FlexAttention
    assert choose_layout("auto", cuda, plain, 10 * FLEX_MIN_TOKENS) == "rows"
    with pytest.raises(ArmoError, match=r"^--packing flex: SimpleNamespace does not run FlexAttention .*use --packing rows$"):
        choose_layout("flex", cpu, plain, 1)


def test_extract_packing_flex_gives_the_features_of_rows_and_records_the_layout(tiny_backbone, tmp_path, eager_flex):
    inp = write_jsonl(tmp_path / "in.jsonl", pair_rows(12, seed=8))
    got = {}
    for packing in ("rows", "flex", "auto"):
        out = tmp_path / f"{packing}.st"
        res = armo("extract", str(inp), "-o", str(out), "-b", str(tiny_backbone), "-q", "--device", "cpu", "--packing", packing)
        assert res.code == 0, res.output
        got[packing] = Features.load(out)
    assert [got[k].meta.report["packing"] for k in ("rows", "flex", "auto")] == ["rows", "flex", "rows"]
    for name in ("prompt_features", "response_features"):
        assert torch.allclose(got["flex"].tensors[name], got["rows"].tensors[name], atol=1e-5)
        assert torch.equal(got["auto"].tensors[name], got["rows"].tensors[name])


def test_resume_reuses_chunks_computed_in_the_other_layout(bb, tmp_path, eager_flex):
    """Both layouts give the same features, so --packing is not part of the resume key: an interrupted run
    resumed with the other layout reuses what it finished."""
    inp = write_jsonl(tmp_path / "in.jsonl", pair_rows(10, seed=9))
    out = tmp_path / "o.st"

    def stop(c):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(ExtractConfig(input=str(inp), output=str(out), backbone="x", quiet=True, chunk_size=4, packing="rows"),
                backbone=bb, after_chunk=stop)
    rep = _extract(bb, inp, out, chunk_size=4, packing="flex", resume=True)
    assert (rep.chunks_reused, rep.chunks_computed, rep.packing) == (1, 2, "flex")
    whole = _extract(bb, inp, tmp_path / "whole.st", chunk_size=4, packing="rows")
    assert whole.chunks_computed == 3
    for name in ("prompt_features", "response_features"):
        assert torch.allclose(Features.load(out).tensors[name], Features.load(tmp_path / "whole.st").tensors[name], atol=1e-5)


def test_flex_that_fails_falls_back_to_rows_under_auto_and_is_one_line_when_asked_for(tiny_backbone, tmp_path, monkeypatch):
    """FlexAttention compiles on first use and can fail where its stack is incomplete: under auto the job runs one
    tree per row, with a warning; with --packing flex it is one line, exit 2, and no output."""
    import armo_cli.extract as ex
    import armo_cli.forward as fwd

    def broken(*a, **k):
        raise RuntimeError("InductorError: no C++ compiler\nmore lines of a traceback")

    monkeypatch.setattr(fwd, "flex_batch", broken)
    monkeypatch.setattr(ex, "choose_layout", lambda packing, *a: "rows" if packing == "rows" else "flex")
    inp = write_jsonl(tmp_path / "in.jsonl", pair_rows(6, seed=2))
    args = ["extract", str(inp), "-b", str(tiny_backbone), "--device", "cpu", "-q"]
    res = armo(*(args + ["-o", str(tmp_path / "auto.st")]))
    assert res.code == 0, res.output
    assert ("warning: FlexAttention failed on cpu (RuntimeError: InductorError: no C++ compiler); running one tree per "
            "row (--packing rows)") in res.output
    assert armo(*(args + ["-o", str(tmp_path / "rows.st"), "--packing", "rows"])).code == 0
    auto, rows = Features.load(tmp_path / "auto.st"), Features.load(tmp_path / "rows.st")
    assert auto.meta.report["packing"] == "rows" and torch.equal(auto.tensors["response_features"], rows.tensors["response_features"])
    res = armo(*(args + ["-o", str(tmp_path / "flex.st"), "--packing", "flex"]))
    assert res.code == 2
    assert res.output.strip().splitlines() == ["error: --packing flex: FlexAttention failed on cpu (RuntimeError: InductorError: "
                                               "no C++ compiler); use --packing rows"]
    assert not (tmp_path / "flex.st").exists() and not list(tmp_path.glob("flex.st*"))


def test_dataset_local_files_parquet_json_and_bad_rows(tiny_backbone, tmp_path, armo_cache, monkeypatch):
    """--dataset with a local file: parquet is read as parquet, JSON lines and a JSON array by armo's own reader,
    and a bad row is one line naming the file and the row. A local dataset folder loads through `datasets`,
    whose progress bars -q silences."""
    import pyarrow as pa
    import pyarrow.parquet as pq


    monkeypatch.setenv("ARMO_CACHE", str(armo_cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    rows = rating_rows(6)
    for r in rows:
        r["ratings"] = {"helpfulness": float(r["ratings"].get("helpfulness", 1))}
    ref = tmp_path / "ref.st"
    assert armo("extract", write_jsonl(tmp_path / "r.jsonl", rows), "--backbone", tiny_backbone, "-o", ref, "-q").code == 0
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    (tmp_path / "r.json").write_text(json.dumps(rows))
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    for src in (tmp_path / "r.parquet", tmp_path / "r.json", tmp_path / "r.jsonl", folder):
        out = tmp_path / f"{src.name}.st"
        r = armo("extract", "--dataset", src, "--backbone", tiny_backbone, "-o", out, "-q")
        assert r.code == 0 and r.stderr == "", (src, r.stderr)
        a, b = Features.load(ref), Features.load(out)
        assert a.ids == b.ids and torch.equal(a.tensors["response_features"], b.tensors["response_features"]), src
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n" + '{"prompt": "p", "response": 3}\n')
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    for src, message in ((tmp_path / "bad.jsonl", f"{tmp_path / 'bad.jsonl'}:2: field 'response'"),
                         (tmp_path / "bad.parquet", f"{tmp_path / 'bad.parquet'}: not a readable parquet file")):
        r = armo("extract", "--dataset", src, "--backbone", tiny_backbone, "-o", tmp_path / "x.st", "-q")
        assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
        assert not (tmp_path / "x.st").exists()
