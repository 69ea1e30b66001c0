"""Training: patient-grouped validation, class-weighted loss, warm start + partial fine-tuning, then the epoch
loop of :func:`pneumoscan.training.engine.fit` with the callbacks of :mod:`pneumoscan.training.callbacks` (the
optimiser recipe's schedule, early stopping, best weights, atomic per-epoch checkpoints with exact resume,
experiment tracking) and finalisation: temperature and threshold chosen on validation, and the bundle
(:func:`~pneumoscan.training.finish.finish_bundle`, as ``ensemble`` finishes its bundle). Runs alone or under torchrun
(DDP)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from pneumoscan.core.atomic import write_atomic
from pneumoscan.core.digests import file_sha256
from pneumoscan.core.logs import progress
from pneumoscan.core.metrics import binary_metrics, format_figure, roc_auc, softmax
from pneumoscan.core.names import shown
from pneumoscan.data.appearance import MIN_FILMS, Appearance
from pneumoscan.data.cache import ImageCache, data_checksum
from pneumoscan.data.copies import picture_groups, shared_patients
from pneumoscan.data.dataset import CachedImages
from pneumoscan.data.labelled import files_left_out, films_without_patient_id, patient_groups
from pneumoscan.data.layouts import Record, discover, named_datasets, recognising_layout, write_manifest
from pneumoscan.data.preprocess import PreprocessSpec, source_of
from pneumoscan.data.split import sampled_split
from pneumoscan.data.tasks import Task, binary_targets, get_task, select, warn_untyped
from pneumoscan.data.transforms import batch_mixing, normalize, train_transform
from pneumoscan.evaluation.held_out import check_held_out
from pneumoscan.evaluation.operating_point import calibrated_temperature, check_better_than_chance
from pneumoscan.evaluation.compare import TRAINING_DATA
from pneumoscan.evaluation.evaluate import films_digest
from pneumoscan.evaluation.report import MODEL_ID, write_report
from pneumoscan.inference.export import check_exportable
from pneumoscan.inference.predict import Predictor, tta_views
from pneumoscan.models import registry
from pneumoscan.models.bundle import load_bundle, load_weights_into, save_bundle
from pneumoscan.models.card import (APPEARANCE_FROM_INIT, BEST_SO_FAR, INIT_CARD, INIT_IN_PLACE, INIT_SAMPLE,
                                    KERMANY_SOURCE, TEACHER_CARDS, TRAINED_BY, TRAINING_FILMS, BundleCard,
                                    TrainingSource, bundle_checksums, load_appearance, load_card, runtime_versions,
                                    sample_record, started_sources, trained_sample)
from pneumoscan.models.run_folder import RunFolder
from .callbacks import (
    BestWeights,
    Checkpoint,
    EarlyStopping,
    EpochHook,
    Finalize,
    History,
    ReduceOnPlateau,
    TimeBudget,
    WeightAverage,
    cosine,
    restore,
)
from .config import TrainConfig
from .distill import check_teachers, distilled_targets, teacher_probabilities
from .distributed import Dist, gather, gather_shards, setup_distributed, shard
from .engine import OUT_OF_SCALE_LOSS, Callback, State, divergence_advice, fit
from .finish import ScoredFilms, finish_bundle
from .resume import (check_same_recipe, load_checkpoint, machine_cache, made_by, resume_from, run_record,
                     save_checkpoint, split_change, trained_by)
from .tracking import make_trackers
from .warm_start import warm_start_head

log = logging.getLogger(__name__)


# -- pieces of a run -----------------------------------------------------------------------------------------


def split_records(data: Path | str, cfg: TrainConfig,
                  sample: dict[str, int | None] | None = None) -> tuple[list[Record], dict[str, int | None]]:
    """Train/val records: the given split manifest, DATA's own train/ and val/ folders (the reference protocol), or
    a patient-grouped split of everything but test (the config refuses both of the first two), of a sample of
    ``cfg.patients`` patients if set (:func:`~pneumoscan.data.split.sampled_split`); and the record of the sample
    the films are (:func:`~pneumoscan.models.card.sample_record`, empty without one), which the card states: that
    sample's, or ``sample``, the record of the sample a manifest holds (cv's folds, whose runs take it as it is)."""
    if sample and not cfg.split_csv:
        raise ValueError(f"a record of a sample ({sample}) describes a split_csv manifest's films; without one, "
                         "set patients")
    sample = sample or {}
    if cfg.split_csv:
        records = _manifest_records(cfg.split_csv)
    elif cfg.validate_on_val_folder:
        records = _val_folder_records(data)
    else:
        records, sampled_from = sampled_split(data, cfg.val_fraction, cfg.seed, cfg.patients)
        sample = sample_record(cfg.patients, sampled_from, cfg.seed)
    if not {"train", "val"} <= {r.split for r in records}:
        raise ValueError("training needs records in both a 'train' and a 'val' split")
    overlap = shared_patients(records)
    if tested := sorted({p for pair in ("train/test", "val/test") for p in overlap.get(pair, [])}):
        log.warning("%s: %d patient(s) have films in its test split and in train or val (e.g. %s): figures on that "
                    "test split would be optimistic (evaluate warns of them again); keep each patient's films in one "
                    "split", shown(cfg.split_csv), len(tested), shown(tested[0]))
    records = [r for r in records if r.split in ("train", "val")]
    # the threshold, the temperature and early stopping are chosen on val: on a patient trained on, they would
    # rest on films the model has all but seen (the default split and cv's folds keep each patient on one side)
    source = shown(cfg.split_csv) if cfg.split_csv else f"{shown(data)}'s train/ and val/ folders"
    if shared := overlap["train/val"]:
        raise ValueError(f"{source}: {len(shared)} patient(s) have films in both train and val (e.g. "
                         f"{shown(shared[0])}), so validation would choose the threshold on patients trained on; "
                         "keep each patient's films in one split (`pneumoscan split` writes such a manifest)")
    if cfg.split_csv or cfg.validate_on_val_folder:  # the default split keeps copies on one side itself
        _refuse_copies_across(records, source)
    return records, sample


def _manifest_records(manifest: Path | str) -> list[Record]:
    """The films of a split manifest (split_csv), refused where it names no train or no val film: training would
    otherwise stop later with a reason that does not name the manifest. Films of no split it knows are left out,
    with a warning."""
    records = discover(manifest).records
    if not any(r.split for r in records):
        raise ValueError(f"{shown(manifest)} gives no film a split (it has no split column, or an empty "
                         "one), so split_csv (--split-csv) names no train and val films: give a manifest with a "
                         "split column (`pneumoscan split DATA --out FILE` writes one), or leave split_csv out and "
                         "training splits DATA by patient itself")
    sides = [side for side in ("train", "val", "test") if any(r.split == side for r in records)]
    if empty := [side for side in ("train", "val") if side not in sides]:
        raise ValueError(f"{shown(manifest)} gives no film the split {' or '.join(empty)} (it has "
                         f"{', '.join(sides)}), so split_csv (--split-csv) names no {' and '.join(empty)} films: "
                         "give each patient's films a train or val split (`pneumoscan split DATA --out FILE` "
                         "writes a patient-grouped one of everything but test), or leave split_csv out and "
                         "training splits DATA by patient itself")
    if unsided := [r for r in records if r.split not in ("train", "val", "test")]:
        log.warning("%d film(s) of %s are in no train, val or test split (e.g. %s, split %r): left out",
                    len(unsided), shown(manifest), shown(unsided[0].path), unsided[0].split)
    return records


def _val_folder_records(data: Path | str) -> list[Record]:
    """DATA's train/ and val/ films (validate_on_val_folder, the reference protocol), refused where val/ holds
    none, with a warning where it holds too few for its figures to rank recipes."""
    found = discover(data).records
    if not any(r.split == "val" for r in found):
        splits = list(dict.fromkeys(r.split for r in found if r.split))  # in the layout's order
        raise ValueError(f"validate_on_val_folder (--val-folder) validates on the val/ folder of {shown(data)}, "
                         "which holds no film ("
                         + (f"it has {', '.join(splits)}" if splits else "it has no split folders")
                         + "): leave it out and training validates on a patient-grouped split of everything "
                         "but test/ (val_fraction, --set val_fraction=), or give a split_csv (--split-csv)")
    records = [r for r in found if r.split in ("train", "val")]
    per_class = Counter(r.label for r in records if r.split == "val")
    if per_class and min(per_class.values()) < 50:
        log.warning("validating on the val/ folder of %s: %d films. The threshold, the temperature and early "
                    "stopping rest on them, and one film moves sensitivity or specificity by %.1f points; "
                    "its figures cannot rank recipes (the patient-grouped split, the default, can).",
                    data, sum(per_class.values()), 100 / min(per_class.values()))
    return records


def _refuse_copies_across(records: Sequence[Record], source: str) -> None:
    """Refuse a split with copies of one film (byte for byte, re-encoded or resized: :func:`picture_groups`) on
    both sides: one child's film under two names and patient ids escapes the patient check, and validation would
    choose the threshold on a film trained on."""
    side = {r.path: r.split for r in records}
    across = [paths for _, paths in picture_groups(list(side)) if len({side[p] for p in paths}) > 1]
    if across:
        val = next(p for p in across[0] if side[p] == "val")
        train = next(p for p in across[0] if side[p] == "train")
        raise ValueError(f"{source}: {len(across)} film(s) are in both train and val under other names (byte for "
                         f"byte or re-encoded; e.g. {shown(val)} in val, {shown(train)} in train), so validation would "
                         "choose the threshold on films trained on; keep copies of one film in one split (`pneumoscan "
                         "split` writes such a manifest)")


def stream_seed(seed: int, *keys: int) -> int:
    """An independent random stream per (seed, keys): ``seed + epoch`` would make seed 1's epoch 0 replay seed 0's
    epoch 1, so runs with neighbouring seeds would share most of their data order and augmentation."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def freeze_frozen_norms(model: torch.nn.Module) -> None:
    """Keep BatchNorm statistics of frozen layers as pretrained: small CPU batches would only add noise."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """The model's logits for the films of ``loader``, in its order; (0, 0), without a forward pass, for none (a
    process whose share is empty, fewer films than processes: :func:`gather_shards` leaves its rows out)."""
    model.eval()
    out = [model(x.to(device, non_blocking=True, memory_format=torch.channels_last)).float().cpu() for x, _ in loader]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def epoch_metrics(logits: np.ndarray, targets: np.ndarray, task: Task, weights: torch.Tensor | None = None) -> dict:
    """Loss (class-weighted like the training loss, so the two curves share a scale), accuracy, AUC, sensitivity
    and specificity at 0.5."""
    probs = softmax(logits)
    pos = task.positive_probability(probs)
    y = binary_targets(targets)
    m = binary_metrics(y, pos, 0.5)
    auc = roc_auc(y, pos)
    weight = None if weights is None else weights.cpu()
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), weight=weight).item())
    return {"loss": loss, "acc": float((probs.argmax(1) == targets).mean()), "auc": auc, "sens": m["sensitivity"],
            "spec": m["specificity"]}


def check_validation_scores(logits: np.ndarray, task: Task, state: State) -> None:
    """Refuse, as a divergence, an epoch whose model cannot rank the validation films: logits that are not finite
    (the epoch's last step overflowed the weights; its loss, checked before the step, was finite), one
    probability for every film (logits grown so large that the softmax saturates, or a network gone dead), or a
    probability of exactly 0 or 1 for every film (saturated both ways: logits that far apart, 37 and more, give
    two ties, which no temperature calibrates), which every training loss on the way left finite. Validation failed
    on the first in the metrics' words, naming no epoch; the second was taken: a bundle at threshold 0 that called
    every film positive; the third too, from a backbone whose features were 1e12: threshold 0.5 between the ties.
    What to change follows what was seen (:func:`~pneumoscan.training.engine.divergence_advice`)."""
    where = f"training diverged at epoch {state.epoch + 1} (validation after step {state.step})"
    advice = divergence_advice(state)
    if bad := int((~np.isfinite(logits)).any(axis=1).sum()):
        raise ValueError(f"{where}: the validation logits of {bad} of {len(logits)} films are not finite: {advice}")
    pos = task.positive_probability(softmax(logits))
    if np.ptp(pos) == 0:
        raise ValueError(f"{where}: the model scores all {len(pos)} validation films alike ({task.positive_formula} "
                         f"= {pos[0]:.3g}, logits up to {np.abs(logits).max():.3g}), so no threshold tells one film "
                         f"from another: {advice}")
    if np.all((pos == 0) | (pos == 1)):
        raise ValueError(f"{where}: the model scores every one of the {len(pos)} validation films 0 or 1 "
                         f"({task.positive_formula}, logits up to {np.abs(logits).max():.3g}), certain of each, so it "
                         f"ranks them in two ties that no temperature calibrates: {advice}")


def absent_classes(targets: np.ndarray, task: Task) -> list[str]:
    """The task's classes that no film of ``targets`` (class indices) has: a model cannot learn a class it never
    sees, and validation without one cannot choose a threshold."""
    counts = np.bincount(targets, minlength=len(task.classes))
    return [c for c, n in zip(task.classes, counts) if n == 0]


# -- the run -----------------------------------------------------------------------------------------------


@dataclass
class Data:
    """The run's images: the cache, the train/val datasets and their loaders (each rank its share)."""

    spec: PreprocessSpec
    data_fingerprint: str  # ImageCache.data_fingerprint: the cache key (paths and file times too) and the pixels
    checksum: str  # the films' pixels and labels (data_checksum)
    train_set: CachedImages
    val_set: CachedImages
    val_loader: DataLoader  # this rank's share of val_set (shard): gather_shards joins the ranks' in its order
    sampler: DistributedSampler
    train_loader: DataLoader
    plain: tuple[CachedImages, CachedImages]  # train and val without augmentation, for the warm start
    class_weights: torch.Tensor | None  # inverse class frequency, or None without cfg.class_weights
    val_records: list[Record]  # the validation films, in val_set's order: their patients count in the CIs
    val_left_out: list[dict]  # the val side's files the validation figures leave out, and why (files_left_out)
    sample: dict = field(default_factory=dict)  # split_records', the starting bundle's and the teachers', for the card
    # where the films the weights learn from came from (the starting bundle's, the run's, its teachers': training_data)
    sources: list[TrainingSource] = field(default_factory=list)


# a checkpoint's record of the training data of the bundle a run started from (--init), its sources marked
# started_from (models.card.started_sources): that bundle, fine-tuned in place, is gone on --resume
INIT_DATA = "init_data"
# a checkpoint's record of the image content check of the bundle a run started from (--init), which a run on too few
# films to learn their appearance keeps (training_appearance): that bundle, fine-tuned in place, is gone on --resume
INIT_APPEARANCE = "init_appearance"


def build_model(cfg: TrainConfig, task: Task, ctx: Dist,
                from_checkpoint: bool = False) -> tuple[torch.nn.Module, bool, list[str], BundleCard | None]:
    """The model first, with the weights it starts from: a wrong size or weights that cannot be had fail before the
    split and the cache are built, and a ``cfg.init`` bundle inside the run folder (fine-tuning a run's own bundle)
    is read before the run folder is cleared. Returns the model, whether it starts from ImageNet weights, the
    classifier tensors a ``cfg.init`` bundle could not give (a new task's), which start untrained, and that bundle's
    card, as the run's card records it (:func:`start_record`). Which layers
    train is set here too, so that ``trainable_stages`` beyond the model's stages is refused before the run folder
    is cleared (the warm start fits the classifier, which always trains). ``from_checkpoint``: the run goes on from
    its checkpoint, which holds every weight, so a ``cfg.init`` bundle is not read: fine-tuning a run's own bundle
    in place cleared that bundle at its start, and a resume then failed on it."""
    imagenet = cfg.pretrained and cfg.init is None and registry.has_pretrained(cfg.model)
    if ctx.main and cfg.pretrained and cfg.init is None and not imagenet:
        log.info("%s has no pretrained weights: trained from scratch", cfg.model)
    try:
        model = registry.create(cfg.model, len(task.classes), in_chans=1, pretrained=imagenet,
                                image_size=cfg.image_size, **cfg.model_kwargs)
    except TypeError as e:  # an argument the model's constructor does not take: a reason, not a traceback
        if not cfg.model_kwargs:
            raise
        raise ValueError(f"model_kwargs {cfg.model_kwargs} do not fit {cfg.model}: {e}") from None
    check_exportable(model, cfg.image_size, cfg.model, len(task.classes))
    # the card read once: the weights are checked against it, and the size warning below reads it
    started = load_card(cfg.init) if cfg.init is not None and not from_checkpoint else None
    fresh = load_weights_into(model, cfg.init, started) if started is not None else []
    if ctx.main and started is not None:
        log.info("started from %s%s", cfg.init, f" with a new classifier ({', '.join(fresh)})" if fresh else "")
        # --model must be given again, and so must the size: the recipe's 192 px is not the bundle's own
        if started.size != cfg.image_size or started.resize_policy != cfg.resize_policy:
            log.warning("%s was trained on %d px films (%s), and this run trains on %d px (%s): its weights start "
                        "on films of another scale; give image_size (--image-size) %d (and resize_policy %s) to "
                        "fine-tune it on its own", cfg.init, started.size, started.resize_policy, cfg.image_size,
                        cfg.resize_policy, started.size, started.resize_policy)
    # from scratch, or a bundle of one of the small models (they have no stages): train it all
    transfer = imagenet or cfg.init is not None
    registry.set_trainable(model, cfg.trainable_stages if transfer and hasattr(model, "group_matcher") else None)
    return model, imagenet, fresh, started


def start_record(cfg: TrainConfig, started: BundleCard | None, in_place: bool) -> dict:
    """What the run's card records of the bundle it started from (``started``: its card, None without one), read at
    the run's start: its bundle.json's checksum (:data:`~pneumoscan.models.card.INIT_CARD`), which tells it from a
    bundle trained again at its path, and its sample of patients (:func:`~pneumoscan.models.card.trained_sample`,
    empty when it learnt from all the patients of its data: :data:`~pneumoscan.models.card.INIT_SAMPLE`).
    ``in_place``: the run fine-tunes its own bundle (:func:`check_in_place`), which it replaces, so the checksum is
    of a card no longer there (:data:`~pneumoscan.models.card.INIT_IN_PLACE`): read as the run ended, it was of no
    card, and none was recorded."""
    if started is None:
        return {}
    return {INIT_CARD: bundle_checksums([cfg.init])[0], INIT_SAMPLE: trained_sample(started),
            **({INIT_IN_PLACE: True} if in_place else {})}


def training_data(data: Path | str, cfg: TrainConfig, records: Sequence[Record]) -> list[TrainingSource]:
    """Where the run's training and validation films (``records``) came from, as its card records it: the films a
    published dataset's file-name rules name are that dataset's (:func:`~pneumoscan.data.layouts.named_datasets`:
    Kermany et al.'s), the others are what ``cfg.data_name`` says, with ``cfg.data_licence``, or a source not
    described (name ""), which the card says as such, never as Kermany's. A name given for films none of which it
    could name is refused: the card would name a source of no film."""
    films = [r for r in records if r.split in ("train", "val")]
    named = named_datasets(films)
    own = named.pop(("", ""), 0)
    if cfg.data_name and not own:
        datasets = " and ".join(name for name, _ in named)
        raise ValueError(f"data_name (--data-name) {cfg.data_name!r} names the source of training films no published "
                         f"dataset's file names name, and every one of the {len(films)} given is named as {datasets}'s "
                         "films are: the card names that dataset itself; leave data_name (and data_licence) out")
    layout = "manifest" if cfg.split_csv else getattr(recognising_layout(Path(data)), "name", "")
    sources = [TrainingSource(name=name, licence=licence, films=n, layout=layout, started_from=False)
               for (name, licence), n in named.items()]
    if own:
        sources.append(TrainingSource(name=cfg.data_name or "", licence=cfg.data_licence or "", films=own,
                                      layout=layout, started_from=False))
        if not cfg.data_name:
            log.warning("%d of the %d training and validation films are named by no published dataset's rules, and "
                        "data_name (--data-name) does not say where they come from: the model card says their source "
                        "was not described", own, len(films))
    return sources


def start_appearance(cfg: TrainConfig, started: BundleCard, spec: PreprocessSpec) -> Appearance | None:
    """The image content check of the bundle the run starts from (``started``: its card), read at the run's start
    (fine-tuned in place, that bundle is cleared with the run folder), for a run on too few films to learn their own
    (:func:`training_appearance`); None when it records none, or when it prepares films otherwise than the run
    (``spec``), since its limits are of films as it reads them (said in the log)."""
    appearance = load_appearance(cfg.init, started)
    if appearance is not None and started.spec != spec:
        log.info("the image content check of init %s is of films prepared otherwise (%s) than this run's (%s): it is "
                 "not kept", cfg.init, started.spec.said, spec.said)
        return None
    return appearance


def fine_tunes_own_bundle(cfg: TrainConfig, run_dir: Path) -> bool:
    """Whether the run fine-tunes its own bundle (``--init RUN/bundle --out RUN``), which it replaces."""
    return cfg.init is not None and os.path.realpath(cfg.init) == os.path.realpath(RunFolder(run_dir).bundle)


def check_in_place(cfg: TrainConfig, run_dir: Path, records: Sequence[Record], started: BundleCard) -> None:
    """Refuse to fine-tune a run's own bundle in place when the run would lose what the held-out checks know of the
    films its weights learnt: RUN/split.csv, which this run's replaces, unless this run trains and validates on the
    same films; and the teachers (those this run is not given again) and the bundle it started from that its card
    names (this run's card names the run itself). Its card is replaced with the bundle, so evaluation would take
    those films for unseen ones. Fine-tuned into another run folder, the bundle and both records stay."""
    run = RunFolder(run_dir)
    lost = f"init (--init) {shown(cfg.init)} is this run's own bundle, which the run replaces with its card and split"
    keep = "fine-tune it into a new run_dir (--out), which keeps it and its records"
    if why := split_change(run.split, records):
        raise ValueError(f"{lost}: this run trains and validates on other films than it did ({why}), so nothing "
                         f"would say which films its weights learnt and evaluation would take them for unseen ones: "
                         f"{keep}")
    config, kept = started.train_config, {os.path.realpath(run.bundle), *map(os.path.realpath, cfg.teacher)}
    if sources := [s for s in [*(config.get("teacher") or []), *([config["init"]] if config.get("init") else [])]
                   if os.path.realpath(s) not in kept]:
        raise ValueError(f"{lost}: its card is what names the bundles its weights learnt from ({', '.join(sources)}), "
                         f"whose training films evaluation checks it against: {keep}")


def check_init_held_out(cfg: TrainConfig, records: Sequence[Record]) -> None:
    """Refuse a ``cfg.init`` bundle that trained on the run's validation films (``records``' val side): its weights
    learnt them, and would choose the best epoch, the temperature and the threshold on films the model has seen."""
    if cfg.init is not None:
        check_held_out([cfg.init], [r for r in records if r.split == "val"], f"validate a model started from "
                       f"{cfg.init}", hint=" (start from a bundle trained on the same split, or on other films)")


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, resume: bool, ctx: Dist) -> None:
    """A folder holds one run: a run that does not resume clears what an earlier one wrote
    (:meth:`RunFolder.outputs`). Its best weights, bundle and checkpoint would otherwise be finalised, read beside
    this run's split.csv (the held-out checks, cv) or resumed under this run's config.yaml and split.csv, should it
    stop before its first checkpoint; its history, curves and report would describe a bundle that is no longer there
    beside this run's config.yaml, and TensorBoard would show its events mixed with this run's."""
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        run = RunFolder(run_dir)
        if not (resume and run.checkpoint.exists()):
            _say_replaced(run)
            folders, files = run.outputs()
            for earlier in folders:
                shutil.rmtree(earlier, ignore_errors=True)
            for earlier in files:
                earlier.unlink(missing_ok=True)
        else:  # tried again: it ends in a bundle or in its own refusal, not beside the earlier attempt's reason
            run.refused.unlink(missing_ok=True)
        write_atomic(run.config, cfg.to_yaml().encode())


