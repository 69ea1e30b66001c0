"""Every DICOM object pneumoscan writes, checked by validators that are neither pneumoscan nor highdicom: dicom3tools'
``dciodvfy`` (the IOD's modules, attributes and their conditions, value representations, defined terms) on every
DICOM SR and Grad-CAM Secondary Capture, and dcmtk's ``dsrdump`` (the SR's content tree, as another toolkit reads it)
on every SR. The objects are written as users write them (``pneumoscan predict --dicom-sr --heatmaps``, after
``pneumoscan threshold`` for a replacement report) from films of the kinds hospitals send. Any Error fails, and so
does any Warning but those :data:`EXPLAINED` says why they stay. Both tools are Debian packages that ``make test``
installs (``make dicom-tools``): a missing one fails these tests."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

from pneumoscan import cli
from pneumoscan.data.decode import read_gray
from pneumoscan.data.layouts import discover, make_record, write_manifest
from pneumoscan.interop.sr import DISCLAIMER, NEAR_THRESHOLD, SR_DESCRIPTION, report_files, series_number
from pneumoscan.models.card import load_card
from tests.test_interop import READING, _overlay_png, chest_dicom
from tests.test_predict import make_bundle

DCIODVFY, DSRDUMP = shutil.which("dciodvfy"), shutil.which("dsrdump")  # Debian: dicom3tools, dcmtk (make dicom-tools)
IOD = {"sr": "ComprehensiveSR", "heatmap": "SCImage"}  # what dciodvfy must recognise each object as

# Films as hospitals send them (`chest_dicom`'s in-scope pediatric PA chest DX, each with its changes).
FILMS = {
    "dx": {"SOPClassUID": DigitalXRayImageStorageForPresentation, "PatientOrientation": ["L", "F"],
           "IssuerOfPatientID": "General Hospital", "StudyDescription": "XR CHEST PA"},
    "cr": {"SOPClassUID": ComputedRadiographyImageStorage, "Modality": "CR", "ViewPosition": "AP",
           "PatientOrientation": ["R", "F"], "SpecificCharacterSet": "ISO_IR 100", "PatientName": "Müller^Jürgen",
           "LossyImageCompression": "01"},
    "japanese": {"SpecificCharacterSet": ["", "ISO 2022 IR 87"],
                 "PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう"},
    # an anonymised export: its UIDs and modality, no patient or study attribute, no body part, view or age
    "bare": {k: None for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                               "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
                               "BodyPartExamined", "ViewPosition", "SeriesNumber", "InstanceNumber")},
    # values a device writes outside today's forms, which pneumoscan reads: a lower-case code string, and ACR-NEMA's
    # dotted date
    "old-forms": {"BodyPartExamined": "chest", "StudyDate": "2023.03.15", "PatientBirthDate": "2020.01.01"},
    # an over-long accession number, which real films hold and the report copies as held (below)
    "long-accession": {"AccessionNumber": "A" * 20},
}  # fmt: skip

# Warnings that stay, each with why (matched against dciodvfy's `-new` lines, after "Warning - ").
PRIVATE_SCHEME = re.compile(r"</.*CodingSchemeDesignator\(0008,0102\)\[1\]> - "
                            r"Unrecognized defined term = <99PNEUMOSCAN>")
# ^ the decision threshold's code is in pneumoscan's private scheme: PS3.16 section 8 has private designators start
#   with "99" and the SR declares it in its CodingSchemeIdentificationSequence; dciodvfy knows the standard's list only
NOT_RECORDED = re.compile(r"</(PatientID|StudyDate|StudyTime|StudyID)\(....,....\)> - "
                          r"Missing attribute or value that would be needed to build DICOMDIR")
# ^ type 2 attributes of the film's patient and study, present and empty as the standard allows when the film has
#   none: a report cannot make up a patient id or a study date
UNKNOWN_LATERALITY = re.compile(r"</Laterality\(0020,0060\)> - is only permitted to be empty when actually unknown")
# ^ the overlay of a film that records no body part: whether it is a paired one is unknown, so Laterality (type 2C)
#   is present, and empty as it is unknown (without it, dciodvfy's Error of a missing one)
EXPLAINED = {"sr": [PRIVATE_SCHEME], "heatmap": []}
EXPLAINED_FOR_FILM = {"bare": [NOT_RECORDED, UNKNOWN_LATERALITY]}
# the one Error a film's over-long value leaves in both objects: copied as the film holds it, so a RIS that keys on
# the accession number finds the report, and nothing else of the object is at fault
FILMS_OWN_ERROR = {"long-accession": re.compile(r"</AccessionNumber\(0008,0050\)\[1\]> - Value invalid for this "
                                                r"VR \[SH\] = <A{20}> - Length invalid for this VR = <20> - "
                                                r"expected <= 16")}
# dcmtk 3.6.7 checks the characters of single-byte character sets only, and says so of a report in UTF-8 (the
# character set pneumoscan writes a film's ISO 2022 values in)
DSRDUMP_UTF8 = "W: The VR checker does not support this Specific Character Set: ISO_IR 192"


def dciodvfy(path: Path) -> tuple[str, list[str], list[str]]:
    """What dciodvfy recognises ``path`` as, and its Errors (Abort included) and Warnings, each without its
    severity."""
    assert DCIODVFY, "dciodvfy is missing: install Debian's dicom3tools (make dicom-tools)"
    run = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    found = {kind: [line.split(" - ", 1)[1] for line in lines if line.startswith(tuple(f"{k} - " for k in kinds))]
             for kind, kinds in (("errors", ("Error", "Abort")), ("warnings", ("Warning",)))}
    recognised = [line for line in lines if not line.startswith(("Error", "Abort", "Warning"))]
    return " ".join(recognised), found["errors"], found["warnings"]


def dsrdump(path: Path) -> str:
    """The SR as dcmtk prints it, values in full and in UTF-8; a warning or error it gives as it reads the file in
    its own character set fails."""
    assert DSRDUMP, "dsrdump is missing: install Debian's dcmtk (make dicom-tools)"
    utf8 = pydicom.dcmread(path).get("SpecificCharacterSet") == "ISO_IR 192"
    checked = subprocess.run([DSRDUMP, str(path)], capture_output=True, timeout=60)
    complaints = [line for line in checked.stderr.decode().splitlines() if not (utf8 and line == DSRDUMP_UTF8)]
    assert checked.returncode == 0 and not complaints, f"dsrdump {path.name}: {checked.returncode}\n{complaints}"
    # printed converted to UTF-8, whose characters dcmtk then says it does not check (it did, above)
    return subprocess.run([DSRDUMP, "+U8", "+Pl", str(path)], capture_output=True, text=True, timeout=60,
                          check=True).stdout


@pytest.fixture(scope="module")
def film(data_root: Path) -> np.ndarray:
    """A real training film (224 x 224) as 12-bit values."""
    return read_gray(sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]).astype(np.uint16) * 16


@pytest.fixture(scope="module")
def written(tiny_bundle: Path, tiny_dataset: Path, film: np.ndarray,
            module_tmp: Callable[[str], Path]) -> dict[str, tuple[dict, dict[str, Path]]]:
    """Every kind of object, written by the CLI: {case: (its results row and "bundle", {"sr": path, "heatmap":
    path})}."""
    tmp = module_tmp("conformance")
    films, out = tmp / "films", tmp / "out"
    films.mkdir()
    with pydicom.config.disable_value_validation():  # the old forms and the over-long value, as devices write them
        for name, changes in FILMS.items():
            (films / f"{name}.dcm").write_bytes(chest_dicom(film, **changes))
    dx = str(films / "dx.dcm")
    multiclass = make_bundle(tmp / "multiclass", task="multiclass", classes=("normal", "bacteria", "virus"),
                             positive="pneumonia")
    site = tmp / "site.csv"  # labelled films of the site, on which `pneumoscan threshold` chooses a new threshold
    write_manifest([make_record(r.path, r.label) for r in discover(tiny_dataset).split("test")], site)
    assert cli.main(["threshold", str(tiny_bundle), str(site), "--youden", "--out", str(tmp / "retuned")]) == 0
    runs = {  # output folder: predict's arguments
        "torch": [str(tiny_bundle), str(films), "--heatmaps", str(out / "h")],
        "tta": [str(tiny_bundle), dx, "--tta", "--heatmaps", str(out / "h-tta")],
        "multiclass": [str(multiclass), dx, "--heatmaps", str(out / "h-multiclass")],
        "torch-retuned": [str(tmp / "retuned"), dx],  # into the folder that holds the report it replaces
    }
    made = {}
    for run, args in runs.items():
        folder = out / run.removesuffix("-retuned")
        assert cli.main(["predict", *args, "--backend", "torch", "--dicom-sr", str(folder),
                         "--out", str(out / f"{run}.json")]) == 0
        for row in json.loads((out / f"{run}.json").read_text()):
            case = Path(row["path"]).stem if run == "torch" else f"dx, {run}"
            objects = {k: Path(row[f"dicom_{k}"]) for k in ("sr", "heatmap") if f"dicom_{k}" in row}
            made[case] = {**row, "bundle": args[0]}, objects
    return made


CASES = [*FILMS, "dx, tta", "dx, multiclass", "dx, torch-retuned"]


@pytest.mark.parametrize("case", CASES)
def test_dciodvfy_finds_no_error_and_no_unexplained_warning(written: dict, case: str) -> None:
    """Each film's SR and overlay (an SR alone for the replacement report, which predict writes without heatmaps
    here) is the IOD it claims to be, with every module, attribute and value as the standard has them."""
    row, objects = written[case]
    assert objects.keys() == ({"sr"} if case.endswith("retuned") else {"sr", "heatmap"}), row.get("warnings")
    film_name = case.split(",")[0]
    for kind, path in objects.items():
        recognised, errors, warnings = dciodvfy(path)
        assert recognised == IOD[kind], (path.name, recognised)
        own = FILMS_OWN_ERROR.get(film_name)
        assert [e for e in errors if not (own and own.fullmatch(e))] == [], (path.name, errors)
        assert own is None or [e for e in errors if own.fullmatch(e)], (path.name, errors)  # the film's, as held
        explained = EXPLAINED[kind] + EXPLAINED_FOR_FILM.get(film_name, [])
        assert [w for w in warnings if not any(p.match(w) for p in explained)] == [], (path.name, warnings)


def _values(dump: str, value_type: str, name: str) -> list[str]:
    """The values of the content items ``value_type:(,,"name")`` in ``dsrdump``'s tree, in order."""
    return re.findall(rf'{value_type}:\(,,"{re.escape(name)}"\)="([^"]*)"', dump)


