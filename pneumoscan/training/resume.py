"""Checkpoints, and what a run may take over from an earlier one: ``train --resume`` its checkpoint, ``cv`` and
``ensemble --cv`` its fold runs. Each is refused when it was made by other settings or on other films, since its
weights would then be described by a config and a split they were not made with."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pneumoscan import __version__
from pneumoscan.core.atomic import write_atomic
from pneumoscan.core.names import shown
from pneumoscan.data.cache import ImageCache, build_cache
from pneumoscan.data.layouts import Record, discover
from pneumoscan.data.preprocess import PreprocessSpec
from pneumoscan.models.card import (APPEARANCE_FROM_INIT, INIT_CARD, INIT_IN_PLACE, INIT_SAMPLE, SAMPLED_FROM,
                                   TEACHER_CARDS, TEACHER_SAMPLES, TRAINED_BY, TRAINING_FILMS, retrained_sources)
from pneumoscan.models.run_folder import RunFolder
from .config import TrainConfig, read_yaml, recorded_settings
from .distributed import Dist
from .engine import resolved_precision

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: a kill or a full disk keeps the previous checkpoint. Serialised in memory first: torch reports a
    failed file write as a RuntimeError with a C++ trace, the plain write an OSError that says why."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict | None:
    """What ``--resume`` found, said before training: the checkpoint's state, or None to start from scratch."""
    if not path.exists():
        log.info("no checkpoint at %s: starting from scratch", shown(path))
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: refuse rather than silently start over
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot resume from {path}: not a readable checkpoint ({reason}); "
                         "delete it to start over") from None


_ABSENT = object()
# what a bundle's train_config records beside the settings: how the run was made, not a setting, so no config has
# it; --resume checks them on their own (made_change)
RECORDED = ("processes", "resolved_precision")


def config_changes(recorded: dict, cfg: TrainConfig, ignore: Collection[str] = ()) -> list[str]:
    """``cfg``'s settings that differ from a recorded config (``dataclasses.asdict`` of one, as a checkpoint,
    bundle.json's ``train_config`` or config.yaml hold it), each as ``key old -> new`` with dotted keys inside nested
    settings. ``ignore`` names top-level settings that may differ; a setting one side lacks counts as changed, unless
    the recorded config predates it and ``cfg`` leaves it at its default (a run by an earlier version), at any depth.
    A value an earlier version recorded for a setting left unset is read as unset (:func:`recorded_settings`)."""
    old, new = (json.loads(json.dumps(c)) for c in (recorded_settings(recorded), dataclasses.asdict(cfg)))  # as JSON
    _fill_defaults(old, new, json.loads(json.dumps(dataclasses.asdict(TrainConfig()))))
    for settings in (old, new):  # one bundle however its path is spelt (relative, absolute, through a link)
        if settings.get("init"):
            settings["init"] = os.path.realpath(settings["init"])
        settings["teacher"] = [os.path.realpath(t) for t in settings.get("teacher") or []]
    # records of the run, not settings
    skip = {*ignore, *RECORDED, TEACHER_CARDS, TEACHER_SAMPLES, INIT_CARD, INIT_IN_PLACE, INIT_SAMPLE, TRAINING_FILMS,
            SAMPLED_FROM, TRAINED_BY, APPEARANCE_FROM_INIT}
    return _changes({k: v for k, v in old.items() if k not in skip}, {k: v for k, v in new.items() if k not in skip})


def _fill_defaults(old: dict, new: dict, defaults: dict) -> None:
    """Give ``old`` each setting it predates, at any depth (``augment.gamma`` came after ``augment``), where ``new``
    leaves it at its default: a setting is added with the default that keeps the behaviour from before it."""
    for key, default in defaults.items():
        if isinstance(default, dict) and isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            _fill_defaults(old[key], new[key], default)
        elif key not in old and new.get(key) == default:
            old[key] = default


