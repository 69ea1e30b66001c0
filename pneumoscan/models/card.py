"""bundle.json, the bundle's card: what it says (:class:`BundleCard`), reading it with its checks
(:func:`load_card`) and writing it with its checksum (:func:`save_card`), and the SHA-256 of the bundle's files it
records (:func:`verify_file`). Free of torch: scoring with ONNX Runtime reads the card and checks the files without
loading the torch model (:mod:`.bundle` does that).

Every file is checked against the SHA-256 recorded when it was written: damaged bytes of the same size load without
error and give wrong or NaN scores, so a mismatch is refused (ValueError) rather than used. bundle.json is checked
the same way against its own checksum, since its threshold and temperatures turn those scores into labels: one
edited digit gives confident wrong answers. It is rewritten only through :func:`save_card`, which records the
checksum anew (the TTA threshold after export, `pneumoscan threshold`, an evaluation added to the card).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from importlib import metadata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import numpy as np
from packaging.version import InvalidVersion, Version
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from typing_extensions import NotRequired, TypedDict  # pydantic reads typing.TypedDict only from Python 3.12

from pneumoscan import __version__
from pneumoscan.core.atomic import write_atomic
from pneumoscan.core.digests import bytes_sha256, file_sha256, json_sha256
from pneumoscan.core.files import NotRegularFile, open_regular
from pneumoscan.core.metrics import (CHANCE_AUC, ECE_TOLERANCE, TEMPERATURE_BOUNDS, ece_chance_margin,
                                     is_net_benefit, is_net_benefit_interval, with_ci)
from pneumoscan.core.names import given_path, is_utf8, shown
from pneumoscan.core.options import MAX_SIZE, MIN_SIZE, look_up_option
from pneumoscan.data.appearance import Appearance
from pneumoscan.data.cache import ImageCache, build_cache, cached, data_checksum
from pneumoscan.data.layouts import KERMANY, KERMANY_LICENCE, Record, discover
from pneumoscan.data.preprocess import PreprocessSpec, check_normalization
from pneumoscan.data.tasks import Task, check_classes, get_task, list_tasks
from . import register_first
from .run_folder import RunFolder

if TYPE_CHECKING:  # scipy (data.split) stays out of an ONNX predict's start
    from pneumoscan.data.labelled import LabelledFilms

# 2: every card records its own checksum and its files' (format 1 cards may lack them: written before they were
# kept, so they load with a warning; a format 2 card without them was edited, and is refused)
FORMAT_VERSION = 2
FORMATS = (1, FORMAT_VERSION)  # what this pneumoscan reads
# fields only a pneumoscan that writes every card's checksum writes: a card holding one must have its checksum
SEALED_ERA = ("threshold_interval", "tta_threshold_interval", "threshold_caveat", "temperature_caveat", "plugins",
              "training_data")
WEIGHTS = "model.safetensors"
ONNX_NAME = "model.onnx"  # where `pneumoscan export` puts the file by default and the onnx backend looks first
CARD = "bundle.json"
APPEARANCE = "appearance.safetensors"  # what the training films look like (data.appearance), when they were enough
CHECKSUM = "checksum"  # bundle.json's own "sha256:HEX", over its other fields (save_card), checked by load_card
ENSEMBLE = "ensemble"  # BundleCard.model of a bundle that holds an ensemble
# how the card's calibrated_on starts for an ensemble calibrated by ``--cv``, whose figures are out of fold
OUT_OF_FOLD = "out-of-fold scores of"
# An ensemble's recorded heatmap scale when every member records its own: each member's map is drawn on that
# member's own scale (times this), and the maps are averaged
MEMBERS_OWN_SCALE = 1.0
PLUGIN_KINDS = ("task", "model", "reader", "layout")  # BundleCard.plugins' keys
# a raw Grad-CAM value, as a bundle's heatmap_scale (and an ensemble member's) records one: the float32 range of the
# maps whose peaks it is measured from (inference.explain.measure_heatmap_scale). A map is divided by it in float32,
# where 1e-300 is 0 (every map NaN, the whole film drawn as not read, and said to be empty) and 1e300 infinite
# (every map blank, said to be empty)
HEATMAP_SCALE_BOUNDS = (float(np.finfo(np.float32).smallest_subnormal), float(np.finfo(np.float32).max))
POSITIVE = ("size", "temperature")  # zero or below: no image, inverted probabilities
# the card's fields a training run records again in train_config (its own name for each), under the same checksum
RUN_RECORD = {"task": "task", "size": "image_size", "resize_policy": "resize_policy", "model_kwargs": "model_kwargs"}
# the figures a card's records hold (val_metrics, external_evaluations, threshold_records; an INT8 sidecar's
# validation figures), by key wherever they sit in them: what a figure can be. A rate, an AUC, a threshold, a
# target or a p-value is in [0, 1], a count a whole number of films (or patients, or tests) from 0; "ci" holds
# intervals, each in [0, 1], low to high, and around its figure where it is an exact or score interval (a BCa
# bootstrap's, F1's, may leave it)
RATES = frozenset({
    "auc", "accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "prevalence", "ece", "ece_chance",
    "three_class_accuracy", "three_class_balanced_accuracy", "three_class_macro_auc", "tta_sensitivity",
    "tta_specificity", "threshold", "tta_threshold", "previous_threshold", "previous_tta_threshold",
    "target_sensitivity", "max_false_positive_rate", "int8_threshold", "int8_tta_threshold",
    "previous_int8_threshold", "previous_int8_tta_threshold", "p", "p_holm"})
COUNTS = frozenset({"n", "n_positive", "n_negative", "unreadable", "outside_scope", "all", "positive", "negative",
                    "tests", "patients"})  # patients: a count, or {"positive": count, "negative": count}
HELD = frozenset({"auc", "accuracy", "sensitivity", "specificity", "precision", "npv"})  # intervals around their figure
# net benefits (an evaluation's at its threshold, and treating all and none): true positives a film less weighed false
# positives, at most 1 and below 0 where a strategy harms, and so is each end of an interval of one
NET_BENEFITS = frozenset({"net_benefit", "treat_all", "treat_none"})
FIGURE_RECORDS = ("val_metrics", "external_evaluations", "threshold_records")
# a three-class task's macro one-vs-rest AUC, as val_metrics and an evaluation's metrics record it beside "auc": the
# ranking caveat holds both to chance (BundleCard.ranking_caveat)
MACRO_AUC = "three_class_macro_auc"
REQUIRED = ("threshold", "temperature")  # save_card writes every field; without these the defaults would decide
# versions[WRITER]: the pneumoscan that last wrote the card (save_card). Inside versions, a dict of text that format-2
# readers take whole, so that a reader older than the writer can still tell a card from a newer pneumoscan (fields or a
# format it does not know: refused, since it cannot know what they mean) from an edited one
WRITER = "pneumoscan"
UPGRADE = "upgrade pneumoscan (`pip install -U pneumoscan`) to use it"

log = logging.getLogger(__name__)


Rate = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]


@with_config(ConfigDict(strict=True, allow_inf_nan=False, extra="allow"))
class TrainRecord(TypedDict, total=False):
    """The fields of a card's ``train_config`` (the run's settings and records, each written by the pneumoscan of its
    time, so any other key is kept as it is) that the card's readers compute with: the threshold policy (ensemble,
    INT8 export), the sample of patients and the films by class (MODEL_CARD.md, methods.md). Typed here so that
    a resealed card holding a dict or a text for one is refused by name at load, not a TypeError wherever read."""

    target_sensitivity: Rate | None
    max_false_positive_rate: Rate | None
    training_films: dict[str, Count]
    patients: Count | None
    sampled_from: Count | None
    seed: int | None
    image_size: int
    calibrated_on: str


@with_config(ConfigDict(strict=True, allow_inf_nan=False, extra="forbid"))
class TrainingSource(TypedDict):
    """Where some of the films a bundle's weights learnt from came from (:attr:`BundleCard.training_data`), as the run
    that trained on them recorded it: what MODEL_CARD.md says of its training data, and nothing else."""

    name: str  # the dataset's name: a published dataset's its file-name rules name, or `train --data-name`; "": none
    licence: str  # its licence: a published dataset's, or `train --data-licence`; "": none stated
    films: Count | None  # the training and validation films from it; None: not counted (an older card, an ensemble)
    layout: str  # the dataset layout that read them (data.layouts); "": not recorded
    # True: the weights a run started from (--init) learnt from them, at any remove, not the run itself
    started_from: bool
    # True: the teachers a run was distilled from (--teacher) learnt from them, at any remove, not the run itself (and
    # not its starting bundle: started_from False); written only where True, so absent in the run's own sources and in
    # a card older than it
    taught: NotRequired[bool]


# what a card older than training_data trained on: every earlier bundle was made from the Kermany layouts
KERMANY_SOURCE = TrainingSource(name=KERMANY, licence=KERMANY_LICENCE, films=None, layout="", started_from=False)


@with_config(ConfigDict(strict=True, allow_inf_nan=False, extra="forbid"))  # load_card checks bundle.json by it
@dataclass
class BundleCard:
    """What a bundle says about its model; saved as bundle.json."""

    model: str
    task: str
    classes: list[str]
    positive: str
    size: int
    resize_policy: str
    mean: float
    std: float
    source_size: int | None = None  # the training files' side and JPEG quality (preprocess.match_source)
    source_quality: int | None = None
    threshold: float = 0.5
    threshold_policy: str = "fixed 0.5"
    # test-time augmentation averages views and so shifts the scores: its own threshold, same policy (predict --tta)
    tta_threshold: float | None = None
    # the 95 % confidence interval of the threshold (metrics.threshold_interval): a reading inside it is near the
    # threshold. Empty when not recorded (older bundles, a fixed threshold, a class the policy reads of one patient)
    threshold_interval: list[float] = field(default_factory=list)
    tta_threshold_interval: list[float] = field(default_factory=list)
    # why the threshold in force may not hold (too few positive films to show its sensitivity target), and why the
    # temperature may not calibrate (no error to fit it on, or at its bound): said where the bundle is used, not only
    # in the log of the run that chose them. Empty when there is nothing to say
    threshold_caveat: str = ""
    temperature_caveat: str = ""
    temperature: float = 1.0
    # the raw Grad-CAM value a heatmap of the call's evidence draws as its top colour, measured on validation films
    # called positive (inference.explain.measure_heatmap_scale), so a colour means the same on every film; an
    # ensemble's: 1.0, each member's map on that member's own scale (recorded in its model_kwargs members entry);
    # None: each map scaled to its own film's maximum (older bundles, too few films called positive, an ensemble with
    # a member that records none)
    heatmap_scale: Annotated[float, Field(gt=0)] | None = None
    model_kwargs: dict = field(default_factory=dict)
    data_fingerprint: str = ""
    # "sha256:HEX" of the training data's pixels and labels (data.cache.data_checksum): unlike data_fingerprint
    # (which names the image cache: paths and file times too) the same films touched, copied or moved give the same
    # value. Empty in bundles older than it and in ensembles whose members do not all record it
    data_checksum: str = ""
    # "sha256:HEX" of its run's split.csv as training wrote it (RUN/split.csv): the held-out checks read a split.csv
    # beside the bundle as its run's only when it is that file (run_split). Empty in ensembles (their members' runs
    # hold the splits) and in bundles older than it
    split_checksum: str = ""
    # the versions of the libraries that trained (or built) the model (runtime_versions), and under WRITER the
    # pneumoscan that last wrote the card; empty in older bundles
    versions: dict[str, str] = field(default_factory=dict)
    val_metrics: dict = field(default_factory=dict)
    train_config: TrainRecord = field(default_factory=TrainRecord)
    package_version: str = __version__
    format_version: int = FORMAT_VERSION
    # "sha256:HEX" of each model file as written ({WEIGHTS: ..., ONNX_NAME: ...}); empty in bundles older than it
    files: dict[str, str] = field(default_factory=dict)
    # records added after training, without touching the weights (model_card.py): `evaluate --add-to-card` on other
    # data (films_checked: whether its films could be checked not to be training films; absent in older records),
    # and `threshold` choosing a new operating point (the newest record is the one in force)
    external_evaluations: list[dict] = field(default_factory=list)
    threshold_records: list[dict] = field(default_factory=list)
    # the modules outside pneumoscan that registered what made the bundle, by kind (PLUGIN_KINDS) and name
    # (models.registry.plugins_made_with): a process without one is told to import that module. Empty in bundles older
    # than it and in bundles made with pneumoscan's own tasks, models, readers and layouts only
    plugins: dict[str, dict[str, str]] = field(default_factory=dict)
    # where the films its weights learnt from came from, each source as the run that trained on them recorded it
    # (the runs its weights started from first: started_from; a student's teachers' last: taught); an ensemble's, its
    # members'. None in a card older than the record, whose films were Kermany et al.'s (:func:`training_sources`)
    training_data: list[TrainingSource] | None = None

    @property
    def spec(self) -> PreprocessSpec:
        """How an image becomes this model's input: the same spec the training cache used."""
        return PreprocessSpec(self.size, self.resize_policy, self.source_size, self.source_quality)

    @property
    def caveats(self) -> list[str]:
        """What a user of the bundle must know of its ranking (:attr:`ranking_caveat`), probabilities
        (:attr:`calibration_caveat`), temperature and threshold (:attr:`threshold_caveat`, ...): every consumer of the
        card says them (``predict`` and ``serve`` at start, /v1/model and the page, evaluate's report, the SR and FHIR
        reports)."""
        return [text for text in (self.ranking_caveat, self.calibration_caveat, self.temperature_caveat,
                                  self.threshold_caveat) if text]

    @property
    def calibration_caveat(self) -> str:
        """Why the probabilities the bundle gives are not to be read as chances: its validation films show them off
        by more than :data:`~pneumoscan.core.metrics.ECE_TOLERANCE` on average, beyond chance: the recorded ECE less
        the most chance gives those films (``ece_chance``, :func:`~pneumoscan.core.metrics.ece_by_chance`; a card
        without it, trained before it was recorded: :func:`~pneumoscan.core.metrics.ece_chance_margin` of its
        patients where it records them, else its films). A temperature scales the logits but cannot shift them, so
        a model that leans to one class keeps its lean, and its calibrated probabilities were shown as if they meant
        what they say. Empty when the card records no ECE, or the films do not show the probabilities that far
        off."""
        val = self.val_metrics
        patients = (val.get("patients") or {}).get("all")
        ece, (cases, unit) = val.get("ece"), (patients, "patients") if patients else (val.get("n"), "films")
        if ece is None or not cases:
            return ""
        chance = val.get("ece_chance")
        if (low := ece - (ece_chance_margin(cases) if chance is None else chance)) <= ECE_TOLERANCE:
            return ""
        return (f"validation expected calibration error {ece:.3f} on {validation_films(val)}: allowing for chance in "
                f"{cases} {unit}, its probabilities are off by at least {low:.3f} on average (95% bound), more than "
                f"the {ECE_TOLERANCE} tolerated, so they are not calibrated: a probability of 0.3 need not mean that 3 "
                f"in 10 such films are {self.positive}; they rank films and the threshold makes the call, but do not "
                "read them as chances")

    @property
    def ranking_caveat(self) -> str:
        """Why the figures the card records do not show the model better than chance at ranking films: an AUC whose
        95% interval reaches :data:`~pneumoscan.core.metrics.CHANCE_AUC` (in a record without one, an AUC no higher
        than it). Training refuses only an AUC at or below it, so a bundle of AUC 0.51 on few films is written, and
        its readings look like a working model's. Each AUC the card records is held to it: the validation AUC, the
        validation macro AUC of a three-class task (where the card records it) and the AUC (and a three-class task's
        macro AUC) of each ``evaluate --add-to-card`` record. One that reaches chance is answered only by a later
        record of the same figure on more films, checked new to the bundle and of its plain scores (what ``predict``
        and ``serve`` give), whose interval lies above chance. Said from the figures the card records, so a bundle
        trained before it says it too. Empty when no record reaches chance unanswered, or the card records no AUC."""
        records = _auc_records(self)
        said = [f"{r.what} {with_ci(r.auc, r.ci)} on {r.films}: "
                + (f"its interval reaches {CHANCE_AUC}" if r.ci else f"that is no more than {CHANCE_AUC}")
                for i, r in enumerate(records) if r.reaches_chance and not any(
                    later.figure == r.figure and later.answers and (later.n or 0) > (r.n or 0)
                    and later.ci and not later.reaches_chance for later in records[i + 1:])]
        if not said:
            return ""
        return ("; ".join(said) + ", so these films do not show that it tells the classes apart better than chance; "
                "measure it on more labelled films (pneumoscan evaluate) before relying on its readings")

    def plugin_module(self, kind: str, name: str) -> str:
        """The module the card records as the one that registered the ``kind`` ("task", "model") ``name``; "" when
        it records none (a built-in one, or a card older than :attr:`plugins`)."""
        return self.plugins.get(kind, {}).get(name, "")

    @property
    def model_id(self) -> str:
        return f"{self.model}-{self.task}-{self.data_fingerprint[:8] or 'untracked'}"

    @property
    def threshold_targets(self) -> tuple[float | None, float | None]:
        """(target sensitivity, max false-positive rate) of the policy in force, as metrics.choose_threshold takes
        them (both None: Youden's J): the newest `threshold` record's, else those training or the ensemble build
        recorded. A model scored another way (INT8) chooses its own thresholds by the same policy."""
        if self.threshold_records:
            newest = self.threshold_records[-1]
            return newest.get("target_sensitivity"), newest.get("max_false_positive_rate")
        return self.train_config.get("target_sensitivity", 0.95), self.train_config.get("max_false_positive_rate")


