"""Settings a run could not honour, found in a review of the training loop: refused before anything is trained or
rewritten."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from pneumoscan.models.card import load_card
from pneumoscan.training.config import TrainConfig, load_config
from pneumoscan.training.train import train

TINY = dict(model="simple_cnn", pretrained=False, image_size=32, batch_size=8, lr=3e-3, val_fraction=0.25)


@pytest.mark.parametrize("setting, reason", [
    ("time_budget=.inf", "time_budget must be finite and > 0 minutes, got inf"),
    ("weight_decay=.inf", "weight_decay must be finite and >= 0, got inf"),
])  # fmt: skip
def test_an_infinite_budget_or_weight_decay_is_refused_before_training(setting: str, reason: str) -> None:
    """`--set time_budget=.inf` (or a config file's) trained every epoch and then failed at the bundle with "Out of
    range float values are not JSON compliant"; `weight_decay=.inf` made the second step's loss NaN, refused as a
    divergence that told the user to lower the learning rate. The flags refuse infinity; the config did not."""
    with pytest.raises(ValueError) as refused:
        load_config(None, [setting])
    assert str(refused.value) == reason
    key = setting.partition("=")[0]
    with pytest.raises(ValueError, match=f"^{key} must be finite"):
        TrainConfig(**{key: math.inf})  # a library caller's config, as a file's


def test_resume_refuses_fewer_epochs_than_the_checkpoint_has_trained(tiny_dataset: Path, tmp_path: Path) -> None:
    """A checkpoint of 2 epochs resumed with --epochs 1 shipped a bundle whose card and config.yaml said 1 epoch
    while its history and report said 2. --epochs may stay at the epochs trained (finish now) or rise."""
    run, cfg = tmp_path / "run", TrainConfig(**{**TINY, "epochs": 2, "patience": 10})

    def killed_before_the_bundle(epoch: int) -> None:
        if epoch == 1:
            raise KilledBeforeTheBundle

    with pytest.raises(KilledBeforeTheBundle):
        train(tiny_dataset, cfg, run, on_epoch_end=killed_before_the_bundle)
    kept = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"it has trained 2 epochs, more than --epochs 1, which its bundle would "
                                         r"record: give --epochs 2 to finish it now, or more to train on$"):
        train(tiny_dataset, dataclasses.replace(cfg, epochs=1), run, resume=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == kept, "refused before RUN is rewritten"
    bundle = train(tiny_dataset, cfg, run, resume=True)
    assert load_card(bundle).train_config["epochs"] == 2
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 2


class KilledBeforeTheBundle(RuntimeError):
    pass
