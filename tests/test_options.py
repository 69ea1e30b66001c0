"""One option check for every named choice (did-you-mean), and the train CLI built from the config dataclasses."""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from pneumoscan import cli
from pneumoscan.core import cpus
from pneumoscan.core.cpus import usable_cores
from pneumoscan.core.options import (
    BACKENDS,
    FILL_MODES,
    OPTIMIZERS,
    RESIZE_POLICIES,
    TRACKERS,
    look_up_option,
)
from pneumoscan.data.layouts import discover, make_record
from pneumoscan.data.preprocess import PreprocessSpec, resize
from pneumoscan.data.tasks import get_task, list_tasks
from pneumoscan.data.augment import Augment
from pneumoscan.inference.predict import Predictor, format_results
from pneumoscan.models import registry as models
from pneumoscan.training.tracking import make_trackers
from pneumoscan.training.config import TrainConfig, apply_settings, read_yaml


def test_look_up_option_suggests_the_closest_names() -> None:
    assert look_up_option("pad", RESIZE_POLICIES, "resize policy") == "pad"
    with pytest.raises(ValueError) as e:
        look_up_option("sqush", RESIZE_POLICIES, "resize policy")
    assert str(e.value) == ("unknown resize policy 'sqush'; did you mean 'squash'? (choose from squash, pad, "
                            "center-crop)")
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
    (lambda: discover(".", layout="kagle"), "'kaggle'"),
    (lambda: TrainConfig.from_dict({"lrr": 0.1}), "'lr'"),
    (lambda: TrainConfig.from_dict({"optimizer": "adam-plateu"}), "'adam-plateau'"),
    (lambda: make_trackers(["tensorbord"], Path("."), {}), "'tensorboard'"),
    (lambda: TrainConfig.from_dict({"augment": {"nosie": 0.1}}), "'augment.noise'"),
])  # fmt: skip
def test_every_choice_goes_through_the_one_check(call, guess: str) -> None:
    with pytest.raises(ValueError, match=f"did you mean {guess}"):
        call()


@pytest.mark.parametrize("label", ["abnormal", "NORMALL", "pneumonial"])
def test_a_label_gets_no_guess_that_could_flip_its_class(label: str) -> None:
    """ABNORMAL is one letter from NORMAL: a guess by spelling would send an abnormal film to the opposite class,
    so an unknown label is refused with the labels listed and no guess."""
    with pytest.raises(ValueError) as e:
        make_record("a.png", label)
    assert str(e.value) == f"unknown label {label.upper()!r} (choose from NORMAL, PNEUMONIA)"
    with pytest.raises(ValueError, match=r"unknown subtype 'abnormal' \(choose from normal, bacteria, virus"):
        look_up_option("abnormal", ("normal", "bacteria", "virus"), "subtype", suggest=False)


def _option(parser: argparse.ArgumentParser, command: str, flag: str) -> argparse.Action:
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return next(a for a in commands.choices[command]._actions if flag in a.option_strings)


def test_cli_choices_are_the_library_names(capsys: pytest.CaptureFixture) -> None:
    parser = cli.build_parser()
    assert (list(_option(parser, "train", "--task").choices) == list(_option(parser, "cv", "--task").choices)
            == list_tasks())
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


def test_patients_is_a_flag_of_train_and_cv_and_a_setting(capsys: pytest.CaptureFixture) -> None:
    """train and cv --patients N: a trial on a sample of N patients, in the config as patients (config.yaml and the
    card record it, so the run can be made again)."""
    assert _printed(capsys, "--patients", "40")["patients"] == 40 and _printed(capsys)["patients"] is None
    assert _option(cli.build_parser(), "cv", "--patients").metavar == "N"


