"""A fresh review of how films are read: DICOM grey-level mappings and colour spaces that pydicom reads wrong or passes
over, headers Pillow cannot read, and what the image cache keys on. Each film is read as a viewer shows it or refused
with a one-line reason, never decoded into another picture and scored, and a cache never serves what the decoders of
the moment would not give."""

from __future__ import annotations

import importlib.metadata
import io
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence

from pneumoscan.core import atomic
from pneumoscan.data import pixels
from pneumoscan.data.cache import DECODERS, IN_PROCESS_FILMS, build_cache, cache_key, decoding_versions
from pneumoscan.data.decode import image_info, read_gray
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.preprocess import PreprocessSpec
from tests.builders import dicom_bytes

SIDE = 256
_ROWS, _COLS = np.mgrid[0:SIDE, 0:SIDE]
RAMP12 = (4095 * (_ROWS + _COLS) // (2 * (SIDE - 1))).astype(np.int64)  # 12-bit: dark top left, bright bottom right
GREY8 = (20 + 200 * (_ROWS + _COLS) // (2 * (SIDE - 1))).astype(np.uint8)


def _lut(entries: list[int], bits: int, declared: int | None = None, first: int = 0, as_words: bool = False,
         modality: bool = False) -> Sequence:
    """A one-item LUT sequence: ``entries`` as LUT Data (US, or OW words little endian), its descriptor giving
    ``declared`` entries (default: as many as there are) of ``bits`` bits from ``first``."""
    item = Dataset()
    item.LUTDescriptor = [len(entries) if declared is None else declared, first, bits]
    if as_words:
        item.add_new(0x00283006, "OW", np.asarray(entries, "<u2").tobytes())
    else:
        item.add_new(0x00283006, "US", list(entries))
    if modality:
        item.ModalityLUTType = "US"
    return Sequence([item])


def _linear(count: int, bits: int) -> list[int]:
    return np.linspace(0, 2**bits - 1, count).round().astype(int).tolist()


@pytest.mark.parametrize("as_words", [False, True], ids=["US", "OW"])
def test_a_voi_lut_of_8bit_entries_over_256_of_them_reads_as_its_entries_say(as_words: bool) -> None:
    # pydicom 3.0 indexed such a LUT through uint8: the film's values wrapped round every 256 into bands (off by 239
    # grey levels), and the film was read and scored
    plain = read_gray(dicom_bytes(RAMP12))
    lut = _lut(_linear(4096, 8), 8, as_words=as_words)
    through = read_gray(dicom_bytes(RAMP12, VOILUTSequence=lut))
    assert np.abs(through.astype(int) - plain).max() <= 1
    inverted = read_gray(dicom_bytes(RAMP12, VOILUTSequence=_lut(_linear(4096, 8)[::-1], 8, as_words=as_words)))
    assert np.abs(inverted.astype(int) - (255 - plain)).max() <= 1


def test_stored_values_past_a_short_8bit_voi_lut_hold_at_its_last_entry() -> None:
    # a 256-entry LUT from stored value 1024: pydicom's uint8 index wrapped the values past 1279 round (1440 was shown
    # darker than 1264), where PS3.3 C.11.2.1.1 holds them at the last entry
    shown = read_gray(dicom_bytes(RAMP12, VOILUTSequence=_lut(list(range(256)), 8, first=1024)))
    assert shown[RAMP12 >= 1280].min() == 255 and shown[RAMP12 < 1024].max() == 0
    order = np.argsort(RAMP12, axis=None, kind="stable")
    assert np.all(np.diff(shown.ravel()[order].astype(int)) >= 0), "brighter stored values are never shown darker"


def test_an_empty_lut_data_element_is_refused_saying_so() -> None:
    item = _lut(_linear(4096, 16), 16)[0]
    item.add_new(0x00283006, "US", [])
    with pytest.raises(DecodeError, match="^malformed DICOM header: the VOI LUT has no LUT Data or no LUT Descriptor"):
        read_gray(dicom_bytes(RAMP12, VOILUTSequence=Sequence([item])))


def test_an_8bit_voi_lut_holding_wider_values_is_refused() -> None:
    entries = _linear(4096, 8)
    entries[100] = 300
    with pytest.raises(DecodeError, match="8-bit entries, but its LUT Data holds values up to 300"):
        read_gray(dicom_bytes(RAMP12, VOILUTSequence=_lut(entries, 8)))


@pytest.mark.parametrize("keyword", ["VOILUTSequence", "ModalityLUTSequence"])
@pytest.mark.parametrize("held, declared", [(256, 4096), (4096, 3000)], ids=["fewer", "more"])
def test_a_lut_whose_data_holds_other_than_its_descriptor_gives_is_refused(keyword: str, held: int,
                                                                           declared: int) -> None:
    # fewer: an index error as the reason; more: the entries past the descriptor's cut off, the film's top saturated
    lut = _lut(_linear(held, 16), 16, declared=declared, modality=keyword == "ModalityLUTSequence")
    with pytest.raises(DecodeError, match=f"LUT Data holds {held:,} entries where its LUT Descriptor gives "
                                          f"{declared:,}") as refused:
        read_gray(dicom_bytes(RAMP12, **{keyword: lut}))
    assert "\n" not in str(refused.value)


def test_a_modality_lut_of_12bit_entries_reads_as_its_entries_say() -> None:
    # pydicom reads a Modality LUT's entries as uint<bits>: "data type 'uint12' not understood"
    plain = read_gray(dicom_bytes(RAMP12))
    inverting = _lut(_linear(4096, 12)[::-1], 12, modality=True)
    np.testing.assert_array_equal(read_gray(dicom_bytes(RAMP12, ModalityLUTSequence=inverting)), 255 - plain)


@pytest.mark.parametrize("keyword", ["VOILUTSequence", "ModalityLUTSequence"])
@pytest.mark.parametrize("left_out", ["LUTData", "LUTDescriptor", "a descriptor value"])
def test_a_lut_without_its_data_or_a_whole_descriptor_is_refused_saying_so(keyword: str, left_out: str) -> None:
    item = _lut(_linear(4096, 16), 16, modality=keyword == "ModalityLUTSequence")[0]
    if left_out == "a descriptor value":
        item.LUTDescriptor = [4096, 0]
    else:
        del item[left_out]
    name = "VOI LUT" if keyword == "VOILUTSequence" else "Modality LUT"
    with pytest.raises(DecodeError, match=f"^malformed DICOM header: the {name} has no LUT Data or no LUT Descriptor "
                                          "of three values"):
        read_gray(dicom_bytes(RAMP12, **{keyword: Sequence([item])}))


def test_one_lut_entry_of_padding_is_no_mismatch() -> None:
    padded = _lut(_linear(4095, 16) + [0], 16, declared=4095)
    np.testing.assert_array_equal(read_gray(dicom_bytes(RAMP12, VOILUTSequence=padded)),
                                  read_gray(dicom_bytes(RAMP12, VOILUTSequence=_lut(_linear(4095, 16), 16))))


def test_a_lone_rescale_slope_or_intercept_is_applied_with_its_partner_at_its_identity_value() -> None:
    # pydicom rescales only when both are given: a lone slope of -1 left the film in the wrong polarity, bone dark
    plain = read_gray(dicom_bytes(RAMP12))
    for bits, stored in ((12, RAMP12), (8, RAMP12 // 16)):
        alone = read_gray(dicom_bytes(stored, bits=bits, RescaleSlope=-1))
        np.testing.assert_array_equal(alone, read_gray(dicom_bytes(stored, bits=bits, RescaleSlope=-1,
                                                                   RescaleIntercept=0)))
        assert alone[0, 0] == 255 and alone[-1, -1] == 0 and np.corrcoef(alone.ravel(), plain.ravel())[0, 1] < -0.99
    # a lone intercept: the window is set in rescaled units (here -1024 to 3071), and was applied to the stored ones
    window = {"WindowCenter": 1000, "WindowWidth": 1000}
    both = read_gray(dicom_bytes(RAMP12, RescaleSlope=1, RescaleIntercept=-1024, **window))
    np.testing.assert_array_equal(read_gray(dicom_bytes(RAMP12, RescaleIntercept=-1024, **window)), both)
    assert not np.array_equal(both, read_gray(dicom_bytes(RAMP12, **window)))


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_a_window_under_a_negative_rescale_slope_keeps_the_films_polarity(function: str) -> None:
    # pydicom took the window's output range through the rescale, descending under a negative slope: what lies above
    # the window came out darkest, the windowed film inverted (bone dark), and it was scored
    window = {"WindowCenter": 1000, "WindowWidth": 400, "VOILUTFunction": function}
    negative = read_gray(dicom_bytes(RAMP12, RescaleSlope=-1, RescaleIntercept=4095, **window))
    np.testing.assert_array_equal(negative, read_gray(dicom_bytes(4095 - RAMP12, **window)))  # the same values
    assert negative[0, 0] == 255 and negative[-1, -1] == 0
    lone = read_gray(dicom_bytes(RAMP12, RescaleSlope=-1, **window | {"WindowCenter": 1000 - 4095}))
    np.testing.assert_array_equal(lone, negative)


@pytest.mark.parametrize("groups", ["SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"])
def test_an_enhanced_images_rescale_and_window_in_its_functional_groups_are_applied(groups: str) -> None:
    # pydicom's LUTs read the top level only: the film was shown without its window, and here inverted
    transform, window = Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = -1, 4095, "US"
    window.WindowCenter, window.WindowWidth = 1000, 400
    group = Dataset()
    group.PixelValueTransformationSequence, group.FrameVOILUTSequence = Sequence([transform]), Sequence([window])
    top_level = read_gray(dicom_bytes(RAMP12, RescaleSlope=-1, RescaleIntercept=4095, WindowCenter=1000,
                                      WindowWidth=400))
    np.testing.assert_array_equal(read_gray(dicom_bytes(RAMP12, **{groups: Sequence([group])})), top_level)


def _three_samples(samples: np.ndarray, photometric: str) -> bytes:
    """An uncompressed 8-bit DICOM of ``samples`` (rows x columns x 3, color-by-pixel) labelled ``photometric``."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(GREY8, bits=8)))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
    ds.PixelData = np.ascontiguousarray(samples, np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.mark.parametrize("photometric", ["YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "HSV"])
def test_uncompressed_samples_in_a_colour_space_pydicom_does_not_convert_are_refused(photometric: str) -> None:
    # the grey film in studio-range luma with neutral chroma; pydicom handed the samples on as RGB, and the film
    # came out at a quarter of its contrast (grey levels 100 to 151 of 20 to 220), read and scored
    luma = (16 + GREY8.astype(np.float64) * 219 / 255).round()
    stored = np.stack([luma, np.full_like(luma, 128), np.full_like(luma, 128)], axis=-1)
    with pytest.raises(DecodeError, match=f"Photometric Interpretation {photometric} is (retired|not one)"):
        read_gray(_three_samples(stored, photometric))
    with pytest.raises(DecodeError, match=f"Photometric Interpretation {photometric}"):
        image_info(_three_samples(stored, photometric))


def test_the_colour_spaces_pydicom_converts_still_read_as_the_grey_film() -> None:
    rgb = np.repeat(GREY8[..., None], 3, axis=-1)
    np.testing.assert_array_equal(read_gray(_three_samples(rgb, "RGB")), GREY8)
    np.testing.assert_array_equal(read_gray(_three_samples(convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL")),
                                  GREY8)


@pytest.mark.parametrize("photometric", ["HSV", "ARGB", "CMYK"])
def test_a_retired_colour_space_on_one_sample_is_refused_not_read_as_grey_without_its_window(photometric: str) -> None:
    # read as grey, the window (here one that shows the lower eighth of the values) was passed over
    with pytest.raises(DecodeError, match=f"Photometric Interpretation {photometric} is retired"):
        read_gray(dicom_bytes(RAMP12, photometric, WindowCenter=250, WindowWidth=500))


def test_empty_pixel_data_is_refused_saying_so() -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(RAMP12)))
    ds.PixelData = b""
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DecodeError, match=r"pixel data is empty \(0 bytes\) where the header describes a 256 x 256"):
        read_gray(buf.getvalue())


def test_of_several_windows_the_first_is_shown_and_a_voi_lut_before_any_window() -> None:
    # PS3.3 C.11.2.1.2: several pairs are alternative views; the first is the one a viewer opens with
    first = read_gray(dicom_bytes(RAMP12, WindowCenter=1000, WindowWidth=400))
    np.testing.assert_array_equal(read_gray(dicom_bytes(RAMP12, WindowCenter=[1000, 2500], WindowWidth=[400, 1000])),
                                  first)
    assert not np.array_equal(first, read_gray(dicom_bytes(RAMP12, WindowCenter=2500, WindowWidth=1000)))
    inverting = _lut(_linear(4096, 16)[::-1], 16)
    lut_only = read_gray(dicom_bytes(RAMP12, VOILUTSequence=inverting))
    np.testing.assert_array_equal(read_gray(dicom_bytes(RAMP12, VOILUTSequence=inverting, WindowCenter=1000,
                                                        WindowWidth=400)), lut_only)
    # MONOCHROME1 inverts what its VOI LUT shows
    mono1 = read_gray(dicom_bytes(RAMP12, "MONOCHROME1", VOILUTSequence=inverting))
    np.testing.assert_array_equal(mono1, 255 - lut_only)


def _png(width: int, height: int) -> bytes:
    """A PNG whose header gives ``width`` x ``height`` 8-bit grey pixels, with one row of pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" + bytes(max(width, 1)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_a_png_or_jpeg_whose_header_pillow_cannot_read_is_called_corrupt_not_another_kind_of_file() -> None:
    # Pillow gives no reason, and the refusal said "not a JPEG, PNG or DICOM image" of a file that is one
    buf = io.BytesIO()
    Image.fromarray(GREY8).save(buf, "JPEG")
    jpeg = buf.getvalue()
    sof = jpeg.find(b"\xff\xc0")
    no_height = jpeg[: sof + 5] + b"\x00\x00" + jpeg[sof + 7 :]  # SOF0's height 0 (left to a DNL marker)
    for data, kind in ((_png(0, 0), "PNG"), (_png(0, 10), "PNG"), (no_height, "JPEG")):
        with pytest.raises(DecodeError, match=f"^corrupt {kind} header: the image's size or pixel format cannot be "
                                              "read from it$"):
            read_gray(data)
    with pytest.raises(DecodeError, match="^not a JPEG, PNG or DICOM image$"):
        read_gray(b"GIF89a" + bytes(200))


@pytest.mark.parametrize("plugin", ["pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls"])
def test_the_cache_key_follows_the_version_of_each_plugin_that_decodes_dicom(plugin: str, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # pydicom decodes compressed films through these: a new version (or none, pydicom then trying another) may decode
    # a film otherwise or read one it refused, and the cache served the old pixels and refusals
    film = tmp_path / "film.dcm"
    film.write_bytes(dicom_bytes(RAMP12))
    spec = PreprocessSpec(size=16)
    key = cache_key([str(film)], spec)
    assert importlib.metadata.version(plugin)  # the decoding plugin is installed here, as pyproject asks
    monkeypatch.syspath_prepend(_installed(tmp_path / "site", plugin, "0.0.1"))  # another version, found first
    assert importlib.metadata.version(plugin) == "0.0.1"
    assert cache_key([str(film)], spec) != key
    monkeypatch.undo()
    assert cache_key([str(film)], spec) == key


def _installed(site: Path, name: str, version: str) -> str:
    """SITE, a folder holding the metadata of package NAME at VERSION, as an install into it leaves it."""
    (metadata := site / f"{name.replace('-', '_')}-{version}.dist-info").mkdir(parents=True)
    (metadata / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return str(site)


def test_the_decoders_versions_are_looked_up_again_once_a_folder_on_the_path_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoders' versions are kept while the folders on sys.path are unchanged (importlib.metadata's look-up of
    the eight cost each cache and copy search 5-10 ms), and looked up again once a package is installed in one, or
    where one changed just before the look-up (a change within its file system's time granularity would not show)."""
    looked_up = []
    version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: looked_up.append(name) or version(name))
    installed = {str(importlib.metadata.distribution(name).locate_file("")) for name in DECODERS}
    monkeypatch.setattr(sys, "path", sorted(installed))
    monkeypatch.setattr(atomic, "SETTLED_NS", -3600 * 10**9)  # every folder settled (no waiting in a test)
    first = decoding_versions()
    assert len(looked_up) == len(DECODERS)
    assert decoding_versions() == first and len(looked_up) == len(DECODERS), "looked up again, nothing changed"
    plugin = DECODERS[-1]
    site = _installed(tmp_path / "site", plugin, "0.0.1")
    sys.path.insert(0, site)  # a package installed into a folder on the path: found before the one installed
    assert decoding_versions()[0][plugin] == "0.0.1" and len(looked_up) == 2 * len(DECODERS)
    monkeypatch.setattr(atomic, "SETTLED_NS", 3600 * 10**9)  # a folder changed within the hour: not trusted yet
    decoding_versions()
    assert len(looked_up) == 3 * len(DECODERS)
    monkeypatch.setattr(atomic, "SETTLED_NS", -3600 * 10**9)
    shutil.rmtree(Path(site) / f"{plugin.replace('-', '_')}-0.0.1.dist-info")  # removed
    assert decoding_versions() == first


def test_every_decode_limit_a_site_sets_keys_the_cache_and_holds_in_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MAX_SEGMENTS and MAX_HUFFMAN_CODES were in neither: a site's lower limit was not applied by the worker processes
    # that decode over IN_PROCESS_FILMS films, and a cache built under the old limit was served under the new one
    spec = PreprocessSpec(size=16)
    paths = []
    for i in range(IN_PROCESS_FILMS + 8):  # more films than decode in this process: a pool of two workers
        paths.append(tmp_path / f"film-{i}.png")
        Image.fromarray(np.roll(GREY8[:64, :64], i, axis=1)).save(paths[-1])
    assert not build_cache(paths, spec, tmp_path / "cache", workers=2).errors
    monkeypatch.setattr(pixels, "MAX_SEGMENTS", 1)  # each PNG holds two chunks before IEND: IHDR, IDAT
    refused = build_cache(paths, spec, tmp_path / "cache", workers=2)
    assert len(refused.errors) == len(paths)
    assert all(e["reason"].startswith("malformed file: at least 2 PNG chunks") for e in refused.errors)
