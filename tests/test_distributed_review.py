"""Two gloo processes that could disagree: a rank that read other films, a rank whose BatchNorm statistics moved with
its own batches, a rank that returns from train() while rank 0 is still writing the bundle, and a rank that starts
a second run in the same process (cv's next fold) while rank 0 is still busy with the first."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.builders import SCORE_TOL
from pneumoscan.data.labelled import labelled_images
from pneumoscan.data.tasks import get_task
from pneumoscan.inference.predict import Predictor
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.engine import Callback, State
from pneumoscan.training.train import epoch_metrics, train

# cnn5 has BatchNorm; class weights off, so the test recomputes the validation loss without the training split
RECIPE = dict(model="cnn5", pretrained=False, image_size=32, batch_size=8, epochs=1, class_weights=False)


class DriftOnRank1(Callback):
    """Rank 1's BatchNorm statistics moved further than its own last batch moves them: validation must not see them."""

    def before_validation(self, state: State) -> None:
        if state.ctx.rank == 1:
            for name, buf in state.model.named_buffers():
                if name.endswith("running_var"):
                    buf.mul_(0.25)


def _worker(data: Path, other_copy: Path, out: Path) -> None:
    """One rank's part (run by torchrun): both train on the same films, then, as ``cv`` goes on to its next fold
    while rank 0 still scores the last, train again, rank 1 from a copy of the data with a film it cannot read."""
    rank, said = int(os.environ["RANK"]), {}
    bundle = train(data, TrainConfig(**RECIPE), out / "run", callbacks=[DriftOnRank1()])
    said["bundle_there_on_return"] = (bundle / "bundle.json").is_file()
    if rank == 0:
        time.sleep(5)
    try:
        train(other_copy if rank == 1 else data, TrainConfig(**RECIPE), out / "refused")
    except ValueError as e:
        said["refused"] = str(e)
    (out / f"rank{rank}.json").write_text(json.dumps(said))


def test_ranks_agree_on_data_statistics_and_the_finished_bundle(tiny_dataset: Path, tmp_path: Path) -> None:
    """A machine's copy with an unreadable film paired its validation scores with rank 0's labels, silently; rank 1
    scored its share of validation with its own BatchNorm statistics (logits ~1e-3 from the saved model's); rank 1
    left train() before the bundle existed, so `cv` under torchrun failed scoring fold 1 ("not a bundle folder");
    and a process group left after each run and joined again for the next hung, or failed on the last group's closed
    ports ("Connection refused"), when rank 0 came later. One torchrun launch shows all four (about 30 s on 2 cores:
    most of it two interpreters starting, 5 of it rank 0 coming later)."""
    other_copy = shutil.copytree(tiny_dataset, tmp_path / "copy" / "chest_xray")
    (other_copy / "train" / "NORMAL" / "IM-0003-0001.jpeg").write_bytes(b"not a JPEG")
    env = {**os.environ, "PNEUMOSCAN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    torchrun = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "tests.test_distributed_review", str(tiny_dataset), str(other_copy), str(tmp_path)],
        env=env, cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = torchrun.communicate(timeout=180)[0]
    except subprocess.TimeoutExpired:
        torchrun.terminate()  # torchrun then ends its ranks (30 s later by SIGKILL); killed, it would leave them
        pytest.fail(f"a rank hung:\n{torchrun.communicate(timeout=90)[0]}")
    assert torchrun.returncode == 0, log
    said = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    for rank in said:  # every rank refuses at once, with the same reason, before the run folder is made
        assert rank.get("refused", "").startswith("the processes disagree on the films they train and validate on: "
                                                  "process 1 (on "), rank
        assert " read 47 of 48 films " in rank["refused"] and " read 48 of 48 films " in rank["refused"], rank
    assert said[0]["refused"] == said[1]["refused"] and not (tmp_path / "refused").exists()

    assert said[1]["bundle_there_on_return"], "rank 1 returns once rank 0 has written the bundle"

    run = tmp_path / "run"
    with (run / "history.csv").open() as f:
        validated = float(next(csv.DictReader(f))["val_loss"])
    best = Predictor(run / "best")  # rank 0's weights and statistics, as saved after the epoch validated
    images, targets, _ = labelled_images(run / "split.csv", "val", get_task("pneumonia"), best.card.spec)
    again = epoch_metrics(best.logits(images), np.asarray(targets), get_task("pneumonia"))["loss"]
    assert abs(validated - again) <= SCORE_TOL, (validated, again)


if __name__ == "__main__":
    _worker(*map(Path, sys.argv[1:4]))