def _say_replaced(run: RunFolder) -> None:
    """Warn, before :func:`prepare_run_dir` clears the folder, that it holds a run that goes: a finished one's bundle
    (with what ``evaluate --add-to-card`` added to its card), or an unfinished one's checkpoint (a run stopped by
    Ctrl-C, not refused), which ``--resume`` would go on from. Both deletions were silent: a rerun into the same --out
    lost a bundle in use, or the epochs of a run whose --resume was forgotten. The validation AUC names the bundle
    (a card that cannot be read gives none), the checkpoint's last epoch how far the run got."""
    if run.bundle.is_dir():
        try:
            card = load_card(run.bundle)
        except (ValueError, OSError):
            figures = ""
        else:
            added = len(card.external_evaluations)
            figures = (f" (validation AUC {format_figure(card.val_metrics.get('auc'), 4)}"
                       + (f"; {added} evaluation{'s' if added > 1 else ''} added to its card" if added else "") + ")")
        kind, goes = "a finished", f"its bundle{figures} is deleted now, with its checkpoint and reports"
        keep = "train into a new run_dir (--out) to keep a run"
    elif run.checkpoint.is_file() and not run.refused.is_file():
        try:
            epoch = load_checkpoint(run.checkpoint)["epoch"] + 1
        except (ValueError, KeyError, TypeError):  # --resume refuses it too
            goes, keep = "its unreadable checkpoint", "train into a new run_dir (--out) to keep a run"
        else:
            goes, keep = (f"its checkpoint after epoch {epoch}",
                          "train with resume (--resume) to go on from a run's checkpoint")
        kind, goes = "an unfinished", f"{goes} is deleted now, with its history"
    else:
        return
    log.warning("%s holds %s run, which this run replaces: %s; %s", shown(run.root), kind, goes, keep)


