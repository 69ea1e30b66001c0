"""Files as the file system really has them: odd entries accounted for, any name's bytes kept, outputs atomic."""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumoscan.cli import ResultsTarget, _print_json, main
from pneumoscan.core.atomic import building, file_stamp, write_json, write_unchanged
from pneumoscan.core.digests import file_sha256
from pneumoscan.core.files import NotRegularFile
from pneumoscan.core.names import path_list, path_text, shown
from pneumoscan.data.decode import read_dicom_header
from pneumoscan.data.layouts import discover
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.readers import registered
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.inference.predict import expand_paths, format_results, predict_paths
from pneumoscan.models.card import CARD, WEIGHTS, load_card, refuse_model_files
from pneumoscan.training.resume import save_checkpoint
from tests.builders import crashed_at_finish, dicom_bytes

ROOT = Path(__file__).parents[1]
LATIN1 = os.fsdecode(b"caf\xe9.jpeg")  # a name from an old Latin-1 zip: not UTF-8
ANSI = "\x1b[31mred.jpeg"  # would turn a terminal red
# What the odd entries of odd_folder are, as discovery and predict report them.
FILM_ERRORS = {
    "fifo.jpeg": "not a regular file (FIFO)",
    "sock.png": "not a regular file (socket)",
    "null.dcm": "not a regular file (character device)",
    "gone.jpeg": "broken link",
    "self.jpeg": "link loop",
}
SKIPPED = {
    "pipe": "not an image extension (none); not a regular file (FIFO)",
    "x.jpeg": "folder named like an image (searched inside, not read)",
    "notes.txt": "not an image extension (.txt)",
}


