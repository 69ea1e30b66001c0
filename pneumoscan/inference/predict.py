"""Inference from a bundle: images in, calibrated probabilities and thresholded labels out.

:class:`Predictor` works on preprocessed uint8 batches (evaluation, the web service) with a torch or an ONNX
Runtime backend; :func:`predict_paths` is the command-line flow over files and folders, with an optional
bacterial/viral second stage and Grad-CAM overlays. A file that cannot be read becomes a row with an
``error`` instead of stopping the run, and so does a film the model gives a NaN or infinite score: such a score
is never turned into a label (:class:`NonFiniteScore`).

With an ONNX backend, scoring imports no torch (seconds and most of a gigabyte at start-up): torch is loaded by
what needs it, the torch backend, Grad-CAM (:attr:`Predictor.model`) and the test-time augmentation views.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import numbers
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumoscan.core.atomic import file_stamp, write_new
from pneumoscan.core.logs import progress as progress_bar
from pneumoscan.core.metrics import softmax
from pneumoscan.core.names import file_kind, given_path, json_text, path_list, results_csv, shown
from pneumoscan.core.cpus import cap_torch_threads, usable_cores
from pneumoscan.core.options import BACKENDS, PREDICT_BATCH, look_up_option
from pneumoscan.data.appearance import MIN_FILMS
from pneumoscan.data.decode import read_dicom, read_gray
from pneumoscan.data.preprocess import TTA_VIEWS
from pneumoscan.data.pixels import DecodeError, blocks, check_array, what_was_given
from pneumoscan.data.walk import OUTPUT_FOLDER, walk
from pneumoscan.data.readers import formats
from pneumoscan.data.scope import CONTENT_UNCHECKED, in_scope, read_described, scope_warnings
from pneumoscan.data.tasks import Task, get_task, list_tasks
from pneumoscan.models.card import (ONNX_NAME, WEIGHTS, BundleCard, card_task, load_appearance, load_card,
                                   verify_file)

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch

log = logging.getLogger(__name__)

ALWAYS = ("path", "probability", "label", "threshold", "warnings")  # every results CSV's columns
# the columns of every bundle; those named from a task (a multiclass bundle's class probabilities, a second stage's
# reading) follow the first stage's reading (:func:`format_results`)
RESULT_FIELDS = (
    "path", "probability", "label", "threshold", "near_threshold", "heatmap", "error", "warnings", "in_scope",
    "model_id", "model_version", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "dicom_sr",
    "dicom_heatmap", "fhir",
)  # fmt: skip


def stage_fields(task: Task) -> dict[str, str]:
    """A second stage's reading (:meth:`Predictor.reading_fields`, its class probabilities for a task of three or
    more classes: :meth:`Predictor.class_fields`), model (:attr:`Predictor.identity`) and scope (:func:`stage_scope`)
    as a row's fields, named from its task, in this order: ``TASK_probability_POSITIVE``, ``TASK_probability_<class>``
    (three or more classes only), ``TASK_label``, ``TASK_threshold``, ``TASK_near_threshold``, ``TASK_model_id``,
    ``TASK_model_version``, ``TASK_warnings``, ``TASK_in_scope`` (the etiology task's ``etiology_probability_virus``,
    ``etiology_label``, ...), so that a second stage of one's own is not reported as P(virus), and its probability
    comes with the threshold it was read at (its TTA one under ``--tta``), the model that gave it and whether the film
    looks like that model's training films, as the first stage's does."""
    return {"probability": f"{task.name}_probability_{task.positive}",
            **{column: f"{task.name}_{column}" for column in task.class_columns}, "label": f"{task.name}_label",
            "threshold": f"{task.name}_threshold", "near_threshold": f"{task.name}_near_threshold",
            "model_id": f"{task.name}_model_id", "model_version": f"{task.name}_model_version",
            "warnings": f"{task.name}_warnings", "in_scope": f"{task.name}_in_scope"}


def stage_scope(warnings: Sequence[str], content: Sequence[str]) -> dict[str, object]:
    """A second stage's reading's ``warnings``, its own content check's (:meth:`Predictor.content_warnings`: whether
    the film looks like the films that stage was trained on, or that it records no appearance of them), and its
    ``in_scope``: false where the film's ``warnings`` (its header's, the first stage's content check) put it outside
    the first stage's scope, which handed it over, or the second stage's own check does. Written once for predict,
    the web service and evaluate."""
    return {"warnings": list(content), "in_scope": in_scope([*warnings, *content])}


NO_HEATMAP = "no heatmap"  # a warning's start: the film's Grad-CAM was refused (explain.NoMapOfFilm), its score kept
# a film whose file changed between the reads of one prediction (a drop folder reusing names): its pixels, header and
# overlay could be two films', so it gets no reading
CHANGED = "the file changed while it was being read (replaced or rewritten): not scored; run again on the settled file"
NON_FINITE = ("the model produced a non-finite score (NaN or infinity): its weights are damaged or unusable, so no "
              "label is given")


class NonFiniteScore(ValueError):
    """The model gave NaN or infinity: a broken model (damaged or diverged weights), never a label. ``bad`` marks
    the rows concerned."""

    def __init__(self, bad: np.ndarray) -> None:
        super().__init__(f"{NON_FINITE} ({int(bad.sum())} of {len(bad)} images)")
        self.bad = bad


def require_finite(scores: np.ndarray) -> np.ndarray:
    """``scores`` (logits or probabilities) when every row is finite, else :class:`NonFiniteScore`: a NaN compares
    false with the threshold and would read as the negative class."""
    bad = ~np.isfinite(scores).all(axis=tuple(range(1, scores.ndim)))
    if bad.any():
        raise NonFiniteScore(bad)
    return scores


class Predictor:
    """A bundle's model with its preprocessing, calibration and threshold.

    Thread-safe: torch model calls are serialised by a lock, because Grad-CAM (explain.py) hooks the shared torch
    model and would otherwise record activations of concurrent requests. With ``backend="onnx"`` probabilities
    come from ONNX Runtime, whose sessions may be run from several threads, so they do not wait for a heatmap, and
    the torch model is built only when Grad-CAM first asks for it (:attr:`model`).
    """

    # declared, since mypy cannot tell them from __init__'s assignments (a user's type check)
    card: BundleCard
    bundle: Path | str
    backend: str
    batch_size: int
    identity: dict[str, str]

    def __init__(self, bundle: Path | str, batch_size: int = PREDICT_BATCH, backend: str = "torch",
                 session: object | None = None) -> None:
        """``session``: an ONNX Runtime session to score with instead of the bundle's own (the INT8 step scores its
        fresh graph this way before that graph's thresholds exist). ``batch_size``: images a model call, a whole
        number above 0, refused by name before the bundle loads (0 failed at the first film in Python's words on
        ``range``, naming no argument, and True scored a film at a time)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number above 0, got {batch_size!r}")
        look_up_option(backend, BACKENDS, "backend")
        given = session is not None  # int8_model's session below is the bundle's own
        self.bundle = bundle
        # the torch backend builds its model now, so unusable weights are refused before any film is read, and keeps
        # the card that build read: a card read apart could be another bundle's, were the folder replaced in between
        self._model, self.card = _torch_model(bundle) if backend == "torch" else (None, load_card(bundle))
        self.task = card_task(self.card, bundle)
        self.batch_size = int(batch_size)
        self.backend = backend
        self.lock = threading.RLock()
        weights = None  # their SHA-256 as checked here, so that the ONNX model's check does not read them again
        if backend != "torch":  # as building the model would: damaged weights named as such, not as a stale model.onnx
            weights = verify_file(bundle, self.card, WEIGHTS)
        self.appearance = load_appearance(bundle, self.card)
        if backend == "onnx-int8" and session is None:
            from .onnx_runtime import int8_card, int8_model

            session, sidecar = int8_model(bundle, self.card)
            # quantisation moves the scores: labels are read at the thresholds validated for the INT8 scores
            # (int8_model checked that the sidecar holds them where any reader of it looks), and its figures are the
            # INT8 model's: the card's validation figures and evaluations are the FP32 model's, at the FP32 threshold
            self.card = int8_card(self.card, sidecar)
        if backend != "torch":
            from .export import bundle_session
            from .onnx_runtime import INT8_NAME

            # a bundle without a model.onnx is exported by torch, which may not run here (:func:`prove_runs`)
            with _runs_here(bundle, "torch", f"making its ONNX model ({ONNX_NAME}, exported when the bundle has none)"):
                self._session = session or bundle_session(bundle, self.card, weights)
            own = INT8_NAME if backend == "onnx-int8" else ONNX_NAME
            self._check_graph("the ONNX model given" if given else f"its {own}")
        # the model these scores name, as loaded and checked: a bundle replaced on disk later is not the one named
        self.identity = identity_fields(bundle, backend, self.card)

    def _check_graph(self, what: str) -> None:
        """Refuse an ONNX graph built for another input size than the card's (every film would be prepared at the
        card's size, and ONNX Runtime would fail on the first one with its own error instead of a reason) or for
        another number of classes (its scores would be read as the card's classes: a two-class graph as the
        multiclass task's answered, with a class probability missing), as the torch backend refuses such weights."""
        side = self._session.get_inputs()[0].shape[-2:]
        if all(isinstance(n, int) for n in side) and list(side) != [self.card.size] * 2:
            raise ValueError(f"{self.bundle}: {what} reads {side[0]} x {side[1]} images, and bundle.json says "
                             f"{self.card.size} (the size films are prepared at), so the card does not describe this "
                             "model; restore the bundle from a good copy")
        scores = self._session.get_outputs()[0].shape[-1]
        if isinstance(scores, int) and scores != len(self.card.classes):
            raise ValueError(f"{self.bundle}: {what} gives {scores} scores a film, and bundle.json names "
                             f"{len(self.card.classes)} classes ({', '.join(self.card.classes)}), so the card does not "
                             "describe this model; restore the bundle from a good copy")

    @property
    def model(self) -> torch.nn.Module:
        """The bundle's torch model; an ONNX backend builds it when Grad-CAM first asks (under the lock, so once)."""
        with self.lock:
            if self._model is None:
                model, card = _torch_model(self.bundle)
                if card.files.get(WEIGHTS) != self.card.files.get(WEIGHTS):  # the folder was replaced since
                    raise ValueError(f"{self.bundle}: its weights are not those it was loaded with (the bundle was "
                                     "replaced since): load it again, so that heatmaps and scores come from one model")
                self._model = model
            return self._model

    def preprocess(self, grays: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded uint8 images of any size -> the uint8 (N, S, S) batch the model reads (bundle size and policy)."""
        return np.stack([self.card.spec.apply(g) for g in grays])

    def decodes_like(self, other: Predictor) -> bool:
        """Whether a film decoded for ``other`` is decoded as this model reads it (the same reduction on decoding),
        so that a second stage reuses the first stage's pixels instead of decoding the file again (predict, serve)."""
        return self.card.spec.decode_target == other.card.spec.decode_target

    def content_warnings(self, images: np.ndarray) -> list[list[str]]:
        """Per film of a :meth:`preprocess` batch: why it does not look like the training films
        (:mod:`pneumoscan.data.appearance`); from a bundle that records no appearance, that the content was not
        checked (:data:`~pneumoscan.data.scope.CONTENT_UNCHECKED`), with every reading: said once at the start, the
        readings themselves looked checked, noise read PNEUMONIA in bold red on the web page."""
        if self.appearance is None:
            return [[CONTENT_UNCHECKED.text()] for _ in images]
        return self.appearance.warnings(images)

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, S, S) -> normalised float (N, 1, S, S) for the torch model (its backend and Grad-CAM)."""
        import torch

        from pneumoscan.data.transforms import to_input

        return to_input(torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1), self.card.mean, self.card.std)

    def onnx_inputs(self, images: np.ndarray) -> np.ndarray:
        """:meth:`inputs` for ONNX Runtime (:func:`onnx_input`)."""
        return onnx_input(images, self.card.mean, self.card.std)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Raw logits (N, C) of uint8 (N, S, S) images, ``batch_size`` a model call; :class:`NonFiniteScore` when any
        row is NaN or infinite. Any other batch is refused (ValueError): a float one in [0, 1] would be read as grey
        levels of 0 or 1 out of 255, and one of another size read by torch at that size, each given a score."""
        size = self.card.size
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == (size, size)):
            raise ValueError(f"expected the model's input, a uint8 array of shape (N, {size}, {size}), got "
                             f"{what_was_given(images)}: predict_array reads one decoded film, with its checks; "
                             "Predictor.preprocess makes a batch of them")
        if not len(images):
            return np.zeros((0, len(self.card.classes)), np.float32)
        if self.backend != "torch":  # ONNX Runtime sessions may run in several threads at once: no lock
            return session_logits(self._session, images, self.card.mean, self.card.std, self.batch_size)
        import torch

        with self.lock, torch.inference_mode():
            out = [self.model(self.inputs(images[i : i + self.batch_size])).numpy()
                   for i in range(0, len(images), self.batch_size)]
        return require_finite(np.concatenate(out))

    def probabilities(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """Temperature-calibrated class probabilities (N, C); with ``tta`` the mean over :data:`TTA_VIEWS`.
        :class:`NonFiniteScore` when any row is NaN or infinite."""
        if not tta:
            return require_finite(softmax(self.logits(images), self.card.temperature))
        # map: no view is held while the next is made
        return require_finite(tta_probabilities(map(self.logits, tta_views(images)), self.card.temperature))

    def finite_probabilities(self, images: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, bad): :meth:`probabilities` for the rows with finite scores (NaN in the rows of ``bad``),
        so one batch can answer its good images and refuse the others."""
        bad = np.zeros(len(images), bool)
        while True:  # each failure marks at least one more row, so this ends
            keep = np.flatnonzero(~bad)
            if not len(keep):
                probs = np.zeros((0, len(self.card.classes)))
                break
            try:
                probs = self.probabilities(images[keep], tta=tta)
                break
            except NonFiniteScore as e:
                bad[keep[e.bad]] = True
        out = np.full((len(images), len(self.card.classes)), np.nan)
        out[keep] = probs
        return out, bad

    def positive_probability(self, probs: np.ndarray) -> np.ndarray:
        """P(positive class) per row (1 - P(normal) for the multiclass task)."""
        return self.task.positive_probability(probs)

    def threshold(self, tta: bool = False) -> float:
        """The operating threshold chosen on validation for plain or for test-time-augmented scores. Averaging
        views shifts the scores (one etiology bundle's validation sensitivity at its plain threshold fell from
        0.772 to 0.733 with TTA), so each mode keeps the operating point validated for it."""
        if not tta:
            return self.card.threshold
        if self.card.tta_threshold is None:
            if self.backend == "onnx-int8":  # the INT8 sidecar's thresholds are chosen by export --int8, not training
                raise ValueError("this bundle's INT8 model has no threshold validated for test-time augmentation: "
                                 f"predict without tta (--tta), or run `pneumoscan export {self.bundle} --int8 --data "
                                 "RUN/split.csv` again")
            raise ValueError("this bundle has no threshold validated for test-time augmentation (it was trained "
                             "before pneumoscan chose one): predict without tta (--tta), or train it again")
        return self.card.tta_threshold

    def label(self, probability: float, tta: bool = False) -> str:
        """The positive class at or above the mode's threshold, else the negative (first) class."""
        if not np.isfinite(probability):
            raise NonFiniteScore(np.ones(1, bool))
        return self.card.positive if probability >= self.threshold(tta) else self.card.classes[0]

    def near_threshold(self, probability: float, tta: bool = False) -> bool | None:
        """Whether a reading lies within the 95 % confidence interval of the bundle's threshold
        (:attr:`BundleCard.threshold_interval`): it could have been called either way. None when the bundle records
        no such interval (an older bundle, a fixed threshold, a class the policy reads of one patient)."""
        interval = self.card.tta_threshold_interval if tta else self.card.threshold_interval
        return bool(interval[0] <= probability <= interval[1]) if interval else None

    def reading_fields(self, probability: float, tta: bool = False) -> dict:
        """A positive-class probability as the fields of a reading, built here only: the probability, the label at
        the mode's threshold, that threshold, and whether the reading is near it."""
        return {
            "probability": probability,
            "label": self.label(probability, tta),
            "threshold": self.threshold(tta),
            "near_threshold": self.near_threshold(probability, tta),
        }

    def reading(self, probabilities: np.ndarray, tta: bool = False) -> dict:
        """One film's class probabilities, (C,), as a reading: :meth:`reading_fields` and the probability of each class
        (the service's batches read them so)."""
        return {**self.reading_fields(float(self.positive_probability(probabilities[None])[0]), tta),
                "probabilities": {c: float(v) for c, v in zip(self.card.classes, probabilities)}}

    def class_fields(self, probabilities: np.ndarray) -> dict[str, float]:
        """One film's class probabilities, (C,), as ``probability_<class>`` columns for a multiclass bundle
        (:attr:`Task.class_columns`; the numbers of :meth:`reading`'s ``probabilities``): its label is only normal vs
        pneumonia, and these give the most probable class, or bacteria vs virus, to a reader of the results file.
        Empty for two classes, whose ``probability`` says it all."""
        return {column: float(v) for column, v in zip(self.task.class_columns, probabilities)}

    def preprocess_array(self, gray: np.ndarray) -> np.ndarray:
        """:meth:`preprocess` of one array a caller made (:meth:`predict_array`, Grad-CAM's ``explain_array``): a
        blank one (no pixels, or one grey level, or nearly) or one of too few grey levels (a thresholded film) is
        refused with :class:`DecodeError`, as :func:`read_gray` refuses such a film (:func:`check_array`): an array
        made another way (Pillow's convert, a viewer's export) has not passed those checks, and a score or a map of
        a uniform square would pass for a reading of a film."""
        images = self.preprocess([gray])  # its shape and type checked first
        check_array(gray)
        return images

    def predict_array(self, gray: np.ndarray, tta: bool = False) -> dict:
        """One decoded uint8 grayscale image of any size, preprocessed as the bundle says; a blank one is refused
        (:meth:`preprocess_array`). Its reading carries the fields a JPEG's row of :func:`predict_paths` carries
        besides its path, made by the same code (:meth:`Stages.scoped`): the scope warnings of a film without tags
        (a thumbnail, a strip: :func:`~pneumoscan.data.scope.scope_warnings` of its size), its content check's,
        that of a second stage run alone, the model's identity and ``in_scope``: a 1 x 2 array had read as any
        film, where the same pixels as a PNG were warned of as a thumbnail."""
        images = self.preprocess_array(gray)
        height, width = gray.shape
        described = {"warnings": scope_warnings(None, width, height, reduced_to=self.card.spec.decode_target)}
        scoped = Stages(self, alone=alone_warning(self.card.task)).scoped(described, self.content_warnings(images)[0])
        return {**self.reading(self.probabilities(images, tta=tta)[0], tta), **scoped}


def identity_fields(bundle: Path | str, backend: str = "torch", card: BundleCard | None = None) -> dict[str, str]:
    """``model_id`` and ``model_version`` (:func:`.onnx_runtime.model_version`): the model every score names, in
    predict's rows, the web service's answers and the SR and FHIR reports, built here only. ``backend`` is part of
    it: FP32 and INT8 results differ. ``card``: the bundle's card when already loaded."""
    from .onnx_runtime import model_version

    return {"model_id": (card or load_card(bundle)).model_id, "model_version": model_version(bundle, backend, card)}


def scoring_card(bundle: Path | str, card: BundleCard, backend: str) -> BundleCard:
    """The card of the model ``backend`` scores with: the INT8 model's (:func:`.onnx_runtime.int8_card`, its sidecar
    checked), else ``card``; what a result scored so states of its threshold, as the Predictor's card does."""
    if backend != "onnx-int8":
        return card
    from .onnx_runtime import int8_card, int8_sidecar

    return int8_card(card, int8_sidecar(bundle, card))


def check_built_from(predictor: Predictor, card: BundleCard) -> None:
    """Refuse (ValueError, with the reason) a predictor whose model was built from another card than ``card``, its
    bundle's as read before the model was loaded (:class:`~pneumoscan.models.on_disk.BundleOnDisk`), the INT8
    sidecar's thresholds and figures allowed for (:func:`scoring_card`): a bundle replaced while the model loaded
    (seconds for ONNX or an ensemble) would be scored with one card and checked against, or named by, the other."""
    if predictor.card != scoring_card(predictor.bundle, card, predictor.backend):
        raise ValueError(f"the bundle {predictor.bundle} was replaced while its model was loaded (its bundle.json is "
                         "not the one read before): start again once it is settled")


def onnx_input(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 (N, S, S) -> the normalised float32 (N, 1, S, S) an ONNX graph reads, in numpy: ``to_input``'s formula,
    step for step, so both backends read the same numbers (tests/test_startup.py holds them equal)."""
    pixels = np.ascontiguousarray(images)[:, None].astype(np.float32)
    return (pixels / np.float32(255.0) - np.float32(mean)) / np.float32(std)


def session_logits(sess: ort.InferenceSession, images: np.ndarray, mean: float = 0.0, std: float = 1.0,
                   batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Raw logits of one of pneumoscan's ONNX graphs (a bundle's, an ensemble member's, an INT8 one) on uint8
    (N, S, S) images, ``batch_size`` a run: the one place that feeds such a graph (its input and output names,
    :func:`onnx_input`), for the Predictor's ONNX backends, ensemble calibration and INT8 export alike. The defaults
    read the images as an ensemble's input, [0, 1]. :class:`NonFiniteScore` when any row is NaN or infinite, which
    would otherwise reach a label or the temperature and threshold fits."""
    from .onnx_runtime import INPUT, OUTPUT

    out = [sess.run([OUTPUT], {INPUT: onnx_input(images[i : i + batch_size], mean, std)})[0]
           for i in range(0, len(images), batch_size)]
    return require_finite(np.concatenate(out))


def _torch_model(bundle: Path | str) -> tuple[torch.nn.Module, BundleCard]:
    """The bundle's model in torch, its weights checked against their SHA-256 (:func:`load_bundle`), and the card
    that recorded them. torch runs no more threads than this process may use (:func:`cap_torch_threads`)."""
    import torch

    from pneumoscan.models.bundle import load_bundle

    cap_torch_threads()
    model, card = load_bundle(bundle)
    # NHWC: oneDNN's depthwise convolutions run ~1.5x faster (EfficientNet-Lite0, 2 cores); same logits to ~1e-5
    return model.to(memory_format=torch.channels_last), card


# Test-time views are warped this many pixels at a time (:func:`tta_views`): torchvision's warp holds its input as
# float32 with a float mask channel, and its output, about 9 bytes a pixel besides the view: 949 MiB for a whole
# evaluation's 3,000 films of 192 px at once, where a block of 4 Mpx holds about 36 MiB whatever the number of films
TTA_BLOCK_PIXELS = 1 << 22


def tta_views(images: np.ndarray) -> Iterator[np.ndarray]:
    """Each :data:`TTA_VIEWS` view of a uint8 (N, S, S) batch; areas moved in from outside are black. The warps
    are torchvision's, so ``--tta`` loads torch whatever the backend. Each view is warped
    :data:`TTA_BLOCK_PIXELS` at a time into a uint8 array of its own, so a view costs the batch's bytes once more
    whatever the number of films."""
    import torch

    cap_torch_threads()
    x = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    size = images.shape[-1]
    for zoom, shift in TTA_VIEWS:
        # made in a call, not held here: the view the caller has read is freed before the next one is made
        yield images if zoom == 1.0 and shift == 0.0 else _warped(x, zoom, round(shift * size))


def _warped(x: torch.Tensor, zoom: float, moved: int) -> np.ndarray:
    """One test-time view of uint8 (N, 1, S, S) ``x``: zoomed and shifted ``moved`` pixels, a block of
    :data:`TTA_BLOCK_PIXELS` a warp."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    view = np.empty(x.shape[:1] + x.shape[2:], x.numpy().dtype)
    for films in blocks(len(view), view.shape[1] * view.shape[2], TTA_BLOCK_PIXELS):
        view[films] = F.affine(
            x[films], angle=0.0, translate=[moved, moved], scale=zoom, shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
        )[:, 0].numpy()  # fmt: skip
    return view


def tta_probabilities(view_logits: Iterable[np.ndarray], temperature: float) -> np.ndarray:
    """The test-time augmentation rule, written once: each view's logits calibrated (softmax at ``temperature``),
    then the views' probabilities averaged. A TTA threshold holds only for scores computed this way, so training,
    ensembles and INT8 export choose theirs on this, and predict and serve apply it."""
    return np.mean([softmax(logits, temperature) for logits in view_logits], axis=0)


def expand_paths(
    paths: Iterable[str | Path], exclude: Path | None = None, skipped: list[dict[str, str]] | None = None,
    refuse: bool = False,
) -> list[tuple[str, str | None]]:
    """(file, error) for every input: files as given, folders walked as discovery walks them
    (:func:`pneumoscan.data.walk.walk`): their JPEG/PNG/DICOM files, and an error for each entry named like one that
    cannot be read (a broken link, a link loop, a FIFO). What a folder holds besides (hidden and system files, other
    extensions, the ``exclude`` folder, such as the heatmaps) is appended to ``skipped`` as ``{"path", "reason"}``.
    A path given that names no film is an error row: a folder without images (what it holds instead named: films of
    another format are the wrong folder; the ``exclude`` folder, this run's own, is not what it holds), an empty path
    (which would mean the current folder), a path not there (:data:`NO_SUCH` whatever its name: a folder's may hold
    a dot, a film's may have none) or that cannot be looked at (:func:`_looked_up`) and a CSV manifest, which other
    commands take as DATA. With ``refuse`` (paths a user named, which they can mend: :func:`predict_paths`) the
    paths are refused (ValueError naming them) when none of them names a film, or none is given, before any is read:
    a run that would read nothing. One among others that do stays a row, so that a job over each day's folder reads
    the days that hold films."""
    paths = list(paths)  # counted below: a generator has no length
    if refuse and not paths:
        raise ValueError("no film or folder given")
    out: list[tuple[str, str | None]] = []
    unnamed: list[tuple[str, str]] = []  # each path given that names no film, with why
    for text in map(str, paths):
        given = Path(text)
        if not text:
            fault = "empty path"
        elif (missing := _looked_up(given)) is not None:
            fault = missing
        elif given.suffix.lower() == ".csv":  # evaluate, split and train take a manifest as DATA: predict does not
            fault = (f"a CSV manifest, not a film: predict reads films and folders of them; score a manifest's "
                     f"labelled films with `pneumoscan evaluate BUNDLE {shown(given)}`, or give the folder that "
                     "holds its films")
        elif not given.is_dir():
            out.append((str(given), None))  # decoding reports missing, unreadable or special files
            continue
        else:
            entries = walk(given, exclude)
            films = [(str(e.path), e.reason or None) for e in entries if e.kind != "skipped"]
            besides = [e for e in entries if e.kind == "skipped"]
            if skipped is not None:
                skipped.extend({"path": str(e.path), "reason": e.reason} for e in besides)
            out.extend(films)
            if films:
                continue
            fault = f"folder holds no {formats()} files"
            besides = [e for e in besides if e.reason != OUTPUT_FOLDER]  # this run's own, maybe not there yet
            if besides:  # what it holds instead (films of another format: the wrong folder)
                others = "entry" if len(besides) == 1 else "entries"
                fault += (f" (searched with its subfolders; {len(besides)} other {others} skipped, such as "
                          f"{shown(besides[0].path)}: {besides[0].reason})")
        shown_as = str(given) if text else text
        out.append((shown_as, fault))
        unnamed.append((shown_as, fault))
    if refuse and unnamed and len(unnamed) == len(paths):
        if unnamed == [("", "empty path")]:
            given_path("", "film or folder")  # the refusal of every command's empty path
        raise ValueError(_none_named(unnamed))
    return out


def _none_named(unnamed: list[tuple[str, str]], named: int = 3) -> str:
    """The refusal of paths none of which names a film: the path and why for one, else how many and the first
    ``named`` of them, each with why."""

    def said(path: str, fault: str) -> str:
        return f"{shown(path)}: {fault}" if path else "'' (an empty path: is the variable that names it set?)"

    if len(unnamed) == 1:
        return said(*unnamed[0])
    more = f"; and {len(unnamed) - named} more" if len(unnamed) > named else ""
    return (f"none of the {len(unnamed)} paths given names a film: "
            + "; ".join(said(path, fault) for path, fault in unnamed[:named]) + more)


NO_SUCH = "no such file or folder"  # a path given that is not there: named so whatever it was meant to be


def _looked_up(path: Path) -> str | None:
    """Why the path given cannot be looked at, or None where it is there: :data:`NO_SUCH` only where it is not there
    (or a part of it is no folder); any other fault (no permission, a link loop, a name too long, a failing mount)
    in its own words, which "not there" would hide (``os.path.lexists`` is False for them all)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return NO_SUCH
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    return None


def _decode(path: str, target: int) -> np.ndarray | str:
    """The decoded image, or the reason it cannot be read (worker thread: Pillow and pydicom release the GIL)."""
    try:
        return read_gray(path, target=target)
    except DecodeError as e:
        return str(e)


def _decode_described(path: str, target: int) -> tuple[np.ndarray, dict] | str:
    """The decoded image and :func:`~pneumoscan.data.scope.describe`'s fields for it, a DICOM read once for both
    (:func:`~pneumoscan.data.scope.read_described`), or the reason it cannot be read (worker thread, as
    :func:`_decode`)."""
    try:
        return read_described(path, read_dicom(path), target)
    except DecodeError as e:
        return str(e)


def _decoded(
    items: list[tuple[str, str | None]], target: int, batch_size: int
) -> Iterator[list[tuple[str, tuple[np.ndarray, dict] | str, str | None]]]:
    """Batches of (path, (image, :func:`~pneumoscan.data.scope.describe`'s fields) or error, its :func:`.file_stamp`
    taken before it was read); the next batch decodes in threads while the caller runs the model."""
    with ThreadPoolExecutor(usable_cores()) as pool:

        def read(path: str) -> tuple[str, Future, str | None]:
            stamp = file_stamp(path)  # before the read starts: one taken after could see the file already removed
            return path, pool.submit(_decode_described, path, target), stamp

        def submit(batch: list[tuple[str, str | None]]) -> list[tuple[str, Future | str, str | None]]:
            return [(path, error, None) if error else read(path) for path, error in batch]

        batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        pending = submit(batches[0]) if batches else []
        for k in range(len(batches)):
            current, pending = pending, submit(batches[k + 1]) if k + 1 < len(batches) else []
            yield [(path, job if isinstance(job, str) else job.result(), stamp) for path, job, stamp in current]


def check_stages(first: str, second: str) -> str:
    """The first stage's label that hands a film to the second stage (etiology reads the films a pneumonia model
    calls pneumonia): the second task says which tasks it follows (:meth:`Task.handoff`). A first stage whose classes
    hold the second's (a multiclass model gives P(bacteria) and P(virus)) is refused with that reason: the answer
    would carry two etiologies, the first model's and the second's, which may disagree. So is a handoff that is no
    call of the first stage (``follows={"pneumonia": "Pneumonia"}``, misspelt): the second stage would never be
    shown a film, and every film would read as one the first stage kept."""
    task, then = get_task(first), get_task(second)
    if task.multiclass and then.follows and set(then.classes) < set(task.classes):
        raise ValueError(f"etiology (--etiology) after a {first} bundle: a {first} model already tells "
                         f"{' and '.join(then.classes)} apart, and a second stage would add another answer to its own; "
                         f"use a {' or '.join(then.follows)} bundle as the first stage, or the {first} bundle alone")
    try:
        handoff = then.handoff(task)
    except ValueError as e:
        swapped = (f"; the bundles look swapped: give the {second} bundle first and the {first} bundle as etiology "
                   "(--etiology)" if second in task.follows else "")
        raise ValueError(f"etiology (--etiology) needs a second stage that follows the first (a pneumonia bundle and "
                         f"an etiology bundle, for instance): {e}{swapped}") from None
    calls = dict.fromkeys((task.classes[0], task.positive))  # Predictor.label's two answers
    if handoff not in calls:
        raise ValueError(f"the {second} task follows {first} on the call {handoff!r}, which a {first} model never "
                         f"gives (it calls {' or '.join(map(repr, calls))}), so no film would reach the {second} "
                         f"stage: register {second} with follows naming one of those calls, spelt as the {first} "
                         "task names it")
    return handoff


def check_bundle_stages(bundle: Path | str, etiology: Path | str) -> str:
    """:func:`check_stages` of two bundles, from their cards, before either model is built: a bundle whose task is
    not registered in this process is refused with what to import (:func:`card_task`)."""
    first, second = (card_task(load_card(b), b) for b in (bundle, etiology))
    return check_stages(first.name, second.name)


def alone_warning(task: str) -> str | None:
    """What every answer of a model run without the stage it follows must say, in the words of the stages it follows
    (:attr:`Task.follows`): it assumes a film shows the call that hands a film over, and cannot give those stages'
    other call (an etiology model alone answers bacteria or virus for any film, a normal one included, as if it
    showed pneumonia). A first stage whose task is not registered in this process is named without its other call."""
    follows = get_task(task).follows
    if not follows:
        return None
    # a first stage calls its positive class or its first class (Predictor.label): the other call than the handoff
    firsts = [get_task(name) for name in follows if name in list_tasks()]
    others = [first.positive if follows[first.name] == first.classes[0] else first.classes[0] for first in firsts]
    assumed = " or ".join(dict.fromkeys(label.lower() for label in follows.values()))
    cannot = f" and cannot call it {' or '.join(dict.fromkeys(c.lower() for c in others))}" if others else ""
    after = " or ".join(follows)
    return (f"this {task} model assumes the film shows {assumed}{cannot}: run it as the second stage after "
            f"{'an' if after[0].lower() in 'aeiou' else 'a'} {after} model (--etiology)")


@dataclasses.dataclass(frozen=True)
class Stages:
    """The models that read a film and the rules that join them into one reading, written once for ``predict``
    (:func:`predict_paths`) and the web service, which the docs say give the same answer: which call of the first
    stage hands a film to the second (:meth:`hands_over`), which pixels the second reads (:attr:`second_target`),
    and the fields every reading of a film carries besides the stages' own (:meth:`scoped`). The two differ only in
    how films reach the models: files in batches, or uploads through the service's lanes and batcher."""

    first: Predictor
    second: Predictor | None = None
    handoff: str | None = None  # the first stage's call that hands a film to the second (check_stages)
    alone: str | None = None  # said with every reading of a second stage run alone (alone_warning)
    tta: bool = False  # read with test-time augmentation, at the thresholds validated for it (load checked them)
    heatmaps: bool = False  # readied to draw Grad-CAM overlays (ready_stages proved the model draws them)
    heatmap_dir: Path | None = None  # where score_paths writes them (overlays_into)

    @classmethod
    def load(cls, bundle: Path | str, etiology: Path | str | None = None, backend: str = "torch",
             batch_size: int = PREDICT_BATCH, tta: bool = False) -> Stages:
        """``bundle``'s model, then ``etiology``'s (a bundle whose task follows ``bundle``'s) when given. A pair that
        does not chain is refused from the cards, before either model is built (or exported), and a bundle without
        a threshold validated for ``tta`` before any film is read."""
        handoff = check_bundle_stages(bundle, etiology) if etiology is not None else None
        first = Predictor(bundle, batch_size, backend)
        second = Predictor(etiology, batch_size, backend) if etiology is not None else None
        for stage in filter(None, (first, second)):
            stage.threshold(tta)
        return cls(first, second, handoff, alone_warning(first.card.task), tta)

    def overlays_into(self, folder: Path | str) -> Stages:
        """These stages, their Grad-CAM overlays written into ``folder``: what a caller that reads many batches, each
        with a folder of its own (``listen``'s studies), hands to :func:`score_paths` for each. Refused for stages
        not readied for heatmaps (:func:`ready_stages`), whose model was not proven to draw them."""
        if not self.heatmaps:
            raise ValueError("a folder of overlays given to stages not readied for heatmaps: give ready_stages "
                             "heatmaps=True")
        return dataclasses.replace(self, heatmap_dir=Path(folder))

    def said_at_start(self) -> list[str]:
        """What ``predict`` and ``serve`` say once, before any reading: a second stage used alone, and films not
        checked against a stage's training films' appearance (each reading says both too), and what the readings
        would otherwise be silent about: each stage's caveats (:attr:`BundleCard.caveats`: a guessed threshold, an
        uncalibrated temperature)."""
        alone = [self.alone] if self.alone else []
        stages = [stage for stage in (self.first, self.second) if stage is not None]
        unchecked = [f"{shown(stage.bundle)} records no appearance of its training films (trained on fewer than "
                     f"{MIN_FILMS}, or before bundles kept one): films unlike them (noise, a form, a turned film) are "
                     "not flagged" for stage in stages if stage.appearance is None]
        caveats = [f"{shown(stage.bundle)}: {caveat}" for stage in stages for caveat in stage.card.caveats]
        return alone + unchecked + caveats

    def hands_over(self, label: str | None) -> bool:
        """Whether the second stage reads a film the first stage called ``label``."""
        return self.second is not None and label == self.handoff

    @property
    def second_target(self) -> int | None:
        """The decode target the second stage reads a film at, None when the first stage's decode serves it
        (:meth:`Predictor.decodes_like`): a film is decoded again only for a second stage trained on another size."""
        if self.second is None or self.second.decodes_like(self.first):
            return None
        return self.second.card.spec.decode_target

    def scoped(self, described: dict, content: Sequence[str]) -> dict:
        """A film's fields besides the stages' readings: what :func:`describe` found (its UIDs, its facts), its
        warnings in their one order (the header's, then the pixels' ``content``: :meth:`Predictor.content_warnings`,
        then :attr:`alone`), the first model's identity, and ``in_scope`` judged on that final list, by the rule that
        refuses a report (so any warning added to it counts)."""
        warnings = [*described["warnings"], *content, *([self.alone] if self.alone else [])]
        return {**described, "warnings": warnings, **self.first.identity, "in_scope": in_scope(warnings)}


class CannotRun(ValueError):
    """A model its runtime cannot run on this machine (:func:`prove_runs`), refused before any film is read."""


# why torch fails where this process is refused memory both writable and executable (prctl PR_SET_MDWE, systemd's
# MemoryDenyWriteExecute=): oneDNN makes its convolutions' code at run time, and says only "could not create a
# primitive"
NO_WX_MEMORY = ("torch's oneDNN makes code at run time in memory both writable and executable, and this process is "
                "refused such memory (MemoryDenyWriteExecute=yes in a systemd unit, or a policy like it: SELinux's "
                "deny_execmem, a seccomp profile): lift that policy for this process")


def wx_memory_refused() -> bool:
    """Whether this process is refused memory both writable and executable: one such page asked for, and given back
    (no such page exists to ask for on Windows: False)."""
    import mmap

    exec_flag = getattr(mmap, "PROT_EXEC", None)
    if exec_flag is None:
        return False
    try:
        mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | exec_flag).close()
    except PermissionError:
        return True
    return False


def prove_runs(stages: Stages, explained: Predictor | None = None, without: str = "") -> None:
    """Score one film-sized input (noise at the side the model reads) by each stage's backend and, with
    ``explained``, draw one Grad-CAM of it, before any film is read: a model its runtime cannot run here (torch where
    memory both writable and executable is refused, :data:`NO_WX_MEMORY`) had started, been probed healthy and failed
    every reading (or every heatmap). :class:`CannotRun` names the model, the error and, where it is that, the
    policy; where the Grad-CAM is what failed, then ``without``: how to go on without heatmaps. A model Grad-CAM
    finds no map in is not refused here: each request for its heatmap is, with the reason."""
    for predictor in filter(None, (stages.first, stages.second)):
        runtime = "torch" if predictor.backend == "torch" else "ONNX Runtime"
        with _runs_here(predictor.bundle, runtime, "scoring a film-sized test input"):
            predictor.finite_probabilities(predictor.preprocess([_test_film(predictor)]))
    if explained is None:
        return
    from .explain import NoSpatialMap, explain_array  # Grad-CAM's torch and library, only when it is proven

    with _runs_here(explained.bundle, "torch", "Grad-CAM of a film-sized test input", without):
        try:
            explain_array(explained, _test_film(explained))
        except NoSpatialMap:  # the runtime ran: this model (or this noise) has no map to draw
            pass


def _test_film(predictor: Predictor) -> np.ndarray:
    """A film as ``predictor``'s model reads it, at its side: noise of every grey level (a blank one is refused)."""
    return np.random.default_rng(0).integers(0, 256, (predictor.card.size,) * 2, dtype=np.uint8)


@contextlib.contextmanager
def _runs_here(bundle: Path | str, runtime: str, doing: str, without: str = "") -> Iterator[None]:
    """An error of the runtime inside (torch's RuntimeError, ONNX Runtime's own) as :class:`CannotRun`, saying what
    was being done, with :data:`NO_WX_MEMORY` where torch ran it and that memory is refused, then ``without`` (how
    to go on without doing it). A refusal with its reason (OSError, ValueError) passes as it is."""
    try:
        yield
    except (OSError, ValueError):
        raise
    except Exception as e:
        hint = f"; {NO_WX_MEMORY}" if runtime == "torch" and wx_memory_refused() else ""
        raise CannotRun(f"{shown(bundle)}: its model cannot run on this machine: {doing} in {runtime} failed "
                        f"({type(e).__name__}: {e}){hint}{f'; or {without}' if without else ''}") from e


def predict_paths(
    bundle: Path | str,
    paths: Sequence[str | Path] | str | Path,
    backend: str = "torch",
    batch_size: int = PREDICT_BATCH,
    tta: bool = False,
    etiology: Path | str | None = None,
    heatmap_dir: Path | str | None = None,
    progress: bool = False,
    skipped: list[dict[str, str]] | None = None,
) -> list[dict]:
    """One row per input image (``paths``: files and folders, or one path), in input order: ``path, probability,
    label, threshold, near_threshold, warnings, in_scope, model_id, model_version`` (the scope checks of
    :mod:`pneumoscan.data.scope`; a DICOM also gets its ``*_instance_uid`` fields; a multiclass bundle's also
    ``probability_<class>``: :meth:`Predictor.class_fields`) (plus the second stage's reading with ``etiology``, a
    bundle whose task follows this one's, named from its task (:func:`stage_fields`: ``etiology_probability_virus,
    etiology_label, etiology_near_threshold, ..., etiology_warnings, etiology_in_scope`` for an etiology bundle, its
    warnings those of its own content check, :func:`stage_scope`) -- filled only for the images the first stage
    hands over -- and ``heatmap`` with ``heatmap_dir``), or ``path, error`` for an input that could not be read. A
    reading whose second stage failed keeps its first stage's fields, with the second's empty and an ``error``.
    What the searched folders hold besides films is appended to ``skipped`` (see :func:`expand_paths`). A path that
    names no film (not there, a folder that holds none, a CSV manifest, an empty path) is an error row among paths
    that do; when none of ``paths`` names a film, ValueError is raised naming them (or saying none is given), before
    any film is read or any file written. The reading's rules are the web service's (:class:`Stages`): the bundles
    loaded and checked by :func:`ready_stages`, the films read by :func:`score_paths`.

    Images are decoded once (reduced towards the model size, as in training's cache); the Grad-CAM
    overlays and a second stage that decodes to the same size reuse those pixels.
    """
    paths = path_list(paths)  # one path given alone, not its characters
    heatmap_dir = _heatmap_folder(heatmap_dir, paths) if heatmap_dir is not None else None
    stages = _checked_stages(bundle, etiology, backend, batch_size, tta, heatmap_dir is not None)
    # the paths a user named, searched once the bundles are known sound (their faults said first, as every command
    # says them) and before any file is written: when none names a film (not there, a folder without one), the run
    # is refused, not one error row a script may take for the run's results
    items = expand_paths(paths, exclude=heatmap_dir, skipped=skipped, refuse=True)
    return _score_items(_readied(stages, heatmap_dir), items, heatmap_dir, progress)


def ready_stages(bundle: Path | str, etiology: Path | str | None = None, backend: str = "torch",
                 batch_size: int = PREDICT_BATCH, tta: bool = False, heatmaps: bool = False,
                 heatmap_dir: Path | None = None) -> Stages:
    """The stages that read films (:meth:`Stages.load`), with Grad-CAM overlays when ``heatmaps``, refused before the
    first film is read where they cannot (:func:`_checked_stages`; ``heatmap_dir``, a run's one folder of overlays,
    then made: :func:`_readied`): what :func:`predict_paths` loads for one run, and what a caller that reads many
    batches of files (``listen``, a study at a time) loads once and hands to :func:`score_paths` for each, as the web
    service keeps its :class:`Stages`. They carry what they were readied with (``tta``, ``heatmaps``, which
    ``heatmap_dir`` implies, and that folder), so that each batch is read as they were checked for, said once; a
    caller that gives each batch a folder of its own readies them with ``heatmaps`` alone, and names each batch's
    folder with :meth:`Stages.overlays_into`."""
    stages = _checked_stages(bundle, etiology, backend, batch_size, tta, heatmaps or heatmap_dir is not None)
    return _readied(stages, heatmap_dir)


def _checked_stages(bundle: Path | str, etiology: Path | str | None, backend: str, batch_size: int, tta: bool,
                    heatmaps: bool) -> Stages:
    """The stages loaded, and everything that would refuse the run checked before the first film is read: a model
    that cannot run here stopped the run at its first batch with a traceback, and a model that draws no heatmap
    (with ``heatmaps``) after every film was scored."""
    if heatmaps and backend == "onnx-int8":  # before any model is built
        from .explain import INT8_HEATMAPS

        raise ValueError(f"heatmap_dir (--heatmaps) with backend (--backend) onnx-int8: {INT8_HEATMAPS}")
    stages = Stages.load(bundle, etiology or None, backend, batch_size, tta)
    prove_runs(stages, stages.first if heatmaps else None)
    if heatmaps:
        from .explain import check_explainable

        check_explainable(stages.first)
    return dataclasses.replace(stages, heatmaps=heatmaps)


def _readied(stages: Stages, heatmap_dir: Path | None) -> Stages:
    """``stages``, checked (:func:`_checked_stages`), with their ``heatmap_dir`` made (a folder that cannot be made is
    the run's one line, no warning before it), then what the user should know of the readings to come said once."""
    if heatmap_dir is not None:
        heatmap_dir.mkdir(parents=True, exist_ok=True)
    for said in stages.said_at_start():  # once the options are sound: of the readings to come
        log.warning("%s", said)
    return dataclasses.replace(stages, heatmap_dir=heatmap_dir)


def score_paths(stages: Stages, paths: Sequence[str | Path] | str | Path, *, progress: bool = False,
                skipped: list[dict[str, str]] | None = None) -> list[dict]:
    """:func:`predict_paths`' rows of ``paths``, read by ``stages`` as :func:`ready_stages` gave them: with the
    ``tta`` they were loaded with, and their overlays in their ``heatmap_dir`` where they were readied for heatmaps.
    The models are not loaded again, nor checked again, for each call. ``progress`` and ``skipped`` are named: a
    call written when ``tta`` stood third would otherwise run with ``progress`` in its place, silently without TTA."""
    given = path_list(paths)
    if stages.heatmaps and stages.heatmap_dir is None:  # overlays readied for, and no folder to write them into
        raise ValueError("stages readied for heatmaps need the folder of their overlays: ready_stages' heatmap_dir, "
                         "or Stages.overlays_into for each batch")
    folder = _heatmap_folder(stages.heatmap_dir, given) if stages.heatmap_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    return _score_items(stages, expand_paths(given, exclude=folder, skipped=skipped), folder, progress)


def _score_items(stages: Stages, items: list[tuple[str, str | None]], folder: Path | None,
                 progress: bool) -> list[dict]:
    """The rows of :func:`expand_paths`' ``items``, read by ``stages``, with their overlays in ``folder`` (made)."""
    predictor = stages.first
    rows: list[dict] = []
    try:
        with progress_bar(enabled=progress) as bar:
            task = bar.add_task(f"Predicting {len(items)} image{'s' if len(items) != 1 else ''}", total=len(items))
            for batch in _decoded(items, predictor.card.spec.decode_target, predictor.batch_size):
                for row, gray, film in _read_batch(stages, batch, panels=folder is not None):
                    rows.append(row)  # before its overlay is written: a stop removes every overlay rows name
                    # no overlay of a film not read or of a model that gave no score
                    if folder is not None and gray is not None and "label" in row:
                        _add_heatmap(row, predictor, gray, film, folder, stages.tta)
                bar.advance(task, len(batch))
    except BaseException:
        # stopped (Ctrl-C, SIGTERM, a fault): no results name the overlays written so far, which a rerun would
        # then file beside its own under other names
        for row in rows:
            if "heatmap" in row:
                Path(row["heatmap"]).unlink(missing_ok=True)
        raise
    return rows


def _read_batch(stages: Stages, batch: list[tuple[str, tuple[np.ndarray, dict] | str, str | None]],
                panels: bool) -> Iterator[tuple[dict, np.ndarray | None, np.ndarray | None]]:
    """Each decoded film's row in input order (``path, error`` for one that could not be read or changed since),
    with the film as the model read it and, with ``panels``, as the overlay shows it (None where there is none):
    the batch scored at once (:func:`_classify`), each row then given its scope warnings, UIDs and model."""
    readable = [(path, read[0]) for path, read, _ in batch if not isinstance(read, str)]
    results = iter(_classify(stages, [p for p, _ in readable], [g for _, g in readable]))
    second_fields = stage_fields(stages.second.task) if stages.second is not None else {}
    for path, read, stamp in batch:
        if isinstance(read, str):
            yield {"path": path, "error": read}, None, None
            continue
        gray, described = read
        row, film = {"path": path, **next(results)}, None
        if "label" in row:  # a score carries its scope warnings, DICOM UIDs and model; an error row stays path,
            # error; the warnings so far are the pixels' (_classify)
            row.update(stages.scoped(described, row["warnings"]))
            if second_fields and (content := row[second_fields["warnings"]]) is not None:  # handed over
                scope = stage_scope(row["warnings"], content)
                row.update({second_fields[key]: value for key, value in scope.items()})
            film = _panel_film(path) if panels else None
            if file_stamp(path) != stamp:  # the pixels, the header (its UIDs) and the panel: one file's
                row = {"path": path, "error": CHANGED}
        yield row, gray, film


def _panel_film(path: str) -> np.ndarray | None:
    """The film decoded again at a panel's size, as the web service shows it: the model's copy (224 px a side,
    say) is too small to check the map against the anatomy. None where it cannot be read again."""
    from .explain import MAX_PANEL

    film = _decode(path, MAX_PANEL)
    return None if isinstance(film, str) else film


def _add_heatmap(row: dict, predictor: Predictor, gray: np.ndarray, film: np.ndarray | None, heatmap_dir: Path,
                 tta: bool) -> None:
    """The overlay of the film of ``row`` (read by the model as ``gray``, shown as ``film``) written into
    ``heatmap_dir`` and named in ``row["heatmap"]``; a film without a map (NaN, no gradient) gets a warning
    instead, and its reading stands."""
    from .explain import NoMapOfFilm, film_overlay

    try:
        png = film_overlay(predictor, gray, film, label=row["label"], tta=tta, warnings=row["warnings"])
    except NoMapOfFilm as e:
        row["warnings"].append(f"{NO_HEATMAP}: {e}")
    else:
        row["heatmap"] = str(write_new(heatmap_dir, Path(row["path"]).stem, ".png", png))


def _heatmap_folder(heatmap_dir: Path | str, paths: Sequence[str | os.PathLike]) -> Path:
    """The folder the overlays go to, checked before any model is built, and refused with the reason (a library
    caller gets the command's line) when it is no folder (a file: ``mkdir`` would say only "File exists") or is one
    of the folders predicted (its overlays would be refused as films on every later run)."""
    heatmap_dir = Path(heatmap_dir)
    if heatmap_dir.exists() and not heatmap_dir.is_dir():
        raise ValueError(f"heatmap_dir (--heatmaps) {heatmap_dir} is a {file_kind(heatmap_dir.stat().st_mode)}: "
                         "name a folder")
    searched = {Path(text).resolve() for text in map(str, paths) if text and Path(text).is_dir()}
    if heatmap_dir.resolve() in searched:
        raise ValueError(f"heatmap_dir (--heatmaps) {heatmap_dir} is a folder being predicted: its overlays would be "
                         "refused as films (pneumoscan outputs) on every later run; choose another folder")
    return heatmap_dir


def _classify(stages: Stages, paths: Sequence[str], grays: Sequence[np.ndarray]) -> list[dict]:
    """Result fields for images decoded for the first stage, ``warnings`` the pixels' (the content check); the second
    stage reads only the images the first hands over (:meth:`Stages.hands_over`), decoded again when its training
    decoded them at another size (:attr:`Stages.second_target`), and checks their content against its own training
    films (its ``TASK_warnings``: :func:`stage_fields`); with the ``tta`` the stages were loaded with."""
    if not grays:
        return []
    first, second, tta = stages.first, stages.second, stages.tta
    images = first.preprocess(grays)
    probs, bad = first.finite_probabilities(images, tta=tta)
    rows = [{"error": NON_FINITE} if broken else
            {**first.reading_fields(float(p), tta), **first.class_fields(row), "warnings": unlike}
            for p, row, broken, unlike in zip(first.positive_probability(probs), probs, bad,
                                              first.content_warnings(images))]
    if second is not None:
        called = [i for i, row in enumerate(rows) if stages.hands_over(row.get("label"))]
        fields, stage = stage_fields(second.task), f"{second.task.name} stage"
        for row in rows:
            if "label" in row:
                row.update(dict.fromkeys(fields.values()))
        if called:
            target = stages.second_target
            picked = {i: grays[i] if target is None else _decode(paths[i], target) for i in called}
            for i, gray in picked.items():
                if isinstance(gray, str):  # readable a moment ago: changed or removed since
                    rows[i]["error"] = f"{stage}: {gray}"
            ok = [i for i, gray in picked.items() if not isinstance(gray, str)]
            if ok:
                films = second.preprocess([picked[i] for i in ok])
                probs, bad = second.finite_probabilities(films, tta=tta)
                for i, p, row, broken, unlike in zip(ok, second.positive_probability(probs), probs, bad,
                                                     second.content_warnings(films)):
                    if broken:
                        rows[i]["error"] = f"{stage}: {NON_FINITE}"
                    else:  # its in_scope once the film's own warnings are known (predict_paths)
                        reading = {**second.reading_fields(float(p), tta), **second.class_fields(row),
                                   **second.identity, "warnings": unlike}
                        rows[i].update({field: reading[key] for key, field in fields.items() if key in reading})
    return rows


def format_results(rows: list[dict], fmt: str) -> str:
    """Rows as ``csv`` (columns in :data:`RESULT_FIELDS` order: ``path, probability, label, threshold, warnings``
    always, so a reader keyed on them finds them even when no film was read; the others where they occur, and the
    fields named from a task after the first stage's reading, in the rows' order: a multiclass bundle's
    ``probability_<class>``, then a second stage's :func:`stage_fields`) or a ``json`` list. Every string, a name
    inside a list of warnings too, is written as valid UTF-8 whatever its bytes (:func:`json_ready`:
    ``caf\\xe9.jpeg``), so one odd name cannot lose every row."""
    if fmt == "json":
        return json_text(rows)
    look_up_option(fmt, ("csv", "json"), "results format")
    fields = [f for f in RESULT_FIELDS if f in ALWAYS or any(f in row for row in rows)]
    # a multiclass bundle's class probabilities (in its class order) and a second stage's reading, as the rows hold
    # them, after the reading they follow
    named = list(dict.fromkeys(k for row in rows for k in row if k not in RESULT_FIELDS))
    at = fields.index("near_threshold" if "near_threshold" in fields else "threshold") + 1
    fields[at:at] = named
    return results_csv(fields, rows)
