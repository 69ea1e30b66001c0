"""The image reader interface (:class:`Reader`) and the registry of readers, which decoding and discovery ask."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumoscan.core.registry import Registry

HEAD_BYTES = 132  # what a reader sees to recognise a file: DICOM's "DICM" magic sits at bytes 128-131
SPREAD_SIDE = 64  # short side (px) of the reduced image :meth:`Reader.colour_spread` measures: enough to tell colour

log = logging.getLogger(__name__)


class Reader(ABC):
    """One file format's reader. ``src`` is a path to a regular, non-empty file or the uploaded bytes (checked by
    :mod:`pneumoscan.data.decode` first); every bad input is a :class:`pneumoscan.data.pixels.DecodeError` with a
    reason, and both methods refuse, from the header, an image beyond :data:`pneumoscan.data.pixels.MAX_PIXELS` or
    :data:`pneumoscan.data.pixels.MAX_DECODED_BYTES`, before its pixels are decoded."""

    name: str = ""  # what a caller may declare a file to be (an upload's type), e.g. "DICOM"
    formats: tuple[str, ...] = ()  # the formats a refusal lists ("not a JPEG, PNG or DICOM image")
    suffixes: frozenset[str] = frozenset()  # lower-case file-name endings discovery takes as this format's images
    media_types: tuple[str, ...] = ()  # the content types the service takes an upload of this format as

    @abstractmethod
    def sniff(self, head: bytes) -> bool:
        """Whether the file's first :data:`HEAD_BYTES` bytes (fewer for a short file) mark this format."""

    @abstractmethod
    def header(self, src: Path | bytes) -> dict:
        """From the header only, no pixel decoded: ``{"width", "height", "mode", "format", "quality"}``. mode is the
        pixel kind with its bit depth (Pillow's mode: "L", "I;16", "RGB"; DICOM's photometric interpretation and bits
        stored: "MONOCHROME2/12"); quality a JPEG's nearest libjpeg quality (1-100), else None."""

    @abstractmethod
    def gray(self, src: Path | bytes, target: int | None) -> np.ndarray:
        """uint8 H x W pixels, upright, reduced with :func:`pneumoscan.data.pixels.reduce` towards ``target``."""

    def colour_spread(self, src: Path | bytes) -> float:
        """How far the image's colour channels differ (:func:`channel_spread` on it reduced to about
        :data:`SPREAD_SIDE` px): a radiograph is grey, so a large spread marks a photograph or a coloured screen
        capture (:mod:`pneumoscan.data.scope` warns). 0 here: a format whose pixels are grey, or whose colour its
        header states (DICOM's PhotometricInterpretation)."""
        return 0.0


def channel_spread(rgb: np.ndarray) -> float:
    """The 99th percentile over the pixels of an H x W x C array of each pixel's largest minus smallest channel: 0
    for grey stored as colour; a few isolated coloured pixels (a marker, chroma bleeding at an edge) do not count."""
    values = rgb.astype(np.int16)
    return float(np.percentile(values.max(axis=2) - values.min(axis=2), 99))


_READERS: Registry[Reader] = Registry("reader", log)


def register(reader: Reader) -> Reader:
    """Add ``reader`` (one of a name at most: a second replaces the first in its place, with a warning, so a site
    can swap a built-in and a notebook cell that registers one can run again)."""
    if not reader.name:
        raise ValueError(f"{type(reader).__name__}: a reader needs a name")
    return _READERS.add(reader.name, reader, origin=type(reader).__module__)


def plugin_readers() -> dict[str, str]:
    """The readers registered by modules outside pneumoscan, by name -> module (:meth:`Registry.plugins`)."""
    return _READERS.plugins()


def unregister(name: str) -> None:
    """Remove the reader called ``name`` (a test's toy reader); nothing when none is."""
    _READERS.remove(name)


def registered() -> tuple[Reader, ...]:
    """The registered readers, in the order they are asked."""
    return tuple(_READERS.entries().values())


def reader_for(head: bytes, suffix: str = "", declared: str | None = None) -> Reader | None:
    """The reader for a file: the one ``declared`` (an upload's type) when given, else the first whose magic bytes
    match, else the first claiming the suffix; None when no registered reader takes it."""
    if declared is not None:
        return _READERS.entries().get(declared)
    # by suffix only when no magic matches: a DICOM without its preamble carries none
    return next((r for r in registered() if r.sniff(head)), None) or claiming(suffix)


def claiming(suffix: str) -> Reader | None:
    """The first registered reader that claims a file-name ending (``.dcm``), None when none does."""
    return next((r for r in registered() if suffix.lower() in r.suffixes), None)


def formats() -> str:
    """'JPEG, PNG or DICOM': the registered formats, for a reason that says what a file is not."""
    return one_of([f for r in registered() for f in r.formats])


def one_of(names: Sequence[str]) -> str:
    """'A, B or C': the names as a refusal lists what it takes."""
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def media_types() -> tuple[str, ...]:
    """Every content type some registered reader takes, in registration order: what the service accepts."""
    return tuple(dict.fromkeys(t for r in registered() for t in r.media_types))


def suffixes() -> frozenset[str]:
    """Every file-name ending some registered reader claims: what discovery and prediction take as images."""
    return frozenset().union(*(r.suffixes for r in registered()))
