"""Dataset discovery: turn a folder tree or a CSV manifest into image records.

A dataset's shape is a :class:`Layout`, chosen by :func:`discover` from the registered ones (or named): the
Kaggle/Kermany folders (``{train,val,test}/{NORMAL,PNEUMONIA}``, films named ``person12_bacteria_45.jpeg`` and, for
normals, after a study: ``IM-0115-0001.jpeg``), the Mendeley release (the same folders, films named
``BACTERIA-4038442-0001.jpeg``: kind, patient, film) and a CSV manifest. Each layout owns its file-name rules, which
give the pneumonia subtype and the patient id. Which files are images is the readers' say
(:mod:`pneumoscan.data.readers`), and a layout lists its folders with the one folder walk (:mod:`.walk`).
Everything downstream works on :class:`Record` lists.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import itertools
import logging
import os
import re
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from pneumoscan.core.atomic import write_csv
from pneumoscan.core.names import given_path, qualified_name, shown
from pneumoscan.core.options import SPLITS, look_up_option
from pneumoscan.core.registry import Registry
from . import readers
from .decode import read_dicom_header
from .pixels import DecodeError, opened
from .walk import ALREADY_SEARCHED, SYSTEM_FOLDERS, Entry, file_identity, junk_reason, walk

log = logging.getLogger(__name__)
T = TypeVar("T")

LABELS = ("NORMAL", "PNEUMONIA")
SUBTYPES = ("normal", "bacteria", "virus")
MANIFEST_FIELDS = ("path", "label", "subtype", "patient", "split")
# the rows of a CSV that is no manifest read for which of its columns to rename (_columns_hint)
SAMPLED_ROWS = 50
# a manifest column this close to one of MANIFEST_FIELDS (difflib's ratio: splt 0.89, patient_id 0.82, lable 0.8) is
# refused as its misspelling, which would otherwise leave the field unread; a site's own columns (site 0.67 from split,
# age, sex, scanner) are further than this and pass through as the film's columns (:attr:`Record.columns`)
MISSPELT = 0.8

HEADER_PATIENT = "dicom-"  # the prefix of a patient id taken from a DICOM header (header_patient)
# how R (NA), a spreadsheet (#N/A), pandas (nan) and databases (NULL, None) write a missing value: as a manifest's
# patient id it would tie every film so marked into one patient
MISSING_VALUES = frozenset({"na", "n/a", "#n/a", "nan", "null", "none"})
# "bacteria" or "virus" said as a word in a name no layout's rules fit: child0_bacteria_0, Viral Pneumonia-12
_KIND_WORD = re.compile(r"(?<![a-z])(bacteria|bacterial|virus|viral)(?![a-z])", re.IGNORECASE)
# a name that negates a kind (non-viral, not_viral, virus_negative, no_bacteria) says nothing sure: no subtype
_NEGATION = re.compile(r"(?<![a-z])(no|non|not|neg|negative|without|free|excluded|ruled)(?![a-z])", re.IGNORECASE)
# "normal" as a word of a name no layout's rules fit (``Normal-12.png``, the COVID-19 Radiography Database's): it
# states the kind for the label check, never a subtype
_NORMAL_WORD = re.compile(r"(?<![a-z])normal(?![a-z])", re.IGNORECASE)
SUBTYPE_WORDS = {"bacterial": "bacteria", "viral": "virus"}  # the adjectives, read as the subtypes they name
# the dataset the Kaggle and Mendeley releases are, and its licence: what a bundle's card names as the source of the
# films that those releases' file-name rules name (:func:`named_datasets`)
KERMANY = "Kermany et al. 2018, Labeled OCT and Chest X-Ray Images, Mendeley Data V2 (doi:10.17632/rscbjbr9sj.2)"
KERMANY_LICENCE = "CC BY 4.0"


@dataclass(frozen=True)
class Record:
    """One image: where it is, which split and class it belongs to, and whose it is."""

    path: str
    label: str  # "NORMAL" | "PNEUMONIA"
    subtype: str  # "normal" | "bacteria" | "virus" | "" when a pneumonia file name does not say
    # patient (personN, Mendeley's number) or study (IM-NNNN) id, or a DICOM header's (dicom-...); else the film's
    # own path (own_patient)
    patient: str
    split: str = ""  # "train" | "val" | "test" | "" for a single folder or a manifest without splits
    # a manifest's further columns, (name, value) in its order (site, age, ...): fields to group figures by
    # (``evaluate --by``); they do not make two records of one film differ
    columns: tuple[tuple[str, str], ...] = field(default=(), compare=False)


@dataclass
class Discovery:
    """Records found, plus the files skipped on the way (``{"path", "reason"}`` dicts) so a user can see what was
    left out."""

    records: list[Record] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    layout: str = ""  # the layout that read the dataset (:func:`discover`)

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]


def parse_any(filename: str, label: str, layout: Layout | None = None) -> tuple[str, str] | None:
    """(subtype, patient id) from an original file name, by the first layout whose name rules it follows (``layout``'s
    first, then every registered one's: a site may have merged two releases); None when no rules fit. The folder's
    label wins: a NORMAL film's subtype is "normal", and a PNEUMONIA film named NORMAL-... has no known subtype."""
    ruled = _ruled_by(Path(filename).name, label, layout)
    return None if ruled is None else ruled[1]


def _ruled_by(name: str, label: str, layout: Layout | None) -> tuple[Layout, tuple[str, str]] | None:
    """The first layout whose name rules the file name ``name`` follows (``layout``'s first, then every registered
    one's), with what it parsed; None when no rules fit."""
    rules = [layout] if layout is not None else []
    for candidate in [*rules, *(known for known in layouts().values() if known is not layout)]:
        parsed = candidate.parse_file(name, label)
        if parsed is not None:
            return candidate, parsed
    return None


def named_datasets(records: Sequence[Record]) -> Counter[tuple[str, str]]:
    """How many of RECORDS' films each published dataset's file-name rules name, by (dataset, licence) of the first
    layout whose rules a film's name follows (:attr:`Layout.dataset`; ("", "") for a film named by none, or by a
    layout of no one dataset). By the films' names, not the layout that read them: Kermany's films listed in a
    manifest (a split.csv, cv's folds) are Kermany's, and a site's own films in NORMAL/ and PNEUMONIA/ folders, which
    the Kaggle layout reads, are not."""
    named: Counter[tuple[str, str]] = Counter()
    for rec in records:
        ruled = _ruled_by(Path(rec.path).name, rec.label, None)
        named[(ruled[0].dataset, ruled[0].licence) if ruled else ("", "")] += 1
    return named


def name_conflict(rec: Record, layout: Layout | None = None) -> str | None:
    """How ``rec``'s file name contradicts its label or subtype (``person1_bacteria_9.jpeg`` in NORMAL/, a misfiled
    or relabelled film: "named bacteria, labelled NORMAL"), by the rules :func:`parse_any` reads it by; None when
    it agrees or states no kind. The label is kept (the folder's or the manifest's word), so this is reported, not
    corrected: which of the two is wrong is for a person to tell. A name no layout's rules fit states the kind it
    says as a word (:func:`kind_in_words`, or "normal")."""
    stem = Path(rec.path).stem
    ruled = _ruled_by(Path(rec.path).name, rec.label, layout)
    if ruled is None:
        kind = kind_in_words(stem) or ("normal" if _NORMAL_WORD.search(stem) and not _NEGATION.search(stem) else "")
    else:
        said = ruled[0].name_says(stem)
        kind = said[0] if said is not None else ""
    if not kind:
        return None
    if (kind == "normal") != (rec.label == "NORMAL"):
        return f"named {kind}, labelled {rec.label}"
    if kind != "normal" and rec.subtype and rec.subtype != kind:
        return f"named {kind}, labelled {rec.label} {rec.subtype}"
    return None


class LabelError(ValueError):
    """A label not among :data:`LABELS`: a manifest's row names its line (:func:`read_manifest`); from a registered
    layout's code it is a slip of the layout, which :func:`discover` names."""


def make_record(path: Path | str, label: str, split: str = "", layout: Layout | None = None,
                root: Path | str | None = None, patient: str = "") -> Record:
    """A record with the subtype and patient read from the file name (:func:`parse_any`); ``patient`` (a manifest's
    column) wins over the name's (:func:`read_manifest` then keeps one spelling per patient). A pneumonia film whose
    name follows no rules has the subtype it says as a word (:func:`kind_in_words`), else an unknown one. A film
    with no patient from either takes its DICOM header's (:func:`header_patient`); else it is a patient of its own:
    its id is its path, relative to ``root`` (the dataset's folder) when below it, because a stem such as ``0001``
    names a different film in every folder."""
    label = label.upper()
    try:  # no "did you mean": ABNORMAL is one letter from NORMAL, the opposite class
        look_up_option(label, LABELS, "label", suggest=False)
    except ValueError as e:
        raise LabelError(str(e)) from None
    film = Path(path)  # once: discovery makes a record of every film of a dataset
    ruled = _ruled_by(film.name, label, layout)
    subtype, named = ruled[1] if ruled else ("normal" if label == "NORMAL" else kind_in_words(film.stem), "")
    patient = patient or named or header_patient(path)
    if not patient:
        below = root is not None and film.is_relative_to(root)
        patient = str(film.relative_to(root) if below else path)
    return Record(path=str(path), label=label, subtype=subtype, patient=patient, split=split)


def kind_in_words(stem: str) -> str:
    """"bacteria" or "virus" when a file-name stem says one of them (or "bacterial", "viral") as a word, not inside
    another (``child0_bacteria_0``, ``Viral Pneumonia-12``), not both, and not negated (``non-viral``); else "".
    For names no layout's rules fit: a site's own names say the kind in their own way, and only the Kermany
    ``personN_`` one was read."""
    if _NEGATION.search(stem):  # "non-viral" read as viral would be the opposite label
        return ""
    kinds = {SUBTYPE_WORDS.get(word.lower(), word.lower()) for word in _KIND_WORD.findall(stem)}
    return kinds.pop() if len(kinds) == 1 else ""


def header_patient(path: Path | str) -> str:
    """The patient of a DICOM film by its header: PatientID, with IssuerOfPatientID when recorded (two hospitals'
    "123" are two patients), as ``dicom-`` and 16 hex digits of their SHA-256, so that the id groups a patient's
    films in splits and audits while the id itself stays out of manifests, run folders and messages. Only the
    header is read, and only for a file whose ending no other format claims (.dcm, none, a UID's): a JPEG or PNG
    dataset is not opened here. "" for a film with no PatientID, or that is not DICOM or cannot be read (decoding
    reports it)."""
    if (claimant := readers.claiming(Path(path).suffix)) is not None and claimant.name != "DICOM":
        return ""
    try:
        header = read_dicom_header(path)
        if header is None:  # not DICOM after all (a JPEG without an ending)
            return ""
        patient, issuer = (str(header.get(k) or "").strip() for k in ("PatientID", "IssuerOfPatientID"))
    except Exception:  # unreadable, or a malformed value: no id here, and decoding reports what is wrong
        return ""
    if not patient:
        return ""
    # spelled as patient_key reads a typed id: a site whose systems write MRN100 here and mrn100 there keeps one child
    return HEADER_PATIENT + hashlib.sha256(f"{patient_key(issuer)}\0{patient_key(patient)}".encode()).hexdigest()[:16]


def patient_key(patient: str) -> str:
    """What makes two spellings of a patient id one patient: case (a typed ``PERSON1000`` beside a film named
    ``person1000_...``, ``MRN100`` beside ``mrn100``) and Unicode form (``José`` composed or decomposed) aside."""
    return unicodedata.normalize("NFC", patient).casefold()


def own_patient(rec: Record) -> bool:
    """Whether ``rec`` is a patient of its own: neither its file name nor a manifest gave a patient id, so its id is
    its path (:func:`make_record`), and no other film is known to be the same child's."""
    return os.path.basename(rec.patient) == os.path.basename(rec.path)


def _skip(entry: Path, kind: str, found: Discovery) -> None:
    """Record an entry that is not a ``kind`` folder (split or class) with the reason it was left out."""
    if entry.is_dir():
        system = "system folder" if entry.name.lower() in SYSTEM_FOLDERS else None
        reason = "hidden folder" if entry.name.startswith(".") else system or f"not a {kind} folder"
    elif entry.is_symlink() and not entry.exists():
        reason = "broken link"
    else:
        reason = junk_reason(Path(entry.name)) or f"outside the {kind} folders"
    found.skipped.append({"path": str(entry), "reason": reason})


# ---------------------------------------------------------------- layouts


class Layout(ABC):
    """One way a dataset is laid out: how a root is recognised, where its films and their labels are, and the
    file-name rules of its films. Registered with :func:`register_layout`; :func:`discover` picks one."""

    name: str = ""  # what ``discover(layout=...)`` takes
    description: str = ""  # one line: what a root laid out this way looks like
    # the published dataset whose films this layout's file-name rules name, and its licence: what a model trained on
    # films so named is said to have learnt from (:func:`named_datasets`); "" for a layout of no one dataset's films
    dataset: str = ""
    licence: str = ""

    @abstractmethod
    def detect(self, root: Path) -> bool:
        """Whether ``root`` (a file or a folder) is laid out this way; cheap: lists folders, reads no image."""

    @abstractmethod
    def discover(self, root: Path) -> Discovery:
        """Every record under ``root``, and every entry left out with its reason."""

    def name_says(self, stem: str) -> tuple[str, str] | None:
        """(kind, patient id) as a file-name stem states them, whatever folder it is in: kind is "normal",
        "bacteria", "virus", or "" when the name gives none; None when the stem follows no rule of this layout (the
        default: a layout without name rules). What :meth:`parse_name` and :func:`name_conflict` read."""
        return None

    def parse_name(self, stem: str, label: str) -> tuple[str, str] | None:
        """(subtype, patient id) when a file-name stem follows this layout's rules, else None. ``label`` is the
        folder's and wins: a NORMAL film's subtype is "normal", a PNEUMONIA film named normal has none (""). The
        patient id is kept whatever the folder, so a misfiled film stays with its child's other films in a split."""
        said = self.name_says(stem)
        if said is None:
            return None
        kind, patient = said
        return ("normal" if label == "NORMAL" else "" if kind == "normal" else kind), patient

    def parse_file(self, name: str, label: str) -> tuple[str, str] | None:
        """:meth:`parse_name` for a whole file name, its ending included (what discovery asks): the stem's by
        default; a layout whose rules hold for some formats only overrides it."""
        return self.parse_name(Path(name).stem, label)


class ClassFolders(Layout):
    """``{train,val,test}/{NORMAL,PNEUMONIA}`` or ``{NORMAL,PNEUMONIA}`` alone (folder names in any case); the files
    below a class folder, at any depth, are its films (:func:`walk`). One real file is one film: it is read once, and
    a dataset in which it would carry two labels or sit in two splits (a link to another class folder or back up to
    the split folders) is refused."""

    splits = SPLITS

    def detect(self, root: Path) -> bool:
        if not root.is_dir():
            return False
        children = {p.name.lower() for p in root.iterdir() if p.is_dir()}
        return any(s in children for s in self.splits) or any(name.upper() in LABELS for name in children)

    def discover(self, root: Path) -> Discovery:
        found = Discovery(layout=self.name)
        split_dirs = self._split_folders(root)
        for folder in [root, *split_dirs]:
            _check_no_broken_folder(folder, self.splits if folder == root else ())
        if split_dirs:
            for entry in sorted(set(root.iterdir()) - set(split_dirs)):
                _skip(entry, "split", found)
        # every class folder's split and label before any is searched: a link may lead from one to another
        children = [(child, folder.name.lower() if split_dirs else "") for folder in split_dirs or [root]
                    for child in sorted(folder.iterdir())]
        places = {child: (split, child.name.upper()) for child, split in children
                  if child.is_dir() and child.name.upper() in LABELS}
        seen: dict[str, Path] = {}
        for folder in [root, *split_dirs, *places]:
            seen.setdefault(os.path.realpath(folder), folder)
        films: dict[tuple[int, int] | str, Path] = {}  # file (walk's file_id) -> the path it was read at
        for child, _ in children:
            if child in places:
                self._read(root, child, places, seen, films, found)
            else:
                _skip(child, "class", found)
        return found

    def _split_folders(self, root: Path) -> list[Path]:
        """The split folders of ``root``, in :attr:`splits` order. Two spellings of one (``train/`` and ``TRAIN/``, as
        two archives unpacked side by side leave them) are refused: keeping either would drop the other's films."""
        spellings: dict[str, list[Path]] = defaultdict(list)
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name.lower() in self.splits:
                spellings[child.name.lower()].append(child)
        for split, folders in spellings.items():
            if len(folders) > 1:
                named = " and ".join(shown(folder) for folder in folders)
                raise ValueError(f"{named} are both the {split} split folder, as folder names are matched in any "
                                 "case: merge them into one, or rename or move the other")
        return [spellings[s][0] for s in self.splits if s in spellings]

    def class_folders(self, root: Path) -> list[Path]:
        """The class folders a detected root holds (under its split folders, found as :meth:`discover` finds them,
        or itself)."""
        return [child for folder in self._split_folders(root) or [root] for child in folder.iterdir()
                if child.name.upper() in LABELS and child.is_dir()]

    def _read(self, root: Path, class_dir: Path, places: dict[Path, tuple[str, str]], seen: dict[str, Path],
              films: dict[tuple[int, int] | str, Path], found: Discovery) -> None:
        """The films of one class folder. The walks of a dataset share ``seen``, seeded with every class folder and
        the folders holding them, so no link searches one of those again: one leading back into its own class
        folder is listed, one leading to another class folder or above them is refused, since the films there would
        be read under a label or a split not theirs. ``films`` (file -> path read) reads a file reached twice (through
        a link, symbolic or hard) once, and refuses one reached from two class folders of different labels or
        splits."""
        place = split, label = places[class_dir]
        for entry in walk(class_dir, seen=seen):
            if entry.kind == "image":
                _check_no_other_class(entry.path, class_dir, label)
                first = films.setdefault(entry.file_id, entry.path)
                if first == entry.path:
                    found.records.append(make_record(entry.path, label, split, self, root))
                    continue
                if (owner := _owner(first, places)) != place:
                    raise ValueError(f"{shown(entry.path)} and {shown(first)} are one file (through a link): it "
                                     f"would be read as {_place(*place)} and as {_place(*owner)}, and a film cannot "
                                     "carry two labels or sit in two splits; remove the link")
                entry = Entry(entry.path, "skipped", "film already read (a link to it)")
            elif entry.reason == ALREADY_SEARCHED:
                first = seen[os.path.realpath(entry.path)]
                if (owner := _owner(first, places)) is None:
                    raise ValueError(f"{shown(entry.path)} leads back to {shown(first)}, which holds the class "
                                     f"folders: the films below it would be read as {_place(*place)} too; remove "
                                     "the link")
                if owner != place:
                    raise ValueError(f"{shown(entry.path)} leads to {shown(first)}, read as {_place(*owner)}: its "
                                     f"films would also be read as {_place(*place)}, and a film cannot carry two "
                                     "labels or sit in two splits; remove the link")
            found.skipped.append({"path": str(entry.path), "reason": entry.reason})


def _check_no_broken_folder(folder: Path, splits: Sequence[str]) -> None:
    """Refuse a split or class folder in ``folder`` that is a link to nothing (storage not mounted, a moved
    dataset): its films would be missing from training or evaluation with no film named to say so (a whole
    ``train/`` too, leaving a split made of ``val/`` alone)."""
    for entry in sorted(folder.iterdir()):
        named = entry.name.lower() in splits or entry.name.upper() in LABELS
        if named and entry.is_symlink() and not entry.exists():
            raise ValueError(f"{shown(entry)} is a link to {shown(Path(os.readlink(entry)))}, which is not there (a "
                             "disk not mounted, or a moved folder?): its films cannot be read; mount or restore it, "
                             "or remove the link")


def _check_no_other_class(path: Path, class_dir: Path, label: str) -> None:
    """Refuse a film below its class folder in a folder named for another class (``PNEUMONIA/NORMAL/``,
    ``PNEUMONIA/normal cases/``): it would be read as ``label``, and it is more likely a film of the other class
    filed one level too deep than one of this class (it had been trained and measured as this class, unsaid). So is
    one in a folder named for a split (a class-first re-pack, ``PNEUMONIA/test/``): it would be pooled for training
    whatever its split, test films included."""
    for folder in path.parent.relative_to(class_dir).parts if path.parent != class_dir else ():
        words = set(re.findall(r"[a-z]+", folder.lower()))
        if others := {word.upper() for word in words} & (set(LABELS) - {label}):
            raise ValueError(f"{shown(path)} is below the {class_dir.name} folder but in {shown(folder)}, named for "
                             f"{' and '.join(sorted(others))} films: it would be read as {label}; move it to its "
                             f"class folder, or rename the folder if its films are {label}")
        if splits := words & set(SPLITS):
            raise ValueError(f"{shown(path)} is below the {class_dir.name} folder but in {shown(folder)}, named for "
                             f"the {' and '.join(sorted(splits))} split: it would be read as a film of "
                             f"{shown(class_dir)}, pooled with its other films whatever its split; lay the dataset "
                             "out as split/class (test/NORMAL/...), or rename the folder")


def _owner(path: Path, places: dict[Path, tuple[str, str]]) -> tuple[str, str] | None:
    """The (split, label) of the class folder ``path`` was walked from (it or one of its parents); None above them."""
    return next((places[p] for p in (path, *path.parents) if p in places), None)


def _place(split: str, label: str) -> str:
    """Where a class folder's films belong, as messages name it: ``train/NORMAL``, or ``NORMAL`` without splits."""
    return f"{split}/{label}" if split else label


def _dicom_named(name: str) -> bool:
    """Whether a file name is a DICOM film's: a DICOM reader's ending, or none (as DICOM media name their files); a
    Kermany film converted to PNG keeps its study name, which an exporter's IM- series number must not."""
    suffix = Path(name).suffix
    return not suffix or ((reader := readers.claiming(suffix)) is not None and reader.name == "DICOM")


class KaggleLayout(ClassFolders):
    """The Kaggle (Kermany) release: films named ``person12_bacteria_45.jpeg`` (patient, kind) and, for normals,
    after a study: ``IM-0115-0001.jpeg`` or ``NORMAL2-IM-0381-0001.jpeg``."""

    name = "kaggle"
    description = ("{train,val,test}/{NORMAL,PNEUMONIA} folders, or NORMAL/ and PNEUMONIA/ alone; "
                   "person12_bacteria_45.jpeg, IM-0115-0001.jpeg")
    dataset, licence = KERMANY, KERMANY_LICENCE
    _PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
    _STUDY = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)", re.IGNORECASE)

    def name_says(self, stem: str) -> tuple[str, str] | None:
        """A bare ``IM-0115-...`` states no kind: Kermany gives its normal films such names, but so do common DICOM
        exporters (OsiriX, Horos) any film; ``NORMAL2-IM-...`` does state normal."""
        if m := self._PERSON.match(stem):
            return m.group(2).lower(), m.group(1).lower()
        if m := self._STUDY.match(stem):
            return ("normal" if m.group(1).upper().startswith("NORMAL") else ""), m.group(1).upper()
        return None

    def parse_name(self, stem: str, label: str) -> tuple[str, str] | None:
        """As every layout parses, but a bare ``IM-...`` name gives a patient (its study) in a NORMAL folder only:
        elsewhere it is an exporter's series number, which would tie unrelated patients' films together."""
        said = self.name_says(stem)
        if said is not None and not said[0] and label != "NORMAL" and not self._PERSON.match(stem):
            return None
        return super().parse_name(stem, label)

    def parse_file(self, name: str, label: str) -> tuple[str, str] | None:
        """A bare ``IM-...`` name is a Kermany study except on a DICOM film (:func:`_dicom_named`): one so named
        (OsiriX, Horos) gives no patient in any folder (it takes its header's, :func:`make_record`), since the
        exporter numbers every patient's series ``IM-0001`` and the number would tie them together."""
        said = self.name_says(Path(name).stem)
        if said is not None and not said[0] and _dicom_named(name):
            return None
        return super().parse_file(name, label)


