"""Files: JSONL in, safetensors artifacts out, always atomically; every failure is armo's one-line error."""
from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .artifacts import KINDS, Meta
from .errors import ArmoError, one_line

META_KEY = "armo"
# The metadata field holding a digest of the artifact's tensors (names, dtypes, shapes, bytes), written with
# them and checked on every full load: a flipped bit, a half-finished copy or an edited tensor is refused by
# name instead of changing scores without a word. Files from before it (armo 0.1.0) may have none and load as before;
# a file from any later armo without one was edited, and is refused.
CHECKSUM_KEY = "tensors_sha256"
UNCHECKSUMMED_VERSIONS = {"0.1.0"}


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
                raise ArmoError(f"{name}:{lineno}: not UTF-8 text (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                obj = strict_json(line)
            except json.JSONDecodeError as e:
                raise ArmoError(f"{name}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
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


def check_output_file(path: str | Path | None, option: str = "--output",
                      inputs: Iterable[str | Path | None] = (), stdout_ok: bool = True) -> None:
    """Refuse, before any work, an output path that is a folder or that is one of the inputs."""
    if path is None:
        return
    if str(path) == "-":
        if not stdout_ok:
            raise ArmoError(f"{option} -: this output is a binary safetensors file and cannot go to stdout; give a file path")
        return
    p = Path(path)
    if p.is_dir():
        raise ArmoError(f"{option} {p}: is a folder, expected a file path")
    check_writable_kind(p, option)
    if p.exists():
        for i in inputs:
            if i is not None and str(i) != "-" and Path(i).exists() and p.resolve() == Path(i).resolve():
                raise ArmoError(f"{option} {p}: is also an input; choose another output path")


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), since setting it to read it
    races with threads that create files meanwhile."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def naming(path: str | Path, aliases: dict[str, str] | None = None) -> Iterator[None]:
    """An OSError in the block names the file it concerns: a write to an open file (a full disk, a file size limit)
    raises one with no name, and a temporary file's name is not the user's. The world's failure stays an OSError
    (exit 1), never armo's bug (exit 3)."""
    try:
        yield
    except OSError as e:
        name = str(e.filename if e.filename is not None else path)
        for tmp, target in (aliases or {}).items():  # a temporary file or folder, by the name it will have
            if name == tmp or name.startswith(tmp + os.sep):
                name = target + name[len(tmp):]
        if name == e.filename:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(name)) from None


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str], name: str | Path | None = None) -> None:
    """safetensors' save_file, with a failure to write (its SafetensorError carries the OS error's number) raised
    as the OSError it is, naming `name` (the user's path) or `path`."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as e:
        code = re.search(r"os error (\d+)", str(e))
        if type(e).__name__ != "SafetensorError" or code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(name or path)) from None
    os.chmod(path, 0o666 & ~current_umask())  # safetensors creates 0600; an output follows the user's umask


def check_writable_kind(p: Path, option: str = "--output") -> None:
    """An output path armo can write: a regular file (replaced atomically), a character device or a FIFO (written
    through), or a new name in an existing folder."""
    for parent in [p.parent, *p.parent.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():  # the world's state, like a missing permission: exit 1
                raise OSError(errno.ENOTDIR, f"cannot be created: {parent} is a file, not a folder", str(p))
            break
    try:
        mode = os.stat(p).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISDIR(mode)):
        raise ArmoError(f"{option} {p}: is neither a file, a character device nor a FIFO")


def writes_through(path: Path) -> bool:
    """A character device (/dev/null, /dev/stdout) or a FIFO: written into, never renamed over."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def publish_file(src: Path, target: Path) -> None:
    """A finished output `src` becomes `target`: renamed over a file, copied into a device or a FIFO (renaming
    would swap the node for a regular file)."""
    if not writes_through(target):
        os.replace(src, target)
        return
    try:
        with open(src, "rb") as fin, open(target, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(target)) from None
    src.unlink()


# --- armo's own progress folders (TARGET.parts/) -----------------------------------------------------
# A folder is armo's only if it holds this marker, written when armo made it: nothing else is ever removed.
PARTS_MARK = ".armo-parts"


