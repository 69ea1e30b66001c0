"""Compressed DICOM: every transfer syntax pydicom decodes with its standard plugins (pylibjpeg, -libjpeg,
-openjpeg, -rle) reads like the uncompressed film; lossless syntaxes give back the very same pixels. HTJ2K films are
made by OpenJPH's ojph_compress (no plugin encodes HTJ2K) and read by OpenJPEG."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import simplejpeg
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import get_decoder

from pneumoscan.data import pixels as pixel_limits
from pneumoscan.data.decode import read_gray
from pneumoscan.data.readers import jpeg as jpeg_reader

from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.readers.dicom import TRANSFER_SYNTAXES
from tests.builders import JPEG_DAMAGE, cut_with_eoi, dicom_bytes, htj2k_frame, noise_in_middle
from tests.test_corrupt_jpeg import frame_header, swapped_frame_header
from tests.test_dicom_faults import encapsulated

# The compressed syntaxes pneumoscan reads (and listen accepts)
DECODED_SYNTAXES = tuple(syntax for syntax in TRANSFER_SYNTAXES if syntax.is_encapsulated)
# The lossless syntaxes pydicom can also write (JPEG lossless, process 14, has no encoder in any plugin).
ENCODED_SYNTAXES = (uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless)


@pytest.fixture(scope="module")
def film(data_root: Path) -> np.ndarray:
    """A real training film as 12-bit values (every 8-bit level spread over 16, plus the low bits of a ramp so
    that the low four bits are not all zero, which some codecs would find too easy)."""
    path = sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]
    gray = read_gray(path).astype(np.uint16)
    ramp = np.add.outer(np.arange(gray.shape[0]), np.arange(gray.shape[1])) % 16
    return gray * 16 + ramp.astype(np.uint16)


@pytest.mark.parametrize("syntax", DECODED_SYNTAXES, ids=lambda s: s.name)
def test_every_compressed_syntax_has_a_decoder(syntax: uid.UID) -> None:
    decoder = get_decoder(syntax)
    assert decoder.is_available, f"{syntax.name}: {decoder.missing_dependencies}"


def test_jpeg_ls_reads_the_same_through_charls_and_libjpeg(film: np.ndarray) -> None:
    """decode prefers CharLS (pyjpegls, ~4x faster) for JPEG-LS; both plugins must give the same pixels."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film)))
    ds.compress(uid.JPEGLSLossless)
    assert {"pyjpegls", "pylibjpeg"} <= set(get_decoder(uid.JPEGLSLossless).available_plugins)
    arrays = []
    for plugin in ("pyjpegls", "pylibjpeg"):
        ds.pixel_array_options(decoding_plugin=plugin)
        arrays.append(ds.pixel_array)
    np.testing.assert_array_equal(arrays[0], film)
    np.testing.assert_array_equal(arrays[1], film)


@pytest.mark.parametrize("bits", [8, 12])
@pytest.mark.parametrize("syntax", ENCODED_SYNTAXES, ids=lambda s: s.name)
def test_lossless_compression_of_a_real_film_reads_back_exactly(film: np.ndarray, syntax: uid.UID, bits: int) -> None:
    pixels = film >> 4 if bits == 8 else film
    plain = dicom_bytes(pixels, bits=bits)
    ds = pydicom.dcmread(io.BytesIO(plain))
    ds.compress(syntax)
    buf = io.BytesIO()
    ds.save_as(buf)
    packed = buf.getvalue()
    assert pydicom.dcmread(io.BytesIO(packed)).file_meta.TransferSyntaxUID == syntax  # really encoded
    np.testing.assert_array_equal(read_gray(packed), read_gray(plain))


def test_deflated_dataset_reads_like_the_plain_one(film: np.ndarray) -> None:
    plain = dicom_bytes(film)
    ds = pydicom.dcmread(io.BytesIO(plain))
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf)
    assert len(buf.getvalue()) < len(plain)
    np.testing.assert_array_equal(read_gray(buf.getvalue()), read_gray(plain))


