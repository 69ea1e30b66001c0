"""Faults on the prediction paths that must end in a refusal with a reason, never in a reading or a traceback: a
film that goes while it is read, a bundle whose card no longer fits its model files; and the service's refusals."""

from __future__ import annotations

import dataclasses
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pneumoscan.data.decode import read_gray
from pneumoscan.data.pixels import DecodeError, too_few_levels_in_window
from pneumoscan.inference import predict
from pneumoscan.inference.explain import explain_array
from pneumoscan.inference.export import write_onnx_spec
from pneumoscan.inference.predict import CHANGED, Predictor, predict_paths
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.card import ONNX_NAME, load_card, save_card
from pneumoscan.serving.app import create_app
from tests.builders import at_threshold, write_png


def film_in(tiny_dataset: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    return Path(shutil.copy(next((tiny_dataset / "test" / "NORMAL").glob("*.jpeg")), folder))


def test_a_film_removed_as_soon_as_it_is_read_gets_no_reading(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A drop folder that moves each film away once it is read: its stamp must be taken before the read starts, or
    the stamp and the check after the reading both see no file, agree, and the film is scored with no header read
    for its scope checks. The real decode runs; the removal is put at the one moment a race would put it, and a stamp
    taken once the read has begun waits for the read to end, as a busy machine may make it."""
    film = film_in(tiny_dataset, tmp_path / "drop")
    started, done = threading.Event(), threading.Event()
    read_described, file_stamp = predict.read_described, predict.file_stamp

    def read_then_move_away(path: str, *args: object):  # noqa: ANN202 - read_described's
        started.set()
        found = read_described(path, *args)
        Path(path).unlink()
        done.set()
        return found

    def stamp(path: str) -> str | None:
        if started.wait(0.3):
            done.wait(10)
        return file_stamp(path)

    monkeypatch.setattr(predict, "read_described", read_then_move_away)
    monkeypatch.setattr(predict, "file_stamp", stamp)
    [row] = predict_paths(tiny_bundle, [film], backend="onnx")
    assert row == {"path": str(film), "error": CHANGED}


def resized(bundle: Path, out: Path, size: int) -> Path:
    """A copy of ``bundle`` whose card says another input size, sealed as pneumoscan seals a card (a format-1 card
    without a checksum loads edited the same way), its run's record (train_config) and its ONNX sidecar written
    again from it: only the graph itself still reads the old size."""
    shutil.copytree(bundle, out)
    card = load_card(out)
    save_card(out, dataclasses.replace(card, size=size, train_config={**card.train_config, "image_size": size}))
    write_onnx_spec(out, out / ONNX_NAME)
    return out


def test_an_onnx_model_for_another_input_size_than_the_card_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """ONNX Runtime would raise its own error (a traceback from predict, a 500 from the service) at the first film."""
    bundle = resized(tiny_bundle, tmp_path / "b", 2 * load_card(tiny_bundle).size)
    with pytest.raises(ValueError, match=r"model\.onnx reads 32 x 32 images, and bundle\.json says 64"):
        Predictor(bundle, backend="onnx")


def test_model_settings_the_model_does_not_take_are_a_reason_not_a_traceback(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    card = load_card(bundle)  # its run's record of the settings too: the builder is what refuses them
    save_card(bundle, dataclasses.replace(card, model_kwargs={"widht": 8},
                                          train_config={**card.train_config, "model_kwargs": {"widht": 8}}))
    with pytest.raises(ValueError, match=r"its model_kwargs do not fit the model 'simple_cnn' \(.*'widht'\)"):
        load_bundle(bundle)


def test_the_services_refusals_hold_no_apostrophes(tiny_bundle: Path, tiny_dataset: Path) -> None:
    """422 bodies are read by clients and pasted into tickets and shell lines: they hold no apostrophes, neither of
    a possessive nor of pydantic quoting the values it expects."""
    film = next((tiny_dataset / "test" / "NORMAL").glob("*.jpeg")).read_bytes()
    with TestClient(create_app(tiny_bundle)) as client:
        answers = [client.post("/v1/predict", params=params, files={"file": ("x.jpeg", film, "image/jpeg")})
                   for params in ({"format": "xml"}, {"format": "fhir"}, {"heatmap": "maybe"})]
    for r in answers:
        assert r.status_code == 422 and "'" not in r.json()["error"], r.json()
    assert "'" not in str(too_few_levels_in_window("its window (WindowCenter 40, WindowWidth 12)", 2))


@pytest.mark.parametrize("color", [2, 4, 6], ids=["RGB", "grey and alpha", "RGBA"])
def test_a_16_bit_colour_png_is_refused_not_read_by_its_high_byte(tmp_path: Path, color: int) -> None:
    """Pillow keeps the high byte of a 16-bit colour PNG's values: 12-bit values read as 16 grey levels, nearly
    black, and were scored; the same values as a 16-bit grey PNG are stretched from their minimum to maximum."""
    with pytest.raises(DecodeError, match="16-bit colour or grey-and-alpha PNG: only the high byte"):
        read_gray(write_png(tmp_path / "deep.png", 256, 256, bits=16, color=color), 224)
    assert read_gray(write_png(tmp_path / "grey.png", 256, 256, bits=16), 224).shape == (256, 256)


def test_predict_array_refuses_an_array_with_nothing_to_see(tiny_bundle: Path) -> None:
    """An array made without read_gray (Pillow's convert, as docs/python.md shows) has not passed its blank check:
    a black square scored PNEUMONIA 0.59, a white one 0.96, an array of no pixels at all 0.59."""
    predictor = Predictor(tiny_bundle, backend="onnx")
    nearly = np.full((100, 100), 30, np.uint8)
    nearly[:3] = 200  # a marker on an empty film
    for gray, reason in ((np.zeros((300, 300), np.uint8), "every pixel has the same value"),
                         (np.full((300, 300), 255, np.uint8), "every pixel has the same value"),
                         (np.zeros((0, 5), np.uint8), "every pixel has the same value"),
                         (nearly, "97.0% of the pixels are within 2 grey levels of one value")):
        with pytest.raises(DecodeError, match=rf"^blank image: {re.escape(reason)}"):
            predictor.predict_array(gray)


def test_explain_array_refuses_an_array_with_nothing_to_see(tiny_bundle: Path) -> None:
    """Grad-CAM drew a map of a uniform square that predict_array refuses (evidence on no film), and an array of no
    pixels ended in a ZeroDivisionError or Pillow's "height and width must be > 0": each is refused as predict_array
    refuses it."""
    predictor = Predictor(tiny_bundle, backend="onnx")
    for gray in (np.full((50, 50), 7, np.uint8), np.zeros((0, 0), np.uint8), np.zeros((0, 10), np.uint8)):
        with pytest.raises(DecodeError, match="^blank image: every pixel has the same value"):
            explain_array(predictor, gray)


def test_predict_and_explain_array_refuse_an_array_of_too_few_grey_levels_as_read_gray_does(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """A thresholded film (two grey levels) or a posterised one (four) is refused by read_gray as no radiograph, and
    its score flips with the threshold; the same pixels handed to predict_array or explain_array as an array (made
    with Pillow's convert, as docs/python.md shows) were scored and mapped. They are refused with read_gray's reason;
    an array too small to count its levels (under 224 px a side) is scored, as read_gray reads it."""
    predictor = Predictor(tiny_bundle, backend="onnx")
    rng = np.random.default_rng(0)
    for levels in (2, 4):
        gray = (rng.integers(0, levels, (300, 300)) * (255 // (levels - 1))).astype(np.uint8)
        Image.fromarray(gray).save(tmp_path / "film.png")
        reason = f"^too few grey levels: the film holds {levels}, "
        with pytest.raises(DecodeError, match=reason):
            read_gray(tmp_path / "film.png")
        for call in (predictor.predict_array, lambda g: explain_array(predictor, g)):
            with pytest.raises(DecodeError, match=reason):
                call(gray)
    assert predictor.predict_array(np.tile(np.array([[0, 255], [255, 0]], np.uint8), (50, 50)))["label"]


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8"])
def test_a_batch_size_that_is_no_count_is_refused_by_name_before_the_bundle_loads(tiny_bundle: Path,
                                                                                batch_size: object) -> None:
    """Predictor(batch_size=0) (and predict_paths') loaded the bundle, then failed at the first film with Python's
    "range() arg 3 must not be zero", a negative one with numpy's "need at least one array to concatenate", 2.5 with
    "'float' object cannot be interpreted as an integer", none naming the argument; True scored one film at a time.
    Each is refused naming batch_size, as the command line's --batch-size is."""
    refusal = f"^batch_size must be a whole number above 0, got {re.escape(repr(batch_size))}$"
    for call in (lambda: Predictor(tiny_bundle, batch_size=batch_size, backend="onnx"),
                 lambda: predict_paths(tiny_bundle, [], batch_size=batch_size, backend="onnx")):
        with pytest.raises(ValueError, match=refusal):
            call()


def test_a_bundle_replaced_while_the_torch_backend_loads_is_never_read_as_one_bundles_card_and_others_weights(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch backend read the card, then built the model from a second read of the folder: a folder replaced in
    between (a deployment swapping bundles) gave the new bundle's weights under the old one's threshold. Replaced
    just after the first read of its card, the bundle is now refused (the card read names other weights)."""
    import torch

    from pneumoscan.models import bundle as bundle_mod
    from pneumoscan.models import registry as models
    from pneumoscan.models.bundle import save_bundle

    live, other = tmp_path / "live", tmp_path / "other"
    shutil.copytree(tiny_bundle, live)
    torch.manual_seed(7)
    save_bundle(other, models.create("simple_cnn", 2), at_threshold(load_card(tiny_bundle), threshold=0.123))
    real = load_card

    def swap_after_reading(bundle: Path, *args: bool):  # the deployment replaces the folder just after a card's
        read = real(bundle, *args)  # first read
        if Path(bundle) == live and not (tmp_path / "old").exists():
            live.rename(tmp_path / "old")
            other.rename(live)
        return read

    for module in (predict, bundle_mod):
        monkeypatch.setattr(module, "load_card", swap_after_reading)
    with pytest.raises(ValueError, match="damaged"):
        Predictor(live, backend="torch")
