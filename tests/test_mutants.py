"""Safety-critical behaviours that a mutation spot-check found no test for: each test here fails when the one
behaviour it names is broken (a comparison flipped, a refusal dropped). None trains or serves a model of its own:
they read the shared tiny bundle and dataset at most."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from pneumoscan.core.metrics import choose_threshold
from pneumoscan.data.layouts import discover, write_manifest
from pneumoscan.data.scope import AGE_OUTSIDE, COLOUR, COLOUR_TOLERANCE, NO_TAGS, describe, in_scope, scope_warnings
from pneumoscan.data.tasks import get_task
from pneumoscan.evaluation.held_out import HeldOutPolicy, check_held_out
from pneumoscan.inference.predict import Predictor
from pneumoscan.serving.guard import Access, Guard
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.distributed import setup_distributed
from pneumoscan.training.train import data_checksum, load_data, preprocessed, split_records


def test_a_ceiling_met_only_by_calling_negative_films_positive_is_refused() -> None:
    """The two highest scores are negative films': a false-positive ceiling of one film in two is kept by a threshold
    above every positive film, which finds no positive case, so it is refused, never returned as an operating point
    (one that called the top negative film positive and every pneumonia film normal)."""
    y = np.array([0, 0, 1, 1])
    p = np.array([0.9, 0.8, 0.3, 0.2])
    with pytest.raises(ValueError, match="no threshold finds any positive case"):
        choose_threshold(y, p, None, max_false_positive_rate=0.5)


def _frontal_chest(**elements: object) -> Dataset:
    """A header that passes every scope check but the ones ``elements`` are about."""
    ds = Dataset()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(("age", "outside"), [("071M", False), ("006Y", True), ("072M", True)])
def test_a_child_on_the_sixth_birthday_is_outside_the_training_ages(age: str, outside: bool) -> None:
    """The training films are of children aged one to five: "5" lasts until the sixth birthday, so a child of six
    (006Y, 072M) gets the age warning, one a month younger none."""
    found = scope_warnings(_frontal_chest(PatientAge=age), 224, 224)
    assert [AGE_OUTSIDE.wrote(w) for w in found] == ([True] if outside else []), found
    assert in_scope(found)  # a child's age outside the range is said, and the film stays a frontal chest film


async def _answer_ok(scope: Scope, receive: Receive, send: Send) -> None:
    """The service behind the guard, reduced to what a refusal is told apart from: a 200."""
    await PlainTextResponse("ok")(scope, receive, send)


@pytest.mark.parametrize(("tint", "colour"), [(COLOUR_TOLERANCE - 4, False), (COLOUR_TOLERANCE + 4, True)])
def test_a_capture_tinted_beyond_the_colour_tolerance_is_out_of_scope(tint: int, colour: bool) -> None:
    """A PNG whose blue channel sits ``tint`` grey levels below the others all over (a tinted screen capture): past
    COLOUR_TOLERANCE it is said to be a colour image, out of scope; within it, grey."""
    grey = np.tile(np.linspace(40, 220, 300), (240, 1)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.dstack([grey, grey, grey - tint])).save(buf, "PNG")
    warnings = describe(buf.getvalue())["warnings"]
    assert warnings[0] == NO_TAGS and [COLOUR.wrote(w) for w in warnings[1:]] == ([True] if colour else []), warnings
    assert in_scope(warnings) is not colour


def test_an_api_key_shorter_than_16_characters_is_refused() -> None:
    """A key of 15 characters is guessed far sooner than the 16 the service asks for at least: refused at start."""
    with pytest.raises(ValueError, match="too short: use at least 16 characters"):
        Access(api_key="k" * 15)
    assert Access(api_key="k" * 16).api_key == "k" * 16


def test_a_subdomain_pattern_admits_subdomains_not_names_that_merely_end_alike() -> None:
    """``*.ward.org`` admits ct.ward.org; evilward.org, another site's name that only ends in the same letters (a page
    there rebinding its DNS to this server), is refused as any host off the list is."""
    client = TestClient(Guard(_answer_ok, Access(allowed_hosts=("*.ward.org",))))  # no lifespan: a bare app
    assert client.get("/v1/model", headers={"host": "ct.ward.org"}).status_code == 200
    for host in ("evilward.org", "evilward.org:443", "ward.org.evil.net"):
        r = client.get("/v1/model", headers={"host": host})
        assert r.status_code == 400 and "host name is not served here" in r.json()["error"], host


def test_a_reading_exactly_at_the_threshold_is_called_positive(tiny_bundle: Path) -> None:
    """The rule the threshold was chosen and measured by is p >= t (binary_metrics): a film scoring the threshold
    itself is called the positive class, as the validation figures counted it, and one a float below it is not;
    with test-time augmentation, at the TTA threshold."""
    predictor = Predictor(tiny_bundle, backend="onnx")
    card = predictor.card
    for tta, threshold in ((False, card.threshold), (True, card.tta_threshold)):
        assert predictor.reading_fields(threshold, tta)["label"] == card.positive
        assert predictor.reading_fields(float(np.nextafter(threshold, 0.0)), tta)["label"] == card.classes[0]


def test_a_reading_is_near_the_threshold_by_the_interval_of_its_own_mode(tiny_bundle: Path) -> None:
    """``near_threshold`` says a reading lies where a threshold chosen on other films like the validation ones would
    fall, ends included: with test-time augmentation by the TTA threshold's interval (its scores are shifted, and so
    is its threshold), never by the plain one."""
    predictor = Predictor(tiny_bundle, backend="onnx")
    plain, tta = predictor.card.threshold_interval, predictor.card.tta_threshold_interval
    assert plain and tta and plain != tta, "the case this test is about: two intervals that differ"
    probes = [v for lo, hi in (plain, tta)
              for v in (lo, hi, (lo + hi) / 2, np.nextafter(lo, 0.0), np.nextafter(hi, 1.0))]
    for mode, (lo, hi) in ((False, plain), (True, tta)):
        for p in map(float, probes):
            assert predictor.reading_fields(p, mode)["near_threshold"] is (lo <= p <= hi), (mode, p, lo, hi)


def test_a_cards_record_of_other_data_refuses_the_films_that_chose_its_threshold(tiny_bundle: Path) -> None:
    """`evaluate --add-to-card` records figures as the bundle's on other data (HeldOutPolicy refuse_validation): its
    run's validation films, on which its temperature and threshold were chosen, are refused, not only warned of."""
    validation = [r for r in discover(tiny_bundle.parent / "split.csv").records if r.split == "val"]
    assert validation
    with pytest.raises(ValueError, match=f"of the films given to .* are {re.escape(str(tiny_bundle))}'s validation"):
        check_held_out([tiny_bundle], validation, "record an evaluation in the card",
                       policy=HeldOutPolicy(validation_warning=True, refuse_validation=True))


