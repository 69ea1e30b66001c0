"""Train every registry model on the pneumonia task under the same short time budget and print a table.

    python benchmarks/bench_models.py [--minutes 3] [--image-size 160] [--models mlp simple_cnn ...]

Each model trains on the same patient-grouped split of train/ (seed 0) and is scored on its validation part
at the bundle's threshold (sensitivity >= 0.95 on that same validation part, so sensitivity is ~0.95 by
construction and specificity is the figure to compare). The official test split is never used.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pneumoscan.core.logs import configure
from pneumoscan.models import registry as models
from pneumoscan.models.bundle import load_bundle
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA", "../shared/data/chest_xray"))
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--models", nargs="+", default=models.list_models())
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args()
    configure()  # training's progress and messages, as the command line shows them

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-models-"))
    rows = []
    for name in args.models:
        pretrained = name == "efficientnet_lite0"  # the only model with weights available offline
        cfg = TrainConfig(model=name, pretrained=pretrained, image_size=args.image_size, epochs=50, patience=50,
                          time_budget=args.minutes, lr=1e-3 if pretrained else 2e-3)
        start = time.perf_counter()
        bundle = train(args.data, cfg, out / name)
        minutes = (time.perf_counter() - start) / 60
        model, card = load_bundle(bundle)
        m = card.val_metrics
        rows.append((name, "ImageNet" if pretrained else "scratch", m["auc"], m["accuracy"], m["sensitivity"],
                     m["specificity"], minutes, models.count_parameters(model)))

    print(f"\nAll models: pneumonia task, {args.image_size} px, {args.minutes:g} min training budget each, "
          f"{os.cpu_count()} CPU cores; validation = patient-grouped 15 % of train/ (seed 0)\n")
    print("| model | init | val AUC | accuracy | sensitivity | specificity | train minutes | parameters |")
    print("|---|---|---|---|---|---|---|---|")
    for name, init, auc, acc, sens, spec, minutes, params in rows:
        print(f"| {name} | {init} | {auc:.4f} | {acc:.3f} | {sens:.3f} | {spec:.3f} | {minutes:.1f} | {params:,} |")


if __name__ == "__main__":
    main()
