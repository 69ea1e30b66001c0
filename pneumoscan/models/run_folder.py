"""The folders training writes, named in one place for the code that writes them and the code that reads a
bundle's run (its split, its recipe, its history):

    RUN/                   train --out RUN
      bundle/              the trained model to use (:mod:`.bundle`)
      best/                the best epoch's weights, kept while the run trains
                           (no model to use: load_card refuses it to all but training)
      split.csv            every film's side (train / val): the held-out checks read it beside the bundle
      config.yaml          the recipe
      checkpoint.pt        what --resume goes on from
      history.csv, curves.png, metrics.json, report.html    the epochs and the validation figures
      refused.txt          why training refused the run (diverged, no better than chance, ...): it has no bundle
      tensorboard/         with --log tensorboard
    CV/                    cv --out CV
      split-fold-K.csv     fold K's split, all written before the first fold trains
      fold-K/              fold K's RUN
      oof.csv, cv.json     every film's out-of-fold score, and the figures
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

METRICS = "metrics.json"  # written by evaluation's reports, in a run folder and in an evaluate --out folder
REPORT = "report.html"
PREDICTIONS = "predictions.csv"  # an evaluate --out folder's scores, a row a film: what compare's paired test reads
# metrics.json's SHA-256 of the predictions.csv written with it: another run's file, or one left by an evaluation
# stopped between the two, is not paired as this one's scores
PREDICTIONS_CHECKSUM = "predictions_checksum"
# metrics.json's word on whether its films are test films (an older pneumoscan's predictions.csv names no split):
# that predictions.csv, given back as films, chooses no threshold
TEST_SPLIT = "test_split"
HISTORY = "history.csv"
_FOLD = re.compile(r"fold-(\d+)")
_FOLD_SPLIT = re.compile(r"split-fold-(\d+)\.csv")


def _entry(name: str) -> property:
    """A path in the folder, as an attribute: ``RunFolder(RUN).split`` is RUN/split.csv."""
    return property(lambda self: self.root / name, doc=name)


@dataclass(frozen=True)
class RunFolder:
    """A training run's folder (``train --out``); :meth:`of` finds the run a bundle was trained in."""

    root: Path

    @classmethod
    def of(cls, path: Path | str) -> RunFolder:
        """The run of one of its bundles or files (RUN/bundle, RUN/checkpoint.pt): the folder it sits in."""
        return cls(Path(path).parent)

    bundle = _entry("bundle")
    best = _entry("best")
    split = _entry("split.csv")
    config = _entry("config.yaml")
    checkpoint = _entry("checkpoint.pt")
    history = _entry(HISTORY)
    curves = _entry("curves.png")
    metrics = _entry(METRICS)
    report = _entry(REPORT)
    tensorboard = _entry("tensorboard")
    refused = _entry("refused.txt")

    def holds_run(self) -> bool:
        """Whether a run wrote here: its recipe, split, checkpoint or history (config.yaml and split.csv come before
        the first epoch; a user may delete the large checkpoint)."""
        return any(path.is_file() for path in (self.config, self.split, self.checkpoint, self.history))

    def epochs(self) -> list[dict[str, str]]:
        """history.csv's rows, one an epoch, as text; none where the run has no history (a bundle copied in alone)."""
        if not self.history.is_file():
            return []
        with self.history.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def outputs(self) -> tuple[list[Path], list[Path]]:
        """The folders and files a run writes besides config.yaml and split.csv (every run rewrites those) and an
        MLflow store (which keeps each run apart): what a run that does not resume clears of an earlier one's."""
        return ([self.best, self.bundle, self.tensorboard],
                [self.checkpoint, self.history, self.curves, self.metrics, self.report, self.refused])


@dataclass(frozen=True)
class CvFolder:
    """A cross-validation's folder (``cv --out``): one split and one :class:`RunFolder` a fold."""

    root: Path

    oof = _entry("oof.csv")
    summary = _entry("cv.json")

    def split(self, k: int) -> Path:
        return self.root / f"split-fold-{k}.csv"

    def fold(self, k: int) -> RunFolder:
        return RunFolder(self.root / f"fold-{k}")

    def folds(self) -> list[int]:
        """The fold numbers with a run folder, in order."""
        return sorted(int(m[1]) for p in self.root.glob("fold-*") if (m := _FOLD.fullmatch(p.name)))

    def splits(self) -> list[int]:
        """The fold numbers with a split, in order."""
        return sorted(int(m[1]) for p in self.root.glob("split-fold-*.csv") if (m := _FOLD_SPLIT.fullmatch(p.name)))
