"""Image decoding: any JPEG, PNG or DICOM X-ray (path or uploaded bytes) to an 8-bit grayscale array.

Every bad input becomes a :class:`DecodeError` whose message says what is wrong, so a dataset build can list
the unreadable files and the web service can answer with a 4xx instead of a stack trace.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import ExifTags, Image, ImageChops
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import JPEGLSLossless, JPEGLSNearLossless

from .names import file_kind
from .options import RESIZE_POLICIES, look_up_option

Source = str | Path | bytes

# Refuse anything bigger before pixels are decoded (a 12,000 x 12,000 film is 1.44e8; the largest real chest
# radiographs are ~4,300 x 3,500). Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS ~ 1.8e8) is above this.
MAX_PIXELS = 150_000_000
# Pixels alone do not bound memory: a 16-bit or colour image holds 2 to 4 bytes a pixel once decoded, and DICOM's
# rescale and window arithmetic 8 (float64) a sample. Refuse, from the header, any image whose decoded form would
# exceed this (a 4,300 x 3,500 16-bit radiograph is 30 MB); a JPEG is instead decoded smaller (luma only, then 1/2,
# 1/4 or 1/8 scale) to fit. Decoding holds at most about 1.5 times this per image.
MAX_DECODED_BYTES = 256 * 2**20
# Bytes a decoded pixel takes in Pillow's memory (every multi-band mode is stored as 4 bytes a pixel).
_PILLOW_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_ORIENTATION = {  # EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip
_MINMAX_CHUNK = 1 << 20  # pixels converted at a time, so the float64 arithmetic needs 8 MB, not 8 bytes a pixel
PIL_FORMATS = ("JPEG", "PNG")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_JPEG_LS = (JPEGLSLossless, JPEGLSNearLossless)


class DecodeError(ValueError):
    """Raised with a human-readable reason (str(e)) when a file cannot be read as an X-ray."""


def _too_large(width: int, height: int) -> DecodeError:
    return DecodeError(
        f"image too large: {width} x {height} = {width * height:,} pixels exceeds the limit of "
        f"{MAX_PIXELS:,} (refusing a possible decompression bomb)"
    )


def _too_many_bytes(width: int, height: int, per_pixel: int, what: str) -> DecodeError:
    return DecodeError(
        f"image too large to decode: {width} x {height} {what} needs {width * height * per_pixel / 2**20:,.0f} MiB "
        f"(limit {MAX_DECODED_BYTES / 2**20:,.0f} MiB)"
    )


def _check_source(source: Source, dicom: bool = False) -> tuple[Path | bytes, bool]:
    """(what the readers get, is it DICOM). DICOM is recognised by its 'DICM' magic, a .dcm name, or ``dicom``
    (the caller knows, e.g. from an upload's declared type: bytes without the preamble carry no magic)."""
    if isinstance(source, bytes):
        if not source:
            raise DecodeError("empty file (0 bytes)")
        return source, dicom or source[128:132] == b"DICM"
    path = Path(source)
    try:
        # non-blocking: opening a FIFO for reading would otherwise wait forever for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise DecodeError(f"not a regular file ({file_kind(mode)})")
            head = f.read(132)
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except OSError as e:
        raise DecodeError(f"cannot read file: {e.strerror or e}") from None
    if not head:
        raise DecodeError("empty file (0 bytes)")
    return path, dicom or head[128:132] == b"DICM" or path.suffix.lower() == ".dcm"


def _stream(src: Path | bytes) -> Path | io.BytesIO:
    return io.BytesIO(src) if isinstance(src, bytes) else src


# ---------------------------------------------------------------- Pillow (JPEG, PNG)


@contextmanager
def _open_pillow(src: Path | bytes) -> Iterator[Image.Image]:
    """Header-only open with the size guard applied; Pillow's own bomb warning/error become our limit."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from ~8.9e7 pixels; MAX_PIXELS is the limit this package enforces.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(_stream(src), formats=PIL_FORMATS)
    except Image.DecompressionBombError:
        raise DecodeError(
            f"image too large: over {MAX_PIXELS:,} pixels (refusing a possible decompression bomb)"
        ) from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not a JPEG, PNG or DICOM image") from None
    except Exception as e:  # Pillow raises SyntaxError/OSError/struct.error/... for damaged headers
        raise DecodeError(f"corrupt image header: {e}") from None
    with im:
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise _too_large(width, height)
        if _pillow_bytes(im) > MAX_DECODED_BYTES and im.format != "JPEG":  # a JPEG can be decoded smaller
            raise _too_many_bytes(width, height, _PILLOW_BYTES.get(im.mode, 4), im.mode)
        yield im


def _pillow_bytes(im: Image.Image) -> int:
    return im.width * im.height * _PILLOW_BYTES.get(im.mode, 4)


def _pillow_gray(im: Image.Image, target: int | None) -> np.ndarray:
    """Gray uint8 pixels, reduced (:func:`_reduce`) and upright. The decoded image is turned into an 8-bit one in
    place of a copy or a strip at a time, so decoding holds at most about 1.5 times its decoded bytes."""
    width, height = im.size
    if _pillow_bytes(im) > MAX_DECODED_BYTES:  # a JPEG (_open_pillow refuses the others):
        # libjpeg decodes the luma channel alone, and at 1/2, 1/4 or 1/8 scale (DCT scaling) when that is not enough
        scale = next((s for s in (1, 2, 4, 8) if -(-width // s) * -(-height // s) <= MAX_DECODED_BYTES), 8)
        im.draft("L", (width // scale, height // scale))
    try:
        im.load()
        orientation = im.getexif().get(ExifTags.Base.Orientation)  # a PNG's may follow its pixels
    except Exception as e:  # truncated or corrupt data (LOAD_TRUNCATED_IMAGES stays False on purpose)
        raise DecodeError(f"corrupt or truncated image data: {e}") from None
    if im.mode.startswith("I"):
        # 16-bit PNG, often a DICOM export holding 10- to 14-bit values: min-max, as a DICOM without a window
        # (scaling by 65535 made 12-bit data nearly black; Pillow's convert('L') would clip)
        lo, hi = im.getextrema()
        def strip(top: int, end: int) -> np.ndarray:  # np.asarray(im) would copy it all, twice (tobytes)
            return np.asarray(im.crop((0, top, width, end)))

        gray = Image.fromarray(_stretch(strip, height, width, lo, hi))
    elif im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        # X-ray background is black, so transparent areas become black like the padding does
        gray = ImageChops.multiply(*im.convert("LA").split())
    else:
        gray = im if im.mode == "L" else (im.convert("RGB") if im.mode == "CMYK" else im).convert("L")
    gray = _reduce(gray, target)
    if orientation in _ORIENTATION:  # a phone photo of a film: upright as every viewer shows it
        gray = gray.transpose(_ORIENTATION[orientation])
    return np.asarray(gray)


def _reduce(gray: Image.Image, target: int | None) -> Image.Image:
    """The same reduction for every format: average blocks of n x n pixels, n the largest whole number that keeps
    the short side above ``target``, so a film bigger than the model's input stays bigger. A JPEG is decoded in full
    for this (its DCT-scaled draft decode gave other pixels than the same film as PNG or DICOM, and other scores)."""
    factor = (min(gray.size) - 1) // target if target else 1
    return gray.reduce(factor) if factor >= 2 else gray


# ---------------------------------------------------------------- DICOM

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def redact(text: str) -> str:
    """``text`` with every quoted value replaced by ``'...'``: pydicom and highdicom quote element values in their
    messages ("Invalid value for VR DA: '...'"), and the value may be a patient's name, id or birth date."""
    return _QUOTED.sub("'...'", text)


class _RedactValues(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


def keep_dicom_values_out_of_logs(*packages: str) -> None:
    """Redact the log records of these packages' loggers (those that exist now and the package's own), and silence
    their UserWarnings, which repeat the same messages unredacted on stderr (pydicom logs each one as well, so the
    redacted record is still there). Per logger and filter rather than a ``catch_warnings`` block, because decoding
    runs in threads and ``catch_warnings`` swaps process-wide state."""
    for package in packages:
        names = [n for n in logging.root.manager.loggerDict if n == package or n.startswith(package + ".")]
        for name in {package, *names}:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RedactValues) for f in logger.filters):
                logger.addFilter(_RedactValues())
        warnings.filterwarnings("ignore", category=UserWarning, module=rf"{re.escape(package)}(\.|$)")


