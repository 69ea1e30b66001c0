"""Grad-CAM: it points at the evidence, it depends on the learnt weights and on the class, and the overlay
keeps the original's aspect."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from pneumoscan.data.decode import read_gray
from pneumoscan.data.preprocess import PreprocessSpec
from pneumoscan.data.readers.pillow import OWN_FIGURE, OWN_OVERLAY
import pneumoscan.inference.explain as explain_module
from pneumoscan.inference.explain import (
    MAX_PANEL,
    explain_array,
    panel_shape,
    gradcam,
    overlay_png,
    target_layer,
    to_image_frame,
)
from pneumoscan.inference.predict import Predictor, predict_paths
from pneumoscan.models import registry as models
from pneumoscan.serving.app import create_app
from tests.builders import SCORE_TOL


class _TwoEvidenceNet(nn.Module):
    """Channel 0 = the image, channel 1 = its negative (1 - x); logit k = mean of channel k. So class 0's
    evidence is the bright blob and class 1's is everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.features.bias.copy_(torch.tensor([0.0, 1.0]))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def test_the_target_layer_is_found_once_per_model_and_input_shape() -> None:
    """Finding it costs a forward pass; every heatmap of a film of the same size reuses it."""
    model, passes = _TwoEvidenceNet().eval(), []
    model.register_forward_pre_hook(lambda module, args: passes.append(args[0].shape))
    for _ in range(3):
        assert target_layer(model, torch.zeros(1, 1, 32, 32)) is model.features
    assert target_layer(model, torch.zeros(1, 1, 16, 16)) is model.features
    assert passes == [(1, 1, 32, 32), (1, 1, 16, 16)]


def test_gradcam_points_at_each_class_evidence() -> None:
    x = torch.zeros(1, 1, 32, 32)
    x[..., 4:12, 6:14] = 1.0  # a bright blob upper left
    blob = x[0, 0].numpy() > 0.5
    model = _TwoEvidenceNet().eval()
    assert target_layer(model, x) is model.features  # the pooled 1x1 map is not spatial
    bright, rest = gradcam(model, x, 0), gradcam(model, x, 1)
    assert bright.shape == (32, 32) and bright.dtype == np.float32
    assert 0.0 <= bright.min() and bright.max() <= 1.0
    assert bright[blob].mean() > 0.9 and bright[~blob].mean() < 0.1
    assert rest[blob].mean() < 0.1 and rest[~blob].mean() > 0.9


class _BothGrowNet(nn.Module):
    """Both logits grow with the image's brightness, the first twice as fast: a bright blob argues for class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([2.0, 1.0]).view(2, 1, 1, 1))
            self.features.bias.zero_()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def test_gradcam_explains_the_margin_the_threshold_reads() -> None:
    """P(class 1) = sigmoid(z1 - z0) falls as the blob brightens, so the blob is no evidence for class 1 although
    z1 alone rises with it: the map for class 1 must not light it up."""
    x = torch.zeros(1, 1, 32, 32)
    x[..., 4:12, 6:14] = 1.0
    blob = x[0, 0].numpy() > 0.5
    model = _BothGrowNet().eval()
    assert gradcam(model, x, 0)[blob].mean() > 0.9
    assert gradcam(model, x, 1)[blob].mean() < 0.1


@pytest.mark.parametrize(
    "name, layer",
    [
        ("efficientnet_lite0", lambda m: m.bn2),  # timm: the output of forward_features
        ("cnn5", lambda m: m.features[4]),  # scratch: the last conv block before global pooling
        ("simple_cnn", lambda m: m.features[3]),  # scratch: the last spatial map before Flatten
    ],
)
def test_target_layer_is_the_last_spatial_feature_map(name: str, layer) -> None:
    model = models.create(name).eval()
    assert target_layer(model, torch.zeros(1, 1, 64, 64)) is layer(model)


@pytest.mark.parametrize("name, sides", [("simple_cnn", (0, 1)), ("resnet10t", ((1, 2), 0))])
def test_the_maps_are_pytorch_grad_cams_and_write_no_weights_gradient(name: str, sides: tuple) -> None:
    """explain computes Grad-CAM itself (pytorch-grad-cam's import cost 4 s of CPU a process): its maps before
    scaling are those of the library's GradCAM for the same target and layer, on a scratch model and a timm one, of
    one class and of a set (the three-class log-odds of pneumonia), and it leaves every weight's ``.grad`` as it was.
    Each target and its complement: their log-odds are opposite, so where one's map is empty (a random model's
    evidence all against it) the other's is not."""
    from pytorch_grad_cam import GradCAM

    torch.manual_seed(0)
    model = models.create(name, num_classes=3 if name == "resnet10t" else 2).eval()
    x = torch.rand(3, 1, 64, 64)
    layer, peaks = target_layer(model, x[:1]), []
    for classes in sides:
        ours, moved = explain_module._cams(model, x, classes)
        assert all(p.grad is None for p in model.parameters()), "a weight's .grad was written"
        targets = [explain_module.LogOdds(classes)] * len(x)
        with GradCAM(model, [layer]) as cam:
            cam(input_tensor=x, targets=targets)
            kept = cam.activations_and_grads
            theirs = np.maximum(cam.get_cam_image(x, layer, targets, kept.activations[0].numpy(),
                                                  kept.gradients[0].numpy()), 0)
        model.zero_grad(set_to_none=True)  # the library's backward wrote them
        assert ours.shape == theirs.shape and moved.all(), classes
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * float(theirs.max()), err_msg=str(classes))
        peaks.append(ours.max())
    assert max(peaks) > 0, "empty maps prove nothing"


