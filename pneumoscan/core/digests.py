"""SHA-256 digests in the form every record holds (``sha256:HEX``: bundle.json's files, data checksums, the films
a figure is on) and, for the records that hold the bare hex (an ONNX sidecar's), that hex."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pneumoscan.core.files import open_regular

PREFIX = "sha256:"


def bytes_sha256(data: bytes) -> str:
    """``sha256:HEX`` of ``data``."""
    return PREFIX + hashlib.sha256(data).hexdigest()


def json_sha256(value: object) -> str:
    """``sha256:HEX`` of ``value`` in one canonical JSON spelling (sorted keys, no spaces), so that key order and
    indentation do not matter and every value does."""
    return bytes_sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def file_sha256(path: Path | str) -> str:
    """``sha256:HEX`` of a regular file's bytes, read in chunks (:func:`~pneumoscan.core.files.open_regular`: a link
    to /dev/zero would be hashed without end)."""
    with open_regular(path) as f:
        return PREFIX + hashlib.file_digest(f, "sha256").hexdigest()


def hex_part(digest: str) -> str:
    """The HEX of ``sha256:HEX`` (a bare hex stays as it is)."""
    return digest.removeprefix(PREFIX)
