"""Command-line habits: --version, help on every option, -q, and a library that reports through logging."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from pneumoscan import __version__, cli
from pneumoscan.data.layouts import discover, make_record, write_manifest
from pneumoscan.evaluation.evaluate import rethreshold


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"pneumoscan {__version__}"


def test_every_option_of_every_command_has_help() -> None:
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"evaluate", "threshold", "train", "predict", "serve"} <= set(commands.choices)
    missing = [
        f"{name} {action.dest}"
        for name, sub in [("pneumoscan", parser), *commands.choices.items()]
        for action in sub._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help
    ]
    assert missing == []


def test_quiet_silences_progress_and_information(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args = ["cache", str(tiny_dataset / "test"), "--size", "24"]
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "loud"))
    assert cli.main(args) == 0
    loud = capsys.readouterr()
    assert "Preprocessing 16 images" in loud.err and "16 images cached" in loud.err
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "quiet"))
    assert cli.main(["-q", *args]) == 0
    assert capsys.readouterr() == ("", "")
    assert len(list((tmp_path / "quiet").glob("*.u8"))) == 1, "the work was done, silently"


def test_a_program_importing_pneumoscan_can_silence_it(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest,
) -> None:
    """Library messages go through logging under "pneumoscan"; progress bars follow the same switch."""
    logger = logging.getLogger("pneumoscan")
    monkeypatch.setattr(logger, "handlers", [])  # whatever an earlier CLI call attached
    original = logger.level
    request.addfinalizer(lambda: logger.setLevel(original))
    site = tmp_path / "site.csv"  # a site's own labelled films: a threshold is never chosen on the test split
    write_manifest([make_record(r.path, r.label) for r in discover(tiny_dataset).split("test")], site)
    for run in ("told", "silenced"):
        logger.setLevel(logging.INFO if run == "told" else logging.WARNING)
        caplog.clear()
        monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / f"cache-{run}"))  # a fresh cache: a progress bar
        rethreshold(tiny_bundle, site, tmp_path / run, target_sensitivity=0.85)
        err = capsys.readouterr().err
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("pneumoscan")]
        if run == "told":
            assert "Preprocessing 16 images" in err and any(m.startswith("threshold ") for m in messages), messages
        else:
            assert err == "" and messages == []
