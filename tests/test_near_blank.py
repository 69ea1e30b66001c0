"""A nearly blank film (an empty export with a burned-in marker, two grey levels a step apart) is refused as a blank
one is: the model scored such films pneumonia at about 0.7, with an etiology and no warning."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pneumoscan.data.decode import NEAR_BLANK_SHARE, read_gray
from pneumoscan.data.pixels import DecodeError
from pneumoscan.serving.app import create_app
from tests.builders import dicom_bytes

NEAR_BLANK = r"^blank image: \d+\.\d% of the pixels are within 2 grey levels of one value"


def _png(pixels: np.ndarray, kind: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, kind)
    return buf.getvalue()


def _black_with_marker(dtype: type = np.uint8, white: int = 255) -> np.ndarray:
    film = np.zeros((300, 240), dtype)
    film[20:50, 20:40] = white  # an "L" marker's box, 0.8 % of the film
    return film


NEARLY_BLANK = {
    "black PNG with a marker": _png(_black_with_marker()),
    "black JPEG with a marker": _png(_black_with_marker(), "JPEG"),
    "two levels a step apart": _png(np.repeat(np.array([[0, 1]], np.uint8), 150, axis=0).repeat(120, axis=1)),
    "all-zero 12-bit DICOM with a burned-in box": dicom_bytes(_black_with_marker(np.uint16, 4095), Modality="DX"),
}


@pytest.mark.parametrize("case", list(NEARLY_BLANK))
def test_a_nearly_blank_film_is_refused(case: str) -> None:
    with pytest.raises(DecodeError, match=NEAR_BLANK):
        read_gray(NEARLY_BLANK[case])


def test_the_service_answers_a_nearly_blank_upload_with_422(tiny_bundle: Path) -> None:
    with TestClient(create_app(tiny_bundle)) as client:
        r = client.post("/v1/predict", files={"file": ("marker.dcm",
                                                       NEARLY_BLANK["all-zero 12-bit DICOM with a burned-in box"],
                                                       "application/dicom")})
    assert r.status_code == 422 and "probability" not in r.json()
    assert r.json()["error"].startswith("cannot read the image: blank image: 9")  # the share of the film as decoded


def test_real_films_are_far_from_the_line(data_root: Path) -> None:
    """Every 20th film of train/ and val/: the commonest grey level (give or take 2) covers at most a third of the
    film (0.33 over all 5,232), against the 95 % that refuses."""
    films = sorted((data_root / "train").rglob("*.jpeg"))[::20] + sorted((data_root / "val").rglob("*.jpeg"))
    for film in films:
        gray = read_gray(film, target=224)
        counts = np.bincount(gray.ravel(), minlength=256)
        mode = int(counts.argmax())
        assert counts[max(0, mode - 2) : mode + 3].sum() / gray.size < NEAR_BLANK_SHARE / 2, film


def test_a_nearly_blank_dicom_blames_its_window_only_when_the_window_is_what_hid_the_film() -> None:
    marker = _black_with_marker(np.uint16, 4095)
    with pytest.raises(DecodeError, match=NEAR_BLANK):  # a window over all its values: the film is empty, not hidden
        read_gray(dicom_bytes(marker, WindowCenter=2048, WindowWidth=4096))
    ramp = np.tile(np.linspace(0, 4000, 240), (300, 1))  # a film whose values a narrow window leaves nearly blank
    ramp[:3] = 4095
    with pytest.raises(DecodeError, match="nothing of the film is inside its window"):
        read_gray(dicom_bytes(ramp, WindowCenter=4090, WindowWidth=4))


def _sparse_step(rng: np.random.Generator) -> np.ndarray:
    """A 512 x 512 film of grey 127 with 262 pixels of 128 scattered over it (0.1 %): reduced 15 times (a 32 px
    model's decode) every block averages to 127."""
    film = np.full(512 * 512, 127, np.uint8)
    film[rng.choice(film.size, 262, replace=False)] = 128
    return film.reshape(512, 512)


def test_a_film_whose_pixels_differ_is_not_refused_as_every_pixel_the_same() -> None:
    """It had been refused as "every pixel has the same value", judged on it reduced: untrue of its 262 pixels of
    128. Judged at full size, whatever its format, and a film of one grey level keeps its reason."""
    film = _sparse_step(np.random.default_rng(0))
    for name, data in (("PNG", _png(film)), ("DICOM", dicom_bytes(film, bits=8))):
        with pytest.raises(DecodeError, match=NEAR_BLANK.replace(r"\d+\.\d", r"100\.0")) as refused:
            read_gray(data, target=32)
        assert "same value" not in str(refused.value), name
    with pytest.raises(DecodeError, match="^blank image: every pixel has the same value$"):
        read_gray(_png(np.full((512, 512), 127, np.uint8)), target=32)


def test_a_film_blank_only_once_reduced_is_refused_saying_so() -> None:
    """25 grey levels in a fine pattern (5 x 5 px, none more than 4 % of the film) are a picture at full size, one
    grey level in blocks of 15 x 15: refused, as the model would see nothing else, in words true of the film."""
    film = np.tile((100 + np.arange(25, dtype=np.uint8)).reshape(5, 5), (90, 90))
    assert read_gray(_png(film)).shape == (450, 450)
    with pytest.raises(DecodeError, match="^blank image: every pixel has the same value once reduced from 450 x 450 "
                                          "to 30 x 30 px$"):
        read_gray(_png(film), target=29)
