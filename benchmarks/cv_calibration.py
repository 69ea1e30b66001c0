"""Whether a scale and bias on the logit (Platt) calibrates a cv run's bundles better than the temperature they
ship with, on films held out from the fit.

Run: ``python benchmarks/cv_calibration.py CV [--repeats 50] [--seed 0]``, CV a finished ``pneumoscan cv --out``
folder of a two-class task (each fold's bundle, split and ``oof.csv`` are read; no model is run).

In a cv, fold K's validation films are its out-of-fold films: its bundle's temperature and threshold were fitted on
the very films ``oof.csv`` scores, so nothing inside a fold is held out from them. The calibrators are therefore
cross-fitted inside each fold's films: split by patient into five parts (stratified by class), each calibrator fitted
and each threshold chosen on four parts, scored on the fifth; ``--repeats`` random splits. Each works on the logit
margin z, the bundle's temperature times the logit of ``oof.csv``'s probability (the model's own, exactly):

- temperature: the bundles' calibration, :func:`~pneumoscan.core.metrics.fit_temperature` (one scale);
- scale and bias: scikit-learn's unpenalised logistic regression on z (Platt);
- offset, then temperature: a temperature fitted to z - log(n_neg / n_pos) of the fold's training films, the shift
  that class-weighted training (``class_weights``, the default) gives the logit.

Per fold and pooled: held-out log-loss, Brier score, ECE (10 equal-width bins,
:func:`~pneumoscan.core.metrics.calibration`) and mean P(positive) against the observed rate, each a mean over the
repeats; the pooled log-loss and Brier differences from the temperature, with a 95 % interval from a paired bootstrap
of patients (films averaged over the repeats); and how many held-out calls differ from the temperature's, each
calibrator's threshold chosen on its four parts by the bundle's policy and at sensitivity 0.97. One line gives the
figures in sample (fitted and scored on all a fold's films), as a calibration fitted on the scored films reads.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from bench_shift import refusing
from pneumoscan.core.metrics import _bootstrap_weights, calibration, choose_threshold, fit_temperature, softmax
from pneumoscan.data.layouts import discover
from pneumoscan.data.tasks import binary_targets, get_task, select
from pneumoscan.models.card import load_card
from pneumoscan.models.run_folder import CvFolder
from pneumoscan.training.cv import oof_name

CALIBRATORS = ("temperature", "scale and bias", "offset, then temperature")
PARTS = 5  # each fit on 4/5 of a fold's films (about 620 of etiology's 777): near the bundle's own fit
BOOTSTRAP = 2000
SENSITIVITY = 0.97  # the floor of cv.json's specificity figure

Calibrate = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Fold:
    """A fold's out-of-fold films as the calibrators see them."""

    number: int
    labels: np.ndarray
    margin: np.ndarray  # logit of the positive class minus the negative's, before the bundle's temperature
    patients: np.ndarray
    temperature: float  # the bundle's
    offset: float  # log(n_neg / n_pos) of the films the fold trained on
    policy: tuple[float | None, float | None]  # the bundle's, as choose_threshold takes it
    policy_name: str


def load_fold(cv: CvFolder, number: int, scored: dict[str, float]) -> Fold:
    """Fold ``number``'s films, their labels as its task reads them, and what its bundle and training fixed."""
    card = refusing(load_card, cv.fold(number).bundle)
    task = get_task(card.task)
    if task.multiclass:
        sys.exit(f"{cv.root}: a {card.task} run has more than two classes; one logit margin calibrates two")
    split = refusing(discover, cv.split(number))
    records, targets = select(split.split("val"), task)
    # a film its bundle could not read has no score
    kept = [i for i, record in enumerate(records) if oof_name(record.path) in scored]
    probability = np.array([scored[oof_name(records[i].path)] for i in kept])
    if not (0 < probability.min() and probability.max() < 1):  # the margin would be infinite
        sys.exit(f"{cv.root}: fold {number}'s oof.csv holds a probability of 0 or 1, whose logit margin cannot be "
                 "recovered")
    _, trained = select(split.split("train"), task)
    positives = int(binary_targets(trained).sum())
    return Fold(number, binary_targets(targets[kept]),
                card.temperature * (np.log(probability) - np.log1p(-probability)),
                np.array([records[i].patient for i in kept]), card.temperature,
                math.log((trained.size - positives) / positives), card.threshold_targets, card.threshold_policy)


