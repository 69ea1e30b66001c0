"""Safety-critical behaviours that a mutation spot-check found no test for: each test here fails when the one
behaviour it names is broken (a comparison flipped, a refusal dropped). None trains or serves a model of its own:
they read the shared tiny bundle and dataset, or one real training film, at most."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from pneumoscan.core.metrics import choose_threshold
from pneumoscan.data.decode import read_gray
from pneumoscan.data.layouts import discover, write_manifest
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.scope import (AGE_FROM_DATES, AGE_MALFORMED, AGE_NOT_KNOWN, AGE_OUTSIDE, AGE_RANGE_YEARS,
                                   BIRTH_DATE_MALFORMED, BORN_AFTER, COLOUR, COLOUR_TOLERANCE, NO_TAGS, NOT_AN_AGE,
                                   describe, in_scope, scope_warnings)
from pneumoscan.data.tasks import get_task
from pneumoscan.evaluation.compare import RunSummary, _check_comparable
from pneumoscan.evaluation.evaluate import evaluate, films_digest
from pneumoscan.evaluation.held_out import HeldOutFindings, HeldOutPolicy, check_held_out
from pneumoscan.evaluation.model_card import evaluation_record
from pneumoscan.evaluation.operating_point import choose_operating_point, warn_if_too_few_films
from pneumoscan.inference.export import ONNX_NAME
from pneumoscan.inference.onnx_runtime import check_matches_card, read_sidecar
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import load_card
from pneumoscan.serving.app import ACCESS_LOGGER, CLIENT_GONE, _log_access
from pneumoscan.serving.guard import Access, Guard
from pneumoscan.serving.limits import Rejected
from pneumoscan.serving.uploads import _check_type
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.distributed import setup_distributed
from pneumoscan.data.cache import data_checksum
from pneumoscan.training.train import load_data, preprocessed, selected_films, split_records
from tests.builders import dicom_bytes
from tests.test_dicom_faults import phantom


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
    """``near_threshold`` says a reading lies within the 95 % confidence interval of the threshold, ends included:
    with test-time augmentation by the TTA threshold's interval (its scores are shifted, and so
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
    records, ctx = split_records(cfg.split_csv, cfg)[0], setup_distributed()
    cache = preprocessed(records, cfg, ctx)
    task = get_task(cfg.task)
    data = load_data(records, cache, data_checksum(cache, records), cfg, task, ctx, tmp_path / "run",
                     selected_films(records, cache, task, ctx))
    assert data.class_weights is not None
    np.testing.assert_allclose(data.class_weights.cpu().numpy(), [24 / (2 * 6), 24 / (2 * 18)], rtol=1e-6)


@pytest.mark.parametrize(("positives", "warned"), [(9, True), (10, False)])
def test_a_sensitivity_of_0_9_is_shown_on_ten_positive_films(positives: int, warned: bool) -> None:
    """1 / (1 - 0.9) is 10.000000000000002 in floats: ten positive films can show a sensitivity of 0.9 (one miss is
    0.9 itself), so its threshold is no guess; nine cannot."""
    y = np.r_[np.ones(positives, int), np.zeros(30, int)]
    caveat = warn_if_too_few_films(y, 0.9, None)
    assert (caveat == f"only {positives} positive films: a sensitivity of 0.90 cannot be shown on fewer than 10, so "
                      "this threshold is a guess; choose it on more labelled films") if warned else caveat == ""


def test_a_policy_the_scores_cannot_meet_is_refused_with_its_own_reason_alone(caplog: pytest.LogCaptureFixture) -> None:
    """A ceiling of one false alarm in four on two negative films that outscore every positive one: refused because
    no threshold finds a positive case, and the log says that alone, not first that a threshold (never chosen) is a
    guess."""
    y, p = np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.3, 0.2])
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="no threshold finds any positive case"):
        choose_operating_point(y, p, p, None, 0.25)
    assert "is a guess" not in caplog.text, caplog.text


