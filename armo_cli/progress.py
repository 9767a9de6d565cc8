"""Resumable JSONL output of a windowed job (`armo score -o FILE`): each finished window's lines are appended to
`FILE.parts/rows.jsonl` and its key to `FILE.parts/index.jsonl`; `--resume` keeps the longest run of windows,
from the first, whose keys still match, and computes the rest. The output appears, whole, only at the end.

A window's key names the job (model, settings) and the window's rows as the model sees them (their token
ids), so progress of another model, other settings or an edited input is never reused: from the first window
that differs, everything is computed again. The data file is appended before the index, so a run killed
mid-window leaves bytes past the last indexed window, which the next run cuts off. Each index line carries the
SHA-256 of its window's bytes: a window edited, moved or cut on disk is scored again, never copied. The folder is
armo's only while it holds armo's marker (io.claim_parts), and no link inside it is followed."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .version import __version__
from .jobfiles import claim_parts, make_parts, open_in_parts, remove_parts
from .jsonl import dumps
from .outputs import publish_file

DATA, INDEX = "rows.jsonl", "index.jsonl"


def parts_dir(target: str | Path) -> Path:
    target = Path(target)
    return target.with_name(target.name + ".parts")


def discard_progress(target: str | Path) -> None:
    """Remove a completed job's progress folder, once every output it fed is written."""
    remove_parts(parts_dir(target))


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
        if claim_parts(self.parts, resume, {DATA, INDEX, INDEX + ".tmp"}.__contains__):
            self.entries = self._read()

    def _read(self) -> list[dict]:
        """The indexed windows of the same job whose lines are all on disk ([] when there is nothing usable)."""
        try:
            with open_in_parts(self.parts / INDEX, "r") as fh:
                lines = fh.read().splitlines()
            head = json.loads(lines[0])
            if head.get("job") != self.job_key:
                return []  # another model, other settings or another armo: start over
            out = []
            with open_in_parts(self.parts / DATA, "rb") as data:
                start = 0
                for line in lines[1:]:
                    e = json.loads(line)
                    if not isinstance(e, dict) or not isinstance(e.get("end"), int) or e["end"] < start:
                        break
                    window = data.read(e["end"] - start)
                    if len(window) != e["end"] - start or hashlib.sha256(window).hexdigest() != e.get("sha256"):
                        break  # a changed, moved or missing window: scored again, with every one after it
                    out.append({"key": e["key"], "end": e["end"], "sha256": e["sha256"]})
                    start = e["end"]
            return out
        except (OSError, ValueError, IndexError, KeyError, AttributeError, TypeError):
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
        make_parts(self.parts)
        data = self.parts / DATA
        with open_in_parts(data, "ab") as fh:  # create it if needed, then cut what no index line vouches for
            fh.truncate(self.entries[-1]["end"] if self.entries else 0)
        tmp = self.parts / (INDEX + ".tmp")
        with open_in_parts(tmp, "a") as fh:
            fh.truncate(0)
            fh.write("".join(dumps(x) + "\n" for x in [{"job": self.job_key, "armo_version": __version__}, *self.entries]))
        os.replace(tmp, self.parts / INDEX)
        self._data = open_in_parts(data, "ab")
        self._index = open_in_parts(self.parts / INDEX, "a")

    def add(self, key: str, text: str) -> None:
        """Append one finished window's lines, then its index line (each flushed to disk)."""
        if self._data is None:
            self._open()
        raw = text.encode("utf-8")
        self._data.write(raw)
        self._data.flush()
        os.fsync(self._data.fileno())
        e = {"key": key, "end": self._data.tell(), "sha256": hashlib.sha256(raw).hexdigest()}
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
        with open_in_parts(self.parts / DATA, "r") as fh:
            return fh.read()

    def publish(self) -> None:
        """The completed data file becomes the output (made by open(), it has the user's umask), and the
        progress folder goes."""
        publish_file(self.parts / DATA, self.target)
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
        if not self.entries:
            remove_parts(self.parts)
