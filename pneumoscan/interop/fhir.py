"""Results as FHIR R4: an Observation of pneumonia present or absent, validated with fhir.resources' R4B models.

R4B is the release fhir.resources ships for R4 (the Observation resource is the same in R4 and R4B);
tests/test_fhir_conformance.py checks each form of it with validators of their own against both. The Observation
is ``preliminary`` (software reading, no clinician has confirmed it), names the model as a contained Device, points
at the imaging study by its DICOM UID (``derivedFrom`` by identifier: the ImagingStudy resource is the hospital's;
the series and instance UIDs are in its display text), and carries as notes that it is a research result, not a
diagnosis, and each scope warning; its narrative (``text``) states the finding and every note. Its ``identifier``
is derived from the film (study, series and instance UIDs, patient), the model and the scoring mode, as the SR's
UIDs are, but not from the threshold:
FHIR keeps one resource of one reading and updates it in place, so a receiver updates conditionally on the
identifier, a rerun replaces the Observation instead of adding one, and so does a reading of the same weights at a
threshold ``pneumoscan threshold`` chose anew (the server's version history keeps the earlier finding), where two
Observations would state "absent" and "present" of one film by one model; the threshold is a component. Its status
stays ``preliminary`` then: R4's ``amended`` follows a ``final`` result, which no clinician made of it. Its
``subject`` is the patient by the film's PatientID (and issuer), as a logical reference; its ``effectiveDateTime``
the study's date and time. It holds no patient name.

A header value is judged as the DICOM SR judges it (:func:`~pneumoscan.interop.sr.malformed_reason`, one rule for
both): one the Observation must carry (the patient id and its issuer) refuses it, as it refuses the SR; a malformed
study date, time or offset is left out (R4's effective[x] is optional, and FHIR has no null) and a note says so; one
it does not carry (the name, sex, birth date) is not its to refuse, and the SR's refusal names it. A malformed age or
birth date is a scope warning, which both state.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from html import escape

from fhir.resources.R4B.observation import Observation
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from pneumoscan.data.readers.dicom import MANUFACTURER, standard_form

from .sr import DISCLAIMER, check_result, finding_present, malformed_reason, reading_notes
from .uids import derived_uuid, film_identity

SNOMED = "http://snomed.info/sct"
DICOM_UID = "urn:dicom:uid"  # identifier system for DICOM UIDs (values as urn:oid:...)
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
# the code system of pneumoscan's own codes, those with no standard equivalent (the probability and the decision
# threshold): a FHIR code system is an absolute URI. The project holds no web domain to name it by a URL, so it is an
# OID under 2.25, the arc of OIDs made from a UUID (ITU-T X.667), which needs no registration and is no one else's
CODE_SYSTEM = "urn:oid:2.25.11301222716731653561214844916586144303"
URI = "urn:ietf:rfc:3986"  # identifier system whose values are URIs (here urn:uuid:...)
# IssuerOfPatientIDQualifiersSequence's UniversalEntityIDTypes whose id names a FHIR system (:func:`_issuer_system`)
_ISSUER_SYSTEMS = ("ISO", "UUID", "URI")
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")  # an ISO object identifier, as FHIR's oid type takes it
# an absolute URI: a scheme, then printable ASCII without a blank (RFC 3986 has no other character: a letter beyond
# ASCII is a misread byte or an IRI, which a receiver matching patients by system would not match)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]+")
PRESENT, ABSENT = ("52101004", "Present"), ("272519000", "Absent")
_OFFSET = re.compile(r"([+-])(\d\d)([0-5]\d)")  # TimezoneOffsetFromUTC, e.g. +0100
# DICOM's range of offsets, in minutes (PS3.3 C.12.1.1.8: -1200 to +1400); FHIR's dateTime takes none past +14:00
_OFFSET_RANGE = {"-": 12 * 60, "+": 14 * 60}


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
            identifier["system"] = _issuer_system(kind, entity)
    if issuer := _text(source, "IssuerOfPatientID"):
        identifier["assigner"] = {"display": issuer}
    return {"type": "Patient", "identifier": identifier}


def _issuer_system(kind: str, entity: str) -> str:
    """The FHIR system URI of a patient id's issuer, from its UniversalEntityID of ``kind`` (ISO, UUID or URI),
    refused (named, never quoted) when the id is not what its type says: "urn:oid:" before a name had the subject's
    identifier name a system nobody's patients are in, where a receiver matches the patient by system and value."""
    if kind == "ISO" and _OID.fullmatch(entity):
        return f"urn:oid:{entity}"
    if kind == "UUID":
        try:
            return f"urn:uuid:{uuid.UUID(entity)}"  # in the lower-case form a FHIR urn:uuid takes
        except ValueError:
            pass
    if kind == "URI" and _URI.fullmatch(entity):
        return entity
    raise ValueError(f"the source DICOM's IssuerOfPatientIDQualifiersSequence is malformed (its UniversalEntityID is "
                     f"not the {kind} identifier its UniversalEntityIDType says): a FHIR result cannot name the "
                     "issuer of the patient id by it")


