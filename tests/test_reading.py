"""One reading, two routes: ``pneumoscan predict`` (predict_paths) and the web service read a film by the same rules
(:class:`pneumoscan.inference.predict.Stages`), so the same films get the same rows and answers: each stage's
reading, the hand-off to the second stage (on the first stage's decode, or on a decode of its own), the warnings in
their order (the header's, the pixels', then that of a second stage run alone), ``in_scope`` and the model's
identity."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pneumoscan.data.appearance import MIN_FILMS, Appearance
from pneumoscan.data.decode import read_gray
from pneumoscan.data.scope import IDENTIFIERS, kind_of
from pneumoscan.inference.predict import Predictor, predict_paths, stage_fields
from pneumoscan.models.card import load_card, save_appearance, save_card
from pneumoscan.serving.app import create_app
from tests.builders import SCORE_TOL, at_threshold, dicom_bytes

CHEST = {"BodyPartExamined": "CHEST", "ViewPosition": "PA", "PatientAge": "004Y", "StudyInstanceUID": "1.2.3.4",
         "SeriesInstanceUID": "1.2.3.4.5"}
OUTSIDE = {**CHEST, "Modality": "CT", "ViewPosition": "LL", "PatientAge": "035Y"}  # out of scope by its header


def _between(scores: list[float]) -> float:
    """The middle of the widest gap between the scores: a threshold no film lies near, so that two routes' scores,
    equal within SCORE_TOL, are called alike, and films fall on both sides of it."""
    ranked = sorted(scores)
    return max((b - a, (a + b) / 2) for a, b in zip(ranked, ranked[1:]))[1]


@pytest.fixture(scope="module")
def films(data_root: Path, tiny_dataset: Path, module_tmp: Callable[[str], Path]) -> list[Path]:
    """Small JPEGs (no DICOM tags, small), a full-size JPEG (a second stage trained at another size decodes it
    again), an in-scope DICOM, an out-of-scope one, and a DICOM of noise whose header is no chest film's either."""
    folder = module_tmp("films")
    for path in [*sorted((tiny_dataset / "test" / "NORMAL").iterdir())[:2],
                 *sorted((tiny_dataset / "test" / "PNEUMONIA").iterdir())[:2]]:
        shutil.copy(path, folder / path.name)
    full = sorted((data_root / "val" / "PNEUMONIA").glob("*.jpeg"))[0]
    shutil.copy(full, folder / "full.jpeg")
    pixels = read_gray(full).astype(np.uint16) * 16
    (folder / "chest.dcm").write_bytes(dicom_bytes(pixels, **CHEST))
    (folder / "outside.dcm").write_bytes(dicom_bytes(pixels, **OUTSIDE))
    noise = np.random.default_rng(0).integers(0, 4096, (300, 300)).astype(np.uint16)
    (folder / "noise.dcm").write_bytes(dicom_bytes(noise, **{**OUTSIDE, "StudyInstanceUID": "1.2.3.9"}))
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def stages(tiny_bundle: Path, tiny_etiology_bundle: Path, data_root: Path, films: list[Path],
           module_tmp: Callable[[str], Path]) -> dict[str, Path]:
    """Copies of the tiny bundles that record the appearance of real films (so films unlike them get the pixels'
    warnings), at thresholds no film lies near (so both calls occur); ``every_film`` hands every film over, and
    ``second_700`` decodes a film at a size of its own (the full-size film is decoded again for it)."""
    folder = module_tmp("stages")
    real = [p for kind in ("NORMAL", "PNEUMONIA") for p in sorted((data_root / "train" / kind).glob("*.jpeg"))[:50]]
    assert len(real) == MIN_FILMS
    out, fitted = {}, {}
    for name, source in (("first", tiny_bundle), ("second", tiny_etiology_bundle)):
        bundle = shutil.copytree(source, folder / name)
        spec = load_card(bundle).spec
        if spec not in fitted:  # the two tiny bundles read films alike: one fit serves both
            fitted[spec] = Appearance.fit(np.stack([spec.apply(read_gray(p, target=spec.decode_target)) for p in real]))
        save_appearance(bundle, fitted[spec])
        scores = [row["probability"] for row in predict_paths(bundle, films)]
        save_card(bundle, at_threshold(load_card(bundle), threshold=_between(scores)))
        out[name] = bundle
    out["every_film"] = shutil.copytree(out["first"], folder / "every_film")
    save_card(out["every_film"], at_threshold(load_card(out["every_film"]), threshold=0.0))
    out["second_700"] = shutil.copytree(out["second"], folder / "second_700")
    save_card(out["second_700"], dataclasses.replace(load_card(out["second_700"]), source_size=700))
    return out


def _answers(bundle: Path, etiology: Path | None, films: list[Path]) -> list[dict]:
    """The service's answers for the films, one upload each."""
    kinds = {".dcm": "application/dicom", ".jpeg": "image/jpeg"}
    with TestClient(create_app(bundle, etiology=etiology)) as client:
        replies = [client.post("/v1/predict", files={"file": (film.name, film.read_bytes(), kinds[film.suffix])})
                   for film in films]
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    return [r.json() for r in replies]


def _assert_agree(row: dict, answer: dict) -> None:
    """A row of predict and the service's answer for the same film: the same first reading, warnings, in_scope, model
    and UIDs (the scores within SCORE_TOL: the two batch films differently)."""
    assert "error" not in row, row
    same = ("label", "threshold", "near_threshold", "warnings", "in_scope", "model_id", "model_version", *IDENTIFIERS)
    assert {k: row.get(k) for k in same} == {k: answer[k] for k in same}, row["path"]
    assert answer["probability"] == pytest.approx(row["probability"], abs=SCORE_TOL)


