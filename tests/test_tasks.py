"""Tasks are plugins: the built-in ones answer through their task object, and a task registered here, in the test
file alone, trains, evaluates, predicts (also as a second stage) and is served without any change to the package."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pneumoscan import cli
from pneumoscan.data import tasks as tasks_module
from pneumoscan.data.layouts import Record
from pneumoscan.data.tasks import Task, get_task, list_tasks, register_task
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.inference.predict import Predictor, alone_warning, check_stages, predict_paths
from pneumoscan.models.card import load_card, save_card
from pneumoscan.serving.app import create_app

TOY = "toy_viral"  # viral pneumonia vs every other film: a rule over the existing records


@register_task(TOY, classes=("other", "viral"), positive="viral", follows={"pneumonia": "PNEUMONIA"})
def _toy(r: Record) -> int:
    return int(r.subtype == "virus")


def test_built_in_tasks_answer_through_the_task_object() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    multiclass, etiology = get_task("multiclass"), get_task("etiology")
    assert np.allclose(multiclass.positive_probability(probs), [0.3, 0.9])
    assert np.allclose(etiology.positive_probability(probs[:, :2]), [0.2, 0.3])
    assert multiclass.cam_classes == (1, 2) and etiology.cam_classes == (1,)  # what the threshold reads
    assert (multiclass.positive_formula, etiology.positive_formula) == ("1 - P(normal)", "P(virus)")
    assert set(multiclass.extra_metrics(np.array([0, 1, 2, 0, 1, 2]), np.tile(probs, (3, 1)))) == {"multiclass"}
    assert etiology.extra_metrics(np.array([0, 1]), probs[:, :2]) == {}
    assert check_stages("pneumonia", "etiology") == "PNEUMONIA"
    with pytest.raises(ValueError, match="the etiology task follows pneumonia, not etiology$"):
        check_stages("etiology", "etiology")
    with pytest.raises(ValueError, match="the pneumonia task follows no other stage, not etiology; the bundles look "
                                         "swapped: give the pneumonia bundle first and the etiology bundle as "
                                         r"etiology \(--etiology\)$"):
        check_stages("etiology", "pneumonia")
    assert {"pneumonia", "etiology", "multiclass", TOY} <= set(list_tasks())


MULTICLASS_THEN_ETIOLOGY = ("etiology (--etiology) after a multiclass bundle: a multiclass model already tells "
                            "bacteria and virus apart, and a second stage would add another answer to its own; use a "
                            "pneumonia bundle as the first stage, or the multiclass bundle alone")


def test_a_multiclass_first_stage_with_an_etiology_second_is_refused_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """A multiclass answer carries its own P(bacteria) and P(virus): an etiology stage after it gave a second,
    possibly contrary, etiology in the same answer (the page showed the second's). predict and serve refuse the pair
    before any film is read, with one line that says why and what to do; an etiology model alone is told to follow a
    pneumonia model only."""
    from tests.test_predict import make_bundle

    three = make_bundle(tmp_path / "mc", "multiclass", ("normal", "bacteria", "virus"), "pneumonia")
    second = make_bundle(tmp_path / "et", "etiology", ("bacteria", "virus"), "virus")
    with pytest.raises(ValueError) as refused:
        check_stages("multiclass", "etiology")
    assert str(refused.value) == MULTICLASS_THEN_ETIOLOGY
    film = tmp_path / "film.png"  # not there, and never looked for: the pair is refused first
    assert cli.main(["predict", str(three), str(film), "--etiology", str(second)]) == 2
    assert capsys.readouterr().err == f"pneumoscan predict: error: {MULTICLASS_THEN_ETIOLOGY}\n"
    caplog.set_level(logging.INFO, logger="pneumoscan")
    with pytest.raises(ValueError, match=f"^{re.escape(MULTICLASS_THEN_ETIOLOGY)}$"):
        create_app(three, etiology=second, backend="onnx")
    assert not [m for m in caplog.messages if "exporting" in m]  # refused before either model was built
    with pytest.raises(ValueError, match=f"^{re.escape(MULTICLASS_THEN_ETIOLOGY)}$"):
        evaluate(three, tmp_path / "no-such-data", etiology=second)  # refused before its films are looked for
    assert alone_warning("etiology").endswith("run it as the second stage after a pneumonia model (--etiology)")


def test_a_second_stage_following_a_call_the_first_never_gives_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A task registered with ``follows={"pneumonia": "Pneumonia"}`` (the pneumonia model calls PNEUMONIA) was
    never handed a film: every row of predict gave its reading as None, as for films the first stage keeps, with
    no word of the misspelling. The pair is refused from the cards, naming the first stage's calls."""
    from tests.test_predict import make_bundle

    monkeypatch.setattr(tasks_module, "_TASKS", tasks_module._TASKS.copy())
    register_task("misspelt", classes=("other", "viral"), positive="viral", follows={"pneumonia": "Pneumonia"})(_toy)
    first = make_bundle(tmp_path / "p")
    second = make_bundle(tmp_path / "m", "misspelt", ("other", "viral"), "viral")
    said = ("the misspelt task follows pneumonia on the call 'Pneumonia', which a pneumonia model never gives (it "
            "calls 'NORMAL' or 'PNEUMONIA')")
    with pytest.raises(ValueError, match=f"^{re.escape(said)}"):
        predict_paths(first, [tmp_path / "film.png"], etiology=second)
    with pytest.raises(ValueError, match=f"^{re.escape(said)}"):
        evaluate(first, tmp_path / "no-such-data", etiology=second)
    assert check_stages("pneumonia", "etiology") == "PNEUMONIA"


class _FirstClassCam(Task):
    @property
    def cam_classes(self) -> tuple[int, ...]:
        return (0,)


@register_task("toy-first-class-cam", classes=("other", "viral"), positive="viral", cls=_FirstClassCam)
def _toy_cam(record: Record) -> int | None:
    return 1 if record.subtype == "virus" else 0


def test_a_task_subclass_registered_with_cls_answers_with_its_own_rules() -> None:
    task = get_task("toy-first-class-cam")
    assert isinstance(task, _FirstClassCam) and task.cam_classes == (0,)
    assert get_task(TOY).cam_classes == (1,)


def test_a_second_task_of_a_name_replaces_it_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As a model does (timm's way): a notebook cell that registers a task runs again; it raised "already
    registered". The built-in task replaced here is put back when the test ends."""
    monkeypatch.setattr(tasks_module, "_TASKS", tasks_module._TASKS.copy())
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.tasks"):
        register_task("pneumonia", classes=("a", "b"), positive="b")(_toy)
    assert caplog.messages == [f"task 'pneumonia' of pneumoscan.data.tasks is replaced by {__name__}'s: whatever "
                               "names 'pneumonia' (a bundle made before included) gets this one; give yours a name "
                               "of its own unless that is meant"]
    register_task("pneumonia", classes=("a", "b"), positive="b")(_toy)  # a notebook cell run again
    assert caplog.messages[-1] == "task 'pneumonia' was already registered: this registration replaces it"
    assert get_task("pneumonia").classes == ("a", "b") and list_tasks().count("pneumonia") == 1


def test_registration_refuses_incoherent_tasks() -> None:
    with pytest.raises(ValueError, match="positive class is its second class"):
        Task("bad", ("yes", "no"), "yes", _toy)
    with pytest.raises(ValueError, match="two or more distinct classes"):
        Task("bad", ("a", "a"), "a", _toy)


@pytest.fixture(scope="module")
def toy_bundle(tiny_dataset: Path, module_tmp: Callable[[str], Path]) -> Path:
    """The toy task trained through the command line (its --task choices are read from the registry)."""
    run = module_tmp("run-toy")
    assert cli.main(["-q", "train", "--data", str(tiny_dataset), "--out", str(run), "--task", TOY, "--model",
                     "simple_cnn", "--no-pretrained", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                     "--set", "val_fraction=0.25"]) == 0  # fmt: skip
    return run / "bundle"


def test_a_task_registered_outside_the_package_trains_evaluates_predicts_and_serves(
    toy_bundle: Path, tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    card = load_card(toy_bundle)
    assert (card.task, card.classes, card.positive) == (TOY, ["other", "viral"], "viral")

    metrics = evaluate(toy_bundle, tiny_dataset, "test", tmp_path / "eval")
    test_films = sorted((tiny_dataset / "test").rglob("*.jpeg"))
    n_viral = sum("_virus_" in p.name for p in test_films)
    assert metrics["n"] == len(test_films) and metrics["n_positive"] == n_viral > 0  # every film is in the toy task
    assert metrics["positive_class"] == "viral" and "multiclass" not in metrics

    rows = predict_paths(toy_bundle, test_films[:4])
    assert all(row["label"] in ("other", "viral") for row in rows)
    assert all(row["label"] == ("viral" if row["probability"] >= card.threshold else "other") for row in rows)

    # as a second stage: it reads the films the pneumonia model calls PNEUMONIA, as its `follows` says, reported under
    # its own name
    chained = predict_paths(tiny_bundle, test_films, etiology=toy_bundle)
    called = [row for row in chained if row["label"] == "PNEUMONIA"]
    assert called and all(row[f"{TOY}_label"] in ("other", "viral") for row in called)
    assert all(row[f"{TOY}_label"] is None for row in chained if row["label"] != "PNEUMONIA")
    with pytest.raises(ValueError, match=f"the {TOY} task follows pneumonia, not etiology"):
        check_stages("etiology", TOY)

    buf = io.BytesIO()
    Image.open(test_films[0]).save(buf, format="PNG")
    with TestClient(create_app(toy_bundle)) as client:
        info = client.get("/v1/model").json()
        assert (info["task"], info["classes"], info["positive"]) == (TOY, ["other", "viral"], "viral")
        body = client.post("/v1/predict", files={"file": ("x.png", buf.getvalue(), "image/png")}).json()
        assert body["label"] in ("other", "viral") and set(body["probabilities"]) == {"other", "viral"}


def test_a_bundle_of_a_task_not_registered_here_says_what_to_import(tiny_bundle: Path, tmp_path: Path) -> None:
    """A fresh `predict` on a bundle of a task registered in a notebook said "unknown task 'viral' (choose from
    ...)", as if the user had misspelt an option they never gave."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, task="viral_of_a_notebook",
                                          train_config={**card.train_config, "task": "viral_of_a_notebook"}))
    with pytest.raises(ValueError, match=f"^{bundle}: its task 'viral_of_a_notebook' is not registered in this "
                                         r"process: import the module that registers it first \(a task of your own"):
        Predictor(bundle, backend="onnx")


def test_a_rule_that_raises_is_refused_naming_the_task_the_film_and_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A site's rule with a slip (a KeyError on a label it did not expect) ended train in a traceback; it is refused
    where the target is made, naming the task, the rule, the film and the error."""
    monkeypatch.setattr(tasks_module, "_TASKS", tasks_module._TASKS.copy())

    def by_label(record: Record) -> int:
        return {"NORMAL": 0}[record.label]

    register_task("slip", classes=("other", "viral"), positive="viral")(by_label)
    said = (f"task 'slip': its rule {__name__}.{by_label.__qualname__} failed on /films/a.png: KeyError: 'PNEUMONIA'; "
            "mend the rule")
    with pytest.raises(ValueError, match=f"^{re.escape(said)}$"):
        tasks_module.select([Record("/films/a.png", "PNEUMONIA", "virus", "a")], get_task("slip"))


@pytest.mark.parametrize("value", [3, -2, 0.7, 1.0, "1"])
def test_a_rule_giving_no_class_index_is_refused_where_the_target_is_made(
    monkeypatch: pytest.MonkeyPatch, value: object
) -> None:
    """A rule's 3 or -2 for a two-class task was taken: the binary figures read 3 as positive and -2 as negative,
    and a float was cut to an index (0.7 -> 0), each a wrong label with no word. It is refused when the target is
    made, naming the task, the film and the value; an index of numpy's, a bool and None (not in the task) pass."""
    monkeypatch.setattr(tasks_module, "_TASKS", tasks_module._TASKS.copy())
    register_task("odd", classes=("other", "viral"), positive="viral")(
        lambda r: {"bad": value, "np": np.int64(1), "bool": True}.get(r.subtype))
    records = [Record(f"/films/{s}.png", "PNEUMONIA", s, s) for s in ("np", "bool", "none")]
    kept, targets = tasks_module.select(records, get_task("odd"))
    assert [r.subtype for r in kept] == ["np", "bool"] and targets.tolist() == [1, 1]
    with pytest.raises(ValueError, match=re.escape(f"task 'odd': its rule gave {value!r} for /films/bad.png: a target "
                                                   "is a class index from 0 to 1 (other, viral) or None")):
        tasks_module.select([*records, Record("/films/bad.png", "PNEUMONIA", "bad", "bad")], get_task("odd"))
