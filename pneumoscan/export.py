"""ONNX export of a bundle, and the ONNX Runtime session the ``onnx`` prediction backend runs.

The graph maps the normalised image batch ``image`` (N, 1, S, S) float32 to raw ``logits`` (N, C); resizing,
normalisation and temperature stay outside it and are written next to the file (``model.onnx.json``), so any
ONNX runtime can reproduce the bundle's probabilities. The spec also records the SHA-256 of the bundle's
weights: a ``model.onnx`` left in a bundle whose weights later changed is detected and not used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from .bundle import WEIGHTS, load_bundle, load_card
from .metrics import softmax

ONNX_NAME = "model.onnx"  # where `pneumoscan export` puts the file by default and the onnx backend looks first
INT8_NAME = "model.int8.onnx"  # where `export --int8` (pneumoscan.quantize) writes and `--backend onnx-int8` looks
INPUT, OUTPUT = "image", "logits"
OPSET = 17
PARITY_TOLERANCE = 1e-4  # max |P_torch - P_onnx| accepted by the self-check at export time


def spec_path(onnx_path: Path | str) -> Path:
    """The preprocessing spec that belongs to an exported model: ``model.onnx`` -> ``model.onnx.json``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def weights_digest(bundle: Path | str) -> str:
    digest = hashlib.sha256()
    with (Path(bundle) / WEIGHTS).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def session(model: Path | str | bytes, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session with as many intra-op threads as torch uses, so both backends compete on equal terms."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def export_onnx(bundle: Path | str, out: Path | str | None = None) -> Path:
    """Write the bundle's model as ONNX (dynamic batch axis) plus its spec; returns the ONNX path.

    Uses the TorchScript-based exporter (``dynamo=False``): it works offline for every registered model,
    including tf_efficientnet_lite0's TensorFlow-style 'same' padding. The result is checked against torch
    on a small random batch (also proving the batch axis is dynamic); a mismatch raises RuntimeError.
    """
    model, card = load_bundle(bundle)
    out = Path(out) if out else Path(bundle) / ONNX_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 1, card.size, card.size)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # the TorchScript-based exporter is deprecated but still supported, and the one that works here
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (example,), tmp, input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET,
                dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False,
            )  # fmt: skip
        _check_parity(model, session(tmp), card.size, card.temperature)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    write_onnx_spec(bundle, out)
    return out


def write_onnx_spec(bundle: Path | str, out: Path | str) -> None:
    """``out``'s sidecar: everything besides the graph that turns a film into the bundle's label. Training
    rewrites it once the TTA threshold is chosen, which needs the exported model first."""
    card = load_card(bundle)
    multiclass = len(card.classes) > 2
    spec = {
        "input": INPUT,
        "input_layout": "float32 (batch, 1, size, size) = (uint8 grayscale / 255 - mean) / std",
        "output": OUTPUT,
        "output_meaning": "raw logits; probabilities = softmax(logits / temperature)",
        "size": card.size,
        "resize_policy": card.resize_policy,
        "source_size": card.source_size,
        "source_quality": card.source_quality,
        "source_meaning": "an image larger than source_size is first squashed to it (bilinear, antialiased) and JPEG-compressed at source_quality",
        "mean": card.mean,
        "std": card.std,
        "temperature": card.temperature,
        "classes": card.classes,
        "positive": card.positive,
        "positive_probability": f"1 - P({card.classes[0]})" if multiclass else f"P({card.positive})",
        "threshold": card.threshold,
        "tta_threshold": card.tta_threshold,
        "tta_meaning": "for the mean probability over pneumoscan.predict.TTA_VIEWS (zoom, shift) views",
        "task": card.task,
        "model": card.model,
        "model_id": card.model_id,
        "opset": OPSET,
        "weights_sha256": weights_digest(bundle),
    }
    spec_path(out).write_text(json.dumps(spec, indent=2))


def _check_parity(model: torch.nn.Module, sess: ort.InferenceSession, size: int, temperature: float) -> None:
    x = torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = softmax(model(x).numpy(), temperature)
    got = softmax(sess.run([OUTPUT], {INPUT: x.numpy()})[0], temperature)
    diff = float(np.abs(expected - got).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} in probability (> {PARITY_TOLERANCE})")


def bundle_session(bundle: Path | str) -> ort.InferenceSession:
    """Session on BUNDLE/model.onnx when it was exported from these exact weights, else on a fresh export."""
    existing = Path(bundle) / ONNX_NAME
    try:
        current = json.loads(spec_path(existing).read_text())["weights_sha256"] == weights_digest(bundle)
    except (OSError, ValueError, KeyError):
        current = False
    if current:
        return session(existing)
    with tempfile.TemporaryDirectory() as tmp:
        return session(export_onnx(bundle, Path(tmp) / ONNX_NAME).read_bytes())


def int8_model(bundle: Path | str) -> tuple[ort.InferenceSession, dict]:
    """The INT8 session and its sidecar (thresholds included); refused when the file is missing, was made from
    other weights, or its thresholds were never chosen."""
    out = Path(bundle) / INT8_NAME
    try:
        sidecar = json.loads(spec_path(out).read_text())
    except (OSError, ValueError):
        sidecar = {}
    if not out.exists() or "int8_threshold" not in sidecar:
        raise ValueError(f"{bundle} has no validated {INT8_NAME}: run `pneumoscan export {bundle} --int8 --data RUN/split.csv`")
    if sidecar.get("weights_sha256") != weights_digest(bundle):
        raise ValueError(f"{out} was made from other weights than {bundle}'s: run `pneumoscan export --int8` again")
    return session(out), sidecar
