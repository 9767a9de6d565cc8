"""Every command's typed config: the one home of each option's default, help and constraints.

Commands are thin functions over these (TRL's style): the CLI reads defaults and help from the fields
(`cli.config_command`), the library validates a config before any work (`options.validate`). Options that several
commands share are written once: groups as base classes (`FitOutputOptions`, `RunBackboneOptions`), single options
through the `*_HELP` wordings below. No torch here, so that `armo --help` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass

from .options import opt

BENCHMARK_NAMES = ("auto", "rewardbench", "rewardbench2", "rm-bench", "best-of-n", "pairs")  # benchmarks.BENCHMARKS
from .provenance import POOLINGS

PACKINGS = ("auto", "rows", "flex")  # extract's --packing (devices.choose_layout)

DEFAULT_BACKBONE = "smollm2-135m-instruct"
DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "auto")
GATE_RULE_NAMES = ("generation-prompt", "armo-eot")
OVERFLOW = ("error", "skip", "truncate-prompt")
ON_ERROR = ("error", "skip")
METHODS = ("spearman", "pearson")
TIES = ("loss", "half")
DEFAULT_ALPHAS = [10.0 ** e for e in range(-4, 5)]
ON_ERROR_HELP = "Bad rows: error | skip (skipped rows are listed on stderr and in the report)."
BACKBONE_HELP = "Named backbone, GGUF file, local folder, PEFT LoRA adapter folder or HF hub id."
BACKBONE_OVERRIDE_HELP = "Override where the model's backbone is loaded from."
DEVICE_HELP = "cuda, mps, cpu (default: best available)."
DTYPE_HELP = "bf16, fp16, fp32 (default: bf16 on CUDA, else fp32)."
MAX_LENGTH_HELP = "Longest prompt+response in tokens (default: the backbone's maximum positions)."
OVERFLOW_HELP = "Over the length limit: error | skip | truncate-prompt."
BATCH_TOKENS_HELP = "Token budget per forward batch (default 2048 on CPU, 65536 on CUDA, 32768 on MPS)."
QUIET_HELP = "No progress bar or tables."
LM_OBJECTIVES_HELP = ("LM objectives from the backbone's own LM head, comma-separated or 'all': lm-mean-logprob (the "
                      "response's mean token log-probability given the prompt), lm-pmi (the same minus that after an "
                      "empty prompt).")


NUM_SHARDS_HELP = "Split the work into N disjoint shards (under torchrun or accelerate: one per rank, by itself)."
SHARD_INDEX_HELP = "Which shard this process writes."


@dataclass
class ExtractConfig:
    input: str | None = opt(None, "JSONL file (.gz ok) or '-' for stdin.")
    output: str = opt("features.safetensors", "Features file to write (.safetensors).")
    dataset: str | None = opt(None, "datasets.load_dataset name or local file, instead of INPUT.")
    split: str = opt("train", "Dataset split (with --dataset).")
    backbone: str = opt(DEFAULT_BACKBONE, BACKBONE_HELP)
    device: str | None = opt(None, DEVICE_HELP)
    dtype: str | None = opt(None, DTYPE_HELP, choices=DTYPE_NAMES)
    attn_implementation: str = opt("sdpa", "Attention kernel: sdpa or eager.", choices=("sdpa", "eager"))
    gate_rule: str = opt("generation-prompt", "Where f(x) is read: generation-prompt | armo-eot.", choices=GATE_RULE_NAMES)
    layer: int = opt(-1, "Hidden layer the features are read from: -1 the last (after the final norm, as ArmoRM), "
                         "0 the embeddings, i the output of block i; negative counts from the end.")
    pooling: str = opt("last", "f(x,y) from the response's tokens: last (its last token, as ArmoRM) | mean (their mean).",
                       choices=POOLINGS)
    lm_objectives: str | None = opt(None, LM_OBJECTIVES_HELP + " Read in the same pass, which then runs to the last "
                                          "layer; lm-pmi adds a second pass over the responses alone.")
    max_length: int | None = opt(None, MAX_LENGTH_HELP, min=1)
    overflow: str = opt("error", OVERFLOW_HELP, choices=OVERFLOW)
    on_error: str = opt("error", ON_ERROR_HELP, choices=ON_ERROR)
    batch_tokens: int | None = opt(None, BATCH_TOKENS_HELP, min=1)
    max_padding: float | None = opt(None, "Largest padded share of a batch (default 0.05 CPU, 0.5 with armo's own Llama "
                                          "forward, 0.10 CUDA, 0.25 MPS).", min=0.0, max=1.0)
    chunk_size: int | None = opt(None, "Rows per resumable chunk (default 256 on CPU, 4096 on an accelerator).", min=1)
    packing: str = opt("auto", "How a batch's rows are laid out: rows (one per padded row) | flex (all in one row under a "
                               "FlexAttention block mask: no padding; compiles for ~10 s per process) | auto (flex on "
                               "CUDA for jobs of 2M tokens or more).", choices=PACKINGS)
    resume: bool = opt(False, "Reuse finished chunks of an interrupted run.")
    num_shards: int | None = opt(None, NUM_SHARDS_HELP, min=1)
    shard_index: int | None = opt(None, SHARD_INDEX_HELP, min=0)
    quiet: bool = opt(False, QUIET_HELP)
    announce: bool = True  # say where the output went (off when score/evaluate extract to a temp file)


@dataclass
class TuneConfig:
    input: str | None = opt(None, "Pair rows (JSONL, .gz ok: 'chosen' and 'rejected' responses) to tune on.")
    output: str = opt("adapter", "Adapter folder to write (PEFT's format; --backbone takes it).")
    backbone: str = opt(DEFAULT_BACKBONE, "The base: named backbone, GGUF file, local folder or HF hub id.")
    device: str | None = opt(None, DEVICE_HELP)
    rank: int = opt(8, "LoRA rank.", min=1)
    alpha: float = opt(16.0, "LoRA alpha (the update is scaled by alpha / rank).", above=0.0)
    target_modules: str = opt("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                              "The blocks' linear layers that get an adapter, comma-separated.")
    layer: int = opt(-1, "Hidden layer the Bradley-Terry head reads, as extract's --layer (give the layer your features "
                         "will be read from): the blocks above it get no adapter and are not run in training.")
    pooling: str = opt("last", "The Bradley-Terry head reads the layer at: last (the response's last token) | mean.",
                       choices=POOLINGS)
    init_head: str | None = opt(None, "Start the Bradley-Terry head from an objective of a fitted regression "
                                      "(REGRESSION[:OBJECTIVE], default objective preference) read on the same backbone, "
                                      "--layer and --pooling, instead of zero: the adapter learns from the first step.")
    lr: float = opt(1e-4, "AdamW learning rate (adapter and head).", above=0.0)
    weight_decay: float = opt(0.0, "AdamW weight decay.", min=0.0)
    epochs: int = opt(1, "Passes over the pairs.", min=1)
    batch_pairs: int = opt(8, "Pairs per step (over all ranks under torchrun or accelerate: each takes its share).", min=1)
    grad_accum: int = opt(1, "Micro-batches each rank splits its share of a step into: the same gradient, less memory.",
                          min=1)
    bf16: bool = opt(False, "Run the backbone in bfloat16 autocast (CUDA only; the adapter, head and optimiser stay fp32).")
    gradient_checkpointing: bool = opt(False, "Recompute the blocks' activations in the backward pass: less memory for "
                                              "large backbones, about a third more time.")
    max_length: int | None = opt(512, "Longest prompt+response in tokens.", min=1)
    overflow: str = opt("truncate-prompt", OVERFLOW_HELP, choices=OVERFLOW)
    on_error: str = opt("error", ON_ERROR_HELP, choices=ON_ERROR)
    save_every: int = opt(25, "Steps between checkpoints that --resume continues from.", min=1)
    eval_pairs: int = opt(256, "Training pairs (a seeded sample) whose Bradley-Terry loss and accuracy are measured "
                               "before and after, for the report; 0 skips it (each costs a forward pass).", min=0)
    seed: int = opt(0, "Seed of the adapter's initialisation and the pairs' order.")
    resume: bool = opt(False, "Continue an interrupted run from its last checkpoint (same pairs and settings); a "
                              "finished adapter of the same run is up to date and left as it is.")
    force: bool = opt(False, "Replace a non-empty output folder that armo did not write.")
    quiet: bool = opt(False, QUIET_HELP)


@dataclass
class MergeConfig:
    shards: list[str] = opt(help="Shard files written with --num-shards/--shard-index.", default_factory=list)
    output: str = opt("features.safetensors", "Features file to write.")
    allow_partial: bool = opt(False, "Merge the shards given even if some are missing (they are listed).")


@dataclass
class FitOutputOptions:
    """What every fit stage writes beside its artifact, and how loudly."""

    json: str | None = opt(None, "Write the report as JSON.")
    model_dir: str | None = opt(None, "Also register the artifact in this model directory.")
    quiet: bool = opt(False, QUIET_HELP)


@dataclass
class RegressionConfig(FitOutputOptions):
    features: list[str] = opt(help="Extract outputs with ratings.", default_factory=list)
    output: str = opt("regression.safetensors", "Regression artifact to write.")
    alphas: list[float] = opt(help="Ridge strengths to choose from, per objective: A,B,... (default 1e-4,1e-3,...,1e4).", above=0.0,
                              default_factory=lambda: list(DEFAULT_ALPHAS))
    val_fraction: float = opt(0.2, "Share of rating rows held out to choose each ridge strength.", above=0.0, below=1.0)
    seed: int = opt(0, "Seed of the validation split and of the preference folds.")
    refit: str = opt("all", "all: refit on every labelled row; train: keep the train-only fit (paper).",
                     choices=("all", "train"))
    intercept: bool = opt(False, "Fit an intercept (the published model has none).")
    ranges: dict[str, tuple[float, float]] = opt(help="NAME=LO:HI declared rating range (repeatable).", flag="--range",
                                                 default_factory=dict)
    length_objective: str | None = opt(None, "Add an objective from log response length, e.g. verbosity.")
    style_objectives: str | None = opt(None, "Add style objectives read from each training response's own text, "
                                             "comma-separated: markdown (every markdown mark per token), or one kind "
                                             "(md-headers, md-list_items, md-emphasis, md-code, md-table_rows, md-math, "
                                             "md-quotes). Each is a ridge head like any objective; fit-decorrelation "
                                             "--against removes what the others share with it.")
    pairs: list[str] = opt(help="Pair features to fit --preference-objective from (repeatable).", default_factory=list)
    preference_objective: str | None = opt(None, "Add an objective fitted from --pairs by a Bradley-Terry head "
                                                 "(cross-fitted: a gate trained on those pairs sees out-of-fold rewards).")
    preference_folds: int = opt(5, "Folds of the preference head, by prompt: its strength C is chosen by cross-"
                                   "validation over them, and the gate's pairs get out-of-fold rewards from them.", min=2)
    lm_objectives: str | None = opt(None, LM_OBJECTIVES_HELP + " Added as objectives, each mapped onto [0,1] by its "
                                          "range over the training responses (--pairs when given); the features need "
                                          "them (extract --lm-objectives).")
    invariant_to: list[str] = opt(help="Pair features whose two sides say the same thing in two forms (markdown and "
                                       "plain, padded and not: studies/style_swaps.py), repeatable: the span of their "
                                       "feature differences is projected out before the rating and preference heads "
                                       "are fitted, so they cannot pay for form (the length and style heads still see "
                                       "it).", default_factory=list)
    invariant_rank: int = opt(8, "Directions of that span to project out, the largest first.", min=1)
    min_rows: int = opt(20, "Fewest labelled rows for an objective.", min=1)
    strict: bool = opt(False, "Fail instead of skipping objectives with too few rows.")
    device: str | None = opt(None, DEVICE_HELP)


@dataclass
class DecorrelationConfig(FitOutputOptions):
    regression: str = opt("regression.safetensors", "Regression artifact.")
    features: list[str] = opt(help="Reference features (pairs or single responses).", default_factory=list)
    output: str = opt("decorrelation.safetensors", "Decorrelation artifact to write.")
    verbosity: str = opt("verbosity", "The verbosity objective's name.")
    against: str | None = opt(None, "Objectives to decorrelate every objective from, comma-separated (default: "
                                    "--verbosity alone), e.g. verbosity,markdown: length and style at once. Several, or "
                                    "--within prompt, are solved in closed form for Pearson correlation (--method pearson).")
    within: str = opt("set", "Where the correlation is zeroed: set (over all reference responses, as ArmoRM) | prompt "
                             "(among each prompt's responses, where a pair's contrast lives).", choices=("set", "prompt"))
    method: str = opt("spearman", "spearman (paper) or pearson.", choices=METHODS)
    tolerance: float = opt(1e-3, "Largest |correlation| left after decorrelation.", above=0.0)
    lambda_range: tuple[float, float] | None = opt(None, "LO:HI bounds on lambda (either side may be empty).")
    min_rows: int = opt(10, "Fewest reference responses.", min=2)


@dataclass
class GatingConfig(FitOutputOptions):
    features: list[str] = opt(help="Pair features (extract output of chosen/rejected rows).", default_factory=list)
    regression: str = opt("regression.safetensors", "Regression artifact.")
    decorrelation: str | None = opt(None, "Transform (identity if omitted).")
    output: str = opt("gating.safetensors", "Gating artifact to write.")
    hidden_dim: int = opt(1024, "Width of the gate's hidden layers.", min=1)
    n_hidden: int = opt(3, "Hidden layers of the gate (0: linear).", min=0)
    dropout: float = opt(0.2, "Dropout between hidden layers.", min=0.0, below=1.0)
    temperature: float = opt(10.0, "Softmax temperature over the objectives.", above=0.0)
    logit_scale: float = opt(1.0, "Initial learnable scale of the weights.", above=0.0)
    lr: float = opt(1e-3, "AdamW learning rate.", above=0.0)
    weight_decay: float = opt(0.01, "AdamW weight decay.", min=0.0)
    batch_size: int = opt(1024, "Pairs per step.", min=1)
    steps: int | None = opt(None, "Most training steps (default: sized to the data: 30 passes over the training pairs, "
                                   "at least 200, at most 2000).", min=1)
    val_fraction: float = opt(0.1, "Share of prompts held out for validation and early stopping.", min=0.0, below=1.0)
    eval_every: int = opt(50, "Steps between validation evaluations.", min=1)
    patience: int = opt(20, "Evaluations without improvement before stopping.", min=1)
    seed: int = opt(0, "Seed of the split, the initialisation and the batches.")
    device: str | None = opt(None, DEVICE_HELP)


@dataclass
class AssembleConfig:
    output: str = opt("model", "Model directory to write.")
    regression: str = opt("regression.safetensors", "Regression artifact.")
    gating: str = opt("gating.safetensors", "Gating artifact.")
    decorrelation: str | None = opt(None, "Decorrelation artifact (identity if omitted).")
    force: bool = opt(False, "Replace a non-empty output folder that armo did not write.")
    ship_adapter: bool = opt(False, "Copy the LoRA adapter the heads were fitted on (armo tune-backbone) into the model, "
                                    "so that it scores wherever the folder goes.")


@dataclass
class RunBackboneOptions:
    """How a trained model's backbone is run (score, evaluate, serve)."""

    backbone: str | None = opt(None, BACKBONE_OVERRIDE_HELP)
    device: str | None = opt(None, DEVICE_HELP)
    dtype: str | None = opt(None, DTYPE_HELP, choices=DTYPE_NAMES)
    max_length: int | None = opt(None, MAX_LENGTH_HELP, min=1)
    batch_tokens: int | None = opt(None, BATCH_TOKENS_HELP, min=1)