def effective(source: Dataset) -> tuple[str | None, str | None]:
    """When the film was taken, as a FHIR dateTime: StudyDate with StudyTime and the film's TimezoneOffsetFromUTC
    (FHIR requires an offset with a time), the date alone when the film records no valid offset or time, None when
    it records no date pydicom reads (a wrong date is worse than none); each in DICOM's form or ACR-NEMA's. With it,
    why it is less than the film records (a malformed date, time or offset, named, never quoted), None when it is
    all of it: effective[x] is optional in R4, so it is left out (never null), and the Observation says why."""
    if (why := malformed_reason(source, "StudyDate")) is not None:
        return None, f"the film's StudyDate is malformed ({why}): the Observation states no time it was taken"
    if not (date := _read(source, "StudyDate")):
        return None, None
    time = _read(source, "StudyTime")
    if (why := malformed_reason(source, "StudyTime")) is not None:
        return DA(date).isoformat(), f"the film's StudyTime is malformed ({why}): the Observation states its date alone"
    held = str(source.get("TimezoneOffsetFromUTC") or "").strip()
    zone = _zone(held)
    if time and held and zone is None:
        return DA(date).isoformat(), ("the film's TimezoneOffsetFromUTC is malformed (not an offset DICOM defines, "
                                      "as +0100): the Observation states its date alone")
    if zone is None or not time:
        return DA(date).isoformat(), None
    return datetime.combine(DA(date), TM(time), tzinfo=zone).isoformat(), None


def _zone(held: str) -> timezone | None:
    """The time zone a TimezoneOffsetFromUTC value names; None when it is not one within DICOM's range."""
    if (offset := _OFFSET.fullmatch(held)) is None:
        return None
    sign, hours, minutes = offset.groups()
    if (span := int(hours) * 60 + int(minutes)) > _OFFSET_RANGE[sign]:
        return None
    return timezone(timedelta(minutes=-span if sign == "-" else span))


def _read(source: Dataset, keyword: str) -> str:
    """A date or time of ``source`` as text in DICOM's form, one in ACR-NEMA's (``2023.03.15``, ``10:15:00``) as the
    same date or time in DICOM's (:func:`standard_form`); '' when absent."""
    text = str(source.get(keyword) or "").strip()
    return standard_form(dictionary_VR(keyword), text) or text


def _narrative(finding: str, result: dict, model_name: str, model_version: str, notes: list[str]) -> dict:
    """The Observation's text: a resource that is not contained SHOULD have one (R4's DomainResource.text, invariant
    dom-6), and it is what a receiver shows where it cannot render the coded content, so it states the finding with
    its probability and threshold as the components hold them (never rounded: a rounded probability could read as
    the threshold itself beside an "Absent"), the model, and every note, the disclaimer first; generated from the
    resource's own elements alone (status ``generated``), each value escaped."""
    said = (f"Pneumonia: {finding} (preliminary), probability {float(result['probability'])} at the decision "
            f"threshold {float(result['threshold'])}, pneumoscan model {model_name} ({model_version})")
    items = "".join(f"<li>{escape(note, quote=False)}</li>" for note in notes)
    div = f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{escape(said, quote=False)}</p><ul>{items}</ul></div>'
    return {"status": "generated", "div": div}


def build_observation(result: dict, model_name: str, model_version: str, mode: str = "",
                      source: Dataset | None = None) -> Observation:
    """The FHIR R4 Observation of one result (``probability, label, threshold, positive, task``, and the
    ``*_instance_uid`` and ``warnings`` fields predict and serve add), scored in ``mode`` (backend, TTA); with
    ``source`` (the film's DICOM header) its patient as ``subject`` and the study's date as ``effectiveDateTime``. A
    result without the film's DICOM study and instance UIDs (a JPEG or PNG has none) is refused: its Observation
    would be linked to no study and no patient, and could not be told from a resend."""
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
            "manufacturer": MANUFACTURER,
        }],
        "status": "preliminary",
        "category": [{"coding": [{"system": CATEGORY, "code": "imaging", "display": "Imaging"}]}],
        "code": _concept(SNOMED, "233604007", "Pneumonia"),
        "bodySite": _concept(SNOMED, "816094009", "Chest"),  # the SR's finding site (codes.SCT.Chest)
        "issued": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "valueCodeableConcept": _concept(SNOMED, *present),
        # not "validated": a threshold chosen on too few films is a guess, which the notes say (reading_notes)
        "method": {"text": f"pneumoscan model {model_name} ({model_version}), read at its decision threshold"},
        "device": {"reference": "#model"},
        "derivedFrom": derived,
        "component": [
            {"code": _concept(CODE_SYSTEM, "probability", "probability of pneumonia (calibrated)"),
             "valueQuantity": _ratio(result["probability"])},
            {"code": _concept(CODE_SYSTEM, "threshold", "decision threshold"),
             "valueQuantity": _ratio(result["threshold"])},
        ],
    }  # fmt: skip
    film = film_identity(result["study_instance_uid"], result.get("series_instance_uid") or "",
                         result["sop_instance_uid"], source)
    # not the threshold (the SR's finding_mode): the same weights read at another threshold update this reading
    key = derived_uuid(film, model_name, model_version, mode, "fhir")
    body["identifier"] = [{"system": URI, "value": f"urn:uuid:{key}"}]
    if patient is not None:
        body["subject"] = patient
    when, short = effective(source) if source is not None else (None, None)
    if when is not None:  # absent, never null: FHIR has no null element
        body["effectiveDateTime"] = when
    notes = [DISCLAIMER, *reading_notes(result), *filter(None, [short])]
    body["note"] = [{"text": note} for note in notes]
    body["text"] = _narrative(present[1], result, model_name, model_version, notes)
    return Observation.model_validate(body)


def observation_json(result: dict, model_name: str, model_version: str, mode: str = "",
                     source: Dataset | None = None) -> str:
    """The validated Observation as FHIR JSON."""
    obs = build_observation(result, model_name, model_version, mode, source)
    return json.dumps(json.loads(obs.model_dump_json(exclude_none=True)), indent=2)
