"""The terminal side of every command: stderr (`err`), one-line errors and exit statuses at the
error boundary, tables, and under torchrun one voice (rank 0's)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from resexp.errors import FAILED, signalled

err = Console(stderr=True)


@contextmanager
def quiet_unless_main() -> Iterator[None]:
    """Under torchrun rank 0 speaks for all (resexp.distributed.printed_line): the others' console is
    quiet for the length of the command."""
    from resexp import distributed
    from resexp.errors import ConfigError

    before = err.quiet
    with contextlib.suppress(ConfigError):  # a half-set torchrun environment: the error boundary says so
        err.quiet = not distributed.current().main
    try:
        yield
    finally:
        err.quiet = before


def rich_table(title: str, columns: list[str], rows: list[list[str]]):
    """A table of strings for the terminal (analyze's and eval's results)."""
    from rich.table import Table

    shown = Table(title=title)
    for column in columns:
        shown.add_column(column)
    for row in rows:
        shown.add_row(*row)
    return shown


def wide_console(width: int) -> Console:
    """stdout, at least `width` columns wide (a table is not folded in a narrow or piped terminal)."""
    console = Console()
    console.width = max(console.width, width)
    return console


def fail(message: str, code: int = FAILED) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def boundary(debug: bool, interrupted: str = "interrupted: nothing was written") -> Iterator[None]:
    """Every command's error boundary: a mistake or a failure is one line and exit status 1 (the
    traceback with --debug), Ctrl-C exit status 130."""
    from resexp.errors import one_line

    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt as e:
        err.print(str(e) or interrupted, highlight=False, soft_wrap=True)
        raise typer.Exit(signalled(2)) from None
    except Exception as e:
        if debug:
            raise
        raise fail(one_line(e)) from None


def note(text: str) -> None:
    """A warning or progress line on stderr, as written (no markup)."""
    err.print(escape(text), highlight=False, soft_wrap=True)
