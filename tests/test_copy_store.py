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
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

import pytest

from pneumoscan.core import atomic
from pneumoscan.core.atomic import locked, write_atomic
from pneumoscan.core.digests import json_sha256
from pneumoscan.data import copies
from pneumoscan.data.layouts import discover
from tests.builders import ended_by, process_group

PROCESSES = 4
# each list of films of the JSON argument in a process of its own, as train, cv, evaluate and audit each are: the
# groups each finds, as a JSON list. The processes are forked from one interpreter once it has imported the search
# (each interpreter's start had been most of the test's time): each begins as a fresh one would, nothing scanned.
# It says which process it waits for: one that hangs is the last named.
GROUPS = """
import json, os, sys, traceback
from pneumoscan.data.copies import picture_groups
running = []
for k, paths in enumerate(json.loads(sys.argv[1])):
    read, write = os.pipe()
    if (pid := os.fork()) == 0:
        os.close(read)
        status = 1
        try:
            with os.fdopen(write, "w") as out:
                out.write(json.dumps(picture_groups(paths)))
            status = 0
        except BaseException:
            traceback.print_exc()  # os._exit would end the process before the interpreter printed it
        finally:
            os._exit(status)
    os.close(write)
    running.append((k, pid, read))
said = []
for k, pid, read in running:
    print(f"waiting for process {pid}, the search of list {k}", flush=True)
    with os.fdopen(read) as got:
        said.append(json.loads(got.read() or "null"))
    said[-1] = said[-1] if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 else f"process {pid} failed"
print(json.dumps(said))
"""


def _films(tiny_dataset: Path, tmp_path: Path) -> tuple[list[str], str]:
    """The tiny data's films and a copy of the first under another name (a group for the search to find)."""
    films = sorted(r.path for r in discover(tiny_dataset).records)
    return films, str(shutil.copy(films[0], tmp_path / "copy.jpeg"))


def _real(paths: Iterable[str]) -> list[str]:
    """The real paths of ``paths``, sorted: what the store knows its files by."""
    return sorted(os.path.realpath(p) for p in paths)


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
    store = copies._scans_file()
    with ExitStack() as lock:
        lock.enter_context(locked(cache))  # before the processes start; let go once all four wait at it
        with process_group([sys.executable, "-c", GROUPS, json.dumps(given)], stdout=subprocess.PIPE, text=True,
                           cwd=Path(__file__).parents[1]) as running:
            deadline = time.monotonic() + 120
            while _waiting_on(cache) < PROCESSES:
                assert time.monotonic() < deadline and running.poll() is None, "not all at the lock"
                time.sleep(0.05)
            lock.close()
            deadline = time.monotonic() + 120
            with caplog.at_level(logging.WARNING, logger=copies.__name__):
                while running.poll() is None and time.monotonic() < deadline:
                    copies._read_scans(store)
            said = ended_by(running, deadline)[0]  # one still running: the test fails, naming it
    assert caplog.records == []
    assert running.returncode == 0 and json.loads(said.splitlines()[-1]) == alone, said
    assert sorted(copies._read_scans(store)["files"]) == _real({*films, copy})


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
        held["files"][os.path.realpath(copy)]["sha"] = held["files"][os.path.realpath(films[1])]["sha"]
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
        assert sorted(copies._read_scans(store)["files"]) == _real([*films, copy])
    assert caplog.records == []


