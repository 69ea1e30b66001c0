"""The `pneumoscan` command: a thin argparse layer over the library (one sub-command per step of the flow)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import errno
import functools
import gc
import importlib
import io
import logging
import math
import os
import shlex
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console

from pneumoscan import __version__
from pneumoscan.core.atomic import NotWritten, file_stamp, refuse_special, write_unchanged
from pneumoscan.core.audit import LISTEN_EVENTS
from pneumoscan.core.names import given_path, json_text, path_list, shown
from pneumoscan.core.options import (AUC_TESTS, BACKENDS, CALIBRATION_IMAGES, DECISION_RANGE, FILL_MODES,
                                     LISTEN_ASSOCIATION_MB, LISTEN_FREE_MB, LISTEN_RETRY_S, LISTEN_SEND_S,
                                     LISTEN_SPOOL_MB, LISTEN_STORE_S, MAX_UPLOAD_MB, OPTIMIZERS, PACS_FILM_S,
                                     PACS_READ_S, PREDICT_BATCH, RESIZE_POLICIES, SPLITS, TRACKERS, VAL_FRACTION,
                                     look_up_option)
from pneumoscan.data.tasks import list_tasks
from pneumoscan.models import PLUGINS_ENV, WeightsUnavailable, or_your_own

if TYPE_CHECKING:
    from pneumoscan.serving.guard import Access
    from pneumoscan.serving.limits import Limits
    from pneumoscan.models.card import BundleCard
    from pneumoscan.training.config import TrainConfig

# audit's tables alone; a result line a script may read is print()ed, never wrapped at the terminal's width.
console = Console(markup=False)  # user paths are printed through it: "[red]x" is a name, not markup
log = logging.getLogger("pneumoscan.cli")


def _print_json(data: dict) -> None:
    """JSON on stdout as every results file is written (:func:`json_text`: a name that is not UTF-8 as ``\\xNN``)."""
    print(json_text(data))


@dataclasses.dataclass(frozen=True)
class ResultsTarget:
    """Where a command's results go: the file ``out`` (None: stdout) in ``fmt``, which may replace only the file
    ``stamp`` found there when the run began (:func:`file_stamp`), so no other run's results."""

    out: str | None
    fmt: str
    stamp: str | None

    @classmethod
    def check(cls, out: str | None, formats: Sequence[str], inputs: Sequence[str] = ()) -> ResultsTarget:
        """``--out`` checked before any work, so that a results file that cannot be written fails now, not after
        every film was read (or, for ``pacs``, after its reports were stored in the PACS): its suffix one of
        ``formats`` (the first one is stdout's), its folder, or the nearest one above it that is there, a folder
        that takes a file (the folder is made by :meth:`write`: a run refused meanwhile, as ``predict`` of paths that
        name no film, leaves none behind); a folder given as ``--out``, one of the
        ``inputs`` (a list of films was replaced by its one error row) and a model's files
        (:func:`~pneumoscan.models.card.refuse_model_files`) refused, and so is a FIFO or device
        (:func:`~pneumoscan.core.atomic.refuse_special`)."""
        from pneumoscan.models.card import refuse_model_files

        if not out:
            return cls(None, formats[0], None)
        fmt = Path(out).suffix.lower().removeprefix(".")
        if fmt not in formats:
            raise ValueError(f"--out must end in {' or '.join('.' + f for f in formats)}: {out}")
        if any(Path(out).resolve() == Path(given).resolve() for given in inputs):
            raise ValueError(f"--out {out} is one of the inputs: the results go to a file of their own")
        refuse_model_files(out)
        refuse_special(out)
        if Path(out).is_dir():
            raise IsADirectoryError(f"--out {out} is a folder")
        folder = Path(out).parent
        while not os.path.lexists(folder) and folder != folder.parent:  # the one write() makes it in
            folder = folder.parent
        try:  # the results are written through a file beside them: a folder that takes none fails now
            if os.path.lexists(folder) and not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise ValueError(f"--out {out} cannot be written: {_reason(OSError(e.errno, e.strerror, folder))}") from e
        return cls(out, fmt, file_stamp(out))

    def write(self, text: str) -> None:
        """``text`` to the file, whole or not at all (a full disk leaves no results file cut mid-line) and over
        nothing but the file the run found (:func:`write_unchanged`); else to stdout. Results no file takes
        (:class:`NotWritten`) go to stdout too, as without ``--out``, and the error says why and that they are
        there: the run's work, hours of it, is not lost for its file."""
        if self.out:
            try:
                write_unchanged(self.out, text.encode(), self.stamp)
                return
            except NotWritten as e:
                try:
                    self._print(text)  # flushed: before the error line that says they are here
                except OSError as printing:  # a reader gone (`| head`), a full disk: said, never a quiet exit
                    raise OSError(f"{e}; nor can this run's results be written to stdout "
                                  f"({printing.strerror or printing}): they are lost") from e
                raise OSError(f"{e}: this run's results are on stdout") from e
        self._print(text)

    @staticmethod
    def _print(text: str) -> None:
        """``text`` on stdout as a line, through its bytes where it has them (:func:`_write_all`), flushed, so that a
        buffered stdout's failure is said here too, naming stdout."""
        line = text if text.endswith("\n") else text + "\n"
        out = getattr(sys.stdout, "buffer", None)
        if out is None:  # a stream of text alone (a caller's StringIO)
            sys.stdout.write(line)
            return
        with _stdout_named():
            _flush_all(sys.stdout)  # what the text layer holds goes first
            _write_all(out, line.encode(sys.stdout.encoding, sys.stdout.errors or "strict"))


def cmd_audit(args: argparse.Namespace) -> int:
    from pneumoscan.core.atomic import write_json
    from pneumoscan.data.audit import audit, audit_figure, format_audit
    from pneumoscan.data.layouts import discover

    given = [flag for flag, value in (("--augmented-out", args.augmented_out), ("--config", args.config)) if value]
    if given and not args.augmented:  # drawing nothing, the run ended 0 and the grid asked for was never made
        raise ValueError(f"{', '.join(given)} only with --augmented N (the number of training films to draw)")
    found = discover(args.data)
    report = audit(found)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json_out, report)
    if args.figure:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        audit_figure(report, found, Path(args.figure))
    if args.augmented:
        from pneumoscan.data.audit import augmented_grid
        from pneumoscan.training.config import load_config

        cfg = load_config(args.config)
        out = augmented_grid(found, args.augmented, Path(args.augmented_out or AUGMENTED_OUT), cfg.image_size,
                             cfg.augment, cfg.resize_policy, cfg.seed)
        log.info("wrote %d augmented training films (%s) to %s", args.augmented, args.config or "default recipe", out)
    if args.json:
        _print_json(report)
    else:
        console.print(format_audit(report))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from pneumoscan.data.layouts import write_manifest
    from pneumoscan.data.split import split_dataset, split_summary
    from pneumoscan.models.card import refuse_model_files

    refuse_model_files(args.out)  # a run's split.csv replaced: its training films were no longer refused
    records = split_dataset(args.data, args.val_fraction, args.seed, args.test_fraction)
    write_manifest(records, args.out)
    _print_json(split_summary(records))
    return 0


@contextlib.contextmanager
def _without_test_split(instead: str | Callable[[], str]) -> Iterator[None]:
    """``--split test`` of data without test films refused with what this command takes ``instead`` (a callable: made
    only then, where it reads the bundle): the library says which splits DATA holds, and what stands in for the test
    split differs from one command to another."""
    from pneumoscan.data.cache import EmptySplit

    try:
        yield
    except EmptySplit as e:
        if e.split != "test" or not e.held:
            raise
        raise ValueError(f"{e}; {instead if isinstance(instead, str) else instead()}") from e


def _on_run_validation(bundle: str | None, arguments: str) -> str | None:
    """The command to paste that runs on the validation films of the run ``bundle`` sits in: ``pneumoscan`` and
    ``arguments`` with ``{bundle}`` and ``{split}`` (the run's split.csv) filled in, quoted for a shell. None without
    a bundle, or for one with no split.csv of its run beside it (copied out of its run, or beside another run's:
    :func:`~pneumoscan.models.card.run_split`), which is told a placeholder instead. What `evaluate` and `cache` say
    of data without a test split (the quick start's step 3 on a copy without test/, whose val/ train pools with
    train/)."""
    from pneumoscan.models.card import load_card, run_split as run_split_of

    if not bundle or (run_split := run_split_of(bundle, load_card(bundle))) is None:
        return None
    return "pneumoscan " + arguments.format(bundle=shlex.quote(shown(bundle)), split=shlex.quote(shown(run_split)))


def cmd_cache(args: argparse.Namespace) -> int:
    from pneumoscan.data.cache import cache_dataset
    from pneumoscan.data.preprocess import PreprocessSpec

    if args.bundle:
        from pneumoscan.models.card import load_card

        if args.size or args.policy:
            raise ValueError("--bundle preprocesses as the bundle does (its size and policy): give --bundle, or "
                             "--size and --policy, not both")
        spec = load_card(args.bundle).spec
    else:
        spec = PreprocessSpec(args.size or 192, args.policy or "squash")

    def instead() -> str:
        command = _on_run_validation(args.bundle, "cache {split} --split val --bundle {bundle}")
        return "without a test split, " + (
            f"cache its run's validation films instead, for evaluate on them: {command} (or give no --split to cache "
            "them all)" if command else
            "cache the films the next command reads (RUN/split.csv --split val --bundle RUN/bundle for evaluate on a "
            "run's validation films), or give no --split to cache them all")

    with _without_test_split(instead):
        _, cache = cache_dataset(args.data, spec, args.split, progress=True)
    print(f"{len(cache.paths)} images cached as {cache.images.shape} ({cache.key}); {len(cache.errors)} unreadable")
    for err in cache.errors:
        log.warning("unreadable %s: %s", shown(err["path"]), err["reason"])
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pneumoscan.data.augment import Augment

    cfg = _recipe(args, lr=args.lr, split_csv=args.split_csv, validate_on_val_folder=args.val_folder,
                  init=args.init, optimizer=args.optimizer, teacher=args.teacher)
    cfg.check_distill_weight()  # --print-config too: it shows a run train would make
    augment = {k: v for k, v in (("zoom_range", args.zoom_range), ("vflip", args.vflip), ("fill_mode", args.fill_mode))
               if v is not None}
    if args.no_augment and augment:
        raise ValueError("--no-augment turns augmentation off: drop "
                         f"{', '.join('--' + k.replace('_', '-') for k in augment)}")
    cfg.augment = Augment.off() if args.no_augment else dataclasses.replace(cfg.augment, **augment)
    if args.print_config:
        sys.stdout.write(cfg.to_yaml())
        return 0
    if missing := [flag for flag, given in (("--data", args.data), ("--out", args.out)) if not given]:
        raise ValueError(f"the following arguments are required: {', '.join(missing)} (`pneumoscan train --help` "
                         "lists the options; --print-config needs neither)")
    _not_a_bundle(args.out)
    # torch and the training stack (about 3 s) only once the recipe is read and nothing refused: --print-config and
    # a mistaken setting or flag are answered without them
    from pneumoscan.training.distributed import is_main_process
    from pneumoscan.training.train import train

    bundle = train(args.data, cfg, args.out, resume=args.resume, log_to=args.log or (), tracking_uri=args.tracking_uri)
    if is_main_process():  # under torchrun one line, from the process that wrote the bundle
        print(_trained(bundle))
    return 0


