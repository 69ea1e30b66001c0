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


def test_a_film_linked_into_another_split_is_refused(kaggle: Path) -> None:
    (kaggle / "val" / "NORMAL").mkdir(parents=True)
    (kaggle / "val" / "NORMAL" / "IM-0101-0001.jpeg").symlink_to(kaggle / "test" / "NORMAL" / "IM-0101-0001.jpeg")
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


def test_walk_gives_each_film_its_real_path_through_linked_files_and_folders(kaggle: Path, tmp_path: Path) -> None:
    """walk derives an image's real path from its folder's and calls realpath only for a link (discovery keys films
    by it): it must be os.path.realpath's, whether the film, a folder above it or the walked folder is a link."""
    outside = films(tmp_path / "site", {"scans": ["IM-0301-0001.jpeg"], "loose": ["IM-0302-0001.jpeg"]})
    (kaggle / "train/NORMAL/linked").symlink_to(outside / "scans")
    (kaggle / "train/NORMAL/IM-0302-0001.jpeg").symlink_to(outside / "loose/IM-0302-0001.jpeg")
    (tmp_path / "through").symlink_to(kaggle)
    entries = [e for e in walk(tmp_path / "through" / "train") if e.kind == "image"]
    assert len(entries) == 6
    assert all(e.real == os.path.realpath(e.path) for e in entries)
