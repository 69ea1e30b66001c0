"""Command-line habits: --version, help on every option, -q, results printed once, one-line errors, and a library
that reports through logging."""

from __future__ import annotations

import argparse
import array
import dataclasses
import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import termios
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from pneumoscan import __version__, cli
from pneumoscan.core.metrics import with_ci
from pneumoscan.data.cache import cache_dataset
from pneumoscan.data.layouts import discover, make_record, write_manifest
from pneumoscan.data.preprocess import PreprocessSpec
from pneumoscan.evaluation.rethreshold import rethreshold
from pneumoscan.models.card import load_card
from pneumoscan.training.config import TrainConfig
from tests.builders import ended_by, nudge_weights, process_group


def _flat(text: str) -> str:
    """Output without its whitespace: rich wraps long log lines, inside a path too."""
    return "".join(text.split())


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices


def _site(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A site's own labelled films (the test films without their split): a threshold is never chosen on the test
    split."""
    site = tmp_path / "site.csv"
    write_manifest([make_record(r.path, r.label) for r in discover(tiny_dataset).split("test")], site)
    return site


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"pneumoscan {__version__}"


@pytest.mark.parametrize(("argv", "prog", "reason"), [
    (["predict", "b", "film.jpeg", "--heatmpas", "x"], "pneumoscan predict",
     "unrecognized arguments: --heatmpas x; did you mean --heatmaps?"),
    (["-q", "train", "--data", "d", "--image_size", "32"], "pneumoscan train",
     "unrecognized arguments: --image_size 32; did you mean --image-size?"),
    (["cache", "d", "--sise=24", "--polcy", "pad"], "pneumoscan cache",
     "unrecognized arguments: --sise=24 --polcy pad; did you mean --size for --sise, --policy for --polcy?"),
    (["cache", "d", "--bogus"], "pneumoscan cache", "unrecognized arguments: --bogus"),  # nothing near it: no guess
    ([], "pneumoscan", "the following arguments are required: command"),  # no command: the top-level's own help
])
def test_an_unknown_option_is_refused_by_its_command_with_the_closest_one(
    argv: list[str], prog: str, reason: str, capsys: pytest.CaptureFixture
) -> None:
    """argparse refused it as `pneumoscan`, whose --help lists the commands, not their options: `pneumoscan: error:
    unrecognized arguments: --heatmpas x (`pneumoscan --help` lists the options)`."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"{prog}: error: {reason} (`{prog} --help` lists the options)\n"


@pytest.mark.parametrize(("argv", "prog", "given", "meant"), [
    (["predict", "b", "film.jpeg", "--heatmap", "x"], "pneumoscan predict", "--heatmap x", "--heatmaps"),
    (["train", "--data", "d", "--out", "r", "--val"], "pneumoscan train", "--val", "--val-folder"),
    (["evaluate", "b", "d", "--add"], "pneumoscan evaluate", "--add", "--add-to-card"),
    (["cache", "d", "--bund", "b"], "pneumoscan cache", "--bund b", "--bundle"),
    (["--qui", "models"], "pneumoscan models", "--qui", "--quiet"),
    (["predict", "b", "film.jpeg", "--b", "8"], "pneumoscan predict", "--b 8", "--backend or --batch-size"),
])
def test_an_abbreviated_option_is_refused_not_expanded(
    argv: list[str], prog: str, given: str, meant: str, capsys: pytest.CaptureFixture
) -> None:
    """argparse took a prefix of one option for it: `--heatmap` ran as `--heatmaps`, `--val` as `--val-folder`, `--add`
    as `--add-to-card`. A typo became another option, and a script's abbreviation would change meaning the day an
    option with the same prefix is added: refused as any unknown option, by its command, naming the options it is a
    prefix of, which 0.2.0 ran it as (`--val` and `--add` were refused naming none: too short for a near name)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    said = capsys.readouterr().err
    assert said.startswith(f"{prog}: error: unrecognized arguments: {given}; did you mean {meant}?"), said
    assert said.endswith(f" (`{prog} --help` lists the options)\n"), said


def test_every_option_of_every_command_has_help() -> None:
    parser = cli.build_parser()
    commands = _commands(parser)
    assert {"evaluate", "threshold", "train", "predict", "serve"} <= set(commands)
    missing = [
        f"{name} {action.dest}"
        for name, sub in [("pneumoscan", parser), *commands.items()]
        for action in sub._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help
    ]
    assert missing == []


def test_help_is_for_users_and_gives_every_default() -> None:
    """The description says what the tool does (the module docstring is for developers), and every option with a
    default says it: argparse's own default, or for train and cv the recipe's (TrainConfig, its augment)."""
    parser = cli.build_parser()
    assert parser.description and "argparse" not in parser.description and "chest X-rays" in parser.description
    recipe = dataclasses.asdict(TrainConfig())
    recipe |= recipe.pop("augment")
    unsaid = []
    for name, sub in _commands(parser).items():
        for action in sub._actions:
            default = action.default
            if default is None and name in ("train", "cv"):
                default = recipe.get(action.dest)
            none = default is None or default is False or default == argparse.SUPPRESS
            if none or (isinstance(default, (list, tuple)) and not default):
                continue
            value = "" if default is True else f"{default:g}" if isinstance(default, float) else str(default)
            if "default" not in action.help or value not in action.help:
                unsaid.append(f"{name} {action.option_strings[0]} ({value}): {action.help}")
    assert unsaid == []


def test_cache_takes_a_bundles_preprocessing_or_a_size_not_both(tiny_bundle: Path, tiny_dataset: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """--size beside --bundle was silently ignored: the cache held the bundle's size, not the one asked for."""
    assert cli.main(["cache", str(tiny_dataset / "test"), "--bundle", str(tiny_bundle), "--size", "64"]) == 2
    assert "give --bundle, or --size and --policy, not both" in capsys.readouterr().err


def test_quiet_silences_progress_and_information(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args = ["cache", str(tiny_dataset / "test"), "--size", "24"]
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "loud"))
    assert cli.main(args) == 0
    loud = capsys.readouterr()
    assert "Preprocessing 16 images" in loud.err and "images cached" not in loud.err
    assert loud.out.startswith("16 images cached as (16, 24, 24)") and loud.out.count("\n") == 1, loud.out
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "quiet"))
    assert cli.main(["-q", *args]) == 0
    assert capsys.readouterr() == (loud.out, ""), "the result is still printed; nothing else"
    assert len(list((tmp_path / "quiet").glob("*.u8"))) == 1, "the work was done, silently"


