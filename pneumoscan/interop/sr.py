"""Results as DICOM: a TID 1500 measurement report in a Comprehensive SR, and the Grad-CAM overlay as a Secondary
Capture image, both in the source film's study with its patient module, so a PACS files them beside the film.

The report says: finding "pneumonia" present or absent (the model's label at its threshold), the calibrated
probability, the threshold, the model's name and version (the algorithm identification of every item), and the
source image it was read from, and each scope warning as a TEXT item beside the finding. It is written unverified
(``VerificationFlag UNVERIFIED``): a reading by software awaiting a radiologist, and it says in words (a Comment
item, its series description) that it is a computer-generated research result, not a diagnosis: once filed, it is
read outside pneumoscan, in viewers that show no flags. Its observer is the model as a device whose UID follows from
the model's name and version, so every report of one model names the same device.

No coded finding is made for a film whose scope warnings put it outside the model's scope (another modality, colour,
a thumbnail, a lateral view, tags that contradict each other, pixels unlike the training films): a scanned form's
"Pneumonia: Present" filed in the patient's record would be a fault turned into a confident answer. Every UID of a
report and overlay is derived from the film (its study, series and instance UIDs and its patient), the model and how
it was scored (:func:`derived_uid`), so a rerun makes the same objects, which a PACS files once, and films of two
patients that share a SOP Instance UID get objects of their own; each under the organisation's UID root when one is
set (:mod:`.uids`). Each series is numbered by its UID (:func:`series_number`), and the rule is part of the UIDs'
identity: an object numbered by another rule is another object. A report read at a new threshold of the same
weights, or the same reading numbered by another rule, is another object: it names the report it replaces, when
known (:func:`replaced_uids`), as its predecessor.

The overlay references the film it was derived from and keeps the film's patient orientation (or states none): a
reader must not be shown left and right that the film did not record. It is a workstation's image (ConversionType
WSD), drawn by software over the film, not a film digitized.

Both objects carry the same patient and study attributes of the film (highdicom's copy of the Patient and Study
modules, the SR's own), which are checked here first (one value; valid UIDs; a sex and
SOP class highdicom takes): highdicom would refuse a malformed one with a TypeError or KeyError, or quote it in a
ValueError. Each value they copy is then checked in the object made (:func:`_check_copies`): the film's own, as it
holds it, or no object is made: one read in a character set the film does not name would file the object under
another patient. A value longer than its VR holds, or not of its form, is copied as held: the PACS that holds the
film holds it so, and the report is filed by it (cut to fit, an accession number names another study). A date or
time in ACR-NEMA's form (``2023.03.15``, ``10:15:00``) is the one exception: it is copied as the same date or time in
DICOM's form (:func:`standard_form`), since in its own it would make the report an invalid object.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import re
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.datadict import dictionary_has_tag, dictionary_VM, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag
from pydicom.uid import UID, JPEGBaseline8Bit, JPEGExtended12Bit
from pydicom.valuerep import DA, DT, TM

from pneumoscan.core.logs import keep_dicom_values_out_of_logs, redact
from pneumoscan.data.readers.dicom import MANUFACTURER, charset_terms, misread_text, standard_form
from pneumoscan.data.scope import CONFLICT, PATIENT_SEXES, burned_in, outside_scope
from pneumoscan.data.tasks import get_task, list_tasks

from .uids import derive_uid, derived_uid, film_identity

keep_dicom_values_out_of_logs("highdicom", "pydicom")  # highdicom warns with whole patient names
log = logging.getLogger(__name__)
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
THRESHOLD = Code("threshold", "99PNEUMOSCAN", "Decision threshold")  # no standard code: a private scheme
DISCLAIMER = ("computer-generated research result, not a diagnosis: pneumoscan is not a medical device, and this "
              "result must be reviewed by a radiologist")
SR_DESCRIPTION = "pneumoscan AI result - research, not a diagnosis"
SC_DESCRIPTION = "pneumoscan Grad-CAM overlay - research, not for diagnosis"
# transfer syntaxes whose coding is lossy whatever its settings (DCT): a film stored so was lossily compressed,
# whether or not it says so (JPEG-LS near-lossless and JPEG 2000 may be lossless, and then say nothing)
_LOSSY_SYNTAXES = (JPEGBaseline8Bit, JPEGExtended12Bit)
# A report's and an overlay's series number is a hash of the series' UID (:func:`series_number`), which follows from
# the film, the model and how it was scored: a number of nine digits, after the modality's own series in a viewer;
# two report series of a study (two films, two models, two modes) share one with a chance of about one in 900
# million a pair, and one series always has the one number, whichever process made it
SERIES_NUMBERS = range(100_000_000, 1_000_000_000)
# the rule a series is numbered by, part of the identity of the series and instance UIDs of a report and an overlay
# (:func:`_kind`), so never to be reworded: one UID names one content, so an object numbered by another rule (every
# report in series 9901, every overlay in 9902, whose UIDs named no rule: :data:`FIXED_NUMBERS`) is another object
NUMBERED_BY_UID, FIXED_NUMBERS = "series number from its UID", ""
_REFERENCE_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Type 2 attributes of the patient and study modules: present, possibly empty. highdicom copies them from the source,
# which real films (anonymised ones most of all) often lack.
_TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                   "StudyDate", "StudyTime", "ReferringPhysicianName")
# What a report and an overlay name of the patient and the study besides its UIDs, as the film's header does (its
# Patient, General Study and Patient Study attributes that a correction of a patient's or a study's details changes):
# a copy a PACS holds with other values than the film holds now names them as they were (:func:`filed_as`)
FILED_AS = (*_TYPE2_KEYWORDS, "IssuerOfPatientID", "OtherPatientIDsSequence", "OtherPatientNames", "PatientAge",
            "StudyDescription")
_TEMPORAL = {"DA": DA, "TM": TM, "DT": DT}  # the value classes highdicom reads dates and times with
# SpecificCharacterSet terms of DICOM's default repertoire (ASCII): bytes beyond it have no character set named
_DEFAULT_REPERTOIRE = ("", "ISO_IR 6", "ISO 2022 IR 6")
# defined terms that DICOM tools in use do not read (Latin-9: dcmtk 3.6.7's dsrdump and dicom3tools' dciodvfy): a
# report of such a film is written in UTF-8, which they do
_RECODED = frozenset({"ISO_IR 203"})
_ASCII, _LATIN1 = "ISO_IR 6", "ISO_IR 100"  # the character sets :func:`_declared` tells apart
# what pydicom leaves of bytes that did not decode in the declared character set: the replacement character, or an
# ISO 2022 escape sequence left undecoded (the fragment then read as Latin-1)
_UNDECODED = ("\ufffd", "\x1b")
_FORMATTED_VRS, _FORMATTING = ("LT", "ST", "UT"), "\t\n\f\r"  # the text VRs that hold formatting controls
# the VRs whose values are text in the file (numbers as decimal strings included: pydicom keeps their text as read)
_STRING_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT")
# a direction of PatientOrientation for a person (PS3.3 C.7.6.1.1.1): letters of A P R L H F, "LP" an oblique one
_DIRECTION = re.compile(r"[APRLHF]+")
def malformed_reason(source: Dataset, keyword: str) -> str | None:
    """Why ``keyword``'s value cannot be carried into any report (None when it can): it does not say one thing the
    film holds. In words that never quote the value: it may be the patient's name or birth date, and the reason
    reaches an HTTP answer or a results file. What a DICOM object further needs of it: :func:`_check_copies`."""
    try:
        misread = misread_text(source)  # before the value is read: from the film's bytes, which reading drops
        element = source[keyword] if keyword in source else None
    except Exception:
        return "unreadable"
    if element is None:
        return None
    return _value_fault(element, _declared(source), element.tag in misread)


def _declared(source: Dataset) -> str:
    """The character set the film names as the fault checks tell them apart: ASCII when it names none beyond DICOM's
    default repertoire that pydicom decodes (no SpecificCharacterSet, only ISO_IR 6, or terms DICOM does not define:
    pydicom then reads its bytes as Latin-1), Latin-1 when it names ISO_IR 100 alone, else "" (ISO 2022 code
    extensions after an empty first value are a character set named)."""
    try:
        terms = charset_terms(source)
    except Exception:
        return _ASCII
    if not any(term in python_encoding and term not in _DEFAULT_REPERTOIRE for term in terms):
        return _ASCII
    return _LATIN1 if terms == [_LATIN1] else ""


def _utf8_read_as_latin1(text: str) -> bool:
    """Whether ``text``, read as Latin-1, is bytes of UTF-8 beyond ASCII (``MÃ¼ller`` for ``Müller``): a writer that
    declares ISO_IR 100 and writes UTF-8, common; Latin-1 text of a name is never valid UTF-8, which would need a
    letter followed by a control character or a symbol (``Ã©``)."""
    if text.isascii():
        return False
    try:
        text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return False
    return True


def _max_vm(tag: BaseTag) -> int | None:
    """The most values the standard's dictionary gives ``tag`` (None: no limit, or not in the dictionary)."""
    try:
        vm = dictionary_VM(tag)
    except KeyError:
        return None
    return None if "n" in vm else int(vm.split("-")[-1])


