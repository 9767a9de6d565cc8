"""One source of truth: every option of every command has help, and its default and help are its
config field's; the option languages' parsers share one error style; --help is fast."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import typer.main

from armo_cli import configs
from armo_cli.cli import COMMAND_CONFIGS, app
from armo_cli.errors import ArmoError
from armo_cli.options import validate
from armo_cli.specs import parse_alphas, parse_lambda_range, parse_ranges, parse_weights, parse_where

COMMANDS = typer.main.get_command(app).commands
SPEC_FIELDS = {"alphas", "ranges", "lambda_range"}  # the CLI takes a string that armo_cli.specs parses


def _field_default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def test_every_command_has_a_config_and_every_option_has_help():
    assert set(COMMANDS) == set(COMMAND_CONFIGS) | {"version"}
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            assert getattr(p, "help", None), f"armo {name} {p.opts}: no help"


@pytest.mark.parametrize("name", sorted(COMMAND_CONFIGS))
def test_cli_defaults_and_help_are_the_config_fields(name):
    fields = {f.name: f for f in dataclasses.fields(COMMAND_CONFIGS[name])}
    for p in COMMANDS[name].params:
        assert p.name in fields, f"armo {name}: parameter {p.name} is not a field of {COMMAND_CONFIGS[name].__name__}"
        f = fields[p.name]
        assert p.help == f.metadata["help"], (name, p.name)
        if p.name in SPEC_FIELDS or p.required:
            continue
        d = _field_default(f)
        got = list(p.default) if isinstance(p.default, (list, tuple)) else p.default
        assert got == d, f"armo {name} {p.opts}: CLI default {p.default!r} != config default {d!r}"


# Config fields that are not (yet) command-line options, each with its reason.
NOT_ON_THE_CLI = {"fit-gating": {"logit_scale"}}  # the learnable scale's starting value: an API-only knob


def test_every_config_field_with_help_is_an_option():
    for name, cls in COMMAND_CONFIGS.items():
        params = {p.name for p in COMMANDS[name].params}
        for f in dataclasses.fields(cls):
            if f.metadata.get("help") and f.name not in NOT_ON_THE_CLI.get(name, set()):
                assert f.name in params, f"armo {name}: config field {f.name} has no command-line option"


def test_named_choices_match_the_registries():
    from armo_cli.devices import DTYPES
    from armo_cli.rendering import GATE_RULES

    assert configs.GATE_RULE_NAMES == tuple(GATE_RULES)
    assert set(configs.DTYPE_NAMES) == set(DTYPES) | {"auto"}


def test_validate_names_the_option():
    with pytest.raises(ArmoError, match=r"^--chunk-size 0: must be at least 1$"):
        validate(configs.ExtractConfig(input="x", chunk_size=0))
    with pytest.raises(ArmoError, match=r"^--alphas -1: must be greater than 0$"):
        validate(configs.RegressionConfig(alphas=[1.0, -1]))
    validate(configs.GatingConfig())


@pytest.mark.parametrize("parse, spec, message", [
    (lambda s: parse_ranges([s]), "help=5:1", "HI must be greater than LO"),
    (lambda s: parse_ranges([s]), "help", "expected NAME=LO:HI"),
    (lambda s: parse_ranges([s]), "help=a:2", "'a' is not a number"),
    (lambda s: parse_ranges([s]), "help=1:inf", "LO and HI must be finite"),
    (parse_lambda_range, "1", "expected LO:HI"),
    (parse_lambda_range, "2:1", "HI must be greater than LO"),
    (lambda s: parse_alphas(s, []), "1,x", "expected comma-separated numbers"),
    (lambda s: parse_weights(s, ["a", "b"]), "a", "expected NAME=W"),
    (lambda s: parse_weights(s, ["a", "b"]), "c=1", "unknown objective 'c'"),
    (lambda s: parse_weights(s, ["a", "b"]), "a=inf", "the weight must be finite"),
    (lambda s: parse_weights(s, ["a", "b"]), "a=0,b=0", "every weight is zero"),
    (lambda s: parse_weights(s, ["a", "b"]), "a=1,b=1,a=2", "a: weight given twice"),
    (lambda s: parse_ranges(["help=1:5", s]), "help=1:10", "help: range given twice"),
    (lambda s: parse_where([s]), "=x", "expected FIELD=PREFIX"),
])
def test_spec_parsers_share_one_error_style(parse, spec, message):
    with pytest.raises(ArmoError) as e:
        parse(spec)
    assert str(e.value).startswith("--") and f" {spec!r}: " in str(e.value) and message in str(e.value)


def test_spec_parsers_parse():
    assert parse_ranges(["h=1:10", "s=0:1"]) == {"h": (1.0, 10.0), "s": (0.0, 1.0)}
    assert parse_lambda_range(":2") == (float("-inf"), 2.0) and parse_lambda_range(None) is None
    assert parse_alphas(None, [1.0]) == [1.0] and parse_alphas("0.1, 10", []) == [0.1, 10.0]
    assert parse_weights("b=-0.5", ["a", "b"]) == [0.0, -0.5]
    assert parse_where(["source=hh", "x=a=b"]) == [("source", "hh"), ("x", "a=b")]


def test_the_cli_and_its_configs_import_no_torch():
    """Why `armo --help` is fast (benchmarks/startup_bench.py measures it): the CLI module, the configs and
    the option parsers import no torch; each command imports its library module only when it runs."""
    code = ("import sys; import armo_cli.cli, armo_cli.configs, armo_cli.specs, armo_cli.errors; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "armo_cli.cli", "--help"], check=True, capture_output=True, text=True)
    assert "fit-regression" in out.stdout


@pytest.mark.parametrize("resumable", [True, False])
def test_ctrl_c_exits_130_and_advises_resume_only_where_a_job_can_resume(resumable, capsys):
    from armo_cli import cli
    from armo_cli.errors import EXIT_INTERRUPTED

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as e:
        cli._run(interrupted, resumable=resumable)
    assert e.value.exit_code == EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted") and ("rerun with --resume" in err) == resumable


def test_version_flag_and_help_shows_no_type_for_flags():
    """`armo --version` as `armo version`; flags take no value, so the help shows none (it printed `<bool>`)."""
    from tests.helpers import armo
    from armo_cli import __version__

    r = armo("--version")
    assert (r.code, r.stdout) == (0, __version__ + "\n")
    for cmd in ("score", "extract", "evaluate", "fit-gating", "serve"):
        r = armo(cmd, "--help")
        assert r.code == 0 and "<bool>" not in r.stdout, cmd
        assert "--quiet" in r.stdout and "--help" in r.stdout
    assert "<str>" in armo("score", "--help").stdout  # options that take a value still show its type


def test_progress_off_a_terminal_prints_a_line_every_tenth_and_every_30_s(capsys):
    """Under nohup or into a log, a rich bar prints nothing until the end (fit-gating was silent for 10 minutes):
    a plain line at each further tenth of the work, and at least every 30 s when a tenth takes longer."""
    from armo_cli import console

    now = [0.0]
    lines = []
    real = console.console.print
    console.console.print = lambda text, **k: lines.append(text)
    try:
        with console.LineProgress(clock=lambda: now[0]) as p:
            t = p.add_task("fit-gating", total=200, rate="")
            for step in range(1, 201):
                now[0] += 0.5 if step <= 100 else 0.01
                p.update(t, advance=1, rate="val loss 0.69" if step >= 50 else "")
            now[0] += 0
    finally:
        console.console.print = real
    assert lines[0] == "fit-gating: 20/200 (10%), 10 s, ETA 90 s"  # from the pace so far: 180 more at 0.5 s
    assert "fit-gating: 60/200 (30%), val loss 0.69, 30 s, ETA 70 s" in lines
    assert lines[-1].startswith("fit-gating: 200/200 (100%)") and len(lines) == 10
    slow = console.LineProgress(clock=lambda: now[0])
    lines.clear()
    console.console.print = lambda text, **k: lines.append(text)
    try:
        with slow:
            t = slow.add_task("extract", total=1000)
            for _ in range(4):
                now[0] += 31
                slow.update(t, advance=1)
    finally:
        console.console.print = real
    assert lines == [f"extract: {i}/1000 (0%), {31 * i} s, ETA {31 * (1000 - i)} s" for i in range(1, 5)]
    # a resumed job (tune-backbone at step 175 of 423) counts from where it was, and prints nothing else for it
    resumed = console.LineProgress(clock=lambda: now[0])
    lines.clear()
    console.console.print = lambda text, **k: lines.append(text)
    try:
        with resumed:
            t = resumed.add_task("tune", total=423, completed=175, rate="")
            now[0] += 31
            resumed.update(t, advance=1, rate="loss 0.490")
    finally:
        console.console.print = real
    assert lines == ["tune: 176/423 (42%), loss 0.490, 31 s, ETA 7657 s"]  # the pace of this run, not of the steps before it


def test_extract_into_a_log_prints_progress_lines(tiny_backbone, tmp_path, armo_cache, monkeypatch):
    from tests.helpers import armo, rating_rows, write_jsonl

    monkeypatch.setenv("ARMO_CACHE", str(armo_cache))
    rows = write_jsonl(tmp_path / "r.jsonl", rating_rows(10))
    r = armo("extract", rows, "--backbone", tiny_backbone, "-o", tmp_path / "f.st")  # stderr: not a terminal
    assert r.code == 0 and "extract: 10/10 (100%)" in r.stderr, r.stderr
    r = armo("extract", rows, "--backbone", tiny_backbone, "-o", tmp_path / "g.st", "-q")
    assert r.code == 0 and "extract:" not in r.stderr
