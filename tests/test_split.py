"""Patient split: no patient or duplicate on both sides, the class mix kept, reproducible per seed."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.cli import main
from pneumoscan.data.copies import shared_patients
from pneumoscan.data.layouts import Record, discover, make_record, read_manifest, write_manifest
from pneumoscan.data.split import (crowded_caveat, patient_folds, patient_sample, patient_split, patient_units,
                                   sampled_split, split_dataset, split_pool, split_summary)
from tests.test_audit import run_cli_bounded, special_file_manifest


def _val_paths(records: list[Record]) -> set[str]:
    return {r.path for r in records if r.split == "val"}


@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.3])
def test_real_split_keeps_patients_duplicates_and_mix(real_train, fraction: float) -> None:
    records, groups = real_train
    out = patient_split(records, val_fraction=fraction, seed=3, duplicate_groups=groups)
    assert [r.path for r in out] == [r.path for r in records]
    assert {r.split for r in out} == {"train", "val"}
    summary = split_summary(out)
    assert summary["shared_patients"] == []
    val = _val_paths(out)
    assert groups and all(len({p in val for p in g}) == 1 for g in groups)
    whole, part = summary["all"], summary["parts"]["val"]
    assert abs(part["fraction"] - fraction) < 0.01
    for key in ("label_share", "subtype_share"):
        for name, share in whole[key].items():
            assert abs(part[key].get(name, 0.0) - share) <= 0.02, (key, name)


def test_real_split_is_deterministic_and_seed_dependent(real_train) -> None:
    records, groups = real_train
    first = _val_paths(patient_split(records, seed=7, duplicate_groups=groups))
    assert first == _val_paths(patient_split(records, seed=7, duplicate_groups=groups))
    assert first != _val_paths(patient_split(records, seed=8, duplicate_groups=groups))


def test_a_real_sample_takes_whole_patients_in_the_whole_s_mix_and_the_same_for_a_seed(real_train) -> None:
    records, groups = real_train
    units = patient_units(records, groups)
    sample = patient_sample(records, 300, seed=5, duplicate_groups=groups)
    taken = {r.path for r in sample}
    assert len({units[i] for i, r in enumerate(records) if r.path in taken}) == 300
    # whole patients and whole picture groups: no unit has films both in and out of the sample
    assert all(len({records[i].path in taken for i in np.flatnonzero(units == u)}) == 1 for u in set(units))
    # each kind of patient (what their films are: normal, bacteria, virus, or both kinds) in its share, to a patient
    kinds = {u: "+".join(sorted({records[i].subtype for i in np.flatnonzero(units == u)})) for u in set(units)}
    whole = Counter(kinds.values())
    part = Counter(kinds[u] for u in {units[i] for i, r in enumerate(records) if r.path in taken})
    assert len(whole) == 4 and all(abs(part[k] - 300 * n / len(kinds)) < 1 for k, n in whole.items()), (part, whole)
    assert [r.path for r in sample] == [r.path for r in records if r.path in taken]  # the records' order
    assert sample == patient_sample(list(reversed(records)), 300, seed=5, duplicate_groups=groups)[::-1]
    assert taken != {r.path for r in patient_sample(records, 300, seed=6, duplicate_groups=groups)}


def test_a_sample_of_more_patients_than_there_are_is_refused_and_of_all_is_all() -> None:
    records = [make_record(f"/x/PNEUMONIA/person{i}_bacteria_{i}.jpeg", "PNEUMONIA") for i in range(6)]
    records += [make_record(f"/x/PNEUMONIA/person{i}_virus_{i + 10}.jpeg", "PNEUMONIA") for i in range(6)]
    records += [make_record(f"/x/NORMAL/IM-{i:04d}-0001.jpeg", "NORMAL") for i in range(4)]
    # person0..5 have a bacterial and a viral film each: 6 + 4 patients
    with pytest.raises(ValueError, match=r"a sample of 11 patients: the 16 films hold 10 .* --patients 10 or fewer"):
        patient_sample(records, 11)
    assert patient_sample(records, 10) == records
    with pytest.raises(ValueError, match="a sample of 1 of the 10 patients holds no NORMAL film"):
        patient_sample(records, 1)
    sample = patient_sample(records, 5, seed=1)
    assert sorted(r.label for r in sample).count("NORMAL") == 2  # 4 of 10 patients: 2 of 5
    assert {r.patient for r in sample if r.label == "PNEUMONIA"} == {r.patient for r in sample if r.subtype == "virus"}


def test_a_sampled_split_splits_only_the_sample_by_patient(tiny_dataset: Path) -> None:
    records, of = sampled_split(tiny_dataset, 0.25, seed=2, patients=20)
    assert of == 48 and {r.split for r in records} == {"train", "val"}
    assert len({r.patient for r in records}) == 20 and split_summary(records)["shared_patients"] == []
    assert sampled_split(tiny_dataset, 0.25, seed=2) == (split_dataset(tiny_dataset, 0.25, seed=2), None)


def test_duplicate_group_ties_different_patients_together() -> None:
    records = [make_record(f"/x/PNEUMONIA/person{i}_bacteria_{i}.jpeg", "PNEUMONIA") for i in range(40)]
    records += [make_record(f"/x/NORMAL/IM-{i:04d}-0001.jpeg", "NORMAL") for i in range(40)]
    tied = [records[0].path, records[41].path]  # same picture filed under two ids
    sides = set()
    for seed in range(20):
        out = {r.path: r.split for r in patient_split(records, 0.25, seed, duplicate_groups=[tied])}
        assert out[tied[0]] == out[tied[1]]
        sides.add(out[tied[0]])
    assert sides == {"train", "val"}  # the pair does move, always together


def test_split_summary_counts() -> None:
    records = [
        Record("a.jpeg", "NORMAL", "normal", "IM-1", "train"),
        Record("b.jpeg", "PNEUMONIA", "virus", "person1", "train"),
        Record("c.jpeg", "PNEUMONIA", "bacteria", "person1", "val"),
        Record("d.jpeg", "PNEUMONIA", "", "x", "val"),
    ]
    summary = split_summary(records)
    assert summary["shared_patients"] == ["person1"]
    assert summary["parts"]["val"]["labels"] == {"NORMAL": 0, "PNEUMONIA": 2}
    assert summary["parts"]["val"]["subtypes"] == {"bacteria": 1, "unknown": 1}
    assert summary["parts"]["train"]["fraction"] == 0.5
    assert summary["all"]["subtype_share"]["normal"] == 0.25


def test_bad_fraction_is_refused() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        patient_split([], val_fraction=1.0)


def test_manifest_of_relatively_named_files_reads_back_from_its_own_folder(tmp_path: Path, monkeypatch) -> None:
    """A split.csv written under a run folder for data named relative to the working directory (as with
    PNEUMOSCAN_DATA=../data) must still point at the files when read back."""
    for name in ("NORMAL/IM-0001-0001.jpeg", "PNEUMONIA/person3_virus_7.jpeg"):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    records = discover("data").records
    csv_path = tmp_path / "runs" / "demo" / "split.csv"
    csv_path.parent.mkdir(parents=True)
    write_manifest(records, Path("runs/demo/split.csv"))
    back = read_manifest(Path("runs/demo/split.csv"))
    assert [Path(r.path).resolve() for r in back.records] == [Path(r.path).resolve() for r in records]
    assert all(Path(r.path).is_file() for r in back.records)
    assert [(r.label, r.subtype, r.patient) for r in back.records] == [(r.label, r.subtype, r.patient) for r in records]


def test_manifest_under_a_linked_folder_reads_back(tmp_path: Path, monkeypatch) -> None:
    """runs/ linked to a scratch disk: the system resolves the link before the '..' of a relative path."""
    (tmp_path / "data" / "NORMAL").mkdir(parents=True)
    (tmp_path / "data" / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(b"x")
    (tmp_path / "scratch" / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs").symlink_to(tmp_path / "scratch" / "runs")
    monkeypatch.chdir(tmp_path)
    write_manifest(discover("data").records, Path("runs/demo/split.csv"))
    [record] = read_manifest(Path("runs/demo/split.csv")).records
    assert Path(record.path).is_file() and Path(record.path).name == "IM-0001-0001.jpeg"


def test_a_manifest_of_files_that_are_not_there_is_not_split(tmp_path: Path) -> None:
    """Relative paths read from another folder (the manifest reached through a link), a typo: the split was written,
    exit 0, of files that are not there, to be handed on as a dataset."""
    (tmp_path / "imgs").mkdir()
    for name in ("IM-0001-0001.jpeg", "person1_virus_1.jpeg"):
        (tmp_path / "imgs" / name).write_bytes(name.encode())
    (tmp_path / "m.csv").write_text("path,label\nimgs/IM-0001-0001.jpeg,NORMAL\nimgs/person1_virus_1.jpeg,PNEUMONIA\n"
                                    "imgs/IM-0002-0001.jpg,NORMAL\n")
    with pytest.raises(ValueError, match=r"m.csv: 1 of its 3 films outside test/ are not there \(e.g. .*imgs/IM-0002-"
                                         r"0001.jpg\); a manifest's relative paths are read from the manifest's own"):
        split_dataset(tmp_path / "m.csv", 0.5)


def test_the_copy_search_shows_its_progress_while_it_decodes_films(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """split, train and audit decode every film once to look for copies: 13 s on the Kermany folders, minutes on a
    site's tens of thousands of DICOM films, with nothing on the terminal. A bar says so; films scanned before are
    not decoded again, and show none."""
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    assert main(["split", str(tiny_dataset), "--out", str(tmp_path / "first.csv")]) == 0
    assert "Scanning 48 films for copies" in capsys.readouterr().err
    assert main(["split", str(tiny_dataset), "--out", str(tmp_path / "again.csv")]) == 0
    assert "for copies" not in capsys.readouterr().err


@pytest.mark.parametrize("text, reason", [
    ("file,label\na.png,NORMAL\n", "no path column"),
    ("path,label\na.png\n", "line 2: path and label must not be empty"),
    ("path,label\na.png,SICK\n", "line 2: unknown label"),
    # a sheet's diagnosis as the label: said where its kind goes, not only which labels there are
    ("path,label\na.png,NORMAL\nb.png,bacterial pneumonia\n", "line 3: label 'bacterial pneumonia' names a kind of "
     "pneumonia, and a label is NORMAL or PNEUMONIA: write PNEUMONIA as its label and bacteria in the subtype column$"),
    ("path,label,subtype\na.png,Viral Pneumonia,\n", "line 2: label 'Viral Pneumonia' .*: write PNEUMONIA as its "
     "label and virus in the subtype column$"),
    # a misspelt split or column would put a test film into the training pool
    ("path,label,split\na.png,NORMAL,testing\n",
     "line 2: unknown split 'testing'; did you mean 'test'\\? \\(choose from train, val, test, or leave it empty\\)"),
    ("path,label,splt\na.png,NORMAL,test\n", "unknown column in manifest .* 'splt'; did you mean 'split'"),
    # a column as close to a known one as a site's own column is not: read as its misspelling, saying what to do
    ("path,label,patient_id\na.png,NORMAL,3\n", "unknown column in manifest .* 'patient_id'; did you mean "
     "'patient'\\? \\(a column this close to path, label, subtype, patient or split is read as its misspelling, so "
     "that it is never left unread: rename it\\)$"),
    ("path,,label\na.png,x,NORMAL\n", "a column has no name \\(path,,label\\)"),
    ("path,label\na.png,NORMAL\n./a.png,PNEUMONIA\n",
     "line 3: ./a.png is listed again \\(first on line 2, as a.png\\)"),
    ("path,label\na.png,NORMAL\na.png,NORMAL\n", "line 3: a.png is listed again \\(first on line 2\\)$"),
    ("path,label\na.png,NORMAL,test\n", "line 2: 3 values for 2 columns"),
    ("path,label\n" + "a" * 200_000 + ",NORMAL\n", "line 2: not a readable CSV \\(field larger than field limit"),
])
def test_a_malformed_manifest_is_refused_with_the_line(tmp_path: Path, text: str, reason: str) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(text)
    with pytest.raises(ValueError, match=reason):
        read_manifest(csv_path)


def test_a_manifest_in_a_local_code_page_naming_files_that_are_not_there_says_so(tmp_path: Path) -> None:
    """A spreadsheet's "CSV (Comma delimited)" writes Jos\xe9.jpeg in Latin-1 for a file named in UTF-8: refused, but
    the hint about relative paths sent the user to the wrong fault."""
    (tmp_path / "imgs").mkdir()
    for name in ("Jos\u00e9_1.jpeg", "person1_virus_1.jpeg"):
        (tmp_path / "imgs" / name).write_bytes(name.encode())
    (tmp_path / "m.csv").write_bytes("path,label\nimgs/Jos\u00e9_1.jpeg,NORMAL\nimgs/person1_virus_1.jpeg,PNEUMONIA\n"
                                     .encode("latin-1"))
    with pytest.raises(ValueError, match=r"m.csv: 1 of its 2 films outside test/ are not there \(e.g. .*Jos\\xe9_1."
                                         r"jpeg\); the manifest.s paths hold bytes that are not UTF-8 .*save it as "
                                         r"CSV UTF-8"):
        split_dataset(tmp_path / "m.csv", 0.5)


@pytest.mark.parametrize("data, hint", [
    ("path;label\na.png;NORMAL\n".encode(), "separated by ';'"),  # a spreadsheet saving in a comma-decimal locale
    ("path\tlabel\na.png\tNORMAL\n".encode(), "separated by tabs"),
    ("path,label\na.png,NORMAL\n".encode("utf-16"), "UTF-16"),  # a spreadsheet's "Unicode text"
])
def test_a_manifest_in_another_spreadsheet_format_is_refused_saying_which(tmp_path: Path, data: bytes,
                                                                         hint: str) -> None:
    """Its path and label columns are there, but read as one column: "no path column" alone sent the user looking
    for a column that is present."""
    csv_path = tmp_path / "m.csv"
    csv_path.write_bytes(data)
    with pytest.raises(ValueError, match=f"m.csv: not a manifest, no label or path column .*{hint}.*save it as "
                                         "comma-separated UTF-8"):
        read_manifest(csv_path)


def test_a_hospitals_sheet_with_columns_of_its_own_is_refused_naming_them_and_what_to_rename(tmp_path: Path) -> None:
    """A researcher's sheet (MRN,file,dx,site) beside the films: given as the folder, it was refused with the layouts'
    list alone; given itself, with the columns a manifest has but not the ones it has, nor which to rename."""
    site = tmp_path / "site"
    (site / "png").mkdir(parents=True)
    Image.new("L", (32, 32)).save(site / "png" / "0007000_1.png")
    (site / "films.csv").write_text("MRN,file,dx,site\n0007000,png/0007000_1.png,normal,north\n")
    remedy = ("its columns are mrn,file,dx,site: rename file to path (its values are files, e.g. "
              "png/0007000_1.png), and rename dx to label (its values are normal)")
    with pytest.raises(ValueError) as folder:
        discover(site)
    assert f"no dataset layout recognises it: it holds {site / 'films.csv'}, a CSV that is no manifest; {remedy}" in (
        str(folder.value))
    with pytest.raises(ValueError) as sheet:
        read_manifest(site / "films.csv")
    assert str(sheet.value).endswith(f"no label or path column (columns: path,label[,subtype,patient,split]); {remedy}")


def test_an_archive_or_a_workbook_given_as_data_is_not_called_utf16_text(tmp_path: Path) -> None:
    """The download given before it is unpacked (or an .xlsx, a zip too) is no text at all: it was refused as UTF-16
    text to save as comma-separated UTF-8, which sent the user to a spreadsheet they did not have."""
    with zipfile.ZipFile(tmp_path / "chest-xray-pneumonia.zip", "w") as archive:
        archive.writestr("chest_xray/train/NORMAL/IM-0001-0001.jpeg", bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"chest-xray-pneumonia.zip: not a manifest, no label or path column .*; it "
                                         r"is not text \(an archive to unpack, a workbook to save as CSV UTF-8\)") as e:
        read_manifest(tmp_path / "chest-xray-pneumonia.zip")
    assert "UTF-16" not in str(e.value)


def test_manifest_headers_values_and_patients_are_read_as_spelt_elsewhere(tmp_path: Path) -> None:
    """Header case and padding do not matter, a split value is trimmed, and a patient spelt as the file name's
    patient in another case is that patient: one child cannot sit on both sides of a split."""
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("Path, Label ,Patient,SPLIT\n"
                        "person1000_bacteria_2931.jpeg,PNEUMONIA,Person1000, Test \n"
                        "person1000_virus_1681.jpeg,PNEUMONIA,,train\n")
    records = read_manifest(csv_path).records
    assert [(r.patient, r.split) for r in records] == [("person1000", "test"), ("person1000", "train")]


def test_one_patient_typed_in_any_case_is_one_patient_whatever_the_film_is_named(tmp_path: Path) -> None:
    """A typed PERSON1000 beside a film named person1000_..., and MRN100 beside mrn100, had been two patients each:
    split put such a child on both sides, and train --split-csv and audit saw no shared patient."""
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,label,patient,split\n"
                        "person1000_bacteria_2931.jpeg,PNEUMONIA,,train\n"
                        "scan_0002.jpeg,PNEUMONIA,PERSON1000,val\n"
                        "scan_0003.jpeg,NORMAL,MRN100,train\n"
                        "scan_0004.jpeg,NORMAL,mrn100,val\n"
                        "scan_0005.jpeg,NORMAL,,val\n"
                        "scan_0006.jpeg,NORMAL,Jos\u00e9,train\n"  # composed
                        "scan_0007.jpeg,NORMAL,JOSE\u0301,val\n")  # decomposed, as another system writes it
    records = read_manifest(csv_path).records
    assert [r.patient for r in records[:4]] == ["person1000", "person1000", "MRN100", "MRN100"]
    assert records[4].patient.endswith("scan_0005.jpeg")  # a patient of its own keeps its path
    assert records[5].patient == records[6].patient == "Jos\u00e9"
    assert sorted(shared_patients(records)["train/val"]) == ["Jos\u00e9", "MRN100", "person1000"]


def test_one_dicom_patient_id_over_many_films_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    """An anonymiser that wrote one PatientID into every film makes them one patient, kept whole on one side (or the
    split impossible): said, with the remedy."""
    records = [Record(f"/x/{i}.dcm", "NORMAL" if i % 2 else "PNEUMONIA", "normal" if i % 2 else "",
                      "dicom-0123456789abcdef" if i < 40 else f"/x/{i}.dcm") for i in range(60)]
    with caplog.at_level(logging.WARNING):
        patient_split(records, 0.2, 0)
    assert any(m.startswith("40 of 60 films share one DICOM PatientID, more than one child has in data like these")
               for m in caplog.messages)


def test_one_manifest_patient_id_over_more_films_than_a_child_has_is_warned_of(
        caplog: pytest.LogCaptureFixture) -> None:
    """A manifest whose anonymiser wrote ANON as the patient of 70 of 400 films: one patient to the split, all on
    one side, without a word (only a DICOM PatientID, or a missing value, was said). More films than one child has
    in the Kermany release (30, person23) is the sign; a child with that many is not flagged."""
    def films(patient: str, many: int) -> list[Record]:
        return [Record(f"/x/{i}.png", "NORMAL" if i % 2 else "PNEUMONIA", "normal" if i % 2 else "bacteria",
                       patient if i < many else f"P{i}") for i in range(400)]

    with caplog.at_level(logging.WARNING):
        split = patient_split(films("ANON", 70), 0.2, 0)
    said = [m for m in caplog.messages if "share one patient id" in m]
    assert said == [crowded_caveat("ANON", 70, 400)] and said[0].startswith(
        "70 of 400 films share one patient id (ANON), more than one child has in data like these (at most 30 of the "
        "Kermany release's 5,216): an anonymiser that wrote one id into every film? The split keeps them together")
    assert len({r.split for r in split if r.patient == "ANON"}) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        patient_split(films("person23", 30), 0.2, 0)
        patient_split(films("person23", 30)[:120], 0.2, 0)  # a sample that drew the child: 30 of 120 films
    assert not [m for m in caplog.messages if "share one" in m]


def test_blank_lines_and_a_spreadsheets_empty_trailing_columns_are_read_past(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,label,\n\na.png,NORMAL,\n,,\nb.png,PNEUMONIA\n\n")
    assert [r.label for r in read_manifest(csv_path).records] == ["NORMAL", "PNEUMONIA"]


def test_a_spreadsheet_manifest_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_bytes("path,label\na.png,NORMAL\n".encode("utf-8-sig"))
    assert [r.label for r in read_manifest(csv_path).records] == ["NORMAL"]


def test_manifest_subtypes_are_normalised_and_checked_against_the_label(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,label,subtype\na.png,PNEUMONIA,Virus\nb.png,normal,\n")
    assert [(r.label, r.subtype) for r in read_manifest(csv_path).records] == [("PNEUMONIA", "virus"),
                                                                               ("NORMAL", "normal")]
    csv_path.write_text("path,label,subtype\na.png,PNEUMONIA,virus\nb.png,NORMAL,virus\n")
    with pytest.raises(ValueError, match="line 3: subtype 'virus' does not fit label NORMAL"):
        read_manifest(csv_path)


def test_linked_folders_are_followed_once_and_broken_links_listed(tmp_path: Path) -> None:
    site2 = tmp_path / "site2"
    site2.mkdir()
    for name in ("IM-0002-0001.jpeg", "IM-0003-0001.jpeg"):
        (site2 / name).write_bytes(b"x")
    normal = tmp_path / "data" / "NORMAL"
    normal.mkdir(parents=True)
    (normal / "IM-0001-0001.jpeg").write_bytes(b"x")
    (normal / "site2").symlink_to(site2)  # another site's films linked in
    (normal / "loop").symlink_to(normal)  # a link back up must not loop
    (normal / "gone.jpeg").symlink_to(tmp_path / "nowhere.jpeg")
    found = discover(tmp_path / "data")
    assert sorted(Path(r.path).name for r in found.records) == ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg",
                                                                "IM-0003-0001.jpeg"]
    assert found.skipped == [
        {"path": str(normal / "gone.jpeg"), "reason": "broken link"},
        {"path": str(normal / "loop"), "reason": "folder already searched (a link back to it)"},
    ]


def test_an_empty_dataset_gives_a_reason_not_an_empty_split(tmp_path: Path, capsys) -> None:
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "train" / "PNEUMONIA").mkdir()
    assert main(["split", str(tmp_path), "--out", str(tmp_path / "split.csv")]) == 2
    assert main(["audit", str(tmp_path), "--figure", str(tmp_path / "audit.png")]) == 2
    err = capsys.readouterr().err
    assert "no images outside test/" in err and "no images to audit" in err
    assert not (tmp_path / "split.csv").exists()


def test_a_manifest_naming_a_fifo_or_a_device_is_split_and_cached_without_waiting(tiny_dataset: Path,
                                                                                 tmp_path: Path) -> None:
    """split hashes every file for exact duplicates and cache decodes them: a FIFO (which waits for a writer) or
    /dev/zero (which never ends) in a manifest must not stop either. split keeps the row (it reads no pixels);
    cache lists it as unreadable with its kind."""
    films = sorted((tiny_dataset / "train").rglob("*.jpeg"))
    manifest, special = special_file_manifest(films, tmp_path)
    out = tmp_path / "split.csv"
    done = run_cli_bounded("split", str(manifest), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["all"]["n"] == len(films) + 2
    assert {r.path for r in read_manifest(out).records} >= set(special)
    done = run_cli_bounded("cache", str(manifest), "--size", "16")
    assert done.returncode == 0, done.stderr
    for path, reason in special.items():
        assert f"unreadable {path}: {reason}" in done.stderr


@pytest.mark.parametrize("again", ["{root}/train/NORMAL/IM-0001-0001.jpeg", "alias/NORMAL/IM-0001-0001.jpeg"])
def test_a_file_listed_again_under_another_spelling_is_refused(tmp_path: Path, again: str) -> None:
    """Absolute after relative, or through a linked folder, is still one film: under two labels it would be trained
    on as both, and the split.csv written from it would not read back."""
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "train" / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(b"x")
    (tmp_path / "alias").symlink_to("train")
    csv_path = tmp_path / "m.csv"
    again = again.format(root=tmp_path)
    csv_path.write_text(f"path,label\ntrain/NORMAL/IM-0001-0001.jpeg,NORMAL\n{again},PNEUMONIA\n")
    with pytest.raises(ValueError) as caught:
        read_manifest(csv_path)
    assert str(caught.value) == (f"{csv_path}, line 3: {again} is listed again (first on line 2, as "
                                 "train/NORMAL/IM-0001-0001.jpeg)")


def test_films_without_patient_ids_are_split_one_group_per_film(tmp_path: Path, caplog) -> None:
    """0001.jpeg, 0002.jpeg, ... in every folder: as many groups as films, as the warning says, and no patient on
    both sides, so `train` accepts the split and the val/ folder alike."""
    for folder in ("train/NORMAL", "train/PNEUMONIA", "val/NORMAL", "val/PNEUMONIA"):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(1, 9):
            (tmp_path / folder / f"{i:04d}.jpeg").write_bytes(f"{folder}/{i}".encode())
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.split"):
        records = split_dataset(tmp_path, val_fraction=0.25)
    assert caplog.messages == ["no patient ids in file names: 32 images split as 32 groups, one per image, so "
                               "one child's films may land on both sides: give each film's patient in a "
                               "manifest's patient column (path,label,patient)"]
    assert len({r.patient for r in records}) == 32
    assert split_summary(records)["shared_patients"] == []
    assert split_summary(discover(tmp_path).records)["shared_patients"] == []  # the val/ folder as validation


def _records(groups: dict[str, list[int]]) -> list[Record]:
    """Records of ``stratum: [films of patient 1, films of patient 2, ...]`` (normal, bacteria, virus), each
    patient in one stratum."""
    out = []
    for s, (stratum, sizes) in enumerate(groups.items()):
        for p, size in enumerate(sizes, start=100 * s):
            for f in range(size):
                name = f"IM-{p:04d}-{f:04d}.jpeg" if stratum == "normal" else f"person{p}_{stratum}_{f}.jpeg"
                out.append(make_record(f"/x/{stratum}/{name}", "NORMAL" if stratum == "normal" else "PNEUMONIA"))
    return out


def test_a_class_no_validation_film_can_hold_is_warned_of(caplog) -> None:
    """All NORMAL films one patient's: validation cannot hold one, its figures cannot be measured: said."""
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.split"):
        out = patient_split(_records({"normal": [12], "bacteria": [1] * 12, "virus": [1] * 12}), 0.15)
    assert {r.label for r in out if r.split == "val"} == {"PNEUMONIA"}
    assert caplog.messages == [
        "validation holds no NORMAL film: 15% of the 12 NORMAL films is 2, and none of their 1 patient group(s) "
        "fitted in it (a patient's films stay on one side), so its AUC, sensitivity and specificity cannot be "
        "measured; add NORMAL films of other patients or raise the validation fraction"]


