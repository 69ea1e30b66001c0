"""The reference projects' setup: their models, Keras-style augmentation, the Mendeley file names, their configs."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import json
import logging
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from pneumoscan.cli import main
from pneumoscan.data.layouts import discover, parse_any
from pneumoscan.data.split import split_dataset, split_summary
from pneumoscan.data.tasks import get_task, select
from pneumoscan.data.augment import Augment
from pneumoscan.data.transforms import to_input, train_transform
from pneumoscan.models import registry as models
from pneumoscan.training.config import load_config, TrainConfig
from pneumoscan.training.train import split_records, train

CONFIGS = Path(__file__).parents[1] / "configs" / "reference"
NO_IDS = ("no patient ids in file names: {n} images split as {n} groups, one per image, so one child's films "
          "may land on both sides: give each film's patient in a manifest's patient column (path,label,patient)")


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


# --- models -----------------------------------------------------------------------------------------------


def test_one_logit_head_is_sigmoid_with_binary_cross_entropy() -> None:
    """seed_cnn5's single logit z is shown as [0, z]: softmax gives sigmoid(z), cross-entropy (class-weighted too)
    gives binary cross-entropy, so the two-class machinery trains and scores it exactly as Keras would."""
    torch.manual_seed(0)
    head = models.OneLogit(16)
    x, y = torch.randn(64, 16), torch.randint(0, 2, (64,))
    logits, z = head(x), head.fc(x)[:, 0]
    assert logits.shape == (64, 2) and torch.equal(logits[:, 0], torch.zeros(64))
    torch.testing.assert_close(logits.softmax(1)[:, 1], torch.sigmoid(z))
    torch.testing.assert_close(F.cross_entropy(logits, y), F.binary_cross_entropy_with_logits(z, y.float()))
    weights = torch.tensor([0.7, 2.3])
    torch.testing.assert_close(
        F.cross_entropy(logits, y, weight=weights, reduction="sum"),
        F.binary_cross_entropy_with_logits(z, y.float(), weight=weights[y], reduction="sum"),
    )
    # and the gradient reaches the one output unit as BCE's would
    F.cross_entropy(logits, y).backward()
    grad_ce = head.fc.weight.grad.clone()
    head.zero_grad()
    F.binary_cross_entropy_with_logits(head.fc(x)[:, 0], y.float()).backward()
    torch.testing.assert_close(grad_ce, head.fc.weight.grad)


def test_seed_cnn1_is_one_conv_maxpool_two_dense_flatten() -> None:
    model = models.create("seed_cnn1", image_size=64)
    assert (_count(model, nn.Conv2d), _count(model, nn.MaxPool2d), _count(model, nn.Linear)) == (1, 1, 2)
    assert _count(model, nn.Flatten) == 1 and _count(model, nn.AdaptiveAvgPool2d) == 0
    conv_out = (64 - 2) // 2  # 'valid' 3x3 then 2x2 pooling, as in Keras
    assert model.head[0].in_features == 32 * conv_out * conv_out


def test_seed_cnn5_blocks_and_single_sigmoid_output() -> None:
    model = models.create("seed_cnn5", image_size=64)
    assert (_count(model, nn.Conv2d), _count(model, nn.BatchNorm2d), _count(model, nn.MaxPool2d)) == (10, 10, 5)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2] * 5
    assert _count(model, nn.Flatten) == 1 and _count(model, nn.AdaptiveAvgPool2d) == 0
    head = model.get_classifier()
    assert isinstance(head, models.OneLogit) and head.fc.out_features == 1
    model.eval()
    logits = model(torch.randn(3, 1, 64, 64))
    assert logits.shape == (3, 2) and torch.equal(logits[:, 0], torch.zeros(3))
    # more than two classes: a softmax over them (Keras' categorical head)
    assert models.create("seed_cnn5", num_classes=3, image_size=64)(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_flatten_models_are_built_for_one_input_size() -> None:
    with pytest.raises(ValueError, match="built for one input size: give image_size"):
        models.create("seed_cnn1")
    with pytest.raises(ValueError, match=r"seed_cnn5 needs image_size >= 32 \(5 2x max-pools"):
        models.create("seed_cnn5", image_size=24)
    model = models.create("seed_cnn5", image_size=64)
    with pytest.raises(ValueError, match="seed_cnn5 is built for 64 x 64 inputs, got 96 x 96"):
        model(torch.randn(1, 1, 96, 96))


def test_pretrained_weights_are_known_per_model() -> None:
    assert models.has_pretrained("resnet50v2") and models.has_pretrained("efficientnet_lite0")
    assert not any(models.has_pretrained(n) for n in ("seed_cnn1", "seed_cnn5", "simple_cnn", "cnn5", "mlp"))
    with pytest.raises(ValueError, match="unknown model"):
        models.has_pretrained("no_such_model")


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network and an empty weights cache, as on a machine that never downloaded the weights."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_resnet50v2_is_timm_resnetv2_50_and_says_why_weights_are_missing(offline_hub: None) -> None:
    model = models.create("resnet50v2", num_classes=2, in_chans=1)
    assert type(model).__name__ == "ResNetV2" and model.stem.conv.weight.shape[1] == 1
    assert model.pretrained_cfg["architecture"] == "resnetv2_50"
    assert models.normalization("resnet50v2") == (0.5, 0.5)  # the weights' own mean/std, as Keras' [-1, 1]
    with pytest.raises(OSError, match=r"resnetv2_50.*neither in the local cache nor downloadable.*--no-pretrained"):
        models.create("resnet50v2", pretrained=True)


def test_train_fails_before_split_and_cache_on_a_model_it_cannot_build(
    tiny_dataset: Path, tmp_path: Path, offline_hub: None
) -> None:
    """The model is built first: no run folder, no split, no cache is made for a run that cannot train."""
    for cfg, error, reason in (
        (TrainConfig(model="seed_cnn5", image_size=16), ValueError, "needs image_size >= 32"),
        (TrainConfig(model="resnet50v2", image_size=32), OSError, "--no-pretrained"),
    ):
        run = tmp_path / cfg.model
        with pytest.raises(error, match=reason):
            train(tiny_dataset, cfg, run)
        assert not run.exists()


def test_cli_exits_3_for_unavailable_weights_alone(
    tiny_dataset: Path, tmp_path: Path, offline_hub: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Status 3 lets a script (make reference) train that config from scratch; every other refusal stays 2."""
    args = ["train", "--data", str(tiny_dataset), "--model", "resnet50v2", "--image-size", "32"]
    assert main([*args, "--out", str(tmp_path / "imagenet")]) == 3
    assert "neither in the local cache nor downloadable" in capsys.readouterr().err
    assert main([*args, "--image-size", "16", "--model", "seed_cnn5", "--out", str(tmp_path / "small")]) == 2


