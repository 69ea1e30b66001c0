"""Dataset audit: what is in a dataset before anyone trains on it, as a report (:func:`audit`), a table for the
terminal (:func:`format_audit`) and a figure (:func:`audit_figure`); and a grid of training films as the training
transform changes them (:func:`augmented_grid`, ``audit --augmented``).

The report counts films per split/class/subtype, image sizes and modes, unreadable files, exact duplicates (content
hash), near duplicates (perceptual hash), leakage across splits (the same patient, or the same picture, in two
splits), patients whose films carry both labels, and label conflicts (a file name, or a duplicate, contradicting
a film's label), found by the rules that split, train and evaluate use (:mod:`.copies`). One pass per file reads
everything, and its scan is kept beside the image cache as theirs are (:func:`~.copies.scans`): an audit after
another, or after a train or evaluate of the same films, decodes none of those again.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from pneumoscan.core.atomic import write_atomic
from pneumoscan.core.figures import figure_bytes
from pneumoscan.core.names import shown
from pneumoscan.data.copies import (EXACT, NEAR_DUPLICATE_BITS, PHASH_SIZE, label_conflicts, picture_groups_of_scans,
                                    scans, shared_patients)
from pneumoscan.data.decode import read_gray
from pneumoscan.data.layouts import (HEADER_PATIENT, LABELS, SUBTYPES, Discovery, Layout, Record, absent_hint, layouts,
                                     own_patient)
from pneumoscan.data.preprocess import resize, spread
from pneumoscan.data.split import crowded_caveat, crowded_patient, own_columns_hint

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from rich.console import Group
    from rich.table import Table

    from pneumoscan.data.augment import Augment

ALL = "all"  # report key for the records of a single folder (split "")
UNKNOWN = "unknown"  # report key for a pneumonia image whose file name does not give the subtype


def _split_key(split: str) -> str:
    return split or ALL


def _subtype_key(subtype: str) -> str:
    return subtype or UNKNOWN


def _groups(keys: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Sorted groups (>= 2 paths) of paths that share a key."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for path, key in keys:
        by_key[key].append(path)
    return sorted(sorted(g) for g in by_key.values() if len(g) > 1)


def _size_stats(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _patient_examples(records: Sequence[Record], overlap: dict[str, list[str]]) -> dict[str, list[str]]:
    """For each patient in two splits, their first film (by path) in each split they are in: an id from a DICOM
    header is a digest (:func:`~pneumoscan.data.layouts.header_patient`), which names no file to look at."""
    shared = {p for ids in overlap.values() for p in ids}
    first: dict[str, dict[str, str]] = defaultdict(dict)
    for rec in sorted(records, key=lambda r: r.path):
        if rec.patient in shared:
            first[rec.patient].setdefault(rec.split, rec.path)
    return {p: list(films.values()) for p, films in sorted(first.items())}


def _in_both_classes(records: Sequence[Record]) -> list[str]:
    """The patient ids that films of both classes carry, sorted."""
    labels: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        labels[rec.patient].add(rec.label)
    return sorted(p for p, seen in labels.items() if len(seen) > 1)


def audit(discovery: Discovery, workers: int | None = None) -> dict:
    """A JSON-serialisable report on ``discovery`` (see the module docstring); bad files are listed, not raised."""
    start = time.perf_counter()
    records = discovery.records
    if not records:  # "0 images audited" would pass for a clean dataset
        raise ValueError("no images to audit" + (f" ({len(discovery.skipped)} files skipped as no image)"
                                                 if discovery.skipped else ""))
    found = scans([r.path for r in records], workers, header=True)
    counts, subtypes = _class_counts(records)
    sizes, modes, unreadable, hashed = _image_stats(records, found)
    exact, near, conflicts = _duplicate_findings(records, hashed, layouts().get(discovery.layout))
    # films listed but not there: why, as split words it (a manifest saved in a local code page, or read from
    # another folder)
    absent = [u["path"] for u in unreadable if not os.path.exists(u["path"])]
    return {
        "n_images": len(records),
        "counts": counts,
        "subtypes": subtypes,
        "sizes": sizes,
        "modes": modes,
        "unreadable": unreadable,
        "unreadable_hint": absent_hint(absent) if absent else "",
        "skipped": list(discovery.skipped),
        "duplicate_groups": exact,
        "near_duplicate_groups": near,
        "near_duplicate_max_bits": NEAR_DUPLICATE_BITS,
        "patient_overlap": (overlap := shared_patients(records)),
        # a film of each such patient in each of its splits: a DICOM header's id is shown only as its digest
        "patient_examples": _patient_examples(records, overlap),
        # films whose patient nothing names (file name, manifest, DICOM header): the overlap cannot count them
        "without_patient_id": sum(map(own_patient, records)),
        # a manifest's own columns on those films (MRN), one of which may hold the patients (split.own_columns_hint)
        "without_patient_id_hint": own_columns_hint(records),
        # one id on films of both classes: a typo, or a film filed under the other class (or a child filmed again)
        "patients_in_both_classes": _in_both_classes(records),
        # one id on more films than a child has: an anonymiser's (split.crowded_patient), which split keeps as one
        "crowded_patient": dict(zip(("patient", "films"), crowded)) if (crowded := crowded_patient(records)) else None,
        "cross_split_near_duplicates": [g for g in near if len(g["splits"]) > 1],
        "label_conflicts": conflicts,
        "seconds": round(time.perf_counter() - start, 2),
    }


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
    groups = picture_groups_of_scans([s for _, s in hashed])
    near = [{"paths": paths, "splits": sorted(set().union(*(splits[p] for p in paths))), "exact": kind == EXACT}
            for kind, paths in groups]
    return _groups(sha.items()), near, label_conflicts(records, groups, layout)


def audit_figure(report: dict, discovery: Discovery, out_png: Path | str, per_class: int = 6) -> None:
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
    charts = grid[0, :].subgridspec(1, len(report["counts"]))
    _draw_class_balance([fig.add_subplot(charts[0, i]) for i in range(len(report["counts"]))], report)
    for row, (label, sub, pool) in enumerate(rows, start=1):
        _draw_samples([fig.add_subplot(grid[row, col]) for col in range(per_class)], label, sub, pool)
    # the format the name asks for (audit.pdf, audit.svg): the temporary name has none; its folder made, as
    # augmented_grid's and evaluate's are
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_png, figure_bytes(fig, Path(out_png).suffix[1:] or "png"))


def _draw_class_balance(charts: Sequence[Axes], report: dict) -> None:
    """The figure's bar charts, one per split in ``charts``, each on a scale of its own: a bar for each class,
    pneumonia stacked by subtype, each segment counted where it fits and each class's count on top. On one scale the
    Kaggle copy's val bars (8 films beside 3,875) were under a pixel high; the split's size is in its title."""
    colors = {"normal": "#4c72b0", "bacteria": "#dd8452", "virus": "#c44e52", UNKNOWN: "#8c8c8c"}
    drawn: dict[str, object] = {}  # one legend entry per subtype, whichever split draws it
    for ax, (split, counts) in zip(charts, report["counts"].items()):
        tallest = max(counts.values()) or 1
        for x, label in enumerate(LABELS):
            bottom, bars = 0.0, None
            for part in ["normal"] if label == "NORMAL" else ["bacteria", "virus", UNKNOWN]:
                height = report["subtypes"][split].get(part, 0)
                if not height:
                    continue
                bars = ax.bar(x, height, 0.7, bottom=bottom, color=colors[part], label=part)
                drawn.setdefault(part, bars)
                # a segment's count only where it adds to the class's and fits inside the bar
                inner = f"{height}" if 0.04 * tallest <= height < counts[label] else ""
                ax.bar_label(bars, labels=[inner], label_type="center", fontsize=8)
                bottom += height
            if bars is not None:  # the class's count goes on top of its stack
                ax.bar_label(bars, labels=[f"{counts[label]}"], fontsize=8, padding=2)
        ax.set_xticks(range(len(LABELS)), LABELS)
        ax.set_title(f"{split}: {sum(counts.values())} images", fontsize=10)
        ax.margins(y=0.15)
    charts[0].set_ylabel("images")
    scale = "per split, each on its own scale " if len(charts) > 1 else ""
    charts[0].figure.suptitle(f"Class balance {scale}(pneumonia stacked by subtype)")
    # beside the last chart, never over a bar: a split whose classes are equal has no corner free
    charts[-1].legend(drawn.values(), drawn.keys(), loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)


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


def augmented_grid(discovery: Discovery, n: int, out_png: Path | str, size: int = 192, augment: Augment | None = None,
                   policy: str = "squash", seed: int = 0) -> Path:
    """A PNG grid of ``n`` training films as the model sees them after the training transform (``augment``, an
    :class:`~pneumoscan.data.augment.Augment`; the default recipe's when None; ``Augment.off()`` for the films as
    cached): decoded, resized to ``size`` by ``policy``, augmented with a fixed ``seed``, shown on the [0, 1]
    grey range before normalisation. Films are spread evenly over the training split (everything when DATA
    has no splits); tiles sit on a red gutter, so the grid shows how strong the augmentation is at a glance."""
    import torch

    from pneumoscan.data.augment import Augment
    from pneumoscan.data.transforms import train_transform

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
            grid.paste(Image.fromarray(shown).convert("RGB"),
                       (gap + (i % cols) * (size + gap), gap + (i // cols) * (size + gap)))
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
        _split_line(report),
        *((f"no {label} film in {split} ({sum(counts.values())} films): the class is missing", True)
          for split, counts in report["counts"].items() if sum(counts.values()) for label in LABELS
          if not counts[label]),
        (f"label conflicts (a name or a duplicate contradicting a label): {len(conflicts)}", bool(conflicts)),
        *((f"  {c['kind']}: {' | '.join(map(shown, c['paths']))}: {c['reason']}", True) for c in conflicts[:LISTED]),
        *_more(conflicts),
        (f"image modes: {', '.join(f'{_mode_words(m)} {n}' for m, n in sorted(report['modes'].items())) or '-'}",
         False),
        (f"skipped (junk, or outside the folder layout): {len(report['skipped'])}", False),
        (f"unreadable: {len(report['unreadable'])}" + (f" ({hint})" if (hint := report["unreadable_hint"]) else ""),
         bool(report["unreadable"])),
        *((f"  {shown(u['path'])}: {u['reason']}", True) for u in report["unreadable"][:LISTED]),
        *_more(report["unreadable"]),
        (f"exact duplicates: {len(dup)} groups, {sum(len(g) for g in dup)} files", bool(dup)),
        (
            (
                f"near duplicates (perceptual hashes differing in at most {report['near_duplicate_max_bits']} of "
                f"their {PHASH_SIZE**2} bits): {len(near)} groups "
                f"({n_exact_near} exact, {len(near) - n_exact_near} re-encoded or edited)"
            ),
            bool(near),
        ),
        *_patient_lines(report),
        (f"images repeated across splits: {len(cross)} groups", bool(cross)),
        *((f"  {' | '.join(map(shown, g['paths']))}", True) for g in cross[:LISTED]),
        *_more(cross),
    ]


#: Pillow's mode names in a reader's words (a DICOM film's mode is its photometric interpretation and bits, e.g.
#: MONOCHROME2/12): `modes: L 16, RGB 5216` did not tell a clinical reader that the Kermany training films are colour
#: JPEGs of grey films
_MODE_WORDS = {"1": "black and white", "L": "greyscale", "LA": "greyscale with transparency",
               "I;16": "16-bit greyscale", "I;16L": "16-bit greyscale", "I;16B": "16-bit greyscale",
               "I;16N": "16-bit greyscale", "I": "32-bit greyscale",
               "F": "floating-point greyscale", "P": "palette colour", "RGB": "colour",
               "RGBA": "colour with transparency", "CMYK": "print colour", "YCbCr": "colour"}


def _mode_words(mode: str) -> str:
    """A film mode as the audit text gives it: Pillow's name with its meaning, any other (DICOM's) as it is."""
    return f"{shown(mode)} ({_MODE_WORDS[mode]})" if mode in _MODE_WORDS else shown(mode)


#: how many of each finding the text of an audit lists (its JSON lists them all)
LISTED = 10


def _more(findings: list) -> list[tuple[str, bool]]:
    """The line saying how many of ``findings`` the text leaves unlisted: a manifest read from the wrong folder
    listed every one of its films as unreadable, burying the rest of the report, and a list cut silently reads as
    complete."""
    rest = len(findings) - LISTED
    return [(f"  ... and {rest} more (all of them in --json-out's report)", True)] if rest > 0 else []


def _split_line(report: dict) -> tuple[str, bool]:
    """:func:`_finding_lines`' first: the splits the data holds and, without a test split, what measures a run
    instead, which a reader learnt only from `evaluate --split test`'s refusal (the Kaggle copy without test/)."""
    splits = sorted(report["counts"])
    if splits == [ALL]:
        return "splits: none (one set of films)", False
    missing = ("" if "test" in splits else
               "; no test split: measure a run on its own validation films, pneumoscan evaluate RUN/bundle "
               "RUN/split.csv --split val (figures on them are optimistic), or add a test split (a test/ folder)")
    return f"splits: {', '.join(map(shown, splits))}{missing}", False


