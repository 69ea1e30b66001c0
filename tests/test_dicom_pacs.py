"""A PACS study as a hospital holds one, read by ``pneumoscan pacs`` from a real Orthanc: beside the frontal film,
the raw For Processing image of an exposure and a film that cannot be decoded."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.tag import Tag
from pydicom.uid import (DigitalMammographyXRayImageStorageForProcessing, DigitalXRayImageStorageForPresentation,
                         DigitalXRayImageStorageForProcessing, generate_uid)

from pneumoscan import cli
from pneumoscan.data.decode import read_gray
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.readers.dicom import FOR_PROCESSING
from pneumoscan.inference.predict import predict_paths
from pneumoscan.interop.dicomweb import _FIELDS, _recorded, _session, predict_study
from pneumoscan.interop.study import not_scored
from tests.builders import SCORE_TOL
from tests.test_interop import _wado_answer, chest_dicom, hostile_front, running_orthanc


@pytest.fixture(scope="module")
def film(data_root: Path) -> np.ndarray:
    """A real training film (224 x 224) as 12-bit values."""
    return read_gray(sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]).astype(np.uint16) * 16


@pytest.fixture(scope="module")
def orthanc(module_tmp: Callable[[str], Path]) -> Iterator[str]:
    with running_orthanc(module_tmp("orthanc")) as url:
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


def test_a_film_the_pacs_holds_without_file_meta_is_scored_as_predict_scores_its_file(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """Orthanc keeps a file imported without its File Meta (no preamble, no group 0002, as older modalities and
    some exporters write) as it came, and answers WADO-RS with it so: the film was an error row that said
    ``Use force=True to force reading`` (pydicom's advice to a programmer), where ``predict`` scores the same file."""
    study = generate_uid()
    ds = pydicom.dcmread(io.BytesIO(chest_dicom(film, StudyInstanceUID=study)))
    del ds.file_meta
    ds.preamble = None
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    assert httpx.post(f"{orthanc}/instances", content=bare.read_bytes(), timeout=30).status_code == 200
    [row] = predict_study(tiny_bundle, f"{orthanc}/dicom-web", study, backend="torch")
    assert "error" not in row
    assert row["sop_instance_uid"] == ds.SOPInstanceUID
    [local] = predict_paths(tiny_bundle, [bare], backend="torch")
    assert abs(row["probability"] - local["probability"]) < SCORE_TOL
    # read as leniently as a file, an application/dicom part that holds no DICOM at all is still said to be none
    junk = {ds.SOPInstanceUID: _wado_answer(b"<html><body>Session expired</body></html>" * 8)}
    with hostile_front(f"{orthanc}/dicom-web", wado=junk) as url:
        [row] = predict_study(tiny_bundle, url, study, backend="torch")
    assert row["error"] == ("WADO-RS could not retrieve it: its answer is not a DICOM instance (it names no SOP "
                            "Instance UID)")


def search_answer(data: bytes) -> dict:
    """What a PACS's QIDO-RS answer says of the DICOM file ``data``: the fields pacs asks for, as DICOM JSON."""
    fields = {f"{Tag(keyword):08X}" for keyword in _FIELDS}
    return {tag: field for tag, field in pydicom.dcmread(io.BytesIO(data)).to_json_dict().items() if tag in fields}


HEADERS = {
    "DX For Processing": dict(SOPClassUID=DigitalXRayImageStorageForProcessing),
    "mammography For Processing": dict(SOPClassUID=DigitalMammographyXRayImageStorageForProcessing),
    "DX For Presentation, intent FOR PROCESSING": dict(SOPClassUID=DigitalXRayImageStorageForPresentation,
                                                       PresentationIntentType="FOR PROCESSING"),
    "no class, intent written loosely": dict(SOPClassUID=None, PresentationIntentType="for processing "),
    "DX For Presentation": dict(SOPClassUID=DigitalXRayImageStorageForPresentation,
                                PresentationIntentType="FOR PRESENTATION"),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # the loosely written intent: as some modalities do
@pytest.mark.parametrize("case", list(HEADERS))
def test_the_search_answer_and_the_films_header_are_judged_for_processing_by_one_rule(film: np.ndarray,
                                                                                     case: str) -> None:  # fmt: skip
    """What the search answer says keeps an image For Processing from being retrieved, and what its header says
    refuses it once read: the same rule on the same fields, so that neither lets through what the other stops."""
    data, for_processing = chest_dicom(film, **HEADERS[case]), case != "DX For Presentation"
    why = not_scored(_recorded(search_answer(data)))
    assert (why is not None and why.endswith(f": {FOR_PROCESSING}")) == for_processing
    if for_processing:
        with pytest.raises(DecodeError, match=f"^an X-ray image For Processing: {FOR_PROCESSING}$"):
            read_gray(data)
    else:
        assert read_gray(data).shape == film.shape


@pytest.mark.parametrize("tag", ["00080016", "00080068"], ids=["SOPClassUID", "PresentationIntentType"])
def test_a_malformed_class_or_intent_in_the_search_answer_leaves_the_decision_to_the_films_own_header(
        film: np.ndarray, tag: str) -> None:  # fmt: skip
    """A field that is no DICOM JSON object ended `pacs` in an AttributeError traceback before any film was read."""
    answer = {**search_answer(chest_dicom(film)), tag: "FOR PROCESSING"}
    assert not_scored(_recorded(answer)) is None  # retrieved: its own header decides


@pytest.mark.parametrize(("host", "warned"), [
    ("LOCALHOST", False), ("[::1]", False), ("127.0.0.5", False),  # this machine, in a URL's spellings
    ("localhost.", True), ("localhost.hospital.test", True), ("0.0.0.0", True),  # resolved, or not this machine
])  # fmt: skip
def test_plain_http_credentials_are_warned_of_unless_the_url_names_this_machine(
        host: str, warned: bool, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """The URL's host is judged by the rule ``serve`` binds by (:func:`~pneumoscan.core.network.is_loopback`), once
    the URL has given it up: a name in capitals and an IPv6 address in brackets are this machine too."""
    caplog.set_level(logging.WARNING, logger="pneumoscan")
    _session(f"http://{host}:8042/dicom-web", "Bearer t0ken")
    assert ("over plain http" in caplog.text) is warned
    assert "t0ken" not in caplog.text


@pytest.mark.parametrize("uid", ["not-a-uid", "1.2.03", "1.2." + "3" * 70, "1..2", "1.2.3 "])
def test_a_study_uid_that_is_none_is_refused_in_pneumoscans_words_before_the_pacs_is_asked(
        uid: str, tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """dicomweb-client's refusal quoted its regex (``UID 'not-a-uid' must match regex re.compile(...)``), and took a
    leading zero for a UID: the URL names no server, so any request would have ended in "no connection"."""
    args = ["pacs", str(tiny_bundle), "--url", "http://127.0.0.1:9/dicom-web", "--study", uid,
            "--out", str(tmp_path / "r.json")]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err == (f"pneumoscan pacs: error: study_uid (--study) {uid!r} is not a valid DICOM UID (digits and dots, "
                   "at most 64 characters, no part with a leading zero, e.g. 1.2.840.113619.2.55.3): give the study's "
                   "StudyInstanceUID\n")
    assert not (tmp_path / "r.json").exists()
