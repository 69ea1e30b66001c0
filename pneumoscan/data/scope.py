"""Is a film in the model's scope? The DICOM tags that say what was imaged, and the identifiers a result must carry.

The models are trained on frontal chest radiographs of children aged one to five (the Guangzhou pediatric set).
A lateral view, an adult, a CT slice or a knee film is still scored -- refusing would hide the number from a reader
who knows better -- but every such result carries a warning saying why it is outside that scope, and where a
warning says the film is no frontal chest radiograph, or not like the training films, the reading does not apply
(:func:`in_scope`): no coded finding is filed into a hospital's record for it. A JPEG or PNG has no tags to check,
which is said too, so no result is ever silently "in scope".

Every warning is written by its :class:`WarningKind`, which also says whether it puts the film out of scope, and
:func:`in_scope` knows a warning by that same kind: the words a reader sees and the decision cannot drift apart.

Nothing here reads or returns a patient's name or id: only UIDs, which identify the images, leave this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from functools import cache, cached_property
from string import Formatter
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (UID, ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                         DigitalXRayImageStorageForProcessing, MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
                         MultiFrameGrayscaleWordSecondaryCaptureImageStorage, SecondaryCaptureImageStorage)
from pydicom.valuerep import DA

from .decode import Source, colour_spread, image_info, read_dicom_header, read_gray
from .readers.dicom import PHOTOMETRICS, field_of_view, size_as_read, standard_form

RADIOGRAPHY = ("CR", "DX", "DR")  # computed / digital radiography ("DR" is not standard but some devices write it)
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD")
@cache
def _view_codes() -> dict[str, tuple[str, str]]:
    """ViewCodeSequence values (DICOM CID 4010), in SNOMED CT and in the SNOMED RT codes many devices still write:
    (kind, the meaning a warning gives it; never the film's own CodeMeaning, which is free text). Built when a film's
    view code is first read: pydicom's code dictionary takes 0.07 s of CPU to import, which every process that
    imports this module (predict, evaluate, train: a JPEG has no view code) paid for nothing."""
    from pydicom.sr.codedict import codes

    frontal = {codes.SCT.PosteroAnterior.value: "POSTERO-ANTERIOR", "R-10214": "POSTERO-ANTERIOR",
               "R-40888": "POSTERO-ANTERIOR", codes.SCT.AnteroPosterior.value: "ANTERO-POSTERIOR",
               "R-10206": "ANTERO-POSTERIOR"}
    lateral = {codes.SCT.Lateral.value: "LATERAL", "G-A104": "LATERAL", codes.SCT.LeftLateral.value: "LEFT LATERAL",
               "R-10236": "LEFT LATERAL", codes.SCT.RightLateral.value: "RIGHT LATERAL", "R-10232": "RIGHT LATERAL"}
    return {**{v: ("frontal", m) for v, m in frontal.items()}, **{v: ("lateral", m) for v, m in lateral.items()}}


# The terms a warning or a film's facts may repeat of a coded element the film records: DICOM's defined terms (PS3.3
# C.7.3.1.1.1 for Modality, retired ones too; PS3.16 Annex L for BodyPartExamined; PS3.3 C.8.11.5.1.1 for
# ViewPosition, with the lateral spellings above) and PhotometricInterpretation's (readers.dicom.PHOTOMETRICS). Any
# other value is not repeated (:func:`defined_term`): a device, or a person at its console, may write free text there,
# a patient's name or id among it, and a warning reaches the results, the log, the page and the reports filed.
MODALITIES = frozenset((
    *RADIOGRAPHY, "ANN", "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CFM", "CT", "CTPROTOCOL", "DG", "DMS", "DOC",
    "ECG", "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN",
    "LS", "M3D", "MG", "MR", "NM", "OAM", "OCT", "OP", "OPM", "OPT", "OPTBSV", "OPTENF", "OPV", "OSS", "OT", "PA",
    "PLAN", "POS", "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTINTENT", "RTPLAN", "RTRAD",
    "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "STAIN", "TEXTUREMAP", "TG", "US", "VA",
    "XA", "XAPROTOCOL", "XC",
    "AS", "CD", "CF", "CP", "CS", "DD", "DF", "DM", "DS", "EC", "FA", "FS", "LP", "MA", "MS", "OPR", "ST", "VF"))
BODY_PARTS = frozenset((
    "ABDOMEN", "ABDOMENPELVIS", "ADRENAL", "ANKLE", "AORTA", "ARM", "AXILLA", "BACK", "BLADDER", "BRAIN", "BREAST",
    "BRONCHUS", "BUTTOCK", "CALCANEUS", "CALF", "CAROTID", "CEREBELLUM", "CERVIX", "CHEEK", "CHEST", "CHESTABDOMEN",
    "CHESTABDPELVIS", "CIRCLEOFWILLIS", "CLAVICLE", "COCCYX", "COLON", "CORNEA", "CORONARYARTERY", "CSPINE", "CTSPINE",
    "DUODENUM", "EAR", "ELBOW", "ESOPHAGUS", "EXTREMITY", "EYE", "EYELID", "FACE", "FEMUR", "FINGER", "FOOT",
    "GALLBLADDER", "HAND", "HEAD", "HEADNECK", "HEART", "HIP", "HUMERUS", "IAC", "ILEUM", "ILIUM", "JAW", "JEJUNUM",
    "KIDNEY", "KNEE", "LARYNX", "LEG", "LIVER", "LSPINE", "LSSPINE", "LUNG", "MAXILLA", "MEDIASTINUM", "MOUTH", "NECK",
    "NECKCHEST", "NECKCHESTABDOMEN", "NECKCHESTABDPELV", "NOSE", "ORBIT", "OVARY", "PANCREAS", "PAROTID", "PATELLA",
    "PELVIS", "PENIS", "PHARYNX", "PROSTATE", "RECTUM", "RIB", "SCALP", "SCAPULA", "SCLERA", "SCROTUM", "SHOULDER",
    "SKULL", "SPINE", "SPLEEN", "SSPINE", "STERNUM", "STOMACH", "SUBMANDIBULAR", "TESTIS", "THIGH", "THUMB", "THYMUS",
    "THYROID", "TIBIA", "TLSPINE", "TMJ", "TOE", "TONGUE", "TRACHEA", "TSPINE", "URETER", "URETHRA", "UTERUS", "VAGINA",
    "VULVA", "WHOLEBODY", "WRIST", "ZYGOMA"))
VIEW_POSITIONS = frozenset((*FRONTAL_VIEWS, *LATERAL_VIEWS, "RLO", "LLO"))
# a direction of PatientOrientation (PS3.3 C.7.6.1.1.1) in the sagittal plane: anterior, posterior, head, foot
_SAGITTAL = re.compile(r"[APHF]+")
_ORIENTATION = "PatientOrientation "  # what a view told by it is said as, before its directions
# what is said in place of a value that is none of those terms: words without quotes, since a reason that holds
# warnings passes through core.logs.redact, which would take everything between two quotes for one quoted value
NOT_SHOWN = "(a value that is no DICOM defined term, not shown)"
# Training population: 1 to 5 years, where "5" lasts until the sixth birthday. Six months of margin below it: an
# infant of 6-11 months is anatomically close to a one-year-old, a newborn is not. Nothing above: at 6 the chest
# is already growing out of the training distribution.
AGE_RANGE_YEARS = (0.5, 6.0)
# The films on disk in train/ are 224 px; an image with a shorter side than that is enlarged, not reduced, and is
# more likely a thumbnail or a screen grab than a radiograph.
MIN_SIDE = 224
# The Kermany originals' longer side is at most about 1.73 times their shorter. A film is squashed to a square for the
# model, so one whose longer side is more than this many times its shorter is a strip or a scanned page, squashed
# into pixels the model has never seen (it read as a chest film with only the no-tags warning).
MAX_ASPECT = 3.0
# Grey levels (of 255) by which a JPEG's or PNG's colour channels may differ (Reader.colour_spread: 99th percentile
# on the image block-averaged to 64 px) and it still be taken for a grey film. The 5,216 films of the Kermany
# train/ folder, all stored as RGB JPEGs, measure 0 (val/'s 16 are grey JPEGs); JPEG's chroma noise on grey
# pixels, averaged out by the reduction, stays far below this; a colour photograph or a tinted capture is above.
COLOUR_TOLERANCE = 8
# A chest film's field of view, the film's columns and rows times its pixel spacing, is about 350 to 430 mm a side
# for an adult, less for a small child's collimated chest; a side beyond these limits is no whole chest (a finger, a
# detail), or a spacing the header gets wrong (5 mm a pixel puts a 2,000-pixel film at 10 m)
FIELD_MM = (100.0, 1000.0)
IDENTIFIERS = {
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
}
# The SOP classes of radiographs: CR and DX. An object of one is a radiograph whatever its Modality says, so `pacs`
# retrieves it to be scored (unless it is For Processing: readers.dicom.for_processing).
RADIOGRAPH_CLASSES = frozenset({ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                                DigitalXRayImageStorageForProcessing})
# The classes a radiograph may also be stored in: Secondary Capture (a digitised or exported film). A scanned form or
# a dose screen is stored so too, so the class alone makes no object a radiograph; but under Modality CR/DX, any
# other image storage class the standard names (CT, MR, US, ...) is a header that contradicts itself.
CAPTURE_CLASSES = frozenset({SecondaryCaptureImageStorage, MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
                             MultiFrameGrayscaleWordSecondaryCaptureImageStorage})
# the keyword of a storage SOP class, an object's class: a mammogram's and a dental film's (...StorageForPresentation),
# and a retired or trial one's (UltrasoundImageStorageRetired), which a keyword that ends in "Storage" left out
_STORED_OBJECT = re.compile(r"Storage(ForPresentation|ForProcessing)?(Retired|Trial)?$")
# PatientAge and the age from the dates may differ by rounding (a "004Y" is 4.0-4.99) and by a de-identified birth
# date cut to the first of January of its year (up to a year older): beyond both, the two disagree
AGE_CONFLICT_YEARS = 2.0
# an age from the dates above this is a placeholder birth date (19000101), not a recorded one
PLACEHOLDER_AGE_YEARS = 120.0


@dataclass(frozen=True)
class WarningKind:
    """One kind of warning: its words, with :meth:`str.format` fields for what the film records (``template``);
    whether it puts the film outside the model's scope (``out_of_scope``: the film is no frontal chest radiograph,
    its tags contradict each other, or its pixels are unlike the training films), where its reading does not apply
    and no coded finding is filed for it; and what says so (``source``: the header, or the pixels). A warning is
    written by :meth:`text` and known by :meth:`wrote`, from the same template: a regex that restated the words would
    let a reworded warning leave a lateral film or a CT "in scope", with "Pneumonia: Present" filed on it."""

    template: str
    out_of_scope: bool
    source: Literal["header", "pixels"] = "header"

    def text(self, **values: object) -> str:
        """The warning, its fields filled in (numbers formatted as the template says)."""
        return self.template.format(**values)

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        """The template's words, each field any text (a film's value may hold any character)."""
        return re.compile("".join(re.escape(words) + ("" if field is None else ".*?")
                                  for words, field, _, _ in Formatter().parse(self.template)), re.DOTALL)

    def wrote(self, warning: str) -> bool:
        """Whether ``warning`` is one that :meth:`text` of this kind writes."""
        return self._pattern.fullmatch(warning) is not None


# Every warning about two tags that contradict each other starts so: which of them is true cannot be known, and
# taking the one that puts the film in scope would file a lateral film, a 44-year-old or a CT object as a child's
# frontal chest film: such a film is out of scope.
CONFLICT = "conflicting tags: "
CONTENT = "image content: "  # every warning of :mod:`.appearance` starts so: what the pixels say
# a JPEG's or PNG's warning: modality, body part, view and age, which a DICOM film's tags are checked for, said in
# words a reader of films takes in at once ("scope not checked" had left them to guess what was not checked)
UNTAGGED = WarningKind("no DICOM tags: not checked to be a frontal chest radiograph of a child of 1-5 years",
                       out_of_scope=False)
NO_TAGS = UNTAGGED.text()
# Out of scope: the object is no grayscale radiograph, or its own header records another body part or a view that
# is not frontal, or two of its tags contradict each other. In scope, with its warnings: a film that merely lacks
# such a tag, or a child outside the age range, is still a frontal chest film by its header.
NO_MODALITY = WarningKind("Modality not recorded: not checked to be a radiograph (CR/DX)", out_of_scope=False)
NOT_RADIOGRAPH = WarningKind("Modality {modality} is not a radiograph (CR/DX): the model reads chest X-ray films only",
                             out_of_scope=True)
NO_BODY_PART = WarningKind("BodyPartExamined not recorded: not checked to be a chest film", out_of_scope=False)
NOT_CHEST = WarningKind("BodyPartExamined {body} is not CHEST: the model reads chest films only", out_of_scope=True)
NO_VIEW = WarningKind("view (ViewPosition) not recorded: not checked to be frontal", out_of_scope=False)
LATERAL = WarningKind("lateral view ({view}): the model was trained on frontal (PA/AP) films only", out_of_scope=True)
NOT_FRONTAL = WarningKind("view {view} is not frontal (PA/AP): the model was trained on frontal films only",
                          out_of_scope=True)
NO_AGE = WarningKind("patient age not recorded (PatientAge, PatientBirthDate): not checked against the training "
                     "population (1-5 years)", out_of_scope=False)
# a PatientAge or PatientBirthDate the film records, malformed ({why}, in words that never quote it: an age or a birth
# date is the patient's), and what follows for the age ({then}: AGE_NOT_KNOWN, or what the age is taken from). Not
# "not recorded": the film records a value, and its fault is said, as a missing age's is, and the film stays in scope.
AGE_MALFORMED = WarningKind("PatientAge is malformed ({why}): {then}", out_of_scope=False)
BIRTH_DATE_MALFORMED = WarningKind("PatientBirthDate is malformed ({why}): {then}", out_of_scope=False)
AGE_NOT_KNOWN = "the patient's age is not known, so not checked against the training population (1-5 years)"
AGE_FROM_DATES = "the age is taken from PatientBirthDate and the study date alone"
AGE_UNCHECKED = "the age PatientAge states is not checked against the birth date"
AGE_OUTSIDE = WarningKind("patient age {age:.1f} years is outside the training population (1-5 years, accepted "
                          "{low:g} to under {high:g})", out_of_scope=False)
VIEW_CONFLICT = WarningKind(CONFLICT + "ViewPosition {position} but ViewCodeSequence {code} ({kind} view): which view "
                            "the film is cannot be known", out_of_scope=True)
ORIENTATION_CONFLICT = WarningKind(CONFLICT + "{stated} but PatientOrientation {orientation} (lateral view): which "
                                   "view the film is cannot be known", out_of_scope=True)
AGE_CONFLICT = WarningKind(CONFLICT + "PatientAge {recorded} ({stated:.1f} years) but PatientBirthDate and the study "
                           "date give {dated:.1f} years: the patient's age cannot be known", out_of_scope=True)
CLASS_CONFLICT = WarningKind(CONFLICT + "SOPClassUID {sop_class} but Modality {modality}: the object may be no "
                             "radiograph", out_of_scope=True)
NOT_GRAYSCALE = WarningKind("PhotometricInterpretation {photometric}: a radiograph is grayscale (MONOCHROME1/2)",
                            out_of_scope=True)
THUMBNAIL = WarningKind("image is {width} x {height} pixels, smaller than {least} px on a side: a thumbnail, not a "
                        "radiograph", out_of_scope=True)
ELONGATED = WarningKind("image is {width} x {height} pixels, its longer side {ratio:.1f} times its shorter, more than "
                        "{most:g}: a strip or a scanned page, not a chest film", out_of_scope=True)
FIELD = WarningKind("field of view {width:.4g} x {height:.4g} mm by its {keyword}, outside {low:g} to {high:g} mm a "
                    "side, where a chest film's is about 350 to 430 mm: not a whole chest film, or its {keyword} is "
                    "wrong", out_of_scope=True)
# a JPEG or PNG in colour, read as grey: out of scope as a DICOM object in colour is (NOT_GRAYSCALE), by its pixels
COLOUR = WarningKind("colour image (its colour channels differ by {spread:.0f} grey levels or more over 1% of it, "
                     "beyond {tolerance}): a radiograph is grayscale; it was read as grey, and may be a photograph or "
                     "a coloured screen capture", out_of_scope=True, source="pixels")
# text in the pixels (a name, a date, a side marker, a device's box), as the header's BurnedInAnnotation says: the film
# is still a chest film (most carry a side marker), but a model may read a box of text as a sign of the disease it
# went with, and a heatmap or a copy of the film sent on carries what the text says of the patient
BURNED_IN = WarningKind("BurnedInAnnotation YES: text is burned into its pixels, which a model may read as a sign, "
                        "and a heatmap or copy of the film shows it: remove what names the patient before either is "
                        "sent on", out_of_scope=False)
INVALID_UID = WarningKind("{keyword} is not a valid DICOM UID: left out, so this result is not linked to its film",
                          out_of_scope=False)
UNREAD = WarningKind("header could not be read again for the scope checks: {reason}", out_of_scope=False)
# what :mod:`.appearance` finds from the pixels: a blurred chest film is still a chest film, but not like the films
# the model was trained on
LOW_CONTRAST = WarningKind(CONTENT + "much less contrast than the training films ({spread:.0f} grey levels between "
                           "its 1st and 99th percentiles at the model's input ({width} x {height} px), the least "
                           "allowed {least:.0f}): a window or export fault?", out_of_scope=True, source="pixels")
CLIPPED_WHITE = WarningKind(CONTENT + "{share:.0f} % of it is white at the model's input ({width} x {height} px), "
                            "where the training films have at most {most:.1f} %: a window that clips, or an export "
                            "fault?", out_of_scope=True, source="pixels")
CLIPPED_BLACK = WarningKind(CONTENT + "{share:.0f} % of its middle is black at the model's input ({width} x {height} "
                            "px), where the training films have at most {most:.1f} %: a window that clips, or an "
                            "export fault?", out_of_scope=True, source="pixels")
UNLIKE_LAYOUT = WarningKind(CONTENT + "its layout of light and dark is unlike that of the training films ({times:.2f} "
                            "times the limit): another view or body part, a turned or inverted film, wide borders or "
                            "padding, or no radiograph", out_of_scope=True, source="pixels")
TURNED = WarningKind(CONTENT + "it reads as stored turned or upside down (turned, it is {closer:.1f} times closer to "
                     "the layout of the training films)", out_of_scope=True, source="pixels")
BLURRED = WarningKind(CONTENT + "blurrier than the training films", out_of_scope=True, source="pixels")
NOISY = WarningKind(CONTENT + "more fine detail or noise than the training films", out_of_scope=True, source="pixels")
# a film read by a model that records no appearance of its training films (trained on too few, or before bundles kept
# one): said with every reading, since nothing else near it says that noise or a form would read as confidently
CONTENT_UNCHECKED = WarningKind(CONTENT + "not checked: this model records no appearance of its training films, so "
                                "a film unlike them (noise, a form, a turned film) is not flagged", out_of_scope=False,
                                source="pixels")
# every kind of warning this module and :mod:`.appearance` write, those that put a film out of scope first, so that a
# warning two kinds could have written counts against the film; each by the name the service's /metrics counts it
# under (pneumoscan_scope_warnings_total's kind), fixed here so that a reworded or renamed kind keeps its series
NAMED_KINDS = {"not_radiograph": NOT_RADIOGRAPH, "not_chest": NOT_CHEST, "lateral": LATERAL,
               "not_frontal": NOT_FRONTAL, "view_conflict": VIEW_CONFLICT,
               "orientation_conflict": ORIENTATION_CONFLICT, "age_conflict": AGE_CONFLICT,
               "class_conflict": CLASS_CONFLICT, "not_grayscale": NOT_GRAYSCALE, "thumbnail": THUMBNAIL,
               "elongated": ELONGATED, "field_of_view": FIELD, "colour": COLOUR, "low_contrast": LOW_CONTRAST,
               "clipped_white": CLIPPED_WHITE, "clipped_black": CLIPPED_BLACK, "unlike_layout": UNLIKE_LAYOUT,
               "turned": TURNED, "blurred": BLURRED, "noisy": NOISY, "untagged": UNTAGGED, "no_modality": NO_MODALITY,
               "no_body_part": NO_BODY_PART, "no_view": NO_VIEW, "no_age": NO_AGE, "age_malformed": AGE_MALFORMED,
               "birth_date_malformed": BIRTH_DATE_MALFORMED, "age_outside": AGE_OUTSIDE, "burned_in_text": BURNED_IN,
               "invalid_uid": INVALID_UID,
               "unread": UNREAD, "content_unchecked": CONTENT_UNCHECKED}
KINDS = tuple(NAMED_KINDS.values())


def kind_of(warning: str) -> WarningKind | None:
    """The kind that wrote ``warning`` (:data:`KINDS`); None for one no scope check wrote (a second stage's caveat,
    a report that could not be written)."""
    return next((kind for kind in KINDS if kind.wrote(warning)), None)


def outside_scope(warnings: list[str]) -> list[tuple[str, WarningKind]]:
    """The warnings that put the film outside the model's scope, each with its kind (:attr:`WarningKind.source`
    says whether its header or its pixels said so)."""
    return [(w, kind) for w in warnings if (kind := kind_of(w)) is not None and kind.out_of_scope]


def in_scope(warnings: list[str]) -> bool:
    """False when a warning puts the film outside the model's scope (:attr:`WarningKind.out_of_scope`): the reading
    does not apply, though its probability is kept for a reader who knows better. ``predict``'s rows and the
    service's answers carry it, so that no reader has to match the warnings' wording to know."""
    return not outside_scope(warnings)


# PatientAge (VR AS): three digits and a unit, four characters in all (PS3.5 6.2); "5Y" or "005X" is no age
_AGE = re.compile(r"(\d{3})([DWMY])")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
PATIENT_SEXES = ("M", "F", "O")  # PatientSex's defined terms (PS3.3 C.7.1.1); highdicom refuses any other
NOT_AN_AGE = "not three digits and a unit D, W, M or Y, as in 004Y"
NOT_A_DATE = "not a DA value pydicom reads"  # as the DICOM SR words it (interop.sr)
BORN_AFTER = "later than the date the film was taken"


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


def burned_in(ds: Dataset) -> str | None:
    """The film's BurnedInAnnotation, YES or NO; None when it does not say (the flag is type 3: not known is left
    unsaid), or says something else."""
    said = _text(ds, "BurnedInAnnotation")
    return said if said in ("YES", "NO") else None


def defined_term(value: str, terms: frozenset[str]) -> str:
    """``value`` (a coded element as :func:`_text` reads it) when it is one of ``terms``, else :data:`NOT_SHOWN`: what
    a warning or a film's facts say of it (:data:`MODALITIES`)."""
    return value if value in terms else NOT_SHOWN


