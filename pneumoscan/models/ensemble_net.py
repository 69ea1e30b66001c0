"""The ensemble's network: several member models on one input, their calibrated logits averaged (built and
calibrated by :mod:`pneumoscan.training.ensemble`, loaded by :func:`pneumoscan.models.bundle.load_bundle`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from . import registry
from .card import member_label

if TYPE_CHECKING:
    from .card import BundleCard


class Member(nn.Module):
    """One member on the ensemble's input: resize to its size, normalise as it was trained, its calibrated logits.
    ``heatmap_scale``: the member bundle's own (:attr:`~.card.BundleCard.heatmap_scale`; None when it records none),
    which its Grad-CAM map is drawn on inside the ensemble as it is in its own bundle. ``source``: its bundle folder,
    which a refusal about it names (:func:`~.card.member_label`; None: a network built by hand)."""

    def __init__(self, net: nn.Module, size: int, mean: float, std: float, temperature: float, input_size: int,
                 heatmap_scale: float | None = None, source: str | None = None) -> None:
        super().__init__()
        self.net, self.size, self.mean, self.std, self.temperature = net, size, mean, std, temperature
        self.heatmap_scale, self.source = heatmap_scale, source
        # a constant scale, not a target size: the exported Resize then keeps static spatial sizes, which ONNX's
        # adaptive pooling (simple_cnn) needs; nudged up so floor(S * scale) is exactly ``size``
        self.scale = size / input_size
        while math.floor(input_size * self.scale) < size:
            self.scale = math.nextafter(self.scale, math.inf)
        self.input_size = input_size

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] input (N, 1, S, S) -> this member's normalised input (N, 1, s, s)."""
        if self.size != self.input_size:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False, antialias=False,
                              recompute_scale_factor=False)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(x)) / self.temperature


class EnsembleNet(nn.Module):
    """The mean of the members' calibrated logits (see the module doc)."""

    def __init__(self, members: Sequence[Member]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)

    def member_inputs(self, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor, float | None]]:
        """(member network, its input, its heatmap scale) for each member: Grad-CAM explains each at its own last
        conv, on its own scale."""
        return [(m.net, m.prepare(x), m.heatmap_scale) for m in self.members]

    def member_label(self, position: int) -> str:
        """How a refusal names member ``position`` (from 0): :func:`~.card.member_label`, from 1, with its folder."""
        return member_label(position, len(self.members), self.members[position].source)

    @classmethod
    def from_card(cls, card: BundleCard) -> EnsembleNet:
        """The architecture bundle.json describes, with fresh weights (load_bundle then loads the saved ones)."""
        return cls([  # heatmap_scale is absent from ensembles older than it
            Member(registry.create(m["model"], num_classes=len(card.classes), in_chans=1, pretrained=False,
                                   image_size=m["size"], **m["model_kwargs"]), m["size"], m["mean"], m["std"],
                   m["temperature"], card.size, m.get("heatmap_scale"), m["source"])
            for m in card.model_kwargs["members"]
        ])  # fmt: skip
