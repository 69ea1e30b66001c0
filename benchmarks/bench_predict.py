"""Benchmark prediction speed of the default model family (EfficientNet-Lite0, random weights: speed does not
depend on them) at 224 and 192 px, for the torch and ONNX Runtime backends, on this machine's CPU.

Run: ``python benchmarks/bench_predict.py`` (data from $PNEUMOSCAN_DATA, default data/chest_xray, as the Makefile).

Figures per size and backend:
  * batch images/s with decode excluded (preprocessed uint8 batch -> calibrated probabilities);
  * images/s of the whole file flow (``predict_paths``: decode threads + resize + model), on 224 px JPEG sources
    (train/) and on full-size originals (val/); the one-off model load is measured apart and subtracted;
    every images/s figure is timed per chunk of 64 images, twice over, and given as best (median) chunk;
  * single-image latency p50/p95: the model on one preprocessed image, and end to end (read + decode a
    full-size JPEG + ``predict_array``), one film at a time as a notebook or a single request scores it;
  * how close the batch figure is to what the FLOPs allow: FLOPs per image (torch FlopCounterMode: conv and
    matmul FLOPs, 2 per multiply-add; elementwise ops not counted) times images/s, as a fraction of the CPU's
    achievable GFLOP/s measured with a large float32 matmul on the same threads.
Both backends run on THREADS threads (torch.set_num_threads; ORT intra_op_num_threads follows torch).

``--decode`` measures decoding alone instead: per full-size val/ original and size, ms of ``read_gray`` (the JPEG
decoded in full, then reduced) against Pillow's draft mode (libjpeg's DCT scaling: decoded at 1/2, 1/4 or 1/8 size,
keeping at least the size) followed by the same reduction; the median of REPEATS_DECODE reads of each film.

``--layout`` times the torch model alone in the two memory layouts instead: the Predictor's model (channels-last,
as :func:`~pneumoscan.inference.predict._torch_model` makes it) against a copy in the contiguous layout, one batch
of BATCH preprocessed films each, the two taken in turn (which goes first alternates) for ROUNDS_LAYOUT rounds in
one process, so that a shared CPU's load falls on both alike; per size, each layout's median images/s and the
ratio of each round's pair: median (min-max).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pneumoscan.data.decode import read_gray  # noqa: E402
from pneumoscan.data.layouts import discover  # noqa: E402
from pneumoscan.data.pixels import reduce  # noqa: E402
from pneumoscan.data.preprocess import preprocess  # noqa: E402
from pneumoscan.inference.export import export_onnx  # noqa: E402
from pneumoscan.inference.predict import Predictor, predict_paths  # noqa: E402
from pneumoscan.models import registry as models  # noqa: E402
from pneumoscan.models.bundle import save_bundle  # noqa: E402
from pneumoscan.models.card import BundleCard  # noqa: E402

DATA = Path(os.environ.get("PNEUMOSCAN_DATA") or ROOT / "data/chest_xray")
THREADS = 2
SIZES = (224, 192)
BACKENDS = ("torch", "onnx")
BATCH = 64
N_BATCH = 256  # images for the decode-excluded and 224 px file figures
N_FULL = 64  # full-size originals (val/ has 16: each is read 4 times)
N_LATENCY = 40
REPEATS = 2
REPEATS_DECODE = 9
ROUNDS_LAYOUT = 15
TARGETS = {"batch": 150.0, "full": 60.0, "p50_ms": 30.0}  # for the default model


def make_bundle(directory: Path, size: int) -> Path:
    torch.manual_seed(0)
    mean, std = models.normalization("efficientnet_lite0")
    classes = ["NORMAL", "PNEUMONIA"]
    card = BundleCard("efficientnet_lite0", "pneumonia", classes, "PNEUMONIA", size, "squash", mean, std)
    bundle = save_bundle(directory, models.create("efficientnet_lite0"), card)
    export_onnx(bundle)  # BUNDLE/model.onnx, so the onnx backend loads rather than exports
    return bundle


def flops_per_image(size: int) -> float:
    model = models.create("efficientnet_lite0").eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 1, size, size))
    return float(counter.get_total_flops())


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best of ``repeats``: the achievable rate when nothing else is in the way."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def in_turn(first: Callable[[], object], second: Callable[[], object],
            rounds: int) -> tuple[list[float], list[float]]:
    """Seconds of each call in each of ``rounds`` rounds, the two taken in turn and which goes first alternating, so
    that a shared CPU's load falls on both alike."""
    seconds: tuple[list[float], list[float]] = ([], [])
    for r in range(rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            seconds[i].append(timed((first, second)[i]))
    return seconds


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=20, method="inclusive")
    return statistics.median(samples) * 1e3, q[18] * 1e3


