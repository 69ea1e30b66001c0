"""Opening a file the project only reads (a film, a bundle's files, a manifest) so that a special file in its place
is refused rather than read: a FIFO would wait for a writer, a device such as /dev/zero never end."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from pneumoscan.core.names import file_kind


class NotRegularFile(ValueError):
    """A path that opened as something other than a regular file; the message names what it is."""


def open_regular(path: Path | str) -> BinaryIO:
    """``path`` opened for reading without blocking, refused (:class:`NotRegularFile`) unless the handle opened is a
    regular file. The check is on the opened handle, so a file swapped for a pipe after a check is still caught.
    The handle names its path, as ``open``'s does: a library that reopens a file by its name (pydicom, for a value
    it left unread) would otherwise get the descriptor's number, which the OS reuses once this one is closed.
    The check comes before the handle is made: Python refuses a folder's descriptor there, in words that name the
    descriptor's number ("6: is a directory") and leave it open."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"not a regular file ({file_kind(mode)})")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    f.raw.name = os.fspath(path)
    return f
