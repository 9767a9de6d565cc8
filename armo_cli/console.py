"""stderr output: one rich console, progress bars and tables.

Rich reads `[...]` as markup. Ids, subsets, objective names, paths and values quoted in messages come from the
user's files, so every such text goes through `plain` here: `[/]` in an id would otherwise crash the output,
`[bold red]x` would print as a red `x`, an escape sequence would reach the terminal (`\x1b[2J` clears it) and a
newline would split a one-line error. Markup lives only in the literals below."""
from __future__ import annotations

import re
import time
from typing import Iterable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


class LineProgress:
    """Progress where stderr is a log file or a pipe (nohup, a scheduler): a rich bar draws nothing there until the
    end, so a plain line is printed at every further tenth of the work and at least every `every_s` seconds."""

    def __init__(self, every_s: float = 30.0, clock=time.monotonic):
        self.every_s, self.clock = every_s, clock
        self.tasks: list[dict] = []

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self.tasks:
            if exc[0] is None and t["printed"] != t["done"]:
                self._line(t)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: object) -> int:
        # `completed`: work done before this run (a resumed job), as rich's add_task takes it, not a field to print
        now = self.clock()
        tenth = int(10 * completed / total) if total else 0
        self.tasks.append({"description": description, "total": total, "done": completed, "fields": dict(fields),
                           "start": now, "last": now, "printed": completed, "tenth": tenth, "from": completed})
        return len(self.tasks) - 1

    def update(self, task: int, advance: float | None = None, completed: float | None = None, **fields: object) -> None:
        t = self.tasks[task]
        t["fields"].update(fields)
        t["done"] = completed if completed is not None else t["done"] + (advance or 0)
        tenth = int(10 * t["done"] / t["total"]) if t["total"] else 0
        if tenth > t["tenth"] or self.clock() - t["last"] >= self.every_s:
            t["tenth"] = tenth
            self._line(t)

    def _line(self, t: dict) -> None:
        now = self.clock()
        t["last"], t["printed"] = now, t["done"]
        share = f" ({t['done'] / t['total']:.0%})" if t["total"] else ""
        extra = "".join(f", {v}" for v in t["fields"].values() if v)
        run, ran = t["done"] - t["from"], now - t["start"]
        eta = f", ETA {ran * (t['total'] - t['done']) / run:.0f} s" if t["total"] and 0 < run and t["done"] < t["total"] else ""
        console.print(plain(f"{t['description']}: {t['done']:g}/{t['total']:g}{share}{extra}, {ran:.0f} s{eta}"),
                      highlight=False, soft_wrap=True)


def progress(quiet: bool = False) -> Progress | LineProgress:
    if not quiet and not console.is_terminal:
        return LineProgress()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """Control characters as their Python escapes (`\\x1b`, `\\n`): what the text holds, shown, never acted on."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def plain(text: str) -> str:
    """User text for the terminal, shown as written: control characters as Python escapes, markup escaped."""
    return escape(visible(text))


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[object]]) -> Table:
    t = Table(title=plain(title), title_justify="left")
    for i, c in enumerate(columns):
        # fold rather than truncate: objective names must stay readable on narrow terminals
        t.add_column(plain(c), justify="left" if i == 0 else "right", overflow="fold", min_width=min(len(c), 12))
    for r in rows:
        t.add_row(*[plain(fmt(v)) for v in r])
    return t


def fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"  # undefined (e.g. a correlation over one pair): null in the JSON, '-' here
        return f"{v:.4g}" if 0 < abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
    return str(v)


def show(t: Table, quiet: bool = False) -> None:
    if not quiet:
        console.print(t)


def error(msg: str) -> None:
    # one line each, however narrow the terminal or log (grep-able)
    console.print(f"[red]error:[/red] {plain(msg)}", highlight=False, soft_wrap=True)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {plain(msg)}", highlight=False, soft_wrap=True)


def info(msg: str, quiet: bool = False, done: str | None = None, style: str = "green") -> None:
    """One line; `done` is a leading word in `style` ("wrote", "merged"): `wrote out.st: 80 rows`."""
    if not quiet:
        head = f"[{style}]{plain(done)}[/{style}] " if done else ""
        console.print(head + plain(msg), highlight=False, soft_wrap=True)


def loading(what: str, quiet: bool = False):
    """A transient "loading ..." line on a terminal while a model loads (seconds, silent otherwise); nothing
    in a log or with -q."""
    import contextlib

    if quiet or not console.is_terminal:
        return contextlib.nullcontext()
    return console.status(plain(what), spinner="dots")