def rates(run, items, overhead_s: float = 0.0) -> tuple[float, float]:
    """(best, median) images/s over chunks of BATCH items, each chunk timed REPEATS times. On a shared CPU
    the best chunk estimates what the machine does when left alone, the median what it did in this run."""
    samples = [
        len(chunk) / (timed(run, chunk) - overhead_s)
        for _ in range(REPEATS)
        for chunk in (items[i : i + BATCH] for i in range(0, len(items), BATCH))
    ]
    return max(samples), statistics.median(samples)


def measure(bundle: Path, size: int, backend: str, jpeg224: list[str], full: list[str]) -> dict:
    predictor = Predictor(bundle, BATCH, backend)
    images = np.stack([preprocess(p, size) for p in jpeg224])
    predictor.probabilities(images[:BATCH])  # warm-up: first-call allocations and kernel selection
    setup_s = min(timed(predict_paths, bundle, [], backend) for _ in range(3))  # model load, subtracted below
    predict_paths(bundle, full[:4], backend, BATCH)  # warm-up, and the full-size files into the page cache

    def files(chunk: list[str]) -> None:
        predict_paths(bundle, chunk, backend, BATCH)

    one = images[:1]
    model_lat = [timed(predictor.probabilities, one) for _ in range(N_LATENCY)]
    e2e_lat = [
        timed(lambda p: predictor.predict_array(read_gray(p, target=size)), full[i % len(full)])
        for i in range(N_LATENCY)
    ]
    return {
        "batch": rates(predictor.probabilities, images),
        "files224": rates(files, jpeg224, setup_s),
        "full": rates(files, full, setup_s),
        "model_ms": percentiles_ms(model_lat),
        "e2e_ms": percentiles_ms(e2e_lat),
    }


def layouts(predictor: Predictor) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The Predictor's torch model (channels-last) and a copy of it in the contiguous layout."""
    return predictor.model, copy.deepcopy(predictor.model).to(memory_format=torch.contiguous_format)


