"""One check for every named choice (task, model, backend, resize policy, fill mode, format, config key): an
unknown name is refused with the closest known ones, as MONAI's ``look_up_option`` does, so a typo reads as a typo."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")
# Named choices the command line offers, kept here, free of torch, so that building the CLI imports no model code
# (the tasks come from their registry).
BACKENDS = ("torch", "onnx", "onnx-int8")  # predict.Predictor: torch, ONNX Runtime, the bundle's INT8 ONNX model
FILL_MODES = ("constant", "nearest", "reflect")  # augment.Augment.fill_mode: Keras' names
RESIZE_POLICIES = ("squash", "pad", "center-crop")  # preprocess.resize: how a film becomes the model's square
OPTIMIZERS = ("adamw-cosine", "adam-plateau")  # config.TrainConfig.optimizer
PRECISIONS = ("auto", "bf16", "fp32")  # config.TrainConfig.precision
TRACKERS = ("tensorboard", "mlflow")  # tracking.make_trackers: train --log
# differences.paired_differences: compare's test of two models' AUCs, the first the default (no normal approximation)
AUC_TESTS = ("permutation", "delong")
SPLITS = ("train", "val", "test")  # layouts: a dataset root's split folders, a manifest's split column
# Defaults the command line shows and the library takes, one number for both
VAL_FRACTION = 0.15  # split.patient_split: the share of each class and subtype in validation
PREDICT_BATCH = 64  # predict.Predictor: images per model call
MAX_UPLOAD_MB = 20  # serving.app.create_app: larger uploads are refused
PACS_READ_S = 60  # dicomweb.Connection.read_s: one read of a PACS's answer (or one connection), in seconds
PACS_FILM_S = 600  # dicomweb.Connection.film_s: one film's whole retrieval (272 MiB at ~4 Mbit/s)
# dimse.Room: what `listen` holds on disk: one association's films (a study, or a sender's batch of them) and the
# free space it leaves on the folder's disk, in MB; a film past the first or short of the second is refused (0xA700)
LISTEN_ASSOCIATION_MB, LISTEN_FREE_MB = 2000, 1000
# dimse.Room.spool_mb: the reports `listen` keeps waiting to be sent (its spool, not refused/), in MB: a film is refused
# (0xA700) while the spool holds this much; some 700,000 SRs of 7 KB, or a few thousand films' Grad-CAM captures
LISTEN_SPOOL_MB = 5000
LISTEN_STORE_S = 30  # dimse.Listener.store_s: the destination's answer to one step (connect, associate, one C-STORE)
LISTEN_SEND_S = 600  # dimse.Listener.send_s: the longest a report waits, from scoring, to be stored at the destination
DECISION_RANGE = (0.01, 0.99)  # metrics.decision_thresholds: the threshold probabilities of evaluate's decision curve
LISTEN_RETRY_S = 60  # dimse.Listener.retry_s: how often the reports in the spool are sent again
CALIBRATION_IMAGES = 256  # quantize: training films whose activations set the INT8 ranges (more changed AUC by < 0.001)
# The model input side (preprocess.PreprocessSpec.size, a recipe's image_size, a card's size): below 8 a network has
# nothing to see (a card's size 3 crashed ONNX Runtime), and above 2048 a batch of inputs outgrows the memory of the
# machines this runs on (a size of 100000 was killed for memory)
MIN_SIZE, MAX_SIZE = 8, 2048
LISTED = 20  # more known names than this are not all listed in the message


def look_up_option(value: T, choices: Iterable[T], what: str = "option", hint: str | None = None,
                   suggest: bool = True) -> T:
    """``value`` when it is one of ``choices``; else ValueError ``unknown WHAT 'x'; did you mean 'y'? (choose from
    ...)``. ``hint`` replaces the list of choices (for long ones, e.g. "see `pneumoscan models`"). ``suggest=False``
    drops the "did you mean": for choices a near spelling of which may mean the opposite (``ABNORMAL`` is one letter
    from ``NORMAL``), where a guess by spelling would point to the wrong class."""
    known = list(dict.fromkeys(choices))  # a name in two sources (the registry and timm) is one choice, guessed once
    if value in known:
        return value
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=3, cutoff=0.6) if suggest else []
    guess = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    listed = hint or (f"choose from {', '.join(map(str, known))}" if len(known) <= LISTED else f"{len(known)} names")
    raise ValueError(f"unknown {what} {value!r}{guess} ({listed})")
