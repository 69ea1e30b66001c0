"""Whether films are new to a bundle before they choose or measure anything: refused when the bundle (an ensemble's
members, a distilled model's teachers, the bundle it started from, the bundle a ``threshold`` copy came from) trained
on them, warned of when they chose its temperature or threshold, or are copies or other files of its training
patients. The films come from each run's split.csv (RUN/bundle beside RUN/split.csv) and the bundle's lists of
calibration films."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path


from pneumoscan.core.names import shown
from pneumoscan.data.audit import picture_groups
from pneumoscan.data.layouts import Record, discover, own_patient, patient_key, write_manifest
from pneumoscan.models.card import CARD, ENSEMBLE, load_card, member_sources, replaced_members
from pneumoscan.models.run_folder import RunFolder

log = logging.getLogger(__name__)


def _weight_sources(bundle: Path, seen: frozenset[str] = frozenset()) -> list[tuple[Path, str]]:
    """The bundles whose training made BUNDLE's weights, each with how BUNDLE came by them: itself (""), an
    ensemble's members as recorded when it was built ("member"), the bundle that ``threshold`` copied it from
    ("copy": the same weights, but no run's split.csv beside the copy), a distilled model's teachers ("teacher":
    their training films' labels reached it through their probabilities), and the bundle it started from ("init":
    its weights had learnt those films). A source that is gone, or was trained again since an ensemble recorded
    it, is kept as a path, which :func:`check_held_out` then warns about."""
    seen = seen | {os.path.realpath(bundle)}

    def sources(path: Path, how: str) -> list[tuple[Path, str]]:
        if os.path.realpath(path) in seen:  # a run fine-tuned from its own earlier bundle (--init RUN/bundle)
            return []
        if not (path / CARD).exists():
            return [(path, how)]
        return [(p, "replaced" if inner == "replaced" else how) for p, inner in _weight_sources(path, seen)]

    card = load_card(bundle)
    if card.model == ENSEMBLE:
        replaced = set(replaced_members(card))
        return [s for member in member_sources(card)
                for s in ([(member, "replaced")] if member in replaced else sources(member, "member"))]
    origins = [Path(r["source_bundle"]) for r in card.threshold_records if r.get("source_bundle")]
    if origin := next((o for o in origins if (o / CARD).exists()), None):
        return sources(origin, "copy")
    config = card.train_config or {}
    teachers = [Path(t) for t in config.get("teacher") or []]
    init = [Path(config["init"])] if config.get("init") else []
    return [(bundle, ""), *(s for teacher in teachers for s in sources(teacher, "teacher")),
            *(s for start in init for s in sources(start, "init"))]


CALIBRATION_FILMS = "calibration_films.csv"  # in a bundle whose temperature or threshold was chosen on other films


INT8_CALIBRATION_FILMS = "int8_calibration_films.csv"  # the films `export --int8 --data` chose the INT8 thresholds on


def record_calibration_films(bundle: Path, records: Sequence[Record], name: str = CALIBRATION_FILMS) -> None:
    """Add to BUNDLE/calibration_films.csv the films ``threshold`` or ``ensemble --data`` chose its threshold (and
    temperature) on, which are not its run's validation films, so that :func:`check_held_out` knows them as it
    knows those (absolute paths: the bundle may move); ``name`` INT8_CALIBRATION_FILMS for those that chose the INT8
    thresholds. Films already listed stay: a ``threshold`` copy keeps its temperature, and so the films that chose
    it."""
    listed = bundle / name
    films = {r.path: r for r in (discover(listed).records if listed.exists() else [])}
    films |= {os.path.realpath(r.path): dataclasses.replace(r, path=os.path.realpath(r.path)) for r in records}
    write_manifest(list(films.values()), listed)


def check_held_out(bundles: Sequence[Path | str], records: Sequence[Record], purpose: str, hint: str = "",
                   validation_warning: bool = False, refuse_validation: bool = False, int8: bool = False,
                   refuse_unchecked: bool = False) -> list[str]:
    """Refuse films a bundle (an ensemble: any member) trained on for PURPOSE, such as choosing a threshold: its
    scores on them are too good, so a threshold for a sensitivity target comes out too high. The training films are
    those of the run's split.csv (RUN/bundle's parent); a bundle without one is trusted, with a warning. With
    ``validation_warning``, films on which a bundle's own temperature and threshold were chosen are warned about;
    with ``refuse_validation``, refused too; with ``int8`` (the INT8 model's scores), those that chose its INT8
    thresholds as well. A run whose split.csv lists no film where it says (moved) is a warning, refused with
    ``refuse_unchecked``. Returns the warnings (each also logged): why figures on these films would be optimistic,
    for the reports made of them to say so."""
    real = {r.path: os.path.realpath(r.path) for r in records}
    given = set(real.values())
    all_trained: set[str] = set()
    all_validation: set[str] = set()
    caveats: list[str] = []

    def warn(text: str) -> None:
        log.warning("%s", text)
        caveats.append(text)

    listed = [(CALIBRATION_FILMS, "threshold"), *([(INT8_CALIBRATION_FILMS, "INT8 threshold")] if int8 else [])]
    for bundle in map(Path, bundles):
        for name, what in listed:
            if (chosen := _check_calibration_films(bundle, given, purpose, hint, refuse_validation, name)) and \
                    validation_warning:
                warn(f"{chosen} film(s) given to {purpose} chose {bundle}'s {what} ({name}): the figures on them "
                     "are optimistic")
        # (source, how BUNDLE has its weights, its run's films by real path, their training films among them)
        runs = []
        for path, how in _weight_sources(bundle):
            run, unresolved = _run_films(path, purpose, how)
            if unresolved and refuse_unchecked:
                raise ValueError(f"{unresolved}; run it where the run's split.csv finds its films")
            if unresolved:  # a run moved away from its split's paths: said with the figures, not only logged
                warn(unresolved)
            if run:
                runs.append((path, how, run, _side(run, "train")))
        trained = [(path, how, films) for path, how, _, train in runs if (films := sorted(train & given))]
        if trained:
            path, how, films = trained[0]
            total = len(set().union(*(set(f) for _, _, f in trained)))
            among = (f"; {total} counting the training splits of all {len(trained)} bundles its weights come from"
                     if len(trained) > 1 else "")
            raise ValueError(f"{len(films)} of the films given to {purpose} were in {path}'s training split "
                             f"(e.g. {films[0]}{among}): {purpose} on films {path} did not train on{hint}"
                             f"{_SOURCE_NOTES[how].format(bundle=bundle)}")
        for path, _, run, train in runs:
            validation = sorted(_side(run, "val") & given)
            if validation and refuse_validation:
                raise ValueError(f"{len(validation)} of the films given to {purpose} are {path}'s validation films "
                                 f"(e.g. {validation[0]}), on which its own temperature and threshold were chosen: "
                                 f"{purpose} on films new to it{hint}")
            if validation and validation_warning:
                warn(f"{len(validation)} film(s) given to {purpose} are {path}'s validation films, on which its own "
                     "temperature and threshold were chosen: the figures on them are optimistic")
            all_trained |= train
            all_validation |= _side(run, "val")
            # other films of the run's patients (ids compared as one patient's spellings: a manifest typed by
            # another hand writes Person1000 for the training films' person1000)
            patients = {split: {patient_key(r.patient) for r in run.values() if r.split == split and not own_patient(r)}
                        for split in ("train", "val")}
            of_patients = [("training split", "", patients["train"])]
            if validation_warning:
                of_patients.append(("validation split", ", whose films chose its temperature and threshold",
                              patients["val"] - patients["train"]))
            for side, why, known in of_patients:
                if kin := [r.patient for r in records if patient_key(r.patient) in known and not own_patient(r)
                           and real[r.path] not in run]:
                    warn(f"{len(kin)} film(s) given to {purpose} are other files of patients in {path}'s {side}{why} "
                         f"(by their patient ids: file names, a manifest's patient column or DICOM headers; e.g. "
                         f"{shown(kin[0])}): if they are the same patients, the figures are optimistic")
    # copies under other names, of training films and (with validation_warning) of the films that chose its numbers
    sides = {"training": ("", all_trained)}
    if validation_warning:
        sides["validation"] = (", on which its own temperature and threshold were chosen", all_validation - all_trained)
    for (side, (why, _)), copies in zip(sides.items(), _copies(given, [films for _, films in sides.values()])):
        if copies:
            warn(f"{len(copies)} film(s) given to {purpose} are copies of {side} films under other names, byte for "
                 f"byte or the picture re-encoded or resized (e.g. {shown(copies[0][0])} of {shown(copies[0][1])})"
                 f"{why}: the figures on them are optimistic")
    return caveats


def check_sources_known(bundles: Sequence[Path | str], purpose: str) -> None:
    """Refuse bundles whose weights come (:func:`_weight_sources`) from a run whose training films are unknown
    here: no run's split.csv beside it (a bundle copied out of its run folder, or made on another machine), or an
    ensemble member trained again since. For distillation teachers: their probabilities carry what they learnt of
    their training films into every film the student learns from, so a teacher that may have trained on the
    validation films flatters the student's threshold and figures, where :func:`check_held_out` only warns."""
    for bundle in map(Path, bundles):
        for path, how in _weight_sources(bundle):
            split = RunFolder.of(path).split
            if how == "replaced" or not split.exists():
                why = ("it was trained again since the ensemble recorded it" if how == "replaced" else
                       f"no {split.name} of its run beside it: copied out of its run folder, or made elsewhere?")
                raise ValueError(f"{bundle}: its weights come from {path} ({why}), so it cannot be checked that it "
                                 f"never trained on the films given to {purpose}; give it in its run folder "
                                 f"(RUN/bundle beside RUN/{split.name})")


def _copies(given: set[str], sides: Sequence[set[str]]) -> list[list[tuple[str, str]]]:
    """For each side's films (training, validation), (given film, the film of that side it is a copy of) for each
    given film that is one picture with one of them (:func:`~pneumoscan.data.audit.picture_groups`): a test film
    copied into train/ under another name, or saved again as PNG, escapes every check by path. Every film is read
    once, whatever the number of sides. A warning, not a refusal: a public dataset may
    hold the same film twice across its own splits, and its test figures must still be measurable."""
    groups = [paths for _, paths in picture_groups(sorted(given.union(*sides)))] if any(sides) else []
    found: list[list[tuple[str, str]]] = []
    for side in sides:
        found.append([])
        for group in groups:
            if source := next((f for f in group if f in side), None):
                found[-1] += [(f, source) for f in group if f in given and f not in side]
    return found


# Why a source's training films are BUNDLE's own, by how BUNDLE came by its weights (:func:`_weight_sources`).
_SOURCE_NOTES = {
    "": "",
    "member": (" (an ensemble of cv runs has no such film among its runs' films: `ensemble --cv` and `export --int8 "
               "--cv` choose its thresholds on out-of-fold scores)"),
    "copy": " ({bundle} is a copy of it with a new threshold, so its training films are {bundle}'s own)",
    "teacher": " ({bundle} was distilled from it, so its training films count as {bundle}'s own)",
    "init": " ({bundle} started from its weights, so its training films count as {bundle}'s own)",
}


def _run_films(path: Path, purpose: str, how: str) -> tuple[dict[str, Record], str | None]:
    """The films of the split.csv beside a bundle (its run's films and their sides) by real path, or none and why
    the films given cannot be checked when none is where the file says (a run folder copied or moved away from
    relative paths: the films given may be those very films, so the reason goes with the figures, and their
    patients are not matched, which would call them other files of the same patients). None, with a logged
    warning only, when there is no such file to check against: none beside it (a bundle shipped alone), or another
    model's (an ensemble member trained again)."""
    split = RunFolder.of(path).split
    cannot = f"so it cannot be checked that the films given to {purpose} are new to it"
    if how == "replaced":
        log.warning("%s holds other weights than the ensemble recorded (trained again since?), %s", path, cannot)
        return {}, None
    if not split.exists():
        log.warning("%s: no %s beside it, %s", path, split, cannot)
        return {}, None
    films = {os.path.realpath(r.path): r for r in discover(split).records}
    if films and not any(os.path.exists(f) for f in films):
        return {}, (f"{path}: none of the films {split} lists is where it says (a run folder copied or moved?), "
                    f"{cannot}: they may be its training films")
    return films, None


def _side(run: dict[str, Record], side: str) -> set[str]:
    """The real paths of a run's films on one side of its split."""
    return {path for path, r in run.items() if r.split == side}


def _check_calibration_films(bundle: Path, given: set[str], purpose: str, hint: str, refuse: bool,
                             name: str = CALIBRATION_FILMS) -> int:
    """How many films given chose BUNDLE's own threshold (calibration_films.csv, or ``name``), judged as its
    validation films are: refused with ``refuse``."""
    listed = bundle / name
    if not listed.exists():
        return 0
    chosen = sorted({os.path.realpath(r.path) for r in discover(listed).records} & given)
    if chosen and refuse:
        raise ValueError(f"{len(chosen)} of the films given to {purpose} chose {bundle}'s threshold (e.g. "
                         f"{chosen[0]}; {name}): {purpose} on films new to it{hint}")
    return len(chosen)


def refuse_test_films(records: Sequence[Record], data: Path | str, what: str) -> None:
    """Refuse test-split films for choosing a bundle's ``what`` (its threshold, its temperature): the test split
    measures a bundle, and figures on films that chose its numbers are optimistic."""
    if any(r.split == "test" for r in records):
        raise ValueError(f"{data}: the test split measures a bundle and never chooses its {what}; choose it on "
                         "films the bundle never saw (a folder or manifest of your own labelled films; "
                         "RUN/split.csv --split val, the run's validation split, is accepted with a warning)")
