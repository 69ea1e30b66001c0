"""Whether films are new to a bundle before they choose or measure anything: refused when the bundle (an ensemble's
members, a distilled model's teachers, the bundle it started from, the bundle a ``threshold`` copy came from) trained
on them, warned of when they chose its temperature or threshold, or are copies or other files of its training
patients. The films come from each run's split.csv (RUN/bundle beside RUN/split.csv) and the bundle's lists of
calibration films."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from pneumoscan.core.digests import file_sha256
from pneumoscan.core.names import shown
from pneumoscan.data.copies import picture_groups
from pneumoscan.data.layouts import Record, discover, listed_paths, own_patient, patient_key, write_manifest
from pneumoscan.data.walk import file_identity
from pneumoscan.models.card import (CARD, ENSEMBLE, BundleCard, card_task, load_card, member_label, member_sources,
                                   WEIGHTS, out_of_fold_ensemble, refused_as, replaced_members, retrained_sources,
                                   run_split, split_beside, teacher_label)
from pneumoscan.models.run_folder import METRICS, PREDICTIONS, PREDICTIONS_CHECKSUM, TEST_SPLIT, RunFolder

log = logging.getLogger(__name__)


class _Source(NamedTuple):
    """A bundle whose training made a bundle's weights (:func:`_weight_sources`): its folder, how the bundle came by
    its weights, and its card as read there (None: no card read, for a source gone or trained again since), which
    the check reads no second time."""

    path: Path
    how: str
    card: BundleCard | None


def _weight_sources(bundle: Path, seen: frozenset[str] = frozenset(), card: BundleCard | None = None,
                    ) -> list[_Source]:
    """The bundles whose training made BUNDLE's weights, each with how BUNDLE came by them: itself (""), an
    ensemble's members as recorded when it was built ("member"), the bundle that ``threshold`` copied it from
    ("copy": the same weights, but no run's split.csv beside the copy), a distilled model's teachers ("teacher":
    their training films' labels reached it through their probabilities), and the bundle it started from ("init":
    its weights had learnt those films). A source that is gone, or was trained again since an ensemble recorded
    it, is kept as a path, which :func:`check_held_out` then warns about. A source whose own card is damaged is
    refused naming it (``label``: a member or a teacher by its place and folder, the bundle started or copied from),
    as a file of that bundle, not of the one given, which is sound. Each source comes with its card as read here
    (:class:`_Source`), so that the check reads no card twice; ``card``: BUNDLE's own, as its caller read it."""
    seen = seen | {os.path.realpath(bundle)}

    def sources(path: Path, how: str, label: str) -> list[_Source]:
        if os.path.realpath(path) in seen:  # a run fine-tuned from its own earlier bundle (--init RUN/bundle)
            return []
        if not (path / CARD).exists():
            return [_Source(path, how, None)]
        with refused_as(label):
            inner = _weight_sources(path, seen)
        return [s if s.how == "replaced" else s._replace(how=how) for s in inner]

    card = card or load_card(bundle)
    if card.model == ENSEMBLE:
        replaced, members = set(replaced_members(card)), member_sources(card)
        labels = [member_label(i, len(members), member) for i, member in enumerate(members)]
        return [s for member, label in zip(members, labels)
                for s in ([_Source(member, "replaced", None)] if member in replaced
                          else sources(member, "member", label))]
    origins = [Path(r["source_bundle"]) for r in card.threshold_records if r.get("source_bundle")]
    if origin := next((o for o in origins if (o / CARD).exists()), None):
        if load_card(origin).files.get(WEIGHTS) != card.files.get(WEIGHTS):  # trained again there since the copy
            return [_Source(origin, "replaced", None)]
        return sources(origin, "copy", f"the bundle {bundle} was copied from ({origin})")
    config = card.train_config or {}
    teachers = [Path(t) for t in config.get("teacher") or []]
    init = [Path(config["init"])] if config.get("init") else []
    retrained = set(retrained_sources(config))

    def learnt_from(path: Path, how: str, label: str) -> list[_Source]:
        if path in retrained and os.path.realpath(path) not in seen:
            return [_Source(path, "replaced", None)]
        return sources(path, how, label)

    taught = (s for i, teacher in enumerate(teachers)
              for s in learnt_from(teacher, "teacher", teacher_label(i, len(teachers), teacher)))
    started = (s for start in init for s in learnt_from(start, "init", f"the bundle {bundle} started from ({start})"))
    return [_Source(bundle, "", card), *taught, *started]


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


@dataclasses.dataclass(frozen=True)
class HeldOutPolicy:
    """What :func:`check_held_out` does beyond refusing films a bundle trained on, by what the films are for. Films
    that chose the bundle's own temperature and threshold (its run's validation films, its calibration lists)
    flatter it less than its training films do: warned of with ``validation_warning`` (measuring it, choosing a new
    threshold), refused with ``refuse_validation`` (a card's record must be of other data). ``int8``: the scores are
    the INT8 model's, whose own thresholds were chosen on the films of its INT8 list. ``refuse_unchecked``: a run
    whose split.csv lists no film where it says (moved) is refused, not only warned of. ``refuse_copies``: copies of
    training films under other names are refused as the training films are, not only warned of (a threshold chosen
    on them is chosen on scores too good, and written into the bundle; figures measured on them are only said to be
    optimistic, since a public dataset may hold one film in two of its splits)."""

    validation_warning: bool = False
    refuse_validation: bool = False
    int8: bool = False
    refuse_unchecked: bool = False
    refuse_copies: bool = False

    def calibration_lists(self) -> list[tuple[str, str]]:
        """A bundle's lists of films that chose its numbers (file name, what they chose) that apply to its scores."""
        return [(CALIBRATION_FILMS, "threshold"), *([(INT8_CALIBRATION_FILMS, "INT8 threshold")] if self.int8 else [])]


@dataclasses.dataclass(frozen=True)
class _Given:
    """The films given to one :func:`check_held_out` call, what for, and the warnings said of them so far (each
    also logged), which the caller's reports repeat."""

    records: Sequence[Record]
    purpose: str
    hint: str
    policy: HeldOutPolicy
    real: dict[str, str]  # each film's real path, by its path: a film reached through a link is the same film
    paths: set[str]  # their real paths
    caveats: list[str] = dataclasses.field(default_factory=list)
    unknown: dict[str, str] = dataclasses.field(default_factory=dict)  # HeldOutFindings.unknown_sources
    named: set[str] = dataclasses.field(default_factory=set)  # the real paths of the films the warnings are of

    def warn(self, text: str, films: Iterable[str] = ()) -> None:
        """Say TEXT, of the FILMS given (real paths) it finds among a model's own data, if any."""
        log.warning("%s", text)
        self.caveats.append(text)
        self.named.update(films)


@dataclasses.dataclass(frozen=True)
class HeldOutFindings:
    """What :func:`check_held_out` found of the films given: its warnings (``caveats``: why figures on them would
    be optimistic, for the reports made of them to say so), by the real path of each bundle given whose weights
    come from a run whose training films are unknown here, why (``unknown_sources``, worded as
    :func:`pneumoscan.training.distill.check_teachers` refuses a teacher): a card's record says whether its films
    could be checked (``model_card.films_record``) from what this one check saw; how many of the films given
    are in the validation split of a bundle's own run (``own_validation``, from the split.csv the check read: an
    ensemble's card names films that chose its members' own temperatures and thresholds so); and the films given
    that the warnings find among a model's own data (``films``: as given, in their order), which a flow of films
    counts among those scored."""

    caveats: list[str]
    unknown_sources: dict[str, str]
    own_validation: int
    films: list[str] = dataclasses.field(default_factory=list)

    def unknown_source(self, bundle: Path | str) -> str | None:
        """Why BUNDLE's training films could not be checked here; None when every source of its weights was."""
        return self.unknown_sources.get(os.path.realpath(bundle))


class _Run(NamedTuple):
    """A source of a bundle's weights (:func:`_weight_sources`) with its run's films by real path, as the split
    they were read from (``split``) lists them."""

    path: Path
    how: str
    split: Path
    films: dict[str, Record]
    train: set[str]
    val: set[str]  # the validation films its task reads: those that chose its temperature and threshold
    unlike: bool = False  # its films are not the ones its card records (SplitBeside.unlike): read as its run's


def check_held_out(bundles: Sequence[Path | str], records: Sequence[Record], purpose: str, hint: str = "",
                   policy: HeldOutPolicy = HeldOutPolicy(), names: Sequence[str] = (),
                   cards: Sequence[BundleCard] = (), run_split: Path | str | None = None,
                   run_records: Sequence[Record] | None = None) -> HeldOutFindings:
    """Refuse films a bundle (an ensemble: any member) trained on for PURPOSE, such as choosing a threshold: its
    scores on them are too good, so a threshold for a sensitivity target comes out too high. The training films are
    those of the run's split.csv (RUN/bundle's parent); a bundle without one is trusted, with a warning, as is one
    beside a split.csv other than the one its card recorded (:func:`~pneumoscan.models.card.split_beside`, said
    with the reason naming both files). A card older than that record has the split beside it proved where its
    films' image cache is at hand, and is otherwise taken as its run's with a caveat that says so. What else is
    warned of or refused is the ``policy``'s (:class:`HeldOutPolicy`): films that chose a bundle's own temperature and
    threshold (its INT8 thresholds too for the INT8 model's scores), a run whose split.csv lists no film where it says
    (moved). Returns the warnings (each also logged) and the bundles whose training films are unknown here
    (:class:`HeldOutFindings`). ``names``: how a refusal of a card of the bundles their weights come from names each
    bundle given (an ensemble's members, a student's teachers: by place and folder), where that is not its path.
    ``cards``: the cards of the first bundles given as the caller loaded and checked them, which the check reads
    again neither from disk nor from another bundle put in the folder since. ``run_split``: the split of the first
    bundle's own run where none is beside it but the caller proved a manifest to be it (by the card's data checksum:
    ``export --int8`` of a bundle copied out of its run, given its run's split.csv), checked against as one beside
    it would be, or the one beside it where the caller read it as DATA (``export --int8`` of a bundle in its run);
    ``run_records``: its records as the caller listed them (``evaluate``'s
    :attr:`~pneumoscan.data.labelled.LabelledFilms.every`), which are not listed again."""
    real = {r.path: os.path.realpath(r.path) for r in records}
    given = _Given(records, purpose, hint, policy, real, set(real.values()))
    trained: dict[str, tuple[Path, _Run]] = {}  # each training film's real path -> a bundle given and its run
    validation: set[str] = set()
    own_validation: set[str] = set()  # the validation films of the runs of the bundles given themselves
    for i, bundle in enumerate(map(Path, bundles)):
        calibration = _check_calibration_films(given, bundle)
        validation |= set(calibration)
        if given.policy.validation_warning:
            _warn_kin(given, calibration, set(calibration), f"{bundle}'s {CALIBRATION_FILMS}",
                      ", whose films chose its threshold")
        with refused_as(names[i]) if names else contextlib.nullcontext():
            runs = _weight_runs(given, bundle, cards[i] if i < len(cards) else None,
                                _Proven(Path(run_split), run_records) if run_split is not None and i == 0 else None)
        _refuse_trained(given, bundle, runs)
        for run in runs:
            _check_validation(given, run)
            _warn_same_patients(given, run)
            trained |= {path: (bundle, run) for path in run.train if path not in trained}
            validation |= run.val
            if run.how == "":
                own_validation |= run.val
    _warn_copies(given, trained, validation - trained.keys())
    return HeldOutFindings(given.caveats, given.unknown, sum(real[r.path] in own_validation for r in records),
                           [r.path for r in records if real[r.path] in given.named])


def trained_among(bundles: Sequence[Path | str], paths: Sequence[str], purpose: str) -> list[str]:
    """Warnings, each also logged, of the films of PATHS that a bundle's weights trained on (its run's training
    split, and those of the runs its weights come from: :func:`_weight_sources`), for a PURPOSE that reads them all
    the same (predict: a known film's reading is legitimate, but its score shows what the model remembers of it, not
    how it reads films it never saw). A film is one of the split's as a file (:func:`file_identity`: by a link of
    any name, symbolic or hard, either way) or as a byte-for-byte copy of one; cheap for
    films new to the bundle: a run's split.csv is read as a manifest only when a film given is one of the files it
    lists (:func:`_listed_among`). Copies re-encoded or resized and other films of the patients, which need every
    film read or labelled, are :func:`check_held_out`'s. A bundle without its run's split.csv beside it passes
    without a word (bundles are shipped alone), and so, with a logged warning, does one beside another run's
    split.csv (:func:`~pneumoscan.models.card.run_split`), whose films are not its own."""
    given = _stats(paths)
    said = []
    for bundle in map(Path, bundles):
        for path, how, card in _weight_sources(bundle):
            if how == "replaced" or (split := run_split(path, card)) is None or not (
                    listed := _listed_among(split, given)):
                continue
            films = {os.path.realpath(r.path): r for r in discover(split).records}
            train = _read_side(path, films, card, "train")
            if trained := [film for film, (found, _) in listed.items() if os.path.realpath(found) in train]:
                copies = sum(listed[film][1] for film in trained)
                copied = f"; {copies} of them byte-for-byte copies of its films under other names" if copies else ""
                said.append(f"{len(trained)} of the {len(paths)} films given to {purpose} are in {path}'s training "
                            f"split (e.g. {shown(trained[0])}{copied}){_SOURCE_NOTES[how].format(bundle=bundle)}: it "
                            "learnt them with their labels, so their scores show what it remembers, no measure of how "
                            "it reads films it never saw (`pneumoscan evaluate` on films new to it measures that)")
                log.warning("%s", said[-1])
    return said


def _stats(paths: Iterable[str | Path]) -> dict[str, os.stat_result]:
    """Each path's stat through links, by the path as given; a path that cannot be read is left out."""
    found = {}
    for path in paths:
        with contextlib.suppress(OSError):
            found[str(path)] = os.stat(path)
    return found


def _listed_among(split: Path, given: dict[str, os.stat_result]) -> dict[str, tuple[str, bool]]:
    """The films ``given`` (each path's stat) that are files split.csv lists, each with the path it lists and
    whether the film is a copy: the same file whatever the names (:func:`~pneumoscan.data.walk.file_identity`), or a
    byte-for-byte copy of one (of its size, then of its SHA-256: only the listed files of a size some film given
    has are read). The split is read as a list of paths and each listed file stat'ed, not read as a manifest: 40 ms
    for a split of 5,232 films, where reading it as a manifest takes 0.4 s."""
    listed = _stats(listed_paths(split))
    files = {file_identity(path, st): path for path, st in listed.items()}
    sizes = {st.st_size for film, st in given.items() if file_identity(film, st) not in files}
    copied = {path: st for path, st in listed.items() if st.st_size in sizes}  # files a film given may copy
    digests = {digest: path for path in copied if (digest := _sha256(path))}
    copy_sizes = {st.st_size for st in copied.values()}
    found = {}
    for film, st in given.items():  # in the order given
        if (key := file_identity(film, st)) in files:
            found[film] = (files[key], False)
        elif st.st_size in copy_sizes and (digest := _sha256(film)) in digests:
            found[film] = (digests[digest], True)
    return found


def _sha256(path: str) -> str | None:
    """The file's SHA-256, None where it cannot be read (a film given or listed, removed since)."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def _check_calibration_films(given: _Given, bundle: Path) -> dict[str, Record]:
    """Films given that chose BUNDLE's own threshold (its lists of calibration films), judged as its validation
    films are (:func:`_check_validation`). Returns every film listed, by real path, so that copies of them under
    other names (:func:`_warn_copies`) and other films of their patients (:func:`_warn_kin`) are warned of as those
    of validation films are: a site's DICOM films that chose a threshold, given again as a PACS's JPEG export of
    them, moved to another folder, or the same children's later films, escape a check by path."""
    every: dict[str, Record] = {}
    for name, what in given.policy.calibration_lists():
        listed = bundle / name
        if not listed.exists():
            continue
        films = {os.path.realpath(r.path): r for r in discover(listed).records}
        every |= films
        chosen = sorted(set(films) & given.paths)
        if chosen and given.policy.refuse_validation:
            raise ValueError(f"{len(chosen)} of the films given to {given.purpose} chose {bundle}'s threshold (e.g. "
                             f"{chosen[0]}; {name}): {given.purpose} on films new to it{given.hint}")
        if chosen and given.policy.validation_warning:
            given.warn(f"{len(chosen)} film(s) given to {given.purpose} chose {bundle}'s {what} ({name}): the figures "
                       "on them are optimistic", chosen)
    return every


class _Proven(NamedTuple):
    """The split of a bundle's own run where none is beside it (:func:`check_held_out`'s ``run_split``), and its
    records where the caller listed them (``run_records``; None: listed here)."""

    split: Path
    records: Sequence[Record] | None


def _weight_runs(given: _Given, bundle: Path, card: BundleCard | None, proven: _Proven | None) -> list[_Run]:
    """The runs BUNDLE's weights come from whose films are known here; a run whose films cannot be found is said
    with the figures (not only logged), or refused with ``refuse_unchecked``; the first source with no films to
    check against is kept in ``given.unknown`` (:func:`_unknown_source`). ``card``: BUNDLE's, as its caller read it
    (None: read here); ``proven``: the split of BUNDLE's own run where none is beside it (:func:`check_held_out`'s
    ``run_split``)."""
    runs = []
    for path, how, card in _weight_sources(bundle, card=card):
        own = proven if how == "" else None
        split = own.split if own is not None else RunFolder.of(path).split
        beside = split_beside(path, card, prove=True) if own is None and how != "replaced" else None
        foreign, unlike = (beside.foreign, beside.unlike) if beside is not None else (None, None)
        if beside is not None and beside.unproved is not None:  # a card's record of these films must say so
            given.warn(beside.unproved)
        if unlike is not None:
            log.warning("%s: %s", path, unlike)
        if (why := _unknown_source(bundle, path, how, given.purpose, split, foreign, unlike)) is not None:
            given.unknown.setdefault(os.path.realpath(bundle), why)
        films, unresolved = _run_films(path, given.purpose, how, split, own.records if own is not None else None,
                                       foreign)
        if unresolved and given.policy.refuse_unchecked:
            raise ValueError(f"{unresolved}; run it where the run's split.csv finds its films")
        if unresolved:
            given.warn(unresolved)
        if films:
            runs.append(_Run(path, how, split, films,
                             *(_read_side(path, films, card, side) for side in ("train", "val")), unlike is not None))
    return runs


def _read_side(bundle: Path, films: dict[str, Record], card: BundleCard | None, side: str) -> set[str]:
    """The real paths of the films on one side of a run's split.csv that its bundle's task reads: an etiology run's
    split lists the normal films too, and it neither trained on them nor chose any of its numbers on them. All of
    the side's films when the bundle has no card (``card``: as :func:`_weight_sources` read it) to name its task."""
    on_side = {path: r for path, r in films.items() if r.split == side}
    if card is None:
        return set(on_side)
    task = card_task(card, bundle)
    return {path for path, r in on_side.items() if task.target(r) is not None}


def _refuse_trained(given: _Given, bundle: Path, runs: Sequence[_Run]) -> None:
    """Refuse films given that any of BUNDLE's weight sources trained on, naming the first such source and how
    BUNDLE came by its weights, and counting them over all sources."""
    trained = [(run, films) for run in runs if (films := sorted(run.train & given.paths))]
    if not trained:
        return
    (run, films), purpose = trained[0], given.purpose
    total = len(set().union(*(set(f) for _, f in trained)))
    among = (f"; {total} counting the training splits of all {len(trained)} bundles its weights come from"
             if len(trained) > 1 else "")
    unlike = (f"; {run.split} is taken as its run's split, though its films are not the ones its card records: "
              "changed since training, or another run's split" if run.unlike else "")
    raise ValueError(f"{len(films)} of the films given to {purpose} were in {run.path}'s training split "
                     f"(e.g. {films[0]}{among}{unlike}): {purpose} on films {run.path} did not train on{given.hint}"
                     f"{_SOURCE_NOTES[run.how].format(bundle=bundle)}")


def _check_validation(given: _Given, run: _Run) -> None:
    """Films given that are RUN's validation films, which chose its temperature and threshold: refused or warned of
    by the policy."""
    validation = sorted(run.val & given.paths)
    if validation and given.policy.refuse_validation:
        raise ValueError(f"{len(validation)} of the films given to {given.purpose} are {run.path}'s validation films "
                         f"(e.g. {validation[0]}), on which its own temperature and threshold were chosen: "
                         f"{given.purpose} on films new to it{given.hint}")
    if validation and given.policy.validation_warning:
        given.warn(f"{len(validation)} film(s) given to {given.purpose} are {run.path}'s validation films, on which "
                   "its own temperature and threshold were chosen: the figures on them are optimistic", validation)


def _warn_same_patients(given: _Given, run: _Run) -> None:
    """Warn of other files of the patients of RUN's training split (and, with ``validation_warning``, of its
    validation split) among the films given: other names escape the checks by path. Ids are compared as one
    patient's spellings: a manifest typed by another hand writes Person1000 for the training films' person1000."""
    _warn_kin(given, run.films, run.train, f"{run.path}'s training split", "")
    if given.policy.validation_warning:
        _warn_kin(given, run.films, run.val, f"{run.path}'s validation split",
                  ", whose films chose its temperature and threshold", exclude=run.train)


def _warn_kin(given: _Given, films: dict[str, Record], paths: set[str], side: str, why: str,
              exclude: frozenset[str] | set[str] = frozenset()) -> None:
    """Warn of films given, none of ``films`` (by real path), whose patient is that of one of ``paths`` (``side``
    names them) and of none of ``exclude`` (warned of already), by :func:`patient_key`."""
    def known(of: set[str]) -> set[str]:
        return {patient_key(films[p].patient) for p in of if not own_patient(films[p])}

    patients = known(paths) - known(exclude)
    if kin := [r for r in given.records if patient_key(r.patient) in patients and not own_patient(r)
               and given.real[r.path] not in films]:
        given.warn(f"{len(kin)} film(s) given to {given.purpose} are other files of patients in {side}{why} (by their "
                   "patient ids: file names, a manifest's patient column or DICOM headers; "
                   f"e.g. {shown(kin[0].patient)}): if they are the same patients, the figures are optimistic",
                   (given.real[r.path] for r in kin))


def _warn_copies(given: _Given, trained: dict[str, tuple[Path, _Run]], validation: set[str]) -> None:
    """Warn of copies under other names among the films given: of the runs' training films (``trained``: each by
    real path, with the bundle given and the run it is a training film of), and (with ``validation_warning``) of their
    other validation films (:func:`_copies`). Copies of training films are refused with ``refuse_copies``, and
    whatever the policy when they are more than half of the films given (:func:`_refuse_mostly_copies`)."""
    sides = {"training": ("", set(trained))}
    if given.policy.validation_warning:
        sides["validation"] = (", on which its own temperature and threshold were chosen", validation)
    for (side, (why, _)), copies in zip(sides.items(), _copies(given.paths, [films for _, films in sides.values()])):
        if copies and side == "training" and given.policy.refuse_copies:
            raise ValueError(f"{len(copies)} of the films given to {given.purpose} are copies of training films under "
                             f"other names, byte for byte or the picture re-encoded or resized (e.g. "
                             f"{shown(copies[0][0])} of {shown(copies[0][1])}): {given.purpose} on films it did not "
                             f"train on{given.hint}")
        if side == "training" and 2 * len(copies) > len(given.paths):
            _refuse_mostly_copies(given, copies, *trained[copies[0][1]])
        if copies:
            given.warn(f"{len(copies)} film(s) given to {given.purpose} are copies of {side} films under other names, "
                       f"byte for byte or the picture re-encoded or resized (e.g. {shown(copies[0][0])} of "
                       f"{shown(copies[0][1])}){why}: the figures on them are optimistic", (f for f, _ in copies))


def _refuse_mostly_copies(given: _Given, copies: Sequence[tuple[str, str]], bundle: Path, run: _Run) -> None:
    """Refuse films given more than half of which are copies of training films under other names (``copies``: each
    given film with the training film it copies, the first of ``run``'s, a source of BUNDLE's weights), as
    :func:`_refuse_trained` refuses the training films under their own paths: figures on them measure what the model
    remembers of its training films, not how it reads films it never saw. A few copies are only warned of, since a
    public dataset may hold one film in two of its splits (a few of its test films also in train); past half,
    copies are most of every figure, so the figures are no longer of new films with a few flattered, but of the
    training films with a few new ones."""
    purpose = given.purpose
    raise ValueError(f"{len(copies)} of the {len(given.paths)} films given to {purpose} are copies of films in "
                     f"{run.path}'s training split under other names, byte for byte or the picture re-encoded or "
                     f"resized (e.g. {shown(copies[0][0])} of {shown(copies[0][1])}; "
                     f"{run.split} lists its training films), more than half: the figures would "
                     f"measure what it remembers, not how it reads new films; {purpose} on films {run.path} did not "
                     f"train on{given.hint}{_SOURCE_NOTES[run.how].format(bundle=bundle)}")


def _unknown_source(bundle: Path, path: Path, how: str, purpose: str, split: Path,
                    foreign: str | None = None, unlike: str | None = None) -> str | None:
    """Why the training films of PATH, a source of BUNDLE's weights (:func:`_weight_sources`), are unknown here:
    no run's split.csv beside it (none, or another run's: ``foreign``,
    :func:`~pneumoscan.models.card.split_beside`'s reason), a split beside it whose films are not the ones its card
    records (``unlike``: films changed since training, or another run's split), or an ensemble member trained again
    since; None when its run's ``split`` is there (beside it, or proved to be its run's: :func:`check_held_out`'s
    ``run_split``)."""
    if how != "replaced" and split.exists() and foreign is None and unlike is None:
        return None
    why = (f"it was trained again since {bundle} learnt from it" if how == "replaced" else
           foreign if foreign is not None else unlike if unlike is not None else
           f"no {split.name} of its run beside it: copied out of its run folder, or made elsewhere?")
    what = (f"the films {split} lists are refused as its training films all the same" if unlike is not None else
            f"give it in its run folder (RUN/bundle beside RUN/{split.name})")
    return (f"{bundle}: its weights come from {path} ({why}), so it cannot be checked that it never trained on the "
            f"films given to {purpose}; {what}")


def _copies(given: set[str], sides: Sequence[set[str]]) -> list[list[tuple[str, str]]]:
    """For each side's films (training, validation), (given film, the film of that side it is a copy of) for each
    given film that is one picture with one of them (:func:`~pneumoscan.data.copies.picture_groups`): a test film
    copied into train/ under another name, or saved again as PNG, escapes every check by path. Every film is read
    once, whatever the number of sides."""
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


def _run_films(path: Path, purpose: str, how: str, split: Path, listed: Sequence[Record] | None = None,
               foreign: str | None = None) -> tuple[dict[str, Record], str | None]:
    """The films of its run's ``split`` (the split.csv beside a bundle, or one proved to be its run's: its run's films
    and their sides; ``listed``: its records where the caller listed them) by real path, or none and why
    the films given cannot be checked when none is where the file says (a run folder copied or moved away from
    relative paths: the films given may be those very films, so the reason goes with the figures, and their
    patients are not matched, which would call them other files of the same patients). None, with a logged
    warning only, when there is no such file to check against: none beside it (a bundle shipped alone), another
    run's beside it (``foreign``: why, :func:`~pneumoscan.models.card.split_beside`), or another model's (an
    ensemble member trained again)."""
    cannot = f"so it cannot be checked that the films given to {purpose} are new to it"
    if how == "replaced":
        log.warning("%s holds other weights than the bundle that learnt from it recorded (trained again since?), %s",
                    path, cannot)
        return {}, None
    if not split.exists():
        log.warning("%s: no %s beside it, %s", path, split, cannot)
        return {}, None
    if foreign is not None:
        log.warning("%s: %s, %s", path, foreign, cannot)
        return {}, None
    films = {os.path.realpath(r.path): r for r in (discover(split).records if listed is None else listed)}
    if films and not any(os.path.exists(f) for f in films):
        return {}, (f"{path}: none of the films {split} lists is where it says (a run folder copied or moved?), "
                    f"{cannot}: they may be its training films")
    return films, None


def refuse_test_films(records: Sequence[Record], data: Path | str, what: str, card: BundleCard | None = None) -> None:
    """Refuse test-split films for choosing a bundle's ``what`` (its threshold, its temperature): the test split
    measures a bundle, and figures on films that chose its numbers are optimistic. Test films are those
    :func:`film_splits` calls test, the split ``evaluate`` writes in predictions.csv, so that the rule is one: an
    evaluation of them is refused wherever its file goes, and so is an evaluation of that evaluation."""
    if not test_films(records, data):
        return
    if why := _evaluated_test(data):  # an older evaluation's file, which names no split: its metrics.json said so
        raise ValueError(f"{data}: {why}: the test split measures a bundle and never chooses its {what}; choose it "
                         "on validation films (RUN/split.csv --split val, or an evaluation of them) or labelled films "
                         "of your own the bundle never saw")
    # a cv ensemble's runs hold no film new to every member: its runs' validation splits are refused too
    runs = (": every film of its cv runs trained one member or another; or build it again with `ensemble --cv` "
            "and another policy" if card and out_of_fold_ensemble(card) else
            "; RUN/split.csv --split val, the run's validation split, is accepted with a warning")
    raise ValueError(f"{data}: the test split measures a bundle and never chooses its {what}; give "
                     f"films the bundle never saw (a folder or manifest of your own labelled films{runs})")


def test_films(records: Sequence[Record], data: Path | str) -> bool:
    """Whether DATA's films are test films (:func:`refuse_test_films`'s rule): ``evaluate`` writes each film's split
    in predictions.csv (:func:`film_splits`), and whether any is test in metrics.json."""
    return "test" in film_splits(records, data)


def film_splits(records: Sequence[Record], data: Path | str) -> list[str]:
    """Each film's split as DATA names it, for ``evaluate``'s predictions.csv (its ``split`` column, which a manifest
    reads): test for every film of a folder named test given itself, whose records name no split (``DATA/test`` of
    the Kaggle layout, or a link to it; a dataset root that happens to be named test has split folders, and its
    records their splits), and of an ``evaluate`` output's predictions.csv whose metrics.json says they are test
    films or does not say (:func:`_evaluated_test`: an older pneumoscan's file names no split), where no record
    names its own (an evaluation of val and test films together keeps each row's: its metrics.json's test_split
    says only that some are test); else the record's own (a dataset root's split folder, ``--split``, a manifest's
    split column), or none (""). Read back as a manifest, wherever the file is copied, whichever of its rows are
    kept and however often it is evaluated again, its test films are test films."""
    test = not any(r.split for r in records) and (_test_folder(data) or _evaluated_test(data) is not None)
    return ["test" if test else r.split for r in records]


EVALUATED = "threshold_table"  # a key every evaluate's metrics.json holds, before it recorded a checksum too


def _evaluated_test(data: Path | str) -> str | None:
    """Why DATA, an ``evaluate`` output's predictions.csv (its metrics.json beside it records the file's checksum, or,
    written by a pneumoscan before that, a threshold table: :data:`EVALUATED`), holds test films: that metrics.json
    says they are, or says nothing of it (unreadable, or written before it was recorded), a doubt read as test films.
    None for any other DATA (a manifest of the user's own that happens to be named predictions.csv too), and for an
    evaluation that says its films are no test films."""
    data = Path(data)
    metrics = data.parent / METRICS
    if data.name != PREDICTIONS or not data.is_file() or not metrics.is_file():
        return None
    try:
        record = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        return f"{metrics} beside it cannot be read ({e}), so it cannot be told whether these are test films"
    if not isinstance(record, dict) or not {PREDICTIONS_CHECKSUM, EVALUATED} & record.keys():
        return None
    test = record.get(TEST_SPLIT)
    if test is False:
        return None
    return f"{metrics} says " + ("an evaluation of test films" if test is True else
                                 f"it does not record whether they are test films ({TEST_SPLIT}: an older "
                                 "pneumoscan's evaluation?)")


def _test_folder(data: Path | str) -> bool:
    """Whether DATA is a folder named test in any case (a dataset's test split folder, as the class-folder layout
    names it), as given or where a link leads."""
    return os.path.isdir(data) and any(
        os.path.basename(path).casefold() == "test" for path in (os.path.abspath(data), os.path.realpath(data)))