def _value_fault(element: DataElement, declared: str, misread: bool) -> str | None:
    """Why ``element``'s value (of a film naming the character set ``declared``, as :func:`_declared` says; whose bytes
    pydicom read in another character set than its ISO 2022 escapes put in force when ``misread``:
    :func:`~pneumoscan.data.readers.dicom.misread_text`) cannot be copied into a report, in words that never quote
    it; None when it can. Any report: one value where the standard has one, a UID that is one, a date or time
    pydicom reads (as highdicom will) in DICOM's form or, as the report copies it, in ACR-NEMA's
    (:func:`standard_form`), text as the film holds it (not bytes that did not decode, nor bytes beyond ASCII that
    no SpecificCharacterSet or escape names, which pydicom reads as Latin-1, nor UTF-8 under ISO_IR 100: a guess,
    or a misreading, that would give the report another name or id than the film's) and without control characters
    (a FHIR string holds none either). A value longer than its VR holds is the film's as its PACS holds it: copied."""
    value, vr = element.value, element.VR
    if value is None or value == "" or vr == "SQ":
        return None
    limit = _max_vm(element.tag)
    if limit is not None and element.VM > limit:
        return "more than one value"
    if vr not in _STRING_VRS:
        return None  # binary numbers or bytes: nothing a film's text could have got wrong
    if misread:
        return "characters beyond ASCII where its ISO 2022 escape sequences name no character set that holds them"
    for text in (str(v) for v in (value if isinstance(value, MultiValue) else [value])):
        if any(mark in text for mark in _UNDECODED):
            return "characters that do not decode in the character set its SpecificCharacterSet names"
        if declared == _ASCII and not text.isascii():
            return "characters beyond ASCII, and no SpecificCharacterSet naming a character set that holds them"
        if declared == _LATIN1 and _utf8_read_as_latin1(text):
            return "characters written in UTF-8 where its SpecificCharacterSet names ISO_IR 100 (Latin-1)"
        allowed = _FORMATTING if vr in _FORMATTED_VRS else ""
        if any(unicodedata.category(c) == "Cc" and c not in allowed for c in text):
            return f"control characters, which its VR {vr} does not hold"
        stripped = text.strip()
        if vr == "UI" and not UID(stripped).is_valid:
            return "not a valid UID"
        if element.keyword == "SOPClassUID" and UID(stripped).type != "SOP Class":
            return "not a DICOM SOP class"
        if element.keyword == "PatientSex" and stripped not in PATIENT_SEXES:
            return f"not one of {', '.join(PATIENT_SEXES)}"
        if vr in _TEMPORAL and stripped:
            try:
                _TEMPORAL[vr](standard_form(vr, stripped) or stripped)
            except ValueError:
                return f"not a {vr} value pydicom reads"
    return None


