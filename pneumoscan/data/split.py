"""Patient-level train/val split.

The shipped Kermany val folder has 16 images, too few to select a model on, and a random image split leaks:
one child's films (and copies of one film under other names) would land on both sides. Here the unit of assignment
is a connected component of records that share a patient id or a picture group (byte copies, and near duplicates by
pHash: a film re-encoded or resized, :func:`~pneumoscan.data.copies.picture_groups`). Units are visited in a
seeded random order and go to val while they fit: every stratum (subtype, or the label when the subtype is
unknown) may fill up to ``round(val_fraction * its size)`` images and no further. Counting each record of a unit
in its own stratum copes with the many Kermany patient ids that have both bacterial and viral films (808 of
1,635 in train), which a "dominant subtype" stratification would misplace; small units then fill each stratum
almost exactly (on the train folder, val subtype shares stay within 0.1 point of the whole for fractions 0.1-0.3).
``StratifiedGroupKFold`` was not used: it only serves fractions of 1/k. Cross-validation (:func:`patient_folds`)
deals the same units into k folds, each unit to the fold that lacks most of its strata. A trial run on part of the
data (``--patients N``) takes N of the same units first (:func:`patient_sample`), so that its split or folds stay
patient-disjoint too. A site's own test (``split --test-fraction``) is drawn first, of the same units and strata in
a stream of its own, and validation from the rest.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pneumoscan.core.names import shown
from pneumoscan.core.options import VAL_FRACTION
from pneumoscan.data.copies import label_conflicts, picture_groups, shared_patients
from pneumoscan.data.layouts import (HEADER_PATIENT, LABELS, SUBTYPES, Discovery, Record, absent_hint, discover,
                                     layouts, own_patient)

log = logging.getLogger(__name__)


def _stratum(rec: Record) -> str:
    return rec.subtype or rec.label.lower()


def _warn_unnamed(records: Sequence[Record]) -> None:
    """Say when file names gave no patient id (the id is then the film's own path, :func:`own_patient`): each such
    image is a group of its own, so one child's films can land on both sides, and a user must know the split is by
    image there; and when one id carries more films than a child has (:func:`crowded_patient`), kept as one patient."""
    unnamed = sum(map(own_patient, records))
    columns = f"; {hint}" if (hint := own_columns_hint(records)) else ""
    if unnamed and unnamed == len(records):
        log.warning("no patient ids in file names: %d images split as %d groups, one per image, so one child's films "
                    "may land on both sides: give each film's patient in a manifest's patient column "
                    "(path,label,patient)%s", unnamed, unnamed, columns)
    elif unnamed:
        log.warning("no patient id in %d of %d films (their names, a manifest or a DICOM header): those images are "
                    "split as %d groups, one per image%s", unnamed, len(records), unnamed, columns)  # fmt: skip
    if crowded := crowded_patient(records):
        log.warning("%s", crowded_caveat(*crowded, len(records)))


def own_columns_hint(records: Sequence[Record]) -> str:
    """What to do when films without a patient id come from a manifest with columns of its own: a hospital's sheet
    keeps its patients under its own name (``MRN``), which is read as a field for ``evaluate --by``, so one child's
    films were split one per film with nothing pointing at the column that would have kept them together. Empty
    when those films carry no such column."""
    names = list(dict.fromkeys(name for rec in records if own_patient(rec) for name, _ in rec.columns))
    if not names:
        return ""
    many = len(names) > 1
    return (f"the manifest's own column{'s' if many else ''} {', '.join(names)} {'are' if many else 'is'} read as "
            f"fields to group figures by (evaluate --by), not as patients: if {'one of them' if many else 'it'} holds "
            "each film's patient, name it patient")


# the most films one child has in the Kermany release's train/ (person23, 30 of its 5,216 films; 99 % of its 2,846
# patients have 9 or fewer), and twice that: an id on more films reads as one written into many children's films
# (an anonymiser's ANON) rather than one child's (crowded_patient)
MOST_FILMS_OF_A_CHILD = 30
CROWDED_FILMS = 2 * MOST_FILMS_OF_A_CHILD


def crowded_patient(records: Sequence[Record]) -> tuple[str, int] | None:
    """The patient id that carries the most films, and their number, when that is more than one child plausibly has:
    more than :data:`CROWDED_FILMS`, or, in fewer films, more than a child has in the Kermany release and more than
    a fifth of them (a sample of its patients that drew its 30-film child is not flagged). None otherwise; a film
    without an id (:func:`own_patient`) is a patient of its own."""
    films = Counter(r.patient for r in records if not own_patient(r))
    if not films:
        return None
    patient, count = films.most_common(1)[0]
    bound = min(CROWDED_FILMS, max(MOST_FILMS_OF_A_CHILD, len(records) // 5))
    return (patient, count) if count > bound else None


def crowded_caveat(patient: str, count: int, total: int) -> str:
    """What ``split`` and ``audit`` say of a :func:`crowded_patient`: its films are one patient to the split, so they
    land together on one side, and a validation side then holds all of them or none."""
    named = "one DICOM PatientID" if patient.startswith(HEADER_PATIENT) else f"one patient id ({shown(patient)})"
    return (f"{count} of {total} films share {named}, more than one child has in data like these (at most "
            f"{MOST_FILMS_OF_A_CHILD} of the Kermany release's 5,216): an anonymiser that wrote one id into every "
            "film? The split keeps them together as one patient, on one side (in one fold under cv): validation "
            "holds all of them or none, and its figures do not speak for those films; give the real patients in a "
            "manifest's patient column")


def _units(records: Sequence[Record], duplicate_groups: Sequence[Sequence[str]]) -> list[list[int]]:
    """Indices of records that must stay together (:func:`patient_units`), having said where patients are unknown,
    in the order of each unit's first film as it really is, not by where it was listed: the seeded shuffle then
    starts from the same order for the same films, so a manifest sorted otherwise (or the folders themselves) gives
    the same split."""
    _warn_unnamed(records)
    return _unit_lists(records, duplicate_groups)


def _unit_lists(records: Sequence[Record], duplicate_groups: Sequence[Sequence[str]]) -> list[list[int]]:
    """:func:`_units` without a word: a sample (:func:`patient_sample`) is split next, which says it."""
    units: dict[int, list[int]] = defaultdict(list)
    for i, unit in enumerate(patient_units(records, duplicate_groups)):
        units[int(unit)].append(i)
    real = [os.path.realpath(r.path) for r in records]
    return sorted(units.values(), key=lambda unit: min(real[i] for i in unit))


def patient_units(records: Sequence[Record], duplicate_groups: Sequence[Sequence[str]]) -> np.ndarray:
    """Each record's unit number: records share one when they are one patient's as far as can be told, the same
    patient id, or films of one picture group (copies of one film under two ids are one child's), joined
    transitively."""
    index = {r.path: i for i, r in enumerate(records)}
    linked: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        linked[f"patient:{rec.patient}"].append(i)
    for g, group in enumerate(duplicate_groups):
        linked[f"duplicate:{g}"] = [index[p] for p in group if p in index]
    rows, cols = [], []
    for members in linked.values():
        rows += members[:-1]
        cols += members[1:]
    n = len(records)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def patient_sample(records: Sequence[Record], patients: int, seed: int = 0,
                   duplicate_groups: Sequence[Sequence[str]] | None = None) -> list[Record]:
    """The records of ``patients`` units (:func:`patient_units`: a patient's films, and copies of one film, stay
    together), drawn in a seeded order, each kind of unit (its strata: normal, bacteria, virus, or both kinds of
    pneumonia) taking its share of them by largest remainder, so the sample keeps the classes' and subtypes' mix; in
    the records' order. scikit-learn's StratifiedShuffleSplit would refuse a kind of one patient and a sample of all
    of them. More patients than there are, or a sample without a film of a class the records have, is refused."""
    return _drawn(records, _unit_lists(records, duplicate_groups or []), patients, seed)


def _drawn(records: Sequence[Record], units: list[list[int]], patients: int, seed: int) -> list[Record]:
    """:func:`patient_sample` of the records' ``units`` (:func:`_unit_lists`, shuffled here in place), built once
    by a caller that also counts them (:func:`sampled_pool`)."""
    if not 1 <= patients <= len(units):
        raise ValueError(f"a sample of {patients} patients: the {len(records)} films hold {len(units)} (copies of one "
                         f"film under other ids count as one); give --patients {len(units)} or fewer, or leave it out "
                         "to use them all")
    kinds: dict[str, list[list[int]]] = defaultdict(list)
    random.Random(f"patient_sample {seed}").shuffle(units)  # a stream of its own: the split shuffles by seed
    for unit in units:
        kinds["+".join(sorted({_stratum(records[i]) for i in unit}))].append(unit)
    shares = {kind: patients * len(members) / len(units) for kind, members in sorted(kinds.items())}
    quota = {kind: int(share) for kind, share in shares.items()}
    for kind in sorted(shares, key=lambda k: quota[k] - shares[k])[: patients - sum(quota.values())]:
        quota[kind] += 1
    taken = {i for kind, members in kinds.items() for unit in members[: quota[kind]] for i in unit}
    sample = [r for i, r in enumerate(records) if i in taken]
    if missing := sorted({r.label for r in records} - {r.label for r in sample}):
        raise ValueError(f"a sample of {patients} of the {len(units)} patients holds no {missing[0]} film (its share "
                         "rounds to none): give more --patients")
    log.info("a sample of %d of the %d patients: %d of the %d films", patients, len(units), len(sample), len(records))
    return sample


def patient_split(
    records: Sequence[Record],
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    duplicate_groups: Sequence[Sequence[str]] | None = None,
    test_fraction: float = 0.0,
) -> list[Record]:
    """The same records (same order) with ``split`` set to "train" or "val", and "test" for ``test_fraction`` of
    each class and subtype (:func:`_held_for_test`) where it is above 0; no patient or duplicate group is on two
    sides, and val's class and subtype mix follows the whole, or a warning says where it cannot; a split without
    validation films or a class without training films is refused (:func:`_check_sides`). Validation is
    ``val_fraction`` of the films outside test, drawn as training draws it from a manifest whose test rows are left
    out, so that ``train`` with the same seed splits those rows as they were written."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be from 0 to below 1, got {test_fraction}")
    units = _units(records, duplicate_groups or [])
    test = _held_for_test(records, units, test_fraction, seed) if test_fraction else set()
    kept = [i for i in range(len(records)) if i not in test]
    at = {i: j for j, i in enumerate(kept)}
    rest = [records[i] for i in kept]
    rest_units = [[at[i] for i in unit] for unit in units if unit[0] not in test]  # units never straddle test
    val, target = _filled(rest, rest_units, val_fraction, random.Random(seed))
    side = {i: "val" if at[i] in val else "train" for i in kept} | dict.fromkeys(test, "test")
    _check_sides([replace(r, split=side[i]) for i, r in zip(kept, rest)], rest_units, target, val_fraction)
    return [replace(r, split=side[i]) for i, r in enumerate(records)]


def _filled(records: Sequence[Record], units: list[list[int]], fraction: float,
            rng: random.Random) -> tuple[set[int], dict[str, int]]:
    """The records a side holds, and each stratum's room in it: units (shuffled here in place by ``rng``) go to the
    side while they fit, every stratum filling up to ``round(fraction * its size)`` films and no further."""
    target = {k: round(fraction * n) for k, n in Counter(_stratum(r) for r in records).items()}
    filled: Counter[str] = Counter()
    chosen: set[int] = set()
    rng.shuffle(units)
    for unit in units:
        add = Counter(_stratum(records[i]) for i in unit)
        if all(filled[k] + n <= target[k] for k, n in add.items()):
            filled.update(add)
            chosen.update(unit)
    return chosen, target


def _held_for_test(records: Sequence[Record], units: Sequence[list[int]], test_fraction: float,
                   seed: int) -> set[int]:
    """The records held out for the test (``split --test-fraction``): whole patients, ``test_fraction`` of each
    class and subtype, drawn as validation is (:func:`_filled`) in a stream of their own, so that the same seed
    holds out the same patients whatever the validation fraction. Refused where the test side would lack a class
    (a sensitivity or specificity it cannot measure) or take all of one (none left to train on): a site's few
    patients give either at a high fraction, and the figures of that test would be no answer. A pneumonia subtype
    it lacks is warned of (its bacterial-viral figures are n/a, its normal-pneumonia ones stand), and so is one it
    takes whole (a split serves every task, and only an etiology or three-class run, which ``train`` then refuses,
    cannot learn from it), as is a mix off the whole's (:func:`_warn_off_mix`); the shares it holds are logged, as
    large patients fill less than asked."""
    test, target = _filled(records, [list(unit) for unit in units], test_fraction, random.Random(f"test {seed}"))
    pct = f"{test_fraction:.0%}"
    labels = Counter(r.label for r in records)
    held = Counter(records[i].label for i in test)
    if missing := [label for label in LABELS if labels[label] and not held[label]]:
        groups = sum(any(records[i].label == missing[0] for i in unit) for unit in units)
        raise ValueError(f"the test side holds no {missing[0]} film: none of the {groups} patient group(s) of the "
                         f"{labels[missing[0]]} {missing[0]} films fits in {pct} of its class and subtype (a "
                         "patient's films stay on one side), so the test could not measure sensitivity and "
                         f"specificity; raise the test fraction (split --test-fraction) or add {missing[0]} films of "
                         "other patients")
    if whole := [label for label in LABELS if labels[label] and held[label] == labels[label]]:
        raise ValueError(f"the test side takes all {labels[whole[0]]} {whole[0]} films at {pct}, leaving none to "
                         f"train on; lower the test fraction (split --test-fraction) or add {whole[0]} films")
    strata = Counter(_stratum(r) for r in records)
    in_test = Counter(_stratum(records[i]) for i in test)
    for kind in (k for k in SUBTYPES if strata[k] and not in_test[k]):  # normal: refused above, as NORMAL
        groups = sum(any(_stratum(records[i]) == kind for i in unit) for unit in units)
        log.warning("the test side holds no %s film: none of the %d patient group(s) of the %d %s films fits in %s "
                    "of its subtype (a patient's films stay on one side), so its bacterial-viral (etiology) figures "
                    "cannot be measured; raise the test fraction (split --test-fraction) or add %s films of other "
                    "patients", kind, groups, strata[kind], kind, pct, kind)
    for kind in (k for k in SUBTYPES if strata[k] and in_test[k] == strata[k]):  # normal: refused above, as NORMAL
        log.warning("the test side takes all %d %s films at %s, leaving none for training or validation: an etiology "
                    "or three-class run on this split has no %s film to learn from (train refuses it), and a "
                    "pneumonia model learns pneumonia without one; lower the test fraction (split --test-fraction) "
                    "or add %s films of other patients", strata[kind], kind, pct, kind, kind)
    log.info("held out for the test: %d of the %d films, whole patients, %s asked of each class and subtype: %s",
             len(test), len(records), pct,
             ", ".join(f"{k} {in_test[k]} of {n} ({in_test[k] / n:.1%})" for k, n in sorted(strata.items())))
    _warn_off_mix("the test side", records, in_test, target, pct)
    return test


def _check_sides(split: Sequence[Record], units: Sequence[Sequence[int]], target: dict[str, int],
                 val_fraction: float) -> None:
    """Refuse a split that cannot be trained on (no validation film, a class without training films) and warn of
    one that misses the whole's mix: a class without validation films (its figures cannot be measured), or a
    stratum left short of its room (:func:`_warn_off_mix`)."""
    pct = f"{val_fraction:.0%}"
    whole = Counter(_stratum(r) for r in split)
    in_val = Counter(_stratum(r) for r in split if r.split == "val")
    label_of = {_stratum(r): r.label for r in split}
    labels = Counter(r.label for r in split)
    sides = {side: Counter(r.label for r in split if r.split == side) for side in ("train", "val")}
    if not in_val:
        raise ValueError(f"the split put no film in validation: none of the {len(units)} patient group(s) of the "
                         f"{len(split)} films fits in {pct} of its class and subtype (a patient's films stay on one "
                         "side); add films or raise the validation fraction (split --val-fraction, train --set "
                         "val_fraction=...)")
    if short := [label for label in LABELS if labels[label] and not sides["train"][label]]:
        raise ValueError(f"the split left no {short[0]} film for training: all {labels[short[0]]} went to "
                         f"validation at {pct}; lower the validation fraction (split --val-fraction, "
                         f"train --set val_fraction=...) or add {short[0]} films")
    missing = [label for label in LABELS if labels[label] and not sides["val"][label]]
    for label in missing:
        room = sum(target[k] for k in whole if label_of[k] == label)
        groups = sum(any(split[i].label == label for i in unit) for unit in units)
        log.warning("validation holds no %s film: %s of the %d %s films is %d, and none of their %d patient group(s) "
                    "fitted in it (a patient's films stay on one side), so its AUC, sensitivity and specificity "
                    "cannot be measured; add %s films of other patients or raise the validation fraction",
                    label, pct, labels[label], label, room, groups, label)
    _warn_off_mix("validation", split, in_val, target, pct, missing)


def _warn_off_mix(side: str, records: Sequence[Record], held: Counter[str], target: dict[str, int], pct: str,
                  skip: Collection[str] = ()) -> None:
    """Warn when a side (validation, the test) misses the whole ``records``' mix: a stratum ``held`` short of its
    room (``target``) by patient groups too large for it, off its share by more than 2 points and by more than one
    film (on a small side one film is more than 2 points). Strata of the classes in ``skip`` are left out, a side
    without a class being said otherwise."""
    whole = Counter(_stratum(r) for r in records)
    label_of = {_stratum(r): r.label for r in records}
    n, n_side = len(records), sum(held.values())
    off = [f"{k} {held[k] / n_side:.1%} against {whole[k] / n:.1%} ({held[k]} films where {pct} is {target[k]})"
           for k in sorted(whole) if label_of[k] not in skip and held[k] < target[k]
           and abs(held[k] / n_side - whole[k] / n) > max(0.02, 1 / n_side)]
    if off:
        log.warning("%s is off the whole's mix by more than 2 points and more than one film, as patient groups too "
                    "large for the room left did not fit (a patient's films stay on one side): %s", side,
                    "; ".join(off))


def patient_folds(
    records: Sequence[Record], k: int, seed: int = 0, duplicate_groups: Sequence[Sequence[str]] | None = None
) -> np.ndarray:
    """The fold (0..k-1) of each record for k-fold cross-validation: no patient or duplicate group in two folds,
    and each fold's class and subtype mix close to the whole. Units are dealt largest first (ties in a seeded
    random order), each to the fold furthest below its share of the unit's strata."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    units = _units(records, duplicate_groups or [])
    if len(units) < k:
        raise ValueError(f"{len(units)} patients (copies of one film count as one) cannot fill {k} folds: give folds "
                         f"(--folds) {len(units)} or fewer, or add films of other patients")
    random.Random(seed).shuffle(units)
    units.sort(key=len, reverse=True)  # stable: equal sizes keep the seeded order
    share = {key: n / k for key, n in Counter(_stratum(r) for r in records).items()}
    filled = [Counter() for _ in range(k)]
    fold = np.zeros(len(records), dtype=np.int64)
    for unit in units:
        add = Counter(_stratum(records[i]) for i in unit)
        f = min(range(k),
                key=lambda j: (sum((filled[j][key] - share[key]) / share[key] * n for key, n in add.items()), j))
        filled[f].update(add)
        fold[unit] = f
    labels = Counter(r.label for r in records)
    for f in range(k):  # each fold validates one run: a class missing from it stops that run after the others
        held = Counter(records[i].label for i in np.flatnonzero(fold == f))
        if missing := [label for label in LABELS if labels[label] and not held[label]]:
            raise ValueError(f"fold {f + 1} of {k} holds no {missing[0]} film (a patient's films stay in one fold, "
                             f"and the {labels[missing[0]]} {missing[0]} films are in fewer patient groups than "
                             "folds): its run could not be validated; use fewer folds or add films")
    return fold


def split_pool(data: Path | str, new_test: bool = False) -> tuple[list[Record], list[list[str]]]:
    """Everything in DATA but its test split, and its picture groups (copies of one film, which must stay
    together). A pool without a film of each class is refused (:func:`_check_classes`); label conflicts in it are
    warned of. A pool to draw a ``new_test`` from is refused where DATA has a test split: the new test would be
    other patients than the one ``--split test`` reads from DATA, and a manifest holds one split per film."""
    found = discover(data)
    pool = [r for r in found.records if r.split != "test"]
    if new_test and (given := len(found.records) - len(pool)):
        raise ValueError(f"{shown(data)} has a test split of its own ({given} films in test/ or test rows): a new "
                         "test drawn from its other films (--test-fraction) would be other patients than the ones "
                         "evaluate --split test reads from it; split it without --test-fraction to keep its test, or "
                         "give its films without their test split (a manifest without the test rows) to draw a new one")
    if not pool:
        raise ValueError(f"{data}: no images outside test/ to split")
    if absent := [r.path for r in pool if not os.path.exists(r.path)]:
        # a manifest's wrong paths (a typo, Windows separators, read through a link from another folder): a split of
        # them would be handed on as a dataset, its films missing in every run
        raise ValueError(f"{shown(data)}: {len(absent)} of its {len(pool)} films outside test/ are not there (e.g. "
                         f"{shown(absent[0])}); {absent_hint(absent)}")
    _check_classes(data, pool, found)
    if found.layout == "manifest" and (chosen := sum(r.split == "val" for r in pool)):
        # a site's own validation films (another hospital, a later period) would be replaced unseen
        log.warning("%s: its split column puts %d films in val, which are pooled with its train films and split by "
                    "patient anew: to validate on them as given, train with --split-csv", shown(data), chosen)
    groups = picture_groups([r.path for r in pool])
    warn_conflicts(label_conflicts(pool, groups, layouts().get(found.layout)))
    return pool, [paths for _, paths in groups]


def _check_classes(data: Path | str, pool: Sequence[Record], found: Discovery) -> None:
    """Refuse a pool that lacks a class: a one-class manifest would pass for a split, and be handed to training
    and other tools. The folders left out are named, as a re-packed dataset (``train/{NORMAL,BACTERIA,VIRUS}``)
    loses a class to them."""
    labels = Counter(r.label for r in pool)
    if missing := [label for label in LABELS if not labels[label]]:
        folders = [shown(e["path"]) for e in found.skipped
                   if e["reason"] in ("not a class folder", "not a split folder")]
        left = f"; left out as not class or split folders: {', '.join(folders)}" if folders else ""
        raise ValueError(f"{shown(data)}: no {missing[0]} film outside test/ to split (its {len(pool)} films are "
                         f"all {next(iter(labels))}); a split needs films of {' and '.join(LABELS)}{left}")


def warn_conflicts(conflicts: Sequence[dict]) -> None:
    """Say when films' labels contradict their names or each other (:func:`label_conflicts`): they are split (or
    scored) as labelled, as the public dataset must stay usable, but a contradictory target harms training and
    validation, and a figure on it scores the model against a label that may be wrong."""
    if conflicts:
        first = conflicts[0]
        log.warning("%d label conflict(s): a file name or a duplicate (exact or near) contradicts a label, e.g. %s "
                    "(%s); kept as labelled: check them (`pneumoscan audit DATA` lists them all)",
                    len(conflicts), " | ".join(map(shown, first["paths"])), first["reason"])


def split_dataset(data: Path | str, val_fraction: float = VAL_FRACTION, seed: int = 0,
                  test_fraction: float = 0.0) -> list[Record]:
    """Everything in DATA but its test split, divided by patient into train and val, and test for ``test_fraction``
    above 0 (:func:`patient_split`; copies of a film together), which DATA with a test split of its own refuses
    (:func:`split_pool`)."""
    pool, duplicates = split_pool(data, new_test=test_fraction > 0)
    return patient_split(pool, val_fraction, seed, duplicates, test_fraction)


def sampled_split(data: Path | str, val_fraction: float = VAL_FRACTION, seed: int = 0,
                  patients: int | None = None) -> tuple[list[Record], int | None]:
    """:func:`split_dataset` of :func:`sampled_pool`'s films (the sample is taken before the split, so validation
    stays patient-disjoint), and the number of patients the sample was drawn from (None without one)."""
    pool, duplicates, of = sampled_pool(data, patients, seed)
    return patient_split(pool, val_fraction, seed, duplicates), of


def sampled_pool(data: Path | str, patients: int | None = None,
                 seed: int = 0) -> tuple[list[Record], list[list[str]], int | None]:
    """:func:`split_pool` of a sample of ``patients`` of DATA's patients (:func:`patient_sample`), or of all of them
    for None, with how many patients the sample was drawn from (None without one), which a bundle's card and cv.json
    state beside it."""
    pool, duplicates = split_pool(data)
    if patients is None:
        return pool, duplicates, None
    units = _unit_lists(pool, duplicates)
    return _drawn(pool, units, patients, seed), duplicates, len(units)


def _tally(records: Sequence[Record], total: int) -> dict:
    n = len(records)
    labels = Counter(r.label for r in records)
    subtypes = Counter(r.subtype or "unknown" for r in records)
    return {
        "n": n,
        "fraction": n / total if total else 0.0,
        "labels": {label: labels[label] for label in LABELS},
        "subtypes": dict(sorted(subtypes.items())),
        "label_share": {label: labels[label] / n if n else 0.0 for label in LABELS},
        "subtype_share": {s: c / n for s, c in sorted(subtypes.items())},
    }


def split_summary(records: Sequence[Record]) -> dict:
    """Counts and shares per part (and for all records), plus the patients found in more than one part."""
    parts: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        parts[rec.split].append(rec)
    return {
        "all": _tally(records, len(records)),
        "parts": {name: _tally(part, len(records)) for name, part in sorted(parts.items())},
        "shared_patients": sorted({p for ids in shared_patients(records).values() for p in ids}),
    }