@contextlib.contextmanager
def refusal_kept(run_dir: Path, ctx: Dist) -> Iterator[None]:
    """Keep why training refused the run (a ValueError: a divergence, best weights no better than chance, a warm
    start that found nothing) in RUN/refused.txt, as the command prints it: printed once, it was lost, and the folder
    alone (config.yaml and split.csv, or a history and a checkpoint, but no bundle) looked like a run still training or
    stopped, days later. RUN/best goes: no command takes it for a model, and what they advised, finishing the run with
    ``--resume``, replays the same steps into the same refusal (the checkpoint keeps its weights, and a resume rewrites
    it)."""
    try:
        yield
    except ValueError as e:
        if ctx.main:
            run = RunFolder(run_dir)
            shutil.rmtree(run.best, ignore_errors=True)
            write_atomic(run.refused, f"{shown(str(e))}\n".encode())
        raise


def preprocessed(records: list[Record], cfg: TrainConfig, ctx: Dist) -> ImageCache:
    """The image cache of every record under the run's preprocessing (``cache.spec``: with the training files'
    source, when they were all made one way), built once per machine; unreadable films are warned about and left
    out."""
    trained = [r.path for r in records if r.split == "train"]
    source = source_of(trained) if cfg.match_source and ctx.main else (None, None)
    spec = PreprocessSpec(cfg.image_size, cfg.resize_policy, *ctx.from_main(source))
    if ctx.main and spec.source_size:
        log.info("training files: %s x %s JPEG, quality %s; larger inputs are brought down the same way first",
                 spec.source_size, spec.source_size, spec.source_quality)
    cache = machine_cache(records, spec, ctx)
    for err in cache.errors if ctx.main else []:
        log.warning("skipped unreadable %s: %s", shown(err["path"]), err["reason"])
    return cache