def _date(text: str) -> date | None:
    """A DA value as pydicom reads it, in DICOM's form (20150102) or ACR-NEMA's (2015.01.02, which old films still
    hold): the reading the DICOM SR judges a date by (:func:`pneumoscan.interop.sr.malformed_reason`), so a date one
    takes is one the other takes."""
    try:
        return DA(standard_form("DA", text) or text) if text else None
    except (ValueError, TypeError):
        return None


def _age_value(ds: Dataset, keyword: str) -> tuple[str, str | None]:
    """(``keyword``'s one value as stripped upper-case text, '' when absent or empty; why it is malformed, None when
    it is not): more than one value, or an element that cannot be read, is no age. The reason never quotes it."""
    try:
        element = ds.get_item(keyword)
    except Exception:
        return "", "unreadable"
    text = _text(ds, keyword)
    several = element is not None and (isinstance(element.value, MultiValue) or "\\" in text)
    return ("", "more than one value") if several else (text, None)


def _stated_age(ds: Dataset) -> tuple[float | None, str | None]:
    """(the age PatientAge states in years, None when it records none or a malformed one; why it is malformed)."""
    text, why = _age_value(ds, "PatientAge")
    if why is not None or not text:
        return None, why
    match = _AGE.fullmatch(text)
    if match is None:
        return None, NOT_AN_AGE
    return int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)], None


