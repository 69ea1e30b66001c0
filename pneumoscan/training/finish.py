"""Finishing a bundle, as a training run and ``ensemble`` both do: the weights saved, the ONNX graph, the
appearance of the training films, then the temperature and thresholds chosen on the films the bundle scores, and
the scale its heatmaps are drawn on, measured on those films."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pneumoscan.core.atomic import building
from pneumoscan.core.metrics import softmax
from pneumoscan.data.appearance import Appearance
from pneumoscan.evaluation.operating_point import calibrated_temperature, policy_text, write_operating_point
from pneumoscan.inference.explain import measure_heatmap_scale
from pneumoscan.inference.export import export_onnx
from pneumoscan.inference.predict import tta_probabilities
from pneumoscan.models.bundle import save_bundle
from pneumoscan.models.card import ENSEMBLE, BundleCard, card_task, load_card, save_appearance, save_card


@dataclass(frozen=True)
class ScoredFilms:
    """The films a bundle's temperature and thresholds are chosen on, as the bundle scores them: the plain logits
    (N, C), each test-time-augmentation view's logits, the targets, and each film's patient unit, which the
    thresholds' intervals and the validation figures' CIs count (copies of one film under other names are one
    patient: :func:`~pneumoscan.data.labelled.patient_groups`); ``images``, the films as the model reads them
    (uint8 (N, S, S)), for the scale of its heatmaps (None: the bundle records none, and its maps are scaled film by
    film); ``left_out``, the files given with the films that their figures are not of, and why
    (:func:`~pneumoscan.data.labelled.left_out`), recorded with the validation figures, a training run's and an
    ensemble's alike (None: none recorded)."""

    logits: np.ndarray
    views: list[np.ndarray]
    targets: np.ndarray
    groups: np.ndarray
    images: np.ndarray | None = None
    left_out: list[dict] | None = None


def finish_bundle(out: Path, model: torch.nn.Module, card: BundleCard, appearance: Appearance | None,
                  score: Callable[[Path], ScoredFilms], policy_targets: tuple[float | None, float | None],
                  chosen_on: str, temperature: tuple[float, str] | None = None,
                  ) -> tuple[BundleCard, dict, np.ndarray]:
    """Write the bundle OUT as a training run and ``ensemble`` finish theirs: ``model`` saved with ``card``, its ONNX
    graph (checked against torch: predict and serve start on ONNX Runtime at once), ``appearance`` (None: none
    recorded), then the temperature and the plain and TTA thresholds, chosen by one policy (``policy_targets``: a
    sensitivity target, a false-positive-rate ceiling, or Youden's J; on the films named ``chosen_on``) on the films
    ``score(folder)`` scores once the graph is in the folder (:func:`write_operating_point`, which writes the card and
    its validation figures). ``temperature``: (T, caveat) fitted already, on logits scored before the export (a
    training run's, by torch) and set in ``card``, so the export's check runs at it; None: fitted here on the scored
    logits. What of the files given the films leave out (:attr:`ScoredFilms.left_out`) is recorded with the
    validation figures. Built beside OUT and renamed into place whole: a failure leaves no half bundle, which cv would
    take for a finished fold. Returns the card written, the figures on the films, and their TTA scores."""
    with building(out) as tmp:
        save_bundle(tmp, model, card)
        try:
            export_onnx(tmp)
        except torch.onnx.OnnxExporterError as e:
            what = "the ensemble" if card.model == ENSEMBLE else f"the {card.model} model"
            raise ValueError(f"{what} cannot be exported to ONNX, so it is not written: "
                             f"{str(e).splitlines()[0]}") from None
        if appearance is not None:
            save_appearance(tmp, appearance)
        scored = score(tmp)
        fitted, caveat = temperature or calibrated_temperature(scored.logits, scored.targets)
        task, probs = card_task(card, out), softmax(scored.logits, fitted)
        # predict --tta averages views, which shifts the scores: its own threshold, same policy, same films
        tta = task.positive_probability(tta_probabilities(scored.views, fitted))
        # the card as export left it: bundle.json records model.onnx's checksum too
        card, metrics = write_operating_point(
            tmp, dataclasses.replace(load_card(tmp), temperature=float(fitted)), probs, tta, scored.targets,
            *policy_targets, policy_text(*policy_targets, chosen_on), scored.groups, caveat, scored.left_out)
        # not measured for an ensemble: its map is the mean of its members' maps, each on that member's own scale,
        # which training.ensemble records when it builds it
        if scored.images is not None and card.model != ENSEMBLE and (
                scale := measure_heatmap_scale(model, card, task, scored.images, probs)) is not None:
            card = dataclasses.replace(load_card(tmp), heatmap_scale=scale)  # as the ONNX sidecar's record left it
            save_card(tmp, card)
    return card, metrics, tta
