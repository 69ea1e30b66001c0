"""Benchmark the INT8 model against FP32 ONNX for a trained bundle: images/s and validation quality.

Run: ``python benchmarks/bench_int8.py RUN/bundle RUN/split.csv`` (after ``make demo``: runs/demo/pneumonia/...).
Writes BUNDLE/model.int8.onnx first when it is missing (``pneumoscan export BUNDLE --int8 --data SPLIT``).

Figures: batch images/s on the validation films (preprocessed uint8 batch -> calibrated probabilities, decode
excluded; best of REPEATS passes, BATCH images a call, THREADS threads for both backends), validation AUC of
both, and each backend's sensitivity and specificity at its own validation-chosen threshold.
Goals (issue #18): INT8 at least 2x the FP32 images/s, AUC within 0.002 of FP32, sensitivity at the threshold kept.
Also printed: the AUCs ``export --int8`` recorded where it chose the INT8 thresholds. For an ensemble of cv runs
(``export --int8 --cv``), those are out of fold, while every film of SPLIT trained some member: time it there and
read its quality from that line.

``--probe SECONDS`` runs ``export --int8`` even when the INT8 model is there, then, from the moment it ends, times
the INT8 model on PROBE_FILMS validation films (repeated where there are fewer) every PROBE_EVERY_S seconds for
SECONDS, before the table: whether the INT8 model runs slower straight after an export than later on (a pause
between the two would then be needed for a fair figure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_shift import labelled, refusing  # noqa: E402
from pneumoscan.core.metrics import binary_metrics, roc_auc  # noqa: E402
from pneumoscan.data.tasks import binary_targets, get_task  # noqa: E402
from pneumoscan.inference.onnx_runtime import INT8_NAME, Int8Key, spec_path  # noqa: E402
from pneumoscan.inference.predict import Predictor  # noqa: E402
from pneumoscan.models.card import load_card  # noqa: E402

THREADS = 2
BATCH = 32
REPEATS = 3
PROBE_FILMS = 512
PROBE_EVERY_S = 3.0


def images_per_second(predictor: Predictor, images: np.ndarray) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        predictor.probabilities(images)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def probe(bundle: Path, images: np.ndarray, seconds: float, since: float) -> None:
    """Print the INT8 model's images/s on PROBE_FILMS films, a pass every PROBE_EVERY_S seconds from ``since`` (the
    export's end) until ``seconds`` after it."""
    predictor = Predictor(bundle, BATCH, "onnx-int8")
    films = np.resize(images, (PROBE_FILMS, *images.shape[1:]))  # the validation films, repeated where fewer
    rates = []
    while (start := time.perf_counter()) - since < seconds:
        predictor.probabilities(films)
        rates.append(PROBE_FILMS / (time.perf_counter() - start))
        print(f"{start - since:6.1f} s after the export: INT8 {rates[-1]:6.1f} images/s", flush=True)
        time.sleep(max(0.0, start + PROBE_EVERY_S - time.perf_counter()))
    print(f"INT8, {len(rates)} passes of {PROBE_FILMS} films: first {rates[0]:.1f} images/s, median "
          f"{statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f})")


def main(bundle: Path, split_csv: Path, probe_s: float | None = None) -> None:
    torch.set_num_threads(THREADS)
    card = refusing(load_card, bundle)
    images, targets = labelled(split_csv, "val", get_task(card.task), card.spec)  # before the export: films to time
    if probe_s is not None or not (bundle / INT8_NAME).exists():
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pneumoscan", "export", str(bundle), "--int8", "--data",
                               str(split_csv)])
        if done.returncode:  # the command has said why
            sys.exit(f"pneumoscan export {bundle} --int8 failed (exit status {done.returncode})")
        print(f"export --int8: {time.perf_counter() - start:.0f} s")
        if probe_s is not None:
            probe(bundle, images, probe_s, time.perf_counter())
    fp32, int8 = (Predictor(bundle, BATCH, backend) for backend in ("onnx", "onnx-int8"))
    y = binary_targets(targets)
    print(f"{bundle}: {fp32.card.model} {fp32.card.size} px, {len(y)} validation films, {THREADS} threads, "
          f"batch {BATCH}")
    print(f"{'backend':<10} {'images/s':>9} {'val AUC':>8} {'threshold':>9} {'sens':>6} {'spec':>6}")
    speed = {}
    for name, predictor in (("onnx", fp32), ("onnx-int8", int8)):
        speed[name] = images_per_second(predictor, images)
        scores = predictor.positive_probability(predictor.probabilities(images))
        m = binary_metrics(y, scores, predictor.card.threshold)
        print(f"{name:<10} {speed[name]:>9.1f} {roc_auc(y, scores):>8.4f} {predictor.card.threshold:>9.4f} "
              f"{m['sensitivity']:>6.3f} {m['specificity']:>6.3f}")
    print(f"INT8 speed-up: {speed['onnx-int8'] / speed['onnx']:.2f}x")
    sidecar = json.loads(spec_path(bundle / INT8_NAME).read_text())
    print(f"as export --int8 recorded: val AUC {sidecar[Int8Key.VAL_AUC_INT8]:.4f} "
          f"(FP32 {sidecar[Int8Key.VAL_AUC_FP32]:.4f}) on {sidecar.get(Int8Key.CHOSEN_ON, 'the val films')}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("split_csv", type=Path, help="the run's split.csv: its validation films are timed and scored")
    parser.add_argument("--probe", type=float, metavar="SECONDS",
                        help=f"export again, then time the INT8 model every {PROBE_EVERY_S:g} s for SECONDS after it")
    args = parser.parse_args()
    main(args.bundle, args.split_csv, args.probe)