def selected_films(records: list[Record], cache: ImageCache, task: Task, ctx: Dist) -> dict:
    """The readable training and validation films of the task (``{"train": (records, targets), "val": ...}``),
    refused when a side lacks a class: known from the split and the cache, so before the run folder is cleared (a
    --split-csv whose validation films were all NORMAL wiped the earlier run's bundle, then was refused)."""
    readable = set(cache.paths)
    if ctx.main:
        warn_untyped([r for r in records if r.path in readable], task, "training")
    selected = {name: select([r for r in records if r.split == name and r.path in readable], task)
                for name in ("train", "val")}
    if missing := absent_classes(selected["train"][1], task):
        raise ValueError(f"no readable training film of class {', '.join(missing)}: a model cannot learn a class it "
                         "never sees, and its threshold would be meaningless")
    # known before the first step: the best epoch, the temperature and the threshold are chosen on these films
    if missing := absent_classes(selected["val"][1], task):
        raise ValueError(f"no readable validation film of class {', '.join(missing)} for the {task.name} task "
                         f"({len(selected['val'][0])} usable validation films): the best epoch, the temperature and "
                         "the threshold are chosen on validation films of every class; raise val_fraction (--set "
                         "val_fraction=), or give a split_csv (--split-csv) whose val films hold every class")
    return selected


