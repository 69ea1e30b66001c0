"""DICOM films the reader once read wrong, refused unclearly, or crashed on (reviews21/dicom.md): each is now read
right, the right way round, or refused with a reason that says what is wrong with the film. Small films, real
codecs (CharLS, pylibjpeg, pylibjpeg-rle), every file built here."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate, generate_frames, get_frame
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels import apply_color_lut
from pydicom.pixels.processing import convert_color_space
from pydicom.tag import Tag
from PIL import Image

from pneumoscan.data import pixels
from pneumoscan.data.decode import image_info, read_gray
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.readers import jpeg as jpeg_reader
from pneumoscan.data.readers.dicom import read_dataset
from pneumoscan.data.scope import describe, in_scope
from tests.builders import JPEG_DAMAGE, dicom_bytes


def phantom(rows: int = 48, cols: int = 48, lo: int = 800, hi: int = 4000) -> np.ndarray:
    """A chest-like film in MONOCHROME2 sense: dark lungs, a brighter body, the brightest spine, plus noise."""
    y, x = np.mgrid[0:rows, 0:cols]
    film = np.full((rows, cols), lo + 0.75 * (hi - lo))
    for centre in (0.3, 0.7):
        film[((x - cols * centre) / (cols * 0.15)) ** 2 + ((y - rows * 0.5) / (rows * 0.3)) ** 2 < 1] = lo
    film[:, int(cols * 0.47) : int(cols * 0.53)] = hi
    noise = np.random.default_rng(rows * cols).integers(0, 40, (rows, cols))
    return np.clip(film + noise, lo, hi).astype(np.int64)


def lungs_darker_than_spine(gray: np.ndarray) -> bool:
    rows, cols = gray.shape
    return int(gray[rows // 2, int(cols * 0.3)]) + 100 < int(gray[rows // 2, cols // 2])


def rewritten(data: bytes, **changes: object) -> bytes:
    """The DICOM file ``data`` with elements set (None deletes one), saved as it was read."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def encapsulated(like: bytes, frames: list[bytes], syntax: uid.UID, offsets: bool = False) -> bytes:
    """The DICOM file ``like`` with its pixels replaced by these compressed frames, in ``syntax``."""
    ds = pydicom.dcmread(io.BytesIO(like))
    ds.PixelData = encapsulate(frames, has_bot=offsets)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def compressed_frame(pixels: np.ndarray, syntax: uid.UID) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(pixels)))
    ds.compress(syntax)
    return get_frame(ds.PixelData, 0, number_of_frames=1)


# ------------------------------------------------------------------ 1. JPEG-LS: CharLS's refusal stands


