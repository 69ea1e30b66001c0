"""Two CPU processes under torchrun (gloo): one set of outputs, metrics over the whole validation set, resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pneumoscan.data import discover
from pneumoscan.evaluate import evaluate


def torchrun_train(data: Path, run: Path, cache: Path, *extra: str) -> str:
    """`torchrun --standalone --nproc_per_node 2 -m pneumoscan train ...` with this interpreter; returns the log."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pneumoscan",
           "train", "--data", str(data), "--out", str(run), "--model", "simple_cnn", "--no-pretrained",
           "--image-size", "32", "--batch-size", "8", *extra]
    env = {**os.environ, "PNEUMOSCAN_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    return " ".join(log.split())  # rich wraps long lines at the console width


def history(run: Path) -> list[dict]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_two_gloo_processes_train_once_and_resume(tiny_dataset: Path, tmp_path: Path) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    log = torchrun_train(tiny_dataset, run, cache, "--epochs", "1")

    assert "2 process(es) on cpu" in log and "global batch 16 (8 x 2)" in log, log
    assert "lr 0.002 (= 0.001 x 2, linear scaling)" in log, log
    assert log.count("Preprocessing") == 1, "rank 0 alone builds the cache"
    assert len(list(cache.glob("*.u8"))) == 1 and len(list(cache.glob("*.json"))) == 1
    files = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    assert files == {
        "config.yaml", "split.csv", "history.csv", "curves.png", "checkpoint.pt", "report.html", "metrics.json",
        "best/model.safetensors", "best/bundle.json", "bundle/model.safetensors", "bundle/bundle.json", "bundle/model.onnx", "bundle/model.onnx.json",
    }, "rank 0 alone writes, and nothing per rank"

    card = json.loads((run / "bundle" / "bundle.json").read_text())
    # one process, the same saved weights
    single = evaluate(run / "bundle", run / "split.csv", split="val", out_dir=tmp_path / "eval")
    n_val = sum(r.split == "val" for r in discover(run / "split.csv").records)
    assert card["val_metrics"]["n"] == single["n"] == n_val, "every validation image scored exactly once"
    for name, value in card["val_metrics"].items():
        assert value == pytest.approx(single[name], abs=1e-6), name
    # Stricter: training's validation report is evaluate's, curves and CIs included, so every score is bit-identical
    # to inference's (the threshold is one of them: an ulp off and a film at the threshold flips).
    reported, again = (json.loads((d / "metrics.json").read_text()) for d in (run, tmp_path / "eval"))
    assert again.pop("unreadable") == [] and reported == again

    first = history(run)
    assert [r["epoch"] for r in first] == ["1"]
    log = torchrun_train(tiny_dataset, run, cache, "--epochs", "2", "--resume")
    assert f"resuming after epoch 1 (step {first[0]['step']})" in log, log
    assert "Preprocessing" not in log, "the cache is reused"
    rows = history(run)
    assert rows[0] == first[0] and [r["epoch"] for r in rows] == ["1", "2"]
    assert int(rows[1]["step"]) == 2 * int(first[0]["step"]) > 0
    assert json.loads((run / "bundle" / "bundle.json").read_text())["val_metrics"]["n"] == n_val
