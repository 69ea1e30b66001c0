"""A JPEG whose entropy-coded data is damaged is refused with a reason, never decoded and scored: Pillow ignores
libjpeg's corrupt-data warnings, and half a real film followed by an EOI marker decoded with 808 of its 1416 rows
flat grey. Intact films decode to the very pixels Pillow gave."""

from __future__ import annotations

import errno
import io
import logging
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from pneumoscan.data import pixels
from pneumoscan.data.decode import image_info, read_gray
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.preprocess import preprocess
from tests.builders import JPEG_DAMAGE, cut_with_eoi, noise_in_middle

CORRUPT = r"(?i)corrupt JPEG data"


@pytest.fixture(scope="module")
def val_film(data_root: Path) -> Path:
    """A full-size grey original (1776 x 1416) from val/."""
    return sorted((data_root / "val" / "NORMAL").glob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def train_film(data_root: Path) -> Path:
    """A 224 px RGB training file."""
    return sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]


def _encode(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("damage", list(JPEG_DAMAGE))
@pytest.mark.parametrize("which", ["val_film", "train_film"])
def test_a_damaged_real_film_is_refused(which: str, damage: str, request: pytest.FixtureRequest,
                                        tmp_path: Path) -> None:  # fmt: skip
    data = JPEG_DAMAGE[damage](request.getfixturevalue(which).read_bytes())
    with Image.open(io.BytesIO(data)) as im:  # what the reader used to do: decoded, no error
        im.load()
    path = tmp_path / "damaged.jpeg"
    path.write_bytes(data)
    for source in (path, data):
        with pytest.raises(DecodeError, match=CORRUPT):
            read_gray(source)
        with pytest.raises(DecodeError, match=CORRUPT):
            preprocess(source, 224)
    assert image_info(data)["width"] > 0  # the header is intact: only the pixels are refused


def test_a_damaged_film_decoded_smaller_is_refused(val_film: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_DECODED_BYTES a JPEG is decoded at 1/2 to 1/8 scale: every coefficient is still read, and checked."""
    data = cut_with_eoi(val_film.read_bytes())
    monkeypatch.setattr(pixels, "MAX_DECODED_BYTES", 1776 * 1416 // 16)  # 1/4 scale fits
    with pytest.raises(DecodeError, match=CORRUPT):
        read_gray(data)
    assert read_gray(val_film).shape == (354, 444)  # the intact film, at 1/4 scale


def test_a_damaged_cmyk_jpeg_is_refused(val_film: Path) -> None:
    with Image.open(val_film) as im:
        data = _encode(im.convert("CMYK"), quality=90)
    assert read_gray(data).shape == (1416, 1776)
    with pytest.raises(DecodeError, match=CORRUPT):
        read_gray(cut_with_eoi(data))


def test_intact_films_decode_to_pillows_pixels(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pixels did not change with the decoder: every val/ original and every 40th training file, in full and,
    beyond the byte limit, luma only at 1/2 scale as Pillow's draft mode decoded it."""
    films = sorted((data_root / "val").rglob("*.jpeg")) + sorted((data_root / "train").rglob("*.jpeg"))[::40]
    assert len(films) > 140
    for film in films:
        with Image.open(film) as im:
            expected = np.asarray(im.convert("L"))
        np.testing.assert_array_equal(read_gray(film), expected, err_msg=film.name)
    with monkeypatch.context() as patch:
        for film in films[:16] + films[-8:]:  # grey originals and RGB training files
            with Image.open(film) as im:
                patch.setattr(pixels, "MAX_DECODED_BYTES", -(-im.width // 2) * -(-im.height // 2))
                im.draft("L", (im.width // 2, im.height // 2))
                expected = np.asarray(im.convert("L"))
            np.testing.assert_array_equal(read_gray(film), expected, err_msg=f"{film.name} at 1/2 scale")


def test_cmyk_jpeg_gives_pillows_pixels(val_film: Path) -> None:
    with Image.open(val_film) as im:
        data = _encode(im.resize((444, 354)).convert("CMYK"), quality=90)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("L"))
    np.testing.assert_array_equal(read_gray(data), expected)


def test_a_jpeg_exif_orientation_is_applied(train_film: Path) -> None:
    """A phone photo of a film: the pixels are decoded without Pillow, the orientation still read from its EXIF."""
    with Image.open(train_film) as im:
        exif = im.getexif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        upright = read_gray(_encode(im.crop((0, 0, 224, 160)), quality=95))
        turned = read_gray(_encode(im.crop((0, 0, 224, 160)), quality=95, exif=exif))
    assert upright.shape == (160, 224) and turned.shape == (224, 160)
    np.testing.assert_array_equal(turned, np.rot90(upright, -1))


def test_an_io_error_reading_a_jpeg_is_a_transient_refusal(train_film: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The JPEG's bytes are read whole by the reader, not by Pillow: a disk's hiccup there must stay transient (the
    cache keeps no such failure), not read as a damaged film."""
    class FailingWholeRead(io.BufferedReader):
        """A film's handle whose reads of a few bytes (the header's) work and whose read of the whole file fails."""

        def read(self, size: int | None = -1) -> bytes:
            if size is None or size < 0:
                raise OSError(errno.EIO, "Input/output error")
            return super().read(size)

    monkeypatch.setattr(pixels.files, "open_regular", lambda path: FailingWholeRead(io.FileIO(path)))
    with pytest.raises(DecodeError, match="cannot read file: Input/output error") as info:
        read_gray(train_film)
    assert pixels.transient(info.value)


def _jfif_2(data: bytes) -> bytes:
    """JFIF version 2.01 in the APP0 header: libjpeg warns of an unknown revision and reads the image as ever."""
    at = data.index(b"JFIF\x00") + 5
    return data[:at] + b"\x02" + data[at + 1 :]


def _sos_spectral_end_0(data: bytes) -> bytes:
    """The scan header's spectral-selection end set to 0, which a sequential JPEG ignores (libjpeg warns "Invalid
    SOS parameters" and reads on): some cameras and encoders write it so."""
    sos = data.index(b"\xff\xda")
    se = sos + 4 + 1 + 2 * data[sos + 4] + 1  # length, component count, component pairs, Ss: then Se
    return data[:se] + b"\x00" + data[se + 1 :]


QUIRKS = {"JFIF 2.01": _jfif_2, "SOS parameters": _sos_spectral_end_0}


@pytest.mark.parametrize("quirk", list(QUIRKS))
def test_a_harmless_quirk_of_an_intact_film_is_read_and_damage_behind_it_is_not(quirk: str, train_film: Path) -> None:
    """libjpeg's strict mode stops at its first warning of any kind: a harmless one must not refuse an intact film,
    and must not hide damage further on (the Huffman codes are checked before the lenient decode)."""
    data = train_film.read_bytes()
    odd = QUIRKS[quirk](data)
    assert odd != data
    assert np.array_equal(read_gray(odd), read_gray(data))
    with pytest.raises(DecodeError, match=CORRUPT):
        read_gray(QUIRKS[quirk](noise_in_middle(data)))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_progressive_jpeg_cut_after_any_scan_is_refused(val_film: Path, mode: str) -> None:
    """Closed with EOI after a scan, a progressive JPEG is well formed to libjpeg, which decoded the coarse scans
    without a warning (after the first alone: a mosaic of 8 x 8 blocks, and a score). Intact, it reads as Pillow
    reads it."""
    with Image.open(val_film) as im:
        data = _encode(im.convert(mode), quality=90, progressive=True)
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    np.testing.assert_array_equal(read_gray(data), expected)
    scans = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]
    assert len(scans) > 3
    for start in scans[1:]:
        with pytest.raises(DecodeError, match=r"(?i)corrupt JPEG data: a progressive JPEG that ends before its last"):
            read_gray(data[:start] + b"\xff\xd9")


def test_a_progressive_jpeg_is_refused_past_its_scans_block_budget(val_film: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each scan visits every 8 x 8 block of its components, however little it codes: a complete progression of
    2,649 scans over a 12,000 x 12,000 colour image in 1.5 MB cost 71 s of CPU in the service. The scans' visits are
    counted from the markers before anything is decoded: a grey film's, exactly, are its scans times its blocks."""
    with Image.open(val_film) as im:
        grey = im.convert("L")
        data = _encode(grey, quality=90, progressive=True)
    scans = sum(1 for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda")
    visits = scans * -(-grey.width // 8) * -(-grey.height // 8)
    monkeypatch.setattr(pixels, "MAX_PROGRESSIVE_BLOCKS", visits)
    assert read_gray(data).ndim == 2  # its own progression, at the cap: read
    monkeypatch.setattr(pixels, "MAX_PROGRESSIVE_BLOCKS", visits - 1)
    with pytest.raises(DecodeError, match=rf"a progressive JPEG whose scans visit over {visits - 1:,} of its 8 x 8 "
                                          "blocks"):
        read_gray(data)


def frame_header(data: bytes) -> tuple[int, int]:
    """Where a JPEG's frame header (SOF0) begins and ends."""
    start = data.index(b"\xff\xc0")
    return start, start + 2 + int.from_bytes(data[start + 2 : start + 4], "big")


def swapped_frame_header(data: bytes) -> bytes:
    """A JPEG's frame header with its rows and columns swapped."""
    start, end = frame_header(data)
    return data[start : start + 5] + data[start + 7 : start + 9] + data[start + 5 : start + 7] + data[start + 9 : end]


def _second_frame_header(data: bytes) -> bytes:
    """A second frame header before the scan, of rows and columns swapped: which one a decoder uses is its choice."""
    end = frame_header(data)[1]
    return data[:end] + swapped_frame_header(data) + data[end:]


def _second_soi(data: bytes) -> bytes:
    """Another file's start (SOI) before the frame header, as two files pasted one into the other leave."""
    start = frame_header(data)[0]
    return data[:start] + b"\xff\xd8" + data[start:]


@pytest.mark.parametrize("fault, reason", [(_second_frame_header, "two SOF markers"), (_second_soi, "two SOI markers")],
                         ids=["two frame headers", "two SOI markers"])
def test_a_jpeg_of_two_frame_headers_or_two_starts_is_refused_saying_so(
        train_film: Path, fault: Callable[[bytes], bytes], reason: str) -> None:  # fmt: skip
    """Refused, with libjpeg's words: 'broken data stream when reading image file', 'Premature end of JPEG file'."""
    with pytest.raises(DecodeError, match=rf"^corrupt or truncated image data: Invalid JPEG file structure: {reason}$"):
        read_gray(fault(train_film.read_bytes()))


def test_a_jpeg_file_of_12_bit_samples_is_refused_as_such_not_as_corrupt(tmp_path: Path) -> None:
    """A 12-bit JPEG (Extended, as a DICOM's frame holds; here pydicom's own, taken out of its DICOM) saved as a
    .jpeg file is intact, but Pillow opens 8-bit JPEG only and gives no reason: it was refused as 'corrupt JPEG
    header', which sent its sender to export the same file again."""
    ds = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    path = tmp_path / "film.jpeg"
    path.write_bytes(next(generate_frames(ds.PixelData, number_of_frames=1)))
    for read in (read_gray, image_info):
        with pytest.raises(DecodeError, match=r"^a JPEG of 12-bit samples: only 8-bit JPEG files are read; export the "
                                              r"film as a 16-bit greyscale PNG or as DICOM$"):
            read(path)


def _with_corrupt_exif() -> bytes:
    """A JPEG whose EXIF directory declares two entries and holds one (an orientation): Pillow warns "Corrupt EXIF
    data" on opening it."""
    tiff = b"II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHII", 0x0112, 3, 1, 1)
    y, x = np.mgrid[0:64, 0:64]
    return _encode(Image.fromarray(((x * 3 + y * 2) % 256).astype(np.uint8)), exif=b"Exif\x00\x00" + tiff)


def test_corrupt_exif_is_logged_once_a_film_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Pillow's "Corrupt EXIF data ..." warning named no film, and Python showed it once a run: with many films in a
    predict run, which one was not known. Each film's is logged once, naming it; none reaches Python's warnings."""
    films = [tmp_path / "first.jpeg", tmp_path / "second.jpeg"]
    for film in films:
        film.write_bytes(_with_corrupt_exif())
    caplog.set_level(logging.WARNING, logger="pneumoscan.data.readers.pillow")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that escaped would fail the read
        for film in films:
            assert read_gray(film).shape == (64, 64)
            image_info(film)  # its header read says nothing more
        read_gray(films[0].read_bytes())
    said = [r.getMessage() for r in caplog.records if "Corrupt EXIF data" in r.getMessage()]
    assert len(said) == 3, said
    assert [m.split(": ")[0] for m in said] == [str(films[0]), str(films[1]), "the uploaded image"], said
