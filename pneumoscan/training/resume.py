"""Checkpoints, and what a run may take over from an earlier one: ``train --resume`` its checkpoint, ``cv`` and
``ensemble --cv`` its fold runs. Each is refused when it was made by other settings or on other films, since its
weights would then be described by a config and a split they were not made with."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
import yaml

from pneumoscan.core.atomic import write_atomic
from pneumoscan.core.names import shown
from pneumoscan.data.layouts import Record, discover
from .config import TrainConfig
from .distributed import Dist

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
        raise ValueError(f"cannot resume from {path}: not a readable checkpoint ({reason}); delete it to start over") from None


_ABSENT = object()
# what a bundle's train_config records beside the settings: how the run was made, not a setting, so no config has
# it; --resume checks it on its own (resume_from)
RECORDED = ("processes",)


def config_changes(recorded: dict, cfg: TrainConfig, ignore: Collection[str] = ()) -> list[str]:
    """``cfg``'s settings that differ from a recorded config (``dataclasses.asdict`` of one, as a checkpoint,
    bundle.json's ``train_config`` or config.yaml hold it), each as ``key old -> new`` with dotted keys inside nested
    settings. ``ignore`` names top-level settings that may differ; a setting one side lacks counts as changed, unless
    the recorded config predates it and ``cfg`` leaves it at its default (a run by an earlier version), at any depth."""
    old, new = (json.loads(json.dumps(c)) for c in (recorded, dataclasses.asdict(cfg)))  # as JSON: tuples are lists
    _fill_defaults(old, new, json.loads(json.dumps(dataclasses.asdict(TrainConfig()))))
    for settings in (old, new):  # one bundle however its path is spelt (relative, absolute, through a link)
        if settings.get("init"):
            settings["init"] = os.path.realpath(settings["init"])
        settings["teacher"] = [os.path.realpath(t) for t in settings.get("teacher") or []]
    skip = {*ignore, *RECORDED}
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


def resume_from(path: Path, cfg: TrainConfig, records: Sequence[Record], ctx: Dist) -> dict | None:
    """The checkpoint ``--resume`` continues (None: start from scratch), refused when it was made by other
    settings than ``cfg`` (besides :data:`RESUMABLE`), by another number of processes (:func:`check_processes`) or
    on other films than ``records`` (RUN/split.csv, which belongs to the checkpoint: :func:`prepare_run_dir`).
    Refused before the run folder is touched, so its config.yaml stays that of the checkpoint; every rank gets rank
    0's verdict, so all refuse together."""
    ckpt = ctx.from_main(load_checkpoint(path) if ctx.main else None)
    if ckpt is None:
        return None
    recorded = ckpt.get("config")
    if recorded is None:  # an older version's checkpoint: the settings its run wrote to config.yaml when it began
        config_yaml = path.parent / "config.yaml"
        recorded = ctx.from_main(yaml.safe_load(config_yaml.read_text()) if ctx.main and config_yaml.is_file() else None)
    if recorded is None:
        raise ValueError(f"cannot resume from {shown(path)}: it records no training config and there is no "
                         "config.yaml beside it, so nothing shows it was made with these settings; delete it to start over")
    if changes := config_changes(recorded, cfg, RESUMABLE):
        raise ValueError(f"cannot resume from {shown(path)}: it was made with other settings ({', '.join(changes)}); "
                         "only epochs and time_budget may change on --resume: give its settings again, or train "
                         "into a new --out")
    check_processes(ckpt, path, ctx)
    if moved := ctx.from_main(split_change(path.parent / "split.csv", records) if ctx.main else None):
        raise ValueError(f"cannot resume from {shown(path)}: it was trained on another split ({moved}); give its "
                         "data and split again, or train into a new --out")
    return ckpt


def check_processes(ckpt: dict, path: Path, ctx: Dist) -> None:
    """Refuse to resume under another number of processes than the checkpoint's: the global batch, the learning
    rate (scaled with the processes) and the steps per epoch, and so the schedule's total, all follow it, so the
    run would go on as another recipe than its config.yaml and bundle describe. A checkpoint of an earlier version
    records no number: said, and resumed as before."""
    made_by = ckpt.get("processes")
    if made_by is None:
        if ctx.main:
            log.warning("%s records no number of processes (an earlier version's): resuming under %d, which must be "
                        "the number it was made with", shown(path), ctx.world)
    elif made_by != ctx.world:
        raise ValueError(f"cannot resume from {shown(path)}: it was made by {made_by} process(es) and this run has "
                         f"{ctx.world}; the global batch, the learning rate and the steps per epoch follow the number "
                         f"of processes: resume under {made_by}, or train into a new --out")