def _not_a_bundle(out: str) -> None:
    """Refuse a bundle (RUN/bundle, RUN/best) given as the folder a run writes: `train --resume --out RUN/bundle`
    found no checkpoint there and trained a new run inside the bundle, beside its files."""
    from pneumoscan.models.card import CARD

    if (Path(out) / CARD).is_file():
        raise ValueError(f"--out {out} holds a bundle ({CARD}), not a run: give its run folder, "
                         f"{shown(Path(out).parent)}, or a new folder")


# the commands whose first argument is a bundle: the argument that follows it and its name in the usage (None:
# nothing follows)
BUNDLE_FIRST = {"evaluate": ("data", "DATA"), "threshold": ("data", "DATA"), "predict": ("paths", "FILMS"),
                "serve": None, "pacs": None, "listen": None,
                "export": None}


def _bundle_first(args: argparse.Namespace, extra: Sequence[str] = ()) -> None:
    """Refuse a command's bundle argument that is no bundle with the order, where the mistake is the order: a
    dataset given as the bundle, or a bundle (or its run) given after it, among the arguments that follow or those
    nothing takes (``extra``: `serve DATA BUNDLE`). `evaluate DATA BUNDLE` was refused as "DATA is not a bundle
    folder (no bundle.json)", which did not say that the two were swapped. Anything else is left to the bundle's own
    refusal (:func:`~pneumoscan.models.card.load_card`)."""
    if args.command not in BUNDLE_FIRST or not args.bundle:  # before the imports: the other commands need none
        return
    from pneumoscan.data.layouts import recognising_layout
    from pneumoscan.models.card import CARD
    from pneumoscan.models.run_folder import RunFolder

    def bundle_of(path: Path) -> Path | None:
        return next((folder for folder in (path, RunFolder(path).bundle) if (folder / CARD).is_file()), None)

    if bundle_of(Path(args.bundle)):
        return
    given, follows = Path(args.bundle), BUNDLE_FIRST[args.command]
    dataset = (given.is_dir() or given.suffix.lower() == ".csv") and recognising_layout(given) is not None
    reasons = ["it is a dataset"] if dataset else []
    later = [*(path_list(getattr(args, follows[0])) if follows else []), *(a for a in extra if not a.startswith("-"))]
    if bundle := next(filter(None, (bundle_of(Path(path)) for path in later if path)), None):
        reasons.append(f"{bundle} is a bundle")
    if reasons:
        order = (f"the order is `pneumoscan {args.command} BUNDLE {follows[1]}`" if follows else
                 f"`pneumoscan {args.command}` takes a bundle folder (RUN/bundle)")
        raise ValueError(f"{args.bundle} is not a bundle folder (no {CARD}): {', and '.join(reasons)}; {order}")


def _trained(bundle: Path) -> str:
    """Train's result in one line, the bundle and what its card records of validation (its sensitivity named by the
    positive class, which an etiology bundle's is not obviously; a line more for a task of more than two classes:
    its most probable class's figures), and a line more where those figures do not show the
    model better than chance, or show its probabilities far off (its card's ranking and calibration caveats, which
    every consumer says), and one where they leave out files of the validation side (unreadable, or outside the
    task), as the card says too."""
    from pneumoscan.core.metrics import format_figure, with_ci
    from pneumoscan.evaluation.model_card import left_out_caveat
    from pneumoscan.models.card import load_card, validation_films

    card = load_card(bundle)
    val = card.val_metrics
    # each rate with its interval and the films it is on: a site's 9 validation films gave 1.000 three times
    rate = {key: with_ci(val.get(key), (val.get("ci") or {}).get(key), 4 if key == "auc" else 3)
            for key in ("auc", "sensitivity", "specificity", "accuracy")}
    return (f"{shown(bundle)}: validation AUC {rate['auc']}, threshold {card.threshold:.4f} "
            f"({card.threshold_policy}): {_sensitivity(card, rate['sensitivity'])}, "
            f"specificity {rate['specificity']}, accuracy {rate['accuracy']} on {validation_films(val)}; "
            f"threshold with --tta {format_figure(card.tta_threshold, 4)}"
            # a task of more than two classes: its decision, as cv and evaluate print it beside the positive call
            + (f"\n   most probable class: accuracy {format_figure(val['three_class_accuracy'], 4)}, balanced "
               f"accuracy {format_figure(val.get('three_class_balanced_accuracy'), 4)}, macro AUC "
               f"{format_figure(val.get('three_class_macro_auc'), 4)}" if "three_class_accuracy" in val else "")
            + "".join(f"\n   caveat: {said}" for said in (card.ranking_caveat, card.calibration_caveat) if said)
            + "".join(f"\n   {said}" for said in left_out_caveat(val.get("left_out", []), val.get("n", 0))))


def _sensitivity(card: BundleCard, said: str) -> str:
    """A sensitivity as the result lines of ``train`` and ``threshold`` say it (``said``: the figure as written):
    named by the positive class it is of, which an etiology bundle's is not obviously (``sensitivity (virus)
    1.000``)."""
    return f"sensitivity ({card.positive}) {said}"


def _of_films(figure: float | None, films: int | None) -> str:
    """A rate with the films it is of (``1.000 (5 of 5)``), as ``threshold`` says the rates it chose by: a few films
    give 1.000 as readily as thousands; a record without its count gives the rate alone."""
    from pneumoscan.core.metrics import format_figure

    if figure is None or not films:
        return format_figure(figure)
    return f"{format_figure(figure)} ({round(figure * films)} of {films})"


def _print_left_out(left_out: list[dict], n: int) -> None:
    """Print, under a command's result line, what its figures leave out of the files given and why (``left_out``
    beside ``n`` films counted), as the record it wrote says it: one indented line each, nothing when none."""
    from pneumoscan.evaluation.model_card import left_out_caveat

    for said in left_out_caveat(left_out, n):
        print(f"   {said}")


def cmd_cv(args: argparse.Namespace) -> int:
    from pneumoscan.core.metrics import format_figure
    from pneumoscan.models.run_folder import CvFolder

    cfg = _recipe(args)
    _not_a_bundle(args.out)
    from pneumoscan.training.cv import cross_validate  # torch: once the recipe is read, as train's
    from pneumoscan.training.distributed import is_main_process

    result = cross_validate(args.data, cfg, args.folds, args.out, args.teacher_cv or ())
    if not is_main_process():  # under torchrun the figures are printed once, by the process that wrote them
        return 0
    folds = len(result["per_fold"])
    for name, s in result["summary"].items():
        mean, std, low, high = (format_figure(s[k], 4) for k in ("mean", "std", "min", "max"))
        defined = "" if s["folds"] == folds else f"; defined on {s['folds']} of {folds} folds"
        print(f"{name:>32}: {mean} +- {std} (folds {low}-{high}{defined})")
    pooled = result["pooled_out_of_fold"]
    # all folds' films scored together: the figures `ensemble --cv` records as its validation figures
    figures = ", ".join(f"{name} {format_figure(pooled[name], 4)}" for name in result["summary"] if name in pooled)
    if figures:
        print(f"pooled out of fold ({pooled['n']} films): {figures}")
    if three_class := pooled.get("multiclass"):
        print(f"pooled out of fold, {_three_classes(three_class)}")
    _print_left_out(result["left_out"], pooled["n"])  # cv.json records them
    cv = CvFolder(Path(args.out))
    print(f"out-of-fold scores: {shown(cv.oof)}   figures: {shown(cv.summary)}")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from pneumoscan.training.ensemble import build_ensemble

    with _without_test_split("the test split never chooses an ensemble's temperature and thresholds: choose them on "
                             "labelled films none of the members trained on"):
        card = build_ensemble(args.bundles, args.out, args.data, args.split, args.cv, args.target_sensitivity,
                              args.youden, args.max_false_positive_rate)
    print(f"{args.out}: ensemble of {len(card.model_kwargs['members'])} members, temperature {card.temperature:.3f}, "
          f"threshold {card.threshold:.4f}, with --tta {card.tta_threshold:.4f} ({card.threshold_policy})")
    _print_left_out(card.val_metrics["left_out"], card.val_metrics["n"])  # the card says it too
    return 0



