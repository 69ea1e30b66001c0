"""The one folder walk that dataset discovery (:mod:`.layouts`) and ``predict``'s folder arguments share: every
entry below a folder, each an image to read, an unreadable one or one skipped, with its reason. Linked folders are
followed once each, and no entry is opened before it is known to be a regular file."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pneumoscan.core.names import file_kind
from . import readers
from .pixels import DecodeError, opened

_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
# folders a NAS or an operating system keeps beside a user's files, never a film in them: a Synology's thumbnails of
# each film (@eaDir/FILM/SYNOFILE_THUMB_*.jpg, read as films of their own), its recycle bin and snapshots, and
# Windows' recycle bin and volume information
SYSTEM_FOLDERS = frozenset({"@eadir", "#recycle", "#snapshot", "$recycle.bin", "system volume information"})
ALREADY_SEARCHED = "folder already searched (a link back to it)"  # walk's reason for a real folder reached again
OUTPUT_FOLDER = "output folder of this run (not searched)"  # walk's reason for its ``exclude``


@dataclass(frozen=True)
class Entry:
    """One entry found below a folder: an ``image`` to read, an ``unreadable`` one (named like an image, but a
    broken link, a link loop, a FIFO, ...; or a folder that cannot be listed), or ``skipped`` (junk, not an image,
    a folder named like an image); every one but an image with its reason."""

    path: Path
    kind: str  # "image" | "unreadable" | "skipped"
    reason: str = ""
    # an image's file (device, inode), which discovery keys films by: the stat that classified it gives it, and a
    # hard link shares it, which a real path does not (one file reached from train/ and test/)
    file_id: tuple[int, int] | str = ""


def walk(folder: Path, exclude: Path | None = None, seen: dict[str, Path] | None = None) -> list[Entry]:
    """Every entry below ``folder`` in path order, each accounted for (:class:`Entry`); the one folder walk that
    discovery and prediction share. Linked folders are followed (a site's films linked in), each real folder once, so
    a link to an ancestor cannot loop; ``exclude`` (an output folder inside) is not searched, and is listed as
    skipped whether or not it is there yet (a run that makes it once the search is done says what the next run
    says). ``seen`` (real folder ->
    the path it was first searched at; ``folder`` itself is searched if it is its own first path) can be shared by
    the walks of one dataset, so that no real folder is searched twice in it. Only a regular file whose ending no
    reader claims is opened, for its first bytes (a DICOM file without ``.dcm``, :func:`_is_dicom`): a FIFO is only
    named, never read, so the walk cannot hang."""
    out: list[Entry] = []
    skip = os.path.realpath(exclude) if exclude is not None else None
    seen = {} if seen is None else seen
    pending = [folder]
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if skip is not None and Path(real).is_relative_to(skip):  # the folder itself, or one inside it
            out.append(Entry(current, "skipped", OUTPUT_FOLDER))
            continue
        if seen.setdefault(real, current) != current:
            out.append(Entry(current, "skipped", ALREADY_SEARCHED))
            continue
        try:
            with os.scandir(current) as listing:
                names = [e.name for e in listing]
        except OSError as e:
            out.append(Entry(current, "unreadable", f"cannot list folder: {e.strerror or e}"))
            continue
        below = current.relative_to(folder)
        for name in names:
            path = current / name
            kind, reason, file_id = _classify(path, below / name)
            if kind == "folder":
                pending.append(path)
                if reason:
                    out.append(Entry(path, "skipped", reason))
            else:
                out.append(Entry(path, kind, reason, file_id))
    if exclude is not None and skip is not None and not os.path.lexists(exclude):  # inside, and to be made
        top = os.path.realpath(folder)
        if skip != top and Path(skip).is_relative_to(top):
            out.append(Entry(folder / os.path.relpath(skip, top), "skipped", OUTPUT_FOLDER))
    return sorted(out, key=lambda e: e.path.parts)


def file_identity(path: Path | str, found: os.stat_result | None = None) -> tuple[int, int] | str:
    """What makes paths one file: its device and inode (``found``, its stat through links, when known), which a hard
    link shares and a real path does not; its real path where the file system numbers no inodes (0) or the file
    cannot be read."""
    try:
        found = found or os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (found.st_dev, found.st_ino) if found.st_ino else os.path.realpath(path)


def _classify(path: Path, relative: Path) -> tuple[str, str, tuple[int, int] | str]:
    """(kind, reason, file identity) of one entry: "folder" (reason: why it is listed too), "image", "unreadable" or
    "skipped"; the identity (:func:`file_identity`) is an image's, "" for an entry that cannot be read."""
    file_id: tuple[int, int] | str = ""
    try:
        found = os.stat(path)  # through links
    except OSError as e:
        problem = {errno.ELOOP: "link loop", errno.ENOENT: "broken link"}.get(e.errno, f"cannot read: {e.strerror}")
    else:
        mode, file_id = found.st_mode, file_identity(path, found)
        if stat.S_ISDIR(mode):
            # a folder named like an image may be a film unpacked wrongly; one in a system folder is a NAS's folder of
            # that film's thumbnails
            named = path.suffix.lower() in readers.suffixes() and not _hidden_reason(relative)
            return "folder", "folder named like an image (searched inside, not read)" if named else "", file_id
        problem = None if stat.S_ISREG(mode) else f"not a regular file ({file_kind(mode)})"
    junk = junk_reason(relative)
    if problem is None:
        if junk and not _hidden_reason(relative) and _is_dicom(path):
            return "image", "", file_id
        return ("skipped", junk, file_id) if junk else ("image", "", file_id)
    # a film that cannot be read is unreadable; anything else (README.txt as a broken link) is left out as junk
    return ("skipped", f"{junk}; {problem}", file_id) if junk else ("unreadable", problem, file_id)


def junk_reason(path: Path) -> str | None:
    """Reason to skip a file, or None if it looks like an image we should read."""
    if hidden := _hidden_reason(path):
        return hidden
    if path.suffix.lower() not in readers.suffixes():
        return f"not an image extension ({path.suffix or 'none'})"
    return None


def _hidden_reason(path: Path) -> str | None:
    """Reason to skip a hidden or system file (never a film, whatever it holds), or None."""
    if any(part.startswith(".") and part not in (".", "..") for part in path.parts[:-1]):
        return "hidden folder"
    if any(part.lower() in SYSTEM_FOLDERS for part in path.parts[:-1]):
        return "system folder"
    name = path.name.lower()
    if name in _JUNK_NAMES or name.startswith("._"):
        return "system file"
    if name == "dicomdir":  # every DICOM medium carries one: its index, DICM magic and all, never a film
        return "DICOM media directory (DICOMDIR), not a film"
    if name.startswith("."):
        return "hidden file"
    return None


def _is_dicom(path: Path) -> bool:
    """Whether a regular file starts as DICOM Part 10 does ("DICM" at byte 128): DICOM media name their files
    without an ending (``IM000001``, as a DICOMDIR lists them), and PACS exports by a UID (``1.2.840....52``)."""
    try:
        with opened(path) as f:
            head = f.read(readers.HEAD_BYTES)
    except (OSError, DecodeError):  # unreadable: left out as not an image, as before
        return False
    reader = readers.reader_for(head)
    return reader is not None and reader.name == "DICOM"
