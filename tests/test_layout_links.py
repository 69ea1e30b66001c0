"""Links inside a folder dataset: one real file is one film, with one label in one split. A link that would read a
film under a second label or split (to another class folder, back up to the dataset) refuses the dataset, whichever
class folder is searched first; a second way into a class folder's own films reads them once."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pneumoscan.data.layouts import discover, read_manifest, write_manifest
from pneumoscan.data.walk import walk


def films(root: Path, names: dict[str, list[str]]) -> Path:
    """Files with distinct bytes at ``folder/name`` (discovery opens none; a split hashes them)."""
    for folder, listed in names.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in listed:
            (root / folder / name).write_bytes(f"{folder}/{name}".encode())
    return root


@pytest.fixture
def kaggle(tmp_path: Path) -> Path:
    return films(tmp_path / "chest_xray", {
        "train/NORMAL": ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg"],
        "train/PNEUMONIA": ["person1_bacteria_1.jpeg", "person2_virus_2.jpeg"],
        "test/NORMAL": ["IM-0101-0001.jpeg"],
        "test/PNEUMONIA": ["person101_virus_1.jpeg"],
    })  # fmt: skip


def refusal(root: Path) -> str:
    with pytest.raises(ValueError) as caught:
        discover(root)
    return str(caught.value)


@pytest.mark.parametrize("link, target, read_as, also", [
    ("train/PNEUMONIA/more", "../NORMAL", "train/NORMAL", "train/PNEUMONIA"),  # searched after its target
    ("train/NORMAL/more", "../PNEUMONIA", "train/PNEUMONIA", "train/NORMAL"),  # searched before it
    ("train/NORMAL/tested", "../../test/NORMAL", "test/NORMAL", "train/NORMAL"),  # a test film into training
])
def test_a_link_to_another_class_folder_is_refused_naming_both(kaggle: Path, link: str, target: str, read_as: str,
                                                               also: str) -> None:
    (kaggle / link).symlink_to(target)
    assert refusal(kaggle) == (f"{kaggle / link} leads to {kaggle / read_as}, read as {read_as}: its films would also "
                               f"be read as {also}, and a film cannot carry two labels or sit in two splits; remove "
                               "the link")


@pytest.mark.parametrize("link, target, reached, above", [
    ("train/NORMAL/root", "../..", "train/NORMAL/root", ""),  # the dataset: PNEUMONIA and test/ films as NORMAL
    ("train/NORMAL/up", "..", "train/NORMAL/up", "train"),  # its own split folder
    ("train/NORMAL/out", "../../..", "train/NORMAL/out/chest_xray", ""),  # the folder holding the dataset
])
def test_a_link_back_up_above_the_class_folders_is_refused(kaggle: Path, link: str, target: str, reached: str,
                                                           above: str) -> None:
    (kaggle / link).symlink_to(target)
    assert refusal(kaggle) == (f"{kaggle / reached} leads back to {kaggle / above}, which holds the class folders: "
                               "the films below it would be read as train/NORMAL too; remove the link")


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_film_linked_into_another_split_is_refused(kaggle: Path, link: str) -> None:
    """A hard link (``cp -al`` of a dataset, a de-duplicating tool) has a real path of its own: keyed by it, one file
    was read as a test film and as a validation film, silently."""
    (kaggle / "val" / "NORMAL").mkdir(parents=True)
    linked, target = (kaggle / split / "NORMAL" / "IM-0101-0001.jpeg" for split in ("val", "test"))
    linked.symlink_to(target) if link == "symbolic" else linked.hardlink_to(target)
    assert refusal(kaggle) == (f"{kaggle / 'test/NORMAL/IM-0101-0001.jpeg'} and "
                               f"{kaggle / 'val/NORMAL/IM-0101-0001.jpeg'} are one file (through a link): it would be "
                               "read as test/NORMAL and as val/NORMAL, and a film cannot carry two labels or sit in "
                               "two splits; remove the link")


def test_a_class_folder_that_is_another_through_a_link_is_refused(kaggle: Path) -> None:
    (kaggle / "val").mkdir()
    (kaggle / "val" / "PNEUMONIA").symlink_to(kaggle / "train" / "PNEUMONIA")
    assert "leads to" in refusal(kaggle) and "read as train/PNEUMONIA" in refusal(kaggle)


def test_the_mendeley_layout_refuses_such_a_link_too(tmp_path: Path) -> None:
    root = films(tmp_path / "CellData", {"train/NORMAL": ["NORMAL-2552119-0002.jpeg"],
                                         "train/PNEUMONIA": ["BACTERIA-4038442-0001.jpeg"]})
    (root / "train" / "PNEUMONIA" / "more").symlink_to("../NORMAL")
    assert "read as train/NORMAL: its films would also be read as train/PNEUMONIA" in refusal(root)


def test_a_second_way_into_a_class_folders_own_films_reads_each_once(kaggle: Path, tmp_path: Path, caplog) -> None:
    """A link back into the class folder, a file link beside its target, two links to one site's folder and a class
    folder spelt twice through a link: every real file is one record, every other way in is listed, and a manifest
    written from the records reads back (one real file listed twice would be refused)."""
    site = films(tmp_path / "site2", {".": ["IM-0201-0001.jpeg"]})
    normal = kaggle / "train" / "NORMAL"
    (normal / "loop").symlink_to(".")
    (normal / "again.jpeg").symlink_to("IM-0001-0001.jpeg")
    (normal / "site").symlink_to(site)
    (normal / "site-again").symlink_to(site)
    (kaggle / "train" / "Normal").symlink_to("NORMAL")
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.layouts"):
        found = discover(kaggle)
    reals = [os.path.realpath(r.path) for r in found.records]
    assert len(reals) == len(set(reals)) == 7
    assert {Path(r.path).name for r in found.records if r.split == "train" and r.label == "NORMAL"} == {
        "IM-0001-0001.jpeg", "IM-0002-0001.jpeg", "IM-0201-0001.jpeg"}
    assert sorted((str(Path(s["path"]).relative_to(kaggle)), s["reason"]) for s in found.skipped) == [
        ("train/NORMAL/again.jpeg", "film already read (a link to it)"),
        ("train/NORMAL/loop", "folder already searched (a link back to it)"),
        ("train/NORMAL/site-again", "folder already searched (a link back to it)"),
        ("train/Normal", "folder already searched (a link back to it)"),
    ]
    [warning] = caplog.messages
    assert "4 entries left out" in warning
    write_manifest(found.records, tmp_path / "split.csv")
    assert [os.path.realpath(r.path) for r in read_manifest(tmp_path / "split.csv").records] == reals


def test_walk_gives_each_film_its_file_identity_through_linked_files_and_folders(kaggle: Path, tmp_path: Path) -> None:
    """walk keys each image by the stat that classified it (discovery reads one file once by it): it must be the
    file's own device and inode, whether the film, a folder above it or the walked folder is a link."""
    outside = films(tmp_path / "site", {"scans": ["IM-0301-0001.jpeg"], "loose": ["IM-0302-0001.jpeg"]})
    (kaggle / "train/NORMAL/linked").symlink_to(outside / "scans")
    (kaggle / "train/NORMAL/IM-0302-0001.jpeg").symlink_to(outside / "loose/IM-0302-0001.jpeg")
    (tmp_path / "through").symlink_to(kaggle)
    entries = [e for e in walk(tmp_path / "through" / "train") if e.kind == "image"]
    assert len(entries) == 6
    assert all(e.file_id == (os.stat(e.path).st_dev, os.stat(e.path).st_ino) for e in entries)
    assert len({e.file_id for e in entries}) == 6


