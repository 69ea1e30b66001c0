"""How the threshold's interval (pneumoscan.core.metrics.threshold_interval: where the policy's threshold would fall
on other films like those it was chosen on) marks readings near the threshold, on a cv run's out-of-fold scores:
per fold, the threshold chosen on the fold's films, its interval (patients resampled whole), the share of the
fold's films inside it, and the share of the films the threshold called wrongly that are inside it.

    python benchmarks/bench_near_threshold.py CV_DIR [--target-sensitivity 0.95]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from pneumoscan.core.metrics import choose_threshold, threshold_interval
from pneumoscan.models.run_folder import CvFolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cv_dir", type=Path, help="a `pneumoscan cv` run: its oof.csv is read")
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    args = parser.parse_args()
    oof = CvFolder(args.cv_dir).oof
    if not oof.is_file():
        sys.exit(f"{args.cv_dir} is not a finished cv run (`pneumoscan cv --out`): no {oof.name}")
    with oof.open(newline="") as f:
        rows = list(csv.DictReader(f))
    positive = max({r["label"] for r in rows}, key=lambda label: label != "NORMAL")  # the pneumonia task's call
    print(f"policy: sensitivity >= {args.target_sensitivity:g}, each fold's own films")
    print("| fold | films | threshold | interval | films inside | wrong calls | wrong calls inside |")
    print("|---|---|---|---|---|---|---|")
    for fold in sorted({r["fold"] for r in rows}, key=int):
        mine = [r for r in rows if r["fold"] == fold]
        y = np.array([r["label"] == positive for r in mine], int)
        p = np.array([float(r["probability"]) for r in mine])
        threshold = choose_threshold(y, p, args.target_sensitivity)
        low, high = threshold_interval(y, p, args.target_sensitivity, None, [r["patient"] for r in mine])
        inside, wrong = (p >= low) & (p <= high), (p >= threshold) != y
        print(f"| {fold} | {len(y)} | {threshold:.3f} | {low:.3f}-{high:.3f} | {inside.mean():.1%} | {wrong.sum()} | "
              f"{inside[wrong].sum()} ({inside[wrong].mean():.0%}) |")


if __name__ == "__main__":
    main()
