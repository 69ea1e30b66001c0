"""Classification tasks as plugins, registered by name as models are (:func:`register_task`).

A task owns what the rest of pneumoscan asks about it: its classes (index = target; the first class is always the
negative one), the rule that gives a record its class (None: the record is not in the task), the probability that
is thresholded (its positive class), the metrics beyond the binary ones, the classes Grad-CAM explains, and which
first-stage label hands a film to it when it runs as a second stage (etiology reads the films a pneumonia model
calls positive). Training, evaluation, export, explanation, prediction, serving and the CLI ask the task object,
so a new task is one :func:`register_task` call.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pneumoscan.core.registry import Registry
from pneumoscan.core.names import qualified_name, shown

if TYPE_CHECKING:  # the layouts load the image readers (pydicom): the command line lists the tasks without them
    from .layouts import Record

log = logging.getLogger(__name__)

TargetRule = Callable[["Record"], "int | None"]


def check_classes(classes: Sequence[str], positive: str, where: str) -> None:
    """The class rules every task keeps (index 0 is the negative class, so the positive call is never it): checked
    when a task is registered and on the card of a task not registered in this process. ValueError names ``where``."""
    if len(classes) < 2:
        raise ValueError(f"{where}: classes {list(classes)}: a task tells two or more classes apart")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{where}: needs two or more distinct classes, got {list(classes)}")
    if len(classes) == 2 and positive != classes[1]:
        raise ValueError(f"{where}: positive {positive!r} is not the positive call of its classes {list(classes)}: "
                         f"a two-class task's positive class is its second class ({classes[1]!r})")
    if positive == classes[0]:
        raise ValueError(f"{where}: positive {positive!r} is not the positive call of its classes {list(classes)}: "
                         f"the first class is the negative one")


@dataclass(frozen=True)
class Task:
    """A classification task; see the module docstring. Subclass it to change a rule, register it with
    :func:`register_task`."""

    name: str
    classes: tuple[str, ...]
    positive: str  # the class whose probability is thresholded and reported (sensitivity is about this class)
    rule: TargetRule  # record -> class index | None, as registered; :meth:`target` asks it and checks its answer
    # first-stage task name -> the label of that stage that hands a film to this one (this task as a second stage)
    follows: Mapping[str, str] = field(default_factory=dict)
    reports_pneumonia: bool = False  # the positive call states "pneumonia present" (DICOM SR and FHIR reports)

    def __post_init__(self) -> None:
        check_classes(self.classes, self.positive, f"task {self.name!r}")

    def target(self, record: Record) -> int | None:
        """The record's class index, or None when it is not in the task, as the rule gives it. Any other answer (an
        index past the classes, a negative one, a float) is refused here, naming the task, the film and the value:
        taken, 3 or -2 would be read as positive or negative by the binary figures and a float cut to an index."""
        try:
            value = self.rule(record)
        except (ValueError, OSError):  # the rule's own refusal, in its words
            raise
        except Exception as e:  # a slip in a site's rule (a KeyError on a label it did not expect): not a traceback
            raise ValueError(f"task {self.name!r}: its rule {qualified_name(self.rule)} failed on "
                             f"{shown(record.path)}: {type(e).__name__}: {e}; mend the rule") from e
        if value is None:
            return None
        if not isinstance(value, numbers.Integral) or not 0 <= value < len(self.classes):
            raise ValueError(f"task {self.name!r}: its rule gave {value!r} for {shown(record.path)}: a target is a "
                             f"class index from 0 to {len(self.classes) - 1} ({', '.join(self.classes)}) or None "
                             f"(not in the task)")
        return int(value)

    @property
    def multiclass(self) -> bool:
        """More than two classes: the positive call is "not the first class" (e.g. any pneumonia)."""
        return len(self.classes) > 2

    def positive_probability(self, probs: np.ndarray) -> np.ndarray:
        """P(positive) from class probabilities (N, C): the second class for two classes, else 1 - P(first class).
        Thresholds are chosen on these very numbers, so every path computes them this one way."""
        return 1.0 - probs[:, 0] if self.multiclass else probs[:, 1]

    @property
    def class_columns(self) -> tuple[str, ...]:
        """The results files' column of each class's probability, ``probability_<class>`` in class order, named
        here only so predict's rows, evaluate's predictions.csv and cv's oof.csv agree: for a task of more than two
        classes, whose positive probability does not give them; empty for two classes."""
        return tuple(f"probability_{c}" for c in self.classes) if self.multiclass else ()

    @property
    def positive_formula(self) -> str:
        """:meth:`positive_probability` in words, for the ONNX sidecar."""
        return f"1 - P({self.classes[0]})" if self.multiclass else f"P({self.positive})"

    def extra_metrics(self, targets: np.ndarray, probs: np.ndarray, groups: Sequence[str] | None = None) -> dict:
        """Metrics beyond the binary ones: a per-class block for a multiclass task (``groups``, each film's
        patient, makes its CIs count patients)."""
        if not self.multiclass:
            return {}
        from pneumoscan.core.metrics import evaluate_multiclass  # scipy/sklearn: only when evaluating

        return {"multiclass": evaluate_multiclass(targets, probs, self.classes, groups=groups)}

    @property
    def cam_classes(self) -> tuple[int, ...]:
        """The classes whose log-odds against the rest Grad-CAM explains by default: those the thresholded
        probability sums (:meth:`positive_probability`: every class but the first), so the map is evidence for the
        call the label makes (for three classes, log(P(bacteria) + P(virus)) - log P(normal))."""
        return tuple(range(1, len(self.classes)))

    def handoff(self, first: Task) -> str:
        """The label of a ``first`` stage that hands a film to this task; ValueError when it does not follow it."""
        if first.name not in self.follows:
            after = ", ".join(self.follows) or "no other stage"
            raise ValueError(f"the {self.name} task follows {after}, not {first.name}")
        return self.follows[first.name]


_TASKS: Registry[Task] = Registry("task", log)


def register_task(
    name: str, *, classes: Sequence[str], positive: str, follows: Mapping[str, str] | None = None,
    reports_pneumonia: bool = False, cls: type[Task] = Task,
) -> Callable[[TargetRule], TargetRule]:
    """Register the decorated ``rule(record) -> class index | None`` as task ``name`` (``cls``: a :class:`Task`
    subclass with other rules); a name registered before is replaced, with a warning, as a model's is."""

    def decorator(rule: TargetRule) -> TargetRule:
        _TASKS.add(name, cls(name, tuple(classes), positive, rule, dict(follows or {}), reports_pneumonia),
                   origin=getattr(rule, "__module__", None) or "")
        return rule

    return decorator