def claim_parts(parts: Path, resume: bool, known: Callable[[str], bool]) -> bool:
    """Check a job's progress folder before use: armo's own (its marker), holding only regular files that `known`
    names, no link anywhere. Without --resume an earlier run's folder is removed. Whether it (still) exists."""
    if not (parts.exists() or parts.is_symlink()):
        return False
    where = f"{parts}: not armo's progress folder"
    if parts.is_symlink() or not parts.is_dir():
        raise ArmoError(f"{where} (not a folder); move it or choose another output path")
    for entry in sorted(parts.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            raise ArmoError(f"{entry}: a link or not a file in armo's progress folder (armo follows no link there); "
                            f"move the folder or choose another output path")
        if entry.name != PARTS_MARK and not known(entry.name):
            raise ArmoError(f"{where} (it holds {entry.name}); move it or choose another output path")
    if not (parts / PARTS_MARK).is_file():
        raise ArmoError(f"{where} (armo's marker {PARTS_MARK} is missing); move it or choose another output path")
    if not resume:
        shutil.rmtree(parts)
        return False
    return True


def make_parts(parts: Path) -> None:
    """Create a job's progress folder with armo's marker (nothing happens if it exists: claim_parts checked it)."""
    if not parts.is_dir():
        parts.mkdir(parents=True)
        (parts / PARTS_MARK).write_text(json.dumps({"armo_progress": True}) + "\n", encoding="utf-8")


def remove_parts(parts: Path) -> None:
    """Remove a progress folder that armo made (its marker is there); anything else stays."""
    if parts.is_dir() and not parts.is_symlink() and (parts / PARTS_MARK).is_file():
        shutil.rmtree(parts, ignore_errors=True)


def open_in_parts(path: Path, mode: str):
    """A file inside a progress folder, opened without following a link (one planted there is refused)."""
    flags = {"ab": os.O_WRONLY | os.O_APPEND | os.O_CREAT, "a": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
             "rb": os.O_RDONLY, "r": os.O_RDONLY}[mode]
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ArmoError(f"{path}: a link in armo's progress folder (armo follows no link there); move the "
                            f"folder or choose another output path") from None
        raise
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


@contextlib.contextmanager
def atomic_paths(paths: Iterable[str | Path]) -> Iterator[list[Path]]:
    """Temporary paths beside each of `paths`; all of them replace their targets only if the block
    succeeds, so that outputs written together succeed or fail together."""
    targets = [Path(p) for p in paths]
    for t in targets:
        if t.is_dir():
            raise ArmoError(f"{t}: is a folder, expected a file path")
        check_writable_kind(t, "output")
    tmps: list[Path] = []
    try:
        for t in targets:
            t.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{t.name}.", suffix=".tmp", dir=t.parent)
            os.close(fd)
            tmps.append(Path(tmp))
        with naming(", ".join(map(str, targets)), {str(t): str(p) for t, p in zip(tmps, targets)}):
            yield tmps
        umask = current_umask()
        for tmp in tmps:
            if tmp.exists():
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is not what users expect of an output
        for tmp, t in zip(tmps, targets):
            publish_file(tmp, t)
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


def write_text_atomic(path: str | Path, text: str) -> None:
    write_texts_atomic({str(path): text})


def write_texts_atomic(texts: dict[str, str]) -> None:
    """Write several text outputs so that they all appear or none does; '-' is stdout (written last)."""
    files = {p: t for p, t in texts.items() if str(p) != "-"}
    with atomic_paths(list(files)) as tmps:
        for tmp, text in zip(tmps, files.values()):
            tmp.write_text(text, encoding="utf-8")
    if "-" in texts:
        with naming("<stdout>"):
            sys.stdout.write(texts["-"])
            sys.stdout.flush()


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


def save_artifact(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | Meta) -> None:
    """Write tensors plus a JSON metadata blob (a dict or typed metadata) as one safetensors file, atomically."""
    if isinstance(meta, Meta):
        meta = meta.to_json()
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().contiguous().cpu()
        if v.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    tensors = out
    meta = {**meta, CHECKSUM_KEY: tensors_sha256(tensors)}
    with atomic_path(path) as tmp:
        save_tensors(tensors, tmp, {META_KEY: dumps(meta)}, name=path)


_ST_SIZES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}
_ST_NAMES = {torch.float64: "F64", torch.int64: "I64", torch.float32: "F32", torch.int32: "I32", torch.float16: "F16",
             torch.bfloat16: "BF16", torch.int16: "I16", torch.uint8: "U8", torch.int8: "I8", torch.bool: "BOOL"}


def _tensor_header(name: str, st_dtype: str, shape: Iterable[int]) -> bytes:
    return json.dumps([name, st_dtype, list(shape)]).encode() + b"\n"


