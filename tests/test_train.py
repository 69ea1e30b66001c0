"""Training, resume, threshold, bundle round trip and evaluation on a tiny synthetic dataset (seconds each)."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data.distributed import DistributedSampler

from pneumoscan import __version__
from pneumoscan.cli import main
from pneumoscan.core.metrics import choose_threshold, format_figure
from pneumoscan.data import cache as cache_mod
from pneumoscan.data.cache import build_cache
from pneumoscan.data.layouts import discover, write_manifest
from pneumoscan.data.tasks import binary_targets, get_task, select
from pneumoscan.data.augment import Augment
import pneumoscan.evaluation.operating_point as operating_point
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.inference.predict import Predictor, predict_paths
from pneumoscan.models import registry as models
from pneumoscan.models.bundle import load_bundle, load_weights_into, save_bundle
from pneumoscan.models import card as card_mod
from pneumoscan.models.card import (INIT_CARD, INIT_IN_PLACE, INIT_SAMPLE, SAMPLED_FROM, WEIGHTS, BundleCard,
                                   load_card, sample_record, save_card)
from pneumoscan.models.run_folder import RunFolder
from pneumoscan.training import train as train_mod
from pneumoscan.training.callbacks import lr_factor, schedule_done
from pneumoscan.training.config import load_config, TrainConfig
from pneumoscan.training.distributed import Dist
from pneumoscan.training.cv import warn_fold_versions
from pneumoscan.training.resume import TRAINED_BY, config_changes
from pneumoscan.training.engine import Callback, State
from pneumoscan.training.distributed import setup_distributed
from pneumoscan.training.train import stream_seed, train
from pneumoscan.training.warm_start import warm_start_head, WARM_START_L2
from tests.builders import SCORE_TOL, Crash, crash_in_epoch, crashed_at_finish, trial_copy
from tests.conftest import _once_per_run
from tests.distributed_stubs import CountingProbe, probe_films

# A timm model (with stages, and a head the warm start fits), of 100 k parameters: the trained one of timm_bundle
TIMM_MODEL = "test_efficientnet"
TINY = dict(model="simple_cnn", pretrained=False, image_size=32, epochs=2, batch_size=8, lr=3e-3, val_fraction=0.25)
# What precision auto computes in here: bf16 where train() finds CUDA (its checkpoints and cards say so), else fp32.
AUTO_PRECISION = "bf16" if torch.cuda.is_available() else "fp32"


@pytest.mark.parametrize("task, made_by", [pytest.param("pneumonia", "tiny_bundle", id="pneumonia"),
                                           pytest.param("etiology", "tiny_etiology_bundle", id="etiology"),
                                           pytest.param("multiclass", "tiny_multiclass_bundle", id="multiclass")])
def test_tiny_training_run_writes_a_complete_bundle(request: pytest.FixtureRequest, task: str, made_by: str) -> None:
    """Each task's tiny run (the session's, trained by conftest._tiny_bundle) as train() left it."""
    bundle: Path = request.getfixturevalue(made_by)
    run = bundle.parent
    model, card = load_bundle(bundle)
    assert card.task == task and len(card.classes) == {"multiclass": 3}.get(task, 2)
    assert 0.0 <= card.threshold <= 1.0 and card.temperature > 0 and card.data_fingerprint
    assert card.val_metrics["n"] > 0 and 0.0 <= card.val_metrics["auc"] <= 1.0
    for name in ("history.csv", "curves.png", "config.yaml", "split.csv", "report.html", "metrics.json",
                 "checkpoint.pt"):
        assert (run / name).is_file(), name
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "train_acc", "train_auc", "val_loss", "val_acc", "val_auc"} <= set(header)
    assert not list(bundle.glob("*.pt")) and not list(bundle.glob("*.pkl")), "bundles hold no pickles"
    split = discover(run / "split.csv").records
    train_patients = {r.patient for r in split if r.split == "train"}
    assert train_patients.isdisjoint({r.patient for r in split if r.split == "val"})
    assert not any(r.split == "test" for r in split), "test images never enter training or validation"


def test_validation_figures_record_the_films_they_leave_out(tiny_bundle: Path, tiny_etiology_bundle: Path) -> None:
    """An etiology run's validation NORMAL films are no part of its validation figures: metrics.json, the card's
    val_metrics, MODEL_CARD.md and train's closing lines say how many were left out and why, as evaluate's do (they
    logged it only); a run that left none out records none."""
    from pneumoscan.cli import _trained

    run = tiny_etiology_bundle.parent
    normal = sum(r.label == "NORMAL" for r in discover(run / "split.csv").records if r.split == "val")
    reason = "of class NORMAL, which the etiology task does not read (bacteria, virus)"
    card, metrics = load_card(tiny_etiology_bundle), json.loads((run / "metrics.json").read_text())
    assert normal and metrics["left_out"] == card.val_metrics["left_out"] == [{"films": normal, "reason": reason}]
    said = (f"{normal} of the {card.val_metrics['n'] + normal} films given are left out of the figures, which are of "
            f"the other {card.val_metrics['n']} only: {normal} films {reason}")
    assert f"**Caveat:** {said}." in (tiny_etiology_bundle / "MODEL_CARD.md").read_text()
    assert _trained(tiny_etiology_bundle).endswith(f"\n   {said}")
    assert load_card(tiny_bundle).val_metrics["left_out"] == []
    assert "left out of the figures" not in _trained(tiny_bundle)


def test_train_says_a_three_class_bundles_decision_figures(tiny_multiclass_bundle: Path, tiny_bundle: Path) -> None:
    """train's closing line gave a multiclass bundle's pneumonia-or-not figures alone; its most probable class's
    accuracy, balanced accuracy and macro AUC (in its card, printed by cv and evaluate) were not said."""
    from pneumoscan.cli import _trained

    val = load_card(tiny_multiclass_bundle).val_metrics
    said = (f"\n   most probable class: accuracy {format_figure(val['three_class_accuracy'], 4)}, balanced accuracy "
            f"{format_figure(val['three_class_balanced_accuracy'], 4)}, macro AUC "
            f"{format_figure(val['three_class_macro_auc'], 4)}")
    assert said in _trained(tiny_multiclass_bundle)
    assert "most probable class" not in _trained(tiny_bundle)


@pytest.fixture(scope="session")
def learnt_bundle(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run long enough to learn the tiny dataset's signal (5 epochs scored the test films' AUC 1.0 here, as 10 did;
    3 scored 0.89), its thresholds chosen for a sensitivity of 0.9: one run for the test that it learns and the
    test of its thresholds (the target sets the thresholds only, not the weights). Built once a run, not once a
    worker: pytest-xdist's worksteal may give the two tests, far apart in the module, to two workers."""
    cfg = TrainConfig(**{**TINY, "epochs": 5, "patience": 10, "target_sensitivity": 0.9})
    return _once_per_run(tmp_path_factory, "learnt_bundle", lambda folder: train(tiny_dataset, cfg, folder / "run"))


def test_thresholds_meet_target_sensitivity_on_validation(learnt_bundle: Path) -> None:
    bundle = learnt_bundle
    card = load_bundle(bundle)[1]
    split = bundle.parent / "split.csv"
    for tta, threshold in ((False, card.threshold), (True, card.tta_threshold)):
        metrics = evaluate(bundle, split, split="val", tta=tta)
        assert metrics["sensitivity"] >= 0.9, tta
        assert metrics["threshold"] == pytest.approx(threshold), tta
    # the TTA threshold is chosen on the averaged views' scores, not carried over from the plain ones
    predictor = Predictor(bundle)
    records, targets = select([r for r in discover(split).records if r.split == "val"], predictor.task)
    cache = build_cache([r.path for r in records], card.spec)
    views = predictor.positive_probability(
        predictor.probabilities(cache.images[cache.rows([r.path for r in records])], tta=True))
    assert card.tta_threshold == pytest.approx(choose_threshold(binary_targets(targets), views, 0.9), abs=1e-4)


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.8, "augment": Augment(mixup=0.4, cutmix=1.0)}],
                         ids=["plain", "ema-mixing"])
def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_dataset: Path, tmp_path: Path, extra: dict) -> None:
    """Both runs stop once their last epoch is checkpointed: RUN/best, the weights their bundles would ship
    (test_a_kill_while_the_checkpoint_is_written_never_ships_that_epochs_weights finishes a resumed run's), and the
    live weights the checkpoint keeps are the same, with and without the moving average and mixing."""
    cfg = TrainConfig(**{**TINY, "patience": 10, **extra})  # 2 epochs: the second one resumed
    with pytest.raises(Crash):
        train(tiny_dataset, cfg, tmp_path / "straight", on_epoch_end=crash_in_epoch(1))

    with pytest.raises(Crash):
        train(tiny_dataset, cfg, tmp_path / "resumed", on_epoch_end=crash_in_epoch(0))
    assert not (tmp_path / "resumed" / "bundle").exists()
    with pytest.raises(Crash):
        train(tiny_dataset, cfg, tmp_path / "resumed", resume=True, on_epoch_end=crash_in_epoch(1))
    history = (tmp_path / "resumed" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2, "the finished epoch is kept, none is repeated or lost"
    for run in ("straight", "resumed"):
        assert not (tmp_path / run / "bundle").exists(), run
    a, b = (load_file(str(tmp_path / run / "best" / WEIGHTS)) for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("straight", "resumed"))
    assert a["epoch"] == b["epoch"] == 1 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    _assert_same_state(a["callbacks"], b["callbacks"], "callbacks")  # the moving average's weights among them


def _assert_same_state(a: object, b: object, where: str) -> None:
    """Two checkpoints' states are the same: the same keys and lengths, equal tensors and values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    else:
        assert a == b, where


class StopAfter(Callback):
    """A user's callback with state: ends training after ``epochs`` validations, counting across a resume."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.seen = epochs, []

    def on_validation_end(self, state: State) -> None:
        self.seen.append(state.row["val_auc"])
        state.stop = state.stop or len(self.seen) >= self.epochs

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, data: dict) -> None:
        self.seen = list(data["seen"])


def test_a_users_callbacks_run_in_the_loop_and_keep_their_state_across_a_resume(tiny_dataset: Path,
                                                                              tmp_path: Path) -> None:
    """train() took no callbacks of the caller's: adding one meant editing the library (its make_callbacks). One
    run, crashed after its first epoch and resumed, shows both: the callback sees each validation and its stop ends
    a 4-epoch run after 2 epochs, counting the epoch it saw before the crash (the resumed run reaches its finish
    there, where it crashes: its bundle would add nothing here)."""
    cfg = TrainConfig(**{**TINY, "epochs": 4, "patience": 10})
    first = StopAfter(2)
    with pytest.raises(Crash):
        train(tiny_dataset, cfg, tmp_path / "resumed", on_epoch_end=crash_in_epoch(0), callbacks=[first])
    assert len(first.seen) == 1, "the callback saw the first epoch's validation"
    again = StopAfter(2)
    with crashed_at_finish():
        train(tiny_dataset, cfg, tmp_path / "resumed", resume=True, callbacks=[again])
    assert again.seen[0] == first.seen[0], "the first epoch's validation came back with the checkpoint"
    assert len(again.seen) == 2 and len((tmp_path / "resumed" / "history.csv").read_text().splitlines()) == 1 + 2