@with_config(ConfigDict(strict=True, allow_inf_nan=False, extra="forbid"))
class MemberEntry(TypedDict):
    """What the ensemble's network (:meth:`.ensemble_net.EnsembleNet.from_card`) and member_sources read from each
    entry of bundle.json's model_kwargs["members"]; load_card refuses an entry without them, of other types, or with
    a key of unknown meaning (a newer pneumoscan's: refused saying to upgrade)."""

    model: str
    model_kwargs: dict
    size: int
    mean: float
    std: float
    temperature: float
    source: str
    # the member bundle's own heatmap_scale, its map's scale inside the ensemble (None: it records none); absent from
    # ensembles older than it, whose maps are scaled film by film
    heatmap_scale: NotRequired[Annotated[float, Field(gt=0)] | None]
    # True: the member's weights learnt in part from teachers (:func:`learnt_from_teachers`), which MODEL_CARD.md names
    # it for; written only where True, so absent from other members and from ensembles older than the record
    taught: NotRequired[bool]
    # what the ensemble recorded of the member beside those: its model_id and threshold, and its weights' checksum
    # ("" where its card recorded none), which :func:`replaced_members` checks its folder's weights against
    model_id: NotRequired[str]
    threshold: NotRequired[float]
    weights: NotRequired[str]