class MendeleyLayout(ClassFolders):
    """The Mendeley release (Kermany et al. 2018, v2/v3): the same folders, films named kind-patient-film, any case:
    ``BACTERIA-4038442-0001.jpeg``, ``VIRUS-2040583-0001.jpeg``, ``NORMAL-2552119-0002.jpeg``. Told from the Kaggle
    release by the first few names in its class folders."""

    name = "mendeley"
    description = "{train,test}/{NORMAL,PNEUMONIA} folders; NORMAL-2552119-0002.jpeg, BACTERIA-4038442-0001.jpeg"
    dataset, licence = KERMANY, KERMANY_LICENCE
    # not anchored at the end, as the Kaggle rules are not: a copy's suffix ("... (1)") or a second counter
    # ("-0001-0002") keeps the patient id
    _NAME = re.compile(r"^(normal|bacteria|virus)-(\d+)-\d+", re.IGNORECASE)
    _PEEK = 8  # names looked at per class folder to recognise the release

    def detect(self, root: Path) -> bool:
        if not super().detect(root):
            return False
        for folder in self.class_folders(root):
            try:
                with os.scandir(folder) as listing:
                    names = [e.name for _, e in zip(range(self._PEEK), listing)]
            except OSError:  # discovery reports the folder it cannot list
                continue
            if any(self._NAME.match(Path(n).stem) for n in names):
                return True
        return False

    def name_says(self, stem: str) -> tuple[str, str] | None:
        m = self._NAME.match(stem)
        return (m.group(1).lower(), m.group(2)) if m else None


