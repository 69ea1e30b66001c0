"""Memory review: what scoring holds grows with the films it is given only as far as it must."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from pneumoscan.data.preprocess import TTA_VIEWS
from pneumoscan.inference.predict import tta_views

VIEWS_PEAK = """
import collections, gc
import numpy as np
from pneumoscan.inference import predict
from pneumoscan.inference.predict import tta_views
predict.TTA_BLOCK_PIXELS = 1 << 19  # blocks of 0.5 Mpx: a test of 5 Mpx of films, not of 40
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
images = np.random.default_rng(0).integers(0, 256, (300, 128, 128), np.uint8)
collections.deque(map(np.sum, tta_views(images[:4])), 0)  # torch and torchvision loaded and warmed up
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident size starts again from the current one
before = status("VmRSS:")
collections.deque(map(np.sum, tta_views(images)), 0)  # read one at a time, as Predictor.probabilities reads them
print((status("VmHWM:") - before) / images.nbytes)
gc.freeze()  # as pneumoscan's entry: its exit walks no torch objects
"""


def test_test_time_views_of_many_films_hold_about_one_more_copy_of_them() -> None:
    """evaluate --tta (and threshold, training's TTA threshold, export --int8) reads every film's views at once:
    each was warped in one call over all the films, which holds about 9 bytes a pixel of them (3,000 films at 192
    px: 949 MiB), so memory grew with the number of films. Warped a block at a time, a view costs one more uint8
    copy of the films and a block's warp."""
    out = subprocess.run([sys.executable, "-c", VIEWS_PEAK], capture_output=True, text=True, check=True, timeout=120,
                         cwd=Path(__file__).parents[1])  # a fresh process: its peak is this work's alone
    added = float(out.stdout)
    # one view, and a block's float32 warp with its mask and output (9 bytes a pixel of 0.5 Mpx: 0.9 of these films)
    # besides; the whole batch warped at once held 9.0 times the films
    assert added < 4, f"the views added {added:.1f} times the films' bytes at their peak"


def test_test_time_views_are_the_warps_of_the_whole_batch() -> None:
    """The views warped a block at a time are those torchvision gives warping every film at once (within a grey
    level: a warp's rounding may differ with the batch's layout), for a batch that is not a whole number of blocks."""
    side = 96
    images = np.random.default_rng(1).integers(0, 256, (700, side, side), np.uint8)  # 6.5 Mpx: a block and a half
    whole = torch.from_numpy(images)[:, None]
    views = list(tta_views(images))
    assert len(views) == len(TTA_VIEWS)
    for (zoom, shift), view in zip(TTA_VIEWS, views):
        moved = round(shift * side)
        expected = F.affine(whole, angle=0.0, translate=[moved, moved], scale=zoom, shear=[0.0, 0.0],
                            interpolation=InterpolationMode.BILINEAR)[:, 0].numpy()  # fmt: skip
        assert view.shape == images.shape and view.dtype == np.uint8
        assert np.abs(view.astype(np.int16) - expected).max() <= 1, f"view {zoom}, {shift}"
    assert not np.array_equal(views[1], images)  # a zoom moves the pixels: the comparison is not of copies
