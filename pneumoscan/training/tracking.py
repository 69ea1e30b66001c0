"""Experiment tracking as training callbacks (rank 0 only): TensorBoard event files or an MLflow run, each with
the resolved config, every epoch's figures, the training curves and the final bundle's validation figures."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from pneumoscan.core.options import TRACKERS, look_up_option
from pneumoscan.models.card import CARD, load_card
from pneumoscan.models.run_folder import RunFolder
from .engine import Callback, State

log = logging.getLogger(__name__)
EXPERIMENT = "pneumoscan"
REFUSED = "refused"  # the tag and text that say why training refused a run


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested settings as dotted keys (``augment.zoom``), for stores that keep flat parameters."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numbers(row: dict) -> dict[str, float]:
    """The row's figures worth a curve: numeric values other than the epoch counter itself."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def final_figures(state: State) -> dict[str, float]:
    """The finished bundle's validation figures (from its card), as ``bundle/NAME``."""
    card = load_card(state.info["bundle"])
    figures = {**card.val_metrics, "threshold": card.threshold, "temperature": card.temperature}
    return {f"bundle/{k}": float(v) for k, v in figures.items() if isinstance(v, (int, float)) and v is not None}


class TensorBoard(Callback):
    """RUN/tensorboard/: the config as text, each epoch's figures as scalars (step = epoch), the curves as an
    image and the bundle's validation figures. View with ``tensorboard --logdir RUN/tensorboard``.

    A resumed run purges what the crashed one logged after its checkpoint's last epoch (``purge_step``): an epoch
    logged before a crash in its checkpoint write is trained and logged again. Its config goes in at the step it
    took effect, so a resume that raised the epochs shows the new total."""

    def __init__(self, log_dir: Path, config: dict) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ValueError(f"log_to tensorboard (--log tensorboard) needs the tensorboard package ({e}): "
                             "pip install tensorboard") from None
        self.log_dir, self.config, self.make = log_dir, config, SummaryWriter
        self.writer = None

    def on_fit_start(self, state: State) -> None:
        done = len(state.history)
        self.writer = self.make(str(self.log_dir), purge_step=done + 1 if done else None)
        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(self.config, sort_keys=False) + "```", done)

    def on_epoch_end(self, state: State) -> None:
        for key, value in numbers(state.row).items():
            self.writer.add_scalar(key, value, state.row["epoch"])
        self.writer.flush()

    def on_fit_end(self, state: State) -> None:
        curves = RunFolder.of(state.info["bundle"]).curves
        if curves.is_file():
            self.writer.add_image("curves", np.asarray(Image.open(curves).convert("RGB")), dataformats="HWC")
        for key, value in final_figures(state).items():
            self.writer.add_scalar(key, value, len(state.history))
        self.writer.close()

    def on_refused(self, state: State, reason: str) -> None:
        if self.writer is not None:
            self.writer.add_text(REFUSED, reason, len(state.history))
            self.writer.close()


class MLflow(Callback):
    """An MLflow run in experiment ``pneumoscan``: the config as parameters, each epoch's figures as metrics
    (step = epoch), the bundle's validation figures as ``bundle/...`` metrics, and curves.png, report.html,
    metrics.json and bundle.json as artifacts. The store is ``tracking_uri`` or, by default, a SQLite file in the
    run folder (RUN/mlflow.db, artifacts in RUN/mlartifacts). A resumed run continues the same MLflow run; MLflow
    refuses to log a parameter again with another value, so a setting the resume changed (``--epochs``) is logged
    as the tag ``resumed.NAME`` with the value in force. An epoch logged before a crash in its checkpoint write is
    logged again at the same step."""

    def __init__(self, run_dir: Path, config: dict, tracking_uri: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ValueError(f"log_to mlflow (--log mlflow) needs the mlflow-skinny package ({e}): "
                             "pip install mlflow-skinny") from None
        if not log.isEnabledFor(logging.INFO):  # `pneumoscan -q`: MLflow's own INFO lines (creating its tables) too
            logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.run_dir, self.config, self.uri = run_dir.absolute(), config, tracking_uri
        self.make = MlflowClient
        self.client, self.run_id = None, None

    def on_fit_start(self, state: State) -> None:
        from mlflow.entities import Param, RunTag

        local = self.uri is None
        self.client = self.make("sqlite:///" + str(self.run_dir / "mlflow.db") if local else self.uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        exp_id = experiment.experiment_id if experiment else self.client.create_experiment(
            EXPERIMENT, artifact_location=(self.run_dir / "mlartifacts").as_uri() if local else None)
        params = {k: str(v)[:6000] for k, v in flatten(self.config).items()}
        if self.run_id is None:  # a fresh run; a resumed one logs on into the run its checkpoint named
            self.run_id = self.client.create_run(exp_id, run_name=self.run_dir.name).info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        else:  # a tag of an earlier resume is brought up to date even when this one set the original value again
            logged = self.client.get_run(self.run_id).data
            changed = {k: v for k, v in params.items()
                       if k in logged.params and (v != logged.params[k] or f"resumed.{k}" in logged.tags)}
            added = [Param(k, v) for k, v in params.items() if k not in logged.params]
            self.client.log_batch(self.run_id, params=added,
                                  tags=[RunTag(f"resumed.{k}", v) for k, v in changed.items()])
            if REFUSED in logged.tags:  # the run is tried again: running, then finished or refused anew
                self.client.delete_tag(self.run_id, REFUSED)
                self.client.update_run(self.run_id, status="RUNNING")
            if changed:
                log.info("MLflow run %s resumed with %s (tags resumed.*: a parameter keeps its first value)",
                         self.run_id, ", ".join(f"{k} {v}" for k, v in changed.items()))
        log.info("MLflow run %s in %s", self.run_id, self.client.tracking_uri)

    def _metrics(self, figures: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id,
                              metrics=[Metric(k, v, now, step) for k, v in figures.items() if math.isfinite(v)])

    def on_epoch_end(self, state: State) -> None:
        self._metrics(numbers(state.row), state.row["epoch"])

    def on_fit_end(self, state: State) -> None:
        run = RunFolder.of(state.info["bundle"])
        self._metrics(final_figures(state), len(state.history))
        for path in (run.curves, run.report, run.metrics, run.bundle / CARD):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")

    def on_refused(self, state: State, reason: str) -> None:
        """FAILED, with the reason as the tag ``refused``: left RUNNING, it looked like a run still training."""
        if self.run_id is not None and self.client is not None:
            self.client.set_tag(self.run_id, REFUSED, reason[:5000])  # within MLflow's limit on a tag's value
            self.client.set_terminated(self.run_id, "FAILED")

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}

    def load_state_dict(self, data: dict) -> None:
        self.run_id = data["run_id"]


def make_trackers(names: list[str] | tuple[str, ...], run_dir: Path, config: dict,
                  tracking_uri: str | None = None) -> list[Callback]:
    """The callbacks for ``train --log NAME`` (each name once); ``tracking_uri`` only goes with mlflow."""
    for name in names:
        look_up_option(name, TRACKERS, "tracker")
    if tracking_uri and "mlflow" not in names:
        raise ValueError("tracking_uri (--tracking-uri) is MLflow's store: add mlflow to log_to (--log mlflow)")
    made: list[Callback] = []
    if "tensorboard" in names:
        made.append(TensorBoard(RunFolder(Path(run_dir)).tensorboard, config))
    if "mlflow" in names:
        made.append(MLflow(Path(run_dir), config, tracking_uri))
    return made