def _summary(run: str, data: str, films: str | None) -> RunSummary:
    """A run's row as compare reads it, reduced to what the films check looks at."""
    return RunSummary(run=run, model="simple_cnn", task="pneumonia", data=data, n=16, patients=None, ci_unit="film",
                      figures={}, cis={}, threshold=0.5, policy=None, minutes=None, roc={"fpr": [], "tpr": []},
                      optimistic=[], question=("NORMAL", "PNEUMONIA"), three_class=[], films=films)


def test_an_evaluation_that_recorded_no_films_still_compares_with_one_that_did() -> None:
    """metrics.json from before evaluate recorded its films has no digest: nothing says its films differ, so it
    compares with a run on data of its name (as the other checks pass over what an older file lacks); two digests
    that differ are refused."""
    _check_comparable([_summary("old", "manifest.csv", None), _summary("new", "manifest.csv", "sha256:ab")])
    with pytest.raises(ValueError, match="name their films alike"):
        _check_comparable([_summary("a", "manifest.csv", "sha256:ab"), _summary("b", "manifest.csv", "sha256:cd")])


def test_the_films_digest_follows_the_films_not_their_order_or_the_path_given(tiny_dataset: Path,
                                                                            tmp_path: Path) -> None:
    """Two manifests that list the same films in another order, or a data folder given through a link to it, name
    the same films: compare must not refuse their runs as measured on other films."""
    films = discover(tiny_dataset).split("test")
    assert films_digest(films[::-1]) == films_digest(films)
    link = tmp_path / "data"
    link.symlink_to(tiny_dataset, target_is_directory=True)
    through = discover(link).split("test")
    assert through[0].path.startswith(str(link))  # the case this test is about: paths through the link
    assert films_digest(through) == films_digest(films)


def test_the_report_counts_the_films_outside_the_models_scope(tiny_bundle: Path, tiny_dataset: Path,
                                                              tmp_path: Path) -> None:
    """The report's table of what was measured gives how many films are outside the model's scope (the tiny films
    are 64 px thumbnails: all 16), beside the films that could not be read (none)."""
    metrics = evaluate(tiny_bundle, tiny_dataset, split="test", out_dir=tmp_path / "e")
    assert (len(metrics["out_of_scope"]), len(metrics["unreadable"])) == (16, 0)
    assert metrics["films"] == films_digest(discover(tiny_dataset).split("test"))  # every film scored
    html = (tmp_path / "e" / "report.html").read_text()
    assert re.search(r"<th>outside the model(?:'|&#x27;|&#39;)s scope</th><td>16</td>", html), html[:2000]


def test_a_cards_record_counts_its_films_outside_the_scope_among_those_it_scored() -> None:
    """16 films scored, 1 unreadable left out, 3 of the 16 outside the model's scope: the unreadable film is one of
    the 17 given, the films outside the scope are of the 16 the figures are on (not of 17)."""
    metrics = {"n": 16, "n_positive": 8, "n_negative": 8, "patients": 16, "prevalence": 0.5, "threshold": 0.5,
               "label_conflicts": [], "unreadable": [{"path": "x.jpeg", "reason": "not a film"}],
               "left_out": [{"films": 1, "reason": "could not be read"}],
               "out_of_scope": [{"path": f"{i}.dcm", "reasons": ["lateral view (LL)"]} for i in range(3)]}
    record = evaluation_record(metrics, "site", "plain", "bundle", HeldOutFindings([], {}, 0))
    assert (record["unreadable"], record["outside_scope"]) == (1, 3)
    assert record["caveats"] == [
        "1 of the 17 films given is left out of the figures, which are of the other 16 only: 1 film could not be read",
        "3 of the 16 films are outside the model's scope (evaluate's predictions.csv says why) and are scored and "
        "counted in the figures all the same"]