def _run(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Python in a child process (a hang or a resource limit stays there), with this checkout's package."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)  # fmt: skip


@pytest.fixture
def odd_folder(tiny_dataset: Path, tmp_path: Path) -> Path:
    """NORMAL/ holding two films and one of each odd entry a file system can have."""
    folder = tmp_path / "data" / "NORMAL"
    (folder / "x.jpeg").mkdir(parents=True)  # a folder named like a film, with a film inside
    films = sorted((tiny_dataset / "test" / "NORMAL").iterdir())
    shutil.copy(films[0], folder / "good.jpeg")
    shutil.copy(films[1], folder / "x.jpeg" / "inner.png")
    os.mkfifo(folder / "fifo.jpeg")
    os.mkfifo(folder / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock.png"))
    (folder / "null.dcm").symlink_to("/dev/null")
    (folder / "gone.jpeg").symlink_to(tmp_path / "nowhere.jpeg")
    (folder / "self.jpeg").symlink_to(folder / "self.jpeg")
    (folder / "notes.txt").write_text("not a film")
    return folder


def test_discovery_lists_every_odd_entry_with_its_reason(odd_folder: Path) -> None:
    found = discover(odd_folder.parent)
    assert [str(Path(r.path).relative_to(odd_folder)) for r in found.records] == ["good.jpeg", "x.jpeg/inner.png"]
    skipped = {str(Path(s["path"]).relative_to(odd_folder)): s["reason"] for s in found.skipped}
    assert skipped == {**FILM_ERRORS, **SKIPPED}


def test_predict_walks_folders_as_discovery_does(odd_folder: Path, tiny_bundle: Path) -> None:
    skipped: list[dict] = []
    items = expand_paths([odd_folder], skipped=skipped)
    assert {str(Path(p).relative_to(odd_folder)): error for p, error in items} == {
        "good.jpeg": None, "x.jpeg/inner.png": None, **FILM_ERRORS,
    }  # fmt: skip
    assert {Path(s["path"]).name: s["reason"] for s in skipped} == SKIPPED
    found = discover(odd_folder.parent)  # the same walk: the same films, the same reasons
    assert [r.path for r in found.records] == [p for p, error in items if error is None]
    rows = predict_paths(tiny_bundle, [odd_folder], backend="torch")
    assert {Path(r["path"]).name: r.get("error") for r in rows} == {"good.jpeg": None, "inner.png": None, **FILM_ERRORS}


def test_a_fifo_given_directly_is_refused_without_waiting(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer forever (predict once hung on one); it is refused by its type.
    A child process, so that a hang fails the test instead of stopping the suite."""
    os.mkfifo(tmp_path / "film.jpeg")
    code = ("import sys; from pneumoscan.data.decode import DecodeError, read_gray\ntry: read_gray(sys.argv[1])\n"
            "except DecodeError as e: print(e)")
    assert _run(code, str(tmp_path / "film.jpeg"), timeout=60).stdout.strip() == "not a regular file (FIFO)"


def test_each_reader_refuses_a_fifo_by_its_own_open_without_waiting(tmp_path: Path) -> None:
    """The format is told from a first read of the file; a film swapped for a FIFO after that read reached a reader
    that opened the path again, and waited for a writer. Each built-in reader's own open refuses it. A child
    process, so that a hang fails the test instead of stopping the suite."""
    os.mkfifo(tmp_path / "film")
    code = ("import sys; from pathlib import Path; from pneumoscan.data import readers\n"
            "from pneumoscan.data.pixels import DecodeError\nfilm = Path(sys.argv[1])\n"
            "for r in readers.registered():\n"
            "    for call in (lambda: r.gray(film, 64), lambda: r.header(film)):\n"
            "        try: call()\n"
            "        except DecodeError as e: print(r.name, e)\n")
    names = [reader.name for reader in registered()]
    lines = _run(code, str(tmp_path / "film"), timeout=60).stdout.splitlines()
    assert lines == [f"{name} not a regular file (FIFO)" for name in names for _ in range(2)]


def test_a_folder_in_a_bundle_files_place_is_refused_by_its_path_and_kind(tmp_path: Path) -> None:
    """A folder where bundle.json or a model file belongs was refused as "6: is a directory": the number of a file
    descriptor, which named neither the file nor the bundle, and that descriptor was left open. It is refused as
    any other special file is, naming the path, and no descriptor is left behind."""
    (tmp_path / CARD).mkdir()
    (tmp_path / WEIGHTS).mkdir()
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path / CARD))} is not a regular file \\(folder\\); "):
        load_card(tmp_path)
    with pytest.raises(NotRegularFile, match=r"^not a regular file \(folder\)$"):
        file_sha256(tmp_path / WEIGHTS)
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.parametrize("reader", registered(), ids=lambda reader: reader.name)
def test_each_reader_refuses_a_film_gone_since_its_format_was_told(reader, tmp_path: Path) -> None:
    """A film deleted after the format check reached a reader as an OSError, which predict's decoding threads do
    not catch, or as a DecodeError naming a damaged header or DICOM file; it is one that says the film is gone."""
    gone = tmp_path / "film"
    for read in (lambda: reader.gray(gone, 64), lambda: reader.header(gone)):
        with pytest.raises(DecodeError, match="^file not found$"):
            read()


def test_a_dicom_value_a_header_read_left_unread_is_read_from_that_very_file_or_refused(tmp_path: Path) -> None:
    """A header-only read leaves the pixels (any value over 64 KB) in the file, and pydicom read them later by
    opening the path again with a plain ``open``: a film replaced or rewritten since had the other file's bytes read
    as its own, unchecked, and a FIFO in its place would leave it waiting for a writer. They are read from the very
    file the header came from, or refused."""
    film, other = tmp_path / "film.dcm", tmp_path / "other.dcm"
    values = np.arange(256 * 256).reshape(256, 256) % 4096
    film.write_bytes(dicom_bytes(values))
    assert read_dicom_header(film).PixelData == values.astype(np.uint16).tobytes()  # the same file: read
    header = read_dicom_header(film)
    other.write_bytes(dicom_bytes(4095 - values))
    os.replace(other, film)
    with pytest.raises(DecodeError, match=r"^the file changed after its header was read \(replaced or rewritten\)"):
        header.PixelData
    header = read_dicom_header(film)
    film.write_bytes(dicom_bytes(4095 - values, PatientID="2"))  # rewritten in place: the same file, other bytes
    with pytest.raises(DecodeError, match="^the file changed after its header was read"):
        header.PixelData
    header = read_dicom_header(film)
    film.unlink()
    os.mkfifo(film)
    with pytest.raises(DecodeError, match=r"^not a regular file \(FIFO\)$"):
        header.PixelData


def test_names_are_shown_escaped() -> None:
    assert shown(f"/data/{LATIN1}") == "/data/caf\\xe9.jpeg"
    assert shown(ANSI + "\nnext") == "\\x1b[31mred.jpeg\\nnext"
    assert shown("a\u202eb") == "a\\u202eb"  # a right-to-left override would reverse what follows
    assert shown("[bold]x[/x].png") == "[bold]x[/x].png"  # text, printed without markup
    assert path_text(LATIN1) == "caf\\xe9.jpeg" and path_text(ANSI) == ANSI  # output files keep control characters


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_predict_keeps_every_row_whatever_the_name(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    films = sorted((tiny_dataset / "test" / "PNEUMONIA").iterdir())
    shutil.copy(films[0], folder / "plain.jpeg")
    shutil.copy(films[1], folder / LATIN1)
    (folder / ANSI).write_text("not an image")
    out = tmp_path / f"r.{fmt}"
    assert main(["predict", str(tiny_bundle), str(folder), "--out", str(out), "--backend", "torch"]) == 1
    text = out.read_bytes().decode("utf-8")  # valid UTF-8, strictly
    rows = json.loads(text) if fmt == "json" else [dict(zip(text.splitlines()[0].split(","), line.split(",")))
                                                    for line in text.splitlines()[1:]]  # fmt: skip
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name.keys() == {"plain.jpeg", "caf\\xe9.jpeg", ANSI}
    assert float(by_name["caf\\xe9.jpeg"]["probability"]) >= 0 and by_name[ANSI]["error"]
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[31mred.jpeg: not a JPEG, PNG or DICOM image" in err
    assert "2 predicted, 1 unreadable, 0 skipped" in err


FAILED_WRITES = """
import contextlib, io, json, os, resource, signal, sys, torch
from pathlib import Path
from pneumoscan import cli
from pneumoscan.training.resume import save_checkpoint
bundle, films, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
check = cli.ResultsTarget.check
meanwhile = {"changed": lambda: (folder / "c.csv").write_text("another run's results"),  # once --out was checked
             "moved": lambda: (folder / "runs").write_text("another program's file")}
said = {}
for name, args in (("results", ["--out", folder / "r.csv"]), ("heatmaps", ["--heatmaps", folder / "maps"]),
                   ("changed", ["--out", folder / "c.csv"]), ("moved", ["--out", folder / "runs" / "new" / "m.csv"])):
    def checked(*given, name=name):
        target = check(*given)
        meanwhile.get(name, lambda: None)()
        return target
    cli.ResultsTarget.check = checked
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()) as out:
        code = cli.main(["predict", bundle, films, "--backend", "torch", *map(str, args)])
    said[name] = [code, err.getvalue().splitlines()[-1], out.getvalue()]
unread, w = os.pipe()
os.close(unread)  # stdout's reader gone (`| head`), as the results file fails
with contextlib.redirect_stderr(io.StringIO()) as err, open(w, "w") as pipe, contextlib.redirect_stdout(pipe):
    code = cli.main(["predict", bundle, films, "--backend", "torch", "--out", str(folder / "r.csv")])
said["unread"] = [code, err.getvalue().splitlines()[-1]]
# results without --out, on a stdout that meets the limit: a file, unbuffered as PYTHONUNBUFFERED=1 makes it
printed = io.TextIOWrapper(io.FileIO(folder / "printed.csv", "w"), encoding="utf-8", write_through=True)
with contextlib.redirect_stderr(io.StringIO()) as err, printed, contextlib.redirect_stdout(printed):
    code = cli.main(["predict", bundle, films, "--backend", "torch"])
said["printed"] = [code, err.getvalue().splitlines()[-1], (folder / "printed.csv").stat().st_size]
try:
    save_checkpoint(folder / "checkpoint.pt", {"epoch": 2, "weights": torch.zeros(100_000)})
except OSError as e:
    said["checkpoint"] = str(e)
print(json.dumps(said))
"""


@pytest.fixture(scope="module")
def failed_writes(tiny_bundle: Path, tiny_dataset: Path, module_tmp: Callable[[str], Path]) -> tuple[dict, Path]:
    """Predict's results and heatmaps and a checkpoint, each written past a 1,000-byte file size limit (one child
    process, as torch loads slowly): what each said (exit status, last error line, stdout), and the folder it wrote
    in. Two results files meet something else first, once --out was checked: another run's results in c.csv, a
    file in place of m.csv's folder runs/new."""
    folder = module_tmp("full")
    (folder / "r.csv").write_text("previous results\n")
    (folder / "c.csv").write_text("previous results\n")
    save_checkpoint(folder / "checkpoint.pt", {"epoch": 1})
    run = _run(FAILED_WRITES, *map(str, [tiny_bundle, tiny_dataset / "test", folder]))
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1]), folder