def test_resume_refuses_other_settings_but_may_add_epochs(tiny_dataset: Path, tmp_path: Path) -> None:
    """A changed model used to fail in load_state_dict with a RuntimeError, and a changed rate or seed went on
    silently under a rewritten config.yaml."""
    run, cfg = tmp_path / "run", TrainConfig(**{**TINY, "patience": 10})
    with pytest.raises(Crash):
        train(tiny_dataset, cfg, run, on_epoch_end=crash_in_epoch(0))
    config_yaml = (run / "config.yaml").read_bytes()
    for change, said in (({"lr": 0.01}, "lr 0.003 -> 0.01"), ({"model": "cnn5"}, 'model "simple_cnn" -> "cnn5"'),
                         ({"seed": 1, "augment": Augment(noise=0.1)}, "seed 0 -> 1, augment.noise 0.04 -> 0.1")):
        with pytest.raises(ValueError, match=rf"it was made with other settings \({re.escape(said)}\); only epochs and "
                                             r"time_budget may change on a resume \(--resume\)"):
            train(tiny_dataset, dataclasses.replace(cfg, **change), run, resume=True)
        assert (run / "config.yaml").read_bytes() == config_yaml, "config.yaml still describes the checkpoint"
    resumed = train(tiny_dataset, dataclasses.replace(cfg, epochs=3), run, resume=True)
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 3, "the finished epoch kept, two more trained"
    assert load_bundle(resumed)[1].train_config["epochs"] == 3
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["config"] == dataclasses.asdict(dataclasses.replace(cfg, epochs=3))
    del ckpt["config"]  # as an older version wrote it: the config.yaml its run began with speaks for it
    train_mod.save_checkpoint(run / "checkpoint.pt", ckpt)
    with pytest.raises(ValueError, match=r"other settings \(lr 0.003 -> 0.01\)"):
        train(tiny_dataset, dataclasses.replace(cfg, epochs=3, lr=0.01), run, resume=True)
    (run / "config.yaml").unlink()
    with pytest.raises(ValueError, match="it records no training config and there is no config.yaml beside it"):
        train(tiny_dataset, dataclasses.replace(cfg, epochs=3), run, resume=True)


