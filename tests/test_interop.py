"""DICOM in, DICOM and FHIR out: scope checks, identifiers, privacy of logs, SR / Secondary Capture / FHIR results
from `predict` and from the web service."""

from __future__ import annotations

import base64
import csv
import datetime
import email
import io
import ipaddress
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
import contextlib
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from fhir.resources.R4B.observation import Observation
from PIL import Image
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ComprehensiveSRStorage, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSLossless, generate_uid

from pneumoscan import cli
from pneumoscan.core.logs import redact
from pneumoscan.data.decode import read_dicom_header, read_gray
from pneumoscan.data.layouts import discover, make_record, write_manifest
from pneumoscan.data.readers.dicom import OWN_OUTPUT
from pneumoscan.data.scope import (AGE_FROM_DATES, AGE_MALFORMED, AGE_NOT_KNOWN, AGE_UNCHECKED, BIRTH_DATE_MALFORMED,
                                   NO_TAGS, NOT_SHOWN, age_years, describe, in_scope, scope_warnings)
from pneumoscan.inference.explain import MAX_PANEL
from pneumoscan.inference.export import write_onnx_spec
from pneumoscan.inference.onnx_runtime import weights_digest
from pneumoscan.inference.predict import format_results, identity_fields, predict_paths
from pneumoscan.interop.dicomweb import (AUTH_ENV, Connection, _answer, _only_part, _post, _read_back, _recorded,
                                         _session, _stored, _withdrawn, read_authorization)
from pneumoscan.interop.fhir import CODE_SYSTEM, build_observation, observation_json
from pneumoscan.interop.reports import ObservationIndex, dicom_multipart, write_reports
from pneumoscan.interop.study import not_scored, unfiled, withdrawn_by
from pneumoscan.interop.sr import DISCLAIMER, build_heatmap_sc, build_sr, finding_mode, report_files
from pneumoscan.interop.uids import UID_ROOT_ENV, derived_uid, film_identity
from pneumoscan.models.card import ONNX_NAME, load_card, save_card
from pneumoscan.serving.app import create_app
from tests.builders import SCORE_TOL, UNCHECKED, dicom_bytes, free_port

NAME, PATIENT_ID = "Doe^Jane^Secret", "MRN-004217-X"
IN_SCOPE = {
    "Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA", "PatientAge": "003Y",
    "PatientName": NAME, "PatientID": PATIENT_ID, "PatientBirthDate": "20200101", "PatientSex": "F",
    "StudyDate": "20230315", "StudyTime": "101500", "AccessionNumber": "ACC-1", "StudyID": "7",
    "ReferringPhysicianName": "", "SeriesNumber": 1, "InstanceNumber": 1,
}  # fmt: skip


@pytest.fixture(scope="module")
def film(data_root: Path) -> np.ndarray:
    """A real training film (224 x 224) as 12-bit values."""
    return read_gray(sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]).astype(np.uint16) * 16


