"""Training augmentation: output shape and normalisation, flips off by default, optional grain, batch mixing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from pneumoscan.data.augment import NOISE_LEVELS, Augment
from pneumoscan.data.transforms import batch_mixing, to_input, train_transform

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


@pytest.mark.parametrize("mix", [{"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0},
                                 {"mixup": 1, "cutmix": 1}])  # an integer alpha (YAML's 1) failed in the first batch
def test_batch_mixing_mixes_images_and_targets_in_the_same_proportion(mix: dict) -> None:
    """Normal films all 0, pneumonia films all 1: after mixing, an image's mean is the share of pneumonia in it,
    which must be its target's pneumonia probability (MixUp blends, CutMix pastes a box of the area it reports)."""
    collate = batch_mixing(Augment(**mix), num_classes=2)
    torch.manual_seed(0)
    labels = [0, 1] * 8
    x, y = collate([(torch.full((1, 16, 16), float(label)), label) for label in labels])
    assert x.shape == (16, 1, 16, 16) and y.shape == (16, 2)
    torch.testing.assert_close(y.sum(1), torch.ones(16))
    torch.testing.assert_close(x.mean((1, 2, 3)), y[:, 1])
    assert ((y > 0) & (y < 1)).any(), "some films are mixed"


def test_batch_mixing_is_off_by_default_and_refuses_a_negative_alpha() -> None:
    assert batch_mixing(Augment(), 2) is None
    with pytest.raises(ValueError, match="mixup and cutmix are finite Beta alphas"):
        Augment(mixup=-0.2)


def test_gamma_is_drawn_within_its_range_darker_and_brighter_alike() -> None:
    """Each image's mid-grey maps as one gamma from [1 / 1.5, 1.5] would map it, and both directions occur."""
    torch.manual_seed(0)
    transform = train_transform(16, 0.0, 1.0, Augment(**{**vars(STILL), "gamma": 0.5}))
    mid = torch.full((1, 16, 16), 128, dtype=torch.uint8)
    out = np.array([float(transform(mid)[0, 0, 0]) for _ in range(200)])
    gammas = np.log(out) / np.log(128 / 255)
    assert gammas.min() >= 1 / 1.5 - 0.02 and gammas.max() <= 1.5 + 0.02
    assert (gammas < 0.9).mean() > 0.25 and (gammas > 1.1).mean() > 0.25
    assert float(train_transform(16, 0.0, 1.0, STILL)(mid)[0, 0, 0]) == pytest.approx(128 / 255)


@pytest.mark.parametrize("blur", [0.0, 1.5])
def test_blur_softens_about_half_the_images(blur: float) -> None:
    torch.manual_seed(0)
    transform = train_transform(32, 0.0, 1.0, Augment(**{**vars(STILL), "blur": blur}))
    stripes = torch.zeros((1, 32, 32), dtype=torch.uint8)
    stripes[:, :, ::2] = 255
    softened = np.array([float(transform(stripes).std()) < 0.49 for _ in range(200)])  # sharp stripes: std 0.5
    assert softened.mean() == 0.0 if blur == 0.0 else 0.35 < softened.mean() < 0.65


@pytest.mark.parametrize("field", ["gamma", "blur"])
@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_a_negative_or_non_finite_gamma_or_blur_range_is_refused(field: str, value: float) -> None:
    """NaN passed the check: a gamma of NaN turned every training film black for a whole run."""
    with pytest.raises(ValueError, match="gamma and blur are finite ranges"):
        Augment(**{field: value})


@pytest.mark.parametrize("field", ["mixup", "cutmix"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_mixing_alpha_is_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match="mixup and cutmix are finite Beta alphas"):
        Augment(**{field: value})
