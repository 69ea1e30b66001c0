"""Compare training recipes by their cross-validation runs: each candidate against a baseline, fold by fold.

Run: ``python benchmarks/cv_candidates.py BASELINE_CV CANDIDATE_CV [CANDIDATE_CV ...]``, each a finished
``pneumoscan cv --out`` folder made with the same ``--folds`` and ``--seed`` (so fold K holds the same films in
every run; anything else is refused).

Figures per run: mean (SD) over the folds of the AUC and of the specificity at sensitivity 0.97 (``cv.json``);
for a candidate, the mean paired difference from the baseline, fold by fold, with its range and the number of
folds it is ahead on: the folds' spread (specificity SD about 0.015) is mostly a property of the films, which
both runs share, so the paired difference is the sharper comparison. Training minutes are each fold's clock at
its last epoch (``history.csv``: warm start and training, not the export).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

SPEC = "specificity_at_sensitivity_0.97"


def load(cv_dir: Path) -> dict:
    result = json.loads((cv_dir / "cv.json").read_text())
    folds = result["folds"]
    result["members"] = [(cv_dir / f"split-fold-{k}.csv").read_text() for k in range(folds)]
    minutes = []
    for k in range(folds):
        with (cv_dir / f"fold-{k}" / "history.csv").open() as f:
            minutes.append(float(list(csv.DictReader(f))[-1]["minutes"]))
    result["minutes"] = minutes
    return result


def main(base_dir: Path, candidates: list[Path]) -> None:
    base = load(base_dir)
    print(f"{'run':<32} {'AUC mean (SD)':>16} {'spec@0.97 mean (SD)':>20} {'dAUC (range) ahead':>30} "
          f"{'dSpec (range) ahead':>28} {'minutes/fold':>13}")
    for cv_dir in [base_dir, *candidates]:
        run = base if cv_dir == base_dir else load(cv_dir)
        if (run["folds"], run["seed"], run["members"]) != (base["folds"], base["seed"], base["members"]):
            sys.exit(f"{cv_dir}: not the baseline's folds (same --folds and --seed on the same data are needed)")
        row = f"{cv_dir.name:<32}"
        for key in ("auc", SPEC):
            s = run["summary"][key]
            row += f" {s['mean']:>10.4f} ({s['std']:.4f})"
        for key in ("auc", SPEC):
            diff = np.array([c[key] - b[key] for c, b in zip(run["per_fold"], base["per_fold"])])
            row += f" {diff.mean():+8.4f} ({diff.min():+.4f}..{diff.max():+.4f}) {int((diff > 0).sum())}/{diff.size}"
        row += f" {min(run['minutes']):>5.1f}-{max(run['minutes']):.1f}"
        print(row)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