def check_batches(train_films: int, cfg: TrainConfig, ctx: Dist, where: str = "") -> None:
    """Refuse a batch that this process's share of the training films cannot fill: each epoch drops its last partial
    batch, so not one step would be taken. Known from the split and the cache, so refused before the run folder is
    cleared and before a warm start runs: such a run deleted an earlier run's bundle, then ended in "no epoch was
    validated". ``where`` begins the reason (cv's ``fold K of N: ``)."""
    if (share := train_films // ctx.world) < cfg.batch_size:
        raise ValueError(f"{where}the {train_films} training films fill no batch of {cfg.batch_size} in each of "
                         f"{ctx.world} process(es) (an epoch drops its last partial batch), so no step would be taken: "
                         f"give a batch_size (--batch-size) of {max(share, 1)} or less, or more films")


def load_data(records: list[Record], cache: ImageCache, checksum: str, cfg: TrainConfig, task: Task, ctx: Dist,
              run_dir: Path, selected: dict, sample: dict | None = None,
              sources: Sequence[TrainingSource] = ()) -> Data:
    """The split's records (kept as RUN/split.csv) and their preprocessed images (:func:`preprocessed`; ``checksum``
    their :func:`data_checksum`; ``selected``, the task's films of each side: :func:`selected_films`;
    ``sample``, what the card records of the films and weights: :func:`split_records`', the starting bundle's
    :func:`start_record`, the teachers' :func:`~pneumoscan.training.distill.check_teachers` and the versions that
    trained them, :data:`~pneumoscan.models.card.TRAINED_BY`; ``sources``, where the films the weights learn from came
    from: :func:`training_data`, with the starting bundle's and the teachers') as datasets and loaders, with the class
    weights."""
    if ctx.main:
        write_manifest(records, RunFolder(run_dir).split)
    paths = [r.path for r in records]
    parts = {name: (cache.rows([r.path for r in recs]), targets) for name, (recs, targets) in selected.items()}
    train_targets = parts["train"][1]
    if cfg.teacher:  # scored once, by rank 0
        scored = [r.path for r in selected["train"][0]]
        soft = ctx.from_main(teacher_probabilities(cfg.teacher, scored, paths, cfg.eval_batch_size) if ctx.main
                             else None)
        train_targets = distilled_targets(train_targets, soft, cfg.distill_weight)

    mean, std = registry.normalization(cfg.model)
    train_set = CachedImages(cache.images, parts["train"][0], train_targets,
                             train_transform(cfg.image_size, mean, std, cfg.augment))
    val_set = CachedImages(cache.images, *parts["val"], normalize(mean, std))
    val_loader = DataLoader(torch.utils.data.Subset(val_set, shard(ctx, len(val_set))), cfg.eval_batch_size,
                            num_workers=cfg.workers)
    # the sampler shuffles with (its seed + epoch): a hashed base keeps neighbouring --seed values apart
    sampler = DistributedSampler(train_set, ctx.world, ctx.rank, shuffle=True, seed=stream_seed(cfg.seed),
                                 drop_last=True)
    train_loader = DataLoader(train_set, cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                              collate_fn=batch_mixing(cfg.augment, len(task.classes)))
    from sklearn.utils.class_weight import compute_class_weight  # scikit-learn (1 s) when a run starts, not on import

    balanced = compute_class_weight("balanced", classes=np.arange(len(task.classes)), y=selected["train"][1])
    weights = torch.tensor(balanced, dtype=torch.float32, device=ctx.device)
    plain = tuple(CachedImages(cache.images, *parts[n], normalize(mean, std)) for n in ("train", "val"))
    return Data(cache.spec, cache.data_fingerprint, checksum, train_set, val_set, val_loader, sampler,
                train_loader, plain, weights if cfg.class_weights else None, selected["val"][0],
                _val_left_out(records, cache, task), sample or {}, list(sources))


def _val_left_out(records: Sequence[Record], cache: ImageCache, task: Task) -> list[dict]:
    """The validation side's files that the validation figures are not of, and why: those that could not be read
    and the readable films the task gives no target (an etiology run's NORMAL films), as evaluate records its own."""
    val, readable = [r for r in records if r.split == "val"], set(cache.paths)
    paths = {r.path for r in val}
    return files_left_out(sum(e["path"] in paths for e in cache.errors),
                          (r for r in val if r.path in readable and task.target(r) is None), task)


def recipe(cfg: TrainConfig, params: list[torch.nn.Parameter], lr: float, total_steps: int,
           budget_s: float | None) -> tuple[torch.optim.Optimizer, list[Callback]]:
    """The optimiser and the callbacks that schedule its rate and stop training, per ``cfg.optimizer``:
    adamw-cosine (warm-up and cosine decay over the steps or the time budget, early stopping on validation AUC) or
    adam-plateau (the Keras recipe: Adam at a constant rate cut on a validation-loss plateau, early stopping on
    validation loss). Both end at the time budget. Both decay the weights by ``cfg.weight_decay`` decoupled from
    the gradient, as AdamW and Keras's ``weight_decay`` do, so the setting means one thing in both; 0 makes
    adam-plateau Keras's plain Adam. adam-plateau has no warm-up (the config refuses one)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw-cosine":
        return optimizer, [TimeBudget(total_steps, budget_s, cosine(cfg.warmup)),
                           EarlyStopping("val_auc", "max", cfg.patience)]
    return optimizer, [TimeBudget(total_steps, budget_s), ReduceOnPlateau(optimizer, "val_loss", cfg.plateau_factor,
                       cfg.plateau_patience), EarlyStopping("val_loss", "min", cfg.patience)]  # fmt: skip


class Reshuffle(Callback):
    """Each epoch's data order and augmentation draws, which depend only on (seed, epoch, rank): resume is exact.
    Frozen layers keep their BatchNorm statistics."""

    def __init__(self, model: torch.nn.Module, sampler: DistributedSampler, seed: int) -> None:
        self.model, self.sampler, self.seed = model, sampler, seed

    def on_epoch_start(self, state: State) -> None:
        torch.manual_seed(stream_seed(self.seed, state.epoch, state.ctx.rank))
        self.sampler.set_epoch(state.epoch)
        freeze_frozen_norms(self.model)


def warm_start(model: torch.nn.Module, plain: Sequence[Dataset], weights: torch.Tensor | None, batch_size: int,
               ctx: Dist) -> float:
    """The classifier fitted on the frozen features of the training films, its L2 penalty chosen on the validation
    films (``plain``: both without augmentation; :func:`warm_start_head`). Each process computes the features of
    its share of the films (:func:`shard`), so W processes share the work of one. Returns the penalty chosen."""
    shares = [torch.utils.data.Subset(part, shard(ctx, len(part))) for part in plain]
    loaders = [DataLoader(share, batch_size) for share in shares]
    films, total = sum(map(len, shares)), sum(map(len, plain))
    # minutes on a CPU before the first epoch's bar (make demo on 2 cores), with nothing on the terminal without one;
    # under torchrun rank 0's bar counts its share, said as such (the films of the run are the total)
    share = f" (this process's share of {total})" if ctx.world > 1 else ""
    with progress(enabled=ctx.main) as bar:
        task = bar.add_task(f"Warm start: features of {films} films{share}", total=films)
        l2 = warm_start_head(model, *loaders, weights, ctx.device, ctx, lambda n: bar.advance(task, n))
    if ctx.main:
        log.info("warm start: classifier fitted on frozen pretrained features (L2 %g, chosen on validation loss)", l2)
    return l2


def validation_row(model: torch.nn.Module, d: Data, task: Task,
                   ctx: Dist) -> Callable[[State, np.ndarray, np.ndarray], dict]:
    """The epoch's figures after the training loss and accuracy: training AUC and the validation figures."""

    def validate(state: State, run_logits: np.ndarray, run_targets: np.ndarray) -> dict:
        ctx.main_buffers(model)  # every rank scores with the statistics rank 0 saves
        (logits,) = gather_shards(ctx, predict_logits(model, d.val_loader, ctx.device))
        check_validation_scores(logits, task, state)  # every rank holds the same logits, so every rank refuses together
        val = epoch_metrics(logits, d.val_set.targets, task, d.class_weights)
        run_logits, run_targets = gather(ctx, run_logits, run_targets)
        train_auc = roc_auc(binary_targets(run_targets), task.positive_probability(softmax(run_logits)))
        return {"train_auc": train_auc, **{f"val_{k}": v for k, v in val.items()}}

    return validate


def prepare_weights(model: torch.nn.Module, cfg: TrainConfig, d: Data, ctx: Dist, imagenet: bool, fresh: list[str],
                    resumed: dict | None) -> tuple[float, float, tuple[str, str]]:
    """On a fresh run, the warm start of an ImageNet or new (``fresh``) classifier (which layers train was set by
    :func:`build_model`). Returns
    the run's start (``perf_counter``: the time budget covers the warm start too), the seconds the warm start
    took (a resumed run's own), and where the weights start with what to change there (``State.start``, which a
    divergence the learning rate did not cause names)."""
    # NHWC on every device: oneDNN's depthwise convolutions are ~1.5x faster on CPU, and so are cuDNN's in bf16
    model.to(ctx.device, memory_format=torch.channels_last)
    t0 = time.perf_counter()
    # a bundle's own trained head is kept, not refitted. A resumed run does not warm-start again, but its weights
    # started where its first start put them (--resume refuses another recipe), which a divergence names
    warms = cfg.warm_start and (imagenet or fresh) and hasattr(model, "forward_head")
    if warms and resumed is None:
        warm_start(model, d.plain, d.class_weights, cfg.eval_batch_size, ctx)
    # the learning-rate schedule runs over what the budget leaves after the warm start, so its warm-up happens
    warm_s = ctx.from_main(resumed.get("warm_s", 0.0) if resumed is not None else time.perf_counter() - t0)
    if cfg.init is not None:  # a new classifier warm-started on its features starts from the bundle too
        start = f"the weights of init (--init) {shown(cfg.init)}", "start from another bundle"
    elif warms:
        start = "the classifier the warm start fitted", "train with warm_start false (--set warm_start=false)"
    elif imagenet:
        start = f"{cfg.model}'s pretrained weights", "train from scratch with pretrained false (--no-pretrained)"
    else:  # not the films: their 8-bit pixels, normalised by a checked mean and std, keep every input in bounds
        start = f"{cfg.model}'s starting weights", f"check how {cfg.model}'s builder initialises them"
    return t0, warm_s, start


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, d: Data, ctx: Dist,
                   warm_s: float) -> tuple[torch.optim.Optimizer, list[Callback], float]:
    """The optimiser of the trainable layers and its schedule (:func:`recipe`), at the rate scaled linearly with the
    processes, which it returns too; a time budget the warm start used up is refused."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr, global_batch = cfg.lr * ctx.world, cfg.batch_size * ctx.world
    budget_s = cfg.time_budget * 60 if cfg.time_budget else None
    if budget_s is not None and budget_s <= warm_s:
        raise ValueError(f"the warm start took {warm_s / 60:.1f} min of the {cfg.time_budget:g} min time budget; "
                         f"nothing was left to train: give a time_budget (--time-budget) well above "
                         f"{warm_s / 60:.1f} min, or warm_start false (--set warm_start=false)")
    optimizer, schedule = recipe(cfg, params, lr, cfg.epochs * len(d.train_loader), budget_s)
    if ctx.main:
        log.info(
            f"{cfg.model} on {cfg.task}: {len(d.train_set)} train / {len(d.val_set)} val images, {ctx.world} "
            f"process(es) on {ctx.device.type}, global batch {global_batch} ({cfg.batch_size} x {ctx.world}), "
            f"lr {lr:g} (= {cfg.lr:g} x {ctx.world}, linear scaling), {sum(p.numel() for p in params):,} trainable "
            "parameters"
        )
    return optimizer, schedule, lr


def make_callbacks(model: torch.nn.Module, cfg: TrainConfig, task: Task, d: Data, ctx: Dist, run_dir: Path,
                   schedule: list[Callback], trackers: list[Callback], made: dict,
                   on_epoch_end: Callable[[int], None] | None, extra: Sequence[Callback] = (),
                   kept: Appearance | None = None) -> tuple[list[Callback], list[Callback]]:
    """The run's callbacks in hook order, and those whose state a checkpoint keeps besides the model and the
    optimiser. :class:`BestWeights` and :class:`History` go before the ``schedule``, so the epoch's line (marked best
    or not) is logged before what its figures decide (a rate cut, early stopping). Savers and trackers go before
    :class:`Checkpoint`, so an epoch it records has been saved and logged (a crash before it is whole makes the
    resumed run log that epoch again, at the same step); trackers go after :class:`Finalize`, whose bundle they log;
    the caller's ``extra`` ones after those, before the checkpoint, which keeps their state too. ``kept``: the
    starting bundle's content check (:func:`start_appearance`), which :func:`finalize` keeps on too few films."""
    card = BundleCard(cfg.model, cfg.task, list(task.classes), task.positive, d.spec.size, d.spec.policy,
                      *registry.normalization(cfg.model), d.spec.source_size, d.spec.source_quality,
                      model_kwargs=cfg.model_kwargs, train_config={BEST_SO_FAR: True},  # no model to use
                      plugins=registry.plugins_made_with(cfg.task, [cfg.model]))
    run = RunFolder(run_dir)
    best = BestWeights(lambda m: save_bundle(run.best, m, card), "the time budget ran out before the first step: "
                       "raise time_budget (--time-budget)")
    average = [WeightAverage(model, cfg.ema_decay)] if cfg.ema_decay is not None else []
    stateful = [*schedule, best, *average, *trackers, *extra]
    # the checkpoint keeps how the run is made too (made_by): --resume refuses to go on otherwise (resume_from)
    checkpoint = Checkpoint(run.checkpoint, stateful, save_checkpoint, made)
    callbacks = [Reshuffle(model, d.sampler, cfg.seed), best, History(run_dir), *schedule, *average,
                 Finalize(lambda s: finalize(run_dir, cfg, d, ctx, len(s.history), s.info["best_epoch"],
                                             chance_remedy(s), kept)),
                 *trackers, *extra, checkpoint, *([EpochHook(on_epoch_end)] if on_epoch_end else [])]
    return callbacks, stateful