def test_resume_refuses_another_number_of_processes(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The global batch, the learning rate and the steps per epoch follow the processes: a 1-process checkpoint
    resumed under 2 went on at twice the rate over half the steps while its card said otherwise (test_distributed
    runs that under torchrun). Here a checkpoint that says 2 processes is resumed in 1."""
    run, cfg = tmp_path / "run", TrainConfig(**{**TINY, "patience": 10})
    with pytest.raises(Crash):
        train(tiny_dataset, cfg, run, on_epoch_end=crash_in_epoch(0))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["processes"] == 1
    train_mod.save_checkpoint(run / "checkpoint.pt", {**ckpt, "processes": 2})
    kept = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "config.yaml", "history.csv")}
    with pytest.raises(ValueError, match=r"^cannot resume from .*checkpoint\.pt: it was made by 2 process\(es\) and "
                                         r"this run has 1; .*: resume under 2, or train into a new run_dir \(--out\)$"):
        train(tiny_dataset, cfg, run, resume=True)
    assert {name: (run / name).read_bytes() for name in kept} == kept, "refused before anything in RUN is rewritten"
    # precision auto is bf16 on CUDA: a checkpoint made there went on in fp32 on a CPU machine, unsaid (and the
    # other way round on a GPU machine)
    assert ckpt["resolved_precision"] == AUTO_PRECISION
    other = {"bf16": "fp32", "fp32": "bf16"}[AUTO_PRECISION]
    train_mod.save_checkpoint(run / "checkpoint.pt", {**ckpt, "resolved_precision": other})
    with pytest.raises(ValueError, match=rf"its steps computed in {other} and this run's would compute in "
                                         rf"{AUTO_PRECISION} \(precision auto: auto is bf16 on CUDA, fp32 on CPU\)"):
        train(tiny_dataset, cfg, run, resume=True)

    assert ckpt[TRAINED_BY] == [__version__]
    for key in ("processes", "resolved_precision", "data", "teachers", TRAINED_BY):  # an earlier version's checkpoint
        del ckpt[key]  # records none of them: said, and resumed as before (a TypeError ended it, for want of teachers)
    train_mod.save_checkpoint(run / "checkpoint.pt", ckpt)
    with caplog.at_level("WARNING"):
        bundle = train(tiny_dataset, cfg, run, resume=True)
    assert "records no number of processes (an earlier version's): resuming under 1" in caplog.text
    assert "records no data checksum (an earlier version's)" in caplog.text and "teachers" not in caplog.text
    card = load_bundle(bundle)[1]
    assert card.train_config["processes"] == 1 and "processes: 1" in (bundle / "MODEL_CARD.md").read_text()
    assert config_changes(card.train_config, cfg) == [], "a record, not a setting: cv still takes the run as its own"
    resumed = torch.load(run / "checkpoint.pt", weights_only=True)
    assert resumed["processes"] == 1 and resumed[TRAINED_BY] == [None, __version__]  # its epochs' and this one's
    # the card keeps them, sealed with it: a later cv still names the finished run as trained by two versions
    assert card.train_config[TRAINED_BY] == [None, __version__]
    caplog.clear()
    with caplog.at_level("WARNING", logger="pneumoscan.training.cv"):
        warn_fold_versions([RunFolder(run)])
    assert f"run: a version before 0.3 (its checkpoint records none), then {__version__}" in caplog.text


def test_a_kill_while_the_checkpoint_is_written_never_ships_that_epochs_weights(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RUN/best took epoch 2's weights, then the run was killed while writing epoch 2's checkpoint. A resume that
    trained no further finalised those weights (the card's AUC epoch 2's) while the report said best epoch 1, and
    history.csv kept epoch 2's row."""
    real_row = train_mod.validation_row

    def rising(*args) -> object:  # every epoch better than the last: each one's weights go to RUN/best
        validate = real_row(*args)
        return lambda state, *rest: {**validate(state, *rest), "val_auc": 0.5 + 0.1 * state.epoch}

    real_save, first_best = train_mod.save_checkpoint, {}

    def killed_in_second(path: Path, state: dict) -> None:
        if state["epoch"] == 1:
            raise Crash
        real_save(path, state)

    run, cfg = tmp_path / "run", TrainConfig(**{**TINY, "epochs": 3, "patience": 10})
    monkeypatch.setattr(train_mod, "validation_row", rising)
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(train_mod, "save_checkpoint", killed_in_second)
        train(tiny_dataset, cfg, run, on_epoch_end=lambda _: first_best.update(load_file(str(run / "best" / WEIGHTS))))
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 2
    killed = load_file(str(run / "best" / WEIGHTS))
    assert not all(torch.equal(killed[k], first_best[k]) for k in killed), "RUN/best holds the killed epoch's weights"

    bundle = train(tiny_dataset, dataclasses.replace(cfg, epochs=1), run, resume=True)
    for folder in (run / "best", bundle):
        shipped = load_file(str(folder / WEIGHTS))
        assert all(torch.equal(shipped[k], first_best[k]) for k in first_best), folder
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 1, "no row of an epoch the checkpoint lacks"
    assert "<th>best epoch</th><td>1</td>" in (run / "report.html").read_text()


def test_resume_refuses_other_films(tiny_dataset: Path, tmp_path: Path) -> None:
    """The same settings on other films: a manifest rewritten in place, or other data split the default way."""
    manifest = tmp_path / "split.csv"
    records = train_mod.split_records(tiny_dataset, TrainConfig(**TINY))[0]
    write_manifest(records, manifest)
    cfg = TrainConfig(**{**TINY, "split_csv": str(manifest)})
    with pytest.raises(Crash):
        train(tiny_dataset, cfg, tmp_path / "manifest-run", on_epoch_end=crash_in_epoch(0))
    n_val = sum(r.split == "val" for r in records)
    moved = next(i for i, r in enumerate(records) if r.split == "train")
    write_manifest([dataclasses.replace(r, split="val") if i == moved else r for i, r in enumerate(records)], manifest)
    with pytest.raises(ValueError, match=rf"trained on another split \(1 film\(s\) .*; 1 of the {n_val + 1} validation "
                                         r"films here were training films there\)"):
        train(tiny_dataset, cfg, tmp_path / "manifest-run", resume=True)
    write_manifest(records, manifest)  # the same films, the manifest named another way: resumed, so it trains its
    (tmp_path / "same-films.csv").symlink_to(manifest)  # second epoch (a crash after it spares the bundle's figures)
    with pytest.raises(Crash):
        train(tiny_dataset, dataclasses.replace(cfg, split_csv=str(tmp_path / "same-films.csv")),
              tmp_path / "manifest-run", resume=True, on_epoch_end=crash_in_epoch(1))

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    with pytest.raises(Crash):
        train(data, TrainConfig(**TINY), tmp_path / "run", on_epoch_end=crash_in_epoch(0))
    next((data / "train" / "NORMAL").iterdir()).unlink()
    with pytest.raises(ValueError, match=r"trained on another split \(\d+ film\(s\) "):
        train(data, TrainConfig(**TINY), tmp_path / "run", resume=True)


def test_a_run_fine_tunes_its_own_bundle_in_place(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """--init RUN/bundle --out RUN: the bundle is read before the run folder is cleared for the new run (RUN a copy
    of the tiny run). The card records the bundle it started from (init_card, read at the start: read at the end,
    when the bundle was gone, none was recorded) and says that it was an earlier version of itself, which the run
    replaced (its --init names its own path). That bundle learnt from all the patients of its data: init_sample
    says so ({}), and the card calls nothing a trial. The films the weights learnt are the run's own: evaluation
    still refuses them. The weights were trained by the versions that trained the bundle's (one resumed from a 0.2.0
    checkpoint: [null, this one]) and go on being trained by this one: the card named this one alone."""
    run, cfg = tmp_path / "run", TrainConfig(**{**TINY, "epochs": 1})
    started = load_bundle(shutil.copytree(tiny_bundle.parent, run) / "bundle")[1]
    save_card(run / "bundle", dataclasses.replace(started, train_config={**started.train_config,
                                                                         TRAINED_BY: [None, __version__]}))
    checksum = card_mod.bundle_checksums([run / "bundle"])[0]
    again = train(tiny_dataset, dataclasses.replace(cfg, init=str(run / "bundle")), run)
    config = load_bundle(again)[1].train_config
    assert config["init"] == str(run / "bundle") and load_bundle(again)[1].files != started.files
    assert config[INIT_CARD] == checksum and config[INIT_IN_PLACE] is True and config[INIT_SAMPLE] == {}
    assert config[TRAINED_BY] == [None, __version__], "the starting bundle's versions first, each once"
    assert torch.load(run / "checkpoint.pt", weights_only=True)[TRAINED_BY] == config[TRAINED_BY], "a resume's too"
    text = " ".join((again / "MODEL_CARD.md").read_text(encoding="utf-8").split())
    assert (f"Its weights were begun by a version of pneumoscan before 0.3, which recorded none, and finished by "
            f"pneumoscan {__version__}.") in text
    assert (f"**It was fine-tuned from the bundle it replaced** (`--init {run / 'bundle'}`, whose bundle.json's "
            f"checksum was {checksum}): that bundle's weights and card are no longer there, and its path holds this "
            "bundle. The films were split by patient into training and validation.") in text, text
    trained = [dataclasses.replace(r, split="") for r in discover(run / "split.csv").records if r.split == "train"]
    write_manifest(trained, tmp_path / "trained.csv")
    with pytest.raises(ValueError, match=rf"were in {re.escape(str(again))}'s training split"):
        evaluate(again, tmp_path / "trained.csv")


def test_a_fine_tune_on_too_few_films_keeps_the_content_check_of_the_bundle_it_started_from(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bundle fine-tuned (--init) on fewer than 100 films (the tiny run's 36 training films) recorded no appearance
    of its own and dropped the image content check of the bundle it started from: an inverted film that bundle
    warned of was read without a word. It keeps that bundle's check (the bundle a copy of the tiny run with one), and
    its card, MODEL_CARD.md and the log say where the check came from and how many of the run's own films it flags."""
    from pneumoscan.data.scope import UNLIKE_LAYOUT
    from tests.builders import UNCHECKED, with_appearance_of

    start = shutil.copytree(tiny_bundle.parent, tmp_path / "start") / "bundle"
    kept = with_appearance_of(start, tiny_dataset)
    source = sorted((tiny_dataset / "test" / "NORMAL").glob("*.jpeg"))[0]
    inverted = tmp_path / "inverted.jpeg"
    Image.fromarray(255 - np.asarray(Image.open(source).convert("L"))).save(inverted, quality=95)
    (warned,) = predict_paths(start, [inverted])
    assert any(map(UNLIKE_LAYOUT.wrote, warned["warnings"])), warned["warnings"]
    caplog.set_level(logging.INFO, logger="pneumoscan")
    tuned = train(tiny_dataset, TrainConfig(**{**TINY, "epochs": 1, "init": str(start)}), tmp_path / "tuned")
    (row,) = predict_paths(tuned, [inverted])
    assert UNCHECKED not in row["warnings"] and row["warnings"] == warned["warnings"], row["warnings"]
    assert all(np.array_equal(a, b) for a, b in zip(Predictor(tuned).appearance.to_arrays().values(),
                                                    kept.to_arrays().values()))
    from pneumoscan.models.card import APPEARANCE_FROM_INIT

    films = sum(r.split == "train" for r in discover(tmp_path / "tuned" / "split.csv").records)
    assert load_card(tuned).train_config[APPEARANCE_FROM_INIT] == {"films": films, "flagged": 0}
    said = (f"{films} training films, fewer than 100 to learn their appearance from: the image content check is that "
            f"of the bundle it started from (init {start}), which flags 0 of them")
    assert said in caplog.text, caplog.text
    text = " ".join((tuned / "MODEL_CARD.md").read_text(encoding="utf-8").split())
    assert (f"**Its image content check is that of the bundle it started from** (`--init`): it trained on {films} "
            "films, fewer than the 100 it takes to learn what films look like, so films are compared with the "
            f"training films of that bundle's check, which flags 0 of its {films} training films as unlike "
            "them.") in text, text


def test_a_start_bundle_whose_check_reads_films_otherwise_says_how_in_words(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bundle trained on the Kermany train folder brings larger films down to 224 px JPEG first; fine-tuned on a
    site's PNG films, which are not, its content check is not kept, and the log said why in Python's spelling
    (``PreprocessSpec(size=32, policy='squash', source_size=None, source_quality=None)``)."""
    from pneumoscan.data.preprocess import PreprocessSpec
    from tests.builders import with_appearance_of

    start = shutil.copytree(tiny_bundle.parent, tmp_path / "start") / "bundle"
    with_appearance_of(start, tiny_dataset)
    kermany = dataclasses.replace(load_card(start), source_size=224, source_quality=75)
    with caplog.at_level(logging.INFO, logger="pneumoscan"):
        assert train_mod.start_appearance(TrainConfig(**{**TINY, "init": str(start)}), kermany, PreprocessSpec(32)) \
            is None
    assert (f"the image content check of init {start} is of films prepared otherwise (32 x 32 px, squash, inputs "
            "larger than 224 px first brought down to 224 px JPEG quality 75) than this run's (32 x 32 px, squash): "
            "it is not kept") in caplog.text, caplog.text


def test_an_in_place_fine_tune_that_would_lose_what_its_weights_learnt_is_refused(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Fine-tuning a run's own bundle in place replaces its card and split.csv, which alone say which films its
    weights learnt: on other films (a split one film short here), or when its card names a bundle it started from
    (or teachers), whose training films evaluation follows, those records would be lost and evaluation would take
    the films for unseen ones. Refused before the run folder is touched; into a new --out both stay."""
    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run")
    records = discover(run / "split.csv").records
    short = [r for r in records if r is not next(r for r in records if r.split == "train")]
    write_manifest(short, tmp_path / "short.csv")
    cfg = TrainConfig(**{**TINY, "epochs": 1, "init": str(run / "bundle")})
    kept = (run / "bundle" / "bundle.json").read_bytes()
    with pytest.raises(ValueError, match=r"is this run's own bundle, which the run replaces with its card and split: "
                                         r"this run trains and validates on other films than it did \(1 film\(s\) "
                                         r"on the other side or in only one of the two\), .*: fine-tune it into a new "
                                         r"run_dir \(--out\)"):
        train(tiny_dataset, dataclasses.replace(cfg, split_csv=str(tmp_path / "short.csv")), run)
    assert (run / "bundle" / "bundle.json").read_bytes() == kept
    card = load_card(run / "bundle")
    save_card(run / "bundle", dataclasses.replace(card, train_config={**card.train_config, "init": str(tiny_bundle)}))
    kept = (run / "bundle" / "bundle.json").read_bytes()
    with pytest.raises(ValueError, match=rf"its card is what names the bundles its weights learnt from "
                                         rf"\({re.escape(str(tiny_bundle))}\), whose training films evaluation checks "
                                         r"it against: fine-tune it into a new run_dir \(--out\)"):
        train(tiny_dataset, cfg, run)
    assert (run / "bundle" / "bundle.json").read_bytes() == kept


def test_an_in_place_fine_tune_interrupted_goes_on_from_its_checkpoint(tiny_bundle: Path, tiny_dataset: Path,
                                                                        tmp_path: Path) -> None:
    """The run clears RUN/bundle, the bundle it starts from, at its start: stopped after an epoch, its --resume failed
    on that missing bundle ("is not a bundle folder"), its finished epochs lost with the bundle (RUN a copy of the
    tiny run). The bundle was a trial (train --patients): the run records its sample (init_sample) from the start,
    through the checkpoint, though that bundle is gone, and its card says it (a run started from a trial's weights
    was called a run on all the films). The bundle's image content check is kept through the checkpoint too, as the
    run on too few films to learn its own keeps it (the resumed bundle recorded none)."""
    from tests.builders import with_appearance_of

    run = trial_copy(tiny_bundle, tmp_path / "run", 20, 1).parent
    kept = with_appearance_of(run / "bundle", tiny_dataset)
    tune = TrainConfig(**{**TINY, "init": str(run / "bundle")})
    with pytest.raises(Crash):
        train(tiny_dataset, tune, run, on_epoch_end=crash_in_epoch(0))
    assert not (run / "bundle").exists() and (run / "checkpoint.pt").exists()
    resumed = train(tiny_dataset, tune, run, resume=True)
    config = load_bundle(resumed)[1].train_config
    assert config["init"] == str(run / "bundle") and config["patients"] is None
    assert config[INIT_SAMPLE] == {"patients": 20, SAMPLED_FROM: 48, "seed": 1}
    # and the training data of the bundle it started from, kept through the checkpoint too
    from pneumoscan.data.layouts import KERMANY

    assert [(s["name"], s["started_from"]) for s in load_card(resumed).training_data] == [(KERMANY, True),
                                                                                         (KERMANY, False)]
    assert Predictor(resumed).appearance is not None, "the content check was dropped"
    assert all(np.array_equal(a, b) for a, b in zip(Predictor(resumed).appearance.to_arrays().values(),
                                                    kept.to_arrays().values()))
    text = " ".join((resumed / "MODEL_CARD.md").read_text(encoding="utf-8").split())
    assert ("**It was started from the weights of a bundle that learnt from a sample of patients** (`--init`: a "
            "sample of 20 of the 48 patients of its data, seed 1): what those weights learnt comes from those patients "
            "alone. The films were split by patient into training and validation: a trial, whose figures do not show "
            "what training on all the films gives.") in text, text
    assert [int(row["epoch"]) for row in csv.DictReader((run / "history.csv").open())] == [1, 2]


def test_an_in_place_fine_tune_resumed_from_a_checkpoint_older_than_its_record_claims_no_checksum(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """A checkpoint of an in-place fine-tune made before the starting bundle was read as the run starts holds no
    init_card, init_in_place or init_sample, and that bundle is gone: the resumed run recorded none of them, and its
    card called the bundle it replaced, at this bundle's own path, another bundle, as though it were still there.
    It records that the run fine-tuned its own bundle (known from its settings and folder) and no checksum it never
    read, and its card says both, and that the starting weights' sample of patients is not known."""
    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run")
    tune = TrainConfig(**{**TINY, "init": str(run / "bundle")})
    with pytest.raises(Crash):
        train(tiny_dataset, tune, run, on_epoch_end=crash_in_epoch(0))
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({k: v for k, v in checkpoint.items() if k not in (INIT_CARD, INIT_IN_PLACE, INIT_SAMPLE)},
               run / "checkpoint.pt")  # as an earlier version wrote it
    config = load_bundle(train(tiny_dataset, tune, run, resume=True))[1].train_config
    assert config[INIT_IN_PLACE] is True and INIT_CARD not in config and INIT_SAMPLE not in config, config
    text = " ".join((run / "bundle" / "MODEL_CARD.md").read_text(encoding="utf-8").split())
    assert (f"**It was fine-tuned from the bundle it replaced** (`--init {run / 'bundle'}`): that bundle's weights and "
            "card are no longer there, and its path holds this bundle. **It was started from the weights of another "
            f"bundle** (`--init {run / 'bundle'}`), and this run began before that bundle's sample of patients was "
            "recorded: whether those weights learnt from a sample of patients, or from which, is not known "
            "here.") in text, text


def test_a_start_from_a_bundle_that_trained_on_the_validation_films_is_refused(tiny_bundle: Path, tiny_dataset: Path,
                                                                                tmp_path: Path) -> None:
    """Weights that learnt the validation films would choose the best epoch, temperature and threshold on films the
    model has seen (a cv run started from a bundle of the whole pool scored 0.785 "out of fold" for 0.596); and
    evaluation counts the starting bundle's training films as the new bundle's own."""
    swapped = [dataclasses.replace(r, split={"train": "val", "val": "train"}.get(r.split, r.split))
               for r in discover(tiny_bundle.parent / "split.csv").records]
    manifest, run = tmp_path / "swapped.csv", tmp_path / "run"
    write_manifest(swapped, manifest)
    with pytest.raises(ValueError, match=r"validate a model started from .* were in .*'s training split \(e\.g\. .*\): "
                                         r"validate a model started from .* on films .*/bundle did not train on"):
        train(tiny_dataset, TrainConfig(**{**TINY, "split_csv": str(manifest), "init": str(tiny_bundle)}), run)
    assert not run.exists(), "refused before the run folder is made"
    started = shutil.copytree(tiny_bundle, tmp_path / "started" / "bundle")  # as a run started from it records it
    card = load_card(started)
    save_card(started, dataclasses.replace(card, train_config=card.train_config | {"init": str(tiny_bundle)}))
    with pytest.raises(ValueError, match=r"training split .*\(.*started from its weights"):
        evaluate(started, tiny_dataset, split="train")


def test_a_split_manifest_with_a_patient_on_both_sides_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    """Validation would choose the threshold, the temperature and the epoch on a patient trained on."""
    records = train_mod.split_records(tiny_dataset, TrainConfig(**TINY))[0]
    val = next(r for r in records if r.split == "val")
    first_train = next(i for i, r in enumerate(records) if r.split == "train")
    manifest, run = tmp_path / "split.csv", tmp_path / "run"
    write_manifest([dataclasses.replace(r, patient=val.patient) if i == first_train else r
                    for i, r in enumerate(records)], manifest)
    with pytest.raises(ValueError, match=rf"1 patient\(s\) have films in both train and val \(e.g. {val.patient}\)"):
        train(tiny_dataset, TrainConfig(**{**TINY, "split_csv": str(manifest)}), run)
    assert not run.exists(), "refused before the run folder is made"
    write_manifest(records, manifest)
    assert len(train_mod.split_records(tiny_dataset, TrainConfig(split_csv=str(manifest)))[0]) == len(records)


def test_a_finalisation_that_fails_leaves_the_bundle_whole_and_resume_finishes_it(
    tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle is built beside RUN/bundle and renamed into place: a finalisation killed or failed at its last
    step leaves the earlier bundle (or none), never a half one that cv would count as a finished fold."""
    def killed(*args) -> None:
        raise Crash

    fresh, cfg = tmp_path / "fresh", TrainConfig(**{**TINY, "epochs": 1, "patience": 10})
    with pytest.raises(Crash):  # a fresh run, its last write before the bundle is complete failing
        with monkeypatch.context() as patched:
            patched.setattr(operating_point, "write_onnx_spec", killed)  # the bundle's last write
            train(tiny_dataset, cfg, fresh)
    assert not (fresh / "bundle").exists() and not [p.name for p in fresh.iterdir() if p.name.startswith(".")]
    bundle = train(tiny_dataset, cfg, fresh, resume=True)  # finalised, nothing trained again
    assert (bundle / "MODEL_CARD.md").is_file() and len((fresh / "history.csv").read_text().splitlines()) == 1 + 1
    # a finished run (a copy of the tiny one, of 2 epochs) extended by an epoch
    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (run / "bundle").iterdir()}
    longer = dataclasses.replace(load_config(run / "config.yaml"), epochs=3)
    with pytest.raises(Crash):  # the run extended by an epoch, failing the same way
        with monkeypatch.context() as patched:
            patched.setattr(operating_point, "write_onnx_spec", killed)  # the bundle's last write
            train(tiny_dataset, longer, run, resume=True)
    assert {p.name: p.read_bytes() for p in (run / "bundle").iterdir()} == before, "the earlier bundle, whole"
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "no half-built bundle left beside it"
    bundle = train(tiny_dataset, longer, run, resume=True)
    assert load_bundle(bundle)[1].train_config["epochs"] == 3 and (bundle / "MODEL_CARD.md").is_file()
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 3, "nothing trained again, only finalised"


def test_the_bundle_holds_the_moving_average_of_the_weights(tiny_dataset: Path, tmp_path: Path) -> None:
    bundle = train(tiny_dataset, TrainConfig(**{**TINY, "epochs": 1, "ema_decay": 0.5}), tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)  # as the bundle
    average, live, shipped = (ckpt["callbacks"]["WeightAverage"], ckpt["model"],
                              load_file(str(bundle / "model.safetensors")))
    assert int(average["n_averaged"]) == ckpt["step"] > 1
    assert all(torch.equal(shipped[k], average[f"module.{k}"]) for k in shipped)
    assert not all(torch.equal(shipped[k], live[k]) for k in shipped), "the last step's weights are not shipped"


def test_resume_after_early_stopping_trains_no_further(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash after the epoch that ended training (patience used up) must not let --resume train on. The log says
    the epoch, then that it stopped training (it had said "early stopping" before the epoch it was of)."""
    real_row = train_mod.validation_row

    def flat(*args) -> object:  # no epoch better than the first: patience 1 stops after the second
        validate = real_row(*args)
        return lambda state, *rest: {**validate(state, *rest), "val_auc": 0.6}

    monkeypatch.setattr(train_mod, "validation_row", flat)
    cfg = TrainConfig(**{**TINY, "epochs": 4, "patience": 1})
    with caplog.at_level("INFO", logger="pneumoscan.training"), pytest.raises(Crash):
        train(tiny_dataset, cfg, tmp_path / "run", on_epoch_end=crash_in_epoch(1))
    said = [r.getMessage() for r in caplog.records if r.name.startswith("pneumoscan.training.callbacks")]
    assert [line.split(":")[0] for line in said] == ["epoch 1", "epoch 2", "early stopping"], said
    best = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    resumed = train(tiny_dataset, cfg, tmp_path / "run", resume=True)
    assert len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 1 + 2
    again = load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(best[k], again[k]) for k in best)


def test_the_best_weights_so_far_are_no_model_to_use(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """RUN/best has no temperature, threshold or validation figures: predict read films with it at 0.5 and exit 0.
    It is refused naming what to use, the run's bundle or, before there is one, finishing the run."""
    film = next((tiny_dataset / "test" / "NORMAL").iterdir())
    run = tiny_bundle.parent
    assert main(["predict", str(run / "best"), str(film)]) == 2
    assert capsys.readouterr().err == (
        f"pneumoscan predict: error: {run / 'best'} holds the best epoch's weights that a training run keeps while it "
        "trains, not a model to use: no temperature, threshold or validation figures were chosen for them; use "
        f"{run / 'bundle'}, the run's finished bundle\n")
    unfinished = shutil.copytree(run / "best", tmp_path / "run" / "best")  # a run stopped before its bundle
    remedy = (f"finish the run (`pneumoscan train --resume --out {tmp_path / 'run'}`, with the data and settings of "
              f"{tmp_path / 'run' / 'config.yaml'}), then use {tmp_path / 'run' / 'bundle'}")
    with pytest.raises(ValueError, match=re.escape(remedy)):
        load_bundle(unfinished)
    assert load_bundle(unfinished, best_so_far=True)[1].threshold_policy == "fixed 0.5"  # as training finishes it
    assert main(["predict", str(tiny_bundle), str(film)]) == 0


class BudgetSpent(Callback):
    """Ends training before its first step, as a time budget spent by then does."""

    def before_step(self, state: State) -> None:
        state.stop = state.end_epoch = True


def test_a_run_that_takes_no_step_fails_plainly_and_never_ships_old_weights(
    tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """An earlier run's best weights, bundle and checkpoint in the same folder: a new run that stops before its first
    checkpoint must not leave them to be finalised, read beside its split.csv, or resumed under its config.yaml."""
    run = tmp_path / "run"
    for name in ("best", "bundle"):
        shutil.copytree(tiny_bundle, run / name)
    train_mod.save_checkpoint(run / "checkpoint.pt", {"epoch": 0})
    reports = ("history.csv", "metrics.json", "report.html", "curves.png")  # of the earlier run's bundle
    for name in reports:
        (run / name).write_text("the earlier run's")
    with pytest.raises(ValueError, match="^no epoch was validated: the time budget ran out before the first step: "
                                         r"raise time_budget \(--time-budget\)$"):
        train(tiny_dataset, TrainConfig(**TINY), run, callbacks=[BudgetSpent()])
    assert not (run / "best").exists() and not (run / "bundle").exists() and not (run / "checkpoint.pt").exists()
    assert not [name for name in reports if (run / name).exists()], "no report of a bundle no longer there"


def test_a_run_into_a_finished_runs_folder_says_which_bundle_it_replaces_before_removing_it(
    tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Training again into a folder that holds a finished run (without --resume) deleted its bundle, and the records
    `evaluate --add-to-card` had added to its card, without a line: one warning names the bundle, its validation AUC
    and its added records, while the bundle is still there."""
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle.parent, run)
    card = load_card(run / "bundle")
    save_card(run / "bundle", dataclasses.replace(card, external_evaluations=[{"data": "site B"}]))
    seen: list[tuple[str, bool]] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), (run / "bundle").exists()))

    handler = Seen(logging.WARNING)
    logging.getLogger("pneumoscan").addHandler(handler)
    try:
        with pytest.raises(ValueError, match="^no epoch was validated"):
            train(tiny_dataset, TrainConfig(**TINY), run, callbacks=[BudgetSpent()])
    finally:
        logging.getLogger("pneumoscan").removeHandler(handler)
    said = [(message, there) for message, there in seen if "replaces" in message]
    auc = f"{card.val_metrics['auc']:.4f}"
    assert said == [(f"{run} holds a finished run, which this run replaces: its bundle (validation AUC {auc}; 1 "
                     "evaluation added to its card) is deleted now, with its checkpoint and reports; train into a new "
                     "run_dir (--out) to keep a run", True)], seen
    assert not (run / "bundle").exists()


def test_a_run_into_an_unfinished_runs_folder_says_how_far_it_got_and_that_resume_goes_on_from_it(
    tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Training without --resume into the folder of a run stopped by Ctrl-C (a checkpoint and a history, no bundle)
    cleared its epochs without a line: one warning names its last epoch and --resume while the checkpoint is still
    there. A run training refused (RUN/refused.txt), which --resume would replay into the same refusal, gets none."""
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle.parent, run)
    shutil.rmtree(run / "bundle")
    last = RunFolder(run).epochs()[-1]["epoch"]
    seen: list[tuple[str, bool]] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), (run / "checkpoint.pt").exists()))

    handler = Seen(logging.WARNING)
    logging.getLogger("pneumoscan").addHandler(handler)
    try:
        for _ in range(2):  # the second trains into the first's refused run
            with pytest.raises(ValueError, match="^no epoch was validated"):
                train(tiny_dataset, TrainConfig(**TINY), run, callbacks=[BudgetSpent()])
    finally:
        logging.getLogger("pneumoscan").removeHandler(handler)
    said = [(message, there) for message, there in seen if "replaces" in message]
    assert said == [(f"{run} holds an unfinished run, which this run replaces: its checkpoint after epoch {last} is "
                     "deleted now, with its history; train with resume (--resume) to go on from a run's "
                     "checkpoint", True)], seen
    assert (run / "refused.txt").exists() and not (run / "checkpoint.pt").exists()


def test_settings_that_can_only_be_mistakes_are_refused_before_the_run_folder_is_touched(
    tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """seed -1 and trainable_stages beyond the model's stages failed after an earlier run's bundle and checkpoint in
    --out were deleted; model_kwargs the model does not take ended in a TypeError traceback; lr inf trained until
    its first step diverged; a distill_weight without a teacher was recorded as if the run had one."""
    for bad, said in (({"seed": -1}, "seed must be 0 to 2**63 - 1 (torch's seeds are 64-bit), got -1"),
                      ({"seed": 10**20}, "seed must be 0 to 2**63 - 1"),
                      ({"lr": math.inf}, "lr must be finite and >= 0")):
        with pytest.raises(ValueError, match=re.escape(said)):
            TrainConfig(**{**TINY, **bad})
    for flag, value, expected in (("--lr", "inf", "a finite number >= 0"), ("--lr", "1e400", "a finite number >= 0"),
                                  ("--seed", "-1", "a whole number >= 0"),
                                  ("--epochs", "2.5", "a whole number above 0"),
                                  ("--batch-size", "eight", "a whole number above 0")):
        with pytest.raises(SystemExit):  # not "invalid parse value", which named a function, not what is wanted
            main(["train", flag, value, "--print-config"])
        assert f"argument {flag}: must be {expected}, got {value}" in capsys.readouterr().err
    task = get_task("pneumonia")
    start = tmp_path / TIMM_MODEL  # a bundle to fine-tune, of a model with stages
    save_bundle(start, models.create(TIMM_MODEL, 2, in_chans=1), BundleCard(
        TIMM_MODEL, task.name, list(task.classes), task.positive, 32, "squash", *models.normalization(TIMM_MODEL)))
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle.parent, run)  # a finished run: bundle, best weights, checkpoint, reports
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    for change, said in (({"model": TIMM_MODEL, "init": str(start), "trainable_stages": 99},
                          r"has \d+ stages, asked for 99"),
                         ({"model_kwargs": {"foo": 1}}, r"model_kwargs \{'foo': 1\} do not fit simple_cnn: .*'foo'"),
                         ({"distill_weight": 0.3}, r"distill_weight 0.3 is the teachers' share of the target: give a"),
                         # a library caller's 0.5 was taken for the default, trained on and recorded
                         ({"distill_weight": 0.5}, r"distill_weight 0.5 is the teachers' share of the target: give a")):
        with pytest.raises(ValueError, match=said):
            train(tiny_dataset, TrainConfig(**{**TINY, **change}), run)
        assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before, change


def test_a_run_on_a_sample_of_patients_trains_on_it_alone_and_its_card_says_so(tiny_dataset: Path, tiny_bundle: Path,
                                                                                tmp_path: Path) -> None:
    """A trial on part of the data (train --patients): the sample is taken before the patient split, so both sides
    are of its patients and none is on both; the card records it (train_config: the setting and the patients it was
    drawn from) and MODEL_CARD.md says it, where a run on every patient says nothing of a sample."""
    bundle = train(tiny_dataset, TrainConfig(**TINY, patients=20), tmp_path / "run")
    split = discover(RunFolder(tmp_path / "run").split).records
    assert len({r.patient for r in split}) == 20 and {r.split for r in split} == {"train", "val"}
    assert not {r.patient for r in split if r.split == "train"} & {r.patient for r in split if r.split == "val"}
    card = load_card(bundle)
    assert (card.train_config["patients"], card.train_config["sampled_from"]) == (20, 48)
    assert sum(card.train_config["training_films"].values()) == sum(r.split == "train" for r in split)
    text = (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "**The films are a sample of 20 of the 48 patients of the data** (`patients: 20`, seed 0; " in text
    assert "sampled_from" not in load_card(tiny_bundle).train_config
    assert "a sample of" not in (tiny_bundle / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_a_sample_of_patients_is_refused_where_it_cannot_be_taken(tiny_dataset: Path, tmp_path: Path) -> None:
    """More patients than DATA holds is refused with the most it can take, before the run folder is made (a run on
    all of them would record a sample it did not take); a manifest or the val/ folder fix the films themselves."""
    with pytest.raises(ValueError, match=r"the 48 films hold 48 \(copies of one film under other ids count as one\); "
                                         "give --patients 48 or fewer"):
        train(tiny_dataset, TrainConfig(**TINY, patients=49), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    for fixed in ({"split_csv": "split.csv"}, {"validate_on_val_folder": True}):
        with pytest.raises(ValueError, match=f"patients 20 samples .* and {next(iter(fixed))} fixes them"):
            TrainConfig(**TINY, patients=20, **fixed)
    with pytest.raises(ValueError, match="patients must be >= 1, got 0"):
        TrainConfig(patients=0)
    # the record of a sample a manifest holds (cv's folds) describes that manifest: without one it would be unread
    with pytest.raises(ValueError, match="describes a split_csv manifest's films; without one, set patients"):
        train_mod.split_records(tiny_dataset, TrainConfig(**TINY), sample_record(20, 48, 0))


def test_resume_refuses_films_whose_pixels_changed_since_the_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    """The same paths with other pixels (here a film mirrored in place): --resume trained on, and the bundle recorded
    only the new data, although its first epoch was trained on the old."""
    data, run, cfg = tmp_path / "data", tmp_path / "run", TrainConfig(**TINY)
    shutil.copytree(tiny_dataset, data)
    with pytest.raises(Crash):
        train(data, cfg, run, on_epoch_end=crash_in_epoch(0))
    kept = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "config.yaml", "split.csv", "history.csv")}
    mirror(sorted((data / "train" / "NORMAL").iterdir())[0])
    with pytest.raises(ValueError, match=r"^cannot resume from .*checkpoint\.pt: it was trained on other pixels or "
                                         r"labels than these films hold now, or on them listed in another order \(data "
                                         r"checksum \w+\.\.\. -> \w+\.\.\.; the order decides the batches\)"):
        train(data, cfg, run, resume=True)
    assert {name: (run / name).read_bytes() for name in kept} == kept, "refused before anything in RUN is rewritten"


def mirror(film: Path) -> None:
    """Other pixels under the same name, a duplicate of no other film (the default split groups duplicates)."""
    Image.open(film).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(film, quality=95)


def test_the_bundle_records_a_data_identity_that_survives_touching_and_moving_the_films(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """The bundle's data_fingerprint names the image cache, whose key holds the files' paths and times: the same
    films touched or moved gave another one. data_checksum holds only their pixels and labels. The card also
    records the libraries' versions and what the training steps computed in (precision auto: fp32 on CPU, bf16 on
    CUDA). The tiny run's bundle, of tiny_dataset's films: a copy of them is touched and moved."""
    data, cfg = tmp_path / "data", load_config(tiny_bundle.parent / "config.yaml")
    shutil.copytree(tiny_dataset, data)
    card = load_card(tiny_bundle)
    assert card.versions["torch"] == torch.__version__ and card.versions["numpy"] == np.__version__
    assert {"timm", "onnxruntime"} <= card.versions.keys() and card.train_config["resolved_precision"] == AUTO_PRECISION

    def identity(root: Path) -> tuple[str, str]:
        records = train_mod.split_records(root, cfg)[0]
        cache = train_mod.preprocessed(records, cfg, Dist())
        return cache.data_fingerprint, train_mod.data_checksum(cache, records)

    film = sorted((data / "train" / "NORMAL").iterdir())[0]
    os.utime(film, (1, 1))
    data.rename(tmp_path / "moved")
    fingerprint, checksum = identity(tmp_path / "moved")
    assert card.data_checksum.startswith("sha256:") and fingerprint != card.data_fingerprint, "the cache's key moved"
    assert checksum == card.data_checksum, "the films did not"
    mirror(tmp_path / "moved" / film.relative_to(data))
    assert identity(tmp_path / "moved")[1] != card.data_checksum


def test_a_one_step_run_trains_its_only_step(tiny_dataset: Path, tmp_path: Path) -> None:
    """The cosine schedule set each step's rate at the step's end, so every run's last step had rate 0: a run of
    one step (a small split, a large batch) shipped its initial weights as a trained model."""
    cfg = TrainConfig(**{**TINY, "epochs": 1, "batch_size": 32})  # 36 training films: one step

    class Start(Callback):  # the weights the only step starts from (an lr-0 run's bundle, at chance, is refused)
        def on_fit_start(self, state: State) -> None:
            self.weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}

    start = Start()  # stopped once its epoch is checkpointed: RUN/best holds the weights its bundle would ship
    with pytest.raises(Crash):
        train(tiny_dataset, cfg, tmp_path / "run", callbacks=[start], on_epoch_end=crash_in_epoch(0))
    shipped = load_file(str(tmp_path / "run" / "best" / WEIGHTS))
    history = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [row["step"] for row in history] == ["1"] and float(history[0]["lr"]) > 0
    assert shipped.keys() == start.weights.keys()
    assert not all(torch.equal(shipped[k], start.weights[k]) for k in shipped), "the only step moved the weights"


def test_the_warm_up_starts_when_the_warm_start_ends() -> None:
    """Under a time budget the schedule runs over what the warm start left: fine-tuning begins at the warm-up."""
    warm_s, budget_s = 120.0, 660.0
    assert schedule_done(0, 1000, warm_s, warm_s, budget_s) == 0.0
    assert schedule_done(0, 1000, warm_s + 27.0, warm_s, budget_s) == pytest.approx(0.05)  # 5 % of 540 s
    assert schedule_done(600, 1000, warm_s + 27.0, warm_s, budget_s) == 0.6, "steps count when they are ahead"
    assert schedule_done(10, 1000, 1e6, 0.0, None) == 0.01, "no budget: steps alone"
    assert 0 < lr_factor(1 / 1000, 0.05) < 0.05


def test_a_budget_the_warm_start_used_up_is_refused_with_what_to_give() -> None:
    cfg = TrainConfig(time_budget=0.5)
    with pytest.raises(ValueError, match=r"the warm start took 1.1 min of the 0.5 min time budget; nothing was left "
                                         r"to train: give a time_budget \(--time-budget\) well above 1.1 min, or "
                                         r"warm_start false \(--set warm_start=false\)$"):
        train_mod.make_optimizer(torch.nn.Linear(2, 2), cfg, None, Dist(), warm_s=66.0)  # refused before the data


def test_neighbouring_seeds_do_not_share_data_order_or_augmentation() -> None:
    """With seed + epoch, seed 1's first epoch replayed seed 0's second one."""
    def order(seed: int, epoch: int) -> list[int]:
        sampler = DistributedSampler(range(64), 1, 0, shuffle=True, seed=stream_seed(seed))
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, 0) != order(0, 1) and order(0, 1) == order(0, 1)
    torch.manual_seed(stream_seed(1, 0, 0))
    a = torch.rand(8)
    torch.manual_seed(stream_seed(0, 1, 0))
    assert not torch.equal(a, torch.rand(8))
    assert len({stream_seed(0, epoch, rank) for epoch in range(4) for rank in range(4)}) == 16


@pytest.fixture(scope="session")
def timm_bundle(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of timm's test_efficientnet (100 k parameters; a timm model, which the warm start fits a head for)
    whose config file sets its model_kwargs (drop_rate 0.25): one run (about 1.5 s of CPU; resnet10t's, 5 M
    parameters, took 4.5 s) for the module's tests that need a trained timm bundle, once a run (pytest-xdist's
    worksteal may give them to two workers)."""
    def build(folder: Path) -> Path:
        config = folder / "config.yaml"
        config.write_text(f"model: {TIMM_MODEL}\npretrained: false\nmodel_kwargs: {{drop_rate: 0.25}}\n")
        # None: the file decides; 2 epochs: after 1 (4 steps) its BatchNorm statistics may rank the films backwards
        cfg = load_config(config, **{**TINY, "model": None, "pretrained": None, "epochs": 2})
        return train(tiny_dataset, cfg, folder / "run")

    return _once_per_run(tmp_path_factory, "timm_bundle", build)


def test_init_refits_only_a_new_classifier(timm_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """--init keeps a bundle's trained head for the same classes; only a new classifier gets the warm start (which
    comes before the first step: both runs stop there)."""
    cfg = TrainConfig(**{**TINY, "model": TIMM_MODEL, "epochs": 1})
    start = timm_bundle
    fitted: list[str] = []
    real = train_mod.warm_start_head
    monkeypatch.setattr(train_mod, "warm_start_head", lambda *args: fitted.append("head") or real(*args))
    for task, refit in (("pneumonia", []), ("multiclass", ["head"])):
        with pytest.raises(ValueError, match="^no epoch was validated"):
            train(tiny_dataset, dataclasses.replace(cfg, init=str(start), task=task), tmp_path / task,
                  callbacks=[BudgetSpent()])
        assert fitted == refit, task


def test_init_at_another_size_than_the_bundles_is_said(tiny_bundle: Path, caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """TrainConfig(init=...) takes neither the model nor the size from the bundle (the command line does, where
    neither is given: test_the_command_line_starts_from_the_bundles_model_and_size): a 32 px bundle fine-tuned at 192 px
    starts its weights on films of another scale, said, not done silently. Its card is read once, for the weights'
    check and the size alike (it had been read a second time for the size)."""
    read: list[Path] = []
    real = card_mod.read_bundle_text
    monkeypatch.setattr(card_mod, "read_bundle_text", lambda path: read.append(Path(path)) or real(path))
    cfg = TrainConfig(**{**TINY, "init": str(tiny_bundle)})
    train_mod.build_model(cfg, get_task("pneumonia"), Dist())
    assert read == [tiny_bundle / "bundle.json"]
    assert "trains on" not in caplog.text
    train_mod.build_model(dataclasses.replace(cfg, image_size=64), get_task("pneumonia"), Dist())
    assert (f"{tiny_bundle} was trained on 32 px films (squash), and this run trains on 64 px (squash): its weights "
            "start on films of another scale; give image_size (--image-size) 32 (and resize_policy "
            "squash)") in caplog.text


def test_init_from_another_models_bundle_names_the_model_it_holds(tiny_bundle: Path) -> None:
    """A run that builds another model than its --init bundle holds is refused with the model to build (the tensors'
    names had been the whole reason)."""
    model = models.create("resnet10t", 2, in_chans=1, pretrained=False)
    with pytest.raises(ValueError, match=r"holds a simple_cnn, whose weights do not fit the model built to start from "
                                         r"it \(\d+ tensors differ, .+ first\): fine-tuning keeps the architecture, so "
                                         r"build the one it holds \(train --model simple_cnn\)$"):
        load_weights_into(model, tiny_bundle)


def test_the_command_line_starts_from_the_bundles_model_and_size(tiny_bundle: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`train --init BUNDLE` without --model built the default efficientnet_lite0 and was refused (the bundle holds a
    simple_cnn), and without --image-size trained a 32 px bundle's weights on 192 px films: where the settings give
    neither, the bundle's are taken; a size given is kept (and said to differ)."""
    assert main(["train", "--init", str(tiny_bundle), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["model"], printed["image_size"]) == ("simple_cnn", 32)
    assert main(["train", "--init", str(tiny_bundle), "--image-size", "64", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["model"], printed["image_size"]) == ("simple_cnn", 64)
    # and `train --help` says so: it read "(same --model)", telling a newcomer to repeat the model
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "same --model" not in usage and "its model and image size unless --model or --image-size" in usage


def test_bundle_round_trip_reproduces_the_trained_model(tiny_bundle: Path) -> None:
    bundle = tiny_bundle  # a bundle training wrote
    model, card = load_bundle(bundle)
    again, card2 = load_bundle(bundle)
    x = torch.randn(3, 1, card.size, card.size)
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))
    assert card == card2 and card.val_metrics == json.loads((bundle / "bundle.json").read_text())["val_metrics"]


def test_model_kwargs_from_a_config_reach_the_model_and_the_bundle(timm_bundle: Path) -> None:
    """The run trained from a config file that names the model and its model_kwargs (timm_bundle)."""
    model, card = load_bundle(timm_bundle)
    assert card.model == TIMM_MODEL and card.model_kwargs == {"drop_rate": 0.25}
    assert model.drop_rate == 0.25, "the bundle rebuilds the model with the arguments it was trained with"


def test_an_empty_config_file_means_the_defaults_and_a_list_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("# nothing set yet\n")
    assert load_config(config, epochs=3) == TrainConfig(epochs=3)
    config.write_text("- epochs: 3\n")
    with pytest.raises(ValueError, match="key: value"):
        load_config(config)


def test_weights_from_a_bundle_fit_the_same_model_with_a_new_classifier(tiny_bundle: Path) -> None:
    trained = load_file(str(tiny_bundle / "model.safetensors"))
    three = models.create("simple_cnn", num_classes=3, in_chans=1)
    head = dict(three.get_classifier().named_parameters())
    fresh = load_weights_into(three, tiny_bundle)
    assert sorted(fresh) == sorted(f"head.{len(three.head) - 1}.{name}" for name in head)
    state = three.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items() if k not in fresh)
    with pytest.raises(ValueError, match="do not fit"):
        load_weights_into(models.create("cnn5", num_classes=2, in_chans=1), tiny_bundle)


def test_cli_train_starts_from_a_bundle(tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """--init with lr 0: the multiclass run keeps every weight of the pneumonia bundle but its new classifier."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(run), "--task", "multiclass",
                 "--model", "simple_cnn", "--init", str(tiny_bundle), "--lr", "0", "--image-size", "32",
                 "--epochs", "1", "--batch-size", "8"]) == 0
    start, end = load_file(str(tiny_bundle / "model.safetensors")), load_file(str(run / "bundle" / "model.safetensors"))
    kept = [k for k in start if start[k].shape == end[k].shape]
    assert len(kept) == len(start) - 2 and all(torch.equal(start[k], end[k]) for k in kept)
    assert load_bundle(run / "bundle")[1].train_config["init"] == str(tiny_bundle)


def test_cli_train_then_evaluate_a_folder(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(run), "--model", "simple_cnn", "--no-pretrained",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "8"]) == 0
    # `cache --bundle` prepares exactly what evaluate reads: evaluate then decodes nothing
    assert main(["cache", str(tiny_dataset / "test"), "--bundle", str(run / "bundle")]) == 0
    capsys.readouterr()
    monkeypatch.setattr(cache_mod, "_decode_chunk", lambda *a: pytest.fail("evaluate decoded a cached dataset again"))
    out = tmp_path / "eval"
    assert main(["evaluate", str(run / "bundle"), str(tiny_dataset / "test"), "--json", "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "threshold", "n"):
        assert key in metrics and key in metrics["at_0_5"], key
    assert metrics["n"] == 16 and metrics["at_0_5"]["threshold"] == 0.5
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and json.loads((out / "metrics.json").read_text())["n"] == 16


def test_training_learns_the_synthetic_signal(learnt_bundle: Path, tiny_dataset: Path) -> None:
    """Not a benchmark: a sanity check that the loop optimises (bright blobs are easy to find: learnt_bundle's
    5 epochs)."""
    metrics = evaluate(learnt_bundle, tiny_dataset, split="test")
    assert metrics["auc"] > 0.8, metrics["auc"]
    assert np.isfinite(metrics["ci"]["auc"]).all()


@pytest.mark.parametrize("signal, chosen", [(0.5, max(WARM_START_L2)), (3.0, min(WARM_START_L2))])
def test_warm_start_penalty_is_chosen_on_validation(signal: float, chosen: float) -> None:
    """A weak signal in one of 40 features: the strongest penalty generalises best; one clean feature that
    decides the label: the weakest penalty does (a sharper head costs nothing on validation)."""
    gen = torch.Generator().manual_seed(0)

    def loader(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        y = torch.randint(0, 2, (n,), generator=gen)
        x = torch.randn(n, 40, generator=gen)
        x[:, 0] += signal * (2 * y - 1)
        return [(x[:, :, None, None], y)]

    model = CountingProbe(40)
    assert warm_start_head(model, loader(60), loader(400), None, torch.device("cpu")) == chosen
    assert model.fc.weight.abs().sum() > 0


def test_the_warm_start_shows_its_progress(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    """The warm start runs the frozen network over every training and validation film before the first epoch:
    minutes of `make demo` on a 2-core CPU in which the terminal showed nothing after the preprocessing bar. A bar
    says so, counting the films."""
    caplog.set_level(logging.INFO, logger="pneumoscan")  # as the command line shows it (the bars follow INFO)
    train_mod.warm_start(CountingProbe(), (probe_films(61, 0), probe_films(41, 1)), None, 16, Dist())
    assert re.search(r"Warm start: features of 102 films .*100%", capsys.readouterr().err)


def _probe_loader(n: int, seed: int, outlier: float | None = None,
                  signal: float = 3.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch of ``n`` films whose first of 8 features tells the label (by ``signal``, against noise of 1), as
    :class:`CountingProbe` reads them; ``outlier``: the second feature of the first film, so large that LBFGS diverges
    on it."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 8, generator=gen)
    x[:, 0] += signal * (2 * y - 1)
    if outlier is not None:
        x[0, 1] = outlier
    return [(x[:, :, None, None], y)]


def test_a_warm_start_penalty_whose_head_diverges_is_skipped() -> None:
    """With one feature of 3e21 the four weakest penalties' LBFGS fits end in NaN weights and validation loss, the
    strongest's does not: the first setting's NaN loss was kept, since no loss compares below NaN, and fine-tuning
    then stopped at its first step telling the user to lower the learning rate."""
    model = CountingProbe(8)
    assert warm_start_head(model, _probe_loader(40, 0, outlier=3e21), _probe_loader(16, 1), None,
                           torch.device("cpu")) == max(WARM_START_L2)
    assert all(torch.isfinite(v).all() for v in model.fc.state_dict().values())


@pytest.mark.parametrize("scale, said", [(1e20, r"\(largest magnitude 4\.\de\+20\)"),
                                         (math.inf, r"\(40 of 448 not finite, largest magnitude ")])
def test_a_warm_start_that_diverges_at_every_penalty_is_refused_for_its_features(scale: float, said: str) -> None:
    """Features of 1e20 leave no penalty a finite head (the first NaN head was kept, and fine-tuning then blamed the
    learning rate); infinite ones stopped LBFGS on a RuntimeError. Refused naming the features and the starting
    weights that gave them, and the head is left as it was."""
    model = CountingProbe(8)
    before = model.fc.weight.clone()
    huge = [(x.clone().index_fill_(1, torch.tensor([1]), scale) if math.isinf(scale) else x * scale, y)
            for x, y in _probe_loader(40, 0)]
    with pytest.raises(ValueError, match=rf"^the warm start fitted no classifier .*{said}.*starting weights"):
        warm_start_head(model, huge, _probe_loader(16, 1), None, torch.device("cpu"))
    assert torch.equal(model.fc.weight, before)


@pytest.mark.parametrize("scale", [1e12, 1e19])
def test_a_warm_start_no_better_than_the_class_frequencies_is_refused(scale: float) -> None:
    """Features of 1e12 or 1e19 (a diverged or badly scaled backbone) that do not tell the label: every head's
    validation loss was finite, 1e4 to 1e11 against 0.69 for the training films' class frequencies, and the least was
    taken, the log saying it was fitted. Refused naming the features and what to do, and the head is left as it
    was."""
    model = CountingProbe(8)
    before = model.fc.weight.clone()
    train, val = ([(x * scale, y) for x, y in _probe_loader(n, seed, signal=0.0)] for n, seed in ((40, 0), (16, 1)))
    with pytest.raises(ValueError, match=r"^the warm start fitted no classifier at any L2 penalty \(.*\) that scores "
                                         r"the validation films better than the training films' class frequencies "
                                         r"\(validation loss \S+ at best, L2 \S+, against 0\.6931\): .*largest "
                                         rf"magnitude \d\.\de\+{int(math.log10(scale)):02d}\).*warm_start=false"):
        warm_start_head(model, train, val, None, torch.device("cpu"))
    assert torch.equal(model.fc.weight, before)


def test_a_class_with_no_training_film_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    """Class weights used to hide an empty class: a bundle was written for a class the model never saw."""
    records = train_mod.split_records(tiny_dataset, TrainConfig(**TINY))[0]
    manifest = tmp_path / "split.csv"
    write_manifest([r for r in records if not (r.split == "train" and r.label == "NORMAL")], manifest)
    with pytest.raises(ValueError, match="no readable training film of class NORMAL"):
        train(tiny_dataset, TrainConfig(**{**TINY, "split_csv": str(manifest)}), tmp_path / "run")


def test_a_validation_split_without_a_class_is_refused_before_the_first_step(tiny_dataset: Path,
                                                                             tmp_path: Path) -> None:
    """It had trained every epoch, then refused (one class), or ended in numpy's "zero-size array" (no film); then
    it was refused only after the run folder was cleared, an earlier run's bundle lost with it."""
    records = train_mod.split_records(tiny_dataset, TrainConfig(**TINY))[0]
    manifest = tmp_path / "split.csv"
    earlier = tmp_path / "run" / "bundle" / "bundle.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}")  # an earlier run's, which clearing the folder would remove
    write_manifest([r for r in records if not (r.split == "val" and r.label == "PNEUMONIA")], manifest)
    with pytest.raises(ValueError, match="no readable validation film of class PNEUMONIA for the pneumonia task"):
        train(tiny_dataset, TrainConfig(**{**TINY, "split_csv": str(manifest)}), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and earlier.exists()
    write_manifest([r for r in records if r.split == "train" or r.label == "NORMAL"], manifest)
    with pytest.raises(ValueError, match="no readable validation film of class bacteria, virus for the etiology"):
        train(tiny_dataset, TrainConfig(**{**TINY, "task": "etiology", "split_csv": str(manifest)}), tmp_path / "run")


def test_films_a_task_cannot_use_are_warned_about(
    typed_dataset: Path, tiny_multiclass_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Pneumonia films whose names give no type are left out of the three-class task, in training and in
    evaluation: said, so that figures on the rest do not pass for figures on every film given. Training says it
    before its first step (where this run stops); the session's three-class bundle evaluates."""
    data = tmp_path / "data"
    shutil.copytree(typed_dataset, data)
    for split, n in (("train", 3), ("test", 1)):
        for i, path in enumerate(sorted((data / split / "PNEUMONIA").iterdir())[:n]):
            path.rename(path.with_name(f"site_{i}.jpeg"))
    with caplog.at_level("WARNING"), pytest.raises(ValueError, match="^no epoch was validated"):
        train(data, TrainConfig(**{**TINY, "task": "multiclass", "epochs": 1}), tmp_path / "run",
              callbacks=[BudgetSpent()])
    assert "3 pneumonia film(s) given to training do not say bacteria or virus" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        metrics = evaluate(tiny_multiclass_bundle, data, split="test")
    assert "1 pneumonia film(s) given to evaluation do not say bacteria or virus" in caplog.text
    assert metrics["n"] == 15


def test_manifest_rows_in_no_split_are_warned_about(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = train_mod.split_records(tiny_dataset, TrainConfig(**TINY))[0]
    unsided = next(r.path for r in records if r.split == "train")
    manifest = tmp_path / "split.csv"
    write_manifest([dataclasses.replace(r, split="") if r.path == unsided else r for r in records], manifest)
    with caplog.at_level("WARNING"):
        assert len(train_mod.split_records(tiny_dataset, TrainConfig(split_csv=str(manifest)))[0]) == len(records) - 1
    assert "1 film(s) of" in caplog.text and "are in no train, val or test split" in caplog.text


def test_a_manifest_with_training_patients_in_its_test_split_is_warned_about(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Test rows are left out of training, and their patients had not been compared with the training ones: the
    leak was said only when the test split was evaluated, after the run."""
    records = train_mod.split_records(tiny_dataset, TrainConfig(**TINY))[0]
    trained = next(r for r in records if r.split == "train")
    test = [r for r in discover(tiny_dataset).records if r.split == "test"][:3]
    manifest = tmp_path / "split.csv"
    write_manifest([*records, dataclasses.replace(test[0], patient=trained.patient), *test[1:]], manifest)
    with caplog.at_level("WARNING"):
        assert len(train_mod.split_records(tiny_dataset, TrainConfig(split_csv=str(manifest)))[0]) == len(records)
    assert (f"1 patient(s) have films in its test split and in train or val (e.g. {trained.patient}): figures on "
            "that test split would be optimistic") in caplog.text
    caplog.clear()
    write_manifest([*records, *test], manifest)
    with caplog.at_level("WARNING"):
        train_mod.split_records(tiny_dataset, TrainConfig(split_csv=str(manifest)))
    assert "test split" not in caplog.text


def test_a_split_without_validation_films_says_which_option_gave_none(tiny_dataset: Path, tmp_path: Path) -> None:
    """--val-folder on data without val/ (the tiny dataset, as a Mendeley tree) and a manifest without a split column
    were both told only that training needs a 'train' and a 'val' split: each names its mistake and what to give."""
    with pytest.raises(ValueError, match=re.escape(f"validate_on_val_folder (--val-folder) validates on the val/ "
                                                   f"folder of {tiny_dataset}, which holds no film (it has train, "
                                                   "test)")) as refused:
        train_mod.split_records(tiny_dataset, TrainConfig(validate_on_val_folder=True))
    assert "leave it out" in str(refused.value)
    manifest = tmp_path / "films.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n"
                                                 for p in sorted((tiny_dataset / "train").rglob("*.jpeg"))))
    with pytest.raises(ValueError, match=re.escape(f"{manifest} gives no film a split (it has no split column, or "
                                                   "an empty one)")) as refused:
        train_mod.split_records(tiny_dataset, TrainConfig(split_csv=str(manifest)))
    assert "`pneumoscan split" in str(refused.value) and "leave split_csv out" in str(refused.value)
    # a researcher's own split column with train and test rows and no val: told which split is empty, not that
    # training needs both
    sided = tmp_path / "sided.csv"
    sided.write_text("path,label,split\n" + "".join(f"{p},{p.parent.name},{p.parent.parent.name}\n"
                                                    for p in sorted(tiny_dataset.rglob("*.jpeg"))))
    with pytest.raises(ValueError, match=re.escape(f"{sided} gives no film the split val (it has train, test), so "
                                                   "split_csv (--split-csv) names no val films")) as refused:
        train_mod.split_records(tiny_dataset, TrainConfig(split_csv=str(sided)))
    assert "`pneumoscan split" in str(refused.value) and "leave split_csv out" in str(refused.value)


def test_a_split_with_a_film_copied_across_train_and_val_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    """A training film copied into val under another name and patient id escaped the patient check: with a manifest
    (or --val-folder) validation chose the threshold on a film trained on. The default split keeps copies together."""
    records = train_mod.split_records(tiny_dataset, TrainConfig(**TINY))[0]
    trained = next(r for r in records if r.split == "train")
    copy = tmp_path / "IM-9999-0001.jpeg"
    shutil.copy(trained.path, copy)
    manifest = tmp_path / "split.csv"
    write_manifest([*records, dataclasses.replace(trained, path=str(copy), patient="IM-9999", split="val")], manifest)
    with pytest.raises(ValueError, match=rf"1 film\(s\) are in both train and val under other names \(byte for "
                                         rf"byte or re-encoded; e.g. {copy} in val, {trained.path} in train\)"):
        train_mod.split_records(tiny_dataset, TrainConfig(split_csv=str(manifest)))


def test_validation_figures_count_patients_when_films_share_one(tiny_dataset: Path, tmp_path: Path) -> None:
    """The run's report counts patients in its CIs as `evaluate` does on the same films, where a patient has
    several films (the three-class block too)."""
    records = train_mod.split_records(tiny_dataset, TrainConfig(**TINY))[0]
    val = [i for i, r in enumerate(records) if r.split == "val"]
    manifest = tmp_path / "split.csv"
    write_manifest([dataclasses.replace(r, patient=f"pair-{val.index(i) // 2}") if i in val else r
                    for i, r in enumerate(records)], manifest)
    bundle = train(tiny_dataset, TrainConfig(**{**TINY, "task": "multiclass", "epochs": 1, "split_csv": str(manifest)}),
                   tmp_path / "run")
    reported = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert reported["ci_unit"] == reported["multiclass"]["ci_unit"] == "patient"
    assert evaluate(bundle, manifest, split="val")["ci_unit"] == "patient"


def test_validation_figures_and_threshold_interval_count_copies_of_a_film_as_one_patient(tiny_dataset: Path,
                                                                                         tmp_path: Path) -> None:
    """A validation film filed again under another patient id is one child's: the run's validation figures, its
    card's and its threshold's interval count the two as one patient, as `evaluate` does (they counted two)."""
    from pneumoscan.core.metrics import threshold_interval
    from pneumoscan.data.labelled import patient_groups
    from tests.builders import labelled_records

    records = train_mod.split_records(tiny_dataset, TrainConfig(**TINY))[0]
    film = next(r for r in records if r.split == "val")
    copy = tmp_path / "filed-again" / Path(film.path).name
    copy.parent.mkdir()
    shutil.copyfile(film.path, copy)
    manifest = tmp_path / "split.csv"
    write_manifest([*records, dataclasses.replace(film, path=str(copy), patient="filed-again")], manifest)
    bundle = train(tiny_dataset, TrainConfig(**{**TINY, "epochs": 1, "split_csv": str(manifest)}), tmp_path / "run")
    card = load_card(bundle)
    val, images, targets, _ = labelled_records(manifest, "val", get_task(card.task), card.spec)
    assert len({r.patient for r in val}) == len(val), "a patient id a film: only the copy joins two films"
    reported = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert reported["ci_unit"] == "patient" and reported["patients"]["all"] == len(val) - 1
    assert card.val_metrics["patients"]["all"] == len(val) - 1
    predictor = Predictor(bundle)
    scores = predictor.positive_probability(predictor.probabilities(images))
    expected = threshold_interval(binary_targets(targets), scores, *card.threshold_targets,
                                  patient_groups(val, manifest)[1])
    assert card.threshold_interval == pytest.approx(expected, abs=SCORE_TOL)


def test_a_model_that_cannot_be_exported_at_its_size_is_refused_before_training(
    tiny_dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    """simple_cnn at 40 px pools 20 px maps to 16: it trained the whole run, then failed the ONNX export with a
    traceback and left no bundle. The refusal is its one line: torch's exporter wrote its whole graph to the
    process's stdout before it (read here at the file descriptor, where torch writes it)."""
    from pneumoscan import cli

    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(tiny_dataset), "--out", str(run), "--model", "simple_cnn",
                     "--no-pretrained", "--image-size", "40", "--epochs", "1"]) == 2
    out, err = capfd.readouterr()
    assert "simple_cnn at image_size 40 cannot be exported to ONNX" in err and "Traceback" not in err
    assert "graph(" not in out + err, (out + err)[:500]
    assert not run.exists(), "refused before the split and the cache"


def _pooled_linear(num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> torch.nn.Module:
    """A model of a user's own, as simple as one can be: no timm head (no get_classifier)."""
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(in_chans, num_classes))


def test_a_bundle_of_a_model_not_registered_here_or_without_a_head_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """A bundle of a model registered in a notebook, loaded in a fresh process, was refused as "unknown model"
    with the nearest timm names; starting from it a model without timm's get_classifier failed with an
    AttributeError."""
    name = "test_pooled_linear"
    models.register(name, mean=0.5, std=0.25)(_pooled_linear)
    try:
        model = models.create(name)
        save_bundle(tmp_path / "bundle", model, BundleCard(name, "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 32,
                                                           "squash", 0.5, 0.25))
        with pytest.raises(ValueError,
                           match=r"Sequential has no get_classifier\(\) \(timm's name for a model's head\)"):
            load_weights_into(models.create(name), tmp_path / "bundle")
    finally:
        models._REGISTRY.remove(name)
    with pytest.raises(ValueError, match=f"its model '{name}' is not registered in this process: import the module "
                                         "that registers it first"):
        load_bundle(tmp_path / "bundle")


# config.yaml as `train` wrote it (and --print-config printed it) before distill_weight could be left unset: every run
# without teachers recorded 0.5
EARLIER_CONFIG = """\
task: pneumonia
model: efficientnet_lite0
pretrained: true
init: null
teacher: []
distill_weight: 0.5
model_kwargs: {}
image_size: 192
resize_policy: squash
match_source: true
epochs: 6
time_budget: null
batch_size: 32
lr: 0.001
weight_decay: 0.01
warmup: 0.05
label_smoothing: 0.0
ema_decay: null
warm_start: true
trainable_stages: 2
optimizer: adamw-cosine
plateau_factor: 0.2
plateau_patience: 2
patience: 3
val_fraction: 0.15
split_csv: null
validate_on_val_folder: false
seed: 0
class_weights: true
target_sensitivity: 0.95
augment:
  zoom: 0.15
  zoom_range: 0.0
  shift: 0.08
  rotation: 10.0
  shear: 5.0
  brightness: 0.2
  contrast: 0.2
  noise: 0.04
  gamma: 0.0
  blur: 0.0
  hflip: false
  vflip: false
  fill_mode: constant
  mixup: 0.0
  cutmix: 0.0
workers: 0
precision: auto
eval_batch_size: 64
"""


def test_an_earlier_versions_config_yaml_loads_and_is_the_same_recipe(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """distill_weight is None (not set) unless given or there are teachers: a run recorded with the 0.5 that meant
    "no distillation" must still load (train --config RUN/config.yaml) and still be this version's recipe for
    --resume and cv, and --print-config changes only where the setting is unset."""
    (tmp_path / "config.yaml").write_text(EARLIER_CONFIG)
    recorded = yaml.safe_load(EARLIER_CONFIG)
    assert load_config(tmp_path / "config.yaml") == TrainConfig() and TrainConfig().distill_weight is None
    assert config_changes(recorded, TrainConfig()) == []
    taught_now = TrainConfig(teacher=["/t"])
    assert config_changes(recorded, taught_now) == ['teacher [] -> ["/t"]', "distill_weight null -> 0.5"]
    taught = load_config(tmp_path / "config.yaml", teacher=["/t"])
    assert taught.distill_weight == 0.5 and config_changes(recorded | {"teacher": ["/t"]}, taught) == []
    printed = EARLIER_CONFIG.replace("split_csv: null\n", "split_csv: null\ndata_name: null\ndata_licence: null\n"
                                     "patients: null\n")  # settings since
    assert main(["train", "--print-config"]) == 0
    assert capsys.readouterr().out == printed.replace("distill_weight: 0.5", "distill_weight: null")
    assert main(["train", "--print-config", "--teacher", "/t"]) == 0
    assert capsys.readouterr().out == printed.replace("teacher: []", "teacher:\n- /t")


@pytest.mark.parametrize("task", ["pneumonia", "etiology"])
def test_the_loss_weights_each_class_by_its_inverse_frequency(tiny_dataset: Path, tmp_path: Path, task: str) -> None:
    """scikit-learn's "balanced" weights are the formula the loss was weighted by: films / (classes x class films)."""
    cfg, ctx = TrainConfig(**TINY, task=task), setup_distributed()
    records = train_mod.split_records(tiny_dataset, cfg)[0]
    cache = train_mod.preprocessed(records, cfg, ctx)
    d = train_mod.load_data(records, cache, "", cfg, get_task(task), ctx, tmp_path,
                            train_mod.selected_films(records, cache, get_task(task), ctx))
    counts = np.bincount(d.plain[0].targets, minlength=len(get_task(task).classes))
    assert d.class_weights.tolist() == torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32).tolist()


def test_a_run_records_where_its_films_came_from_and_never_calls_a_sites_films_kermany(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """The card said every bundle was trained on Kermany et al.'s films. A run records what its films are: those
    named by the Kaggle or Mendeley rules Kermany's (in a split manifest too), a site's others by --data-name and
    --data-licence, or, with no name given, a source not described (said in the log); a mix, both. A name for films
    that are all Kermany's, a licence without a name, or empty text is refused: the card would name what no film
    is."""
    from pneumoscan.data.layouts import KERMANY, make_record

    kermany = [dataclasses.replace(r, split="train" if i % 4 else "val")
               for i, r in enumerate(discover(tiny_dataset).split("test"))]
    site = [make_record(shutil.copy(r.path, tmp_path / f"site_{i}.jpeg"), r.label, r.split)
            for i, r in enumerate(kermany)]
    write_manifest(kermany, tmp_path / "split.csv")
    films = {"films": 16, "started_from": False}
    assert train_mod.training_data(tiny_dataset, TrainConfig(), kermany) == [
        {"name": KERMANY, "licence": "CC BY 4.0", "layout": "kaggle", **films}]
    in_manifest = TrainConfig(split_csv=str(tmp_path / "split.csv"))
    assert train_mod.training_data(tiny_dataset, in_manifest, kermany)[0]["layout"] == "manifest"
    with caplog.at_level("WARNING"):
        assert train_mod.training_data(tmp_path, in_manifest, site) == [
            {"name": "", "licence": "", "layout": "manifest", **films}]
    assert ("16 of the 16 training and validation films are named by no published dataset's rules, and data_name "
            "(--data-name) does not say where they come from: the model card says their source was not described"
            ) in caplog.text
    named = TrainConfig(data_name="site B", data_licence="internal")
    assert train_mod.training_data(tmp_path, named, site + kermany) == [
        {"name": KERMANY, "licence": "CC BY 4.0", "layout": "", **films},
        {"name": "site B", "licence": "internal", "layout": "", **films}]
    with pytest.raises(ValueError, match=r"data_name \(--data-name\) 'site B' names the source of training films no "
                                         r"published dataset's file names name, and every one of the 16 given is "
                                         r"named as Kermany et al\. 2018.*'s films are"):
        train_mod.training_data(tiny_dataset, named, kermany)
    with pytest.raises(ValueError, match=r"data_name \(--data-name\) is empty"):  # from Python, as the flag refuses it
        TrainConfig(data_name=" ")
    assert main(["train", "--data-name", "site B", "--data-licence", "CC BY-NC 4.0", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["data_name"], printed["data_licence"]) == ("site B", "CC BY-NC 4.0")
    assert main(["train", "--data-licence", "CC0", "--print-config"]) == 2
    assert ("data_licence 'CC0' (--data-licence) is the licence of the films data_name (--data-name) names: give their "
            "name too") in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["train", "--data-name", " ", "--print-config"])
    assert "argument --data-name: no data name given" in capsys.readouterr().err
