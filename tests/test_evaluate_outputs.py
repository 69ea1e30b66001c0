"""What `evaluate` leaves for a researcher: predictions.csv, the figures as PNG files, the most confident errors
in the report, and a sensitivity/specificity table over thresholds."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import itertools
import json
import re
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.builders import SCORE_TOL, UNCHECKED, assert_close_report, at_threshold, chest_film_dicom, with_appearance_of
from tests.test_interop import chest_dicom
from pneumoscan import cli
from pneumoscan.core.digests import bytes_sha256
from pneumoscan.core.metrics import FILM_UNIT_CAVEAT, with_ci
from tests.builders import labelled_records
from pneumoscan.data.layouts import discover
from pneumoscan.data.preprocess import PreprocessSpec
from pneumoscan.data.readers.pillow import OWN_OUTPUT_SOFTWARE
from pneumoscan.data.scope import BURNED_IN
from pneumoscan.data.tasks import binary_targets, get_task
from pneumoscan.evaluation.evaluate import GALLERY_SIZE, error_gallery, evaluate, threshold_table
from pneumoscan.evaluation.methods import METHODS
from pneumoscan.evaluation.report import _decision_figure
from pneumoscan.inference.predict import Predictor, predict_paths
from pneumoscan.models.card import load_card, save_card

FIGURES = ("confusion_matrix.png", "roc.png", "pr.png", "reliability.png")


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_predictions_figures_and_a_threshold_table(tiny_bundle: Path, tiny_dataset: Path,
                                                                    tiny_evaluation: Path) -> None:
    """The files evaluate wrote (the session's evaluation of the tiny bundle on the test split), and the figures it
    returns: those its files hold."""
    out = tiny_evaluation
    metrics = json.loads((out / "metrics.json").read_text())
    card = load_card(tiny_bundle)

    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == ["path", "label", "subtype", "patient", "probability", "called", "correct", "optimistic",
                             "in_scope", "warnings", "split"]
    assert len(rows) == metrics["n"] == 16
    predictor = Predictor(tiny_bundle)
    for row in rows:
        truth = Path(row["path"]).parent.name  # the folder is the label
        p = float(row["probability"])
        score = predictor.predict_array(np.array(Image.open(row["path"]).convert("L")))["probability"]
        assert abs(p - score) <= SCORE_TOL, row
        assert row["label"] == truth and row["called"] == (card.positive if p >= card.threshold else "NORMAL")
        assert row["correct"] == str(row["called"] == truth)
        stem = Path(row["path"]).stem
        assert row["patient"] == (stem.split("_")[0] if truth == "PNEUMONIA" else stem[:7])
        assert row["subtype"] == ("normal" if truth == "NORMAL" else stem.split("_")[1])
    errors = sum(r["correct"] == "False" for r in rows)
    cm = metrics["confusion_matrix"]["counts"]
    assert errors == cm[0][1] + cm[1][0]

    html = (out / "report.html").read_text()
    # the header's data names the split as well as the dataset root, which holds the training films too
    assert f"<tr><th>data</th><td>{tiny_dataset}, split test</td></tr>" in html
    for name in FIGURES:
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG"), name
        if name != "confusion_matrix.png":  # the report shows the same picture, drawn once
            assert base64.b64encode(png).decode() in html, name

    # the table: sensitivity and specificity recounted from predictions.csv at every threshold
    table = read_csv(out / "sensitivity_table.csv")
    assert table and [float(r["threshold"]) for r in table] == sorted(float(r["threshold"]) for r in table)
    again = evaluate(tiny_bundle, tiny_dataset, "test")
    assert_close_report(metrics["threshold_table"], again["threshold_table"], "threshold_table")
    # metrics.json holds what evaluate returns and the checksum of the predictions.csv written with it
    assert metrics.keys() - again.keys() == {"predictions_checksum"} and again.keys() <= metrics.keys()
    assert metrics["predictions_checksum"] == bytes_sha256((out / "predictions.csv").read_bytes())
    y = np.array([r["label"] == "PNEUMONIA" for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    for row in table:
        called = p >= float(row["threshold"])
        assert float(row["sensitivity"]) == called[y].mean() and float(row["specificity"]) == (~called[~y]).mean()
        if (~called).any():  # the NPV too (it was nowhere in the table)
            assert float(row["npv"]) == (~y[~called]).mean()
        assert int(row["tp"]) + int(row["fn"]) == 8
        if "sensitivity >= 0.95" in row["rule"]:
            assert float(row["sensitivity"]) >= 0.95
    (bundle_row,) = [r for r in table if "bundle threshold" in r["rule"]]
    assert (float(bundle_row["threshold"]) == card.threshold
            and float(bundle_row["sensitivity"]) == metrics["sensitivity"])


def test_evaluate_marks_the_films_outside_the_models_scope_as_predict_does_and_warns_of_text_burned_in(
        tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A lateral DICOM among the films: scored and counted like the rest, but never silently: predict calls it out
    of scope, and so must evaluate's rows, its warning and metrics.json.

    A DICOM whose header says text is burned into its pixels was read like any film: text is a shortcut a model
    may read, and a heatmap or copy sent on shows it. predict and evaluate's rows warn of it, and the film stays in
    scope (a chest film with a marker, as most are, the training films too): not counted out of scope. (One
    evaluation of the test films with the three DICOMs among them proves both.)"""
    data = tmp_path / "films"
    shutil.copytree(tiny_dataset / "test", data)
    pixels = np.asarray(Image.open(next((data / "NORMAL").glob("*.jpeg"))).convert("L"))
    lateral = data / "NORMAL" / "lateral.dcm"
    lateral.write_bytes(chest_dicom(pixels, ViewPosition="LL"))
    # at a film's size: the tiny films are thumbnails, out of scope by that alone
    film = np.asarray(Image.fromarray(pixels).resize((256, 256)))
    (data / "NORMAL" / "marked.dcm").write_bytes(chest_film_dicom(film, BurnedInAnnotation="YES"))
    (data / "NORMAL" / "plain.dcm").write_bytes(chest_film_dicom(film, BurnedInAnnotation="NO"))
    metrics = evaluate(tiny_bundle, data, out_dir=tmp_path / "eval")
    rows = {row["path"]: row for row in read_csv(tmp_path / "eval" / "predictions.csv")}
    assert len(rows) == metrics["n"] == 19
    assert {row["split"] for row in rows.values()} == {""}  # a folder of a site's own names no split
    outside, predicted = [], {}
    for row_predicted in predict_paths(tiny_bundle, sorted(rows)):
        predicted[Path(row_predicted["path"]).name] = row_predicted
        row = rows[row_predicted["path"]]
        assert (row["in_scope"], row["warnings"]) == (str(row_predicted["in_scope"]),
                                                      "; ".join(row_predicted["warnings"]))
        outside += [] if row_predicted["in_scope"] else [row_predicted["path"]]
    assert rows[str(lateral)]["in_scope"] == "False" and "lateral view (LL)" in rows[str(lateral)]["warnings"]
    assert sorted(film["path"] for film in metrics["out_of_scope"]) == outside
    assert any("lateral view (LL)" in reason for film in metrics["out_of_scope"] for reason in film["reasons"])
    assert f"{len(outside)} film(s) of films are outside the model's scope" in caplog.text
    # and what to do to measure without them, which a researcher with a lateral among a site's films had to guess
    assert ("predictions.csv marks them (in_scope false) and metrics.json lists them (out_of_scope): leave them out "
            "of the films given to measure without them") in caplog.text
    # text burned in: warned of, in scope
    rows = {Path(path).name: row for path, row in rows.items()}
    for name, warned in (("marked.dcm", True), ("plain.dcm", False)):
        assert (BURNED_IN.text() in predicted[name]["warnings"]) == warned and predicted[name]["in_scope"]
        assert rows[name]["in_scope"] == "True" and (BURNED_IN.text() in rows[name]["warnings"]) == warned
    assert not any(film["path"].endswith(("marked.dcm", "plain.dcm")) for film in metrics["out_of_scope"])


def test_the_report_shows_the_most_confident_errors_with_grad_cam(tiny_bundle: Path, tiny_dataset: Path,
                                                                   tmp_path: Path) -> None:
    """At threshold 0 every normal film is a false positive: the report shows the GALLERY_SIZE with the highest
    scores, highest first, as Grad-CAM overlays (three panels side by side), and no false negatives."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    save_card(bundle, at_threshold(load_card(bundle), threshold=0.0))
    out = tmp_path / "eval"
    evaluate(bundle, tiny_dataset, None, out)  # train and test: more normal films than the gallery holds
    rows = read_csv(out / "predictions.csv")
    # every row's split is its film's split folder, train and test
    assert [r["split"] for r in rows] == [Path(r["path"]).parts[-3] for r in rows]
    assert {r["split"] for r in rows} == {"train", "test"}
    normals = sorted((float(r["probability"]) for r in rows if r["label"] == "NORMAL"), reverse=True)
    assert len(normals) > GALLERY_SIZE
    html = (out / "report.html").read_text()
    fp_part, fn_part = html.split("<h3>False positives")[1].split("<h3>False negatives")
    shown = [float(p) for p in re.findall(r"P = ([0-9.]+)<br>", fp_part)]  # the overlay's caption beneath
    assert shown == [round(p, 4) for p in normals[:GALLERY_SIZE]]  # at the decimals of the threshold
    assert "None." in fn_part and "<img" not in fn_part
    for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', fp_part):
        overlay = Image.open(io.BytesIO(base64.b64decode(data)))
        # original | heatmap | blend (their caption is the page's text): the film gray, the heatmap in colour
        side = overlay.size[0] // 3
        assert overlay.size == (3 * side, side)  # the square films' panels alone
        panels = np.asarray(overlay.convert("RGB")).astype(int)[: side // 2]  # the square films' upper half
        film, heat = panels[:, : side - 1], panels[:, side + 1 : 2 * side - 1]
        assert (film == film[..., :1]).all() and np.ptp(heat, axis=2).mean() > 10
        # marked as pneumoscan's, as a full-size overlay is: saved from the report, it is refused as a film
        assert overlay.info.get("Software") == OWN_OUTPUT_SOFTWARE["overlay"]


def test_evaluate_counts_patients_in_its_intervals(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """The CIs evaluate records are threshold_metrics_ci's with the records' patients: by patient where a manifest
    pairs the test films into patients, by film where every film is a patient of its own (the Kaggle names here)."""
    from pneumoscan.core.metrics import jsonable, threshold_metrics_ci

    task = get_task("pneumonia")
    predictor = Predictor(tiny_bundle)
    records, images, targets, _ = labelled_records(tiny_dataset, "test", task, predictor.card.spec)
    alone = evaluate(tiny_bundle, tiny_dataset, "test")
    film_ci = threshold_metrics_ci(binary_targets(targets),
                                   predictor.positive_probability(predictor.probabilities(images)),
                                   [alone["threshold"]])
    assert alone["ci_unit"] == "film"
    assert_close_report(alone["ci"], jsonable(film_ci)[0])

    manifest = tmp_path / "paired.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient"])
        for i, r in enumerate(sorted(records, key=lambda r: r.path)):  # 8 NORMAL films, then 8 PNEUMONIA ones
            writer.writerow([r.path, r.label, f"patient{i // 2}"])
    # metrics.json's figures, as written (its report's caption on these films:
    # test_evaluate_says_on_screen_when_its_intervals_count_films)
    saved = jsonable(evaluate(tiny_bundle, manifest))
    records, images, targets, _ = labelled_records(manifest, None, task, predictor.card.spec)
    patients = [r.patient for r in records]
    assert len(set(patients)) == 8 and saved["ci_unit"] == "patient"
    y, scores = binary_targets(targets), predictor.positive_probability(predictor.probabilities(images))
    thresholds = (saved["threshold"], 0.5)
    by_patient = jsonable(threshold_metrics_ci(y, scores, thresholds, groups=patients))
    assert_close_report([saved["ci"], saved["at_0_5"]["ci"]], by_patient)
    assert by_patient != jsonable(threshold_metrics_ci(y, scores, thresholds)), "patients are not films here"


def test_the_gallery_stops_grad_cam_at_its_time_limit(tiny_bundle: Path, tiny_dataset: Path) -> None:
    predictor = Predictor(tiny_bundle)
    records, images, targets, _ = labelled_records(tiny_dataset, "test", get_task("pneumonia"), predictor.card.spec)
    scores = predictor.positive_probability(predictor.probabilities(images))
    gallery = error_gallery(predictor, records, binary_targets(targets), scores, threshold=1.1, size=3, cam_seconds=0)
    (false_pos, false_neg) = gallery.values()
    assert false_pos == [] and len(false_neg) == 3
    for png, caption in false_neg:  # plain films (64 px squares), not three-panel overlays, and not marked
        film = Image.open(io.BytesIO(png))
        assert film.size == (64, 64) and "Software" not in film.info and caption.startswith("person")


def test_the_gallery_never_shows_a_probability_on_the_wrong_side_of_the_threshold(tiny_bundle: Path,
                                                                                  tiny_dataset: Path) -> None:
    """The report shows its threshold at four decimals (0.4626) and gave a false negative of 0.46258 as "P = 0.463",
    past it, under "called NORMAL": each probability is given at the threshold's decimals, and where those show the
    two alike, at the decimals that tell them apart with the threshold beside it."""
    predictor = Predictor(tiny_bundle)
    records, *_ = labelled_records(tiny_dataset, "test", get_task("pneumonia"), predictor.card.spec)
    scores = np.array([0.46258, 0.3, 0.46262])
    gallery = error_gallery(predictor, records[:3], np.array([1, 1, 0]), scores, threshold=0.4626, cam_seconds=0)
    (false_pos, false_neg) = gallery.values()
    assert [caption.split("  ")[1] for _, caption in false_neg] == ["P = 0.3000", "P = 0.46258, threshold 0.46260"]
    assert [caption.split("  ")[1] for _, caption in false_pos] == ["P = 0.46262, threshold 0.46260"]


def test_predictions_csv_gives_each_probability_on_the_side_of_the_threshold_it_was_called(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """predictions.csv gave probabilities to 6 decimals beside ``called``: a film within 5e-7 of the threshold read
    on the other side of metrics.json's threshold from its call. Each probability is the full float, as predict's."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    predictor = Predictor(bundle)
    _, images, _, _ = labelled_records(tiny_dataset, "test", get_task("pneumonia"), predictor.card.spec)
    p = float(predictor.positive_probability(predictor.probabilities(images))[0])
    save_card(bundle, at_threshold(predictor.card, threshold=(p + round(p, 6)) / 2))  # between p and its 6 decimals
    out = tmp_path / "eval"
    evaluate(bundle, tiny_dataset, "test", out)
    threshold = json.loads((out / "metrics.json").read_text())["threshold"]
    rows = read_csv(out / "predictions.csv")
    assert min(abs(float(row["probability"]) - threshold) for row in rows) < 5e-7  # the film at the threshold
    for row in rows:
        assert (float(row["probability"]) >= threshold) == (row["called"] == predictor.card.positive), row


def test_the_three_class_task_writes_its_own_figures_beside_the_pneumonia_ones(
        three_class_runs: tuple[Path, Path]) -> None:
    """The 3-class report has two parts (pneumonia at the threshold, then the most probable of three classes);
    each part's confusion matrix, ROC and reliability figures are files, the 3 x 3 ones named classes_*. (The
    session's evaluation of a three-class bundle on the 16 test films.)"""
    out = three_class_runs[0]
    for name in (*FIGURES, "classes_confusion_matrix.png", "classes_roc.png", "classes_reliability.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    three = Image.open(out / "classes_confusion_matrix.png")
    two = Image.open(out / "confusion_matrix.png")
    assert three.size[0] > two.size[0]  # three columns of cells, not two
    counts = json.loads((out / "metrics.json").read_text())["multiclass"]["confusion_matrix"]["counts"]
    assert np.array(counts).shape == (3, 3) and np.array(counts).sum() == 16


def test_a_multiclass_predictions_csv_recomputes_its_three_class_figures(three_class_runs: tuple[Path, Path]) -> None:
    """The three-class figures are of the most probable class, where ``called`` is normal vs pneumonia at the
    threshold: predictions.csv carries each class's probability and that class, so the 3 x 3 matrix (or a
    subgroup's) can be rebuilt from the file. (The session's evaluation of a three-class bundle on the test films.)"""
    out = three_class_runs[0]
    metrics = json.loads((out / "metrics.json").read_text())
    rows = read_csv(out / "predictions.csv")
    classes = ["normal", "bacteria", "virus"]
    assert list(rows[0]) == ["path", "label", "subtype", "patient", "probability", "called", "correct", "optimistic",
                             "probability_normal", "probability_bacteria", "probability_virus", "most_probable",
                             "in_scope", "warnings", "split"]
    counts = np.zeros((3, 3), int)
    for row in rows:
        probs = [float(row[f"probability_{c}"]) for c in classes]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert float(row["probability"]) == pytest.approx(1.0 - probs[0], abs=1e-5)
        assert row["most_probable"] == classes[int(np.argmax(probs))]
        counts[classes.index(row["label"]), classes.index(row["most_probable"])] += 1
    assert counts.tolist() == metrics["multiclass"]["confusion_matrix"]["counts"]
    block = metrics["multiclass"]  # methods.md gives its accuracy, the matrix's, with its interval
    assert block["accuracy"] == pytest.approx(np.trace(counts) / len(rows))
    said = f"accuracy {with_ci(block['accuracy'], block['ci']['accuracy'])}; balanced accuracy"
    assert said in (out / METHODS).read_text().split("### Three classes, the most probable class")[1]


def test_two_stages_are_scored_as_the_three_classes_predict_calls(
    tiny_bundle: Path, tiny_etiology_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
    """evaluate --etiology: every film's three-class call is the one `predict --etiology` makes (the second stage
    decoding at its own size), the 3 x 3 confusion matrix counts those calls, and the report has the part."""
    from pneumoscan.cli import main
    from pneumoscan.inference.predict import predict_paths

    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(tiny_bundle, first)
    shutil.copytree(tiny_etiology_bundle, second)
    # Thresholds at the median scores, so each stage makes both calls whatever the tiny models learnt; the second
    # stage reads 40 px films (simple_cnn pools to a fixed size), so it is decoded apart from the first stage.
    predictor = Predictor(first)
    _, images, _, _ = labelled_records(tiny_dataset, "test", get_task("pneumonia"), predictor.card.spec)
    save_card(first, at_threshold(
        load_card(first), threshold=float(np.median(predictor.positive_probability(predictor.probabilities(images))))))
    card = load_card(second)
    save_card(second, dataclasses.replace(card, size=40, train_config={**card.train_config, "image_size": 40}))
    etiology = Predictor(second)
    _, images, _, _ = labelled_records(tiny_dataset, "test", get_task("pneumonia"), etiology.card.spec)
    save_card(second, at_threshold(
        load_card(second), threshold=float(np.median(etiology.positive_probability(etiology.probabilities(images))))))

    out = tmp_path / "eval"
    # torch: the card's edited size does not match the exported ONNX graph's fixed input
    assert main(["evaluate", str(first), str(tiny_dataset), "--split", "test", "--etiology", str(second),
                 "--out", str(out), "--backend", "torch"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["two_stage"]
    # named as the multiclass task names them: the two routes' figures and calls sit side by side under one set
    names = ["normal", "bacteria", "virus"]
    assert block["class_names"] == names == list(get_task("multiclass").classes)
    assert f"(rows true {', '.join(names)})" in printed

    rows = read_csv(out / "predictions.csv")
    # the second stage's probability under predict's name for it (results.csv's etiology_probability_virus)
    assert list(rows[0]) == ["path", "label", "subtype", "patient", "probability", "called", "correct", "optimistic",
                             "etiology_probability_virus", "two_stage_called", "etiology_in_scope",
                             "etiology_warnings", "in_scope", "warnings", "split"]
    assert len(rows) == block["n"] == 16
    # the etiology bundle records no appearance: its column says so, as the first stage's warnings do
    assert all(row["etiology_warnings"] == UNCHECKED for row in rows) and block["out_of_scope"] == []
    predicted = {str(r["path"]): r for r in predict_paths(first, [r["path"] for r in rows])}
    predicted_two = {str(r["path"]): r for r in predict_paths(first, [r["path"] for r in rows], etiology=second)}
    counts = np.zeros((3, 3), int)
    for row in rows:
        expected = predicted_two[row["path"]]
        # predict's first stage says NORMAL (the pneumonia task's name); the three classes' name for it is normal
        assert row["two_stage_called"] == (expected["etiology_label"] or {"NORMAL": "normal"}[expected["label"]]), row
        if expected["etiology_probability_virus"] is not None:
            assert float(row["etiology_probability_virus"]) == pytest.approx(expected["etiology_probability_virus"],
                                                                             abs=1e-5)
        assert float(row["probability"]) == pytest.approx(predicted[row["path"]]["probability"], abs=1e-5)
        counts[names.index(row["subtype"]), names.index(row["two_stage_called"])] += 1
    assert counts.tolist() == block["confusion_matrix"]["counts"]
    assert len({r["two_stage_called"] for r in rows}) >= 2
    assert block["accuracy"] == pytest.approx(np.trace(counts) / 16)
    assert f"accuracy {block['accuracy']:.4f}" in printed and "then virus at" in printed
    assert f"balanced accuracy {block['balanced_accuracy']:.4f} (" in printed, "with its CI, or saying it has none"
    assert f"macro AUC {block['macro_auc']:.4f} (" in printed, "as the report and metrics.json give it"
    for name in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1"):  # no bare figure reads as certain
        line = next(line for line in printed.splitlines() if line.strip().startswith(f"{name}:"))
        assert "(95% CI " in line or "(no 95% CI)" in line, line

    html = (out / "report.html").read_text()
    assert "Two stages: Confusion matrix" in html and block["decision"] in html
    assert (out / "two_stage_confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    # methods.md names the second stage, at its own threshold, and gives the route's accuracy with its interval
    text = (out / METHODS).read_text()
    second_card = load_card(second)
    assert f"go to a second stage: {second_card.model_id}, for the etiology task" in text
    assert f"calls virus at its own threshold {second_card.threshold:.4f} (" in text
    said = f"accuracy {with_ci(block['accuracy'], block['ci']['accuracy'])}; balanced accuracy"
    assert said in text.split("### Two stages as three classes")[1]

    with pytest.raises(ValueError, match="follows"):  # the stages the wrong way round
        evaluate(second, tiny_dataset, "test", etiology=first)


def test_a_second_stage_of_ones_own_is_in_predictions_csv_under_predicts_name_for_it(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predictions.csv named any second stage's probability etiology_probability, a site's typical-vs-atypical
    stage's P(atypical) too, where predict's results name it from the stage's task: one name in both files."""
    from pneumoscan.data import tasks
    from pneumoscan.inference.predict import predict_paths
    from tests.test_predict import make_bundle

    monkeypatch.setattr(tasks, "_TASKS", tasks._TASKS.copy())
    tasks.register_task("typicality", classes=("typical", "atypical"), positive="atypical",
                        follows={"pneumonia": "PNEUMONIA"})(
        lambda record: None if record.label != "PNEUMONIA" else int(record.subtype == "virus"))
    second = make_bundle(tmp_path / "typicality", "typicality", ("typical", "atypical"), "atypical")
    out = tmp_path / "eval"
    evaluate(tiny_bundle, tiny_dataset, "test", out, etiology=second)
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0])[-7:] == ["typicality_probability_atypical", "two_stage_called", "typicality_in_scope",
                                  "typicality_warnings", "in_scope", "warnings", "split"]
    assert not any(column.startswith("etiology") for column in rows[0])
    film = rows[0]["path"]
    [predicted] = predict_paths(tiny_bundle, [film], etiology=second)
    assert "typicality_probability_atypical" in predicted  # predict's column for the same stage
    assert {r["two_stage_called"] for r in rows} <= {"NORMAL", "typical", "atypical"}
    assert all(0 <= float(r["typicality_probability_atypical"]) <= 1 for r in rows)


def test_a_second_stage_that_reads_the_first_stages_negative_call_is_refused(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """predict hands a second stage the films its task follows the first stage's call for, a NORMAL call too; the
    two-stage figures compose the classes from a first stage that hands over its positive call, and scored such a
    pair on the films called PNEUMONIA, which predict never shows it. Refused, with what to do."""
    from pneumoscan.data import tasks
    from tests.test_predict import make_bundle

    monkeypatch.setattr(tasks, "_TASKS", tasks._TASKS.copy())
    tasks.register_task("variant", classes=("usual", "unusual"), positive="unusual",
                        follows={"pneumonia": "NORMAL"})(lambda record: int(record.label == "NORMAL"))
    second = make_bundle(tmp_path / "variant", "variant", ("usual", "unusual"), "unusual")
    with pytest.raises(ValueError, match=r"reads the films .* calls NORMAL, its negative call: .*evaluate each bundle "
                                         "on its own"):
        evaluate(tiny_bundle, tiny_dataset, "test", tmp_path / "eval", etiology=second)
    assert not (tmp_path / "eval").exists()


def test_two_stages_name_their_classes_as_the_task_of_the_same_classes_does() -> None:
    """The pneumonia task's NORMAL then etiology's bacteria and virus are the multiclass task's normal, bacteria and
    virus: its spelling, or a two-stage evaluation's 3 x 3 matrix and calls read NORMAL beside a multiclass
    evaluation's normal. A second stage whose classes no task has keeps the stages' names."""
    from pneumoscan.data.tasks import Task
    from pneumoscan.evaluation.evaluate import two_stage_names

    pneumonia, etiology = get_task("pneumonia"), get_task("etiology")
    assert two_stage_names(pneumonia, etiology) == get_task("multiclass").classes == ("normal", "bacteria", "virus")
    viral = Task("viral", ("other", "viral"), "viral", lambda r: None, {"pneumonia": "PNEUMONIA"})
    assert two_stage_names(pneumonia, viral) == ("NORMAL", "other", "viral")


def test_only_the_films_the_etiology_stage_validated_on_are_said_to_have_chosen_its_threshold(
    tiny_etiology_bundle: Path
) -> None:
    """An etiology run's split.csv lists the normal films too, but its temperature and threshold were chosen on its
    validation pneumonia films alone: the warning counts those, not every validation film given."""
    from pneumoscan.evaluation.held_out import HeldOutPolicy, check_held_out

    validation = [r for r in discover(tiny_etiology_bundle.parent / "split.csv").records if r.split == "val"]
    chose = [r for r in validation if r.label == "PNEUMONIA"]
    assert 0 < len(chose) < len(validation)  # normal validation films too, which chose nothing
    found = check_held_out([tiny_etiology_bundle], validation, "evaluate",
                           policy=HeldOutPolicy(validation_warning=True))
    assert found.films == [r.path for r in chose]  # the films the flow of methods.md counts, not the normal ones
    assert [c for c in found.caveats if "validation films" in c] == [
        f"{len(chose)} film(s) given to evaluate are {tiny_etiology_bundle}'s validation films, on which its own "
        "temperature and threshold were chosen: the figures on them are optimistic"]


def test_two_stages_need_films_that_name_bacteria_or_virus(tiny_bundle: Path, tiny_etiology_bundle: Path,
                                                           tiny_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "films"
    shutil.copytree(tiny_dataset / "test", data)
    untyped = next((data / "PNEUMONIA").glob("*_virus_*.jpeg"))
    untyped.rename(untyped.with_name(untyped.name.replace("_virus_", "_")))
    assert evaluate(tiny_bundle, data)["n"] == 16  # fine for the first stage alone
    with pytest.raises(ValueError, match=r"no etiology class \(bacteria or virus\) is named for 1 pneumonia film of "):
        evaluate(tiny_bundle, data, etiology=tiny_etiology_bundle)


def test_two_stages_on_films_without_a_viral_one_say_what_they_cannot_measure(
    tiny_bundle: Path, tiny_etiology_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
    """As the official val split (8 normal, 8 bacterial films): the virus row is empty, so its sensitivity and
    the balanced accuracy are undefined and printed as n/a, not as a number."""
    from pneumoscan.cli import main

    data = tmp_path / "films"
    for path in (tiny_dataset / "test").rglob("*.jpeg"):
        if "virus" not in path.name:
            (data / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, data / path.parent.name / path.name)
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_bundle), str(data), "--etiology", str(tiny_etiology_bundle),
                 "--out", str(out)]) == 0
    block = json.loads((out / "metrics.json").read_text())["two_stage"]
    assert block["n"] == 12 and block["per_class"]["virus"]["support"] == 0
    assert block["balanced_accuracy"] is None and "balanced accuracy n/a" in capsys.readouterr().out


def test_two_stage_decision_thresholds_each_stage_at_or_above() -> None:
    from pneumoscan.evaluation.evaluate import two_stage_decision

    first = np.array([0.1, 0.5, 0.5, 0.9, 0.9])
    second = np.array([0.9, 0.3, 0.4, 0.39, 0.8])
    probs, called = two_stage_decision(first, np.stack([1 - second, second], axis=1), 0.5, 0.4, get_task("etiology"))
    assert called.tolist() == [0, 2, 2, 1, 2][:1] + [1, 2, 1, 2]
    assert np.allclose(probs.sum(axis=1), 1.0) and np.allclose(probs[:, 2], first * second)


def test_a_second_stage_of_three_classes_is_scored_as_one_decision_among_four(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin second stage of three classes (bacteria, virus, fungus) failed deep in the metrics ("probs must be
    (N, 4) ... got (16, 3)"): the route was composed as three classes whatever the second stage's. It is scored as
    NORMAL and its three classes, each film called as predict calls it: below the second stage's threshold on
    1 - P(bacteria) bacteria (predict's label), else the more probable of virus and fungus; its class probabilities
    are in predictions.csv under predict's names, so the calls can be recomputed from the file."""
    from pneumoscan.data import tasks
    from tests.test_predict import make_bundle

    monkeypatch.setattr(tasks, "_TASKS", tasks._TASKS.copy())
    tasks.register_task("kinds", classes=("bacteria", "virus", "fungus"), positive="nonbacterial",
                        follows={"pneumonia": "PNEUMONIA"})(
        lambda r: {"bacteria": 0, "virus": 1, "fungus": 2}.get(r.subtype) if r.label == "PNEUMONIA" else None)
    second = make_bundle(tmp_path / "kinds", "kinds", ("bacteria", "virus", "fungus"), "nonbacterial")
    predictor = Predictor(second)  # its threshold at the median score, so that it makes both calls
    _, images, _, _ = labelled_records(tiny_dataset, "test", get_task("pneumonia"), predictor.card.spec)
    threshold = float(np.median(predictor.positive_probability(predictor.probabilities(images))))
    save_card(second, at_threshold(load_card(second), threshold=threshold))
    out = tmp_path / "eval"
    metrics = evaluate(tiny_bundle, tiny_dataset, "test", out, etiology=second)
    block = metrics["two_stage"]
    names = ["NORMAL", "bacteria", "virus", "fungus"]
    assert block["class_names"] == names and "(the most probable of virus, fungus)" in block["decision"]
    rows = read_csv(out / "predictions.csv")
    columns = ["kinds_probability_bacteria", "kinds_probability_virus", "kinds_probability_fungus"]
    assert list(rows[0])[8:13] == ["kinds_probability_nonbacterial", *columns, "two_stage_called"]
    predicted = {str(r["path"]): r for r in predict_paths(tiny_bundle, [r["path"] for r in rows], etiology=second)}
    counts = np.zeros((4, 4), int)
    for row in rows:
        q = [float(row[c]) for c in columns]
        if float(row["probability"]) < metrics["threshold"]:
            expected = "NORMAL"
        else:
            expected = "bacteria" if float(row["kinds_probability_nonbacterial"]) < threshold else names[2 + int(
                np.argmax(q[1:]))]
            # predict's reading of the same film: its label and its class probabilities under the same names
            reading = predicted[row["path"]]
            assert reading["kinds_label"] == ("bacteria" if expected == "bacteria" else "nonbacterial")
            assert [reading[c] for c in columns] == pytest.approx(q, abs=1e-5)
        assert row["two_stage_called"] == expected, row
        counts[names.index("NORMAL" if row["label"] == "NORMAL" else row["subtype"]), names.index(expected)] += 1
    assert counts.tolist() == block["confusion_matrix"]["counts"]
    assert {r["two_stage_called"] for r in rows} >= {"bacteria"} and len({r["two_stage_called"] for r in rows}) >= 3


def test_a_second_stage_checks_the_content_of_the_films_by_its_own_training_films(
    tiny_bundle: Path, tiny_etiology_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Only the first stage's content check ran: a second stage whose training films a film does not look like read
    it without a word. Each film is checked against the second stage's training films too (here the tiny films and
    their mirror images), an inverted film is flagged in its row (etiology_in_scope false, its reasons in
    etiology_warnings), in metrics.json's two_stage block and in the report's count."""
    from pneumoscan.data.scope import UNLIKE_LAYOUT, in_scope

    second = shutil.copytree(tiny_etiology_bundle, tmp_path / "second")
    with_appearance_of(second, tiny_dataset)
    data = shutil.copytree(tiny_dataset / "test", tmp_path / "films")
    source = sorted((data / "PNEUMONIA").glob("*virus*"))[0]
    inverted = data / "PNEUMONIA" / "person999_virus_999.jpeg"
    Image.fromarray(255 - np.asarray(Image.open(source).convert("L"))).save(inverted, quality=95)
    out = tmp_path / "eval"
    metrics = evaluate(tiny_bundle, data, out_dir=out, etiology=second)
    rows = {Path(row["path"]).name: row for row in read_csv(out / "predictions.csv")}
    flagged = rows.pop(inverted.name)
    assert flagged["etiology_in_scope"] == "False" and UNLIKE_LAYOUT.wrote(flagged["etiology_warnings"].split("; ")[0])
    assert "image content" not in flagged["warnings"].replace(UNCHECKED, "")  # the first stage records no appearance
    assert {entry["path"] for entry in metrics["two_stage"]["out_of_scope"]} == {str(inverted)}
    assert all(row["etiology_warnings"] == "" for row in rows.values())  # the films it was fitted on pass
    for row in read_csv(out / "predictions.csv"):  # the second stage's reading applies no more than the first's
        warnings = [w for w in (row["warnings"], row["etiology_warnings"]) if w]
        assert row["etiology_in_scope"] == str(in_scope("; ".join(warnings).split("; ")))
    assert "outside the second stage&#x27;s scope</th><td>1<" in (out / "report.html").read_text()


def test_results_are_valid_utf8_whatever_the_names_bytes(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """predictions.csv and report.html are results files: a name that is not UTF-8 is written \\xNN (docs/limits.md)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    first = sorted((data / "test" / "NORMAL").iterdir())[0]
    os.rename(first, os.path.join(os.fsencode(first.parent), b"caf\xe9-" + os.fsencode(first.name)))
    out = tmp_path / "eval"
    evaluate(tiny_bundle, data, "test", out)
    rows = (out / "predictions.csv").read_bytes().decode("utf-8").splitlines()
    assert len(rows) == 17 and any(f"caf\\xe9-{first.name}" in row for row in rows)
    (out / "report.html").read_bytes().decode("utf-8")


def test_the_threshold_table_gives_thresholds_that_call_alike_one_row() -> None:
    """The bundle's threshold, chosen on torch scores, and the same rule's on ONNX scores differ in late digits: two
    rows that read alike. Merged only while no film scores between them."""
    y = np.array([0, 1] * 10)
    scores = np.linspace(0.05, 0.95, y.size)
    rows = threshold_table(y, scores, 0.5 + 2e-6)  # beside the fixed 0.5 (a real bundle's were 1.5e-6 apart)
    assert [r["rule"] for r in rows if abs(r["threshold"] - 0.5) < 5e-5] == ["bundle threshold, fixed"]
    rows = threshold_table(np.append(y, 1), np.append(scores, 0.5 + 1e-6), 0.5 + 2e-6)  # a film between them
    assert [r["rule"] for r in rows if abs(r["threshold"] - 0.5) < 5e-5] == ["fixed", "bundle threshold"]


def test_evaluate_says_how_many_films_without_a_patient_id_its_patients_count(
        tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A film with no patient id is a patient of its own; two films of one id (or copies of one picture) make the
    intervals count patients, and then nothing said that the others' patients were unknown ("16 films of 15
    patients", intervals as narrow as by film). The screen and the report say how many films carry no id."""
    films = sorted((r for r in discover(tiny_dataset).records if r.split == "test"), key=lambda r: r.path)
    folder = tmp_path / "site"
    folder.mkdir()
    rows = []
    for i, record in enumerate(films):
        copy = folder / f"scan{i}.jpeg"  # a name no layout reads a patient from
        shutil.copy(record.path, copy)
        rows.append(f"{copy},{record.label},{'p0' if i < 2 else ''}\n")
    manifest = tmp_path / "site.csv"
    manifest.write_text("path,label,patient\n" + "".join(rows))
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(tiny_bundle), str(manifest), "--out", str(out)]) == 0
    said = "14 of the 16 films carry no patient id"
    assert said in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["ci_unit"], metrics["patients"]["all"], metrics["films_without_patient_id"]) == ("patient", 15, 14)
    assert said in (out / "report.html").read_text()


def test_evaluate_says_on_screen_when_its_intervals_count_films(tiny_bundle: Path, tiny_dataset: Path,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Films with no shared patient id get intervals by film, which films of one patient would make too narrow: the
    report said so, the screen a reader may look at alone did not. The threshold table on the screen has a column
    "npv" and rows of the rule "fixed", which a clinical reader of the terminal was told the meaning of nowhere: a
    legend beneath it says both, in the words of docs/evaluation.md.

    Films paired into patients: the screen, the report's n and the card's evaluation row give the films with their
    patients, each table says its intervals count patients, and NPV stands beside precision. (One evaluation, added
    to a copy's card, proves the screen, the report and the card.)"""
    said = FILM_UNIT_CAVEAT  # as the report and the model card say it
    assert cli.main(["evaluate", str(tiny_bundle), str(tiny_dataset), "--split", "test", "--out",
                     str(tmp_path / "films")]) == 0
    first = capsys.readouterr().out
    assert said in first
    table = json.loads((tmp_path / "films" / "metrics.json").read_text())["threshold_table"]
    lines = first.splitlines()
    head = lines.index(next(line for line in lines if line.split() == ["threshold", "sensitivity", "specificity",
                                                                        "precision", "npv", "rule"]))
    assert "fixed" in {row["rule"] for row in table}
    legend = " ".join(itertools.takewhile(bool, lines[head + 1 + len(table):]))  # up to the next block's blank line
    assert legend.startswith("npv: negative predictive value, the share of the films called negative that are ")
    assert "fixed, a round threshold listed for comparison, chosen on no films" in legend
    docs = " ".join((Path(__file__).parents[1] / "docs" / "evaluation.md").read_text().replace("\n> ", " ").split())
    assert legend in docs, "docs/evaluation.md gives the legend in other words"
    manifest = tmp_path / "paired.csv"
    records = [r for r in discover(tiny_dataset).records if r.split == "test"]
    manifest.write_text("path,label,patient\n" + "".join(f"{r.path},{r.label},p{i // 2}\n"
                                                          for i, r in enumerate(sorted(records, key=lambda r: r.path))))
    bundle, out = shutil.copytree(tiny_bundle, tmp_path / "bundle"), tmp_path / "patients"
    assert cli.main(["evaluate", str(bundle), str(manifest), "--out", str(out), "--add-to-card", "--data-name",
                     "paired"]) == 0
    screen = capsys.readouterr().out
    assert said not in screen
    # the screen names the patients beside the films, the NPV beside precision, and the prevalence both depend on
    assert "n = 16 films of 8 patients (8 PNEUMONIA films of 4 patients, 8 NORMAL of 4)   prevalence 0.500" in screen
    assert "         npv: " in screen
    # the report and the card
    assert json.loads((out / "metrics.json").read_text())["patients"] == {"positive": 4, "negative": 4, "all": 8}
    page = (out / "report.html").read_text()
    assert "n = 16 films of 8 patients (8 PNEUMONIA films of 4 patients, 8 NORMAL of 4)." in page
    assert ("<caption>Summary. 95% CIs count patients, not films, since one patient's films are scored alike."
            "</caption>") in page
    assert "<th>Negative predictive value (NPV) †</th>" in page
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "| paired | 16 films of 8 patients (8 PNEUMONIA films of 4 patients, 8 NORMAL of 4) | patients |" in card


def test_evaluate_etiology_says_on_screen_the_films_and_patients_of_its_three_classes(
    tiny_bundle: Path, tiny_etiology_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The two stages' line (`3 classes, ...`) gave neither its films nor the patients its intervals count, where the
    first stage's line gives both: it ends with them, class by class. --prevalence recomputes the first stage's
    binary figures, not the two stages' three-class ones."""
    records = sorted(discover(tiny_dataset).split("test"), key=lambda r: r.path)  # 8 NORMAL films, then 8 PNEUMONIA
    manifest = tmp_path / "paired.csv"
    manifest.write_text("path,label,subtype,patient\n"
                        + "".join(f"{r.path},{r.label},{r.subtype},p{i // 2}\n" for i, r in enumerate(records)))
    assert cli.main(["evaluate", str(tiny_bundle), str(manifest), "--etiology", str(tiny_etiology_bundle),
                     "--out", str(tmp_path / "eval"), "--prevalence", "0.1"]) == 0
    screen = capsys.readouterr().out
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert m["at_prevalence"]["sensitivity"] == m["sensitivity"] and "at_prevalence" not in m["two_stage"]
    assert "   at prevalence 10.0% (if sensitivity and specificity carry over): precision " in screen
    line = next(line for line in screen.splitlines() if line.startswith("3 classes, "))
    # each patient of the pneumonia films has one bacterial and one viral film
    assert line.endswith("; n = 16 films of 8 patients (8 normal films of 4 patients, 4 bacteria of 4, 4 virus of 4)")


def test_pneumonia_films_of_no_type_leaving_only_normal_films_are_refused(typed_dataset: Path, tmp_path: Path) -> None:
    """A site's films in NORMAL/ and PNEUMONIA/ whose names say no type, given to a three-class bundle: every
    pneumonia film was left out with a warning, and evaluate printed figures of the normal films alone, a three-class
    accuracy of 1.0000 (95% CI 0.88-1.00) among them, exit 0."""
    films = shutil.copytree(typed_dataset / "test", tmp_path / "site")
    for path in sorted((films / "PNEUMONIA").glob("*.jpeg")):
        path.rename(path.with_name(path.name.replace("_bacteria_", "_").replace("_virus_", "_")))
    spec = PreprocessSpec(32)
    with pytest.raises(ValueError) as refused:
        labelled_records(films, None, get_task("multiclass"), spec)
    assert str(refused.value) == (
        f"the 8 PNEUMONIA film(s) of {films} say neither bacteria nor virus (in their names or a manifest's subtype "
        "column), which the multiclass task needs, so it would leave every one out and its figures would be of the 8 "
        "NORMAL film(s) alone: give each its type (a manifest's subtype column, bacteria or virus), or measure a "
        "pneumonia bundle on them")
    with pytest.raises(ValueError, match=r"^the 8 PNEUMONIA film\(s\) of .* which the etiology task needs, so it "
                                         r"would leave every one out: give each its type"):
        labelled_records(films, None, get_task("etiology"), spec)
    next(iter(sorted((films / "PNEUMONIA").glob("*.jpeg")))).rename(films / "PNEUMONIA" / "person1_virus_1.jpeg")
    records = labelled_records(films, None, get_task("multiclass"), spec)[0]  # one typed film: warned, not refused
    assert len(records) == 9


def test_evaluate_writes_the_decision_curve_beside_the_calibration_plot(tiny_evaluation: Path) -> None:
    """decision_curve.csv gives the net benefit at 0.01 to 0.99 that predictions.csv's probabilities and labels give
    (TP/n - FP/n * pt / (1 - pt)), against treat all and treat none; metrics.json gives it at the bundle's threshold;
    the report shows the curve after the reliability diagram (the same picture as decision_curve.png) and says that
    net benefit holds at this set's prevalence."""
    out = tiny_evaluation
    m = json.loads((out / "metrics.json").read_text())
    films = read_csv(out / "predictions.csv")
    y = np.array([row["label"] == "PNEUMONIA" for row in films])
    p = np.array([float(row["probability"]) for row in films])

    def expected(pt: float) -> tuple[float, float]:
        called, n = p >= pt, len(films)
        return ((called & y).sum() / n - (called & ~y).sum() / n * pt / (1 - pt),
                y.mean() - (1 - y.mean()) * pt / (1 - pt))

    rows = read_csv(out / "decision_curve.csv")
    assert [float(r["threshold"]) for r in rows] == pytest.approx(np.arange(1, 100) / 100)
    for row in rows:
        pt = float(row["threshold"])
        assert (float(row["net_benefit"]), float(row["treat_all"])) == pytest.approx(expected(pt), abs=1e-9), pt
        assert float(row["treat_none"]) == 0.0
    at = m["net_benefit"]
    assert at["threshold"] == m["threshold"]
    assert (at["net_benefit"], at["treat_all"]) == pytest.approx(expected(m["threshold"]), abs=1e-9)

    html = (out / "report.html").read_text()
    png = (out / "decision_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    at_reliability = html.index(base64.b64encode((out / "reliability.png").read_bytes()).decode())
    assert html.index(base64.b64encode(png).decode()) > at_reliability
    # its text alternative, the net benefit with its interval
    assert (f"net benefit {at['net_benefit']:.3f} (95% CI {at['ci'][0]:.3f} to {at['ci'][1]:.3f}), treat all "
            f"{at['treat_all']:.3f}") in html
    assert f"Net benefit holds at this set&#x27;s prevalence of {100 * m['prevalence']:.1f}%" in html
    assert "The band is the model&#x27;s net benefit&#x27;s 95% CI at each pt" in html
    # the band spans each threshold probability's interval, and leaves out a point that has none
    curve = m["decision_curve"]
    curve["net_benefit_low"][5] = curve["net_benefit_high"][5] = None
    figure = _decision_figure(curve, m["prevalence"], at)
    band, = [c for c in figure.axes[0].collections if c.get_label() == "model, 95% CI"]
    drawn = np.concatenate([path.vertices for path in band.get_paths()])
    inside = [i for i, v in enumerate(curve["net_benefit_low"]) if v is not None]
    assert not np.isclose(drawn[:, 0], curve["threshold"][5]).any()
    assert drawn[:, 1].min() == pytest.approx(min(curve["net_benefit_low"][i] for i in inside))
    assert drawn[:, 1].max() == pytest.approx(max(curve["net_benefit_high"][i] for i in inside))


def test_evaluate_gives_the_figures_at_a_clinics_prevalence_and_records_them_in_the_card(
        tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """evaluate --prevalence 0.1 0.3: metrics.json's at_prevalence gives precision, NPV, accuracy and net benefit at
    the threshold that Bayes gives at each from predictions.csv's sensitivity and specificity, each interval holding
    its figure; decision_curve.csv gives each row's net benefit and treat all at each; the report shows them beside
    the set's own, saying what they assume; methods.md's results and the screen give them; --add-to-card records
    PPV, NPV and accuracy at each in bundle.json and MODEL_CARD.md, which load again."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(bundle), str(tiny_dataset), "--split", "test", "--out", str(out),
                     "--prevalence", "0.1", "0.3", "--add-to-card", "--data-name", "clinic"]) == 0
    screen = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    films = read_csv(out / "predictions.csv")
    y = np.array([row["label"] == "PNEUMONIA" for row in films])
    called = np.array([row["called"] == "PNEUMONIA" for row in films])
    se, sp = (called & y).sum() / y.sum(), (~called & ~y).sum() / (~y).sum()
    odds = m["threshold"] / (1 - m["threshold"])
    block = m["at_prevalence"]
    assert (block["sensitivity"], block["specificity"]) == pytest.approx((se, sp))
    assert [b["prevalence"] for b in block["figures"]] == [0.1, 0.3]
    for b in block["figures"]:
        prev = b["prevalence"]
        expected = {"precision": se * prev / (se * prev + (1 - sp) * (1 - prev)),
                    "npv": sp * (1 - prev) / (sp * (1 - prev) + (1 - se) * prev),
                    "accuracy": se * prev + sp * (1 - prev),
                    "net_benefit": se * prev - (1 - sp) * (1 - prev) * odds}
        for key, value in expected.items():
            assert b[key] == pytest.approx(value), (prev, key)
            assert b["ci"][key][0] <= b[key] <= b["ci"][key][1], (prev, key)
        assert f"at prevalence {100 * prev:.1f}% (if sensitivity and specificity carry over): precision " in screen
    rows = read_csv(out / "decision_curve.csv")
    for row in rows:
        pt, rse, rsp = (float(row[k]) for k in ("threshold", "sensitivity", "specificity"))
        assert float(row["net_benefit_at_0.1"]) == pytest.approx(rse * 0.1 - (1 - rsp) * 0.9 * pt / (1 - pt))
        assert float(row["treat_all_at_0.3"]) == pytest.approx(0.3 - 0.7 * pt / (1 - pt))

    html = (out / "report.html").read_text()
    assert "<h2>At a clinic's prevalence of PNEUMONIA</h2>" in html
    assert "<tr><th>10.0%</th>" in html and "<tr><th>30.0%</th>" in html
    assert "The next table gives them at the prevalences asked for." in html
    assert "carry over to the clinic&#x27;s films" in html and "spectrum effects" in html
    methods = (out / METHODS).read_text()
    assert "Recomputed at a clinic's prevalence: at 10.0%, precision (PPV) " in methods
    assert "spectrum effects" in methods

    record = load_card(bundle).external_evaluations[-1]
    assert [r["prevalence"] for r in record["at_prevalence"]] == [0.1, 0.3]
    first = block["figures"][0]
    assert record["at_prevalence"][0]["metrics"]["precision"] == {"value": first["precision"],
                                                                    "ci": first["ci"]["precision"]}
    card = (bundle / "MODEL_CARD.md").read_text()
    assert (f"At a clinic's prevalence (`evaluate --prevalence`), with 95% CIs: {record['date']}, on clinic: at "
            f"10.0%, PPV {with_ci(first['precision'], first['ci']['precision'])}, ") in card
    assert "spectrum effects" in card


def test_a_prevalence_outside_0_to_1_or_on_films_of_one_class_is_refused(tiny_bundle: Path, tiny_dataset: Path,
                                                                         tmp_path: Path, capsys) -> None:
    """--prevalence 10 (a percentage) or 0 is refused before a film is read (DATA need not even exist), and no
    folder written; on films of one class, which give no specificity (or sensitivity), refused naming both."""
    out = tmp_path / "eval"
    for wrong in ("10", "0"):
        assert cli.main(["evaluate", str(tiny_bundle), str(tmp_path / "no such films"), "--out", str(out),
                         "--prevalence", "0.1", wrong]) == 2
        assert "a prevalence lies strictly between 0 and 1" in capsys.readouterr().err and not out.exists()
    normal = tmp_path / "normal"
    shutil.copytree(tiny_dataset / "test" / "NORMAL", normal / "NORMAL")
    assert cli.main(["evaluate", str(tiny_bundle), str(normal), "--out", str(out), "--prevalence", "0.1"]) == 2
    assert ("prevalence (--prevalence) recomputes figures from sensitivity and specificity, which need films of both "
            "classes (NORMAL and PNEUMONIA)") in capsys.readouterr().err


def test_an_evaluation_failing_part_way_leaves_no_earlier_report_beside_its_own_files(
        tiny_bundle: Path, tiny_dataset: Path, tiny_evaluation: Path, tmp_path: Path) -> None:
    """evaluate --out into a folder holding an earlier evaluation, failing part-way (here a folder where roc.png
    goes; a full disk or a kill alike) left the earlier report.html, methods.md and figures beside its own new
    metrics.json and predictions.csv: one folder of two evaluations, the report another's. The earlier outputs are
    removed before any is written: what is left is this run's files alone."""
    out = shutil.copytree(tiny_evaluation, tmp_path / "eval")
    (out / "roc.png").unlink()
    (out / "roc.png").mkdir()
    with pytest.raises(IsADirectoryError):
        evaluate(tiny_bundle, tiny_dataset, "test", out)
    assert sorted(p.name for p in out.iterdir()) == ["decision_curve.csv", "metrics.json", "predictions.csv", "roc.png",
                                                     "sensitivity_table.csv"]
    m = json.loads((out / "metrics.json").read_text())  # this run's: written with the predictions.csv beside it
    assert m["predictions_checksum"] == bytes_sha256((out / "predictions.csv").read_bytes())

