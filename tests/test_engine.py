"""The training engine: fit()'s hook order, and each callback on a stub state (milliseconds), then one tiny real
run of the adam-plateau recipe."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from pneumoscan.cli import main
from pneumoscan.core.options import OPTIMIZERS
from pneumoscan.training.callbacks import (
    BestWeights,
    Checkpoint,
    EarlyStopping,
    EpochHook,
    Finalize,
    History,
    ReduceOnPlateau,
    TimeBudget,
    WeightAverage,
    cosine,
    lr_factor,
    plot_training_curves,
    restore,
)
from pneumoscan.training.engine import Callback, State, fit
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.resume import load_checkpoint, save_checkpoint
from pneumoscan.training.train import recipe
from tests.distributed_stubs import two_gloo_ranks
from tests.engine_stubs import figures, rank_that_stalls, rank_that_stops_alone, rank_with_a_nan, stub_state


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattribute__(self, name: str):
        if name.startswith(("on_", "before_", "after_")):
            return lambda state: self.calls.append(name)
        return super().__getattribute__(name)


def test_plot_training_curves_writes_png(tmp_path: Path) -> None:
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "train_acc": 1 - 1 / (e + 1),
            "val_acc": 0.9 - 1 / (e + 2),
            "val_auc": None if e == 1 else 0.8 + 0.02 * e,
            "lr": 1e-3,
        }
        for e in range(1, 6)
    ]
    out = tmp_path / "plots" / "training.png"
    plot_training_curves(history, out)
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("epochs", [1, 2, 3])
def test_the_curves_of_a_short_run_mark_whole_epochs(
    epochs: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quick start's smoke test trains one epoch: its curves.png marked the epoch axis 0.96, 0.98, 1.00, 1.02, ...
    (two epochs: 1.0, 1.2, ...), epochs that do not exist. Each panel's ticks in view are whole epochs."""
    from pneumoscan.training import callbacks

    drawn = []
    draw = callbacks.figure_bytes
    monkeypatch.setattr(callbacks, "figure_bytes", lambda fig, **kwargs: (drawn.append(fig), draw(fig, **kwargs))[1])
    plot_training_curves([{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 0.7, "val_acc": 0.8,
                           "val_auc": 0.9} for e in range(1, epochs + 1)], tmp_path / "curves.png")
    (fig,) = drawn
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(t == round(t) for t in ticks), (ax.get_title(), ticks)


