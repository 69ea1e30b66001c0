"""Compare training recipes by their cross-validation runs: each candidate against a baseline, fold by fold.

Run: ``python benchmarks/cv_candidates.py BASELINE_CV CANDIDATE_CV [CANDIDATE_CV ...]``, each a finished
``pneumoscan cv --out`` folder made with the same ``--folds`` and ``--seed`` (so fold K holds the same films in
every run; anything else is refused). A baseline or candidate ``CV_A+CV_B[+...]`` is those runs as ``pneumoscan ensemble
--cv CV_A CV_B ...`` scores them out of fold: each film's calibrated logit (from ``oof.csv``) averaged over the runs,
which says whether recipes err on different films (its minutes are the runs' added).

Figures per run: mean (SD) over the folds of the AUC and of the specificity at sensitivity 0.97 (``cv.json``);
for a candidate, the mean paired difference from the baseline, fold by fold, with its range and the number of
folds it is ahead on: the folds' spread (specificity SD about 0.015) is mostly a property of the films, which
both runs share, so the paired difference is the sharper comparison. Training minutes are each fold's clock at
its last epoch (``history.csv``: warm start and training, not the export). Each fold scores its best epoch's weights,
chosen on the fold's films, so runs of different lengths are compared by the last epochs' AUC as well (``cv.json``'s
``last_epoch_auc``), which no such choice flatters.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from pneumoscan.data.layouts import discover
from pneumoscan.data.tasks import binary_targets, get_task, select
from pneumoscan.models.run_folder import CvFolder
from pneumoscan.training.cv import fold_figures, fold_summary, oof_name

SPEC = "specificity_at_sensitivity_0.97"


def load(cv_dir: Path) -> dict:
    cv = CvFolder(cv_dir)
    if not cv.summary.is_file():
        sys.exit(f"{cv_dir} is not a finished cv run (`pneumoscan cv --out`): no {cv.summary.name}")
    result = json.loads(cv.summary.read_text())
    folds = result["folds"]
    # each fold's validation films by real path: runs given the data by another path hold the same folds
    result["members"] = [sorted(oof_name(r.path) for r in discover(cv.split(k)).split("val"))
                         for k in range(folds)]
    minutes = []
    for k in range(folds):
        with cv.fold(k).history.open() as f:
            minutes.append(float(list(csv.DictReader(f))[-1]["minutes"]))
    result["minutes"] = minutes
    return result


def folds_of(run: dict) -> tuple:
    """What must match for two runs' fold K to hold the same films, scored for the same task."""
    return run["task"], run["folds"], run["seed"], run["members"]


def oof_logits(cv_dirs: list[Path]) -> dict[str, float]:
    """Each film's out-of-fold score of the runs averaged as ``ensemble --cv`` averages them: the mean of their
    calibrated logits, as the log-odds of the positive call; a film some run could not read has none. A two-class
    run's log-odds is its one calibrated logit, so the mean of the runs' log-odds is the ensemble's. A three-class
    run's positive call is 1 - P(normal), whose log-odds is no mean of anything: the runs' class log-probabilities
    (``probability_<class>``, its calibrated logits up to one constant per film) are averaged and the call read from
    their softmax, or the figures would be of another combination than the ensemble ships."""
    scores = []
    for cv_dir in cv_dirs:
        with CvFolder(cv_dir).oof.open() as f:
            scores.append({oof_name(row["path"]): _log_probabilities(row) for row in csv.DictReader(f)})
    both = set.intersection(*map(set, scores))
    if not both:
        sys.exit(f"{' and '.join(map(str, cv_dirs))} have no film in common in their oof.csv")
    mean = {path: np.mean([s[path] for s in scores], axis=0) for path in both}
    return {path: float(_positive_log_odds(m)) for path, m in mean.items()}


def _log_probabilities(row: dict[str, str]) -> np.ndarray:
    """A film's class log-probabilities from its oof.csv row: the three-class columns (normal first), or the two
    classes of the positive call's ``probability``."""
    classes = [key for key in row if key.startswith("probability_")]
    if classes:
        classes.sort(key=lambda key: key != "probability_normal")
        q = np.array([float(row[key]) for key in classes])
    else:
        q = np.array([1 - float(row["probability"]), float(row["probability"])])
    return np.log(np.clip(q, 1e-7, 1))


