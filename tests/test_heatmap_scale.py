"""Heatmaps on one scale per bundle: finishing a bundle records the raw Grad-CAM value its maps draw as their top
colour, so a film with weak evidence shows a dim map and one with strong evidence a bright one, and the overlay's
words name the scale the map was drawn on; a bundle without the record keeps maps scaled film by film, and says so."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import Browser, expect

from pneumoscan.core.metrics import softmax
from pneumoscan.data.decode import read_gray
from pneumoscan.inference.explain import (EMPTY, NEGATIVE, SCALE_MIN_FILMS, caption, explain_array, gradcam,
                                          gradcam_peaks, heatmap_scale, measure_heatmap_scale, overlay_png)
from pneumoscan.inference.predict import Predictor, tta_views
from pneumoscan.models import card as card_module
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.card import CARD, CHECKSUM, HEATMAP_SCALE_BOUNDS, card_task, load_card, save_card
from pneumoscan.serving.app import create_app
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.finish import ScoredFilms, finish_bundle
from pneumoscan.training.train import train
from tests.conftest import _once_per_run
from tests.test_browser import new_page, run_server
from tests.test_explain import _TwoEvidenceNet

PER_FILM = "scaled to this film's maximum"
ON_MODEL_SCALE = "on this model's scale"


def _films(tiny_dataset: Path) -> list[Path]:
    return sorted(tiny_dataset.rglob("*.jpeg"))


@pytest.fixture(scope="session")
def scaled_bundle(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle trained long enough for its maps of the evidence for pneumonia to hold something (those of the
    2-epoch tiny_bundle are empty on every film: each location argues for normal), finished again on the tiny films
    as its films of record, so that its card records a heatmap scale; built once a run (2-5 s), shared by the
    workers."""
    return _once_per_run(tmp_path_factory, "scaled_bundle", lambda folder: _scaled_bundle(tiny_dataset, folder))


def _scaled_bundle(tiny_dataset: Path, folder: Path) -> Path:
    cfg = TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=12, batch_size=8, val_fraction=0.25)
    model, card = load_bundle(train(tiny_dataset, cfg, folder / "run"))
    task = card_task(card, folder)
    paths = _films(tiny_dataset)
    images = np.stack([card.spec.apply(read_gray(p)) for p in paths])
    targets = np.array([int(p.parent.name == task.positive) for p in paths])

    def score(bundle: Path) -> ScoredFilms:
        shipped = Predictor(bundle, backend="onnx")
        return ScoredFilms(shipped.logits(images), [shipped.logits(v) for v in tta_views(images)], targets,
                           np.array([p.stem for p in paths]), images)

    finish_bundle(folder / "bundle", model, card, None, score, (0.95, None), "the tiny films")
    return folder / "bundle"


def _by_probability(predictor: Predictor, tiny_dataset: Path) -> list[Path]:
    """The tiny films from the least to the most probably pneumonia by the bundle's reading."""
    paths = _films(tiny_dataset)
    images = predictor.preprocess([read_gray(p) for p in paths])
    positive = predictor.task.positive_probability(softmax(predictor.logits(images), predictor.card.temperature))
    return [paths[i] for i in np.argsort(positive, kind="stable")]


def test_a_finished_bundle_records_the_scale_its_heatmaps_are_drawn_on(scaled_bundle: Path, tiny_dataset: Path) -> None:
    """The scale is the peak of the strong maps among the films it called positive: about one in ten of those films
    peaks above it (the 90th percentile of at most 32 of them, evenly spread over their probabilities)."""
    card = load_card(scaled_bundle)  # sealed with the scale in it: the checksum holds
    assert card.heatmap_scale is not None and card.heatmap_scale > 0
    predictor = Predictor(scaled_bundle, backend="torch")
    grays = [read_gray(p) for p in _films(tiny_dataset)]
    images = predictor.preprocess(grays)
    positive = predictor.task.positive_probability(softmax(predictor.logits(images), card.temperature))
    called = images[positive >= card.threshold]
    assert len(called) >= SCALE_MIN_FILMS
    peaks = gradcam_peaks(predictor.model, predictor.inputs(called), predictor.task.cam_classes)
    assert 0.05 <= np.mean(peaks > card.heatmap_scale) <= 0.15


def test_a_weak_films_map_is_dimmer_than_a_strong_ones(scaled_bundle: Path, tiny_dataset: Path) -> None:
    """Scaled to each film's own maximum, the least and the most probable film's maps both reached the top colour;
    on the bundle's scale the weak film's map stays dim."""
    predictor = Predictor(scaled_bundle, backend="torch")
    weak, *_, strong = map(read_gray, _by_probability(predictor, tiny_dataset))
    weak_map, strong_map = explain_array(predictor, weak), explain_array(predictor, strong)
    assert 0.0 <= weak_map.min() and strong_map.max() <= 1.0
    assert strong_map.max() > 0.5 and weak_map.max() < 0.5 * strong_map.max()
    for gray in (weak, strong):  # the same maps scaled film by film are equally bright: the scale makes the difference
        x = predictor.inputs(predictor.preprocess([gray]))
        assert gradcam(predictor.model, x, predictor.task.cam_classes).max() == pytest.approx(1.0, abs=1e-3)