@dataclass
class ModelInputConfig(RunBackboneOptions):
    """What `score` and `evaluate` share: a model, rows or features, and how to run the backbone."""

    input: str | None = opt(None, "JSONL rows (any extract shape) or '-'.")
    model: str | None = opt(None, "Model directory (default: the shipped model).")
    features: str | None = opt(None, "Score extracted features instead of INPUT.")
    dataset: str | None = opt(None, "Rows from a datasets name (allenai/reward-bench-2, THU-KEG/RM-Bench; needs the hub) "
                                    "or a local parquet / JSON / JSONL file, instead of INPUT.")
    split: str = opt("train", "Dataset split (with --dataset; RewardBench 2's is 'test').")
    weights: str | None = opt(None, "NAME=W,... fixed weights instead of the gate (finite; negative penalises).")
    objective: str | None = opt(None, "Use one (decorrelated) objective as the score.")
    overflow: str = opt("error", OVERFLOW_HELP, choices=OVERFLOW)
    on_error: str = opt("error", ON_ERROR_HELP, choices=ON_ERROR)
    quiet: bool = opt(False, QUIET_HELP)


@dataclass
class ScoreConfig(ModelInputConfig):
    output: str = opt("-", "Where to write the scores ('-': stdout).")
    format: str | None = opt(None, "jsonl | table (default: table on a terminal, else jsonl).", choices=("jsonl", "table"))
    top_k: int = opt(3, "Objectives listed in top_objectives.", min=1)
    resume: bool = opt(False, "With -o FILE: keep the rows an interrupted run (same model, settings and input) "
                              "already scored.")