def filed_as(ds: Dataset) -> dict[str, object]:
    """The values ``ds`` (a report or overlay) holds of :data:`FILED_AS`, as DICOM JSON gives them (absent and empty
    alike: None), so that two copies of one object compare by what they name, not by how their files spell it."""
    return {keyword: ds[keyword].to_json_dict(None, 0).get("Value") if keyword in ds else None
            for keyword in FILED_AS}


def _check_copies(made: Dataset, source: Dataset) -> None:
    """Refuse ``made`` (a report or overlay of ``source``) when a value it copied from the film is one it cannot
    carry (:func:`_value_fault`), naming it: a copied element is one ``made`` holds with the film's own value, each
    of the Patient and Study modules highdicom copies (the name, ids and their issuers, accession number, study id,
    description, the patient's age, ...), whether or not pneumoscan checked it before."""
    declared, misread = _declared(source), misread_text(source)  # the latter before any value is read
    for element in made:
        if (element.tag not in source or _left_in_file(source, element.tag)
                or source[element.tag].value != element.value):
            continue
        for keyword, copied, guessed in _elements(source[element.tag], element.tag in misread):
            why = _value_fault(copied, declared, guessed)
            if why is not None:
                raise ValueError(f"the source DICOM's {keyword} is malformed ({why}): a report cannot carry it")