@pytest.mark.parametrize("case", CASES)
def test_dsrdump_reads_the_report_as_a_radiologist_must(written: dict, tiny_bundle: Path, case: str) -> None:
    """dcmtk parses the content tree (a relationship the Comprehensive SR forbids would fail it) and prints the
    finding, the probability, the threshold, the model and every note the results row holds, and nothing else."""
    row, objects = written[case]
    dump = dsrdump(objects["sr"])
    header = dict(re.findall(r"^(\w[\w /]*?)\s*: (.*)$", dump.split("\n\n<", 1)[0], re.MULTILINE))
    assert header["Verification Flag"] == "UNVERIFIED" and header["Preliminary Flag"] == "PRELIMINARY"
    number = series_number(pydicom.dcmread(objects["sr"]).SeriesInstanceUID)  # its series' own
    assert header["Completion Flag"] == "COMPLETE" and header["Series"] == f"{SR_DESCRIPTION} (#{number})"
    assert header.get("Predecessor Docs") == ("1" if case.endswith("retuned") else None)
    source = pydicom.dcmread(row["path"])
    if "PatientName" in source:  # the name in the film's own characters
        assert header["Patient"].startswith(f"{source.PatientName} ("), header["Patient"]
    assert re.findall(r'CODE:\(,,"Finding"\)=\((.*)\)>', dump) == ['233604007,SCT,"Pneumonia"']
    present = row["label"] == ("pneumonia" if "multiclass" in case else load_card(tiny_bundle).positive)
    assert re.findall(r'CODE:\(,,"Pneumonia"\)=\((.*)\)>', dump) == [
        '52101004,SCT,"Present"' if present else '272519000,SCT,"Absent"']
    [probability], [threshold] = _values(dump, "NUM", "Probability"), _values(dump, "NUM", "Decision threshold")
    assert float(probability) == pytest.approx(row["probability"], abs=1e-12)
    assert float(threshold) == pytest.approx(row["threshold"], abs=1e-12)
    assert dump.count('(1,UCUM,"no units")') == 2
    names, versions = _values(dump, "TEXT", "Algorithm Name"), _values(dump, "TEXT", "Algorithm Version")
    assert names == [row["model_id"]] * 3 and versions == [row["model_version"]] * 3  # the group, each number
    assert _values(dump, "TEXT", "Device Observer Name") == [row["model_id"]]
    near = [NEAR_THRESHOLD] if row.get("near_threshold") else []
    caveats = [f"model caveat: {c}" for c in load_card(row["bundle"]).caveats]  # the tiny bundle's threshold: a guess
    assert _values(dump, "TEXT", "Comment") == [DISCLAIMER, *near, *(f"scope warning: {w}" for w in row["warnings"]),
                                                *caveats]
    assert caveats or case.startswith("dx, ")


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # its complaint about "chest": expected
@pytest.mark.parametrize("body_part, laterality, kept", [
    ("CHEST", None, ("CHEST", None)),  # a chest is no paired body part: no laterality
    ("chest", None, ("CHEST", None)),  # as the scope check reads it: a code string holds no lower case
    ("CHEST", "R", ("CHEST", None)),  # a laterality a chest film should not hold is not passed on
    (None, None, (None, "")),  # whether the body part is a paired one is unknown, and so is its laterality
    (None, "L", (None, "L")),  # ... known from the film
])  # fmt: skip
def test_the_overlay_states_the_films_body_part_and_a_laterality_only_where_dicom_asks_for_one(
    film: np.ndarray, tmp_path: Path, body_part: str | None, laterality: str | None,
    kept: tuple[str | None, str | None],
) -> None:
    """General Series Laterality is type 2C, required while the body part may be a paired structure: the overlay
    of a film that records no body part had none (dciodvfy: an Error), and one of a film that wrote "chest" a code
    string no CS may hold."""
    source = pydicom.dcmread(io.BytesIO(chest_dicom(film, BodyPartExamined=body_part, Laterality=laterality)))
    _, overlay = report_files(source, READING, _overlay_png(), "m-1", "sha256:ab")
    path = tmp_path / "overlay.dcm"
    path.write_bytes(overlay)
    sc = pydicom.dcmread(path)
    assert (sc.get("BodyPartExamined"), sc.get("Laterality")) == kept
    _, errors, warnings = dciodvfy(path)
    assert errors == [] and [w for w in warnings if not UNKNOWN_LATERALITY.match(w)] == [], (errors, warnings)
    assert bool(warnings) == (kept == (None, ""))  # the one warning: an empty laterality is one not known
