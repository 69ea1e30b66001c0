"""The data layer on the real release and at its edges: every real file name's patient and subtype, a film no chest
film is shaped like, the hint for a dataset without a test split, and when copies of a film are worth a warning."""

from __future__ import annotations

import logging
import pickle
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pneumoscan.data.cache import EmptySplit, cache_dataset
from pneumoscan.data.copies import NEAR, picture_groups
from pneumoscan.data.labelled import patient_groups
from pneumoscan.data.layouts import discover, make_record
from pneumoscan.data.preprocess import PreprocessSpec
from pneumoscan.data.scope import ELONGATED, NO_TAGS, describe, in_scope, kind_of
from pneumoscan.inference.predict import predict_paths
from tests.builders import write_png

# the release's own names, each with the patient (or study) and subtype it gives, read by a rule of their own
_PERSON = re.compile(r"(person\d+)_(bacteria|virus)_\d+(?:_\d+)?\.jpeg")
_STUDY = re.compile(r"((?:NORMAL2-)?IM-\d{4})-\d{4}(?:-\d{4})?\.jpeg")


def test_every_real_file_name_gives_its_own_patient_and_subtype(data_root: Path) -> None:
    """All 5,232 names of train/ and val/: ``person1_bacteria_1`` and ``person1_virus_7`` are patient person1's
    (one child's, kept together), ``IM-0117-0001`` study IM-0117's, ``NORMAL2-IM-0381-0001`` study
    NORMAL2-IM-0381's (another series than IM-0381), ``person447_virus_921_1`` person447's."""
    found = discover(data_root)
    assert found.layout == "kaggle" and not found.skipped and len(found.records) == 5232
    for rec in found.records:
        name = Path(rec.path).name
        if person := _PERSON.fullmatch(name):
            expected = ("PNEUMONIA", person.group(2), person.group(1))
        else:
            study = _STUDY.fullmatch(name)
            assert study, name  # a name of another pattern would need a rule of its own
            expected = ("NORMAL", "normal", study.group(1))
        assert (rec.label, rec.subtype, rec.patient) == expected, rec


def test_a_strip_or_a_scanned_page_is_out_of_scope_in_predict_rows(tiny_bundle: Path, tmp_path: Path) -> None:
    """A 300 x 6000 PNG was squashed to a square and scored with only the no-tags warning, ``in_scope`` true: no
    chest film is 20 times as long as it is wide (the training films' originals at most about 1.73:1)."""
    films = tmp_path / "films"
    films.mkdir()
    write_png(films / "strip.png", 300, 6000)
    write_png(films / "page.png", 6000, 1900)
    write_png(films / "film.png", 388, 224)  # as long as the longest training film: no such warning
    rows = {Path(r["path"]).name: r for r in predict_paths(tiny_bundle, [films])}
    for name, shape in (("strip.png", "300 x 6000 pixels, its longer side 20.0"),
                        ("page.png", "6000 x 1900 pixels, its longer side 3.2")):
        row = rows[name]
        assert row["in_scope"] is False and 0 <= row["probability"] <= 1, row  # still scored, for a reader
        (strip,) = [w for w in row["warnings"] if kind_of(w) is ELONGATED]
        assert strip == f"image is {shape} times its shorter, more than 3: a strip or a scanned page, not a chest film"
    assert not any(kind_of(w) is ELONGATED for w in rows["film.png"]["warnings"])
    # the shape alone, without the model's look at the pixels, is what puts it out of scope
    assert (warnings := describe(films / "strip.png")["warnings"])[0] == NO_TAGS and not in_scope(warnings)
    assert in_scope(describe(films / "film.png")["warnings"])


def test_a_dataset_without_test_split_is_refused_in_no_one_commands_words(tiny_dataset: Path, tmp_path: Path) -> None:
    """``pneumoscan cache DATA --split test`` and ``threshold`` were told evaluate's "give a run's validation films
    instead": the library says which splits DATA holds, and each command what to give instead (test_cli)."""
    shutil.copytree(tiny_dataset / "train", tmp_path / "no_test" / "train")
    with pytest.raises(EmptySplit) as refused:
        cache_dataset(tmp_path / "no_test", PreprocessSpec(24, "squash"), "test")
    assert str(refused.value).endswith("it holds 48 films, and they are in the train split")
    assert (refused.value.split, refused.value.held) == ("test", ("train",))
    assert pickle.loads(pickle.dumps(refused.value)).held == ("train",), "whole across processes"


def _copies_said(caplog: pytest.LogCaptureFixture) -> dict[int, list[str]]:
    return {level: [r.getMessage() for r in caplog.records if r.levelno == level and "copies of" in r.getMessage()]
            for level in (logging.INFO, logging.WARNING)}


def test_copies_within_one_patients_films_are_information_and_copies_under_another_patient_a_warning(
        data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """The public release's byte copies (person1159_virus_1944 and _1945, one child's) were warned of on every
    command, ``-q`` or not, with nothing for a user to do; a copy filed under another patient still is."""
    folder = data_root / "train" / "PNEUMONIA"
    twins = [make_record(folder / f"person1159_virus_{n}.jpeg", "PNEUMONIA") for n in (1944, 1945)]
    other = make_record(folder / "person1160_virus_1946.jpeg", "PNEUMONIA")
    with caplog.at_level(logging.INFO, logger="pneumoscan"):
        copies, units, conflicts = patient_groups([*twins, other], data_root)
    assert copies == [[r.path for r in twins]] and conflicts == [] and units[0] == units[1] != units[2]
    said = _copies_said(caplog)
    assert said[logging.WARNING] == [] and len(said[logging.INFO]) == 1
    assert said[logging.INFO][0].startswith("2 film(s) of ") and "of the same patient" in said[logging.INFO][0]

    # the same picture filed as another child's: only the copy ties the two together, which a user must hear
    refiled = tmp_path / "person9999_virus_1.jpeg"
    shutil.copyfile(twins[0].path, refiled)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pneumoscan"):
        copies, units, _ = patient_groups([twins[0], make_record(refiled, "PNEUMONIA"), other], data_root)
    assert len(copies) == 1 and units[0] == units[1] != units[2]
    said = _copies_said(caplog)
    assert said[logging.INFO] == [] and len(said[logging.WARNING]) == 1
    assert said[logging.WARNING][0].startswith("2 film(s) of ") and "copies of others in it under other names" in \
        said[logging.WARNING][0]


def test_a_full_size_film_and_its_small_copies_are_one_picture(data_root: Path, tmp_path: Path) -> None:
    """train/ holds the films squashed to 224 px: a full-size original and such a copy were up to 24 bits of pHash
    apart (20 of 48 over the limit), since each was decoded at a size of its own before the hash resampled it, so
    evaluate's held-out check and a split could take them for two children's films."""
    originals = sorted((data_root / "val").glob("*/*.jpeg"))
    for original in originals:
        with Image.open(original) as im:
            gray = im.convert("L")
        copies = []
        for side in (224, 150, 512):
            copies.append(tmp_path / f"{side}-{original.name}")
            gray.resize((side, side), Image.Resampling.BILINEAR).save(copies[-1], quality=75)
        assert picture_groups([str(original), *map(str, copies)]) == [
            (NEAR, sorted([str(original), *map(str, copies)]))], original.name