@pytest.fixture(autouse=True)
def _short_pacs_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pacs` waits 1 s, then 2 s, before trying a busy or silent PACS again: a test that meets one (an unreachable
    server, a store left unanswered) idled 3 s of the suite for it. What is tried, and how often, is unchanged."""
    monkeypatch.setattr("pneumoscan.interop.dicomweb.FIRST_WAIT_S", 0.01)


def chest_dicom(pixels: np.ndarray, **changes: object) -> bytes:
    """An in-scope pediatric frontal chest DX of ``pixels`` with its own study/series/instance, ``changes`` applied
    (None deletes a tag)."""
    tags = {**IN_SCOPE, "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), **changes}
    return dicom_bytes(pixels, **{k: v for k, v in tags.items() if v is not None})


def header(pixels: np.ndarray, **changes: object) -> Dataset:
    return pydicom.dcmread(io.BytesIO(chest_dicom(pixels, **changes)))


# ---------------------------------------------------------------- scope checks


def test_an_in_scope_film_has_no_warnings(film: np.ndarray) -> None:
    assert scope_warnings(header(film), 224, 224) == []


def _view_code(code: pydicom.sr.coding.Code) -> list[Dataset]:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return [item]


OUT_OF_SCOPE = {
    "lateral view": ({"ViewPosition": "LL"}, "lateral view (LL)"),
    "lateral view by code": ({"ViewPosition": None, "ViewCodeSequence": _view_code(codes.SCT.LeftLateral)},
                             "lateral view (LEFT LATERAL)"),
    "oblique view": ({"ViewPosition": "RLO"}, "view RLO is not frontal"),
    # no view recorded but the film's own directions: rows front to back (or, turned, columns), none left to right
    "lateral view by orientation": ({"ViewPosition": None, "PatientOrientation": ["A", "F"]},
                                    "lateral view (PatientOrientation A\\F)"),
    "lateral view turned, by orientation": ({"ViewPosition": None, "PatientOrientation": ["H", "P"]},
                                            "lateral view (PatientOrientation H\\P)"),
    "frontal by orientation, no view": ({"ViewPosition": None, "PatientOrientation": ["L", "F"]},
                                        "view (ViewPosition) not recorded"),
    "CT slice": ({"Modality": "CT"}, "Modality CT is not a radiograph"),
    "knee": ({"BodyPartExamined": "KNEE"}, "BodyPartExamined KNEE is not CHEST"),
    "adult": ({"PatientAge": "034Y", "PatientBirthDate": None}, "patient age 34.0 years is outside the training "
                                                                "population"),
    "six-year-old": ({"PatientAge": "006Y", "PatientBirthDate": None}, "patient age 6.0 years is outside"),
    "newborn by birth date": ({"PatientAge": None, "PatientBirthDate": "20230101", "StudyDate": "20230301"},
                              "patient age 0.2 years is outside"),
    "no age": ({"PatientAge": None, "PatientBirthDate": None}, "patient age not recorded"),
    "no modality": ({"Modality": ""}, "Modality not recorded"),  # empty: the builder always writes one
    "no body part": ({"BodyPartExamined": None}, "BodyPartExamined not recorded"),
    "no view": ({"ViewPosition": None}, "view (ViewPosition) not recorded"),
    "colour": ({"PhotometricInterpretation": "PALETTE COLOR"}, "PhotometricInterpretation PALETTE COLOR"),
    "burned-in text": ({"BurnedInAnnotation": "YES"}, "BurnedInAnnotation YES: text is burned into its pixels"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OUT_OF_SCOPE))
def test_out_of_scope_films_are_flagged(film: np.ndarray, case: str) -> None:
    changes, words = OUT_OF_SCOPE[case]
    found = scope_warnings(header(film, **changes), 224, 224)
    assert len(found) == 1 and words in found[0], found


@pytest.mark.parametrize("age, accepted", [("006M", True), ("005M", False), ("012M", True), ("005Y", True),
                                           ("104W", True), ("020D", False)])
def test_age_margin(film: np.ndarray, age: str, accepted: bool) -> None:
    found = scope_warnings(header(film, PatientAge=age, PatientBirthDate=None), 224, 224)
    assert (found == []) == accepted, found


@pytest.mark.parametrize("born, studied", [("20200615", "20230615"), ("2020.06.15", "2023.06.15")])
def test_age_from_birth_date_and_study_date(film: np.ndarray, born: str, studied: str) -> None:
    """In DICOM's form of a date and in ACR-NEMA's, which old films hold (no age was worked out from it)."""
    ds = header(film, PatientAge=None, PatientBirthDate=born, StudyDate=studied)
    assert age_years(ds) == pytest.approx(3.0, abs=0.01)
    assert scope_warnings(ds, 224, 224) == []


# PatientAge values that are no age (VR AS: three digits and a unit), each with why it is malformed
NOT_AN_AGE = "not three digits and a unit D, W, M or Y, as in 004Y"
MALFORMED_AGES = {"SECRETAGE": NOT_AN_AGE, "5Y": NOT_AN_AGE, "005X": NOT_AN_AGE, "0003Y": NOT_AN_AGE,
                  "003Y\\004Y": "more than one value"}


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # its complaint about the malformed value: expected
@pytest.mark.parametrize("age", list(MALFORMED_AGES))
def test_a_malformed_age_is_said_to_be_malformed_never_quoted_nor_not_recorded(film: np.ndarray, age: str) -> None:
    """A PatientAge that is no age was "patient age not recorded", or ignored for the birth date without a word
    (``5Y`` read as five years): it is said to be malformed, without its value (the patient's). As a missing age,
    it leaves the film in scope, reported with the warning; the age is the birth date's when the film gives one."""
    why = MALFORMED_AGES[age]
    with pydicom.config.disable_value_validation():
        alone = header(film, PatientAge=age, PatientBirthDate=None)
        dated = header(film, PatientAge=age, PatientBirthDate="20200101", StudyDate="20230315")
    assert scope_warnings(alone, 224, 224) == [AGE_MALFORMED.text(why=why, then=AGE_NOT_KNOWN)]
    assert age_years(alone) is None
    assert scope_warnings(dated, 224, 224) == [AGE_MALFORMED.text(why=why, then=AGE_FROM_DATES)]
    assert age_years(dated) == pytest.approx(3.2, abs=0.01)
    for ds in (alone, dated):
        found = scope_warnings(ds, 224, 224)
        assert in_scope(found) and not any(part in w for w in found for part in age.split("\\"))


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
@pytest.mark.parametrize(("born", "why"), [("19xx0317", "not a DA value pydicom reads"),
                                           ("2015010299", "not a DA value pydicom reads"),
                                           ("20190317\\20190318", "more than one value"),
                                           ("20240101", "later than the date the film was taken")])
def test_a_malformed_birth_date_is_said_to_be_malformed(film: np.ndarray, born: str, why: str) -> None:
    """A birth date that gives no age was "not recorded" (or, cut to its first eight characters, read as a date):
    it is named, never quoted; the age PatientAge states stands, unchecked against it."""
    with pydicom.config.disable_value_validation():
        alone = header(film, PatientAge=None, PatientBirthDate=born, StudyDate="20230315")
        stated = header(film, PatientAge="003Y", PatientBirthDate=born, StudyDate="20230315")
    assert scope_warnings(alone, 224, 224) == [BIRTH_DATE_MALFORMED.text(why=why, then=AGE_NOT_KNOWN)]
    assert scope_warnings(stated, 224, 224) == [BIRTH_DATE_MALFORMED.text(why=why, then=AGE_UNCHECKED)]
    assert age_years(alone) is None and age_years(stated) == 3.0
    assert not any(born.split("\\")[0] in w for w in scope_warnings(alone, 224, 224))


def test_tiny_images_are_flagged_whatever_their_format(film: np.ndarray) -> None:
    small = film[:100, :150]
    assert "150 x 100 pixels, smaller than 224" in describe(chest_dicom(small))["warnings"][0]
    buf = io.BytesIO()
    Image.fromarray((small >> 4).astype(np.uint8)).save(buf, "PNG")
    assert describe(buf.getvalue())["warnings"] == [NO_TAGS, "image is 150 x 100 pixels, smaller than 224 px on a "
                                                             "side: a thumbnail, not a radiograph"]


def test_a_jpeg_says_its_scope_was_not_checked(data_root: Path) -> None:
    jpeg = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]
    assert describe(jpeg) == {"warnings": [NO_TAGS]}


# ---------------------------------------------------------------- predict: warnings, identifiers, privacy


@pytest.fixture
def films(film: np.ndarray, data_root: Path, tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "films"
    folder.mkdir()
    paths = {"in_scope": folder / "a_in_scope.dcm", "adult": folder / "b_adult.dcm",
             "jpeg": folder / "c_film.jpeg"}  # fmt: skip
    paths["in_scope"].write_bytes(chest_dicom(film))
    # out of scope but still a frontal chest film by its header (no view recorded, an adult): reported
    paths["adult"].write_bytes(chest_dicom(film, ViewPosition=None, PatientAge="045Y",
                                           PatientBirthDate="19780101"))
    paths["jpeg"].write_bytes(sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0].read_bytes())
    return paths


def test_predict_rows_carry_warnings_and_uids(tiny_bundle: Path, films: dict[str, Path]) -> None:
    rows = {Path(r["path"]).name: r for r in predict_paths(tiny_bundle, [films["in_scope"].parent])}
    good, odd, jpeg = (rows[films[k].name] for k in ("in_scope", "adult", "jpeg"))
    ds = pydicom.dcmread(films["in_scope"])
    assert (good["study_instance_uid"], good["series_instance_uid"], good["sop_instance_uid"]) == (
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert good["warnings"] == [UNCHECKED]  # the tiny bundle records no appearance of its training films
    assert [w.split(" ")[0] for w in odd["warnings"]] == ["view", "patient", "image"]
    assert jpeg["warnings"] == [NO_TAGS, UNCHECKED] and "study_instance_uid" not in jpeg
    assert all(0 <= r["probability"] <= 1 for r in rows.values())  # scored, all three
    assert good["in_scope"] and odd["in_scope"] and jpeg["in_scope"]  # reported: a frontal chest film, or not known


def test_predict_rows_say_when_the_film_is_no_frontal_chest_radiograph(tiny_bundle: Path, film: np.ndarray,
                                                                      tmp_path: Path) -> None:
    """As the service's answers say it (``in_scope``): a reader of the results file need not match the warnings'
    wording to know that a lateral film's or a CT slice's label does not apply."""
    for name, changes in (("lateral", {"ViewPosition": "LL"}), ("ct", {"Modality": "CT"})):
        (tmp_path / f"{name}.dcm").write_bytes(chest_dicom(film, **changes))
    rows = predict_paths(tiny_bundle, [tmp_path])
    assert [r["in_scope"] for r in rows] == [False, False] and all("label" in r for r in rows)
    assert [r["in_scope"] for r in csv.DictReader(io.StringIO(format_results(rows, "csv")))] == ["False", "False"]


def test_cli_csv_has_a_warnings_column_and_no_patient_data_reaches_logs_or_results(
    tiny_bundle: Path, films: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("pydicom", "highdicom", "pneumoscan"):
        caplog.set_level(logging.DEBUG, logger=name)
    out = tmp_path / "r.csv"
    args = ["predict", str(tiny_bundle), str(films["in_scope"].parent), "--out", str(out), "--backend", "torch",
            "--dicom-sr", str(tmp_path / "sr"), "--fhir", str(tmp_path / "fhir"), "--heatmaps", str(tmp_path / "h")]
    assert cli.main(args) == 0
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert rows[films["adult"].name]["warnings"].count("; ") == 2  # three warnings, one cell
    assert all(rows[films[k].name]["dicom_sr"] for k in ("in_scope", "adult"))
    assert rows[films["jpeg"].name]["warnings"].startswith(NO_TAGS)
    assert rows[films["in_scope"].name]["sop_instance_uid"] == pydicom.dcmread(films["in_scope"]).SOPInstanceUID
    captured = capsys.readouterr()
    assert caplog.records, "logging was captured"  # the report writer logs: capture works
    for text in (caplog.text, captured.out, captured.err, out.read_text()):
        for secret in (NAME, "Doe", PATIENT_ID):
            assert secret not in text
    # the Observation names the patient by id (its subject), as the SR does: a receiver files it with the patient
    for path in (tmp_path / "fhir").iterdir():
        observation = json.loads(path.read_text())
        assert observation.pop("subject") == {"type": "Patient", "identifier": {"value": PATIENT_ID}}
        assert not any(secret in json.dumps(observation) for secret in (NAME, "Doe", PATIENT_ID))
    # the SR does hold the patient module: that is the report a PACS files with the patient
    assert any(str(pydicom.dcmread(p).PatientName) == NAME for p in (tmp_path / "sr").iterdir())


def test_pydicom_log_records_are_redacted(film: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pydicom")
    ds = header(film)
    with pytest.warns(UserWarning, match="Sekrit"):  # pytest resets warning filters per test; a real run ignores it
        ds.PatientBirthDate = "Sekrit"  # pydicom validates the value, warns and logs, quoting it
    assert "Invalid value for VR DA: '...'" in caplog.text and "Sekrit" not in caplog.text


def test_redaction_hides_values_that_hold_quotes_themselves() -> None:
    text = "Unable to convert '['20190317', '20190318']' to 'DA' object"  # highdicom on a two-valued birth date
    assert "2019" not in redact(text) and redact(text).startswith("Unable to convert '...'")


@pytest.mark.parametrize(("text", "redacted"), [
    ("in the model's scope (the patient's age cannot be known): Invalid value for VR PN: 'Müller^Hans'",
     "in the model's scope (the patient's age cannot be known): Invalid value for VR PN: '...'"),
    ('the patient\'s ID "MRN-004217-X" doesn\'t match', "the patient's ID '...' doesn't match"),
    ("the patient's name 'O'Brien^Pat' is PN's", "the patient's name '...' is PN's"),
    ("the file's header holds b'Doe^Jane'", "the file's header holds b'...'"),  # a bytes repr: its b is no word
], ids=["single quotes", "double quotes", "a value with an apostrophe", "a bytes value"])
def test_an_apostrophe_inside_a_word_is_no_quote_and_the_values_beside_it_are_still_redacted(
        text: str, redacted: str) -> None:  # fmt: skip
    """pneumoscan's own reasons pass through redact: "the model's ... the patient's" was cut to "the model'...'s"."""
    assert redact(text) == redacted


# A patient or study attribute a report copies, malformed: (changes, the keyword the refusal names, values that must
# never appear in an answer, a warning or a results file).
MALFORMED = {
    "two birth dates": ({"PatientBirthDate": "20190317\\20190318"}, "PatientBirthDate", ("20190317", "20190318")),
    "a birth date that is none": ({"PatientBirthDate": "19xx0317"}, "PatientBirthDate", ("19xx0317",)),
    "two names": ({"PatientName": "Roewyn^Annika\\Poelle^Beatrix"}, "PatientName", ("Roewyn", "Poelle", "Beatrix")),
    "two patient ids": ({"PatientID": "MRN-77\\MRN-88"}, "PatientID", ("MRN-77", "MRN-88")),
    "two study dates": ({"StudyDate": "20230601\\20230602"}, "StudyDate", ("20230601", "20230602")),
    "two referring physicians": ({"ReferringPhysicianName": "Quuxley^Al\\Zedmore^Bo"}, "ReferringPhysicianName",
                                 ("Quuxley", "Zedmore")),
    "a made-up SOP class": ({"SOPClassUID": "1.2.3"}, "SOPClassUID", ()),
    "two study UIDs": ({"StudyInstanceUID": "1.2\\1.3"}, "StudyInstanceUID", ()),
    "two series UIDs": ({"SeriesInstanceUID": "1.2\\1.3"}, "SeriesInstanceUID", ()),
}  # fmt: skip


def malformed_dicom(film: np.ndarray, case: str) -> bytes:
    with pydicom.config.disable_value_validation():  # the values a damaged or careless system writes
        return chest_dicom(film, **MALFORMED[case][0])


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # its complaint about the malformed value: expected
def test_predict_names_a_malformed_attribute_and_writes_the_other_reports(tiny_bundle: Path, film: np.ndarray,
                                                                          tmp_path: Path) -> None:
    folder = tmp_path / "films"
    folder.mkdir()
    for i, case in enumerate(MALFORMED):
        (folder / f"{i}.dcm").write_bytes(malformed_dicom(film, case))
    (folder / "good.dcm").write_bytes(chest_dicom(film))
    out = tmp_path / "r.csv"
    args = ["predict", str(tiny_bundle), str(folder), "--out", str(out), "--backend", "torch", "--heatmaps",
            str(tmp_path / "h"), "--dicom-sr", str(tmp_path / "sr"), "--fhir", str(tmp_path / "fhir")]
    assert cli.main(args) == 0  # every film scored: a report that cannot be made is a warning, not a failure
    rows = {Path(r["path"]).stem: r for r in csv.DictReader(out.open())}
    no_fhir = {"PatientID": "no FHIR Observation written: the source DICOM's PatientID is malformed",
               "StudyInstanceUID": "no FHIR Observation written: the film has no valid DICOM study and instance UIDs"}
    for i, (case, (_, keyword, _)) in enumerate(MALFORMED.items()):
        row = rows[str(i)]
        assert not row["dicom_sr"] and row["probability"], case
        assert f"no DICOM SR written: the source DICOM's {keyword} is malformed" in row["warnings"], case
        assert (no_fhir[keyword] in row["warnings"]) if keyword in no_fhir else row["fhir"], case
    assert rows["good"]["dicom_sr"] and rows["good"]["dicom_heatmap"]
    written = [out.read_text(), *(p.read_text() for p in (tmp_path / "fhir").iterdir())]
    for _, _, secrets in MALFORMED.values():
        assert not any(secret in text for secret in secrets for text in written)


def test_malformed_patient_values_stay_out_of_a_real_runs_stderr(tiny_bundle: Path, film: np.ndarray,
                                                                  tmp_path: Path) -> None:
    """pydicom and highdicom quote a malformed value in their warnings and logs; in a fresh process (its own
    warning filters and log handlers, as a user runs it) none of those values may reach stderr or the results."""
    secret = "Sekrit"
    with pydicom.config.disable_value_validation():  # write the malformed values a real file may hold
        # one component: highdicom warns that it is "unlikely to represent the intended person name", quoting it
        bad_name = chest_dicom(film, PatientName=secret * 10, PatientID=secret * 10, PatientAge=secret)
        bad_date = chest_dicom(film, PatientName=secret + "^Jane", PatientBirthDate=secret)
    (tmp_path / "a.dcm").write_bytes(bad_name)
    (tmp_path / "b.dcm").write_bytes(bad_date)
    out = tmp_path / "r.csv"
    run = subprocess.run(
        [sys.executable, "-m", "pneumoscan", "predict", str(tiny_bundle), str(tmp_path / "a.dcm"),
         str(tmp_path / "b.dcm"), "--out", str(out), "--backend", "onnx", "--dicom-sr", str(tmp_path / "sr"),
         "--fhir", str(tmp_path / "fhir")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert rows["a.dcm"]["dicom_sr"]
    assert "no DICOM SR written: the source DICOM's PatientBirthDate is malformed" in rows["b.dcm"]["warnings"]
    observations = [json.loads(p.read_text()) for p in (tmp_path / "fhir").iterdir()]
    ids = sorted(o.pop("subject")["identifier"]["value"] for o in observations)  # each film's patient, by design
    assert ids == sorted([secret * 10, PATIENT_ID])
    for text in (run.stdout, run.stderr, out.read_text(), *map(json.dumps, observations)):
        assert secret not in text


# ---------------------------------------------------------------- DICOM SR and Secondary Capture


def _group(sr: hd.sr.ComprehensiveSR) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    [group] = sr.content.get_image_measurement_groups()
    return group


def _text_items(item: Dataset, meaning: str) -> list[str]:
    return [i.TextValue for i in item.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def _device_uids(sr_ds: Dataset) -> list[str]:
    return [i.UID for i in sr_ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Device Observer UID"]


def check_sr(sr_ds: Dataset, source: Dataset, probability: float, label: str, bundle: Path,
             warnings: list[str]) -> None:
    """Every field of the report against the source film and the reading (``warnings``: its scope warnings)."""
    card = load_card(bundle)
    sr = hd.sr.ComprehensiveSR.from_dataset(sr_ds)
    assert sr.SOPClassUID == hd.sr.ComprehensiveSR.from_dataset(sr_ds).SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesInstanceUID != source.SeriesInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate"):
        assert sr_ds[keyword].value == source[keyword].value, keyword
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    [evidence] = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    [series] = evidence.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    group = _group(sr)
    [evaluation] = group.get_qualitative_evaluations()
    assert (evaluation.name.value, evaluation.name.scheme_designator) == ("233604007", "SCT")  # pneumonia
    present = label == card.positive
    assert evaluation.value == (codes.SCT.Present if present else codes.SCT.Absent)
    measured = {m.name.meaning: m for m in group.get_measurements()}
    assert measured.keys() == {"Probability", "Decision threshold"}
    assert measured["Probability"].value == pytest.approx(probability, abs=1e-9)
    assert measured["Decision threshold"].value == pytest.approx(card.threshold, abs=1e-9)
    assert measured["Probability"].unit == codes.UCUM.NoUnits
    version = f"sha256:{weights_digest(bundle)[:12]}"
    [container] = [i for i in sr_ds.ContentSequence if i.ValueType == "CONTAINER"]  # Imaging Measurements
    [group_item] = container.ContentSequence
    numbers = [i for i in group_item.ContentSequence if i.ValueType == "NUM"]
    for item in (group_item, *numbers):  # the group and each measurement name the algorithm
        assert _text_items(item, "Algorithm Name") == [card.model_id]
        assert _text_items(item, "Algorithm Version") == [version]
    assert _text_items(sr_ds, "Device Observer Name") == [card.model_id]  # the observer is the model
    assert _device_uids(sr_ds) == [generate_uid(entropy_srcs=[card.model_id, version])]  # as docs/dicom.md says
    # what it is, then each scope warning, then each caveat of the model, beside the finding; its series says it too,
    # for viewers that show no items
    assert _text_items(group_item, "Comment") == [DISCLAIMER, *(f"scope warning: {w}" for w in warnings),
                                                  *(f"model caveat: {c}" for c in card.caveats)]
    assert "not a diagnosis" in sr_ds.SeriesDescription
    [scheme] = sr_ds.CodingSchemeIdentificationSequence  # the private scheme of the threshold's code is declared
    assert scheme.CodingSchemeDesignator == "99PNEUMOSCAN" and scheme.CodingSchemeName
    [image] = group.source_images
    assert image.referenced_sop_instance_uid == source.SOPInstanceUID
    assert image.referenced_sop_class_uid == source.SOPClassUID


def test_predict_writes_sr_and_heatmap_sc_in_the_films_study(
    tiny_bundle: Path, films: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "r.json"
    args = ["predict", str(tiny_bundle), str(films["in_scope"].parent), "--out", str(out), "--backend", "torch",
            "--dicom-sr", str(tmp_path / "sr"), "--heatmaps", str(tmp_path / "h")]
    assert cli.main(args) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    for key in ("in_scope", "adult"):
        row, source = rows[films[key].name], pydicom.dcmread(films[key])
        check_sr(pydicom.dcmread(row["dicom_sr"]), source, row["probability"], row["label"], tiny_bundle,
                 row["warnings"])
        sc = pydicom.dcmread(row["dicom_heatmap"])
        identity = identity_fields(tiny_bundle, "torch")
        check_sc(sc, source, identity["model_id"], identity["model_version"], orientation=[])  # none recorded
        assert sc.PatientName == source.PatientName and sc.SeriesInstanceUID not in (
            source.SeriesInstanceUID, pydicom.dcmread(row["dicom_sr"]).SeriesInstanceUID)
        np.testing.assert_array_equal(sc.pixel_array, np.asarray(Image.open(row["heatmap"]).convert("RGB")))
    jpeg = rows[films["jpeg"].name]
    assert "dicom_sr" not in jpeg and "no DICOM SR written" in jpeg["warnings"][-1]


def check_sc(sc: Dataset, source: Dataset, name: str, version: str, orientation: list[str]) -> None:
    """The overlay: a Secondary Capture in the film's study, derived from the film and saying by what, with the
    film's patient orientation (``orientation``; empty when the film records none)."""
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.StudyInstanceUID == source.StudyInstanceUID
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    [film] = sc.SourceImageSequence
    assert (film.ReferencedSOPClassUID, film.ReferencedSOPInstanceUID) == (source.SOPClassUID, source.SOPInstanceUID)
    assert film.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"  # source image for image processing
    assert sc.DerivationDescription == f"Grad-CAM overlay by pneumoscan model {name} ({version})"
    assert "not for diagnosis" in sc.SeriesDescription and sc.get("BodyPartExamined") == source.get("BodyPartExamined")
    assert "PatientOrientation" in sc and list(sc.get("PatientOrientation") or []) == orientation
    assert sc.ConversionType == "WSD"  # drawn by software at a workstation, not a modality's image (DI) taken in


READING = {"probability": 0.7, "label": "PNEUMONIA", "positive": "PNEUMONIA", "threshold": 0.5, "task": "pneumonia"}


def _overlay_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 96, 3), 128, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("recorded, kept", [
    (["L", "F"], ["L", "F"]),  # PA: the patient's left on the right of the image, feet down
    (["R", "F"], ["R", "F"]),  # AP: the other way round, which a stock ("L", "F") would contradict
    (["LP", "F"], ["LP", "F"]),  # an oblique direction, which highdicom cannot write: copied as the film has it
    (None, []),  # not recorded: none is made up
    (["X", "F"], []),  # no patient direction
    (["L"], []),  # one value of two
])  # fmt: skip
def test_the_overlay_keeps_the_films_orientation_and_references_the_film(film: np.ndarray, recorded: list | None,
                                                                        kept: list[str]) -> None:
    source = header(film, PatientOrientation=recorded)
    _, overlay = report_files(source, READING, _overlay_png(), "m-1", "sha256:ab")
    sc = pydicom.dcmread(io.BytesIO(overlay))
    check_sc(sc, source, "m-1", "sha256:ab", kept)



def test_the_reports_of_a_film_read_for_its_header_leave_its_pixels_in_the_file(film: np.ndarray,
                                                                                 tmp_path: Path) -> None:
    """The overlay's copied values were compared with the film's, the pixel data among them: read from the file for
    each overlay, and, for a film removed since its header was read, an OSError (pydicom's "Deferred read --
    original file ... is missing") that ended the report run."""
    path = tmp_path / "film.dcm"
    path.write_bytes(chest_dicom(film))
    source = read_dicom_header(path)
    path.unlink()
    report, overlay = report_files(source, READING, _overlay_png(), "m-1", "sha256:ab")
    kept = list(source.get("PatientOrientation") or [])
    check_sc(pydicom.dcmread(io.BytesIO(overlay)), source, "m-1", "sha256:ab", kept)
    assert pydicom.dcmread(io.BytesIO(report)).StudyInstanceUID == source.StudyInstanceUID

def test_the_overlay_of_a_lossy_film_says_it_is_lossy(film: np.ndarray) -> None:
    """PS3.3 C.7.6.1.1.5: once 01, an image derived from it must not say 00 or nothing; a JPEG Baseline film was
    lossily compressed whether or not it says so."""
    for lossy, syntax, kept in (("01", None, "01"), ("00", None, None), (None, JPEGBaseline8Bit, "01"),
                                (None, JPEGExtended12Bit, "01"), (None, JPEGLSLossless, None)):
        source = header(film, LossyImageCompression=lossy)
        if syntax is not None:
            source.file_meta.TransferSyntaxUID = syntax
        _, overlay = report_files(source, READING, _overlay_png(), "m-1", "v")
        assert pydicom.dcmread(io.BytesIO(overlay)).get("LossyImageCompression") == kept, (lossy, syntax)


def test_the_overlay_of_a_film_with_burned_in_identity_says_so(film: np.ndarray) -> None:
    """The overlay redraws the film's pixels: a name burned into the film is in the overlay, and a de-identification
    that goes by BurnedInAnnotation (PS3.15 E.1) passed the overlay as free of it. Not known stays unsaid."""
    for said, kept in (("YES", "YES"), ("NO", "NO"), (None, None)):
        _, overlay = report_files(header(film, BurnedInAnnotation=said), READING, _overlay_png(), "m-1", "v")
        assert pydicom.dcmread(io.BytesIO(overlay)).get("BurnedInAnnotation") == kept, said


def test_the_device_observer_uid_is_the_models_own(film: np.ndarray) -> None:
    """One model (name and weights' digest) is one device in every report; other weights another."""
    first, second = (build_sr(header(film), READING, "m-1", "sha256:ab") for _ in range(2))  # two films
    retrained = build_sr(header(film), READING, "m-1", "sha256:cd")
    [uid] = _device_uids(first)
    assert _device_uids(second) == [uid] != _device_uids(retrained)
    assert pydicom.uid.UID(uid).is_valid and uid == generate_uid(entropy_srcs=["m-1", "sha256:ab"])


def test_sr_refuses_a_film_without_its_uids(tiny_bundle: Path, film: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "anon.dcm"
    path.write_bytes(chest_dicom(film, StudyInstanceUID=None))
    [row] = predict_paths(tiny_bundle, [path])
    from pneumoscan.interop.reports import write_reports

    write_reports([row], tiny_bundle, sr_dir=tmp_path / "sr")
    assert "dicom_sr" not in row and "no StudyInstanceUID: a report cannot reference it" in row["warnings"][-1]


def test_a_row_that_cannot_be_reported_gets_the_reason_and_the_others_are_written(
    tiny_bundle: Path, films: dict[str, Path], tmp_path: Path
) -> None:
    rows = predict_paths(tiny_bundle, [films["in_scope"], films["adult"]])
    failure = "etiology stage: file not found"  # what predict_paths records when the second stage cannot read it
    rows[0]["error"] = failure
    write_reports(rows, tiny_bundle, sr_dir=tmp_path / "sr", fhir_dir=tmp_path / "fhir")
    assert not {"fhir", "dicom_sr"} & rows[0].keys()
    assert rows[0]["warnings"] == [UNCHECKED, f"no FHIR Observation written: no result to report: {failure}",
                                   f"no DICOM SR written: no result to report: {failure}"]
    assert Path(rows[1]["fhir"]).is_file() and Path(rows[1]["dicom_sr"]).is_file()


def test_a_report_cut_short_leaves_no_file_behind(tiny_bundle: Path, films: dict[str, Path], tmp_path: Path) -> None:
    """A write that fails part-way (a file-size limit standing in for a full disk) ends the run with its reason and
    leaves nothing under a report's name for a PACS to import. The ONNX backend: the child imports no torch (4 s)."""
    script = ("import resource, signal, sys\n"
              "from pneumoscan import cli\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # the write fails with EFBIG, as on a full disk
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))\n"
              "sys.exit(cli.main(sys.argv[1:]))\n")
    run = subprocess.run(
        [sys.executable, "-c", script, "predict", str(tiny_bundle), str(films["in_scope"]), "--backend", "onnx",
         "--dicom-sr", str(tmp_path / "sr")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )  # fmt: skip
    assert (run.returncode == 2 and "a_in_scope.sr.dcm: file too large" in run.stderr
            and "Traceback" not in run.stderr), run.stderr
    assert list((tmp_path / "sr").iterdir()) == []


def test_reports_are_refused_for_an_etiology_model(tiny_etiology_bundle: Path, films: dict, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    args = ["predict", str(tiny_etiology_bundle), str(films["jpeg"]), "--fhir", str(tmp_path / "f")]
    assert cli.main(args) == 2
    assert "report pneumonia" in capsys.readouterr().err and not (tmp_path / "f").exists()


# ---------------------------------------------------------------- FHIR


def check_observation(obs: Observation, probability: float, label: str, bundle: Path, study_uid: str,
                      warnings: list[str]) -> None:
    card = load_card(bundle)
    assert obs.status == "preliminary" and obs.category[0].coding[0].code == "imaging"
    assert (obs.code.coding[0].system, obs.code.coding[0].code) == ("http://snomed.info/sct", "233604007")
    assert obs.bodySite.coding[0].code == codes.SCT.Chest.value  # the SR's finding site
    assert obs.valueCodeableConcept.coding[0].code == ("52101004" if label == card.positive else "272519000")
    probability_given, threshold_given = (c.valueQuantity.value for c in obs.component)
    assert [(c.code.coding[0].system, c.code.coding[0].code) for c in obs.component] == [
        (CODE_SYSTEM, "probability"), (CODE_SYSTEM, "threshold")]  # each component coded, as FHIR expects
    assert float(probability_given) == pytest.approx(probability, abs=SCORE_TOL)
    assert float(threshold_given) == pytest.approx(card.threshold, abs=1e-12)
    [device] = obs.contained
    assert device.deviceName[0].name == card.model_id
    assert device.version[0].value == f"sha256:{weights_digest(bundle)[:12]}" and obs.device.reference == "#model"
    assert obs.derivedFrom[0].identifier.value == f"urn:oid:{study_uid}"
    assert [n.text for n in obs.note] == [DISCLAIMER, *(f"scope warning: {w}" for w in warnings),
                                          *(f"model caveat: {c}" for c in card.caveats)]
    # the tiny bundle's threshold is a guess (its caveat, above): the method does not call it validated
    assert obs.method.text.endswith("read at its decision threshold") and card.caveats


def test_predict_writes_valid_fhir_observations(tiny_bundle: Path, films: dict[str, Path], tmp_path: Path) -> None:
    """An Observation of a DICOM film names its patient and has an identifier a rerun keeps (a receiver updates it
    conditionally); a JPEG, which has neither patient nor study, gets none."""
    folder = films["in_scope"].parent
    identifiers = []
    for run in ("r1", "r2"):
        out = tmp_path / f"{run}.json"
        args = ["predict", str(tiny_bundle), str(folder), "--out", str(out), "--fhir", str(tmp_path / run)]
        assert cli.main(args) == 0
        rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
        jpeg = rows.pop(films["jpeg"].name)
        assert "fhir" not in jpeg and jpeg["warnings"][-1].startswith("no FHIR Observation written: the film has no "
                                                                       "valid DICOM study and instance UIDs")
        assert len(list((tmp_path / run).iterdir())) == 2  # the two DICOM films'
        for row in rows.values():
            obs = Observation.model_validate_json(Path(row["fhir"]).read_text())  # R4B: refuses anything invalid
            check_observation(obs, row["probability"], row["label"], tiny_bundle, row["study_instance_uid"],
                              row["warnings"])
            assert (obs.subject.type, obs.subject.identifier.value) == ("Patient", PATIENT_ID)
            [identifier] = obs.identifier
            identifiers.append((row["sop_instance_uid"], identifier.system, identifier.value))
    assert len(set(identifiers)) == 2 and all(value.startswith("urn:uuid:") for _, _, value in identifiers)


def test_the_fhir_subject_carries_the_issuer_of_the_patient_id(film: np.ndarray) -> None:
    qualifiers = Dataset()
    qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType = "1.2.3.4", "ISO"
    source = header(film, IssuerOfPatientID="General Hospital", IssuerOfPatientIDQualifiersSequence=[qualifiers])
    reading = {**READING, "sop_instance_uid": source.SOPInstanceUID, "study_instance_uid": source.StudyInstanceUID}
    obs = build_observation(reading, "m", "v", "onnx", source)
    identifier = obs.subject.identifier
    assert (identifier.value, identifier.system, identifier.assigner.display) == (PATIENT_ID, "urn:oid:1.2.3.4",
                                                                                  "General Hospital")
    assert build_observation(reading, "m", "v", "onnx", header(film, PatientID=None)).subject is None


@pytest.mark.parametrize("when, effective", [
    ({"TimezoneOffsetFromUTC": "+0100"}, "2023-03-15T10:15:00+01:00"),
    ({"StudyTime": "101500.25", "TimezoneOffsetFromUTC": "-0530"}, "2023-03-15T10:15:00.250000-05:30"),
    ({}, "2023-03-15"),  # no offset: FHIR takes a time with an offset only, so the date alone
    ({"StudyTime": None, "TimezoneOffsetFromUTC": "+0100"}, "2023-03-15"),
    ({"TimezoneOffsetFromUTC": "0100"}, "2023-03-15"),  # no offset DICOM defines
    ({"TimezoneOffsetFromUTC": "+1400"}, "2023-03-15T10:15:00+14:00"),  # the ends of DICOM's range
    ({"TimezoneOffsetFromUTC": "-1200"}, "2023-03-15T10:15:00-12:00"),
    # past them, the Observation was refused (FHIR takes no +14:30) and the warning quoted the study's date and time
    ({"TimezoneOffsetFromUTC": "+1430"}, "2023-03-15"),
    ({"TimezoneOffsetFromUTC": "-1230"}, "2023-03-15"),
    ({"StudyDate": None}, None),  # not recorded: none is made up
    ({"StudyDate": "2023xx15"}, None),  # not a date
])  # fmt: skip
def test_the_observation_says_when_the_film_was_taken_and_codes_its_components_in_a_valid_uri(
    film: np.ndarray, when: dict, effective: str | None
) -> None:
    """It had no effective time (a receiver filed it at the time it was sent) and coded its components in
    'urn:pneumoscan', no valid URI for a code system."""
    with pydicom.config.disable_value_validation():
        source = header(film, **when)  # StudyDate 20230315, StudyTime 101500 unless changed
    reading = {**READING, "sop_instance_uid": source.SOPInstanceUID, "study_instance_uid": source.StudyInstanceUID}
    observation = json.loads(observation_json(reading, "m", "v", "onnx", source))  # validated with R4B
    assert observation.get("effectiveDateTime") == effective
    assert {c["code"]["coding"][0]["system"] for c in observation["component"]} == {CODE_SYSTEM}
    assert re.fullmatch(r"urn:oid:2\.25\.(0|[1-9]\d*)", CODE_SYSTEM)  # an OID made from a UUID (X.667)
    assert int(CODE_SYSTEM.rsplit(".", 1)[1]) < 2**128


def test_the_observation_has_a_narrative_of_its_finding_and_every_note(film: np.ndarray) -> None:
    """It had no narrative (R4's dom-6: a resource that is not contained SHOULD have one), so a receiver that shows
    the text alone showed nothing of the finding, its disclaimer or its warnings. The probability is as the
    component holds it: rounded, one just below the threshold would read as the threshold beside "Absent"."""
    source = header(film)
    reading = {**READING, "probability": 0.49996, "label": "NORMAL", "warnings": ["a <b> & c"],
               "sop_instance_uid": source.SOPInstanceUID, "study_instance_uid": source.StudyInstanceUID}
    observation = json.loads(observation_json(reading, "m<1>", "v&2", "onnx", source))
    assert observation["text"]["status"] == "generated"
    div = ET.fromstring(observation["text"]["div"])
    assert div.tag == "{http://www.w3.org/1999/xhtml}div"
    assert div[0].text == ("Pneumonia: Absent (preliminary), probability 0.49996 at the decision threshold 0.5, "
                           "pneumoscan model m<1> (v&2)")
    assert [item.text for item in div[1]] == [DISCLAIMER, "scope warning: a <b> & c"]
    assert [item.text for item in div[1]] == [note["text"] for note in observation["note"]]


def test_fhir_validation_is_real() -> None:
    reading = {"probability": 0.7, "label": "PNEUMONIA", "positive": "PNEUMONIA", "threshold": 0.5, "task": "pneumonia"}
    with pytest.raises(ValueError, match="no valid DICOM study and instance UIDs"):  # an Observation linked to nothing
        build_observation(reading, "m", "v")
    reading |= {"study_instance_uid": "1.2.3", "sop_instance_uid": "1.2.3.4"}
    assert build_observation(reading, "m", "v").status == "preliminary"
    with pytest.raises(ValidationError):
        Observation.model_validate({"resourceType": "Observation", "status": "final"})  # no code
    with pytest.raises(ValidationError):
        Observation.model_validate({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                    "valueQuantity": {"value": "high"}})


# ---------------------------------------------------------------- web service


@pytest.fixture(scope="module")
def client(tiny_bundle: Path):
    with TestClient(create_app(tiny_bundle)) as c:
        yield c


def post(client: TestClient, data: bytes, name: str = "film.dcm", kind: str = "application/dicom", **params: str):
    return client.post("/v1/predict", files={"file": (name, data, kind)}, params=params)


def test_api_json_has_warnings_and_uids(client: TestClient, film: np.ndarray) -> None:
    data = chest_dicom(film, ViewPosition="LL")
    ds = pydicom.dcmread(io.BytesIO(data))
    body = post(client, data).json()
    assert body["warnings"] == ["lateral view (LL): the model was trained on frontal (PA/AP) films only", UNCHECKED]
    assert (body["study_instance_uid"], body["series_instance_uid"], body["sop_instance_uid"]) == (
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def test_api_dicom_sr(client: TestClient, film: np.ndarray, tiny_bundle: Path) -> None:
    data = chest_dicom(film)
    reading = post(client, data).json()
    r = post(client, data, format="dicom-sr")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    check_sr(pydicom.dcmread(io.BytesIO(r.content)), pydicom.dcmread(io.BytesIO(data)), reading["probability"],
             reading["label"], tiny_bundle, reading["warnings"])


def test_api_refuses_a_report_under_an_invalid_uid_root(client: TestClient, film: np.ndarray,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UID_ROOT_ENV, "1.2.840.x")
    r = post(client, chest_dicom(film), format="dicom-sr")
    assert r.status_code == 422 and "is not a valid UID root: it holds characters other than digits" in r.text


def test_a_service_under_an_invalid_uid_root_does_not_start(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Started with a wrong root, the service had answered every report request with a 422, which blames the
    client for the operator's setting."""
    monkeypatch.setenv(UID_ROOT_ENV, "1.2.0840")
    with pytest.raises(ValueError, match="is not a valid UID root: its component 0840 has a leading zero"):
        create_app(tiny_bundle)


def dicom_parts(r: httpx.Response) -> list[Dataset]:
    """The DICOM objects of a multipart/related answer, in order."""
    message = email.message_from_bytes(f"Content-Type: {r.headers['content-type']}\r\n\r\n".encode() + r.content)
    return [pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))) for p in message.get_payload()]


def test_api_dicom_sr_with_heatmap_is_multipart(client: TestClient, film: np.ndarray, tiny_bundle: Path) -> None:
    data = chest_dicom(film)
    source = pydicom.dcmread(io.BytesIO(data))
    r = post(client, data, format="dicom-sr", heatmap="true")
    assert r.status_code == 200 and r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    parts = dicom_parts(r)
    assert [p.Modality for p in parts] == ["SR", "OT"]
    assert {p.StudyInstanceUID for p in parts} == {source.StudyInstanceUID}
    # at a panel's size, as predict's overlay (it had been the model's 32 px copy: too small to read in a PACS)
    height, width = read_gray(data, target=MAX_PANEL).shape
    assert width > load_card(tiny_bundle).spec.decode_target
    rows, columns, samples = parts[1].pixel_array.shape  # original | heatmap | blend, over their caption
    assert (columns, samples) == (3 * width, 3) and rows > height


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # its complaint about the malformed value: expected
@pytest.mark.parametrize("attribute, value, written", [
    ("AccessionNumber", "A" * 20, "A" * 20), ("PatientID", "P" * 70, "P" * 70),
    ("StudyDate", "2023.03.15", "20230315"), ("PatientBirthDate", "2020.01.01", "20200101"),
])  # fmt: skip
def test_values_real_films_hold_beyond_the_standard_still_get_a_report(
    client: TestClient, film: np.ndarray, attribute: str, value: str, written: str
) -> None:
    """An over-long accession number or an old-style (ACR-NEMA) date is common in real films and breaks nothing:
    the report is written, an identifier copied as the film holds it (a RIS finds the report by it), a date as the
    same date in the form DICOM writes (the dotted one makes the report an invalid object:
    tests/test_dicom_conformance.py)."""
    with pydicom.config.disable_value_validation():
        data = chest_dicom(film, **{attribute: value})
    r = post(client, data, format="dicom-sr", heatmap="true")  # the Secondary Capture copies the same attributes
    assert r.status_code == 200, r.text
    assert [str(part.get(attribute)) for part in dicom_parts(r)] == [written, written]


@pytest.mark.parametrize("case", list(MALFORMED))
def test_api_refuses_a_report_on_a_malformed_attribute_naming_it_never_quoting_it(
    client: TestClient, film: np.ndarray, case: str
) -> None:
    _, keyword, secrets = MALFORMED[case]
    data = malformed_dicom(film, case)
    assert post(client, data).status_code == 200  # the reading itself stands
    for heatmap in ("false", "true"):  # the Secondary Capture copies the same attributes
        r = post(client, data, format="dicom-sr", heatmap=heatmap)
        assert r.status_code == 422 and f"{keyword} is malformed" in r.json()["error"], r.text
        assert not any(secret in r.text for secret in secrets)


def test_the_sr_states_each_scope_warning_the_json_answer_lists(client: TestClient, film: np.ndarray,
                                                                 tiny_bundle: Path) -> None:
    # warnings that leave it a frontal chest film, which is reported with them
    data = chest_dicom(film, BodyPartExamined=None, ViewPosition=None, PatientAge="035Y",
                       PatientBirthDate="19880101")
    reading = post(client, data).json()
    assert len(reading["warnings"]) == 4 and reading["warnings"][-1] == UNCHECKED
    r = post(client, data, format="dicom-sr")
    check_sr(pydicom.dcmread(io.BytesIO(r.content)), pydicom.dcmread(io.BytesIO(data)), reading["probability"],
             reading["label"], tiny_bundle, reading["warnings"])


@pytest.mark.parametrize("tags, warning", [
    ({"Modality": "OT"}, "Modality OT is not a radiograph (CR/DX)"),
    ({"BodyPartExamined": "KNEE"}, "BodyPartExamined KNEE is not CHEST"),
    ({"ViewPosition": "LL"}, "lateral view (LL)"),
    ({"ViewPosition": None, "ViewCodeSequence": _view_code(codes.SCT.LeftLateral)}, "lateral view (LEFT LATERAL)"),
    ({"ViewPosition": "RLO"}, "view RLO is not frontal"),
    ({"ViewPosition": None, "PatientOrientation": ["P", "F"]}, "lateral view (PatientOrientation P\\F)"),
    ({"Modality": "C\nT"}, f"Modality {NOT_SHOWN} is not a radiograph (CR/DX)"),
    ({"BodyPartExamined": "KNEE\nLEFT"}, f"BodyPartExamined {NOT_SHOWN} is not CHEST"),
], ids=["a scanned form", "a knee film", "a lateral view", "a lateral view by its code", "an oblique view",
        "a lateral view by its patient orientation alone",
        "a CT slice, a line break in its Modality", "a knee film, a line break in its body part"])
def test_no_coded_finding_is_filed_for_a_film_that_is_not_a_frontal_chest_radiograph(
    client: TestClient, tiny_bundle: Path, film: np.ndarray, tmp_path: Path, tags: dict, warning: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A scanned form, a knee film or the lateral film of a two-view study is scored (the reader decides), but an SR
    or Observation saying "Pneumonia: Present, finding site Chest" on it would be filed in the record as a finding
    the model cannot give: refused, with the scope warning as the reason."""
    data = chest_dicom(film, **tags)
    assert post(client, data).status_code == 200  # the reading itself stands
    reason = f"not a frontal chest radiograph ({warning}"
    for fmt in ("dicom-sr", "fhir"):
        r = post(client, data, format=fmt)
        assert r.status_code == 422 and reason in r.json()["error"], r.text
    path = tmp_path / "form.dcm"
    path.write_bytes(data)
    rows = predict_paths(tiny_bundle, [path])
    with caplog.at_level(logging.INFO, logger="pneumoscan"):
        write_reports(rows, tiny_bundle, sr_dir=tmp_path / "sr", fhir_dir=tmp_path / "fhir")
    assert "wrote reports for 0 of 1 results" in caplog.text  # it had counted every scored row as reported
    [row] = rows
    assert "probability" in row and not {"dicom_sr", "fhir"} & row.keys()
    assert [w.split(": ")[0] for w in row["warnings"][2:]] == ["no FHIR Observation written", "no DICOM SR written"]
    assert all(reason in w for w in row["warnings"][2:]) and not list((tmp_path / "sr").iterdir())


def test_a_film_whose_age_tags_disagree_is_refused_a_report_with_the_whole_reason(
    client: TestClient, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """A child's PA chest film whose birth date makes the patient 33: its refusal, in predict's rows and the service's
    422, says which tags disagree; "the model's ... the patient's" in it had been redacted as a quoted value."""
    data = chest_dicom(film, PatientAge="003Y", PatientBirthDate="19900101")
    path = tmp_path / "age.dcm"
    path.write_bytes(data)
    rows = predict_paths(tiny_bundle, [path])
    write_reports(rows, tiny_bundle, sr_dir=tmp_path / "sr", fhir_dir=tmp_path / "fhir")
    [row] = rows
    [conflict, unchecked, *refusals] = row["warnings"]
    assert unchecked == UNCHECKED
    assert conflict.startswith("conflicting tags: PatientAge 003Y (3.0 years) but PatientBirthDate and the study date "
                               "give 33.2 years: the patient's age cannot be known"), conflict
    reason = (f"its tags contradict each other, so it cannot be known to be a frontal chest film in the model's scope "
              f"({conflict}): no coded finding is filed for it")
    assert refusals == [f"no FHIR Observation written: {reason}", f"no DICOM SR written: {reason}"]
    for fmt in ("dicom-sr", "fhir"):
        r = post(client, data, format=fmt)
        assert r.status_code == 422 and r.json()["error"] == f"cannot report this reading: {reason}", r.text


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # its complaint about the malformed value: expected
@pytest.mark.parametrize("uid", ["not a uid", "1.2." + "3" * 70, "1.2.03"])
def test_an_invalid_uid_is_left_out_with_a_warning_and_no_sr_is_filed_with_it(client: TestClient, film: np.ndarray,
                                                                              uid: str) -> None:
    with pydicom.config.disable_value_validation():
        data = chest_dicom(film, StudyInstanceUID=uid)
    warning = "StudyInstanceUID is not a valid DICOM UID: left out, so this result is not linked to its film"
    body = post(client, data).json()
    assert body["study_instance_uid"] is None and body["warnings"] == [warning, UNCHECKED]
    fhir = post(client, data, format="fhir")  # an Observation linked to no study could not be told from a resend
    assert fhir.status_code == 422 and "the film has no valid DICOM study and instance UIDs" in fhir.json()["error"]
    r = post(client, data, format="dicom-sr")
    assert r.status_code == 422 and "StudyInstanceUID is malformed" in r.json()["error"]
    for text in (json.dumps(body), fhir.text, r.text):  # in no case, in no answer
        assert uid.upper() not in text.upper()


def test_a_uid_is_reported_as_stored(film: np.ndarray) -> None:
    study = generate_uid()
    with pydicom.config.disable_value_validation():
        data = chest_dicom(film, StudyInstanceUID=study + " ")
    found = describe(data)  # padded to an even length by some writers
    assert found["study_instance_uid"] == study and found["warnings"] == []


def test_a_header_highdicom_still_refuses_is_a_422_with_a_reason(client: TestClient, film: np.ndarray) -> None:
    data = chest_dicom(film, SOPClassUID="1.2.840.10008.1.1")  # a SOP class, but no image's: highdicom has no IOD
    r = post(client, data, format="dicom-sr")
    assert r.status_code == 422 and "the DICOM report could not be built from this film's header" in r.json()["error"]


@pytest.mark.parametrize("params, words", [
    ({"format": "fhir", "heatmap": "true"}, "heatmap=true goes with format=json or dicom-sr"),
    ({"format": "fhir", "heatmap": "map"}, "heatmap=map goes with format=json"),
    ({"format": "dicom-sr", "heatmap": "map"}, "heatmap=map goes with format=json"),
    ({"format": "fhir", "image": "true"}, "image=true goes with format=json"),
    ({"format": "dicom-sr", "image": "true", "heatmap": "true"}, "image=true goes with format=json"),
    # a misspelt or foreign parameter had been dropped: no heatmap, and no word of why
    ({"heatmaps": "true"}, "unknown query parameter(s) heatmaps: /v1/predict takes heatmap, image, format"),
    ({"format": "json", "patient": "Doe^Jane"}, "unknown query parameter(s) patient"),
])  # fmt: skip
def test_api_refuses_options_the_answer_has_no_place_for(client: TestClient, film: np.ndarray, params: dict,
                                                          words: str) -> None:
    r = post(client, chest_dicom(film), **params)
    assert r.status_code == 422 and words in r.json()["error"]


def test_pneumoscan_outputs_are_refused_as_films(tiny_bundle: Path, films: dict[str, Path], tmp_path: Path,
                                                 client: TestClient) -> None:
    """A second run over the films' folder finds the first run's reports and overlays there: it must neither score
    its own Grad-CAM overlay as a chest film nor file a report on it."""
    folder = films["in_scope"].parent
    base = ["predict", str(tiny_bundle), str(folder), "--backend", "torch", "--dicom-sr", str(folder / "sr")]
    assert cli.main([*base, "--heatmaps", str(tmp_path / "h1"), "--out", str(tmp_path / "r1.json")]) == 0
    made = sorted(p.name for p in (folder / "sr").iterdir())
    assert made == ["a_in_scope.heatmap.dcm", "a_in_scope.sr.dcm", "b_adult.heatmap.dcm",
                    "b_adult.sr.dcm"]
    assert cli.main([*base, "--heatmaps", str(tmp_path / "h2"), "--out", str(tmp_path / "r2.json")]) == 1
    rows = {Path(r["path"]).name: r for r in json.loads((tmp_path / "r2.json").read_text())}
    assert {name: rows[name].get("error") for name in made} == dict.fromkeys(made, OWN_OUTPUT)
    assert all("probability" not in rows[name] for name in made)
    assert sorted(p.name for p in (folder / "sr").iterdir()) == sorted(
        [*made, "a_in_scope-2.heatmap.dcm", "a_in_scope-2.sr.dcm", "b_adult-2.heatmap.dcm",
         "b_adult-2.sr.dcm"])  # reports on the films only
    for name in made:  # the service refuses them too
        r = post(client, (folder / "sr" / name).read_bytes())
        assert r.status_code == 422 and OWN_OUTPUT in r.json()["error"]


def test_api_fhir(client: TestClient, film: np.ndarray, data_root: Path, tiny_bundle: Path) -> None:
    data = chest_dicom(film, PatientAge="040Y", PatientBirthDate="19830101")
    reading = post(client, data).json()
    r = post(client, data, format="fhir")
    assert r.status_code == 200 and r.headers["content-type"] == "application/fhir+json"
    check_observation(Observation.model_validate_json(r.text), reading["probability"], reading["label"],
                      tiny_bundle, reading["study_instance_uid"], reading["warnings"])
    # linked to its patient (the id, never the name) and identified as predict identifies it: a resend is the same
    assert NAME not in r.text and r.json()["subject"]["identifier"]["value"] == PATIENT_ID
    assert post(client, data, format="fhir").json()["identifier"] == r.json()["identifier"]
    jpeg = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    r = post(client, jpeg, "film.jpeg", "image/jpeg", format="fhir")  # no study or patient to link it to
    assert r.status_code == 422 and "format=fhir needs a DICOM upload" in r.json()["error"]


def test_api_refuses_sr_for_a_jpeg_and_unknown_formats(client: TestClient, data_root: Path) -> None:
    jpeg = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    r = post(client, jpeg, "film.jpeg", "image/jpeg", format="dicom-sr")
    assert r.status_code == 422 and "needs a DICOM upload" in r.json()["error"]
    r = post(client, jpeg, "film.jpeg", "image/jpeg", format="hl7v2")
    assert r.status_code == 422 and "format" in r.json()["error"]


def test_api_logs_no_patient_data(client: TestClient, film: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("pydicom", "highdicom", "pneumoscan", "uvicorn", "fastapi", "httpx"):
        caplog.set_level(logging.DEBUG, logger=name)
    data = chest_dicom(film)
    for fmt in ("json", "dicom-sr", "fhir"):
        assert post(client, data, format=fmt).status_code == 200
    assert caplog.records  # httpx logs each request: capture works
    assert NAME not in caplog.text and "Doe" not in caplog.text and PATIENT_ID not in caplog.text


# ---------------------------------------------------------------- PACS over DICOMweb (a real Orthanc)

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"  # Debian packages orthanc, orthanc-dicomweb (make test)
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# the tests' own requests to their servers (Orthanc's REST API, a PACS behind a proxy of the test's): httpx.post() and
# the like make a client of their own each, and with it an SSL context that loads the system's CA certificates (tens
# of ms, 80 times in this module); a connection each, as those made, none kept between tests
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


@contextmanager
def running_orthanc(folder: Path, lua: str | None = None, users: dict[str, str] | None = None) -> Iterator[str]:
    """Orthanc with its DICOMweb plugin on a free port and its DICOM port on another (AE title ORTHANC; its REST
    ``/system`` says which), its storage in ``folder``, ``lua`` as its Lua script when given (Orthanc's own hooks on
    what it receives), and with ``users`` (name: password) HTTP Basic authentication; yields the HTTP root."""
    assert Path(ORTHANC).exists() and DICOMWEB_PLUGIN.exists(), "install orthanc and orthanc-dicomweb (make test)"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "pneumoscan-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": port, "DicomServerEnabled": True, "DicomPort": free_port(), "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }  # fmt: skip
    if lua is not None:
        (folder / "hooks.lua").write_text(lua)
        config["LuaScripts"] = [str(folder / "hooks.lua")]
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("w")
    proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    login = next(iter((users or {}).items()), None)  # to ask whether it is up
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"Orthanc exited:\n{(folder / 'orthanc.log').read_text()}"
            assert time.monotonic() < deadline, "Orthanc did not start"
            try:
                if HTTP.get(f"{url}/system", timeout=2, auth=login).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)  # Orthanc starts in about 0.4 s
        yield url
    finally:
        # killed, not terminated: Orthanc takes 2 s to stop its HTTP server, and its storage is thrown away
        proc.kill()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def orthanc(module_tmp: Callable[[str], Path]) -> Iterator[str]:
    with running_orthanc(module_tmp("orthanc")) as url:
        yield url


def _held(url: str, study: str) -> set[str]:
    """The SOP Instance UIDs the PACS at ``url`` (its HTTP root) holds in ``study``, asked over QIDO-RS."""
    found = DICOMwebClient(url=f"{url}/dicom-web").search_for_instances(study_instance_uid=study)
    return {i["00080018"]["Value"][0] for i in found}


def _pacs_store(bundle: Path, url: str, study: str, out: Path, status: int = 0) -> dict:
    """``pneumoscan pacs --store --heatmaps`` on a study of one film, exiting with STATUS (1: a report not stored):
    its one row, the warning every reading of the tiny bundle carries (:data:`UNCHECKED`) checked and left out."""
    assert cli.main(["pacs", str(bundle), "--url", url, "--study", study, "--store", "--heatmaps", "--out", str(out),
                     "--backend", "torch"]) == status
    [row] = json.loads(out.read_text())
    return _past_unchecked(row)


def _past_unchecked(row: dict) -> dict:
    """``row`` with its first warning, that the tiny bundle checks no film's content (:data:`UNCHECKED`), checked
    and left out: the warnings of the PACS's answers follow it."""
    assert row["warnings"][0] == UNCHECKED, row["warnings"]
    return {**row, "warnings": row["warnings"][1:]}


def scanned_form(study: str) -> bytes:
    """A scanned paper request form as a study holds one: an RGB Secondary Capture, Modality OT, mostly white with
    dark lines (scored as a film, it came out PNEUMONIA 0.81)."""
    page = np.full((400, 300, 3), 245, np.uint8)
    page[40:360:20, 20:280] = 30
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(None, StudyInstanceUID=study, SeriesInstanceUID=generate_uid(),
                                                Modality="OT", ConversionType="DF", PatientID=PATIENT_ID)))
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = *page.shape[:2], 3, "RGB"
    ds.PlanarConfiguration, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 0, 8, 8, 7, 0
    ds.PixelData = page.tobytes()
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_pacs_reads_a_study_and_stores_its_reports(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    """The frontal film's reports are filed, once however often it runs; the scanned form and the lateral film
    beside it (no coded finding could be filed on either) are said, not scored, and get no report."""
    caplog.set_level(logging.DEBUG)
    study = generate_uid()
    uploads = [chest_dicom(film, StudyInstanceUID=study), chest_dicom(film[::-1], StudyInstanceUID=study,
                                                                         ViewPosition="LL")]
    form = scanned_form(study)
    other = chest_dicom(film)  # another study on the same server: not read
    for data in (*uploads, form, other):
        assert HTTP.post(f"{orthanc}/instances", content=data, timeout=30).status_code == 200
    out = tmp_path / "pacs.json"
    args = ["pacs", str(tiny_bundle), "--url", f"{orthanc}/dicom-web", "--study", study, "--store", "--heatmaps",
            "--out", str(out), "--backend", "torch"]  # fmt: skip
    assert cli.main(args) == 0
    rows = {r["sop_instance_uid"]: r for r in json.loads(out.read_text())}
    form_row = rows.pop(pydicom.dcmread(io.BytesIO(form)).SOPInstanceUID)
    assert form_row["not_scored"].startswith("Modality OT, Secondary Capture Image Storage: not a radiograph")
    lateral_row = rows.pop(pydicom.dcmread(io.BytesIO(uploads[1])).SOPInstanceUID)
    assert lateral_row["not_scored"].startswith("lateral view (LL): the model was trained on frontal")
    for row in (form_row, lateral_row):
        assert not {"probability", "stored", "not_stored"} & row.keys()
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(io.BytesIO(d)) for d in uploads[:1])}
    assert rows.keys() == sources.keys()
    assert all(r["path"].startswith(f"{orthanc}/dicom-web/studies/{study}/series/") for r in rows.values())
    assert [w for r in rows.values() for w in r["warnings"]] == [UNCHECKED]
    # what the PACS now holds, read back over DICOMweb
    client = DICOMwebClient(url=f"{orthanc}/dicom-web")
    found = client.search_for_instances(study_instance_uid=study)
    held = [client.retrieve_instance(study, i["0020000E"]["Value"][0], i["00080018"]["Value"][0]) for i in found]
    reports = [ds for ds in held if ds.Modality == "SR"]
    overlays = [ds for ds in held if ds.get("Manufacturer") == "pneumoscan" and ds.Modality == "OT"]
    assert len(reports) == len(overlays) == 1 and len(held) == 5
    for sr_ds in reports:
        sop = sr_ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[
            0].ReferencedSOPInstanceUID
        row = rows[sop]
        [overlay] = [ds.SOPInstanceUID for ds in overlays if ds.SourceImageSequence[0].ReferencedSOPInstanceUID == sop]
        assert row["stored"] == [sr_ds.SOPInstanceUID, overlay]  # the SR, then the overlay: both held
        check_sr(sr_ds, sources[sop], row["probability"], row["label"], tiny_bundle, row["warnings"])
    # a second run does not read the reports and overlays it stored as films, and re-sends the same objects (their
    # UIDs follow from film, model and scoring mode): the PACS still holds one report and one overlay per film
    assert cli.main([*args[:-4], "--out", str(tmp_path / "again.json"), "--backend", "torch"]) == 0
    again = [r for r in json.loads((tmp_path / "again.json").read_text()) if "probability" in r]
    assert {r["sop_instance_uid"] for r in again} == sources.keys()
    assert {uid for r in again for uid in r["stored"]} == {uid for r in rows.values() for uid in r["stored"]}
    assert _held(orthanc, study) == {ds.SOPInstanceUID for ds in held}
    # the form and the lateral film are not retrieved: the log does not count them as scored
    assert "retrieved 1 of the study's 3 instances\n" in caplog.text  # none of its own on the first run
    # again: the report and overlay are not films, and the count says what the two more instances are
    assert "retrieved 1 of the study's 5 instances (2 of them pneumoscan's own reports and overlays)" in caplog.text
    assert NAME not in caplog.text and PATIENT_ID not in caplog.text
    assert NAME not in capsys.readouterr().err


def test_each_report_series_of_a_study_has_a_number_of_its_own(
    orthanc: str, tiny_bundle: Path, tiny_multiclass_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """Report series were numbered from the film's series and instance numbers: two films of one series that record
    no InstanceNumber (anonymised films), two films 1 of series 1 and 50, and two models' reports of one film each
    gave two series one number in Orthanc. Read by two models with --store --heatmaps, the study's 16 report and
    overlay series are numbered apart, none as a film's series; and a report made of the film alone (predict of one
    film) is the same instance, numbered as the study's run numbered it: one SOP Instance UID, one content."""
    study, series = generate_uid(), generate_uid()
    uploads = [*(chest_dicom(film, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=None)
                 for _ in range(2)),
               *(chest_dicom(film, StudyInstanceUID=study, SeriesNumber=n, InstanceNumber=1) for n in (1, 50))]
    films = [(_upload(orthanc, data), data) for data in uploads]
    rows = {}
    for n, bundle in enumerate((tiny_bundle, tiny_multiclass_bundle)):
        out = tmp_path / f"pacs-{n}.json"
        assert cli.main(["pacs", str(bundle), "--url", f"{orthanc}/dicom-web", "--study", study, "--store",
                         "--heatmaps", "--out", str(out), "--backend", "torch"]) == 0
        rows[bundle] = {r["sop_instance_uid"]: r for r in json.loads(out.read_text())}
    held = DICOMwebClient(url=f"{orthanc}/dicom-web").search_for_instances(study, fields=["SeriesNumber"])
    numbers = {i["00080018"]["Value"][0]: i["00200011"]["Value"][0] for i in held}
    made = [uid for by_film in rows.values() for row in by_film.values() for uid in row["stored"]]
    assert len(made) == 16 and len({numbers[uid] for uid in made}) == 16
    assert not {numbers[uid] for uid in made} & {1, 50}
    in_study = DICOMwebClient(url=f"{orthanc}/dicom-web").search_for_series(study, fields=["SeriesNumber"])
    assert len(in_study) == 3 + 16
    for n, (ds, data) in enumerate(films):
        (path := tmp_path / f"{n}.dcm").write_bytes(data)
        alone = [{**rows[tiny_bundle][ds.SOPInstanceUID], "path": str(path)}]
        write_reports(alone, tiny_bundle, sr_dir=tmp_path / f"sr-{n}", backend="torch")
        report = pydicom.dcmread(alone[0]["dicom_sr"])
        assert report.SOPInstanceUID == rows[tiny_bundle][ds.SOPInstanceUID]["stored"][0]
        assert report.SeriesNumber == numbers[report.SOPInstanceUID]


def _as_020(made: Path, film: Dataset, bundle: Path, mode: str, series_number: int, kinds: tuple[str, str]) -> bytes:
    """``made`` (a report or overlay of ``film`` by ``bundle``) as pneumoscan 0.2.0 made it for a reading scored in
    ``mode``: in series ``series_number`` (9901 a report, 9902 an overlay), its series and SOP Instance UIDs derived
    from the film, the model and the mode with ``kinds`` alone ("sr-series" and "sr", or "sc-series" and "sc")."""
    ds = pydicom.dcmread(made)
    identity = film_identity(film.StudyInstanceUID, film.SeriesInstanceUID, film.SOPInstanceUID, film)
    model = identity_fields(bundle, "torch")
    series, sop = (derived_uid(identity, model["model_id"], model["model_version"], mode, kind) for kind in kinds)
    ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.file_meta.MediaStorageSOPInstanceUID = series, sop, sop
    ds.SeriesNumber = series_number
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _numbered_9901(report: Path, film: Dataset, reading: dict, bundle: Path) -> bytes:
    """``report`` (an SR of ``reading`` on ``film`` by ``bundle``, scored with torch) as a report numbered 9901 is."""
    return _as_020(report, film, bundle, finding_mode("torch", reading), 9901, ("sr-series", "sr"))


def test_a_report_numbered_9901_is_replaced_by_one_of_other_uids_that_names_it(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """A report held in series 9901 has UIDs derived as its film's reading's are: one numbered otherwise under those
    UIDs is one SOP Instance UID with two contents, and Orthanc keeps the first copy (AlreadyStored), so the PACS
    held 9901 where predict's file of the same instance said another number. The report numbered by its UID is
    another instance, of another series, which names the one in 9901 as its predecessor, in predict's folder and in
    the PACS, which holds both."""
    study = generate_uid()
    (path := tmp_path / "film.dcm").write_bytes(data := chest_dicom(film, StudyInstanceUID=study, InstanceNumber=2))
    source = _upload(orthanc, data)
    [row] = predict_paths(tiny_bundle, [path])
    write_reports([first := dict(row)], tiny_bundle, sr_dir=tmp_path / "made", backend="torch")
    reading = {**row, "positive": load_card(tiny_bundle).positive}
    old = _numbered_9901(Path(first["dicom_sr"]), source, reading, tiny_bundle)
    (folder := tmp_path / "sr").mkdir()
    (folder / "film.sr.dcm").write_bytes(old)
    write_reports([again := dict(row)], tiny_bundle, sr_dir=folder, backend="torch")
    held, new = pydicom.dcmread(io.BytesIO(old)), pydicom.dcmread(again["dicom_sr"])
    assert (new.SOPInstanceUID, new.SeriesInstanceUID) != (held.SOPInstanceUID, held.SeriesInstanceUID)
    assert new.SOPInstanceUID == pydicom.dcmread(first["dicom_sr"]).SOPInstanceUID and new.SeriesNumber != 9901
    [named] = new.PredecessorDocumentsSequence
    assert named.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == held.SOPInstanceUID
    assert HTTP.post(f"{orthanc}/instances", content=old, timeout=30).status_code == 200
    out = tmp_path / "pacs.json"
    assert cli.main(["pacs", str(tiny_bundle), "--url", f"{orthanc}/dicom-web", "--study", study, "--store",
                     "--out", str(out), "--backend", "torch"]) == 0
    [stored] = [r["stored"] for r in json.loads(out.read_text()) if "probability" in r]
    assert stored == [new.SOPInstanceUID]
    client = DICOMwebClient(url=f"{orthanc}/dicom-web")
    reports = {i["00080018"]["Value"][0]: i for i in client.search_for_instances(study, fields=["SeriesNumber"])
               if i["00080016"]["Value"][0] == ComprehensiveSRStorage}
    assert {uid: i["00200011"]["Value"][0] for uid, i in reports.items()} == {held.SOPInstanceUID: 9901,
                                                                            new.SOPInstanceUID: new.SeriesNumber}
    filed = client.retrieve_instance(study, new.SeriesInstanceUID, new.SOPInstanceUID)
    [named] = filed.PredecessorDocumentsSequence
    assert named.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == held.SOPInstanceUID


def _numbered_9902(overlay: Path, film: Dataset, bundle: Path, mode: str) -> bytes:
    """``overlay`` (an overlay of ``film`` by ``bundle``) as pneumoscan 0.2.0 made the overlay of its reading scored
    in ``mode``, in series 9902."""
    return _as_020(overlay, film, bundle, mode, 9902, ("sc-series", "sc"))


def test_an_overlay_numbered_9902_of_the_same_reading_is_replaced_in_predicts_folder(
    tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """A folder that 0.2.0's `predict --dicom-sr --heatmaps` filled holds the film's overlay in series 9902: the
    overlay numbered by its UID is another instance, and left beside it the folder held two images of one reading
    (the report has its predecessor link; a Secondary Capture has none). The new overlay replaces it; the 9902
    overlay of another reading (another scoring mode) is left."""
    (path := tmp_path / "film.dcm").write_bytes(chest_dicom(film, InstanceNumber=2))
    source = pydicom.dcmread(path)
    [row] = predict_paths(tiny_bundle, [path], heatmap_dir=tmp_path / "h")
    write_reports([first := dict(row)], tiny_bundle, sr_dir=tmp_path / "made", backend="torch")
    (folder := tmp_path / "sr").mkdir()
    (folder / "film.heatmap.dcm").write_bytes(_numbered_9902(Path(first["dicom_heatmap"]), source, tiny_bundle,
                                                             "torch"))
    (folder / "other.heatmap.dcm").write_bytes(other := _numbered_9902(Path(first["dicom_heatmap"]), source,
                                                                       tiny_bundle, "torch+tta"))
    write_reports([again := dict(row)], tiny_bundle, sr_dir=folder, backend="torch")
    left = {p.name: pydicom.dcmread(p) for p in folder.glob("*.heatmap.dcm")}
    new = pydicom.dcmread(again["dicom_heatmap"])
    assert new.SOPInstanceUID == pydicom.dcmread(first["dicom_heatmap"]).SOPInstanceUID and new.SeriesNumber != 9902
    kept = pydicom.dcmread(io.BytesIO(other)).SOPInstanceUID
    assert {name: ds.SOPInstanceUID for name, ds in left.items()} == {
        Path(again["dicom_heatmap"]).name: new.SOPInstanceUID, "other.heatmap.dcm": kept}


def test_an_observation_of_the_same_identifier_in_predicts_folder_is_replaced(
    tiny_bundle: Path, film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """0.2.0's `predict --fhir` wrote the film's Observation under the identifier this version gives the same reading:
    the new one was written beside it as film-2.fhir.json, which sorts first, so a script sending the folder's files
    in order left 0.2.0's in force on a server updating by identifier. It replaces that file, and a rerun its own;
    another film's Observation, and a file that is none, are left."""
    (path := tmp_path / "film.dcm").write_bytes(chest_dicom(film))
    [row] = predict_paths(tiny_bundle, [path])
    write_reports([made := dict(row)], tiny_bundle, fhir_dir=tmp_path / "made", backend="torch")
    new = json.loads(Path(made["fhir"]).read_text())
    old = {**new, "method": {"text": new["method"]["text"].replace("decision", "validated")}}  # as 0.2.0 wrote it
    del old["text"]  # 0.2.0's had no narrative
    another = "urn:uuid:0b8d0e7c-8a5e-5b8e-9d4f-1c2a3b4c5d6e"  # another film's reading
    other = {**old, "identifier": [{"system": "urn:ietf:rfc:3986", "value": another}]}
    (folder := tmp_path / "fhir").mkdir()
    for name, body in (("film", old), ("other", other)):
        (folder / f"{name}.fhir.json").write_text(json.dumps(body))
    (folder / "notes.fhir.json").write_text("not an Observation")
    with caplog.at_level("INFO", logger="pneumoscan.interop.reports"):
        for _ in range(2):
            write_reports([again := dict(row)], tiny_bundle, fhir_dir=folder, backend="torch")
            assert again["fhir"] == str(folder / "film.fhir.json")
    assert sorted(p.name for p in folder.iterdir()) == ["film.fhir.json", "notes.fhir.json", "other.fhir.json"]
    written = json.loads((folder / "film.fhir.json").read_text())
    assert written["identifier"] == old["identifier"] and written["method"] == new["method"] and "text" in written
    assert json.loads((folder / "other.fhir.json").read_text()) == other
    assert sum("replaces the one of the same identifier" in r.getMessage() for r in caplog.records) == 2


def _observation(n: int, method: str = "first") -> str:
    """An Observation of reading ``n`` as its file holds it: what the index goes by is its first identifier."""
    return json.dumps({"resourceType": "Observation", "method": {"text": method}, "identifier": [
        {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:0b8d0e7c-8a5e-5b8e-9d4f-1c2a3b4c5d{n:02d}"}]})


def test_the_observation_index_a_listener_keeps_holds_when_another_process_changes_the_folder(tmp_path: Path) -> None:
    """The index is read once; another process then deletes a file it names (a script that sent it on), puts
    another reading's Observation under a name it gives a reading, and writes a reading's Observation at the name the
    next one takes. Each write still goes through: the deleted one's reading is written anew, the other reading's
    file is left and the new one goes beside it, and the file written since is replaced, not doubled."""
    folder = tmp_path / "fhir"
    index = ObservationIndex(folder)
    for n, stem in enumerate(("gone", "taken")):
        index.write(stem, _observation(n))
    (folder / "gone.fhir.json").unlink()
    (folder / "taken.fhir.json").write_text(other := _observation(7))
    (folder / "since.fhir.json").write_text(_observation(2))
    assert index.write("gone", _observation(0, "again")) == folder / "gone.fhir.json"
    assert index.write("taken", _observation(1, "again")) == folder / "taken-2.fhir.json"
    assert index.write("since", _observation(2, "again")) == folder / "since.fhir.json"
    assert sorted(p.name for p in folder.iterdir()) == ["gone.fhir.json", "since.fhir.json", "taken-2.fhir.json",
                                                       "taken.fhir.json"]
    assert (folder / "taken.fhir.json").read_text() == other
    assert all(json.loads(p.read_text())["method"]["text"] == "again" for p in folder.glob("[gs]*"))
    # a reading written again replaces its own file, which the index names, whatever stem it is given
    assert index.write("renamed", _observation(1, "third")) == folder / "taken-2.fhir.json"


def test_an_observation_another_process_writes_under_another_name_after_the_index_is_read_is_replaced(
    tmp_path: Path,
) -> None:
    """A listener's index is read when it starts; `pacs --fhir` beside it (or a second listener) then writes an
    Observation of a reading the listener writes again, under another name, and a script sends one the index named
    on (deleting it): the listener's write replaces the other process's file (one file of the identifier, not two),
    and the reading whose file went is written anew."""
    folder = tmp_path / "fhir"
    index = ObservationIndex(folder)
    index.write("sent-on", _observation(0))
    (folder / "by-pacs.fhir.json").write_text(_observation(1, "pacs"))
    (folder / "sent-on.fhir.json").unlink()
    assert index.write("1.2.3", _observation(1, "listen")) == folder / "by-pacs.fhir.json"
    assert index.write("4.5.6", _observation(0, "listen")) == folder / "4.5.6.fhir.json"
    assert sorted(p.name for p in folder.iterdir()) == ["4.5.6.fhir.json", "by-pacs.fhir.json"]
    assert all(json.loads(p.read_text())["method"]["text"] == "listen" for p in folder.iterdir())


def test_an_observation_seen_half_written_is_read_again_once_whole(tmp_path: Path) -> None:
    """A file another tool copies into the folder in place, seen half-written (no JSON yet) when the index lists
    the folder, is read again at the next listing: once whole, holding an Observation of a reading the listener
    writes again, the write replaces it rather than putting a second file of that identifier beside it. A file that
    is whole JSON but no Observation is read once."""
    folder = tmp_path / "fhir"
    folder.mkdir()
    whole = _observation(3, "copied")
    (copied := folder / "copied.fhir.json").write_text(whole[: len(whole) // 2])
    (folder / "bundle.fhir.json").write_text(json.dumps({"resourceType": "Bundle"}))
    index = ObservationIndex(folder)
    index.write("other", _observation(4))  # a listing with the copy still half-written
    copied.write_text(whole)
    assert index.write("1.2.3", _observation(3, "listen")) == copied
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.fhir.json", "copied.fhir.json", "other.fhir.json"]
    assert json.loads(copied.read_text())["method"]["text"] == "listen"
    assert index._unread == set()


def test_an_overlay_numbered_9902_a_study_holds_is_named_for_deletion(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """`pacs --store` sends objects and deletes none, so the study keeps 0.2.0's overlay of the reading in series
    9902 beside the new one: the film's row says so, naming the instance to delete in the PACS (it said nothing)."""
    study = generate_uid()
    (path := tmp_path / "film.dcm").write_bytes(data := chest_dicom(film, StudyInstanceUID=study))
    source = _upload(orthanc, data)
    [row] = predict_paths(tiny_bundle, [path], heatmap_dir=tmp_path / "h")
    write_reports([made := dict(row)], tiny_bundle, sr_dir=tmp_path / "made", backend="torch")
    old = _upload(orthanc, _numbered_9902(Path(made["dicom_heatmap"]), source, tiny_bundle, "torch"))
    stored = _pacs_store(tiny_bundle, f"{orthanc}/dicom-web", study, tmp_path / "pacs.json")
    [note] = [w for w in stored["warnings"] if "9902" in w]
    assert old.SOPInstanceUID in note and "delete it in the PACS" in note
    assert old.SOPInstanceUID in _held(orthanc, study)  # nothing deleted there


def test_pacs_writes_a_fhir_observation_of_each_film_it_scores(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """`pacs --fhir DIR` writes the Observation `predict --fhir` writes of the same film (the FHIR result had needed
    the study's films fetched by other means first); the lateral film, not scored, gets none."""
    study = generate_uid()
    (tmp_path / "film.dcm").write_bytes(data := chest_dicom(film, StudyInstanceUID=study))
    frontal = _upload(orthanc, data)
    _upload(orthanc, chest_dicom(film[::-1], StudyInstanceUID=study, ViewPosition="LL"))
    out, fhir_dir = tmp_path / "pacs.json", tmp_path / "fhir"
    assert cli.main(["pacs", str(tiny_bundle), "--url", f"{orthanc}/dicom-web", "--study", study, "--fhir",
                     str(fhir_dir), "--out", str(out), "--backend", "torch"]) == 0
    [row] = [r for r in json.loads(out.read_text()) if "probability" in r]
    assert row["sop_instance_uid"] == frontal.SOPInstanceUID
    assert [p.name for p in fhir_dir.iterdir()] == [f"{frontal.SOPInstanceUID}.fhir.json"]
    observation = json.loads(Path(row["fhir"]).read_text())
    assert Path(row["fhir"]).parent == fhir_dir
    assert cli.main(["predict", str(tiny_bundle), str(tmp_path / "film.dcm"), "--fhir", str(tmp_path / "by-predict"),
                     "--out", str(tmp_path / "predict.csv"), "--backend", "torch"]) == 0
    [by_predict] = (json.loads(p.read_text()) for p in (tmp_path / "by-predict").iterdir())
    assert observation["identifier"] == by_predict["identifier"]
    assert observation["derivedFrom"] == by_predict["derivedFrom"]
    assert observation["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{study}"


def test_pacs_names_a_model_card_md_that_is_not_its_cards_text(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 0.2.0 bundle's MODEL_CARD.md keeps 0.2.0's text: `pacs` names it once the bundle is read, as predict and
    serve do (test_model_card), with the command that rewrites it; it said nothing of it."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    (bundle / "MODEL_CARD.md").write_text("# A model card as pneumoscan 0.2.0 wrote it\n")
    study = generate_uid()
    _upload(orthanc, chest_dicom(film, StudyInstanceUID=study))
    with caplog.at_level(logging.WARNING):
        assert cli.main(["pacs", str(bundle), "--url", f"{orthanc}/dicom-web", "--study", study, "--out",
                         str(tmp_path / "pacs.json"), "--backend", "torch"]) == 0
    named = [m for m in caplog.messages if f"{bundle / 'MODEL_CARD.md'} is not the text" in m]
    assert len(named) == 1 and f"pneumoscan card {bundle} --write" in named[0], caplog.messages


def test_pacs_searches_ask_for_dicom_json_alone(tiny_bundle: Path, film: np.ndarray, tmp_path: Path) -> None:
    """dicomweb-client asked for `application/dicom+json, application/json`, and Orthanc's DICOMweb plugin logged an
    error for each search (`Unsupported return MIME type: ...`): a log of the PACS's errors filled with pneumoscan's.
    A run by accession number makes each search `pacs` makes (the accession's study, the study's instances, its
    instance count), and Orthanc's log holds no error."""
    accession = f"A{generate_uid()[-14:]}"
    with running_orthanc(tmp_path / "orthanc") as root:
        _upload(root, chest_dicom(film, StudyInstanceUID=generate_uid(), AccessionNumber=accession))
        assert cli.main(["pacs", str(tiny_bundle), "--url", f"{root}/dicom-web", "--accession", accession,
                         "--backend", "torch", "--out", str(tmp_path / "pacs.json")]) == 0
    [row] = json.loads((tmp_path / "pacs.json").read_text())
    assert "probability" in row
    errors = [line for line in (tmp_path / "orthanc" / "orthanc.log").read_text().splitlines() if line.startswith("E")]
    assert errors == []


def test_pacs_finds_the_study_of_an_accession_number(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An order (HL7, the RIS) names a study by its accession number: `pacs --accession` reads the one study that
    carries it, and refuses none or several (two sites' numbers may meet on one PACS) without quoting it."""
    accession = f"A{generate_uid()[-14:]}"
    study = generate_uid()
    _upload(orthanc, chest_dicom(film, StudyInstanceUID=study, AccessionNumber=accession))
    base = ["pacs", str(tiny_bundle), "--url", f"{orthanc}/dicom-web", "--backend", "torch"]
    out = tmp_path / "pacs.json"
    assert cli.main([*base, "--accession", accession, "--out", str(out)]) == 0
    [row] = json.loads(out.read_text())
    assert row["study_instance_uid"] == study and "probability" in row
    assert cli.main([*base, "--accession", f"{accession}X"]) == 2
    assert capsys.readouterr().err.endswith("no study on the PACS carries the accession number given\n")
    other = generate_uid()
    _upload(orthanc, chest_dicom(film, StudyInstanceUID=other, AccessionNumber=accession))
    assert cli.main([*base, "--accession", accession]) == 2
    assert capsys.readouterr().err.endswith(
        f"2 studies on the PACS carry the accession number given ({', '.join(sorted([study, other]))}): give the "
        "one to read with study_uid (--study)\n")
    assert cli.main([*base, "--accession", f"{accession[:4]}*"]) == 2  # a wildcard would match others' studies
    assert accession not in capsys.readouterr().err
    assert cli.main([*base, "--accession", ""]) == 2  # "$ACCESSION" unset: QIDO-RS would match every study
    assert "pneumoscan pacs: error: accession (--accession) is blank" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*base, "--accession", accession, "--study", study])


def test_a_report_filed_at_a_new_threshold_names_the_one_the_pacs_holds(
    orthanc: str, tiny_bundle: Path, tiny_dataset: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """pacs --store after `pneumoscan threshold` files another report of the film (it may say Absent where the first
    said Present): it names the report the study holds from the earlier threshold as its predecessor."""
    study = generate_uid()
    assert HTTP.post(f"{orthanc}/instances", content=chest_dicom(film, StudyInstanceUID=study),
                      timeout=30).status_code == 200
    site = tmp_path / "site.csv"
    write_manifest([make_record(r.path, r.label) for r in discover(tiny_dataset).split("test")], site)
    retuned = tmp_path / "retuned"
    assert cli.main(["threshold", str(tiny_bundle), str(site), "--youden", "--out", str(retuned)]) == 0
    stored = []
    for bundle in (tiny_bundle, retuned):
        out = tmp_path / f"{bundle.name}.json"
        assert cli.main(["pacs", str(bundle), "--url", f"{orthanc}/dicom-web", "--study", study, "--store",
                         "--out", str(out), "--backend", "torch"]) == 0
        [row] = [r for r in json.loads(out.read_text()) if "probability" in r]
        stored.append(row["stored"][0])
    client = DICOMwebClient(url=f"{orthanc}/dicom-web")
    reports = {i["00080018"]["Value"][0]: i["0020000E"]["Value"][0] for i in client.search_for_instances(study)
               if i["00080016"]["Value"][0] == ComprehensiveSRStorage}
    assert reports.keys() == set(stored) and stored[0] != stored[1]
    earlier, now = (client.retrieve_instance(study, reports[uid], uid) for uid in stored)
    assert "PredecessorDocumentsSequence" not in earlier
    [held] = now.PredecessorDocumentsSequence
    [series] = held.ReferencedSeriesSequence
    [report] = series.ReferencedSOPSequence
    assert (held.StudyInstanceUID, series.SeriesInstanceUID, report.ReferencedSOPInstanceUID,
            report.ReferencedSOPClassUID) == (study, earlier.SeriesInstanceUID, stored[0], ComprehensiveSRStorage)


def _stored_then_resent(orthanc: str, bundle: Path, tmp_path: Path, film: np.ndarray, resent: np.ndarray,
                        **changed: str) -> tuple[str, str, dict, dict]:
    """A new study's film sent to Orthanc and read with ``pacs --store``, then replaced under the same UIDs by
    ``resent`` with the ``changed`` attributes and read again, a run expected to fail: (study, DICOMweb URL, the first
    run's row, the second's)."""
    study = generate_uid()
    uids = {"StudyInstanceUID": study, "SeriesInstanceUID": generate_uid(), "SOPInstanceUID": generate_uid()}
    posted = HTTP.post(f"{orthanc}/instances", content=chest_dicom(film, **uids), timeout=30)
    url = f"{orthanc}/dicom-web"
    first = _pacs_store(bundle, url, study, tmp_path / "first.json")
    assert HTTP.delete(f"{orthanc}/instances/{posted.json()['ID']}", timeout=30).status_code == 200
    assert HTTP.post(f"{orthanc}/instances", content=chest_dicom(resent, **uids, **changed),
                      timeout=30).status_code == 200
    return study, url, first, _pacs_store(bundle, url, study, tmp_path / "again.json", status=1)

def test_a_rerun_after_the_film_changed_under_its_uids_is_not_stored_when_the_pacs_keeps_the_earlier_report(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """The film replaced under the same UIDs (a corrected image re-sent) reads otherwise, and its report's UIDs
    follow from the film's UIDs: Orthanc keeps the first copy of an instance and answers "stored". Read back, the
    report and overlay it holds are the earlier ones: the row says not stored, and the run fails. An unchanged film's
    rerun (the test above) reads back what it sent and is stored."""
    study, url, first, again = _stored_then_resent(orthanc, tiny_bundle, tmp_path, film, film[::-1])
    assert again["probability"] != first["probability"]
    assert again["stored"] == [] and again["not_stored"] == first["stored"]
    assert [w.split(":")[0] for w in again["warnings"]] == [
        f"the PACS already held a {what} {uid}, made from this film before it changed under the same UIDs, and kept it "
        "(it keeps the first copy of an instance)"
        for what, uid in zip(("DICOM SR", "Grad-CAM Secondary Capture"), first["stored"])]
    client = DICOMwebClient(url=url)
    [report] = [i for i in client.search_for_instances(study) if i["00080016"]["Value"][0] == ComprehensiveSRStorage]
    held = client.retrieve_instance(study, report["0020000E"]["Value"][0], report["00080018"]["Value"][0])
    assert held.SOPInstanceUID == first["stored"][0]
    measured = {m.name.meaning: m.value for m in _group(hd.sr.ComprehensiveSR.from_dataset(held)).get_measurements()}
    assert measured["Probability"] == pytest.approx(first["probability"], abs=1e-9)  # the earlier reading


def test_a_rerun_after_the_patients_details_were_corrected_is_not_stored_when_the_pacs_keeps_the_earlier_report(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """The patient's name and birth date corrected, the film's pixels, UIDs and patient id unchanged (the film re-sent
    with its details corrected): the reports' UIDs and content are the same, so the read-back found what it sent and
    the row said stored, exit 0, while Orthanc, keeping the first copy of an instance, held a report and an overlay
    naming the patient as before. Not stored, the attributes that differ named (never their values), and the run
    fails; with the stale copies deleted in the PACS, as the warning says, a rerun files them as the film now is."""
    corrected = {"PatientName": "Corrected^Jane", "PatientBirthDate": "20200202"}
    study, url, first, again = _stored_then_resent(orthanc, tiny_bundle, tmp_path, film, film, **corrected)
    assert again["probability"] == pytest.approx(first["probability"], abs=1e-9)
    assert again["stored"] == [] and again["not_stored"] == first["stored"]
    assert [w.split(" changed (")[0] for w in again["warnings"]] == [
        f"the PACS already held this {what} {uid}, made before the film's PatientName, PatientBirthDate"
        for what, uid in zip(("DICOM SR", "Grad-CAM Secondary Capture"), first["stored"])]
    assert not any(value in json.dumps(again) for value in ("Corrected", "Jane", "20200202", "20200101"))
    for uid in first["stored"]:
        [found] = HTTP.post(f"{orthanc}/tools/lookup", content=uid, timeout=30).json()
        assert HTTP.delete(f"{orthanc}/instances/{found['ID']}", timeout=30).status_code == 200
    assert _pacs_store(tiny_bundle, url, study, tmp_path / "fixed.json")["stored"] == first["stored"]
    client = DICOMwebClient(url=url)
    held = [client.retrieve_instance(study, i["0020000E"]["Value"][0], i["00080018"]["Value"][0])
            for i in client.search_for_instances(study)]
    assert {(str(ds.PatientName), ds.PatientBirthDate) for ds in held} == {("Corrected^Jane", "20200202")}
    assert len(held) == 3  # the film, its report and its overlay


def test_a_report_the_study_held_before_that_cannot_be_read_back_is_not_stored(film: np.ndarray) -> None:
    """Which of two copies a PACS holds is not known when the read-back gets no answer: not stored, said why. One
    whose UID the study did not hold before is not read back."""
    source = pydicom.dcmread(io.BytesIO(chest_dicom(film)))
    reading = {"probability": 0.7, "label": "PNEUMONIA", "threshold": 0.5, "positive": "PNEUMONIA",
               "task": "pneumonia", "warnings": []}
    report = pydicom.dcmread(io.BytesIO(report_files(source, reading, None, "m", "v")[0]))
    uid = str(report.SOPInstanceUID)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: every request fails
    for held, stored in (({"1.2.3"}, [uid]), ({uid}, [])):
        row = {"stored": [uid]}
        _read_back(_session(closed, None)[1], closed, source.StudyInstanceUID, {uid: ("DICOM SR", report)}, held, row)
        assert row["stored"] == stored
    assert row["not_stored"] == [uid] and "could not be read back (ConnectionError)" in row["warnings"][0]


def key_object_selection(title: Code, films: list[Dataset]) -> bytes:
    """A Key Object Selection document of the films' study, titled ``title``, listing ``films``: an IHE IOCM
    rejection note when the title is one."""
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=films, content=hd.ko.KeyObjectSelection(title, films), series_instance_uid=generate_uid(),
        series_number=90, sop_instance_uid=generate_uid(), instance_number=1)
    buf = io.BytesIO()
    note.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_film_a_rejection_note_withdraws_is_not_scored_nor_reported(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """The study holds a film acquired under the wrong patient and the technologist's rejection note for it (IHE
    IOCM: Orthanc keeps both): that film is said withdrawn, not scored, and no report is filed on it; a key object
    selection of another title (Of Interest) withdraws nothing."""
    study = generate_uid()
    kept, wrong = (chest_dicom(pixels, StudyInstanceUID=study) for pixels in (film, film[::-1]))
    headers = [pydicom.dcmread(io.BytesIO(data)) for data in (kept, wrong)]
    notes = [key_object_selection(codes.DCM.RejectedForPatientSafetyReasons, headers[1:]),
             key_object_selection(codes.DCM.OfInterest, headers[:1])]
    for data in (kept, wrong, *notes):
        assert HTTP.post(f"{orthanc}/instances", content=data, timeout=30).status_code == 200
    out = tmp_path / "pacs.json"
    assert cli.main(["pacs", str(tiny_bundle), "--url", f"{orthanc}/dicom-web", "--study", study, "--store",
                     "--out", str(out), "--backend", "torch"]) == 0
    rows = {r["sop_instance_uid"]: r for r in json.loads(out.read_text())}
    assert rows.keys() == {h.SOPInstanceUID for h in headers}
    scored, withdrawn = (rows[h.SOPInstanceUID] for h in headers)
    assert len(scored["stored"]) == 1
    note = pydicom.dcmread(io.BytesIO(notes[0])).SOPInstanceUID
    assert withdrawn["not_scored"] == (f"withdrawn by the study's rejection note {note} "
                                       "(113037: Rejected for Patient Safety Reasons)")
    assert not {"probability", "stored"} & withdrawn.keys()
    reports = [i for i in DICOMwebClient(url=f"{orthanc}/dicom-web").search_for_instances(study)
               if i["00080016"]["Value"][0] == ComprehensiveSRStorage]
    assert [i["00080018"]["Value"][0] for i in reports] == scored["stored"]


def test_a_key_object_selection_is_true_only_when_it_withdraws_a_film() -> None:
    """withdrawn_by's answer reads as whether the note withdraws a film: a note of another title (Of Interest), or a
    rejection note listing no film, is false (a tuple of its films and purge flag was true for each)."""
    film = pydicom.dcmread(io.BytesIO(chest_dicom(np.zeros((8, 8), np.uint8))))
    rejection, of_interest = (pydicom.dcmread(io.BytesIO(key_object_selection(title, [film])))
                              for title in (codes.DCM.RejectedForQualityReasons, codes.DCM.OfInterest))
    assert withdrawn_by(rejection) and withdrawn_by(rejection).films.keys() == {film.SOPInstanceUID}
    assert not withdrawn_by(of_interest) and withdrawn_by(of_interest).films == {}
    del rejection.CurrentRequestedProcedureEvidenceSequence
    assert not withdrawn_by(rejection)


def test_a_study_whose_key_object_selection_cannot_be_read_is_refused() -> None:
    """Whether an unreadable key object selection is a rejection note is not known: no film of the study is scored."""
    item = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "0020000E": {"vr": "UI", "Value": ["1.2.4"]},
            "00080018": {"vr": "UI", "Value": ["1.2.5"]},
            "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.59"]}}
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens
    with pytest.raises(ValueError, match=r"key object selection 1\.2\.5 could not be read \(ConnectionError\): "
                                         "whether it is a rejection note"):
        _withdrawn(_session(closed, None)[1], closed, "1.2.3", [item])


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _TlsServer(ThreadingHTTPServer):
    """A server over TLS that, when a client's handshake fails (no client certificate where one is required), reads
    what the client sent before it closes, as web servers do: closed with the client's request unread, the
    connection is reset and the client never reads the server's alert saying why."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.tls = tls

    def get_request(self) -> tuple[socket.socket, object]:
        raw, address = self.socket.accept()
        connection = self.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            connection.do_handshake()
        except ssl.SSLError:
            with socket.socket(fileno=connection.detach()) as plain:  # what the client sent, read past TLS
                plain.settimeout(1)
                with contextlib.suppress(OSError):
                    while plain.recv(4096):
                        pass
            raise
        return connection, address


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """``handler`` served on a free loopback port in a background thread, over ``tls`` when given; yields the
    port."""
    address = ("127.0.0.1", 0)
    server = ThreadingHTTPServer(address, handler) if tls is None else _TlsServer(address, handler, tls)
    # shutdown() waits for the loop to look again: every 0.5 s by default, idle time of every test with a front
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def _pass_through(handler: BaseHTTPRequestHandler, url: str) -> httpx.Response:
    """Send ``handler``'s GET on to ``url``, and the answer's status and headers back: the caller may add
    headers, then ends them and writes the answer's body."""
    answer = HTTP.get(url, headers={"Accept": handler.headers.get("Accept", "*/*")}, timeout=30)
    handler.send_response(answer.status_code)
    handler.send_header("Content-Type", answer.headers.get("content-type", "application/octet-stream"))
    handler.send_header("Content-Length", str(len(answer.content)))
    return answer


@contextmanager
def paged_qido(upstream: str, page: int, ignore_offset: bool = False, cap: int | None = None) -> Iterator[str]:
    """A DICOMweb front on ``upstream`` that answers a QIDO-RS instance search ``page`` results at a time, with
    the Warning header DICOM prescribes when more remain (as large archives do), from the asked offset or, with
    ``ignore_offset``, always from the first; with ``cap``, none past that many and no Warning header at all (as
    Orthanc under LimitFindInstances answers); other requests pass through."""

    where = urlsplit(upstream)
    root = f"{where.scheme}://{where.netloc}"

    class Front(_Quiet):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = dict(parse_qsl(parts.query))
            paged = parts.path.endswith("/instances")
            if paged:
                left = page if cap is None else min(page, cap - int(query.get("offset", 0)))
                if left <= 0:  # past the cap: an empty answer (a limit of 0 would mean none)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/dicom+json")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"[]")
                    return
                query["limit"] = str(min(left, int(query.get("limit", page))))
                if ignore_offset:
                    query.pop("offset", None)
            answer = _pass_through(self, f"{root}{parts.path}" + (f"?{urlencode(query)}" if query else ""))
            if paged and cap is None and len(answer.json() or []) == page:
                self.send_header("Warning", "299 pneumoscan-test: there are additional results")
            self.end_headers()
            self.wfile.write(answer.content)

    with serving(Front) as port:
        yield f"http://127.0.0.1:{port}{where.path}"


def test_pacs_stopped_by_sigterm_removes_the_films_it_downloaded(orthanc: str, tiny_bundle: Path, film: np.ndarray,
                                                                  tmp_path: Path) -> None:
    """SIGTERM (systemctl stop, timeout) ended `pacs` past every cleanup, leaving the study's films (headers and
    pixels) in the temporary folder; it now unwinds as Ctrl-C does and exits 143. The front holds the second film's
    retrieval open, so the signal comes while a film is on disk and the command waits."""
    study = generate_uid()
    for _ in range(2):
        data = chest_dicom(film, StudyInstanceUID=study)
        assert HTTP.post(f"{orthanc}/instances", content=data, timeout=30).status_code == 200
    retrievals, held = [], threading.Event()

    class Front(_Quiet):
        def do_GET(self) -> None:
            if "/instances/" in self.path:
                retrievals.append(self.path)
                if len(retrievals) == 2:  # the second film: held until the command is gone
                    held.set()
                    time.sleep(30)
                    return
            answer = _pass_through(self, orthanc + self.path)
            self.end_headers()
            self.wfile.write(answer.content)

    temp = tmp_path / "tmp"
    temp.mkdir()
    with serving(Front) as port:
        command = subprocess.Popen(
            [sys.executable, "-m", "pneumoscan", "pacs", str(tiny_bundle), "--url", f"http://127.0.0.1:{port}/dicom-web",
             "--study", study, "--backend", "onnx", "--out", str(tmp_path / "r.json")],  # no torch to import
            env={**os.environ, "TMPDIR": str(temp)}, stderr=subprocess.PIPE, text=True)
        try:
            assert held.wait(60), f"the command never asked for its second film (exit status {command.poll()})"
            assert list(temp.glob("pneumoscan-pacs-*/films/*.dcm")), "the first film is on disk"
            command.terminate()
            assert command.wait(30) == -signal.SIGTERM  # cleaned up, then ended by the signal (a shell shows 143)
        finally:
            command.kill()
    assert command.stderr.read().strip().splitlines()[-1] == "pneumoscan pacs: terminated"
    assert list(temp.iterdir()) == [] and not (tmp_path / "r.json").exists()


def _request_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request's body, sent whole or in chunks (dicomweb-client chunks a STOW-RS message over 1 MB)."""
    if handler.headers.get("Transfer-Encoding") != "chunked":
        return handler.rfile.read(int(handler.headers["Content-Length"]))
    body = b""
    while size := int(handler.rfile.readline().split(b";")[0], 16):
        body += handler.rfile.read(size)
        handler.rfile.readline()
    handler.rfile.readline()
    return body


def _stow_parts(handler: BaseHTTPRequestHandler) -> list[bytes]:
    """The DICOM instances of ``handler``'s STOW-RS request."""
    boundary = handler.headers.get_param("boundary")
    body = b"\r\n" + _request_body(handler)  # each part follows a CRLF, the first one too
    parts = []
    for piece in body.split(f"\r\n--{boundary}".encode())[1:]:
        if piece.startswith(b"--"):  # the closing delimiter
            break
        parts.append(piece.split(b"\r\n\r\n", 1)[1])
    return parts


def _failed_item(ds: Dataset, reason: int) -> dict:
    """A FailedSOPSequence item (DICOM JSON) of ``ds``."""
    return {"00081150": {"vr": "UI", "Value": [ds.SOPClassUID]}, "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]},
            "00081197": {"vr": "US", "Value": [reason]}}  # fmt: skip


@contextmanager
def partial_stow(upstream: str, modality: str, reason: int) -> Iterator[tuple[str, list[str]]]:
    """A DICOMweb front on ``upstream`` whose STOW-RS fails the instances of ``modality`` as a PACS that stores
    part of a request does: the others are stored upstream, and the answer is upstream's with the failed ones in
    its FailedSOPSequence (FailureReason ``reason``), status 202. Orthanc (1.10, DICOMweb plugin 1.7) never answers
    202: an instance it fails to store is left out of its answer (see the test after this one), and one of another
    study turns the whole request into a 409. Other requests pass through. Yields the front's URL and a list that
    gathers the SOP Instance UIDs it failed."""
    where = urlsplit(upstream)
    root = f"{where.scheme}://{where.netloc}"
    failed_uids: list[str] = []

    class Front(_Quiet):
        def do_GET(self) -> None:
            answer = _pass_through(self, f"{root}{self.path}")
            self.end_headers()
            self.wfile.write(answer.content)

        def do_POST(self) -> None:
            kept, failed = [], []
            for part in _stow_parts(self):
                ds = pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True)
                if ds.Modality != modality:
                    kept.append(part)
                    continue
                failed_uids.append(ds.SOPInstanceUID)
                failed.append(_failed_item(ds, reason))
            content, kind = dicom_multipart(kept)
            upstream_answer = HTTP.post(f"{root}{self.path}", content=content, timeout=30,
                                         headers={"Content-Type": kind, "Accept": "application/dicom+json"})
            assert upstream_answer.status_code == 200, upstream_answer.text
            answer = upstream_answer.json()
            answer["00081198"] = {"vr": "SQ", "Value": failed}  # FailedSOPSequence
            payload = json.dumps(answer).encode()
            self.send_response(202 if failed else 200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    with serving(Front) as port:
        yield f"http://127.0.0.1:{port}{where.path}", failed_uids


def test_pacs_reads_every_page_of_a_paged_search(orthanc: str, tiny_bundle: Path, film: np.ndarray,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = generate_uid()
    uploads = [chest_dicom(film, StudyInstanceUID=study) for _ in range(5)]
    for data in uploads:
        assert HTTP.post(f"{orthanc}/instances", content=data, timeout=30).status_code == 200
    out = tmp_path / "pacs.json"
    with paged_qido(f"{orthanc}/dicom-web", page=2) as url:
        assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", study, "--out", str(out),
                         "--backend", "torch"]) == 0
    assert {r["sop_instance_uid"] for r in json.loads(out.read_text())} == {
        pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in uploads}
    # a server that ignores the offset gives its first page again: part of the study is never scored as all of it
    with paged_qido(f"{orthanc}/dicom-web", page=2, ignore_offset=True) as url:
        assert cli.main(["-q", "pacs", str(tiny_bundle), "--url", url, "--study", study,
                         "--out", str(tmp_path / "again.json"), "--backend", "torch"]) == 2
    assert "it ignores the offset" in capsys.readouterr().err and not (tmp_path / "again.json").exists()
    # ... but when its first answer held the whole study (its instance count says so), that is all there is
    with paged_qido(f"{orthanc}/dicom-web", page=10, ignore_offset=True) as url:
        assert cli.main(["-q", "pacs", str(tiny_bundle), "--url", url, "--study", study,
                         "--out", str(tmp_path / "whole.json"), "--backend", "torch"]) == 0
    assert len(json.loads((tmp_path / "whole.json").read_text())) == len(uploads)
    # one that stops at its own limit without a word (Orthanc's LimitFindInstances): 3 of 5 were scored as all
    with paged_qido(f"{orthanc}/dicom-web", page=2, cap=3) as url:
        assert cli.main(["-q", "pacs", str(tiny_bundle), "--url", url, "--study", study,
                         "--out", str(tmp_path / "capped.json"), "--backend", "torch"]) == 2
    assert ("the PACS listed 3 of the study's 5 instances and then no more" in capsys.readouterr().err
            and not (tmp_path / "capped.json").exists())


def test_pacs_refuses_a_study_whose_instances_share_a_sop_instance_uid(orthanc: str, tiny_bundle: Path,
                                                                       film: np.ndarray,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """Two series holding instances under one SOP Instance UID (Orthanc keeps both): counted as one, the next page's
    offset skipped an instance, and the refusal blamed a PACS that ignores the offset."""
    study, sop = generate_uid(), generate_uid()
    for _ in range(2):
        data = chest_dicom(film, StudyInstanceUID=study, SeriesInstanceUID=generate_uid(), SOPInstanceUID=sop)
        assert HTTP.post(f"{orthanc}/instances", content=data, timeout=30).status_code == 200
    assert cli.main(["-q", "pacs", str(tiny_bundle), "--url", f"{orthanc}/dicom-web", "--study", study]) == 2
    assert f"the study holds several instances under one SOP Instance UID ({sop})" in capsys.readouterr().err


def test_pacs_refuses_a_study_whose_instances_belong_to_two_patients(orthanc: str, tiny_bundle: Path,
                                                                     film: np.ndarray, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """The film's patient id corrected and the film re-sent under its UIDs: the PACS (keyed by patient id) keeps the
    report of the first run under the earlier id, in the same study. A rerun filed a new report and exited 0, the
    earlier one left in the earlier patient's record without a word. The study is refused, each patient's instances
    named, the ids not shown, and nothing is filed."""
    study = generate_uid()
    uids = {"StudyInstanceUID": study, "SeriesInstanceUID": generate_uid(), "SOPInstanceUID": generate_uid()}
    posted = HTTP.post(f"{orthanc}/instances", content=chest_dicom(film, **uids, PatientID="EARLIER-77"), timeout=30)
    first = _pacs_store(tiny_bundle, f"{orthanc}/dicom-web", study, tmp_path / "first.json")
    assert HTTP.delete(f"{orthanc}/instances/{posted.json()['ID']}", timeout=30).status_code == 200
    assert HTTP.post(f"{orthanc}/instances", content=chest_dicom(film, **uids, PatientID="CORRECTED-88"),
                      timeout=30).status_code == 200
    capsys.readouterr()
    assert cli.main(["-q", "pacs", str(tiny_bundle), "--url", f"{orthanc}/dicom-web", "--study", study, "--store",
                     "--heatmaps", "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    groups = sorted([sorted(first["stored"]), [uids["SOPInstanceUID"]]])
    assert (f"the study's instances belong to 2 patients (by PatientID and its issuer, not shown; patient 1: "
            f"{', '.join(groups[0])}; patient 2: {', '.join(groups[1])})") in err
    assert "EARLIER" not in err and "CORRECTED" not in err
    assert _held(orthanc, study) == {*first["stored"], uids["SOPInstanceUID"]}  # nothing filed


def test_pacs_unknown_study_and_unreachable_server(orthanc: str, tiny_bundle: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["pacs", str(tiny_bundle), "--url", f"{orthanc}/dicom-web", "--study", generate_uid()]) == 2
    assert "not found" in capsys.readouterr().err
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert cli.main(["pacs", str(tiny_bundle), "--url", dead, "--study", generate_uid()]) == 2
    err = capsys.readouterr().err
    *tries, line = err.strip().splitlines()  # the search is tried 3 times, with a warning before each try again
    assert f"DICOMweb at {dead}" in line and "Traceback" not in err
    assert line.endswith(f"DICOMweb at {dead}: no connection (Connection refused)"), line  # not urllib3's pool words
    assert len(tries) == 2 and all("NewConnectionError; tried again in" in t for t in tries)


def test_a_pacs_behind_a_private_ca_is_read_with_requests_ca_bundle_and_refused_without(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A certificate that did not verify was tried 3 times and ended in urllib3's line of its pool, the search's
    query and the wrapped errors; a REQUESTS_CA_BUNDLE naming no file in requests' words, without the variable; an
    https --url to a plain http PACS the same way. Each says what to do, and is not tried again; with the CA given,
    the study is read over TLS."""
    study = generate_uid()
    _upload(orthanc, chest_dicom(film, StudyInstanceUID=study))
    ca, context = private_ca(tmp_path)
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(variable, raising=False)
    with hostile_front(f"{orthanc}/dicom-web", tls=context) as url:
        base = ["pacs", str(tiny_bundle), "--url", url, "--study", study, "--backend", "torch"]
        assert cli.main(base) == 2
        err = capsys.readouterr().err
        assert err.endswith(f"DICOMweb at {url}: the PACS's TLS certificate did not verify (certificate verify "
                            "failed: unable to get local issuer certificate): if the hospital's own CA signed it, "
                            "point REQUESTS_CA_BUNDLE at that CA's PEM file\n"), err
        assert "tried again" not in err
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
        assert cli.main(base) == 2
        assert capsys.readouterr().err.endswith(
            f"REQUESTS_CA_BUNDLE names {tmp_path / 'missing.pem'}, which does not exist: point it at the PEM file of "
            "the CA that signed the PACS's certificate\n")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
        assert cli.main([*base, "--out", str(tmp_path / "pacs.json")]) == 0
    [row] = json.loads((tmp_path / "pacs.json").read_text())
    assert "probability" in row and row["path"].startswith(f"{url}/studies/{study}/")
    plain = orthanc.replace("http://", "https://")  # an https --url to a PACS that serves plain http
    assert cli.main(["pacs", str(tiny_bundle), "--url", f"{plain}/dicom-web", "--study", study]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"DICOMweb at {plain}/dicom-web: no TLS at that address (wrong version number): it may "
                        "serve plain http (url (--url) http://...)\n"), err
    assert "tried again" not in err


def test_a_pacs_that_asks_for_a_client_certificate_is_read_with_client_cert_and_refused_without(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutual TLS: a PACS that asks for a client certificate could not be given one. Without it the run ends saying
    one was asked for, at once, and with one it does not trust saying it was refused; with `--client-cert` (a PEM
    file of the certificate and its key) the study is read."""
    study = generate_uid()
    _upload(orthanc, chest_dicom(film, StudyInstanceUID=study))
    ca, context = private_ca(tmp_path)
    context.verify_mode = ssl.CERT_REQUIRED  # a client certificate that the hospital's CA signed
    context.load_verify_locations(ca)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    with hostile_front(f"{orthanc}/dicom-web", tls=context) as url:
        base = ["pacs", str(tiny_bundle), "--url", url, "--study", study, "--backend", "torch"]
        assert cli.main(base) == 2
        err = capsys.readouterr().err
        assert err.endswith(f"DICOMweb at {url}: the PACS asks for a client certificate (tlsv13 alert certificate "
                            "required) and none was given: give it with connection.client_cert (--client-cert "
                            "FILE)\n"), err
        assert "tried again" not in err
        (tmp_path / "other").mkdir()
        private_ca(tmp_path / "other", "another CA")  # a certificate that another CA signed
        assert cli.main([*base, "--client-cert", str(tmp_path / "other" / "client.pem")]) == 2
        err = capsys.readouterr().err
        assert err.endswith(f"DICOMweb at {url}: the PACS refused the client certificate given (tlsv1 alert unknown "
                            "ca): check with its administrator that it trusts the CA that signed it, and that it has "
                            "not expired\n"), err
        out = tmp_path / "pacs.json"
        assert cli.main([*base, "--client-cert", str(tmp_path / "client.pem"), "--out", str(out)]) == 0
    [row] = json.loads(out.read_text())
    assert "probability" in row and row["path"].startswith(f"{url}/studies/{study}/")


def test_a_client_certificate_is_checked_before_the_pacs_is_asked_anything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file that cannot be read, or holds no certificate and key that match, or a key with a passphrase (OpenSSL
    would ask for it on the terminal), is refused before any request (in requests' words it came at the first one,
    as a TLS failure); a key every user of the machine can read is warned of, as the auth file is; a certificate with
    an http URL, where no TLS would present it, is refused."""
    private_ca(tmp_path)
    pem = (tmp_path / "client.pem").read_text()
    cert, key = pem[:pem.index("-----BEGIN PRIVATE KEY")], pem[pem.index("-----BEGIN PRIVATE KEY"):]
    (tmp_path / "cert.pem").write_text(cert)
    (tmp_path / "key.pem").write_text(key)
    (tmp_path / "key.pem").chmod(0o600)
    url = "https://pacs.hospital.test/dicom-web"
    caplog.set_level(logging.WARNING, logger="pneumoscan")
    _, session = _session(url, None, Connection(client_cert=str(tmp_path / "cert.pem"),
                                                client_key=str(tmp_path / "key.pem")))
    assert session.cert == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    assert "every user" not in caplog.text
    (tmp_path / "key.pem").chmod(0o644)
    _session(url, None, Connection(client_cert=str(tmp_path / "cert.pem"), client_key=str(tmp_path / "key.pem")))
    assert (f"the client key file {tmp_path / 'key.pem'} is readable by every user of this machine (mode 644)"
            in caplog.text)
    (tmp_path / "other").mkdir()
    private_ca(tmp_path / "other", "another CA")
    other = (tmp_path / "other" / "client.pem").read_text()
    (tmp_path / "other.key").write_text(other[other.index("-----BEGIN PRIVATE KEY"):])
    (tmp_path / "locked.key").write_bytes(serialization.load_pem_private_key(key.encode(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    refused = {
        Connection(client_cert=str(tmp_path / "cert.pem"), client_key=str(tmp_path / "other.key")):
            f"connection.client_cert (--client-cert) {tmp_path / 'cert.pem'} (with connection.client_key "
            f"(--client-key) {tmp_path / 'other.key'}) is not a PEM "
            "certificate with its private key (KEY_VALUES_MISMATCH)",
        Connection(client_cert=str(tmp_path / "cert.pem"), client_key=str(tmp_path / "locked.key")):
            f"the client key in {tmp_path / 'locked.key'} is encrypted, and a key with a passphrase cannot be used",
        Connection(client_cert=str(tmp_path / "missing.pem")):
            f"the client certificate file {tmp_path / 'missing.pem'} cannot be read (no such file or directory)",
        Connection(client_cert=str(tmp_path / "cert.pem")):  # the key left out
            f"connection.client_cert (--client-cert) {tmp_path / 'cert.pem'} (with connection.client_key "
            "(--client-key) none) is not a PEM certificate with its "
            "private key",
        Connection(client_cert=str(tmp_path / "key.pem"), client_key=str(tmp_path / "cert.pem")):
            f"connection.client_cert (--client-cert) {tmp_path / 'key.pem'} (with connection.client_key "
            f"(--client-key) {tmp_path / 'cert.pem'}) is not a PEM "
            "certificate with its private key",
    }
    for connection, reason in refused.items():
        with pytest.raises((OSError, ValueError)) as e:
            _session(url, None, connection)
        assert reason in str(e.value), str(e.value)
    with pytest.raises(ValueError, match=r"^connection\.client_cert \(--client-cert\) is presented over TLS only, "
                                         r"and url \(--url\) is http://"):
        _session("http://pacs.hospital.test/dicom-web", None, Connection(client_cert=str(tmp_path / "client.pem")))


def test_a_file_refused_as_no_client_certificate_is_not_warned_of_as_a_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A --client-cert that holds no certificate and key (a CA file, a text) is refused, and not also warned of as
    "the client key file" every user can read: it holds no key, and the warning sent its owner to chmod it."""
    (tmp_path / "notes.pem").write_text("not a certificate\n")
    (tmp_path / "notes.pem").chmod(0o644)
    caplog.set_level(logging.WARNING, logger="pneumoscan")
    with pytest.raises(ValueError, match="is not a PEM certificate with its private key"):
        _session("https://pacs.hospital.test/dicom-web", None, Connection(client_cert=str(tmp_path / "notes.pem")))
    assert "every user" not in caplog.text


def test_a_pacs_slower_than_the_read_timeout_ends_naming_the_option(tiny_bundle: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """The timeouts were fixed (60 s a read, 600 s a film): a PACS over a slow WAN could not be given longer, nor a
    strict site less. A read that takes longer than --read-timeout ends the run, saying which option to raise; a
    value that is no positive finite number is refused before anything is done."""

    class Slow(_Quiet):
        def do_GET(self) -> None:
            time.sleep(1)
            try:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")
            except OSError:  # the client gave up, as asked
                pass

    with serving(Slow) as port:
        url = f"http://127.0.0.1:{port}/dicom-web"
        assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", generate_uid(),
                         "--read-timeout", "0.2"]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"DICOMweb at {url}: no answer within 0.2 s (ReadTimeout): if the PACS is slow rather than "
                        "down, give it longer with connection.read_s (--read-timeout SECONDS) (default 60)\n"), err
    assert "tried again" not in err
    for option in ("--read-timeout", "--film-timeout"):
        for value in ("0", "-5", "inf", "nan", "soon"):
            with pytest.raises(SystemExit) as exited:
                cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", generate_uid(), option, value])
            assert exited.value.code == 2
            assert capsys.readouterr().err.startswith(f"pneumoscan pacs: error: argument {option}: must be a finite "
                                                      f"number above 0, got {value}")


def test_a_password_that_ends_the_urls_host_early_is_refused_unshown_and_read_percent_encoded(
    tiny_bundle: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """A password holding '/', '?' or '#' ends the URL's host part there: the rest of it was taken as the URL's path,
    query or fragment, and shown in the error message. It is refused, unshown, saying to percent-encode it or give
    it with --auth-file; percent-encoded, it is sent as it is."""
    caplog.set_level(logging.DEBUG)
    for secret in ("s3cr/et", "s3cr?et", "s3cr#et"):
        url = f"http://alice:{secret}@127.0.0.1:9/dicom-web"
        assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", generate_uid()]) == 2
        err = capsys.readouterr().err
        assert err.startswith("pneumoscan pacs: error: url (--url) holds an '@' after its host: a password with "
                              "'/', '?' or '#' must be percent-encoded in the URL"), err
        assert "--auth-file" in err and "s3cr" not in err + caplog.text and "et@" not in err + caplog.text
    root, session = _session("http://alice:s3cr%2F%3F%23%40et@127.0.0.1:9/dicom-web", None)
    assert root == "http://127.0.0.1:9/dicom-web" and session.auth == ("alice", "s3cr/?#@et")


def test_a_202_answer_stores_only_what_it_lists_and_warns_of_each_failure(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """dicomweb-client raises nothing on a 202: the row must not claim the overlay the PACS failed to store."""
    study = generate_uid()
    upload = chest_dicom(film, StudyInstanceUID=study)
    assert HTTP.post(f"{orthanc}/instances", content=upload, timeout=30).status_code == 200
    with partial_stow(f"{orthanc}/dicom-web", modality="OT", reason=0xA700) as (url, failed):
        row = _pacs_store(tiny_bundle, url, study, tmp_path / "pacs.json", status=1)
    [overlay] = failed
    assert row["not_stored"] == [overlay]
    held = _held(orthanc, study)
    assert overlay not in held and len(held) == 2  # the film and its SR
    assert row["stored"] == list(held - {pydicom.dcmread(io.BytesIO(upload)).SOPInstanceUID})
    assert row["warnings"] == [
        f"the PACS refused the Grad-CAM Secondary Capture {overlay} (0xA700: out of resources): it is not stored"]


# Orthanc's hook on every instance it receives: an error in it fails the store, here of every Secondary Capture
# pneumoscan makes (Modality OT; the test films are DX)
REFUSE_OVERLAYS = """
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.Modality == 'OT' then
    error('this archive takes no secondary captures')
  end
  return true
end
"""


@pytest.fixture(scope="module")
def refusing_orthanc(module_tmp: Callable[[str], Path]) -> Iterator[str]:
    """An Orthanc that fails to store every Secondary Capture (REFUSE_OVERLAYS), for the tests below: each works on a
    study of its own, so one start serves them all."""
    with running_orthanc(module_tmp("refusing-orthanc"), lua=REFUSE_OVERLAYS) as url:
        yield url


def test_an_instance_a_real_pacs_failed_to_store_is_not_recorded_as_stored(
    tiny_bundle: Path, film: np.ndarray, tmp_path: Path, refusing_orthanc: str
) -> None:
    """A real Orthanc that fails to store the overlay answers 200 and leaves it out of its answer: the row lists the
    SR alone as stored, and says the overlay was not confirmed."""
    study = generate_uid()
    upload = chest_dicom(film, StudyInstanceUID=study)
    root = refusing_orthanc
    assert HTTP.post(f"{root}/instances", content=upload, timeout=30).status_code == 200
    row = _pacs_store(tiny_bundle, f"{root}/dicom-web", study, tmp_path / "pacs.json", status=1)
    held = _held(root, study)
    [sr_uid] = held - {pydicom.dcmread(io.BytesIO(upload)).SOPInstanceUID}
    assert row["stored"] == [sr_uid] and len(row["not_stored"]) == 1
    [warning] = row["warnings"]
    prefix, suffix = "the PACS did not confirm storing the Grad-CAM Secondary Capture ", ": it may not be stored"
    assert warning.startswith(prefix) and warning.endswith(suffix)
    assert warning[len(prefix):-len(suffix)] not in held


NO_ANSWER = 0  # a refusing_front "status": the request is passed through, and the connection closed unanswered
STALL = -1  # a refusing_front "status": the request is read and never answered, until the client gives up


@contextmanager
def refusing_front(upstream: str, refusals: dict[int, int], missing: str = "",
                   answer_type: str = "application/dicom+json",
                   accept: str = "application/dicom+json") -> Iterator[tuple[str, dict[int, list]]]:
    """A DICOMweb front on ``upstream`` that answers STOW-RS request number N with the HTTP status ``refusals[N]``:
    a 409 Conflict with a FailedSOPSequence naming each instance in it (reason 0xC000), as PS3.18 10.5.3 prescribes
    when a PACS stores none of a request's instances, another status with no body, :data:`NO_ANSWER` by storing
    it upstream and closing the connection without an answer (a PACS that stored, then timed out or crashed), and
    :data:`STALL` by holding the connection open, unanswered, until the client closes it (a PACS too slow); and
    WADO-RS of instance ``missing`` with 404 (deleted since the search). Other requests pass through, STOW-RS ones
    asking upstream for an ``accept`` answer; STOW-RS answers say they are ``answer_type``. Yields the front's URL
    and, by request number, the SOP Instance UIDs it refused."""
    where = urlsplit(upstream)
    root = f"{where.scheme}://{where.netloc}"
    refused: dict[int, list[str]] = {}
    posts = []

    class Front(_Quiet):
        def do_GET(self) -> None:
            if urlsplit(self.path).path.endswith(f"/instances/{missing}"):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            answer = _pass_through(self, f"{root}{self.path}")
            self.end_headers()
            self.wfile.write(answer.content)

        def do_POST(self) -> None:
            parts = _stow_parts(self)
            posts.append(parts)
            status = refusals.get(len(posts))
            if status == STALL:
                self.connection.settimeout(30)
                with contextlib.suppress(OSError):
                    self.connection.recv(1)  # nothing more comes: it returns once the client closes
                return
            if status in (None, NO_ANSWER):
                content, kind = dicom_multipart(parts)
                answer = HTTP.post(f"{root}{self.path}", content=content, timeout=30,
                                    headers={"Content-Type": kind, "Accept": accept})
                if status == NO_ANSWER:
                    return  # one request a connection (HTTP/1.0): it closes with no answer
                status, payload = answer.status_code, answer.content
            else:
                sent = [pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True) for part in parts]
                refused[len(posts)] = [ds.SOPInstanceUID for ds in sent]
                failed = {"00081198": {"vr": "SQ", "Value": [_failed_item(ds, 0xC000) for ds in sent]}}
                payload = json.dumps(failed).encode() if status == 409 else b""
            self.send_response(status)
            self.send_header("Content-Type", answer_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    with serving(Front) as port:
        yield f"http://127.0.0.1:{port}{where.path}", refused


def test_one_films_refusal_or_retrieval_error_marks_its_row_and_the_study_goes_on(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A 409 for the second film's reports, a bodiless 500 for the third's and a 404 for the fourth film: every row
    is written, the first film's reports are filed and recorded as stored, and the command exits 1 naming what
    failed."""
    study = generate_uid()
    uploads = [chest_dicom(film, StudyInstanceUID=study) for _ in range(4)]
    for data in uploads:
        assert HTTP.post(f"{orthanc}/instances", content=data, timeout=30).status_code == 200
    missing = pydicom.dcmread(io.BytesIO(uploads[3])).SOPInstanceUID
    out = tmp_path / "pacs.json"
    with refusing_front(f"{orthanc}/dicom-web", {2: 409, 3: 500}, missing=missing) as (url, refused):
        assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", study, "--store", "--out", str(out),
                         "--backend", "torch"]) == 1
    rows = json.loads(out.read_text())
    assert len(rows) == 4
    [gone] = [r for r in rows if "error" in r]
    assert gone["sop_instance_uid"] == missing and "WADO-RS could not retrieve it: 404" in gone["error"]
    not_filed = {r["not_stored"][0]: _past_unchecked(r) for r in rows if r.get("not_stored")}
    [conflict], [server_error] = refused[2], refused[3]
    assert not_filed.keys() == {conflict, server_error} and all(r["stored"] == [] for r in not_filed.values())
    assert not_filed[conflict]["warnings"] == [
        f"the PACS refused the DICOM SR {conflict} (0xC000: cannot understand; HTTP 409 Conflict): it is not stored"]
    assert not_filed[server_error]["warnings"] == [f"the PACS refused the DICOM SR {server_error} (HTTP 500 "
                                                   "Internal Server Error, no reason given): it is not stored"]
    [filed] = [r for r in rows if r.get("stored")]
    assert set(filed["stored"]) == _held(orthanc, study) - {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID
                                                            for d in uploads}
    err = capsys.readouterr().err
    assert all(f"not stored: 1 report(s) of {r['path']}" in err for r in not_filed.values())
    assert f"unreadable: {gone['path']}" in err


def test_a_store_tried_again_after_a_503_sends_the_whole_message(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """A busy PACS (503) answered the first try of a STOW-RS of over 1 MB (an SR with its overlay): dicomweb-client
    streamed the message from a generator, its retry sent nothing, and the reports were counted refused."""
    study = generate_uid()
    upload = chest_dicom(np.kron(film, np.ones((2, 2), film.dtype)), StudyInstanceUID=study)  # 448 px a side
    assert HTTP.post(f"{orthanc}/instances", content=upload, timeout=30).status_code == 200
    with refusing_front(f"{orthanc}/dicom-web", {1: 503}) as (url, refused):
        row = _pacs_store(tiny_bundle, url, study, tmp_path / "pacs.json")
    assert row["stored"] == refused[1] and len(row["stored"]) == 2 and row["warnings"] == []
    assert set(row["stored"]) <= _held(orthanc, study)
    [overlay] = [i for i in DICOMwebClient(url=f"{orthanc}/dicom-web").search_for_instances(
        study_instance_uid=study, fields=["Rows", "Columns"]) if i["00080018"]["Value"][0] == row["stored"][1]]
    assert overlay["00280010"]["Value"][0] * overlay["00280011"]["Value"][0] * 3 > 10**6  # a message over 1 MB


def test_a_store_left_unanswered_marks_its_film_and_the_study_goes_on(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The PACS stored the first film's reports and closed the connection unanswered, on every try: the run had
    ended in exit status 2 with no results. Now that film is marked, the second film's reports are stored, and the
    command exits 1."""
    study = generate_uid()
    for _ in range(2):
        assert HTTP.post(f"{orthanc}/instances", content=chest_dicom(film, StudyInstanceUID=study),
                          timeout=30).status_code == 200
    out = tmp_path / "pacs.json"
    with refusing_front(f"{orthanc}/dicom-web", dict.fromkeys((1, 2, 3), NO_ANSWER)) as (url, _):
        assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", study, "--store", "--out", str(out),
                         "--backend", "torch"]) == 1
    unanswered, filed = sorted(map(_past_unchecked, json.loads(out.read_text())), key=lambda r: len(r["stored"]))
    [sr_uid] = unanswered["not_stored"]
    assert unanswered["stored"] == [] and unanswered["warnings"] == [
        f"no answer from the PACS to storing the DICOM SR {sr_uid} (ConnectionError): it may or may not have stored it"]
    assert len(filed["stored"]) == 1 and "not_stored" not in filed and set(filed["stored"]) <= _held(orthanc, study)
    assert f"not stored: 1 report(s) of {unanswered['path']}" in capsys.readouterr().err


def test_a_store_past_the_read_timeout_names_the_option(orthanc: str, tiny_bundle: Path, film: np.ndarray,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A PACS that took the STOW-RS request and never answered it within --read-timeout: the film's warning said
    `(ReadTimeout)` alone, where a film's retrieval and a search past the read timeout name the option to raise. It
    is tried once, as every read timeout is. --read-timeout is 1 s: the study's QIDO-RS and the film's WADO-RS,
    through the front and Orthanc, must answer within it on a busy machine."""
    study = generate_uid()
    assert HTTP.post(f"{orthanc}/instances", content=chest_dicom(film, StudyInstanceUID=study),
                      timeout=30).status_code == 200
    out = tmp_path / "pacs.json"
    with refusing_front(f"{orthanc}/dicom-web", {1: STALL}) as (url, _):
        assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", study, "--store", "--out", str(out),
                         "--backend", "torch", "--read-timeout", "1"]) == 1
    [row] = map(_past_unchecked, json.loads(out.read_text()))
    [sr_uid] = row["not_stored"]
    assert row["stored"] == [] and row["warnings"] == [
        f"no answer from the PACS to storing the DICOM SR {sr_uid} within 1 s (ReadTimeout): if the PACS is slow "
        "rather than down, give it longer with connection.read_s (--read-timeout SECONDS): it may or may not have "
        "stored it"]
    err = capsys.readouterr().err
    assert f"not stored: 1 report(s) of {row['path']}" in err and "tried again" not in err


def test_a_store_answer_with_a_charset_parameter_is_read(orthanc: str, tiny_bundle: Path, film: np.ndarray,
                                                        tmp_path: Path) -> None:
    """A PACS (or its proxy) answering 'application/dicom+json; charset=utf-8' had its answer dropped by
    dicomweb-client's exact media-type match: every report stored was counted unconfirmed, exit status 1."""
    study = generate_uid()
    assert HTTP.post(f"{orthanc}/instances", content=chest_dicom(film, StudyInstanceUID=study),
                      timeout=30).status_code == 200
    with refusing_front(f"{orthanc}/dicom-web", {}, answer_type="application/dicom+json; charset=utf-8") as (url, _):
        row = _pacs_store(tiny_bundle, url, study, tmp_path / "pacs.json")
    assert len(row["stored"]) == 2 and set(row["stored"]) <= _held(orthanc, study) and row["warnings"] == []


XML = "application/dicom+xml"  # PS3.19's Native DICOM Model, which a PACS may answer STOW-RS in whatever is asked


def test_a_store_answer_in_xml_counts_what_the_pacs_stored(tiny_bundle: Path, film: np.ndarray, tmp_path: Path,
                                                          refusing_orthanc: str) -> None:
    """A real Orthanc answering in XML, storing the SR and failing the overlay: the SR is counted stored and the
    overlay not confirmed, as from its JSON answer (every report had been counted unconfirmed, exit status 1 all
    the same)."""
    study = generate_uid()
    upload = chest_dicom(film, StudyInstanceUID=study)
    root = refusing_orthanc
    assert HTTP.post(f"{root}/instances", content=upload, timeout=30).status_code == 200
    with refusing_front(f"{root}/dicom-web", {}, answer_type=XML, accept=XML) as (url, _):
        row = _pacs_store(tiny_bundle, url, study, tmp_path / "pacs.json", status=1)
    held = _held(root, study)
    [sr_uid] = held - {pydicom.dcmread(io.BytesIO(upload)).SOPInstanceUID}
    assert row["stored"] == [sr_uid] and len(row["not_stored"]) == 1 and row["not_stored"][0] not in held
    [warning] = row["warnings"]
    assert warning.startswith("the PACS did not confirm storing the Grad-CAM Secondary Capture ")


def test_a_refusal_in_xml_names_each_instances_reason(orthanc: str, film: np.ndarray) -> None:
    """Orthanc's 409 in XML (instances of another study than the request's; the answer names no media type): each
    instance is refused with its reason, as from a JSON answer (it had been 'no reason given')."""
    parts = [chest_dicom(film) for _ in range(2)]  # each of a study of its own
    body, kind = dicom_multipart(parts)
    answer = requests.post(f"{orthanc}/dicom-web/studies/{generate_uid()}", data=body, timeout=30,
                           headers={"Content-Type": kind, "Accept": XML})
    assert answer.status_code == 409 and answer.content.startswith(b"<?xml")
    sent = {pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID: "DICOM SR" for part in parts}
    row: dict = {}
    assert _stored(_answer(answer), sent, row, "HTTP 409 Conflict") == [] and row["not_stored"] == list(sent)
    assert row["warnings"] == [f"the PACS refused the DICOM SR {uid} (0x0110: processing failure; HTTP 409 Conflict): "
                               "it is not stored" for uid in sent]


def test_a_scored_film_without_a_filed_report_fails_the_command(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No SR could be made (a PatientSex highdicom refuses): nothing was sent, and that is no success."""
    caplog.set_level(logging.INFO, logger="pneumoscan")
    study = generate_uid()
    assert HTTP.post(f"{orthanc}/instances", content=chest_dicom(film, StudyInstanceUID=study, PatientSex="U"),
                      timeout=30).status_code == 200
    row = _pacs_store(tiny_bundle, f"{orthanc}/dicom-web", study, tmp_path / "pacs.json", status=1)
    assert "probability" in row and "stored" not in row and len(_held(orthanc, study)) == 1
    said = f"no report filed for {row['path']}: no DICOM SR written: the source DICOM's PatientSex is malformed"
    err = capsys.readouterr().err
    [(_, line)] = unfiled([row])  # its warnings, past the one every reading of the tiny bundle carries
    assert line.startswith(said) and f"{line}\n" in err, "a Python caller learns it as the command says it"
    assert "reports of 0 of 1 films stored (0 objects)" in caplog.records[-1].getMessage()
    # the line as docs/dicom.md quotes it, its counts aside
    page = " ".join((Path(__file__).parents[1] / "docs" / "dicom.md").read_text().split())
    [quoted] = re.findall(r"its last log line counts what was stored: `([^`]+)`", page)
    assert re.fullmatch(re.sub(r"\d+", r"\\d+", re.escape(quoted)), caplog.records[-1].getMessage())


def test_a_python_caller_learns_which_scored_films_the_pacs_holds_no_reports_of() -> None:
    """The rule `pacs --store` fails by, in the library: a scored film with a report refused or unconfirmed, or with
    none made; a film not scored, or unreadable, has no report to file (its row says why)."""
    rows = [{"path": "wado/1", "probability": 0.9, "stored": ["1.2.1", "1.2.2"], "warnings": []},
            {"path": "wado/2", "probability": 0.8, "stored": ["1.2.3"], "not_stored": ["1.2.4"],
             "warnings": ["the PACS refused the DICOM SR 1.2.4 (HTTP 409 Conflict): it is not stored"]},
            {"path": "wado/3\x1b[2J", "probability": 0.1, "warnings": ["no DICOM SR written: PatientSex is malformed"]},
            {"path": "wado/4", "not_scored": "not a radiograph (CT)"}, {"path": "wado/5", "error": "unreadable"}]
    assert unfiled(rows) == [
        (rows[1], "not stored: 1 report(s) of wado/2: the PACS refused the DICOM SR 1.2.4 (HTTP 409 Conflict): it "
                  "is not stored"),
        (rows[2], "no report filed for wado/3\\x1b[2J: no DICOM SR written: PatientSex is malformed")]


@pytest.mark.parametrize("charset, name", [
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),  # Japanese, as its modalities write it
    (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동"),  # Korean, which highdicom does not list
    ("ISO_IR 6", "Doe^Jane"),  # the default repertoire, named
])  # fmt: skip
def test_a_film_in_a_character_set_highdicom_refuses_gets_its_reports_in_utf8(film: np.ndarray, charset: object,
                                                                              name: str) -> None:
    source = pydicom.dcmread(io.BytesIO(chest_dicom(film, SpecificCharacterSet=charset, PatientName=name)))
    for part in report_files(source, READING, _overlay_png(), "m-1", "v"):
        made = pydicom.dcmread(io.BytesIO(part))
        assert (str(made.PatientName), made.SpecificCharacterSet) == (name, "ISO_IR 192")


def test_report_uids_follow_from_film_model_and_scoring_mode(film: np.ndarray) -> None:
    source = header(film)
    uids = {mode: [pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID
                   for p in report_files(source, READING, _overlay_png(), "m-1", "v", mode)]
            for mode in ("onnx", "onnx+tta")}  # fmt: skip
    again = [pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID for p in report_files(source, READING, _overlay_png(),
                                                                                 "m-1", "v", "onnx")]
    assert again == uids["onnx"] and not set(uids["onnx"]) & set(uids["onnx+tta"])
    other = report_files(source, {**READING, "threshold": 0.6}, None, "m-1", "v", "onnx")  # a new operating point
    assert pydicom.dcmread(io.BytesIO(other[0])).SOPInstanceUID != uids["onnx"][0]


def test_distinct_report_series_have_numbers_of_their_own(film: np.ndarray) -> None:
    """Two films of one series that record no InstanceNumber, films 1 of series 1 and 50, two models' and two
    scoring modes' readings of one film: their reports' and overlays' series had numbers in common (9901, 9902).
    Each is numbered apart, in nine digits (after any modality's own series), and the same series alike."""
    study, series = generate_uid(), generate_uid()
    films = [*(header(film, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=None) for _ in range(2)),
             *(header(film, StudyInstanceUID=study, SeriesNumber=n, InstanceNumber=1) for n in (1, 50))]
    readings = [*((source, "m-1", "v", "onnx") for source in films), (films[0], "m-2", "w", "onnx"),
                (films[0], "m-1", "v", "onnx+tta")]
    numbers = [pydicom.dcmread(io.BytesIO(part)).SeriesNumber for source, *model in readings
               for part in report_files(source, READING, _overlay_png(), *model)]
    assert len(set(numbers)) == len(numbers) == 12 and all(10**8 <= n < 10**9 for n in numbers)
    again = report_files(films[1], READING, _overlay_png(), "m-1", "v", "onnx")
    assert [pydicom.dcmread(io.BytesIO(part)).SeriesNumber for part in again] == numbers[2:4]


def _made_uids(source: Dataset) -> set[str]:
    """Every UID made for ``source``'s reading: the SR's instance, series and tracking UIDs, the overlay's instance
    and series UIDs, and the FHIR Observation's identifier."""
    sr_part, sc_part = (pydicom.dcmread(io.BytesIO(p)) for p in report_files(source, READING, _overlay_png(), "m-1",
                                                                               "v", "onnx"))
    reading = {**READING, "study_instance_uid": source.StudyInstanceUID,
               "series_instance_uid": source.SeriesInstanceUID, "sop_instance_uid": source.SOPInstanceUID}
    [identifier] = build_observation(reading, "m-1", "v", "onnx", source).identifier
    tracking = _group(hd.sr.ComprehensiveSR.from_dataset(sr_part)).tracking_uid
    return {sr_part.SOPInstanceUID, sr_part.SeriesInstanceUID, tracking, sc_part.SOPInstanceUID,
            sc_part.SeriesInstanceUID, identifier.value}


def test_films_that_share_a_sop_instance_uid_get_report_uids_of_their_own(film: np.ndarray) -> None:
    """Two patients' films with one SOP Instance UID (a modality or re-import fault) had the same report UIDs: a
    PACS filed the second patient's report in place of the first's. The same film still gets the same UIDs."""
    sop, study, series = generate_uid(), generate_uid(), generate_uid()
    film_of = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": sop}
    first = _made_uids(header(film, **film_of))
    assert len(first) == 6 and _made_uids(header(film, **film_of)) == first  # a rerun: the same objects
    others = {"another study and series": header(film, SOPInstanceUID=sop),
              "another patient": header(film, **film_of, PatientID="MRN-1"),
              "another issuer of the patient id": header(film, **film_of, IssuerOfPatientID="Other Hospital")}
    for case, source in others.items():
        assert not _made_uids(source) & first, case


ROOT = "1.2.826.0.1.3680043.10.99"  # a root of 25 characters, given without its final dot


def _uids(ds: Dataset) -> set[str]:
    """Every UID value in ``ds``, its File Meta and its sequences, however deep."""
    found: set[str] = set()
    for element in [*getattr(ds, "file_meta", Dataset()), *ds]:
        if element.VR == "SQ":
            found.update(*(_uids(item) for item in element.value))
        elif element.VR == "UI" and element.value:
            found.add(str(element.value))
    return found


def test_every_uid_pneumoscan_derives_is_under_the_organisations_root(film: np.ndarray,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With PNEUMOSCAN_UID_ROOT set, every UID of the SR and the overlay that is not the film's, a standard one or
    highdicom's implementation class is made under it (instance, series, tracking, device), the same on a resend;
    the FHIR identifier, a UUID (which has no root), stays as it is without one."""
    source = header(film)
    unset = _made_uids(source)
    monkeypatch.setenv(UID_ROOT_ENV, ROOT)
    made = _made_uids(source)
    assert made == _made_uids(source)  # a resend: the same objects
    [identifier] = [u for u in made if u.startswith("urn:uuid:")]
    assert made & unset == {identifier}  # a UUID is unique without a root, and a receiver keeps finding it by it
    sr_ds, sc = (pydicom.dcmread(io.BytesIO(p)) for p in report_files(source, READING, _overlay_png(), "m-1", "v",
                                                                        "onnx"))
    film_uids = {source[k].value for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")}
    for ds, count in ((sr_ds, 4), (sc, 2)):
        derived = {u for u in _uids(ds) - film_uids - {ds.file_meta.ImplementationClassUID}
                   if not u.startswith("1.2.840.10008.")}
        assert len(derived) == count and all(u.startswith(ROOT + ".") and pydicom.uid.UID(u).is_valid
                                             and len(u) <= 64 for u in derived), derived
    assert _device_uids(sr_ds) == [generate_uid(prefix=ROOT + ".", entropy_srcs=["m-1", "v"])]
    monkeypatch.setenv(UID_ROOT_ENV, f" {ROOT}.\n")  # with its final dot, and a line end from a file
    assert _made_uids(source) == made


@pytest.mark.parametrize("root, reason", [
    ("1.2.826.0.1.3680043.10.x", "characters other than digits and dots"),
    ("1.2.840.0113619", "component 0113619 has a leading zero"),
    ("1.3.6.1.4.1.99999.1.2.3.4.5.6.7.8.9", "36 characters with its final dot; at most 34 leave each UID 30 digits"),
    ("1.2..3", "an empty component"),
    ("3.1.4", "first component is not 0, 1 or 2"),
    ("2.25", "2.25 is the arc of UUIDs"),
    (" ", "is set but blank"),
])  # fmt: skip
def test_an_invalid_uid_root_is_refused_with_its_reason(film: np.ndarray, monkeypatch: pytest.MonkeyPatch,
                                                        root: str, reason: str) -> None:
    """A root set wrong is refused with why, never replaced by pydicom's root (the reports would go out under an
    arc the hospital did not choose); one at the longest length is taken."""
    source = header(film)
    monkeypatch.setenv(UID_ROOT_ENV, root)
    for build in (lambda: build_sr(source, READING, "m-1", "v"),
                  lambda: build_heatmap_sc(source, _overlay_png(), "m-1", "v")):
        with pytest.raises(ValueError, match=f"^{UID_ROOT_ENV} .*{re.escape(reason)}"):
            build()
    longest = "1.3.6.1.4.1.99999.1.2.3.4.5.6.7.8"  # 34 characters with its final dot
    monkeypatch.setenv(UID_ROOT_ENV, longest)
    assert build_sr(source, READING, "m-1", "v").SOPInstanceUID.startswith(longest + ".")


def test_predict_refuses_an_invalid_uid_root_before_reading_a_film(tiny_bundle: Path, films: dict[str, Path],
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """Otherwise every film would be scored, and each report refused after it."""
    monkeypatch.setenv(UID_ROOT_ENV, "1.2.840.0113619")
    args = ["predict", str(tiny_bundle), str(films["in_scope"]), "--dicom-sr", str(tmp_path / "sr")]
    assert cli.main(args) == 2
    reason = f"{UID_ROOT_ENV} is not a valid UID root: its component 0113619 has a leading zero"
    assert reason in capsys.readouterr().err
    assert not (tmp_path / "sr").exists()
    # FHIR alone derives no UID (its identifier is a UUID): a wrong root does not stop it
    assert cli.main(["predict", str(tiny_bundle), str(films["in_scope"]), "--fhir", str(tmp_path / "fhir")]) == 0
    assert len(list((tmp_path / "fhir").glob("*.fhir.json"))) == 1


def test_the_overlay_carries_the_patient_and_study_attributes_the_sr_carries(film: np.ndarray) -> None:
    """The Secondary Capture had the patient id without its issuer, other ids, the accession number's issuer, the
    study description and the patient's age: a PACS that keys on the issuer filed it apart from its SR."""
    qualifiers, other_id, accession_issuer = Dataset(), Dataset(), Dataset()
    qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType = "1.2.3.4", "ISO"
    other_id.PatientID, other_id.IssuerOfPatientID, other_id.TypeOfPatientID = "OTHER-9", "HOSP2", "TEXT"
    accession_issuer.LocalNamespaceEntityID = "RIS"
    identity = {"IssuerOfPatientID": "General Hospital", "IssuerOfPatientIDQualifiersSequence": [qualifiers],
                "OtherPatientIDsSequence": [other_id], "IssuerOfAccessionNumberSequence": [accession_issuer],
                "StudyDescription": "XR CHEST PA"}
    source = header(film, **identity)
    sr_ds, sc = (pydicom.dcmread(io.BytesIO(p)) for p in report_files(source, READING, _overlay_png(), "m-1", "v"))
    for keyword in (*identity, "PatientAge", "PatientID", "PatientName", "AccessionNumber", "StudyID"):
        assert keyword in sc and sc[keyword].value == sr_ds[keyword].value == source[keyword].value, keyword


# Orthanc's filter of every HTTP request: one of its users may not use it, another may not store (403)
ONLY_ALICE = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return username ~= 'bob' and not (username == 'carol' and method == 'POST')
end
"""


def test_pacs_credentials_are_sent_and_never_shown(tiny_bundle: Path, film: np.ndarray, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """user:password in the URL is HTTP Basic, out of every row, message and log; --auth-file sends its header."""
    caplog.set_level(logging.DEBUG)
    password = "s3cret-pw"
    study = generate_uid()
    with running_orthanc(tmp_path / "orthanc", users={"alice": password, "bob": password, "carol": password},
                         lua=ONLY_ALICE) as root:
        data = chest_dicom(film, StudyInstanceUID=study)
        assert HTTP.post(f"{root}/instances", content=data, auth=("alice", password), timeout=30).status_code == 200
        with_user = root.replace("http://", f"http://alice:{password}@") + "/dicom-web"
        out = tmp_path / "pacs.json"
        base = ["pacs", str(tiny_bundle), "--backend", "torch", "--study"]
        assert cli.main([*base, study, "--url", with_user, "--out", str(out)]) == 0
        assert json.loads(out.read_text())[0]["path"].startswith(f"{root}/dicom-web/studies/{study}/")
        assert cli.main([*base, generate_uid(), "--url", with_user]) == 2  # not found: the URL in the message
        assert cli.main([*base, study, "--url", with_user.replace(password, "wr0ng-pw")]) == 2  # 401
        # the status, the request and what to do, not requests' "401 Client Error ... for url: " and the query
        err = capsys.readouterr().err
        assert "not found at" in err and err.endswith(
            f"HTTP 401 Unauthorized to GET /dicom-web/studies/{study}/instances: the PACS refused the credentials "
            f"given in authorization (--auth-file or {AUTH_ENV}) or as user:password@ in url (--url): check them, "
            "and that a token has not expired\n")
        token = base64.b64encode(f"alice:{password}".encode()).decode()
        key = tmp_path / "auth"
        key.write_text(f"Basic {token}\n")
        assert cli.main([*base, study, "--url", f"{root}/dicom-web", "--auth-file", str(key), "--out",
                         str(tmp_path / "by-header.json")]) == 0
        # a ~/.netrc login for the host replaced the header given (refused: 401, exit 2); it is never read
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login mallory password stale\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        assert cli.main([*base, study, "--url", f"{root}/dicom-web", "--auth-file", str(key)]) == 0
        assert cli.main([*base, study, "--url", f"{root}/dicom-web"]) == 2  # no credentials given: none sent
        assert "the PACS asks for credentials and none were given: give its Authorization header value in " \
               f"authorization (--auth-file FILE, or {AUTH_ENV}), or user:password@ in url (--url)" \
               in capsys.readouterr().err
        # another path than the DICOMweb root: the PACS's 404 says what to check
        assert cli.main([*base, study, "--url", with_user.removesuffix("/dicom-web")]) == 2
        assert capsys.readouterr().err.endswith(
            f"HTTP 404 Not Found to GET /studies/{study}/instances: the PACS has no such study, or url (--url) is "
            "not its DICOMweb root (Orthanc's: http://HOST:8042/dicom-web)\n")
        # a user the PACS knows but does not let read (Orthanc's filter answers 403)
        assert cli.main([*base, study, "--url", f"http://bob:{password}@{root.removeprefix('http://')}/dicom-web"]) == 2
        assert capsys.readouterr().err.endswith(
            f"HTTP 403 Forbidden to GET /dicom-web/studies/{study}/instances: the credentials given are not allowed "
            "this request: ask the PACS's administrator for DICOMweb access (to read, and with store (--store) to "
            "store)\n")
        # a user who may read but not store: each film's reports refused, its row saying what to do
        reader = f"http://carol:{password}@{root.removeprefix('http://')}/dicom-web"
        assert cli.main([*base, study, "--url", reader, "--store", "--out", str(tmp_path / "read-only.json")]) == 1
        [row] = json.loads((tmp_path / "read-only.json").read_text())
        assert row["stored"] == [] and len(row["not_stored"]) == 1
        assert row["warnings"][-1] == ("the PACS does not let the credentials given store (HTTP 403 Forbidden): ask "
                                       "its administrator for STOW-RS access, or run without store (--store)")
        assert "ask its administrator for STOW-RS access" in capsys.readouterr().err
        monkeypatch.delenv("NETRC")
        key.write_text("")
        assert cli.main([*base, study, "--url", f"{root}/dicom-web", "--auth-file", str(key)]) == 2
    err = capsys.readouterr().err
    assert "is empty" in err
    for text in (out.read_text(), err, caplog.text):
        assert not any(secret in text for secret in (password, "wr0ng-pw", token))


def test_a_pacs_url_with_a_query_or_fragment_is_refused_and_plain_http_credentials_are_warned_of(
    orthanc: str, tiny_bundle: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """A token in the URL (?token=...) was shown in the error message and made every request's URL a broken one."""
    for url in (f"{orthanc}/dicom-web?token=t0ken-value", f"{orthanc}/dicom-web#t0ken-value"):
        assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", generate_uid()]) == 2
        err = capsys.readouterr().err
        assert "query string or a fragment" in err and "--auth-file" in err and "t0ken" not in err
    caplog.set_level(logging.WARNING, logger="pneumoscan")
    cases = {("http://alice:pw@pacs.hospital.test/dicom-web", None): True,
             ("http://pacs.hospital.test/dicom-web", "Bearer t0ken"): True,
             ("https://alice:pw@pacs.hospital.test/dicom-web", None): False,  # encrypted
             ("http://pacs.hospital.test/dicom-web", None): False,  # no credentials
             ("http://alice:pw@127.0.0.1:8042/dicom-web", None): False,  # this machine
             ("http://localhost:8042/dicom-web", "Bearer t0ken"): False,
             ("http://[::1]:8042/dicom-web", "Bearer t0ken"): False}  # fmt: skip
    for (url, authorization), warned in cases.items():
        caplog.clear()
        _session(url, authorization)
        assert ("over plain http" in caplog.text) is warned, url
        assert "t0ken" not in caplog.text and ":pw" not in caplog.text


def test_predict_tta_reports_are_other_reports_than_plain_ones(tiny_bundle: Path, film: np.ndarray,
                                                               tmp_path: Path) -> None:
    """`predict --tta` scores another way: its Observation is another one, even at the same threshold."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    card = load_card(bundle)
    card.tta_threshold = card.threshold
    save_card(bundle, card)
    write_onnx_spec(bundle, bundle / ONNX_NAME)  # as `pneumoscan threshold` writes the sidecar's thresholds too
    (tmp_path / "film.dcm").write_bytes(chest_dicom(film))
    identifiers = []
    for extra in ([], ["--tta"]):
        out = tmp_path / f"fhir{len(extra)}"
        assert cli.main(["predict", str(bundle), str(tmp_path / "film.dcm"), "--fhir", str(out), *extra,
                         "--out", str(tmp_path / "r.csv")]) == 0
        identifiers.append(json.loads(next(out.iterdir()).read_text())["identifier"])
    assert identifiers[0] != identifiers[1]


@pytest.mark.parametrize("field", [{"vr": "CS", "Value": 5}, {"Value": ["LL"]}, "LL"],
                         ids=["a value not a list", "no vr", "not an object"])
def test_a_malformed_view_in_the_search_answer_leaves_the_decision_to_the_films_own_header(field: object) -> None:
    """It ended `pacs` in a TypeError or KeyError traceback before any film was read."""
    dx = {"00080060": {"vr": "CS", "Value": ["DX"]}}
    # retrieved; its own header's scope warnings then apply
    assert not_scored(_recorded({**dx, "00185101": field})) is None
    lateral = _recorded({**dx, "00185101": {"vr": "CS", "Value": ["LL"]}})
    assert not_scored(lateral).startswith("lateral view (LL)")


def test_the_pacs_credential_from_the_environment_is_read_as_serve_reads_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PNEUMOSCAN_PACS_AUTH ending in a line break ended `pacs` in requests' refusal of the header, which printed
    the credential; a file or a variable of two lines is refused without showing it."""
    monkeypatch.setenv("PNEUMOSCAN_PACS_AUTH", "Bearer t0ken-value\n")
    assert read_authorization() == "Bearer t0ken-value"
    for source in ("env", "file"):
        (tmp_path / "auth").write_text("Bearer t0ken-value\nsecond line\n")
        monkeypatch.setenv("PNEUMOSCAN_PACS_AUTH", "Bearer t0ken-value\nsecond line")
        with pytest.raises(ValueError, match="holds more than one line") as refused:
            read_authorization(tmp_path / "auth" if source == "file" else None)
        assert "t0ken" not in str(refused.value)
    monkeypatch.setenv("PNEUMOSCAN_PACS_AUTH", "")  # set but empty, as a unit file writes it: refused as the key is
    with pytest.raises(ValueError, match="PNEUMOSCAN_PACS_AUTH is set but empty or only blanks"):
        read_authorization()
    monkeypatch.delenv("PNEUMOSCAN_PACS_AUTH")
    assert read_authorization() is None


def test_a_credential_file_every_user_can_read_is_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`echo 'Bearer ...' > pacs-auth` leaves the token readable by every user of the machine (mode 644 under the
    usual umask), and nothing said so; a file of the owner's and its group's alone is not warned of."""
    key = tmp_path / "pacs-auth"
    key.write_text("Bearer t0ken-value\n")
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_authorization(key) == "Bearer t0ken-value"
    assert [r.getMessage() for r in caplog.records] == [
        f"the auth file {key} is readable by every user of this machine (mode 644): make it readable by the "
        "account that runs pneumoscan alone (chmod 600, or 640 with a group of its own)"]
    caplog.clear()
    key.chmod(0o640)
    assert read_authorization(key) == "Bearer t0ken-value" and not caplog.records


def test_a_reading_near_the_threshold_is_said_so_in_the_sr_and_the_fhir_notes(film: np.ndarray) -> None:
    """A film called present 0.0003 above the threshold had been filed as "Pneumonia: Present" with no word that it
    could have been called either way (the JSON answer, predict's rows and the page say it)."""
    from pneumoscan.interop.sr import NEAR_THRESHOLD

    source = header(film)
    reading = {**READING, "sop_instance_uid": source.SOPInstanceUID, "study_instance_uid": source.StudyInstanceUID}
    for near in (True, False):
        result = {**reading, "near_threshold": near}
        notes = [n.text for n in build_observation(result, "m", "v", "onnx", source).note]
        texts = [str(e.value) for e in build_sr(source, result, "m", "v").iterall() if e.keyword == "TextValue"]
        assert (NEAR_THRESHOLD in notes) is near and (NEAR_THRESHOLD in texts) is near


def test_a_film_replaced_after_it_was_scored_gets_no_report(tiny_bundle: Path, film: np.ndarray,
                                                            tmp_path: Path) -> None:
    """A drop folder that reuses names: the file scored, then another patient's film under its name before the
    reports were written. Its header had been read again for the reports, and the first film's reading was filed
    under the second film's patient and study (SR, Secondary Capture and FHIR Observation alike)."""
    path = tmp_path / "drop" / "film.dcm"
    path.parent.mkdir()
    path.write_bytes(chest_dicom(film))
    [row] = predict_paths(tiny_bundle, [path])
    control = dict(row, warnings=list(row["warnings"]))
    write_reports([control], tiny_bundle, sr_dir=tmp_path / "control", fhir_dir=tmp_path / "control")
    assert {"dicom_sr", "fhir"} <= control.keys(), "the film as scored is reportable"
    path.write_bytes(chest_dicom(film, PatientID="OTHER-PATIENT"))  # its own study, series and instance
    write_reports([row], tiny_bundle, sr_dir=tmp_path / "sr", fhir_dir=tmp_path / "fhir")
    assert not {"dicom_sr", "fhir"} & row.keys()
    assert [w.split(":")[0] for w in row["warnings"][-2:]] == ["no FHIR Observation written", "no DICOM SR written"]
    assert all("not the film that was scored" in w for w in row["warnings"][-2:])
    assert not [*(tmp_path / "sr").iterdir(), *(tmp_path / "fhir").iterdir()]


def test_a_film_replaced_while_it_is_read_gets_no_reading(tiny_bundle: Path, film: np.ndarray, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The pixels and the header (its UIDs, the scope checks) are read, then the panel for the overlay: another
    film put under the name between those reads would have given one film's reading with another's identity."""
    from pneumoscan.inference import predict

    path = tmp_path / "film.dcm"
    path.write_bytes(chest_dicom(film))
    read = predict.read_described

    def replaced_after(source: str, *args: object) -> tuple[np.ndarray, dict]:
        found = read(source, *args)
        Path(source).write_bytes(chest_dicom(film, PatientID="OTHER-PATIENT"))  # the next film, same name
        return found

    monkeypatch.setattr(predict, "read_described", replaced_after)
    [row] = predict_paths(tiny_bundle, [path], heatmap_dir=tmp_path / "heat")
    assert row["error"] == predict.CHANGED and "probability" not in row
    assert not list((tmp_path / "heat").iterdir())


# a hostile PACS: what pacs does with answers that are malformed, another film's, redirected, huge or endless


@contextmanager
def hostile_front(upstream: str, wado: dict[str, object] | None = None, extra: list[dict] | None = None,
                  redirect: dict[str, str] | None = None, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """A DICOMweb front on ``upstream`` that answers WADO-RS of instance UID with ``wado[UID](handler)``, adds the
    ``extra`` items to its QIDO-RS instance search, and answers a method (``GET`` for the searches, ``POST``) with
    a 307 to ``redirect[method]``; the rest passes through, over ``tls`` when given. Yields the front's URL."""
    where = urlsplit(upstream)
    root = f"{where.scheme}://{where.netloc}"

    class Front(_Quiet):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if "GET" in (redirect or {}) and "/series/" not in path:
                self.send_response(302)
                self.send_header("Location", f"{redirect['GET']}{self.path}")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            answer = (wado or {}).get(path.rpartition("/")[2]) if "/series/" in path else None
            if answer is not None:
                return answer(self)
            if path.endswith("/instances") and extra:
                found = HTTP.get(f"{root}{self.path}", timeout=30).json()
                body = json.dumps(found + extra if found else []).encode()  # the offset page after them: empty
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return self.wfile.write(body)
            answer = _pass_through(self, f"{root}{self.path}")
            self.end_headers()
            self.wfile.write(answer.content)

        def do_POST(self) -> None:
            parts = _stow_parts(self)
            if "POST" in (redirect or {}):
                self.send_response(307)
                self.send_header("Location", f"{redirect['POST']}{self.path}")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            content, kind = dicom_multipart(parts)
            answer = HTTP.post(f"{root}{self.path}", content=content, timeout=30,
                                headers={"Content-Type": kind, "Accept": "application/dicom+json"})
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

    with serving(Front, tls) as port:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}{where.path}"


def private_ca(folder: Path, name: str = "pneumoscan test hospital CA") -> tuple[Path, ssl.SSLContext]:
    """A hospital's own CA, its certificate in ``folder/ca.pem``, and a server context whose certificate for
    127.0.0.1 it signed: a PACS that no public CA vouches for. A client certificate it signed, with its key, is in
    ``folder/client.pem`` (mode 600), for a PACS that asks for one (mutual TLS). ``name``: the CA's."""
    def made(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
             ca: bool) -> x509.Certificate:
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = made(name, ca_key, name, ca_key, ca=True)
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = made("127.0.0.1" if role == "server" else "pneumoscan", key, name, ca_key, ca=False)
        (folder / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (folder / f"{role}.pem").chmod(0o600)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem")
    return folder / "ca.pem", context


def _wado_answer(body: bytes, kind: str = "application/dicom", length: int | None = None,
                 drip_s: float = 0.0) -> object:
    """A WADO-RS answer of one ``kind`` part holding ``body``: with Content-Length ``length`` when given (else
    none, the body ending with the connection), a byte every ``drip_s`` seconds when given."""
    boundary = "hostile"
    message = f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + body + f"\r\n--{boundary}--\r\n".encode()

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", f'multipart/related; type="{kind}"; boundary={boundary}')
        if length is not None:
            handler.send_header("Content-Length", str(length))
        handler.end_headers()
        try:
            if not drip_s:
                return handler.wfile.write(message)
            for byte in message[:40]:  # the reader gives up long before
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(drip_s)
        except OSError:  # it hung up: what is asked of it
            pass

    return answer


def _upload(orthanc: str, data: bytes) -> Dataset:
    assert HTTP.post(f"{orthanc}/instances", content=data, timeout=30).status_code == 200
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def test_a_malformed_answer_or_uid_is_that_instances_error_and_the_other_films_are_scored(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """An HTML page for one film's WADO-RS had ended `pacs` in an InvalidDicomError traceback, with no results; a
    path for a UID in the search answer, in exit status 2."""
    study = generate_uid()
    good, html = (_upload(orthanc, chest_dicom(film, StudyInstanceUID=study)) for _ in range(2))
    bad_uid = {"0020000D": {"vr": "UI", "Value": [study]}, "0020000E": {"vr": "UI", "Value": [good.SeriesInstanceUID]},
               "00080018": {"vr": "UI", "Value": ["../../../../tmp/pwned"]}, "00080060": {"vr": "CS", "Value": ["DX"]},
               "00280010": {"vr": "US", "Value": [256]}}  # fmt: skip
    out = tmp_path / "pacs.json"
    page = _wado_answer(b"<html><body>Session expired</body></html>", kind="text/html")
    with hostile_front(f"{orthanc}/dicom-web", wado={html.SOPInstanceUID: page}, extra=[bad_uid]) as url:
        assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", study, "--out", str(out),
                         "--backend", "torch"]) == 1
    rows = {r["sop_instance_uid"]: r for r in json.loads(out.read_text())}
    assert "probability" in rows[good.SOPInstanceUID]
    assert rows[html.SOPInstanceUID]["error"] == ("WADO-RS could not retrieve it: its answer's part is text/html, not "
                                                  "application/dicom")
    assert rows["../../../../tmp/pwned"]["error"].startswith("the PACS's search answer gives it an invalid UID")
    assert not Path("/tmp/pwned.dcm").exists()


def test_another_instance_than_asked_for_is_not_scored_nor_reported(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path
) -> None:
    """Asked for one film, a PACS returned another study's: it was scored, and its SR filed in the study asked
    for, the row mixing the URL of one with the UIDs of the other."""
    study = generate_uid()
    asked = _upload(orthanc, chest_dicom(film, StudyInstanceUID=study))
    other = chest_dicom(film[::-1])  # another study's film, not on the PACS
    out = tmp_path / "pacs.json"
    with hostile_front(f"{orthanc}/dicom-web", wado={asked.SOPInstanceUID: _wado_answer(other)}) as url:
        assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", study, "--store", "--out", str(out),
                         "--backend", "torch"]) == 1
    [row] = json.loads(out.read_text())
    assert row["sop_instance_uid"] == asked.SOPInstanceUID and "probability" not in row and "stored" not in row
    assert row["error"] == ("WADO-RS could not retrieve it: the PACS returned another instance than asked for: not "
                            "scored")
    assert _held(orthanc, study) == {asked.SOPInstanceUID}  # no report filed


def test_a_redirect_is_refused_naming_its_host_and_nothing_is_sent_there(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A 307 on STOW-RS had sent the SR, patient name and ID in it, to another host; a 302 on the search was
    followed too."""
    study = generate_uid()
    _upload(orthanc, chest_dicom(film, StudyInstanceUID=study))
    received = []

    class Sink(_Quiet):
        def do_GET(self) -> None:
            received.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        do_POST = do_GET

    with serving(Sink) as sink:
        elsewhere = f"http://localhost:{sink}"
        with hostile_front(f"{orthanc}/dicom-web", redirect={"POST": elsewhere}) as url:
            row = _pacs_store(tiny_bundle, url, study, tmp_path / "pacs.json", status=1)
        with hostile_front(f"{orthanc}/dicom-web", redirect={"GET": elsewhere}) as url:
            assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", study, "--backend", "torch"]) == 2
    assert received == []
    assert row["stored"] == [] and len(row["not_stored"]) == 2
    assert all("(HTTP 307 Temporary Redirect: the PACS redirected to localhost; redirects are not followed" in w
               for w in row["warnings"])
    assert ("the PACS redirected to localhost; redirects are not followed: give url (--url) the PACS's own DICOMweb "
            "root") in capsys.readouterr().err


def test_a_huge_or_endless_answer_is_cut_off_and_the_other_films_are_scored(
    orthanc: str, tiny_bundle: Path, film: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 GiB WADO-RS body had grown the process to 4.4 GB, and a byte every 5 s kept it reading for ever (the
    timeout bounds each read only). Here with a cap of 1 MiB and a deadline of 1.5 s (--film-timeout); a film whose
    answer does not start within --read-timeout (1 s: the study's QIDO-RS through Orthanc must answer within it on a
    busy machine) is that film's error, naming the option (it was said to have been tried 3 times, and a read timeout
    is tried once)."""
    monkeypatch.setattr("pneumoscan.interop.dicomweb.MAX_INSTANCE_BYTES", 2**20)
    study = generate_uid()
    good, declared, endless, slow, stalled = (_upload(orthanc, chest_dicom(film, StudyInstanceUID=study))
                                              for _ in range(5))

    def stall(handler: BaseHTTPRequestHandler) -> None:  # nothing, until the client gives up (--read-timeout)
        handler.connection.settimeout(30)  # bounded, should the client never give up
        with contextlib.suppress(OSError):
            handler.connection.recv(1)  # nothing more comes: it returns once the client closes

    answers = {declared.SOPInstanceUID: _wado_answer(b"", length=2**30),
               endless.SOPInstanceUID: _wado_answer(bytes(2 * 2**20)),  # no length: till the connection ends
               slow.SOPInstanceUID: _wado_answer(b"", drip_s=0.1), stalled.SOPInstanceUID: stall}
    out = tmp_path / "pacs.json"
    with hostile_front(f"{orthanc}/dicom-web", wado=answers) as url:
        assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", study, "--out", str(out),
                         "--backend", "torch", "--film-timeout", "1.5", "--read-timeout", "1"]) == 1
    rows = {r["sop_instance_uid"]: r for r in json.loads(out.read_text())}
    assert "probability" in rows[good.SOPInstanceUID]
    assert rows[declared.SOPInstanceUID]["error"].endswith(f"its answer of {2**30} bytes is over the {2**20} a film "
                                                           "may take")
    assert rows[endless.SOPInstanceUID]["error"].endswith(f"its answer passed the {2**20} bytes a film may take; "
                                                          "cut off")
    assert ("its answer took over 1.5 s (connection.film_s, --film-timeout); cut off after"
            in rows[slow.SOPInstanceUID]["error"])
    assert rows[stalled.SOPInstanceUID]["error"] == ("WADO-RS got no answer for it within 1 s (ReadTimeout): if "
                                                     "the PACS is slow rather than down, give it longer with "
                                                     "connection.read_s (--read-timeout SECONDS)")


