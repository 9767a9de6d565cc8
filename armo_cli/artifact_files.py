"""Artifacts on disk: safetensors files with armo's metadata and a checksum of their tensors, written atomically
and checked on every load."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .artifacts import KINDS, Meta
from .errors import ArmoError, one_line
from .jsonl import check_input_file, dumps
from .outputs import atomic_path, current_umask


META_KEY = "armo"


# The metadata field holding a digest of the artifact's tensors (names, dtypes, shapes, bytes), written with
# them and checked on every full load: a flipped bit, a half-finished copy or an edited tensor is refused by
# name instead of changing scores without a word. Files from before it (armo 0.1.0) may have none and load as before;
# a file from any later armo without one was edited, and is refused.
CHECKSUM_KEY = "tensors_sha256"


# The metadata field sealing the metadata itself (the tensors' checksum included), written where a file's metadata
# decides what is reused: a resumable job's units (resumable.py), whose ids and keys say which rows they hold, and
# tune-backbone's checkpoint. The seal is an HMAC under a secret that only the user can read (SEAL_SECRET in armo's
# cache folder, mode 0600): a unit forged or edited by anyone without that secret, with armo's own functions
# included, is refused. Whoever can read the user's files can forge one; nothing on disk protects against the user.
SEAL_KEY = "meta_sha256"
SEAL_SECRET = "seal.key"
_secrets: dict[str, bytes] = {}


UNCHECKSUMMED_VERSIONS = {"0.1.0"}


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


def save_artifact(path: str | Path, tensors: dict[str, torch.Tensor], meta: Meta, seal: bool = False) -> None:
    """Write tensors plus their typed metadata (artifacts.py) as one safetensors file, atomically; the metadata's kind
    says which tensors it must carry."""
    if not isinstance(meta, Meta):
        raise TypeError("save_artifact takes typed metadata (armo_cli.artifacts); save_raw_artifact writes a dict")
    missing = [k for k in meta.TENSORS if k not in tensors] if not (isinstance(meta, KINDS["features"]) and not meta.ids) else []
    if missing:
        raise ValueError(f"a '{meta.KIND}' artifact needs the tensors {', '.join(missing)}")
    save_raw_artifact(path, tensors, meta.to_json(), seal)


def save_raw_artifact(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], seal: bool = False) -> None:
    """save_artifact for metadata as a dict, unchecked: for tests and tools that craft files (armo's stages write
    typed metadata). `seal`: the metadata is sealed too (SEAL_KEY), so that an edited field is refused on load."""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().contiguous().cpu()
        if v.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    tensors = out
    meta = {**meta, CHECKSUM_KEY: tensors_sha256(tensors)}
    if seal:
        meta[SEAL_KEY] = _meta_sha256(meta)
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


def seal_secret() -> bytes:
    """This user's sealing secret: 32 random bytes, created once (mode 0600, whatever the umask) in armo's cache
    folder (ARMO_CACHE), read from there afterwards."""
    from .backbones import cache_root

    path = cache_root() / SEAL_SECRET
    if str(path) in _secrets:
        return _secrets[str(path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(path):  # written whole beside it, then linked in: a second process (a rank) never reads half
        fd, tmp = tempfile.mkstemp(prefix=f".{SEAL_SECRET}.", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: its secret is the one
        finally:
            os.unlink(tmp)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise OSError(e.errno, f"armo's sealing secret cannot be read ({e.strerror})", str(path)) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        value = f.read(33) if stat.S_ISREG(st.st_mode) else b""
    if len(value) != 32 or st.st_mode & 0o077 or st.st_uid != os.getuid():
        raise ArmoError(f"{path}: not armo's sealing secret (32 bytes, the user's own, mode 0600); remove it and run "
                        f"again (finished work kept in progress folders is then computed again)")
    _secrets[str(path)] = value
    return value


def _meta_sha256(meta: dict[str, Any]) -> str:
    """The seal: an HMAC-SHA256 of the metadata under this user's secret."""
    return hmac.new(seal_secret(), json.dumps(meta, sort_keys=True, ensure_ascii=True).encode(), hashlib.sha256).hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """The digest of CHECKSUM_KEY: each tensor in name order, as its name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(_tensor_header(k, _ST_NAMES[t.dtype], t.shape))
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


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


def load_artifact(path: str | Path, kind: str | None = None, tensors: bool = True,
                  sealed: bool = False) -> tuple[dict[str, torch.Tensor], Any]:
    """Read an armo safetensors artifact; tensors=False reads only the metadata (cheap, for resume checks
    and joins). With `kind`, the metadata comes back typed (artifacts.py) and checked: that stage wrote
    it, every field it needs is there with its type, every tensor it needs is there. `sealed`: the file must carry
    this user's seal (a job's unit or checkpoint), not merely a valid one if any."""
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
    seal = meta.pop(SEAL_KEY, None)
    if sealed and not isinstance(seal, str):
        raise ArmoError(f"{p}: not sealed by armo for this user; computed again")
    if seal is not None and not (isinstance(seal, str) and hmac.compare_digest(seal, _meta_sha256(meta))):
        raise ArmoError(f"{p}: damaged: its metadata does not match the seal written with it (an edited field); "
                        f"re-create it")
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
        for key in () if empty else meta.TENSORS:
            if key not in names:
                raise ArmoError(f"{p}: incomplete '{kind}' artifact: tensor '{key}' is missing")
    if load:
        check_finite(p, tensors)
    return tensors, meta


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
