"""Dataset layouts: the built-in ones (Kaggle folders, the Mendeley release, a CSV manifest), how discover picks
one or takes the one named, their file-name rules, and a toy layout registered in this file alone."""

from __future__ import annotations

import logging

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.data import layouts as layouts_module
from pneumoscan.data.copies import shared_patients
from pneumoscan.data.layouts import (
    Discovery,
    KaggleLayout,
    Layout,
    MendeleyLayout,
    Record,
    discover,
    layouts,
    make_record,
    name_conflict,
    own_patient,
    parse_any,
    read_manifest,
    register_layout,
    unregister_layout,
    write_manifest,
)
from pneumoscan.data.walk import walk
from pneumoscan.data.tasks import get_task, warn_untyped
from tests.builders import dicom_bytes


def tree(root: Path, files: dict[str, list[str]]) -> Path:
    """Empty files at ``split/CLASS/name``: discovery lists names, it opens no image."""
    for folder, names in files.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).write_bytes(b"")
    return root


def by_name(found: Discovery) -> dict[str, tuple[str, str, str, str]]:
    return {Path(r.path).name: (r.label, r.subtype, r.patient, r.split) for r in found.records}


def test_built_in_layouts_in_the_order_discover_tries_them() -> None:
    assert list(layouts()) == ["manifest", "mendeley", "kaggle"]
    assert all(layout.description for layout in layouts().values())


def test_kaggle_folders_and_names(tmp_path: Path) -> None:
    root = tree(tmp_path / "chest_xray", {
        "train/NORMAL": ["IM-0115-0001.jpeg", "NORMAL2-IM-0381-0001.jpeg"],
        "train/PNEUMONIA": ["person12_bacteria_45.jpeg", "person3_virus_9.jpeg", "odd.jpeg"],
        "val/normal": ["IM-0001-0001.jpeg"],
    })  # fmt: skip
    found = discover(root)
    assert found.layout == "kaggle"
    assert by_name(found) == {
        "IM-0115-0001.jpeg": ("NORMAL", "normal", "IM-0115", "train"),
        "NORMAL2-IM-0381-0001.jpeg": ("NORMAL", "normal", "NORMAL2-IM-0381", "train"),
        "person12_bacteria_45.jpeg": ("PNEUMONIA", "bacteria", "person12", "train"),
        "person3_virus_9.jpeg": ("PNEUMONIA", "virus", "person3", "train"),
        # no rule fits: subtype unknown, and the film is a patient of its own, named by its path in the dataset
        "odd.jpeg": ("PNEUMONIA", "", "train/PNEUMONIA/odd.jpeg", "train"),
        "IM-0001-0001.jpeg": ("NORMAL", "normal", "IM-0001", "val"),
    }
    assert discover(root / "train").layout == "kaggle"  # a single split folder


@pytest.mark.parametrize("folder, other", [("NORMAL", "NORMAL"), ("normal cases", "NORMAL"), ("2019/Normal", "NORMAL")])
def test_a_film_in_a_folder_named_for_the_other_class_is_refused(tmp_path: Path, folder: str, other: str) -> None:
    """A NORMAL/ folder filed inside PNEUMONIA/ had its films read as pneumonia, with no conflict and no warning:
    trained and measured under the wrong label."""
    root = tree(tmp_path / "chest_xray", {"train/NORMAL": ["IM-0115-0001.jpeg"],
                                          f"train/PNEUMONIA/{folder}": ["IM-0116-0001.jpeg"],
                                          "train/PNEUMONIA/bacteria": ["person12_bacteria_45.jpeg"]})
    with pytest.raises(ValueError, match=f"is below the PNEUMONIA folder but in .*named for {other} films: it would "
                                         "be read as PNEUMONIA; move it to its class folder"):
        discover(root)
    (root / "train" / "PNEUMONIA" / folder / "IM-0116-0001.jpeg").unlink()
    assert len(discover(root).records) == 2  # a subtype's folder, or any other, is no class's


def test_entries_that_may_hold_films_are_counted_in_one_warning(tmp_path: Path, caplog) -> None:
    """A .tif, a broken link among the films and a folder no split is read as leave training and evaluation with a
    warning; a .DS_Store and a README beside the split folders are only listed (audit)."""
    root = tree(tmp_path / "chest_xray", {
        "train/NORMAL": ["IM-0115-0001.jpeg", "IM-0116-0001.tif", ".DS_Store"],
        "validation/NORMAL": ["IM-0117-0001.jpeg"],
    })  # fmt: skip
    (root / "README.md").write_text("where the films come from")
    (root / "__MACOSX" / "train").mkdir(parents=True)  # a Mac's resource forks, never films
    (root / "train" / "NORMAL" / "IM-0118-0001.jpeg").symlink_to(tmp_path / "gone.jpeg")
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.layouts"):
        found = discover(root)
    assert [Path(r.path).name for r in found.records] == ["IM-0115-0001.jpeg"]
    assert len(found.skipped) == 6
    [warning, _] = caplog.messages  # the second names validation/ (test_a_split_folder_spelt_otherwise_is_named)
    assert "3 entries left out" in warning
    for counted in ("not an image extension (.tif): 1", "broken link: 1", "not a split folder: 1"):
        assert counted in warning
    assert "README" not in warning and "system file" not in warning