def test_a_map_on_the_bundles_scale_is_the_raw_map_over_that_scale() -> None:
    """Two films whose evidence differs only in strength (a blob, for class 0 of a net whose evidence is brightness
    above mid-grey, at full brightness and at three quarters): scaled film by film both maps top out at 1; on one
    scale the fainter blob is drawn at half the brightness, as its raw map is half as strong."""
    model = _TwoEvidenceNet().eval()
    bright, faint = torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)
    bright[..., 8:16, 8:16], faint[..., 8:16, 8:16] = 1.0, 0.75
    assert gradcam(model, bright, 0).max() == gradcam(model, faint, 0).max() == pytest.approx(1.0, abs=1e-3)
    scale = float(gradcam_peaks(model, bright, 0)[0])
    on_scale = gradcam(model, bright, 0, scale), gradcam(model, faint, 0, scale)
    assert on_scale[0].max() == pytest.approx(1.0, abs=1e-3) and on_scale[1].max() == pytest.approx(0.5, abs=1e-3)
    # above the scale the colour stops at the top, and nothing is drawn where there is no evidence
    assert gradcam(model, bright, 0, scale / 2).max() == 1.0 and on_scale[1][0:4, 0:4].max() == 0.0


def test_the_overlay_says_which_scale_its_map_is_on(scaled_bundle: Path, tiny_dataset: Path) -> None:
    """The words come from the rule that chose the scale: the bundle's for the call's evidence, the film's own for a
    map of one class against the rest, which the scale was not measured on."""
    predictor = Predictor(scaled_bundle, backend="torch")
    weak, *_, strong = map(read_gray, _by_probability(predictor, tiny_dataset))
    for class_index, explains, film, words in ((None, "PNEUMONIA", strong, ON_MODEL_SCALE),
                                               (0, "NORMAL", weak, PER_FILM)):
        scale = heatmap_scale(predictor.card, class_index)
        cam = explain_array(predictor, film, class_index)
        said = Image.open(io.BytesIO(overlay_png(film, cam, explains, scale))).info["Description"]
        assert said == caption(explains, scale) and words in said
        assert (ON_MODEL_SCALE if words == PER_FILM else PER_FILM) not in said
    assert cam.max() > 0.95  # the normal film's map for NORMAL: its own maximum (less the resize onto the film)


def page_legend(browser: Browser, bundle: Path, film: Path) -> tuple[str, str, str]:
    """What the web page shows beside the heatmap of ``film`` read by ``bundle`` (its legend text, the top of its
    colour scale), and what a screen reader hears of the film with its heatmap (in a context of ``browser``: the
    worker's kept Chromium, not one launched for the test)."""
    server = run_server(create_app(bundle))
    try:
        with new_page(browser) as page:
            page.goto(next(server))
            page.set_input_files("#file", film)
            expect(page.locator("#result")).to_be_visible()
            page.click("#heatmap-button")
            expect(page.locator("#legend")).to_be_visible()
            # the viewer's description ends with what it draws (test_page.py checks that it is exposed)
            return (page.inner_text("#legend-text"), page.inner_text("#legend-top"),
                    page.text_content("#view-layer") or "")
    finally:
        server.close()


def sentence(words: str) -> str:
    """What the overlay's caption adds for one film's map (``words``), as the page's legend says it: a sentence."""
    return f"{words[:1].upper()}{words[1:]}."


def assert_legend_is_the_caption(legend: str, words: str, outside: bool = False) -> None:
    """The page's legend says the overlay's caption ``words`` (for the same bundle), and, in the words the overlay's
    caption adds for them, a film read as negative and an empty map; for a film ``outside`` the model's scope (a 64 px
    thumbnail of the tiny dataset) it starts by saying so."""
    negative = f" {sentence(NEGATIVE.format(label='NORMAL', explains='PNEUMONIA'))}"
    empty = f" {sentence(EMPTY.format(explains='PNEUMONIA'))}"
    start = "Outside the model's scope: the reading and this map do not apply. " if outside else ""
    assert legend in {f"{start}{words}.{read}{map_}" for read in ("", negative) for map_ in ("", empty)}


