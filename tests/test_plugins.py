"""A site's plugin, as docs/development.md tells an ML engineer to write one: a task on the same films with names of
its own, a second stage that follows pneumonia with classes other than bacteria and virus, and a small model. It is
used through every route (the Python calls, the command line through PNEUMOSCAN_PLUGINS, the service), and its
bundles are refused with what to import, in every route, by a process that has not imported it."""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from pneumoscan import cli
from pneumoscan.core.digests import json_sha256
from pneumoscan.data import tasks
from pneumoscan.data.decode import read_gray
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.evaluation.rethreshold import rethreshold
from pneumoscan.inference.explain import explain_array
from pneumoscan.inference.export import ONNX_NAME, export_onnx
from pneumoscan.inference.onnx_runtime import INT8_NAME, read_sidecar
from pneumoscan.inference.predict import Predictor, alone_warning, predict_paths
from pneumoscan.models import PLUGINS_ENV, registry
from pneumoscan.models.bundle import load_bundle, save_bundle
from pneumoscan.models.card import CARD, CHECKSUM, BundleCard, load_card, save_card
from pneumoscan.models.ensemble_net import EnsembleNet, Member
from pneumoscan.serving.app import create_app
from pneumoscan.training.ensemble import build_ensemble
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.quantize import quantize_bundle
from tests.builders import as_run_split

PLUGIN = "pneumoscan_site_plugin"  # the module's name, importable once its folder is on sys.path
PLUGIN_SOURCE = '''
"""A site's tasks and model."""
from torch import nn

from pneumoscan.data.layouts import Record
from pneumoscan.data.tasks import register_task
from pneumoscan.models.registry import register


@register_task("opacity", classes=("clear", "opacity"), positive="opacity")
def opacity(record: Record) -> int:
    return int(record.label == "PNEUMONIA")


@register_task("typicality", classes=("typical", "atypical"), positive="atypical",
               follows={"pneumonia": "PNEUMONIA", "opacity": "opacity"})
def typicality(record: Record) -> int | None:
    if record.label != "PNEUMONIA" or not record.subtype:
        return None
    return int(record.subtype == "virus")


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.features(x))

    def get_classifier(self) -> nn.Module:
        return self.head


@register("tiny_net", mean=0.5, std=0.25)
def tiny_net(num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> nn.Module:
    return TinyNet(num_classes, in_chans)
'''
NOT_REGISTERED = "is not registered in this process: import the module that registers it first"


@pytest.fixture(scope="module")
def plugin_dir(module_tmp: Callable[[str], Path]) -> Iterator[Path]:
    """The plugin as a module of its own, imported here as a script would import it; the registries are put back as
    they were after this file's tests, for the tests that list every registered name."""
    folder = module_tmp("plugin")
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())
        patch.setattr(tasks, "_TASKS", tasks._TASKS.copy())
        patch.syspath_prepend(str(folder))
        importlib.import_module(PLUGIN)
        yield folder
        sys.modules.pop(PLUGIN, None)


def _train(data: Path, out: Path, task: str, model: str) -> Path:
    """A tiny run of the plugin's task through the command line, as a user's script runs it."""
    assert cli.main(["-q", "train", "--data", str(data), "--out", str(out), "--task", task, "--model", model,
                     "--no-pretrained", "--image-size", "32", "--epochs", "2", "--batch-size", "8",
                     "--set", "val_fraction=0.25"]) == 0  # fmt: skip
    return out / "bundle"


@pytest.fixture(scope="module")
def opacity_bundle(plugin_dir: Path, tiny_dataset: Path, module_tmp: Callable[[str], Path]) -> Path:
    """The plugin's first-stage task (the pneumonia labels under names of its own), trained as tiny_bundle is."""
    return _train(tiny_dataset, module_tmp("run-opacity"), "opacity", "simple_cnn")