@pytest.mark.parametrize("damage", ["cut short", *JPEG_DAMAGE])
def test_a_jpeg_ls_frame_charls_refuses_is_refused_not_decoded_by_libjpeg(damage: str) -> None:
    """libjpeg decoded these damaged frames without a word, a third of the rows garbage."""
    film = phantom(64, 64)
    frame = compressed_frame(film, uid.JPEGLSLossless)
    damaged = frame[: len(frame) // 2] if damage == "cut short" else JPEG_DAMAGE[damage](frame)
    data = encapsulated(dicom_bytes(film), [damaged], uid.JPEGLSLossless)
    with pytest.raises(DecodeError, match=r"\(JPEG-LS Lossless Image Compression\): (.*pyjpegls: .*)?Invalid JPEG-LS"):
        read_gray(data)
    np.testing.assert_array_equal(read_gray(encapsulated(dicom_bytes(film), [frame], uid.JPEGLSLossless)),
                                  read_gray(dicom_bytes(film)))  # fmt: skip


# ------------------------------------------------------------------ 2. JPEG Lossless (process 14): walked too

_COUNTS = bytes([0, 3] + [1] * 14)  # code lengths: three of 2 bits, then one of each 3..16 bits: sizes 0-16


def lossless_jpeg(image: np.ndarray, bits: int, restart_rows: int = 0) -> bytes:
    """A JPEG Lossless codestream (process 14, selection value 1) of a one-component image: no installed plugin
    encodes one. Each sample is predicted from its left neighbour (the one above in the first column, 2**(bits-1)
    first in each restart interval), and the difference coded as its size (0-16) and its bits (T.81 H.1)."""
    rows, cols = image.shape
    codes, code, size = {}, 0, 0
    for length, count in enumerate(_COUNTS, 1):
        for _ in range(count):
            codes[size], code, size = format(code, f"0{length}b"), code + 1, size + 1
        code <<= 1
    img = image.astype(np.int64)
    predicted = np.empty_like(img)
    predicted[:, 1:], predicted[1:, 0] = img[:, :-1], img[:-1, 0]
    predicted[:: restart_rows or rows, 0] = 1 << (bits - 1)
    diff = (img - predicted) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff).ravel().tolist()
    step, intervals = (restart_rows or rows) * cols, []
    for start in range(0, len(diff), step):
        out = []
        for d in diff[start : start + step]:
            n = 16 if d == 32768 else abs(d).bit_length()
            out.append(codes[n] + (format(d if d > 0 else d + (1 << n) - 1, f"0{n}b") if 0 < n < 16 else ""))
        text = "".join(out)
        text += "1" * (-len(text) % 8)
        intervals.append(int(text, 2).to_bytes(len(text) // 8, "big").replace(b"\xff", b"\xff\x00"))
    entropy = b"".join(piece + (bytes([0xFF, 0xD0 + i % 8]) if i < len(intervals) - 1 else b"")
                       for i, piece in enumerate(intervals))  # fmt: skip
    sof = b"\xff\xc3\x00\x0b" + bytes([bits]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + b"\x01\x01\x11\x00"
    dht = b"\xff\xc4" + (3 + 16 + 17).to_bytes(2, "big") + b"\x00" + _COUNTS + bytes(range(17))
    dri = b"\xff\xdd\x00\x04" + (restart_rows * cols).to_bytes(2, "big") if restart_rows else b""
    return b"\xff\xd8" + sof + dht + dri + b"\xff\xda\x00\x08\x01\x01\x00\x01\x00\x00" + entropy + b"\xff\xd9"


LOSSLESS_CASES = {"12-bit": (12, 0), "12-bit, restart every 8 rows": (12, 8), "16-bit": (16, 0)}


def lossless_film(bits: int) -> np.ndarray:
    film = phantom(40, 36, 0, 2**bits - 1)
    film[0, :4] = [0, 32768, 0, 65535] if bits == 16 else film[0, :4]  # differences of size 16 (no extra bits)
    return film


@pytest.mark.parametrize("case", list(LOSSLESS_CASES))
def test_an_intact_jpeg_lossless_frame_reads_exactly(case: str) -> None:
    bits, restart = LOSSLESS_CASES[case]
    film = lossless_film(bits)
    plain = dicom_bytes(film, bits=bits)
    for syntax in (uid.JPEGLossless, uid.JPEGLosslessSV1):
        frame = lossless_jpeg(film, bits, restart)
        np.testing.assert_array_equal(read_gray(encapsulated(plain, [frame], syntax)), read_gray(plain))


LOSSLESS_DAMAGE = {
    **JPEG_DAMAGE,
    "cut short": lambda frame: frame[: len(frame) // 2],
    "restart marker out of order": lambda frame: frame.replace(b"\xff\xd1", b"\xff\xd2", 1),
}


@pytest.mark.parametrize("case, damage", [(c, d) for c in LOSSLESS_CASES for d in LOSSLESS_DAMAGE
                                          if LOSSLESS_CASES[c][1] or "restart" not in d])  # fmt: skip
def test_a_damaged_jpeg_lossless_frame_is_refused(case: str, damage: str) -> None:
    """pylibjpeg decoded each of these without an error, the damaged rows garbage."""
    bits, restart = LOSSLESS_CASES[case]
    film = lossless_film(bits)
    frame = LOSSLESS_DAMAGE[damage](lossless_jpeg(film, bits, restart))
    with pytest.raises(DecodeError, match=r"\(JPEG Lossless, .*\): (Corrupt JPEG data|Premature end)"):
        read_gray(encapsulated(dicom_bytes(film, bits=bits), [frame], uid.JPEGLosslessSV1))


def _walk_code_by_code(data: bytes, steps: list[int], count: int) -> int | None:
    """The reference for the lossless walk: ``count`` codes read one after another from ``data``, then zeros; None
    at a code no table holds."""
    padded, at = data + bytes(4), 0
    for _ in range(count):
        step = steps[(int.from_bytes(padded[at >> 3 : (at >> 3) + 3], "big") >> (8 - (at & 7))) & 0xFFFF]
        if not step:
            return None
        at += step
    return at


@pytest.mark.parametrize("segment, lead_in", [(64, 16), (256, 0), (32, 32)])
def test_the_lossless_walk_of_chains_ends_where_a_walk_code_by_code_does(monkeypatch: pytest.MonkeyPatch,
                                                                         segment: int, lead_in: int) -> None:
    """The walk of a 4,300 x 4,300 lossless film took 4.4 s code by code; its chains, walked all at once from
    guessed starts, must end every interval where the walk code by code does: intact, cut, overwritten with noise or
    with codes no table holds, of no data, or of more than the codes read. Segments of a few dozen bits here, so an
    interval of this small film is many chains, some out of step."""
    monkeypatch.setattr(jpeg_reader, "_SEGMENT_BITS", segment)
    monkeypatch.setattr(jpeg_reader, "_LEAD_IN", lead_in)
    film = lossless_film(12)
    frame = lossless_jpeg(film, 12, restart_rows=8)
    scan = next(jpeg_reader._sequential_scans(frame))
    pieces = jpeg_reader._restart_intervals(frame[scan.start : scan.end], scan.restart, scan.mcus)
    intervals = [jpeg_reader._unstuffed(piece) for piece in pieces]
    noise = np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes()
    whole = intervals[0]
    intervals += [whole[: len(whole) // 2], whole[:100] + noise[:50] + whole[150:], b"\xff" * 40, b"", noise,
                  whole + noise]  # fmt: skip
    steps = scan.units[0][0]
    for count in (8 * 36, 1, 5000):
        counts = [count] * len(intervals)
        expected = [_walk_code_by_code(data, steps, count) for data in intervals]
        assert jpeg_reader._walk_samples(intervals, steps, counts) == expected
    assert None in expected and any(at is not None and at > 8 * len(d) for at, d in zip(expected, intervals))


def test_a_cut_colour_jpeg_lossless_frame_is_refused() -> None:
    """pydicom's own JPEG Lossless SV1 file (RGB, three interleaved components), cut at half and 'repaired' with
    an EOI: 50 of its 100 rows were read wrong."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    jpeg_reader.check_frame(frame)
    ds.PixelData = encapsulate([frame[: len(frame) // 2] + b"\xff\xd9"])
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DecodeError, match="Corrupt JPEG data: premature end of data segment"):
        read_gray(buf.getvalue())


# ------------------------------------------------------------------ 3. pixel data that the header does not describe

SIZE_MISMATCH = (r"pixel data holds {held} bytes; the header's {rows} rows x {cols} columns x 1 sample\(s\) x 16 bits "
                 r"need {need}")


def test_pixel_data_with_more_frames_than_the_header_is_refused() -> None:
    """Three frames' worth of data, Number of Frames absent: read as a 3 x 32 'film' of garbage."""
    film = phantom(32, 32)
    data = rewritten(dicom_bytes(film), PixelData=np.concatenate([film] * 3).astype(np.uint16).tobytes())
    with pytest.raises(DecodeError, match=SIZE_MISMATCH.format(held="6,144", rows=32, cols=32, need="2,048")):
        read_gray(data)


@pytest.mark.parametrize("wrong", ["Rows", "Columns"])
def test_rows_or_columns_smaller_than_the_pixel_data_are_refused(wrong: str) -> None:
    """Columns halved read as a 2 x 64 image; Rows halved was refused as 'blank image', the wrong reason."""
    rows, cols = (32, 64) if wrong == "Rows" else (64, 32)
    data = rewritten(dicom_bytes(phantom(64, 64)), **{wrong: 32})
    with pytest.raises(DecodeError, match=SIZE_MISMATCH.format(held="8,192", rows=rows, cols=cols, need="4,096")):
        read_gray(data)


def test_columns_one_short_in_a_film_wider_than_tall_is_refused() -> None:
    """The excess is a column's bytes, less than a row when the film is wider than tall: it was taken for padding
    and every row read one pixel further along than the one above (a sheared film, scored)."""
    data = rewritten(dicom_bytes(phantom(32, 64)), Columns=63)
    with pytest.raises(DecodeError, match=SIZE_MISMATCH.format(held="4,096", rows=32, cols=63, need="4,032")):
        read_gray(data)


@pytest.mark.parametrize("syntax", [uid.ExplicitVRLittleEndian, uid.RLELossless], ids=lambda s: s.name)
def test_rows_and_columns_swapped_over_pixel_data_that_states_no_size_are_refused(data_root: Path,
                                                                                 syntax: uid.UID) -> None:
    """Uncompressed or RLE pixel data holds as many bytes either way: a 1776 x 1416 film with Rows and Columns
    swapped was read as diagonal stripes (its rows' neighbouring pixels 20 times as far apart) and scored."""
    with Image.open(sorted((data_root / "val" / "NORMAL").glob("*.jpeg"))[0]) as im:
        film = np.asarray(im.convert("L"), dtype=np.int64) * 16  # a full-size film, not square, as 12-bit values
    rows, cols = film.shape
    assert rows != cols
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film)))
    if syntax != uid.ExplicitVRLittleEndian:
        ds.compress(syntax)
    buf = io.BytesIO()
    ds.save_as(buf)
    assert read_gray(buf.getvalue()).shape == (rows, cols)  # read as stated: the film
    with pytest.raises(DecodeError, match=rf"the pixel data reads as a picture {cols} pixels wide and {rows} high, "
                                          rf"not {rows} x {cols} as the header says \(its neighbouring pixels differ "
                                          r"[\d.]+ times as much read as stated\).*\(Rows and Columns swapped\)"):
        read_gray(rewritten(buf.getvalue(), Rows=cols, Columns=rows))


@pytest.mark.parametrize("syntax", [uid.JPEGLSLossless, uid.JPEG2000Lossless], ids=["JPEG-LS", "JPEG 2000"])
def test_a_compressed_frame_of_another_size_than_the_header_is_refused(syntax: uid.UID) -> None:
    """Rows and Columns swapped hold as many pixels: pydicom reshaped the decoded frame to the header's size, a
    film of diagonal stripes that scored pneumonia 0.97 (the film 0.01). Another size: numpy's 'could not
    broadcast'. The codestream says its own size, so both are refused by it."""
    film = phantom(48, 64)
    frame = compressed_frame(film, syntax)
    np.testing.assert_array_equal(read_gray(encapsulated(dicom_bytes(film), [frame], syntax)),
                                  read_gray(dicom_bytes(film)))  # the frame as it is: read
    for rows, cols in ((64, 48), (48, 63)):
        data = encapsulated(rewritten(dicom_bytes(film), Rows=rows, Columns=cols), [frame], syntax)
        with pytest.raises(DecodeError, match=rf"the compressed frame is 64 x 48 pixels with 1 component\(s\); "
                                              rf"the header says {cols} x {rows} with 1 sample\(s\)"):
            read_gray(data)


def _box(kind: bytes, contents: bytes) -> bytes:
    return (8 + len(contents)).to_bytes(4, "big") + kind + contents


def test_a_jp2_frame_is_checked_by_the_codestream_it_decodes() -> None:
    """A JP2 file around the codestream, with a copy of a SOC and SIZ of the header's size in a box before its
    jp2c: the check read that copy, and OpenJPEG decoded the codestream in jp2c, 4096 x 4096 here (12000 x 12000 from
    a 52 KB upload took 0.9 GB before pydicom's reshape failed). The size checked is jp2c's; a JP2 file whose jp2c
    does not start with them cannot be checked, and is refused."""
    import openjpeg

    film = phantom(48, 64)
    codestream = bytearray(compressed_frame(film, uid.JPEG2000Lossless))
    copy = bytes(codestream[: 4 + int.from_bytes(codestream[4:6], "big")])  # SOC, then SIZ: 48 x 64
    codestream[8:16] = (4096).to_bytes(4, "big") * 2  # Xsiz, Ysiz: 4096 x 4096, tiled as before
    jp2 = openjpeg.encode(film.astype(np.uint16), bits_stored=12, codec_format=1)
    signature, rest = jp2[:12], jp2[12:]
    header = rest[: rest.index(b"jp2c") - 4]  # ftyp and jp2h, as the encoder wrote them
    decoy = signature + header + _box(b"xml ", copy) + _box(b"jp2c", bytes(codestream))
    with pytest.raises(DecodeError, match=r"the compressed frame is 4096 x 4096 pixels with 1 component\(s\); the "
                                          r"header says 64 x 48"):
        read_gray(encapsulated(dicom_bytes(film), [decoy], uid.JPEG2000Lossless))
    no_siz = signature + header + _box(b"jp2c", b"\x00" * 64)
    with pytest.raises(DecodeError, match="the JPEG 2000 frame's codestream does not start with its SOC and SIZ"):
        read_gray(encapsulated(dicom_bytes(film), [no_siz], uid.JPEG2000Lossless))
    np.testing.assert_array_equal(read_gray(encapsulated(dicom_bytes(film), [jp2], uid.JPEG2000Lossless)),
                                  read_gray(dicom_bytes(film)))  # a sound JP2 file around its frame: read


def test_a_jpeg_2000_frame_of_more_code_blocks_or_tiles_than_any_film_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenJPEG builds a structure for every tile, code block and precinct before it decodes: a 700-byte frame of
    4 x 4 code blocks over 5,792 x 5,792 took 1.1 GB, one of 23 x 23 tiles 0.8 GB. Counted from the markers (here
    against limits of this small film's scale), the encoder's own frame is read, the others refused."""
    monkeypatch.setattr(pixels, "MAX_J2K_BLOCKS", 100)
    monkeypatch.setattr(pixels, "MAX_J2K_TILES", 100)
    film = phantom(48, 64)
    frame = compressed_frame(film, uid.JPEG2000Lossless)
    plain = dicom_bytes(film)
    np.testing.assert_array_equal(read_gray(encapsulated(plain, [frame], uid.JPEG2000Lossless)), read_gray(plain))
    cod = frame.index(b"\xff\x52")  # COD: marker, Lcod, Scod, SGcod (4 bytes), then levels, xcb, ycb, ...
    tiny_blocks = frame[: cod + 10] + b"\x00\x00" + frame[cod + 12 :]  # code blocks of 4 x 4
    tiny_tiles = frame[:24] + (4).to_bytes(4, "big") * 2 + frame[32:]  # XTsiz, YTsiz: tiles of 4 x 4
    # the same COD of 4 x 4 code blocks in the tile-part's header only (after its SOT, its Psot grown to hold it)
    sot, cod_end = frame.index(b"\xff\x90"), cod + 2 + int.from_bytes(frame[cod + 2 : cod + 4], "big")
    tile_cod = tiny_blocks[cod:cod_end]
    psot = int.from_bytes(frame[sot + 6 : sot + 10], "big") + len(tile_cod)
    in_tile = frame[: sot + 6] + psot.to_bytes(4, "big") + frame[sot + 10 : sot + 12] + tile_cod + frame[sot + 12 :]
    for bad, said in ((tiny_blocks, r"coding makes about [\d,]+ code blocks \(limit 100\)"),
                      (in_tile, r"coding makes about [\d,]+ code blocks \(limit 100\)"),
                      (tiny_tiles, r"is cut into 192 tiles \(limit 100\)")):
        with pytest.raises(DecodeError, match=rf"^the JPEG 2000 frame('s)? {said}"):
            read_gray(encapsulated(plain, [bad], uid.JPEG2000Lossless))


def test_values_above_high_bit_are_refused_unless_an_overlay_claims_them() -> None:
    """14-bit values under a 12-bit header: pydicom masks the top bits, and the film wrapped into bands (0.09
    correlation with itself) and was scored. Bits an overlay plane occupies are masked off, as they should be."""
    film = phantom(48, 48, lo=3000, hi=16000)
    with pytest.raises(DecodeError, match=r"pixel values use bits above High Bit 11 \(Bits Stored 12, largest "
                                          r"value \d+\) and no overlay claims them"):
        read_gray(dicom_bytes(film))
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes((film & 0xFFF) | 0x1000)))  # an overlay plane in bit 12
    ds.add_new(0x60000102, "US", 12)  # Overlay Bit Position
    buf = io.BytesIO()
    ds.save_as(buf)
    np.testing.assert_array_equal(read_gray(buf.getvalue()), read_gray(dicom_bytes(film & 0xFFF)))


@pytest.mark.parametrize("position, own_data", [(0, True), (15, False)])
def test_an_overlay_claims_only_its_own_bits(position: int, own_data: bool) -> None:
    """Any overlay element turned the check of the bits above High Bit off: an overlay with its own Overlay Data
    (the standard's only form since 2004, Bit Position 0), or one embedded in bit 15, let 14-bit values under a
    12-bit header be masked into bands (0.08 correlation with the film) and scored."""
    film = phantom(48, 48, lo=3000, hi=16000)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film)))
    ds.add_new(0x60000100, "US", 1 if own_data else 16)  # Overlay Bits Allocated
    ds.add_new(0x60000102, "US", position)  # Overlay Bit Position
    if own_data:
        ds.add_new(0x60003000, "OW", bytes(48 * 48 // 8))
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DecodeError, match=r"pixel values use bits above High Bit 11 \(Bits Stored 12"):
        read_gray(buf.getvalue())


def test_an_odd_length_padded_to_even_is_no_mismatch() -> None:
    film = np.arange(15, dtype=np.uint8).reshape(3, 5) * 17
    np.testing.assert_array_equal(read_gray(dicom_bytes(film, bits=8)), film)


def test_palette_colour_films_are_read_through_their_palette() -> None:
    """pydicom's PALETTE COLOR example: one sample a pixel, three channels after the palette (it was refused)."""
    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    expected = apply_color_lut(ds.pixel_array, ds) @ np.array([0.299, 0.587, 0.114])
    gray = read_gray(get_testdata_file("examples_palette.dcm"))
    assert gray.shape == expected.shape and np.corrcoef(gray.ravel(), expected.ravel())[0, 1] > 0.999


def test_an_rle_frame_whose_header_does_not_describe_its_segments_is_refused() -> None:
    """pylibjpeg-rle refuses such a header, and pydicom fell back on its own decoder, which expands a segment whole
    before checking its length: 19 MB of runs after a first offset of 66 took 1.1 GB, and the film was read."""
    film = phantom(48, 64, 0, 255).astype(np.uint8)
    plain = dicom_bytes(film, bits=8)
    ds = pydicom.dcmread(io.BytesIO(plain))
    ds.compress(uid.RLELossless)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)  # one segment: one 8-bit sample
    np.testing.assert_array_equal(read_gray(encapsulated(plain, [frame], uid.RLELossless)), read_gray(plain))
    shifted = frame[:4] + (66).to_bytes(4, "little") + frame[8:64] + b"\x00\x00" + frame[64:]
    two = (2).to_bytes(4, "little") + frame[4:8] + (len(frame) - 1).to_bytes(4, "little") + frame[12:]
    for bad, said in ((shifted, r"1 segment\(s\) at offsets 66"), (two, r"2 segment\(s\) at offsets 64, \d+")):
        with pytest.raises(DecodeError, match=rf"the RLE frame's header does not describe its segments \({said} in "):
            read_gray(encapsulated(plain, [bad], uid.RLELossless))


def test_a_palette_colour_film_is_counted_at_its_three_samples_a_pixel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its palette makes each pixel three colour samples before the float64 arithmetic: counted as one, a 2.9 MB
    palette film of 5,792 x 5,792 passed the byte limit and took 1.3 GB. Here the limit admits one sample a pixel
    of pydicom's example, not three."""
    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    monkeypatch.setattr(pixels, "MAX_DECODED_BYTES", ds.Rows * ds.Columns * 8 * 2)
    with pytest.raises(DecodeError, match=r"DICOM \(3 sample\(s\) as float64\)"):
        read_gray(get_testdata_file("examples_palette.dcm"))


@pytest.mark.filterwarnings("ignore:The pixel data is")  # pydicom says it drops the padding: expected
def test_one_row_of_zeros_after_the_pixels_is_padding() -> None:
    """pydicom's MR_small_padded.dcm: 128 zero bytes (one row) after a valid film; it reads as pydicom reads it."""
    path = get_testdata_file("MR_small_padded.dcm")
    assert read_gray(path).shape == pydicom.dcmread(path).pixel_array.shape


@pytest.mark.filterwarnings("ignore:The pixel data is")  # pydicom says it drops the padding: expected
def test_trailing_bytes_short_of_a_row_are_padding_and_a_whole_row_is_refused() -> None:
    """Padding after the pixels (pydicom drops it) leaves the film as it is; a whole row of values more could be a
    wrong Rows."""
    film = phantom(32, 32)
    stored = film.astype(np.uint16).tobytes()
    padded = rewritten(dicom_bytes(film), PixelData=stored + bytes(62))  # a row is 64 bytes
    np.testing.assert_array_equal(read_gray(padded), read_gray(dicom_bytes(film)))
    with pytest.raises(DecodeError, match=SIZE_MISMATCH.format(held="2,112", rows=32, cols=32, need="2,048")):
        read_gray(rewritten(dicom_bytes(film), PixelData=stored + bytes([7]) * 64))  # a row of values: Rows wrong?


@pytest.mark.parametrize("offsets", [True, False], ids=["basic offset table", "no offset table"])
def test_encapsulated_pixel_data_with_more_frames_than_the_header_is_refused(offsets: bool) -> None:
    """A JPEG-LS file declaring one frame held three: each was decoded and put through the float64 LUTs, so the
    decode limit checked from the header bounded nothing (24 frames of 2048 x 2048 took 800 MiB)."""
    film = phantom(32, 32)
    frame = compressed_frame(film, uid.JPEGLSLossless)
    data = encapsulated(dicom_bytes(film), [frame] * 3, uid.JPEGLSLossless, offsets)
    with pytest.raises(DecodeError, match="pixel data holds 3 frames; the header describes one"):
        read_gray(data)


def test_two_frames_under_an_offset_table_of_one_entry_are_refused() -> None:
    """A Basic Offset Table of [0], as a writer may put before a single frame, over two films: the first was read,
    the second dropped without a word."""
    film = phantom(32, 32)
    frame = compressed_frame(film, uid.JPEGLSLossless)
    ds = pydicom.dcmread(io.BytesIO(encapsulated(dicom_bytes(film), [frame], uid.JPEGLSLossless, offsets=True)))
    one = pydicom.encaps.encapsulate([frame], has_bot=True)  # its table (an item of one offset, 12 bytes): [0]
    ds.PixelData = one + one[12:]  # the frame's item again after it
    buf = io.BytesIO()
    ds.save_as(buf)
    assert pydicom.encaps.parse_basic_offsets(io.BytesIO(ds.PixelData)) == [0]
    with pytest.raises(DecodeError, match="pixel data holds 2 frames; the header describes one"):
        read_gray(buf.getvalue())


# ------------------------------------------------------------------ 4. High Bit


def test_high_bit_other_than_bits_stored_minus_one_is_refused() -> None:
    """12 bits stored at the top of each word (High Bit 15): pydicom keeps the low 12, the noise."""
    film = phantom()
    data = dicom_bytes(film << 4, bits=12, HighBit=15)
    with pytest.raises(DecodeError, match="High Bit 15 with Bits Stored 12"):
        read_gray(data)
    with pytest.raises(DecodeError, match="High Bit 15 with Bits Stored 12"):
        image_info(data)


HIGH_BITS = r"pixel values use bits above High Bit {high} \(Bits Stored {stored}, largest value \d+\) and no overlay"
WRAPS = r"read as stored they would wrap into bands; the header does not describe the pixel data"


def compressed_with_header(pixels: np.ndarray, syntax: uid.UID, bits: int, **header: int) -> bytes:
    """``pixels`` compressed in ``syntax`` as ``bits``-bit values, then the header's bit depth set to ``header``
    (BitsAllocated, BitsStored, HighBit), as a faulty export writes it."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(pixels, bits=bits)))
    ds.compress(syntax)
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.mark.parametrize("syntax", [uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless], ids=lambda s: s.name)
def test_compressed_values_above_high_bit_are_refused_as_uncompressed_ones_are(syntax: uid.UID) -> None:
    """14-bit values under a 12-bit header: refused uncompressed, but RLE's were masked into bands and scored
    (pneumonia 0.72 for a normal film), JPEG-LS's and JPEG 2000's read or not by their decoder's whim."""
    film = phantom(48, 48, lo=3000, hi=16000)
    data = compressed_with_header(film, syntax, 16, BitsStored=12, HighBit=11)
    with pytest.raises(DecodeError, match=HIGH_BITS.format(high=11, stored=12) + r".*" + WRAPS):
        read_gray(data)
    within = compressed_with_header(film >> 2, syntax, 16, BitsStored=12, HighBit=11)  # 12-bit values: read
    np.testing.assert_array_equal(read_gray(within), read_gray(dicom_bytes(film >> 2)))


@pytest.mark.parametrize("syntax", [uid.ExplicitVRLittleEndian, uid.RLELossless], ids=lambda s: s.name)
def test_signed_values_above_high_bit_are_refused_and_their_sign_bits_read_either_way(syntax: uid.UID) -> None:
    """14-bit signed values under a 12-bit header were masked and sign-extended into bands (0.12 correlation with
    the film) and scored, pneumonia 0.04 with no warning. 12-bit signed values read as the same values unsigned,
    whether the bits above High Bit hold their sign or are left clear."""
    def signed(values: np.ndarray) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(dicom_bytes(values, PixelRepresentation=1)))
        if syntax.is_encapsulated:
            ds.compress(syntax)
        buf = io.BytesIO()
        ds.save_as(buf)
        return buf.getvalue()

    film = phantom(48, 48, lo=3000, hi=16000) - 8192  # 14-bit signed values
    with pytest.raises(DecodeError, match=r"signed pixel values use bits above High Bit 11 for more than their "
                                          r"sign \(Bits Stored 12, values -\d+ to \d+\).*" + WRAPS):
        read_gray(signed(film))
    values = film >> 2  # 12-bit signed values
    expected = read_gray(dicom_bytes(values + 2048))
    np.testing.assert_array_equal(read_gray(signed(values)), expected)  # sign-extended
    np.testing.assert_array_equal(read_gray(signed(values & 0xFFF)), expected)  # bits above High Bit clear


@pytest.mark.parametrize("intent", [{"PresentationIntentType": "FOR PROCESSING"},
                                    {"SOPClassUID": uid.DigitalXRayImageStorageForProcessing}], ids=["intent", "class"])
def test_an_xray_image_for_processing_is_refused(intent: dict) -> None:
    """The detector's raw values, which a modality may archive beside the film of the same exposure: stretched to
    8-bit grey and scored, they were a second reading of that exposure from values no one reads."""
    film = phantom()
    for read in (read_gray, image_info):
        with pytest.raises(DecodeError, match=r"^an X-ray image For Processing: raw detector values, .*read its For "
                                              r"Presentation image$"):
            read(dicom_bytes(film, **intent))
    np.testing.assert_array_equal(read_gray(dicom_bytes(film, PresentationIntentType="FOR PRESENTATION")),
                                  read_gray(dicom_bytes(film)))


def test_an_object_without_pixel_data_is_named_by_its_sop_class() -> None:
    """A presentation state given as a film, a film whose pixels an export left out, and a disc's DICOMDIR were each
    refused as 'no pixel data (not an image object)', which did not say what the file is, nor which to send."""
    state = dicom_bytes(None, SOPClassUID=uid.GrayscaleSoftcopyPresentationStateStorage)
    with pytest.raises(DecodeError, match=r"^DICOM file has no pixel data \(not an image object: Grayscale Softcopy "
                                          r"Presentation State Storage\)$"):
        read_gray(state)
    stripped = dicom_bytes(None, SOPClassUID=uid.DigitalXRayImageStorageForPresentation)
    with pytest.raises(DecodeError, match=r"^DICOM file has no pixel data: a Digital X-Ray Image Storage - For "
                                          r"Presentation object without its pixels .*; send the whole file$"):
        read_gray(stripped)
    with pytest.raises(DecodeError, match=r"^DICOM file has no pixel data: a DICOMDIR, the index of a DICOM disc or "
                                          r"folder, not an image; read the image files it lists$"):
        image_info(get_testdata_file("DICOMDIR"))


@pytest.mark.parametrize("syntax", [uid.JPEGLSLossless, uid.JPEG2000Lossless], ids=lambda s: s.name)
def test_a_codestream_wider_than_the_header_is_refused(syntax: uid.UID) -> None:
    """12-bit values compressed, the header then saying 8 bits (allocated and stored): the decoded values were cut
    to 8 bits, a normal film read as banded noise and filed as pneumonia 0.88."""
    data = compressed_with_header(phantom(), syntax, 12, BitsAllocated=8, BitsStored=8, HighBit=7)
    with pytest.raises(DecodeError, match=r"the compressed frame's samples are 12-bit, wider than Bits Allocated 8 "
                                          r"\(High Bit 7, Bits Stored 8\): " + WRAPS):
        read_gray(data)


def test_an_rle_frame_wider_than_the_header_is_refused_by_its_values() -> None:
    """RLE records no precision: its decoded values, unmasked, show the 12 bits under an 8-bit header."""
    data = compressed_with_header(phantom(), uid.RLELossless, 12, BitsStored=8, HighBit=7)
    with pytest.raises(DecodeError, match=HIGH_BITS.format(high=7, stored=8) + r".*" + WRAPS):
        read_gray(data)


def test_a_12bit_jpeg_frame_under_an_8bit_header_is_refused_where_its_words_cannot_hold_it() -> None:
    """JPEG (SOF precision 12, JPEG Extended) under Bits Allocated and Stored 8: refused from the codestream."""
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DecodeError, match=r"the compressed frame's samples are 12-bit, wider than Bits Allocated 8"
                                          r".*" + WRAPS):
        read_gray(buf.getvalue())


def test_a_12bit_jpeg_frame_of_8bit_values_is_read_with_its_overshoot_clipped() -> None:
    """The same frame under Bits Allocated 16 and Bits Stored 8, as JPEG Extended stores 8-bit values: its two
    values past 255 (of 262,144; the largest 264) are a lossy codec's overshoot, clipped to 255."""
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 8, 7
    buf = io.BytesIO()
    ds.save_as(buf)
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.PixelData = np.clip(pydicom.dcmread(get_testdata_file("JPGExtended.dcm")).pixel_array, 0, 255).astype(
        np.uint16).tobytes()
    clipped = io.BytesIO()
    ds.save_as(clipped)
    np.testing.assert_array_equal(read_gray(buf.getvalue()), read_gray(clipped.getvalue()))


def saturated(n: int = 64, top: int = 1023) -> np.ndarray:
    """A film whose spine and collimator band are at the stored range's top, beside darker body and lungs: where
    a lossy codec overshoots the range (ringing, JPEG-LS's NEAR error)."""
    y, x = np.mgrid[0:n, 0:n]
    film = np.full((n, n), 0.6 * top)
    film[((x - n * 0.3) / (n * 0.15)) ** 2 + ((y - n * 0.5) / (n * 0.3)) ** 2 < 1] = 0.15 * top
    film[:, int(n * 0.47) : int(n * 0.53)] = top
    film[: n // 8], film[-n // 8 :] = top, 0
    film += np.random.default_rng(0).normal(0, 0.02 * top, (n, n))
    return np.clip(np.rint(film), 0, top).astype(np.int64)


def lossy_with_header(film: np.ndarray, syntax: uid.UID, bits: int, options: dict, **header: int) -> bytes:
    """As :func:`compressed_with_header`, with the codec's ``options`` (its loss)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film, bits=bits)))
    ds.compress(syntax, **options)
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.mark.parametrize("syntax, options", [(uid.JPEGLSNearLossless, {"jls_error": 3}),
                                             (uid.JPEG2000, {"j2k_cr": [20]})],
                         ids=["JPEG-LS NEAR 3", "JPEG 2000 20:1"])
def test_a_lossy_frame_wider_than_bits_stored_is_read_with_its_overshoot_clipped(syntax: uid.UID,
                                                                                 options: dict) -> None:
    """10-bit values in a 12-bit lossy frame (as JPEG stores them): the codec overshoots 1023 beside the saturated
    band, which is no header that says too few bits; masked, the overshoot would wrap bright to dark."""
    film = saturated()
    data = lossy_with_header(film, syntax, 12, options, BitsStored=10, HighBit=9)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.pixel_array_options(correct_unused_bits=False)
    assert ds.pixel_array.max() > 1023  # the codec did overshoot
    gray, reference = read_gray(data).astype(int), read_gray(dicom_bytes(film, bits=10)).astype(int)
    assert gray[: 64 // 8].min() >= 200  # the saturated band stays white, no pixel of it wrapped to dark
    assert np.abs(gray - reference).mean() < 10


def test_a_lossless_frame_wider_than_bits_stored_is_refused_however_little_it_exceeds() -> None:
    """A lossless codec never overshoots: a value above High Bit, however close, is the header's fault."""
    film = saturated()
    film[5, 5] = 1025
    data = compressed_with_header(film, uid.JPEGLSLossless, 12, BitsStored=10, HighBit=9)
    with pytest.raises(DecodeError, match=HIGH_BITS.format(high=9, stored=10) + r".*" + WRAPS):
        read_gray(data)


def test_a_lossy_frame_far_beyond_bits_stored_is_refused_not_clipped() -> None:
    """12-bit values in a lossy frame under Bits Stored 8: no codec overshoots so far; it is a header that says too
    few bits, refused as the lossless frame is."""
    data = lossy_with_header(saturated(top=4095), uid.JPEG2000, 16, {"j2k_cr": [20]}, BitsStored=8, HighBit=7)
    with pytest.raises(DecodeError, match=HIGH_BITS.format(high=7, stored=8) + r".*" + WRAPS):
        read_gray(data)


def test_a_codestream_narrower_than_bits_stored_is_refused() -> None:
    """8-bit samples under a 12-bit header are not the values its window and rescale are for."""
    data = compressed_with_header(phantom(lo=0, hi=255), uid.JPEG2000Lossless, 8, BitsAllocated=16, BitsStored=12,
                                  HighBit=11)
    with pytest.raises(DecodeError, match=r"the compressed frame's samples are 8-bit, below Bits Stored 12: .*the "
                                          r"header does not describe the pixel data"):
        read_gray(data)


# ------------------------------------------------------------------ 5. Pixel Padding Value


def padded(film: np.ndarray, value: int, border: int = 6) -> np.ndarray:
    out = film.copy()
    out[:border], out[:, :border] = value, value
    return out


PADDING = {
    "unsigned 16-bit, 65535": dict(value=65535, bits=16, elements={}),
    "signed, -32768": dict(value=-32768, bits=16, elements={"PixelRepresentation": 1}),
    "range 60000 to 65535": dict(value=65535, bits=16, elements={"PixelPaddingRangeLimit": 60000}),
}


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("case", list(PADDING))
def test_padding_is_left_out_of_the_stretch_and_painted_black(case: str, photometric: str) -> None:
    """Padding far from the film's values squeezed the film into 4 to 6 grey levels."""
    value, bits, elements = PADDING[case]["value"], PADDING[case]["bits"], PADDING[case]["elements"]
    film = phantom(48, 48) if photometric == "MONOCHROME2" else 4800 - phantom(48, 48)
    field = dicom_bytes(film[6:, 6:], photometric, bits=bits, **elements)
    data = dicom_bytes(padded(film, value), photometric, bits=bits, PixelPaddingValue=value, **elements)
    gray = read_gray(data)
    np.testing.assert_array_equal(gray[6:, 6:], read_gray(field))
    assert not gray[:6].any() and not gray[:, :6].any()
    assert lungs_darker_than_spine(gray)


def test_padding_is_painted_black_under_a_window_too() -> None:
    """A window clipped the padding to white (65535 is above it)."""
    film = phantom(48, 48)
    window = dict(WindowCenter=2400, WindowWidth=3200)
    data = dicom_bytes(padded(film, 65535), bits=16, PixelPaddingValue=65535, **window)
    gray = read_gray(data)
    np.testing.assert_array_equal(gray[6:, 6:], read_gray(dicom_bytes(film[6:, 6:], bits=16, **window)))
    assert not gray[:6].any()


def test_a_film_that_is_all_padding_is_refused() -> None:
    data = dicom_bytes(np.full((32, 32), 7), bits=12, PixelPaddingValue=0, PixelPaddingRangeLimit=100)
    with pytest.raises(DecodeError, match="every pixel is padding"):
        read_gray(data)


def with_element(data: bytes, keyword: str, vr: str, value: object, syntax: uid.UID | None = None,
                 pixels: bytes | None = None) -> bytes:
    """The DICOM file ``data`` with ``keyword`` written in ``vr`` (whatever its dictionary's), re-encoded in
    ``syntax`` with ``pixels`` as its pixel data when given."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.add_new(Tag(keyword), vr, value)
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    if pixels is not None:
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW"
    buf = io.BytesIO()
    little = ds.file_meta.TransferSyntaxUID.is_little_endian
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=little, force_encoding=not little)
    return buf.getvalue()


SIGNED = dict(bits=16, PixelRepresentation=1)
# (pixels' offset, padding value, elements, how the padding is written: VR, value, syntax when not little endian)
WRONG_VR = {
    "signed pixels, padding 0x8000 written US (32768)": (-2000, -32768, SIGNED, ("US", 32768, None)),
    "unsigned pixels, padding 0xFFFF written SS (-1)": (0, 65535, dict(bits=16), ("SS", -1, None)),
    "signed pixels, padding written OB": (-2000, -32768, SIGNED, ("OB", b"\x00\x80", None)),
    "signed pixels, padding written OB, big endian": (-2000, -32768, SIGNED,
                                                      ("OB", b"\x80\x00", uid.ExplicitVRBigEndian)),
}


@pytest.mark.parametrize("case", list(WRONG_VR))
def test_a_padding_value_written_in_the_wrong_vr_is_read_as_the_pixels_are(case: str) -> None:
    """PS3.3 C.7.5.1.1.2: Pixel Padding Value is US or SS as Pixel Representation says. Written US under signed
    pixels, 0x8000 was read as 32768, which matched no pixel: the padding stayed in the stretch and squeezed the
    film into a few grey levels; written OB, the reader refused it with 'invalid literal for int()'."""
    offset, value, elements, (vr, written, syntax) = WRONG_VR[case]
    film = phantom(48, 48) + offset
    big = syntax == uid.ExplicitVRBigEndian
    stored = padded(film, value).astype(">i2" if big else "<i2").tobytes()
    data = with_element(dicom_bytes(padded(film, value), **elements), "PixelPaddingValue", vr, written, syntax,
                        stored if big else None)  # fmt: skip
    gray = read_gray(data)
    np.testing.assert_array_equal(gray[6:, 6:], read_gray(dicom_bytes(film[6:, 6:], **elements)))
    assert not gray[:6].any() and not gray[:, :6].any()


def test_a_padding_range_whose_value_is_written_in_the_wrong_vr_leaves_the_film_out_of_it() -> None:
    """0xFFFF written SS read as -1: with a Pixel Padding Range Limit of 60000 the range ran from -1 to 60000, over
    every value of the film, and the film was taken for padding."""
    film = phantom(48, 48)
    data = with_element(dicom_bytes(padded(film, 65535), bits=16, PixelPaddingRangeLimit=60000), "PixelPaddingValue",
                        "SS", -1)  # fmt: skip
    gray = read_gray(data)
    np.testing.assert_array_equal(gray[6:, 6:], read_gray(dicom_bytes(film[6:, 6:], bits=16)))
    assert not gray[:6].any()


def test_a_padding_value_of_other_than_two_bytes_is_refused_naming_it() -> None:
    data = with_element(dicom_bytes(padded(phantom(48, 48), 65535), bits=16), "PixelPaddingValue", "OB", bytes(4))
    with pytest.raises(DecodeError, match=r"^malformed DICOM header: PixelPaddingValue is 4 bytes \(VR OB\), where "
                                          r"it is one 16-bit value$"):  # fmt: skip
        read_gray(data)


# ------------------------------------------------------------------ 6. Presentation LUT Shape


@pytest.mark.parametrize("photometric, shape", [("MONOCHROME2", "INVERSE"), ("MONOCHROME1", "IDENTITY")])
def test_a_presentation_lut_shape_against_the_photometric_interpretation_is_refused(photometric: str,
                                                                                    shape: str) -> None:  # fmt: skip
    """MONOCHROME2 + INVERSE was read un-inverted: lungs bright, spine dark, and scored."""
    data = dicom_bytes(phantom(), photometric, PresentationLUTShape=shape)
    with pytest.raises(DecodeError, match=f"ambiguous polarity: Photometric Interpretation {photometric} with "
                                          f"Presentation LUT Shape {shape}"):  # fmt: skip
        read_gray(data)


def test_a_presentation_lut_shape_that_agrees_reads_as_without_it() -> None:
    film = phantom()
    for photometric, shape, stored in (("MONOCHROME2", "IDENTITY", film), ("MONOCHROME1", "INVERSE", 4800 - film)):
        gray = read_gray(dicom_bytes(stored, photometric, PresentationLUTShape=shape))
        np.testing.assert_array_equal(gray, read_gray(dicom_bytes(stored, photometric)))
        assert lungs_darker_than_spine(gray)


# ------------------------------------------------------------------ 7. non-square pixels

SPACINGS = {
    "PixelSpacing": [0.2, 0.1],
    "ImagerPixelSpacing": [0.2, 0.1],
    "PixelAspectRatio": [2, 1],
}


@pytest.mark.parametrize("keyword", list(SPACINGS))
def test_tall_pixels_are_made_square_by_shrinking_the_width(keyword: str) -> None:
    """Pixels twice as tall as wide: each column stored twice, read at half the width, as the square film."""
    film = phantom(40, 40)
    data = dicom_bytes(np.repeat(film, 2, axis=1), **{keyword: SPACINGS[keyword]})
    np.testing.assert_array_equal(read_gray(data), read_gray(dicom_bytes(film)))
    assert (image_info(data)["width"], image_info(data)["height"]) == (40, 40)


def test_wide_pixels_are_made_square_by_shrinking_the_height() -> None:
    film = phantom(40, 40)
    data = dicom_bytes(np.repeat(film, 2, axis=0), PixelSpacing=[0.1, 0.2], ImagerPixelSpacing=[0.3, 0.3])
    np.testing.assert_array_equal(read_gray(data), read_gray(dicom_bytes(film)))


@pytest.mark.parametrize("groups", ["SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"])
def test_an_enhanced_objects_pixel_spacing_in_its_functional_groups_makes_its_pixels_square(groups: str) -> None:
    """An enhanced object (XA, CT, MR) states its Pixel Spacing in its frame's Pixel Measures functional group: read
    as square, a film of 0.1 x 0.2 mm pixels was squashed 2:1 and scored, where the same spacing at the top level
    reads right."""
    film = phantom(40, 40)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(np.repeat(film, 2, axis=0))))
    measures = pydicom.Dataset()
    measures.PixelSpacing = [0.1, 0.2]
    item = pydicom.Dataset()
    item.PixelMeasuresSequence = pydicom.Sequence([measures])
    setattr(ds, groups, pydicom.Sequence([item]))
    buf = io.BytesIO()
    ds.save_as(buf)
    np.testing.assert_array_equal(read_gray(buf.getvalue()), read_gray(dicom_bytes(film)))
    assert (image_info(buf.getvalue())["width"], image_info(buf.getvalue())["height"]) == (40, 40)


def test_pixels_no_radiograph_has_are_refused_not_squashed() -> None:
    """Pixel Spacing 0.1\\10 read a 512 x 512 film as 512 x 5 and scored it: a header fault, refused."""
    data = dicom_bytes(phantom(40, 40), PixelSpacing=[0.1, 10])
    with pytest.raises(DecodeError, match=r"PixelSpacing 0.1\\10 makes each pixel 100 times as tall as wide"):
        read_gray(data)


def test_the_scope_check_sees_the_size_as_read() -> None:
    data = dicom_bytes(phantom(200, 448), PixelSpacing=[0.1, 0.2])
    assert any("image is 448 x 100 pixels" in w for w in describe(data)["warnings"])


def with_pixel_spacing(data: bytes, text: str) -> bytes:
    """``data`` with Pixel Spacing written as ``text`` as it stands: pydicom will not hold a DS that is no number."""
    ds = pydicom.dcmread(io.BytesIO(data))
    raw = text.encode() + b" " * (len(text) % 2)
    ds[0x00280030] = RawDataElement(Tag(0x00280030), "DS", len(raw), raw, 0, False, True)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_a_square_spacing_leaves_the_film_as_stored() -> None:
    film = phantom(40, 30)
    data = with_pixel_spacing(dicom_bytes(film), "0.1\\0.1005")
    np.testing.assert_array_equal(read_gray(data), read_gray(dicom_bytes(film)))


@pytest.mark.parametrize(("value", "said"), [("0.1\\0", "0.1\\0"), ("-0.2\\0.1", "-0.2\\0.1"),
                                           ("abc\\0.1", "(text, not repeated here)"), ("0\\0", "0\\0"),
                                           ("-0.1\\-0.1", "-0.1\\-0.1"), ("abc\\abc", "(text, not repeated here)"),
                                           ("-0.1", "-0.1"), ("0.1", "0.1"), ("abc", "(text, not repeated here)"),
                                           ("0.1\\0.1\\0.1", "0.1\\0.1\\0.1"), ("0.1\\0.1\\", "0.1\\0.1\\"),
                                           ("\\0.1", "\\0.1")])
def test_a_spacing_that_is_not_two_positive_numbers_is_refused(value: str, said: str) -> None:
    """Numbers are repeated, with the empty values among them (a value of numbers is not said to be text); text is
    not, as it may be any text (a patient's name written in the wrong place). Two
    values alike (``0\\0``, ``-0.1\\-0.1``) were read without a word, as square pixels of no known size; one value
    alone, or three (Pixel Spacing has two: row, column), was passed over, ``-0.1`` included."""
    data = with_pixel_spacing(dicom_bytes(phantom(40, 30)), value)
    with pytest.raises(DecodeError, match=rf"^malformed DICOM header: PixelSpacing {re.escape(said)} is not two "
                                          r"positive numbers, so the size and shape of the film's pixels are unknown$"):
        read_gray(data)


@pytest.mark.parametrize(("spacing", "keyword", "said"), [
    ([5, 5], "PixelSpacing", "field of view 1000 x 1500 mm by its PixelSpacing, outside 100 to 1000 mm a side"),
    ([0.001, 0.001], "ImagerPixelSpacing", "field of view 0.2 x 0.3 mm by its ImagerPixelSpacing, outside 100 to "
                                           "1000 mm a side")])  # fmt: skip
def test_a_field_of_view_no_chest_film_has_is_out_of_scope_not_refused(spacing: list[float], keyword: str,
                                                                       said: str) -> None:
    """A spacing of 5 mm, or 0.001 mm, a pixel was read without a word: times the film's columns and rows it gives a
    field no chest film has (a chest film's is about 350 to 430 mm a side), so the film is no chest film or its
    header is wrong. Warned, out of scope, and still read."""
    data = dicom_bytes(phantom(300, 200), **{keyword: spacing})
    found = [w for w in describe(data)["warnings"] if w.startswith("field of view")]
    assert len(found) == 1 and found[0].startswith(said) and not in_scope(found), found
    assert read_gray(data).shape == (300, 200)
    chest = dicom_bytes(phantom(300, 200), **{keyword: [1.4, 1.4]})  # 280 x 420 mm
    assert not [w for w in describe(chest)["warnings"] if w.startswith("field of view")]


# ------------------------------------------------------------------ 8. a decoder's panic


def test_an_rle_segment_that_runs_over_its_frame_is_refused_before_the_decoder_panics(
        capfd: pytest.CaptureFixture[str]) -> None:
    """pylibjpeg-rle panics (pyo3's PanicException, a BaseException) on these bytes: it ended a whole predict run,
    and once caught, each panic still printed a Rust backtrace to stderr, noise in a service's journal."""
    y, x = np.mgrid[0:64, 0:64]
    film = (2048 + 1200 * np.sin(x / 7.0) * np.cos(y / 5.0)).astype(np.int64)
    frame = compressed_frame(film, uid.RLELossless)
    data = encapsulated(dicom_bytes(film), [JPEG_DAMAGE["random bytes in the middle"](frame)], uid.RLELossless)
    with pytest.raises(DecodeError, match=r"the RLE frame's segment 2 of 2 decodes to more than the 64 x 64 bytes "
                                          r"the header describes"):
        read_gray(data)
    assert "panicked" not in capfd.readouterr().err


def test_an_rle_segment_that_decodes_to_more_bytes_than_an_8_bit_film_is_refused() -> None:
    """pylibjpeg-rle dropped the excess of an 8-bit segment without a word: Rows or Columns short of the data's."""
    film = phantom(48, 64, 0, 255).astype(np.uint8)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film, bits=8)))
    ds.compress(uid.RLELossless)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    with pytest.raises(DecodeError, match=r"the RLE frame's segment 1 of 1 decodes to more than the 47 x 64 bytes"):
        read_gray(encapsulated(dicom_bytes(film[:47], bits=8), [frame], uid.RLELossless))


@pytest.mark.parametrize("syntax", [uid.JPEGBaseline8Bit, uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.RLELossless],
                         ids=lambda s: s.name)
def test_a_compressed_film_cut_short_is_refused_as_cut_short_not_as_no_image(syntax: uid.UID) -> None:
    """pydicom reads a file that ends inside its encapsulated pixel data as an empty data set: it was refused as
    'no pixel data (not an image object)', which reads as a report safely skipped, not a film to send again."""
    if syntax == uid.JPEGBaseline8Bit:  # a JPEG's own codestream, as a modality wraps it
        film = (phantom(64, 64) >> 4).astype(np.uint8)
        frame = io.BytesIO()
        Image.fromarray(film).save(frame, "JPEG", quality=90)
        data = encapsulated(dicom_bytes(film, bits=8), [frame.getvalue()], syntax)
    else:
        film = phantom(64, 64)
        data = encapsulated(dicom_bytes(film), [compressed_frame(film, syntax)], syntax)
    read_gray(data)  # whole, it reads
    cut = data[: len(data) * 2 // 3]
    reason = rf"no data set could be read from this DICOM file \({re.escape(syntax.name)}\): it is cut short or damaged"
    for read in (read_gray, image_info):  # the pixels, and the header alone (the scope checks, a folder's audit)
        with pytest.raises(DecodeError, match=reason):
            read(cut)



@pytest.mark.parametrize("syntax", [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.ExplicitVRBigEndian],
                         ids=lambda s: s.name)
@pytest.mark.parametrize("missing", [1, 2, 1000])
def test_an_uncompressed_film_cut_short_is_refused_as_cut_short_not_as_a_wrong_header(syntax: uid.UID,
                                                                                      missing: int) -> None:
    """pydicom reads the bytes a file that ends inside its pixel data holds: refused as 'the header does not describe
    the pixel data (wrong Rows, Columns or bits ...)', a reason that sent the reader to check the film's tags, where
    the file needs sending again."""
    film = phantom(64, 64)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film)))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = film.astype("<u2" if syntax.is_little_endian else ">u2").tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=syntax.is_implicit_VR, little_endian=syntax.is_little_endian,
                     force_encoding=not syntax.is_little_endian)
    data = buf.getvalue()
    read_gray(data)  # whole, it reads
    with pytest.raises(DecodeError, match=rf"^DICOM file is cut short: its pixel data holds {8192 - missing:,} of the "
                                          r"8,192 bytes its element declares .*; send the whole file again$"):
        read_gray(data[:-missing])


