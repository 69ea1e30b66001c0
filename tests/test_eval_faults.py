"""Faults in the data that reach training and evaluation: each is refused with what to do, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumoscan.data.layouts import discover, write_manifest
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.cv import cross_validate


def test_a_cv_fold_without_a_class_of_the_task_is_refused_before_any_fold_trains(tiny_dataset: Path,
                                                                                 tmp_path: Path) -> None:
    """The folds are dealt by label: one virus patient left an etiology fold without virus films, and cv trained the
    folds before it, then stopped advising a validation fraction, which cv does not take."""
    films = discover(tiny_dataset / "train").records
    virus = [r for r in films if r.subtype == "virus"]
    write_manifest([r for r in films if r.subtype != "virus"] + virus[:1], tmp_path / "one-virus.csv")
    cfg = TrainConfig(task="etiology", model="simple_cnn", pretrained=False, image_size=32, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match=r"fold [12] of 2 has no virus (validation|training) film for the etiology "
                                         r"task \(a patient's films stay in one fold\): .* use fewer folds "
                                         r"\(--folds\) or add virus films of other patients"):
        cross_validate(tmp_path / "one-virus.csv", cfg, 2, tmp_path / "cv")
    assert not (tmp_path / "cv").exists()
