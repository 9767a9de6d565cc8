"""Files: JSONL in, safetensors artifacts out, always atomically."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

META_KEY = "armo"


class ArmoError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def open_text(path: str | Path):
    """Open a JSONL path for reading; `-` is stdin, `.gz` is decompressed."""
    if str(path) == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
    p = Path(path)
    if not p.exists():
        raise ArmoError(f"{p}: no such file")
    if p.suffix == ".gz":
        return gzip.open(p, "rt", encoding="utf-8")
    return open(p, encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, object); blank lines are skipped, bad JSON names its line."""
    name = "<stdin>" if str(path) == "-" else str(path)
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ArmoError(f"{name}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None


def spool_stdin() -> Path:
    """Copy stdin to a temporary file so it can be read twice (validate, then compute)."""
    fd, tmp = tempfile.mkstemp(prefix="armo-stdin-", suffix=".jsonl")
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(sys.stdin.buffer, out)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp's 0600 is not what users expect of an output
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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


def save_artifact(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors plus a JSON metadata blob as one safetensors file, atomically."""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().contiguous().cpu()
        if v.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    tensors = out
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: dumps(meta)})


def load_artifact(path: str | Path, kind: str | None = None,
                  tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an armo safetensors artifact; `kind` checks what stage wrote it; tensors=False reads
    only the metadata (cheap, for resume checks and joins)."""
    p = Path(path)
    if not p.exists():
        raise ArmoError(f"{p}: no such file")
    load = tensors
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()} if load else {}
    except ArmoError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise ArmoError(f"{p}: not a readable safetensors file ({e})") from None
    if raw is None:
        raise ArmoError(f"{p}: not an armo artifact (no '{META_KEY}' metadata)")
    meta = json.loads(raw)
    if kind is not None and meta.get("kind") != kind:
        raise ArmoError(f"{p}: expected a '{kind}' artifact, found '{meta.get('kind')}'")
    return tensors, meta


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


_ST_SIZES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}


def save_concatenated(path: str | Path, files: list[Path], meta: dict[str, Any]) -> None:
    """Concatenate the same-named tensors of several safetensors files along dim 0 into one file,
    streaming one tensor of one file at a time (memory stays flat however long the job was)."""
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                sl = sf.get_slice(k)
                shape = list(sl.get_shape())
                if k not in shapes:
                    shapes[k], dtypes[k] = shape, sl.get_dtype()
                else:
                    shapes[k][0] += shape[0]
    header: dict[str, Any] = {}
    offset = 0
    keys = sorted(shapes)
    for k in keys:
        n = _ST_SIZES[dtypes[k]]
        for x in shapes[k]:
            n *= x
        header[k] = {"dtype": dtypes[k], "shape": shapes[k], "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {META_KEY: dumps(meta)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(len(raw).to_bytes(8, "little"))
        out.write(raw)
        for k in keys:
            for f in files:
                with safe_open(str(f), framework="pt") as sf:
                    t = sf.get_tensor(k).contiguous()
                out.write(t.view(torch.uint8).numpy().tobytes())
