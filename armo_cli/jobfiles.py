"""A job's own files beside its output: the progress folder (`OUT.parts/`, armo's only while it holds armo's
marker; no link inside it is followed) and the lock (`OUT.lock`, taken over only when armo wrote it)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterator

from .errors import ArmoError


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
    """Create a job's progress folder with armo's marker (nothing happens if it exists: claim_parts checked it). The
    folder is the user's alone (0700, whatever the umask): what it holds is reused by --resume."""
    if not parts.is_dir():
        parts.mkdir(parents=True, mode=0o700)
        (parts / PARTS_MARK).write_text(json.dumps({"armo_progress": True}) + "\n", encoding="utf-8")
    os.chmod(parts, 0o700)  # mkdir's mode passes through the umask; one made by an earlier armo was 0755


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
