"""The `armo` command: thin Typer functions that parse options into a config and call one library function."""
from __future__ import annotations

import dataclasses
import inspect
import os
import signal
import sys
import threading
import typing
from typing import Callable, List, NoReturn, Optional, TypeVar

import typer

from .version import __version__
from .console import console, error, info, plain, show, table, warn
from .configs import (AnnotateConfig, AssembleConfig, DecorrelationConfig, EvaluateConfig, ExportConfig, ExtractConfig, GatingConfig,
                      ImportConfig, MergeConfig, RegressionConfig, ReportConfig, SampleConfig, ScoreConfig, ServeConfig,
                      TuneConfig)
from .specs import parse_alphas, parse_lambda_range, parse_ranges
from .errors import (EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED, ArmoError,
                     Terminated, debug_enabled, environment_message, one_line)

app = typer.Typer(
    name="armo",
    help="Interpretable multi-objective reward models (ArmoRM-MoE): extract features, fit the three stages, "
         "score and evaluate. Artifacts are safetensors; data is JSONL ('-' for stdin/stdout).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

T = TypeVar("T")


def _flags_take_no_value() -> None:
    """Typer's help prints a flag as `--quiet -q <bool>`, as if it took a value: a flag shows no type."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else shown(self, ctx)


_flags_take_no_value()


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an internal error (or set ARMO_DEBUG=1)."),
          version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print armo's version and exit.")):
    if debug:
        os.environ["ARMO_DEBUG"] = "1"


def _fail(msg: str, code: int) -> NoReturn:
    error(msg)
    raise typer.Exit(code)


def _run(fn: Callable[[], T], resumable: bool = False) -> T:
    """armo's error contract (errors.py): bad input is one line and exit 2, the world's failures one line
    and exit 1, a bug a short request for a report and exit 3; Ctrl-C exits 130 and, for a job that can be
    resumed (extract; score and evaluate with a file output), says how. SIGTERM is handled as Ctrl-C (cleanups run), and exits 143."""
    previous = None
    if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread only
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return fn()
    except typer.Exit:
        raise
    except ArmoError as e:
        _fail(one_line(e), EXIT_BAD_INPUT)
    except KeyboardInterrupt as e:
        term = isinstance(e, Terminated)
        console.print(("[yellow]terminated[/yellow] (SIGTERM)" if term else "[yellow]interrupted[/yellow]")
                      + (": finished work is kept; rerun with --resume" if resumable else ""), highlight=False)
        raise typer.Exit(EXIT_TERMINATED if term else EXIT_INTERRUPTED)
    except BrokenPipeError:
        # the reader of stdout went away (`armo score ... | head`): stop quietly, as `yes | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141)
    except Exception as e:
        if debug_enabled():
            console.print_exception()
        if isinstance(e, OSError):
            _fail(environment_message(e), EXIT_ENVIRONMENT)
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
            _fail(f"out of memory ({one_line(e)[:200]}); try a smaller --batch-tokens or --max-length", EXIT_ENVIRONMENT)
        _fail(f"internal error ({type(e).__name__}: {one_line(e)[:200]}). This is a bug in armo: please report it "
              f"with the command and `armo version`; --debug or ARMO_DEBUG=1 shows the traceback", EXIT_INTERNAL)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: object) -> NoReturn:
    raise Terminated()


# Short flags, the same on every command that has the option.
SHORT = {"output": "-o", "quiet": "-q", "model": "-m", "regression": "-r", "decorrelation": "-t", "gating": "-g"}
# Options whose command-line form is a small language parsed by armo_cli.specs, not the field's own type.
SPEC_TYPES = {"alphas": Optional[str], "ranges": List[str], "lambda_range": Optional[str]}


def _cli_type(tp):
    """The annotation Typer understands for a config field's type (X | None -> Optional[X])."""
    args = typing.get_args(tp)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return Optional[_cli_type(inner)]
    if typing.get_origin(tp) is list:
        return List[typing.get_args(tp)[0]]
    return tp


def config_command(cls: type, argument: str | None = None, argument_required: bool = True,
                   required: tuple[str, ...] = (), short: dict[str, str] | None = None, skip: tuple[str, ...] = ()):
    """Give a command one parameter per field of its config that has help: the default, the help and the
    constraint are the field's (configs.py), so they are written once. The command receives them as
    keyword arguments named as the fields."""
    hints = typing.get_type_hints(cls)
    shorts = {**SHORT, **(short or {})}

    def depth(f) -> int:  # a command's own options first, then those of the groups it shares (configs' base classes)
        return next(i for i, c in enumerate(cls.__mro__) if f.name in c.__dict__.get("__annotations__", {}))

    def deco(fn):
        params = []
        for f in sorted(dataclasses.fields(cls), key=depth):
            if not f.metadata.get("help") or f.name in skip:
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            tp = SPEC_TYPES.get(f.name) or _cli_type(hints[f.name])
            if f.name == argument:
                info = typer.Argument(... if argument_required else default, help=f.metadata["help"], show_default=False)
            else:
                if f.name in SPEC_TYPES:
                    default = [] if SPEC_TYPES[f.name] is List[str] else None
                flags = [f.metadata.get("flag") or "--" + f.name.replace("_", "-")]
                if f.name in shorts:
                    flags.append(shorts[f.name])
                info = typer.Option(... if f.name in required else default, *flags, help=f.metadata["help"],
                                    show_default=default not in (None, []) and f.name not in required)
            kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if f.name == argument else inspect.Parameter.KEYWORD_ONLY
            params.append(inspect.Parameter(f.name, kind, default=info, annotation=tp))
        params.sort(key=lambda p: p.kind)  # the argument first
        fn.__signature__ = inspect.Signature(params)
        return fn
    return deco


def _config(cls: type, values: dict, **parsed):
    """The config from a command's parameters (named as its fields) and any parsed spec values."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names}, **parsed)


@app.command()
@config_command(ExtractConfig, argument="input", argument_required=False, required=("output",), short={"backbone": "-b"})
def extract(**values):
    """Read conversations and write response features f(x,y) and prompt features f(x).

    Reads JSONL rows: `prompt`+`response`(+`ratings`), `prompt`+`chosen`+`rejected`(+`subset`),
    OpenAI `messages`, or TRL conversational pairs. Writes one safetensors file with
    `response_features` ([N,d] or [N,2,d]), `prompt_features`, `labels`, lengths and ids.

    Example: `armo extract ratings.jsonl -o ratings.features.safetensors --max-length 1024 --overflow truncate-prompt`
    """
    from .extract import extract as run

    cfg = _config(ExtractConfig, values)
    _run(lambda: run(cfg), resumable=True)


@app.command("tune-backbone")
@config_command(TuneConfig, argument="input", required=("output",), short={"backbone": "-b"})
def tune_backbone(**values):
    """Stage 0: tune the backbone for preference (LoRA on its blocks, a Bradley-Terry loss on pairs).

    Writes a PEFT adapter folder whose config names the base; every command's --backbone takes it (the adapter is
    merged into the base's weights on load), and `armo export` writes the merged weights. Needs `pip install peft`.

    Example: `armo tune-backbone pairs.jsonl -o tuned --epochs 1 --resume`, then `armo extract ... --backbone tuned`
    """
    from .stage0 import tune_backbone as run

    cfg = _config(TuneConfig, values)
    _run(lambda: run(cfg), resumable=True)


@app.command()
@config_command(MergeConfig, argument="shards", required=("output",))
def merge(**values):
    """Join the shards of one extract job into one features file, in the original row order.

    Refuses shards of different jobs, a shard given twice and missing shards (unless --allow-partial).

    Example: `armo merge feats.0.safetensors feats.1.safetensors -o feats.safetensors`
    """
    from .extract import merge as run

    cfg = _config(MergeConfig, values)
    rep = _run(lambda: run(cfg))
    info(f"{rep['shards']} of {rep['num_shards']} shards into {cfg.output}: {rep['rows']} rows", done="merged")
    if rep["missing_shards"]:
        warn(f"missing shards: {', '.join(map(str, rep['missing_shards']))} (merged with --allow-partial)")


def _fit(cls: type, values: dict, part: str, run: Callable[[object], object], **parsed) -> None:
    """A fit stage: its config (spec options parsed), the fit, its report drawn, and --model-dir registration, one way."""
    from .model import fit_into_model_dir

    def go():
        plain = {k: v for k, v in values.items() if k not in parsed}
        cfg = _config(cls, plain, **{k: parse(values[k]) for k, parse in parsed.items()})

        def fit_and_draw():
            report = run(cfg)
            DRAW[part](report, cfg)
            return report

        fit_into_model_dir(fit_and_draw, cfg.output, cfg.model_dir, part)

    _run(go)


def _draw_regression(rep: dict, cfg) -> None:
    from .console import show, table

    for o, why in rep["skipped_objectives"].items():
        warn(f"skipping objective {o!r}: {why}")
    show(table(f"fit-regression: {rep['rows']} rows, d={rep['hidden_size']} -> {cfg.output}",
               ["objective", "n train", "n val", "alpha", "val MSE", "Pearson", "Spearman"],
               [[o, m["n_train"], m["n_val"], m["alpha"], m["mse"], m["pearson"], m["spearman"]]
                for o, m in rep["metrics"].items()]), cfg.quiet)
    p = rep["preference"]
    if p:
        info(f"preference objective {p['objective']!r}: C {p['C']:g}, cross-validated accuracy {p['val_accuracy']:.3f} "
             f"({p['folds']} folds by prompt, also the cross-fitting folds)", cfg.quiet)


def _draw_decorrelation(rep: dict, cfg) -> None:
    from .console import show, table
    from .decorrelation import status_note

    rows = rep["objectives_report"]
    against = rep.get("against") or [rep["verbosity"]]
    if len(against) > 1 or rep.get("within") == "prompt":  # one lambda and two correlations per objective against
        where = "within each prompt" if rep["within"] == "prompt" else "over the set"
        show(table(f"fit-decorrelation (pearson {where}, {rep['reference_rows']} reference responses) -> {cfg.output}",
                   ["objective", *[f"{h} {a}" for a in against for h in ("lambda", "before", "after")], "status"],
                   [[o, *[r[h][a] for a in against for h in ("lambda", "before", "after")], r["status"]]
                    for o, r in rows.items()]), cfg.quiet)
        return
    show(table(f"fit-decorrelation ({rep['method']}, {rep['reference_rows']} reference responses) -> {cfg.output}",
               ["objective", "lambda", "corr before", "corr after", "status"],
               [[o, r["lambda"], r["before"], r["after"], r["status"]] for o, r in rows.items()]), cfg.quiet)
    for o, r in rows.items():
        if r["status"] != "ok" and not cfg.quiet:
            warn(status_note(o, r["status"], r["after"], rep["tolerance"]))


def _draw_gating(rep: dict, cfg) -> None:
    from .console import show, table

    for note in rep["notes"]:
        info(note, cfg.quiet, done="note:", style="yellow")
    show(table(f"fit-gating: {rep['pairs']['train']} train / {rep['pairs']['val']} validation pairs (grouped by prompt) "
               f"-> {cfg.output}", ["scorer", "val accuracy", "val loss"],
               [[m["name"], m["accuracy"], m["loss"]] for m in rep["metrics"]]), cfg.quiet)


DRAW = {"regression": _draw_regression, "decorrelation": _draw_decorrelation, "gating": _draw_gating}


@app.command("fit-regression")
@config_command(RegressionConfig, argument="features", argument_required=False)
def fit_regression(**values):
    """Stage 1: ridge regression from response features to k ratings, one strength per objective.

    Reads extract outputs (labels NaN where missing); writes W (k x d), scales, chosen strengths and
    validation metrics to a safetensors artifact. With --pairs and --preference-objective, one more
    objective is a Bradley-Terry head fitted on pairs (ratings then become optional).

    Example: `armo fit-regression ratings.features.safetensors --length-objective verbosity -o regression.safetensors`
    """
    from .configs import DEFAULT_ALPHAS
    from .fitting import fit_regression as run

    _fit(RegressionConfig, values, "regression", run, alphas=lambda a: parse_alphas(a, DEFAULT_ALPHAS), ranges=parse_ranges)


@app.command("fit-decorrelation")
@config_command(DecorrelationConfig, argument="features", required=("regression",))
def fit_decorrelation(**values):
    """Remove each objective's correlation with verbosity: r_i' = r_i - lambda_i r_v.

    Reads a regression artifact and reference features; writes ArmoRM's transform matrix T (k x k).

    Example: `armo fit-decorrelation pairs.features.safetensors -r regression.safetensors -o decorrelation.safetensors`
    """
    from .fitting import fit_decorrelation as run

    _fit(DecorrelationConfig, values, "decorrelation", run, lambda_range=parse_lambda_range)


@app.command("fit-gating")
@config_command(GatingConfig, argument="features", required=("regression",), skip=("logit_scale",))
def fit_gating(**values):
    """Stage 2: train the MoE gate on pairs (Bradley-Terry), backbone and regression frozen.

    Reads pair features, a regression and a decorrelation artifact; writes the gate's weights and a
    comparison with uniform weights, the best single objective and a linear BT head.

    Example: `armo fit-gating pairs.features.safetensors -r regression.safetensors -t decorrelation.safetensors -o gating.safetensors`
    """
    from .fitting import fit_gating as run

    _fit(GatingConfig, values, "gating", run)


@app.command()
@config_command(AssembleConfig, argument="output", required=("regression", "gating"))
def assemble(**values):
    """Build a model directory (armo.json + parts) from fitted artifacts, checking that they agree.

    Example: `armo assemble my-model -r regression.safetensors -t decorrelation.safetensors -g gating.safetensors`
    """
    from .model import assemble as run

    cfg = _config(AssembleConfig, values)
    m = _run(lambda: run(cfg.output, cfg.regression, cfg.gating, cfg.decorrelation, cfg.force, cfg.ship_adapter))
    info(f"{cfg.output}: {len(m.objectives)} objectives on {m.backbone['name']}", done="model")


@app.command()
@config_command(ScoreConfig, argument="input", argument_required=False)
def score(**values):
    """Score responses and explain the score: rewards per objective, gate weights, coefficients.

    Writes one JSON line per row (order kept): `id`, `score`, `rewards`, `rewards_original`, `gating`,
    `coefficients`, `top_objectives`; for pairs `chosen`, `rejected`, `margin`, `preferred`.

    Example: `cat rows.jsonl | armo score -m my-model - | jq .score`

    With `-o FILE`, rows are checked before any is scored, and scored windows are kept in `FILE.parts/` until
    FILE is complete: after an interruption, the same command with `--resume` goes on where it stopped.
    """
    from .score import score as run

    cfg = _config(ScoreConfig, values)
    _run(lambda: run(cfg), resumable=cfg.output != "-" and not cfg.features and cfg.format != "table")


@app.command()
@config_command(EvaluateConfig, argument="input", argument_required=False)
def evaluate(**values):
    """Accuracy per subset with 95% intervals, RewardBench sections, ties and length bias.

    Example: `armo evaluate -m my-model dev-eval.jsonl.gz -o report.json`

    With a file output, rows are checked before any is scored, and scored pairs are kept beside the first output
    (`report.json.parts/`) until every output is written: after an interruption, add `--resume`.
    """
    from .evaluate import progress_anchor, evaluate as run

    cfg = _config(EvaluateConfig, values)
    _run(lambda: run(cfg), resumable=progress_anchor(cfg) is not None and not cfg.features)


@app.command()
@config_command(AnnotateConfig, argument="input", argument_required=False)
def annotate(**values):
    """Turn a policy's samples into preference pairs: every response scored and explained, pairs picked per prompt.

    Rows: a `prompt` and a list of responses (`responses`, `all_generated_responses` or `completions`). Writes one
    line per pair in TRL's DPO format (`prompt`, `chosen`, `rejected`, `score_chosen`, `score_rejected`, the indices and
    `decided_by`), and every response's score with its explanation to PAIRS.scores.jsonl. A prompt whose responses tie,
    or with fewer than two distinct ones, gives no pair: counted here and named in its scores line.

    Example: `armo annotate samples.jsonl -o pairs.jsonl --require 'xstest-appropriate>=0.5'`

    Rows are checked before any is scored, and scored windows are kept in `PAIRS.jsonl.parts/` until both files are
    written: after an interruption, the same command with `--resume` goes on where it stopped.
    """
    from .annotate import annotate as run

    cfg = _config(AnnotateConfig, values)
    rep = _run(lambda: run(cfg), resumable=True)
    show_annotate(rep, cfg.quiet)


def show_annotate(rep: dict, quiet: bool) -> None:
    """annotate's summary: what was scored, what was paired, and why some prompts gave no pair."""
    rows = [["prompts", rep["prompts"]], ["responses", rep["responses"]], ["pairs", rep["pairs"]],
            *[[f"no pair: {why}", len(ids)] for why, ids in rep["no_pair"].items()],
            ["rows skipped", len(rep["skipped"])], ["mean best score", rep["mean_best_score"]],
            ["mean score", rep["mean_score"]]]
    show(table(f"annotate ({rep['rule']}): {rep['output']}, scores in {rep['scores']}", ["", "value"], rows), quiet)
    for why, ids in rep["no_pair"].items():
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        info(f"no pair ({why}): {', '.join(plain(i) for i in ids[:5])}{more}", quiet)


