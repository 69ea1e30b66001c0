"""Knowledge distillation: students of a bundle or of cv runs' fold bundles, and the teachers they may not have."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumoscan.cli import main
from pneumoscan.core.metrics import softmax
from pneumoscan.data.layouts import KERMANY, discover, make_record, write_manifest
from pneumoscan.data.preprocess import preprocess
from pneumoscan.data.tasks import get_task
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.inference.export import export_onnx
from pneumoscan.inference.onnx_runtime import INT8_NAME
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.bundle import load_bundle, save_bundle
from pneumoscan.models.card import (CARD, SAMPLED_FROM, TEACHER_SAMPLES, bundle_checksums, load_card, sample_record,
                                   save_card)
from pneumoscan.training.config import TrainConfig, load_config
from pneumoscan.training.cv import cross_validate
from pneumoscan.training.distill import check_teachers, teacher_probabilities
from pneumoscan.training.distributed import setup_distributed
from pneumoscan.training.ensemble import build_ensemble
from pneumoscan.training.quantize import quantize_bundle
from pneumoscan.training.resume import config_changes
from pneumoscan.data.cache import data_checksum
from pneumoscan.training.train import load_data, preprocessed, selected_films, split_records, train
from tests.builders import Crash, copy_of_cv, crash_in_epoch, nudge_weights, trial_copy

TINY = ["--model", "simple_cnn", "--no-pretrained", "--image-size", "32", "--epochs", "1", "--batch-size", "8"]


@pytest.fixture
def teacher_cv(tiny_cv: tuple[Path, list[str]]) -> Path:
    """A finished two-fold cv whose fold bundles teach: the session's (tests that change it work on a copy)."""
    return tiny_cv[0]


def student_config(teacher_cv: Path, tmp_path: Path, **changes: object) -> TrainConfig:
    """A student validated on the validation films of the teacher's fold 0, trained on its training films but four,
    which only the teacher saw."""
    records = discover(teacher_cv / "split-fold-0.csv").records
    only_teacher = [r for r in records if r.split == "train"][:4]
    write_manifest([r for r in records if r not in only_teacher], tmp_path / "split.csv")
    write_manifest([dataclasses.replace(r, split="test") for r in only_teacher], tmp_path / "only-teacher.csv")
    return TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=1, batch_size=8,
                       split_csv=str(tmp_path / "split.csv"), teacher=[str(teacher_cv / "fold-0" / "bundle")],
                       distill_weight=0.25, **changes)


def test_the_teachers_target_is_the_softmax_of_their_mean_calibrated_logits(teacher_cv: Path) -> None:
    teachers = [str(teacher_cv / f"fold-{k}" / "bundle") for k in range(2)]
    paths = [r.path for r in discover(teacher_cv / "split-fold-0.csv").records]
    predictors = [Predictor(t) for t in teachers]  # torch, on films read without the cache
    probs = [p.probabilities(np.stack([preprocess(f, **p.card.spec.to_dict()) for f in paths])) for p in predictors]
    np.testing.assert_allclose(teacher_probabilities(teachers[:1], paths, paths, 16), probs[0], atol=1e-5)
    # averaging calibrated logits is averaging log-probabilities: each film's log-normaliser only shifts all classes
    expected = softmax(np.mean([np.log(p[1:]) for p in probs], axis=0))
    np.testing.assert_allclose(teacher_probabilities(teachers, paths[1:], paths, 16), expected, atol=1e-5)


def test_a_student_trains_on_mixed_targets(teacher_cv: Path, tmp_path: Path) -> None:
    cfg = student_config(teacher_cv, tmp_path)
    (tmp_path / "run").mkdir()
    records, ctx = split_records(cfg.split_csv, cfg)[0], setup_distributed()
    cache = preprocessed(records, cfg, ctx)
    task = get_task(cfg.task)
    data = load_data(records, cache, data_checksum(cache, records), cfg, task, ctx, tmp_path / "run",
                     selected_films(records, cache, task, ctx))
    rows = data.train_set.images[data.train_set.rows]
    teacher = Predictor(cfg.teacher[0], backend="onnx").probabilities(rows)
    hard = data.plain[0].targets
    np.testing.assert_allclose(data.train_set.targets, 0.75 * np.eye(2)[hard] + 0.25 * teacher, atol=1e-5)
    _, y = next(iter(data.train_loader))
    assert y.dtype.is_floating_point and y.shape == (8, 2)
    np.testing.assert_allclose(y.sum(1).numpy(), 1, atol=1e-6)
    assert data.val_set.targets.ndim == 1, "validation keeps the labels"


