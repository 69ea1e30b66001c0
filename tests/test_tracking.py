"""Experiment tracking after one tiny real run: the TensorBoard event file read back with tensorboard's
EventAccumulator, and the MLflow store queried with MlflowClient."""

from __future__ import annotations

import csv
import logging
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pneumoscan.training import train as train_mod
from pneumoscan.training.tracking import make_trackers
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.engine import Callback, State
from pneumoscan.training.train import train
from tests.builders import Crash, crash_in_epoch

TINY = dict(model="simple_cnn", pretrained=False, image_size=32, batch_size=8, patience=10)
BOTH = ("tensorboard", "mlflow")


def tensorboard_steps(run: Path, tag: str = "val_auc") -> list[int]:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def mlflow_client(run: Path):
    """The MLflow store of RUN. mlflow is imported here, by the worker that runs these tests: at the module's top it
    cost every pytest-xdist worker's collection 0.6 s of CPU."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{run / 'mlflow.db'}")


def mlflow_run(run: Path):
    client = mlflow_client(run)
    (found,) = client.search_runs([client.get_experiment_by_name("pneumoscan").experiment_id])
    return client, found


@pytest.fixture(scope="module")
def mlflow_tables(module_tmp: Callable[[str], Path]) -> Path:
    """An MLflow store with its tables made and nothing logged: MLflow makes a new store's tables by running its
    schema migrations, about 70 (3 s of CPU a store). The tests of what the trackers log start their run folder with
    a copy (:func:`run_folder`); the quiet one makes its store from nothing, as a user's first run does."""
    folder = module_tmp("mlflow_tables")
    mlflow_client(folder).search_experiments()
    return folder / "mlflow.db"


def run_folder(tmp_path: Path, mlflow_tables: Path) -> Path:
    """TMP_PATH/run, holding a copy of the store :func:`mlflow_tables` made, as the run's own RUN/mlflow.db."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(mlflow_tables, run / "mlflow.db")
    return run


def test_tensorboard_and_mlflow_record_config_epochs_curves_and_the_bundle(tiny_dataset: Path, tmp_path: Path,
                                                                           mlflow_tables: Path) -> None:
    run = run_folder(tmp_path, mlflow_tables)
    cfg = TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=2, batch_size=8, patience=10)
    bundle = train(tiny_dataset, cfg, run, log_to=("tensorboard", "mlflow"))
    with (run / "history.csv").open() as f:
        history = list(csv.DictReader(f))
    card = json.loads((bundle / "bundle.json").read_text())
    assert len(history) == 2

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    val_auc = events.Scalars("val_auc")
    assert [e.step for e in val_auc] == [1, 2]
    assert [e.value for e in val_auc] == pytest.approx([float(r["val_auc"]) for r in history], abs=1e-6)
    assert [e.value for e in events.Scalars("train_loss")] == pytest.approx([float(r["train_loss"]) for r in history],
                                                                            abs=1e-6)
    assert events.Scalars("bundle/auc")[0].value == pytest.approx(card["val_metrics"]["auc"], abs=1e-6)
    assert events.Scalars("bundle/threshold")[0].value == pytest.approx(card["threshold"], abs=1e-6)
    assert events.Images("curves")[0].width > 100, "the curves PNG"
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "model: simple_cnn" in config and "optimizer: adamw-cosine" in config

    client = mlflow_client(run)
    experiment = client.get_experiment_by_name("pneumoscan")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert found.data.params["model"] == "simple_cnn" and found.data.params["augment.hflip"] == "False"
    steps = client.get_metric_history(found.info.run_id, "val_auc")
    steps = sorted(steps, key=lambda m: m.step)
    assert [m.step for m in steps] == [1, 2]
    assert [m.value for m in steps] == pytest.approx([float(r["val_auc"]) for r in history])
    assert found.data.metrics["bundle/auc"] == pytest.approx(card["val_metrics"]["auc"])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"curves.png", "report.html", "metrics.json", "bundle.json"} <= artifacts
    assert (run / "mlartifacts").is_dir(), "the local store keeps its artifacts in the run folder"


def test_a_refused_run_ends_its_mlflow_run_failed_and_both_trackers_say_why(tiny_dataset: Path, tmp_path: Path,
                                                                           mlflow_tables: Path) -> None:
    """A run that training refused (lr 1e8: diverged at its first validation) left its MLflow run RUNNING for good,
    as if still training, and neither tracker said why: the reason was on the terminal only. The MLflow run ends
    FAILED with the refusal as its tag ``refused``, and TensorBoard keeps it as the text ``refused``."""
    run = run_folder(tmp_path, mlflow_tables)
    with pytest.raises(ValueError, match=r"^training diverged at epoch 1") as refused:
        train(tiny_dataset, TrainConfig(**TINY, epochs=1, lr=1e8), run, log_to=BOTH)
    _, found = mlflow_run(run)
    assert found.info.status == "FAILED"
    assert found.data.tags["refused"] == str(refused.value)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert events.Tensors("refused/text_summary")[0].tensor_proto.string_val[0].decode() == str(refused.value)


class _RefusedInSecondEpoch(Callback):
    """A refusal after the first epoch's checkpoint, which a resume without it goes on from: as a run no better than
    chance resumed with more epochs, which may then finish."""

    def on_validation_end(self, state: State) -> None:
        if state.epoch == 1:
            raise ValueError("refused in the second epoch")


def test_a_refused_run_resumed_to_its_bundle_is_an_mlflow_run_finished_without_the_reason(
    tiny_dataset: Path, tmp_path: Path, mlflow_tables: Path
) -> None:
    """The resumed run goes on in the MLflow run the refused one ended FAILED: running, then finished, the earlier
    reason would stay beside the bundle's figures."""
    run, cfg = run_folder(tmp_path, mlflow_tables), TrainConfig(**TINY, epochs=2)
    with pytest.raises(ValueError, match="^refused in the second epoch$"):
        train(tiny_dataset, cfg, run, log_to=("mlflow",), callbacks=[_RefusedInSecondEpoch()])
    assert mlflow_run(run)[1].info.status == "FAILED"
    train(tiny_dataset, cfg, run, resume=True, log_to=("mlflow",))
    _, found = mlflow_run(run)
    assert found.info.status == "FINISHED" and "refused" not in found.data.tags


