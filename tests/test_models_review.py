"""Models and their maps: Grad-CAM on the layer each model's head reads, a timm model whose head reads no spatial map
refused with the reason (not explained at a layer inside an attention block or the stem), a map on the film where the
evidence is for every resize policy, also when the film is given decoded in full; any timm name's ImageNet weights
read from the local cache, or refused at once with the remedy."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from pneumoscan.data.tasks import get_task
from pneumoscan.inference.explain import NoSpatialMap, explain_array, gradcam, measure_heatmap_scale, target_layer
from pneumoscan.inference.predict import Predictor, predict_paths
from pneumoscan.models import registry as models
from pneumoscan.models.bundle import save_bundle
from pneumoscan.models.card import BundleCard
from pneumoscan.models.ensemble_net import EnsembleNet, Member
from pneumoscan.serving.app import create_app
from tests.test_models import put_in_hub_cache


@pytest.mark.parametrize("name, size, why", [
    ("vit_tiny_patch16_224", 32, r"features are \(1, 5, 192\), tokens or vectors, not a feature map"),
    ("swin_tiny_patch4_window7_224", 224, r"feature map is NHWC \(channels last\)"),
    ("efficientnet_lite0", 32, r"feature map is 1 x 1 at 32 x 32 px input"),
])  # fmt: skip
def test_gradcam_refuses_a_model_whose_head_reads_no_spatial_map(name: str, size: int, why: str) -> None:
    """A ViT's last 4-D tensor is inside an attention block (heads x tokens x channels), Swin's map is channels last,
    and efficientnet_lite0 at 32 px pools its map to one cell: each map was drawn anyway, from that tensor or from an
    early block's, and explained nothing of the call. Refused with the reason instead."""
    model = models.create(name, image_size=size).eval()
    with pytest.raises(NoSpatialMap, match=f"Grad-CAM cannot explain .*: its {why}.*; read its films without heatmaps"):
        gradcam(model, torch.rand(1, 1, size, size), 1)
    # an ensemble's member: said which one, by place and folder (it gave only the architecture's class name)
    members = [Member(models.create("simple_cnn"), size, 0.5, 0.25, 1.0, size, source="a"),
               Member(model, size, 0.5, 0.25, 1.0, size, source="b")]
    with pytest.raises(NoSpatialMap, match=rf"^ensemble member 2 of 2 \(b\): Grad-CAM cannot explain .*: its {why}"):
        gradcam(EnsembleNet(members).eval(), torch.rand(1, 1, size, size), 1)


def test_gradcam_refuses_a_model_whose_only_spatial_map_is_its_input() -> None:
    """mlp pools the film to 32 x 32 before its dense layers: that pooled copy of the input was the map, so every
    mlp's "evidence" was the film's brightness whatever it had learned. Refused, as a model without a map is."""
    with pytest.raises(NoSpatialMap, match=r"Grad-CAM cannot explain .*: no spatial feature map follows a convolution "
                                           r"\(its only spatial map is the input itself\)"):
        gradcam(models.create("mlp").eval(), torch.rand(1, 1, 32, 32), 1)


def test_gradcam_of_a_timm_model_reads_its_features_not_a_spatial_layer_of_its_head() -> None:
    """vgg's head is a 7 x 7 convolution (fc6), which at 288 px leaves a 3 x 3 map whose cells each cover 7 x 7 of the
    features: that map had been taken and stretched over the film. The map is forward_features' output. (fc6 is
    built 64 times narrower, mlp_ratio 1/64: still a 7 x 7 convolution, without 100 million weights to make.)"""
    model, x = models.create("vgg11", image_size=288, mlp_ratio=1 / 64).eval(), torch.rand(1, 1, 288, 288)
    shapes: list[torch.Size] = []
    hook = target_layer(model, x).register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    with torch.no_grad():
        features = model.forward_features(x)
    hook.remove()
    assert shapes == [features.shape] and features.shape[-2:] == (9, 9)


def test_a_bundle_without_a_spatial_map_records_no_heatmap_scale(caplog: pytest.LogCaptureFixture) -> None:
    """Finishing a ViT's bundle measures its heatmap scale: the refusal leaves it without one (said in the log),
    rather than failing the run at its last step."""
    model = models.create("vit_tiny_patch16_224", image_size=32).eval()
    card = BundleCard("vit_tiny_patch16_224", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 32, "squash", 0.45,
                      0.23, threshold=0.5)
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32), dtype=np.uint8)
    probs = np.tile([0.2, 0.8], (10, 1))  # every film called positive
    with caplog.at_level(logging.INFO, logger="pneumoscan.inference.explain"):
        assert measure_heatmap_scale(model, card, get_task("pneumonia"), images, probs) is None
    assert "no heatmap scale recorded: Grad-CAM cannot explain VisionTransformer" in caplog.text


