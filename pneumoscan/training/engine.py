"""The training engine: :func:`fit` runs the epoch loop and calls :class:`Callback` hooks at fixed points.

Everything a run does besides stepping the optimiser (the time budget and its learning-rate schedule, early
stopping, best weights, history, checkpoints, resume, experiment tracking, finalisation) is a callback in
:mod:`pneumoscan.training.callbacks` that reads and writes the shared :class:`State`. Hooks run in list order:

    on_fit_start -> per epoch: on_epoch_start -> per batch: before_step, after_step -> before_validation
    -> on_validation_end -> on_epoch_end -> ... -> on_fit_end

or, when training refuses the run (a ValueError from the loop or a hook: a divergence, a model no better than
chance), ``on_refused`` with the reason before the error goes on.

A callback that carries state across a crash returns it from ``state_dict`` (plain values and tensors) and takes it
back in ``load_state_dict``; the checkpoint callback saves and restores them by class name.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from pneumoscan.core.logs import progress as progress_bar
from pneumoscan.core.names import shown
from .distributed import AT_EVERY_STEP

if TYPE_CHECKING:
    from .distributed import Dist


@dataclass
class State:
    """What the loop and its callbacks share. ``stop`` ends training after this epoch: a callback's verdict, which the
    checkpoint keeps, so a resumed run stops there too; ``end_epoch`` leaves the current epoch before its next step
    (the time budget sets it at every step once it is spent, so the next epoch takes no step and training ends, and a
    resumed run works that out again from its clock and budget, which ``--resume`` may extend). Either, set on any
    rank, holds on every rank: :func:`fit` all-reduces them where it reads them."""

    model: torch.nn.Module  # the bare model: what is saved and restored
    net: torch.nn.Module  # what a step calls (the model, or DDP around it)
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    ctx: Dist
    epochs: int
    t0: float  # perf_counter at the start of the run (moved back by what a resumed run had used)
    warm_s: float = 0.0  # seconds the warm start took, before the first step
    lr: float = 0.0  # the base learning rate (linearly scaled with the processes)
    precision: str = "auto"  # the training steps' arithmetic: autocast
    epoch: int = 0  # 0-based, the epoch running or next to run
    step: int = 0  # optimiser steps taken over the whole run
    history: list[dict] = field(default_factory=list)
    row: dict = field(default_factory=dict)  # this epoch's figures, from on_validation_end on
    improved: bool = False  # this epoch's validation beat every earlier one (best weights)
    stop: bool = False
    end_epoch: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # what finalisation produced, for the trackers
    # where the weights started and what to change there: what a divergence the learning rate did not cause names
    # (divergence_advice); train sets it to the --init bundle or the warm start's classifier
    start: tuple[str, str] = ("the weights the model started with", "check them")
    first_loss: float | None = None  # the loss of this run's first step, before any step moved the weights

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


class Callback:
    """Base class: override the hooks a callback needs; every hook runs on every rank."""

    def on_fit_start(self, state: State) -> None: ...
    def on_epoch_start(self, state: State) -> None: ...
    def before_step(self, state: State) -> None: ...
    def after_step(self, state: State) -> None: ...
    def before_validation(self, state: State) -> None: ...
    def on_validation_end(self, state: State) -> None: ...
    def on_epoch_end(self, state: State) -> None: ...
    def on_fit_end(self, state: State) -> None: ...

    def on_refused(self, state: State, reason: str) -> None:
        """Training refused the run (``reason``, as the command prints it): no bundle; end what the callback began."""

    def state_dict(self) -> dict | None:
        """State to keep in the checkpoint (plain values and tensors), or None when there is none."""
        return None

    def load_state_dict(self, data: dict) -> None: ...


def _run(callbacks: list[Callback], hook: str, state: State) -> None:
    for cb in callbacks:
        getattr(cb, hook)(state)


def resolved_precision(device: torch.device, precision: str) -> str:
    """What the training steps compute in, "bf16" or "fp32": bf16 where asked, or on CUDA by default ("auto"). The
    bundle and the checkpoint record it, since "auto" alone does not say what a run did."""
    return "bf16" if precision == "bf16" or (precision == "auto" and device.type == "cuda") else "fp32"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The training step's autocast, bf16 as :func:`resolved_precision` decides; otherwise off. bf16 keeps fp32's
    range, so no loss scaling; on CPUs with native bf16 (AVX512-BF16, AMX) a step of efficientnet_lite0 at 192 px is
    1.2-1.4x as fast as in fp32 (docs/results.md)."""
    bf16 = resolved_precision(device, precision) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