def _three_classes(block: dict) -> str:
    """One line for an evaluate_multiclass block: its decision, accuracy, balanced accuracy and macro one-vs-rest AUC
    with their CIs, confusion (n/a where the films do not define a figure, e.g. no viral film), and its films with the
    patients its intervals count, as the one-stage line gives them."""
    from pneumoscan.core.metrics import with_ci
    from pneumoscan.evaluation.model_card import class_counts

    def figure(name: str, shown_as: str) -> str:
        return f"{shown_as} {with_ci(block[name], block['ci'].get(name), 4)}"

    return (f"{block['decision']}: {figure('accuracy', 'accuracy')}, "
            f"{figure('balanced_accuracy', 'balanced accuracy')}, {figure('macro_auc', 'macro AUC')}, confusion "
            f"(rows true {', '.join(block['class_names'])}): {block['confusion_matrix']['counts']}; "
            f"n = {class_counts(block)}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pneumoscan.evaluation.evaluate import default_out_dir, evaluate

    if args.auc_test != AUC_TESTS[0] and not args.by:  # it would change nothing, and say nothing of it
        raise ValueError(f"--auc-test {args.auc_test} only with --by FIELD (it tests the groups' AUCs)")
    out = args.out or default_out_dir(args.bundle, args.data, args.split, args.tta, args.etiology, args.backend)

    def instead() -> str:
        command = _on_run_validation(args.bundle, "evaluate {bundle} {split} --split val" + " --tta" * args.tta)
        run = (f"measure it on its run's validation films instead: {command}" if command else
               "give a run's validation films instead: RUN/split.csv --split val")
        return f"without a test split, {run} (figures on them are optimistic)"

    with _without_test_split(instead):
        metrics = evaluate(args.bundle, args.data, args.split, out, tta=args.tta, add_to_card=args.add_to_card,
                           data_name=args.data_name, etiology=args.etiology, backend=args.backend,
                           by=args.by or (), auc_test=args.auc_test,
                           decision_range=tuple(args.decision_range or DECISION_RANGE),
                           prevalences=args.prevalence or ())
    if args.json:
        _print_json(_figures_printed(metrics))
        return 0
    _print_figures(metrics, out)
    _print_tables(metrics)
    return 0


def _figures_printed(metrics: dict) -> dict:
    """evaluate --json's figures: the curves stay in metrics.json, each prevalence's too."""
    printed = {k: v for k, v in metrics.items() if k not in ("curves", "decision_curve")}
    if "at_prevalence" in printed:
        printed["at_prevalence"] = printed["at_prevalence"] | {"figures": [
            {k: v for k, v in at.items() if k != "decision_curve"} for at in printed["at_prevalence"]["figures"]]}
    return printed


def _print_figures(metrics: dict, out: str | Path) -> None:
    """evaluate's figures at the bundle's threshold with their CIs, its films and where the report is, and what a
    reader of this screen alone must not miss: the intervals' caveat, the cards' caveats and the assumption of the
    figures at another prevalence (the report says them too)."""
    from pneumoscan.core.metrics import BOTH_CLASSES, format_percent, unit_caveat, with_ci
    from pneumoscan.evaluation.model_card import film_counts, one_class
    from pneumoscan.models.run_folder import REPORT

    absent = one_class(metrics, metrics["class_names"])  # precision, NPV and F1 then say nothing of the model
    for name in ("auc", "accuracy", "sensitivity", "specificity", "precision", "npv", "f1"):
        figure = (f"n/a (no {absent} films: it depends on both classes)" if absent and name in BOTH_CLASSES
                  else with_ci(metrics[name], metrics['ci'].get(name), 4))
        print(f"{name:>12}: {figure}")
    print(f"   threshold: {metrics['threshold']:.4f}   n = {film_counts(metrics, metrics['class_names'])}   "
          f"prevalence {metrics['prevalence']:.3f}   report: {Path(out) / REPORT}")
    if said := unit_caveat(metrics):
        print(f"   {said}")
    # what the cards say of the thresholds (a guess) and temperatures (not fitted) these figures are at, as the report
    second = metrics.get("two_stage") or {}
    for stage, caveats in (("", metrics["caveats"]), ("etiology ", second.get("etiology_caveats"))):
        for said in caveats or ():
            print(f"   {stage}caveat: {said}")
    for block in (metrics.get("at_prevalence") or {}).get("figures", ()):
        print(f"   at prevalence {format_percent(block['prevalence'])} (if sensitivity and specificity carry over): "
              + ", ".join(f"{name} {with_ci(block[key], block['ci'][key], 4)}" for key, name in (
                  ("precision", "precision"), ("npv", "npv"), ("accuracy", "accuracy"),
                  ("net_benefit", "net benefit"))))


def _print_tables(metrics: dict) -> None:
    """evaluate's tables beneath its figures: sensitivity and specificity over thresholds, the subgroups', and each
    decision among classes (a multiclass bundle's, two stages') with its subgroups; the note on differences across
    groups once, beneath them all."""
    import textwrap

    from pneumoscan.core.metrics import format_figure
    from pneumoscan.evaluation.evaluate import THRESHOLD_TABLE_LEGEND

    print(f"\n{'threshold':>10} {'sensitivity':>12} {'specificity':>12} {'precision':>10} {'npv':>6}  rule")
    for row in metrics["threshold_table"]:
        print(f"{row['threshold']:>10.4f} {format_figure(row['sensitivity'], 3):>12} "
              f"{format_figure(row['specificity'], 3):>12} {format_figure(row['precision'], 3):>10} "
              f"{format_figure(row['npv'], 3):>6}  {row['rule']}")
    print(textwrap.fill(THRESHOLD_TABLE_LEGEND, 116))
    _print_subgroups(metrics.get("subgroups"), f"at threshold {metrics['threshold']:.4f}", metrics.get("ci_unit"))
    for key in ("multiclass", "two_stage"):
        if block := metrics.get(key):
            print(f"\n{len(block['class_names'])} classes, {_three_classes(block)}")
            _print_subgroups(block.get("subgroups"), f"of the decision ({block['decision']})", block.get("ci_unit"))
    if metrics.get("subgroups"):
        from pneumoscan.evaluation.subgroups import DIFFERENCES_NOTE

        print("\n" + textwrap.fill(DIFFERENCES_NOTE, 116))


def _print_subgroups(block: dict | None, at: str, ci_unit: str | None) -> None:
    """evaluate --by's tables on the terminal, one a field, as the report words them (:func:`table_rows`), each
    saying what its intervals count: the unit (``ci_unit``) of the evaluation they are part of."""
    import textwrap

    from pneumoscan.evaluation.subgroups import differences_said, table_rows

    for field, groups in (block or {}).get("fields", {}).items():
        head, rows = table_rows(groups)
        widths = [max(len(cell) for cell in column) for column in zip(head, *rows)]
        print(f"\nby {field}, {at} (95% CIs count {ci_unit or 'film'}s):")
        for row in (head, *rows):
            print("  " + "  ".join(cell.rjust(width) if 0 < i < 3 else cell.ljust(width)  # films, patients: numbers
                                   for i, (cell, width) in enumerate(zip(row, widths))).rstrip())
        if said := differences_said(block, field):  # block is set: it has fields
            print(textwrap.fill(said, 116, initial_indent="  ", subsequent_indent="    "))


def cmd_compare(args: argparse.Namespace) -> int:
    from pneumoscan.evaluation.compare import (FIGURE, PAIRED_TABLE, SUBGROUP_FIGURE, SUBGROUP_TABLE, TABLE,
                                               compare_runs, format_table)

    runs = compare_runs(args.runs, args.out, args.auc_test)
    print(format_table(runs))
    if args.out:
        print(f"\ntable: {Path(args.out) / TABLE}   figure: {Path(args.out) / FIGURE}")
        if (Path(args.out) / SUBGROUP_TABLE).is_file():  # written for these runs, or removed
            print(f"by subgroup: {Path(args.out) / SUBGROUP_TABLE}   figure: {Path(args.out) / SUBGROUP_FIGURE}")
        if (Path(args.out) / PAIRED_TABLE).is_file():
            print(f"paired tests: {Path(args.out) / PAIRED_TABLE}")
    return 0


def cmd_threshold(args: argparse.Namespace) -> int:
    from pneumoscan.evaluation.rethreshold import rethreshold

    with _without_test_split("the test split never chooses a threshold: choose it on films the bundle never saw (a "
                             "folder or manifest of your own labelled films; RUN/split.csv --split val, the run's "
                             "validation split, is accepted with a warning)"):
        card = rethreshold(args.bundle, args.data, args.out, args.split, args.target_sensitivity,
                           args.max_false_positive_rate, args.data_name)
    record = card.threshold_records[-1]
    print(f"{args.out}: threshold {card.threshold:.4f} (was {record['previous_threshold']:.4f}), with --tta "
          f"{card.tta_threshold:.4f}; {card.threshold_policy}: "
          f"{_sensitivity(card, _of_films(record['sensitivity'], record.get('n_positive')))}, "
          f"specificity {_of_films(record['specificity'], record.get('n_negative'))} on {record['n']} images")
    # what the new card says of its ranking, probabilities and temperature, as predict and evaluate say it; its
    # threshold's own caveat was warned of as the threshold was chosen
    for said in card.caveats:
        if said != card.threshold_caveat:
            print(f"   caveat: {said}")
    _print_left_out(record["left_out"], record["n"])  # the new card says it too
    return 0


def serve_settings(args: argparse.Namespace) -> tuple[Limits, Access]:
    """The serve options as the library's limits and access rules (:meth:`Access.from_options`)."""
    from pneumoscan.serving.guard import Access
    from pneumoscan.serving.limits import Limits

    given = {name: getattr(args, name) for name in ("max_concurrent_decodes", "max_queue", "heatmap_lane",
                                                    "body_timeout", "header_timeout", "shutdown_grace",
                                                    "max_lingering")}
    limits = Limits(**{name: value for name, value in given.items() if value is not None})  # None: Limits' default
    access = Access.from_options(args.api_key_file, args.allowed_hosts or (), args.cors_origin or ())
    return limits, access


def _check_audit(args: argparse.Namespace) -> None:
    """serve's and listen's --audit-required, refused without the file whose lines it requires."""
    if args.audit_required and not args.audit_log:
        raise ValueError("--audit-required needs --audit-log FILE")


def cmd_serve(args: argparse.Namespace) -> int:
    from pneumoscan.serving.server import build_server

    _check_audit(args)
    limits, access = serve_settings(args)
    build_server(args.bundle, etiology=args.etiology, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
                 backend=args.backend, limits=limits, access=access, insecure=args.insecure, rate_limit=args.rate_limit,
                 rate_limit_storage=args.rate_limit_storage, audit_log=args.audit_log,
                 audit_required=args.audit_required,
                 heatmaps=not args.no_heatmaps, quiet=args.quiet).run()  # -q: no access log either
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pneumoscan.inference.predict import format_results, predict_paths

    results = ResultsTarget.check(args.out, ("csv", "json"), [args.bundle, *args.paths])
    skipped: list[dict[str, str]] = []
    if args.dicom_sr or args.fhir:
        from pneumoscan.interop.reports import check_reportable

        check_reportable(args.bundle, dicom=bool(args.dicom_sr))
    rows = predict_paths(
        args.bundle, args.paths, backend=args.backend, batch_size=args.batch_size, tta=args.tta,
        etiology=args.etiology, heatmap_dir=args.heatmaps, progress=True, skipped=skipped,
    )  # fmt: skip
    from pneumoscan.evaluation.model_card import say_stale_model_cards

    say_stale_model_cards([args.bundle, args.etiology])  # once the bundles have been read and their files checked
    if args.dicom_sr or args.fhir:  # after predicting, so a report's row says where its files went
        from pneumoscan.interop.reports import write_reports

        write_reports(rows, args.bundle, args.dicom_sr, args.fhir, backend=args.backend, tta=args.tta)
    failed = _say_unreadable(rows)
    # films the bundle trained on are read as any other, with a warning that their scores are no measure of it
    from pneumoscan.evaluation.held_out import trained_among

    trained_among([args.bundle, *([args.etiology] if args.etiology else [])],
                  [row["path"] for row in rows if "label" in row], "predict")
    by_reason: dict[str, list[str]] = {}
    for entry in skipped:
        by_reason.setdefault(entry["reason"], []).append(entry["path"])
    for reason, paths in by_reason.items():
        more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
        print(f"skipped ({shown(reason)}): {shown(paths[0])}{more}", file=sys.stderr)
    results.write(format_results(rows, results.fmt))
    log.info("%d predicted, %d unreadable, %d skipped", len(rows) - len(failed), len(failed), len(skipped))
    return 1 if failed else 0


def _say_unreadable(rows: list[dict]) -> list[dict]:
    """The rows with an error, each said on stderr (names escaped: a PACS or a folder may hold any bytes): a film
    that could not be read, or a reading whose second stage failed (``incomplete``: its first stage stands)."""
    failed = [row for row in rows if "error" in row]
    for row in failed:
        kind = "incomplete" if "label" in row else "unreadable"
        print(f"{kind}: {shown(row['path'])}: {shown(row['error'])}", file=sys.stderr)
    return failed


def cmd_pacs(args: argparse.Namespace) -> int:
    from pneumoscan.evaluation.model_card import say_stale_model_cards
    from pneumoscan.interop.dicomweb import Connection, predict_study, read_authorization
    from pneumoscan.interop.study import unfiled
    from pneumoscan.inference.predict import format_results

    results = ResultsTarget.check(args.out, ("json",))  # before the PACS is asked anything
    rows = predict_study(args.bundle, args.url, args.study, store=args.store, heatmaps=args.heatmaps,
                         backend=args.backend, authorization=read_authorization(args.auth_file), fhir_dir=args.fhir,
                         accession=args.accession,
                         connection=Connection(args.read_timeout, args.film_timeout, args.client_cert, args.client_key))
    say_stale_model_cards([args.bundle])  # as predict: once the bundle has been read and its files checked
    results.write(format_results(rows, results.fmt))
    failed = _say_unreadable(rows)
    scored = [row for row in rows if "probability" in row]
    unstored = unfiled(rows) if args.store else []  # films whose reports the PACS does not hold: the run failed
    for _, line in unstored:
        print(line, file=sys.stderr)
    stored = sum(len(row.get("stored", [])) for row in rows)
    filed = f"; reports of {len(scored) - len(unstored)} of {len(scored)} films stored ({stored} objects)"
    log.info("%d scored, %d not scored (no frontal chest film to read: see not_scored), %d unreadable%s", len(scored),
             sum("not_scored" in row for row in rows), len(failed), filed if args.store else "")
    return 1 if failed or unstored else 0


def cmd_listen(args: argparse.Namespace) -> int:
    from pneumoscan.core.logs import show_log_of

    _check_audit(args)
    try:
        from pneumoscan.interop.dimse import AuditLog, Destination, Listener, Room
    except ModuleNotFoundError as e:
        if e.name != "pynetdicom":
            raise
        raise ValueError("listen needs pynetdicom: pip install 'pneumoscan[dimse]'") from None

    show_log_of("pynetdicom")  # its refusals and network errors, which it logs to no one, among ours
    allow = [title for given in args.allow or () for title in given.split(",") if title.strip()]
    for folder in filter(None, (args.out, args.fhir)):  # checked to take a file, and made, before any film is taken
        ResultsTarget.check(str(Path(folder) / "study.json"), ("json",))
        Path(folder).mkdir(parents=True, exist_ok=True)
    out, fhir = (Path(folder) if folder else None for folder in (args.out, args.fhir))
    room = Room(args.max_film_mb, args.max_association_mb, args.min_free_mb, args.spool_max_mb)
    audit = AuditLog(args.audit_log, args.audit_required) if args.audit_log else None  # refused before any film
    # the films received are held here, private, until their study is done; all of it deleted when stopped
    with tempfile.TemporaryDirectory(prefix="pneumoscan-listen-", ignore_cleanup_errors=True) as work:
        listener = Listener(args.bundle, args.ae_title, Destination.parse(args.store_to), Path(work), allow,
                            backend=args.backend, heatmaps=args.heatmaps, room=room, store_s=args.store_timeout,
                            send_s=args.send_within, out=out, spool=Path(args.spool) if args.spool else None,
                            retry_s=args.retry_every, audit=audit, fhir=fhir)
        server = listener.start(args.host, args.port)
        try:
            threading.Event().wait()  # until Ctrl-C or SIGTERM: each association is served in a thread of its own
        finally:
            server.shutdown()
            listener.stop()
            if audit is not None:
                audit.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pneumoscan.core.metrics import format_figure
    from pneumoscan.inference.export import export_onnx
    from pneumoscan.inference.onnx_runtime import Int8Key, Int8Operating, read_sidecar, spec_path

    if args.int8:
        from pneumoscan.training.quantize import quantize_bundle

        if args.out:
            raise ValueError("--out names a plain ONNX export's file; --int8 writes BUNDLE/model.int8.onnx, where "
                             "--backend onnx-int8 finds it (copy the bundle first to keep one without it)")
        out = quantize_bundle(args.bundle, args.data, args.calibration_images, args.cv or ())
        figures = read_sidecar(out, strict=True)
        chosen = Int8Operating.from_figures(figures)
        classes = figures.get(Int8Key.THREE_CLASS)  # a task of more than two classes: its macro AUC, checked too
        print(f"wrote {shown(out)}: validation AUC {format_figure(figures[Int8Key.VAL_AUC_INT8], 4)} "
              f"(FP32 {format_figure(figures[Int8Key.VAL_AUC_FP32], 4)}), "
              + (f"macro AUC {format_figure(classes[Int8Key.MACRO_AUC_INT8], 4)} (FP32 "
                 f"{format_figure(classes[Int8Key.MACRO_AUC_FP32], 4)}), " if classes else "")
              + f"threshold {chosen.threshold:.4f} chosen on the INT8 scores ({chosen.threshold_policy})")
        _print_left_out(figures[Int8Key.LEFT_OUT], figures[Int8Key.VALIDATION_IMAGES])  # MODEL_CARD.md too
        return 0
    given = [flag for flag, set_ in (("--data", args.data is not None), ("--cv", bool(args.cv)),
             ("--calibration-images", args.calibration_images != CALIBRATION_IMAGES)) if set_]
    if given:  # a forgotten --int8 had written the plain export and exited 0, with no INT8 model
        raise ValueError(f"{', '.join(given)} only with --int8 (they choose the INT8 model's calibration and "
                         "thresholds)")
    out = export_onnx(args.bundle, args.out)
    print(f"wrote {shown(out)} and its preprocessing spec {shown(spec_path(out))}")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from pneumoscan.evaluation.model_card import model_card_text, stale_model_card, write_model_card
    from pneumoscan.models.card import load_card

    card = load_card(args.bundle)  # its checksum checked: a damaged card is refused, not written out
    if args.write:
        log.info("wrote %s from the card (bundle.json; nothing else changed)",
                 shown(write_model_card(args.bundle, card)))
        return 0
    print(text := model_card_text(args.bundle, card), end="")
    if stale := stale_model_card(args.bundle, card, text):
        log.warning("%s", stale)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from pneumoscan.models import model_names

    print("\n".join(model_names()))
    return 0


def _positive(kind: type, zero: bool = False) -> Callable[[str], int | float]:
    """An argparse type that refuses negative and non-finite values, and zero unless ``zero`` (a batch size of -1
    silently predicted nothing; --max-upload-mb inf ended in an OverflowError; train's --lr takes 0, which keeps the
    starting weights, and --lr inf trained until its first step diverged; --seed -1 failed only after the run
    folder was cleared)."""
    number = "a whole number" if kind is int else "a finite number"

    def parse(text: str) -> int | float:
        expected = f"must be {number} >= 0, got {text}" if zero else f"must be {number} above 0, got {text}"
        try:
            value = kind(text)
        except ValueError:  # argparse would say "invalid parse value", naming this function
            raise argparse.ArgumentTypeError(expected) from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(expected)
        return value
    return parse


def _port(text: str) -> int:
    """An argparse type for a TCP port: 0 (any free port) to 65535."""
    if not text.strip().isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 0 to 65535, got {text}")
    return int(text)


def _rate(text: str) -> str:
    """An argparse type for serve's --rate-limit: a rate the service takes (:func:`~pneumoscan.serving.limits.
    per_client_rate`), refused when the options are read rather than once the model has loaded."""
    from pneumoscan.serving.limits import per_client_rate

    try:
        per_client_rate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("rate_limit (--rate-limit) ")) from None
    return text