def test_a_students_teachers_training_films_are_its_own(tiny_dataset: Path, teacher_cv: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Refused as the student's own; once the teacher was trained again at its path, the student's check followed
    the new teacher's films (another split) and took them as new: the teacher is then said to be unknown.

    The same student shows its record of its teachers read as it starts: the teachers' checksums (teacher_cards) and
    samples of patients (teacher_samples) were read as the run ended, so a teacher trained again at its path during
    the run (here a trial's card put there after the first epoch) was recorded as the one the student learnt from,
    under its checksum and its sample. The teacher's own card is then put back: the one the student learnt from."""
    teacher = shutil.copytree(teacher_cv / "fold-0", tmp_path / "teacher-run") / "bundle"  # trained again below
    trial = trial_copy(teacher_cv / "fold-0" / "bundle", tmp_path / "trial", 20, 1)
    checksum, own_card = bundle_checksums([teacher])[0], (teacher / CARD).read_bytes()
    cfg = dataclasses.replace(student_config(teacher_cv, tmp_path), teacher=[str(teacher)])

    def retrain(epoch: int) -> None:
        shutil.copyfile(trial / CARD, teacher / CARD)

    bundle = train(tiny_dataset, cfg, tmp_path / "student", on_epoch_end=retrain)
    recorded = load_card(bundle).train_config
    assert bundle_checksums([teacher])[0] != checksum
    assert recorded["teacher_cards"] == [checksum] and TEACHER_SAMPLES not in recorded, recorded
    (teacher / CARD).write_bytes(own_card)
    assert bundle_checksums([teacher])[0] == checksum
    assert recorded["teacher"] == [str(teacher)] and recorded["distill_weight"] == 0.25
    capsys.readouterr()
    assert main(["evaluate", str(bundle), str(tmp_path / "only-teacher.csv"), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert f"4 of the films given to evaluate were in {teacher}'s training split" in err, err
    assert "was distilled from it" in err, err
    nudge_weights(teacher)
    write_manifest([dataclasses.replace(r, split="val") for r in discover(teacher.parent / "split.csv").records
                    if r.split == "train"], teacher.parent / "split.csv")  # its new run: another split
    metrics = evaluate(bundle, tmp_path / "only-teacher.csv", "test")
    assert any(f"its weights come from {teacher} (it was trained again since {bundle} learnt from it)" in c
               for c in metrics["unchecked"]), metrics["unchecked"]


def test_a_student_of_trials_says_it_is_a_trial(tiny_dataset: Path, teacher_cv: Path, tmp_path: Path) -> None:
    """A student of teachers trained on a sample of patients (train --patients) recorded none, and its card called
    it a run on all the films: it records each teacher's sample and says it, beside its own sample when it trained
    on one (here cv's, given as cv gives a fold's run its manifest's). Its training data named only the films it was
    distilled on, and a student of Kermany films read a Kermany-only card though a teacher learnt from a site's films:
    it records and names its teachers' sources too (``taught``), once each, their films not counted."""
    trial = trial_copy(teacher_cv / "fold-0" / "bundle", tmp_path / "trial", 20, 1)
    whole = shutil.copytree(teacher_cv / "fold-0", tmp_path / "whole") / "bundle"
    nudge_weights(whole)  # another model, trained on all the patients of fold 0's training films
    export_onnx(whole)
    site = {"name": "site B", "licence": "internal use", "films": 40, "layout": "manifest", "started_from": False}
    save_card(whole, dataclasses.replace(card := load_card(whole), training_data=[*card.training_data, site]))
    cfg = dataclasses.replace(student_config(teacher_cv, tmp_path), teacher=[str(trial), str(whole)])
    bundle = train(tiny_dataset, cfg, tmp_path / "student", sample=sample_record(30, 48, 2))
    (own, *taught) = load_card(bundle).training_data
    kermany = load_card(trial).training_data[0]
    assert (own["name"], own["films"], own.get("taught")) == (KERMANY, 44, None), own
    assert taught == [{**kermany, "films": None, "taught": True}, {**site, "films": None, "taught": True}], taught
    body = " ".join((bundle / "MODEL_CARD.md").read_text(encoding="utf-8").split())
    assert (f"It was distilled from teachers (`--teacher`) whose weights learnt from these: - Films (read as the "
            f"{kermany['layout']} layout): pediatric films of {KERMANY}, licensed CC BY 4.0. - Films (read as the "
            "manifest layout): site B; licence: internal use.") in body, body
    assert "distilled from teachers that learnt from Kermany et al.'s films of children" in body
    assert "as taken at one hospital" not in body and "(Guangzhou Women" not in body, "no Kermany-only card"
    config = load_card(bundle).train_config
    assert config[TEACHER_SAMPLES] == [{"patients": 20, SAMPLED_FROM: 48, "seed": 1}, {}]
    assert (config["patients"], config[SAMPLED_FROM], config["seed"]) == (30, 48, 2)
    text = " ".join((bundle / "MODEL_CARD.md").read_text(encoding="utf-8").split())
    assert ("**It was distilled from teachers some of which learnt from a sample of patients** (teacher 1: a sample "
            "of 20 of the 48 patients of its data, seed 1; teacher 2: all the patients of its data): what it learnt "
            "from them comes from those patients alone. **The films are a sample of 30 of the 48 patients of the "
            "data** (`patients: 30`, seed 2;") in text, text
    assert "a trial, whose figures do not show what training on all the films gives" in text


def test_cv_students_are_taught_by_the_fold_bundles_that_never_saw_their_fold(
    tiny_cv: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, (teacher_cv, _) = tmp_path / "students", copy_of_cv(tiny_cv, tmp_path / "teachers")  # trained again below
    data = tiny_cv[1][tiny_cv[1].index("--data") + 1]  # the teachers' data, as they were given it
    args = ["cv", *TINY, "--data", data, "--out", str(out), "--folds", "2",
            "--teacher-cv", str(teacher_cv), "--distill-weight", "0.7"]
    assert main(args) == 0
    for k in range(2):
        recorded = load_card(out / f"fold-{k}" / "bundle").train_config
        assert recorded["teacher"] == [os.path.abspath(teacher_cv / f"fold-{k}" / "bundle")]
        assert recorded["distill_weight"] == 0.7
        assert (out / f"split-fold-{k}.csv").read_text() == (teacher_cv / f"split-fold-{k}.csv").read_text()
    assert json.loads((out / "cv.json").read_text())["teacher_cv"] == [os.path.abspath(teacher_cv)]
    stamp = (out / "fold-0" / "bundle" / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 0 and (out / "fold-0" / "bundle" / "model.safetensors").stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert main(args[:-4]) == 2, "the same folds untaught are another recipe"
    assert "fold-0 was trained with other settings (teacher [" in capsys.readouterr().err
    nudge_weights(teacher_cv / "fold-0" / "bundle")  # the teacher cv's fold trained again in its folder
    assert main(args) == 2, "a student fold taught by the earlier teacher is not reused as this one's"
    assert (f"fold-0 was taught by other bundles: its teacher {os.path.abspath(teacher_cv / 'fold-0' / 'bundle')} is "
            "not the bundle it was taught by (trained again since?)") in capsys.readouterr().err


@pytest.mark.parametrize("change, said", [
    (["--seed", "1"], "of the films given to validate the distilled model were in "),
    (["--folds", "3"], "teacher cv run {teacher_cv} was made on other folds (it has no fold 2): give teacher_cv "
                       "(--teacher-cv) runs made with the same folds (--folds), seed (--seed) and data"),
])
def test_cv_refuses_teachers_of_other_folds(tiny_dataset: Path, teacher_cv: Path, tmp_path: Path, change: list[str],
                                            said: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A teacher that trained on a student's validation films would pass their labels on."""
    out = tmp_path / "students"
    assert main(["cv", *TINY, "--data", str(tiny_dataset), "--out", str(out), "--folds", "2",
                 "--teacher-cv", str(teacher_cv), *change]) == 2
    assert said.format(teacher_cv=teacher_cv) in capsys.readouterr().err
    assert not (out / "fold-0").exists(), "refused before any fold trains"


def test_cross_validate_takes_one_teacher_cv_run_given_alone(tiny_dataset: Path, teacher_cv: Path,
                                                             tmp_path: Path) -> None:
    """A script's one teacher cv run given as a str was read as its characters, each refused as a run (`--teacher-cv
    / is not a finished cv run`): it is one run, as the command line's `--teacher-cv RUN` is."""
    cfg = TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=1)
    with pytest.raises(ValueError, match=f"teacher cv run {re.escape(str(teacher_cv))} was made on other folds"):
        cross_validate(tiny_dataset, cfg, 3, tmp_path / "students", teacher_cv=str(teacher_cv))


@pytest.mark.parametrize("given, kind", [("run", "a train run's folder"), ("bundle", "a bundle")])
def test_a_train_run_given_as_a_cv_run_is_named_so_by_cv_and_ensemble(tiny_dataset: Path, tiny_bundle: Path,
                                                                      tmp_path: Path, given: str, kind: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`cv --teacher-cv RUN` with a train run or a bundle said it "was made on other folds (it has no fold 0)"; both
    commands say, with one check, that it is no finished cv run and what it is."""
    folder = tiny_bundle.parent if given == "run" else tiny_bundle
    said = (f"{folder} is not a finished cv run: expected fold-0 ... fold-K (at least two); it is {kind}, not a "
            "folder `pneumoscan cv --out` wrote")
    out = tmp_path / "students"
    assert main(["cv", *TINY, "--data", str(tiny_dataset), "--out", str(out), "--folds", "2",
                 "--teacher-cv", str(folder)]) == 2
    assert f"teacher_cv (--teacher-cv) {said}" in capsys.readouterr().err
    assert not out.exists(), "refused before any fold trains"
    assert main(["ensemble", "--cv", str(folder), "--out", str(tmp_path / "ensemble")]) == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("change, said", [
    ({"split_csv": None}, "of the films given to validate the distilled model were in "),
    ({"distill_weight": 1.0}, "between 0 and 1: got 1.0"),
    ({"augment": {"mixup": 0.2}}, "mixup and CutMix mix two films"),
])
def test_train_refuses_a_distillation_its_validation_cannot_judge(tiny_dataset: Path, teacher_cv: Path,
                                                                  tmp_path: Path, change: dict, said: str) -> None:
    cfg = TrainConfig.from_dict(dataclasses.asdict(student_config(teacher_cv, tmp_path)) | change)
    with pytest.raises(ValueError, match=said):
        train(tiny_dataset, cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists(), "refused before the run folder is made"


def test_teachers_of_another_task_and_a_weight_without_teachers_are_refused(
    tiny_dataset: Path, tiny_etiology_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", *TINY, "--data", str(tiny_dataset), "--out", str(tmp_path / "run")]
    assert main([*base, "--teacher", str(tiny_etiology_bundle)]) == 2
    assert "was trained for the etiology task, not pneumonia" in capsys.readouterr().err
    assert main([*base, "--distill-weight", "0.3"]) == 2  # the config's refusal, as a library caller's
    assert "distill_weight 0.3 is the teachers' share of the target: give a teacher" in capsys.readouterr().err
    assert main([*base, "--distill-weight", "0.5", "--print-config"]) == 2, "the weight given, not the default"
    assert "distill_weight 0.5 is the teachers' share of the target: give a teacher" in capsys.readouterr().err
    assert main([*base, "--set", "distill_weight=0.3"]) == 2  # was recorded in config.yaml and the card
    assert "distill_weight 0.3 is the teachers' share of the target: give a teacher" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_teachers_weight_sources_are_looked_up_once(teacher_cv: Path, tmp_path: Path,
                                                         weight_sources_looked_up: list[str]) -> None:
    """The check of a run's teachers looked each teacher's weight sources up twice: once to refuse those whose
    training films are unknown, once to refuse those that trained on the validation films."""
    cfg = student_config(teacher_cv, tmp_path)
    check_teachers(cfg, split_records(cfg.split_csv, cfg)[0], get_task(cfg.task))
    assert weight_sources_looked_up == [os.path.realpath(cfg.teacher[0])]


def test_one_teacher_may_be_named_without_a_list_and_is_recorded_absolute(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text("teacher: runs/a/bundle\n")
    assert load_config(tmp_path / "cfg.yaml").teacher == [os.path.abspath("runs/a/bundle")]
    assert load_config(None, ["teacher=runs/b/bundle"]).teacher == [os.path.abspath("runs/b/bundle")]
    assert load_config(None, ["teacher=null"]).teacher == []


def test_a_run_recorded_before_distillation_existed_is_the_same_recipe(tmp_path: Path) -> None:
    cfg = TrainConfig(teacher=[str(tmp_path / "a" / ".." / "t")])
    recorded = dataclasses.asdict(TrainConfig())
    del recorded["teacher"], recorded["distill_weight"]
    assert config_changes(recorded, TrainConfig()) == []
    assert config_changes(recorded | {"teacher": [str(tmp_path / "t")]}, cfg) == [], "one teacher however spelt"
    assert config_changes(recorded, cfg)[0].startswith("teacher [] -> [")


def test_resume_refuses_a_teacher_replaced_at_its_path(tiny_dataset: Path, teacher_cv: Path, tmp_path: Path) -> None:
    """--resume computed the soft targets again from whatever bundle was at the teacher's path, and the card named
    only the path: the run's first epochs learnt from one teacher, its last from another."""
    teacher = shutil.copytree(teacher_cv / "fold-0", tmp_path / "teacher-run") / "bundle"  # with its run's split.csv
    cfg = dataclasses.replace(student_config(teacher_cv, tmp_path), teacher=[str(teacher)], epochs=2)

    def crash(epoch: int) -> None:
        if epoch == 0:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train(tiny_dataset, cfg, tmp_path / "run", on_epoch_end=crash)
    card = (teacher / CARD).read_bytes()
    save_card(teacher, dataclasses.replace(load_card(teacher), temperature=2 * load_card(teacher).temperature))
    with pytest.raises(ValueError, match=rf"teacher {re.escape(str(teacher))} is not the bundle it was trained with "
                                         r"\(its bundle.json changed since the checkpoint\)"):
        train(tiny_dataset, cfg, tmp_path / "run", resume=True)
    (teacher / CARD).write_bytes(card)  # the same teacher again: resumed (its second epoch is all the test needs)
    with pytest.raises(Crash):
        train(tiny_dataset, cfg, tmp_path / "run", resume=True, on_epoch_end=crash_in_epoch(1))
    assert len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 1 + 2


def test_a_teacher_whose_training_films_are_unknown_is_refused(tiny_dataset: Path, teacher_cv: Path,
                                                               tmp_path: Path) -> None:
    """A teacher copied out of its run folder had been taken with a warning: the student's threshold and figures
    were chosen on validation films the teacher may have trained on (here it did: the same teacher in its run folder
    is refused for them), and nothing in the student's bundle said so."""
    copy = tmp_path / "elsewhere" / "teacher-copy"
    shutil.copytree(teacher_cv / "fold-1" / "bundle", copy)
    cfg = dataclasses.replace(student_config(teacher_cv, tmp_path), teacher=[str(copy)])
    with pytest.raises(ValueError, match=r"teacher-copy: its weights come from .*teacher-copy \(no split.csv of its "
                                         r"run beside it: copied out of its run folder, or made elsewhere\?\)"):
        train(tiny_dataset, cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _huge_on_a_white_square(bundle: Path, scale: float = 3e38) -> None:
    """Give BUNDLE (a 32 px simple_cnn) weights that load and export (finite on the export's random check), score the
    tiny dataset's films finitely, and give a film with a large white square a positive logit about 30 ``scale``:
    infinite by default (weights damaged in a way only some films show), finite near float32's largest with 1e37."""
    model, card = load_bundle(bundle)
    conv, hidden, out = model.features[0], model.head[0], model.head[2]
    with torch.no_grad():
        conv.weight[0], conv.bias[0] = 1.0, -17.0  # channel 0: above 0 only where a 3 x 3 patch is near white
        hidden.weight[0], hidden.bias[0] = 0.0, -50.0
        hidden.weight[0, :256] = 1.0  # hidden unit 0: above 0 only where channel 0 is, over a large area
        out.weight[:, 0] = torch.tensor([0.0, scale])  # which the positive logit takes
    save_bundle(bundle, model, card)
    export_onnx(bundle)


def test_a_teacher_or_member_whose_scores_are_not_finite_is_refused_by_name(tiny_dataset: Path, teacher_cv: Path,
                                                                            tmp_path: Path) -> None:
    """A teacher giving NaN or infinite logits on a training film was refused only as "the model produced a
    non-finite score", naming no teacher, and for an ensemble no member (its one graph gives only the mean); so was
    an ensemble's member on the films given to `ensemble --data`."""
    broken = shutil.copytree(teacher_cv / "fold-0", tmp_path / "broken") / "bundle"  # its run's split.csv beside it
    _huge_on_a_white_square(broken)
    cfg = student_config(teacher_cv, tmp_path)
    records = discover(tmp_path / "split.csv").records
    film = next(r for r in records if r.split == "train")
    pixels = np.asarray(Image.open(film.path).convert("L")).copy()
    pixels[12:52, 12:52] = 255
    Image.fromarray(pixels).save(tmp_path / "white.jpeg", quality=95)
    write_manifest([*records, dataclasses.replace(film, path=str(tmp_path / "white.jpeg"))], tmp_path / "split.csv")
    with pytest.raises(ValueError, match=rf"^teacher 1 of 1 \({re.escape(str(broken))}\): the model produced a "
                                         r"non-finite score \(NaN or infinity\).* \(1 of \d+ images\)$"):
        train(tiny_dataset, dataclasses.replace(cfg, teacher=[str(broken)]), tmp_path / "run")
    # finite logits near float32's largest, of two teachers: their float32 mean overflowed, and softmax gave NaN
    huge = shutil.copytree(teacher_cv / "fold-0", tmp_path / "huge") / "bundle"
    _huge_on_a_white_square(huge, 1e37)
    white = [str(tmp_path / "white.jpeg")]
    np.testing.assert_allclose(teacher_probabilities([str(huge)] * 2, white, white, 8), [[0.0, 1.0]], atol=1e-6)
    # in an ensemble with a sound member, calibrated on films that show nothing wrong
    write_manifest([make_record(r.path, r.label) for r in discover(tiny_dataset).split("test")], tmp_path / "site.csv")
    ens, members = tmp_path / "ensemble", [str(teacher_cv / "fold-0" / "bundle"), str(broken)]
    write_manifest([*discover(tmp_path / "site.csv").records, make_record(tmp_path / "white.jpeg", film.label)],
                   tmp_path / "site-white.csv")
    with pytest.raises(ValueError, match=rf"^ensemble member 2 of 2 \({re.escape(str(broken))}\): the model "
                                         r"produced a non-finite score .* \(1 of 17 images\)$"):
        build_ensemble(members, ens, data=tmp_path / "site-white.csv")
    assert main(["ensemble", *members, "--data", str(tmp_path / "site.csv"), "--out", str(ens)]) == 0
    taught = dataclasses.replace(cfg, teacher=[str(ens)])
    with pytest.raises(ValueError, match=rf"^teacher 1 of 1 \({re.escape(str(ens))}\): ensemble member 2 of 2 "
                                         rf"\({re.escape(str(broken))}\): the model produced a non-finite score"):
        train(tiny_dataset, taught, tmp_path / "run-2")
    # `export --int8 --data`, the film among its training films (the activation ranges'), was refused as "the model
    # produced a non-finite score", or quantised on NaN ranges; its validation films (the INT8 thresholds') must be
    # the films that chose the FP32 ones, which the white film is not
    trained = [r for r in records if r.split == "train"]
    val = [dataclasses.replace(r, split="val") for r in discover(tmp_path / "site.csv").records]
    white_film = make_record(tmp_path / "white.jpeg", film.label)
    for name, films, refused in (
        ("white-val", [*trained, *val, dataclasses.replace(white_film, split="val")], "INT8 thresholds would be "
         "chosen on the val films of .*white-val.csv, other films"),
        ("white-train", [*trained, dataclasses.replace(white_film, split="train"), *val],
         rf"^ensemble member 2 of 2 \({re.escape(str(broken))}\): the model produced a non-finite score"),
    ):
        write_manifest(films, tmp_path / f"{name}.csv")
        with pytest.raises(ValueError, match=refused):
            quantize_bundle(ens, data=tmp_path / f"{name}.csv")
        assert not (ens / INT8_NAME).exists()
    # and a member's own card damaged, which the check of the ensemble teacher's training films reads
    (broken / CARD).write_text("{not json")
    with pytest.raises(ValueError, match=rf"^teacher 1 of 1 \({re.escape(str(ens))}\): ensemble member 2 of 2 "
                                         rf"\({re.escape(str(broken))}\): {re.escape(str(broken / CARD))} is not a "
                                         "readable bundle card"):
        check_teachers(taught, split_records(taught.split_csv, taught)[0], get_task(taught.task))
