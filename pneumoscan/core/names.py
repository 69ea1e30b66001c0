"""File names as text: in output files (valid UTF-8 whatever the name's bytes) and in messages (one safe line).

Linux file names are bytes; Python keeps those that are not UTF-8 as lone surrogates ("surrogateescape"), which
cannot be written as UTF-8 and made a whole results file fail. A name may also hold control characters (an ANSI
escape, a newline) or rich markup (``[/x]``), which must never reach a terminal or a console as such.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path


def path_text(path: str | Path) -> str:
    """``path`` as valid Unicode: each byte that is not UTF-8 written ``\\xNN`` (``caf\\xe9.jpeg``), the rest as is."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads a cell as a formula by (OWASP)


def cell_text(value: object) -> object:
    """A results file's cell as a spreadsheet shows it, never runs it: text that starts as a formula does
    (``=HYPERLINK(...)`` in a file name, a manifest's patient column) gets a leading apostrophe, which spreadsheets
    read as "text" and do not show. Results files only: a manifest must read back as it was written."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def shown(text: str | Path) -> str:
    """A path (or a message holding one) for display: :func:`path_text`, with every control or invisible character
    (ANSI escape, newline, bidi override) written as its escape (``\\x1b``), so it stays one line and prints
    nothing but itself. On a rich console, print it with markup off (the command line's log handler has it off),
    so that brackets in a name are not read as markup."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in path_text(text))


def is_utf8(text: str | Path) -> bool:
    """Whether a name is valid UTF-8 (a name of other bytes holds lone surrogates as Python reads it)."""
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8_strings(tree: object) -> object:
    """A JSON tree whose strings (keys too) are valid UTF-8 whatever the file names' bytes (:func:`path_text`:
    ``caf\\xe9.jpeg``), as every results file is (docs/limits.md); json.dumps would write a lone surrogate
    (``\\udce9``)."""
    if isinstance(tree, str):
        return path_text(tree)
    if isinstance(tree, dict):
        return {utf8_strings(k): utf8_strings(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [utf8_strings(v) for v in tree]
    return tree


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` is called in messages: "FIFO", "socket", "folder", ... ("file" when regular)."""
    kinds = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISLNK, "link"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "special file")


def path_list(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str | os.PathLike]:
    """Paths given to a function that takes several, as a list: one path given alone is one path, not a sequence of
    characters each read as a path (``"/"`` and ``"."`` among them: a search of the whole disk)."""
    return [paths] if isinstance(paths, (str, bytes, os.PathLike)) else list(paths)