def _results_on_stdout(said: list, films: Path) -> None:
    """The results a failed write did not lose: on stdout, one row per film, as predict without --out prints them."""
    rows = list(csv.DictReader(io.StringIO(said[2])))
    assert sorted(row["path"] for row in rows) == sorted(str(p) for p in films.rglob("*.jpeg"))
    assert all(float(row["probability"]) >= 0 for row in rows) and said[2].endswith("\n")


def test_a_failed_results_write_leaves_the_old_file_and_puts_the_results_on_stdout(
    failed_writes: tuple[dict, Path], tiny_dataset: Path
) -> None:
    """The results of a run whose file could not be written (a full disk) were lost with the error line."""
    said, folder = failed_writes
    assert said["results"][:2] == [2, f"pneumoscan predict: error: {folder / 'r.csv'} cannot be written (File too "
                                      "large): this run's results are on stdout"]
    assert (folder / "r.csv").read_text() == "previous results\n"
    _results_on_stdout(said["results"], tiny_dataset / "test")


def test_results_another_run_changed_whose_folder_takes_no_new_file_go_to_stdout(
    failed_writes: tuple[dict, Path], tiny_dataset: Path
) -> None:
    """Results another run wrote meanwhile go beside them under a new name; where that fails too (a full disk),
    they were lost with the new name's bare error."""
    said, folder = failed_writes
    assert said["changed"][:2] == [2, (
        f"pneumoscan predict: error: {folder / 'c.csv'} changed while this run was working (another run's "
        f"results?): nothing was written over it; nor can a new file in {folder} be written (File too large): this "
        "run's results are on stdout")]
    assert (folder / "c.csv").read_text() == "another run's results"
    _results_on_stdout(said["changed"], tiny_dataset / "test")


