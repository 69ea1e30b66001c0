"""Grad-CAM heatmaps (pytorch-grad-cam) and the overlay PNG shown to a reader.

Target layer, one rule for every model: the module that produces the LAST spatial feature map of a forward
pass, i.e. the last module to finish whose output is (N, C, H, W) with H * W > 1. For timm models that is the
output of ``forward_features`` (e.g. EfficientNet's conv_head + BN + activation, ResNet's layer4), for the
scratch CNNs the last conv block or pooling before the dense head. It is found by probing one forward pass
with hooks, so it needs no per-architecture table and stays right for any timm model.
"""

from __future__ import annotations

import base64
import contextlib
import io
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pneumoscan.data.preprocess import PreprocessSpec, pad_box
from pneumoscan.data.readers.pillow import own_output_info

# torch and pytorch-grad-cam (3 s to import) are imported where a map is drawn: the service imports this module for
# its panel sizes and scores with ONNX Runtime, and predict without heatmaps never loads them
if TYPE_CHECKING:  # predict draws heatmaps with this module: a run-time import back would be a cycle
    import torch

    from .predict import Predictor

MAX_PANEL = 1024  # overlay panels are shrunk (aspect kept) so a full-size film gives a PNG of sensible size


# (model -> input shape -> its target layer): finding the layer costs a forward pass, and it depends only on the
# architecture and the input's shape (a map may shrink to 1 x 1 on a small input)
_TARGET_LAYERS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[int, ...], torch.nn.Module]] = (
    weakref.WeakKeyDictionary())


