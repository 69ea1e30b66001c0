"""INT8 ONNX model of a bundle for CPU serving: ONNX Runtime static quantisation, calibrated on training films.

Quantising moves the scores, so the INT8 model gets its own operating point: its threshold (and TTA threshold)
is chosen again on the INT8 scores of the validation films its FP32 ones were chosen on, with the bundle's own
policy (for an ensemble of cv runs, on out-of-fold INT8 scores, as its FP32 thresholds were). Both live in the
model's sidecar (``model.int8.onnx.json``, under the keys any reader of a sidecar reads), beside the validation AUC
of the FP32 and INT8 models (for a task of more than two classes their macro AUC too), so that
``predict``/``serve --backend onnx-int8`` and other ONNX users read labels at the threshold validated for the scores
they compute; bundle.json records the SHA-256 of the model and sidecar.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    MinMaxCalibrater,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
    save_tensors_data,
)

from pneumoscan.core.atomic import write_atomic
from pneumoscan.core.names import path_list
from pneumoscan.core.metrics import format_figure, has_both_classes, roc_auc, softmax
from pneumoscan.core.options import CALIBRATION_IMAGES
from pneumoscan.data.cache import build_cache
from pneumoscan.data.layouts import Record, discover
from pneumoscan.data.tasks import Task, binary_targets
from pneumoscan.evaluation.model_card import write_model_card
from pneumoscan.data.labelled import LabelledFilms, labelled_films, left_out, patient_groups
from pneumoscan.evaluation.held_out import (CALIBRATION_FILMS, INT8_CALIBRATION_FILMS, HeldOutPolicy, check_held_out,
                                           record_calibration_films)
from pneumoscan.evaluation.operating_point import choose_operating_point, int8_figures, policy_text
from pneumoscan.inference.export import module_onnx, write_int8_spec
from pneumoscan.inference.onnx_runtime import INPUT, INT8_NAME, Int8Key, optimize_graph, session, without_arena
from pneumoscan.inference.predict import Predictor, session_logits, tta_probabilities, tta_views
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.card import (ENSEMBLE, MACRO_AUC, ONNX_NAME, BundleCard, checked_bytes, films_as_trained,
                                   load_card, member_sources, out_of_fold_ensemble, proven_run_split, record_checksum,
                                   replaced_members, run_split, say_unproved_split)
from pneumoscan.models.ensemble_net import EnsembleNet
from pneumoscan.models.run_folder import CvFolder, RunFolder
from .ensemble import cv_members, member_named_logits, out_of_fold

log = logging.getLogger(__name__)
# ONNX Runtime calibrates with graph optimisation off and a range taken on every tensor, so its memory grows with
# the films per call: 8 hold a ten-member ensemble's quantisation to 4 GB (32: 10 GB), and the ranges, min and max
# over the same films, come out the same
CALIBRATION_BATCH = 8
# an INT8 model whose validation AUC falls further below FP32's is not written; for a task of more than two classes
# its macro AUC too, which sees what the AUC of the positive call cannot: bacteria and virus told apart
MAX_AUC_DROP = 0.01


class _Calibration(CalibrationDataReader):
    """Feeds normalised training batches to ONNX Runtime's calibrator, as the FP32 model would read them."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self._batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: batch}


class _Ranges(MinMaxCalibrater):
    """ONNX Runtime's min-max calibrator, whose session is sized as every other (:func:`session`:
    :func:`~pneumoscan.core.cpus.model_threads`): ``quantize_static`` makes its own with ONNX Runtime's default
    threads, one a physical core of the machine, whatever affinity or a CPU quota allow, and takes no session
    options."""

    def create_inference_session(self) -> None:
        self.infer_session = session(Path(self.augmented_model_path), optimized=False)  # as ONNX Runtime's own


def _sample(n_rows: int, n: int) -> np.ndarray:
    """Sorted row numbers of ``n`` of ``n_rows`` films, the same ones on every export (a fixed seed)."""
    return np.sort(np.random.default_rng(0).choice(n_rows, size=min(n, n_rows), replace=False))


