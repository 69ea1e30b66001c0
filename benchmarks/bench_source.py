"""What the training-source step does to full-size originals: P(pneumonia) for each image in val/ (the 16
full-size originals) read directly (decode, resize) and through the bundle's source step (decode, squash to the
training files' size, JPEG at their quality, resize), with the calls at the bundle's threshold.

    python benchmarks/bench_source.py BUNDLE [--data chest_xray]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from bench_shift import refusing
from pneumoscan.data.decode import image_info
from pneumoscan.data.preprocess import preprocess
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import load_card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA", "data/chest_xray"))
    args = parser.parse_args()

    refusing(load_card, args.bundle)  # a path that holds no bundle, said before the films are looked for
    val = {label: sorted((Path(args.data) / "val" / label).glob("*.jpeg")) for label in ("NORMAL", "PNEUMONIA")}
    for label, found in val.items():
        if not found:  # checked before the bundle is loaded: numpy stacks no film
            sys.exit(f"{Path(args.data) / 'val' / label}: no .jpeg film (give the dataset with --data or "
                     "$PNEUMOSCAN_DATA)")
    predictor = Predictor(args.bundle)
    spec = predictor.card.spec
    if spec.source_size is None:
        raise SystemExit("this bundle records no training source (trained with match_source: false?)")
    print(f"bundle threshold {predictor.card.threshold:.4f}; source {spec.source_size} px JPEG q{spec.source_quality}")
    print(f"{'label':<10} {'file':<32} {'size':>11} {'direct':>7} {'source':>7}")
    for label, files in val.items():
        direct = np.stack([preprocess(f, spec.size, spec.policy) for f in files])
        matched = np.stack([preprocess(f, **spec.to_dict()) for f in files])
        p_direct, p_matched = (predictor.positive_probability(predictor.probabilities(x)) for x in (direct, matched))
        for f, a, b in zip(files, p_direct, p_matched):
            info = image_info(f)
            print(f"{label:<10} {f.name:<32} {info['width']:>5}x{info['height']:<5} {a:>7.3f} {b:>7.3f}")
        called = [int((p >= predictor.card.threshold).sum()) for p in (p_direct, p_matched)]
        print(f"{label:<10} mean P(pneumonia) direct {p_direct.mean():.3f}, source {p_matched.mean():.3f}; "
              f"called pneumonia: direct {called[0]}/{len(files)}, source {called[1]}/{len(files)}")


if __name__ == "__main__":
    main()