def test_results_whose_folder_cannot_be_made_nor_the_nearest_take_them_go_to_stdout(
    failed_writes: tuple[dict, Path], tiny_dataset: Path
) -> None:
    """Results whose folder a file took meanwhile go to the nearest folder; where that fails too (a full disk),
    they were lost with its bare error."""
    said, folder = failed_writes
    assert said["moved"][:2] == [2, (
        f"pneumoscan predict: error: the folder {folder / 'runs' / 'new'} cannot be made ({os.strerror(errno.ENOTDIR)}"
        f"); nor can a new file in {folder} be written (File too large): this run's results are on stdout")]
    assert (folder / "runs").read_text() == "another program's file"
    _results_on_stdout(said["moved"], tiny_dataset / "test")


def test_results_neither_their_file_nor_stdout_takes_are_said_lost(failed_writes: tuple[dict, Path]) -> None:
    """Results whose file fails go to stdout; where its reader is gone too, the failed file was not to go unsaid in
    the quiet exit of a pipe's reader gone."""
    said, folder = failed_writes
    assert said["unread"] == [2, f"pneumoscan predict: error: {folder / 'r.csv'} cannot be written (File too large); "
                                 "nor can this run's results be written to stdout (Broken pipe): they are lost"]


def test_results_on_a_stdout_that_takes_part_of_them_are_a_failure(failed_writes: tuple[dict, Path]) -> None:
    """A full disk took the first bytes of the results printed to stdout (`predict FILMS > results.csv`, Python
    unbuffered, as in many containers) and Python's text layer dropped the rest unsaid: exit status 0, the results
    cut mid-row."""
    said, folder = failed_writes
    assert said["printed"] == [2, "pneumoscan predict: error: stdout: file too large", 1000]


def test_a_failed_heatmap_write_leaves_no_broken_png(failed_writes: tuple[dict, Path]) -> None:
    said, folder = failed_writes
    assert said["heatmaps"][0] == 2 and said["heatmaps"][1].endswith(".png: file too large")
    assert said["heatmaps"][2] == "" and list((folder / "maps").iterdir()) == []


def test_a_failed_checkpoint_write_keeps_the_previous_one(failed_writes: tuple[dict, Path]) -> None:
    said, folder = failed_writes
    assert said["checkpoint"] == f"[Errno 27] File too large: '{folder / 'checkpoint.pt'}'"
    assert torch.load(folder / "checkpoint.pt")["epoch"] == 1
    # nothing half-written anywhere, no temporary file left behind
    assert sorted(p.name for p in folder.iterdir()) == ["c.csv", "checkpoint.pt", "maps", "printed.csv", "r.csv",
                                                          "runs"]


@pytest.mark.parametrize("stem", ["r" * 251, "é" * 125], ids=["ascii", "two-byte"])
def test_a_results_file_whose_name_is_the_longest_a_folder_takes_is_written(tmp_path: Path, stem: str) -> None:
    """--out checks that its folder takes a file, and a name of 255 bytes passes the check: its temporary file,
    named after it, was 14 bytes too long, and the run's results met ENAMETOOLONG once its work was done."""
    out = tmp_path / (stem + ".csv")
    target = ResultsTarget.check(str(out), ["csv"])
    target.write("path,probability\nfilm.png,0.9\n")
    assert out.read_text() == "path,probability\nfilm.png,0.9\n" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_two_runs_given_one_results_file_lose_neither_results(tmp_path: Path) -> None:
    """Two writers that began before either wrote: one writes the file, the other finds it there and leaves it,
    its own results beside it under a new name (an atomic rename had kept the last and dropped the first)."""
    out = tmp_path / "rows.csv"
    both_began = threading.Barrier(2)
    said: dict[str, Path | FileExistsError] = {}

    def run(name: str) -> None:
        began = file_stamp(out)
        both_began.wait()
        try:
            said[name] = write_unchanged(out, f"{name}\n".encode(), began)
        except FileExistsError as e:
            said[name] = e

    runs = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(timeout=10)
    [written] = [name for name, result in said.items() if result == out]
    [refused] = [result for result in said.values() if isinstance(result, FileExistsError)]
    kept = tmp_path / "rows-2.csv"
    assert out.read_text() == f"{written}\n" and {out.read_text(), kept.read_text()} == {"a\n", "b\n"}
    assert str(refused) == (f"{out} appeared while this run was working (another run's results?): nothing was "
                            f"written over it; this run's results are in {kept}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows-2.csv", "rows.csv"]  # no temporary file left