class _PoolTwiceNet(nn.Module):
    """One pooling module after each of two convolutions (the layout of PyTorch's tutorial CNN): the last spatial map
    is the pooling's second output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.pool = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3), nn.MaxPool2d(2)
        self.fc = nn.Linear(6, 2)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv2(self.pool(torch.relu(self.conv1(x))))))

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _InPlaceReluNet(_PoolTwiceNet):
    """A convolution whose output a functional ReLU then changes in place: the map is the convolution's output."""

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu_(self.body(x)))

    def head(self, a: torch.Tensor) -> torch.Tensor:  # a before the in-place ReLU: the map Grad-CAM reads
        return self.fc(torch.relu(a).mean((2, 3)))


@pytest.mark.parametrize("net", [_PoolTwiceNet, _InPlaceReluNet])
def test_the_map_is_the_last_output_of_the_target_layer_as_it_left_it(net: type[_PoolTwiceNet]) -> None:
    """Grad-CAM of the target layer's last output in the pass (the map target_layer chose), as the layer gave it: a
    module called twice gave its first output's map (30 x 30 from the first pooling, not the last 13 x 13), and an
    in-place ReLU after the layer changed the map and its gradient, a map drawn with no refusal."""
    torch.manual_seed(0)
    model, x = net().eval(), torch.rand(2, 1, 62, 62)
    expected = []
    for classes in (0, 1):  # opposite log-odds: one of the two maps is not empty
        a = model.body(x).detach().requires_grad_(True)
        explain_module.LogOdds(classes)(model.head(a)).sum().backward()
        expected.append(np.maximum((a.grad.mean((2, 3))[:, :, None, None] * a).sum(1).detach().numpy(), 0))
        ours, _ = explain_module._cams(model, x, classes)
        assert ours.shape == expected[-1].shape, (ours.shape, expected[-1].shape)
        np.testing.assert_allclose(ours, expected[-1], rtol=1e-5, atol=1e-6 * float(expected[-1].max()))
    assert max(e.max() for e in expected) > 0, "empty maps prove nothing"


