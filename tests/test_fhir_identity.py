"""The FHIR Observation's identifier: one resource of one film read by one model in one scoring mode, whatever the
threshold, so a reading at a threshold `pneumoscan threshold` chose anew updates the earlier one in place."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pneumoscan.interop.fhir import ABSENT, PRESENT, build_observation

WEIGHTS = "sha256:0123456789ab"


def film(patient: str = "MRN-1") -> tuple[dict, Dataset]:
    """A reading's film UIDs and the header they come from."""
    source = Dataset()
    source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID = (generate_uid() for _ in range(3))
    source.PatientID, source.StudyDate = patient, "20230315"
    uids = {"study_instance_uid": source.StudyInstanceUID, "series_instance_uid": source.SeriesInstanceUID,
            "sop_instance_uid": source.SOPInstanceUID}
    return uids, source


def reading(uids: dict, threshold: float, probability: float = 0.6) -> dict:
    label = "PNEUMONIA" if probability >= threshold else "NORMAL"
    return {"probability": probability, "label": label, "positive": "PNEUMONIA", "threshold": threshold,
            "task": "pneumonia", **uids}


def key(result: dict, source: Dataset, model: str = "m", version: str = WEIGHTS, mode: str = "onnx") -> str:
    [identifier] = build_observation(result, model, version, mode, source).identifier
    return identifier.value


def test_a_new_threshold_of_the_same_weights_updates_the_same_observation() -> None:
    """Each threshold had an identifier of its own: a receiver held "absent" (the first threshold) and "present"
    (the one `pneumoscan threshold` chose) of one film by one model, with nothing linking them."""
    uids, source = film()
    before, after = (build_observation(reading(uids, t), "m", WEIGHTS, "onnx", source) for t in (0.7, 0.5))
    assert before.valueCodeableConcept.coding[0].code == ABSENT[0]
    assert after.valueCodeableConcept.coding[0].code == PRESENT[0]
    assert before.identifier[0].value == after.identifier[0].value
    assert [float(c.valueQuantity.value) for c in after.component] == [0.6, 0.5]  # the threshold it was read at
    assert before.status == after.status == "preliminary"  # R4's amended follows a final result; none was made


def test_other_films_weights_and_scoring_modes_are_observations_of_their_own() -> None:
    uids, source = film()
    same = key(reading(uids, 0.5), source)
    assert same == key(reading(uids, 0.5), source)  # a rerun
    other_film, other_source = film()
    kin = Dataset()  # the same UIDs filed under another patient (a modality's repeated UIDs): another film
    kin.update(source)
    kin.PatientID = "MRN-2"
    others = [
        key(reading(other_film, 0.5), other_source),
        key(reading(uids, 0.5), kin),
        key(reading(uids, 0.5), source, version="sha256:ba9876543210"),  # other weights
        key(reading(uids, 0.5), source, version=f"{WEIGHTS}+int8:0123456789ab"),  # the INT8 model
        key(reading(uids, 0.5), source, model="other"),
        key(reading(uids, 0.5), source, mode="onnx+tta"),
        key(reading(uids, 0.5), source, mode="torch"),
    ]
    assert len({same, *others}) == 1 + len(others)
