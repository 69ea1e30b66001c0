"""Progress bars and log output of the library, and the redaction of values other libraries' logs quote.

The library reports through :mod:`logging` (logger ``pneumoscan`` and its children) and never configures it: a
program that imports pneumoscan decides what it sees. Progress bars follow the same switch: they show only while
the ``pneumoscan`` logger passes INFO, so ``logging.getLogger("pneumoscan").setLevel(logging.WARNING)`` silences
both. The command line (:func:`configure`) shows INFO and above on stderr, or warnings alone with ``-q``, and
Python warnings among them as log lines.

pydicom and highdicom quote DICOM element values (a patient's name, id or birth date) in their log records and
warnings: :func:`keep_dicom_values_out_of_logs` redacts them (:func:`redact`), by logger name, for the modules that
use those libraries. The DICOM reader imports this module, so it loads neither of them, nor rich before a bar or the
command line's log needs it. :func:`raised_at` names where an error was raised, for a log line that gives no
traceback (a traceback would repeat what its message quotes); :func:`error_chain` walks an error's causes.
:class:`OneLineLog` holds a service's repeated warnings to one a kind every few seconds.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn

LOGGER = "pneumoscan"
# A quote: a double quote, or a single one that is no apostrophe inside a word. An apostrophe has a letter on each
# side (the model's, the patient's, doesn't); taken for a quote, the redaction would swallow pneumoscan's own
# words up to the next quote or apostrophe. Two letters before it, not one: a bytes value's repr (b'Hans') opens with a
# single letter, and its opening quote taken for an apostrophe would leave the value unredacted.
_LETTER = r"[^\W\d_]"
_QUOTE = rf"""(?:"|(?<!{_LETTER}{_LETTER})'|'(?!{_LETTER}))"""
# From the first quote to the last: a value may itself hold quotes ("'['20190317', '20190318']'", 'O'Brien^Pat'),
# and pairing them one by one would leave the dates between the pairs in the clear.
_QUOTED = re.compile(rf"{_QUOTE}.*{_QUOTE}", re.DOTALL)


@functools.cache
def _console() -> Console:
    """The one console for the log and the bars, so a message logged while a bar runs is printed above it."""
    from rich.console import Console

    return Console(stderr=True)


def progress(*columns: str | ProgressColumn, enabled: bool = True) -> Progress:
    """A rich progress bar on stderr, shown when ``enabled`` and the pneumoscan logger passes INFO."""
    from rich.progress import Progress

    shown = enabled and logging.getLogger(LOGGER).isEnabledFor(logging.INFO)
    return Progress(*columns, console=_console(), disable=not shown)


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
    if _console().is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(console=_console(), markup=False, show_time=False, show_path=False,
                              rich_tracebacks=False)
    else:
        handler = _Lines()
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    handler._pneumoscan_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    warnings.showwarning = _log_warning


def show_log_of(package: str, level: int = logging.WARNING) -> None:
    """``package``'s log records at ``level`` and above on the command line's log (:func:`configure`), formatted as
    pneumoscan's and redacted (:func:`keep_dicom_values_out_of_logs`): a library that logs to no one (pynetdicom
    adds a NullHandler) would otherwise keep its refusals and network errors from the journal."""
    logger = logging.getLogger(package)
    for handler in [h for h in logger.handlers if getattr(h, "_pneumoscan_cli", False)]:
        logger.removeHandler(handler)
    for handler in [h for h in logging.getLogger(LOGGER).handlers if getattr(h, "_pneumoscan_cli", False)]:
        logger.addHandler(handler)
    logger.setLevel(level)
    keep_dicom_values_out_of_logs(package)


def redact(text: str) -> str:
    """``text`` with everything from its first quote to its last replaced by ``'...'``: pydicom and highdicom
    quote element values in their messages ("Invalid value for VR DA: '...'"), and the value may be a patient's
    name, id or birth date. An apostrophe inside a word (the model's) is no quote: pneumoscan's own reasons, which
    pass through here with a library's, stay whole."""
    return _QUOTED.sub("'...'", text)


def raised_at(error: BaseException) -> str:
    """Where ``error`` was raised, as a log line names it without a traceback: ``file.py:LINE in function``."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then the error it was raised from or while handling, and so on, each once: a library raises its
    own error while the one that says why (the system's, the TLS library's) is being handled."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# a warning said once for what it says, never held back by OneLineLog: one that answers an operator (a signal, SIGHUP;
# an edit of serve's key file), which would leave a second try within its interval unanswered, and the start of an
# outage of the rate-limit store, which would leave a second outage within it without its start
ANSWER = "answers_an_operator"


class OneLineLog(logging.Filter):
    """A failure's traceback becomes one line, and each kind of warning or error passes at most once every
    ``interval`` seconds, with a count of those held back. At the open-file limit, or under a flood of failing
    requests, the log must stay small and readable (it once grew by 88 MB in 45 s). On serve's loggers
    (:func:`pneumoscan.serving.server.server_config`) and on listen's lost audit lines (a broken audit file is
    otherwise a warning for each film)."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self.last: dict[tuple[str, str], float] = {}
        self.held: Counter[tuple[str, str]] = Counter()
        self.held_back = 0  # lines held back since the start (serve's /metrics: serving.server.HeldBack)
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, ANSWER, False):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        key = (record.name, f"{record.msg}|{type(exc).__name__ if exc else ''}")
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(key, -self.interval) < self.interval:
                self.held[key] += 1
                self.held_back += 1
                return False
            self.last[key] = now
            held = self.held.pop(key, 0)
        text = record.getMessage().rstrip() + (f": {type(exc).__name__}: {exc}" if exc else "")
        if held:
            text += f" ({held} more like this held back)"
        record.msg, record.args, record.exc_info, record.exc_text, record.stack_info = text, None, None, None, None
        return True


class _RedactValues(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


def keep_dicom_values_out_of_logs(*packages: str) -> None:
    """Redact the log records of these packages' loggers (those that exist now and the package's own), and silence
    their UserWarnings, which repeat the same messages unredacted on stderr (pydicom logs each one as well, so the
    redacted record is still there). Per logger and filter rather than a ``catch_warnings`` block, because decoding
    runs in threads and ``catch_warnings`` swaps process-wide state."""
    for package in packages:
        names = [n for n in logging.root.manager.loggerDict if n == package or n.startswith(package + ".")]
        for name in {package, *names}:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RedactValues) for f in logger.filters):
                logger.addFilter(_RedactValues())
        warnings.filterwarnings("ignore", category=UserWarning, module=rf"{re.escape(package)}(\.|$)")
