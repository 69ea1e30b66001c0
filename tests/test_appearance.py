"""Films unlike the training films are flagged from their pixels: random noise tagged as a chest DICOM, a scanned
form, a turned, inverted or blurred film had read "pneumonia" at 0.94-0.997 with no warning, and a DICOM SR
"Pneumonia: Present" was filed for the noise."""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFilter
from pydicom.uid import generate_uid

from pneumoscan.cli import main
from pneumoscan.data.appearance import MIN_FILMS, Appearance
from pneumoscan.data.decode import read_gray
from pneumoscan.data.layouts import make_record, write_manifest
from pneumoscan.data.preprocess import PreprocessSpec
from pneumoscan.data.scope import CLIPPED_BLACK, CLIPPED_WHITE, CONTENT, CONTENT_UNCHECKED, in_scope, kind_of
from pneumoscan.inference.predict import Predictor, predict_paths
from pneumoscan.models.card import APPEARANCE, load_card, save_appearance
from pneumoscan.serving.app import create_app
from tests.builders import dicom_bytes, with_appearance_of

CHEST_TAGS = {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "AP", "PatientAge": "003Y"}


def _films(data_root: Path, label: str, start: int, n: int) -> list[Path]:
    return sorted((data_root / "train" / label).glob("*.jpeg"))[start : start + n]


def _read(paths: list[Path], size: int) -> np.ndarray:
    spec = PreprocessSpec(size)
    return np.stack([spec.apply(read_gray(p, target=spec.decode_target)) for p in paths])


