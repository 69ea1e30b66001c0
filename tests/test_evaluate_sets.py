"""What evaluate makes of the set it is given: films outside the task, copies of one film, one class only, and what
the card says of its threshold."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from pneumoscan import cli
from pneumoscan.core.names import results_csv
from pneumoscan.data.layouts import discover, write_manifest
from pneumoscan.evaluation.compare import compare_runs
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.models.card import load_card, save_card


def test_an_etiology_bundle_on_normal_films_says_what_it_left_out(tiny_etiology_bundle: Path, tiny_dataset: Path,
                                                                  tmp_path: Path, caplog) -> None:
    """The etiology task reads pneumonia films only: a set's NORMAL films were left out without a word (a report
    of 8 films on a set of 16), and a set of NORMAL films alone was refused as having no readable film."""
    with caplog.at_level("WARNING"):
        metrics = evaluate(tiny_etiology_bundle, tiny_dataset, split="test")
    assert metrics["n"] == 8 and metrics["left_out"] == [
        {"films": 8, "reason": "of class NORMAL, which the etiology task does not read (bacteria, virus)"}]
    assert f"8 NORMAL film(s) of {tiny_dataset} are outside the etiology task (bacteria, virus) and are left out: " \
           "the figures are of the other 8" in caplog.text
    normal = [r for r in discover(tiny_dataset).split("test") if r.label == "NORMAL"]
    write_manifest(normal, tmp_path / "normal.csv")
    with pytest.raises(ValueError, match=r"for the etiology task: 8 NORMAL film\(s\), which it does not read "
                                         r"\(bacteria, virus\)"):
        evaluate(tiny_etiology_bundle, tmp_path / "normal.csv")


def test_the_report_and_metrics_json_say_which_films_the_figures_left_out_and_why(
        tiny_etiology_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """NORMAL films given to an etiology bundle, pneumonia films that say neither bacteria nor virus and a file that
    cannot be read are left out of the figures: said on the terminal only, a reviewer of report.html or
    metrics.json could not tell that 11 of the 19 files given were not among the 8 films measured, nor why."""
    data = tmp_path / "films"
    shutil.copytree(tiny_dataset / "test", data)
    for path in sorted((data / "PNEUMONIA").glob("*.jpeg"))[:2]:
        path.rename(path.with_name(path.name.replace("_bacteria_", "_").replace("_virus_", "_")))
    (data / "NORMAL" / "broken.jpeg").write_bytes(b"not a film")
    metrics = evaluate(tiny_etiology_bundle, data, out_dir=tmp_path / "eval")
    assert metrics["n"] == 6
    left_out = [{"films": 1, "reason": "could not be read"},
                {"films": 8, "reason": "of class NORMAL, which the etiology task does not read (bacteria, virus)"},
                {"films": 2, "reason": "of class PNEUMONIA that say neither bacteria nor virus (in their names or a "
                                       "manifest's subtype column), which the etiology task needs"}]
    assert metrics["left_out"] == left_out
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["left_out"] == left_out
    page = (tmp_path / "eval" / "report.html").read_text()
    assert ("<tr><th>left out of the figures</th><td>1 film could not be read; 8 films of class NORMAL, which the "
            "etiology task does not read (bacteria, virus); 2 films of class PNEUMONIA that say neither") in page


def test_copies_of_one_film_in_the_set_count_as_one_patient_in_the_intervals(tiny_bundle: Path, tiny_dataset: Path,
                                                                             tmp_path: Path, caplog) -> None:
    """The same films again under other names (no patient id) doubled n and narrowed every interval, with no
    word said; audit found them at once."""
    films = [dataclasses.replace(r, split="") for r in discover(tiny_dataset).split("test")]
    copies = []
    for r in films:
        copy = tmp_path / "copies" / f"copy-{Path(r.path).name}"
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(r.path, copy)
        copies.append(dataclasses.replace(r, path=str(copy), patient=str(copy)))
    write_manifest(films, tmp_path / "films.csv")
    write_manifest(films + copies, tmp_path / "twice.csv")
    once = evaluate(tiny_bundle, tmp_path / "films.csv")
    with caplog.at_level("WARNING"):
        twice = evaluate(tiny_bundle, tmp_path / "twice.csv")
    assert f"32 film(s) of {tmp_path / 'twice.csv'} are copies of others in it under other names" in caplog.text
    assert len(twice["copies"]) == 16 and twice["n"] == 32
    assert twice["ci_unit"] == "patient" and twice["patients"]["all"] == 16
    for name in ("sensitivity", "specificity", "auc"):  # at least as wide as on the films once, not narrower
        assert twice["ci"][name][0] <= once["ci"][name][0] and twice["ci"][name][1] >= once["ci"][name][1], name


def test_a_picture_scored_under_two_labels_or_against_its_name_is_warned_of(tiny_bundle: Path, tiny_dataset: Path,
                                                                             tmp_path: Path, caplog) -> None:
    """A NORMAL film copied in as PNEUMONIA (one of the two is scored against a wrong label), or a film named bacteria
    listed as virus, was scored as listed without a word, as split and train warn of them."""
    films = [dataclasses.replace(r, split="") for r in discover(tiny_dataset).split("test")]
    normal = next(r for r in films if r.label == "NORMAL")
    shutil.copyfile(normal.path, tmp_path / "copy.jpeg")
    bacterial = next(r for r in films if r.subtype == "bacteria")
    listed = [dataclasses.replace(r, subtype="virus") if r is bacterial else r for r in films]
    write_manifest([*listed, dataclasses.replace(normal, path=str(tmp_path / "copy.jpeg"), label="PNEUMONIA",
                                                 subtype="", patient="")], tmp_path / "films.csv")
    with caplog.at_level("WARNING"):
        metrics = evaluate(tiny_bundle, tmp_path / "films.csv")
    assert "2 label conflict(s): a file name or a duplicate (exact or near) contradicts a label" in caplog.text
    assert sorted((c["kind"], c["reason"]) for c in metrics["label_conflicts"]) == [
        ("exact duplicate", "one picture labelled NORMAL and PNEUMONIA"),
        ("name", "named bacteria, labelled PNEUMONIA virus")]
    assert evaluate(tiny_bundle, tiny_dataset, split="test")["label_conflicts"] == []


def test_a_card_records_no_evaluation_on_one_class(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """On pneumonia films alone the card had recorded a precision of 1.0 and an F1 beside no AUC; the summary on
    screen, metrics.json and the threshold table gave them as figures still, which only the report called n/a."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    sick = [r for r in discover(tiny_dataset).split("test") if r.label == "PNEUMONIA"]
    write_manifest(sick, tmp_path / "sick.csv")
    with pytest.raises(ValueError, match=r"add_to_card \(--add-to-card\) needs films of both classes "
                                         r"\(NORMAL and PNEUMONIA\)"):
        evaluate(bundle, tmp_path / "sick.csv", add_to_card=True)
    assert load_card(bundle).external_evaluations == load_card(tiny_bundle).external_evaluations
    assert evaluate(bundle, tmp_path / "sick.csv")["n"] == len(sick)  # the report itself is still made
    assert cli.main(["evaluate", str(bundle), str(tmp_path / "sick.csv"), "--out", str(tmp_path / "e")]) == 0
    shown = capsys.readouterr().out
    for name in ("precision", "npv", "f1"):
        assert f"{name:>12}: n/a (no NORMAL films: it depends on both classes)" in shown, shown
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    for block in (metrics, metrics["at_0_5"]):
        assert [(block[k], block["ci"][k]) for k in ("precision", "npv", "f1")] == [(None, None)] * 3
    assert all(row["precision"] is None and row["npv"] is None for row in metrics["threshold_table"])
    assert {row["precision"] for row in csv.DictReader((tmp_path / "e" / "sensitivity_table.csv").open())} == {""}