@dataclass
class EvaluateConfig(ModelInputConfig):
    benchmark: str = opt("auto", "Whose scoring rule: auto (from the rows' shape and subsets) | rewardbench | "
                                 "rewardbench2 | rm-bench | best-of-n | pairs.", choices=BENCHMARK_NAMES)
    ties: str = opt("loss", "Pairs: loss (RewardBench: chosen must score higher) or half. Rows with lists of "
                            "responses follow their benchmark's own rule.", choices=TIES)
    output: str | None = opt(None, "Write the report as JSON (report.json).")
    pairs_output: str | None = opt(None, "Per-pair scores, gate weights, coefficients and rewards as JSONL.")
    html: str | None = opt(None, "Also write a self-contained HTML report (needs the report extra: matplotlib).")
    bootstrap: int = opt(1000, "Bootstrap resamples for the 95% intervals.", min=1)
    seed: int = opt(0, "Seed of the bootstrap.")
    resume: bool = opt(False, "With a file output: keep the pairs an interrupted run (same model, settings and "
                              "input) already scored.")


PAIR_RULES = ("best-worst", "best-random", "all")
PAIR_FORMATS = ("conversational", "standard")


@dataclass
class AnnotateConfig(ModelInputConfig):
    """`armo annotate`: a policy's samples, several per prompt, scored and turned into preference pairs."""

    input: str | None = opt(None, "JSONL rows of samples (a prompt and a list under responses, all_generated_responses "
                                  "or completions), or '-'.")
    output: str | None = opt(None, "The pairs file to write (JSONL, TRL's DPO format): one line per pair.")
    scores: str | None = opt(None, "Every response's score and explanation, one line per prompt (default: beside "
                                   "--output, PAIRS.scores.jsonl).")
    rule: str = opt("best-worst", "How pairs are picked among a prompt's distinct responses: best-worst (SimPO's and "
                                  "RLHFlow's) | best-random (the best against a random lower one) | all (every pair "
                                  "above --min-margin, largest margins first).", choices=PAIR_RULES)
    min_margin: float = opt(0.0, "A pair's score margin must be above this (ties never make a pair).", min=0.0)
    max_pairs: int | None = opt(None, "At most this many pairs per prompt (the largest margins).", min=1)
    require: list[str] = opt(help="OBJECTIVE>=X: a chosen response must have at least this reward on the objective "
                                  "(its rating scale mapped to 0..1), e.g. a safety floor (repeatable; rejected ones "
                                  "need not).",
                             default_factory=list)
    format: str = opt("conversational", "conversational (prompt, chosen and rejected as messages) | standard (plain "
                                        "strings; single-turn prompts only).", choices=PAIR_FORMATS)
    top_k: int = opt(3, "Objectives named in each pair's decided_by.", min=1)
    seed: int = opt(0, "Seed of best-random's pick (each prompt's own, from its id: shards and reruns agree).")
    resume: bool = opt(False, "Keep the prompts an interrupted run (same model, settings and input) already scored.")
    num_shards: int | None = opt(None, NUM_SHARDS_HELP + " Shards are contiguous: their files, concatenated in shard "
                                       "order, are one run's.", min=1)
    shard_index: int | None = opt(None, SHARD_INDEX_HELP, min=0)