def test_a_manifest_listing_one_file_twice_through_a_hard_link_is_refused(kaggle: Path) -> None:
    (kaggle / "copy.jpeg").hardlink_to(kaggle / "test" / "NORMAL" / "IM-0101-0001.jpeg")
    (kaggle / "m.csv").write_text("path,label,split\ntest/NORMAL/IM-0101-0001.jpeg,NORMAL,test\n"
                                  "copy.jpeg,NORMAL,train\n")
    with pytest.raises(ValueError, match=r"line 3: copy.jpeg is listed again \(first on line 2, as test/NORMAL/"):
        read_manifest(kaggle / "m.csv")


@pytest.mark.parametrize("folder", ["train", "train/PNEUMONIA"])
def test_a_split_or_class_folder_that_is_a_link_to_nothing_is_refused(kaggle: Path, folder: str) -> None:
    """Storage not mounted: the link was left out as a file of no image ending, with no warning, and the split was
    made without its films (with a broken train/, of val/ alone)."""
    moved = kaggle / "moved"
    (kaggle / folder).rename(moved)
    (kaggle / folder).symlink_to(moved)
    (kaggle / "val" / "NORMAL").mkdir(parents=True)  # so that the root is still recognised with train/ gone
    films(kaggle, {"val/NORMAL": ["IM-0201-0001.jpeg"], "val/PNEUMONIA": ["person201_virus_1.jpeg"]})
    assert len(discover(kaggle).records) == 8
    moved.rename(kaggle.parent / "elsewhere")
    assert refusal(kaggle) == (f"{kaggle / folder} is a link to {moved}, which is not there (a disk not mounted, or a "
                               "moved folder?): its films cannot be read; mount or restore it, or remove the link")


@pytest.mark.parametrize("folder", ["NORMAL/test", "PNEUMONIA/train", "NORMAL/val scans"])
def test_a_film_in_a_split_folder_below_a_class_folder_is_refused(tmp_path: Path, folder: str) -> None:
    """A class-first re-pack ({NORMAL,PNEUMONIA}/{train,test}/): every film was read as of no split and pooled for
    training and validation, the test films among them."""
    root = films(tmp_path / "repack", {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"],
                                       folder: ["IM-0301-0001.jpeg"]})
    assert refusal(root).startswith(f"{root / folder / 'IM-0301-0001.jpeg'} is below the {folder.split('/')[0]} "
                                    f"folder but in {folder.split('/')[1]}, named for the ")


def test_a_nas_folder_of_thumbnails_is_listed_never_read(kaggle: Path, caplog) -> None:
    """A Synology keeps @eaDir/FILM/SYNOFILE_THUMB_*.jpg beside each film: the thumbnails were read as films of
    patients of their own, and the folders named like the films warned of as left out."""
    thumbs = "train/NORMAL/@eaDir/IM-0001-0001.jpeg"
    films(kaggle, {thumbs: ["SYNOFILE_THUMB_M.jpg", "SYNOFILE_THUMB_S.jpg"], "train/#recycle": ["IM-0009-0001.jpeg"]})
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.layouts"):
        found = discover(kaggle)
    assert len(found.records) == 6 and not any("@eaDir" in r.path for r in found.records)
    assert {s["reason"] for s in found.skipped if "@eaDir" in s["path"]} == {"system folder"}
    assert not caplog.messages
