"""INT8 ONNX model of a bundle for CPU serving: ONNX Runtime static quantisation, calibrated on training films.

Quantising moves the scores, so the INT8 model gets its own operating point: its threshold (and TTA threshold)
is chosen again on the INT8 scores of the validation films, with the bundle's own policy. Both live in the
model's sidecar (``model.int8.onnx.json``), beside the validation AUC of the FP32 and INT8 models, so that
``predict``/``serve --backend onnx-int8`` read labels at the threshold validated for the scores they compute.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from pneumoscan.core.atomic import write_atomic
from pneumoscan.core.metrics import choose_thresholds, roc_auc
from pneumoscan.data.tasks import binary_targets, get_task
from pneumoscan.evaluation.evaluate import labelled_images
from pneumoscan.inference.export import INPUT, INT8_NAME, ONNX_NAME, session, spec_path, write_onnx_spec
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.bundle import load_card, record_checksum

log = logging.getLogger(__name__)
CALIBRATION_IMAGES = 256  # training films whose activations set the INT8 ranges (more changed AUC by < 0.001)
CALIBRATION_BATCH = 32


class _Calibration(CalibrationDataReader):
    """Feeds normalised training batches to ONNX Runtime's calibrator, as the FP32 model would read them."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self._batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: batch}


def _sample(n_rows: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=min(n, n_rows), replace=False))


def quantize_bundle(bundle: Path | str, data: Path | str, calibration_images: int = CALIBRATION_IMAGES) -> Path:
    """Write BUNDLE/model.int8.onnx and its sidecar. DATA is labelled data with train and val splits (the run's
    split.csv): activations are calibrated on ``calibration_images`` of its training films, and the thresholds are
    chosen on its validation films. Refuses an INT8 model whose validation AUC is more than 0.01 below FP32's."""
    bundle = Path(bundle)
    card = load_card(bundle)
    task = get_task(card.task)
    fp32 = Predictor(bundle, backend="onnx")
    train_images, _, _ = labelled_images(data, "train", task, card.spec)
    val_images, val_targets, _ = labelled_images(data, "val", task, card.spec)
    if len(train_images) == 0 or len(val_images) == 0:
        raise ValueError(f"{data} must hold train and val films of the {card.task} task (a run's split.csv)")
    y = binary_targets(val_targets)
    if y.min() == y.max():
        raise ValueError(f"the val films of {data} are all one class: no threshold can be chosen on them")
    calib = train_images[_sample(len(train_images), calibration_images)]
    batches = (fp32.inputs(calib[i : i + CALIBRATION_BATCH]).numpy() for i in range(0, len(calib), CALIBRATION_BATCH))
    if not (bundle / ONNX_NAME).exists():
        raise ValueError(f"{bundle} has no {ONNX_NAME}: run `pneumoscan export {bundle}` first")
    out = bundle / INT8_NAME
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(bundle / ONNX_NAME), str(prepared), skip_symbolic_shape=True)
        quantized = Path(tmp) / INT8_NAME
        quantize_static(
            str(prepared), str(quantized), _Calibration(batches), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
        write_atomic(out, quantized.read_bytes())  # the temporary folder may be on another file system
    write_onnx_spec(bundle, out)
    int8 = Predictor(bundle, backend="onnx", session=session(out))  # its thresholds are chosen below
    scores = {name: p.positive(p.probabilities(val_images)) for name, p in (("fp32", fp32), ("int8", int8))}
    tta = int8.positive(int8.probabilities(val_images, tta=True))
    int8_threshold, int8_tta_threshold = choose_thresholds(y, scores["int8"], tta, *card.threshold_targets)
    figures = {
        "int8_threshold": int8_threshold,
        "int8_tta_threshold": int8_tta_threshold,
        "threshold_policy": card.threshold_policy,
        "calibration_images": int(len(calib)),
        "validation_images": int(len(y)),
        "val_auc_fp32": roc_auc(y, scores["fp32"]),
        "val_auc_int8": roc_auc(y, scores["int8"]),
        "max_probability_change": float(np.abs(scores["fp32"] - scores["int8"]).max()),
    }
    if figures["val_auc_int8"] < figures["val_auc_fp32"] - 0.01:
        out.unlink()
        spec_path(out).unlink()
        raise ValueError(f"INT8 validation AUC {figures['val_auc_int8']:.4f} is more than 0.01 below FP32's "
                         f"{figures['val_auc_fp32']:.4f}: not written; serve this bundle with --backend onnx")
    sidecar = spec_path(out)
    write_atomic(sidecar, json.dumps({**json.loads(sidecar.read_text()), **figures}, indent=2).encode())
    record_checksum(bundle, INT8_NAME)  # the backend refuses a file that differs from the one written here
    log.info("INT8 model %s: val AUC %.4f (FP32 %.4f), threshold %.4f", out, figures["val_auc_int8"],
             figures["val_auc_fp32"], figures["int8_threshold"])
    return out