def test_the_pages_legend_says_the_scale_its_map_is_on(browser: Browser, scaled_bundle: Path,
                                                       tiny_dataset: Path) -> None:
    """The page colours the bare map (?heatmap=map) itself: its legend, the top of its colour scale and what a
    screen reader hears name the bundle's scale, in the overlay's caption's words (/v1/model's heatmap_caption,
    heatmap_top and heatmap_top_spoken)."""
    strongest = _by_probability(Predictor(scaled_bundle), tiny_dataset)[-1]
    legend, top, spoken = page_legend(browser, scaled_bundle, strongest)
    assert (f"evidence for PNEUMONIA {ON_MODEL_SCALE}, the same for every film (top colour: as strong as the "
            "strongest 10 % of validation films it called") in legend
    assert top == "strong evidence" and "this film" not in legend
    assert "strong evidence on this model's scale" in spoken
    assert_legend_is_the_caption(legend, caption("PNEUMONIA", heatmap_scale(load_card(scaled_bundle))), outside=True)


def test_a_bundle_without_the_record_keeps_maps_and_words_per_film(scaled_bundle: Path, tiny_dataset: Path,
                                                                  tmp_path: Path) -> None:
    """A bundle finished before the scale was kept (its card sealed without the field) loads, and draws each map
    scaled to its own film with the words that say so."""
    old = tmp_path / "old"
    shutil.copytree(scaled_bundle, old)
    fields = json.loads((old / CARD).read_text())
    del fields["heatmap_scale"], fields[CHECKSUM]
    # sealed as the pneumoscan that wrote it sealed it: its checksum over the fields it had
    (old / CARD).write_text(json.dumps({**fields, CHECKSUM: card_module._card_digest(fields)}))
    predictor = Predictor(old, backend="torch")
    assert predictor.card.heatmap_scale is None and heatmap_scale(predictor.card) is None
    weak = read_gray(_by_probability(predictor, tiny_dataset)[0])
    assert explain_array(Predictor(scaled_bundle, backend="torch"), weak).max() < 0.5  # dim on the bundle's scale
    assert explain_array(predictor, weak).max() > 0.95  # drawn bright without it
    said = Image.open(io.BytesIO(overlay_png(weak, explain_array(predictor, weak), "PNEUMONIA", None))).info
    assert said["Description"] == ("Grad-CAM: evidence for PNEUMONIA, scaled to this film's maximum; where the model "
                                   "looked, not where disease is")


def test_no_scale_is_recorded_from_too_few_films_or_empty_maps(tiny_bundle: Path, tiny_dataset: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A percentile of a handful of films says little, and the 2-epoch tiny bundle's maps of the evidence for
    pneumonia are empty on every film: neither gives a scale, and the log says why."""
    model, card = load_bundle(tiny_bundle)
    task = card_task(card, tiny_bundle)
    images = np.stack([card.spec.apply(read_gray(p)) for p in _films(tiny_dataset)])
    probs = softmax(Predictor(tiny_bundle).logits(images), card.temperature)
    called = task.positive_probability(probs) >= card.threshold
    assert called.sum() >= SCALE_MIN_FILMS
    with caplog.at_level(logging.INFO, logger="pneumoscan.inference.explain"):
        assert measure_heatmap_scale(model, card, task, images, probs) is None
        assert f"maps of the {min(32, called.sum())} films called PNEUMONIA it was measured on are empty" in caplog.text
        few = np.flatnonzero(called)[SCALE_MIN_FILMS - 1 :]  # all but SCALE_MIN_FILMS - 1 films called positive
        assert measure_heatmap_scale(model, card, task, np.delete(images, few, 0), np.delete(probs, few, 0)) is None
        assert f"{SCALE_MIN_FILMS - 1} of the {len(images) - len(few)} films were called PNEUMONIA" in caplog.text


@pytest.mark.parametrize("scale", [1e300, 1e-300])
def test_a_single_models_scale_no_float32_map_can_be_drawn_on_is_refused(tiny_bundle: Path, tmp_path: Path,
                                                                         scale: float) -> None:
    """A single model's card edited to a heatmap_scale of 1e300 or 1e-300 and sealed again loaded (only an
    ensemble's was held to its value): a map is divided by it in float32, so 1e300 drew every map blank and 1e-300
    every map NaN, the whole film hatched as not read, each said to be an empty map. A scale outside the float32
    values it is measured from is refused by field and value; the range's ends load."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, heatmap_scale=scale))
    with pytest.raises(ValueError, match=rf"bundle.json: heatmap_scale is {re.escape(repr(scale))}, outside 1.4e-45 "
                                         r"to 3.4e\+38, the float32 Grad-CAM values it is measured from"):
        load_card(bundle)
    for end in HEATMAP_SCALE_BOUNDS:
        save_card(bundle, dataclasses.replace(card, heatmap_scale=end))
        assert load_card(bundle).heatmap_scale == end
