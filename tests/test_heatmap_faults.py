"""A heatmap a reader can trust: it lies over the film where the model looked, whatever the resize policy and the
film's aspect, and a map that would show evidence it is not (NaN gradients, a score that ignores the film) is refused
with its reason instead of drawn as an empty map."""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pneumoscan.data.decode import read_gray
from pneumoscan.inference.explain import (MAX_PANEL, NoMapOfFilm, explain_array, film_overlay, gradcam, heatmap_scale,
                                          overlay_png, panel_shape)
from pneumoscan.inference.predict import Predictor
from tests.builders import dicom_bytes


class _SeesTheFilm(nn.Module):
    """Its last feature map is the normalised film itself and its log-odds for class 1 the map's mean: its Grad-CAM
    is the film's bright parts, so a bright blob is where its map must peak."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 1, 1)
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.features.weight.fill_(1.0)
            self.features.bias.zero_()
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class _NanGradients(_SeesTheFilm):
    """Finite scores, NaN gradients: ``torch.where``'s unused branch overflows, and its infinite gradient times 0 is
    NaN (the common way a model's backward pass turns NaN while its forward pass is sound)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        a = torch.where(a > 1e3, torch.exp(a * 100), a)
        return self.head(a.mean(dim=(2, 3)))


class _IgnoresTheFilm(_SeesTheFilm):
    """A dead model: its score is its head's bias whatever the film, so every gradient is zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)) * 0)


class _IgnoresBrightFilms(_SeesTheFilm):
    """Sees a film whose mean input is at most ``cutoff``; a brighter film's score is the head's bias alone, so its
    gradients are all zero and its map alone is refused."""

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = cutoff

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = self.features(x).mean(dim=(2, 3))
        return self.head(torch.where(seen > self.cutoff, seen * 0, seen))


def _film(height: int, width: int, at: tuple[float, float]) -> np.ndarray:
    """A dim film with one bright blob centred at ``at`` (row, column as fractions of the film)."""
    rng = np.random.default_rng(0)
    film = rng.integers(20, 90, (height, width)).astype(np.uint8)
    rows, cols = np.mgrid[:height, :width]
    film[(rows - at[0] * height) ** 2 + (cols - at[1] * width) ** 2 < (0.08 * min(height, width)) ** 2] = 255
    return film


def _peak(values: np.ndarray) -> tuple[float, float]:
    """(row, column) as fractions of the map: the centre of its top tenth (of the film read: center-crop's cut-off
    sides are NaN)."""
    high, low = np.nanmax(values), np.nanmin(values)
    rows, cols = np.nonzero(values >= high - 0.1 * (high - low))
    return rows.mean() / values.shape[0], cols.mean() / values.shape[1]


@pytest.mark.parametrize("source_size", [None, 64])
@pytest.mark.parametrize("policy", ["squash", "pad", "center-crop"])
def test_the_map_peaks_where_the_film_shows_the_evidence(tiny_bundle: Path, policy: str,
                                                         source_size: int | None) -> None:
    """An off-centre blob, on a portrait and a landscape film, under each resize policy (and with a bundle that
    brings larger films to its training files' square first): the map returned and the overlay's heatmap panel
    peak on the blob, not on its mirror or its place in the model's square."""
    predictor = Predictor(tiny_bundle)
    predictor._model = _SeesTheFilm().eval()
    predictor.card = dataclasses.replace(predictor.card, resize_policy=policy, source_size=source_size,
                                         source_quality=None, heatmap_scale=None)
    for (height, width), at in (((120, 200), (0.3, 0.65)), ((200, 120), (0.65, 0.3))):  # in center-crop's square
        film = _film(height, width, at)
        cam = explain_array(predictor, film)
        assert cam.shape == (height, width)
        overlay = np.asarray(Image.open(io.BytesIO(overlay_png(film, cam, "PNEUMONIA", heatmap_scale(predictor.card)))))
        panel = overlay[:height, width : 2 * width].astype(int)
        # viridis grows brighter with the value; grey, no colour of it, is the film the model did not read
        heat = np.where((panel == panel[..., :1]).all(axis=2), np.nan, panel.sum(axis=2))
        for found in (_peak(cam), _peak(heat)):
            assert np.allclose(found, at, atol=0.04), f"{policy} {height}x{width}: peak at {found}, blob at {at}"


def test_the_map_lies_on_a_full_size_monochrome1_film_as_predict_draws_it(tiny_bundle: Path, tmp_path: Path) -> None:
    """A full-size film that is not square, stored as MONOCHROME1 (white is 0), read as predict reads it: reduced
    on decoding towards the model's size, shown decoded again at a panel's size (over 1,024 px a side, shrunk). Under
    each resize policy the overlay's film panel shows it the right way round in grey (the blob bright) and its
    heatmap panel peaks on the blob, however the decode reduced the film (about 1 s: full-size films)."""
    predictor = Predictor(tiny_bundle)
    predictor._model = _SeesTheFilm().eval()
    films = (((1041, 1851), (0.3, 0.62), ("squash", "pad", "center-crop")), ((1851, 1041), (0.62, 0.3), ("pad",)))
    for (height, width), at, policies in films:  # a portrait film: the letterbox's bars on its other sides
        film = _film(height, width, at)
        rows = np.mgrid[:height, :width][0]
        film = np.where(film == 255, 255, 20 + 90 * rows // height).astype(np.uint8)  # smooth: not blank once reduced
        path = tmp_path / f"{height}.dcm"
        path.write_bytes(dicom_bytes((255 - film).astype(np.uint16) * 16, "MONOCHROME1"))
        gray = read_gray(path, target=predictor.card.spec.decode_target)
        shown = read_gray(path, target=MAX_PANEL)
        panel_h, panel_w = panel_shape(height, width)
        for policy in policies:
            predictor.card = dataclasses.replace(predictor.card, resize_policy=policy, source_size=None,
                                                 heatmap_scale=None)
            overlay = np.asarray(Image.open(io.BytesIO(film_overlay(predictor, gray, shown, label="PNEUMONIA"))))
            grey, panel = overlay[:panel_h, :panel_w, 0].astype(float), overlay[:panel_h, panel_w : 2 * panel_w]
            heat = np.where((panel == panel[..., :1]).all(axis=2), np.nan, panel.astype(int).sum(axis=2))
            for found in (_peak(grey), _peak(heat)):
                assert np.allclose(found, at, atol=0.03), f"{policy} {height}x{width}: peak at {found}, blob at {at}"


@pytest.mark.parametrize("scale", [None, 0.5])
def test_a_map_with_nan_gradients_is_refused_not_drawn_empty(scale: float | None) -> None:
    """NaN was cast to 0, the lowest colour: a film drawn as no evidence anywhere, over any reading."""
    x = torch.from_numpy(_film(32, 32, (0.3, 0.7))[None, None] / 255.0).float()
    with pytest.raises(NoMapOfFilm, match="not finite"):
        gradcam(_NanGradients().eval(), x, 1, scale)


def test_a_model_whose_score_ignores_the_film_gets_no_map(tiny_bundle: Path) -> None:
    """Its score is the same for every film: an empty map would say the model looked and found nothing."""
    predictor = Predictor(tiny_bundle)
    predictor._model = _IgnoresTheFilm().eval()
    with pytest.raises(NoMapOfFilm, match="every Grad-CAM gradient is zero"):
        explain_array(predictor, _film(120, 200, (0.3, 0.65)))


def test_a_film_with_only_evidence_against_keeps_its_empty_map() -> None:
    """Gradients that are not zero, every region lowering the log-odds: the empty map is the truth, and is drawn."""
    x = torch.full((1, 1, 32, 32), -1.0)  # the film's map is negative everywhere: no evidence for class 1
    cam = gradcam(_SeesTheFilm().eval(), x, 1, 0.5)
    assert cam.shape == (32, 32) and not cam.any()


def test_predict_keeps_the_reading_of_a_film_whose_map_is_refused(tiny_bundle: Path, tiny_dataset: Path,
                                                                   tmp_path: Path) -> None:
    """A bundle whose score ignores the film (its head's weights zero): `predict --heatmaps` stopped at the first
    film and lost every score; each row keeps its reading, names why it has no heatmap, and no overlay is written."""
    from pneumoscan.inference.predict import NO_HEATMAP, predict_paths
    from pneumoscan.models.bundle import load_bundle, save_bundle

    dead = tmp_path / "dead"
    shutil.copytree(tiny_bundle, dead)
    model, card = load_bundle(dead)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.zero_()
    save_bundle(dead, model, card)
    films = sorted((tiny_dataset / "train" / "NORMAL").glob("*.jpeg"))[:2]
    rows = predict_paths(dead, films, heatmap_dir=tmp_path / "maps")
    assert [r["path"] for r in rows] == [str(f) for f in films]
    for row in rows:
        assert 0.0 <= row["probability"] <= 1.0 and row["label"] in ("NORMAL", "PNEUMONIA"), row
        assert "heatmap" not in row and "error" not in row, row
        assert [w for w in row["warnings"] if w.startswith(f"{NO_HEATMAP}: ")] == [
            f"{NO_HEATMAP}: the model's score does not change with its last feature map on this film (every Grad-CAM "
            "gradient is zero), so a heatmap would show nothing it looked at; read the film without one"], row
    assert list((tmp_path / "maps").iterdir()) == []


def test_the_evaluation_gallery_draws_the_maps_it_can_after_one_films_is_refused(tiny_bundle: Path,
                                                                                 tiny_dataset: Path) -> None:
    """The gallery took any refusal for a model without maps and drew no overlay for the films after it: one film's
    refused map leaves that film plain, its caption saying why, and the next films' overlays are drawn."""
    from tests.builders import labelled_records
    from pneumoscan.data.tasks import get_task
    from pneumoscan.evaluation.evaluate import error_gallery
    from pneumoscan.inference.predict import NO_HEATMAP

    predictor = Predictor(tiny_bundle)
    predictor.card = dataclasses.replace(predictor.card, heatmap_scale=None)
    records, images, targets, _ = labelled_records(tiny_dataset, "test", get_task("pneumonia"), predictor.card.spec)
    sick = [i for i in np.flatnonzero(targets == 1)[:3]]
    brightness = predictor.inputs(images[sick]).mean(dim=(1, 2, 3)).numpy()
    order = np.argsort(-brightness)  # the brightest film first in the gallery, the only one its model ignores
    predictor._model = _IgnoresBrightFilms(cutoff=float(brightness[order[:2]].mean())).eval()
    films = [records[sick[k]] for k in order]
    gallery = error_gallery(predictor, films, np.ones(3, int), np.array([0.1, 0.2, 0.3]), threshold=0.5, size=3)
    (false_pos, false_neg) = gallery.values()
    assert false_pos == [] and [caption.split()[0] for _, caption in false_neg] == [Path(r.path).name for r in films]
    marks = [Image.open(io.BytesIO(png)).info.get("Software") for png, _ in false_neg]
    assert marks == [None, "pneumoscan Grad-CAM overlay", "pneumoscan Grad-CAM overlay"], "the next films' maps drawn"
    assert false_neg[0][1].endswith(f"({NO_HEATMAP}: the model's score does not change with its last feature map on "
                                    "this film (every Grad-CAM gradient is zero), so a heatmap would show nothing it "
                                    "looked at; read the film without one)")
    assert all(NO_HEATMAP not in caption for _, caption in false_neg[1:])
