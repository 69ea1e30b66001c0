"""What a bundle's checks left open: the INT8 sidecar's thresholds held to the ranges and types the card's are, an
ONNX file tied to the sidecar that describes it in bundles whose card records no checksums (where nothing else ties
them), and an ONNX graph whose scores are not the card's classes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from pneumoscan import cli
from pneumoscan.data.tasks import get_task
from pneumoscan.inference.export import export_onnx, write_onnx_spec
from pneumoscan.inference.onnx_runtime import INT8_NAME, spec_path
from pneumoscan.inference.predict import Predictor, predict_paths
from pneumoscan.models import registry as models
from pneumoscan.models.bundle import save_bundle
from pneumoscan.models.card import CARD, CHECKSUM, ONNX_NAME, load_card, save_card
from tests.test_integrity import copy_bundle, written_before_checksums


@pytest.fixture
def film(tiny_dataset: Path) -> Path:
    return sorted((tiny_dataset / "test" / "NORMAL").glob("*.jpeg"))[0]


def without_checksums(bundle: Path) -> Path:
    """BUNDLE as a pneumoscan that kept no checksums left it: nothing in its card says what its files hold."""
    card = json.loads((bundle / CARD).read_text())
    del card[CHECKSUM], card["files"]
    (bundle / CARD).write_text(json.dumps(written_before_checksums(card)))
    return bundle


def refused_in_one_line(capsys: pytest.CaptureFixture, words: str) -> None:
    """The command's last word is one line naming ``words``, after the warnings such a bundle is loaded with."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: " in err.splitlines()[-1] and words in err.splitlines()[-1], err


def edit_sidecar(bundle: Path, name: str, **fields: object) -> None:
    path = spec_path(bundle / name)
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