# Each HTJ2K syntax with the ojph_compress options of its film: reversible in LRCP order, reversible in RPCL order
# (its syntax's progression; OpenJPH 0.9 writes no TLM marker), and irreversible (9/7 wavelet, quantised)
HTJ2K_FILMS = {uid.HTJ2KLossless: ("-reversible", "true", "-prog_order", "LRCP"),
               uid.HTJ2KLosslessRPCL: ("-reversible", "true", "-prog_order", "RPCL"),
               uid.HTJ2K: ("-qstep", "0.002")}  # fmt: skip
_PROGRESSIONS = {b"\x00": "LRCP", b"\x02": "RPCL"}


def _htj2k_dicom(pixels: np.ndarray, syntax: uid.UID, bits: int = 12) -> tuple[bytes, bytes]:
    """The plain film of ``pixels`` and the same film as ojph_compress encodes it for ``syntax``; the frame checked
    to be an HTJ2K codestream (Rsiz says Part 15 and a CAP marker follows SIZ), in the order its options ask."""
    plain = dicom_bytes(pixels, bits=bits)
    frame = htj2k_frame(pixels, bits, *HTJ2K_FILMS[syntax])
    siz_end = 4 + int.from_bytes(frame[4:6], "big")  # SOC, SIZ's marker, then Lsiz bytes from its length
    assert frame[6] & 0x40 and frame[siz_end : siz_end + 2] == b"\xff\x50"  # Rsiz bit 14, then CAP
    cod = frame.index(b"\xff\x52")  # COD: Lcod, Scod, then the progression order
    options = HTJ2K_FILMS[syntax]
    if "-prog_order" in options:
        assert _PROGRESSIONS[frame[cod + 5 : cod + 6]] == options[options.index("-prog_order") + 1]
    return plain, encapsulated(plain, [frame], syntax)


@pytest.mark.parametrize("bits", [8, 12])
@pytest.mark.parametrize("syntax", [uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL], ids=lambda s: s.name)
def test_a_lossless_htj2k_film_reads_back_exactly(film: np.ndarray, syntax: uid.UID, bits: int) -> None:
    pixels = film >> 4 if bits == 8 else film
    plain, packed = _htj2k_dicom(pixels, syntax, bits)
    ds = pydicom.dcmread(io.BytesIO(packed))
    assert ds.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(ds.pixel_array, pixels)  # every stored value, as decoded
    np.testing.assert_array_equal(read_gray(packed), read_gray(plain))


def test_a_lossy_htj2k_film_reads_close_to_the_film(film: np.ndarray) -> None:
    """Quantised (ojph_compress -qstep 0.002): its stored values differ from the film's, its grey by no more than a
    lossy JPEG's (3 levels of 255), and by under half a level on average."""
    plain, packed = _htj2k_dicom(film, uid.HTJ2K)
    assert np.any(pydicom.dcmread(io.BytesIO(packed)).pixel_array != film)  # really lossy
    difference = np.abs(read_gray(packed).astype(int) - read_gray(plain).astype(int))
    assert difference.max() <= 3 and difference.mean() < 0.5