def train(
    data: Path | str,
    cfg: TrainConfig,
    run_dir: Path | str,
    resume: bool = False,
    on_epoch_end: Callable[[int], None] | None = None,
    log_to: Sequence[str] = (),
    tracking_uri: str | None = None,
    callbacks: Sequence[Callback] = (),
    sample: dict[str, int | None] | None = None,
) -> Path:
    """Train, choose temperature and threshold on validation, and write RUN_DIR/bundle. Returns the bundle path.

    ``resume`` continues RUN_DIR/checkpoint.pt when there is one (:func:`resume_from`), else starts from scratch.
    ``on_epoch_end(epoch)`` runs after each epoch's checkpoint is safely written (tests use it to simulate a crash).
    ``log_to`` names experiment trackers (:data:`pneumoscan.training.tracking.TRACKERS`); ``tracking_uri`` is MLflow's
    store.
    ``callbacks``: your own :class:`~pneumoscan.training.engine.Callback` objects, called after the built-in ones at
    each hook (set ``state.stop`` to end training); a checkpoint keeps the state of those whose ``state_dict``
    returns one, and ``resume`` gives it back to the callbacks passed then.
    ``sample``: the record of the sample of patients the ``cfg.split_csv`` manifest holds
    (:func:`~pneumoscan.models.card.sample_record`), which the card says: cv gives its folds' runs that of
    ``cv --patients``, whose manifests they take as they are.
    """
    cfg.check_distill_weight()  # before the model is built: its weights may have to be fetched
    ctx, run_dir, task = setup_distributed(), Path(run_dir), get_task(cfg.task)
    torch.manual_seed(cfg.seed)
    checkpoint_path = RunFolder(run_dir).checkpoint
    from_checkpoint = resume and checkpoint_path.exists()
    model, imagenet, fresh, started = build_model(cfg, task, ctx, from_checkpoint)
    records, sample = split_records(data, cfg, sample)
    own_data = training_data(data, cfg, records)
    # read with their cards, as the starting bundle's (start_record), and so their training data
    taught, taught_data = check_teachers(cfg, records, task)
    in_place = fine_tunes_own_bundle(cfg, run_dir)
    if started is not None:  # checked at the run's start
        check_init_held_out(cfg, records)
        if in_place:
            check_in_place(cfg, run_dir, records, started)
    learnt = start_record(cfg, started, in_place)
    start_data = started_sources(started) if started is not None else []
    # the images before the run folder is touched: --resume compares their pixels with the checkpoint's
    cache = preprocessed(records, cfg, ctx)
    # the starting bundle's content check, read before the run folder is touched too (in place, it is cleared)
    kept = start_appearance(cfg, started, cache.spec) if started is not None else None
    made = made_by(cfg, ctx, data_checksum(cache, records), taught.get(TEACHER_CARDS, []))
    ctx.agree(made["data"], f"read {len(cache.paths)} of {len(records)} films (data checksum {made['data'][7:19]}...)",
              "the films they train and validate on", "every machine needs the same films at the same path "
              "(`pneumoscan audit DATA` on each names its unreadable films)")
    check_same_recipe(made, ctx)
    resumed = resume_from(checkpoint_path, cfg, records, made, ctx) if resume else None
    if resumed is not None:  # the starting bundle is not read again (in place, the run cleared it): the checkpoint's
        # record, none in an earlier version's; whether the run replaces its own bundle its settings and folder say
        learnt = ({k: resumed[k] for k in (INIT_CARD, INIT_SAMPLE) if k in resumed}
                  | ({INIT_IN_PLACE: True} if in_place else {}))
        # an earlier version's checkpoint records none: its starting bundle, as every one then, learnt from Kermany's
        start_data = resumed.get(INIT_DATA, [{**KERMANY_SOURCE, "started_from": True}] if cfg.init else [])
    made |= learnt  # each checkpoint keeps it
    made[INIT_DATA] = start_data
    if resumed is not None and INIT_APPEARANCE in resumed:
        kept = Appearance.from_arrays({k: v.numpy() for k, v in resumed[INIT_APPEARANCE].items()})
    if kept is not None:  # as tensors, which a checkpoint loads with weights_only
        made[INIT_APPEARANCE] = {k: torch.from_numpy(v) for k, v in kept.to_arrays().items()}
    if resumed is not None:  # its epochs' pneumoscans (its starting bundle's among them), then this one's
        made[TRAINED_BY] = trained_by(resumed)
    elif started is not None:  # the starting bundle's, whose weights it goes on training
        made[TRAINED_BY] = trained_by(started.train_config)
    # the teachers' checksums the checkpoint keeps (made["teachers"]) are this start's: --resume refuses others
    learnt |= taught
    trackers = make_trackers(log_to, run_dir, run_record(cfg, ctx) | learnt, tracking_uri) if ctx.main else []
    selected = selected_films(records, cache, task, ctx)
    check_batches(len(selected["train"][0]), cfg, ctx)
    prepare_run_dir(run_dir, cfg, resume, ctx)
    with refusal_kept(run_dir, ctx):
        # the card keeps the versions that trained its weights, as the checkpoint does (a resumed run's are several)
        d = load_data(records, cache, made["data"], cfg, task, ctx, run_dir, selected,
                      {**sample, **learnt, TRAINED_BY: made[TRAINED_BY]}, [*start_data, *own_data, *taught_data])
        t0, warm_s, start = prepare_weights(model, cfg, d, ctx, imagenet, fresh, resumed)
        optimizer, schedule, lr = make_optimizer(model, cfg, d, ctx, warm_s)
        hooks, stateful = make_callbacks(model, cfg, task, d, ctx, run_dir, schedule, trackers, made, on_epoch_end,
                                         callbacks, kept)
        net = torch.nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else model
        state = State(model, net, optimizer, d.train_loader, ctx, cfg.epochs, t0, warm_s, lr, precision=cfg.precision,
                      start=start)
        if resumed is not None:
            restore(state, resumed, stateful, checkpoint_path)
        fit(state, hooks, lambda logits, y: F.cross_entropy(logits, y, weight=d.class_weights,
                                                                label_smoothing=cfg.label_smoothing),
            validation_row(model, d, task, ctx))
    return state.info["bundle"]


