"""``pneumoscan predict --dicom-sr DIR --fhir DIR``: each result row written as a DICOM SR (plus the Grad-CAM overlay
as a Secondary Capture when heatmaps were made) and as a FHIR Observation, the file names recorded in the row."""

from __future__ import annotations

import logging
from pathlib import Path

from pneumoscan.data.decode import read_dicom_header
from pneumoscan.data.readers.dicom import redact
from pneumoscan.data.tasks import get_task
from pneumoscan.inference.export import weights_digest
from pneumoscan.models.bundle import load_card
from . import fhir, sr

log = logging.getLogger(__name__)


def model_identity(bundle: Path | str) -> tuple[str, str]:
    """(name, version) as reports and the web service state them: the model id and its weights' sha256 prefix."""
    return load_card(bundle).model_id, f"sha256:{weights_digest(bundle)[:12]}"


def _write_new(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    """``folder/stem+suffix``, or ``stem-2+suffix``...: a report never replaces a file (films of the same name may
    come from different folders)."""
    n = 1
    while True:
        path = folder / (f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        try:
            with path.open("xb") as f:
                f.write(data)
            return path
        except FileExistsError:
            n += 1


def check_reportable(bundle: Path | str) -> None:
    """Refuse before any film is read: SR and FHIR results state a pneumonia finding."""
    task = load_card(bundle).task
    if not get_task(task).reports_pneumonia:
        raise ValueError(f"--dicom-sr and --fhir report pneumonia: {bundle} is a {task} model")


def write_reports(
    rows: list[dict], bundle: Path | str, sr_dir: Path | str | None = None, fhir_dir: Path | str | None = None
) -> None:
    """For every readable row: ``STEM.sr.dcm`` (and ``STEM.heatmap.dcm`` when the row has a heatmap) in ``sr_dir``,
    ``STEM.fhir.json`` in ``fhir_dir``; their paths go into the row's ``dicom_sr``, ``dicom_heatmap`` and ``fhir``.
    A JPEG/PNG has no study to file an SR in: it gets a warning instead."""
    check_reportable(bundle)
    card = load_card(bundle)
    name, version = model_identity(bundle)
    folders = [Path(d) for d in (sr_dir, fhir_dir) if d is not None]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if "probability" not in row:
            continue
        reading = {**row, "positive": card.positive, "task": card.task}
        stem = Path(row["path"]).stem
        if fhir_dir is not None:
            text = fhir.observation_json(reading, name, version)
            row["fhir"] = str(_write_new(Path(fhir_dir), stem, ".fhir.json", text.encode()))
        if sr_dir is None:
            continue
        try:
            source = read_dicom_header(row["path"])
            if source is None:
                row.setdefault("warnings", []).append("not a DICOM file: no DICOM SR written (it has no study to join)")
                continue
            row["dicom_sr"] = str(_write_new(Path(sr_dir), stem, ".sr.dcm",
                                             sr.dicom_bytes(sr.build_sr(source, reading, name, version))))
            if row.get("heatmap"):
                png = Path(row["heatmap"]).read_bytes()
                sc = sr.build_heatmap_sc(source, png, name, version)
                row["dicom_heatmap"] = str(_write_new(Path(sr_dir), stem, ".heatmap.dcm", sr.dicom_bytes(sc)))
        except ValueError as e:  # a DecodeError, a film without its UIDs, a malformed patient attribute, ...
            row.setdefault("warnings", []).append(f"no DICOM SR written: {redact(str(e))}")
    log.info("wrote reports for %d results", sum("probability" in row for row in rows))
