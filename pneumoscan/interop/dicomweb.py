"""``pneumoscan pacs``: read a study's films from a PACS over DICOMweb, score them, and store the results back.

QIDO-RS finds the study's instances, WADO-RS retrieves them, :func:`~pneumoscan.inference.predict.predict_paths` scores them
(scope warnings and UIDs included), and with ``store`` STOW-RS sends each film's DICOM SR (and its Grad-CAM
Secondary Capture when heatmaps are asked) into the same study. Only what the PACS's answer lists as stored is
recorded as stored: a PACS may answer 202 with some instances failed, or leave one out of its answer. Retrieved
films are written to a private temporary folder for the prediction run and deleted with it; they are named by their
SOP Instance UID, never by patient.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from pneumoscan.data.readers.dicom import is_own_output
from pneumoscan.inference.predict import predict_paths
from .reports import check_reportable, write_reports

log = logging.getLogger(__name__)
TIMEOUT_S = 60  # one request to the PACS
_STUDY, _SERIES, _SOP, _COUNT = "0020000D", "0020000E", "00080018", "00201208"
_MADE = {"dicom_sr": "DICOM SR", "dicom_heatmap": "Grad-CAM Secondary Capture"}  # what write_reports made, by key
# STOW-RS status codes (PS3.18 table I.2-1 and I.2-2), in words; another is given in hex only
_FAILURES = {0x0110: "processing failure", 0x0122: "SOP class not supported", 0x0124: "not authorized",
             0xA700: "out of resources", 0xA900: "data set does not match SOP class", 0xC000: "cannot understand",
             0xC122: "transfer syntax not supported"}  # fmt: skip
_WARNINGS = {0xB000: "coercion of data elements", 0xB006: "elements discarded",
             0xB007: "data set does not match SOP class"}  # fmt: skip


def _value(item: dict, tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _instances(client: DICOMwebClient, study_uid: str) -> list[dict]:
    """Every instance of the study, page after page: a PACS may cap a QIDO-RS answer (a Warning header says more
    remain) and give the rest from an offset. An empty page ends the search. A page of instances already given
    means the server ignores the offset: what it listed is the whole study only if the study's instance count says
    so; otherwise it is refused, since scoring part of a study as if it were all of it would be a silent gap."""
    found: dict[str, dict] = {}
    while True:
        page = client.search_for_instances(study_instance_uid=study_uid, offset=len(found))
        new = {_value(item, _SOP): item for item in page if _value(item, _SOP) not in found}
        if not page:
            return list(found.values())
        if not new:  # the offset was ignored: complete only if the first answer held the whole study
            if len(found) >= _study_size(client, study_uid):
                return list(found.values())
            raise ValueError(f"the PACS answered the instance search from offset {len(found)} with instances it had "
                             "already listed: it ignores the offset, so instances beyond its result limit cannot be "
                             "listed; raise that limit (e.g. Orthanc's LimitFindInstances) or ask its administrator")
        found.update(new)


def _study_size(client: DICOMwebClient, study_uid: str) -> float:
    """The study's NumberOfStudyRelatedInstances as the PACS reports it (infinite when it does not say, so that
    nothing is taken as complete without its word)."""
    [study] = client.search_for_studies(search_filters={"StudyInstanceUID": study_uid},
                                        fields=["NumberOfStudyRelatedInstances"]) or [{}]
    value = _value(study, _COUNT)
    return int(value) if value.isdigit() else math.inf


def _status(code: int | None, words: dict[int, str]) -> str:
    """A STOW-RS status code in hex and, when known, in words: what a PACS's operator looks up."""
    if code is None:
        return "no reason given"
    return f"0x{int(code):04X}" + (f": {words[code]}" if code in words else "")


