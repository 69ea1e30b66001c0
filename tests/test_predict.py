"""Prediction from files and folders: mixed good and bad inputs, DICOM, the etiology second stage, TTA, CLI."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import io
import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pneumoscan import cli
from pneumoscan.data.decode import read_gray
from pneumoscan.data.preprocess import TTA_VIEWS, PreprocessSpec, preprocess
from pneumoscan.data.scope import MIN_SIDE, THUMBNAIL, describe
from pneumoscan.data.walk import OUTPUT_FOLDER
from pneumoscan.inference.export import write_onnx_spec
from pneumoscan.inference.predict import (
    Predictor,
    expand_paths,
    format_results,
    predict_paths,
    ready_stages,
    score_paths,
    tta_probabilities,
    tta_views,
)
from pneumoscan.core.metrics import softmax
from pneumoscan.inference.explain import explain_array
from pneumoscan.models import registry as models
from pneumoscan.models.bundle import save_bundle
from pneumoscan.models.card import ONNX_NAME, BundleCard, load_card, save_card
from tests.builders import SCORE_TOL, as_run_split, at_threshold, chest_film_dicom, count_dicom_reads, dicom_bytes


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random uint8 image that spans 0..255 (so DICOM min-max scaling gives it back exactly)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)).copy()
    img[0, 0], img[-1, -1] = 0, 255
    return img


def make_bundle(directory: Path, task: str = "pneumonia", classes: tuple[str, ...] = ("NORMAL", "PNEUMONIA"),
                positive: str = "PNEUMONIA", size: int = 32, policy: str = "squash", threshold: float = 0.5) -> Path:
    """An untrained simple_cnn bundle with fixed random weights, for behaviour that needs no training."""
    torch.manual_seed(0)
    model = models.create("simple_cnn", num_classes=len(classes))
    card = BundleCard("simple_cnn", task, list(classes), positive, size, policy, 0.5, 0.25, threshold=threshold)
    return save_bundle(directory, model, card)


def _expected_probability(bundle: Path, path: Path) -> float:
    """What evaluation would say: the training cache's preprocessing, then the Predictor."""
    predictor = Predictor(bundle)
    images = preprocess(path, **predictor.card.spec.to_dict())[None]
    return float(predictor.positive_probability(predictor.probabilities(images))[0])


@pytest.fixture
def mixed_inputs(tiny_dataset: Path, tmp_path: Path) -> tuple[list[Path], dict[str, str]]:
    """A folder tree of good and bad files plus explicit file arguments; returns (arguments, bad name -> reason)."""
    folder = tmp_path / "in"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    sick = sorted((tiny_dataset / "test" / "PNEUMONIA").iterdir())
    normal = sorted((tiny_dataset / "test" / "NORMAL").iterdir())
    shutil.copy(sick[0], folder / "a_sick.jpeg")
    shutil.copy(normal[0], folder / "sub" / "b_normal.JPG")
    Image.fromarray(_image(48, 80, 1)).save(folder / "sub" / "deeper" / "c_wide.png")
    good_jpeg = (folder / "a_sick.jpeg").read_bytes()
    (folder / "d_truncated.jpeg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (folder / "e_empty.png").write_bytes(b"")
    (folder / "f_text.jpg").write_text("not an image\n" * 10)
    (folder / "notes.txt").write_text("ignored: not an image extension")
    (folder / ".hidden" / "g.jpeg").write_bytes(good_jpeg)  # hidden folder: skipped
    (folder / "._a_sick.jpeg").write_bytes(b"\0" * 10)  # macOS resource fork: skipped
    explicit_good = tmp_path / "explicit.jpeg"
    shutil.copy(sick[1], explicit_good)
    args = [folder, tmp_path / "missing.png", explicit_good]  # among films, a path not there is a row
    bad = {"d_truncated.jpeg": "truncated", "e_empty.png": "empty file", "f_text.jpg": "not a JPEG, PNG or DICOM",
           "missing.png": "no such file or folder"}  # fmt: skip
    return args, bad


def test_predict_files_and_folders_with_bad_inputs(tiny_bundle: Path, mixed_inputs: tuple) -> None:
    args, bad = mixed_inputs
    rows = predict_paths(tiny_bundle, args, batch_size=2)  # batches split good and bad files
    names = [Path(r["path"]).name for r in rows]
    assert names == ["a_sick.jpeg", "d_truncated.jpeg", "e_empty.png", "f_text.jpg", "b_normal.JPG", "c_wide.png",
                     "missing.png", "explicit.jpeg"]  # fmt: skip
    errors = {Path(r["path"]).name: r["error"] for r in rows if "error" in r}
    assert errors.keys() == bad.keys()
    for name, reason in bad.items():
        assert reason in errors[name]
    card = load_card(tiny_bundle)
    for row in rows:
        if "error" in row:
            assert row.keys() == {"path", "error"}
            continue
        assert row["threshold"] == card.threshold
        assert row["label"] == ("PNEUMONIA" if row["probability"] >= card.threshold else "NORMAL")
        assert row["probability"] == pytest.approx(_expected_probability(tiny_bundle, Path(row["path"])), abs=SCORE_TOL)


def test_folder_without_images_is_an_error_row(tmp_path: Path) -> None:
    """A folder without images is an error row saying what it holds instead; predict refuses the run only when no
    path it is given names a film (test_a_path_that_names_no_film_is_refused)."""
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert expand_paths([tmp_path / "empty"]) == [(str(tmp_path / "empty"), (
        "folder holds no JPEG, PNG or DICOM files (searched with its subfolders; 1 other entry skipped, such as "
        f"{tmp_path / 'empty' / 'readme.txt'}: not an image extension (.txt))"))]
    assert expand_paths([tmp_path / "empty" / "nested"]) == [(str(tmp_path / "empty" / "nested"),
                                                              "folder holds no JPEG, PNG or DICOM files")]
    assert expand_paths([""]) == [("", "empty path")], "an empty $VAR must not mean the current folder"


def test_a_manifest_given_to_predict_is_told_apart_from_a_film(tmp_path: Path) -> None:
    """A researcher whose films are listed in a manifest gives it to predict as evaluate takes it: the row said only
    that a CSV is not a JPEG, PNG or DICOM image."""
    manifest = tmp_path / "films.CSV"
    manifest.write_text("path,label\n")
    assert expand_paths([manifest]) == [
        (str(manifest), "a CSV manifest, not a film: predict reads films and folders of them; score a manifest's "
                        f"labelled films with `pneumoscan evaluate BUNDLE {manifest}`, or give the folder that holds "
                        "its films")]


def test_a_missing_path_is_no_such_file_or_folder_whatever_its_name() -> None:
    """`predict BUNDLE scans/` of a folder not there said "file not found", as if a film had been named; and a path
    not there that predict refused as "no such file or folder" was "file not found" in score_paths' row. One rule,
    among rows and in a refusal: a path given that is not there is neither a film nor a folder, whatever its name
    (a folder's may hold a dot: 2024.01.05/)."""
    given = ["/no/scans/", "/no/studies", "/no/film.png", "/no/2024.01.05"]
    assert expand_paths(given) == [(path.rstrip("/"), "no such file or folder") for path in given]
    with pytest.raises(ValueError, match="^/no/film.png: no such file or folder$"):
        expand_paths(["/no/film.png"], refuse=True)


def test_a_path_that_cannot_be_looked_at_is_not_said_to_be_missing(tmp_path: Path) -> None:
    """A path whose lookup fails for another cause than its absence (here a link loop, which root meets as any user
    does; no permission, a name too long, a failing mount alike) was said to be "no such file or folder" or left to
    the decode: it names its own cause, among rows and in a refusal."""
    (tmp_path / "loop").symlink_to("loop")
    why = f"cannot read: {os.strerror(errno.ELOOP)}"
    given = [str(tmp_path / "loop" / "x.png"), str(tmp_path / "loop" / "scans")]
    assert expand_paths(given) == [(path, why) for path in given]
    with pytest.raises(ValueError, match=f"^{re.escape(given[0])}: {why}$"):
        expand_paths(given[:1], refuse=True)


def test_the_runs_output_folder_is_not_what_a_folder_without_films_is_said_to_hold(tmp_path: Path) -> None:
    """`predict empty/ --heatmaps empty/maps` was refused as "1 other entry skipped, such as empty/maps: output
    folder of this run": a folder not there yet, where the hint at what the folder holds instead belongs. The run's
    own output folder is left out of the refusal's count and example, and still listed among what was skipped."""
    empty, maps = tmp_path / "empty", tmp_path / "empty" / "maps"
    empty.mkdir()
    skipped: list[dict[str, str]] = []
    with pytest.raises(ValueError) as refused:
        expand_paths([empty], exclude=maps, skipped=skipped, refuse=True)
    assert str(refused.value) == f"{empty}: folder holds no JPEG, PNG or DICOM files"
    assert skipped == [{"path": str(maps), "reason": OUTPUT_FOLDER}]
    maps.mkdir()  # an earlier run's overlays there, and a note beside
    (maps / "film.png").write_bytes(b"")
    (empty / "notes.txt").write_text("no film here")
    skipped.clear()
    with pytest.raises(ValueError) as refused:
        expand_paths([empty], exclude=maps, skipped=skipped, refuse=True)
    assert str(refused.value) == (
        f"{empty}: folder holds no JPEG, PNG or DICOM files (searched with its subfolders; 1 other entry skipped, such "
        f"as {empty / 'notes.txt'}: not an image extension (.txt))")
    assert [entry["path"] for entry in skipped] == [str(maps), str(empty / "notes.txt")]


def test_no_path_given_is_refused_and_paths_may_come_from_a_generator(tiny_bundle: Path, tmp_path: Path) -> None:
    """predict_paths(bundle, []) returned no rows, where a run in which no path names a film is refused; and the
    paths given as a generator raised TypeError (len of a generator) instead of the refusal of what they name."""
    with pytest.raises(ValueError, match="^no film or folder given$"):
        predict_paths(tiny_bundle, [])
    with pytest.raises(ValueError, match="^no film or folder given$"):
        expand_paths(iter([]), refuse=True)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'scans'))}: no such file or folder$"):
        expand_paths((path for path in [tmp_path / "scans"]), refuse=True)