@dataclass
class ReportConfig:
    report: str = opt("report.json", "An `armo evaluate -o` report.")
    pairs: str | None = opt(None, "Its `--pairs-output` records (default: the file the report names).")
    output: str | None = opt(None, "HTML file to write [default: report.html, replaced only if armo wrote it].")
    quiet: bool = opt(False, "Print nothing but errors.")


@dataclass
class SampleConfig:
    input: str = opt("-", "JSONL file (.gz ok) or '-'.")
    output: str = opt("-", "Where to write the slice ('-': stdout).")
    n: int | None = opt(None, "Rows to keep (default: all that match).", min=0)
    seed: int = opt(0, "Seed of the shuffle.")
    where: list[str] = opt(help="FIELD=PREFIX; rows matching any are kept (repeatable).", default_factory=list)
    skip: int = opt(0, "Skip the first SKIP shuffled rows: disjoint slices with one seed.", min=0)
    by_prompt: bool = opt(False, "Keep each prompt's rows together: --n and --skip cut between prompts, so slices "
                                 "taken with one seed share no prompt (--n may be exceeded by the last prompt's rows).")


@dataclass
class ExportConfig:
    output: str = opt("model-hf", "Hugging Face folder to write.")
    model: str | None = opt(None, "Model directory (default: the shipped model).")
    backbone: str | None = opt(None, BACKBONE_OVERRIDE_HELP)
    force: bool = opt(False, "Replace a non-empty output folder that armo did not write.")


