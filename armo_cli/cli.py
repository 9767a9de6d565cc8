"""The `armo` command: thin Typer functions that parse options into a config and call one library function."""
from __future__ import annotations

import dataclasses
import inspect
import os
import sys
from typing import Callable, List, NoReturn, Optional, TypeVar

import typer

from . import __version__
from .console import console
from .configs import (AssembleConfig, DecorrelationConfig, EvaluateConfig, ExportConfig, ExtractConfig, GatingConfig,
                      ImportConfig, MergeConfig, RegressionConfig, SampleConfig, ScoreConfig)
from .specs import parse_alphas, parse_lambda_range, parse_ranges
from .errors import (EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_INTERNAL, EXIT_INTERRUPTED, ArmoError, debug_enabled,
                     environment_message, one_line)

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


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an internal error (or set ARMO_DEBUG=1).")):
    if debug:
        os.environ["ARMO_DEBUG"] = "1"


def _fail(msg: str, code: int) -> NoReturn:
    console.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(fn: Callable[[], T]) -> T:
    """armo's error contract (errors.py): bad input is one line and exit 2, the world's failures one line
    and exit 1, a bug a short request for a report and exit 3; Ctrl-C says how to resume."""
    try:
        return fn()
    except typer.Exit:
        raise
    except ArmoError as e:
        _fail(one_line(e), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished chunks are kept; rerun with --resume", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
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


def _field(cls: type, name: str):
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__}.{name}")