class ManifestLayout(Layout):
    """A CSV file: ``path,label[,subtype,patient,split]`` (:func:`read_manifest`)."""

    name = "manifest"
    description = "a CSV file with columns path,label[,subtype,patient,split]"

    def detect(self, root: Path) -> bool:
        return root.is_file() and not _is_image(root)

    def discover(self, root: Path) -> Discovery:
        found = read_manifest(root)
        found.layout = self.name
        return found


_LAYOUTS: Registry[Layout] = Registry("layout", log)


def register_layout(layout: Layout, first: bool = False) -> Layout:
    """Add ``layout`` (a second of the same name replaces the first in its place, with a warning, as every registry
    does). :func:`discover` tries layouts in this order, so one whose folders look like another's (as Mendeley's look
    like Kaggle's) goes ``first``."""
    if not layout.name:
        raise ValueError(f"{type(layout).__name__}: a layout needs a name")
    return _LAYOUTS.add(layout.name, layout, first=first, origin=type(layout).__module__)


def unregister_layout(name: str) -> None:
    """Remove the layout called ``name`` (a test's toy layout); nothing when none is."""
    _LAYOUTS.remove(name)


def plugin_layouts() -> dict[str, str]:
    """The layouts registered by modules outside pneumoscan, by name -> module (:meth:`Registry.plugins`)."""
    return _LAYOUTS.plugins()