class _MapUnusedNet(_PoolTwiceNet):
    """A spatial map computed and left unused: the score reads the film's mean alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.body(x)
        return self.fc(x.mean((2, 3)).expand(-1, 6))


def test_a_map_the_score_does_not_use_is_a_map_of_no_evidence_not_an_error() -> None:
    """Its gradients are zero, so each film's map is refused as one the reading did not come from (:func:`gradcam`'s
    NoMapOfFilm); autograd's error at a map outside the score's graph had ended the whole call."""
    ours, moved = explain_module._cams(_MapUnusedNet().eval(), torch.rand(2, 1, 62, 62), 1)
    assert not moved.any() and not ours.any()

def _sick_image(tiny_dataset: Path) -> np.ndarray:
    return read_gray(sorted((tiny_dataset / "test" / "PNEUMONIA").iterdir())[0])


def test_gradcam_changes_when_weights_are_randomised(tiny_bundle: Path, tiny_dataset: Path) -> None:
    """Adebayo et al. (2018) model-randomisation check: a map that survives re-initialising the weights
    explains the input, not the model."""
    predictor = Predictor(tiny_bundle)
    images = predictor.preprocess([_sick_image(tiny_dataset)])
    x = predictor.inputs(images)
    called = int(np.argmax(predictor.logits(images)[0]))  # a class the model argues against may have an empty map
    trained = gradcam(predictor.model, x, called)
    assert trained.max() - trained.min() > 0.5  # a map with structure, not a constant
    for seed in range(3):
        randomised = copy.deepcopy(predictor.model)
        torch.manual_seed(seed)
        for module in randomised.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        assert np.abs(gradcam(randomised, x, called) - trained).mean() > 0.1
    # deterministic, model untouched
    np.testing.assert_allclose(gradcam(predictor.model, x, called), trained, atol=SCORE_TOL)


def test_one_films_gradcam_runs_on_one_thread_and_gives_the_others_back(
    tiny_bundle: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two torch threads waiting on each other beside the decode threads or another process took 0.7-3 s a film
    where one thread took 0.13 s: one film's map is drawn on one, and the caller's setting is left as it was."""
    predictor = Predictor(tiny_bundle)
    gray = _sick_image(tiny_dataset)
    during: list[int] = []
    draw = explain_module.gradcam
    monkeypatch.setattr(explain_module, "gradcam", lambda *a: during.append(torch.get_num_threads()) or draw(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cam = explain_array(predictor, gray)
        assert during == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    np.testing.assert_allclose(cam, explain_array(predictor, gray), atol=SCORE_TOL)


def test_maps_for_the_two_classes_differ(tiny_bundle: Path, tiny_dataset: Path) -> None:
    predictor = Predictor(tiny_bundle)
    gray = _sick_image(tiny_dataset)
    normal, pneumonia = explain_array(predictor, gray, 0), explain_array(predictor, gray, 1)
    assert normal.shape == pneumonia.shape == gray.shape
    assert np.abs(normal - pneumonia).mean() > 0.1
    np.testing.assert_array_equal(explain_array(predictor, gray), pneumonia)  # default: the positive class
    # a huge upload's map is drawn at overlay size, not as a full-size float array (10,000^2 took 764 MB)
    big = np.random.default_rng(0).integers(0, 256, (3000, 2000), dtype=np.uint8)  # not blank: that is refused
    assert explain_array(predictor, big).shape == panel_shape(3000, 2000) == (MAX_PANEL, round(2000 * MAX_PANEL / 3000))


def _multiclass_predictor(directory: Path) -> Predictor:
    """An untrained normal / bacteria / virus simple_cnn whose head leans to bacteria over virus, so a film's most
    probable positive class is bacteria."""
    from pneumoscan.models.bundle import save_bundle
    from pneumoscan.models.card import BundleCard

    torch.manual_seed(1)  # weights under which both maps below have structure
    model = models.create("simple_cnn", num_classes=3)
    with torch.no_grad():
        model.get_classifier().bias.copy_(torch.tensor([0.0, 1.5, 0.0]))
    card = BundleCard("simple_cnn", "multiclass", ["normal", "bacteria", "virus"], "pneumonia", 32, "squash", 0.5,
                      0.25, threshold=0.3)
    return Predictor(save_bundle(directory, model, card))


def test_a_multiclass_map_explains_the_pneumonia_log_odds_the_label_reads(tiny_dataset: Path, tmp_path: Path) -> None:
    """The label of a three-class bundle is 1 - P(normal) at its threshold, and the caption says "evidence for
    pneumonia": the default map is the Grad-CAM of log(P(bacteria) + P(virus)) - log P(normal), not of the most
    probable positive class against the other two (bacteria against normal and virus together)."""
    predictor = _multiclass_predictor(tmp_path / "mc")
    gray = _sick_image(tiny_dataset)
    images = predictor.preprocess([gray])
    logits = predictor.logits(images)[0]
    assert logits[1] > logits[2]  # bacteria is this film's most probable positive class

    def drawn(target) -> np.ndarray:
        """Grad-CAM of ``target`` (logits -> score) in the image's frame, as explain_array draws it: the feature
        map weighted by its mean gradients, summed over channels, its positive part, at the input's size, over its
        maximum."""
        x = predictor.inputs(images).detach().clone()
        kept = {}
        hook = target_layer(predictor.model, x).register_forward_hook(lambda _m, _i, out: kept.update(a=out))
        with torch.enable_grad():
            score = target(predictor.model(x)[0])
        hook.remove()
        [gradients] = torch.autograd.grad(score, kept["a"])
        cam = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * kept["a"]).sum(dim=1))[0].detach().numpy()
        side = x.shape[-1]
        cam = np.asarray(Image.fromarray(cam.astype(np.float32)).resize((side, side), Image.Resampling.BILINEAR))
        return to_image_frame(cam / cam.max(), *gray.shape, predictor.card.spec, panel_shape(*gray.shape))

    pneumonia = drawn(lambda z: torch.logsumexp(z[1:], dim=-1) - z[0])
    bacteria = drawn(lambda z: z[1] - torch.logsumexp(z[[0, 2]], dim=-1))
    assert pneumonia.max() - pneumonia.min() > 0.5 and np.abs(pneumonia - bacteria).mean() > 0.05
    np.testing.assert_allclose(explain_array(predictor, gray), pneumonia, atol=1e-5)
    np.testing.assert_allclose(explain_array(predictor, gray, 1), bacteria, atol=1e-5)  # an explicit class: vs the rest