@pytest.mark.parametrize("command", ["export", "export-int8", "train", "threshold", "ensemble"])
def test_a_result_is_printed_once_on_stdout_with_or_without_quiet(
    command: str, tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A command's result line goes to stdout, so -q keeps it, and is not logged as well (once, not twice)."""
    site = _site(tiny_dataset, tmp_path)
    twin = shutil.copytree(tiny_bundle.parent, tmp_path / "twin") / "bundle"  # a bundle is one member once
    nudge_weights(twin)  # and a copy of its weights too: the twin's differ a little
    for quiet in (False, True):
        out = tmp_path / ("quiet" if quiet else "loud")
        args = {
            "export": ["export", str(tiny_bundle), "--out", f"{out}.onnx"],
            # a long path, as a real one: the result line was hard-wrapped at 80 columns over three lines
            "export-int8": ["export", str(out / ("a-long-folder-name-" * 4) / "bundle"), "--int8", "--data",
                            str(tiny_bundle.parent / "split.csv"), "--calibration-images", "8"],
            "train": ["train", "--data", str(tiny_dataset), "--out", str(out), "--model", "simple_cnn",
                      "--no-pretrained", "--image-size", "32", "--epochs", "1", "--batch-size", "8"],
            "threshold": ["threshold", str(tiny_bundle), str(site), "--youden", "--out", str(out)],
            "ensemble": ["ensemble", str(tiny_bundle), str(twin), "--data", str(site), "--out", str(out)],
        }[command]
        if command == "export-int8":  # it writes into the bundle: a copy of it
            shutil.copytree(tiny_bundle, args[1])
        assert cli.main(["-q"] * quiet + args) == 0
        printed, logged = capsys.readouterr()
        # a piece of the result that a second report of it (the library's log line) would repeat
        if command == "export":
            said = f"wrote{out}.onnxanditspreprocessingspec"
        elif command == "export-int8":
            said = "chosenontheINT8scores"
        elif command == "train":
            said = f"threshold{load_card(out / 'bundle').threshold:.4f}"
        elif command == "threshold":
            said = f"threshold{load_card(out).threshold:.4f}(was"
        else:
            said = "ensembleof2members"
        # train's line, and a line more where its card's figures do not show it better than chance, and one where
        # they show its probabilities far off (each said once)
        card = load_card(out / "bundle") if command == "train" else None
        caveats = [c for c in (card.ranking_caveat, card.calibration_caveat) if c] if card else []
        assert printed.count("\n") == 1 + len(caveats) and said in _flat(printed), printed
        once = all(_flat(printed).count(_flat(c)) == 1 for c in caveats)
        assert once if caveats else "caveat" not in printed, printed
        assert said not in _flat(logged), logged
        assert not (quiet and "INFO" in logged), logged


def test_cv_prints_each_result_on_one_line(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    """cv's result lines are read by scripts: printed whole, never wrapped at the terminal's (or a pipe's 80)
    columns."""
    import pneumoscan.training.cv

    summary = {"folds": 2, "mean": 0.91234, "std": 0.01234, "min": 0.9, "max": 0.92468}
    result = {"summary": {"auc": summary, "balanced_accuracy_at_the_chosen_threshold": summary},
              "per_fold": [{}, {}], "pooled_out_of_fold": {"n": 40, "auc": 0.91}, "left_out": []}
    monkeypatch.setattr(pneumoscan.training.cv, "cross_validate", lambda *args: result)
    out = tmp_path / ("a-long-folder-name-" * 4) / "cv"
    assert cli.main(["cv", "--data", str(tiny_dataset), "--out", str(out), "--folds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1] == f"out-of-fold scores: {out / 'oof.csv'}   figures: {out / 'cv.json'}", lines
    assert lines[2] == "pooled out of fold (40 films): auc 0.9100"
    assert lines[1].endswith("balanced_accuracy_at_the_chosen_threshold: 0.9123 +- 0.0123 (folds 0.9000-0.9247)")


@pytest.mark.parametrize("where", ["before", "after", "at the end"])
def test_quiet_goes_before_or_after_the_command(where: str, tiny_dataset: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`pneumoscan cache -q ...` was refused with "unrecognized arguments: -q": it means what `-q cache` means."""
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    args = ["cache", str(tiny_dataset / "test"), "--size", "24"]
    argv = {"before": ["-q", *args], "after": [args[0], "-q", *args[1:]], "at the end": [*args, "--quiet"]}[where]
    assert cli.main(argv) == 0
    printed, logged = capsys.readouterr()
    assert printed.startswith("16 images cached") and logged == ""
    assert cli.build_parser().parse_args(["serve", "--quiet", "b"]).quiet, "serve's access log follows it too"
    assert not cli.build_parser().parse_args(args).quiet


def test_the_test_split_refusal_points_to_films_the_bundle_never_saw(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The hint said `--split val`, which for a dataset root is mostly the bundle's training films (train splits
    train/ and val/ together): following it led to a second refusal."""
    args = ["threshold", str(tiny_bundle), str(tiny_dataset), "--split", "test", "--youden",
            "--out", str(tmp_path / "t")]
    assert cli.main(args) == 2
    said = capsys.readouterr().err
    assert "give films the bundle never saw (a folder or manifest of your own labelled films; " in said
    assert "RUN/split.csv --split val, the run's validation split, is accepted with a warning" in said
    assert "(--split val, or" not in said


@pytest.mark.parametrize("command, reason", [
    (["split", "DATA", "--val-fraction", "15"], "argument --val-fraction: must be above 0 and below 1, got 15"),
    (["split", "DATA", "--val-fraction", "0"], "argument --val-fraction: must be above 0 and below 1, got 0"),
    (["train", "--zoom-range", "5", "--print-config"], "argument --zoom-range: must be >= 0 and below 1, got 5"),
    (["train", "--zoom-range", "nan", "--print-config"], "argument --zoom-range: must be >= 0 and below 1, got nan"),
])
def test_a_number_out_of_range_is_refused_naming_its_option(command: list[str], reason: str,
                                                            capsys: pytest.CaptureFixture) -> None:
    """`split --val-fraction 15` and `train --zoom-range 5` were refused naming the config keys, val_fraction and
    zoom_range, which the command line does not have."""
    with pytest.raises(SystemExit) as exited:
        cli.main(command)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(f"pneumoscan {command[0]}: error: {reason} (")


def test_a_bundle_given_after_what_follows_it_is_refused_saying_the_order(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`evaluate DATA BUNDLE` was refused as "DATA is not a bundle folder (no bundle.json)", without a word of the
    order; so was `predict FILM BUNDLE`. A dataset given as the bundle, or a bundle (or its run) given after it,
    says the order; a folder that is neither keeps the plain refusal."""
    film = next((tiny_dataset / "test" / "NORMAL").glob("*.jpeg"))
    data, run, nosuch = tiny_dataset, tiny_bundle.parent, tmp_path / "nosuch"
    not_a_bundle = f"{data} is not a bundle folder (no bundle.json)"
    cases = [
        (["evaluate", data, tiny_bundle], f"{not_a_bundle}: it is a dataset, and {tiny_bundle} is a bundle; the "
                                          "order is `pneumoscan evaluate BUNDLE DATA`"),
        (["evaluate", data, run], f"{not_a_bundle}: it is a dataset, and {tiny_bundle} is a bundle; the order is "
                                  "`pneumoscan evaluate BUNDLE DATA`"),
        (["evaluate", data, nosuch], f"{not_a_bundle}: it is a dataset; the order is `pneumoscan evaluate BUNDLE "
                                     "DATA`"),
        (["threshold", data, tiny_bundle, "--youden", "--out", tmp_path / "new"],
         f"{not_a_bundle}: it is a dataset, and {tiny_bundle} is a bundle; the order is `pneumoscan threshold BUNDLE "
         "DATA`"),
        (["predict", film, tiny_bundle], f"{film} is not a bundle folder (no bundle.json): {tiny_bundle} is a bundle; "
                                         "the order is `pneumoscan predict BUNDLE FILMS`"),
        (["predict", film.parent, film, tiny_bundle],
         f"{film.parent} is not a bundle folder (no bundle.json): {tiny_bundle} is a bundle; the order is `pneumoscan "
         "predict BUNDLE FILMS`"),
        (["serve", data], f"{not_a_bundle}: it is a dataset; `pneumoscan serve` takes a bundle folder (RUN/bundle)"),
        # an argument too many, the bundle after what was given as it: said as the order, not "unrecognized arguments"
        (["serve", data, tiny_bundle], f"{not_a_bundle}: it is a dataset, and {tiny_bundle} is a bundle; `pneumoscan "
                                       "serve` takes a bundle folder (RUN/bundle)"),
        (["export", film, run, "--int8"], f"{film} is not a bundle folder (no bundle.json): {tiny_bundle} is a "
                                          "bundle; `pneumoscan export` takes a bundle folder (RUN/bundle)"),
        (["evaluate", data, nosuch, tiny_bundle], f"{not_a_bundle}: it is a dataset, and {tiny_bundle} is a bundle; "
                                                  "the order is `pneumoscan evaluate BUNDLE DATA`"),
        (["export", data], f"{not_a_bundle}: it is a dataset; `pneumoscan export` takes a bundle folder (RUN/bundle)"),
        (["predict", film.parent, film], f"{film.parent} is not a bundle folder (no bundle.json)"),  # nothing to say
    ]
    for command, reason in cases:
        assert cli.main([str(arg) for arg in command]) == 2, reason
        assert capsys.readouterr().err == f"pneumoscan {command[0]}: error: {reason}\n"
    assert not (tmp_path / "new").exists()
    with pytest.raises(SystemExit) as exited:  # the bundle first, then one argument too many: argparse's words
        cli.main(["serve", str(tiny_bundle), str(data)])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(f"pneumoscan serve: error: unrecognized arguments: {data} (")


def test_errors_are_one_sentence_with_status_2(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """No `[Errno 2] No such file or directory: '...'`: a missing bundle, a file named as a folder, a system error
    with its file first, an empty bundle path (an unset variable) said to be one; the same `pneumoscan CMD: error:`
    line for every refusal."""
    film = tmp_path / "film.png"
    Image.new("L", (40, 40)).save(film)
    results = tmp_path / "results.csv"
    results.write_text("")
    cases = [
        ("", [], "no bundle given (an empty path: is the variable that names it set?)"),  # was " is not a bundle..."
        (tmp_path / "nosuch", [], f"{tmp_path / 'nosuch'} is not a bundle folder (no bundle.json)"),
        (film, [], f"{film} is not a bundle folder (no bundle.json)"),
        (tiny_bundle / "bundle.json", [], f"{tiny_bundle / 'bundle.json'} is not a bundle folder (no bundle.json): it "
                                          f"is a file of the bundle {tiny_bundle}; give that folder"),
        (tiny_bundle.parent, [], f"{tiny_bundle.parent} is not a bundle folder (no bundle.json); did you mean "
                                 f"{tiny_bundle}?"),
        (tiny_bundle, ["--heatmaps", str(results)], f"heatmap_dir (--heatmaps) {results} is a file: name a folder"),
        (tiny_bundle, ["--heatmaps", str(results / "maps")], f"{results / 'maps'}: not a directory"),
        (tiny_bundle, ["--out", str(tmp_path / "r.txt")], f"--out must end in .csv or .json: {tmp_path / 'r.txt'}"),
    ]
    for bundle, extra, reason in cases:
        assert cli.main(["predict", str(bundle), str(film), *extra]) == 2, reason
        assert capsys.readouterr().err == f"pneumoscan predict: error: {reason}\n"


def test_results_whose_folder_cannot_be_made_once_the_run_is_done_go_to_the_nearest_folder_and_say_so(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--out's folder is made once the work is done (a run refused meanwhile leaves none): a file that took its
    name since the check lost a long run's results with a bare error. They go under a name of their own to the
    nearest folder there, as results another run changed go beside them, and the error line says where."""
    out, taken = tmp_path / "runs" / "new" / "results.csv", tmp_path / "runs"
    film = str(sorted((tiny_dataset / "test" / "NORMAL").iterdir())[0])
    check = cli.ResultsTarget.check

    def checked_then_taken(*args: object) -> cli.ResultsTarget:
        target = check(*args)
        taken.write_text("another program's file")
        return target

    monkeypatch.setattr(cli.ResultsTarget, "check", checked_then_taken)
    assert cli.main(["predict", str(tiny_bundle), film, "--out", str(out)]) == 2
    kept = tmp_path / "results.csv"
    assert film in kept.read_text() and taken.read_text() == "another program's file"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"pneumoscan predict: error: the folder {out.parent} cannot be made ({os.strerror(errno.ENOTDIR)}): this "
        f"run's results are in {kept}")


def test_pacs_refuses_a_results_file_it_cannot_write_before_asking_the_pacs_anything(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``pacs --store --out DIR`` had read the whole study and stored its reports in the PACS, then exited 2 without
    its results file: ``--out`` is checked as predict checks it, before the first request. A loopback server
    stands in for the PACS and records what it is asked."""
    asked: list[str] = []

    class Pacs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pacs)
    # shutdown() waits for the loop to look again: 0.5 s between looks by default
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    folder = tmp_path / "results.json"
    folder.mkdir()
    try:
        pacs = ["pacs", str(tiny_bundle), "--url", f"http://127.0.0.1:{server.server_port}/dicom-web", "--study",
                "1.2.826.0.1.3680043.8.498.1", "--store", "--out"]
        for out, reason in ((folder, f"--out {folder} is a folder"),
                            (tmp_path / "r.csv", f"--out must end in .json: {tmp_path / 'r.csv'}")):
            assert cli.main([*pacs, str(out)]) == 2
            assert capsys.readouterr().err == f"pneumoscan pacs: error: {reason}\n"
        assert asked == [], "refused before any request"
        assert cli.main([*pacs, str(tmp_path / "r.json")]) == 2  # a results file it can write: the PACS is asked
        assert asked and "DICOMweb at" in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("error", "reason"), [
    (OSError(errno.EFBIG, "File too large", "runs/r.csv"), "runs/r.csv: file too large"),
    (OSError(errno.ENOTEMPTY, "Directory not empty", "a", None, "b"), "a -> b: directory not empty"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
    (IsADirectoryError("--out runs is a folder"), "--out runs is a folder"),
    (ValueError("unknown task 'x'"), "unknown task 'x'"),
])
def test_a_system_error_reads_as_a_sentence(error: OSError | ValueError, reason: str) -> None:
    assert cli._reason(error) == reason


@pytest.mark.parametrize("command", ["evaluate", "threshold", "cache", "ensemble"])
def test_a_misspelt_split_is_named_as_a_typo(
    command: str, tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = {
        "evaluate": ["evaluate", str(tiny_bundle), str(tiny_dataset)],
        "threshold": ["threshold", str(tiny_bundle), str(tiny_dataset), "--youden", "--out", str(tmp_path / "new")],
        "cache": ["cache", str(tiny_dataset)],
        "ensemble": ["ensemble", str(tiny_bundle), str(tiny_bundle), "--data", str(tiny_dataset),
                     "--out", str(tmp_path / "e")],
    }[command]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--split", "tset"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == (
        f"pneumoscan {command}: error: argument --split: unknown split 'tset'; did you mean 'test'? (choose from "
        f"train, val, test) (`pneumoscan {command} --help` lists the options)\n")  # one line: no usage above it
    assert not list(tmp_path.iterdir()), "refused before anything was written"


def test_a_split_is_named_in_any_case_as_folders_and_manifests_are_read(tiny_bundle: Path, tiny_dataset: Path,
                                                                         tmp_path: Path) -> None:
    """`--split TEST` had been refused, though a TEST folder and a manifest's "Test" value are read as test."""
    assert cli.main(["evaluate", str(tiny_bundle), str(tiny_dataset), "--split", "TEST",
                     "--out", str(tmp_path / "e")]) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n"] == len(discover(tiny_dataset).split("test"))


def test_the_library_refuses_a_misspelt_split_but_not_an_empty_one(tiny_dataset: Path, tmp_path: Path) -> None:
    spec = PreprocessSpec(24, "squash")
    with pytest.raises(ValueError, match="unknown split 'tset'; did you mean 'test'"):
        cache_dataset(tiny_dataset, spec, "tset")
    # real, but empty in this dataset: said with the splits it has ("no images" read as if the folder held none)
    with pytest.raises(ValueError, match="no images in .* for split 'val': it holds 64 films, and they are in the "
                                         "test, train splits"):
        cache_dataset(tiny_dataset, spec, "val")
    with pytest.raises(ValueError, match="none has a split .*: give no --split"):
        cache_dataset(tiny_dataset / "train", spec, "val")
    # the quick start's step 3 on the Kermany release without its test/ folder: what to measure on instead
    shutil.copytree(tiny_dataset / "train", tmp_path / "no_test" / "train")
    # in no one command's words: what stands in for the test split is each command's to say
    with pytest.raises(ValueError, match="for split 'test': it holds 48 films, and they are in the train split$"):
        cache_dataset(tmp_path / "no_test", spec, "test")


@pytest.mark.parametrize("command", ["cache", "evaluate", "threshold", "ensemble"])
def test_data_without_a_test_split_is_answered_in_each_commands_words(
    command: str, tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Every command was told evaluate's "give a run's validation films instead: RUN/split.csv --split val (figures
    on them are optimistic)": `cache` then caches nothing evaluate reads without --bundle, and the test split never
    chooses a threshold, which `threshold` and `ensemble` refuse for test films anyway."""
    data, out = tmp_path / "no_test", tmp_path / "out"
    shutil.copytree(tiny_dataset / "train", data / "train")
    if command == "ensemble":
        twin = shutil.copytree(tiny_bundle.parent, tmp_path / "twin") / "bundle"
        nudge_weights(twin)  # a second member: a copy of the same weights is refused first
    args = {
        "cache": ["cache", str(data)],
        "evaluate": ["evaluate", str(tiny_bundle), str(data), "--out", str(out)],
        "threshold": ["threshold", str(tiny_bundle), str(data), "--youden", "--out", str(out)],
        "ensemble": ["ensemble", str(tiny_bundle), str(tmp_path / "twin" / "bundle"), "--data", str(data),
                     "--out", str(out)],
    }[command]
    instead = {
        "cache": "without a test split, cache the films the next command reads (RUN/split.csv --split val --bundle "
                 "RUN/bundle for evaluate on a run's validation films), or give no --split to cache them all",
        "evaluate": f"without a test split, measure it on its run's validation films instead: pneumoscan evaluate "
                    f"{tiny_bundle} {tiny_bundle.parent / 'split.csv'} --split val (figures on them are optimistic)",
        "threshold": "the test split never chooses a threshold: choose it on films the bundle never saw (a folder or "
                     "manifest of your own labelled films; RUN/split.csv --split val, the run's validation split, is "
                     "accepted with a warning)",
        "ensemble": "the test split never chooses an ensemble's temperature and thresholds: choose them on labelled "
                    "films none of the members trained on",
    }[command]
    assert cli.main(["-q", *args, "--split", "test"]) == 2  # -q: the refusal alone, no information before it
    assert capsys.readouterr().err == (f"pneumoscan {command}: error: no images in {data} for split 'test': it holds "
                                       f"48 films, and they are in the train split; {instead}\n")
    assert not out.exists(), "refused before anything was written"


def test_evaluate_without_a_test_split_names_a_bundles_own_run_split(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The quick start's step 3 on the Kaggle copy without test/: the refusal said `RUN/split.csv --split val`, and a
    newcomer had to work out which folder RUN was and where the manifest goes. A bundle in its run folder is told the
    command to run, `--tta` kept; one copied out of its run (no split.csv beside it, or another run's: it was told
    to evaluate on that stranger's films) is told the placeholder."""
    data = shutil.copytree(tiny_dataset / "train", tmp_path / "no_test" / "train").parent
    copied = shutil.copytree(tiny_bundle, tmp_path / "copied")
    beside = shutil.copytree(tiny_bundle, tmp_path / "elsewhere" / "bundle")
    write_manifest(discover(tiny_dataset).split("test"), beside.parent / "split.csv")  # `pneumoscan split`'s
    for bundle, instead in (
            (tiny_bundle, f"measure it on its run's validation films instead: pneumoscan evaluate {tiny_bundle} "
                          f"{tiny_bundle.parent / 'split.csv'} --split val --tta "),
            (copied, "give a run's validation films instead: RUN/split.csv --split val "),
            (beside, "give a run's validation films instead: RUN/split.csv --split val ")):
        assert cli.main(["-q", "evaluate", str(bundle), str(data), "--split", "test", "--tta"]) == 2
        said = capsys.readouterr().err
        assert said.endswith(f"; without a test split, {instead}(figures on them are optimistic)\n"), said


def test_cache_without_a_test_split_names_a_bundles_own_run_split(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`cache DATA --split test --bundle B` on data without test/ said `RUN/split.csv --split val --bundle
    RUN/bundle`, where evaluate in the same place is told the command to paste: a bundle in its run folder is told
    the cache command for its run's validation films, which evaluate then reads; one copied out of its run (no
    split.csv beside it) is told the placeholders."""
    data = shutil.copytree(tiny_dataset / "train", tmp_path / "no_test" / "train").parent
    copied = shutil.copytree(tiny_bundle, tmp_path / "copied")
    for bundle, instead in (
            (tiny_bundle, f"cache its run's validation films instead, for evaluate on them: pneumoscan cache "
                          f"{tiny_bundle.parent / 'split.csv'} --split val --bundle {tiny_bundle} (or give no --split "
                          "to cache them all)"),
            (copied, "cache the films the next command reads (RUN/split.csv --split val --bundle RUN/bundle for "
                     "evaluate on a run's validation films), or give no --split to cache them all")):
        assert cli.main(["-q", "cache", str(data), "--split", "test", "--bundle", str(bundle)]) == 2
        said = capsys.readouterr().err
        assert said.endswith(f"; without a test split, {instead}\n"), said


@pytest.mark.parametrize("quiet", [False, True])
def test_python_warnings_are_one_log_line(
    quiet: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Not `/path/train.py:382: UserWarning: ...` and the source line under it: the message, as any warning."""
    def warn(args: argparse.Namespace) -> int:
        warnings.warn(f"temperature 20 is at its bound ({quiet})", UserWarning)
        warnings.warn(f"an overflow ({quiet})", RuntimeWarning)
        return 0

    monkeypatch.setattr(cli, "COMMANDS", tuple((*c[:3], warn) if c[0] == "models" else c for c in cli.COMMANDS))
    assert cli.main(["-q"] * quiet + ["models"]) == 0
    printed, logged = capsys.readouterr()
    assert printed == "" and logged.count("\n") == 2, logged
    first, second = logged.splitlines()
    assert "WARNING" in first and first.rstrip().endswith(f"temperature 20 is at its bound ({quiet})"), first
    assert second.rstrip().endswith(f"RuntimeWarning: an overflow ({quiet})"), second
    assert "UserWarning" not in logged and "test_cli.py" not in logged and "warnings.warn" not in logged


def test_a_program_importing_pneumoscan_can_silence_it(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest,
) -> None:
    """Library messages go through logging under "pneumoscan"; progress bars follow the same switch."""
    logger = logging.getLogger("pneumoscan")
    monkeypatch.setattr(logger, "handlers", [])  # whatever an earlier CLI call attached
    original = logger.level
    request.addfinalizer(lambda: logger.setLevel(original))
    site = _site(tiny_dataset, tmp_path)
    for run in ("told", "silenced"):
        logger.setLevel(logging.DEBUG if run == "told" else logging.WARNING)
        caplog.clear()
        monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / f"cache-{run}"))  # a fresh cache: a progress bar
        rethreshold(tiny_bundle, site, tmp_path / run, target_sensitivity=0.85)
        err = capsys.readouterr().err
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("pneumoscan")]
        if run == "told":
            assert "Preprocessing 16 images" in err and any(m.startswith("threshold ") for m in messages), messages
        else:
            assert err == "" and messages == []


# One interpreter imports what every command's start imports (the command line, and a metric a script may use);
# each run is then a child forked from it, which runs the command and prints the heavy modules loaded: what a fresh
# `pneumoscan` process loads for that command alone, for one interpreter's start (each had cost its own). It says
# each run before forking it: a run that hangs is the last named.
LOADED = """
import json, os, sys, traceback
from pneumoscan.core.metrics import with_ci
from pneumoscan.cli import main
said = []
for run in json.loads(sys.argv[2]):
    print("running:", run, flush=True)  # flushed: a child would print what the buffer held
    read, write = os.pipe()
    if (pid := os.fork()) == 0:
        os.close(read)
        os.dup2(write, 1)
        try:
            exec(run)
            print(" ".join(m for m in ("torch", "torchvision", "timm", "pydicom", "onnxruntime") if m in sys.modules))
            status = 0
        except BaseException:
            traceback.print_exc(file=sys.stdout)  # into what the test shows
            status = 1
        sys.stdout.flush()
        os._exit(status)
    os.close(write)
    with os.fdopen(read) as out:
        printed = out.read()
    said.append([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), printed])
print(json.dumps(said))
"""
COMMANDS = [
    ("", ""),  # building the command line: every command's --help
    ("assert main(['cache', sys.argv[1], '--size', '32']) == 0", "pydicom"),  # decoding films needs the readers only
    # reading a recipe: printed, or a setting refused, before any training or decoding
    ("assert main(['train', '--print-config']) == 0", ""),
    ("assert main(['cv', '--data', sys.argv[1], '--out', 'cv', '--set', 'epochs=0']) == 2", ""),
]  # fmt: skip
MODELS = "assert main(['models']) == 0"


@pytest.fixture(scope="module")
def loaded_by(tiny_dataset: Path) -> dict[str, tuple[int, str]]:
    """Each of :data:`COMMANDS`' runs and :data:`MODELS`, as :data:`LOADED` runs them: its exit status and what it
    printed (the modules loaded, last)."""
    runs = [run for run, _ in COMMANDS] + [MODELS]
    with process_group([sys.executable, "-c", LOADED, str(tiny_dataset), json.dumps(runs)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True) as parent:
        out, err = ended_by(parent, time.monotonic() + 60 * len(runs))  # a few s a run; room for a loaded machine
    assert parent.returncode == 0, f"{out}\n{err}"
    return dict(zip(runs, map(tuple, json.loads(out.splitlines()[-1]))))


@pytest.mark.parametrize("run, loaded", COMMANDS)
def test_the_command_line_loads_only_what_a_command_needs(run: str, loaded: str, loaded_by: dict) -> None:
    """`--help` imported pydicom (0.3 s), `cache` without --bundle all of torch (3 s, 800 MB) for nothing; `train
    --print-config` and a setting `train` or `cv` refuses loaded torch, torchvision and timm (3.5 s) before reading
    the recipe, and pydicom (0.25 s) for the bounds of an image size."""
    status, printed = loaded_by[run]
    assert status == 0 and printed.splitlines()[-1] == loaded, printed


def test_models_lists_the_registered_names_without_loading_torch(loaded_by: dict) -> None:
    """`pneumoscan models` loaded torch, torchvision and timm (2.6 s of CPU) to build the registry, for its names
    alone: it prints the registry's names, those its builders register, with none of them loaded."""
    from pneumoscan.models.registry import list_models

    status, printed = loaded_by[MODELS]
    *names, loaded = printed.splitlines()
    assert status == 0 and (names, loaded) == (list_models(), ""), printed


@pytest.mark.parametrize("port", ["abc", "70000", "-1", "8.5"])
def test_a_port_that_is_no_tcp_port_says_what_a_port_is(port: str, capsys: pytest.CaptureFixture) -> None:
    """"invalid _port value: 'abc'" named a function, not what is wanted."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "BUNDLE", "--port", port])
    assert f"argument --port: must be a TCP port, 0 to 65535, got {port}" in capsys.readouterr().err


# the program's entry with a hook that says, at the interpreter's exit, how many objects were frozen and whether
# timm was imported
ENTRY = ("import atexit, gc, sys; from pneumoscan.cli import run; "
         "atexit.register(lambda: print('frozen', gc.get_freeze_count(), 'timm' in sys.modules)); "
         "sys.argv = ['pneumoscan', *sys.argv[1:]]; run()")


@pytest.fixture(scope="module")
def interrupted_train(tiny_dataset: Path, module_tmp: Callable[[str], Path]) -> tuple[int, str, str]:
    """`pneumoscan -q train` stopped by Ctrl-C once an epoch is done: its exit status, stdout and stderr. Its start
    (torch, timm and training's stack) is most of its time, so the tests of what it says share one run."""
    import signal

    run = module_tmp("interrupted_train") / "run"
    # no early stop: on a busy machine the tiny run's few epochs past its best ended it before the signal was sent
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "-q", "train", "--data", str(tiny_dataset), "--out",
                             str(run), "--model", "simple_cnn", "--no-pretrained", "--image-size", "32", "--epochs",
                             "500", "--set", "patience=500", "--batch-size", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # an xdist worker ignores SIGINT, and a child inherits that: Ctrl-C as a shell sends it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoint.pt").exists():  # an epoch is done and kept: the run is in its loop
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, out, err


def test_ctrl_c_during_train_is_one_line_that_says_resume_goes_on(interrupted_train: tuple[int, str, str]) -> None:
    """It ended in a 67-line KeyboardInterrupt traceback that never said the run can go on."""
    status, _, err = interrupted_train
    assert status == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == ("pneumoscan train: interrupted (`train --resume` goes on from the last "
                                            "finished epoch)"), err


def test_a_train_stopped_before_its_first_epoch_ends_says_nothing_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`make demo` stopped in its warm start (minutes on a 2-core CPU) said `train --resume` goes on from the last
    finished epoch, of which there was none: --resume then started from scratch. Without a checkpoint of this run's
    the line says that the run starts over, also where --out holds an earlier run's, which a new run deletes only
    once its films are preprocessed (minutes); one it wrote, or resumed from, goes on."""
    import pneumoscan.training.train as train_mod

    run = tmp_path / "run"
    stop_at: list[bool] = []  # whether an epoch finishes (its checkpoint written) before Ctrl-C

    def stopped(*args: object, **kwargs: object) -> None:
        if stop_at[-1]:
            (run / "checkpoint.pt").write_bytes(b"this run's epoch")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "train", stopped)
    args = ["train", "--data", str(tmp_path), "--out", str(run), "--model", "simple_cnn"]
    none = "(no epoch of this run had finished, so it kept no checkpoint: the same command starts the run again)"
    goes_on = "(`train --resume` goes on from the last finished epoch)"
    for earlier, epoch, resume, said in ((False, False, False, none), (True, False, False, none),
                                        (True, True, False, goes_on), (True, False, True, goes_on)):
        shutil.rmtree(run, ignore_errors=True)
        if earlier:  # a run of before in --out: a new run clears it once its films are preprocessed
            run.mkdir()
            (run / "checkpoint.pt").write_bytes(b"an earlier run's epoch")
            os.utime(run / "checkpoint.pt", ns=(0, 0))
        stop_at.append(epoch)
        assert cli.main([*args, *(["--resume"] if resume else [])]) == 130
        assert capsys.readouterr().err.splitlines()[-1] == f"pneumoscan train: interrupted {said}", (earlier, epoch)


def test_a_message_to_a_journal_or_a_pipe_is_one_line() -> None:
    """rich wrapped each message at its 80 columns with trailing blanks when stderr was no terminal: a service's
    journal or a log collector took every piece of one warning for a message of its own."""
    script = ("import logging; from pneumoscan.core import logs; logs.configure(); "
              "logging.getLogger('pneumoscan.x').warning('heatmaps are off until a restart: ' + 'x' * 200 + ' end')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stderr == f"WARNING  heatmaps are off until a restart: {'x' * 200} end\n"


def test_output_piped_to_a_reader_that_stops_ends_quietly(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """`pneumoscan audit DATA --json | head` ended, when head had quit before the report was printed, with
    `pneumoscan audit: error: broken pipe` and status 2, as if the command had failed. A reader that stopped reading
    is the reader's choice: the command ends without a word, with a shell's status for SIGPIPE (141), as `cat` does.
    A broken pipe elsewhere is still an error."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is printed
    with os.fdopen(write, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        assert cli.main(["train", "--print-config"]) == 141
        monkeypatch.undo()
    assert capsys.readouterr().err == ""

    def broken_socket(args: argparse.Namespace) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    commands = tuple((*c[:3], broken_socket) if c[0] == "models" else c for c in cli.COMMANDS)
    monkeypatch.setattr(cli, "COMMANDS", commands)
    assert cli.main(["models"]) == 2
    assert "pneumoscan models: error: broken pipe" in capsys.readouterr().err


STDOUT_FAILS = """
import os, sys
from pneumoscan import cli
size = int(sys.argv.pop(1))
if size < 0:  # a non-blocking stdout whose pipe is full, its reader still there (`| slow-reader`)
    read, write = os.pipe()
    os.set_blocking(write, False)
    while True:
        try:
            os.write(write, b"x" * 65536)
        except BlockingIOError:
            break
    os.dup2(write, 1)
    os.set_blocking(1, False)
    size = 100
elif os.environ.get("STDOUT_NON_BLOCKING"):  # left so by node or a CI runner, its reader there
    os.set_blocking(1, False)
def results(args):
    cli.ResultsTarget(None, "csv", None).write("x" * size)
    return 0
cli.COMMANDS = tuple((*c[:3], results) if c[0] == "models" else c for c in cli.COMMANDS)
cli.run()
"""


@pytest.mark.parametrize(("args", "buffered", "said"), [
    (["0", "train", "--print-config"], True, "pneumoscan train: error: stdout: no space left on device"),
    (["100", "models"], True, "pneumoscan models: error: stdout: no space left on device"),
    (["-1", "train", "--print-config"], False, "pneumoscan train: error: write could not complete without blocking"),
])
def test_output_a_failing_stdout_does_not_take_is_one_error_naming_stdout(args: list[str], buffered: bool,
                                                                        said: str) -> None:
    """Output on a full disk (`pneumoscan ... > /dev/full`) with Python's stdout buffered (no PYTHONUNBUFFERED) stayed
    in its buffer: the last flush's error named no file, the interpreter's own last flush failed again (`Exception
    ignored ...`) and the exit status was 120. Unbuffered (PYTHONUNBUFFERED=1), print()'s text on a non-blocking stdout
    that took nothing was dropped by Python's text layer unsaid, and the command ended 0 (a command's own print()
    does not wait for a reader behind, as its results do: it fails with the reason)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | ({} if buffered else
                                                                              {"PYTHONUNBUFFERED": "1"})
    with open(os.devnull if args[0] == "-1" else "/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", STDOUT_FAILS, *args], stdout=full, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=60)
    assert (done.returncode, done.stderr) == (2, said + "\n")


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_output_on_a_non_blocking_stdout_whose_reader_is_late_is_all_written(buffered: bool) -> None:
    """A non-blocking stdout (node and CI runners leave it so) whose reader is behind, its pipe full: the results
    met the full pipe, and the command ended with exit status 2 and `stdout: resource temporarily unavailable`, 65,536
    of 300,000 bytes written. A stdout that takes nothing for now is waited on."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"STDOUT_NON_BLOCKING": "1"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with subprocess.Popen([sys.executable, "-c", STDOUT_FAILS, "300000", "models"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as child:
        held = array.array("i", [0])
        until = time.monotonic() + 60
        while held[0] < 65536 and child.poll() is None and time.monotonic() < until:  # the reader behind: pipe full
            fcntl.ioctl(child.stdout.fileno(), termios.FIONREAD, held)
            time.sleep(0.01)
        out, err = child.communicate(timeout=60)
    assert held[0] >= 65536 and (child.returncode, err, out) == (0, b"", b"x" * 300000 + b"\n")


STOPPED = """
import sys
from pneumoscan import cli
how = sys.argv.pop(1)
def stopped(args):
    print("a line stdout holds")
    raise KeyboardInterrupt if how == "interrupted" else RuntimeError("a fault of the code's")
cli.COMMANDS = tuple((*c[:3], stopped) if c[0] == "models" else c for c in cli.COMMANDS)
cli.run()
"""


@pytest.mark.parametrize(("how", "status", "said"), [
    ("interrupted", 130, "pneumoscan models: interrupted\n"),
    ("failed", 1, "RuntimeError: a fault of the code's\n"),
])
def test_a_command_stopped_with_stdout_on_a_full_disk_ends_with_its_own_status(how: str, status: int,
                                                                               said: str) -> None:
    """Ctrl-C, or a fault of the code's, with what stdout held unwritable (a full disk): the interpreter's last flush
    failed again, `Exception ignored ... No space left on device`, and the exit status was 120, not 130 or 1."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", STOPPED, how, "models"], stdout=full, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=60)
    assert (done.returncode, done.stderr.endswith(said), "Exception ignored" in done.stderr) == (status, True, False)


@pytest.mark.parametrize("command", ["train", "cv"])
def test_a_bundle_given_as_the_run_folder_is_refused_before_anything_is_written(
    command: str, tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`train --resume --out RUN/bundle` (the folder the other commands take) found no checkpoint there and trained
    a new run inside the bundle: its split, checkpoint and a bundle of its own beside the bundle's files."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "run" / "bundle")
    before = sorted(p.name for p in bundle.iterdir())
    args = [command, "--data", str(tiny_dataset), "--out", str(bundle), "--model", "simple_cnn", "--no-pretrained",
            "--image-size", "32", "--epochs", "1", "--batch-size", "8",
            *(["--resume"] if command == "train" else ["--folds", "2"])]
    assert cli.main(args) == 2
    assert capsys.readouterr().err == (f"pneumoscan {command}: error: --out {bundle} holds a bundle (bundle.json), not "
                                       f"a run: give its run folder, {bundle.parent}, or a new folder\n")
    assert sorted(p.name for p in bundle.iterdir()) == before


def test_a_command_leaves_its_objects_to_the_process_end_not_to_the_last_collections(
    interrupted_train: tuple[int, str, str]
) -> None:
    """The interpreter's last garbage collections walked the half a million objects torch and its libraries make:
    1-2 s between a command's last line and its exit (Ctrl-C's included), every command and every torchrun process.
    The program's entry freezes them (gc.freeze) once the command is done; the interpreter's exit handlers, run after
    it, see them frozen: here those of a training run stopped by Ctrl-C."""
    status, out, err = interrupted_train
    assert status == 130, err
    frozen = int(out.rsplit("frozen ", 1)[1].split()[0])
    assert frozen > 10_000, out[-300:]


def test_a_simple_cnn_run_imports_no_timm(interrupted_train: tuple[int, str, str]) -> None:
    """The registry imported timm at its top (0.37 s of CPU a process), and the ONNX export's look for timm's 'same'
    convolutions did too, for every run, of models timm has no part in: here one trained an epoch, its model
    built and checked by a trial export."""
    status, out, err = interrupted_train
    assert status == 130, err
    assert out.rsplit("frozen ", 1)[1].split()[1] == "False", out[-300:]


# the options that take text which is no path (an empty one is the library's to refuse, or a name left out)
NOT_PATHS = {"--model", "--url", "--study", "--accession", "--host", "--data-name", "--set", "--allowed-hosts",
             "--cors-origin"}


def test_every_option_refuses_an_empty_value_naming_itself(capsys: pytest.CaptureFixture) -> None:
    """`--etiology "$ETIOLOGY"` with the variable unset gives an empty value: `predict --etiology ""` ran without a
    second stage, `--heatmaps ""` wrote into the folder the command ran in, `cache --bundle ""` cached at the
    default size, `train --config ""` left its config out; `serve --etiology ""` said "no bundle given", which
    named no option."""
    accepted = []
    for name, sub in _commands(cli.build_parser()).items():
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.option_strings[-1] in NOT_PATHS:
                continue
            flag = action.option_strings[-1]
            try:
                status = cli.main([name, flag, ""])  # a command that ran, or the library's refusal, fails
            except SystemExit as e:
                status = e.code
            if status != 2 or not capsys.readouterr().err.startswith(f"pneumoscan {name}: error: argument {flag}: "):
                accepted.append(f"{name} {flag}")
    assert accepted == []


@pytest.mark.parametrize("command, reason", [
    (["serve", "b", "--etiology", ""], "argument --etiology: no bundle given"),
    (["predict", "b", "film.png", "--etiology", ""], "argument --etiology: no bundle given"),
    (["cache", "d", "--bundle", ""], "argument --bundle: no bundle given"),
    (["train", "--init", "", "--print-config"], "argument --init: no bundle given"),
    (["cv", "--teacher-cv", ""], "argument --teacher-cv: no cv run given"),
    (["predict", "b", "film.png", "--heatmaps", ""], "argument --heatmaps: no folder given"),
    (["train", "--data", ""], "argument --data: no dataset given"),
    (["compare", ""], "argument RUN: no run given"),  # was the folder the command ran in
    (["ensemble", "", "b", "--out", "e", "--data", "d"], "argument bundles: no bundle given"),
])
def test_an_empty_path_is_refused_as_an_unset_variable(command: list[str], reason: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(command)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(
        f"pneumoscan {command[0]}: error: {reason} (an empty path: is the variable that names it")


def test_trains_closing_line_names_the_class_its_sensitivity_is_of(tiny_bundle: Path,
                                                                    tiny_etiology_bundle: Path) -> None:
    """An etiology run's line said "sensitivity 1.000" without saying of which class: it names the positive class as
    the card records it (virus), as a pneumonia run's names PNEUMONIA."""
    for bundle, positive in ((tiny_etiology_bundle, "virus"), (tiny_bundle, "PNEUMONIA")):
        card = load_card(bundle)
        line = cli._trained(bundle).splitlines()[0]
        assert card.positive == positive
        assert f"): sensitivity ({positive}) {card.val_metrics['sensitivity']:.3f} (95% CI " in line, line


def test_trains_closing_line_gives_its_rates_intervals_and_the_films_they_are_on(tiny_bundle: Path) -> None:
    """A site's fine-tuning said "sensitivity (PNEUMONIA) 1.000, specificity 1.000, accuracy 1.000" of 9 validation
    films, as certain as a figure on thousands: the line gives each rate's 95% CI and the films and patients. Its
    last figure is named a threshold: "...; with --tta 0.3395" after the rates read as one more rate."""
    val = load_card(tiny_bundle).val_metrics
    line = cli._trained(tiny_bundle).splitlines()[0]
    rates = ", ".join(f"{name} {with_ci(val[key], val['ci'][key])}" for name, key in (
        ("sensitivity (PNEUMONIA)", "sensitivity"), ("specificity", "specificity"), ("accuracy", "accuracy")))
    # the tiny bundle's films name no patient: the films alone (a site's line says "on 9 films of 8 patients")
    assert f"): {rates} on {val['n']} films; threshold with --tta " in line and val.get("patients") is None, line
    assert line.startswith(f"{tiny_bundle}: validation AUC {with_ci(val['auc'], val['ci']['auc'], 4)}, threshold ")
