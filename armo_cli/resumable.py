"""One primitive for every resumable job (`extract`'s chunks, `score -o`'s and `evaluate`'s windows): the job's
finished units, kept in `TARGET.parts/` until the output is written.

A unit is one safetensors file, `chunk-NNNNNN.safetensors` (unit N of the job), whose metadata carries the unit's
key: a digest of the job's settings and of the unit's rows as the check pass read them. `--resume` reuses unit N only
if its key is the one this run computed for it, its tensors match their checksum and its metadata its seal
(artifact_files.SEAL_KEY, an HMAC under a secret only the user can read): a unit of another model, other settings,
an edited input, or one changed or forged on disk by anyone without that secret, is computed again, never copied. Units are written atomically, so a run killed mid-unit leaves none half-written.

The folder is armo's only while it holds armo's marker (jobfiles.claim_parts); nothing in it but unit files is
accepted, no link in it is followed, and without `--resume` an earlier run's folder is removed first."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from .artifact_files import load_artifact, save_artifact
from .artifacts import Meta
from .errors import ArmoError
from .jobfiles import claim_parts, make_parts, remove_parts

# a finished unit, and the temporary file of one being written (outputs.atomic_path)
UNIT_FILE = re.compile(r"chunk-\d{6}\.safetensors|\.chunk-\d{6}\.safetensors\.\w+\.tmp")
# the window progress of armo 0.2.0.dev builds before units (a JSONL file and its index): known, and dropped
_STALE = {"rows.jsonl", "index.jsonl", "index.jsonl.tmp"}

T = TypeVar("T")


def parts_dir(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(target.name + ".parts")


def discard_progress(target: str | Path) -> None:
    """Remove a completed job's progress folder, once every output it fed is written."""
    remove_parts(parts_dir(target))


class JobProgress:
    """The finished units of one job writing `target` (units of kind `kind`: artifacts.ChunkMeta, WindowMeta)."""

    def __init__(self, target: str | Path, kind: str, resume: bool):
        self.parts = parts_dir(target)
        self.kind = kind
        self.reused = 0
        self.computed = 0
        self._kept = claim_parts(self.parts, resume, lambda name: bool(UNIT_FILE.fullmatch(name)) or name in _STALE)
        for name in _STALE if self._kept else ():
            (self.parts / name).unlink(missing_ok=True)

    def path(self, n: int) -> Path:
        return self.parts / f"chunk-{n:06d}.safetensors"

    def load(self, n: int, key: str, accept: Callable[[dict[str, torch.Tensor], Any], T | None]) -> T | None:
        """Unit n, if a finished one with this key is on disk (--resume): read in full, checked (checksum, seal, key),
        then given to `accept`, which returns what the caller keeps of it, or None where the unit does not hold
        what the input says it should (it is then computed again, as is a damaged one)."""
        path = self.path(n)
        if not self._kept or path.is_symlink() or not path.is_file():
            return None
        try:
            tensors, meta = load_artifact(path, self.kind, sealed=True)
        except ArmoError:
            return None
        if getattr(meta, "key", None) != key:
            return None
        kept = accept(tensors, meta)
        self.reused += kept is not None
        return kept

    def save(self, n: int, tensors: dict[str, torch.Tensor], meta: Meta) -> Path:
        """Write unit n (its metadata carries its key), atomically and sealed."""
        make_parts(self.parts)
        path = self.path(n)
        save_artifact(path, tensors, meta, seal=True)
        self.computed += 1
        return path

    def finished(self) -> bool:
        return self.parts.is_dir() and any(self.parts.glob("chunk-*.safetensors"))

    def abandon(self) -> None:
        """The job failed: keep finished units for --resume, or nothing at all if none finished."""
        if not self.finished():
            remove_parts(self.parts)

    def discard(self) -> None:
        """Every output the units fed is written: the folder goes."""
        remove_parts(self.parts)
