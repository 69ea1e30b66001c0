"""Results as DICOM: a TID 1500 measurement report in a Comprehensive SR, and the Grad-CAM overlay as a Secondary
Capture image, both in the source film's study with its patient module, so a PACS files them beside the film.

The report says: finding "pneumonia" present or absent (the model's label at its threshold), the calibrated
probability, the threshold, the model's name and version (the algorithm identification of every item), and the
source image it was read from. It is written unverified and incomplete (``VerificationFlag UNVERIFIED``): a
reading by software awaiting a radiologist.
"""

from __future__ import annotations

import copy
import io

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pneumoscan.data.readers.dicom import keep_dicom_values_out_of_logs
from pneumoscan.data.tasks import get_task, list_tasks

keep_dicom_values_out_of_logs("highdicom", "pydicom")  # highdicom warns with whole patient names
MANUFACTURER = "pneumoscan"
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
THRESHOLD = Code("threshold", "99PNEUMOSCAN", "Decision threshold")  # no standard code: a private scheme
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902  # high numbers: after the modality's own series in a viewer
_REFERENCE_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Type 2 attributes of the patient and study modules: present, possibly empty. highdicom copies them from the source,
# which real films (anonymised ones most of all) often lack.
_TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                   "StudyDate", "StudyTime", "ReferringPhysicianName")


def _checked_source(source: Dataset) -> Dataset:
    """The source header, refused when it does not say which study, series and instance it is (a report could not
    be filed with it); a copy with absent type 2 patient/study attributes added empty, as the standard allows."""
    missing = [k for k in _REFERENCE_KEYWORDS if not str(source.get(k, "") or "").strip()]
    if missing:
        raise ValueError(f"the source DICOM has no {', '.join(missing)}: a report cannot reference it")
    source = copy.deepcopy(source)
    for keyword in _TYPE2_KEYWORDS:
        if keyword not in source:
            setattr(source, keyword, "")
    return source


def check_result(result: dict) -> None:
    """A result SR and FHIR can report: a reading (not an error row) of a model whose task reports pneumonia
    (pneumonia, multiclass: :attr:`Task.reports_pneumonia`)."""
    if "error" in result:
        raise ValueError(f"no result to report: {result['error']}")
    task = result.get("task")
    if task not in list_tasks() or not get_task(task).reports_pneumonia:
        raise ValueError(f"DICOM SR and FHIR results report pneumonia, not a {result.get('task')} model's result")


def finding_present(result: dict) -> bool:
    """Pneumonia present: the model's label is its positive class (the probability reached its threshold)."""
    return result["label"] == result["positive"]


def build_sr(source: Dataset, result: dict, model_name: str, model_version: str) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR holding a TID 1500 report of one result (``probability, label, threshold, positive,
    task``) on ``source`` (the film's header; pixels are not needed)."""
    source = _checked_source(source)
    check_result(result)
    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_version)
    unit = codes.UCUM.NoUnits
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="pneumonia"),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Chest)],
        measurements=[
            hd.sr.Measurement(name=codes.DCM.Probability, value=float(result["probability"]), unit=unit,
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=THRESHOLD, value=float(result["threshold"]), unit=unit, algorithm_id=algorithm),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=PNEUMONIA, value=codes.SCT.Present if finding_present(result) else codes.SCT.Absent
            )
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=model_name, manufacturer_name=MANUFACTURER, model_name=model_version
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=[group],
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, series_description="pneumoscan",
        is_complete=True, is_final=False, is_verified=False,
    )  # fmt: skip


def build_heatmap_sc(source: Dataset, overlay_png: bytes, model_name: str, model_version: str) -> hd.sc.SCImage:
    """The Grad-CAM overlay PNG (original | heatmap | blend) as an RGB Secondary Capture in the source's study,
    with its patient module; derived-image wording so nobody takes it for a film."""
    source = _checked_source(source)
    with Image.open(io.BytesIO(overlay_png)) as im:
        rgb = np.asarray(im.convert("RGB"))
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=hd.UID(), series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"), series_description="pneumoscan Grad-CAM overlay",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )  # fmt: skip


def dicom_bytes(ds: Dataset) -> bytes:
    """A DICOM object as a Part 10 file."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
