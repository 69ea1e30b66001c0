"""Is a film in the model's scope? The DICOM tags that say what was imaged, and the identifiers a result must carry.

The models are trained on frontal chest radiographs of children aged one to five (the Guangzhou pediatric set).
A lateral view, an adult, a CT slice or a knee film is still scored -- refusing would hide the number from a reader
who knows better -- but every such result carries a warning saying why it is outside that scope, and no coded
finding is filed into a hospital's record for a film whose header says it is no frontal chest radiograph
(:data:`NO_CODED_FINDING`). A JPEG or PNG has no tags to check, which is said too, so no result is ever silently
"in scope".

Nothing here reads or returns a patient's name or id: only UIDs, which identify the images, leave this module.
"""

from __future__ import annotations

import re
from datetime import date

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from .appearance import WARNING as APPEARANCE_WARNING
from .decode import Source, colour_spread, image_info, read_dicom_header
from .readers.dicom import size_as_read

RADIOGRAPHY = ("CR", "DX", "DR")  # computed / digital radiography ("DR" is not standard but some devices write it)
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD")
# ViewCodeSequence values (DICOM CID 4010), in SNOMED CT and in the SNOMED RT codes many devices still write
_FRONTAL_CODES = {codes.SCT.PosteroAnterior.value, codes.SCT.AnteroPosterior.value, "R-10214", "R-40888", "R-10206"}
_LATERAL_CODES = {codes.SCT.Lateral.value, codes.SCT.LeftLateral.value, codes.SCT.RightLateral.value, "G-A104",
                  "R-10232", "R-10236"}
# Training population: 1 to 5 years, where "5" lasts until the sixth birthday. Six months of margin below it: an
# infant of 6-11 months is anatomically close to a one-year-old, a newborn is not. Nothing above: at 6 the chest
# is already growing out of the training distribution.
AGE_RANGE_YEARS = (0.5, 6.0)
# The films on disk in train/ are 224 px; an image with a shorter side than that is enlarged, not reduced, and is
# more likely a thumbnail or a screen grab than a radiograph.
MIN_SIDE = 224
# a JPEG's or PNG's warning: modality, body part, view and age, which a DICOM film's tags are checked for, said in
# words a reader of films takes in at once ("scope not checked" had left them to guess what was not checked)
NO_TAGS = "no DICOM tags: not checked to be a frontal chest radiograph of a child of 1-5 years"
# Grey levels (of 255) by which a JPEG's or PNG's colour channels may differ (Reader.colour_spread: 99th percentile
# on the image block-averaged to 64 px) and it still be taken for a grey film. The 5,216 films of the Kermany
# train/ folder, all stored as RGB JPEGs, measure 0 (val/'s 16 are grey JPEGs); JPEG's chroma noise on grey
# pixels, averaged out by the reduction, stays far below this; a colour photograph or a tinted capture is above.
COLOUR_TOLERANCE = 8
IDENTIFIERS = {
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
}
# Every warning about two tags that contradict each other starts so: which of them is true cannot be known, and
# taking the one that puts the film in scope would file a lateral film, a 44-year-old or a CT object as a child's
# frontal chest film. No coded finding is filed for such a film (NO_CODED_FINDING).
CONFLICT = "conflicting tags: "
# The SOP classes a radiograph is stored in: CR, DX, and Secondary Capture (a digitised or exported film). Another
# image storage class the standard names (CT, MR, US, ...) under Modality CR/DX is a header that contradicts itself.
_RADIOGRAPH_CLASSES = ("ComputedRadiographyImageStorage", "DigitalXRayImageStorage", "SecondaryCaptureImageStorage",
                       "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
                       "MultiFrameGrayscaleWordSecondaryCaptureImageStorage")
# PatientAge and the age from the dates may differ by rounding (a "004Y" is 4.0-4.99) and by a de-identified birth
# date cut to the first of January of its year (up to a year older): beyond both, the two disagree
AGE_CONFLICT_YEARS = 2.0
# an age from the dates above this is a placeholder birth date (19000101), not a recorded one
PLACEHOLDER_AGE_YEARS = 120.0
# The warnings of scope_warnings after which no coded finding is filed into a hospital's record (a DICOM SR, a FHIR
# Observation): the object is no grayscale radiograph, or its own header records another body part or a view that
# is not frontal; or its pixels are unlike the model's training films (:mod:`.appearance`). A film that merely lacks
# such a tag, or a child outside the age range, is still reported, with its warnings; format=json and predict
# score every one of them.
NO_CODED_FINDING = re.compile(r"Modality .+ is not a radiograph|PhotometricInterpretation .+: a radiograph is "
                              r"grayscale|image is .+ pixels, smaller than .+: a thumbnail, not a radiograph|"
                              r"BodyPartExamined .+ is not CHEST|lateral view \(|view .+ is not frontal|"
                              + re.escape(APPEARANCE_WARNING) + "|" + re.escape(CONFLICT))


