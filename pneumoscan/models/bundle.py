"""The model bundle: one directory that holds everything needed to predict, with no pickled code.

    bundle/
      model.safetensors   weights
      model.onnx          the same model for ONNX Runtime (pneumoscan export; training writes it)
      bundle.json         model name and kwargs, task and classes, preprocessing, threshold, temperature,
                          training data fingerprint, validation metrics, package version, the SHA-256
                          of model.safetensors, model.onnx and the INT8 files as written ("files"), evaluations
                          recorded later, and the SHA-256 of all that ("checksum")
      MODEL_CARD.md       the same facts for people (model_card.py), regenerated whenever bundle.json changes

This module holds the torch side: writing the weights and building the model from them, checked against their
recorded SHA-256 at every load. The card and the checksums are :mod:`.card`'s, which needs no torch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch.overrides import TorchFunctionMode

from pneumoscan.core.atomic import write_atomic
from . import register_first, registry
from .card import (ENSEMBLE, WEIGHTS, BundleCard, load_card, member_label, not_finite_weights, save_card,
                   verified_bytes)
from .ensemble_net import EnsembleNet

log = logging.getLogger(__name__)


def save_bundle(directory: Path | str, model: torch.nn.Module, card: BundleCard) -> Path:
    """Write weights and card; each file lands atomically so a reader never sees half a bundle file. The card
    records the weights' SHA-256 (``card.files``) and drops any record of a model.onnx, which is of other
    weights now (export records the new one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # serialised here and written by Python: safetensors' own file functions refuse a path that is not UTF-8
    weights = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    card.files = {WEIGHTS: "sha256:" + hashlib.sha256(weights).hexdigest()}  # what is written, not read back later
    write_atomic(directory / WEIGHTS, weights)
    save_card(directory, card)
    return directory


def _read_weights(directory: Path | str, card: BundleCard) -> dict[str, torch.Tensor]:
    """The bundle's tensors, checked against the recorded SHA-256 and for NaN or infinity; a damaged file is a wrong
    input (a reason and exit status 2), not a crash and not a model that answers. A tensor not finite is refused here,
    at load, by name: its digest holds where the card was sealed again over it (or training wrote it, diverged), and
    the model would otherwise refuse each film in turn (serve: 500, then unhealthy) instead of never starting."""
    data = verified_bytes(directory, card, WEIGHTS)  # read by Python, as save_bundle writes it
    path = Path(directory) / WEIGHTS
    try:
        tensors = load(data)
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    names = [name for name, tensor in tensors.items() if tensor.is_floating_point()]
    # a sum is NaN or infinite where a value is, and finite otherwise unless it overflows (float64 weights of 1e300):
    # one pass a tensor without a temporary, a fifth of isfinite's mask's cost; a tensor whose sum is not finite is
    # counted value by value, so an overflow alone refuses nothing
    sums = torch.stack([tensors[name].sum(dtype=torch.float64) for name in names]) if names else torch.zeros(0)
    for i in (~torch.isfinite(sums)).nonzero().flatten().tolist():
        if bad := int((~torch.isfinite(tensor := tensors[names[i]])).sum()):
            raise not_finite_weights(path, names[i], bad, tensor.numel())
    return tensors


def load_bundle(directory: Path | str, best_so_far: bool = False) -> tuple[torch.nn.Module, BundleCard]:
    """The model in eval mode, built from the registry (no pretrained download) and the saved weights.
    ``best_so_far``: training reads its run's best weights so far (:func:`.card.load_card`, refused otherwise)."""
    card = load_card(directory, best_so_far)
    members = card.model_kwargs["members"] if card.model == ENSEMBLE else []
    architectures = [m["model"] for m in members] if members else [card.model]
    if (i := next((i for i, name in enumerate(architectures) if not registry.known(name)), None)) is not None:
        whose = f"{member_label(i, len(members), members[i]['source'])}: " if members else ""
        raise ValueError(f"{directory}: {whose}its model {architectures[i]!r} is not registered in this process: "
                         f"{register_first('model', card.plugin_module('model', architectures[i]))}")

    def build() -> torch.nn.Module:
        if card.model == ENSEMBLE:  # several members in one bundle
            return EnsembleNet.from_card(card)
        return registry.create(card.model, num_classes=len(card.classes), in_chans=1, pretrained=False,
                               image_size=card.size, **card.model_kwargs)

    def fresh() -> torch.nn.Module:
        try:
            return build()
        except TypeError as e:  # a setting the builder does not take: a card edited, or of another version of it
            raise ValueError(f"{directory}: its model_kwargs do not fit the model {card.model!r} ({e}); restore the "
                             "bundle from a good copy") from None

    # the meta-device build for the builders this project vouches for alone (its own and timm's, whose every model
    # it was checked on): a plugin's model is built and loaded as it always was
    vouched = all(_vouched(name) for name in architectures)
    shell = _shell(build) if vouched else None
    model = _unseeded(fresh) if shell is None else None  # a builder that fails says so before the weights are read
    weights = _read_weights(directory, card)
    if shell is not None:
        try:
            filled = _assigned(shell, weights)
        except Exception as e:  # a module's own load hook, a lazy parameter: the plain load's to report
            log.debug("loaded as usual, not assigned on the meta device: %s", e)
            filled = None
        if filled is not None:
            return filled.eval(), card
        model = _unseeded(fresh)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # another architecture's weights (a legacy bundle, or a card edited and resealed)
        detail = " ".join(str(e).split("\n\t")[1:2])[:160]  # torch's first complaint, e.g. the unexpected keys
        built = registry.builder_module(card.model)
        if _vouched(card.model):
            raise ValueError(f"{directory}: its weights are not those of a {card.model} ({detail}); restore the "
                             "bundle from a good copy") from None
        # a plugin's builder: the bundle may be sound, made with another model of that name or version
        raise ValueError(f"{directory}: its weights are not those of a {card.model} as {built} builds it ({detail}); "
                         f"read it with the {card.model} it was trained with (without {built}, or with that version "
                         "of it), or restore the bundle from a good copy") from None
    return model.eval(), card


def _vouched(model: str) -> bool:
    """Whether the builder of ``model`` is this project's or timm's, whose models it knows, not a plugin's."""
    return registry.builder_module(model).startswith(("pneumoscan.", "timm"))


def _unseeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The model ``build`` makes with its random start, drawn from a copy of torch's global random stream: a load
    leaves the stream where it was, whichever way the model is built (a seeded run's next draws are not moved by
    the bundles it loads)."""
    with torch.random.fork_rng(devices=[]):
        return build()


class _NoDraws(TorchFunctionMode):
    """Random fills of meta tensors skipped: they have no values to fill, and torch works ``normal_`` out in Python
    there (2 ms a tensor, slower than drawing the numbers on the CPU: timm's EfficientNet-Lite0 built slower on the
    meta device than with its random start)."""

    FILLS = (torch.Tensor.normal_, torch.Tensor.uniform_, torch.nn.init.normal_, torch.nn.init.uniform_,
             torch.nn.init.trunc_normal_, torch.nn.init.kaiming_normal_, torch.nn.init.kaiming_uniform_,
             torch.nn.init.xavier_normal_, torch.nn.init.xavier_uniform_)

    def __torch_function__(self, func: Callable, types: object, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        filled = args[0] if args else kwargs.get("tensor")
        if func in self.FILLS and isinstance(filled, torch.Tensor) and filled.is_meta:
            return filled
        return func(*args, **kwargs)


def _shell(build: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
    """The model ``build`` makes, built on torch's meta device: its tensors have shapes and no values, so none is
    drawn at random only to be overwritten by the file's (a third of a small model's load). None where the builder
    cannot run there (a value read from a tensor while building): the model is then built as usual."""
    try:
        with torch.device("meta"), _NoDraws():
            return build()
    except Exception as e:  # any failure here is the plain build's to report, in its own words
        log.debug("built as usual, not on the meta device: %s", e)
        return None


def _assigned(shell: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module | None:
    """``shell`` (:func:`_shell`) holding ``weights`` as its own tensors, in its own dtypes, where they are every
    tensor it holds: each parameter and buffer under its own name (none shared, none that the file does not keep)
    and of its shape, and no other tensor left on the meta device. None otherwise, and the model is built with
    values and loaded as usual, which also gives the reasons of weights that do not fit: a model never runs
    with a tensor the file did not fill."""
    own = shell.state_dict(keep_vars=True)
    held = [*shell.named_parameters(remove_duplicate=False), *shell.named_buffers(remove_duplicate=False)]
    if (own.keys() != weights.keys() or len(held) != len(own) or len({id(t) for _, t in held}) != len(held)
            or any(name not in own for name, _ in held)
            or any(own[k].shape != v.shape for k, v in weights.items())):
        return None
    shell.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, assign=True)
    attributes = [value for module in shell.modules() for value in vars(module).values()]
    contained = [*attributes,
                 *(item for value in attributes if isinstance(value, (list, tuple)) for item in value),
                 *(item for value in attributes if isinstance(value, dict) for item in value.values())]
    left = (*shell.parameters(), *shell.buffers(), *(t for t in contained if isinstance(t, torch.Tensor)))
    return None if any(t.is_meta for t in left) else shell


def load_weights_into(model: torch.nn.Module, directory: Path | str, card: BundleCard | None = None) -> list[str]:
    """Copy a bundle's weights into ``model`` (same architecture): the start for fine-tuning a trained model on
    new films or a related task. A classifier for another number of classes keeps its fresh weights; the names
    of those tensors are returned. Any other mismatch is an error, since the bundle is then another model.
    ``card``: the bundle's card where the caller has read it (its weights are checked against that one read)."""
    card = card if card is not None else load_card(directory)
    if card.model == ENSEMBLE:  # several models in one bundle: no one architecture to fine-tune
        raise ValueError(f"{directory} holds an ensemble, which cannot be fine-tuned: start from one of its members "
                         "(--init MEMBER) or distil it into one model (--teacher)")
    weights = _read_weights(directory, card)
    own = model.state_dict()
    if not callable(getattr(model, "get_classifier", None)):
        raise ValueError(f"{type(model).__name__} has no get_classifier() (timm's name for a model's head), which "
                         f"starting from {directory} needs, to tell a head for another number of classes from the "
                         "rest: give the model one that returns its last layer")
    classifier = {id(p) for p in model.get_classifier().parameters()}
    head = [name for name, p in model.named_parameters() if id(p) in classifier]
    fresh = [k for k in head if k in weights and weights[k].shape != own[k].shape]
    wrong = sorted(k for k in own.keys() ^ weights.keys()) + [
        k for k in own.keys() & weights.keys() if k not in fresh and weights[k].shape != own[k].shape
    ]
    if wrong:  # the tensors' names mean little to a user: the remedy is the model the bundle holds
        settings = " with its model_kwargs" if card.model_kwargs else ""
        raise ValueError(f"{directory} holds a {card.model}, whose weights do not fit the model built to start from "
                         f"it ({len(wrong)} tensors differ, {wrong[0]} first): fine-tuning keeps the architecture, so "
                         f"build the one it holds (train --model {card.model}{settings})")
    model.load_state_dict({k: v for k, v in weights.items() if k not in fresh}, strict=False)
    return fresh
