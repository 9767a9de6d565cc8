"""The HTML report is made to be shared and opened in a browser, and every name in it comes from data: ids, subsets,
domains, objective names, model paths, inputs (#51 §1). A hostile string stays text: no tag, no attribute, no script.

Checked three ways: a property test renders every report kind (pairs, RewardBench 2, RM-Bench, best-of-n) from
hostile strings in every field that reaches the page and parses the HTML; `armo evaluate --html` runs on hostile rows
of each kind; and a real browser (headless Chromium, where installed) loads those pages and its DOM is read back."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.helpers import armo, write_jsonl

pytest.importorskip("matplotlib")

# in every hostile string; compared case-blind (HTMLParser lowercases names), and with a '~' so that no base64 image
# or generated id can spell it by chance
MARK = "~xsS"
# What runs by itself in a browser if it escapes into markup sets data-pwned on <html>.
PWN = "document.documentElement.dataset.pwned=1"
PAYLOADS = (
    "chat' onmouseover='alert(1)",                     # the reported one: an attribute added to <section>
    f"\"><script>{PWN}</script>",
    f"<img src=x onerror={PWN}>",
    f"'><svg onload={PWN}>",
    f"</style><script>{PWN}</script>",
    f"--><script>{PWN}</script><!--",
    f"]]><script>{PWN}</script>",
    f"\" autofocus onfocus={PWN} x=\"",
    f"</title><script>{PWN}</script>",
    "&amp;&lt;script&gt; $x^2$ [bold]r[/] %s {0}",
    "line\nbreak\r\ttab \x1b[2J \x00",
)
DANGEROUS_TAGS = {"script", "img", "iframe", "object", "embed", "a", "link", "base", "form", "input", "foreignobject",
                  "animate", "set", "meta-refresh", "frame", "audio", "video", "math", "textarea", "button"}


def hostile_strings(n: int):
    """n distinct hostile strings, each with the marker, a payload and arbitrary text."""
    one = st.builds(lambda k, p, t: f"{MARK}{k}{p}{t}", st.integers(0, 99), st.sampled_from(PAYLOADS),
                    st.text(max_size=6))
    return st.lists(one, min_size=n, max_size=n, unique=True)


class Page(HTMLParser):
    """Every tag with its attributes, the text inside <style>, and what the parser saw as declarations."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.style_text: list[str] = []
        self.decls: list[str] = []
        self._in_style = 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        self._in_style += tag == "style"

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_endtag(self, tag):
        self._in_style -= tag == "style" and self._in_style > 0

    def handle_data(self, data):
        if self._in_style:
            self.style_text.append(data)

    def unknown_decl(self, data):
        self.decls.append(data)

    handle_decl = handle_pi = unknown_decl


def assert_inert(html: str) -> Page:
    """No data reached markup: the marker never in a tag, an attribute (name or value), a style or a declaration;
    no tag that runs or loads anything; no event handler; every section id armo's own."""
    page = Page(html)
    mark = MARK.lower()
    for tag, attrs in page.tags:
        assert mark not in tag.lower() and tag not in DANGEROUS_TAGS, tag
        for name, value in attrs:
            assert not name.startswith("on") and mark not in name.lower(), (tag, name)
            assert mark not in (value or "").lower(), (tag, name, value)
            assert name not in ("src", "href", "action", "formaction"), (tag, name, value)
            if tag == "section" and name == "id":
                assert value.replace("-", "").isalnum() and value.isascii(), value
    assert not any(mark in t.lower() for t in page.style_text + page.decls)
    return page


def pair_report(names: list[str]) -> tuple[dict, list[dict]]:
    model, inp, backbone, gate_rule, sid, o1, o2, s1, s2 = names
    objs = [o1, o2]
    records = []
    for k, subset in enumerate([s1, s2, s1, s2]):
        side = lambda x: {"score": x, "length": 3 + k, "rewards": {o: x for o in objs}, "adjusted": {o: x / 2 for o in objs}}
        records.append({"id": f"{sid}{k}", "subset": subset, "margin": 0.1 * (k - 1), "gating": {o: 0.5 for o in objs},
                        "coefficients": {o1: 0.5, o2: -0.2}, "chosen": side(0.1 * k), "rejected": side(0.1)})
    report = {"model": model, "input": inp, "n": 4, "score": 0.5, "score_kind": "macro-average",
              "model_info": {"path": model, "backbone": backbone, "layer": -1, "pooling": "last", "objectives": objs,
                             "gate_rule": gate_rule, "verbosity_objective": o2},
              "subsets": {s: {"accuracy": 0.5, "n": 2, "ci95": [0.0, 1.0]} for s in (s1, s2)},
              "skipped": [{"id": sid, "line": 3}], "truncated": [sid], "weights": {o1: 1.0}, "accuracy_all": 0.5,
              "length_bias": {"spearman_score_length": 0.1}}
    return report, records


