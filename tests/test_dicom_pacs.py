"""A PACS study as a hospital holds one, read by ``pneumoscan pacs`` from a real Orthanc: beside the frontal film,
the raw For Processing image of an exposure and a film that cannot be decoded."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import DigitalXRayImageStorageForProcessing, generate_uid

from pneumoscan.data.decode import read_gray
from pneumoscan.interop.dicomweb import predict_study
from tests.test_interop import _wado_answer, chest_dicom, hostile_front, running_orthanc


@pytest.fixture(scope="module")
def film(data_root: Path) -> np.ndarray:
    """A real training film (224 x 224) as 12-bit values."""
    return read_gray(sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]).astype(np.uint16) * 16


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as url:
        yield url


def test_a_for_processing_image_is_not_scored_and_an_undecodable_film_keeps_its_uids(
    orthanc: str, tiny_bundle: Path, film: np.ndarray
) -> None:
    """A DX For Processing image (the detector's raw values, archived beside the film of the same exposure) was
    retrieved and scored as a second film of that exposure; a film the decoder refuses (here two frames) gave a row
    with neither its study, series nor SOP Instance UID, where every other row of the study has them."""
    study = generate_uid()
    uploads = {"film": chest_dicom(film, StudyInstanceUID=study),
               "raw": chest_dicom(4095 - film, StudyInstanceUID=study, SOPClassUID=DigitalXRayImageStorageForProcessing,
                                  PresentationIntentType="FOR PROCESSING"),
               "frames": chest_dicom(np.stack([film, film]), StudyInstanceUID=study, NumberOfFrames=2),
               # a For Presentation class whose header says FOR PROCESSING: retrieved, then refused by the reader
               "raw_by_intent": chest_dicom(4095 - film, StudyInstanceUID=study,
                                            PresentationIntentType="FOR PROCESSING")}
    sops = {}
    for name, data in uploads.items():
        assert httpx.post(f"{orthanc}/instances", content=data, timeout=30).status_code == 200
        sops[pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID] = name
    rows = {sops[r["sop_instance_uid"]]: r for r in predict_study(tiny_bundle, f"{orthanc}/dicom-web", study,
                                                                     backend="torch")}
    assert rows.keys() == {"film", "raw", "frames", "raw_by_intent"}
    assert rows["raw_by_intent"]["not_scored"].endswith("of intent FOR PROCESSING: raw detector values, before the "
                                                      "image processing that makes them a film to read; read its For "
                                                      "Presentation image")
    assert "probability" in rows["film"]
    assert rows["raw"]["not_scored"].startswith("Digital X-Ray Image Storage - For Processing: raw detector values")
    assert "probability" not in rows["raw"]
    assert rows["frames"]["error"].startswith("multi-frame DICOM (2 frames)")
    for row in rows.values():
        assert row["study_instance_uid"] == study and row["path"].endswith(f"/instances/{row['sop_instance_uid']}")


def test_a_film_retrieved_without_its_pixel_data_is_an_error_not_left_out(
    orthanc: str, tiny_bundle: Path, film: np.ndarray
) -> None:
    """A PACS that answers WADO-RS with a film's header alone (its pixel data left out, as bulk data a PACS keeps
    apart): the film, an image in the search, vanished from the results without a word, as a report would."""
    study = generate_uid()
    data = chest_dicom(film, StudyInstanceUID=study)
    assert httpx.post(f"{orthanc}/instances", content=data, timeout=30).status_code == 200
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with hostile_front(f"{orthanc}/dicom-web", wado={ds.SOPInstanceUID: _wado_answer(buf.getvalue())}) as url:
        [row] = predict_study(tiny_bundle, url, study, backend="torch")
    assert row["sop_instance_uid"] == ds.SOPInstanceUID and "probability" not in row
    assert row["error"] == ("WADO-RS could not retrieve it: its answer holds no pixel data, where the search lists an "
                            "image: not scored")