def _int8_graph(fp32_graph: Path | bytes, batches: list[np.ndarray]) -> bytes:
    """ONNX Runtime static INT8 of an FP32 graph: QDQ, per-channel INT8 weights, UINT8 activations whose ranges are
    the min and max over ``batches``."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        return _quantized(fp32_graph, batches)
    finally:  # onnxruntime's quantiser logs through logging.info(), whose basicConfig gives the root logger a
        # handler of its own: every later pneumoscan message was printed twice
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)


def _quantized(fp32_graph: Path | bytes, batches: list[np.ndarray]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "fp32.onnx"
        source.write_bytes(fp32_graph if isinstance(fp32_graph, bytes) else Path(fp32_graph).read_bytes())
        optimized, prepared, quantized = (Path(tmp) / name for name in ("optimized.onnx", "prepared.onnx", INT8_NAME))
        optimize_graph(source, optimized)  # quant_pre_process's optimisation, in a session of the capped threads
        quant_pre_process(str(optimized), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        # the ranges of every float tensor (the quantiser takes those it quantises), handed to quantize_static as
        # its calibration cache, which it then reads instead of calibrating
        calibrator = _Ranges(prepared, augmented_model_path=str(Path(tmp) / "augmented.onnx"))
        calibrator.augment_graph()
        calibrator.create_inference_session()
        calibrator.collect_data(_Calibration(iter(batches)))
        ranges = Path(tmp) / "ranges.json"
        save_tensors_data(calibrator.compute_data(), ranges)
        del calibrator  # its session and the films' ranges, before the quantiser's memory
        quantize_static(
            str(prepared), str(quantized), None, quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=ranges,
        )  # fmt: skip
        return quantized.read_bytes()


def _cv_ensemble(bundle: Path, cv_dirs: Sequence[Path | str]) -> EnsembleNet:
    """The ensemble's network, refused unless ``ensemble --cv`` built it from exactly these runs' fold bundles (so
    member i is the one :func:`out_of_fold` takes it for). What the bundle is (an ensemble calibrated out of fold) is
    said before whether the runs given are its own: one calibrated with --data takes --data, whatever the runs."""
    net, card = load_bundle(bundle)
    if card.model != ENSEMBLE:
        raise ValueError(f"{bundle} is not an ensemble: --cv is for one that `pneumoscan ensemble --cv` built")
    if not out_of_fold_ensemble(card):
        calibrated_on = card.train_config.get("calibrated_on")
        raise ValueError(f"{bundle} was calibrated on {calibrated_on or 'films it does not name'}, not on out-of-fold "
                         "scores (its FP32 figures, which the INT8 model's are held to, are not out of fold): --cv is "
                         "for an ensemble built with `ensemble --cv`; give --data (train and val films none of its "
                         "members trained on), or build it again with `ensemble --cv`")
    if card.threshold_records:  # a `threshold` copy keeps calibrated_on, its threshold chosen on other films
        raise ValueError(f"{bundle}'s threshold was chosen on {card.threshold_records[-1]['data']} (`pneumoscan "
                         "threshold`), and its INT8 thresholds would be chosen on the runs' out-of-fold scores, other "
                         "films: quantise first (`pneumoscan export --int8 --cv` the ensemble `threshold` was run on), "
                         "then run `pneumoscan threshold` on the same films, which chooses the INT8 thresholds on "
                         "them too")
    runs = [os.path.realpath(p) for p in cv_members(cv_dirs)]
    recorded = member_sources(card)
    if [os.path.realpath(p) for p in recorded] != runs:
        built_from = ", ".join(dict.fromkeys(str(p.parent.parent) for p in recorded))
        raise ValueError(f"{bundle} was built from the fold bundles of {built_from}, not of "
                         f"{', '.join(map(str, cv_dirs))}: --cv takes the runs it was built from, where it recorded "
                         "them (moved since? build it again there with `ensemble --cv`), in the same order")
    if replaced := replaced_members(card):
        raise ValueError(f"{net.member_label(recorded.index(replaced[0]))} holds other weights than {bundle} was built "
                         "from (its cv run trained again since?): its fold's films are not out of fold for the "
                         "ensemble's own member")
    return net


@dataclasses.dataclass(frozen=True)
class Int8Scores:
    """The shipped INT8 graph's scores on the films its thresholds are chosen on, and what its sidecar says of them:
    the films' classes, the plain class probabilities (its validation figures are measured on them as the FP32
    model's are, the three classes' too, and its plain scores are their positive probability), the TTA scores, each
    film's patient unit for the thresholds' intervals (copies of one film under other names are one patient, as the
    FP32 thresholds' intervals count them), the films as the sidecar (``chosen_on``) and as the policy
    (``named_on``, without this machine's folders) name them, the FP32 AUC on them, the largest change in
    probability quantisation made, the same against the members quantised alone (out of fold only), the films to
    record as its calibration films (None: none, for out-of-fold films), for a task of more than two classes
    the FP32 class probabilities on them, or the macro AUC recorded on them (``fp32_classes``: what
    :func:`int8_figures` measures the FP32 macro AUC by), and the files given with them that chose nothing, and why
    (``left_out``: :func:`~pneumoscan.data.labelled.left_out`)."""

    targets: np.ndarray
    probs: np.ndarray
    tta: np.ndarray
    groups: np.ndarray
    chosen_on: str
    named_on: str
    fp32_auc: float
    change: float
    member_mean_change: float | None
    calibration_records: list[Record] | None
    fp32_classes: np.ndarray | float | None
    left_out: list[dict]

    @property
    def y(self) -> np.ndarray:
        """The binary targets (the positive call's), which the thresholds are chosen on."""
        return binary_targets(self.targets)


def _int8_scores_on_val(int8: Predictor, reference_probs: np.ndarray, data: Path | str,
                        val: LabelledFilms) -> Int8Scores:
    """:class:`Int8Scores` on DATA's validation films ``val``, against the FP32 model's class probabilities on them,
    ``reference_probs``."""
    records, images, targets = val.records, val.images, val.targets
    tta = int8.positive_probability(int8.probabilities(images, tta=True))
    shipped_probs = int8.probabilities(images)
    shipped, reference = int8.positive_probability(shipped_probs), int8.positive_probability(reference_probs)
    return Int8Scores(targets, shipped_probs, tta, patient_groups(records, data)[1],
                      f"the val films of {data}", f"the val films of {Path(data).name}",
                      roc_auc(binary_targets(targets), reference),
                      float(np.abs(reference - shipped).max()), None, records, reference_probs,
                      left_out(val, int8.task))


def _int8_scores_out_of_fold(int8: Predictor, reference_probs: np.ndarray, net: EnsembleNet,
                             cv_dirs: Sequence[Path | str], batches: list[np.ndarray], calib: np.ndarray) -> Int8Scores:
    """:class:`Int8Scores` on every film of the cv runs, each scored by the members that did not train on it, each
    member quantised alone with the ensemble's calibration batches (the shipped graph quantises the same operations
    on the same inputs); the change is measured on the calibration films, against the FP32 model and against the
    mean of those members' scores (the FP32 model's class probabilities on them: ``reference_probs``). The FP32 AUC
    (and macro AUC) is the out-of-fold one ``ensemble --cv`` recorded."""
    card, task = int8.card, int8.task
    log.info("quantising the %d members one by one, for out-of-fold INT8 scores", len(net.members))
    graphs = [_int8_graph(module_onnx(m, card.size), batches) for m in net.members]
    # a session (and its memory arena) per use, not one per member held all along
    oof = out_of_fold(net, [Path(d) for d in cv_dirs], card, task, lambda i: session(graphs[i]))
    probs = softmax(oof.logits, card.temperature)
    tta = task.positive_probability(tta_probabilities(oof.views, card.temperature))
    mean = task.positive_probability(softmax(np.mean([session_logits(session(g), calib) for g in graphs], axis=0),
                                             card.temperature))
    # the shipped graph scored last: once run, its ONNX Runtime memory arena stays, and would add to the peak above
    shipped, reference = (task.positive_probability(p) for p in (int8.probabilities(calib), reference_probs))
    runs, names = ", ".join(map(str, cv_dirs)), ", ".join(Path(d).name for d in cv_dirs)
    return Int8Scores(oof.targets, probs, tta, oof.groups,
                      f"out-of-fold INT8 scores of {runs} (each member quantised alone)",
                      f"out-of-fold INT8 scores of {names}", card.val_metrics["auc"],
                      float(np.abs(reference - shipped).max()), float(np.abs(mean - shipped).max()), None,
                      card.val_metrics.get(MACRO_AUC), oof.left_out)


def _val_films(bundle: Path, data: Path | str, card: BundleCard, task: Task) -> tuple[LabelledFilms, LabelledFilms]:
    """DATA's training films (the calibration pool, whose images are read once sampled) and its validation films;
    refused when DATA lacks either split, when the model trained on a validation film, or when they are all one
    class. DATA is listed once, and its train and val films read from one image cache, its run's own when DATA is
    its run's split: its sides, both splits, the proof that it is a copied bundle's run split, the held-out check
    and the check that its val films chose the FP32 thresholds take them."""
    found = discover(data)
    if missing := {"train", "val"} - {r.split for r in found.records}:
        # said before any film is decoded
        raise ValueError(f"--int8 --data needs labelled films in train and val splits (a run's split.csv, or a "
                         f"dataset with train/ and val/ folders): {data} has no {' or '.join(sorted(missing))} "
                         "split")
    cache = build_cache([r.path for r in found.records if r.split in ("train", "val")], card.spec, progress=True)
    val = labelled_films(data, "val", task, card.spec, found=found, cache=cache)
    records, images, targets = val.records, val.images, val.targets
    proven = _copied_run_split(bundle, card, data, val)
    # copies of training films under other names are refused as `threshold` and `ensemble --data` refuse them: a
    # threshold chosen on their too-good scores is written into the bundle. A copied bundle's run's split, proved by
    # its checksum, is checked against as the split.csv beside it would be: no warning that the films are unchecked.
    # That split, or the one beside a bundle in its run given as DATA, is checked against as DATA was listed above.
    # The one beside it is checked against too where its films are then proved its run's by the card's data checksum
    # or refused (_check_same_films, of a bundle whose thresholds its run chose): one taken without proof (an older
    # card's) is said so once that check has left it unproved, not before
    beside = run_split(bundle, card, say=False)
    same = _same_file(beside, data)
    given_split = data if proven else beside if same or not _chosen_off_run(bundle, card) else None
    check_held_out([bundle], records, "choose the INT8 thresholds", policy=HeldOutPolicy(refuse_copies=True),
                   run_split=given_split, run_records=val.every if proven or same else None)
    if not _check_same_films(bundle, card, task, data, val, proven, beside) and beside is not None and (
            given_split is beside):
        say_unproved_split(bundle, card)
    pool = labelled_films(data, "train", task, card.spec, found=found, cache=cache)
    if not pool.records or len(images) == 0:
        raise ValueError(f"{data} must hold train and val films of the {card.task} task (a run's split.csv)")
    if not has_both_classes(binary_targets(targets)):
        raise ValueError(f"the val films of {data} are all one class: no threshold can be chosen on them")
    if task.multiclass and (absent := [c for k, c in enumerate(task.classes) if not (targets == k).any()]):
        raise ValueError(f"the val films of {data} hold no {' or '.join(absent)} film: the INT8 model's macro AUC "
                         f"of the {len(task.classes)} classes cannot be checked against FP32's on them")
    return pool, val


def _same_file(split: Path | None, data: Path | str) -> bool:
    """Whether DATA is SPLIT, the split.csv of its run beside a bundle (None: none), under any name."""
    return split is not None and split.is_file() and os.path.realpath(split) == os.path.realpath(data)


def _copied_run_split(bundle: Path, card: BundleCard, data: Path | str, val: LabelledFilms) -> bool:
    """Whether DATA is the split of the run BUNDLE was copied out of (no split.csv beside it), whose val films chose
    its thresholds (no `threshold` or `ensemble --data` chose them on others), proved by the card's data checksum
    (:func:`proven_run_split`, given DATA's val films as read: ``val``): the same films, pixels, labels and sides, in
    the same order."""
    return not _chosen_off_run(bundle, card) and proven_run_split(bundle, data, read=val).as_trained


def _chosen_off_run(bundle: Path, card: BundleCard) -> bool:
    """Whether BUNDLE's FP32 thresholds were chosen on other films than its run's val films, by `pneumoscan
    threshold` (its card's ``threshold_records``) or `ensemble --data` (a calibration_films.csv in it)."""
    return bool(card.threshold_records) or (bundle / CALIBRATION_FILMS).exists()


def _check_same_films(bundle: Path, card: BundleCard, task: Task, data: Path | str, val: LabelledFilms,
                      proven: bool, own: Path | None) -> bool:
    """Refuse val films of ``data`` (``val``) that are not the films BUNDLE's FP32 thresholds were chosen on, all of
    them: its calibration_films.csv where `pneumoscan threshold` or `ensemble --data` chose them on other films than
    its run's, else its run's val films (:func:`_run_val_films`). The INT8 thresholds replace the FP32 ones for
    onnx-int8 and must be comparable: chosen on other films they come from another population (a site's threshold
    for 0.95 sensitivity, and an INT8 one from the training run's films that missed twice the site's pneumonia
    films; or from half of the films, whose sensitivity was met on the other half too). The run's films are checked
    by their pixels and labels too (the card's data checksum, :func:`films_as_trained`, from the films as DATA's
    cache holds them where DATA is the split beside BUNDLE): rewritten in place, or another machine's files under the
    same paths, they are other films. A bundle copied out of its run (no split.csv of its run beside it:
    :func:`~pneumoscan.models.card.run_split`) is taken only with
    DATA its run's split, wherever its films are now, told by that checksum (``proven``: :func:`_copied_run_split`):
    else which films chose its thresholds, and whether DATA's val films are new to it, are unknown, and an INT8
    threshold chosen on its training films (too good) or on another population would be written. ``own``: the
    split.csv of its run beside it (:func:`~pneumoscan.models.card.run_split`; None: none). Returns whether the run's
    films were proved by that checksum (a card that records none, or thresholds chosen off the run, prove nothing)."""
    listed, split = bundle / CALIBRATION_FILMS, RunFolder.of(bundle).split
    by_list = _chosen_off_run(bundle, card)
    if not by_list and own is None:
        if proven:
            return True  # DATA is the run's split: the same films, pixels, labels and sides, in the same order
        raise ValueError(f"{bundle} has no {split.name} of its run beside it (copied out of its run folder?), and "
                         f"the films of {data} are not the ones it was trained and validated on (its card's data "
                         f"checksum{'' if card.data_checksum else ', which it does not record'}): which films chose "
                         "its thresholds, and whether those val films are new to it, cannot be checked, and its INT8 "
                         "thresholds, which replace the FP32 ones for onnx-int8, would be chosen on them; quantise it "
                         f"in its run folder, or give --data its run's {split.name} with the films it lists where it "
                         "lists them (the same files)")
    run: Sequence[Record] = []
    if by_list:
        chose = {os.path.realpath(r.path) for r in discover(listed).records} if listed.exists() else set()
    else:  # DATA itself, as listed, where it is the split beside BUNDLE
        run = val.every if _same_file(split, data) else discover(split).records
        chose = _run_val_films(run, task, val)
    given = {os.path.realpath(r.path) for r in val.records}
    if given != chose:
        raise _chosen_on_other_films(bundle, card, data, given, chose)
    if not by_list and not films_as_trained(bundle, run, read=val.cache):
        raise ValueError(f"the films {split} lists have other pixels or labels than {bundle} was trained and validated "
                         "on (rewritten in place since, other files under the same paths on this machine, or decoded "
                         "otherwise by this version?): its INT8 thresholds would be chosen on other films than its "
                         "FP32 ones; quantise it where its run's films are")
    return not by_list and bool(card.data_checksum)


def _run_val_films(run: Sequence[Record], task: Task, val: LabelledFilms) -> set[str]:
    """The real paths of the films that chose the FP32 thresholds of a bundle in its run: the val films of its run's
    split.csv (``run``) of its task that can be read (it lists the files its training could not read too, which
    chose nothing; a file read then and not now changes the pixels' checksum, checked apart)."""
    unreadable = {os.path.realpath(e["path"]) for e in val.unreadable}
    return {os.path.realpath(r.path) for r in run if r.split == "val" and task.target(r) is not None} - unreadable


def _chosen_on_other_films(bundle: Path, card: BundleCard, data: Path | str, given: set[str],
                           chose: set[str]) -> ValueError:
    """The refusal of DATA's val films (``given``, real paths) where BUNDLE's FP32 thresholds were chosen on other
    films (``chose``), naming what chose them and what to give instead."""
    listed, split = bundle / CALIBRATION_FILMS, RunFolder.of(bundle).split
    where = f"films it lists in {CALIBRATION_FILMS}" if _chosen_off_run(bundle, card) else "val films"
    which = f"only {len(given)} of the {len(chose)} {where}" if given < chose else "other films"
    other = f"and its INT8 thresholds would be chosen on the val films of {data}, {which}"
    if card.threshold_records:
        return ValueError(f"{bundle}'s threshold was chosen on {card.threshold_records[-1]['data']} (`pneumoscan "
                          f"threshold`), {other}: quantise first (`pneumoscan export --int8` the bundle `threshold` "
                          "was run on), then run `pneumoscan threshold` on the same films, which chooses the INT8 "
                          "thresholds on them too")
    if listed.exists():
        return ValueError(f"{bundle}'s temperature and thresholds were chosen on "
                          f"{(card.train_config or {}).get('calibrated_on')} (`pneumoscan ensemble --data`), {other}: "
                          f"give --data a manifest whose val split is the films listed in {listed}, all of them, and "
                          "whose train split holds films for the activation calibration")
    return ValueError(f"{bundle}'s thresholds were chosen on the val films of its run's {split}, {other}: give --data "
                      f"{split} (or a manifest whose val split is those films, all of them); to choose the thresholds "
                      "on other films, quantise with it, then run `pneumoscan threshold` on them, which chooses the "
                      "INT8 thresholds on the same films")


def _films_to_give(bundle: Path) -> str:
    """What the refusal of neither --data nor --cv names for BUNDLE: the runs an ensemble built with `ensemble --cv`
    was built from (--data is always refused for it), or the split.csv beside a trained bundle; nothing else."""
    try:
        card = load_card(bundle)
    except (OSError, ValueError):
        return ""  # the load that follows says what is wrong with the bundle
    if out_of_fold_ensemble(card):
        runs = " ".join(dict.fromkeys(str(p.parent.parent) for p in member_sources(card)))
        return f": {bundle} was built by `ensemble --cv`, so give --cv {runs}"
    split = run_split(bundle, card) if card.model != ENSEMBLE else None
    return f": for {bundle}, --data {split}" if split is not None else ""


@without_arena()  # its sessions each run once through large batches, the FP32 one held to the end
def quantize_bundle(bundle: Path | str, data: Path | str | None = None, calibration_images: int = CALIBRATION_IMAGES,
                    cv_dirs: Sequence[Path | str] | Path | str = ()) -> Path:
    """Write BUNDLE/model.int8.onnx and its sidecar. DATA is labelled data with train and val splits (the run's
    split.csv): activations are calibrated on ``calibration_images`` of its training films, and the thresholds are
    chosen on its validation films, which must be the films the FP32 thresholds were chosen on
    (:func:`_check_same_films`). An ensemble built by ``ensemble --cv`` has no such films; with ``cv_dirs`` (the
    runs it was built from) its activations are calibrated on films of the runs and its thresholds chosen on
    out-of-fold INT8 scores, as its FP32 thresholds were on out-of-fold scores.
    Refuses an INT8 model whose validation AUC is more than MAX_AUC_DROP below FP32's, and for a task of more than
    two classes one whose macro AUC is (its classes told apart worse, which the AUC of the positive call misses)."""
    cv_dirs = path_list(cv_dirs)  # one run given alone, not its characters
    bundle = Path(bundle)
    if (data is None) == (not cv_dirs):
        raise ValueError("give labelled films with train and val splits (--data) or the cv runs the ensemble was "
                         f"built from (--cv), not both and not neither{_films_to_give(bundle)}")
    if not (bundle / ONNX_NAME).exists():
        raise ValueError(f"{bundle} has no {ONNX_NAME}: run `pneumoscan export {bundle}` first")
    fp32 = Predictor(bundle, backend="onnx")
    card = fp32.card  # the card it was checked by: one read apart could be another bundle's
    val: LabelledFilms | None = None
    if cv_dirs:
        net = _cv_ensemble(bundle, cv_dirs)
        train = labelled_films(CvFolder(Path(cv_dirs[0])).split(0), None, fp32.task, card.spec)  # the runs' films
    else:
        train, val = _val_films(bundle, data, card, fp32.task)
    calib = train.images_at(_sample(len(train.records), calibration_images))  # those films alone read
    reference = _fp32_reference(fp32, calib, None if val is None else val.images)
    batches = [fp32.onnx_inputs(calib[i : i + CALIBRATION_BATCH]) for i in range(0, len(calib), CALIBRATION_BATCH)]
    # the graph is kept in memory until its figures pass: a failure or an interruption before then leaves the
    # bundle's files (an earlier INT8 export included) as they were, never an unchecked graph under its name
    graph = _int8_graph(checked_bytes(bundle / ONNX_NAME, card.files.get(ONNX_NAME)), batches)  # the graph checked
    int8 = Predictor(bundle, backend="onnx", session=session(graph))  # its thresholds are chosen below
    scored = (_int8_scores_on_val(int8, reference, data, val) if val is not None
              else _int8_scores_out_of_fold(int8, reference, net, cv_dirs, batches, calib))
    plain = fp32.task.positive_probability(scored.probs)
    point = choose_operating_point(scored.y, plain, scored.tta, *card.threshold_targets, scored.groups)
    # the card's policy, on these films, named without the folders above them: the service shows the policy to its
    # clients, who are not to learn this machine's paths (the sidecar's int8_thresholds_chosen_on has them)
    policy = policy_text(*card.threshold_targets, scored.named_on)
    figures = {Int8Key.CALIBRATION_IMAGES: int(len(calib)), **int8_figures(
        scored.probs, scored.targets, fp32.task, point, policy, scored.chosen_on, scored.fp32_auc, scored.fp32_classes,
        scored.change, scored.groups, scored.left_out)}
    if scored.member_mean_change is not None:  # the shipped graph against the members quantised alone
        figures[Int8Key.MAX_MEMBER_MEAN_CHANGE] = scored.member_mean_change
    _auc_gate(fp32.task, figures)
    out = _write_int8(bundle, graph, figures, scored.calibration_records)
    log.info("INT8 model %s: val AUC %s (FP32 %s), threshold %.4f", out,
             *(format_figure(figures[key], 4) for key in (Int8Key.VAL_AUC_INT8, Int8Key.VAL_AUC_FP32)), point.threshold)
    return out


def _fp32_reference(fp32: Predictor, calib: np.ndarray, val: np.ndarray | None) -> np.ndarray:
    """The FP32 model's class probabilities on the films the INT8 change is measured on: the val films, or for a cv
    ensemble, which has none (``val`` None), the calibration films ``calib``. FP32 scores that are not finite would
    set NaN activation ranges: refused before quantising, the calibration films' first (an ensemble's naming the
    member, its one graph giving only their mean); an ensemble's val films are checked in their TTA views too, since
    its INT8 TTA threshold is chosen on them."""
    calib_logits = member_named_logits(fp32, calib)
    if val is None:
        return softmax(calib_logits, fp32.card.temperature)
    reference = softmax(member_named_logits(fp32, val), fp32.card.temperature)
    for view in tta_views(val) if fp32.card.model == ENSEMBLE else ():
        if view is not val:  # the unchanged view is the val films, scored above
            member_named_logits(fp32, view)
    return reference


def _auc_gate(task: Task, figures: dict) -> None:
    """Refuse an INT8 model whose validation AUC (``figures``: the sidecar's) falls more than MAX_AUC_DROP below
    FP32's, and for a task of more than two classes one whose macro AUC does (:func:`_three_class_gate`)."""
    int8_auc, fp32_auc = figures[Int8Key.VAL_AUC_INT8], figures[Int8Key.VAL_AUC_FP32]
    if int8_auc < fp32_auc - MAX_AUC_DROP:
        raise ValueError(f"INT8 validation AUC {format_figure(int8_auc, 4)} is more than {MAX_AUC_DROP} below FP32's "
                         f"{format_figure(fp32_auc, 4)}: not written; serve this bundle with --backend onnx")
    if (classes := figures.get(Int8Key.THREE_CLASS)) is not None:
        _three_class_gate(task, classes)


def _three_class_gate(task: Task, figures: dict) -> None:
    """Refuse an INT8 model whose macro AUC (the sidecar's figures of the classes, :attr:`Int8Key.THREE_CLASS`)
    falls more than MAX_AUC_DROP below FP32's on the films they name, or cannot be measured there."""
    fp32, int8 = figures[Int8Key.MACRO_AUC_FP32], figures[Int8Key.MACRO_AUC_INT8]
    classes = ", ".join(task.classes)
    if fp32 is None or int8 is None:
        raise ValueError(f"no macro AUC ({classes}) of the FP32 and INT8 models on {figures['films']} (a class without "
                         "films there, or an ensemble whose card records none: build it again with `ensemble --cv`): "
                         "the INT8 model's class scores cannot be checked; not written")
    if int8 < fp32 - MAX_AUC_DROP:
        raise ValueError(f"INT8 validation macro AUC ({classes}) {format_figure(int8, 4)} is more than {MAX_AUC_DROP} "
                         f"below FP32's {format_figure(fp32, 4)}: not written; serve this bundle with --backend onnx")


def _write_int8(bundle: Path, graph: bytes, figures: dict, calibration_records: list[Record] | None) -> Path:
    """The INT8 graph and its sidecar, their checksums in bundle.json, the model card with its INT8 section, and
    the films that chose its thresholds (``calibration_records``; None: out-of-fold films, which are not listed)."""
    out = write_atomic(bundle / INT8_NAME, graph)
    write_int8_spec(bundle, figures)
    record_checksum(bundle, INT8_NAME)  # the backend refuses a file that differs from the one written here
    write_model_card(bundle, load_card(bundle))  # with its INT8 section: the thresholds onnx-int8 labels at
    (bundle / INT8_CALIBRATION_FILMS).unlink(missing_ok=True)  # an earlier export's films chose other thresholds
    if calibration_records is not None:  # evaluate --backend onnx-int8 on them says its figures are optimistic
        record_calibration_films(bundle, calibration_records, INT8_CALIBRATION_FILMS)
    return out
