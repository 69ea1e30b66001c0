"""A training run's leftovers that must not pass for a model: RUN/best as an earlier pneumoscan wrote it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pneumoscan.cli import main
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.card import BEST_SO_FAR, load_card, save_card
from pneumoscan.serving.app import create_app


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