def layouts() -> dict[str, Layout]:
    """The registered layouts by name, in the order :func:`discover` tries them."""
    return _LAYOUTS.entries()


# Most specific first: a manifest is a file; a Mendeley tree's folders are the Kaggle release's.
register_layout(ManifestLayout())
register_layout(MendeleyLayout())
register_layout(KaggleLayout())


def recognising_layout(root: Path) -> Layout | None:
    """The first registered layout that recognises ``root`` (cheap: no image read), None when none does."""
    return next((candidate for candidate in layouts().values() if _asked(candidate, root, candidate.detect)), None)


def _asked(layout: Layout, root: Path, call: Callable[[Path], T]) -> T:
    """``call(root)`` (a method of ``layout``), an error other than a refusal (ValueError, OSError) refused naming the
    layout: a slip in a site's layout (a KeyError) ended a command in a traceback. So is a label its code gives that
    is none (:class:`LabelError`), which read like a manifest row's, naming no layout."""
    try:
        return call(root)
    except LabelError as e:
        slip: Exception = e
        said = str(e)
    except (ValueError, OSError):
        raise
    except Exception as e:
        slip, said = e, f"{type(e).__name__}: {e}"
    raise ValueError(f"the {layout.name} layout ({qualified_name(type(layout))}) failed on {shown(root)}: "
                     f"{said}; mend the layout") from slip