def _temperature(margin: np.ndarray, labels: np.ndarray) -> float:
    """The library's fit on the two-class logits [0, z], as a bundle's is fitted."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a temperature at its bound, or none fitted, is a broken fit, not a figure
        return fit_temperature(np.column_stack([np.zeros_like(margin), margin]), labels)


def _scaled(margin: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.column_stack([np.zeros_like(margin), margin]), temperature)[:, 1]


def fit_calibrators(margin: np.ndarray, labels: np.ndarray, offset: float) -> dict[str, Calibrate]:
    """Each calibrator fitted on these films: margins to P(positive)."""
    temperature, shifted = _temperature(margin, labels), _temperature(margin - offset, labels)
    platt = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(margin[:, None], labels)
    return dict(zip(CALIBRATORS, (lambda margins: _scaled(margins, temperature),
                                  lambda margins: platt.predict_proba(margins[:, None])[:, 1],
                                  lambda margins: _scaled(margins - offset, shifted))))


def losses(labels: np.ndarray, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each film's log-loss and squared error (Brier)."""
    return (-(labels * np.log(probability) + (1 - labels) * np.log1p(-probability)),
            (probability - labels) ** 2)


def figures(labels: np.ndarray, held: np.ndarray) -> dict[str, float]:
    """Log-loss, Brier, ECE and mean P(positive) of held-out probabilities (repeats, films), averaged over repeats."""
    log_loss, brier = losses(labels, held)
    ece = np.mean([calibration(labels, probability)["ece"] for probability in held])
    return {"log-loss": float(log_loss.mean()), "Brier": float(brier.mean()), "ECE": float(ece),
            "mean p": float(held.mean())}


def cross_fit(fold: Fold, policies: dict[str, tuple[float | None, float | None]], repeats: int,
              seed: int) -> tuple[dict[str, np.ndarray], dict[str, dict[str, int]]]:
    """Each calibrator's held-out P(positive) (repeats, films), and how many held-out calls of the others differ
    from the temperature's under each policy, each calibrator's threshold chosen on its own fitted part."""
    held = {name: np.empty((repeats, fold.labels.size)) for name in CALIBRATORS}
    differ = {policy: dict.fromkeys(CALIBRATORS[1:], 0) for policy in policies}
    for repeat in range(repeats):
        # --seed S's splits are not another seed's for fewer than 1,000 repeats
        parts = StratifiedGroupKFold(PARTS, shuffle=True, random_state=seed * 1000 + repeat)
        for fit, out in parts.split(fold.margin, fold.labels, fold.patients):
            calibrators = fit_calibrators(fold.margin[fit], fold.labels[fit], fold.offset)
            for name, calibrate in calibrators.items():
                held[name][repeat, out] = calibrate(fold.margin[out])
            for policy, targets in policies.items():
                thresholds = {name: choose_threshold(fold.labels[fit], calibrate(fold.margin[fit]), *targets)
                              for name, calibrate in calibrators.items()}
                calls = {name: held[name][repeat, out] >= threshold for name, threshold in thresholds.items()}
                for name in CALIBRATORS[1:]:
                    differ[policy][name] += int((calls[name] != calls["temperature"]).sum())
    return held, differ


def paired_difference(labels: np.ndarray, held: dict[str, np.ndarray], patients: np.ndarray, name: str,
                      seed: int) -> str:
    """``name``'s pooled log-loss and Brier less the temperature's, with 95 % intervals from resampling patients
    (a child's films are scored alike, so they are one case); each film's loss averaged over the repeats."""
    codes = np.unique(patients, return_inverse=True)[1]
    weights = _bootstrap_weights(labels, codes, BOOTSTRAP, seed)
    text = []
    for index, figure in enumerate(("log-loss", "Brier")):
        diff = losses(labels, held[name])[index].mean(axis=0) - losses(labels, held["temperature"])[index].mean(axis=0)
        low, high = np.percentile(weights @ diff / weights.sum(axis=1), [2.5, 97.5])
        text.append(f"{figure} {diff.mean():+.4f} [{low:+.4f}, {high:+.4f}]")
    return ", ".join(text)


