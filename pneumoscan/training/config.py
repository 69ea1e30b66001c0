"""What decides a training run (:class:`TrainConfig`), read from YAML, ``--set key=value`` and flags; saved as
RUN/config.yaml and in the checkpoint and bundle."""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic reads typing.TypedDict only from Python 3.12

from pneumoscan.core.names import is_utf8, shown
from pneumoscan.core.options import (MAX_SIZE, MIN_SIZE, OPTIMIZERS, PRECISIONS, RESIZE_POLICIES, VAL_FRACTION,
                                     look_up_option)
from pneumoscan.data.tasks import list_tasks
from pneumoscan.data.augment import Augment
from pneumoscan.models import or_your_own

log = logging.getLogger(__name__)

# Settings that can only be mistakes outside these ranges, and would otherwise fail late (an optimiser, loader, loss
# or threshold refusing them after the run folder was cleared, or after all the training) or quietly (a warm-up
# past the end of the schedule); None, where a setting takes it, passes. lr 0 keeps the starting weights (--init);
# an infinite one trained until its first step diverged
RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "image_size": (f"{MIN_SIZE} to {MAX_SIZE} pixels", lambda v: MIN_SIZE <= v <= MAX_SIZE),
    "epochs": (">= 1", lambda v: v >= 1),
    # infinite: the budget would fail at the bundle after all the training (its card holds JSON, which has no
    # infinity), the decay at the second step, as a divergence that names the learning rate
    "time_budget": ("finite and > 0 minutes", lambda v: math.isfinite(v) and v > 0),
    "batch_size": (">= 1", lambda v: v >= 1),
    "eval_batch_size": (">= 1", lambda v: v >= 1),
    "lr": ("finite and >= 0", lambda v: math.isfinite(v) and v >= 0),
    "weight_decay": ("finite and >= 0", lambda v: math.isfinite(v) and v >= 0),
    "warmup": ("a fraction of the schedule in [0, 1)", lambda v: 0 <= v < 1),
    "label_smoothing": ("in [0, 1)", lambda v: 0 <= v < 1),
    "ema_decay": ("in [0, 1)", lambda v: 0 <= v < 1),
    "trainable_stages": (">= 0", lambda v: v >= 0),
    "plateau_factor": ("in (0, 1)", lambda v: 0 < v < 1),
    "plateau_patience": (">= 0", lambda v: v >= 0),
    # 0 stopped after the first epoch even when it improved: 1 stops at the first epoch without improvement
    "patience": (">= 1 (1 stops at the first epoch without a better validation figure)", lambda v: v >= 1),
    "seed": ("0 to 2**63 - 1 (torch's seeds are 64-bit)", lambda v: 0 <= v < 2**63),
    "target_sensitivity": ("in (0, 1]", lambda v: 0 < v <= 1),
    "val_fraction": ("between 0 and 1", lambda v: 0 < v < 1),
    "patients": (">= 1", lambda v: v >= 1),
    "workers": (">= 0", lambda v: v >= 0),
}
# the teachers' share of each training film's target when distill_weight is not set
DISTILL_WEIGHT = 0.5
SETTINGS_HINT = "`pneumoscan train --print-config` lists the settings"  # where a misspelt config key's list is
# a number in scientific notation: YAML 1.1 reads one without a dot (3e-4) or without an exponent sign (1.0e5) as a
# string, so the float a setting means arrives as text
SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
# how a setting's expected type reads in a message; any other (Augment) is a group of settings
KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "null",
         list[str]: "a list of strings", dict: "a mapping"}


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as config.yaml in the run directory."""

    task: str = "pneumonia"
    model: str = "efficientnet_lite0"
    pretrained: bool = True
    init: str | None = None  # a bundle of the same model to start from (bundle.load_weights_into), not ImageNet
    # knowledge distillation (training.distill): bundles whose averaged calibrated probabilities on each training film
    # make up distill_weight of its target, the label the rest. None of them may have trained on a validation film.
    # None: not set, DISTILL_WEIGHT once there are teachers; so a weight given without a teacher is told from none
    teacher: list[str] = field(default_factory=list)
    distill_weight: float | None = None
    # extra constructor arguments, e.g. {drop_rate: 0.3, drop_path_rate: 0.1} for a timm model; kept in the bundle
    model_kwargs: dict = field(default_factory=dict)
    image_size: int = 192
    resize_policy: str = "squash"
    # when the training files were all made one way (train/ here: 224 x 224 JPEG, quality 75), record it and bring
    # larger inputs (full-size originals) down the same way before resizing: preprocess.match_source
    match_source: bool = True
    epochs: int = 6
    # minutes for warm start + training + validation; the LR schedule fits it. Training still ends after `epochs`
    # if those come first (the schedule then follows the steps), so raise `epochs` for a long budget on a fast machine
    time_budget: float | None = None
    batch_size: int = 32  # per process
    lr: float = 1e-3  # for one process; scaled linearly with the number of processes
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of the schedule
    label_smoothing: float = 0.0
    # validate and ship an exponential moving average of the weights with this decay per step (0.99: about the
    # last 100 steps); None ships the last step's weights. callbacks.WeightAverage
    ema_decay: float | None = None
    warm_start: bool = True  # fit the head on frozen features before fine-tuning (pretrained models)
    trainable_stages: int | None = 2  # pretrained models: fine-tune the last k stages and the head; None: all
    # adamw-cosine: AdamW, warm-up and cosine decay, early stopping on validation AUC; adam-plateau (the Keras
    # recipe): Adam at a constant rate times plateau_factor after plateau_patience epochs without a lower validation
    # loss, early stopping on validation loss. The best weights are the best validation AUC's in both.
    optimizer: str = "adamw-cosine"
    plateau_factor: float = 0.2
    plateau_patience: int = 2
    patience: int = 3  # epochs without a better validation AUC (adam-plateau: loss) before stopping
    val_fraction: float = VAL_FRACTION
    split_csv: str | None = None  # a manifest with a split column; default: patient-grouped split of train/
    # what the card names as the source of the training films that no published dataset's file-name rules name (a
    # site's own), and their licence (`train --data-name`, `--data-licence`); None: not described, which it says
    data_name: str | None = None
    data_licence: str | None = None
    # a trial on part of the data: train (or cv) on a seeded sample of this many patients, each class and subtype in
    # its share, taken before the patient-grouped split (data.split.patient_sample); None: every patient
    patients: int | None = None
    # the reference projects' protocol: train on all of DATA's train/, validate on its own val/ folder (16 films in
    # the Kaggle release: thresholds and early stopping then rest on a handful of films, so it warns)
    validate_on_val_folder: bool = False
    seed: int = 0
    class_weights: bool = True  # weight the loss by inverse class frequency (the data is 3:1 pneumonia)
    target_sensitivity: float | None = 0.95  # None: Youden's J
    augment: Augment = field(default_factory=Augment)
    workers: int = 0  # DataLoader workers; 0 keeps both cores for the model on a small CPU
    # the training steps' arithmetic: bf16 autocast (weights, optimiser, validation and the bundle stay fp32), or
    # fp32. auto: bf16 on CUDA, fp32 on CPU; bf16 on CPU is faster only where the CPU does bf16 natively
    # (AVX512-BF16 or AMX): engine.autocast
    precision: str = "auto"
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        # every value checked against its field's type here, not only where YAML and flags are read (from_dict): a
        # config made in Python with batch_size=2.5 or augment={...} failed in the run, after its folder was cleared
        if self.augment is False:  # YAML also reads `off`: every augmentation off
            self.augment = Augment.off()
        elif isinstance(self.augment, dict):
            self.augment = Augment(**_checked_settings(self.augment, Augment, "augment."))
        # a tuple of teachers, or pathlib paths, as the library's callers give them: the text YAML reads
        self.teacher = _teachers(self.teacher)
        self.init, self.split_csv = _text(self.init), _text(self.split_csv)
        for name, value in _checked_settings({f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                                             type(self)).items():
            setattr(self, name, value)
        # teachers and the starting bundle as the run and its bundle record them: absolute, so evaluation finds them
        # from any folder, however the config was made (flags, YAML, --set, the library); `teacher: runs/a/bundle`
        # names one, null none
        self.teacher = [os.path.abspath(t) for t in self.teacher]
        self.init = os.path.abspath(self.init) if self.init else None
        for name, path in (("split_csv", self.split_csv), ("init", self.init), *(("teacher", t) for t in self.teacher)):
            if path is not None and not is_utf8(path):
                raise ValueError(f"{name} {shown(path)}: a bundle records this path in bundle.json, which holds UTF-8 "
                                 "text only: rename it (or the folder it is in) to a UTF-8 name")
        for name, (expected, ok) in RANGES.items():
            if (value := getattr(self, name)) is not None and not ok(value):
                raise ValueError(f"{name} must be {expected}, got {value}")
        look_up_option(self.optimizer, OPTIMIZERS, "optimizer")
        look_up_option(self.precision, PRECISIONS, "precision")
        look_up_option(self.resize_policy, RESIZE_POLICIES, "resize policy")
        look_up_option(self.task, list_tasks(), "task", hint=or_your_own(f"choose from {', '.join(list_tasks())}"))
        # settings that contradict each other, refused here too, so that a library caller's config fails where it is
        # made, as one from flags does, and not after the run folder was cleared (or, for cv, after its folds'
        # manifests were written). adam-plateau keeps a constant rate from the first step: config.yaml and the card
        # would record a warm-up that never happened. Its default and 0 pass, so a default config suits both recipes
        if self.optimizer == "adam-plateau" and self.warmup not in (0, TrainConfig.warmup):
            raise ValueError(f"warmup {self.warmup:g} is the adamw-cosine recipe's: adam-plateau starts at its full "
                             "rate with no warm-up, so drop the warmup setting or use optimizer adamw-cosine "
                             "(--optimizer)")
        # and the mirror: adamw-cosine has no plateau, whose settings config.yaml and the card would record as used
        changed = [f"{name} {getattr(self, name):g}" for name in ("plateau_factor", "plateau_patience")
                   if getattr(self, name) != getattr(TrainConfig, name)]
        if self.optimizer == "adamw-cosine" and changed:
            raise ValueError(f"{' and '.join(changed)} set the adam-plateau recipe's rate cuts: adamw-cosine follows "
                             "its cosine schedule, so drop them or use optimizer adam-plateau (--optimizer)")
        for name in ("data_name", "data_licence"):  # "" or spaces would name no source, and the card would say so
            if (value := getattr(self, name)) is not None and not value.strip():
                raise ValueError(f"{name} (--{name.replace('_', '-')}) is empty: give the text, or leave it out")
        if self.data_licence and not self.data_name:
            raise ValueError(f"data_licence {self.data_licence!r} (--data-licence) is the licence of the films "
                             "data_name (--data-name) names: give their name too")
        if self.split_csv and self.validate_on_val_folder:
            raise ValueError("split_csv and validate_on_val_folder both choose the validation films: give one")
        if self.patients is not None and (self.split_csv or self.validate_on_val_folder):
            raise ValueError(f"patients {self.patients} samples the films before pneumoscan's own patient split, and "
                             f"{'split_csv' if self.split_csv else 'validate_on_val_folder'} fixes them: give one "
                             "or the other")
        if self.teacher and self.distill_weight is None:  # recorded as used, in config.yaml and the card
            self.distill_weight = DISTILL_WEIGHT

    def check_distill_weight(self) -> None:
        """Refuse a distill_weight without a teacher: config.yaml and the card would record a distillation that never
        happened. Called where a run's teachers are final (train, each cv fold), not in __post_init__: a cv recipe
        carries the weight of the teachers ``--teacher-cv`` gives each fold's config."""
        if not self.teacher and self.distill_weight is not None:
            raise ValueError(f"distill_weight {self.distill_weight:g} is the teachers' share of the target: give a "
                             "teacher (train --teacher, cv --teacher-cv) or drop the setting")

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Settings (YAML, ``--set``, flags) as a config: a key that names no setting is refused with the nearest
        that does (Python's own error names no alternative); values are checked where the config is made."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            look_up_option(str(key), names, "config key", hint=SETTINGS_HINT)
        return cls(**data)

    def to_yaml(self) -> str:
        """The resolved settings as config.yaml holds them (``train --print-config``)."""
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def recorded_settings(data: dict) -> dict:
    """Recorded settings (a run's config.yaml, a checkpoint's or bundle's ``train_config``) as this version reads
    them: an earlier one recorded ``distill_weight: 0.5`` for every run without teachers, which means not set now
    (None), so that such a run compares as the same recipe and its config.yaml still loads; one that predates the
    setting distilled at :data:`DISTILL_WEIGHT`, as this version's config does when teachers leave it unset."""
    if data.get("teacher"):
        return data if "distill_weight" in data else {**data, "distill_weight": DISTILL_WEIGHT}
    return {**data, "distill_weight": None} if data.get("distill_weight") == DISTILL_WEIGHT else data


def _text(value: object) -> object:
    """A path (``pathlib.Path``) as the text a config holds; any other value as it is, for its type to judge."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _teachers(value: object) -> object:
    """``teacher`` as a list of texts: ``teacher: runs/a/bundle`` (or a path) names one, null (or nothing) none, a
    tuple is a list; any other value as it is, for _checked_settings to refuse by name."""
    if value is None or isinstance(value, (str, os.PathLike)):
        value = [value] if value else []
    return [_text(t) for t in value] if isinstance(value, (list, tuple)) else value


def _checked_settings(data: Mapping[str, object], cls: type, prefix: str = "") -> dict:
    """``data`` as settings of dataclass ``cls``, so that a wrong one is refused by name before a run starts rather
    than failing in it, or training 3 epochs for 2.5: every key names a field (``prefix``: the keys' path, as in
    ``augment.``), else the nearest are named; every value has the field's type (pydantic, strict: "8" is no number,
    1 no boolean), else the first wrong one is named with its type in words, in one line rather than pydantic's
    report. Returns ``data`` with pydantic's values: numbers read as :func:`_number` reads them, and any other
    number a float field takes (numpy's, ``Decimal``) a Python float, which config.yaml can hold."""
    adapter, hints = _settings_adapter(cls)
    for key in data:
        look_up_option(prefix + str(key), [prefix + name for name in hints], "config key", hint=SETTINGS_HINT)
    checked = {key: _number(value, hints[key]) for key, value in data.items()}
    try:
        return adapter.validate_python(checked)
    except ValidationError as e:
        key = e.errors()[0]["loc"][0]
        expected = " or ".join(KINDS.get(kind, "a group of settings") for kind in _kinds(hints[key]))
        raise ValueError(f"{prefix}{key} must be {expected}, got {checked[key]!r}") from None


@functools.cache
def _settings_adapter(cls: type) -> tuple[TypeAdapter, dict[str, object]]:
    """A strict pydantic check of the fields of dataclass ``cls``, and their types. It checks a TypedDict of the
    fields, not ``cls``: that would build a ``cls``, and a TrainConfig checks itself as it is built."""
    hints = {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}
    # a float field keeps an int as the int it is, so that a refusal of `ema_decay: 1` says "got 1", not "got 1.0"
    taken = {name: int | hint if float in _kinds(hint) else hint for name, hint in hints.items()}
    settings = TypedDict(f"{cls.__name__}Settings", taken, total=False)  # type: ignore[misc]
    return TypeAdapter(with_config(ConfigDict(strict=True, extra="forbid"))(settings)), hints


def _kinds(hint: object) -> tuple:
    """The types a field takes: each of a union's (``float | None``), else the one."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _number(value: object, hint: object) -> object:
    """``value`` as a field of type ``hint`` reads it: for a number field, scientific notation that YAML 1.1 left a
    string (:data:`SCIENTIFIC`: ``3e-4``) as the float it means; for an int field, a whole float (``3.0``, ``seed:
    1e9``) as the int it is, which strict pydantic would refuse. Any other value as it is, for the type to judge."""
    kinds = _kinds(hint)
    if (float in kinds or int in kinds) and isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)
    if int in kinds and float not in kinds and isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


class _OnceEach(yaml.SafeLoader):
    """safe_load's loader refusing a mapping that gives a key twice, which YAML does not allow and PyYAML reads as
    the last value: a config with `epochs: 1` and further down `epochs: 2` trained with 2 without a word. A key a
    merge (``<<: *base``) brings in and the mapping sets again is YAML's override, not a key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:  # before the merged keys are flattened into the node
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: safe_load's own refusal follows
                continue
            if first is not None:
                where = f"lines {first} and {line}" if first != line else f"line {line}"
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key} is given twice, on {where} (YAML takes each key once): keep the one meant")
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> Any:
    """YAML as safe_load reads it (no Python objects built), a key given twice in a mapping refused: the one
    reading of every YAML a user gives pneumoscan (``--config``, ``--set`` values, a run's config.yaml)."""
    return yaml.load(text, Loader=_OnceEach)  # a SafeLoader: builds no Python object