@app.command()
@config_command(SampleConfig, argument="input")
def sample(**values):
    """Write a seeded random slice of a JSONL file, optionally filtered by field prefix.

    Example: `armo sample pairs.jsonl.gz --where source=hh_rlhf --n 500 --seed 1 -o train.jsonl`
    """
    from .sampling import sample as run

    cfg = _config(SampleConfig, values)
    k = _run(lambda: run(cfg))
    short = f" (--n {cfg.n}: only {k} were left to take)" if cfg.n is not None and k < cfg.n else ""
    info(f"{k} rows{short}", done="sampled")


@app.command("export")
@config_command(ExportConfig, argument="output")
def export_(**values):
    """Write an ArmoRM-format Hugging Face folder (LlamaForRewardModelWithGating, safetensors).

    It loads with `AutoModelForSequenceClassification.from_pretrained(OUT, trust_remote_code=True)`
    and returns `rewards`, `gating_output`, `prompt_embedding`, `score`.

    Example: `armo export -m my-model my-model-hf`
    """
    from .hf_format import export_model

    cfg = _config(ExportConfig, values)
    out = _run(lambda: export_model(cfg.model, cfg.output, cfg.backbone, cfg.force))
    info(str(out), done="exported")


@app.command("import")
@config_command(ImportConfig, argument="source", required=("output",))
def import_(**values):
    """Read an ArmoRM-format checkpoint into an armo model directory, without running its code.

    Reads config.json and the safetensors head tensors only (no pickle). The backbone stays where it is.

    Example: `armo import RLHFlow/ArmoRM-Llama3-8B-v0.1 -o armorm`
    """
    from .hf_format import import_checkpoint

    cfg = _config(ImportConfig, values)
    names = [o.strip() for o in cfg.objectives.split(",")] if cfg.objectives else None
    _run(lambda: import_checkpoint(cfg.source, cfg.output, names, cfg.force))


