"""An ensemble's heatmaps on its members' scales: when every member records its own heatmap scale, each member's map
is drawn on it (as its own bundle draws it) and the ensemble shows their mean, so a film with weak evidence shows a
dim map, and the overlay's words say whose scale it is; an ensemble with a member without a scale, or one built
before members' scales were kept, draws each map scaled to its own film, and says so."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import Browser

from pneumoscan.data.decode import read_gray
from pneumoscan.inference.explain import (EMPTY, HeatmapScale, NoMapOfFilm, caption, explain_array,
                                          gradcam, heatmap_scale, overlay_png)
from pneumoscan.inference.predict import Predictor, predict_paths
from pneumoscan.models import card as card_module
from pneumoscan.models.card import CARD, CHECKSUM, MEMBERS_OWN_SCALE, load_card, save_card
from pneumoscan.serving.app import create_app
from pneumoscan.training.ensemble import build_ensemble
from tests.builders import nudge_weights
from tests import test_ensemble, test_heatmap_scale
from tests.test_heatmap_faults import _IgnoresTheFilm
from tests.test_heatmap_scale import (ON_MODEL_SCALE, PER_FILM, _by_probability, assert_legend_is_the_caption,
                                      page_legend)

# their fixtures, shared: a bundle that records a heatmap scale (built once a run), films no member trained on
scaled_bundle, held_out = test_heatmap_scale.scaled_bundle, test_ensemble.held_out
ON_MEMBERS_SCALES = "on its members' scales"


@pytest.fixture(scope="module")
def second_member(scaled_bundle: Path, module_tmp: Callable[[str], Path]) -> Path:
    """scaled_bundle again, with weights of its own and a recorded scale twice its own: a member whose raw maps are
    as strong but whose scale differs, so that a map divided by the wrong member's scale shows."""
    bundle = shutil.copytree(scaled_bundle, module_tmp("second") / "bundle")
    nudge_weights(bundle)
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, heatmap_scale=2 * card.heatmap_scale))
    return bundle


@pytest.fixture(scope="module")
def scaled_ensemble(scaled_bundle: Path, second_member: Path, held_out: Path,
                    module_tmp: Callable[[str], Path]) -> Path:
    out = module_tmp("scaled-ensemble") / "ensemble"
    build_ensemble([scaled_bundle, second_member], out, data=held_out)
    return out


def test_an_ensemble_of_scaled_members_draws_each_on_its_own_scale(scaled_ensemble: Path, scaled_bundle: Path,
                                                                  second_member: Path, tiny_dataset: Path) -> None:
    """The ensemble records its members' scales and draws the mean of their maps, each on its own member's scale:
    the least probable film's map stays dim where the most probable one's is bright (per film, both were drawn up to
    the top colour)."""
    card = load_card(scaled_ensemble)  # sealed with the scales in it: the checksum holds
    own = [load_card(b).heatmap_scale for b in (scaled_bundle, second_member)]
    assert [m["heatmap_scale"] for m in card.model_kwargs["members"]] == own
    assert card.heatmap_scale == MEMBERS_OWN_SCALE and heatmap_scale(card) == HeatmapScale(MEMBERS_OWN_SCALE, True)
    predictor = Predictor(scaled_ensemble, backend="torch")
    weak, *_, strong = map(read_gray, _by_probability(predictor, tiny_dataset))
    weak_map, strong_map = explain_array(predictor, weak), explain_array(predictor, strong)
    assert 0.0 <= weak_map.min() and strong_map.max() <= 1.0
    # the second member draws its maps at half the first's brightness: the mean at three quarters (0.51 here)
    assert strong_map.max() > 0.3 and weak_map.max() < 0.5 * strong_map.max()
    classes = predictor.task.cam_classes
    x = predictor.inputs(predictor.preprocess([strong]))
    members = predictor.model.member_inputs(x)
    assert [scale for *_, scale in members] == own
    # both members read at the ensemble's size: the mean needs no resize
    mean = np.mean([gradcam(net, xm, classes, scale) for net, xm, scale in members], axis=0)
    np.testing.assert_allclose(gradcam(predictor.model, x, classes, MEMBERS_OWN_SCALE), mean, atol=1e-6)


