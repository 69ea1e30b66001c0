"""Which resize made the training files? The high-frequency spectrum of train/ (originals squashed to 224 px, JPEG
q75) against the full-size originals in val/ brought down by the source step with each candidate resampling filter.
The source step should leave inputs as sharp as the training files, no sharper and no blurrier.

    python benchmarks/bench_resample.py [--data chest_xray] [--sample 300]

Prints, per class, the median log10 power in radial frequency bands (cycles per pixel) relative to the 0.10-0.15
band; the row closest to train/ in the high bands is the better match.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.data.decode import read_gray
from pneumoscan.data.preprocess import match_source

BANDS = ((0.05, 0.1), (0.1, 0.15), (0.15, 0.2), (0.2, 0.25), (0.25, 0.3), (0.3, 0.35), (0.35, 0.4), (0.4, 0.45),
         (0.45, 0.5))
REFERENCE = 1  # index of the band the others are relative to
FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


def band_profile(gray: np.ndarray) -> np.ndarray:
    """log10 mean power per band of a Hann-windowed square image, relative to the reference band."""
    n = gray.shape[0]
    x = (gray.astype(np.float64) - gray.mean()) * np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.fft2(x)) ** 2
    f = np.fft.fftfreq(n)
    radius = np.hypot(f[:, None], f[None, :])
    means = np.array([power[(radius >= lo) & (radius < hi)].mean() for lo, hi in BANDS])
    return np.log10(means / means[REFERENCE])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA", "data/chest_xray"))
    parser.add_argument("--sample", type=int, default=300, help="train files per class")
    args = parser.parse_args()

    films = {(split, label): sorted((Path(args.data) / split / label).glob("*.jpeg"))
             for label in ("NORMAL", "PNEUMONIA") for split in ("train", "val")}
    for (split, label), found in films.items():
        if not found:  # a median of no profile is no row
            sys.exit(f"{Path(args.data) / split / label}: no .jpeg film (give the dataset with --data or "
                     "$PNEUMOSCAN_DATA)")
    rng = random.Random(0)
    header = " ".join(f"{lo:.2f}-{hi:.2f}" for lo, hi in BANDS)
    print(f"{'class':<10} {'source':<22} {header}")
    for label in ("NORMAL", "PNEUMONIA"):
        train = films["train", label]
        picked = rng.sample(train, min(args.sample, len(train)))
        rows = {f"train/ ({len(picked)} files)": [band_profile(read_gray(p)) for p in picked]}
        originals = [read_gray(p, target=224) for p in films["val", label]]
        for name, resample in FILTERS.items():
            rows[f"val/ ({len(originals)}) {name}"] = [band_profile(match_source(g, 224, 75, resample))
                                                       for g in originals]
        for name, profiles in rows.items():
            print(f"{label:<10} {name:<22} " + " ".join(f"{v:9.2f}" for v in np.median(profiles, axis=0)))


if __name__ == "__main__":
    main()
