"""One child's films on both sides of a split: the files that are one picture (byte for byte, or re-encoded, resized
or converted: :func:`picture_groups`), the patients that two splits share (:func:`shared_patients`), and the labels
that copies of a film, or a film's own name, contradict (:func:`label_conflicts`).

Split, train, evaluate and its held-out check group films by :func:`picture_groups`, so that copies of a film stay
on one side of a split and count as one patient; the audit reads each file's scan with its header (:func:`scans`,
kept for the next run as theirs are) and groups those scans by the same rule (:func:`picture_groups_of_scans`).

Near duplicates use a 256-bit pHash (``imagehash.phash``, ``hash_size=16``) and link two images when their
hashes differ in at most :data:`NEAR_DUPLICATE_BITS` bits (groups are the connected components), each hashed from
a decode of at least :data:`PHASH_TARGET` px. Measured on the Kermany train folder: distinct images are >= 38 bits
apart, while an original and its 224 px JPEG copy are <= 6 bits apart. The default 64-bit pHash is too coarse for
chest X-rays (different children's films were 2 bits apart), which is why the larger hash is used.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from pneumoscan.core.atomic import file_stamp, locked, stamp_settled, write_atomic
from pneumoscan.core.cpus import usable_cores
from pneumoscan.core.digests import file_sha256, json_sha256
from pneumoscan.core.files import NotRegularFile
from pneumoscan.core.logs import progress
from pneumoscan.core.options import SPLITS
from pneumoscan.data.cache import decoding_versions, default_cache_dir
from pneumoscan.data.decode import image_info, read_gray
from pneumoscan.data.layouts import Layout, Record, name_conflict
from pneumoscan.data.pixels import DecodeError

PHASH_SIZE = 16  # 16x16 = 256-bit hash; see the module docstring for why not the default 8
# pHash looks at a 4*hash_size (64 px) square, which imagehash resamples from the decode. Decoded at 64 px, a
# film came out at a size its own (224 px: 75 px; 160 px: 80 px; a full-size film: another again), and the resampling
# from those moved the hash: a full-size val/ film and its squashed 224 px copy (as train/ holds them) were up to 24
# bits apart, 20 of 48 such copies over NEAR_DUPLICATE_BITS. Decoded at 256 px or more, at most 6 bits; train/'s
# own groups are the same either way.
PHASH_TARGET = 256
NEAR_DUPLICATE_BITS = 10  # max Hamming distance (of 256 bits) for two images to count as near duplicates
SCANS_VERSION = 3  # a change of what a kept scan holds (:func:`scans`) or of its file's layout
_HEADER = ("width", "height", "mode")  # what scan_file reads from a film's header
# A store's scans as this process last read them, by the store's path: (its file_stamp then, when read in ns, the
# scans), the last few stores only. Parsing a store and checking its checksum cost split, train and evaluate about
# 0.1 s a search of 5,000 films, and a run searches several times.
_HELD: dict[Path, tuple[str, int, dict]] = {}
_HELD_STORES = 4

log = logging.getLogger(__name__)


def scan_file(path: str, header: bool = True, sha: str | None = None) -> dict:
    """Everything the audit needs from one file: content hash (``sha`` when the caller has just read it), header
    (unless not ``header``: grouping copies needs none, and reading it is a sixth of a 224 px film's scan),
    perceptual hash (or why it failed). The decoder gets the path, not the bytes, so a .dcm without the DICM
    preamble is still known by its name; the re-reads come from the OS cache."""
    out: dict = {"path": path}
    try:
        out["sha"] = sha or file_sha256(path)  # a FIFO or a device named in a manifest would hang split and audit
    except OSError as e:
        out["error"] = f"cannot read file: {e.strerror or e}"
        return out
    except NotRegularFile as e:
        out["error"] = str(e)
        return out
    try:
        if header:
            info = image_info(path)
            out.update({key: info[key] for key in _HEADER})
        gray = read_gray(path, target=PHASH_TARGET)
        bits = imagehash.phash(Image.fromarray(gray), hash_size=PHASH_SIZE).hash
    except DecodeError as e:  # the decoder turns every bad input into one, with the reason as its message
        out["error"] = str(e)
        return out
    out["phash"] = np.packbits(bits).tobytes()
    return out


EXACT, NEAR = "exact duplicate", "near duplicate"  # the kinds of a picture group (and of a label conflict)


def picture_groups(paths: Sequence[str], workers: int | None = None) -> list[tuple[str, list[str]]]:
    """Groups (>= 2 paths) of films that are one picture, each as (:data:`EXACT` when all share their bytes, else
    :data:`NEAR`, sorted paths): a copy re-encoded, resized or converted (PNG of a JPEG) is as much the same child's
    film as a byte copy, and would leak across a split just the same. A file that cannot be read or decoded is in
    none (two empty or cut-short files are not one picture, and would tie unrelated patients together in a split).
    Threads, not processes: decoding and hashing release the GIL for most of their time, and split
    and evaluate run it in a process that holds torch's threads, where forking is unsafe."""
    return picture_groups_of_scans([s for s in scans(paths, workers) if "error" not in s])


def scans(paths: Sequence[str], workers: int | None = None, header: bool = False) -> list[dict]:
    """:func:`scan_file` of each of ``paths``, in order (each scan names its path as given), from the scans kept
    beside the image cache (:func:`_scans_file`) where they can be. A scan is kept by what its file holds (its
    SHA-256, and its name's suffix, by which a DICOM without its preamble is read) and each file's content by its
    real path and :func:`~pneumoscan.core.atomic.file_stamp`: a file unchanged since it was scanned, under any name
    (a link, a relative path), is not read at all; a file whose path or stamp is new (its dataset moved, copied or
    mounted elsewhere) is hashed, not decoded, when a file of the same bytes was scanned; a changed file has other
    bytes, and is scanned again. evaluate and ``export --int8`` look for copies of a bundle's training films among
    the films given on every run, and decoding those (5,232 films: about 7 s on 2 cores) was most of the held-out
    check's time; the audit read every film again each time. ``header``: with each film's size and mode, as the
    audit reports them; of a film kept without them (a train's scan) the header alone is read, not the pixels. A
    file that could not be read is not kept: the fault may pass (an I/O error)."""
    store = _scans_file()
    held = _read_scans(store)
    reals, stamps = _real_paths(paths), [file_stamp(p) for p in paths]
    known = [held["files"].get(real, {}).get("sha") if stamp is not None and
             held["files"].get(real, {}).get("stamp") == stamp else None for real, stamp in zip(reals, stamps)]
    found = {i: _stored(paths[i], sha, entry) for i, sha in enumerate(known)
             if sha is not None and (entry := _content(held, sha, paths[i])) is not None
             and (not header or _HEADER[0] in entry)}
    todo = [i for i in range(len(paths)) if i not in found]
    read: dict[int, dict] = {}
    if todo:  # a site's first split, train or audit decodes every film here: minutes for tens of thousands, said
        # with a bar; with none to read, no pool of threads and no bar (a run searches several times)
        with ThreadPoolExecutor(max_workers=workers or usable_cores()) as pool, progress() as bar:
            task = bar.add_task(f"Scanning {len(todo)} films for copies", total=len(todo))
            for i, scan in zip(todo, pool.map(lambda i: _scan(paths[i], known[i], held, header), todo)):
                read[i] = scan
                bar.advance(task)
    kept = {i: scan for i, scan in read.items()  # of a file not rewritten while it was read
            if "error" not in scan and stamps[i] is not None and file_stamp(paths[i]) == stamps[i]}
    if kept:
        _keep_scans(store, {reals[i]: {"stamp": stamps[i], "sha": scan["sha"]} for i, scan in kept.items()},
                    [(scan["sha"], _suffix(paths[i]), {"phash": scan["phash"].hex()}
                      | {key: scan[key] for key in _HEADER if key in scan}) for i, scan in kept.items()])
    return [read[i] if i in read else found[i] for i in range(len(paths))]


def _real_paths(paths: Sequence[str]) -> list[str]:
    """``os.path.realpath`` of each of ``paths``, each folder resolved once: realpath looks up every part of every
    path, where a dataset's films share a few folders. A film that is itself a link is resolved whole."""
    folders: dict[str, str] = {}
    reals = []
    for path in paths:
        head, tail = os.path.split(path)
        if tail in ("", ".", ".."):
            reals.append(os.path.realpath(path))
            continue
        if head not in folders:
            folders[head] = os.path.realpath(head or ".")
        real = os.path.join(folders[head], tail)
        reals.append(os.path.realpath(real) if os.path.islink(real) else real)
    return reals


def _suffix(path: str) -> str:
    """What of a file's name its decode depends on: the suffix a reader claims it by when no magic bytes match."""
    return Path(path).suffix.lower()


def _content(held: dict, sha: str, path: str) -> dict | None:
    """The scan kept of a file of ``sha``'s bytes named as ``path`` is, None when there is none."""
    return held["scans"].get(sha, {}).get(_suffix(path))


def _scan(path: str, sha: str | None, held: dict, header: bool) -> dict:
    """The scan of ``path`` whose bytes are ``sha`` (None: not known, hashed here): kept in ``held`` for those bytes
    (with its header read here when ``header`` asks for one kept without), else :func:`scan_file`."""
    if sha is None:
        try:
            sha = file_sha256(path)
        except (OSError, NotRegularFile):
            return scan_file(path, header=header)  # which says why
    entry = _content(held, sha, path)
    if entry is None:
        return scan_file(path, header=header, sha=sha)
    if not header or _HEADER[0] in entry:
        return _stored(path, sha, entry)
    try:
        info = image_info(path)
    except DecodeError:  # scanned whole, which says why
        return scan_file(path, header=header, sha=sha)
    return _stored(path, sha, entry) | {key: info[key] for key in _HEADER}


def _stored(path: str, sha: str, entry: dict) -> dict:
    return {"path": path, "sha": sha, "phash": bytes.fromhex(entry["phash"])} | {
        key: entry[key] for key in _HEADER if key in entry}


def _scans_file() -> Path:
    """Where the scans are kept: the image cache's folder, under a name made of what decides a scan (the hash's
    size, the decode's, imagehash's version and how films decode: :func:`~pneumoscan.data.cache.decoding_versions`),
    so that no scan outlives a change of any."""
    # the version of the imagehash that hashes here, as the model card reads a loaded library's (no look-up of the
    # installed packages' metadata on each search)
    hasher = getattr(imagehash, "__version__", None) or importlib.metadata.version("ImageHash")
    what = [SCANS_VERSION, PHASH_SIZE, PHASH_TARGET, hasher, decoding_versions()]
    return default_cache_dir() / f"scans-{json_sha256(what).partition(':')[2][:32]}.json"


def _read_scans(store: Path, warn: bool = True) -> dict:
    """The kept scans: ``files`` (each file's content by its real path: ``{"stamp", "sha"}``) and ``scans`` (by SHA-256
    and suffix: ``{"phash"[, "width", "height", "mode"]}``), with ``checked``, how many files it held when they were
    last stat'ed (:func:`_keep_scans`; 0 in a store written without it); none when there are none or they cannot be
    read: a file cut short, or whose scans differ from the checksum written with them (damaged bytes that still parse
    would give films other hashes, and split or evaluate other copies), is made anew, with a warning (``warn``)."""
    read_ns = time.time_ns()  # before the stamp: a write after this has times past it
    stamp = file_stamp(store)
    memo = _HELD.get(store)
    if memo is not None and stamp is not None and memo[0] == stamp and stamp_settled(stamp, memo[1]):
        return memo[2]
    try:
        held = json.loads(store.read_bytes())
        kept = {"files": held["files"], "scans": held["scans"]}
        if json_sha256(kept) != held["sha256"]:
            raise ValueError("its scans differ from the checksum written with them")
        kept |= {"checked": int(held.get("checked", 0))}  # outside the checksum: it decides no scan
    except FileNotFoundError:
        return {"files": {}, "scans": {}, "checked": 0}
    except (OSError, ValueError, KeyError, TypeError) as e:
        if warn:
            log.warning("the copy search's scans in %s cannot be read (%s): the films are scanned again and the "
                        "file made anew", store, e)
        return {"files": {}, "scans": {}, "checked": 0}
    if stamp is not None and file_stamp(store) == stamp:  # the scans of the file that stamp is of
        _hold(store, stamp, read_ns, kept)
    return kept


def _hold(store: Path, stamp: str, read_ns: int, held: dict) -> None:
    """Keep ``held``, the scans of ``store`` as it was at ``stamp``, read from ``read_ns`` on, for
    :func:`_read_scans`, which uses them once that stamp's times are settled before the read; never changed once
    kept (callers build new dicts). No lock: each step is one operation on the dict, which threads may interleave,
    and a process forked meanwhile (a data loader's workers) inherits no lock held."""
    _HELD.pop(store, None)
    _HELD[store] = (stamp, read_ns, held)
    for old in list(_HELD)[:-_HELD_STORES]:
        _HELD.pop(old, None)


def _keep_scans(store: Path, files: dict[str, dict], new: list[tuple[str, str, dict]]) -> None:
    """Add ``files`` (real path: its stamp and SHA-256) and the scans ``new`` ((SHA-256, suffix, scan)) to those kept
    in ``store``, written whole (:func:`~pneumoscan.core.atomic.write_atomic`) under the folder's lock
    (:func:`~pneumoscan.core.atomic.locked`) to the scans it holds then, less the scans of bytes no file kept holds:
    of processes that scanned at once, each adds its own to the others'. The files gone or changed since they were
    kept are dropped once the store holds more than twice the files it held when they were last stat'ed: a stat of
    every file on each write cost a store of 10,000 films 10,000 stats a film added, and a file's scan is used only
    where its path and stamp match (:func:`scans`), dropped or not; so a film added costs two stats at most, over
    the writes. When the folder cannot be written, these scans are left out, to be made again next time."""
    try:
        store.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # as the image cache makes it: its owner's alone
        with locked(store.parent):
            held = _read_scans(store, warn=False)
            kept, checked = held["files"] | files, held["checked"]
            if len(kept) > 2 * checked:
                kept = {p: e for p, e in held["files"].items()
                        if p not in files and file_stamp(p) == e["stamp"]} | files
                checked = len(kept)
            shas = {e["sha"] for e in kept.values()}
            scans = {sha: by for sha, by in held["scans"].items() if sha in shas}
            for sha, suffix, scan in new:  # a scan kept with its header (the audit's) keeps it where this one has none
                by = scans.get(sha, {})  # new dicts: those read are held (_hold) as they are
                scans[sha] = by | {suffix: by.get(suffix, {}) | scan}
            held = {"files": kept, "scans": scans}
            # private as the image cache's index is: it names every film
            write_atomic(store, json.dumps(held | {"checked": checked, "sha256": json_sha256(held)}).encode(),
                         mode=0o600)
    except OSError as e:
        log.warning("the copy search's scans cannot be kept in %s (%s): the films are scanned again next time",
                    store, e)


def picture_groups_of_scans(scans: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """:func:`picture_groups` of the files :func:`scan_file` read."""
    members: dict[int, list[dict]] = defaultdict(list)
    for scan, component in zip(scans, _near_duplicate_components([s["phash"] for s in scans])):
        members[int(component)].append(scan)
    groups = [(EXACT if len({s["sha"] for s in group}) == 1 else NEAR, sorted(s["path"] for s in group))
              for group in members.values() if len(group) > 1]
    return sorted(groups, key=lambda g: g[1])


def _near_duplicate_components(hashes: list[bytes]) -> np.ndarray:
    """Component label per hash, linking hashes at most NEAR_DUPLICATE_BITS apart. Pigeonhole: two such hashes agree
    exactly on at least one of NEAR_DUPLICATE_BITS + 1 bands of their bits, so only pairs that share a band are
    measured (train/'s 5,216 films: about 4 thousand pairs instead of 13.6 million; comparing all pairs took 5 s at
    20,000 films and grew with their square)."""
    # scipy here: the service reaches this module through the model card's imports and never groups films
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(hashes)
    if n == 0:
        return np.zeros(0, dtype=int)
    raw = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(n, -1)
    words, bits = raw.view(np.uint64), np.unpackbits(raw, axis=1)
    bands = np.array_split(np.arange(bits.shape[1]), NEAR_DUPLICATE_BITS + 1)
    pairs = np.concatenate([_sharing(_band_keys(bits[:, band]), words) for band in bands], axis=1)
    # each pair once, as one number i * n + j: np.unique along axis 1 sorted the pairs as raw bytes, 2 s for the 2
    # million pairs of 600 copies of one film, where the numbers take 0.1 s
    i, j = np.divmod(np.unique(pairs[0] * n + pairs[1]), n) if pairs.size else pairs
    near = np.bitwise_count(words[i] ^ words[j]).sum(axis=1) <= NEAR_DUPLICATE_BITS
    graph = coo_matrix((np.ones(int(near.sum()), dtype=np.int8), (i[near], j[near])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _band_keys(bits: np.ndarray) -> np.ndarray:
    """One band's bits of each hash as one number (a band of up to 64 bits), else as rows of bytes: np.unique of
    rows of bytes sorts them as raw bytes, most of a 5,000-film search's grouping (55 ms of 80), where numbers
    sort in a few."""
    packed = np.packbits(bits, axis=1)
    if packed.shape[1] > 8:
        return packed
    padded = np.zeros((len(packed), 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(">u8").ravel()


def _sharing(keys: np.ndarray, words: np.ndarray, crowd: int = 512) -> np.ndarray:
    """(2, m) pairs i < j of rows whose ``keys`` (one band's bits: :func:`_band_keys`) are equal. A group larger than
    ``crowd`` (many copies of one film) gives only its pairs that are near in full (:func:`_near_among`), not every
    pair."""
    _, group = np.unique(keys, axis=0 if keys.ndim > 1 else None, return_inverse=True)
    order = np.argsort(group.ravel(), kind="stable")
    sorted_group = group.ravel()[order]
    sizes = np.bincount(sorted_group)
    small = sizes[sorted_group] <= crowd
    found = [np.zeros((2, 0), dtype=np.int64)]
    for offset in range(1, min(int(sizes.max()), crowd)):  # row p of the sorted order with row p + offset
        same = (sorted_group[:-offset] == sorted_group[offset:]) & small[:-offset]
        p = np.flatnonzero(same)
        found.append(np.sort(np.stack([order[p], order[p + offset]]), axis=0))
    for g in np.flatnonzero(sizes > crowd):
        found.append(_near_among(words, order[sorted_group == g]))
    return np.concatenate(found, axis=1)


def _near_among(words: np.ndarray, members: np.ndarray) -> np.ndarray:
    """(2, m) pairs i < j of ``members`` at most NEAR_DUPLICATE_BITS apart, all pairs measured in row blocks (which
    bound memory)."""
    members = np.sort(members)
    rows, cols = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for start in range(0, len(members), 256):
        block = words[members[start : start + 256]]
        dist = np.zeros((len(block), len(members)), dtype=np.int32)
        for k in range(words.shape[1]):  # one 64-bit word at a time keeps the XOR temporary small
            dist += np.bitwise_count(block[:, k, None] ^ words[members][None, :, k])
        i, j = np.nonzero(dist <= NEAR_DUPLICATE_BITS)
        keep = start + i < j
        rows.append(members[start + i[keep]])
        cols.append(members[j[keep]])
    return np.stack([np.concatenate(rows), np.concatenate(cols)])


def label_conflicts(records: Sequence[Record], groups: Iterable[tuple[str, Sequence[str]]],
                    layout: Layout | None = None) -> list[dict]:
    """Films whose labels contradict their own names (:func:`~pneumoscan.data.layouts.name_conflict`) or each other:
    a ``groups`` entry (kind, paths), a group of duplicates, whose members carry different labels or pneumonia
    subtypes (an unknown subtype contradicts none), so the same picture would be taught or scored as both. Each is
    ``{"kind", "paths", "labels", "subtypes", "reason"}`` (kind "name" or the group's). Reported, never resolved:
    which label is right is for a person to tell."""
    def conflict(kind: str, members: Sequence[Record], reason: str) -> dict:
        return {"kind": kind, "paths": [r.path for r in members], "labels": [r.label for r in members],
                "subtypes": [r.subtype for r in members], "reason": reason}

    found = [conflict("name", [rec], reason) for rec in records if (reason := name_conflict(rec, layout))]
    by_path = {r.path: r for r in records}
    for kind, paths in groups:
        members = [by_path[p] for p in paths if p in by_path]
        if len({r.label for r in members}) > 1 or len({r.subtype for r in members if r.subtype}) > 1:
            labelled = sorted({f"{r.label} {r.subtype}" if r.label == "PNEUMONIA" and r.subtype else r.label
                               for r in members})
            found.append(conflict(kind, members, f"one picture labelled {' and '.join(labelled)}"))
    return found


def shared_patients(records: Sequence[Record]) -> dict[str, list[str]]:
    """The patients with films in two splits, for every pair of splits present ("train/test": [...], the splits
    in train, val, test order, then any other): one child on both sides of a split leaks between them."""
    patients: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        patients[rec.split].add(rec.patient)
    present = [s for s in SPLITS if s in patients] + sorted(set(patients) - set(SPLITS))
    return {f"{a}/{b}": sorted(patients[a] & patients[b]) for a, b in itertools.combinations(present, 2)}