def discover(root: Path | str, layout: str | None = None) -> Discovery:
    """Records under a dataset root, read by ``layout`` (a registered name) or by the first registered layout that
    recognises the root: ``{train,val,test}/{NORMAL,PNEUMONIA}``, a single split folder (``{NORMAL,PNEUMONIA}``), or a
    CSV manifest file, as the built-in ones do. An empty ``root`` is refused, not read as the current folder: it is
    what an unset shell variable gives (``"$PNEUMOSCAN_DATA"``)."""
    root = given_path(root, "dataset", "$PNEUMOSCAN_DATA")
    if not root.exists():
        raise FileNotFoundError(f"dataset not found: {root}")
    known = layouts()
    if layout is not None:
        chosen = known[look_up_option(layout, known, "dataset layout")]
        if not _asked(chosen, root, chosen.detect):
            raise ValueError(f"{root}: not laid out as {layout} ({chosen.description})")
    else:
        chosen = recognising_layout(root)
        if chosen is None:
            expected = "; ".join(f"{name}: {candidate.description}" for name, candidate in known.items())
            raise ValueError(f"{root}: no dataset layout recognises it{_unrecognised(root)} (expected {expected})")
    log.debug("%s: read as the %s layout", root, chosen.name)
    found = _asked(chosen, root, lambda folder: _labels_checked(chosen.discover(folder)))
    _warn_left_out(root, found)
    _warn_class_left_out(root, found)
    _warn_split_left_out(root, found)
    return found


def _labels_checked(found: Discovery) -> Discovery:
    """FOUND, each record's label one of :data:`LABELS`: a layout that makes its records itself, not through
    :func:`make_record`, passed its own word for a class on, and a command ended in a traceback counting labels."""
    if bad := next((r for r in found.records if r.label not in LABELS), None):
        raise LabelError(f"unknown label {bad.label!r} (choose from {', '.join(LABELS)}) for {shown(bad.path)}")
    return found


def _unrecognised(root: Path) -> str:
    """What a root no layout recognises most likely is, said before the list of layouts: one class's folder or one
    film (given for the folder that holds both classes), the folder a dataset was unpacked into (one level too high:
    the folders below that a layout recognises, and the manifests in it, are named), a folder of films without class
    folders, or an empty folder."""
    holder = f"give the folder that holds {' and '.join(LABELS)}"
    if root.is_file():
        beside = f" ({shown(root.parent.parent)})" if root.parent.name.upper() in LABELS else ""
        return f": it is an image, not a dataset; {holder}{beside}" if _is_image(root) else ""
    if not root.is_dir():
        return ""
    if root.name.upper() in LABELS:
        return f": it is one class's folder; {holder} ({shown(root.parent)})"
    if next(root.iterdir(), None) is None:
        return ": it is an empty folder"
    children = sorted(root.iterdir())
    if inside := [shown(child) for child in children if _recognised(child) or _is_manifest(child)]:
        return f": it holds a dataset; give {' or '.join(inside)}"
    if sheet := next((child for child in children if child.suffix.lower() == ".csv" and child.is_file()), None):
        if hint := _columns_hint(*_sheet_sample(sheet), sheet.parent):
            return f": it holds {shown(sheet)}, a CSV that is no manifest{hint}"
    if any(_is_image(child) for child in children[:20] if child.is_file()):
        return (f": it holds films but no {' and '.join(LABELS)} folders: put them in those folders, or list them "
                "with their labels in a CSV manifest (path,label)")
    return ""


def _is_manifest(path: Path) -> bool:
    """Whether ``path`` is a CSV file whose header names the path and label columns: a researcher's labels.csv
    beside the films it lists, given as the folder that holds both."""
    return path.suffix.lower() == ".csv" and path.is_file() and {"path", "label"} <= set(_sheet_header(path))


def _sheet_header(path: Path) -> list[str]:
    """The column names of CSV file ``path`` as :func:`_manifest_header` reads them, for a look at a folder's sheets
    (:func:`_is_manifest`, :func:`_unrecognised`); none where it cannot be read."""
    return _sheet_sample(path, 0)[0]