@app.command()
@config_command(ReportConfig, argument="report")
def report(**values):
    """Redraw the HTML report from saved `armo evaluate` outputs, without recomputing (needs matplotlib).

    Example: `armo report report.json --pairs pair-scores.jsonl -o report.html`
    """
    from .report import write_report

    cfg = _config(ReportConfig, values)
    _run(lambda: write_report(cfg))


@app.command()
@config_command(ServeConfig)
def serve(**values):
    """Serve the model over HTTP for RLHF trainers, with dynamic batching (needs `pip install 'armo-cli[serve]'`).

    Routes: POST /get_reward (OpenRLHF's remote reward model: `--remote_rm_url http://HOST:PORT/get_reward`),
    POST /score (armo's rows -> `armo score` records), GET /health, GET /info. Binds 127.0.0.1 by default;
    set --api-key (or ARMO_API_KEY) before binding any other address.

    Example: `armo serve -m my-model --port 8000`
    """
    from .serve import serve as run

    cfg = _config(ServeConfig, values)
    _run(lambda: run(cfg))


# Each command and the config its options come from (tests check defaults and help against it).
COMMAND_CONFIGS = {"extract": ExtractConfig, "tune-backbone": TuneConfig, "merge": MergeConfig, "fit-regression": RegressionConfig,
                   "fit-decorrelation": DecorrelationConfig, "fit-gating": GatingConfig, "assemble": AssembleConfig,
                   "score": ScoreConfig, "evaluate": EvaluateConfig, "annotate": AnnotateConfig, "sample": SampleConfig,
                   "export": ExportConfig,
                   "import": ImportConfig, "serve": ServeConfig, "report": ReportConfig}


