"""What pneumoscan's DICOM SR, Grad-CAM Secondary Capture and FHIR Observation do with the values they copy from a
film (its patient name and id, accession number, study id, referring physician, dates, character set): every value
is carried as the film holds it (within its VR's limits, into an object dciodvfy accepts), or the film gets no such
object and one line that names the attribute and what is wrong, never the value. A value cut short, or transcoded
from a guessed character set, would file the result under another patient or study."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.observation import Observation
from pydicom.dataset import Dataset

from pneumoscan import cli
from pneumoscan.data.readers.dicom import read_dataset
from pneumoscan.interop.fhir import build_observation
from pneumoscan.interop.sr import build_heatmap_sc, build_sr, report_files
from tests import test_interop
from tests.builders import UNCHECKED
from tests.test_dicom_conformance import dciodvfy
from tests.test_interop import READING, _overlay_png, chest_dicom

film = test_interop.film  # a real training film (224 x 224) as 12-bit values
# pydicom's and highdicom's complaints about the values these films hold on purpose
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:pydicom"),
              pytest.mark.filterwarnings("ignore::UserWarning:highdicom")]


def source(pixels: np.ndarray, **changes: object) -> Dataset:
    """The header of ``chest_dicom(pixels, **changes)`` as a PACS would hand it over: ``bytes`` values are written
    as they are (a film's own bytes, in whatever character set), values beyond the standard as a device writes them."""
    with pydicom.config.disable_value_validation():
        return pydicom.dcmread(io.BytesIO(chest_dicom(pixels, **changes)))


def reading(header: Dataset) -> dict:
    """The result of reading ``header``'s film, with the UIDs predict and serve add."""
    return {**READING, "study_instance_uid": header.StudyInstanceUID, "series_instance_uid": header.SeriesInstanceUID,
            "sop_instance_uid": header.SOPInstanceUID}


def refusals(header: Dataset) -> list[str]:
    """Why the SR and the overlay of ``header`` are refused, each ('' when it is written)."""
    found = []
    for build in (lambda: build_sr(header, READING, "m-1", "v"),
                  lambda: build_heatmap_sc(header, _overlay_png(), "m-1", "v")):
        try:
            build()
            found.append("")
        except ValueError as e:
            found.append(str(e))
    return found


# A value that says no one thing: (changes, the attribute named, why). Copied, it would make a report of something
# else than the film holds (two descriptions, an accession number with a tab a RIS does not match).
NOT_ONE_VALUE = {
    "a study description with a backslash": ({"StudyDescription": "CHEST\\PA"}, "StudyDescription",
                                             "more than one value"),
    "a tab in the accession number": ({"AccessionNumber": "AB\tC"}, "AccessionNumber",
                                      "control characters, which its VR SH does not hold"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NOT_ONE_VALUE))
def test_a_value_that_says_no_one_thing_gets_no_report_and_the_refusal_names_it(film: np.ndarray, case: str) -> None:
    changes, keyword, why = NOT_ONE_VALUE[case]
    header = source(film, **changes)
    expected = f"the source DICOM's {keyword} is malformed ({why}): a report cannot carry it"
    assert refusals(header) == [expected, expected]
    assert not any(str(value) in expected for value in changes.values())


# Values longer than their VR holds, or not of its form, as real films hold them: the PACS that holds the film holds
# them so, and files the report by them; cut to fit, an accession number or a patient id names another study or
# patient.
BEYOND_THE_VR = {
    "AccessionNumber": "A" * 17, "PatientID": "P" * 65, "StudyID": "S" * 17, "PatientName": "Doe^Jane^Ann^Dr^Jr^Kay",
    "ReferringPhysicianName": "R" * 65, "IssuerOfPatientID": "I" * 65, "PatientAge": "0003Y",
}


@pytest.mark.parametrize("keyword", list(BEYOND_THE_VR))
def test_a_value_beyond_its_vr_is_copied_as_the_film_holds_it(film: np.ndarray, keyword: str) -> None:
    header = source(film, **{keyword: BEYOND_THE_VR[keyword]})
    assert refusals(header) == ["", ""]
    for part in report_files(header, READING, _overlay_png(), "m-1", "v"):
        with pydicom.config.disable_value_validation():
            assert str(pydicom.dcmread(io.BytesIO(part))[keyword].value) == BEYOND_THE_VR[keyword]


def test_values_at_their_vrs_limits_are_copied_as_held_into_valid_objects(film: np.ndarray, tmp_path: Path) -> None:
    """The limits are the standard's, not tighter: a value that fills its VR, a name of five components in three
    groups, and values padded with spaces or a NUL (which are no part of them) are copied as the film means them."""
    held = {"AccessionNumber": "A" * 16, "PatientID": "P" * 64, "StudyID": "S" * 16,
            "PatientName": "Doe^Jane^Ann^Dr^Jr=D^J=D^J", "ReferringPhysicianName": "R" * 64,
            "IssuerOfPatientID": "I" * 64, "StudyDescription": "X" * 64}
    padded = {"AccessionNumber": (b"ACC-1\x00", "ACC-1"), "PatientID": (b"MRN-1 ", "MRN-1")}
    for header, meant in ((source(film, **held), held),
                          (source(film, **{k: raw for k, (raw, _) in padded.items()}), {k: v for k, (_, v) in
                                                                                          padded.items()})):
        for i, part in enumerate(report_files(header, READING, _overlay_png(), "m-1", "v")):
            path = tmp_path / f"{i}.dcm"
            path.write_bytes(part)
            made = pydicom.dcmread(path)
            assert {k: str(made[k].value) for k in meant} == meant
            assert dciodvfy(path)[1] == [], path


# A film's bytes that say no one value: (changes, the attribute named, why). pydicom reads them anyway (as Latin-1, or
# with replacement characters), and the report carried that reading: another name or id than the film's.
UNDECODED = "characters that do not decode in the character set its SpecificCharacterSet names"
BEYOND_ASCII = "characters beyond ASCII, and no SpecificCharacterSet naming a character set that holds them"
MISREAD = "characters beyond ASCII where its ISO 2022 escape sequences name no character set that holds them"
UTF8_AS_LATIN1 = "characters written in UTF-8 where its SpecificCharacterSet names ISO_IR 100 (Latin-1)"
JAPANESE, KOREAN = ["", "ISO 2022 IR 87"], ["", "ISO 2022 IR 149"]
NOT_AS_HELD = {
    "UTF-8 bytes, no character set named": ({"PatientName": "Müller^Jürgen".encode()}, "PatientName", BEYOND_ASCII),
    "Latin-1 bytes under ISO_IR 6": ({"SpecificCharacterSet": "ISO_IR 6", "PatientName": "Müller^Jürgen".encode(
        "latin-1")}, "PatientName", BEYOND_ASCII),
    "bytes that are no UTF-8 under ISO_IR 192": ({"SpecificCharacterSet": "ISO_IR 192",
                                                  "PatientName": b"M\xfcller^J\xfcrgen"}, "PatientName", UNDECODED),
    "bytes that are no JIS X 0208 after its escape": ({"SpecificCharacterSet": ["", "ISO 2022 IR 87"],
                                                       "PatientName": b"Yamada^Tarou=\x1b$B\xff\xfe\x1b(B"},
                                                      "PatientName", UNDECODED),
    # pydicom reads these as Latin-1, silently: 'Yamadaé^Taro', '山田é^Taro', 'Kim±è' (JIS X 0208 and KS X 1001 hold
    # '±' too, so only the bytes tell)
    "a byte beyond ASCII before any ISO 2022 escape": ({"SpecificCharacterSet": JAPANESE,
                                                        "PatientName": b"Yamada\xe9^Taro"}, "PatientName", MISREAD),
    "a byte beyond ASCII after ESC ( B": ({"SpecificCharacterSet": JAPANESE,
                                           "PatientName": b"\x1b$B;3ED\x1b(B\xe9^Taro"}, "PatientName", MISREAD),
    "Korean bytes without ESC $ ) C": ({"SpecificCharacterSet": KOREAN, "PatientID": b"Kim\xb1\xe8"}, "PatientID",
                                       MISREAD),
    "Korean bytes after a delimiter, not designated again": (
        {"SpecificCharacterSet": KOREAN, "PatientName": b"\x1b$)C\xc8\xab^\xb1\xe6\xb5\xbf"}, "PatientName", MISREAD),
    "katakana's G1 after ESC ( B, read as Latin-1": (
        {"SpecificCharacterSet": ["ISO 2022 IR 13", "ISO 2022 IR 87"], "AccessionNumber": b"\x1b$B;3\x1b(B\xd4"},
        "AccessionNumber", MISREAD),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NOT_AS_HELD))