# --- augmentation -----------------------------------------------------------------------------------------


def _draws(augment: Augment, pixels: torch.Tensor, n: int = 40) -> torch.Tensor:
    torch.manual_seed(0)
    transform = train_transform(pixels.shape[-1], 0.0, 1.0, augment)
    return (torch.stack([transform(pixels) for _ in range(n)]) * 255).round()  # back to grey levels


def test_no_augment_is_the_normalisation_alone() -> None:
    pixels = torch.randint(0, 256, (1, 48, 48), dtype=torch.uint8)
    transform = train_transform(48, 0.5, 0.25, Augment.off())
    assert len(transform.transforms) == 1  # no random step at all, not steps that happen to do nothing
    torch.manual_seed(0)
    assert all(torch.equal(transform(pixels), to_input(pixels, 0.5, 0.25)) for _ in range(5))


def test_zoom_range_zooms_in_and_out_and_constant_fill_leaves_a_black_border() -> None:
    size, grey = 40, 200
    out = _draws(Augment(**{**vars(Augment.off()), "zoom_range": 0.3}),
                 torch.full((1, size, size), grey, dtype=torch.uint8))
    corners = out[:, 0, 0, 0]
    zoomed_out = corners == 0
    assert 0.25 < zoomed_out.float().mean() < 0.75  # scale 0.7-1.3: about half the draws zoom out
    assert (corners[~zoomed_out] == grey).all()  # zooming in keeps the film everywhere
    # at the largest zoom-out (0.7) the film still covers the middle 70 %: never a black pixel there
    inner = round(size * 0.16)
    assert (out[:, 0, inner:-inner, inner:-inner] == grey).all()
    border = (out[zoomed_out, 0] == 0).float().mean(dim=(1, 2))
    assert (border > 0).all() and (border < 1 - 0.7**2 + 0.05).all()


@pytest.mark.parametrize("fill_mode", ["nearest", "reflect"])
def test_nearest_and_reflect_fill_from_the_film_itself(fill_mode: str) -> None:
    """A uniform film stays uniform under zoom-out, shift, rotation and shear, even at large ranges that reach more
    than a film's width beyond its edge: the border comes from the film."""
    augment = Augment(**{**vars(Augment.off()), "zoom_range": 0.5, "shift": 0.2, "rotation": 45.0, "shear": 20.0})
    flat = torch.full((1, 24, 24), 200, dtype=torch.uint8)
    assert (_draws(augment, flat) == 0).any()  # the constant fill brings black in
    assert (_draws(Augment(**{**vars(augment), "fill_mode": fill_mode}), flat, 80) == 200).all()