@dataclass
class ImportConfig:
    source: str = opt("RLHFlow/ArmoRM-Llama3-8B-v0.1", "ArmoRM-format checkpoint: a local folder or a hub id.")
    output: str = opt("armorm", "armo model directory to write.")
    objectives: str | None = opt(None, "Comma-separated objective names (default: from the checkpoint).")
    force: bool = opt(False, "Replace a non-empty output folder that armo did not write.")


@dataclass
class ServeConfig(RunBackboneOptions):
    model: str | None = opt(None, "Model directory or exported folder (default: the shipped model).")
    host: str = opt("127.0.0.1", "Address to bind (set --api-key before binding anything but loopback).")
    port: int = opt(8000, "Port to listen on (0: a free one, printed at start).", min=0, max=65535)
    api_key: str | None = opt(None, "Require 'Authorization: Bearer KEY' on every route but /health "
                                    "(default: the ARMO_API_KEY environment variable, if set).")
    max_batch: int = opt(64, "Most rows the worker scores in one batch (1: no batching).", min=1)
    max_wait_ms: float = opt(50.0, "Longest a batch waits for the clients seen during the last batch to come back "
                             "(a lone client never waits).", min=0.0)
    max_queue: int = opt(1024, "Requests that may wait; beyond it: HTTP 503 with Retry-After.", min=1)
    max_rows: int = opt(1024, "Most rows in one request.", min=1)
    max_body_mb: float = opt(16.0, "Largest request body in MB.", above=0.0)
    overflow: str = opt("error", "Over the length limit: error (HTTP 413) | truncate-prompt.", choices=("error", "truncate-prompt"))
    max_padding: float | None = opt(None, "Largest padded share of a forward batch (default: 0.05 on CPU, 0.5 with armo's "
                                          "own Llama forward, 0.10 on CUDA, 0.25 on MPS).", min=0.0, max=1.0)
    shutdown_timeout: float = opt(30.0, "On SIGTERM or Ctrl-C: seconds in-flight requests may still take; then they are "
                                        "abandoned (HTTP 503). A second signal exits at once.", min=0.0)
    devices: str | None = opt(None, "One worker per device, e.g. cuda:0,cuda:1: a model copy each, one queue and one "
                                    "port in front; a batch goes to whichever worker is free.")
    workers: int | None = opt(None, "Workers on --device (default 1); on the CPU the cores are split between them.",
                              min=1)
    quiet: bool = opt(False, "No access log.")