def _changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    changes = []
    for key in dict.fromkeys([*old, *new]):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key} " + " -> ".join("unset" if v is _ABSENT else json.dumps(v) for v in (a, b)))
    return changes


def split_change(manifest: Path, records: Sequence[Record]) -> str | None:
    """How the train and val films of ``records`` differ from those of a run's split.csv (``manifest``), or None
    when they are the same films on the same sides. Paths are compared resolved: split.csv holds them relative to
    the run's folder."""
    if not manifest.is_file():
        return f"{shown(manifest)} is missing, so nothing says which films it was trained on"

    def sides(recs: Sequence[Record]) -> dict[str, str]:
        return {os.path.realpath(r.path): r.split for r in recs if r.split in ("train", "val")}

    old, new = sides(discover(manifest).records), sides(records)
    if old == new:
        return None
    moved = sum(old.get(p) != new.get(p) for p in old.keys() | new.keys())
    leaked = sum(old.get(p) == "train" for p, side in new.items() if side == "val")
    seen = f"; {leaked} of the {sum(s == 'val' for s in new.values())} validation films here were training films there"
    return f"{moved} film(s) on the other side or in only one of the two" + (seen if leaked else "")


# what --resume may change: when the run ends, not what it learns from or how, so a run can be extended (more
# epochs, a longer time budget). Any other change would go on training a run made one way as if it had been made
# another, and its bundle and config.yaml would then describe neither. The split manifest's path may be spelt
# otherwise too (cv writes it under --out as given): its films are compared instead (split_change).
RESUMABLE = ("epochs", "time_budget", "split_csv")


def run_record(cfg: TrainConfig, ctx: Dist) -> dict:
    """What made the run, as the card's train_config and the trackers record it: the settings, and what decides how
    it trains but is no setting (:data:`RECORDED`): the number of processes (the global batch and the learning rate
    follow it) and what the training steps computed in (``precision`` auto is bf16 on CUDA, fp32 on CPU). What the
    run learnt from besides its films is read as it starts, beside it: its teachers' checksums and samples
    (:func:`~pneumoscan.training.distill.check_teachers`) and its starting bundle's
    (:func:`~pneumoscan.training.train.start_record`)."""
    return {**json.loads(json.dumps(dataclasses.asdict(cfg))), "processes": ctx.world,
            "resolved_precision": resolved_precision(ctx.device, cfg.precision)}


def made_by(cfg: TrainConfig, ctx: Dist, data: str, teachers: Sequence[str]) -> dict:
    """How a run is made, as its checkpoint records it and ``--resume`` checks it: the settings, what
    :func:`run_record` adds to them, the data (``data``: :func:`~pneumoscan.data.cache.data_checksum`, the pixels
    and labels, not the files' paths or times) and each teacher's bundle.json checksum as the run started
    (``teachers``, :data:`TEACHER_CARDS`: another bundle put at the same path), and this pneumoscan
    (:data:`TRAINED_BY`)."""
    record = run_record(cfg, ctx)
    return {"config": dataclasses.asdict(cfg), **{k: record[k] for k in RECORDED}, "data": data,
            "teachers": list(teachers), TRAINED_BY: [__version__]}


def trained_by(earlier: Mapping[str, Any]) -> list[str | None]:
    """The pneumoscans that train a run that goes on from weights trained before, oldest first, each once: those
    ``earlier`` records (:data:`TRAINED_BY`) trained them, then this one, which trains the rest. ``earlier``: the
    checkpoint a run resumes (its epochs'), or the train_config of the card of the bundle it starts from (--init:
    its weights were trained by those, and the new card says so); None for one of a version before 0.3, which
    records none: a cv fold resumed from it is told as trained by two (:func:`~.cv.warn_fold_versions`)."""
    return list(dict.fromkeys([*trainers(earlier), __version__]))


def trainers(record: Mapping[str, Any]) -> list[str | None]:
    """The pneumoscans ``record`` (a checkpoint, a card's train_config) says trained its weights, oldest first;
    ``[None]`` for one of a version before 0.3, which records none."""
    return list(record.get(TRAINED_BY) or [None])