def target_layer(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """The module whose output is the last spatial feature map when ``model`` runs on ``x`` (see module doc), found
    once per model and input shape."""
    known = _TARGET_LAYERS.setdefault(model, {})
    if (shape := tuple(x.shape)) not in known:
        known[shape] = _probe_target_layer(model, x)
    return known[shape]


def _probe_target_layer(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    import torch

    finished: list[torch.nn.Module] = []

    def record(module: torch.nn.Module, _inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-2] * output.shape[-1] > 1:
            finished.append(module)

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not finished:
        raise ValueError(f"{type(model).__name__} has no spatial feature map for Grad-CAM")
    return finished[-1]


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


def gradcam(model: torch.nn.Module, x: torch.Tensor, classes: int | Sequence[int]) -> np.ndarray:
    """Grad-CAM of the log-odds of ``classes`` (one index or several: :class:`LogOdds`) for one normalised input
    (1, 1, S, S): (S, S) float32 in [0, 1] (min-max scaled, as pytorch-grad-cam does). Works inside
    ``torch.inference_mode`` too. An ensemble (:class:`pneumoscan.models.ensemble_net.EnsembleNet`): its members'
    maps, each at its own last conv and brought to the input size, averaged with equal weight (members' raw map
    scales differ by architecture) and scaled to [0, 1] again, so its overlay reads on the same scale as one
    model's."""
    import torch
    from pytorch_grad_cam import GradCAM

    if hasattr(model, "member_inputs"):
        size = x.shape[-1]
        mean = np.mean([_resize_map(gradcam(net, xm, classes), size, size) for net, xm in model.member_inputs(x)],
                       axis=0)
        low, high = float(mean.min()), float(mean.max())
        return ((mean - low) / (high - low) if high > low else np.zeros_like(mean)).astype(np.float32)
    with torch.inference_mode(False), torch.enable_grad():
        # a fresh leaf that requires grad: the map exists even when the model's weights are frozen
        x = x.detach().clone().requires_grad_(True)
        try:
            with GradCAM(model, [target_layer(model, x)]) as cam:
                return cam(input_tensor=x, targets=[LogOdds(classes)])[0]
        finally:
            model.zero_grad(set_to_none=True)


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
    squash stretches it back, pad drops the letterbox bars, center-crop puts it on the middle square
    (the cut-off sides, which the model never saw, get 0). ``frame``: the (height, width) to draw it at, a
    smaller one of the same aspect (the overlay panel), so a huge upload never needs a full-size float map."""
    out_h, out_w = frame or (height, width)
    size, policy = cam.shape[0], spec.geometry(height, width)
    if policy == "squash":
        return _resize_map(cam, out_w, out_h)
    if policy == "pad":
        left, top, new_w, new_h = pad_box(height, width, size)
        return _resize_map(cam[top : top + new_h, left : left + new_w], out_w, out_h)
    if policy == "center-crop":
        side = min(out_w, out_h)
        out = np.zeros((out_h, out_w), np.float32)
        left, top = (out_w - side) // 2, (out_h - side) // 2
        out[top : top + side, left : left + side] = _resize_map(cam, side, side)
        return out
    raise ValueError(f"resize policy {policy!r} has no inverse here")  # spec.geometry checked it: a new policy


# Grad-CAM needs gradients, which the INT8 graph has not: its map would be the FP32 model's, beside a reading the
# INT8 model made at its own thresholds (they disagreed on 3 of 210 validation films of one bundle)
INT8_HEATMAPS = ("heatmaps come from the FP32 model, and the INT8 model reads at its own thresholds: a map would "
                 "explain another model than the reading; use the onnx (or torch) backend for heatmaps")


def explain_array(predictor: Predictor, gray: np.ndarray, class_index: int | None = None) -> np.ndarray:
    """Grad-CAM for a decoded uint8 image of any size, preprocessed as the bundle says; returned in the image's
    own frame at overlay size (:func:`panel_shape`), float32 in [0, 1]. ``class_index`` None means the call's
    evidence: the log-odds of the classes the thresholded probability sums (:attr:`Task.cam_classes`), which is
    what the label reads; an index, that class against the rest. A predictor of the INT8 model is refused
    (ValueError, :data:`INT8_HEATMAPS`)."""
    if predictor.backend == "onnx-int8":
        raise ValueError(INT8_HEATMAPS)
    card = predictor.card
    images = predictor.preprocess([gray])
    classes = predictor.task.cam_classes if class_index is None else class_index
    with predictor.lock, _one_thread():  # the hooks must see this forward pass only
        cam = gradcam(predictor.model, predictor.inputs(images), classes)
    return to_image_frame(cam, *gray.shape, card.spec, panel_shape(*gray.shape))


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


def png_data_url(png: bytes) -> str:
    """A PNG as a ``data:`` URL: a figure or heatmap inside an HTML page or a JSON answer, with no separate file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def overlay_png(gray: np.ndarray, cam: np.ndarray, explains: str) -> bytes:
    """PNG of three panels side by side: the original, the heatmap, and the two blended, in viridis (as the web
    page draws it), over a caption strip that says what the map shows (:func:`caption`), so a file copied out of
    its folder or printed still says how to read it. Panels keep the original's aspect (shrunk to at most MAX_PANEL
    pixels a side); ``cam`` of any shape is resized onto them. ``explains``: the class the map is evidence for."""
    height, width = panel_shape(*gray.shape)
    if gray.shape != (height, width):
        gray = np.asarray(Image.fromarray(gray).resize((width, height), Image.Resampling.BILINEAR))
    if cam.shape != (height, width):
        cam = _resize_map(cam, width, height)
    original = np.repeat(gray[..., None], 3, axis=2)
    heat = viridis()[np.round(np.clip(cam, 0.0, 1.0) * 255).astype(np.uint8)]
    blend = np.round((original.astype(np.float32) + heat) / 2).astype(np.uint8)
    panels = Image.fromarray(np.hstack([original, heat, blend]))
    text = caption(explains)
    strip = _caption_strip(panels.width, height, text)
    picture = Image.new("RGB", (panels.width, height + strip.height))
    picture.paste(panels)
    picture.paste(strip, (0, height))
    return encode_png(picture, own="overlay", description=text)


def caption(explains: str) -> str:
    """What an overlay shows, in the words of the web page's legend: the map is scaled to the film's own strongest
    value, so a film with little evidence looks as bright as one with much."""
    return (f"Grad-CAM: evidence for {explains}, scaled to this film's maximum; "
            "where the model looked, not where disease is")


def viridis() -> np.ndarray:
    """matplotlib's viridis as a (256, 3) uint8 table: perceptually uniform, unlike jet, whose bright bands read as
    edges that are not in the map."""
    from matplotlib import colormaps

    return np.round(colormaps["viridis"](np.arange(256))[:, :3] * 255).astype(np.uint8)


def _caption_strip(width: int, panel_height: int, text: str) -> Image.Image:
    """A white strip ``width`` wide: the colour scale (low to this film's maximum), then ``text`` wrapped to fit."""
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
    low, high = "low", "this film's maximum"
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


def encode_png(picture: Image.Image, own: str | None = None, description: str | None = None) -> bytes:
    """PNG bytes at zlib level 1 (a third of the default's encoding time for files about 14 % larger); a Grad-CAM
    image is marked as pneumoscan's (``own``), so that a later run over a folder holding it refuses it instead of
    scoring it, and an overlay carries its caption as a PNG ``Description`` for a program that reads it."""
    info = own_output_info(own) if own else None
    if info is not None and description:
        info.add_text("Description", description)
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=1, pnginfo=info)
    return buf.getvalue()
