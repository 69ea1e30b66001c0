"""The image reader registry: the built-in readers, how one is chosen, and a toy format registered in this file
alone that discovery, decoding and prediction then read like any other."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.data import pixels as shared, readers
from pneumoscan.data.cache import IN_PROCESS_FILMS, build_cache
from pneumoscan.data.decode import colour_spread, image_info, read_dicom_header, read_gray
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.layouts import discover
from pneumoscan.data.preprocess import PreprocessSpec, preprocess
from pneumoscan.data.scope import COLOUR_TOLERANCE, NO_TAGS, describe
from pneumoscan.inference.predict import expand_paths, predict_paths
from tests.builders import SCORE_TOL, dicom_bytes


class PgmReader(readers.Reader):
    """Binary PGM ("P5", 8-bit): a format none of the built-in readers takes (Pillow's reader is limited to JPEG
    and PNG), decoded here with numpy alone."""

    name = "PGM"
    formats = ("PGM",)
    suffixes = frozenset({".pgm"})
    media_types = ("image/x-portable-graymap",)

    def sniff(self, head: bytes) -> bool:
        return head.startswith(b"P5\n")

    def _parse(self, src: Path | bytes) -> tuple[int, int, bytes]:
        data = src if isinstance(src, bytes) else src.read_bytes()
        magic, size, maxval, pixels = data.split(b"\n", 3)
        width, height = map(int, size.split())
        if width * height > shared.MAX_PIXELS:
            raise shared.too_large(width, height)
        if maxval != b"255" or len(pixels) < width * height:
            raise DecodeError("truncated PGM")
        return width, height, pixels

    def header(self, src: Path | bytes) -> dict:
        width, height, _ = self._parse(src)
        return {"width": width, "height": height, "mode": "L", "format": "PGM", "quality": None}

    def gray(self, src: Path | bytes, target: int | None) -> np.ndarray:
        width, height, pixels = self._parse(src)
        arr = np.frombuffer(pixels, np.uint8, width * height).reshape(height, width)
        return np.asarray(shared.reduce(Image.fromarray(arr), target))


def pgm(pixels: np.ndarray) -> bytes:
    height, width = pixels.shape
    return b"P5\n%d %d\n255\n" % (width, height) + pixels.astype(np.uint8).tobytes()


@contextlib.contextmanager
def registered(reader: PgmReader) -> Iterator[PgmReader]:
    """READER registered for the block, and taken out after it (a test's reader must not outlive the test)."""
    readers.register(reader)
    try:
        yield reader
    finally:
        readers.unregister(reader.name)


@pytest.fixture
def pgm_reader() -> Iterator[PgmReader]:
    with registered(PgmReader()) as reader:
        yield reader


class _FloatPgm(PgmReader):
    """A site's reader with a common mistake: its pixels as floats in 0-1."""

    def gray(self, src: Path | bytes, target: int | None) -> np.ndarray:
        return super().gray(src, target).astype(np.float32) / 255


class _ColourPgm(PgmReader):
    def gray(self, src: Path | bytes, target: int | None) -> np.ndarray:
        return np.stack([super().gray(src, target)] * 3, -1)


@pytest.mark.parametrize("cls, given", [(_FloatPgm, "a float32 array of shape (48, 40)"),
                                        (_ColourPgm, "a uint8 array of shape (48, 40, 3)")], ids=["float", "colour"])
def test_a_reader_giving_other_than_2d_uint8_is_named_with_what_it_gave(
    cls: type[PgmReader], given: str, tmp_path: Path
) -> None:
    """A registered reader returning floats in 0-1 ended read_gray in numpy's "Cannot cast array data from
    dtype('float32')"; one returning colour was taken, and predict then blamed the caller ("read_gray decodes a file
    to one"). read_gray refuses both, naming the reader and what it gave."""
    path = tmp_path / "film.pgm"
    path.write_bytes(pgm(film()))
    said = re.escape(f"the PGM reader ({__name__}.{cls.__qualname__}) gave {given} for {path}: a reader's gray() "
                     "returns a 2-D uint8 array")
    with registered(cls()):
        for source in (path, path.read_bytes()):
            with pytest.raises(ValueError, match=f"^{said}" if source is path else "gave .* for the uploaded bytes"):
                read_gray(source)


class _CrashingPgm(PgmReader):
    """A site's reader whose library raises its own error on a file (not a DecodeError, as the contract asks)."""

    def gray(self, src: Path | bytes, target: int | None) -> np.ndarray:
        raise RuntimeError("libpgm: bad strip offset")


def test_a_reader_raising_other_than_decode_error_is_named_with_what_it_raised(tmp_path: Path) -> None:
    """A registered reader whose library raised its own error (a RuntimeError) ended predict in a traceback through
    read_gray. read_gray refuses it in one line naming the reader, the film, the error and what to mend."""
    path = tmp_path / "film.pgm"
    path.write_bytes(pgm(film()))
    said = re.escape(f"the PGM reader ({__name__}._CrashingPgm) failed on {path}: RuntimeError: libpgm: bad strip "
                     "offset: a reader refuses a file it cannot read with pixels.DecodeError; mend the reader")
    with registered(_CrashingPgm()), pytest.raises(ValueError, match=f"^{said}$"):
        read_gray(path)


def film(height: int = 48, width: int = 40, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width), dtype=np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_built_in_readers_and_what_a_refusal_lists() -> None:
    assert [r.name for r in readers.registered()] == ["Pillow", "DICOM"]
    assert readers.formats() == "JPEG, PNG or DICOM"
    assert readers.suffixes() == {".jpeg", ".jpg", ".png", ".dcm"}
    with pytest.raises(DecodeError, match="^not a JPEG, PNG or DICOM image$"):
        read_gray(b"GIF89a" + bytes(200))


def test_magic_bytes_choose_the_reader_before_the_name(tmp_path: Path) -> None:
    pixels = film()
    (tmp_path / "png-named.dcm").write_bytes(png_bytes(pixels))  # a PNG saved under a DICOM name
    (tmp_path / "bare.dcm").write_bytes(dicom_bytes(pixels, bits=8, preamble=False))  # no magic: the name decides
    (tmp_path / "bare.bin").write_bytes(dicom_bytes(pixels, bits=8, preamble=False))
    assert np.array_equal(read_gray(tmp_path / "png-named.dcm"), pixels)
    assert image_info(tmp_path / "png-named.dcm")["format"] == "PNG"
    assert read_dicom_header(tmp_path / "png-named.dcm") is None
    assert image_info(tmp_path / "bare.dcm")["format"] == "DICOM"
    with pytest.raises(DecodeError, match="not a JPEG, PNG or DICOM"):
        read_gray(tmp_path / "bare.bin")
    raw = (tmp_path / "bare.bin").read_bytes()
    assert read_gray(raw, dicom=True).shape == pixels.shape  # an upload declared as DICOM


def test_register_replaces_by_name_with_a_warning_and_refuses_a_nameless_reader(
    pgm_reader: PgmReader, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.readers.base"):
        again = readers.register(PgmReader())
    assert [r for r in readers.registered() if r.name == "PGM"] == [again]
    assert caplog.messages == ["reader 'PGM' was already registered: this registration replaces it"]

    class Nameless(PgmReader):
        name = ""

    with pytest.raises(ValueError, match="needs a name"):
        readers.register(Nameless())


def test_toy_reader_decodes_through_the_registry(pgm_reader: PgmReader, tmp_path: Path) -> None:
    pixels = film(300, 200)
    path = tmp_path / "film.pgm"
    path.write_bytes(pgm(pixels))
    assert np.array_equal(read_gray(path), pixels)
    assert np.array_equal(read_gray(pgm(pixels)), pixels)  # bytes: found by its magic
    # the one reduction every format shares: the same as the same pixels as PNG
    assert np.array_equal(read_gray(path, target=64), read_gray(png_bytes(pixels), target=64))
    assert image_info(path) == {"width": 200, "height": 300, "mode": "L", "format": "PGM", "quality": None}
    assert read_dicom_header(path) is None
    assert readers.formats() == "JPEG, PNG, DICOM or PGM"
    with pytest.raises(DecodeError, match="^not a JPEG, PNG, DICOM or PGM image$"):
        read_gray(b"GIF89a" + bytes(200))
    # the limits are the package's: a header past MAX_PIXELS is refused before any pixel is read
    with pytest.raises(DecodeError, match="over the .* that can be read safely"):
        read_gray(b"P5\n20000 20000\n255\n" + bytes(10))


def test_toy_reader_files_are_discovered_and_predicted(
    pgm_reader: PgmReader, tiny_bundle: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ds"
    pixels = {"NORMAL": film(seed=1), "PNEUMONIA": film(seed=2)}
    for label, arr in pixels.items():
        (root / "test" / label).mkdir(parents=True)
        (root / "test" / label / f"{label.lower()}.pgm").write_bytes(pgm(arr))
        (root / "test" / label / f"{label.lower()}.png").write_bytes(png_bytes(arr))
    found = discover(root)
    assert sorted(Path(r.path).name for r in found.records) == ["normal.pgm", "normal.png", "pneumonia.pgm",
                                                                "pneumonia.png"]
    assert found.skipped == []
    files = sorted(str(p) for p in root.rglob("*.*"))
    assert [path for path, _ in expand_paths([root])] == files
    rows = {Path(r["path"]).name: r for r in predict_paths(tiny_bundle, files)}
    assert all("error" not in r for r in rows.values()), rows
    for stem in ("normal", "pneumonia"):
        assert rows[f"{stem}.pgm"]["probability"] == pytest.approx(rows[f"{stem}.png"]["probability"], abs=SCORE_TOL)


def test_the_service_takes_a_toy_reader_file_sent_as_its_media_type(pgm_reader: PgmReader, tiny_bundle: Path) -> None:
    """A site's format was refused by the service when an upload declared its type (a browser sends the type it
    knows for the file's ending): "unsupported content type 'image/x-portable-graymap': send image/jpeg, image/png
    or application/dicom". The service takes every registered reader's media_types, and its refusal lists them."""
    from fastapi.testclient import TestClient

    from pneumoscan.serving.app import create_app

    data = pgm(film(64, 64))
    with TestClient(create_app(tiny_bundle, backend="onnx")) as client:
        sent = client.post("/v1/predict", files={"file": ("film.pgm", data, "image/x-portable-graymap")})
        assert sent.status_code == 200, sent.text
        other = client.post("/v1/predict", files={"file": ("film.gif", data, "image/gif")})
    assert other.status_code == 415
    assert other.json()["error"] == ("unsupported content type 'image/gif': send image/jpeg, image/png, "
                                     "application/dicom or image/x-portable-graymap")


def test_without_the_toy_reader_its_files_are_left_out_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "NORMAL" / "film.pgm").write_bytes(pgm(film()))
    found = discover(tmp_path)
    assert found.records == []
    assert found.skipped == [{"path": str(tmp_path / "NORMAL" / "film.pgm"),
                              "reason": "not an image extension (.pgm)"}]
    with pytest.raises(DecodeError, match="not a JPEG, PNG or DICOM image"):
        read_gray(tmp_path / "NORMAL" / "film.pgm")
    assert expand_paths([tmp_path]) == [(str(tmp_path), (
        "folder holds no JPEG, PNG or DICOM files (searched with its subfolders; 1 other entry skipped, such as "
        f"{tmp_path / 'NORMAL' / 'film.pgm'}: not an image extension (.pgm))"))]


def test_cache_workers_decode_with_the_sites_readers_and_limits(
    pgm_reader: PgmReader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enough files start a pool of fresh processes: they read with the readers and limits of the process that
    built the cache, so the answer does not depend on how many files there are; both are part of the cache key. One
    pool shows both (a pool's workers take seconds to start): every third film is over the limit set here."""
    spec = PreprocessSpec(size=16)
    paths, large = [], []
    for i in range(IN_PROCESS_FILMS + 8):  # more films than decode in this process: a pool of two workers
        paths.append(tmp_path / f"film-{i}.pgm")
        height, width = (96, 80) if i % 3 == 2 else (48, 40)
        paths[-1].write_bytes(pgm(film(height, width, seed=i)))
        large += [str(paths[-1])] * (height > 48)
    monkeypatch.setattr(shared, "MAX_PIXELS", 48 * 40)  # a 48 x 40 film, not a 96 x 80 one
    few = build_cache(paths[:2], spec, tmp_path / "cache", workers=2)  # two 48 x 40 films, in this process
    many = build_cache(paths, spec, tmp_path / "cache", workers=2)
    assert not few.errors and len(many.paths) == len(paths) - len(large)
    assert [e["path"] for e in many.errors] == large and all("image too large" in e["reason"] for e in many.errors)
    assert np.array_equal(many.images[:2], few.images)
    monkeypatch.undo()
    every = build_cache(paths, spec, tmp_path / "cache", workers=1)  # in this process; a new key, not the cache above
    assert not every.errors and len(every.paths) == len(paths)


@pytest.mark.parametrize("defined_in", ["__main__", "a function"])
def test_cache_of_a_reader_workers_cannot_load_decodes_in_this_process(
    defined_in: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader class defined in a notebook cell or in ``python -c`` lives in a __main__ that a worker process does
    not share (the pool broke: BrokenProcessPool), and one defined in a function cannot be pickled at all: the
    cache decodes with it here, says why, and holds the pixels the reader gives."""
    if defined_in == "__main__":  # pickled by reference here, not found in a worker: as in a notebook
        cls = type("NotebookPgmReader", (PgmReader,), {"__module__": "__main__"})
        monkeypatch.setattr(sys.modules["__main__"], cls.__name__, cls, raising=False)
    else:
        class LocalPgmReader(PgmReader):
            pass

        cls = LocalPgmReader
    spec = PreprocessSpec(size=16)
    paths = []
    for i in range(IN_PROCESS_FILMS + 8):  # more films than decode in this process: a pool of two workers
        paths.append(tmp_path / f"film-{i}.pgm")
        paths[-1].write_bytes(pgm(film(seed=i)))
    with registered(cls()):
        with caplog.at_level(logging.WARNING, logger="pneumoscan.data.cache"):
            cache = build_cache(paths, spec, tmp_path / "cache", workers=2)
        expected = np.stack([preprocess(path, **spec.to_dict()) for path in paths])
    assert not cache.errors and cache.paths == [str(p) for p in paths]
    assert np.array_equal(cache.images, expected)
    [warning] = caplog.messages
    assert warning.startswith("the image cache decodes in this process, without worker processes: the reader "
                              f"'PGM' ({cls.__module__}.{cls.__qualname__}) cannot be ")


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_a_colour_image_gets_a_scope_warning_and_grey_stored_as_colour_does_not() -> None:
    """A colour photograph was read as grey and scored with only "no DICOM tags"; a grey film stored as RGB (as
    every film of the Kermany train/ folder is), or with some per-channel noise, is a radiograph."""
    grey = np.asarray(Image.fromarray(film(seed=3)).resize((300, 240)))
    noisy = np.clip(np.dstack([grey] * 3) + np.random.default_rng(0).integers(-6, 7, (240, 300, 3)), 0, 255)
    tinted = np.dstack([grey, grey * 0.9, grey * 0.75])  # a sepia photograph of a film
    for rgb in (np.dstack([grey] * 3), noisy):
        assert describe(_jpeg(rgb.astype(np.uint8)))["warnings"] == [NO_TAGS]
    [_, colour] = describe(_jpeg(tinted.astype(np.uint8)))["warnings"]
    assert colour.startswith("colour image") and "a radiograph is grayscale" in colour


def test_no_real_film_gets_the_colour_warning(data_root: Path) -> None:
    """Every 25th film of train/ and val/ (the whole folders measure a channel spread of 0: docs/data.md)."""
    films = sorted(data_root.glob("train/*/*.jpeg"))[::25] + sorted(data_root.glob("val/*/*.jpeg"))
    assert films and all(colour_spread(f) <= COLOUR_TOLERANCE for f in films)


def test_a_film_the_second_stage_cannot_read_is_refused_by_the_two_stage_evaluation(tmp_path: Path) -> None:
    """A second stage decoding at another size reads the films again; one its decode refuses ended the two-stage
    evaluation in a KeyError from the cache, a traceback, where the first stage had scored it."""
    from pneumoscan.data.layouts import make_record, write_manifest
    from pneumoscan.evaluation.evaluate import evaluate
    from tests.test_predict import make_bundle

    class CoarsePgm(PgmReader):
        def gray(self, src: Path | bytes, target: int | None) -> np.ndarray:
            if target is not None and target > 40:
                raise DecodeError("this reader decodes at 40 px or less")
            return super().gray(src, target)

    records = []  # named as the Kermany films are: the names give the patients and the pneumonia's kind
    names = [f"IM-{i:04d}-0001.pgm" for i in range(4)] + [f"person{i}_{kind}_{i}.pgm" for i in range(4)
                                                          for kind in ("bacteria", "virus")]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(pgm(film(seed=i)))
        records.append(make_record(tmp_path / name, "NORMAL" if name.startswith("IM") else "PNEUMONIA"))
    write_manifest(records, tmp_path / "films.csv")
    first = make_bundle(tmp_path / "first", size=32)
    second = make_bundle(tmp_path / "second", "etiology", ("bacteria", "virus"), "virus", size=64)
    with registered(CoarsePgm()), pytest.raises(
            ValueError, match=r"^the etiology stage cannot read a film the first stage read: .*IM-0000-0001\.pgm: "
                              r"unreadable \(this reader decodes at 40 px or less\)"):
        evaluate(first, tmp_path / "films.csv", etiology=second)

