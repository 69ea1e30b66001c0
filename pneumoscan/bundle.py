"""The model bundle: one directory that holds everything needed to predict, with no pickled code.

    bundle/
      model.safetensors   weights
      bundle.json         model name and kwargs, task and classes, preprocessing, threshold, temperature,
                          training data fingerprint, validation metrics, package version
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__, models
from .decode import PreprocessSpec

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CARD = "bundle.json"


@dataclass
class BundleCard:
    """What a bundle says about its model; saved as bundle.json."""

    model: str
    task: str
    classes: list[str]
    positive: str
    size: int
    resize_policy: str
    mean: float
    std: float
    source_size: int | None = None  # the training files' side and JPEG quality (decode.match_source)
    source_quality: int | None = None
    threshold: float = 0.5
    threshold_policy: str = "fixed 0.5"
    # test-time augmentation averages views and so shifts the scores: its own threshold, same policy (predict --tta)
    tta_threshold: float | None = None
    temperature: float = 1.0
    model_kwargs: dict = field(default_factory=dict)
    data_fingerprint: str = ""
    val_metrics: dict = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    package_version: str = __version__
    format_version: int = FORMAT_VERSION

    @property
    def spec(self) -> PreprocessSpec:
        """How an image becomes this model's input: the same spec the training cache used."""
        return PreprocessSpec(self.size, self.resize_policy, self.source_size, self.source_quality)

    @property
    def model_id(self) -> str:
        return f"{self.model}-{self.task}-{self.data_fingerprint[:8] or 'untracked'}"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_bundle(directory: Path | str, model: torch.nn.Module, card: BundleCard) -> Path:
    """Write weights and card; each file lands atomically so a reader never sees half a bundle file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS, lambda p: save_file(state, str(p)))
    save_card(directory, card)
    return directory


def save_card(directory: Path | str, card: BundleCard) -> None:
    """Rewrite bundle.json alone: what is chosen after the weights are saved (the TTA threshold needs the
    exported model) must not rewrite the weights."""
    text = json.dumps(asdict(card), indent=2, allow_nan=False)
    _atomic_write(Path(directory) / CARD, lambda p: p.write_text(text))


def load_card(directory: Path | str) -> BundleCard:
    data = json.loads((Path(directory) / CARD).read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: bundle format {data.get('format_version')} is not {FORMAT_VERSION}")
    return BundleCard(**data)


def _read_weights(directory: Path | str) -> dict[str, torch.Tensor]:
    """The bundle's tensors; a damaged file is a wrong input (a reason and exit status 2), not a crash."""
    path = Path(directory) / WEIGHTS
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


def load_bundle(directory: Path | str) -> tuple[torch.nn.Module, BundleCard]:
    """The model in eval mode, built from the registry (no pretrained download) and the saved weights."""
    card = load_card(directory)
    model = models.create(card.model, num_classes=len(card.classes), in_chans=1, pretrained=False, image_size=card.size,
                          **card.model_kwargs)
    model.load_state_dict(_read_weights(directory))
    return model.eval(), card


def load_weights_into(model: torch.nn.Module, directory: Path | str) -> list[str]:
    """Copy a bundle's weights into ``model`` (same architecture): the start for fine-tuning a trained model on
    new films or a related task. A classifier for another number of classes keeps its fresh weights; the names
    of those tensors are returned. Any other mismatch is an error, since the bundle is then another model."""
    card = load_card(directory)
    weights = _read_weights(directory)
    own = model.state_dict()
    classifier = {id(p) for p in model.get_classifier().parameters()}
    head = [name for name, p in model.named_parameters() if id(p) in classifier]
    fresh = [k for k in head if k in weights and weights[k].shape != own[k].shape]
    wrong = sorted(k for k in own.keys() ^ weights.keys()) + [
        k for k in own.keys() & weights.keys() if k not in fresh and weights[k].shape != own[k].shape
    ]
    if wrong:
        raise ValueError(f"{directory} holds a {card.model} whose weights do not fit this model: {wrong[:5]}")
    model.load_state_dict({k: v for k, v in weights.items() if k not in fresh}, strict=False)
    return fresh
