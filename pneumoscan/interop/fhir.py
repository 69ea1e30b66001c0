"""Results as FHIR R4: an Observation of pneumonia present or absent, validated with fhir.resources' R4B models.

R4B is the release fhir.resources ships for R4 (the Observation resource is the same in R4 and R4B). The Observation
is ``preliminary`` (software reading, no clinician has confirmed it), names the model as a contained Device, points
at the imaging study by its DICOM UID (``derivedFrom`` by identifier: the ImagingStudy resource is the hospital's;
the series and instance UIDs are in its display text), and carries as notes that it is a research result, not a
diagnosis, and each scope warning. Its ``identifier`` is derived from the film, the model and the scoring mode, as
the SR's UIDs are, so a receiver can create it conditionally and a rerun updates instead of adding; its
``subject`` is the patient by the film's PatientID (and issuer), as a logical reference. It holds no patient name.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from fhir.resources.R4B.observation import Observation
from pydicom.dataset import Dataset

from .sr import DISCLAIMER, check_result, derived_uuid, finding_mode, finding_present, malformed_reason, scope_notes

SNOMED = "http://snomed.info/sct"
DICOM_UID = "urn:dicom:uid"  # identifier system for DICOM UIDs (values as urn:oid:...)
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LOCAL = "urn:pneumoscan"  # codes with no standard equivalent (the probability and the decision threshold)
URI = "urn:ietf:rfc:3986"  # identifier system whose values are URIs (here urn:uuid:...)
# IssuerOfPatientIDQualifiersSequence's UniversalEntityIDType, as the prefix that makes its id a FHIR system URI
_ISSUER_SYSTEMS = {"ISO": "urn:oid:", "UUID": "urn:uuid:", "URI": ""}
PRESENT, ABSENT = ("52101004", "Present"), ("272519000", "Absent")


def _concept(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _ratio(value: float) -> dict:
    return {"value": float(value), "unit": "1", "system": UCUM, "code": "1"}


def _text(source: Dataset, keyword: str) -> str:
    """One value of ``source`` as stripped text ('' when absent); a malformed one refused, named, never quoted."""
    why = malformed_reason(source, keyword)
    if why is not None:
        raise ValueError(f"the source DICOM's {keyword} is malformed ({why}): a FHIR result cannot carry it")
    return str(source.get(keyword) or "").strip()


def subject(source: Dataset) -> dict | None:
    """The patient as a logical reference (an identifier, no resource id: the Patient resource is the hospital's)
    by the film's PatientID, with its issuer when the film records one (a URI system from
    IssuerOfPatientIDQualifiersSequence's universal entity id, and IssuerOfPatientID as the assigner's name);
    None when the film has no PatientID."""
    patient = _text(source, "PatientID")
    if not patient:
        return None
    identifier: dict = {"value": patient}
    try:
        qualifiers = (source.get("IssuerOfPatientIDQualifiersSequence") or [None])[0]
    except Exception:
        qualifiers = None
    if qualifiers is not None:
        kind = str(qualifiers.get("UniversalEntityIDType") or "").strip().upper()
        entity = str(qualifiers.get("UniversalEntityID") or "").strip()
        if entity and kind in _ISSUER_SYSTEMS:
            identifier["system"] = _ISSUER_SYSTEMS[kind] + entity
    if issuer := _text(source, "IssuerOfPatientID"):
        identifier["assigner"] = {"display": issuer}
    return {"type": "Patient", "identifier": identifier}


def build_observation(result: dict, model_name: str, model_version: str, mode: str = "",
                      source: Dataset | None = None) -> Observation:
    """The FHIR R4 Observation of one result (``probability, label, threshold, positive, task``, and the
    ``*_instance_uid`` and ``warnings`` fields predict and serve add), scored in ``mode`` (backend, TTA); with
    ``source`` (the film's DICOM header) its patient as ``subject``. A result without the film's DICOM study and
    instance UIDs (a JPEG or PNG has none) is refused: its Observation would be linked to no study and no patient,
    and could not be told from a resend."""
    check_result(result)
    if not (result.get("study_instance_uid") and result.get("sop_instance_uid")):
        raise ValueError("the film has no valid DICOM study and instance UIDs (a JPEG or PNG has none): an "
                         "Observation would be linked to no study and no patient")
    patient = None if source is None else subject(source)
    present = PRESENT if finding_present(result) else ABSENT
    # the ImagingStudy found by its DICOM UID; series and instance said in words
    read = ", ".join(f"{name} {result[field]}" for field, name in (
        ("series_instance_uid", "series"), ("sop_instance_uid", "instance")) if result.get(field))
    derived = [{
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID, "value": f"urn:oid:{result['study_instance_uid']}"},
        "display": f"DICOM study read by pneumoscan ({read})",
    }]  # fmt: skip
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
        "bodySite": _concept(SNOMED, "816094009", "Chest"),  # the SR's finding site (codes.SCT.Chest)
        "issued": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "valueCodeableConcept": _concept(SNOMED, *present),
        "method": {"text": f"pneumoscan model {model_name} ({model_version}), read at its validated threshold"},
        "device": {"reference": "#model"},
        "derivedFrom": derived,
        "component": [
            {"code": _concept(LOCAL, "probability", "probability of pneumonia (calibrated)"),
             "valueQuantity": _ratio(result["probability"])},
            {"code": _concept(LOCAL, "threshold", "decision threshold"), "valueQuantity": _ratio(result["threshold"])},
        ],
    }  # fmt: skip
    key = derived_uuid(result["sop_instance_uid"], model_name, model_version, finding_mode(mode, result), "fhir")
    body["identifier"] = [{"system": URI, "value": f"urn:uuid:{key}"}]
    if patient is not None:
        body["subject"] = patient
    body["note"] = [{"text": note} for note in (DISCLAIMER, *scope_notes(result))]
    return Observation.model_validate(body)


def observation_json(result: dict, model_name: str, model_version: str, mode: str = "",
                     source: Dataset | None = None) -> str:
    """The validated Observation as FHIR JSON."""
    obs = build_observation(result, model_name, model_version, mode, source)
    return json.dumps(json.loads(obs.model_dump_json(exclude_none=True)), indent=2)
