"""Input rows: the accepted JSONL shapes, normalised to one `Example`."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import ArmoError, one_line
from .jobfiles import output_lock
from .jsonl import iter_jsonl, sha256_json, spool_stdin, strict_json

Message = dict[str, str]
ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class Example:
    """One conversation prompt with one response (ratings), two (chosen, rejected), or lists of chosen and rejected
    responses (RewardBench 2, RM-Bench, best-of-n: `responses` is the chosen ones, then the rejected ones, and
    `n_chosen` says where they part)."""

    id: str
    prompt: list[Message]
    responses: list[str]
    ratings: dict[str, float] = field(default_factory=dict)
    subset: str | None = None
    line: int = 0
    n_chosen: int | None = None  # set for a row whose chosen and rejected are lists

    @property
    def is_pair(self) -> bool:
        return len(self.responses) == 2 and self.n_chosen is None

    @property
    def is_list(self) -> bool:
        return self.n_chosen is not None


class RowError(ArmoError):
    pass


def _text(value: str, where: str, fieldname: str) -> str:
    """A string that can be tokenised: JSON allows lone surrogates (\\ud800), UTF-8 does not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"{where}: field '{fieldname}': invalid Unicode (a lone surrogate)") from None
    return value


def _messages(value: Any, where: str, fieldname: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise RowError(f"{where}: field '{fieldname}': expected a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RowError(f"{where}: field '{fieldname}[{i}]': expected {{'role': str, 'content': str}}")
        if m["role"] not in ROLES:
            raise RowError(f"{where}: field '{fieldname}[{i}].role': unknown role {m['role']!r}")
        out.append({"role": m["role"], "content": _text(m["content"], where, f"{fieldname}[{i}].content")})
    return out


def _prompt(value: Any, where: str) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{where}: field 'prompt': empty")
        return [{"role": "user", "content": _text(value, where, "prompt")}]
    msgs = _messages(value, where, "prompt")
    if msgs[-1]["role"] != "user":
        raise RowError(f"{where}: field 'prompt': the last message must be a user turn, found {msgs[-1]['role']!r}")
    return msgs


def _response(value: Any, where: str, fieldname: str) -> tuple[list[Message], str]:
    """A response is a string, or a list of messages ending with the assistant's (TRL form).

    Returns (extra history to append to the prompt, response text)."""
    if isinstance(value, str):
        text = _text(value, where, fieldname)
        extra: list[Message] = []
    elif isinstance(value, list):
        msgs = _messages(value, where, fieldname)
        if msgs[-1]["role"] != "assistant":
            raise RowError(f"{where}: field '{fieldname}': the last message must be the assistant's")
        extra, text = msgs[:-1], msgs[-1]["content"]
    elif value is None:
        raise RowError(f"{where}: field '{fieldname}': missing")
    else:
        raise RowError(f"{where}: field '{fieldname}': expected a string or a list of messages, got {type(value).__name__}")
    return extra, text


def _ratings(value: Any, where: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RowError(f"{where}: field 'ratings': expected an object {{objective: number}}")
    out = {}
    for k, v in value.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RowError(f"{where}: field 'ratings.{k}': not a number ({v!r})")
        try:
            x = float(v)
        except OverflowError:  # an integer too large for a float
            x = math.inf
        if not math.isfinite(x):
            raise RowError(f"{where}: field 'ratings.{k}': not a finite number")
        out[_text(str(k), where, "ratings")] = x
    return out


def _response_list(value: Any, where: str, fieldname: str) -> list[str] | None:
    """A list of responses (strings), as RewardBench 2, RM-Bench and RMB best-of-n publish them; None for a single
    response (a string, or a list of messages in TRL's conversational form)."""
    if not isinstance(value, list) or (value and not all(isinstance(v, str) for v in value)):
        return None
    if not value:
        raise RowError(f"{where}: field '{fieldname}': an empty list of responses")
    return [_text(v, where, f"{fieldname}[{i}]") for i, v in enumerate(value)]


def as_pairs(examples: Iterable[Example]) -> Iterator[Example]:
    """Rows with lists of responses as the pairs they hold, each chosen response against each rejected one (a best-of-n
    row with n losers is n pairs, an RM-Bench row 9): what a features file and the gate take. Other rows pass as they
    are. A pair's id is the row's, then `/c{i}-r{j}`."""
    for ex in examples:
        if not ex.is_list:
            yield ex
            continue
        chosen, rejected = ex.responses[:ex.n_chosen], ex.responses[ex.n_chosen:]
        for i, c in enumerate(chosen):
            for j, r in enumerate(rejected):
                yield Example(id=f"{ex.id}/c{i}-r{j}", prompt=ex.prompt, responses=[c, r], ratings=ex.ratings,
                              subset=ex.subset, line=ex.line)


def parse_row(obj: Any, where: str) -> Example:
    """Normalise one JSON row; `where` is 'FILE:LINE' for error messages."""
    if not isinstance(obj, dict):
        raise RowError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    ratings = _ratings(obj.get("ratings"), where)
    if "chosen" in obj or "rejected" in obj:
        for k in ("chosen", "rejected"):
            if k not in obj:
                raise RowError(f"{where}: field '{k}': missing (pairs need both 'chosen' and 'rejected')")
        lists = [_response_list(obj[k], where, k) for k in ("chosen", "rejected")]
        if lists != [None, None]:
            return _list_row(obj, where, ratings, *lists)
        extra_c, chosen = _response(obj["chosen"], where, "chosen")
        extra_r, rejected = _response(obj["rejected"], where, "rejected")
        if extra_c != extra_r:
            raise RowError(f"{where}: field 'rejected': its history differs from 'chosen'")
        if "prompt" in obj:
            prompt = _prompt(obj["prompt"], where) + extra_c
        elif extra_c:
            prompt = extra_c  # TRL's implicit-prompt form: the shared history is the prompt
        else:
            raise RowError(f"{where}: field 'prompt': missing")
        if prompt[-1]["role"] != "user":
            raise RowError(f"{where}: field 'prompt': the last message must be a user turn")
        responses = [chosen, rejected]
    elif "messages" in obj:
        msgs = _messages(obj["messages"], where, "messages")
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise RowError(f"{where}: field 'messages': must end with the assistant's response after a user turn")
        prompt = msgs[:-1]
        if prompt[-1]["role"] != "user":
            raise RowError(f"{where}: field 'messages': the response must follow a user turn")
        responses = [msgs[-1]["content"]]
    elif "response" in obj:
        if "prompt" not in obj:
            raise RowError(f"{where}: field 'prompt': missing")
        prompt = _prompt(obj["prompt"], where)
        extra, text = _response(obj["response"], where, "response")
        prompt = prompt + extra
        responses = [text]
    else:
        raise RowError(f"{where}: no response: expected 'response', 'chosen'/'rejected' or 'messages'")
    return Example(id=_row_id(obj, where, prompt, responses), prompt=prompt, responses=responses, ratings=ratings,
                   subset=_subset(obj, where))


def _row_id(obj: dict, where: str, prompt: list[Message], responses: list[str]) -> str:
    rid = obj.get("id")
    if rid is None:
        return "h" + sha256_json([prompt, responses])[:16]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise RowError(f"{where}: field 'id': expected a string")
    if isinstance(rid, str):
        _text(rid, where, "id")
    return str(rid)


def _subset(obj: dict, where: str, key: str = "subset") -> str | None:
    subset = obj.get(key)
    if subset is not None and not isinstance(subset, str):
        raise RowError(f"{where}: field '{key}': expected a string")
    if subset is not None:
        _text(subset, where, key)
    return subset


def _list_row(obj: dict, where: str, ratings: dict, chosen: list[str] | None, rejected: list[str] | None) -> Example:
    """A row with lists of chosen and rejected responses (RewardBench 2, RM-Bench, RMB best-of-n): all of them
    continue one prompt. RM-Bench names its grouping `domain`: it is the row's subset unless one is given."""
    for k, v in (("chosen", chosen), ("rejected", rejected)):
        if v is None:
            raise RowError(f"{where}: field '{k}': expected a list of responses (strings), as the other side is")
    if "prompt" not in obj:
        raise RowError(f"{where}: field 'prompt': missing")
    prompt = _prompt(obj["prompt"], where)
    n = obj.get("num_correct")
    if n is not None and (isinstance(n, bool) or n != len(chosen)):
        raise RowError(f"{where}: field 'num_correct': {n!r}, but 'chosen' holds {len(chosen)} responses")
    responses = chosen + rejected
    return Example(id=_row_id(obj, where, prompt, responses), prompt=prompt, responses=responses, ratings=ratings,
                   subset=_subset(obj, where) or _subset(obj, where, "domain"), n_chosen=len(chosen))


# Where a policy's samples for one prompt sit, by the names the ecosystem writes them under: RLHFlow's `responses`,
# SimPO's `all_generated_responses`, TRL's `completions`.
SAMPLE_FIELDS = ("responses", "all_generated_responses", "completions")


def parse_samples_row(obj: Any, where: str) -> Example:
    """A row of unlabeled samples (`armo annotate`): a prompt and a list of responses under one of SAMPLE_FIELDS, each
    a string or a conversational completion (one assistant message). An Example with n_chosen 0: a list, none chosen."""
    if not isinstance(obj, dict):
        raise RowError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "chosen" in obj or "rejected" in obj:
        raise RowError(f"{where}: a row with 'chosen'/'rejected' is already a preference; annotate takes rows of samples "
                       f"(a prompt and {', '.join(repr(f) for f in SAMPLE_FIELDS)})")
    given = [f for f in SAMPLE_FIELDS if f in obj]
    if not given:
        raise RowError(f"{where}: no samples: expected a list of responses in {', '.join(repr(f) for f in SAMPLE_FIELDS)}")
    if len(given) > 1:
        raise RowError(f"{where}: field '{given[1]}': samples in both {given[0]!r} and {given[1]!r}; give one")
    name, value = given[0], obj[given[0]]
    if "prompt" not in obj:
        raise RowError(f"{where}: field 'prompt': missing")
    prompt = _prompt(obj["prompt"], where)
    if not isinstance(value, list):
        raise RowError(f"{where}: field '{name}': expected a list of responses, got {type(value).__name__}")
    if not value:
        raise RowError(f"{where}: field '{name}': an empty list of responses")
    texts = []
    for i, v in enumerate(value):
        if isinstance(v, list):  # a conversational completion: the assistant's one message
            extra, text = _response(v, where, f"{name}[{i}]")
            if extra:
                raise RowError(f"{where}: field '{name}[{i}]': a completion is one assistant message, not a conversation")
        elif isinstance(v, str):
            text = _text(v, where, f"{name}[{i}]")
        else:
            raise RowError(f"{where}: field '{name}[{i}]': expected a string, got {type(v).__name__}")
        texts.append(text)
    return Example(id=_row_id(obj, where, prompt, texts), prompt=prompt, responses=texts, subset=_subset(obj, where),
                   n_chosen=0)


LOCAL_SPLIT = "train"  # the one split of a local --dataset file (datasets names a file's rows so)


@dataclass
class Source:
    """Where examples come from: a JSONL path (or `-`), or a `datasets` name/path and split."""

    path: str | None = None
    dataset: str | None = None
    split: str = "train"
    quiet: bool = False  # no progress bars from datasets
    samples: bool = False  # rows of unlabeled samples (`annotate`, parse_samples_row) rather than the shapes parse_row takes

    @property
    def name(self) -> str:
        if self.path == "-":
            return "<stdin>"
        if self.path is not None:
            return self.path
        return self.dataset if Path(self.dataset).is_file() else f"{self.dataset}[{self.split}]"

    def raw(self) -> Iterator[tuple[int, Any]]:
        if self.dataset is None:
            yield from iter_jsonl(self.path, self.name)
            return
        p = Path(self.dataset)
        if p.is_file():  # a local file: read by armo itself, so that a bad row is one line naming file and row
            if self.split != LOCAL_SPLIT:  # as datasets.load_dataset reads one file: a single split, 'train'
                raise ArmoError(f"--split {self.split}: {self.dataset} is one file, whose only split is "
                                f"'{LOCAL_SPLIT}'; drop --split (or give the dataset's folder or hub id)")
            yield from _local_rows(p)
            return
        import datasets

        if self.quiet:
            datasets.disable_progress_bars()
        try:
            ds = datasets.load_dataset(self.dataset, split=self.split)
        except Exception as e:  # datasets raises many types: not found, offline, bad split, bad file
            raise ArmoError(f"--dataset {self.dataset}: could not load split {self.split!r} "
                            f"({type(e).__name__}: {one_line(e)[:160]})") from None
        for i, row in enumerate(ds, 1):
            yield i, row


def _local_rows(p: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a local --dataset file: parquet (row numbers from 1), a JSON array, or JSON lines (.gz too)."""
    name = p.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            f = pq.ParquetFile(str(p))
            batches = f.iter_batches(batch_size=1024)
            i = 0
            for batch in batches:
                for row in batch.to_pylist():
                    i += 1
                    yield i, row
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise ArmoError(f"{p}: not a readable parquet file ({one_line(e)[:160]})") from None
        return
    if name.endswith(".json"):
        with open(p, "rb") as fh:
            head = fh.read(4096).lstrip()
        if head.startswith(b"["):
            try:
                rows = strict_json(p.read_bytes())
            except (ValueError, RecursionError) as e:
                raise ArmoError(f"{p}: malformed JSON ({one_line(e)[:160]})") from None
            if not isinstance(rows, list):
                raise ArmoError(f"{p}: expected a JSON array of rows or JSON lines")
            yield from enumerate(rows, 1)
            return
    yield from iter_jsonl(p, str(p))


class DisplaySource(Source):
    """A source whose errors name the file the user gave (e.g. <stdin> for a spooled copy)."""

    def __init__(self, inner: Source, display: str):
        super().__init__(inner.path, inner.dataset, inner.split, inner.quiet, inner.samples)
        self._display = display

    @property
    def name(self) -> str:
        return self._display


@contextlib.contextmanager
def locked_source(output: str | Path, path: str | None, dataset: str | None = None,
                  split: str = "train", quiet: bool = False, samples: bool = False) -> Iterator[Source]:
    """The input of a job that writes `output`: the output locked for the run (a second writer is refused), and
    the input readable twice (stdin is spooled to a temporary file, named <stdin> in errors), once to check
    every row and once to compute."""
    with output_lock(output):
        spooled = spool_stdin() if path == "-" else None
        try:
            yield (DisplaySource(Source(path=str(spooled), samples=samples), "<stdin>") if spooled
                   else Source(path=path, dataset=dataset, split=split, quiet=quiet, samples=samples))
        finally:
            if spooled is not None:
                spooled.unlink(missing_ok=True)


@dataclass
class Skipped:
    line: int
    id: str | None
    reason: str


def iter_examples(source: Source, on_error: str = "error", skipped: list[Skipped] | None = None,
                  unique_ids: bool = True) -> Iterator[Example]:
    """Parse a source; with on_error='skip', bad rows are recorded in `skipped` instead of raising.

    A row without an id gets one from its content; the k-th copy of the same content in the source gets that
    id + '-k', so that repeated rows (a policy's identical samples, a dataset's duplicates) stay rows with ids
    of their own. With `unique_ids` (ids key a features file and its shards), a repeated explicit id is bad
    input; without it (score, evaluate, which only echo ids), it is allowed."""
    name = source.name
    seen: set[str] = set()
    copies: dict[str, int] = {}
    parse = parse_samples_row if source.samples else parse_row
    for lineno, obj in source.raw():
        where = f"{name}:{lineno}"
        try:
            ex = parse(obj, where)
            if obj.get("id") is None:  # parse_row accepted it, so obj is a dict
                k = copies[ex.id] = copies.get(ex.id, 0) + 1
                if k > 1:
                    ex.id = f"{ex.id}-{k}"
            if unique_ids and ex.id in seen:
                raise RowError(f"{where}: field 'id': duplicate id {ex.id!r}")
        except RowError as e:
            if on_error != "skip":
                raise
            if skipped is not None:
                rid = obj.get("id") if isinstance(obj, dict) else None
                reason = str(e)  # the record names the line already: keep the field and what is wrong
                skipped.append(Skipped(lineno, None if rid is None else str(rid), reason.removeprefix(f"{where}: ")))
            continue
        if unique_ids:  # a streaming score of a long file keeps no set of its ids
            seen.add(ex.id)
        ex.line = lineno
        yield ex


def read_groups(examples: Iterable[Example], size: int) -> Iterator[tuple[list[Example], ArmoError | None]]:
    """Rows `size` at a time: (the rows, the error that stopped the reading after them or None), the last group
    possibly short. A bad line ends the reading, and its error comes with the rows read before it, so that a caller
    that checks those first reports the first bad row in the file."""
    it = iter(examples)
    while True:
        rows: list[Example] = []
        failure: ArmoError | None = None
        try:
            for ex in it:
                rows.append(ex)
                if len(rows) == size:
                    break
        except ArmoError as e:
            failure = e
        if rows or failure is not None:
            yield rows, failure
        if failure is not None or len(rows) < size:
            return