def _positive_log_odds(log_p: np.ndarray) -> float:
    """The log-odds of 1 - P(first class) under the softmax of ``log_p`` (the first class being the negative one)."""
    rest = np.logaddexp.reduce(log_p[1:])
    return float(rest - log_p[0])


def load_mean(cv_dirs: list[Path]) -> dict:
    """The figures of the runs' out-of-fold calibrated logits averaged, film by film, fold by fold."""
    runs = [load(cv_dir) for cv_dir in cv_dirs]
    if any(folds_of(r) != folds_of(runs[0]) for r in runs):
        sys.exit(f"{' and '.join(map(str, cv_dirs))} were not run on the same task and folds")
    task = get_task(runs[0]["task"])
    logits = oof_logits(cv_dirs)
    per_fold = []
    for k in range(runs[0]["folds"]):
        records, targets = select(discover(CvFolder(cv_dirs[0]).split(k)).split("val"), task)
        keys = [oof_name(r.path) for r in records]
        kept = [i for i, key in enumerate(keys) if key in logits]  # unreadable films have none
        if len(set(binary_targets(targets[kept]).tolist())) < 2:
            sys.exit(f"fold {k} of {' and '.join(map(str, cv_dirs))}: its oof.csv scores no film of both classes "
                     "(an oof.csv of an earlier version names films relative to the folder its cv ran in: read it "
                     "from there)")
        per_fold.append(fold_figures(binary_targets(targets[kept]), np.array([logits[keys[i]] for i in kept])))
    return runs[0] | {"per_fold": per_fold, "summary": fold_summary(per_fold),
                      "minutes": np.sum([r["minutes"] for r in runs], axis=0)}


def load_run(spec: str) -> dict:
    """One run (``CV``) or several averaged out of fold (``CV_A+CV_B``)."""
    parts = [Path(p) for p in spec.split("+")]
    return (load_mean(parts) if len(parts) > 1 else load(parts[0])) | {"name": "+".join(p.name for p in parts)}


def main(base_spec: str, candidates: list[str]) -> None:
    base = load_run(base_spec)
    print(f"{'run':<44} {'AUC mean (SD)':>16} {'spec@0.97 mean (SD)':>20} {'dAUC (range) ahead':>30} "
          f"{'dSpec (range) ahead':>28} {'minutes/fold':>13} {'last-epoch AUC, dAUC (range) ahead':>38}")
    for spec in [base_spec, *candidates]:
        run = base if spec == base_spec else load_run(spec)
        if folds_of(run) != folds_of(base):
            sys.exit(f"{spec}: not the baseline's task and folds (same --task, --folds and --seed on the same data "
                     "are needed)")
        row = f"{run['name']:<44}"
        for key in ("auc", SPEC):
            s = run["summary"][key]
            row += f" {s['mean']:>10.4f} ({s['std']:.4f})"
        for key in ("auc", SPEC):
            diff = np.array([c[key] - b[key] for c, b in zip(run["per_fold"], base["per_fold"])])
            row += f" {diff.mean():+8.4f} ({diff.min():+.4f}..{diff.max():+.4f}) {int((diff > 0).sum())}/{diff.size}"
        row += f" {min(run['minutes']):>5.1f}-{max(run['minutes']):.1f}"
        print(row + f" {_last_epochs(run, base):>38}")


def _last_epochs(run: dict, base: dict) -> str:
    """The last epochs' AUC (``cv.json``'s ``last_epoch_auc``), and its paired difference from the baseline's: the
    figure of runs of different lengths that no epoch chosen on the scored films flatters. n/a for runs averaged out
    of fold, and for runs of a pneumoscan before the figure was recorded."""
    last = [[fold.get("last_epoch_auc") for fold in r["per_fold"]] for r in (run, base)]
    if any(v is None for values in last for v in values):
        return "n/a"
    diff = np.subtract(*last)
    return (f"{np.mean(last[0]):.4f} {diff.mean():+8.4f} ({diff.min():+.4f}..{diff.max():+.4f}) "
            f"{int((diff > 0).sum())}/{diff.size}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", help="a cv run folder, or several joined by + (averaged out of fold)")
    parser.add_argument("candidates", nargs="+", metavar="candidate", help="as the baseline")
    args = parser.parse_args()
    main(args.baseline, args.candidates)