class _BrightnessNet(nn.Module):
    """The log-odds of pneumonia are the mean brightness of the input: its Grad-CAM map is the input itself, so the
    evidence lies exactly where the film is bright."""

    def __init__(self, num_classes: int = 2, in_chans: int = 1, pretrained: bool = False) -> None:
        super().__init__()
        self.features = nn.Conv2d(in_chans, 1, 1)
        with torch.no_grad():
            self.features.weight.fill_(1.0)
            self.features.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        evidence = self.features(x).mean((1, 2, 3))
        return torch.stack([torch.zeros_like(evidence), evidence], dim=1)


@pytest.fixture
def brightness_bundles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A 192 px bundle of :class:`_BrightnessNet` for each resize policy (input in [0, 1]: mean 0, std 1)."""
    monkeypatch.setattr(models, "_REGISTRY", models._REGISTRY.copy())
    models.register("brightness", mean=0.0, std=1.0)(_BrightnessNet)
    return {policy: save_bundle(tmp_path / policy, _BrightnessNet(),
                                BundleCard("brightness", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 192, policy,
                                           0.0, 1.0, threshold=0.5))
            for policy in ("squash", "pad", "center-crop")}  # fmt: skip


def test_a_full_size_films_map_lies_on_its_evidence(brightness_bundles: dict[str, Path]) -> None:
    """A tall film decoded in full (1799 x 801, as the Python API reads one), bright only in a stripe near its right
    edge and a square beside it: the map, drawn back on the film, is bright over them and dark elsewhere, in the same
    place whichever the resize policy. Preprocessing first reduces such a film (to 450 x 201), whose letterbox is one
    model pixel wider than the full film's shape gives: pad's map was cut one column short and stretched, and the
    stripe drawn 9 px right of where squash and center-crop draw it."""
    height, width, stripe, square = 1799, 801, (700, 760), (slice(700, 800), slice(550, 650))
    film = np.zeros((height, width), np.uint8)
    bright = np.random.default_rng(0).integers(240, 256, (height, width), dtype=np.uint8)  # grey levels of a film
    film[:, slice(*stripe)] = bright[:, slice(*stripe)]
    film[square] = bright[square]
    centres = {}
    for policy, bundle in brightness_bundles.items():
        cam = explain_array(Predictor(bundle), film)
        assert cam.shape == (1024, 456)  # the overlay panel: the film's aspect, at most 1024 px a side
        rows, cols = height / cam.shape[0], width / cam.shape[1]
        middle = cam[round(1200 / rows)]  # a row through the stripe only
        centres[policy] = float(np.sum(middle * (np.arange(len(middle)) + 0.5) * cols) / middle.sum())
        assert middle[: round(650 / cols)].max() < 0.05 and middle[round(790 / cols) :].max() < 0.05, policy
        box = cam[round(710 / rows) : round(790 / rows), round(560 / cols) : round(640 / cols)]
        assert box.min() > 0.9 and cam[round(900 / rows) : round(1290 / rows), : round(600 / cols)].max() < 0.05
        if policy == "center-crop":  # the model saw the middle 801 x 801 square only: not read above or below it
            assert np.isnan(cam[: round(490 / rows)]).all() and np.isnan(cam[round(1310 / rows) :]).all()
    # the stripe's centre on the film is 730; reducing by 4 x 4 blocks (the last column a partial block) moves what
    # the model sees by under a model pixel, alike for every policy
    assert all(abs(centre - np.mean(stripe)) < 4 for centre in centres.values()), centres
    assert max(centres.values()) - min(centres.values()) < 1, centres


_TARGET_LAYERS = {"cnn5": "features.4", "efficientnet_lite0": "bn2", "efficientnet_lite2": "bn2",
                  "resnet50": "layer4", "resnet50v2": "norm", "seed_cnn1": "features.2", "seed_cnn5": "features.4",
                  "simple_cnn": "features.3"}  # fmt: skip


@pytest.mark.parametrize("name", [name for name in models.list_models() if name != "mlp"])  # mlp: refused, above
def test_every_registered_model_is_explained_at_its_last_feature_map(name: str) -> None:
    """The map of each registered model with a convolution comes from the map its head pools or flattens: timm's
    forward_features output for the timm ones, the last block before the dense head for the scratch ones."""
    from pneumoscan.inference.explain import target_layer

    model = models.create(name, image_size=64).eval()
    assert target_layer(model, torch.zeros(1, 1, 64, 64)) is model.get_submodule(_TARGET_LAYERS[name])


def test_a_timm_models_missing_weights_offline_fail_at_once_with_the_remedy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Any timm name (not only the registered ones) asks for its ImageNet weights the registered ones' way: with no
    network and nothing cached, ``create("convnext_atto", pretrained=True)`` had logged the hub's retry lines for 47 s
    and raised its LocalEntryNotFoundError, without the --no-pretrained remedy. The remedy names the parameter a
    library caller gives, with the command's option in brackets, as the project's other refusals do."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    start = time.monotonic()
    reason = r"convnext_atto: .*neither in the local cache.*from scratch with pretrained false \(--no-pretrained\)$"
    with pytest.raises(models.WeightsUnavailable, match=reason):
        models.create("convnext_atto", pretrained=True)
    assert time.monotonic() - start < 5
    assert "Retry" not in capfd.readouterr().err


def test_a_timm_models_cached_weights_load_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights of any timm name in the local Hugging Face cache are read from it, folded to one input channel."""
    put_in_hub_cache(tmp_path / "hub", "convnext_atto", "stem.0.weight", 0.125)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    model = models.create("convnext_atto", num_classes=2, in_chans=1, pretrained=True)
    assert torch.all(model.stem[0].weight == 3 * 0.125)  # the RGB kernels summed for grayscale


