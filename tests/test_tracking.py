"""Experiment tracking after one tiny real run: the TensorBoard event file read back with tensorboard's
EventAccumulator, and the MLflow store queried with MlflowClient."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pneumoscan.training.tracking import make_trackers
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.train import train


def test_tensorboard_and_mlflow_record_config_epochs_curves_and_the_bundle(tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
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
    assert [e.value for e in events.Scalars("train_loss")] == pytest.approx([float(r["train_loss"]) for r in history], abs=1e-6)
    assert events.Scalars("bundle/auc")[0].value == pytest.approx(card["val_metrics"]["auc"], abs=1e-6)
    assert events.Scalars("bundle/threshold")[0].value == pytest.approx(card["threshold"], abs=1e-6)
    assert events.Images("curves")[0].width > 100, "the curves PNG"
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "model: simple_cnn" in config and "optimizer: adamw-cosine" in config

    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
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


def test_tracking_options_are_checked_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tracker 'wandb'"):
        make_trackers(["wandb"], tmp_path, {})
    with pytest.raises(ValueError, match="add --log mlflow"):
        make_trackers(["tensorboard"], tmp_path, {}, tracking_uri="http://localhost:5000")
    assert make_trackers([], tmp_path, {}) == [] and not list(tmp_path.iterdir()), "off by default, nothing written"