@contextmanager
def another_run_writes(path: Path, data: bytes) -> Iterator[None]:
    """Another run's results written to PATH while a run in the block works: at each record pneumoscan logs after
    the run began (predict says the tiny bundle records no appearance of its training films; evaluate, of a bundle
    without its run folder, that its films cannot be checked against the training films)."""
    class OtherRun(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)

    logger, handler = logging.getLogger("pneumoscan"), OtherRun()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def test_predict_leaves_results_written_while_it_ran_and_says_where_its_own_went(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, other = tmp_path / "rows.csv", b"path,probability\nanother run's film.jpeg,0.5\n"
    out.write_text("an earlier run's results\n")  # replaced by a run that began after it, as ever
    film = str(sorted((tiny_dataset / "test" / "NORMAL").iterdir())[0])
    assert main(["predict", str(tiny_bundle), film, "--out", str(out)]) == 0 and film in out.read_text()
    with another_run_writes(out, other):
        code = main(["predict", str(tiny_bundle), film, "--out", str(out)])
    kept = tmp_path / "rows-2.csv"
    assert code == 2 and out.read_bytes() == other and film in kept.read_text()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"pneumoscan predict: error: {out} changed while this run was working (another run's results?): nothing was "
        f"written over it; this run's results are in {kept}")