def test_a_value_whose_characters_are_not_known_gets_no_report(film: np.ndarray, case: str) -> None:
    changes, keyword, why = NOT_AS_HELD[case]
    expected = f"the source DICOM's {keyword} is malformed ({why}): a report cannot carry it"
    assert refusals(source(film, **changes)) == [expected, expected]


@pytest.mark.parametrize("charset, raw, name", [
    ("ISO_IR 100", "Müller^Jürgen".encode("latin-1"), "Müller^Jürgen"),
    ("ISO_IR 192", "Müller^Jürgen=山田^太郎".encode(), "Müller^Jürgen=山田^太郎"),
    ("ISO_IR 203", "Œuvre^Zoé".encode("iso8859_15"), "Œuvre^Zoé"),  # Latin-9, which pydicom 3.0 read as Latin-1
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう".encode("iso2022_jp"),
     "Yamada^Tarou=山田^太郎=やまだ^たろう"),
])  # fmt: skip
def test_a_name_in_a_named_character_set_is_copied_character_for_character(film: np.ndarray, tmp_path: Path,
                                                                            charset: object, raw: bytes,
                                                                            name: str) -> None:
    for i, part in enumerate(report_files(source(film, SpecificCharacterSet=charset, PatientName=raw), READING,
                                          _overlay_png(), "m-1", "v")):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(part)
        assert str(pydicom.dcmread(path).PatientName) == name
        assert dciodvfy(path)[1] == [], path