@app.command()
def version():
    """Print armo's version."""
    print(__version__)


def _click_exceptions() -> tuple[tuple, tuple, tuple]:
    """(usage errors, other click errors, aborts) of click and of the click that newer Typer vendors."""
    import click.exceptions as ce

    mods = [ce]
    try:
        from typer._click import exceptions as te  # typer >= 0.20 ships its own copy of click

        mods.append(te)
    except ImportError:
        pass
    return (tuple(m.UsageError for m in mods), tuple(m.ClickException for m in mods),
            tuple(m.Abort for m in mods if hasattr(m, "Abort")))


def main(argv: Optional[List[str]] = None) -> None:
    """The `armo` entry point: Typer's usage errors are one line with exit 2, like armo's own."""
    usage, other, abort = _click_exceptions()
    try:
        rc = app(args=argv, prog_name="armo", standalone_mode=False)
    except usage as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # plain `armo`: the help, as Typer shows it
            e.show()
            sys.exit(EXIT_BAD_INPUT)
        where = e.ctx.command_path if e.ctx is not None else "armo"
        error(f"{where}: {one_line(e.format_message())} (see {where} --help)")
        sys.exit(EXIT_BAD_INPUT)
    except other as e:
        error(one_line(e.format_message()))
        sys.exit(EXIT_BAD_INPUT)
    except (*abort, KeyboardInterrupt):
        console.print("[yellow]interrupted[/yellow]", highlight=False)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