# ------------------------------------------------------------------ 9. no File Meta


@pytest.mark.parametrize("implicit, little", [(True, True), (False, True), (False, False)],
                         ids=["implicit VR little endian", "explicit VR little endian", "explicit VR big endian"])
def test_a_dataset_without_file_meta_is_read_in_the_encoding_it_was_written_in(implicit: bool, little: bool) -> None:
    """No preamble, no group 0002: refused as 'no transfer syntax recorded'."""
    film = phantom()
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film)))
    del ds.file_meta
    ds.PixelData = film.astype("<u2" if little else ">u2").tobytes()
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    np.testing.assert_array_equal(read_gray(fp.getvalue(), dicom=True), read_gray(dicom_bytes(film)))


def _encoded(implicit: bool, little: bool, meta: str | None, deflated: bool = False) -> bytes:
    """A small film written in this encoding, under a File Meta that names ``meta`` (``None``: none, nor preamble)."""
    film = phantom()
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film, PatientName="Yamada^Tarou")))
    ds.PixelData = film.astype("<u2" if little else ">u2").tobytes()
    if meta is None:
        del ds.file_meta
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = implicit, little
        write_dataset(fp, ds)
        return fp.getvalue()
    ds.file_meta.TransferSyntaxUID = meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=implicit, little_endian=little, force_encoding=not deflated)
    return buf.getvalue()


