"""A deployment with ONNX Runtime, numpy, Pillow and pydicom alone: following a bundle's sidecar (model.onnx.json or
model.int8.onnx.json) word for word, without pneumoscan's decoding, preprocessing or test-time views, gives the
probabilities and labels ``predict`` gives. Only the reference answers come from pneumoscan (predict_paths)."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from tests.builders import dicom_bytes
from pneumoscan.inference.predict import predict_paths

# The steps below, each as the sidecar must state it for a reader who has only the sidecar
STATED = {
    "preprocessing": ("convert('L')", "16-bit PNG stretched linearly from its minimum to its maximum",
                      "apply_modality_lut", "apply_voi_lut", "rounded to the nearest level", "MONOCHROME1 inverted",
                      "Image.reduce(n)", "(short side - 1) // decode_target", "EXIF Orientation",
                      "ImageOps.exif_transpose", "after the reduction"),
    "resize_meaning": ("round(w * scale)", "((size - new_w) // 2, (size - new_h) // 2)",
                       "box=((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)"),
    "tta_meaning": ("t = round(shift x size)", "x = (c + 0.5 - size / 2 - t) / zoom + size / 2 - 0.5",
                    "counts as 0", "rounded half to even", "float32"),
    "output_meaning": ("column i for classes[i]", "softmax(logits / temperature)"),
}


# EXIF Orientation -> the transpose that turns the picture upright (those of Pillow's ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _sidecar(model: Path) -> dict:
    spec = json.loads(model.with_name(model.name + ".json").read_text())
    for key, phrases in STATED.items():
        assert [p for p in phrases if p not in spec[key]] == [], key
    return spec


def _decode(path: Path) -> Image.Image:
    """Step 1 and 3 of the sidecar's preprocessing: 8-bit grey, upright (EXIF) once reduced, as a function."""
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
        grey = np.rint((values - values.min()) * (255.0 / (values.max() - values.min()))).astype(np.uint8)
        return Image.fromarray(255 - grey if ds.PhotometricInterpretation == "MONOCHROME1" else grey)
    im = Image.open(path)
    if im.mode.startswith("I"):
        values = np.asarray(im).astype(np.float64)
        return Image.fromarray(np.rint((values - values.min()) * 255.0 / np.ptp(values)).astype(np.uint8))
    return im.convert("L")