# A first loss above this is out of scale: it is the cross-entropy of weights that gave the batch's films e^-100 of
# their own class on average, before any step. Weights that start anywhere sane (random, ImageNet's with a fitted
# classifier, a trained bundle on new films) score a batch near log(number of classes), a few units at worst.
OUT_OF_SCALE_LOSS = 100.0


def divergence_advice(state: State) -> str:
    """What a diverged run should change, from what was seen: a loss that is not finite before any step had moved
    the weights, or a first loss already out of scale (:data:`OUT_OF_SCALE_LOSS`), comes from where the weights
    started (``state.start``: an ``--init`` bundle, the warm start's classifier), which no learning rate mends;
    otherwise the steps took the weights there, and a lower learning rate takes smaller ones."""
    source, remedy = state.start
    if state.step == 0:
        return f"no step had moved the weights yet, so {source} gave it, not the learning rate: {remedy}"
    if state.first_loss is not None and state.first_loss > OUT_OF_SCALE_LOSS:
        return (f"the loss before the first step was already {state.first_loss:.3g}, so {source} started out of "
                f"scale, not the learning rate: {remedy}")
    return "lower the learning rate lr (--lr) and train again"


def check_finite(loss: torch.Tensor, state: State) -> None:
    """Refuse a step whose loss is not finite on any rank, before it reaches the weights: a diverged run otherwise
    trains on NaN weights and only fails at validation, in sklearn's "Input contains NaN". Each rank computes its own
    loss, so the verdict is all-reduced and every rank raises at the same step; one rank raising alone would leave
    the others waiting in the gradient all-reduce of the step it never takes."""
    if state.ctx.any(not bool(torch.isfinite(loss.detach()).all()), AT_EVERY_STEP):
        value = float(loss.detach())
        seen = f"loss {value:g}" if not math.isfinite(value) else "a loss that is not finite in another process"
        raise ValueError(f"training diverged at epoch {state.epoch + 1}, step {state.step + 1} ({seen}): "
                         f"{divergence_advice(state)}")


@dataclass
class _EpochTotals:
    """What an epoch's steps add up to: the sums behind its training loss and accuracy, and its logits and targets
    for the training AUC (augmented images, scored by weights that changed as the epoch went)."""

    loss: float = 0.0  # summed over the images
    correct: float = 0  # images whose class (a mixed image's larger part) the logits' larger one named
    seen: float = 0  # images; floats once summed over the ranks
    logits: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)


def fit(
    state: State,
    callbacks: list[Callback],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    validate: Callable[[State, np.ndarray, np.ndarray], dict],
) -> State:
    """Train from ``state.epoch`` to ``state.epochs`` unless a callback stops it; returns the state.

    ``loss_fn(logits, targets)`` is the training loss, with targets as class indices or, from a mixing collate, class
    probabilities; ``validate(state, train_logits, train_targets)`` gives the epoch's row of figures (the training
    logits are every rank's, joined). A rank-wide sum makes the training loss and accuracy cover every rank's images.
    A loss that is not finite on any rank is refused (:func:`check_finite`) before its step; a refusal (a ValueError)
    is told to every callback (``on_refused``) before it goes on."""
    amp = autocast(state.ctx.device, state.precision)
    progress = progress_bar(
        TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), enabled=state.ctx.main,
    )
    try:
        _run(callbacks, "on_fit_start", state)
        with progress:
            bar = progress.add_task("train", total=len(state.train_loader), epoch=state.epoch + 1, info="")
            while state.epoch < state.epochs:
                state.stop = state.ctx.any(state.stop)  # a stop set on one rank (a callback's verdict) holds for all
                if state.stop:
                    break
                state.net.train()
                state.end_epoch = False  # it leaves one epoch: kept, it left every later one before its first step
                _run(callbacks, "on_epoch_start", state)
                totals = _summed_over_ranks(state.ctx, _train_epoch(state, callbacks, loss_fn, amp, progress, bar))
                if totals.seen == 0:  # the time budget ran out before this epoch took a step: nothing to validate
                    break
                _run(callbacks, "before_validation", state)
                state.row = {"epoch": state.epoch + 1, "step": state.step, "train_loss": totals.loss / totals.seen,
                             "train_acc": totals.correct / totals.seen}
                state.row.update(validate(state, np.concatenate(totals.logits), np.concatenate(totals.targets)))
                state.row.update(lr=state.optimizer.param_groups[0]["lr"], minutes=state.elapsed / 60)
                state.history.append(state.row)
                _run(callbacks, "on_validation_end", state)
                _run(callbacks, "on_epoch_end", state)
                state.epoch += 1
        _run(callbacks, "on_fit_end", state)
    except ValueError as e:  # the trackers end their runs saying why, not as runs still training
        for cb in callbacks:
            cb.on_refused(state, shown(str(e)))
        raise
    return state