def _odd_images(film: np.ndarray) -> dict[str, np.ndarray]:
    """A real film turned, upside down, inverted and blurred; noise; a page of typed lines."""
    rng = np.random.default_rng(0)
    page = Image.new("L", film.shape[::-1], 235)
    draw = ImageDraw.Draw(page)
    for y in range(4, film.shape[0] - 4, 5):
        draw.line((4, y, int(rng.integers(film.shape[1] // 2, film.shape[1] - 4)), y), fill=40)
    return {
        "turned": np.rot90(film).copy(),
        "upside down": np.flipud(film).copy(),
        "inverted": 255 - film,
        "blurred": np.asarray(Image.fromarray(film).filter(ImageFilter.GaussianBlur(4))),
        "noise": rng.integers(0, 256, film.shape, dtype=np.uint8),
        "flat": np.round(film * 0.1 + 200).astype(np.uint8),  # a window fault: washed out, every shape kept
        # a window that clips: the contrast tripled about the mean, the bright half white
        "clipped": np.clip((film.astype(float) - film.mean()) * 3 + 128, 0, 255).astype(np.uint8),
        # a window raised from below: the darkest 40 % of the film black, the lungs first
        "clipped black": np.clip((film - np.percentile(film, 40)) * 2, 0, 255).astype(np.uint8),
        "form": np.asarray(page),
    }


def test_films_unlike_the_training_films_are_flagged_and_like_ones_are_not(data_root: Path) -> None:
    train = [p for label in ("NORMAL", "PNEUMONIA") for p in _films(data_root, label, 0, 150)]
    others = [p for label in ("NORMAL", "PNEUMONIA") for p in _films(data_root, label, 150, 50)]
    appearance = Appearance.fit(_read(train, 64))
    unlike = appearance.warnings(_read(others, 64))
    assert sum(map(bool, unlike)) <= 3, [w for w in unlike if w]  # about 1 in 1000 at the limit; 100 films here
    odd = _odd_images(_read(others[:1], 64)[0])
    flagged = dict(zip(odd, appearance.warnings(np.stack(list(odd.values())))))
    assert all(flagged.values()), flagged
    assert all(kind_of(w).source == "pixels" for reasons in flagged.values() for w in reasons)
    assert not any(map(in_scope, flagged.values()))
    assert any("blurrier" in w for w in flagged["blurred"]) and any("noise" in w for w in flagged["noise"])
    assert any("layout of light and dark" in w for w in flagged["turned"] + flagged["inverted"])
    assert any("upside down" in w for w in flagged["upside down"])  # its 6 x 6 layout alone passed 4 in 5 such
    assert any("much less contrast" in w for w in flagged["flat"])  # a normal film so had read pneumonia at 0.996
    # its spread and layout looked fine: a normal film so read pneumonia at 0.95-0.99, in scope
    assert [w for w in flagged["clipped"] if "white" in w] == [CLIPPED_WHITE.text(
        share=100 * np.mean(odd["clipped"] >= 253), width=64, height=64, most=100 * appearance.white)]
    # black borders are common, so only the middle counts: there the blacked-out lungs passed every check
    assert [w for w in flagged["clipped black"] if "black" in w] == [CLIPPED_BLACK.text(
        share=100 * np.mean(odd["clipped black"][16:48, 16:48] <= 2), width=64, height=64, most=100 * appearance.black)]
    # written and read back as the bundle keeps it
    again = Appearance.from_arrays(appearance.to_arrays())
    assert again.warnings(np.stack(list(odd.values()))) == list(flagged.values())


def test_too_few_films_or_a_foreign_record_are_refused(data_root: Path) -> None:
    with pytest.raises(ValueError, match=f"fewer than {MIN_FILMS}"):
        Appearance.fit(_read(_films(data_root, "NORMAL", 0, 20), 32))
    with pytest.raises(ValueError, match="not an appearance record"):
        Appearance.from_arrays({"mean": np.zeros(4), "precision": np.eye(4), "limits": np.zeros(3)})
    # right shapes, values no fit gives: they would flag every film, or none
    # (every film's layout lies 6 * 2 = 12 from this mean under this precision: a limit of 12 or more flags none)
    good = {"mean": np.zeros(36), "precision": 4 * np.eye(36), "limits": np.array([10.0, -3.0, -1.0, 60.0])}
    assert Appearance.from_arrays(good).layout_limit == 10.0
    assert Appearance.from_arrays(good).white is None  # a record made before the white check: left out, not refused
    before_black = Appearance.from_arrays(good | {"limits": np.array([10.0, -3.0, -1.0, 60.0, 0.12])})
    assert (before_black.white, before_black.black) == (0.12, None)  # a record made before the black check
    now = Appearance.from_arrays(good | {"limits": np.array([10.0, -3.0, -1.0, 60.0, 0.12, 0.05])})
    assert (now.white, now.black) == (0.12, 0.05)
    assert now.to_arrays()["limits"].tolist() == [10.0, -3.0, -1.0, 60.0, 0.12, 0.05]
    for name, value in (("precision", -np.eye(36)), ("limits", np.array([10.0, -1.0, -3.0, 60.0])),
                        ("limits", np.array([-1.0, -3.0, -1.0, 60.0])),
                        ("limits", np.array([12.5, -3.0, -1.0, 60.0])),
                        ("limits", np.array([10.0, -3.0, -1.0, 60.0, 0.0])),
                        ("limits", np.array([10.0, -3.0, -1.0, 60.0, 0.12, 0.0]))):
        with pytest.raises(ValueError, match="positive definite|out of order|is outside"):
            Appearance.from_arrays(good | {name: value})


def test_a_low_contrast_warning_says_where_the_contrast_was_measured() -> None:
    """Uniform noise spans grey levels 2 to 253 between its 1st and 99th percentiles as stored, and about 20 once
    averaged to a 32 px model's input: its warning had read as if the film itself were washed out. It is still
    flagged, out of scope."""
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[0:32, 0:32] / 32
    films = np.clip(30 + 190 * rows + 30 * columns + rng.normal(0, 6, (MIN_FILMS, 32, 32)), 0, 255)
    appearance = Appearance.fit(films.astype(np.uint8))
    noise = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8)).save(noise, "PNG")
    spec = PreprocessSpec(32)
    (warnings,) = appearance.warnings(spec.apply(read_gray(noise.getvalue(), target=spec.decode_target))[None])
    assert any(w.startswith(CONTENT + "much less contrast than the training films (")
               and "percentiles at the model's input (32 x 32 px), the least allowed" in w for w in warnings), warnings
    assert not in_scope(warnings)


@pytest.fixture(scope="module")
def real_runs(data_root: Path, module_tmp: Callable[[str], Path]) -> tuple[Path, Path, Path]:
    """Two bundles trained on the same 160 real films (32 and 64 px), and a manifest of 40 films neither saw."""
    from pneumoscan.training.config import TrainConfig
    from pneumoscan.training.train import train

    root = module_tmp("real") / "chest_xray"
    for label in ("NORMAL", "PNEUMONIA"):
        (root / "train" / label).mkdir(parents=True)
        for film in _films(data_root, label, 0, 80):
            (root / "train" / label / film.name).symlink_to(film)
    held_out = root.parent / "held_out.csv"
    write_manifest([make_record(p, label) for label in ("NORMAL", "PNEUMONIA")
                    for p in _films(data_root, label, 80, 20)], held_out)
    bundles = [train(root, TrainConfig(model="simple_cnn", pretrained=False, image_size=size, epochs=1, batch_size=16,
                                       val_fraction=0.2, seed=seed), root.parent / f"run-{size}")
               for size, seed in ((32, 0), (64, 1))]
    return bundles[0], bundles[1], held_out


def test_a_bundle_records_its_films_and_the_service_files_no_finding_for_noise(real_runs: tuple[Path, Path, Path],
                                                                                  tmp_path: Path) -> None:
    bundle = real_runs[0]
    assert APPEARANCE in load_card(bundle).files
    noise = np.random.default_rng(1).integers(0, 4096, (512, 512)).astype(np.uint16)
    upload = dicom_bytes(noise, StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), **CHEST_TAGS)
    client = TestClient(create_app(bundle))
    assert client.get("/v1/model").json()["content_checked"] is True
    body = client.post("/v1/predict", files={"file": ("noise.dcm", upload, "application/dicom")}).json()
    assert any(w.startswith(CONTENT) for w in body["warnings"]) and body["in_scope"] is False
    r = client.post("/v1/predict?format=dicom-sr", files={"file": ("noise.dcm", upload, "application/dicom")})
    assert r.status_code == 422 and "the film does not look like the films the model was trained on (image content:" \
        in r.json()["error"], r.text
    # predict's rows carry the same warning beside the header's checks
    path = tmp_path / "noise.png"
    Image.fromarray((noise >> 4).astype(np.uint8)).save(path)
    [row] = predict_paths(bundle, [path])
    assert any(w.startswith(CONTENT) for w in row["warnings"]) and "no DICOM tags" in row["warnings"][0]


def test_a_damaged_appearance_record_is_refused(real_runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(real_runs[0], bundle)
    record = bundle / APPEARANCE
    record.write_bytes(record.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="appearance.safetensors is damaged"):
        Predictor(bundle)


def test_an_ensemble_flags_as_its_member_of_its_input_size(real_runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    small, large, held_out = real_runs
    out = tmp_path / "ensemble"
    assert main(["ensemble", str(small), str(large), "--data", str(held_out), "--out", str(out)]) == 0
    assert (out / APPEARANCE).read_bytes() == (large / APPEARANCE).read_bytes()
    assert APPEARANCE in load_card(out).files
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 300), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "noise.png"
    path.write_bytes(buf.getvalue())
    [row] = predict_paths(out, [path])
    assert any(w.startswith(CONTENT) for w in row["warnings"])


def test_predict_and_serve_say_once_when_a_bundle_checks_no_content(real_runs: tuple[Path, Path, Path],
                                                                    tiny_bundle: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A bundle without an appearance record (trained on too few films, or an older one) flags no noise or turned
    film: predict's rows and the service's log had been silent about it, where only the page's card said so; then
    each reading said nothing of it, and noise read PNEUMONIA in bold red. predict and serve say it once at the
    start, and every reading says it (in scope still: the film is not known to be unlike the training films)."""
    path = tmp_path / "film.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    for bundle, unchecked in ((tiny_bundle, True), (real_runs[0], False)):
        caplog.clear()
        [row] = predict_paths(bundle, [path])
        create_app(bundle)
        said = [m for m in caplog.messages if "records no appearance of its training films" in m]
        assert len(said) == (2 if unchecked else 0), caplog.messages
        assert (CONTENT_UNCHECKED.text() in row["warnings"]) == unchecked
    assert in_scope([CONTENT_UNCHECKED.text()])  # said, but no reason to take the film for no chest film


@pytest.mark.parametrize(("field", "value", "said"), [
    ("layout_limit", 5e-324, "its layout limit 5e-324 is outside 1 to "),
    ("layout_limit", 1e300, "its layout limit 1e+300 is outside 1 to "),
    ("white", 1e-9, "its white limit 1e-09 is outside 0.1 to 1.1"),
    ("black", 2.0, "its black limit 2.0 is outside 0.05 to 1.05"),
    ("contrast", 200.0, "its contrast limit 200.0 is outside 0 to 153"),
    ("sharpness", (-1e300, 0.4), "its sharpness low limit -1e+300 is outside"),
    ("sharpness", (0.4, 0.3), "its sharpness limits [0.4, 0.3] are out of order"),
], ids=["layout", "layout-most", "white", "black", "contrast", "sharpness", "sharpness-order"])
def test_a_resealed_appearance_record_of_a_limit_no_fit_gives_is_refused_naming_it(
        tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, field: str, value: object, said: str) -> None:
    """A record damaged and sealed again (its SHA-256 recorded anew) passes the digest check: one whose layout limit
    was near 0 (it had only to be above 0) loaded and flagged every film "inf times the limit" unlike the training
    films, one whose layout limit was beyond the distance any film's layout can have (it was bounded from below
    only) none, one whose white share was near 0 every film with a white pixel, one whose sharpness limit was
    beyond what any film measures none. Refused at load, naming the limit, where the record as fitted loads."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    fitted = with_appearance_of(bundle, tiny_dataset)
    assert Predictor(bundle, backend="onnx").appearance.layout_limit == fitted.layout_limit  # loads as fitted
    save_appearance(bundle, dataclasses.replace(fitted, **{field: value}))
    with pytest.raises(ValueError, match=f"{APPEARANCE} is not a readable appearance record: {re.escape(said)}"):
        Predictor(bundle, backend="onnx")
