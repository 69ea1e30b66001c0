"""notebooks/tour.ipynb: it runs end to end on the real data (small setting), and it is stored without outputs.

It runs by Jupyter's notebook runner (nbclient, which `pytest --nbmake` runs each notebook with) from the test, rather
than being collected by the suite's own pytest: its kernel gets PNEUMOSCAN_TOUR_SMALL=1 and its own output folder,
and a plain `pytest notebooks/` by a user keeps its full size. A child pytest to run it had cost an interpreter's
start and its plugins' imports.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from pneumoscan.inference.predict import predict_paths

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "tour.ipynb"
TOUR_SECONDS = 400  # the whole small run's bound (it takes 2-3 minutes): a cell that hangs fails the test


def run_notebook(path: Path, seconds: float) -> None:
    """Run the notebook's cells in a new kernel in its folder, as `pytest --nbmake` does, the whole run within
    ``seconds``: nbclient bounds each cell's wait, not the run's, so each cell may wait as long as the run has left.
    A cell's error or timeout raises nbclient's CellExecutionError or CellTimeoutError, with its traceback."""
    deadline = time.monotonic() + seconds
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout_func=lambda cell: max(1, math.ceil(deadline - time.monotonic()))).execute(
        cwd=str(path.parent))


def test_tour_is_stored_without_outputs() -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert len(code) >= 8
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, "".join(cell["source"])[:60]


def test_the_tours_heatmaps_are_drawn_from_predicts_input_with_its_caption() -> None:
    """The tour drew its Grad-CAM overlays with overlay_png from a film decoded at full size: neither predict's input
    (decoded at the bundle's target) nor its caption, which says when the film was read as negative (the map is the
    positive class's evidence whatever the call) or is outside the model's scope. The small run reads both its films
    as positive and in scope, so the run alone cannot tell; the cell must make predict's calls."""
    cells = ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    (cell,) = [c for c in cells if "pneumoscan.inference.explain" in c]
    assert "read_gray(rec.path, target=predictor.card.spec.decode_target)" in cell, cell
    assert 'film_overlay(predictor, gray, label=result["label"], warnings=result["warnings"])' in cell, cell


def test_tour_runs_end_to_end_on_a_small_subset(data_root: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # the real films, about 60 of each class folder (spread over its sorted names, so over many patients): the small
    # setting trains on 16 of each class and validates on 8 (its patient-grouped split of these leaves 10 of each
    # for validation), and its split's duplicate search decodes every full-size film (twice the time at a hundred)
    data, out = tmp_path / "chest_xray", tmp_path / "out"
    for folder in (f for split in ("train", "val") for f in sorted((data_root / split).iterdir()) if f.is_dir()):
        films = sorted(folder.iterdir())
        (data / folder.relative_to(data_root)).mkdir(parents=True)
        for film in films[:: max(1, len(films) // 60)]:
            (data / folder.relative_to(data_root) / film.name).symlink_to(film)
    for name, value in (("PNEUMOSCAN_DATA", data), ("PNEUMOSCAN_TOUR_SMALL", "1"), ("PNEUMOSCAN_TOUR_OUT", out),
                        ("PYTHONPATH", NOTEBOOK.parents[1])):
        monkeypatch.setenv(name, str(value))  # the kernel's environment, which it takes from this process
    run_notebook(NOTEBOOK, TOUR_SECONDS)
    # every step left its figure or table behind
    for name in ("audit.png", "augmented.png", "compare.png", "compare.csv"):
        assert (out / name).is_file(), name
    assert (out / "efficientnet-recall98" / "bundle.json").is_file()
    assert len((out / "compare.csv").read_text().splitlines()) == 3  # header + the two runs
    # its Grad-CAM overlays are predict's of the same films: predict's input (decoded at the bundle's target) and
    # caption (whether the film was read as negative, and outside the model's scope)
    drawn = {png.name.removeprefix("gradcam-"): png for png in out.glob("gradcam-*.png")}
    assert len(drawn) == 2, sorted(drawn)
    films = [film for film in data.rglob("*") if film.with_suffix(".png").name in drawn]
    rows = predict_paths(out / "efficientnet-recall98", films, heatmap_dir=out / "predicted")
    for row in rows:
        with Image.open(drawn[Path(row["path"]).with_suffix(".png").name]) as tour, Image.open(row["heatmap"]) as own:
            assert (tour.size, tour.info["Description"]) == (own.size, own.info["Description"]), row["path"]