@pytest.mark.parametrize("setting, reason", [
    ("augment.nosie=0.1", "unknown config key 'augment.nosie'; did you mean 'augment.noise'"),
    ("epoch=2", "unknown config key 'epoch'; did you mean 'epochs'? (`pneumoscan train --print-config` lists the "
                "settings)"),  # not "(34 names)": where to find them
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
    assert (apply_settings(data, ["augment.noise=0"]) == {"augment": {"noise": 0}}
            and data == {"augment": {"noise": 0.1}})


def test_cv_takes_the_same_settings(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["cv", "--data", "d", "--out", "o", "--set", "augment.nosie=0.1"]) == 2  # refused before any work
    assert "did you mean 'augment.noise'" in capsys.readouterr().err


@pytest.mark.parametrize("given, missing", [([], "--data, --out"), (["--data", "d"], "--out"),
                                            (["--out", "o"], "--data")])
def test_train_without_print_config_names_the_data_or_out_it_needs(given: list[str], missing: str,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """In argparse's words for cv's required options, with where they are listed: 'train needs --data and --out'
    was said when one of them had been given."""
    assert cli.main(["train", "--set", "epochs=1", *given]) == 2
    assert capsys.readouterr().err == (f"pneumoscan train: error: the following arguments are required: {missing} "
                                       "(`pneumoscan train --help` lists the options; --print-config needs "
                                       "neither)\n")


@pytest.mark.parametrize("settings, expected", [
    ({"lr": "3e-4", "augment": {"noise": "4e-2"}, "weight_decay": "1E-2", "warmup": "5e-2"},
     {"lr": 3e-4, "augment.noise": 0.04, "weight_decay": 0.01, "warmup": 0.05}),  # YAML 1.1 strings: no dot
    ({"lr": "1.0e-3", "time_budget": "+1e1"}, {"lr": 1e-3, "time_budget": 10.0}),  # nor an exponent sign
    ({"seed": "1e9", "epochs": "2E0"}, {"seed": 10**9, "epochs": 2}),  # a whole number in scientific notation
    ({"epochs": 3.0, "lr": 1, "target_sensitivity": None, "augment": False},
     {"epochs": 3, "lr": 1, "augment.noise": 0.0}),
    ({"teacher": None, "model_kwargs": {"drop_rate": 0.3}}, {"teacher": [], "model_kwargs": {"drop_rate": 0.3}}),
])  # fmt: skip
def test_settings_of_the_fields_types_are_taken(settings: dict, expected: dict) -> None:
    for cfg in (TrainConfig.from_dict(settings), TrainConfig(**settings)):  # YAML and flags, or the library
        got = {key: getattr(cfg.augment, key[8:]) if key.startswith("augment.") else getattr(cfg, key)
               for key in expected}
        assert got == expected and all(type(got[k]) is type(v) for k, v in expected.items())


def test_a_numpy_number_is_a_setting_config_yaml_can_hold() -> None:
    """A learning rate from ``np.logspace`` (a notebook's grid search) was kept as numpy's float64, and the run then
    failed writing config.yaml with yaml's RepresenterError traceback; numpy's float32 was refused as no number."""
    for lr in np.logspace(-4, -2, 3):
        cfg = TrainConfig(lr=lr, augment={"noise": np.float32(0.25)})
        assert type(cfg.lr) is float and type(cfg.augment.noise) is float
        assert yaml.safe_load(cfg.to_yaml())["lr"] == lr and cfg.augment.noise == 0.25


@pytest.mark.parametrize("settings, reason", [
    ({"epochs": 2.5}, "epochs must be a whole number, got 2.5"),
    ({"epochs": "2.5e0"}, "epochs must be a whole number, got 2.5"),
    ({"seed": True}, "seed must be a whole number, got True"),
    ({"batch_size": "8"}, "batch_size must be a whole number, got '8'"),
    ({"lr": "fast"}, "lr must be a number, got 'fast'"),
    ({"lr": False}, "lr must be a number, got False"),
    ({"pretrained": "false"}, "pretrained must be true or false, got 'false'"),
    ({"pretrained": 1}, "pretrained must be true or false, got 1"),
    ({"model": 5}, "model must be a string, got 5"),
    ({"target_sensitivity": "high"}, "target_sensitivity must be a number or null, got 'high'"),
    ({"init": 3}, "init must be a string or null, got 3"),
    ({"model_kwargs": None}, "model_kwargs must be a mapping, got None"),
    ({"teacher": [5]}, "teacher must be a list of strings, got [5]"),
    ({"teacher": 5}, "teacher must be a list of strings, got 5"),
    ({"augment": None}, "augment must be a group of settings, got None"),
    ({"augment": {"hflip": "yes"}}, "augment.hflip must be true or false, got 'yes'"),
    ({"augment": {"noise": "4%"}}, "augment.noise must be a number, got '4%'"),
    ({"target_sensitivity": 95}, "target_sensitivity must be in (0, 1], got 95"),
    ({"target_sensitivity": 0}, "target_sensitivity must be in (0, 1], got 0"),
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"eval_batch_size": -1}, "eval_batch_size must be >= 1, got -1"),
    ({"image_size": 4}, "image_size must be 8 to 2048 pixels, got 4"),
    ({"image_size": 100000}, "image_size must be 8 to 2048 pixels, got 100000"),  # was killed for memory
    ({"lr": -1e-3}, "lr must be finite and >= 0, got -0.001"),
    ({"lr": float("nan")}, "lr must be finite and >= 0, got nan"),
    ({"lr": float("inf")}, "lr must be finite and >= 0, got inf"),
    ({"weight_decay": -0.01}, "weight_decay must be finite and >= 0, got -0.01"),
    ({"warmup": 5}, "warmup must be a fraction of the schedule in [0, 1), got 5"),
    ({"time_budget": 0}, "time_budget must be finite and > 0 minutes, got 0"),
    ({"label_smoothing": 1.5}, "label_smoothing must be in [0, 1), got 1.5"),
    ({"ema_decay": 1}, "ema_decay must be in [0, 1), got 1"),
    ({"plateau_factor": 2}, "plateau_factor must be in (0, 1), got 2"),
    ({"trainable_stages": -1}, "trainable_stages must be >= 0, got -1"),
    ({"workers": -2}, "workers must be >= 0, got -2"),
    ({"augment": {"shift": 1.5}}, "shift must be a fraction of the side in [0, 1), got 1.5"),
    ({"augment": {"rotation": -10}}, "rotation is a range in [0, 180] degrees (0: off), got -10"),
    ({"augment": {"rotation": 720}}, "rotation is a range in [0, 180] degrees (0: off), got 720"),
    ({"augment": {"brightness": 5}}, "brightness is a range in [0, 1) (0: off), got 5"),
    ({"augment": {"noise": 5}}, "noise is a range in [0, 1] of the grey range (0: off), got 5"),
    ({"val_fraction": -0.1}, "val_fraction must be between 0 and 1, got -0.1"),  # --print-config printed it
    ({"val_fraction": 1}, "val_fraction must be between 0 and 1, got 1"),
])  # fmt: skip
def test_settings_of_another_type_or_out_of_range_are_refused(settings: dict, reason: str) -> None:
    """The same reasons for a config made in Python (``TrainConfig(batch_size="8")``, ``augment={...}``): its types
    had been checked only when read from YAML or flags, and a wrong one failed mid-run, after the run folder was
    cleared."""
    for make in (TrainConfig.from_dict, lambda s: TrainConfig(**s)):
        with pytest.raises(ValueError) as e:
            make(settings)
        assert str(e.value) == reason


@pytest.mark.parametrize("text", ["epochs: [1\n", "epochs: !!python/object/apply:os.getcwd []\n"],
                         ids=["syntax error", "python tag"])
def test_a_config_file_that_is_not_yaml_is_a_one_line_reason(text: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """yaml's ParserError (or ConstructorError for a tag safe_load will not build) was a traceback."""
    config = tmp_path / "config.yaml"
    config.write_text(text)
    assert cli.main(["train", "--config", str(config), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert f"{config} is not a YAML config: " in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("text, reason", [
    ("epochs: 1\nlr: 0.001\nepochs: 2\n", "epochs is given twice, on lines 1 and 3"),
    ("augment:\n  noise: 0.01\n  rotation: 3\n  noise: 0.02\n", "noise is given twice, on lines 2 and 4"),
    ("augment: {noise: 0.01, noise: 0.02}\n", "noise is given twice, on line 1"),
])  # fmt: skip
def test_a_key_given_twice_is_refused_naming_it_and_its_lines(text: str, reason: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """A config giving `epochs: 1` and further down `epochs: 2` trained with the last one without a word."""
    config = tmp_path / "config.yaml"
    config.write_text(text)
    assert cli.main(["train", "--config", str(config), "--print-config"]) == 2
    assert capsys.readouterr().err == (f"pneumoscan train: error: {config} is not a YAML config: {reason} (YAML takes "
                                       "each key once): keep the one meant\n")


def test_a_key_given_twice_in_a_set_value_is_refused_and_a_merge_is_no_repeat(capsys: pytest.CaptureFixture) -> None:
    """--set with a mapping giving a key twice took the last one too; a key a merge (``<<: *base``) brings in and
    the mapping sets again is YAML's override, not a key given twice."""
    assert cli.main(["train", "--set", "augment={noise: 0.01, noise: 0.02}", "--print-config"]) == 2
    assert "noise is given twice, on line 1" in capsys.readouterr().err
    assert read_yaml("base: &b {noise: 0.01, rotation: 3}\naugment:\n  <<: *b\n  noise: 0.02\n")["augment"] == {
        "noise": 0.02, "rotation": 3}


def test_a_config_made_in_the_library_is_checked_as_a_yaml_one_is() -> None:
    """``TrainConfig(...)`` in a notebook gets the checks ``--config`` and ``--set`` get, not a failure mid-run."""
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam-cosine")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="unknown resize policy 'sqash'; did you mean 'squash'"):
        TrainConfig.from_dict({"resize_policy": "sqash"})  # --set resize_policy=sqash: refused before the run folder
    with pytest.raises(ValueError, match="unknown task 'pneumona'"):
        TrainConfig.from_dict({"task": "pneumona"})
    assert TrainConfig(teacher="runs/a/bundle").teacher == [os.path.abspath("runs/a/bundle")]
    assert TrainConfig(teacher=None).teacher == TrainConfig(teacher="").teacher == []
    # paths and a tuple, as Python callers give them, are the text YAML holds (not refused as another type)
    cfg = TrainConfig(init=Path("runs/a/bundle"), teacher=(Path("runs/t/bundle"), "runs/u/bundle"),
                      split_csv=Path("runs/a/split.csv"))
    assert (cfg.init, cfg.teacher, cfg.split_csv) == (os.path.abspath("runs/a/bundle"),
                                                     [os.path.abspath("runs/t/bundle"),
                                                      os.path.abspath("runs/u/bundle")],
                                                     "runs/a/split.csv")
    assert TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


def test_a_wrong_setting_is_refused_before_the_run_folder_is_touched(tiny_dataset: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """The documented ``--set lr=3e-4`` (a string to YAML 1.1) trains at that rate; ``--set epochs=2.5`` and a
    --config file's ``epochs: 2.5`` end with exit 2 and one line, leaving the earlier run's bundle, checkpoint and
    config where they were (they were deleted before the run failed)."""
    run = tmp_path / "run"
    tiny = ["--data", str(tiny_dataset), "--out", str(run), "--model", "simple_cnn", "--no-pretrained", "--image-size",
            "32", "--batch-size", "8", "--set", "val_fraction=0.25"]  # fmt: skip
    assert cli.main(["train", *tiny, "--epochs", "1", "--optimizer", "adam-plateau", "--set", "warm_start=false",
                     "--set", "lr=3e-4"]) == 0  # fmt: skip
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == 3e-4
    with (run / "history.csv").open() as f:
        assert [float(row["lr"]) for row in csv.DictReader(f)] == pytest.approx([3e-4])  # adam-plateau: constant
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 2.5\n")
    capsys.readouterr()
    for wrong in (["--set", "epochs=2.5"], ["--config", str(recipe)]):
        assert cli.main(["train", *tiny, *wrong]) == 2
        err = capsys.readouterr().err
        assert "epochs must be a whole number, got 2.5" in err and "Traceback" not in err
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert (run / "bundle" / "model.safetensors").is_file() and (run / "checkpoint.pt").is_file()


def test_worker_pools_are_sized_by_the_cores_this_process_may_use() -> None:
    """``taskset -c 0`` (or a container's cpuset) leaves one core: predict's decoding threads, the cache's and the
    audit's processes had been sized by the machine's count (64 decoders in a 2-core container)."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert usable_cores() == len(allowed)


@pytest.mark.parametrize("files, quota, cap", [
    ({"cpu.max": "150000 100000\n"}, 1.5, 2),  # cgroup v2, docker --cpus 1.5: two decoders, not one per core
    ({"cpu.max": "max 100000\n"}, None, None),
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5, 1),  # cgroup v1, half a core
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None, None),
    ({"cpu.max": "garbled\n"}, None, None),
    ({}, None, None),
])  # fmt: skip
def test_a_containers_cpu_quota_sizes_the_worker_pools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict,
                                                     quota: float | None, cap: int | None) -> None:
    """A Kubernetes CPU limit (a cgroup quota) was not seen: only the cpuset narrowed the pools, so a pod limited to
    half a core on a 64-core node ran 64 decoders."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(cpus, "CGROUP", tmp_path)
    assert cpus.cpu_quota() == quota
    cores = len(os.sched_getaffinity(0))
    assert usable_cores() == (min(cores, cap) if cap else cores)


def test_a_cpu_quota_caps_torchs_threads_and_every_onnx_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Half a CPU's quota (a Kubernetes limit of 500m): every model run takes one thread, torch's lowered where a
    model is loaded (and said), while a count below the cap (torch.set_num_threads) stays as it was."""
    import torch

    (tmp_path / "cpu.max").write_text("50000 100000\n")
    monkeypatch.setattr(cpus, "CGROUP", tmp_path)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cpus.model_threads() == 1, "an ONNX Runtime session is sized by it"
        with caplog.at_level("INFO", logger="pneumoscan"):
            cpus.cap_torch_threads()
        assert torch.get_num_threads() == 1
        assert "torch's 2 intra-op threads capped at the 1 cores this process may use" in caplog.text
        monkeypatch.setattr(cpus, "CGROUP", tmp_path / "nosuch")  # no quota: the cores of the affinity
        torch.set_num_threads(1)
        cpus.cap_torch_threads()
        assert torch.get_num_threads() == cpus.model_threads() == 1, "a lower count stays"
    finally:
        torch.set_num_threads(threads)


def test_the_quota_of_a_systemd_units_own_cgroup_is_read(tmp_path: Path) -> None:
    """A unit's CPUQuota= sets cpu.max in its own cgroup below the root, which /proc/self/cgroup names; only the
    root's (a container's) had been read."""
    unit = tmp_path / "system.slice" / "pneumoscan.service"
    unit.mkdir(parents=True)
    (unit / "cpu.max").write_text("50000 100000\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    membership = tmp_path / "cgroup"
    membership.write_text("0::/system.slice/pneumoscan.service\n")
    assert cpus.cpu_quota(tmp_path, membership) == 0.5
    membership.write_text("0::/\n")  # a container's namespace: its own cgroup is the root
    assert cpus.cpu_quota(tmp_path, membership) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "system.slice").mkdir(parents=True)
    for folder, quota in ((v1 / "cpu", "-1"), (v1 / "cpu" / "system.slice", "150000")):
        (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (folder / "cpu.cfs_period_us").write_text("100000\n")
    membership.write_text("9:name=systemd:/\n4:cpu,cpuacct:/system.slice\n")
    assert cpus.cpu_quota(v1, membership) == 1.5


def test_look_up_option_guesses_a_name_two_sources_share_once() -> None:
    """The model choices are the registry's and timm's names, which share efficientnet_lite0: one guess each."""
    with pytest.raises(ValueError) as e:
        look_up_option("efficientnet_lte0", ["efficientnet_lite0", "efficientnet_lite0", "efficientnet_lite4"],
                       "model")
    assert "did you mean 'efficientnet_lite0' or 'efficientnet_lite4'?" in str(e.value), e.value
    assert "(choose from efficientnet_lite0, efficientnet_lite4)" in str(e.value)