def _left_in_file(ds: Dataset, tag: BaseTag) -> bool:
    """Whether a header-only read left ``ds``'s value at ``tag`` in the file (a value over its deferral size: the
    pixels), which no report copies. Compared, it was read: the film's pixel data read again for each overlay, and
    an OSError that ended the run for a film removed since it was scored."""
    item = ds.get_item(tag, keep_deferred=True)
    return isinstance(item, RawDataElement) and item.value is None and bool(item.length)


def _elements(element: DataElement, misread: bool, within: str = "") -> Iterator[tuple[str, DataElement, bool]]:
    """``element`` (of the film: ``misread`` as :func:`~pneumoscan.data.readers.dicom.misread_text` says) and every
    element in its sequence's items, each with the name a refusal gives it and whether it was misread."""
    name = f"{within}{element.keyword or element.tag}"
    yield name, element, misread
    if element.VR == "SQ":
        for item in element.value:
            guessed = misread_text(item)
            for inner in item:
                yield from _elements(inner, inner.tag in guessed, f"{name} > ")


def _checked_source(source: Dataset) -> Dataset:
    """The source header, refused when it does not say which study, series and instance it is (a report could not
    be filed with it) or when an attribute the report copies is malformed (named, never quoted); a copy with absent
    type 2 patient/study attributes added empty, as the standard allows, and its dates and times in DICOM's form."""
    missing = [k for k in _REFERENCE_KEYWORDS if not str(source.get(k, "") or "").strip()]
    if missing:
        raise ValueError(f"the source DICOM has no {', '.join(missing)}: a report cannot reference it")
    for keyword in (*_REFERENCE_KEYWORDS, *_TYPE2_KEYWORDS):
        why = malformed_reason(source, keyword)
        if why is not None:
            raise ValueError(f"the source DICOM's {keyword} is malformed ({why}): a report cannot carry it")
    try:
        charsets = charset_terms(source)
        known = all(term in python_encoding for term in charsets)
    except Exception:
        known = False
    if not known:
        raise ValueError("the source DICOM's SpecificCharacterSet names a character set DICOM does not define")
    try:
        source = copy.deepcopy(source)
    except RecursionError:  # sequences nested some 80 deep (a private one, say): no report attribute is that deep
        raise ValueError("the source DICOM nests its sequences too deeply to be copied: a report cannot carry "
                         "it") from None
    if not _written_as_held(charsets):
        # ISO 2022 code extensions (Japanese, Korean: their sites' usual form), an explicit "ISO_IR 6", Latin-9, ...:
        # the values are decoded as the film declares and written in UTF-8, which carries every repertoire
        try:
            source.decode()
        except Exception:
            raise ValueError("the source DICOM's SpecificCharacterSet does not decode its values: a report cannot "
                             "carry them") from None
        source.SpecificCharacterSet = "ISO_IR 192"
    for keyword in _TYPE2_KEYWORDS:
        if keyword not in source:
            setattr(source, keyword, "")
    for tag in list(source.keys()):  # the film's dates and times a report copies (birth time too) in DICOM's form
        if dictionary_has_tag(tag) and dictionary_VR(tag) in ("DA", "TM"):
            element = source[tag]
            value = element.value  # text, or pydicom's DA or TM with its datetime conversion on
            if isinstance(value, str | DA | TM) and (form := standard_form(element.VR, str(value))) is not None:
                element.value = form
    return source


