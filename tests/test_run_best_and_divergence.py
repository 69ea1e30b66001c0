"""A training run's loose ends: RUN/best as an earlier pneumoscan wrote it, which must not pass for a model, and what
a divergence before any step names, from where a real run's weights started."""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from pneumoscan.cli import main
from pneumoscan.models import registry as models
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.card import BEST_SO_FAR, load_card, save_card
from pneumoscan.serving.app import create_app
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.engine import Callback, State, divergence_advice
from pneumoscan.training.train import train
from tests.builders import Crash, crash_in_epoch


def test_a_run_best_written_before_its_card_said_so_is_refused(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """pneumoscan 0.2.0 wrote RUN/best with a sealed card that does not say what it is (no best_so_far): predict read
    films with it at an uncalibrated 0.5 and exited 0, as evaluate and serve did. It sits as RUN/best beside the run's
    files and records no run and no validation figures, which tells it apart; copied away from its run, it loads."""
    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint.pt"))
    best = run / "best"
    card = load_card(best, best_so_far=True)
    del card.train_config[BEST_SO_FAR]
    save_card(best, card)  # sealed as 0.2.0 sealed it (the same digest), with the train_config it wrote: {}
    film = next((tiny_dataset / "test" / "NORMAL").iterdir())
    refusal = (f"{best} holds the best epoch's weights that a training run keeps while it trains, not a model to use: "
               f"no temperature, threshold or validation figures were chosen for them; use {run / 'bundle'}, the "
               "run's finished bundle")
    for command in (["predict", str(best), str(film)], ["evaluate", str(best), str(tiny_dataset), "--split", "test",
                                                         "--out", str(tmp_path / "eval")]):
        assert main(command) == 2
        assert capsys.readouterr().err == f"pneumoscan {command[0]}: error: {refusal}\n"
    for load in (load_bundle, create_app):  # serve's start loads the bundle through create_app
        with pytest.raises(ValueError, match=f"^{re.escape(refusal)}$"):
            load(best)
    (tmp_path / "link").symlink_to(best)  # the same folder under another name
    with pytest.raises(ValueError, match=f"^{re.escape(refusal)}$"):
        load_bundle(tmp_path / "link")
    copied = shutil.copytree(best, tmp_path / "elsewhere" / "best")  # no run beside it: a bundle made by hand
    assert load_bundle(copied)[1].threshold_policy == "fixed 0.5"
    assert load_bundle(run / "bundle")[1].val_metrics, "the run's own bundle loads beside it"


class _Pooled(torch.nn.Module):
    """A backbone and a classifier on its pooled features, split as timm splits a model (forward_features,
    forward_head, get_classifier), which the warm start fits on: a plug-in as small as a model with them can be."""

    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(in_chans, 8, 3, stride=2), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(8, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> torch.nn.Module:
        return self.head


class _Started(Callback):
    """What a run's divergence would name at its first step, and where its weights started, seen as fit begins;
    ``stop``: the run ends there (a resumed run needs no more)."""

    def __init__(self, stop: bool = False) -> None:
        self.stop, self.advice, self.start = stop, "", ("", "")

    def on_fit_start(self, state: State) -> None:
        self.advice, self.start = divergence_advice(state), state.start
        if self.stop:
            raise Crash


def test_a_warm_started_run_names_its_warm_start_after_a_resume_too(tiny_dataset: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose classifier the warm start fitted names it in a divergence before any step; resumed (no warm
    start runs then) it named "the model's starting weights" and advised checking the films, which cannot give a
    loss out of scale: the resumed run started where the first start put it."""
    monkeypatch.setattr(models, "_REGISTRY", models._REGISTRY.copy())

    @models.register("pretrained_tiny", mean=0.5, std=0.25, weights=True)
    def pretrained_tiny(num_classes: int, in_chans: int, pretrained: bool) -> torch.nn.Module:
        torch.manual_seed(0)  # its pretrained weights: the same every time it is built
        return _Pooled(num_classes, in_chans)

    cfg = TrainConfig(model="pretrained_tiny", image_size=32, batch_size=8, val_fraction=0.25, epochs=1)
    first, resumed = _Started(), _Started(stop=True)
    with pytest.raises(Crash):  # after the first epoch's checkpoint
        train(tiny_dataset, cfg, tmp_path / "run", on_epoch_end=crash_in_epoch(0), callbacks=[first])
    assert first.advice == ("no step had moved the weights yet, so the classifier the warm start fitted gave it, not "
                            "the learning rate: train with warm_start false (--set warm_start=false)")
    with pytest.raises(Crash):
        train(tiny_dataset, dataclasses.replace(cfg, epochs=2), tmp_path / "run", resume=True, callbacks=[resumed])
    assert resumed.start == first.start


@pytest.mark.parametrize("pretrained, said", [
    (False, "nan_head's starting weights gave it, not the learning rate: check how nan_head's builder initialises "
            "them"),
    (True, "nan_head's pretrained weights gave it, not the learning rate: train from scratch with pretrained false "
          "(--no-pretrained)"),
])  # fmt: skip
def test_a_divergence_at_the_first_step_names_the_model_s_weights_not_the_films(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pretrained: bool, said: str) -> None:
    """A registered model whose classifier bias its builder sets to NaN (its initialisation, or its pretrained weights;
    no warm start fits a new one) diverged at step 1 with "check the films with `pneumoscan audit DATA`": the films'
    8-bit pixels, normalised by a checked mean and std, cannot give a NaN loss before any step."""
    monkeypatch.setattr(models, "_REGISTRY", models._REGISTRY.copy())

    @models.register("nan_head", mean=0.5, std=0.25, weights=True)
    def nan_head(num_classes: int, in_chans: int, pretrained: bool) -> torch.nn.Module:
        model = models.simple_cnn(num_classes, in_chans, pretrained)  # no forward_head: no warm start
        torch.nn.init.constant_(model.get_classifier().bias, math.nan)
        return model

    cfg = TrainConfig(model="nan_head", pretrained=pretrained, image_size=32, batch_size=8, val_fraction=0.25, epochs=1)
    with pytest.raises(ValueError, match=rf"^training diverged at epoch 1, step 1 \(loss nan\): no step had moved the "
                                         rf"weights yet, so {re.escape(said)}$"):
        train(tiny_dataset, cfg, tmp_path / "run")


def test_a_run_best_given_as_dot_or_a_link_is_refused_naming_its_own_runs_bundle(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal's "use RUN/bundle" was worked out from the path as typed: given as ``.`` inside RUN/best it named
    ``bundle``, a folder beside the shell's, and given as a link, a bundle beside the link."""
    run = tiny_bundle.parent
    (tmp_path / "link").symlink_to(run / "best")
    monkeypatch.chdir(run / "best")
    for given in (Path("."), tmp_path / "link"):
        with pytest.raises(ValueError, match=f"; use {re.escape(str(run.resolve() / 'bundle'))}, the run's finished"):
            load_bundle(given)


class _PoisonedInSecondEpoch(Callback):
    """The classifier's bias turned NaN before the second epoch's first step, after the first epoch was validated and
    kept in RUN/best: a divergence after a best epoch, as a run whose rate grew too large has."""

    def before_step(self, state: State) -> None:
        if state.epoch == 1:
            with torch.no_grad():
                state.model.get_classifier().bias.fill_(math.nan)


def test_a_run_that_diverges_after_its_best_epoch_keeps_no_run_best(tiny_dataset: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """RUN/best stayed after a divergence, and `predict RUN/best` advised finishing the run with `train --resume`,
    which replays the same steps from the checkpoint into the same divergence. As after a run no better than chance,
    RUN/best goes (the checkpoint keeps its weights, and a resume rewrites it) and RUN/refused.txt says why."""
    run = tmp_path / "run"
    cfg = TrainConfig(model="simple_cnn", pretrained=False, image_size=32, batch_size=8, val_fraction=0.25, epochs=2)
    with pytest.raises(ValueError, match=r"^training diverged at epoch 2, step \d+ \(loss nan\)") as refused:
        train(tiny_dataset, cfg, run, callbacks=[_PoisonedInSecondEpoch()])
    assert {p.name for p in run.iterdir()} == {"config.yaml", "split.csv", "history.csv", "curves.png",
                                               "checkpoint.pt", "refused.txt"}
    assert (run / "refused.txt").read_text(encoding="utf-8") == f"{refused.value}\n"
    film = next((tiny_dataset / "test" / "NORMAL").iterdir())
    assert main(["predict", str(run / "best"), str(film)]) == 2
    assert "--resume" not in capsys.readouterr().err