def test_the_curves_are_redrawn_at_most_every_so_often_and_always_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """history.csv after every epoch; curves.png after an epoch only when the last draw is CURVES_EVERY_S old (a
    second's epoch spent 0.4 s drawing), and at the end, so the file always shows the whole run."""
    from pneumoscan.training import callbacks

    drawn: list[int] = []
    monkeypatch.setattr(callbacks, "plot_training_curves", lambda history, path: drawn.append(len(history)))
    row = {"val_loss": 0.5, "val_acc": 0.5, "val_auc": 0.5, "val_sens": 0.5, "val_spec": 0.5}
    for every, expected in ((3600.0, [3]), (0.0, [1, 2, 3])):
        monkeypatch.setattr(callbacks, "CURVES_EVERY_S", every)
        drawn.clear()
        fit(stub_state(epochs=3), [History(tmp_path)], torch.nn.functional.cross_entropy, lambda *_: dict(row))
        assert drawn == expected
        with (tmp_path / "history.csv").open() as f:
            assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def test_a_resumed_run_draws_its_curves_at_its_start_only_where_its_history_held_a_row_the_checkpoint_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed run drew curves.png at its start and again at its end (0.4 s a draw, as long as a test's epoch): at
    its start only where history.csv held a row its checkpoint lacks (a kill while that checkpoint was written),
    which curves.png may show; history.csv is rewritten from the checkpoint's rows either way."""
    from pneumoscan.training import callbacks

    drawn: list[int] = []
    monkeypatch.setattr(callbacks, "plot_training_curves", lambda history, path: drawn.append(len(history)))
    monkeypatch.setattr(callbacks, "CURVES_EVERY_S", 3600.0)
    rows = [{"epoch": 1, "val_auc": 0.6}, {"epoch": 2, "val_auc": 0.7}]
    for on_disk, expected in ((rows, []), ([*rows, {"epoch": 3, "val_auc": 0.8}], [2])):
        History(tmp_path).write(on_disk, draw=False)
        resumed, drawn[:], history = stub_state(), [], History(tmp_path)
        resumed.history = [dict(row) for row in rows]  # as the checkpoint gives them back
        history.on_fit_start(resumed)
        assert drawn == expected, on_disk
        with (tmp_path / "history.csv").open() as f:
            assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
        history.on_fit_end(resumed)
        assert drawn == [2], f"{on_disk}: the end's draw shows the checkpoint's rows, once"


def test_a_refused_run_draws_the_curves_of_its_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run refused (a divergence) before its curves' next draw left history.csv without curves.png, which shows the
    user why it was refused: they are drawn from its history then, when it has a row."""
    from pneumoscan.training import callbacks

    monkeypatch.setattr(callbacks, "CURVES_EVERY_S", 3600.0)
    row = {"val_loss": 0.5, "val_acc": 0.5, "val_auc": 0.5, "val_sens": 0.5, "val_spec": 0.5}

    def diverges_at(epoch: int) -> Callable[[State, object, object], dict]:
        def validate(state: State, *_: object) -> dict:
            if state.epoch + 1 == epoch:
                raise ValueError(f"training diverged at epoch {epoch}")
            return dict(row)
        return validate

    for epoch, rows in ((3, 2), (1, 0)):
        run = tmp_path / f"epoch-{epoch}"
        run.mkdir()
        with pytest.raises(ValueError, match=f"diverged at epoch {epoch}"):
            fit(stub_state(epochs=3), [History(run)], torch.nn.functional.cross_entropy, diverges_at(epoch))
        assert (run / "curves.png").is_file() == bool(rows)
        if rows:
            assert (run / "curves.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
            with (run / "history.csv").open() as f:
                assert len(list(csv.DictReader(f))) == rows


def test_fit_calls_the_hooks_at_fixed_points_and_keeps_one_row_per_epoch() -> None:
    rec = Recorder()
    state = fit(stub_state(epochs=2, batches=2), [rec], torch.nn.functional.cross_entropy, figures([0.5, 0.4]))
    epoch = ["on_epoch_start", *["before_step", "after_step"] * 2, "before_validation", "on_validation_end",
             "on_epoch_end"]
    assert rec.calls == ["on_fit_start", *epoch, *epoch, "on_fit_end"]
    assert state.step == 4 and state.epoch == 2
    assert [r["epoch"] for r in state.history] == [1, 2] and [r["val_loss"] for r in state.history] == [0.5, 0.4]
    assert {"step", "train_loss", "train_acc", "lr", "minutes"} <= set(state.history[0])


def test_a_stop_ends_training_after_the_epoch_and_end_epoch_before_the_next_step() -> None:
    class StopAtSecondStep(Callback):
        def before_step(self, state: State) -> None:
            if state.step == 1:
                state.stop = state.end_epoch = True

    state = fit(stub_state(epochs=3, batches=3), [StopAtSecondStep()], torch.nn.functional.cross_entropy,
                figures([1.0]))
    assert state.step == 1 and len(state.history) == 1, "the step taken is validated, no further one is"


def test_end_epoch_alone_leaves_that_epoch_and_the_next_one_trains() -> None:
    """end_epoch (leave the epoch before its next step) was never cleared: every later epoch left before its first
    step, so training ended there, unsaid, and finalised, as if stop had been set."""
    class ShortFirstEpoch(Callback):
        def before_step(self, state: State) -> None:
            if state.epoch == 0 and state.step == 1:
                state.end_epoch = True

    state = fit(stub_state(epochs=3, batches=3), [ShortFirstEpoch()], torch.nn.functional.cross_entropy,
                figures([1.0, 0.9, 0.8]))
    assert [row["step"] for row in state.history] == [1, 4, 7]


def test_the_time_budget_stops_training_and_sets_the_cosine_rate() -> None:
    state = stub_state(lr=0.1)
    budget = TimeBudget(total_steps=100, budget_s=60.0, factor=cosine(0.05))
    state.step = 10
    budget.before_step(state)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor(10.5 / 100, 0.05))
    assert not state.stop
    state.t0 -= 59.0  # most of the budget used: the time decides the schedule, not the steps
    budget.before_step(state)
    assert state.optimizer.param_groups[0]["lr"] < 0.1 * lr_factor(0.9, 0.05)
    state.t0 -= 2.0
    budget.before_step(state)
    assert state.end_epoch and not state.stop, "the clock's end, not a verdict the checkpoint keeps"
    plain = stub_state(lr=0.1)
    TimeBudget(100, None).before_step(plain)  # no factor (adam-plateau): the rate is left alone
    assert plain.optimizer.param_groups[0]["lr"] == 0.1 and not plain.stop


def test_the_plateau_schedule_cuts_the_rate_after_patience_epochs_without_a_lower_loss() -> None:
    state = stub_state(lr=1e-3, optimizer="adam")
    plateau = ReduceOnPlateau(state.optimizer, "val_loss", factor=0.2, patience=2)
    rates = []
    for loss in (1.0, 0.8, 0.81, 0.85, 0.9, 0.7, 0.71, 0.72, 0.73):
        state.row = {"val_loss": loss}
        plateau.on_validation_end(state)
        rates.append(state.optimizer.param_groups[0]["lr"])
    # three epochs without a new low (patience 2) cut it: after the 5th and after the 9th
    assert rates == pytest.approx([1e-3] * 4 + [2e-4] * 4 + [4e-5])
    again = ReduceOnPlateau(stub_state(optimizer="adam").optimizer, "val_loss", factor=0.2, patience=2)
    again.load_state_dict(json.loads(json.dumps(plateau.state_dict())))  # as a checkpoint keeps it
    assert again.scheduler.best == 0.7 and again.scheduler.num_bad_epochs == 0


@pytest.mark.parametrize("mode, values, stops_after", [
    ("max", [0.6, 0.7, 0.7, 0.65, 0.9], 4), ("min", [1.0, 0.9, 0.95, 0.8, 0.85, 0.86], 6), ("max", [math.nan] * 3, 2),
])
def test_early_stopping_waits_patience_epochs_without_a_better_figure(mode: str, values: list,
                                                                      stops_after: int) -> None:
    state = stub_state(epochs=10)
    stopper = EarlyStopping("val_x", mode, patience=2)
    for epoch, value in enumerate(values, 1):
        state.row, state.epoch = {"val_x": value}, epoch - 1
        stopper.on_validation_end(state)
        if state.stop:
            break
    assert state.stop and epoch == stops_after


def test_patience_1_stops_at_the_first_epoch_without_improvement_and_0_is_refused() -> None:
    """patience 0 stopped after the first epoch even when it had improved (Keras: at the first without)."""
    with pytest.raises(ValueError, match=r"patience must be >= 1 \(1 stops at the first epoch without a better "
                                         r"validation figure\), got 0"):
        TrainConfig(patience=0)
    state, stopper = stub_state(epochs=10), EarlyStopping("val_x", "max", patience=1)
    for epoch, value in enumerate([0.6, 0.7, 0.8, 0.8]):
        state.row, state.epoch = {"val_x": value}, epoch
        stopper.on_validation_end(state)
        assert state.stop == (epoch == 3), epoch


def test_no_step_of_the_cosine_schedule_has_rate_0() -> None:
    """Set at each step's end, the last step's rate was 0: a one-step run shipped its initial weights."""
    for total in (1, 2, 7):
        state, budget, rates = stub_state(lr=0.05), TimeBudget(total, None, cosine(0.05)), []
        for step in range(total):
            state.step = step
            budget.before_step(state)
            rates.append(state.optimizer.param_groups[0]["lr"])
        assert min(rates) > 0 and not state.stop, (total, rates)
        assert rates[-1] == pytest.approx(0.05 * lr_factor((total - 0.5) / total, 0.05)), "the last step's midpoint"


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_best_weights_are_saved_on_improvement_only_and_a_run_without_them_is_refused() -> None:
    saved: list[int] = []
    state = stub_state()
    best = BestWeights(lambda m: saved.append(state.epoch), "too few images")
    for epoch, auc in enumerate([0.7, math.nan, 0.9, 0.9, 0.8]):
        state.row, state.epoch = {"val_auc": auc}, epoch
        with torch.no_grad():
            state.model[1].weight += 1.0  # each epoch's own weights
        if epoch == 2:
            third = weights_of(state.model)
        best.on_validation_end(state)
        best.on_epoch_end(state)
    kept = best.state_dict()
    assert saved == [0, 2] and (kept["value"], kept["epoch"]) == (0.9, 3)
    assert all(torch.equal(kept["weights"][k], third[k]) for k in third), "the checkpoint keeps the saved weights"
    best.on_fit_end(state)
    assert state.info["best_epoch"] == 3

    # resumed: RUN/best is rewritten from the checkpoint's best weights, and training goes on from the live ones
    rewritten: list[dict] = []
    resumed, again = stub_state(), BestWeights(lambda m: rewritten.append(weights_of(m)), "")
    again.load_state_dict(kept)
    resumed.history, live = [{}] * 5, weights_of(resumed.model)
    again.on_fit_start(resumed)
    assert len(rewritten) == 1 and all(torch.equal(rewritten[0][k], third[k]) for k in third)
    assert all(torch.equal(v, live[k]) for k, v in resumed.model.state_dict().items())
    BestWeights(lambda m: rewritten.append(weights_of(m)), "").on_fit_start(stub_state())
    assert len(rewritten) == 1, "a fresh run has nothing to rewrite"
    with pytest.raises(ValueError, match="no epoch was validated: too few images"):
        BestWeights(lambda m: None, "too few images").on_fit_end(stub_state())
    undefined = stub_state()
    undefined.history = [{"val_auc": math.nan}]
    with pytest.raises(ValueError, match="undefined after every epoch"):
        BestWeights(lambda m: None, "").on_fit_end(undefined)


def test_a_checkpoint_restores_the_model_optimizer_counters_and_callback_states(tmp_path: Path) -> None:
    state = stub_state(optimizer="adam")
    stopper, hooked = EarlyStopping("val_loss", "min", 3), []
    config = {"lr": 0.1, "augment": {"noise": 0.04}}
    made = {"config": config, "processes": 1, "data": "sha256:0", "teachers": []}
    fit(state, [stopper, Checkpoint(tmp_path / "c.pt", [stopper], save_checkpoint, made), EpochHook(hooked.append)],
        torch.nn.functional.cross_entropy, figures([1.0, 0.5, 0.7]))
    assert hooked == [0, 1, 2]
    back, stopper2 = stub_state(optimizer="adam"), EarlyStopping("val_loss", "min", 3)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert {k: ckpt[k] for k in made} == made, "how the run was made, for --resume to check"
    restore(back, ckpt, [stopper2], tmp_path / "c.pt")
    assert (back.epoch, back.step, back.history) == (3, 6, json.loads(json.dumps(state.history)))
    assert back.elapsed >= state.history[-1]["minutes"] * 60 - 1e-6
    assert stopper2.state_dict() == {"best": 0.5, "stale": 1}
    assert all(torch.equal(a, b) for a, b in zip(state.model.state_dict().values(), back.model.state_dict().values()))
    assert back.optimizer.state_dict()["state"][0]["step"] == 6


def test_two_callbacks_of_one_class_keep_their_own_states_across_a_checkpoint(tmp_path: Path) -> None:
    """Callback states were keyed by class name: early stopping on the AUC and on the loss in one run shared a key,
    and after --resume both held the loss's."""
    state = stub_state(optimizer="adam")
    on_auc, on_loss = EarlyStopping("val_auc", "max", 5), EarlyStopping("val_loss", "min", 5)
    rows = iter([{"val_auc": 0.7, "val_loss": 1.0}, {"val_auc": 0.9, "val_loss": 0.5},
                 {"val_auc": 0.8, "val_loss": 0.7}])
    fit(state, [on_auc, on_loss, Checkpoint(tmp_path / "c.pt", [on_auc, on_loss], save_checkpoint, {})],
        torch.nn.functional.cross_entropy, lambda state, logits, targets: next(rows))
    kept = (on_auc.state_dict(), on_loss.state_dict())
    assert kept[0] != kept[1]
    again = (EarlyStopping("val_auc", "max", 5), EarlyStopping("val_loss", "min", 5))
    restore(stub_state(optimizer="adam"), load_checkpoint(tmp_path / "c.pt"), list(again), tmp_path / "c.pt")
    assert (again[0].state_dict(), again[1].state_dict()) == kept


def test_a_checkpoint_from_before_the_engine_resumes_its_early_stopping_and_best_weights(tmp_path: Path) -> None:
    state = stub_state()
    old = {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(), "epoch": 1, "step": 4,
           "elapsed": 3.0, "warm_s": 0.0, "history": json.dumps([{"epoch": 1}, {"epoch": 2}]),
           "best": json.dumps({"auc": 0.8, "epoch": 1, "stale": 1})}
    stopper, best = EarlyStopping("val_auc", "max", 3), BestWeights(lambda m: None, "")
    restore(stub_state(), old, [stopper, best], tmp_path / "c.pt")
    assert stopper.state_dict() == {"best": 0.8, "stale": 1}
    assert best.state_dict() == {"value": 0.8, "epoch": 1, "weights": None}, "no best weights: RUN/best is kept"


class StepWeights(Callback):
    """The live weights after every step, and the weights each validation saw."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []
        self.validated: list[torch.Tensor] = []

    def after_step(self, state: State) -> None:
        self.steps.append(torch.nn.utils.parameters_to_vector(state.model.parameters()).detach().clone())

    def on_validation_end(self, state: State) -> None:
        self.validated.append(torch.nn.utils.parameters_to_vector(state.model.parameters()).detach().clone())


def test_validation_sees_the_moving_average_and_training_goes_on_from_the_live_weights() -> None:
    decay = 0.7
    torch.manual_seed(0)
    plain, seen = stub_state(epochs=2, batches=3), StepWeights()
    fit(plain, [seen], torch.nn.functional.cross_entropy, figures([1.0, 0.9]))
    torch.manual_seed(0)
    state, averaged = stub_state(epochs=2, batches=3), StepWeights()
    fit(state, [averaged, WeightAverage(state.model, decay)], torch.nn.functional.cross_entropy, figures([1.0, 0.9]))
    # the same steps as without the average: each epoch trains on from the live weights, not the averaged ones
    torch.testing.assert_close(torch.stack(averaged.steps), torch.stack(seen.steps))
    ema, expected = averaged.steps[0], []
    for i, w in enumerate(averaged.steps[1:], start=2):
        ema = decay * ema + (1 - decay) * w
        if i % 3 == 0:
            expected.append(ema)
    torch.testing.assert_close(torch.stack(averaged.validated), torch.stack(expected))
    assert not torch.allclose(averaged.validated[-1], averaged.steps[-1])


def test_the_moving_average_survives_a_checkpoint(tmp_path: Path) -> None:
    state = stub_state(epochs=2)
    average = WeightAverage(state.model, 0.9)
    fit(state, [average, Checkpoint(tmp_path / "c.pt", [average], save_checkpoint, {})],
        torch.nn.functional.cross_entropy, figures([1.0, 0.9]))
    back = stub_state()
    again = WeightAverage(back.model, 0.9)
    restore(back, load_checkpoint(tmp_path / "c.pt"), [again], tmp_path / "c.pt")
    for a, b in zip(average.average.state_dict().values(), again.average.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert int(again.average.n_averaged) == 4


def test_a_diverging_run_is_refused_at_the_step_whose_loss_is_not_finite() -> None:
    """A rate far too high: the loss overflows within the first epoch. The run stops there, naming the epoch and
    step, before that step reaches the weights; before, it trained on and failed in sklearn at validation."""
    torch.manual_seed(0)
    state = stub_state(epochs=3, batches=3, lr=1e38)
    with pytest.raises(ValueError,
                       match=r"^training diverged at epoch 1, step 3 \(loss inf\): lower the learning rate"):
        fit(state, [], torch.nn.functional.cross_entropy, figures([1.0, 1.0, 1.0]))
    assert state.step == 2 and not state.history
    assert all(torch.isfinite(p).all() for p in state.model.parameters()), "the refused step changed no weight"


def losses_then_nan(*losses: float):
    """A loss_fn whose steps' losses are ``losses`` (each with the stub model's gradient), then NaN."""
    given = iter(losses)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss * 0 + next(given, math.nan)

    return loss_fn


@pytest.mark.parametrize("losses, step, said", [
    ((), 1, r"no step had moved the weights yet, so the weights of --init B gave it, not the learning rate: start "
            r"from another bundle"),
    ((4.2e9, 4.2e9), 3, r"the loss before the first step was already 4\.2e\+09, so the weights of --init B started "
                        r"out of scale, not the learning rate: start from another bundle"),
    ((0.69, 1e6), 3, r"lower the learning rate lr \(--lr\) and train again"),
])  # fmt: skip
def test_a_divergence_advises_what_was_seen(losses: tuple[float, ...], step: int, said: str) -> None:
    """Every divergence advised a lower learning rate, even one at the first step, before any step had moved the
    weights (an --init bundle of NaN weights), or after a first loss of 4e9 (an --init bundle of weights far out of
    scale), which no learning rate mends. Those name where the weights started; a loss that grew from a sane start
    names the learning rate."""
    state = stub_state(epochs=1, batches=3)
    state.start = ("the weights of --init B", "start from another bundle")
    with pytest.raises(ValueError, match=rf"^training diverged at epoch 1, step {step} \(loss nan\): {said}$"):
        fit(state, [], losses_then_nan(*losses), figures([1.0]))


@pytest.fixture(scope="module")
def ranks_said() -> dict[str, dict[int, object]]:
    """What two gloo ranks said in each DDP scenario below, run one after another by the same two processes (the
    stalled one last: it leaves its group broken). The ranks import engine_stubs alone, not this module's training
    stack."""
    said = two_gloo_ranks((rank_with_a_nan,), (rank_that_stops_alone,),
                          (rank_that_stalls, lambda context: context.Event()))
    return dict(zip(("nan", "stop", "stall"), said))


def test_every_rank_refuses_the_step_whose_loss_is_not_finite_on_one_rank(ranks_said: dict) -> None:
    said = ranks_said["nan"]
    assert said[1] == ("ValueError: training diverged at epoch 1, step 2 (loss nan): lower the learning rate lr (--lr) "
                       "and train again")
    assert said[0] == ("ValueError: training diverged at epoch 1, step 2 (a loss that is not finite in another "
                       "process): lower the learning rate lr (--lr) and train again"), "rank 0 stops at the same step"


def test_a_stop_or_end_of_epoch_set_on_one_rank_holds_on_every_rank(ranks_said: dict) -> None:
    """A callback whose verdict is its own rank's (its own data, a file only one machine sees) left the ranks apart:
    the rank that stopped finalised while the other stepped into the gradients' all-reduce, and waited there for the
    timeout (3 hours by default), or met a collective of another shape."""
    said = ranks_said["stop"]
    assert said == {0: [1, 4], 1: [1, 4]}, said


def test_a_process_that_stalls_in_training_is_given_up_on_in_one_line(ranks_said: dict) -> None:
    """A process stalled in a step left the other with gloo's raw "Timed out waiting ...ms for recv operation" from
    inside DDP's gradient all-reduce; it says, in one line, that the processes meet at every step and what to do."""
    said = ranks_said["stall"]
    assert said[0] == ("TimeoutError: process 0 waited 2 s for the others and gave up; the processes meet at every "
                       "training step (the gradients' average), so another one stopped or stalled there (its own log "
                       "says why) or runs far slower (a busy or smaller machine); if it is only slower, set "
                       "PNEUMOSCAN_DIST_TIMEOUT (seconds) above its longest stall"), said