def apply_settings(data: dict, settings: Sequence[str]) -> dict:
    """``data`` with each ``key=value`` of ``settings`` set on it (``--set``): a dotted key reaches into a nested
    mapping (``augment.noise=0.04``), the value is read as a YAML scalar (``0.04``, ``true``, ``null``, ``[1, 2]``).
    Keys and values are checked where the mapping becomes a config (:func:`_checked_settings`)."""
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
                raise ValueError(f"--set {setting!r}: {'.'.join(parents[: depth + 1])} is {child!r}, not a group of "
                                 "settings")
            node = child
        try:
            node[leaf] = read_yaml(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {setting!r}: the value is not YAML: {str(e).splitlines()[0]}") from None
    return data


def load_config(path: Path | str | None, settings: Sequence[str] = (), **overrides: Any) -> TrainConfig:
    """A YAML file's settings, then ``key=value`` settings (``--set``, :func:`apply_settings`), then
    command-line overrides (those not None) on top of the defaults."""
    try:
        data = (read_yaml(Path(path).read_text()) or {}) if path else {}
    except yaml.YAMLError as e:  # a syntax error, or a tag safe_load refuses to build (!!python/object)
        raise ValueError(f"{path} is not a YAML config: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds key: value settings, not a {type(data).__name__}")
    data = apply_settings(recorded_settings(data), settings)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if data.get("init"):
        _as_started(data)
    return TrainConfig.from_dict(data)


def _as_started(data: dict[str, Any]) -> None:
    """The model and image size of the bundle a run starts from (``init``), where the settings give none: its
    weights are that model's, learnt at that size (another model was refused, another size trained on films the
    size its weights never saw, unless the user knew to repeat them). A bundle that cannot be read is left to the
    run's own refusal."""
    from pneumoscan.models.card import ENSEMBLE, load_card

    try:
        card = load_card(data["init"])
    except (OSError, ValueError):
        return
    if card.model != ENSEMBLE:
        for key, value in (("model", card.model), ("image_size", card.size)):
            if data.get(key) is None:
                data[key] = value
                log.info("%s %s: the starting bundle's (%s)", key, value, data["init"])
