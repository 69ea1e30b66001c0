"""Two CPU processes under torchrun (gloo): one set of outputs, metrics over the whole validation set, resume; how
long a process waits for the others, and one process a GPU."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.builders import SCORE_TOL, assert_close_report
from pneumoscan.data.labelled import labelled_images
from pneumoscan.data.layouts import discover
from pneumoscan.data.tasks import get_task
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import load_card
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.distributed import (
    DEFAULT_TIMEOUT_S,
    check_gpus,
    group_timeout,
    is_main_process,
    setup_distributed,
)
from pneumoscan.training.train import train
from tests.distributed_stubs import rank_waiting_for_rank_0, two_gloo_ranks


# what torchrun_train gives every run, as the library takes it
TINY = dict(model="simple_cnn", pretrained=False, image_size=32, batch_size=8)


def torchrun_train(data: Path, run: Path, cache: Path, *extra: str, refused: bool = False) -> str:
    """`torchrun --standalone --nproc_per_node 2 -m pneumoscan train ...` with this interpreter; returns the log.
    ``refused``: the command is expected to fail."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pneumoscan",
           "train", "--data", str(data), "--out", str(run), "--model", "simple_cnn", "--no-pretrained",
           "--image-size", "32", "--batch-size", "8", *extra]
    env = {**os.environ, "PNEUMOSCAN_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    log = done.stdout + done.stderr
    assert (done.returncode != 0) == refused, log
    return " ".join(log.split())  # rich wraps long lines at the console width


def history(run: Path) -> list[dict]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_two_gloo_processes_train_once_and_resume(tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """One run under torchrun and its resume; the run learns from a teacher, which rank 0 alone scores the training
    films with, handing the targets to the other rank (one launch for both: each costs two interpreters' start)."""
    run, cache, split = tmp_path / "run", tmp_path / "cache", str(tiny_bundle.parent / "split.csv")
    teacher = ("--teacher", str(tiny_bundle), "--split-csv", split)  # given again on --resume, as every setting
    log = torchrun_train(tiny_dataset, run, cache, "--epochs", "1", *teacher)
    n_train = sum(r.split == "train" for r in discover(tiny_bundle.parent / "split.csv").records)
    assert log.count(f"scored the {n_train} training films") == 1, log

    assert "2 process(es) on cpu" in log and "global batch 16 (8 x 2)" in log, log
    assert log.count(f"{run / 'bundle'}: validation AUC") == 1, "train's result line, from rank 0 alone"
    assert "lr 0.002 (= 0.001 x 2, linear scaling)" in log, log
    assert log.count("Preprocessing") == 1, "rank 0 alone builds the cache"
    assert len(list(cache.glob("*.u8"))) == 1 and len(list(cache.glob("*.json"))) == 1
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    assert files == {
        "config.yaml", "split.csv", "history.csv", "curves.png", "checkpoint.pt", "report.html", "metrics.json",
        "best/model.safetensors", "best/bundle.json", "bundle/model.safetensors", "bundle/bundle.json",
        "bundle/model.onnx", "bundle/model.onnx.json", "bundle/MODEL_CARD.md",
    }, "rank 0 alone writes, and nothing per rank"

    # One process scores the same saved weights again. Training scored the validation films in two processes'
    # batches, evaluate in one process's: the scores agree within SCORE_TOL, not bit for bit (tests/builders.py).
    single = evaluate(run / "bundle", run / "split.csv", split="val", out_dir=tmp_path / "eval")
    n_val = sum(r.split == "val" for r in discover(run / "split.csv").records)
    reported, again = (json.loads((d / "metrics.json").read_text()) for d in (run, tmp_path / "eval"))
    assert again.pop("unreadable") == [] and single["n"] == reported["n"] == n_val, "every validation film scored once"
    assert again.pop("bundle") == str((run / "bundle").resolve()) and again.pop("backend") == "torch"
    assert again.pop("bundle_weights") == load_card(run / "bundle").files["model.safetensors"]
    assert again.pop("copies") == [] and again.pop("caveats") == load_card(run / "bundle").caveats  # evaluate's own
    assert again.pop("label_conflicts") == []
    assert len(again.pop("out_of_scope")) == n_val, "the tiny films are 64 px thumbnails: evaluate says so"
    assert again.pop("optimistic"), "the bundle's own validation films: evaluate says its figures are optimistic"
    assert again.pop("data") == "split.csv/val" and reported.pop("data") == "validation (chose its threshold)"
    assert reported.pop("optimistic"), "the run's own report says the films chose its threshold"
    card = json.loads((run / "bundle" / "bundle.json").read_text())
    assert card["val_metrics"] == {k: reported[k] for k in card["val_metrics"]}, (
        "the bundle carries the report's figures")
    # A film within SCORE_TOL of a threshold (the chosen threshold is itself a validation score) may land on either
    # side of it in the other layout: each operating point's counts may differ by those films and no more, and its
    # rates agree whenever its counts do. Everything that does not depend on a threshold agrees within SCORE_TOL.
    predictor = Predictor(run / "bundle")
    images, _, _ = labelled_images(run / "split.csv", "val", get_task(card["task"]), predictor.card.spec)
    scores = predictor.positive_probability(predictor.probabilities(images))
    for blocks in ((reported, again), (reported["at_0_5"], again["at_0_5"])):
        near = int(np.sum(np.abs(scores - blocks[0]["threshold"]) <= SCORE_TOL))
        counts = [np.array(b.pop("confusion_matrix")["counts"]) for b in blocks]
        assert np.abs(counts[0] - counts[1]).sum() <= 2 * near, (counts, near)
        rates = ("accuracy", "sensitivity", "specificity", "precision", "f1", "ci")
        if (counts[0] == counts[1]).all():
            assert_close_report({k: blocks[0][k] for k in rates}, {k: blocks[1][k] for k in rates})
        for b in blocks:
            for k in rates:
                b.pop(k)
    for b in (reported, again):  # counts at many thresholds: a film near one may fall either side, as above
        b.pop("threshold_table")
    assert_close_report(reported, again)

    assert card["train_config"]["teacher"] == [str(tiny_bundle)], card["train_config"]
    assert (card["train_config"]["processes"] == 2
            and torch.load(run / "checkpoint.pt", weights_only=True)["processes"] == 2)
    first = history(run)
    assert [r["epoch"] for r in first] == ["1"]
    with pytest.raises(ValueError, match=r"it was made by 2 process\(es\) and this run has 1; "):
        train(tiny_dataset, TrainConfig(epochs=2, teacher=[tiny_bundle], split_csv=split, **TINY), run,
              resume=True)  # this process alone
    log = torchrun_train(tiny_dataset, run, cache, "--epochs", "2", "--resume", *teacher)
    assert f"resuming after epoch 1 (step {first[0]['step']})" in log, log
    assert "Preprocessing" not in log, "the cache is reused"
    rows = history(run)
    assert rows[0] == first[0] and [r["epoch"] for r in rows] == ["1", "2"]
    assert int(rows[1]["step"]) == 2 * int(first[0]["step"]) > 0
    assert json.loads((run / "bundle" / "bundle.json").read_text())["val_metrics"]["n"] == n_val


@pytest.mark.parametrize("rank, main", [(None, True), ("0", True), ("1", False)])
def test_the_main_process_is_rank_0_or_the_only_one(rank: str | None, main: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What the CLI asks before printing a result once under torchrun, as torchrun's environment says."""
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert is_main_process() is main


def test_a_process_waiting_longer_than_the_timeout_says_which_setting_to_raise() -> None:
    """torch's default timeout (30 min) ended the processes waiting for one that works alone (the cache, the teacher,
    the bundle, a cv fold), with gloo's "Timed out waiting 1800000ms for recv operation". PNEUMOSCAN_DIST_TIMEOUT (2 s
    here) sets it, and the process that gives up says so. Two gloo processes started by multiprocessing, not torchrun:
    about 3 s on 2 cores, most of it two interpreters importing torch."""
    # the ranks import distributed_stubs alone (the target's module), not this module's training stack
    said = two_gloo_ranks(rank_waiting_for_rank_0, lambda context: context.Barrier(2), lambda context: context.Event())
    assert said[1] == ("TimeoutError: process 1 waited 2 s for the others and gave up; one process alone builds the "
                       "image cache, scores the teachers, writes the bundle or scores a cv fold, which can take longer "
                       "on a large dataset: set PNEUMOSCAN_DIST_TIMEOUT (seconds) above how long that takes"), said


@pytest.mark.parametrize("value, seconds", [(None, DEFAULT_TIMEOUT_S), (" 90 ", 90.0), ("1.5", 1.5), ("0", None),
                                            ("-5", None), ("inf", None), ("nan", None), ("30min", None)])
def test_the_timeout_is_seconds_above_0(value: str | None, seconds: float | None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("PNEUMOSCAN_DIST_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("PNEUMOSCAN_DIST_TIMEOUT", value)
    if seconds is None:
        with pytest.raises(ValueError, match=rf"^PNEUMOSCAN_DIST_TIMEOUT='{value}': give the seconds a process waits "
                                             rf"for the others, e.g. {DEFAULT_TIMEOUT_S} \(the default\)$"):
            group_timeout()
    else:
        assert group_timeout() == seconds


def test_more_processes_on_a_machine_than_its_gpus_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Process i takes cuda:i: with 2 processes on a 1-GPU machine, process 1's torch.cuda.set_device failed with a
    CUDA traceback (and process 0 waited for it). Every process refuses before joining the group. This machine has
    no GPU: the check is shown with the counts, and in setup_distributed with CUDA said to be there (the CUDA calls
    after it are not run here)."""
    check_gpus(2, 2)
    check_gpus(8, 1)
    reason = (r"^torchrun started 2 processes on this machine, which has 1 visible GPU\(s\): one process a GPU, so "
              r"give --nproc_per_node 1 or fewer \(CUDA_VISIBLE_DEVICES= trains on the CPU\)$")
    with pytest.raises(ValueError, match=reason):
        check_gpus(1, 2)
    for name, value in (("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)  # a process that got past the check fails at once, not waits
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=reason):
        setup_distributed()
