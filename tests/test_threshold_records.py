"""What `pneumoscan threshold` records of the choice it made: the INT8 thresholds it replaced (a report read at the
new one names the report read at those as its predecessor), and whether the films it chose on could be checked
to be new to the bundle."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from pneumoscan import cli
from pneumoscan.data.decode import read_gray
from pneumoscan.data.layouts import discover, make_record, write_manifest
from pneumoscan.evaluation.model_card import MODEL_CARD, card_summary, render, today
from pneumoscan.evaluation.rethreshold import rethreshold
from pneumoscan.inference.onnx_runtime import INT8_NAME, read_sidecar
from pneumoscan.interop.reports import earlier_thresholds
from pneumoscan.models.card import load_card
from tests.builders import as_run_split, dicom_bytes

IN_SCOPE = {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA", "PatientAge": "003Y",
            "PatientID": "MRN-1", "PatientSex": "F", "StudyDate": "20230315", "StudyTime": "101500"}


@pytest.fixture(scope="module")
def site(tiny_dataset: Path, module_tmp: Callable[[str], Path]) -> Path:
    """A site's own labelled films (the tiny dataset's test films, listed without a split)."""
    path = module_tmp("site") / "site.csv"
    write_manifest([make_record(r.path, r.label) for r in discover(tiny_dataset).split("test")], path)
    return path


def test_an_int8_report_at_a_new_threshold_names_the_report_it_replaces(
    int8_bundle: Path, site: Path, data_root: Path, tmp_path: Path
) -> None:
    """The INT8 model labels at thresholds of its own, which `threshold` chooses anew: no record kept the ones it
    replaced, so an INT8 report at the new threshold named no predecessor while an FP32 one did."""
    before = read_sidecar(int8_bundle / INT8_NAME)
    retuned = tmp_path / "retuned"
    rethreshold(int8_bundle, site, retuned)
    card = load_card(retuned)
    [record] = card.threshold_records
    assert (record["previous_int8_threshold"], record["previous_int8_tta_threshold"]) == (
        before["int8_threshold"], before["int8_tta_threshold"])
    assert record["int8_threshold"] != before["int8_threshold"], "a new INT8 threshold, or the test shows nothing"
    assert before["int8_threshold"] in earlier_thresholds(card, "onnx-int8")
    assert before["int8_tta_threshold"] in earlier_thresholds(card, "onnx-int8", tta=True)
    assert earlier_thresholds(card, "onnx") == [record["previous_threshold"]]  # the FP32 model's are its own

    pixels = read_gray(sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]).astype(np.uint16) * 16
    film = tmp_path / "films" / "a.dcm"
    film.parent.mkdir()
    film.write_bytes(dicom_bytes(pixels, StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(),
                                 **IN_SCOPE))
    sr_dir = tmp_path / "sr"
    for bundle in (int8_bundle, retuned):
        assert cli.main(["predict", str(bundle), str(film), "--backend", "onnx-int8", "--dicom-sr", str(sr_dir)]) == 0
    earlier, now = (pydicom.dcmread(sr_dir / name) for name in ("a.sr.dcm", "a-2.sr.dcm"))
    assert now.SOPInstanceUID != earlier.SOPInstanceUID
    [study] = now.PredecessorDocumentsSequence
    assert study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == earlier.SOPInstanceUID


def test_the_threshold_record_says_whether_its_films_were_checked_to_be_new_to_the_bundle(
    tiny_bundle: Path, site: Path, tmp_path: Path, weight_sources_looked_up: list[str]
) -> None:
    """As an evaluation --add-to-card records: a bundle in its run folder has the films checked against its
    training films, and its record says so from that one check (the bundle's weight sources looked up once); one
    given alone (no run's split.csv beside it) cannot, which its record and MODEL_CARD.md say (the threshold may be
    one chosen on films it trained on)."""
    rethreshold(tiny_bundle, site, tmp_path / "checked")
    assert weight_sources_looked_up == [os.path.realpath(tiny_bundle)]
    [record] = load_card(tmp_path / "checked").threshold_records
    assert record["films_checked"] is True and record["caveats"] == []
    assert "| checked |" in (tmp_path / "checked" / MODEL_CARD).read_text()

    alone = shutil.copytree(tiny_bundle, tmp_path / "alone")
    rethreshold(alone, site, tmp_path / "unchecked")
    [record] = load_card(tmp_path / "unchecked").threshold_records
    assert record["films_checked"] is False
    assert "no split.csv of its run beside it" in record["caveats"][0]
    assert "the films given to choose the threshold" in record["caveats"][0]
    text = (tmp_path / "unchecked" / MODEL_CARD).read_text()
    assert "| **not checked** |" in text and record["caveats"][0] in text
    # a record written before films_checked was kept reads as not recorded, never as checked
    card = load_card(tmp_path / "unchecked")
    old = {k: v for k, v in record.items() if k != "films_checked"}
    assert "| not recorded |" in render(dataclasses.replace(card, threshold_records=[old]))


def test_a_run_whose_split_lists_no_film_where_it_is_is_refused_for_a_threshold(
    tiny_bundle: Path, site: Path, tmp_path: Path
) -> None:
    """As --add-to-card refuses it: the record would say the films were checked while none of the run's films
    could be compared with them."""
    run = tmp_path / "moved"
    shutil.copytree(tiny_bundle, run / "bundle")
    records = discover(tiny_bundle.parent / "split.csv").records
    write_manifest([dataclasses.replace(r, path=str(tmp_path / "gone" / Path(r.path).name)) for r in records],
                   run / "split.csv")
    as_run_split(run / "bundle")
    with pytest.raises(ValueError, match=r"is where it says .* run it where the run's split.csv finds its films"):
        rethreshold(run / "bundle", site, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_the_threshold_record_keeps_its_label_conflicts_as_an_evaluation_record_does(
    tiny_bundle: Path, site: Path, tmp_path: Path
) -> None:
    """A threshold chosen on films whose labels their names or a copy contradict was chosen against those labels:
    its record lists them as `evaluate --add-to-card`'s does, MODEL_CARD.md says so among the record's caveats, and
    the service, which shows no paths of the machine that chose it, leaves them out (they were only logged)."""
    films = discover(site).records
    sick = next(r for r in films if "bacteria" in Path(r.path).name)
    misfiled = tmp_path / "misfiled" / Path(sick.path).name  # a bacteria film, listed as NORMAL too
    misfiled.parent.mkdir()
    shutil.copyfile(sick.path, misfiled)
    given = tmp_path / "given.csv"
    write_manifest([*films, make_record(str(misfiled), "NORMAL")], given)
    rethreshold(tiny_bundle, given, tmp_path / "new", target_sensitivity=None, data_name="site E")
    card = load_card(tmp_path / "new")
    [record] = card.threshold_records
    assert {c["reason"] for c in record["label_conflicts"]} == {"named bacteria, labelled NORMAL",
                                                                "one picture labelled NORMAL and PNEUMONIA bacteria"}
    body = (tmp_path / "new" / MODEL_CARD).read_text()
    assert f"- {today()}, on site E: 2 label conflict(s) among the films, scored as labelled" in body
    assert "label_conflicts" not in card_summary(card)["threshold_records"][0]
    clean = dataclasses.replace(card, threshold_records=[record | {"label_conflicts": []}])
    assert "label conflict" not in render(clean)
