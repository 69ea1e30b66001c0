"""What opening a bundle costs: its load into torch, and a Predictor's construction on each backend, which every
predict, serve, evaluate and explain run pays before it reads a film.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_load.py BUNDLE [BUNDLE ...]`` (any bundles, e.g. a training run's).
Each step runs once to warm up (imports, first allocations), then ``--runs`` times; the median CPU seconds (user +
system, this process's threads together) and wall seconds of each are printed, with the bundle's weight count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pneumoscan.inference.predict import Predictor  # noqa: E402
from pneumoscan.models.bundle import load_bundle  # noqa: E402


def timed(step: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median (CPU s, wall s) of ``step`` over ``runs`` runs, after one to warm up."""
    step()
    cpu, wall = [], []
    for _ in range(runs):
        c, w = time.process_time(), time.perf_counter()
        step()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle folders")
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each step (default 7)")
    args = parser.parse_args()
    steps = {"load_bundle": lambda b: load_bundle(b),
             "Predictor(torch)": lambda b: Predictor(b, backend="torch"),
             "Predictor(onnx)": lambda b: Predictor(b, backend="onnx")}
    print(f"{'bundle':<40} {'weights':>10} {'step':<18} {'CPU s':>8} {'wall s':>8}")
    for bundle in args.bundles:
        model, card = load_bundle(bundle)
        weights = sum(p.numel() for p in model.parameters())
        for name, step in steps.items():
            cpu, wall = timed(lambda: step(bundle), args.runs)
            print(f"{str(bundle)[-40:]:<40} {weights:>10,} {name:<18} {cpu:>8.4f} {wall:>8.4f}")


if __name__ == "__main__":
    main()
