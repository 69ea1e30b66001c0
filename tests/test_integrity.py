"""Integrity end to end: bundle files and bundle.json itself checked against the SHA-256 training recorded, a
card of the wrong shape refused with its reason, non-finite scores never turned into labels, stale or damaged ONNX
models refused, damaged image caches rebuilt, and a data fingerprint that covers the pixels."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import logging
import re
import shutil
import struct
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from pneumoscan import cli
from pneumoscan.data.cache import build_cache, default_cache_dir
from pneumoscan.data.layouts import discover, write_manifest
from pneumoscan.data.preprocess import PreprocessSpec, preprocess
from pneumoscan.data.tasks import get_task
from pneumoscan.inference.export import _check_parity, export_onnx, module_onnx, write_onnx_spec
from pneumoscan.inference.onnx_runtime import (INPUT, INT8_NAME, OUTPUT, check_finite, described, session,
                                               spec_path)
from pneumoscan.inference.predict import NonFiniteScore, Predictor, predict_paths
from pneumoscan.models import registry as models
from pneumoscan.models.bundle import load_bundle, save_bundle
from pneumoscan.core.digests import file_sha256
from pneumoscan.models.card import (CARD, CHECKSUM, ONNX_NAME, SEALED_ERA, WEIGHTS, WRITER, BundleCard,
                                    checked_bytes, load_card, record_checksum, save_card)
from pneumoscan.serving.app import create_app
from pneumoscan.serving.batching import Batcher
from tests.builders import as_run_split, at_threshold, overflow_every_film
from tests.test_serve import with_threshold

# ---------------------------------------------------------------- helpers


def copy_bundle(bundle: Path, tmp_path: Path, name: str = "bundle") -> Path:
    out = tmp_path / name
    shutil.copytree(bundle, out)
    return out


def data_start(weights: Path) -> int:
    """Offset of the first tensor byte in a safetensors file (8-byte header length, then the JSON header)."""
    (header,) = struct.unpack("<Q", weights.read_bytes()[:8])
    return 8 + header


def damage_weights(bundle: Path) -> None:
    """Every tensor byte set to 0xFF: the same size and a valid header, so it loads, but every float is NaN."""
    path = bundle / WEIGHTS
    raw = bytearray(path.read_bytes())
    start = data_start(path)
    raw[start:] = b"\xff" * (len(raw) - start)
    path.write_bytes(bytes(raw))


def flip_one_bit(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1
    path.write_bytes(bytes(raw))


def nan_bundle(directory: Path, task: str = "pneumonia") -> Path:
    """A bundle written the normal way (checksums and all) of a model whose output is NaN: a diverged training, its
    weights finite (NaN weights are refused at load) and huge, so every film's logits overflow to infinity."""
    torch.manual_seed(0)
    model = models.create("simple_cnn")
    overflow_every_film(model)
    classes = get_task(task).classes
    card = BundleCard("simple_cnn", task, list(classes), get_task(task).positive, 32, "squash", 0.5, 0.25)
    return save_bundle(directory, model, card)


