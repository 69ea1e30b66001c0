"""One option check for every named choice (did-you-mean), and the train CLI built from the config dataclasses."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import yaml

from pneumoscan import cli
from pneumoscan.core.options import (
    BACKENDS,
    FILL_MODES,
    OPTIMIZERS,
    RESIZE_POLICIES,
    TRACKERS,
    apply_settings,
    look_up_option,
)
from pneumoscan.data.layouts import discover, make_record
from pneumoscan.data.preprocess import PreprocessSpec, resize
from pneumoscan.data.tasks import get_task, list_tasks
from pneumoscan.data.transforms import Augment
from pneumoscan.inference.predict import Predictor, format_results
from pneumoscan.models import registry as models
from pneumoscan.training.tracking import make_trackers
from pneumoscan.training.config import TrainConfig


def test_look_up_option_suggests_the_closest_names() -> None:
    assert look_up_option("pad", RESIZE_POLICIES, "resize policy") == "pad"
    with pytest.raises(ValueError) as e:
        look_up_option("sqush", RESIZE_POLICIES, "resize policy")
    assert str(e.value) == "unknown resize policy 'sqush'; did you mean 'squash'? (choose from squash, pad, center-crop)"
    with pytest.raises(ValueError) as e:
        look_up_option("zzz", ("torch", "onnx"), "backend")
    assert str(e.value) == "unknown backend 'zzz' (choose from torch, onnx)"  # nothing close: no guess
    with pytest.raises(ValueError, match=r"unknown model 'x' \(see the list\)$"):
        look_up_option("x", [f"m{i}" for i in range(100)], "model", hint="see the list")


@pytest.mark.parametrize("call, guess", [
    (lambda: get_task("pneumona"), "'pneumonia'"),
    (lambda: resize(np.zeros((4, 4), np.uint8), 2, "center_crop"), "'center-crop'"),
    (lambda: PreprocessSpec(8, "padd"), "'pad'"),
    (lambda: Augment(fill_mode="reflct"), "'reflect'"),
    (lambda: format_results([], "jsn"), "'json'"),
    (lambda: Predictor("no-bundle-needed", backend="onnx_int8"), "'onnx-int8'"),
    (lambda: models.create("simple_cn"), "'simple_cnn'"),
    (lambda: models.normalization("resnet5O"), "'resnet50'"),
    (lambda: make_record("a.png", "NORMALL"), "'NORMAL'"),
    (lambda: discover(".", layout="kagle"), "'kaggle'"),
    (lambda: TrainConfig.from_dict({"lrr": 0.1}), "'lr'"),
    (lambda: TrainConfig.from_dict({"optimizer": "adam-plateu"}), "'adam-plateau'"),
    (lambda: make_trackers(["tensorbord"], Path("."), {}), "'tensorboard'"),
    (lambda: TrainConfig.from_dict({"augment": {"nosie": 0.1}}), "'augment.noise'"),
])  # fmt: skip
def test_every_choice_goes_through_the_one_check(call, guess: str) -> None:
    with pytest.raises(ValueError, match=f"did you mean {guess}"):
        call()


def _option(parser: argparse.ArgumentParser, command: str, flag: str) -> argparse.Action:
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return next(a for a in commands.choices[command]._actions if flag in a.option_strings)


def test_cli_choices_are_the_library_names(capsys: pytest.CaptureFixture) -> None:
    parser = cli.build_parser()
    assert list(_option(parser, "train", "--task").choices) == list(_option(parser, "cv", "--task").choices) == list_tasks()
    for command in ("predict", "serve", "pacs"):
        assert tuple(_option(parser, command, "--backend").choices) == BACKENDS
    assert tuple(_option(parser, "cache", "--policy").choices) == RESIZE_POLICIES
    assert tuple(_option(parser, "train", "--fill-mode").choices) == FILL_MODES
    assert tuple(_option(parser, "train", "--optimizer").choices) == OPTIMIZERS
    assert tuple(_option(parser, "train", "--log").choices) == TRACKERS
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["predict", "bundle", "x.png", "--backend", "onxx"])
    assert exit_info.value.code == 2 and "did you mean 'onnx'?" in capsys.readouterr().err


def _printed(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert cli.main(["train", *args, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_set_reaches_any_field_and_print_config_shows_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "recipe.yaml"
    config.write_text("epochs: 9\naugment: {rotation: 3.0}\nlr: 0.01\n")
    got = _printed(capsys, "--config", str(config), "--set", "augment.noise=0.02", "--set", "epochs=3",
                   "--set", "target_sensitivity=null", "--set", "model_kwargs={drop_rate: 0.3}", "--set", "lr=5e-4",
                   "--lr", "0.002")  # fmt: skip
    assert got == {**yaml.safe_load(TrainConfig().to_yaml()), "epochs": 3, "target_sensitivity": None, "lr": 0.002,
                   "model_kwargs": {"drop_rate": 0.3},
                   "augment": {**yaml.safe_load(TrainConfig().to_yaml())["augment"], "noise": 0.02, "rotation": 3.0}}
    assert TrainConfig.from_dict(got) == TrainConfig.from_dict(yaml.safe_load(TrainConfig.from_dict(got).to_yaml()))


@pytest.mark.parametrize("setting, reason", [
    ("augment.nosie=0.1", "unknown config key 'augment.nosie'; did you mean 'augment.noise'"),
    ("epoch=2", "unknown config key 'epoch'; did you mean 'epochs'"),
    ("lr", "--set 'lr': expected key=value"),
    ("epochs.x=1", "epochs is 6, not a group of settings"),
    ("lr=[1", "the value is not YAML"),
])  # fmt: skip
def test_set_refuses_unknown_keys_and_bad_values(setting: str, reason: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--set", "epochs=6", "--set", setting, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert reason in err and "Traceback" not in err


def test_apply_settings_leaves_its_input_alone() -> None:
    data = {"augment": {"noise": 0.1}}
    assert apply_settings(data, ["augment.noise=0"]) == {"augment": {"noise": 0}} and data == {"augment": {"noise": 0.1}}


def test_cv_takes_the_same_settings(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["cv", "--data", "d", "--out", "o", "--set", "augment.nosie=0.1"]) == 2  # refused before any work
    assert "did you mean 'augment.noise'" in capsys.readouterr().err


def test_train_without_print_config_needs_data_and_out(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--set", "epochs=1"]) == 2
    assert "train needs --data and --out" in capsys.readouterr().err