def _written_as_held(charsets: list[str]) -> bool:
    """Whether a report keeps the film's SpecificCharacterSet (:func:`charset_terms`): absent, or one value of
    highdicom's enum that is no ISO 2022 code extension (it refuses the multi-valued form with an empty first value,
    and 'ISO 2022 IR 149') and that receivers read (:data:`_RECODED`)."""
    if not charsets:
        return True
    if len(charsets) != 1:
        return False
    known = {v.value for v in hd.SpecificCharacterSetValues}
    return charsets[0] in known and not charsets[0].startswith("ISO 2022") and charsets[0] not in _RECODED


def _patient_orientation(source: Dataset) -> list[str]:
    """The film's PatientOrientation (the patient directions of its rows and of its columns) when it records a
    valid one, else empty: the overlay's panels are the film unflipped, and an orientation the film does not
    state would put a left or right on it that nobody saw."""
    try:
        value = source.get("PatientOrientation")
    except Exception:
        return []
    directions = [str(v).strip() for v in (value if isinstance(value, MultiValue) else [value])]
    return directions if len(directions) == 2 and all(_DIRECTION.fullmatch(d) for d in directions) else []


def _device_uid(model_name: str, model_version: str) -> UID:
    """The Device Observer UID of a model: made from its name and version (its weights' digest), so a PACS sees one
    device for every report of one model, and another for other weights."""
    return derive_uid([model_name, model_version])


def _source_identity(source: Dataset) -> list[str]:
    """:func:`film_identity` of a checked source header."""
    return film_identity(source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID, source)


def finding_mode(mode: str, result: dict) -> str:
    """The scoring mode a finding depends on: ``mode`` and the threshold it was called at (a new operating point
    chosen for the same weights calls the same probability anew)."""
    return f"{mode};threshold={float(result['threshold'])!r}"


def _report_uids(identity: list[str], result: dict, model_name: str, model_version: str, mode: str,
                 numbering: str = NUMBERED_BY_UID) -> list[UID]:
    """The tracking, series and SOP instance UIDs of the report of ``result`` on the film of ``identity``, its series
    numbered by ``numbering``. The tracking UID names the finding, not the object: it is the same whatever the
    numbering."""
    scored = finding_mode(mode, result)
    return [derived_uid(identity, model_name, model_version, scored, kind)
            for kind in ("sr-tracking", _kind("sr-series", numbering), _kind("sr", numbering))]


def replaced_uids(source: Dataset, result: dict, model_name: str, model_version: str, mode: str = "",
                  earlier: Sequence[float] = ()) -> list[UID]:
    """The SOP Instance UIDs of the reports that :func:`build_sr`'s report of ``result`` on ``source`` replaces: the
    same weights' at a threshold in force before (``earlier``: ``pneumoscan threshold`` records them) and the same
    reading's numbered by :data:`FIXED_NUMBERS`, each in either numbering, never its own. The source is checked
    (and copied) once for them all."""
    identity = _source_identity(_checked_source(source))
    own = _report_uids(identity, result, model_name, model_version, mode)[2]
    uids = dict.fromkeys(_report_uids(identity, {**result, "threshold": t}, model_name, model_version, mode,
                                      numbering)[2]
                         for t in (*earlier, result["threshold"]) for numbering in (FIXED_NUMBERS, NUMBERED_BY_UID))
    return [uid for uid in uids if uid != own]


