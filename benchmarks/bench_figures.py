"""CPU of the figures pneumoscan draws: a binary report's (its ROC, precision-recall and reliability figures with
its HTML) and a training run's curves (``RUN/curves.png``), which every ``train`` and ``evaluate`` and the test
suite draw again and again.

Run: ``python benchmarks/bench_figures.py`` (no data, no bundle). Each is drawn once to warm up, then ``--runs``
times in this process; the median and least CPU seconds (user + system of the process) of one are printed. Set
``OMP_NUM_THREADS=1`` and run it on an idle machine: on a loaded one the CPU seconds of the same work grow.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _cpu(work: Callable[[], object], runs: int) -> tuple[float, float]:
    """The median and least CPU seconds of ``work``, run once first to warm up."""
    work()
    times = []
    for _ in range(runs):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="draws of each, after one to warm up (default 15)")
    args = parser.parse_args()

    import numpy as np

    from pneumoscan.core.metrics import evaluate_binary
    from pneumoscan.evaluation.report import write_report
    from pneumoscan.training.callbacks import plot_training_curves

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 300)
    prob = 1 / (1 + np.exp(-(rng.normal(size=truth.size) + 1.5 * (2 * truth - 1))))
    metrics = evaluate_binary(truth, prob, 0.35, n_boot=100, class_names=("NORMAL", "PNEUMONIA"))
    history = [{"epoch": i, "train_loss": 0.7 / i, "val_loss": 0.69 / i, "train_acc": 0.5 + i / 20,
                "val_acc": 0.6 + i / 30, "train_auc": 0.6 + i / 30, "val_auc": 0.7} for i in range(1, 6)]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for name, work in (("binary report (3 figures + HTML)", lambda: write_report(metrics, out, "bench")),
                           ("training curves (3 panels)", lambda: plot_training_curves(history, out / "c.png"))):
            median, least = _cpu(work, args.runs)
            print(f"{name}: median {median:.3f} s CPU, least {least:.3f} s ({args.runs} runs)")


if __name__ == "__main__":
    main()