@pytest.mark.parametrize("policy", ["squash", "pad", "center-crop"])
def test_cam_maps_back_onto_the_original_frame(policy: str) -> None:
    height, width, size = 60, 100, 40
    white = np.full((height, width), 255, np.uint8)
    # The model input of an all-white image shows where the image lies in the square (pad: bars are black).
    spec = PreprocessSpec(size, policy)
    back = to_image_frame(spec.apply(white).astype(np.float32) / 255, height, width, spec)
    assert back.shape == (height, width)
    half = to_image_frame(spec.apply(white).astype(np.float32) / 255, height, width, spec, (height // 2, width // 2))
    assert half.shape == (height // 2, width // 2) and abs(np.nanmean(half) - np.nanmean(back)) < 0.02, "smaller"
    if policy == "center-crop":  # only the middle square was seen; the cut-off sides are NaN, not read
        left = (width - height) // 2
        assert back[:, left + 2 : left + height - 2].min() > 0.99
        assert np.isnan(back[:, :left]).all() and np.isnan(back[:, left + height :]).all()
        assert not np.isnan(back[:, left : left + height]).any()
    else:  # the letterbox bars are dropped, so the whole image is covered
        assert back[1:-1, 1:-1].min() > 0.99
    # an image larger than the training files is squashed to their square first: nothing is padded or cut
    matched = PreprocessSpec(size, policy, source_size=50)
    back = to_image_frame(matched.apply(white).astype(np.float32) / 255, height, width, matched)
    assert back[1:-1, 1:-1].min() > 0.99


def test_overlay_png_has_three_panels_at_the_original_aspect() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (90, 150), dtype=np.uint8)
    cam = np.zeros((32, 32), np.float32)
    cam[8:16, 8:16] = 1.0
    im = Image.open(io.BytesIO(overlay_png(gray, cam, "PNEUMONIA", None)))
    assert im.format == "PNG" and im.size[0] == 3 * 150 and im.size[1] > 90  # the panels over their caption
    panels = np.asarray(im.convert("RGB"))[:90].reshape(90, 3, 150, 3).transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(panels[0], np.repeat(gray[..., None], 3, axis=2))  # the original, untouched
    assert not np.array_equal(panels[2], panels[0]) and not np.array_equal(panels[2], panels[1])

    big = np.random.default_rng(0).integers(0, 256, (3000, 2000), dtype=np.uint8)  # not blank: that is refused
    im = Image.open(io.BytesIO(overlay_png(big, cam, "PNEUMONIA", None)))
    assert im.size[0] == 3 * round(2000 * MAX_PANEL / 3000) and MAX_PANEL < im.size[1] < 1.2 * MAX_PANEL


def test_overlay_is_viridis_with_a_caption_that_says_what_it_shows() -> None:
    """The file predict --heatmaps writes and ?heatmap=true returns was an unlabelled jet map: a reader saw a red
    spot over a lung on a film read NORMAL, with nothing saying the map is scaled to the film's own maximum, nor
    that it shows where the model looked, not where disease is. It is coloured as the web page colours it."""
    from matplotlib import colormaps

    viridis = np.round(colormaps["viridis"]([0.0, 1.0])[:, :3] * 255)
    gray = np.full((300, 400), 128, np.uint8)
    cam = np.zeros((300, 400), np.float32)
    cam[50:150, 50:150] = 1.0
    im = Image.open(io.BytesIO(overlay_png(gray, cam, "PNEUMONIA", None)))
    rgb = np.asarray(im.convert("RGB")).astype(int)
    np.testing.assert_array_equal(rgb[100, 400 + 100], viridis[1])  # the heatmap panel: yellow at the maximum
    np.testing.assert_array_equal(rgb[250, 400 + 350], viridis[0])  # dark purple where the map is 0, never jet's blue
    said = im.info["Description"]
    assert said == ("Grad-CAM: evidence for PNEUMONIA, scaled to this film's maximum; where the model looked, not "
                    "where disease is")
    strip = rgb[300:]
    assert (strip == 255).all(axis=2).mean() > 0.5 and (strip < 100).all(axis=2).any()  # white, with dark text
    colours = {tuple(c) for c in strip.reshape(-1, 3)}
    assert {tuple(c) for c in viridis.astype(int)} <= colours  # the scale, low to high, under the panels


def test_predict_writes_one_overlay_per_readable_image(tiny_bundle: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "in" / "other").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (50, 80), dtype=np.uint8)).save(tmp_path / "in" / "wide.png")
    Image.fromarray(rng.integers(0, 256, (70, 40), dtype=np.uint8)).save(tmp_path / "in" / "other" / "wide.png")
    (tmp_path / "in" / "bad.png").write_bytes(b"nope")
    rows = predict_paths(tiny_bundle, [tmp_path / "in"], heatmap_dir=tmp_path / "maps")
    heatmaps = [Path(r["heatmap"]) for r in rows if "heatmap" in r]
    assert [p.name for p in heatmaps] == ["wide.png", "wide-2.png"]  # same stem twice: no overwrite
    # in/other/wide.png sorts first; each is its three panels over their caption
    assert [Image.open(p).size[0] for p in heatmaps] == [120, 240]
    assert [Image.open(p).size[1] > h for p, h in zip(heatmaps, (70, 50))] == [True, True]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["wide-2.png", "wide.png"]