def row(first: list[str], labels: np.ndarray, held: dict[str, np.ndarray], differ: dict[str, dict[str, int]]) -> str:
    """A table row: ``first`` cells, then each calibrator's held-out figures and the calls that differ."""
    scored = {name: figures(labels, probability) for name, probability in held.items()}
    cells = [" / ".join(f"{scored[name][key]:.{3 if key == 'mean p' else 4}f}" for name in CALIBRATORS)
             for key in ("log-loss", "Brier", "ECE", "mean p")]
    calls = [" / ".join(map(str, by_name.values())) + f" of {held['temperature'].size}" for by_name in differ.values()]
    return "| " + " | ".join([*first, *cells, f"{labels.mean():.3f}", *calls]) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cv", type=Path, help="a `pneumoscan cv --out` folder of a two-class task")
    parser.add_argument("--repeats", type=int, default=50, help="random patient splits of each fold (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="of the splits and the bootstrap (default 0)")
    args = parser.parse_args()
    cv = CvFolder(args.cv)
    if not cv.oof.is_file():
        sys.exit(f"{args.cv} is not a finished cv run (`pneumoscan cv --out`): no {cv.oof.name}")
    with cv.oof.open(newline="") as oof:
        scored = {oof_name(film["path"]): float(film["probability"]) for film in csv.DictReader(oof)}
    if not cv.folds():
        sys.exit(f"{args.cv} is not a finished cv run (`pneumoscan cv --out`): no fold-K folder")
    folds = [load_fold(cv, number, scored) for number in cv.folds()]
    policies = {"bundle's policy": folds[0].policy, f"sensitivity >= {SENSITIVITY:g}": (SENSITIVITY, None)}
    if any(fold.policy != folds[0].policy for fold in folds):
        sys.exit(f"{args.cv}: its folds' bundles choose their thresholds by different policies")
    print(f"{args.cv}: held out, each fold's films cross-fitted in {PARTS} patient-grouped parts, {args.repeats} "
          f"repeats; each cell {' / '.join(CALIBRATORS)}; calls that differ from the temperature's counted over films "
          f"and repeats (bundle's policy: {folds[0].policy_name})\n")
    print("| fold | films (positive) | bundle T | offset | log-loss | Brier | ECE | mean P(positive) | observed | "
          + " | ".join(f"calls differing, {policy}" for policy in policies) + " |")
    print("|---" * (9 + len(policies)) + "|")
    pooled_held: dict[str, list[np.ndarray]] = {name: [] for name in CALIBRATORS}
    pooled_differ = {policy: dict.fromkeys(CALIBRATORS[1:], 0) for policy in policies}
    in_sample: dict[str, list[np.ndarray]] = {name: [] for name in CALIBRATORS}
    for fold in folds:
        held, differ = cross_fit(fold, policies, args.repeats, args.seed)
        first = [str(fold.number), f"{fold.labels.size} ({int(fold.labels.sum())})", f"{fold.temperature:.3f}",
                 f"{fold.offset:.3f}"]
        print(row(first, fold.labels, held, differ))
        for name, calibrate in fit_calibrators(fold.margin, fold.labels, fold.offset).items():
            pooled_held[name].append(held[name])
            in_sample[name].append(calibrate(fold.margin))
        for policy, by_name in differ.items():
            for name, count in by_name.items():
                pooled_differ[policy][name] += count
    labels = np.concatenate([fold.labels for fold in folds])
    patients = np.concatenate([fold.patients for fold in folds])  # a patient is in one fold: the folds group them
    held = {name: np.concatenate(parts, axis=1) for name, parts in pooled_held.items()}
    print(row(["pooled", f"{labels.size} ({int(labels.sum())})", "", ""], labels, held, pooled_differ))
    print(f"\nPooled difference from the temperature (paired bootstrap of {np.unique(patients).size} patients, "
          f"{BOOTSTRAP} resamples):")
    for name in CALIBRATORS[1:]:
        print(f"- {name}: {paired_difference(labels, held, patients, name, args.seed)}")
    sample = {name: figures(labels, np.concatenate(parts)[None]) for name, parts in in_sample.items()}
    print("\nIn sample (each fold's calibrators fitted and scored on all its films), pooled: "
          + "; ".join(f"{key} " + " / ".join(f"{sample[name][key]:.4f}" for name in CALIBRATORS)
                      for key in ("log-loss", "ECE")))


if __name__ == "__main__":
    main()
