"""Cross-validation: patient-grouped folds of the real train/ folder, and k runs with out-of-fold scores."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pneumoscan.cli import main
from pneumoscan.core.metrics import evaluate_multiclass, format_figure
from pneumoscan.data.labelled import patient_groups
from pneumoscan.data.layouts import discover, write_manifest
from pneumoscan.data.split import patient_folds, sampled_pool
from pneumoscan.models.card import load_card, save_card
from pneumoscan.data.tasks import get_task
from pneumoscan.models.run_folder import CvFolder
from pneumoscan.training.cv import _plan_folds, cross_validate, fold_figures, fold_summary
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.resume import config_changes
from pneumoscan.training.train import train
from tests.builders import Crash, copy_of_cv, crash_in_epoch
from tests.conftest import _once_per_run


def test_real_folds_keep_patients_duplicates_and_mix(real_train) -> None:
    records, groups = real_train
    fold = patient_folds(records, 5, seed=1, duplicate_groups=groups)
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3, 4]
    folds_of_patient: dict[str, set[int]] = {}
    for r, f in zip(records, fold):
        folds_of_patient.setdefault(r.patient, set()).add(int(f))
    assert all(len(s) == 1 for s in folds_of_patient.values()), "a patient in two folds"
    index = {r.path: i for i, r in enumerate(records)}
    assert groups and all(len({int(fold[index[p]]) for p in g}) == 1 for g in groups)
    whole = Counter(r.subtype for r in records)
    for f in range(5):
        part = Counter(r.subtype for r, g in zip(records, fold) if g == f)
        n = sum(part.values())
        assert abs(n - len(records) / 5) <= 0.01 * len(records), "folds of about equal size"
        for subtype, count in whole.items():
            assert abs(part[subtype] / n - count / len(records)) <= 0.01, (f, subtype)
    assert ((patient_folds(records, 5, 1, groups) == fold).all()
            and not (patient_folds(records, 5, 2, groups) == fold).all())


def test_too_few_patients_or_folds_are_refused(tiny_dataset: Path) -> None:
    records = discover(tiny_dataset / "train").records[:3]
    with pytest.raises(ValueError, match=r"3 patients \(copies of one film count as one\) cannot fill 5 folds: "
                                         r"give folds \(--folds\) 3 or fewer"):
        patient_folds(records, 5)
    with pytest.raises(ValueError, match="at least 2 folds"):
        patient_folds(records, 1)
    # normal films of two patients cannot reach three folds: refused before any fold trains, not at the third
    everything = discover(tiny_dataset / "train").records
    two_normal = [r for r in everything if r.label == "PNEUMONIA"] + [
        dataclasses.replace(r, patient=f"IM-{i % 2}")
        for i, r in enumerate(x for x in everything if x.label == "NORMAL")]
    with pytest.raises(ValueError, match=r"fold \d of 3 holds no NORMAL film"):
        patient_folds(two_normal, 3)
    assert len(set(patient_folds(two_normal, 2))) == 2


def test_cv_on_a_sample_of_patients_deals_only_the_sample_into_folds(tiny_dataset: Path, tmp_path: Path) -> None:
    """cv --patients: the sample is taken before the folds are dealt, each fold's manifest holds it alone (its run
    takes the manifest as it is), and cv.json records how many patients it was drawn from."""
    cfg = TrainConfig(model="simple_cnn", pretrained=False, batch_size=4, patients=12)
    plans, configs, sampled_from = _plan_folds(tiny_dataset, cfg, 3, CvFolder(tmp_path / "cv"), (),
                                               get_task("pneumonia"))
    assert sampled_from == 48 and all(c.patients is None and c.split_csv for c in configs)
    assert all(len({r.patient for r in plan}) == 12 and {r.path for r in plan} == {r.path for r in plans[0]}
               for plan in plans)
    assert {r.label for r in plans[0]} == {"NORMAL", "PNEUMONIA"}
    assert _plan_folds(tiny_dataset, dataclasses.replace(cfg, patients=None), 3, CvFolder(tmp_path / "cv"), (),
                       get_task("pneumonia"))[2] is None


def test_specificity_at_the_sensitivity_floor_is_that_of_the_most_specific_rule() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.8, 0.4, 0.7, 0.9, 0.95])
    figures = fold_figures(y, p, floor=0.75)  # 3 of 4 positives above 0.5: one normal (0.8) above too
    assert figures["specificity_at_sensitivity_0.75"] == pytest.approx(0.75) and figures["n"] == 8
    assert fold_figures(y, p, floor=1.0)["specificity_at_sensitivity_1"] == pytest.approx(0.75)


def test_cv_trains_each_fold_and_scores_every_film_out_of_fold(tiny_dataset: Path,
                                                               tiny_cv: tuple[Path, list[str]]) -> None:
    out, _ = tiny_cv  # run again, its finished folds reused: test_cv_prints_the_pooled_out_of_fold_figures_...
    result = json.loads((out / "cv.json").read_text())
    with (out / "oof.csv").open() as f:
        rows = list(csv.DictReader(f))
    pool = discover(tiny_dataset).split("train")
    # each film once, by its real path: runs on the same folds name it alike whatever --data, --out and the folder
    assert sorted(r["path"] for r in rows) == sorted(os.path.realpath(r.path) for r in pool)
    for k in range(2):
        val = {Path(r.path).name for r in discover(out / f"split-fold-{k}.csv").split("val")}
        assert {Path(r["path"]).name for r in rows if r["fold"] == str(k)} == val
        assert load_card(out / f"fold-{k}" / "bundle").threshold_policy.startswith("Youden's J"), (
            "cv takes train's policy")
    assert [f["n"] for f in result["per_fold"]] == [sum(r["fold"] == str(k) for r in rows) for k in range(2)]
    for k, fold in enumerate(result["per_fold"]):  # one epoch: the weights scored are the last epoch's
        with (out / f"fold-{k}" / "history.csv").open() as f:
            [epoch] = list(csv.DictReader(f))
        assert (fold["epochs"], fold["best_epoch"], fold["last_epoch_auc"]) == (1, 1, float(epoch["val_auc"]))
    aucs = [f["auc"] for f in result["per_fold"]]
    assert result["summary"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert result["summary"]["auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    fold = out / "fold-0" / "bundle"
    assert "sampled_from" not in load_card(fold).train_config, "no sample: a run on all the data"
    assert "The films were split by patient" in (fold / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_cv_prints_the_pooled_out_of_fold_figures_its_ensemble_records(tiny_cv: tuple[Path, list[str]],
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The summary printed the folds' mean AUC alone; the pooled out-of-fold AUC, which `ensemble --cv` records as
    its validation AUC, was only in cv.json, so the card's figure matched nothing the run printed. The run is a
    finished cv run again, whose folds are reused, not trained again."""
    out, args = copy_of_cv(tiny_cv, tmp_path / "cv")
    stamp = (out / "fold-0" / "bundle" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0, "a finished cv runs again"
    assert (out / "fold-0" / "bundle" / "model.safetensors").stat().st_mtime_ns == stamp, "finished folds are reused"
    pooled = json.loads((out / "cv.json").read_text())["pooled_out_of_fold"]
    lines = capsys.readouterr().out.splitlines()
    assert f"pooled out of fold ({pooled['n']} films): auc {format_figure(pooled['auc'], 4)}, " in "\n".join(lines)


def test_compare_given_a_cv_run_says_where_its_figures_are(tiny_cv: tuple[Path, list[str]],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`compare CV_DIR` said only "no metrics.json (give a training run folder or an evaluate --out folder)": it
    names the cv.json that holds a recipe's figures, and the fold runs it may be given."""
    out, _ = tiny_cv
    capsys.readouterr()
    assert main(["compare", str(out)]) == 2
    assert (f"it is a cv run: its figures are in {out / 'cv.json'} (the folds' spread and the pooled out-of-fold "
            f"figures), and its fold runs ({out / 'fold-0'}, ...) can be given") in capsys.readouterr().err


def test_a_fold_scored_with_an_earlier_epochs_weights_says_its_figures_lean_optimistic(
        tiny_cv: tuple[Path, list[str]], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A fold keeps its best epoch's weights, chosen on the films it is then scored on: when that is not its last
    epoch, the fold's AUC is the highest of several chances on those films, and a recipe of more epochs looked
    better for it. cv.json gives each fold's epochs, best epoch and last epoch's AUC, and the log says so."""
    copy, args = copy_of_cv(tiny_cv, tmp_path / "cv")
    history = copy / "fold-0" / "history.csv"
    with history.open() as f:
        [first] = list(csv.DictReader(f))
    later = {**first, "epoch": "2", "val_auc": str(float(first["val_auc"]) - 0.125)}  # a second epoch, worse
    history.write_text(history.read_text() + ",".join(later[k] for k in first) + "\n")
    with caplog.at_level(logging.INFO, logger="pneumoscan"):
        assert main(args) == 0
    result = json.loads((copy / "cv.json").read_text())
    fold = result["per_fold"][0]
    assert (fold["epochs"], fold["best_epoch"], fold["last_epoch_auc"]) == (2, 1, float(later["val_auc"]))
    assert result["per_fold"][1]["epochs"] == result["per_fold"][1]["best_epoch"] == 1
    assert (f"fold 1/2: AUC {format_figure(fold['auc'], 4)}, specificity at sensitivity 0.97: "
            f"{format_figure(fold['specificity_at_sensitivity_0.97'])} (epoch 1 of 2, chosen on these films; the last "
            f"epoch's AUC {format_figure(fold['last_epoch_auc'], 4)})") in caplog.text
    last = result["summary"]["last_epoch_auc"]["mean"]
    assert last == pytest.approx(np.mean([fold["last_epoch_auc"], result["per_fold"][1]["last_epoch_auc"]]))
    assert (f"1 of 2 folds hold the weights of an epoch before their last, chosen on the films they are scored on, "
            f"so their figures lean optimistic: mean AUC over the folds "
            f"{format_figure(result['summary']['auc']['mean'], 4)}, of their last epochs {format_figure(last, 4)} "
            f"(last_epoch_auc in {copy / 'cv.json'})") in caplog.text


def test_a_fold_copied_in_without_its_history_is_scored_and_says_nothing_of_its_epochs(
        tiny_cv: tuple[Path, list[str]], tmp_path: Path) -> None:
    """A fold bundle brought from another machine without its run's history.csv and metrics.json is scored as
    before; what its folder does not say is null, never guessed, and the other fold's figures stand."""
    copy, args = copy_of_cv(tiny_cv, tmp_path / "cv")
    (copy / "fold-0" / "history.csv").unlink()
    (copy / "fold-0" / "metrics.json").unlink()
    assert main(args) == 0
    result = json.loads((copy / "cv.json").read_text())
    assert [(f["epochs"], f["best_epoch"]) for f in result["per_fold"]] == [(None, None), (1, 1)]
    assert result["per_fold"][0]["last_epoch_auc"] is None and result["summary"]["last_epoch_auc"]["folds"] == 1


def test_cv_of_the_multiclass_task_scores_the_three_class_decision(
        pooled_multiclass_cv: tuple[Path, Path, list[Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The session's three-class cv (its two folds trained once a run), run again on a copy by the command, which
    reuses its finished folds and prints its pooled out-of-fold line."""
    out, _ = copy_of_cv((pooled_multiclass_cv[0], []), tmp_path / "cv")
    stamp = (out / "fold-0" / "bundle" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["cv", "--data", str(pooled_multiclass_cv[1]), "--out", str(out), "--folds", "2", "--task",
                 "multiclass", "--model", "simple_cnn", "--no-pretrained", "--image-size", "32", "--epochs", "1",
                 "--batch-size", "8"]) == 0
    assert (out / "fold-0" / "bundle" / "model.safetensors").stat().st_mtime_ns == stamp, "finished folds are reused"
    pooled_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pooled out of fold,"))
    # every film once, with its class's, and the patients its intervals count (two films a patient, a copy as one)
    assert pooled_line.startswith("pooled out of fold, most probable class: accuracy")
    assert pooled_line.endswith("; n = 49 films of 24 patients (24 normal films of 12 patients, 13 bacteria of 11, 12 "
                                "virus of 11)"), pooled_line
    result = json.loads((out / "cv.json").read_text())
    with (out / "oof.csv").open() as f:
        rows = list(csv.DictReader(f))
    classes = ("normal", "bacteria", "virus")
    probs = np.array([[float(r[f"probability_{c}"]) for c in classes] for r in rows])
    truth = np.array([0 if r["label"] == "NORMAL" else classes.index(r["subtype"]) for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose([float(r["probability"]) for r in rows], 1 - probs[:, 0], atol=1e-6,
                               err_msg="the positive call is any pneumonia")
    pooled = result["pooled_out_of_fold"]["multiclass"]
    assert np.array(pooled["confusion_matrix"]["counts"]).tolist() == [
        [int(np.sum((truth == t) & (probs.argmax(axis=1) == c))) for c in range(3)] for t in range(3)]
    for k, fold in enumerate(result["per_fold"]):
        mine = [i for i, r in enumerate(rows) if r["fold"] == str(k)]
        assert fold["accuracy"] == pytest.approx(np.mean(probs[mine].argmax(axis=1) == truth[mine]))
        assert {"auc", "balanced_accuracy", "macro_auc"} <= fold.keys()
    assert result["summary"]["accuracy"]["mean"] == pytest.approx(np.mean([f["accuracy"] for f in result["per_fold"]]))


@pytest.fixture(scope="session")
def pooled_multiclass_cv(typed_dataset: Path,
                         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """A two-fold three-class cv (OUT) of the typed training films (MANIFEST) filed as patients of two films each, one
    bacterial film filed once more, elsewhere, under a patient id of its own (the copy and its original: PAIR). Built
    once a run, not once a worker (pytest-xdist's worksteal may give its two tests to two workers)."""
    records = discover(typed_dataset).split("train")
    original = next(r for r in records if r.subtype == "bacteria")

    def build(folder: Path) -> Path:
        copy = folder / "elsewhere" / "person999_bacteria_999.jpeg"
        copy.parent.mkdir()
        shutil.copyfile(original.path, copy)
        manifest = folder / "pairs-and-a-copy.csv"
        write_manifest([*(dataclasses.replace(r, patient=f"pair-{i // 2}") for i, r in enumerate(records)),
                        dataclasses.replace(original, path=str(copy), patient="person999")], manifest)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "temperature 20 is at its bound")  # one epoch of a tiny model: no signal
            cross_validate(manifest, TrainConfig(task="multiclass", model="simple_cnn", pretrained=False,
                                                 image_size=32, epochs=1, batch_size=8), 2, folder / "cv")
        return folder

    folder = _once_per_run(tmp_path_factory, "pooled_multiclass_cv", build)
    copy = folder / "elsewhere" / "person999_bacteria_999.jpeg"
    return folder / "cv", folder / "pairs-and-a-copy.csv", [Path(original.path), copy]


def _pooled(out: Path, manifest: Path) -> tuple[dict, list[list[set[str]]], dict]:
    """The pooled out-of-fold three-class block, the groups of copies among its films, and the figures evaluate
    gives its rows with its patients (copies of a film as one) as the units its CIs count."""
    pooled = json.loads((out / "cv.json").read_text())["pooled_out_of_fold"]["multiclass"]
    with (out / "oof.csv").open() as f:
        rows = list(csv.DictReader(f))
    by_path = {os.path.realpath(r.path): r for r in discover(manifest).records}
    copies, units, _ = patient_groups([by_path[row["path"]] for row in rows], manifest)
    classes = pooled["class_names"]
    probs = np.array([[float(row[f"probability_{c}"]) for c in classes] for row in rows])
    truth = [0 if row["label"] == "NORMAL" else classes.index(row["subtype"]) for row in rows]
    return pooled, [{Path(p).name for p in group} for group in copies], evaluate_multiclass(truth, probs, classes,
                                                                                               groups=units)


def test_cv_pooled_three_class_block_counts_patients(pooled_multiclass_cv: tuple[Path, Path, list[Path]]) -> None:
    """Where patients have several films, the pooled out-of-fold three-class CIs count patients, as evaluate's do."""
    out, manifest, _ = pooled_multiclass_cv
    pooled, _, again = _pooled(out, manifest)
    assert pooled["ci_unit"] == "patient" and pooled["patients"] == again["patients"]
    assert again["patients"]["all"] < pooled["n"] / 1.5, "about two films a patient"
    for name, ci in again["ci"].items():
        assert pooled["ci"][name] == pytest.approx(ci), name


def test_cv_pooled_three_class_block_counts_copies_of_a_film_as_one_patient(
        pooled_multiclass_cv: tuple[Path, Path, list[Path]]) -> None:
    """A film filed twice under two patient ids is one child's: the pooled out-of-fold three-class CIs count the
    copies as one patient, by evaluate's grouping (patient_groups), not as two patients of a film each."""
    out, manifest, pair = pooled_multiclass_cv
    assert len({r.patient for r in discover(manifest).records if r.path in map(str, pair)}) == 2, "two patient ids"
    pooled, copies, again = _pooled(out, manifest)
    assert copies == [{path.name for path in pair}]
    for name, ci in again["ci"].items():
        assert pooled["ci"][name] == pytest.approx(ci), name


@pytest.mark.parametrize("change, said", [
    (["--folds", "3"], "fold-0 was trained on another split ("),
    (["--seed", "1"], "fold-0 was trained "),  # other folds, unless the seed happens to deal the same ones
    (["--epochs", "2"], "fold-0 was trained with other settings (epochs 1 -> 2); use a new out_dir (--out)"),
    (["--model", "cnn5", "--set", "augment.noise=0.1"],
     'fold-0 was trained with other settings (model "simple_cnn" -> "cnn5", augment.noise 0.04 -> 0.1)'),
])
def test_cv_refuses_a_finished_fold_of_another_split_or_recipe(tiny_cv: tuple[Path, list[str]], change: list[str],
                                                               said: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Scored as it stood, a fold trained on another split would score films it trained on as out of fold."""
    out, args = tiny_cv
    before = {p.name: p.read_bytes() for p in out.glob("split-fold-*.csv")}
    capsys.readouterr()
    assert main([*args, *change]) == 2
    err = capsys.readouterr().err
    assert said in err and err.rstrip().endswith("use a new out_dir (--out)"), err
    assert {p.name: p.read_bytes() for p in out.glob("split-fold-*.csv")} == before, "OUT is left as it was"


@pytest.mark.parametrize("change, said", [
    ({"validate_on_val_folder": True}, "split_csv and validate_on_val_folder both choose the validation films"),
    ({"distill_weight": 0.5}, "distill_weight 0.5 is the teachers' share of the target: give a teacher"),
    # taken, replaced by each fold's own, and recorded in cv.json as the split cv had used
    ({"split_csv": "mine.csv"}, "cv makes each fold's split itself: split_csv mine.csv would not be read"),
    ({"val_fraction": 0.5}, "cv validates each run on one fold of folds (--folds): val_fraction 0.5 would not be used"),
])
def test_a_library_callers_contradictory_recipe_is_refused_before_cv_writes_anything(tiny_dataset: Path,
                                                                                      tmp_path: Path, change: dict,
                                                                                      said: str) -> None:
    """cross_validate(data, TrainConfig(...)): validate_on_val_folder was refused by fold 0's training, after OUT and
    every fold's manifest were written; a distill_weight of 0.5 without --teacher-cv was taken for the default and
    ignored (only the CLI refused its flag)."""
    out = tmp_path / "cv"
    cfg = TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=1, batch_size=8, **change)
    with pytest.raises(ValueError, match=re.escape(said)):
        cross_validate(tiny_dataset, cfg, 2, out)
    assert not out.exists()


def test_a_fold_that_training_refuses_is_named_and_keeps_its_reason(tiny_dataset: Path, tmp_path: Path) -> None:
    """A fold's run that diverged ended cv with the run's reason alone (`pneumoscan cv: error: training diverged at
    epoch 1, ...`), which named no fold: under --quiet nothing else did. The fold is named, as cv's other refusals
    name it, and its folder keeps the reason (RUN/refused.txt)."""
    out = tmp_path / "cv"
    cfg = TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=1, batch_size=8, lr=1e8)
    with pytest.raises(ValueError, match=r"^fold 1 of 2: training diverged at epoch 1") as refused:
        cross_validate(tiny_dataset, cfg, 2, out)
    assert f"fold 1 of 2: {(out / 'fold-0' / 'refused.txt').read_text(encoding='utf-8')}" == f"{refused.value}\n"


def test_a_batch_a_folds_training_films_cannot_fill_is_refused_before_cv_writes_anything(tiny_dataset: Path,
                                                                                          tmp_path: Path) -> None:
    """--batch-size 32 on folds of 24 training films: OUT and every fold's manifest were written, then fold 1's run
    was refused (before, it had trained nothing and ended "no epoch was validated")."""
    out = tmp_path / "cv"
    cfg = TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=1, batch_size=32)
    with pytest.raises(ValueError, match=r"^fold 1 of 2: the \d+ training films fill no batch of 32 in each of 1 "):
        cross_validate(tiny_dataset, cfg, 2, out)
    assert not out.exists()


def test_a_starting_bundle_that_learnt_a_folds_films_is_refused_before_cv_writes_anything(
    tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """--set init=B: each fold's run checked that B never trained on its validation films, so the folds before it
    trained first, and OUT was left with their runs; cv checks it of every fold before any trains."""
    out = tmp_path / "cv"
    cfg = TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=1, batch_size=8,
                      init=str(tiny_bundle))
    with pytest.raises(ValueError, match="film.* given to validate a model started from "):
        cross_validate(tiny_dataset, cfg, 2, out)
    assert not out.exists()


def test_a_fold_recorded_before_a_nested_setting_existed_is_the_same_recipe() -> None:
    """A run made before augment.gamma existed was made with gamma off, its default: cv and --resume after an
    upgrade take it as their own, and still refuse it when the setting is now turned on."""
    recorded = dataclasses.asdict(TrainConfig())
    del recorded["augment"]["gamma"], recorded["augment"]["blur"]
    assert config_changes(recorded, TrainConfig()) == []
    on = TrainConfig(augment=dataclasses.replace(TrainConfig().augment, gamma=0.4))
    assert config_changes(recorded, on) == ["augment.gamma unset -> 0.4"]


def test_cv_refuses_folds_of_different_numbers_of_processes(tiny_cv: tuple[Path, list[str]], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Folds trained by different numbers of processes are different recipes (global batch, learning rate); folds
    all trained elsewhere by one number may still be scored here."""
    out, args = copy_of_cv(tiny_cv, tmp_path / "cv")

    def made_by(k: int, n: int) -> None:
        card = load_card(out / f"fold-{k}" / "bundle")
        save_card(out / f"fold-{k}" / "bundle",
                  dataclasses.replace(card, train_config=card.train_config | {"processes": n}))

    made_by(0, 2)
    capsys.readouterr()
    assert main(args) == 2
    assert "different numbers of processes (fold-0: 2, fold-1: 1); use a new out_dir (--out)" in capsys.readouterr().err
    made_by(1, 2)
    assert main(args) == 0, "every fold made by 2 processes: scored here by one"
    shutil.rmtree(out / "fold-1")
    capsys.readouterr()
    assert main(args) == 2, "fold-1 would be trained by 1 process"
    assert "trained by 2 process(es) and this cv has 1" in capsys.readouterr().err
    assert not (out / "fold-1").exists()


def test_cv_refuses_folds_trained_in_different_precisions(tiny_cv: tuple[Path, list[str]], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A fold trained on a GPU (precision auto: bf16) beside one still to train here in fp32 was trained without a
    word: two recipes' folds summarised as one. (The GPU's fold is its card's record, as a GPU machine writes it.)"""
    out, args = copy_of_cv(tiny_cv, tmp_path / "cv")
    here = "bf16" if torch.cuda.is_available() else "fp32"  # precision auto on this machine
    other = {"bf16": "fp32", "fp32": "bf16"}[here]
    card = load_card(out / "fold-0" / "bundle")
    save_card(out / "fold-0" / "bundle",
              dataclasses.replace(card, train_config=card.train_config | {"resolved_precision": other}))
    capsys.readouterr()
    assert main(args) == 2
    assert (f"trained in different precisions (fold-0: {other}, fold-1: {here}); use a new out_dir (--out)"
            in capsys.readouterr().err)
    shutil.rmtree(out / "fold-1")
    assert main(args) == 2
    assert (f"the finished folds were trained in {other} and this cv trains in {here}, so its folds still to train "
            "would be another recipe: run it where they trained, or use a new out_dir (--out)"
            ) in capsys.readouterr().err
    assert not (out / "fold-1").exists()


def test_an_interrupted_fold_goes_on_from_its_checkpoint_under_its_own_recipe_only(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cv on a sample of patients (--patients), one of its folds interrupted: the fold goes on under its recipe
    only, and each fold's card, and the card of their `ensemble --cv`, say the sample (a trial, not a full run)."""
    out, cfg = tmp_path / "cv", TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=2, batch_size=8,
                                            patience=10, patients=40)
    pool, duplicates, _ = sampled_pool(tiny_dataset, cfg.patients, cfg.seed)  # fold 1's manifest as cv writes it
    fold_of = patient_folds(pool, 2, cfg.seed, duplicates)
    out.mkdir()
    manifest = out / "split-fold-1.csv"
    write_manifest([dataclasses.replace(r, split="val" if f == 1 else "train") for r, f in zip(pool, fold_of)],
                   manifest)
    with pytest.raises(Crash):
        train(tiny_dataset, dataclasses.replace(cfg, split_csv=str(manifest), patients=None), out / "fold-1",
              on_epoch_end=crash_in_epoch(0))
    first = (out / "fold-1" / "history.csv").read_text().splitlines()
    config_yaml = (out / "fold-1" / "config.yaml").read_bytes()
    with pytest.raises(ValueError,
                       match=r"^fold-1 was trained with other settings \(lr 0.001 -> 0.002\); use a new out_dir "
                             r"\(--out\)$"):
        cross_validate(tiny_dataset, dataclasses.replace(cfg, lr=2e-3), 2, out)
    assert not (out / "fold-0").exists(), "every fold is checked before any is trained"
    assert (out / "fold-1" / "config.yaml").read_bytes() == config_yaml
    # a config.yaml that says otherwise than the checkpoint (edited by hand): the checkpoint decides, as the fold's
    # --resume does, so cv refuses before fold 0 trains, not after it
    (out / "fold-1" / "config.yaml").write_text(dataclasses.replace(cfg, lr=2e-3, split_csv=str(manifest),
                                                                    patients=None).to_yaml())
    with pytest.raises(ValueError, match=r"^fold-1 was trained with other settings \(lr 0.001 -> 0.002\)"):
        cross_validate(tiny_dataset, dataclasses.replace(cfg, lr=2e-3), 2, out)
    assert not (out / "fold-0").exists(), "refused before any fold trains"
    (out / "fold-1" / "config.yaml").write_bytes(config_yaml)
    caplog.set_level(logging.INFO, logger="pneumoscan")
    cross_validate(tiny_dataset, cfg, 2, out)
    assert "resuming after epoch 1" in caplog.text
    assert "no checkpoint at" not in caplog.text, "fold 0 is fresh: it starts from scratch without a resume's notice"
    history = (out / "fold-1" / "history.csv").read_text().splitlines()
    assert history[:2] == first and len(history) == 1 + 2, (
        "the interrupted fold's first epoch is kept, not trained again")
    assert all((out / f"fold-{k}" / "bundle" / "model.onnx").is_file() for k in range(2))
    sample = "**The films are a sample of 40 of the 48 patients of the data** (`patients: 40`, seed 0; "
    for k in range(2):  # the fresh fold's card and the resumed one's
        bundle = out / f"fold-{k}" / "bundle"
        assert {key: load_card(bundle).train_config[key] for key in ("patients", "sampled_from")} == {
            "patients": 40, "sampled_from": 48}
        assert sample in (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    cross_validate(tiny_dataset, cfg, 2, out)  # finished folds that record the sample are this cv's
    assert main(["ensemble", "--cv", str(out), "--youden", "--out", str(tmp_path / "ens")]) == 0, capsys.readouterr()
    assert load_card(tmp_path / "ens").train_config["sampled_from"] == 48
    assert f"{sample}whole patients, each class and subtype in its share), dealt by patient into cross-validation " \
        "folds" in (tmp_path / "ens" / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_oof_is_valid_utf8_whatever_the_names_bytes_and_cv_json_says_what_it_left_out_and_refuses_films_rewritten(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """oof.csv is a results file: a name that is not UTF-8 is written \\xNN (docs/limits.md), not a crash at the end
    of the last fold. A file of the pool that cannot be read is in one fold's validation split and in no figure: cv
    said so only in the log, where evaluate, `threshold` and `ensemble` record what their figures left out and why;
    cv.json holds ``left_out`` as theirs (the one implementation), and the command prints the caveat. Its finished
    folds are then refused once the films are rewritten in place (the one cv run pays for both)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    first = sorted((data / "train" / "NORMAL").iterdir())[0]
    os.rename(first, os.path.join(os.fsencode(first.parent), b"caf\xe9-" + os.fsencode(first.name)))
    (data / "train" / "NORMAL" / "IM-0999-0001.jpeg").write_bytes(b"not a film")
    out = tmp_path / "cv"
    args = ["cv", "--data", str(data), "--out", str(out), "--folds", "2", "--model", "simple_cnn", "--no-pretrained",
            "--image-size", "32", "--epochs", "1", "--batch-size", "8"]
    assert main(args) == 0
    text = (out / "oof.csv").read_bytes().decode("utf-8")  # strict
    assert f"caf\\xe9-{first.name}" in text and len(text.splitlines()) == 1 + 48
    result = json.loads((out / "cv.json").read_text())
    assert result["left_out"] == [{"films": 1, "reason": "could not be read"}]
    assert result["pooled_out_of_fold"]["n"] == 48
    said = ("1 of the 49 films given is left out of the figures, which are of the other 48 only: 1 film could not be "
            "read")
    assert f"   {said}" in capsys.readouterr().out
    # every film inverted at the same path: the folds said "exists, not trained again", and their bundles, made on
    # the old pixels, were scored on the new ones and written to cv.json as this cv's figures
    summary = (out / "cv.json").read_bytes()
    for film in (data / "train").glob("*/*.jpeg"):
        if film.name != "IM-0999-0001.jpeg":  # the file that is no film
            with Image.open(film) as im:
                ImageOps.invert(im.convert("L")).save(film, quality=95)
    assert main(args) == 2
    assert ("fold-0 was trained on other pixels or labels than these films have now (rewritten in place since, or "
            "decoded otherwise by this version?): its figures would not be this cv's; use a new out_dir (--out)"
            ) in capsys.readouterr().err
    assert (out / "cv.json").read_bytes() == summary
    elsewhere = tmp_path / os.fsdecode(b"cv-caf\xe9")  # the folds' bundles would record their manifests under it
    assert main(["cv", "--data", str(data), "--out", str(elsewhere), "--folds", "2", "--epochs", "1"]) == 2
    assert "split_csv" in capsys.readouterr().err and not elsewhere.exists(), "refused before anything is written"
    few = tmp_path / "one-fold"
    assert main(["cv", "--data", str(data), "--out", str(few), "--folds", "1", "--epochs", "1"]) == 2
    assert "at least 2 folds" in capsys.readouterr().err and not few.exists()


def test_a_figure_some_folds_do_not_define_is_summarised_over_the_others() -> None:
    """A fold without viral films has no three-class macro AUC (None in its figures): the summary ended the whole cv
    with a TypeError after every fold had trained, and a rerun ended the same way."""
    summary = fold_summary([{"auc": 0.9, "macro_auc": None, "n": 7}, {"auc": 0.8, "macro_auc": 0.7, "n": 7},
                            {"auc": float("nan"), "macro_auc": 0.5, "n": 7}])
    assert summary["macro_auc"] == {"mean": pytest.approx(0.6), "std": pytest.approx(np.std([0.7, 0.5], ddof=1)),
                                    "min": 0.5, "max": 0.7, "folds": 2}
    assert summary["auc"]["folds"] == 2 and summary["auc"]["mean"] == pytest.approx(0.85)
    assert fold_summary([{"auc": None, "n": 3}])["auc"] == {"mean": None, "std": None, "min": None, "max": None,
                                                            "folds": 0}


def test_a_cv_stopped_between_folds_is_not_taken_as_finished(tiny_dataset: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    """Each fold's manifest had been written just before its fold trained: a three-fold cv stopped after its second
    fold held two folds and two manifests, and `ensemble --cv` shipped it as a finished two-fold run (two of three
    members, calibrated on two thirds of the films)."""
    import pneumoscan.training.cv as cv_module

    real_predictor = cv_module.Predictor

    def stopped_while_scoring_the_second(bundle: Path, *args: object, **kwargs: object) -> object:
        if Path(bundle).parent.name == "fold-1":
            raise KeyboardInterrupt  # Ctrl-C once the second fold's bundle is written, while its films are scored
        return real_predictor(bundle, *args, **kwargs)

    monkeypatch.setattr(cv_module, "Predictor", stopped_while_scoring_the_second)
    out = tmp_path / "cv"
    cfg = TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=1, batch_size=8)
    with pytest.raises(KeyboardInterrupt):
        cross_validate(tiny_dataset, cfg, 3, out)
    assert sorted(p.name for p in out.glob("split-fold-*.csv")) == [f"split-fold-{k}.csv" for k in range(3)]
    assert main(["ensemble", "--cv", str(out), "--out", str(tmp_path / "ensemble")]) == 2
    assert "not a finished cv run: 2 of its 3 folds were trained" in capsys.readouterr().err
    assert not (tmp_path / "ensemble").exists()


def test_a_cv_of_fewer_folds_over_a_stopped_one_of_more_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    """A 3-fold cv stopped once its manifests were written, then run again with --folds 2 into the same OUT, left
    split-fold-2.csv: the finished 2-fold run was then refused for good by `ensemble --cv` as one stopped between
    folds. Refused before anything is written."""
    out = tmp_path / "cv"
    out.mkdir()
    write_manifest(discover(tiny_dataset).split("train")[:2], out / "split-fold-2.csv")
    cfg = TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match=r"holds fold 2 of a cv of more folds than folds \(--folds\) 2 "
                                         r"\(split-fold-2.csv or fold-2/\): use a new out_dir \(--out\)"):
        cross_validate(tiny_dataset, cfg, 2, out)
    assert [p.name for p in out.iterdir()] == ["split-fold-2.csv"]
