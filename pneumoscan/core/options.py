"""One check for every named choice (task, model, backend, resize policy, fill mode, format, config key): an
unknown name is refused with the closest known ones, as MONAI's ``look_up_option`` does, so a typo reads as a typo."""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

import yaml

T = TypeVar("T")
# Named choices the command line offers, kept here, free of torch, so that building the CLI imports no model code
# (the tasks come from their registry).
BACKENDS = ("torch", "onnx", "onnx-int8")  # predict.Predictor: torch, ONNX Runtime, the bundle's INT8 ONNX model
FILL_MODES = ("constant", "nearest", "reflect")  # transforms.Augment.fill_mode: Keras' names
RESIZE_POLICIES = ("squash", "pad", "center-crop")  # preprocess.resize: how a film becomes the model's square
OPTIMIZERS = ("adamw-cosine", "adam-plateau")  # config.TrainConfig.optimizer
PRECISIONS = ("auto", "bf16", "fp32")  # config.TrainConfig.precision
TRACKERS = ("tensorboard", "mlflow")  # tracking.make_trackers: train --log
LISTED = 20  # more known names than this are not all listed in the message


def look_up_option(value: T, choices: Iterable[T], what: str = "option", hint: str | None = None) -> T:
    """``value`` when it is one of ``choices``; else ValueError ``unknown WHAT 'x'; did you mean 'y'? (choose from
    ...)``. ``hint`` replaces the list of choices (for long ones, e.g. "see `pneumoscan models`")."""
    known = list(choices)
    if value in known:
        return value
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=3, cutoff=0.6)
    guess = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    listed = hint or (f"choose from {', '.join(map(str, known))}" if len(known) <= LISTED else f"{len(known)} names")
    raise ValueError(f"unknown {what} {value!r}{guess} ({listed})")


def check_fields(data: Mapping[str, object], cls: type, prefix: str = "") -> None:
    """Every key of ``data`` names a field of dataclass ``cls`` (``prefix``: the keys' path, as in ``augment.``)."""
    names = [prefix + f.name for f in dataclasses.fields(cls)]
    for key in data:
        look_up_option(prefix + str(key), names, "config key")


def apply_settings(data: dict, settings: Sequence[str]) -> dict:
    """``data`` with each ``key=value`` of ``settings`` set on it (``--set``): a dotted key reaches into a nested
    mapping (``augment.noise=0.04``), the value is read as a YAML scalar (``0.04``, ``true``, ``null``, ``[1, 2]``).
    The keys are checked where the mapping becomes a config (:func:`check_fields`)."""
    data = copy.deepcopy(data)
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {setting!r}: expected key=value, e.g. epochs=3 or augment.noise=0.04")
        *parents, leaf = key.strip().split(".")
        node = data
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {setting!r}: {'.'.join(parents[: depth + 1])} is {child!r}, not a group of settings")
            node = child
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {setting!r}: the value is not YAML: {str(e).splitlines()[0]}") from None
    return data
