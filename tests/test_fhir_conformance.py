"""Every FHIR resource pneumoscan writes, checked by validators that are neither pneumoscan nor fhir.resources (whose
pydantic models are written from the same reading of the specification as pneumoscan's): FHIR's JSON Schemas of R4
and R4B, FHIR.js (R4's StructureDefinitions: cardinality, types, required bindings, unknown elements) and every
invariant of the StructureDefinitions in HL7's R4B core package that applies to an element present, evaluated with
HL7's FHIRPath engine (tests/fhir/validate.js). The Observations are written as users write them: ``pneumoscan predict
--fhir`` (pneumonia and three-class bundles, a two-stage run, TTA) and the web service's ``format=fhir``, of films of
the kinds hospitals send. Any error fails, and so does any warning but those :data:`EXPLAINED` says why they stay.
The validators are npm packages that ``make test`` installs (``make fhir-validator``): a missing one fails these
tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from pneumoscan import cli
from pneumoscan.data.decode import read_gray
from pneumoscan.interop.fhir import ABSENT, PRESENT
from pneumoscan.serving.app import create_app
from tests.test_interop import chest_dicom
from tests.test_predict import make_bundle

ROOT = Path(__file__).resolve().parents[1]
VALIDATE = ROOT / "tests" / "fhir" / "validate.js"
MODULES = ROOT / ".cache" / "fhir-validator" / "node_modules"  # make fhir-validator
CORE = MODULES / "hl7.fhir.r4b.core"

# Films as hospitals send them (`chest_dicom`'s in-scope pediatric PA chest DX, each with its changes).
ISO, UUID = ({"UniversalEntityID": entity, "UniversalEntityIDType": kind}
             for entity, kind in (("1.2.840.113619.6.1", "ISO"), ("8d3c7f6e-2b1a-4c5d-9e8f-7a6b5c4d3e2f", "UUID")))
FILMS = {
    "dx": {"IssuerOfPatientID": "General Hospital", "IssuerOfPatientIDQualifiersSequence": ISO,
           "TimezoneOffsetFromUTC": "+0100"},
    "cr": {"Modality": "CR", "ViewPosition": "AP", "StudyTime": "101500.25", "TimezoneOffsetFromUTC": "-0530",
           "IssuerOfPatientIDQualifiersSequence": UUID},
    # an anonymised export: its UIDs and modality, no patient or study attribute, no body part, view or age
    "bare": {k: None for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                               "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
                               "BodyPartExamined", "ViewPosition")},
    # an age outside the training population (a scope warning, a note) and a study time no one can read (a note)
    "warned": {"PatientAge": "040Y", "PatientBirthDate": "19830101", "StudyTime": "25xx00"},
    # ACR-NEMA's dotted date, which pneumoscan reads
    "old-forms": {"StudyDate": "2023.03.15", "PatientBirthDate": "2020.01.01"},
}  # fmt: skip


def _example_binding(path: str) -> bool:
    """Whether the R4B element at ``path`` (``Observation.component[1].code``) is bound to its value set with
    strength example, which asks nothing of the codes used (FHIR's terminology module: "no expectation")."""
    resource, *names = re.sub(r"\[\d+\]", "", path).split(".")
    definition = json.loads((CORE / f"StructureDefinition-{resource}.json").read_text())
    element = next(e for e in definition["snapshot"]["element"] if e["path"] == ".".join([resource, *names]))
    return element.get("binding", {}).get("strength") == "example"


# Warnings that stay, each with why: (validator, pattern of the message, whether the issue's location qualifies).
EXPLAINED: list[tuple[str, re.Pattern, Callable[[str], bool]]] = [
    # FHIR.js checks every coded element against its value set whatever the binding's strength: the code, body site
    # and components' codes are bound with strength example (SNOMED CT's pneumonia and chest, pneumoscan's own
    # probability and threshold), which restricts nothing
    ("fhir.js-r4", re.compile(r'Code "[^"]+" \([^)]+\) not found in value set'), _example_binding),
    # dom-6 (a resource should have narrative) of the contained Device: R4B's DomainResource.text says "Contained
    # resources do not have narrative", the container's covers them
    ("fhirpath-invariants-r4b", re.compile(r"dom-6: .*"), lambda location: location == "Device"),
]


def validate(paths: list[Path]) -> dict[Path, list[dict]]:
    """Each file's issues ({validator, severity, location, message}) from tests/fhir/validate.js, informational
    ones left out."""
    node = shutil.which("node")
    assert node and CORE.is_dir(), "the FHIR validators are missing: run make fhir-validator"
    env = {**os.environ, "NODE_PATH": str(MODULES)}
    run = subprocess.run([node, str(VALIDATE), *map(str, paths)], capture_output=True, text=True, timeout=300,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    answers = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"file"')]
    assert [a["file"] for a in answers] == [str(p) for p in paths], run.stdout[-3000:]
    return {Path(a["file"]): [i for i in a["issues"] if i["severity"] != "info"] for a in answers}


def unexplained(issues: list[dict]) -> list[dict]:
    """The errors, and the warnings :data:`EXPLAINED` does not explain."""
    return [i for i in issues if i["severity"] != "warning" or not any(
        i["validator"] == validator and pattern.fullmatch(i["message"]) and where(i["location"])
        for validator, pattern, where in EXPLAINED)]


@pytest.fixture(scope="module")
def film(data_root: Path) -> np.ndarray:
    """A real training film (224 x 224) as 12-bit values."""
    return read_gray(sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]).astype(np.uint16) * 16


def _dicom(film: np.ndarray, changes: dict) -> bytes:
    qualifiers = changes.get("IssuerOfPatientIDQualifiersSequence")
    if isinstance(qualifiers, dict):
        item = Dataset()
        for keyword, value in qualifiers.items():
            setattr(item, keyword, value)
        changes = {**changes, "IssuerOfPatientIDQualifiersSequence": [item]}
    with pydicom.config.disable_value_validation():  # the malformed time and the old forms, as devices write them
        return chest_dicom(film, **changes)


@pytest.fixture(scope="module")
def written(tiny_bundle: Path, film: np.ndarray, module_tmp: Callable[[str], Path]) -> dict[str, tuple[dict, Path]]:
    """Every kind of Observation, written by the CLI and the web service: {case: (its results row, its file)}."""
    tmp = module_tmp("fhir-conformance")
    films, out = tmp / "films", tmp / "out"
    films.mkdir()
    for name, changes in FILMS.items():
        (films / f"{name}.dcm").write_bytes(_dicom(film, changes))
    dx = str(films / "dx.dcm")
    bundles = {
        "multiclass": make_bundle(tmp / "multiclass", task="multiclass", classes=("normal", "bacteria", "virus"),
                                  positive="pneumonia"),
        "etiology": make_bundle(tmp / "etiology", task="etiology", classes=("bacteria", "virus"), positive="virus"),
        "present": make_bundle(tmp / "present", threshold=0.01),  # untrained: a probability near 0.5, either side
        "absent": make_bundle(tmp / "absent", threshold=0.99),
    }
    runs = {  # run: predict's arguments
        "pneumonia": [str(tiny_bundle), str(films)],
        "tta": [str(tiny_bundle), dx, "--tta"],
        "two-stage": [str(tiny_bundle), dx, "--etiology", str(bundles["etiology"])],
        "multiclass": [str(bundles["multiclass"]), dx],
        "present": [str(bundles["present"]), dx],
        "absent": [str(bundles["absent"]), dx],
    }
    made = {}
    for run, args in runs.items():
        assert cli.main(["predict", *args, "--backend", "torch", "--fhir", str(out / run),
                         "--out", str(out / f"{run}.json")]) == 0
        for row in json.loads((out / f"{run}.json").read_text()):
            case = Path(row["path"]).stem if run == "pneumonia" else f"dx, {run}"
            assert "fhir" in row, (case, row.get("warnings"))
            made[case] = row, Path(row["fhir"])
    with TestClient(create_app(tiny_bundle)) as client:
        data = (films / "warned.dcm").read_bytes()
        answer = client.post("/v1/predict", files={"file": ("film.dcm", data, "application/dicom")},
                             params={"format": "fhir"})
        assert answer.status_code == 200, answer.text
        (out / "served.fhir.json").write_text(answer.text)
        made["warned, served"] = {}, out / "served.fhir.json"
    return made


@pytest.fixture(scope="module")
def broken(written: dict[str, tuple[dict, Path]]) -> Path:
    """The Observation of case dx broken as :func:`test_the_validators_are_real` says."""
    _, path = written["dx"]
    broken = json.loads(path.read_text())
    broken["diagnosis"] = "pneumonia"
    broken["status"] = "provisional"
    del broken["component"][0]["valueQuantity"]["system"]
    broken["device"]["reference"] = "#another"
    broken["text"]["div"] = broken["text"]["div"].replace("<p>", "<p><script>alert(1)</script>")
    (path.parent / "broken.json").write_text(json.dumps(broken))
    return path.parent / "broken.json"


@pytest.fixture(scope="module")
def issues(written: dict[str, tuple[dict, Path]], broken: Path) -> dict[Path, list[dict]]:
    """Every file's issues, from one run of the validators: their start (FHIR's schemas compiled) takes seconds."""
    return validate([*(path for _, path in written.values()), broken])


CASES = [*FILMS, "dx, tta", "dx, two-stage", "dx, multiclass", "dx, present", "dx, absent", "warned, served"]


@pytest.mark.parametrize("case", CASES)
def test_the_validators_find_no_error_and_no_unexplained_warning(written: dict, issues: dict, case: str) -> None:
    """Each Observation is valid FHIR R4 and R4B: its elements and values as the JSON Schemas and R4's definitions
    have them, and every invariant of R4B's Observation, contained Device and data types holds."""
    _, path = written[case]
    found = [(i["validator"], i["severity"], i["location"], i["message"]) for i in unexplained(issues[path])]
    assert found == [], path.name


def test_the_cases_cover_what_an_observation_can_hold(written: dict) -> None:
    """The cases hold each finding, each kind of subject and effective time and notes of scope warnings, so that
    what the validators pass is every form pneumoscan writes."""
    observations = {case: json.loads(path.read_text()) for case, (_, path) in written.items()}
    findings = {o["valueCodeableConcept"]["coding"][0]["code"] for o in observations.values()}
    assert findings == {PRESENT[0], ABSENT[0]}
    assert observations["dx, present"]["valueCodeableConcept"]["coding"][0]["code"] == PRESENT[0]
    assert observations["dx, absent"]["valueCodeableConcept"]["coding"][0]["code"] == ABSENT[0]
    systems = {o.get("subject", {}).get("identifier", {}).get("system", "none" if "subject" not in o else "")
               for o in observations.values()}
    assert {"none", "", "urn:oid:1.2.840.113619.6.1", "urn:uuid:8d3c7f6e-2b1a-4c5d-9e8f-7a6b5c4d3e2f"} <= systems
    times = {case: o.get("effectiveDateTime") for case, o in observations.items()}
    assert (times["dx"], times["cr"], times["bare"], times["warned"], times["old-forms"]) == (
        "2023-03-15T10:15:00+01:00", "2023-03-15T10:15:00.250000-05:30", None, "2023-03-15", "2023-03-15")
    for case in ("warned", "warned, served"):
        notes = [n["text"] for n in observations[case]["note"]]
        assert any(n.startswith("scope warning: patient age 40.0 years") for n in notes), notes
        assert any(n.startswith("the film's StudyTime is malformed") for n in notes), notes


@pytest.mark.parametrize("case", CASES)
def test_the_narrative_states_the_finding_and_every_note_as_the_elements_hold_them(written: dict, case: str) -> None:
    """The Observation had no narrative (dom-6: a resource that is not contained SHOULD have one), so a receiver that
    shows the text alone showed nothing of it, nor of its disclaimer and scope warnings."""
    observation = json.loads(written[case][1].read_text())
    assert observation["text"]["status"] == "generated"
    div = ET.fromstring(observation["text"]["div"])
    xhtml = "{http://www.w3.org/1999/xhtml}"
    assert div.tag == f"{xhtml}div" and [child.tag for child in div] == [f"{xhtml}p", f"{xhtml}ul"]
    probability, threshold = (c["valueQuantity"]["value"] for c in observation["component"])
    [device] = observation["contained"]
    model = f"{device['deviceName'][0]['name']} ({device['version'][0]['value']})"
    finding = observation["valueCodeableConcept"]["text"]
    assert div[0].text == (f"Pneumonia: {finding} (preliminary), probability {probability} at the decision "
                           f"threshold {threshold}, pneumoscan model {model}")
    assert [item.text for item in div[1]] == [note["text"] for note in observation["note"]]


def test_the_validators_are_real(broken: Path, issues: dict) -> None:
    """Each validator finds what it checks in a broken Observation: an element FHIR does not have (the JSON Schemas,
    FHIR.js), a status outside its required value set (FHIR.js), a unit's code without its system (R4B's invariant
    qty-3), a reference to a contained resource there is not (ref-1) and a script in the narrative (txt-1)."""
    found = issues[broken]
    said = {(i["validator"], i["severity"], i["message"].split(":")[0]) for i in unexplained(found)}
    assert {("json-schema-r4", "error", "should NOT have additional properties {\"additionalProperty\""),
            ("json-schema-r4b", "error", "should NOT have additional properties {\"additionalProperty\""),
            ("fhir.js-r4", "error", "Unexpected property"),
            ("fhir.js-r4", "error", 'Code "provisional" not found in value set'),
            ("fhirpath-invariants-r4b", "error", "qty-3"),
            ("fhirpath-invariants-r4b", "error", "ref-1"),
            ("fhirpath-invariants-r4b", "error", "txt-1")} <= said, said
