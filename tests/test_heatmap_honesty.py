"""A heatmap never says what is not so: film the model did not read (center-crop's cut-off edges) is drawn as not
read, never as the scale's lowest colour ("no evidence"), in the overlay, the bare map and the page; a map beside a
test-time-augmented probability says it is of the plain view; a film outside the model's scope says so on its
overlay, so that a printed one cannot pass for a reading that applies."""

from __future__ import annotations

import base64
import dataclasses
import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import Browser, expect

from pneumoscan.data.scope import LATERAL, NO_TAGS, UNLIKE_LAYOUT
from pneumoscan.inference.explain import (EMPTY, NEGATIVE, OUTSIDE, UNREAD, UNREAD_GREYS, WITHOUT_TTA, caption,
                                          explain_array, film_overlay, heatmap_scale, map_png, overlay_png, viridis)
from pneumoscan.inference.export import write_onnx_spec
from pneumoscan.inference.predict import Predictor, predict_paths
from pneumoscan.models.card import ONNX_NAME, load_card, save_card
from pneumoscan.serving.app import create_app
from tests.builders import at_threshold
from tests.test_browser import new_page, run_server
from tests.test_heatmap_faults import _film, _SeesTheFilm

HEIGHT, WIDTH = 120, 200  # a landscape film: center-crop reads its middle 120 x 120 square, columns 40 to 159
LEFT = (WIDTH - HEIGHT) // 2


def _seeing(tiny_bundle: Path, policy: str) -> Predictor:
    """The tiny bundle's predictor under ``policy``, with a model whose map is the film's bright parts."""
    predictor = Predictor(tiny_bundle)
    predictor._model = _SeesTheFilm().eval()
    predictor.card = dataclasses.replace(predictor.card, resize_policy=policy, source_size=None,
                                         source_quality=None, heatmap_scale=None)
    return predictor