def test_a_film_reached_by_another_name_or_moved_is_not_decoded_again_and_a_changed_one_is(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store knew each scan by the path as given: a film reached through a linked folder, by a relative path,
    or in a dataset folder moved, copied or mounted elsewhere was decoded again (train/'s 5,216 films: 4-8 s on 2
    cores). Each is known by its bytes: scanned once, a film is not decoded again under any name, and each scan
    names its path as given; a film changed in the moved folder (another picture's bytes) is scanned again, and
    grouped by what it holds now."""
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    data = shutil.copytree(tiny_dataset / "train", tmp_path / "data")
    names = sorted(str(p.relative_to(data)) for p in data.rglob("*.jpeg"))[:12]
    shutil.copyfile(data / names[0], data / "copy.jpeg")  # a group for the search to find
    names.append("copy.jpeg")
    decoded: list[str] = []
    scan = copies.scan_file
    monkeypatch.setattr(copies, "scan_file", lambda path, **kw: decoded.append(path) or scan(path, **kw))

    def groups(folder: Path | str) -> list[tuple[str, list[str]]]:
        return copies.picture_groups([os.path.join(folder, name) for name in names])

    assert groups(data) == [(copies.EXACT, sorted([str(data / names[0]), str(data / "copy.jpeg")]))]
    assert len(decoded) == len(names)
    decoded.clear()
    moved, copied = data.rename(tmp_path / "moved"), tmp_path / "copied"
    shutil.copytree(moved, copied)  # other inodes and times: the bytes alone are the same
    (tmp_path / "link").symlink_to(moved)
    monkeypatch.chdir(tmp_path)
    for folder in (tmp_path / "link", "link", moved, "moved", copied):
        assert groups(folder) == [(copies.EXACT, sorted([os.path.join(folder, names[0]),
                                                         os.path.join(folder, "copy.jpeg")]))]
    assert decoded == []
    (copied / names[0]).write_bytes((copied / names[1]).read_bytes())  # now a copy of names[1]
    assert groups(copied) == [(copies.EXACT, sorted([str(copied / names[0]), str(copied / names[1])]))]
    assert decoded == []  # its bytes are another film's, scanned before
    (copied / names[1]).write_bytes(b"not a film")
    assert groups(copied) == []
    assert decoded == [str(copied / names[1])]


def test_a_write_stats_the_films_it_adds_not_every_film_the_store_holds_and_drops_those_gone_in_time(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write stat'ed every file the store held, to drop those gone or changed: a store of 10,000 films paid
    10,000 stats a film added. A write stats the films it adds; those gone are dropped once the store holds more
    than twice the files it held at the last such look, and until then a file's scan is used only while its path
    and stamp are the ones kept: a film put where a gone one was is scanned as what it holds."""
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    films = sorted(r.path for r in discover(tiny_dataset).records)  # train/'s and test/'s
    gone = shutil.copytree(tiny_dataset / "train", tmp_path / "gone")
    held = sorted(str(p) for p in gone.rglob("*.jpeg"))
    copies.scans(held)
    store = copies._scans_file()
    stamped: list[str] = []
    stamp = copies.file_stamp
    monkeypatch.setattr(copies, "file_stamp", lambda path: stamped.append(path) or stamp(path))
    copies.scans([films[0]])
    assert set(stamped) - {store} == {films[0]}, f"{len(set(stamped) - {store})} films stat'ed to add one"
    assert copies._read_scans(store)["checked"] == len(held)
    was = copies._read_scans(store)["files"][os.path.realpath(held[0])]["sha"]
    shutil.rmtree(gone)
    Path(held[0]).parent.mkdir(parents=True)
    shutil.copyfile(films[1], held[0])  # another film where a gone one was: its scan kept is not this film's
    assert copies.scans([held[0]])[0]["sha"] == copies.scans([films[1]])[0]["sha"] != was
    assert len(copies._read_scans(store)["files"]) == len(held) + 2, "the gone films not stat'ed yet"
    stamped.clear()
    copies.scans(films[2:len(held) + 1])  # the store passes twice its last look's files: each is looked at
    assert set(stamped) >= set(map(os.path.realpath, held[1:]))
    assert sorted(copies._read_scans(store)["files"]) == _real([held[0], *films[:len(held) + 1]])
    assert copies._read_scans(store)["checked"] == len(held) + 2


def test_a_store_this_process_read_is_not_read_again_while_unchanged_and_is_once_replaced(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each search parsed the store and checked its checksum again (about 0.1 s a search of 5,000 films, and split,
    train and evaluate each search several times). A store whose stamp is the one it had when this process last read
    or wrote it is not read again once that stamp's times are settled (a file rewritten in place within its times'
    granularity keeps its stamp); one replaced since (another process's search adding its films) is read, and its
    scans are used."""
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    films, copy = _films(tiny_dataset, tmp_path)
    paths = [*films[:8], copy]
    groups = copies.picture_groups(paths)
    store = copies._scans_file()
    reads: list[Path] = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: (self == store and reads.append(self)) or read_bytes(self))
    monkeypatch.setattr(atomic, "SETTLED_NS", 3600 * 10**9)  # no stamp settled: each search reads the store
    assert copies.picture_groups(paths) == groups and reads == [store]
    monkeypatch.setattr(atomic, "SETTLED_NS", -3600 * 10**9)  # every stamp settled (no waiting in a test)
    reads.clear()
    assert copies.picture_groups(paths) == groups and copies.picture_groups(paths[1:]) == []
    assert reads == [], "read again though unchanged"
    held = json.loads(read_bytes(store))  # another process's store, which holds no scan of films[0] and its copy
    sha = held["files"][_real([copy])[0]]["sha"]
    kept = {"files": {p: e for p, e in held["files"].items() if e["sha"] != sha},
            "scans": {other: scan for other, scan in held["scans"].items() if other != sha}}
    write_atomic(store, json.dumps(kept | {"checked": 0, "sha256": json_sha256(kept)}).encode())
    decoded: list[str] = []
    scan = copies.scan_file
    monkeypatch.setattr(copies, "scan_file", lambda path, **kw: decoded.append(path) or scan(path, **kw))
    assert copies.picture_groups(paths) == groups and reads == [store]
    assert sorted(decoded) == sorted([films[0], copy]), "the films the store read holds no scan of"


def test_the_real_paths_of_films_are_realpaths_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store knows a film by its real path, worked out a folder at a time: the same as ``os.path.realpath`` for
    a film that is a link, one in a linked folder, one named through ``..`` past a link, and relative names."""
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "film.png").write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "film.png").symlink_to(tmp_path / "data" / "a" / "film.png")
    (tmp_path / "linked").symlink_to(tmp_path / "data" / "a")
    (tmp_path / "data" / "b").symlink_to(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    paths = ["elsewhere/film.png", "linked/film.png", "data/b/../a/film.png", "data/b/film.png", "film.png",
             "linked/../a/film.png", "./linked/./film.png", "linked/gone.png", "linked/..", str(tmp_path / "linked")]
    assert copies._real_paths(paths) == [os.path.realpath(p) for p in paths]
