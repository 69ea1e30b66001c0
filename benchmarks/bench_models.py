"""Train every registry model on the pneumonia task under the same short time budget and print a table.

    python benchmarks/bench_models.py [--minutes 3] [--image-size 160] [--models mlp simple_cnn ...]

Each model trains on the same patient-grouped split of DATA but its test split (train/ and val/, seed 0) and is
scored on its validation part at the bundle's threshold (sensitivity >= 0.95 on that same validation part, so
sensitivity is ~0.95 by construction and specificity is the figure to compare). The official test split is never
used. A model with ImageNet weights (shipped, or in timm's cache) fine-tunes them; one whose weights cannot be had
here trains from scratch, and its row says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from pneumoscan.core.logs import configure
from pneumoscan.data.layouts import discover
from pneumoscan.models import WeightsUnavailable
from pneumoscan.models import registry as models
from pneumoscan.models.bundle import load_bundle
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.train import train


HEADER = "| model | init | val AUC | accuracy | sensitivity | specificity | val films | train minutes | parameters |"


def init_of(name: str) -> str:
    """How NAME starts: from ImageNet weights wherever the registry has them (shipped, or in timm's cache)."""
    return "ImageNet" if models.has_pretrained(name) else "scratch"


def fit(data: str, name: str, init: str, image_size: int, minutes: float, out: Path) -> tuple[Path | str, str]:
    """The bundle, or why its run was refused (diverged, scored every film alike, no better than chance), and how it
    started: a model whose ImageNet weights cannot be had here trains from scratch, as `make reference` does, and a
    refused run is a line of its own, so the rest of the table still gets made."""
    pretrained = init == "ImageNet"
    cfg = TrainConfig(model=name, pretrained=pretrained, image_size=image_size, epochs=50, patience=50,
                      time_budget=minutes, lr=1e-3 if pretrained else 2e-3)
    try:
        return train(data, cfg, out), init
    except WeightsUnavailable as e:
        print(f"{e}; training it from scratch", file=sys.stderr)
        return fit(data, name, "scratch (no ImageNet weights here)", image_size, minutes, out)
    except ValueError as e:  # training's refusals: no bundle, nothing to score
        return str(e), init


def row(name: str, init: str, bundle: Path, minutes: float) -> str:
    """One line of the table, its validation figures with the number of films they were measured on."""
    model, card = load_bundle(bundle)
    m = card.val_metrics
    return (f"| {name} | {init} | {m['auc']:.4f} | {m['accuracy']:.3f} | {m['sensitivity']:.3f} | "
            f"{m['specificity']:.3f} | {m['n']:,} | {minutes:.1f} | {models.count_parameters(model):,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA", "data/chest_xray"))
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--models", nargs="+", default=models.list_models())
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args()
    configure()  # training's progress and messages, as the command line shows them
    from bench_shift import refusing  # beside this script, on the path it runs with

    refusing(discover, args.data)  # a folder of no dataset, or none there: said before any model trains

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-models-"))
    rows, refused = [], []
    for name in args.models:
        start = time.perf_counter()
        bundle, init = fit(args.data, name, init_of(name), args.image_size, args.minutes, out / name)
        minutes = (time.perf_counter() - start) / 60
        if isinstance(bundle, str):
            refused.append(f"- {name} ({init}, {minutes:.1f} train minutes): {bundle}")
        else:
            rows.append(row(name, init, bundle, minutes))

    print(f"\nAll models: pneumonia task, {args.image_size} px, {args.minutes:g} min training budget each, "
          f"{os.cpu_count()} CPU cores; validation = patient-grouped {TrainConfig().val_fraction:.0%} of {args.data} "
          f"but its test split (seed 0)\n")
    print(HEADER)
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if refused:
        print("\nRefused by training, so not in the table:\n" + "\n".join(refused))


if __name__ == "__main__":
    main()
