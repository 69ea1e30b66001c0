"""How often the appearance check (pneumoscan.data.appearance) flags films: held-out validation films as they are,
changed as another machine or protocol might change them (bench_shift's changes: these should mostly pass), and
faults that must not pass (turned, upside down, inverted, heavy blur, noise, a window that clips to white or to
black). The appearance is fitted on the run's training films at the bundle's preprocessing, as training records it.

    python benchmarks/bench_appearance.py BUNDLE RUN/split.csv
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import ImageFilter

from bench_shift import CHANGES, Change, gamma, labelled, pillow, refusing
from pneumoscan.data.appearance import MIN_FILMS, Appearance
from pneumoscan.models.card import load_card
from pneumoscan.data.tasks import get_task


def clipped_black(share: int) -> Change:
    """A window whose lower edge is the film's ``share``-th percentile: that share of the film goes black."""
    def change(a: np.ndarray) -> np.ndarray:
        low = np.percentile(a, share)
        return np.clip(np.round((a - low) * 255.0 / max(255.0 - low, 1.0)), 0, 255).astype(np.uint8)

    return change


FAULTS: dict[str, Change] = {
    "turned 90 degrees": np.rot90,
    "upside down": np.flipud,
    "inverted": lambda a: 255 - a,
    "blur sigma 4 px": pillow(lambda im: im.filter(ImageFilter.GaussianBlur(4.0))),
    "uniform noise": lambda a: np.random.default_rng(0).integers(0, 256, a.shape, dtype=np.uint8),
    "contrast x0.3 (a window fault)": lambda a: np.round(a * 0.3 + 90).astype(np.uint8),
    "contrast x0.1": lambda a: np.round(a * 0.1 + 10).astype(np.uint8),
    # a window that clips: the contrast about the film's mean doubled or tripled, its bright half white
    "window clipping, contrast x2": lambda a: np.clip((a.astype(float) - a.mean()) * 2 + 128, 0, 255).astype(np.uint8),
    "window clipping, contrast x3": lambda a: np.clip((a.astype(float) - a.mean()) * 3 + 128, 0, 255).astype(np.uint8),
    # a bent tone curve that clips nothing: not caught (docs/dicom.md)
    "gamma 0.3 (brightened)": gamma(0.3),
    "gamma 2 (darkened)": gamma(2.0),
    "gamma 3 (darkened)": gamma(3.0),
    # a window raised from below: the darkest share of the film black, the lungs first
    **{f"window clipped to black, darkest {q} %": clipped_black(q) for q in (10, 20, 30, 40, 50)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="gives the preprocessing (size, source matching)")
    parser.add_argument("data",
                        help="the run's split.csv: its train films fit the appearance, its val films are scored")
    args = parser.parse_args()
    card = refusing(load_card, args.bundle)
    task = get_task(card.task)
    train, _ = labelled(args.data, "train", task, card.spec)
    if len(train) < MIN_FILMS:
        sys.exit(f"{args.data}: {len(train)} training films, fewer than the {MIN_FILMS} the appearance is fitted on "
                 "(give a run's split.csv of more films)")
    val, _ = labelled(args.data, "val", task, card.spec)
    appearance = Appearance.fit(train)
    print(f"appearance of {len(train)} training films at {card.size} px; {len(val)} validation films")
    print("| films | flagged | by layout | by orientation | by sharpness | by contrast | by white | by black |")
    print("|---|---|---|---|---|---|---|---|")
    for name, change in {**CHANGES, **FAULTS}.items():
        reasons = appearance.warnings(np.stack([np.ascontiguousarray(change(a)) for a in val]))
        layout, turned, sharp, flat, white, black = (
            np.mean([any(word in w for word in words for w in r) for r in reasons])
            for words in (("layout of light",), ("upside down",), ("blurrier", "noise"), ("less contrast",),
                          ("is white",), ("is black",)))
        print(f"| {'fault: ' if name in FAULTS else ''}{name} | {np.mean([bool(r) for r in reasons]):.1%} | "
              f"{layout:.1%} | {turned:.1%} | {sharp:.1%} | {flat:.1%} | {white:.1%} | {black:.1%} |")


if __name__ == "__main__":
    main()
