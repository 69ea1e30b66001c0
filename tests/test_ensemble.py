"""Ensembles as one bundle: two tiny simple_cnn members (32 px and 64 px; simple_cnn at 48 px cannot be exported: 24
is no multiple of its 16-cell pool) averaged, calibrated on held-out films."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

from pneumoscan import __version__
from pneumoscan.cli import main
from pneumoscan.core.metrics import choose_threshold, roc_auc, softmax, threshold_interval
from pneumoscan.data.cache import build_cache, data_checksum
from pneumoscan.data.labelled import patient_groups
from tests.builders import as_run_split, labelled_images, labelled_records
from pneumoscan.data.layouts import Record, discover, make_record, write_manifest
from pneumoscan.data.tasks import binary_targets, get_task
from pneumoscan.data.transforms import to_input
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.evaluation.model_card import card_summary, render
from pneumoscan.inference.explain import explain_array, gradcam
from pneumoscan.inference.export import module_session
from pneumoscan.inference.onnx_runtime import INPUT, OUTPUT, session, spec_path
from pneumoscan.inference.predict import NonFiniteScore, Predictor, predict_paths, session_logits
from pneumoscan.models.bundle import load_bundle, save_bundle
from pneumoscan.models.card import (CARD, CHECKSUM, INIT_SAMPLE, MEMBER_SAMPLES, ONNX_NAME, SAMPLED_FROM,
                                   TEACHER_SAMPLES, UPGRADE, WEIGHTS, BundleCard, load_card, save_card)
from pneumoscan.training.ensemble import out_of_fold
from pneumoscan.serving.app import create_app
from tests.builders import SCORE_TOL, nudge_weights, overflow_every_film, trial_copy
from tests.conftest import _once_per_run
from tests.test_card_versions import forged, written_by
from tests.test_integrity import written_before_checksums


@pytest.fixture(scope="session")
def member64(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 px member (simple_cnn, one epoch): built once a run, not once a worker, since pytest-xdist's worksteal may
    share this module's tests between workers."""
    from pneumoscan.training.config import TrainConfig
    from pneumoscan.training.train import train

    cfg = TrainConfig(task="pneumonia", model="simple_cnn", pretrained=False, image_size=64, epochs=1, batch_size=8,
                      val_fraction=0.25)
    return _once_per_run(tmp_path_factory, "member64", lambda folder: train(tiny_dataset, cfg, folder / "run-64"))


@pytest.fixture(scope="module")
def held_out(tiny_dataset: Path, module_tmp: Callable[[str], Path]) -> Path:
    """Labelled films no member trained on, as a site's own manifest: the dataset's test split itself measures a
    bundle and never chooses its numbers."""
    path = module_tmp("held-out") / "site.csv"
    write_manifest([make_record(r.path, r.label) for r in discover(tiny_dataset).split("test")], path)
    return path


@pytest.fixture(scope="module")
def made_ensemble(tiny_bundle: Path, member64: Path, held_out: Path,
                  module_tmp: Callable[[str], Path]) -> tuple[Path, list[str]]:
    """The ensemble of tiny_bundle and member64 calibrated on held_out, and the warnings logged while it was made."""
    class Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    out, said, warned = module_tmp("ens") / "ensemble", [], Said(logging.WARNING)
    logging.getLogger().addHandler(warned)
    try:
        assert main(["ensemble", str(tiny_bundle), str(member64), "--data", str(held_out), "--out", str(out)]) == 0
    finally:
        logging.getLogger().removeHandler(warned)
    return out, said


@pytest.fixture(scope="module")
def ensemble(made_ensemble: tuple[Path, list[str]]) -> Path:
    return made_ensemble[0]


def test_ensemble_thresholds_on_too_few_positives_are_said_to_be_guesses(made_ensemble: tuple[Path, list[str]]) -> None:
    """As `threshold` says it: a sensitivity of 0.95 cannot be shown on the 8 positive films held out here."""
    assert any("only 8 positive films: a sensitivity of 0.95 cannot be shown on fewer than 20" in line
               for line in made_ensemble[1]), made_ensemble[1]


