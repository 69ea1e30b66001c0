"""ONNX export: a valid model with a dynamic batch axis, its preprocessing spec, and torch/onnxruntime parity."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pneumoscan import cli
from pneumoscan.data.preprocess import preprocess
from pneumoscan.inference.export import ONNX_NAME, export_onnx, module_session
from pneumoscan.inference.onnx_runtime import INPUT, OUTPUT, session, spec_path
from pneumoscan.inference.predict import Predictor, predict_paths
from pneumoscan.models import registry as models
from pneumoscan.models.bundle import save_bundle
from pneumoscan.models.card import BundleCard, load_card

PARITY = 1e-4


def _real_images(tiny_dataset: Path, size: int) -> np.ndarray:
    return np.stack([preprocess(p, size) for p in sorted((tiny_dataset / "test").rglob("*.jpeg"))])


def test_cli_export_writes_onnx_with_dynamic_batch_and_spec(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported" / "model.onnx"
    assert cli.main(["export", str(tiny_bundle), "--out", str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    [graph_input] = model.graph.input
    assert graph_input.name == INPUT and model.graph.output[0].name == OUTPUT
    dims = graph_input.type.tensor_type.shape.dim
    card = load_card(tiny_bundle)
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, card.size, card.size]
    spec = json.loads(spec_path(out).read_text())
    assert spec_path(out).name == "model.onnx.json"
    for key in ("size", "resize_policy", "mean", "std", "temperature", "threshold", "tta_threshold", "classes",
                "positive"):
        assert spec[key] == getattr(card, key)
    assert card.tta_threshold is not None and spec["positive_probability"] == "P(PNEUMONIA)"
    # the bundle training wrote has the TTA threshold in its own sidecar too (chosen after the export)
    assert json.loads(spec_path(tiny_bundle / ONNX_NAME).read_text())["tta_threshold"] == card.tta_threshold
    sess = session(out)
    for n in (1, 5):  # any batch size runs
        assert sess.run([OUTPUT], {INPUT: np.zeros((n, 1, card.size, card.size), np.float32)})[0].shape == (n, 2)


def test_the_sidecar_is_enough_to_score_a_film_without_pneumoscan(tiny_bundle: Path, data_root: Path) -> None:
    """An integrator with Pillow and ONNX Runtime alone, following model.onnx.json, gets predict's probability, for
    224 px training files and full-size originals (reduced first) alike."""
    from PIL import Image

    spec = json.loads(spec_path(tiny_bundle / ONNX_NAME).read_text())
    assert spec["resize_policy"] == "squash" and "Image.reduce" in spec["preprocessing"]
    sess = session(tiny_bundle / ONNX_NAME)
    films = (sorted((data_root / "val" / "NORMAL").glob("*.jpeg"))[:2]
             + sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[:2])
    for film, row in zip(films, predict_paths(tiny_bundle, films, backend="onnx")):
        im = Image.open(film).convert("L")
        n = (min(im.size) - 1) // spec["decode_target"]
        im = im.reduce(n) if n >= 2 else im
        if spec["source_size"] and max(im.size) > spec["source_size"]:  # as the training files were made
            buf = io.BytesIO()
            im.resize((spec["source_size"],) * 2, Image.Resampling.BILINEAR).save(
                buf, "JPEG", quality=spec["source_quality"])
            im = Image.open(buf).convert("L")
        x = np.asarray(im.resize((spec["size"],) * 2, Image.Resampling.BILINEAR), np.float32) / 255
        logits = sess.run([OUTPUT], {INPUT: ((x - spec["mean"]) / spec["std"])[None, None]})[0][0] / spec["temperature"]
        probability = float(np.exp(logits[1]) / np.exp(logits).sum())
        assert probability == pytest.approx(row["probability"], abs=1e-5), film.name


def test_an_export_into_another_bundle_is_refused(tiny_bundle: Path, tiny_etiology_bundle: Path,
                                                  tmp_path: Path) -> None:
    """A typo in --out had replaced another bundle's model.onnx and sidecar: that bundle then refused them as stale."""
    other = shutil.copytree(tiny_etiology_bundle, tmp_path / "other")
    before = (other / ONNX_NAME).read_bytes()
    with pytest.raises(ValueError, match="is inside another bundle"):
        export_onnx(tiny_bundle, other / ONNX_NAME)
    assert (other / ONNX_NAME).read_bytes() == before
    assert export_onnx(tiny_bundle, tmp_path / "elsewhere" / "m.onnx").exists()


