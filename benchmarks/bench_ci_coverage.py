"""How often the 95% intervals of ``threshold_metrics_ci`` cover the truth when patients have several films, with
the film as the unit (no patient ids) and with the patient (``groups``), and how long one call takes.

    python benchmarks/bench_ci_coverage.py [--samples 200] [--boot 1000] [--patients 150]

Each sample draws ``--patients`` pneumonia and as many normal patients with 1 to 4 films each. A film's logit is
its class's mean (+-1.2), plus the patient's effect (sd 1.2, shared by the patient's films), plus the film's own
(sd 0.3): a patient's films are scored alike, as in the Kermany data. The truths (sensitivity and specificity at
0.5, ROC AUC) follow from the model in closed form. A 95% interval should cover them in about 95% of samples.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.stats import norm

from pneumoscan.core.metrics import threshold_metrics_ci

MEAN, SD_PATIENT, SD_FILM = 1.2, 1.2, 0.3
FIGURES = ("sensitivity", "specificity", "auc")


def truths() -> dict[str, float]:
    """A random film's figures under the model: each class's logit is normal with sd hypot(patient, film)."""
    sd = math.hypot(SD_PATIENT, SD_FILM)
    rate = float(norm.cdf(MEAN / sd))  # P(logit >= 0) for a positive film; by symmetry, specificity too
    return {"sensitivity": rate, "specificity": rate, "auc": float(norm.cdf(2 * MEAN / (sd * math.sqrt(2))))}


def sample(rng: np.random.Generator, patients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities and patient ids of one simulated data set (patients 0..p-1 pneumonia, then normal)."""
    films = rng.integers(1, 5, 2 * patients)
    patient = np.repeat(np.arange(2 * patients), films)
    y = (patient < patients).astype(int)
    logit = MEAN * (2 * y - 1) + rng.normal(0, SD_PATIENT, 2 * patients)[patient] + rng.normal(0, SD_FILM, patient.size)
    return y, 1 / (1 + np.exp(-logit)), patient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="simulated data sets")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples per interval")
    parser.add_argument("--patients", type=int, default=150, help="patients of each class in a data set")
    args = parser.parse_args()
    truth = truths()
    rng = np.random.default_rng(0)
    covered = {unit: dict.fromkeys(FIGURES, 0) for unit in ("film", "patient")}
    widths: dict[str, dict[str, list[float]]] = {unit: {f: [] for f in FIGURES} for unit in covered}
    for i in range(args.samples):
        y, prob, patient = sample(rng, args.patients)
        for unit, groups in (("film", None), ("patient", patient)):
            ci = threshold_metrics_ci(y, prob, [0.5], n_boot=args.boot, seed=i, groups=groups)[0]
            for name in FIGURES:
                lo, hi = ci[name]
                covered[unit][name] += lo <= truth[name] <= hi
                widths[unit][name].append(hi - lo)
    print(f"{args.samples} samples of {args.patients} + {args.patients} patients, 1-4 films each; "
          f"{args.boot} resamples; nominal coverage 0.95")
    for name in FIGURES:
        print(f"{name:12s} truth {truth[name]:.3f}  " + "  ".join(
            f"{unit}: coverage {covered[unit][name] / args.samples:.2f}, mean width {np.mean(widths[unit][name]):.3f}"
            for unit in covered))
    y, prob, patient = sample(np.random.default_rng(1), 2000)
    y, prob, patient = y[:5000], prob[:5000], patient[:5000]
    for unit, groups in (("film", None), ("patient", patient)):
        start = time.perf_counter()
        threshold_metrics_ci(y, prob, [0.5], n_boot=1000, groups=groups)
        print(f"one call, {y.size} films, 1000 resamples, by {unit}: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
