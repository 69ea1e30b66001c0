"""Preprocessed-image cache: decode a dataset once into one uint8 file that every later run memory-maps.

The cache is keyed by a hash of the file list (path, size, mtime, ctime), the preprocessing spec and the
decoders' versions, so an unchanged dataset opens instantly, and any changed file (or a file made readable by a
chmod or a newer Pillow, pydicom or pydicom plugin) rebuilds it. Files appear atomically and the index is written
last: a killed build never leaves a cache that looks valid, and a later build removes its temporary file once it is
an hour old.
The index records the SHA-256 of the pixel file as built; every open checks it (190 MB for the 5,216 training
films at 192 px: 0.13 s on an idle core with SHA extensions, about 1 s on a loaded 2-core machine), so damaged
bytes of the same size are rebuilt, with a warning, instead of being trained or evaluated on.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import json
import logging
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumoscan.core.atomic import file_stamp, stamp_settled, write_atomic
from pneumoscan.core.digests import bytes_sha256
from pneumoscan.core.logs import progress as progress_bar
from pneumoscan.core.cpus import usable_cores
from pneumoscan.core.names import qualified_name
from pneumoscan.core.options import SPLITS, look_up_option
from pneumoscan.data import pixels, readers
from pneumoscan.data.pixels import DecodeError, transient
from pneumoscan.data.layouts import Discovery, Record, discover
from pneumoscan.data.preprocess import PreprocessSpec

CACHE_VERSION = 12  # a change of the cache's own layout; the decoding code's is in the key by its source
# The distributions whose code decodes a film (pydicom's plugins too: JPEG, JPEG 2000, RLE, JPEG-LS): a new version of
# any may decode a film otherwise, or read one it refused
DECODERS = ("Pillow", "simplejpeg", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle",
            "pyjpegls")
# The decode limits of pneumoscan.data.pixels a site may set, each of which decides which films are refused
_LIMITS = ("MAX_PIXELS", "MAX_DECODED_BYTES", "MAX_HUFFMAN_CODES", "MAX_PROGRESSIVE_BLOCKS", "MAX_SEGMENTS",
           "MAX_J2K_BLOCKS", "MAX_J2K_TILES")
CHUNK = 32  # images per worker task
# the decoders' versions as this process last looked them up: sys.path's folders then (each with its file_stamp),
# when (time.time_ns), the versions (:func:`_decoder_versions`)
_versions_seen: tuple[list[tuple[str, str | None]], int, dict[str, str | None]] | None = None
# Up to this many films decode in this process: starting a pool's two workers (each imports numpy, Pillow and
# pydicom) takes about 0.65 s of CPU and 0.6 s, and 64 films decode here in 0.05 s (224 px JPEGs), 0.3 s (full-size
# JPEGs) or 1.8 s (10 MB DICOMs). On a loaded 2-core machine the pool saved no time up to 2,048 224 px JPEGs or 256
# full-size ones, and saved 0.5-1 s of 4-5 s at 128 such DICOMs; 64 films would start two workers on any machine.
IN_PROCESS_FILMS = 64
# A build writes its temporary file at least once per chunk; one untouched this long belongs to a killed build
STALE_TMP_SECONDS = 3600

log = logging.getLogger(__name__)


@dataclass
class ImageCache:
    """Preprocessed images (read-only memmap) and which file each row holds."""

    images: np.ndarray  # (N, size, size) uint8
    paths: list[str]  # row i holds paths[i]
    errors: list[dict]  # [{"path", "reason"[, "transient": True]}] for files that could not be decoded
    spec: PreprocessSpec
    key: str  # file list, file stats, spec, decoder versions: the cache files' name
    checksum: str = ""  # SHA-256 of the pixels, recorded when built and checked when opened
    _row_of: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._row_of = {path: i for i, path in enumerate(self.paths)}

    @property
    def data_fingerprint(self) -> str:
        """What a bundle records as the data it was trained on: the key and the pixels themselves, so images that
        decode differently (another libjpeg build, say) are other training data."""
        return hashlib.sha256(f"{self.key}:{self.checksum}".encode()).hexdigest()[:32]

    def rows(self, paths: Iterable[str]) -> np.ndarray:
        """Row indices of ``paths``; KeyError (with the decode reason when there is one) for a missing file."""
        out = []
        for path in paths:
            row = self._row_of.get(str(path))
            if row is None:
                reason = next((e["reason"] for e in self.errors if e["path"] == str(path)), None)
                raise KeyError(f"{path}: unreadable ({reason})" if reason else f"{path}: not in this cache")
            out.append(row)
        return np.asarray(out, dtype=np.int64)


def data_checksum(cache: ImageCache, records: Sequence[Record]) -> str:
    """The training data's identity, as the bundle and the checkpoint record it: ``sha256:HEX`` of the cache's pixel
    checksum (the preprocessed films, in the split's order) with each cached film's split, label and subtype. It
    holds no path or file time, unlike the cache's key, so the same films touched, copied or moved give the same
    value, and a changed pixel, label or side another."""
    record_of = {r.path: r for r in records}
    labels = [(record_of[p].split, record_of[p].label, record_of[p].subtype) for p in cache.paths]
    text = json.dumps([cache.checksum, cache.spec.to_dict(), labels], sort_keys=True)
    return bytes_sha256(text.encode())


def default_cache_dir() -> Path:
    return Path(os.environ.get("PNEUMOSCAN_CACHE") or Path.home() / ".cache" / "pneumoscan")


def cache_key(paths: Sequence[str], spec: PreprocessSpec) -> str:
    """Hash of (path as given, absolute path, size, mtime, ctime) of every file, the spec, the decoders'
    versions (:data:`DECODERS`), the registered readers, the source of the code that decodes
    (:func:`_decoding_source`) and the decode limits: any change gives a new cache, so an error stored for an
    unreadable file does not outlive its cause (a chmod changes only the ctime). The cache answers by the paths as
    given, so two spellings of one file are two caches."""
    digest = hashlib.sha256(json.dumps([[CACHE_VERSION, *decoding_versions()], spec.to_dict()],
                                       sort_keys=True).encode())
    for path in paths:
        stamp = file_stamp(path) or "missing"  # reported as an error by the build; an appearance changes the key
        digest.update(f"\0{path}\0{os.path.abspath(path)}\0{stamp}".encode("utf-8", "surrogateescape"))  # any name
    return digest.hexdigest()[:32]


def decoding_versions() -> list:
    """What decides how a file decodes, besides a spec: the decoders' versions, the decode limits, the registered
    readers and the source of the code that decodes. The image cache and the copy search's scans
    (:mod:`pneumoscan.data.copies`) are keyed by it, so neither outlives a change of any."""
    return [_decoder_versions(), _decoding()["limits"], [qualified_name(type(r)) for r in readers.registered()],
            _decoding_source()]


def _decoding_source() -> str:
    """SHA-256 of the source of pneumoscan's code that turns a file into the cached pixels (its decoding, pixel
    checks, preprocessing and every registered reader's module): a fix of how a film decodes gives a new cache. A
    version bumped by hand had been forgotten four times, and a film the fix no longer squashed 2:1 was trained on
    squashed from a cache built before it, while predict and the service read it right."""
    here = Path(__file__).parent
    files = {here / "decode.py", here / "pixels.py", here / "preprocess.py", *(here / "readers").glob("*.py")}
    for reader in readers.registered():  # a plugin's reader too; one defined in a notebook has no file to read
        with contextlib.suppress(TypeError, OSError):
            files.add(Path(inspect.getfile(type(reader))))
    digest = hashlib.sha256()
    for path in sorted(files):
        with contextlib.suppress(OSError):  # "<stdin>", "<ipython-input-3>": its class name is in the key
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _decoder_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`DECODERS`, None for one that is not installed (pydicom then tries
    another plugin, which may decode otherwise). Looked up again only where a folder on ``sys.path`` changed since
    (an install or removal adds or removes a package's metadata folder there) or had changed just before the last
    look-up: importlib.metadata parses each package's whole metadata, 5-10 ms of CPU for the eight, which every
    image cache and every copy search paid (about 1,500 times a run of the test suite)."""
    global _versions_seen
    now, seen = time.time_ns(), _versions_seen  # one tuple, whatever another thread stores meanwhile
    folders = [(entry, file_stamp(entry or ".")) for entry in sys.path]
    if seen is not None and seen[0] == folders and all(stamp is None or stamp_settled(stamp, seen[1])
                                                       for _, stamp in folders):
        return dict(seen[2])
    found: dict[str, str | None] = {}
    for name in DECODERS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    _versions_seen = (folders, now, found)
    return dict(found)


def build_cache(
    paths: Sequence[str],
    spec: PreprocessSpec = PreprocessSpec(),
    cache_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> ImageCache:
    """Open the cache for ``paths`` or build it with ``workers`` processes (default: every core)."""
    paths = [str(p) for p in paths]
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(paths, spec)
    cached = _reusable(cache_dir, key, spec)
    if cached is not None:
        return cached
    # the films' pixels, decoded: a folder made here is its owner's alone (an existing one keeps the site's choice)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _remove_stale_tmp(cache_dir)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{key}.", suffix=".u8.tmp")
    try:
        kept, bad, checksum = _write_pixels(fd, paths, spec, workers or usable_cores(), progress)
        os.replace(tmp, cache_dir / f"{key}.u8")
        _write_index(cache_dir, key, spec, paths, kept, bad, checksum)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    loaded = _load(cache_dir, key, spec)
    assert loaded is not None, "cache just written cannot be read back"
    return loaded


def cached(paths: Sequence[str], spec: PreprocessSpec) -> ImageCache | None:
    """The cache of PATHS under SPEC where one is built and reusable (:func:`build_cache` would open it), else None:
    no film is decoded. Opening it reads its pixels' SHA-256 (with listing a split, 0.5-0.7 s for 5,232 films of
    224 px), a proof by a card's data checksum that is cheap where building it is not."""
    return _reusable(default_cache_dir(), cache_key([str(p) for p in paths], spec), spec)


def _reusable(cache_dir: Path, key: str, spec: PreprocessSpec) -> ImageCache | None:
    """The cache for ``key`` when it is intact and none of its files failed for a reason that may have passed (an
    I/O error, say): such a file is read again, so a cache is never stuck with a passing fault."""
    cached = _load(cache_dir, key, spec)
    if cached is None:
        return None
    retry = sum(bool(e.get("transient")) for e in cached.errors)
    if not retry:
        return cached
    log.info("building the image cache again: %d files' reads failed for a reason that may have passed", retry)
    return None


def _write_pixels(
    fd: int, paths: list[str], spec: PreprocessSpec, workers: int, progress: bool
) -> tuple[int, dict[int, tuple[str, bool]], str]:
    """Decode ``paths`` into the open file ``fd`` (closed on return), one row a readable film in their order;
    returns (rows kept, {row: (reason, transient)} of the files that could not be read, SHA-256 of the rows),
    the file flushed to disk. Each chunk lands in its own rows as soon as it arrives: only a few chunks are ever
    in memory."""
    row_bytes = spec.size * spec.size
    bad: dict[int, tuple[str, bool]] = {}
    with os.fdopen(fd, "r+b") as f, progress_bar(enabled=progress) as bar:
        task = bar.add_task(f"Preprocessing {len(paths)} images", total=len(paths))
        for start, (block, errors) in _decode_all(paths, spec, workers):
            os.pwrite(f.fileno(), block.tobytes(), start * row_bytes)
            bad.update((start + k, (reason, transient)) for k, reason, transient in errors)
            bar.advance(task, len(block))
        kept = _compact(f.fileno(), len(paths), sorted(bad), row_bytes)
        f.truncate(kept * row_bytes)
        f.flush()
        os.fsync(f.fileno())
        f.seek(0)
        return kept, bad, hashlib.file_digest(f, "sha256").hexdigest()


def _write_index(cache_dir: Path, key: str, spec: PreprocessSpec, paths: list[str], kept: int,
                 bad: dict[int, tuple[str, bool]], checksum: str) -> None:
    """The index of the pixel file just renamed into place, written last: until it exists, no build looks
    finished. It records which file each row holds, why each file left out was left out, and the pixels'
    SHA-256, which every open checks."""
    index = {
        "version": CACHE_VERSION,
        "fingerprint": key,
        "spec": spec.to_dict(),
        "shape": [kept, spec.size, spec.size],
        "sha256": checksum,
        "paths": [p for i, p in enumerate(paths) if i not in bad],
        "errors": [{"path": paths[i], "reason": bad[i][0]} | ({"transient": True} if bad[i][1] else {})
                   for i in sorted(bad)],
    }
    # private as the pixel file is (mkstemp's 0600): it names every film; also makes the .u8 rename durable
    write_atomic(cache_dir / f"{key}.json", json.dumps(index).encode(), mode=0o600)


def _remove_stale_tmp(cache_dir: Path) -> None:
    """Delete temporary files that a killed build (SIGKILL, power loss) could not clean up: a whole dataset's
    worth of pixels each. Age, not a process id, decides, so a build running on another machine sharing the
    folder is left alone."""
    now = time.time()
    for tmp in cache_dir.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
        except FileNotFoundError:  # another process removed it first
            pass


class EmptySplit(ValueError):
    """DATA holds films but none of ``split``; ``held``: the splits it has (none: no film has one). What stands in
    for the missing split is each command's to say (:mod:`pneumoscan.cli`): evaluate's, a run's validation films in
    place of test films, fits neither `cache` nor `threshold`, whose threshold test films never choose."""

    def __init__(self, message: str, split: str, held: tuple[str, ...]) -> None:
        super().__init__(message, split, held)  # all three, so that it pickles whole (to another process)
        self.split, self.held = split, held

    def __str__(self) -> str:
        return self.args[0]


def cache_dataset(
    data: Path | str, spec: PreprocessSpec, split: str | None = None, progress: bool = False,
    found: Discovery | None = None, cache: ImageCache | None = None,
) -> tuple[list[Record], ImageCache]:
    """DATA's records (a dataset root, a NORMAL/PNEUMONIA folder or a manifest; with ``split``, that split only)
    and the cache of all of them. Evaluate reads through this, so ``pneumoscan cache --bundle`` builds its cache.
    ``found``: DATA's discovery as the caller made it (default: made here); ``cache``: one the caller opened that
    holds those records among others (``export --int8`` reads its train and val films from one, which its run
    trained on; default: built here)."""
    if split:  # a misspelt split would read as an empty one
        look_up_option(split, SPLITS, "split")
    found = discover(data) if found is None else found
    records = found.split(split) if split else found.records
    if not records and found.records:  # "no images" of a folder full of films read as if it held none
        sides = sorted({r.split for r in found.records} - {""})
        where = (f"they are in the {', '.join(sides)} split{'s' if len(sides) > 1 else ''}" if sides else
                 "none has a split (a folder of class folders, or a manifest without a split column): give no --split")
        raise EmptySplit(f"no images in {data} for split {split!r}: it holds {len(found.records)} films, and "
                         f"{where}", split, tuple(sides))
    if not records:
        raise ValueError(f"no images in {data}" + (f" for split {split!r}" if split else ""))
    return records, cache if cache is not None else build_cache([r.path for r in records], spec, progress=progress)


def _decode_chunk(paths: list[str], spec: PreprocessSpec) -> tuple[np.ndarray, list[tuple[int, str, bool]]]:
    """Worker task: preprocessed images (zeros for unreadable ones) and (offset, reason, transient) per failure."""
    block = np.zeros((len(paths), spec.size, spec.size), np.uint8)
    errors = []
    for k, path in enumerate(paths):
        try:
            block[k] = spec.read(path)
        except DecodeError as e:
            errors.append((k, str(e), transient(e)))
    return block, errors


def _decoding() -> dict:
    """What decodes a file besides the spec: the registered readers, in the order they are asked, and the decode
    limits, all of which a site may change at run time."""
    return {"readers": readers.registered(), "limits": {name: getattr(pixels, name) for name in _LIMITS}}


class _WorkersCannotRead(Exception):
    """Why worker processes cannot decode with this process's readers; the files are then decoded here."""


_CANNOT_ADOPT: str | None = None  # in a worker process: why it could not take the parent's readers (_adopt)


def _for_workers() -> dict:
    """:func:`_decoding` with each reader pickled on its own, so that a worker can name the one it cannot load;
    _WorkersCannotRead naming the first one that cannot even be pickled here (a class defined in a function)."""
    decoding = _decoding()
    pickled = []
    for reader in decoding["readers"]:
        who = f"the reader {reader.name!r} ({qualified_name(type(reader))})"
        try:
            pickled.append((who, pickle.dumps(reader)))
        except Exception as e:  # whatever the reader's own pickling raises
            raise _WorkersCannotRead(f"{who} cannot be pickled ({type(e).__name__}: {e})") from None
    return decoding | {"readers": pickled}


def _adopt(decoding: dict) -> None:
    """Pool initializer: a worker starts from a fresh import, so it takes the parent's readers (a site's own
    included) and limits; otherwise the same files would decode otherwise when enough of them start a pool. A
    reader class that a fresh process cannot import (one defined in a notebook cell or in ``python -c``, whose
    __main__ a worker does not share) would break the pool if raised here, so it is kept for every task to raise."""
    global _CANNOT_ADOPT
    loaded = []
    for who, blob in decoding["readers"]:
        try:
            loaded.append(pickle.loads(blob))
        except Exception as e:  # whatever importing the class or the reader's own unpickling raises
            _CANNOT_ADOPT = f"{who} cannot be loaded in a worker process ({type(e).__name__}: {e})"
            return
    for reader in readers.registered():
        readers.unregister(reader.name)
    for reader in loaded:
        readers.register(reader)
    for name, value in decoding["limits"].items():
        setattr(pixels, name, value)


def _decode_in_worker(paths: list[str], spec: PreprocessSpec) -> tuple[np.ndarray, list[tuple[int, str, bool]]]:
    """Pool task: :func:`_decode_chunk`, or _WorkersCannotRead when this worker could not take the readers."""
    if _CANNOT_ADOPT is not None:
        raise _WorkersCannotRead(_CANNOT_ADOPT)
    return _decode_chunk(paths, spec)


def _decode_all(
    paths: list[str], spec: PreprocessSpec, workers: int
) -> Iterator[tuple[int, tuple[np.ndarray, list[tuple[int, str, bool]]]]]:
    """(first row, chunk result) in completion order: from worker processes when there are more than
    IN_PROCESS_FILMS films, else (or when they cannot decode with this process's readers) from this process."""
    starts = range(0, len(paths), CHUNK)
    workers = min(workers, len(starts)) if len(paths) > IN_PROCESS_FILMS else 1
    done: set[int] = set()
    if workers > 1:
        try:
            for start, result in _decode_in_pool(paths, spec, workers, _for_workers()):
                done.add(start)
                yield start, result
        except _WorkersCannotRead as e:
            log.warning("the image cache decodes in this process, without worker processes: %s; a reader class "
                        "defined at the top level of an importable module decodes in them", e)
    for start in starts:
        if start not in done:
            yield start, _decode_chunk(paths[start : start + CHUNK], spec)


def _decode_in_pool(
    paths: list[str], spec: PreprocessSpec, workers: int, decoding: dict
) -> Iterator[tuple[int, tuple[np.ndarray, list[tuple[int, str, bool]]]]]:
    """:func:`_decode_all` by ``workers`` processes, with at most 2 chunks per worker in flight."""
    # forkserver: safe when the caller already runs threads (torch, uvicorn), unlike fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"), initializer=_adopt,
                             initargs=(decoding,)) as pool:
        todo = iter(range(0, len(paths), CHUNK))
        pending = {}

        def submit() -> None:
            start = next(todo, None)
            if start is not None:
                pending[pool.submit(_decode_in_worker, paths[start : start + CHUNK], spec)] = start

        for _ in range(2 * workers):
            submit()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()
                submit()


def _compact(fd: int, n: int, bad_rows: list[int], row_bytes: int) -> int:
    """Close the gaps left by unreadable files so rows follow the input order; returns the rows kept."""
    if not bad_rows:
        return n
    skip = set(bad_rows)
    dst = bad_rows[0]
    for src in range(bad_rows[0], n):
        if src in skip:
            continue
        if src != dst:
            os.pwrite(fd, os.pread(fd, row_bytes, src * row_bytes), dst * row_bytes)
        dst += 1
    return dst


def _load(cache_dir: Path, key: str, spec: PreprocessSpec) -> ImageCache | None:
    """The cache for ``key`` if its index exists and its array file is the one the index describes (size and
    SHA-256), else None (rebuild); a damaged cache is logged as a warning."""
    index_path, array_path = cache_dir / f"{key}.json", cache_dir / f"{key}.u8"
    if not index_path.exists():
        return None  # never built (or a killed build): nothing to report
    try:
        index = json.loads(index_path.read_text())
        shape = tuple(index["shape"])
        checksum = index["sha256"]
        if shape[1:] != (spec.size, spec.size):
            raise ValueError(f"holds {shape[1:]} images, not {spec.size} px")
        if os.path.getsize(array_path) != int(np.prod(shape)):
            raise ValueError(f"{array_path.name} has {os.path.getsize(array_path):,} bytes, "
                             f"not {int(np.prod(shape)):,}")
        with array_path.open("rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != checksum:
                raise ValueError(f"{array_path.name} is damaged: its SHA-256 differs from the one recorded when it "
                                 "was built")
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("image cache %s in %s is unusable (%s): rebuilding it", key, cache_dir, e)
        return None
    if shape[0] == 0:
        images = np.zeros(shape, np.uint8)
        images.setflags(write=False)
    else:
        images = np.memmap(array_path, dtype=np.uint8, mode="r", shape=shape)
    return ImageCache(images, index["paths"], index["errors"], spec, key, checksum)