def _input(path: Path, spec: dict) -> np.ndarray:
    """The size x size uint8 input: steps 1 to 5."""
    im = _decode(path)
    n = (min(im.size) - 1) // spec["decode_target"]
    im = im.reduce(n) if n >= 2 else im
    if path.suffix != ".dcm" and (orientation := Image.open(path).getexif().get(0x0112)) in _UPRIGHT:
        im = im.transpose(_UPRIGHT[orientation])
    if spec["source_size"] is not None and max(im.size) > spec["source_size"]:
        buf = io.BytesIO()
        im.resize((spec["source_size"],) * 2, Image.Resampling.BILINEAR).save(buf, "JPEG",
                                                                              quality=spec["source_quality"])
        im = Image.open(buf).convert("L")
    size, (w, h), bilinear = spec["size"], im.size, Image.Resampling.BILINEAR
    if (w, h) == (size, size):
        return np.asarray(im)
    if spec["resize_policy"] == "squash":
        return np.asarray(im.resize((size, size), bilinear))
    if spec["resize_policy"] == "center-crop":
        side = min(w, h)
        return np.asarray(im.resize((size, size), bilinear,
                                    box=((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)))
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    out = Image.new("L", (size, size), 0)
    out.paste(im.resize((new_w, new_h), bilinear), ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(out)


def _view(u8: np.ndarray, zoom: float, t: int) -> np.ndarray:
    """One test-time view as tta_meaning states it, in float32."""
    s, f32 = u8.shape[0], np.float32
    at = ((np.arange(s) + f32(0.5) - f32(s / 2) - f32(t)) * f32(1 / zoom) + f32(s / 2) - f32(0.5)).astype(f32)
    low = np.floor(at)
    w = [(low + 1 - at).astype(f32), (at - low).astype(f32)]  # weights of the lower and the upper neighbour
    idx = [low.astype(int), low.astype(int) + 1]
    padded = np.zeros((s + 2, s + 2), f32)  # a neighbour outside the image counts as 0
    padded[1:-1, 1:-1] = u8
    out = np.zeros((s, s), f32)
    for i in (0, 1):
        for j in (0, 1):
            rows, cols = np.clip(idx[i], -1, s) + 1, np.clip(idx[j], -1, s) + 1
            out += padded[rows][:, cols] * (w[i][:, None] * w[j][None])
    return np.round(out).astype(np.uint8)


def _probabilities(model: Path, spec: dict, inputs: list[np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = (np.stack(inputs).astype(np.float32) / 255 - spec["mean"]) / spec["std"]
    logits = sess.run([spec["output"]], {spec["input"]: x[:, None].astype(np.float32)})[0] / spec["temperature"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True))[:, spec["classes"].index(spec["positive"])]


@pytest.fixture(scope="module")
def films(data_root: Path, module_tmp: Callable[[str], Path]) -> list[Path]:
    """A full-size original, the same turned on its side with EXIF Orientation 6 (a phone photo's), a 12-bit DICOM
    with a window, one MONOCHROME1 with a rescale, and a 16-bit PNG."""
    folder = module_tmp("films")
    original = sorted((data_root / "val" / "PNEUMONIA").glob("*.jpeg"))[0]
    grey = np.asarray(Image.open(original).convert("L"))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(grey).copy()).save(folder / "turned.jpeg", quality=90, exif=exif)
    values = grey.astype(np.uint16) * 16 + np.random.default_rng(0).integers(0, 16, grey.shape, dtype=np.uint16)
    (folder / "window.dcm").write_bytes(dicom_bytes(values, WindowCenter=1800, WindowWidth=2400))
    (folder / "mono1.dcm").write_bytes(dicom_bytes(4095 - values, "MONOCHROME1", RescaleSlope=1,
                                                   RescaleIntercept=-1024))
    Image.fromarray(values * 8).save(folder / "deep.png")
    return [original, folder / "turned.jpeg", folder / "window.dcm", folder / "mono1.dcm", folder / "deep.png"]


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_the_sidecar_alone_gives_predicts_probabilities_and_labels(tiny_bundle: Path, int8_bundle: Path,
                                                                   films: list[Path], backend: str) -> None:
    """The EXIF turn was not in the sidecar: a phone photo of a film scored 0.83 where predict said 0.98 (an
    efficientnet_lite0 bundle); the DICOM stretch's rounding and the warp of the test-time views were not stated."""
    bundle, name = (tiny_bundle, "model.onnx") if backend == "onnx" else (int8_bundle, "model.int8.onnx")
    spec = _sidecar(bundle / name)
    inputs = [_input(film, spec) for film in films]
    plain = _probabilities(bundle / name, spec, inputs)
    views = [_probabilities(bundle / name, spec, [_view(u8, v["zoom"], round(v["shift"] * spec["size"]))
                                                  for u8 in inputs]) for v in spec["tta_views"]]
    for tta, probabilities, threshold in ((False, plain, spec["threshold"]),
                                          (True, np.mean(views, axis=0), spec["tta_threshold"])):
        rows = predict_paths(bundle, films, backend=backend, tta=tta)
        for film, p, row in zip(films, probabilities, rows):
            assert float(p) == pytest.approx(row["probability"], abs=1e-5), (film.name, tta)
            assert row["threshold"] == threshold
            assert (row["label"] == spec["positive"]) == (p >= threshold), film.name


@pytest.mark.parametrize("policy", ["pad", "center-crop"])
def test_the_letterbox_and_the_crop_are_stated_exactly(tiny_bundle: Path, data_root: Path, tmp_path: Path,
                                                       policy: str) -> None:
    """The sidecar said 'letterboxes with black' and 'cuts the middle square' without where: an integrator placing
    the picture a pixel off gets other inputs. Its own sizes and offsets give predict's probabilities."""
    from pneumoscan.inference.export import export_onnx
    from pneumoscan.models.bundle import load_bundle, save_bundle

    model, card = load_bundle(tiny_bundle)
    card = dataclasses.replace(card, resize_policy=policy, source_size=None, source_quality=None,
                               train_config={**card.train_config, "resize_policy": policy})
    bundle = save_bundle(tmp_path / policy, model, card)
    spec = _sidecar(export_onnx(bundle))
    films = sorted((data_root / "val").rglob("*.jpeg"))  # 16 shapes: an odd margin and an odd cut among them
    got = _probabilities(bundle / "model.onnx", spec, [_input(film, spec) for film in films])
    for film, p, row in zip(films, got, predict_paths(bundle, films, backend="onnx")):
        assert float(p) == pytest.approx(row["probability"], abs=1e-5), film.name


def test_the_sidecar_says_what_the_graph_does_not_check(tiny_bundle: Path) -> None:
    """Scope checks and refusals happen in pneumoscan, not in the graph: the sidecar says which, and what an
    integrator must do about them, instead of leaving a lateral film's probability to pass as a reading."""
    spec = json.loads((tiny_bundle / "model.onnx.json").read_text())
    stated = spec["not_in_the_graph"]
    for phrase in ("lateral", "BodyPartExamined CHEST", "ViewPosition PA or AP", "0.5 to under 6 years", "blank",
                   "file no finding", "docs/dicom.md (Scope checks)"):
        assert phrase in stated, phrase
