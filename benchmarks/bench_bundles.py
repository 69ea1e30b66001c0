"""Benchmark the inference speed of several bundles on the same films: a single model against an ensemble, or one
recipe's candidates against each other.

Run: ``python benchmarks/bench_bundles.py SPLIT_CSV BUNDLE [BUNDLE ...]`` (e.g. the fold bundles of a ``cv`` run
and the ensemble built from them, with one fold's ``split-fold-K.csv``).

Figures per bundle: batch images/s on the split's validation films with the ONNX Runtime backend (preprocessed
uint8 batch -> calibrated probabilities, decode excluded; best of REPEATS passes, BATCH images a call, THREADS
threads), and the model's input size. Each bundle's films are read at its own size, so bundles of different sizes
are timed on the same films.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pneumoscan.data.tasks import get_task  # noqa: E402
from pneumoscan.inference.predict import Predictor  # noqa: E402
from pneumoscan.models.card import load_card  # noqa: E402
from bench_int8 import BATCH, REPEATS, THREADS, images_per_second  # noqa: E402  (the same timing as INT8's)
from bench_shift import labelled, refusing  # noqa: E402


def main(split_csv: Path, bundles: list[Path]) -> None:
    cards = [refusing(load_card, bundle) for bundle in bundles]  # each said before any is timed
    torch.set_num_threads(THREADS)
    print(f"{THREADS} threads, batch {BATCH}, ONNX Runtime, decode excluded, best of {REPEATS} passes")
    print(f"{'bundle':<50} {'model':<20} {'size':>5} {'films':>6} {'images/s':>9}")
    for bundle, card in zip(bundles, cards):
        images, _ = labelled(split_csv, "val", get_task(card.task), card.spec)
        predictor = Predictor(bundle, BATCH, backend="onnx")
        print(f"{str(bundle):<50} {predictor.card.model:<20} {predictor.card.size:>5} {len(images):>6} "
              f"{images_per_second(predictor, images):>9.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split_csv", type=Path, help="its validation films are timed")
    parser.add_argument("bundles", type=Path, nargs="+", metavar="bundle")
    args = parser.parse_args()
    main(args.split_csv, args.bundles)