def test_predict_overlays_show_the_film_at_a_panels_size_and_name_the_class(tiny_bundle: Path, data_root: Path,
                                                                            tmp_path: Path) -> None:
    """The film panels were the model's small copy (318 x 260 for a 1272 x 1040 film), too small to check the map
    against the anatomy; the web service shows the film decoded at a panel's size, and so do they now."""
    film = next(p for p in sorted((data_root / "val" / "NORMAL").glob("*.jpeg")) if min(Image.open(p).size) > 600)
    [row] = predict_paths(tiny_bundle, [film], heatmap_dir=tmp_path / "maps")
    overlay = Image.open(row["heatmap"])
    width, height = Image.open(film).size
    panel = overlay.size[0] / 3  # three panels of the film as decoded for a reader's eyes, at most MAX_PANEL a side
    assert (min(width, MAX_PANEL) * 0.9 <= panel <= MAX_PANEL
            and panel > 2 * Predictor(tiny_bundle).card.spec.decode_target)
    assert overlay.info["Description"].startswith("Grad-CAM: evidence for PNEUMONIA,")


def test_heatmaps_never_replace_a_file_nor_become_inputs(tiny_bundle: Path, tmp_path: Path) -> None:
    """--heatmaps pointed at a film's own folder, at a folder being searched, and at a folder inside it, twice."""
    films = tmp_path / "films"
    films.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 40), dtype=np.uint8)).save(films / "a.png")
    original = (films / "a.png").read_bytes()
    [row] = predict_paths(tiny_bundle, [films / "a.png"], heatmap_dir=films)
    assert (films / "a.png").read_bytes() == original and row["heatmap"] == str(films / "a-2.png")
    (films / "a-2.png").unlink()
    with pytest.raises(ValueError, match="refused as films"):
        predict_paths(tiny_bundle, [films], heatmap_dir=films)
    for _ in range(2):  # the first run, which makes maps/ once its search is done, says what the second says
        skipped: list[dict[str, str]] = []
        rows = predict_paths(tiny_bundle, [films], heatmap_dir=films / "maps", skipped=skipped)
        assert [r["path"] for r in rows] == [str(films / "a.png")], "the overlays are not read back as films"
        assert skipped == [{"path": str(films / "maps"), "reason": "output folder of this run (not searched)"}]
    assert sorted(p.name for p in (films / "maps").iterdir()) == ["a-2.png", "a.png"]
    # a later run over the folder without --heatmaps: the overlays are refused, never scored (one of a NORMAL film
    # was scored PNEUMONIA 0.996), here and by the service
    rows = {str(Path(r["path"]).relative_to(films)): r for r in predict_paths(tiny_bundle, [films])}
    assert sorted(rows) == ["a.png", "maps/a-2.png", "maps/a.png"] and rows["a.png"]["label"]
    assert [rows[name].get("error") for name in ("maps/a-2.png", "maps/a.png")] == [OWN_OVERLAY] * 2
    assert not any("probability" in rows[name] for name in ("maps/a-2.png", "maps/a.png"))
    with TestClient(create_app(tiny_bundle)) as client:
        r = client.post("/v1/predict", files={"file": ("a.png", (films / "maps" / "a.png").read_bytes(), "image/png")})
    assert r.status_code == 422 and OWN_OVERLAY in r.json()["error"]