@pytest.mark.parametrize("fields, reason", [
    ({"threshold": 1.5, "int8_threshold": 1.5}, "threshold is 1.5, not a probability in \\[0, 1\\]"),
    ({"threshold": -0.2, "int8_threshold": -0.2}, "threshold is -0.2, not a probability in \\[0, 1\\]"),
    ({"threshold": "0.3", "int8_threshold": "0.3"}, "threshold: input should be a valid number \\(found '0.3'\\)"),
    ({"threshold": None, "int8_threshold": None}, "threshold: input should be a valid number \\(found None\\)"),
    ({"threshold_interval": [0.9, 0.1], "int8_threshold_interval": [0.9, 0.1]},
     "threshold_interval is \\[0.9, 0.1\\], not two probabilities in order"),
], ids=["above 1", "below 0", "text", "null", "interval reversed"])
def test_an_int8_threshold_that_is_no_probability_is_refused(int8_bundle: Path, tmp_path: Path, film: Path,
                                                             fields: dict, reason: str,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A bundle older than the files' checksums does not check its INT8 sidecar's bytes, but its thresholds label
    every film: one of 1.5 had called every film normal (exit status 0), one of "0.3" or null ended in a TypeError
    traceback. Held to the card's own rules, each is refused naming the file and the field, before any film is read."""
    bundle = without_checksums(copy_bundle(int8_bundle, tmp_path))
    edit_sidecar(bundle, INT8_NAME, **fields)
    with pytest.raises(ValueError, match=f"model.int8.onnx.json: {reason}; run `pneumoscan export .* --int8"):
        Predictor(bundle, backend="onnx-int8")
    out = tmp_path / "results.csv"
    assert cli.main(["predict", str(bundle), str(film), "--backend", "onnx-int8", "--out", str(out)]) == 2
    refused_in_one_line(capsys, "model.int8.onnx.json: ")
    assert not out.exists()


def test_sound_int8_thresholds_of_a_bundle_without_checksums_still_label(int8_bundle: Path, tmp_path: Path,
                                                                         film: Path) -> None:
    """The check refuses what no export writes, not a bundle older than the checksums as such."""
    bundle = without_checksums(copy_bundle(int8_bundle, tmp_path))
    [row] = predict_paths(bundle, [film], backend="onnx-int8")
    assert row["threshold"] == json.loads(spec_path(bundle / INT8_NAME).read_text())["int8_threshold"]
    assert row["label"] in ("NORMAL", "PNEUMONIA") and "error" not in row


def other_models_onnx(tiny_bundle: Path, tmp_path: Path) -> Path:
    """The exported model.onnx of another bundle of the same architecture, size and classes (other weights)."""
    other = copy_bundle(tiny_bundle, tmp_path, "other")
    torch.manual_seed(5)
    save_bundle(other, models.create("simple_cnn", 2), load_card(other))
    return export_onnx(other)


def test_another_models_onnx_beside_a_sound_sidecar_is_refused(tiny_bundle: Path, tmp_path: Path, film: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """The sidecar ties itself to the weights (weights_sha256), and in a bundle whose card records checksums the
    card ties model.onnx; in one whose card records none, another model's model.onnx copied over the bundle's own
    had been scored as this bundle's model, with its identity and at its threshold. The sidecar now records the
    file it describes."""
    bundle = without_checksums(copy_bundle(tiny_bundle, tmp_path))
    own = predict_paths(bundle, [film], backend="onnx")[0]["probability"]
    shutil.copyfile(other_models_onnx(tiny_bundle, tmp_path), bundle / ONNX_NAME)
    with pytest.raises(ValueError, match="model.onnx is not the model model.onnx.json describes: its SHA-256 is "
                                         ".*; run `pneumoscan export"):
        Predictor(bundle, backend="onnx")
    assert cli.main(["predict", str(bundle), str(film), "--backend", "onnx"]) == 2
    refused_in_one_line(capsys, "is not the model model.onnx.json describes")
    assert cli.main(["export", str(bundle)]) == 0  # the remedy the reason names
    again = predict_paths(bundle, [film], backend="onnx")[0]["probability"]
    assert again == pytest.approx(own, abs=1e-6)


def test_the_fp32_model_in_the_int8_models_place_is_refused(int8_bundle: Path, tmp_path: Path) -> None:
    """The INT8 sidecar's thresholds were chosen on the INT8 model's scores: another graph in its place (here the
    FP32 one, whose scores quantisation moved) would be labelled at thresholds chosen for other scores."""
    bundle = without_checksums(copy_bundle(int8_bundle, tmp_path))
    shutil.copyfile(bundle / ONNX_NAME, bundle / INT8_NAME)
    with pytest.raises(ValueError, match="model.int8.onnx is not the model model.int8.onnx.json describes.*--int8"):
        Predictor(bundle, backend="onnx-int8")


def test_each_sidecar_records_the_file_it_describes(int8_bundle: Path) -> None:
    """What the two checks above read, written by export and export --int8: the SHA-256 of the ONNX file itself."""
    card = load_card(int8_bundle)
    for name in (ONNX_NAME, INT8_NAME):
        sidecar = json.loads(spec_path(int8_bundle / name).read_text())
        assert "sha256:" + sidecar["onnx_sha256"] == card.files[name]


def test_a_card_naming_more_classes_than_the_model_scores_is_refused_by_both_backends(tiny_bundle: Path,
                                                                                      tmp_path: Path) -> None:
    """A two-class model whose card says the three-class task (sealed, as pneumoscan seals a card; a card without a
    checksum loads edited the same way): the torch backend refused its weights, while the ONNX backend, which never
    builds them, read the two scores as three classes' and answered, one class probability missing. The sidecar
    written again from the card, so that only the graph can tell."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    task = get_task("multiclass")
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, task=task.name, classes=list(task.classes), positive=task.positive,
                                          train_config={**card.train_config, "task": task.name}))
    write_onnx_spec(bundle, bundle / ONNX_NAME)
    with pytest.raises(ValueError, match="its weights are not those of a simple_cnn"):
        Predictor(bundle, backend="torch")
    with pytest.raises(ValueError, match="its model.onnx gives 2 scores a film, and bundle.json names 3 classes "
                                         "\\(normal, bacteria, virus\\), so the card does not describe this model"):
        Predictor(bundle, backend="onnx")


def test_an_int8_model_without_a_tta_threshold_names_export_as_the_remedy(int8_bundle: Path, tmp_path: Path) -> None:
    """The INT8 model's thresholds come from ``export --int8``, not from training: when its sidecar has no TTA
    threshold, ``--tta`` is refused naming that command (training again would not write one)."""
    bundle = without_checksums(copy_bundle(int8_bundle, tmp_path))
    edit_sidecar(bundle, INT8_NAME, tta_threshold=None, int8_tta_threshold=None,
                 tta_threshold_interval=[], int8_tta_threshold_interval=[])
    int8 = Predictor(bundle, backend="onnx-int8")
    with pytest.raises(ValueError, match="INT8 model has no threshold validated for test-time augmentation: "
                                         r"predict without tta \(--tta\), or run `pneumoscan export .* --int8"):
        int8.threshold(tta=True)