# The ISO 2022 forms films hold (PS3.5 Annex H's examples among them): each byte beyond ASCII in the set its escapes
# (or the first value) put in force, which pydicom reads as that set
ISO_2022_NAMES = {
    "Korean, each group designated": (KOREAN, b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^"
                                      b"\x1b$)C\xb1\xe6\xb5\xbf", "Hong^Gildong=洪^吉洞=홍^길동"),
    "katakana as G1, kanji after ESC $ B": (["ISO 2022 IR 13", "ISO 2022 IR 87"],
                                            b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@"
                                            b"\x1b(J^\x1b$B$?$m$&\x1b(J", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),
    "Latin-1 as G1": ("ISO 2022 IR 100", "Müller^Jürgen".encode("latin-1"), "Müller^Jürgen"),
    "Latin-1 as G1, still in force after ESC ( B": (["ISO 2022 IR 100", "ISO 2022 IR 87"],
                                                     b"M\xfcller=\x1b$B;3ED\x1b(B\xfc", "Müller=山田ü"),
    "Latin-1 designated by ESC - A": (["", "ISO 2022 IR 100"], b"\x1b-AM\xfcller", "Müller"),
    "Cyrillic as G1": ("ISO 2022 IR 144", "Иванов^Иван".encode("iso8859_5"), "Иванов^Иван"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ISO_2022_NAMES))
def test_a_name_in_iso_2022_code_extensions_is_copied_character_for_character(film: np.ndarray, case: str) -> None:
    charset, raw, name = ISO_2022_NAMES[case]
    header = source(film, SpecificCharacterSet=charset, PatientName=raw)
    assert refusals(header) == ["", ""]
    assert str(build_sr(header, READING, "m-1", "v").PatientName) == name