def png(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def film(tmp_path: Path) -> Path:
    path = tmp_path / "film.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
    return path


def one_line_error(capsys: pytest.CaptureFixture, *words: str) -> str:
    err = "".join(line for line in capsys.readouterr().err.splitlines(True) if "━" not in line)  # less progress bars
    assert "Traceback" not in err and err.count("\n") == 1 and "error:" in err, err
    for word in words:
        assert word in err, err
    return err


# ---------------------------------------------------------------- what training records


def test_training_records_the_checksums_of_weights_and_onnx(tiny_bundle: Path) -> None:
    files = json.loads((tiny_bundle / CARD).read_text())["files"]
    sidecar = spec_path(ONNX_NAME).name  # it gives other ONNX runtimes the thresholds
    assert files == {WEIGHTS: file_sha256(tiny_bundle / WEIGHTS), ONNX_NAME: file_sha256(tiny_bundle / ONNX_NAME),
                     sidecar: file_sha256(tiny_bundle / sidecar)}
    assert files[WEIGHTS] == "sha256:" + hashlib.sha256((tiny_bundle / WEIGHTS).read_bytes()).hexdigest()


def test_a_card_rewritten_through_save_card_keeps_working(tiny_bundle: Path, tmp_path: Path, film: Path) -> None:
    """A copy with another threshold, written the way pneumoscan writes cards (and the ONNX sidecar, which holds the
    thresholds too, written again from it), loads on both backends."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    # number keys (2 before 10 as numbers, "10" before "2" as text) and a tuple: as JSON reads them back
    save_card(bundle, dataclasses.replace(load_card(bundle), threshold=0.01,
                                          val_metrics={"per_bucket": {2: 1, 10: 3}, "pair": (1, 2)}))
    write_onnx_spec(bundle, bundle / ONNX_NAME)
    assert load_card(bundle).val_metrics == {"per_bucket": {"2": 1, "10": 3}, "pair": [1, 2]}
    for backend in ("torch", "onnx"):
        [row] = predict_paths(bundle, [film], backend=backend)
        assert row["threshold"] == 0.01 and row["label"] == "PNEUMONIA"


def edit_digit(bundle: Path, key: str) -> None:
    """One digit of ``key``'s number in bundle.json changed by hand: the file stays valid JSON of the right shape."""
    text = (bundle / CARD).read_text()
    match = re.search(rf'"{key}": \d*\.\d*?([0-8])', text)
    assert match, key
    digit = match.start(1)
    (bundle / CARD).write_text(text[:digit] + str(int(text[digit]) + 1) + text[digit + 1 :])


@pytest.mark.parametrize("key", ["threshold", "tta_threshold", "temperature"])
def test_one_edited_digit_in_bundle_json_is_refused_as_damaged(
    tiny_bundle: Path, tmp_path: Path, film: Path, key: str, capsys: pytest.CaptureFixture
) -> None:
    """The card's threshold and temperature turn scores into labels: an edit would give confident wrong answers,
    so bundle.json is checked against its own checksum as the weights are against theirs."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    before = getattr(load_card(bundle), key)
    edit_digit(bundle, key)
    assert json.loads((bundle / CARD).read_text())[key] != before
    with pytest.raises(ValueError, match="bundle.json is damaged: the SHA-256 of its fields is"):
        load_card(bundle)
    for backend in ("torch", "onnx"):
        assert cli.main(["predict", str(bundle), str(film), "--backend", backend]) == 2
        one_line_error(capsys, "bundle.json is damaged", "pneumoscan threshold")
    with pytest.raises(ValueError, match="bundle.json is damaged"):
        create_app(bundle)


def written_before_checksums(card: dict) -> dict:
    """``card`` as a pneumoscan that kept no checksums wrote it: format 1, without the fields only sealing
    versions write (a card holding one is held to format 2), nor the name of the pneumoscan that wrote it (only
    sealing versions record it); its fields are then checked one by one."""
    for field in SEALED_ERA:
        card.pop(field, None)
    card.get("versions", {}).pop(WRITER, None)
    card["format_version"] = 1
    return card


def test_a_card_that_names_its_writer_but_records_no_checksum_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """Every pneumoscan that names itself in a card (versions.pneumoscan) writes the card's checksum: a card that
    names it, with the checksum and the sealed fields deleted and format 1 claimed, was edited (its threshold of 0.99
    had labelled a film scored 0.725 NORMAL, exit 0)."""
    bundle = copy_bundle(tiny_bundle, tmp_path, "edited")
    card = json.loads((bundle / CARD).read_text())
    del card[CHECKSUM]
    edited = {k: v for k, v in card.items() if k not in SEALED_ERA} | {"format_version": 1, "threshold": 0.99}
    assert edited["versions"][WRITER]
    (bundle / CARD).write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="records no checksum of itself, which every card of format 2 holds: it was "
                                         "edited"):
        load_card(bundle)


def predicts_without(bundle: Path, fields: tuple[str, ...], film: Path, backend: str,
                     caplog: pytest.LogCaptureFixture) -> Path:
    """BUNDLE with ``fields`` taken out of its card, as a bundle written before they were kept; it still predicts."""
    card = json.loads((bundle / CARD).read_text())
    for field in fields:
        del card[field]
    written_before_checksums(card)
    (bundle / CARD).write_text(json.dumps(card))
    with caplog.at_level(logging.WARNING, logger="pneumoscan.models.card"):
        [row] = predict_paths(bundle, [film], backend=backend)
    assert "label" in row
    return bundle


def test_a_card_written_before_its_checksum_loads_with_a_warning(
    tiny_bundle: Path, tmp_path: Path, film: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As a bundle without checksums of its files: nothing says what it should hold, so it is used, with a warning."""
    bundle = predicts_without(copy_bundle(tiny_bundle, tmp_path), (CHECKSUM,), film, "onnx", caplog)
    assert "records no checksum of itself" in caplog.text and "cannot be detected" in caplog.text
    assert caplog.text.count("records no checksum of itself") == 1, "said once, not at every read of the card"
    save_card(bundle, load_card(bundle))  # rewritten by pneumoscan: checked from then on
    assert CHECKSUM in json.loads((bundle / CARD).read_text())
    edit_digit(bundle, "threshold")
    with pytest.raises(ValueError, match="damaged"):
        load_card(bundle)


def test_a_card_written_before_the_data_checksum_and_versions_loads(
    tiny_bundle: Path, tmp_path: Path, film: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bundles trained before the card recorded the data's pixel checksum and the libraries' versions still load and
    predict; the card then says nothing of them."""
    assert load_card(tiny_bundle).data_checksum and load_card(tiny_bundle).versions
    bundle = predicts_without(copy_bundle(tiny_bundle, tmp_path), (CHECKSUM, "data_checksum", "versions"), film,
                              "torch", caplog)
    card = load_card(bundle)
    assert card.data_checksum == "" and card.versions == {}


DAMAGED_CARDS = {  # what a hand edit or a damaged copy can do to bundle.json -> words of the refusal
    "a missing field": (lambda c: {k: v for k, v in c.items() if k != "task"}, "bundle.json: task: field required$"),
    "a misspelt field": (lambda c: {**{k: v for k, v in c.items() if k != "threshold"}, "treshold": c["threshold"]},
                         "unknown .*bundle.json field 'treshold'; did you mean 'threshold'"),
    "a JSON list": (lambda c: [c], "holds a JSON list, not a bundle card"),
    "a string for a number": (lambda c: {**c, "threshold": "0.2"},
                              "threshold: input should be a valid number \\(found '0.2'\\)"),
    "a number for a string": (lambda c: {**c, "positive": 1}, "positive: input should be a valid string \\(found 1\\)"),
    "a true for a number": (lambda c: {**c, "size": True}, "size: input should be a valid integer \\(found True\\)"),
    "a null class list": (lambda c: {**c, "classes": None}, "classes: input should be a valid array \\(found None\\)"),
    "a negative temperature": (lambda c: {**c, "temperature": -1.0}, "temperature is -1.0, not above 0"),
    "a temperature of 1e-300": (lambda c: {**c, "temperature": 1e-300}, "temperature is 1e-300, outside 0.05 to 20, "
                                "the range temperatures are fitted in; restore the bundle from a good copy$"),
    "a temperature of 1e300": (lambda c: {**c, "temperature": 1e300}, "temperature is 1e\\+300, outside 0.05 to 20"),
    "a zero std": (lambda c: {**c, "std": 0}, "std is 0.0, outside 0.05 to 1"),
    # each of these gave confident wrong labels with exit 0 (a card without its checksum loads with a warning)
    "a threshold above 1": (lambda c: {**c, "threshold": 1.5}, "threshold is 1.5, not a probability in \\[0, 1\\]"),
    "a negative TTA threshold": (lambda c: {**c, "tta_threshold": -0.2}, "tta_threshold is -0.2, not a probability"),
    "no threshold": (lambda c: {k: v for k, v in c.items() if k != "threshold"}, "bundle.json: threshold is missing"),
    "the other class positive": (lambda c: {**c, "positive": "NORMAL"},
                                 "classes \\['NORMAL', 'PNEUMONIA'\\] and positive 'NORMAL' are not the pneumonia "
                                 "task's"),
    "classes swapped": (lambda c: {**c, "classes": ["PNEUMONIA", "NORMAL"]}, "are not the pneumonia task's"),
    "a mean beyond grey": (lambda c: {**c, "mean": 1e6}, "mean is 1000000.0, not a grey level in \\[0, 1\\]"),
    "a size of 3": (lambda c: {**c, "size": 3}, "size is 3, not 8 to 2048 pixels"),
    "a size of 100000": (lambda c: {**c, "size": 100000}, "size is 100000, not 8 to 2048 pixels"),
    "a JPEG quality of 500": (lambda c: {**c, "source_quality": 500},
                              "source_quality must be a JPEG quality, 1 to 100"),
}


@pytest.mark.parametrize("damage", DAMAGED_CARDS)
def test_a_card_of_the_wrong_shape_is_a_one_line_reason(
    tiny_bundle: Path, tmp_path: Path, film: Path, damage: str, capsys: pytest.CaptureFixture
) -> None:
    """BundleCard(**data) raised TypeError or AttributeError tracebacks, and a misspelt field silently took its
    default; each is refused naming the field (here in a card without a checksum, which would refuse any edit)."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    card = json.loads((bundle / CARD).read_text())
    del card[CHECKSUM]
    written_before_checksums(card)
    change, reason = DAMAGED_CARDS[damage]
    (bundle / CARD).write_text(json.dumps(change(card)))
    with pytest.raises(ValueError, match=reason):
        load_card(bundle)
    assert cli.main(["predict", str(bundle), str(film)]) == 2
    one_line_error(capsys, "bundle.json")


@pytest.mark.parametrize("change, reason", [
    ({"std": 1e-9}, "std is 1e-09, outside 0.05 to 1 \\(a spread of \\[0, 1\\] grey levels\\)"),
    ({"std": 1e9}, "std is 1000000000.0, outside 0.05 to 1"),
    ({"mean": 123.7, "std": 58.4}, "mean is 123.7, not a grey level in \\[0, 1\\]"),  # a 0-255 scale
    ({"mean": 0.5, "std": 58.4}, "std is 58.4, outside 0.05 to 1"),
    ({"source_size": 1, "source_quality": 75}, "source_size must be at least 8 pixels, got 1"),
], ids=["std 1e-9", "std 1e9", "0-255 mean", "0-255 std", "source_size 1"])
def test_a_resealed_card_of_preprocessing_no_model_reads_is_refused(
    tiny_bundle: Path, tmp_path: Path, change: dict, reason: str
) -> None:
    """A card edited and sealed again (its checksum recomputed as save_card computes it) passes the integrity check:
    a std of 1e-9 read a normal film 0.0 and one of 1e9 read it 0.49, PNEUMONIA (every film's input near 0), and a
    source_size of 1 squashed every film to one grey pixel first, all with exit 0.
    Each is refused by field and value."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    save_card(bundle, dataclasses.replace(load_card(bundle), **change))
    with pytest.raises(ValueError, match=f"bundle.json: .*{reason}"):
        load_card(bundle)


@pytest.mark.parametrize("change, reason", [
    ({"size": 64}, "size is 64, but the training run that made the model recorded image_size 32"),
    ({"resize_policy": "pad"}, "resize_policy is 'pad', but the training run that made the model recorded "
                               "resize_policy 'squash'"),
    ({"task": "etiology", "classes": ["bacteria", "virus"], "positive": "virus"},
     "task is 'etiology', but the training run that made the model recorded task 'pneumonia'"),
], ids=["size", "resize policy", "task"])
def test_a_resealed_card_that_is_not_its_runs_record_is_refused(
    tiny_bundle: Path, tmp_path: Path, change: dict, reason: str
) -> None:
    """A card whose size, resize policy or task was edited and sealed again loaded: the 32 px model read films at 64
    px and `predict --backend torch` called both pneumonia films NORMAL with exit 0 (its network pools to a fixed
    size, so its weights fit any size), and a pneumonia model answered as bacteria vs virus. The run's own record,
    train_config, under the same checksum, says what it was trained on."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    save_card(bundle, dataclasses.replace(load_card(bundle), **change))
    with pytest.raises(ValueError, match=f"bundle.json: {reason}; restore the bundle from a good copy$"):
        Predictor(bundle, backend="torch")


def test_a_resealed_card_whose_model_settings_are_not_its_runs_is_refused(tmp_path: Path) -> None:
    """timm's global_pool "max" in place of the "avg" a model was trained with leaves every weight's shape alone: a
    card edited so and sealed again loaded, and the model gave other logits for the same film (-646 and 85, then
    5061 and 49: PNEUMONIA read NORMAL). The run's record of its settings says what it was trained with."""
    torch.manual_seed(0)
    net = models.create("test_efficientnet", num_classes=2, in_chans=1)
    recorded = {"task": "pneumonia", "image_size": 128, "resize_policy": "squash", "model_kwargs": {}}
    card = BundleCard("test_efficientnet", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 128, "squash", 0.5,
                      0.25, train_config=recorded)
    bundle = save_bundle(tmp_path / "bundle", net, card)
    assert load_bundle(bundle)[1].model_kwargs == {}
    save_card(bundle, dataclasses.replace(load_card(bundle), model_kwargs={"global_pool": "max"}))
    with pytest.raises(ValueError, match="bundle.json: model_kwargs is {'global_pool': 'max'}, but the training run "
                                         "that made the model recorded model_kwargs {}; restore the bundle"):
        load_bundle(bundle)


def test_a_card_of_a_task_not_registered_here_is_held_to_what_every_task_is(tiny_bundle: Path, tmp_path: Path) -> None:
    """A plugin's task not imported in this process: compare and the checks still read its card (a three-class
    task names its positive call freely), while a two-class card whose first class is called positive is refused."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    card = json.loads((bundle / CARD).read_text())
    del card[CHECKSUM]
    written_before_checksums(card)
    for task, classes, positive, ok in (("tri", ["normal", "bacteria", "virus"], "sick", True),
                                        ("duo", ["healthy", "ill"], "ill", True),
                                        ("duo", ["healthy", "ill"], "healthy", False),
                                        ("tri", ["normal", "bacteria", "virus"], "normal", False),
                                        ("one", ["only"], "only", False)):
        (bundle / CARD).write_text(json.dumps(card | {"task": task, "classes": classes, "positive": positive,
                                                      "train_config": card["train_config"] | {"task": task}}))
        if ok:
            assert load_card(bundle).positive == positive
        else:
            with pytest.raises(ValueError, match="is not the positive call of its classes|two or more classes"):
                load_card(bundle)


@pytest.mark.parametrize("change, reason", [
    (lambda text: text[:-2], "is not a readable bundle card"),
    (lambda text: re.sub(r'"temperature": [-+.e\d]+', '"temperature": NaN', text),
     "NaN is no number pneumoscan writes"),
    (lambda text: re.sub(r'"temperature": [-+.e\d]+', '"temperature": 1e999', text),
     "temperature: input should be a finite number \\(found inf\\)"),
    (lambda text: "\udcff" + text, "is not a readable bundle card"),
], ids=["truncated", "NaN", "overflow", "not UTF-8"])
def test_a_card_that_is_not_sound_json_is_a_one_line_reason(tiny_bundle: Path, tmp_path: Path, change,
                                                            reason: str) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path)
    card = json.loads((bundle / CARD).read_text())
    del card[CHECKSUM]
    written_before_checksums(card)
    (bundle / CARD).write_bytes(change(json.dumps(card)).encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match=reason):
        load_card(bundle)


# ---------------------------------------------------------------- damaged weights


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cli_predict_refuses_damaged_weights_of_the_same_size(
    tiny_bundle: Path, tmp_path: Path, film: Path, backend: str, capsys: pytest.CaptureFixture
) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path)
    size = (bundle / WEIGHTS).stat().st_size
    damage_weights(bundle)
    assert (bundle / WEIGHTS).stat().st_size == size
    assert cli.main(["predict", str(bundle), str(film), "--backend", backend]) == 2
    one_line_error(capsys, "model.safetensors is damaged")


def test_weights_of_another_architecture_are_a_reason_not_a_traceback(
    tiny_bundle: Path, tmp_path: Path, film: Path, capsys: pytest.CaptureFixture
) -> None:
    """A bundle older than the files' checksums holding another model's weights (nothing says what they should
    be): torch's hundreds of lines of missing and unexpected keys became one line and exit status 2."""
    from safetensors.torch import save_file

    bundle = copy_bundle(tiny_bundle, tmp_path)
    save_file(models.create("resnet10t", 2, in_chans=1).state_dict(), bundle / WEIGHTS)
    card = json.loads((bundle / CARD).read_text())
    del card[CHECKSUM], card["files"]
    written_before_checksums(card)
    (bundle / CARD).write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"its weights are not those of a simple_cnn \(Missing key\(s\) in state_dict"):
        load_bundle(bundle)
    assert cli.main(["predict", str(bundle), str(film), "--backend", "torch"]) == 2
    err = capsys.readouterr().err  # after the warnings that the bundle records no checksums
    assert "Traceback" not in err and "error: " in err and "its weights are not those of a simple_cnn" in err


def test_evaluate_and_export_refuse_damaged_weights(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path)
    damage_weights(bundle)
    onnx_before = (bundle / ONNX_NAME).read_bytes()
    assert cli.main(["evaluate", str(bundle), str(tiny_dataset), "--split", "test", "--out", str(tmp_path / "e")]) == 2
    one_line_error(capsys, "damaged")
    assert not (tmp_path / "e").exists()
    assert cli.main(["export", str(bundle)]) == 2
    one_line_error(capsys, "damaged")
    assert (bundle / ONNX_NAME).read_bytes() == onnx_before  # nothing exported from the damaged weights


def test_server_does_not_start_on_damaged_weights(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path)
    damage_weights(bundle)
    for backend in ("torch", "onnx"):
        with pytest.raises(ValueError, match="model.safetensors is damaged"):
            create_app(bundle, backend=backend)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_weights_resealed_with_a_value_not_finite_are_refused_at_load_naming_the_tensor(
    int8_bundle: Path, tmp_path: Path, film: Path, value: float, capsys: pytest.CaptureFixture
) -> None:
    """A NaN or an infinity written into the weights and sealed again (their SHA-256 recorded anew, and the card's
    checksum with it) passes the digest check: the bundle loaded, `predict` refused each film in turn and `serve`
    started, answered 500 and turned unhealthy. Refused at load, naming the bundle's file and the tensor; by the ONNX
    backends too, which had called the bundle's model.onnx stale (exported from other weights) and its
    model.int8.onnx made from other weights."""
    from safetensors.torch import load, save

    bundle = copy_bundle(int8_bundle, tmp_path)
    tensors = load((bundle / WEIGHTS).read_bytes())
    name = sorted(tensors)[1]
    tensors[name].view(-1)[3] = value
    (bundle / WEIGHTS).write_bytes(save(tensors))
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, files={**card.files, WEIGHTS: file_sha256(bundle / WEIGHTS)}))
    reason = (f"{re.escape(str(bundle / WEIGHTS))}: its tensor '{re.escape(name)}' holds 1 NaN or infinite values of "
              f"{tensors[name].numel()}, which no model computes with")
    with pytest.raises(ValueError, match=f"^{reason}"):
        load_bundle(bundle)
    with pytest.raises(ValueError, match=f"^{reason}"):
        create_app(bundle, backend="torch")
    assert cli.main(["predict", str(bundle), str(film), "--backend", "torch"]) == 2
    one_line_error(capsys, f"its tensor '{name}' holds 1 NaN or infinite values")
    for backend in ("onnx", "onnx-int8"):
        with pytest.raises(ValueError, match=f"^{reason}"):
            Predictor(bundle, backend=backend)


