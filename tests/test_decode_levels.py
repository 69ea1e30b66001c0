"""Films of a few grey levels (thresholded, posterised, bilevel) are refused: no radiograph looks so, and the score
of a thresholded film flipped with the threshold (a pneumonia film read NORMAL at 160, PNEUMONIA at 100)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import pack_bits

from pneumoscan.data.decode import read_gray
from pneumoscan.data.pixels import MIN_GREY_LEVELS, DecodeError
from tests.builders import dicom_bytes

FEW_LEVELS = r"too few grey levels: .*: a thresholded, posterised or bilevel picture, not a radiograph"


@pytest.fixture(scope="module")
def film(data_root: Path) -> np.ndarray:
    """A real training film (224 px a side), 8-bit."""
    return read_gray(sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0])


def png(pixels: np.ndarray | Image.Image) -> bytes:
    buf = io.BytesIO()
    (pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)).save(buf, "PNG")
    return buf.getvalue()


def posterised(film: np.ndarray, levels: int) -> np.ndarray:
    return (np.floor(film / 256 * levels) * (255 // (levels - 1))).astype(np.uint8)


def bilevel_dicom(film: np.ndarray) -> bytes:
    """The film thresholded and stored as a 1-bit DICOM (Bits Allocated 1, packed)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film, bits=8)))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = pack_bits((film > 128).astype(np.uint8))
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["mode 1 PNG", "3 levels", f"{MIN_GREY_LEVELS - 1} levels", "1-bit DICOM",
                                  "6-bit DICOM", "posterised 12-bit DICOM"])
def test_a_film_of_few_grey_levels_is_refused(film: np.ndarray, case: str) -> None:
    data = {
        "mode 1 PNG": lambda: png(Image.fromarray(film).point(lambda v: 255 if v > 128 else 0).convert("1")),
        "3 levels": lambda: png(posterised(film, 3)),
        f"{MIN_GREY_LEVELS - 1} levels": lambda: png(posterised(film, MIN_GREY_LEVELS - 1)),
        "1-bit DICOM": lambda: bilevel_dicom(film),
        "6-bit DICOM": lambda: dicom_bytes(film >> 2, bits=6),
        "posterised 12-bit DICOM": lambda: dicom_bytes(posterised(film, 4).astype(np.uint16) * 16),
    }[case]()
    with pytest.raises(DecodeError, match=FEW_LEVELS):
        read_gray(data, 224)


def png_bits(film: np.ndarray, mode: str, bits: int) -> bytes:
    """``film`` stretched and posterised to every one of the 2 ** ``bits`` levels a PNG of that bit depth holds, saved
    so (grey "L", or a palette of greys "P")."""
    stretched = ((film - film.min()) / max(1, np.ptp(film)) * 255.99).astype(np.uint8)
    levels = posterised(stretched, 2**bits)
    assert len(np.unique(levels)) == 2**bits
    im = Image.fromarray(levels)
    buf = io.BytesIO()
    (im if mode == "L" else im.quantize(2**bits)).save(buf, "PNG", bits=bits)
    return buf.getvalue()


@pytest.mark.parametrize(("mode", "bits"), [("L", 4), ("P", 4), ("P", 2)])
def test_a_png_of_fewer_than_8_bits_is_refused_from_its_header_as_a_dicom_is(film: np.ndarray, mode: str,
                                                                              bits: int) -> None:
    """A DICOM of Bits Stored under 8 is refused from its header, whatever its levels; a 4-bit PNG of 16 levels (the
    least a film is read with) was read and scored: a PNG of 1, 2 or 4 bits a sample (grey or palette) is refused
    so, however small."""
    data = png_bits(film, mode, bits)
    with Image.open(io.BytesIO(data)) as im:
        assert im.tile[0].args == f"{mode};{bits}"  # stored at that depth
    for size in (None, 64):
        with pytest.raises(DecodeError, match=f"^too few grey levels: a {bits}-bit PNG holds at most {2**bits}, .*"
                                              "not a radiograph$"):
            read_gray(data if size is None else png_bits(film[:size, :size], mode, bits), 224)


