"""The statistics after the scoring at a large site's scale: CPU seconds and peak traced memory (tracemalloc, numpy's
arrays included) of each, on synthetic scores of FILMS films of PATIENTS patients (several films a patient, 40 %
of them sick, 8 sites and two sexes a patient; a fixed seed): ``evaluate``'s figures with their intervals by patient
(``evaluate_binary``) and its ECE by chance, the ``--by site`` and ``--by sex`` permutation tests of AUC and of
accuracy (9,999 shuffles of patients each), and ``compare``'s paired tests and intervals of two models
(``paired_differences``, 2,000 resamples of patients).

Run: ``taskset -c 0 python benchmarks/bench_scale.py [--films 100000] [--patients 40000] [--only NAME ...]
[--repo CHECKOUT]`` (one core: the figures are CPU seconds, which move less with other processes' load than the wall
clock; CHECKOUT, whose pneumoscan is timed, defaults to this one: another, such as a git worktree of an earlier
commit, times its statistics on the same films).
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def statistics(films: int, patients: int) -> dict[str, Callable[[], object]]:
    """Each statistic, by name, as a call on the same synthetic films; the libraries they load as they start
    (scipy.stats, sklearn.metrics) loaded here, out of the first one's figures."""
    import scipy.stats  # noqa: F401
    import sklearn.metrics  # noqa: F401

    from pneumoscan.core.metrics import ece_by_chance, evaluate_binary
    from pneumoscan.core.metrics.differences import auc_difference, paired_differences, rate_difference

    rng = np.random.default_rng(1)
    patient = np.unique(rng.integers(0, patients, films), return_inverse=True)[1]
    m = int(patient.max()) + 1
    y = (rng.random(m) < 0.4)[patient].astype(int)
    site, sex = rng.integers(0, 8, m)[patient], rng.integers(0, 2, m)[patient]
    score = np.clip(0.5 + 0.25 * (2 * y - 1) + 0.25 * rng.standard_normal(films), 0, 1)
    other = np.clip(score + 0.05 * rng.standard_normal(films), 0, 1)
    ids = np.array([f"p{i}" for i in patient])
    right = (score >= 0.5) == (y == 1)
    return {
        "evaluate_binary": lambda: evaluate_binary(y, score, 0.5, groups=ids)["ci"]["f1"],
        "ece_by_chance": lambda: ece_by_chance(score, ids),
        "auc_by_site": lambda: auc_difference(y == 1, score, site, patient),
        "auc_by_sex": lambda: auc_difference(y == 1, score, sex, patient),
        "accuracy_by_site": lambda: rate_difference(right, site, patient),
        "paired": lambda: paired_differences(y == 1, np.stack([score, other]), np.stack([score >= 0.5, other >= 0.5]),
                                             patient)["auc"]["ci"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=40_000)
    parser.add_argument("--only", nargs="+", help="the statistics to time (default: all)")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose pneumoscan is timed")
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo.resolve()))
    calls = statistics(args.films, args.patients)
    import pneumoscan
    print(f"pneumoscan from {Path(pneumoscan.__file__).parent}")
    print(f"{args.films:,} films of {len(np.unique(np.random.default_rng(1).integers(0, args.patients, args.films))):,}"
          " patients")
    print(f"{'statistic':<18} {'CPU s':>7} {'peak GiB':>9}  result")
    for name in args.only or calls:
        tracemalloc.start()
        start = time.process_time()
        result = calls[name]()
        cpu = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{name:<18} {cpu:>7.1f} {peak / 2**30:>9.2f}  {result}", flush=True)


if __name__ == "__main__":
    main()