def test_an_ensembles_overlay_says_its_members_scales(scaled_ensemble: Path, tiny_dataset: Path,
                                                     tmp_path: Path) -> None:
    """predict's overlay files carry the words of caption for the members' scales (the service's: see
    test_v1_model_gives_the_words_of_the_services_overlay): the top colour is each member's own strong evidence, not
    the ensemble's measured on films it called positive."""
    card = load_card(scaled_ensemble)
    words = caption("PNEUMONIA", heatmap_scale(card))
    assert ON_MEMBERS_SCALES in words and "top colour: every member's evidence as strong as the strongest 10 %" in words
    assert ON_MODEL_SCALE not in words and PER_FILM not in words
    film = _by_probability(Predictor(scaled_ensemble), tiny_dataset)[-1]
    (row,) = predict_paths(scaled_ensemble, [film], heatmap_dir=tmp_path)
    (written,) = tmp_path.glob("*.png")
    # the film, a 64 px thumbnail, is outside the scope: its overlay says so before these words
    negative = None if row["label"] == "PNEUMONIA" else row["label"]
    assert Image.open(written).info["Description"] == caption("PNEUMONIA", heatmap_scale(card), negative=negative,
                                                              warnings=row["warnings"])
    assert words in Image.open(written).info["Description"] and not row["in_scope"]


