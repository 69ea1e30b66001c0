"""Two CPU processes under torchrun (gloo): one set of outputs, metrics over the whole validation set, resume, ranks
that agree on their films, BatchNorm statistics, bundle and warm start; how long a process waits for the others, a
process whose share of the films is empty, and one process a GPU."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.builders import SCORE_TOL, assert_close_report
from tests.builders import labelled_images
import pneumoscan
from pneumoscan.core.digests import bytes_sha256
from pneumoscan.data.layouts import discover
from pneumoscan.data.tasks import get_task
from pneumoscan.evaluation.evaluate import evaluate, films_digest
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import load_card
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.distributed import (
    DEFAULT_TIMEOUT_S,
    Dist,
    check_gpus,
    group_timeout,
    is_main_process,
    setup_distributed,
)
from pneumoscan.training.train import epoch_metrics, train
from pneumoscan.training.warm_start import warm_start_head
from tests.distributed_stubs import (
    CountingProbe,
    probe_films,
    rank_waiting_for_rank_0,
    rank_with_fewer_films_than_ranks,
    ranks_given_other_settings,
    two_gloo_ranks,
)
from tests.distributed_worker import FIRST_RUN_KEPT, probe_warm_start


# what train_args gives every run, as the library takes it
TINY = dict(model="simple_cnn", pretrained=False, image_size=32, batch_size=8)


def train_args(data: Path, run: Path, *extra: str) -> list[str]:
    """`pneumoscan train` on the tiny films, as TINY says."""
    return ["train", "--data", str(data), "--out", str(run), "--model", "simple_cnn", "--no-pretrained",
            "--image-size", "32", "--batch-size", "8", *extra]


def torchrun(program: list[str], cache: Path) -> str:
    """PROGRAM, a launcher of ``torchrun --standalone --nproc_per_node 2`` (tests/distributed_worker.py's), with
    this interpreter, unbuffered as torchrun runs its ranks; its log once it has ended well. A rank that hangs ends
    the launch: torchrun, told to stop, ends its ranks (killed, it would leave them)."""
    env = {**os.environ, "PNEUMOSCAN_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # these test gloo: a 1-GPU machine would refuse 2 ranks
    launch = subprocess.Popen([sys.executable, "-u", *program], env=env, cwd=Path(__file__).parents[1],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = launch.communicate(timeout=240)[0]
    except subprocess.TimeoutExpired:
        launch.terminate()
        pytest.fail(f"a rank hung:\n{launch.communicate(timeout=90)[0]}")
    assert launch.returncode == 0, log
    return " ".join(log.split())  # rich wraps long lines at the console width


def history(run: Path) -> list[dict]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_two_gloo_processes_train_resume_and_agree(tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """One launch under torchrun (each costs an interpreter importing training's stack): ranks that run `pneumoscan
    train`'s command line, resume its run with the same command and go on to the library's runs that could leave
    them disagreeing."""
    run, cache, split = tmp_path / "run", tmp_path / "cache", str(tiny_bundle.parent / "split.csv")
    teacher = ("--teacher", str(tiny_bundle), "--split-csv", split)  # given again on --resume, as every setting
    # a run one process made: tiny_bundle's (a copy: the ranks try to resume it)
    single, other_copy = shutil.copytree(tiny_bundle.parent, tmp_path / "single"), tmp_path / "copy" / "chest_xray"
    kept = {p: p.read_bytes() for p in single.rglob("*") if p.is_file()}
    shutil.copytree(tiny_dataset, other_copy)
    (other_copy / "train" / "NORMAL" / "IM-0003-0001.jpeg").write_bytes(b"not a JPEG")
    worker = ["-m", "tests.distributed_worker", str(tiny_dataset), str(other_copy), str(tmp_path),
              *train_args(tiny_dataset, run, "--epochs", "1", *teacher)]
    log = torchrun(worker, cache)
    said = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert log.count(FIRST_RUN_KEPT) == 1, log
    first_log, log = log.split(FIRST_RUN_KEPT)
    assert [rank["first_status"] for rank in said] == [0, 0], first_log
    assert first_log.count(f"{run / 'bundle'}: validation AUC") == 1, "train's result line, from rank 0 alone"
    trained_once(first_log, tmp_path / "first", said[0]["cached"], tiny_dataset, tiny_bundle, tmp_path / "eval")
    first = history(tmp_path / "first")

    assert [rank["resume_status"] for rank in said] == [0, 0], log
    assert f"resuming after epoch 1 (step {first[0]['step']})" in log, log
    [(name, stat)] = [(name, stat) for name, stat in said[0]["cached"].items() if name.endswith(".u8")]
    assert [(cache / name).stat().st_ino, (cache / name).stat().st_mtime_ns] == stat, "the cache is reused"
    rows = history(run)
    assert rows[0] == first[0] and [r["epoch"] for r in rows] == ["1", "2"]
    assert int(rows[1]["step"]) == 2 * int(first[0]["step"]) > 0
    n_val = sum(r.split == "val" for r in discover(run / "split.csv").records)
    assert json.loads((run / "bundle" / "bundle.json").read_text())["val_metrics"]["n"] == n_val
    ranks_agree(said, tmp_path, kept)
    # the probe's warm start: rank 0 alone shows its bar, which counts its own share of the films
    assert "Warm start: features of 52 films (this process's share of 102)" in log, log
    assert log.count("Warm start: features of") == 1, log


def trained_once(log: str, run: Path, cached: dict[str, list[int]], data: Path, teacher: Path, eval_dir: Path
                 ) -> None:
    """One run under torchrun, as its ranks left it (RUN, the cache files CACHED); it learns from a teacher, which
    rank 0 alone scores the training films with, handing the targets to the other rank. Rank 0 alone builds the cache
    and writes, and the bundle's figures are those one process gets from its weights."""
    n_train = sum(r.split == "train" for r in discover(teacher.parent / "split.csv").records)
    assert log.count(f"scored the {n_train} training films") == 1, log

    assert "2 process(es) on cpu" in log and "global batch 16 (8 x 2)" in log, log
    assert "lr 0.002 (= 0.001 x 2, linear scaling)" in log, log
    assert log.count("Preprocessing") == 1, "rank 0 alone builds the cache"
    images = [name for name in cached if name.endswith(".json") and not name.startswith("scans-")]  # the copy search's
    assert [name.endswith(".u8") for name in cached].count(True) == 1 and len(images) == 1, cached
    assert [name.startswith("scans-") and name.endswith(".json") for name in cached].count(True) == 1, cached
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    assert files == {
        "config.yaml", "split.csv", "history.csv", "curves.png", "checkpoint.pt", "report.html", "metrics.json",
        "best/model.safetensors", "best/bundle.json", "bundle/model.safetensors", "bundle/bundle.json",
        "bundle/model.onnx", "bundle/model.onnx.json", "bundle/MODEL_CARD.md",
    }, "rank 0 alone writes, and nothing per rank"

    # One process scores the same saved weights again. Training scored the validation films in two processes'
    # batches, evaluate in one process's: the scores agree within SCORE_TOL, not bit for bit (tests/builders.py).
    single = evaluate(run / "bundle", run / "split.csv", split="val", out_dir=eval_dir)
    val_records = [r for r in discover(run / "split.csv").records if r.split == "val"]
    n_val = len(val_records)
    reported, again = (json.loads((d / "metrics.json").read_text()) for d in (run, eval_dir))
    # metrics.json pairs with its predictions.csv; what evaluate returns is the same with --out as without
    assert again.pop("predictions_checksum") == bytes_sha256((eval_dir / "predictions.csv").read_bytes())
    assert single.keys() == again.keys(), "evaluate returns what metrics.json holds but its predictions' checksum"
    assert again.pop("unreadable") == [] and single["n"] == reported["n"] == n_val, "every validation film scored once"
    assert again.pop("bundle") == str((run / "bundle").resolve()) and again.pop("backend") == "torch"
    assert again.pop("bundle_weights") == load_card(run / "bundle").files["model.safetensors"]
    assert again.pop("copies") == [] and again.pop("caveats") == load_card(run / "bundle").caveats  # evaluate's own
    assert again.pop("label_conflicts") == []
    assert again["left_out"] == reported["left_out"] == [], (
        "every film given is a validation film the task reads, as evaluate and the run both record")
    assert again.pop("unchecked") == [], "its run and its teacher's, beside them, say what they trained on"
    assert again.pop("films") == films_digest(val_records), "evaluate names the films it scored"
    assert reported.pop("films") == films_digest(val_records), "so does training, for compare"
    assert again.pop("tta") is False, "evaluate says how it scored them"
    assert again.pop("test_split") is False, "and that they are no test films (threshold refuses those)"
    assert len(again.pop("out_of_scope")) == n_val, "the tiny films are 64 px thumbnails: evaluate says so"
    assert again.pop("optimistic"), "the bundle's own validation films: evaluate says its figures are optimistic"
    assert len(again.pop("optimistic_films")) == n_val, "and names each film it says so of"
    assert again.pop("software")["pneumoscan"] == pneumoscan.__version__, "and the versions that scored them"
    assert len(again.pop("decision_curve")["net_benefit"]) == 99, "and its decision curve, 0.01 to 0.99"
    assert again.pop("net_benefit")["threshold"] == reported["threshold"], "its net benefit at the bundle's threshold"
    assert again.pop("data") == "split.csv/val" and reported.pop("data") == "validation (chose its threshold)"
    assert reported.pop("optimistic"), "the run's own report says the films chose its threshold"
    assert (reported.pop("epochs"), reported.pop("best_epoch")) == (1, 1), "the run's own: the epoch its weights are"
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

    assert card["train_config"]["teacher"] == [str(teacher)], card["train_config"]
    assert (card["train_config"]["processes"] == 2
            and torch.load(run / "checkpoint.pt", weights_only=True)["processes"] == 2)
    assert [r["epoch"] for r in history(run)] == ["1"]
    with pytest.raises(ValueError, match=r"it was made by 2 process\(es\) and this run has 1; "):
        train(data, TrainConfig(epochs=2, teacher=[teacher], split_csv=str(teacher.parent / "split.csv"), **TINY),
              run, resume=True)  # this process alone


def ranks_agree(said: list[dict], out: Path, single_kept: dict[Path, bytes]) -> None:
    """What each rank of the second launch said of the library's runs. A machine's copy with an unreadable film
    paired its validation scores with rank 0's labels, silently; rank 1 scored its share of validation with its own
    BatchNorm statistics (logits ~1e-3 from the saved model's); rank 1 left train() before the bundle existed, so
    `cv` under torchrun failed scoring fold 1 ("not a bundle folder"); a process group left after each run and
    joined again for the next hung, or failed on the last group's closed ports ("Connection refused"), when rank 0
    came later (1 s here); and each rank computed the warm start's features of every film, the work of one process
    done by each."""
    for rank in said:  # resumed silently, it ran at lr 0.002 and global batch 16 over half the planned steps
        assert rank.get("resume_refused", "").startswith("cannot resume "), rank
        assert ("it was made by 1 process(es) and this run has 2; " in rank["resume_refused"]
                and "resume under 1, or train into a new run_dir (--out)" in rank["resume_refused"]), rank
    assert {p: p.read_bytes() for p in single_kept} == single_kept, "refused before RUN is rewritten"
    assert sorted(str(p.relative_to(out / "single")) for p in (out / "single").rglob("*") if p.is_file()) == sorted(
        str(p.relative_to(out / "single")) for p in single_kept)

    for rank in said:  # every rank refuses at once, with the same reason, before the run folder is made
        assert rank.get("refused", "").startswith("the processes disagree on the films they train and validate on: "
                                                  "process 1 (on "), rank
        assert " read 47 of 48 films " in rank["refused"] and " read 48 of 48 films " in rank["refused"], rank
    assert said[0]["refused"] == said[1]["refused"] and not (out / "refused").exists()

    assert said[1]["bundle_there_on_return"], "rank 1 returns once rank 0 has written the bundle"

    drift = out / "drift"
    with (drift / "history.csv").open() as f:
        validated = float(next(csv.DictReader(f))["val_loss"])
    best = Predictor(drift / "bundle")  # the best epoch: rank 0's weights and statistics, as saved after it validated
    images, targets, _ = labelled_images(drift / "split.csv", "val", get_task("pneumonia"), best.card.spec)
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


@pytest.mark.parametrize("rank, main", [(None, True), ("0", True), ("1", False)])
def test_the_main_process_is_rank_0_or_the_only_one(rank: str | None, main: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What the CLI asks before printing a result once under torchrun, as torchrun's environment says."""
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert is_main_process() is main


@pytest.fixture(scope="module")
def ranks_said() -> dict[str, dict[int, object]]:
    """What two gloo processes started by multiprocessing, not torchrun, said in each scenario below, run one after
    another by the same two processes (most of a scenario's time had been two interpreters importing torch; the
    timeout last: it leaves its group broken). The ranks import distributed_stubs alone (the targets' module), not
    this module's training stack."""
    timeout = (rank_waiting_for_rank_0, lambda context: context.Event())
    said = two_gloo_ranks((rank_with_fewer_films_than_ranks,), (ranks_given_other_settings,), timeout)
    return dict(zip(("empty share", "settings", "timeout"), said))


def test_a_process_waiting_longer_than_the_timeout_says_which_setting_to_raise(ranks_said: dict) -> None:
    """torch's default timeout (30 min) ended the processes waiting for one that works alone (the cache, the teacher,
    the bundle, a cv fold), with gloo's "Timed out waiting 1800000ms for recv operation". PNEUMOSCAN_DIST_TIMEOUT (2 s
    here) sets it, and the process that gives up says so."""
    said = ranks_said["timeout"]
    assert said[1] == ("TimeoutError: process 1 waited 2 s for the others and gave up; one process alone builds the "
                       "image cache, scores the teachers, writes the bundle or scores a cv fold, which can take longer "
                       "on a large dataset: set PNEUMOSCAN_DIST_TIMEOUT (seconds) above how long that takes"), said


def test_processes_given_other_settings_are_refused_naming_them(ranks_said: dict) -> None:
    """Machines started with another learning rate trained apart under gradients DDP averaged, exit 0, the bundle
    recording rank 0's; with another number of epochs one waited on the other for 3 hours. Their settings are
    compared, as their data is, and each process refuses at once, naming them; each machine's own data loader
    workers may differ."""
    said = ranks_said["settings"]
    host = socket.gethostname()
    assert said[0] == said[1] == (f"the processes were given different settings (process 0 on {host}, then process 1 "
                                  f"on {host}): lr 0.001 -> 0.01; each would train another model under one bundle's "
                                  "record: give every process the same command"), said


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


def test_a_process_whose_share_of_the_films_is_empty_adds_no_rows(ranks_said: dict) -> None:
    """With fewer films than processes (8 GPUs, 5 validation films) a process's share is empty: joining the shares
    failed on its scores' shape ((0, 0) against rank 0's (1, 2): "all the input array dimensions except for the
    concatenation axis must match exactly"), and the warm start on its features ("expected a non-empty list of
    Tensors"). Two gloo processes share out 1 film."""
    said = ranks_said["empty share"]
    assert "error" not in said[0] and "error" not in said[1], said
    one_film = [([[0.25, 0.75]], "float32"), ([0], "int64")]  # rank 0's film, the width and dtype of its scores
    assert said[0]["joined"] == said[1]["joined"] == one_film, "every rank gets the one film's scores"
    assert said[0]["on_main"] == one_film and said[1]["on_main"] is None, "rank 0 alone gets what it alone uses"

    # rank 0 computed the features of 3 training films and the validation film, rank 1 of 2 training films and none
    assert [said[r].pop("films") for r in (0, 1)] == [4, 2]
    warmed = [{k: said[r][k] for k in ("l2", "weight", "bias")} for r in (0, 1)]
    assert warmed[0] == warmed[1], "rank 1 starts from rank 0's head"
    probe = CountingProbe()  # the head one process fits on the same films, within float tolerance
    alone = warm_start_head(probe, DataLoader(probe_films(5, 0), 16), DataLoader(probe_films(1, 3), 16), None,
                            torch.device("cpu"))
    assert warmed[0]["l2"] == alone
    np.testing.assert_allclose(warmed[0]["weight"], probe.fc.weight.tolist(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(warmed[0]["bias"], probe.fc.bias.tolist(), rtol=1e-4, atol=1e-5)
