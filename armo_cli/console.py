"""stderr output: one rich console, progress bars and tables.

Rich reads `[...]` as markup. Ids, subsets, objective names, paths and values quoted in messages come from the
user's files, so every such text goes through `plain` here: `[/]` in an id would otherwise crash the output,
`[bold red]x` would print as a red `x`, an escape sequence would reach the terminal (`\x1b[2J` clears it) and a
newline would split a one-line error. Markup lives only in the literals below."""
from __future__ import annotations

import re
from typing import Iterable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


def progress(quiet: bool = False) -> Progress:
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