def teachers_changed(recorded: dict | None) -> str | None:
    """Why a finished run's teachers are not the bundles now at the paths its card's ``train_config`` names
    (:func:`retrained_sources`); None when they are, or the card predates the record."""
    teachers = {os.path.realpath(t) for t in (recorded or {}).get("teacher") or []}
    if retaught := [t for t in retrained_sources(recorded or {}) if os.path.realpath(t) in teachers]:
        return f"its teacher {retaught[0]} is not the bundle it was taught by (trained again since?)"
    return None


# settings each machine may hold its own value of: how it reads (its data loader's workers, its scoring batch) and
# where its copy of a file lives (the split's films, the teachers' cards and the data are compared by content, and a
# starting bundle's weights are rank 0's, which DDP gives every process)
PER_MACHINE = ("workers", "eval_batch_size", "init", "teacher", "split_csv")


def check_same_recipe(made: dict, ctx: Dist) -> None:
    """Refuse, on every process at once, a run whose processes were given different settings (``made``:
    :func:`made_by`), naming them: with another learning rate each process stepped its own way under gradients DDP
    averaged, and the bundle recorded rank 0's; with another seed their samplers dealt overlapping shares (43 % of
    the films unseen in an epoch); with another number of epochs one waited on the other for the 3-hour timeout."""
    recipe = {k: v for k, v in json.loads(json.dumps(made["config"])).items() if k not in PER_MACHINE}
    seen = ctx.gathered(({**recipe, "teachers": made["teachers"]}, socket.gethostname()))
    if odd := next((rank for rank, (other, _) in enumerate(seen) if other != seen[0][0]), None):
        raise ValueError(f"the processes were given different settings (process 0 on {seen[0][1]}, then process "
                         f"{odd} on {seen[odd][1]}): {'; '.join(_changes(seen[0][0], seen[odd][0]))}; each would train "
                         "another model under one bundle's record: give every process the same command")


def checkpoint_config(ckpt: dict, path: Path) -> dict | None:
    """The settings the checkpoint at ``path`` was made with, which ``--resume`` and ``cv`` compare a run's with:
    its own record or, for an earlier version's, the config.yaml its run wrote when it began; None: neither, so
    nothing shows how it was made."""
    recorded = ckpt.get("config")
    if recorded is None and (config := RunFolder.of(path).config).is_file():
        recorded = read_yaml(config.read_text())
    return recorded


def resume_from(path: Path, cfg: TrainConfig, records: Sequence[Record], made: dict, ctx: Dist) -> dict | None:
    """The checkpoint ``--resume`` continues (None: start from scratch), refused when it was made by other
    settings than ``cfg`` (besides :data:`RESUMABLE`; ``epochs`` not below those it trained), on other films than
    ``records`` (RUN/split.csv, which belongs to the checkpoint: :func:`prepare_run_dir`) or otherwise than ``made``
    says (:func:`made_change`: processes, precision, the films' pixels and labels, the teachers). Refused before
    the run folder is touched, so its config.yaml stays that of the checkpoint; every rank gets rank 0's verdict,
    so all refuse together."""
    ckpt = ctx.from_main(load_checkpoint(path) if ctx.main else None)
    if ckpt is None:
        return None
    recorded = ctx.from_main(checkpoint_config(ckpt, path) if ctx.main else None)
    if recorded is None:
        raise ValueError(f"cannot resume from {shown(path)}: it records no training config and there is no "
                         "config.yaml beside it, so nothing shows it was made with these settings; "
                         "delete it to start over")
    if changes := config_changes(recorded, cfg, RESUMABLE):
        raise ValueError(f"cannot resume from {shown(path)}: it was made with other settings ({', '.join(changes)}); "
                         "only epochs and time_budget may change on a resume (--resume): give its settings again, or "
                         "train into a new run_dir (--out)")
    # --epochs caps the epochs: below those trained, the bundle and config.yaml would record fewer than made it
    if cfg.epochs < (trained := ckpt["epoch"] + 1):
        raise ValueError(f"cannot resume from {shown(path)}: it has trained {trained} epochs, more than epochs "
                         f"(--epochs) {cfg.epochs}, which its bundle would record: give {trained} epochs to finish it "
                         "now, or more to train on")
    if moved := ctx.from_main(split_change(RunFolder.of(path).split, records) if ctx.main else None):
        raise ValueError(f"cannot resume from {shown(path)}: it was trained on another split ({moved}); give its "
                         "data and split again, or train into a new run_dir (--out)")
    if reason := ctx.from_main(made_change(ckpt, path, made) if ctx.main else None):
        raise ValueError(reason)
    return ckpt


