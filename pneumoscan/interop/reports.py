"""``pneumoscan predict --dicom-sr DIR --fhir DIR``: each result row written as a DICOM SR (plus the Grad-CAM overlay
as a Secondary Capture when heatmaps were made) and as a FHIR Observation, the file names recorded in the row.

The report builders (:mod:`.sr`, :mod:`.fhir`) are imported when reports are written: checking that a bundle can
report, before any film is read, and framing a multipart body for the web service need not load highdicom and
fhir.resources."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from pneumoscan.core.atomic import write_atomic, write_new
from pneumoscan.core.logs import redact
from pneumoscan.data.decode import read_dicom_header
from pneumoscan.data.scope import IDENTIFIERS, identifiers
from pneumoscan.inference.predict import identity_fields, scoring_card
from pneumoscan.models.card import BundleCard, card_task, load_card

from .uids import uid_root

log = logging.getLogger(__name__)
SR_SUFFIX, OVERLAY_SUFFIX, FHIR_SUFFIX = ".sr.dcm", ".heatmap.dcm", ".fhir.json"  # what write_reports names its files


def check_reportable(bundle: Path | str, dicom: bool = True, card: BundleCard | None = None) -> None:
    """Refuse before any film is read: SR and FHIR results state a pneumonia finding, and, for ``dicom`` objects, an
    organisation's UID root that is none (``$PNEUMOSCAN_UID_ROOT``) would refuse every one only once every film was
    scored (a FHIR Observation's identifier is a UUID, under no root). ``card``: the bundle's as loaded (read from
    disk when None)."""
    if dicom:
        uid_root()
    card = card if card is not None else load_card(bundle)
    task = card.task
    if not card_task(card, bundle).reports_pneumonia:
        raise ValueError(f"DICOM SR and FHIR results report pneumonia, and {bundle} is a model of the {task} task, "
                         "whose positive call is not pneumonia present: report with a pneumonia bundle")


def dicom_multipart(parts: list[bytes]) -> tuple[bytes, str]:
    """Part 10 files as one multipart/related body and its Content-Type: what STOW-RS takes, and what the service
    answers for a report sent with its overlay."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def scoring_mode(backend: str, tta: bool = False) -> str:
    """How the rows were scored, as the reports' identity states it (:func:`.uids.derived_uid`)."""
    return f"{backend}+tta" if tta else backend


def earlier_thresholds(card: BundleCard, backend: str, tta: bool = False) -> list[float]:
    """The thresholds the bundle's weights were read at before the one in force, oldest first (``pneumoscan
    threshold`` records each one it replaced), for plain or TTA scores: a report made at one of them is replaced by
    this bundle's. For the INT8 model, its own: those each record replaced and those it chose, which an ``export
    --int8`` of the copy may have replaced since (the INT8 file's digest is part of the reports' identity, so one
    made by another INT8 model is never taken for this one's)."""
    kind = "tta_threshold" if tta else "threshold"
    keys = (f"previous_int8_{kind}", f"int8_{kind}") if backend == "onnx-int8" else (f"previous_{kind}",)
    return list(dict.fromkeys(r[k] for r in card.threshold_records for k in keys if r.get(k) is not None))


def _issued(folder: Path, suffix: str) -> dict[str, tuple[Path, Dataset]]:
    """The files of FOLDER named ``*SUFFIX`` (as :func:`write_reports` names them), with their headers, by SOP
    Instance UID. A file that is no readable DICOM is passed over."""
    found = {}
    for path in sorted(folder.glob(f"*{suffix}")):
        try:
            header = read_dicom_header(path, dicom=True)
        except (OSError, ValueError) as e:  # a DecodeError: not DICOM, cut short, not a regular file
            log.debug("%s: not read as an earlier report or overlay: %s", path, e)
            continue
        if header is not None and "SOPInstanceUID" in header:
            found[str(header.SOPInstanceUID)] = path, header
    return found


def issued_reports(folder: Path) -> dict[str, Dataset]:
    """The headers of the DICOM SRs in FOLDER (``*.sr.dcm``) by SOP Instance UID: the reports a new one of the same
    film may replace."""
    return {uid: header for uid, (_, header) in _issued(folder, SR_SUFFIX).items()}


def _replace_overlay(old: Path | None, new: Path) -> None:
    """Remove ``old``, the same reading's overlay numbered 9902 (:func:`.sr.replaced_overlay_uid`), now that ``new``
    is written: the folder holds one image of the reading, not two of which one is in a series other readings'
    overlays share. An overlay filed in a PACS is not reached from here (docs/dicom.md)."""
    if old is None:
        return
    with contextlib.suppress(FileNotFoundError):  # removed since it was read: nothing left to replace
        old.unlink()
        log.info("%s replaces %s, the overlay of the same reading in series 9902", new, old)


def _identifier(text: bytes | str) -> str | None:
    """An Observation's first identifier as ``system|value`` (how a FHIR server is asked for it); None when the text
    is no Observation with one."""
    try:
        return _key(json.loads(text))
    except ValueError:
        return None


def _key(held: Any) -> str | None:
    """:func:`_identifier` of JSON read: None when it is no Observation with an identifier."""
    try:
        first = held["identifier"][0] if held.get("resourceType") == "Observation" else None
        return f"{first['system']}|{first['value']}" if first else None
    except (TypeError, KeyError, IndexError, AttributeError):
        return None


class ObservationIndex:
    """The files of a FHIR folder named ``*.fhir.json`` by their Observation's identifier, each file read once and
    kept track of as :meth:`write` writes them: a run writing many studies (``listen``, for months) reads every file
    when it starts, not at every study (a folder of 100,000 files would take seconds a study, more every month). A
    file that is no such Observation is passed over.

    Other processes may change the folder meanwhile: scripts that send its files on delete or move them, and others
    (``pacs --fhir``, a second listener) write Observations there, of other readings or of one this run writes
    again, under any name. Before each write the folder is listed again, names alone (no file read, none
    stat'ed), and only the files new since are read; the files gone are forgotten. So an Observation of the same
    identifier another process wrote since, under a name of its own, is replaced rather than doubled. The index is
    a list of the files to look in, not their truth: a file it names is read again before it is replaced, so one
    that holds another Observation now (replaced under its name by another process, which pneumoscan does only with
    an Observation of the same identifier) is left, and read again at the next listing. What it is not told is a
    file replaced under a name it has read, by another reading's Observation, which is taken for the one read until
    that file is about to be replaced. A file that cannot be read or is no JSON (seen half-written, as a tool that
    copies files in place writes them) is read again at each listing until it is, as it may hold an Observation
    of a reading this run writes again once whole."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._names: dict[str, list[str]] = {}  # file names, not paths: a listener's index may name 100,000
        self._files: dict[str, str | None] = {}  # by file name: the identifier it held when read
        self._unread: set[str] = set()  # names whose file could not be read or parsed: read at the next listing
        self._refresh()
        log.debug("%s: %d Observation identifiers in %d files", self.folder, len(self._names),
                  sum(map(len, self._names.values())))

    @staticmethod
    def _read(path: Path) -> tuple[str | None, bool]:
        """The identifier of the Observation in the file at ``path`` (None when it holds none), and whether the file
        was read whole: not where it is gone, unreadable or no JSON (half-written, say)."""
        try:
            return _key(json.loads(path.read_bytes())), True
        except (OSError, ValueError) as e:  # gone, not a regular file, unreadable; no JSON (yet)
            log.debug("%s: not read as an earlier Observation: %s", path, e)
            return None, False

    def _held(self, path: Path) -> str | None:
        """The identifier of the Observation in the file at ``path``; None when it holds none (or is gone)."""
        return self._read(path)[0]

    def _refresh(self) -> None:
        """The folder listed, names alone (no file stat'ed): each file new since the last listing read, and each
        one that could not be read whole at the last (:attr:`_unread`) read again, each gone forgotten. The
        listings are compared as sets of names, so one that changed nothing costs little more than the listing
        itself."""
        listed = set(os.listdir(self.folder))
        for name in self._files.keys() - listed:
            self._forget(name)
        for name in sorted((listed - self._files.keys()) | self._unread):
            if name.endswith(FHIR_SUFFIX) and not name.startswith("."):  # as glob("*.fhir.json") finds them
                self._forget(name)
                key, whole = self._read(self.folder / name)
                self._add(name, key)
                if not whole:
                    self._unread.add(name)

    def _add(self, name: str, key: str | None) -> None:
        """The file ``name`` into the index, as holding the Observation ``key`` (None: none)."""
        self._files[name] = key
        if key is not None:
            self._names.setdefault(key, []).append(name)

    def _forget(self, name: str) -> None:
        """The file ``name`` out of the index: gone, or to be read again at the next listing."""
        self._unread.discard(name)
        if (key := self._files.pop(name, None)) is not None:
            if names := [n for n in self._names.pop(key, []) if n != name]:
                self._names[key] = names

    def write(self, stem: str, text: str) -> Path:
        """The Observation ``text`` as ``STEM.fhir.json`` (``STEM-2...`` when that name is another's), or in place
        of the files of its identifier: a FHIR server keeps one Observation of an identifier, updated in place with
        the earlier ones in its history, and so does the folder, where a second file of one identifier beside the
        first left which is in force to the order a script sends them in (``STEM-2.fhir.json`` sorts before
        ``STEM.fhir.json``: the earlier reading, sent last, would be the server's). The log names each file
        replaced."""
        data = text.encode()
        key = _identifier(data)
        self._refresh()  # what other processes wrote or deleted since the last write
        named = sorted(self._names.get(key, [])) if key is not None else []
        earlier = [path for name in named if self._held(path := self.folder / name) == key]
        path = write_atomic(earlier[0], data) if earlier else write_new(self.folder, stem, FHIR_SUFFIX, data)
        for other in earlier[1:]:
            other.unlink(missing_ok=True)
        if earlier:
            log.info("%s: the Observation written replaces the one of the same identifier (the same reading of the "
                     "film by the model) the file held%s", path,
                     "".join(f"; {p}, of that identifier too, is removed" for p in earlier[1:]))
        for name in named:  # replaced, removed, or holding another Observation now: read again if listed again
            self._forget(name)
        self._forget(path.name)
        self._add(path.name, key)
        return path


def replaced_reports(source: Dataset, reading: dict, issued: dict[str, Dataset], earlier: Sequence[float],
                     name: str, version: str, mode: str) -> list[Dataset]:
    """Of the ``issued`` reports, those this model made of the film at an ``earlier`` threshold, in the same
    scoring ``mode``, and those of the same reading whose series is numbered by the fixed rule (9901, whose UIDs
    are others: :data:`.sr.FIXED_NUMBERS`): by their derived UIDs (:func:`.sr.replaced_uids`), which are theirs
    alone."""
    from . import sr

    if not issued:
        return []
    return [issued[uid] for uid in sr.replaced_uids(source, reading, name, version, mode, earlier) if uid in issued]


def write_reports(
    rows: list[dict], bundle: Path | str, sr_dir: Path | str | None = None,
    fhir_dir: Path | str | ObservationIndex | None = None,
    backend: str = "torch", tta: bool = False, issued: dict[str, Dataset] | None = None,
    held: Collection[str] = (), card: BundleCard | None = None,
) -> None:
    """For every scored row: ``STEM.sr.dcm`` (and ``STEM.heatmap.dcm`` when the row has a heatmap) in ``sr_dir``,
    ``STEM.fhir.json`` in ``fhir_dir``; their paths go into the row's ``dicom_sr``, ``dicom_heatmap`` and ``fhir``.
    A row that cannot be reported (a JPEG/PNG has no study to file an SR in nor a patient to link an Observation
    to; a row with an ``error``; an object that is not a radiograph; a malformed header) gets a warning saying why
    instead, and the other rows are still written. ``backend`` and ``tta``: how the rows were scored, part of every
    report's identity, so the same film scored the same way gets the same UIDs and FHIR identifier (the identifier
    whatever the threshold: :mod:`.fhir`). An Observation whose identifier a file in ``fhir_dir`` holds (a rerun's,
    pneumoscan 0.2.0's of the same reading) replaces that file (:meth:`ObservationIndex.write`); ``fhir_dir`` may be
    the folder's :class:`ObservationIndex`, which a caller writing many batches keeps, so that the folder is read once
    for them all rather than for each batch. A film's SR that
    ``sr_dir`` holds from an earlier threshold of these weights (:func:`earlier_thresholds`), or of the same reading
    in series 9901 (:func:`replaced_reports`), is named as the predecessor of the one written now, which is written
    beside it; ``issued``, the reports held elsewhere (a PACS's study, by SOP Instance UID: study, series, SOP
    instance and class), are looked in instead. The same reading's overlay in series 9902 is replaced in ``sr_dir``;
    one among ``held`` (the SOP Instance UIDs of a PACS's study, where nothing is deleted) is named in the row's
    warnings for deletion there. ``card``: the card the rows were scored by (:attr:`Predictor.card
    <pneumoscan.inference.predict.Predictor.card>`, the INT8 model's with ``onnx-int8``), so that the reports name
    the model that scored them whatever the bundle on disk holds since; None: the bundle's on disk."""
    check_reportable(bundle, dicom=sr_dir is not None, card=card)
    reports = _Reports.opened(bundle, sr_dir, fhir_dir, backend, tta, issued, held, card)
    for row in rows:
        if "probability" in row:
            reports.write(row)
    reported, scored = sum(bool({"dicom_sr", "fhir"} & row.keys()) for row in rows), sum("probability" in row
                                                                                          for row in rows)
    log.info("wrote reports for %d of %d results%s", reported, scored,
             " (each other row's warnings say why it has none)" if reported < scored else "")


def add_warning(row: dict, text: str) -> None:
    """Say in the row why a report of it is missing, or what became of one or what to do about it, wherever the
    report was written or stored (here, ``pacs``'s STOW-RS, ``listen``'s C-STORE): the row goes on, and so do its
    other reports and the other rows."""
    row.setdefault("warnings", []).append(text)


@dataclass
class _Reports:
    """What every row's reports share (:func:`write_reports`): the model's identity and scoring mode, the folders,
    and what those folders (or a PACS's study) already hold, read once and kept up to date as files are written."""

    card: BundleCard
    caveats: list[str]
    name: str
    version: str
    mode: str
    sr_dir: Path | None
    earlier: list[float]  # the thresholds these weights were read at before
    observations: ObservationIndex | None  # fhir_dir's Observations by identifier
    known: dict[str, Dataset]  # the SRs a new one may replace, by SOP Instance UID
    overlays: dict[str, Path]  # sr_dir's overlays by SOP Instance UID
    held: Collection[str]

    @classmethod
    def opened(cls, bundle: Path | str, sr_dir: Path | str | None, fhir_dir: Path | str | ObservationIndex | None,
               backend: str, tta: bool, issued: dict[str, Dataset] | None, held: Collection[str],
               scored_by: BundleCard | None = None) -> _Reports:
        """The folders made, once the model is known to report, and what they hold read, before the first row;
        ``scored_by``: the card the rows were scored by (:func:`write_reports`' ``card``)."""
        # of the threshold the rows were labelled at (the INT8 model's, with its sidecar's caveats)
        card = scored_by if scored_by is not None else scoring_card(bundle, load_card(bundle), backend)
        identity = identity_fields(bundle, backend, card)  # what predict's rows name, for the backend that scored them
        caveats = card.caveats
        sr_folder = Path(sr_dir) if sr_dir is not None else None
        if sr_folder is not None:
            sr_folder.mkdir(parents=True, exist_ok=True)
        earlier = earlier_thresholds(card, backend, tta) if sr_folder is not None else []
        # a folder is read here; an index a caller keeps across batches is taken as it stands
        observations = ObservationIndex(fhir_dir) if isinstance(fhir_dir, (str, Path)) else fhir_dir
        known = (issued_reports(sr_folder) if issued is None else issued) if sr_folder is not None else {}
        overlays = {uid: path for uid, (path, _) in _issued(Path(sr_dir), OVERLAY_SUFFIX).items()} if sr_dir else {}
        return cls(card, caveats, identity["model_id"], identity["model_version"], scoring_mode(backend, tta),
                   sr_folder, earlier, observations, known, overlays, held)

    def write(self, row: dict) -> None:
        """The row's reports, or the warnings that say why it has none."""
        # the reading as scored: its own warnings list, so a report's failure added to the row is no scope warning
        reading = {**row, "warnings": list(row.get("warnings") or []), "positive": self.card.positive,
                   "task": self.card.task, "caveats": self.caveats}
        try:
            source = _scored_source(row, reading)
        except ValueError as e:  # ... or a DecodeError: changed or removed since it was scored
            for folder, what in ((self.observations, "FHIR Observation"), (self.sr_dir, "DICOM SR")):
                if folder is not None:
                    add_warning(row, f"no {what} written: {redact(str(e))}")
            return
        stem = Path(row["path"]).stem
        if self.observations is not None:
            self._write_fhir(row, reading, source, stem, self.observations)
        if self.sr_dir is not None:
            self._write_sr(row, reading, source, stem, self.sr_dir)

    def _write_fhir(self, row: dict, reading: dict, source: Dataset | None, stem: str,
                    observations: ObservationIndex) -> None:
        """``STEM.fhir.json``, replacing the file of the same identifier (:meth:`ObservationIndex.write`)."""
        from . import fhir

        try:
            text = fhir.observation_json(reading, self.name, self.version, self.mode, source)
            row["fhir"] = str(observations.write(stem, text))
        except ValueError as e:  # a film without identity, a malformed PatientID, a failed FHIR validation
            add_warning(row, f"no FHIR Observation written: {e}")

    def _write_sr(self, row: dict, reading: dict, source: Dataset | None, stem: str, folder: Path) -> None:
        """``STEM.sr.dcm``, naming the reports it replaces, and the overlay with it when the row has a heatmap."""
        from . import sr

        if source is None:
            add_warning(row, "not a DICOM file: no DICOM SR written (it has no study to join)")
            return
        try:
            png = Path(row["heatmap"]).read_bytes() if row.get("heatmap") else None
            previous = replaced_reports(source, reading, self.known, self.earlier, self.name, self.version, self.mode)
            made = sr.report_files(source, reading, png, self.name, self.version, self.mode, previous)
            row["dicom_sr"] = str(write_new(folder, stem, SR_SUFFIX, made[0]))
            if len(made) > 1:
                self._write_overlay(row, source, stem, folder, made[1])
        except ValueError as e:  # a film without its UIDs, a malformed attribute, highdicom's refusal, ...
            add_warning(row, f"no DICOM SR written: {redact(str(e))}")

    def _write_overlay(self, row: dict, source: Dataset, stem: str, folder: Path, data: bytes) -> None:
        """``STEM.heatmap.dcm`` in place of the same reading's overlay in series 9902: removed from ``folder``, or,
        where a PACS's study holds it (``held``), named in the row's warnings for deletion there."""
        from . import sr

        row["dicom_heatmap"] = str(new := write_new(folder, stem, OVERLAY_SUFFIX, data))
        old = sr.replaced_overlay_uid(source, self.name, self.version, self.mode)
        _replace_overlay(self.overlays.pop(old, None), new)
        if old in self.held:
            add_warning(row, f"the study holds this reading's overlay in series 9902 (SOP Instance UID {old}, made by "
                       "pneumoscan 0.2.0) beside the new one: delete it in the PACS")


def _scored_source(row: dict, reading: dict) -> Dataset | None:
    """The header of the film the row scored (None: a JPEG/PNG), or a ValueError saying why neither report may be
    made of it: an error row, an object that is no radiograph, a file whose UIDs changed since it was scored."""
    from . import sr

    sr.check_result(reading)  # an error row, an object that is no radiograph: neither report
    source = read_dicom_header(row["path"])  # None: a JPEG/PNG
    if (identifiers(source)[0] if source is not None else {}) != {k: row[k] for k in IDENTIFIERS if k in row}:
        raise ValueError("the file is not the film that was scored: its UIDs changed since (replaced or "
                         "rewritten), so this reading would be filed under another film")
    return source
