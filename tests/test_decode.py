"""Decoding: every supported format to 8-bit gray, every bad input to a DecodeError with a reason."""

from __future__ import annotations

import csv
import io
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pneumoscan import cli
from pneumoscan.data.decode import colour_spread, image_info, read_gray

from pneumoscan.data.pixels import BLANK, BLANK_IN_WINDOW, MAX_PIXELS, NOT_FINITE, DecodeError, reduce, reduced_shape
from pneumoscan.data.preprocess import RESIZE_POLICIES, match_source, preprocess, resize, source_of
from pneumoscan.serving.app import create_app
from tests.builders import dicom_bytes

RAMP12 = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))  # 8 x 256, values 0..4080


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height with (almost) no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(height: int, width: int) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def jpeg_noise() -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (200, 300), dtype=np.uint8)).convert("RGB"), "JPEG")


BAD_INPUTS = {
    "text with a .jpeg name": ("notes.jpeg", b"this is not an image\n" * 20, "not a JPEG, PNG or DICOM"),
    "truncated JPEG": ("cut.jpeg", jpeg_noise()[:3000], "truncated"),
    "zero-byte file": ("empty.png", b"", "empty file"),
    "20,000 x 20,000 PNG": ("bomb.png", png_header_only(20_000, 20_000), "too large"),
    "12,500 x 12,500 PNG (above MAX_PIXELS, below Pillow's limit)": (
        "big.png",
        png_header_only(12_500, 12_500),
        "12500 x 12500 = 156,250,000 pixels, over the 150,000,000 that can be read safely",
    ),
    "DICOM without pixel data": ("report.dcm", dicom_bytes(None), "no pixel data"),
    "multi-frame DICOM": ("cine.dcm", dicom_bytes(np.zeros((3, 8, 8)), frames=3), "multi-frame DICOM \\(3 frames\\)"),
    "garbage with a .dcm name": ("junk.dcm", b"\x00\x01junk" * 50, "DICOM"),
    "DICOM with a damaged header value": (
        # written valid, then NumberOfFrames' IS value "9 " overwritten in the file: pydicom refuses to write it
        "bad-frames.dcm", dicom_bytes(np.zeros((8, 8)), NumberOfFrames=9).replace(b"IS\x02\x009 ", b"IS\x02\x00x1"),
        "malformed DICOM header",
    ),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom on the damaged header: expected
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_decode_error_with_reason(case: str, tmp_path: Path) -> None:
    name, data, reason = BAD_INPUTS[case]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DecodeError, match=reason):
        read_gray(path)
    with pytest.raises(DecodeError, match=reason):
        preprocess(path, 32)
    if not name.endswith(".dcm"):  # bytes carry no name, so only content marks a DICOM upload
        with pytest.raises(DecodeError, match=reason):
            read_gray(data)


@pytest.mark.parametrize("case", ["text with a .jpeg name", "zero-byte file", "20,000 x 20,000 PNG",
                                  "DICOM without pixel data", "multi-frame DICOM",
                                  "DICOM with a damaged header value"])
@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_image_info_refuses_bad_headers(case: str, tmp_path: Path) -> None:
    name, data, reason = BAD_INPUTS[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DecodeError, match=reason):
        image_info(tmp_path / name)


# ---------------------------------------------------------------- pixels that hold no picture