@pytest.mark.parametrize(("age", "outside"), [("006M", False), ("005M", True), ("183D", False), ("182D", True),
                                              ("027W", False), ("026W", True)])
def test_an_infant_of_six_months_is_inside_the_training_ages_one_younger_outside(age: str, outside: bool) -> None:
    """Six months of margin below the training population's one year, its end included: 6 months, 183 days or 27
    weeks is inside; 5 months, 182 days (0.498 years) or 26 weeks outside. Days and weeks are read as such."""
    found = scope_warnings(_frontal_chest(PatientAge=age), 224, 224)
    assert [AGE_OUTSIDE.wrote(w) for w in found] == ([True] if outside else []), found


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # the values are malformed on purpose
@pytest.mark.parametrize(("age", "why"), [("004YY", NOT_AN_AGE), (["003Y", "004Y"], "more than one value")])
@pytest.mark.parametrize("born", [None, "20200101"])
def test_a_malformed_age_is_said_to_be_so_and_the_age_then_taken_from_the_dates(age: object, why: str,
                                                                                born: str | None) -> None:
    """PatientAge is four characters and one value: "004YY", or two ages in a header built in memory, is no age of
    4 years. Said so, with what follows: without a birth date the age is not known; with one (a child of four) it is
    taken from the dates, and nothing more is said."""
    dates = {"PatientBirthDate": born, "StudyDate": "20240101"} if born else {}
    found = scope_warnings(_frontal_chest(PatientAge=age, **dates), 224, 224)
    assert found == [AGE_MALFORMED.text(why=why, then=AGE_FROM_DATES if born else AGE_NOT_KNOWN)], found


@pytest.mark.parametrize(("born", "malformed"), [("20240101", False), ("20240102", True)])
def test_a_child_born_on_the_day_of_the_film_is_a_newborn_not_a_malformed_birth_date(born: str,
                                                                                    malformed: bool) -> None:
    """A film taken on the day of birth is a newborn's (0 years: outside the training ages); a birth date after the
    film is the one that cannot be."""
    found = scope_warnings(_frontal_chest(PatientBirthDate=born, StudyDate="20240101"), 224, 224)
    assert found == ([BIRTH_DATE_MALFORMED.text(why=BORN_AFTER, then=AGE_NOT_KNOWN)] if malformed else
                     [AGE_OUTSIDE.text(age=0.0, low=AGE_RANGE_YEARS[0], high=AGE_RANGE_YEARS[1])]), found


@pytest.mark.parametrize("taken", ["SeriesDate", "AcquisitionDate", "ContentDate"])
def test_the_age_is_reckoned_from_another_date_of_the_film_without_a_study_date(taken: str) -> None:
    """Without StudyDate, a birth date is read against the series, acquisition or content date: a child of four
    by any of them is inside the training ages, not of an unknown age."""
    assert scope_warnings(_frontal_chest(PatientBirthDate="20200101", **{taken: "20240101"}), 224, 224) == []


def test_a_mostly_bright_jpeg_2000_film_whose_header_gives_the_wrong_sign_is_refused(data_root: Path) -> None:
    """A 12-bit signed frame whose values lie mostly in the upper half of its positive range (above 1024), its
    header saying unsigned: read as the header says, its few negative values wrap round to the top. The frame's own
    reading puts the sign bit at the frame's precision (12 bits: 2048), the smoother picture, so it is refused."""
    real = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]
    film = np.asarray(Image.open(real).convert("L")).astype(np.int64) * 8 - 64
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film, PixelRepresentation=1)))
    ds.compress(uid.JPEG2000Lossless)
    ds.PixelRepresentation = 0
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DecodeError, match="^the JPEG 2000 frame's samples are signed, but Pixel Representation 0"):
        read_gray(buf.getvalue())


