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

import contextlib
import copy
import io
import logging
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from pneumoscan.core.atomic import write_atomic, write_json
from pneumoscan.core.metrics import softmax
from pneumoscan.data.preprocess import TTA_VIEWS
from pneumoscan.data.scope import AGE_RANGE_YEARS, FRONTAL_VIEWS, MAX_ASPECT, MIN_SIDE, RADIOGRAPHY
from pneumoscan.core.digests import file_sha256, hex_part
from pneumoscan.models.card import CARD, ONNX_NAME, WEIGHTS, BundleCard, card_task, load_card, record_checksum
from .onnx_runtime import (INPUT, INT8_NAME, ONNX_DIGEST, OUTPUT, Int8Operating, bundle_model, described, session,
                           spec_path, verify_onnx, weights_digest)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
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
        raise ValueError(f"out (--out) {out} is inside another bundle ({out.parent}): write the export elsewhere")
    if out.parent.resolve() == Path(bundle).resolve() and out.name != ONNX_NAME:
        # over its weights or its INT8 model the bundle was lost (refused as damaged from then on), exit status 0
        raise ValueError(f"out (--out) {out} is in the bundle itself, where only {ONNX_NAME} is the export's: leave "
                         "it out, or write the export elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = ""

    def write(tmp: Path) -> None:
        nonlocal digest
        _to_onnx(model, card.size, str(tmp))
        _check_parity(model, session(tmp), card.size, card.temperature)
        digest = file_sha256(tmp)  # what was written, before it takes the real name

    write_atomic(out, write)
    write_onnx_spec(bundle, out, card.files.get(WEIGHTS), digest)  # the weights as loaded and checked, the graph
    if out.resolve() == own.resolve():
        record_checksum(bundle, ONNX_NAME, digest)
    return out


def _fixed_padding(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """A copy of ``model`` for ``size`` x ``size`` inputs whose TensorFlow-style 'same' convolutions (timm's
    ``Conv2dSame``, which works out its padding from the input's shape on every call) pad by constants instead.
    The exported graph then has no shape arithmetic before those convolutions, ONNX Runtime folds the padding into
    them: the default recipe's FP32 graph ran 1.42x faster, and its INT8 graph reached 2.1x that (docs/results.md,
    INT8 export). The graph's input already has a fixed side, so nothing is lost. A model that holds a Conv2dSame
    has had timm imported: where it is not, none is looked for (simple_cnn's runs never import timm)."""
    import torch

    fixed = copy.deepcopy(model).eval()
    if "timm" not in sys.modules:
        return fixed
    from timm.layers import Conv2dSame, get_same_padding

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


@contextlib.contextmanager
def _exporter_log_off() -> Iterator[None]:
    """torch's TorchScript exporter with its IR log off, as its ``verbose=False`` means: it tests whether the log is
    on by the truth of the function that says so (``setup_onnx_logging``), so every export turned the log on, and a
    model it could not export printed its whole graph to stdout (over a results CSV there) before pneumoscan's one
    line of why. Seen as off, the log is turned off for the export."""
    import torch

    enabled = torch._C._jit_is_onnx_log_enabled
    torch._C._jit_is_onnx_log_enabled = False
    try:
        yield
    finally:
        torch._C._jit_is_onnx_log_enabled = enabled


def _to_onnx(model: torch.nn.Module, size: int, dest: str | io.BytesIO) -> None:
    """``model`` as an ONNX graph from ``image`` (N, 1, size, size) to ``logits``, with a dynamic batch axis."""
    import torch

    with warnings.catch_warnings(), _exporter_log_off():
        # the TorchScript-based exporter is deprecated but still supported, and the one that works here
        warnings.simplefilter("ignore", DeprecationWarning)
        # the exporter's note that it left a strided slice unfolded: the graph is right, and checked against torch
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            _fixed_padding(model, size), (torch.zeros(1, 1, size, size),), dest, input_names=[INPUT],
            output_names=[OUTPUT], opset_version=OPSET, dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            dynamo=False,
        )  # fmt: skip


def check_exportable(model: torch.nn.Module, size: int, name: str, classes: int | None = None) -> None:
    """Refuse a model that cannot become the ONNX graph predict and serve run, at its input ``size``, before it is
    trained rather than at the end of training (a pooling to a size that does not divide the feature map's, for
    one), or, given the task's number of ``classes``, one that does not give a logit for each (a registered builder
    that ignores ``num_classes``: training ended in torch's words on the loss's weights, naming no model). A trial
    export in memory: 0.4 s for efficientnet_lite0 at 192 px."""
    import torch

    modes = {module: module.training for module in model.modules()}  # a part the model keeps in eval stays there
    try:
        try:  # a size too small for its pooling (cnn5 under 32 px) fails in torch itself: a traceback had ended the run
            with torch.no_grad():
                out = model.eval()(torch.zeros(1, 1, size, size))
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[0]
            raise ValueError(f"{name} cannot read images of {size} px ({reason}); choose a larger image size"
                             ) from None
        if classes is not None and tuple(getattr(out, "shape", ())) != (1, classes):
            given = f"an output of shape {tuple(out.shape)}" if hasattr(out, "shape") else type(out).__name__
            raise ValueError(f"{name} gives {given} for one image, where the task needs one logit for each of its "
                             f"{classes} classes, (1, {classes}): its builder must make its head of num_classes")
        _to_onnx(model, size, io.BytesIO())
    except torch.onnx.errors.UnsupportedOperatorError as e:  # at every size: the model itself must change
        reason = str(e).strip().splitlines()[0]
        raise ValueError(f"{name} cannot be exported to ONNX, which predict and serve run ({reason}); build the model "
                         "of operators ONNX has (docs/development.md, Adding a model)") from None
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


# The sidecar's words for each step from a file to the graph's input and from its outputs to a label: enough to
# score a film with Pillow, pydicom, numpy and ONNX Runtime alone (tests/test_onnx_alone.py does, and gets predict's
# probabilities; docs/cli.md#scoring-with-onnx-runtime-alone)
_PREPROCESSING = (
    "1. decode to 8-bit grey: a JPEG or an 8-bit PNG as Pillow's convert('L') gives it (ITU-R 601-2 luma for colour); "
    "a 16-bit PNG stretched linearly from its minimum to its maximum to 0-255, rounded to the nearest level; a DICOM "
    "through its rescale or modality LUT, then its VOI LUT or else its first window (pydicom's apply_modality_lut and "
    "apply_voi_lut), then stretched linearly from its lowest to its highest value to 0-255, rounded to the nearest "
    "level (an unsigned 8-bit film with no LUT and no window kept as stored), MONOCHROME1 inverted (255 - grey), pixel"
    " padding (Pixel Padding Value) left out of the stretch and black, non-square pixels made square with Pillow's box"
    " filter (docs/dicom.md, How a film is read). 2. blocks of n x n pixels averaged (Pillow's Image.reduce(n)), n = "
    "(short side - 1) // decode_target, when n >= 2. 3. a JPEG or PNG turned upright as its EXIF Orientation tag says "
    "(the transposes of Pillow's ImageOps.exif_transpose), after the reduction. 4. source_size and source_quality as "
    "source_meaning says. 5. resized to size x size as resize_meaning says. 6. normalised as input_layout says. "
    "(pneumoscan.data.decode.read_gray with target=decode_target, then pneumoscan.data.preprocess.PreprocessSpec's "
    "apply, does steps 1 to 5.)"
)
_RESIZE = (
    "an image already size x size is kept; otherwise Pillow's Image.resize with the bilinear filter (antialiased "
    "when shrinking), by resize_policy. squash: im.resize((size, size)). pad (letterbox): scale = size / max(w, h), "
    "new_w = max(1, round(w * scale)), new_h = max(1, round(h * scale)) (Python's round), im.resize((new_w, new_h)) "
    "pasted at ((size - new_w) // 2, (size - new_h) // 2) on a black size x size image. center-crop: side = "
    "min(w, h), im.resize((size, size), box=((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)). An "
    "image squashed to source_size first is square, so every policy then squashes it"
)
_TTA = (
    "with test-time augmentation each view warps the size x size uint8 input (after step 5, before normalising): "
    "t = round(shift x size) pixels; the output pixel at column c, row r is the bilinear interpolation of the input "
    "at x = (c + 0.5 - size / 2 - t) / zoom + size / 2 - 0.5, y = (r + 0.5 - size / 2 - t) / zoom + size / 2 - 0.5 "
    "(pixel centres at whole numbers; a neighbour outside the image counts as 0), rounded half to even to uint8: "
    "the picture is scaled by zoom about its centre and moved t pixels right and down, black where nothing moved "
    "in (torchvision.transforms.v2.functional.affine with angle 0, translate [t, t], scale zoom, shear 0, bilinear, "
    "computed in float32 in its own order: computed otherwise, some pixels of a zoomed view come out one grey level "
    "apart, which moves the probabilities a little, an INT8 model's most; docs/cli.md, Scoring with ONNX Runtime "
    "alone). Each view is normalised and scored alone, its probabilities softmax(logits / temperature), and their "
    "mean over the views is compared with tta_threshold"
)
_NOT_IN_THE_GRAPH = (
    f"the graph scores whatever it is given: a lateral film, another body part or modality, an adult's film, a "
    f"blank or inverted one get a probability like any other. pneumoscan checks before and beside scoring, and "
    f"the graph does not: the DICOM header (Modality {'/'.join(RADIOGRAPHY)}, BodyPartExamined CHEST, ViewPosition "
    f"{' or '.join(FRONTAL_VIEWS)}, patient age {AGE_RANGE_YEARS[0]} to under {AGE_RANGE_YEARS[1]:g} years, "
    f"MONOCHROME1/2, shorter side at least {MIN_SIDE} px, longer side at most {MAX_ASPECT:g} times it, tags that "
    f"contradict each other), blank or nearly blank films and films of few grey levels (refused), and the image "
    f"content against the training films (appearance.safetensors). Scoring without pneumoscan, check the header "
    f"as docs/dicom.md (Scope checks) says, file no finding for a film outside it, and refuse a film decoded to "
    f"one grey level; the image content check has no equivalent outside pneumoscan"
)


def _spec(bundle: Path | str, card: BundleCard, weights: str | None = None) -> dict:
    """Everything besides the graph that turns a film into the bundle's label, as an ONNX sidecar says it.
    ``weights``: the SHA-256 of the weights where the caller has them (read from the file when None)."""
    return {
        "input": INPUT,
        "input_layout": "float32 (batch, 1, size, size), one grey channel, any batch size: "
                        "(uint8 grayscale / 255 - mean) / std",
        "output": OUTPUT,
        "output_meaning": "raw logits (batch, number of classes), column i for classes[i]; probabilities = "
                          "softmax(logits / temperature)",
        "size": card.size,
        "resize_policy": card.resize_policy,
        "source_size": card.source_size,
        "source_quality": card.source_quality,
        "source_meaning": "an image larger than source_size (its longer side) is first squashed to source_size x "
                          "source_size (Pillow's bilinear filter, antialiased) and saved and decoded again as a JPEG "
                          "of source_quality (Pillow's encoder); null: no such step",
        "decode_target": card.spec.decode_target,
        "preprocessing": _PREPROCESSING,
        "resize_meaning": _RESIZE,
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
        "threshold_interval_meaning": "the 95 % confidence interval (bootstrap) of the threshold the same policy "
                                      "would choose on all films like those it was chosen on: a reading inside it "
                                      "could have been called either way; empty when not recorded",
        "tta_views": [{"zoom": zoom, "shift": shift} for zoom, shift in TTA_VIEWS],
        "tta_meaning": _TTA,
        "label_rule": "positive when positive_probability >= threshold (>= tta_threshold for the views' mean)",
        "task": card.task,
        "model": card.model,
        "model_id": card.model_id,
        "opset": OPSET,
        "weights_sha256": hex_part(weights) if weights else weights_digest(bundle),
        "not_in_the_graph": _NOT_IN_THE_GRAPH,
    }


def write_onnx_spec(bundle: Path | str, out: Path | str, weights: str | None = None, onnx: str | None = None
                    ) -> None:
    """``out``'s sidecar (the FP32 model's): :func:`_spec`. Training rewrites it once the TTA threshold is chosen,
    which needs the exported model first. The bundle's own (BUNDLE/model.onnx.json) gets its SHA-256 in bundle.json:
    it gives other ONNX runtimes the thresholds and preprocessing, so an edit is refused as the model's would be.
    ``weights``, ``onnx``: the SHA-256 of the weights exported and of the graph written, where the caller has them
    (an export: each file is then hashed once); None: each read from its file."""
    described_as = {ONNX_DIGEST: hex_part(onnx)} if onnx else described(out)
    path = write_json(spec_path(out), {**_spec(bundle, load_card(bundle), weights), **described_as})
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


UNUSABLE = "the model gives non-finite probabilities (NaN or infinity): its weights are unusable"


def _probe(size: int) -> torch.Tensor:
    """The random batch the export's checks score: the same every time."""
    import torch

    return torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(0))


