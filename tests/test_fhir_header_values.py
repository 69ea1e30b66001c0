"""The DICOM SR and the FHIR Observation of one film judge its header values by one rule: a value the Observation
carries (the patient id) refuses both with the same reason; a malformed study date, time or offset is left out of
the Observation, never null, and a note says why in the SR's words; a malformed age or birth date is a scope warning
both state. Neither names the value."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumoscan.data.scope import film_facts, scope_warnings
from pneumoscan.interop.fhir import observation_json
from pneumoscan.interop.sr import build_sr, dicom_bytes
from tests import test_interop
from tests.test_interop_values import reading, source

film = test_interop.film  # a real training film (224 x 224) as 12-bit values
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:pydicom"),
              pytest.mark.filterwarnings("ignore::UserWarning:highdicom")]

NOT_DA, NOT_TM = "not a DA value pydicom reads", "not a TM value pydicom reads"
TWO = "more than one value"
# case: (the header's changes, the SR's refusal as (attribute, why) or None, the FHIR refusal's likewise, the
# Observation's effectiveDateTime, the words a note of the Observation holds, and a TEXT item of an SR written where
# they are a scope warning (the age, the birth date))
DAMAGED = {
    "an age that is none": ({"PatientAge": "SECRETAGE"}, None, None, "2023-03-15T10:15:00+01:00",
                            "PatientAge is malformed (not three digits and a unit D, W, M or Y, as in 004Y)"),
    "two ages": ({"PatientAge": "003Y\\004Y"}, ("PatientAge", TWO), None, "2023-03-15T10:15:00+01:00",
                 f"PatientAge is malformed ({TWO})"),
    "a birth date that is none": ({"PatientBirthDate": "19xx0317"}, ("PatientBirthDate", NOT_DA), None,
                                  "2023-03-15T10:15:00+01:00", f"PatientBirthDate is malformed ({NOT_DA})"),
    "two birth dates": ({"PatientBirthDate": "20190317\\20190318"}, ("PatientBirthDate", TWO), None,
                        "2023-03-15T10:15:00+01:00", f"PatientBirthDate is malformed ({TWO})"),
    "a study date that is none": ({"StudyDate": "2024-13-45"}, ("StudyDate", NOT_DA), None, None,
                                  f"StudyDate is malformed ({NOT_DA})"),
    "two study dates": ({"StudyDate": "20230315\\20230316"}, ("StudyDate", TWO), None, None,
                        f"StudyDate is malformed ({TWO})"),
    "a study time that is none": ({"StudyTime": "25:00"}, ("StudyTime", NOT_TM), None, "2023-03-15",
                                  f"StudyTime is malformed ({NOT_TM})"),
    "an offset that is none": ({"TimezoneOffsetFromUTC": "+2500"}, None, None, "2023-03-15",
                               "TimezoneOffsetFromUTC is malformed"),
    "a sex that is none": ({"PatientSex": "U"}, ("PatientSex", "not one of M, F, O"), None,
                           "2023-03-15T10:15:00+01:00", None),  # the Observation carries no sex
    "two patient ids": ({"PatientID": "MRN-77\\MRN-88"}, ("PatientID", TWO), ("PatientID", TWO), None, None),
    "a tab in the patient id": ({"PatientID": "MRN\t77"}, ("PatientID", "control characters, which its VR LO does "
                                                           "not hold"),
                                ("PatientID", "control characters, which its VR LO does not hold"), None, None),
}  # fmt: skip


def _empty(node: object, path: str = "") -> list[str]:
    """Where ``node`` (FHIR JSON) holds a null, an empty string, array or object: FHIR has none of them."""
    if node is None or node in ("", [], {}) or (isinstance(node, str) and not node.strip()):
        return [path]
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _empty(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [p for i, value in enumerate(node) for p in _empty(value, f"{path}[{i}]")]
    return []


@pytest.mark.parametrize("case", list(DAMAGED))
def test_the_sr_and_the_observation_of_one_damaged_header_agree(film: np.ndarray, case: str) -> None:
    changes, sr_refusal, fhir_refusal, when, note = DAMAGED[case]
    header = source(film, **{"StudyTime": "101500", "TimezoneOffsetFromUTC": "+0100", **changes})
    result = {**reading(header), "warnings": scope_warnings(header, 224, 224)}
    try:
        made, sr_said = dicom_bytes(build_sr(header, result, "m-1", "v")), None
    except ValueError as e:
        made, sr_said = b"", str(e)
    try:
        observation, fhir_said = json.loads(observation_json(result, "m-1", "v", source=header)), None
    except ValueError as e:
        observation, fhir_said = {}, str(e)
    for refusal, said, what in ((sr_refusal, sr_said, "a report"), (fhir_refusal, fhir_said, "a FHIR result")):
        assert said == (None if refusal is None else f"the source DICOM's {refusal[0]} is malformed ({refusal[1]}): "
                        f"{what} cannot carry it"), case
    if fhir_refusal is None:
        assert _empty(observation) == [], case
        assert observation.get("effectiveDateTime") == when, case
        notes = [n["text"] for n in observation["note"]]
        assert note is None or sum(note in n for n in notes) == 1, notes
    if made and note is not None and note.startswith("Patient"):  # a scope warning: the SR's TEXT item states it
        assert note.encode() in made
    shown = json.dumps(observation) + (sr_said or "") + (fhir_said or "")
    assert not any(part in shown for value in changes.values() for part in str(value).split("\\")), case


@pytest.mark.parametrize("sex, shown", [("F", "F"), ("O", "O"), ("f", None), ("U", None), ("FEMALE", None),
                                        ("F\\M", None)])
def test_the_json_answer_shows_a_sex_the_sr_takes_and_no_other(film: np.ndarray, sex: str, shown: str | None) -> None:
    """The JSON answer (and the page) showed a second value as "['F', 'M']", and "FEMALE", "U" and "f" as the sex,
    values the DICOM SR refuses; a study date the SR refuses is none, as a missing one."""
    facts = film_facts(source(film, PatientSex=sex, StudyDate="2024-13-45" if shown is None else "20230315"))
    assert facts["sex"] == shown and facts["study_date"] == (None if shown is None else "2023-03-15")