def _header_then_pixels(warnings: list[str]) -> list[str]:
    """The sources of a reading's scope warnings, each checked to come before the next source's."""
    sources = [kind_of(w).source for w in warnings]
    assert sources == sorted(sources, key=["header", "pixels"].index), warnings
    return sources


@pytest.mark.parametrize("first, second", [("first", "second"), ("every_film", "second_700")])
def test_predict_and_the_service_give_the_same_two_stage_reading(films: list[Path], stages: dict[str, Path],
                                                                 first: str, second: str) -> None:
    """With a second stage that reads the first stage's decode, and with one that decodes the film again at a size
    of its own: the same readings, hand-offs, warnings and in_scope."""
    if second == "second_700":  # the full-size film reaches it at another size than the first stage's
        full = next(film for film in films if film.name == "full.jpeg")
        sizes = {read_gray(full, target=Predictor(stages[b]).card.spec.decode_target).shape for b in (first, second)}
        assert len(sizes) == 2, sizes
    first, then = stages[first], stages[second]
    rows, answers = predict_paths(first, films, etiology=then), _answers(first, then, films)
    fields = stage_fields(Predictor(then).task)  # the second stage's columns in predict's rows
    for row, answer in zip(rows, answers, strict=True):
        _assert_agree(row, answer)
        _header_then_pixels(row["warnings"])
        stage = answer["etiology"]
        if row[fields["label"]] is None:  # not handed over
            assert stage is None and row["label"] != "PNEUMONIA", row
            continue
        assert row["label"] == "PNEUMONIA" and stage["task"] == "etiology"
        assert (stage["label"], stage["near_threshold"]) == (row[fields["label"]], row[fields["near_threshold"]])
        assert stage["probability"] == pytest.approx(row[fields["probability"]], abs=SCORE_TOL)
        # the threshold it was read at and its model, as the service's answer gives them (predict's rows had neither)
        assert (row[fields["threshold"]], row[fields["model_id"]], row[fields["model_version"]]) == (
            stage["threshold"], stage["model_id"], stage["model_version"])
    handed = [row[fields["label"]] is not None for row in rows]
    assert all(handed) if first == stages["every_film"] else any(handed) and not all(handed)
    by_name = {Path(row["path"]).name: row for row in rows}
    assert by_name["chest.dcm"]["in_scope"] and not by_name["outside.dcm"]["in_scope"]
    assert by_name["outside.dcm"]["study_instance_uid"] == "1.2.3.4"
    assert {"header", "pixels"} <= set(_header_then_pixels(by_name["noise.dcm"]["warnings"]))


def test_a_second_stage_alone_gives_the_same_reading_and_warns_last(films: list[Path], stages: dict[str, Path]) -> None:
    """Served alone, a second stage's warning that it assumes the film shows pneumonia comes after the film's own
    warnings, in predict's rows and the service's answers alike."""
    rows, answers = predict_paths(stages["second"], films), _answers(stages["second"], None, films)
    for row, answer in zip(rows, answers, strict=True):
        _assert_agree(row, answer)
        *own, alone = row["warnings"]
        assert alone.startswith("this etiology model assumes the film shows pneumonia")
        _header_then_pixels(own)
    noise = next(row for row in rows if row["path"].endswith("noise.dcm"))
    assert {"header", "pixels"} <= set(_header_then_pixels(noise["warnings"][:-1]))


def test_a_second_stage_checks_a_film_by_its_own_training_films_in_predict_and_the_service(
    films: list[Path], stages: dict[str, Path], tiny_etiology_bundle: Path, tmp_path: Path
) -> None:
    """Only the first stage's content check ran: a second stage trained on films unlike a film (here a record of
    inverted films: the real films' layout turned negative) read the in-scope chest DICOM as plainly as any. Its own
    check flags the film in its reading, in predict's rows and the service's answers alike, where the first stage's
    reading stays in scope; a second stage that records no appearance says its check was not run, in each reading
    and once at the start."""
    from pneumoscan.inference.predict import Stages
    from tests.builders import UNCHECKED

    inverted = shutil.copytree(stages["second"], tmp_path / "inverted")
    appearance = Predictor(inverted).appearance
    save_appearance(inverted, dataclasses.replace(appearance, mean=-appearance.mean))
    fields = stage_fields(Predictor(inverted).task)
    rows, answers = predict_paths(stages["every_film"], films, etiology=inverted), _answers(stages["every_film"],
                                                                                           inverted, films)
    for row, answer in zip(rows, answers, strict=True):
        _assert_agree(row, answer)
        assert (row[fields["warnings"]], row[fields["in_scope"]]) == (answer["etiology"]["warnings"],
                                                                      answer["etiology"]["in_scope"])
    chest = next(row for row in rows if row["path"].endswith("chest.dcm"))
    assert chest["in_scope"] and not chest[fields["in_scope"]]
    assert any(kind_of(w).out_of_scope and kind_of(w).source == "pixels" for w in chest[fields["warnings"]])

    unchecked = predict_paths(stages["every_film"], films, etiology=tiny_etiology_bundle)
    assert all(row[fields["warnings"]] == [UNCHECKED] for row in unchecked)
    said = Stages.load(stages["every_film"], tiny_etiology_bundle).said_at_start()
    assert any(line.startswith(f"{tiny_etiology_bundle} records no appearance") for line in said), said