def test_the_int8_models_predictor_is_refused_a_map_of_another_model(int8_bundle: Path, tiny_dataset: Path) -> None:
    """Grad-CAM runs on the FP32 model: asked of the INT8 predictor, from Python, it had returned that model's map
    beside the INT8 model's reading without a word (predict --heatmaps and the service refuse it as well)."""
    gray = read_gray(next((tiny_dataset / "test" / "PNEUMONIA").iterdir()))
    with pytest.raises(ValueError, match="heatmaps come from the FP32 model, and the INT8 model reads at its own"):
        explain_array(Predictor(int8_bundle, backend="onnx-int8"), gray)
    assert explain_array(Predictor(int8_bundle, backend="onnx"), gray).shape == panel_shape(*gray.shape)


def test_a_run_folders_figures_are_refused_as_pneumoscan_outputs_not_scored(tiny_bundle: Path, tmp_path: Path) -> None:
    """``predict`` over a run folder scored its ROC and training curves as films (out of scope, but with a label)."""
    import matplotlib.pyplot as plt

    from pneumoscan.core.figures import figure_bytes

    fig, ax = plt.subplots()
    ax.plot([0, 0.2, 1], [0, 0.9, 1])
    (tmp_path / "roc.png").write_bytes(figure_bytes(fig))
    plt.close(fig)
    assert predict_paths(tiny_bundle, [tmp_path]) == [{"path": str(tmp_path / "roc.png"), "error": OWN_FIGURE}]