def _filled_from_the_film(config: Path) -> bool:
    """Whether the recipe's affine step fills its border from the film (nearest or reflect)."""
    a = load_config(config).augment
    return a.fill_mode != "constant" and bool(a.zoom_range or a.shift or a.rotation or a.shear)


@pytest.mark.parametrize("config", [c for c in sorted(CONFIGS.glob("*.yaml")) if _filled_from_the_film(c)],
                         ids=lambda path: path.stem)
def test_the_border_comes_from_the_film_at_every_extreme_of_a_reference_recipe(config: Path) -> None:
    """The padding was reckoned with the shift added after the zoom-out, which grows it too: at cnn5's extremes
    (zoom out 0.8, shift 0.1 both ways, rotation 30 degrees) 69 pixels came out black, 1 draw in 1,000 of its
    recipe. Each corner of the recipe's ranges, drawn exactly: the border is the film's."""
    from torchvision.transforms import v2

    from pneumoscan.data.transforms import _affine

    cfg = load_config(config)
    a, size = cfg.augment, cfg.image_size
    pads = v2.Compose([step for step in _affine(size, a) if isinstance(step, v2.Pad)])
    padded = pads(torch.full((1, size, size), 200, dtype=torch.uint8))
    for turn, x, y, slant in itertools.product((-1, 1), repeat=4):
        out = v2.functional.affine(padded, angle=turn * a.rotation, translate=[x * a.shift * size, y * a.shift * size],
                                   scale=1 - a.zoom_range, shear=[slant * a.shear, slant * a.shear])
        assert (v2.functional.center_crop(out, [size, size]) == 200).all(), (turn, x, y, slant)


def test_reflect_mirrors_where_nearest_repeats_the_edge() -> None:
    ramp = torch.linspace(0, 255, 40).round().to(torch.uint8).expand(1, 40, 40).contiguous()  # brighter to the right
    zoom = Augment(**{**vars(Augment.off()), "zoom_range": 0.3})

    def falls(fill_mode: str) -> torch.Tensor:
        rows = _draws(Augment(**{**vars(zoom), "fill_mode": fill_mode}), ramp)[:, 0, 20]
        return (rows.diff(dim=1) < 0).any(dim=1)  # a row that gets darker somewhere to the right

    assert not falls("nearest").any()  # the edge value repeated: still a ramp
    assert 0.25 < falls("reflect").float().mean() < 0.75  # zoomed out: mirrored at the edge


def test_vertical_flip_flips_about_half_the_images() -> None:
    pixels = torch.arange(36 * 36, dtype=torch.int64).reshape(1, 36, 36).remainder(251).to(torch.uint8)
    out = _draws(Augment(**{**vars(Augment.off()), "vflip": True}), pixels)
    same = (out == pixels.float()).flatten(1).all(1)
    flipped = (out == pixels.flip(-2).float()).flatten(1).all(1)
    assert (same ^ flipped).all() and 0.25 < flipped.float().mean() < 0.75
    assert not _draws(Augment.off(), pixels).ne(pixels.float()).any()  # off by default


def test_augment_refuses_unknown_fill_and_bad_zoom() -> None:
    with pytest.raises(ValueError, match=r"unknown fill_mode .wrap. \(choose from constant, nearest, reflect\)"):
        Augment(fill_mode="wrap")
    with pytest.raises(ValueError, match="zoom_range must be in"):
        Augment(zoom_range=1.0)


def test_train_flags_reach_the_run_config(tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    """The flags land in the run's config (as --print-config writes it, and the run's config.yaml holds it)."""
    def run_config(*flags: str) -> dict:
        args = ["train", "--model", "simple_cnn", "--image-size", "32", "--print-config", *flags]
        assert main(args) == 0
        return yaml.safe_load(capsys.readouterr().out)["augment"]

    keras = run_config("--zoom-range", "0.3", "--vflip", "--fill-mode", "reflect")
    assert (keras["zoom_range"], keras["vflip"], keras["fill_mode"]) == (0.3, True, "reflect")
    assert keras["rotation"] == Augment().rotation  # the rest keeps its defaults
    assert Augment(**run_config("--no-augment")) == Augment.off()
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "r2"), "--no-augment", "--vflip"]) == 2
    assert "--no-augment turns augmentation off: drop --vflip" in capsys.readouterr().err


