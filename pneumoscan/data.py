"""Dataset discovery: turn a folder tree or a CSV manifest into image records.

Labels come from folder names (``NORMAL`` / ``PNEUMONIA``, any case); the pneumonia subtype and the patient id
come from the file names: the Kaggle/Kermany ones (``person12_bacteria_45.jpeg``; normals name a study,
``IM-0115-0001.jpeg`` or ``NORMAL2-IM-0381-0001.jpeg``) and the Mendeley release's (``BACTERIA-4038442-0001.jpeg``,
``VIRUS-2040583-0001.jpeg``, ``NORMAL-2552119-0002.jpeg``: kind, patient, film), any case. Everything downstream
works on :class:`Record` lists.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png", ".dcm"})
LABELS = ("NORMAL", "PNEUMONIA")
SUBTYPES = ("normal", "bacteria", "virus")
SPLITS = ("train", "val", "test")
MANIFEST_FIELDS = ("path", "label", "subtype", "patient", "split")

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
_STUDY = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)", re.IGNORECASE)
_MENDELEY = re.compile(r"^(normal|bacteria|virus)-(\d+)-\d+$", re.IGNORECASE)
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class Record:
    """One image: where it is, which split and class it belongs to, and whose it is."""

    path: str
    label: str  # "NORMAL" | "PNEUMONIA"
    subtype: str  # "normal" | "bacteria" | "virus" | "" when a pneumonia file name does not say
    patient: str  # patient (personN, Mendeley's number) or study (IM-NNNN) id; the file stem when none is in the name
    split: str = ""  # "train" | "val" | "test" | "" for a single folder or a manifest without splits


@dataclass
class Discovery:
    """Records found, plus the files skipped on the way (path, reason) so a user can see what was left out."""

    records: list[Record] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]


def parse_name(filename: str, label: str) -> tuple[str, str]:
    """(subtype, patient id) from an original file name; unknown parts fall back to '' and the stem. The folder's
    label wins: a NORMAL film's subtype is "normal", and a PNEUMONIA film named NORMAL-... has no known subtype."""
    stem = Path(filename).stem
    m = _MENDELEY.match(stem)
    if m:
        kind = m.group(1).lower()
        if label == "NORMAL":
            return "normal", m.group(2)
        return ("" if kind == "normal" else kind), m.group(2)
    if label == "NORMAL":
        m = _STUDY.match(stem)
        return "normal", (m.group(1).upper() if m else stem)
    m = _PERSON.match(stem)
    if m:
        return m.group(2).lower(), m.group(1).lower()
    return "", stem


def make_record(path: Path | str, label: str, split: str = "") -> Record:
    label = label.upper()
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r} (expected one of {LABELS})")
    subtype, patient = parse_name(Path(path).name, label)
    return Record(path=str(path), label=label, subtype=subtype, patient=patient, split=split)


def _is_junk(path: Path) -> str | None:
    """Reason to skip a file, or None if it looks like an image we should read."""
    if any(part.startswith(".") and part not in (".", "..") for part in path.parts[:-1]):
        return "hidden folder"
    name = path.name.lower()
    if name in _JUNK_NAMES or name.startswith("._"):
        return "system file"
    if name.startswith("."):
        return "hidden file"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image extension ({path.suffix or 'none'})"
    return None


def _skip(entry: Path, kind: str, found: Discovery) -> None:
    """Record an entry that is not a ``kind`` folder (split or class) with the reason it was left out."""
    if entry.is_dir():
        reason = "hidden folder" if entry.name.startswith(".") else f"not a {kind} folder"
    else:
        reason = _is_junk(Path(entry.name)) or f"outside the {kind} folders"
    found.skipped.append({"path": str(entry), "reason": reason})


def _entries_below(folder: Path) -> list[Path]:
    """Every non-folder entry below ``folder``, sorted. Linked folders are followed (a site's films linked in), each
    real folder once, so a link to an ancestor cannot loop; pathlib's rglob does not follow them before 3.13."""
    seen: set[str] = set()
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        out.extend(Path(dirpath, name) for name in filenames)
    return sorted(out)


