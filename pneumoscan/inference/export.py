"""ONNX export of a bundle: the graph, its sidecars, the check against torch, and the session on a bundle's
model.onnx that exports it on first use (:func:`bundle_session`). Running what is exported is :mod:`.onnx_runtime`'s.

The graph maps the normalised image batch ``image`` (N, 1, S, S) float32 to raw ``logits`` (N, C); resizing,
normalisation and temperature stay outside it and are written next to the file (``model.onnx.json``), so any
ONNX runtime can reproduce the bundle's probabilities. The spec also records the SHA-256 of the bundle's
weights and of the ONNX file it describes, and bundle.json the SHA-256 of BUNDLE/model.onnx: a ``model.onnx``
exported from other weights, or damaged since, is refused with its reason; exporting again is the explicit
``pneumoscan export``. The INT8
model's sidecar (``model.int8.onnx.json``) gives its own thresholds under the same keys, and bundle.json records
the SHA-256 of both INT8 files.

torch and timm are imported by the functions that export, so an ONNX backend's start-up loads neither.
"""

from __future__ import annotations

import copy
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from pneumoscan.core.atomic import write_atomic, write_json
from pneumoscan.core.metrics import softmax
from pneumoscan.data.preprocess import TTA_VIEWS
from pneumoscan.models.card import CARD, ONNX_NAME, BundleCard, card_task, file_sha256, load_card, record_checksum
from .onnx_runtime import (INPUT, INT8_NAME, OUTPUT, Int8Operating, described, session, spec_path, verify_onnx,
                           weights_digest)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
OPSET = 17
PARITY_TOLERANCE = 1e-4  # max |P_torch - P_onnx| accepted by the self-check at export time


def export_onnx(bundle: Path | str, out: Path | str | None = None) -> Path:
    """Write the bundle's model as ONNX (dynamic batch axis) plus its spec; returns the ONNX path.

    Uses the TorchScript-based exporter (``dynamo=False``): it works offline for every registered model,
    including tf_efficientnet_lite0's TensorFlow-style 'same' padding. The result is checked against torch
    on a small random batch (also proving the batch axis is dynamic); a mismatch or a non-finite output raises
    ValueError. Written to BUNDLE/model.onnx, its SHA-256 is recorded in bundle.json (bundles that record the
    weights' checksum).
    """
    from pneumoscan.models.bundle import load_bundle

    model, card = load_bundle(bundle)
    card_task(card, bundle)  # the sidecar states its rule: a task not registered here is refused before any writing
    own = Path(bundle) / ONNX_NAME
    out = Path(out) if out else own
    if (out.parent / CARD).exists() and out.parent.resolve() != Path(bundle).resolve():
        # that bundle's model.onnx (and sidecar) would be another model's: it would then refuse it as stale
        raise ValueError(f"--out {out} is inside another bundle ({out.parent}): write the export elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = ""

    def write(tmp: Path) -> None:
        nonlocal digest
        _to_onnx(model, card.size, str(tmp))
        _check_parity(model, session(tmp), card.size, card.temperature)
        digest = file_sha256(tmp)  # what was written, before it takes the real name

    write_atomic(out, write)
    write_onnx_spec(bundle, out)
    if out.resolve() == own.resolve():
        record_checksum(bundle, ONNX_NAME, digest)
    return out


def _fixed_padding(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """A copy of ``model`` for ``size`` x ``size`` inputs whose TensorFlow-style 'same' convolutions (timm's
    ``Conv2dSame``, which works out its padding from the input's shape on every call) pad by constants instead.
    The exported graph then has no shape arithmetic before those convolutions, ONNX Runtime folds the padding into
    them: the default recipe's FP32 graph ran 1.42x faster, and its INT8 graph reached 2.1x that (docs/results.md,
    INT8 export). The graph's input already has a fixed side, so nothing is lost."""
    import torch
    from timm.layers import Conv2dSame, get_same_padding

    fixed = copy.deepcopy(model).eval()
    same = {name: m for name, m in fixed.named_modules() if isinstance(m, Conv2dSame)}
    if not same:
        return fixed
    sides: dict[str, torch.Size] = {}
    hooks = [m.register_forward_hook(lambda m, args, out, name=name: sides.__setitem__(name, args[0].shape[-2:]))
             for name, m in same.items()]  # fmt: skip
    with torch.inference_mode():
        fixed(torch.zeros(1, 1, size, size))
    for hook in hooks:
        hook.remove()
    for name, conv in same.items():
        ph, pw = (get_same_padding(side, k, s, d)
                  for side, k, s, d in zip(sides[name], conv.kernel_size, conv.stride, conv.dilation))
        plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                                conv.groups, conv.bias is not None)  # fmt: skip
        plain.load_state_dict(conv.state_dict())
        parent, _, attr = name.rpartition(".")
        pad = torch.nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))  # TensorFlow: the odd pixel after
        setattr(fixed.get_submodule(parent), attr, torch.nn.Sequential(pad, plain))
    return fixed