@pytest.mark.parametrize("name", ["model.safetensors", "model.int8.onnx", "copy.onnx"])
def test_an_export_over_the_bundles_own_files_is_refused(tiny_bundle: Path, tmp_path: Path, name: str) -> None:
    """--out BUNDLE/model.safetensors wrote the graph over the weights and exited 0: the bundle was refused as
    damaged from then on. In the bundle, only its model.onnx is the export's."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    with pytest.raises(ValueError, match=rf"out \(--out\) {bundle / name} is in the bundle itself, where only "
                                         "model.onnx"):
        export_onnx(bundle, bundle / name)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert export_onnx(bundle, bundle / ONNX_NAME) == bundle / ONNX_NAME


def test_torch_and_onnxruntime_probabilities_agree(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    export_onnx(bundle)  # BUNDLE/model.onnx: the file the onnx backend picks up
    images = _real_images(tiny_dataset, load_card(bundle).size)
    torch_p = Predictor(bundle, batch_size=5).probabilities(images)
    onnx_p = Predictor(bundle, batch_size=5, backend="onnx").probabilities(images)
    assert np.abs(torch_p - onnx_p).max() <= PARITY
    files = sorted((tiny_dataset / "test").rglob("*.jpeg"))
    rows = {b: predict_paths(bundle, files, backend=b) for b in ("torch", "onnx")}
    for a, b in zip(rows["torch"], rows["onnx"]):
        assert abs(a["probability"] - b["probability"]) <= PARITY


def test_efficientnet_lite0_same_padding_exports_with_parity(tmp_path: Path) -> None:
    """The default model family: TensorFlow-style 'same' padding (asymmetric on odd feature maps: 72 px gives
    9 x 9 after three strides) must survive export, where it becomes constant padding."""
    torch.manual_seed(0)
    size = 72
    # Random weights give logits near +-50: the highest temperature keeps the compared probabilities unsaturated.
    card = BundleCard("efficientnet_lite0", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", size, "squash", 0.5, 0.5,
                      temperature=20.0)
    bundle = save_bundle(tmp_path / "lite0", models.create("efficientnet_lite0"), card)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, size, size), dtype=np.uint8)
    with_torch = Predictor(bundle)
    with_onnx = Predictor(bundle, backend="onnx")  # no model.onnx yet: exported to a temp file
    assert not (bundle / ONNX_NAME).exists()
    torch_p, onnx_p = with_torch.probabilities(images), with_onnx.probabilities(images)
    assert 0.01 < torch_p.min() and torch_p.max() < 0.99
    assert np.abs(torch_p - onnx_p).max() <= PARITY
    torch_l, onnx_l = with_torch.logits(images), with_onnx.logits(images)
    assert np.abs(torch_l - onnx_l).max() <= 1e-4 * np.abs(torch_l).max()
    # the padding is worked out once for the graph's fixed side, not from the input's shape on every call
    ops = {node.op_type for node in onnx.load(export_onnx(bundle, tmp_path / "lite0.onnx")).graph.node}
    assert "Pad" in ops and not ops & {"Shape", "Ceil", "Gather"}


def test_a_module_session_scores_like_torch_and_refuses_non_finite_weights() -> None:
    """The in-memory export behind the ensemble's calibration scores: torch's logits, or no session at all."""
    torch.manual_seed(0)
    model = models.create("simple_cnn", 2, in_chans=1, pretrained=False).eval()
    x = torch.rand(5, 1, 32, 32)
    with torch.inference_mode():
        expected = model(x).numpy()
    got = module_session(model, 32).run([OUTPUT], {INPUT: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        module_session(model, 32)


def test_the_trial_export_before_training_leaves_each_part_in_its_mode() -> None:
    """A model that keeps a part in eval (frozen norms) keeps it so after the check that it can be exported."""
    from pneumoscan.inference.export import check_exportable
    from pneumoscan.models import registry

    model = registry.create("simple_cnn", 2, in_chans=1, pretrained=False, image_size=32)
    model.features.eval()
    check_exportable(model, 32, "simple_cnn")
    assert model.training and not model.features.training and model.head.training


class _Spectral(torch.nn.Module):
    """A site's model with an operator the ONNX exporter has no translation for (a 2-D FFT)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.fft.fft2(x).abs().mean((2, 3)))


def test_a_model_with_an_operator_onnx_lacks_is_refused_saying_to_change_the_model() -> None:
    """A model using an operator ONNX cannot express was refused with "...; choose another image size", which no
    size mends. The refusal names the operator's failure and says to change the model."""
    from pneumoscan.inference.export import check_exportable

    with pytest.raises(ValueError) as refused:
        check_exportable(_Spectral(), 32, "spectral", 2)
    said = str(refused.value)
    assert said.startswith("spectral cannot be exported to ONNX, which predict and serve run (Exporting the operator "
                           "'aten::fft_fft2' to ONNX opset version 17 is not supported)"), said
    assert said.endswith("; build the model of operators ONNX has (docs/development.md, Adding a model)"), said


def test_a_size_too_small_for_a_models_pooling_is_refused_with_the_reason(tiny_dataset: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """cnn5's five 2x pools need 32 px: at 24 the run ended in a 100-line traceback from torch, exit 1, where the
    docs promise a size a model cannot take is refused before training, with the reason."""
    from pneumoscan import cli

    args = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--model", "cnn5",
            "--image-size", "24", "--epochs", "1"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "cnn5 cannot read images of 24 px (" in err and "choose a larger image size" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "bundle").exists()