def _with_voi_lut(film: np.ndarray, vr: str, first: int, **elements: object) -> bytes:
    """``film`` with a VOI LUT of 4,096 16-bit entries (a square-root curve) from ``first``, its descriptor written
    with ``vr``."""
    item = pydicom.Dataset()
    item.add_new(Tag("LUTDescriptor"), vr, [4096, first, 16])
    item.add_new(Tag("LUTData"), "US", (np.sqrt(np.arange(4096) / 4095) * 65535).astype(int).tolist())
    return dicom_bytes(film, bits=16, VOILUTSequence=pydicom.Sequence([item]), **elements)


def test_a_lut_from_the_lowest_signed_value_written_us_is_read_signed() -> None:
    """-32768, the lowest 16-bit signed value, written US under signed pixels reads 32768: the first value mapped
    is signed (PS3.3 C.11.2.1.1), so the film reads as with the descriptor written SS."""
    film = phantom(lo=0, hi=4000) - 32768
    want = read_gray(_with_voi_lut(film, "SS", -32768, PixelRepresentation=1))
    assert np.abs(want - 255 * np.sqrt((film + 32768) / 4000)).max() <= 1
    np.testing.assert_array_equal(read_gray(_with_voi_lut(film, "US", 32768, PixelRepresentation=1)), want)


def test_a_lut_past_32767_under_unsigned_pixels_is_read_unsigned() -> None:
    """Under unsigned pixels the first value a LUT maps is unsigned: a LUT from 40000 maps films of 40000 and up, as
    its curve says, never read as one from -25536."""
    film = phantom(lo=0, hi=4000) + 40000
    shown = read_gray(_with_voi_lut(film, "US", 40000, PixelRepresentation=0))
    assert np.abs(shown - 255 * np.sqrt((film - 40000) / 4000)).max() <= 1


def _other(value: object) -> object:
    """A value unlike ``value`` of its kind."""
    if isinstance(value, list):
        return [*value[::-1], "x"]
    if isinstance(value, str):
        return value + "-other"
    return 1 if value is None else value + 1


def test_a_sidecar_that_differs_from_the_card_in_any_described_field_is_refused(tiny_bundle: Path) -> None:
    """The ONNX backends score with the card's preprocessing, classes and thresholds on the sidecar's graph: a
    sidecar that records any of them otherwise is another model's, refused naming the field; its own card's pass."""
    card = load_card(tiny_bundle)
    path = tiny_bundle / ONNX_NAME
    sidecar = read_sidecar(path)
    check_matches_card(path, sidecar, card, "export again")
    keys = ("model", "task", "classes", "positive", "size", "resize_policy", "source_size", "source_quality",
            "decode_target", "mean", "std", "temperature", "threshold", "tta_threshold")
    assert set(keys) <= sidecar.keys(), set(keys) - sidecar.keys()
    for key in keys:
        with pytest.raises(ValueError, match=f"describes another model than bundle.json: its {key} "):
            check_matches_card(path, {**sidecar, key: _other(sidecar[key])}, card, "export again")


def test_an_upload_without_a_content_type_is_judged_by_its_bytes(tiny_dataset: Path) -> None:
    """A file part sent with no Content-Type (some clients send none) is read as generic binary is: a film by its
    magic bytes passes, anything else is refused (415)."""
    _check_type("", next((tiny_dataset / "test" / "NORMAL").glob("*.jpeg")).read_bytes(), dicom=False)
    with pytest.raises(Rejected) as refused:
        _check_type("", b"not a film at all", dicom=False)
    assert refused.value.status == 415


def test_the_access_line_of_a_request_whose_client_went_away_names_its_query(caplog: pytest.LogCaptureFixture) -> None:
    """The 499 line is written as uvicorn writes its own: client, method, path with its query, HTTP version."""
    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "raw_path": b"/v1/predict",
             "query_string": b"tta=true", "http_version": "1.1", "client": ("127.0.0.1", 5000), "headers": []}
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        _log_access(scope, CLIENT_GONE)
    assert [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER] == [
        '127.0.0.1:5000 - "POST /v1/predict?tta=true HTTP/1.1" 499']
