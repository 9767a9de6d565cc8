"""Output paths and atomic writes: outputs appear whole or not at all, devices and FIFOs are written through, a
failed write names the user's path (exit 1), and a folder armo did not write is never replaced."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import ArmoError


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
        # devices and FIFOs first: a copy into one can fail (/dev/full), a rename beside its file hardly ever does,
        # so outputs written together appear together
        for tmp, t in sorted(zip(tmps, targets), key=lambda x: not writes_through(x[1])):
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


def write_all(fd: int, data: bytes) -> None:
    """Every byte of `data` to `fd`, or an OSError: a short write is continued, and its failure raised."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class StdoutText(io.TextIOBase):
    """stdout for armo's data output (JSONL, a report), written straight to its file descriptor.

    Python's buffered stdout loses the rest of a short write without an error: behind a redirect to a full disk,
    a 2 MB line left 65,536 bytes and exit 0. Here every write is whole or an OSError naming `<stdout>` (exit 1)."""

    def __init__(self) -> None:
        super().__init__()
        sys.stdout.flush()  # whatever print() buffered goes first, in order
        try:
            self._fd: int | None = sys.stdout.fileno()
        except (AttributeError, ValueError, io.UnsupportedOperation):  # a stdout replaced in-process (a test's capture)
            self._fd = None

    def write(self, text: str) -> int:
        with naming("<stdout>"):
            if self._fd is None:
                sys.stdout.write(text)
                sys.stdout.flush()
            else:
                write_all(self._fd, text.encode("utf-8"))
        return len(text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return sys.stdout.isatty() if self._fd is None else os.isatty(self._fd)


def write_stdout(text: str) -> None:
    """Write `text` to stdout whole, or fail naming `<stdout>` (the one writer of every command's stdout data)."""
    StdoutText().write(text)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_texts_atomic({str(path): text})


def write_texts_atomic(texts: dict[str, str]) -> None:
    """Write several text outputs so that they all appear or none does; '-' is stdout. The files are written to
    temporary paths first; stdout is written before any of them is published, so a failing stdout (a full disk
    behind a redirect) leaves no file behind, and a failing file leaves stdout unwritten."""
    files = {p: t for p, t in texts.items() if str(p) != "-"}
    with atomic_paths(list(files)) as tmps:
        for tmp, text in zip(tmps, files.values()):
            tmp.write_text(text, encoding="utf-8")
        if "-" in texts:
            write_stdout(texts["-"])


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


def check_outputs(output: str | Path | None, json_out: str | Path | None, inputs: Iterable[str | Path | None]) -> None:
    """A fit stage's outputs: the artifact (a file, never stdout) and the optional JSON report."""
    inputs = list(inputs)
    check_output_file(output, "--output", inputs, stdout_ok=False)
    check_output_file(json_out, "--json", inputs)
    if output is not None and json_out is not None and str(output) == str(json_out):
        raise ArmoError("--output and --json: give each output its own path")
