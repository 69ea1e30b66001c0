"""Dataset audit: what is in a dataset before anyone trains on it.

Counts per split/class/subtype, image sizes and modes, unreadable files, exact duplicates (content hash),
near duplicates (perceptual hash), leakage across splits (the same patient, or the same picture, in two
splits) and label conflicts (a file name, or a duplicate, contradicting a film's label: :func:`label_conflicts`).
One pass per file in a process pool reads everything, so the 5,216-image train folder takes seconds.

Near duplicates use a 256-bit pHash (``imagehash.phash``, ``hash_size=16``) and link two images when their
hashes differ in at most :data:`NEAR_DUPLICATE_BITS` bits (groups are the connected components). Measured on
the Kermany train folder: distinct images are >= 40 bits apart, while an original and its 224 px JPEG copy are
<= 6 bits apart. The default 64-bit pHash is too coarse for chest X-rays (different children's films were 2 bits
apart), which is why the larger hash is used.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pneumoscan.core.atomic import write_atomic
from pneumoscan.core.names import shown
from pneumoscan.core.options import SPLITS, usable_cores
from pneumoscan.data.decode import image_info, open_regular, read_gray
from pneumoscan.data.layouts import (HEADER_PATIENT, LABELS, SUBTYPES, Discovery, Layout, Record, layouts, name_conflict,
                                     own_patient)
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.preprocess import resize, spread

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from rich.console import Group
    from rich.table import Table

    from pneumoscan.data.transforms import Augment

PHASH_SIZE = 16  # 16x16 = 256-bit hash; see the module docstring for why not the default 8
PHASH_TARGET = 64  # pHash looks at a 4*hash_size square, so decoding at 64 px loses nothing
NEAR_DUPLICATE_BITS = 10  # max Hamming distance (of 256 bits) for two images to count as near duplicates
ALL = "all"  # report key for the records of a single folder (split "")
UNKNOWN = "unknown"  # report key for a pneumonia image whose file name does not give the subtype


def _split_key(split: str) -> str:
    return split or ALL


def _subtype_key(subtype: str) -> str:
    return subtype or UNKNOWN


def _sha256(path: str) -> str:
    """Hex SHA-256 of a regular file's bytes, opened as decoding opens it (:func:`open_regular`): a manifest may
    name a FIFO or a device, which would hang split and audit; DecodeError names what it is instead."""
    with open_regular(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _scan(path: str, header: bool = True) -> dict:
    """Everything the audit needs from one file: content hash, header (unless not ``header``: grouping copies needs
    none, and reading it is a sixth of a 224 px film's scan), perceptual hash (or why it failed). The decoder gets
    the path, not the bytes, so a .dcm without the DICM preamble is still known by its name; the re-reads come from
    the OS cache."""
    out: dict = {"path": path}
    try:
        out["sha"] = _sha256(path)
    except OSError as e:
        out["error"] = f"cannot read file: {e.strerror or e}"
        return out
    except DecodeError as e:
        out["error"] = str(e)
        return out
    try:
        if header:
            info = image_info(path)
            out.update(width=info["width"], height=info["height"], mode=info["mode"])
        gray = read_gray(path, target=PHASH_TARGET)
        bits = imagehash.phash(Image.fromarray(gray), hash_size=PHASH_SIZE).hash
    except DecodeError as e:  # the decoder turns every bad input into one, with the reason as its message
        out["error"] = str(e)
        return out
    out["phash"] = np.packbits(bits).tobytes()
    return out


def _groups(keys: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Sorted groups (>= 2 paths) of paths that share a key."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for path, key in keys:
        by_key[key].append(path)
    return sorted(sorted(g) for g in by_key.values() if len(g) > 1)


EXACT, NEAR = "exact duplicate", "near duplicate"  # the kinds of a picture group (and of a label conflict)


def picture_groups(paths: Sequence[str], workers: int | None = None) -> list[tuple[str, list[str]]]:
    """Groups (>= 2 paths) of films that are one picture, each as (:data:`EXACT` when all share their bytes, else
    :data:`NEAR`, sorted paths): a copy re-encoded, resized or converted (PNG of a JPEG) is as much the same child's
    film as a byte copy, and would leak across a split just the same. A file that cannot be read or decoded is in
    none (two empty or cut-short files are not one picture, and would tie unrelated patients together in a split).
    Threads, not the audit's processes: decoding and hashing release the GIL for most of their time, and split
    and evaluate run it in a process that holds torch's threads, where forking is unsafe."""
    with ThreadPoolExecutor(max_workers=workers or usable_cores()) as pool:
        scans = list(pool.map(_scan_unchanged, paths))
    return _picture_groups([s for s in scans if "error" not in s])


def _scan_unchanged(path: str) -> dict:
    """:func:`_scan` of a file, read once a process while it is unchanged (the same inode, size and modification
    time): evaluate groups its films twice, with the training films for its held-out check and among themselves for
    its copies, and a full-size test split's decoding is most of that time."""
    try:
        stat = os.stat(path)
        return _scan_of(path, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    except OSError:
        return _scan(path, header=False)  # which says why
    except _Unread as e:
        return e.scan


class _Unread(Exception):
    """A file :func:`_scan_of` could not read, raised so that it is not kept: the fault may pass (an I/O error)."""

    def __init__(self, scan: dict) -> None:
        super().__init__(scan["error"])
        self.scan = scan


@functools.lru_cache(maxsize=2**17)  # a scan is a few hundred bytes: 131,072 films in about 40 MB
def _scan_of(path: str, device: int, inode: int, size: int, modified_ns: int) -> dict:
    """:func:`_scan` without the header, kept for one version of one file (:func:`_scan_unchanged`)."""
    scan = _scan(path, header=False)
    if "error" in scan:
        raise _Unread(scan)
    return scan


def _picture_groups(scans: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """:func:`picture_groups` of the files :func:`_scan` read."""
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
    n = len(hashes)
    if n == 0:
        return np.zeros(0, dtype=int)
    raw = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(n, -1)
    words, bits = raw.view(np.uint64), np.unpackbits(raw, axis=1)
    bands = np.array_split(np.arange(bits.shape[1]), NEAR_DUPLICATE_BITS + 1)
    pairs = np.concatenate([_sharing(np.packbits(bits[:, band], axis=1), words) for band in bands], axis=1)
    i, j = np.unique(pairs, axis=1) if pairs.size else pairs
    near = np.bitwise_count(words[i] ^ words[j]).sum(axis=1) <= NEAR_DUPLICATE_BITS
    graph = coo_matrix((np.ones(int(near.sum()), dtype=np.int8), (i[near], j[near])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _sharing(keys: np.ndarray, words: np.ndarray, crowd: int = 512) -> np.ndarray:
    """(2, m) pairs i < j of rows whose ``keys`` (one band's bits) are equal. A group larger than ``crowd`` (many
    copies of one film) gives only its pairs that are near in full (:func:`_near_among`), not every pair."""
    _, group = np.unique(keys, axis=0, return_inverse=True)
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


def _size_stats(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def shared_patients(records: Sequence[Record]) -> dict[str, list[str]]:
    """The patients with films in two splits, for every pair of splits present ("train/test": [...], the splits
    in train, val, test order, then any other): one child on both sides of a split leaks between them."""
    patients: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        patients[rec.split].add(rec.patient)
    present = [s for s in SPLITS if s in patients] + sorted(set(patients) - set(SPLITS))
    return {f"{a}/{b}": sorted(patients[a] & patients[b]) for a, b in itertools.combinations(present, 2)}


def _patient_examples(records: Sequence[Record], overlap: dict[str, list[str]]) -> dict[str, list[str]]:
    """For each patient in two splits, their first film (by path) in each split they are in: an id from a DICOM
    header is a digest (:func:`~pneumoscan.data.layouts.header_patient`), which names no file to look at."""
    shared = {p for ids in overlap.values() for p in ids}
    first: dict[str, dict[str, str]] = defaultdict(dict)
    for rec in sorted(records, key=lambda r: r.path):
        if rec.patient in shared:
            first[rec.patient].setdefault(rec.split, rec.path)
    return {p: list(films.values()) for p, films in sorted(first.items())}


def audit(discovery: Discovery, workers: int | None = None) -> dict:
    """A JSON-serialisable report on ``discovery`` (see the module docstring); bad files are listed, not raised."""
    start = time.perf_counter()
    records = discovery.records
    if not records:  # "0 images audited" would pass for a clean dataset
        raise ValueError("no images to audit" + (f" ({len(discovery.skipped)} files skipped as no image)"
                                                 if discovery.skipped else ""))
    scans = _scan_files([r.path for r in records], workers or usable_cores())
    counts, subtypes = _class_counts(records)
    sizes, modes, unreadable, hashed = _image_stats(records, scans)
    exact, near, conflicts = _duplicate_findings(records, hashed, layouts().get(discovery.layout))
    return {
        "n_images": len(records),
        "counts": counts,
        "subtypes": subtypes,
        "sizes": sizes,
        "modes": modes,
        "unreadable": unreadable,
        "skipped": list(discovery.skipped),
        "duplicate_groups": exact,
        "near_duplicate_groups": near,
        "near_duplicate_max_bits": NEAR_DUPLICATE_BITS,
        "patient_overlap": (overlap := shared_patients(records)),
        # a film of each such patient in each of its splits: a DICOM header's id is shown only as its digest
        "patient_examples": _patient_examples(records, overlap),
        # films whose patient nothing names (file name, manifest, DICOM header): the overlap cannot count them
        "without_patient_id": sum(map(own_patient, records)),
        "cross_split_near_duplicates": [g for g in near if len(g["splits"]) > 1],
        "label_conflicts": conflicts,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _scan_files(paths: list[str], workers: int) -> list[dict]:
    """:func:`_scan` of every file, in order, by ``workers`` processes: one pass a file reads all the audit needs,
    and chunks of about an eighth of a worker's share keep the pool busy to the end."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_scan, paths, chunksize=max(1, len(paths) // (workers * 8))))


def _class_counts(records: Sequence[Record]) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """(films per split and label, films per split and pneumonia subtype): the report's class balance, every label
    and subtype present in each split, at 0 when it has none."""
    counts: dict[str, dict[str, int]] = {}
    subtypes: dict[str, dict[str, int]] = {}
    for rec in records:
        key = _split_key(rec.split)
        counts.setdefault(key, dict.fromkeys(LABELS, 0))[rec.label] += 1
        sub = subtypes.setdefault(key, dict.fromkeys(SUBTYPES, 0))
        sub[_subtype_key(rec.subtype)] = sub.get(_subtype_key(rec.subtype), 0) + 1
    return counts, subtypes


def _image_stats(
    records: Sequence[Record], scans: Sequence[dict]
) -> tuple[dict[str, dict], dict[str, int], list[dict], list[tuple[Record, dict]]]:
    """(sizes per split, films per image mode, the unreadable files with their reasons, (record, scan) of every
    readable film): an unreadable file counts in no size or mode, and in no duplicate group."""
    widths: dict[str, list[int]] = defaultdict(list)
    heights: dict[str, list[int]] = defaultdict(list)
    modes: Counter[str] = Counter()
    unreadable, hashed = [], []
    for rec, scan in zip(records, scans):
        if "error" in scan:
            unreadable.append({"path": rec.path, "reason": scan["error"]})
            continue
        widths[_split_key(rec.split)].append(scan["width"])
        heights[_split_key(rec.split)].append(scan["height"])
        modes[scan["mode"]] += 1
        hashed.append((rec, scan))
    sizes = {k: {"width": _size_stats(widths[k]), "height": _size_stats(heights[k])} for k in widths}
    return sizes, dict(modes), unreadable, hashed


def _duplicate_findings(records: Sequence[Record], hashed: Sequence[tuple[Record, dict]],
                        layout: Layout | None) -> tuple[list[list[str]], list[dict], list[dict]]:
    """(groups of byte-identical files, picture groups with the splits they span, label conflicts) among the
    readable films of ``hashed``; the labels of all ``records`` are weighed for the conflicts."""
    sha = {s["path"]: s["sha"] for _, s in hashed}
    splits: dict[str, set[str]] = defaultdict(set)
    for rec, _ in hashed:
        splits[rec.path].add(_split_key(rec.split))
    groups = _picture_groups([s for _, s in hashed])
    near = [{"paths": paths, "splits": sorted(set().union(*(splits[p] for p in paths))), "exact": kind == EXACT}
            for kind, paths in groups]
    return _groups(sha.items()), near, label_conflicts(records, groups, layout)


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


def audit_figure(report: dict, discovery: Discovery, out_png: Path, per_class: int = 6) -> None:
    """Class balance (bars per split and class, pneumonia stacked by subtype) above a grid of sample images,
    one row of ``per_class`` images per class and subtype. A plain Figure, as the report's: no pyplot state, no
    backend switched for the caller's process."""
    from matplotlib.figure import Figure

    bad = {u["path"] for u in report["unreadable"]}
    readable = sorted((r for r in discovery.records if r.path not in bad), key=lambda r: r.path)
    rows = [
        (label, sub, pool)
        for label, subs in (("NORMAL", ("normal",)), ("PNEUMONIA", ("bacteria", "virus", "")))
        for sub in subs
        if (pool := [r for r in readable if r.label == label and r.subtype == sub])
    ]
    if not readable:
        raise ValueError("no readable images to draw a figure of")
    fig = Figure(figsize=(max(8, 1.6 * per_class), 3.5 + 1.8 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(1 + len(rows), per_class, height_ratios=[2] + [1] * len(rows))
    _draw_class_balance(fig.add_subplot(grid[0, :]), report)
    for row, (label, sub, pool) in enumerate(rows, start=1):
        _draw_samples([fig.add_subplot(grid[row, col]) for col in range(per_class)], label, sub, pool)
    # the format the name asks for (audit.pdf, audit.svg): the temporary name has none; its folder made, as
    # augmented_grid's and evaluate's are
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_png, lambda path: fig.savefig(path, format=Path(out_png).suffix[1:] or "png", dpi=110))


def _draw_class_balance(ax: Axes, report: dict) -> None:
    """The figure's bar chart: per split, a bar for each class, pneumonia stacked by subtype, each segment counted
    where it fits and each stack's total on top, so an imbalance and its size read at a glance."""
    splits = list(report["counts"])
    x = np.arange(len(splits))
    width = 0.38
    colors = {"normal": "#4c72b0", "bacteria": "#dd8452", "virus": "#c44e52", UNKNOWN: "#8c8c8c"}
    tallest = max(max(c.values()) for c in report["counts"].values()) or 1
    for offset, label in ((-width / 2, "NORMAL"), (width / 2, "PNEUMONIA")):
        totals = np.array([report["counts"][s][label] for s in splits], dtype=float)
        bottom = np.zeros(len(splits))
        bars = None
        for part in ["normal"] if label == "NORMAL" else ["bacteria", "virus", UNKNOWN]:
            heights = np.array([report["subtypes"][s].get(part, 0) for s in splits], dtype=float)
            if not heights.any():
                continue
            bars = ax.bar(x + offset, heights, width, bottom=bottom, color=colors[part], label=part)
            # segment counts only where they add to the total and fit inside the bar
            inner = [f"{h:.0f}" if 0.04 * tallest <= h < t else "" for h, t in zip(heights, totals)]
            ax.bar_label(bars, labels=inner, label_type="center", fontsize=8)
            bottom += heights
        if bars is not None:  # the total goes on top of the stack
            ax.bar_label(bars, labels=[f"{label} {t:.0f}" for t in totals], fontsize=8, padding=2)
    ax.set_xticks(x, splits)
    ax.set_ylabel("images")
    ax.set_title("Class balance per split (pneumonia stacked by subtype)")
    ax.legend(loc="upper right", fontsize=8)
    ax.margins(y=0.15)


def _draw_samples(cells: Sequence[Axes], label: str, sub: str, pool: Sequence[Record]) -> None:
    """One row of the figure: films of one class and subtype spread over ``pool`` (different patients, not one),
    each titled with its name; cells beyond the pool's films stay blank."""
    picks = spread(pool, len(cells))
    for col, cell in enumerate(cells):
        cell.axis("off")
        if col < len(picks):
            rec = picks[col]
            cell.imshow(read_gray(rec.path, target=256), cmap="gray", vmin=0, vmax=255)
            # escaped (a name of other bytes than UTF-8 stops the font engine) and never read as TeX ($...$)
            cell.set_title(f"{label} {_subtype_key(sub)}\n{shown(Path(rec.path).name)}", fontsize=6,
                           parse_math=False, usetex=False)


GUTTER = (200, 30, 30)  # the grid's border colour: never a grey level, so each tile stands out from it


def augmented_grid(discovery: Discovery, n: int, out_png: Path, size: int = 192, augment: Augment | None = None,
                   policy: str = "squash", seed: int = 0) -> Path:
    """A PNG grid of ``n`` training films as the model sees them after the training transform (``augment``, an
    :class:`~pneumoscan.data.transforms.Augment`; the default recipe's when None; ``Augment.off()`` for the films as
    cached): decoded, resized to ``size`` by ``policy``, augmented with a fixed ``seed``, shown on the [0, 1]
    grey range before normalisation. Films are spread evenly over the training split (everything when DATA
    has no splits); tiles sit on a red gutter, so the grid shows how strong the augmentation is at a glance."""
    import torch

    from pneumoscan.data.transforms import Augment, train_transform

    if n < 1:
        raise ValueError(f"--augmented needs at least one image, got {n}")
    records = [r for r in discovery.records if r.split == "train"] or list(discovery.records)
    picks = spread(sorted(records, key=lambda r: r.path), n)
    if len(picks) < n:  # the same films again: each pass draws new random changes
        picks = [picks[i % len(picks)] for i in range(n)] if picks else []
    if not picks:
        raise ValueError("no images to draw augmented samples of")
    transform = train_transform(size, 0.0, 1.0, augment if augment is not None else Augment())
    cols = math.ceil(math.sqrt(n))
    rows, gap = math.ceil(n / cols), max(2, size // 32)
    grid = Image.new("RGB", (cols * (size + gap) + gap, rows * (size + gap) + gap), GUTTER)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, rec in enumerate(picks):
            pixels = torch.from_numpy(resize(read_gray(rec.path, target=size), size, policy))[None]
            shown = (transform(pixels)[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            grid.paste(Image.fromarray(shown).convert("RGB"), (gap + (i % cols) * (size + gap), gap + (i // cols) * (size + gap)))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    image_format = Image.registered_extensions().get(out_png.suffix.lower())
    if image_format is None:
        raise ValueError(f"{out_png}: no image format has the ending {out_png.suffix!r} (use .png)")
    write_atomic(out_png, lambda path: grid.save(path, format=image_format))
    return out_png


def format_audit(report: dict) -> Group:
    """A rich renderable for the CLI: one table row per split for the counts, one for the image sizes, then one
    line per finding. Two narrow tables fit an 80-column terminal or pipe, and a cell that still does not fit
    folds onto a second line rather than losing its end."""
    from rich.console import Group
    from rich.text import Text

    return Group(*_count_tables(report),
                 *(Text(line, style="bold red" if warn else "") for line, warn in _finding_lines(report)))


def _count_tables(report: dict) -> tuple[Table, Table]:
    """(films per split by label and subtype, image sizes per split): the two tables above the findings, a subtype
    column only where some split has films of it."""
    from rich.table import Table

    subtype_cols = [s for s in (*SUBTYPES, UNKNOWN) if any(report["subtypes"][k].get(s) for k in report["subtypes"])]
    table = Table(title=f"{report['n_images']} images audited in {report['seconds']:.1f} s")
    sizes = Table(title="image sizes in pixels")
    for t in (table, sizes):
        t.add_column("split", overflow="fold")
    for col in (*LABELS, *subtype_cols):
        table.add_column(col, justify="right", overflow="fold")
    for col in ("width min/median/max", "height min/median/max"):
        sizes.add_column(col, justify="right", overflow="fold")
    for split, counts in report["counts"].items():
        table.add_row(
            split,
            *(str(counts[label]) for label in LABELS),
            *(str(report["subtypes"][split].get(s, 0)) for s in subtype_cols),
        )
        size = report["sizes"].get(split)
        sizes.add_row(split, *(
            f"{size[d]['min']}/{size[d]['median']:g}/{size[d]['max']}" if size else "-" for d in ("width", "height")
        ))
    return table, sizes


def _finding_lines(report: dict) -> list[tuple[str, bool]]:
    """(line, whether it is a finding to look at) for each line under the tables: what is missing, conflicting,
    unreadable or repeated, the first ten of each listed."""
    dup = report["duplicate_groups"]
    near = report["near_duplicate_groups"]
    n_exact_near = sum(g["exact"] for g in near)
    cross = report["cross_split_near_duplicates"]
    conflicts = report["label_conflicts"]
    return [
        *((f"no {label} film in {split} ({sum(counts.values())} films): the class is missing", True)
          for split, counts in report["counts"].items() if sum(counts.values()) for label in LABELS
          if not counts[label]),
        (f"label conflicts (a name or a duplicate contradicting a label): {len(conflicts)}", bool(conflicts)),
        *((f"  {c['kind']}: {' | '.join(map(shown, c['paths']))}: {c['reason']}", True) for c in conflicts[:10]),
        (f"modes: {', '.join(f'{m} {n}' for m, n in sorted(report['modes'].items())) or '-'}", False),
        (f"skipped (junk, or outside the folder layout): {len(report['skipped'])}", False),
        (f"unreadable: {len(report['unreadable'])}", bool(report["unreadable"])),
        *((f"  {shown(u['path'])}: {u['reason']}", True) for u in report["unreadable"]),
        (f"exact duplicates: {len(dup)} groups, {sum(len(g) for g in dup)} files", bool(dup)),
        (
            (
                f"near duplicates (pHash <= {report['near_duplicate_max_bits']} bits): {len(near)} groups "
                f"({n_exact_near} exact, {len(near) - n_exact_near} re-encoded or edited)"
            ),
            bool(near),
        ),
        *_patient_lines(report),
        (f"images repeated across splits: {len(cross)} groups", bool(cross)),
        *((f"  {' | '.join(map(shown, g['paths']))}", True) for g in cross[:10]),
    ]


def _patient_lines(report: dict) -> list[tuple[str, bool]]:
    """:func:`_finding_lines`' patients shared between splits: the count and first ten ids of each pair of splits,
    a film of each patient whose id is a DICOM header's digest (which names no file), and the films not checked."""
    lines: list[tuple[str, bool]] = []
    for pair, ids in report["patient_overlap"].items():
        some = f" ({', '.join(map(shown, ids[:10]))}{', ...' if len(ids) > 10 else ''})" if ids else ""
        lines.append((f"patients in both {pair}: {len(ids)}{some}", bool(ids)))
        lines += [(f"  {shown(p)}: {' | '.join(map(shown, report['patient_examples'][p]))}", True)
                  for p in ids[:10] if p.startswith(HEADER_PATIENT)]
    if report["patient_overlap"] and (unnamed := report["without_patient_id"]):
        lines.append((f"  not checked: {unnamed} of {report['n_images']} films carry no patient id (in their "
                      "names, a manifest's patient column or a DICOM header)", True))
    return lines
