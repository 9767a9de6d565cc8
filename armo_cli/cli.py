"""The `armo` command: thin Typer functions that parse options into a config and call one library function."""
from __future__ import annotations

import os
import sys
from typing import Callable, List, NoReturn, Optional, TypeVar

import typer

from . import __version__
from .console import console
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


def _range(specs: List[str]) -> dict:
    out = {}
    for s in specs or []:
        try:
            name, lohi = s.split("=", 1)
            lo, hi = (float(x) for x in lohi.split(":"))
        except ValueError:
            raise ArmoError(f"--range {s!r}: expected NAME=LO:HI") from None
        if hi <= lo:
            raise ArmoError(f"--range {s!r}: HI must be greater than LO")
        out[name] = (lo, hi)
    return out


def _lohi(spec: Optional[str]):
    if spec is None:
        return None
    try:
        lo, hi = spec.split(":")
        return (float(lo) if lo else -float("inf"), float(hi) if hi else float("inf"))
    except ValueError:
        raise ArmoError(f"--lambda-range {spec!r}: expected LO:HI") from None


def _fit(fit: Callable[[], object], model_dir: Optional[str], part: str, artifact: str) -> None:
    """Run a fit stage, then (with --model-dir) register its artifact in the model directory."""
    if model_dir:
        from .model import check_model_dir

        check_model_dir(model_dir)  # before the fit: a folder armo may not write is refused up front
    fit()
    if model_dir:
        from .model import register_part

        register_part(model_dir, part, artifact)
        console.print(f"[green]{part}[/green] registered in {model_dir}", highlight=False)


# Options shared by commands that run the backbone.
BackboneOpt = typer.Option("smollm2-135m-instruct", "--backbone", "-b",
                           help="Named backbone, GGUF file, local folder or HF hub id.")
DeviceOpt = typer.Option(None, "--device", help="cuda, mps, cpu (default: best available).")
DtypeOpt = typer.Option(None, "--dtype", help="bf16, fp16, fp32 (default: bf16 on CUDA, else fp32).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar or tables.")
ModelDirOpt = typer.Option(None, "--model-dir", help="Also register the artifact in this model directory.")
JsonOpt = typer.Option(None, "--json", help="Write the report as JSON.")
# score and evaluate run the model's backbone on INPUT with these
ModelBackboneOpt = typer.Option(None, "--backbone", help="Override where the model's backbone is loaded from.")
MaxLengthOpt = typer.Option(None, "--max-length", help="Longest prompt+response in tokens.")
OverflowOpt = typer.Option("error", "--overflow", help="Over --max-length: error | skip | truncate-prompt.")
OnErrorOpt = typer.Option("error", "--on-error", help="Bad rows: error | skip (listed on stderr).")
BatchTokensOpt = typer.Option(None, "--batch-tokens", help="Token budget per batch.")
ForceOpt = typer.Option(False, "--force", help="Replace a non-empty output folder that armo did not write.")


