"""A study's films scored and reported as ``pacs`` (DICOMweb) and ``listen`` (DIMSE) both do it, whichever way the
films came and their reports go: which images are scored (:func:`not_scored`), a study that is not one patient's
refused (:func:`one_patient`), the scoring and the reports (:func:`score_films`), each film's row in the study's
order (:func:`study_rows`), a store's status code in words (:func:`status_words`: STOW-RS answers with C-STORE's
codes), the films whose reports were not filed (:func:`unfiled`) and the films a rejection note withdraws
(:func:`withdrawn_by`). One implementation, so that a film routed over
DIMSE gets the row and the report it would get read over DICOMweb."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from pneumoscan.core.names import shown
from pneumoscan.data.readers.dicom import FOR_PROCESSING, for_processing
from pneumoscan.data.scope import (MIN_SIDE, MODALITIES, RADIOGRAPH_CLASSES, RADIOGRAPHY, defined_term, kind_of,
                                   outside_scope, scope_warnings)
from pneumoscan.inference.predict import Stages, score_paths

from .reports import ObservationIndex, write_reports

MADE = {"dicom_sr": "DICOM SR", "dicom_heatmap": "Grad-CAM Secondary Capture"}  # what write_reports made, by key
# a store's status codes (C-STORE's, PS3.4 B.2.3, which STOW-RS answers with: PS3.18 table I.2-1 and I.2-2), in
# words; another is given in hex only
FAILURES = {0x0110: "processing failure", 0x0122: "SOP class not supported", 0x0124: "not authorized",
            0xA700: "out of resources", 0xA900: "data set does not match SOP class", 0xC000: "cannot understand",
            0xC122: "transfer syntax not supported"}  # fmt: skip
# the titles of IHE IOCM rejection notes (Key Object Selection documents): the films they list are withdrawn
REJECTIONS = {c.value: c.meaning for c in (
    codes.DCM.RejectedForQualityReasons, codes.DCM.RejectedForPatientSafetyReasons,
    codes.DCM.IncorrectModalityWorklistEntry, codes.DCM.DataRetentionPolicyExpired)}
PURGE = codes.DCM.DataRetentionPolicyExpired.value  # a rejection note of a routine purge (retention), not of a fault
WARNINGS = {0xB000: "coercion of data elements", 0xB006: "elements discarded",
            0xB007: "data set does not match SOP class"}  # fmt: skip


def status_words(code: int | None, words: dict[int, str]) -> str:
    """A store's status code in hex and, when known, in words: what a PACS's operator looks up."""
    if code is None:
        return "no reason given"
    return f"0x{int(code):04X}" + (f": {words[code]}" if code in words else "")


def valid_uid(text: str) -> bool:
    """Whether ``text`` is a valid DICOM UID as it stands (judged here, not warned of by pydicom in a UserWarning
    quoting it; a UID with spaces around is none either): one that is not is never put in a URL or a file name."""
    return UID(text, validation_mode=pydicom.config.IGNORE).is_valid and text == text.strip()


def not_scored(recorded: Dataset) -> str | None:
    """Why an instance (its header, or what a PACS's search answer says of it) is not scored, None when it is a
    radiograph (Modality CR or DX, or the "DR" some devices write, or a CR/DX SOP class) not recorded as For
    Processing, another body part or a view that is not frontal. A scanned form, a dose screen or a CT is no chest
    film, nor is the lateral film of a two-view study a frontal one: a coded finding on it would be a confident answer
    the model cannot give (:func:`~pneumoscan.data.scope.outside_scope`; a PACS that leaves those fields out of its
    answer has the film scored, and its report refused, by the same rule)."""
    if (marked := for_processing(recorded)) is not None:  # the raw values of an exposure whose film is another image
        return f"{marked}: {FOR_PROCESSING}"
    modality = str(recorded.get("Modality") or "").strip().upper()
    sop_class = str(recorded.get("SOPClassUID") or "").strip()
    if modality not in RADIOGRAPHY and sop_class not in RADIOGRAPH_CLASSES:
        # neither repeated unless a defined term or a UID: a PACS's answer may hold any text in either
        kind = UID(sop_class).name if UID(sop_class).is_valid else "SOPClassUID not a valid UID" if sop_class else \
            "SOP class not given"
        said = defined_term(modality, MODALITIES) if modality else "not recorded"
        return f"Modality {said}, {kind}: not a radiograph (CR/DX); the model reads chest X-ray films only"
    # its body part and view alone: its modality and class are judged above (the "DR" some devices write included),
    # and the rest is the film's own header's to judge (the size is given as large enough: a search answer has none)
    header = Dataset({recorded[k].tag: recorded[k] for k in ("BodyPartExamined", "ViewPosition") if k in recorded})
    warnings = scope_warnings(header, MIN_SIDE, MIN_SIDE)
    return "; ".join(w for w, _ in outside_scope(warnings)) or None


def score_films(stages: Stages, sources: dict[str, dict], work: Path, store: bool,
                fhir_dir: Path | str | ObservationIndex | None = None, issued: dict[str, Dataset] | None = None,
                held: Collection[str] = ()) -> list[dict]:
    """The rows of the films at the paths ``sources`` names (each path's row as the study lists it: where it came
    from, its UIDs), scored as ``predict`` scores them, by ``stages`` (loaded once by
    :func:`~pneumoscan.inference.predict.ready_stages`, for every study a listener is sent); with ``store``, each
    scored film's SR (and its Grad-CAM Secondary Capture, where ``stages`` were readied for heatmaps, their overlays
    drawn in ``work`` too) written into ``work``, the paths in its ``dicom_sr`` and ``dicom_heatmap`` (:data:`MADE`),
    and with ``fhir_dir`` (a folder, or its index a caller keeps) its FHIR Observation there, each report naming the
    model that scored it; ``issued`` and ``held``: the reports and the SOP Instance UIDs the study held already
    (:func:`~pneumoscan.interop.reports.write_reports`). Each row's ``path`` is still the film's file here:
    :func:`study_rows` gives it its place in the study."""
    if not sources:
        return []
    scored = score_paths(stages.overlays_into(work / "heatmaps") if stages.heatmaps else stages, list(sources))
    if store or fhir_dir is not None:
        first = stages.first
        write_reports(scored, first.bundle, sr_dir=work / "sr" if store else None, fhir_dir=fhir_dir,
                      backend=first.backend, issued=issued if issued is not None else {}, held=held, card=first.card)
    return scored


def study_rows(entries: list[dict | str], sources: dict[str, dict], scored: list[dict]) -> list[dict]:
    """One row per instance in ``entries``' order (a row made without scoring, or the path of a film scored): each
    scored film's row named as the study lists it (``sources``), keeping its UIDs when it could not be decoded (an
    error row has none of its own), without its temporary heatmap."""
    for row in scored:
        asked = sources[row["path"]]
        row["path"] = asked["path"]
        for key, value in asked.items():  # an error row, not decoded, has no UIDs of its own
            row.setdefault(key, value)
        row.pop("heatmap", None)  # the temporary PNG is gone with the folder
    by_path = {row["path"]: row for row in scored}
    return [by_path[sources[e]["path"]] if isinstance(e, str) else e for e in entries]


def one_patient(patients_of: dict[str, tuple[str, ...]]) -> None:
    """Refuse a study whose instances (SOP Instance UID: PatientID and its issuer, as the PACS's search answer or the
    films' headers give them) belong to more than one patient: a study is one patient's. A PACS keys its patients by
    id, so a film whose patient id was corrected, re-sent under the same UIDs, leaves the study's other instances
    under the earlier id, pneumoscan's report of it among them: a rerun filed a new report and exited 0, while the
    study held one in the earlier patient's record, and a film filed under the wrong patient would get a report
    there too. Each patient's instances are named by UID, the patients numbered in the order of their UIDs; their ids
    are not shown. An instance without a PatientID is not counted (a PACS may leave the field out of its answer)."""
    patients: dict[tuple[str, ...], list[str]] = {}
    for sop, patient in patients_of.items():
        if patient[0]:  # an answer without the id says nothing of whose the instance is
            patients.setdefault(patient, []).append(sop)
    if len(patients) < 2:
        return
    named = "; ".join(f"patient {n}: " + ", ".join(uids[:5]) + (f" and {len(uids) - 5} more" if len(uids) > 5 else "")
                      for n, uids in enumerate(sorted(sorted(group) for group in patients.values()), 1))
    raise ValueError(f"the study's instances belong to {len(patients)} patients (by PatientID and its issuer, not "
                     f"shown; {named}). A study is one patient's; a report filed "
                     "in it would sit beside another patient's films, or one filed before a correction of the "
                     "patient's id would stay in the earlier patient's record; have the PACS's administrator "
                     "reconcile the study (its instances under the wrong patient moved or deleted) and run again")


def unfiled(rows: Sequence[dict]) -> list[tuple[dict, str]]:
    """The scored films of a study whose reports were to be stored and the PACS does not hold, each with a line
    saying so (names escaped: a PACS may hold any bytes): reports it refused or did not confirm (``not_stored``), or
    none filed, since none could be made (the row's warnings of its reports say why; its scope warnings are in the
    results). Such a film is a failure, not a footnote: its reading reached no one who reads the study in the PACS."""
    failed = []
    for row in rows:
        if "probability" not in row or (row.get("stored") and not row.get("not_stored")):
            continue
        refused = row.get("not_stored")
        what = f"not stored: {len(refused)} report(s) of" if refused else "no report filed for"
        why = [w for w in row.get("warnings") or [] if kind_of(w) is None]  # the reports' and the PACS's, not scope
        failed.append((row, f"{what} {shown(row['path'])}: {shown('; '.join(why))}"))
    return failed


def unreadable_note(sop: str, error: Exception) -> ValueError:
    """The refusal of a study whose key object selection ``sop`` cannot be retrieved or read (``error``): whether it
    is a rejection note, and which films it withdraws, is not known, so none of the study's films is scored."""
    return ValueError(f"the study's key object selection {shown(sop)} could not be read ({type(error).__name__}): "
                      "whether it is a rejection note that withdraws films is not known, so none is scored")


@dataclass(frozen=True)
class Withdrawn:
    """What a key object selection withdraws (:func:`withdrawn_by`): why each film is not scored, by SOP Instance
    UID (none when it is no rejection note), and whether its title is :data:`PURGE`'s, a routine purge. True only
    when it withdraws a film: a tuple of its two fields was true for a note that withdraws none."""

    films: dict[str, str] = field(default_factory=dict)
    purge: bool = False

    def __bool__(self) -> bool:
        return bool(self.films)


def withdrawn_by(note: Dataset) -> Withdrawn:
    """Why each film a key object selection withdraws is not scored, by SOP Instance UID: each film it lists when it
    is a rejection note (IHE IOCM: titled :data:`REJECTIONS`), none under another title (Of Interest, say). A PACS
    may keep a rejected film beside its note: one rejected for patient safety (another patient's film, a wrong side)
    or for quality would otherwise be scored and its report filed. One that cannot be read raises
    :func:`unreadable_note`'s ValueError. The one reading of a note, ``pacs``'s and ``listen``'s."""
    sop = str(note.get("SOPInstanceUID", ""))
    try:
        title = note.ConceptNameCodeSequence[0]
        rejection = (str(title.CodingSchemeDesignator), str(title.CodeValue))
        listed = [str(instance.ReferencedSOPInstanceUID)
                  for evidence in note.get("CurrentRequestedProcedureEvidenceSequence", [])
                  for listed_series in evidence.get("ReferencedSeriesSequence", [])
                  for instance in listed_series.get("ReferencedSOPSequence", [])]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise unreadable_note(sop, e) from None
    if rejection[0] != "DCM" or rejection[1] not in REJECTIONS:
        return Withdrawn()
    return Withdrawn(dict.fromkeys(listed, f"withdrawn by the study's rejection note {sop} ({rejection[1]}: "
                                           f"{REJECTIONS[rejection[1]]})"), rejection[1] == PURGE)
