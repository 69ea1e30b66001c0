"""Ensembles, distillation and INT8 tried as a user would: what each refuses, and why."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tests.builders import nudge_weights
from tests.test_integrity import written_before_checksums
from pneumoscan.cli import main
from pneumoscan.data.layouts import discover, write_manifest
from pneumoscan.models.card import CARD, CHECKSUM, ONNX_NAME, WEIGHTS, load_card, save_card
from pneumoscan.training.quantize import quantize_bundle

TINY = ["--model", "simple_cnn", "--no-pretrained", "--image-size", "32", "--epochs", "1", "--batch-size", "8"]


def test_a_teacher_given_twice_or_copied_is_refused(tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The students' target averaged the teachers' logits with a teacher given twice (or a copy of its run) counted
    twice, unseen, where `ensemble` refuses such a member."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle.parent, copy)  # the whole run: its split.csv beside it, so its films are known
    base = ["train", *TINY, "--data", str(tiny_dataset), "--set", "val_fraction=0.25", "--out", str(tmp_path / "run")]
    assert main([*base, "--teacher", str(tiny_bundle), "--teacher", str(tiny_bundle / ".")]) == 2
    assert f"{tiny_bundle} is given twice: each model counts once" in capsys.readouterr().err
    assert main([*base, "--teacher", str(tiny_bundle), "--teacher", str(copy / "bundle")]) == 2
    assert f"holds the same weights as {tiny_bundle} (a copy)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_int8_cv_of_an_ensemble_calibrated_on_other_films_is_refused(tiny_dataset: Path, tiny_bundle: Path,
                                                                      tmp_path: Path) -> None:
    """The fold bundles of a cv run, ensembled with --data, were taken by `export --int8 --cv`: the INT8 model's
    out-of-fold AUC was held to the card's FP32 AUC on the --data films (an INT8 model refused for an AUC 0.75 under
    FP32's 1.0, both 0.75 out of fold). Given other runs than its members', it was refused for those runs, not for
    what it is: built again where they are, it would have been refused all the same."""
    cv = tmp_path / "cv"
    films = discover(tiny_dataset).split("test")
    for k in range(2):
        bundle = shutil.copytree(tiny_bundle, cv / f"fold-{k}" / "bundle")
        if k:
            nudge_weights(bundle)  # a model of its own: a copy is refused as a member
        write_manifest([dataclasses.replace(r, split="val" if i % 2 == k else "train") for i, r in enumerate(films)],
                       cv / f"split-fold-{k}.csv")
        shutil.copy(cv / f"split-fold-{k}.csv", cv / f"fold-{k}" / "split.csv")  # as the fold's run wrote it
    ens = tmp_path / "ens"
    members = [str(cv / f"fold-{k}" / "bundle") for k in range(2)]
    assert main(["ensemble", *members, "--data", str(tiny_bundle.parent / "split.csv"), "--split", "val",
                 "--out", str(ens)]) == 0
    moved = shutil.copytree(cv, tmp_path / "moved")  # the same run elsewhere: not the fold bundles it recorded
    for runs in ([cv], [moved]):
        with pytest.raises(ValueError, match=r"ens was calibrated on .*split\.csv.*, not on out-of-fold scores \(its "
                                             r"FP32 figures, which the INT8 model's are held to, are not out of "
                                             r"fold\): --cv is for an ensemble built with `ensemble --cv`; give "
                                             r"--data"):
            quantize_bundle(ens, cv_dirs=runs)
    assert not (ens / "model.int8.onnx").exists()


def test_calibration_films_of_one_class_are_refused_before_the_ensemble_is_scored(
        tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Films of one class were scored by the whole ensemble (minutes for ten members) and its temperature fitted,
    warned of as 'at its bound', before the threshold fit refused them."""
    other = shutil.copytree(tiny_bundle.parent, tmp_path / "other")  # a second run, its split.csv beside it
    nudge_weights(other / "bundle")
    normal = [r for r in discover(tiny_bundle.parent / "split.csv").split("val") if r.label == "NORMAL"]
    write_manifest(normal, tmp_path / "normal.csv")
    assert main(["ensemble", str(tiny_bundle), str(other / "bundle"), "--data", str(tmp_path / "normal.csv"),
                 "--out", str(tmp_path / "ens")]) == 2
    said = capsys.readouterr().err
    assert "normal.csv are all one class: the ensemble's temperature and thresholds are chosen on labelled films " \
           "with and without PNEUMONIA" in said
    assert "temperature" not in said.split("error:")[0], "refused before a temperature is fitted"
    assert not (tmp_path / "ens").exists()


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_member_or_teacher_is_refused_naming_it(tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A member given to `ensemble` (or a teacher) whose bundle.json was not JSON, lacked a field or held a bad
    value, or whose weights or model.onnx were damaged, was refused naming only its file: a user reading the command
    or the ensemble's own bundle.json saw nothing wrong. Each refusal is one line naming it, its place and folder."""
    good = shutil.copytree(tiny_bundle.parent, tmp_path / "good")  # a run of its own: its split.csv beside it
    nudge_weights(good / "bundle")
    sealed = json.loads((tiny_bundle / CARD).read_text())
    # a card from before cards kept checksums, whose fields alone are checked
    legacy = written_before_checksums({k: v for k, v in sealed.items() if k != CHECKSUM})
    damages = {
        "not-json": (lambda b: (b / CARD).write_text("{not json"), "bundle.json is not a readable bundle card"),
        "no-threshold": (lambda b: (b / CARD).write_text(json.dumps({k: v for k, v in legacy.items()
                                                                     if k != "threshold"})),
                         "bundle.json: threshold is missing"),
        "bad-temperature": (lambda b: (b / CARD).write_text(json.dumps(legacy | {"temperature": -1.0})),
                            "bundle.json: temperature is -1.0, not above 0"),
        "weights": (lambda b: _flip_a_byte(b / WEIGHTS), f"{WEIGHTS} is damaged"),
    }
    train = ["train", *TINY, "--data", str(tiny_dataset), "--set", "val_fraction=0.25", "--out", str(tmp_path / "run")]
    for name, (damage, said) in damages.items():
        bad = shutil.copytree(tiny_bundle.parent, tmp_path / name) / "bundle"
        damage(bad)
        for argv, who in (
            (["ensemble", str(good / "bundle"), str(bad), "--data", str(tiny_bundle.parent / "split.csv"),
              "--split", "val", "--out", str(tmp_path / "ens")], "ensemble member 2 of 2"),
            ([*train, "--teacher", str(good / "bundle"), "--teacher", str(bad)], "teacher 2 of 2"),
        ):  # fmt: skip
            assert main(argv) == 2, (name, argv[0])
            error = capsys.readouterr().err.splitlines()[-1]  # after the log lines, the reason in one line
            assert error.startswith(f"pneumoscan {argv[0]}: error: {who} ({bad}): {bad}") and said in error, error
    assert not (tmp_path / "ens").exists() and not (tmp_path / "run").exists()
    # a teacher's model.onnx, which scores the student's training films (an ensemble's members' are not read)
    bad = shutil.copytree(tiny_bundle.parent, tmp_path / "onnx") / "bundle"
    _flip_a_byte(bad / ONNX_NAME)
    assert main([*train, "--teacher", str(bad)]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f"pneumoscan train: error: teacher 1 of 1 ({bad}): {bad / ONNX_NAME} is damaged"), error


def test_an_ensemble_given_to_start_from_or_with_a_damaged_members_card_is_refused(
        tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train --init ENSEMBLE` was refused with 'build the one it holds (train --model ensemble)': no such model.

    The commands that check an ensemble's films against its members' training films read each member's own
    bundle.json: a damaged one was refused naming only that file, while the ensemble given, and its bundle.json,
    were sound. (One ensemble for both: its member's card is damaged once the first refusal is seen.)"""
    other = shutil.copytree(tiny_bundle.parent, tmp_path / "other") / "bundle"
    nudge_weights(other)
    ens, split = tmp_path / "ens", str(tiny_bundle.parent / "split.csv")
    assert main(["ensemble", str(tiny_bundle), str(other), "--data", split, "--split", "val", "--out", str(ens)]) == 0
    capsys.readouterr()
    assert main(["train", *TINY, "--data", str(tiny_dataset), "--init", str(ens), "--out", str(tmp_path / "run")]) == 2
    assert (f"{ens} holds an ensemble, which cannot be fine-tuned: start from one of its members (--init MEMBER) or "
            "distil it into one model (--teacher)") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    (other / CARD).write_text("{not json")
    capsys.readouterr()
    for argv in (["evaluate", str(ens), split, "--split", "val", "--out", str(tmp_path / "report")],
                 ["threshold", str(ens), split, "--split", "val", "--youden", "--out", str(tmp_path / "copy")]):
        assert main(argv) == 2
        error = capsys.readouterr().err.splitlines()[-1]
        assert error.startswith(f"pneumoscan {argv[0]}: error: ensemble member 2 of 2 ({other}): {other / CARD} is "
                                "not a readable bundle card"), error


def test_a_damaged_card_of_a_bundle_a_member_or_teacher_came_from_is_refused_naming_them(
        tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The check of the films given follows each member's (and teacher's) weights to the bundles they came from, such
    as the one it started from (--init): a damaged bundle.json there was refused naming only that file, not the
    member or teacher given, whose own files are sound, nor how it came by those weights."""
    start = shutil.copytree(tiny_bundle.parent, tmp_path / "start") / "bundle"
    other = shutil.copytree(tiny_bundle.parent, tmp_path / "other") / "bundle"
    nudge_weights(other)
    card = load_card(other)
    save_card(other, dataclasses.replace(card, train_config={**card.train_config, "init": str(start)}))
    ens, split = tmp_path / "ens", str(tiny_bundle.parent / "split.csv")
    ensemble = ["ensemble", str(tiny_bundle), str(other), "--data", split, "--split", "val", "--out"]
    assert main([*ensemble, str(ens)]) == 0
    (start / CARD).write_text("{not json")
    capsys.readouterr()
    started = f"the bundle {other} started from ({start}): {start / CARD} is not a readable bundle card"
    train = ["train", *TINY, "--data", str(tiny_dataset), "--set", "val_fraction=0.25", "--out", str(tmp_path / "run")]
    for argv, who in (
        ([*ensemble, str(tmp_path / "e")], f"ensemble member 2 of 2 ({other})"),
        (["evaluate", str(ens), split, "--split", "val", "--out", str(tmp_path / "report")],
         f"ensemble member 2 of 2 ({other})"),
        ([*train, "--teacher", str(other)], f"teacher 1 of 1 ({other})"),
        ([*train, "--teacher", str(ens)], f"teacher 1 of 1 ({ens}): ensemble member 2 of 2 ({other})"),
    ):  # fmt: skip
        assert main(argv) == 2, argv[0]
        error = capsys.readouterr().err.splitlines()[-1]
        assert error.startswith(f"pneumoscan {argv[0]}: error: {who}: {started}"), error
    assert not (tmp_path / "e").exists() and not (tmp_path / "run").exists()