def _damaged(path: str | Path) -> ArmoError:
    return ArmoError(f"{path}: damaged: its tensors do not match the checksum written with them "
                     f"(a changed byte or an unfinished copy); copy it again or re-create it")


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """The digest of CHECKSUM_KEY: each tensor in name order, as its name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(_tensor_header(k, _ST_NAMES[t.dtype], t.shape))
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# The tensors each artifact kind must carry (its metadata fields: artifacts.py). Checked on every load,
# so that a damaged or foreign file is one line naming the file and what is missing, never a KeyError.
_FEATURE_TENSORS = ("prompt_features", "response_features", "response_lengths", "prompt_lengths", "row_index")
REQUIRED_TENSORS: dict[str, tuple[str, ...]] = {
    "features": _FEATURE_TENSORS, "features-chunk": _FEATURE_TENSORS, "regression": ("weight", "bias"),
    "decorrelation": ("transform",), "gating": (),
}
# Tensors in which NaN has a meaning: a missing label.
NAN_ALLOWED = {"labels"}


def check_finite(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse NaN/inf in an artifact's tensors, naming the file and the tensor."""
    for k, v in tensors.items():
        if not v.is_floating_point():
            continue
        bad = torch.isinf(v) if k in NAN_ALLOWED else ~torch.isfinite(v)
        if bool(bad.any()):
            raise ArmoError(f"{path}: tensor '{k}' holds {int(bad.sum())} non-finite values (NaN or inf)")


def load_artifact(path: str | Path, kind: str | None = None, tensors: bool = True) -> tuple[dict[str, torch.Tensor], Any]:
    """Read an armo safetensors artifact; tensors=False reads only the metadata (cheap, for resume checks
    and joins). With `kind`, the metadata comes back typed (artifacts.py) and checked: that stage wrote
    it, every field it needs is there with its type, every tensor it needs is there."""
    p = check_input_file(path)
    load = tensors
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            names = set(f.keys())
            tensors = {k: f.get_tensor(k) for k in f.keys()} if load else {}
    except Exception as e:  # safetensors raises its own error types
        raise ArmoError(f"{p}: not a readable safetensors file ({one_line(e)})") from None
    if raw is None:
        raise ArmoError(f"{p}: not an armo artifact (no '{META_KEY}' metadata)")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise ArmoError(f"{p}: damaged armo metadata (not JSON)") from None
    if not isinstance(meta, dict):
        raise ArmoError(f"{p}: damaged armo metadata (not a JSON object)")
    checksum = meta.pop(CHECKSUM_KEY, None)  # never carried into a typed meta, so never copied into a new file
    if checksum is not None and not isinstance(checksum, str):
        raise ArmoError(f"{p}: damaged armo metadata ('{CHECKSUM_KEY}' is not a string)")
    if checksum is None and meta.get("armo_version") not in UNCHECKSUMMED_VERSIONS:
        raise ArmoError(f"{p}: damaged armo metadata: armo {meta.get('armo_version')} writes '{CHECKSUM_KEY}' and it "
                        f"is missing (an edited file); re-create it")
    if load and checksum is not None and tensors_sha256(tensors) != checksum:
        raise _damaged(p)
    if kind is not None:
        if meta.get("kind") != kind:
            raise ArmoError(f"{p}: expected a '{kind}' artifact, found '{meta.get('kind')}'")
        meta = KINDS[kind].from_json(meta, str(p))
        empty = kind == "features" and not meta.ids  # a shard that got no rows: valid, and it has no tensors
        for key in () if empty else REQUIRED_TENSORS[kind]:
            if key not in names:
                raise ArmoError(f"{p}: incomplete '{kind}' artifact: tensor '{key}' is missing")
    if load:
        check_finite(p, tensors)
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


def save_concatenated(path: str | Path, files: list[Path], meta: dict[str, Any] | Meta) -> None:
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
    # The checksum is known only once the data is written: a placeholder of its length goes into the header
    # and is overwritten in place at the end. Each input's own checksum is checked on the way through.
    placeholder = "0" * 64
    header["__metadata__"] = {META_KEY: dumps({**(meta.to_json() if isinstance(meta, Meta) else meta),
                                               CHECKSUM_KEY: placeholder})}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    marker = f'\\"{CHECKSUM_KEY}\\": \\"'.encode()  # as it stands in the header: JSON inside a JSON string
    at = 8 + raw.index(marker + placeholder.encode()) + len(marker)
    digest = hashlib.sha256()
    inputs = {f: (hashlib.sha256(), _stored_checksum(f)) for f in files}
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(len(raw).to_bytes(8, "little"))
        out.write(raw)
        for k in keys:
            digest.update(_tensor_header(k, dtypes[k], shapes[k]))
            for f in files:
                with safe_open(str(f), framework="pt") as sf:
                    t = sf.get_tensor(k).contiguous()
                data = t.reshape(-1).view(torch.uint8).numpy()
                inputs[f][0].update(_tensor_header(k, _ST_NAMES[t.dtype], t.shape))
                inputs[f][0].update(data)
                digest.update(data)
                out.write(data.tobytes())
        for f, (h, stored) in inputs.items():
            if stored is not None and h.hexdigest() != stored:
                raise _damaged(f)
        out.seek(at)
        out.write(digest.hexdigest().encode())