def learnt_from_teachers(card: BundleCard) -> bool:
    """Whether CARD's weights learnt in part from teachers (``--teacher``): a student's, or an ensemble's with one
    among its members at any depth (a source of its training data marked ``taught``)."""
    return any(source.get("taught") for source in training_sources(card))


def out_of_fold_ensemble(card: BundleCard) -> bool:
    """Whether CARD is an ensemble that `ensemble --cv` calibrated on its runs' out-of-fold scores: every film of
    those runs trained one member or another, so no film of theirs can choose its numbers again."""
    return card.model == ENSEMBLE and str(card.train_config.get("calibrated_on", "")).startswith(OUT_OF_FOLD)


def member_sources(card: BundleCard) -> list[Path]:
    """The member bundles an ensemble was built from, in member order, as its card recorded them."""
    return [Path(m["source"]) for m in card.model_kwargs["members"]]


def member_label(position: int, count: int, source: Path | str | None) -> str:
    """How a refusal names an ensemble member: its place among the members (from 1, in the order `pneumoscan
    ensemble` was given them and bundle.json lists them) and its bundle folder (None: an entry of bundle.json that
    records none, or a network built by hand)."""
    return f"ensemble member {position + 1} of {count} ({'no folder recorded' if source is None else source})"


def teacher_label(position: int, count: int, source: Path | str) -> str:
    """How a refusal names a teacher a model was distilled from: its place among the teachers (from 1, as given to
    `train --teacher` and as the card records them) and its bundle folder, as :func:`member_label` names a member."""
    return f"teacher {position + 1} of {count} ({source})"


@contextlib.contextmanager
def refused_as(what: str) -> Iterator[None]:
    """A refusal inside (ValueError, or FileNotFoundError for a bundle that is not there) said as one about ``what``,
    a member or a teacher by its place and folder: its reason names a file of that bundle only, and the ensemble's or
    the run's own files, which the user looks at, are sound."""
    try:
        yield
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what}: {e}") from None
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


TEACHER_CARDS = "teacher_cards"  # a distilled run's train_config: its teachers' bundle_checksums
INIT_CARD = "init_card"  # a run started from a bundle (--init): that bundle's bundle_checksums, read at its start
# a run that fine-tuned its own bundle in place (--init RUN/bundle --out RUN): True. The bundle at init is then the
# run's own, and the one it started from (init_card) is gone, which MODEL_CARD.md says
INIT_IN_PLACE = "init_in_place"
# a run started from a bundle (--init) on too few films to learn their appearance (data.appearance.MIN_FILMS), which
# keeps that bundle's image content check (appearance.safetensors): its training films and how many of them that check
# flags ({"films": n, "flagged": k}), which MODEL_CARD.md says; absent where the check is the run's own or there is none
APPEARANCE_FROM_INIT = "appearance_from_init"
# a trained bundle's train_config: its training films counted by class ({class: films}), of which MODEL_CARD.md says
# how unbalanced they were; absent in ensembles and in bundles older than it
TRAINING_FILMS = "training_films"
# a bundle trained on a sample of patients (train_config's ``patients``): the number of patients it was drawn from,
# which MODEL_CARD.md states beside it
SAMPLED_FROM = "sampled_from"
# a plain ensemble's train_config when its members' samples differ (some on a sample, some on all patients, or
# samples by other seeds or sizes): each member's sample_record in member order ({} for one on all patients)
MEMBER_SAMPLES = "member_samples"
# a distilled run's train_config when a teacher learnt from a sample of patients: each teacher's trained_sample in
# teacher order ({} for one on all patients), since the student learnt what the teachers learnt from those patients
TEACHER_SAMPLES = "teacher_samples"
# a run started from a bundle (--init): that bundle's trained_sample ({} when it learnt from all the patients of its
# data), since the run's weights hold what it learnt from those patients; absent in a card older than the record, of
# which MODEL_CARD.md says the starting bundle's sample is not known, and null in a trained_sample of such a card
# (and so in what is made of it: a run started from it, an ensemble or a student of it), which says it there too
INIT_SAMPLE = "init_sample"
# the pneumoscans that trained a run's weights, oldest first (those of the bundle it started from, --init, first): its
# checkpoint's record (a resume adding its own), kept in its card's train_config once it finishes, so that cv still
# names a fold resumed under another version as trained by both (None: a version before 0.3, whose checkpoint or card
# records none); absent in a card older than the record
TRAINED_BY = "trained_by"
# train_config of the card in RUN/best, the best epoch's weights a run keeps while it trains: no temperature,
# threshold or validation figures were chosen for them, so load_card refuses it to all but training's finalisation
BEST_SO_FAR = "best_so_far"


def training_sources(card: BundleCard) -> list[TrainingSource]:
    """Where the films CARD's weights learnt from came from: its record, or, for a card older than the record
    (``training_data`` None), Kermany et al.'s films, as every bundle made before it was trained on."""
    return [KERMANY_SOURCE] if card.training_data is None else card.training_data


def started_sources(card: BundleCard) -> list[TrainingSource]:
    """CARD's :func:`training_sources` as the weights of a run started from its bundle (``--init``) record them:
    every one marked ``started_from``, since that run's films are its own record's."""
    return [{**source, "started_from": True} for source in training_sources(card)]  # type: ignore[typeddict-item]


def pooled_sources(cards: Sequence[BundleCard]) -> list[TrainingSource]:
    """The training data of a bundle made of several (an ensemble's members, ``cards``): each source any of them
    learnt from, once, in their order, its films not counted (members trained on folds of one dataset share films)."""
    return _pooled(source for card in cards for source in training_sources(card))


def taught_sources(cards: Sequence[BundleCard]) -> list[TrainingSource]:
    """What a student's card records of the training data of the teachers it was distilled from (``cards``): their
    :func:`pooled_sources`, each marked ``taught`` and none ``started_from`` (a teacher's starting bundle is not the
    student's), since the teachers' probabilities carry what they learnt from those films into the student."""
    return _pooled({**source, "started_from": False, "taught": True}  # type: ignore[typeddict-item]
                   for card in cards for source in training_sources(card))


def _pooled(sources: Iterable[TrainingSource]) -> list[TrainingSource]:
    """Each of ``sources`` once, in their order, its films not counted."""
    pooled: dict[tuple, TrainingSource] = {}
    for source in sources:
        key = (source["name"], source["licence"], source["layout"], source["started_from"], source.get("taught", False))
        pooled.setdefault(key, {**source, "films": None})  # type: ignore[typeddict-item]
    return list(pooled.values())


def sample_record(patients: int | None, sampled_from: int | None, seed: int | None) -> dict[str, int | None]:
    """What a train_config records of a sample of ``patients`` drawn from ``sampled_from`` patients by ``seed``
    (train or cv ``--patients``), for MODEL_CARD.md to say the run was a trial; empty without one (``sampled_from``
    None)."""
    return {} if sampled_from is None else {"patients": patients, SAMPLED_FROM: sampled_from, "seed": seed}


def trained_sample(card: BundleCard) -> dict[str, Any]:
    """What a bundle's train_config records of the patients its weights learnt from, for a bundle made of it (an
    ensemble of members, a student of teachers, a run started from it) to say a trial as its own card does: its
    :func:`sample_record`, and its members' (:data:`MEMBER_SAMPLES`), teachers' (:data:`TEACHER_SAMPLES`) and
    starting bundle's (:data:`INIT_SAMPLE`) where it holds them; empty for a run on all patients that learnt from no
    trial (a starting bundle's empty record is left out). A starting bundle whose sample is not known (a card older
    than :data:`INIT_SAMPLE`, or one that carries such a card's) is None: read as empty, it was said as all patients
    by what is made of the bundle."""
    config = card.train_config
    start = config.get(INIT_SAMPLE, None if config.get("init") else {})
    return (sample_record(config.get("patients"), config.get(SAMPLED_FROM), config.get("seed"))
            | {k: config[k] for k in (MEMBER_SAMPLES, TEACHER_SAMPLES) if config.get(k)}
            | ({} if start == {} else {INIT_SAMPLE: start}))


def teachers_sample(cards: Sequence[BundleCard]) -> dict[str, list[dict[str, Any]]]:
    """What a distilled run's train_config records of its teachers' samples of patients (``cards``: theirs, in
    teacher order): each teacher's :func:`trained_sample` under :data:`TEACHER_SAMPLES` when one learnt from a
    sample, else nothing."""
    samples = [trained_sample(card) for card in cards]
    return {TEACHER_SAMPLES: samples} if any(samples) else {}


def bundle_checksums(bundles: Sequence[Path | str]) -> list[str]:
    """Each bundle's identity: the SHA-256 of its bundle.json, which records its weights' checksums and its
    temperature, so another bundle put at the same path (a run trained again there) is told apart."""
    return [file_sha256(Path(bundle) / CARD) for bundle in bundles]


def retrained_sources(train_config: Mapping[str, Any]) -> list[Path]:
    """The teachers and the starting bundle a run's ``train_config`` names that now hold another bundle than it
    learnt from (:data:`TEACHER_CARDS`, :data:`INIT_CARD`; trained again at the same path): their runs' files
    describe another model's training. None for a card that predates the records; a source that is gone is the
    caller's to say."""
    teachers, cards = train_config.get("teacher") or [], train_config.get(TEACHER_CARDS) or []
    named = [(Path(t), card) for t, card in zip(teachers, cards)]
    if train_config.get("init") and train_config.get(INIT_CARD):
        named.append((Path(train_config["init"]), train_config[INIT_CARD]))
    return [path for path, card in named if (path / CARD).is_file() and bundle_checksums([path])[0] != card]