@app.command()
def extract(
    input: Optional[str] = typer.Argument(None, help="JSONL file (.gz ok) or '-' for stdin."),
    output: str = typer.Option(..., "--output", "-o", help="Features file to write (.safetensors)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="datasets.load_dataset name or local file, instead of INPUT."),
    split: str = typer.Option("train", "--split"),
    backbone: str = BackboneOpt,
    device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DtypeOpt,
    attn_implementation: str = typer.Option("sdpa", "--attn-implementation"),
    gate_rule: str = typer.Option("generation-prompt", "--gate-rule", help="Where f(x) is read: generation-prompt | armo-eot."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Longest prompt+response in tokens."),
    overflow: str = typer.Option("error", "--overflow", help="Over --max-length: error | skip | truncate-prompt."),
    on_error: str = typer.Option("error", "--on-error", help="Bad rows: error | skip (listed in the report)."),
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", help="Token budget per batch (default 2048 CPU, 32768 GPU)."),
    max_padding: Optional[float] = typer.Option(None, "--max-padding", help="Largest padded share of a batch (default 0.05 CPU, 0.25 GPU)."),
    chunk_size: int = typer.Option(256, "--chunk-size", help="Rows per resumable chunk."),
    resume: bool = typer.Option(False, "--resume", help="Reuse finished chunks of an interrupted run."),
    num_shards: Optional[int] = typer.Option(None, "--num-shards", help="Split the work into N disjoint shards."),
    shard_index: Optional[int] = typer.Option(None, "--shard-index", help="Which shard this process writes."),
    quiet: bool = QuietOpt,
):
    """Read conversations and write response features f(x,y) and prompt features f(x).

    Reads JSONL rows: `prompt`+`response`(+`ratings`), `prompt`+`chosen`+`rejected`(+`subset`),
    OpenAI `messages`, or TRL conversational pairs. Writes one safetensors file with
    `response_features` ([N,d] or [N,2,d]), `prompt_features`, `labels`, lengths and ids.

    Example: `armo extract ratings.jsonl -o ratings.features.safetensors --max-length 1024 --overflow truncate-prompt`
    """
    from .extract import ExtractConfig, extract as run

    cfg = ExtractConfig(input=input, output=output, dataset=dataset, split=split, backbone=backbone, device=device,
                        dtype=dtype, attn_implementation=attn_implementation, gate_rule=gate_rule, max_length=max_length,
                        overflow=overflow, on_error=on_error, batch_tokens=batch_tokens, max_padding=max_padding, chunk_size=chunk_size,
                        resume=resume, num_shards=num_shards, shard_index=shard_index, quiet=quiet)
    _run(lambda: run(cfg))


@app.command()
def merge(
    shards: List[str] = typer.Argument(..., help="Shard files written with --num-shards/--shard-index."),
    output: str = typer.Option(..., "--output", "-o", help="Features file to write."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Merge the shards given even if some are missing (listed)."),
):
    """Join the shards of one extract job into one features file, in the original row order.

    Refuses shards of different jobs, a shard given twice and missing shards (unless --allow-partial).

    Example: `armo merge feats.0.safetensors feats.1.safetensors -o feats.safetensors`
    """
    from .extract import merge_features

    rep = _run(lambda: merge_features(shards, output, allow_partial))
    console.print(f"[green]merged[/green] {rep['shards']} of {rep['num_shards']} shards into {output}: {rep['rows']} rows",
                  highlight=False)
    if rep["missing_shards"]:
        from .console import warn

        warn(f"missing shards: {', '.join(map(str, rep['missing_shards']))} (merged with --allow-partial)")


@app.command("fit-regression")
def fit_regression(
    features: List[str] = typer.Argument(..., help="Extract outputs with ratings."),
    output: str = typer.Option("regression.safetensors", "--output", "-o"),
    model_dir: Optional[str] = ModelDirOpt,
    alphas: Optional[str] = typer.Option(None, "--alphas", help="Comma-separated grid (default 1e-4,...,1e4)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction"),
    seed: int = typer.Option(0, "--seed"),
    refit: str = typer.Option("all", "--refit", help="all: refit on every labelled row; train: keep the train-only fit."),
    intercept: bool = typer.Option(False, "--intercept", help="Fit an intercept (the published model has none)."),
    range_: List[str] = typer.Option([], "--range", help="NAME=LO:HI declared rating range (repeatable)."),
    length_objective: Optional[str] = typer.Option(None, "--length-objective", help="Add an objective from log response length, e.g. verbosity."),
    min_rows: int = typer.Option(20, "--min-rows"),
    strict: bool = typer.Option(False, "--strict", help="Fail instead of skipping objectives with too few rows."),
    device: Optional[str] = DeviceOpt,
    json_out: Optional[str] = JsonOpt,
    quiet: bool = QuietOpt,
):
    """Stage 1: ridge regression from response features to k ratings, one strength per objective.

    Reads extract outputs (labels NaN where missing); writes W (k x d), scales, chosen strengths and
    validation metrics to a safetensors artifact.

    Example: `armo fit-regression ratings.features.safetensors --length-objective verbosity -o regression.safetensors`
    """
    from .regression import DEFAULT_ALPHAS, RegressionConfig, fit_regression as run

    def go():
        try:
            grid = [float(a) for a in alphas.split(",")] if alphas else list(DEFAULT_ALPHAS)
        except ValueError:
            raise ArmoError(f"--alphas {alphas!r}: expected comma-separated numbers") from None
        cfg = RegressionConfig(features=features, output=output, alphas=grid, val_fraction=val_fraction, seed=seed,
                               refit=refit, intercept=intercept, ranges=_range(range_), length_objective=length_objective,
                               min_rows=min_rows, strict=strict, device=device, json=json_out, quiet=quiet)
        _fit(lambda: run(cfg), model_dir, "regression", output)

    _run(go)


@app.command("fit-decorrelation")
def fit_decorrelation(
    features: List[str] = typer.Argument(..., help="Reference features (pairs or single responses)."),
    regression: str = typer.Option(..., "--regression", "-r"),
    output: str = typer.Option("decorrelation.safetensors", "--output", "-o"),
    model_dir: Optional[str] = ModelDirOpt,
    verbosity: str = typer.Option("verbosity", "--verbosity", help="The verbosity objective's name."),
    method: str = typer.Option("spearman", "--method", help="spearman (paper) or pearson."),
    tolerance: float = typer.Option(1e-3, "--tolerance"),
    lambda_range: Optional[str] = typer.Option(None, "--lambda-range", help="LO:HI bounds on lambda."),
    json_out: Optional[str] = JsonOpt,
    quiet: bool = QuietOpt,
):
    """Remove each objective's correlation with verbosity: r_i' = r_i - lambda_i r_v.

    Reads a regression artifact and reference features; writes ArmoRM's transform matrix T (k x k).

    Example: `armo fit-decorrelation pairs.features.safetensors -r regression.safetensors -o decorrelation.safetensors`
    """
    from .decorrelation import DecorrelationConfig, fit_decorrelation as run

    _run(lambda: _fit(lambda: run(DecorrelationConfig(
        regression=regression, features=features, output=output, verbosity=verbosity, method=method,
        tolerance=tolerance, lambda_range=_lohi(lambda_range), json=json_out, quiet=quiet)),
        model_dir, "decorrelation", output))


@app.command("fit-gating")
def fit_gating(
    features: List[str] = typer.Argument(..., help="Pair features (extract output of chosen/rejected rows)."),
    regression: str = typer.Option(..., "--regression", "-r"),
    decorrelation: Optional[str] = typer.Option(None, "--decorrelation", "-t", help="Transform (identity if omitted)."),
    output: str = typer.Option("gating.safetensors", "--output", "-o"),
    model_dir: Optional[str] = ModelDirOpt,
    hidden_dim: int = typer.Option(1024, "--hidden-dim"),
    n_hidden: int = typer.Option(3, "--n-hidden"),
    dropout: float = typer.Option(0.2, "--dropout"),
    temperature: float = typer.Option(10.0, "--temperature"),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(0.01, "--weight-decay"),
    batch_size: int = typer.Option(1024, "--batch-size"),
    steps: int = typer.Option(2000, "--steps"),
    val_fraction: float = typer.Option(0.1, "--val-fraction"),
    eval_every: int = typer.Option(50, "--eval-every"),
    patience: int = typer.Option(20, "--patience"),
    seed: int = typer.Option(0, "--seed"),
    json_out: Optional[str] = JsonOpt,
    quiet: bool = QuietOpt,
):
    """Stage 2: train the MoE gate on pairs (Bradley-Terry), backbone and regression frozen.

    Reads pair features, a regression and a decorrelation artifact; writes the gate's weights and a
    comparison with uniform weights, the best single objective and a linear BT head.

    Example: `armo fit-gating pairs.features.safetensors -r regression.safetensors -t decorrelation.safetensors -o gating.safetensors`
    """
    from .gating import GatingConfig, fit_gating as run

    cfg = GatingConfig(features=features, regression=regression, decorrelation=decorrelation, output=output,
                       hidden_dim=hidden_dim, n_hidden=n_hidden, dropout=dropout, temperature=temperature, lr=lr,
                       weight_decay=weight_decay, batch_size=batch_size, steps=steps, val_fraction=val_fraction,
                       eval_every=eval_every, patience=patience, seed=seed, json=json_out, quiet=quiet)
    _run(lambda: _fit(lambda: run(cfg), model_dir, "gating", output))


@app.command()
def assemble(
    output: str = typer.Argument(..., help="Model directory to write."),
    regression: str = typer.Option(..., "--regression", "-r"),
    gating: str = typer.Option(..., "--gating", "-g"),
    decorrelation: Optional[str] = typer.Option(None, "--decorrelation", "-t"),
    force: bool = ForceOpt,
):
    """Build a model directory (armo.json + parts) from fitted artifacts, checking that they agree.

    Example: `armo assemble my-model -r regression.safetensors -t decorrelation.safetensors -g gating.safetensors`
    """
    from .model import assemble as run

    m = _run(lambda: run(output, regression, gating, decorrelation, force))
    console.print(f"[green]model[/green] {output}: {len(m.objectives)} objectives on {m.backbone['name']}", highlight=False)


@app.command()
def score(
    input: Optional[str] = typer.Argument(None, help="JSONL rows (any extract shape) or '-'."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory (default: the shipped model)."),
    features: Optional[str] = typer.Option(None, "--features", help="Score extracted features instead of INPUT."),
    output: str = typer.Option("-", "--output", "-o"),
    format: Optional[str] = typer.Option(None, "--format", help="jsonl | table (default: table on a terminal)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="NAME=W,... fixed weights instead of the gate."),
    objective: Optional[str] = typer.Option(None, "--objective", help="Use one (decorrelated) objective as the score."),
    top_k: int = typer.Option(3, "--top-k"),
    backbone: Optional[str] = ModelBackboneOpt,
    device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DtypeOpt,
    max_length: Optional[int] = MaxLengthOpt,
    overflow: str = OverflowOpt,
    on_error: str = OnErrorOpt,
    batch_tokens: Optional[int] = BatchTokensOpt,
    quiet: bool = QuietOpt,
):
    """Score responses and explain the score: rewards per objective, gate weights, coefficients.

    Writes one JSON line per row (order kept): `id`, `score`, `rewards`, `rewards_original`, `gating`,
    `coefficients`, `top_objectives`; for pairs `chosen`, `rejected`, `margin`, `preferred`.

    Example: `cat rows.jsonl | armo score -m my-model - | jq .score`
    """
    from .scoring import ScoreConfig, score as run

    fmt = format or ("table" if output == "-" and sys.stdout.isatty() else "jsonl")
    cfg = ScoreConfig(input=input, model=model, features=features, output=output, format=fmt, weights=weights,
                      objective=objective, top_k=top_k, backbone=backbone, device=device, dtype=dtype,
                      max_length=max_length, overflow=overflow, on_error=on_error, batch_tokens=batch_tokens,
                      quiet=quiet)
    _run(lambda: run(cfg))


@app.command()
def evaluate(
    input: Optional[str] = typer.Argument(None, help="Pairs JSONL with prompt, chosen, rejected, subset."),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    features: Optional[str] = typer.Option(None, "--features"),
    ties: str = typer.Option("loss", "--ties", help="loss (RewardBench: chosen must score higher) or half."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="report.json"),
    pairs_output: Optional[str] = typer.Option(None, "--pairs-output", help="Per-pair scores as JSONL."),
    weights: Optional[str] = typer.Option(None, "--weights"),
    objective: Optional[str] = typer.Option(None, "--objective"),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals."),
    backbone: Optional[str] = ModelBackboneOpt,
    device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DtypeOpt,
    max_length: Optional[int] = MaxLengthOpt,
    overflow: str = OverflowOpt,
    on_error: str = OnErrorOpt,
    batch_tokens: Optional[int] = BatchTokensOpt,
    quiet: bool = QuietOpt,
):
    """Accuracy per subset with 95% intervals, RewardBench sections, ties and length bias.

    Example: `armo evaluate -m my-model dev-eval.jsonl.gz -o report.json`
    """
    from .scoring import EvaluateConfig, evaluate as run

    cfg = EvaluateConfig(input=input, model=model, features=features, ties=ties, output=output,
                         pairs_output=pairs_output, weights=weights, objective=objective, bootstrap=bootstrap,
                         backbone=backbone, device=device, dtype=dtype, max_length=max_length, overflow=overflow,
                         on_error=on_error, batch_tokens=batch_tokens, quiet=quiet)
    _run(lambda: run(cfg))


@app.command()
def sample(
    input: str = typer.Argument(..., help="JSONL file (.gz ok) or '-'."),
    output: str = typer.Option("-", "--output", "-o"),
    n: Optional[int] = typer.Option(None, "--n", help="Rows to keep (default: all that match)."),
    seed: int = typer.Option(0, "--seed"),
    where: List[str] = typer.Option([], "--where", help="FIELD=PREFIX; rows matching any are kept (repeatable)."),
    skip: int = typer.Option(0, "--skip", help="Skip the first SKIP shuffled rows: disjoint slices with one seed."),
):
    """Write a seeded random slice of a JSONL file, optionally filtered by field prefix.

    Example: `armo sample pairs.jsonl.gz --where source=hh_rlhf --n 500 --seed 1 -o train.jsonl`
    """
    from .sampling import SampleConfig, sample as run

    k = _run(lambda: run(SampleConfig(input=input, output=output, n=n, seed=seed, where=where, skip=skip)))
    console.print(f"[green]sampled[/green] {k} rows", highlight=False)


@app.command("export")
def export_(
    output: str = typer.Argument(..., help="Hugging Face folder to write."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model directory (default: the shipped model)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Override where the backbone is loaded from."),
    force: bool = ForceOpt,
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
    source: str = typer.Argument(..., help="ArmoRM-format checkpoint: a local folder or a hub id."),
    output: str = typer.Option(..., "--output", "-o", help="armo model directory to write."),
    objectives: Optional[str] = typer.Option(None, "--objectives", help="Comma-separated objective names."),
    force: bool = ForceOpt,
):
    """Read an ArmoRM-format checkpoint into an armo model directory, without running its code.

    Reads config.json and the safetensors head tensors only (no pickle). The backbone stays where it is.

    Example: `armo import RLHFlow/ArmoRM-Llama3-8B-v0.1 -o armorm`
    """
    from .hf_format import import_checkpoint

    names = [o.strip() for o in objectives.split(",")] if objectives else None
    _run(lambda: import_checkpoint(source, output, names, force))


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