def _stored_checksum(path: Path) -> str | None:
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(META_KEY)
    value = json.loads(raw).get(CHECKSUM_KEY) if raw else None
    return value if isinstance(value, str) else None


LOCK_MARK = "armo-lock pid "


def _lock_is_ours(text: str) -> bool:
    """A lock armo wrote: its marker and pid, a bare pid (armo 0.1), or nothing yet (created, not yet written)."""
    text = text.strip()
    return not text or text.startswith(LOCK_MARK.strip()) or text.isdigit()


@contextlib.contextmanager
def output_lock(target: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on `target` for the duration of a job: `TARGET.lock`, flock'ed.

    A second writer is refused at once, naming the holder's pid. The kernel drops a flock when its
    process dies, so the lock file of a killed run is stale by construction: the next run takes it over. A file
    of that name that armo did not write (no marker) or a link is never opened for writing, nor removed."""
    import fcntl

    target = Path(target)
    lock = target.with_name(target.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ArmoError(f"{lock}: a link where armo keeps its lock; move it or choose another output path") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ArmoError(f"{lock}: not a file, where armo keeps its lock; move it or choose another output path")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip().removeprefix(LOCK_MARK.strip()).strip() or "?"
            finally:
                os.close(fd)
            raise ArmoError(f"{target}: another armo process (pid {holder}) is writing this output; "
                            f"wait for it to finish or choose another output path") from None
        # the holder before us may have removed the file after we opened it: lock the file on disk
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            if not _lock_is_ours(os.pread(fd, 4096, 0).decode(errors="replace")):
                os.close(fd)
                raise ArmoError(f"{lock}: exists and armo did not write it (armo keeps its lock under this name); "
                                f"move it or choose another output path")
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{LOCK_MARK}{os.getpid()}\n".encode())
        yield lock
    finally:
        try:
            lock.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)


def check_output_dir(path: str | Path, is_ours: Callable[[Path], bool], what: str, force: bool = False,
                     inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse, before any work, to write a folder that armo must not replace.

    Never: the current folder or one of its parents, an input (or a folder holding one), a file.
    A non-empty folder only if `is_ours` recognises it as the same kind of armo output, or with --force."""
    p = Path(path)
    rp = p.resolve()
    cwd = Path.cwd().resolve()
    if rp == cwd or rp in cwd.parents:
        raise ArmoError(f"{path}: is the current folder or one of its parents; give a new folder for the output")
    for i in inputs:
        if i is None:
            continue
        ri = Path(i).resolve()
        if rp == ri or rp in ri.parents:
            raise ArmoError(f"{path}: would replace the input {i}; give a new folder for the output")
    if p.exists() and not p.is_dir():
        raise ArmoError(f"{path}: is a file, expected a folder")
    if p.is_dir() and any(p.iterdir()) and not is_ours(p) and not force:
        raise ArmoError(f"{path}: folder is not empty and is not {what}; give a new folder, or --force to replace it")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh folder beside `path`; if the block succeeds it takes `path`'s place (the old folder,
    if any, is moved aside first and removed last), otherwise it is removed and `path` is untouched."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    old: Path | None = None
    try:
        with naming(out, {str(tmp): str(out)}):
            yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 is not what users expect of an output folder
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)  # put the previous folder back
                old = None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)


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


def check_outputs(output: str | Path | None, json_out: str | Path | None, inputs: Iterable[str | Path | None]) -> None:
    """A fit stage's outputs: the artifact (a file, never stdout) and the optional JSON report."""
    inputs = list(inputs)
    check_output_file(output, "--output", inputs, stdout_ok=False)
    check_output_file(json_out, "--json", inputs)
    if output is not None and json_out is not None and str(output) == str(json_out):
        raise ArmoError("--output and --json: give each output its own path")