def _stored(answer: Dataset, sent: dict[str, str], row: dict) -> list[str]:
    """The SOP Instance UIDs of ``sent`` (UID: what it is) that the PACS's STOW-RS answer lists as stored (its
    ReferencedSOPSequence), in the order sent. Each other one gets a warning in the row: refused, with the reason of
    its FailedSOPSequence item (dicomweb-client raises nothing on a 202), or left out of the answer; and each one
    stored with a warning reason (elements coerced or discarded) says so: a report is not filed unless the PACS
    says it is."""
    accepted = {str(i.get("ReferencedSOPInstanceUID", "")): i for i in answer.get("ReferencedSOPSequence") or []}
    failed = {str(i.get("ReferencedSOPInstanceUID", "")): i for i in answer.get("FailedSOPSequence") or []}
    notes = row.setdefault("warnings", [])
    for uid, what in sent.items():
        if uid in accepted and "WarningReason" in accepted[uid]:
            notes.append(f"the PACS stored the {what} {uid} with a warning "
                         f"({_status(accepted[uid].get('WarningReason'), _WARNINGS)})")
        elif uid in failed:
            notes.append(f"the PACS refused the {what} {uid} "
                         f"({_status(failed[uid].get('FailureReason'), _FAILURES)}): it is not stored")
        elif uid not in accepted:
            notes.append(f"the PACS did not confirm storing the {what} {uid}: it may not be stored")
    stored = [uid for uid in sent if uid in accepted]
    if len(stored) < len(sent):
        log.warning("the PACS stored %d of the %d instances sent", len(stored), len(sent))
        row["not_stored"] = [uid for uid in sent if uid not in accepted]
    return stored


def predict_study(
    bundle: Path | str, url: str, study_uid: str, store: bool = False, heatmaps: bool = False,
    backend: str = "onnx",
) -> list[dict]:
    """One result row per image instance of the study (``path`` is the instance's WADO-RS URL); with ``store``
    the rows' ``stored`` field lists the SOP Instance UIDs the PACS accepted (SR, then heatmap); ``not_stored`` the
    others, each named in a warning."""
    check_reportable(bundle)
    if heatmaps and not store:
        raise ValueError("--heatmaps goes with --store: the overlays are sent to the PACS, not kept here")
    client = DICOMwebClient(url=url.rstrip("/"), timeout=TIMEOUT_S)
    # a busy PACS (503, 429, ...) or a dropped connection is tried 3 times over ~3 s, not 5 times over ~30 s
    client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=500)
    try:
        found = _instances(client, study_uid)
        if not found:
            raise ValueError(f"study {study_uid} not found at {url} (QIDO-RS returned no instances)")
        with tempfile.TemporaryDirectory(prefix="pneumoscan-pacs-") as tmp:
            films, sources = Path(tmp) / "films", {}
            films.mkdir()
            for item in found:
                series, sop = _value(item, _SERIES), _value(item, _SOP)
                ds = client.retrieve_instance(study_uid, series, sop)
                if "PixelData" not in ds or is_own_output(ds):  # reports, our own overlays: not films
                    continue
                path = films / f"{sop}.dcm"
                ds.save_as(path, enforce_file_format=True)
                sources[str(path)] = f"{url.rstrip('/')}/studies/{study_uid}/series/{series}/instances/{sop}"
            if not sources:
                raise ValueError(f"study {study_uid} holds no image instances to read")
            rows = predict_paths(bundle, list(sources), backend=backend,
                                 heatmap_dir=Path(tmp) / "heatmaps" if heatmaps else None)
            if store:
                write_reports(rows, bundle, sr_dir=Path(tmp) / "sr", backend=backend)
                for row in rows:
                    made = {_MADE[key]: pydicom.dcmread(row.pop(key)) for key in _MADE if key in row}
                    if made:
                        answer = client.store_instances(list(made.values()), study_instance_uid=study_uid)
                        sent = {str(ds.SOPInstanceUID): what for what, ds in made.items()}
                        row["stored"] = _stored(answer, sent, row)
            for row in rows:
                row["path"] = sources[row["path"]]
                row.pop("heatmap", None)  # the temporary PNG is gone with the folder
    except requests.RequestException as e:  # unreachable, refused, 4xx/5xx: one line, not a traceback
        raise OSError(f"DICOMweb at {url}: {e}") from None
    log.info("scored %d instances of one study%s", len(rows), " and stored the reports" if store else "")
    return rows