# --- Mendeley file names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "label", "expected"),
    [
        ("NORMAL-2552119-0002.jpeg", "NORMAL", ("normal", "2552119")),
        ("BACTERIA-4038442-0001.jpeg", "PNEUMONIA", ("bacteria", "4038442")),
        ("VIRUS-2040583-0001.jpeg", "PNEUMONIA", ("virus", "2040583")),
        ("virus-2040583-0012.JPEG", "PNEUMONIA", ("virus", "2040583")),  # any case
        ("Bacteria-7-0001.jpg", "PNEUMONIA", ("bacteria", "7")),
        ("NORMAL-2552119-0002.jpeg", "PNEUMONIA", ("", "2552119")),  # the folder wins: subtype unknown
        ("BACTERIA-4038442-0001.jpeg", "NORMAL", ("normal", "4038442")),
        ("BACTERIA-4038442.jpeg", "PNEUMONIA", None),  # not the pattern: no id (the film is a patient of its own)
        ("person12_bacteria_45.jpeg", "PNEUMONIA", ("bacteria", "person12")),  # Kermany names unchanged
        ("NORMAL2-IM-0381-0001.jpeg", "NORMAL", ("normal", "NORMAL2-IM-0381")),
    ],
)
def test_parse_mendeley_names(name: str, label: str, expected: tuple[str, str] | None) -> None:
    assert parse_any(name, label) == expected