def _train_epoch(
    state: State,
    callbacks: list[Callback],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    amp: torch.autocast,
    progress: Progress,
    bar: TaskID,
) -> _EpochTotals:
    """One pass over this rank's training batches, one step each, with the hooks around every step; ends early when
    a ``before_step`` hook sets ``state.end_epoch`` (the time budget). Returns this rank's totals, for the epoch's
    row, and shows them as it goes."""
    totals = _EpochTotals()
    for x, y in state.train_loader:
        _run(callbacks, "before_step", state)
        state.end_epoch = state.ctx.any(state.end_epoch, AT_EVERY_STEP)  # left on one rank, left on every rank
        if state.end_epoch:
            break
        if not totals.seen:  # the bar turns to an epoch that takes a step, not to one the time budget leaves at once
            progress.reset(bar, total=len(state.train_loader), epoch=state.epoch + 1, info="")
        x = x.to(state.ctx.device, non_blocking=True, memory_format=torch.channels_last)
        y = y.to(state.ctx.device, non_blocking=True)
        with state.ctx.waiting(AT_EVERY_STEP):  # gloo's timeout in the gradients' all-reduce, as one line
            logits, loss = _step(state, x, y, loss_fn, amp)
        hard = y if y.ndim == 1 else y.argmax(1)  # a mixed image counts as its larger part's class
        totals.loss += loss.item() * len(y)
        totals.correct += int((logits.argmax(1) == hard).sum())
        totals.logits.append(logits.detach().float().cpu().numpy())
        totals.targets.append(hard.cpu().numpy())
        totals.seen += len(y)
        _run(callbacks, "after_step", state)
        lr = state.optimizer.param_groups[0]["lr"]
        progress.update(bar, advance=1,
                        info=f"loss {totals.loss / totals.seen:.3f} acc {totals.correct / totals.seen:.3f} lr {lr:.2e}")
    return totals


def _step(
    state: State,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    amp: torch.autocast,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch already on the run's device: the forward pass under the run's autocast, the
    loss in fp32, refused on every rank when it is not finite (:func:`check_finite`) before it reaches the weights.
    Returns the logits and the loss, which the epoch's tallies and progress bar read."""
    with amp:
        logits = state.net(x)
        loss = loss_fn(logits.float(), y)
    check_finite(loss, state)
    if state.step == 0:  # every rank's largest, so that a divergence advises the same on every rank
        state.first_loss = max(state.ctx.gathered(float(loss.detach())))
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    state.step += 1
    return logits, loss


def _summed_over_ranks(ctx: Dist, totals: _EpochTotals) -> _EpochTotals:
    """``totals`` with the training loss, accuracy and image count summed over every rank, so that the epoch's row
    covers every rank's images, not rank 0's share; the logits stay this rank's (``validate`` joins them)."""
    if ctx.world > 1:
        sums = torch.tensor([totals.loss, totals.correct, totals.seen], dtype=torch.float64, device=ctx.device)
        with ctx.waiting(AT_EVERY_STEP):
            dist.all_reduce(sums)
        totals.loss, totals.correct, totals.seen = sums.tolist()
    return totals

