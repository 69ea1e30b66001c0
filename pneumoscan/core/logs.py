"""Progress bars and log output of the library.

The library reports through :mod:`logging` (logger ``pneumoscan`` and its children) and never configures it: a
program that imports pneumoscan decides what it sees. Progress bars follow the same switch: they show only while
the ``pneumoscan`` logger passes INFO, so ``logging.getLogger("pneumoscan").setLevel(logging.WARNING)`` silences
both. The command line (:func:`configure`) shows INFO and above on stderr, or warnings alone with ``-q``, and
Python warnings among them as log lines.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import TextIO

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress, ProgressColumn

LOGGER = "pneumoscan"
# one console for the log and the bars, so a message logged while a bar runs is printed above it
console = Console(stderr=True)


def progress(*columns: str | ProgressColumn, enabled: bool = True) -> Progress:
    """A rich progress bar on stderr, shown when ``enabled`` and the pneumoscan logger passes INFO."""
    shown = enabled and logging.getLogger(LOGGER).isEnabledFor(logging.INFO)
    return Progress(*columns, console=console, disable=not shown)


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """A Python warning (:func:`warnings.showwarning`'s arguments) as one log line: its text, and its kind unless
    a plain UserWarning. The file, line number and source line Python adds speak to a developer, not a user."""
    kind = "" if category is UserWarning else f"{category.__name__}: "
    logging.getLogger(LOGGER).warning("%s%s", kind, message)


class _Lines(logging.Handler):
    """Each message as one line on ``sys.stderr`` as it is when the message comes (as rich's console writes), not
    the stream it was at :func:`configure`, which a caller that captures stderr may since have closed."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # logging's own rule: a message that cannot be written never stops the program
            self.handleError(record)


def configure(quiet: bool = False) -> None:
    """The command line's logging: pneumoscan's messages on stderr, INFO and above, WARNING and above with
    ``quiet``; Python warnings become such messages too. On a terminal through rich (markup off: file names are
    printed as they are); elsewhere (a service's journal, a pipe, a file) one plain line a message, as rich wraps
    at its 80 columns there and a log collector takes each piece for a message of its own. Calling it again
    replaces the handler it added before."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if getattr(h, "_pneumoscan_cli", False)]:
        logger.removeHandler(handler)
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, markup=False, show_time=False, show_path=False, rich_tracebacks=False)
    else:
        handler = _Lines()
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    handler._pneumoscan_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    warnings.showwarning = _log_warning
