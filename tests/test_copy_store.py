"""The copy search's store of scans (``scans-*.json`` beside the image cache), as processes share it: several at
once on one cache, and a file damaged or cut short."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pneumoscan.core.atomic import locked
from pneumoscan.data import copies
from pneumoscan.data.layouts import discover

PROCESSES = 4
# in a process of its own, as train, cv, evaluate and audit each are: the groups it finds, as JSON
GROUPS = ("import json, sys; from pneumoscan.data.copies import picture_groups; "
          "print(json.dumps(picture_groups(sys.argv[1:])))")


def _films(tiny_dataset: Path, tmp_path: Path) -> tuple[list[str], str]:
    """The tiny data's films and a copy of the first under another name (a group for the search to find)."""
    films = sorted(r.path for r in discover(tiny_dataset).records)
    return films, str(shutil.copy(films[0], tmp_path / "copy.jpeg"))


def _waiting_on(folder: Path) -> int:
    """How many processes wait for ``folder``'s lock (flock), as Linux lists them (``->`` lines)."""
    inode = f":{os.stat(folder).st_ino} "
    return sum("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


def test_processes_that_scan_at_once_each_keep_their_scans_and_find_what_one_alone_finds(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Two trains, or a cv and an audit, started together on one cache: each process scans its films and adds
    them to the store under the folder's lock. Four that finished scanning together (held at the lock until all
    four wait there) each find the groups a process alone finds, and the store holds every one's films: a process
    that found the store written since it looked (before the lock) tried again three times, then left its films
    out, to be decoded again by the next run. A reader meanwhile never meets a half-written store."""
    films, copy = _films(tiny_dataset, tmp_path)
    given = [[*films[k::PROCESSES], copy] for k in range(PROCESSES)]  # films[0] and its copy in the first
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "alone"))
    alone = [[[kind, paths] for kind, paths in copies.picture_groups(paths)] for paths in given]
    assert alone[0] == [[copies.EXACT, sorted([films[0], copy])]]
    cache = tmp_path / "cache"
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(cache))
    cache.mkdir()
    with locked(cache):
        running = [subprocess.Popen([sys.executable, "-c", GROUPS, *paths], stdout=subprocess.PIPE, text=True,
                                    cwd=Path(__file__).parents[1]) for paths in given]
        deadline = time.monotonic() + 120
        while _waiting_on(cache) < PROCESSES:
            assert time.monotonic() < deadline and all(p.poll() is None for p in running), "not all at the lock"
            time.sleep(0.05)
    store = copies._scans_file()
    with caplog.at_level(logging.WARNING, logger=copies.__name__):
        while any(p.poll() is None for p in running):
            copies._read_scans(store)
    assert caplog.records == []
    assert [json.loads(p.communicate()[0]) for p in running] == alone
    assert all(p.returncode == 0 for p in running)
    assert sorted(copies._read_scans(store)) == sorted({*films, copy})


@pytest.mark.parametrize("damage", ["cut short", "another film's hash", "not a mapping"])
def test_a_damaged_store_of_scans_is_made_anew_with_a_warning(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        damage: str) -> None:
    """A store cut short (a full disk under another tool, a copy interrupted) or damaged (bytes that still parse: a
    film's hash replaced by another's, the scans a list) was trusted or stopped the search: damaged, the copy
    was found a copy of another film; a list raised AttributeError. Each is scanned again with one warning, the
    groups those of a fresh scan, and the store made anew."""
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    films, copy = _films(tiny_dataset, tmp_path)
    alone = copies.picture_groups([*films, copy])
    store = copies._scans_file()
    held = json.loads(store.read_bytes())
    if damage == "cut short":
        store.write_bytes(store.read_bytes()[:-100])
    elif damage == "another film's hash":
        held["scans"][copy] |= {key: held["scans"][films[1]][key] for key in ("sha", "phash")}
        store.write_text(json.dumps(held))
    else:
        held["scans"] = list(held["scans"].values())
        store.write_text(json.dumps(held))
    with caplog.at_level(logging.WARNING, logger=copies.__name__):
        assert copies.picture_groups([*films, copy]) == alone
    assert [r.getMessage() for r in caplog.records] == [
        f"the copy search's scans in {store} cannot be read ({caplog.records[0].args[1]}): the films are scanned "
        "again and the file made anew"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=copies.__name__):
        assert sorted(copies._read_scans(store)) == sorted([*films, copy])
    assert caplog.records == []