def test_an_instance_that_gets_no_answer_is_that_instances_error(orthanc: str, tiny_bundle: Path, film: np.ndarray,
                                                                tmp_path: Path) -> None:
    """A PACS that dropped the connection on one film's WADO-RS (after the tries) had ended the run with status 2
    and no results for the films it did send."""
    study = generate_uid()
    good, dropped = (_upload(orthanc, chest_dicom(film, StudyInstanceUID=study)) for _ in range(2))

    def drop(handler) -> None:
        handler.close_connection = True  # no answer at all

    out = tmp_path / "pacs.json"
    with hostile_front(f"{orthanc}/dicom-web", wado={dropped.SOPInstanceUID: drop}) as url:
        assert cli.main(["pacs", str(tiny_bundle), "--url", url, "--study", study, "--out", str(out),
                         "--backend", "torch"]) == 1
    rows = {r["sop_instance_uid"]: r for r in json.loads(out.read_text())}
    assert "probability" in rows[good.SOPInstanceUID]
    assert rows[dropped.SOPInstanceUID]["error"] == "WADO-RS got no answer for it (ConnectionError), after 3 tries"



def test_the_pacs_is_tried_again_when_busy_or_dropped_with_a_warning_each_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every request of `pacs` (the searches too) goes through the session's tries: a busy answer or a dropped
    connection is tried ATTEMPTS times, a warning each time, the last busy answer a requests.HTTPError that carries
    it (a STOW-RS refusal is read from it); the answer's Retry-After is the wait (up to --read-timeout), a malformed one
    the usual wait; a read timeout, a 413 with a Retry-After and other refusals are not tried again."""
    monkeypatch.setattr("pneumoscan.interop.dicomweb.FIRST_WAIT_S", 0.01)
    answers = {"/busy-then-ok": [503, 503, 200], "/busy": [503] * 4, "/drop": [NO_ANSWER] * 4,
               "/after": [(503, "3600"), 200], "/bad-after": [(429, "soon"), 200], "/too-large": [(413, "1"), 200],
               "/slow": ["slow", 200]}  # fmt: skip
    asked: list[str] = []

    class Pacs(_Quiet):
        def do_GET(self) -> None:
            asked.append(self.path)
            answer = answers[self.path][asked.count(self.path) - 1]
            if answer == NO_ANSWER:
                return  # HTTP/1.0: the connection closes unanswered
            if answer == "slow":  # no answer until the client gives up: its read timeout, whatever the load
                self.connection.settimeout(30)  # bounded, should the client never give up
                with contextlib.suppress(OSError):
                    self.connection.recv(1)  # nothing more comes: it returns once the client closes
                return
            status, after = answer if isinstance(answer, tuple) else (answer, None)
            self.send_response(status)
            if after is not None:
                self.send_header("Retry-After", after)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            _request_body(self)
            self.do_GET()

    caplog.set_level(logging.WARNING, logger="pneumoscan")
    with serving(Pacs) as port:
        root, session = _session(f"http://127.0.0.1:{port}", None, Connection(read_s=0.25))  # the longest Retry-After
        assert session.get(f"{root}/busy-then-ok", timeout=5).status_code == 200
        with pytest.raises(requests.HTTPError) as busy:
            _post(session, f"{root}/busy", [b"DICM"])
        assert busy.value.response.status_code == 503
        with pytest.raises(requests.ConnectionError):
            _post(session, f"{root}/drop", [b"DICM"])
        started = time.monotonic()
        assert session.get(f"{root}/after", timeout=5).status_code == 200
        assert time.monotonic() - started >= 0.25
        assert session.get(f"{root}/bad-after", timeout=5).status_code == 200
        assert session.get(f"{root}/too-large", timeout=5).status_code == 413
        with pytest.raises(requests.ReadTimeout):
            session.get(f"{root}/slow", timeout=0.2)
    assert [asked.count(path) for path in answers] == [3, 3, 3, 2, 2, 1, 1]
    first, second = "tried again in 0.01 s", "tried again in 0.02 s"
    assert [r.getMessage() for r in caplog.records if r.name == "pneumoscan.interop.dicomweb"] == [
        f"GET /busy-then-ok try 1 of 3: HTTP 503; {first}", f"GET /busy-then-ok try 2 of 3: HTTP 503; {second}",
        f"POST /busy try 1 of 3: HTTP 503; {first}", f"POST /busy try 2 of 3: HTTP 503; {second}",
        f"POST /drop try 1 of 3: ProtocolError; {first}", f"POST /drop try 2 of 3: ProtocolError; {second}",
        "GET /after try 1 of 3: HTTP 503; tried again in 0.25 s", f"GET /bad-after try 1 of 3: HTTP 429; {first}"]


def test_the_dicom_part_of_a_wado_answer_is_taken_byte_for_byte_and_anything_else_is_refused() -> None:
    """A film's bytes hold line breaks of every kind and "--" runs, and end in CRLF: the part is the file as it was
    sent, whatever the answer's framing (the project's own, or a preamble, quoted parameters and an epilogue)."""
    pixels = np.frombuffer(b"\n\n\r--\r\n\r\n--\n--\r\n" * 16, np.uint8).reshape(16, 16)
    data = dicom_bytes(pixels, bits=8)
    assert data.endswith(b"\r\n") and all(seq in data for seq in (b"\r\n", b"\n\n", b"\r--", b"\r\n\r\n--"))
    body, kind = dicom_multipart([data])
    assert _only_part(body, kind) == data
    framed = b"a preamble\r\n--b0und\r\nContent-Type: Application/DICOM; transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n"
    assert _only_part(framed + data + b"\r\n--b0und--\r\nan epilogue",
                      'Multipart/Related; type="application/dicom; x=1"; boundary="b0und"') == data
    assert np.array_equal(pydicom.dcmread(io.BytesIO(_only_part(body, kind))).pixel_array, pixels)
    part = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
    refused = {("text/html", body): "its answer is text/html, not multipart/related with a boundary",
               ("multipart/related", body): "its answer is multipart/related, not multipart/related with a boundary",
               ("", body): "its answer is untyped, not multipart/related with a boundary",
               ("multipart/related; boundary=b", part * 2 + b"--b--"): "its answer holds 2 parts, not one",
               ("multipart/related; boundary=b", part): "its answer holds 0 parts, not one",
               ("multipart/related; boundary=b", part.replace(b"application/dicom", b"text/html") + b"--b--"):
                   "its answer's part is text/html, not application/dicom",
               ("multipart/related; boundary=b", b"--b\r\n\r\n" + data + b"\r\n--b--"):
                   "its answer's part is untyped, not application/dicom"}  # fmt: skip
    for (content_type, answer), message in refused.items():
        with pytest.raises(ValueError) as e:
            _only_part(answer, content_type)
        assert str(e.value) == message


def test_a_report_at_a_new_threshold_names_the_report_it_replaces(
    tiny_bundle: Path, tiny_dataset: Path, films: dict[str, Path], tmp_path: Path
) -> None:
    """`pneumoscan threshold` reads the same weights at another threshold, so a film's report is another object (it
    may say Absent where the first said Present): written where the earlier one is, it names that one in its
    PredecessorDocumentsSequence, and the earlier one is kept beside it."""
    site = tmp_path / "site.csv"
    write_manifest([make_record(r.path, r.label) for r in discover(tiny_dataset).split("test")], site)
    retuned = tmp_path / "retuned"
    assert cli.main(["threshold", str(tiny_bundle), str(site), "--youden", "--out", str(retuned)]) == 0
    assert load_card(retuned).threshold != load_card(tiny_bundle).threshold
    sr_dir, film = tmp_path / "sr", str(films["in_scope"])
    for bundle in (tiny_bundle, retuned):
        assert cli.main(["predict", str(bundle), film, "--backend", "torch", "--dicom-sr", str(sr_dir)]) == 0
    earlier, now = (pydicom.dcmread(sr_dir / name) for name in ("a_in_scope.sr.dcm", "a_in_scope-2.sr.dcm"))
    assert now.SOPInstanceUID != earlier.SOPInstanceUID and "PredecessorDocumentsSequence" not in earlier
    [study] = now.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    [report] = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID, report.ReferencedSOPInstanceUID,
            report.ReferencedSOPClassUID) == (earlier.StudyInstanceUID, earlier.SeriesInstanceUID,
                                              earlier.SOPInstanceUID, earlier.SOPClassUID)
    # read in another mode (TTA: its own thresholds, its own reports) the film has no earlier report here
    assert cli.main(["predict", str(retuned), film, "--tta", "--dicom-sr", str(sr_dir)]) == 0
    assert "PredecessorDocumentsSequence" not in pydicom.dcmread(sr_dir / "a_in_scope-3.sr.dcm")
