"""The training engine's callbacks (:mod:`pneumoscan.training.engine`): the time budget and its learning-rate schedule,
the plateau schedule, early stopping, best weights, a moving average of the weights, history and its curves plot,
checkpoints with exact resume, and a user hook."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pneumoscan.core.atomic import write_atomic, write_csv
from pneumoscan.core.figures import figure_bytes, set_title
from pneumoscan.core.metrics import format_figure
from pneumoscan.core.names import shown
from pneumoscan.models.run_folder import RunFolder
from .engine import Callback, State

log = logging.getLogger(__name__)


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to zero, as a function of the fraction of the schedule done."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-8, 1.0 - warmup))))


def schedule_done(step: int, total_steps: int, elapsed_s: float, warm_s: float, budget_s: float | None) -> float:
    """The fraction of the learning-rate schedule done before this step: steps over the planned total or, under a
    time budget, the time since the warm start over what the budget left after it, whichever is further on.
    Counted from the run's start instead, a 2-minute warm start in an 11-minute budget skipped the warm-up and
    began fine-tuning at 94 % of the peak rate."""
    done = step / total_steps
    if budget_s:
        done = max(done, (elapsed_s - warm_s) / (budget_s - warm_s))
    return done


class TimeBudget(Callback):
    """Ends training when the schedule is done (the time budget spent): it leaves the epoch then, and every later one
    before its first step; it sets no ``stop``, a verdict the checkpoint would keep, since a resume with a longer
    budget trains on. Given ``factor``, it sets each step's learning rate to ``state.lr * factor(fraction done)``.
    Every rank takes the same number of steps."""

    def __init__(self, total_steps: int, budget_s: float | None,
                 factor: Callable[[float], float] | None = None) -> None:
        self.total_steps, self.budget_s, self.factor = max(1, total_steps), budget_s, factor

    def before_step(self, state: State) -> None:
        done = schedule_done(state.step, self.total_steps, state.elapsed, state.warm_s, self.budget_s)
        if self.budget_s and state.ctx.world > 1:
            t = torch.tensor([done], device=state.ctx.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            done = float(t)
        if done >= 1.0:
            state.end_epoch = True
        elif self.factor is not None:  # the schedule at the step's midpoint: neither the first step nor the last
            # has rate 0 (at the step's end, the last step's was 0, and a one-step run shipped its initial weights)
            for g in state.optimizer.param_groups:
                g["lr"] = state.lr * self.factor(max(done, (state.step + 0.5) / self.total_steps))


def cosine(warmup: float) -> Callable[[float], float]:
    """The adamw-cosine recipe's factor: linear warm-up over ``warmup`` of the schedule, then cosine decay."""
    return lambda done: lr_factor(done, warmup)


class ReduceOnPlateau(Callback):
    """The Keras recipe's ReduceLROnPlateau: the learning rate times ``factor`` after ``patience`` epochs without a
    lower ``monitor`` (torch's scheduler, stepped on each epoch's validation figure)."""

    def __init__(self, optimizer: torch.optim.Optimizer, monitor: str = "val_loss", factor: float = 0.2,
                 patience: int = 2) -> None:
        self.monitor = monitor
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor,
                                                                    patience=patience)

    def on_validation_end(self, state: State) -> None:
        before = state.optimizer.param_groups[0]["lr"]
        self.scheduler.step(state.row[self.monitor])
        after = state.optimizer.param_groups[0]["lr"]
        if after < before and state.ctx.main:
            log.info("%s has not improved for %d epochs: learning rate %.2e -> %.2e", self.monitor,
                     self.scheduler.patience + 1, before, after)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, data: dict) -> None:
        self.scheduler.load_state_dict(data)


def better(value: float, best: float, mode: str) -> bool:
    """A NaN (an undefined AUC) is never better."""
    return value > best if mode == "max" else value < best


