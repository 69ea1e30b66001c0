"""A monochrome DICOM film's grey levels are worked out once a stored value and looked up, not by pydicom's LUTs on
every pixel in float64: a large film decodes in a few bytes a pixel, into the same grey levels, with the same
refusals and warnings, as through the LUTs pixel by pixel."""

from __future__ import annotations

import io
import tracemalloc
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless

from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.readers import dicom, dicom_pixels
from tests.builders import dicom_bytes

RNG = np.random.default_rng(7)
ROWS, COLS = 72, 60
_Y, _X = np.mgrid[0:ROWS, 0:COLS]


def film(lo: int, hi: int) -> np.ndarray:
    """Values ``lo..hi``: a ramp with noise (many values, some of the range missing), both ends present."""
    values = lo + (hi - lo) * (_Y + _X) / (ROWS + COLS - 2) + RNG.integers(-40, 41, (ROWS, COLS))
    values = np.clip(np.rint(values), lo, hi).astype(np.int64)
    values[0, 0], values[-1, -1] = lo, hi
    return values


def lut(entries: np.ndarray, bits: int, first: int = 0, words: bool = False) -> Sequence:
    """A one-item LUT sequence of ``entries`` (``bits`` each, from stored value ``first``), LUT Data US or OW."""
    item = Dataset()
    item.add_new(0x00283002, "SS" if first < 0 else "US", [len(entries), first, bits])  # LUT Descriptor
    if words:
        item.add_new(0x00283006, "OW", np.asarray(entries, "<u2").tobytes())
    else:
        item.add_new(0x00283006, "US", [int(e) for e in entries])
    return Sequence([item])


def with_overlay_bit(data: bytes, bit: int) -> bytes:
    """``data`` with an overlay plane claiming stored bit ``bit`` (Overlay Bit Position)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.add_new(0x60000102, "US", bit)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def rle(data: bytes) -> bytes:
    """``data`` with its pixel data compressed RLE Lossless."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


TWELVE = film(0, 4095)
SIGNED = film(-2000, 2000)
WINDOW = dict(WindowCenter=1800, WindowWidth=2600)
PADDED = TWELVE.copy()
PADDED[:8] = 4095
RAMP_LUT = np.linspace(0, 65535, 4096).round()
CURVE_LUT = (255 * np.sqrt(np.linspace(0, 1, 4096))).round()

FILMS = {
    "MONOCHROME2 12-bit": dicom_bytes(TWELVE),
    "MONOCHROME1 12-bit, window": dicom_bytes(TWELVE, "MONOCHROME1", **WINDOW),
    "rescale + window": dicom_bytes(TWELVE, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=600,
                                    WindowWidth=2000),
    "rescale of negative slope + window": dicom_bytes(TWELVE, RescaleSlope=-1, RescaleIntercept=4095, **WINDOW),
    "rescale of fractional slope": dicom_bytes(TWELVE, RescaleSlope=0.37, RescaleIntercept=-11.5),
    "lone slope": dicom_bytes(TWELVE, RescaleSlope=-2),
    "lone intercept + window": dicom_bytes(TWELVE, RescaleIntercept=-1024, WindowCenter=800, WindowWidth=1500),
    "window LINEAR_EXACT": dicom_bytes(TWELVE, VOILUTFunction="LINEAR_EXACT", **WINDOW),
    "window SIGMOID": dicom_bytes(TWELVE, VOILUTFunction="SIGMOID", **WINDOW),
    "window SIGMOID, overflowing": dicom_bytes(TWELVE, VOILUTFunction="SIGMOID", WindowCenter=4000,
                                               WindowWidth=0.5),
    "two windows": dicom_bytes(TWELVE, WindowCenter=[1500, 300], WindowWidth=[1000, 200]),
    "window narrower than the film": dicom_bytes(TWELVE, WindowCenter=2000, WindowWidth=8),
    "window of width below 1": dicom_bytes(TWELVE, WindowCenter=2000, WindowWidth=0.5),
    "VOI LUT, 16-bit OW": dicom_bytes(TWELVE, VOILUTSequence=lut(RAMP_LUT, 16, words=True)),
    "VOI LUT, 8-bit entries": dicom_bytes(TWELVE, "MONOCHROME1", VOILUTSequence=lut(CURVE_LUT, 8)),
    "VOI LUT from 1000, 8-bit": dicom_bytes(TWELVE, VOILUTSequence=lut(CURVE_LUT[:1024], 8, first=1000)),
    "VOI LUT after a rescale": dicom_bytes(TWELVE, RescaleSlope=2, RescaleIntercept=-100,
                                           VOILUTSequence=lut(RAMP_LUT, 16)),
    "modality LUT + window": dicom_bytes(TWELVE, ModalityLUTSequence=lut(RAMP_LUT[::-1], 16), WindowCenter=30000,
                                         WindowWidth=40000),
    "modality LUT from a negative value": dicom_bytes(TWELVE, ModalityLUTSequence=lut(RAMP_LUT, 16, first=-5)),
    "padding value": dicom_bytes(PADDED, PixelPaddingValue=4095),
    "padding value, MONOCHROME1 + window": dicom_bytes(PADDED, "MONOCHROME1", PixelPaddingValue=4095, **WINDOW),
    "padding range + rescale + window": dicom_bytes(PADDED, PixelPaddingValue=4095, PixelPaddingRangeLimit=3900,
                                                    RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=500,
                                                    WindowWidth=1500),
    "padding, narrow window": dicom_bytes(PADDED, PixelPaddingValue=4095, WindowCenter=1000, WindowWidth=6),
    "all padding": dicom_bytes(TWELVE, PixelPaddingValue=0, PixelPaddingRangeLimit=4095),
    "signed 16-bit, rescale + window": dicom_bytes(SIGNED, bits=16, PixelRepresentation=1, RescaleSlope=1,
                                                   RescaleIntercept=100, WindowCenter=0, WindowWidth=3000),
    "signed 16-bit, padding -32768": dicom_bytes(np.where(PADDED == 4095, -32768, SIGNED), bits=16,
                                                 PixelRepresentation=1, PixelPaddingValue=-32768),
    "signed 12-bit, sign extended": dicom_bytes(SIGNED, PixelRepresentation=1, **WINDOW),
    "signed 12-bit, bits above clear": dicom_bytes(SIGNED & 0xFFF, "MONOCHROME1", PixelRepresentation=1),
    "12-bit with an overlay in bit 12": with_overlay_bit(dicom_bytes(TWELVE | (RNG.integers(0, 2, TWELVE.shape)
                                                                              << 12)), 12),
    "12-bit with garbage above High Bit": dicom_bytes(TWELVE | 0x4000),
    "8-bit as stored": dicom_bytes(film(3, 250), bits=8),
    "8-bit as stored, padding": dicom_bytes(np.where(PADDED == 4095, 0, film(3, 250)), bits=8, PixelPaddingValue=0),
    "8-bit MONOCHROME1 + window": dicom_bytes(film(0, 255), "MONOCHROME1", bits=8, WindowCenter=100, WindowWidth=90),
    "16-bit full range + window": dicom_bytes(film(0, 65535), bits=16, WindowCenter=30000, WindowWidth=50000),
    "16-bit, sparse values": dicom_bytes(film(0, 4095) * 16, bits=16, RescaleSlope=0.25, RescaleIntercept=7),
    "RLE Lossless, signed + window": rle(dicom_bytes(SIGNED, bits=16, PixelRepresentation=1, WindowCenter=-100,
                                                 WindowWidth=2500)),
    "non-square pixels": dicom_bytes(TWELVE, PixelSpacing=[0.2, 0.1], **WINDOW),
}