def _rate_store(text: str) -> str:
    """An argparse type for serve's --rate-limit-storage: a store the service counts in (:func:`~pneumoscan.serving.
    limits.known_store`), an empty or mistyped one refused when the options are read; whether it answers is the
    service's to check as it starts."""
    from pneumoscan.serving.limits import known_store

    try:
        return known_store(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("rate_limit_storage (--rate-limit-storage) ")) from None


def _path(what: str, variable: str = "") -> Callable[[str], str]:
    """An argparse type for a path to a ``what`` (bundle, run, file, folder): an empty one refused naming its option
    (:func:`~pneumoscan.core.names.given_path`), as an unset variable gives it (``--etiology "$ETIOLOGY"``), where
    the commands read it as not given (no second stage) or as the folder they ran in; the text kept as given."""
    def parse(text: str) -> str:
        try:
            given_path(text, what, variable)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text
    return parse


def _field(text: str) -> str:
    """An argparse type for a field to group figures by (``evaluate --by``): an empty one, as an unset variable
    gives it, is refused naming its option, where the library would name the fields there are as if one was asked."""
    if not text.strip():
        raise argparse.ArgumentTypeError("no field given (an empty value: is the variable that names it set?)")
    return text.strip()


def _named(what: str) -> Callable[[str], str]:
    """An argparse type for a name (``listen``'s AE titles and destination): an empty one, as an unset variable gives
    it, is refused naming its option; what a name must be is the library's to check."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"no {what} given (an empty value: is the variable that names it set?)")
        return text

    return parse


_bundle = _path("bundle")
_file = _path("file")
_folder = _path("folder")
_data = _path("dataset", "$PNEUMOSCAN_DATA")  # as discover names it


def _option(choices: Sequence[str], what: str, any_case: bool = False, hint: str | None = None,
            ) -> Callable[[str], str]:
    """An argparse type that checks a name as the library does (:func:`pneumoscan.core.options.look_up_option`:
    did you mean); ``any_case`` for names the data are read by in any case (split folders and manifest values);
    ``hint`` says what the refusal lists instead of the choices."""
    def parse(text: str) -> str:
        try:
            return look_up_option(text.lower() if any_case else text, choices, what, hint)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _choice(parser: argparse.ArgumentParser, flag: str, choices: Sequence[str], what: str, any_case: bool = False,
            hint: str | None = None, **kwargs) -> None:
    """An option taking one of the library's names (listed in --help, checked with a did-you-mean message)."""
    parser.add_argument(flag, type=_option(choices, what, any_case, hint), choices=choices, **kwargs)