def replaced_members(card: BundleCard) -> list[Path]:
    """The member paths of an ensemble that now hold other weights than the ensemble was built from (a cv run
    trained again in the same folder): their run's files describe another model's training. A member's own card
    that is damaged is refused naming the member (:func:`member_label`): the ensemble's own card is sound."""
    replaced = []
    sources = member_sources(card)
    for i, (member, path) in enumerate(zip(card.model_kwargs["members"], sources)):
        if not (path / CARD).exists():
            continue
        with refused_as(member_label(i, len(sources), path)):
            own = load_card(path)
        if member.get("weights") and own.files.get(WEIGHTS) != member["weights"]:
            replaced.append(path)
    return replaced


def films_as_trained(bundle: Path | str, records: Sequence[Record],
                     opened: dict[tuple[tuple[str, ...], PreprocessSpec], ImageCache] | None = None,
                     open_cache: Callable[[Sequence[Record], PreprocessSpec], ImageCache] | None = None,
                     read: ImageCache | None = None) -> bool:
    """Whether RECORDS (the split BUNDLE trained and validated on) still hold the pixels and labels it was made on
    (its card's ``data_checksum``, under its own preprocessing): films rewritten in place keep their paths, so the
    split's check passes them. A bundle that records no checksum (an earlier version's) passes. ``opened``: the
    caches this command opened so far (their pixels' SHA-256 checked), by films and preprocessing, added to here:
    every fold of a cv run holds the same films, whose one cache is then checked once, not once a fold.
    ``open_cache(records, spec)`` opens a cache not opened yet (default: built here; a cv run under torchrun builds
    it once per machine). ``read``: the cache the caller read RECORDS' films from, taken when it holds them and
    no others under the bundle's preprocessing (evaluate and ``export --int8`` check the films they read: their
    pixels are not read again)."""
    card = load_card(bundle)
    if not (recorded := card.data_checksum):
        return True
    key = (tuple(r.path for r in records), card.spec)
    if (cache := (opened or {}).get(key)) is None:
        cache = read if read is not None and _holds(read, key[0], card.spec) else (open_cache or _built_cache)(
            records, card.spec)
    if opened is not None:
        opened[key] = cache
    return data_checksum(cache, records) == recorded


def _holds(cache: ImageCache, paths: Sequence[str], spec: PreprocessSpec) -> bool:
    """Whether ``cache`` is of PATHS under SPEC: a row for each in their order, or the file's reason it could not be
    read, and no other (its pixels' checksum is of its rows in their order)."""
    unread = {e["path"] for e in cache.errors}
    return (cache.spec == spec and len(cache.paths) + len(unread) == len(paths)
            and cache.paths == [p for p in paths if p not in unread])


def _built_cache(records: Sequence[Record], spec: PreprocessSpec) -> ImageCache:
    """:func:`films_as_trained`'s cache of RECORDS in one process."""
    return build_cache([r.path for r in records], spec, progress=True)


class RunSplit(NamedTuple):
    """What DATA is to the run a bundle was copied out of (:func:`proven_run_split`): ``listed``, its run's split,
    whose films the held-out check takes as the run's; ``as_trained``, with the very films the bundle was trained
    and validated on (its card's data checksum)."""

    listed: bool = False
    as_trained: bool = False


def proven_run_split(bundle: Path | str, data: Path | str, read: LabelledFilms | None = None) -> RunSplit:
    """Whether DATA is the split of the run BUNDLE was copied out of (no split.csv of its run beside it:
    :func:`run_split`), proved by the card's data checksum (:func:`films_as_trained`): the same films, pixels, labels
    and sides, in the same order, which the held-out check (:func:`~pneumoscan.evaluation.held_out.check_held_out`'s
    ``run_split``) then checks against as the split beside it. Only a manifest of train and val films can be one: the
    films of other data are not decoded. DATA that is the file its run wrote (the card's ``split_checksum``) lists
    the run's films whatever became of them: films changed since training (a site's films exported again under the
    same paths) are its run's films all the same, said so in the log, not ``as_trained``. Below evaluation and
    training, so that ``evaluate`` (from Python too) and ``export --int8`` make the one proof. ``read``: DATA as the
    caller read it (:func:`~pneumoscan.data.labelled.labelled_films`), whose records are not listed again, nor its
    films' pixels read again when its cache holds every split."""
    card = load_card(bundle)
    beside = RunFolder.of(Path(bundle)).split.is_file() and split_beside(bundle, card).foreign is None  # the check's
    if beside or not card.data_checksum:
        return RunSplit()
    records = discover(data).records if read is None else read.every
    if {r.split for r in records} != {"train", "val"}:
        return RunSplit()
    if films_as_trained(bundle, records, read=None if read is None else read.cache):
        return RunSplit(listed=True, as_trained=True)
    if not (card.split_checksum and Path(data).is_file() and file_sha256(data) == card.split_checksum):
        return RunSplit()
    log.warning("%s is the split %s's run wrote (its SHA-256 is the one %s recorded), but its films are not the ones "
                "it was trained and validated on: their data checksum (pixels, labels and sides of the %d films it "
                "lists) is another: changed since training (a site's films exported again under the same paths?)",
                data, bundle, Path(bundle) / CARD, len(records))
    return RunSplit(listed=True)


class SplitBeside(NamedTuple):
    """What the split.csv beside a bundle is to it (:func:`split_beside`): ``foreign``, why it is not its run's (it
    is not read as the run's); ``unproved``, why it is read as the run's without proof; ``unlike``, why its films are
    not the ones the bundle was trained and validated on, where its card cannot tell films changed since training
    from another run's split (it is read as the run's, its films refused as its training films, and whether the
    bundle trained on others is unknown). All None: it is the run's, or there is none to read."""

    foreign: str | None = None
    unproved: str | None = None
    unlike: str | None = None


def split_beside(bundle: Path | str, card: BundleCard | None, prove: bool = False) -> SplitBeside:
    """Whether the split.csv beside BUNDLE (RUN/bundle beside RUN/split.csv) is its run's: the file its card recorded
    when its run wrote it (``split_checksum``). A bundle copied into a folder that holds another split.csv
    (`pneumoscan split` writes ./split.csv) had that split's films taken for its own: films it trained on passed as
    new ones. Nothing to say when none is beside it, or when it cannot be told: no card (``card`` None: a bundle
    gone), an ensemble (its members' runs hold the splits). A card older than the record has its split proved with
    ``prove`` where that is cheap (:func:`_proved_by_cache`: its films' image cache at hand, no film decoded), and is
    otherwise taken as its run's, ``unproved`` saying so (``predict``'s check of training films, about 35 ms, does not
    open a cache); disproved, it is ``unlike``: the card cannot tell whether its films were changed since training (a
    site's films exported again under the same paths, whose split is still the run's) or it is another run's."""
    split = RunFolder.of(Path(bundle)).split
    if card is None or card.model == ENSEMBLE or not split.is_file():
        return SplitBeside()
    if card.split_checksum:
        if (actual := file_sha256(split)) == card.split_checksum:
            return SplitBeside()
        return SplitBeside(foreign=(
            f"the {split.name} beside it ({split}) is not its run's: its SHA-256 is {actual[7:19]}..., where "
            f"{Path(bundle) / CARD} recorded {card.split_checksum[7:19]}... when its run wrote its split (copied into "
            f"a folder holding another {split.name}, such as the one `pneumoscan split` writes?)"))
    if not card.data_checksum:
        return SplitBeside(unproved=(
            f"{bundle} records no checksum of its run's split nor of its training films (a bundle written before "
            f"pneumoscan kept them, such as 0.1.0's), so nothing can prove {split} its run's split, and it is taken "
            "as its run's without proof: a bundle copied into a folder holding another split.csv would have that "
            "split's films checked as its own. Keep the bundle in its run folder, beside the split.csv its run wrote; "
            "a bundle trained again with this version records both"))
    films = _proved_by_cache(card, split) if prove else None
    if films is None:
        return SplitBeside(unproved=(
            f"{bundle} records no checksum of its run's split (a bundle written before pneumoscan kept one, such as "
            f"0.2.0's), so {split} is taken as its run's split without proof: a bundle copied into a folder holding "
            "another split.csv would have that split's films checked as its own (`pneumoscan cache "
            f"{split} --bundle {bundle}` caches the split's films, whereby the card's data checksum proves it or not)"))
    proved, count = films
    return SplitBeside() if proved else SplitBeside(unlike=(
        f"the films of the {split.name} beside it ({split}) are not the ones {Path(bundle) / CARD} records it was "
        f"trained and validated on: their data checksum (pixels, labels and sides of the {count} films it lists, "
        "read from the image cache) is another. Its films were changed since training (a site's films exported "
        f"again under the same paths?), or it is another run's {split.name}: the card records no checksum of its run's "
        "split to tell which"))


def _proved_by_cache(card: BundleCard, split: Path) -> tuple[bool, int] | None:
    """Whether SPLIT lists the films CARD's bundle was trained and validated on, told by the card's data checksum
    from the image cache of SPLIT's films where one is at hand (:func:`~pneumoscan.data.cache.cached`: its run's,
    built when it trained, or `pneumoscan cache SPLIT --bundle BUNDLE`'s): no film is decoded; with the count of
    films SPLIT lists, which the checksum covers. None where it cannot be told so: no such cache (cleared, or the
    films touched since)."""
    records = discover(split).records
    if (cache := cached([r.path for r in records], card.spec)) is None:
        return None
    return data_checksum(cache, records) == card.data_checksum, len(records)


def say_unproved_split(bundle: Path | str, card: BundleCard | None) -> None:
    """Warn where the split.csv beside BUNDLE is taken as its run's without proof (:func:`split_beside`), once a
    process per bundle, as :func:`run_split` says it."""
    if (unproved := split_beside(bundle, card).unproved) is not None:
        _warn_unproved_split(unproved)


