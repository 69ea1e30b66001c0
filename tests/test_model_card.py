"""The model card: written by training from bundle.json, extended by `evaluate --add-to-card` without touching the
weights, and shown by the web service."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from pneumoscan import cli
from pneumoscan.core.metrics import AUC_INTERVAL, FILM_UNIT_CAVEAT, ci_method_sentence, with_ci
from pneumoscan.data.layouts import discover, make_record, write_manifest
from pneumoscan.evaluation.model_card import (CARD_METRICS, MODEL_CARD, VALIDATION_PROPORTIONS,
                                              MACRO_AUC_NAME, card_summary, front_matter, render, today,
                                              intended_use, markdown_text, write_model_card, _taught_who)
from pneumoscan.inference.onnx_runtime import INT8_NAME, spec_path
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.evaluation.subgroups import difference_said, differences_said, table_rows
from pneumoscan.models.card import (ENSEMBLE, INIT_SAMPLE, MEMBER_SAMPLES, SAMPLED_FROM, TEACHER_SAMPLES, TRAINED_BY,
                                   BundleCard, load_card, save_card, trained_sample)
from pneumoscan.serving.app import create_app
from tests.builders import site_manifest
from tests.conftest import _xray_like


def front_matter_and_body(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n"), "Hugging Face cards open with YAML front matter"
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def test_training_writes_the_model_card(tiny_bundle: Path) -> None:
    card = load_card(tiny_bundle)
    text = (tiny_bundle / MODEL_CARD).read_text()
    meta, body = front_matter_and_body(text)
    assert meta["license"] == "cc-by-4.0" and "pneumonia" in meta["tags"]
    assert any("10.17632/rscbjbr9sj.2" in d for d in meta["datasets"])
    (validation,) = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == card.model_id
    figures = {m["type"]: m["value"] for m in validation["metrics"]}
    assert figures["roc_auc"] == card.val_metrics["auc"] and figures["recall"] == card.val_metrics["sensitivity"]
    sections = [line[3:] for line in body.splitlines() if line.startswith("## ")]
    assert sections == ["Intended use", "Out of scope", "Training data", "Recipe", "Operating threshold",
                        "Validation figures", "Evaluations on other data", "Limitations", "How to cite the data"]
    assert card.data_checksum.startswith("sha256:") and card.versions["torch"]
    for needed in ("aged 1 to 5", "Guangzhou", "Research use only", "CC BY 4.0", card.data_fingerprint,
                   card.data_checksum, f"torch {card.versions['torch']}",
                   f"model: {card.model}", f"{card.threshold:.4f}", "chosen on these", "Kermany D, Zhang K, Goldbaum M",
                   "Mendeley Data, V2", "Cell 2018", "10.1016/j.cell.2018.02.010"):
        assert needed in body, needed
    assert text == render(card), "the card is written from bundle.json alone"


def test_add_to_card_records_an_evaluation_and_keeps_the_weights(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    weights = (bundle / "model.safetensors").read_bytes()
    out = tmp_path / "eval"
    args = ["evaluate", str(bundle), str(tiny_dataset), "--split", "test", "--out", str(out), "--add-to-card"]
    assert cli.main([*args, "--data-name", "synthetic test films"]) == 0
    assert cli.main([*args, "--tta"]) == 0  # default name: the data folder and split

    assert (bundle / "model.safetensors").read_bytes() == weights
    card = load_card(bundle)
    first, second = card.external_evaluations
    reported = json.loads((out / "metrics.json").read_text())  # the second (TTA) run's report
    assert (first["data"], first["scores"], second["data"], second["scores"]) == (
        "synthetic test films", "plain", "chest_xray/test", "tta")
    assert second["n"] == reported["n"] == 16 and (second["n_positive"], second["n_negative"]) == (8, 8)
    assert second["threshold"] == reported["threshold"] == card.tta_threshold and first["threshold"] == card.threshold
    for key in ("auc", "sensitivity", "specificity", "precision", "npv", "accuracy", "f1"):
        assert second["metrics"][key] == {"value": reported[key], "ci": reported["ci"][key]}, key
    assert (second["patients"], second["prevalence"]) == (reported["patients"], reported["prevalence"])
    assert first["date"] == today()
    # the decision curve's net benefit at the threshold, with its interval, beside treat all and treat none
    at = reported["net_benefit"]
    assert second["net_benefit"] == {"value": at["net_benefit"], "ci": at["ci"], "treat_all": at["treat_all"],
                                     "treat_none": 0.0}

    meta, body = front_matter_and_body((bundle / MODEL_CARD).read_text())
    results = meta["model-index"][0]["results"]
    # the bundle was given alone (no run's split.csv beside it): its films could not be checked to be new to it
    assert [r["dataset"]["name"] for r in results][1:] == [
        f"{name} (films not checked against its training films)"
        for name in ("synthetic test films", "chest_xray/test")]
    assert first["films_checked"] is second["films_checked"] is False
    assert "no split.csv of its run beside it" in first["caveats"][0]
    assert "| **not checked** |" in body and f"- {today()}, on synthetic test films: {first['caveats'][0]}" in body
    # each figure says the threshold it was measured at (the TTA evaluation's is another than the plain one's), but
    # the AUC, which ranks the films at every threshold: "ROC AUC (at threshold 0.3348)" read as one threshold's
    assert [[m["name"] for m in r["metrics"][:2]] for r in results] == [
        ["ROC AUC (validation)", f"Sensitivity (validation, at threshold {card.val_metrics['threshold']:.4f})"],
        ["ROC AUC", f"Sensitivity (at threshold {card.threshold:.4f})"],
        ["ROC AUC", f"Sensitivity (at threshold {card.tta_threshold:.4f})"]]
    assert "| synthetic test films | 16 films (8 PNEUMONIA, 8 NORMAL) | films | plain," in body
    said = " ".join(body.split())
    assert ("Net benefit at the threshold (decision curve analysis; true positives a film, net of false positives "
            "weighed by the threshold's odds), against calling every film PNEUMONIA (treat all) and none (treat none): "
            f"{today()}, on synthetic test films, at {first['threshold']:.4f}: {first['net_benefit']['value']:.3f} "
            f"(95% CI {first['net_benefit']['ci'][0]:.3f} to {first['net_benefit']['ci'][1]:.3f}); treat all "
            f"{first['net_benefit']['treat_all']:.3f}, treat none 0.000; {today()}, on chest_xray/test, at "
            f"{second['threshold']:.4f}: {at['net_benefit']:.3f} (95% CI {at['ci'][0]:.3f} to {at['ci'][1]:.3f})"
            ) in said
    assert f"for ROC AUC, {AUC_INTERVAL}" in body and "bootstrap for AUC" not in body  # as computed
    assert FILM_UNIT_CAVEAT in body  # one film a patient: as the report and the screen say it
    mixed = render(dataclasses.replace(card, external_evaluations=[first | {"ci_unit": "patient"}, second]))
    assert ("95% CIs of synthetic test films count patients, not films" in mixed and "(Korn-Graubard)" in mixed
            and "95% CIs of chest_xray/test: exact Clopper-Pearson" in mixed), "each data under the unit it counts"
    assert (bundle / MODEL_CARD).read_text() == render(card)
    assert load_card(tiny_bundle).external_evaluations == [], "the copy was recorded in, not the original"
    auc = first["metrics"]["auc"]["value"]
    assert f"plain, {first['threshold']:.4f} | {auc:.3f} (95% CI " in body
    no_ci = dataclasses.replace(card, external_evaluations=[
        first | {"metrics": first["metrics"] | {"auc": {"value": auc, "ci": [None, None]}}}])
    assert f"plain, {first['threshold']:.4f} | {auc:.3f} (no 95% CI) |" in render(no_ci), (
        "a bare figure reads as certain")
    # a net benefit below 0 (a model that harms at its threshold) loads as recorded; an interval high to low does not
    harms = first["net_benefit"] | {"value": -0.2, "ci": [-0.35, -0.05], "treat_all": -1.5}
    save_card(bundle, dataclasses.replace(card, external_evaluations=[first | {"net_benefit": harms}]))
    assert load_card(bundle).external_evaluations[0]["net_benefit"] == harms
    save_card(bundle, dataclasses.replace(card, external_evaluations=[first | {"net_benefit": harms | {
        "ci": [-0.05, -0.35]}}]))
    with pytest.raises(ValueError, match=r"net_benefit\.ci is \[-0\.05, -0\.35\], not an interval of net benefits"):
        load_card(bundle)


def test_an_evaluation_in_the_run_folder_is_recorded_as_checked_and_old_records_as_not_recorded(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, weight_sources_looked_up: list[str]
) -> None:
    """A bundle beside its run's split.csv has its films checked against its training films, and its record says
    so from that one check (the bundle's weight sources looked up once, not again for the record); a record
    written before the check was recorded loads and reads as not recorded, never as checked."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "run" / "bundle")
    shutil.copy(tiny_bundle.parent / "split.csv", tmp_path / "run")
    assert cli.main(["evaluate", str(bundle), str(tiny_dataset), "--split", "test", "--out", str(tmp_path / "e"),
                     "--add-to-card", "--data-name", "site C"]) == 0
    assert weight_sources_looked_up == [os.path.realpath(bundle)]
    card = load_card(bundle)
    [record] = card.external_evaluations
    # the tiny films are 64 px thumbnails, outside the model's scope: counted, and said beside "checked"
    assert record["films_checked"] is True and (record["unreadable"], record["outside_scope"]) == (0, 16)
    assert record["caveats"] == ["16 of the 16 films are outside the model's scope (evaluate's predictions.csv says "
                                 "why) and are scored and counted in the figures all the same"]
    meta, body = front_matter_and_body((bundle / MODEL_CARD).read_text())
    # the model-index, which tools read without the table, says so too
    assert meta["model-index"][0]["results"][1]["dataset"]["name"] == "site C (checked, with caveats)"
    assert body.count("| checked, **with caveats** (below) |") == 1 and "not checked |" not in body
    clean = dataclasses.replace(card, external_evaluations=[{**record, "caveats": []}])
    assert "| checked |" in render(clean) and "with caveats" not in render(clean)
    old = {k: v for k, v in record.items() if k not in ("films_checked", "caveats")}
    older = dataclasses.replace(card, external_evaluations=[old])
    save_card(bundle, older)
    assert load_card(bundle).external_evaluations == [old]
    assert "| not recorded |" in render(older) and "| checked |" not in render(older)
    # a name of the user's in a table cell: a "|" split the row (every figure a column off), a tag was markup
    named = dataclasses.replace(card, external_evaluations=[{**record, "data": "Site A | <b>2024</b>"}])
    row = next(line for line in render(named).splitlines() if line.startswith("| ") and "Site A" in line)
    assert "Site A \\| &lt;b>2024&lt;/b>" in row and row.replace("\\|", "").count("|") == 10  # 9 cells


def test_films_that_could_not_be_read_are_counted_in_the_cards_record(tiny_bundle: Path, tiny_dataset: Path,
                                                                       tmp_path: Path) -> None:
    """Figures on 4 films of 44 listed read as figures on the data: the record says how many were left out."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "run" / "bundle")
    shutil.copy(tiny_bundle.parent / "split.csv", tmp_path / "run")
    data = shutil.copytree(tiny_dataset / "test", tmp_path / "films")
    (data / "PNEUMONIA" / "person999_bacteria_1.jpeg").write_bytes(b"not a film")
    assert cli.main(["evaluate", str(bundle), str(data), "--out", str(tmp_path / "e"), "--add-to-card",
                     "--data-name", "site D"]) == 0
    [record] = load_card(bundle).external_evaluations
    assert (record["n"], record["unreadable"]) == (16, 1)
    assert record["caveats"][0] == ("1 of the 17 films given is left out of the figures, which are of the other 16 "
                                    "only: 1 film could not be read")
    assert "site D: 1 of the 17 films given is left out" in (bundle / MODEL_CARD).read_text()


def test_an_evaluations_record_says_what_its_figures_left_out_and_why(tiny_etiology_bundle: Path,
                                                                       films_some_left_out: Path,
                                                                       tmp_path: Path) -> None:
    """An etiology bundle evaluated on 17 files measures 6: its record counted the unreadable one alone, as "1 of
    the 7 films given", and said nothing of the 8 NORMAL films and 2 pneumonia films of no type left out."""
    bundle = shutil.copytree(tiny_etiology_bundle, tmp_path / "run" / "bundle")
    shutil.copy(tiny_etiology_bundle.parent / "split.csv", tmp_path / "run")
    assert cli.main(["evaluate", str(bundle), str(films_some_left_out), "--out", str(tmp_path / "e"),
                     "--add-to-card", "--data-name", "site E"]) == 0
    [record] = load_card(bundle).external_evaluations
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert record["n"] == 6 and record["left_out"] == metrics["left_out"] and len(metrics["left_out"]) == 3
    said = ("11 of the 17 films given are left out of the figures, which are of the other 6 only: 1 film could not be "
            "read; 8 films of class NORMAL, which the etiology task does not read (bacteria, virus); 2 films of class "
            "PNEUMONIA that say neither bacteria nor virus")
    assert record["caveats"][0].startswith(said)
    text = (bundle / MODEL_CARD).read_text()
    assert f"site E: {said}" in text and "| 6 films (3 virus, 3 bacteria); 11 left out |" in text


def test_an_evaluations_label_conflicts_are_in_its_card_record_and_model_card(tiny_bundle: Path, tiny_dataset: Path,
                                                                               tmp_path: Path) -> None:
    """Films whose labels their names or a copy contradict are listed in evaluate's metrics.json; the card's record
    of the evaluation keeps the same list, MODEL_CARD.md says so among the record's caveats, and the service, which
    shows no paths of the machine that evaluated, leaves it out."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    films = discover(tiny_dataset).split("test")
    sick = next(r for r in films if "bacteria" in Path(r.path).name)
    misfiled = tmp_path / "misfiled" / Path(sick.path).name  # a bacteria film, listed as NORMAL too
    misfiled.parent.mkdir()
    shutil.copyfile(sick.path, misfiled)
    site = tmp_path / "site.csv"
    write_manifest([make_record(r.path, r.label) for r in films] + [make_record(str(misfiled), "NORMAL")], site)
    assert cli.main(["evaluate", str(bundle), str(site), "--out", str(tmp_path / "e"), "--add-to-card",
                     "--data-name", "site D"]) == 0
    conflicts = json.loads((tmp_path / "e" / "metrics.json").read_text())["label_conflicts"]
    assert {c["reason"] for c in conflicts} == {"named bacteria, labelled NORMAL",
                                                "one picture labelled NORMAL and PNEUMONIA bacteria"}
    [record] = load_card(bundle).external_evaluations
    assert record["label_conflicts"] == conflicts
    body = (bundle / MODEL_CARD).read_text()
    assert f"- {today()}, on site D: 2 label conflict(s) among the films, scored as labelled" in body
    assert "label_conflicts" not in card_summary(load_card(bundle))["external_evaluations"][0]
    clean = dataclasses.replace(load_card(bundle), external_evaluations=[record | {"label_conflicts": []}])
    assert "label conflict" not in render(clean)


def test_a_threshold_copy_says_where_the_threshold_in_force_was_chosen(tiny_bundle: Path, tiny_dataset: Path,
                                                                         tmp_path: Path) -> None:
    """After `pneumoscan threshold` the validation figures are still those at the training threshold: the card
    names that threshold beside them, and its limitations say where the threshold in force was chosen (they said
    the validation films)."""
    site = tmp_path / "site-b.csv"
    write_manifest([make_record(r.path, r.label) for r in discover(tiny_dataset).split("test")], site)
    assert cli.main(["threshold", str(tiny_bundle), str(site), "--youden", "--out", str(tmp_path / "retuned")]) == 0
    card = load_card(tmp_path / "retuned")
    meta, body = front_matter_and_body((tmp_path / "retuned" / MODEL_CARD).read_text())
    validation = meta["model-index"][0]["results"][0]["metrics"][1]["name"]
    assert validation == f"Sensitivity (validation, at threshold {card.val_metrics['threshold']:.4f})"
    assert f"The threshold in force ({card.threshold:.4f}) was chosen on site-b.csv" in body
    assert "The threshold and the temperature were chosen on the validation films" not in body
    assert "The threshold and the temperature were chosen on the validation films" in render(load_card(tiny_bundle))


def test_the_limitations_say_the_training_films_class_balance_as_the_card_counts_it(tiny_bundle: Path) -> None:
    """The class balance the card states is the training films' own, which training counts (24 films a class in the
    tiny dataset: near even, so nothing is said of it); 3 pneumonia films per normal one is said as such, 200 to 150
    is near even, and a card that counts none (an older bundle, an ensemble) gives no ratio (every card said 3 to 1)."""
    card = load_card(tiny_bundle)
    trained = card.train_config["training_films"]
    assert set(trained) == set(card.classes) and sum(trained.values()) + card.val_metrics["n"] == 48
    assert "unbalanced" not in render(card) and "3 pneumonia films" not in render(card)

    def said(counts: dict | None) -> str:
        config = {k: v for k, v in card.train_config.items() if k != "training_films"}
        limits = render(dataclasses.replace(card, train_config=config | ({"training_films": counts} if counts
                                                                          else {})))
        return limits.split("## Limitations")[1]

    assert ("The classes are unbalanced in the training films (1,341 NORMAL, 3,875 PNEUMONIA): about 2.9 PNEUMONIA "
            "films per NORMAL one." in said({"NORMAL": 1341, "PNEUMONIA": 3875}))
    assert "unbalanced" not in said({"NORMAL": 150, "PNEUMONIA": 200})
    assert "balance" not in said({"NORMAL": 150, "PNEUMONIA": 200})
    older = said(None)
    assert "The card records no count of the training films by class" in older and "unbalanced" not in older


def test_a_card_without_an_ece_does_not_say_its_figures_hold_one(tiny_bundle: Path) -> None:
    """A 0.2.0 bundle's card records no expected calibration error (its val_metrics has none): its intended use
    said that the ECE is among the validation figures, which hold none; it says that the card records none."""
    card = load_card(tiny_bundle)
    assert "ece" in card.val_metrics and "among the validation figures" in intended_use(card)
    old = dataclasses.replace(card, val_metrics={k: v for k, v in card.val_metrics.items()
                                                 if k not in ("ece", "ece_chance")})
    said = intended_use(old)
    assert "among the validation figures" not in said and "expected calibration error" in said
    assert "not recorded" in said and said in render(old)


def test_a_model_card_md_that_is_not_its_cards_text_is_named_and_rewritten_on_command(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    """A 0.2.0 bundle's MODEL_CARD.md keeps 0.2.0's text (it said the training films' class balance, which its card
    does not record), and predict and serve said nothing of it (pacs: test_interop). Each names it once the bundle is
    read, and `pneumoscan card` prints the text of the card, writing nothing until --write, which rewrites
    MODEL_CARD.md alone. A bundle whose file is its card's text (the fixture's, one evaluate --add-to-card rewrote)
    is not named."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    text = (bundle / MODEL_CARD).read_text()
    old = text.replace(intended_use(load_card(bundle)), "Research use only; not a medical device. Reads frontal "
                       "chest X-ray films ... and gives a calibrated probability of the positive class with a "
                       "thresholded label.")  # as 0.2.0 wrote it
    (bundle / MODEL_CARD).write_text(old)
    card_json = (bundle / "bundle.json").read_bytes()
    film = str(next((tiny_dataset / "test").rglob("*.jpeg")))
    with caplog.at_level("WARNING"):
        assert cli.main(["predict", str(bundle), film, "--out", str(tmp_path / "p.csv")]) == 0
        with TestClient(create_app(bundle)):
            pass
        capsys.readouterr()
        assert cli.main(["card", str(bundle)]) == 0
    assert capsys.readouterr().out == text and (bundle / MODEL_CARD).read_text() == old  # printed, not written
    named = [r.getMessage() for r in caplog.records if f"{bundle / MODEL_CARD} is not the text" in r.getMessage()]
    assert len(named) == 3 and all(f"pneumoscan card {bundle} --write" in m for m in named), named
    caplog.clear()
    assert cli.main(["card", str(bundle), "--write"]) == 0
    assert (bundle / MODEL_CARD).read_text() == text and (bundle / "bundle.json").read_bytes() == card_json
    assert cli.main(["evaluate", str(bundle), str(tiny_dataset), "--split", "test", "--out", str(tmp_path / "e"),
                     "--add-to-card", "--data-name", "site B"]) == 0
    with caplog.at_level("WARNING"):
        for checked in (tiny_bundle, bundle):
            assert cli.main(["predict", str(checked), film, "--out", str(tmp_path / "p.csv")]) == 0
            with TestClient(create_app(checked)):
                pass
    assert not [r for r in caplog.records if "is not the text" in r.getMessage()]