def _share(zero: bool = True, one: bool = True) -> Callable[[str], float]:
    """An argparse type for a number from 0 to 1, either end taken unless ``zero`` or ``one`` is False (a word or
    NaN: the same refusal, where argparse's own named this function). Refused here, the option is named: the
    library's refusal named the config key (``val_fraction must be ...`` for ``split --val-fraction 15``)."""
    ends = ("between 0 and 1" if zero and one else
            f"{'>= 0' if zero else 'above 0'} and {'<= 1' if one else 'below 1'}")

    def parse(text: str) -> float:
        expected = argparse.ArgumentTypeError(f"must be {ends}, got {text}")
        try:
            value = float(text)
        except ValueError:
            raise expected from None
        if not ((0 <= value if zero else 0 < value) and (value <= 1 if one else value < 1)):
            raise expected
        return value
    return parse


_probability = _share()  # a rate in [0, 1]


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, as every other error of the command line is: the reason and
    where the options are listed, without the usage (up to 15 lines, which buried a did-you-mean). It takes no
    abbreviation of an option (``--heatmap`` for ``--heatmaps``): a typo is refused, not read as another option, and
    a script's abbreviation cannot change meaning when an option of the same prefix is added."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})
        self.commands: dict[str, _Parser] = {}  # the sub-commands' parsers by name (build_parser)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")

    def parse_args(self, args: Sequence[str] | None = None,
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """argparse's, except that arguments nothing takes are refused by the sub-command given: argparse refused
        them as the top-level parser, whose --help lists the sub-commands, not the option that was misspelt."""
        parsed, extra = self.parse_known_args(args, namespace)
        self.refuse_unrecognized(parsed, extra)
        return parsed

    def refuse_unrecognized(self, parsed: argparse.Namespace, extra: Sequence[str]) -> None:
        """Refuse the arguments ``extra`` that nothing takes, as argparse does, by the sub-command given."""
        if extra:
            owner = self.commands.get(getattr(parsed, "command", None), self)
            owner.error(f"unrecognized arguments: {' '.join(extra)}{owner.closest_options(extra)}")

    def closest_options(self, given: Sequence[str]) -> str:
        """``; did you mean --image-size?`` for the unknown options among ``given`` that are near ones of this
        parser, guessed as :func:`look_up_option` guesses a name (``--image_size=32`` read as ``--image_size``), on
        the names without their dashes, which made ``--help`` look near ``--heatmpas``. A long option's prefix is
        taken for the options it begins, as argparse expanded it (0.2.0's scripts: ``--val`` ran as
        ``--val-folder``), which too short a prefix is near none of."""
        # argparse has no public list of a parser's option strings
        known = {flag.lstrip("-"): flag for flag in self._option_string_actions}
        flags = [arg.split("=", 1)[0] for arg in given if arg.startswith("-")]
        begun = {flag: [name for name, option in known.items() if option.startswith(flag)] for flag in flags
                 if flag.startswith("--") and len(flag) > 2}
        guesses = {flag: " or ".join(known[name] for name in close) for flag in flags
                   if (close := begun.get(flag) or difflib.get_close_matches(flag.lstrip("-"), list(known), n=3,
                                                                             cutoff=0.6))}
        if len(guesses) > 1:  # which guess is for which option
            return f"; did you mean {', '.join(f'{close} for {flag}' for flag, close in guesses.items())}?"
        return "".join(f"; did you mean {close}?" for close in guesses.values())


DATA_HELP = "dataset root (train/val/test folders), a NORMAL/PNEUMONIA folder, or a CSV manifest"
AUGMENTED_OUT = "augmented.png"  # audit --augmented's grid, in the folder the command runs in


def _add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The training-recipe options that `train` and `cv` share (cv trains one run per fold with them)."""
    p.add_argument("--config", type=_file, help="YAML file of TrainConfig fields; flags override it")
    _choice(p, "--task", list_tasks(), "task", hint=or_your_own(f"choose from {', '.join(list_tasks())}"),
            help="what to classify (default pneumonia)")
    p.add_argument("--model", help="registry name or any timm model (pneumoscan models lists them; default "
                                   "efficientnet_lite0)")
    p.add_argument("--epochs", type=_positive(int), help="at most this many epochs (default 6), also under a budget")
    p.add_argument("--time-budget", type=_positive(float),
                   help="minutes; the learning-rate schedule is fitted to it (default: none, --epochs alone)")
    p.add_argument("--image-size", type=_positive(int), help="model input side in pixels (default 192)")
    p.add_argument("--batch-size", type=_positive(int), help="per process (default 32)")
    p.add_argument("--seed", type=_positive(int, zero=True),
                   help="random seed of split, order and augmentation (default 0)")
    p.add_argument("--patients", type=_positive(int), metavar="N",
                   help="a trial on part of the data: a seeded sample of N patients, each class and subtype in its "
                        "share, taken before the patient split (default: all; the card states the sample)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start from ImageNet weights where the model has them (default); models without them "
                        "always start from scratch")
    policy = p.add_mutually_exclusive_group()
    policy.add_argument("--target-sensitivity", type=_probability,
                        help="threshold policy: the most specific threshold with at least this validation sensitivity "
                             "(default 0.95)")
    policy.add_argument("--youden", action="store_true", help="choose the threshold by Youden's J instead")
    p.add_argument("--data-name", metavar="TEXT", type=_named("data name"),
                   help="where the training films come from, for the model card (a site's own: the card names "
                        "Kermany et al.'s films itself, by their file names); default: said to be not described")
    p.add_argument("--data-licence", metavar="TEXT", type=_named("licence"),
                   help="with --data-name: the licence of those films, for the model card (default: not stated)")
    p.add_argument("--distill-weight", type=_probability, metavar="W",
                   help="with --teacher (train) or --teacher-cv (cv): the teachers' share of each training film's "
                        "target, the label's the rest (default 0.5)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config field, repeatable: --set lr=3e-4 --set augment.noise=0.02 (values read as YAML; "
                        "applied over --config, under the other flags)")


def _add_threshold_rule(p: argparse.ArgumentParser, required: bool, default: str = "") -> None:
    """The threshold rules of commands that choose a threshold on labelled films they are given (one of three)."""
    rule = p.add_mutually_exclusive_group(required=required)
    rule.add_argument("--target-sensitivity", type=_probability,
                      help="the most specific threshold whose sensitivity is at least this"
                           + (f" (default: {default})" if default else ""))
    rule.add_argument("--youden", action="store_true", help="the threshold maximising sensitivity + specificity - 1")
    rule.add_argument("--max-false-positive-rate", type=_probability,
                      help="the most sensitive threshold whose false-positive rate (1 - specificity) is at most this")


def _recipe(args: argparse.Namespace, **flags: object) -> TrainConfig:
    """The resolved training config: --config, then --set, then the recipe flags (and ``flags``) that were given."""
    from pneumoscan.training.config import load_config

    cfg = load_config(args.config, args.set or (), task=args.task, model=args.model, epochs=args.epochs,
                      time_budget=args.time_budget, image_size=args.image_size, batch_size=args.batch_size,
                      seed=args.seed, patients=args.patients, pretrained=args.pretrained,
                      target_sensitivity=args.target_sensitivity, distill_weight=args.distill_weight,
                      data_name=args.data_name, data_licence=args.data_licence, **flags)
    if args.youden:
        cfg.target_sensitivity = None
    return cfg


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--json-out", type=_file, help="also write the JSON report to this file")
    p.add_argument("--figure", type=_file, help="write class balance + sample grid PNG here")
    p.add_argument("--augmented", type=_positive(int), metavar="N",
                   help="also draw N training films after the training augmentation, as the model sees them")
    p.add_argument("--augmented-out", type=_file, help=f"with --augmented: the grid PNG (default {AUGMENTED_OUT})")
    p.add_argument("--config", type=_file,
                   help="with --augmented: a train YAML whose augment, image_size and seed to show (default: the "
                        "default recipe)")


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("--val-fraction", type=_share(zero=False, one=False), default=VAL_FRACTION,
                   help="share of the films of each class and subtype that goes to validation, whole patients at a "
                        f"time (default {VAL_FRACTION:g}); with --test-fraction, a share of the films outside test")
    p.add_argument("--test-fraction", type=_share(one=False), default=0.0,
                   help="also hold this share of the films of each class and subtype out for the test, whole patients "
                        "at a time, drawn before validation; the same seed holds out the same patients whatever "
                        "--val-fraction (default 0: no test rows); refused for DATA with a test split of its own")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split (default 0)")
    p.add_argument("--out", type=_file, default="split.csv", help="manifest to write (default split.csv)")


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help=DATA_HELP)
    _choice(p, "--split", SPLITS, "split", any_case=True, help="only this split of a dataset root, as evaluate --split")
    p.add_argument("--bundle", type=_bundle, help="preprocess as this bundle does (size, policy, training source): "
                                    "evaluate BUNDLE DATA with the same --split then reuses the cache")
    p.add_argument("--size", type=_positive(int),
                   help="without --bundle (default 192); train also records its files' source size, so only --bundle "
                        "matches a run")
    _choice(p, "--policy", RESIZE_POLICIES, "resize policy", help="without --bundle (default squash)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=_data,
                   help=DATA_HELP + " (its test split is never used); required unless --print-config")
    p.add_argument("--out", type=_folder, help="run directory; required unless --print-config")
    _add_recipe_options(p)
    p.add_argument("--lr", type=_positive(float, zero=True), help="peak learning rate for one process (default 0.001)")
    p.add_argument("--split-csv", type=_file, help="manifest with a train/val split column (pneumoscan split)")
    p.add_argument("--val-folder", action="store_true", default=None,
                   help="the reference projects' protocol: train on all of DATA's train/ and validate on its val/ "
                        "folder (16 films in the Kaggle release: warns that they cannot rank recipes)")
    p.add_argument("--zoom-range", type=_share(one=False), metavar="Z",
                   help="Keras-style zoom in and out: scale 1-Z to 1+Z (default 0: off)")
    p.add_argument("--vflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random vertical flips (default: off)")
    _choice(p, "--fill-mode", FILL_MODES, "fill mode",
                   help="how shifts, rotations and zooming out fill the border (default constant: black)")
    p.add_argument("--no-augment", action="store_true", help="no augmentation at all (normalisation only)")
    p.add_argument("--init", type=_bundle, metavar="BUNDLE",
                   help="start from this bundle's weights instead of ImageNet, with its model and image size unless "
                        "--model or --image-size give others")
    p.add_argument("--teacher", type=_bundle, action="append", metavar="BUNDLE",
                   help="distil: also learn this bundle's calibrated probabilities (repeatable: their average; an "
                        "ensemble bundle is one teacher); it must not have trained on the validation films")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    _choice(p, "--optimizer", OPTIMIZERS, "optimizer",
            help="adamw-cosine (default): AdamW, warm-up and cosine decay, early stopping on validation AUC; "
                 "adam-plateau (Keras recipe): Adam, rate cut on a validation-loss plateau, early stopping on it")
    _choice(p, "--log", TRACKERS, "tracker", action="append",
            help="record the config, per-epoch figures, curves and final validation figures (repeatable): "
                 "RUN/tensorboard, or an MLflow run (RUN/mlflow.db unless --tracking-uri)")
    p.add_argument("--tracking-uri", type=_path("tracking store"), metavar="URI",
                   help="with --log mlflow: the MLflow tracking store or server")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit (no training)")


def _cv_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=_data, required=True,
                   help="dataset root (everything but test/ is divided into folds)")
    p.add_argument("--out", type=_folder, required=True, help="folder for fold-K runs, oof.csv and cv.json")
    p.add_argument("--folds", type=_positive(int), default=5, help="number of folds (default 5)")
    _add_recipe_options(p)  # each fold's run; the seed also deals the folds
    p.add_argument("--teacher-cv", type=_path("cv run"), action="append", metavar="RUN",
                   help="distil: fold K's run also learns the calibrated probabilities of this cv run's fold-K bundle "
                        "(repeatable: their average), made with the same --folds, --seed and data")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder (RUN/bundle)")
    p.add_argument("data", help=DATA_HELP)
    _choice(p, "--split", SPLITS, "split", any_case=True, help="only this split, when DATA holds several")
    p.add_argument("--out", type=_folder, help="report folder (default: next to the bundle)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a summary")
    p.add_argument("--tta", action="store_true", help="score as predict --tta does, at the bundle's TTA threshold")
    p.add_argument("--add-to-card", action="store_true",
                   help="record this evaluation in the bundle's card (bundle.json, MODEL_CARD.md); weights untouched")
    p.add_argument("--data-name", help="name of the data in the report and the card (default: DATA's folder and split)")
    p.add_argument("--etiology", type=_bundle,
                   help="second-stage bundle as predict --etiology runs it: also score the two stages as three "
                        "classes (normal / bacteria / virus with an etiology bundle)")
    _choice(p, "--backend", BACKENDS, "backend", default="onnx",
            help="onnx (default: as predict and serve score, several times faster than torch on CPU), torch, or "
                 "onnx-int8: the bundle's INT8 model at its own thresholds (export --int8)")
    p.add_argument("--by", action="append", metavar="FIELD", type=_field,
                   help="also give the figures of each group of films by FIELD, at the bundle's threshold (repeat for "
                        "several): subtype, split, format, a manifest's own column, or a DICOM header's PatientSex, "
                        "PatientAge (in bands), Manufacturer, ViewPosition or InstitutionName")
    _choice(p, "--auc-test", AUC_TESTS, "AUC test across groups", any_case=True, default=AUC_TESTS[0],
            help="how --by's groups' AUCs are tested for a difference: permutation (default; patients shuffled among "
                 "the groups, exact where every shuffle can be counted) or delong (DeLong's test of independent AUCs, "
                 "each group's variance clustered by patient and taken at the groups' common AUC, a normal "
                 "approximation)")
    p.add_argument("--decision-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="threshold probabilities the decision curve spans, in steps of 0.01 (default "
                        f"{DECISION_RANGE[0]:g} {DECISION_RANGE[1]:g}): those a clinician would act at")
    p.add_argument("--prevalence", type=float, nargs="+", metavar="P",
                   help="also give precision (PPV), NPV, accuracy and net benefit at each prevalence P of the positive "
                        "class (0.1 for 10 %%, one or more), recomputed from the films' sensitivity and specificity: a "
                        "clinic's figures, if the two carry over to its films")


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=_path("run"), nargs="+", metavar="RUN",
                   help="training run folders (RUN/metrics.json) or evaluate folders")
    p.add_argument("--out", type=_folder, help="folder for compare.csv and compare.png (default: print the table only)")
    _choice(p, "--auc-test", AUC_TESTS, "paired AUC test", any_case=True, default=AUC_TESTS[0],
            help="how evaluate folders' AUCs on the same films are tested against the first's: permutation (default; "
                 "exact where every swap can be counted, no normal approximation) or delong (DeLong's test of "
                 "correlated AUCs, clustered by patient, as pROC's roc.test)")


def _threshold_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder to start from (never changed)")
    p.add_argument("data", help=DATA_HELP + ", labelled, with both classes")
    _choice(p, "--split", SPLITS, "split", any_case=True, help="only this split, when DATA holds several (e.g. val)")
    p.add_argument("--out", type=_folder, required=True, help="new bundle folder; must not exist")
    p.add_argument("--data-name", help="name of the data in the card (default: DATA's folder name and split)")
    _add_threshold_rule(p, required=True)


def _ensemble_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundles", type=_bundle, nargs="*", help="member bundles (none with --cv)")
    p.add_argument("--out", type=_folder, required=True, help="new ensemble bundle folder; must not exist")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=_data,
                        help=DATA_HELP + ": labelled films none of the members trained on, to choose the ensemble's "
                                         "temperature and thresholds")
    source.add_argument("--cv", type=_path("cv run"), nargs="+", default=(), metavar="DIR",
                        help="`pneumoscan cv` output folders (several: runs on the same folds, e.g. two input sizes): "
                             "their fold bundles are the members, and the out-of-fold scores choose temperature and "
                             "thresholds")
    _choice(p, "--split", SPLITS, "split", any_case=True, help="only this split, when DATA holds several (e.g. val)")
    _add_threshold_rule(p, required=False, default="the first member's policy")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder to serve")
    p.add_argument("--etiology", type=_bundle,
                   help="second-stage bundle (bacteria vs virus, or a task of your own that follows the first), "
                        "applied to images read as the label it follows (pneumonia)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 0 to 65535 (default 8000)")
    p.add_argument("--max-upload-mb", type=_positive(float), default=MAX_UPLOAD_MB,
                   help=f"larger uploads are refused with 413 (default {MAX_UPLOAD_MB})")
    _choice(p, "--backend", BACKENDS, "backend", default="onnx",
            help="onnx (default): ONNX Runtime, several times faster on CPU than torch; onnx-int8: the bundle's INT8 "
                 "model (export --int8), which answers no heatmaps (422); Grad-CAM runs in torch")
    p.add_argument("--no-heatmaps", action="store_true",
                   help="serve readings alone, heatmaps refused (422), without Grad-CAM's torch: for a host that "
                        "refuses memory both writable and executable (MemoryDenyWriteExecute=yes), with --backend onnx")
    _serve_access_args(p)
    _serve_limit_args(p)
    p.add_argument("--audit-log", type=_file, metavar="FILE",
                   help="append one JSON line for each prediction request, answered or refused (time, request id, "
                        "key name, the film's SHA-256 and size, model, readings, status, reason; no file names or "
                        "patient data), to FILE, created 0600 and opened again once logrotate moves it (default: none)")
    p.add_argument("--audit-required", action="store_true",
                   help="with --audit-log: a reading whose line cannot be written is answered 503 (audit_log_lost), "
                        "not the reading, where the default answers it with a warning that the line is lost")
    p.add_argument("--max-lingering", type=_positive(int),
                   help="connections answered early (401, 413, 503 before the upload is in) whose rest is dropped "
                        "until the client closes, at most --body-timeout, at once; past it one closes at once "
                        "(default 128)")


def _serve_access_args(p: argparse.ArgumentParser) -> None:
    """serve's options of who may call it: the API key, the hosts and the browser origins."""
    p.add_argument("--api-key-file", type=_file, metavar="PATH",
                   help="file holding the API key that every request but the page, /healthz and /openapi.json must "
                        "send, or a key for each client as NAME KEY lines, read again on SIGHUP (default: env "
                        "PNEUMOSCAN_API_KEY; none)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without an API key (only behind a proxy that authenticates)")
    p.add_argument("--allowed-hosts", action="append", metavar="HOST[,HOST]",
                   help="Host header names served (default: localhost, 127.0.0.1, ::1 and the --host address); "
                        "'*' allows any, '*.example.org' subdomains")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                   help="let pages from this origin call the API from a browser, given as a browser sends it "
                        "(https://viewer.example: no path); repeat for each (default: none)")


