"""Tags that contradict each other on the view, the age or the kind of object: warned, and no coded finding is
filed, where only the first tag read had decided (a lateral film, a 44-year-old, a CT object filed as a child's
frontal chest film)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (ComputedRadiographyImageStorage, CTImageStorage, DigitalIntraOralXRayImageStorageForProcessing,
                         DigitalMammographyXRayImageStorageForPresentation, DigitalXRayImageStorageForPresentation,
                         MultiFrameGrayscaleWordSecondaryCaptureImageStorage)

from pneumoscan.data.scope import CONFLICT, in_scope, scope_warnings
from pneumoscan.interop.sr import check_result
from tests.builders import dicom_bytes

IN_SCOPE = {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA", "PatientAge": "004Y",
            "PatientBirthDate": "20191001", "StudyDate": "20240101"}  # fmt: skip


def view_code(code: pydicom.sr.coding.Code) -> list[Dataset]:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return [item]


def header(**changes: object) -> Dataset:
    tags = {**IN_SCOPE, **changes}
    data = dicom_bytes(np.zeros((4, 4)), **{k: v for k, v in tags.items() if v is not None})
    return pydicom.dcmread(io.BytesIO(data))


CONFLICTING = {
    "PA, coded right lateral": ({"ViewCodeSequence": view_code(codes.SCT.RightLateral)},
                                "ViewPosition PA but ViewCodeSequence RIGHT LATERAL (lateral view)"),
    "lateral, coded AP": ({"ViewPosition": "LL", "ViewCodeSequence": view_code(codes.SCT.AnteroPosterior)},
                          "ViewPosition LL but ViewCodeSequence"),
    "PA, coded left lateral in SNOMED RT": ({"ViewCodeSequence": view_code(Code("R-10236", "SRT", "left lateral"))},
                                            "ViewPosition PA but ViewCodeSequence LEFT LATERAL (lateral view)"),
    "PA, oriented lateral": ({"PatientOrientation": "A\\F"},
                             "ViewPosition PA but PatientOrientation A\\F (lateral view)"),
    "coded PA, oriented lateral": ({"ViewPosition": None, "PatientOrientation": "P\\F",
                                    "ViewCodeSequence": view_code(codes.SCT.PosteroAnterior)},
                                   "ViewCodeSequence POSTERO-ANTERIOR but PatientOrientation P\\F (lateral view)"),
    "age against the dates": ({"PatientBirthDate": "19800101"},
                              "PatientAge 004Y (4.0 years) but PatientBirthDate and the study date give 44.0 years"),
    "CT object as CR": ({"Modality": "CR", "SOPClassUID": CTImageStorage},
                        "SOPClassUID CT Image Storage but Modality CR: the object may be no radiograph"),
    # classes whose keyword does not end in "Storage" (a mammogram, a dental film, a retired ultrasound class):
    # each had been passed over, and the film read in scope
    "mammogram as DX": ({"SOPClassUID": DigitalMammographyXRayImageStorageForPresentation},
                        "SOPClassUID Digital Mammography X-Ray Image Storage - For Presentation but Modality DX"),
    "intra-oral film as DX": ({"SOPClassUID": DigitalIntraOralXRayImageStorageForProcessing},
                              "SOPClassUID Digital Intra-Oral X-Ray Image Storage - For Processing but Modality DX"),
    "retired ultrasound class as CR": ({"Modality": "CR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.6"},
                                       "SOPClassUID Ultrasound Image Storage but Modality CR"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CONFLICTING))
def test_contradicting_tags_are_warned_and_file_no_finding(case: str) -> None:
    changes, words = CONFLICTING[case]
    found = [w for w in scope_warnings(header(**changes), 224, 224) if w.startswith(CONFLICT)]
    assert len(found) == 1 and words in found[0], found
    assert not in_scope(found)
    with pytest.raises(ValueError, match="its tags contradict each other, so it cannot be known to be a frontal chest "
                                         "film in the model's scope \\(conflicting tags: .*no coded finding"):
        check_result({"task": "pneumonia", "warnings": found})


AGREEING = {
    "PA, coded PA": {"ViewCodeSequence": view_code(codes.SCT.PosteroAnterior)},
    # the SNOMED RT codes many devices write: postero-anterior and antero-posterior are frontal views
    "PA, coded PA in SNOMED RT": {"ViewCodeSequence": view_code(Code("R-10214", "SRT", "postero-anterior"))},
    "AP, coded AP in SNOMED RT": {"ViewPosition": "AP",
                                  "ViewCodeSequence": view_code(Code("R-10206", "SRT", "antero-posterior"))},
    "no ViewPosition, coded PA in SNOMED RT": {
        "ViewPosition": None, "ViewCodeSequence": view_code(Code("R-10214", "SRT", "postero-anterior"))},
    "PA, a view code not known here": {"ViewCodeSequence": view_code(Code("99-LOCAL", "99LOCAL", "chest PA"))},
    # de-identified birth dates: a placeholder, and one cut to the first of January of its year (5.9 years by the
    # dates for a "004Y" a month before the fifth birthday)
    "a placeholder birth date": {"PatientBirthDate": "19000101"},
    "a birth date cut to its year": {"PatientBirthDate": "20180101", "StudyDate": "20231201"},
    "a digitised film as multi-frame secondary capture": {
        "SOPClassUID": MultiFrameGrayscaleWordSecondaryCaptureImageStorage},
    "age within a year of the dates": {"PatientBirthDate": "20190115"},  # 4.96 years: "004Y" until the fifth birthday
    "CR object": {"Modality": "CR", "SOPClassUID": ComputedRadiographyImageStorage},
    "DX object": {"SOPClassUID": DigitalXRayImageStorageForPresentation},
    "secondary capture of a film": {},  # the builder's SOP class
    "an unknown (private) SOP class": {"SOPClassUID": "1.2.3.4.5"},
}


@pytest.mark.parametrize("case", list(AGREEING))
def test_tags_that_agree_are_no_conflict(case: str) -> None:
    assert scope_warnings(header(**AGREEING[case]), 224, 224) == []
