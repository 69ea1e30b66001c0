"""The model bundle: one directory that holds everything needed to predict, with no pickled code.

    bundle/
      model.safetensors   weights
      model.onnx          the same model for ONNX Runtime (pneumoscan export; training writes it)
      bundle.json         model name and kwargs, task and classes, preprocessing, threshold, temperature,
                          training data fingerprint, validation metrics, package version, the SHA-256
                          of model.safetensors and model.onnx as written ("files"), evaluations recorded later
      MODEL_CARD.md       the same facts for people (model_card.py), regenerated whenever bundle.json changes

Every load checks the weights against the recorded SHA-256: damaged bytes of the same size load without error
and give wrong or NaN scores, so a mismatch is refused (ValueError) rather than used. bundle.json itself is not
covered: it is rewritten by design (the TTA threshold after export, a copied bundle with another threshold).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pneumoscan import __version__
from pneumoscan.core.atomic import write_atomic
from pneumoscan.data.preprocess import PreprocessSpec
from . import registry
from .ensemble_net import ENSEMBLE, EnsembleNet

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
ONNX_NAME = "model.onnx"  # where `pneumoscan export` puts the file by default and the onnx backend looks first
CARD = "bundle.json"

logger = logging.getLogger(__name__)


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
    source_size: int | None = None  # the training files' side and JPEG quality (preprocess.match_source)
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
    # "sha256:HEX" of each model file as written ({WEIGHTS: ..., ONNX_NAME: ...}); empty in bundles older than it
    files: dict[str, str] = field(default_factory=dict)
    # records added after training, without touching the weights (model_card.py): `evaluate --add-to-card` on other
    # data, and `threshold` choosing a new operating point (the newest record is the one in force)
    external_evaluations: list = field(default_factory=list)
    threshold_records: list = field(default_factory=list)

    @property
    def spec(self) -> PreprocessSpec:
        """How an image becomes this model's input: the same spec the training cache used."""
        return PreprocessSpec(self.size, self.resize_policy, self.source_size, self.source_quality)

    @property
    def model_id(self) -> str:
        return f"{self.model}-{self.task}-{self.data_fingerprint[:8] or 'untracked'}"

    @property
    def threshold_targets(self) -> tuple[float | None, float | None]:
        """(target sensitivity, max false-positive rate) of the policy in force, as metrics.choose_threshold takes
        them (both None: Youden's J): the newest `threshold` record's, else training's. A model scored another way
        (INT8) chooses its own thresholds by the same policy."""
        if self.threshold_records:
            newest = self.threshold_records[-1]
            return newest.get("target_sensitivity"), newest.get("max_false_positive_rate")
        return self.train_config.get("target_sensitivity", 0.95), None


def file_sha256(path: Path | str) -> str:
    """``sha256:HEX`` of a file's bytes, the form bundle.json records."""
    with Path(path).open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def save_bundle(directory: Path | str, model: torch.nn.Module, card: BundleCard) -> Path:
    """Write weights and card; each file lands atomically so a reader never sees half a bundle file. The card
    records the weights' SHA-256 (``card.files``) and drops any record of a model.onnx, which is of other
    weights now (export records the new one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp))
        card.files = {WEIGHTS: file_sha256(tmp)}  # hashed before it takes the real name: what was written, not read back later

    write_atomic(directory / WEIGHTS, write)
    save_card(directory, card)
    return directory


def save_card(directory: Path | str, card: BundleCard) -> None:
    """Rewrite bundle.json alone: what is chosen after the weights are saved (the TTA threshold needs the
    exported model) must not rewrite the weights."""
    text = json.dumps(asdict(card), indent=2, allow_nan=False)
    write_atomic(Path(directory) / CARD, text.encode())


def record_checksum(directory: Path | str, name: str, digest: str | None = None) -> None:
    """Add the SHA-256 of BUNDLE/NAME (``digest`` when the caller hashed it as written) to bundle.json. A bundle
    that records no checksum of its weights is left as it is: half a record would refuse its weights."""
    card = load_card(directory)
    if WEIGHTS in card.files:
        card.files[name] = digest or file_sha256(Path(directory) / name)
        save_card(directory, card)


def load_card(directory: Path | str) -> BundleCard:
    data = json.loads((Path(directory) / CARD).read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: bundle format {data.get('format_version')} is not {FORMAT_VERSION}")
    return BundleCard(**data)


def verify_file(directory: Path | str, card: BundleCard, name: str, remedy: str = "restore the bundle from a good copy") -> None:
    """Refuse (ValueError) a bundle file whose SHA-256 differs from the one recorded when it was written. A
    bundle older than the record is accepted with a warning, since nothing says what its bytes should be."""
    path = Path(directory) / name
    expected = card.files.get(name)
    if expected is None:
        if not card.files:
            logger.warning("%s: bundle.json records no checksums (a bundle written before pneumoscan kept them), so "
                           "damaged files cannot be detected; train it again to get a checked bundle", directory)
            return
        raise ValueError(f"{path}: bundle.json records checksums, but none for this file")
    try:
        actual = file_sha256(path)
    except FileNotFoundError:
        raise ValueError(f"{path} is missing, but bundle.json lists it") from None
    if actual != expected:
        raise ValueError(f"{path} is damaged: its SHA-256 is {actual[7:19]}..., bundle.json recorded {expected[7:19]}... "
                         f"when it was written; {remedy}")


def _read_weights(directory: Path | str, card: BundleCard) -> dict[str, torch.Tensor]:
    """The bundle's tensors, checked against the recorded SHA-256; a damaged file is a wrong input (a reason and
    exit status 2), not a crash and not a model that answers."""
    verify_file(directory, card, WEIGHTS)
    path = Path(directory) / WEIGHTS
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


def load_bundle(directory: Path | str) -> tuple[torch.nn.Module, BundleCard]:
    """The model in eval mode, built from the registry (no pretrained download) and the saved weights."""
    card = load_card(directory)
    if card.model == ENSEMBLE:  # several members in one bundle
        model = EnsembleNet.from_card(card)
    else:
        model = registry.create(card.model, num_classes=len(card.classes), in_chans=1, pretrained=False,
                                image_size=card.size, **card.model_kwargs)
    model.load_state_dict(_read_weights(directory, card))
    return model.eval(), card


def load_weights_into(model: torch.nn.Module, directory: Path | str) -> list[str]:
    """Copy a bundle's weights into ``model`` (same architecture): the start for fine-tuning a trained model on
    new films or a related task. A classifier for another number of classes keeps its fresh weights; the names
    of those tensors are returned. Any other mismatch is an error, since the bundle is then another model."""
    card = load_card(directory)
    weights = _read_weights(directory, card)
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