@pytest.mark.parametrize("field, value", [("task", "etiology"), ("classes", ["NORMAL", "PNEUMONIA", "OTHER"]),
                                          ("positive", "NORMAL")])
def test_members_of_another_task_or_classes_are_refused(field: str, value: object) -> None:
    """Averaging the logits of members whose outputs mean other things would give a confident, meaningless score:
    the member that differs is named with the field, while another size and normalisation are members' own."""
    from pneumoscan.training.ensemble import _check_members

    first = BundleCard("simple_cnn", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 32, "squash", 0.5, 0.25)
    _check_members([first, dataclasses.replace(first, size=64, mean=0.45, std=0.23)], [Path("a"), Path("b")])
    with pytest.raises(ValueError, match=f"^b has {field} .*members must read films alike"):
        _check_members([first, dataclasses.replace(first, **{field: value})], [Path("a"), Path("b")])


@pytest.fixture(scope="module")
def unexplainable_bundle(module_tmp: Callable[[str], Path]) -> Path:
    """A bundle of efficientnet_lite0 at 32 px, whose feature map is pooled to one cell: Grad-CAM has no map of it."""
    card = BundleCard("efficientnet_lite0", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 32, "squash", 0.5, 0.25)
    torch.manual_seed(0)
    model = models.create("efficientnet_lite0", 2, in_chans=1, pretrained=False, image_size=32)
    return save_bundle(module_tmp("unexplainable") / "bundle", model.eval(), card)


def test_predict_heatmaps_of_an_unexplainable_model_are_refused_before_any_film(
    unexplainable_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """`predict --heatmaps` found out at its first film's map, and the scores already made were lost with the
    traceback's end: refused before any film is read, with the reason."""
    films = sorted((tiny_dataset / "test" / "NORMAL").glob("*.jpeg"))[:2]
    with pytest.raises(NoSpatialMap, match="feature map is 1 x 1 at 32 x 32 px input"):
        predict_paths(unexplainable_bundle, films, heatmap_dir=tmp_path / "maps", backend="torch")
    assert not (tmp_path / "maps").exists()
    assert [row["label"] for row in predict_paths(unexplainable_bundle, films, backend="torch")]  # scores still come
    # an ensemble with it as a member: the refusal names that member by place and folder, as every one about it does
    ensemble = unexplainable_ensemble(unexplainable_bundle, tmp_path)
    member = re.escape(str(unexplainable_bundle))
    with pytest.raises(NoSpatialMap, match=rf"^ensemble member 2 of 2 \({member}\): Grad-CAM cannot explain "
                                           "EfficientNet: its feature map is 1 x 1 at 32 x 32 px input"):
        predict_paths(ensemble, films, heatmap_dir=tmp_path / "maps", backend="torch")
    assert not (tmp_path / "maps").exists()


def unexplainable_ensemble(member: Path, tmp_path: Path) -> Path:
    """An ensemble bundle of a simple_cnn and the bundle ``member`` (no spatial map at 32 px) as its member 2."""
    entries = [{"model": name, "model_kwargs": {}, "size": 32, "mean": 0.5, "std": 0.25, "temperature": 1.0,
                "source": str(source)} for name, source in (("simple_cnn", tmp_path / "a"),
                                                            ("efficientnet_lite0", member))]
    card = BundleCard("ensemble", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 32, "squash", 0.0, 1.0,
                      model_kwargs={"members": entries})
    return save_bundle(tmp_path / "ensemble", EnsembleNet.from_card(card).eval(), card)


def test_the_service_refuses_a_heatmap_of_an_unexplainable_model_with_the_reason(
    unexplainable_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Said without paths, as every answer: an ensemble's member by its place alone, not its folder."""
    film = sorted((tiny_dataset / "test" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    for bundle, said in ((unexplainable_bundle, "heatmap: Grad-CAM cannot explain"),
                         (unexplainable_ensemble(unexplainable_bundle, tmp_path),
                          "heatmap: ensemble member 2 of 2: Grad-CAM cannot explain")):
        with TestClient(create_app(bundle, backend="torch")) as client:
            assert client.post("/v1/predict", files={"file": ("f.jpeg", film, "image/jpeg")}).status_code == 200
            for mode in ("true", "map"):
                r = client.post(f"/v1/predict?heatmap={mode}", files={"file": ("f.jpeg", film, "image/jpeg")})
                assert r.status_code == 422 and r.json()["error"].startswith(said), r.text
                assert str(unexplainable_bundle) not in r.text and str(tmp_path) not in r.text
