"""Audit: counts, bad files, duplicates and cross-split leakage, on a generated tree and on the real train folder."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pneumoscan.cli import main
import pneumoscan.data.copies as copies
from pneumoscan.core.figures import figure_bytes
from pneumoscan.data.audit import audit, audit_figure, format_audit
from pneumoscan.data.copies import EXACT, NEAR, picture_groups
from pneumoscan.data.labelled import labelled_films
from pneumoscan.data.layouts import discover
from pneumoscan.data.preprocess import PreprocessSpec
from pneumoscan.data.split import split_dataset, split_pool
from pneumoscan.data.tasks import get_task
from tests.builders import dicom_bytes


ROOT = Path(__file__).resolve().parents[1]
CHILD_SECONDS = 120  # generous on a loaded machine; the work itself takes a few seconds
# The child's command line, its memory capped: a regression reading /dev/zero to its end fails with a MemoryError
# instead of filling this machine's memory.
CLI = ("import resource, sys\n"
       "resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))\n"
       "from pneumoscan.cli import main\n"
       "sys.exit(main(sys.argv[1:]))")  # fmt: skip


def run_cli_bounded(*args: str) -> subprocess.CompletedProcess:
    """`pneumoscan ARGS` in a child process group of its own, bounded in time and memory: a regression that
    waits on a FIFO for ever fails the test (the group, process-pool workers too, is killed) instead of hanging the
    suite."""
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"})  # one log line each
    try:
        out, err = proc.communicate(timeout=CHILD_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"pneumoscan {' '.join(args)} still ran after {CHILD_SECONDS} s: it waited on a special file")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def special_file_manifest(films: list[Path], folder: Path) -> tuple[Path, dict[str, str]]:
    """A manifest listing ``films`` and, among them, a FIFO (opening it for reading waits for a writer) and
    /dev/zero (a read never ends); returns it and each special file's expected reason."""
    fifo = folder / "person900_bacteria_1.jpeg"
    os.mkfifo(fifo)
    special = {str(fifo): "not a regular file (FIFO)", "/dev/zero": "not a regular file (character device)"}
    rows = [f"{film},{'NORMAL' if 'NORMAL' in film.parts else 'PNEUMONIA'}" for film in films]
    rows[1:1] = [f"{fifo},PNEUMONIA", "/dev/zero,NORMAL"]
    manifest = folder / "manifest.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    return manifest, special


def _picture(seed: int, size: tuple[int, int]) -> Image.Image:
    """A distinct picture with structure at the scales pHash looks at (16x16 noise, smoothly enlarged)."""
    noise = np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)
    return Image.fromarray(noise).resize(size, Image.BICUBIC)


