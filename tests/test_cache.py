"""The preprocessing cache: order, errors, reuse, invalidation, crash safety, and parallel = serial."""

from __future__ import annotations

import importlib
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.data import cache as cache_mod
from pneumoscan.data import readers
from pneumoscan.data.cache import (
    ImageCache,
    build_cache,
    cache_key,
    default_cache_dir,
)
from pneumoscan.data.preprocess import PreprocessSpec, preprocess

SPEC = PreprocessSpec(size=16)


def write_folder(root: Path, n_good: int) -> tuple[list[str], list[str], list[str]]:
    """(all paths, good paths, bad paths): good PNG/JPEG files interleaved with three unreadable ones."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n_good)
    bad = {
        2: ("empty.png", b""),
        5: ("notes.jpeg", b"not an image at all\n" * 10),
        n_good: ("cut.jpeg", None),
    }
    paths, good, bad_paths = [], [], []
    for i in range(n_good + len(bad)):
        if i in bad:
            name, data = bad[i]
            path = root / f"{i:03d}_{name}"
            if data is None:  # a JPEG cut in half
                full = root / "full.tmp"
                Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(full, "JPEG")
                data = full.read_bytes()[: full.stat().st_size // 2]
                full.unlink()
            path.write_bytes(data)
            bad_paths.append(str(path))
        else:
            path = root / f"{i:03d}_ok.{'png' if i % 2 else 'jpeg'}"
            Image.fromarray(rng.integers(0, 256, (24, 20 + i % 7), dtype=np.uint8)).save(path)
            good.append(str(path))
        paths.append(str(path))
    return paths, good, bad_paths


@pytest.fixture
def folder(tmp_path: Path) -> tuple[list[str], list[str], list[str]]:
    return write_folder(tmp_path / "images", n_good=6)


def cache_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir())


def test_good_files_cached_in_order_and_bad_ones_reported(folder, tmp_path: Path) -> None:
    paths, good, bad = folder
    cache_dir = tmp_path / "cache"
    c = build_cache(paths, SPEC, cache_dir=cache_dir, workers=1)
    assert isinstance(c, ImageCache) and c.spec == SPEC
    assert c.paths == good
    assert c.images.shape == (len(good), 16, 16) and c.images.dtype == np.uint8
    assert not c.images.flags.writeable
    for row, path in enumerate(good):
        np.testing.assert_array_equal(c.images[row], preprocess(path, 16))
    assert [e["path"] for e in c.errors] == bad
    reasons = [e["reason"] for e in c.errors]
    assert "empty file" in reasons[0] and "not a JPEG, PNG or DICOM" in reasons[1] and "truncated" in reasons[2]
    np.testing.assert_array_equal(c.rows([good[3], good[0]]), [3, 0])
    with pytest.raises(KeyError, match="empty file"):
        c.rows([bad[0]])
    with pytest.raises(KeyError, match="not in this cache"):
        c.rows([str(tmp_path / "other.png")])
    assert cache_files(cache_dir) == [f"{c.key}.json", f"{c.key}.u8"]  # no temp files left


def test_second_build_reuses_without_decoding(folder, tmp_path: Path, monkeypatch) -> None:
    paths, good, _ = folder
    first = build_cache(paths, SPEC, cache_dir=tmp_path / "cache", workers=1)
    array_file = tmp_path / "cache" / f"{first.key}.u8"
    stamp = array_file.stat().st_mtime_ns

    def no_decoding(*args):
        raise AssertionError("a cached dataset was decoded again")

    monkeypatch.setattr(cache_mod, "_decode_chunk", no_decoding)
    second = build_cache(paths, SPEC, cache_dir=tmp_path / "cache", workers=1)
    assert second.key == first.key and second.paths == good
    np.testing.assert_array_equal(second.images, first.images)
    assert second.errors == first.errors
    assert array_file.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("when", ["opening the file", "reading its pixels"])
def test_a_read_that_failed_with_an_io_error_is_tried_again_next_time(
    folder, tmp_path: Path, monkeypatch, when: str
) -> None:
    """An I/O error (a disk or network file system's hiccup) says nothing about the film: unlike a damaged file,
    it is not kept in the cache, so the film is not left out of every later run, whenever the read failed."""
    import errno

    from PIL import ImageFile

    paths, good, _ = folder
    failing = good[2]
    eio = OSError(errno.EIO, "Input/output error")
    def failing_for_one_film(real, film_of):
        def call(first, *args, **kwargs):
            if film_of(first) == failing:
                raise eio
            return real(first, *args, **kwargs)
        return call

    if when == "opening the file":
        monkeypatch.setattr(os, "open", failing_for_one_film(os.open, str))  # as core.files.open_regular opens
    else:
        monkeypatch.setattr(ImageFile.ImageFile, "load", failing_for_one_film(
            ImageFile.ImageFile.load, lambda im: str(getattr(im.fp, "name", ""))))  # the handle the reader opened
    first = build_cache(paths, SPEC, cache_dir=tmp_path / "cache", workers=1)
    assert failing not in first.paths
    [error] = [e for e in first.errors if e["path"] == failing]
    assert "Input/output error" in error["reason"] and error["transient"] is True
    monkeypatch.undo()  # the disk is well again
    second = build_cache(paths, SPEC, cache_dir=tmp_path / "cache", workers=1)
    assert second.paths == good and not any(e.get("transient") for e in second.errors)


def test_each_spelling_of_the_paths_is_answered_by_that_spelling(folder, tmp_path: Path, monkeypatch) -> None:
    """Evaluate reads a run's split.csv, whose paths are spelled from the run folder, after train cached the same
    files spelled from the working directory: each must find its own rows."""
    _, good, _ = folder
    monkeypatch.chdir(tmp_path)
    plain = [os.path.relpath(p) for p in good]
    dotted = [os.path.join(".", p) for p in plain]
    for spelling in (plain, dotted):
        cache = build_cache(spelling, SPEC, cache_dir=tmp_path / "cache", workers=1)
        np.testing.assert_array_equal(cache.images[cache.rows(spelling)], [preprocess(p, 16) for p in good])


def test_changed_file_changes_the_key_and_rebuilds(folder, tmp_path: Path) -> None:
    paths, good, _ = folder
    first = build_cache(paths, SPEC, cache_dir=tmp_path / "cache", workers=1)
    changed = Path(good[1])
    Image.fromarray(np.add.outer(np.arange(24), np.arange(24)).astype(np.uint8) + 70).save(changed)  # grey 70..116
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # never the same mtime tick
    second = build_cache(paths, SPEC, cache_dir=tmp_path / "cache", workers=1)
    assert second.key != first.key
    np.testing.assert_array_equal(second.images[1], preprocess(changed, 16))
    np.testing.assert_array_equal(second.images[0], first.images[0])

    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # touch alone is a change too
    assert cache_key(paths, SPEC) != second.key
    # a permission fix changes only the ctime: a file it made readable must not keep its stored error
    touched = cache_key(paths, SPEC)
    time.sleep(0.01)
    os.chmod(changed, 0o600)
    assert cache_key(paths, SPEC) != touched


def test_the_key_depends_on_spec_and_file_list(folder) -> None:
    paths, _, _ = folder
    key = cache_key(paths, SPEC)
    assert key == cache_key(paths, PreprocessSpec(16, "squash"))
    assert key != cache_key(paths, PreprocessSpec(32))
    assert key != cache_key(paths, PreprocessSpec(16, "pad"))
    assert key != cache_key(paths[:-1], SPEC)
    assert key != cache_key(list(reversed(paths)), SPEC)


def test_a_change_to_the_code_that_decodes_gives_a_new_key(folder, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A fix of how films decode (an enhanced DICOM's pixel spacing: squashed 2:1 before) kept the cache built before
    it, whose key only a hand-bumped version changed, and training read the squashed film where predict read it
    right. The key holds the decoding code's source: here a registered reader's module, edited."""
    paths, _, _ = folder
    (tmp_path / "site_reader.py").write_text(
        "from tests.test_readers import PgmReader\n\n\nclass SiteReader(PgmReader):\n    name = 'SITE'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reader = readers.register(importlib.import_module("site_reader").SiteReader())
    try:
        key = cache_key(paths, SPEC)
        assert key == cache_key(paths, SPEC)
        with (tmp_path / "site_reader.py").open("a") as f:
            f.write("# a fix of how its films decode\n")
        assert cache_key(paths, SPEC) != key
    finally:
        readers.unregister(reader.name)


def test_crash_mid_build_leaves_no_valid_cache(folder, tmp_path: Path, monkeypatch) -> None:
    paths, good, _ = folder
    cache_dir = tmp_path / "cache"
    real = cache_mod._decode_chunk
    calls = []

    def crash_after_first_chunk(*args):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(cache_mod, "CHUNK", 3)
    monkeypatch.setattr(cache_mod, "_decode_chunk", crash_after_first_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        build_cache(paths, SPEC, cache_dir=cache_dir, workers=1)
    assert len(calls) == 2
    assert cache_files(cache_dir) == []  # no index, no array, no temp file

    monkeypatch.setattr(cache_mod, "_decode_chunk", real)
    c = build_cache(paths, SPEC, cache_dir=cache_dir, workers=1)
    assert c.paths == good and c.images.shape[0] == len(good)


def test_a_killed_builds_temporary_file_is_removed_by_the_next_build(folder, tmp_path: Path) -> None:
    """SIGKILL skips the build's own clean-up; the next build removes what it left, but not a live build's file."""
    paths, good, _ = folder
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    killed, live = cache_dir / ".0123abcd.k9x.u8.tmp", cache_dir / ".4567ef01.a1b.u8.tmp"
    for tmp in (killed, live):
        tmp.write_bytes(b"\0" * 1024)
    old = killed.stat().st_mtime - cache_mod.STALE_TMP_SECONDS - 60
    os.utime(killed, (old, old))
    c = build_cache(paths, SPEC, cache_dir=cache_dir, workers=1)
    assert c.paths == good
    assert not killed.exists() and live.exists()


def test_array_without_index_is_rebuilt(folder, tmp_path: Path) -> None:
    """A build killed between the array rename and the index write leaves an array nobody trusts."""
    paths, good, _ = folder
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    key = cache_key(paths, SPEC)
    (cache_dir / f"{key}.u8").write_bytes(b"\xff" * (len(good) * 16 * 16))
    c = build_cache(paths, SPEC, cache_dir=cache_dir, workers=1)
    np.testing.assert_array_equal(c.images[0], preprocess(good[0], 16))


@pytest.fixture
def pools(monkeypatch) -> list[tuple]:
    """The worker pools that builds start, by their positional arguments (the number of workers)."""
    started = []

    class RecordingPool(cache_mod.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            started.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "ProcessPoolExecutor", RecordingPool)
    return started


def test_two_workers_give_the_same_cache_as_one(tmp_path: Path, pools: list[tuple]) -> None:
    paths, good, bad = write_folder(tmp_path / "images", n_good=70)  # 73 files: 3 chunks of 32
    serial = build_cache(paths, SPEC, cache_dir=tmp_path / "one", workers=1)
    assert pools == []
    parallel = build_cache(paths, SPEC, cache_dir=tmp_path / "two", workers=2)
    assert pools == [(2,)]
    assert parallel.paths == serial.paths == good
    assert parallel.errors == serial.errors and [e["path"] for e in parallel.errors] == bad
    np.testing.assert_array_equal(parallel.images, serial.images)


def test_films_a_pool_cannot_pay_for_decode_here_into_the_cache_a_pool_builds(
    tmp_path: Path, pools: list[tuple], monkeypatch
) -> None:
    """Starting worker processes costs more than decoding a few dozen films: up to IN_PROCESS_FILMS of them decode
    in this process, over several chunks too, and the cache holds what a pool would have put there."""
    paths, good, bad = write_folder(tmp_path / "images", n_good=cache_mod.IN_PROCESS_FILMS - 3)
    assert len(paths) == cache_mod.IN_PROCESS_FILMS > cache_mod.CHUNK
    here = build_cache(paths, SPEC, cache_dir=tmp_path / "here", workers=2)
    assert pools == []
    monkeypatch.setattr(cache_mod, "IN_PROCESS_FILMS", len(paths) - 1)
    pooled = build_cache(paths, SPEC, cache_dir=tmp_path / "pool", workers=2)
    assert pools == [(2,)]
    assert here.paths == pooled.paths == good and here.errors == pooled.errors and len(here.errors) == len(bad)
    np.testing.assert_array_equal(here.images, pooled.images)
    assert here.checksum == pooled.checksum and here.data_fingerprint == pooled.data_fingerprint


def test_empty_and_all_bad_lists(tmp_path: Path) -> None:
    empty = build_cache([], SPEC, cache_dir=tmp_path / "cache")
    assert empty.images.shape == (0, 16, 16) and empty.paths == [] and empty.errors == []
    (tmp_path / "a.png").write_bytes(b"")
    none_ok = build_cache([str(tmp_path / "a.png")], SPEC, cache_dir=tmp_path / "cache")
    assert none_ok.images.shape == (0, 16, 16) and len(none_ok.errors) == 1
    again = build_cache([str(tmp_path / "a.png")], SPEC, cache_dir=tmp_path / "cache")
    assert again.errors == none_ok.errors


def test_spec_validation_and_round_trip() -> None:
    spec = PreprocessSpec(96, "center-crop")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="policy"):
        PreprocessSpec(224, "stretch")
    with pytest.raises(ValueError, match="size"):
        PreprocessSpec(0)


def test_default_cache_dir_follows_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("PNEUMOSCAN_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "pneumoscan"


def test_a_cache_is_its_owners_alone(tiny_dataset: Path, tmp_path: Path) -> None:
    """The cache holds every film's decoded pixels, and its index every film's path (a name may carry a patient's
    id): the folder it makes and both files are the owner's alone, whatever the umask (the index had been 0644)."""
    umask = os.umask(0o022)
    try:
        cache = build_cache(sorted(map(str, tiny_dataset.rglob("*.jpeg")))[:4], PreprocessSpec(size=32),
                            cache_dir=tmp_path / "made" / "cache")
    finally:
        os.umask(umask)
    folder = tmp_path / "made" / "cache"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {p.suffix: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {".u8": 0o600, ".json": 0o600}
    assert cache.images.shape == (4, 32, 32)