def _to_onnx(model: torch.nn.Module, size: int, dest: str | io.BytesIO) -> None:
    """``model`` as an ONNX graph from ``image`` (N, 1, size, size) to ``logits``, with a dynamic batch axis."""
    import torch

    with warnings.catch_warnings():
        # the TorchScript-based exporter is deprecated but still supported, and the one that works here
        warnings.simplefilter("ignore", DeprecationWarning)
        # the exporter's note that it left a strided slice unfolded: the graph is right, and checked against torch
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            _fixed_padding(model, size), (torch.zeros(1, 1, size, size),), dest, input_names=[INPUT],
            output_names=[OUTPUT], opset_version=OPSET, dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            dynamo=False,
        )  # fmt: skip


def check_exportable(model: torch.nn.Module, size: int, name: str) -> None:
    """Refuse a model that cannot become the ONNX graph predict and serve run, at its input ``size``, before it is
    trained rather than at the end of training (a pooling to a size that does not divide the feature map's, for
    one). A trial export in memory: 0.4 s for efficientnet_lite0 at 192 px."""
    import torch

    modes = {module: module.training for module in model.modules()}  # a part the model keeps in eval stays there
    try:
        _to_onnx(model.eval(), size, io.BytesIO())
    except torch.onnx.OnnxExporterError as e:
        reason = str(e).strip().splitlines()[0]
        raise ValueError(f"{name} at image_size {size} cannot be exported to ONNX, which predict and serve run "
                         f"({reason}); choose another image size") from None
    finally:
        for module, training in modes.items():
            module.train(training)


def module_onnx(model: torch.nn.Module, size: int) -> bytes:
    """``model`` exported in memory as an ONNX graph, checked against torch like a bundle's export."""
    buf = io.BytesIO()
    _to_onnx(model.eval(), size, buf)
    _check_parity(model, session(buf.getvalue()), size, 1.0)
    return buf.getvalue()


def module_session(model: torch.nn.Module, size: int) -> ort.InferenceSession:
    """An ONNX Runtime session on :func:`module_onnx`: for scoring many films several times faster than eager torch
    on a CPU without writing a bundle (the ensemble's out-of-fold scores)."""
    return session(module_onnx(model, size))


def _spec(bundle: Path | str, card: BundleCard) -> dict:
    """Everything besides the graph that turns a film into the bundle's label, as an ONNX sidecar says it."""
    return {
        "input": INPUT,
        "input_layout": "float32 (batch, 1, size, size) = (uint8 grayscale / 255 - mean) / std",
        "output": OUTPUT,
        "output_meaning": "raw logits; probabilities = softmax(logits / temperature)",
        "size": card.size,
        "resize_policy": card.resize_policy,
        "source_size": card.source_size,
        "source_quality": card.source_quality,
        "source_meaning": "an image larger than source_size is first squashed to it (bilinear, antialiased) and "
                          "JPEG-compressed at source_quality; null: no such step",
        "decode_target": card.spec.decode_target,
        "preprocessing": (
            "8-bit grayscale film (a DICOM windowed, a 16-bit PNG stretched from its minimum to its maximum); blocks "
            "of n x n pixels averaged (Pillow's Image.reduce(n)), n = (short side - 1) // decode_target, when n >= 2; "
            "then source_size and source_quality as source_meaning says; then resized to size x size with Pillow's "
            "bilinear filter (antialiased when shrinking) by resize_policy: squash stretches to the square, pad keeps "
            "the aspect ratio and letterboxes with black, center-crop scales the short side and cuts the middle "
            "square (pneumoscan.data.preprocess.preprocess does all of it)"
        ),
        "mean": card.mean,
        "std": card.std,
        "temperature": card.temperature,
        "classes": card.classes,
        "positive": card.positive,
        "positive_probability": card_task(card, bundle).positive_formula,
        "threshold": card.threshold,
        "tta_threshold": card.tta_threshold,
        "threshold_interval": card.threshold_interval,
        "tta_threshold_interval": card.tta_threshold_interval,
        "threshold_interval_meaning": "where the threshold chosen by the same policy on other films like those it was "
                                      "chosen on would fall (95 %, bootstrap): a reading inside it could have been "
                                      "called either way; empty when not recorded",
        "tta_views": [{"zoom": zoom, "shift": shift} for zoom, shift in TTA_VIEWS],
        "tta_meaning": "with test-time augmentation, each view is the size x size uint8 input scaled by zoom about its "
                       "centre and moved round(shift x size) pixels right and down (bilinear, black where nothing "
                       "moved in: torchvision's affine), each view's probabilities softmax(logits / temperature), "
                       "their mean compared with tta_threshold",
        "label_rule": "positive when positive_probability >= threshold (>= tta_threshold for the views' mean)",
        "task": card.task,
        "model": card.model,
        "model_id": card.model_id,
        "opset": OPSET,
        "weights_sha256": weights_digest(bundle),
    }


