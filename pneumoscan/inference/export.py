"""ONNX export of a bundle, and the ONNX Runtime session the ``onnx`` prediction backend runs.

The graph maps the normalised image batch ``image`` (N, 1, S, S) float32 to raw ``logits`` (N, C); resizing,
normalisation and temperature stay outside it and are written next to the file (``model.onnx.json``), so any
ONNX runtime can reproduce the bundle's probabilities. The spec also records the SHA-256 of the bundle's
weights, and bundle.json the SHA-256 of BUNDLE/model.onnx: a ``model.onnx`` exported from other weights, or
damaged since, is refused with its reason; exporting again is the explicit ``pneumoscan export``. The INT8
model's sidecar (``model.int8.onnx.json``) gives its own thresholds under the same keys, and bundle.json records
the SHA-256 of both INT8 files.

Scoring needs no torch: the sessions, the sidecars and their checks import only ONNX Runtime, and torch and timm
are imported by the functions that export (a bundle without a model.onnx is exported on first use).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from pneumoscan.core.atomic import write_atomic, write_json
from pneumoscan.core.metrics import softmax
from pneumoscan.core.options import model_threads
from pneumoscan.data.preprocess import TTA_VIEWS
from pneumoscan.models.card import (CARD, ENSEMBLE, ONNX_NAME, WEIGHTS, BundleCard, card_task, file_sha256, load_card,
                                   read_bundle_text, record_checksum, verify_file)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
# What ONNX Runtime raises for a file it cannot load (truncated, not ONNX, an unsupported graph)
_LOAD_ERRORS = (
    ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
    ort.capi.onnxruntime_pybind11_state.InvalidGraph, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
    ort.capi.onnxruntime_pybind11_state.NoSuchFile, ort.capi.onnxruntime_pybind11_state.RuntimeException,
)  # fmt: skip
INT8_NAME = "model.int8.onnx"  # where `export --int8` (pneumoscan.training.quantize) writes and `--backend onnx-int8` looks
INPUT, OUTPUT = "image", "logits"
OPSET = 17
PARITY_TOLERANCE = 1e-4  # max |P_torch - P_onnx| accepted by the self-check at export time


def spec_path(onnx_path: Path | str) -> Path:
    """The preprocessing spec that belongs to an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def weights_digest(bundle: Path | str) -> str:
    """Hex SHA-256 of the bundle's weights file (the sidecar's ``weights_sha256``)."""
    return file_sha256(Path(bundle) / WEIGHTS).removeprefix("sha256:")


def model_version(bundle: Path | str, backend: str = "torch") -> str:
    """The version every result states (predict's rows, web answers, SR, FHIR): a prefix of the sha256 of the
    bundle's weights, so a result can be traced to the bundle that made it. Read with the INT8 model
    (``onnx-int8``), whose scores and thresholds are its own, the INT8 file's digest follows, so a result names the
    model whose threshold it states."""
    version = f"sha256:{weights_digest(bundle)[:12]}"
    if backend == "onnx-int8":
        version += f"+int8:{file_sha256(Path(bundle) / INT8_NAME).removeprefix('sha256:')[:12]}"
    return version


def session(model: Path | str | bytes) -> ort.InferenceSession:
    """A CPU session with as many intra-op threads as torch uses (:func:`~pneumoscan.core.options.model_threads`:
    never more than the cores this process may use), so both backends compete on equal terms. A file ONNX Runtime
    cannot load (truncated, not ONNX) is a ValueError with its reason."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = model_threads()
    options.inter_op_num_threads = 1
    try:
        # the file's bytes, read by Python: ONNX Runtime refuses a path that is not UTF-8 (a TypeError)
        source = model if isinstance(model, bytes) else Path(model).read_bytes()
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except (*_LOAD_ERRORS, OSError) as e:
        name = "the exported model" if isinstance(model, bytes) else str(model)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{name} is not a loadable ONNX model: {reason}") from None


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
        ph, pw = (get_same_padding(side, k, s, d) for side, k, s, d in zip(sides[name], conv.kernel_size, conv.stride, conv.dilation))
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
            _fixed_padding(model, size), (torch.zeros(1, 1, size, size),), dest, input_names=[INPUT], output_names=[OUTPUT],
            opset_version=OPSET, dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False,
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
            "8-bit grayscale film (a DICOM windowed, a 16-bit PNG stretched from its minimum to its maximum); blocks of "
            "n x n pixels averaged (Pillow's Image.reduce(n)), n = (short side - 1) // decode_target, when n >= 2; "
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
    path = write_json(spec_path(out), _spec(bundle, load_card(bundle)))
    if path.resolve() == spec_path(Path(bundle) / ONNX_NAME).resolve():
        record_checksum(bundle, path.name, file_sha256(path))


def write_int8_spec(bundle: Path | str, figures: dict) -> None:
    """BUNDLE/model.int8.onnx.json: the bundle's spec with the INT8 thresholds (``figures["int8_threshold"]`` and
    ``["int8_tta_threshold"]``) under ``threshold`` and ``tta_threshold``, the keys every reader of a sidecar reads
    (quantisation moves the scores: at the FP32 thresholds the INT8 scores give other labels), and the rest of the
    quantisation's ``figures``. predict and serve take their INT8 thresholds from it, so its SHA-256 goes into
    bundle.json like the model's; a rewrite (new thresholds) must come through here too."""
    spec = {**figures, **_spec(bundle, load_card(bundle)), "threshold": figures["int8_threshold"],
            "tta_threshold": figures["int8_tta_threshold"],
            # the INT8 thresholds' own intervals where a reader of a sidecar reads them, not the FP32 ones
            "threshold_interval": figures.get("int8_threshold_interval", []),
            "tta_threshold_interval": figures.get("int8_tta_threshold_interval", [])}  # fmt: skip
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