def list_report(kind: str, names: list[str]) -> dict:
    from armo_cli.benchmarks import RowScores, score_benchmark

    model, inp, backbone, reason, rid, d1, d2 = names[:7]
    n_resp = (3, 3) if kind == "rm-bench" else (1, 3)
    rows = [RowScores(f"{rid}{k}", d1 if k % 2 else d2, [0.1 * ((k * 7 + j) % 5) for j in range(sum(n_resp))], n_resp[0])
            for k in range(6)]
    if kind == "rewardbench2":  # RewardBench 2's Ties subset by its own rule, beside hostile subsets
        rows += [RowScores(f"{p}:{k}", "Ties", [0.9, 0.8, 0.1, 0.2], 2) for k in range(2) for p in ("ref", "tied")]
    report = score_benchmark(rows, kind, n_boot=20)
    return {**report, "model": model, "input": inp, "model_info": {"backbone": backbone}, "benchmark_reason": reason,
            "skipped": [{"id": rid, "line": 1}]}


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=hostile_strings(9))
def test_pair_report_keeps_hostile_names_as_text(names):
    from armo_cli.report import render_report

    report, records = pair_report(names)
    html = render_report(report, records)
    assert_inert(html)
    assert "&#x27;" in html or "&#39;" in html  # the quote of a payload is in the page, escaped


@pytest.mark.parametrize("kind", ["rewardbench2", "rm-bench", "best-of-n"])
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(names=hostile_strings(7))
def test_benchmark_report_keeps_hostile_names_as_text(kind, names):
    from armo_cli.report import render_benchmark_report

    html = render_benchmark_report(list_report(kind, names))
    page = assert_inert(html)
    if kind == "rm-bench":  # each domain's section by its index, its name only as text
        ids = [v for t, a in page.tags if t == "section" for k, v in a if k == "id"]
        assert [i for i in ids if i.startswith("matrix-")] == ["matrix-1", "matrix-2"]


def test_the_reported_domain_no_longer_adds_an_attribute():
    """`chat' onmouseover='alert(1)` as an RM-Bench domain gave <section id='matrix-chat' onmouseover='alert(1)'>."""
    from armo_cli.report import render_benchmark_report

    html = render_benchmark_report(list_report("rm-bench", ["m", "i", "b", "r", "id", "chat' onmouseover='alert(1)", "math"]))
    assert "<section id='matrix-1'><h2>2. chat&#x27; onmouseover=&#x27;alert(1): chosen style" in html
    assert not any(n.startswith("on") for _, attrs in Page(html).tags for n, _ in attrs)


# --- end to end: hostile rows through `armo evaluate --html`, then a real browser ------------------------------


def _hostile_rows(kind: str) -> list[dict]:
    rows = []
    for k, p in enumerate(PAYLOADS):
        name = f"{MARK}{k}{p}"
        if kind == "pairs":
            rows.append({"id": name, "subset": name if k % 2 else f"{MARK}-{p}", "prompt": p, "chosen": f"{p} yes",
                         "rejected": f"no {p}"})
        elif kind == "rm-bench":
            rows.append({"id": name, "subset": "chat" if k % 2 else "math", "domain": name, "prompt": p,
                         "chosen": [f"{p} a", f"{p} b", f"{p} c"], "rejected": [f"x {p}", f"y {p}", f"z {p}"]})
        elif kind == "rewardbench2":
            rows.append({"id": name, "subset": name, "prompt": p, "chosen": [f"{p} a"],
                         "rejected": [f"x {p}", f"y {p}", f"z {p}"]})
        else:
            rows.append({"id": name, "subset": name, "prompt": p, "chosen": [f"{p} a"], "rejected": [f"x {p}", f"y {p}"]})
    return rows


BENCH = {"pairs": "auto", "rm-bench": "rm-bench", "rewardbench2": "rewardbench2", "best-of-n": "best-of-n"}


@pytest.fixture(scope="module")
def hostile_pages(tiny_model, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile-report")
    pages = {}
    for kind, bench in BENCH.items():
        rows = write_jsonl(d / f"{kind}.jsonl", _hostile_rows(kind))
        if kind == "rm-bench":  # RM-Bench's domain is the row's `subset` in armo: put the hostile name there
            data = [json.loads(x) for x in rows.read_text().splitlines()]
            write_jsonl(rows, [{**r, "subset": r.pop("domain")} for r in data])
        out = d / f"{kind}.html"
        r = armo("evaluate", "-m", str(tiny_model / "model"), str(rows), "--benchmark", bench, "--html", str(out),
                 "-o", str(d / f"{kind}.json"), "-q")
        assert r.code == 0, (kind, r.stderr)
        pages[kind] = out
    return pages


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BENCH))
def test_evaluate_html_on_hostile_rows_is_inert(hostile_pages, kind):
    html = hostile_pages[kind].read_text()
    assert_inert(html)
    assert html.count(MARK) >= len(PAYLOADS) // 2  # the names are there, as text


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium here (.ci/run installs Debian's chromium)")
@pytest.mark.parametrize("kind", list(BENCH))
def test_a_browser_runs_no_script_and_adds_no_attribute(hostile_pages, kind, tmp_path):
    """The page as Chromium builds it after load (scripts and onload/onerror handlers would have run by then): no
    element carries the payloads' data-pwned, and its tags and attributes are the ones the file spells."""
    page = hostile_pages[kind]
    r = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr[-2000:]
    dom = Page(r.stdout)
    source = Page(page.read_text())
    assert not any(name == "data-pwned" for _, attrs in dom.tags for name, _ in attrs)
    assert {(t, n) for t, attrs in dom.tags for n, _ in attrs} <= {(t, n) for t, attrs in source.tags for n, _ in attrs}
    assert not {t for t, _ in dom.tags} & DANGEROUS_TAGS