def test_finalize_runs_after_training_and_hands_its_bundle_on() -> None:
    seen: list[int] = []
    final = Finalize(lambda state: seen.append(len(state.history)) or Path("run/bundle"))
    state = fit(stub_state(epochs=2), [final], torch.nn.functional.cross_entropy, figures([1.0, 0.9]))
    assert seen == [2] and state.info["bundle"] == Path("run/bundle")


def test_the_adam_plateau_recipe_trains_with_adam_and_cuts_its_rate(tiny_dataset: Path, tmp_path: Path) -> None:
    """Adam at a constant rate (no warm-up, no decay) that patience 0 halves after any epoch without a new low of
    the validation loss (the stub sequence above shows the cut itself; here the run's own losses decide)."""
    config = tmp_path / "recipe.yaml"
    config.write_text("plateau_patience: 0\nplateau_factor: 0.5\npatience: 10\nwarm_start: false\nweight_decay: 0.3\n")
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(run), "--config", str(config), "--model",
                 "simple_cnn", "--no-pretrained", "--image-size", "32", "--epochs", "2", "--batch-size", "8",
                 "--lr", "1e-3", "--optimizer", "adam-plateau"]) == 0
    with (run / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    expected, best = [1e-3], math.inf
    for row in rows[:-1]:  # torch's rule: a new low is below the best by more than 1e-4 of it
        loss = float(row["val_loss"])
        expected.append(expected[-1] if loss < best * (1 - 1e-4) else expected[-1] / 2)
        best = min(best, loss)
    assert len(rows) == 2 and [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-9)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["weight_decay"] == 0.3, "the weight decay the card records"
    plateau = ckpt["callbacks"]["ReduceOnPlateau"]
    assert plateau["best"] == pytest.approx(min(float(r["val_loss"]) for r in rows)) and plateau["patience"] == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["optimizer"] == "adam-plateau"
    assert (run / "bundle" / "model.onnx").is_file()


def test_both_recipes_decay_the_weights_decoupled_from_the_gradient() -> None:
    """adam-plateau ignored weight_decay while its card recorded it. It now means what it means in adamw-cosine
    (and Keras's weight_decay): with no gradient, a step shrinks each weight by lr x weight_decay."""
    for optimizer in OPTIMIZERS:
        weight = torch.nn.Parameter(torch.full((3,), 2.0))
        opt, _ = recipe(TrainConfig(optimizer=optimizer, weight_decay=0.3), [weight], 0.1, 10, None)
        weight.grad = torch.zeros(3)
        opt.step()
        assert weight.detach().tolist() == pytest.approx([2.0 * (1 - 0.1 * 0.3)] * 3), optimizer


def test_adam_plateau_refuses_a_warm_up_it_would_not_apply(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """adam-plateau keeps a constant rate from the first step: a warm-up asked of it would be recorded in its
    config.yaml and card and never applied. Its default, and 0, pass."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path), "--out", str(run), "--optimizer", "adam-plateau",
                 "--set", "warmup=0.2"]) == 2
    assert ("error: warmup 0.2 is the adamw-cosine recipe's: adam-plateau starts at its full rate with no warm-up, "
            "so drop the warmup setting or use optimizer adamw-cosine (--optimizer)") in capsys.readouterr().err
    assert not run.exists(), "refused before the run folder is made"
    for warmup in (TrainConfig.warmup, 0.0):
        TrainConfig(optimizer="adam-plateau", warmup=warmup)
    TrainConfig(warmup=0.2)
    # refused where the config is made, so a library caller's too (it was checked in train() only: cv wrote its
    # folds' manifests first)
    with pytest.raises(ValueError, match=r"warmup 0\.2 is the adamw-cosine recipe's"):
        TrainConfig(optimizer="adam-plateau", warmup=0.2)


def test_adamw_cosine_refuses_plateau_settings_it_would_not_apply(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """The mirror of the warm-up: plateau_factor and plateau_patience under adamw-cosine were recorded in the card
    and never applied (the rate followed the cosine, the AUCs those of a run without them). Their defaults pass."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path), "--out", str(run), "--set", "plateau_factor=0.5",
                 "--set", "plateau_patience=0"]) == 2
    assert ("error: plateau_factor 0.5 and plateau_patience 0 set the adam-plateau recipe's rate cuts: adamw-cosine "
            "follows its cosine schedule, so drop them or use optimizer adam-plateau (--optimizer)"
            ) in capsys.readouterr().err
    assert not run.exists()
    TrainConfig(optimizer="adam-plateau", plateau_factor=0.5, plateau_patience=0)
    TrainConfig(plateau_factor=TrainConfig.plateau_factor, plateau_patience=TrainConfig.plateau_patience)