def _names_no_film(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Each kind of path that names no film, made in ``tmp_path``, with what predict says of it."""
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no film here")
    (tmp_path / "films.csv").write_text("path,label\nfilm.png,NORMAL\n")
    return {
        "missing folder": (str(tmp_path / "scans"), f"{tmp_path / 'scans'}: no such file or folder"),
        "missing folder/": (f"{tmp_path / 'scans'}/", f"{tmp_path / 'scans'}: no such file or folder"),
        "missing film": (str(tmp_path / "flim.png"), f"{tmp_path / 'flim.png'}: no such file or folder"),
        "empty folder": (str(tmp_path / "empty"), f"{tmp_path / 'empty'}: folder holds no JPEG, PNG or DICOM files "
                         "(searched with its subfolders; 1 other entry skipped, such as "
                         f"{tmp_path / 'empty' / 'notes.txt'}: not an image extension (.txt))"),
        "manifest": (str(tmp_path / "films.csv"), f"{tmp_path / 'films.csv'}: a CSV manifest, not a film"),
        "empty path": ("", "no film or folder given (an empty path: is the variable that names it set?)"),
    }


@pytest.mark.parametrize("given", ["missing folder", "missing folder/", "missing film", "empty folder", "manifest",
                                   "empty path"])
def test_a_path_that_names_no_film_is_refused(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                              given: str) -> None:
    """`predict BUNDLE /no/such/path` said "Predicting 1 image", wrote a results file of one error row and exited 1:
    a typo read as a run a script may take for done. A run none of whose paths names a film (not there, a folder
    holding none, a manifest, an empty $VAR) is refused before any film is read, the path named, and nothing is
    written: no results, no heatmap folder, and no folder of --out's either (made by its check, it was left behind)."""
    path, said = _names_no_film(tmp_path)[given]
    out, heatmaps = tmp_path / "runs" / "new" / "results.csv", tmp_path / "heatmaps"  # folders not there yet
    assert cli.main(["predict", str(tiny_bundle), path, "--out", str(out), "--heatmaps", str(heatmaps)]) == 2
    printed = capsys.readouterr()
    assert printed.err.startswith(f"pneumoscan predict: error: {said}"), printed.err
    assert "Predicting" not in printed.err and not printed.out
    assert not (tmp_path / "runs").exists() and not heatmaps.exists()


def test_paths_that_name_no_film_beside_films_are_error_rows(tiny_bundle: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A cron job over `/incoming/*/` with one empty day was refused whole, the other days' films unread: a path that
    names no film among paths that do is an error row (exit status 1) and the films are scored. When none does, the
    refusal names how many were given and the first three."""
    kinds = _names_no_film(tmp_path)
    film = tmp_path / "film.png"
    Image.fromarray(_image(40, 40, 0)).save(film)
    out = tmp_path / "runs" / "day" / "results.csv"  # its folder made once the results are written
    given = [path for path, _ in kinds.values()]
    assert cli.main(["predict", str(tiny_bundle), *given, str(film), "--out", str(out)]) == 1
    rows = list(csv.DictReader(out.open()))
    assert [row["path"] for row in rows] == [path.rstrip("/") for path in given] + [str(film)]
    assert [row["label"] for row in rows[:-1]] == [""] * len(kinds) and rows[-1]["label"]
    for row, (path, said) in zip(rows, kinds.values(), strict=False):  # each row's reason in the refusal's words
        assert f"{row['path']}: {row['error']}".startswith(said) if path else row["error"] == "empty path", row
    capsys.readouterr()
    assert cli.main(["predict", str(tiny_bundle), *given, "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(
        f"pneumoscan predict: error: none of the 6 paths given names a film: {kinds['missing folder'][1]}; "
        f"{kinds['missing folder/'][1]}; {kinds['missing film'][1]}; and 3 more\n")


def test_dicom_predicts_like_the_same_pixels_as_png(tiny_bundle: Path, tmp_path: Path) -> None:
    pixels = _image(40, 56, 2)
    Image.fromarray(pixels).save(tmp_path / "film.png")
    # 16-bit, min-max maps back to `pixels`
    (tmp_path / "film.dcm").write_bytes(dicom_bytes(pixels.astype(np.uint16) * 257, bits=16))
    # found by its DICM magic
    (tmp_path / "inverted").write_bytes(dicom_bytes((255 - pixels.astype(np.uint16)) * 257, "MONOCHROME1", bits=16))
    rows = predict_paths(tiny_bundle, [tmp_path / "film.png", tmp_path / "film.dcm", tmp_path / "inverted"])
    assert all("error" not in r for r in rows), rows
    assert rows[1]["probability"] == pytest.approx(rows[0]["probability"], abs=SCORE_TOL)
    assert rows[2]["probability"] == pytest.approx(rows[0]["probability"], abs=SCORE_TOL)


def test_a_dicom_film_is_read_once_for_its_pixels_and_its_header(tiny_bundle: Path, data_root: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """predict read a DICOM film twice (its pixels, then its header for the scope checks): one read serves both, and
    the row's UIDs and warnings are those a read of the header alone gives."""
    path = tmp_path / "film.dcm"
    path.write_bytes(chest_film_dicom(read_gray(sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0])))
    reads = count_dicom_reads(monkeypatch)
    [row] = predict_paths(tiny_bundle, [path])
    assert "label" in row and len(reads) == 1, (row, reads)
    expected = describe(path)
    assert {key: row[key] for key in expected if key != "warnings"} == {
        key: value for key, value in expected.items() if key != "warnings"} and row["study_instance_uid"]
    assert row["warnings"][: len(expected["warnings"])] == expected["warnings"]


def test_etiology_second_stage_runs_only_on_pneumonia_calls(
    tiny_bundle: Path, tiny_etiology_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    files = sorted((tiny_dataset / "test").rglob("*.jpeg"))
    # Put the first stage's threshold at the median score so both labels occur whatever the tiny model learnt.
    first = tmp_path / "first"
    shutil.copytree(tiny_bundle, first)
    scores = sorted(r["probability"] for r in predict_paths(first, files))
    save_card(first, at_threshold(load_card(first),
                                  threshold=(scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2))

    rows = predict_paths(first, files, etiology=tiny_etiology_bundle, batch_size=5)
    second = Predictor(tiny_etiology_bundle)
    called = [r for r in rows if r["label"] == "PNEUMONIA"]
    assert 0 < len(called) < len(rows)
    for row in rows:
        if row["label"] == "NORMAL":
            assert row["etiology_probability_virus"] is None and row["etiology_label"] is None
            continue
        images = preprocess(row["path"], **second.card.spec.to_dict())[None]
        expected = float(second.positive_probability(second.probabilities(images))[0])
        assert row["etiology_probability_virus"] == pytest.approx(expected, abs=SCORE_TOL)
        assert row["etiology_label"] == ("virus" if expected >= second.card.threshold else "bacteria")
    with pytest.raises(ValueError, match="etiology"):
        predict_paths(tiny_etiology_bundle, files[:1], etiology=first)
    # run alone, the second stage answers bacteria or virus for a normal film too: every answer says so
    alone = predict_paths(tiny_etiology_bundle, files)
    assert {row["label"] for row in alone} <= {"bacteria", "virus"}
    assert all(any("assumes the film shows pneumonia" in w for w in row["warnings"]) for row in alone)
    assert not any("assumes" in w for row in rows for w in row["warnings"])


def test_each_stage_reads_the_pixels_its_own_training_decode_gives(
    tiny_bundle: Path, tiny_etiology_bundle: Path, data_root: Path, tmp_path: Path
) -> None:
    """A full-size JPEG is draft-decoded towards each bundle's own decode target, as its training cache was and as
    the web service does, even when the two stages' targets differ."""
    first, second = tmp_path / "first", tmp_path / "second"
    for src, dst, changes in ((tiny_bundle, first, {"threshold": 0.0, "source_size": None}),
                              (tiny_etiology_bundle, second, {"source_size": 700})):
        shutil.copytree(src, dst)
        save_card(dst, at_threshold(load_card(dst), **changes))
    film = sorted((data_root / "val" / "PNEUMONIA").glob("*.jpeg"))[-1]  # full size: draft decoding applies
    row = predict_paths(first, [film], etiology=second)[0]
    for stage, key in ((Predictor(first), "probability"), (Predictor(second), "etiology_probability_virus")):
        gray = read_gray(film, target=stage.card.spec.decode_target)
        assert row[key] == pytest.approx(
            float(stage.positive_probability(stage.probabilities(stage.preprocess([gray])))[0]), abs=SCORE_TOL)


def test_multiclass_bundle_thresholds_one_minus_p_normal(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "mc", "multiclass", ("normal", "bacteria", "virus"), "pneumonia", threshold=0.3)
    predictor = Predictor(bundle)
    gray = _image(50, 70, 3)
    out = predictor.predict_array(gray)
    assert out["probability"] == pytest.approx(1.0 - out["probabilities"]["normal"])
    assert sum(out["probabilities"].values()) == pytest.approx(1.0)
    assert out["label"] == ("pneumonia" if out["probability"] >= 0.3 else "normal")
    assert out["threshold"] == 0.3


def test_a_multiclass_bundles_rows_carry_each_class_probability(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A three-class bundle's label is normal vs pneumonia only: its rows carry the class probabilities the service's
    ``probabilities`` gives, so the most probable class (or bacteria vs virus) can be read from the results file.
    A two-class bundle's columns stay as they are."""
    films = []
    for seed in range(3):
        films.append(tmp_path / f"film{seed}.png")
        Image.fromarray(_image(50, 70, seed)).save(films[-1])
    three = make_bundle(tmp_path / "mc", "multiclass", ("normal", "bacteria", "virus"), "pneumonia", threshold=0.3)
    rows = predict_paths(three, films)
    predictor = Predictor(three)
    for film, row in zip(films, rows):
        expected = predictor.predict_array(read_gray(film))["probabilities"]
        assert {c: row[f"probability_{c}"] for c in expected} == pytest.approx(expected, abs=SCORE_TOL)
        assert row["probability"] == pytest.approx(1.0 - row["probability_normal"], abs=SCORE_TOL)
    assert json.loads(format_results(rows, "json"))[0]["probability_virus"] == rows[0]["probability_virus"]
    assert cli.main(["predict", str(three), *map(str, films)]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(table[0])[:8] == ["path", "probability", "label", "threshold", "near_threshold", "probability_normal",
                                  "probability_bacteria", "probability_virus"]
    assert [float(r["probability_bacteria"]) for r in table] == pytest.approx([r["probability_bacteria"] for r in rows])
    assert cli.main(["predict", str(make_bundle(tmp_path / "two")), *map(str, films)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == ("path,probability,label,threshold,near_threshold,warnings,"
                                                       "in_scope,model_id,model_version")


@pytest.mark.parametrize("array", [
    np.zeros((100, 80), np.uint16),  # a 16-bit film: Pillow said "image has wrong mode"
    np.zeros((1, 60, 45), np.uint8),  # a channel axis first: "Cannot handle this data type"
    np.zeros((100, 80), np.float32),  # reported as (50, 40), after the reduction towards the model input
    np.zeros((600, 450, 3), np.uint8),  # colour: reported as (43, 33, 3)
], ids=["uint16", "1xHxW", "float32", "rgb"])
def test_an_array_other_than_2d_uint8_is_refused_with_its_own_shape_and_dtype(
    array: np.ndarray, tmp_path: Path
) -> None:
    predictor = Predictor(make_bundle(tmp_path / "b"))
    said = re.escape(f"expected a grayscale image as a 2-D uint8 array (height x width, 0-255), got a {array.dtype} "
                     f"array of shape {array.shape}")
    for call in (predictor.predict_array, lambda a: explain_array(predictor, a), PreprocessSpec(32).apply):
        with pytest.raises(ValueError, match=f"^{said}"):
            call(array)
    assert predictor.predict_array(_image(60, 45, 1))["label"] in ("NORMAL", "PNEUMONIA")  # 2-D uint8: as before


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_batch_that_is_not_the_models_preprocessed_input_is_refused(tiny_bundle: Path, backend: str) -> None:
    """`Predictor.probabilities` is the batch call a script with films of its own in memory reaches for: a float batch
    in [0, 1] (a data loader's tensors) was read as grey levels of 0 or 1 out of 255, and a film not brought to the
    model's size was read at its own size by torch, each given a probability. Both backends refuse anything but
    `preprocess`'s uint8 (N, S, S), saying what was given."""
    predictor = Predictor(tiny_bundle, backend=backend)
    batch = predictor.preprocess([_image(60, 45, 1), _image(50, 50, 2)])
    assert predictor.probabilities(batch).shape == (2, 2)
    size = predictor.card.size
    for wrong in (batch.astype(np.float32) / 255, batch.astype(np.int64), _image(60, 45, 1)[None], batch[0],
                  batch[:, None]):
        said = re.escape(f"got a {wrong.dtype} array of shape {wrong.shape}")
        with pytest.raises(ValueError, match=rf"uint8 array of shape \(N, {size}, {size}\).*{said}"):
            predictor.probabilities(wrong)
    with pytest.raises(ValueError, match="got list"):
        predictor.probabilities(list(batch))


def test_a_pillow_image_is_refused_saying_how_to_read_it_upright(tiny_bundle: Path, tmp_path: Path) -> None:
    """A script's own loader gives Pillow images: refused, the words said to decode with read_gray, a file only, and
    the docs' `np.asarray(Image.open(path).convert("L"))` read an EXIF-turned JPEG on its side. The refusal gives a
    way from the image in memory that reads it upright, as read_gray reads the file."""
    film = Image.fromarray(_image(90, 60, 3))
    exif = film.getexif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees to show
    film.save(tmp_path / "turned.jpeg", exif=exif, quality=95)
    predictor = Predictor(tiny_bundle)
    with Image.open(tmp_path / "turned.jpeg") as image:
        with pytest.raises(ValueError, match=re.escape('np.asarray(ImageOps.exif_transpose(image).convert("L"))')):
            predictor.predict_array(image)
        upright = np.asarray(ImageOps.exif_transpose(image).convert("L"))
    decoded = read_gray((tmp_path / "turned.jpeg").read_bytes())  # its bytes, as a loader may hold them
    assert upright.shape == decoded.shape == (60, 90)
    assert np.abs(upright.astype(int) - decoded).max() <= 1
    assert predictor.predict_array(upright)["probability"] == pytest.approx(
        predictor.predict_array(decoded)["probability"], abs=0.01)


def test_predict_array_matches_the_file_flow(tiny_bundle: Path, tmp_path: Path) -> None:
    gray = _image(60, 45, 4)
    Image.fromarray(gray).save(tmp_path / "x.png")
    out = Predictor(tiny_bundle).predict_array(gray)
    row = predict_paths(tiny_bundle, [tmp_path / "x.png"])[0]
    assert out["probability"] == pytest.approx(row["probability"], abs=SCORE_TOL)
    assert out["label"] == row["label"] and out["threshold"] == row["threshold"]
    assert out["probabilities"]["PNEUMONIA"] == pytest.approx(out["probability"])


def test_predict_array_warns_as_predict_warns_of_the_file_of_its_pixels(
    tiny_bundle: Path, tiny_etiology_bundle: Path, data_root: Path, tmp_path: Path
) -> None:
    """A 1 x 2 array read as any film, without a warning, where the same pixels as a PNG were a thumbnail, out of
    scope. An array's reading carries the warnings, ``in_scope`` and model of the file of its pixels (a second stage
    run alone saying so too); a real film decoded at the bundle's target, as docs/python.md does (here under 224 px
    a side), is no thumbnail, as its file is none."""
    tiny = np.array([[0, 255]], np.uint8)
    Image.fromarray(tiny).save(tmp_path / "tiny.png")
    film = sorted((data_root / "val" / "NORMAL").glob("*.jpeg"))[0]
    fields = ("warnings", "in_scope", "model_id", "model_version")
    for bundle in (tiny_bundle, tiny_etiology_bundle):
        predictor = Predictor(bundle)
        decoded = read_gray(film, target=predictor.card.spec.decode_target)
        assert min(decoded.shape) < MIN_SIDE
        rows = predict_paths(bundle, [tmp_path / "tiny.png", film])
        for gray, row in zip((tiny, decoded), rows):
            out = predictor.predict_array(gray)
            assert {k: out[k] for k in fields} == {k: row[k] for k in fields}
        assert rows[0]["in_scope"] is False and THUMBNAIL.wrote(rows[0]["warnings"][1])
        assert not any(THUMBNAIL.wrote(w) for w in rows[1]["warnings"])
    assert "assumes the film shows pneumonia" in rows[0]["warnings"][-1]  # the etiology model alone


def test_a_full_size_film_decoded_in_full_scores_as_predict_scores_it(tiny_bundle: Path, data_root: Path) -> None:
    """docs/python.md decodes a film in full and hands it to predict_array: it skipped the reduction predict makes
    on decoding, and a real bundle scored full-size originals up to 0.13 apart."""
    films = sorted((data_root / "val").rglob("*.jpeg"))[:4]
    predictor = Predictor(tiny_bundle)
    rows = predict_paths(tiny_bundle, films, backend="torch")
    for film, row in zip(films, rows):
        assert min(read_gray(film).shape) > 2 * predictor.card.spec.decode_target  # one the reduction changes
        assert predictor.predict_array(read_gray(film))["probability"] == pytest.approx(row["probability"], abs=1e-6)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_turned_film_decoded_at_the_bundles_target_scores_as_predict_scores_it(tiny_bundle: Path, data_root: Path,
                                                                                  tmp_path: Path,
                                                                                  orientation: int) -> None:
    """A JPEG with an EXIF turn, decoded in full, is turned before the reduction, which predict's decode makes on the
    stored pixels: where the reduction does not divide a side, its blocks fall elsewhere (a 32 px model's score
    moved by up to 0.008). Decoded at the bundle's target, as docs/python.md does, it is predict's very input."""
    film = sorted((data_root / "val" / "PNEUMONIA").glob("*.jpeg"))[0]
    turned = tmp_path / f"turned-{orientation}.jpeg"
    with Image.open(film) as im:
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(turned, exif=exif, quality=95)
    predictor = Predictor(tiny_bundle)
    row = predict_paths(tiny_bundle, [turned], backend="torch")[0]
    decoded = read_gray(turned, target=predictor.card.spec.decode_target)
    assert (decoded.shape[0] > decoded.shape[1]) == (orientation != 3)  # turned upright: a wide film stands (6, 8)
    assert predictor.predict_array(decoded)["probability"] == pytest.approx(row["probability"], abs=1e-6)


def test_full_size_input_is_preprocessed_like_the_training_cache(tiny_bundle: Path, data_root: Path) -> None:
    """A full-size original goes through the bundle's training-source step (64 px JPEG q95 for the tiny
    dataset) the same way in predict and serve as in the cache that evaluation reads."""
    card = load_card(tiny_bundle)
    assert (card.source_size, card.source_quality) == (64, 95)  # recorded by training from its files
    path = sorted((data_root / "val" / "NORMAL").glob("*.jpeg"))[0]
    predictor = Predictor(tiny_bundle)
    from_cache = preprocess(path, **card.spec.to_dict())
    np.testing.assert_array_equal(predictor.preprocess([read_gray(path, target=card.spec.decode_target)])[0],
                                  from_cache)
    direct = preprocess(path, card.size, card.resize_policy)
    assert not np.array_equal(from_cache, direct)  # the step is applied, not skipped
    row = predict_paths(tiny_bundle, [path])[0]
    assert row["probability"] == pytest.approx(_expected_probability(tiny_bundle, path), abs=SCORE_TOL)


def test_tta_averages_deterministic_views_without_flips(tiny_bundle: Path) -> None:
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    views = list(tta_views(images))
    assert len(views) == len(TTA_VIEWS) and all(v.shape == images.shape and v.dtype == np.uint8 for v in views)
    np.testing.assert_array_equal(views[0], images)
    for view in views[1:]:
        assert not np.array_equal(view, images)
        assert not np.array_equal(view, images[:, :, ::-1])  # never a mirror image
    predictor = Predictor(tiny_bundle)
    plain, tta = predictor.probabilities(images), predictor.probabilities(images, tta=True)
    expected = np.mean([predictor.probabilities(v) for v in views], axis=0)
    np.testing.assert_allclose(tta, expected, atol=SCORE_TOL)
    np.testing.assert_allclose(tta, predictor.probabilities(images, tta=True))
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, atol=SCORE_TOL)
    assert not np.allclose(tta, plain)
    logits = [predictor.logits(v) for v in views]
    np.testing.assert_allclose(tta, tta_probabilities(logits, predictor.card.temperature), atol=SCORE_TOL)


def test_tta_probabilities_calibrate_each_view_then_average() -> None:
    """The one TTA rule that training, ensembles, INT8 export and predict share: softmax of each view's logits at
    the temperature, then the mean of the probabilities (not the softmax of the mean logits, which differs)."""
    views = [np.array([[0.0, 6.0], [1.0, 0.0]]), np.array([[0.0, -2.0], [0.0, 3.0]])]
    got = tta_probabilities(iter(views), 2.0)  # views may come one by one, as tta_views yields them
    np.testing.assert_allclose(got, (softmax(views[0], 2.0) + softmax(views[1], 2.0)) / 2)
    assert not np.allclose(got, softmax(np.mean(views, axis=0), 2.0))


def test_cli_predict_writes_results_and_reports_failures(
    tiny_bundle: Path, mixed_inputs: tuple, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args, bad = mixed_inputs
    out = tmp_path / "results" / "r.csv"
    assert cli.main(["predict", str(tiny_bundle), *map(str, args), "--out", str(out), "--batch-size", "3"]) == 1
    err = capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and sum(bool(r["error"]) for r in rows) == len(bad)
    for row in rows:
        if row["error"]:
            assert f"{row['path']}: {row['error']}" in err
        else:
            assert 0.0 <= float(row["probability"]) <= 1.0 and row["label"] in ("NORMAL", "PNEUMONIA")

    good = [str(p) for p in args if p.name == "explicit.jpeg"]
    out_json = tmp_path / "r.json"
    assert cli.main(["predict", str(tiny_bundle), *good, "--out", str(out_json), "--tta"]) == 0
    [row] = json.loads(out_json.read_text())
    assert row.keys() == {"path", "probability", "label", "threshold", "near_threshold", "warnings", "in_scope",
                          "model_id", "model_version"}
    card = load_card(tiny_bundle)
    assert row["threshold"] == card.tta_threshold != card.threshold, "TTA scores are read at the TTA threshold"
    assert row["label"] == ("PNEUMONIA" if row["probability"] >= card.tta_threshold else "NORMAL")
    assert cli.main(["predict", str(tiny_bundle), *good]) == 0  # CSV on stdout
    printed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["path"] for r in printed] == good
    assert cli.main(["predict", str(tiny_bundle), *good, "--out", str(tmp_path / "r.txt")]) == 2


@pytest.mark.parametrize("problem", ["out is a folder", "heatmaps is a file", "bundle is a file", "damaged weights",
                                     "batch size -1"])
def test_cli_predict_wrong_paths_and_settings_end_with_a_reason_and_status_2(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture, problem: str
) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(_image(40, 40, 0)).save(image)
    bundle, extra = tiny_bundle, []
    if problem == "out is a folder":
        (tmp_path / "r.csv").mkdir()
        extra = ["--out", str(tmp_path / "r.csv")]
    elif problem == "heatmaps is a file":
        extra = ["--heatmaps", str(image)]
    elif problem == "bundle is a file":
        bundle = image
    elif problem == "damaged weights":
        bundle = tmp_path / "bundle"
        shutil.copytree(tiny_bundle, bundle)
        (bundle / "model.safetensors").write_bytes(b"not safetensors")
    else:
        extra = ["--batch-size", "-1"]
    with pytest.raises(SystemExit) if problem == "batch size -1" else contextlib.nullcontext():
        assert cli.main(["predict", str(bundle), str(image), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("error:" in err), err
    assert "must be a whole number above 0" in err if problem == "batch size -1" else err.count("\n") == 1, err


def test_predict_paths_refuses_heatmaps_given_a_file_as_the_command_does(tiny_bundle: Path, tmp_path: Path) -> None:
    """A Python caller had got mkdir's bare FileExistsError; the same one line as ``predict --heatmaps FILE``, and
    a FIFO named as such."""
    film = tmp_path / "film.png"
    Image.fromarray(_image(40, 40, 0)).save(film)
    taken = tmp_path / "maps.png"
    taken.write_bytes(b"a file")
    fifo = tmp_path / "maps"
    os.mkfifo(fifo)
    for where, kind in ((taken, "file"), (fifo, "FIFO")):
        with pytest.raises(ValueError) as refused:
            predict_paths(tiny_bundle, [film], heatmap_dir=where)
        assert str(refused.value) == f"heatmap_dir (--heatmaps) {where} is a {kind}: name a folder"
    assert taken.read_bytes() == b"a file"


def test_format_results_csv_keeps_column_order_and_blanks() -> None:
    rows = [{"path": "a", "probability": 0.7, "label": "PNEUMONIA", "threshold": 0.5},
            {"path": "b", "error": "empty file (0 bytes)"}]
    lines = format_results(rows, "csv").splitlines()
    assert lines == ["path,probability,label,threshold,error,warnings", "a,0.7,PNEUMONIA,0.5,,",
                     "b,,,,empty file (0 bytes),"]
    assert json.loads(format_results(rows, "json")) == rows
    # no film read at all (a mistyped folder): the columns a reader keys on are still there
    nothing = format_results([{"path": "tset", "error": "file not found"}], "csv").splitlines()
    assert nothing == ["path,probability,label,threshold,error,warnings", "tset,,,,file not found,"]


def test_stages_carry_the_tta_and_heatmaps_they_were_readied_with_so_each_batch_is_read_as_readied(
        tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """score_paths took tta and a heatmap folder again, though ready_stages had been given them: stages readied with
    TTA were read without it, at the plain threshold, unless told twice. Each batch is read with the TTA the stages
    were loaded with, its overlays in the folder named for that batch (listen's study a folder); stages readied for
    heatmaps and given no folder, or a folder given to stages not readied for them, are refused before any film."""
    films = [sorted((tiny_dataset / "test" / "PNEUMONIA").glob("*.jpeg"))[0]]
    stages = ready_stages(tiny_bundle, tta=True, heatmaps=True)
    with pytest.raises(ValueError, match="need the folder of their overlays"):
        score_paths(stages, films)
    # what came after the paths, named: an old call's third argument (tta) would be read as progress, without TTA
    with pytest.raises(TypeError, match="positional"):
        score_paths(stages.overlays_into(tmp_path / "old"), films, True)  # type: ignore[misc]
    # the predictor's own readings of the film, with and without TTA (apart for the tiny bundle: about 0.471, 0.476)
    gray = read_gray(films[0], stages.first.card.spec.decode_target)  # as score_paths decodes it
    tta, plain = (stages.first.predict_array(gray, tta=tta)["probability"] for tta in (True, False))
    assert abs(tta - plain) > 10 * SCORE_TOL
    for batch in ("first", "second"):
        [row] = score_paths(stages.overlays_into(tmp_path / batch), films)
        assert row["threshold"] == load_card(tiny_bundle).tta_threshold, "read at the TTA threshold"
        assert row["probability"] == pytest.approx(tta, abs=SCORE_TOL), "the TTA probability"
        assert Path(row["heatmap"]).parent == tmp_path / batch and Path(row["heatmap"]).is_file()
    with pytest.raises(ValueError, match="not readied for heatmaps"):
        dataclasses.replace(stages, heatmaps=False).overlays_into(tmp_path / "third")


def test_tta_is_refused_for_a_bundle_without_a_tta_threshold(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    old = tmp_path / "old-bundle"
    shutil.copytree(tiny_bundle, old)
    card = load_card(old)
    save_card(old, dataclasses.replace(card, tta_threshold=None))
    write_onnx_spec(old, old / ONNX_NAME)  # its ONNX sidecar as it was then: no TTA threshold either
    film = tmp_path / "film.png"
    Image.fromarray(_image(40, 40, 3)).save(film)
    with pytest.raises(ValueError, match="no threshold validated for test-time augmentation"):
        predict_paths(old, [film], tta=True)
    assert predict_paths(old, [film])[0]["threshold"] == card.threshold
    # the command line says why, on stderr, with exit status 2 rather than a traceback
    assert cli.main(["predict", str(old), str(film), "--tta"]) == 2
    assert "no threshold validated for test-time augmentation" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "no-such-bundle"), str(film)]) == 2
    assert "bundle.json" in capsys.readouterr().err


@pytest.mark.parametrize("backend, waits", [("onnx", False), ("torch", True)])
def test_only_the_torch_backend_waits_while_a_heatmap_holds_the_model(tiny_bundle: Path, backend: str,
                                                                      waits: bool) -> None:
    predictor = Predictor(tiny_bundle, backend=backend)
    images = predictor.preprocess([_image(40, 40, 1)])
    done = threading.Event()
    with predictor.lock:  # what explain_array holds during Grad-CAM
        worker = threading.Thread(target=lambda: (predictor.logits(images), done.set()), daemon=True)
        worker.start()
        # a tiny model's run takes milliseconds, but a thread on a loaded 2-core host may wait its turn for longer
        # than 0.3 s: one that took no lock is done within 1 s
        assert done.wait(timeout=1.0 if waits else 30.0) is not waits
    worker.join(timeout=30.0)
    assert done.is_set()


def test_a_reading_inside_the_threshold_interval_is_near_the_threshold(tiny_bundle: Path, tiny_dataset: Path,
                                                                        tmp_path: Path) -> None:
    """Training records the 95 % confidence interval of its threshold; a reading inside that range could
    have been called either way: predict's rows, the CSV, the service's answer and its card say so."""
    from fastapi.testclient import TestClient

    from pneumoscan.serving.app import create_app

    card = load_card(tiny_bundle)
    assert len(card.threshold_interval) == 2 and card.threshold_interval[0] <= card.threshold_interval[1]
    film = next((tiny_dataset / "test" / "PNEUMONIA").iterdir())
    [row] = predict_paths(tiny_bundle, [film])
    p = row["probability"]
    for name, interval, near in (("around", [max(0.0, p - 0.01), min(1.0, p + 0.01)], True),
                                 ("apart", [0.0, p - 0.01] if p > 0.5 else [p + 0.01, 1.0], False)):
        bundle = tmp_path / name
        shutil.copytree(tiny_bundle, bundle)
        save_card(bundle, dataclasses.replace(load_card(bundle), threshold_interval=interval))
        [row] = predict_paths(bundle, [film])
        assert row["near_threshold"] is near
        assert f"{row['near_threshold']}" in format_results([row], "csv").splitlines()[1]
        with TestClient(create_app(bundle)) as client:
            assert client.get("/v1/model").json()["threshold_interval"] == interval
            answer = client.post("/v1/predict", files={"file": (film.name, film.read_bytes(), "image/jpeg")}).json()
        assert answer["near_threshold"] is near


def test_the_second_stage_says_its_caveats_and_marks_its_readings_near_its_threshold(
        tiny_bundle: Path, tiny_etiology_bundle: Path, tiny_dataset: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The etiology stage's guessed threshold was never said by predict, and its near-threshold mark was lost in the
    rows (the service's answer had it)."""
    second = load_card(tiny_etiology_bundle)
    assert second.caveats and len(second.threshold_interval) == 2
    caplog.clear()
    rows = predict_paths(tiny_bundle, [tiny_dataset / "test" / "PNEUMONIA"], etiology=tiny_etiology_bundle)
    assert any(m.endswith(second.caveats[0]) for m in caplog.messages)
    low, high = second.threshold_interval
    called = [r for r in rows if r.get("etiology_label")]
    assert called and all(r["etiology_near_threshold"] is (low <= r["etiology_probability_virus"] <= high)
                          for r in called)
    assert all(r["etiology_near_threshold"] is None for r in rows if "label" in r and not r.get("etiology_label"))


def test_one_path_given_alone_is_one_path_not_its_characters(tiny_bundle: Path, tiny_dataset: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``predict_paths(bundle, "film.jpeg")`` had read the string as a sequence of paths, one a character: "/" and
    "." among them, a search of the whole disk (43,637 rows from one folder's name)."""
    film = next((tiny_dataset / "test" / "NORMAL").iterdir())
    monkeypatch.chdir(tiny_dataset)
    for given in (str(film), film, "test/NORMAL"):
        rows = predict_paths(tiny_bundle, given)
        assert [r["path"] for r in rows] == ([str(film)] if given != "test/NORMAL" else
                                             sorted(str(p) for p in Path("test/NORMAL").iterdir()))
        assert all("probability" in r for r in rows)


def test_a_stopped_predict_leaves_no_overlays_without_results(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or SIGTERM, which predict turns into the same unwinding) on the third film left the first two
    overlays and no results file naming them; a rerun then filed its own beside them under other names."""
    from pneumoscan.inference import explain

    drawn, draw = [], explain.film_overlay

    def stopped_at_the_third(*args, **kwargs) -> bytes:
        if len(drawn) == 2:
            raise KeyboardInterrupt
        drawn.append(1)
        return draw(*args, **kwargs)

    monkeypatch.setattr(explain, "film_overlay", stopped_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        predict_paths(tiny_bundle, tiny_dataset / "test", heatmap_dir=tmp_path / "maps")
    assert len(drawn) == 2 and list((tmp_path / "maps").iterdir()) == []
    monkeypatch.undo()
    rows = predict_paths(tiny_bundle, tiny_dataset / "test", heatmap_dir=tmp_path / "maps")
    assert sorted(Path(r["heatmap"]).name for r in rows) == sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert not any(p.stem.endswith("-2") for p in (tmp_path / "maps").iterdir())


def test_a_training_film_whose_name_holds_a_comma_or_a_quote_is_found_among_the_films_given(
    tiny_bundle: Path, tmp_path: Path,
) -> None:
    """The file-name shortcut read split.csv's words split at every comma and quote, so the name of a training film
    holding one (`IM-0001, 2.jpeg`, which the CSV quotes) was never among them and predict said nothing of it."""
    import shutil

    from pneumoscan.data.layouts import discover, write_manifest
    from pneumoscan.evaluation.held_out import trained_among

    shutil.copytree(tiny_bundle, tmp_path / "run" / "bundle")
    records = discover(tiny_bundle.parent / "split.csv").records
    first = next(i for i, r in enumerate(records) if r.split == "train")
    named = {}
    for name in ('IM-0001, 2.jpeg', 'IM-0001 "2".jpeg'):
        named[name] = tmp_path / name
        shutil.copyfile(records[first].path, named[name])
        records.append(dataclasses.replace(records[first], path=str(named[name])))
    write_manifest(records, tmp_path / "run" / "split.csv")
    as_run_split(tmp_path / "run" / "bundle")
    for path in named.values():
        said = trained_among([tmp_path / "run" / "bundle"], [str(path)], "predict")
        assert len(said) == 1 and said[0].startswith("1 of the 1 films given to predict are in "), (path, said)


def test_a_training_film_its_split_lists_with_spaces_around_its_path_is_found(
    tiny_bundle: Path, tmp_path: Path,
) -> None:
    """A hand-edited split.csv with spaces around a path cell is read as read_manifest reads it (each cell stripped):
    the quick look at its paths kept the spaces, found no such file and said nothing of a training film given."""
    import csv
    import shutil

    from pneumoscan.evaluation.held_out import trained_among

    shutil.copytree(tiny_bundle, tmp_path / "run" / "bundle")
    with (tiny_bundle.parent / "split.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["split"] == "train")
    film = (tiny_bundle.parent / row["path"]).resolve()
    row["path"] = f" {film} "
    with (tmp_path / "run" / "split.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    as_run_split(tmp_path / "run" / "bundle")
    said = trained_among([tmp_path / "run" / "bundle"], [str(film)], "predict")
    assert len(said) == 1 and said[0].startswith("1 of the 1 films given to predict are in "), said


def test_a_training_film_by_a_link_of_another_name_or_a_copy_is_found_among_the_films_given(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check compared real paths after a file-name shortcut: a training film that the split lists by a symbolic
    link of another name (a folder of links into an archive) and that is given by its own name, one given by a hard
    link of another name (a real path of its own), and a byte-for-byte copy of one under another name were each
    read without a word. Films new to the bundle still pass without the split read as a manifest."""
    import os
    import shutil

    from pneumoscan.data.layouts import discover, write_manifest
    from pneumoscan.evaluation import held_out

    shutil.copytree(tiny_bundle, tmp_path / "run" / "bundle")
    records = discover(tiny_bundle.parent / "split.csv").records
    first, second, third = [i for i, r in enumerate(records) if r.split == "train"][:3]
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in (first, second, third):  # the films in an archive, the split listing links into it
        target = archive / f"film-{i}.jpeg"
        shutil.copyfile(records[i].path, target)
        (tmp_path / f"link-{i}.jpeg").symlink_to(target)
        records[i] = dataclasses.replace(records[i], path=str(tmp_path / f"link-{i}.jpeg"))
    write_manifest(records, tmp_path / "run" / "split.csv")
    as_run_split(tmp_path / "run" / "bundle")
    os.link(archive / f"film-{second}.jpeg", tmp_path / "hard.jpeg")
    shutil.copyfile(archive / f"film-{third}.jpeg", tmp_path / "copy.jpeg")
    new = [r.path for r in discover(tiny_dataset).split("test")][:3]
    given = [str(archive / f"film-{first}.jpeg"), str(tmp_path / "hard.jpeg"), str(tmp_path / "copy.jpeg"), *new]
    said = held_out.trained_among([tmp_path / "run" / "bundle"], given, "predict")
    assert len(said) == 1 and said[0].startswith(
        f"3 of the 6 films given to predict are in {tmp_path / 'run' / 'bundle'}'s training split (e.g. {given[0]}; "
        "1 of them byte-for-byte copies of its films under other names): "), said
    read: list[Path] = []
    monkeypatch.setattr(held_out, "discover", lambda path: read.append(path) or discover(path))
    assert held_out.trained_among([tmp_path / "run" / "bundle"], new, "predict") == [] and read == []


def test_films_the_bundle_trained_on_are_read_with_a_warning_that_their_scores_are_no_measure(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """predict read the bundle's own training films, its run's split.csv beside it, without a word: a user who took
    their scores for a measure of the model was misled. They are read (predicting a known film is legitimate), with
    one warning counting them; films new to the bundle are checked without reading the split as a manifest."""
    from pneumoscan.data.layouts import discover
    from pneumoscan.evaluation import held_out

    run = discover(tiny_bundle.parent / "split.csv").records
    trained = [r.path for r in run if r.split == "train"][:2]
    link = tmp_path / "linked.jpeg"  # the same film under another name
    link.symlink_to(trained[1])
    new = [r.path for r in discover(tiny_dataset).split("test")][:3]
    read: list[Path] = []
    monkeypatch.setattr(held_out, "discover", lambda path: read.append(path) or discover(path))
    caplog.clear()
    assert cli.main(["predict", str(tiny_bundle), *new, "--out", str(tmp_path / "new.csv")]) == 0
    assert "training split" not in caplog.text and read == []
    assert cli.main(["predict", str(tiny_bundle), trained[0], str(link), *new, "--out", str(tmp_path / "all.csv")]) == 0
    with (tmp_path / "all.csv").open(newline="") as f:
        assert [row["label"] != "" for row in csv.DictReader(f)] == [True] * 5  # every film read
    said = [m for m in caplog.messages if "training split" in m]
    assert said == [f"2 of the 5 films given to predict are in {tiny_bundle}'s training split (e.g. {trained[0]}): "
                    "it learnt them with their labels, so their scores show what it remembers, no measure of how it "
                    "reads films it never saw (`pneumoscan evaluate` on films new to it measures that)"]
