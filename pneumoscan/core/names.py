"""File names as text: in output files (valid UTF-8 whatever the name's bytes; every JSON or CSV results file is
written from :func:`json_ready`'s tree) and in messages (one safe line).

Linux file names are bytes; Python keeps those that are not UTF-8 as lone surrogates ("surrogateescape"), which
cannot be written as UTF-8 and made a whole results file fail. A name may also hold control characters (an ANSI
escape, a newline) or rich markup (``[/x]``), which must never reach a terminal or a console as such.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


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


def json_ready(tree: object, undefined_as_null: bool = False) -> object:
    """``tree`` as json.dumps writes every results file (docs/limits.md), at every depth (a name inside a list of
    warnings too): each string, keys included, valid UTF-8 whatever a file name's bytes (:func:`path_text`:
    ``caf\\xe9.jpeg``, where json.dumps would write a lone surrogate, ``\\udce9``, and a CSV could not be encoded at
    all), a path as its text, numpy scalars and arrays as Python's. ``undefined_as_null``: NaN and infinities become
    None (a figure the films do not define); else they stay, for :func:`json_text` to refuse."""
    if isinstance(tree, (str, os.PathLike)):
        return path_text(tree)
    if isinstance(tree, dict):
        return {path_text(str(k)): json_ready(v, undefined_as_null) for k, v in tree.items()}
    if isinstance(tree, np.ndarray):
        return json_ready(tree.tolist(), undefined_as_null)
    if isinstance(tree, (list, tuple)):
        return [json_ready(v, undefined_as_null) for v in tree]
    if isinstance(tree, (bool, np.bool_)):  # before int: a bool is an int
        return bool(tree)
    if isinstance(tree, (int, np.integer)):
        return int(tree)
    if isinstance(tree, (float, np.floating)):
        value = float(tree)
        return None if undefined_as_null and not math.isfinite(value) else value
    return tree


def results_csv(fields: Sequence[str], rows: Sequence[dict]) -> str:
    """The CSV text of a results file (predict's results, evaluate's predictions and sensitivity table, cv's
    oof.csv, compare.csv): every value :func:`json_ready`, a list (a film's warnings) one cell of its items joined by
    ``; ``, and every cell :func:`cell_text`, so that no name in a file or a manifest runs as a formula."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: cell_text("; ".join(map(str, v)) if isinstance(v, list) else v) for k, v in row.items()}
                     for row in json_ready(list(rows)))
    return buf.getvalue()


def json_text(tree: object) -> str:
    """The JSON text of a results tree (predict's and pacs' results, every JSON file, what ``--json`` prints):
    :func:`json_ready`, indented, and a NaN or infinity refused (ValueError) rather than written as JSON no strict
    reader takes."""
    return json.dumps(json_ready(tree), indent=2, allow_nan=False)


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` is called in messages: "FIFO", "socket", "folder", ... ("file" when regular)."""
    kinds = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISLNK, "link"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "special file")


def path_list(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str | os.PathLike]:
    """Paths given to a function that takes several, as a list: one path given alone is one path, not a sequence of
    characters each read as a path (``"/"`` and ``"."`` among them: a search of the whole disk)."""
    return [paths] if isinstance(paths, (str, bytes, os.PathLike)) else list(paths)


def given_path(path: str | os.PathLike, what: str, variable: str = "") -> Path:
    """``path`` as a Path, an empty one refused (ValueError) as no ``what`` given rather than read as the current
    folder (``Path("")`` is ``.``): an empty path is what an unset shell variable gives (``"$PNEUMOSCAN_DATA"``);
    ``variable``, one that names a ``what``, is named in the refusal."""
    if os.fspath(path) == "":
        such = f", such as {variable}," if variable else ""
        raise ValueError(f"no {what} given (an empty path: is the variable that names it{such} set?)")
    return Path(path)


def qualified_name(obj: object) -> str:
    """Where a class or function is defined, ``module.QualName``: how a refusal names a site's reader, layout, task
    rule or model builder (a class is given for its instances' code), and how a cache key tells two readers apart."""
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