def test_a_stratum_left_short_by_large_patient_groups_is_warned_of(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.split"):
        patient_split(_records({"normal": [1] * 20, "bacteria": [10, 10], "virus": [1] * 20}), 0.15)
    assert caplog.messages == [
        "validation is off the whole's mix by more than 2 points and more than one film, as patient groups too large "
        "for the room left did not fit (a patient's films stay on one side): bacteria 0.0% against 33.3% (0 films "
        "where 15% is 3)"]


@pytest.mark.parametrize("groups, fraction, reason", [
    ({"normal": [1] * 3, "virus": [2] * 3}, 0.15, "the split put no film in validation: none of the 6 patient "
     "group\\(s\\) of the 9 films fits in 15% of its class and subtype"),
    ({"normal": [1], "virus": [1] * 10}, 0.6, "the split left no NORMAL film for training: all 1 went to "
     "validation at 60%"),
])
def test_a_split_that_cannot_be_trained_on_is_refused(groups: dict, fraction: float, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        patient_split(_records(groups), fraction)


def test_a_test_fraction_holds_out_whole_patients_in_the_mix_the_same_for_any_val_fraction() -> None:
    """A site's test drawn in the split's pass (it was the val side, renamed by hand): each stratum's share, whole
    patients, the same patients whatever the validation fraction, and validation drawn from the rest as training
    draws it from a manifest whose test rows it leaves out."""
    records = _records({"normal": [1, 2] * 10, "bacteria": [1, 2] * 10, "virus": [1] * 20})
    out = patient_split(records, 0.2, seed=4, test_fraction=0.3)
    assert [r.path for r in out] == [r.path for r in records] and {r.split for r in out} == {"train", "val", "test"}
    assert split_summary(out)["shared_patients"] == []
    test = {r.path for r in out if r.split == "test"}
    whole, held = Counter(r.subtype for r in records), Counter(r.subtype for r in out if r.split == "test")
    assert held == {k: round(0.3 * n) for k, n in whole.items()}
    assert all(test == {r.path for r in patient_split(records, v, 4, test_fraction=0.3) if r.split == "test"}
               for v in (0.1, 0.4))
    assert test != {r.path for r in patient_split(records, 0.2, 5, test_fraction=0.3) if r.split == "test"}
    rest = [r for r in records if r.path not in test]
    assert _val_paths(out) == _val_paths(patient_split(rest, 0.2, seed=4))
    assert patient_split(records, 0.2, seed=4, test_fraction=0.0) == patient_split(records, 0.2, seed=4)


@pytest.mark.parametrize("groups, fraction, reason", [
    ({"normal": [6, 6], "virus": [1] * 10}, 0.3, "the test side holds no NORMAL film: none of the 2 patient "
     "group\\(s\\) of the 12 NORMAL films fits in 30% of its class and subtype .* raise the test fraction"),
    ({"normal": [1], "virus": [1] * 10}, 0.6, "the test side takes all 1 NORMAL films at 60%, leaving none to train "
     "on; lower the test fraction"),
])
def test_a_test_side_that_could_not_measure_or_leaves_no_class_to_train_on_is_refused(groups: dict, fraction: float,
                                                                                     reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        patient_split(_records(groups), 0.2, test_fraction=fraction)


def test_a_test_side_short_of_its_share_is_logged_as_held_and_warned_of(caplog) -> None:
    """NORMAL patients of 4 films: 30 % of 20 is 6, of which whole patients fill 4; the log says the 20 % held,
    not the 30 % asked, and the test's mix off the whole is warned of as validation's is."""
    with caplog.at_level(logging.INFO, logger="pneumoscan.data.split"):
        patient_split(_records({"normal": [4] * 5, "bacteria": [1] * 20, "virus": [1] * 20}), 0.25, test_fraction=0.3)
    assert caplog.messages == [
        "held out for the test: 16 of the 60 films, whole patients, 30% asked of each class and subtype: bacteria 6 "
        "of 20 (30.0%), normal 4 of 20 (20.0%), virus 6 of 20 (30.0%)",
        "the test side is off the whole's mix by more than 2 points and more than one film, as patient groups too "
        "large for the room left did not fit (a patient's films stay on one side): normal 25.0% against 33.3% (4 "
        "films where 30% is 6)"]


def test_a_test_side_without_a_pneumonia_subtype_is_warned_of(caplog) -> None:
    """Two viral patients of 5 films fit in no 20 % of 10: the test could not measure bacterial against viral."""
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.split"):
        out = patient_split(_records({"normal": [1] * 20, "bacteria": [1] * 20, "virus": [5, 5]}), 0.25,
                            test_fraction=0.2)
    assert "virus" not in {r.subtype for r in out if r.split == "test"}
    assert caplog.messages[0] == (
        "the test side holds no virus film: none of the 2 patient group(s) of the 10 virus films fits in 20% of its "
        "subtype (a patient's films stay on one side), so its bacterial-viral (etiology) figures cannot be measured; "
        "raise the test fraction (split --test-fraction) or add virus films of other patients")


def test_a_test_side_that_takes_a_pneumonia_subtype_whole_is_warned_of(caplog) -> None:
    """One viral patient of two films, 75 % of which rounds to both: the test takes every viral film, and training
    and validation hold none (an etiology run could not learn one): said, with the subtype and its count."""
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.split"):
        out = patient_split(_records({"normal": [1] * 20, "bacteria": [1] * 20, "virus": [2]}), 0.25,
                            test_fraction=0.75)
    assert [r.split for r in out if r.subtype == "virus"] == ["test", "test"]
    assert caplog.messages[0] == (
        "the test side takes all 2 virus films at 75%, leaving none for training or validation: an etiology or "
        "three-class run on this split has no virus film to learn from (train refuses it), and a pneumonia model "
        "learns pneumonia without one; lower the test fraction (split --test-fraction) or add virus films of other "
        "patients")


def test_a_new_test_of_data_with_a_test_split_is_refused(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    """A test drawn from train and val beside test/ would be other patients than evaluate --split test reads."""
    assert main(["split", str(tiny_dataset), "--test-fraction", "0.25", "--out", str(tmp_path / "held.csv")]) == 2
    assert ("has a test split of its own (16 films in test/ or test rows): a new test drawn from its other films "
            "(--test-fraction) would be other patients than the ones evaluate --split test reads from it"
            in capsys.readouterr().err)
    assert not (tmp_path / "held.csv").exists()


def test_split_writes_held_out_test_rows_that_training_leaves_out(tiny_dataset: Path, tmp_path: Path) -> None:
    """The quick start's step 3 in one pass: the manifest split writes holds test rows, which a split or a run of
    it leaves out, and its train and val rows as they are."""
    out, films = tmp_path / "held.csv", tmp_path / "films.csv"
    write_manifest(discover(tiny_dataset).split("train"), films)  # a site's films, without a test split
    assert main(["split", str(films), "--test-fraction", "0.25", "--out", str(out)]) == 0
    written = read_manifest(out).records
    sides = Counter((r.split, r.label) for r in written)
    assert sides[("test", "NORMAL")] == sides[("test", "PNEUMONIA")] == 6
    # 15 % of what is left of each stratum: 3 of 18 normal films, 1 of 9 bacteria and 1 of 9 virus
    assert (sides[("val", "NORMAL")], sides[("val", "PNEUMONIA")]) == (3, 2)
    assert split_summary(written)["shared_patients"] == []
    pool, _ = split_pool(out)
    assert {r.path for r in pool} == {r.path for r in written if r.split != "test"}


def test_a_manifest_keeps_names_that_are_not_utf8_and_reads_back_to_the_same_files(tmp_path: Path) -> None:
    """An escaped name (caf\\xe9.jpeg) would name another file: the bytes are kept, so the round trip holds."""
    folder = tmp_path / "data" / "NORMAL"
    folder.mkdir(parents=True)
    odd = Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.jpeg"))
    odd.write_bytes(b"x")
    records = discover(tmp_path / "data").records
    write_manifest(records, tmp_path / "split.csv")
    assert b"caf\xe9.jpeg" in (tmp_path / "split.csv").read_bytes()
    back = read_manifest(tmp_path / "split.csv").records
    assert [(r.path, r.patient) for r in back] == [(str(odd), "NORMAL/" + odd.name)] and Path(back[0].path).is_file()


def test_split_out_into_a_missing_folder_makes_it(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "runs" / "split.csv"
    assert main(["split", str(tiny_dataset), "--out", str(out)]) == 0
    assert len(read_manifest(out).records) == len(discover(tiny_dataset).split("train"))


def _film(path: Path, seed: int) -> Path:
    """A small decodable film, distinct per seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def conflicted(module_tmp: Callable[[str], Path]) -> Path:
    """20 patients a class, plus person1's third film filed under NORMAL and one picture filed as both classes."""
    root = module_tmp("conflicted")
    for i in range(20):
        _film(root / f"train/NORMAL/IM-{i:04d}-0001.jpeg", i)
        _film(root / f"train/PNEUMONIA/person{i + 2}_{('bacteria', 'virus')[i % 2]}_1.jpeg", 100 + i)
    for n in (1, 2):
        _film(root / f"train/PNEUMONIA/person1_bacteria_{n}.jpeg", 200 + n)
    _film(root / "train/NORMAL/person1_bacteria_9.jpeg", 209)  # misfiled, or relabelled, film of person1
    shutil.copyfile(root / "train/NORMAL/IM-0000-0001.jpeg", root / "train/PNEUMONIA/person99_bacteria_1.jpeg")
    return root


def test_a_misfiled_film_stays_with_its_patient_and_label_conflicts_are_warned_of(conflicted: Path, caplog) -> None:
    """person1_bacteria_9.jpeg under NORMAL lost its patient id and landed apart from person1's other films; the
    contradictions (that name, and one picture filed as NORMAL and PNEUMONIA) were never said."""
    person1 = {str(p) for p in conflicted.glob("train/*/person1_*")}
    sides = set()
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.split"):
        for seed in range(21):
            out = {r.path: r.split for r in split_dataset(conflicted, 0.25, seed)}
            assert len({out[p] for p in person1}) == 1, seed
            sides.add(out[min(person1)])
    assert sides == {"train", "val"}
    warning = caplog.messages[0]
    assert warning.startswith("2 label conflict(s): a file name or a duplicate (exact or near) contradicts a label, "
                              "e.g. ")
    assert "person1_bacteria_9.jpeg (named bacteria, labelled NORMAL)" in warning


def test_a_pool_without_a_class_is_refused_naming_what_was_left_out(tmp_path: Path) -> None:
    """A 3-class re-pack (train/{NORMAL,BACTERIA,VIRUS}): the pneumonia folders are not class folders, and split
    wrote a NORMAL-only manifest with exit status 0."""
    for folder in ("NORMAL", "BACTERIA", "VIRUS"):
        for i in range(4):
            (tmp_path / "train" / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / "train" / folder / f"IM-{i:04d}-0001.jpeg").write_bytes(f"{folder}{i}".encode())
    with pytest.raises(ValueError) as caught:
        split_dataset(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: no PNEUMONIA film outside test/ to split (its 4 films are all NORMAL); a split needs films of "
        f"NORMAL and PNEUMONIA; left out as not class or split folders: {tmp_path / 'train/BACTERIA'}, "
        f"{tmp_path / 'train/VIRUS'}")


def test_the_split_and_the_folds_do_not_depend_on_the_order_films_are_listed_in() -> None:
    """A manifest re-exported sorted otherwise chose another validation set (1,354 of 5,232 real films moved)."""
    records = _records({"normal": [1, 2, 1, 3] * 5, "bacteria": [2, 1] * 8, "virus": [1] * 12})
    shuffled = random.Random(1).sample(records, len(records))
    for seed in range(3):
        assert ({r.path: r.split for r in patient_split(records, 0.2, seed)}
                == {r.path: r.split for r in patient_split(shuffled, 0.2, seed)})
        folds = dict(zip((r.path for r in records), patient_folds(records, 3, seed)))
        assert folds == dict(zip((r.path for r in shuffled), patient_folds(shuffled, 3, seed)))


def test_split_help_says_what_the_validation_fraction_is_a_share_of(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["split", "--help"])
    assert "share of the films of each class and subtype" in " ".join(capsys.readouterr().out.split())


def test_a_reencoded_copy_under_another_patient_stays_with_its_original(data_root: Path, tmp_path: Path) -> None:
    """A film saved again as a smaller PNG under another child's name is the same picture: split and the folds of
    cv keep it on its original's side (byte copies alone were grouped, and this one landed apart in about half the
    seeds)."""
    root = tmp_path / "xray" / "train"
    normals = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[:16]
    sick = sorted((data_root / "train" / "PNEUMONIA").glob("*bacteria*.jpeg"))[:16]
    for folder, films in (("NORMAL", normals), ("PNEUMONIA", sick)):
        (root / folder).mkdir(parents=True)
        for film in films:
            shutil.copyfile(film, root / folder / film.name)
    original = root / "NORMAL" / normals[0].name
    copy = root / "NORMAL" / "IM-9999-0001.png"  # another patient id
    Image.open(original).resize((180, 180)).save(copy)
    sides = set()
    for seed in range(8):
        out = {Path(r.path).name: r.split for r in split_dataset(root.parent, val_fraction=0.5, seed=seed)}
        assert out[copy.name] == out[original.name], seed
        sides.add(out[copy.name])
    assert sides == {"train", "val"}  # the pair moves, always together
    pool, groups = split_pool(root.parent)
    assert groups == [sorted([str(original), str(copy)])]
    fold = patient_folds(pool, 4, seed=0, duplicate_groups=groups)
    index = {Path(r.path).name: i for i, r in enumerate(pool)}
    assert fold[index[copy.name]] == fold[index[original.name]]


def test_a_manifests_own_val_rows_pooled_anew_are_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A site's manifest with its own train, val and test rows, given as DATA: its val rows were pooled with its train
    rows and split anew without a word, so a run validated on other films than the ones the researcher set aside."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (label, split) in enumerate([("NORMAL", "train"), ("PNEUMONIA", "train"), ("NORMAL", "val"),
                                        ("PNEUMONIA", "val"), ("NORMAL", "test")]):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{label},{split}\n")
    (tmp_path / "m.csv").write_text("path,label,split\n" + "".join(rows))
    with caplog.at_level(logging.WARNING):
        pool, _ = split_pool(tmp_path / "m.csv")
    assert len(pool) == 4
    assert (f"{tmp_path / 'm.csv'}: its split column puts 2 films in val, which are pooled with its train films and "
            "split by patient anew: to validate on them as given, train with --split-csv") in caplog.messages
    caplog.clear()
    (tmp_path / "plain.csv").write_text("path,label\n" + "".join(r.rsplit(",", 1)[0] + "\n" for r in rows[:4]))
    with caplog.at_level(logging.WARNING):
        split_pool(tmp_path / "plain.csv")
    assert not any("val" in m for m in caplog.messages)
