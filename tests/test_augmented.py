"""audit --augmented: a grid of training films as the model sees them after the training augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pneumoscan.cli import main
from pneumoscan.data.audit import GUTTER, augmented_grid
from pneumoscan.data.decode import read_gray
from pneumoscan.data.layouts import discover
from pneumoscan.data.preprocess import resize
from pneumoscan.data.augment import Augment


def _tiles(png: Path) -> list[np.ndarray]:
    """The grid's tiles: the connected regions that are not the gutter colour, as grey arrays."""
    rgb = np.asarray(Image.open(png).convert("RGB"))
    labels, count = ndimage.label(~np.all(rgb == GUTTER, axis=-1))
    return [rgb[region][..., 0] for region in ndimage.find_objects(labels)]


def test_augmented_grid_has_n_tiles_that_differ_from_the_films_as_cached(tiny_dataset: Path, tmp_path: Path) -> None:
    found = discover(tiny_dataset)
    augmented = _tiles(augmented_grid(found, 5, tmp_path / "aug.png", size=32))
    plain = _tiles(augmented_grid(found, 5, tmp_path / "plain.png", size=32, augment=Augment.off()))
    assert len(augmented) == len(plain) == 5
    assert all(t.shape == (32, 32) for t in augmented + plain)
    # without augmentation each tile is the training film as cached; with it, every tile has changed
    train = sorted((r for r in found.records if r.split == "train"), key=lambda r: r.path)
    assert np.array_equal(plain[0], resize(read_gray(train[0].path, target=32), 32))
    assert all(np.abs(a.astype(int) - p).mean() > 2 for a, p in zip(augmented, plain))
    # a fixed seed: the same grid twice
    again = _tiles(augmented_grid(found, 5, tmp_path / "again.png", size=32))
    assert all(np.array_equal(a, b) for a, b in zip(augmented, again))


def test_audit_cli_draws_the_configs_augmentation(tiny_dataset: Path, tmp_path: Path) -> None:
    config = tmp_path / "plain.yaml"
    config.write_text("image_size: 40\naugment: false\n")
    out = tmp_path / "grid.png"
    assert main(["-q", "audit", str(tiny_dataset), "--augmented", "3", "--augmented-out", str(out),
                 "--config", str(config)]) == 0
    reference = augmented_grid(discover(tiny_dataset), 3, tmp_path / "ref.png", size=40, augment=Augment.off())
    assert [t.shape for t in _tiles(out)] == [(40, 40)] * 3
    assert all(np.array_equal(a, b) for a, b in zip(_tiles(out), _tiles(reference)))


def test_audit_refuses_augmented_options_without_augmented(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    """`--augmented-out` or `--config` without `--augmented N` drew nothing and exited 0: a newcomer who forgot N
    looked for a grid that was never made. Refused before the audit runs, naming the missing option."""
    for flags in (["--augmented-out", str(tmp_path / "grid.png")], ["--config", str(tmp_path / "none.yaml")]):
        assert main(["-q", "audit", str(tiny_dataset), "--json-out", str(tmp_path / "a.json"), *flags]) == 2
        err = capsys.readouterr().err
        assert f"{flags[0]} only with --augmented N" in err, err
    assert not list(tmp_path.iterdir())