def replaced_overlay_uid(source: Dataset, model_name: str, model_version: str, mode: str = "") -> UID:
    """The SOP Instance UID of the overlay of the same reading numbered by :data:`FIXED_NUMBERS` (series 9902), which
    :func:`build_heatmap_sc`'s overlay replaces: the same image under other UIDs, which no predecessor link can name
    (a Secondary Capture has none)."""
    return derived_uid(_source_identity(_checked_source(source)), model_name, model_version, mode,
                       _kind("sc", FIXED_NUMBERS))


def check_result(result: dict) -> None:
    """A result SR and FHIR can report: a reading (not an error row) of a model whose task reports pneumonia
    (pneumonia, multiclass: :attr:`Task.reports_pneumonia`), of a film no scope warning puts outside the model's scope
    (:func:`pneumoscan.data.scope.outside_scope`, the rule of the rows' ``in_scope``: a lateral film of a two-view
    study is scored, but "Pneumonia: Present, finding site Chest" filed on it would be a coded answer the model
    cannot give)."""
    if "error" in result:
        raise ValueError(f"no result to report: {result['error']}")
    task = result.get("task")
    if task not in list_tasks() or not get_task(task).reports_pneumonia:
        raise ValueError(f"DICOM SR and FHIR results report pneumonia, not a {result.get('task')} model's result")
    wrong = outside_scope(result.get("warnings") or [])
    if wrong:  # the header's word, or the pixels' (a blurred chest film is still a chest film)
        if all(kind.source == "pixels" for _, kind in wrong):
            said = "the film does not look like the films the model was trained on"
        elif all(warning.startswith(CONFLICT) for warning, _ in wrong):  # a PA chest film whose age tags disagree
            said = "its tags contradict each other, so it cannot be known to be a frontal chest film in the model's " \
                "scope"
        else:
            said = "not a frontal chest radiograph"
        raise ValueError(f"{said} ({'; '.join(w for w, _ in wrong)}): no coded finding is filed for it")


def finding_present(result: dict) -> bool:
    """Pneumonia present: the model's label is its positive class (the probability reached its threshold)."""
    return result["label"] == result["positive"]


NEAR_THRESHOLD = ("near the threshold: this probability lies within the 95 % confidence interval of the model's "
                  "threshold, so the finding could have been called either way")


def reading_notes(result: dict) -> list[str]:
    """The result's scope warnings as every report states them (SR TEXT items, FHIR notes), so a reader of the
    report sees each one the JSON answer lists; that the reading is near the threshold when it is, since the coded
    finding (present or absent) says nothing of how close it was; and the caveats of the model as it scored
    (``caveats``: a threshold chosen on too few films to show its policy, a temperature left uncalibrated), which
    ``predict`` and ``serve`` say once at their start, and a report filed apart from them would lose."""
    near = [NEAR_THRESHOLD] if result.get("near_threshold") else []
    return [*near, *(f"scope warning: {w}" for w in result.get("warnings") or []),
            *(f"model caveat: {c}" for c in result.get("caveats") or [])]


@contextmanager
def _library_refusal() -> Iterator[None]:
    """highdicom's and pydicom's refusals as a ValueError that names no value. The source was checked before
    (:func:`_checked_source`), so this is the last line: their TypeError, KeyError or ValueError would otherwise
    end a request with a 500 or a whole predict run, and their messages quote patient values."""
    try:
        yield
    except (ValueError, TypeError, KeyError) as e:
        log.warning("the DICOM report could not be built: %s: %s", type(e).__name__, redact(str(e)))
        raise ValueError(f"the DICOM report could not be built from this film's header (a {type(e).__name__} in "
                         "highdicom or pydicom; its message, redacted, is in the log)") from None


def _coding_scheme() -> Dataset:
    """The CodingSchemeIdentificationSequence item of the private scheme the threshold's code is in."""
    item = Dataset()
    item.CodingSchemeDesignator = THRESHOLD.scheme_designator
    item.CodingSchemeName = "pneumoscan local codes"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def series_number(series_uid: str) -> int:
    """The SeriesNumber of the series ``series_uid`` of a report or an overlay: a hash of its UID in
    :data:`SERIES_NUMBERS`. Distinct series (films, models, scoring modes, thresholds) are numbered apart with high
    probability, which a film's own series and instance numbers cannot promise (anonymised films record none, and
    two models read one film), and the same series is numbered alike by ``predict``, the web service and ``pacs``."""
    digest = int.from_bytes(hashlib.sha256(str(series_uid).encode()).digest()[:8], "big")
    return SERIES_NUMBERS.start + digest % len(SERIES_NUMBERS)


