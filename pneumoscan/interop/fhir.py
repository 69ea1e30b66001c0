"""Results as FHIR R4: an Observation of pneumonia present or absent, validated with fhir.resources' R4B models.

R4B is the release fhir.resources ships for R4 (the Observation resource is the same in R4 and R4B). The Observation
is ``preliminary`` (software reading, no clinician has confirmed it), names the model as a contained Device, points
at the imaging study by its DICOM UID (``derivedFrom`` by identifier: the ImagingStudy resource is the hospital's;
the series and instance UIDs are in its display text), and carries the scope warnings as notes. It holds no
patient name or id: the receiving system links it to the patient through the study.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from fhir.resources.R4B.observation import Observation

from .sr import check_result, finding_present, scope_notes

SNOMED = "http://snomed.info/sct"
DICOM_UID = "urn:dicom:uid"  # identifier system for DICOM UIDs (values as urn:oid:...)
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LOCAL = "urn:pneumoscan"  # codes with no standard equivalent (the decision threshold)
PRESENT, ABSENT = ("52101004", "Present"), ("272519000", "Absent")


def _concept(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _ratio(value: float) -> dict:
    return {"value": float(value), "unit": "1", "system": UCUM, "code": "1"}


def build_observation(result: dict, model_name: str, model_version: str) -> Observation:
    """The FHIR R4 Observation of one result (``probability, label, threshold, positive, task``, and the
    ``*_instance_uid`` and ``warnings`` fields predict and serve add)."""
    check_result(result)
    present = PRESENT if finding_present(result) else ABSENT
    derived = []
    if result.get("study_instance_uid"):  # ImagingStudy found by its DICOM UID; series and instance said in words
        read = ", ".join(f"{name} {result[field]}" for field, name in (
            ("series_instance_uid", "series"), ("sop_instance_uid", "instance")) if result.get(field))
        derived.append({
            "type": "ImagingStudy",
            "identifier": {"system": DICOM_UID, "value": f"urn:oid:{result['study_instance_uid']}"},
            "display": f"DICOM study read by pneumoscan ({read})" if read else "DICOM study read by pneumoscan",
        })  # fmt: skip
    body = {
        "resourceType": "Observation",
        "contained": [{
            "resourceType": "Device", "id": "model",
            "deviceName": [{"name": model_name, "type": "model-name"}],
            "version": [{"value": model_version}],
            "manufacturer": "pneumoscan",
        }],
        "status": "preliminary",
        "category": [{"coding": [{"system": CATEGORY, "code": "imaging", "display": "Imaging"}]}],
        "code": _concept(SNOMED, "233604007", "Pneumonia"),
        "bodySite": _concept(SNOMED, "51185008", "Thoracic structure"),
        "issued": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "valueCodeableConcept": _concept(SNOMED, *present),
        "method": {"text": f"pneumoscan model {model_name} ({model_version}), read at its validated threshold"},
        "device": {"reference": "#model"},
        "component": [
            {"code": {"text": "probability of pneumonia (calibrated)"}, "valueQuantity": _ratio(result["probability"])},
            {"code": _concept(LOCAL, "threshold", "decision threshold"), "valueQuantity": _ratio(result["threshold"])},
        ],
    }  # fmt: skip
    if derived:
        body["derivedFrom"] = derived
    if result.get("warnings"):
        body["note"] = [{"text": note} for note in scope_notes(result)]
    return Observation.model_validate(body)


def observation_json(result: dict, model_name: str, model_version: str) -> str:
    """The validated Observation as FHIR JSON."""
    obs = build_observation(result, model_name, model_version)
    return json.dumps(json.loads(obs.model_dump_json(exclude_none=True)), indent=2)