def test_the_levels_are_counted_before_the_reduction_blends_them(film: np.ndarray) -> None:
    """A bilevel film four times the model's size, reduced, holds levels in between: counted at full size."""
    big = np.kron(np.where(film > 128, 255, 0).astype(np.uint8), np.ones((4, 4), np.uint8))
    with pytest.raises(DecodeError, match=r"too few grey levels: the film holds 2"):
        read_gray(png(big), 224)


def test_enough_levels_and_small_images_are_read(film: np.ndarray) -> None:
    """16 levels pass; a thumbnail of two levels is left to the scope check's thumbnail warning."""
    sixteen = (np.add.outer(np.arange(224), np.arange(224)) % MIN_GREY_LEVELS * 17).astype(np.uint8)
    assert read_gray(png(sixteen), 224).shape == (224, 224)
    assert read_gray(png(np.kron([[0, 255], [255, 0]], np.ones((40, 50))).astype(np.uint8))).shape == (80, 100)
    assert read_gray(dicom_bytes(film, bits=8)).shape == film.shape


def test_real_films_hold_many_levels(data_root: Path) -> None:
    """Every film of train/ and val/ holds at least 113 grey levels at full size (a sample of them here)."""
    paths = sorted((data_root / "val").glob("*/*.jpeg")) + sorted((data_root / "train").glob("*/*.jpeg"))[::400]
    for path in paths:
        assert len(np.unique(read_gray(path))) >= 100, path


@pytest.mark.parametrize("case", ["12-bit, width 12", "8-bit, width 10", "VOI LUT"])
def test_a_window_that_leaves_too_few_levels_is_named_not_the_film(film: np.ndarray, case: str) -> None:
    """A DICOM whose own window is narrower than its film's values shows a few grey levels of a real film: the
    refusal names the window, as a window that leaves nothing is named, not the film as thresholded."""
    twelve = film.astype(np.uint16) * 16
    data, window = {
        "12-bit, width 12": (dicom_bytes(twelve, WindowCenter=int(np.median(twelve)), WindowWidth=12),
                             rf"its window \(WindowCenter {int(np.median(twelve))}, WindowWidth 12\)"),
        "8-bit, width 10": (dicom_bytes(film, bits=8, WindowCenter=int(np.median(film)), WindowWidth=10),
                            rf"its window \(WindowCenter {int(np.median(film))}, WindowWidth 10\)"),
        "VOI LUT": (voi_lut_dicom(twelve, np.repeat(np.arange(4) * 85, 1024)), "its VOI LUT"),
    }[case]
    with pytest.raises(DecodeError, match=rf"too few grey levels after {window}: the film holds \d+ inside it, "
                                          r".*the window is too narrow for the values of the film"):
        read_gray(data, 224)


def test_a_posterised_film_under_a_window_is_still_the_film_refused(film: np.ndarray) -> None:
    """Four stored values under a wide window: the film itself holds too few levels, whatever its window."""
    four = posterised(film, 4).astype(np.uint16) * 16
    with pytest.raises(DecodeError, match=FEW_LEVELS):
        read_gray(dicom_bytes(four, WindowCenter=2048, WindowWidth=4096), 224)


def voi_lut_dicom(pixels: np.ndarray, lut: np.ndarray) -> bytes:
    """A 12-bit film with a VOI LUT Sequence of one LUT, ``lut`` (from stored value 0, 16-bit entries)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(pixels)))
    item = pydicom.Dataset()
    item.LUTDescriptor = [len(lut), 0, 16]
    item.LUTData = lut.astype(np.uint16).tobytes()
    item["LUTData"].VR = "OW"
    ds.VOILUTSequence = [item]
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()