def test_evaluate_writes_nothing_into_a_folder_another_run_wrote_meanwhile(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Two evaluations into one folder had left one's metrics.json beside the other's predictions and report."""
    report, bundle = tmp_path / "eval" / "metrics.json", shutil.copytree(tiny_bundle, tmp_path / "bundle")
    report.parent.mkdir()
    with another_run_writes(report, b"{}"), pytest.raises(FileExistsError, match="appeared while this run was working"):
        evaluate(bundle, tiny_dataset, "test", report.parent)
    assert [p.name for p in report.parent.iterdir()] == ["metrics.json"] and report.read_bytes() == b"{}"


def test_evaluate_makes_its_error_gallery_before_it_locks_its_folder(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gallery's Grad-CAMs take up to a minute: made under the folder's lock, a second evaluation into the
    folder waited that long only to be refused. The real gallery runs; whether the lock was free is noted."""
    import fcntl

    from pneumoscan.evaluation import evaluate as module

    out, lock_free = tmp_path / "eval", []
    real = module.error_gallery

    def noting_the_lock(*args: object, **kwargs: object) -> dict:
        fd = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock_free.append(True)
        except BlockingIOError:
            lock_free.append(False)
        finally:
            os.close(fd)
        return real(*args, **kwargs)

    out.mkdir()
    monkeypatch.setattr(module, "error_gallery", noting_the_lock)
    evaluate(tiny_bundle, tiny_dataset, "test", out)
    assert lock_free == [True] and (out / "report.html").is_file()


def _flat(text: str) -> str:
    """Console output without its whitespace: rich wraps long lines, inside a long path too."""
    return "".join(text.split())


def test_train_and_cache_show_odd_names_and_resume_says_what_it_found(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    normal = data / "train" / "NORMAL"
    shutil.copy(next(normal.iterdir()), normal / LATIN1)  # readable: trained on
    (normal / "[").mkdir()
    (normal / "[" / "x].jpeg").write_text("unreadable, and its path holds the markup [/x]")
    (normal / ANSI).write_text("unreadable")
    assert main(["cache", str(data), "--size", "32"]) == 0
    out, err = capsys.readouterr()
    printed = _flat(err)
    assert out.rstrip().endswith("; 2 unreadable") and "[/x].jpeg" in printed and "\\x1b[31mred.jpeg" in printed
    run_dir = tmp_path / "run"
    train = ["train", "--data", str(data), "--out", str(run_dir), "--model", "simple_cnn", "--no-pretrained",
             "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--resume"]  # fmt: skip
    with crashed_at_finish():  # its epoch checkpointed: the resume below finishes it
        main(train)
    printed = _flat(capsys.readouterr().err)
    assert _flat(f"no checkpoint at {run_dir / 'checkpoint.pt'}: starting from scratch") in printed
    assert "skippedunreadable" in printed and "\x1b" not in printed and "[/x].jpeg" in printed
    assert main(train) == 0
    assert "resumingafterepoch1" in _flat(capsys.readouterr().err)
    (run_dir / "checkpoint.pt").write_bytes(b"half a checkpoint")
    assert main(train) == 2
    assert "cannot resume from" in capsys.readouterr().err


def test_a_folder_built_beside_its_name_replaces_the_old_one_whole_or_not_at_all(tmp_path: Path) -> None:
    """building(): the old bundle stays under its name when the new one fails, and when the new one cannot take
    the name; it goes only when the new one has it."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "old").write_text("old")
    with pytest.raises(RuntimeError), building(bundle) as tmp:
        tmp.mkdir()
        raise RuntimeError("export failed")
    with pytest.raises(FileNotFoundError), building(bundle):
        pass  # nothing was built: the rename fails after the old folder was moved aside
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"] and (bundle / "old").read_text() == "old"
    with building(bundle) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"] and [p.name for p in bundle.iterdir()] == ["new"]


def test_a_killed_build_leaves_nothing_behind_the_next_one(tmp_path: Path) -> None:
    """A build killed between its two renames left the old bundle aside and the name empty: the next build of that
    folder gives the old one its name back before it starts, and deletes the half-built new one."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    bundle = tmp_path / "bundle"
    for kind, name in (("old", "old"), ("tmp", "half")):
        (tmp_path / f".bundle.{kind}-{gone.pid}").mkdir()
        (tmp_path / f".bundle.{kind}-{gone.pid}" / name).write_text(name)
    (tmp_path / f".bundle.tmp-{os.getpid()}-other").mkdir()  # not a pid: not ours to touch
    with pytest.raises(RuntimeError), building(bundle):
        raise RuntimeError("export failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".bundle.tmp-{os.getpid()}-other", "bundle"]
    assert [p.name for p in bundle.iterdir()] == ["old"], "the old bundle is back under its name"
    (tmp_path / f".bundle.old-{gone.pid}").mkdir()  # with the name taken, a folder moved aside is deleted
    with building(bundle) as tmp:
        tmp.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".bundle.tmp-{os.getpid()}-other", "bundle"]


def test_every_bundle_file_is_readable_as_the_umask_allows(tiny_bundle: Path) -> None:
    """A service running as another user of the group must read the weights as it reads the card: a writer that
    makes its own file (safetensors: mode 0600) gets the mode every other file gets."""
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tiny_bundle.iterdir() if p.is_file()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}, modes


def test_unreadable_films_are_said_escaped_by_predict_and_pacs_alike(capsys: pytest.CaptureFixture) -> None:
    """cmd_predict and cmd_pacs say unreadable films through one helper: a PACS's text is escaped as a folder's is."""
    from pneumoscan.cli import _say_unreadable

    rows = [{"path": "studies/1/instances/" + ANSI, "error": "bad \x1b]0;title\x07"},
            {"path": "ok", "probability": 0.5}]
    assert _say_unreadable(rows) == rows[:1]
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert err == "unreadable: studies/1/instances/\\x1b[31mred.jpeg: bad \\x1b]0;title\\x07\n"


def test_the_command_line_prints_brackets_in_names_as_text(capsys: pytest.CaptureFixture) -> None:
    """cv and export print their output paths through the CLI's rich console: "[red]x" is a folder's name."""
    from pneumoscan.cli import console

    console.print("out-of-fold scores: runs/[red]x[/red]/oof.csv")
    assert capsys.readouterr().out.strip() == "out-of-fold scores: runs/[red]x[/red]/oof.csv"


def test_a_bundle_in_a_folder_whose_name_is_not_utf8_loads_and_scores(tiny_bundle: Path, tmp_path: Path) -> None:
    """The weights are read by Python (safetensors' own file functions refuse such a path); ONNX Runtime too."""
    from pneumoscan.inference.predict import Predictor

    bundle = tmp_path / LATIN1.replace(".jpeg", "")
    shutil.copytree(tiny_bundle, bundle)
    film = np.full((1, 32, 32), 90, np.uint8)
    scores = [Predictor(bundle, backend=backend).probabilities(film) for backend in ("torch", "onnx")]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-4)


def test_a_card_that_would_record_a_name_not_utf8_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """bundle.json is UTF-8 text: a path it cannot hold is refused when written, not found unreadable later."""
    from pneumoscan.models.card import load_card, save_card

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    card = load_card(bundle)
    with pytest.raises(ValueError, match=r"bundle.json holds UTF-8 text only, and this bundle would record .*caf\\xe9"):
        save_card(bundle, dataclasses.replace(card, train_config=card.train_config | {"calibrated_on": LATIN1}))
    assert load_card(bundle) == card, "bundle.json as it was"