def test_tracking_options_are_checked_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tracker 'wandb'"):
        make_trackers(["wandb"], tmp_path, {})
    with pytest.raises(ValueError, match=r"add mlflow to log_to \(--log mlflow\)"):
        make_trackers(["tensorboard"], tmp_path, {}, tracking_uri="http://localhost:5000")
    assert make_trackers([], tmp_path, {}) == [] and not list(tmp_path.iterdir()), "off by default, nothing written"


def test_a_resumed_run_logs_every_epoch_and_the_settings_it_changed(tiny_dataset: Path, tmp_path: Path,
                                                                    mlflow_tables: Path) -> None:
    """A crash after epoch 1's checkpoint, before the trackers came to that epoch, lost it for good (steps [2, 3]),
    and MLflow kept the first --epochs as its only record. A fresh run into the folder then appended its events to
    the earlier run's (steps [2, 3, 1])."""
    run = run_folder(tmp_path, mlflow_tables)
    with pytest.raises(Crash):
        train(tiny_dataset, TrainConfig(epochs=2, **TINY), run, on_epoch_end=crash_in_epoch(0), log_to=BOTH)
    train(tiny_dataset, TrainConfig(epochs=3, **TINY), run, resume=True, log_to=BOTH)
    with (run / "history.csv").open() as f:
        history = [float(r["val_auc"]) for r in csv.DictReader(f)]

    assert tensorboard_steps(run) == [1, 2, 3]
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    configs = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("config/text_summary")}
    assert "epochs: 2" in configs[0] and "epochs: 3" in configs[1], "each config at the step it took effect"
    client, found = mlflow_run(run)
    steps = sorted(client.get_metric_history(found.info.run_id, "val_auc"), key=lambda m: m.step)
    assert [m.step for m in steps] == [1, 2, 3] and [m.value for m in steps] == pytest.approx(history)
    assert found.info.status == "FINISHED" and found.data.params["processes"] == "1"
    assert found.data.params["epochs"] == "2", "MLflow keeps a parameter's first value"
    assert found.data.tags["resumed.epochs"] == "3", "and the resume's as a tag"

    with pytest.raises(Crash):  # logged before its checkpoint: its bundle's figures would add nothing here
        train(tiny_dataset, TrainConfig(epochs=1, seed=7, **TINY), run, log_to=("tensorboard",),
              on_epoch_end=crash_in_epoch(0))
    assert tensorboard_steps(run) == [1], "a fresh run into the folder starts its own events"


def test_an_epoch_logged_before_a_kill_in_its_checkpoint_write_is_logged_again_not_twice(
    tiny_dataset: Path, tmp_path: Path, mlflow_tables: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trackers log an epoch before its checkpoint, so a kill while it is written leaves that epoch logged and
    the resumed run trains and logs it again: TensorBoard shows it once (the resumed run purges what came after
    its checkpoint), MLflow has it twice at the same step, with the same figures (resume is exact)."""
    real = train_mod.save_checkpoint

    def killed_in_second(path: Path, state: dict) -> None:
        if state["epoch"] == 1:
            raise Crash
        real(path, state)

    run, cfg = run_folder(tmp_path, mlflow_tables), TrainConfig(epochs=2, **TINY)
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(train_mod, "save_checkpoint", killed_in_second)
        train(tiny_dataset, cfg, run, log_to=BOTH)
    assert tensorboard_steps(run) == [1, 2], "logged before the checkpoint"
    with pytest.raises(Crash):  # the resumed run's second epoch logged and checkpointed: its bundle adds nothing here
        train(tiny_dataset, cfg, run, resume=True, log_to=BOTH, on_epoch_end=crash_in_epoch(1))
    with (run / "history.csv").open() as f:
        history = {int(r["epoch"]): float(r["val_auc"]) for r in csv.DictReader(f)}
    assert tensorboard_steps(run) == [1, 2]
    client, found = mlflow_run(run)
    logged = client.get_metric_history(found.info.run_id, "val_auc")
    assert sorted(m.step for m in logged) == [1, 2, 2]
    assert all(m.value == pytest.approx(history[m.step]) for m in logged)


def test_quiet_silences_mlflows_own_info_lines(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """`pneumoscan -q train --log mlflow` printed MLflow's "Creating initial MLflow database tables..."."""
    ours, theirs = logging.getLogger("pneumoscan"), logging.getLogger("mlflow")
    levels = ours.level, theirs.level
    ours.setLevel(logging.WARNING)  # what `-q` sets (core.logs.configure)
    try:
        tracker = make_trackers(["mlflow"], tmp_path, {"model": "simple_cnn"})[0]
        tracker.on_fit_start(None)
    finally:
        ours.setLevel(levels[0])
        theirs.setLevel(levels[1])
    assert (tmp_path / "mlflow.db").is_file()
    out, err = capfd.readouterr()
    assert "MLflow" not in out + err and "mlflow" not in out + err, out + err
