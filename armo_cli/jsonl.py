"""JSON in and out: JSONL rows read strictly (one-line errors naming file and line), canonical dumps, content hashes."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import shutil
import stat
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ArmoError, one_line


def display_name(path: str | Path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


def check_input_file(path: str | Path) -> Path:
    """An input path that exists and is a file (not a folder); one-line error otherwise."""
    p = Path(path)
    if not p.exists():
        raise ArmoError(f"{p}: no such file")
    if p.is_dir():
        raise ArmoError(f"{p}: is a folder, expected a file")
    return p


def check_regular_files(folder: str | Path, what: str = "a model folder") -> Path:
    """A folder armo reads weights, configs or a tokenizer from holds regular files (a link to one included) and
    folders only. Such folders are downloaded and shared: a FIFO among them blocks a read forever, a link to a device
    (/dev/zero) never ends, so one is refused by name before anything in the folder is read."""
    folder = Path(folder)
    for entry in sorted(folder.iterdir()):
        try:
            mode = os.stat(entry).st_mode
        except OSError:  # a dangling link: an error naming it if it is ever read
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ArmoError(f"{entry}: not a regular file (a FIFO, a device or a socket); armo reads only regular "
                            f"files from {what}")
    return folder


def is_regular_file(path: str | Path) -> bool:
    """A regular file, or a link to one (never opened to find out)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose name repeats keeps only its last value in every parser we know of: refused, since the
    row's author meant one of the two and we cannot tell which."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"field '{key}' appears twice in one object; JSON would keep only the last")
    return d


def strict_json(text: str | bytes) -> Any:
    """json.loads for rows and requests: NaN/Infinity literals and repeated names are refused (ValueError)."""
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


@contextlib.contextmanager
def _binary_lines(path: str | Path) -> Iterator[Iterator[bytes]]:
    if str(path) == "-":
        yield iter(sys.stdin.buffer)
        return
    p = check_input_file(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as fh:
        yield iter(fh)


def text_sha256(path: str | Path) -> str:
    """SHA-256 of a text file's content, read as iter_jsonl reads it (a .gz file's decompressed bytes)."""
    h = hashlib.sha256()
    with _binary_lines(path) as lines:
        for raw in lines:
            h.update(raw)
    return h.hexdigest()


def _not_rows(path: str | Path) -> str | None:
    """What a file that fails on its first line is, where armo can tell: its own features or heads (safetensors)."""
    if str(path) == "-":
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return None
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file (extracted features or fitted heads), not JSONL rows; score and evaluate take features as --features FILE"
    return None


def iter_jsonl(path: str | Path, display: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line number, object); blank lines are skipped. Malformed JSON, non-UTF-8 bytes, JSON nested
    too deeply, NaN/Infinity literals and damaged .gz files are armo errors naming file and line."""
    name = display or display_name(path)
    lineno = 0
    with _binary_lines(path) as lines:
        while True:
            try:
                raw = next(lines, None)
            except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # gzip: truncated, not gzip at all, corrupt
                raise ArmoError(f"{name}:{lineno + 1}: damaged or truncated gzip data ({one_line(e)})") from None
            if raw is None:
                return
            lineno += 1
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                what = _not_rows(path) if lineno == 1 else None
                raise ArmoError(f"{name}:{lineno}: {what or f'not UTF-8 text (byte {e.start + 1} of the line)'}") from None
            if not line.strip():
                continue
            try:
                obj = strict_json(line)
            except json.JSONDecodeError as e:
                what = _not_rows(path) if lineno == 1 else None
                raise ArmoError(f"{name}:{lineno}: {what or f'malformed JSON ({e.msg} at column {e.colno})'}") from None
            except RecursionError:
                raise ArmoError(f"{name}:{lineno}: malformed JSON (nested too deeply)") from None
            except ValueError as e:
                raise ArmoError(f"{name}:{lineno}: malformed JSON ({e})") from None
            yield lineno, obj


def spool_stdin() -> Path:
    """Copy stdin to a temporary file so it can be read twice (validate, then compute)."""
    fd, tmp = tempfile.mkstemp(prefix="armo-stdin-", suffix=".jsonl")
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(sys.stdin.buffer, out)
    return Path(tmp)


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def clean_json(o: Any) -> Any:
    """Replace NaN/inf by None so reports are valid JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean_json(v) for v in o]
    return o


def dumps(o: Any, **kw: Any) -> str:
    return json.dumps(clean_json(o), default=_json_default, ensure_ascii=False, **kw)


def sha256_file(path: str | Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        remaining = limit
        while True:
            n = 1 << 20 if remaining is None else min(1 << 20, remaining)
            if n == 0:
                break
            block = fh.read(n)
            if not block:
                break
            h.update(block)
            if remaining is not None:
                remaining -= len(block)
    return h.hexdigest()


def sha256_json(o: Any) -> str:
    return hashlib.sha256(json.dumps(o, sort_keys=True, ensure_ascii=False, default=_json_default).encode()).hexdigest()


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file that must hold an object (a manifest, a config): one-line errors naming the file."""
    p = check_input_file(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ArmoError(f"{p}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ArmoError(f"{p}:{e.lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:
        raise ArmoError(f"{p}: malformed JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise ArmoError(f"{p}: expected a JSON object, got {type(obj).__name__}")
    return obj