def _dated_age(ds: Dataset) -> tuple[float | None, str | None]:
    """(the age PatientBirthDate gives against the study, series, acquisition or content date, None when either is
    not recorded or the birth date is malformed; why the birth date is malformed: not a date, or after the film)."""
    text, why = _age_value(ds, "PatientBirthDate")
    if why is not None or not text:
        return None, why
    born = _date(text)
    if born is None:
        return None, NOT_A_DATE
    dates = (_date(_text(ds, k)) for k in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"))
    taken = next(filter(None, dates), None)
    if taken is None:
        return None, None
    if taken < born:
        return None, BORN_AFTER
    return (taken - born).days / 365.25, None


def age_years(ds: Dataset) -> float | None:
    """PatientAge ('004Y', '018M', ...) or, without a valid one, PatientBirthDate against the study (or series,
    acquisition, content) date; None when neither gives an age (:func:`_age_warnings` says why)."""
    stated, dated = _ages(ds)
    return dated if stated is None else stated


def _ages(ds: Dataset) -> tuple[float | None, float | None]:
    """(the age PatientAge states, the age PatientBirthDate gives against the study, series, acquisition or
    content date), each None when not recorded or malformed."""
    return _stated_age(ds)[0], _dated_age(ds)[0]


def _age_warnings(ds: Dataset) -> list[str]:
    """The age's warnings: a malformed PatientAge or PatientBirthDate said so (never as "not recorded", and never
    quoted), with what the age was then taken from; the age not recorded; or an age outside the training range."""
    (stated, age_fault), (dated, born_fault) = _stated_age(ds), _dated_age(ds)
    age = dated if stated is None else stated
    found = []
    if age_fault is not None:
        found.append(AGE_MALFORMED.text(why=age_fault, then=AGE_NOT_KNOWN if age is None else AGE_FROM_DATES))
    if born_fault is not None:
        found.append(BIRTH_DATE_MALFORMED.text(why=born_fault, then=AGE_NOT_KNOWN if age is None else AGE_UNCHECKED))
    low, high = AGE_RANGE_YEARS
    if age is None and not found:
        found.append(NO_AGE.text())
    elif age is not None and not low <= age < high:
        found.append(AGE_OUTSIDE.text(age=age, low=low, high=high))
    return found


def _view_code(ds: Dataset) -> tuple[str, str]:
    """(kind, as said) of the first ViewCodeSequence item, ('', '') when there is none (see :func:`_view`)."""
    try:
        item = (ds.get("ViewCodeSequence") or [None])[0]
    except Exception:
        item = None
    if item is None:
        return "", ""
    return _view_codes().get(_text(item, "CodeValue"), ("other", NOT_SHOWN))


def _view(ds: Dataset) -> tuple[str, str]:
    """(kind, as said): kind is 'frontal', 'lateral', 'other' or '' when the view is not recorded; what is said of it
    is the ViewPosition when it is a defined term, a code's meaning as CID 4010 gives it, else :data:`NOT_SHOWN`."""
    position = _text(ds, "ViewPosition")
    if position:
        kind = "frontal" if position in FRONTAL_VIEWS else "lateral" if position in LATERAL_VIEWS else "other"
        return kind, defined_term(position, VIEW_POSITIONS)
    coded = _view_code(ds)
    return coded if coded[0] else _oriented_lateral(ds)


def _oriented_lateral(ds: Dataset) -> tuple[str, str]:
    """('lateral', as said) when the film's PatientOrientation (type 1 in a DX image, where ViewPosition is type 3)
    gives its rows and columns directions of the patient with no left or right in either (front to back, head to
    foot: a lateral film, turned or not), else ('', ''): a lateral film that recorded no view was taken as a frontal
    one whose view is not recorded, and filed as a finding. A frontal or oblique orientation leaves the view not
    recorded (an AP and a PA film have the same one)."""
    try:
        value = ds.get("PatientOrientation")
        directions = [str(v).strip().upper() for v in (value if isinstance(value, MultiValue) else [value])]
    except Exception:  # a damaged value says nothing of the view
        return "", ""
    if len(directions) == 2 and all(_SAGITTAL.fullmatch(d) for d in directions):
        return "lateral", f"{_ORIENTATION}{directions[0]}\\{directions[1]}"
    return "", ""


def _conflicts(ds: Dataset, modality: str) -> list[str]:
    """A warning for each pair of tags that contradict each other on the view (a frontal ViewPosition or
    ViewCodeSequence against a lateral one, or against a PatientOrientation with no left or right), the age or the
    kind of object."""
    found = []
    position, (code_kind, code) = _text(ds, "ViewPosition"), _view_code(ds)
    view, said = _view(ds)
    if position and {view, code_kind} == {"frontal", "lateral"}:  # a code not known here is no conflict
        found.append(VIEW_CONFLICT.text(position=position, code=code, kind=code_kind))
    if view == "frontal" and (oriented := _oriented_lateral(ds))[0]:
        stated = f"ViewPosition {position}" if position else f"ViewCodeSequence {said}"
        found.append(ORIENTATION_CONFLICT.text(stated=stated, orientation=oriented[1].removeprefix(_ORIENTATION)))
    stated, dated = _ages(ds)
    if stated is not None and dated is not None and AGE_CONFLICT_YEARS < abs(stated - dated) and \
            dated <= PLACEHOLDER_AGE_YEARS:
        found.append(AGE_CONFLICT.text(recorded=_text(ds, "PatientAge"), stated=stated, dated=dated))
    sop_class = UID(_stored(ds, "SOPClassUID"))
    if (modality in RADIOGRAPHY and sop_class.type == "SOP Class" and _STORED_OBJECT.search(sop_class.keyword)
            and sop_class not in RADIOGRAPH_CLASSES | CAPTURE_CLASSES):
        found.append(CLASS_CONFLICT.text(sop_class=sop_class.name, modality=modality))
    return found


def scope_warnings(ds: Dataset | None, width: int, height: int, reduced_to: int | None = None) -> list[str]:
    """Why this film may be outside the model's scope (empty when every check passed). ``ds``: the DICOM header,
    None for a JPEG/PNG or an array; ``width`` x ``height``: the film's size as read (a DICOM's pixels made square),
    not a reduced decode's. ``reduced_to``: for an array a caller decoded, the side a decode may have reduced it
    towards (``read_gray(path, target=...)``, as the Python API is shown used): an array whose shorter side is above
    it may be a larger film so reduced, whose size as read is not known, so it is not taken for a thumbnail (a
    bundle's decode target is at least :data:`MIN_SIDE` when its training films were, as the Kermany ones are)."""
    found: list[str] = []
    if ds is None:
        found.append(NO_TAGS)
    else:
        modality = _text(ds, "Modality")
        if not modality:
            found.append(NO_MODALITY.text())
        elif modality not in RADIOGRAPHY:
            found.append(NOT_RADIOGRAPH.text(modality=defined_term(modality, MODALITIES)))
        body = _text(ds, "BodyPartExamined")
        if not body:
            found.append(NO_BODY_PART.text())
        elif body != "CHEST":
            found.append(NOT_CHEST.text(body=defined_term(body, BODY_PARTS)))
        kind, view = _view(ds)
        if not kind:
            found.append(NO_VIEW.text())
        elif kind == "lateral":
            found.append(LATERAL.text(view=view))
        elif kind == "other":
            found.append(NOT_FRONTAL.text(view=view))
        found += _age_warnings(ds)
        found += _conflicts(ds, modality)
        found += _field_warnings(ds)
        photometric = _text(ds, "PhotometricInterpretation")
        if photometric and photometric not in ("MONOCHROME1", "MONOCHROME2"):
            found.append(NOT_GRAYSCALE.text(photometric=defined_term(photometric, PHOTOMETRICS)))
        if burned_in(ds) == "YES":
            found.append(BURNED_IN.text())
    if min(height, width) < MIN_SIDE and (reduced_to is None or min(height, width) <= reduced_to):
        found.append(THUMBNAIL.text(width=width, height=height, least=MIN_SIDE))
    if max(height, width) > MAX_ASPECT * min(height, width):
        found.append(ELONGATED.text(width=width, height=height, ratio=max(height, width) / max(min(height, width), 1),
                                    most=MAX_ASPECT))
    return found


def _field_warnings(ds: Dataset) -> list[str]:
    """A warning when the film's field of view (:func:`~.readers.dicom.field_of_view`) has a side outside
    :data:`FIELD_MM`; none when its header gives no spacing."""
    field = field_of_view(ds)
    if field is None:
        return []
    keyword, width, height = field
    low, high = FIELD_MM
    if low <= min(width, height) and max(width, height) <= high:
        return []
    return [FIELD.text(width=width, height=height, keyword=keyword, low=low, high=high)]


def colour_warnings(source: Source) -> list[str]:
    """A warning when a JPEG or PNG is in colour (its channels differ beyond JPEG's noise, :data:`COLOUR_TOLERANCE`):
    it is read as grey and scored, but a radiograph is grey, so it is more likely a photograph or a coloured screen
    capture. Measured on the reduced image: cheap next to the decode that scored it."""
    spread = colour_spread(source)
    if spread <= COLOUR_TOLERANCE:
        return []
    return [COLOUR.text(spread=spread, tolerance=COLOUR_TOLERANCE)]


def identifiers(ds: Dataset) -> tuple[dict[str, str | None], list[str]]:
    """The study, series and instance UIDs, as stored (None where the file lacks one), and a warning for each that
    is not a valid UID, which is left out (None) too: what links a result to its film, never a garbled link."""
    found: dict[str, str | None] = {}
    problems = []
    for field, keyword in IDENTIFIERS.items():
        value = _stored(ds, keyword)
        if value and not UID(value).is_valid:
            problems.append(INVALID_UID.text(keyword=keyword))
            value = ""
        found[field] = value or None
    return found, problems


def film_facts(ds: Dataset) -> dict[str, str | float | None]:
    """What a reader checks before trusting a reading: age, sex, view, modality and study date (None where not
    recorded or malformed, as the DICOM SR judges them: a sex other than PATIENT_SEXES, several values, a date
    pydicom does not read; a view or modality that is no defined term as :data:`NOT_SHOWN`). Never the patient's name
    or id: the page shows these, and a screen is seen by others."""
    study = _date(_text(ds, "StudyDate"))
    age, sex, modality = age_years(ds), _stored(ds, "PatientSex"), _text(ds, "Modality")
    return {"age_years": None if age is None else round(age, 2), "sex": sex if sex in PATIENT_SEXES else None,
            "view": _view(ds)[1] or None, "modality": defined_term(modality, MODALITIES) if modality else None,
            "study_date": study.isoformat() if study else None}


# the fields of a film's header or format that figures are grouped by (``evaluate --by``: :func:`grouping`)
GROUPING_FIELDS = ("format", "PatientSex", "PatientAge", "Manufacturer", "ViewPosition", "InstitutionName",
                   "BurnedInAnnotation")
# PatientAge's bands (upper bound in years, exclusive; name): an infant's film and a teenager's differ, and a
# child's age in years alone would make groups too small for an interval
AGE_BANDS = ((1.0, "under 1 year"), (3.0, "1-2 years"), (6.0, "3-5 years"), (12.0, "6-11 years"),
             (18.0, "12-17 years"))
ADULT = "18 years and over"


def age_band(years: float) -> str:
    """The band of :data:`AGE_BANDS` an age in years falls in."""
    return next((name for upper, name in AGE_BANDS if years < upper), ADULT)


def grouping(ds: Dataset | None, format_name: str) -> dict[str, str]:
    """The :data:`GROUPING_FIELDS` a film records (those it does not are left out): its ``format_name`` (JPEG, PNG,
    DICOM), and from a DICOM header its sex and view as defined terms (:data:`NOT_SHOWN` for another value), its
    age's band (:func:`age_band`, from PatientAge or the birth date, as :func:`age_years` reads them), its
    manufacturer and institution as stored, and its BurnedInAnnotation (:func:`burned_in`: whether films with text in
    their pixels, a shortcut a model may read, score otherwise than the rest)."""
    found = {"format": format_name}
    if ds is None:
        return found
    sex, position, age = _text(ds, "PatientSex"), _text(ds, "ViewPosition"), age_years(ds)
    values = {"PatientSex": sex and defined_term(sex, frozenset(PATIENT_SEXES)),
              "PatientAge": "" if age is None else age_band(age),
              "ViewPosition": position and defined_term(position, VIEW_POSITIONS),
              "Manufacturer": _stored(ds, "Manufacturer"), "InstitutionName": _stored(ds, "InstitutionName"),
              "BurnedInAnnotation": burned_in(ds) or ""}
    return found | {key: value for key, value in values.items() if value}


def describe(source: Source, dicom: bool = False, facts: bool = False, dataset: Dataset | None = None,
             fields: bool = False) -> dict:
    """The result fields for a decoded film: its UIDs when it is a DICOM (with ``facts``, also :func:`film_facts`),
    and ``warnings`` (a list, possibly empty); with ``fields``, ``fields`` (:func:`grouping`: what ``evaluate --by``
    groups by, from the same read of the header; none for a film that cannot be read). ``dataset``: the DICOM
    ``source`` as :func:`~.decode.read_dicom` read it, before its pixels were decoded (:func:`read_described`); None
    reads the header from ``source`` (header only, pixels left unread: 1.0 ms for a 12-bit DICOM's header read and
    checked, where decoding the film took 16 ms at 224 x 224 and 42 ms at 1776 x 1416, and efficientnet_lite0 scores
    it in 26 ms on 2 cores)."""
    try:
        ds = dataset if dataset is not None else read_dicom_header(source, dicom)
        if ds is None:
            info = image_info(source)
            width, height = info["width"], info["height"]
            colour = colour_warnings(source)
        else:
            width, height = size_as_read(ds)
    except (ValueError, TypeError) as e:  # a DecodeError too: decoded a moment ago, changed or removed since
        return {"warnings": [UNREAD.text(reason=e)]} | ({"fields": {}} if fields else {})
    grouped = {"fields": grouping(ds, "DICOM" if ds is not None else info["format"])} if fields else {}
    if ds is None:
        return {"warnings": scope_warnings(ds, width, height) + colour} | grouped
    uids, problems = identifiers(ds)
    return {**uids, **(film_facts(ds) if facts else {}), "warnings": scope_warnings(ds, width, height) + problems,
            **grouped}


def read_described(source: Source, dataset: Dataset | None, target: int | None = None, dicom: bool = False,
                   facts: bool = False) -> tuple[np.ndarray, dict]:
    """``source`` decoded as :func:`~.decode.read_gray` decodes it, and :func:`describe`'s fields for it, refused as
    :func:`~.decode.read_gray` refuses it. ``dataset``: what :func:`~.decode.read_dicom` read of ``source``, one
    read for both (a DICOM's header had been read three times a request by the service, twice a film by
    ``predict``), described first, as the file holds it: decoding adjusts its grey numbers in place. None, another
    format: decoded first, so that a film refused (a decompression bomb, say) is not described."""
    if dataset is None:
        gray = read_gray(source, target, dicom)
        return gray, describe(source, dicom, facts)
    described = describe(source, dicom, facts, dataset)
    return read_gray(source, target, dicom, dataset), described
