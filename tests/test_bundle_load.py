"""A bundle's model built without the random start its file then overwrites (torch's meta device), and built as
before wherever a tensor it holds does not come from the file: a model never runs with a value nobody set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pneumoscan.models import registry as models
from pneumoscan.models.bundle import load_bundle, save_bundle
from pneumoscan.models.card import BundleCard


def test_loading_a_bundle_draws_no_random_numbers(tiny_bundle: Path) -> None:
    """Every weight comes from the file, so none is drawn first: a load left torch's global random stream where it
    was (a seeded run's next draws were moved by each bundle it loaded), and cost a random start of every layer."""
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    model, _ = load_bundle(tiny_bundle)
    assert torch.equal(torch.rand(4), expected)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))


class _Held(nn.Module):
    """A convolution whose output is scaled by a tensor the weights file does not keep, made by its builder: a
    buffer left out of the state dict, a plain attribute, or a value read while building (which the meta device,
    holding no values, cannot give)."""

    def __init__(self, num_classes: int, in_chans: int, pretrained: bool, held: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, num_classes, 3)
        scale = torch.full((num_classes,), 3.0)
        if held == "buffer":
            self.register_buffer("scale", scale, persistent=False)
        elif held == "attribute":
            self.scale = scale
        elif held == "list":  # in a list: no attribute of the module is a tensor
            self.scales = [scale]
        elif held == "lazy":  # a layer whose weights take their shape from its first input
            self.lazy = nn.LazyLinear(num_classes)
        else:  # "read": a size worked out from a tensor's value
            self.scale = torch.full((int(scale.sum().item()) // 3,), 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x).mean((2, 3))
        if hasattr(self, "lazy"):
            return out + self.lazy(x.flatten(1))
        return out * (self.scales[0] if hasattr(self, "scales") else self.scale).to(x.device)


def _register_held(origin: str) -> None:
    """:class:`_Held` registered as model "held" by a builder of module ``origin``: pneumoscan's own (built on the
    meta device first) or a plugin's (built as it always was)."""

    def build(num_classes: int, in_chans: int, pretrained: bool, held: str) -> nn.Module:
        return _Held(num_classes, in_chans, pretrained, held)

    build.__module__ = origin
    models.register("held", mean=0.5, std=0.25)(build)


@pytest.mark.parametrize("origin", ["pneumoscan.models.registry", "site_models"])
@pytest.mark.parametrize("held", ["buffer", "attribute", "read", "list", "lazy"])
def test_a_model_holding_a_tensor_its_file_does_not_keep_is_built_with_it(
        held: str, origin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor the builder makes and the file does not keep would stay on the meta device, without a value, and a
    lazy layer has no shape there: such a model is built with its values and then loaded, and scores as the model
    that was saved, and so does a plugin's, which is never built on the meta device."""
    monkeypatch.setattr(models, "_REGISTRY", models._REGISTRY.copy())
    _register_held(origin)
    saved = _Held(2, 1, False, held).eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.inference_mode():
        expected = saved(x)  # a lazy layer takes its shape here, before it is saved
    bundle = save_bundle(tmp_path / "bundle", saved,
                         BundleCard("held", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 16, "squash", 0.5, 0.25,
                                    threshold=0.5, model_kwargs={"held": held}))  # fmt: skip
    torch.manual_seed(0)
    draws = torch.rand(4)
    torch.manual_seed(0)
    model, _ = load_bundle(bundle)
    assert torch.equal(torch.rand(4), draws), "the load moved torch's random stream"
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    with torch.inference_mode():
        assert torch.allclose(model(x), expected)


def test_weights_of_another_precision_are_loaded_in_the_models(tmp_path: Path) -> None:
    """A file of float64 weights for a float32 model: the model keeps its own precision, as a copy into it did."""
    saved = models.create("simple_cnn", num_classes=2, in_chans=1, image_size=32).double().eval()
    bundle = save_bundle(tmp_path / "bundle", saved,
                         BundleCard("simple_cnn", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 32, "squash",
                                    0.5, 0.25, threshold=0.5))  # fmt: skip
    model, _ = load_bundle(bundle)
    assert {p.dtype for p in model.state_dict().values() if p.is_floating_point()} == {torch.float32}
    x = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(model(x), saved(x.double()).float(), atol=1e-5)