def shown(data: bytes) -> tuple[object, list[tuple[type, str]]]:
    """What :func:`dicom_pixels._as_shown` makes of a film (its grey pixels and how many values it held before its
    window, or the refusal), and the warnings it gave."""
    ds = dicom.read_dataset(data, header_only=False)
    film_header = dicom._header(ds)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image, before_window = dicom_pixels._as_shown(ds, film_header)
            result: object = (np.asarray(image), None if before_window is None else
                              dicom_pixels._distinct(before_window))
        except DecodeError as e:
            result = str(e)
    return result, [(w.category, str(w.message)) for w in caught]


@pytest.mark.parametrize("name", list(FILMS))
def test_looked_up_by_stored_value_the_film_is_what_the_luts_make_of_every_pixel(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up, warned = shown(FILMS[name])
    monkeypatch.setattr(dicom_pixels, "_present_values", lambda stored: None)  # pydicom's LUTs on every pixel
    every_pixel, warned_every_pixel = shown(FILMS[name])
    assert warned == warned_every_pixel
    if isinstance(every_pixel, str):
        assert looked_up == every_pixel
    else:
        assert isinstance(looked_up, tuple), looked_up
        assert looked_up[0].dtype == every_pixel[0].dtype == np.uint8
        np.testing.assert_array_equal(looked_up[0], every_pixel[0])
        assert looked_up[1] == every_pixel[1]


def test_the_films_compared_cover_the_refusals_and_warnings() -> None:
    """The comparison above is only as good as its films: some are refused, some warn, some keep their values
    before the window for the window's refusal."""
    outcomes = {name: shown(data) for name, data in FILMS.items()}
    refused = {name for name, (result, _) in outcomes.items() if isinstance(result, str)}
    assert {"all padding", "window of width below 1", "12-bit with garbage above High Bit"} <= refused
    assert outcomes["window SIGMOID, overflowing"][1] and outcomes["VOI LUT after a rescale"][1]
    narrow = outcomes["window narrower than the film"][0]
    assert len(np.unique(narrow[0])) < 16 <= narrow[1]


def test_a_large_film_with_a_rescale_and_a_window_decodes_in_a_few_bytes_a_pixel() -> None:
    """A 12-bit 2,000 x 2,000 film with a rescale and a window: pydicom's LUTs on every pixel in float64, and the
    values kept for the window's refusal, peaked at 29 bytes a pixel (911 MiB for 5,700 x 5,800); looked up, about
    3 (the decoded stored values, 2, and the grey film, 1). Allocations are counted (tracemalloc), not resident
    memory: the same however many threads numpy or the decoders use."""
    side = 2000
    ramp = np.add.outer(np.arange(side), np.arange(side)) * 4095 // (2 * side - 2)
    data = dicom_bytes(ramp, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=1000, WindowWidth=3000)
    del ramp
    ds = dicom.read_dataset(data, header_only=False)
    film_header = dicom._header(ds)
    tracemalloc.start()
    try:
        image = dicom_pixels.gray(ds, film_header)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.size == (side, side)
    assert peak / side**2 < 8, f"{peak / side**2:.1f} bytes a pixel"
