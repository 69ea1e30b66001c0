"""Training augmentation: output shape and normalisation, flips off by default, optional grain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from pneumoscan.data.transforms import NOISE_LEVELS, Augment, to_input, train_transform

STILL = Augment(zoom=0.0, shift=0.0, rotation=0.0, shear=0.0, brightness=0.0, contrast=0.0, noise=0.0)


def test_output_is_the_model_input_at_the_training_size() -> None:
    pixels = torch.randint(0, 256, (1, 100, 100), dtype=torch.uint8)
    out = train_transform(64, 0.5, 0.25)(pixels)
    assert out.shape == (1, 64, 64) and out.dtype == torch.float32
    constant = torch.full((1, 64, 64), 200, dtype=torch.uint8)
    # with every random range at zero the pipeline is only the shared normalisation
    torch.testing.assert_close(train_transform(64, 0.5, 0.25, STILL)(constant), to_input(constant, 0.5, 0.25))


def test_no_horizontal_flip_unless_asked() -> None:
    """A chest film is lateralised: flips are opt-in."""
    def flips(augment: Augment) -> bool:
        return any(isinstance(t, v2.RandomHorizontalFlip) for t in train_transform(32, 0.5, 0.25, augment).transforms)

    assert not flips(Augment()) and flips(Augment(hflip=True))


@pytest.mark.parametrize("noise", [0.0, 0.04])
def test_grain_up_to_the_set_level_is_added_to_about_half_the_images(noise: float) -> None:
    torch.manual_seed(0)
    transform = train_transform(48, 0.0, 1.0, Augment(**{**vars(STILL), "noise": noise}))
    constant = torch.full((1, 48, 48), 128, dtype=torch.uint8)
    stds = np.array([float(transform(constant).std()) for _ in range(200)])
    grainy = stds > 0
    if noise == 0.0:
        assert not grainy.any()
    else:
        assert 0.35 < grainy.mean() < 0.65
        # each noisy image gets a quarter, half, three quarters or all of the level, at full strength (a uint8
        # result truncated towards zero instead of rounded came out 14 % weak at the faintest level)
        levels = stds[grainy] / noise
        nearest = np.array(NOISE_LEVELS)[np.abs(levels[:, None] - NOISE_LEVELS).argmin(axis=1)]
        np.testing.assert_allclose(levels, nearest, rtol=0.07)  # sampling: ~1.5 % per image
        assert set(nearest) == set(NOISE_LEVELS), "faint and strong grain all occur"
