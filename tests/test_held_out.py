"""The held-out check's reading of the bundles whose weights a bundle's come from."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from pneumoscan.data.layouts import discover
from pneumoscan.evaluation import held_out
from pneumoscan.evaluation.held_out import HeldOutPolicy, check_held_out
from pneumoscan.models.card import BundleCard, load_card, save_card


def test_each_card_is_read_once_and_still_names_the_task(tiny_bundle: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle started from another (--init): the check read each card twice, once to find the bundles its weights
    come from and again for the task naming their validation films; now once, and both runs' validation films are
    still said to have chosen their temperature and threshold."""
    bundle = shutil.copytree(tiny_bundle.parent, tmp_path / "run") / "bundle"  # with its run's split.csv
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, train_config={**card.train_config, "init": str(tiny_bundle)}))
    read: list[str] = []

    def counted(path: Path | str) -> BundleCard:  # the real read, counted
        read.append(os.path.realpath(path))
        return load_card(path)

    monkeypatch.setattr(held_out, "load_card", counted)
    validation = [r for r in discover(bundle.parent / "split.csv").records if r.split == "val"]
    caveats = check_held_out([bundle], validation, "evaluate", policy=HeldOutPolicy(validation_warning=True)).caveats
    assert sorted(read) == sorted(os.path.realpath(b) for b in (bundle, tiny_bundle))
    assert [c for c in caveats if "validation films" in c] == [
        f"{len(validation)} film(s) given to evaluate are {run}'s validation films, on which its own temperature and "
        "threshold were chosen: the figures on them are optimistic" for run in (bundle, tiny_bundle)]