def _serve_limit_args(p: argparse.ArgumentParser) -> None:
    """serve's bounds on the work in it at once, on how long a request may take, and on each client's requests."""
    # no defaults here: a flag not given leaves serving.limits.Limits' own (the help repeats them)
    p.add_argument("--max-concurrent-decodes", type=_positive(int),
                   help="images decoded at once (default: the cores this process may run on, at most 4)")
    p.add_argument("--max-queue", type=_positive(int),
                   help="prediction requests in the service at once; more get 503 + Retry-After (default 32)")
    p.add_argument("--heatmap-lane", type=_positive(int),
                   help="Grad-CAM heatmaps computed at once, on their own threads; 4x as many may wait (default 1)")
    p.add_argument("--body-timeout", type=_positive(float),
                   help="seconds for a whole upload to arrive, else 408 (default 60)")
    p.add_argument("--header-timeout", type=_positive(float),
                   help="seconds for a request's headers to arrive, else the connection is closed (default 10)")
    p.add_argument("--shutdown-grace", type=_positive(float),
                   help="seconds requests in progress get to finish after SIGTERM or Ctrl-C; one cut off then "
                        "gets 503 + Retry-After (default 20)")
    p.add_argument("--rate-limit", type=_rate, metavar="N/minute",
                   help="each client's prediction requests (its key's name with named keys, else its address, or the "
                        "X-Forwarded-For of a proxy on loopback or FORWARDED_ALLOW_IPS): past N in any minute "
                        "(N/second, N/hour, N per M minutes) it gets 429 + Retry-After while others are served "
                        "(default: none)")
    p.add_argument("--rate-limit-storage", metavar="URI", type=_rate_store,
                   help="where --rate-limit's counts are kept: memory:// (this process's, the default) or a Redis "
                        "server the instances behind a load balancer share, redis://HOST:6379/0 (redis+unix:///PATH, "
                        "or over TLS rediss://HOST:6380/0?ssl_ca_certs=CA.pem); one that does not answer at start is "
                        "refused, and while it does not answer each prediction request gets 503 + Retry-After")


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("paths", nargs="+", help="JPEG/PNG/DICOM files and folders (searched recursively)")
    p.add_argument("--out", type=_file, help="results.csv or results.json (default: CSV on stdout)")
    _choice(p, "--backend", BACKENDS, "backend", default="onnx",
                   help="onnx (default) is several times faster on CPU than torch; onnx-int8 uses the bundle's INT8 "
                        "model")
    p.add_argument("--heatmaps", type=_folder, help="folder for one Grad-CAM overlay PNG per image")
    p.add_argument("--tta", action="store_true", help="average over a few zoomed/shifted views (no flips)")
    p.add_argument("--etiology", type=_bundle,
                   help="second-stage bundle (bacteria vs virus, or a task of your own that follows the first), "
                        "applied to images called the label it follows (pneumonia); its columns are named from its "
                        "task (etiology_label, ...)")
    p.add_argument("--batch-size", type=_positive(int), default=PREDICT_BATCH,
                   help=f"images per model call (default {PREDICT_BATCH})")
    p.add_argument("--dicom-sr", type=_folder, metavar="DIR",
                   help="write a DICOM SR per DICOM film (and the heatmap as a Secondary Capture with --heatmaps) in "
                        "the film's study")
    p.add_argument("--fhir", type=_folder, metavar="DIR", help="write a FHIR R4 Observation (JSON) per DICOM film")