def training_appearance(train_set: CachedImages, kept: Appearance | None,
                        init: str | None) -> tuple[Appearance | None, dict]:
    """The appearance of the training films (:mod:`pneumoscan.data.appearance`), which the bundle keeps so that a
    film unlike them is flagged, and what the card records of where it came from. A run on too few films to learn
    it keeps ``kept``, the check of the bundle it started from (``init``: :func:`start_appearance`), whose weights it
    goes on training, and records how many of its own films that check flags (:data:`APPEARANCE_FROM_INIT`: a site's
    few dozen films unlike those are read out of scope); without it, such a fine-tune dropped the check. None for a
    run on too few films that has none to keep. Each is said in the log."""
    images = train_set.images[train_set.rows]
    try:
        return Appearance.fit(images), {}
    except ValueError as e:
        if kept is None:
            log.info("no appearance of the training films recorded (%s): films unlike them will not be flagged", e)
            return None, {}
    flagged = sum(map(bool, kept.warnings(images)))
    (log.warning if flagged else log.info)(
        "%d training films, fewer than %d to learn their appearance from: the image content check is that of the "
        "bundle it started from (init %s), which flags %d of them%s", len(images), MIN_FILMS, init, flagged,
        ": films like them are read out of scope" if flagged else "")
    return kept, {APPEARANCE_FROM_INIT: {"films": len(images), "flagged": flagged}}