class EarlyStopping(Callback):
    """Ends training after ``patience`` epochs without a better ``monitor`` (a run resumed after it stopped trains no
    further: the checkpoint keeps the stop)."""

    def __init__(self, monitor: str = "val_auc", mode: str = "max", patience: int = 3) -> None:
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.best, self.stale = (-math.inf if mode == "max" else math.inf), 0

    def on_validation_end(self, state: State) -> None:
        value = state.row[self.monitor]
        if better(value, self.best, self.mode):
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        if self.stale >= self.patience:
            state.stop = True
            if state.ctx.main and state.epoch + 1 < state.epochs:
                log.info("early stopping: no better %s for %d epoch(s)", self.monitor, self.stale)

    def state_dict(self) -> dict:
        return {"best": self.best, "stale": self.stale}

    def load_state_dict(self, data: dict) -> None:
        self.best, self.stale = data["best"], data["stale"]


class BestWeights(Callback):
    """Keeps the weights of the epoch with the highest validation AUC (``save(model)`` on rank 0, e.g. RUN/best) and
    refuses a run in which no epoch was validated. ``no_epoch`` says why that can happen.

    The checkpoint keeps the best weights too, and a resumed run rewrites RUN/best from them: a run killed after
    RUN/best took an epoch's weights but before that epoch's checkpoint was whole would otherwise finalise weights
    that the checkpoint, the history and the report know nothing of."""

    def __init__(self, save: Callable[[torch.nn.Module], None], no_epoch: str) -> None:
        self.save, self.no_epoch = save, no_epoch
        self.value, self.epoch = -1.0, -1
        self.weights: dict[str, torch.Tensor] | None = None  # rank 0: what ``save`` last saved, for the checkpoint

    def on_fit_start(self, state: State) -> None:
        if not (state.ctx.main and state.history and self.epoch > 0):  # only a resumed run with a best epoch
            return
        if self.weights is None:
            log.warning("the checkpoint records no best weights (an earlier version's): RUN/best is kept as it is, "
                        "though a run killed while writing its checkpoint may have left a later epoch's there")
            return
        live = {k: v.clone() for k, v in state.model.state_dict().items()}
        state.model.load_state_dict(self.weights)
        self.save(state.model)
        state.model.load_state_dict(live)

    def on_validation_end(self, state: State) -> None:
        state.improved = better(state.row["val_auc"], self.value, "max")
        if state.improved:
            self.value, self.epoch = state.row["val_auc"], state.epoch + 1

    def on_epoch_end(self, state: State) -> None:
        if state.improved and state.ctx.main:
            self.weights = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}
            self.save(state.model)

    def on_fit_end(self, state: State) -> None:
        if self.epoch < 0 and state.history:
            raise ValueError("the validation AUC was undefined after every epoch: the validation split needs both "
                             "classes")
        if self.epoch < 0:
            raise ValueError(f"no epoch was validated: {self.no_epoch}")
        state.info["best_epoch"] = self.epoch

    def state_dict(self) -> dict:
        return {"value": self.value, "epoch": self.epoch, "weights": self.weights}

    def load_state_dict(self, data: dict) -> None:
        self.value, self.epoch, self.weights = data["value"], data["epoch"], data.get("weights")