def read_sidecar(model: Path | str, strict: bool = False) -> dict:
    """The JSON object of ``model``'s sidecar, read one way wherever one is read (the FP32 and INT8 models' checks,
    the model card, ``threshold``, ``export --int8``): through :func:`read_bundle_text`, so a pipe or a device in
    its place is refused instead of read without end. When missing, unreadable or not an object: empty, for the
    checks that refuse that with their own remedy, or with ``strict`` the error saying why, for a reader that
    needs the figures."""
    path = spec_path(model)
    try:
        sidecar = json.loads(read_bundle_text(path))
    except (OSError, ValueError):
        if strict:
            raise
        sidecar = None
    if isinstance(sidecar, dict):
        return sidecar
    if strict:
        raise ValueError(f"{path} holds no JSON object")
    return {}


def verify_onnx(bundle: Path | str, card: BundleCard) -> None:
    """Refuse (ValueError) a BUNDLE/model.onnx that is not the export of the bundle's current weights (its sidecar
    says so) or whose bytes differ from those recorded when it was exported. Never re-exported silently: the
    remedy is the explicit ``pneumoscan export``."""
    existing = Path(bundle) / ONNX_NAME
    remedy = f"run `pneumoscan export {bundle}` to export it again from the bundle's weights"
    if not existing.exists():
        raise ValueError(f"{existing} is missing, but bundle.json lists it; {remedy}")
    sidecar = read_sidecar(existing)
    if "weights_sha256" not in sidecar:
        raise ValueError(f"{spec_path(existing)} is missing or unreadable, so nothing ties {existing} to the "
                         f"bundle's weights; {remedy}")
    if (exported_from := sidecar["weights_sha256"]) != weights_digest(bundle):
        raise ValueError(f"{existing} is stale: it was exported from other weights ({str(exported_from)[:12]}...) "
                         f"than {WEIGHTS} ({weights_digest(bundle)[:12]}...); {remedy}")
    if not card.files:
        return  # a bundle older than the record: load_bundle has warned that its files cannot be checked
    if ONNX_NAME not in card.files:
        raise ValueError(f"{existing}: bundle.json records no checksum for it (pneumoscan export did not write it "
                         f"there); {remedy}")
    verify_file(bundle, card, ONNX_NAME, remedy)
    if spec_path(existing).name in card.files:  # bundles exported before it was recorded have none
        verify_file(bundle, card, spec_path(existing).name, remedy)


def int8_model(bundle: Path | str) -> tuple[ort.InferenceSession, dict]:
    """The INT8 session and its sidecar (thresholds included); refused when the file is missing, was made from
    other weights, its thresholds were never chosen, or either file differs from what ``export --int8`` wrote (the
    checksums in bundle.json; the sidecar's thresholds turn INT8 scores into labels)."""
    out = Path(bundle) / INT8_NAME
    sidecar_path = spec_path(out)
    card = load_card(bundle)
    # an ensemble of cv runs is calibrated out of fold: its members trained on every film a --data could give
    out_of_fold = card.model == ENSEMBLE and str((card.train_config or {}).get("calibrated_on", "")).startswith("out-of-fold")
    command = f"pneumoscan export {bundle} --int8 " + ("--cv CV_DIR ... (the runs it was built from)" if out_of_fold
                                                         else "--data RUN/split.csv")
    remedy = f"run `{command}` again"
    sidecar = read_sidecar(out)
    if not out.exists() or not {"int8_threshold", "int8_val_metrics"} <= sidecar.keys():
        raise ValueError(f"{bundle} has no validated {INT8_NAME}: run `{command}`")
    if sidecar.get("weights_sha256") != weights_digest(bundle):
        raise ValueError(f"{out} was made from other weights than {bundle}'s: {remedy}")
    if card.files:  # a bundle that records checksums: both files must be the ones quantisation wrote
        for name in (INT8_NAME, sidecar_path.name):
            if name not in card.files:
                raise ValueError(f"{Path(bundle) / name}: bundle.json records no checksum for it; {remedy}")
            verify_file(bundle, card, name, remedy)
    if [sidecar.get(k) for k in ("threshold", "tta_threshold")] != [sidecar.get(k) for k in ("int8_threshold", "int8_tta_threshold")]:
        raise ValueError(f"{sidecar_path} gives other thresholds under threshold and tta_threshold than its INT8 ones "
                         "(an export by an earlier pneumoscan, which put the FP32 ones there): a reader of the sidecar "
                         f"would label INT8 scores at the FP32 thresholds; {remedy}")
    return session(out), sidecar