@pytest.fixture(scope="module")
def typicality_bundle(plugin_dir: Path, tiny_dataset: Path, module_tmp: Callable[[str], Path]) -> Path:
    """The plugin's second stage, on the plugin's model."""
    return _train(tiny_dataset, module_tmp("run-typicality"), "typicality", "tiny_net")


def _bundle(directory: Path, task: str, classes: tuple[str, str], model: str = "simple_cnn", seed: int = 0) -> Path:
    """An untrained bundle of a task, with fixed random weights: for refusals that come before any film is read."""
    torch.manual_seed(seed)
    net = registry.create(model, num_classes=2)
    return save_bundle(directory, net, BundleCard(model, task, list(classes), classes[1], 32, "squash", 0.5, 0.25))


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_a_plugin_second_stage_is_reported_under_its_own_names(
    tiny_bundle: Path, opacity_bundle: Path, typicality_bundle: Path, tiny_dataset: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """predict named every second stage's probability etiology_probability_virus: a plugin second stage's
    P(atypical) read as P(virus). Its columns are named from its task, in CSV and JSON, after a built-in first stage
    and after the plugin's own; the service answers with the stage's task, classes and positive class."""
    films = tiny_dataset / "test"
    card = load_card(typicality_bundle)
    fields = ["typicality_probability_atypical", "typicality_label", "typicality_threshold",
              "typicality_near_threshold", "typicality_model_id", "typicality_model_version"]
    for first, handoff in ((tiny_bundle, "PNEUMONIA"), (opacity_bundle, "opacity")):
        assert cli.main(["-q", "predict", str(first), str(films), "--etiology", str(typicality_bundle)]) == 0
        text = capsys.readouterr().out
        header = text.splitlines()[0].split(",")
        assert header[header.index("near_threshold") + 1:][:6] == fields and "etiology" not in text, header
        rows = _csv_rows(text)
        called = [row for row in rows if row["label"] == handoff]
        assert called and all(row["typicality_label"] in ("typical", "atypical") for row in called)
        assert all(row["typicality_label"] == ("atypical" if float(row["typicality_probability_atypical"])
                                               >= card.threshold else "typical") for row in called)
        assert all(float(row["typicality_threshold"]) == card.threshold for row in called)
        assert all(row["typicality_label"] == "" for row in rows if row["label"] != handoff)
    out = tmp_path / "results.json"
    assert cli.main(["-q", "predict", str(tiny_bundle), str(films), "--etiology", str(typicality_bundle), "--out",
                     str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())
    assert all(set(fields) <= row.keys() and not any(k.startswith("etiology") for k in row) for row in rows)

    with TestClient(create_app(opacity_bundle, etiology=typicality_bundle, backend="onnx")) as client:
        assert client.get("/v1/model").json()["etiology"]["classes"] == ["typical", "atypical"]
        answers = [client.post("/v1/predict", files={"file": ("x.jpeg", film.read_bytes(), "image/jpeg")}).json()
                   for film in sorted((films / "PNEUMONIA").iterdir())]
    stages = [body["etiology"] for body in answers if body["label"] == "opacity"]
    assert stages and all(body["etiology"] is None for body in answers if body["label"] != "opacity")
    assert all((stage["task"], stage["positive"]) == ("typicality", "atypical") for stage in stages)
    assert all(stage["label"] in ("typical", "atypical") and set(stage["probabilities"]) == {"typical", "atypical"}
               for stage in stages)


def test_a_plugin_second_stage_alone_says_what_it_assumes_in_the_words_of_the_stages_it_follows(
    typicality_bundle: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every second stage run alone warned that it "assumes the film shows pneumonia and cannot call it normal",
    whatever stages it follows: a stage after the plugin's opacity model too. The warning is worded from the task's
    follows and those stages' calls, in predict's rows and the service's answers; a first stage whose task is not
    registered here is named without the call it cannot give (etiology's words: tests/test_tasks.py)."""
    said = ("this typicality model assumes the film shows pneumonia or opacity and cannot call it normal or clear: run "
            "it as the second stage after a pneumonia or opacity model (--etiology)")
    assert alone_warning("typicality") == said
    films = sorted((tiny_dataset / "test" / "NORMAL").iterdir())[:2]
    assert [row["warnings"][-1] for row in predict_paths(typicality_bundle, films)] == [said, said]
    with TestClient(create_app(typicality_bundle, backend="onnx")) as client:
        body = client.post("/v1/predict", files={"file": ("x.jpeg", films[0].read_bytes(), "image/jpeg")}).json()
    assert body["warnings"][-1] == said

    monkeypatch.setattr(tasks, "_TASKS", tasks._TASKS.copy())
    tasks.register_task("extent", classes=("focal", "diffuse"), positive="diffuse", follows={"opacity": "opacity"})(len)
    assert alone_warning("extent") == ("this extent model assumes the film shows opacity and cannot call it clear: "
                                       "run it as the second stage after an opacity model (--etiology)")
    _unregistered(monkeypatch, "opacity")
    assert alone_warning("extent") == ("this extent model assumes the film shows opacity: run it as the second stage "
                                       "after an opacity model (--etiology)")


def test_a_plugin_task_and_model_go_through_every_python_route(
    opacity_bundle: Path, typicality_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """evaluate, threshold, export (ONNX and INT8), predict with the INT8 model and Grad-CAM of the plugin's model,
    with the task's own class names wherever a class is named."""
    split = opacity_bundle.parent / "split.csv"
    metrics = evaluate(opacity_bundle, tiny_dataset, "test", tmp_path / "eval", backend="onnx")
    assert metrics["positive_class"] == "opacity" and metrics["n"] == 16
    assert {row["label"] for row in _csv_rows((tmp_path / "eval" / "predictions.csv").read_text())} == {"clear",
                                                                                                          "opacity"}
    card = rethreshold(opacity_bundle, split, tmp_path / "youden", split="val")
    assert card.task == "opacity" and card.threshold_records

    bundle = shutil.copytree(opacity_bundle, tmp_path / "bundle")
    export_onnx(bundle, tmp_path / "copy.onnx")
    assert read_sidecar(tmp_path / "copy.onnx", strict=True)["positive_probability"] == "P(opacity)"
    quantize_bundle(bundle, split)
    assert (bundle / INT8_NAME).exists()
    rows = predict_paths(bundle, tiny_dataset / "test", backend="onnx-int8")
    assert {row["label"] for row in rows} <= {"clear", "opacity"} and len(rows) == 16

    predictor = Predictor(typicality_bundle, backend="onnx")
    film = read_gray(next((tiny_dataset / "test" / "PNEUMONIA").iterdir()))
    cam = explain_array(predictor, film)
    assert cam.shape == film.shape and np.isfinite(cam).all() and cam.max() > cam.min()


def _unregistered(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """This process as one that never imported the plugin: its tasks and model unknown here."""
    for name in names:
        module, attribute = (tasks, "_TASKS") if name in tasks._TASKS else (registry, "_REGISTRY")
        without = getattr(module, attribute).copy()
        without.remove(name)
        monkeypatch.setattr(module, attribute, without)


ROUTES = {
    "predict": ["predict", "{opacity}", "{films}"],
    "predict --etiology": ["predict", "{pneumonia}", "{films}", "--etiology", "{typicality}"],
    "predict --fhir": ["predict", "{opacity}", "{films}", "--fhir", "{out}"],
    "evaluate": ["evaluate", "{opacity}", "{data}", "--split", "test", "--out", "{out}"],
    "evaluate --etiology": ["evaluate", "{pneumonia}", "{data}", "--split", "test", "--out", "{out}", "--etiology",
                            "{typicality}"],
    "threshold": ["threshold", "{opacity}", "{data}", "--split", "train", "--out", "{out}", "--youden"],
    "export": ["export", "{opacity}", "--out", "{out}.onnx"],
    "export --int8": ["export", "{exported}", "--int8", "--data", "{data}"],
    "ensemble": ["ensemble", "{opacity}", "{opacity2}", "--out", "{out}", "--data", "{data}", "--split", "train"],
    "train --init": ["train", "--data", "{data}", "--out", "{out}", "--model", "simple_cnn", "--image-size", "32",
                     "--epochs", "1", "--init", "{initial}"],
}


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_refuses_a_bundle_whose_task_is_not_imported_saying_what_to_import(
    route: str, plugin_dir: Path, tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:
    """Only predict and serve said what to import: export, ensemble and a second stage said "unknown task
    'opacity' (choose from ...)", as if the user had misspelt an option never given (export after writing the ONNX
    model). Every route now refuses the bundle before it writes or reads anything, naming it, its task and what to
    do, on the command line by PNEUMOSCAN_PLUGINS."""
    opacity = _bundle(tmp_path / "opacity", "opacity", ("clear", "opacity"))
    exported = _bundle(tmp_path / "exported", "opacity", ("clear", "opacity"))
    export_onnx(exported)
    bundles = {"opacity": opacity, "opacity2": _bundle(tmp_path / "opacity2", "opacity", ("clear", "opacity"), seed=1),
               "typicality": _bundle(tmp_path / "typicality", "typicality", ("typical", "atypical")),
               "exported": exported, "pneumonia": tiny_bundle,
               # in a run folder: the films its split.csv says chose its numbers are those of its task
               "initial": _bundle(tmp_path / "run" / "bundle", "opacity", ("clear", "opacity"))}
    shutil.copy(tiny_bundle.parent / "split.csv", tmp_path / "run")
    as_run_split(bundles["initial"])
    _unregistered(monkeypatch, "opacity", "typicality")
    refused = bundles[{"predict --etiology": "typicality", "evaluate --etiology": "typicality",
                       "export --int8": "exported", "train --init": "initial"}.get(route, "opacity")]
    argv = [arg.format(**bundles, films=tiny_dataset / "test", data=tiny_dataset, out=tmp_path / "out")
            for arg in ROUTES[route]]
    assert cli.main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    task = load_card(refused).task
    assert err.startswith(f"pneumoscan {argv[0]}: error: ") and "\n" not in err, err
    assert err.endswith(f"{refused}: its task {task!r} {NOT_REGISTERED} (a task of your own: docs/development.md, "
                        f"Adding a task; on the command line, {PLUGINS_ENV}=MODULE)"), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.onnx").exists()
    assert not (opacity / ONNX_NAME).exists()


def test_the_service_refuses_a_second_stage_whose_task_is_not_imported(
    plugin_dir: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve --etiology said "unknown task 'typicality' (choose from ...)"."""
    second = _bundle(tmp_path / "typicality", "typicality", ("typical", "atypical"))
    _unregistered(monkeypatch, "typicality")
    with pytest.raises(ValueError, match=f"^{second}: its task 'typicality' {NOT_REGISTERED}"):
        create_app(tiny_bundle, etiology=second, backend="onnx")


def test_an_ensemble_whose_member_model_is_not_imported_says_what_to_import(
    plugin_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """An ensemble with a member of the plugin's model, in a process without the plugin: its torch model (the torch
    backend, Grad-CAM, export) was refused as "unknown model 'tiny_net'; did you mean 'tinynet_e' ...", a timm
    model it never was. ONNX scoring needs no model code and goes on."""
    torch.manual_seed(0)
    nets = [registry.create("tiny_net"), registry.create("simple_cnn")]
    members = [{"model": name, "model_kwargs": {}, "size": 32, "mean": 0.5, "std": 0.25, "temperature": 1.0,
                "source": str(tmp_path / name)} for name in ("tiny_net", "simple_cnn")]
    card = BundleCard("ensemble", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 32, "squash", 0.0, 1.0,
                      model_kwargs={"members": members})
    bundle = save_bundle(tmp_path / "ensemble", EnsembleNet([Member(n, 32, 0.5, 0.25, 1.0, 32) for n in nets]), card)
    export_onnx(bundle)
    _unregistered(monkeypatch, "tiny_net")
    expected = (f"{bundle}: ensemble member 1 of 2 ({tmp_path / 'tiny_net'}): its model 'tiny_net' {NOT_REGISTERED} "
                "(a model of your own: docs/development.md, Adding a model; on the command line, "
                f"{PLUGINS_ENV}=MODULE)")
    with pytest.raises(ValueError) as refused:
        load_bundle(bundle)
    assert str(refused.value) == expected
    films = str(tiny_dataset / "test" / "NORMAL")
    assert cli.main(["-q", "predict", str(bundle), films, "--backend", "torch"]) == 2
    assert capsys.readouterr().err == f"pneumoscan predict: error: {expected}\n"
    assert len(predict_paths(bundle, films, backend="onnx")) == 8


def test_an_ensemble_of_a_plugin_task_is_refused_before_its_members_are_compared(
    plugin_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_ensemble's own lookup of the members' task: a copy of a member was refused as a copy, never saying that
    the task itself is not there."""
    first = _bundle(tmp_path / "a", "opacity", ("clear", "opacity"))
    copy = shutil.copytree(first, tmp_path / "b")
    _unregistered(monkeypatch, "opacity")
    with pytest.raises(ValueError, match=f"^{first}: its task 'opacity' {NOT_REGISTERED}"):
        build_ensemble([first, copy], tmp_path / "out", tiny_dataset, "train")


def test_the_command_line_imports_the_modules_PNEUMOSCAN_PLUGINS_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, request: pytest.FixtureRequest
) -> None:
    """`pneumoscan` had no way to import a plugin: a task or model of one's own reached only a script that calls
    pneumoscan.cli.main. A module that cannot be imported is one line naming it and why."""
    (tmp_path / "site_one.py").write_text("from pneumoscan.models.registry import register\n"
                                          "register('site_one_net', mean=0.5, std=0.25)(lambda **kw: None)\n")
    (tmp_path / "site_broken.py").write_text("from pneumoscan.data.tasks import register_task\n"
                                             "register_task('bad', classes=('a', 'a'), positive='a')(len)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())  # the registries as they were, afterwards
    monkeypatch.setattr(tasks, "_TASKS", tasks._TASKS.copy())
    request.addfinalizer(lambda: sys.modules.pop("site_one", None))
    monkeypatch.setenv(PLUGINS_ENV, " site_one , ")
    assert cli.main(["models"]) == 0
    assert "site_one_net" in capsys.readouterr().out.split()
    for name, why in (("site_missing", "ModuleNotFoundError: No module named 'site_missing'"),
                      ("site_broken", "ValueError: task 'bad': needs two or more distinct classes")):
        monkeypatch.setenv(PLUGINS_ENV, f"site_one,{name}")
        assert cli.main(["models"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pneumoscan: error: {PLUGINS_ENV} names {name!r}, which cannot be imported: {why}")
        assert err.count("\n") == 1, err


def test_what_a_plugin_warns_of_as_it_registers_comes_out_as_every_other_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, request: pytest.FixtureRequest
) -> None:
    """The plugins were imported before the command line configured logging: a built-in model replaced was said bare,
    without the level the other lines carry. It has it, and -q (read before the plugins) hides their information."""
    (tmp_path / "site_again.py").write_text("import logging\n"
                                            "from pneumoscan.models.registry import register\n"
                                            "register('simple_cnn', mean=0.5, std=0.25)(lambda **kw: None)\n"
                                            "logging.getLogger('pneumoscan.site').info('site models loaded')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    built_in = registry._REGISTRY.copy()
    monkeypatch.setenv(PLUGINS_ENV, "site_again")
    replaced = "WARNING  model 'simple_cnn' of pneumoscan.models.registry is replaced by site_again's: "
    for argv, said in ((["models"], [replaced, "INFO     site models loaded"]), (["models", "-q"], [replaced])):
        # each a new process's: the built-in simple_cnn, the plugin imported (the built-in one back afterwards)
        monkeypatch.setattr(registry, "_REGISTRY", built_in.copy())
        sys.modules.pop("site_again", None)
        assert cli.main(argv) == 0
        err = capsys.readouterr().err.splitlines()
        assert [line[:len(start)] for line, start in zip(err, said)] == said and len(err) == len(said), err
    request.addfinalizer(lambda: sys.modules.pop("site_again", None))


@pytest.mark.parametrize("given, fix", [
    ("site_elsewhere", "install it, or put the folder that holds it on PYTHONPATH"),
    ("site/site_elsewhere.py", "give the module's name (site_elsewhere), not its file, and put its folder on "
                               "PYTHONPATH"),
    ("site_elsewhere.py", "give the module's name (site_elsewhere), not its file, and put its folder on PYTHONPATH"),
    ("site_needs", None),
])
def test_a_plugin_module_not_found_says_how_to_make_it_importable(
    given: str, fix: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    """A module not on the path, or given as its file (as a shell completes it), said only Python's "No module named
    'site/site_elsewhere'", not what to do. A module that is there but imports a package that is not keeps
    Python's words alone: that package is what is missing, not the path to the module."""
    (tmp_path / "site_needs.py").write_text("import site_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    request.addfinalizer(lambda: sys.modules.pop("site_needs", None))
    monkeypatch.setenv(PLUGINS_ENV, given)
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err
    missing = "site_missing_dependency" if fix is None else given.removesuffix(".py")
    said = (f"pneumoscan: error: {PLUGINS_ENV} names {given!r}, which cannot be imported: ModuleNotFoundError: No "
            f"module named {missing!r}")
    assert err.startswith(said) and err.count("\n") == 1, err
    assert err.rstrip().endswith(f"; {fix}" if fix else repr(missing)), err


def test_a_task_or_model_name_not_registered_here_says_how_one_of_your_own_is(
    plugin_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`train --task opacity`, a run's config.yaml naming it, or `--model tiny_net` without the plugin listed the
    built-in names only (the model: "did you mean 'tinynet_e'", a timm model), never that one's own needs its module
    imported."""
    _unregistered(monkeypatch, "opacity", "tiny_net")
    own = f"; or one of your own, its module imported first: on the command line, {PLUGINS_ENV}=MODULE)"
    with pytest.raises(SystemExit):
        cli.main(["train", "--data", "DATA", "--out", "RUN", "--task", "opacity"])
    err = capsys.readouterr().err
    assert "argument --task: unknown task 'opacity' (choose from " in err and own in err, err
    with pytest.raises(ValueError, match=r"^unknown task 'opacity' \(choose from .*" + re.escape(own) + "$"):
        TrainConfig(task="opacity")
    with pytest.raises(ValueError, match=r"^unknown model 'tiny_net'; did you mean .*" + re.escape(own) + "$"):
        registry.create("tiny_net")


# the command line twice in one fresh interpreter (a second one cost its start and torch's import): without
# PNEUMOSCAN_PLUGINS, then with it, which the command reads each time it starts; each run's status and stderr, the
# second's stdout
TWICE = """import contextlib, io, json, os, sys
from pneumoscan.cli import main
said = []
for plugins in (None, sys.argv[1]):
    if plugins:
        os.environ[sys.argv[2]] = plugins
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        status = main(sys.argv[3:])
    said.append([status, out.getvalue(), err.getvalue()])
print(json.dumps(said))
"""


def test_a_fresh_pneumoscan_process_reads_a_plugin_bundle_through_PNEUMOSCAN_PLUGINS(
    plugin_dir: Path, opacity_bundle: Path, typicality_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """The command line in a fresh process, as a user runs it: without the variable it refuses the bundles saying
    what to do, with it it reads them (the plugin's first stage, then its second)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(plugin_dir), os.environ.get("PYTHONPATH"))))}
    env.pop(PLUGINS_ENV, None)
    argv = ["-q", "predict", str(opacity_bundle), str(tiny_dataset / "test"), "--etiology", str(typicality_bundle)]
    ran = subprocess.run([sys.executable, "-c", TWICE, PLUGIN, PLUGINS_ENV, *argv], capture_output=True, text=True,
                         env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr
    (status, _, err), (done, out, done_err) = json.loads(ran.stdout.splitlines()[-1])
    assert status == 2 and f"{PLUGINS_ENV}={PLUGIN})" in err, err
    assert done == 0, done_err
    rows = _csv_rows(out)
    assert len(rows) == 16 and {row["label"] for row in rows} <= {"clear", "opacity"}
    assert {row["typicality_label"] for row in rows} - {""} <= {"typical", "atypical"}


def test_a_plugin_bundle_records_its_modules_and_a_process_without_them_is_told_which_to_import(
    opacity_bundle: Path, typicality_bundle: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A bundle trained with the plugin's task or model recorded nothing of the plugin: a process without it was
    told `PNEUMOSCAN_PLUGINS=MODULE`, to guess which module. The card records the module that registered its task and
    model (MODEL_CARD.md says it), each refusal names it, and a card older than the record (no plugins field, sealed
    as an older pneumoscan sealed it) loads and keeps the words that say how to find one's own; a record that names
    no module (a command in its place, sealed again) is refused."""
    assert load_card(opacity_bundle).plugins == {"task": {"opacity": PLUGIN}}
    assert load_card(typicality_bundle).plugins == {"task": {"typicality": PLUGIN}, "model": {"tiny_net": PLUGIN}}
    assert f"`{PLUGINS_ENV}={PLUGIN}`" in (typicality_bundle / "MODEL_CARD.md").read_text()
    older = shutil.copytree(opacity_bundle, tmp_path / "older")
    fields = json.loads((older / CARD).read_text())
    del fields["plugins"], fields[CHECKSUM]
    (older / CARD).write_text(json.dumps({**fields, CHECKSUM: json_sha256(fields)}))
    _unregistered(monkeypatch, "opacity", "typicality", "tiny_net")
    advice = (f"import {PLUGIN}, the module that registered it where the bundle was made, first (on the command line, "
              f"{PLUGINS_ENV}={PLUGIN})")
    for bundle, said in ((opacity_bundle, advice), (older, "import the module that registers it first (a task of your "
                                                           f"own: docs/development.md, Adding a task; on the command "
                                                           f"line, {PLUGINS_ENV}=MODULE)")):
        assert cli.main(["-q", "evaluate", str(bundle), str(tiny_dataset), "--split", "test", "--out",
                         str(tmp_path / "e")]) == 2
        assert capsys.readouterr().err == (f"pneumoscan evaluate: error: {bundle}: its task 'opacity' is not "
                                           f"registered in this process: {said}\n")
    with pytest.raises(ValueError) as refused:
        load_bundle(typicality_bundle)
    assert str(refused.value) == (f"{typicality_bundle}: its model 'tiny_net' is not registered in this process: "
                                  f"{advice}")
    edited = shutil.copytree(opacity_bundle, tmp_path / "edited")
    save_card(edited, dataclasses.replace(load_card(edited), plugins={"task": {"opacity": "x; rm -rf ~"}}))
    with pytest.raises(ValueError, match=r"plugins.task records 'x; rm -rf ~', not a module's name"):
        load_card(edited)