class WeightAverage(Callback):
    """An exponential moving average of the weights and BatchNorm statistics (torch's ``AveragedModel``), updated
    after every step. Validation, and so the best weights and the bundle, see the average: it smooths the noise
    of the last steps' small CPU batches. Training goes on from the live weights, which the checkpoint keeps along
    with the average. Goes after :class:`BestWeights` and before :class:`Checkpoint` in the callback list."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.live: dict[str, torch.Tensor] | None = None

    def after_step(self, state: State) -> None:
        self.average.update_parameters(state.model)

    def before_validation(self, state: State) -> None:
        self.live = {k: v.clone() for k, v in state.model.state_dict().items()}
        state.model.load_state_dict(self.average.module.state_dict())

    def on_epoch_end(self, state: State) -> None:
        if self.live is not None:
            state.model.load_state_dict(self.live)
            self.live = None

    def state_dict(self) -> dict:
        return {k: v.cpu() for k, v in self.average.state_dict().items()}

    def load_state_dict(self, data: dict) -> None:
        self.average.load_state_dict(data)


def plot_training_curves(history: list[dict[str, Any]], out_png: Path) -> None:
    """Loss / accuracy / AUC per epoch, train vs validation, to spot over-fitting at a glance.
    Series missing from the history are left out; a None value leaves a gap."""
    from matplotlib.figure import Figure  # matplotlib when the curves are drawn, not on training's import
    from matplotlib.ticker import MaxNLocator

    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    panels = (
        ("Loss", ("train_loss", "val_loss")),
        ("Accuracy", ("train_acc", "val_acc")),
        ("ROC AUC", ("train_auc", "val_auc")),
    )
    styles = {"train": ("train", "#1f77b4"), "val": ("validation", "#ff7f0e")}  # same colours in every panel
    fig = Figure(figsize=(13, 3.8))
    # fixed margins (inches: 0.8 left, 0.35 right, 0.6 below, 0.45 above, 0.75 between panels) with room for tick
    # labels of six characters: figure_bytes cuts the figure out of one draw, where tight_layout measured it first
    fig.subplots_adjust(left=0.8 / 13, right=1 - 0.35 / 13, bottom=0.6 / 3.8, top=1 - 0.45 / 3.8,
                        wspace=0.75 / ((13 - 1.15 - 2 * 0.75) / 3))
    for ax, (title, series) in zip(fig.subplots(1, 3), panels):
        for key in series:
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                label, color = styles[key.split("_")[0]]
                ax.plot(epochs, [math.nan if v is None else v for v in values], "o-", ms=3, color=color, label=label)
        ax.set(xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one epoch: not 0.96, 0.98, ...
        set_title(ax, title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_png, figure_bytes(fig, tight=True))


CURVES_EVERY_S = 30.0  # RUN/curves.png is redrawn at most this often while training (a draw takes about 0.4 s)


class History(Callback):
    """Rank 0: one log line per epoch when its figures are in (``on_validation_end``: after :class:`BestWeights`
    marks it best, before the schedule's callbacks, whose lines of a rate cut or an early stop are of this epoch),
    and RUN/history.csv rewritten at the epoch's end, with RUN/curves.png redrawn then too when the last draw is
    CURVES_EVERY_S old (every epoch of a real run; a test's epochs of a second each would spend most of their time
    drawing) and at the end of the fit, or of a run training refused. A resumed run rewrites them from the
    checkpoint's history first where they differ: a run killed while writing an epoch's checkpoint had already
    written that epoch's row, which would otherwise stay however the resumed run ends."""

    def __init__(self, run_dir: Path) -> None:
        self.run = RunFolder(run_dir)
        self.drawn_at = time.monotonic()  # of the last draw (or the start)
        self.behind = False  # a row not drawn yet

    def write(self, history: list[dict], draw: bool) -> None:
        # every row's keys: a run resumed from an older version's checkpoint has rows without the newer columns
        write_csv(self.run.history, list(dict.fromkeys(k for row in history for k in row)), history)
        self.behind = not (draw or time.monotonic() - self.drawn_at >= CURVES_EVERY_S)
        if not self.behind:
            plot_training_curves(history, self.run.curves)
            self.drawn_at = time.monotonic()

    def on_fit_start(self, state: State) -> None:
        self.drawn_at = time.monotonic()
        if state.ctx.main and state.history:
            # curves.png is redrawn now only where history.csv held a row the checkpoint lacks, which it may show
            # too; else it shows some of these rows, and the next draw (the end's at the latest) draws them all
            written = self.run.history.read_bytes() if self.run.history.is_file() else None
            self.write(state.history, draw=False)
            if self.run.history.read_bytes() != written:
                self.draw_behind(state)

    def on_validation_end(self, state: State) -> None:
        if not state.ctx.main:
            return
        row = state.row
        log.info(
            f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {format_figure(row['train_acc'])} "
            f"| val loss {row['val_loss']:.4f} acc {format_figure(row['val_acc'])} "
            f"AUC {format_figure(row['val_auc'], 4)} sens {format_figure(row['val_sens'])} "
            f"spec {format_figure(row['val_spec'])}" + (" best" if state.improved else "")
        )

    def on_epoch_end(self, state: State) -> None:
        if state.ctx.main:
            self.write(state.history, draw=False)

    def on_fit_end(self, state: State) -> None:
        self.draw_behind(state)

    def on_refused(self, state: State, reason: str) -> None:
        """A refused run's curves are drawn too: its history is what shows why it was refused (RUN/refused.txt),
        and a run of short epochs refused within CURVES_EVERY_S of its last draw had none or an old one."""
        self.draw_behind(state)

    def draw_behind(self, state: State) -> None:
        """RUN/curves.png drawn from the whole history, when rows are not drawn yet (rank 0)."""
        if state.ctx.main and self.behind:
            plot_training_curves(state.history, self.run.curves)
            self.behind = False


class Checkpoint(Callback):
    """Writes RUN/checkpoint.pt after every epoch (rank 0, atomically, after the history, the best weights and the
    trackers), with the state of ``callbacks``, whether a callback has stopped the run (every rank's say: it would
    otherwise be read before the next epoch only, after the checkpoint), and ``made``: how the run is made (its
    settings as plain values, its number of processes, data and teachers:
    :func:`pneumoscan.training.resume.made_by`), which ``--resume`` checks; :func:`restore` takes it back."""

    def __init__(self, path: Path, callbacks: list[Callback], save: Callable[[Path, dict], None], made: dict) -> None:
        self.path, self.callbacks, self.save, self.made = path, callbacks, save, made

    def on_epoch_end(self, state: State) -> None:
        state.stop = state.ctx.any(state.stop)
        if state.ctx.main:
            states = {key: kept for key, cb in zip(state_keys(self.callbacks), self.callbacks)
                      if (kept := cb.state_dict()) is not None}
            self.save(self.path, {
                "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(), "epoch": state.epoch,
                "step": state.step, "elapsed": state.elapsed, "warm_s": state.warm_s, "stop": state.stop,
                "first_loss": state.first_loss, "history": json.dumps(state.history), "callbacks": states, **self.made,
            })
        state.ctx.barrier()


def restore(state: State, ckpt: dict, callbacks: list[Callback], path: Path) -> None:
    """What ``--resume`` loaded, before :func:`~pneumoscan.training.engine.fit`: model, optimiser, counters, the first
    loss (a divergence after the resume is advised from it), history, every callback's state and a callback's stop,
    so the run continues bit for bit where the crashed one left off (a run a callback had stopped trains no further).
    A checkpoint of an earlier version records no stop: its early stopping trains one epoch more, and stops again
    unless that epoch is better."""
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.epoch, state.step, state.stop = ckpt["epoch"] + 1, ckpt["step"], bool(ckpt.get("stop", False))
    state.t0 -= ckpt["elapsed"]
    state.first_loss = ckpt.get("first_loss")  # what divergence_advice reads; a checkpoint of an earlier version: None
    state.history = json.loads(ckpt["history"])
    saved = callback_states(ckpt)
    for key, cb in zip(state_keys(callbacks), callbacks):
        if key in saved:
            cb.load_state_dict(saved[key])
    if state.ctx.main:
        log.info("resuming after epoch %d (step %d) from %s%s", ckpt["epoch"] + 1, state.step, shown(path),
                 ": training had been stopped there, so the bundle is finished without training further"
                 if state.stop else "")


def state_keys(callbacks: Sequence[Callback]) -> list[str]:
    """Each callback's key in a checkpoint: its class name, with ``#2``, ``#3``, ... for the second and later of one
    class (two early stoppings on different figures had shared one key, and a resumed run gave both the last's
    state)."""
    seen: Counter[str] = Counter()
    keys = []
    for cb in callbacks:
        name = type(cb).__name__
        seen[name] += 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def callback_states(ckpt: dict) -> dict:
    """Callback states by :func:`state_keys`. A checkpoint of pneumoscan 0.1.0 kept one ``best`` record for both the
    best weights and early stopping on validation AUC."""
    if "callbacks" in ckpt:
        return ckpt["callbacks"]
    best = json.loads(ckpt["best"])
    return {"BestWeights": {"value": best["auc"], "epoch": best["epoch"]},
            "EarlyStopping": {"best": best["auc"], "stale": best["stale"]}}


class EpochHook(Callback):
    """``fn(epoch)`` after each epoch's checkpoint is safely written (tests use it to simulate a crash)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, state: State) -> None:
        self.fn(state.epoch)


class Finalize(Callback):
    """After training: ``fn(state)`` turns the best weights into the bundle (temperature, threshold, ONNX, report)
    and returns its folder, kept in ``state.info['bundle']`` for the trackers that follow."""

    def __init__(self, fn: Callable[[State], Path]) -> None:
        self.fn = fn

    def on_fit_end(self, state: State) -> None:
        state.info["bundle"] = self.fn(state)
