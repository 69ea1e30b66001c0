"""Decoding is bounded in memory (pixels and bytes) and gives the model the same pixels whatever the file format."""

from __future__ import annotations

import io
import select
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.encaps import encapsulate

from pneumoscan.data import pixels
from pneumoscan.data.decode import image_info, read_gray
from pneumoscan.data.pixels import MAX_DECODED_BYTES, DecodeError
from pneumoscan.data.preprocess import PreprocessSpec, preprocess
from pneumoscan.inference.predict import Predictor
from tests.builders import dicom_bytes, framed_dicom, write_png

def test_decoding_a_large_16bit_png_holds_under_twice_its_decoded_bytes(
        tmp_path: Path, peak: Callable[[Path, int], tuple[str, int]]) -> None:
    """A 6,000 x 6,000 16-bit PNG is 72 MB decoded; its float64 copies once took over 1 GB of memory."""
    path = write_png(tmp_path / "deep.png", 6000, 6000, bits=16)
    shape, added = peak(path, MAX_DECODED_BYTES)
    decoded = 6000 * 6000 * 2
    assert decoded < added < 2 * decoded, f"decoding added {added / 2**20:.0f} MiB of peak memory"
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
    pixels, the preprocessed model input and the score are the same (a JPEG's draft decode once scored 0.07 apart).
    Two films, reduced in blocks of several pixels by each spec: a NORMAL one with restart intervals, whose sides are
    whole blocks at 224 px (1776 x 1416, 6 px blocks), and a PNEUMONIA one without, whose last blocks are cut short
    in both directions at every spec (1072 x 712), which Pillow's reduce rounds up."""
    predictor = Predictor(tiny_bundle, backend="torch")
    specs = (predictor.card.spec, PreprocessSpec(224, "squash", 224, 75), PreprocessSpec(192, "pad"))
    normal, pneumonia = (sorted((data_root / "val" / label).glob("*.jpeg")) for label in ("NORMAL", "PNEUMONIA"))
    films = [normal[0], pneumonia[1]]
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


PEAKS = """
import os, sys
from pneumoscan.data import pixels
from pneumoscan.data.decode import read_gray
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
for line in sys.stdin:  # PATH<TAB>LIMIT: read in a child forked for it, with these modules imported once
    path, limit = line.rstrip("\\n").split("\\t")
    if (child := os.fork()) == 0:
        said = 1  # the exit status of a child that could not say its line, whatever it raised
        try:
            try:
                pixels.MAX_DECODED_BYTES = int(limit)
                # the peak resident size starts again from the current one: ru_maxrss keeps the parent's
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                before = status("VmRSS:")
                try:
                    result = str(read_gray(path, target=224).shape)
                except pixels.DecodeError as e:
                    result = repr(str(e))
                print(result, status("VmHWM:") - before, flush=True)
            except BaseException as e:  # any other error: a line saying it, never the loop below run in the child
                print("the child failed:", repr(e), -1, flush=True)
            said = 0
        finally:
            os._exit(said)
    if code := os.waitpid(child, 0)[1]:  # ended without its line: killed (out of memory), a crash
        print(f"the child ended without its line: exit status {os.waitstatus_to_exitcode(code)}", -1, flush=True)
"""
LINE_S = 120  # the longest a film's read may take here: a child that says nothing fails the test, not hangs it


@pytest.fixture(scope="module")
def _peaks() -> Iterator[subprocess.Popen]:
    """A process that reads each film it is given in a fresh child forked from it, which imported the decoders
    once: a process of its own for each film spent most of its CPU on those imports."""
    with subprocess.Popen([sys.executable, "-c", PEAKS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          cwd=Path(__file__).parents[1]) as server:
        yield server
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=60)


@pytest.fixture
def peak(_peaks: subprocess.Popen) -> Callable[[Path, int], tuple[str, int]]:
    def measured(path: Path, limit: int) -> tuple[str, int]:
        """What reading ``path`` in a fresh process with MAX_DECODED_BYTES = ``limit`` gave, and the peak memory
        it added."""
        _peaks.stdin.write(f"{path}\t{limit}\n")  # type: ignore[union-attr]
        _peaks.stdin.flush()  # type: ignore[union-attr]
        # one line a film, each read whole: nothing is left in the pipe's buffer that select would not see
        ready, _, _ = select.select([_peaks.stdout], [], [], LINE_S)
        assert ready, f"no line from the measuring process in {LINE_S} s (exit status {_peaks.poll()})"
        answer = _peaks.stdout.readline()  # type: ignore[union-attr]
        assert answer, f"the measuring process ended (exit status {_peaks.poll()})"
        result, added = answer.rsplit(None, 1)
        assert added != "-1", result
        return result, int(added)

    return measured


def test_a_large_cmyk_jpeg_is_decoded_within_the_byte_limit(tmp_path: Path, peak: Callable[[Path, int], tuple[str, int]]
                                                            ) -> None:
    """A CMYK JPEG decodes at 4 bytes a pixel (libjpeg has no CMYK-to-grey conversion): its scale once assumed 1,
    so a 4,000 x 4,000 one under a 32 MiB limit was decoded whole (64 MB), then copied to RGB (64 MB more)."""
    ramp = np.add.outer(np.arange(4000) // 16, np.arange(4000) // 32).astype(np.uint8)
    path = tmp_path / "cmyk.jpeg"
    Image.fromarray(ramp).convert("CMYK").save(path, quality=90)
    limit = 32 * 2**20
    assert 4000 * 4000 <= limit < 4000 * 4000 * 4  # luma alone would fit at full size; CMYK does not
    shape, added = peak(path, limit)
    assert added < 1.5 * limit, f"decoding added {added / 2**20:.0f} MiB of peak memory (limit {limit / 2**20:.0f} MiB)"
    assert shape == "(250, 250)"  # decoded at 1/2 scale (2,000 px), then 8 x 8 blocks averaged (4,000 px: 17)


def _deflated_dicom(trailing_zeros: int) -> bytes:
    """A small deflated film followed by ``trailing_zeros`` bytes of Data Set Trailing Padding (FFFC,FFFC): a few
    hundred KiB on disk that inflate to as much as asked. Each whole MiB of zeros is the same deflated block (a full
    flush before and after it leaves no history between them), deflated once: the test never holds the zeros, nor
    spends seconds deflating 400 MiB of them."""
    plain = dicom_bytes(np.tile(np.arange(64, dtype=np.uint16) * 64, (64, 1)))
    ds = pydicom.dcmread(io.BytesIO(plain))
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf)
    deflated = buf.getvalue()
    meta_end = 132 + 12 + struct.unpack_from("<I", deflated, 132 + 8)[0]  # after (0002,0000) UL and its group
    dataset = plain[132 + 12 + struct.unpack_from("<I", plain, 132 + 8)[0] :]
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflater.compress(dataset + b"\xfc\xff\xfc\xffOB\0\0" + struct.pack("<I", trailing_zeros))
    head += deflater.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(trailing_zeros, 2**20)
    block = deflater.compress(bytes(2**20)) + deflater.flush(zlib.Z_FULL_FLUSH) if whole else b""
    return deflated[:meta_end] + head + block * whole + deflater.compress(bytes(rest)) + deflater.flush()


def test_a_deflated_dicom_is_inflated_within_the_byte_limit(tmp_path: Path, peak: Callable[[Path, int], tuple[str, int]]
                                                            ) -> None:
    """pydicom inflated the whole dataset before any limit was checked: 400 MiB in memory (twice, with the parsed
    value) from a file of about 400 KiB, and scored the film. The limit is now checked on a measuring inflate that
    keeps nothing."""
    path = tmp_path / "bomb.dcm"
    path.write_bytes(_deflated_dicom(400 * 2**20))
    assert path.stat().st_size < 500 * 2**10
    reason, added = peak(path, MAX_DECODED_BYTES)
    assert "deflated DICOM dataset inflates to over 256 MiB" in reason
    assert added < MAX_DECODED_BYTES / 4, f"reading added {added / 2**20:.0f} MiB of peak memory"
    with pytest.raises(DecodeError, match="inflates to over 256 MiB"):
        image_info(path)


def test_a_deflated_dicom_within_the_limit_reads_and_one_past_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _deflated_dicom(2**20)  # inflates to 1 MiB and a few KiB
    assert read_gray(data).shape == (64, 64) and image_info(data)["width"] == 64
    monkeypatch.setattr(pixels, "MAX_DECODED_BYTES", 2**20)
    for read in (read_gray, image_info):
        with pytest.raises(DecodeError, match="deflated DICOM dataset inflates to over 1 MiB"):
            read(data)


def test_a_truncated_deflated_dicom_is_refused() -> None:
    data = _deflated_dicom(0)
    with pytest.raises(DecodeError, match="deflated DICOM dataset is truncated"):
        read_gray(data[:-200])


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _lossless_dicom(side: int) -> bytes:
    """A JPEG Lossless DICOM of ``side`` x ``side`` whose every sample is a 1-bit Huffman code: the most codes
    the Python walk reads for the fewest bytes."""
    frame = (b"\xff\xd8" + _segment(0xC3, bytes([8]) + struct.pack(">HH", side, side) + bytes([1, 1, 0x11, 0]))
             + _segment(0xC4, bytes([0, 2] + [0] * 15 + [0, 1])) + _segment(0xDA, bytes([1, 1, 0, 1, 0, 0]))
             + bytes(-(-side * side // 8)) + b"\xff\xd9")  # fmt: skip
    return framed_dicom(frame, uid.JPEGLosslessSV1, side)


def test_a_frame_with_more_huffman_codes_than_the_cap_is_refused_before_its_walk(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A 4 MB JPEG Lossless upload of 1-bit codes kept the Python walk busy for 10 s; one over the cap is refused
    from its frame header and its size, one within it is walked (and read: here, a blank film)."""
    data = _lossless_dicom(64)
    with pytest.raises(DecodeError, match="blank image"):
        read_gray(data)
    monkeypatch.setattr(pixels, "MAX_HUFFMAN_CODES", 64 * 64 - 1)
    with pytest.raises(DecodeError, match=r"^JPEG scan too costly to check: up to 4,096 Huffman codes \(64 x 64\), "
                                          r"over the 4,095 that are checked in a frame$"):
        read_gray(data)


def _lossless_dicom_of_scans(side: int, scans: int, first: bytes = b"\0") -> bytes:
    """:func:`_lossless_dicom`'s frame with its one scan coded ``scans`` times: each scan within the cap. Its table
    holds one code, a 0 bit; ``first``: the byte the first scan's data is made of (a 1 bit is a code no table holds)."""
    sos, data = _segment(0xDA, bytes([1, 1, 0, 1, 0, 0])), -(-side * side // 8)
    scans_coded = [sos + (first if i == 0 else b"\0") * data for i in range(scans)]
    frame = (b"\xff\xd8" + _segment(0xC3, bytes([8]) + struct.pack(">HH", side, side) + bytes([1, 1, 0x11, 0]))
             + _segment(0xC4, bytes([0, 1] + [0] * 15 + [0])) + b"".join(scans_coded) + b"\xff\xd9")  # fmt: skip
    return framed_dicom(frame, uid.JPEGLosslessSV1, side)


def test_a_lossless_frame_of_many_scans_is_capped_as_a_whole_before_any_is_walked(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The cap was a scan's: one scan of 18.49 million codes repeated 8 times in an 18.5 MB frame kept the walk
    busy for 38 s. The frame's scans share it, and are counted before any is walked: capped scan by scan, the first
    was still walked (4.4 s a frame, holding the GIL, so a flood of them took the service 3 minutes). A first scan
    of codes no table holds shows which came first: walked, it is corrupt data; counted first, the frame costs too
    much."""
    monkeypatch.setattr(pixels, "MAX_HUFFMAN_CODES", 2 * 64 * 64 - 1)
    with pytest.raises(DecodeError, match="blank image"):  # one scan, walked
        read_gray(_lossless_dicom_of_scans(64, 1))
    with pytest.raises(DecodeError, match="Corrupt JPEG data"):  # within the cap: walked
        read_gray(_lossless_dicom_of_scans(64, 1, first=b"\x55"))
    with pytest.raises(DecodeError, match=r"^JPEG scan too costly to check: up to 8,192 Huffman codes in 2 scans "
                                          r"\(64 x 64\), over the 8,191 that are checked in a frame$"):
        read_gray(_lossless_dicom_of_scans(64, 2, first=b"\x55"))


def test_a_12_bit_progressive_frame_is_capped_as_an_8_bit_one_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """An 8-bit progressive JPEG's scans were capped in the blocks they visit; a 12-bit one in a JPEG Extended DICOM
    frame went to the Huffman walk, which leaves progressive frames to the decoder: 883 scans over a 5,792 x 5,792
    frame, 117 KB, took 12 s of CPU. Its scans are counted from the markers as an 8-bit one's are."""
    side = 64

    def scan(first: int, last: int) -> bytes:  # one component, Ah 0, Al 0; its entropy-coded data never read
        return _segment(0xDA, bytes([1, 1, 0, first, last, 0])) + bytes(side * side // 64)

    frame = (b"\xff\xd8" + _segment(0xC2, bytes([12]) + struct.pack(">HH", side, side) + bytes([1, 1, 0x11, 0]))
             + scan(0, 0) + scan(1, 63) + b"\xff\xd9")  # fmt: skip
    monkeypatch.setattr(pixels, "MAX_PROGRESSIVE_BLOCKS", side * side // 64)  # one scan's visits: the second's over
    with pytest.raises(DecodeError, match=r"a progressive JPEG whose scans visit over 64 of its 8 x 8 blocks"):
        read_gray(framed_dicom(frame, uid.JPEGExtended12Bit, side, 12))


def test_a_jpeg_with_a_harmless_warning_is_walked_within_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain JPEG reaches the same walk when libjpeg warns of a quirk (an unknown JFIF version here)."""
    buf = io.BytesIO()
    Image.fromarray(np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    data[data.index(b"JFIF\0") + 5] = 9  # JFIF version 9.x: a warning, no damage
    assert read_gray(bytes(data)).shape == (64, 64)
    monkeypatch.setattr(pixels, "MAX_HUFFMAN_CODES", 10)
    with pytest.raises(DecodeError, match="JPEG scan too costly to check"):
        read_gray(bytes(data))


def _with_empty_pieces(kind: str, count: int) -> bytes:
    """A small film with ``count`` empty DICOM fragments, JPEG comments or private PNG chunks."""
    film = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(film).save(buf, "PNG" if kind == "PNG" else "JPEG")
    if kind == "dicom":
        ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film, bits=8)))
        ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
        ds.PixelData = encapsulate([buf.getvalue()]) + b"\xfe\xff\x00\xe0\0\0\0\0" * count
        ds["PixelData"].VR = "OB"
        out = io.BytesIO()
        ds.save_as(out)
        return out.getvalue()
    data = buf.getvalue()
    if kind == "JPEG":
        return data[:2] + _segment(0xFE, b"") * count + data[2:]
    chunk = struct.pack(">I4sI", 0, b"prVt", zlib.crc32(b"prVt"))
    return data[:33] + chunk * count + data[33:]


@pytest.mark.parametrize(("kind", "what"), [("dicom", "pixel-data fragments"), ("JPEG", "JPEG marker segments"),
                                            ("PNG", "PNG chunks")])  # fmt: skip
def test_a_file_of_more_segments_than_any_film_is_refused_from_a_count(monkeypatch: pytest.MonkeyPatch, kind: str,
                                                                       what: str) -> None:  # fmt: skip
    """Millions of empty fragments, comments or chunks (19 MB) cost 9-10 s of Python each in pydicom or Pillow:
    refused from a count of the bytes that stops at MAX_SEGMENTS; a film with as many as the limit is read."""
    monkeypatch.setattr(pixels, "MAX_SEGMENTS", 50)
    assert read_gray(_with_empty_pieces(kind, 40)).shape == (64, 64)
    with pytest.raises(DecodeError, match=f"^malformed file: at least 51 {what} \\(limit 50\\), far more than any "
                                          "film holds$"):
        read_gray(_with_empty_pieces(kind, 60))


def test_a_png_of_more_than_one_icc_profile_is_refused_before_pillow_inflates_them() -> None:
    """Pillow inflates every iCCP chunk, up to 1 MiB each, with no total cap (its text chunks stop at 64 MiB):
    19,000 of them in a 19 MB upload took 93 s. The PNG standard allows one; a film with one is read."""
    film = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(film).save(buf, "PNG")
    data = buf.getvalue()
    body = b"icc\0\0" + zlib.compress(b"\0" * (2**20 - 64), 9)  # each inflates to just under Pillow's 1 MiB cap
    profile = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    np.testing.assert_array_equal(read_gray(data[:33] + profile + data[33:]), film)
    with pytest.raises(DecodeError, match=r"^malformed PNG: 3 ICC profiles \(iCCP chunks\), where a PNG holds at "
                                          "most one"):
        read_gray(data[:33] + profile * 3 + data[33:])


def _with_empty_items(items: int, syntax: uid.UID) -> bytes:
    """A small film whose header holds a private sequence of ``items`` empty items, of undefined length (which
    pydicom reads as a sequence in implicit VR too), in ``syntax``."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.add.outer(np.arange(64), np.arange(64)).astype(np.uint16) * 16)))
    block = ds.private_block(0x0011, "pneumoscan test", create=True)
    block.add_new(0x01, "SQ", [pydicom.Dataset() for _ in range(items)])
    block[0x01].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=syntax == uid.ImplicitVRLittleEndian, little_endian=True)
    return buf.getvalue()


@pytest.mark.parametrize("syntax", [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian,
                                    uid.DeflatedExplicitVRLittleEndian], ids=["explicit", "implicit", "deflated"])
def test_a_header_of_more_elements_and_items_than_any_film_is_refused_from_a_count(
    monkeypatch: pytest.MonkeyPatch, syntax: uid.UID
) -> None:
    """pydicom builds an object for each element and sequence item as it reads: 200 MB of empty items inflated from
    a 309 KB file took over 3.3 GB, 2.6 million empty elements in 20 MB 0.85 GB and 10 s. They are counted from the
    bytes first, items inside sequences too, and refused past MAX_SEGMENTS; a film within it is read."""
    monkeypatch.setattr(pixels, "MAX_SEGMENTS", 60)
    assert read_gray(_with_empty_items(20, syntax)).shape == (64, 64)
    with pytest.raises(DecodeError, match=r"^malformed file: at least 61 DICOM data elements and sequence items "
                                          r"\(limit 60\)"):
        read_gray(_with_empty_items(80, syntax))


def _with_pieces_after(where: str, count: int) -> bytes:
    """A small film holding ``count`` empty private elements after an Icon Image Sequence item's pixel data (before
    the film's own) or after the film's pixel data, or ``count`` empty fragments in the icon's encapsulated pixel
    data."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.add.outer(np.arange(64), np.arange(64)).astype(np.uint16) * 16)))
    if where != "film":
        icon = pydicom.Dataset()
        icon.Rows = icon.Columns = 2
        icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
        icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
        empty_fragments = b"\xfe\xff\x00\xe0\0\0\0\0" * count
        icon.PixelData = encapsulate([bytes(4)]) + empty_fragments if where == "fragments" else bytes(4)
        icon["PixelData"].VR = "OB"
        icon["PixelData"].is_undefined_length = where == "fragments"
        ds.IconImageSequence = [icon]
    if where != "fragments":  # group 0099 follows the icon's (0088,0200); 7FE1 the film's (7FE0,0010)
        block = ds.private_block(0x0099 if where == "icon" else 0x7FE1, "pneumoscan test", create=True)
        for element in range(count):
            block.add_new(element, "LO", "")
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.mark.parametrize(("where", "what"), [("icon", "DICOM data elements and sequence items"),
                                             ("film", "DICOM data elements and sequence items"),
                                             ("fragments", "pixel-data fragments")])  # fmt: skip
def test_what_follows_a_pixel_data_element_is_counted(monkeypatch: pytest.MonkeyPatch, where: str, what: str) -> None:
    """The count stopped at the first Pixel Data it met, an Icon Image Sequence item's among them: 2 million empty
    elements after an icon's pixel data, or after the film's own, took pydicom 8 s, uncounted, and the fragments of
    an icon's encapsulated pixel data were never counted. Every element and fragment pydicom reads is counted."""
    monkeypatch.setattr(pixels, "MAX_SEGMENTS", 60)
    assert read_gray(_with_pieces_after(where, 10)).shape == (64, 64)
    with pytest.raises(DecodeError, match=rf"^malformed file: at least 61 {what} \(limit 60\)"):
        read_gray(_with_pieces_after(where, 80))


def _with_headers_read_otherwise(trick: str, count: int) -> bytes:
    """A small film whose header holds, before its pixel data, an element the count read otherwise than pydicom
    does (``trick``), then ``count`` empty private elements: in explicit VR, an element whose VR bytes are no letters
    (pydicom reads it as implicit, a 4-byte length), its value a fake header of a huge length; in implicit VR, a
    private element of undefined length that is no sequence (pydicom looks ahead, finds no item, and reads the value
    to the sequence delimiter), its value such a fake header too."""
    film = dicom_bytes(np.add.outer(np.arange(64), np.arange(64)).astype(np.uint16) * 16)
    implicit = trick == "implicit undefined length"
    if implicit:
        ds = pydicom.dcmread(io.BytesIO(film))
        ds.file_meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, implicit_vr=True, little_endian=True)
        film = buf.getvalue()
    fake = struct.pack("<HH2s2xL", 0x0009, 0x1011, b"OB", 0x7FFFFFF0) + bytes(4)
    if implicit:
        element = struct.pack("<HHL", 0x0009, 0x1010, 0xFFFFFFFF) + fake + b"\xfe\xff\xdd\xe0" + bytes(4)
        empty = "<HHL"
    else:
        element = struct.pack("<HHL", 0x0009, 0x1010, len(fake)) + fake  # its VR bytes: 0x10 0x00
        empty = "<HH2sH"
    empties = b"".join(struct.pack(empty, 0x0009, 0x1100 + i, *((b"LO", 0) if not implicit else (0,)))
                       for i in range(count))
    at = film.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010)
    return film[:at] + element + empties + film[at:]


@pytest.mark.parametrize("trick", ["explicit VR of no letters", "implicit undefined length"])
def test_elements_behind_a_header_pydicom_reads_otherwise_are_counted(monkeypatch: pytest.MonkeyPatch,
                                                                      trick: str) -> None:
    """The count read each header by its own rules where pydicom's differ: a fake 4-byte length in the value sent it
    to the file's end, and 2 million empty elements after it took pydicom 6-8 s, uncounted."""
    monkeypatch.setattr(pixels, "MAX_SEGMENTS", 60)
    assert read_gray(_with_headers_read_otherwise(trick, 10)).shape == (64, 64)
    with pytest.raises(DecodeError, match=r"^malformed file: at least 61 DICOM data elements and sequence items"):
        read_gray(_with_headers_read_otherwise(trick, 80))


def test_zero_bytes_read_as_elements_are_refused_as_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom reads zero bytes after the pixel data 8 at a time as elements (16 MB took 5 s); a few are read, more
    are refused as padding, not as "far more elements than any film holds"."""
    film = dicom_bytes(np.add.outer(np.arange(64), np.arange(64)).astype(np.uint16) * 16)
    monkeypatch.setattr(pixels, "MAX_SEGMENTS", 60)
    assert read_gray(film + bytes(8 * 20)).shape == (64, 64)
    with pytest.raises(DecodeError, match=r"^malformed file: at least [\d,]+ zero bytes among its data elements"):
        read_gray(film + bytes(8 * 80))


def _film_with_empties(count: int, where: str) -> bytes:
    """A small film with ``count`` empty elements (8 bytes each) more: in its File Meta (group 0002), or, as a big
    endian file, in its data set; or its data set written explicit under a File Meta that says implicit, behind a
    first element that reads, as implicit, as one 16,975 bytes long (its VR bytes, "OB\\0\\0", as its length)."""
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint16) * 16
    film = dicom_bytes(ramp)
    if where == "file meta":
        at = film.index(b"\x08\x00", 132)  # the data set's first element, (0008,xxxx)
        return film[:at] + struct.pack("<HH2sH", 0x0002, 0x1000, b"LO", 0) * count + film[at:]
    ds = pydicom.dcmread(io.BytesIO(film))
    big = where == "big endian"
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRBigEndian if big else uid.ImplicitVRLittleEndian
    ds.PixelData = ramp.astype(">u2" if big else "<u2").tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=not big, force_encoding=True)
    film = buf.getvalue()
    if big:
        at = film.index(b"\x7f\xe0\x00\x10")  # (7FE0,0010)
        return film[:at] + struct.pack(">HH2sH", 0x0009, 0x1000, b"LO", 0) * count + film[at:]
    at = film.index(b"\x08\x00", 132)
    hidden = struct.pack("<HH2s2xL", 0x0009, 0x0010, b"OB", 0) + struct.pack("<HH2sH", 0x0009, 0x1000, b"LO", 0) * count
    filler = struct.pack("<HH2s2xL", 0x0009, 0x1001, b"OB", 8 + 0x424F - len(hidden) - 12)
    return film[:at] + hidden + filler + bytes(8 + 0x424F - len(hidden) - 12) + film[at:]


@pytest.mark.parametrize("where", ["file meta", "big endian", "explicit under an implicit file meta"])
def test_elements_pydicom_reads_where_the_count_did_not_are_bounded(monkeypatch: pytest.MonkeyPatch,
                                                                    where: str) -> None:
    """pydicom builds every element it reads in Python, and the count of a data set's elements missed three kinds:
    the File Meta's (2 million empty ones in a 16 MB upload took 43 s), a big endian data set's (20 s), and a data
    set written in the other VR than its File Meta says, which pydicom reads as written and the count read as said
    (a first element read as 16,975 bytes long hid those after it). The File Meta is read from its first 64 KiB;
    the others are counted in the encoding pydicom reads them in."""
    monkeypatch.setattr(pixels, "MAX_SEGMENTS", 60)
    assert read_gray(_film_with_empties(20, where)).shape == (64, 64)
    refusal = (r"^malformed DICOM file: its File Meta Information runs past 64 KiB" if where == "file meta" else
               r"^malformed file: at least 61 DICOM data elements and sequence items \(limit 60\)")
    with pytest.raises(DecodeError, match=refusal):
        read_gray(_film_with_empties(9000 if where == "file meta" else 80, where))


# What else Pillow's JPEG parser reads a step at a time before the first scan: a marker without a segment (RSTn,
# SOI), an escaped 0xFF00, a segment whose length is under 2 (none read); and the piece a JPEG holds without error
PARSER_STEPS = {"RST0 markers": (b"\xff\xd0", True), "SOI markers": (b"\xff\xd8", False),
                "escaped 0xFF00": (b"\xff\x00", False), "APP0 segments of length 0": (b"\xff\xe0\x00\x00", True)}


@pytest.mark.parametrize("kind", list(PARSER_STEPS))
def test_a_jpeg_header_of_more_parser_steps_than_any_film_is_refused_from_a_count(monkeypatch: pytest.MonkeyPatch,
                                                                                 kind: str) -> None:  # fmt: skip
    """The count of segments read each of these as a segment's length and skipped up to 64 KB ahead, or stopped at
    the first: 2 million RST0 markers (4 MB) kept Pillow's parser busy 0.75 s, a million empty APP0 segments 0.8 s,
    and a larger upload longer, all uncounted."""
    piece, readable = PARSER_STEPS[kind]
    film = _with_empty_pieces("JPEG", 0)
    monkeypatch.setattr(pixels, "MAX_SEGMENTS", 50)
    if readable:  # a film with as many as the limit allows is read, as it is without them
        np.testing.assert_array_equal(read_gray(film[:2] + piece * 40 + film[2:]), read_gray(film))
    with pytest.raises(DecodeError, match=r"^malformed file: at least 51 JPEG marker segments \(limit 50\)"):
        read_gray(film[:2] + piece * 60 + film[2:])


def test_a_dicom_jpeg_frame_of_more_marker_segments_than_any_film_is_refused_from_a_count(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Walked in Python to find its frame header and check its scans, 4 MB of empty comments in one frame took 2.7 s
    (any number went; the pixel data's fragments were counted, not the segments inside one)."""
    def dicom(comments: int) -> bytes:
        return framed_dicom(_with_empty_pieces("JPEG", comments), uid.JPEGBaseline8Bit, 64)

    monkeypatch.setattr(pixels, "MAX_SEGMENTS", 50)
    assert read_gray(dicom(30)).shape == (64, 64)  # with its own dozen or so (APP0, DQT, SOF, DHT, SOS)
    with pytest.raises(DecodeError, match=r"^malformed file: at least 51 JPEG marker segments \(limit 50\)"):
        read_gray(dicom(60))