def _decoded(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def _center_crop_copy(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` whose card reads films by center-crop (its ONNX sidecar too, when it has one), not
    squashed to its 64 px training files' square first (which leaves center-crop nothing to cut)."""
    shutil.copytree(bundle, out)
    card = load_card(out)
    save_card(out, dataclasses.replace(card, resize_policy="center-crop", source_size=None, source_quality=None,
                                       train_config={**card.train_config, "resize_policy": "center-crop"}))
    if (out / ONNX_NAME).exists():
        write_onnx_spec(out, out / ONNX_NAME)
    return out


@pytest.fixture(scope="module")
def center_crop_bundle(tiny_bundle: Path, module_tmp: Callable[[str], Path]) -> Path:
    return _center_crop_copy(tiny_bundle, module_tmp("crop") / "bundle")


@pytest.fixture(scope="module")
def landscape(data_root: Path) -> Path:
    """A real full-size film, wider than tall: center-crop cuts off its left and right edges."""
    film = sorted((data_root / "val" / "PNEUMONIA").glob("*.jpeg"))[0]
    width, height = Image.open(film).size
    assert width > 1.2 * height, "the test needs a landscape film"
    return film


def test_center_crop_draws_the_cut_off_edges_as_not_read(tiny_bundle: Path) -> None:
    """The map was 0 outside the middle square, drawn dark purple, "no evidence", where the model never looked:
    it is NaN there, the heatmap panel is hatched grey (no colour of the scale), the blend is the film alone, and
    the caption says the edges were not read."""
    film = _film(HEIGHT, WIDTH, (0.5, 0.5))
    cam = explain_array(_seeing(tiny_bundle, "center-crop"), film)
    assert np.isnan(cam[:, :LEFT]).all() and np.isnan(cam[:, LEFT + HEIGHT :]).all()
    assert np.isfinite(cam[:, LEFT : LEFT + HEIGHT]).all()
    overlay = Image.open(io.BytesIO(overlay_png(film, cam, "PNEUMONIA", None)))
    rgb = np.asarray(overlay.convert("RGB"))
    original, heat, blend = (rgb[:HEIGHT, i * WIDTH : (i + 1) * WIDTH] for i in range(3))
    for edge in (slice(0, LEFT), slice(LEFT + HEIGHT, WIDTH)):
        assert {tuple(c) for c in heat[:, edge].reshape(-1, 3)} == {tuple(c) for c in UNREAD_GREYS}
        np.testing.assert_array_equal(blend[:, edge], original[:, edge])
    palette = {tuple(c) for c in viridis()}
    assert {tuple(c) for c in heat[:, LEFT : LEFT + HEIGHT].reshape(-1, 3)} <= palette  # the read square: the scale
    assert overlay.info["Description"].endswith(f"; {UNREAD}")


@pytest.mark.parametrize("policy", ["squash", "pad"])
def test_policies_that_read_the_whole_film_mark_nothing_unread(tiny_bundle: Path, policy: str) -> None:
    """Squash stretches and pad letterboxes the whole film into the model's square (pad's bars are dropped from the
    map): every pixel was read, so nothing is hatched and the caption says nothing of unread edges."""
    film = _film(HEIGHT, WIDTH, (0.5, 0.2))
    cam = explain_array(_seeing(tiny_bundle, policy), film)
    assert np.isfinite(cam).all()
    overlay = Image.open(io.BytesIO(overlay_png(film, cam, "PNEUMONIA", None)))
    heat = np.asarray(overlay.convert("RGB"))[:HEIGHT, WIDTH : 2 * WIDTH]
    assert {tuple(c) for c in heat.reshape(-1, 3)} <= {tuple(c) for c in viridis()}
    assert UNREAD not in overlay.info["Description"]
    assert Image.open(io.BytesIO(map_png(cam))).mode == "L"  # the bare map as it always was


def test_the_bare_map_is_transparent_where_the_film_was_not_read(tiny_bundle: Path) -> None:
    """``heatmap=map`` was 8-bit gray, 0 on the cut-off edges: a client colours 0 as no evidence. It has an alpha
    channel, transparent there and opaque over the square the model read, whose gray levels are the map's."""
    film = _film(HEIGHT, WIDTH, (0.5, 0.5))
    cam = explain_array(_seeing(tiny_bundle, "center-crop"), film)
    bare = Image.open(io.BytesIO(map_png(cam)))
    assert bare.mode == "LA" and bare.size == (WIDTH, HEIGHT)
    levels, alpha = np.asarray(bare).transpose(2, 0, 1)
    assert not alpha[:, :LEFT].any() and not alpha[:, LEFT + HEIGHT :].any()
    assert (alpha[:, LEFT : LEFT + HEIGHT] == 255).all()
    np.testing.assert_array_equal(levels[:, LEFT : LEFT + HEIGHT],
                                  np.round(cam[:, LEFT : LEFT + HEIGHT] * 255).astype(np.uint8))


@pytest.mark.parametrize("scale", [None, 0.5])
def test_an_empty_map_says_so_on_its_overlay(tiny_bundle: Path, scale: float | None) -> None:
    """A film with no evidence for the class anywhere (every region lowers its log-odds) was drawn in the scale's
    lowest colour alone under the usual caption, which reads as a map that found nothing to show: the caption says
    the map is empty. A map with evidence somewhere does not say it."""
    predictor = _seeing(tiny_bundle, "squash")
    predictor.card = dataclasses.replace(predictor.card, heatmap_scale=scale)
    rows = np.mgrid[:HEIGHT, :WIDTH][0]
    dark = (20 + 90 * rows / HEIGHT).astype(np.uint8)  # below the model's mean everywhere: no evidence for class 1
    assert not explain_array(predictor, dark).any()
    said = Image.open(io.BytesIO(film_overlay(predictor, dark, label="PNEUMONIA"))).info["Description"]
    assert said == f"{caption('PNEUMONIA', heatmap_scale(predictor.card))}; {EMPTY.format(explains='PNEUMONIA')}"
    blob = _film(HEIGHT, WIDTH, (0.5, 0.5))
    seen = Image.open(io.BytesIO(film_overlay(predictor, blob, label="PNEUMONIA"))).info["Description"]
    assert seen == caption("PNEUMONIA", heatmap_scale(predictor.card))


def test_the_overlay_of_a_film_read_as_negative_says_so(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """The map is the evidence for the positive class whatever the call: on a film read as NORMAL it is that film's
    weak evidence for PNEUMONIA, which a map scaled to the film's own maximum draws as bright as a sick film's. The
    web page's legend said so; the overlay (a file read apart from its results row, or printed) did not."""
    predictor = _seeing(tiny_bundle, "squash")
    film = _film(HEIGHT, WIDTH, (0.5, 0.5))
    read = {label: Image.open(io.BytesIO(film_overlay(predictor, film, label=label))).info["Description"]
            for label in ("NORMAL", "PNEUMONIA")}
    negative = NEGATIVE.format(label="NORMAL", explains="PNEUMONIA")
    assert read["NORMAL"] == f"{read['PNEUMONIA']}; {negative}"
    assert read["PNEUMONIA"] == caption("PNEUMONIA", None)
    rows = predict_paths(tiny_bundle, tiny_dataset / "test", heatmap_dir=tmp_path)
    assert {row["label"] for row in rows} == {"NORMAL", "PNEUMONIA"}
    for row in rows:
        said = Image.open(row["heatmap"]).info["Description"]
        assert (negative in said) == (row["label"] == "NORMAL"), row


@pytest.mark.parametrize("label", ["pneumonia", "Pneumonia", "sick", ""])
def test_an_overlay_is_refused_a_label_that_is_no_reading_of_the_bundle(tiny_bundle: Path, label: str) -> None:
    """A script passes the reading's label itself: one spelt as another task spells it (`pneumonia`, the multiclass
    bundle's) was taken for a negative call, and the overlay of a film read as PNEUMONIA was captioned "read as
    pneumonia: ... fell short of the threshold". A label that is no reading of the bundle is refused, naming its
    two."""
    predictor = _seeing(tiny_bundle, "squash")
    with pytest.raises(ValueError, match=r"not a reading of this bundle \(NORMAL or PNEUMONIA\)"):
        film_overlay(predictor, _film(HEIGHT, WIDTH, (0.5, 0.5)), label=label)


def test_the_words_for_a_film_read_as_the_first_class_hold_for_every_task(tiny_etiology_bundle: Path) -> None:
    """"read as bacteria: the map shows the weak evidence of a film read as negative": bacteria is no negative finding
    to a clinician, and a film just short of the threshold need not have weak evidence. The words name the class the
    map is evidence for and the threshold, for any task; /v1/model gives the web page the overlay's words."""
    words = "read as bacteria: the map shows the evidence for virus, which fell short of the threshold"
    assert caption("virus", None, negative="bacteria") == f"{caption('virus', None)}; {words}"
    with TestClient(create_app(tiny_etiology_bundle)) as client:
        info = client.get("/v1/model").json()
    assert (info["heatmap_negative"], info["heatmap_empty"]) == (
        words, "empty map: nowhere on this film does the evidence for virus reach the scale's first step above none")


def test_a_caption_names_why_a_film_is_outside_the_scope_first() -> None:
    """Its reasons in brief, before the map's words; warnings that leave the film in scope add nothing."""
    lateral = LATERAL.text(view="LL")
    unlike = UNLIKE_LAYOUT.text(times=2.5)
    plain = caption("PNEUMONIA", None)
    assert caption("PNEUMONIA", None, warnings=[NO_TAGS]) == plain
    said = caption("PNEUMONIA", None, warnings=[NO_TAGS, lateral, unlike])
    assert said == (f"{OUTSIDE} (lateral view (LL); its layout of light and dark is unlike that of the training films "
                    f"(2.50 times the limit)): the reading and this map do not apply. {plain}")


def test_predict_overlays_say_tta_and_scope(tiny_bundle: Path, tiny_dataset: Path, landscape: Path,
                                            tmp_path: Path) -> None:
    """``predict --tta --heatmaps``: the probability is the mean of test-time views, the map of the plain film, and
    the caption says so; a 64 px film (a thumbnail, outside the scope) has its overlay say so and why, a real film
    in scope has not. Without --tta nothing is said of test-time views."""
    thumbnail = sorted((tiny_dataset / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    rows = predict_paths(tiny_bundle, [thumbnail, landscape], tta=True, heatmap_dir=tmp_path / "tta")
    small, real = (Image.open(row["heatmap"]).info["Description"] for row in rows)
    assert [row["in_scope"] for row in rows] == [False, True]
    assert small.startswith(f"{OUTSIDE} (image is 64 x 64 pixels, smaller than 224 px on a side")
    assert small.endswith(f"; {WITHOUT_TTA}") and real.endswith(f"; {WITHOUT_TTA}") and OUTSIDE not in real
    plain = predict_paths(tiny_bundle, [landscape], heatmap_dir=tmp_path / "plain")[0]
    said = Image.open(plain["heatmap"]).info["Description"]  # the tiny model may find no evidence on a real film
    negative = None if plain["label"] == "PNEUMONIA" else plain["label"]
    assert said.removesuffix(f"; {EMPTY.format(explains='PNEUMONIA')}") == caption(
        "PNEUMONIA", heatmap_scale(load_card(tiny_bundle)), negative=negative)


def test_the_service_overlay_and_map_of_a_center_crop_film(center_crop_bundle: Path, landscape: Path,
                                                           tiny_dataset: Path) -> None:
    """The service's overlay (``heatmap=true``) says the edges were not read, its bare map is transparent there, and
    the overlay of a film outside the scope says so."""
    thumbnail = sorted((tiny_dataset / "test" / "NORMAL").glob("*.jpeg"))[0].read_bytes()
    with TestClient(create_app(center_crop_bundle)) as client:
        def heatmap(data: bytes, kind: str) -> tuple[dict, Image.Image]:
            r = client.post("/v1/predict", params={"heatmap": kind}, files={"file": ("x.jpeg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            return r.json(), _decoded(r.json()["heatmap"])

        body, overlay = heatmap(landscape.read_bytes(), "true")
        said = overlay.info["Description"]
        assert UNREAD in said and body["in_scope"] == (OUTSIDE not in said)
        _, bare = heatmap(landscape.read_bytes(), "map")
        alpha = np.asarray(bare)[..., 1]
        assert bare.mode == "LA" and not alpha[:, :3].any() and not alpha[:, -3:].any()
        assert (alpha[:, alpha.shape[1] // 2] == 255).all()
        body, overlay = heatmap(thumbnail, "true")
        assert not body["in_scope"] and overlay.info["Description"].startswith(f"{OUTSIDE} (image is 64 x 64 pixels")


def test_the_evaluation_gallery_overlays_say_tta_and_scope(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``evaluate --tta``'s report shows its errors' overlays beside probabilities that are means of test-time
    views: each caption is drawn saying so, and saying that the film (a 64 px thumbnail) is outside the scope. The
    thumbnails keep no caption text, so the words are taken as the overlay draws them."""
    from pneumoscan.evaluation.evaluate import evaluate
    from pneumoscan.inference import explain

    drawn: list[str] = []
    real = explain.caption
    monkeypatch.setattr(explain, "caption", lambda *args, **kwargs: drawn.append(real(*args, **kwargs)) or drawn[-1])
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    save_card(bundle, at_threshold(load_card(bundle), threshold=0.0, tta_threshold=0.0))  # errors to show
    evaluate(bundle, tiny_dataset, "test", tmp_path / "eval", tta=True)
    assert drawn and all(said.startswith(f"{OUTSIDE} (image is 64 x 64 pixels") and said.endswith(WITHOUT_TTA)
                         for said in drawn), drawn


@pytest.fixture
def crop_server(center_crop_bundle: Path) -> Iterator[str]:
    yield from run_server(create_app(center_crop_bundle))


def test_the_page_leaves_the_unread_edges_untinted(browser: Browser, crop_server: str, landscape: Path) -> None:
    """The page colours the bare map itself: it read the cut-off edges' gray 0 as the lowest colour; it leaves the
    film untinted there, tints the square read, and its legend says why the edges are untinted."""
    with new_page(browser) as page:
        page.goto(crop_server)
        page.set_input_files("#file", landscape)
        expect(page.locator("#result")).to_be_visible()
        page.click("#heatmap-button")
        expect(page.locator("#legend")).to_be_visible()
        expect(page.locator("#legend-text")).to_contain_text(
            "The untinted edges of the film were not read by the model.")
        # each point's film gray level and composed colour, at the window/level's default (level 128, width
        # 255: a gray level as it is, less 0.5)
        shown = page.evaluate("""() => {
            const row = Math.floor(view.h / 2) * view.w, px = composedFrame.data;
            return [2, Math.floor(view.w / 2), view.w - 3].map((x) => [view.gray[row + x],
              Array.from(px.slice(4 * (row + x), 4 * (row + x) + 3))]);
        }""")
    left, (_, middle), right = shown
    for gray, rgb in (left, right):  # the film alone
        assert len(set(rgb)) == 1 and abs(rgb[0] - gray) <= 1, (gray, rgb)
    assert len(set(middle)) > 1, middle  # coloured by the map