def test_an_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown optimizer 'sgd' \(choose from adamw-cosine, adam-plateau\)"):
        TrainConfig.from_dict({"optimizer": "sgd"})


@pytest.mark.parametrize("precision, step_dtype", [("auto", torch.float32), ("fp32", torch.float32),
                                                   ("bf16", torch.bfloat16)])
def test_the_precision_sets_the_steps_arithmetic_and_the_weights_stay_fp32(precision: str,
                                                                           step_dtype: torch.dtype) -> None:
    state = stub_state(epochs=1, batches=2)
    state.precision = precision
    before = [p.detach().clone() for p in state.model.parameters()]
    seen: list[torch.dtype] = []
    state.model[1].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    fit(state, [], torch.nn.functional.cross_entropy, figures([0.5]))
    assert seen == [step_dtype, step_dtype], "auto is fp32 on CPU; bf16 asks for bf16 autocast on any device"
    after = list(state.model.parameters())
    assert all(p.dtype == torch.float32 for p in after)
    assert all(not torch.equal(a, b) for a, b in zip(before, after)), "the bf16 steps' gradients reach the fp32 weights"


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError,
                       match=r"unknown precision 'fp16'; did you mean 'bf16'\? \(choose from auto, bf16, fp32\)"):
        TrainConfig.from_dict({"precision": "fp16"})


