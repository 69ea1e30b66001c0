"""Figures by subgroup (``evaluate --by FIELD``): for each value of a field (bacteria and virus, each sex, age band,
scanner maker, site, view), its films and patients and the figures its films define at the bundle's own threshold,
never one chosen per group: sensitivity where it has positive films, specificity where it has negative ones, AUC
where it has both, each with the interval evaluate gives the whole set (:mod:`pneumoscan.core.metrics`), counting
patients; a three-class decision's accuracy. A group of too few patients for an interval says so instead of showing
a rate that looks precise.

A film's fields are what its record knows (subtype, split), a manifest's own columns (:attr:`Record.columns`) and
what :func:`~pneumoscan.data.scope.grouping` reads from its header with its scope check (format, PatientSex,
PatientAge as a band, Manufacturer, ViewPosition, InstitutionName)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pneumoscan.core.metrics import (binary_metrics, jsonable, proportion_ci, roc_auc, threshold_metrics_ci,
                                     with_ci)
from pneumoscan.core.metrics.intervals import FEW_PATIENTS
from pneumoscan.data.layouts import Record
from pneumoscan.data.scope import ADULT, AGE_BANDS, GROUPING_FIELDS

RECORD_FIELDS = ("subtype", "split")  # what a record knows beyond its label, path and patient
NOT_RECORDED = "(not recorded)"  # the group of the films that do not record the field
# a figure's films of fewer patients than this get no interval (FEW_PATIENTS: too few for the bootstrap evaluate
# uses, and an exact interval of 2 of 2 patients, 0.16-1, says no more than "too few")
SMALLEST = FEW_PATIENTS
FIGURE_NAMES = {"sensitivity": "sensitivity", "specificity": "specificity", "auc": "AUC", "accuracy": "accuracy"}
_ORDER = [name for _, name in AGE_BANDS] + [ADULT]  # age bands youngest first, not as text sorts them


def film_values(by: Sequence[str], records: Sequence[Record], fields: Sequence[Mapping[str, str]],
                data: str) -> dict[str, list[str]]:
    """Each field of BY (any case) with each film's value (:data:`NOT_RECORDED` where it has none): a film's
    record fields, its manifest columns and its ``fields`` (:func:`~pneumoscan.data.scope.grouping`, one a film).
    Refused: a field no film of DATA records, naming those they do, and a manifest column named as a field read
    from the film (``format``), whose groups would be the one or the other unsaid."""
    films = [{**{k: getattr(r, k) for k in RECORD_FIELDS if getattr(r, k)}, **f} for r, f in zip(records, fields)]
    columns = [dict(r.columns) for r in records]
    known = list(dict.fromkeys([*(k for f in films for k in f), *(k for c in columns for k, v in c.items() if v)]))
    out: dict[str, list[str]] = {}
    for asked in by:
        name = next((k for k in known if k.casefold() == asked.casefold()), None)
        if name is None:
            raise ValueError(f"no film of {data} records {asked!r} to group the figures by; they record "
                             f"{', '.join(known)} (a DICOM film's header also gives "
                             f"{', '.join(GROUPING_FIELDS[1:])}; a manifest's own columns are fields too)")
        clash = {k for c in columns for k in c if k.casefold() == asked.casefold()}
        if clash and any(k.casefold() == asked.casefold() for k in (*RECORD_FIELDS, *GROUPING_FIELDS)):
            raise ValueError(f"{asked!r} is both a column of {data} and a field read from each film: rename the "
                             "column to group by it")
        values = [f.get(name) or c.get(name) or NOT_RECORDED for f, c in zip(films, columns)]
        out[name] = values
    return out


def subgroup_figures(values: Mapping[str, Sequence[str]], patients: np.ndarray,
                     binary: tuple[np.ndarray, np.ndarray, float] | None = None,
                     decision: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """metrics.json's ``subgroups``: for each field of ``values`` (:func:`film_values`), each value's films and
    patients (``patients``: each film's unit, as evaluate's intervals count them) and figures: with ``binary`` (the
    films' 0/1 truth, positive-class scores and the bundle's threshold) sensitivity, specificity and AUC; with
    ``decision`` (truth and call among the classes) its accuracy. Undefined figures (no positive film) are None."""
    patients = np.asarray(patients)
    out: dict[str, Any] = {"smallest": SMALLEST, "fields": {}}
    if binary is not None:
        out["threshold"] = float(binary[2])
    for field, film_value in values.items():
        film_value = np.asarray(film_value, dtype=object)
        groups = []
        for value in sorted(set(film_value), key=group_order):
            films = film_value == value
            group: dict[str, Any] = {"value": value, "films": int(films.sum()),
                                     "patients": int(np.unique(patients[films]).size)}
            if binary is not None:
                y, scores, threshold = binary
                group |= _binary(y[films], scores[films], threshold, patients[films])
            if decision is not None:
                truth, called = decision
                right = truth[films] == called[films]
                group["accuracy"] = _proportion(right, patients[films], "films")
            groups.append(group)
        out["fields"][field] = groups
    return jsonable(out)


def group_order(value: str) -> tuple[bool, int, str]:
    """Groups in the order a reader looks for them: values as text sorts them (age bands youngest first), the films
    without one last."""
    return value == NOT_RECORDED, _ORDER.index(value) if value in _ORDER else len(_ORDER), value


def _binary(y: np.ndarray, scores: np.ndarray, threshold: float, patients: np.ndarray) -> dict[str, Any]:
    """A group's films of each class, and its sensitivity, specificity and AUC at ``threshold`` with the intervals
    evaluate gives them (:func:`~pneumoscan.core.metrics.threshold_metrics_ci`), each None where the group has no
    film it is of, and its interval None, saying why, where they are too few patients' (:data:`SMALLEST`)."""
    y = np.asarray(y).astype(int)
    m = binary_metrics(y, scores, threshold)
    positive, negative = y == 1, y == 0
    ci = threshold_metrics_ci(y, scores, (threshold,), groups=patients)[0]
    few = {name: _too_few(patients[films], said)
           for name, films, said in (("sensitivity", positive, "positive"), ("specificity", negative, "negative"))}
    figures: dict[str, Any] = {"positive": int(positive.sum()), "negative": int(negative.sum())}
    for name, films, hits in (("sensitivity", positive, m["tp"]), ("specificity", negative, m["tn"])):
        figures[name] = None if not films.any() else {
            "value": m[name], "hits": hits, "of": int(films.sum()), "ci": None if few[name] else ci[name],
            "too_few": few[name]}
    both = positive.any() and negative.any()
    too_few = few["sensitivity"] or few["specificity"]
    figures["auc"] = None if not both else {"value": roc_auc(y, scores), "ci": None if too_few else ci["auc"],
                                            "too_few": too_few}
    return figures