def float_dicom(values: np.ndarray) -> bytes:
    """A DICOM of 32-bit float pixel data (Float Pixel Data): the one kind whose values can be NaN or infinite."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    ds.FloatPixelData = values.astype(np.float32).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


FLOAT_RAMP = np.tile(np.linspace(-1.5, 2.5, 16), (4, 1))
BLANK_INPUTS = {  # case -> (file name, bytes, the whole reason)
    "flat 8-bit PNG": ("grey.png", encode(Image.new("L", (40, 30), 128), "PNG"), BLANK),
    "black JPEG": ("black.jpeg", encode(Image.new("RGB", (40, 30)), "JPEG"), BLANK),
    "white JPEG": ("white.jpeg", encode(Image.new("L", (40, 30), 255), "JPEG"), BLANK),
    "flat 16-bit PNG": ("deep.png", encode(Image.fromarray(np.full((8, 16), 1000, np.uint16)), "PNG"), BLANK),
    "all-zero DICOM pixel data (a failed export)": ("zero.dcm", dicom_bytes(np.zeros((8, 16))), BLANK),
    "flat 8-bit DICOM kept as stored": ("flat8.dcm", dicom_bytes(np.full((8, 16), 90), bits=8), BLANK),
    # a window over a film with nothing in it: the film is blank, not its window
    "all-zero DICOM with a window": ("zero-w.dcm", dicom_bytes(np.zeros((8, 16)), WindowCenter=1024, WindowWidth=512),
                                     BLANK),
    "DICOM window above its values": ("above.dcm", dicom_bytes(RAMP12, WindowCenter=60000, WindowWidth=400),
                                      BLANK_IN_WINDOW),
    "DICOM window below its values, MONOCHROME1": (
        "below.dcm", dicom_bytes(RAMP12, "MONOCHROME1", WindowCenter=-500, WindowWidth=200), BLANK_IN_WINDOW,
    ),
    "DICOM window beyond its rescaled values": (
        "rescaled.dcm", dicom_bytes(RAMP12, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=3500, WindowWidth=10),
        BLANK_IN_WINDOW,
    ),
    "float DICOM holding a NaN": ("nan.dcm", float_dicom(np.where(FLOAT_RAMP > 2, np.nan, FLOAT_RAMP)), NOT_FINITE),
    "float DICOM holding +infinity": ("inf.dcm", float_dicom(np.where(FLOAT_RAMP > 2, np.inf, FLOAT_RAMP)),
                                      NOT_FINITE),
    "float DICOM holding -infinity": ("-inf.dcm", float_dicom(np.where(FLOAT_RAMP < 0, -np.inf, FLOAT_RAMP)),
                                      NOT_FINITE),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BLANK_INPUTS))
def test_a_film_with_nothing_to_see_is_refused_not_scored(case: str, tmp_path: Path) -> None:
    """A model shown a uniform square still answers with a probability: every reader's blank result (and float
    pixel data that is not a number) is refused, with the reason, by path, as bytes and through preprocessing."""
    name, data, reason = BLANK_INPUTS[case]
    path = tmp_path / name
    path.write_bytes(data)
    for read in (lambda: read_gray(path, target=224), lambda: read_gray(data), lambda: preprocess(path, 32)):
        with pytest.raises(DecodeError) as refused:
            read()
        assert str(refused.value) == reason


@pytest.mark.parametrize("film", [
    encode(Image.fromarray(np.pad(np.full((8, 10), 140, np.uint8), ((0, 22), (0, 30)), constant_values=128)), "PNG"),
    encode(Image.fromarray(np.pad(np.full((2, 4), 1001, np.uint16), ((0, 6), (0, 12)), constant_values=1000)), "PNG"),
    dicom_bytes(np.pad(np.full((2, 4), 4095), ((0, 6), (0, 12))), WindowCenter=1024, WindowWidth=4096),
    float_dicom(FLOAT_RAMP),
])  # fmt: skip
def test_a_few_pixels_of_another_value_are_a_picture(film: bytes) -> None:
    """The refusal is of (nearly) one grey level only: a film with more than 5 % of its pixels of another value, in
    any format, still reads (the same readers and builders as the refused cases, so those are refused for their
    flatness, not for the format)."""
    gray = read_gray(film)
    assert gray.min() < gray.max()


def test_the_window_reason_names_the_window_only_when_the_film_has_values_outside_it() -> None:
    inside = read_gray(dicom_bytes(RAMP12, WindowCenter=2000, WindowWidth=400))
    assert inside.min() == 0 and inside.max() == 255  # the same film with a window over it reads
    with pytest.raises(DecodeError) as refused:  # an upload declared as DICOM: the same reason from its bytes
        read_gray(dicom_bytes(RAMP12, WindowCenter=60000, WindowWidth=400, preamble=False), dicom=True)
    assert str(refused.value) == BLANK_IN_WINDOW


def test_predict_refuses_a_blank_film_and_scores_the_rest(tiny_bundle: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """`pneumoscan predict`: the blank film is an error row with its reason and a line on stderr, never a
    probability; the exit status says a film was refused."""
    for case, name in (("black JPEG", "black.jpeg"), ("DICOM window above its values", "above.dcm")):
        (tmp_path / name).write_bytes(BLANK_INPUTS[case][1])
    film = tmp_path / "film.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(film)
    out = tmp_path / "r.csv"
    paths = [str(tmp_path / "black.jpeg"), str(tmp_path / "above.dcm"), str(film)]
    assert cli.main(["predict", str(tiny_bundle), *paths, "--backend", "torch", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    for name, reason in (("black.jpeg", BLANK), ("above.dcm", BLANK_IN_WINDOW)):
        assert rows[name]["error"] == reason and rows[name]["probability"] == "" and rows[name]["label"] == ""
        assert f"{tmp_path / name}: {reason}" in err
    assert rows["film.png"]["error"] == "" and 0 <= float(rows["film.png"]["probability"]) <= 1


@pytest.mark.parametrize("case, content_type", [
    ("flat 8-bit PNG", "image/png"), ("black JPEG", "image/jpeg"), ("flat 16-bit PNG", "image/png"),
    ("all-zero DICOM pixel data (a failed export)", "application/dicom"),
    ("DICOM window above its values", "application/dicom"), ("float DICOM holding a NaN", "application/dicom"),
])  # fmt: skip
def test_the_service_answers_a_blank_upload_with_422_and_the_reason(tiny_bundle: Path, case: str,
                                                                    content_type: str) -> None:
    name, data, reason = BLANK_INPUTS[case]
    with TestClient(create_app(tiny_bundle)) as client:
        r = client.post("/v1/predict", files={"file": (name, data, content_type)})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == f"cannot read the image: {reason}" and "probability" not in r.json()


def test_bomb_is_refused_before_decoding() -> None:
    assert MAX_PIXELS < 20_000 * 20_000
    start = time.perf_counter()
    with pytest.raises(DecodeError, match="too large"):
        read_gray(png_header_only(20_000, 20_000))
    assert time.perf_counter() - start < 0.5  # decoding 4e8 pixels would take seconds and 400 MB


def test_missing_file_is_a_decode_error(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="not found"):
        read_gray(tmp_path / "gone.png")


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert image_info(path)["mode"].startswith("I;16")
    gray = read_gray(path)
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255
    np.testing.assert_array_equal(gray, np.rint(values / 257.0).astype(np.uint8))


def test_16bit_png_with_12bit_values_uses_the_grey_range() -> None:
    values = np.tile(np.linspace(0, 4095, 256).astype(np.uint16), (4, 1))  # a DICOM export's raw values
    gray = read_gray(encode(Image.fromarray(values), "PNG"))
    np.testing.assert_array_equal(gray, np.rint(values * (255 / 4095)).astype(np.uint8))


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def hand_png(film: np.ndarray, interlaced: bool = False, keep: int | None = None) -> bytes:
    """``film`` (8- or 16-bit grey) as a PNG written by hand (Pillow writes no interlaced PNG): its rows, or its
    Adam7 passes' rows, each after filter byte 0; ``keep``: only the first that many of those rows, in a zlib stream
    closed properly, as a tool that closes a file cut short leaves it (the header still gives the whole film)."""
    height, width = film.shape
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    big = film.astype(">u2") if film.dtype == np.uint16 else film
    rows = [b"\0" + row.tobytes() for x, y, dx, dy in passes for row in big[y::dy, x::dx] if row.size]
    ihdr = struct.pack(">IIBBBBB", width, height, 16 if film.dtype == np.uint16 else 8, 0, 0, 0, int(interlaced))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    data = zlib.compress(b"".join(rows[:keep]))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


NOISE = np.random.default_rng(0).integers(0, 256, (37, 61), dtype=np.uint8)  # odd sides: partial Adam7 blocks


@pytest.mark.parametrize("interlaced", [False, True])
@pytest.mark.parametrize("deep", [False, True])
def test_a_whole_png_written_by_hand_reads_as_its_pixels(interlaced: bool, deep: bool) -> None:
    film = NOISE.astype(np.uint16) * 257 if deep else NOISE
    np.testing.assert_array_equal(read_gray(hand_png(film, interlaced)), NOISE)


@pytest.mark.parametrize(("interlaced", "keep"), [(False, 18), (False, 36), (True, 37), (True, 50)])
def test_a_png_whose_image_data_ends_before_its_last_row_is_refused(interlaced: bool, keep: int) -> None:
    """A PNG whose compressed image data (IDAT) ends early, in a zlib stream closed properly, was read by Pillow as
    the rows it holds, the rest black (an interlaced one without its last pass: every other row black), and
    scored: a film cut short and closed again by a tool, or a faulty export, is refused as a cut JPEG is."""
    with pytest.raises(DecodeError, match="^corrupt or truncated image data: the PNG's image data ends early"):
        read_gray(hand_png(NOISE, interlaced, keep))


def test_exif_orientation_is_applied() -> None:
    stored = np.zeros((20, 30), np.uint8)
    stored[:, :5] = 255  # a bright left edge as stored
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as a phone writes it
    gray = read_gray(encode(im, "PNG", exif=exif))
    assert gray.shape == (30, 20) and gray[:5].mean() > 200 and gray[-5:].mean() < 50  # the edge is now on top


# the forms valid XMP gives tiff:Orientation in, as photo editors write it: an attribute in double or single quotes,
# with spaces around its '=', and an element
XMP_FORMS = {
    "double": b' tiff:Orientation="%d"/>', "single": b" tiff:Orientation='%d'/>",
    "spaced": b' tiff:Orientation = "%d" />', "element": b"><tiff:Orientation>%d</tiff:Orientation></rdf:Description>",
    "typed": b'><tiff:Orientation rdf:datatype="http://www.w3.org/2001/XMLSchema#integer">%d</tiff:Orientation>'
             b"</rdf:Description>",
    "prefixed": b' xmlns:t="http://ns.adobe.com/tiff/1.0/" t:Orientation="%d"/>',
    "value": b"><tiff:Orientation><rdf:Description><rdf:value>%d</rdf:value></rdf:Description></tiff:Orientation>"
             b"</rdf:Description>",
    "pantry": b'><xmpMM:Pantry><rdf:Bag><rdf:li tiff:Orientation="1"/></rdf:Bag></xmpMM:Pantry>'
              b"<tiff:Orientation>%d</tiff:Orientation></rdf:Description>",
}  # fmt: skip


def _xmp(orientation: int, form: str = "double") -> bytes:
    """An XMP packet whose tiff:Orientation is ``orientation``, in the ``form`` of :data:`XMP_FORMS`."""
    return (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/"' + XMP_FORMS[form] % orientation +
            b"</rdf:RDF></x:xmpmeta>")


EDGE = np.pad(np.full((20, 5), 255, np.uint8), ((0, 0), (0, 25)))  # stored upright: a bright left edge


def _oriented(fmt: str, exif: int | None, xmp: int | None, form: str = "double") -> bytes:
    """EDGE as a ``fmt`` file whose EXIF block (a camera's, with an orientation ``exif`` or none) and XMP metadata
    (``xmp`` in the ``form`` of :data:`XMP_FORMS`; None: no XMP) say how to turn it."""
    im = Image.fromarray(EDGE)
    block = Image.Exif()
    block[0x010F] = "a camera"  # Make
    if exif is not None:
        block[0x0112] = exif
    if fmt == "JPEG":
        return encode(im, "JPEG", quality=95, exif=block, **({} if xmp is None else {"xmp": _xmp(xmp, form)}))
    info = PngInfo()
    if xmp is not None:
        info.add_itxt("XML:com.adobe.xmp", _xmp(xmp, form).decode())
    return encode(im, "PNG", exif=block, pnginfo=info)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize(("exif", "xmp", "form"), [(None, 6, "double"), (1, 6, "double"), (6, 1, "double"),
                                                   (6, 8, "double"), (None, 6, "single"), (1, 8, "spaced"),
                                                   (None, 6, "element"), (None, 6, "typed"), (1, 6, "prefixed")])
def test_an_xmp_orientation_other_than_the_exif_blocks_is_refused(
    fmt: str, exif: int | None, xmp: int, form: str
) -> None:
    """An orientation in XMP (a privacy tool strips EXIF and keeps XMP) that the EXIF block does not give: browsers,
    and so the service's page, turn the film by EXIF alone, photo editors (and ImageOps.exif_transpose, where EXIF
    gives none) by XMP. The film was read as stored, scored turned a quarter from the film an editor shows; which
    way up it is cannot be told, so it is refused with both, in whichever form valid XMP gives it."""
    said = "none" if exif is None else f"Orientation {exif}"
    with pytest.raises(DecodeError, match=f"^conflicting orientations: the XMP metadata says tiff:Orientation {xmp}, "
                                          f"the EXIF block {said}; browsers"):
        read_gray(_oriented(fmt, exif, xmp, form))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize(("form", "said"), [
    ("value", "^unreadable orientation: the XMP metadata names tiff:Orientation "),
    ("pantry", "^conflicting orientations: the XMP metadata gives 1 and 6, "),
])
def test_an_xmp_orientation_not_read_for_sure_is_refused(fmt: str, form: str, said: str) -> None:
    """An orientation in a form the reader does not read (rdf:value), or two (a pantry's history item beside the
    image's own, the first of which agrees with an EXIF block that gives none): the film was read as stored by the
    first match; it is refused, failing closed."""
    with pytest.raises(DecodeError, match=said):
        read_gray(_oriented(fmt, 6 if form == "value" else None, 6, form))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize(("exif", "xmp", "turned", "form"), [(6, 6, True, "double"), (None, 1, False, "double"),
                                                             (6, None, True, "double"), (6, 6, True, "single")])
def test_an_xmp_orientation_the_exif_block_agrees_with_reads_as_exif_says(
    fmt: str, exif: int | None, xmp: int | None, turned: bool, form: str
) -> None:
    """Turned once, as EXIF says (the reader's own turn: Pillow's exif_transpose is not applied after it)."""
    gray = read_gray(_oriented(fmt, exif, xmp, form))
    np.testing.assert_array_equal(gray > 127, np.rot90(EDGE, -1) > 127 if turned else EDGE > 127)


def test_an_orientation_in_imagemagicks_png_text_leaves_the_film_as_browsers_show_it() -> None:
    """Pillow's getexif takes an orientation from ImageMagick's PNG text ("Raw profile type exif") when no EXIF block
    gives one; browsers, and so the service's page, read the EXIF block alone, and no viewer of films reads it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes().hex()
    info = PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(raw) // 2:8d}\n{raw}\n")
    gray = read_gray(encode(Image.fromarray(EDGE), "PNG", pnginfo=info))
    assert gray.shape == (20, 30) and gray[:, :5].mean() > 200 and gray[:, -5:].mean() < 50


def _palette(film: np.ndarray) -> Image.Image:
    im = Image.new("P", film.shape[::-1])
    im.putpalette([c for v in range(256) for c in (v, v, v)])  # index i shows gray i
    im.putdata(film.ravel().tolist())
    return im


FILM = gradient(4, 16)  # 16 grey levels, 0 to 255, each in a column
SEE_THROUGH = {  # case -> a PNG any pixel of which is not fully opaque
    "half alpha RGBA": Image.fromarray(np.dstack([FILM, FILM, FILM, np.full_like(FILM, 128)]), "RGBA"),
    "clear LA": Image.fromarray(np.dstack([FILM, np.zeros_like(FILM)]), "LA"),
    "one clear pixel in RGBA": Image.fromarray(np.dstack([FILM, FILM, FILM, np.pad(np.full((4, 15), 255, np.uint8),
                                                                                    ((0, 0), (1, 0)))]), "RGBA"),
}  # fmt: skip
KEYED = {  # case -> (image, its tRNS transparency value, a value no pixel has)
    "grey tRNS": (Image.fromarray(FILM), int(FILM[0, -1]), 7),
    "RGB tRNS": (Image.fromarray(FILM).convert("RGB"), (255, 255, 255), (7, 7, 7)),
    "palette tRNS": (_palette(FILM), int(FILM[0, -1]), 7),
    "16-bit tRNS": (Image.fromarray(FILM.astype(np.uint16) * 257), int(FILM[0, -1]) * 257, 7),
}


@pytest.mark.parametrize("case", [*SEE_THROUGH, *KEYED])
def test_a_film_with_transparent_pixels_is_refused(case: str) -> None:
    """Composited on black, a half-transparent film was dimmed and a tRNS white (burned-in markers) turned black,
    then scored: a see-through pixel has no grey value, so such a film is refused with the reason."""
    im, kw = (SEE_THROUGH[case], {}) if case in SEE_THROUGH else (KEYED[case][0], {"transparency": KEYED[case][1]})
    with pytest.raises(DecodeError, match="^image has transparent pixels"):
        read_gray(encode(im, "PNG", **kw))


@pytest.mark.parametrize("case", KEYED)
def test_a_transparency_colour_no_pixel_has_leaves_the_film_as_it_is(case: str) -> None:
    im, _, unused = KEYED[case]
    gray = read_gray(encode(im, "PNG", transparency=unused))
    assert np.abs(gray.astype(int) - FILM).max() <= 1


def test_a_palette_of_alphas_is_read_by_the_entries_its_pixels_use() -> None:
    """A palette PNG's tRNS gives an alpha to each entry: told from the entries the pixels use (the film's 1-byte
    pixels converted to an alpha band had taken 0.9 GB at 12,000 x 12,000), a half-transparent entry in use is
    refused, one no pixel uses is not."""
    used, unused = int(FILM[0, -1]), 7
    for entry, refused in ((used, True), (unused, False)):
        alphas = bytes(128 if i == entry else 255 for i in range(256))
        data = encode(_palette(FILM), "PNG", transparency=alphas)
        if refused:
            with pytest.raises(DecodeError, match="^image has transparent pixels"):
                read_gray(data)
        else:
            assert np.abs(read_gray(data).astype(int) - FILM).max() <= 1


def test_a_palette_of_alphas_no_pixel_uses_is_read_without_a_warning_that_names_no_film() -> None:
    """Pillow warns "Palette images with Transparency expressed in bytes should be converted to RGBA images" on
    converting such a film to grey and on measuring its colour: predict's and the service's logs carried that line,
    naming no film, for a film whose transparency had been judged (no pixel uses a see-through entry)."""
    data = encode(_palette(FILM), "PNG", transparency=bytes(128 if i == 7 else 255 for i in range(256)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.abs(read_gray(data).astype(int) - FILM).max() <= 1
        assert colour_spread(data) == 0


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_a_fully_opaque_alpha_band_reads_as_the_grey_film(mode: str) -> None:
    bands = [FILM] * (len(mode) - 1) + [np.full_like(FILM, 255)]
    np.testing.assert_array_equal(read_gray(encode(Image.fromarray(np.dstack(bands), mode), "PNG")), FILM)


def test_cmyk_jpeg_reads_as_the_original_gray() -> None:
    original = gradient(40, 64)
    data = encode(Image.fromarray(original).convert("CMYK"), "JPEG", quality=95)
    assert image_info(data)["mode"] == "CMYK"
    assert np.abs(read_gray(data).astype(int) - original).max() <= 3


def test_palette_png_maps_through_its_palette() -> None:
    im = Image.new("P", (4, 2))
    im.putpalette([c for v in range(255, -1, -1) for c in (v, v, v)])  # index i shows gray 255 - i
    im.putdata([0, 10, 100, 255] * 2)
    np.testing.assert_array_equal(read_gray(encode(im, "PNG"))[0], [255, 245, 155, 0])


def test_dicom_monochrome1_is_inverted_relative_to_monochrome2() -> None:
    mono2 = read_gray(dicom_bytes(RAMP12, "MONOCHROME2"))
    mono1 = read_gray(dicom_bytes(RAMP12, "MONOCHROME1"))
    assert mono2[0, 0] == 0 and mono2[0, -1] == 255 and (np.diff(mono2[0].astype(int)) >= 0).all()
    np.testing.assert_array_equal(mono1, 255 - mono2)


@pytest.mark.parametrize(
    "elements",
    [
        {"WindowCenter": 1024, "WindowWidth": 512},
        # modality rescale first, then a window given in rescaled units: the same display
        {"RescaleIntercept": -1024, "RescaleSlope": 1, "WindowCenter": 0, "WindowWidth": 512},
    ],
)
def test_dicom_window_is_applied(elements: dict) -> None:
    gray = read_gray(dicom_bytes(RAMP12, bits=12, **elements))
    raw = RAMP12[0].astype(float)
    assert (gray[0, raw <= 768] == 0).all() and (gray[0, raw > 1280] == 255).all()
    inside = (raw > 800) & (raw < 1250)
    expected = (raw[inside] - 767.5) / 511 * 255
    assert np.abs(gray[0, inside] - expected).max() <= 1.5


def test_an_8bit_dicom_without_a_window_reads_as_the_same_pixels_in_a_png() -> None:
    """A scanned film wrapped as DICOM (8 bits, nothing to map its values) is the film: the model sees what it
    would see in a PNG, not a contrast-stretched copy. With a window, the window decides."""
    film = np.tile(np.arange(40, 194, dtype=np.uint8), (3, 1))  # grey 40..193, as a faded scan
    png = read_gray(encode(Image.fromarray(film), "PNG"))
    np.testing.assert_array_equal(read_gray(dicom_bytes(film, bits=8)), png)
    np.testing.assert_array_equal(read_gray(dicom_bytes(film, "MONOCHROME1", bits=8)), 255 - png)
    windowed = read_gray(dicom_bytes(film, bits=8, WindowCenter=116, WindowWidth=154))
    assert windowed.min() == 0 and windowed.max() == 255


def test_dicom_16bit_spans_full_range() -> None:
    pixels = np.tile(np.linspace(1000, 60000, 64).astype(np.uint16), (2, 1))
    gray = read_gray(dicom_bytes(pixels, bits=16))
    assert gray.min() == 0 and gray.max() == 255
    assert image_info(dicom_bytes(pixels, bits=16)) == {
        "width": 64, "height": 2, "mode": "MONOCHROME2/16", "format": "DICOM", "quality": None
    }


def test_dicom_detected_by_content_or_dcm_suffix(tmp_path: Path) -> None:
    with_magic = dicom_bytes(RAMP12)
    (tmp_path / "scan.img").write_bytes(with_magic)  # no .dcm name: the DICM magic is enough
    expected = read_gray(with_magic)
    np.testing.assert_array_equal(read_gray(tmp_path / "scan.img"), expected)

    bare = dicom_bytes(RAMP12, preamble=False)  # no preamble/magic: only the .dcm name says DICOM
    assert bare[128:132] != b"DICM"
    (tmp_path / "bare.dcm").write_bytes(bare)
    np.testing.assert_array_equal(read_gray(tmp_path / "bare.dcm"), expected)
    with pytest.raises(DecodeError, match="not a JPEG, PNG or DICOM"):
        read_gray(bare)


@pytest.mark.parametrize(
    "name, data",
    [
        ("x.jpeg", encode(Image.fromarray(gradient(50, 80)).convert("RGB"), "JPEG")),
        ("x.png", encode(Image.fromarray(gradient(50, 80)), "PNG")),
        ("x.dcm", dicom_bytes(RAMP12)),
    ],
)
def test_bytes_input_equals_path_input(name: str, data: bytes, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert image_info(path) == image_info(data)
    np.testing.assert_array_equal(read_gray(path), read_gray(data))
    np.testing.assert_array_equal(preprocess(path, 32, "pad"), preprocess(data, 32, "pad"))


def test_large_jpeg_is_reduced_but_stays_above_target(tmp_path: Path) -> None:
    path = tmp_path / "full.jpeg"
    full = np.add.outer(np.linspace(0, 120, 1600), np.linspace(0, 120, 2000)).astype(np.uint8)
    Image.fromarray(full).convert("RGB").save(path, quality=90)
    assert image_info(path) == {"width": 2000, "height": 1600, "mode": "RGB", "format": "JPEG", "quality": 90}
    assert read_gray(path).shape == (1600, 2000)
    reduced = read_gray(path, target=224)
    assert reduced.shape == (229, 286)  # 7 x 7 blocks averaged: the short side stays above 224
    # the reduced decode gives the same model input as the full decode, up to resampling noise
    slow = resize(read_gray(path), 224)
    assert np.abs(preprocess(path, 224).astype(int) - slow).mean() < 1.0


def test_resize_squash_stretches_to_square() -> None:
    wide = gradient(100, 200)
    out = resize(wide, 64, "squash")
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert out[:, 0].max() < 5 and out[:, -1].min() > 250  # the full width is still there


def test_resize_pad_keeps_aspect_with_black_bars() -> None:
    wide = np.full((100, 200), 255, np.uint8)
    out = resize(wide, 64, "pad")
    assert out.shape == (64, 64)
    assert (out[:16] == 0).all() and (out[48:] == 0).all()  # black bars top and bottom
    assert (out[16:48] == 255).all()  # the image, 64 x 32, unstretched


def test_resize_center_crop_keeps_the_middle_square() -> None:
    wide = np.zeros((100, 200), np.uint8)
    wide[:, 50:150] = 255  # the centre 100 x 100 square is white, the sides black
    for image in (wide, wide.T.copy()):
        out = resize(image, 64, "center-crop")
        assert out.shape == (64, 64) and out.min() > 200  # the black sides are cut away...
        assert (out[2:-2, 2:-2] == 255).all()  # ...only the antialiasing filter sees past the border
    # same as scaling the short side to 64 and cutting the middle 64 columns
    reference = np.asarray(Image.fromarray(wide).resize((128, 64), Image.Resampling.BILINEAR))[:, 32:96]
    assert np.abs(resize(wide, 64, "center-crop").astype(int) - reference).max() <= 2


def test_resize_policies_and_input_are_validated() -> None:
    assert RESIZE_POLICIES == ("squash", "pad", "center-crop")
    with pytest.raises(ValueError, match="policy"):
        resize(np.zeros((4, 4), np.uint8), 8, "stretch")
    with pytest.raises(ValueError, match="policy"):
        preprocess(b"", 8, "stretch")
    with pytest.raises(ValueError, match="uint8"):
        resize(np.zeros((4, 4), np.float32), 8)


# ---------------------------------------------------------------- training source


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_jpeg_quality_is_read_back_from_the_tables(quality: int) -> None:
    im = Image.fromarray(gradient(40, 60))
    assert image_info(encode(im, "JPEG", quality=quality))["quality"] == quality
    assert image_info(encode(im, "PNG"))["quality"] is None


def test_a_jpeg_without_its_luminance_table_is_reported_not_a_crash() -> None:
    data = encode(Image.fromarray(gradient(40, 60)), "JPEG", quality=75)
    damaged = data.replace(b"\xff\xdb", b"\xff\xfe", 1)  # the quantisation table segment becomes a comment
    assert image_info(damaged)["quality"] is None
    with pytest.raises(DecodeError):
        read_gray(damaged)


def test_source_of_a_uniformly_made_set(tmp_path: Path) -> None:
    def save(name: str, side: tuple[int, int], fmt: str = "JPEG", quality: int = 75) -> Path:
        path = tmp_path / name
        path.write_bytes(encode(Image.fromarray(gradient(side[1], side[0])), fmt, quality=quality))
        return path

    uniform = [save(f"u{i}.jpeg", (48, 48)) for i in range(5)]
    assert source_of(uniform) == (48, 75)
    assert source_of([*uniform, save("big.jpeg", (96, 96))]) == (None, None)  # sizes differ
    assert source_of([save(f"w{i}.jpeg", (64, 48)) for i in range(3)]) == (None, None)  # not square
    assert source_of([*uniform, save("p.png", (48, 48), "PNG")]) == (None, None)  # not all JPEG
    # a few odd files among many do not decide it, wherever they sit in the list (a manifest's row order)
    many = uniform + [save(f"v{i}.jpeg", (48, 48)) for i in range(35)]
    odd = [save("big1.jpeg", (96, 96)), save("p1.png", (48, 48), "PNG")]
    assert source_of(many + odd, sample=16) == source_of(odd + many[::-1], sample=16) == (48, 75)


def test_match_source_brings_larger_images_down_like_the_training_files() -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (48, 40), dtype=np.uint8)
    assert match_source(small, 48, 75) is small  # not larger than the source: untouched
    large = rng.integers(0, 256, (300, 200), dtype=np.uint8)
    squashed = Image.fromarray(large).resize((48, 48), Image.Resampling.BILINEAR)
    expected = read_gray(encode(squashed, "JPEG", quality=75))
    np.testing.assert_array_equal(match_source(large, 48, 75), expected)
    np.testing.assert_array_equal(match_source(large, 48, None), np.asarray(squashed))
    assert match_source(large, None, None) is large


def test_preprocess_with_a_source_equals_the_steps_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "full.jpeg"
    path.write_bytes(encode(Image.fromarray(gradient(500, 400)), "JPEG", quality=95))
    by_hand = resize(match_source(read_gray(path, target=64), 64, 75), 32, "pad")
    np.testing.assert_array_equal(preprocess(path, 32, "pad", source_size=64, source_quality=75), by_hand)


@pytest.mark.parametrize("target", [None, 112, 224, 450])
@pytest.mark.parametrize("shape", [(1799, 801), (801, 1799), (2048, 2048), (225, 300), (224, 224), (1000, 999)])
def test_the_reduced_shape_is_the_shape_reduce_gives(shape: tuple[int, int], target: int | None) -> None:
    """Grad-CAM maps a film back through the shape its decode reduced it to, computed without reducing it again."""
    assert reduced_shape(shape, target) == reduce(Image.new("L", shape[::-1]), target).size[::-1]