@functools.cache
def _warn_unproved_split(why: str) -> None:
    """Once a process per bundle: every command reads the split several times."""
    log.warning("%s", why)


def run_split(bundle: Path | str, card: BundleCard | None, say: bool = True) -> Path | None:
    """The split.csv of BUNDLE's run where it is beside BUNDLE and is the run's (:func:`split_beside`, not proved:
    ``card``, BUNDLE's as the caller read it, None where it has none); None otherwise, the reason of a split that is
    not the run's, or (``say``) is taken as its run's without proof, logged: not said where the caller goes on to
    prove it by its films, and says it only where they leave it unproved (:func:`say_unproved_split`)."""
    split = RunFolder.of(Path(bundle)).split
    beside = split_beside(bundle, card)
    if say and beside.unproved is not None:
        _warn_unproved_split(beside.unproved)
    if beside.foreign is not None:
        log.warning("%s: %s; it is not read as its run's split", bundle, beside.foreign)
        return None
    return split if split.is_file() else None


RECORDED_LIBRARIES = ("torch", "timm", "numpy", "onnxruntime")


def runtime_versions() -> dict[str, str]:
    """The versions of the libraries a model's numbers depend on (:data:`RECORDED_LIBRARIES`, those installed): an
    imported module's own ``__version__`` (torch's names its build, such as +cu130, which its package metadata may
    not), else the package metadata, so that recording them imports none of them."""
    found = {}
    for name in RECORDED_LIBRARIES:
        try:
            found[name] = str(getattr(sys.modules.get(name), "__version__", None) or metadata.version(name))
        except metadata.PackageNotFoundError:
            pass
    return found


def read_bundle_text(path: Path) -> str:
    """A bundle's text file (its card, a sidecar), refused (ValueError) when it is not a regular file: a pipe or a
    device in its place (a link to /dev/zero) would be read without end. FileNotFoundError when it is missing."""
    try:
        with open_regular(path) as f:
            return f.read().decode()
    except NotRegularFile as e:
        raise ValueError(f"{path} is {e}; restore the bundle from a good copy") from None


def read_bundle_json(path: Path) -> object:
    """A bundle's JSON file (its card, a sidecar) parsed, NaN and Infinity refused (:func:`_no_constant`): a
    ValueError for text that is no JSON, nesting deeper than Python's parser recurses among it (a file of brackets
    ended every command in a RecursionError traceback). Refused as :func:`read_bundle_text` refuses it too."""
    text = read_bundle_text(path)
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested deeper than any file pneumoscan writes") from None


def _card_digest(fields: Mapping[str, object]) -> str:
    """``sha256:HEX`` of a card's fields (not its checksum) in one canonical spelling, so that the key order and
    indentation of the file do not matter and every value does."""
    return json_sha256({k: v for k, v in fields.items() if k != CHECKSUM})


def save_card(directory: Path | str, card: BundleCard) -> None:
    """Rewrite bundle.json alone, with the checksum of what it now says: what is chosen after the weights are
    saved (the TTA threshold needs the exported model) must not rewrite the weights, and every legitimate change
    to the card goes through here, so any other change is refused at load."""
    fields = json.loads(json.dumps(asdict(card), allow_nan=False))  # as load_card will read them: keys as text
    fields["versions"][WRITER] = __version__  # under the checksum: who wrote what it says
    if card.files:  # sealed as every card of this format is: a format-1 card rewritten here becomes one
        fields["format_version"] = FORMAT_VERSION
    if bad := next((s for s in _strings(fields) if not is_utf8(s)), None):  # load_card could not read it back
        raise ValueError(f"bundle.json holds UTF-8 text only, and this bundle would record {shown(bad)}: rename it "
                         "(or the folder it is in) to a UTF-8 name")
    text = json.dumps({**fields, CHECKSUM: _card_digest(fields)}, indent=2)
    write_atomic(Path(directory) / CARD, text.encode())