def _scan_class_folders(folder: Path, split: str, found: Discovery) -> None:
    for class_dir in sorted(folder.iterdir()):
        label = class_dir.name.upper()
        if not class_dir.is_dir() or label not in LABELS:
            _skip(class_dir, "class", found)
            continue
        for path in _entries_below(class_dir):
            reason = _is_junk(path.relative_to(class_dir)) or (None if path.is_file() else "broken link or not a file")
            if reason:
                found.skipped.append({"path": str(path), "reason": reason})
            else:
                found.records.append(make_record(path, label, split))


def discover(root: Path | str) -> Discovery:
    """Records under a dataset root (``{train,val,test}/{NORMAL,PNEUMONIA}``), a single split folder
    (``{NORMAL,PNEUMONIA}``), or a CSV manifest file."""
    root = Path(root)
    if root.is_file():
        return read_manifest(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset not found: {root}")
    found = Discovery()
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    split_dirs = [children[s] for s in SPLITS if s in children]
    if split_dirs:
        for entry in sorted(set(root.iterdir()) - set(split_dirs)):
            _skip(entry, "split", found)
        for folder in split_dirs:
            _scan_class_folders(folder, folder.name.lower(), found)
    elif any(name.upper() in LABELS for name in children):
        _scan_class_folders(root, "", found)
    else:
        raise ValueError(f"{root}: expected {{train,val,test}}/{{NORMAL,PNEUMONIA}} or {{NORMAL,PNEUMONIA}} folders")
    return found


def read_manifest(csv_path: Path | str) -> Discovery:
    """Records from a CSV with columns ``path,label[,subtype,patient,split]``; relative paths are taken
    relative to the CSV's folder. Missing subtype/patient are parsed from the file name."""
    csv_path = Path(csv_path)
    found = Discovery()
    # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark; surrogateescape: file names that are
    # not UTF-8 (an old zip's) round-trip as write_manifest wrote them
    with csv_path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: not a manifest, no {' or '.join(sorted(missing))} column "
                             f"(columns: path,label[,subtype,patient,split])")
        for line, row in enumerate(reader, start=2):
            if not row["path"] or not row["label"]:
                raise ValueError(f"{csv_path}, line {line}: path and label must not be empty")
            path = Path(row["path"])
            if not path.is_absolute():
                path = csv_path.parent / path
            try:
                rec = make_record(path, row["label"], (row.get("split") or "").lower())
            except ValueError as e:
                raise ValueError(f"{csv_path}, line {line}: {e}") from None
            subtype, patient = (row.get("subtype") or rec.subtype).lower(), row.get("patient") or rec.patient
            # the tasks read the subtype: a NORMAL image is "normal", a PNEUMONIA one bacteria, virus or unknown ("")
            if subtype not in (("normal",) if rec.label == "NORMAL" else ("bacteria", "virus", "")):
                raise ValueError(f"{csv_path}, line {line}: subtype {subtype!r} does not fit label {rec.label}")
            found.records.append(Record(str(path), rec.label, subtype, patient, rec.split))
    return found


def write_manifest(records: list[Record], csv_path: Path | str) -> None:
    """Write records as a manifest that :func:`read_manifest` (and so every command) reads back. A relative path
    is rewritten relative to the CSV's folder, which is how it is read back: between the two folders as they really
    are, because the system resolves a linked folder before the ``..`` read back (runs/ linked to a scratch disk)."""
    csv_dir = os.path.realpath(Path(csv_path).parent)
    with Path(csv_path).open("w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        for rec in records:
            path = rec.path
            if not os.path.isabs(path):  # the folder resolved, the name kept (it may be a link with a meaning)
                folder, name = os.path.split(path)
                path = os.path.relpath(os.path.join(os.path.realpath(folder), name), csv_dir)
            writer.writerow({**asdict(rec), "path": path})