def _proportion(hits: np.ndarray, patients: np.ndarray, what: str) -> dict[str, Any]:
    """A share of ``hits`` with its interval by patient (:func:`~pneumoscan.core.metrics.proportion_ci`), none where
    its films are too few patients' (:data:`SMALLEST`)."""
    few = _too_few(patients, what)
    return {"value": float(hits.mean()), "hits": int(hits.sum()), "of": int(hits.size),
            "ci": None if few else proportion_ci(hits, patients), "too_few": few}


def _too_few(patients: np.ndarray, what: str) -> str | None:
    """Why a figure of films of these ``patients`` gets no interval, None where they are enough."""
    units = int(np.unique(patients).size)
    if units >= SMALLEST:
        return None
    return (f"{what} films of {units} patient{'' if units == 1 else 's'}: too few for an interval (it takes "
            f"{SMALLEST})")


def figure_said(figure: Mapping[str, Any] | None, digits: int = 3) -> str:
    """A group's figure as the terminal and the report say it: the value with its interval, its films counted where
    they are too few patients' for an interval (``3 of 3``, never a bare 1.000), "n/a" where the group has no film
    it is of."""
    if figure is None:
        return "n/a"
    if figure["too_few"]:
        counted = f"{figure['hits']} of {figure['of']} " if "hits" in figure else ""
        return f"{counted}(too few patients for a 95% CI)"
    return with_ci(figure["value"], figure["ci"], digits)


def table_rows(groups: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The columns and rows of a field's table (:func:`subgroup_figures`' groups), one wording for the terminal and
    the report: each group's value, films, patients and figures."""
    figures = [name for name in FIGURE_NAMES if any(name in g for g in groups)]
    head = ["group", "films", "patients", *(FIGURE_NAMES[name] for name in figures)]
    return head, [[g["value"], str(g["films"]), str(g["patients"]), *(figure_said(g[name]) for name in figures)]
                  for g in groups]