def _default(cls: type, name: str):
    f = _field(cls, name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...


def O(cls: type, name: str, *flags: str, spec: bool = False, required: bool = False):
    """A Typer option whose default and help are the config field's (one source of truth). `spec`: the CLI
    takes a string that armo_cli.specs parses (default None, meaning the field's default)."""
    f = _field(cls, name)
    default = ... if required else None if spec else _default(cls, name)
    return typer.Option(default, *(flags or ("--" + name.replace("_", "-"),)), help=f.metadata["help"],
                        show_default=default not in (None, ..., []))


def A(cls: type, name: str, required: bool = True):
    """A Typer argument whose help is the config field's."""
    f = _field(cls, name)
    return typer.Argument(... if required else _default(cls, name), help=f.metadata["help"], show_default=False)


def _config(cls: type, values: dict, **parsed):
    """The config from a command's parameters (named as its fields) and any parsed spec values."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names}, **parsed)


@app.command()
def extract(
    input: Optional[str] = A(ExtractConfig, "input", required=False),
    output: str = O(ExtractConfig, "output", "--output", "-o", required=True),
    dataset: Optional[str] = O(ExtractConfig, "dataset"),
    split: str = O(ExtractConfig, "split"),
    backbone: str = O(ExtractConfig, "backbone", "--backbone", "-b"),
    device: Optional[str] = O(ExtractConfig, "device"),
    dtype: Optional[str] = O(ExtractConfig, "dtype"),
    attn_implementation: str = O(ExtractConfig, "attn_implementation"),
    gate_rule: str = O(ExtractConfig, "gate_rule"),
    layer: int = O(ExtractConfig, "layer"),
    max_length: Optional[int] = O(ExtractConfig, "max_length"),
    overflow: str = O(ExtractConfig, "overflow"),
    on_error: str = O(ExtractConfig, "on_error"),
    batch_tokens: Optional[int] = O(ExtractConfig, "batch_tokens"),
    max_padding: Optional[float] = O(ExtractConfig, "max_padding"),
    chunk_size: int = O(ExtractConfig, "chunk_size"),
    resume: bool = O(ExtractConfig, "resume"),
    num_shards: Optional[int] = O(ExtractConfig, "num_shards"),
    shard_index: Optional[int] = O(ExtractConfig, "shard_index"),
    quiet: bool = O(ExtractConfig, "quiet", "--quiet", "-q"),
):
    """Read conversations and write response features f(x,y) and prompt features f(x).

    Reads JSONL rows: `prompt`+`response`(+`ratings`), `prompt`+`chosen`+`rejected`(+`subset`),
    OpenAI `messages`, or TRL conversational pairs. Writes one safetensors file with
    `response_features` ([N,d] or [N,2,d]), `prompt_features`, `labels`, lengths and ids.

    Example: `armo extract ratings.jsonl -o ratings.features.safetensors --max-length 1024 --overflow truncate-prompt`
    """
    from .extract import extract as run

    cfg = _config(ExtractConfig, locals())
    _run(lambda: run(cfg))


@app.command()
def merge(
    shards: List[str] = A(MergeConfig, "shards"),
    output: str = O(MergeConfig, "output", "--output", "-o", required=True),
    allow_partial: bool = O(MergeConfig, "allow_partial"),
):
    """Join the shards of one extract job into one features file, in the original row order.

    Refuses shards of different jobs, a shard given twice and missing shards (unless --allow-partial).

    Example: `armo merge feats.0.safetensors feats.1.safetensors -o feats.safetensors`
    """
    from .extract import merge as run

    cfg = _config(MergeConfig, locals())
    rep = _run(lambda: run(cfg))
    console.print(f"[green]merged[/green] {rep['shards']} of {rep['num_shards']} shards into {output}: {rep['rows']} rows",
                  highlight=False)
    if rep["missing_shards"]:
        from .console import warn

        warn(f"missing shards: {', '.join(map(str, rep['missing_shards']))} (merged with --allow-partial)")


@app.command("fit-regression")
def fit_regression(
    features: List[str] = A(RegressionConfig, "features", required=False),
    output: str = O(RegressionConfig, "output", "--output", "-o"),
    model_dir: Optional[str] = O(RegressionConfig, "model_dir"),
    alphas: Optional[str] = O(RegressionConfig, "alphas", spec=True),
    val_fraction: float = O(RegressionConfig, "val_fraction"),
    seed: int = O(RegressionConfig, "seed"),
    refit: str = O(RegressionConfig, "refit"),
    intercept: bool = O(RegressionConfig, "intercept"),
    ranges: List[str] = O(RegressionConfig, "ranges", "--range", spec=True),
    length_objective: Optional[str] = O(RegressionConfig, "length_objective"),
    pairs: List[str] = O(RegressionConfig, "pairs"),
    preference_objective: Optional[str] = O(RegressionConfig, "preference_objective"),
    preference_folds: int = O(RegressionConfig, "preference_folds"),
    min_rows: int = O(RegressionConfig, "min_rows"),
    strict: bool = O(RegressionConfig, "strict"),
    device: Optional[str] = O(RegressionConfig, "device"),
    json: Optional[str] = O(RegressionConfig, "json"),
    quiet: bool = O(RegressionConfig, "quiet", "--quiet", "-q"),
):
    """Stage 1: ridge regression from response features to k ratings, one strength per objective.

    Reads extract outputs (labels NaN where missing); writes W (k x d), scales, chosen strengths and
    validation metrics to a safetensors artifact. With --pairs and --preference-objective, one more
    objective is a Bradley-Terry head fitted on pairs (ratings then become optional).

    Example: `armo fit-regression ratings.features.safetensors --length-objective verbosity -o regression.safetensors`
    """
    from .model import fit_into_model_dir
    from .configs import DEFAULT_ALPHAS
    from .regression import fit_regression as run

    def go():
        cfg = _config(RegressionConfig, locals_, alphas=parse_alphas(alphas, DEFAULT_ALPHAS), ranges=parse_ranges(ranges))
        fit_into_model_dir(lambda: run(cfg), cfg.output, cfg.model_dir, "regression")

    locals_ = {k: v for k, v in locals().items() if k not in ("alphas", "ranges")}
    _run(go)


@app.command("fit-decorrelation")
def fit_decorrelation(
    features: List[str] = A(DecorrelationConfig, "features"),
    regression: str = O(DecorrelationConfig, "regression", "--regression", "-r", required=True),
    output: str = O(DecorrelationConfig, "output", "--output", "-o"),
    model_dir: Optional[str] = O(DecorrelationConfig, "model_dir"),
    verbosity: str = O(DecorrelationConfig, "verbosity"),
    method: str = O(DecorrelationConfig, "method"),
    tolerance: float = O(DecorrelationConfig, "tolerance"),
    lambda_range: Optional[str] = O(DecorrelationConfig, "lambda_range", spec=True),
    min_rows: int = O(DecorrelationConfig, "min_rows"),
    json: Optional[str] = O(DecorrelationConfig, "json"),
    quiet: bool = O(DecorrelationConfig, "quiet", "--quiet", "-q"),
):
    """Remove each objective's correlation with verbosity: r_i' = r_i - lambda_i r_v.

    Reads a regression artifact and reference features; writes ArmoRM's transform matrix T (k x k).

    Example: `armo fit-decorrelation pairs.features.safetensors -r regression.safetensors -o decorrelation.safetensors`
    """
    from .decorrelation import fit_decorrelation as run
    from .model import fit_into_model_dir

    values = {k: v for k, v in locals().items() if k != "lambda_range"}

    def go():
        cfg = _config(DecorrelationConfig, values, lambda_range=parse_lambda_range(lambda_range))
        fit_into_model_dir(lambda: run(cfg), cfg.output, cfg.model_dir, "decorrelation")

    _run(go)


@app.command("fit-gating")
def fit_gating(
    features: List[str] = A(GatingConfig, "features"),
    regression: str = O(GatingConfig, "regression", "--regression", "-r", required=True),
    decorrelation: Optional[str] = O(GatingConfig, "decorrelation", "--decorrelation", "-t"),
    output: str = O(GatingConfig, "output", "--output", "-o"),
    model_dir: Optional[str] = O(GatingConfig, "model_dir"),
    hidden_dim: int = O(GatingConfig, "hidden_dim"),
    n_hidden: int = O(GatingConfig, "n_hidden"),
    dropout: float = O(GatingConfig, "dropout"),
    temperature: float = O(GatingConfig, "temperature"),
    lr: float = O(GatingConfig, "lr"),
    weight_decay: float = O(GatingConfig, "weight_decay"),
    batch_size: int = O(GatingConfig, "batch_size"),
    steps: int = O(GatingConfig, "steps"),
    val_fraction: float = O(GatingConfig, "val_fraction"),
    eval_every: int = O(GatingConfig, "eval_every"),
    patience: int = O(GatingConfig, "patience"),
    seed: int = O(GatingConfig, "seed"),
    json: Optional[str] = O(GatingConfig, "json"),
    quiet: bool = O(GatingConfig, "quiet", "--quiet", "-q"),
):
    """Stage 2: train the MoE gate on pairs (Bradley-Terry), backbone and regression frozen.

    Reads pair features, a regression and a decorrelation artifact; writes the gate's weights and a
    comparison with uniform weights, the best single objective and a linear BT head.

    Example: `armo fit-gating pairs.features.safetensors -r regression.safetensors -t decorrelation.safetensors -o gating.safetensors`
    """
    from .gating import fit_gating as run
    from .model import fit_into_model_dir

    cfg = _config(GatingConfig, locals())
    _run(lambda: fit_into_model_dir(lambda: run(cfg), cfg.output, cfg.model_dir, "gating"))


@app.command()
def assemble(
    output: str = A(AssembleConfig, "output"),
    regression: str = O(AssembleConfig, "regression", "--regression", "-r", required=True),
    gating: str = O(AssembleConfig, "gating", "--gating", "-g", required=True),
    decorrelation: Optional[str] = O(AssembleConfig, "decorrelation", "--decorrelation", "-t"),
    force: bool = O(AssembleConfig, "force"),
):
    """Build a model directory (armo.json + parts) from fitted artifacts, checking that they agree.

    Example: `armo assemble my-model -r regression.safetensors -t decorrelation.safetensors -g gating.safetensors`
    """
    from .model import assemble as run

    m = _run(lambda: run(output, regression, gating, decorrelation, force))
    console.print(f"[green]model[/green] {output}: {len(m.objectives)} objectives on {m.backbone['name']}", highlight=False)


# What score and evaluate share (ModelInputConfig): a model, rows or features, how to run the backbone.
MODEL_INPUT = [("model", Optional[str], ("--model", "-m")), ("features", Optional[str], ()),
               ("weights", Optional[str], ()), ("objective", Optional[str], ()), ("backbone", Optional[str], ()),
               ("device", Optional[str], ()), ("dtype", Optional[str], ()), ("max_length", Optional[int], ()),
               ("overflow", str, ()), ("on_error", str, ()), ("batch_tokens", Optional[int], ()),
               ("quiet", bool, ("--quiet", "-q"))]


def with_model_input(cls: type):
    """Add the shared ModelInputConfig options to a command (written once, received as **shared)."""
    def deco(fn):
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=O(cls, name, *flags), annotation=tp)
                  for name, tp, flags in MODEL_INPUT]
        fn.__signature__ = sig.replace(parameters=own + shared)
        return fn
    return deco


@app.command()
@with_model_input(ScoreConfig)
def score(
    input: Optional[str] = A(ScoreConfig, "input", required=False),
    output: str = O(ScoreConfig, "output", "--output", "-o"),
    format: Optional[str] = O(ScoreConfig, "format"),
    top_k: int = O(ScoreConfig, "top_k"),
    **shared,
):
    """Score responses and explain the score: rewards per objective, gate weights, coefficients.

    Writes one JSON line per row (order kept): `id`, `score`, `rewards`, `rewards_original`, `gating`,
    `coefficients`, `top_objectives`; for pairs `chosen`, `rejected`, `margin`, `preferred`.

    Example: `cat rows.jsonl | armo score -m my-model - | jq .score`
    """
    from .scoring import score as run

    cfg = _config(ScoreConfig, {**locals(), **shared})
    _run(lambda: run(cfg))


@app.command()
@with_model_input(EvaluateConfig)
def evaluate(
    input: Optional[str] = A(EvaluateConfig, "input", required=False),
    ties: str = O(EvaluateConfig, "ties"),
    output: Optional[str] = O(EvaluateConfig, "output", "--output", "-o"),
    pairs_output: Optional[str] = O(EvaluateConfig, "pairs_output"),
    bootstrap: int = O(EvaluateConfig, "bootstrap"),
    seed: int = O(EvaluateConfig, "seed"),
    **shared,
):
    """Accuracy per subset with 95% intervals, RewardBench sections, ties and length bias.

    Example: `armo evaluate -m my-model dev-eval.jsonl.gz -o report.json`
    """
    from .scoring import evaluate as run

    cfg = _config(EvaluateConfig, {**locals(), **shared})
    _run(lambda: run(cfg))


@app.command()
def sample(
    input: str = A(SampleConfig, "input"),
    output: str = O(SampleConfig, "output", "--output", "-o"),
    n: Optional[int] = O(SampleConfig, "n"),
    seed: int = O(SampleConfig, "seed"),
    where: List[str] = O(SampleConfig, "where"),
    skip: int = O(SampleConfig, "skip"),
):
    """Write a seeded random slice of a JSONL file, optionally filtered by field prefix.

    Example: `armo sample pairs.jsonl.gz --where source=hh_rlhf --n 500 --seed 1 -o train.jsonl`
    """
    from .sampling import sample as run

    cfg = _config(SampleConfig, locals())
    k = _run(lambda: run(cfg))
    console.print(f"[green]sampled[/green] {k} rows", highlight=False)


@app.command("export")
def export_(
    output: str = A(ExportConfig, "output"),
    model: Optional[str] = O(ExportConfig, "model", "--model", "-m"),
    backbone: Optional[str] = O(ExportConfig, "backbone"),
    force: bool = O(ExportConfig, "force"),
):
    """Write an ArmoRM-format Hugging Face folder (LlamaForRewardModelWithGating, safetensors).

    It loads with `AutoModelForSequenceClassification.from_pretrained(OUT, trust_remote_code=True)`
    and returns `rewards`, `gating_output`, `prompt_embedding`, `score`.

    Example: `armo export -m my-model my-model-hf`
    """
    from .hf_format import export_model

    out = _run(lambda: export_model(model, output, backbone, force))
    console.print(f"[green]exported[/green] {out}", highlight=False)


@app.command("import")
def import_(
    source: str = A(ImportConfig, "source"),
    output: str = O(ImportConfig, "output", "--output", "-o", required=True),
    objectives: Optional[str] = O(ImportConfig, "objectives"),
    force: bool = O(ImportConfig, "force"),
):
    """Read an ArmoRM-format checkpoint into an armo model directory, without running its code.

    Reads config.json and the safetensors head tensors only (no pickle). The backbone stays where it is.

    Example: `armo import RLHFlow/ArmoRM-Llama3-8B-v0.1 -o armorm`
    """
    from .hf_format import import_checkpoint

    names = [o.strip() for o in objectives.split(",")] if objectives else None
    _run(lambda: import_checkpoint(source, output, names, force))


# Each command and the config its options come from (tests check defaults and help against it).
COMMAND_CONFIGS = {"extract": ExtractConfig, "merge": MergeConfig, "fit-regression": RegressionConfig,
                   "fit-decorrelation": DecorrelationConfig, "fit-gating": GatingConfig, "assemble": AssembleConfig,
                   "score": ScoreConfig, "evaluate": EvaluateConfig, "sample": SampleConfig, "export": ExportConfig,
                   "import": ImportConfig}


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
        console.print(f"[red]error:[/red] {where}: {one_line(e.format_message())} (see {where} --help)",
                      highlight=False, soft_wrap=True)
        sys.exit(EXIT_BAD_INPUT)
    except other as e:
        console.print(f"[red]error:[/red] {one_line(e.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_BAD_INPUT)
    except (*abort, KeyboardInterrupt):
        console.print("[yellow]interrupted[/yellow]", highlight=False)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
