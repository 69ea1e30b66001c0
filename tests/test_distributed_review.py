"""Two gloo processes that could disagree: a rank that read other films, a rank whose BatchNorm statistics moved with
its own batches, a rank that returns from train() while rank 0 is still writing the bundle, a rank that starts
a second run in the same process (cv's next fold) while rank 0 is still busy with the first, and the warm start's
features, which each rank computes for its share of the films, empty where there are fewer films than ranks."""

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
import torch
from torch.utils.data import DataLoader

from tests.builders import SCORE_TOL
from tests.distributed_stubs import CountingProbe, probe_films, rank_with_fewer_films_than_ranks, two_gloo_ranks
from pneumoscan.data.labelled import labelled_images
from pneumoscan.data.tasks import get_task
from pneumoscan.inference.predict import Predictor
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.distributed import Dist, gather_shards, setup_distributed, shard
from pneumoscan.training.engine import Callback, State
from pneumoscan.training.train import epoch_metrics, train, warm_start
from pneumoscan.training.warm_start import warm_start_head

# cnn5 has BatchNorm; class weights off, so the test recomputes the validation loss without the training split
RECIPE = dict(model="cnn5", pretrained=False, image_size=32, batch_size=8, epochs=1, class_weights=False)


class DriftOnRank1(Callback):
    """Rank 1's BatchNorm statistics moved further than its own last batch moves them: validation must not see them."""

    def before_validation(self, state: State) -> None:
        if state.ctx.rank == 1:
            for name, buf in state.model.named_buffers():
                if name.endswith("running_var"):
                    buf.mul_(0.25)


def probe_warm_start(ctx: Dist) -> dict:
    """The warm start of a :class:`CountingProbe` on 61 training and 41 validation films: the penalty chosen, the
    head fitted and how many films' features this process computed."""
    probe = CountingProbe()
    l2 = warm_start(probe, (probe_films(61, 0), probe_films(41, 1)), None, 16, ctx)
    return {"l2": l2, "weight": probe.fc.weight.tolist(), "bias": probe.fc.bias.tolist(), "films": probe.films}


def _worker(data: Path, other_copy: Path, out: Path) -> None:
    """One rank's part (run by torchrun): both train on the same films, then, as ``cv`` goes on to its next fold
    while rank 0 still scores the last, train again, rank 1 from a copy of the data with a film it cannot read; then
    both warm-start a probe together."""
    rank, said = int(os.environ["RANK"]), {}
    try:  # a run one process made, resumed under two
        train(data, TrainConfig(**{**RECIPE, "epochs": 2}), out / "single", resume=True)
    except ValueError as e:
        said["resume_refused"] = str(e)
    bundle = train(data, TrainConfig(**RECIPE), out / "run", callbacks=[DriftOnRank1()])
    said["bundle_there_on_return"] = (bundle / "bundle.json").is_file()
    if rank == 0:
        time.sleep(5)
    try:
        train(other_copy if rank == 1 else data, TrainConfig(**RECIPE), out / "refused")
    except ValueError as e:
        said["refused"] = str(e)
    ctx = setup_distributed()  # the group both runs used
    said["warm_start"] = probe_warm_start(ctx)
    said["joined"] = gather_shards(ctx, shard(ctx, 7) * 10)[0].tolist()
    (out / f"rank{rank}.json").write_text(json.dumps(said))


def test_ranks_agree_on_data_statistics_and_the_finished_bundle(tiny_dataset: Path, tmp_path: Path) -> None:
    """A machine's copy with an unreadable film paired its validation scores with rank 0's labels, silently; rank 1
    scored its share of validation with its own BatchNorm statistics (logits ~1e-3 from the saved model's); rank 1
    left train() before the bundle existed, so `cv` under torchrun failed scoring fold 1 ("not a bundle folder");
    and a process group left after each run and joined again for the next hung, or failed on the last group's closed
    ports ("Connection refused"), when rank 0 came later; and each rank computed the warm start's features of every
    film, the work of one process done by each. One torchrun launch shows all five (about 30 s on 2 cores: most of
    it two interpreters starting, 5 of it rank 0 coming later)."""
    single = tmp_path / "single"
    train(tiny_dataset, TrainConfig(**RECIPE), single)
    kept = {p: p.read_bytes() for p in single.rglob("*") if p.is_file()}
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

    for rank in said:  # resumed silently, it ran at lr 0.002 and global batch 16 over half the planned steps
        assert rank.get("resume_refused", "").startswith("cannot resume "), rank
        assert ("it was made by 1 process(es) and this run has 2; " in rank["resume_refused"]
                and "resume under 1, or train into a new --out" in rank["resume_refused"]), rank
    assert {p: p.read_bytes() for p in single.rglob("*") if p.is_file()} == kept, "refused before RUN is rewritten"

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

    # each rank computed the features of its share of the films (31 + 21 and 30 + 20 of 61 + 41), rank 0 fitted the
    # head on all of them in the films' order, and rank 1 took it: the head one process fits, within float tolerance
    warmed = [rank["warm_start"] for rank in said]
    assert [w.pop("films") for w in warmed] == [52, 50], "each rank computes the features of its share alone"
    assert warmed[0] == warmed[1], "rank 1 starts from rank 0's head"
    alone = probe_warm_start(Dist())
    assert alone.pop("films") == 102 and warmed[0]["l2"] == alone["l2"]
    for key in ("weight", "bias"):
        np.testing.assert_allclose(warmed[0][key], alone[key], rtol=1e-4, atol=1e-5)
    assert said[0]["joined"] == said[1]["joined"] == [0, 10, 20, 30, 40, 50, 60], "shards joined in the films' order"


def test_a_process_whose_share_of_the_films_is_empty_adds_no_rows() -> None:
    """With fewer films than processes (8 GPUs, 5 validation films) a process's share is empty: joining the shares
    failed on its scores' shape ((0, 0) against rank 0's (1, 2): "all the input array dimensions except for the
    concatenation axis must match exactly"), and the warm start on its features ("expected a non-empty list of
    Tensors"). Two gloo processes started by multiprocessing share out 1 film: about 3 s on 2 cores."""
    said = two_gloo_ranks(rank_with_fewer_films_than_ranks)
    assert "error" not in said[0] and "error" not in said[1], said
    one_film = [([[0.25, 0.75]], "float32"), ([0], "int64")]  # rank 0's film, the width and dtype of its scores
    assert said[0]["joined"] == said[1]["joined"] == one_film, "every rank gets the one film's scores"
    assert said[0]["on_main"] == one_film and said[1]["on_main"] is None, "rank 0 alone gets what it alone uses"

    # rank 0 computed the features of 3 training films and the validation film, rank 1 of 2 training films and none
    assert [said[r].pop("films") for r in (0, 1)] == [4, 2]
    warmed = [{k: said[r][k] for k in ("l2", "weight", "bias")} for r in (0, 1)]
    assert warmed[0] == warmed[1], "rank 1 starts from rank 0's head"
    probe = CountingProbe()  # the head one process fits on the same films, within float tolerance
    alone = warm_start_head(probe, DataLoader(probe_films(5, 0), 16), DataLoader(probe_films(1, 1), 16), None,
                            torch.device("cpu"))
    assert warmed[0]["l2"] == alone
    np.testing.assert_allclose(warmed[0]["weight"], probe.fc.weight.tolist(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(warmed[0]["bias"], probe.fc.bias.tolist(), rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    _worker(*map(Path, sys.argv[1:4]))
