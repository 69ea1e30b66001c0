"""The two-stage answer (pneumonia, then bacteria or virus) scored as three classes out of fold, before any test film.

Run: ``python benchmarks/cv_two_stage.py PNEUMONIA_ENSEMBLE ETIOLOGY_ENSEMBLE``, each a bundle that
``pneumoscan ensemble --cv`` made (``make demo-best`` and ``make demo-best-etiology`` write them). Each film of the
pneumonia runs gets the pneumonia ensemble's out-of-fold score: its members' calibrated logits from ``oof.csv``,
averaged over the runs and divided by the ensemble's temperature, as the ensemble scores a new film with the
members that did not train on it. The etiology stage scores the pneumonia films the same way; the normal films,
on which no etiology member trained, are scored by the etiology bundle itself. Each film is then decided as
``predict --etiology`` decides (``evaluate --etiology``'s :func:`two_stage_decision`) at the bundles' own
thresholds, and scored as ``evaluate --etiology`` scores it.

The thresholds were chosen on these same out-of-fold scores, so the figures are a little optimistic; they say
what the pipeline does on ``train/``, whose etiology is much harder than the official test split's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_shift import refusing  # noqa: E402
from benchmarks.cv_candidates import oof_logits  # noqa: E402
from pneumoscan.core.metrics import evaluate_multiclass  # noqa: E402
from pneumoscan.data.cache import build_cache  # noqa: E402
from pneumoscan.data.layouts import discover  # noqa: E402
from pneumoscan.evaluation.evaluate import two_stage_decision  # noqa: E402
from pneumoscan.inference.predict import Predictor  # noqa: E402
from pneumoscan.models.card import BundleCard, load_card  # noqa: E402
from pneumoscan.models.run_folder import CvFolder  # noqa: E402
from pneumoscan.training.cv import oof_name  # noqa: E402


def cv_runs(card: BundleCard, bundle: Path) -> list[Path]:
    """The cv runs an ensemble was calibrated on (its members are RUN/fold-K/bundle), in order."""
    members = [Path(m) for m in card.train_config.get("ensemble_of", [])]
    runs = list(dict.fromkeys(m.parent.parent for m in members))
    if not runs or not all(CvFolder(r).oof.exists() for r in runs):
        sys.exit(f"{bundle} is not an ensemble of cv runs (`pneumoscan ensemble --cv`) whose oof.csv is here")
    return runs


def stage_probability(bundle: Path, paths: list[str]) -> np.ndarray:
    """P(positive) of each film: out of fold where the runs scored it, else from the whole bundle."""
    card = load_card(bundle)
    logits = oof_logits(cv_runs(card, bundle))
    probability = {key: 1.0 / (1.0 + np.exp(-z / card.temperature)) for key, z in logits.items()}
    keys = [oof_name(p) for p in paths]  # oof.csv names films by real path, whatever path the split gives
    missing = [p for p, key in zip(paths, keys) if key not in probability]
    if missing:
        predictor = Predictor(bundle, backend="onnx")
        cache = build_cache(missing, card.spec, progress=True)
        scores = predictor.positive_probability(predictor.probabilities(cache.images[cache.rows(missing)]))
        probability |= zip(map(oof_name, missing), scores)
        print(f"{bundle}: {len(missing)} films not in its runs' folds, scored by the bundle itself")
    return np.array([probability[key] for key in keys])


def main(pneumonia: Path, etiology: Path) -> None:
    first, second = refusing(load_card, pneumonia), refusing(load_card, etiology)
    runs = cv_runs(first, pneumonia)
    records = [r for r in discover(CvFolder(runs[0]).split(0)).records]
    classes = ("normal", "bacteria", "virus")
    records = [r for r in records if r.subtype in classes]
    paths = [r.path for r in records]
    y = np.array([classes.index(r.subtype) for r in records])
    p1, p2 = stage_probability(pneumonia, paths), stage_probability(etiology, paths)
    probs, called = two_stage_decision(p1, p2, first.threshold, second.threshold)
    m = evaluate_multiclass(y, probs, classes, predicted=called, decision="two stages")
    low, high = m["ci"]["accuracy"]
    print(f"{len(y)} films of {runs[0]}'s folds; thresholds {first.threshold:.4f} (pneumonia), "
          f"{second.threshold:.4f} (virus)")
    print(f"accuracy {m['accuracy']:.4f} (95 % CI {low:.4f}-{high:.4f}), balanced accuracy "
          f"{m['balanced_accuracy']:.4f}, macro AUC {m['macro_auc']:.4f}")
    print("confusion, rows true, columns called (normal, bacteria, virus):")
    for name, row in zip(classes, m["confusion_matrix"]["counts"]):
        print(f"  {name:>8}: {row}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pneumonia", type=Path, help="ensemble bundle of pneumonia cv runs")
    parser.add_argument("etiology", type=Path, help="ensemble bundle of etiology cv runs")
    args = parser.parse_args()
    main(args.pneumonia, args.etiology)
