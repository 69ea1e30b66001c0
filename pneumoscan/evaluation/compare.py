"""Several runs side by side: one table of their validation figures and their ROC curves on one plot.

A run is a training run folder (RUN/metrics.json is its validation report) or an evaluate folder (its
metrics.json). Model, task and threshold policy come from the bundle next to it (RUN/bundle, or the evaluate
folder's sibling bundle), training minutes from RUN/history.csv; what cannot be found is shown as n/a, never guessed.
Each row says which films its figures are on: runs measured on different films are not ranked by one table.
Runs with figures of a decision among the classes (a multiclass task's most probable class, ``evaluate --etiology``'s
two stages) get a second table of those, so the two three-class routes sit side by side. Fields that several runs
have figures by subgroup of (``evaluate --by``) get a table each, every group's runs side by side with each run's
tests of a difference across the groups beneath, and so do their three-class decisions' accuracy by subgroup; a
field some runs lack is said. compare_subgroups.csv and .png give them a row a run, field and group. evaluate folders
on the same films are tested against the first of them, film by film (:func:`paired_tests`; compare_paired.csv),
their net benefits' difference given at every threshold probability of its decision curve too
(net_benefit_difference.csv); the evaluations' decision curves share one plot (:func:`decision_figure`).
Runs whose figures answer different questions (pneumonia or not against bacteria or virus; three-class figures of
other classes) are refused.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.core.atomic import write_atomic
from pneumoscan.core.digests import bytes_sha256
from pneumoscan.core.figures import figure_bytes
from pneumoscan.core.metrics import (format_figure, format_percent, is_net_benefit, is_net_benefit_interval,
                                     net_benefit_interval, with_ci)
from pneumoscan.core.metrics.intervals import FEW_PATIENTS
from pneumoscan.core.metrics.differences import (DELONG, P_METHODS, RESAMPLES, holm, net_benefit_differences,
                                                  paired_differences)
from pneumoscan.core.metrics.summaries import decision_thresholds
from pneumoscan.core.names import path_list, results_csv, shown
from pneumoscan.core.options import AUC_TESTS
from pneumoscan.inference.onnx_runtime import INT8_NAME
from pneumoscan.models.card import CARD, WEIGHTS, BundleCard, load_card
from pneumoscan.models.run_folder import METRICS, PREDICTIONS, PREDICTIONS_CHECKSUM, CvFolder, RunFolder
from .model_card import counted
from .report import Curve, decision_curves_figure, forest_figure, roc_figure
from .subgroups import (DECISION_BLOCKS, FIGURE_NAMES, RATES, difference_said, figure_said, group_order, p_said,
                        tests_said)

TRAINING_DATA = "validation (chose its threshold)"  # a training run's data, as its metrics.json and compare name it

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FIGURES = ("auc", "accuracy", "sensitivity", "specificity")  # each with its 95% CI
THREE_CLASS = ("accuracy", "balanced_accuracy", "macro_auc")  # a decision among the classes: each with its 95% CI
SUBGROUP_FIGURES = ("sensitivity", "specificity", "auc")  # a group's binary figures (evaluate --by), each with its CI
FIELDS = ("run", "model", "task", "data", "n", "patients", "ci_unit",
          *(f"{name}{end}" for name in FIGURES for end in ("", "_low", "_high")),
          # at the run's threshold, as evaluate's metrics.json gives it (a training run's validation has none)
          "net_benefit", "net_benefit_low", "net_benefit_high", "treat_all", "threshold", "policy", "scores",
          "minutes", "optimistic", "three_class_decision", "three_class_classes", "three_class_ci_unit",
          *(f"three_class_{name}{end}" for name in THREE_CLASS for end in ("", "_low", "_high")))
# a tested rate's cells, by subgroup; AUC's, a rate's but its films hit
RATE_CELLS = ("", "_low", "_high", "_hits", "_of", "_p", "_p_holm", "_p_method", "_test")
AUC_CELLS = ("", "_low", "_high", "_p", "_p_holm", "_p_method", "_test")
# compare_subgroups.csv: a row a run, field and group (and decision among the classes, where a run has several), each
# figure with its CI's ends and films counted, each rate's and AUC's test of a difference across the groups (its p,
# Holm-adjusted over the run's tests, how it was found, and in words what it compared or why none) repeated on each
# group's row, as a paper's table gives it
SUBGROUP_FIELDS = ("run", "model", "task", "data", "scores", "threshold", "ci_unit", "field", "group", "films",
                   "patients", "positive", "negative",
                   *(f"{name}{end}" for name in ("sensitivity", "specificity") for end in RATE_CELLS),
                   *(f"auc{end}" for end in AUC_CELLS), "three_class_decision",
                   *(f"accuracy{end}" for end in RATE_CELLS),
                   "tests")
OPTIMISTIC = " (optimistic *)"  # a run's mark, in the table and the figure alike, for the reasons beneath the table


def _with_bounds(prefix: str, figures: dict[str, float | None],
                 cis: dict[str, tuple[float | None, float | None]]) -> dict[str, float | None]:
    """compare.csv's cells of FIGURES: each figure, then its CI's ends (``_low``, ``_high``)."""
    return {f"{prefix}{name}{end}": value for name in figures
            for end, value in (("", figures[name]), ("_low", cis[name][0]), ("_high", cis[name][1]))}


@dataclass
class ThreeClass:
    """A run's figures of one decision among the classes: metrics.json's ``multiclass`` or ``two_stage`` block."""

    decision: str  # "most probable class", or the two stages' thresholds
    classes: list[str]
    ci_unit: str  # what the intervals count: "patient" or "film"
    figures: dict[str, float | None]  # THREE_CLASS
    cis: dict[str, tuple[float | None, float | None]]  # THREE_CLASS's 95% CIs, (None, None) where there is none
    # evaluate --by's block of its accuracy by subgroup (``fields``, ``differences``, ``tests``); {} where none
    subgroups: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"three_class_decision": self.decision, "three_class_classes": ", ".join(self.classes),
                "three_class_ci_unit": self.ci_unit, **_with_bounds("three_class_", self.figures, self.cis)}


@dataclass
class PairedTest:
    """A run's figures against the reference run's on the same films, each run at its own threshold: each figure's
    entry of :func:`~pneumoscan.core.metrics.differences.paired_differences` (the reference's value as ``first``,
    the run's as ``second``), with ``p_holm`` added."""

    reference: str
    films: int
    patients: int
    figures: dict[str, dict[str, Any]]
    # the net benefits' difference at each threshold probability of the reference's decision curve, each
    # :func:`~pneumoscan.core.metrics.differences.net_benefit_differences` entry with its pt as ``threshold``
    curve: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunSummary:
    """One run's row of the comparison, with its ROC curve for the figure."""

    run: str  # the folder's name as shown (:func:`~pneumoscan.core.names.shown`): one line of valid UTF-8
    model: str | None
    task: str | None
    data: str | None  # the films the figures are on (evaluate's data label; a training run's validation split)
    n: int  # films
    patients: int | None  # the patients of those films where the intervals count patients, else None
    ci_unit: str  # what the intervals count: "patient" or "film"
    figures: dict[str, float | None]  # FIGURES
    cis: dict[str, tuple[float | None, float | None]]  # FIGURES' 95% CIs, (None, None) where there is none
    threshold: float
    policy: str | None
    minutes: float | None
    roc: dict[str, list]
    optimistic: list[str]  # why the figures may flatter the model (evaluate's held-out check)
    question: tuple[str, str] | None  # the binary figures' (negative, positive) classes; None where unknown
    three_class: list[ThreeClass]  # its decisions among the classes (none for a two-class task alone)
    films: str | None = None  # evaluate's digest of the films and labels scored; None where not recorded
    predictions: str | None = None  # evaluate's SHA-256 of the predictions.csv it wrote; None where not recorded
    # how the films were scored: "plain" or "TTA" (test-time augmentation), ", INT8" with the INT8 model: each at
    # its own threshold, so two rows of one bundle on one set of films differ by it
    scores: str = "plain"
    # evaluate --by's block (metrics.json's subgroups: each field's groups under ``fields``, at the run's threshold,
    # and their tests under ``differences``); {} where none
    subgroups: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None  # where its figures are: an evaluate folder's predictions.csv is beside them
    paired: PairedTest | None = None  # its paired test against the reference run (:func:`paired_tests`)
    # evaluate's net benefit at the run's threshold ({"net_benefit", "ci", "treat_all", "treat_none"}); None where
    # none (a training run's validation figures, a threshold of 0 or 1)
    net_benefit: dict[str, Any] | None = None
    unpaired: str | None = None  # why it is in no paired test, where it is not (:func:`paired_tests`)
    # evaluate's decision curve (metrics.json's ``decision_curve``: threshold, net_benefit, with net_benefit_low and
    # net_benefit_high where the evaluation gave intervals, treat_all, treat_none, ...) and the films' prevalence;
    # None where none (a training run's validation figures)
    decision_curve: dict[str, list] | None = None
    prevalence: float | None = None

    @property
    def auc(self) -> float | None:
        return self.figures["auc"]

    def rows(self) -> list[dict[str, Any]]:
        """compare.csv's rows of the run: one per decision among the classes (one row when it has none)."""
        row = {"run": self.run, "model": self.model, "task": self.task, "data": self.data, "n": self.n,
               "patients": self.patients, "ci_unit": self.ci_unit, **_with_bounds("", self.figures, self.cis),
               **_net_benefit_cells(self.net_benefit), "threshold": self.threshold, "policy": self.policy,
               "scores": self.scores, "minutes": self.minutes,
               "optimistic": "; ".join(self.optimistic)}
        return [row | (decision.row() if decision else {}) for decision in (self.three_class or [None])]


def _net_benefit_cells(at: dict[str, Any] | None) -> dict[str, float | None]:
    """compare.csv's cells of a run's net benefit at its threshold: the figure, its CI's ends and treat all's."""
    at = at or {}
    low, high = at.get("ci") or (None, None)
    return {"net_benefit": at.get("net_benefit"), "net_benefit_low": low, "net_benefit_high": high,
            "treat_all": at.get("treat_all")}


def subgroup_rows(runs: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """compare_subgroups.csv's rows (:data:`SUBGROUP_FIELDS`): each run's groups of each field, its binary figures
    and its decisions' accuracy on one row (a row a decision where it has several, as compare.csv's)."""
    rows = []
    for r in runs:
        blocks = [r.subgroups, *(d.subgroups for d in r.three_class)]
        for name in dict.fromkeys(of for block in blocks for of in block.get("fields", {})):
            binary = {g["value"]: g for g in r.subgroups.get("fields", {}).get(name, [])}
            decisions: list[tuple[str | None, dict[str, Any], dict[str, Any]]] = [
                (d.decision, {g["value"]: g for g in d.subgroups["fields"][name]}, d.subgroups)
                for d in r.three_class if name in d.subgroups.get("fields", {})] or [(None, {}, {})]
            values = sorted({v for of in (binary, *(groups for _, groups, _ in decisions)) for v in of},
                            key=group_order)
            for value in values:
                for decision, groups, block in decisions:
                    group = binary.get(value) or groups.get(value, {})
                    row = {"run": r.run, "model": r.model, "task": r.task, "data": r.data, "scores": r.scores,
                           "threshold": r.threshold, "ci_unit": r.ci_unit, "field": name, "group": value,
                           "films": group.get("films", 0), "patients": group.get("patients", 0),
                           "positive": binary.get(value, {}).get("positive"),
                           "negative": binary.get(value, {}).get("negative"),
                           "tests": r.subgroups.get("tests", block.get("tests")),
                           "three_class_decision": decision}
                    for figure in SUBGROUP_FIGURES:
                        row |= _figure_cells(figure, binary.get(value, {}).get(figure), r.subgroups, name)
                    rows.append(row | _figure_cells("accuracy", groups.get(value, {}).get("accuracy"), block, name))
    return rows


def _figure_cells(name: str, entry: dict[str, Any] | None, block: dict[str, Any], field_name: str) -> dict[str, Any]:
    """A figure's cells of compare_subgroups.csv: its value, its CI's ends (none where too few patients), the films it
    counts (a rate's), and its field's test of a difference across the groups in ``block``, in figures and words
    (:func:`~.subgroups.difference_said`)."""
    ci = (entry or {}).get("ci") or [None, None]
    cells = {name: (entry or {}).get("value"), f"{name}_low": ci[0], f"{name}_high": ci[1]}
    tests = (block.get("differences") or {}).get(field_name)
    test = (tests or {}).get(name) or {}
    counted = {} if name == "auc" else {f"{name}_{key}": (entry or {}).get(key) for key in ("hits", "of")}
    return cells | counted | {f"{name}_p": test.get("p"), f"{name}_p_holm": test.get("p_holm"),
                              f"{name}_p_method": test.get("p_method"),  # exact or drawn; none where not recorded
                              # in words: what it compared (not the table's films where patients were left out), or
                              # why none; none where it was not tested (AUC, by a version before it was)
                              f"{name}_test": difference_said(name, test) if test else None}


def subgroup_figure(rows: Sequence[dict[str, Any]]) -> Figure:
    """compare_subgroups.png: :func:`subgroup_rows` as a forest plot (:func:`~.report.forest_figure`), a line a row,
    each group's runs one beneath the other as the terminal's tables set them, a panel a figure any row has."""
    fields = list(dict.fromkeys(row["field"] for row in rows))
    rows = sorted(rows, key=lambda row: (fields.index(row["field"]), group_order(row["group"])))  # runs in order
    figures = [name for name in FIGURE_NAMES if any(row[name] is not None for row in rows)]
    lines = [(f"{row['field']} {row['group']} · {row['run']}",
              {FIGURE_NAMES[name]: (row[name], row[f"{name}_low"], row[f"{name}_high"]) if row[name] is not None
               else None for name in figures}) for row in rows]
    return forest_figure(lines, [FIGURE_NAMES[name] for name in figures],
                         "Figures by subgroup, each run at its own threshold")


def _training_minutes(folder: Path) -> float | None:
    """The last epoch's elapsed minutes in history.csv (training's own clock), if the folder has one."""
    rows = RunFolder(folder).epochs()
    value = rows[-1].get("minutes") if rows else None
    return float(value) if value else None


def _number(value: object) -> bool:
    """A JSON number (true and false are ints to Python, not figures)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_cis(metrics_path: Path, block: dict, names: Sequence[str], where: str = "") -> dict:
    """BLOCK's ``ci`` after checking that each of NAMES and its bounds is a figure in [0, 1] or absent: a table must
    not rank an edited or damaged file's "AUC 7.5", nor end in a traceback on a text figure."""
    cis = block.get("ci") if isinstance(block.get("ci"), dict) else {}
    figures = [(key, block.get(key)) for key in names]
    figures += [(f"ci.{key}", bound) for key in names for bound in (
        cis.get(key) if isinstance(cis.get(key), list) and len(cis[key]) == 2 else [cis.get(key)])]
    for key, value in figures:
        if value is not None and not (_number(value) and 0 <= value <= 1):
            raise ValueError(f"{metrics_path}: {where}{key} is {value!r:.40}, not a figure in [0, 1]")
    return cis


def _checked_net_benefit(metrics_path: Path, m: dict) -> dict[str, Any] | None:
    """metrics.json's ``net_benefit`` after checking that its figures are net benefits (finite, at most 1; below 0
    where a strategy harms) and its interval two of them low to high, or absent, by the check a bundle's card gets
    too (:func:`~pneumoscan.core.metrics.is_net_benefit`): a damaged file is refused by its name, not shown as
    measured."""
    at = m.get("net_benefit")
    if at is None:
        return None
    if not (isinstance(at, dict) and all(is_net_benefit(at.get(key)) for key in ("net_benefit", "treat_all"))
            and is_net_benefit_interval(at.get("ci"))):
        raise ValueError(f"{metrics_path}: net_benefit is {at!r:.80}, not a net benefit (at most 1) with its "
                         "interval and treat all's")
    return at


def _checked_decision_curve(metrics_path: Path, m: dict) -> dict[str, list] | None:
    """metrics.json's ``decision_curve`` after checking that its threshold probabilities lie in (0, 1), rising, and
    that its net benefits and treat all's (and the interval's ends, None where a point has none, where it has them:
    an evaluation by an older version has none) are net benefits, one a threshold: a damaged curve is refused by its
    file, not drawn as measured."""
    curve = m.get("decision_curve")
    if curve is None:
        return None
    points = curve.get("threshold") if isinstance(curve, dict) else None
    keys = ["net_benefit", "treat_all"]
    bands = ["net_benefit_low", "net_benefit_high"] if isinstance(curve, dict) and (
        "net_benefit_low" in curve or "net_benefit_high" in curve) else []
    if not (isinstance(points, list) and points and all(_number(t) and 0 < t < 1 for t in points)
            and all(a < b for a, b in zip(points, points[1:]))
            and all(isinstance(curve.get(key), list) and len(curve[key]) == len(points)
                    and all(map(is_net_benefit, curve[key])) for key in keys)
            and all(isinstance(curve.get(key), list) and len(curve[key]) == len(points)
                    and all(v is None or is_net_benefit(v) for v in curve[key]) for key in bands)):
        raise ValueError(f"{metrics_path}: decision_curve is not threshold probabilities in (0, 1), rising, each with "
                         "its net benefit (at most 1), treat all's and, where given, its interval's ends")
    return curve


def _ci_unit(metrics_path: Path, block: dict, where: str = "") -> str:
    unit = block.get("ci_unit") or "film"  # a result without one counted films
    if unit not in ("patient", "film"):
        raise ValueError(f"{metrics_path}: {where}ci_unit is {unit!r:.40}, not patient or film")
    return unit


def _checked_roc(metrics_path: Path, m: dict) -> dict[str, list]:
    """The ROC curve of metrics.json (none: empty) after checking that its false- and true-positive rates are two
    lists of figures in [0, 1] of one length: a damaged curve would be drawn as the run's, or end the figure in a
    plotting error that names no file."""
    curves = m.get("curves") if isinstance(m.get("curves"), dict) else {}
    roc = curves.get("roc") or {"fpr": [], "tpr": []}
    rates = [roc.get(key) for key in ("fpr", "tpr")] if isinstance(roc, dict) else [None, None]
    if not (all(isinstance(r, list) and all(_number(v) and 0 <= v <= 1 for v in r) for r in rates)
            and len(rates[0]) == len(rates[1])):
        raise ValueError(f"{metrics_path}: curves.roc is not two lists of rates in [0, 1] of one length (fpr, tpr)")
    return roc


def _names(value: object, count: int | None = None) -> bool:
    """A list of class names (of ``count`` of them)."""
    return (isinstance(value, list) and len(value) >= 2 and all(isinstance(v, str) and v for v in value)
            and count in (None, len(value)))


def _three_class(metrics_path: Path, m: dict) -> list[ThreeClass]:
    """The run's decisions among the classes (the most probable class; two stages), checked as its binary figures
    are."""
    decisions = []
    for key in DECISION_BLOCKS:
        if (block := m.get(key)) is None:
            continue
        if not isinstance(block, dict) or not _names(block.get("class_names")):
            raise ValueError(f"{metrics_path}: {key} holds no figures of a decision among named classes")
        _warn_retrained(metrics_path.parent, block.get("etiology_bundle"), block.get("etiology_bundle_weights"),
                        "the two-stage figures shown are of its earlier weights")
        cis = _checked_cis(metrics_path, block, THREE_CLASS, f"{key}.")
        decisions.append(ThreeClass(
            decision=str(block.get("decision") or key), classes=list(block["class_names"]),
            ci_unit=_ci_unit(metrics_path, block, f"{key}."), figures={name: block.get(name) for name in THREE_CLASS},
            cis={name: tuple(cis.get(name) or (None, None)) for name in THREE_CLASS},
            subgroups=_subgroups(metrics_path, block, f"{key}.")))
    return decisions


def _subgroups(metrics_path: Path, m: dict, where: str = "") -> dict[str, Any]:
    """The run's block of figures by subgroup (``subgroups``: each field's groups and their tests), each group's
    figures and each test's p-values checked as its binary figures are: a damaged group must not be shown beside
    another run's as measured. ``where``: the block it is in (``multiclass.``), "" for the binary figures'."""
    block = m.get("subgroups")
    if block is None:
        return {}
    fields = block.get("fields") if isinstance(block, dict) else None
    if not isinstance(fields, dict):
        raise ValueError(f"{metrics_path}: {where}subgroups holds no figures by field")
    for name, groups in fields.items():
        if not isinstance(groups, list) or not all(
                isinstance(g, dict) and isinstance(g.get("value"), str) and isinstance(g.get("films"), int)
                and isinstance(g.get("patients"), int) for g in groups):
            raise ValueError(f"{metrics_path}: {where}subgroups.fields.{name!s:.40} is not a list of groups, each "
                             "with its value, films and patients")
        for g in groups:
            for figure in FIGURE_NAMES:
                entry = g.get(figure)
                at = f"{where}subgroups.fields.{name!s:.40}[{g['value']!s:.40}].{figure}."
                if entry is not None and not (isinstance(entry, dict) and "value" in entry
                                              and (entry.get("too_few") is None or isinstance(entry["too_few"], str))):
                    raise ValueError(f"{metrics_path}: {at[:-1]} is not a figure with its interval")
                if entry is not None:
                    _checked_cis(metrics_path, {"value": entry["value"], "ci": {"value": entry.get("ci")}}, ("value",),
                                 at)
                    if entry.get("too_few") and "hits" in entry and not _counts(entry, "hits", "of"):
                        raise ValueError(f"{metrics_path}: {at[:-1]} counts no hits of its films")
    differences = block.get("differences", {})
    if not (isinstance(differences, dict) and all(
            isinstance(tests, dict) and all(isinstance(test, dict) for test in tests.values())
            for tests in differences.values())):
        raise ValueError(f"{metrics_path}: {where}subgroups.differences is not each field's tests")
    for name, tests in differences.items():
        at = f"{where}subgroups.differences.{name!s:.40}"
        # AUC's test is not asked for: a result written before AUC was tested has none
        rates = {figure for g in fields.get(name, ()) for figure in RATES if figure in g}
        if tests and (missing := sorted(rates - tests.keys())):
            raise ValueError(f"{metrics_path}: {at} has no test of {', '.join(missing)} beside its others")
        for figure, test in tests.items():
            _checked_test(metrics_path, test, f"{at}.{figure!s:.40}")
    return block


def _counts(block: dict, *keys: str) -> bool:
    """Whether each of ``keys`` of BLOCK is a count (a non-negative int)."""
    return all(isinstance(block.get(key), int) and not isinstance(block[key], bool) and block[key] >= 0
               for key in keys)


def _checked_test(metrics_path: Path, test: dict, at: str) -> None:
    """A field's test of a figure (:func:`~.subgroups.difference_said` says it) after checking it is either why none
    was made or a p with the groups and patients it compared, and the films it counted (a rate's hits, or AUC's with
    its films of each class) where patients were left out, and the groups without both classes an AUC's names: an
    edited test must be refused by its file, not end in a traceback or read as made."""
    _checked_cis(metrics_path, test, ("p", "p_holm"), f"{at}.")
    if "p_method" in test and test["p_method"] not in P_METHODS:
        raise ValueError(f"{metrics_path}: {at}.p_method is {test['p_method']!r:.40}, not one of "
                         f"{', '.join(P_METHODS)}")
    one_class = test.get("one_class", [])
    if not (isinstance(one_class, list) and all(isinstance(value, str) for value in one_class)):
        raise ValueError(f"{metrics_path}: {at}.one_class is not a list of groups")
    if isinstance(test.get("none"), str):
        return
    compared = test.get("compared")
    if not (_number(test.get("p")) and _counts(test, "groups", "patients") and (not test.get("left_out") or (
            _counts(test, "left_out") and isinstance(compared, list) and all(
                isinstance(c, dict) and isinstance(c.get("value"), str)
                and (_counts(c, "hits", "of") or (_number(c.get("auc")) and _counts(c, "positive", "negative")))
                for c in compared)))):
        raise ValueError(f"{metrics_path}: {at} is neither a test (its p, groups and patients, and the films it "
                         "compared where patients were left out) nor why none was made")


def _warn_retrained(folder: Path, bundle: Path | str | None, weights: object, shown_as: str,
                    card: BundleCard | None = None, int8: object = None) -> bool:
    """Whether BUNDLE now holds other weights than ``weights``, the figures of ``folder`` were measured with (a run
    trained again into the same folder), or another INT8 model than ``int8`` (figures of ``--backend onnx-int8``,
    exported again since: its scores and thresholds are others), warned of with what the table shows of it; False
    when either is unknown. ``card``: BUNDLE's, where the caller read it (None: read here)."""
    if not bundle or not weights or not (card or (Path(bundle) / CARD).is_file()):
        return False
    files = (card or load_card(bundle)).files
    if files.get(WEIGHTS) != weights:
        held, since = "other weights", "trained"
    elif int8 and files.get(INT8_NAME) != int8:
        held, since = f"another {INT8_NAME}", "exported"
    else:
        return False
    log.warning("%s: the bundle at %s holds %s than these figures were measured with (%s again since?): %s", folder,
                bundle, held, since, shown_as)
    return True


def load_run(path: Path | str) -> RunSummary:
    """A run folder's (or evaluate folder's) validation figures; a folder without a binary metrics.json is refused."""
    folder = Path(path)
    metrics_path = folder / METRICS
    if not metrics_path.is_file():
        run = folder.parent
        cv = CvFolder(folder)
        hint = (f"; it is a bundle: give its training run, {run}" if (folder / CARD).is_file()
                and RunFolder(run).bundle == folder and (run / METRICS).is_file() else
                # a recipe's figures are its cv.json's; its folds' runs each validate on other films
                f"; it is a cv run: its figures are in {cv.summary} (the folds' spread and the pooled out-of-fold "
                f"figures), and its fold runs ({cv.fold(0).root}, ...) can be given, each on its own fold's films"
                if cv.summary.is_file() else "")
        raise ValueError(f"{folder}: no {METRICS} (give a training run folder or an evaluate --out folder){hint}")
    try:
        m = json.loads(metrics_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{metrics_path} is not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("kind") != "binary" or m.get("threshold") is None:
        raise ValueError(f"{metrics_path} holds no binary validation figures (a pneumoscan metrics.json)")
    cis = _checked_cis(metrics_path, m, (*FIGURES, "threshold"))
    if not (isinstance(m.get("n"), int) and _number(m["n"]) and m["n"] >= 1):
        raise ValueError(f"{metrics_path}: n is {m.get('n')!r:.40}, not a count of films")
    ci_unit = _ci_unit(metrics_path, m)
    counts = m.get("patients")  # {"positive", "negative", "all"}; None where the intervals count films
    patients = counts.get("all") if isinstance(counts, dict) else None
    if counts is not None and not (isinstance(patients, int) and _number(patients) and patients >= 1):
        raise ValueError(f"{metrics_path}: patients is {counts!r:.40}, not counts of patients")
    # the bundle the figures are of: as evaluate recorded it, else the run's own (a training run, an older folder)
    places = [Path(m["bundle"])] if m.get("bundle") else [RunFolder(folder).bundle, RunFolder(folder.parent).bundle]
    bundle = next((b for b in places if (b / CARD).is_file()), None)
    card = load_card(bundle) if bundle else None
    training_run = RunFolder(folder).bundle.is_dir()
    # the clock of the run that trained the bundle (beside it), not of the folder an --out put the figures in
    minutes = _training_minutes(bundle.parent) if bundle else None
    if card is not None and _warn_retrained(folder, bundle, m.get("bundle_weights"),
                                            "its model, task, policy and minutes are not shown", card,
                                            m.get("bundle_int8")):
        card, minutes = None, None  # a run trained again into the same folder: another model's card and clock
    data = m.get("data") or (TRAINING_DATA if training_run else None)
    # what the binary figures answer: the card's negative class and positive call, else the figures' own names
    question = ((card.classes[0], card.positive) if card and card.classes
                else tuple(m["class_names"]) if _names(m.get("class_names"), 2) else None)
    return RunSummary(
        run=shown(folder.name), model=card.model if card else None, task=card.task if card else None, data=data,
        n=int(m["n"]), patients=patients, ci_unit=ci_unit,
        figures={name: m.get(name) for name in FIGURES},
        cis={name: tuple(cis.get(name) or (None, None)) for name in FIGURES}, threshold=float(m["threshold"]),
        policy=card.threshold_policy if card else None, minutes=minutes,
        roc=_checked_roc(metrics_path, m), optimistic=list(m.get("optimistic") or []),
        question=question, three_class=_three_class(metrics_path, m),
        films=m["films"] if isinstance(m.get("films"), str) else None,
        predictions=m[PREDICTIONS_CHECKSUM] if isinstance(m.get(PREDICTIONS_CHECKSUM), str) else None,
        scores=("TTA" if m.get("tta") else "plain") + (", INT8" if m.get("backend") == "onnx-int8" else ""),
        subgroups=_subgroups(metrics_path, m), folder=folder, net_benefit=_checked_net_benefit(metrics_path, m),
        decision_curve=_checked_decision_curve(metrics_path, m),
        prevalence=m["prevalence"] if _number(m.get("prevalence")) and 0 <= m["prevalence"] <= 1 else None,
    )



def format_table(runs: list[RunSummary]) -> str:
    """The comparison as aligned plain text (one line per run, each figure with its CI); a run whose figures are
    on films the model chose its threshold on or trained on is marked, with the reasons beneath."""
    head = ("run", "model", "task", "data", "n", "CI unit", "AUC", "acc", "sens", "spec", "net benefit (treat all)",
            "threshold (policy)", "minutes")
    lines = [head]
    for r in runs:
        n = counted(r.n, "film") + (f" of {counted(r.patients, 'patient')}" if r.patients else "")
        lines.append((r.run + (OPTIMISTIC if r.optimistic else ""), r.model or "n/a", r.task or "n/a",
                      r.data or "n/a", n, r.ci_unit,
                      *(with_ci(r.figures[name], r.cis[name]) for name in FIGURES), _net_benefit_said(r.net_benefit),
                      f"{r.threshold:.4f} ({r.policy or 'n/a'}{'' if r.scores == 'plain' else '; ' + r.scores})",
                      format_figure(r.minutes, 1)))
    table = _aligned(lines)
    decisions = [(r, decision) for r in runs for decision in r.three_class]
    if decisions:  # the same films' figures of a decision among the classes, one line per decision
        table += "\n\n" + _aligned([("run", "three-class decision", "classes", "CI unit", "accuracy",
                                      "balanced accuracy", "macro AUC")] + [
            (r.run + (OPTIMISTIC if r.optimistic else ""), d.decision, ", ".join(d.classes), d.ci_unit,
             *(with_ci(d.figures[name], d.cis[name]) for name in THREE_CLASS)) for r, d in decisions])
    return (table + _subgroup_tables(runs) + _paired_table(runs)
            + "".join(f"\n* {r.run}: {reason}" for r in runs for reason in r.optimistic))


def _net_benefit_said(at: dict[str, Any] | None) -> str:
    """A run's net benefit at its threshold with its 95% CI, "to" between ends that may be negative, and treat
    all's beside it; n/a where it has none (a training run's validation figures)."""
    if not at or at.get("net_benefit") is None:
        return "n/a"
    return f"{at['net_benefit']:.3f} ({net_benefit_interval(at.get('ci'))}; {at['treat_all']:.3f})"


def _subgroup_tables(runs: list[RunSummary]) -> str:
    """The runs' figures by subgroup side by side (:func:`_field_tables`): their binary figures, then the accuracy of
    their decisions among the classes."""
    binary = [((r.run + (OPTIMISTIC if r.optimistic else ""),), r.subgroups) for r in runs]
    decisions = [((r.run + (OPTIMISTIC if r.optimistic else ""), d.decision), d.subgroups)
                 for r in runs for d in r.three_class]
    return (_field_tables(binary, ("run",), SUBGROUP_FIGURES, "each run at its own threshold")
            + _field_tables(decisions, ("run", "three-class decision"), ("accuracy",),
                            "each run's three-class decision"))


def _field_tables(blocks: Sequence[tuple[tuple[str, ...], dict[str, Any]]], named: tuple[str, ...],
                  figures: Sequence[str], at: str) -> str:
    """A table of each field that several ``blocks`` (each named by its cells under ``named``: a run, and its
    decision) have figures by subgroup of: each group's blocks one beneath the other, with films, patients and
    ``figures`` as evaluate words them (:func:`~.subgroups.figure_said`), a group a run has no film of as 0 films,
    and each block's tests of a difference across the groups beneath; then each field some blocks have and others
    lack, naming which."""
    fields = list(dict.fromkeys(name for _, block in blocks for name in block.get("fields", {})))
    tables, lacking = [], []
    for name in fields:
        having = [(cells, block) for cells, block in blocks if name in block.get("fields", {})]
        if len(having) < len(blocks):
            lacking.append(f"* by {name}: figures by subgroup in {', '.join(_label(c) for c, _ in having)}; none in "
                           f"{', '.join(_label(c) for c, b in blocks if name not in b.get('fields', {}))}")
        if len(having) < 2:
            continue
        groups = [{g["value"]: g for g in block["fields"][name]} for _, block in having]
        values = sorted({value for of_run in groups for value in of_run}, key=group_order)
        lines = [("group", *named, "films", "patients", *(FIGURE_NAMES[f] for f in figures))]
        lines += [(value, *cells, str(g.get("films", 0)), str(g.get("patients", 0)),
                   *(figure_said(g.get(f)) for f in figures))
                  for value in values for (cells, _), of_run in zip(having, groups) for g in [of_run.get(value, {})]]
        tests = [f"  {_label(cells)}: {said}" for cells, block in having if (said := tests_said(block, name, figures))]
        tables.append(f"by {name}, {at} (95% CIs count the run's CI unit):\n{_aligned(lines)}"
                      + ("\ndo the groups differ by more than chance? (permutation test over patients; adjusted: "
                         "Holm's over each run's tests)\n" + "\n".join(tests) if tests else ""))
    return "".join(f"\n\n{table}" for table in tables) + ("\n\n" + "\n".join(lacking) if lacking else "")


def _label(cells: tuple[str, ...]) -> str:
    """A block's name in a sentence: its run, and its decision in brackets."""
    return cells[0] + "".join(f" ({cell})" for cell in cells[1:])


def _aligned(lines: list[tuple[str, ...]]) -> str:
    """Rows of cells as columns, two spaces apart."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


TABLE, FIGURE = "compare.csv", "compare.png"  # what compare_runs writes in its out_dir
# what it writes there too where a run has figures by subgroup: subgroup_rows as CSV and as a forest plot
SUBGROUP_TABLE, SUBGROUP_FIGURE = "compare_subgroups.csv", "compare_subgroups.png"
PAIRED_TABLE = "compare_paired.csv"  # and where runs are evaluations of the same films, their paired tests
# and their net benefits' difference across the reference's threshold probabilities (:func:`difference_rows`)
DIFFERENCE_TABLE = "net_benefit_difference.csv"
DECISION_FIGURE = "compare_decision_curve.png"  # and where runs have decision curves, those (:func:`decision_figure`)


def compare_runs(paths: Iterable[Path | str] | Path | str, out_dir: Path | str | None = None,
                 auc_test: str = AUC_TESTS[0]) -> list[RunSummary]:
    """Summaries of ``paths`` (one run given alone is one run); with ``out_dir``, also compare.csv (the table) and
    compare.png (ROC curves overlaid, each run's operating point marked in its curve's colour), and where runs have
    figures by subgroup compare_subgroups.csv and .png (:func:`subgroup_rows`, :func:`subgroup_figure`; else an
    earlier comparison's removed), where runs have decision curves compare_decision_curve.png
    (:func:`decision_figure`), and where runs are tested paired compare_paired.csv and net_benefit_difference.csv
    (:func:`paired_rows`, :func:`difference_rows`; else an earlier comparison's removed). Runs whose binary
    figures answer different questions are refused (a two-class and a three-class pneumonia task answer one, normal
    or pneumonia), as are runs whose figures among the classes are of different classes. ``auc_test`` is the paired
    test of AUCs (:func:`paired_tests`)."""
    paths = path_list(paths)  # a generator read once, to load the runs and to name them
    if not paths:
        raise ValueError("no runs to compare")
    real = [os.path.realpath(p) for p in paths]
    if twice := next((p for i, p in enumerate(paths) if real[i] in real[:i]), None):
        # its test against itself would say "no difference", and count in every other test's adjusted p
        raise ValueError(f"{twice} is given twice (the same folder as another run): give each run once")
    runs = [load_run(p) for p in paths]
    for r, name in zip(runs, _names_apart(paths)):
        r.run = name
    training = [r for r in runs if r.data == TRAINING_DATA]
    if len({r.films for r in training}) > 1:  # each run's own validation films: said so, not taken for one set
        for r in training:
            r.data = f"validation of {r.run} (chose its threshold)"
    _check_comparable(runs)
    paired_tests(runs, auc_test)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / TABLE, results_csv(FIELDS, [row for r in runs for row in r.rows()]).encode())
        write_atomic(out / FIGURE, figure_bytes(comparison_figure(runs), tight=True))
        log.info("wrote %s and %s", out / TABLE, out / FIGURE)
        if rows := subgroup_rows(runs):
            write_atomic(out / SUBGROUP_TABLE, results_csv(SUBGROUP_FIELDS, rows).encode())
            write_atomic(out / SUBGROUP_FIGURE, figure_bytes(subgroup_figure(rows), tight=True))
            log.info("wrote %s and %s", out / SUBGROUP_TABLE, out / SUBGROUP_FIGURE)
        else:  # an earlier comparison's, in the same folder, must not pass for these runs'
            for stale in (SUBGROUP_TABLE, SUBGROUP_FIGURE):
                (out / stale).unlink(missing_ok=True)
        if rows := paired_rows(runs):
            write_atomic(out / PAIRED_TABLE, results_csv(PAIRED_FIELDS, rows).encode())
            log.info("wrote %s", out / PAIRED_TABLE)
        else:
            (out / PAIRED_TABLE).unlink(missing_ok=True)
        if rows := difference_rows(runs):
            write_atomic(out / DIFFERENCE_TABLE, results_csv(DIFFERENCE_FIELDS, rows).encode())
            log.info("wrote %s", out / DIFFERENCE_TABLE)
        else:
            (out / DIFFERENCE_TABLE).unlink(missing_ok=True)
        if (figure := decision_figure(runs)) is not None:
            write_atomic(out / DECISION_FIGURE, figure_bytes(figure, tight=True))
            log.info("wrote %s", out / DECISION_FIGURE)
        else:
            (out / DECISION_FIGURE).unlink(missing_ok=True)
    return runs


def _names_apart(paths: Sequence[Path | str]) -> list[str]:
    """Each run's name in the tables and figures: its folder's, with as many of the folders above it as tell it from
    every other run's (two RUN/eval-val folders by their runs, a/eval-val and b/eval-val; two site/run/eval folders
    by their sites), so that no two rows of a table are named alike."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    for depth in range(1, max(map(len, parts)) + 1):
        names = ["/".join("" if part == os.sep else shown(part) for part in of[-depth:]) for of in parts]
        if len(set(names)) == len(names):
            break
    return names


def _check_comparable(runs: list[RunSummary]) -> None:
    """Refuse runs whose curves answer different questions (the classes compared, in any case: the pneumonia task's
    NORMAL and PNEUMONIA are the multiclass task's normal and pneumonia), and runs whose decisions among the
    classes are among different classes, and runs whose films are named alike (two sites' ``manifest.csv``) but
    are other films, which the table would show as figures on one set."""
    named: dict[str, RunSummary] = {}
    for r in runs:
        if r.data is None or r.films is None:
            continue
        first = named.setdefault(r.data, r)
        if first.films != r.films:
            raise ValueError(f"{first.run} and {r.run} name their films alike ({shown(r.data)}) but were measured on "
                             "different films or labels: evaluate each with its own --data-name, or compare runs on "
                             "the same films")
    if len({tuple(c.casefold() for c in r.question) for r in runs if r.question}) > 1:
        said = "; ".join(dict.fromkeys(f"{r.task or r.run}: {' vs '.join(r.question)}" for r in runs if r.question))
        raise ValueError(f"runs whose figures answer different questions ({said}) do not share one table or ROC plot")
    decisions = [(r, d) for r in runs for d in r.three_class]
    if len({tuple(c.casefold() for c in d.classes) for _, d in decisions}) > 1:
        said = "; ".join(dict.fromkeys(f"{r.run}: {', '.join(d.classes)}" for r, d in decisions))
        raise ValueError(f"runs whose three-class figures are of different classes ({said}) do not share one table")


# compare_paired.csv: a row a run and figure tested against the reference run, on the films and patients both share
PAIRED_FIELDS = ("run", "reference", "data", "films", "patients", "figure", "reference_value", "value", "difference",
                 "difference_low", "difference_high", "ci_method", "no_ci", "p", "p_holm", "p_method", "figure_films",
                 "figure_patients", "optimistic")


@dataclass
class _Scored:
    """An evaluate folder's films as its predictions.csv lists them, in order of path."""

    paths: list[str]
    positive: np.ndarray  # whether each film's label is a positive class
    patients: list[str]  # each film's patient id, "" where none
    scores: np.ndarray  # the positive class's probability
    called: np.ndarray  # whether the run called each film positive, at its threshold


def _scored(run: RunSummary) -> _Scored | str:
    """The run's films with their scores and calls (predictions.csv beside its metrics.json), or why it has none
    for a paired test; a damaged file, or one that is not the file written with its metrics.json (another run's
    scores copied over it, or left by an evaluation stopped between the two files), is refused by its name."""
    if run.folder is None or not (run.folder / PREDICTIONS).is_file():
        return ("a training run: its validation figures come without scores a film" if run.data == TRAINING_DATA
                else f"no {PREDICTIONS} beside its metrics.json")
    if run.question is None:
        return "its classes are not known (no bundle card, no class names in its metrics.json)"
    path = run.folder / PREDICTIONS
    scored = path.read_bytes()
    if run.predictions is not None and bytes_sha256(scored) != run.predictions:
        raise ValueError(f"{path} is not the file evaluate wrote with the {METRICS} beside it (not the SHA-256 "
                         "recorded there): another run's scores copied over it, or left by an evaluation stopped "
                         "part-way; evaluate again into this folder")
    try:
        rows = sorted(csv.DictReader(io.StringIO(scored.decode("utf-8"), newline="")),
                      key=lambda row: row.get("path") or "")
        scores = np.array([float(row["probability"]) for row in rows])
        paths, labels, patients, called = ([row[key] or "" for row in rows]
                                           for key in ("path", "label", "patient", "called"))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: not a row a film with its path, label, patient, probability and call") from None
    if not (np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()) or len(rows) != run.n:
        raise ValueError(f"{path}: its probabilities are not {run.n} figures in [0, 1], one a film of its "
                         f"{METRICS}")
    if len(set(paths)) < len(paths):
        return f"{PREDICTIONS} lists a film twice"
    negative = run.question[0].casefold()  # every task's first class is negative, any other positive
    return _Scored(paths, np.array([label.casefold() != negative for label in labels]), patients, scores,
                   np.array([call.casefold() != negative for call in called]))


def _other_films(reference: RunSummary, films: _Scored, run: RunSummary, of_run: _Scored) -> str | None:
    """Why ``run``'s films are not the reference's, for the paired test: another digest, other paths, or other
    labels (of the two classes: a three-class run's bacteria is a two-class run's pneumonia), with an example; None
    where they are the same."""
    if reference.films is None or run.films is None:
        return f"{METRICS} records no digest of its films (an evaluation by an older version): evaluate it again"
    if (older := run if run.predictions is None else reference if reference.predictions is None else None) is not None:
        # nothing shows its scores are those its figures were computed from (:func:`_scored`)
        whose = "its" if older is run else f"{reference.run}'s"
        return (f"{whose} {METRICS} records no checksum of its {PREDICTIONS} (an evaluation by an older version): "
                "evaluate it again")
    if reference.films != run.films:
        return f"other films or labels than {reference.run}'s ({METRICS}'s films differ)"
    if films.paths != of_run.paths:
        ours = set(films.paths)
        first = next((p for p in of_run.paths if p not in ours), None) or next(
            p for p in films.paths if p not in set(of_run.paths))
        return f"its films are listed by other paths than {reference.run}'s (e.g. {shown(first)})"
    if (films.positive != of_run.positive).any():
        at = int(np.flatnonzero(films.positive != of_run.positive)[0])
        return f"its labels are not {reference.run}'s (e.g. {shown(films.paths[at])})"
    return None


def _patient_units(scored: Sequence[_Scored], copies: Sequence[Sequence[str]]) -> np.ndarray:
    """Each film's patient unit, as evaluate's intervals count them: films of one patient id (in any run's file),
    a film without one on its own, and copies of one film under other names (metrics.json's ``copies``) one unit."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    paths = scored[0].paths
    index = {path: i for i, path in enumerate(paths)}
    ids = {p: len(paths) + i for i, p in enumerate(dict.fromkeys(p for s in scored for p in s.patients if p))}
    edges = [(i, ids[p]) for s in scored for i, p in enumerate(s.patients) if p]
    edges += [(index[a], index[b]) for group in copies for a, b in zip(group, group[1:]) if a in index and b in index]
    ends = np.array(edges, dtype=np.int64).reshape(-1, 2)
    size = len(paths) + len(ids)
    graph = coo_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(size, size))
    return connected_components(graph, directed=False)[1][:len(paths)]


def paired_tests(runs: Sequence[RunSummary], auc_test: str = AUC_TESTS[0]) -> None:
    """Test each evaluate folder's AUC, sensitivity and specificity against the first one's (the reference), on the
    same films (:func:`~pneumoscan.core.metrics.differences.paired_differences`, AUC by ``auc_test``: "permutation"
    or "delong"), and give the difference of their net benefits at the reference's threshold probability (both
    calling positive at a probability of at least it, so both weigh a false positive at one odds), Holm-adjusted
    over every test
    made: each run's :attr:`RunSummary.paired`, or its :attr:`RunSummary.unpaired` saying why none (a training run,
    other films or labels than the reference's). Nothing is set where fewer than two runs have scores a film. Each
    paired run's :attr:`PairedTest.curve` is the net benefits' difference at every threshold probability of the
    reference's decision curve (the default range where its metrics.json has none), each with its pointwise
    interval from the same resamples of patients
    (:func:`~pneumoscan.core.metrics.differences.net_benefit_differences`)."""
    evaluated = []
    for r in runs:
        if isinstance(scored := _scored(r), str):
            r.unpaired = scored
        else:
            evaluated.append((r, scored))
    if len(evaluated) < 2:
        for r in runs:
            r.unpaired = None  # no test to be left out of
        return
    (reference, films), same = evaluated[0], []
    for r, of_run in evaluated[1:]:
        r.unpaired = _other_films(reference, films, r, of_run)
        if r.unpaired is None:
            same.append((r, of_run))
    if not same:
        return
    copies = json.loads((reference.folder / METRICS).read_text()).get("copies") or [] if reference.folder else []
    units = _patient_units([films, *(s for _, s in same)], copies)
    points = (reference.decision_curve or {}).get("threshold") or decision_thresholds().tolist()
    for r, of_run in same:
        scores = np.stack([films.scores, of_run.scores])
        figures = paired_differences(films.positive, scores, np.stack([films.called, of_run.called]), units, auc_test,
                                     threshold=reference.threshold)
        curve = [{"threshold": pt} | entry
                 for pt, entry in zip(points, net_benefit_differences(films.positive, scores, units, points))]
        r.paired = PairedTest(reference.run, len(films.paths), int(np.unique(units).size), figures, curve)
    figures = [test for r, _ in same if r.paired for test in r.paired.figures.values()]
    tests = [test for test in figures if test["p"] is not None]  # net benefit's difference has an interval alone
    for test in figures:
        test["p_holm"] = None
    for test, adjusted in zip(tests, holm([test["p"] for test in tests])):
        test["p_holm"] = adjusted


def paired_rows(runs: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """compare_paired.csv's rows (:data:`PAIRED_FIELDS`): a run and figure a row, of each run tested."""
    return [{"run": r.run, "reference": r.paired.reference, "data": r.data, "films": r.paired.films,
             "patients": r.paired.patients, "figure": name, "reference_value": test["first"], "value": test["second"],
             "difference": test["difference"], "difference_low": (test["ci"] or [None])[0],
             "difference_high": (test["ci"] or [None, None])[1], "ci_method": test["ci_method"],
             "no_ci": None if test["ci"] else no_interval(test), "p": test["p"],
             "p_holm": test["p_holm"],
             "p_method": test["p_method"],
             "figure_films": test["films"], "figure_patients": test["patients"], "optimistic": "; ".join(r.optimistic)}
            for r in runs if r.paired for name, test in r.paired.figures.items()]


# net_benefit_difference.csv: a row a run tested against the reference and threshold probability of the reference's
# decision curve: the run's net benefit less the reference's there, with its pointwise 95% CI or why it has none
DIFFERENCE_FIELDS = ("run", "reference", "threshold", "difference", "low", "high", "no_ci")


def difference_rows(runs: Sequence[RunSummary]) -> list[dict[str, Any]]:
    """net_benefit_difference.csv's rows (:data:`DIFFERENCE_FIELDS`): each run tested, at each threshold
    probability, its net benefit's difference from the reference's (its ends empty, and ``no_ci`` saying why, where
    too few patients' films are called differently: :func:`no_interval`)."""
    return [{"run": r.run, "reference": r.paired.reference, "threshold": at["threshold"],
             "difference": at["difference"], "low": (at["ci"] or [None])[0], "high": (at["ci"] or [None, None])[1],
             "no_ci": None if at["ci"] else no_interval(at)}
            for r in runs if r.paired for at in r.paired.curve]


PAIRED_NAMES = FIGURE_NAMES | {"net_benefit": "net benefit"}  # the paired table's figures, as it names them


def _value(name: str, value: float) -> str:
    """A paired figure's value: a rate's as a table gives it (never rounded up to 1), a net benefit (below 0 where
    a model harms) as it is."""
    return f"{value:.3f}" if name == "net_benefit" else format_figure(value)


def _signed(test: dict[str, Any]) -> str:
    """A paired difference with its sign and its 95% CI, or why it has none (:func:`no_interval`)."""
    ci = test["ci"]
    return f"{test['difference']:+.3f} " + (f"({ci[0]:+.3f} to {ci[1]:+.3f})" if ci
                                            else f"(no 95% CI: {no_interval(test)})")


def no_interval(test: dict[str, Any]) -> str:
    """Why a paired difference has no interval: its films are of too few patients, DeLong's variance cannot scale an
    AUC's (its ``no_ci_reason``, :func:`~pneumoscan.core.metrics.differences.paired_differences`), or the runs call
    differently the films of too few (none: every resample would give 0, read as a certain "no difference")."""
    apart = test.get("differing_patients")
    if test["patients"] < FEW_PATIENTS:
        return "too few patients"
    if test.get("no_ci_reason"):
        return test["no_ci_reason"]
    if apart is None:
        return "too few patients"
    if apart == 0:
        return "both runs call every film alike"
    return f"the runs call differently the films of {counted(apart, 'patient')} only, fewer than {FEW_PATIENTS}"


def _paired_table(runs: Sequence[RunSummary]) -> str:
    """The terminal's paired tests: a line a run and figure against the reference, then why runs were left out."""
    tested = [r for r in runs if r.paired]
    left = [f"* {r.run}: not in the paired test: {r.unpaired}" for r in runs if r.unpaired]
    if not tested:
        return "".join(f"\n{line}" for line in ["", *left]) if left else ""
    first = tested[0].paired
    assert first is not None
    count = sum(test["p"] is not None for r in tested if r.paired for test in r.paired.figures.values())
    lines = [("run", "figure", first.reference, "run's", "difference (95% CI)", "p", "adjusted p", "p by")]
    lines += [(r.run + (OPTIMISTIC if r.optimistic else ""), PAIRED_NAMES[name], _value(name, test["first"]),
               _value(name, test["second"]), _signed(test),
               *((p_said(test["p"]), p_said(test["p_holm"]), test["p_method"]) if test["p"] is not None
                 else ("none", "", "interval only")))
              for r in tested if r.paired for name, test in r.paired.figures.items()]
    benefit = any("net_benefit" in r.paired.figures for r in tested if r.paired)
    delong = any(test["p_method"] == DELONG for r in tested if r.paired for test in r.paired.figures.values())
    flattered = [r.run for r in runs if r.optimistic and (r.paired or r.run == first.reference)]
    said = (f"is each run better or worse than {first.reference} on the same {counted(first.films, 'film')} of "
            f"{counted(first.patients, 'patient')}? (each at its own threshold; difference: the run's figure less "
            f"{first.reference}'s, its 95% CI AUC's score-type on DeLong's variance clustered by patient (never "
            "narrower than the difference +- 1.96 of its standard errors, wider on the side an AUC near 1 leaves "
            "room), the rates' Newcombe's for paired rates (Wilson's intervals of the two squared and added, films "
            "of a patient counted as the independent films they are worth); p: "
            + ("AUC's by DeLong's test of correlated AUCs clustered by patient (a normal approximation), the rates' "
               "by " if delong else "")
            + "permutation test swapping the two runs' scores of each patient's films, exact where every swap was "
            f"counted, else drawn: {RESAMPLES:,} swaps with a fixed seed; adjusted: Holm's over the {count} tests"
            + (f"; net benefit: each run's at {first.reference}'s threshold probability pt (not each run's own "
               "threshold, so that both weigh a false positive at one odds), calling positive a probability of at "
               "least pt, true positives a film less false positives weighed by pt/(1 - pt), at these films' "
               "prevalence; its difference's 95% CI from patients resampled, and no test" if benefit else "") + ")")
    if flattered:
        said += (f" {', '.join(flattered)}: figures that may flatter the model (*, beneath), and so may the tests of "
                 "them")
    return ("\n\n" + textwrap.fill(said, 116) + "\n" + _aligned(lines) + "".join(f"\n{line}" for line in left))


def comparison_figure(runs: list[RunSummary]) -> Figure:
    """The runs' ROC curves on one axes with each operating point (at its own threshold) as a dot, and the films
    they are on, which compare.png, travelling without the table, must say: in the title when one set, else in
    each curve's label."""
    curves = {r.run: r.roc for r in runs if r.roc["fpr"]}
    data = {r.data or "n/a" for r in runs}
    on = {r.run: "" if len(data) == 1 else f" on {r.data or 'n/a'}" for r in runs}
    labels = {r.run: f"{r.run}{OPTIMISTIC if r.optimistic else ''}{on[r.run]} (AUC {format_figure(r.auc)})"
              for r in runs}
    points, owner = {}, {}
    for r in runs:
        sensitivity, specificity = r.figures["sensitivity"], r.figures["specificity"]
        if r.run in curves and sensitivity is not None and specificity is not None:
            label = f"{r.run} at t = {r.threshold:.3g}"
            points[label], owner[label] = (1 - specificity, sensitivity), r.run
    return roc_figure(curves, labels, points, owner, "ROC curve" + (f" on {data.pop()}" if len(data) == 1 else ""))


def decision_figure(runs: Sequence[RunSummary]) -> Figure | None:
    """compare_decision_curve.png: every run's decision curve on one axes, each with its 95% CI as a band (an
    evaluation without intervals drawn without one, said in its label), treat all's at each run's prevalence (one
    line for runs on films of one prevalence) and treat none's; and where runs were tested against the reference on
    the same films, a second panel of each one's net benefit less the reference's across the reference's threshold
    probabilities, with its pointwise 95% CI. Runs without a curve (a training run's validation figures) are named
    in the legend. None where no run has a curve."""
    colour_of = {r.run: f"C{i}" for i, r in enumerate(runs)}
    drawn = [(colour_of[r.run], r) for r in runs if r.decision_curve]
    if not drawn:
        return None
    data = {r.data or "n/a" for _, r in drawn}
    curves = []
    for colour, r in drawn:
        curve = r.decision_curve or {}
        banded = "net_benefit_low" in curve
        label = (f"{r.run}{OPTIMISTIC if r.optimistic else ''}" + ("" if len(data) == 1 else f" on {r.data or 'n/a'}")
                 + ("" if banded else f" (no 95% CI in its {METRICS})"))
        curves.append(Curve(label, colour, curve["threshold"], curve["net_benefit"],
                            curve.get("net_benefit_low"), curve.get("net_benefit_high")))
    treat_all: dict[tuple[tuple[float, ...], tuple[float, ...]], list[RunSummary]] = {}
    for _, r in drawn:  # runs on films of one prevalence (and one range of thresholds) share a line
        curve = r.decision_curve or {}
        treat_all.setdefault((tuple(curve["threshold"]), tuple(curve["treat_all"])), []).append(r)
    greys = ["#9aa5b1", "#616e7c", "#3e4c59", "#cbd2d9"] * len(runs)
    lines = [Curve("treat all" + (f" at {format_percent(of[0].prevalence)} prevalence" if of[0].prevalence is not None
                                  else "") + ("" if len(treat_all) == 1 else f" ({', '.join(r.run for r in of)})"),
                   grey, list(points), list(values))
             for ((points, values), of), grey in zip(treat_all.items(), greys)]
    notes = [f"{r.run}: no decision curve in its {METRICS}" for r in runs if not r.decision_curve]
    differences = []
    for r in runs:
        if r.paired and r.paired.curve:
            ends = [at["ci"] or [None, None] for at in r.paired.curve]  # none where too few patients differ
            low, high = ([e[i] for e in ends] if any(at["ci"] for at in r.paired.curve) else None for i in (0, 1))
            differences.append(Curve(f"{r.run} less {r.paired.reference}", colour_of[r.run],
                                     [at["threshold"] for at in r.paired.curve],
                                     [at["difference"] for at in r.paired.curve], low, high))
    reference = next((r.paired.reference for r in runs if r.paired), "")
    return decision_curves_figure(curves, lines, differences, notes,
                                  "Decision curves" + (f" on {data.pop()}" if len(data) == 1 else ""),
                                  f"Net benefit less {reference}'s, at each threshold")
