"""How a bundle holds up when films look different from its training files: validation metrics at the bundle's
threshold with every image changed the same way (exposure, contrast, blur, sharpening, histogram equalisation,
grain, heavy JPEG, low resolution). No test data is used: these are stand-ins for other machines and protocols,
to show which kind of difference moves the scores and the operating point.

    python benchmarks/bench_shift.py BUNDLE RUN/split.csv [--split val] [--faults]

--faults also scores bench_appearance's faults (a turned film, a window clipped to white or black, a strong
gamma): whether the model reads them worse says which of them a content check is worth.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from sklearn.metrics import roc_auc_score

from pneumoscan.core.metrics import binary_metrics
from pneumoscan.data.labelled import labelled_films
from pneumoscan.data.preprocess import PreprocessSpec
from pneumoscan.data.tasks import Task, binary_targets, get_task
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import load_card

Change = Callable[[np.ndarray], np.ndarray]
T = TypeVar("T")


def refusing(read: Callable[..., T], *args: object) -> T:
    """``read(*args)``; else, as the CLI refuses what it cannot use, the reason on one line and exit status 1, not a
    traceback: no bundle at the path or a damaged card (``load_card``), no dataset, no film of a split (discovery)."""
    try:
        return read(*args)
    except (OSError, ValueError) as e:
        sys.exit(str(e))


def labelled(data: str | Path, split: str, task: Task, spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray]:
    """DATA's readable films of SPLIT as the bundle reads them, and their targets; else the reason, by
    :func:`refusing` (no dataset there, no film of the split, none readable)."""
    def read() -> tuple[np.ndarray, np.ndarray]:
        films = labelled_films(data, split, task, spec)
        return films.images, films.targets

    return refusing(read)


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def gamma(g: float) -> Change:
    return lambda a: _u8(255.0 * (a / 255.0) ** g)


def contrast(c: float) -> Change:
    return lambda a: _u8((a - a.mean()) * c + a.mean())


def pillow(f: Callable[[Image.Image], Image.Image]) -> Change:
    return lambda a: np.asarray(f(Image.fromarray(a)))


def grain(sigma: float) -> Change:
    """Gaussian noise of ``sigma`` grey levels (a fixed seed per level, so runs compare)."""
    rng = np.random.default_rng(0)
    return lambda a: _u8(a + rng.normal(0.0, sigma, a.shape))


def jpeg(quality: int) -> Change:
    def f(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(buf).convert("L")

    return pillow(f)


def low_resolution(side: int) -> Change:
    return pillow(lambda im: im.resize((side, side), Image.Resampling.BICUBIC)
                             .resize(im.size, Image.Resampling.BICUBIC))


CHANGES: dict[str, Change] = {
    "none": lambda a: a,
    "gamma 0.7": gamma(0.7),
    "gamma 1.4": gamma(1.4),
    "contrast x0.7": contrast(0.7),
    "contrast x1.3": contrast(1.3),
    "blur sigma 1 px": pillow(lambda im: im.filter(ImageFilter.GaussianBlur(1.0))),
    "unsharp mask": pillow(lambda im: im.filter(ImageFilter.UnsharpMask(radius=2, percent=80, threshold=2))),
    "histogram equalised": pillow(ImageOps.equalize),
    "grain sigma 3": grain(3.0),
    "grain sigma 6": grain(6.0),
    "grain sigma 10": grain(10.0),
    "JPEG q30": jpeg(30),
    "96 px and back": low_resolution(96),
    # a viewer's or PACS's flip: the model is not trained on mirrored films (augment hflip is off), and the image
    # content check does not flag them, so how well it reads them is worth knowing
    "mirrored left to right": np.fliplr,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("data", help="the run's split.csv (or any labelled data)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--faults", action="store_true", help="also bench_appearance's faults")
    args = parser.parse_args()

    card = refusing(load_card, args.bundle)
    images, targets = labelled(args.data, args.split, get_task(card.task), card.spec)  # before the model is loaded
    predictor = Predictor(args.bundle, backend="onnx")
    y = binary_targets(targets)
    print(f"{card.model} · {card.task} · threshold {card.threshold:.4f} · {len(y)} {args.split} images")
    print(f"| change | AUC | sensitivity | specificity | mean P({card.positive}) of {card.classes[0]} |")
    print("|---|---|---|---|---|")
    changes = dict(CHANGES)
    if args.faults:
        from bench_appearance import FAULTS  # it takes CHANGES from here

        changes |= {f"fault: {name}": change for name, change in FAULTS.items()}
    for name, change in changes.items():
        changed = np.stack([np.ascontiguousarray(change(a)) for a in images])
        p = predictor.positive_probability(predictor.probabilities(changed))
        m = binary_metrics(y, p, card.threshold)
        print(f"| {name} | {roc_auc_score(y, p):.4f} | {m['sensitivity']:.3f} | {m['specificity']:.3f} "
              f"| {p[y == 0].mean():.3f} |")


if __name__ == "__main__":
    main()
