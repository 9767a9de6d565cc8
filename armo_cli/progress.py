"""Resumable JSONL output of a windowed job (`armo score -o FILE`): each finished window's lines are appended to
`FILE.parts/rows.jsonl` and its key to `FILE.parts/index.jsonl`; `--resume` keeps the longest run of windows,
from the first, whose keys still match, and computes the rest. The output appears, whole, only at the end.

A window's key names the job (model, settings) and the window's rows as the model sees them (their token
ids), so progress of another model, other settings or an edited input is never reused: from the first window
that differs, everything is computed again. The data file is appended before the index, so a run killed
mid-window leaves bytes past the last indexed window, which the next run cuts off."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from . import __version__
from .errors import ArmoError
from .io import dumps

DATA, INDEX = "rows.jsonl", "index.jsonl"


def parts_dir(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(target.name + ".parts")


def discard_progress(target: str | Path) -> None:
    """Remove a completed job's progress folder, once every output it fed is written."""
    shutil.rmtree(parts_dir(target), ignore_errors=True)


class WindowProgress:
    """The progress of one job writing `target`, kept in `target.parts/` (armo's own folder, like extract's)."""

    def __init__(self, target: str | Path, job_key: str, resume: bool):
        self.target = Path(target)
        self.parts = parts_dir(target)
        self.job_key = job_key
        self.entries: list[dict] = []  # finished windows that may still be reused, in order: {"key", "end"}
        self.pos = 0  # windows looked at so far
        self.reused = 0
        self.rows = 0  # the caller's count of rows in them
        self._data = None
        self._index = None
        if self.parts.exists() or self.parts.is_symlink():
            if self.parts.is_symlink() or not self.parts.is_dir():
                raise ArmoError(f"{self.parts}: not armo's progress folder (not a folder); move it or choose another "
                                f"output path")
            extra = {p.name for p in self.parts.iterdir()} - {DATA, INDEX, INDEX + ".tmp"}
            if extra:
                raise ArmoError(f"{self.parts}: not armo's progress folder (it holds {', '.join(sorted(extra))}); "
                                f"move it or choose another output path")
            if resume:
                self.entries = self._read()
            else:
                shutil.rmtree(self.parts)  # an earlier run's progress, not asked for

    def _read(self) -> list[dict]:
        """The indexed windows of the same job whose lines are all on disk ([] when there is nothing usable)."""
        try:
            lines = (self.parts / INDEX).read_text(encoding="utf-8").splitlines()
            head = json.loads(lines[0])
            if head.get("job") != self.job_key:
                return []  # another model, other settings or another armo: start over
            size = (self.parts / DATA).stat().st_size
            out = []
            for line in lines[1:]:
                e = json.loads(line)
                if not isinstance(e, dict) or not isinstance(e.get("end"), int) or e["end"] > size:
                    break
                out.append({"key": e["key"], "end": e["end"]})
            return out
        except (OSError, ValueError, IndexError, KeyError, AttributeError):
            return []  # a damaged progress file is progress lost, never an error

    def done(self, key: str) -> bool:
        """Whether the next window, with this key, is finished already (its lines are kept); else every
        window from it on is dropped and computed again."""
        i = self.pos
        self.pos += 1
        if i < len(self.entries) and self.entries[i]["key"] == key:
            self.reused += 1
            return True
        del self.entries[i:]
        return False

    def _open(self) -> None:
        """Cut the files to the windows kept so far and open them for appending."""
        self.parts.mkdir(parents=True, exist_ok=True)
        data = self.parts / DATA
        with open(data, "ab") as fh:  # create it if needed, then cut what no index line vouches for
            fh.truncate(self.entries[-1]["end"] if self.entries else 0)
        tmp = self.parts / (INDEX + ".tmp")
        tmp.write_text("".join(dumps(x) + "\n" for x in [{"job": self.job_key, "armo_version": __version__}, *self.entries]),
                       encoding="utf-8")
        os.replace(tmp, self.parts / INDEX)
        self._data = open(data, "ab")
        self._index = open(self.parts / INDEX, "a", encoding="utf-8")

    def add(self, key: str, text: str) -> None:
        """Append one finished window's lines, then its index line (each flushed to disk)."""
        if self._data is None:
            self._open()
        self._data.write(text.encode("utf-8"))
        self._data.flush()
        os.fsync(self._data.fileno())
        e = {"key": key, "end": self._data.tell()}
        self._index.write(dumps(e) + "\n")
        self._index.flush()
        os.fsync(self._index.fileno())
        self.entries.append(e)

    def complete(self) -> None:
        """Every window is done: cut windows the input no longer has; the data file holds the whole output."""
        if self._data is None:
            self._open()  # all reused (or nothing at all)
        del self.entries[self.pos:]
        self._data.truncate(self.entries[-1]["end"] if self.entries else 0)
        self.close()

    def text(self) -> str:
        return (self.parts / DATA).read_text(encoding="utf-8")

    def publish(self) -> None:
        """The completed data file becomes the output (made by open(), it has the user's umask), and the
        progress folder goes."""
        os.replace(self.parts / DATA, self.target)
        self.remove()

    def remove(self) -> None:
        discard_progress(self.target)

    def close(self) -> None:
        for fh in (self._data, self._index):
            if fh is not None:
                fh.close()

    def abandon(self) -> None:
        """The job failed: keep finished windows for --resume, or nothing at all if none finished."""
        self.close()
        if self.parts.exists() and not self.entries:
            shutil.rmtree(self.parts, ignore_errors=True)