@pytest.mark.parametrize("damage", ["cut to a third", "random bytes in the middle"])
@pytest.mark.parametrize("syntax", list(HTJ2K_FILMS), ids=lambda s: s.name)
def test_a_damaged_htj2k_frame_is_refused_in_one_line_naming_its_syntax(film: np.ndarray, syntax: uid.UID,
                                                                        damage: str) -> None:  # fmt: skip
    frame = htj2k_frame(film, 12, *HTJ2K_FILMS[syntax])
    damaged = frame[: len(frame) // 3] if damage == "cut to a third" else noise_in_middle(frame)
    with pytest.raises(DecodeError, match=rf"^cannot decode DICOM pixel data \({re.escape(syntax.name)}\): .*"
                                          "pylibjpeg: Error decoding the J2K data") as info:  # fmt: skip
        read_gray(encapsulated(dicom_bytes(film), [damaged], syntax))
    assert "\n" not in str(info.value)


def test_the_jpeg_2000_decode_bounds_refuse_an_htj2k_frame_past_them(film: np.ndarray,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The size, code block and tile checks made before OpenJPEG decodes a JPEG 2000 frame read an HTJ2K frame too
    (the limits here at this small film's scale): ojph_compress's frames of 4 x 4 code blocks and of 16 x 16 tiles
    are refused, and a frame of another size than its header's, where its own frame is read."""
    monkeypatch.setattr(pixel_limits, "MAX_J2K_BLOCKS", 1000)
    monkeypatch.setattr(pixel_limits, "MAX_J2K_TILES", 100)
    plain, packed = _htj2k_dicom(film, uid.HTJ2KLossless)
    np.testing.assert_array_equal(read_gray(packed), read_gray(plain))
    lossless = HTJ2K_FILMS[uid.HTJ2KLossless]
    for options, refusal in ((("-block_size", "{4,4}"), "coding makes about 4,197 code blocks (limit 1,000)"),
                             (("-tile_size", "{16,16}"), "cut into 196 tiles (limit 100)")):
        frame = htj2k_frame(film, 12, *lossless, *options)
        with pytest.raises(DecodeError, match=rf"^the JPEG 2000 frame(')?s? .*{re.escape(refusal)}"):
            read_gray(encapsulated(plain, [frame], uid.HTJ2KLossless))
    with pytest.raises(DecodeError, match=r"^the compressed frame is 224 x 224 pixels with 1 component\(s\); the "
                                          r"header says 200 x 224"):  # fmt: skip
        read_gray(encapsulated(dicom_bytes(film[:, :200]), [htj2k_frame(film, 12, *lossless)], uid.HTJ2KLossless))


# Files pydicom ships, each the same image as a plain reference (uncompressed MR_small.dcm; RLE SC_rgb_rle.dcm),
# with the largest difference allowed in 8-bit gray: 0 for lossless syntaxes, a few levels for lossy JPEG.
SHIPPED = {
    "MR_small_RLE.dcm": ("MR_small.dcm", 0),
    "MR_small_jp2klossless.dcm": ("MR_small.dcm", 0),
    "MR_small_jpeg_ls_lossless.dcm": ("MR_small.dcm", 0),
    "MR_small_bigendian.dcm": ("MR_small.dcm", 0),  # Explicit VR Big Endian
    "MR_small_implicit.dcm": ("MR_small.dcm", 0),
    "SC_rgb_jpeg_gdcm.dcm": ("SC_rgb_rle.dcm", 0),  # JPEG lossless, process 14 SV1
    "SC_rgb_gdcm_KY.dcm": ("SC_rgb_rle.dcm", 0),  # JPEG 2000
    "SC_rgb_jpeg_dcmtk.dcm": ("SC_rgb_rle.dcm", 3),  # JPEG baseline, YBR_FULL
    "SC_rgb_dcmtk_+eb+cr.dcm": ("SC_rgb_rle.dcm", 3),  # JPEG baseline, RGB
    "SC_rgb_jls_lossy_line.dcm": ("SC_rgb_rle.dcm", 3),  # JPEG-LS near-lossless
}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_compressed_files_read_like_their_reference(name: str) -> None:
    reference, tolerance = SHIPPED[name]
    got, want = read_gray(get_testdata_file(name)).astype(int), read_gray(get_testdata_file(reference)).astype(int)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= tolerance


def test_jpeg_extended_12bit_is_decoded() -> None:
    """No plain twin ships for this one: the decode must succeed and fill the header's size with a real image."""
    path = get_testdata_file("JPGExtended.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == uid.JPEGExtended12Bit and ds.BitsStored == 12
    gray = read_gray(path)
    assert gray.shape == (ds.Rows, ds.Columns) and gray.min() == 0 and gray.max() == 255 and gray.std() > 20


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the file's odd fragments
def test_a_damaged_codestream_keeps_a_one_line_reason_naming_its_syntax() -> None:
    # pydicom ships this JPEG Extended file with a misplaced marker: no decoder reads it
    with pytest.raises(DecodeError, match=r"cannot decode DICOM pixel data \(JPEG Extended \(Process 2 and 4\)\): "
                                          r".*pylibjpeg.*misplaced marker") as info:
        read_gray(get_testdata_file("JPEG-lossy.dcm"))
    assert "\n" not in str(info.value)


def test_a_truncated_compressed_film_is_refused(film: np.ndarray) -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film)))
    ds.compress(uid.JPEG2000Lossless)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    buf = io.BytesIO()
    ds.save_as(buf)
    syntax = r"\(JPEG 2000 Image Compression \(Lossless Only\)\)"
    with pytest.raises(DecodeError, match=rf"cannot decode DICOM pixel data {syntax}"):
        read_gray(buf.getvalue())


def _jpeg_dicom(frame: bytes, syntax: uid.UID, like: bytes) -> bytes:
    """The DICOM file ``like`` with its pixels replaced by the one JPEG ``frame``, encapsulated in ``syntax``."""
    ds = pydicom.dcmread(io.BytesIO(like))
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


# libjpeg's reason: its corrupt-data warning, or, where the noise reads as a marker, what it found
DAMAGED = r"(Corrupt JPEG data|Unsupported marker)"


@pytest.fixture(scope="module")
def val_jpeg(data_root: Path) -> tuple[bytes, np.ndarray]:
    """A full-size grey original from val/ (baseline, restart intervals) as a JPEG frame, and its pixels."""
    path = sorted((data_root / "val" / "PNEUMONIA").glob("*.jpeg"))[0]
    return path.read_bytes(), read_gray(path)


@pytest.mark.parametrize("syntax", [uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit], ids=lambda s: s.name)
def test_an_8bit_jpeg_frame_reads_like_the_jpeg_file(val_jpeg: tuple[bytes, np.ndarray], syntax: uid.UID) -> None:
    frame, gray = val_jpeg
    data = _jpeg_dicom(frame, syntax, dicom_bytes(gray, bits=8))
    assert np.abs(read_gray(data).astype(int) - gray).max() <= 1  # pydicom's plugin: another IDCT's rounding


@pytest.mark.parametrize("damage", list(JPEG_DAMAGE))
@pytest.mark.parametrize("syntax", [uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit], ids=lambda s: s.name)
def test_a_damaged_8bit_jpeg_frame_is_refused(val_jpeg: tuple[bytes, np.ndarray], syntax: uid.UID,
                                              damage: str) -> None:  # fmt: skip
    """pydicom's JPEG plugins (Pillow first) decoded the damaged frame, the missing rows flat grey."""
    frame, gray = val_jpeg
    data = _jpeg_dicom(JPEG_DAMAGE[damage](frame), syntax, dicom_bytes(gray, bits=8))
    with pytest.raises(DecodeError, match=rf"cannot decode DICOM pixel data \({re.escape(syntax.name)}\): "
                                          rf"{DAMAGED}"):  # fmt: skip
        read_gray(data)


@pytest.mark.parametrize("damage", list(JPEG_DAMAGE))
def test_a_damaged_colour_jpeg_frame_is_refused(data_root: Path, damage: str) -> None:
    """A colour (YBR_FULL_422) baseline frame: a 224 px training file, which has no restart intervals."""
    frame = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    like = dicom_bytes(np.zeros((224, 224), np.uint8), "YBR_FULL_422", bits=8, SamplesPerPixel=3,
                       PlanarConfiguration=0)  # fmt: skip (its pixels are replaced by the frame)
    assert read_gray(_jpeg_dicom(frame, uid.JPEGBaseline8Bit, like)).shape == (224, 224)
    with pytest.raises(DecodeError, match=rf"\(JPEG Baseline \(Process 1\)\): {DAMAGED}"):
        read_gray(_jpeg_dicom(JPEG_DAMAGE[damage](frame), uid.JPEGBaseline8Bit, like))


@pytest.mark.parametrize("damage", list(JPEG_DAMAGE))
def test_a_damaged_12bit_jpeg_extended_frame_is_refused(damage: str) -> None:
    """simplejpeg decodes 8 bits only: a 12-bit frame's Huffman codes are walked in Python instead (pydicom's
    pylibjpeg decoded both damages, 712 of the 1024 rows flat)."""
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    assert frame[frame.index(b"\xff\xc1") + 4] == 12  # SOF1, 12-bit samples
    ds.PixelData = encapsulate([JPEG_DAMAGE[damage](frame)])
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DecodeError, match=r"\(JPEG Extended \(Process 2 and 4\)\): Corrupt JPEG data"):
        read_gray(buf.getvalue())