def _teachers_changed(old: list[str], new: list[str], made: dict) -> str:
    changed = [t for t, a, b in zip(made["config"]["teacher"], old, new, strict=True) if a != b]
    return (f"teacher {shown(changed[0])} is not the bundle it was trained with (its bundle.json changed since the "
            "checkpoint), so the soft targets would be another model's: put that bundle back, "
            "or train into a new run_dir (--out)")


# what a checkpoint records of how its run was made besides its settings and split (made_by): what each is, as a
# warning names it when an earlier version's checkpoint lacks it, and the refusal when this run differs. The global
# batch, the learning rate and the steps per epoch follow the number of processes; the weights of a run resumed in
# another precision, on other pixels or labels, or from another teacher would come from a run its bundle does not
# describe
_MADE: dict[str, tuple[str, Callable[[object, object, dict], str]]] = {
    "processes": ("number of processes", lambda old, new, made: (
        f"it was made by {old} process(es) and this run has {new}; the global batch, the learning rate and the steps "
        f"per epoch follow the number of processes: resume under {old}, or train into a new run_dir (--out)")),
    "resolved_precision": ("training precision", lambda old, new, made: (
        f"its steps computed in {old} and this run's would compute in {new} (precision {made['config']['precision']}: "
        f"auto is bf16 on CUDA, fp32 on CPU): resume where it computes in {old}, or train into a new run_dir (--out)")),
    "data": ("data checksum", lambda old, new, made: (
        f"it was trained on other pixels or labels than these films hold now, or on them listed in another order (data "
        f"checksum {str(old)[7:19]}... -> {str(new)[7:19]}...; the order decides the batches): files at its paths "
        "changed since, or the manifest was reordered; give its data again, or train into a new run_dir (--out)")),
    "teachers": ("teachers' checksums", _teachers_changed),
}


def made_change(ckpt: dict, path: Path, made: dict) -> str | None:
    """Why a checkpoint cannot be resumed as ``made`` (:func:`made_by`) besides its settings and split, or None: it
    was made by another number of processes, in another precision, on films whose pixels or labels changed since, or
    with another teacher at a teacher's path. An earlier version's checkpoint that lacks one of them is resumed as
    before, with a warning."""
    for key, (what, refusal) in _MADE.items():
        old, new = ckpt.get(key), made[key]
        if old is None:  # an earlier version's checkpoint: said (unless there is nothing to say: no teachers)
            if new != []:
                log.warning("%s records no %s (an earlier version's): resuming under %s, which must be the one it was "
                            "made with", shown(path), what, new if key in RECORDED else "this run's")
        elif old != new:
            return f"cannot resume from {shown(path)}: {refusal(old, new, made)}"
    return None


def machine_cache(records: Sequence[Record], spec: PreprocessSpec, ctx: Dist) -> ImageCache:
    """The image cache of RECORDS under SPEC, built once per machine (the cache folder may be local); the other
    processes then open it read-only."""
    paths = [r.path for r in records]
    if ctx.local_rank == 0:
        cache = build_cache(paths, spec, progress=True)
    ctx.barrier()
    return cache if ctx.local_rank == 0 else build_cache(paths, spec)
