"""Whether a film is in scope (its reading applies; a DICOM SR or FHIR Observation may be filed for it) is decided
by the kind of each warning, the object that also writes the warning's words: a regex that restated the words had
let any rewording leave a lateral film or a CT "in scope", with "Pneumonia: Present" filed on it. Here a film of
every kind of warning that puts it out of scope is out of scope and refused a report, and films whose warnings only
say a tag is missing or the child's age is outside the training population are in scope."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage

import pneumoscan.data.scope as scope
from pneumoscan.data.appearance import Appearance
from pneumoscan.data.scope import (KINDS, WarningKind, describe, film_facts, in_scope, kind_of, outside_scope,
                                   scope_warnings)
from pneumoscan.interop.dicomweb import _recorded
from pneumoscan.interop.study import not_scored
from pneumoscan.interop.sr import check_result
from tests.test_scope_conflicts import header, view_code

HEADERS = {  # tags changed from an in-scope pediatric frontal chest DX, and the kind of warning they make
    "a lateral film": ({"ViewPosition": "LL"}, scope.LATERAL),
    "an oblique film": ({"ViewPosition": "OBL"}, scope.NOT_FRONTAL),
    "a CT slice": ({"Modality": "CT"}, scope.NOT_RADIOGRAPH),
    "a knee film": ({"BodyPartExamined": "KNEE"}, scope.NOT_CHEST),
    "a colour object": ({"PhotometricInterpretation": "RGB"}, scope.NOT_GRAYSCALE),
    "PA, coded lateral": ({"ViewCodeSequence": view_code(codes.SCT.RightLateral)}, scope.VIEW_CONFLICT),
    "4 years, born 44 years before": ({"PatientBirthDate": "19800101"}, scope.AGE_CONFLICT),
    "a CT object as CR": ({"Modality": "CR", "SOPClassUID": CTImageStorage}, scope.CLASS_CONFLICT),
    "PA, oriented lateral": ({"PatientOrientation": "A\\F"}, scope.ORIENTATION_CONFLICT),
    "a field of 10 m": ({"Rows": 2000, "Columns": 2000, "PixelSpacing": [5, 5]}, scope.FIELD),
}

SIDE = 32
_ROWS, _COLUMNS = np.mgrid[0:SIDE, 0:SIDE] / SIDE
# a synthetic film with a top and a bottom: a ramp from top to bottom, and a dark patch in its upper left
_FILM = 60 + 150 * _ROWS + 40 * _COLUMNS - 90 * np.exp(-((_COLUMNS - 0.3) ** 2 + (_ROWS - 0.35) ** 2) / 0.02)


def _film(rng: np.random.Generator) -> np.ndarray:
    return np.clip(_FILM + rng.normal(0, 6, _FILM.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def appearance() -> Appearance:
    """The appearance of 120 noisy copies of one synthetic film."""
    rng = np.random.default_rng(0)
    return Appearance.fit(np.stack([_film(rng) for _ in range(120)]))


def _content_warnings(appearance: Appearance) -> dict[str, tuple[list[str], WarningKind]]:
    """Films whose pixels are unlike the training films, each with its warnings and the kind it must show."""
    rng = np.random.default_rng(1)
    film = _film(rng)
    odd = {
        "a washed-out film": (np.round(film * 0.1 + 200).astype(np.uint8), scope.LOW_CONTRAST),
        "an inverted film": (255 - film, scope.UNLIKE_LAYOUT),
        "a blurred film": (np.asarray(Image.fromarray(film).filter(ImageFilter.GaussianBlur(2))), scope.BLURRED),
        "noise": (rng.integers(0, 256, film.shape, dtype=np.uint8), scope.NOISY),
        "a film a window clips to white": (np.clip((film.astype(float) - film.mean()) * 3 + 128, 0, 255).astype(
            np.uint8), scope.CLIPPED_WHITE),
        "a film a window clips to black": (np.clip((film - np.percentile(film, 50)) * 2, 0, 255).astype(np.uint8),
                                           scope.CLIPPED_BLACK),
    }
    found = {case: (appearance.warnings(pixels[None])[0], kind) for case, (pixels, kind) in odd.items()}
    # upside down with its coarse layout let through: what tells it is that turned, it is like the training films
    let_through = dataclasses.replace(appearance, layout_limit=np.inf)
    found["a film upside down"] = (let_through.warnings(np.flipud(film)[None].copy())[0], scope.TURNED)
    return found


def _out_of_scope_warnings(appearance: Appearance) -> dict[str, tuple[list[str], WarningKind]]:
    found = {case: (scope_warnings(header(**tags), 224, 224), kind) for case, (tags, kind) in HEADERS.items()}
    found["a thumbnail"] = (scope_warnings(header(), 150, 100), scope.THUMBNAIL)
    found["a strip"] = (scope_warnings(header(), 300, 6000), scope.ELONGATED)
    found["a colour photograph"] = (describe(_sepia_jpeg())["warnings"], scope.COLOUR)
    return found | _content_warnings(appearance)


def test_every_kind_of_out_of_scope_warning_puts_its_film_out_of_scope_and_refuses_its_report(
        appearance: Appearance) -> None:  # fmt: skip
    found = _out_of_scope_warnings(appearance)
    for case, (warnings, kind) in found.items():
        assert kind in [kind_of(w) for w in warnings], (case, warnings)
        assert not in_scope(warnings), (case, warnings)
        said = ("the film does not look like the films the model was trained on" if kind.source == "pixels" else
                "its tags contradict each other, so it cannot be known to be a frontal chest film in the model's scope"
                if kind.template.startswith(scope.CONFLICT) else "not a frontal chest radiograph")
        with pytest.raises(ValueError, match=f"^{said} .*: no coded finding is filed for it$"):
            check_result({"task": "pneumonia", "warnings": warnings})
    # a film for each kind that puts one out of scope: a kind added without one here fails this test
    assert {kind for _, kind in found.values()} == {kind for kind in KINDS if kind.out_of_scope}


def test_a_film_with_warnings_of_its_header_and_of_its_pixels_is_refused_as_no_frontal_chest_radiograph(
        appearance: Appearance) -> None:  # fmt: skip
    both = scope_warnings(header(ViewPosition="LL"), 224, 224) + _content_warnings(appearance)["noise"][0]
    assert {kind.source for _, kind in outside_scope(both)} == {"header", "pixels"}
    with pytest.raises(ValueError, match=r"^not a frontal chest radiograph \(lateral view \(LL\).*image content: "):
        check_result({"task": "pneumonia", "warnings": both})


def _sepia_jpeg() -> bytes:
    """A sepia photograph of a film as a JPEG: in colour, so no radiograph, whatever its grey would score."""
    grey = np.repeat(np.repeat(_film(np.random.default_rng(2)), 8, axis=0), 8, axis=1).astype(np.float64)
    buf = io.BytesIO()
    Image.fromarray(np.dstack([grey, grey * 0.9, grey * 0.75]).astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width), 128, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


IN_SCOPE = {  # a frontal chest film by its header, or not known to be another
    "no modality": {"Modality": ""},
    "no body part": {"BodyPartExamined": None},
    "no view": {"ViewPosition": None},
    "no age": {"PatientAge": None, "PatientBirthDate": None},
    "an adult": {"PatientAge": "034Y", "PatientBirthDate": None},
    "a newborn": {"PatientAge": "020D", "PatientBirthDate": None},
    "none of modality, body part, view and age": {"Modality": "", "BodyPartExamined": None, "ViewPosition": None,
                                                   "PatientAge": None, "PatientBirthDate": None},
}


@pytest.mark.parametrize("case", [*IN_SCOPE, "a PNG"])
def test_a_film_whose_warnings_say_only_what_is_not_known_or_its_age_is_in_scope(case: str) -> None:
    warnings = describe(_png(224, 224))["warnings"] if case == "a PNG" else scope_warnings(header(**IN_SCOPE[case]),
                                                                                            224, 224)
    assert warnings and all(kind_of(w) is not None and not kind_of(w).out_of_scope for w in warnings), warnings
    assert in_scope(warnings)
    check_result({"task": "pneumonia", "warnings": warnings})  # reported, with its warnings


def test_every_warning_is_written_by_one_kind_and_every_kind_is_known(appearance: Appearance) -> None:
    """A kind left out of KINDS would write warnings nothing knows: a film of it would be in scope."""
    assert {v for v in vars(scope).values() if isinstance(v, WarningKind)} == set(KINDS)
    made = [w for warnings, _ in _out_of_scope_warnings(appearance).values() for w in warnings]
    made += [w for tags in IN_SCOPE.values() for w in scope_warnings(header(**tags), 224, 224)]
    for warning in made:
        assert [kind for kind in KINDS if kind.wrote(warning)] == [kind_of(warning)], warning


@pytest.mark.parametrize("value", ["", "L*L (x)", "LL\nRL", "{view}", "\\1 $"])
def test_a_kind_knows_what_it_writes_whatever_the_films_value_and_not_another_wording(value: str) -> None:
    """A value a header may hold (empty, regex characters, a line break) leaves the film out of scope."""
    written = scope.LATERAL.text(view=value)
    assert scope.LATERAL.wrote(written) and not in_scope([written])
    assert not scope.LATERAL.wrote(written.replace("lateral view", "side view"))
    assert kind_of(f"no DICOM SR written: {written}") is None  # a warning that quotes one is not one


@pytest.mark.parametrize("case", ["a lateral film", "an oblique film", "a knee film"])
def test_a_pacs_search_answer_that_records_another_body_part_or_view_is_not_scored_by_the_same_kinds(
        case: str) -> None:  # fmt: skip
    """What the search answer records of the body part and view decides as the film's own header would."""
    ds = header(**HEADERS[case][0])
    item = Dataset({e.tag: e for e in ds if e.keyword in ("Modality", "BodyPartExamined", "ViewPosition")})
    why = not_scored(_recorded(item.to_json_dict()))
    assert why and why == "; ".join(w for w, _ in outside_scope(scope_warnings(ds, 224, 224)))


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom, on the lower-case code strings: expected
def test_lower_case_defined_terms_are_read_as_the_terms_in_capitals() -> None:
    """A code string holds no lower case, but some devices write it (``dx``, ``chest``, ``ap``): read as the term in
    capitals, never as an unknown value (a frontal chest DX not recorded as one, or a lateral film not known as
    lateral)."""
    upper = {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "AP", "PatientAge": "004Y"}
    lower = header(**{k: v.lower() for k, v in upper.items()})
    assert scope_warnings(lower, 224, 224) == scope_warnings(header(**upper), 224, 224) == []
    assert film_facts(lower) == film_facts(header(**upper))
    assert scope_warnings(header(ViewPosition="ll", BodyPartExamined="knee", Modality="ct"), 224, 224)[:3] == [
        "Modality CT is not a radiograph (CR/DX): the model reads chest X-ray films only",
        "BodyPartExamined KNEE is not CHEST: the model reads chest films only",
        "lateral view (LL): the model was trained on frontal (PA/AP) films only"]