def test_the_12bit_check_is_no_stricter_than_libjpeg_about_padding() -> None:
    """Up to three unused bytes before the marker that ends a scan are padding libjpeg reads past without a word
    (some encoders write them): the frame is read; four are a warning of damage, and refused."""
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    end = frame.rindex(b"\xff\xd9")  # the frame's End Of Image (an odd-length frame is padded after it)
    plain = read_gray(get_testdata_file("JPGExtended.dcm"))
    for pad, ok in ((1, True), (3, True), (4, False)):
        ds.PixelData = encapsulate([frame[:end] + bytes(pad) + frame[end:]])
        buf = io.BytesIO()
        ds.save_as(buf)
        if ok:
            assert np.array_equal(read_gray(buf.getvalue()), plain), pad
        else:
            with pytest.raises(DecodeError, match="4 extraneous bytes before marker"):
                read_gray(buf.getvalue())


def test_the_huffman_walk_reads_past_a_restart_marker_after_the_last_interval(data_root: Path) -> None:
    """Some encoders end the last restart interval with one more marker; libjpeg reads past it, and so does the
    walk, when it carries the number due (another number is still out of order)."""
    film = sorted((data_root / "val").rglob("*.jpeg"))[0].read_bytes()
    end = film.rindex(b"\xff\xd9")
    markers = len(re.findall(rb"\xff[\xd0-\xd7]", film[film.rindex(b"\xff\xda") : end]))  # in the last scan
    assert markers, "a val/ original with restart intervals"
    jpeg_reader.check_huffman_scans(film[:end] + bytes([0xFF, 0xD0 + markers % 8]) + film[end:])
    with pytest.raises(ValueError, match="restart markers out of order"):
        jpeg_reader.check_huffman_scans(film[:end] + bytes([0xFF, 0xD0 + (markers + 1) % 8]) + film[end:])