def _sheet_sample(path: Path, rows: int = SAMPLED_ROWS) -> tuple[list[str], list[list[str]]]:
    """:func:`_sheet_header` and the first ``rows`` rows below it, whose values say which of a sheet's columns to
    rename (:func:`_columns_hint`); none where it cannot be read."""
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.reader(f)
            return _manifest_header(reader), list(itertools.islice(reader, rows))
    except (OSError, csv.Error):
        return [], []


def listed_paths(csv_path: Path | str) -> list[Path]:
    """The files a manifest's path column names, resolved as :func:`read_manifest` resolves them, without reading
    the rest of each row (labels, patients, their checks): a quick look at what a run's split.csv lists (none where
    it has no path column)."""
    csv_path = Path(csv_path)
    with csv_path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        header = _manifest_header(reader)
        if "path" not in header:
            return []
        column = header.index("path")
        cells = (row[column].strip() for row in reader if len(row) > column)  # stripped as read_manifest strips
        return [csv_path.parent / cell for cell in cells if cell]


def _manifest_header(reader: Iterator[list[str]]) -> list[str]:
    """The column names of a manifest's first row as :func:`read_manifest` reads them (any case, quoted as R writes
    them, without a spreadsheet's trailing empty columns), so that a folder's manifest is named by the same reading
    (:func:`_is_manifest`)."""
    header = [name.strip().lower() for name in next(reader, [])]
    while header and not header[-1]:  # a spreadsheet's trailing empty columns
        header.pop()
    return header


def _recognised(folder: Path) -> bool:
    """Whether a registered layout recognises ``folder`` (one that cannot be listed is not), with both classes where
    the layout has class folders: Mendeley's ``OCT/`` beside ``chest_xray/`` holds NORMAL and CNV folders."""
    try:
        layout = recognising_layout(folder) if folder.is_dir() else None
        return layout is not None and (not isinstance(layout, ClassFolders) or
                                       {f.name.upper() for f in layout.class_folders(folder)} == set(LABELS))
    except OSError:
        return False


def _is_image(path: Path) -> bool:
    """Whether a file is an image a reader takes (by its first bytes or its ending), not a manifest."""
    try:
        with opened(path) as f:
            head = f.read(readers.HEAD_BYTES)
    except (OSError, DecodeError):  # the manifest reader says what is wrong with it
        return False
    return readers.reader_for(head, path.suffix) is not None


_QUIET_REASONS = ("hidden folder", "hidden file", "system folder", "system file")  # never a film


def _warn_left_out(root: Path, found: Discovery) -> None:
    """One warning counting, by reason, what discovery left out inside the class folders and which folders it did
    not search, so a film that is not read (a broken link, a .tif, a ``validation/`` folder) never leaves
    training or evaluation silently; so does a film loose beside them (``train/x.jpeg``), in no class folder. Hidden
    and system files, a Mac's ``__MACOSX`` and other loose files beside the split and class folders (a README) are
    only listed by ``audit``."""
    def may_hold_films(entry: dict[str, str]) -> bool:
        path = Path(entry["path"])
        try:
            inside_a_class = any(part.upper() in LABELS for part in path.relative_to(root).parts[:-1])
        except ValueError:  # not below the root: say so
            inside_a_class = True
        if entry["reason"] in _QUIET_REASONS or path.name == "__MACOSX":  # a Mac's unpacked resource forks
            return False
        return inside_a_class or path.is_dir() or path.suffix.lower() in readers.suffixes()

    reasons = Counter(entry["reason"] for entry in found.skipped if may_hold_films(entry))
    if reasons:
        counted = "; ".join(f"{reason}: {n}" for reason, n in reasons.most_common())
        n = reasons.total()
        log.warning("%s: %d %s left out (%s); `pneumoscan audit %s --json-out FILE` lists them",
                    shown(root), n, "entry" if n == 1 else "entries", counted, shown(root))


def _warn_class_left_out(root: Path, found: Discovery) -> None:
    """Say when a split (or a folder without splits) holds no film of a class while folders beside its class folders
    were left out: a re-pack as ``{NORMAL,BACTERIA,VIRUS}`` loses its pneumonia films to them, and evaluate would
    report figures of the normal films alone, with only a count of entries left out to say why."""
    beside: dict[str, list[str]] = defaultdict(list)
    for entry in found.skipped:
        if entry["reason"] == "not a class folder":
            parent = Path(entry["path"]).parent
            beside["" if parent == root else parent.name.lower()].append(Path(entry["path"]).name)
    for split, folders in beside.items():
        labels = {r.label for r in found.records if r.split == split}
        if missing := [label for label in LABELS if label not in labels]:
            log.warning("%s: no %s film%s, while %s beside its class folders %s left out (a class folder is "
                        "named %s): if they hold %s films, rename them, or list the films in a manifest",
                        shown(root), " or ".join(missing), f" in its {split} split" if split else "",
                        ", ".join(sorted(folders)), "was" if len(folders) == 1 else "were", " or ".join(LABELS),
                        " or ".join(missing))


def _warn_split_left_out(root: Path, found: Discovery) -> None:
    """Name the folders beside the split folders that hold class folders (a re-pack's ``validation/``, ``testing/``):
    their films are left out, and a count of entries alone let evaluate find no test split, and training lose the
    validation films, without saying which folder to rename."""
    def holds_classes(folder: Path) -> bool:
        try:
            return any(child.name.upper() in LABELS and child.is_dir() for child in folder.iterdir())
        except OSError:  # listed by audit as left out
            return False

    folders = sorted(Path(e["path"]) for e in found.skipped if e["reason"] == "not a split folder")
    if not (named := [folder.name for folder in folders if holds_classes(folder)]):
        return
    splits = f"{', '.join(SPLITS[:-1])} or {SPLITS[-1]}"
    renames = [f"{name} to {next((s for s in SPLITS if name.lower().startswith(s)), splits)}" for name in named]
    one = len(named) == 1
    log.warning("%s: %s hold%s class folders but %s not split folder%s (named %s), so their films are left out: "
                "rename %s", shown(root), ", ".join(named), "s" if one else "", "is" if one else "are",
                "" if one else "s", splits, ", ".join(renames))