keep_dicom_values_out_of_logs("pydicom")


def _read_dicom(src: Path | bytes, header_only: bool) -> Dataset:
    try:
        # force: .dcm files without the 128-byte preamble are common; defer_size keeps pixels on disk
        return pydicom.dcmread(_stream(src), force=True, defer_size="64 KB" if header_only else None)
    except Exception as e:
        raise DecodeError(f"not a readable DICOM file: {e}") from None


def _dicom_header(ds: Dataset) -> tuple[int, int, str, str]:
    """(width, height, photometric interpretation, bits stored) of a single-frame image object. pydicom converts
    header values only when they are read, so every read happens here, where a damaged value becomes a reason."""
    try:
        has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
        rows, cols = (int(ds.get(k) or 0) for k in ("Rows", "Columns"))
        frames = int(ds.get("NumberOfFrames") or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        bits = str(ds.get("BitsStored", "?"))
        samples = int(ds.get("SamplesPerPixel") or 1)
    except Exception as e:
        raise DecodeError(f"malformed DICOM header: {e}") from None
    if not has_pixels:
        raise DecodeError("DICOM file has no pixel data (not an image object)")
    if not rows or not cols:
        raise DecodeError("DICOM file has pixel data but no Rows/Columns")
    if frames > 1:
        raise DecodeError(
            f"multi-frame DICOM ({frames} frames) is not a single radiograph; export the frame to read"
        )
    if rows * cols > MAX_PIXELS:
        raise _too_large(cols, rows)
    if rows * cols * samples * 8 > MAX_DECODED_BYTES:  # the LUT and window arithmetic is float64
        raise _too_many_bytes(cols, rows, samples * 8, f"DICOM ({samples} sample(s) as float64)")
    return cols, rows, photometric, bits


def _pixels(ds: Dataset) -> np.ndarray:
    """The stored pixel values (YBR converted to RGB), JPEG-LS through CharLS (pyjpegls) when it is installed: on a
    1776 x 1416 12-bit film it decodes in 84 ms against pylibjpeg-libjpeg's 358 ms (benchmarks/bench_dicom.py), and
    pydicom would try pylibjpeg first. Every other syntax, and a JPEG-LS file CharLS refuses, gets pydicom's order."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax in _JPEG_LS and "pyjpegls" in get_decoder(syntax).available_plugins:
        try:
            ds.pixel_array_options(decoding_plugin="pyjpegls")
            return ds.pixel_array
        except Exception:  # fall through to every plugin, whose reasons say more
            ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


def _dicom_gray(ds: Dataset) -> np.ndarray:
    photometric = _dicom_header(ds)[2]
    try:
        arr = _pixels(ds)
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            # stored values -> physical values (rescale / modality LUT) -> display values (VOI LUT / window)
            arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
        elif photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    except Exception as e:  # a damaged codestream, a syntax no installed plugin decodes, broken LUTs, short data...
        # pydicom lists each plugin's reason on its own line, under a heading that ends in ':'
        reason = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()).replace(":; ", ": ")
        raise DecodeError(f"cannot decode DICOM pixel data ({_syntax(ds)}): {reason}") from None
    if arr.ndim == 3:  # RGB: same luma weights as Pillow's convert('L')
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    if arr.ndim != 2:
        raise DecodeError(f"unsupported DICOM pixel layout {arr.shape} ({photometric})")
    # After a window that clips both ends (every clinical chest window) min-max is the window itself; it also
    # copes with VOI LUTs whose entries use fewer bits than their descriptor claims.
    gray = _minmax_u8(arr)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _syntax(ds: Dataset) -> str:
    """The transfer syntax's name, for a reason that says which codec a file needs."""
    try:
        uid = ds.file_meta.TransferSyntaxUID
        return uid.name if uid.is_transfer_syntax else f"unknown transfer syntax {uid}"
    except Exception:
        return "no transfer syntax recorded"


def _minmax_u8(arr: np.ndarray) -> np.ndarray:
    return _stretch(lambda top, end: arr[top:end], *arr.shape, float(arr.min()), float(arr.max()))


def _stretch(rows: Callable[[int, int], np.ndarray], height: int, width: int, lo: float, hi: float) -> np.ndarray:
    """Values ``lo..hi`` stretched to uint8 0-255, a block of ``rows(top, end)`` at a time: a whole float64 copy of a
    12,000 x 12,000 film would be 1.1 GB."""
    out = np.zeros((height, width), np.uint8)
    if hi <= lo:
        return out
    scale = 255.0 / (hi - lo)
    step = max(1, _MINMAX_CHUNK // max(1, width))
    for top in range(0, height, step):
        out[top : top + step] = np.rint((rows(top, min(top + step, height)).astype(np.float64) - lo) * scale)
    return out


# ---------------------------------------------------------------- public API


def image_info(source: Source) -> dict:
    """Size and pixel format from the header only (no pixel decoding): ``{"width", "height", "mode", "format",
    "quality"}``; quality is the libjpeg quality (1-100) whose luminance table is nearest the file's, None when
    the file is not a JPEG."""
    src, is_dicom = _check_source(source)
    if is_dicom:
        ds = _read_dicom(src, header_only=True)
        width, height, photometric, bits = _dicom_header(ds)
        return {"width": width, "height": height, "mode": f"{photometric}/{bits}", "format": "DICOM", "quality": None}
    with _open_pillow(src) as im:
        quality = None
        table = im.quantization.get(0) if im.format == "JPEG" else None
        if table is not None and len(table) == 64:  # a damaged file may lack its luminance table
            quality = int(np.abs(_luma_tables() - np.array(table)).sum(axis=1).argmin()) + 1
        return {"width": im.width, "height": im.height, "mode": im.mode, "format": im.format, "quality": quality}


def read_dicom_header(source: Source, dicom: bool = False) -> Dataset | None:
    """The DICOM header (pixel data left unread), or None for a JPEG/PNG; the same test for DICOM as
    :func:`read_gray`, so a file is checked (scope.py) as it was decoded."""
    src, is_dicom = _check_source(source, dicom)
    return _read_dicom(src, header_only=True) if is_dicom else None


def read_gray(source: Source, target: int | None = None, dicom: bool = False) -> np.ndarray:
    """Decode to a uint8 H x W grayscale array. With ``target`` a larger image is reduced (:func:`_reduce`) to a
    short side still above target, the same way whatever its format, so the same pixels give the same score as
    JPEG, PNG or DICOM. ``dicom``: read it as DICOM even without the preamble's magic (see :func:`_check_source`)."""
    src, is_dicom = _check_source(source, dicom)
    if is_dicom:
        return np.asarray(_reduce(Image.fromarray(_dicom_gray(_read_dicom(src, header_only=False))), target))
    with _open_pillow(src) as im:
        return _pillow_gray(im, target)


def resize(gray: np.ndarray, size: int, policy: str = "squash") -> np.ndarray:
    """``size x size`` uint8. squash: stretch to the square; pad: keep the aspect ratio and letterbox with
    black; center-crop: scale the short side to ``size`` and cut the middle square."""
    look_up_option(policy, RESIZE_POLICIES, "resize policy")
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 array, got {gray.dtype} {gray.shape}")
    height, width = gray.shape
    if (height, width) == (size, size):
        return gray.copy()
    im = Image.fromarray(gray)
    bilinear = Image.Resampling.BILINEAR  # antialiased when shrinking, like torchvision's Resize
    if policy == "squash":
        out = im.resize((size, size), bilinear)
    elif policy == "center-crop":
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        out = im.resize((size, size), bilinear, box=(left, top, left + side, top + side))
    else:
        scale = size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        out = Image.new("L", (size, size), 0)
        out.paste(im.resize((new_w, new_h), bilinear), ((size - new_w) // 2, (size - new_h) // 2))
    return np.array(out)


def _brought_to_source(shape: tuple[int, ...], source_size: int | None) -> bool:
    return source_size is not None and max(shape) > source_size


def match_source(
    gray: np.ndarray, source_size: int | None, source_quality: int | None,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> np.ndarray:
    """An image larger than the training images on disk, brought down to them the way they were made: squashed to
    ``source_size`` x ``source_size`` and JPEG-compressed at ``source_quality``. A model learns the blur and
    compression of its training files; on the 16 full-size originals in val/, a demo model gave the 8 pneumonia
    films a mean P(pneumonia) of 0.78 read directly against 0.91 through this step (normals 0.03 and 0.06), and 3 of
    the 8 fell under the threshold only when read directly. The filter is Pillow's antialiased bilinear: of the
    usual filters its output's high-frequency spectrum is closest to train/'s (benchmarks/bench_resample.py);
    bicubic, tried first, left the originals sharper than the training files (``resample`` lets that benchmark
    try the others). Smaller images pass as they are."""
    if not _brought_to_source(gray.shape, source_size):
        return gray
    im = Image.fromarray(gray).resize((source_size, source_size), resample)
    if source_quality is None:
        return np.asarray(im)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=source_quality)
    with Image.open(buf) as jpeg:
        return np.asarray(jpeg.convert("L"))


@functools.cache
def _luma_tables() -> np.ndarray:
    """Pillow's (libjpeg's) luminance quantisation tables, row q - 1 for quality q = 1..100, read back from tiny
    encodes; one array, so finding a file's nearest quality is one vectorised step (audit reads every header)."""
    tables = []
    for quality in range(1, 101):
        buf = io.BytesIO()
        Image.new("L", (8, 8)).save(buf, "JPEG", quality=quality)
        with Image.open(buf) as im:
            tables.append(im.quantization[0])
    return np.array(tables)


def source_of(
    paths: Sequence[str | Path], sample: int = 64, agreement: float = 0.9
) -> tuple[int | None, int | None]:
    """(side, JPEG quality) of a set of files that were made one way, as train/ here (originals squashed to
    224 x 224, JPEG quality 75): the most common (size, quality) among ``sample`` files evenly spread over the
    sorted paths. (None, None) when fewer than ``agreement`` of the readable sample share it, or it is not square,
    or not JPEG. So a few odd files (the training pool here also holds val/'s 16 full-size originals) do not
    decide it, and neither does the order of a manifest's rows. Unreadable files are left to the cache to report."""
    ordered = sorted(map(str, paths))
    spread = np.linspace(0, len(ordered) - 1, min(sample, len(ordered))).round().astype(int)
    picked = [ordered[i] for i in np.unique(spread)]
    found = []
    for path in picked:
        try:
            info = image_info(path)
        except DecodeError:
            continue
        found.append(((info["width"], info["height"]), info["quality"]))
    if not found:
        return None, None
    ((width, height), quality), count = Counter(found).most_common(1)[0]
    if count < agreement * len(found) or width != height or quality is None:
        return None, None
    return width, quality


@dataclass(frozen=True)
class PreprocessSpec:
    """How every image is turned into a model input; part of the cache key."""

    size: int = 224
    policy: str = "squash"
    source_size: int | None = None  # see match_source: larger inputs are first brought down to the
    source_quality: int | None = None  # training files' side and JPEG quality

    @property
    def decode_target(self) -> int:
        """The side an image may be reduced to on decoding (:func:`read_gray`) without losing what preprocessing
        needs."""
        return max(self.size, self.source_size or 0)

    def apply(self, gray: np.ndarray) -> np.ndarray:
        """A decoded uint8 image of any size -> the ``size x size`` model input (:func:`match_source`, then resize)."""
        return resize(match_source(gray, self.source_size, self.source_quality), self.size, self.policy)

    def geometry(self, height: int, width: int) -> str:
        """The resize policy an image of this shape really gets: :func:`match_source` squashes a larger one to the
        training files' square first, so pad and center-crop then have nothing left to pad or cut."""
        return "squash" if _brought_to_source((height, width), self.source_size) else self.policy

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        look_up_option(self.policy, RESIZE_POLICIES, "resize policy")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        return cls(**data)


def preprocess(source: Source, size: int = 224, policy: str = "squash", source_size: int | None = None,
               source_quality: int | None = None) -> np.ndarray:
    """The model input for one file: decode (reduced towards the spec's decode target), then
    :meth:`PreprocessSpec.apply`."""
    spec = PreprocessSpec(size, policy, source_size, source_quality)
    return spec.apply(read_gray(source, target=spec.decode_target))