def _write(path: Path, value: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(rng.normal(value, 20, (48, 48)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


@pytest.fixture(scope="module")
def mendeley(module_tmp: Callable[[str], Path]) -> Path:
    """The Mendeley layout and names: 30 patients, 2-3 films each, bacterial films dark, viral ones bright."""
    root = module_tmp("mendeley") / "chest_xray"
    rng = np.random.default_rng(1)
    for p in range(30):
        kind = ("NORMAL", "BACTERIA", "VIRUS")[p % 3]
        folder = root / "train" / ("NORMAL" if kind == "NORMAL" else "PNEUMONIA")
        for film in range(2 + p % 2):
            _write(folder / f"{kind}-{1000 + p * 37}-{film + 1:04d}.jpeg",
                   {"BACTERIA": 80, "VIRUS": 170}.get(kind, 128), rng)
    _write(root / "test" / "PNEUMONIA" / "VIRUS-9999999-0001.jpeg", 170, rng)
    return root


def test_mendeley_names_give_subtypes_and_a_patient_grouped_split(mendeley: Path, caplog) -> None:
    records = discover(mendeley).records
    assert {r.subtype for r in records} == {"normal", "bacteria", "virus"}
    assert len({r.patient for r in records}) == 31
    # the subtype tasks find every film they should: all three kinds for multiclass, the pneumonias for etiology
    assert len(select(records, get_task("multiclass"))[0]) == len(records)
    assert len(select(records, get_task("etiology"))[0]) == sum(r.label == "PNEUMONIA" for r in records) > 0
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.split"):
        split = split_dataset(mendeley, val_fraction=0.3, seed=0)
    assert not caplog.records  # every file name carries its patient
    summary = split_summary(split)
    assert summary["shared_patients"] == []
    assert {"train", "val"} == set(summary["parts"]) and summary["parts"]["val"]["n"] >= 12
    assert set(summary["parts"]["val"]["subtypes"]) == {"normal", "bacteria", "virus"}


def test_etiology_trains_on_mendeley_names_from_scratch_without_no_pretrained(
    mendeley: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = TrainConfig(task="etiology", model="simple_cnn", image_size=32, epochs=1, batch_size=4, val_fraction=0.3)
    assert cfg.pretrained  # the default: a scratch model simply starts from scratch
    with caplog.at_level(logging.INFO, logger="pneumoscan"):  # whatever logging an earlier test set up
        bundle = train(mendeley, cfg, tmp_path / "run")
    assert "simple_cnn has no pretrained weights: trained from scratch" in caplog.text
    card = json.loads((bundle / "bundle.json").read_text())
    assert card["classes"] == ["bacteria", "virus"]
    assert card["val_metrics"]["n"] == sum(1 for r in discover(tmp_path / "run" / "split.csv").records
                                           if r.split == "val" and r.subtype in ("bacteria", "virus"))  # fmt: skip


def test_names_without_patient_ids_are_split_one_group_per_image_and_said_so(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(2)
    for i in range(10):
        _write(tmp_path / "data" / ("NORMAL", "PNEUMONIA")[i % 2] / f"scan{i}.png", 128, rng)
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.split"):
        assert main(["split", str(tmp_path / "data"), "--out", str(tmp_path / "split.csv"),
                     "--val-fraction", "0.2"]) == 0
    assert [r.getMessage() for r in caplog.records] == [NO_IDS.format(n=10)]
    caplog.clear()
    _write(tmp_path / "data" / "PNEUMONIA" / "person3_virus_7.png", 128, rng)
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.split"):
        split_dataset(tmp_path / "data")
    assert [r.getMessage() for r in caplog.records] == [
        "no patient id in 10 of 11 films (their names, a manifest or a DICOM header): those images are split as 10 "
        "groups, one per image"
    ]


# --- the reference configs --------------------------------------------------------------------------------

EXPERIMENTS = {  # file: (model, image size, augmented)
    "cnn1-no-augment": ("seed_cnn1", 64, False),
    "cnn1-augment": ("seed_cnn1", 64, True),
    "cnn5": ("seed_cnn5", 150, True),
    "mlp-64": ("mlp", 64, False),
    "mlp-128": ("mlp", 128, False),
    "resnet50v2-recall95": ("resnet50v2", 224, True),
    "compare-baseline-cnn": ("seed_cnn1", 150, True),
    "compare-resnet50v2": ("resnet50v2", 150, True),
}


def test_reference_configs_build_their_model_and_transform() -> None:
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(EXPERIMENTS)
    for name, (model_name, size, augmented) in EXPERIMENTS.items():
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert (cfg.model, cfg.image_size, cfg.augment != Augment.off()) == (model_name, size, augmented), name
        model = models.create(cfg.model, len(get_task(cfg.task).classes), pretrained=False, image_size=cfg.image_size,
                              **cfg.model_kwargs)  # fmt: skip
        transform = train_transform(cfg.image_size, *models.normalization(cfg.model), cfg.augment)
        x = transform(torch.randint(0, 256, (1, cfg.image_size, cfg.image_size), dtype=torch.uint8))
        assert x.shape == (1, size, size), name
        with torch.no_grad():
            assert model.eval()(x[None]).shape == (1, 2), name
    recall = load_config(CONFIGS / "resnet50v2-recall95.yaml")
    assert recall.pretrained and recall.target_sensitivity == 0.95
    assert load_config(CONFIGS / "mlp-128.yaml").model_kwargs == {"side": 128}


def test_reference_protocol_validates_on_the_val_folder_and_warns(
    typed_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Train on all of train/, validate on DATA's own val/ folder (the reference projects' protocol), saying what a
    handful of validation films cannot tell. The typed films: one epoch on the tiny ones ranked these 16 films
    below chance (AUC 0.39), which is refused."""
    data = tmp_path / "chest_xray"
    shutil.copytree(typed_dataset / "train", data / "train")
    shutil.copytree(typed_dataset / "test", data / "val")
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--model", "simple_cnn", "--image-size", "32",
            "--epochs", "1", "--batch-size", "8", "--val-folder"]
    with caplog.at_level(logging.WARNING, logger="pneumoscan"):
        assert main(args) == 0
    split = discover(run / "split.csv").records
    assert sorted(Path(r.path).name for r in split if r.split == "val") == sorted(
        p.name for p in (data / "val").rglob("*.jpeg"))
    assert sum(r.split == "train" for r in split) == len(list((data / "train").rglob("*.jpeg"))), "all of train/"
    assert "validating on the val/ folder" in caplog.text and "12.5 points" in caplog.text  # 8 films a class
    with pytest.raises(ValueError, match="give one"):
        split_records(data, TrainConfig(split_csv=str(run / "split.csv"), validate_on_val_folder=True))


def test_a_val_folder_sharing_a_patient_with_train_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    """DATA's own val/ folder is checked as a manifest is: one patient on both sides is refused, not warned about."""
    data = tmp_path / "chest_xray"
    shutil.copytree(tiny_dataset / "train", data / "train")
    shutil.copytree(tiny_dataset / "test", data / "val")
    split_records(data, TrainConfig(validate_on_val_folder=True))  # no patient in both: accepted
    shutil.copy(data / "train" / "PNEUMONIA" / "person3_bacteria_3.jpeg",
                data / "val" / "PNEUMONIA" / "person3_bacteria_99.jpeg")
    with pytest.raises(ValueError, match=r"train/ and val/ folders: 1 patient\(s\) have films in both train and val "
                                         r"\(e\.g\. person3\)"):
        split_records(data, TrainConfig(validate_on_val_folder=True))