def _test_images(ens: Path, tiny_dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    card = load_card(ens)
    images, targets, _ = labelled_images(tiny_dataset, "test", get_task(card.task), card.spec)
    return images, binary_targets(targets)


def test_probability_is_the_average_of_the_members(ensemble: Path, tiny_bundle: Path, member64: Path,
                                                   tiny_dataset: Path) -> None:
    card = load_card(ensemble)
    assert card.model == "ensemble" and card.size == 64 and (card.mean, card.std) == (0.0, 1.0)
    # what it was built with, and the data its members were trained on (each records its own)
    assert card.versions["torch"] == torch.__version__ and card.data_checksum.startswith("sha256:")
    assert all(load_card(m).data_checksum for m in (tiny_bundle, member64))
    images, _ = _test_images(ensemble, tiny_dataset)
    x = to_input(torch.from_numpy(images).unsqueeze(1), 0.0, 1.0)
    by_hand = []
    for bundle in (tiny_bundle, member64):  # the members' own bundles, not the ensemble's copy of their weights
        model, mc = load_bundle(bundle)
        xm = F.interpolate(x, size=(mc.size, mc.size), mode="bilinear", align_corners=False, antialias=False)
        with torch.inference_mode():
            by_hand.append(model((xm - mc.mean) / mc.std).numpy() / mc.temperature)
    expected = softmax(np.mean(by_hand, axis=0), card.temperature)
    got = Predictor(ensemble).probabilities(images)
    np.testing.assert_allclose(got, expected, atol=SCORE_TOL, rtol=0)


def test_threshold_is_chosen_on_the_given_data(ensemble: Path, tiny_bundle: Path, tiny_dataset: Path) -> None:
    card = load_card(ensemble)
    images, y = _test_images(ensemble, tiny_dataset)
    predictor = Predictor(ensemble)
    target, _ = load_card(tiny_bundle).threshold_targets  # the first member's policy
    plain = predictor.positive_probability(predictor.probabilities(images))
    tta = predictor.positive_probability(predictor.probabilities(images, tta=True))
    assert card.threshold == pytest.approx(choose_threshold(y, plain, target), abs=SCORE_TOL)
    assert card.tta_threshold == pytest.approx(choose_threshold(y, tta, target), abs=SCORE_TOL)
    assert card.val_metrics["n"] == len(y) == 16 and "site.csv" in card.threshold_policy
    # the card names the films its figures and temperature come from, not "the validation split"
    text = (ensemble / "MODEL_CARD.md").read_text()
    calibrated_on = card.train_config["calibrated_on"]
    front = yaml.safe_load(text.split("---")[1])
    assert front["model-index"][0]["results"][0]["dataset"]["name"] == calibrated_on
    assert f"fitted on {calibrated_on}" in text and "validation split of the training data" not in text
    # the films that chose it are recorded in the bundle: the card's evaluations on other data refuse them
    with pytest.raises(ValueError, match="16 of the films given to record an evaluation in the card chose"):
        evaluate(ensemble, tiny_dataset, "test", add_to_card=True, data_name="test")


def test_the_card_describes_each_member_as_it_reads_films(ensemble: Path, tiny_bundle: Path, member64: Path) -> None:
    """MODEL_CARD.md's recipe gave an ensemble's model_kwargs as a Python dict and said its input "normalised with
    mean 0 and std 1", a normalisation no member uses (each normalises its own input); a single model's line stays."""
    text, card = (ensemble / "MODEL_CARD.md").read_text(), load_card(ensemble)
    members = [load_card(b) for b in (tiny_bundle, member64)]
    listed = ", ".join(f"`{c.model}` at {c.size} px (mean {c.mean:g}, std {c.std:g})" for c in members)
    assert (f"Model `ensemble`: an ensemble of 2 members, their calibrated logits averaged (each member's divided by "
            f"its own temperature): {listed}. Grayscale input of 64 x 64 px (") in text
    assert "{'members'" not in text and "mean 0 and std 1" not in text
    # films new to both members are called held-out
    assert card.train_config["calibrated_on"] == "site.csv (held-out data given to `pneumoscan ensemble`)"
    # a member's options are named, not dumped
    options = [dict(m, model_kwargs={"drop_rate": 0.2}) for m in card.model_kwargs["members"]]
    assert "`simple_cnn` (drop_rate=0.2) at 32 px (mean" in render(dataclasses.replace(card, model_kwargs={
        "members": options}))
    first = members[0]
    assert (f"Model `simple_cnn`, grayscale input of 32 x 32 px ({first.resize_policy}; inputs larger than the "
            f"training files are first brought down to {first.source_size} px JPEG quality {first.source_quality}, as "
            f"those were made), normalised with mean {first.mean:g} and std {first.std:g}; softmax temperature "
            in (tiny_bundle / "MODEL_CARD.md").read_text())


def test_evaluate_predict_and_serve_run_on_it(ensemble: Path, tiny_dataset: Path) -> None:
    metrics = evaluate(ensemble, tiny_dataset, "test")
    assert metrics["n"] == 16 and 0.0 <= metrics["auc"] <= 1.0
    rows = predict_paths(ensemble, [tiny_dataset / "test" / "PNEUMONIA"])
    assert len(rows) == 8 and all(r["label"] in ("NORMAL", "PNEUMONIA") for r in rows)
    film = next((tiny_dataset / "test" / "NORMAL").iterdir())
    with TestClient(create_app(ensemble)) as client:
        r = client.post("/v1/predict", files={"file": (film.name, film.read_bytes(), "image/jpeg")})
    assert r.status_code == 200
    assert r.json()["probability"] == pytest.approx(predict_paths(ensemble, [film])[0]["probability"], abs=SCORE_TOL)


def test_one_onnx_graph_with_parity(ensemble: Path, tiny_dataset: Path) -> None:
    card = load_card(ensemble)
    # built with its one graph, checksummed like the weights, and its sidecar
    assert set(card.files) == {WEIGHTS, ONNX_NAME, spec_path(ONNX_NAME).name}
    sidecar = json.loads(spec_path(ensemble / ONNX_NAME).read_text())  # written before calibration, then updated
    assert (sidecar["temperature"], sidecar["threshold"], sidecar["tta_threshold"]) == (
        card.temperature, card.threshold, card.tta_threshold)
    images, _ = _test_images(ensemble, tiny_dataset)
    onnx = Predictor(ensemble, backend="onnx").probabilities(images)
    np.testing.assert_allclose(onnx, Predictor(ensemble).probabilities(images), atol=1e-4, rtol=0)


def test_gradcam_is_the_mean_of_the_members_maps(ensemble: Path, tiny_dataset: Path) -> None:
    predictor = Predictor(ensemble)
    images, _ = _test_images(ensemble, tiny_dataset)
    x = predictor.inputs(images[:1])
    maps = [gradcam(net, xm, 1) for net, xm, _ in predictor.model.member_inputs(x)]
    assert [m.shape for m in maps] == [(32, 32), (64, 64)]  # each member at its own last conv and size
    cam = gradcam(predictor.model, x, 1)
    big = np.asarray(Image.fromarray(maps[0]).resize((64, 64), Image.Resampling.BILINEAR))
    mean = (big + maps[1]) / 2
    np.testing.assert_allclose(cam, mean / mean.max(), atol=1e-6)  # on its own maximum, as one model's map
    film = next((tiny_dataset / "test" / "PNEUMONIA").iterdir())
    overlay = explain_array(predictor, np.asarray(Image.open(film).convert("L")))
    assert overlay.shape == (64, 64) and np.isfinite(overlay).all()


def test_damaged_member_and_damaged_ensemble_are_refused(ensemble: Path, tiny_bundle: Path, member64: Path,
                                                         held_out: Path, tmp_path: Path) -> None:
    bad = shutil.copytree(tiny_bundle, tmp_path / "bad")
    data = bytearray((bad / WEIGHTS).read_bytes())
    data[-5] ^= 0xFF
    (bad / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        main_raising(["ensemble", str(bad), str(member64), "--data", str(held_out),
                      "--out", str(tmp_path / "e1")])
    assert not (tmp_path / "e1").exists()
    ens = shutil.copytree(ensemble, tmp_path / "ens")
    data = bytearray((ens / WEIGHTS).read_bytes())
    data[-5] ^= 0xFF
    (ens / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        load_bundle(ens)


def test_films_a_member_trained_on_are_refused_for_calibration(tiny_bundle: Path, member64: Path, tiny_dataset: Path,
                                                               tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="training split"):
        main_raising(["ensemble", str(tiny_bundle), str(member64), "--data", str(tiny_dataset), "--split", "train",
                      "--out", str(tmp_path / "e")])
    # and the official test split, as `threshold` refuses it: it measures a bundle and never chooses its numbers
    for split in (["--split", "test"], []):  # a dataset root without --split holds it too
        with pytest.raises(ValueError, match="the test split measures a bundle and never chooses its temperature"):
            main_raising(["ensemble", str(tiny_bundle), str(member64), "--data", str(tiny_dataset), *split,
                          "--out", str(tmp_path / "e")])
    assert not (tmp_path / "e").exists()


def test_members_are_recorded_whole_so_their_checks_work_from_any_folder(
    tiny_bundle: Path, member64: Path, tiny_dataset: Path, held_out: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members named relative to the folder `ensemble` ran in: recorded as they were typed, every training-film
    check looked for them elsewhere from another folder, found nothing and let the films through (AUC 0.85 on the
    members' own training films, reported as independent). A bundle given twice (or a copy of its weights: the
    ensemble had claimed two members and averaged one), or an ensemble given as the first member, is refused by its
    own name."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "a").symlink_to(tiny_bundle.parent)
    (work / "b").symlink_to(member64.parent)
    monkeypatch.chdir(work)
    test_split = ["--data", str(held_out)]
    assert main(["ensemble", "a/bundle", "b/bundle", *test_split, "--out", "ens"]) == 0
    card = load_card(work / "ens")
    assert [m["source"] for m in card.model_kwargs["members"]] == [str(work / "a" / "bundle"),
                                                                   str(work / "b" / "bundle")]
    assert card.train_config["ensemble_of"] == [str(work / "a" / "bundle"), str(work / "b" / "bundle")]
    with pytest.raises(ValueError, match="a/bundle is given twice"):
        main_raising(["ensemble", "a/bundle", "./a/bundle", *test_split, "--out", "twice"])
    (work / "c").symlink_to(shutil.copytree(tiny_bundle.parent, tmp_path / "copy"))  # the same weights, elsewhere
    with pytest.raises(ValueError, match="c/bundle holds the same weights as .*a/bundle \\(a copy\\)"):
        main_raising(["ensemble", "a/bundle", "c/bundle", *test_split, "--out", "copied"])
    with pytest.raises(ValueError, match="/work/ens: an ensemble cannot be a member"):
        main_raising(["ensemble", "ens", "b/bundle", *test_split, "--out", "nested"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"films given to evaluate were in .*/work/a/bundle's training split"):
        evaluate(work / "ens", tiny_dataset, split="train")


def test_members_that_read_films_differently_are_refused(tiny_bundle: Path, member64: Path, tiny_dataset: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Said in words: a member without a source size (a bundle trained on files not all made one way) was said to
    have ``source_size None``."""
    card = load_card(member64)
    policy = "pad" if card.resize_policy != "pad" else "squash"
    assert card.source_size is not None  # the tiny dataset's files are all 64 px JPEG: training records it
    for name, change, said in (
            ("pad", {"resize_policy": policy, "train_config": {**card.train_config, "resize_policy": policy}},
             f"has resize policy {policy}, {tiny_bundle} has resize policy {card.resize_policy}: members must read "
             "films alike"),
            ("unmatched", {"source_size": None, "source_quality": None},
             f"has no source size (no step first brings larger films down to its training files' size), "
             f"{tiny_bundle} has source size {card.source_size} px (larger films are first brought down to it")):
        other = shutil.copytree(member64, tmp_path / name)
        save_card(other, dataclasses.replace(card, **change))
        assert main(["ensemble", str(tiny_bundle), str(other), "--data", str(tiny_dataset),
                     "--out", str(tmp_path / "e")]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"{other} {said}" in err and "None" not in err and f"'{policy}'" not in err
        assert not (tmp_path / "e").exists()


def test_an_edited_or_broken_member_entry_is_refused(ensemble: Path, tmp_path: Path) -> None:
    """Each member's temperature, normalisation and size build the network: an edit is refused by the card's
    checksum, and in a card without one a missing or mistyped entry is refused naming the member by its place (from
    1) and folder, as every refusal about a member does (it was pydantic's "members: 0.size", or "member 0")."""
    card = json.loads((ensemble / "bundle.json").read_text())
    first, second = (re.escape(f"ensemble member {i} of 2 ({m['source']})")
                     for i, m in enumerate(card["model_kwargs"]["members"], 1))

    def written(name: str, change, checksum: bool = True) -> Path:
        bundle = shutil.copytree(ensemble, tmp_path / name)
        # a card from before cards kept checksums: loaded to its fields
        data = copy.deepcopy(card) if checksum else written_before_checksums(
            {k: v for k, v in copy.deepcopy(card).items() if k != CHECKSUM})
        change(data["model_kwargs"]["members"])
        (bundle / "bundle.json").write_text(json.dumps(data, indent=2))
        return bundle

    with pytest.raises(ValueError, match="bundle.json is damaged"):
        load_bundle(written("edited", lambda members: members[1].update(temperature=members[1]["temperature"] * 1.01)))
    for i, (change, reason) in enumerate((
        (lambda members: members[1].pop("temperature"), f"bundle.json: {second}: temperature: field required$"),
        (lambda members: members[0].update(size="64"),
         f"bundle.json: {first}: size: input should be a valid integer \\(found '64'\\)$"),
        (lambda members: members[0].update(std=0), f"bundle.json: {first}: std is 0.0, outside 0.05 to 1 "),
        (lambda members: members[1].update(heatmap_scale=0.0),  # the map it draws on: divided by 0
         f"bundle.json: {second}: heatmap_scale: input should be greater than 0"),
        (lambda members: members[1].pop("source"),
         "bundle.json: ensemble member 2 of 2 \\(no folder recorded\\): source: field required$"),
        (lambda members: members.pop(), "must list at least two members"),
    )):  # fmt: skip
        with pytest.raises(ValueError, match=reason):
            load_bundle(written(f"broken-{i}", change, checksum=False))


def test_an_ensemble_card_whose_input_is_not_its_members_is_refused(ensemble: Path, tmp_path: Path) -> None:
    """The ensemble's input is the largest member's size in [0, 1] grey (mean 0, std 1): each member resizes and
    normalises it itself. A card edited to mean 0.5 and std 0.5, or to size 48, and sealed again loaded and gave
    each member other inputs than it was trained on; one edited to a heatmap scale other than 1.0 drew every map
    blank or full. Each is refused by field and value."""
    card = load_card(ensemble)
    assert (card.mean, card.std, card.size) == (0.0, 1.0, 64)
    # members that record their own scales, as an ensemble of scaled members does: its own is then 1.0
    scaled = {"members": [{**m, "heatmap_scale": 0.5} for m in card.model_kwargs["members"]]}
    save_card(bundle := shutil.copytree(ensemble, tmp_path / "scaled"),
              dataclasses.replace(card, heatmap_scale=1.0, model_kwargs=scaled))
    assert load_bundle(bundle)[1].heatmap_scale == 1.0
    for i, (change, reason) in enumerate((
        ({"mean": 0.5, "std": 0.5}, "mean 0.5 and std 0.5, but an ensemble's input is \\[0, 1\\] grey "
                                    "\\(mean 0, std 1\\)"),
        ({"size": 48}, "size is 48, but an ensemble's input is its largest member's, 64 pixels"),
        # its maps are drawn on each member's own scale times it: 1e300 left every map blank, 1e-300 every one full
        ({"heatmap_scale": 1e300, "model_kwargs": scaled},
         "heatmap_scale is 1e\\+300, but an ensemble's is 1.0 \\(each member's map on its own "
         "member's scale\\) or none"),
        ({"heatmap_scale": 1e-300, "model_kwargs": scaled},
         "heatmap_scale is 1e-300, but an ensemble's is 1.0 \\(each member's map on its own "
         "member's scale\\) or none"),
    )):  # fmt: skip
        bundle = shutil.copytree(ensemble, tmp_path / f"edited-{i}")
        save_card(bundle, dataclasses.replace(card, **change))
        with pytest.raises(ValueError, match=f"bundle.json: {reason}; restore the bundle from a good copy"):
            load_bundle(bundle)


def test_an_ensemble_chosen_by_a_false_positive_ceiling_keeps_it_for_int8(tiny_bundle: Path, member64: Path,
                                                                         held_out: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The card records the ceiling, not only the (absent) sensitivity target, so export --int8 chooses the INT8
    thresholds by it rather than by Youden's J under the ceiling's name. The FP32 graph scores the val films once:
    the check of its scores before quantising gives the INT8 model's reference too. The INT8 thresholds are chosen
    on the films the FP32 ones were (held out, as the val split), not on a member's own val films."""
    out = tmp_path / "fpr"
    assert main(["ensemble", str(tiny_bundle), str(member64), "--data", str(held_out),
                 "--max-false-positive-rate", "0.5", "--out", str(out)]) == 0
    card = load_card(out)
    assert card.threshold_targets == (None, 0.5) and card.threshold_policy.startswith("false-positive rate <= 0.5")
    members_split = tiny_bundle.parent / "split.csv"
    with pytest.raises(ValueError, match=r"chosen on .*site\.csv.* \(`pneumoscan ensemble --data`\), and its INT8 "
                                         r"thresholds would be chosen on the val films of .*split\.csv, other films"):
        main_raising(["export", str(out), "--int8", "--data", str(members_split)])
    assert not (out / "model.int8.onnx").exists()
    split = tmp_path / "train-and-held-out.csv"
    write_manifest([*discover(members_split).split("train"),
                    *(dataclasses.replace(r, split="val") for r in discover(held_out).records)], split)
    images, targets, _ = labelled_images(split, "val", get_task(card.task), card.spec)
    scorers, logits = [], Predictor.logits

    def counted(self: Predictor, films: np.ndarray) -> np.ndarray:
        scorers.append((self, np.array_equal(films, images)))  # the first scores the calibration films: FP32's
        return logits(self, films)

    monkeypatch.setattr(Predictor, "logits", counted)
    assert main(["export", str(out), "--int8", "--data", str(split)]) == 0
    fp32 = scorers[0][0]
    assert [val for scorer, val in scorers if scorer is fp32].count(True) == 1, "FP32 scored the val films once"
    monkeypatch.undo()
    int8 = Predictor(out, backend="onnx-int8")
    y, scores = binary_targets(targets), int8.positive_probability(int8.probabilities(images))
    expected = choose_threshold(y, scores, None, 0.5)
    assert int8.threshold() == pytest.approx(expected, abs=SCORE_TOL)
    assert expected != pytest.approx(choose_threshold(y, scores, None), abs=SCORE_TOL), "Youden's J differs here"
    # the card's policy, on the films that chose the INT8 thresholds (it named the ensemble's own films)
    sidecar = json.loads(spec_path(out / "model.int8.onnx").read_text())
    assert sidecar["threshold_policy"] == f"false-positive rate <= 0.5 on the val films of {Path(split).name}"
    assert int8.card.threshold_policy == sidecar["threshold_policy"]  # what /v1/model and the reports show


def _cv_run(folder: Path, bundles: tuple[Path, Path], tiny_dataset: Path, shift: int = 0, other_weights: bool = False,
            filed_again: bool = False, unreadable: bool = False) -> Path:
    """A finished two-fold cv run made of ready bundles: fold k holds out the films i with (i + shift) % 2 == k.
    ``other_weights``: each bundle's weights nudged, as a second run's would differ (ensemble refuses a copy).
    ``filed_again``: each film copied under another name and patient id, in the film's fold. ``unreadable``: a file
    that cannot be read, in fold 0's validation split."""
    records = discover(tiny_dataset).split("test")
    fold_of = [(i + shift) % 2 for i in range(len(records))]
    if filed_again:
        (folder / "again").mkdir(parents=True)
        records += [dataclasses.replace(r, patient=f"again-{i}", path=str(
            shutil.copyfile(r.path, folder / "again" / f"{i}-{Path(r.path).name}"))) for i, r in enumerate(records)]
        fold_of += fold_of
    if unreadable:
        broken = folder / "broken" / "IM-0999-0001.jpeg"
        broken.parent.mkdir(parents=True)
        broken.write_bytes(b"not a film")
        records, fold_of = [*records, make_record(str(broken), "NORMAL")], [*fold_of, 0]
    for k, bundle in enumerate(bundles):
        shutil.copytree(bundle, folder / f"fold-{k}" / "bundle")
        if other_weights:
            nudge_weights(folder / f"fold-{k}" / "bundle")
        write_manifest([dataclasses.replace(r, split="val" if fold_of[i] == k else "train")
                        for i, r in enumerate(records)], folder / f"split-fold-{k}.csv")  # fmt: skip
        shutil.copy(folder / f"split-fold-{k}.csv", folder / f"fold-{k}" / "split.csv")  # as the fold's run wrote it
        _record_fold_data(folder / f"fold-{k}" / "bundle", discover(folder / f"split-fold-{k}.csv").records)
    return folder


def _record_fold_data(bundle: Path, planned: list[Record]) -> None:
    """The fold's films as its bundle's training data (``data_checksum``) and the split.csv beside it as its run's
    (``split_checksum``), as a fold's run records them."""
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, data_checksum=data_checksum(build_cache(
        [r.path for r in planned], card.spec), planned)))
    as_run_split(bundle)


def _by_hand_out_of_fold(ens: Path, cv: Path, runs: int) -> tuple[list[Record], np.ndarray, np.ndarray]:
    """The films of the folds, their binary targets and P(positive): fold k's films scored by the mean of the
    fold-k members' calibrated logits, at the ensemble's temperature."""
    card = load_card(ens)
    net, _ = load_bundle(ens)
    films, logits, ys = [], [], []
    for k in range(2):
        fold, images, targets, _ = labelled_records(cv / f"split-fold-{k}.csv", "val", get_task(card.task), card.spec)
        x = to_input(torch.from_numpy(images).unsqueeze(1), 0.0, 1.0)
        with torch.inference_mode():
            logits.append(np.mean([net.members[r * 2 + k](x).numpy() for r in range(runs)], axis=0))
        films += fold
        ys.append(binary_targets(targets))
    return films, np.concatenate(ys), softmax(np.concatenate(logits), card.temperature)[:, 1]


def _by_hand_threshold(ens: Path, cv: Path, runs: int) -> float:
    """The Youden threshold on the films scored out of fold by hand (:func:`_by_hand_out_of_fold`)."""
    return choose_threshold(*_by_hand_out_of_fold(ens, cv, runs)[1:], None)


def _by_hand_int8_out_of_fold(ens: Path, cv: Path, calibration_images: int | None = None
                              ) -> tuple[np.ndarray, np.ndarray]:
    """The binary targets and INT8 P(positive) of fold k's films scored by fold k's member quantised alone, with the
    calibration batches `export --int8 --cv` takes (``calibration_images``: its --calibration-images, if given)."""
    from pneumoscan.inference.export import module_onnx
    from pneumoscan.inference.onnx_runtime import session as onnx_session
    from pneumoscan.training import quantize

    card = load_card(ens)
    net, _ = load_bundle(ens)
    pool, _, _ = labelled_images(cv / "split-fold-0.csv", None, get_task(card.task), card.spec)
    calib = pool[quantize._sample(len(pool), calibration_images or quantize.CALIBRATION_IMAGES)]
    batches = [to_input(torch.from_numpy(calib[i : i + 32]).unsqueeze(1), 0.0, 1.0).numpy()
               for i in range(0, len(calib), 32)]
    ys, scores = [], []
    for k in range(2):
        member = onnx_session(quantize._int8_graph(module_onnx(net.members[k], card.size), batches))
        images, targets, _ = labelled_images(cv / f"split-fold-{k}.csv", "val", get_task(card.task), card.spec)
        x = to_input(torch.from_numpy(images).unsqueeze(1), 0.0, 1.0).numpy()
        scores.append(softmax(member.run(None, {"image": x})[0], card.temperature)[:, 1])
        ys.append(binary_targets(targets))
    return np.concatenate(ys), np.concatenate(scores)


def test_cv_members_are_calibrated_on_out_of_fold_scores(tiny_bundle: Path, member64: Path, tiny_dataset: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The members of an ensemble of a cv run are calibrated on their out-of-fold scores. Its INT8 model (of the same
    ensemble, one `ensemble --cv` for both): no film of a cv ensemble's runs is new to every member, so --data is
    refused; with --cv the INT8 thresholds are chosen on fold k's films scored by fold k's member quantised alone
    (here by hand), and the shipped graph stays near the mean of the members quantised alone."""
    cv = _cv_run(tmp_path / "cv", (tiny_bundle, member64), tiny_dataset)
    # --split chooses films of --data: with --cv it was taken and ignored
    with pytest.raises(ValueError, match=r"split \(--split\) test chooses films of data \(--data\); with cv_dirs "
                                         r"\(--cv\) the out-of-fold scores"):
        main_raising(["ensemble", "--cv", str(cv), "--split", "test", "--out", str(tmp_path / "ens")])
    assert main(["ensemble", "--cv", str(cv), "--youden", "--out", str(tmp_path / "ens")]) == 0
    # minutes on a CPU for a real run: shown as it goes, not a silent wait
    assert "Scoring 2 folds' films out of fold (plain and 5 views)" in capsys.readouterr().err
    card = load_card(tmp_path / "ens")
    assert "out-of-fold" in card.threshold_policy and "Youden" in card.threshold_policy
    assert "sampled_from" not in card.train_config, "its runs were on all their films: no trial"
    assert "The films were dealt by patient into cross-validation folds" in (
        tmp_path / "ens" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card.val_metrics["n"] == len(discover(tiny_dataset).split("test"))
    # by hand: fold k's films scored by member k alone, on the ensemble's input
    assert card.threshold == pytest.approx(_by_hand_threshold(tmp_path / "ens", cv, runs=1), abs=SCORE_TOL)
    ens = tmp_path / "ens"  # its INT8 model
    with pytest.raises(ValueError, match="INT8 thresholds were in .*fold-1/bundle's training split.*--int8 --cv"):
        main_raising(["export", str(ens), "--int8", "--data", str(cv / "split-fold-0.csv")])
    # every film of the pool trained one member or the other: the count says so, not only the first member's share
    with pytest.raises(ValueError, match=r"choose the threshold were in .*training split \(e\.g\. .*; \d+ counting the "
                                         r"training splits of all 2 bundles its weights come from\).*`ensemble --cv`"):
        main_raising(["threshold", str(ens), str(cv / "split-fold-0.csv"), "--youden", "--out", str(tmp_path / "t")])
    other = _cv_run(tmp_path / "other", (member64, tiny_bundle), tiny_dataset)
    with pytest.raises(ValueError,
                       match=f"was built from the fold bundles of {cv}, not of {other}: --cv takes the runs"):
        main_raising(["export", str(ens), "--int8", "--cv", str(other)])
    # a fold trained again in the same folder (same films, other weights): its films are not out of fold for the
    # ensemble's own member, which it would score there (an INT8 AUC 0.674 for FP32 0.596)
    fold = cv / "fold-0" / "bundle"
    shutil.move(fold, tmp_path / "kept")
    shutil.copytree(member64, fold)
    _record_fold_data(fold, discover(cv / "split-fold-0.csv").records)
    with pytest.raises(ValueError, match=r"^ensemble member 1 of 2 \(.*fold-0/bundle\) holds other weights than .* was "
                                         "built from"):
        main_raising(["export", str(ens), "--int8", "--cv", str(cv)])
    shutil.rmtree(fold)
    shutil.move(tmp_path / "kept", fold)
    assert not (ens / "model.int8.onnx").exists()
    with pytest.raises(ValueError, match=r"no validated model.int8.onnx: run `pneumoscan export .* --int8 --cv CV_DIR"):
        Predictor(ens, backend="onnx-int8")  # the one command that can make it (--data is refused for it)

    assert main(["export", str(ens), "--int8", "--cv", str(cv)]) == 0
    sidecar = json.loads(spec_path(ens / "model.int8.onnx").read_text())
    assert "out-of-fold INT8 scores" in sidecar["int8_thresholds_chosen_on"]
    assert sidecar["validation_images"] == len(discover(tiny_dataset).split("test"))
    assert sidecar["val_auc_fp32"] == load_card(ens).val_metrics["auc"]
    assert sidecar["max_member_mean_change"] < 0.05

    expected = choose_threshold(*_by_hand_int8_out_of_fold(ens, cv), None)
    assert sidecar["int8_threshold"] == pytest.approx(expected, abs=SCORE_TOL)
    assert Predictor(ens, backend="onnx-int8").threshold() == sidecar["int8_threshold"]

    # a cv run stopped between folds (a third fold planned, its run never made) is no finished cv run
    shutil.copy(cv / "split-fold-0.csv", cv / "split-fold-2.csv")
    for command in (["ensemble", "--cv", str(cv), "--out", str(tmp_path / "partial")],
                    ["export", str(tmp_path / "ens"), "--int8", "--cv", str(cv)]):
        with pytest.raises(ValueError, match=r"2 of its 3 folds were trained \(no fold-2\)"):
            main_raising(command)


def _backwards(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` whose classifier is negated: it ranks every film as ``bundle`` does, backwards."""
    model, card = load_bundle(bundle)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.neg_()
        head.bias.neg_()
    return save_bundle(out, model, card)


def test_an_ensemble_that_ranks_its_calibration_films_no_better_than_chance_is_refused(
        tiny_bundle: Path, held_out: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """Members that rank the films backwards made an ensemble (exit 0) whose averaged scores ranked its calibration
    films at AUC 0.0000, shipped with a threshold, where a training run so ranked is refused. Refused both ways,
    on held-out films and on out-of-fold scores, naming the figure; nothing is written."""
    first = _backwards(tiny_bundle, tmp_path / "first")
    nudge_weights(second := _backwards(tiny_bundle, tmp_path / "second"))  # a model of its own: a copy is refused
    cv = _cv_run(tmp_path / "cv", (first, second), tiny_dataset)
    for given, films in ((["ensemble", str(first), str(second), "--data", str(held_out)], "films of site.csv"),
                         (["ensemble", "--cv", str(cv)], "out-of-fold films of cv")):
        with pytest.raises(ValueError) as refused:
            main_raising([*given, "--out", str(tmp_path / "ens")])
        assert re.fullmatch(rf"no bundle written: the ensemble's calibrated, averaged scores rank the 16 {films} no "
                            r"better than chance \(AUC (0\.\d{4}), where 0\.5 is chance\): check the films' labels "
                            r"and each member's figures on them \(`pneumoscan evaluate`\): an average of members "
                            r"that rank films no better than chance is no better", str(refused.value)), refused.value
        assert float(re.search(r"AUC (\S+),", str(refused.value))[1]) <= 0.5
        assert not (tmp_path / "ens").exists()


def test_out_of_fold_calibration_counts_patients_and_a_film_filed_again_as_one_and_records_what_it_left_out(
        tiny_bundle: Path, member64: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The folds' manifests say each film's patient (as oof.csv does): the ensemble's card figures and threshold
    interval, and the INT8 thresholds' intervals chosen out of fold, count patients, a film and its copy under
    another patient id as one (they counted films, the copy apart).

    A file of a fold's validation split that cannot be read chose none of the thresholds: `ensemble --cv` and
    `export --int8 --cv` said so only in the log, where `ensemble --data` records what it left out and why. The
    card's validation figures (where a training run's are: they were in train_config, which the validation section
    does not read) and the INT8 sidecar hold ``left_out`` as theirs (the one implementation), MODEL_CARD.md's
    validation figures and the commands' output say it. (One cv run, ensemble and INT8 export prove both.)

    The same cv's films then rewritten in place: a film rewritten in place keeps its path, so the folds' splits still
    pass; the fold bundles were made on the old pixels, and their scores on the new ones are not the films' out-of-fold
    scores. Refused, the fold named, as cv refuses to reuse such a fold (the same cv with its films as they were was
    taken above)."""
    cv = _cv_run(tmp_path / "cv", (tiny_bundle, member64), tiny_dataset, filed_again=True, unreadable=True)
    ens = tmp_path / "ens"
    assert main(["ensemble", "--cv", str(cv), "--youden", "--out", str(ens)]) == 0
    card = load_card(ens)
    films, y, p = _by_hand_out_of_fold(ens, cv, runs=1)
    units = patient_groups(films, cv)[1]
    assert len(set(units)) == len(films) // 2 == len(discover(tiny_dataset).split("test"))
    assert (card.val_metrics["patients"] or {}).get("all") == len(films) // 2
    assert card.threshold_interval == pytest.approx(threshold_interval(y, p, None, None, units), abs=SCORE_TOL)
    # the unreadable file: recorded where the validation figures are, and said
    said = ("1 of the 33 films given is left out of the figures, which are of the other 32 only: 1 film could not be "
            "read")
    assert card.val_metrics["n"] == len(films) == 32 and card.val_metrics["left_out"] == ONE_LEFT_OUT
    assert "left_out" not in card.train_config
    assert f"   {said}" in capsys.readouterr().out
    assert f"**Caveat:** {said}." in validation_section(ens)
    assert main(["export", str(ens), "--int8", "--cv", str(cv)]) == 0
    sidecar = json.loads(spec_path(ens / "model.int8.onnx").read_text())
    assert sidecar["left_out"] == ONE_LEFT_OUT
    assert f"   {said}" in capsys.readouterr().out
    chosen = sidecar["int8_threshold_interval"]
    y8, p8 = _by_hand_int8_out_of_fold(ens, cv)
    assert chosen == pytest.approx(threshold_interval(y8, p8, None, None, units), abs=SCORE_TOL)
    # the films counted alone give another interval here: the test tells the two apart
    assert chosen != pytest.approx(threshold_interval(y8, p8, None, None), abs=SCORE_TOL)

    film = next((cv / "again").iterdir())
    Image.fromarray(255 - np.asarray(Image.open(film))).save(film, quality=95)
    with pytest.raises(ValueError, match=rf"{cv} fold 0: its films have other pixels or labels than its bundle was "
                                         r"trained on \(rewritten in place since, or decoded otherwise by this "
                                         r"version\?\)"):
        main_raising(["ensemble", "--cv", str(cv), "--youden", "--out", str(tmp_path / "after")])
    assert not (tmp_path / "after").exists()


def test_several_cv_runs_on_the_same_folds_make_one_ensemble(tiny_bundle: Path, member64: Path, tiny_dataset: Path,
                                                             cv_ensemble: tuple[Path, Path], tmp_path: Path) -> None:
    first = cv_ensemble[0]  # read, not changed: the module's cv run of the two bundles
    second = _cv_run(tmp_path / "b", (member64, tiny_bundle), tiny_dataset, other_weights=True)
    assert main(["ensemble", "--cv", str(first), str(second), "--youden", "--out", str(tmp_path / "ens")]) == 0
    card = load_card(tmp_path / "ens")
    assert [m["source"] for m in card.model_kwargs["members"]] == [
        str(run / f"fold-{k}" / "bundle") for run in (first, second) for k in range(2)]
    assert card.val_metrics["n"] == len(discover(tiny_dataset).split("test"))  # each film once, not once a run
    # members alike are counted, not listed four times
    assert ("an ensemble of 4 members, their calibrated logits averaged (each member's divided by its own "
            "temperature): `simple_cnn` at 32 px (mean 0.5, std 0.25; 2 members), `simple_cnn` at 64 px (mean 0.5, "
            "std 0.25; 2 members). Grayscale") in (tmp_path / "ens" / "MODEL_CARD.md").read_text()
    # fold k's films scored by the fold-k members of both runs, averaged
    assert card.threshold == pytest.approx(_by_hand_threshold(tmp_path / "ens", first, runs=2), abs=SCORE_TOL)

    other = _cv_run(tmp_path / "c", (tiny_bundle, member64), tiny_dataset, shift=1)  # the same films, other folds
    with pytest.raises(ValueError, match="same folds"):
        main_raising(["ensemble", "--cv", str(first), str(other), "--out", str(tmp_path / "e")])
    assert not (tmp_path / "e").exists()


def test_a_fold_bundle_trained_on_other_films_than_its_split_is_refused(tiny_bundle: Path, member64: Path,
                                                                        tiny_dataset: Path, tmp_path: Path) -> None:
    """Fold K's films are scored out of fold from split-fold-K.csv; the bundle's own run's split.csv says what it
    trained on. Where they differ its scores could include films it trained on, so the run and fold are named."""
    cv = _cv_run(tmp_path / "cv", (tiny_bundle, member64), tiny_dataset)
    trained = cv / "fold-1" / "split.csv"
    records = discover(trained).records
    held_out = next(i for i, r in enumerate(records) if r.split == "val")
    write_manifest([dataclasses.replace(r, split="train") if i == held_out else r for i, r in enumerate(records)],
                   trained)
    refused = rf"{cv} fold 1: its bundle was not trained on split-fold-1.csv \("
    with pytest.raises(ValueError, match=refused + r".*validation films here were training films there"):
        main_raising(["ensemble", "--cv", str(cv), "--youden", "--out", str(tmp_path / "e")])
    write_manifest(records[1:], trained)  # one film fewer: no leak, but not the split the manifest describes
    with pytest.raises(ValueError, match=refused + r"1 film"):
        main_raising(["ensemble", "--cv", str(cv), "--youden", "--out", str(tmp_path / "e")])
    trained.unlink()
    with pytest.raises(ValueError, match=refused + r".*fold-1/split.csv is missing"):
        main_raising(["ensemble", "--cv", str(cv), "--youden", "--out", str(tmp_path / "e")])
    assert not (tmp_path / "e").exists()


def test_a_member_with_unusable_weights_is_refused_by_name(tiny_bundle: Path, member64: Path, held_out: Path,
                                                          tmp_path: Path) -> None:
    """Weights that give infinite logits on any film (checksummed as written) failed the ensemble's export as a
    whole, "the model gives non-finite probabilities", naming no member."""
    from pneumoscan.models.bundle import save_bundle

    broken = shutil.copytree(member64, tmp_path / "broken")
    model, card = load_bundle(broken)
    overflow_every_film(model)
    save_bundle(broken, model, card)
    with pytest.raises(ValueError, match=rf"^ensemble member 2 of 2 \({re.escape(str(broken))}\): the model gives "
                                         r"non-finite probabilities \(NaN or infinity\): its weights are unusable"):
        main_raising(["ensemble", str(tiny_bundle), str(broken), "--data", str(held_out), "--out",
                      str(tmp_path / "ens")])
    assert not (tmp_path / "ens").exists()


def _nan_when_bright(size: int) -> bytes:
    """An ONNX graph whose logits are finite for a dark image and NaN for a bright one (the log of a negative)."""

    class Bright(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = torch.log(0.2 - x.mean(dim=(1, 2, 3)))
            return torch.stack([z, -z], dim=1)

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Bright(), (torch.zeros(1, 1, size, size),), buf, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False)
    return buf.getvalue()


def test_non_finite_scores_never_reach_the_temperature_and_threshold_fits(cv_ensemble: tuple[Path, Path]) -> None:
    """The ONNX scoring of ensemble calibration and of INT8 export refuses NaN as the Predictor does (a NaN would
    fit a temperature and threshold on nothing), naming the member whose scores they are."""
    nan = session(_nan_when_bright(64))
    dark, bright = np.zeros((64, 64), np.uint8), np.full((64, 64), 255, np.uint8)
    with pytest.raises(NonFiniteScore) as refused:
        session_logits(nan, np.stack([dark, bright, dark]))
    assert refused.value.bad.tolist() == [False, True, False]
    assert np.isfinite(session_logits(nan, dark[None])).all()

    cv, ens = cv_ensemble
    net, card = load_bundle(ens)
    with pytest.raises(ValueError, match=rf"ensemble member 2 of 2 \({cv / 'fold-1' / 'bundle'}\): the model "
                                         "produced a non-finite"):
        out_of_fold(net, [cv], card, get_task(card.task),
                    lambda i: nan if i == 1 else module_session(net.members[i], card.size))


def main_raising(argv: list[str]) -> None:
    """The library call behind ``main(argv)`` for the ensemble command, so the ValueError itself can be matched."""
    from pneumoscan.cli import build_parser

    args = build_parser().parse_args(argv)
    args.func(args)


def test_a_three_class_ensemble_keeps_its_three_class_figures(tiny_dataset: Path, tiny_multiclass_bundle: Path,
                                                              held_out: Path, tmp_path: Path) -> None:
    """Multiclass members make a multiclass ensemble: its card records how often the most probable of the three
    classes is right on the calibration films, as each member's card does on its validation films, and predict still
    thresholds 1 - P(normal). The members are the session's tiny three-class run and a copy of its run folder with
    weights of their own (:func:`nudge_weights`), not a run trained for this test alone."""
    second = shutil.copytree(tiny_multiclass_bundle.parent, tmp_path / "run-b") / tiny_multiclass_bundle.name
    nudge_weights(second)
    members = [tiny_multiclass_bundle, second]
    for member in members:
        report = json.loads((member.parent / "metrics.json").read_text())["multiclass"]
        figures = load_card(member).val_metrics
        assert figures["three_class_accuracy"] == report["accuracy"]
        assert figures["three_class_balanced_accuracy"] == report["balanced_accuracy"]
    out = tmp_path / "ensemble"
    assert main(["ensemble", *map(str, members), "--data", str(held_out), "--out", str(out)]) == 0
    card = load_card(out)
    assert card.task == "multiclass" and list(card.classes) == ["normal", "bacteria", "virus"]

    predictor = Predictor(out)
    images, targets, _ = labelled_images(tiny_dataset, "test", get_task("multiclass"), card.spec)
    probs = predictor.probabilities(images)
    assert card.val_metrics["three_class_accuracy"] == pytest.approx((probs.argmax(1) == targets).mean())
    assert card.val_metrics["n"] == len(targets) == 16
    assert "Accuracy, three classes" in (out / "MODEL_CARD.md").read_text()
    row = predict_paths(out, [discover(tiny_dataset).split("test")[0].path])[0]
    assert row["label"] in ("normal", "pneumonia") and 0.0 <= row["probability"] <= 1.0


def test_int8_thresholds_of_an_ensemble_are_refused_on_films_a_member_trained_on(
    ensemble: Path, member64: Path, tmp_path: Path
) -> None:
    bundle = shutil.copytree(ensemble, tmp_path / "ens")
    swapped = [dataclasses.replace(r, split={"train": "val", "val": "train"}.get(r.split, r.split))
               for r in discover(member64.parent / "split.csv").records]
    write_manifest(swapped, tmp_path / "swapped.csv")
    with pytest.raises(ValueError, match="INT8 thresholds were in .*'s training split") as refused:
        main_raising(["export", str(bundle), "--int8", "--data", str(tmp_path / "swapped.csv")])
    members = [m["source"] for m in load_card(bundle).model_kwargs["members"]]
    assert any(f"were in {m}'s" in str(refused.value) for m in members)  # a member, named
    assert not (bundle / "model.int8.onnx").exists()


@pytest.fixture(scope="module")
def cv_ensemble(tiny_bundle: Path, member64: Path, tiny_dataset: Path,
                module_tmp: Callable[[str], Path]) -> tuple[Path, Path]:
    """A two-fold cv run of tiny_bundle and member64 (:func:`_cv_run`) and its ensemble (`ensemble --cv --youden`),
    for the tests that only read them: those that change the cv or the ensemble make their own."""
    folder = module_tmp("cv-ensemble")
    cv = _cv_run(folder / "cv", (tiny_bundle, member64), tiny_dataset)
    assert main(["ensemble", "--cv", str(cv), "--youden", "--out", str(folder / "ens")]) == 0
    return cv, folder / "ens"


def test_int8_of_a_cv_ensemble_reads_only_its_calibration_films_in_sessions_without_a_memory_arena(
        cv_ensemble: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`export --int8 --cv` copied every film of the cv runs out of their image cache, then sampled the few it
    calibrates on (256 of thousands), as `--data` did: it reads those alone, the same ones for the seed, counted at
    the row look-up every read of the cache's images goes through (the folds' out-of-fold scores read their own
    validation films from caches of their own).

    It peaked at 2.7 GB on a two-member cv ensemble at 224 px, 1.1 GB of it the memory arena of the FP32 session,
    which scored the calibration films at the start and was held to the end, and each session after it kept its own
    largest batch's memory (1.4 GB without). Every ONNX Runtime session it makes (the FP32 model's, the
    calibration's, each member's and the shipped graph's) runs without the arena; one made after it keeps its arena,
    and the INT8 model's figures are those of its members quantised and scored with the arena. (One export proves
    both: each costs a quantisation of two members.)"""
    import onnxruntime

    from pneumoscan.data.cache import ImageCache, cache_key
    from pneumoscan.data.labelled import labelled_films
    from pneumoscan.training.quantize import _sample

    cv, ens = cv_ensemble
    copy = shutil.copytree(ens, tmp_path / "ens")  # export writes into it
    spec, every = load_card(copy).spec, cv / "split-fold-0.csv"
    pool = cache_key([r.path for r in discover(every).records], spec)
    films = [r.path for r in labelled_films(every, None, get_task("pneumonia"), spec).records]
    asked, rows = [], ImageCache.rows
    made: list[onnxruntime.InferenceSession] = []

    def counted(cache: ImageCache, paths: list[str]) -> np.ndarray:
        if cache.key == pool:
            asked.extend(map(str, paths))
        return rows(cache, paths)

    class Counted(onnxruntime.InferenceSession):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(ImageCache, "rows", counted)
    monkeypatch.setattr(onnxruntime, "InferenceSession", Counted)
    assert main(["export", str(copy), "--int8", "--cv", str(cv), "--calibration-images", "4"]) == 0
    monkeypatch.undo()
    assert asked == [films[i] for i in _sample(len(films), 4)]
    assert len(made) >= 5 and not any(s.get_session_options().enable_cpu_mem_arena for s in made)
    assert session(copy / ONNX_NAME).get_session_options().enable_cpu_mem_arena
    # its figures those of the members quantised and scored by hand, in sessions with the arena
    sidecar = json.loads(spec_path(copy / "model.int8.onnx").read_text())
    y8, p8 = _by_hand_int8_out_of_fold(ens, cv, calibration_images=4)
    assert sidecar["val_auc_int8"] == pytest.approx(roc_auc(y8, p8), abs=SCORE_TOL)
    assert sidecar["int8_threshold"] == pytest.approx(choose_threshold(y8, p8, None), abs=SCORE_TOL)


def test_int8_of_a_threshold_copy_of_a_cv_ensemble_is_refused_out_of_fold(cv_ensemble: tuple[Path, Path],
                                                                          tiny_dataset: Path, tmp_path: Path) -> None:
    """A cv ensemble given a site's threshold (`pneumoscan threshold`) keeps its out-of-fold calibration record:
    `export --int8 --cv` chose its INT8 thresholds on the runs' out-of-fold scores, another population than the
    site's, and the two backends read the site's films at operating points chosen apart. Refused, as --data is."""
    cv, ens = cv_ensemble
    site = [make_record(r.path, r.label) for r in discover(tiny_dataset).split("train")[::3]]
    write_manifest(site, tmp_path / "site.csv")
    assert main(["threshold", str(ens), str(tmp_path / "site.csv"), "--youden", "--out", str(tmp_path / "site")]) == 0
    with pytest.raises(ValueError, match=r"site's threshold was chosen on site.csv \(`pneumoscan threshold`\), and its "
                                         "INT8 thresholds would be chosen on the runs' out-of-fold scores"):
        main_raising(["export", str(tmp_path / "site"), "--int8", "--cv", str(cv)])
    assert not (tmp_path / "site" / "model.int8.onnx").exists()


def test_int8_given_no_films_names_the_films_the_bundle_takes(cv_ensemble: tuple[Path, Path],
                                                              tiny_bundle: Path) -> None:
    """`export ENSEMBLE --int8` alone said "--data or --cv, not both and not neither", where --data is always refused
    for a cv ensemble: it names the runs it was built from, and a trained bundle's split.csv."""
    cv, ens = cv_ensemble
    with pytest.raises(ValueError, match=f"not neither: {re.escape(str(ens))} was built by `ensemble --cv`, so give "
                                         f"--cv {re.escape(str(cv))}$"):
        main_raising(["export", str(ens), "--int8"])
    split = re.escape(str(tiny_bundle.parent / "split.csv"))
    with pytest.raises(ValueError, match=f"not neither: for .*, --data {split}$"):
        main_raising(["export", str(tiny_bundle), "--int8"])


def test_threshold_of_a_cv_ensemble_on_test_films_points_at_no_run_split(cv_ensemble: tuple[Path, Path],
                                                                         tiny_dataset: Path, tmp_path: Path) -> None:
    """The refusal of the test split offered `RUN/split.csv --split val` as accepted, which for a cv ensemble is
    refused in turn (every film of its runs trained a member): it says so, and what else to do."""
    _, ens = cv_ensemble
    with pytest.raises(ValueError, match=r"own labelled films: every film of its cv runs trained one member or "
                                         r"another; or build it again with `ensemble --cv` and another policy\)$"):
        main_raising(["threshold", str(ens), str(tiny_dataset), "--split", "test", "--youden",
                      "--out", str(tmp_path / "t")])
    assert not (tmp_path / "t").exists()


def test_a_cv_ensembles_card_says_its_films_were_dealt_into_folds(cv_ensemble: tuple[Path, Path],
                                                                   ensemble: Path) -> None:
    """The card of an ensemble built by `ensemble --cv` said its films "were split by patient into training and
    validation", where every one of them trained a member: it says they were dealt into folds, scored out of fold."""
    body = (cv_ensemble[1] / "MODEL_CARD.md").read_text()
    assert "The films were dealt by patient into cross-validation folds: each member trained on all folds" in body
    assert "split by patient into training and validation" not in body
    assert "split by patient into training and validation" in (ensemble / "MODEL_CARD.md").read_text()


def test_a_cv_ensembles_card_says_its_temperature_and_threshold_were_chosen_out_of_fold(
        cv_ensemble: tuple[Path, Path], ensemble: Path) -> None:
    """Its intended use and limitations said the temperature and threshold were chosen on "the validation films",
    where no film was new to every member: they say its runs' out-of-fold scores, the web service's summary too."""
    body = (cv_ensemble[1] / "MODEL_CARD.md").read_text()
    assert "scaled by one temperature fitted on its cross-validation runs' out-of-fold scores" in body
    assert ("The threshold and the temperature were chosen on its cross-validation runs' out-of-fold scores, so the "
            "validation figures" in body)
    assert "the validation films" not in body.split("## Intended use")[1].split("## Out of scope")[0]
    assert "chosen on the validation films" not in body
    assert "out-of-fold" in card_summary(load_card(cv_ensemble[1]))["intended_use"]


def test_an_ensembles_card_says_its_temperature_was_fitted_on_the_films_given_to_it(ensemble: Path) -> None:
    """An ensemble calibrated on `--data` said in its intended use and limitations (0.2.0's said it in its
    limitations) that its temperature and threshold were fitted on "the validation films", which an ensemble has
    none of: it names the films its run recorded (calibrated_on), /v1/model's summary too; a card that records none
    says so."""
    card = load_card(ensemble)
    calibrated_on = card.train_config["calibrated_on"]
    body = (ensemble / "MODEL_CARD.md").read_text()
    assert f"scaled by one temperature fitted on {calibrated_on} (which corrects" in body
    assert f"The threshold and the temperature were chosen on {calibrated_on}, so the validation figures" in body
    assert "the validation films" not in body.split("## Intended use")[1].split("## Out of scope")[0]
    assert "chosen on the validation films" not in body
    assert calibrated_on in card_summary(card)["intended_use"]
    card.train_config.pop("calibrated_on")  # an ensemble's card that records none
    unsaid = render(card)
    assert "scaled by one temperature fitted on films not recorded on this card (which corrects" in unsaid
    assert f"temperature {card.temperature:.3f} fitted on films not recorded on this card" in unsaid
    assert "the validation films" not in unsaid.split("## Intended use")[1].split("## Out of scope")[0]


def test_what_the_calibration_check_warned_of_is_kept_in_the_model_card(tiny_bundle: Path, member64: Path,
                                                                        held_out: Path, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Films that chose the members' own thresholds (their validation films) given to choose the ensemble's are
    warned of; the warning had been logged only, and the ensemble's card did not say its figures flatter it. The
    card counts them from each member's split.csv as the check read it (it had been read a second time to count)."""
    sides = [{r.path: r for r in discover(run.parent / "split.csv").records if r.split == "val"}
             for run in (tiny_bundle, member64)]
    both = [make_record(path, rec.label) for path, rec in sides[0].items() if path in sides[1]]
    assert both, "the two runs share no validation film: the test needs one"
    given = tmp_path / "given.csv"
    write_manifest(discover(held_out).records + both, given)
    out = tmp_path / "ensemble"
    with caplog.at_level("DEBUG", logger="pneumoscan.data.layouts"):
        assert main(["ensemble", str(tiny_bundle), str(member64), "--data", str(given), "--out", str(out)]) == 0
    read = [str(r.args[0]) for r in caplog.records if r.msg == "%s: read as the %s layout"]
    assert [read.count(str(run.parent / "split.csv")) for run in (tiny_bundle, member64)] == [1, 1], read
    caveats = load_card(out).train_config["calibration_caveats"]
    assert len(caveats) == 2 and all("validation films, on which its own" in c for c in caveats)
    text = (out / "MODEL_CARD.md").read_text()
    assert "calibration_caveats" in text
    # the card had called them all "held-out data" in the policy and the figures' heading
    films = len(discover(given).records)
    assert load_card(out).train_config["calibrated_on"] == (
        f"given.csv (data given to `pneumoscan ensemble`, {len(both)} of its {films} films the members' validation "
        "films, which chose their own temperatures and thresholds)")
    assert "held-out" not in text


def test_the_members_validation_films_are_not_called_held_out(tiny_bundle: Path, member64: Path,
                                                               tmp_path: Path) -> None:
    """A member's own split.csv --split val (accepted with a warning) was called "held-out data" in the card."""
    out = tmp_path / "ensemble"
    assert main(["ensemble", str(tiny_bundle), str(member64), "--data", str(tiny_bundle.parent / "split.csv"),
                 "--split", "val", "--out", str(out)]) == 0
    calibrated_on = load_card(out).train_config["calibrated_on"]
    assert calibrated_on.endswith(" (the members' validation films, which chose their own temperatures and "
                                  "thresholds, given to `pneumoscan ensemble`)")
    assert "held-out" not in (out / "MODEL_CARD.md").read_text()


def test_films_a_member_could_not_be_checked_against_are_not_called_held_out(
        tiny_bundle: Path, member64: Path, held_out: Path, tmp_path: Path) -> None:
    """A member shipped alone (no run's split.csv beside it) is trusted with a warning: its films are unknown, so
    the card must not call the films given held-out, as it had."""
    alone = shutil.copytree(member64, tmp_path / "alone" / "bundle")
    out = tmp_path / "ensemble"
    assert main(["ensemble", str(tiny_bundle), str(alone), "--data", str(held_out), "--out", str(out)]) == 0
    assert load_card(out).train_config["calibrated_on"] == (
        "site.csv (data given to `pneumoscan ensemble`, not all shown to be new to its members)")


def test_a_picture_given_twice_under_two_labels_is_said_and_counted_once(tiny_bundle: Path, member64: Path,
                                                                         held_out: Path, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A NORMAL film copied in as PNEUMONIA chose the ensemble's temperature and thresholds without a word, and
    counted as two patients in the threshold's interval (evaluate warned of both)."""
    films = discover(held_out).records
    normal = next(r for r in films if r.label == "NORMAL")
    shutil.copyfile(normal.path, tmp_path / "copy.jpeg")
    given = tmp_path / "given.csv"
    write_manifest(films + [make_record(tmp_path / "copy.jpeg", "PNEUMONIA")], given)
    with caplog.at_level("WARNING"):
        assert main(["ensemble", str(tiny_bundle), str(member64), "--data", str(given),
                     "--out", str(tmp_path / "ens")]) == 0
    assert "are copies of others in it under other names" in caplog.text
    assert "1 label conflict(s): a file name or a duplicate (exact or near) contradicts a label" in caplog.text


def test_int8_thresholds_of_an_ensemble_are_chosen_on_all_its_calibration_films(ensemble: Path, tiny_bundle: Path,
                                                                                held_out: Path, tmp_path: Path) -> None:
    """An ensemble's temperature and thresholds were chosen on the films of its calibration_films.csv: a val split of
    half of them had the INT8 thresholds chosen on another population than the FP32 ones (a sensitivity target met on
    8 films, not on the 16), and was taken as the same films. The val split must be those films, all of them."""
    bundle = shutil.copytree(ensemble, tmp_path / "ens")
    train = discover(tiny_bundle.parent / "split.csv").split("train")
    given = discover(held_out).records
    half = tmp_path / "half.csv"
    write_manifest([*train, *(dataclasses.replace(r, split="val") for r in given[::2])], half)
    with pytest.raises(ValueError, match=rf"and its INT8 thresholds would be chosen on the val films of {half}, only "
                                         rf"{len(given[::2])} of the {len(given)} films it lists in calibration_films"):
        main_raising(["export", str(bundle), "--int8", "--data", str(half)])
    assert not (bundle / "model.int8.onnx").exists()


def test_the_folds_one_image_cache_is_checked_once(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fold of a cv run holds the same films, in one image cache: `ensemble --cv` (and `export --int8 --cv`)
    checked its pixels' SHA-256 once a fold of every run (1 s a fold for 5,216 films at 192 px on a loaded machine),
    where once shows the films are those the folds trained on. The real cache opening, counted."""
    from pneumoscan.data import cache as cache_module
    from pneumoscan.training.ensemble import cv_members

    cv = _cv_run(tmp_path / "cv", (tiny_bundle, tiny_bundle), tiny_dataset, other_weights=True)
    opened, real = [], cache_module._load

    def counted(cache_dir: Path, key: str, *args: object) -> object:
        opened.append(key)
        return real(cache_dir, key, *args)

    monkeypatch.setattr(cache_module, "_load", counted)
    assert len(cv_members([cv])) == 2
    assert len(opened) == 1, opened


def test_an_ensemble_records_the_files_its_data_left_out(tiny_bundle: Path, member64: Path, films_some_left_out: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`ensemble --data` chose the temperature and thresholds on 16 of the 17 files given, saying so on the terminal
    only: the card recorded nothing of the file it could not read, where `threshold` and `evaluate --add-to-card`
    record what they left out and why. Its validation figures hold ``left_out`` where a training run's do (the one
    implementation; in train_config, MODEL_CARD.md's validation section did not say it), and so do the command's
    output and MODEL_CARD.md's validation figures, once (not again among its calibration caveats)."""
    out = tmp_path / "ensemble"
    assert main(["ensemble", str(tiny_bundle), str(member64), "--data", str(films_some_left_out), "--out",
                 str(out)]) == 0
    card = said_one_left_out(out, capsys)
    assert " ".join((out / "MODEL_CARD.md").read_text().split()).count(ONE_LEFT_OUT_SAID) == 1
    # an ensemble built when train_config held it still loads, and its card still says it (its calibration caveats)
    before = dataclasses.replace(card, val_metrics={k: v for k, v in card.val_metrics.items() if k != "left_out"},
                                 train_config={**card.train_config, "left_out": ONE_LEFT_OUT, "calibration_caveats": [
                                     *card.train_config.get("calibration_caveats", []), ONE_LEFT_OUT_SAID]})
    save_card(out, before)
    assert ONE_LEFT_OUT_SAID in " ".join(render(load_card(out)).split())


# what an ensemble chosen on 16 films, a 17th unreadable, records and says of the file it left out
ONE_LEFT_OUT = [{"films": 1, "reason": "could not be read"}]
ONE_LEFT_OUT_SAID = ("1 of the 17 films given is left out of the figures, which are of the other 16 only: 1 film could "
                     "not be read")


def said_one_left_out(bundle: Path, capsys: pytest.CaptureFixture) -> BundleCard:
    """Check that the ensemble at BUNDLE, chosen on 16 films with one file unreadable, records the file where a
    training run's validation figures hold theirs (not in train_config), and that the command's output and
    MODEL_CARD.md's validation figures say it; its card."""
    card = load_card(bundle)
    assert card.val_metrics["n"] == 16 and card.val_metrics["left_out"] == ONE_LEFT_OUT
    assert "left_out" not in card.train_config
    assert f"   {ONE_LEFT_OUT_SAID}" in capsys.readouterr().out
    assert f"**Caveat:** {ONE_LEFT_OUT_SAID}." in validation_section(bundle)
    return card


def validation_section(bundle: Path) -> str:
    """MODEL_CARD.md's validation figures, their lines joined."""
    text = (bundle / "MODEL_CARD.md").read_text().split("## Validation figures\n\n")[1].split("\n## ")[0]
    return " ".join(text.split())


def test_an_ensemble_of_trials_says_it_is_a_trial(tiny_bundle: Path, member64: Path, held_out: Path,
                                                   tmp_path: Path) -> None:
    """`ensemble B1 B2 --data` of members trained on a sample of patients (train --patients) recorded no sample, and
    its card called it a run on all the films (only `ensemble --cv` recorded its folds' sample). Members of one
    sample record it as theirs do; members of other samples, or a trial beside a run on all patients, record each
    member's, and the card names each."""
    def card_of(first: Path, second: Path, name: str) -> tuple[dict, str]:
        assert main(["ensemble", str(first), str(second), "--data", str(held_out), "--out", str(tmp_path / name)]) == 0
        text = " ".join((tmp_path / name / "MODEL_CARD.md").read_text(encoding="utf-8").split())
        return load_card(tmp_path / name).train_config, text

    trial = "a trial, whose figures do not show what training on all the films gives"
    first = trial_copy(tiny_bundle, tmp_path / "a", 20, 1)
    config, text = card_of(first, trial_copy(member64, tmp_path / "b", 20, 1), "same")
    assert (config["patients"], config[SAMPLED_FROM], config["seed"]) == (20, 48, 1) and MEMBER_SAMPLES not in config
    assert "**The films are a sample of 20 of the 48 patients of the data** (`patients: 20`, seed 1;" in text
    assert trial in text
    config, text = card_of(first, member64, "mixed")
    assert config[MEMBER_SAMPLES] == [{"patients": 20, SAMPLED_FROM: 48, "seed": 1}, {}]
    assert SAMPLED_FROM not in config
    assert ("**Not every member trained on the same patients, and some on a sample of them** (member 1: a sample of "
            "20 of the 48 patients of its data, seed 1; member 2: all the patients of its data;") in text
    assert trial in text


def test_an_ensemble_of_a_student_of_trials_says_it_is_a_trial(tiny_bundle: Path, member64: Path, held_out: Path,
                                                               tmp_path: Path) -> None:
    """A member distilled from teachers trained on a sample of patients (its train_config's teacher_samples) is a
    trial: the ensemble recorded only its members' own samples, and its card called it a run on all the films. The
    card names that member as the one distilled from teachers (its entry records ``taught``), where it said "Members
    of it were distilled" of an ensemble of a student and a bundle that learnt from no teacher."""
    student = shutil.copytree(member64.parent, tmp_path / "student") / member64.name
    card, taught = load_card(student), [{"patients": 20, SAMPLED_FROM: 48, "seed": 1}]
    teachers = {"name": "site B", "licence": "", "films": None, "layout": "", "started_from": False, "taught": True}
    save_card(student, dataclasses.replace(card, train_config={**card.train_config, TEACHER_SAMPLES: taught},
                                           training_data=[*card.training_data, teachers]))
    out = tmp_path / "ensemble"
    assert main(["ensemble", str(tiny_bundle), str(student), "--data", str(held_out), "--out", str(out)]) == 0
    assert load_card(out).train_config[MEMBER_SAMPLES] == [{}, {TEACHER_SAMPLES: taught}]
    assert [m.get("taught") for m in load_card(out).model_kwargs["members"]] == [None, True]
    text = " ".join((out / "MODEL_CARD.md").read_text(encoding="utf-8").split())
    assert (f"Ensemble member 2 of 2 ({student}) was distilled from teachers (`--teacher`) whose weights learnt from "
            "these:") in text, text
    assert ("(member 1: all the patients of its data; member 2: distilled from teachers some of which learnt from a "
            "sample of patients;") in text, text
    assert "a trial, whose figures do not show what training on all the films gives" in text


@pytest.mark.parametrize(("writer", "upgrade"), [("99.0", True), (__version__, False)])
def test_a_key_inside_a_members_entry_that_this_pneumoscan_does_not_know_is_refused(
    ensemble: Path, tmp_path: Path, writer: str, upgrade: bool
) -> None:
    """A key in an entry of model_kwargs.members that no pneumoscan of this one's knows (a newer one's record, of
    unknown meaning, or an edit) was ignored; it is refused as one inside a training source is: saying to upgrade
    where a newer pneumoscan wrote the card, as not permitted otherwise."""
    def change(fields: dict) -> None:
        written_by(writer, package_version=__version__)(fields)
        fields["model_kwargs"]["members"][1]["weight"] = 0.7

    bundle = forged(ensemble, tmp_path, change)
    source = json.loads((bundle / CARD).read_text())["model_kwargs"]["members"][1]["source"]
    member = f"{bundle / CARD}: ensemble member 2 of 2 ({source})"
    with pytest.raises(ValueError) as refused:
        load_card(bundle)
    assert str(refused.value) == (
        f"{member}: this bundle was written by pneumoscan 99.0, newer than this one ({__version__}), with fields this "
        f"one does not know ('weight'): {UPGRADE}" if upgrade else
        f"{member}: weight: extra inputs are not permitted (found 0.7)")


def test_an_ensemble_of_students_of_trials_says_it_of_its_members(ensemble: Path) -> None:
    """Members that share teachers, or a starting bundle, trained on a sample of patients record them once, as the
    ensemble's own (its train_config's teacher_samples, init_sample): its card said "It was distilled from teachers"
    and "It was started from the weights of a bundle" of the ensemble, which was neither; it says so of its members,
    and is still a trial."""
    card, trial = load_card(ensemble), "a trial, whose figures do not show what training on all the films gives"
    sample = {"patients": 20, SAMPLED_FROM: 48, "seed": 1}
    for record, said in (({TEACHER_SAMPLES: [sample, {}]}, "**Its members were distilled from teachers some of which "
                           "learnt from a sample of patients** (teacher 1: a sample of 20 of the 48 patients of its "
                           "data, seed 1; teacher 2: all the patients of its data): what they learnt from them comes "
                           "from those patients alone."),
                         ({INIT_SAMPLE: sample}, "**Its members were started from the weights of a bundle that learnt "
                           "from a sample of patients** (`--init`: a sample of 20 of the 48 patients of its data, seed "
                           "1): what those weights learnt comes from those patients alone.")):
        text = " ".join(render(dataclasses.replace(card, train_config={**card.train_config, **record})).split())
        assert said in text and "It was" not in text and trial in text, text
