"""Grad-CAM heatmaps and the overlay PNG shown to a reader.

Target layer, one rule for every model: the module that produces the LAST spatial feature map of a forward
pass, i.e. the last module to finish whose output is (N, C, H, W) with H * W > 1. For timm models that is the
output of ``forward_features`` (e.g. EfficientNet's conv_head + BN + activation, ResNet's layer4), for the
scratch CNNs the last conv block or pooling before the dense head. It is found by probing one forward pass
with hooks, so it needs no per-architecture table and stays right for any timm model. A timm model whose
``forward_features`` gives no such map (a ViT's tokens, Swin's channels-last map, a map pooled to 1 x 1 at a small
input) is refused (:class:`NoSpatialMap`): the probe would otherwise find a 4-D tensor inside an attention block
or the stem, and draw a map that explains nothing.

A map is drawn on its bundle's scale (one raw Grad-CAM value as the top colour for every film, measured when the
bundle was finished), an ensemble's on its members' scales (the mean of the maps its members draw on their own), or,
for a bundle without one, scaled to its own film's maximum: :func:`heatmap_scale` chooses, and :func:`caption` says
which.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pneumoscan.core.figures import PNG_COMPRESS_LEVEL
from pneumoscan.data.pixels import reduced_shape
from pneumoscan.data.preprocess import PreprocessSpec, pad_box
from pneumoscan.data.readers.pillow import own_output_info
from pneumoscan.data.scope import CONFLICT, CONTENT, outside_scope
from pneumoscan.models.card import ENSEMBLE, HEATMAP_SCALE_BOUNDS

# torch (2.6 s to import) is imported where a map is drawn: the service imports this module for
# its panel sizes and scores with ONNX Runtime, and predict without heatmaps never loads them
if TYPE_CHECKING:  # predict draws heatmaps with this module: a run-time import back would be a cycle
    import torch

    from pneumoscan.data.tasks import Task
    from pneumoscan.models.card import BundleCard
    from .predict import Predictor

log = logging.getLogger(__name__)

MAX_PANEL = 1024  # overlay panels are shrunk (aspect kept) so a full-size film gives a PNG of sensible size

# A bundle's heatmap scale (measure_heatmap_scale): the SCALE_PERCENTILE-th percentile of the peaks of the maps of up
# to SCALE_FILMS validation films the model called positive, spread evenly over their ranks of probability: the top
# colour is evidence as strong as the strongest 10 % of its positive calls. On a short efficientnet_lite0 run (240
# validation films) a median positive call peaked at 0.72 of it and a median negative one at 0.015; the 75th
# percentile would have stopped 17 % of positive calls at the top colour, hiding where their evidence is strongest.
# A bundle that called fewer than SCALE_MIN_FILMS films positive records none: a percentile of so few says little
SCALE_FILMS = 32
SCALE_MIN_FILMS = 8
SCALE_PERCENTILE = 90


@dataclasses.dataclass(frozen=True)
class HeatmapScale:
    """The scale a map is drawn on (:func:`heatmap_scale`): ``value``, the raw Grad-CAM value drawn as the top colour
    (a bundle's own), or, with ``members``, the multiple of each member's own scale an ensemble's map is drawn on
    (:data:`~pneumoscan.models.card.MEMBERS_OWN_SCALE`). The kind is a field of its own, not a subclass of float,
    so no arithmetic or JSON drops it: it gives :func:`caption` and :func:`scale_top` the words that are true of the
    map (an ensemble's top colour is each member's own strong evidence, not the ensemble's measured on films it
    called positive)."""

    value: float
    members: bool = False


# (model -> input shape -> its target layer): finding the layer costs a forward pass, and it depends only on the
# architecture and the input's shape (a map may shrink to 1 x 1 on a small input)
_TARGET_LAYERS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[int, ...], torch.nn.Module]] = (
    weakref.WeakKeyDictionary())


class NoSpatialMap(ValueError):
    """A model Grad-CAM cannot explain: no (N, C, H, W) feature map of more than one cell reaches its head; or a film
    whose map would be drawn as evidence it is not (:class:`NoMapOfFilm`)."""


class NoMapOfFilm(NoSpatialMap):
    """One film's map refused (NaN, or gradients all zero: :func:`_cams`): the model's maps of other films stand, so
    a caller drawing many films goes on to the next."""


def target_layer(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """The module whose output is the last spatial feature map when ``model`` runs on ``x`` (see module doc), found
    once per model and input shape."""
    known = _TARGET_LAYERS.setdefault(model, {})
    if (shape := tuple(x.shape)) not in known:
        known[shape] = _probe_target_layer(model, x)
    return known[shape]


def _probe_target_layer(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """The last module whose output is a spatial map (N, C, H, W of more than one cell) after a learned convolution
    has run, found by running ``x`` through the model (for a timm model, through ``forward_features`` alone: a head
    may hold spatial layers too, as vgg's 7 x 7 fc6 convolution does at 288 px and more, whose cells each cover 7 x 7
    of the features and were stretched over the film). A map before any convolution is a pooled copy of the input:
    an mlp's Grad-CAM was the film's brightness, whatever the model had learned, drawn as evidence."""
    import torch

    finished: list[torch.nn.Module] = []
    convolved = False

    def record(module: torch.nn.Module, _inputs: tuple, output: object) -> None:
        nonlocal convolved
        convolved = convolved or isinstance(module, torch.nn.modules.conv._ConvNd)
        spatial = isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-2] * output.shape[-1] > 1
        if convolved and spatial:
            finished.append(module)

    timm = _check_timm_features(model, x)
    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model.forward_features(x) if timm else model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not finished:
        raise NoSpatialMap(f"Grad-CAM cannot explain {type(model).__name__}: no spatial feature map follows a "
                           "convolution (its only spatial map is the input itself); read its films without heatmaps")
    return finished[-1]


def _check_timm_features(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` is a timm model (``forward_features`` and ``forward_head``); refuse (:class:`NoSpatialMap`)
    one whose ``forward_features`` on ``x`` is not a channels-first map of more than one cell: its head reads no
    spatial map, so no layer's Grad-CAM is a map of the film."""
    import torch

    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        return False  # not a timm model: the probe's rule alone
    with torch.no_grad():
        features = model.forward_features(x)
    shape = tuple(features.shape) if isinstance(features, torch.Tensor) else None
    layout = getattr(model, "output_fmt", "NCHW")  # timm's record of it: Swin's features are NHWC
    if shape is None or len(shape) != 4:
        why = f"its features are {shape or type(features).__name__}, tokens or vectors, not a feature map"
    elif layout != "NCHW":
        why = f"its feature map is {layout} (channels last), not the (N, C, H, W) Grad-CAM reads"
    elif shape[-2] * shape[-1] <= 1:
        why = f"its feature map is 1 x 1 at {x.shape[-2]} x {x.shape[-1]} px input (a larger --image-size keeps one)"
    else:
        return True
    raise NoSpatialMap(f"Grad-CAM cannot explain {type(model).__name__}: {why}; read its films without heatmaps")


def check_explainable(predictor: Predictor) -> None:
    """Refuse (:class:`NoSpatialMap`) a predictor whose model (or an ensemble member of it) Grad-CAM cannot explain,
    before any film is read: ``predict --heatmaps`` found out at its first film, after the others' scores, and
    lost them. The probe is the one every map uses (:func:`target_layer`, kept per model and input shape)."""
    import torch

    size = predictor.card.size
    x = predictor.inputs(np.zeros((1, size, size), np.uint8))
    model = predictor.model
    nets = [(net, xm) for net, xm, _ in model.member_inputs(x)] if hasattr(model, "member_inputs") else [(model, x)]
    with predictor.lock, _one_thread(), torch.no_grad():
        for i, (net, xm) in enumerate(nets):
            with _as_member(model, i) if net is not model else contextlib.nullcontext():
                target_layer(net, xm)


@contextlib.contextmanager
def _as_member(model: torch.nn.Module, i: int) -> Iterator[None]:
    """A :class:`NoSpatialMap` of ensemble ``model``'s member ``i`` named as every refusal about a member is
    (``member_label``), of its own kind still (a refusal of one film's map stays one)."""
    try:
        yield
    except NoSpatialMap as e:
        raise type(e)(f"{model.member_label(i)}: {e}") from None


class LogOdds:
    """Grad-CAM's target for a set of classes S: their log-odds against the rest, ``logsumexp(z_S) -
    logsumexp(z_other)``, i.e. log(P(S) / (1 - P(S))). With S the classes the thresholded probability sums (the
    positive class of two, bacteria and virus of normal / bacteria / virus), that is the logit of the very
    probability the threshold reads, so the map shows the evidence for the call, not for one logit alone: a region
    that raises both sides, the other more, is no evidence for S. One class index is the set of that class alone."""

    def __init__(self, classes: int | Sequence[int]) -> None:
        self.classes = tuple(int(c) for c in np.atleast_1d(classes))  # a NumPy index too

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        import torch

        inside = torch.zeros(output.shape[-1], dtype=torch.bool, device=output.device)
        inside[list(self.classes)] = True
        return torch.logsumexp(output[..., inside], dim=-1) - torch.logsumexp(output[..., ~inside], dim=-1)


def gradcam(model: torch.nn.Module, x: torch.Tensor, classes: int | Sequence[int],
            scale: float | None = None) -> np.ndarray:
    """Grad-CAM of the log-odds of ``classes`` (one index or several: :class:`LogOdds`) for one normalised input
    (1, 1, S, S): (S, S) float32 in [0, 1]. ``scale``: the raw Grad-CAM value drawn as 1 (a bundle's
    :attr:`~pneumoscan.models.card.BundleCard.heatmap_scale`), the map divided by it and clipped, so that a colour
    means the same on every film; None: divided by this film's own maximum (:func:`_scaled`). Works
    inside ``torch.inference_mode`` too. An ensemble (:class:`pneumoscan.models.ensemble_net.EnsembleNet`): its
    members' maps, each at its own last conv and brought to the input size, averaged with equal weight (members'
    raw map scales differ by architecture, size and training). With a ``scale``, each member's map is drawn on its
    own member's scale times ``scale`` (:data:`~pneumoscan.models.card.MEMBERS_OWN_SCALE`) and clipped, as its own
    bundle draws it, so the mean is as bright as the members' evidence is strong and reaches 1 only where every
    member is at its own top (one member's outlier cannot fill the colour alone); a member without a scale is refused
    (ValueError). None: each member's map scaled to the film's maximum and the mean scaled to its own maximum again,
    so its overlay reads as one model's per-film map."""
    if hasattr(model, "member_inputs"):
        size, members = x.shape[-1], model.member_inputs(x)
        if scale is not None and (missing := [i for i, (*_, own) in enumerate(members) if own is None]):
            raise ValueError(f"{model.member_label(missing[0])} records no heatmap scale: the ensemble's maps can only "
                             "be scaled to each film's maximum")
        maps = []
        for i, (net, xm, own) in enumerate(members):
            with _as_member(model, i):
                maps.append(gradcam(net, xm, classes, None if scale is None else own * scale))
        mean = np.mean([_resize_map(cam, size, size) for cam in maps], axis=0)
        return mean.astype(np.float32) if scale is not None else _scaled(mean, None)
    raw, moved = _cams(model, x, classes)
    if not moved.all():
        raise NoMapOfFilm("the model's score does not change with its last feature map on this film (every Grad-CAM "
                           "gradient is zero), so a heatmap would show nothing it looked at; read the film without one")
    return _scaled(_resize_map(raw[0], x.shape[-1], x.shape[-2]), scale)


def _scaled(cam: np.ndarray, scale: float | None) -> np.ndarray:
    """A map of values >= 0 drawn in [0, 1]: divided by ``scale`` and clipped, or by its own maximum when None. Not
    stretched from its minimum, as pytorch-grad-cam draws a map: evidence spread over the whole film (84 % of the
    maximum everywhere) was drawn in the lowest colour, which reads as none, under a caption that says the map is
    scaled to the film's maximum."""
    top = float(cam.max()) if scale is None else scale
    return (np.clip(cam / top, 0.0, 1.0) if top > 0 else np.zeros_like(cam)).astype(np.float32)


def gradcam_peaks(model: torch.nn.Module, x: torch.Tensor, classes: int | Sequence[int]) -> np.ndarray:
    """Each film's strongest raw Grad-CAM value (N,) for normalised inputs (N, 1, S, S): what a bundle's heatmap
    scale is measured from (:func:`measure_heatmap_scale`). Not for an ensemble, which has no raw map."""
    return _cams(model, x, classes)[0].max(axis=(1, 2))


def _cams(model: torch.nn.Module, x: torch.Tensor, classes: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM's maps of the log-odds of ``classes`` for inputs (N, 1, S, S): (N, h, w) at the target layer's own
    size, unscaled, after Grad-CAM's ReLU: each channel of the layer's output weighted by the mean of its gradient
    and summed (the formula pytorch-grad-cam computes, whose import cost 4 s of CPU a process: OpenCV, pyplot,
    scikit-learn and torchvision for a dozen lines). Only the map's gradient is computed, not the model's below it.
    Then (N,) whether any of each film's gradients is not zero: where none is, the score does not change with the
    feature map on that film (dead units, a model that ignores the image), and its empty map would be a film with no
    evidence over a reading that did not come from where it looked (:func:`gradcam` refuses it; a bundle's scale
    counts its peak, 0). A NaN or infinite map (a NaN gradient, as from a ``torch.where`` whose unused branch
    overflows, or an overflowing activation) is refused here (:class:`NoMapOfFilm`): drawn, NaN is cast to 0, the
    lowest colour, the whole film shown as no evidence at all."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        # a fresh leaf that requires grad: the map exists even when the model's weights are frozen
        x = x.detach().clone().requires_grad_(True)
        layer, score = target_layer(model, x[:1]), LogOdds(classes)
        maps: list[torch.Tensor] = []  # the layer's outputs in this pass: its last is the map, as target_layer's

        def kept(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            maps.append(output)
            return output.clone()  # the model goes on with a copy: an in-place op after the layer leaves the map

        handle = layer.register_forward_hook(kept)
        try:
            total = score(model(x)).sum()
            # the gradient of the map alone (no weight's .grad is written); zero where the score does not use it
            grads = (torch.autograd.grad(total, maps[-1], materialize_grads=True)[0] if total.requires_grad
                     else torch.zeros_like(maps[-1]))
        finally:
            handle.remove()
        activations, gradients = maps[-1].detach().cpu().numpy(), grads.cpu().numpy()
    raw = (gradients.mean(axis=(2, 3))[:, :, None, None] * activations).sum(axis=1)
    if not np.isfinite(raw).all():
        raise NoMapOfFilm("Grad-CAM's map of this film is not finite (NaN or infinite gradients or activations in the "
                           "model): no heatmap can be drawn; read the film without one")
    return np.maximum(raw, 0.0), gradients.reshape(len(gradients), -1).any(axis=1)


def _resize_map(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(cam.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR))


def panel_shape(height: int, width: int) -> tuple[int, int]:
    """(height, width) of an overlay panel: the original's, shrunk to at most :data:`MAX_PANEL` a side."""
    scale = MAX_PANEL / max(height, width)
    return (height, width) if scale >= 1.0 else (max(1, round(height * scale)), max(1, round(width * scale)))


def to_image_frame(
    cam: np.ndarray, height: int, width: int, spec: PreprocessSpec, frame: tuple[int, int] | None = None
) -> np.ndarray:
    """Map a model-input cam (S, S) back onto the original image (height, width), undoing the spec's geometry:
    squash stretches it back, pad drops the letterbox bars, center-crop puts it on the middle square. The cut-off
    sides, which the model never saw, are NaN (:func:`unread_mask`): 0 there would be drawn as the lowest colour,
    "no evidence" where the model did not look at all. ``frame``: the (height, width) to draw it at, a smaller one
    of the same aspect (the overlay panel), so a huge upload never needs a full-size float map."""
    out_h, out_w = frame or (height, width)
    size, policy = cam.shape[0], spec.geometry(height, width)
    if policy == "squash":
        return _resize_map(cam, out_w, out_h)
    if policy == "pad":
        left, top, new_w, new_h = pad_box(height, width, size)
        return _resize_map(cam[top : top + new_h, left : left + new_w], out_w, out_h)
    if policy == "center-crop":
        side = min(out_w, out_h)
        out = np.full((out_h, out_w), np.nan, np.float32)
        left, top = (out_w - side) // 2, (out_h - side) // 2
        out[top : top + side, left : left + side] = _resize_map(cam, side, side)
        return out
    raise ValueError(f"resize policy {policy!r} has no inverse here")  # spec.geometry checked it: a new policy


def unread_mask(cam: np.ndarray, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Where a map in a film's frame (:func:`to_image_frame`) covers film the model did not read (its NaN), as a
    bool mask, at (``height``, ``width``) when given: a pixel that touches any unread one counts as unread, so a
    resized map never shows an unread edge as read."""
    missing = np.isnan(cam)
    if height is None or width is None or missing.shape == (height, width):
        return missing
    return _resize_map(missing.astype(np.float32), width, height) > 0


# Grad-CAM needs gradients, which the INT8 graph has not: its map would be the FP32 model's, beside a reading the
# INT8 model made at its own thresholds (they disagreed on 3 of 210 validation films of one bundle)
INT8_HEATMAPS = ("heatmaps come from the FP32 model, and the INT8 model reads at its own thresholds: a map would "
                 "explain another model than the reading; use the onnx (or torch) backend for heatmaps")


def explain_array(predictor: Predictor, gray: np.ndarray, class_index: int | None = None) -> np.ndarray:
    """Grad-CAM for a decoded uint8 image of any size, preprocessed as the bundle says; returned in the image's
    own frame at overlay size (:func:`panel_shape`), float32 in [0, 1], on the scale :func:`heatmap_scale` gives
    (the bundle's, or this film's own), NaN where the model did not read the film (center-crop's cut-off sides:
    :func:`unread_mask`). ``class_index`` None means the call's evidence: the log-odds of the classes
    the thresholded probability sums (:attr:`Task.cam_classes`), which is what the label reads; an index, that
    class against the rest. A predictor of the INT8 model is refused (ValueError, :data:`INT8_HEATMAPS`), and so is a
    model without a spatial feature map (:class:`NoSpatialMap`, with the reason), and a blank image or one of too
    few grey levels (:class:`~pneumoscan.data.pixels.DecodeError`, as :meth:`Predictor.predict_array` refuses it)."""
    if predictor.backend == "onnx-int8":
        raise ValueError(INT8_HEATMAPS)
    card = predictor.card
    images = predictor.preprocess_array(gray)
    # the shape preprocessing letterboxed: the film reduced as on decoding (a no-op for a film read_gray decoded so),
    # whose rounding gives a full-size film another aspect, and so another letterbox, than its own shape
    seen = reduced_shape(gray.shape, card.spec.decode_target)
    classes = predictor.task.cam_classes if class_index is None else class_index
    with predictor.lock, _one_thread():  # the hooks must see this forward pass only
        scale = heatmap_scale(card, class_index)
        cam = gradcam(predictor.model, predictor.inputs(images), classes, None if scale is None else scale.value)
    return to_image_frame(cam, *seen, card.spec, panel_shape(*gray.shape))


def heatmap_scale(card: BundleCard, class_index: int | None = None) -> HeatmapScale | None:
    """The scale a map of this bundle is drawn on: the bundle's own raw Grad-CAM value drawn as 1, the top colour,
    for a map of the call's evidence, so that a colour means the same on every film it reads; for an ensemble whose
    members all record theirs, its members' scales (``members``: each member's map on its own scale); None, each map
    scaled to its own film's maximum, for a bundle that records no scale (a bundle finished before the scale was kept,
    one that called too few validation films positive, an ensemble with such a member) and for a map of one class
    against the rest (``class_index``), which the scale was not measured on. The one rule that chooses both the map's
    scale (:func:`explain_array`) and its words (:func:`caption`, :func:`scale_top`)."""
    if class_index is not None or card.heatmap_scale is None:
        return None
    return HeatmapScale(card.heatmap_scale, members=card.model == ENSEMBLE)


def measure_heatmap_scale(model: torch.nn.Module, card: BundleCard, task: Task, images: np.ndarray,
                          probs: np.ndarray) -> float | None:
    """A bundle's heatmap scale (:attr:`BundleCard.heatmap_scale`), measured on the films it was finished on: uint8
    ``images`` (N, S, S) and their calibrated class probabilities (N, C). Up to :data:`SCALE_FILMS` of those it
    calls positive at ``card``'s threshold, evenly spaced from the most to the least probable (the same films for
    the same scores), and the :data:`SCALE_PERCENTILE`-th percentile of their maps' peaks. Grad-CAM of the log-odds
    is in log-odds units (for a linear head on pooled features, the map before its ReLU sums to the log-odds less
    the head's bias), so one value is as much evidence on any film. None, each map then scaled to its own film,
    when fewer than :data:`SCALE_MIN_FILMS` films are called positive or their maps are empty (said in the log)."""
    import torch

    from pneumoscan.data.transforms import to_input

    positive = task.positive_probability(probs)
    called = np.flatnonzero(positive >= card.threshold)
    if len(called) < SCALE_MIN_FILMS:
        log.info("no heatmap scale recorded: %d of the %d films were called %s, fewer than %d, so each heatmap "
                 "is scaled to its own film's maximum", len(called), len(images), card.positive, SCALE_MIN_FILMS)
        return None
    ranked = called[np.argsort(-positive[called], kind="stable")]
    films = ranked[np.unique(np.linspace(0, len(ranked) - 1, SCALE_FILMS).round().astype(int))]
    device = next(model.parameters()).device
    x = to_input(torch.from_numpy(np.ascontiguousarray(images[films])).unsqueeze(1), card.mean, card.std).to(device)
    try:
        peaks = np.concatenate([gradcam_peaks(model, x[i : i + 8], task.cam_classes) for i in range(0, len(x), 8)])
    except NoSpatialMap as e:  # the bundle is still a model; its heatmaps are refused with this reason
        log.info("no heatmap scale recorded: %s", e)
        return None
    scale = float(np.percentile(peaks, SCALE_PERCENTILE))
    if not scale >= HEATMAP_SCALE_BOUNDS[0]:  # 0, or below every float32 a map can be divided by
        log.info("no heatmap scale recorded: the Grad-CAM maps of the %d films called %s it was measured on are "
                 "empty, so each heatmap is scaled to its own film's maximum", len(films), card.positive)
        return None
    return scale


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread for one film's Grad-CAM, in the calling thread only (an OpenMP setting is a thread's
    own): beside the decode threads, ONNX Runtime or another process, two threads waiting on each other at every
    layer took 0.6-3.3 s a film where one took 0.11-0.32 s (efficientnet_lite0, 192 px, a 2-core machine), and
    one film's backward pass gains little from a second thread when the CPU is free."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def overlay_png(gray: np.ndarray, cam: np.ndarray, explains: str, scale: HeatmapScale | None, *,
                negative: str | None = None, tta: bool = False, warnings: Sequence[str] = ()) -> bytes:
    """PNG of :func:`overlay_panels` over a caption strip that says what the map shows and on which scale
    (:func:`caption`), so a file copied out of its folder or printed still says how to read it."""
    return captioned_png(*overlay_panels(gray, cam, explains, scale, negative=negative, tta=tta, warnings=warnings),
                         scale)


def captioned_png(panels: Image.Image, text: str, scale: HeatmapScale | None) -> bytes:
    """The overlay's PANELS over a strip of the colour scale (``scale``'s) and TEXT, their caption, which the PNG
    also carries as its ``Description``."""
    strip = _caption_strip(panels.width, panels.height, text, scale_top(scale))
    picture = Image.new("RGB", (panels.width, panels.height + strip.height))
    picture.paste(panels)
    picture.paste(strip, (0, panels.height))
    return encode_png(picture, own="overlay", description=text)


def overlay_panels(gray: np.ndarray, cam: np.ndarray, explains: str, scale: HeatmapScale | None, *,
                   negative: str | None = None, tta: bool = False,
                   warnings: Sequence[str] = ()) -> tuple[Image.Image, str]:
    """Three panels side by side: the original, the heatmap, and the two blended, in viridis (as the web page draws
    it), with their caption (:func:`caption`), which a page shows as its text. Panels keep the original's aspect
    (shrunk to at most MAX_PANEL pixels a side); ``cam`` of any shape is resized onto them. Where the model did not
    read the film (``cam``'s NaN: :func:`unread_mask`) the heatmap panel is hatched grey, no colour of the scale, and
    the blend shows the film alone: the scale's lowest colour there would say "no evidence" where the model never
    looked. A map drawn in the lowest colour alone is said to be empty in the caption.
    ``explains``: the class the map is evidence for; ``scale``: the one it was drawn on (:func:`heatmap_scale`);
    ``negative`` (the label of a film read as negative), ``tta`` and ``warnings`` (the film's): what else the caption
    must say of the reading the map goes with."""
    height, width = panel_shape(*gray.shape)
    if gray.shape != (height, width):
        gray = np.asarray(Image.fromarray(gray).resize((width, height), Image.Resampling.BILINEAR))
    missing = unread_mask(cam, height, width)
    cam = np.nan_to_num(cam, nan=0.0)
    if cam.shape != (height, width):
        cam = _resize_map(cam, width, height)
    original = np.repeat(gray[..., None], 3, axis=2)
    levels = np.round(np.clip(cam, 0.0, 1.0) * 255).astype(np.uint8)
    heat = viridis()[levels]
    blend = np.round((original.astype(np.float32) + heat) / 2).astype(np.uint8)
    heat[missing] = _hatch(height, width)[missing]
    blend[missing] = original[missing]
    panels = Image.fromarray(np.hstack([original, heat, blend]))
    return panels, caption(explains, scale, unread=bool(missing.any()), negative=negative,
                           empty=not levels[~missing].any(), tta=tta, warnings=warnings)


# What a caption adds for one film's map (:func:`caption`)
UNREAD = "hatched grey: the film's edges outside its middle square, which the model did not read"
WITHOUT_TTA = "map of the film as read without test-time views, whose mean is the probability"
OUTSIDE = "OUTSIDE THE MODEL'S SCOPE"
# The map of a film read as the first class is still the evidence for the positive one (the call's): scaled to the
# film's maximum, it is drawn as bright as a positive film's. Said in words true of every task (bacteria is no
# "negative" finding) and of every such film (one just short of the threshold need not have weak evidence)
NEGATIVE = "read as {label}: the map shows the evidence for {explains}, which fell short of the threshold"
# An empty map is drawn as it is (no region raised the log-odds: the truth), and said, lest the scale's lowest colour
# over the whole film read as a map that failed or showed nothing. The web page's legend says both in these words
# (/v1/model's heatmap_negative and heatmap_empty), and calls a map empty by the rule overlay_png does
EMPTY = "empty map: nowhere on this film does the evidence for {explains} reach the scale's first step above none"

# The heatmap panel where the model did not read the film: diagonal stripes of two neutral greys, no colour of
# viridis, and told apart from the scale's grey-looking middle on a black-and-white print by the stripes
UNREAD_GREYS = np.array([[96, 96, 96], [152, 152, 152]], np.uint8)


def _hatch(height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8 stripes of :data:`UNREAD_GREYS`, wide enough to be seen at the panel's size."""
    period = max(3, round(max(height, width) / 64))
    rows, cols = np.mgrid[:height, :width]
    return UNREAD_GREYS[((rows + cols) // period) % 2]


def caption(explains: str, scale: HeatmapScale | None, *, unread: bool = False, negative: str | None = None,
            empty: bool = False, tta: bool = False, warnings: Sequence[str] = ()) -> str:
    """What an overlay shows, for a map drawn on ``scale`` (:func:`heatmap_scale`); the web page's legend shows the
    same words (/v1/model's heatmap_caption). On the bundle's scale the top colour is strong evidence, as on
    validation films; on an ensemble's members' scales, strong evidence from every member, each as on its own
    validation films (the ensemble's own films never measured it); scaled to the film's own maximum, a film with
    little evidence looks as bright as one with much. Then what is true of this film's map alone: ``unread``, parts
    of the film the model did not read (hatched); ``negative``, the label of a film read as the first class, below
    the threshold (:data:`NEGATIVE`); ``tta``, a probability that is the mean of test-time views while
    the map is of the plain one; ``empty``, a map drawn in the scale's lowest colour alone (:data:`EMPTY`); and
    first, a film its ``warnings`` put outside the model's scope, so that a printed overlay cannot pass for a reading
    that applies."""
    if scale is None:
        text = (f"Grad-CAM: evidence for {explains}, scaled to this film's maximum; "
                "where the model looked, not where disease is")
    else:
        strongest = f"as strong as the strongest {100 - SCALE_PERCENTILE} % of validation films it called {explains}"
        top = (f"the mean of its members' maps, each on that member's own scale; top colour: every member's evidence "
               f"{strongest}" if scale.members else f"top colour: {strongest}")
        text = (f"Grad-CAM: evidence for {explains} {_scale_name(scale)}, the same for every film ({top}); "
                "where the model looked, not where disease is")
    if unread:
        text += f"; {UNREAD}"
    if negative is not None:
        text += f"; {NEGATIVE.format(label=negative, explains=explains)}"
    if empty:
        text += f"; {EMPTY.format(explains=explains)}"
    if tta:
        text += f"; {WITHOUT_TTA}"
    if outside := [_reason(w) for w, _ in outside_scope(list(warnings))]:
        text = f"{OUTSIDE} ({'; '.join(outside)}): the reading and this map do not apply. {text}"
    return text


def _reason(warning: str) -> str:
    """A scope warning's reason in brief, for a caption: its words before what follows from it (``lateral view
    (LL)`` of ``lateral view (LL): the model was trained on frontal (PA/AP) films only``), a pixel check's without
    its common start; a conflict keeps its start, which says what kind of fault it is. The row's warnings keep the
    whole."""
    rest = warning.removeprefix(CONTENT)
    start = CONFLICT if rest.startswith(CONFLICT) else ""
    return start + rest.removeprefix(start).split(": ", 1)[0]


def scale_top(scale: HeatmapScale | None, spoken: bool = False) -> str:
    """The words at the top of the colour scale under a map drawn on ``scale``; ``spoken``: as a screen reader says
    them, naming the scale, since the colour bar's label is read without the caption beside it."""
    if scale is None:
        return "this film's strongest value" if spoken else "this film's maximum"
    return f"strong evidence {_scale_name(scale)}" if spoken else "strong evidence"


def _scale_name(scale: HeatmapScale) -> str:
    """The scale's name, in one wording for the caption and for the top of the colour scale as it is said."""
    return "on its members' scales" if scale.members else "on this model's scale"


def viridis() -> np.ndarray:
    """matplotlib's viridis as a (256, 3) uint8 table: perceptually uniform, unlike jet, whose bright bands read as
    edges that are not in the map."""
    from matplotlib import colormaps

    return np.round(colormaps["viridis"](np.arange(256))[:, :3] * 255).astype(np.uint8)


def _caption_strip(width: int, panel_height: int, text: str, high: str) -> Image.Image:
    """A white strip ``width`` wide: the colour scale (from low to ``high``), then ``text`` wrapped to fit."""
    from PIL import ImageDraw, ImageFont

    size = max(12, panel_height // 24)
    font = ImageFont.load_default(size)
    pad = max(4, size // 2)
    words, lines = text.split(), [""]
    for word in words:
        wider = f"{lines[-1]} {word}".strip()
        if lines[-1] and font.getlength(wider) > width - 2 * pad:
            lines.append(word)
        else:
            lines[-1] = wider
    line_height = round(size * 1.25)
    strip = Image.new("RGB", (width, 2 * pad + line_height * (len(lines) + 1)), "white")
    draw = ImageDraw.Draw(strip)
    low = "low"
    draw.text((pad, pad), low, fill=(29, 39, 51), font=font)
    left = pad + round(font.getlength(low)) + pad
    right = width - pad - round(font.getlength(high)) - pad
    if right - left >= 16:  # the scale between its words; a panel too narrow for it keeps the caption alone
        scale = viridis()[np.linspace(0, 255, right - left).round().astype(np.uint8)]
        strip.paste(Image.fromarray(np.repeat(scale[None], size, axis=0)), (left, pad + (line_height - size) // 2))
        draw.text((right + pad, pad), high, fill=(29, 39, 51), font=font)
    for i, line in enumerate(lines, start=1):
        draw.text((pad, pad + i * line_height), line, fill=(29, 39, 51), font=font)
    return strip


def panel_png(gray: np.ndarray, own: str | None = None) -> bytes:
    """An 8-bit grayscale PNG at the overlay's panel size (a full-size film shrunk, as the heatmap is); ``own``
    (``map``) marks it as a pneumoscan output, for a Grad-CAM map rather than the film itself."""
    height, width = panel_shape(*gray.shape)
    picture = Image.fromarray(gray)
    if gray.shape != (height, width):
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    return encode_png(picture, own)


def film_overlay(predictor: Predictor, gray: np.ndarray, shown: np.ndarray | None = None, *, label: str,
                 tta: bool = False, warnings: Sequence[str] = ()) -> bytes:
    """The overlay every route draws of a film (predict's files, the service's answers): :func:`film_panels` over
    their caption strip (:func:`captioned_png`)."""
    return captioned_png(*film_panels(predictor, gray, shown, label=label, tta=tta, warnings=warnings),
                         heatmap_scale(predictor.card))


def film_panels(predictor: Predictor, gray: np.ndarray, shown: np.ndarray | None = None, *, label: str,
                tta: bool = False, warnings: Sequence[str] = ()) -> tuple[Image.Image, str]:
    """The overlay's panels of a film and their caption (the report's gallery shows the caption as text):
    Grad-CAM of ``gray`` (the film as the model reads it) over ``shown`` (that film at a panel's size; default
    ``gray``), of the call's evidence on the bundle's scale, its caption saying when the reading's ``label`` is the
    negative class and when ``warnings`` put the film outside the model's scope. Raises :class:`NoMapOfFilm` for a
    film without a map, and ValueError for a ``label`` that is no reading of the bundle (a script's own spelling,
    ``pneumonia`` for a PNEUMONIA bundle), which the caption would call a negative one."""
    card = predictor.card
    if label not in (calls := (card.classes[0], card.positive)):
        raise ValueError(f"label {label!r} is not a reading of this bundle ({' or '.join(calls)}): give the reading's "
                         "label, as predict_array or predict_paths spells it")
    cam = explain_array(predictor, gray)
    return overlay_panels(gray if shown is None else shown, cam, card.positive, heatmap_scale(card),
                          negative=None if label == card.positive else label, tta=tta, warnings=warnings)


def map_png(cam: np.ndarray) -> bytes:
    """The bare map (the service's ``heatmap=map``; ``cam`` at the panel size :func:`explain_array` gives), for a
    client that colours it itself: an 8-bit grayscale PNG, with an alpha channel, transparent where the model did not
    read the film (``cam``'s NaN: :func:`unread_mask`), when it has such parts: a gray level there would be drawn as
    the map's lowest, "no evidence" where the model never looked."""
    levels = np.round(np.clip(np.nan_to_num(cam, nan=0.0), 0, 1) * 255).astype(np.uint8)
    if not (missing := unread_mask(cam)).any():
        return panel_png(levels, own="map")
    return encode_png(Image.fromarray(np.dstack([levels, np.where(missing, 0, 255).astype(np.uint8)])), own="map")


def encode_png(picture: Image.Image, own: str | None = None, description: str | None = None) -> bytes:
    """PNG bytes at :data:`~pneumoscan.core.figures.PNG_COMPRESS_LEVEL`; a Grad-CAM image is marked as pneumoscan's
    (``own``), so that a later run over a folder holding it refuses it instead of scoring it, and an overlay carries
    its caption as a PNG ``Description`` for a program that reads it."""
    info = own_output_info(own) if own else None
    if info is not None and description:
        info.add_text("Description", description)
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=info)
    return buf.getvalue()