def test_films_loose_beside_the_class_folders_are_warned_of(tmp_path: Path, caplog) -> None:
    """A film in train/ or test/ itself belongs to no class: it is left out, and said to be (a README is not)."""
    root = tree(tmp_path / "chest_xray", {
        "train": ["person70_bacteria_0.jpeg", "notes.txt"],
        "train/NORMAL": ["IM-0115-0001.jpeg"],
        "test": ["IM-0700-0001.jpeg"],
    })  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.layouts"):
        found = discover(root)
    assert [Path(r.path).name for r in found.records] == ["IM-0115-0001.jpeg"]
    [warning] = caplog.messages
    assert "2 entries left out (outside the class folders: 2)" in warning


def test_one_entry_left_out_is_counted_as_one(tmp_path: Path, caplog) -> None:
    """The count warning said "1 entries left out"."""
    root = tree(tmp_path / "chest_xray", {"train/NORMAL": ["IM-0115-0001.jpeg", "IM-0116-0001.tif"]})
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.layouts"):
        discover(root)
    [warning] = caplog.messages
    assert "1 entry left out (not an image extension (.tif): 1)" in warning


def test_a_class_lost_to_folders_left_out_is_named(tmp_path: Path, caplog) -> None:
    """A re-pack as test/{NORMAL,BACTERIA,VIRUS} was read as NORMAL films alone, which evaluate scored, saying only
    "2 entries left out (not a class folder: 2)"; a folder beside both classes (COVID/) stays a count."""
    root = tree(tmp_path / "repack", {
        "test/NORMAL": ["IM-0115-0001.jpeg"], "test/BACTERIA": ["person1_bacteria_1.jpeg"],
        "test/VIRUS": ["person2_virus_2.jpeg"], "train/NORMAL": ["IM-0116-0001.jpeg"],
        "train/PNEUMONIA": ["person3_virus_3.jpeg"], "train/COVID": ["covid-1.jpeg"],
    })  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.layouts"):
        discover(root)
    assert caplog.messages[1:] == [
        f"{root}: no PNEUMONIA film in its test split, while BACTERIA, VIRUS beside its class folders were left out (a "
        "class folder is named NORMAL or PNEUMONIA): if they hold PNEUMONIA films, rename them, or list the films in a "
        "manifest"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.layouts"):
        discover(root / "train")
    assert [m for m in caplog.messages if "beside its class folders" in m] == []


def test_a_split_folder_spelt_otherwise_is_named_with_its_name_to_give(tmp_path: Path, caplog) -> None:
    """A re-pack's validation/ and testing/ were left out with their films, said only as "not a split folder: 2":
    evaluate --split test then found no test split, and training lost the validation films."""
    root = tree(tmp_path / "repack", {
        "train/NORMAL": ["IM-0115-0001.jpeg"], "train/PNEUMONIA": ["person3_virus_3.jpeg"],
        "validation/NORMAL": ["IM-0116-0001.jpeg"], "testing/pneumonia": ["person4_virus_4.jpeg"],
        "extra/NORMAL": ["IM-0117-0001.jpeg"], "notes/2024": ["a.txt"],
    })  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.layouts"):
        discover(root)
    assert caplog.messages[1:] == [
        f"{root}: extra, testing, validation hold class folders but are not split folders (named train, val or "
        "test), so their films are left out: rename extra to train, val or test, testing to test, validation to val"]


def test_split_folders_spelt_twice_are_refused(tmp_path: Path) -> None:
    """train/ and TRAIN/ (two archives unpacked side by side): keeping either would drop the other's films."""
    root = tree(tmp_path / "chest_xray", {"train/NORMAL": ["IM-0001-0001.jpeg"], "TRAIN/NORMAL": ["IM-0002-0001.jpeg"],
                                          "test/NORMAL": ["IM-0003-0001.jpeg"]})
    with pytest.raises(ValueError) as caught:
        discover(root)
    assert str(caught.value) == (f"{root / 'TRAIN'} and {root / 'train'} are both the train split folder, as folder "
                                 "names are matched in any case: merge them into one, or rename or move the other")


def test_a_film_without_a_patient_id_is_a_patient_of_its_own(tmp_path: Path) -> None:
    """0001.jpeg in every folder is a different film each time: its id is its path in the dataset, so no patient is
    found in two splits through such names, while a named film keeps its patient."""
    root = tree(tmp_path / "site", {folder: ["0001.jpeg", "0002.png"] for folder in (
        "train/NORMAL", "train/PNEUMONIA", "val/NORMAL", "test/PNEUMONIA")})
    (root / "train" / "PNEUMONIA" / "person3_virus_7.jpeg").write_bytes(b"")
    records = discover(root).records
    unnamed = [r for r in records if own_patient(r)]
    assert len(unnamed) == 8 and len({r.patient for r in unnamed}) == 8
    assert {r.patient for r in unnamed if r.split == "val"} == {"val/NORMAL/0001.jpeg", "val/NORMAL/0002.png"}
    assert [r.patient for r in records if not own_patient(r)] == ["person3"]
    assert all(not ids for ids in shared_patients(records).values())
    # a manifest row without a patient is its own patient too, by its path as listed; a patient column names one
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label,patient\n"
                        "site/train/NORMAL/0001.jpeg,NORMAL,\nsite/val/NORMAL/0001.jpeg,NORMAL,P7\n")
    listed = read_manifest(manifest).records
    assert [(r.patient, own_patient(r)) for r in listed] == [("site/train/NORMAL/0001.jpeg", True), ("P7", False)]
    assert make_record("/x/NORMAL/0001.jpeg", "NORMAL").patient == "/x/NORMAL/0001.jpeg"  # no root: the whole path