def check_usable(model: torch.nn.Module, size: int) -> None:
    """Refuse (:data:`UNUSABLE`) weights whose logits on the export's random batch are not finite, before anything
    is built on them: an ensemble's member is then refused by name, not the ensemble's export as a whole."""
    import torch

    with torch.inference_mode():
        if not torch.isfinite(model(_probe(size))).all():
            raise ValueError(UNUSABLE)


def _check_parity(model: torch.nn.Module, sess: ort.InferenceSession, size: int, temperature: float) -> None:
    import torch

    x = _probe(size)
    with torch.inference_mode():
        expected = softmax(model(x).numpy(), temperature)
    got = softmax(sess.run([OUTPUT], {INPUT: x.numpy()})[0], temperature)
    if not np.isfinite(expected).all():
        raise ValueError(UNUSABLE)
    # allclose, not a max difference against the tolerance: NaN > tol is false, NaN is never close
    if not np.allclose(got, expected, rtol=0.0, atol=PARITY_TOLERANCE, equal_nan=False):
        diff = float(np.abs(expected - got).max())
        raise ValueError(f"ONNX export differs from torch by {diff:.2e} in probability (> {PARITY_TOLERANCE})")


def bundle_session(bundle: Path | str, card: BundleCard | None = None, weights: str | None = None
                   ) -> ort.InferenceSession:
    """Session on BUNDLE/model.onnx once it is shown to be the export of the bundle's weights, undamaged, from the
    bytes checked, its constants finite (:func:`~.onnx_runtime.bundle_model`); a bundle without a model.onnx (nor a
    record of one) is exported to a temporary file first. ``card``: the one the caller loaded the bundle by (read
    here when None): a card read apart could be another bundle's, were the folder replaced in between. ``weights``:
    the weights' SHA-256 as the caller has just checked them (:func:`~.onnx_runtime.verify_onnx`)."""
    card = card if card is not None else load_card(bundle)
    existing = Path(bundle) / ONNX_NAME
    if ONNX_NAME not in card.files and not existing.exists():
        log.info("%s has no %s: exporting its weights for this run (pneumoscan export keeps one)", bundle, ONNX_NAME)
        with tempfile.TemporaryDirectory() as tmp:
            return session(export_onnx(bundle, Path(tmp) / ONNX_NAME).read_bytes())
    verify_onnx(bundle, card, weights)
    return bundle_model(existing, card.files.get(ONNX_NAME))