@pytest.mark.parametrize(("bundle", "scale_words", "top", "top_spoken"), [
    ("scaled_bundle", ON_MODEL_SCALE, "strong evidence", f"strong evidence {ON_MODEL_SCALE}"),
    ("scaled_ensemble", ON_MEMBERS_SCALES, "strong evidence", f"strong evidence {ON_MEMBERS_SCALES}"),
    ("tiny_bundle", PER_FILM, "this film's maximum", "this film's strongest value"),  # its maps are empty: no scale
])
def test_v1_model_gives_the_words_of_the_services_overlay(bundle: str, scale_words: str, top: str, top_spoken: str,
                                                           tiny_dataset: Path, request: pytest.FixtureRequest) -> None:
    """/v1/model's heatmap_caption is the caption of the overlay the service draws (its PNG Description), on each
    of the three scales: a bundle's own, an ensemble's members', each film's own. The web page shows those words as
    its legend, and heatmap_top / heatmap_top_spoken at the top of its colour scale, so the page and the overlay
    never say different things; heatmap_scale stays the card's number (1.0 for the ensemble)."""
    path = request.getfixturevalue(bundle)
    film = sorted(tiny_dataset.rglob("*.jpeg"))[0]
    with TestClient(create_app(path)) as client:
        info = client.get("/v1/model").json()
        r = client.post("/v1/predict?heatmap=true", files={"file": (film.name, film.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    png = base64.b64decode(r.json()["heatmap"].split(",", 1)[1])
    # the film, a 64 px thumbnail, is outside the scope: its overlay says so, then the words /v1/model gives
    said, card = Image.open(io.BytesIO(png)).info["Description"], load_card(path)
    said = said.removesuffix(f"; {EMPTY.format(explains=card.positive)}")  # what this film's map alone adds
    label = r.json()["label"]
    assert said == caption(card.positive, heatmap_scale(card), negative=None if label == card.positive else label,
                           warnings=r.json()["warnings"])
    assert info["heatmap_caption"] in said and info["heatmap_caption"] == caption(card.positive, heatmap_scale(card))
    assert scale_words in info["heatmap_caption"] and info["heatmap_caption"].startswith("Grad-CAM: evidence for ")
    assert (info["heatmap_top"], info["heatmap_top_spoken"]) == (top, top_spoken)
    assert info["heatmap_scale"] == load_card(path).heatmap_scale


def test_the_pages_legend_says_an_ensembles_members_scales(browser: Browser, scaled_ensemble: Path,
                                                           tiny_dataset: Path) -> None:
    """The page's legend, the top of its colour scale and what a screen reader hears say the members' scales, in
    the overlay's caption's words (/v1/model's heatmap_caption, heatmap_top and heatmap_top_spoken)."""
    strongest = _by_probability(Predictor(scaled_ensemble), tiny_dataset)[-1]
    legend, top, spoken = page_legend(browser, scaled_ensemble, strongest)
    assert (f"evidence for PNEUMONIA {ON_MEMBERS_SCALES}, the same for every film (the mean of its members' maps, "
            "each on that member's own scale; top colour: every member's evidence as strong as the strongest 10 % "
            "of validation films it called PNEUMONIA)") in legend
    assert top == "strong evidence" and "this film" not in legend and ON_MODEL_SCALE not in legend
    assert f"strong evidence {ON_MEMBERS_SCALES}" in spoken
    assert_legend_is_the_caption(legend, caption("PNEUMONIA", heatmap_scale(load_card(scaled_ensemble))),
                                 outside=True)


def test_an_ensemble_with_a_member_without_a_scale_keeps_maps_per_film(
        scaled_bundle: Path, tiny_bundle: Path, held_out: Path, tiny_dataset: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A member whose bundle records no scale (the 2-epoch tiny bundle's maps are empty) has no map on a scale to
    join the others': the ensemble records none, the log says which member, and its maps and words are per film."""
    with caplog.at_level(logging.INFO, logger="pneumoscan.training.ensemble"):
        build_ensemble([scaled_bundle, tiny_bundle], tmp_path / "ens", data=held_out)
    assert f"no heatmap scale recorded: ensemble member 2 of 2 ({tiny_bundle}) records none, so" in caplog.text
    card = load_card(tmp_path / "ens")
    assert card.heatmap_scale is None and heatmap_scale(card) is None
    assert [m["heatmap_scale"] for m in card.model_kwargs["members"]] == [load_card(scaled_bundle).heatmap_scale, None]
    predictor = Predictor(tmp_path / "ens", backend="torch")
    weak = read_gray(_by_probability(predictor, tiny_dataset)[0])
    assert explain_array(predictor, weak).max() > 0.95  # scaled to its own film
    with pytest.raises(ValueError, match=rf"^ensemble member 2 of 2 \({re.escape(str(tiny_bundle))}\) records no "
                                         "heatmap scale"):
        gradcam(predictor.model, predictor.inputs(predictor.preprocess([weak])), 1, MEMBERS_OWN_SCALE)


def test_a_members_refusal_of_one_films_map_stays_a_refusal_of_that_film(scaled_ensemble: Path,
                                                                         tiny_dataset: Path) -> None:
    """Named as the member's, the refusal kept only the kind "no map from this model": predict, which keeps a film's
    reading when its map alone is refused, would have stopped the whole run at it."""
    predictor = Predictor(scaled_ensemble, backend="torch")
    predictor.model.members[1].net = _IgnoresTheFilm().eval()
    weak = read_gray(_by_probability(predictor, tiny_dataset)[0])
    with pytest.raises(NoMapOfFilm, match=r"^ensemble member 2 of 2 \(.+\): the model's score does not change with its "
                                          "last feature map on this film"):
        explain_array(predictor, weak)


def test_an_ensemble_built_before_members_scales_were_kept_keeps_maps_per_film(
        scaled_ensemble: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """An ensemble card sealed without the members' scales and its own (as pneumoscan wrote ensembles before) loads,
    and draws each map scaled to its own film with the words that say so."""
    old = shutil.copytree(scaled_ensemble, tmp_path / "old")
    fields = json.loads((old / CARD).read_text())
    del fields["heatmap_scale"], fields[CHECKSUM]
    for member in fields["model_kwargs"]["members"]:
        del member["heatmap_scale"]
    (old / CARD).write_text(json.dumps({**fields, CHECKSUM: card_module._card_digest(fields)}))
    predictor = Predictor(old, backend="torch")
    assert heatmap_scale(predictor.card) is None
    weak = read_gray(_by_probability(predictor, tiny_dataset)[0])
    assert explain_array(Predictor(scaled_ensemble, backend="torch"), weak).max() < 0.5  # dim on the members' scales
    cam = explain_array(predictor, weak)
    assert cam.max() > 0.95
    said = Image.open(io.BytesIO(overlay_png(weak, cam, "PNEUMONIA", heatmap_scale(predictor.card)))).info
    assert said["Description"] == caption("PNEUMONIA", None) and PER_FILM in said["Description"]


def test_an_ensemble_card_with_a_scale_and_a_member_without_one_is_refused(scaled_ensemble: Path,
                                                                           tmp_path: Path) -> None:
    """pneumoscan never writes an ensemble scale beside a member without one: such a card (edited, re-sealed) is
    refused when loaded, naming the member, not served with a caption its every heatmap would then fail."""
    edited = shutil.copytree(scaled_ensemble, tmp_path / "edited")
    fields = json.loads((edited / CARD).read_text())
    del fields[CHECKSUM]
    fields["model_kwargs"]["members"][1]["heatmap_scale"] = None
    (edited / CARD).write_text(json.dumps({**fields, CHECKSUM: card_module._card_digest(fields)}))
    source = re.escape(fields["model_kwargs"]["members"][1]["source"])
    with pytest.raises(ValueError, match=rf"heatmap_scale is 1.0, but ensemble member 2 of 2 \({source}\) records "
                                         "none"):
        load_card(edited)
    # a member's own scale is a raw Grad-CAM value, held to the float32 range as a single model's: 1e-300 drew that
    # member's maps NaN, the whole film as not read
    fields["model_kwargs"]["members"][1]["heatmap_scale"] = 1e-300
    (edited / CARD).write_text(json.dumps({**fields, CHECKSUM: card_module._card_digest(fields)}))
    with pytest.raises(ValueError, match=rf"ensemble member 2 of 2 \({source}\): heatmap_scale is 1e-300, outside "):
        load_card(edited)
