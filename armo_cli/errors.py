"""armo's error contract, in a module without torch so that every layer (and `armo --help`) can import it.

- ArmoError: bad input or a bad option value. One line, naming file, line and field where there is one;
  exit code 2; nothing partial is left behind.
- OSError from the world (permissions, a full disk, a missing folder): one line, exit code 1.
- Anything else is a bug in armo: a short message asking for a report; exit code 3; the traceback only
  with --debug or ARMO_DEBUG=1.
"""
from __future__ import annotations

import os

EXIT_BAD_INPUT = 2
EXIT_ENVIRONMENT = 1
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler preempting the job, `kill`, `timeout`), raised where the program is, so that every
    `finally` runs as on Ctrl-C: temporary files go, a resumable job keeps exactly its finished work."""


class ArmoError(Exception):
    """A user-facing error: printed as one line, exit code 2. The message is folded onto one line where it is
    made, so that text from the input (a field name with a newline) cannot break the one-line contract."""

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(message))


def debug_enabled() -> bool:
    return os.environ.get("ARMO_DEBUG", "") not in ("", "0")


def one_line(msg: object) -> str:
    """An error message folded onto one line (exception texts from libraries can span several)."""
    return " ".join(str(msg).split())


def environment_message(e: OSError) -> str:
    """'PATH: reason' for an OSError, as the shell would say it."""
    where = e.filename if e.filename is not None else ""
    reason = e.strerror or type(e).__name__
    return one_line(f"{where}: {reason}" if where else reason)