def test_evaluate_json_on_stdout_names_files_as_its_metrics_json_does(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture
) -> None:
    """``--json`` output is a results file too: a lone surrogate (``\\udce9``) there is refused by strict UTF-8
    readers (jq shows it as a replacement character). The film left out is said, not only counted in n. The curves
    (the decision curve's 99 rows among them, and each --prevalence's) stay in metrics.json; the net benefit at the
    threshold, and the figures at each prevalence, are printed."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    with open(os.path.join(os.fsencode(data / "test" / "NORMAL"), os.fsencode(LATIN1)), "wb") as f:
        f.write(b"not a film")
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_bundle), str(data), "--split", "test", "--out", str(out), "--json",
                 "--prevalence", "0.1"]) == 0
    printed = json.loads(capsys.readouterr().out.encode("utf-8"))  # strict: no lone surrogate
    written = json.loads((out / "metrics.json").read_text())
    assert printed["unreadable"] == written["unreadable"]
    assert "curves" not in printed and "decision_curve" not in printed and "decision_curve" in written
    assert printed["net_benefit"] == written["net_benefit"]
    [at] = printed["at_prevalence"]["figures"]
    assert "decision_curve" not in at and "decision_curve" in written["at_prevalence"]["figures"][0]
    assert at == {k: v for k, v in written["at_prevalence"]["figures"][0].items() if k != "decision_curve"}
    assert [Path(e["path"]).name for e in printed["unreadable"]] == ["caf\\xe9.jpeg"]
    assert "1 film(s) of " in caplog.text and "could not be read and are left out (" in caplog.text


def test_json_results_files_write_names_as_escapes_and_refuse_nan(tmp_path: Path) -> None:
    text = write_json(tmp_path / "r.json", {"path": LATIN1, LATIN1: [1.5]}).read_bytes().decode("utf-8")
    assert json.loads(text) == {"path": "caf\\xe9.jpeg", "caf\\xe9.jpeg": [1.5]}
    with pytest.raises(ValueError):
        write_json(tmp_path / "nan.json", {"auc": float("nan")})
    assert not (tmp_path / "nan.json").exists()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_name_not_utf8_inside_a_list_of_a_row_is_written_as_its_escape(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Only a row's top-level strings had been made UTF-8: a warning naming a file, inside the row's list, made the
    CSV unencodable (UnicodeEncodeError: the whole results file lost) and the JSON carry ``\\udce9``. The same
    tree through the command line's JSON printing and write_json gives the same text."""
    rows = [{"path": LATIN1, "probability": 0.75, "label": "PNEUMONIA", "threshold": 0.5,
             "warnings": [f"the same pixels as {LATIN1}", "a JPEG or PNG: scope not checked"]}]
    results = tmp_path / f"r.{fmt}"
    ResultsTarget.check(str(results), (fmt,)).write(format_results(rows, fmt))
    text = results.read_bytes().decode("utf-8")  # strict: no lone surrogate
    if fmt == "csv":
        [row] = csv.DictReader(io.StringIO(text))
        assert row["warnings"] == "the same pixels as caf\\xe9.jpeg; a JPEG or PNG: scope not checked"
    else:
        assert json.loads(text)[0]["warnings"][0] == "the same pixels as caf\\xe9.jpeg" and "\\udc" not in text
        _print_json({"rows": rows})
        assert json.loads(capsys.readouterr().out.encode("utf-8"))["rows"] == json.loads(text)
        assert json.loads(write_json(tmp_path / "w.json", rows).read_bytes().decode("utf-8")) == json.loads(text)


def test_one_path_given_where_several_are_taken_is_one_path() -> None:
    """A str is a sequence of characters: ``quantize_bundle(b, cv_dirs="runs/cv")`` had looked for runs "r", "u", ..."""
    assert path_list("runs/cv") == ["runs/cv"] and path_list(Path("a")) == [Path("a")] and path_list(b"a") == [b"a"]
    assert path_list(["a", Path("b")]) == ["a", Path("b")] and path_list(("a",)) == ["a"] and path_list([]) == []