def _patient_lines(report: dict) -> list[tuple[str, bool]]:
    """:func:`_finding_lines`' patients shared between splits: the count and first ten ids of each pair of splits,
    a film of each patient whose id is a DICOM header's digest (which names no file), and the films not checked."""
    lines: list[tuple[str, bool]] = []
    for pair, ids in report["patient_overlap"].items():
        some = f" ({', '.join(map(shown, ids[:10]))}{', ...' if len(ids) > 10 else ''})" if ids else ""
        lines.append((f"patients in both {pair}: {len(ids)}{some}", bool(ids)))
        lines += [(f"  {shown(p)}: {' | '.join(map(shown, report['patient_examples'][p]))}", True)
                  for p in ids[:10] if p.startswith(HEADER_PATIENT)]
    hint = f"; {hint}" if (hint := report["without_patient_id_hint"]) else ""
    if report["patient_overlap"] and (unnamed := report["without_patient_id"]):
        lines.append((f"  not checked: {unnamed} of {report['n_images']} films carry no patient id (in their "
                      f"names, a manifest's patient column or a DICOM header){hint}", True))
    elif unnamed := report["without_patient_id"]:  # one set of films: what split and cv will make of them
        lines.append((f"no patient id: {unnamed} of {report['n_images']} films (in their names, a manifest's patient "
                      f"column or a DICOM header), each a patient of its own to split and cv{hint}", True))
    if crowded := report["crowded_patient"]:
        lines.append((crowded_caveat(crowded["patient"], crowded["films"], report["n_images"]), True))
    if both := report["patients_in_both_classes"]:
        lines.append((f"patients with films of both {' and '.join(LABELS)}: {len(both)} "
                      f"({', '.join(map(shown, both[:10]))}{', ...' if len(both) > 10 else ''}): a film filed under "
                      "the other class, or two children under one id? (a child filmed again after recovering is one "
                      "too)", True))
    return lines
