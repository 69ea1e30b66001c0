"""pneumoscan compare: one table and one ROC figure from several runs' validation figures."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from PIL import Image
from matplotlib.colors import to_rgba

from pneumoscan.cli import main
from pneumoscan.core.digests import bytes_sha256
from pneumoscan.core.metrics import net_benefit, with_ci
from pneumoscan.core.metrics.differences import delong_difference, holm
from pneumoscan.data.layouts import discover, write_manifest
from pneumoscan.evaluation.compare import OPTIMISTIC, compare_runs, comparison_figure, decision_figure, format_table
from pneumoscan.evaluation.evaluate import evaluate, films_digest
from pneumoscan.evaluation.subgroups import difference_said, figure_said
from pneumoscan.models.card import load_card, save_card
from tests.builders import evaluation_of, nudge_weights


@pytest.fixture(scope="module")
def two_runs(tiny_bundle: Path, tiny_evaluation: Path, module_tmp: Callable[[str], Path]) -> tuple[Path, Path]:
    """A copy of the tiny training run and, beside its bundle, a copy of the session's evaluate folder of that
    bundle on the test split (its metrics.json names the session's bundle, which holds the same weights)."""
    run = module_tmp("compare") / "tiny-run"
    shutil.copytree(tiny_bundle.parent, run)
    shutil.copytree(tiny_evaluation, run / "eval-test")
    return run, run / "eval-test"


@pytest.fixture(scope="module")
def tta_by_site(tiny_bundle: Path, tiny_evaluation_by_site: tuple[Path, Path, str],
                module_tmp: Callable[[str], Path]) -> Path:
    """evaluate --tta --by site of the tiny bundle on the session's two sites (the tiny dataset's test films), for
    the tests that set a TTA evaluation beside a plain one: each reads a copy (one report drawn, not one a test)."""
    out = module_tmp("tta") / "eval"
    evaluate(tiny_bundle, tiny_evaluation_by_site[1], out_dir=out, tta=True, by=["site"])
    return out


def _last_minutes(run: Path) -> float:
    with (run / "history.csv").open() as f:
        return float(list(csv.DictReader(f))[-1]["minutes"])


def test_compare_table_holds_each_runs_own_figures(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    run, ev = two_runs
    runs = compare_runs([run, ev], tmp_path / "out")
    card = load_card(run / "bundle")
    with (tmp_path / "out" / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["tiny-run", "eval-test"]
    for row, folder in zip(rows, (run, ev)):
        m = json.loads((folder / "metrics.json").read_text())
        assert int(row["n"]) == m["n"]
        for key in ("auc", "accuracy", "sensitivity", "specificity", "threshold"):
            assert float(row[key]) == pytest.approx(m[key])
        for key in ("auc", "accuracy", "sensitivity", "specificity"):  # each figure with its interval
            assert [float(row[f"{key}_low"]), float(row[f"{key}_high"])] == pytest.approx(m["ci"][key])
        at = m.get("net_benefit") or {}  # evaluate's at its threshold, with its interval; a training run has none
        assert [row[key] for key in ("net_benefit", "net_benefit_low", "net_benefit_high", "treat_all")] == [
            "" if v is None else str(v) for v in (at.get("net_benefit"), *(at.get("ci") or [None, None]),
                                                   at.get("treat_all"))]
        assert (row["model"], row["task"], row["policy"]) == (card.model, card.task, card.threshold_policy)
        assert float(row["minutes"]) == pytest.approx(_last_minutes(run))  # the evaluate folder's run's clock
    assert rows[0]["n"] != rows[1]["n"]  # validation split vs test split: two different sets of films
    # and each row says which: a table of a run's own validation figures beside others' test figures ranks nothing
    assert [r["data"] for r in rows] == ["validation (chose its threshold)", "chest_xray/test"]
    assert "chest_xray/test" in format_table(runs).splitlines()[2]
    at = json.loads((ev / "metrics.json").read_text())["net_benefit"]
    assert (f"{at['net_benefit']:.3f} (95% CI {at['ci'][0]:.3f} to {at['ci'][1]:.3f}; {at['treat_all']:.3f})"
            in format_table(runs).splitlines()[2])
    assert (tmp_path / "out" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(runs) == 2


def test_compare_figure_overlays_curves_and_marks_each_operating_point_in_its_colour(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """A run the table marks optimistic (the training run: its figures are on the films that chose its threshold)
    carries the same mark in the figure's legend: compare.png travels without the table. So does the films each
    curve is on, where they differ (its validation films, the test split): the legend named the runs alone, and
    the figure set curves on other films side by side as if on one set."""
    runs = compare_runs(list(two_runs))
    assert [bool(r.optimistic) for r in runs] == [True, False]
    assert format_table(runs).splitlines()[1].startswith("tiny-run (optimistic *)")
    ax = comparison_figure(runs).axes[0]
    by_label = {line.get_label(): line for line in ax.lines}
    names = {"tiny-run": "tiny-run (optimistic *) on validation (chose its threshold)",
             "eval-test": "eval-test on chest_xray/test"}
    for r in runs:
        curve = by_label[f"{names[r.run]} (AUC {r.auc:.3f})"]
        assert list(curve.get_xdata()) == pytest.approx(r.roc["fpr"])
        point = by_label[f"{r.run} at t = {r.threshold:.3g}"]
        assert list(point.get_xdata()) == pytest.approx([1 - r.figures["specificity"]])
        assert list(point.get_ydata()) == pytest.approx([r.figures["sensitivity"]])
        assert to_rgba(point.get_color()) == to_rgba(curve.get_color())
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == [f"{names[r.run]} (AUC {r.auc:.3f})" for r in runs]  # a dot is told by its curve's colour
    # runs on the same films say it once, in the title
    same = compare_runs([two_runs[1], shutil.copytree(two_runs[1], tmp_path / "eval-again")])
    ax = comparison_figure(same).axes[0]
    assert ax.get_title() == "ROC curve on chest_xray/test"
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [f"{r.run} (AUC {r.auc:.3f})" for r in same]


def test_compare_runs_takes_one_run_alone_or_any_iterable_of_runs(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    """A script's one run given alone (a str) was read as its characters, each refused as a run (`/: no
    metrics.json`); runs given as a generator (a glob) were spent before two runs of one name were told apart by
    their folders, and both were shown as `eval-test`."""
    [one] = compare_runs(str(two_runs[1]))
    assert one.run == "eval-test" and one.figures == compare_runs([two_runs[1]])[0].figures
    for name in ("a", "b"):
        shutil.copytree(two_runs[1], tmp_path / name / "eval-test")
    globbed = compare_runs(run for run in sorted(tmp_path.glob("*/eval-test")))
    assert [r.run for r in globbed] == ["a/eval-test", "b/eval-test"]


def test_compare_cli_prints_the_table(two_runs: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", *map(str, two_runs), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["run", "model", "task", "data", "n"]
    assert lines[1].startswith("tiny-run") and "simple_cnn" in lines[1] and "sensitivity >= 0.95" in lines[1]
    assert lines[2].startswith("eval-test")
    assert (tmp_path / "compare.csv").is_file() and (tmp_path / "compare.png").is_file()


def test_compare_refuses_a_folder_without_figures_and_mixed_tasks(two_runs: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", str(two_runs[0]), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no metrics.json" in err[0]
    # a run's bundle given in its run's place: the run is named
    with pytest.raises(ValueError, match=rf"no metrics.json .*; it is a bundle: give its training run, {two_runs[0]}$"):
        compare_runs([two_runs[0] / "bundle", two_runs[1]])
    other = tmp_path / "etiology-run"
    shutil.copytree(two_runs[0], other)
    card = load_card(other / "bundle")
    save_card(other / "bundle", dataclasses.replace(card, task="etiology", classes=["bacteria", "virus"],
                                                    positive="virus",
                                                    train_config={**card.train_config, "task": "etiology"}))
    with pytest.raises(ValueError, match=r"answer different questions \(pneumonia: NORMAL vs PNEUMONIA; etiology: "
                                         r"bacteria vs virus\)"):
        compare_runs([two_runs[0], other])
    metrics = json.loads((other / "metrics.json").read_text())
    # a damaged or edited figure is refused by name, never ranked (an AUC of 7.5 was printed) nor a traceback
    without_n = {k: v for k, v in metrics.items() if k != "n"}
    for edited, said in ((metrics | {"auc": 7.5}, "auc is 7.5, not a figure"),
                         (metrics | {"auc": "0.99"}, "auc is '0.99', not a figure"),
                         (metrics | {"ci": metrics["ci"] | {"auc": [0.1, 7.5]}}, "ci.auc is 7.5, not a figure"),
                         (metrics | {"ci": metrics["ci"] | {"auc": ["a", "b"]}}, "ci.auc is 'a', not a figure"),
                         (metrics | {"n": 0}, "n is 0, not a count"), (without_n, "n is None, not a count"),
                         (metrics | {"threshold": None}, "holds no binary validation figures")):
        (other / "metrics.json").write_text(json.dumps(edited))
        assert main(["compare", str(other)]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, err
    (other / "metrics.json").write_text(json.dumps({"kind": "multiclass"}))
    with pytest.raises(ValueError, match="no binary validation figures"):
        compare_runs([other])


def test_a_damaged_net_benefit_is_refused_by_its_file_and_one_below_0_is_shown(two_runs: tuple[Path, Path],
                                                                               tmp_path: Path) -> None:
    """metrics.json's net benefit at the threshold, which compare.csv and the table show beside the run's other
    figures: one above 1 or infinite, a text figure, an interval high to low or of one number (which ended in an
    IndexError) is refused naming the file, by the check a bundle's card gets; one below 0 (a model that harms at
    its threshold) is a net benefit like any other."""
    run = tmp_path / "damaged"
    shutil.copytree(two_runs[1], run)
    metrics = json.loads((run / "metrics.json").read_text())
    at = metrics["net_benefit"]
    for damaged in (at | {"net_benefit": 1.5}, at | {"treat_all": "0.2"}, at | {"ci": [0.3, 0.1]}, [0.1],
                    at | {"ci": 0.3}, at | {"net_benefit": -math.inf}, 0.1):
        (run / "metrics.json").write_text(json.dumps(metrics | {"net_benefit": damaged}))
        with pytest.raises(ValueError, match=re.escape(f"{run / 'metrics.json'}: net_benefit is ")):
            compare_runs([run])
    (run / "metrics.json").write_text(json.dumps(metrics | {"net_benefit": at | {"net_benefit": -0.25,
                                                                                 "ci": [-0.4, -0.1]}}))
    assert "-0.250 (95% CI -0.400 to -0.100; " in format_table(compare_runs([run]))


def test_a_damaged_roc_curve_is_refused_by_its_file(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    """A curve of rates out of [0, 1] was drawn as the run's; one of two lengths ended compare.png in matplotlib's
    "x and y must have same first dimension", naming no file."""
    run = tmp_path / "damaged"
    shutil.copytree(two_runs[1], run)
    metrics = json.loads((run / "metrics.json").read_text())
    roc = metrics["curves"]["roc"]
    for damaged in (roc | {"tpr": [7.5] * len(roc["tpr"])}, roc | {"fpr": roc["fpr"][:-1]}, roc | {"fpr": "0, 1"}):
        (run / "metrics.json").write_text(json.dumps(metrics | {"curves": metrics["curves"] | {"roc": damaged}}))
        with pytest.raises(ValueError, match=re.escape(f"{run / 'metrics.json'}: curves.roc is not two lists of rates "
                                                       "in [0, 1] of one length")):
            compare_runs([two_runs[1], run], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_threshold_copy_beside_the_bundle_gets_its_own_evaluation_and_policy(
    two_runs: tuple[Path, Path], tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`threshold RUN/bundle ... --out RUN/bundle-site-b` then `evaluate` of each: the second evaluation went to the
    first's folder (overwriting it), and compare stated RUN/bundle's policy beside the copy's threshold."""
    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    site = tmp_path / "site.csv"  # a site's own labelled films
    write_manifest([dataclasses.replace(r, split="") for r in discover(tiny_dataset).split("test")], site)
    assert main(["threshold", str(run / "bundle"), str(site), "--youden", "--out", str(run / "bundle-site-b")]) == 0
    for bundle in ("bundle", "bundle-site-b"):
        assert main(["evaluate", str(run / bundle), str(tiny_dataset), "--split", "test"]) == 0
    folders = {"bundle": run / "eval-chest_xray-test", "bundle-site-b": run / "eval-bundle-site-b-chest_xray-test"}
    capsys.readouterr()
    assert main(["compare", *map(str, folders.values())]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line, (bundle, folder) in zip(lines[1:], folders.items()):
        card = load_card(run / bundle)
        assert json.loads((folder / "metrics.json").read_text())["threshold"] == pytest.approx(card.threshold)
        assert f"({card.threshold_policy})" in line
    assert "Youden" in lines[2] and "Youden" not in lines[1]


def test_compare_never_shows_a_missed_film_as_perfect(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    """One missed pneumonia in 2,500 is a sensitivity of 0.9996: the table shows 0.999 with its interval, not 1.000."""
    ev = tmp_path / "eval-site"
    shutil.copytree(two_runs[1], ev)
    m = json.loads((ev / "metrics.json").read_text())
    m["sensitivity"], m["ci"]["sensitivity"] = 0.9996, [0.9978, 1.0]
    (ev / "metrics.json").write_text(json.dumps(m))
    row = format_table(compare_runs([ev])).splitlines()[1]
    assert "0.999 (95% CI 0.998-1.000)" in row  # the sens column; before, "1.000" with no interval


def test_an_evaluation_of_a_bundle_trained_again_since_shows_no_card_of_the_new_one(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """`train --out RUN` again keeps RUN/eval-*: compare showed the old figures and threshold beside the new bundle's
    policy, model and minutes, read at the path metrics.json records."""
    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    shutil.rmtree(run / "eval-test")
    evaluation_of(two_runs[1], run / "bundle", run / "eval-test")  # as evaluate of the copy writes it
    [before] = compare_runs([run / "eval-test"])
    assert before.policy == load_card(run / "bundle").threshold_policy and before.minutes is not None
    nudge_weights(run / "bundle")  # other weights, as a run trained again in the same folder leaves
    [after] = compare_runs([run / "eval-test"])
    assert (after.model, after.task, after.policy, after.minutes) == (None, None, None, None)
    assert after.figures == before.figures and after.threshold == before.threshold  # its own figures, as measured



def test_an_int8_evaluation_of_a_bundle_exported_again_since_shows_no_card(int8_bundle: Path, tiny_dataset: Path,
                                                                          tmp_path: Path) -> None:
    """Figures of ``--backend onnx-int8`` are of one INT8 model and its own thresholds: exported again (a new graph,
    thresholds chosen again), the bundle's weights are the same, and compare showed the old figures beside the new
    card's policy as if they were its INT8 model's."""
    bundle = tmp_path / "run" / "bundle"
    shutil.copytree(int8_bundle, bundle)
    evaluate(bundle, tiny_dataset, "test", tmp_path / "eval", backend="onnx-int8")
    [before] = compare_runs([tmp_path / "eval"])
    assert before.model == "simple_cnn"
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, files={**card.files, "model.int8.onnx": "sha256:" + "0" * 64}))
    [after] = compare_runs([tmp_path / "eval"])
    assert (after.model, after.task, after.policy) == (None, None, None)
    assert after.figures == before.figures

def test_compare_names_the_patients_beside_the_films_and_what_the_intervals_count(two_runs: tuple[Path, Path],
                                                                                   tmp_path: Path) -> None:
    """n counted films while a run's intervals might count patients, and nothing said which: the table and
    compare.csv give the patients beside the films and a unit column, "patient" or "film"."""
    ev = tmp_path / "eval-site"
    shutil.copytree(two_runs[1], ev)
    m = json.loads((ev / "metrics.json").read_text())
    assert (m["ci_unit"], m["patients"]) == ("film", None)
    by_patient = m | {"ci_unit": "patient", "patients": {"positive": 5, "negative": 4, "all": 9}}
    (ev / "metrics.json").write_text(json.dumps(by_patient))
    runs = compare_runs([two_runs[1], ev], tmp_path / "out")
    head, *lines = format_table(runs).split("\n\n")[0].splitlines()  # the table, not the paired tests beneath
    assert re.split(r"\s{2,}", head)[4:6] == ["n", "CI unit"]
    assert [re.split(r"\s{2,}", line)[4:6] for line in lines] == [["16 films", "film"],
                                                                  ["16 films of 9 patients", "patient"]]
    one = dataclasses.replace(runs[1], n=1, patients=1)  # "1 films of 1 patients" had said
    assert re.split(r"\s{2,}", format_table([one]).splitlines()[1])[4] == "1 film of 1 patient"
    with (tmp_path / "out" / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["n"], r["patients"], r["ci_unit"]) for r in rows] == [("16", "", "film"), ("16", "9", "patient")]
    for edited, said in ((by_patient | {"ci_unit": "cluster"}, "ci_unit is 'cluster', not patient or film"),
                         (by_patient | {"patients": {"all": "9"}}, "patients is {'all': '9'}, not counts of patients"),
                         (by_patient | {"patients": 9}, "patients is 9, not counts of patients")):
        (ev / "metrics.json").write_text(json.dumps(edited))
        with pytest.raises(ValueError, match=re.escape(said)):
            compare_runs([ev])


THREE_CLASS = ("accuracy", "balanced_accuracy", "macro_auc")


def test_compare_sets_a_multiclass_evaluation_beside_a_two_stage_one(three_class_runs: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """The two routes to normal / bacteria / virus answer one question, pneumonia or not, on the same films: compare
    had refused them as runs of different tasks, and showed no three-class figure of any run."""
    runs = compare_runs(list(three_class_runs), tmp_path / "out")
    with (tmp_path / "out" / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["task"]) for r in rows] == [("eval-multiclass", "multiclass"), ("eval-two-stage", "pneumonia")]
    table = format_table(runs).split("\n\n")[1].splitlines()
    assert re.split(r"\s{2,}", table[0]) == ["run", "three-class decision", "classes", "CI unit", "accuracy",
                                             "balanced accuracy", "macro AUC"]
    for row, line, folder, key in zip(rows, table[1:], three_class_runs, ("multiclass", "two_stage")):
        m = json.loads((folder / "metrics.json").read_text())
        block = m[key]
        # one set of class names for both routes, each decision named, each figure with its interval and unit
        assert (row["three_class_decision"], row["three_class_classes"], row["three_class_ci_unit"]) == (
            block["decision"], "normal, bacteria, virus", block["ci_unit"])
        for name in THREE_CLASS:
            assert float(row[f"three_class_{name}"]) == pytest.approx(block[name])
            bounds = [float(row[f"three_class_{name}_low"]), float(row[f"three_class_{name}_high"])]
            assert bounds == pytest.approx(block["ci"][name])
        assert re.split(r"\s{2,}", line) == [folder.name + (OPTIMISTIC if m["optimistic"] else ""), block["decision"],
                                             "normal, bacteria, virus", block["ci_unit"],
                                             *(with_ci(block[name], block["ci"][name]) for name in THREE_CLASS)]
    assert rows[1]["three_class_decision"].startswith("PNEUMONIA at ")  # the two stages' thresholds


def test_compare_refuses_three_class_figures_of_other_classes_and_shows_each_decision(
        three_class_runs: tuple[Path, Path], tmp_path: Path) -> None:
    multiclass, two_stage = three_class_runs
    other = shutil.copytree(two_stage, tmp_path / "eval-other")
    m = json.loads((other / "metrics.json").read_text())
    (other / "metrics.json").write_text(json.dumps(m | {"two_stage": m["two_stage"] | {
        "class_names": ["normal", "other", "viral"]}}))
    with pytest.raises(ValueError, match=r"three-class figures are of different classes \(eval-multiclass: normal, "
                                         r"bacteria, virus; eval-other: normal, other, viral\)"):
        compare_runs([multiclass, other])
    (other / "metrics.json").write_text(json.dumps(m | {"two_stage": m["two_stage"] | {"macro_auc": 7.5}}))
    with pytest.raises(ValueError, match="two_stage.macro_auc is 7.5, not a figure in"):
        compare_runs([other])
    # a result with both decisions (the most probable class and two stages): a line and a compare.csv row for each
    both = shutil.copytree(multiclass, tmp_path / "eval-both")
    mc = json.loads((both / "metrics.json").read_text())
    (both / "metrics.json").write_text(json.dumps(mc | {"two_stage": m["two_stage"]}))
    runs = compare_runs([both], tmp_path / "out")
    with (tmp_path / "out" / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["three_class_decision"]) for r in rows] == [
        ("eval-both", "most probable class"), ("eval-both", m["two_stage"]["decision"])]
    decisions = [line for line in format_table(runs).split("\n\n")[1].splitlines() if not line.startswith("* ")]
    assert rows[0]["auc"] == rows[1]["auc"] and len(decisions) == 3  # the header and a line a decision


def test_compare_refuses_runs_that_name_other_films_alike(two_runs: tuple[Path, Path], tiny_dataset: Path,
                                                          tmp_path: Path) -> None:
    """Two sites each evaluate on their own `manifest.csv`: both rows read "manifest.csv", and the table set figures
    on different films side by side as if on one set. The same films under one name still compare."""
    films = [dataclasses.replace(r, split="") for r in discover(tiny_dataset).split("test")]
    by_label = {label: [r for r in films if r.label == label] for label in ("NORMAL", "PNEUMONIA")}
    folders = []
    for site, half in (("a", slice(0, 4)), ("b", slice(4, 8))):
        manifest = tmp_path / site / "manifest.csv"
        write_manifest([r for rows in by_label.values() for r in rows[half]], manifest)
        metrics = evaluate(two_runs[0] / "bundle", manifest)
        for again in ("", "-again") if site == "a" else ("",):  # site a's evaluation twice, as a second run writes it
            folder = tmp_path / f"eval-{site}{again}"
            folder.mkdir()
            (folder / "metrics.json").write_text(json.dumps(metrics))
            folders.append(folder)
    assert [json.loads((f / "metrics.json").read_text())["data"] for f in folders] == ["manifest.csv"] * 3
    assert len(compare_runs(folders[:2])) == 2  # the same films, evaluated twice
    with pytest.raises(ValueError, match=r"eval-a and eval-b name their films alike \(manifest.csv\) but were "
                                         "measured on different films"):
        compare_runs(folders)


def test_a_run_scored_with_test_time_augmentation_says_so(two_runs: tuple[Path, Path], tta_by_site: Path,
                                                           tmp_path: Path) -> None:
    """Plain and --tta evaluations of one bundle on one set of films (the test films, the TTA one of them as two
    sites: the module's), each at its own threshold: both rows read alike but for the threshold, and nothing in
    compare said which was which."""
    _, plain = two_runs
    shutil.copytree(tta_by_site, tmp_path / "eval-tta")
    rows = {r.run: r for r in compare_runs([plain, tmp_path / "eval-tta"])}
    assert (rows["eval-test"].scores, rows["eval-tta"].scores) == ("plain", "TTA")
    table = format_table(list(rows.values()))
    assert "; TTA)" in table and table.count("; TTA)") == 1


def test_training_runs_validated_on_other_films_are_named_by_their_own_run(tiny_bundle: Path, tmp_path: Path,
                                                                           tiny_cv: tuple[Path, list[str]]) -> None:
    """Two runs of the tiny data validate on other films (the tiny run's and a cv fold's, which no other split
    shares: the session's, not a run of another seed trained here): both rows read "validation (chose its
    threshold)", as if on one set. Runs on the same split still share the name (copies of the tiny run)."""
    runs = {name: shutil.copytree(tiny_bundle.parent, tmp_path / name) for name in ("seed0", "seed0-again")}
    runs["fold-0"] = tiny_cv[0] / "fold-0"
    same = compare_runs([runs["seed0"], runs["seed0-again"]])
    assert [r.data for r in same] == ["validation (chose its threshold)"] * 2
    other = compare_runs([runs["seed0"], runs["fold-0"]])
    assert [r.data for r in other] == ["validation of seed0 (chose its threshold)",
                                       "validation of fold-0 (chose its threshold)"]


def test_the_films_digest_follows_the_films_and_labels_not_where_the_data_lies(tiny_dataset: Path,
                                                                               tmp_path: Path) -> None:
    """The same films moved or mounted elsewhere are the same films to compare; another label, or a film rewritten
    in place under its name, is other figures. Training's own validation figures name their films alike."""
    moved = shutil.copytree(tiny_dataset, tmp_path / "elsewhere" / "chest_xray")
    here, there = (discover(d).split("test") for d in (tiny_dataset, moved))
    assert films_digest(here) == films_digest(there)
    relabelled = [dataclasses.replace(there[0], label="PNEUMONIA" if there[0].label == "NORMAL" else "NORMAL"),
                  *there[1:]]
    assert films_digest(relabelled) != films_digest(there)
    assert films_digest(there[1:]) != films_digest(there)
    before = films_digest(there)
    Image.fromarray(255 - np.asarray(Image.open(there[0].path))).save(there[0].path, quality=95)
    assert films_digest(there) != before


def test_a_two_stage_evaluation_names_its_second_stage_by_its_weights_and_folder(
    tiny_bundle: Path, tiny_etiology_bundle: Path, tiny_dataset: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    """metrics.json recorded the second stage only as the path typed, and compare showed its figures as current
    after it was trained again; two second stages wrote one default folder, the second run's over the first's."""
    from pneumoscan import cli

    first = shutil.copytree(tiny_bundle.parent, tmp_path / "first") / "bundle"
    seconds = [shutil.copytree(tiny_etiology_bundle.parent, tmp_path / name) / "bundle" for name in ("e-a", "e-b")]
    nudge_weights(seconds[1])
    assert cli.main(["export", str(seconds[1])]) == 0
    for second in seconds:
        assert cli.main(["evaluate", str(first), str(tiny_dataset), "--split", "test", "--etiology",
                         str(second)]) == 0
    folders = [tmp_path / "first" / f"eval-chest_xray-test-two-stage-{name}" for name in ("e-a", "e-b")]
    blocks = [json.loads((f / "metrics.json").read_text())["two_stage"] for f in folders]
    assert [b["etiology_bundle"] for b in blocks] == [str(s.resolve()) for s in seconds]
    assert [b["etiology_bundle_weights"] for b in blocks] == [load_card(s).files["model.safetensors"]
                                                              for s in seconds]
    assert blocks[0]["accuracy"] is not None and len(compare_runs(folders)) == 2
    assert "holds other weights" not in caplog.text
    nudge_weights(seconds[0])  # trained again in its folder
    with caplog.at_level("WARNING"):
        compare_runs(folders[:1])
    assert f"the bundle at {seconds[0].resolve()} holds other weights than these figures were measured with" in (
        caplog.text)


def test_compare_and_evaluate_read_a_bundles_card_once(two_runs: tuple[Path, Path], tiny_dataset: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read of bundle.json checks its checksum, and two reads apart could be of two bundles (a run trained
    again into the folder between them): compare read the card of an evaluation's bundle again to compare its
    weights, and evaluate read it again for the held-out check. The real load_card, counted."""
    from pneumoscan.evaluation import compare, held_out

    run, ev = two_runs
    read: list[str] = []
    real = load_card

    def counted(bundle: Path | str, *args: object) -> object:
        read.append(str(bundle))
        return real(bundle, *args)

    for module in (compare, held_out):
        monkeypatch.setattr(module, "load_card", counted)
    compare.load_run(ev)
    assert read == [json.loads((ev / "metrics.json").read_text())["bundle"]]  # the bundle it measured
    read.clear()
    evaluate(run / "bundle", tiny_dataset, "test")
    assert read == [], "the held-out check reads the card the Predictor read"


def test_compare_sets_each_groups_figures_side_by_side_and_names_fields_a_run_lacks(
        tiny_evaluation_by_site: tuple[Path, Path, str], tta_by_site: Path, tmp_path: Path) -> None:
    """Evaluations by subgroup (evaluate --by) on the same films: a field both have gets a table, each group's runs
    one beneath the other with their figures as evaluate words them; a field one has and the other lacks is said,
    with no table; a damaged group's figure is refused by its file. (Copies of the session's plain one by site and
    subtype and the module's TTA one by site.)"""
    plain = shutil.copytree(tiny_evaluation_by_site[0], tmp_path / "plain")
    tta = shutil.copytree(tta_by_site, tmp_path / "tta")
    table = format_table(compare_runs([plain, tta]))
    lines = table.splitlines()
    start = lines.index("by site, each run at its own threshold (95% CIs count the run's CI unit):")
    rows = [re.split(r" {2,}", line) for line in lines[start + 1:start + 6]]
    assert rows[0] == ["group", "run", "films", "patients", "sensitivity", "specificity", "AUC"]
    groups = {run: json.loads((run / "metrics.json").read_text())["subgroups"]["fields"]["site"]
              for run in (plain, tta)}
    assert rows[1:] == [[g["value"], run.name, str(g["films"]), str(g["patients"]),
                         *(figure_said(g[name]) for name in ("sensitivity", "specificity", "auc"))]
                        for i in range(2) for run in (plain, tta) for g in [groups[run][i]]]
    assert rows[3][-1] == "(too few patients for a 95% CI)"  # site B: no interval
    assert "* by subtype: figures by subgroup in plain; none in tta" in lines and "by subtype, each" not in table
    # each run's test of AUC across the sites beneath the table, beside the rates', and on each row of the paper's
    # table; a metrics.json written before AUC was tested is read as it is, its AUC untested
    m = json.loads((tta / "metrics.json").read_text())
    tests = {run: json.loads((run / "metrics.json").read_text())["subgroups"]["differences"]["site"]["auc"]
             for run in (plain, tta)}
    assert all(f"{run.name}: " in table and difference_said("auc", tests[run]) in table for run in (plain, tta))
    del m["subgroups"]["differences"]["site"]["auc"]
    (tta / "metrics.json").write_text(json.dumps(m))
    table = format_table(compare_runs([plain, tta], tmp_path / "both"))
    with (tmp_path / "both" / "compare_subgroups.csv").open() as f:
        written = [row for row in csv.DictReader(f) if row["field"] == "site"]
    assert "auc_hits" not in written[0] and [(row["run"], row["auc_p"], row["auc_test"]) for row in written] == [
        ("plain", str(tests[plain]["p"]), difference_said("auc", tests[plain]))] * 2 + [("tta", "", "")] * 2
    assert difference_said("auc", tests[tta]) not in table
    m["subgroups"]["fields"]["site"][0]["auc"]["value"] = 7.5
    (tta / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"tta/metrics.json: subgroups\.fields\.site\[A\]\.auc\.value is 7\.5"):
        compare_runs([plain, tta])


def test_compare_sets_a_three_class_decisions_accuracy_by_subgroup_side_by_side_and_writes_a_papers_table(
        tiny_multiclass_bundle: Path, tiny_multiclass_by_subtype: Path, typed_dataset: Path, tmp_path: Path) -> None:
    """Three-class evaluations --by subtype, plain (a copy of the session's) and TTA: each group's accuracy of the
    decision among the classes, run beneath run with its tests; compare_subgroups.csv gives a row a run, field and
    group, each figure with its CI's ends, films counted and its field's test (as metrics.json has them), and
    compare_subgroups.png draws them; runs without figures by subgroup compared into the same folder leave none of
    them. A damaged p is refused."""
    plain, tta = shutil.copytree(tiny_multiclass_by_subtype, tmp_path / "plain"), tmp_path / "tta"
    evaluate(tiny_multiclass_bundle, typed_dataset, "test", out_dir=tta, tta=True, by=["subtype"])
    blocks = {run: json.loads((run / "metrics.json").read_text()) for run in (plain, tta)}
    table = format_table(compare_runs([plain, tta], tmp_path / "both"))
    lines = table.splitlines()
    start = lines.index("by subtype, each run's three-class decision (95% CIs count the run's CI unit):")
    rows = [re.split(r" {2,}", line) for line in lines[start + 1:start + 8]]
    assert rows[0] == ["group", "run", "three-class decision", "films", "patients", "accuracy"]
    assert rows[1:] == [[g["value"], run.name, "most probable class", str(g["films"]), str(g["patients"]),
                         figure_said(g["accuracy"])]
                        for i in range(3) for run in (plain, tta)
                        for g in [blocks[run]["multiclass"]["subgroups"]["fields"]["subtype"][i]]]
    assert lines[start + 8].startswith("do the groups differ by more than chance?")
    assert lines[start + 9].startswith("  plain (most probable class): accuracy ")
    with (tmp_path / "both" / "compare_subgroups.csv").open() as f:
        written = list(csv.DictReader(f))
    assert [(r["run"], r["field"], r["group"]) for r in written] == [
        (run.name, "subtype", value) for run in (plain, tta) for value in ("bacteria", "normal", "virus")]
    for row in written:
        m = blocks[tmp_path / row["run"]]
        [group] = [g for g in m["subgroups"]["fields"]["subtype"] if g["value"] == row["group"]]
        [decided] = [g for g in m["multiclass"]["subgroups"]["fields"]["subtype"] if g["value"] == row["group"]]
        test = m["multiclass"]["subgroups"]["differences"]["subtype"]["accuracy"]
        assert float(row["accuracy"]) == pytest.approx(decided["accuracy"]["value"])
        assert [row["accuracy_low"], row["accuracy_high"]] == (
            [str(bound) for bound in decided["accuracy"]["ci"]] if decided["accuracy"]["ci"] else ["", ""])
        assert (row["accuracy_hits"], row["accuracy_of"]) == (str(decided["accuracy"]["hits"]),
                                                              str(decided["accuracy"]["of"]))
        assert row["accuracy_p"] == str(test.get("p", "")) and row["accuracy_test"] == difference_said("accuracy", test)
        assert row["accuracy_p_holm"] == str(test.get("p_holm", ""))
        assert (row["films"], row["positive"]) == (str(group["films"]), str(group["positive"]))
        assert row["sensitivity"] == ("" if group["sensitivity"] is None else str(group["sensitivity"]["value"]))
        assert (row["three_class_decision"], row["tests"]) == ("most probable class", str(m["subgroups"]["tests"]))
    with Image.open(tmp_path / "both" / "compare_subgroups.png") as png:
        assert png.format == "PNG" and png.height > 200
    for run in (plain, tta):  # the same runs, their figures by subgroup left out
        m = blocks[run]
        del m["subgroups"], m["multiclass"]["subgroups"]
        shutil.copytree(run, tmp_path / "without" / run.name)
        (tmp_path / "without" / run.name / "metrics.json").write_text(json.dumps(m))
    compare_runs([tmp_path / "without" / "plain", tmp_path / "without" / "tta"], tmp_path / "both")
    assert not any((tmp_path / "both" / name).exists() for name in ("compare_subgroups.csv", "compare_subgroups.png"))
    m = json.loads((tta / "metrics.json").read_text())
    m["multiclass"]["subgroups"]["differences"]["subtype"]["accuracy"]["p_holm"] = 2.0
    (tta / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"tta/metrics.json: multiclass\.subgroups\.differences\.subtype\.accuracy\."
                                         r"p_holm is 2\.0, not a figure in \[0, 1\]"):
        compare_runs([plain, tta])
    m["multiclass"]["subgroups"]["differences"]["subtype"]["accuracy"] |= {"p_holm": 0.5, "p_method": "guessed"}
    (tta / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"accuracy\.p_method is 'guessed', not one of exact, drawn, DeLong"):
        compare_runs([plain, tta])
    # an edited test, or a rate's test gone beside the others', is refused by its file, not a KeyError
    m = blocks[tta] | {"subgroups": json.loads((plain / "metrics.json").read_text())["subgroups"]}
    tests = m["subgroups"]["differences"]["subtype"]
    for edited, said in (({"specificity": tests["specificity"]}, r" has no test of sensitivity beside its others"),
                         (tests | {"sensitivity": {"groups": 3}}, r"\.sensitivity is neither a test"),
                         (tests | {"specificity": {"p": 0.5, "groups": 3, "patients": 9, "left_out": 1}},
                          r"\.specificity is neither a test"),
                         (tests | {"auc": {"p": 0.5, "groups": 2, "patients": 9, "left_out": 1,
                                           "compared": [{"value": "A", "auc": 0.5}]}}, r"\.auc is neither a test"),
                         (tests | {"auc": {"none": "why", "one_class": "normal"}}, r"\.auc\.one_class is not a list")):
        (tta / "metrics.json").write_text(json.dumps(m | {"subgroups": m["subgroups"] | {
            "differences": {"subtype": edited}}}))
        with pytest.raises(ValueError, match=r"tta/metrics.json: subgroups\.differences\.subtype" + said):
            compare_runs([plain, tta], tmp_path / "both")
    group = m["subgroups"]["fields"]["subtype"][0]
    (tta / "metrics.json").write_text(json.dumps(m | {"subgroups": m["subgroups"] | {"fields": {"subtype": [
        group | {"auc": {"value": 0.5, "ci": None, "too_few": "too few", "hits": 3}}]}}}))
    with pytest.raises(ValueError, match=r"subgroups\.fields\.subtype\[bacteria\]\.auc counts no hits"):
        compare_runs([plain, tta])


def _paired_rows(out: Path) -> list[dict[str, str]]:
    with (out / "compare_paired.csv").open() as f:
        return list(csv.DictReader(f))


def test_evaluations_of_the_same_films_are_tested_paired_against_the_first(
        two_runs: tuple[Path, Path], three_class_runs: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A three-class bundle and the pneumonia bundle evaluated on the same test films: the second's AUC,
    sensitivity and specificity (each at its own threshold, as its metrics.json gives them) and net benefit (both at
    the first's threshold probability, from predictions.csv's probabilities) against the first's, in the terminal
    and compare_paired.csv, each difference with its interval, and each but net benefit's
    with its p, Holm-adjusted over the tests; a copy of the second, scored alike, differs by nothing (p 1), and with
    three evaluations the six tests are adjusted together, the copy's marked optimistic figures said to make its
    tests so. The training run, whose figures have no scores a film, is said to be left out."""
    run, _ = two_runs
    multiclass, pneumonia = three_class_runs
    same = shutil.copytree(pneumonia, tmp_path / "eval-again")
    m = json.loads((same / "metrics.json").read_text())  # as if its threshold had been chosen on these films
    (same / "metrics.json").write_text(json.dumps(m | {"optimistic": ["its threshold was chosen on these films"]}))
    out = tmp_path / "out"
    assert main(["compare", str(run), str(multiclass), str(pneumonia), str(same), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _paired_rows(out)
    reference, m = (json.loads((folder / "metrics.json").read_text()) for folder in (multiclass, pneumonia))
    assert [(r["run"], r["figure"]) for r in rows] == [
        (name, figure) for name in ("eval-two-stage", "eval-again")
        for figure in ("auc", "sensitivity", "specificity", "net_benefit")]
    pt = reference["threshold"]  # both runs' net benefit at the reference's threshold probability, one odds
    expected = []
    for folder in (multiclass, pneumonia):
        with (folder / "predictions.csv").open() as f:
            films = list(csv.DictReader(f))
        expected.append(net_benefit([int(row["label"].casefold() != "normal") for row in films],
                                    [float(row["probability"]) for row in films], [pt])["net_benefit"][0])
    assert expected[0] == pytest.approx(reference["net_benefit"]["net_benefit"])
    for row in (r for r in rows if r["figure"] == "net_benefit"):  # an interval alone, as evaluate's figures
        assert (float(row["reference_value"]), float(row["value"])) == pytest.approx(expected)
        # at pt 0.3 both call the same films: every resample's difference 0, so no interval, and why
        assert (row["difference"], row["difference_low"], row["difference_high"]) == ("0.0", "", "")
        assert row["no_ci"] == "both runs call every film alike"
        assert (row["p"], row["p_holm"], row["p_method"], row["ci_method"]) == ("", "", "", "bootstrap")
    rows = [r for r in rows if r["figure"] != "net_benefit"]
    for row in rows:
        figure = row["figure"]
        assert (row["reference"], int(row["films"])) == ("eval-multiclass", reference["n"])
        assert float(row["reference_value"]) == pytest.approx(reference[figure])
        assert float(row["value"]) == pytest.approx(m[figure])  # eval-again's are eval-two-stage's
        assert float(row["difference"]) == pytest.approx(m[figure] - reference[figure])
        assert 0 < float(row["p"]) <= float(row["p_holm"]) <= 1
        # AUC's of 16 patients: 2^16 swaps, more than the 9,999 drawn; a rate's of 8 patients: 256, each counted
        assert (figure, row["p_method"], int(row["figure_patients"])) in {("auc", "drawn", 16),
                                                                          (figure, "exact", 8)}, row
    assert [float(r["p_holm"]) for r in rows] == pytest.approx(holm([float(r["p"]) for r in rows]))
    for row in rows[3:]:  # the copy: the same scores as eval-two-stage's, so the same test
        assert row["difference"] == next(r["difference"] for r in rows if r["figure"] == row["figure"])
    said = " ".join(printed.split())  # the sentence above the table, wrapped
    assert "is each run better or worse than eval-multiclass on the same 16 films of 16 patients?" in said
    assert "adjusted: Holm's over the 6 tests; net benefit: " in said
    assert ("net benefit: each run's at eval-multiclass's threshold probability pt (not each run's own threshold, so "
            "that both weigh a false positive at one odds)") in said
    assert ("and no test) eval-again: figures that may flatter the model (*, beneath), and so may the tests of them"
            in said)
    assert [row["optimistic"] for row in rows] == [""] * 3 + ["its threshold was chosen on these films"] * 3
    assert "* tiny-run: not in the paired test: a training run: its validation figures come without scores a film" \
        in printed
    benefit = next(line for line in printed.splitlines() if line.startswith("eval-two-stage") and "net benefit" in line)
    assert benefit.split()[-3:] == ["none", "interval", "only"]
    assert "+0.000 (no 95% CI: both runs call every film alike)" in benefit
    sensitivity = next(line for line in printed.splitlines()  # calls of the positive films differ for 2 of 8 patients
                       if line.split()[:2] == ["eval-two-stage", "sensitivity"])
    assert "(no 95% CI: the runs call differently the films of 2 patients only, fewer than 5)" in sensitivity
    line = next(line for line in printed.splitlines() if line.startswith("eval-two-stage") and " AUC " in line)
    first = next(r for r in rows if r["figure"] == "auc")
    assert f"{float(first['difference']):+.3f} ({float(first['difference_low']):+.3f} to " in line
    assert line.endswith(" drawn") and "exact where every swap was counted, else drawn: 9,999 swaps" in said
    assert "paired tests: " in printed


def test_compare_tests_auc_by_delong_where_asked(three_class_runs: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--auc-test delong: the AUC's p in compare_paired.csv and the terminal is DeLong's test of the two runs'
    scores of the 16 films (one a patient), and its interval the score-type one on DeLong's variance (holding
    DeLong's Wald interval, in [-1, 1]), each said so in its row and above the table;
    the rates' tests and intervals are the permutation run's. An unknown test is refused by its option."""
    multiclass, pneumonia = three_class_runs
    assert main(["compare", str(multiclass), str(pneumonia), "--out", str(tmp_path / "permuted")]) == 0
    capsys.readouterr()
    assert main(["compare", str(multiclass), str(pneumonia), "--out", str(tmp_path / "delong"),
                 "--auc-test", "DeLong"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    permuted, rows = _paired_rows(tmp_path / "permuted"), _paired_rows(tmp_path / "delong")
    scored = []
    for folder in (multiclass, pneumonia):
        with (folder / "predictions.csv").open() as f:
            scored.append(sorted(csv.DictReader(f), key=lambda row: row["path"]))
    positive = np.array([row["label"].casefold() != "normal" for row in scored[0]])
    scores = np.array([[float(row["probability"]) for row in films] for films in scored])
    auc = rows[0]
    assert (auc["figure"], auc["p_method"]) == ("auc", "DeLong")
    assert float(auc["p"]) == pytest.approx(delong_difference(positive, scores, np.arange(16)).p)
    assert (auc["ci_method"], permuted[0]["ci_method"]) == ("score-type", "score-type")
    assert [r["ci_method"] for r in rows[1:3]] == ["Newcombe", "Newcombe"]
    low, high, difference = (float(auc[key]) for key in ("difference_low", "difference_high", "difference"))
    half = 1.959964 * abs(difference) / norm.isf(float(auc["p"]) / 2)  # DeLong's Wald interval, from its test's p
    assert -1 <= low <= difference - half + 1e-6 and difference + half - 1e-6 <= high <= 1  # the CSV rounds
    assert [(r["difference_low"], r["p"], r["p_method"], r["ci_method"]) for r in rows[1:]] == [
        (r["difference_low"], r["p"], r["p_method"], r["ci_method"]) for r in permuted[1:]]
    assert ("its 95% CI AUC's score-type on DeLong's variance clustered by patient (never narrower than the "
            "difference +- 1.96 of its standard errors") in said
    assert "p: AUC's by DeLong's test of correlated AUCs clustered by patient (a normal approximation)" in said
    assert re.search(r"eval-two-stage +AUC .* DeLong", said)
    with pytest.raises(SystemExit):
        main(["compare", str(multiclass), str(pneumonia), "--auc-test", "wilcoxon"])
    assert "--auc-test" in capsys.readouterr().err


def test_a_films_copy_under_another_name_is_one_patient_with_it_in_the_paired_test(
        tiny_bundle: Path, int8_bundle: Path, tiny_dataset: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A film copied in under another name, of no patient id, is a copy of it (evaluate's metrics.json ``copies``):
    one patient with it in evaluate's intervals, and in the paired test's resamples and shuffles, which count the
    patients evaluate counts (the float and INT8 models of one bundle on the same films), not one more."""
    films = [dataclasses.replace(r, split="") for r in discover(tiny_dataset).split("test")]
    copy = tmp_path / "copy.jpeg"
    shutil.copyfile(films[0].path, copy)
    write_manifest([*films, dataclasses.replace(films[0], path=str(copy), patient="")], tmp_path / "films.csv")
    evaluate(tiny_bundle, tmp_path / "films.csv", out_dir=tmp_path / "float")
    m = evaluate(int8_bundle, tmp_path / "films.csv", out_dir=tmp_path / "int8", backend="onnx-int8")
    assert (m["n"], m["patients"]["all"], m["copies"]) == (17, 16, [sorted([films[0].path, str(copy)])]), m
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "float"), str(tmp_path / "int8"), "--out", str(out)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "is each run better or worse than float on the same 17 films of 16 patients?" in said
    rows = _paired_rows(out)
    assert [(r["figure"], int(r["films"]), int(r["patients"])) for r in rows] == [
        (figure, 17, 16) for figure in ("auc", "sensitivity", "specificity", "net_benefit")]


def test_a_paired_test_is_refused_saying_why_where_the_films_or_labels_differ(
        three_class_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Evaluations whose predictions.csv list other paths, or another label, than the reference's, or whose
    metrics.json records other films, are not paired with it, each saying why; the table still shows them, and with
    nothing tested no compare_paired.csv is left from an earlier comparison. A predictions.csv a film short is
    refused by its name."""
    multiclass, pneumonia = three_class_runs
    out = tmp_path / "out"
    compare_runs([multiclass, pneumonia], out)
    assert (out / "compare_paired.csv").is_file()
    edited = {}
    for name, edit in (("moved", lambda row: row | {"path": row["path"].replace("test", "elsewhere")}),
                       ("relabelled", lambda row: row | {"label": "PNEUMONIA" if row["label"] == "NORMAL" else
                                                         "NORMAL"})):
        folder = edited[name] = shutil.copytree(pneumonia, tmp_path / name)
        with (folder / "predictions.csv").open() as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, list(reader)
        rows[0] = edit(rows[0])
        with (folder / "predictions.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)
        _recorded_as_written(folder)  # as an evaluation of films under other paths or labels writes them
    other = shutil.copytree(pneumonia, tmp_path / "other")
    m = json.loads((other / "metrics.json").read_text())
    (other / "metrics.json").write_text(json.dumps(m | {"films": "sha256:" + "0" * 64, "data": "a site's films"}))
    assert main(["compare", str(multiclass), *map(str, edited.values()), str(other), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "* moved: not in the paired test: its films are listed by other paths than eval-multiclass's (e.g. " \
        in printed
    assert "* relabelled: not in the paired test: its labels are not eval-multiclass's (e.g. " in printed
    assert ("* other: not in the paired test: other films or labels than eval-multiclass's (metrics.json's films "
            "differ)") in printed
    assert "is each run better or worse" not in printed
    assert not (out / "compare_paired.csv").exists()
    damaged = shutil.copytree(pneumonia, tmp_path / "damaged")
    text = (damaged / "predictions.csv").read_text().splitlines()
    (damaged / "predictions.csv").write_text("\n".join(text[:-1]))  # a film short
    _recorded_as_written(damaged)  # its metrics.json edited to match: the file is still read as a film short
    with pytest.raises(ValueError, match=re.escape(f"{damaged / 'predictions.csv'}: its probabilities are not 16 "
                                                   "figures in [0, 1], one a film of its metrics.json")):
        compare_runs([multiclass, damaged])


def test_runs_are_named_apart_and_one_folder_given_twice_is_refused(three_class_runs: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    """Two sites' run/eval folders were both named run/eval in every table and figure, which no reader could tell
    apart: each is named by as many folders above it as tell it from the others. One folder given twice (by another
    spelling, or a link) was tested against itself, a certain "no difference" counted in the others' adjusted p's:
    it is refused."""
    multiclass, pneumonia = three_class_runs
    first, second = (shutil.copytree(folder, tmp_path / site / "run" / "eval")
                     for site, folder in (("a", multiclass), ("b", pneumonia)))
    assert [r.run for r in compare_runs([first, second, pneumonia])] == [
        "a/run/eval", "b/run/eval", f"{pneumonia.parent.parent.name}/{pneumonia.parent.name}/eval-two-stage"]
    (tmp_path / "link").symlink_to(second)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'link'} is given twice (the same folder as another "
                                                   "run): give each run once")):
        compare_runs([first, second, tmp_path / "link"])


def _recorded_as_written(folder: Path) -> None:
    """An evaluate folder's metrics.json made to record the checksum of the predictions.csv beside it, as evaluate
    records the file it writes."""
    m = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps(m | {
        "predictions_checksum": bytes_sha256((folder / "predictions.csv").read_bytes())}))


def test_a_predictions_csv_not_written_with_its_metrics_json_is_never_paired_as_its_scores(
        three_class_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another evaluation's predictions.csv over an evaluate folder's own (a copy made by hand, or the file an
    evaluation stopped between writing it and metrics.json leaves) was paired as that folder's scores: the paired
    table gave the other bundle's AUC beside the folder's own figures. It is refused, naming the file; a folder whose
    metrics.json records no checksum of its predictions.csv is left out of the paired test, saying why."""
    multiclass, pneumonia = three_class_runs
    swapped = shutil.copytree(pneumonia, tmp_path / "swapped")
    shutil.copyfile(multiclass / "predictions.csv", swapped / "predictions.csv")
    with pytest.raises(ValueError, match=re.escape(f"{swapped / 'predictions.csv'} is not the file evaluate wrote "
                                                   "with the metrics.json beside it")):
        compare_runs([pneumonia, swapped])
    older = shutil.copytree(pneumonia, tmp_path / "older")
    m = json.loads((older / "metrics.json").read_text())
    (older / "metrics.json").write_text(json.dumps({k: v for k, v in m.items() if k != "predictions_checksum"}))
    assert main(["compare", str(multiclass), str(older)]) == 0
    assert ("* older: not in the paired test: its metrics.json records no checksum of its predictions.csv (an "
            "evaluation by an older version): evaluate it again") in capsys.readouterr().out
    (older / "metrics.json").write_bytes(b"\xad\xff{")  # a damaged disk's bytes: named, not the decoder's words alone
    with pytest.raises(ValueError, match=re.escape(f"{older / 'metrics.json'} is not valid JSON")):
        compare_runs([multiclass, older])


def test_paired_evaluations_get_their_net_benefit_difference_at_each_threshold_of_the_decision_curve(
        three_class_runs: tuple[Path, Path], tmp_path: Path) -> None:
    """The pneumonia bundle against the three-class one on the same test films: net_benefit_difference.csv gives the
    second's net benefit less the first's at every threshold probability of the first's decision curve (each from
    the probabilities in predictions.csv, as net_benefit computes a decision curve), each with its pointwise 95% CI;
    at the reference's own threshold, 0.3, the difference and interval compare_paired.csv gives, from the same
    resamples of patients."""
    multiclass, pneumonia = three_class_runs
    out = tmp_path / "out"
    compare_runs([multiclass, pneumonia], out)
    with (out / "net_benefit_difference.csv").open() as f:
        rows = list(csv.DictReader(f))
    curve = json.loads((multiclass / "metrics.json").read_text())["decision_curve"]
    assert list(rows[0]) == ["run", "reference", "threshold", "difference", "low", "high", "no_ci"]
    assert {(r["run"], r["reference"]) for r in rows} == {("eval-two-stage", "eval-multiclass")}
    assert [float(r["threshold"]) for r in rows] == pytest.approx(curve["threshold"])
    benefits = []
    for folder in (multiclass, pneumonia):
        with (folder / "predictions.csv").open() as f:
            films = list(csv.DictReader(f))
        benefits.append(np.array(net_benefit([int(row["label"].casefold() != "normal") for row in films],
                                             [float(row["probability"]) for row in films],
                                             curve["threshold"])["net_benefit"]))
    assert [float(r["difference"]) for r in rows] == pytest.approx((benefits[1] - benefits[0]).tolist())
    for r in rows:  # each interval of positive width, or none where too few patients' films are called apart
        if r["low"] == r["high"] == "":
            assert r["no_ci"].startswith(("both runs call every film alike", "the runs call differently the films of"))
        else:
            assert float(r["low"]) <= float(r["difference"]) <= float(r["high"])
            assert float(r["low"]) < float(r["high"]) and r["no_ci"] == ""
    assert any(r["low"] for r in rows)
    [last] = [r for r in rows if float(r["threshold"]) == pytest.approx(0.99)]
    assert (last["low"], last["no_ci"]) == ("", "both runs call every film alike")
    [at] = [r for r in rows if float(r["threshold"]) == pytest.approx(0.3)]
    [paired] = [r for r in _paired_rows(out) if r["figure"] == "net_benefit"]
    assert [at[key] for key in ("difference", "low", "high", "no_ci")] == [
        paired[key] for key in ("difference", "difference_low", "difference_high", "no_ci")]


def test_the_decision_figure_draws_each_runs_curve_with_its_band_and_the_paired_differences(
        two_runs: tuple[Path, Path], three_class_runs: tuple[Path, Path], tmp_path: Path) -> None:
    """compare_decision_curve.png: the evaluations' decision curves on one axes, each with its 95% CI as a band, one
    evaluated before intervals were given (no net_benefit_low and _high) drawn without one and said so in the
    legend, treat all at the films' prevalence once for runs on one set of films, treat none, and the training run,
    which has no curve, named in the legend; beside them a panel of each paired run's net benefit less the
    reference's, as net_benefit_difference.csv gives it, with its pointwise band, said not to be a simultaneous one.
    Compared with no evaluation among the runs, neither that figure nor net_benefit_difference.csv is left."""
    run, _ = two_runs
    multiclass, pneumonia = three_class_runs
    older = shutil.copytree(pneumonia, tmp_path / "eval-older")
    m = json.loads((older / "metrics.json").read_text())
    m["decision_curve"] = {k: v for k, v in m["decision_curve"].items() if k not in ("net_benefit_low",
                                                                                     "net_benefit_high")}
    (older / "metrics.json").write_text(json.dumps(m))
    out = tmp_path / "out"
    runs = compare_runs([run, multiclass, pneumonia, older], out)
    assert (out / "compare_decision_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves, differences = decision_figure(runs).axes
    by_label = {line.get_label(): line for line in curves.lines}
    prevalence = json.loads((multiclass / "metrics.json").read_text())["prevalence"]
    assert list(by_label) == ["eval-multiclass", "eval-two-stage", "eval-older (no 95% CI in its metrics.json)",
                              f"treat all at {prevalence:.1%} prevalence", "treat none"]
    for folder, label in ((multiclass, "eval-multiclass"), (pneumonia, "eval-two-stage")):
        curve = json.loads((folder / "metrics.json").read_text())["decision_curve"]
        assert list(by_label[label].get_xdata()) == pytest.approx(curve["threshold"])
        assert list(by_label[label].get_ydata()) == pytest.approx(curve["net_benefit"])
    assert len(curves.collections) == 2  # the bands of the two evaluations that have them
    legend = [text.get_text() for text in curves.get_legend().get_texts()]
    assert legend[-2:] == ["95% CI of each run's net benefit", "tiny-run: no decision curve in its metrics.json"]
    with (out / "net_benefit_difference.csv").open() as f:
        rows = list(csv.DictReader(f))
    for line, name in zip(differences.lines[1:], ("eval-two-stage", "eval-older")):
        assert line.get_label() == f"{name} less eval-multiclass"
        assert list(line.get_ydata()) == pytest.approx([float(r["difference"]) for r in rows if r["run"] == name])
    assert len(differences.collections) == 2  # each paired run's pointwise band, the older one's too
    assert ("pointwise 95% CI at each threshold (not a simultaneous band)"
            in [text.get_text() for text in differences.get_legend().get_texts()])
    compare_runs([run], out)
    assert not (out / "compare_decision_curve.png").exists() and not (out / "net_benefit_difference.csv").exists()


def test_a_damaged_decision_curve_is_refused_by_its_file(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    """A decision curve whose net benefit is above 1 or text, whose lists differ in length, whose threshold
    probabilities leave (0, 1) or fall, or whose interval's end is text, would be drawn as the run's, or end the
    figure in a plotting error naming no file; it is refused by its file."""
    run = shutil.copytree(two_runs[1], tmp_path / "damaged")
    metrics = json.loads((run / "metrics.json").read_text())
    curve = metrics["decision_curve"]
    for damaged in (curve | {"net_benefit": [1.5] * len(curve["threshold"])}, curve | {"treat_all": "0.2"},
                    curve | {"net_benefit": curve["net_benefit"][:-1]}, curve | {"threshold": curve["threshold"][::-1]},
                    curve | {"threshold": [0.0, *curve["threshold"][1:]]},
                    curve | {"net_benefit_low": ["0.1"] * len(curve["threshold"])}, [0.1]):
        (run / "metrics.json").write_text(json.dumps(metrics | {"decision_curve": damaged}))
        with pytest.raises(ValueError, match=re.escape(f"{run / 'metrics.json'}: decision_curve is not threshold ")):
            compare_runs([two_runs[1], run], tmp_path / "out")