def _pacs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="a pneumonia (or multiclass) bundle")
    p.add_argument("--url", required=True, help="DICOMweb root, e.g. http://host:8042/dicom-web")
    study = p.add_mutually_exclusive_group(required=True)
    study.add_argument("--study", help="StudyInstanceUID")
    study.add_argument("--accession", metavar="NUMBER",
                       help="AccessionNumber: the one study the PACS holds under it (none or several: refused)")
    p.add_argument("--store", action="store_true", help="STOW-RS each film's DICOM SR into the study")
    p.add_argument("--heatmaps", action="store_true", help="with --store: also the Grad-CAM Secondary Captures")
    p.add_argument("--fhir", type=_folder, metavar="DIR",
                   help="write a FHIR R4 Observation (JSON) per scored film into DIR, as predict --fhir")
    p.add_argument("--out", type=_file, help="results JSON (default: stdout)")
    _choice(p, "--backend", BACKENDS, "backend", default="onnx",
                   help="as predict --backend (default onnx)")
    p.add_argument("--auth-file", type=_file, metavar="FILE",
                   help="file holding the Authorization header value for the PACS, e.g. 'Bearer TOKEN' or 'Basic ...' "
                        "(default: env PNEUMOSCAN_PACS_AUTH; none). user:password@ in --url is sent as HTTP Basic "
                        "and never shown; a private CA: env REQUESTS_CA_BUNDLE")
    p.add_argument("--client-cert", type=_file, metavar="FILE",
                   help="PEM file of the client certificate for a PACS that asks for one (mutual TLS), its private "
                        "key in it or in --client-key")
    p.add_argument("--client-key", type=_file, metavar="FILE", help="PEM file of --client-cert's private key")
    p.add_argument("--read-timeout", type=_positive(float), default=PACS_READ_S, metavar="SECONDS",
                   help=f"how long a connection to the PACS, or each read of its answer, may wait (default "
                        f"{PACS_READ_S})")
    p.add_argument("--film-timeout", type=_positive(float), default=PACS_FILM_S, metavar="SECONDS",
                   help=f"how long one film's whole retrieval may take (default {PACS_FILM_S})")


def _listen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="a pneumonia (or multiclass) bundle")
    p.add_argument("--store-to", required=True, type=_named("destination"), metavar="AET@HOST:PORT",
                   help="the AE each film's DICOM SR is sent to with C-STORE, e.g. PACS@pacs.hospital.example:104")
    p.add_argument("--ae-title", default="PNEUMOSCAN", type=_named("AE title"),
                   help="this listener's AE title: associations addressed to another are rejected (default PNEUMOSCAN)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: loopback only; 0.0.0.0 for the hospital network)")
    p.add_argument("--port", type=_port, default=11112, help="TCP port (default 11112)")
    p.add_argument("--allow", action="append", type=_named("AE title"), metavar="AET[,AET]",
                   help="calling AE titles accepted (repeatable); others are rejected at association (default: any)")
    p.add_argument("--heatmaps", action="store_true", help="also send the Grad-CAM Secondary Captures")
    _choice(p, "--backend", BACKENDS, "backend", default="onnx", help="as predict --backend (default onnx)")
    p.add_argument("--out", type=_folder, metavar="DIR",
                   help="write each study's rows, as pacs --out writes them, to DIR/STUDY_UID.json")
    p.add_argument("--fhir", type=_folder, metavar="DIR",
                   help="write a FHIR R4 Observation (JSON) per scored film into DIR, as pacs --fhir, once its "
                        "study's audit lines are written")
    p.add_argument("--max-film-mb", type=_positive(float), default=MAX_UPLOAD_MB, metavar="MB",
                   help=f"a larger film is refused with 0xA700, out of resources (default {MAX_UPLOAD_MB})")
    p.add_argument("--max-association-mb", type=_positive(float), default=LISTEN_ASSOCIATION_MB, metavar="MB",
                   help=f"films past this many MB in one association are refused with 0xA700 (default "
                        f"{LISTEN_ASSOCIATION_MB})")
    p.add_argument("--min-free-mb", type=_positive(float, zero=True), default=LISTEN_FREE_MB, metavar="MB",
                   help=f"a film that takes the temporary folder's disk under this much free space is cut short as "
                        f"it arrives (A-ABORT) (default {LISTEN_FREE_MB})")
    p.add_argument("--store-timeout", type=_positive(float), default=LISTEN_STORE_S, metavar="SECONDS",
                   help=f"how long --store-to may take to connect, accept an association or answer one C-STORE "
                        f"(default {LISTEN_STORE_S})")
    p.add_argument("--send-within", type=_positive(float), default=LISTEN_SEND_S, metavar="SECONDS",
                   help=f"a report not stored this long after its study was scored is left to the spool, with an "
                        f"error line (default {LISTEN_SEND_S})")
    p.add_argument("--spool", type=_folder, metavar="DIR",
                   help="keep each report here until the destination confirms it, sent again every --retry-every and "
                        "at start; refused ones in DIR/refused (default: a temporary folder, lost when listen stops)")
    p.add_argument("--spool-max-mb", type=_positive(float), default=LISTEN_SPOOL_MB, metavar="MB",
                   help=f"while the spool (reports waiting to be sent, not DIR/refused) holds this many MB, each "
                        f"film is refused with 0xA700, no report made that could not be kept (default "
                        f"{LISTEN_SPOOL_MB})")
    p.add_argument("--retry-every", type=_positive(float), default=LISTEN_RETRY_S, metavar="SECONDS",
                   help=f"how often the reports in the spool are sent again (default {LISTEN_RETRY_S})")
    p.add_argument("--audit-log", type=_file, metavar="FILE",
                   help="append one JSON line for each film read (caller, UIDs, the film's SHA-256, model, reading or "
                        "refusal), each caller refused at association and each report the destination stored or "
                        "refused, to FILE, created 0600 and opened again once logrotate moves it (default: none); "
                        f"its events: {', '.join(LISTEN_EVENTS)}")
    p.add_argument("--audit-required", action="store_true",
                   help="with --audit-log: a film whose line cannot be written gets no report (held back, an error "
                        "line), where the default sends it with a warning that the line is lost")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--out", type=_file,
                   help="ONNX file (default: BUNDLE/model.onnx, which predict --backend onnx uses)")
    p.add_argument("--int8", action="store_true",
                   help="also write BUNDLE/model.int8.onnx (static INT8, for --backend onnx-int8), calibrated on "
                        "--data's train films, its thresholds chosen again on --data's val films")
    p.add_argument("--data", type=_data,
                   help="with --int8: the run's split.csv (or any labelled data with train and val splits whose val "
                        "films the model did not train on)")
    p.add_argument("--cv", type=_path("cv run"), nargs="+", metavar="DIR",
                   help="with --int8, for an ensemble built by ensemble --cv DIR ...: the same runs; its INT8 "
                        "thresholds are chosen on out-of-fold INT8 scores")
    p.add_argument("--calibration-images", type=_positive(int), default=CALIBRATION_IMAGES,
                   help="with --int8: training films that set the INT8 activation ranges "
                        f"(default {CALIBRATION_IMAGES})")


def _card_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=_bundle, help="bundle folder")
    p.add_argument("--write", action="store_true",
                   help="rewrite BUNDLE/MODEL_CARD.md from the card (bundle.json), which stays as it is; without it "
                        "the text is printed and the bundle left untouched")


def _models_args(p: argparse.ArgumentParser) -> None:
    """``models`` takes no options."""



# each command: its name, its one-line help, the function that adds its options, the function that runs it
COMMANDS: tuple[
    tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]], ...
] = (
    ("audit", "class balance, sizes, unreadable files, duplicates, patient overlap", _audit_args, cmd_audit),
    ("split", "patient-grouped train/val split of everything but test, as a CSV manifest", _split_args, cmd_split),
    ("cache", "preprocess a dataset into the image cache ahead of evaluate", _cache_args, cmd_cache),
    ("train", "train a model and write RUN/bundle", _train_args, cmd_train),
    ("cv", "patient-grouped k-fold cross-validation of a recipe: out-of-fold scores, mean and spread",
     _cv_args, cmd_cv),
    ("evaluate", "metrics, CIs, curves, predictions and an HTML report for a bundle on labelled images",
     _evaluate_args, cmd_evaluate),
    ("compare", "runs side by side: one table of validation figures, ROC curves on one plot",
     _compare_args, cmd_compare),
    ("threshold", "choose a new operating threshold on labelled data, written as a new bundle", _threshold_args,
     cmd_threshold),
    ("ensemble", "one bundle averaging several bundles' calibrated logits, with its own temperature and thresholds",
     _ensemble_args, cmd_ensemble),
    ("serve", "HTTP API (/v1/predict, /v1/model, /healthz, /openapi.json) and web page at /", _serve_args, cmd_serve),
    ("predict", "probabilities and labels for image files and folders (CSV/JSON)", _predict_args, cmd_predict),
    ("pacs", "score a study's films from a PACS over DICOMweb; --store sends the SRs back", _pacs_args, cmd_pacs),
    ("listen", "a DICOM listener (C-STORE SCP): scores each study sent to it and C-STOREs the SRs to --store-to",
     _listen_args, cmd_listen),
    ("export", "export a bundle's model as ONNX, with its preprocessing spec beside it", _export_args, cmd_export),
    ("card", "print a bundle's MODEL_CARD.md as its card (bundle.json) says it; --write rewrites the file",
     _card_args, cmd_card),
    ("models", "list registered model names", _models_args, cmd_models),
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pneumoscan", epilog=f"`pneumoscan COMMAND --help` lists a command's options. Tasks, models, readers and "
                                  f"layouts of your own: {PLUGINS_ENV}=MODULE[,MODULE] imports their modules first.",
        description="Train, evaluate, explain and serve models that read pediatric chest X-rays: normal vs pneumonia, "
                    "bacterial vs viral pneumonia. Research use only: not a medical device.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    quiet = ("only warnings and errors on stderr: no progress bars, no information messages; results are still "
             "printed")
    parser.add_argument("-q", "--quiet", action="store_true", help=f"before or after the command: {quiet}")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices
    for name, summary, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=summary)
        # the same switch after the command too (`pneumoscan predict -q ...`); SUPPRESS keeps a -q given before it
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=quiet)
        add_args(p)
        p.set_defaults(func=run)
    return parser