ENCODINGS = {
    "explicit VR little endian": (False, True, uid.ExplicitVRLittleEndian),
    "implicit VR little endian": (True, True, uid.ImplicitVRLittleEndian),
    "explicit VR big endian": (False, False, uid.ExplicitVRBigEndian),
    "no File Meta, implicit": (True, True, None),
    "no File Meta, explicit big endian": (False, False, None),
    "explicit under an implicit File Meta": (False, True, uid.ImplicitVRLittleEndian),
    "implicit under an explicit File Meta": (True, True, uid.ExplicitVRLittleEndian),
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_a_dicom_file_is_read_as_pydicom_reads_it(encoding: str) -> None:
    """The reader reads a file's preamble and File Meta once, then the data set as pydicom's dcmread does (each
    part's elements bounded first): the same elements, encoding, preamble and File Meta as dcmread(force=True)."""
    data = _encoded(*ENCODINGS[encoding])
    ours, theirs = read_dataset(data, header_only=False), pydicom.dcmread(io.BytesIO(data), force=True)
    assert ours == theirs and len(ours) == len(theirs) > 10
    assert ours.original_encoding == theirs.original_encoding and ours.preamble == theirs.preamble
    assert {k: v for k, v in ours.file_meta.items() if k in theirs.file_meta} == dict(theirs.file_meta.items())
    assert read_gray(data, dicom=True).shape == (48, 48)


def test_a_deflated_dicom_file_is_read_as_pydicom_reads_it() -> None:
    data = _encoded(False, True, uid.DeflatedExplicitVRLittleEndian, deflated=True)
    ours, theirs = read_dataset(data, header_only=False), pydicom.dcmread(io.BytesIO(data), force=True)
    assert ours == theirs and len(ours) > 10 and ours.file_meta == theirs.file_meta


# ------------------------------------------------------------------ 10. reasons that say what is wrong


def test_float_pixel_data_with_a_window_says_so() -> None:
    """Was: 'FileDataset' object has no attribute 'BitsStored'."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(None)))
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 16, 16, 1, 32
    ds.PhotometricInterpretation, ds.WindowCenter, ds.WindowWidth = "MONOCHROME2", 0.5, 1.0
    ds.FloatPixelData = (phantom(16, 16) / 4000).astype(np.float32).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DecodeError, match=r"float pixel data with a window \(Window Center/Width\)"):
        read_gray(buf.getvalue())


def test_two_photometric_interpretations_say_so() -> None:
    """Was: unhashable type: 'MultiValue'."""
    data = dicom_bytes(phantom(), PhotometricInterpretation=["MONOCHROME1", "MONOCHROME2"])
    with pytest.raises(DecodeError, match=r"Photometric Interpretation holds 2 values \(MONOCHROME1\\MONOCHROME2\)"):
        read_gray(data)


def test_a_colour_photometric_on_one_sample_says_so() -> None:
    """Was: Invalid ndarray.dtype 'uint16' for color space conversion."""
    with pytest.raises(DecodeError, match=r"YBR_FULL has 3 sample\(s\) per pixel, but Samples per Pixel is 1"):
        read_gray(dicom_bytes(phantom(), "YBR_FULL"))


def test_a_file_meta_naming_the_wrong_byte_order_says_so() -> None:
    """Was: 'DICOM file has no pixel data (not an image object)'."""
    data = dicom_bytes(phantom()).replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00", 1)
    with pytest.raises(DecodeError, match=r"\(Explicit VR Big Endian\) says big endian, but the dataset is written "
                                          r"little endian"):  # fmt: skip
        read_gray(data)



NOT_DICOM = {  # a file of another kind, named .dcm or sent as application/dicom
    "TIFF": b"II*\x00\x08\x00\x00\x00" + bytes(range(256)) * 4,
    "PDF": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 20,
    "text": b"Patient notes: chest film to follow\n" * 30,
    "ZIP archive": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(300),
}


@pytest.mark.parametrize("kind", list(NOT_DICOM))
def test_a_file_that_is_no_dicom_is_refused_as_such(kind: str, tmp_path: Path) -> None:
    """A file of another kind read as DICOM (named .dcm; an upload sent as application/dicom), with no DICM marker and
    no DICOM element in it, was refused as 'DICOM file has no pixel data (not an image object)': a DICOM object that
    is no image, so its sender looked for the film in the wrong study instead of exporting it as a film."""
    path = tmp_path / "film.dcm"
    path.write_bytes(NOT_DICOM[kind])
    for source, dicom in ((path, False), (NOT_DICOM[kind], True)):
        with pytest.raises(DecodeError, match=r"^not a JPEG, PNG or DICOM image: read as DICOM \(named \.dcm or sent "
                                              r"as application/dicom\), but it has no DICM marker and no DICOM "
                                              r"data elements$"):
            read_gray(source, dicom=dicom)
    # a DICOM file without its preamble is still read, and one with its marker but no pixels is still named so
    assert read_gray(dicom_bytes(phantom(), preamble=False), dicom=True).shape == phantom().shape
    with pytest.raises(DecodeError, match=r"^DICOM file has no pixel data \(not an image object"):
        read_gray(dicom_bytes(None, preamble=False, SOPClassUID="1.2.3"), dicom=True)

@pytest.mark.parametrize("encoding", ["File Meta, no preamble", "no File Meta, implicit",
                                      "no File Meta, explicit big endian"])
def test_a_dicom_without_its_preamble_not_named_dcm_is_refused_saying_how_it_is_read(encoding: str,
                                                                                    tmp_path: Path) -> None:
    """Named to predict without .dcm, a DICOM file without its 128-byte preamble (so without magic) was refused as
    "not a JPEG, PNG or DICOM image", without the service's word on how such a file is read; a file of another kind
    is not told so."""
    data = dicom_bytes(phantom(), preamble=False) if encoding.startswith("File Meta") else _encoded(
        *ENCODINGS[encoding])
    path = tmp_path / "film"
    path.write_bytes(data)
    hint = r"^not a JPEG, PNG or DICOM image \(a DICOM file without its 128-byte preamble is read when {}\)$"
    with pytest.raises(DecodeError, match=hint.format(r"named \*\.dcm")):
        read_gray(path)
    with pytest.raises(DecodeError, match=hint.format("read with dicom=True")):
        read_gray(data)
    assert read_gray(path.rename(tmp_path / "film.dcm")).shape == phantom().shape
    for other in NOT_DICOM.values():
        path.write_bytes(other)
        with pytest.raises(DecodeError, match=r"^not a JPEG, PNG or DICOM image$"):
            read_gray(path)


# ------------------------------------------------------------------ 11. an empty Window Center


def test_an_empty_window_center_counts_as_absent() -> None:
    """An 8-bit film with an empty window was min-max stretched (lung 3 instead of 55), unlike its PNG."""
    film = phantom(lo=50, hi=200)
    data = dicom_bytes(film, bits=8, WindowCenter="", WindowWidth="")
    np.testing.assert_array_equal(read_gray(data), film)


def test_a_grey_mapping_that_is_no_number_is_refused_naming_it_and_a_blank_one_is_absent() -> None:
    """A Window Center of letters failed in pydicom's arithmetic ("cannot decode DICOM pixel data ...: unsupported
    operand type(s) for -=: 'str' and 'float'"), naming neither the element nor the fault; one of spaces only, as a
    writer pads an empty value, was refused the same way, where an empty one counts as absent."""
    film = phantom()
    for keyword, other in (("WindowCenter", {"WindowWidth": "400"}), ("RescaleSlope", {"RescaleIntercept": "0"})):
        data = dicom_bytes(film, **{keyword: "1234.5"}, **other)
        for read in (read_gray, image_info):
            with pytest.raises(DecodeError, match=rf"^malformed DICOM header: {keyword} is not a number, so the "
                                                  r"film's grey levels cannot be known$"):
                read(data.replace(b"1234.5", b"abcdef"))
        np.testing.assert_array_equal(read_gray(data.replace(b"1234.5", b"      ")), read_gray(dicom_bytes(film)))


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # pydicom, writing the name as a CS: expected
def test_a_blank_voi_lut_function_is_absent_and_one_that_is_no_term_is_refused_unrepeated() -> None:
    """With a window, a VOI LUT Function written empty or blank was refused ("Unsupported (0028,1056) VOI LUT
    Function value ''"), where it counts as absent (LINEAR); two values were refused as "'MultiValue' object has no
    attribute 'upper'", and free text (a name written in the wrong element) was repeated in the refusal, which
    reaches the service's answer, the results and the logs."""
    film, window = phantom(), {"WindowCenter": 2000, "WindowWidth": 3000}
    linear = read_gray(dicom_bytes(film, **window))
    for blank in ("", " "):
        np.testing.assert_array_equal(read_gray(dicom_bytes(film, VOILUTFunction=blank, **window)), linear)
    np.testing.assert_array_equal(read_gray(dicom_bytes(film, VOILUTFunction="LINEAR", **window)), linear)
    for other in ("DOE^JANE", ["LINEAR", "SIGMOID"]):
        with pytest.raises(DecodeError, match=r"^malformed DICOM header: VOI LUT Function is no term DICOM defines "
                                              r"\(LINEAR, LINEAR_EXACT or SIGMOID\), so how its window maps the "
                                              r"film's values to grey is unknown$"):
            read_gray(dicom_bytes(film, VOILUTFunction=other, **window))
    # without a window, the function maps nothing: the film is read as it is without one
    np.testing.assert_array_equal(read_gray(dicom_bytes(film, VOILUTFunction="DOE^JANE")),
                                  read_gray(dicom_bytes(film)))

@pytest.mark.parametrize(("function", "width", "said"), [(None, 0, "0, where a LINEAR window's is at least 1"),
                                                         ("LINEAR", 0.5, "0.5, where a LINEAR window's is at least 1"),
                                                         ("SIGMOID", -5, "-5, where a SIGMOID window's is above 0")])
def test_a_window_too_narrow_for_its_function_is_a_malformed_header(function: str | None, width: float,
                                                                     said: str) -> None:
    """A Window Width of 0 or under was refused as "cannot decode DICOM pixel data ...: The (0028,1051) Window Width
    must be greater than or equal to 1": a fault of the header, said as the other header faults are."""
    voi = {"VOILUTFunction": function} if function else {}
    data = dicom_bytes(phantom(), WindowCenter=2000, WindowWidth=width, **voi)
    with pytest.raises(DecodeError, match=rf"^malformed DICOM header: Window Width is {re.escape(said)}, so how its "
                                          r"window maps the film's values to grey is unknown$"):
        read_gray(data)
    # a LINEAR_EXACT window may be narrower than 1, and is read
    assert read_gray(dicom_bytes(phantom(), WindowCenter=2000, WindowWidth=0.5, VOILUTFunction="LINEAR_EXACT")).size


@pytest.mark.parametrize(("keyword", "said"), [("SamplesPerPixel", "Samples per Pixel is 0, where each pixel has at "
                                                                   "least one sample"),
                                               ("BitsStored", "Bits Stored is 0, where each sample has at least one "
                                                              "bit"),
                                               ("BitsAllocated", "Bits Allocated is 0, where each sample has at least "
                                                                 "one bit")])
def test_no_samples_or_no_bits_is_a_malformed_header_naming_it(keyword: str, said: str) -> None:
    """Samples per Pixel 0 was refused as "1 sample(s) ... need 0" bytes, Bits Stored 0 as stored bits that "end at
    bit -1", Bits Allocated 0 as "x 0 bits need 0" bytes (and its size read by image_info): each a header fault, said
    as one, naming the element and its value."""
    data = dicom_bytes(phantom(), **{keyword: 0})
    for read in (read_gray, image_info):
        with pytest.raises(DecodeError, match=rf"^malformed DICOM header: {said}$"):
            read(data)


def _nested_private(depth: int) -> pydicom.Dataset:
    """A private sequence nested ``depth`` deep, as a vendor's header (or an attacker) may hold."""
    inner = pydicom.Dataset()
    inner.add_new(0x00091001, "LO", "bottom")
    for _ in range(depth):
        outer = pydicom.Dataset()
        outer.add_new(0x00090010, "LO", "VENDOR")
        outer.add_new(0x00091002, "SQ", pydicom.Sequence([inner]))
        outer[0x00091002].is_undefined_length = True  # read back whole, as a delimited sequence must be
        inner.is_undefined_length_sequence_item = True
        inner = outer
    return inner


def test_a_film_whose_sequences_nest_too_deep_for_a_report_is_refused_with_a_reason(tiny_bundle, data_root,
                                                                                   tmp_path) -> None:
    """A private sequence nested 100 deep made copying the header for the SR a RecursionError: the service
    answered 500 (bad input never gets a 5xx), and predict --dicom-sr stopped with a traceback, losing every other
    film's result."""
    from fastapi.testclient import TestClient

    from pneumoscan import cli
    from pneumoscan.serving.app import create_app
    from tests.test_interop import chest_dicom

    film = read_gray(sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]).astype(np.uint16) * 16
    deep = pydicom.dcmread(io.BytesIO(chest_dicom(film)))
    for element in _nested_private(100):
        deep.add(element)
    folder = tmp_path / "films"
    folder.mkdir()
    deep.save_as(folder / "deep.dcm")
    (folder / "good.dcm").write_bytes(chest_dicom(film))
    reason = "the source DICOM nests its sequences too deeply to be copied: a report cannot carry it"
    with TestClient(create_app(tiny_bundle)) as client:
        r = client.post("/v1/predict", files={"file": ("deep.dcm", (folder / "deep.dcm").read_bytes(),
                                                       "application/dicom")}, params={"format": "dicom-sr"})
    assert r.status_code == 422 and reason in r.json()["error"]
    out = tmp_path / "results.csv"
    args = ["predict", str(tiny_bundle), str(folder), "--dicom-sr", str(tmp_path / "sr"), "--out", str(out)]
    assert cli.main(args) == 0
    assert [p.name for p in (tmp_path / "sr").iterdir()] == ["good.sr.dcm"]
    assert reason in out.read_text()


# ------------------------------------------------------------------ 12. Planar Configuration


LAYOUTS = {0: "color-by-pixel", 1: "color-by-plane"}


def colour_dicom(samples: np.ndarray, photometric: str, stored: int, stated: int, bits: int = 8) -> bytes:
    """A DICOM file of rows x columns x 3 ``samples`` (in ``photometric``'s colour space) stored color-by-pixel
    (``stored`` 0) or color-by-plane (1), its Planar Configuration ``stated``. YBR_FULL_422 keeps each pair's two
    Y, then its Cb and Cr (color-by-pixel only)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(None)))
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = *samples.shape[:2], 3, photometric
    ds.PlanarConfiguration, ds.BitsAllocated, ds.BitsStored, ds.HighBit = stated, 16 if bits > 8 else 8, bits, bits - 1
    ds.PixelRepresentation = 0
    values = samples.astype(np.uint16 if bits > 8 else np.uint8)
    if photometric == "YBR_FULL_422":
        values = np.concatenate([values[:, 0::2, :1], values[:, 1::2, :1], values[:, 0::2, 1:]], axis=2)
    ds.PixelData = (values if stored == 0 else values.transpose(2, 0, 1)).tobytes()
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def colour_films(data_root) -> dict[str, np.ndarray]:
    """A real training film as decoded (an RGB JPEG of a grey film: its channels agree), and the same under a
    colour heatmap, as a Grad-CAM overlay is (its channels do not)."""
    grey = np.asarray(Image.open(sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]).convert("RGB"))
    heat = np.linspace(0, 1, grey.shape[1])[None, :, None] * np.array([255, 140, 0])
    return {"grey film": grey, "film under a heatmap": np.rint(0.5 * grey + 0.5 * heat).astype(np.uint8)}


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL", "YBR_FULL_422", "RGB, 12 bits"])
@pytest.mark.parametrize("kind", ["grey film", "film under a heatmap"])
def test_colour_pixel_data_that_planar_configuration_mislabels_is_refused(colour_films, kind: str,
                                                                         photometric: str) -> None:
    """Read as its Planar Configuration said, color-by-plane data made a 3 x 3 mosaic of shrunken films, and
    color-by-pixel data three parts of the film in each pixel; either was scored. Labelled right, either layout
    reads as the film."""
    rgb = colour_films[kind]
    space, _, depth = photometric.partition(", ")
    bits = int(depth.split()[0]) if depth else 8
    samples = rgb.astype(np.uint16) * 16 if bits == 12 else rgb
    if space.startswith("YBR"):
        samples = convert_color_space(rgb, "RGB", "YBR_FULL")
    want = read_gray(colour_dicom(samples, space, 0, 0, bits))
    assert np.corrcoef(want.ravel(), (rgb @ np.array([0.299, 0.587, 0.114])).ravel())[0, 1] > 0.99  # the film
    for stored in (0, 1) if space != "YBR_FULL_422" else (0,):
        np.testing.assert_array_equal(read_gray(colour_dicom(samples, space, stored, stored, bits)), want)
        wrong = 1 - stored
        with pytest.raises(DecodeError, match=rf"^Planar Configuration \(0028,0006\) is {wrong} \({LAYOUTS[wrong]}\), "
                                              rf"but the pixel data is stored {LAYOUTS[stored]} \(.+\): read as the "
                                              "header says, the film would be garbled"):  # fmt: skip
            read_gray(colour_dicom(samples, space, stored, wrong, bits))


@pytest.mark.parametrize("name", ["ExplVR_BigEnd.dcm", "examples_rgb_color.dcm", "SC_ybr_full_422_uncompressed.dcm"])
def test_pydicoms_uncompressed_colour_files_are_read_and_refused_once_mislabelled(name: str) -> None:
    """A photograph (an ultrasound screen), a colour test card stored color-by-plane, big endian, and YBR_FULL_422."""
    data = Path(get_testdata_file(name)).read_bytes()
    stated = pydicom.dcmread(io.BytesIO(data)).PlanarConfiguration
    assert read_gray(data).size
    with pytest.raises(DecodeError, match=rf"^Planar Configuration \(0028,0006\) is {1 - stated} "):
        read_gray(rewritten(data, PlanarConfiguration=1 - stated))


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm", "SC_rgb_dcmtk_+eb+cr.dcm",
                                  "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm"])  # fmt: skip
def test_a_compressed_colour_frame_is_read_as_its_codec_lays_it_out_whatever_planar_configuration_says(
        name: str) -> None:  # fmt: skip
    """PS3.5 8.2: Planar Configuration is irrelevant to JPEG and JPEG 2000 data. pydicom reshaped libjpeg's and
    OpenJPEG's color-by-pixel output color-by-plane when the element said 1: a mosaic, scored. RLE's segments hold
    one sample each (PS3.5 G.2 asks its encoders to write 1): a valid RLE film of 1 was refused as mislabelled."""
    data = Path(get_testdata_file(name)).read_bytes()
    np.testing.assert_array_equal(read_gray(rewritten(data, PlanarConfiguration=1)), read_gray(data))


@pytest.mark.parametrize("keyword", ["VOILUTSequence", "ModalityLUTSequence"])
def test_a_lut_descriptors_first_value_written_us_under_signed_pixels_is_read_signed(keyword: str) -> None:
    """PS3.3 C.11.1.1, C.11.2.1.1: the first value a LUT maps is signed under signed pixels, however the explicit VR
    file writes its descriptor. Written US, -2048 read 63488: pydicom failed ("Python integer 63488 out of bounds
    for int16"), a film it could read exactly refused with no word of what was wrong."""
    film = phantom(lo=0, hi=4000) - 2048
    entries = np.sqrt(np.arange(4096) / 4095) * 65535

    def with_lut(vr: str, first: int) -> bytes:
        item = pydicom.Dataset()
        item.add_new(Tag("LUTDescriptor"), vr, [4096, first, 16])
        item.add_new(Tag("LUTData"), "US", entries.astype(int).tolist())
        return dicom_bytes(film, **SIGNED, **{keyword: pydicom.Sequence([item])})

    want = read_gray(with_lut("SS", -2048))
    assert np.abs(want - 255 * np.sqrt((film + 2048) / 4000)).max() <= 1  # the LUT's curve, from the film's lowest
    np.testing.assert_array_equal(read_gray(with_lut("US", 0x10000 - 2048)), want)


def test_a_photometric_interpretation_in_lower_case_is_refused_by_the_header_check() -> None:
    """pydicom's codecs take the defined terms in capitals only: "monochrome2" passed the header's check, upper-cased,
    and was refused by the codec, which quoted the value the check is there to keep out of a refusal."""
    with pytest.raises(DecodeError, match=r"^malformed DICOM header: Photometric Interpretation is no term DICOM "
                                          r"defines \(such as MONOCHROME2 or RGB, in capitals\)"):
        read_gray(dicom_bytes(phantom(), "monochrome2"))


def test_a_modality_lut_beside_a_rescale_is_refused_unless_the_rescale_is_the_identity() -> None:
    """PS3.3 C.11.1 allows a Modality LUT or a rescale, not both; pydicom applied the LUT and passed the rescale
    over, so a slope of -1 (the film's polarity) was dropped and the film read as bright as without it."""
    film = phantom(lo=0, hi=4000)
    item = pydicom.Dataset()
    item.add_new(Tag("LUTDescriptor"), "US", [4096, 0, 16])
    item.add_new(Tag("LUTData"), "US", (np.arange(4096) * 16).tolist())
    lut = pydicom.Sequence([item])
    with pytest.raises(DecodeError, match="both a Modality LUT and a Rescale Slope and Intercept are given"):
        read_gray(dicom_bytes(film, ModalityLUTSequence=lut, RescaleSlope=-1, RescaleIntercept=4095))
    np.testing.assert_array_equal(read_gray(dicom_bytes(film, ModalityLUTSequence=lut, RescaleSlope=1,
                                                        RescaleIntercept=0)),
                                  read_gray(dicom_bytes(film, ModalityLUTSequence=lut)))


@pytest.mark.parametrize("coded", ["signed", "unsigned"])
def test_a_jpeg_2000_frame_whose_sign_the_header_contradicts_is_refused_when_the_header_is_wrong(
        data_root: Path, coded: str) -> None:  # fmt: skip
    """A JPEG 2000 frame states its samples' sign (SIZ's Ssiz); pydicom reads them as Pixel Representation says. With
    the header wrong, the values past half the range wrapped round into bands, and the film was scored. With the frame
    wrong (encoders that mark signed values unsigned: pydicom's J2K_pixelrep_mismatch.dcm), the header's reading is
    the film, and it is read. Which is wrong is told by the pictures: a real film's neighbouring pixels are alike
    (on 265 training films made 12-bit, those either side of half the range typically 8.5 to 42 times as
    alike read right as read with the other sign)."""
    real = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]
    film = np.asarray(Image.open(real).convert("L")).astype(np.int64) * 16 - (2048 if coded == "signed" else 0)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film, PixelRepresentation=int(coded == "signed"))))
    ds.compress(uid.JPEG2000Lossless)
    assert read_gray(ds_bytes(ds)).size
    ds.PixelRepresentation = int(coded != "signed")
    with pytest.raises(DecodeError, match=rf"^the JPEG 2000 frame's samples are {coded}, but Pixel Representation "
                                          rf"{ds.PixelRepresentation} says .*times as much read as the header says: "
                                          "read so, its values would wrap round into bands"):
        read_gray(ds_bytes(ds))
    shipped = pydicom.dcmread(get_testdata_file("J2K_pixelrep_mismatch.dcm"))  # the frame is wrong: read as stated
    want = read_gray(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    shipped.decompress()
    np.testing.assert_array_equal(want, read_gray(ds_bytes(shipped)))


SIGN_CASES = {  # header's Pixel Representation, Bits Stored, and the real film's values as stored
    "unsigned 12-bit values, header signed": (1, 12, lambda film: film),
    "signed 12-bit values, bits above High Bit clear, header unsigned": (0, 12, lambda film: (film - 2048) & 0xFFF),
    "signed 16-bit values, header unsigned": (0, 16, lambda film: (film * 8 - 16384) & 0xFFFF),
    "unsigned 16-bit values, header signed": (1, 16, lambda film: film * 16),
}


@pytest.mark.parametrize("case", list(SIGN_CASES))
def test_a_pixel_representation_the_values_contradict_is_refused(data_root: Path, case: str) -> None:
    """Uncompressed values read with the wrong sign wrap round at half the range, the lungs bright and the spine dark
    (correlation -0.52 with the film), and pydicom, like every viewer, reads them as the header says: the film was
    scored. Nothing but the header states the sign, so the picture tells: read with the right sign, neighbouring
    values either side of half the range are close. The film with the right header is read."""
    real = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]
    film = np.asarray(Image.open(real).convert("L")).astype(np.int64) * 16
    stated, bits, stored = SIGN_CASES[case]
    said = ("signed", "unsigned") if stated else ("unsigned", "signed")
    with pytest.raises(DecodeError, match=rf"^Pixel Representation {stated} says the pixel values are {said[0]}, but "
                                          rf"they read as {said[1]} ones: .* differ \d+(\.\d+)? times as much read as "
                                          r"the header says: read so, its values would wrap round into bands"):
        read_gray(dicom_bytes(stored(film), bits=bits, PixelRepresentation=stated))
    right = dicom_bytes(stored(film), bits=bits, PixelRepresentation=1 - stated, BitsStored=bits, HighBit=bits - 1)
    assert np.corrcoef(read_gray(right).ravel(), read_gray(dicom_bytes(film)).ravel())[0, 1] > 0.99


def test_signed_values_sign_extended_under_an_unsigned_header_are_refused_naming_pixel_representation() -> None:
    """Sign-extended signed values under Pixel Representation 0 use the bits above High Bit as a sign does: the
    refusal named Bits Stored and High Bit as too small, which sent the reader to the wrong elements."""
    with pytest.raises(DecodeError, match=r"pixel values use bits above High Bit 11 .* as signed values' sign does, "
                                          r"but Pixel Representation 0 says unsigned"):
        read_gray(dicom_bytes((phantom() - 2048) & 0xFFFF))


def test_a_border_at_the_top_of_the_range_is_no_misread_sign() -> None:
    """Values that cross half the range nowhere but at a border or a saturated area at the film's highest value (no
    Pixel Padding Value to say so) are read as the header says: the border is the film's, not a wrapped sign."""
    film = phantom()
    film[:, :5] = film[:4] = 65535
    assert read_gray(dicom_bytes(film, bits=16)).shape == film.shape


def ds_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()
