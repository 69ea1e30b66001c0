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
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from pneumoscan.core.atomic import write_atomic
from . import register_first, registry
from .card import (ENSEMBLE, WEIGHTS, BundleCard, load_card, member_label, not_finite_weights, save_card,
                   verified_bytes)
from .ensemble_net import EnsembleNet


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
    # x * 0 is NaN where x is NaN or infinite and 0 elsewhere: one sum a tensor, a third of isfinite's mask's cost
    sums = torch.stack([(tensors[name] * 0).sum(dtype=torch.float64) for name in names]) if names else torch.zeros(0)
    if (bad := torch.isnan(sums).nonzero()).numel():
        tensor = tensors[names[int(bad[0])]]
        raise not_finite_weights(path, names[int(bad[0])], int((~torch.isfinite(tensor)).sum()), tensor.numel())
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
    try:
        if card.model == ENSEMBLE:  # several members in one bundle
            model = EnsembleNet.from_card(card)
        else:
            model = registry.create(card.model, num_classes=len(card.classes), in_chans=1, pretrained=False,
                                    image_size=card.size, **card.model_kwargs)
    except TypeError as e:  # a setting the builder does not take: a card edited, or of another version of the model
        raise ValueError(f"{directory}: its model_kwargs do not fit the model {card.model!r} ({e}); restore the "
                         "bundle from a good copy") from None
    try:
        model.load_state_dict(_read_weights(directory, card))
    except RuntimeError as e:  # another architecture's weights (a legacy bundle, or a card edited and resealed)
        detail = " ".join(str(e).split("\n\t")[1:2])[:160]  # torch's first complaint, e.g. the unexpected keys
        built = registry.builder_module(card.model)
        if built.startswith(("pneumoscan.", "timm")):
            raise ValueError(f"{directory}: its weights are not those of a {card.model} ({detail}); restore the "
                             "bundle from a good copy") from None
        # a plugin's builder: the bundle may be sound, made with another model of that name or version
        raise ValueError(f"{directory}: its weights are not those of a {card.model} as {built} builds it ({detail}); "
                         f"read it with the {card.model} it was trained with (without {built}, or with that version "
                         "of it), or restore the bundle from a good copy") from None
    return model.eval(), card


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