def _reason(error: OSError | ValueError) -> str:
    """What went wrong, as the error line says it: a system error as a sentence naming its file (``runs/r.csv: file
    too large``) rather than Python's ``[Errno 27] File too large: 'runs/r.csv'``; any other error as it reads."""
    if not (isinstance(error, OSError) and error.strerror):
        return str(error)
    text = error.strerror[0].lower() + error.strerror[1:]
    names = [str(n) if isinstance(n, int) else os.fsdecode(n)
             for n in (error.filename, error.filename2) if n is not None]
    return f"{' -> '.join(names)}: {text}" if names else text


def import_plugins(names: str) -> None:
    """Import the modules ``names`` lists (:data:`PLUGINS_ENV`'s comma-separated value): a task, model, reader or
    layout of one's own registers itself when its module is imported, and a command has no other import of it. A
    module that cannot be imported is refused (ValueError) naming it and why: a bundle of its task would otherwise be
    refused later, as if nothing had been asked for."""
    for name in filter(None, (part.strip() for part in names.split(","))):
        try:
            importlib.import_module(name)
        except Exception as e:  # the module's own code may raise anything: said in one line, not a traceback
            raise ValueError(f"{PLUGINS_ENV} names {name!r}, which cannot be imported: {type(e).__name__}: "
                             f"{e}{_plugin_fix(name, e)}") from None


def _plugin_fix(name: str, error: Exception) -> str:
    """What makes the module ``name`` importable, when ``error`` says that it (or its package) is not found: a
    module found that imports a missing package is told by Python's words alone, which name that package."""
    if not (isinstance(error, ModuleNotFoundError) and error.name and
            (name == error.name or name.startswith(error.name + "."))):
        return ""
    stem = Path(name).name.removesuffix(".py")
    if stem != name:  # a file's path, as a shell completes it: site/my_tasks.py
        return f"; give the module's name ({stem}), not its file, and put its folder on PYTHONPATH"
    return "; install it, or put the folder that holds it on PYTHONPATH"


def _quiet(argv: list[str] | None) -> bool:
    """Whether -q/--quiet is given, read before the parser, which needs the plugins imported (their tasks are --task's
    choices): logging is configured before they are, so that what their registration warns of (a built-in model
    replaced) comes out as every other message does, -q's level included. A -q the parser will refuse
    (``--quiet=1``) reads as none: the parser says why."""
    early = argparse.ArgumentParser(add_help=False, exit_on_error=False, allow_abbrev=False)  # as the parser reads it
    early.add_argument("-q", "--quiet", action="store_true")
    try:
        return early.parse_known_args(sys.argv[1:] if argv is None else argv)[0].quiet
    except argparse.ArgumentError:
        return False


def main(argv: list[str] | None = None) -> int:
    """One command's exit status; stdout, where Python left it unbuffered, buffered while it runs
    (:func:`_stdout_buffered`) and settled however it ends."""
    with _stdout_buffered():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from pneumoscan.core.logs import configure

    configure(quiet=_quiet(argv))
    try:  # before the parser: its --task choices are the registered tasks
        import_plugins(os.environ.get(PLUGINS_ENV, ""))
    except ValueError as e:
        print(f"pneumoscan: error: {shown(str(e))}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # SIGTERM (systemctl stop, timeout, a scheduler) as Ctrl-C: Python's default ends the process at once, past every
    # finally, so the films `pacs` downloaded (headers and pixels) and temporary files stayed on disk. serve keeps
    # uvicorn's own handling (its requests in progress finish first).
    handled = args.command != "serve" and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, functools.partial(_terminate, os.getpid())) if handled else None
    checkpoint = _checkpoint_state(args.out) if args.command == "train" else None  # as this command found it
    try:
        _bundle_first(args, extra)  # first: `serve DATA BUNDLE` is a bundle in the wrong place, not an extra argument
        parser.refuse_unrecognized(args, extra)
        status = args.func(args)
        if sys.stdout is not None:  # None: closed by the caller (`>&-`)
            with _stdout_named():  # a pipe's reader gone, a full disk show here, not in the interpreter's last flush
                _flush_all(sys.stdout)
        return status
    except (OSError, ValueError) as e:  # a wrong path or setting: the reason, not a traceback
        if isinstance(e, BrokenPipeError) and _stdout_reader_gone():  # `| head`: the reader chose to stop reading
            return 128 + signal.SIGPIPE  # as a shell reports a program ended by SIGPIPE, and quietly, as `cat` ends
        print(f"pneumoscan {args.command}: error: {shown(_reason(e))}", file=sys.stderr)
        return 3 if isinstance(e, WeightsUnavailable) else 2
    except KeyboardInterrupt as e:  # Ctrl-C: one line, not a traceback; every file is written whole or not at all
        goes_on = (_train_goes_on(args, checkpoint) if args.command == "train" else
                   " (the same `cv` command goes on from each fold's last finished epoch)" if args.command == "cv"
                   else "")
        stopped = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"pneumoscan {args.command}: {stopped}{goes_on}", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
    finally:
        if handled:  # a library caller's own handling back (the only thread that may set one is the main one)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _checkpoint_state(out: str | None) -> str | None:
    """OUT/checkpoint.pt's stamp as it is now (:func:`~pneumoscan.core.atomic.file_stamp`: written whole under a new
    inode each time), or None where there is none, for :func:`_train_goes_on` to tell a checkpoint this run wrote
    from one it found."""
    from pneumoscan.models.run_folder import RunFolder

    return file_stamp(RunFolder(Path(out)).checkpoint) if out else None


def _train_goes_on(args: argparse.Namespace, before: str | None) -> str:
    """What a stopped `train` can do next: --resume where an epoch of this run finished (a checkpoint it wrote, or
    the one it resumed from), else start again (a run stopped in its warm start, minutes on a CPU, has none, and
    --resume would start from scratch). A checkpoint another run left in --out (``before``: as it was when this one
    began) is no epoch of this run's: a new run clears the folder only once its films are preprocessed (minutes), so
    that one stopped before was said to go on from the old run's last epoch."""
    now = _checkpoint_state(args.out)
    if now is not None and (args.resume or now != before):
        return " (`train --resume` goes on from the last finished epoch)"
    return " (no epoch of this run had finished, so it kept no checkpoint: the same command starts the run again)"


@contextlib.contextmanager
def _stdout_named() -> Iterator[None]:
    """A failure of stdout's writes named as a file's is (``stdout: no space left on device``), where Python's names
    none: the error line says which output failed."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        raise type(e)(e.errno, e.strerror, "stdout") from None


@contextlib.contextmanager
def _stdout_buffered() -> Iterator[None]:
    """An unbuffered stdout (``PYTHONUNBUFFERED=1``, common in containers) given a buffer beneath a line-buffered text
    layer while a command runs: Python's text layer over its raw file ignores a short write's count (a nearly full
    disk) and a non-blocking stdout's None, so print() lost output unsaid and the command ended 0; a buffer writes the
    rest or raises. Any other stdout (a caller's StringIO) is left as it is. Settled on every way out (Ctrl-C, an
    uncaught error too), so that the interpreter's last flush does not fail again (exit status 120)."""
    text = sys.stdout
    buffered = (open(text.fileno(), "w", 1, text.encoding, text.errors, closefd=False)  # 1: line-buffered
                if isinstance(getattr(text, "buffer", None), io.FileIO) else None)
    if buffered:
        buffered.buffer.raw.name = text.name  # "<stdout>" where a message names the stream (a log's lost lines)
        sys.stdout = buffered
    try:
        yield
    finally:
        _settle_stdout()  # written, or stdout sent nowhere: what its buffer holds leaves with it
        if buffered:  # left open (fd 1 is not its to close): a handler or thread that took it goes on writing
            sys.stdout = text


def _write_all(out: io.RawIOBase | io.BufferedIOBase, data: bytes) -> None:
    """``data`` written whole to ``out`` and flushed: a raw file that takes part of it (a full disk) fails the rest with
    its reason, and a non-blocking one (left so by node or a CI runner) that takes nothing for now, its reader behind,
    is waited on until it is writable, not failed: a reader late by half a second lost the results."""
    rest = memoryview(data)
    while rest:
        try:
            written = out.write(rest)
        except BlockingIOError as e:  # a buffer that took what it could
            written = e.characters_written
        rest = rest[written or 0:]
        if rest:
            _wait_writable(out)
    _flush_all(out)


def _flush_all(out: io.IOBase) -> None:
    """``out`` flushed, waiting where it is non-blocking and cannot take its buffer yet (:func:`_write_all`)."""
    while True:
        try:
            out.flush()
            return
        except BlockingIOError:
            _wait_writable(out)


def _wait_writable(out: io.IOBase) -> None:
    """Until ``out``'s descriptor takes bytes or reports an error (its reader gone: the next write says which)."""
    import select

    poller = select.poll()
    poller.register(out.fileno(), select.POLLOUT)
    poller.poll()


def _settle_stdout() -> None:
    """What stdout holds once a command ended (done, failed, stopped) written now, or, where stdout cannot take it (a
    full disk, a reader gone, a non-blocking stdout that takes nothing now: not waited on past a failure), sent
    nowhere: the interpreter's last flush would fail again, with a line of its own and exit status 120."""
    if sys.stdout is None:  # closed by the caller (`>&-`): nothing to write
        return
    try:
        sys.stdout.flush()
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end is closed, which poll reports as an error on it."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or a stdout without a descriptor
        return False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is so that it unwinds as after Ctrl-C (:func:`main`)."""


def _terminate(command_pid: int, signum: int, frame: object) -> None:
    """Raise :class:`Terminated` in the command's process; a process forked from it (a DataLoader worker) that
    inherited this handler ends as SIGTERM ends it by default, as its parent expects when it stops it."""
    if os.getpid() == command_pid:
        raise Terminated
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def run() -> NoReturn:
    """The program's entry (the ``pneumoscan`` command, ``python -m pneumoscan``): :func:`main`'s status, except that a
    command stopped by SIGTERM, once it has cleaned up, ends by that signal, as ``serve`` does: systemd counts that
    as a clean stop, where an exit status of 143 marks the unit failed."""
    status = main()
    # the interpreter's last collections walked every object torch and its libraries made (about half a million):
    # 1-2 s between a command's last line and its exit, Ctrl-C's too; frozen, they are left to the process's end
    gc.freeze()
    if status == 128 + signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    sys.exit(status)


if __name__ == "__main__":
    run()
