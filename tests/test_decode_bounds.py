"""Decoding is bounded in memory (pixels and bytes) and gives the model the same pixels whatever the file format."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.data import pixels
from pneumoscan.data.decode import image_info, read_gray
from pneumoscan.data.pixels import MAX_DECODED_BYTES, DecodeError
from pneumoscan.data.preprocess import PreprocessSpec, preprocess
from pneumoscan.inference.predict import Predictor
from tests.builders import dicom_bytes, write_png

PEAK = """
import resource, sys
from pneumoscan.data.decode import read_gray
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gray = read_gray(sys.argv[1], target=224)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(gray.shape, (after - before) * 1024)
"""


def test_decoding_a_large_16bit_png_holds_under_twice_its_decoded_bytes(tmp_path: Path) -> None:
    """A 6,000 x 6,000 16-bit PNG is 72 MB decoded; its float64 copies once took over 1 GB of memory."""
    path = write_png(tmp_path / "deep.png", 6000, 6000, bits=16)
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, check=True, timeout=120,
        cwd=Path(__file__).parents[1],
    )  # fmt: skip
    shape, added = out.stdout.rsplit(None, 1)
    decoded = 6000 * 6000 * 2
    assert int(added) < 2 * decoded, f"decoding added {int(added) / 2**20:.0f} MiB of peak memory"
    assert shape == "(231, 231)"  # 26 x 26 blocks averaged: the short side stays above 224


@pytest.mark.parametrize(
    ("width", "height", "bits", "color", "what"),
    [(12_000, 12_000, 16, 0, "I;16"), (9_000, 9_000, 8, 6, "RGBA"), (8_500, 8_500, 8, 2, "RGB")],
)  # fmt: skip
def test_png_beyond_the_byte_limit_is_refused_from_its_header(
    tmp_path: Path, width: int, height: int, bits: int, color: int, what: str
) -> None:
    """Under MAX_PIXELS, but 16-bit or multi-channel pixels would take more than MAX_DECODED_BYTES to hold."""
    assert width * height < pixels.MAX_PIXELS
    path = write_png(tmp_path / "big.png", width, height, bits, color, rows=1)  # the pixels never get read
    start = time.perf_counter()
    for read in (read_gray, image_info):
        with pytest.raises(DecodeError, match=rf"too large to decode: {width} x {height} {what} needs .* MiB"):
            read(path)
    assert time.perf_counter() - start < 1.0


def test_dicom_beyond_the_byte_limit_is_refused_from_its_header() -> None:
    """6,000 x 6,000 is 36 Mpixels, but the window arithmetic on them would need 288 MB of float64."""
    data = dicom_bytes(np.zeros((2, 2), np.uint16), Rows=6000, Columns=6000)
    with pytest.raises(DecodeError, match="too large to decode: 6000 x 6000 DICOM"):
        read_gray(data)
    assert 6000 * 6000 * 8 > MAX_DECODED_BYTES


def test_jpeg_beyond_the_byte_limit_is_decoded_smaller(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A JPEG is the one format that can be decoded smaller: luma only, then at 1/2, 1/4 or 1/8 scale; the same
    pixels as a PNG are refused."""
    ramp = np.add.outer(np.arange(1600) // 8, np.arange(2000) // 10).astype(np.uint8)
    jpeg, png = tmp_path / "wide.jpeg", tmp_path / "wide.png"
    Image.fromarray(ramp).convert("RGB").save(jpeg, quality=95)  # RGB: 4 bytes a pixel decoded
    Image.fromarray(ramp).convert("RGB").save(png)
    monkeypatch.setattr(pixels, "MAX_DECODED_BYTES", 2000 * 1600)  # luma only fits
    assert read_gray(jpeg).shape == (1600, 2000)
    monkeypatch.setattr(pixels, "MAX_DECODED_BYTES", 1000 * 800)  # so does half scale
    half = read_gray(jpeg)
    assert half.shape == (800, 1000) and np.abs(half.astype(int) - ramp[::2, ::2]).mean() < 3
    with pytest.raises(DecodeError, match="too large to decode"):
        read_gray(png)


def _as_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_same_pixels_give_the_same_model_input_and_score_as_jpeg_png_or_dicom(
    data_root: Path, tiny_bundle: Path
) -> None:
    """Full-size films from val/, their JPEG's decoded pixels written losslessly as PNG and as DICOM: the reduced
    pixels, the preprocessed model input and the score are the same (a JPEG's draft decode once scored 0.07 apart)."""
    predictor = Predictor(tiny_bundle, backend="torch")
    specs = (predictor.card.spec, PreprocessSpec(224, "squash", 224, 75), PreprocessSpec(192, "pad"))
    films = [p for label in ("NORMAL", "PNEUMONIA") for p in sorted((data_root / "val" / label).glob("*.jpeg"))[:3]]
    for film in films:
        with Image.open(film) as im:
            pixels = np.asarray(im.convert("L"))
        assert min(pixels.shape) > 2 * 224  # full-size: every spec reduces it
        sources = {"png": _as_png(pixels), "dicom": dicom_bytes(pixels, bits=8)}
        for spec in specs:
            expected = read_gray(film, target=spec.decode_target)
            model_input = spec.apply(expected)
            for name, data in sources.items():
                gray = read_gray(data, target=spec.decode_target)
                np.testing.assert_array_equal(gray, expected, err_msg=f"{film.name} as {name}, {spec}")
                np.testing.assert_array_equal(preprocess(data, **spec.to_dict()), model_input)
        gray_jpeg = read_gray(film, target=predictor.card.spec.decode_target)
        score = predictor.predict_array(gray_jpeg)["probability"]
        for name, data in sources.items():
            other = predictor.predict_array(read_gray(data, target=predictor.card.spec.decode_target))["probability"]
            assert abs(other - score) <= 0.01, f"{film.name}: JPEG {score:.4f}, {name} {other:.4f}"