@pytest.fixture(scope="module")
def tree(module_tmp: Callable[[str], Path]) -> dict[str, Path]:
    """train/test with a corrupt file, a file copied into test, a re-encoded smaller copy in test, a .DS_Store,
    and study IM-0001 in both splits."""
    root = module_tmp("audit") / "xray"
    files = {
        "normal1": root / "train/NORMAL/IM-0001-0001.jpeg",
        "normal2": root / "train/NORMAL/IM-0002-0001.jpeg",
        "bact": root / "train/PNEUMONIA/person1_bacteria_1.jpeg",
        "virus": root / "train/PNEUMONIA/person2_virus_2.jpeg",
        "corrupt": root / "train/PNEUMONIA/person3_bacteria_3.jpeg",
        "junk": root / "train/NORMAL/.DS_Store",
        "same_study": root / "test/NORMAL/IM-0001-0002.jpeg",
        "copy": root / "test/PNEUMONIA/person9_bacteria_9.jpeg",
        "reencoded": root / "test/PNEUMONIA/person8_virus_8.jpeg",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    _picture(1, (128, 112)).save(files["normal1"], quality=95)
    _picture(2, (120, 100)).save(files["normal2"], quality=95)
    _picture(3, (128, 112)).convert("RGB").save(files["bact"], quality=95)
    _picture(4, (140, 112)).save(files["virus"], quality=95)
    files["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    files["junk"].write_bytes(b"\x00\x00\x00\x01Bud1")
    _picture(5, (128, 112)).save(files["same_study"], quality=95)
    shutil.copyfile(files["bact"], files["copy"])
    Image.open(files["virus"]).resize((105, 84)).save(files["reencoded"], quality=80)
    return {"root": root, **files}


@pytest.fixture(scope="module")
def report(tree: dict[str, Path]) -> dict:
    return audit(discover(tree["root"]), workers=2)


def _paths(*names: str, tree: dict[str, Path]) -> list[str]:
    return sorted(str(tree[n]) for n in names)


def test_audit_counts_and_sizes(report: dict) -> None:
    assert report["n_images"] == 8
    assert report["counts"] == {"train": {"NORMAL": 2, "PNEUMONIA": 3}, "test": {"NORMAL": 1, "PNEUMONIA": 2}}
    assert report["subtypes"]["train"] == {"normal": 2, "bacteria": 2, "virus": 1}
    assert report["subtypes"]["test"] == {"normal": 1, "bacteria": 1, "virus": 1}
    # the corrupt file has no size; the 4 readable train images are 120-140 wide
    assert report["sizes"]["train"]["width"] == {"min": 120, "median": 128, "max": 140}
    assert report["sizes"]["test"]["height"] == {"min": 84, "median": 112, "max": 112}
    assert sum(report["modes"].values()) == 7
    assert report["modes"]["L"] == 5 and report["modes"]["RGB"] == 2
    json.dumps(report)  # the CLI writes it as JSON


def test_audit_lists_bad_and_junk_files(report: dict, tree: dict[str, Path]) -> None:
    assert [u["path"] for u in report["unreadable"]] == [str(tree["corrupt"])]
    assert report["unreadable"][0]["reason"]
    assert str(tree["junk"]) in [s["path"] for s in report["skipped"]]


def test_everything_left_out_is_listed_with_a_reason(tmp_path: Path) -> None:
    root = tmp_path / "xray"
    (root / "train" / "NORMAL").mkdir(parents=True)
    _picture(1, (64, 64)).save(root / "train" / "NORMAL" / "IM-0001-0001.jpeg")
    for folder in ("train/.ipynb_checkpoints", "train/extra", "__MACOSX"):
        (root / folder).mkdir()
    for name in ("train/.DS_Store", "train/IM-0002-0001.jpeg", "README.md"):
        (root / name).write_bytes(b"x")
    found = discover(root)
    assert [Path(r.path).name for r in found.records] == ["IM-0001-0001.jpeg"]
    assert {str(Path(s["path"]).relative_to(root)): s["reason"] for s in found.skipped} == {
        "README.md": "not an image extension (.md)",
        "__MACOSX": "not a split folder",
        "train/.DS_Store": "system file",
        "train/.ipynb_checkpoints": "hidden folder",
        "train/extra": "not a class folder",
        "train/IM-0002-0001.jpeg": "outside the class folders",
    }


def test_audit_finds_duplicates_and_leakage(report: dict, tree: dict[str, Path]) -> None:
    copy_group = _paths("bact", "copy", tree=tree)
    reencoded_group = _paths("virus", "reencoded", tree=tree)
    assert report["duplicate_groups"] == [copy_group]
    near = {tuple(g["paths"]): g for g in report["near_duplicate_groups"]}
    assert set(near) == {tuple(copy_group), tuple(reencoded_group)}
    assert near[tuple(copy_group)]["exact"] and not near[tuple(reencoded_group)]["exact"]
    assert [g["paths"] for g in report["cross_split_near_duplicates"]] == sorted([copy_group, reencoded_group])
    assert all(g["splits"] == ["test", "train"] for g in report["cross_split_near_duplicates"])
    assert report["patient_overlap"] == {"train/test": ["IM-0001"]}
    assert list(report["patient_examples"]) == ["IM-0001"] and len(report["patient_examples"]["IM-0001"]) == 2


def test_picture_groups_are_the_audits_duplicates(report: dict, tree: dict[str, Path]) -> None:
    """split and evaluate group films by picture_groups: the audit's byte copies and re-encoded copies alike."""
    paths = [r.path for r in discover(tree["root"]).records]
    expected = [(EXACT if g["exact"] else NEAR, g["paths"]) for g in report["near_duplicate_groups"]]
    assert picture_groups(paths, workers=2) == expected
    assert {kind for kind, _ in expected} == {EXACT, NEAR}
    # a file that vanished (or cannot be read) is left out instead of stopping train or split
    gone = str(tree["root"] / "train" / "NORMAL" / "deleted-meanwhile.jpeg")
    assert picture_groups([*paths, gone], workers=2) == expected


def test_picture_groups_read_a_film_once_while_it_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate groups its films twice (with the training films, then among themselves): each is decoded once, and a
    film written again since is read again."""
    films = [tmp_path / f"film{i}.png" for i in range(3)]
    _picture(11, (96, 80)).save(films[0])
    _picture(12, (96, 80)).save(films[1])
    shutil.copyfile(films[0], films[2])
    read: list[str] = []
    scan = copies.scan_file
    monkeypatch.setattr(copies, "scan_file", lambda path, **kw: read.append(path) or scan(path, **kw))
    paths = list(map(str, films))
    assert picture_groups(paths, workers=2) == [(EXACT, [paths[0], paths[2]])]
    assert picture_groups(paths[:2], workers=2) == []
    assert sorted(read) == paths
    _picture(11, (96, 80)).resize((90, 75)).save(films[1])  # now a resized copy of film0
    os.utime(films[1], ns=(films[1].stat().st_atime_ns, films[1].stat().st_mtime_ns + 10**9))
    assert picture_groups(paths, workers=2) == [(NEAR, paths)]
    assert sorted(read) == sorted([*paths, paths[1]])


def test_a_film_that_could_not_be_read_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A passing fault (an I/O error) is not kept: the next grouping reads the film again and finds its copy."""
    films = [tmp_path / "a.png", tmp_path / "b.png"]
    _picture(13, (96, 80)).save(films[0])
    shutil.copyfile(films[0], films[1])
    paths = list(map(str, films))
    scan, faults = copies.scan_file, [paths[1]]
    monkeypatch.setattr(copies, "scan_file", lambda path, **kw: {"path": path, "error": "I/O error"}
                        if path in faults and not faults.remove(path) else scan(path, **kw))
    assert picture_groups(paths, workers=1) == []
    assert picture_groups(paths, workers=1) == [(EXACT, paths)]


def test_single_folder_reports_under_all(tree: dict[str, Path]) -> None:
    rep = audit(discover(tree["root"] / "train"), workers=1)
    assert rep["counts"] == {"all": {"NORMAL": 2, "PNEUMONIA": 3}}
    assert rep["patient_overlap"] == {} and rep["cross_split_near_duplicates"] == []


def test_format_audit_names_the_findings(report: dict, tree: dict[str, Path]) -> None:
    console = Console(file=io.StringIO(), width=200)
    console.print(format_audit(report))
    text = console.file.getvalue()
    assert "unreadable: 1" in text and str(tree["corrupt"]) in text
    assert "exact duplicates: 1 groups, 2 files" in text
    assert "patients in both train/test: 1 (IM-0001)" in text
    assert "images repeated across splits: 2 groups" in text


def test_format_audit_says_its_image_modes_and_near_duplicates_in_words(report: dict) -> None:
    """`modes: L 16, RGB 5216` and `near duplicates (pHash <= 10 bits)` were Pillow's and imagehash's words: a
    clinical reader of the Kermany audit could not tell that its training films are colour JPEGs of grey films, or
    what near means."""
    console = Console(file=io.StringIO(), width=200)
    console.print(format_audit(report))
    text = console.file.getvalue()
    assert "image modes: L (greyscale) 5, RGB (colour) 2" in text, text
    assert "near duplicates (perceptual hashes differing in at most 10 of their 256 bits): 2 groups" in text, text
    console.file = io.StringIO()  # the 16-bit modes readers/pillow.py reads, each in words
    console.print(format_audit({**report, "modes": {mode: 1 for mode in ("I;16", "I;16B", "I;16L", "I;16N")}}))
    assert ("image modes: I;16 (16-bit greyscale) 1, I;16B (16-bit greyscale) 1, I;16L (16-bit greyscale) 1, I;16N "
            "(16-bit greyscale) 1") in console.file.getvalue(), console.file.getvalue()


def test_format_audit_says_the_splits_and_what_stands_in_for_a_missing_test_split(
    report: dict, tree: dict[str, Path], tmp_path: Path
) -> None:
    """Audit said nothing of the data's splits: on a copy without test/ the reader learnt at `evaluate --split test`
    that there is nothing to test on. It names the splits, and without a test split what measures a run instead."""
    def said(rep: dict) -> str:
        console = Console(file=io.StringIO(), width=400)
        console.print(format_audit(rep))
        return console.file.getvalue()

    with_test = said(report)
    assert "splits: test, train\n" in with_test and "no test split" not in with_test
    root = tmp_path / "no_test"
    shutil.copytree(tree["root"] / "train", root / "train")
    shutil.copytree(tree["root"] / "test", root / "val")
    assert ("splits: train, val; no test split: measure a run on its own validation films, pneumoscan evaluate "
            "RUN/bundle RUN/split.csv --split val (figures on them are optimistic), or add a test split (a test/ "
            "folder)\n") in said(audit(discover(root), workers=1))
    assert "splits: none (one set of films)\n" in said(audit(discover(root / "train"), workers=1))


def test_format_audit_cuts_no_value_at_80_columns(report: dict) -> None:
    """At 80 columns (a pipe, a file, a plain terminal) the table cut its cells: `PNEUMON…`, `968/1280…`, the
    largest width and height lost."""
    big = {"width": {"min": 968, "median": 1281.5, "max": 12000}, "height": {"min": 592, "median": 996, "max": 11416}}
    wide = {**report, "sizes": {split: big for split in report["counts"]},
            "subtypes": {split: {**sub, "unknown": 1} for split, sub in report["subtypes"].items()}}
    console = Console(file=io.StringIO(), width=80)
    console.print(format_audit(wide))
    text = console.file.getvalue()
    assert "…" not in text and "PNEUMONIA" in text and "unknown" in text
    assert text.count("968/1281.5/12000") == text.count("592/996/11416") == len(report["counts"]), text


def test_audit_figure_shows_a_small_split_as_bars_with_their_counts(
    report: dict, tree: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the Kaggle copy's counts the val bars (8 and 8 films beside train's 3,875) were under a pixel high: only
    their labels showed. Each split's bars are drawn on a scale of their own, every bar a visible height, each
    class's count written on it."""
    import pneumoscan.data.audit as audit_module

    drawn = []  # the figure audit_figure writes, as it is written
    monkeypatch.setattr(audit_module, "figure_bytes", lambda fig, fmt: drawn.append(fig) or figure_bytes(fig, fmt))
    kaggle = {**report, "counts": {"train": {"NORMAL": 1341, "PNEUMONIA": 3875}, "val": {"NORMAL": 8, "PNEUMONIA": 8}},
              "subtypes": {"train": {"normal": 1341, "bacteria": 2530, "virus": 1345},
                           "val": {"normal": 8, "bacteria": 8, "virus": 0}}}
    audit_figure(kaggle, discover(tree["root"]), tmp_path / "audit.png", per_class=2)
    (fig,) = drawn
    charts = [ax for ax in fig.axes if ax.patches]
    assert charts, "no bar chart drawn"
    for ax in charts:
        tall = ax.get_window_extent().height
        for bar in ax.patches:
            if bar.get_height() > 0:
                assert bar.get_window_extent().height >= 0.1 * tall, f"a bar of {bar.get_height():.0f} films is flat"
    texts = [" ".join(t.get_text() for t in ax.texts) for ax in charts]
    for split, counts in kaggle["counts"].items():
        assert any(split in ax.get_title() and all(str(n) in said for n in counts.values())
                   for ax, said in zip(charts, texts)), (split, [ax.get_title() for ax in charts], texts)


def test_audit_figure_writes_png_and_leaves_the_callers_matplotlib_backend(report: dict, tree: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    """The figure in the format its name asks for. A notebook's backend stays its own: the figure is drawn without
    pyplot (it switched the process to Agg). (One drawing proves both.)"""
    import matplotlib

    out = tmp_path / "audit.png"
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        audit_figure(report, discover(tree["root"]), out, per_class=3)
        assert matplotlib.get_backend() == "svg", "the caller's backend was switched"
    finally:
        matplotlib.use(before)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 400 and img.height > 400
    # the format the name asks for, in a folder not made yet (from Python, a FileNotFoundError of its temporary name)
    audit_figure(report, discover(tree["root"]), tmp_path / "new" / "audit.pdf", per_class=3)
    assert (tmp_path / "new" / "audit.pdf").read_bytes().startswith(b"%PDF")


def test_a_fifo_or_device_in_a_manifest_is_listed_unreadable_not_waited_on(tiny_dataset: Path,
                                                                            tmp_path: Path) -> None:
    """Discovery never opens what a folder holds, but a manifest names its files: the content hash, the first
    read of each, must not block on a FIFO or read /dev/zero for ever."""
    films = sorted((tiny_dataset / "test").rglob("*.jpeg"))[:4]
    manifest, special = special_file_manifest(films, tmp_path)
    done = run_cli_bounded("audit", str(manifest), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {u["path"]: u["reason"] for u in report["unreadable"]} == special
    assert report["n_images"] == len(films) + 2 and not any(set(g) & set(special) for g in report["duplicate_groups"])


def test_audit_real_train_folder(data_root: Path, tmp_path: Path) -> None:
    """Real films (a copy of train/'s byte copies of one film and every 40th film besides, in its layout: the whole
    folder's 5,216 took 9 s of the suite's CPU; its speed is docs/results.md's "Cache and audit speed"): counted by
    class and subtype, sized, and each byte copy found as what its bytes say."""
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for path in sorted((data_root / "train").rglob("*.jpeg")):
        by_hash[hashlib.sha256(path.read_bytes()).hexdigest()].append(path)
    copied = {p for g in by_hash.values() if len(g) > 1 for p in g}
    films = sorted(copied | {p for g in list(by_hash.values())[::40] for p in g})
    for film in films:
        (tmp_path / "train" / film.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(film, tmp_path / "train" / film.parent.name / film.name)
    discovery = discover(tmp_path / "train")
    start = time.perf_counter()
    rep = audit(discovery)
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"audit took {elapsed:.1f} s"
    normal = sum(p.parent.name == "NORMAL" for p in films)
    bacteria, virus = (sum(f"_{kind}_" in p.name for p in films) for kind in ("bacteria", "virus"))
    assert normal and bacteria and virus and normal + bacteria + virus == len(films) > len(copied) > 0
    assert rep["counts"] == {"all": {"NORMAL": normal, "PNEUMONIA": len(films) - normal}}
    assert rep["subtypes"]["all"] == {"normal": normal, "bacteria": bacteria, "virus": virus}
    assert rep["unreadable"] == []
    assert rep["sizes"]["all"]["width"]["min"] == rep["sizes"]["all"]["width"]["max"] == 224

    expected = sorted(sorted(str(tmp_path / "train" / p.parent.name / p.name) for p in g)
                      for g in by_hash.values() if len(g) > 1)
    assert expected and rep["duplicate_groups"] == expected
    for group in rep["duplicate_groups"]:
        assert len({Path(p).read_bytes() for p in group}) == 1
    # every exact group is also a near-duplicate group marked exact
    exact_near = [g["paths"] for g in rep["near_duplicate_groups"] if g["exact"]]
    assert all(g in exact_near for g in expected)


def test_format_audit_escapes_names_and_an_empty_dataset_is_refused(report: dict, tmp_path: Path) -> None:
    """A file name's escape sequence or newline reached the terminal raw (a colour change, a line split in two)."""
    odd = tmp_path / "x\x1b[31mred\nsecond.jpeg"
    unreadable = {**report, "unreadable": [{"path": str(odd), "reason": "truncated"}]}
    console = Console(file=io.StringIO(), width=200)
    console.print(format_audit(unreadable))
    text = console.file.getvalue()
    assert "\x1b[31m" not in text and "x\\x1b[31mred\\nsecond.jpeg: truncated" in text
    (tmp_path / "empty" / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images to audit"):
        audit(discover(tmp_path / "empty"), workers=1)


def test_a_manifest_in_a_local_code_page_is_given_the_remedy_split_gives(tmp_path: Path) -> None:
    """A spreadsheet's "CSV (Comma delimited)" writes Jos\xe9.png in Latin-1 for a file named in UTF-8: audit listed
    the film as unreadable (no such file) and no more, where split and train say to save the manifest as CSV UTF-8.
    Audit gives split's words."""
    (tmp_path / "imgs").mkdir()
    for seed, name in enumerate(("Jos\u00e9_1.png", "person1_virus_1.png", "person2_bacteria_2.png")):
        _picture(seed, (64, 64)).save(tmp_path / "imgs" / name)
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path,label\nimgs/Jos\u00e9_1.png,NORMAL\nimgs/person1_virus_1.png,PNEUMONIA\n"
                         "imgs/person2_bacteria_2.png,PNEUMONIA\n".encode("latin-1"))
    with pytest.raises(ValueError) as refused:
        split_pool(manifest)
    hint = str(refused.value).rpartition("; ")[2]
    assert "save it as CSV UTF-8" in hint
    report = audit(discover(manifest), workers=1)
    console = Console(file=io.StringIO(), width=1000)
    console.print(format_audit(report))
    assert f"unreadable: 1 ({hint})" in console.file.getvalue()
    assert report["unreadable_hint"] == hint


@pytest.mark.parametrize("listed, where", [
    # a labels sheet of bare names beside its images/ folder
    ("CXR0001.png", r"images/CXR0001.png is there: write the paths relative to the manifest's folder "
                    r"\(images/CXR0001.png\), or move the manifest into .*images$"),
    # a sheet of ids, the files' ending left out
    ("images/CXR0001", r"images/CXR0001.png is there: give each film's file name with its ending \(.png\)$"),
    # a sheet written on Windows
    ("images\\CXR0001.png", r"images/CXR0001.png is there: write the paths with / between folders, not \\$"),
], ids=["bare names", "no ending", "Windows separators"])
def test_a_manifest_whose_films_are_elsewhere_says_where_they_are(tmp_path: Path, listed: str, where: str) -> None:
    """A researcher's labels sheet next to a flat folder of films, listing bare names or ids: split, audit and
    evaluate said only that relative paths are read from the manifest's folder, and audit listed every film as
    unreadable, so the report's findings lay under a page of "No such file or directory"."""
    (tmp_path / "images").mkdir()
    _picture(0, (64, 64)).save(tmp_path / "images" / "CXR0001.png")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\n" + listed + ",NORMAL\n" + "".join(f"x/{i}.png,NORMAL\n" for i in range(11)))
    hint = r"a manifest's relative paths are read from the manifest's own folder, and .*" + where
    with pytest.raises(ValueError, match=hint):
        split_pool(manifest)
    with pytest.raises(ValueError, match=r"no readable film of .*labels.csv for the pneumonia task: 12 could not be "
                                         r"read \(.*\); " + hint):
        labelled_films(manifest, None, get_task("pneumonia"), PreprocessSpec(32))
    report = audit(discover(manifest), workers=1)
    assert re.fullmatch(hint, report["unreadable_hint"]) and len(report["unreadable"]) == 12
    console = Console(file=io.StringIO(), width=1000)
    console.print(format_audit(report))
    listed_lines = [line for line in console.file.getvalue().splitlines() if "No such file or directory" in line]
    assert len(listed_lines) == 10
    assert "  ... and 2 more (all of them in --json-out's report)" in console.file.getvalue()


def test_audit_json_is_valid_utf8_whatever_the_names_bytes(tiny_dataset: Path, tmp_path: Path) -> None:
    """A name that is not UTF-8 is written \\xNN in the JSON report (docs/limits.md), not as a lone surrogate."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    first = sorted((data / "train" / "NORMAL").iterdir())[0]
    shutil.copy(first, os.path.join(os.fsencode(first.parent), b"caf\xe9-" + os.fsencode(first.name)))  # a duplicate
    assert main(["audit", str(data), "--json-out", str(tmp_path / "audit.json")]) == 0
    text = (tmp_path / "audit.json").read_bytes().decode("utf-8")
    duplicates = json.loads(text)["duplicate_groups"]
    assert sorted(Path(p).name for p in duplicates[0]) == [first.name, f"caf\\xe9-{first.name}"]
    assert "udce9" not in text


def _components(labels: np.ndarray) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = defaultdict(set)
    for index, label in enumerate(labels):
        groups[int(label)].add(index)
    return {frozenset(g) for g in groups.values()}


def test_near_duplicates_found_by_bands_are_those_every_pair_would_give() -> None:
    """The band search (pigeonhole) links exactly the pairs at most NEAR_DUPLICATE_BITS apart: films 10 bits apart,
    11 apart, chains, and a crowd of 600 copies of one film (more than one band group holds)."""
    from pneumoscan.data.copies import NEAR_DUPLICATE_BITS, _near_duplicate_components

    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, (300, 256), dtype=np.uint8)
    flipped = []
    for row in base[:150]:  # a neighbour 8 to 12 bits away from each of the first 150
        twin = row.copy()
        twin[rng.choice(256, int(rng.integers(8, 13)), replace=False)] ^= 1
        flipped.append(twin)
    crowd = np.repeat(base[:1], 600, axis=0)
    bits = np.concatenate([base, np.array(flipped), crowd])
    hashes = [np.packbits(row).tobytes() for row in bits]
    ones = bits.astype(float)  # every pair's Hamming distance, |a| + |b| - 2 a.b: whole numbers to 256, exact
    distance = ones.sum(axis=1)[:, None] + ones.sum(axis=1)[None, :] - 2 * ones @ ones.T
    every_pair = connected_components(coo_matrix(distance <= NEAR_DUPLICATE_BITS), directed=False)[1]
    assert _components(_near_duplicate_components(hashes)) == _components(every_pair)
    assert len(_components(every_pair)) < len(hashes) - 600, "the films hold near pairs to find"


@pytest.fixture(scope="module")
def conflicted(module_tmp: Callable[[str], Path]) -> dict[str, Path]:
    """A film whose name contradicts its folder, one picture filed as NORMAL and PNEUMONIA, two empty files of
    different patients, names that are not UTF-8 or hold TeX, and a test split without PNEUMONIA films."""
    root = module_tmp("conflicted") / "xray"
    files = {
        "normal": root / "train/NORMAL/IM-0001-0001.jpeg",
        "copy": root / "train/PNEUMONIA/person9_bacteria_1.jpeg",
        "misfiled": root / "train/NORMAL/person1_bacteria_9.jpeg",
        "latin1": Path(os.fsdecode(os.fsencode(root) + b"/train/PNEUMONIA/person2_virus_\xe9.jpeg")),
        "tex": root / "train/PNEUMONIA/person3_virus_$\\nonsense{$.jpeg",
        "empty1": root / "train/NORMAL/IM-0003-0001.jpeg",
        "empty2": root / "train/PNEUMONIA/person1000_bacteria_1.jpeg",
        "test": root / "test/NORMAL/IM-0004-0001.jpeg",
    }
    for seed, path in enumerate(files.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        _picture(seed, (64, 64)).save(path, quality=95)
    shutil.copyfile(files["normal"], files["copy"])
    files["empty1"].write_bytes(b"")
    files["empty2"].write_bytes(b"")
    return {"root": root, **files}


@pytest.fixture(scope="module")
def conflicts_report(conflicted: dict[str, Path]) -> dict:
    return audit(discover(conflicted["root"]), workers=2)


def test_label_conflicts_are_reported_and_highlighted(conflicts_report: dict, conflicted: dict[str, Path]) -> None:
    """A name contradicting its folder and one picture under two labels were only counted as an ordinary duplicate
    (or not at all); a class missing from a split was a plain 0."""
    normal, copy, misfiled = (str(conflicted[k]) for k in ("normal", "copy", "misfiled"))
    assert conflicts_report["label_conflicts"] == [
        {"kind": "name", "paths": [misfiled], "labels": ["NORMAL"], "subtypes": ["normal"],
         "reason": "named bacteria, labelled NORMAL"},
        {"kind": "exact duplicate", "paths": [normal, copy], "labels": ["NORMAL", "PNEUMONIA"],
         "subtypes": ["normal", "bacteria"], "reason": "one picture labelled NORMAL and PNEUMONIA bacteria"},
    ]
    console = Console(file=io.StringIO(), width=300, force_terminal=True)
    console.print(format_audit(conflicts_report))
    text = console.file.getvalue()
    red = "\x1b[1;31m"
    assert f"{red}label conflicts (a name or a duplicate contradicting a label): 2" in text
    assert f"{red}  name: {misfiled}: named bacteria, labelled NORMAL" in text
    assert f"{red}no PNEUMONIA film in test (1 films): the class is missing" in text
    assert "no NORMAL film in" not in text and "no PNEUMONIA film in train" not in text


def test_unreadable_files_are_in_no_duplicate_group(conflicts_report: dict, conflicted: dict[str, Path]) -> None:
    """Two empty files were an exact duplicate group, and split tied their unrelated patients together."""
    empty = [str(conflicted["empty1"]), str(conflicted["empty2"])]
    assert {u["path"] for u in conflicts_report["unreadable"]} == set(empty)
    assert conflicts_report["duplicate_groups"] == [sorted([str(conflicted["normal"]), str(conflicted["copy"])])]
    assert picture_groups([*empty, str(conflicted["normal"]), str(conflicted["copy"])], workers=2) == \
        [(EXACT, paths) for paths in conflicts_report["duplicate_groups"]]


def test_audit_figure_shows_odd_names_escaped_and_never_as_tex(conflicts_report: dict, conflicted: dict[str, Path],
                                                                tmp_path: Path) -> None:
    """A name that is not UTF-8 stopped the figure with a TypeError from the font engine; one holding $...$
    was parsed as mathtext, and one that is not valid TeX raised."""
    out = tmp_path / "audit.svg"
    audit_figure(conflicts_report, discover(conflicted["root"]), out, per_class=6)
    svg = out.read_text()
    assert "person2_virus_\\xe9.jpeg" in svg and "person3_virus_$\\nonsense{$.jpeg" in svg


def test_audit_counts_dicom_patients_and_says_what_it_could_not_check(tmp_path: Path) -> None:
    """Films named by UID share a patient through their DICOM header's PatientID; a film with no id anywhere is
    counted as not checked, so "0 patients in both" is never read as a clean bill for films it could not check."""
    root = tmp_path / "pacs"
    for part, pid in (("train/NORMAL/1.2.3.1.dcm", "P1"), ("test/NORMAL/1.2.3.2.dcm", "P1"),
                      ("test/PNEUMONIA/1.2.3.3.dcm", "P2")):
        (root / part).parent.mkdir(parents=True, exist_ok=True)
        (root / part).write_bytes(dicom_bytes(np.asarray(_picture(7, (32, 32))), bits=8, PatientID=pid))
    _picture(8, (32, 32)).save(root / "test/PNEUMONIA/scan_0002.png")
    report = audit(discover(root), workers=1)
    assert len(report["patient_overlap"]["train/test"]) == 1 and report["without_patient_id"] == 1
    console = Console(file=io.StringIO(), width=400)  # long temporary paths on one line
    console.print(format_audit(report))
    text = console.file.getvalue()
    assert "patients in both train/test: 1 (dicom-" in text and "P1" not in text
    # the digest names no file: a film of the patient on each side is shown, as the JSON gives them
    examples = {report["patient_overlap"]["train/test"][0]: [str(root / "test/NORMAL/1.2.3.2.dcm"),
                                                             str(root / "train/NORMAL/1.2.3.1.dcm")]}
    assert report["patient_examples"] == examples
    assert f"  {next(iter(examples))}: {root / 'test/NORMAL/1.2.3.2.dcm'} | {root / 'train/NORMAL/1.2.3.1.dcm'}" in text
    assert "not checked: 1 of 4 films carry no patient id" in text


def test_audit_names_patients_with_films_of_both_classes(tmp_path: Path) -> None:
    """A researcher's manifest giving a normal child's film the id of a child with pneumonia (a typo, or a film filed
    under the wrong class): audit, split and train said nothing of one patient holding both classes."""
    rows = []
    for i, (label, patient) in enumerate([("NORMAL", "P1"), ("PNEUMONIA", "P1"), ("NORMAL", "P2"),
                                          ("PNEUMONIA", "P3")]):
        _picture(i, (32, 32)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{label},{patient}\n")
    (tmp_path / "m.csv").write_text("path,label,patient\n" + "".join(rows))
    report = audit(discover(tmp_path / "m.csv"), workers=1)
    assert report["patients_in_both_classes"] == ["P1"]
    console = Console(file=io.StringIO(), width=400)
    console.print(format_audit(report))
    assert ("patients with films of both NORMAL and PNEUMONIA: 1 (P1): a film filed under the other class, or two "
            "children under one id? (a child filmed again after recovering is one too)") in console.file.getvalue()


def test_audit_says_one_patient_id_over_more_films_than_a_child_has(tiny_dataset: Path, tmp_path: Path) -> None:
    """A manifest whose anonymiser wrote ANON as the patient of 35 of its 48 films: audit said only that ANON holds
    films of both classes, and split keeps them as one patient on one side. Said, with what split does of them."""
    films = sorted(discover(tiny_dataset).split("train"), key=lambda r: r.path)
    rows = [f"{r.path},{r.label},{'ANON' if i < 35 else f'P{i}'}\n" for i, r in enumerate(films)]
    (tmp_path / "m.csv").write_text("path,label,patient\n" + "".join(rows))
    report = audit(discover(tmp_path / "m.csv"), workers=1)
    assert report["crowded_patient"] == {"patient": "ANON", "films": 35}
    console = Console(file=io.StringIO(), width=1000)
    console.print(format_audit(report))
    assert "\n35 of 48 films share one patient id (ANON), more than one child has in data like these" in \
        console.file.getvalue()
    assert audit(discover(tiny_dataset / "train"), workers=1)["crowded_patient"] is None


def test_an_audit_after_a_train_or_another_audit_decodes_no_film_again(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit scanned every film again on every run (5,216 films of the train folder: 10-20 s on 2 cores),
    where train, split and evaluate keep each film's scan beside the image cache (copies.scans). After the copy
    search of a train (which keeps no header) it reads each film's header alone; after another audit, nothing;
    and its report is the one a fresh audit makes. Counted at the reader the registry hands each film to."""
    from pneumoscan.data import readers

    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "fresh"))
    found = discover(tiny_dataset)
    fresh = audit(found) | {"seconds": None}
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    picture_groups([r.path for r in found.records])  # as train's copy search
    pillow = next(r for r in readers.registered() if r.name == "Pillow")
    decoded, headers, gray, header = [], [], pillow.gray, pillow.header

    def counted_gray(src: Path | bytes, at: int | None) -> np.ndarray:
        decoded.append(src)
        return gray(src, at)

    def counted_header(src: Path | bytes) -> dict:
        headers.append(src)
        return header(src)

    monkeypatch.setattr(pillow, "gray", counted_gray)
    monkeypatch.setattr(pillow, "header", counted_header)
    assert audit(found) | {"seconds": None} == fresh
    assert decoded == [] and len(headers) == len(found.records)
    headers.clear()
    assert audit(found) | {"seconds": None} == fresh
    assert decoded == headers == []


def test_a_manifest_whose_patients_are_in_a_column_of_its_own_is_told_to_name_it_patient(tmp_path: Path,
                                                                                         caplog) -> None:
    """A hospital's sheet keeps its patients under MRN: read as a field for evaluate --by, its two films of one child
    were split one per film, and audit said nothing (its JSON counted them), split only that they had no id."""
    rows = []
    for i, (label, mrn) in enumerate([("NORMAL", "0007000"), ("NORMAL", "0007000"), ("PNEUMONIA", "0007013"),
                                      ("PNEUMONIA", "0007026")]):
        _picture(i, (32, 32)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{label},{mrn},north\n")
    (manifest := tmp_path / "films.csv").write_text("path,label,MRN,site\n" + "".join(rows))
    hint = ("the manifest's own columns mrn, site are read as fields to group figures by (evaluate --by), not as "
            "patients: if one of them holds each film's patient, name it patient")
    report = audit(discover(manifest), workers=1)
    console = Console(file=io.StringIO(), width=1000)
    console.print(format_audit(report))
    assert (f"no patient id: 4 of 4 films (in their names, a manifest's patient column or a DICOM header), each a "
            f"patient of its own to split and cv; {hint}") in console.file.getvalue()
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.split"):
        split_dataset(manifest, val_fraction=0.5)
    assert caplog.messages[0].endswith(f"(path,label,patient); {hint}")