def reseal_graph(bundle: Path, name: str, value: float, place: str) -> str:
    """Write ``value`` into BUNDLE/NAME's first floating-point initializer of more than one value (``place``
    "constant": given instead by a Constant node, as exporters write some: efficientnet_lite0's graph holds 111;
    "attribute": into its first float attribute instead, a Gemm's alpha; "external": that initializer's values
    moved to a file beside it in the bundle's folder), then seal the file again as a tool would: its sidecar's and
    bundle.json's SHA-256 recorded anew. Returns what the refusal says after the file's name and "its"."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model_from_string((bundle / name).read_bytes())
    tensor = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 1)
    values = numpy_helper.to_array(tensor).copy()
    if place != "attribute":
        values.flat[0] = value
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    what = f"initializer {tensor.name!r}"
    if place == "constant":
        node = onnx.helper.make_node("Constant", [], [tensor.name], name="damaged", value=tensor)
        model.graph.initializer.remove(tensor)
        model.graph.node.insert(0, node)
        what = "Constant node 'damaged'"
    elif place == "attribute":
        node, attribute = next((n, a) for n in model.graph.node for a in n.attribute
                               if a.type == onnx.AttributeProto.FLOAT)
        attribute.f, values = value, np.array([value])
        what = f"attribute {attribute.name!r} of {node.op_type} node {node.name!r}"
    elif place == "external":  # in the bundle's own folder, as another tool would write it
        (bundle / "values.bin").write_bytes(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="values.bin")
    (bundle / name).write_bytes(model.SerializeToString())
    sidecar = json.loads(spec_path(bundle / name).read_text())
    spec_path(bundle / name).write_text(json.dumps({**sidecar, **described(bundle / name)}))
    record_checksum(bundle, name)
    record_checksum(bundle, spec_path(bundle / name).name)
    if place == "external":
        return f"{what} keeps its values in another file ('values.bin'), which no checksum of the bundle covers"
    return f"{what} holds 1 NaN or infinite values of {values.size}, which no model computes"


@pytest.mark.parametrize(("backend", "value", "place"), [("onnx", float("nan"), "initializer"),
                                                         ("onnx-int8", float("inf"), "initializer"),
                                                         ("onnx", float("-inf"), "constant"),
                                                         ("onnx", float("nan"), "attribute"),
                                                         ("onnx-int8", 1.0, "external")],
                         ids=["onnx-nan", "onnx-int8-inf", "onnx-constant", "onnx-attribute", "onnx-int8-external"])
def test_an_onnx_model_resealed_with_a_value_not_finite_is_refused_at_load_naming_it(
    int8_bundle: Path, tmp_path: Path, film: Path, capsys: pytest.CaptureFixture, backend: str, value: float,
    place: str
) -> None:
    """A NaN or an infinity written into model.onnx or model.int8.onnx and sealed again (its SHA-256 recorded anew
    in its sidecar and bundle.json) passes every digest check: the ONNX backends loaded it and refused each film in
    turn, and one in a float attribute (a Gemm's alpha) was not looked for. Refused at load, naming the file and the
    tensor or attribute; so is a tensor whose values were moved to another file, which no checksum covers (ONNX
    Runtime had refused it in its own words, after logging a line of its own)."""
    bundle = copy_bundle(int8_bundle, tmp_path)
    name = INT8_NAME if backend == "onnx-int8" else ONNX_NAME
    said = reseal_graph(bundle, name, value, place)
    with pytest.raises(ValueError, match=f"^{re.escape(f'{bundle / name}: its {said}')}"):
        Predictor(bundle, backend=backend)
    assert cli.main(["predict", str(bundle), str(film), "--backend", backend]) == 2
    one_line_error(capsys, said)


def graph_holding(tensor: Any, where: str) -> bytes:
    """A model whose ``tensor`` is an initializer, a sparse initializer's values, a Constant node's value, that of a
    Constant node in an If node's branch, or in a local function's body."""
    import onnx
    from onnx import helper

    constant = helper.make_node("Constant", [], ["c"], name="k", value=tensor)
    graph: dict[str, Any] = {"nodes": [], "name": "g", "inputs": [], "outputs": []}
    functions = []
    if where == "initializer":
        graph["initializer"] = [tensor]
    elif where == "sparse initializer":
        graph["sparse_initializer"] = [helper.make_sparse_tensor(tensor, helper.make_tensor("i", onnx.TensorProto.INT64,
                                                                                            [3], [0, 1, 2]), [3])]
    elif where == "Constant node":
        graph["nodes"] = [constant]
    elif where == "branch":
        branch = helper.make_graph([constant], "branch", [], [])
        graph["nodes"] = [helper.make_node("If", ["x"], ["y"], then_branch=branch, else_branch=branch)]
    else:
        functions = [helper.make_function("local", "f", [], ["c"], [constant], [helper.make_opsetid("", 17)])]
    return helper.make_model(helper.make_graph(**graph), functions=functions).SerializeToString()


@pytest.mark.parametrize("data_type", ["FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16"])
@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed_field"])
@pytest.mark.parametrize("where", ["initializer", "sparse initializer", "Constant node", "branch", "function"])
def test_a_value_not_finite_is_found_in_every_place_and_encoding_an_onnx_file_holds_it(
        data_type: str, raw: bool, where: str) -> None:
    """The ONNX check reads a graph's tensors by onnx.proto's field numbers (the onnx package's parse costs 0.6 s at
    import): a NaN or an infinity is found as onnx's own reading finds it, in each floating-point type, whether held
    as raw bytes or in the type's own field (float16 and bfloat16: int32_data), and in every place a file holds a
    tensor; the same tensor finite passes."""
    from onnx import TensorProto, helper, numpy_helper

    kind = getattr(TensorProto, data_type)
    for values, refused in (([1.0, float("nan"), float("-inf")], True), ([1.0, -2.5, 3e4], False)):
        tensor = (numpy_helper.from_array(np.array(values).astype(helper.tensor_dtype_to_np_dtype(kind)), "w") if raw
                  else helper.make_tensor("w", kind, [3], values))
        assert bool(tensor.raw_data) == raw
        model = graph_holding(tensor, where)
        if not refused:
            check_finite(model, Path("m.onnx"))
            continue
        what = f"{where} 'w'" if where.endswith("initializer") else "Constant node 'k'"
        with pytest.raises(ValueError, match=f"^m.onnx: its {what} holds 2 NaN or infinite values of 3, which no"):
            check_finite(model, Path("m.onnx"))


def test_float_attributes_values_in_another_file_and_no_protobuf_are_refused_by_the_onnx_check() -> None:
    """Beside tensors, a node's float attributes (a LeakyRelu's alpha, a BatchNormalization's epsilon, a Constant's
    value_floats; in a branch, in a local function) are checked for a NaN or an infinity, where they had passed; a
    tensor of any type whose values lie in another file (external data: an initializer, a sparse tensor's indices, a
    Constant's value in a branch) is refused wherever the file is, as no checksum covers it; and bytes no protobuf
    parse reads are refused as not ONNX, where the parse raised its own DecodeError. The same attributes finite
    pass."""
    from onnx import TensorProto, helper, numpy_helper

    def graph(node: Any, where: str = "graph", **extra: Any) -> bytes:
        nodes, functions = [node], []
        if where == "branch":
            branch = helper.make_graph([node], "branch", [], [])
            nodes = [helper.make_node("If", ["x"], ["y"], then_branch=branch, else_branch=branch)]
        elif where == "function":
            nodes, functions = [], [helper.make_function("local", "f", [], ["y"], [node],
                                                         [helper.make_opsetid("", 17)])]
        model = helper.make_model(helper.make_graph(nodes, "g", [], [], **extra), functions=functions)
        return model.SerializeToString()

    def external(tensor: TensorProto, location: str) -> TensorProto:
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=location)
        return tensor

    for op, attribute, where, inputs in [("LeakyRelu", "alpha", "graph", ["x"]),
                                         ("BatchNormalization", "epsilon", "branch", ["x", "s", "b", "m", "v"]),
                                         ("Constant", "value_floats", "function", [])]:
        for value, refused in ((float("nan"), True), (float("-inf"), True), (0.01, False)):
            given = [1.0, value] if attribute == "value_floats" else value
            model = graph(helper.make_node(op, inputs, ["y"], name="n", **{attribute: given}), where)
            if not refused:
                check_finite(model, Path("m.onnx"))
                continue
            with pytest.raises(ValueError, match=f"^m.onnx: its attribute '{attribute}' of {op} node 'n' holds 1 NaN "
                                                 f"or infinite values of {1 + (attribute == 'value_floats')}, "):
                check_finite(model, Path("m.onnx"))
    values = numpy_helper.from_array(np.ones(3, np.float32), "w")
    indices = numpy_helper.from_array(np.arange(3, dtype=np.int64), "i")
    for model, what, location in [
        (graph(helper.make_node("Relu", ["x"], ["y"]), initializer=[external(values, "w.bin")]),
         "initializer 'w'", "w.bin"),
        (graph(helper.make_node("Relu", ["x"], ["y"]), sparse_initializer=[helper.make_sparse_tensor(
            numpy_helper.from_array(np.ones(3, np.float32), "w"), external(indices, "../i.bin"), [3])]),
         "sparse initializer 'w'", "../i.bin"),
        (graph(helper.make_node("Constant", [], ["y"], name="k", value=external(
            numpy_helper.from_array(np.ones(3, np.float32), "c"), "/dev/zero")), "branch"),
         "Constant node 'k'", "/dev/zero"),
    ]:
        with pytest.raises(ValueError, match=re.escape(f"m.onnx: its {what} keeps its values in another file "
                                                       f"({location!r}), which no checksum")):
            check_finite(model, Path("m.onnx"))
    with pytest.raises(ValueError, match="^m.onnx is not a loadable ONNX model: its bytes are not an ONNX protobuf"):
        check_finite(b"\x0a\xff\xff", Path("m.onnx"))


def test_one_flipped_bit_in_the_weights_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """A change too small to give NaN (the lowest mantissa bit of one float) still gives other scores."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    flip_one_bit(bundle / WEIGHTS, data_start(bundle / WEIGHTS))
    with pytest.raises(ValueError, match="model.safetensors is damaged"):
        Predictor(bundle)
    with pytest.raises(ValueError, match="damaged"):
        load_bundle(bundle)


def test_a_bundle_without_checksums_loads_with_a_warning(
    tiny_bundle: Path, tmp_path: Path, film: Path, caplog: pytest.LogCaptureFixture
) -> None:
    predicts_without(copy_bundle(tiny_bundle, tmp_path), ("files", CHECKSUM), film, "torch", caplog)
    assert "records no checksums" in caplog.text and "cannot be detected" in caplog.text


# ---------------------------------------------------------------- non-finite scores


def test_nan_scores_are_error_rows_and_exit_1(tmp_path: Path, film: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = nan_bundle(tmp_path / "nan")
    with pytest.raises(NonFiniteScore):
        Predictor(bundle).probabilities(preprocess(film, 32)[None])
    [row] = predict_paths(bundle, [film], backend="torch")
    assert row.keys() == {"path", "error"} and "non-finite score" in row["error"]
    out = tmp_path / "r.csv"
    assert cli.main(["predict", str(bundle), str(film), "--backend", "torch", "--out", str(out)]) == 1
    assert "non-finite score" in capsys.readouterr().err
    [written] = list(csv.DictReader(out.open()))
    assert "non-finite score" in written["error"] and written["label"] == written["probability"] == ""


def test_a_failed_etiology_stage_keeps_the_reading_and_says_what_failed(
    tiny_bundle: Path, film: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The pneumonia reading stands; the etiology is empty, never a number, and the line says the reading is
    incomplete (not that the film was unreadable); the command fails."""
    first = with_threshold(tiny_bundle, 0.0, tmp_path / "always")  # every film handed to the second stage
    second = nan_bundle(tmp_path / "nan-etiology", "etiology")
    [row] = predict_paths(first, [film], backend="torch", etiology=second)
    assert row["label"] == "PNEUMONIA" and row["etiology_probability_virus"] is None and row["etiology_label"] is None
    assert row["error"].startswith("etiology stage: ") and "non-finite score" in row["error"]
    assert cli.main(["predict", str(first), str(film), "--etiology", str(second), "--backend", "torch"]) == 1
    assert f"incomplete: {film}: etiology stage: " in capsys.readouterr().err


def test_server_answers_500_with_a_reason_and_turns_unhealthy(tmp_path: Path) -> None:
    bundle = nan_bundle(tmp_path / "nan")
    with TestClient(create_app(bundle, backend="torch")) as client:
        assert client.get("/healthz").status_code == 200
        gray = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)  # a blank film is refused first
        r = client.post("/v1/predict", files={"file": ("x.png", png(gray), "image/png")})
        assert r.status_code == 500 and "non-finite score" in r.json()["error"]
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy" and "non-finite score" in health.json()["reason"]
        # a model broken for one film is not trusted with the next, whatever it would score
        again = client.post("/v1/predict", files={"file": ("x.png", png(gray), "image/png")})
        assert again.status_code == 503 and "answers no more predictions" in again.json()["error"]


def test_parity_check_fails_on_nan(tiny_bundle: Path, tmp_path: Path) -> None:
    """NaN > tolerance is false: the check must not pass a model whose outputs are NaN on either side."""
    with pytest.raises(ValueError, match="non-finite"):
        export_onnx(nan_bundle(tmp_path / "nan"))
    good, card = load_bundle(tiny_bundle)
    broken, _ = load_bundle(tmp_path / "nan")
    path = tmp_path / "broken.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(broken, (torch.zeros(1, 1, 32, 32),), str(path), input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False)
    with pytest.raises(ValueError, match="differs from torch"):
        _check_parity(good, session(path), card.size, card.temperature)


# ---------------------------------------------------------------- ONNX model


def test_stale_onnx_is_refused_until_exported_again(
    tiny_bundle: Path, tmp_path: Path, film: Path, capsys: pytest.CaptureFixture
) -> None:
    """A model.onnx exported from other weights is refused with its reason, not re-exported behind the user's
    back; `pneumoscan export` is the remedy."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    torch.manual_seed(1)
    other = save_bundle(tmp_path / "other", models.create("simple_cnn"), load_card(bundle))
    # another model's export and sidecar copied in by hand (export itself refuses to write into another bundle)
    stale = export_onnx(other, tmp_path / "stale.onnx")
    for name, made in ((ONNX_NAME, stale), (spec_path(bundle / ONNX_NAME).name, spec_path(stale))):
        (bundle / name).write_bytes(made.read_bytes())
    with pytest.raises(ValueError, match="stale: it was exported from other weights"):
        Predictor(bundle, backend="onnx")
    assert cli.main(["predict", str(bundle), str(film), "--backend", "onnx"]) == 2
    one_line_error(capsys, "stale", "pneumoscan export")
    assert cli.main(["export", str(bundle)]) == 0
    capsys.readouterr()
    images = preprocess(film, 32)[None]
    onnx_p = Predictor(bundle, backend="onnx").probabilities(images)
    assert np.allclose(onnx_p, Predictor(bundle).probabilities(images), atol=1e-4, rtol=0)
    assert load_card(bundle).files[ONNX_NAME] == file_sha256(bundle / ONNX_NAME)


@pytest.mark.parametrize("damage", ["truncated", "one flipped bit", "missing"])
def test_damaged_onnx_is_refused_with_a_reason(
    tiny_bundle: Path, tmp_path: Path, film: Path, damage: str, capsys: pytest.CaptureFixture
) -> None:
    bundle = copy_bundle(tiny_bundle, tmp_path)
    path = bundle / ONNX_NAME
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "one flipped bit":
        flip_one_bit(path, path.stat().st_size - 100)
    else:
        path.unlink()
    with pytest.raises(ValueError, match="missing" if damage == "missing" else "model.onnx is damaged"):
        Predictor(bundle, backend="onnx")
    assert cli.main(["predict", str(bundle), str(film), "--backend", "onnx"]) == 2
    one_line_error(capsys, "model.onnx", "pneumoscan export")
    assert cli.main(["predict", str(bundle), str(film), "--backend", "torch"]) == 0  # torch does not read it
    capsys.readouterr()


def test_an_edited_onnx_sidecar_is_refused(tiny_bundle: Path, tmp_path: Path, film: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    """model.onnx.json gives any ONNX runtime the threshold and preprocessing: an edited threshold (0.99) went
    unnoticed, pneumoscan's own answers being right while another runtime's would be wrong."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    sidecar = bundle / spec_path(ONNX_NAME).name
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | {"threshold": 0.99}))
    assert cli.main(["predict", str(bundle), str(film), "--backend", "onnx"]) == 2
    one_line_error(capsys, "model.onnx.json is damaged", "pneumoscan export")
    assert cli.main(["export", str(bundle)]) == 0  # the remedy it names writes both again
    assert cli.main(["predict", str(bundle), str(film), "--backend", "onnx"]) == 0
    capsys.readouterr()


def test_truncated_onnx_outside_a_bundle_is_a_one_line_reason(tiny_bundle: Path, tmp_path: Path) -> None:
    """A file with no recorded checksum (an export to --out) that ONNX Runtime cannot parse."""
    out = export_onnx(tiny_bundle, tmp_path / "elsewhere.onnx")
    assert load_card(tiny_bundle).files[ONNX_NAME] == file_sha256(tiny_bundle / ONNX_NAME)  # its record untouched
    assert json.loads(spec_path(out).read_text())["weights_sha256"]
    out.write_bytes(out.read_bytes()[:500])
    with pytest.raises(ValueError, match="is not a loadable ONNX model") as e:
        session(out)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- image cache


@pytest.fixture
def films(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = tmp_path / "films" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_damaged_cache_is_rebuilt_with_a_warning(films: list[str], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    spec, cache_dir = PreprocessSpec(16), tmp_path / "cache"
    first = build_cache(films, spec, cache_dir=cache_dir, workers=1)
    pixels = np.array(first.images)
    array_file = cache_dir / f"{first.key}.u8"
    raw = bytearray(array_file.read_bytes())
    raw[100:120] = bytes(255 - b for b in raw[100:120])  # same size, other pixels
    array_file.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.cache"):
        again = build_cache(films, spec, cache_dir=cache_dir, workers=1)
    assert "is damaged" in caplog.text and "rebuilding" in caplog.text
    np.testing.assert_array_equal(again.images, pixels)
    assert again.data_fingerprint == first.data_fingerprint
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.cache"):
        build_cache(films, spec, cache_dir=cache_dir, workers=1)
    assert caplog.text == ""  # a sound cache opens quietly


def test_data_fingerprint_changes_when_the_pixels_change(films: list[str], tmp_path: Path) -> None:
    """Same files, same stats, same spec (so the same cache key), other decoded pixels (another decoder build):
    other training data, so another fingerprint."""
    spec, cache_dir = PreprocessSpec(16), tmp_path / "cache"
    first = build_cache(films, spec, cache_dir=cache_dir, workers=1)
    array_file, index_file = cache_dir / f"{first.key}.u8", cache_dir / f"{first.key}.json"
    other = 255 - np.array(first.images)
    array_file.write_bytes(other.tobytes())
    index = json.loads(index_file.read_text())
    index["sha256"] = hashlib.sha256(other.tobytes()).hexdigest()
    index_file.write_text(json.dumps(index))
    second = build_cache(films, spec, cache_dir=cache_dir, workers=1)
    np.testing.assert_array_equal(second.images, other)
    assert second.key == first.key and second.data_fingerprint != first.data_fingerprint


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_evaluate_stops_on_nan_scores(tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture,
                                      backend: str) -> None:
    bundle = nan_bundle(tmp_path / "run" / "bundle")
    write_manifest(discover(tiny_dataset).split("train"), tmp_path / "run" / "split.csv")  # test films are new to it
    as_run_split(bundle)
    assert cli.main(["-q", "evaluate", str(bundle), str(tiny_dataset), "--split", "test", "--out", str(tmp_path / "e"),
                     "--backend", backend]) == 2
    one_line_error(capsys, "non-finite")
    assert not (tmp_path / "e" / "metrics.json").exists()


def bright_overflow_bundle(directory: Path) -> Path:
    """A bundle whose model is finite on dark films and overflows to infinity on any bright one: the bad rows of
    a batch must be refused without taking the good ones down."""
    torch.manual_seed(0)
    model = models.create("simple_cnn")
    with torch.no_grad():
        conv = model.features[0]
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0, 1, 1] = 1e30  # channel 0 = 1e30 x the normalised pixel, 0 after the ReLU when dark
        model.head[0].weight[:, 0 : 16 * 16] = 1e30  # channel 0's features: 1e60 overflows to inf
    card = BundleCard("simple_cnn", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 32, "squash", 0.5, 0.25)
    return save_bundle(directory, model, card)


def test_one_non_finite_film_does_not_take_the_others_down(tmp_path: Path) -> None:
    bundle = bright_overflow_bundle(tmp_path / "b")
    # grey ramps, not flat squares: decoding refuses a blank film before the model sees it
    dark, bright = (np.tile(np.linspace(lo, lo + 40, 32).astype(np.uint8), (32, 1)) for lo in (40, 210))
    predictor = Predictor(bundle)
    alone = predictor.probabilities(dark[None])
    probs, bad = predictor.finite_probabilities(np.stack([dark, bright, dark]))
    assert bad.tolist() == [False, True, False]
    assert np.allclose(probs[[0, 2]], alone, atol=1e-6) and np.isnan(probs[1]).all()
    for name, gray in (("dark", dark), ("bright", bright)):
        Image.fromarray(gray).save(tmp_path / f"{name}.png")
    rows = predict_paths(bundle, [tmp_path / "dark.png", tmp_path / "bright.png"], backend="torch")
    assert rows[0]["label"] in ("NORMAL", "PNEUMONIA") and "error" not in rows[0]
    assert rows[1].keys() == {"path", "error"} and "non-finite score" in rows[1]["error"]
    # the web service's batcher: one model call for both, each request hears its own outcome
    futures = [Future(), Future()]
    for f in futures:
        f.set_running_or_notify_cancel()
    Batcher(predictor)._run([(dark, futures[0]), (bright, futures[1])])
    assert np.allclose(futures[0].result(), alone[0], atol=1e-6)
    with pytest.raises(NonFiniteScore):
        futures[1].result()


def test_int8_model_and_its_sidecar_are_checked_against_their_recorded_checksums(tiny_bundle: Path,
                                                                                 tmp_path: Path) -> None:
    """The sidecar holds the thresholds INT8 scores are labelled at: checked like the model, and refused when it
    was written before its checksum was kept (with the FP32 thresholds where a reader looks)."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    assert cli.main(["export", str(bundle), "--int8", "--data", str(tiny_bundle.parent / "split.csv")]) == 0
    sidecar_path = spec_path(bundle / INT8_NAME)
    files = load_card(bundle).files
    assert files[INT8_NAME] == file_sha256(bundle / INT8_NAME) and files[sidecar_path.name] == file_sha256(sidecar_path)
    Predictor(bundle, backend="onnx-int8")

    edited = copy_bundle(bundle, tmp_path, "edited")  # both INT8 thresholds moved alike: only the checksum can tell
    sidecar = json.loads(sidecar_path.read_text())
    moved = {k: sidecar[k] * 1.1 for k in ("threshold", "tta_threshold", "int8_threshold", "int8_tta_threshold")}
    (edited / sidecar_path.name).write_text(json.dumps({**sidecar, **moved}, indent=2))
    with pytest.raises(ValueError, match="model.int8.onnx.json is damaged"):
        Predictor(edited, backend="onnx-int8")

    unrecorded = copy_bundle(bundle, tmp_path, "unrecorded")  # as `export --int8` left it before the record
    card = load_card(unrecorded)
    save_card(unrecorded,
              dataclasses.replace(card, files={k: v for k, v in card.files.items() if k != sidecar_path.name}))
    with pytest.raises(ValueError, match="model.int8.onnx.json: bundle.json records no checksum for it.*--int8"):
        Predictor(unrecorded, backend="onnx-int8")

    older = copy_bundle(bundle, tmp_path, "older")  # no checksums at all, FP32 thresholds under threshold
    card_text = json.loads((older / CARD).read_text())
    (older / CARD).write_text(json.dumps(written_before_checksums({k: v for k, v in card_text.items()
                                                                   if k not in (CHECKSUM, "files")})))
    fp32 = {"threshold": card.threshold, "tta_threshold": card.tta_threshold}
    (older / sidecar_path.name).write_text(json.dumps({**sidecar, **fp32}, indent=2))
    with pytest.raises(ValueError, match="other thresholds under threshold and tta_threshold than its INT8 ones"):
        Predictor(older, backend="onnx-int8")

    flip_one_bit(bundle / INT8_NAME, (bundle / INT8_NAME).stat().st_size - 100)
    with pytest.raises(ValueError, match="model.int8.onnx is damaged"):
        Predictor(bundle, backend="onnx-int8")


def test_an_onnx_model_or_card_not_the_sidecars_is_refused_though_bundle_json_records_it(
        int8_bundle: Path, tmp_path: Path, film: Path) -> None:
    """bundle.json's checksums catch a damaged copy, not a card or model file from elsewhere recorded again (by hand,
    or a tool that reseals): the sidecar, written with the ONNX file, must describe both the file and the card, or
    the ONNX backends give another model's scores (or another preprocessing) under this bundle's name."""
    foreign = copy_bundle(int8_bundle, tmp_path, "foreign")
    torch.manual_seed(1)
    (foreign / ONNX_NAME).write_bytes(module_onnx(models.create("simple_cnn"), 32))
    record_checksum(foreign, ONNX_NAME)
    with pytest.raises(ValueError, match="model.onnx is not the model model.onnx.json describes"):
        Predictor(foreign, backend="onnx")
    card = load_card(int8_bundle)
    for backend in ("onnx", "onnx-int8"):
        for change in ({"mean": 0.7}, {"temperature": card.temperature / 2}, {"model": "cnn5"}):
            edited = copy_bundle(int8_bundle, tmp_path, f"{backend}-{next(iter(change))}")
            save_card(edited, dataclasses.replace(card, **change))
            with pytest.raises(ValueError, match=f"describes another model than bundle.json: its {next(iter(change))} "
                                                 ".*run `pneumoscan export"):
                Predictor(edited, backend=backend)
    moved = copy_bundle(int8_bundle, tmp_path, "threshold")  # the FP32 sidecar holds the thresholds, the INT8 its own
    save_card(moved, at_threshold(card, threshold=card.threshold / 2))
    with pytest.raises(ValueError, match="model.onnx.json describes another model than bundle.json: its threshold"):
        Predictor(moved, backend="onnx")
    gray = np.asarray(Image.open(film))
    assert Predictor(moved, backend="onnx-int8").predict_array(gray)["label"] in card.classes


def test_training_records_the_fingerprint_that_covers_the_pixels(tiny_bundle: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """The bundle's data fingerprint is the cache's key combined with the checksum of the pixels it trained on.
    Under pytest-xdist the shared bundle was trained by one worker, into that worker's cache."""
    caches = ([default_cache_dir()] if "PYTEST_XDIST_WORKER" not in os.environ else
              [worker / "cache" for worker in tmp_path_factory.getbasetemp().parent.iterdir()])
    # each image cache's index beside its pixels (the folder holds the copy search's scans-*.json too)
    indexes = [json.loads(p.with_suffix(".json").read_text()) for cache in caches for p in cache.glob("*.u8")]
    covering = {hashlib.sha256(f"{i['fingerprint']}:{i['sha256']}".encode()).hexdigest()[:32] for i in indexes}
    assert load_card(tiny_bundle).data_fingerprint in covering


@pytest.mark.parametrize("name", [WEIGHTS, ONNX_NAME])
def test_a_bundle_file_that_is_a_device_is_refused_not_read_without_end(tiny_bundle: Path, tmp_path: Path,
                                                                        name: str) -> None:
    """A bundle file linked to /dev/zero had been hashed for ever: predict and serve hung instead of refusing."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / name).unlink()
    (bundle / name).symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=f"{name} is not a regular file"):
        Predictor(bundle, backend="onnx")


def test_a_bundle_file_swapped_for_a_pipe_after_its_check_is_refused_not_waited_on(tmp_path: Path) -> None:
    """The bytes loaded are read after the file's checks; a FIFO put in its place in between had the read wait for
    a writer for ever. The handle read is the one checked."""
    pipe = tmp_path / WEIGHTS
    os.mkfifo(pipe)
    refused: list[str] = []
    worker = threading.Thread(target=lambda: refused.append(_refusal(lambda: checked_bytes(pipe, None))), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the read waited on the pipe"
    assert refused == [f"{pipe} is not a regular file (FIFO) since it was checked (the bundle written over?); load it "
                       "again"], refused


def _refusal(call: Callable[[], object]) -> str:
    try:
        call()
    except ValueError as e:
        return str(e)
    return "read"


@pytest.mark.parametrize("removed", [(CHECKSUM,), ("files",), (CHECKSUM, "files")])
def test_a_current_card_without_its_checksums_is_refused_as_edited(tiny_bundle: Path, tmp_path: Path, film: Path,
                                                                   removed: tuple[str, ...],
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Deleting the checksum line that a "damaged" refusal names had turned an edited threshold into a bundle that
    loads with a warning (and without "files", the INT8 sidecar and the image content record went unchecked); a
    card of this format always holds both, so one without them was edited."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    card = json.loads((bundle / CARD).read_text())
    assert card["format_version"] == 2
    card["threshold"] = 0.99
    for field in removed:
        del card[field]
    (bundle / CARD).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="records no .*, which every card of format 2 holds: it was edited"):
        load_card(bundle)
    card["format_version"] = 1  # claimed as a card written before checksums: its fields say otherwise
    (bundle / CARD).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="which every card of format 2 holds: it was edited|bundle.json is damaged"):
        load_card(bundle)
    # a sealed card of format 1 (runs made before format 2) rewritten by pneumoscan (threshold, --add-to-card) is
    # format 2 from then on, so its checksum cannot be deleted either
    older = copy_bundle(tiny_bundle, tmp_path, "older")
    save_card(older, dataclasses.replace(load_card(older), format_version=1))
    assert load_card(older).format_version == 2
    assert cli.main(["predict", str(bundle), str(film)]) == 2
    one_line_error(capsys, "restore the bundle from a good copy")
    # a card of a bundle older than the files' checksums, rewritten so, still loads (with its warning): it has its
    # own checksum now, and nothing can say what its files should hold
    legacy = copy_bundle(tiny_bundle, tmp_path, "legacy")
    text = json.loads((legacy / CARD).read_text())
    (legacy / CARD).write_text(json.dumps(written_before_checksums({k: v for k, v in text.items()
                                                                     if k not in (CHECKSUM, "files")})))
    save_card(legacy, load_card(legacy))
    assert load_card(legacy).format_version == 1 and not load_card(legacy).files


@pytest.mark.parametrize("name", [CARD, "model.onnx.json"])
def test_a_bundle_text_file_that_is_a_pipe_is_refused_not_read_without_end(tiny_bundle: Path, tmp_path: Path,
                                                                          name: str) -> None:
    """The card and the ONNX sidecar were read before any check that they are files: a pipe in their place hung
    predict and serve."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    (bundle / name).unlink()
    os.mkfifo(bundle / name)
    with pytest.raises(ValueError, match="not a regular file|missing or unreadable"):
        Predictor(bundle, backend="onnx")


@pytest.mark.parametrize("name", [CARD, "model.onnx.json"])
def test_a_bundle_text_file_nested_too_deep_to_parse_is_a_reason_not_a_traceback(tiny_bundle: Path, tmp_path: Path,
                                                                               name: str) -> None:
    """JSON nested deeper than Python's parser recurses (a damaged or hostile file of brackets) ended predict,
    evaluate, export and serve in a RecursionError traceback (exit 1); it is refused as any unreadable card or
    sidecar is."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    (bundle / name).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="not a readable bundle card: nested|missing or unreadable"):
        Predictor(bundle, backend="onnx")


@pytest.mark.parametrize("name", ["../../outside.bin", "/dev/zero", "sub/model.safetensors", ".."])
def test_a_card_that_records_a_file_outside_its_folder_is_refused(tiny_bundle: Path, tmp_path: Path, name: str) -> None:
    """A crafted bundle.json (resealed, so its checksum holds) named any path in its files: that file was hashed at
    every load and every health probe after a change."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, files={**card.files, name: "sha256:" + "0" * 64}))
    with pytest.raises(ValueError, match=f"files names {re.escape(repr(name))}, not a file of the bundle's own folder"):
        load_card(bundle)


@pytest.mark.parametrize("backend, name", [("onnx", ONNX_NAME), ("onnx-int8", INT8_NAME)])
def test_a_model_file_written_over_after_its_check_is_not_scored(int8_bundle: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, backend: str,
                                                                  name: str) -> None:
    """The ONNX backends checked a file's SHA-256, then read it again to score: a bundle written over in between (a
    deploy) had another model's graph scored under this card's name and threshold. The bytes scored are the bytes
    checked. The write is made right after the checks, by wrapping the check of the card's fields that ends them."""
    import pneumoscan.inference.onnx_runtime as onnx_runtime

    bundle = tmp_path / "bundle"
    shutil.copytree(int8_bundle, bundle)
    checks = onnx_runtime.check_matches_card

    def then_written_over(model: Path, *args: object, **kwargs: object) -> None:
        checks(model, *args, **kwargs)
        if model.name == name:
            with (bundle / name).open("ab") as f:
                f.write(b"\0")

    monkeypatch.setattr(onnx_runtime, "check_matches_card", then_written_over)
    with pytest.raises(ValueError, match=f"{name} changed while it was loaded .*: its bytes are not those bundle.json "
                                         "records; load it again"):
        Predictor(bundle, backend=backend)


def test_weights_written_over_after_their_check_are_not_loaded(tiny_bundle: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch path checked the weights' SHA-256, then read the file again to load it: weights written over in
    between (15 of 300 loads during a redeploy) were loaded under the card's checksum. The bytes loaded are the bytes
    checked. The file is written over with zeros right after the check, by wrapping the parse that follows it."""
    import pneumoscan.models.bundle as bundle_module

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    parse = bundle_module.load

    def written_over_then_parsed(data: bytes) -> dict[str, torch.Tensor]:
        (bundle / WEIGHTS).write_bytes(bytes(len(data)))
        return parse(data)

    monkeypatch.setattr(bundle_module, "load", written_over_then_parsed)
    loaded = Predictor(bundle, backend="torch")
    assert (bundle / WEIGHTS).read_bytes() == bytes((tiny_bundle / WEIGHTS).stat().st_size)  # written over
    checked = parse((tiny_bundle / WEIGHTS).read_bytes())
    state = loaded.model.state_dict()
    assert state.keys() == checked.keys() and all(torch.equal(state[k], v) for k, v in checked.items())


def test_results_name_the_weights_loaded_not_those_on_disk_later(tiny_bundle: Path, tmp_path: Path) -> None:
    """model_version was taken from the disk at the first results row: weights written over after the load were
    named, not those that scored."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    loaded = Predictor(bundle, backend="onnx")
    (bundle / WEIGHTS).write_bytes((bundle / WEIGHTS).read_bytes() + b"\0")
    assert loaded.identity["model_version"] == f"sha256:{load_card(tiny_bundle).files[WEIGHTS][7:19]}"
    assert file_sha256(bundle / WEIGHTS) != load_card(tiny_bundle).files[WEIGHTS]


def _evaluation(sensitivity: float = 0.8, ci: list[float] | None = None) -> dict:
    """An external evaluation record as `evaluate --add-to-card` writes one (model_card.evaluation_record)."""
    return {"data": "other", "date": "2026-01-01", "n": 10, "n_positive": 5, "n_negative": 5, "patients": None,
            "prevalence": 0.5, "scores": "plain", "threshold": 0.5, "ci_unit": "film",
            "metrics": {"auc": {"value": 0.9, "ci": [0.7, 0.99]},
                        "sensitivity": {"value": sensitivity, "ci": ci or [0.4, 0.97]}},
            "label_conflicts": [], "unreadable": 0, "outside_scope": 0, "films_checked": True, "caveats": []}


@pytest.mark.parametrize("edit, reason", [
    (lambda c: {"val_metrics": {**c.val_metrics, "auc": 7.5}}, r"val_metrics\.auc is 7\.5, not a figure in \[0, 1\]"),
    (lambda c: {"val_metrics": {**c.val_metrics, "n": -3}}, r"val_metrics\.n is -3, not a count"),
    (lambda c: {"val_metrics": {**c.val_metrics, "n": 12.5}}, r"val_metrics\.n is 12\.5, not a count"),
    (lambda c: {"val_metrics": {**c.val_metrics, "ci": {**c.val_metrics["ci"], "auc": [0.9, 0.6]}}},
     r"val_metrics\.ci\.auc is \[0\.9, 0\.6\], not an interval in \[0, 1\], low to high"),
    (lambda c: {"val_metrics": {**c.val_metrics, "ci": {**c.val_metrics["ci"], "sensitivity": [0.2, 0.5]}}},
     r"val_metrics\.ci\.sensitivity is \[0\.2, 0\.5\], which does not hold its figure 1\.0"),
    (lambda c: {"external_evaluations": [_evaluation(1.3)]},
     r"external_evaluations\[0\]\.metrics\.sensitivity\.value is 1\.3, not a figure in \[0, 1\]"),
    (lambda c: {"external_evaluations": [_evaluation(0.8, [0.9, 0.95])]},
     r"external_evaluations\[0\]\.metrics\.sensitivity\.ci is \[0\.9, 0\.95\], which does not hold its figure 0\.8"),
    (lambda c: {"external_evaluations": [{**_evaluation(), "n_negative": -5}]},
     r"external_evaluations\[0\]\.n_negative is -5, not a count"),
    (lambda c: {"val_metrics": {**c.val_metrics, "patients": -1.7e308}},
     r"val_metrics\.patients is -1\.7e\+308, not a count"),
    (lambda c: {"val_metrics": {**c.val_metrics, "patients": {"all": 4, "positive": 3, "negative": -2}}},
     r"val_metrics\.patients\.negative is -2, not a count"),
    (lambda c: {"val_metrics": {**c.val_metrics, "auc": [7.5]}}, r"val_metrics\.auc is \[7\.5\], not a figure"),
    (lambda c: {"external_evaluations": [{**_evaluation(), "n": [10]}]},
     r"external_evaluations\[0\]\.n is \[10\], not a figure"),
    (lambda c: {"val_metrics": {**c.val_metrics, "ece": {"a": 1}}}, r"val_metrics\.ece is \{'a': 1\}, not a figure"),
    (lambda c: {"val_metrics": {**c.val_metrics, "auc": {}}}, r"val_metrics\.auc is \{\}, not a figure"),
    (lambda c: {"val_metrics": {**c.val_metrics, "n": {"value": 40}}}, r"val_metrics\.n is \{'value': 40\}, not a "
                                                                         r"figure"),
    (lambda c: {"val_metrics": {**c.val_metrics, "patients": {"positive": 3, "negative": 2}}},
     r"val_metrics\.patients is \{'positive': 3, 'negative': 2\}, not a figure"),
    (lambda c: {"external_evaluations": [{**_evaluation(), "metrics": {"sensitivity": {"v": 0.8}}}]},
     r"external_evaluations\[0\]\.metrics\.sensitivity is \{'v': 0\.8\}, not a figure"),
], ids=["auc 7.5", "negative n", "fractional n", "interval high to low", "interval without its figure",
        "sensitivity 1.3", "evaluation interval without its figure", "negative count", "patients -1.7e308",
        "negative patients of a class", "auc as a list", "count as a list", "rate as a dict", "auc as an empty dict",
        "count as a dict", "patients without all", "evaluation entry without its value"])
def test_a_resealed_card_of_impossible_figures_is_refused(
    tiny_bundle: Path, tmp_path: Path, edit: Callable[[BundleCard], dict], reason: str
) -> None:
    """Figures edited into a card and sealed again loaded, and /v1/model and MODEL_CARD.md showed an AUC of 7.5, a
    sensitivity of 1.3 or an interval above its figure as if measured. Each is refused by field and value; the
    same record with possible figures loads."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, external_evaluations=[_evaluation()]))
    assert load_card(bundle).external_evaluations == [_evaluation()]
    save_card(bundle, dataclasses.replace(card, **edit(card)))
    with pytest.raises(ValueError, match=f"bundle.json: {reason}; restore the bundle from a good copy$"):
        load_card(bundle)


@pytest.mark.parametrize("change, reason", [
    ({"target_sensitivity": {"a": 1}}, r"train_config\.target_sensitivity: input should be a valid number"),
    ({"target_sensitivity": "0.95"}, r"train_config\.target_sensitivity: input should be a valid number"),
    ({"max_false_positive_rate": 1.5}, r"train_config\.max_false_positive_rate: input should be less than or "
                                       r"equal to 1"),
    ({"training_films": {"NORMAL": "60", "PNEUMONIA": 60}}, r"train_config\.training_films\.NORMAL: input should be "
                                                            r"a valid integer"),
    ({"patients": [12]}, r"train_config\.patients: input should be a valid integer"),
], ids=["target as a dict", "target as text", "rate above 1", "films as text", "patients as a list"])
def test_a_resealed_card_whose_run_record_is_of_the_wrong_type_is_refused(
    tiny_bundle: Path, tmp_path: Path, change: dict, reason: str
) -> None:
    """train_config's fields that the card's readers compute with (the threshold policy an ensemble or an INT8 export
    chooses by, the films by class and the sample of patients MODEL_CARD.md states), edited to a dict or a text and
    sealed again, loaded, and were a TypeError where read (MODEL_CARD.md's class balance, the policy's target)."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, train_config={**card.train_config, **change}))
    with pytest.raises(ValueError, match=f"bundle.json: {reason}"):
        load_card(bundle)


def _threshold_record(card: BundleCard, threshold: float, tta_threshold: float) -> dict:
    """A threshold record as `pneumoscan threshold` writes one (rethreshold._threshold_record), its figures aside."""
    return {"date": "2026-01-01", "policy": "Youden's J on other", "data": "other", "split": None, "n": 10,
            "n_positive": 5, "n_negative": 5, "unreadable": 0, "previous_threshold": card.threshold,
            "previous_tta_threshold": card.tta_threshold, "previous_policy": card.threshold_policy,
            "threshold": threshold, "tta_threshold": tta_threshold, "target_sensitivity": None,
            "max_false_positive_rate": None, "sensitivity": 0.8, "specificity": 0.8, "tta_sensitivity": 0.8,
            "tta_specificity": 0.8, "films_checked": True, "caveats": []}


def test_a_resealed_threshold_that_is_not_its_records_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """A threshold edited within [0, 1] and sealed again loaded with the torch backend, which labelled at it while
    MODEL_CARD.md and /v1/model showed figures measured at another: every command that sets a threshold (training,
    ensemble, `threshold`) records it again, in the validation figures or the newest threshold record."""
    bundle = copy_bundle(tiny_bundle, tmp_path)
    card = load_card(bundle)
    assert card.val_metrics["threshold"] == card.threshold
    save_card(bundle, dataclasses.replace(card, threshold=0.3))
    with pytest.raises(ValueError, match=f"bundle.json: threshold is 0.3, but its validation figures were measured at "
                                         f"{card.threshold!r} \\(val_metrics.threshold\\); restore the bundle"):
        Predictor(bundle, backend="torch")
    # a threshold `pneumoscan threshold` chose: its record says it, TTA threshold too
    chosen = dataclasses.replace(card, threshold=0.3, tta_threshold=0.4,
                                 threshold_records=[_threshold_record(card, 0.3, 0.4)])
    save_card(bundle, chosen)
    assert load_card(bundle).threshold == 0.3
    for edit, reason in (({"threshold": 0.35}, "threshold is 0.35, but its newest threshold record says 0.3"),
                         ({"tta_threshold": 0.45}, "tta_threshold is 0.45, but its newest threshold record says 0.4")):
        save_card(bundle, dataclasses.replace(chosen, **edit))
        with pytest.raises(ValueError, match=f"bundle.json: {reason} \\(threshold_records\\[0\\]\\); restore"):
            load_card(bundle)