def read_manifest(csv_path: Path | str) -> Discovery:
    """Records from a CSV with columns ``path,label[,subtype,patient,split]`` (header names in any case) and any
    of a site's own (site, age: :attr:`Record.columns`); relative paths are taken relative to the CSV's folder.
    Missing subtype/patient are parsed from the file name (a patient also from a DICOM film's header,
    :func:`make_record`). Anything that could move a film silently (a column as close to a known one as
    :data:`MISSPELT`, an unknown split, the same file twice) is refused with its line: a misspelt ``split`` value or
    column would otherwise put test films into the training pool."""
    csv_path = Path(csv_path)
    found = Discovery()
    seen: dict[tuple[int, int] | str, tuple[int, str]] = {}
    # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark; surrogateescape: file names that are
    # not UTF-8 (an old zip's) round-trip as write_manifest wrote them
    with csv_path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        try:
            header = _manifest_header(reader)
            missing = {"path", "label"} - set(header)
            if missing:
                hint = _format_hint(header) or _columns_hint(header, list(itertools.islice(reader, SAMPLED_ROWS)),
                                                             csv_path.parent)
                raise ValueError(f"{csv_path}: not a manifest, no {' or '.join(sorted(missing))} column "
                                 f"(columns: path,label[,subtype,patient,split]){hint}")
            for name in header:
                if not name:
                    raise ValueError(f"{csv_path}: a column has no name ({','.join(header)})")
                if difflib.get_close_matches(name, MANIFEST_FIELDS, n=1, cutoff=MISSPELT):
                    look_up_option(name, MANIFEST_FIELDS, f"column in manifest {csv_path}",
                                   hint="a column this close to path, label, subtype, patient or split is read as "
                                   "its misspelling, so that it is never left unread: rename it")
            if len(set(header)) < len(header):
                raise ValueError(f"{csv_path}: a column is named twice ({','.join(header)})")
            for values in reader:
                line = reader.line_num
                while len(values) > len(header) and not values[-1].strip():
                    values.pop()
                if not any(v.strip() for v in values):  # a blank line, as DictReader skips them
                    continue
                if len(values) > len(header):
                    raise ValueError(f"{csv_path}, line {line}: {len(values)} values for {len(header)} columns")
                row = {name: value.strip() for name, value in zip(header, values + [""] * len(header))}
                found.records.append(_manifest_record(csv_path, row, line, seen))
        except csv.Error as e:
            raise ValueError(f"{csv_path}, line {reader.line_num}: not a readable CSV ({e})") from None
    found.records = _one_spelling(found.records)
    return found


def _format_hint(header: list[str]) -> str:
    """Why a header that holds ``path`` and ``label`` was not read as their columns: a spreadsheet saved as UTF-16
    ("Unicode text") or with another separator (a comma-decimal locale's ``;``, tabs) gives one unreadable column,
    and "no path column" alone sends the user looking for a column that is there. Other bytes 0 mark no text at all
    (a zip, an .xlsx workbook, a gzip), which is no spreadsheet to save again."""
    text = ",".join(header)
    plain = text.replace("\x00", "")
    if text.startswith(("\udcff\udcfe", "\udcfe\udcff")) or ("\x00" in text and ("path" in plain or "label" in plain)):
        found = "it is UTF-16 text"
    elif "\x00" in text:
        return ("; it is not text (an archive to unpack, a workbook to save as CSV UTF-8): give the dataset's folder "
                "or a comma-separated UTF-8 manifest")
    elif ";" in text:
        found = "its columns are separated by ';'"
    elif "\t" in text:
        found = "its columns are separated by tabs"
    else:
        return ""
    return f"; {found}: save it as comma-separated UTF-8 (a spreadsheet's \"CSV UTF-8\")"


def _columns_hint(header: list[str], rows: Sequence[Sequence[str]], folder: Path) -> str:
    """Which of a sheet's own columns to rename, for a CSV that is no manifest: a hospital's (MRN,file,dx,site) was
    refused with the columns a manifest has, not the ones it has, and no word of which of them to rename. Its first
    ``rows`` say which where they can (:func:`_column_of_files`, :func:`_column_of_labels`), as a suggestion: the
    sheet stays refused, as a column read as another would move films between classes unseen."""
    if not any(header):
        return ""
    values = {name: [cell.strip() for row in rows if i < len(row) and (cell := row[i]).strip()]
              for i, name in enumerate(header) if name and name not in MANIFEST_FIELDS}
    steps = []
    if "path" not in header:
        files = _column_of_files(values, folder)
        steps.append(f"rename {files[0]} to path (its values are files, e.g. {shown(files[1])})" if files else
                     "name the one giving each film's file (relative to the CSV's folder) path")
    if "label" not in header:
        steps.append(_label_step(values))
    return f"; its columns are {','.join(header)}: {', and '.join(steps)}"


def _column_of_files(values: dict[str, list[str]], folder: Path) -> tuple[str, str] | None:
    """The column most of whose values name files (relative to the sheet's ``folder``, or absolute), the one with the
    most such values, and one of them; None when no column's do."""
    def is_file(value: str) -> bool:
        try:
            return (folder / value).is_file()
        except (OSError, ValueError):  # a name too long, a NUL: no file
            return False

    found = {name: [v for v in cells if is_file(v)] for name, cells in values.items()}
    name = max(found, key=lambda n: len(found[n]), default=None)
    return (name, found[name][0]) if name and 2 * len(found[name]) > len(values[name]) else None


def _label_step(values: dict[str, list[str]]) -> str:
    """What to do for the label column: rename the column whose values are all NORMAL or PNEUMONIA (any case), or
    write those and the subtype from one whose values say NORMAL, PNEUMONIA or a kind of pneumonia (``bacterial
    pneumonia``, ``viral``: :func:`kind_in_words`); else name the column that gives the class."""
    def said(cell: str) -> bool:
        return cell.upper() in LABELS or bool(kind_in_words(cell))

    for name, cells in values.items():
        if cells and all(cell.upper() in LABELS for cell in cells):
            return f"rename {name} to label (its values are {' or '.join(sorted(set(cells))[:4])})"
    for name, cells in values.items():
        if cells and all(map(said, cells)):
            kind = next(cell for cell in cells if cell.upper() not in LABELS)
            return (f"write {name}'s class as label (NORMAL or PNEUMONIA) and its kind of pneumonia ({kind}) as "
                    "subtype (normal, bacteria, virus)")
    return "name the one giving its class (NORMAL or PNEUMONIA) label"


def absent_hint(absent: Sequence[str]) -> str:
    """What most likely moved a manifest's films, for split's refusal and audit's unreadable films: a path holding
    bytes that are not UTF-8 (kept as surrogate escapes) comes from a manifest saved in a local code page (a
    spreadsheet's "CSV (Comma delimited)"), else the relative paths were read from another folder than the one
    meant."""
    if any(any("\udc80" <= c <= "\udcff" for c in path) for path in absent):
        return ("the manifest's paths hold bytes that are not UTF-8 (a spreadsheet saves its local code page as "
                "\"CSV\"): save it as CSV UTF-8")
    return "a manifest's relative paths are read from the manifest's own folder" + _found_elsewhere(absent[0])


#: the most folders beside a missing film that :func:`_found_elsewhere` looks into
LOOKED_INTO = 50


