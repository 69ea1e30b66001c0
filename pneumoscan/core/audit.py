"""An audit file (``serve --audit-log``, ``listen --audit-log``): one JSON line a record, appended and flushed one by
one through :mod:`logging` by a :class:`logging.handlers.WatchedFileHandler`, which opens the file again at the same
path once logrotate has moved it. The file links films to answers, so it is created for the service's user alone
(0600), and one that others may read or any group may write is refused at start, as is a path that cannot be
written. A line that cannot be written is said as a warning; :meth:`AuditLog.write` says whether it was written, for
a site that refuses a reading without its record (``--audit-required``)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import stat
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

FILE_MODE = 0o600  # a file created, or created again after logrotate moved it: the service's user alone
REFUSED_MODE = stat.S_IWGRP | stat.S_IRWXO  # an existing file's bits refused: others' access, a group's writing
# each line's `event` in listen's audit log, in the order of docs/deployment.md's table: the one list that table,
# `listen --audit-log`'s help and the listener's lines (pneumoscan.interop.dimse) are held to (tests/test_docs.py)
LISTEN_EVENTS = ("film_read", "film_refused", "association_refused", "instance_set_aside", "scored_film_withdrawn",
                 "association_aborted", "report_stored", "report_refused")


class AuditFile(logging.handlers.WatchedFileHandler):
    """A :class:`~logging.handlers.WatchedFileHandler` whose file is created :data:`FILE_MODE` whatever the umask,
    whose line that cannot be written (a full disk, its path made a folder) is said as a warning to ``log``, not as
    logging's traceback nor an exception, and who notes it in ``failed``."""

    def __init__(self, path: Path, log: logging.Logger, goes_on: str) -> None:
        self.log, self.goes_on, self.failed = log, goes_on, False
        super().__init__(path, encoding="utf-8")

    def _open(self) -> Any:
        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,
                    opener=lambda path, flags: os.open(path, flags, FILE_MODE))

    def emit(self, record: logging.LogRecord) -> None:
        try:  # the file opened again at its path (logrotate) outside StreamHandler's own try: a folder there raised
            super().emit(record)
        except OSError:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.failed = True
        error = getattr(sys.exc_info()[1], "strerror", None) or type(sys.exc_info()[1]).__name__
        self.log.warning("audit log lines to %s are lost (%s): free its disk or mend its folder; %s",
                         self.baseFilename, error, self.goes_on)


class AuditLog:
    """The audit file at ``path``, opened (and so proven writable) at once: a path that cannot be written, is not a
    regular file, or whose mode lets others read it or any group write it is refused (ValueError, with the reason)
    before the model loads. Lines go through a logger of its own, which no other handler sees; a line lost is a
    warning of ``log`` (the service's own, whose filters rate-limit it). ``required``: a reading whose line is lost
    is refused by the caller. Each command's subclass names what it does once a line is lost, which the warning
    says: :attr:`goes_on`, and :attr:`goes_on_required` with ``required``."""

    log = logging.getLogger(__name__)
    goes_on: ClassVar[str]
    goes_on_required: ClassVar[str]

    def __init__(self, path: Path | str, required: bool = False) -> None:
        self.path, self.required = Path(path), required
        try:
            found = os.stat(self.path)
            # checked before it is opened: a FIFO opened for writing waits for a reader, the start with it
            if not stat.S_ISREG(found.st_mode):
                raise ValueError(f"--audit-log {self.path}: not a regular file: name a file to append to")
            if found.st_mode & REFUSED_MODE:
                raise ValueError(f"--audit-log {self.path}: its mode {stat.filemode(found.st_mode)} lets others read "
                                 "it or a group write it, and it links films to answers: chmod 600 (or 640) it")
        except FileNotFoundError:
            pass  # created by the handler, FILE_MODE
        except OSError as e:
            raise ValueError(f"--audit-log {self.path}: cannot be written ({e.strerror})") from None
        try:
            self.handler = AuditFile(self.path, self.log, self.goes_on_required if required else self.goes_on)
        except OSError as e:
            raise ValueError(f"--audit-log {self.path}: cannot be written ({e.strerror})") from None
        # a logger of its own, not the manager's: apps made side by side (tests) write each to its own file alone
        self.logger = logging.Logger("pneumoscan.audit", logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(self.handler)
        self._lock = threading.Lock()  # one line's outcome read by the thread that wrote it

    def write(self, entry: Mapping[str, Any]) -> bool:
        """One line, appended and flushed; whether it was written."""
        with self._lock:
            self.handler.failed = False
            self.logger.info("%s", json.dumps(entry, separators=(",", ":")))
            return not self.handler.failed

    def close(self) -> None:
        try:
            self.handler.close()
        except OSError:  # the last lines' flush again (a full disk): their loss was said as they were written
            pass


def now() -> str:
    """UTC now, to the millisecond, as ISO 8601 with a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
