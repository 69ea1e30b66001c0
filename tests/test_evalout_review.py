"""A review of what `evaluate`, `compare` and `threshold` write and say: every figure recomputed from
predictions.csv by scikit-learn, file names that would break a CSV or a page, the test split kept from choosing a
threshold however it is given, and each figure's run named by its own bundle."""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, roc_auc_score

from pneumoscan import cli
from pneumoscan.core.metrics import evaluate_binary, evaluate_multiclass, format_figure
from pneumoscan.data.layouts import discover, write_manifest
from pneumoscan.evaluation.compare import compare_runs, comparison_figure
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.evaluation.held_out import film_splits, refuse_test_films
from pneumoscan.evaluation.report import write_report
from tests.builders import evaluation_of

# names a film may have on disk that a CSV, a spreadsheet or an HTML page could misread
AWKWARD_NAMES = ("a,b.jpeg", 'q"uote.jpeg', "new\nline.jpeg", '=HYPERLINK("http://x").jpeg', "+1.jpeg", "-2.jpeg",
                 "@SUM(A1).jpeg", "<script>alert(1)</script>.jpeg", "&amp;<img src=x onerror=alert(2)>.jpeg")


def test_every_figure_agrees_with_predictions_csv_recomputed_by_scikit_learn(tiny_bundle: Path, tiny_dataset: Path,
                                                                             tmp_path: Path) -> None:
    """The test films under awkward names, listed with patient ids a spreadsheet would run: predictions.csv reads
    back one row per film with its name as on disk and each id as text (a leading apostrophe), and metrics.json's
    figures are scikit-learn's on the file's columns; the report shows every name as text, never as markup."""
    data = tmp_path / "site"
    films = []
    for i, record in enumerate(sorted(discover(tiny_dataset).split("test"), key=lambda r: r.path)):
        name = AWKWARD_NAMES[i % len(AWKWARD_NAMES)].replace(".jpeg", f"{i}.jpeg")
        target = data / record.label / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(record.path, target)
        films.append(dataclasses.replace(record, path=str(target), patient=f"{'=+-@'[i // 2 % 4]}p{i // 2}", split=""))
    write_manifest(films, tmp_path / "site.csv")
    out = tmp_path / "eval"
    metrics = evaluate(tiny_bundle, tmp_path / "site.csv", out_dir=out, data_name="<script>site</script> & co")

    with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == sorted(r.path for r in films)  # absolute: no formula, kept as is
    assert sorted(r["patient"] for r in rows) == sorted("'" + r.patient for r in films)
    assert metrics["ci_unit"] == "patient"
    y = np.array([r["label"] == "PNEUMONIA" for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    called = p >= metrics["threshold"]
    assert [r["called"] == "PNEUMONIA" for r in rows] == called.tolist()
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, p))  # the CSV holds the scores the figures are of
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert metrics["confusion_matrix"]["counts"] == confusion_matrix(y, called).tolist()  # rows true, columns called
    assert metrics["f1"] == pytest.approx(f1_score(y, called))
    assert metrics["sensitivity"] == called[y].mean() and metrics["specificity"] == (~called[~y]).mean()
    assert json.loads((out / "metrics.json").read_text())["confusion_matrix"] == metrics["confusion_matrix"]

    page = (out / "report.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page and "&lt;script&gt;site&lt;/script&gt; &amp; co" in page
    captions = re.findall(r"<figcaption>([^<]*P = [0-9.]+)</figcaption>", page)
    for caption in captions:  # the gallery's films, each named as on disk
        assert html.unescape(caption).split("  P = ")[0] in {Path(r.path).name for r in films}


def test_threshold_refuses_the_test_split_folder_given_itself(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """`threshold BUNDLE DATA/test` read the Kaggle layout's test folder as films of no split and chose a threshold
    on the official test split ("Youden's J on test"); so did a link to it under another name."""
    link = tmp_path / "site-b"
    link.symlink_to(tiny_dataset / "test", target_is_directory=True)
    for data in (tiny_dataset / "test", link):
        out = tmp_path / "new"
        assert cli.main(["-q", "threshold", str(tiny_bundle), str(data), "--youden", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "the test split measures a bundle and never chooses its threshold" in err and not out.exists()


def test_an_evaluations_predictions_csv_chooses_a_threshold_only_of_validation_films(
        tiny_bundle: Path, tiny_evaluation: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`threshold BUNDLE EVAL/predictions.csv`, EVAL an evaluation of the test split, read the file as a manifest of
    no split and chose the threshold on the test films; ensemble --data shares the check. One that does not
    say is refused as one that may be; an evaluation of the run's validation split still chooses one."""
    out = tmp_path / "new"
    scores = tiny_evaluation / "predictions.csv"
    assert cli.main(["-q", "threshold", str(tiny_bundle), str(scores), "--youden", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{scores}: {tiny_evaluation / 'metrics.json'} says an evaluation of test films" in err
    assert "choose it on validation films" in err and not out.exists()
    with pytest.raises(ValueError, match="never chooses its temperature and thresholds"):
        refuse_test_films(discover(scores).records, scores, "temperature and thresholds")
    old = tmp_path / "old"  # an evaluation that does not say: refused as one that may be of test films
    old.mkdir()
    shutil.copy(scores, old / "predictions.csv")
    metrics = json.loads((tiny_evaluation / "metrics.json").read_text())
    (old / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "test_split"}))
    with pytest.raises(ValueError, match="does not record whether they are test films"):
        refuse_test_films(discover(old / "predictions.csv").records, old / "predictions.csv", "threshold")
    # an older pneumoscan's evaluation (0.1.0, 0.2.0) recorded no checksum either: refused the same way
    (old / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items()
                                                  if k not in ("test_split", "predictions_checksum")}))
    with pytest.raises(ValueError, match="does not record whether they are test films"):
        refuse_test_films(discover(old / "predictions.csv").records, old / "predictions.csv", "threshold")
    val = tmp_path / "eval-val"
    evaluate(tiny_bundle, tiny_bundle.parent / "split.csv", "val", val)
    assert cli.main(["-q", "threshold", str(tiny_bundle), str(val / "predictions.csv"), "--youden", "--out",
                     str(out)]) == 0
    assert json.loads((val / "metrics.json").read_text())["test_split"] is False
    # copied alone, its rows still name their split, which is no test split: accepted as beside its metrics.json
    alone = tmp_path / "copied" / "predictions.csv"
    alone.parent.mkdir()
    shutil.copy(val / "predictions.csv", alone)
    records = discover(alone).records
    assert {r.split for r in records} == {"val"}
    refuse_test_films(records, alone, "threshold")


def test_a_test_evaluations_predictions_csv_is_refused_by_threshold_away_from_its_metrics_json(
        tiny_bundle: Path, tiny_evaluation: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """predictions.csv named no split, so only the metrics.json beside it kept its test films from choosing a
    threshold: copied alone into another folder, or cut down to some of its rows by a script of the user's, it was
    read as a manifest of no split. Each row names its film's split, and a manifest of test rows is test films."""
    scores = tiny_evaluation / "predictions.csv"
    with scores.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {row["split"] for row in rows} == {"test"}
    alone = tmp_path / "elsewhere" / "predictions.csv"
    alone.parent.mkdir()
    shutil.copy(scores, alone)
    out = tmp_path / "new"
    assert cli.main(["-q", "threshold", str(tiny_bundle), str(alone), "--youden", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{alone}: the test split measures a bundle and never chooses its threshold" in err and not out.exists()
    kept = tmp_path / "elsewhere" / "in_scope.csv"  # the rows a user's script keeps, its columns as they were
    with kept.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[::2])
    with pytest.raises(ValueError, match="never chooses its temperature and thresholds"):
        refuse_test_films(discover(kept).records, kept, "temperature and thresholds")


def test_an_evaluation_of_an_older_test_evaluations_predictions_csv_keeps_its_films_test_films(
        tiny_bundle: Path, tiny_evaluation: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An older pneumoscan's predictions.csv names no split: its metrics.json's test_split kept threshold from it, but
    `evaluate` of that file wrote a predictions.csv of an empty split on every row and test_split false, which
    threshold took. The films a metrics.json calls test, or does not say of, are test films in the new file too; the
    rows of a file that name their own split (an evaluation of val and test films together) keep it (its val rows
    had been written test)."""
    old = tmp_path / "old"
    old.mkdir()
    with (tiny_evaluation / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (old / "predictions.csv").open("w", newline="") as f:  # an older pneumoscan's file: no split column
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "split"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shutil.copy(tiny_evaluation / "metrics.json", old / "metrics.json")
    again = tmp_path / "again"
    assert cli.main(["-q", "evaluate", str(tiny_bundle), str(old / "predictions.csv"), "--out", str(again)]) == 0
    with (again / "predictions.csv").open(newline="") as f:
        assert {row["split"] for row in csv.DictReader(f)} == {"test"}
    assert json.loads((again / "metrics.json").read_text())["test_split"] is True
    out = tmp_path / "new"
    assert cli.main(["-q", "threshold", str(tiny_bundle), str(again / "predictions.csv"), "--youden", "--out",
                     str(out)]) == 2
    assert "never chooses its threshold" in capsys.readouterr().err and not out.exists()
    mixed = tmp_path / "mixed"  # an evaluation of val and test films at once: each row keeps its own split
    mixed.mkdir()
    with (mixed / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "split": "val" if i % 2 else "test"} for i, row in enumerate(rows))
    shutil.copy(tiny_evaluation / "metrics.json", mixed / "metrics.json")  # test_split true: some are test films
    records = discover(mixed / "predictions.csv").records
    splits = film_splits(records, mixed / "predictions.csv")
    assert splits == [r.split for r in records] and set(splits) == {"val", "test"}


def test_the_test_folder_is_test_films_for_every_choice_but_its_copies_are_not(tiny_dataset: Path,
                                                                               tmp_path: Path) -> None:
    """The check `ensemble --data` shares: a folder named test in any case is the test split; the same films
    copied into a folder of another name are a site's own (as a manifest listing them without a split is), and a
    dataset root named test is read by its split folders."""
    upper = tmp_path / "data" / "TEST"
    shutil.copytree(tiny_dataset / "test", upper)
    records = discover(upper).records
    assert {r.split for r in records} == {""} and set(film_splits(records, upper)) == {"test"}  # predictions.csv's
    with pytest.raises(ValueError, match="never chooses its temperature and thresholds; give films the bundle never"):
        refuse_test_films(records, upper, "temperature and thresholds")
    with pytest.raises(ValueError, match="never chooses"):
        refuse_test_films(records, f"{upper}{os.sep}", "threshold")
    own = tmp_path / "data" / "site-b"
    upper.rename(own)
    refuse_test_films(discover(own).records, own, "threshold")
    assert set(film_splits(discover(own).records, own)) == {""}
    root = tmp_path / "test"  # a dataset root that happens to be named test: its train split is no test film
    shutil.copytree(tiny_dataset, root)
    refuse_test_films(discover(root).split("train"), root, "threshold")
    with pytest.raises(ValueError, match="never chooses"):
        refuse_test_films(discover(root).records, root, "threshold")


def test_compare_states_the_training_minutes_of_the_run_whose_bundle_was_evaluated(
        tiny_bundle: Path, tiny_evaluation: Path, tmp_path: Path) -> None:
    """An evaluation of run A's bundle written into run B's folder (--out B/eval-a) was shown with B's training
    minutes beside A's model and figures."""
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_bundle.parent, run_a)
    shutil.copytree(tiny_bundle.parent, run_b)
    history = run_b / "history.csv"
    with history.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["minutes"] = "99.0"
    with history.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    evaluation_of(tiny_evaluation, run_a / "bundle", run_b / "eval-a")  # as evaluate of A's bundle writes it there
    with (run_a / "history.csv").open(newline="") as f:
        minutes_a = float(list(csv.DictReader(f))[-1]["minutes"])
    [summary] = compare_runs([run_b / "eval-a"])
    assert summary.minutes == pytest.approx(minutes_a) and minutes_a != 99.0


def test_the_report_says_which_figures_have_no_interval_and_how_the_calibration_error_is_binned(
        tmp_path: Path) -> None:
    """PR AUC, the calibration error and the macro F1 have no interval computed: the report showed them bare
    ("0.952") among figures each with its 95% CI, where its rule is that a figure without one says so.

    The expected calibration error depends on its bins (10 equal-width ones of the probability), which the
    report named nowhere, while the card says "(10 bins)"; and the three-class parts called theirs "top label"
    though two stages decide by their thresholds, not by the largest of the three probabilities. (One report, of a
    three-class block and a two-stage one, proves both.)"""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    metrics = evaluate_binary(y, np.clip(0.3 * y + rng.uniform(0, 0.7, 80), 0, 1), 0.5, n_boot=50)
    metrics["multiclass"] = evaluate_multiclass(rng.integers(0, 3, 80), rng.dirichlet(np.ones(3), 80),
                                                ("normal", "bacteria", "virus"), n_boot=50)
    metrics["two_stage"] = evaluate_multiclass(rng.integers(0, 3, 80), rng.dirichlet(np.ones(3), 80),
                                               ("normal", "bacteria", "virus"), predicted=rng.integers(0, 3, 80),
                                               decision="PNEUMONIA at 0.4000, then virus at 0.5000", n_boot=20)
    page = write_report(metrics, tmp_path, "figures").read_text()

    def row(label: str) -> str:
        return " ".join(re.sub("<[^>]+>", " ", re.search(rf"<tr><th>{label}.*?</tr>", page).group(0)).split())

    assert row("PR AUC") == (f"PR AUC (average precision) {format_figure(metrics['pr_auc'])} (no 95% CI) "
                             f"{format_figure(metrics['at_0_5']['pr_auc'])} (no 95% CI)")
    assert row("Expected calibration error").endswith("(no 95% CI)")
    assert row(r"Expected calibration error \(decided class").endswith("(no 95% CI)")
    assert row("Macro F1") == f"Macro F1 {format_figure(metrics['multiclass']['macro_f1'])} (no 95% CI)"
    assert "(95% CI " in row("ROC AUC") and "no 95% CI" not in row("ROC AUC")
    heads = re.findall(r"<tr><th>(Expected calibration error[^<]*)</th>", page)
    assert heads == ["Expected calibration error (10 bins)", *["Expected calibration error (decided class, 10 bins)"]
                     * 2], "the binary part's, then the three-class decision's and the two stages'"


def test_compare_draws_a_run_named_with_dollar_signs_as_its_name(tmp_path: Path) -> None:
    """Run folders are named by people: matplotlib read a name holding two dollar signs as a formula, drawing
    ``cost $5 or $6`` in italics and ending `compare --out` on ``eval$\\foo$`` in a parse error."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    names = (r"eval$\foo$", "cost $5 or $6")
    for name in names:
        write_report(evaluate_binary(y, np.clip(0.4 * y + rng.uniform(0, 0.6, 60), 0, 1), 0.5, n_boot=20),
                     tmp_path / name, name)
    runs = compare_runs([tmp_path / name for name in names], tmp_path / "out")
    assert (tmp_path / "out" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    legend = [text.get_text() for text in comparison_figure(runs).axes[0].get_legend().get_texts()]
    assert [label.split(" (AUC")[0] for label in legend] == [name.replace("$", r"\$") for name in names]


def test_names_that_are_not_utf8_reach_the_report_and_the_comparison_as_escapes(tiny_bundle: Path, tiny_dataset: Path,
                                                                                tmp_path: Path) -> None:
    """A data folder or run folder whose name holds bytes that are not UTF-8 (``caf\\xe9``, written by another
    system): evaluate ended in a UnicodeEncodeError writing report.html (after metrics.json), then methods.md, and
    compare writing compare.csv; each shows such a byte as ``\\xe9``, as predictions.csv and metrics.json do."""
    data = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    shutil.copytree(tiny_dataset / "test", data)
    out = Path(os.fsdecode(bytes(tmp_path) + b"/eval-\xe9"))
    evaluate(tiny_bundle, data, out_dir=out)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert f"<th>data</th><td>{html.escape(str(tmp_path))}/caf\\xe9</td>" in page
    assert "# Methods and results: " in (methods := (out / "methods.md").read_text(encoding="utf-8"))
    assert "The films of caf\\xe9:" in methods  # the draft for the paper too
    compare_runs([out], tmp_path / "compared")
    with (tmp_path / "compared" / "compare.csv").open(newline="", encoding="utf-8") as f:
        [row] = list(csv.DictReader(f))
    assert (row["run"], row["data"]) == ("eval-\\xe9", "caf\\xe9")