def test_mendeley_release_is_told_from_its_names(tmp_path: Path) -> None:
    root = tree(tmp_path / "CellData" / "chest_xray", {
        "train/NORMAL": ["NORMAL-2552119-0002.jpeg"],
        "train/PNEUMONIA": ["BACTERIA-4038442-0001.jpeg", "virus-2040583-0001.jpeg", "NORMAL-7-0001.jpeg"],
        "test/PNEUMONIA": ["person1_virus_1.jpeg"],  # a merged Kaggle film: its own release's rules still apply
    })  # fmt: skip
    found = discover(root)
    assert found.layout == "mendeley"
    assert by_name(found) == {
        "NORMAL-2552119-0002.jpeg": ("NORMAL", "normal", "2552119", "train"),
        "BACTERIA-4038442-0001.jpeg": ("PNEUMONIA", "bacteria", "4038442", "train"),
        "virus-2040583-0001.jpeg": ("PNEUMONIA", "virus", "2040583", "train"),
        "NORMAL-7-0001.jpeg": ("PNEUMONIA", "", "7", "train"),  # the folder's label wins, the kind is unknown
        "person1_virus_1.jpeg": ("PNEUMONIA", "virus", "person1", "test"),
    }


def test_each_layout_owns_its_name_rules() -> None:
    kaggle, mendeley = KaggleLayout(), MendeleyLayout()
    assert kaggle.parse_name("person12_bacteria_45", "PNEUMONIA") == ("bacteria", "person12")
    assert kaggle.parse_name("BACTERIA-4038442-0001", "PNEUMONIA") is None
    assert mendeley.parse_name("BACTERIA-4038442-0001", "PNEUMONIA") == ("bacteria", "4038442")
    assert mendeley.parse_name("IM-0115-0001", "NORMAL") is None
    # parse_any tries the named layout first, then every registered one; None when no rules fit
    assert parse_any("IM-0115-0001.jpeg", "NORMAL", mendeley) == ("normal", "IM-0115")
    assert parse_any("scan 7.png", "NORMAL") is None


@pytest.mark.parametrize("name, label, parsed, conflict", [
    # the patient id in a name is kept whatever the folder, so the child's films stay on one side of a split
    ("person1_bacteria_9.jpeg", "NORMAL", ("normal", "person1"), "named bacteria, labelled NORMAL"),
    ("NORMAL2-IM-0381-0001.jpeg", "PNEUMONIA", ("", "NORMAL2-IM-0381"), "named normal, labelled PNEUMONIA"),
    # a bare IM- name is also what DICOM exporters (OsiriX, Horos) give any film: no kind, and outside NORMAL/ no
    # patient (a series number would tie unrelated patients' films together)
    ("IM-0115-0001.jpeg", "PNEUMONIA", None, None),
    ("IM-0115-0001.jpeg", "NORMAL", ("normal", "IM-0115"), None),
    ("BACTERIA-1008087-0001.jpeg", "NORMAL", ("normal", "1008087"), "named bacteria, labelled NORMAL"),
    ("person1_virus_3.jpeg", "PNEUMONIA", ("virus", "person1"), None),
    ("NORMAL2-IM-0381-0001.jpeg", "NORMAL", ("normal", "NORMAL2-IM-0381"), None),
    # the Mendeley rule takes a copy's suffix and a second counter, as the Kaggle rules do
    ("BACTERIA-1008087-0001 (1).jpeg", "PNEUMONIA", ("bacteria", "1008087"), None),
    ("NORMAL-1003233-0001-0002.jpeg", "NORMAL", ("normal", "1003233"), None),
    ("scan 7.png", "NORMAL", None, None),
])
def test_a_name_keeps_its_patient_in_any_folder_and_a_contradiction_is_named(
        name: str, label: str, parsed: tuple[str, str] | None, conflict: str | None) -> None:
    assert parse_any(name, label) == parsed
    rec = make_record(f"/x/{label}/{name}", label)
    assert name_conflict(rec) == conflict
    assert not own_patient(rec) if parsed else own_patient(rec)


