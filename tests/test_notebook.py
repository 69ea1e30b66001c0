"""notebooks/tour.ipynb: it runs end to end on the real data (small setting), and it is stored without outputs.

It runs under nbmake in a child pytest rather than being collected by the suite's own pytest: the child gets
PNEUMOSCAN_TOUR_SMALL=1 and its own output folder, and a plain `pytest notebooks/` by a user keeps its full size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "tour.ipynb"


def test_tour_is_stored_without_outputs() -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert len(code) >= 8
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, "".join(cell["source"])[:60]


def test_tour_runs_end_to_end_on_a_small_subset(data_root: Path, tmp_path: Path) -> None:
    # the real films, about a hundred of each class folder (spread over its sorted names, so over many patients): the
    # small setting trains on 48 of them, and its split's duplicate search (a decode of every film) took 5 s on all
    data, out = tmp_path / "chest_xray", tmp_path / "out"
    for folder in (f for split in ("train", "val") for f in sorted((data_root / split).iterdir()) if f.is_dir()):
        films = sorted(folder.iterdir())
        (data / folder.relative_to(data_root)).mkdir(parents=True)
        for film in films[:: max(1, len(films) // 100)]:
            (data / folder.relative_to(data_root) / film.name).symlink_to(film)
    env = {**os.environ, "PNEUMOSCAN_DATA": str(data), "PNEUMOSCAN_TOUR_SMALL": "1",
           "PNEUMOSCAN_TOUR_OUT": str(out), "PYTHONPATH": str(NOTEBOOK.parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake", "--nbmake-timeout=300",
         str(NOTEBOOK)], cwd=NOTEBOOK.parent, env=env, capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # every step left its figure or table behind
    for name in ("audit.png", "augmented.png", "compare.png", "compare.csv"):
        assert (out / name).is_file(), name
    assert (out / "efficientnet-recall98" / "bundle.json").is_file()
    assert len((out / "compare.csv").read_text().splitlines()) == 3  # header + the two runs