def test_pneumoscan_card_renders_the_text_once(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    """`pneumoscan card BUNDLE` prints the card's text and compares MODEL_CARD.md with that same text: it rendered
    it a second time to compare; --write renders it once too."""
    import pneumoscan.evaluation.model_card as model_card

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / MODEL_CARD).write_text("an old text\n")
    renders: list[BundleCard] = []
    real = model_card.render
    monkeypatch.setattr(model_card, "render", lambda card, int8=None: renders.append(card) or real(card, int8))
    with caplog.at_level("WARNING"):
        assert cli.main(["card", str(bundle)]) == 0
    assert capsys.readouterr().out == render(load_card(bundle)) and len(renders) == 1, len(renders)
    assert [r for r in caplog.records if f"{bundle / MODEL_CARD} is not the text" in r.getMessage()]
    renders.clear()
    assert cli.main(["card", str(bundle), "--write"]) == 0
    assert len(renders) == 1 and (bundle / MODEL_CARD).read_text() == render(load_card(bundle))


def test_the_service_shows_intended_use_and_card_figures(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    assert cli.main(["evaluate", str(bundle), str(tiny_dataset), "--split", "test", "--out", str(tmp_path / "e"),
                     "--add-to-card", "--data-name", "site B"]) == 0
    with TestClient(create_app(bundle)) as client:
        info = client.get("/v1/model").json()
    assert info["intended_use"] == intended_use(load_card(bundle)) and "aged 1 to 5" in info["intended_use"]
    assert "fitted on the validation films" in info["intended_use"]
    assert any("Adults" in line for line in info["out_of_scope"])
    recorded = load_card(bundle).external_evaluations
    # without the caveats, which name paths of the machine that evaluated; with whether the films were checked
    assert info["external_evaluations"] == [{k: v for k, v in r.items() if k not in ("caveats", "label_conflicts")}
                                            for r in recorded]
    assert info["external_evaluations"][0]["data"] == "site B" and recorded[0]["caveats"]
    assert info["external_evaluations"][0]["films_checked"] is False, "a bundle given alone: not checked"


def test_the_card_and_the_service_say_in_words_which_versions_trained_the_weights(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    """A run resumed from a 0.2.0 checkpoint records its trainers as [null, 0.3.0.dev0]: the settings block showed
    that null alone, and /v1/model named only the version that finished it. The recipe's prose says both in words,
    and /v1/model's trained_by says what `pneumoscan card` says; the settings block keeps the record, as it keeps the
    card's other records (training_films, init_card)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    card = load_card(bundle)
    assert "Its weights were trained by pneumoscan " in render(card)  # a run trained by one version names it
    save_card(bundle, dataclasses.replace(card, train_config={**card.train_config, TRAINED_BY: [None, "0.3.0.dev0"]}))
    said = ("Its weights were begun by a version of pneumoscan before 0.3, which recorded none, and finished by "
            "pneumoscan 0.3.0.dev0.")
    assert cli.main(["card", str(bundle)]) == 0
    text = capsys.readouterr().out
    assert said in text.split("## Recipe")[1].split("## ")[0], "said where the recipe is"
    assert "trained_by:\n- null\n- 0.3.0.dev0\n" in text, "the record kept in the settings block"
    with TestClient(create_app(bundle)) as client:
        assert client.get("/v1/model").json()["trained_by"] == said
    ensemble_like = dataclasses.replace(card, train_config={k: v for k, v in card.train_config.items()
                                                            if k != TRAINED_BY})
    assert "Its weights were" not in render(ensemble_like) and card_summary(ensemble_like)["trained_by"] is None


def test_a_pipe_in_place_of_the_int8_sidecar_does_not_hold_the_model_card(tiny_bundle: Path, tmp_path: Path) -> None:
    """The INT8 section is read from model.int8.onnx.json; a pipe there had been opened and waited on for ever (as
    bundle.json and the sidecars are refused when they are not regular files): the card is written without it."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / INT8_NAME).write_bytes(b"not a model")
    os.mkfifo(spec_path(bundle / INT8_NAME))
    writer = threading.Thread(target=write_model_card, args=(bundle, load_card(bundle)), daemon=True)
    writer.start()
    writer.join(timeout=20)
    assert not writer.is_alive(), "write_model_card waited on the pipe"
    assert "## INT8 model" not in (bundle / MODEL_CARD).read_text()


def test_the_card_keeps_the_validation_figures_intervals_and_their_unit(tiny_bundle: Path) -> None:
    """A bundle shipped alone carried its validation figures bare: the run's report had their intervals, the card
    and bundle.json none. They keep them, in the unit the run counted them in, and the card says which."""
    card, run = load_card(tiny_bundle), json.loads((tiny_bundle.parent / "metrics.json").read_text())
    assert card.val_metrics["ci_unit"] == run["ci_unit"]
    for key in ("auc", "sensitivity", "specificity"):
        assert card.val_metrics["ci"][key] == pytest.approx(run["ci"][key])
    body = (tiny_bundle / MODEL_CARD).read_text()
    low, high = run["ci"]["specificity"]
    assert f"| Specificity | {run['specificity']:.4f} (95% CI {low:.4f}-{high:.4f}) |" in body
    assert ci_method_sentence(run["ci_unit"], VALIDATION_PROPORTIONS, ("auc", "f1")) in body


def test_the_card_shows_npv_beside_precision_at_the_validation_films_prevalence(tiny_bundle: Path) -> None:
    """Training records NPV and the prevalence with the validation figures; the card shows NPV below precision,
    both marked as holding at that prevalence only, in the table and in the model-index, and the patients beside
    the films."""
    card = load_card(tiny_bundle)
    assert {"npv", "prevalence", "patients"} <= card.val_metrics.keys()
    val = card.val_metrics | {"precision": 0.9, "npv": 0.8125, "prevalence": 0.74, "patients": None,
                              "ci": card.val_metrics["ci"] | {"precision": [0.85, 0.95], "npv": [0.75, 0.875]}}
    meta, body = front_matter_and_body(render(dataclasses.replace(card, val_metrics=val)))
    assert ("| Precision (PPV) † | 0.9000 (95% CI 0.8500-0.9500) |\n"
            "| Negative predictive value (NPV) † | 0.8125 (95% CI 0.7500-0.8750) |") in body
    assert "† At this set's prevalence of 74.0% (PNEUMONIA films): at another, PPV and NPV differ." in body
    names = {m["type"]: m["name"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    at = f"validation, at threshold {val['threshold']:.4f}"
    assert names["npv"] == f"Negative predictive value (NPV) ({at}, at prevalence 74.0%)"
    assert names["recall"] == f"Sensitivity ({at})" and "npv" in meta["metrics"]
    assert f"On the {val['n']} films the temperature" in body
    patients = val | {"patients": {"positive": 3, "negative": 4, "all": 7}}
    body = render(dataclasses.replace(card, val_metrics=patients))
    assert f"On the {val['n']} films of 7 patients the temperature" in body


def test_the_cards_validation_figures_say_how_their_intervals_were_made(tiny_bundle: Path) -> None:
    """The validation table gives a 95% CI beside every figure but said only what they count ("The 95 % confidence
    intervals count patients."): not which method, though the AUC's and F1's are no textbook ones, while the
    evaluations' table below names its methods."""
    card = load_card(tiny_bundle)
    assert card.val_metrics["ci"]
    for unit in ("patient", "film"):
        body = render(dataclasses.replace(card, val_metrics=card.val_metrics | {"ci_unit": unit}))
        validation = body.split("## Validation figures")[1].split("\n## ")[0]
        assert ci_method_sentence(unit, VALIDATION_PROPORTIONS, ("auc", "f1")) in validation
        assert (FILM_UNIT_CAVEAT in validation) == (unit == "film")


def test_the_card_shows_the_calibration_error_of_the_probabilities_it_calls_calibrated(tiny_bundle: Path) -> None:
    """The card says its probabilities are calibrated by temperature scaling, and shows how far they are from it on
    the validation films: the expected calibration error the run measured there, after the temperature."""
    card = load_card(tiny_bundle)
    run = json.loads((tiny_bundle.parent / "metrics.json").read_text())
    assert card.val_metrics["ece"] == pytest.approx(run["ece"], abs=1e-12)
    body = (tiny_bundle / MODEL_CARD).read_text()
    assert f"| Expected calibration error (10 bins) | {card.val_metrics['ece']:.4f} |" in body
    assert ("scaled by one temperature fitted on the validation films (which corrects over- or under-confidence, not a "
            "shift towards one class: its expected calibration error") in body


def test_the_cards_evaluations_name_their_patients_and_unit_and_no_precision_of_one_class(tiny_bundle: Path) -> None:
    """Each recorded evaluation's n names its patients where its intervals count them, a column says what they
    count, and on films of one class precision, NPV and F1 (1.0 with no negative film) are left out of the index."""
    card = load_card(tiny_bundle)
    figures = {key: {"value": 0.9, "ci": [0.8, 0.95]} for key, _, _ in CARD_METRICS}
    base = {"date": "2026-01-01", "scores": "plain", "threshold": 0.06274311513819045, "metrics": figures}
    site = base | {"data": "site B", "n": 322, "n_positive": 253, "n_negative": 69, "ci_unit": "patient",
                   "patients": {"positive": 108, "negative": 64, "all": 172}, "prevalence": 253 / 322}
    only = base | {"data": "pneumonia only", "n": 253, "n_positive": 253, "n_negative": 0, "ci_unit": "film",
                   "patients": None, "prevalence": 1.0,
                   "metrics": figures | {"auc": {"value": None, "ci": None}, "specificity": {"value": None, "ci": None},
                                         "precision": {"value": 1.0, "ci": [0.98, 1.0]}}}
    meta, body = front_matter_and_body(render(dataclasses.replace(card, external_evaluations=[site, only])))
    assert "| date | data | n | 95% CIs count | scores, threshold |" in body
    assert ("| 2026-01-01 | site B | 322 films of 172 patients (253 PNEUMONIA films of 108 patients, 69 NORMAL of 64) "
            "| patients | plain, 0.0627 |") in body
    assert "| pneumonia only | 253 films (253 PNEUMONIA, 0 NORMAL) | films | plain, 0.0627 |" in body
    on_site, on_one = meta["model-index"][0]["results"][1:]
    assert [m["type"] for m in on_site["metrics"]] == [kind for _, kind, _ in CARD_METRICS]
    assert on_site["metrics"][3]["name"] == "Precision (PPV) (at threshold 0.0627, at prevalence 78.6%)"
    assert [m["type"] for m in on_one["metrics"]] == ["recall", "accuracy"]


def test_the_card_text_the_web_page_shows_is_plain(tiny_bundle: Path) -> None:
    """/v1/model's intended use and out-of-scope lines are shown by the page as they are: Markdown code marks there
    had reached the reader as raw backticks."""
    summary = card_summary(load_card(tiny_bundle))
    for text in [summary["intended_use"], *summary["out_of_scope"]]:
        assert "`" not in text and "**" not in text, text


def with_aucs(card: BundleCard, auc: float, ci: list[float], *evaluations: tuple[float, list[float], int, dict]
              ) -> BundleCard:
    """``card`` recording a validation AUC of ``auc`` (95% interval ``ci``), then an external evaluation for each of
    ``evaluations`` (AUC, interval, films, other fields of its record) made from its first recorded one."""
    first = card.external_evaluations[0] if card.external_evaluations else {}
    return dataclasses.replace(
        card, val_metrics={**card.val_metrics, "auc": auc, "ci": {**card.val_metrics["ci"], "auc": ci}},
        external_evaluations=[{**first, "n": n, "metrics": {**first.get("metrics", {}), "auc": {"value": a, "ci": i}},
                               **more} for a, i, n, more in evaluations])


def test_the_model_card_lists_the_ranking_caveat(tiny_bundle: Path) -> None:
    """A bundle whose validation AUC interval reaches 0.5 said so in predict, serve and its reports, but its
    MODEL_CARD.md, which people who pick up a bundle read first, listed no such limitation."""
    weak = with_aucs(load_card(tiny_bundle), 0.6, [0.4, 0.8])
    limitations = render(weak).split("## Limitations\n\n")[1].split("\n## ")[0]
    assert limitations.startswith(f"- **The model is not shown to rank films better than chance:** "
                                  f"{weak.ranking_caveat}.\n")
    assert "validation AUC 0.600 (95% CI 0.400-0.800)" in weak.ranking_caveat
    assert "better than chance" not in render(with_aucs(weak, 0.9, [0.8, 0.97]))


def test_an_evaluation_on_more_films_answers_the_ranking_caveat_or_raises_it(
        tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """`evaluate --add-to-card` on more labelled films whose AUC interval lies above 0.5 left the caveat of a
    validation interval reaching it in place, and one whose interval reached 0.5 raised none. The newest evidence
    of the same figure answers older evidence only where it is on more films, checked new to the bundle, of its
    plain scores."""
    bundle = shutil.copytree(tiny_bundle.parent, tmp_path / "run") / "bundle"  # with its run's split.csv
    evaluate(bundle, tiny_dataset, "test", add_to_card=True, data_name="site | B")  # a real record to vary
    card = load_card(bundle)
    record = card.external_evaluations[0]
    assert (record["films_checked"], record["scores"]) == (True, "plain")
    val_n, n = card.val_metrics["n"], record["n"]
    assert n > val_n, "the test films outnumber the validation ones"
    above = (0.9, [0.75, 0.98], n, {})
    assert with_aucs(card, 0.6, [0.4, 0.8]).ranking_caveat.startswith("validation AUC 0.600")
    assert with_aucs(card, 0.6, [0.4, 0.8], above).ranking_caveat == ""  # answered
    for unanswered in ((0.9, [0.75, 0.98], val_n, {}), (0.9, [0.75, 0.98], n, {"scores": "tta"}),
                       (0.9, [0.75, 0.98], n, {"films_checked": False}), (0.9, None, n, {})):
        assert with_aucs(card, 0.6, [0.4, 0.8], unanswered).ranking_caveat.startswith("validation AUC 0.600")
    reached = with_aucs(card, 0.9, [0.8, 0.97], (0.55, [0.4, 0.7], n, {})).ranking_caveat
    assert reached.startswith(f"AUC on site | B 0.550 (95% CI 0.400-0.700) on {n} films: its interval reaches 0.5")
    assert with_aucs(card, 0.9, [0.8, 0.97], (0.55, [0.4, 0.7], n, {}), above).ranking_caveat == reached, (
        "an evaluation answers only the figures of fewer films")
    both = with_aucs(card, 0.6, [0.4, 0.8], (0.55, [0.4, 0.7], n, {})).ranking_caveat
    assert both.startswith("validation AUC 0.600") and "; AUC on site | B 0.550" in both
    assert "site \\| B" in render(with_aucs(card, 0.9, [0.8, 0.97], (0.55, [0.4, 0.7], n, {})))


def new_typed_films(folder: Path, per_class: int, seed: int) -> Path:
    """A site's folder of ``per_class`` NORMAL and as many PNEUMONIA films (viral and bacterial in turn), drawn as the
    typed dataset's are but from another seed: films new to a bundle trained on it."""
    rng = np.random.default_rng(seed)
    for i in range(per_class):
        kind = "virus" if i % 2 == 0 else "bacteria"
        for path, sick in ((folder / "NORMAL" / f"IM-{900 + i:04d}-0001.jpeg", False),
                           (folder / "PNEUMONIA" / f"person{900 + i}_{kind}_{i}.jpeg", True)):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_xray_like(rng, 64, sick, kind == "virus")).save(path, quality=95)
    return folder


def test_an_evaluation_on_more_films_answers_a_three_class_macro_auc_caveat(
        tiny_multiclass_bundle: Path, tmp_path: Path) -> None:
    """`evaluate --add-to-card` recorded the positive call's AUC only, so a three-class bundle whose validation macro
    AUC interval reached 0.5 kept that caveat whatever it was later measured on. A multiclass bundle's record holds
    its macro AUC with its interval, answered by the same rules: more films than the validation ones, checked new to
    the bundle, plain scores, interval above 0.5."""
    bundle = shutil.copytree(tiny_multiclass_bundle.parent, tmp_path / "run") / "bundle"  # with its run's split.csv
    card = load_card(bundle)
    val_n = card.val_metrics["n"]
    # the validation ranking of the classes reaches chance, the positive call's does not
    save_card(bundle, dataclasses.replace(card, val_metrics={**card.val_metrics, "auc": 0.9, "ci": {
        **card.val_metrics["ci"], "auc": [0.8, 0.97], "three_class_macro_auc": [0.35, 0.95]}}))
    weak = "validation macro AUC over the 3 classes"
    assert load_card(bundle).ranking_caveat.startswith(weak)
    few = new_typed_films(tmp_path / "few", 4, seed=1)  # 8 films: fewer than the validation ones
    evaluate(bundle, few, add_to_card=True, data_name="few")
    card = load_card(bundle)
    (record,) = card.external_evaluations
    assert record["n"] < val_n and record["films_checked"] is True and record["scores"] == "plain"
    macro = record["metrics"]["three_class_macro_auc"]
    assert macro["ci"][0] <= macro["value"] <= macro["ci"][1]
    assert card.ranking_caveat.startswith(weak), "an evaluation on fewer films answers nothing"
    more = new_typed_films(tmp_path / "more", 24, seed=2)  # 48 films
    evaluate(bundle, more, add_to_card=True, data_name="more")
    card = load_card(bundle)
    macro = card.external_evaluations[-1]["metrics"]["three_class_macro_auc"]
    assert card.external_evaluations[-1]["n"] > val_n and macro["ci"][0] > 0.5, macro
    assert card.ranking_caveat == "", card.ranking_caveat
    text = (bundle / MODEL_CARD).read_text()
    assert f"on more: {with_ci(macro['value'], macro['ci'])}" in text and "better than chance" not in text
    # each evaluation's macro AUC is in the front matter's model-index too, beside its positive call's AUC
    meta, _ = front_matter_and_body(text)
    for result, record in zip(meta["model-index"][0]["results"][1:], card.external_evaluations, strict=True):
        (entry,) = [m for m in result["metrics"] if m["name"] == MACRO_AUC_NAME]
        assert entry == {"type": "roc_auc", "name": MACRO_AUC_NAME,
                         "value": record["metrics"]["three_class_macro_auc"]["value"]}
    # the same figure on the same films, of TTA scores, answers nothing (the rules of the positive call's AUC)
    tta = dataclasses.replace(card, external_evaluations=[*card.external_evaluations[:-1], {
        **card.external_evaluations[-1], "scores": "tta"}])
    assert tta.ranking_caveat.startswith(weak)


def test_a_three_class_cards_model_index_holds_its_validation_macro_auc(tiny_multiclass_bundle: Path) -> None:
    """The validation macro one-vs-rest AUC was in the card's body only: tools that read the Hugging Face
    model-index saw the positive call's AUC alone. It is an entry of its own, a ROC AUC named as the macro one of
    three classes, on the validation films (no threshold: it ranks, it does not call)."""
    card = load_card(tiny_multiclass_bundle)
    meta, _ = front_matter_and_body((tiny_multiclass_bundle / MODEL_CARD).read_text())
    assert meta == front_matter(card)
    (validation,) = meta["model-index"][0]["results"]
    aucs = [m for m in validation["metrics"] if m["type"] == "roc_auc"]
    assert len(aucs) == 2 and aucs[0]["value"] == card.val_metrics["auc"]
    assert aucs[1] == {"type": "roc_auc", "name": f"{MACRO_AUC_NAME} (validation)",
                       "value": card.val_metrics["three_class_macro_auc"]}


def test_a_three_class_card_holds_its_macro_auc_to_chance(tiny_multiclass_bundle: Path) -> None:
    """The three-class task's macro one-vs-rest AUC was recorded without its interval and held to nothing: a
    three-class bundle whose classes are ranked no better than chance said nothing of it. The card records the
    interval (the validation table shows it) and the ranking caveat holds it to 0.5 as it holds the AUC."""
    card = load_card(tiny_multiclass_bundle)
    macro, interval = card.val_metrics["three_class_macro_auc"], card.val_metrics["ci"]["three_class_macro_auc"]
    assert interval[0] <= macro <= interval[1]
    assert f"| Macro one-vs-rest ROC AUC, three classes | {with_ci(macro, interval, 4)} |" in render(card)
    weak = dataclasses.replace(card, val_metrics={
        **card.val_metrics, "auc": 0.9, "three_class_macro_auc": 0.55,
        "ci": {**card.val_metrics["ci"], "auc": [0.8, 0.97], "three_class_macro_auc": [0.35, 0.75]}})
    assert weak.ranking_caveat.startswith("validation macro AUC over the 3 classes 0.550 (95% CI 0.350-0.750) on ")
    sound = dataclasses.replace(weak, val_metrics={**weak.val_metrics, "three_class_macro_auc": 0.9,
                                                   "ci": {**weak.val_metrics["ci"], "three_class_macro_auc": [0.8, 1]}})
    assert sound.ranking_caveat == ""


def with_ece(card: BundleCard, ece: float, n: int, patients: int | None, chance: float | None = None) -> BundleCard:
    """``card`` recording a validation ECE of ``ece`` on ``n`` films (of ``patients`` patients; None: none
    recorded, as where no patient has two films), and the ECE chance gives them (``chance``; None: not recorded, as
    in a card older than it)."""
    val = {key: value for key, value in card.val_metrics.items() if key not in ("patients", "ece_chance")}
    return dataclasses.replace(card, val_metrics={
        **val, "ece": ece, "n": n, **({"patients": {"all": patients}} if patients else {}),
        **({"ece_chance": chance} if chance is not None else {})})


def test_probabilities_their_validation_shows_far_off_are_said_to_be_not_calibrated(tiny_bundle: Path) -> None:
    """The quick start's smoke bundle (simple_cnn, 32 px, 1 epoch) had an expected calibration error of 0.214 on its
    785 validation films of 454 patients after its temperature (of the films it gave 0.1-0.2, 54 % had pneumonia),
    yet its card had no caveat: predict, serve, the page and the reports showed its probabilities as chances."""
    card = load_card(tiny_bundle)
    smoke = with_ece(card, 0.214, 785, 454)
    [caveat] = [said for said in smoke.caveats if said not in card.caveats]
    assert caveat == smoke.calibration_caveat
    assert caveat.startswith("validation expected calibration error 0.214 on 785 films of 454 patients: allowing for "
                             "chance in 454 patients, its probabilities are off by at least 0.082 on average (95% "
                             "bound), more than the 0.05 tolerated, so they are not calibrated"), caveat
    assert "3 in 10 such films are PNEUMONIA" in caveat
    limitations = render(smoke).split("## Limitations\n\n")[1].split("\n## ")[0]
    assert f"- **The probabilities are not calibrated:** {caveat}.\n" in limitations
    # the same error on 100 films is within what chance gives them; a sound bundle's on 785 films is no caveat
    for quiet in (with_ece(card, 0.214, 100, None), with_ece(card, 0.04, 785, 454)):
        assert quiet.calibration_caveat == "" and "not calibrated" not in render(quiet).split("## Limitations")[1]
    assert with_ece(card, 0.214, 785, None).calibration_caveat.startswith(
        "validation expected calibration error 0.214 on 785 films: allowing for chance in 785 films, ")


def test_a_card_that_records_the_ece_by_chance_is_held_to_it(tiny_bundle: Path) -> None:
    """The smoke recipe trained 5 epochs: ECE 0.151 on the same 785 films of 454 patients (of the films it gave
    0.2-0.3, 83 % had pneumonia), where calibrated probabilities of those films give at most 0.042 by chance. The
    bound that holds for any probabilities allows chance 0.132 on 454 patients, so the card said nothing."""
    card = load_card(tiny_bundle)
    leaning = with_ece(card, 0.151, 785, 454, chance=0.042)
    assert leaning.calibration_caveat.startswith(
        "validation expected calibration error 0.151 on 785 films of 454 patients: allowing for chance in 454 "
        "patients, its probabilities are off by at least 0.109 on average"), leaning.calibration_caveat
    assert with_ece(card, 0.151, 785, 454).calibration_caveat == ""  # not recorded: the wider bound
    assert with_ece(card, 0.08, 785, 454, chance=0.042).calibration_caveat == ""  # within the tolerance


@pytest.mark.parametrize("recorded, lean, fires", [(True, 0.0, False), (True, 1.5, True), (False, 0.0, False),
                                                    (False, 2.5, True)])
def test_the_calibration_caveat_holds_calibrated_scores_to_chance(
        tiny_bundle: Path, recorded: bool, lean: float, fires: bool) -> None:
    """Sets of a validation split's size (454 patients, about 785 films, each patient's films scored alike and of one
    label, the case where chance moves the ECE most) of calibrated probabilities get no caveat, in every one of 100
    draws; the same probabilities leaning to the negative class (logits 1.5 lower; the smoke bundle's lean more) get
    it in every one. A card that records no ECE by chance (older bundles) is held to the wider bound of its patients
    alone: calibrated sets stay quiet, a lean of 2.5 is still said."""
    from scipy.special import expit, logit

    from pneumoscan.core.metrics import calibration, ece_by_chance

    card = load_card(tiny_bundle)
    said = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        films = rng.geometric(0.58, 454)
        chance = rng.beta(0.5, 0.5, 454)
        labels = np.repeat(rng.random(454) < chance, films)
        probabilities = expit(logit(np.repeat(chance, films)) - lean)
        ece = calibration(labels, probabilities)["ece"]
        by_chance = ece_by_chance(probabilities, np.repeat(np.arange(454), films)) if recorded else None
        said.append(len(with_ece(card, ece, int(films.sum()), 454, by_chance).caveats) > len(card.caveats))
    assert said == [fires] * 100


def test_every_consumer_of_the_card_says_its_calibration_caveat(
        tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The calibration caveat is said where the card's other caveats are: train's result line, predict's start,
    /v1/model (whose caveats the page lists)."""
    from pneumoscan.inference.predict import predict_paths

    bundle = tmp_path / "smoke"
    shutil.copytree(tiny_bundle, bundle)
    save_card(bundle, with_ece(load_card(bundle), 0.214, 785, 454))
    said = "validation expected calibration error 0.214 on 785 films of 454 patients: "
    assert f"\n   caveat: {said}" in cli._trained(bundle)
    caplog.clear()
    predict_paths(bundle, [next((tiny_dataset / "test" / "NORMAL").iterdir())])
    assert any(f"{bundle}: {said}" in m for m in caplog.messages)
    with TestClient(create_app(bundle)) as client:
        assert any(c.startswith(said) for c in client.get("/v1/model").json()["caveats"])


def test_training_records_the_ece_its_validation_films_give_by_chance(tiny_bundle: Path, tmp_path: Path) -> None:
    """The card recorded the ECE alone, which the calibration caveat could hold only to a bound for any
    probabilities, too wide to say a lean of one logit on 785 films (the 5-epoch smoke model's ECE 0.151): training
    records what chance gives its own validation films (their probabilities, their patients), as evaluate scores
    them again."""
    import csv

    from pneumoscan.core.metrics import ece_by_chance

    recorded = load_card(tiny_bundle).val_metrics["ece_chance"]
    out = tmp_path / "val"
    assert cli.main(["-q", "evaluate", str(tiny_bundle), str(tiny_bundle.parent / "split.csv"), "--split", "val",
                     "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    # the plain scores are torch's in training, ONNX Runtime's here: equal to a few ulps, each film in the same bin
    again = ece_by_chance([float(r["probability"]) for r in rows], [r["patient"] for r in rows])
    assert recorded == pytest.approx(again, abs=1e-6) and 0 < recorded < 1


def test_a_student_says_its_teachers_trials_at_any_depth(tiny_bundle: Path) -> None:
    """A student's card says its teachers' samples of patients (``teacher_samples``), and those of a teacher's own
    members or teachers: an ensemble teacher whose members trained on other samples records no sample of its own.
    A teacher's sample of every patient is no trial."""
    card = load_card(tiny_bundle)

    def said(teachers: list[dict]) -> str:
        config = {**card.train_config, TEACHER_SAMPLES: teachers}
        return " ".join(render(dataclasses.replace(card, train_config=config)).split())

    trial = "a trial, whose figures do not show what training on all the films gives"
    assert trial not in said([{"patients": 48, SAMPLED_FROM: 48, "seed": 0}, {}])
    text = said([{MEMBER_SAMPLES: [{"patients": 20, SAMPLED_FROM: 48, "seed": 1}, {}]}, {}])
    assert ("**It was distilled from teachers some of which learnt from a sample of patients** (teacher 1: an "
            "ensemble of members some of which learnt from a sample of patients; teacher 2: all the patients of its "
            "data): what it learnt from them comes from those patients alone. The films were split by patient into "
            f"training and validation: {trial}.") in text, text


def test_a_members_start_from_a_trial_makes_a_trial(tiny_bundle: Path) -> None:
    """An ensemble member started from a trial's weights (its ``init_sample``, which the ensemble records of it) is
    said as one, and the ensemble is a trial; a start from a bundle on every patient is none."""
    card = load_card(tiny_bundle)

    def said(members: list[dict]) -> str:
        config = {**card.train_config, MEMBER_SAMPLES: members}
        return " ".join(render(dataclasses.replace(card, train_config=config)).split())

    trial = "a trial, whose figures do not show what training on all the films gives"
    assert trial not in said([{INIT_SAMPLE: {"patients": 48, SAMPLED_FROM: 48, "seed": 0}}, {}])
    text = said([{INIT_SAMPLE: {"patients": 20, SAMPLED_FROM: 48, "seed": 1}}, {}])
    assert ("**Not every member trained on the same patients, and some on a sample of them** (member 1: started "
            "from a bundle that learnt from a sample of patients; member 2: all the patients of its data;") in text
    assert trial in text


def test_a_start_from_a_bundle_whose_sample_the_card_predates_is_said_to_be_unknown(tiny_bundle: Path) -> None:
    """A run started from a bundle (--init) records that bundle's sample of patients (init_sample, {} for all of
    them); a card older than the record holds none, and said nothing of it, as though the weights learnt from the
    run's own patients alone: it says that whether they learnt from a sample is not known, and calls the run no
    trial (nothing shows it was one)."""
    card = load_card(tiny_bundle)

    def said(**recorded: object) -> str:
        config = {**card.train_config, "init": "/runs/a/bundle", **recorded}
        return " ".join(render(dataclasses.replace(card, train_config=config)).split())

    unknown = ("**It was started from the weights of another bundle** (`--init /runs/a/bundle`), and this run began "
               "before that bundle's sample of patients was recorded: whether those weights learnt from a sample of "
               "patients, or from which, is not known here. The films were split by patient into training and "
               "validation.")
    assert unknown in said(), said()
    for sample in ({}, {"patients": 20, SAMPLED_FROM: 48, "seed": 1}):
        assert "is not known here" not in said(**{INIT_SAMPLE: sample})
    assert "a trial" not in said() and "a trial" in said(**{INIT_SAMPLE: {"patients": 20, SAMPLED_FROM: 48, "seed": 1}})


def test_an_unknown_starting_sample_is_carried_to_what_is_made_of_the_run(tiny_bundle: Path) -> None:
    """A card older than init_sample says its starting bundle's sample is not known; trained_sample read it as a run
    on all patients ({}), so a run started from it, an ensemble of it or a student of it said nothing of that. The
    unknown is carried (init_sample null) at any depth, and each says it is not known, calling itself no trial."""
    card = load_card(tiny_bundle)
    old = dataclasses.replace(card, train_config={**card.train_config, "init": "/runs/a/bundle"})
    assert trained_sample(old) == {INIT_SAMPLE: None}
    assert trained_sample(dataclasses.replace(card, train_config={**card.train_config, INIT_SAMPLE: None})) == {
        INIT_SAMPLE: None}  # an ensemble whose members share it
    assert trained_sample(dataclasses.replace(card, train_config={**card.train_config, INIT_SAMPLE: {}})) == {}

    def said(**recorded: object) -> str:
        return " ".join(render(dataclasses.replace(card, train_config={**card.train_config, **recorded})).split())

    unknown = ("**Some of the weights it was made from (a member's, a teacher's or a starting bundle's, at any "
               "remove) were started from another bundle by a run that began before that bundle's sample of patients "
               "was recorded**: whether they learnt from a sample of patients, or from which, is not known here.")
    started = said(init="/runs/b/bundle", **{INIT_SAMPLE: trained_sample(old)})
    assert unknown in started and "a trial" not in started, started
    assert unknown in said(**{INIT_SAMPLE: None})  # an ensemble of such runs
    taught = said(**{TEACHER_SAMPLES: [trained_sample(old), {"patients": 20, SAMPLED_FROM: 48, "seed": 1}]})
    assert unknown in taught and ("(teacher 1: learnt in part from weights whose sample of patients is not known; "
                                  "teacher 2: a sample of 20 of the 48 patients of its data, seed 1)") in taught, taught
    members = said(**{MEMBER_SAMPLES: [{INIT_SAMPLE: trained_sample(old)}, {}]})
    assert unknown in members and "a trial" not in members, members
    assert "is not known" not in said(**{INIT_SAMPLE: {}})


def test_a_sample_of_every_patient_is_not_called_a_trial(tiny_bundle: Path) -> None:
    """`--patients` equal to the patients there are draws them all (data.split.patient_sample): the card said the
    films were a sample of 48 of the 48 patients, a trial whose figures do not show what training on all the films
    gives, of a run that trained on all of them."""
    card = load_card(tiny_bundle)
    for patients, trial in ((20, True), (48, False)):
        text = render(dataclasses.replace(card, train_config={**card.train_config, "patients": patients,
                                                              SAMPLED_FROM: 48}))
        assert ("a trial, whose figures do not show what training on all the films gives" in text) is trial, patients
        assert ("The films were split by patient into training and validation." in text) is not trial, patients


def test_add_to_card_by_field_records_the_figures_by_subgroup_in_the_card_and_v1_model(
        tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """`evaluate --add-to-card --by site` records the figures by subgroup with the evaluation, under the card's
    checksum (a figure edited and sealed again is refused), and MODEL_CARD.md gives a table a field, at the
    evaluation's threshold, worded as evaluate words them (a site of too few patients counted, with no interval);
    /v1/model gives them. A card whose evaluations record none says nothing of subgroups."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    assert cli.main(["evaluate", str(bundle), str(site_manifest(tiny_dataset, tmp_path)), "--by", "site", "--out",
                     str(tmp_path / "e"), "--add-to-card", "--data-name", "two sites"]) == 0
    reported = json.loads((tmp_path / "e" / "metrics.json").read_text())
    card = load_card(bundle)
    [record] = card.external_evaluations
    assert record["subgroups"] == reported["subgroups"] and record["threshold"] == card.threshold
    site_a, site_b = record["subgroups"]["fields"]["site"]
    body = (bundle / MODEL_CARD).read_text()
    assert body == render(card)
    assert ("### Figures by subgroup\n\nEach group's figures on its films alone, at the evaluation's threshold "
            "(never one chosen per group); a figure of fewer than 5 patients gives its films counted and no "
            "interval.") in body
    assert (f"By site, on two sites ({today()}), at threshold {card.threshold:.4f}, 95% CIs counting "
            f"{record['ci_unit']}s:\n\n| group | films | patients | sensitivity | specificity | AUC |\n"
            "| --- | --- | --- | --- | --- | --- |\n"
            f"| A | 12 | 12 | {with_ci(site_a['sensitivity']['value'], site_a['sensitivity']['ci'])} | "
            f"{with_ci(site_a['specificity']['value'], site_a['specificity']['ci'])} | "
            f"{with_ci(site_a['auc']['value'], site_a['auc']['ci'])} |\n"
            f"| B | 4 | 4 | {site_b['sensitivity']['hits']} of 2 (too few patients for a 95% CI) | "
            f"{site_b['specificity']['hits']} of 2 (too few patients for a 95% CI) | "
            "(too few patients for a 95% CI) |") in body
    # the sites' tests beneath, AUC's with the rates', as evaluate says them
    auc = record["subgroups"]["differences"]["site"]["auc"]
    said = differences_said(record["subgroups"], "site")
    assert "p" in auc and difference_said("auc", auc) in said and said in body
    with TestClient(create_app(bundle)) as client:
        assert client.get("/v1/model").json()["external_evaluations"][0]["subgroups"] == record["subgroups"]
    plain = {k: v for k, v in record.items() if k != "subgroups"}
    assert "ubgroup" not in render(dataclasses.replace(card, external_evaluations=[plain]))
    site_a["sensitivity"]["value"] = 7.5
    save_card(bundle, card)
    with pytest.raises(ValueError, match=r"external_evaluations\[0\]\.subgroups\.fields\.site\[0\]\.sensitivity"
                                         r"\.value is 7\.5, not a figure in \[0, 1\]"):
        load_card(bundle)


def test_add_to_card_by_field_records_a_three_class_decisions_accuracy_by_subgroup(
        tiny_bundle: Path, tiny_etiology_bundle: Path, tiny_multiclass_bundle: Path, typed_dataset: Path,
        tmp_path: Path) -> None:
    """A three-class bundle's most probable class, and two stages, recorded --by subtype: the card keeps each
    decision's accuracy by group with the decision and its tests of a difference across the groups
    (three_class_subgroups), MODEL_CARD.md gives its table and tests beneath the binary figures', worded as evaluate
    words them, and /v1/model gives it; a test's p edited and sealed again is refused."""
    for source, etiology, key in ((tiny_multiclass_bundle, None, "multiclass"),
                                  (tiny_bundle, tiny_etiology_bundle, "two_stage")):
        bundle = shutil.copytree(source, tmp_path / key)
        metrics = evaluate(bundle, typed_dataset, "test", add_to_card=True, data_name="typed", etiology=etiology,
                           by=["subtype"])
        card = load_card(bundle)
        [record] = card.external_evaluations
        block, decision = metrics[key]["subgroups"], metrics[key]["decision"]
        assert record["three_class_subgroups"] == [{"decision": decision, **block}], key
        assert record["subgroups"] == metrics["subgroups"], key
        body = (bundle / MODEL_CARD).read_text()
        head, rows = table_rows(block["fields"]["subtype"])
        assert (f"By subtype, on typed ({today()}), of the decision ({decision}), 95% CIs counting "
                f"{record['ci_unit']}s:\n\n| group | films | patients | accuracy |\n| --- | --- | --- | --- |\n"
                + "\n".join(f"| {' | '.join(row)} |" for row in rows)
                + f"\n\n{differences_said(block, 'subtype')}") in body, key
        assert body.index("By subtype, on typed") < body.index("of the decision"), key  # the binary figures first
    with TestClient(create_app(bundle)) as client:
        assert client.get("/v1/model").json()["external_evaluations"][0]["three_class_subgroups"] == (
            record["three_class_subgroups"])
    record["three_class_subgroups"][0]["differences"]["subtype"]["accuracy"]["p"] = 1.5
    save_card(bundle, card)
    with pytest.raises(ValueError, match=r"external_evaluations\[0\]\.three_class_subgroups\[0\]\.differences\."
                                         r"subtype\.accuracy\.p is 1\.5, not a figure in \[0, 1\]"):
        load_card(bundle)


def _trained_on(tiny_bundle: Path, folder: Path, sources: list[dict]) -> Path:
    """A copy of the tiny bundle whose card records ``sources`` as its training data, as a run on them records it,
    its MODEL_CARD.md written from it."""
    from pneumoscan.evaluation.model_card import update_card

    bundle = shutil.copytree(tiny_bundle, folder)
    update_card(bundle, dataclasses.replace(load_card(bundle), training_data=sources))
    return bundle


def _source(name: str, licence: str = "", films: int | None = 48, started_from: bool = False) -> dict:
    return {"name": name, "licence": licence, "films": films, "layout": "manifest", "started_from": started_from}


def test_a_card_names_the_training_data_its_run_recorded_and_kermany_only_for_kermany_films(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """MODEL_CARD.md said that every bundle was trained on Kermany et al.'s films from Guangzhou, under CC BY 4.0,
    whatever its run trained on: a site's fine-tuning on its own films too. It says what the card records: Kermany's
    films for a run on them (the tiny run's, named as Kermany's are); a site's own by the name and licence given
    (`train --data-name`, `--data-licence`), or that their source was not described, with no word of Kermany,
    Guangzhou, ages 1 to 5 or CC BY; and for a fine-tune of a Kermany bundle on a site's films, both, with Kermany's
    citation. /v1/model's intended use and out of scope say the same."""
    from pneumoscan.data.layouts import KERMANY

    (recorded,) = load_card(tiny_bundle).training_data
    assert recorded == {"name": KERMANY, "licence": "CC BY 4.0", "films": 48, "layout": "kaggle",
                        "started_from": False}
    kermany_words = ("Kermany", "Guangzhou", "aged 1 to 5", "CC BY", "cc-by-4.0", "one hospital",
                     "How to cite the data")
    named = _trained_on(tiny_bundle, tmp_path / "named", [_source("St Elsewhere PACS 2024 | ward <b>", "internal use")])
    undescribed = _trained_on(tiny_bundle, tmp_path / "undescribed", [_source("")])
    tuned = _trained_on(tiny_bundle, tmp_path / "tuned", [{**recorded, "started_from": True},
                                                          _source("St Elsewhere PACS 2024")])
    texts = {bundle.name: (bundle / MODEL_CARD).read_text() for bundle in (named, undescribed, tuned)}
    for name in ("named", "undescribed"):
        meta, body = front_matter_and_body(texts[name])
        summary = card_summary(load_card(tmp_path / name))
        for word in kermany_words:
            assert word not in texts[name] and word not in json.dumps(summary), (name, word)
        assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "training-data"
        assert "Patients unlike those of the training films" in " ".join(summary["out_of_scope"])
    meta, body = front_matter_and_body(texts["named"])
    assert meta["datasets"] == ["St Elsewhere PACS 2024 | ward <b>"]
    assert (meta["license"], meta["license_name"]) == ("other", "internal-use")
    assert ("It was trained on these chest X-ray films:\n\n- 48 training and validation films (read as the manifest "
            "layout): St Elsewhere PACS 2024 \\| ward &lt;b>; licence: internal use.") in body, body
    assert "films of St Elsewhere PACS 2024 | ward <b>" in intended_use(load_card(named))
    meta, body = front_matter_and_body(texts["undescribed"])
    assert "datasets" not in meta and meta["license"] == "unknown" and "license_name" not in meta
    assert ("- **48 training and validation films (read as the manifest layout) whose source was not described** "
            "(`train --data-name` names it): where they come from, and under what licence, is not recorded "
            "here.") in body, body
    assert "films whose source was not described" in intended_use(load_card(undescribed))
    meta, body = front_matter_and_body(texts["tuned"])
    assert meta["datasets"] == [KERMANY, "St Elsewhere PACS 2024"]
    assert (meta["license"], meta["license_name"]) == ("other", "mixed-cc-by-4.0-and-not-stated"), "no CC BY"
    assert ("It was trained on these chest X-ray films:\n\n- 48 training and validation films (read as the manifest "
            "layout): St Elsewhere PACS 2024; licence: not stated (`train --data-licence`).\n\nIts training started "
            "from the weights of a bundle (`--init`) that learnt from these:\n\n- 48 training and validation films "
            f"(read as the kaggle layout): pediatric films of {KERMANY}, licensed CC BY 4.0.\n\nKermany et al.'s films "
            "are licensed CC BY 4.0") in body, body
    assert body.rstrip().endswith("```") and "## How to cite the data" in body
    assert ("films of St Elsewhere PACS 2024, fine-tuned from weights that learnt from Kermany et al.'s films of "
            "children aged 1 to 5 years at one hospital in Guangzhou, China") in intended_use(load_card(tuned))
    # the staleness check holds such a card to its text as any other
    from pneumoscan.evaluation.model_card import stale_model_card

    assert stale_model_card(named) is None
    (named / MODEL_CARD).write_text(texts["named"].replace("St Elsewhere", "Kermany"))
    assert "is not the text this pneumoscan writes of the card" in stale_model_card(named)


def test_a_card_older_than_its_training_data_record_loads_and_keeps_its_kermany_card(tiny_bundle: Path,
                                                                                     tmp_path: Path) -> None:
    """Every bundle made before cards recorded their training data was trained on the Kermany layouts: such a card
    (no training_data field) loads, its MODEL_CARD.md is the Kermany text it was, and the staleness check of
    predict and serve finds a file written by the version before this record to be its card's text."""
    from pneumoscan.models.card import CARD, CHECKSUM, KERMANY_SOURCE, training_sources
    from tests.test_card_versions import forged

    def older(fields: dict) -> None:
        del fields["training_data"]

    bundle = forged(tiny_bundle, tmp_path, older)
    card = load_card(bundle)
    assert card.training_data is None and training_sources(card) == [KERMANY_SOURCE]
    assert "training_data" not in json.loads((bundle / CARD).read_text()) and CHECKSUM in (bundle / CARD).read_text()
    assert render(card) == render(load_card(tiny_bundle)), "a Kermany run's card reads as the older card's"
    text = render(card)
    assert ("Pediatric chest X-ray films of Kermany et al. 2018, Labeled OCT and Chest X-Ray Images, Mendeley Data V2 "
            "(doi:10.17632/rscbjbr9sj.2), licensed CC BY 4.0: these weights are trained on CC BY 4.0 data, so any use "
            "of them must credit the data as under *How to cite the data*.") in text
    assert "as taken at one hospital (Guangzhou Women and Children's Medical Center" in text

    def emptied(fields: dict) -> None:
        fields["training_data"] = []

    with pytest.raises(ValueError, match="training_data lists no source of films; restore the bundle"):
        load_card(forged(tiny_bundle, tmp_path / "emptied", emptied))


def test_an_ensemble_names_its_members_training_data(tiny_bundle: Path) -> None:
    """An ensemble's card records each source its members learnt from once, its films not counted: an ensemble of a
    Kermany member and a site's member names both; a source a member's teachers learnt from stays marked so."""
    from pneumoscan.data.layouts import KERMANY
    from pneumoscan.models.card import pooled_sources

    kermany = load_card(tiny_bundle)
    site = dataclasses.replace(kermany, training_data=[_source("site B")])
    assert pooled_sources([kermany, site, kermany]) == [
        {"name": KERMANY, "licence": "CC BY 4.0", "films": None, "layout": "kaggle", "started_from": False},
        _source("site B", films=None)]
    # a student member's teachers' sources stay theirs (taught), apart from the same films a member trained on
    taught = {**_source("site B", films=None), "taught": True}
    student = dataclasses.replace(kermany, training_data=[*kermany.training_data, taught])
    assert pooled_sources([site, student]) == [_source("site B", films=None), {**kermany.training_data[0],
                                                                                "films": None}, taught]


def test_a_kermany_cards_licence_words_are_the_datasets_recorded_licence(tiny_bundle: Path) -> None:
    """The card says Kermany et al.'s licence from the one record of it (the layouts' KERMANY_LICENCE, the source's
    licence): every line that names it, in a card of Kermany's films alone and in one beside a site's, is the text
    the card has always had, word for word."""
    from pneumoscan.data.layouts import KERMANY

    card = load_card(tiny_bundle)
    (kermany,) = card.training_data
    mixed = dataclasses.replace(card, training_data=[kermany, _source("site B", "internal use")])
    cite = ("Classification. Mendeley Data, V2, 2018. doi:10.17632/rscbjbr9sj.2. Licence: CC BY 4.0 (attribution "
            "required).")
    own = (f"Pediatric chest X-ray films of {KERMANY}, licensed CC BY 4.0: these weights are trained on CC BY 4.0 "
           "data, so any use of them must credit the data as under *How to cite the data*. The films were split by "
           "patient into training and validation.")
    beside = [f"- 48 training and validation films (read as the kaggle layout): pediatric films of {KERMANY}, "
              "licensed CC BY 4.0.",
              "Kermany et al.'s films are licensed CC BY 4.0: these weights learnt from CC BY 4.0 data, so any use of "
              "them must credit the data as under *How to cite the data*. The films were split by patient into "
              "training and validation."]

    def said(of: BundleCard) -> list[str]:
        return [line for line in front_matter_and_body(render(of))[1].splitlines() if "CC BY" in line]

    assert said(card) == [own, cite], said(card)
    assert said(mixed) == [*beside, cite], said(mixed)
    assert front_matter_and_body(render(card))[0]["license"] == "cc-by-4.0"


def test_the_front_matter_gives_the_datas_licence_by_its_hugging_face_id_or_as_other(tiny_bundle: Path) -> None:
    """The front matter said `license: unknown` for weights whose data's licence `train --data-licence` gave: a
    licence the table of common Creative Commons and open data licences knows (by id or name, in any case and
    spacing, Creative Commons' own long names too) is its Hugging Face id; any other is `other`, with
    `license_name` an id made from its text (lower case, [a-z0-9.-], as Hugging Face's card spec asks), its words as
    given in the card's Training data; none given stays `unknown`. Sources under different licences (a Kermany
    bundle fine-tuned or distilled on a site's films) are `other`, naming each, never one id that drops another: one
    not stated is said so."""
    from pneumoscan.evaluation.model_card import front_matter

    card = load_card(tiny_bundle)

    def meta(*licences: str) -> dict[str, str]:
        sources = [_source(f"site {i}", licence) for i, licence in enumerate(licences)]
        said = front_matter(dataclasses.replace(card, training_data=sources))
        return {key: said[key] for key in ("license", "license_name") if key in said}

    for given, hf in (("CC BY 4.0", "cc-by-4.0"), ("CC-BY-NC-4.0", "cc-by-nc-4.0"), ("cc0-1.0", "cc0-1.0"),
                      ("CC0 1.0 Universal", "cc0-1.0"), ("cc by-nc-sa 4.0", "cc-by-nc-sa-4.0"), ("ODbL", "odbl"),
                      ("Creative Commons Attribution Share Alike 4.0 International", "cc-by-sa-4.0"),
                      ("Attribution-NonCommercial-ShareAlike 4.0 International", "cc-by-nc-sa-4.0"),
                      ("Creative Commons Attribution-NoDerivatives 4.0 International", "cc-by-nd-4.0"),
                      ("Attribution-NonCommercial-NoDerivs 3.0 Unported", "cc-by-nc-nd-3.0"),
                      ("Attribution-NonCommercial 2.0 Generic", "cc-by-nc-2.0")):
        assert meta(given) == {"license": hf}, given
    for given, slug in (("CC BY", "cc-by"), ("CC BY 4.0 or any later version", "cc-by-4.0-or-any-later-version"),
                        ("internal use", "internal-use"), ("©", "unnamed"),
                        ("Zürich Klinik: nur Forschung!", "zurich-klinik-nur-forschung")):
        assert meta(given) == {"license": "other", "license_name": slug}, given
    assert meta("") == meta("", "") == {"license": "unknown"}
    assert meta("CC BY 4.0", "cc-by-4.0") == {"license": "cc-by-4.0"}, "one licence, however written"
    assert meta("CC BY 4.0", "CC-BY-NC-4.0", "cc by 4.0") == {"license": "other",
                                                             "license_name": "mixed-cc-by-4.0-and-cc-by-nc-4.0"}
    assert meta("CC BY 4.0", "") == {"license": "other", "license_name": "mixed-cc-by-4.0-and-not-stated"}
    assert front_matter(card)["license"] == "cc-by-4.0" and "license_name" not in front_matter(card)
    terms = 'St Elsewhere terms: "research only" # v2'
    taught = {**_source("St Elsewhere", terms, films=None), "taught": True}  # a student's teacher's films
    student = dataclasses.replace(card, training_data=[*card.training_data, taught])
    parsed, body = front_matter_and_body(render(student))
    assert (parsed["license"], parsed["license_name"]) == ("other", "mixed-cc-by-4.0-and-st-elsewhere-terms-research-"
                                                           "only-v2"), parsed
    assert markdown_text(terms) in body and "licensed CC BY 4.0" in body  # each licence's own words


def test_who_of_an_ensemble_was_distilled_from_teachers_is_said_as_its_members_entries_record_it(
    tiny_bundle: Path,
) -> None:
    """MODEL_CARD.md's sentence on the teachers' training data opens with who learnt from them, from each member's
    entry (``taught``): an ensemble whose entries record none (one built before the record) says its card does not
    record which; a member that is itself an ensemble learnt from them in some of its members; two or more named
    members are joined with "and"."""
    card = load_card(tiny_bundle)

    def who(*members: tuple[str, bool]) -> str:
        entries = [{"model": model, "source": f"m{i}", **({"taught": True} if taught else {})}
                   for i, (model, taught) in enumerate(members)]
        return _taught_who(dataclasses.replace(card, model=ENSEMBLE, model_kwargs={"members": entries}))

    assert who((card.model, False), (card.model, False)) == "Members of it (which ones, its card does not record) were"
    assert who((card.model, False), (ENSEMBLE, True)) == "Ensemble member 2 of 2 (m1) (some of its members) was"
    assert who((card.model, True), (card.model, False), (ENSEMBLE, True), (card.model, True)) == (
        "Ensemble member 1 of 4 (m0), ensemble member 3 of 4 (m2) (some of its members) and ensemble member 4 of 4 "
        "(m3) were")