def _kind(kind: str, numbering: str = NUMBERED_BY_UID) -> str:
    """The kind of a report's or overlay's series or instance UID as its identity states it: with the rule its series
    is numbered by (none for :data:`FIXED_NUMBERS`)."""
    return f"{kind};{numbering}" if numbering else kind


def build_sr(source: Dataset, result: dict, model_name: str, model_version: str,
             mode: str = "", previous: Sequence[Dataset] = ()) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR holding a TID 1500 report of one result (``probability, label, threshold, positive,
    task``, and its ``warnings``) on ``source`` (the film's header; pixels are not needed), scored in ``mode``
    (backend, TTA: part of its UIDs' identity). ``previous``: the headers of the reports it replaces (the same
    weights' at an earlier threshold, the same reading in series 9901: :func:`replaced_uids`), named in its
    PredecessorDocumentsSequence, so that a reader of the study sees which of two findings on the film is in force.
    Its series is numbered by its UID (:func:`series_number`)."""
    as_held, source = source, _checked_source(source)
    check_result(result)
    # derived before highdicom runs, so that a UID root refused says why (:func:`_library_refusal` would not)
    tracking, series, instance = _report_uids(_source_identity(source), result, model_name, model_version, mode)
    device = _device_uid(model_name, model_version)
    with _library_refusal():
        algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_version)
        unit = codes.UCUM.NoUnits
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking, identifier="pneumonia"),
            finding_type=PNEUMONIA,
            algorithm_id=algorithm,
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Chest)],
            measurements=[
                hd.sr.Measurement(name=codes.DCM.Probability, value=float(result["probability"]), unit=unit,
                                  algorithm_id=algorithm),
                hd.sr.Measurement(name=THRESHOLD, value=float(result["threshold"]), unit=unit,
                                  algorithm_id=algorithm),
            ],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=PNEUMONIA, value=codes.SCT.Present if finding_present(result) else codes.SCT.Absent
                )
            ],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        )
        # highdicom's TID 1501 takes coded evaluations only: what the result is, then each warning, is a free-text
        # Comment in the group, beside the finding it qualifies
        group[0].ContentSequence.extend(
            hd.sr.TextContentItem(name=codes.DCM.Comment, value=note,
                                  relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
            for note in (DISCLAIMER, *reading_notes(result))
        )
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device, name=model_name, manufacturer_name=MANUFACTURER, model_name=model_version,
            ),
        )
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=CHEST_XRAY,
            imaging_measurements=[group],
        )
        sr = hd.sr.ComprehensiveSR(
            evidence=[source], content=report[0], series_number=series_number(series),
            series_instance_uid=series, sop_instance_uid=instance, instance_number=1,
            manufacturer=MANUFACTURER, series_description=SR_DESCRIPTION, is_complete=True, is_final=False,
            is_verified=False, previous_versions=list(previous) or None,
        )  # fmt: skip
        sr.CodingSchemeIdentificationSequence = [_coding_scheme()]
    _check_copies(sr, as_held)
    return sr


def build_heatmap_sc(source: Dataset, overlay_png: bytes, model_name: str, model_version: str,
                     mode: str = "") -> hd.sc.SCImage:
    """The Grad-CAM overlay PNG (original | heatmap | blend) as an RGB Secondary Capture in the source's study, with
    the patient and study attributes the SR copies; derived-image wording so nobody takes it for a film, and the
    film it was derived from (SourceImageSequence) so a viewer can go back to it. Its body part is the film's (with
    none recorded, whether it is a paired one is not known, so it states the film's laterality or an empty one), a
    film compressed lossily keeps saying so (PS3.3 C.7.6.1.1.5: once 01, never reset), and so does one that says
    whether text in its pixels identifies the patient (:func:`~pneumoscan.data.scope.burned_in`). Its series is
    numbered by its UID (:func:`series_number`)."""
    as_held, source = source, _checked_source(source)
    identity = _source_identity(source)
    series, instance = (derived_uid(identity, model_name, model_version, mode, _kind(kind))
                        for kind in ("sc-series", "sc"))
    with Image.open(io.BytesIO(overlay_png)) as im:
        rgb = np.asarray(im.convert("RGB"))
    orientation = _patient_orientation(source)
    # highdicom requires an orientation of a patient image and takes one letter a direction: the film's own when it
    # can, else a stand-in it accepts, replaced below by the film's compound value or by an empty one (not known,
    # which DICOM allows: PatientOrientation is type 2C)
    takes = len(orientation) == 2 and all(len(d) == 1 for d in orientation)
    with _library_refusal():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_number=series_number(series),
            series_instance_uid=series, sop_instance_uid=instance, instance_number=1,
            manufacturer=MANUFACTURER, patient_orientation=tuple(orientation) if takes else ("L", "F"),
            series_description=SC_DESCRIPTION, transfer_syntax_uid="1.2.840.10008.1.2.1",
        )  # fmt: skip
        # highdicom's SCImage copies a few patient and study attributes; the SR copies every one of the Patient
        # and Study modules (its evidence's): the overlay gets that same copy, so both are filed under one patient
        # and study (the issuer of the patient id, other patient ids, the accession number's issuer, ...)
        sc.copy_patient_and_study_information(source)
        # highdicom writes DI (digital interface: a modality's image taken in); the overlay is drawn by software
        sc.ConversionType = hd.sc.ConversionTypeValues.WSD.value
        if not takes:
            sc.PatientOrientation = orientation
        film = Dataset()
        film.ReferencedSOPClassUID, film.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
        purpose = hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
        film.PurposeOfReferenceCodeSequence = [purpose]
        sc.SourceImageSequence = [film]
        sc.DerivationDescription = f"Grad-CAM overlay by pneumoscan model {model_name} ({model_version})"
        # a code string as the scope check reads it (devices write "chest" too, which no CS may hold)
        body_part = str(source.get("BodyPartExamined") or "").strip().upper()
        if body_part:
            sc.BodyPartExamined = body_part
        else:  # Laterality (type 2C) is required while the body part may be a paired one: the film's, or unknown
            laterality = str(source.get("Laterality") or "").strip().upper()
            sc.Laterality = laterality if laterality in ("R", "L") else ""
        said = str(source.get("LossyImageCompression") or "").strip() == "01"
        if said or getattr(source, "file_meta", Dataset()).get("TransferSyntaxUID") in _LOSSY_SYNTAXES:
            sc.LossyImageCompression = "01"
        # two of the overlay's three panels are the film: a de-identification that goes by the flag (PS3.15 E.1)
        # would pass it without, a name in its pixels; not known is left unsaid (the flag is type 3)
        if (burned := burned_in(source)) is not None:
            sc.BurnedInAnnotation = burned
    _check_copies(sc, as_held)
    return sc


def dicom_bytes(ds: Dataset) -> bytes:
    """A DICOM object as a Part 10 file."""
    buf = io.BytesIO()
    with _library_refusal():
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def report_files(source: Dataset, result: dict, overlay_png: bytes | None, model_name: str,
                 model_version: str, mode: str = "", previous: Sequence[Dataset] = ()) -> list[bytes]:
    """The SR of one result (replacing the reports ``previous``: :func:`build_sr`), then with ``overlay_png`` its
    Secondary Capture, as Part 10 files: what the web service answers and ``predict --dicom-sr`` writes, each series
    numbered by its UID (:func:`series_number`). A ValueError with a reason that quotes no value when the film's
    header cannot make a report."""
    parts = [dicom_bytes(build_sr(source, result, model_name, model_version, mode, previous))]
    if overlay_png is not None:
        parts.append(dicom_bytes(build_heatmap_sc(source, overlay_png, model_name, model_version, mode)))
    return parts