def test_a_file_put_in_anothers_place_is_seen_where_times_are_whole_seconds(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A converter that writes a film of the same size and puts it in place by rename, within one second, on a file
    system that keeps times in whole seconds and no status-change time of its own (FAT reports the modification
    time): the stamp still tells the two files apart, so the cache does not serve the old film's pixels for it."""
    real_stat = os.stat

    def whole_seconds(path: str | Path, *args: object, **kwargs: object) -> os.stat_result:
        st = real_stat(path, *args, **kwargs)
        fields = list(st)
        fields[stat.ST_MTIME] = fields[stat.ST_CTIME] = int(st.st_mtime)
        return os.stat_result(fields, {"st_mtime_ns": int(st.st_mtime) * 10**9,
                                       "st_ctime_ns": int(st.st_mtime) * 10**9})

    film, converted = tmp_path / "film.png", tmp_path / "converted.png"
    film.write_bytes(b"a" * 100)
    converted.write_bytes(b"b" * 100)
    os.utime(converted, ns=(real_stat(film).st_atime_ns, real_stat(film).st_mtime_ns))
    monkeypatch.setattr(os, "stat", whole_seconds)
    before = file_stamp(film)
    os.replace(converted, film)
    assert before is not None and file_stamp(film) != before


def test_a_refusal_to_write_over_a_model_has_one_wording(tmp_path: Path) -> None:
    """The refusals of a file and of a folder (``evaluate --out DIR``) over a bundle or a run's own record were four
    near-twin sentences ("is a bundle", "is in the bundle", "is a training run's folder", "is ... of the training
    run"). Each is one sentence: the option and the path as given, the file it would write, whose it is and why,
    and what to do."""
    run = tmp_path / "run"
    (run / "bundle").mkdir(parents=True)
    for name in (CARD, WEIGHTS):
        (run / "bundle" / name).write_bytes(b"")
    bundle_why = f"into the bundle {run / 'bundle'}, whose files are the model's"
    run_why = f"into the training run {run}, where metrics.json is the run's own record"
    cases = {
        (run / "bundle" / CARD, False): f"--out {run / 'bundle' / CARD} would write {CARD} {bundle_why}",
        (run / "bundle" / "metrics.json", True): f"--out {run / 'bundle'} would write metrics.json {bundle_why}",
        (run / "metrics.json", False): f"--out {run / 'metrics.json'} would write metrics.json {run_why}",
        (run / "metrics.json", True): f"--out {run} would write metrics.json {run_why}",
    }
    for (path, folder), said in cases.items():
        with pytest.raises(ValueError) as refused:
            refuse_model_files(path, folder=folder)
        assert str(refused.value) == f"{said}: write the results elsewhere", (path, folder)


def test_results_are_never_written_over_a_model_or_an_input(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """predict --out BUNDLE/bundle.json replaced the card with rows (exit 0, the bundle lost), predict LIST --out LIST
    replaced the list with its one error row, evaluate --out RUN replaced the run's metrics.json and report.html,
    and split --out RUN/split.csv the run's split, after which its training films were no longer refused. Each is
    refused, exit status 2, before any work, and nothing is changed."""
    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run")
    film = str(next((tiny_dataset / "test" / "NORMAL").iterdir()))
    films = tmp_path / "films.csv"
    films.write_text(f"path\n{film}\n")
    before = {p: p.read_bytes() for p in (run / "bundle" / "bundle.json", run / "metrics.json", run / "split.csv",
                                          films)}
    refused = {
        ("predict", str(run / "bundle"), film, "--out", str(run / "bundle" / "bundle.json")): "into the bundle",
        ("predict", str(run / "bundle"), str(films), "--out", str(films)): "is one of the inputs",
        ("predict", str(run / "bundle"), film, "--out", str(run / "metrics.json")): "into the training run",
        # named as given: the folder, not the metrics.json evaluate would write in it (which the user never typed)
        ("evaluate", str(run / "bundle"), str(tiny_dataset), "--split", "test", "--out", str(run)):
            f"--out {run} would write metrics.json into the training run {run}, where metrics.json is the run's own",
        ("evaluate", str(run / "bundle"), str(tiny_dataset), "--split", "test", "--out", str(run / "bundle")):
            f"--out {run / 'bundle'} would write metrics.json into the bundle {run / 'bundle'}, whose files are the",
        ("split", str(tiny_dataset), "--out", str(run / "split.csv")): "would write split.csv into the training run",
    }
    for args, said in refused.items():
        assert main(["-q", *args]) == 2, args
        assert said in capsys.readouterr().err, args
    assert {p: p.read_bytes() for p in before} == before
    beside = str(run / "predictions.csv")  # a file of its own in the run's folder: written
    assert main(["-q", "predict", str(run / "bundle"), film, "--out", beside]) == 0


def test_an_output_named_as_a_fifo_or_device_is_refused_not_replaced(tiny_dataset: Path, tiny_bundle: Path,
                                                                     tmp_path: Path, capsys: pytest.CaptureFixture
                                                                     ) -> None:
    """`audit DATA --json-out /dev/null` (or `split --out`, `--figure`) renamed its temporary file over the name: run
    as root, a regular file of JSON took the place of /dev/null. A FIFO stands in for the device here; a link to it
    is the same (/dev/stdout is a link)."""
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    (tmp_path / "link.csv").symlink_to(fifo)
    for args, name in ((["audit", str(tiny_dataset), "--json-out", str(fifo)], fifo),
                       (["split", str(tiny_dataset), "--out", str(tmp_path / "link.csv")], tmp_path / "link.csv")):
        assert main(args) == 2
        assert capsys.readouterr().err.endswith(f"error: {name} is not a regular file (FIFO): name a file to write\n")
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and (tmp_path / "link.csv").is_symlink()
    film = next((tiny_dataset / "test" / "NORMAL").iterdir())
    assert main(["-q", "predict", str(tiny_bundle), str(film), "--out", str(tmp_path / "link.csv")]) == 2
    assert capsys.readouterr().err == (f"pneumoscan predict: error: {tmp_path / 'link.csv'} is not a regular file "
                                       "(FIFO): name a file to write\n")  # before any film is read
