"""How bright a bundle's Grad-CAM maps are on its own heatmap scale (docs/limits.md, "Heatmap scale"): the peak of
the map of the call's evidence, as ``predict --heatmaps`` and the service draw it, for validation films the bundle
calls positive and negative (up to FILMS of each, spread evenly over their ranks of probability) and for the
full-size films of val/. A bundle that records no scale draws every map to 1, which is what the scale changes.

    python benchmarks/bench_heatmap_scale.py BUNDLE RUN/split.csv [--films 40] [--data chest_xray]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from bench_shift import refusing
from pneumoscan.data.decode import read_gray
from pneumoscan.data.layouts import discover
from pneumoscan.inference.explain import explain_array, heatmap_scale
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import load_card


def peaks(predictor: Predictor, grays: list[np.ndarray]) -> np.ndarray:
    """Each film's strongest map value on the scale the bundle draws it on."""
    return np.array([float(explain_array(predictor, gray).max()) for gray in grays])


def summary(name: str, values: np.ndarray) -> str:
    if not len(values):  # no film on this side (a bundle that called none positive): no figure
        return f"{name:<34} {0:>5} {'n/a':>7} {'n/a':>7} {'n/a':>7} {'n/a':>8} {'n/a':>8}"
    low, mid, high = np.percentile(values, [10, 50, 90])
    return (f"{name:<34} {len(values):>5} {mid:>7.3f} {low:>7.3f} {high:>7.3f} {np.mean(values >= 0.999):>8.0%} "
            f"{np.mean(values < 0.25):>8.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("split_csv")
    parser.add_argument("--films", type=int, default=40, help="validation films of each call (default 40)")
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA", "data/chest_xray"))
    args = parser.parse_args()

    refusing(load_card, args.bundle)  # the bundle, then the films asked of it, before its model is loaded
    films = [r.path for r in refusing(discover, args.split_csv).split("val")]
    full = {label: sorted((Path(args.data) / "val" / label).glob("*.jpeg")) for label in ("NORMAL", "PNEUMONIA")}
    if missing := [str(Path(args.data) / "val" / label) for label, found in full.items() if not found]:
        sys.exit(f"{' and '.join(missing)}: no .jpeg film (give the dataset with --data or $PNEUMOSCAN_DATA)")
    if not films:
        sys.exit(f"{args.split_csv}: no validation film")
    predictor = Predictor(args.bundle, backend="torch")
    scale = heatmap_scale(predictor.card)
    print(f"bundle heatmap scale: {predictor.card.heatmap_scale} ({'per film' if scale is None else 'recorded'}); "
          f"threshold {predictor.card.threshold:.4f}")
    grays = [read_gray(f) for f in films]
    scores = predictor.positive_probability(predictor.probabilities(predictor.preprocess(grays)))
    print(f"{'films':<34} {'n':>5} {'median':>7} {'p10':>7} {'p90':>7} {'at top':>8} {'< 0.25':>8}")
    for name, chosen in (("validation, called positive", scores >= predictor.card.threshold),
                         ("validation, called negative", scores < predictor.card.threshold)):
        ranked = np.flatnonzero(chosen)[np.argsort(-scores[chosen], kind="stable")]
        pick = ranked[np.unique(np.linspace(0, len(ranked) - 1, min(args.films, len(ranked))).round().astype(int))]
        print(summary(name, peaks(predictor, [grays[i] for i in pick])))
    for label, found in full.items():
        print(summary(f"val/ full size, {label}", peaks(predictor, [read_gray(f) for f in found])))


if __name__ == "__main__":
    main()