def get_task(name: str) -> Task:
    return _TASKS.get(name)


def plugin_tasks() -> dict[str, str]:
    """The tasks registered by modules outside pneumoscan, by name -> module (:meth:`Registry.plugins`)."""
    return _TASKS.plugins()


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def select(records: Sequence[Record], task: Task) -> tuple[list[Record], np.ndarray]:
    """The records that belong to the task and their integer targets."""
    kept = [(r, t) for r in records if (t := task.target(r)) is not None]
    return [r for r, _ in kept], np.array([t for _, t in kept], dtype=np.int64)


def warn_untyped(records: Sequence[Record], task: Task, purpose: str) -> int:
    """Warn of pneumonia films a task needs the type of (bacteria or virus) that nothing types, and return their
    number: the task cannot use them, and figures on the rest would otherwise pass for figures on every film given.
    The warning names the ways a type is given, so a site whose names say it otherwise knows to write a manifest."""
    if untyped := [r for r in records if r.label == "PNEUMONIA" and task.target(r) is None]:
        log.warning("%d pneumonia film(s) given to %s do not say bacteria or virus (e.g. %s): neither their names "
                    "(personN_bacteria_M, BACTERIA-N-M, or one of the two words in a name of your own) nor a "
                    "manifest's subtype column give it, so the %s task cannot use them and they are left out",
                    len(untyped), purpose, shown(untyped[0].path), task.name)
    return len(untyped)


def binary_targets(targets: np.ndarray) -> np.ndarray:
    """0/1 targets matching :meth:`Task.positive_probability`: every task's first class is negative, any other
    class positive."""
    return (targets > 0).astype(np.int64)


@register_task("pneumonia", classes=("NORMAL", "PNEUMONIA"), positive="PNEUMONIA", reports_pneumonia=True)
def _pneumonia(r: Record) -> int:
    return int(r.label == "PNEUMONIA")


# not after multiclass: that model tells bacteria from virus itself (inference.predict.check_stages says so)
@register_task("etiology", classes=("bacteria", "virus"), positive="virus", follows={"pneumonia": "PNEUMONIA"})
def _etiology(r: Record) -> int | None:
    return {"bacteria": 0, "virus": 1}.get(r.subtype) if r.label == "PNEUMONIA" else None


# Thresholded as normal vs pneumonia: P(pneumonia) = 1 - P(normal).
@register_task("multiclass", classes=("normal", "bacteria", "virus"), positive="pneumonia", reports_pneumonia=True)
def _multiclass(r: Record) -> int | None:
    return {"normal": 0, "bacteria": 1, "virus": 2}.get(r.subtype)