def test_the_training_loss_weighs_each_class_by_its_inverse_frequency(tiny_dataset: Path, tmp_path: Path) -> None:
    """Pneumonia films outnumber normal ones (3:1 in the public train split): the loss weighs each class by n / (2 x
    its films in train), so the rarer class is not learnt as noise; validation's own mix plays no part in it."""
    films = discover(tiny_dataset / "train").records
    normal, sick = ([r for r in films if r.label == label] for label in ("NORMAL", "PNEUMONIA"))
    sides = {"train": normal[:6] + sick[:18], "val": normal[6:14] + sick[18:20]}  # train 1:3, validation 4:1
    write_manifest([dataclasses.replace(r, split=side) for side, part in sides.items() for r in part],
                   tmp_path / "split.csv")
    cfg = TrainConfig(task="pneumonia", model="simple_cnn", pretrained=False, image_size=32, batch_size=4,
                      split_csv=str(tmp_path / "split.csv"))
    (tmp_path / "run").mkdir()
    records, ctx = split_records(cfg.split_csv, cfg), setup_distributed()
    cache = preprocessed(records, cfg, ctx)
    data = load_data(records, cache, data_checksum(cache, records), cfg, get_task(cfg.task), ctx, tmp_path / "run")
    assert data.class_weights is not None
    np.testing.assert_allclose(data.class_weights.cpu().numpy(), [24 / (2 * 6), 24 / (2 * 18)], rtol=1e-6)