def test_the_report_says_what_the_card_says_of_its_threshold(tiny_bundle: Path, tiny_dataset: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A threshold the card calls a guess (chosen on too few positives) was reported as a plain policy, and the
    films that chose it were not counted. The screen said nothing of it at all: the figures it prints are at that
    threshold, and a reader of the screen alone took them for figures at a sound one."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    card = load_card(bundle)
    guess = ("only 4 positive films: a sensitivity of 0.95 cannot be shown on fewer than 20, so this threshold is "
             "a guess")
    save_card(bundle, dataclasses.replace(card, threshold_caveat=guess))
    assert evaluate(bundle, tiny_dataset, split="test")["caveats"] == [guess]  # one report drawn: with two, below
    # two caveats, neither ending in a full stop, read as one run-on sentence when joined by a space alone
    uncalibrated = "the probabilities are not calibrated"
    save_card(bundle, dataclasses.replace(card, threshold_caveat=guess, temperature_caveat=uncalibrated))
    capsys.readouterr()
    assert cli.main(["evaluate", str(bundle), str(tiny_dataset), "--split", "test", "--out",
                     str(tmp_path / "eval")]) == 0
    html = (tmp_path / "eval" / "report.html").read_text()
    assert guess in html and f"chosen on {card.val_metrics['n']} films" in html
    assert f"{uncalibrated}; {guess}" in html
    shown = capsys.readouterr().out
    assert f"caveat: {uncalibrated}\n" in shown and f"caveat: {guess}\n" in shown


def test_the_report_says_what_the_second_stages_card_says_of_its_threshold(
    tiny_bundle: Path, tiny_etiology_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """evaluate --etiology: the three-class calls are made at the second stage's threshold too, and its probabilities
    enter the three-class reliability diagram, yet only the first stage's policy and caveats were reported: a second
    stage whose threshold is a guess and whose temperature calibrates nothing read as a sound one."""
    second = tmp_path / "etiology"
    shutil.copytree(tiny_etiology_bundle, second)
    card = load_card(second)
    guess, uncalibrated = "only 3 positive films: this threshold is a guess", "the probabilities are not calibrated"
    save_card(second, dataclasses.replace(card, threshold_caveat=guess, temperature_caveat=uncalibrated))
    capsys.readouterr()
    assert cli.main(["evaluate", str(tiny_bundle), str(tiny_dataset), "--split", "test", "--out",
                     str(tmp_path / "eval"), "--etiology", str(second)]) == 0
    shown = capsys.readouterr().out
    assert f"etiology caveat: {uncalibrated}\n" in shown and f"etiology caveat: {guess}\n" in shown
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # after what the card's figures say of its ranking (the tiny stage's validation AUC interval reaches 0.5)
    assert metrics["two_stage"]["etiology_caveats"] == [card.ranking_caveat, uncalibrated, guess]
    html = (tmp_path / "eval" / "report.html").read_text()
    assert f"{uncalibrated}; {guess}" in html
    assert (f"{card.threshold:.4f} ({card.threshold_policy}; chosen on {card.val_metrics['n']} films)"
            in html.replace("&gt;", ">"))


def test_a_results_file_never_hands_a_spreadsheet_a_formula(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A film given as =HYPERLINK(...).jpeg, or a manifest's patient @SUM(1+5), was written as the first characters
    of a cell of predict's results and of predictions.csv, which a spreadsheet runs as a formula."""
    from pneumoscan import cli

    film = next(r for r in discover(tiny_dataset).split("test") if r.label == "NORMAL")
    name = '=HYPERLINK("evil.example","open").jpeg'
    (tmp_path / "films").mkdir()
    shutil.copyfile(film.path, tmp_path / "films" / name)
    monkeypatch.chdir(tmp_path / "films")
    assert cli.main(["predict", str(tiny_bundle), name, "--out", str(tmp_path / "rows.csv")]) == 0
    assert (tmp_path / "rows.csv").read_text().splitlines()[1].startswith('"\'=HYPERLINK(""evil.example""')
    write_manifest([dataclasses.replace(film, patient="@SUM(1+5)", split="")], tmp_path / "m.csv")
    evaluate(tiny_bundle, tmp_path / "m.csv", out_dir=tmp_path / "eval")
    assert ",'@SUM(1+5)," in (tmp_path / "eval" / "predictions.csv").read_text()
    assert discover(tmp_path / "m.csv").records[0].patient == "@SUM(1+5)"  # a manifest reads back as written
    # compare.csv names each run by its folder, which people name
    shutil.copytree(tmp_path / "eval", tmp_path / "=SUM(1+5)")
    compare_runs([tmp_path / "=SUM(1+5)"], tmp_path / "compared")
    assert (tmp_path / "compared" / "compare.csv").read_text().splitlines()[1].startswith("'=SUM(1+5),")


def test_every_results_csv_writes_text_not_formulas_and_a_list_as_one_cell() -> None:
    """The one writer of results CSVs (predict, evaluate, cv's oof.csv, compare): a patient, a name or a warning
    that starts as a formula gets the apostrophe; a number, a negative one too, stays a number."""
    text = results_csv(["patient", "probability", "warnings", "shift"],
                       [{"patient": "+cmd", "probability": 0.25, "warnings": ["-a", "b"], "shift": -1.5}])
    assert text.splitlines() == ["patient,probability,warnings,shift", "'+cmd,0.25,'-a; b,-1.5"]