def in_scope(warnings: list[str]) -> bool:
    """False when a warning says the film is no frontal chest radiograph (:data:`NO_CODED_FINDING`): the reading
    does not apply, though its probability is kept for a reader who knows better. ``predict``'s rows and the
    service's answers carry it, so that no reader has to match the warnings' wording to know."""
    return not any(NO_CODED_FINDING.match(w) for w in warnings)


_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def _stored(ds: Dataset, keyword: str) -> str:
    """An element as stripped text, as stored; '' when absent, empty or unreadable (a damaged tag is 'not
    recorded', and the decoder has already refused what it cannot read). Read without pydicom's conversion: its
    warnings about a malformed value quote the value, and a birth date is the patient's."""
    try:
        element = ds.get_item(keyword)
    except Exception:
        return ""
    value = None if element is None else element.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return "" if value is None else str(value).strip(" \x00")


def _text(ds: Dataset, keyword: str) -> str:
    """A coded element (modality, view, sex, ...) as stripped upper-case text: devices differ in case."""
    return _stored(ds, keyword).upper()


def _date(text: str) -> date | None:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])) if len(text) >= 8 else None
    except ValueError:
        return None


def age_years(ds: Dataset) -> float | None:
    """PatientAge ('004Y', '018M', ...) or, without it, PatientBirthDate against the study (or series,
    acquisition, content) date; None when neither gives an age."""
    stated, dated = _ages(ds)
    return dated if stated is None else stated