def test_the_huffman_walk_accepts_every_real_film_and_refuses_their_damage(data_root: Path) -> None:
    """The Python walk of a JPEG's Huffman codes (used for 12-bit frames) on 8-bit real films, where libjpeg can
    judge it: every intact film passes (restart intervals in val/, none in train/), and cut ones fail as libjpeg's
    strict decode does. Each kind of film the data holds is walked: val/'s gray films with and without restart
    intervals (one Huffman table segment or two), all of them, and train/'s (each one 4:2:0 colour, no restart
    intervals), one in a thousand of them, of both classes."""
    films = sorted((data_root / "val").rglob("*.jpeg")) + sorted((data_root / "train").rglob("*.jpeg"))[::1000]
    for film in films:
        frame = film.read_bytes()
        jpeg_reader.check_huffman_scans(frame)
        for damaged in (cut_with_eoi(frame), frame[: len(frame) // 2]):
            with pytest.raises(ValueError, match="(?i)corrupt JPEG data|premature end"):
                simplejpeg.decode_jpeg(damaged, "GRAY", strict=True)
            with pytest.raises(ValueError, match="(?i)corrupt JPEG data|premature end"):
                jpeg_reader.check_huffman_scans(damaged)



def _walk_mcus_code_by_code(data: bytes, units: list[tuple[list[int], list[int] | None]], count: int) -> int:
    """The reference for the DCT walk: ``count`` MCUs of ``units`` (DC steps, the AC table as _huffman_lookup gives
    it) read one code a lookup, each window cut from the bytes of ``data`` (then zeros) as it is read."""
    padded, at = data + bytes(4), 0
    for _ in range(count):
        for dc, ac in units:
            step = dc[(int.from_bytes(padded[at >> 3 : (at >> 3) + 3], "big") >> (8 - (at & 7))) & 0xFFFF]
            if not step:
                raise ValueError("Corrupt JPEG data: bad Huffman code")
            at, k = at + step, 64 if ac is None else 1
            while k < 64:
                entry = ac[(int.from_bytes(padded[at >> 3 : (at >> 3) + 3], "big") >> (8 - (at & 7))) & 0xFFFF]
                if not entry:
                    raise ValueError("Corrupt JPEG data: bad Huffman code")
                run, size = entry >> 4 & 15, entry & 15
                at += (entry >> 8) + size
                if size:
                    k += run + 1
                elif run == 15:
                    k += 16
                else:
                    break
            if k > 64:
                raise ValueError("Corrupt JPEG data: a block of more than 64 coefficients")
        if at > 8 * len(data):
            raise ValueError("Corrupt JPEG data: premature end of data segment")
    return at


def _walked(intervals: list[bytes], units: list[tuple], counts: list[int], walk=None) -> list[int | str]:
    """Where each interval's walk ends in turn, by the reference (or by ``walk``, all at once), up to the first
    that is refused and the reason."""
    ends: list[int | str] = []
    try:
        if walk is None:
            for data, count in zip(intervals, counts):
                ends.append(_walk_mcus_code_by_code(data, units, count))
        else:
            ends.extend(walk(intervals, units, counts))
    except ValueError as e:
        ends.append(str(e))
    return ends


def _short_codes(symbols: bytes) -> tuple[list[tuple], list[tuple]]:
    """One unit's coding (fast, and as the reference reads it) by an AC table no encoder writes: ``symbols`` (a
    ZRL, EOB, a run of 14 and a run of 10 that ends the block among them) in codes of 1 to 4 bits, so that many codes
    of a window cross the 64th coefficient; the DC table's code of all ones held by none."""
    dc = jpeg_reader._dc_steps(jpeg_reader._huffman_lookup(bytes([0, 3, 1] + [0] * 13), bytes([0, 1, 2, 3])), False)
    ac = jpeg_reader._huffman_lookup(bytes([1, 0, 3, 2] + [0] * 12), symbols)
    return [(dc, jpeg_reader._ac_steps(ac))], [(dc, ac.tolist())]


def test_the_dct_walk_ends_where_a_walk_code_by_code_does(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DCT walk reads several codes a lookup, from windows made for a stretch of the data at a time; it must end
    every interval where the walk code by code ends it, or refuse it with the same reason: intact, cut, overwritten
    with noise, noise alone, no data, or more data than its MCUs read; alone, and before an intact interval whose
    data the walk may read on into. A grey film of restart intervals, a colour one of 4:2:0 MCUs (six blocks, two
    pairs of tables), a colour lossless one (a difference a sample, no AC codes), and noise read by tables of short
    codes for long runs; the windows made for stretches of
    1,024 bits, so that a film's interval is walked over several."""
    monkeypatch.setattr(jpeg_reader, "_WINDOW_BITS", 1 << 10)
    film = sorted((data_root / "val").rglob("*.jpeg"))[0].read_bytes()
    gray = simplejpeg.decode_jpeg(film, "GRAY")[:96, :128, 0]
    colour = simplejpeg.encode_jpeg(np.ascontiguousarray(np.dstack([gray, gray[::-1], 255 - gray])), quality=90,
                                    colorspace="RGB", colorsubsampling="420")  # fmt: skip
    rng, seen = np.random.default_rng(3), []
    noise = [rng.integers(0, 256, 80, dtype=np.uint8).tobytes() for _ in range(60)]
    bits = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in rng.integers(1, 8, 60)]
    cases = [(*_short_codes(bytes([0x01, 0xF0, 0x00, 0xE1, 0x11, 0xA0])), noise, 8),
             (*_short_codes(bytes([0x12, 0x00, 0xF0, 0xE1, 0x11, 0xA0])), bits, 4)]  # zeros: over 64 in 96 bits
    rgb_lossless = get_frame(pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_gdcm.dcm")).PixelData, 0,
                             number_of_frames=1)  # fmt: skip
    for frame in (film, colour, rgb_lossless):
        scan = next(jpeg_reader._sequential_scans(frame))
        with monkeypatch.context() as raw:
            raw.setattr(jpeg_reader, "_ac_steps", lambda table: table.tolist())
            units = next(jpeg_reader._sequential_scans(frame)).units
        pieces = jpeg_reader._restart_intervals(frame[scan.start : scan.end], scan.restart, scan.mcus)
        whole, more = jpeg_reader._unstuffed(pieces[0]), rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
        intervals = [whole, whole[: len(whole) // 2], whole[:100] + more[:50] + whole[150:], more, b"", b"\xff" * 40,
                     whole + more]  # fmt: skip
        cases.append((scan.units, units, intervals + noise, scan.restart or scan.mcus))
    for fast, reference, intervals, count in cases:
        for data in intervals:
            for mcus in (count, 1, 4):  # alone, and before an intact interval, whose data it may read on into
                for walked in ([data], [mcus]), ([data, intervals[0]], [mcus, 1]):
                    expected = _walked(*walked[:1], reference, *walked[1:])
                    assert _walked(walked[0], fast, walked[1], jpeg_reader._walk_mcus) == expected
                    seen += [end if isinstance(end, str) else "ended" for end in expected]
    assert set(seen) == {"ended", "Corrupt JPEG data: bad Huffman code", "Corrupt JPEG data: premature end of data "
                         "segment", "Corrupt JPEG data: a block of more than 64 coefficients"}


def _at_frame_header(frame: bytes, piece: bytes) -> bytes:
    """``frame`` with ``piece`` before its frame header (SOF0, SOF1 or SOF3)."""
    start = re.search(rb"\xff[\xc0\xc1\xc3]", frame).start()
    return frame[:start] + piece + frame[start:]


def _extended_frame() -> tuple[bytes, bytes]:
    """pydicom's 12-bit JPEG Extended file, and its one frame."""
    data = Path(get_testdata_file("JPGExtended.dcm")).read_bytes()
    return data, get_frame(pydicom.dcmread(io.BytesIO(data)).PixelData, 0, number_of_frames=1)


@pytest.mark.parametrize("marker", [b"\xff\x01", b"\xff\xd0"], ids=["TEM", "RST0"])
def test_a_marker_without_a_segment_before_the_frame_header_is_read_past(val_jpeg: tuple[bytes, np.ndarray],
                                                                         marker: bytes) -> None:  # fmt: skip
    """libjpeg reads past TEM and RSTn markers anywhere (they have no length); the walk took the next two bytes for
    one and refused the frame as 'Premature end of JPEG file'."""
    frame, gray = val_jpeg
    like = dicom_bytes(gray, bits=8)
    np.testing.assert_array_equal(read_gray(_jpeg_dicom(_at_frame_header(frame, marker), uid.JPEGBaseline8Bit, like)),
                                  read_gray(_jpeg_dicom(frame, uid.JPEGBaseline8Bit, like)))  # fmt: skip
    data, frame = _extended_frame()
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = encapsulate([_at_frame_header(frame, marker)])
    buf = io.BytesIO()
    ds.save_as(buf)
    np.testing.assert_array_equal(read_gray(buf.getvalue()), read_gray(data))


def test_a_jpeg_frame_that_leaves_its_rows_to_a_dnl_marker_is_refused() -> None:
    """A frame header of 0 rows, the height in a DNL marker after the first scan (T.81 B.2.5): pylibjpeg read an
    intact 12-bit one with values to 2048 where the film's end at 264, and one cut short used over 2.8 GB before
    it was stopped. Neither reached a check: the frame header's size and the Huffman walk were passed over."""
    data, frame = _extended_frame()
    start = frame.index(b"\xff\xc1")
    rows = frame[start + 5 : start + 7]
    end = frame.rindex(b"\xff\xd9")
    deferred = frame[: start + 5] + b"\x00\x00" + frame[start + 7 : end] + b"\xff\xdc\x00\x04" + rows + frame[end:]
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = encapsulate([deferred])
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DecodeError, match=r"^the compressed frame's header gives it 0 rows, leaving its height to a "
                                          r"DNL marker after its first scan"):  # fmt: skip
        read_gray(buf.getvalue())


@pytest.mark.parametrize("syntax", [uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit], ids=lambda s: s.name)
def test_a_jpeg_frame_of_two_frame_headers_is_refused_saying_so(val_jpeg: tuple[bytes, np.ndarray],
                                                                syntax: uid.UID) -> None:  # fmt: skip
    """The size check read the first frame header, a decoder may use the other: with the first of rows and columns
    swapped, the refusal blamed the DICOM header ('Rows and Columns swapped'), and with a second the decoder's
    words said nothing ('Could not determine subsampling level of JPEG image')."""
    frame, gray = val_jpeg
    (start, end), swapped = frame_header(frame), swapped_frame_header(frame)
    like = dicom_bytes(gray, bits=8)
    for twice in (frame[:start] + swapped + frame[start:], frame[:end] + swapped + frame[end:]):
        with pytest.raises(DecodeError, match=rf"\({re.escape(syntax.name)}\): Invalid JPEG file structure: two SOF "
                                              "markers$"):  # fmt: skip
            read_gray(_jpeg_dicom(twice, syntax, like))