def layout_speeds(jpeg224: list[str]) -> None:
    """Print, per size, the torch model's images/s channels-last and contiguous, and their ratio round by round."""
    print(f"torch model alone, batch {BATCH}, {THREADS} threads, {ROUNDS_LAYOUT} rounds of both layouts in turn; "
          f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"{'size':>4} {'channels-last img/s':>19} {'contiguous img/s':>16} {'ratio: median (min-max)':>24}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            predictor = Predictor(make_bundle(Path(tmp) / f"lite0-{size}", size), BATCH, "torch")
            models = layouts(predictor)
            x = predictor.inputs(np.stack([preprocess(p, size) for p in jpeg224[:BATCH]]))
            with torch.inference_mode():
                for model in models:  # warm-up: first-call allocations and kernel selection
                    model(x)
                seconds = in_turn(lambda: models[0](x), lambda: models[1](x), ROUNDS_LAYOUT)
            ratios = [c / l for l, c in zip(*seconds)]
            last, contiguous = (BATCH / statistics.median(s) for s in seconds)
            print(f"{size:>4} {last:>19.1f} {contiguous:>16.1f} {statistics.median(ratios):>15.2f}x "
                  f"({min(ratios):.2f}-{max(ratios):.2f})", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def draft_gray(path: str, size: int) -> np.ndarray:
    """The film's grey pixels as a DCT-scaled decode gives them (Pillow's draft mode), then :func:`reduce`."""
    with Image.open(path) as im:
        im.draft("L", (size, size))
        return np.asarray(reduce(im.convert("L"), size))


def decode_costs(films: list[str]) -> None:
    """Print, per size, the median ms per film of the full decode and of the DCT-scaled one, and their difference."""
    print(f"{len(films)} full-size films from {DATA / 'val'}; median of {REPEATS_DECODE} reads of each; load average "
          f"before: {os.getloadavg()[0]:.1f}")
    print(f"{'size':>4} {'full ms':>8} {'DCT-scaled ms':>13} {'full - DCT ms: median (min-max over films)':>44}")
    for size in SIZES:
        full, scaled = ([statistics.median(timed(read, p, size) for _ in range(REPEATS_DECODE)) * 1e3 for p in films]
                        for read in (lambda p, s: read_gray(p, target=s), draft_gray))
        more = [f - d for f, d in zip(full, scaled)]
        print(f"{size:>4} {statistics.median(full):>8.1f} {statistics.median(scaled):>13.1f} "
              f"{statistics.median(more):>10.1f} ({min(more):.1f}-{max(more):.1f})")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decode", action="store_true",
                        help="time decoding alone: the full decode against a DCT-scaled one, on val/'s films")
    parser.add_argument("--layout", action="store_true",
                        help="time the torch model alone, channels-last (the Predictor's) against contiguous")
    args = parser.parse_args()
    if not (DATA / "train").is_dir() or not (DATA / "val").is_dir():
        sys.exit(f"data not found: {DATA} (set PNEUMOSCAN_DATA)")
    if args.decode:
        decode_costs([r.path for r in discover(DATA / "val").records])
        return
    torch.set_num_threads(THREADS)
    # each timed chunk loads its random-weight bundle again, which warns (no appearance record, a guessed threshold)
    # that a real bundle's reading would need: not a speed's concern, and dozens of lines around the table
    logging.getLogger("pneumoscan").setLevel(logging.ERROR)
    train = [r.path for r in discover(DATA / "train").records]
    jpeg224 = [train[i] for i in np.random.default_rng(0).choice(len(train), N_BATCH, replace=False)]
    if args.layout:
        layout_speeds(jpeg224)
        return
    val = [r.path for r in discover(DATA / "val").records]
    full = [val[i % len(val)] for i in range(N_FULL)]
    peak = matmul_gflops()
    load = os.getloadavg()[0]
    print(f"CPU: {os.cpu_count()} cores, {THREADS} threads per backend; float32 matmul 2048^3: {peak:.0f} GFLOP/s "
          f"(best of 10); load average before the run: {load:.1f}")
    print(f"model: efficientnet_lite0 (random weights), batch {BATCH}; {N_BATCH} 224 px JPEGs from train/, "
          f"{N_FULL} reads of the {len(val)} full-size val/ originals")
    header = (f"{'size':>4} {'backend':<7} {'batch img/s':>13} {'+decode 224px':>13} {'+decode full':>13} "
              f"{'p50/p95 model ms':>16} {'p50/p95 e2e ms':>15} {'GFLOP/img':>9} {'GFLOP/s':>7} {'of peak':>7} "
              f"{'FLOP bound img/s':>16}")
    print(header)
    print("-" * len(header))

    def rate(r: tuple[float, float]) -> str:
        return f"{r[0]:.0f} ({r[1]:.0f})"

    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            bundle = make_bundle(Path(tmp) / f"lite0-{size}", size)
            flops = flops_per_image(size)
            for backend in BACKENDS:
                r = measure(bundle, size, backend, jpeg224, full)
                achieved = r["batch"][0] * flops / 1e9
                model_ms, e2e_ms = (f"{a:.1f}/{b:.1f}" for a, b in (r["model_ms"], r["e2e_ms"]))
                print(f"{size:>4} {backend:<7} {rate(r['batch']):>13} {rate(r['files224']):>13} {rate(r['full']):>13} "
                      f"{model_ms:>16} {e2e_ms:>15} {flops / 1e9:>9.3f} {achieved:>7.1f} {achieved / peak:>7.0%} "
                      f"{peak * 1e9 / flops:>16.0f}", flush=True)
    print("img/s columns: best chunk of 64 (median chunk); GFLOP/s and 'of peak' use the best batch figure.")
    print(f"targets (default model): batch >= {TARGETS['batch']:.0f} img/s, full-size JPEGs incl. decode >= "
          f"{TARGETS['full']:.0f} img/s, p50 model latency <= {TARGETS['p50_ms']:.0f} ms. "
          f"'FLOP bound' = matmul GFLOP/s / GFLOP per image: no backend can beat it on this CPU.")
    print(f"load average after the run: {os.getloadavg()[0]:.1f} (other jobs share these {os.cpu_count()} cores: "
          "figures are noisy when it is above 0)")


if __name__ == "__main__":
    main()