def write_onnx_spec(bundle: Path | str, out: Path | str) -> None:
    """``out``'s sidecar (the FP32 model's): :func:`_spec`. Training rewrites it once the TTA threshold is chosen,
    which needs the exported model first. The bundle's own (BUNDLE/model.onnx.json) gets its SHA-256 in bundle.json:
    it gives other ONNX runtimes the thresholds and preprocessing, so an edit is refused as the model's would be."""
    path = write_json(spec_path(out), {**_spec(bundle, load_card(bundle)), **described(out)})
    if path.resolve() == spec_path(Path(bundle) / ONNX_NAME).resolve():
        record_checksum(bundle, path.name, file_sha256(path))


def write_int8_spec(bundle: Path | str, figures: dict) -> None:
    """BUNDLE/model.int8.onnx.json: the bundle's spec with the INT8 thresholds and their intervals (``figures``'
    :class:`Int8Operating`) under ``threshold``, ``tta_threshold`` and their ``*_interval``, the keys every reader of
    a sidecar reads (quantisation moves the scores: at the FP32 thresholds the INT8 scores give other labels), and
    the rest of the quantisation's ``figures``. predict and serve take their INT8 thresholds from it, so its SHA-256
    goes into bundle.json like the model's; a rewrite (new thresholds) must come through here too."""
    spec = {**figures, **_spec(bundle, load_card(bundle)), **Int8Operating.from_figures(figures).sidecar_fields(),
            **described(Path(bundle) / INT8_NAME)}
    path = write_json(spec_path(Path(bundle) / INT8_NAME), spec)
    record_checksum(bundle, path.name, file_sha256(path))


def _check_parity(model: torch.nn.Module, sess: ort.InferenceSession, size: int, temperature: float) -> None:
    import torch

    x = torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = softmax(model(x).numpy(), temperature)
    got = softmax(sess.run([OUTPUT], {INPUT: x.numpy()})[0], temperature)
    if not np.isfinite(expected).all():
        raise ValueError("the model gives non-finite probabilities (NaN or infinity): its weights are unusable")
    # allclose, not a max difference against the tolerance: NaN > tol is false, NaN is never close
    if not np.allclose(got, expected, rtol=0.0, atol=PARITY_TOLERANCE, equal_nan=False):
        diff = float(np.abs(expected - got).max())
        raise ValueError(f"ONNX export differs from torch by {diff:.2e} in probability (> {PARITY_TOLERANCE})")


def bundle_session(bundle: Path | str) -> ort.InferenceSession:
    """Session on BUNDLE/model.onnx once it is shown to be the export of the bundle's weights, undamaged; a
    bundle without a model.onnx (nor a record of one) is exported to a temporary file first."""
    card = load_card(bundle)
    existing = Path(bundle) / ONNX_NAME
    if ONNX_NAME not in card.files and not existing.exists():
        logger.info("%s has no %s: exporting its weights for this run (pneumoscan export keeps one)", bundle, ONNX_NAME)
        with tempfile.TemporaryDirectory() as tmp:
            return session(export_onnx(bundle, Path(tmp) / ONNX_NAME).read_bytes())
    verify_onnx(bundle, card)
    return session(existing)