def test_the_epoch_line_never_shows_a_missed_film_as_perfect(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One pneumonia film missed in 2,500 is a sensitivity of 0.9996: the epoch's line says 0.999, not 1.000."""
    state = stub_state()
    state.row = {"epoch": 1, "train_loss": 0.1, "train_acc": 0.99, "val_loss": 0.1, "val_acc": 0.9999,
                 "val_auc": 0.99996, "val_sens": 0.9996, "val_spec": 1.0}
    state.history = [state.row]
    with caplog.at_level("INFO"):
        History(tmp_path).on_validation_end(state)
    assert "acc 0.999 AUC 0.9999 sens 0.999 spec 1.000" in caplog.text


class StopAfter(Callback):
    """A callback whose stop rests on its own state alone: after ``epochs`` validations, counted across a resume."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.seen = epochs, 0

    def on_validation_end(self, state: State) -> None:
        self.seen += 1
        state.stop = state.stop or self.seen >= self.epochs

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, data: dict) -> None:
        self.seen = data["seen"]


class Crash(Exception):
    pass


class CrashAfter(Callback):
    """A crash after epoch ``epoch`` (0-based) is checkpointed."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state: State) -> None:
        if state.epoch == self.epoch:
            raise Crash


class Clock(Callback):
    """Moves the run's clock ``seconds`` on before step ``step``, as that much time spent there would."""

    def __init__(self, step: int, seconds: float) -> None:
        self.step, self.seconds = step, seconds

    def before_step(self, state: State) -> None:
        if state.step == self.step:
            state.t0 -= self.seconds


def test_a_callbacks_stop_is_kept_across_a_resume_and_the_time_budgets_is_worked_out_again(tmp_path: Path) -> None:
    """A run killed after the epoch in which a callback stopped it (its checkpoint written) trained on when resumed:
    the stop was no state the checkpoint kept, and only early stopping worked its own out again. The time budget's end
    is no verdict but the clock's: a resume with a longer --time-budget trains on."""
    path, loss = tmp_path / "c.pt", torch.nn.functional.cross_entropy
    stopper = StopAfter(2)
    with pytest.raises(Crash):
        fit(stub_state(epochs=5), [stopper, Checkpoint(path, [stopper], save_checkpoint, {}), CrashAfter(1)], loss,
            figures([1.0] * 5))
    resumed, again = stub_state(epochs=5), StopAfter(2)
    restore(resumed, load_checkpoint(path), [again], path)
    fit(resumed, [again], loss, figures([1.0] * 5))
    assert len(resumed.history) == 2, "the run ends where the callback ended it"

    # a budget of 60 s spent at the fourth step (the second epoch's second): that epoch ends there, and the run
    budget = TimeBudget(100, 60.0)
    state = fit(stub_state(epochs=5), [Clock(3, 61.0), budget, Checkpoint(path, [budget], save_checkpoint, {})], loss,
                figures([1.0] * 5))
    assert (state.step, len(state.history)) == (3, 2)
    for seconds, steps in ((60.0, 3), (600.0, 9)):  # resumed under the same budget: no step; under a longer: on
        resumed = stub_state(epochs=5)
        restore(resumed, load_checkpoint(path), [], path)
        fit(resumed, [TimeBudget(100, seconds)], loss, figures([1.0] * 5))
        assert resumed.step == steps, seconds


def test_a_resumed_run_keeps_its_first_loss_for_the_divergence_advice(tmp_path: Path) -> None:
    """The first loss (4.2e9: weights that started out of scale) was no state the checkpoint kept, so a run resumed
    after its first epoch and then diverged advised a lower learning rate, which no learning rate mends."""
    path = tmp_path / "c.pt"
    state = stub_state(epochs=2, batches=3)
    with pytest.raises(Crash):
        fit(state, [Checkpoint(path, [], save_checkpoint, {}), CrashAfter(0)], losses_then_nan(*[4.2e9] * 3),
            figures([1.0]))
    resumed = stub_state(epochs=2, batches=3)
    resumed.start = ("the weights of --init B", "start from another bundle")
    restore(resumed, load_checkpoint(path), [], path)
    with pytest.raises(ValueError, match=r"^training diverged at epoch 2, step 4 \(loss nan\): the loss before the "
                                         r"first step was already 4\.2e\+09, so the weights of --init B started out "
                                         r"of scale, not the learning rate: start from another bundle$"):
        fit(resumed, [], losses_then_nan(), figures([1.0]))
