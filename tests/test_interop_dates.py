"""Dates and times in ACR-NEMA's forms (``2019.03.07``, ``14:05:09.25``), which films of ACR-NEMA 2.0's era and some
modalities still write: the DICOM SR and Secondary Capture copy them as the same date or time in DICOM's form
(``20190307``, ``140509.25``), and the FHIR Observation reads them as that date and time. A value of neither form, or
no date or time at all, is refused (SR, overlay) or left out (FHIR), named, never quoted."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest

from pneumoscan.interop.fhir import observation_json
from pneumoscan.interop.sr import report_files
from tests import test_interop
from tests.test_interop import READING, _overlay_png
from tests.test_interop_values import reading, refusals, source

film = test_interop.film  # a real training film (224 x 224) as 12-bit values
# pydicom's and highdicom's complaints about the values these films hold on purpose
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:pydicom"),
              pytest.mark.filterwarnings("ignore::UserWarning:highdicom")]

# An attribute's value in ACR-NEMA's form, the same in DICOM's, and values of its shape that are no date or time (and
# why each is refused): a month 13, an hour 25, a fraction of seven digits, a tab after the value.
NOT_A_DATE = "not a DA value pydicom reads"
NOT_A_TIME = "not a TM value pydicom reads"
OLD_FORMS = {
    "StudyDate": ("2019.03.07", "20190307", {"2024-13-45": NOT_A_DATE, "2019.13.45": NOT_A_DATE}),
    "PatientBirthDate": ("2015.01.02", "20150102", {"2015.02.30": NOT_A_DATE, "2015/01/02": NOT_A_DATE}),
    "StudyTime": ("14:05:09", "140509", {"25:00": NOT_A_TIME, "14:60:09": NOT_A_TIME}),
    "StudyTime to the hundredth": ("14:05:09.25", "140509.25", {"14:05:09.1234567": NOT_A_TIME,
                                                                 "14:05:09.": NOT_A_TIME}),
    "PatientBirthTime": ("10:00:00", "100000", {"24:00:00": NOT_A_TIME,
                                                "10:00:00\t": "control characters, which its VR TM does not hold"}),
}  # fmt: skip


def malformed(keyword: str, why: str) -> str:
    """The refusal of a report that names ``keyword`` and ``why``."""
    return f"the source DICOM's {keyword} is malformed ({why}): a report cannot carry it"


@pytest.mark.parametrize("case", [case for case in OLD_FORMS if "Time" in case])
def test_a_time_in_acr_nemas_form_is_copied_in_dicoms_form(film: np.ndarray, case: str) -> None:
    """The report and the overlay are written, holding the same time in the form DICOM writes: the colon form was
    refused, though the film says when it was taken (copied as held, it makes them invalid objects); a value of that
    shape that is no time is refused, named."""
    old, new, bad = OLD_FORMS[case]
    keyword = case.split()[0]
    for part in report_files(source(film, **{keyword: old}), READING, _overlay_png(), "m-1", "v"):
        assert pydicom.dcmread(io.BytesIO(part))[keyword].value == new
    for value, why in bad.items():
        assert refusals(source(film, **{keyword: value})) == [malformed(keyword, why)] * 2, value


def test_a_film_in_acr_nemas_forms_gets_reports_of_every_date_and_time_in_dicoms_form(film: np.ndarray) -> None:
    """A film that writes every date and time so (as the old ones do) has each copied in DICOM's form; a date of
    that shape that is no date is refused, named, as a time is."""
    old = {keyword: forms[0] for keyword, forms in OLD_FORMS.items() if " " not in keyword}
    for part in report_files(source(film, **old), READING, _overlay_png(), "m-1", "v"):
        made = pydicom.dcmread(io.BytesIO(part))
        assert {k: made[k].value for k in old} == {k: OLD_FORMS[k][1] for k in old}
    for keyword in ("StudyDate", "PatientBirthDate"):
        for value, why in OLD_FORMS[keyword][2].items():
            assert refusals(source(film, **{keyword: value})) == [malformed(keyword, why)] * 2, value


# (StudyDate, StudyTime, the Observation's effectiveDateTime) of a film in UTC+1: a time in ACR-NEMA's form is read
# as the same time; one that is no time leaves the date alone, a date that is none leaves both out (as in DICOM's
# form: a wrong date is worse than none).
WHEN = [
    ("2019.03.07", "14:05:09", "2019-03-07T14:05:09+01:00"),
    ("2019.03.07", "14:05:09.25", "2019-03-07T14:05:09.250000+01:00"),
    ("20190307", "14:05", "2019-03-07T14:05:00+01:00"),
    ("2019.03.07", "25:00", "2019-03-07"),
    ("2019.03.07", "14:05:09.1234567", "2019-03-07"),
    ("2024-13-45", "14:05:09", None),
    ("2019.13.45", "140509", None),
]


def test_the_observation_reads_acr_nemas_dates_and_times(film: np.ndarray) -> None:
    for date, time, effective in WHEN:
        header = source(film, StudyDate=date, StudyTime=time, TimezoneOffsetFromUTC="+0100")
        observation = json.loads(observation_json(reading(header), "m-1", "v", source=header))  # validated (R4B)
        assert observation.get("effectiveDateTime") == effective, (date, time)