def _found_elsewhere(path: str) -> str:
    """Where a manifest's missing film most likely is, said, never taken: the file its path names with Windows
    separators (``images\\CXR0001.png``), the file with an image ending its path lacks (a sheet listing ids,
    ``CXR0001`` for ``CXR0001.png``), or of its name in a folder beside where it was looked for (a sheet of bare
    names next to its ``images/`` folder). A researcher's labels sheet is mostly one of these, and "read from the
    manifest's own folder" alone left them to guess which; empty when none is there."""
    missing = Path(path)
    if "\\" in path and (slashed := Path(path.replace("\\", "/"))).is_file():
        return f", and {shown(str(slashed))} is there: write the paths with / between folders, not \\"
    for suffix in sorted(readers.suffixes()):
        if (named := missing.with_name(missing.name + suffix)).is_file():
            return f", and {shown(str(named))} is there: give each film's file name with its ending ({suffix})"
    try:
        with os.scandir(missing.parent) as entries:
            beside = sorted(entry.name for entry in entries if entry.is_dir())[:LOOKED_INTO]
    except OSError:
        return ""
    for folder in beside:
        if (found := missing.parent / folder / missing.name).is_file():
            return (f", and {shown(str(found))} is there: write the paths relative to the manifest's folder "
                    f"({folder}/{missing.name}), or move the manifest into {shown(str(found.parent))}")
    return ""


def _one_spelling(records: list[Record]) -> list[Record]:
    """One id per patient whatever its spelling (:func:`patient_key`): a typed ``PERSON1000`` beside a film named
    ``person1000_...``, or ``MRN100`` beside ``mrn100``, is one child, who must not land on both sides of a split.
    The spelling kept is a film name's (``person1000``, as a folder of those films gives it), else the first. Films
    that are patients of their own keep their path."""
    first: dict[str, str] = {}
    named: dict[str, str] = {}  # a file name's spelling wins over a typed one
    for rec in records:
        if not own_patient(rec):
            first.setdefault(patient_key(rec.patient), rec.patient)
        if parsed := parse_any(Path(rec.path).name, rec.label):
            named.setdefault(patient_key(parsed[1]), parsed[1])
    spelling = {key: named.get(key, spelt) for key, spelt in first.items()}
    return [rec if own_patient(rec) else dataclasses.replace(rec, patient=spelling[patient_key(rec.patient)])
            for rec in records]


def _manifest_record(csv_path: Path, row: dict[str, str], line: int,
                     seen: dict[tuple[int, int] | str, tuple[int, str]]) -> Record:
    """One manifest row as a record; ``seen`` (file, :func:`file_identity` -> line and path as listed) refuses a file
    listed twice, however spelt (relative and absolute, through a linked folder, or a hard link): one film under two
    labels or in two splits
    would be read twice, and a manifest pneumoscan wrote from it would not read back."""
    where = f"{csv_path}, line {line}"
    if not row["path"] or not row["label"]:
        raise ValueError(f"{where}: path and label must not be empty")
    path = Path(row["path"])
    if not path.is_absolute():
        path = csv_path.parent / path
    first, spelt = seen.setdefault(file_identity(path), (line, row["path"]))
    if first != line:
        raise ValueError(f"{where}: {shown(row['path'])} is listed again (first on line {first}"
                         f"{'' if spelt == row['path'] else ', as ' + shown(spelt)})")
    if row["label"].upper() not in LABELS and (kind := kind_in_words(row["label"])):
        # a sheet's diagnosis ("bacterial pneumonia") as the label: its kind has a column of its own
        raise ValueError(f"{where}: label {row['label']!r} names a kind of pneumonia, and a label is NORMAL or "
                         f"PNEUMONIA: write PNEUMONIA as its label and {kind} in the subtype column")
    if row.get("patient", "").casefold() in MISSING_VALUES:
        raise ValueError(f"{where}: patient {row['patient']!r} is a missing value as a spreadsheet or R writes it, "
                         "which would make every film so marked one patient: leave the cell empty (the film's name or "
                         "DICOM header then gives its patient, else it is a patient of its own) or give the patient's "
                         "id")
    try:
        split = row.get("split", "").lower()
        if split:
            look_up_option(split, SPLITS, "split", hint=f"choose from {', '.join(SPLITS)}, or leave it empty")
        rec = make_record(path, row["label"], split, root=csv_path.parent, patient=row.get("patient", ""))
        subtype = (row.get("subtype") or rec.subtype).lower()
        subtype = SUBTYPE_WORDS.get(subtype, subtype)  # "bacterial", "viral": a site's spelling of the two
        # no "did you mean": "abnormal" is one letter from "normal", the opposite class
        look_up_option(subtype, (*SUBTYPES, ""), "subtype", hint=f"choose from {', '.join(SUBTYPES)}, or leave it "
                       "empty for PNEUMONIA", suggest=False)  # fmt: skip
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    # the tasks read the subtype: a NORMAL image is "normal", a PNEUMONIA one bacteria, virus or unknown ("")
    if subtype not in (("normal",) if rec.label == "NORMAL" else ("bacteria", "virus", "")):
        raise ValueError(f"{where}: subtype {subtype!r} does not fit label {rec.label}")
    columns = tuple((name, value) for name, value in row.items() if name not in MANIFEST_FIELDS)
    return dataclasses.replace(rec, subtype=subtype, columns=columns)


def write_manifest(records: Sequence[Record], csv_path: Path | str) -> None:
    """Write records as a manifest that :func:`read_manifest` (and so every command) reads back. A relative path
    is rewritten relative to the CSV's folder, which is how it is read back: between the two folders as they really
    are, because the system resolves a linked folder before the ``..`` read back (runs/ linked to a scratch disk).
    A name's bytes are kept as they are, UTF-8 or not, so that each row names the very same file when read back. The
    CSV's folder is made if missing."""
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    csv_dir = os.path.realpath(Path(csv_path).parent)

    def row(rec: Record) -> dict[str, str]:
        path = rec.path
        if not os.path.isabs(path):  # the folder resolved, the name kept (it may be a link with a meaning)
            folder, name = os.path.split(path)
            path = os.path.relpath(os.path.join(os.path.realpath(folder), name), csv_dir)
        return {**{k: v for k, v in asdict(rec).items() if k != "columns"}, **dict(rec.columns), "path": path}

    # a manifest's own columns are kept (a run's split.csv of a manifest with a site column still groups by site)
    columns = dict.fromkeys(name for rec in records for name, _ in rec.columns)
    write_csv(csv_path, (*MANIFEST_FIELDS, *columns), map(row, records), errors="surrogateescape")