def _ages(ds: Dataset) -> tuple[float | None, float | None]:
    """(the age PatientAge states, the age PatientBirthDate gives against the study, series, acquisition or
    content date), each None when not recorded."""
    match = _AGE.match(_text(ds, "PatientAge"))
    stated = int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)] if match else None
    born = _date(_text(ds, "PatientBirthDate"))
    dates = (_date(_text(ds, k)) for k in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"))
    taken = next(filter(None, dates), None)
    if born is None or taken is None or taken < born:
        return stated, None
    return stated, (taken - born).days / 365.25


def _view_code(ds: Dataset) -> tuple[str, str]:
    """(kind, as recorded) of the first ViewCodeSequence item, ('', '') when there is none (see :func:`_view`)."""
    try:
        item = (ds.get("ViewCodeSequence") or [None])[0]
    except Exception:
        item = None
    if item is None:
        return "", ""
    value, meaning = _text(item, "CodeValue"), _text(item, "CodeMeaning")
    kind = "frontal" if value in _FRONTAL_CODES else "lateral" if value in _LATERAL_CODES else "other"
    return kind, meaning or value


def _view(ds: Dataset) -> tuple[str, str]:
    """(kind, as recorded): kind is 'frontal', 'lateral', 'other' or '' when the view is not recorded."""
    position = _text(ds, "ViewPosition")
    if position:
        kind = "frontal" if position in FRONTAL_VIEWS else "lateral" if position in LATERAL_VIEWS else "other"
        return kind, position
    return _view_code(ds)


def _conflicts(ds: Dataset, modality: str) -> list[str]:
    """A warning for each pair of tags that contradict each other on the view, the age or the kind of object."""
    found = []
    position, (code_kind, code) = _text(ds, "ViewPosition"), _view_code(ds)
    if position and {_view(ds)[0], code_kind} == {"frontal", "lateral"}:  # a code not known here is no conflict
        found.append(f"{CONFLICT}ViewPosition {position} but ViewCodeSequence {code} ({code_kind} view): which "
                     "view the film is cannot be known")
    stated, dated = _ages(ds)
    if stated is not None and dated is not None and AGE_CONFLICT_YEARS < abs(stated - dated) and \
            dated <= PLACEHOLDER_AGE_YEARS:
        found.append(f"{CONFLICT}PatientAge {_text(ds, 'PatientAge')} ({stated:.1f} years) but PatientBirthDate and "
                     f"the study date give {dated:.1f} years: the patient's age cannot be known")
    sop_class = UID(_stored(ds, "SOPClassUID"))
    if (modality in RADIOGRAPHY and sop_class.type == "SOP Class" and sop_class.keyword.endswith("Storage")
            and not sop_class.keyword.startswith(_RADIOGRAPH_CLASSES)):
        found.append(f"{CONFLICT}SOPClassUID {sop_class.name} but Modality {modality}: the object may be no "
                     "radiograph")
    return found


def scope_warnings(ds: Dataset | None, width: int, height: int) -> list[str]:
    """Why this film may be outside the model's scope (empty when every check passed). ``ds``: the DICOM header,
    None for a JPEG/PNG; ``width`` x ``height``: the film's size as read (a DICOM's pixels made square), not a
    reduced decode's."""
    found: list[str] = []
    if ds is None:
        found.append(NO_TAGS)
    else:
        modality = _text(ds, "Modality")
        if not modality:
            found.append("Modality not recorded: not checked to be a radiograph (CR/DX)")
        elif modality not in RADIOGRAPHY:
            found.append(f"Modality {modality} is not a radiograph (CR/DX): the model reads chest X-ray films only")
        body = _text(ds, "BodyPartExamined")
        if not body:
            found.append("BodyPartExamined not recorded: not checked to be a chest film")
        elif body != "CHEST":
            found.append(f"BodyPartExamined {body} is not CHEST: the model reads chest films only")
        kind, view = _view(ds)
        if not kind:
            found.append("view (ViewPosition) not recorded: not checked to be frontal")
        elif kind == "lateral":
            found.append(f"lateral view ({view}): the model was trained on frontal (PA/AP) films only")
        elif kind == "other":
            found.append(f"view {view} is not frontal (PA/AP): the model was trained on frontal films only")
        age = age_years(ds)
        low, high = AGE_RANGE_YEARS
        if age is None:
            found.append("patient age not recorded (PatientAge, PatientBirthDate): not checked against the "
                         "training population (1-5 years)")
        elif not low <= age < high:
            found.append(f"patient age {age:.1f} years is outside the training population (1-5 years, accepted "
                         f"{low:g} to under {high:g})")
        found += _conflicts(ds, modality)
        photometric = _text(ds, "PhotometricInterpretation")
        if photometric and photometric not in ("MONOCHROME1", "MONOCHROME2"):
            found.append(f"PhotometricInterpretation {photometric}: a radiograph is grayscale (MONOCHROME1/2)")
    if min(height, width) < MIN_SIDE:
        found.append(f"image is {width} x {height} pixels, smaller than {MIN_SIDE} px on a side: a thumbnail, "
                     "not a radiograph")
    return found


def colour_warnings(source: Source) -> list[str]:
    """A warning when a JPEG or PNG is in colour (its channels differ beyond JPEG's noise, :data:`COLOUR_TOLERANCE`):
    it is read as grey and scored, but a radiograph is grey, so it is more likely a photograph or a coloured screen
    capture. Measured on the reduced image: cheap next to the decode that scored it."""
    spread = colour_spread(source)
    if spread <= COLOUR_TOLERANCE:
        return []
    return [f"colour image (its colour channels differ by {spread:.0f} grey levels or more over 1% of it, beyond "
            f"{COLOUR_TOLERANCE}): a radiograph is grayscale; it was read as grey, and may be a photograph or a "
            "coloured screen capture"]


def identifiers(ds: Dataset) -> tuple[dict[str, str | None], list[str]]:
    """The study, series and instance UIDs, as stored (None where the file lacks one), and a warning for each that
    is not a valid UID, which is left out (None) too: what links a result to its film, never a garbled link."""
    found: dict[str, str | None] = {}
    problems = []
    for field, keyword in IDENTIFIERS.items():
        value = _stored(ds, keyword)
        if value and not UID(value).is_valid:
            problems.append(f"{keyword} is not a valid DICOM UID: left out, so this result is not linked to its film")
            value = ""
        found[field] = value or None
    return found, problems


def film(ds: Dataset) -> dict[str, str | float | None]:
    """What a reader checks before trusting a reading: age, sex, view, modality and study date (None where not
    recorded). Never the patient's name or id: the page shows these, and a screen is seen by others."""
    study = _date(_text(ds, "StudyDate"))
    age = age_years(ds)
    return {"age_years": None if age is None else round(age, 2), "sex": _text(ds, "PatientSex") or None,
            "view": _view(ds)[1] or None, "modality": _text(ds, "Modality") or None,
            "study_date": study.isoformat() if study else None}


def describe(source: Source, dicom: bool = False, facts: bool = False) -> dict:
    """The result fields for a decoded film: its UIDs when it is a DICOM (with ``facts``, also :func:`film`),
    and ``warnings`` (a list, possibly empty). The header is read again (header only, pixels left unread): cheap
    next to decoding the pixels."""
    try:
        ds = read_dicom_header(source, dicom)
        if ds is None:
            info = image_info(source)
            width, height = info["width"], info["height"]
            colour = colour_warnings(source)
        else:
            width, height = size_as_read(ds)
    except (ValueError, TypeError) as e:  # a DecodeError too: decoded a moment ago, changed or removed since
        return {"warnings": [f"header could not be read again for the scope checks: {e}"]}
    if ds is None:
        return {"warnings": scope_warnings(ds, width, height) + colour}
    uids, problems = identifiers(ds)
    return {**uids, **(film(ds) if facts else {}), "warnings": scope_warnings(ds, width, height) + problems}
