"""Figures by subgroup (``evaluate --by FIELD``): for each value of a field (bacteria and virus, each sex, age band,
scanner maker, site, view), its films and patients and the figures its films define at the bundle's own threshold,
never one chosen per group: sensitivity where it has positive films, specificity where it has negative ones, AUC
where it has both, each with the interval evaluate gives the whole set (:mod:`pneumoscan.core.metrics`), counting
patients; a three-class decision's accuracy. A group of too few patients for an interval says so instead of showing
a rate that looks precise. Each field's sensitivity, specificity, AUC and accuracy are tested for a difference across
its groups (:func:`~pneumoscan.core.metrics.differences.rate_difference` and
:func:`~pneumoscan.core.metrics.differences.auc_difference`, permutation tests over patients; AUC by DeLong's test
of independent groups where asked, :func:`~pneumoscan.core.metrics.differences.delong_groups`), the p-values
adjusted over every test of the evaluation (:func:`adjust`, Holm's).

A film's fields are what its record knows (subtype, split), a manifest's own columns (:attr:`Record.columns`) and
what :func:`~pneumoscan.data.scope.grouping` reads from its header with its scope check (format, PatientSex,
PatientAge as a band, Manufacturer, ViewPosition, InstitutionName)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pneumoscan.core.metrics import (binary_metrics, jsonable, proportion_ci, roc_auc, threshold_metrics_ci,
                                     with_ci)
from pneumoscan.core.metrics.differences import (DELONG, P_METHODS, RESAMPLES, auc_difference, delong_groups, holm,
                                                  rate_difference)
from pneumoscan.core.metrics.intervals import FEW_PATIENTS
from pneumoscan.core.options import AUC_TESTS, look_up_option
from pneumoscan.data.layouts import Record
from pneumoscan.data.scope import ADULT, AGE_BANDS, GROUPING_FIELDS

RECORD_FIELDS = ("subtype", "split")  # what a record knows beyond its label, path and patient
NOT_RECORDED = "(not recorded)"  # the group of the films that do not record the field
# a figure's films of fewer patients than this get no interval (FEW_PATIENTS: too few for the bootstrap evaluate
# uses, and an exact interval of 2 of 2 patients, 0.16-1, says no more than "too few")
SMALLEST = FEW_PATIENTS
FIGURE_NAMES = {"sensitivity": "sensitivity", "specificity": "specificity", "auc": "AUC", "accuracy": "accuracy"}
RATES = ("sensitivity", "specificity", "accuracy")  # the rates tested for a difference across groups (rate_difference)
TESTED = ("sensitivity", "specificity", "auc", "accuracy")  # each figure tested so, in the order they are said
# metrics.json's blocks of a decision among the classes (the most probable class; evaluate --etiology's two
# stages), each with its figures by subgroup beside the binary ``subgroups``
DECISION_BLOCKS = ("multiclass", "two_stage")
# what the tests beneath each field's table tell and do not, said where they are shown
DIFFERENCES_NOTE = ("Beneath each table, a permutation test over patients asks of each rate whether it differs across "
                    "the field's groups by more than shuffling patients among them makes it differ, and of AUC "
                    "whether the groups rank films alike, among the groups with both positive and negative films; "
                    "its adjusted p is Holm's over every test of the evaluation: read that one against 0.05. Films "
                    "without the field are left out, and so are patients with films in several groups (one AP and "
                    "one PA film), as a patient is shuffled whole and cannot be moved into one group: each test "
                    "says how many, and is not made where that leaves a group without its films. Each p says how it "
                    f"was found: exact where every shuffle of the patients was counted (at most {RESAMPLES:,}), else "
                    f"drawn, {RESAMPLES:,} shuffles with a fixed seed (the same p each run); an AUC's p said to be "
                    "DeLong's (evaluate --auc-test delong) is DeLong's test of the groups' AUCs as independent "
                    "samples, each group's variance clustered by patient and taken at the groups' common AUC, a "
                    "normal approximation. A small p does not "
                    "say why the groups differ (their patients may differ in other ways); a large p on small groups "
                    "is no sign that they are alike.")
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
                     decision: tuple[np.ndarray, np.ndarray] | None = None,
                     auc_test: str = AUC_TESTS[0]) -> dict[str, Any]:
    """metrics.json's ``subgroups``: for each field of ``values`` (:func:`film_values`), each value's films and
    patients (``patients``: each film's unit, as evaluate's intervals count them) and figures: with ``binary`` (the
    films' 0/1 truth, positive-class scores and the bundle's threshold) sensitivity, specificity and AUC; with
    ``decision`` (truth and call among the classes) its accuracy. Undefined figures (no positive film) are None.
    ``differences``: each field's test of each rate (:func:`_difference`) and of AUC (:func:`_auc_difference`, by
    ``auc_test``: "permutation" or "delong") across its groups, unadjusted until :func:`adjust` has seen every
    block of the evaluation."""
    look_up_option(auc_test, AUC_TESTS, "AUC test")
    patients = np.asarray(patients)
    out: dict[str, Any] = {"smallest": SMALLEST, "fields": {}, "differences": {}}
    rates: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}  # a tested rate's films and their hits
    if binary is not None:
        y, scores, threshold = binary
        out["threshold"] = float(threshold)
        called = np.asarray(scores) >= threshold
        y = np.asarray(y).astype(int)
        rates |= {"sensitivity": (y == 1, called, "positive"), "specificity": (y == 0, ~called, "negative")}
    if decision is not None:
        truth, decided = decision
        rates["accuracy"] = (np.ones(len(truth), dtype=bool), np.asarray(truth) == np.asarray(decided), "")
    for field, film_value in values.items():
        film_value = np.asarray(film_value, dtype=object)
        groups = []
        for value in sorted(set(film_value), key=group_order):
            films = film_value == value
            group: dict[str, Any] = {"value": value, "films": int(films.sum()),
                                     "patients": int(np.unique(patients[films]).size)}
            if binary is not None:
                group |= _binary(y[films], scores[films], threshold, patients[films])
            if decision is not None:
                group["accuracy"] = _proportion(rates["accuracy"][1][films], patients[films], "films")
            groups.append(group)
        out["fields"][field] = groups
        tests = {name: _difference(hits[of], film_value[of], patients[of], what)
                 for name, (of, hits, what) in rates.items()}
        if binary is not None:
            tests["auc"] = _auc_difference(y, np.asarray(scores), film_value, patients, auc_test)
        out["differences"][field] = tests
    return jsonable(out)


def _apart(values: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, int]:
    """The films a test of a field counts, of its recorded groups (``values``, one a film): films that record no value
    (not a group of their own kind) and those of patients with films in several groups, whose groups would not be
    apart (Kermany's ``personN_bacteria`` and ``personN_virus`` are one patient), are left out; with how many
    patients are. A test on the others still holds, as which patients they are does not depend on their films'
    calls."""
    recorded = values != NOT_RECORDED
    groups_of = Counter(unit for unit, _ in set(zip(patients[recorded].tolist(), values[recorded].tolist())))
    shared = np.array([groups_of[unit] > 1 for unit in patients.tolist()], dtype=bool)
    return recorded & ~shared, sum(count > 1 for count in groups_of.values())


def _emptied(before: Sequence[str], after: set[str], kinds: str) -> str | None:
    """Why a test is not made where leaving patients out (:func:`_apart`) took every film of ``kinds`` from a group
    that had some (``before``): it would compare fewer groups than the table shows, unsaid; None where none was."""
    if not (emptied := [value for value in before if value not in after]):
        return None
    return (f"{', '.join(emptied)} {'has' if len(emptied) == 1 else 'have'} no {kinds} of patients in one group")


def _auc_difference(y: np.ndarray, scores: np.ndarray, values: np.ndarray, patients: np.ndarray,
                    auc_test: str = AUC_TESTS[0]) -> dict[str, Any]:
    """A field's test of whether AUC differs across its groups (``values``), among those with both positive and
    negative films (an AUC needs both; ``one_class`` names the others): its p-value
    (:func:`~pneumoscan.core.metrics.differences.auc_difference`, or with ``auc_test`` "delong"
    :func:`~pneumoscan.core.metrics.differences.delong_groups`), ``p_method`` (exact, drawn or DeLong), with the
    groups and patients it compares, each group's AUC and films of each class in ``compared``, or ``none``, why no
    test is made (fewer than two such groups, or one left without a class once patients in several groups are left
    out, :func:`_apart`; DeLong's refusal, a group of fewer than two patients of a class or without spread)."""
    kept, left_out = _apart(values, patients)

    def both(films: np.ndarray) -> list[str]:  # the groups with positive and negative films among FILMS
        return [value for value in sorted(set(values[films].tolist()), key=group_order)
                if len(set(y[films & (values == value)].tolist())) == 2]

    recorded = values != NOT_RECORDED
    before, after = both(recorded), both(kept)
    films = kept & np.isin(values, after)
    said: dict[str, Any] = {"groups": len(after), "patients": int(np.unique(patients[films]).size),
                            "left_out": left_out}
    if one_class := [value for value in sorted(set(values[recorded].tolist()), key=group_order)
                     if value not in before]:
        said["one_class"] = one_class
    if len(before) < 2:
        return said | {"none": "fewer than two groups have both positive and negative films"}
    for label, kinds in ((1, "positive films"), (0, "negative films")):
        if emptied := _emptied(before, set(values[kept & (y == label)].tolist()), kinds):
            return said | {"none": emptied}
    compared = [{"value": value, "auc": roc_auc(y[of], scores[of]), "positive": int(y[of].sum()),
                 "negative": int((y[of] == 0).sum())} for value in after for of in [films & (values == value)]]
    if auc_test == "delong":
        try:
            tested = delong_groups(y[films] == 1, scores[films], values[films], patients[films])
        except ValueError as e:  # no p rather than one DeLong's approximation cannot give
            return said | {"none": str(e), "compared": compared}
    else:
        tested = auc_difference(y[films] == 1, scores[films], values[films], patients[films])
    return said | {"p": tested.p, "p_method": tested.method, "compared": compared}


def _difference(hits: np.ndarray, values: np.ndarray, patients: np.ndarray, what: str) -> dict[str, Any]:
    """A field's test of whether a rate (``hits`` of its films) differs across its groups (``values``): its p-value
    (:func:`~pneumoscan.core.metrics.differences.rate_difference`), ``p_method`` (exact or drawn), with the groups
    and patients it compares, or
    ``none``, why no test is made (fewer than two groups, a group left without films once patients in several groups
    are left out, ``left_out`` of them (:func:`_apart`), or films all called alike: nothing to differ).
    ``compared``: each group's films and hits the test counts."""
    kept, left_out = _apart(values, patients)
    before = sorted(set(values[values != NOT_RECORDED].tolist()), key=group_order)
    hits, values, patients = hits[kept], values[kept], patients[kept]
    kinds = f"{what} films" if what else "films"
    said: dict[str, Any] = {"groups": int(np.unique(values).size), "patients": int(np.unique(patients).size),
                            "left_out": left_out}
    if len(before) < 2:
        return said | {"none": f"{kinds} in fewer than two groups"}
    if emptied := _emptied(before, set(values.tolist()), kinds):
        return said | {"none": emptied}
    if hits.all() or not hits.any():
        return said | {"none": f"all {hits.size} {kinds} called {'right' if hits.all() else 'wrong'}: nothing "
                               "differs"}
    compared = [{"value": value, "hits": int(hits[values == value].sum()), "of": int((values == value).sum())}
                for value in sorted(set(values.tolist()), key=group_order)]  # the table's, unless some left out
    tested = rate_difference(hits, values, patients)
    return said | {"p": tested.p, "p_method": tested.method, "compared": compared}


def blocks(metrics: Mapping[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """metrics.json's or a card record's blocks of figures by subgroup, each with the decision its figures are of
    (None: the binary figures, at ``threshold``): metrics.json keeps a decision's under its own block
    (:data:`DECISION_BLOCKS`), a card's evaluation record under ``three_class_subgroups`` (:func:`recorded`)."""
    found: list[tuple[str | None, dict[str, Any]]] = [(None, metrics["subgroups"])] if metrics.get("subgroups") else []
    for key in DECISION_BLOCKS:
        if (block := metrics.get(key)) and block.get("subgroups"):
            found.append((str(block["decision"]), block["subgroups"]))
    return found + [(block["decision"], block) for block in metrics.get("three_class_subgroups") or ()]


def recorded(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What a card's evaluation record keeps of the figures by subgroup of ``metrics``: ``subgroups`` (the binary
    figures') and ``three_class_subgroups``, each decision's block with the decision it is of, read back by
    :func:`blocks`; {} where the evaluation has none."""
    found = blocks(metrics)
    binary = [block for decision, block in found if decision is None]
    decisions = [{"decision": decision, **block} for decision, block in found if decision is not None]
    return ({"subgroups": binary[0]} if binary else {}) | ({"three_class_subgroups": decisions} if decisions else {})


def adjust(metrics: Mapping[str, Any]) -> None:
    """Holm's adjustment (:func:`~pneumoscan.core.metrics.differences.holm`) of every test in the blocks of
    ``metrics`` (:func:`blocks`), over every field and rate of the evaluation: ``p_holm`` beside each ``p``, and each
    block's ``tests``, how many the adjustment is over. Looking through many fields and rates finds a small p by
    chance alone; read ``p_holm`` against 0.05, not ``p``."""
    tests = [test for _, block in blocks(metrics) for field in block.get("differences", {}).values()
             for test in field.values() if "p" in test]
    for test, adjusted in zip(tests, holm([t["p"] for t in tests])):
        test["p_holm"] = adjusted
    for _, block in blocks(metrics):
        block["tests"] = len(tests)


def difference_said(name: str, test: Mapping[str, Any] | None) -> str:
    """A field's test of a figure in a sentence's words: its p and how it was found (:data:`P_METHODS`; a result
    of a version that did not record it, none), Holm-adjusted, with what it compares (the films it
    counts where patients in several groups are left out: then not the table's) and the groups AUC's could not
    compare, or why none; the patients left out counted either way."""
    if test is None:
        return f"{FIGURE_NAMES[name]}: not tested"
    left_out = test.get("left_out", 0)
    apart = (f"{left_out} patient{'' if left_out == 1 else 's'} with films in several groups left out"
             if left_out else "")
    one_class = (f"{', '.join(test['one_class'])} without both positive and negative films: no AUC"
                 if test.get("one_class") else "")
    if "none" in test:
        return f"{FIGURE_NAMES[name]}: not tested ({'; '.join(filter(None, (apart, test['none'])))})"
    method = f" ({P_METHODS[test['p_method']]})" if "p_method" in test else ""
    return (f"{FIGURE_NAMES[name]} p {p_said(test['p'])}{method}, adjusted {p_said(test.get('p_holm', test['p']))} "
            f"({test['groups']} groups, {test['patients']} patients" + (f"; {one_class}" if one_class else "")
            + (f"; {apart}, which leaves " + ", ".join(map(_compared_said, test["compared"])) if apart else "")
            + ")")


def _compared_said(group: Mapping[str, Any]) -> str:
    """A group as a test compared it: its hits of its films, or its AUC with its films of each class."""
    if "auc" in group:
        return f"{group['value']} {group['auc']:.3f} ({group['positive']} positive, {group['negative']} negative films)"
    return f"{group['value']} {group['hits']} of {group['of']}"


def tests_said(block: Mapping[str, Any], field: str, figures: Sequence[str] = TESTED) -> str:
    """A field's tests of ``figures`` (:func:`difference_said`), one after the other; "" where none was made (a
    result written before the tests)."""
    tests = block.get("differences", {}).get(field)
    if not tests:
        return ""
    return "; ".join(difference_said(name, tests.get(name)) for name in figures if name in tests)


def differences_said(block: Mapping[str, Any], field: str) -> str:
    """What a field's tests say (:func:`tests_said`), the line beneath its table; "" where none was made."""
    if not (said := tests_said(block, field)):
        return ""
    count = block.get("tests", 0)
    adjusted = f", adjusted over the {count} test{'' if count == 1 else 's'} of this evaluation" if count else ""
    tests = block.get("differences", {}).get(field, {})
    how = ("AUC's by DeLong's test of independent AUCs, the rates' by a permutation test over patients"
           if tests.get("auc", {}).get("p_method") == DELONG else "permutation test over patients")
    return f"Do the groups differ by more than chance? ({how}{adjusted}): {said}"


def p_said(p: float) -> str:
    """A p-value as a paper gives it, with its sign: "= 0.043", "< 0.001"."""
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


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
    if figure.get("too_few"):  # an edited record may lack what it need not say
        counted = f"{figure['hits']} of {figure['of']} " if "hits" in figure else ""
        return f"{counted}(too few patients for a 95% CI)"
    return with_ci(figure["value"], figure.get("ci"), digits)


def table_rows(groups: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The columns and rows of a field's table (:func:`subgroup_figures`' groups), one wording for the terminal and
    the report: each group's value, films, patients and figures."""
    figures = [name for name in FIGURE_NAMES if any(name in g for g in groups)]
    head = ["group", "films", "patients", *(FIGURE_NAMES[name] for name in figures)]
    return head, [[g["value"], str(g["films"]), str(g["patients"]), *(figure_said(g[name]) for name in figures)]
                  for g in groups]