def test_utf8_written_under_latin_1_gets_no_report_and_latin_1_is_copied(film: np.ndarray) -> None:
    """A writer that declares ISO_IR 100 and writes UTF-8: pydicom reads ``MÃ¼ller^JÃ¼rgen``, which a report would
    file under another name than the film's; the same name written in Latin-1 is copied as it is."""
    utf8 = UTF8_AS_LATIN1
    refused = f"the source DICOM's PatientName is malformed ({utf8}): a report cannot carry it"
    header = source(film, SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen".encode())
    assert str(header.PatientName) == "MÃ¼ller^JÃ¼rgen"
    assert refusals(header) == [refused, refused]
    header = source(film, SpecificCharacterSet="ISO_IR 100", PatientID="MRN-ü1".encode())
    with pytest.raises(ValueError) as refused_fhir:
        build_observation(reading(header), "m-1", "v", source=header)
    assert str(refused_fhir.value) == (f"the source DICOM's PatientID is malformed ({utf8}): a FHIR result cannot "
                                       "carry it")
    latin = source(film, SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen".encode("latin-1"),
                   PatientID="MRN-ü1".encode("latin-1"))
    assert refusals(latin) == ["", ""]
    assert str(build_sr(latin, READING, "m-1", "v").PatientName) == "Müller^Jürgen"
    observation = build_observation(reading(latin), "m-1", "v", source=latin)
    assert observation.subject.identifier.value == "MRN-ü1"
    other = source(film, SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Jürgen".encode())  # UTF-8, named
    assert refusals(other) == ["", ""]


def test_a_misread_value_in_a_sequence_item_gets_no_report(film: np.ndarray) -> None:
    other = Dataset()
    other.PatientID, other.TypeOfPatientID = b"Kim\xb1\xe8", "TEXT"
    header = source(film, SpecificCharacterSet=KOREAN, OtherPatientIDsSequence=[other])
    expected = (f"the source DICOM's OtherPatientIDsSequence > PatientID is malformed ({MISREAD}): a report cannot "
                "carry it")
    assert refusals(header) == [expected, expected]


def test_a_misread_value_is_refused_whatever_read_it_first(film: np.ndarray) -> None:
    """pydicom keeps no bytes of a value it has read: the verdict is the bytes', taken before. The FHIR result
    reads the patient id before the SR (predict --fhir --dicom-sr), and a film pneumoscan reads is judged as read,
    however its values are read afterwards."""
    misread = {"SpecificCharacterSet": KOREAN, "PatientID": b"Kim\xb1\xe8"}
    refused = f"the source DICOM's PatientID is malformed ({MISREAD}): a report cannot carry it"
    header = source(film, **misread)
    with pytest.raises(ValueError, match="PatientID is malformed"):
        build_observation(reading(header), "m-1", "v", source=header)
    assert refusals(header) == [refused, refused]
    with pydicom.config.disable_value_validation():
        header = read_dataset(chest_dicom(film, **misread), header_only=True)
    assert str(header.PatientID) == "Kim±è"  # read, as Latin-1, before any report
    assert refusals(header) == [refused, refused]


def test_the_fhir_subject_is_the_films_patient_id_or_none(film: np.ndarray) -> None:
    """The Observation names the patient by the id the film holds: one longer than DICOM's LO is still that id, so
    it is carried (as the SR carries it); an id read by guessing
    its character set (bytes beyond ASCII with none named, or with a term DICOM does not define, read as Latin-1) or
    holding a control character (which no FHIR string holds) is refused, named."""
    long_id = source(film, PatientID="P" * 70)
    assert Observation.model_validate_json(build_observation(reading(long_id), "m-1", "v", source=long_id)
                                           .model_dump_json()).subject.identifier.value == "P" * 70
    assert refusals(long_id) == ["", ""]
    for changes, why in (
        ({"PatientID": b"MRN-\xc3\xbc1"}, BEYOND_ASCII),
        ({"PatientID": b"MRN-\xfc1", "SpecificCharacterSet": "ISO_IR 999"}, BEYOND_ASCII),  # a term DICOM lacks
        ({"PatientID": b"MRN\x0b1"}, "control characters, which its VR LO does not hold"),
    ):
        header = source(film, **changes)
        with pytest.raises(ValueError) as refused:
            build_observation(reading(header), "m-1", "v", source=header)
        assert str(refused.value) == f"the source DICOM's PatientID is malformed ({why}): a FHIR result cannot carry it"


def test_predict_writes_the_fhir_result_and_says_why_a_film_has_no_sr(tiny_bundle: Path, film: np.ndarray,
                                                                      tmp_path: Path) -> None:
    """As users run it: a film whose accession number is over-long gets its SR, overlay and Observation; a film
    whose name's character set is not named gets neither SR nor overlay, and a warning naming the name instead."""
    films = tmp_path / "films"
    films.mkdir()
    with pydicom.config.disable_value_validation():
        (films / "long.dcm").write_bytes(chest_dicom(film, AccessionNumber="A" * 20))
        (films / "utf8.dcm").write_bytes(chest_dicom(film, PatientName="Müller^Jürgen".encode()))
    out = tmp_path / "r.csv"
    assert cli.main(["predict", str(tiny_bundle), str(films), "--out", str(out), "--backend", "torch", "--heatmaps",
                     str(tmp_path / "h"), "--dicom-sr", str(tmp_path / "sr"), "--fhir", str(tmp_path / "fhir")]) == 0
    rows = {Path(r["path"]).stem: r for r in csv.DictReader(out.open())}
    assert all(rows["long"][k] for k in ("dicom_sr", "dicom_heatmap")) and rows["long"]["warnings"] == UNCHECKED
    assert not any(rows["utf8"].get(k) for k in ("dicom_sr", "dicom_heatmap"))
    assert f"no DICOM SR written: the source DICOM's PatientName is malformed ({BEYOND_ASCII})" in \
        rows["utf8"]["warnings"]
    assert "Müller" not in out.read_text()
    assert all(json.loads(Path(rows[stem]["fhir"]).read_text())["resourceType"] == "Observation" for stem in rows)