def _strings(tree: object) -> Iterator[str]:
    if isinstance(tree, str):
        yield tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield key
            yield from _strings(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _strings(value)


def record_checksum(directory: Path | str, name: str, digest: str | None = None) -> None:
    """Add the SHA-256 of BUNDLE/NAME (``digest`` when the caller hashed it as written) to bundle.json. A bundle
    that records no checksum of its weights is left as it is: half a record would refuse its weights."""
    card = load_card(directory)
    if WEIGHTS in card.files:
        card.files[name] = digest or file_sha256(Path(directory) / name)
        save_card(directory, card)


def save_appearance(directory: Path | str, appearance: Appearance) -> None:
    """Write BUNDLE/appearance.safetensors and record its checksum (after save_bundle, which resets the record)."""
    data = save_arrays(appearance.to_arrays())
    write_atomic(Path(directory) / APPEARANCE, data)
    record_checksum(directory, APPEARANCE, bytes_sha256(data))


def load_appearance(directory: Path | str, card: BundleCard) -> Appearance | None:
    """The bundle's :class:`Appearance`, None when it records none (trained on too few films, or before bundles
    kept one); a damaged file is refused, as damaged weights are."""
    if APPEARANCE not in card.files:
        return None
    data = verified_bytes(directory, card, APPEARANCE)
    path = Path(directory) / APPEARANCE
    try:
        return Appearance.from_arrays(load_arrays(data))
    except (SafetensorError, ValueError) as e:
        raise ValueError(f"{path} is not a readable appearance record: {e}") from None


def _no_constant(name: str) -> None:
    """json's hook for NaN and Infinity, which save_card never writes: a NaN threshold would call every film
    negative."""
    raise ValueError(f"{name} is no number pneumoscan writes")


def load_card(directory: Path | str, best_so_far: bool = False) -> BundleCard:
    """BUNDLE/bundle.json, refused (ValueError with the reason) when it is not JSON, not of this format, changed
    since :func:`save_card` wrote it (its checksum), or when a field is missing, unknown (a misspelt one would
    silently take its default) or of the wrong type. A card older than the checksum loads with a warning, as a
    bundle older than the files' checksums does. A run's best weights so far (:data:`BEST_SO_FAR`) are refused
    unless ``best_so_far`` (training, which finishes them into RUN/bundle)."""
    path = given_path(directory, "bundle") / CARD
    try:
        data = read_bundle_json(path)
    except (FileNotFoundError, NotADirectoryError):  # a mistyped folder, a run folder, a file named as the bundle
        inner, given = RunFolder(Path(directory)).bundle, Path(directory)
        hint = (f"; did you mean {inner}?" if (inner / CARD).is_file() else
                f": it is a file of the bundle {given.parent}; give that folder" if given.is_file()
                and (given.parent / CARD).is_file() else "")
        raise FileNotFoundError(f"{directory} is not a bundle folder (no {CARD}){hint}") from None
    except ValueError as e:  # not JSON (or nested too deep), not UTF-8, NaN or Infinity
        raise ValueError(f"{path} is not a readable bundle card: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a bundle card (an object of named fields)")
    if data.get("format_version") not in FORMATS:
        raise ValueError(_format_refusal(directory, data))
    recorded = data.pop(CHECKSUM, None)
    # deleting the line a "damaged" refusal names must not turn an edit into a bundle that loads. A card claiming
    # format 1 with fields only this version writes was written by it, which always writes the checksum (its files'
    # too, unless it rewrote a card of a bundle older than them)
    current = data["format_version"] == FORMAT_VERSION
    # so was a card that names the pneumoscan that wrote it: every such pneumoscan wrote the checksum
    written_by = isinstance(data.get("versions"), dict) and WRITER in data["versions"]
    sealed = current or written_by or any(key in data for key in SEALED_ERA)
    if sealed and (recorded is None or current and not data.get("files")):
        missing = "checksum of itself" if recorded is None else "checksums of its files"
        raise ValueError(f"{path} records no {missing}, which every card of format {FORMAT_VERSION} holds: it was "
                         "edited; restore the bundle from a good copy (a new threshold comes from `pneumoscan "
                         "threshold`, never from editing bundle.json)")
    if recorded is not None and recorded != (actual := _card_digest(data)):
        raise ValueError(f"{path} is damaged: the SHA-256 of its fields is {actual[7:19]}..., it recorded "
                         f"{str(recorded)[7:19]}... when it was written; restore the bundle from a good copy (a new "
                         "threshold comes from `pneumoscan threshold`, never from editing bundle.json)")
    card = _validated(path, data)
    if not best_so_far and (kept := _kept_while_training(Path(directory), card)):
        raise ValueError(_best_so_far_refusal(kept))
    _check_operating_point(path, card)
    if recorded is None:
        _warn_unsealed(str(path))
    return card


def _check_operating_point(path: Path, card: BundleCard) -> None:
    """The thresholds in force, as the command that chose them recorded them again under the same checksum: the
    newest `threshold` record's, else the one the validation figures were measured at (training and `ensemble`,
    :func:`~pneumoscan.evaluation.operating_point.write_operating_point`; a card without either records nothing to
    compare). A threshold edited alone and sealed again labelled every film at it while the model card showed
    figures measured at another. bundle.json's own only: an INT8 model labels at its sidecar's thresholds, which its
    own validation figures are measured at, beside the card's FP32 records (:func:`checked_card`)."""
    if card.threshold_records:
        newest, where = card.threshold_records[-1], "its newest threshold record says"
        at = f"threshold_records[{len(card.threshold_records) - 1}]"
        recorded = {key: newest[key] for key in ("threshold", "tta_threshold") if key in newest}
    else:
        where, at = "its validation figures were measured at", "val_metrics.threshold"
        recorded = {"threshold": card.val_metrics["threshold"]} if "threshold" in card.val_metrics else {}
    for key, value in recorded.items():
        if getattr(card, key) != value:
            raise ValueError(f"{path}: {key} is {getattr(card, key)!r}, but {where} {value!r} ({at}); restore the "
                             "bundle from a good copy (a new threshold comes from `pneumoscan threshold`, never from "
                             "editing bundle.json)")


def _kept_while_training(directory: Path, card: BundleCard) -> Path | None:
    """Where a run's best weights so far are, if ``directory`` holds them (None otherwise): its card says so
    (:data:`BEST_SO_FAR`), or, written before cards did (pneumoscan 0.2.0), it records no run and no
    validation figures (a finished bundle records both) and sits as RUN/best beside the run's own files. A copy of it
    elsewhere, with no run beside it, is a bundle made by hand and loads as one."""
    if card.train_config.get(BEST_SO_FAR):
        return directory
    if card.train_config or card.val_metrics:
        return None
    where = directory.resolve()  # "." inside RUN/best, or a link to it, is RUN/best too
    run = RunFolder.of(where)
    return where if run.best == where and run.holds_run() else None


def _best_so_far_refusal(directory: Path) -> str:
    """Why a run's best weights so far are no model to use, and what is: the run's bundle, or finishing the run
    (found from the folder itself, whatever the path given: ``.`` inside RUN/best, or a link to it)."""
    run = RunFolder.of(directory.resolve())
    use = (f"use {run.bundle}, the run's finished bundle" if (run.bundle / CARD).is_file() else
           f"finish the run (`pneumoscan train --resume --out {run.root}`, with the data and settings of "
           f"{run.config}), then use {run.bundle}")
    return (f"{directory} holds the best epoch's weights that a training run keeps while it trains, not a model to "
            f"use: no temperature, threshold or validation figures were chosen for them; {use}")


@functools.cache
def _warn_unsealed(path: str) -> None:
    """Once a process per card: every command reads the card several times."""
    log.warning("%s records no checksum of itself (a bundle written before pneumoscan kept one), so an edited "
                "threshold or temperature cannot be detected; train it again to get a checked bundle", path)


def _format_refusal(directory: Path | str, data: dict) -> str:
    """Why a card of a format this pneumoscan does not read is refused: a higher format comes from a newer
    pneumoscan (upgrade), unless the card records a writer no newer than this one (then it was edited)."""
    form, reads = data.get("format_version"), ", ".join(map(str, FORMATS))
    newer, recorded = _writer(data)
    if isinstance(form, int) and not isinstance(form, bool) and form > FORMAT_VERSION:
        if newer:
            return (f"{directory}: this bundle was written by pneumoscan {newer} (bundle format {form}), newer than "
                    f"this one ({__version__}), which reads formats {reads}: {UPGRADE}")
        if not recorded:
            return (f"{directory}: bundle format {form} was written by a pneumoscan newer than this one "
                    f"({__version__}), which reads formats {reads}: {UPGRADE}")
    return f"{directory}: bundle format {form!r} is not one this pneumoscan reads ({reads})"


def _version(text: object) -> Version | None:
    """A PEP 440 version without its local label (0.1.0+cu130 is 0.1.0: a build of it, never newer); None for text
    that is no version."""
    try:
        return Version(Version(text).public) if isinstance(text, str) else None
    except InvalidVersion:
        return None


def _writer(data: Mapping[str, object]) -> tuple[str | None, bool]:
    """(the newest pneumoscan the card says wrote it, when newer than this one; whether it records any): the last
    writer (versions[WRITER]) or, in a card older than that record, the one that made the model (package_version).
    A card with fields or a format this pneumoscan does not know, from a newer one, was written, not edited."""
    versions = data.get("versions")
    recorded = [v for v in (versions.get(WRITER) if isinstance(versions, dict) else None, data.get("package_version"))
                if _version(v) is not None]
    own = _version(__version__)
    newer = [v for v in recorded if own is not None and _version(v) > own]
    return max(newer, key=_version, default=None), bool(recorded)


_CARD_FIELDS = [f.name for f in fields(BundleCard)]
_CARD = TypeAdapter(BundleCard)
_MEMBERS = TypeAdapter(list)
_MEMBER = TypeAdapter(MemberEntry)


def checked_card(where: Path | str, card: BundleCard) -> BundleCard:
    """``card`` held to every check :func:`load_card` makes of bundle.json's fields, refusals naming ``where``: for a
    card whose operating point comes from another file (the INT8 sidecar's thresholds), which bundle.json's own
    checksum does not cover, and which a bundle older than the files' checksums does not check at all."""
    return _validated(Path(where), asdict(card))


def _validated(path: Path, data: dict) -> BundleCard:
    """The card, or a refusal naming the field, when BundleCard(**data) would raise a TypeError traceback or
    silently give wrong answers: an unknown (misspelt) field, a missing one, a value of the wrong type (pydantic,
    strict: "0.2" is no number, true no size) or out of range; for an ensemble, the same for each member's entry
    that its network is built from."""
    _check_known_fields(path, data)
    newer = _writer(data)[0]
    card = _parsed(_CARD, data, str(path), newer)
    entries = [(str(path), asdict(card))]
    if card.model == ENSEMBLE:
        entries += _ensemble_entries(path, card, newer)
    for where, entry in entries:
        _check_model_entry(where, entry)
    _check_thresholds(path, card)
    for key in FIGURE_RECORDS:
        _check_figures(path, key, getattr(card, key))
    # a file the card records is one of the bundle's own: a name with a folder in it (../../etc/shadow, /dev/zero)
    # would have any file hashed at every load and health probe
    if odd := next((name for name in card.files if Path(name).name != name or name in ("", ".", "..")), None):
        raise ValueError(f"{path}: files names {odd!r}, not a file of the bundle's own folder")
    if card.training_data == []:  # every run trains on films: an empty record would read as one of no source at all
        raise ValueError(f"{path}: training_data lists no source of films; restore the bundle from a good copy")
    _check_classes(path, card)
    _check_run_record(path, card)
    _check_plugins(path, card)
    try:
        card.spec  # noqa: B018 - its checks (source size and quality, resize policy)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return card


def _check_known_fields(path: Path, data: dict) -> None:
    """Every field of ``data`` one BundleCard has, and every one it requires, before pydantic reads them: a
    misspelt field would silently take its default, a missing one let a default decide the label; a field only a
    newer pneumoscan writes is no misspelling, and says to upgrade."""
    unknown = [key for key in data if key not in _CARD_FIELDS]
    if unknown and (newer := _writer(data)[0]):  # not misspelt: fields a newer pneumoscan writes, of unknown meaning
        raise ValueError(_newer_fields(str(path), newer, unknown))
    for key in unknown:
        look_up_option(key, _CARD_FIELDS, f"{path} field")
    if missing := [key for key in REQUIRED if key not in data]:  # a default would decide the label silently
        raise ValueError(f"{path}: {missing[0]} is missing")


def _newer_fields(where: str, newer: str, names: Sequence[str]) -> str:
    """Why a card with fields this pneumoscan does not know (``names``: a field, or one inside a field's value such as
    ``training_data.0.taught``), written by the ``newer`` pneumoscan, is refused: its meaning is not known here."""
    return (f"{where}: this bundle was written by pneumoscan {newer}, newer than this one ({__version__}), with fields "
            f"this one does not know ({', '.join(map(repr, names))}): {UPGRADE}")


def _ensemble_entries(path: Path, card: BundleCard, newer: str | None) -> list[tuple[str, dict]]:
    """An ensemble's members' entries, each named as its refusals name it, once the ensemble's own input and heatmap
    scale are those its members make: its network is built from them, and each is held to a model's checks.
    ``newer``: the newer pneumoscan that wrote the card, whose keys in an entry are refused saying to upgrade."""
    members = _member_entries(path, card.model_kwargs.get("members"), newer)
    if len(members) < 2:
        raise ValueError(f"{path}: an ensemble's model_kwargs.members must list at least two members")
    # its input is the largest member's size in [0, 1] grey: each member resizes and normalises it itself
    if (card.mean, card.std) != (0.0, 1.0):
        raise ValueError(f"{path}: mean {card.mean!r} and std {card.std!r}, but an ensemble's input is [0, 1] "
                         "grey (mean 0, std 1); restore the bundle from a good copy")
    if card.size != (largest := max(member["size"] for member in members)):
        raise ValueError(f"{path}: size is {card.size!r}, but an ensemble's input is its largest member's, "
                         f"{largest} pixels; restore the bundle from a good copy")
    names = [member_label(i, len(members), m["source"]) for i, m in enumerate(members)]
    # its maps are drawn on its members' own scales times its own: 1e300 drew every map blank, 1e-300 full
    if card.heatmap_scale not in (None, MEMBERS_OWN_SCALE):
        raise ValueError(f"{path}: heatmap_scale is {card.heatmap_scale!r}, but an ensemble's is "
                         f"{MEMBERS_OWN_SCALE} (each member's map on its own member's scale) or none; restore the "
                         "bundle from a good copy")
    # a member without one has no map on a scale to join
    if card.heatmap_scale is not None and (bare := next(
            (i for i, member in enumerate(members) if member.get("heatmap_scale") is None), None)) is not None:
        raise ValueError(f"{path}: heatmap_scale is {card.heatmap_scale!r}, but {names[bare]} records none; "
                         "restore the bundle from a good copy, or build the ensemble again")
    return [(f"{path}: {name}", dict(member)) for name, member in zip(names, members)]


def _check_model_entry(where: str, entry: Mapping[str, Any]) -> None:
    """A model's numbers (the card's, or an ensemble member's entry), in the ranges pneumoscan makes them in: each
    of these out of range was sealed and loaded, and then called every film one way or drew every map blank."""
    for key in POSITIVE:
        if not entry[key] > 0:
            raise ValueError(f"{where}: {key} is {entry[key]!r}, not above 0")
    low, high = TEMPERATURE_BOUNDS  # fit_temperature searches within them: 1e-300 called every film positive
    if not low * (1 - 1e-9) <= entry["temperature"] <= high * (1 + 1e-9):
        raise ValueError(f"{where}: temperature is {entry['temperature']!r}, outside {low:g} to {high:g}, the "
                         "range temperatures are fitted in; restore the bundle from a good copy")
    try:  # a mean of 1e6 called every film positive
        check_normalization(entry["mean"], entry["std"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}; restore the bundle from a good copy") from None
    if not MIN_SIZE <= entry["size"] <= MAX_SIZE:
        raise ValueError(f"{where}: size is {entry['size']!r}, not {MIN_SIZE} to {MAX_SIZE} pixels")
    low, high = HEATMAP_SCALE_BOUNDS  # a single model's own, and each member's (an ensemble's is 1.0: above)
    if (scale := entry.get("heatmap_scale")) is not None and not low <= scale <= high:
        raise ValueError(f"{where}: heatmap_scale is {scale!r}, outside {low:.3g} to {high:.3g}, the float32 "
                         "Grad-CAM values it is measured from; restore the bundle from a good copy")


def _check_thresholds(path: Path, card: BundleCard) -> None:
    """The thresholds, plain and TTA, probabilities, and their intervals two in order: 1.5 called a pneumonia film
    at 0.81 normal."""
    for key in ("threshold", "tta_threshold"):
        if (value := getattr(card, key)) is not None and not 0 <= value <= 1:
            raise ValueError(f"{path}: {key} is {value!r}, not a probability in [0, 1]")
    for key in ("threshold_interval", "tta_threshold_interval"):
        if (interval := getattr(card, key)) and not (len(interval) == 2 and 0 <= interval[0] <= interval[1] <= 1):
            raise ValueError(f"{path}: {key} is {interval!r}, not two probabilities in order")


def _check_figures(path: Path, where: str, tree: object, name: str = "") -> None:
    """Every figure in a card's record ``tree`` (a dict or list, found at ``where``), held to its key's rule
    (:data:`RATES`, :data:`COUNTS`, "ci"; in an evaluation's {"value", "ci"} entries, its ``name``'s): an AUC of 7.5,
    a negative count or an interval above its figure, edited and sealed again, was shown by /v1/model and
    MODEL_CARD.md as measured. None is a figure the films left undefined."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    # a block of figures (the validation figures, an evaluation's metrics), which readers take by key as figures;
    # elsewhere a figure's name may key a record of its own (a subgroup difference's test)
    block = where == "val_metrics" or where.endswith(".metrics")
    for key, value in items:
        at = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"
        rule = name if key == "value" else key
        if key == "ci" and isinstance(value, dict):  # {figure: interval}, beside the figures
            for figure, interval in value.items():
                _check_interval(path, f"{at}.{figure}", interval, figure, tree.get(figure))
            continue
        if key == "ci":  # an evaluation's {"value", "ci"} entry
            _check_interval(path, at, value, name, tree.get("value"))
        elif rule in RATES | COUNTS and (isinstance(value, list) or isinstance(value, dict) and block
                                           and not _figure_entry(rule, value)):
            # [7.5] and {"a": 1} escaped the rule as figures inside, the dict to a TypeError at every predict's start
            raise ValueError(f"{path}: {at} is {value!r:.80}, not a figure; restore the bundle from a good copy")
        elif isinstance(value, (dict, list)):
            _check_figures(path, at, value, key if isinstance(key, str) else name)
        elif value is None:
            pass
        elif rule in RATES and not (_number(value) and 0 <= value <= 1):
            raise ValueError(f"{path}: {at} is {value!r}, not a figure in [0, 1]; restore the bundle from a good copy")
        elif rule in COUNTS and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"{path}: {at} is {value!r}, not a count; restore the bundle from a good copy")
        elif rule in NET_BENEFITS and not is_net_benefit(value):
            raise ValueError(f"{path}: {at} is {value!r}, not a net benefit (a finite number at most 1); restore the "
                             "bundle from a good copy")


def _figure_entry(rule: str, value: dict) -> bool:
    """Whether ``value``, a dict under a figure's key in a block of figures, is one of those a card records there,
    holding the key its readers take first (its figures then checked by their keys' rules): patients counted ("all",
    and each class's), or a rate's entry in an evaluation ("value", its interval)."""
    return "all" in value if rule == "patients" else rule in RATES and "value" in value


def _check_interval(path: Path, at: str, interval: object, figure: str, value: object) -> None:
    """A 95 % confidence interval of a figure (:func:`_check_figures`): None or [None, None] when the films gave
    none; else in [0, 1], low to high, and holding ``value`` where its kind of interval always does (:data:`HELD`)."""
    if interval is None or interval == [None, None]:
        return
    if figure in NET_BENEFITS:
        if not is_net_benefit_interval(interval):
            raise ValueError(f"{path}: {at} is {interval!r}, not an interval of net benefits (each at most 1), low to "
                             "high; restore the bundle from a good copy")
        return
    if not (isinstance(interval, list) and len(interval) == 2 and all(map(_number, interval))
            and 0 <= interval[0] <= interval[1] <= 1):
        raise ValueError(f"{path}: {at} is {interval!r}, not an interval in [0, 1], low to high; restore the bundle "
                         "from a good copy")
    if figure in HELD and _number(value) and not interval[0] - 1e-9 <= value <= interval[1] + 1e-9:
        raise ValueError(f"{path}: {at} is {interval!r}, which does not hold its figure {value!r}; restore the bundle "
                         "from a good copy")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def card_task(card: BundleCard, bundle: Path | str) -> Task:
    """The task BUNDLE's card names, as this process registered it: the one lookup of a card's task. A task not
    registered here (the module of a task of one's own not imported) is refused with what to import, where the
    registry's own lookup said "unknown task ...; did you mean" another task, as if the user had misspelt an option
    never given."""
    if card.task not in list_tasks():
        raise ValueError(f"{bundle}: its task {card.task!r} is not registered in this process: "
                         f"{register_first('task', card.plugin_module('task', card.task))}")
    return get_task(card.task)


def _check_classes(path: Path, card: BundleCard) -> None:
    """The classes and positive class the card's task gives: names swapped or changed turned every label into
    another. A task not registered in this process (a plugin not imported) is held to what every task is
    (:func:`~pneumoscan.data.tasks.check_classes`)."""
    if card.task not in list_tasks():
        check_classes(card.classes, card.positive, str(path))
        return
    task = get_task(card.task)
    if card.classes != list(task.classes) or card.positive != task.positive:
        raise ValueError(f"{path}: classes {card.classes} and positive {card.positive!r} are not the {card.task} "
                         f"task's {list(task.classes)} and {task.positive!r}")


def _check_plugins(path: Path, card: BundleCard) -> None:
    """The plugin modules the card records (:attr:`BundleCard.plugins`), each a kind pneumoscan registers and a
    module's dotted name: a refusal of the bundle tells the user to import it, so text that is no module name (a
    shell command) is refused here, not printed as advice."""
    for kind, named in card.plugins.items():
        if kind not in PLUGIN_KINDS:
            raise ValueError(f"{path}: plugins records {kind!r}, not a kind of plug-in ({', '.join(PLUGIN_KINDS)}); "
                             "restore the bundle from a good copy")
        if bad := next((m for m in named.values() if not all(part.isidentifier() for part in m.split("."))), None):
            raise ValueError(f"{path}: plugins.{kind} records {bad!r}, not a module's name; restore the bundle from a "
                             "good copy")


def _check_run_record(path: Path, card: BundleCard) -> None:
    """The task, preprocessing and model settings the card says, as the run that trained the model recorded them
    (:data:`RUN_RECORD`; a key a card lacks, as an ensemble's or an older run's, is not compared): a network that
    pools to a fixed size takes weights at any input size, so a card whose size was edited and sealed again read
    films at another scale than the model learnt; one whose task and classes were, answered another question; and
    a setting that leaves the weights' shapes alone (timm's global_pool "max" for "avg") made another function."""
    for key, recorded in RUN_RECORD.items():
        if recorded in card.train_config and card.train_config[recorded] != (value := getattr(card, key)):
            raise ValueError(f"{path}: {key} is {value!r}, but the training run that made the model recorded "
                             f"{recorded} {card.train_config[recorded]!r}; restore the bundle from a good copy")


def _member_entries(path: Path, value: object, newer: str | None) -> list[MemberEntry]:
    """bundle.json's model_kwargs["members"], each entry checked as :class:`MemberEntry` (a key of it that the
    ``newer`` pneumoscan which wrote the card writes refused saying to upgrade, :func:`_parsed`); a refusal of an
    entry names the member (:func:`member_label`), as every refusal about a member does, not pydantic's 0-based
    index."""
    entries = _parsed(_MEMBERS, value, f"{path}: model_kwargs.members")
    return [_parsed(_MEMBER, entry, f"{path}: {member_label(i, len(entries), _recorded_source(entry))}", newer)
            for i, entry in enumerate(entries)]


def _recorded_source(entry: object) -> str | None:
    """The folder a member entry records, before the entry is checked (None: it records none that is text)."""
    source = entry.get("source") if isinstance(entry, dict) else None
    return source if isinstance(source, str) else None


def _parsed(adapter: TypeAdapter, value: object, where: str, newer: str | None = None):  # noqa: ANN202 - the adapter's
    """``value`` as ``adapter`` reads it, or a refusal naming the field; a field inside a record's value that this
    pneumoscan does not know (a source of training_data with a key it lacks), in a card the ``newer`` pneumoscan
    wrote, is refused saying to upgrade, as an unknown field of the card is (:func:`_check_known_fields`)."""
    try:
        return adapter.validate_json(json.dumps(value))
    except ValidationError as e:
        unknown = [".".join(map(str, err["loc"])) for err in e.errors() if err["type"] == "extra_forbidden"]
        if unknown and newer:
            raise ValueError(_newer_fields(where, newer, unknown)) from None
        error = e.errors()[0]
        field = ".".join(map(str, error["loc"]))
        found = "" if error["type"] == "missing" else f" (found {error['input']!r:.60})"
        raise ValueError(f"{where}: {field + ': ' if field else ''}{error['msg'].lower()}{found}") from None


def refuse_model_files(path: Path | str, option: str = "--out", folder: bool = False) -> None:
    """Refuse results written at ``path`` over a model's files: into a bundle folder (``predict --out
    BUNDLE/bundle.json`` replaced the card with rows, exit 0, and the bundle was lost), or over a training run's own
    record (``evaluate --out RUN`` replaced the run's metrics.json and report.html). ``folder``: the option named
    ``path``'s folder (``evaluate --out DIR``), which the refusal names as given, not the file written in it."""
    path = Path(path)
    run = RunFolder(path.parent)
    if (path.parent / CARD).exists() and (path.parent / WEIGHTS).exists():  # a results file may be named bundle.json
        owner = f"the bundle {path.parent}, whose files are the model's"
    elif (run.bundle / WEIGHTS).exists() and path.resolve() in {
            p.resolve() for p in (run.split, run.config, *run.outputs()[1])}:
        owner = f"the training run {run.root}, where {path.name} is the run's own record"
    else:
        return
    raise ValueError(f"{option} {path.parent if folder else path} would write {path.name} into {owner}: write the "
                     "results elsewhere")


def checked_bytes(path: Path, recorded: str | None) -> bytes:
    """A bundle file's bytes, read once after its checks and refused unless they are the bytes recorded
    (``sha256:HEX``; None: a bundle older than the record, warned of at its check): the file loaded is the file
    checked, even were the bundle replaced in between (a deploy writing over it), when a second read gave another
    model's graph under this card's name and threshold, and 15 of 300 loads all-zero weights under its checksum."""
    try:
        with open_regular(path) as f:
            data = f.read()
    except NotRegularFile as e:
        raise ValueError(f"{path} is {e} since it was checked (the bundle written over?); load it again") from None
    if recorded is not None and bytes_sha256(data) != recorded:
        raise ValueError(f"{path} changed while it was loaded (the bundle written over?): its bytes are not those "
                         "bundle.json records; load it again")
    return data


def not_finite_weights(path: Path, name: str, bad: int, size: int) -> ValueError:
    """The refusal of weights whose tensor ``name`` holds ``bad`` NaN or infinite values of ``size``, in one wording
    for torch's read of them (:func:`.bundle._read_weights`) and numpy's (:func:`check_finite_weights`)."""
    return ValueError(f"{path}: its tensor {name!r} holds {bad} NaN or infinite values of {size}, which no model "
                      "computes with (damaged weights, or a training that diverged); restore the bundle from a good "
                      "copy or train again")


def check_finite_weights(directory: Path | str, card: BundleCard) -> None:
    """Refuse (ValueError) the bundle's weights where a tensor holds a NaN or an infinity, read by numpy, without
    torch: the ONNX backends read no weights, and weights sealed again over such damage differ from those their ONNX
    model was exported from, which they called a stale export; they call this first. Weights numpy cannot hold
    (bfloat16) are left to torch's check."""
    path = Path(directory) / WEIGHTS
    try:
        arrays = load_arrays(verified_bytes(directory, card, WEIGHTS))
    except (SafetensorError, TypeError):
        return
    for name, values in arrays.items():
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise not_finite_weights(path, name, int((~np.isfinite(values)).sum()), values.size)


def verified_bytes(directory: Path | str, card: BundleCard, name: str,
                   remedy: str = "restore the bundle from a good copy") -> bytes:
    """BUNDLE/``name``'s bytes, read once and refused as :func:`verify_file` refuses the file: the bytes loaded are
    the bytes checked, even were the bundle replaced meanwhile (a deploy writing over it, when a second read gave
    another model's graph under this card's name and threshold, and 15 of 300 loads all-zero weights under its
    checksum), and a file is hashed once, not once to check it and again to load it."""
    path = Path(directory) / name
    expected = _recorded(directory, card, name)
    try:
        with open_regular(path) as f:
            data = f.read()
    except NotRegularFile as e:
        raise ValueError(f"{path} is {e}, so it is not the file bundle.json lists; {remedy}") from None
    if expected is not None:
        _check_digest(path, bytes_sha256(data), expected, remedy)
    return data


def verify_file(directory: Path | str, card: BundleCard, name: str,
                remedy: str = "restore the bundle from a good copy") -> str | None:
    """Refuse (ValueError) a bundle file whose SHA-256 differs from the one recorded when it was written. A
    bundle older than the record is accepted with a warning, since nothing says what its bytes should be. Returns
    the digest found (``sha256:HEX``; None where nothing is recorded), for a caller that names the file by it, so
    that the file is not read twice."""
    path = Path(directory) / name
    if (expected := _recorded(directory, card, name)) is None:
        return None
    try:
        actual = file_sha256(path)
    except NotRegularFile as e:
        raise ValueError(f"{path} is {e}, so it is not the file bundle.json lists; {remedy}") from None
    _check_digest(path, actual, expected, remedy)
    return actual


def _recorded(directory: Path | str, card: BundleCard, name: str) -> str | None:
    """The SHA-256 the card records for BUNDLE/``name``, None (warned of) for a bundle older than the record; refused
    (ValueError) where the card records checksums but none for it, or the file is missing."""
    path = Path(directory) / name
    expected = card.files.get(name)
    if expected is None:
        if not card.files:
            log.warning("%s: bundle.json records no checksums (a bundle written before pneumoscan kept them), so "
                        "damaged files cannot be detected; train it again to get a checked bundle", directory)
            return None
        raise ValueError(f"{path}: bundle.json records checksums, but none for this file")
    if not path.exists():
        raise ValueError(f"{path} is missing, but bundle.json lists it")
    return expected


def _check_digest(path: Path, actual: str, expected: str, remedy: str) -> None:
    """Refuse (ValueError) ``path`` as damaged where its SHA-256 ``actual`` is not the one recorded."""
    if actual != expected:
        raise ValueError(f"{path} is damaged: its SHA-256 is {actual[7:19]}..., bundle.json recorded "
                         f"{expected[7:19]}... when it was written; {remedy}")


class AucRecord(NamedTuple):
    """An AUC a card records (:attr:`BundleCard.ranking_caveat`)."""

    figure: str  # which AUC: "auc" (the positive call's), MACRO_AUC
    what: str  # it, as the caveat says it
    auc: float
    ci: list[float] | None  # its 95% interval; None where the films gave none, or a record older than intervals
    films: str  # the films it is on, as the caveat says them
    n: int | None
    answers: bool  # whether it can answer an earlier record of its figure that reaches chance (an evaluation's)

    @property
    def reaches_chance(self) -> bool:
        """Whether its interval (without one: the AUC itself) reaches chance."""
        return (self.ci[0] if self.ci else self.auc) <= CHANCE_AUC


def _auc_records(card: BundleCard) -> list[AucRecord]:
    """Each AUC the card records, oldest first: validation's (and a three-class task's macro AUC), then each
    external evaluation's (and its macro AUC, where it records one: :data:`MACRO_AUC`). An evaluation answers an
    earlier record only where its films were checked new to the bundle (unchecked, they may be its training films)
    and its scores are the plain ones the readings are."""
    val, cis = card.val_metrics, card.val_metrics.get("ci") or {}
    films = validation_films(val)
    multiclass = f"validation macro AUC over the {len(card.classes)} classes"
    records = [AucRecord(figure, what, val[figure], _interval(cis.get(figure)), films, val.get("n"), False)
               for figure, what in (("auc", "validation AUC"), (MACRO_AUC, multiclass))
               if val.get(figure) is not None]
    for record in card.external_evaluations:
        on = shown(record.get("data"))
        for figure, what in (("auc", f"AUC on {on}"),
                             (MACRO_AUC, f"macro AUC over the {len(card.classes)} classes on {on}")):
            auc = (record.get("metrics") or {}).get(figure) or {}  # a record older than its macro AUC has none
            if auc.get("value") is not None:
                records.append(AucRecord(figure, what, auc["value"], _interval(auc.get("ci")),
                                         f"{record.get('n')} films", record.get("n"),
                                         record.get("films_checked") is True and record.get("scores") == "plain"))
    return records


def validation_films(val: Mapping[str, Any]) -> str:
    """The validation films as a caveat says them: "785 films of 454 patients" (the patients where recorded)."""
    patients = (val.get("patients") or {}).get("all")
    return f"{val.get('n', 'its')} films" + (f" of {patients} patients" if patients else "")


def _interval(ci: list[float] | None) -> list[float] | None:
    """A recorded 95% interval, or None where the films gave none ([None, None])."""
    return ci if ci and ci[0] is not None else None