def chance_remedy(state: State) -> str:
    """What a run whose best epoch is no better than chance should change. A training loss above
    :data:`~pneumoscan.training.engine.OUT_OF_SCALE_LOSS` (a film's own class at e^-100) says the weights went out of
    scale, every loss finite, which a divergence's advice mends (the learning rate, or where they started), not the
    labels or more epochs at that rate."""
    worst = max((row["train_loss"] for row in state.history), default=0.0)
    if worst > OUT_OF_SCALE_LOSS:
        return f"the training loss reached {worst:.3g}, out of scale: {divergence_advice(state)}"
    return ("check the training films' labels, then train longer, raising epochs (--epochs) or time_budget "
            "(--time-budget), or on more films")


def finalize(run_dir: Path, cfg: TrainConfig, d: Data, ctx: Dist, epochs: int, best_epoch: int,
             remedy: str, kept: Appearance | None) -> Path:
    """Best weights -> temperature and threshold fitted on validation -> bundle, ONNX, model card
    (:func:`finish_bundle`) and validation report; ``remedy``: what a run no better than chance should change
    (:func:`chance_remedy`); ``kept``: the starting bundle's content check (:func:`training_appearance`)."""
    run = RunFolder(run_dir)
    model, card = ctx.from_main(load_bundle(run.best, best_so_far=True) if ctx.main else None)
    model.to(ctx.device, memory_format=torch.channels_last)
    (logits,) = gather_shards(ctx, predict_logits(model, d.val_loader, ctx.device))
    # every rank holds the same logits, so every rank refuses together (RUN/best goes: refusal_kept)
    check_better_than_chance(softmax(logits), d.val_set.targets, get_task(cfg.task),
                             f"the best epoch's weights (epoch {best_epoch} of {epochs})", "validation films",
                             remedy, f"; every epoch's figures are in {shown(run.history)}")
    if not ctx.main:
        ctx.barrier()  # the bundle is there when train returns: cv scores it next
        return run.bundle
    targets, images = d.val_set.targets, d.val_set.images[d.val_set.rows]
    # the intervals count patients, copies of one film under other names as one (their scans are this process's)
    groups = patient_groups(d.val_records, run.split)[1]
    temperature = calibrated_temperature(logits, targets)
    # the training films by class (their hard labels, a distilled run's too): MODEL_CARD.md says their balance
    trained_on = dict(zip(card.classes, np.bincount(d.plain[0].targets, minlength=len(card.classes)).tolist()))
    appearance, came_from = training_appearance(d.plain[0], kept, cfg.init)
    card = dataclasses.replace(card, temperature=float(temperature[0]), data_fingerprint=d.data_fingerprint,
                               data_checksum=d.checksum, split_checksum=file_sha256(run.split),
                               versions=runtime_versions(), training_data=d.sources,
                               train_config=run_record(cfg, ctx) | {TRAINING_FILMS: trained_on} | d.sample | came_from)

    def score(bundle: Path) -> ScoredFilms:  # the plain logits torch's; the TTA views' by the ONNX graph shipped
        predictor = Predictor(bundle, cfg.eval_batch_size, backend="onnx")
        return ScoredFilms(logits, list(map(predictor.logits, tta_views(images))), targets, groups, images,
                           d.val_left_out)

    card, metrics, tta = finish_bundle(run.bundle, model, card, appearance, score,
                                       (cfg.target_sensitivity, None), "validation", temperature)
    _validation_report(run_dir, cfg, ctx, card, metrics, (epochs, best_epoch), d.val_records)
    log.debug(  # the command prints its own line from the card
        f"bundle: {run.bundle}  val AUC {format_figure(metrics['auc'], 4)}  threshold {card.threshold:.4f} -> sens "
        f"{format_figure(metrics['sensitivity'])} spec {format_figure(metrics['specificity'])} acc "
        f"{format_figure(metrics['accuracy'])}; with --tta: val AUC "
        f"{format_figure(roc_auc(binary_targets(targets), tta), 4)}  threshold {card.tta_threshold:.4f}"
    )
    ctx.barrier()
    return run.bundle


def _validation_report(run_dir: Path, cfg: TrainConfig, ctx: Dist, card: BundleCard, metrics: dict,
                       epochs: tuple[int, int], val_records: Sequence[Record]) -> None:
    """RUN/report.html and metrics.json of the validation films, which chose the threshold, the temperature and the
    best epoch (``epochs``: the epochs run and the best): the report and compare say so."""
    metrics["data"] = TRAINING_DATA
    # which films: compare tells runs validated on other films (another seed's split) from runs on the same ones
    metrics["films"] = films_digest(val_records)
    metrics["films_without_patient_id"] = films_without_patient_id(val_records)  # the intervals' unit, as evaluate's
    metrics["epochs"], metrics["best_epoch"] = epochs  # cv says when the weights are not the last epoch's
    metrics["optimistic"] = [f"the threshold, the temperature and the best epoch were chosen on these {metrics['n']} "
                             "validation films: the figures on them are optimistic"]
    write_report(metrics, run_dir, f"{cfg.model} · {cfg.task} · validation", extra={
        "bundle": str(RunFolder(run_dir).bundle), MODEL_ID: card.model_id, "epochs": epochs[0],
        "best epoch": epochs[1], "processes": ctx.world, "temperature": f"{card.temperature:.3f}",
        "threshold": f"{card.threshold:.4f} ({card.threshold_policy})",
    })