def test_a_manifest_subtype_contradicting_the_name_is_a_conflict(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,label,subtype\nperson1_bacteria_9.jpeg,PNEUMONIA,virus\nperson2_virus_1.jpeg,PNEUMONIA,\n")
    first, second = read_manifest(csv_path).records
    assert name_conflict(first) == "named bacteria, labelled PNEUMONIA virus" and name_conflict(second) is None


def test_manifest_is_a_layout(tmp_path: Path) -> None:
    records = [make_record(tmp_path / "a" / "VIRUS-55-0001.jpeg", "PNEUMONIA", "train"),
               make_record(tmp_path / "b.png", "NORMAL", "test")]
    write_manifest(records, tmp_path / "list.csv")
    found = discover(tmp_path / "list.csv")
    assert found.layout == "manifest"
    assert found.records == read_manifest(tmp_path / "list.csv").records
    assert by_name(found)["VIRUS-55-0001.jpeg"] == ("PNEUMONIA", "virus", "55", "train")


def test_a_manifests_own_columns_are_the_films_fields_and_written_back(tmp_path: Path) -> None:
    """A site's own columns (site, age: evaluate --by groups by them) were refused; they are kept as each film's
    columns, in the manifest's order, and a manifest written from the records (a run's split.csv) keeps them."""
    (tmp_path / "m.csv").write_text("path,label,Site,age\na.png,NORMAL,north, 3\nperson1_virus_1.png,PNEUMONIA,,\n")
    records = read_manifest(tmp_path / "m.csv").records
    assert [r.columns for r in records] == [(("site", "north"), ("age", "3")), (("site", ""), ("age", ""))]
    write_manifest(records, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text().splitlines()[0] == "path,label,subtype,patient,split,site,age"
    again = read_manifest(tmp_path / "again.csv").records
    assert again == records and [r.columns for r in again] == [r.columns for r in records]


def test_a_named_layout_is_used_or_refused_with_a_reason(tmp_path: Path) -> None:
    root = tree(tmp_path / "ds", {"train/NORMAL": ["IM-0001-0001.jpeg"]})
    assert discover(root, layout="kaggle").layout == "kaggle"
    with pytest.raises(ValueError, match=r"not laid out as mendeley \(.*NORMAL-2552119"):
        discover(root, layout="mendeley")
    with pytest.raises(ValueError, match=r"unknown dataset layout 'kagle'; did you mean 'kaggle'\? \(choose from "
                                         r"manifest, mendeley, kaggle\)"):
        discover(root, layout="kagle")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no dataset layout recognises it: it is an empty folder .*kaggle: "):
        discover(tmp_path / "empty")
    with pytest.raises(ValueError, match=f"recognises it: it is one class's folder; give the folder that holds NORMAL "
                                         rf"and PNEUMONIA \({root / 'train'}\) \(expected "):
        discover(root / "train" / "NORMAL")
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        discover(tmp_path / "missing")
    own = tree(tmp_path / "own", {"healthy": ["0001.png"], "sick": ["0002.png"]})  # a site's films, its own names
    with pytest.raises(ValueError, match=r"kaggle: \{train,val,test\}/\{NORMAL,PNEUMONIA\} folders, or NORMAL/ and "
                                         r"PNEUMONIA/ alone; "):
        discover(own)


def test_an_empty_root_is_refused_as_an_unset_variable_not_read_as_this_folder(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`pneumoscan audit "$PNEUMOSCAN_DATA"` with the variable unset gave "", read as the folder the command ran in:
    a dataset there was read in its place, or the refusal named folders below it to give instead."""
    tree(tmp_path / "chest_xray", {"train/NORMAL": ["IM-0001-0001.jpeg"], "train/PNEUMONIA": ["person1_virus_1.jpeg"]})
    monkeypatch.chdir(tmp_path / "chest_xray")
    with pytest.raises(ValueError, match=r"^no dataset given \(an empty path: is the variable that names it, such as "
                                         r"\$PNEUMOSCAN_DATA, set\?\)$"):
        discover("")


def test_a_root_one_folder_too_high_or_a_film_names_what_to_give(tmp_path: Path) -> None:
    """The mistakes of a first run: the folder the dataset was unpacked into (Mendeley's ``CellData/`` beside
    ``OCT/``), or one film, given for the dataset root. A film was called UTF-16 text to save as CSV."""
    root = tree(tmp_path / "CellData" / "chest_xray", {"train/NORMAL": ["IM-0001-0001.jpeg"],
                                                       "train/PNEUMONIA": ["person1_virus_1.jpeg"]})
    (tmp_path / "CellData" / "OCT" / "train" / "NORMAL").mkdir(parents=True)  # and CNV/, DME/, DRUSEN/
    with pytest.raises(ValueError, match=rf"it holds a dataset; give {re.escape(str(root))} \(expected "):
        discover(tmp_path / "CellData")
    film = root / "train" / "NORMAL" / "IM-0001-0001.jpeg"
    film.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200))
    holder = re.escape(str(root / "train"))
    with pytest.raises(ValueError, match=r"recognises it: it is an image, not a dataset; give the folder that holds "
                                         rf"NORMAL and PNEUMONIA \({holder}\) \(expected ") as e:
        discover(film)
    assert "UTF-16" not in str(e.value)


class ToyLayout(Layout):
    """A flat folder of Shenzhen-style names, ``CHNCXR_0001_1.png``: site, patient, and the label in the name
    (0 normal, 1 pneumonia); no split. Recognised by a ``LAYOUT-toy`` marker file."""

    name = "toy"
    description = "a flat folder with LAYOUT-toy and CHNCXR_<patient>_<0|1>.png films"
    _NAME = re.compile(r"^(CHNCXR_\d+)_([01])$")

    def detect(self, root: Path) -> bool:
        return (root / "LAYOUT-toy").is_file()

    def discover(self, root: Path) -> Discovery:
        found = Discovery(layout=self.name)
        for entry in walk(root):
            m = self._NAME.match(entry.path.stem)
            if entry.kind == "image" and m:
                found.records.append(make_record(entry.path, "PNEUMONIA" if m.group(2) == "1" else "NORMAL",
                                                 layout=self))
            else:
                found.skipped.append({"path": str(entry.path), "reason": entry.reason or "not a CHNCXR name"})
        return found

    def parse_name(self, stem: str, label: str) -> tuple[str, str] | None:
        m = self._NAME.match(stem)
        return None if m is None else ("normal" if label == "NORMAL" else "", m.group(1))


@pytest.fixture
def toy_layout() -> Iterator[ToyLayout]:
    layout = register_layout(ToyLayout(), first=True)
    try:
        yield layout
    finally:
        unregister_layout(layout.name)


def test_a_second_layout_of_a_name_replaces_it_with_a_warning(
    toy_layout: ToyLayout, caplog: pytest.LogCaptureFixture
) -> None:
    """As every registry does: a notebook cell that registers a layout runs again, and says it replaced one."""
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.layouts"):
        again = register_layout(ToyLayout(), first=True)
    assert caplog.messages == ["layout 'toy' was already registered: this registration replaces it"]
    assert list(layouts().values())[0] is again and list(layouts()).count("toy") == 1


class _CrashingLayout(ToyLayout):
    """A site's layout with a slip in its own code: a dict of labels missing one."""

    name = "crashing"

    def discover(self, root: Path) -> Discovery:
        return {"0": "NORMAL"}["1"]


def test_a_layout_whose_own_code_fails_is_named_with_the_error(tmp_path: Path) -> None:
    """A registered layout whose discover raised a KeyError ended audit, train and evaluate in a traceback; it is
    refused in one line naming the layout, its class, the root and the error. A layout's own refusals (ValueError,
    OSError) stay as they are."""
    root = tree(tmp_path / "site", {".": ["LAYOUT-toy", "CHNCXR_0001_0.png"]})
    register_layout(_CrashingLayout(), first=True)
    try:
        with pytest.raises(ValueError, match="^" + re.escape(
                f"the crashing layout ({__name__}._CrashingLayout) failed on {root}: KeyError: '1'; mend the "
                "layout") + "$"):
            discover(root)
    finally:
        unregister_layout("crashing")


class _AbnormalLayout(ToyLayout):
    """A site's layout that gives its own word for pneumonia, which is no label."""

    name = "abnormal"

    def discover(self, root: Path) -> Discovery:
        return Discovery(layout=self.name, records=[make_record(root / "CHNCXR_0001_1.png", "ABNORMAL", layout=self)])


class _AbnormalRecordLayout(ToyLayout):
    """The same site's layout making its records itself, past make_record's label check."""

    name = "abnormal"

    def discover(self, root: Path) -> Discovery:
        return Discovery(layout=self.name, records=[Record(str(root / "CHNCXR_0001_1.png"), "ABNORMAL", "", "p1")])


@pytest.mark.parametrize("layout, film", [(_AbnormalLayout, ""), (_AbnormalRecordLayout, "CHNCXR_0001_1.png")],
                         ids=["make_record", "Record"])
def test_a_layout_that_gives_an_unknown_label_is_named(layout: type[ToyLayout], film: str, tmp_path: Path) -> None:
    """The label check refused a registered layout's ABNORMAL as a manifest row's is refused, without naming the
    layout whose code gave it: it is named as the layout whose code fails is. A layout that made its records itself
    (no make_record) ended audit in a traceback (a KeyError counting the labels): its labels are checked too, the
    film named."""
    root = tree(tmp_path / "site", {".": ["LAYOUT-toy", "CHNCXR_0001_1.png"]})
    register_layout(layout(), first=True)
    of = f" for {root / film}" if film else ""
    try:
        with pytest.raises(ValueError, match="^" + re.escape(
                f"the abnormal layout ({__name__}.{layout.__qualname__}) failed on {root}: unknown label 'ABNORMAL' "
                f"(choose from NORMAL, PNEUMONIA){of}; mend the layout") + "$"):
            discover(root)
    finally:
        unregister_layout("abnormal")


def test_toy_layout_is_picked_and_its_name_rules_serve_manifests(toy_layout: ToyLayout, tmp_path: Path) -> None:
    root = tree(tmp_path / "shenzhen", {".": ["LAYOUT-toy", "CHNCXR_0001_0.png", "CHNCXR_0002_1.png"]})
    assert list(layouts())[0] == "toy"
    found = discover(root)
    assert found.layout == "toy"
    assert by_name(found) == {"CHNCXR_0001_0.png": ("NORMAL", "normal", "CHNCXR_0001", ""),
                              "CHNCXR_0002_1.png": ("PNEUMONIA", "", "CHNCXR_0002", "")}
    assert found.skipped == [{"path": str(root / "LAYOUT-toy"), "reason": "not an image extension (none)"}]
    # a manifest row without a patient gets it from the registered layouts' name rules, the toy one's included
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"path,label\n{root / 'CHNCXR_0002_1.png'},PNEUMONIA\n")
    assert discover(manifest).records == [Record(str(root / "CHNCXR_0002_1.png"), "PNEUMONIA", "", "CHNCXR_0002")]


def test_without_the_toy_layout_its_folder_is_not_recognised(tmp_path: Path) -> None:
    root = tree(tmp_path / "shenzhen", {".": ["LAYOUT-toy", "CHNCXR_0001_0.png"]})
    assert "toy" not in layouts()
    with pytest.raises(ValueError, match="no dataset layout recognises it"):
        discover(root)
    assert parse_any("CHNCXR_0001_0.png", "NORMAL") is None


def _dicom(path: Path, **elements: object) -> Path:
    """A small DICOM film at ``path`` with the given header elements (PatientID, IssuerOfPatientID, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dicom_bytes(np.arange(64, dtype=np.uint16).reshape(8, 8) * 60, **elements))
    return path


def test_a_dicom_film_without_a_name_id_is_its_header_patients(tmp_path: Path) -> None:
    """PACS exports name films by UID: the header's PatientID (with its issuer) is what ties a patient's films, so
    split keeps them together and audit sees one patient in two splits. The id is kept out of the record."""
    root = tmp_path / "pacs"
    first = _dicom(root / "train/NORMAL/1.2.826.0.1.1.dcm", PatientID="123", IssuerOfPatientID="HOSP_A")
    again = _dicom(root / "test/NORMAL/1.2.826.0.1.2.dcm", PatientID="123", IssuerOfPatientID="HOSP_A")
    other = _dicom(root / "test/PNEUMONIA/1.2.826.0.1.3.dcm", PatientID="123", IssuerOfPatientID="HOSP_B")
    unnamed = _dicom(root / "test/PNEUMONIA/1.2.826.0.1.4.dcm")
    patients = {Path(r.path): r.patient for r in discover(root).records}
    assert patients[first] == patients[again] != patients[other]  # two hospitals' "123" are two patients
    assert patients[first].startswith("dicom-") and "123" not in patients[first] + patients[other]
    assert patients[unnamed] == "test/PNEUMONIA/1.2.826.0.1.4.dcm"  # no PatientID: a patient of its own
    assert shared_patients(discover(root).records) == {"train/test": [patients[first]]}
    # a manifest's patient column wins over the header, and one pneumoscan wrote reads back the same
    (tmp_path / "typed.csv").write_text(f"path,label,patient\n{first},NORMAL,MRN9\n{again},NORMAL,\n")
    assert [r.patient for r in read_manifest(tmp_path / "typed.csv").records] == ["MRN9", patients[again]]
    write_manifest(discover(root).records, tmp_path / "split.csv")
    assert read_manifest(tmp_path / "split.csv").records == discover(root).records


def test_a_header_patient_id_is_one_patient_in_any_case(tmp_path: Path) -> None:
    """Two systems of one site may write a child's PatientID as MRN100 and mrn100 (and the issuer likewise): one
    patient, as a manifest's ids are (patient_key), so the split cannot put the child on both sides."""
    root = tmp_path / "pacs"
    upper = _dicom(root / "train/NORMAL/1.2.826.0.2.1.dcm", PatientID="MRN100", IssuerOfPatientID="HOSP_A")
    lower = _dicom(root / "train/NORMAL/1.2.826.0.2.2.dcm", PatientID="mrn100", IssuerOfPatientID="hosp_a")
    other = _dicom(root / "train/NORMAL/1.2.826.0.2.3.dcm", PatientID="MRN101", IssuerOfPatientID="HOSP_A")
    patients = {Path(r.path): r.patient for r in discover(root).records}
    assert patients[upper] == patients[lower] != patients[other]


def test_a_jpeg_dataset_reads_no_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a film whose ending no other format claims is read for a DICOM header: JPEG and PNG datasets without
    ids in their names stay as quick to discover as before."""
    def no_header(path: object, dicom: bool = False) -> None:
        raise AssertionError(f"header read: {path}")

    monkeypatch.setattr(layouts_module, "read_dicom_header", no_header)
    root = tree(tmp_path / "own", {"NORMAL": ["0001.jpeg", "0002.JPG"], "PNEUMONIA": ["0001.png"]})
    assert all(own_patient(r) for r in discover(root).records)


@pytest.mark.parametrize("label", ["NORMAL", "PNEUMONIA"])
def test_osirix_names_of_dicom_films_tie_no_patients_in_any_folder(tmp_path: Path, label: str) -> None:
    """OsiriX and Horos number every patient's series IM-0001: in NORMAL/ as in PNEUMONIA/, the name gives a DICOM
    film no patient (its header does), while a Kermany JPEG keeps its study in NORMAL/."""
    assert parse_any("IM-0001-0002.dcm", label) is None
    assert parse_any("IM-0115-0001.jpeg", label) == (("normal", "IM-0115") if label == "NORMAL" else None)
    # a Kermany film converted to PNG keeps its study (only a DICOM film's IM- name is an exporter's number)
    assert parse_any("IM-0115-0001.png", label) == parse_any("IM-0115-0001.jpeg", label)
    films = [_dicom(tmp_path / "osirix" / split / label / "IM-0001-0001.dcm", PatientID=f"P{split}")
             for split in ("train", "test")]
    records = discover(tmp_path / "osirix").records
    assert {Path(r.path) for r in records} == set(films)
    assert len({r.patient for r in records}) == 2 and shared_patients(records) == {"train/test": []}


@pytest.mark.parametrize("name, subtype", [
    ("child0_bacteria_0.jpeg", "bacteria"),
    ("child10_virus_20.jpeg", "virus"),
    ("Viral Pneumonia-12.png", "virus"),
    ("2023-01-05.BACTERIAL.png", "bacteria"),
    ("bacteria_or_virus_1.png", ""),  # both: unknown
    ("nonbacterial_3.png", ""),  # inside another word
    ("non-viral_4.png", ""),  # negated: read as viral it would be the opposite label
    ("not_viral_5.png", ""),
    ("virus_negative_6.png", ""),
    ("NON-BACTERIAL_1.png", ""),
    ("scan_0002.jpeg", ""),
])  # fmt: skip
def test_a_name_that_says_the_kind_as_a_word_gives_the_subtype(name: str, subtype: str) -> None:
    rec = make_record(f"/x/PNEUMONIA/{name}", "PNEUMONIA")
    assert rec.subtype == subtype and own_patient(rec)
    # in NORMAL/ the folder wins, and the contradiction is reported
    conflict = name_conflict(make_record(f"/x/NORMAL/{name}", "NORMAL"))
    assert conflict == (f"named {subtype}, labelled NORMAL" if subtype else None)


@pytest.mark.parametrize("name, conflict", [
    ("Normal-12.png", "named normal, labelled PNEUMONIA"),  # the COVID-19 Radiography Database's names
    ("normal case 3.jpeg", "named normal, labelled PNEUMONIA"),
    ("abnormal_4.png", None),  # inside another word
    ("not normal 5.png", None),  # negated
])  # fmt: skip
def test_a_pneumonia_film_named_normal_as_a_word_is_a_conflict(name: str, conflict: str | None) -> None:
    """The mirror of NORMAL/Viral Pneumonia-12.png was not reported: a name no layout rules stated no kind but
    bacteria or virus."""
    rec = make_record(f"/x/PNEUMONIA/{name}", "PNEUMONIA")
    assert name_conflict(rec) == conflict and rec.subtype == ""  # "normal" is no pneumonia subtype
    assert name_conflict(make_record(f"/x/NORMAL/{name}", "NORMAL")) is None


def test_a_manifest_subtype_may_be_bacterial_or_viral(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,label,subtype\na.png,PNEUMONIA,Bacterial\nb.png,PNEUMONIA,viral\n")
    assert [r.subtype for r in read_manifest(tmp_path / "m.csv").records] == ["bacteria", "virus"]
    (tmp_path / "bad.csv").write_text("path,label,subtype\na.png,PNEUMONIA,abnormal\n")
    with pytest.raises(ValueError) as e:  # no guess: 'normal' is the opposite class
        read_manifest(tmp_path / "bad.csv")
    assert str(e.value).endswith("line 2: unknown subtype 'abnormal' (choose from normal, bacteria, virus, or leave "
                                 "it empty for PNEUMONIA)")
    (tmp_path / "misfit.csv").write_text("path,label,subtype\na.png,NORMAL,viral\n")
    with pytest.raises(ValueError, match="line 2: subtype 'virus' does not fit label NORMAL"):
        read_manifest(tmp_path / "misfit.csv")


def test_a_dicom_file_without_a_dcm_ending_is_a_film_in_a_folder(tmp_path: Path) -> None:
    """DICOM media name their files IM000001 (no ending) and PACS exports by UID: a walk reads them by their
    DICM magic, as predict does a file named directly. Other files without an image ending stay skipped."""
    folder = tmp_path / "NORMAL"
    media = _dicom(folder / "IM000001", PatientID="7")
    uid = _dicom(folder / "1.2.826.0.1.3680043.8.498.52", PatientID="7")
    other = _dicom(folder / "film.dicom")
    (folder / "README").write_text("films from the CD")
    _dicom(folder / "DICOMDIR")  # the medium's index, DICM magic and all
    (folder / "._IM000001").write_bytes(media.read_bytes())  # a Mac's resource fork: never a film
    entries = {e.path.name: (e.kind, e.reason) for e in walk(folder)}
    assert entries == {"IM000001": ("image", ""), uid.name: ("image", ""), other.name: ("image", ""),
                       "README": ("skipped", "not an image extension (none)"), "._IM000001": ("skipped", "system file"),
                       "DICOMDIR": ("skipped", "DICOM media directory (DICOMDIR), not a film")}
    records = discover(tmp_path).records
    assert len(records) == 3 and records[0].patient == records[1].patient != records[2].patient


def test_untyped_pneumonia_films_are_warned_of_with_the_ways_to_type_them(caplog: pytest.LogCaptureFixture) -> None:
    records = [make_record(f"/x/PNEUMONIA/{name}", "PNEUMONIA") for name in ("child0_bacteria_0.jpeg",
                                                                             "scan_0002.jpeg")]
    with caplog.at_level(logging.WARNING):
        warn_untyped(records, get_task("etiology"), "training")
    assert caplog.messages == [
        "1 pneumonia film(s) given to training do not say bacteria or virus (e.g. /x/PNEUMONIA/scan_0002.jpeg): "
        "neither their names (personN_bacteria_M, BACTERIA-N-M, or one of the two words in a name of your own) nor a "
        "manifest's subtype column give it, so the etiology task cannot use them and they are left out"]


@pytest.mark.parametrize("marker", ["NA", "n/a", "nan", "NULL", "#N/A", "None"])
def test_a_manifest_patient_written_as_a_missing_value_is_refused(tmp_path: Path, marker: str) -> None:
    """R's write.csv writes NA for a missing patient, a spreadsheet #N/A, pandas nan: read as an id, every film so
    marked was one patient (both classes, 20 films), silently, in split, audit and evaluate's patient counts."""
    (tmp_path / "m.csv").write_text(f"path,label,patient\na.png,NORMAL,P1\nb.png,PNEUMONIA,{marker}\n")
    with pytest.raises(ValueError) as e:
        read_manifest(tmp_path / "m.csv")
    assert str(e.value).endswith(f"line 3: patient {marker!r} is a missing value as a spreadsheet or R writes "
                                 "it, which would make every film so marked one patient: leave the cell empty (the "
                                 "film's name or DICOM header then gives its patient, else it is a patient of its "
                                 "own) or give the patient's id")
    (tmp_path / "ok.csv").write_text("path,label,patient\na.png,NORMAL,NAT-1\nb.png,PNEUMONIA,Nana\n")
    assert [r.patient for r in read_manifest(tmp_path / "ok.csv").records] == ["NAT-1", "Nana"]


def test_a_folder_holding_a_manifest_or_unlabelled_films_names_what_to_give(tmp_path: Path) -> None:
    """A researcher's folder of DICOM films named by UID with its labels.csv beside them: given the folder (or the
    films' own folder), the refusal listed the layouts alone, not the manifest it holds nor that films need labels."""
    site = tmp_path / "site"
    _dicom(site / "dcm" / "1.2.826.0.1.3680043.8.498.52", PatientID="7")
    (site / "labels.csv").write_text("path,label\ndcm/1.2.826.0.1.3680043.8.498.52,NORMAL\n")
    (site / "notes.csv").write_text("date,who\n2026-12-01,AB\n")  # not a manifest: not offered
    manifest = re.escape(str(site / "labels.csv"))
    with pytest.raises(ValueError, match=rf"recognises it: it holds a dataset; give {manifest} \(expected "):
        discover(site)
    with pytest.raises(ValueError, match=r"recognises it: it holds films but no NORMAL and PNEUMONIA folders: put them "
                                         r"in those folders, or list them with their labels in a CSV manifest "
                                         r"\(path,label\) \(expected "):
        discover(site / "dcm")


def test_a_folder_holding_a_manifest_r_wrote_names_it(tmp_path: Path) -> None:
    """R's write.csv quotes every name of its header ("path","label"), which read_manifest reads as a manifest's: the
    folder holding one was refused without naming it, its header read another way than the manifest's own."""
    site = tmp_path / "site"
    _dicom(site / "dcm" / "1.2.826.0.1.3680043.8.498.53", PatientID="8")
    (site / "labels.csv").write_text('"path","label"\n"dcm/1.2.826.0.1.3680043.8.498.53","NORMAL"\n')
    assert len(read_manifest(site / "labels.csv").records) == 1
    manifest = re.escape(str(site / "labels.csv"))
    with pytest.raises(ValueError, match=rf"recognises it: it holds a dataset; give {manifest} \(expected "):
        discover(site)


@pytest.mark.parametrize("rows, remedy", [
    ("7,png/0.png,Normal\n8,png/1.png,PNEUMONIA\n",
     "rename filename to path (its values are files, e.g. png/0.png), and rename diagnosis to label (its values are "
     "Normal or PNEUMONIA)"),
    ("7,png/0.png,normal\n8,png/1.png,bacterial pneumonia\n",
     "rename filename to path (its values are files, e.g. png/0.png), and write diagnosis's class as label (NORMAL "
     "or PNEUMONIA) and its kind of pneumonia (bacterial pneumonia) as subtype (normal, bacteria, virus)"),
    ("7,png/9.png,1\n8,png/8.png,0\n",  # no file there, no class in words: nothing to suggest
     "name the one giving each film's file (relative to the CSV's folder) path, and name the one giving its class "
     "(NORMAL or PNEUMONIA) label"),
])
def test_a_sheet_with_its_own_column_names_is_refused_suggesting_renames_from_their_values(
        tmp_path: Path, rows: str, remedy: str) -> None:
    """A researcher's sheet (MRN,filename,diagnosis) was refused asking for "the one giving each film's file",
    though its values say which: the column of files and the column of classes are named, and it stays refused."""
    (tmp_path / "png").mkdir()
    for name in ("0.png", "1.png"):
        (tmp_path / "png" / name).write_bytes(b"")
    (tmp_path / "films.csv").write_text("MRN,filename,diagnosis\n" + rows)
    with pytest.raises(ValueError) as refused:
        read_manifest(tmp_path / "films.csv")
    assert str(refused.value) == (f"{tmp_path / 'films.csv'}: not a manifest, no label or path column (columns: "
                                  f"path,label[,subtype,patient,split]); its columns are mrn,filename,diagnosis: "
                                  f"{remedy}")
