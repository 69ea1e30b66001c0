"""Test-file builders shared by several test modules."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pneumoscan.data.appearance import LAYOUT_SIDE, Appearance, farthest_layout
from pneumoscan.data.labelled import labelled_films
from pneumoscan.data.layouts import Record, discover
from pneumoscan.data.preprocess import PreprocessSpec
from pneumoscan.data.scope import CONTENT_UNCHECKED
from pneumoscan.data.tasks import Task
from pneumoscan.models.card import SAMPLED_FROM, BundleCard, load_card, save_appearance, save_card

# Two float32 scorings of the same film agree only to about 1e-7 when the batch, the thread count, the process
# layout or the CPU's kernels differ (oneDNN picks its kernels per machine); 1e-5 is far above that and far below
# any difference a user could see. Tests compare scores from different layouts with this, never with ==.
SCORE_TOL = 1e-5


def free_port() -> int:
    """A port free now, for a server a test starts, drawn below the kernel's ephemeral range: connect() and a bind
    to port 0 take their ports from that range, so a client of another worker's test could take a port bound to 0
    and let go between this look and the server's own bind (a server refused "address already in use", seen under
    load); drawn at random, two workers seldom look at the same one."""
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    ephemeral = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    draw = random.SystemRandom()
    while True:
        with socket.socket() as s:
            try:  # a kernel whose range starts at 20000 or lower leaves none: the kernel's pick, as before
                s.bind(("127.0.0.1", draw.randrange(20000, ephemeral) if ephemeral > 20000 else 0))
            except OSError:  # in use, or in TIME_WAIT
                continue
            return s.getsockname()[1]


def start_serve(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`pneumoscan serve ARGS` in a subprocess, its stdout and stderr into LOG (``env`` replaces variables)."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "pneumoscan", "serve", *args], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Until the server at URL answers /healthz; fails with its LOG when it exits or takes over 90 s."""
    deadline = time.monotonic() + 90
    # one client for every look: httpx.get builds a TLS context each time (20 ms of CPU), more than a look's wait
    with httpx.Client(timeout=2) as http:
        while True:
            assert proc.poll() is None, f"server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"server did not start:\n{log.read_text()}"
            try:
                if http.get(f"{url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)


@contextmanager
def process_group(args: list[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """ARGS started in a session, and so a process group, of its own (``popen``: Popen's other arguments). A block
    that ends before the process has (a failure, a timeout) kills the whole group: a forked child of it that hangs
    would outlive its parent's kill, and hold the parent's pipes open."""
    proc = subprocess.Popen(args, start_new_session=True, **popen)
    try:
        yield proc
    finally:
        if proc.returncode is None:  # not reaped, so its pid is still the group's
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def ended_by(proc: subprocess.Popen, deadline: float) -> tuple[Any, Any]:
    """The stdout and stderr of PROC (a :func:`process_group`'s) once it has ended; still running at DEADLINE (a
    ``time.monotonic()``), its group killed and the test failed with all it printed, whose last lines say what it
    was doing."""
    try:
        return proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running at its deadline, killed with the processes it forked; its stdout:\n{out}\n"
                    f"its stderr:\n{err}")


class Crash(RuntimeError):
    """A crash of a training run, raised by :func:`crash_in_epoch` (a kill after a checkpoint)."""


def crash_in_epoch(crashed: int) -> Callable[[int], None]:
    """``train(..., on_epoch_end=...)``: the run crashes once epoch ``crashed`` (0 the first) is checkpointed: a
    test of what a run did up to then spares the figures and the bundle of its end."""
    def crash(epoch: int) -> None:
        if epoch == crashed:
            raise Crash

    return crash


@contextmanager
def crashed_at_finish() -> Iterator[None]:
    """A training run in it crashes as its finish begins (train's finalize: the temperature, threshold, ONNX model,
    card and validation report), its last epoch checkpointed and its stop decided, and the block expects it: a test
    of what a run did up to its end (its epochs, its callbacks' stop, what it said), or that resumes it, spares the
    finish it does not read: most of a tiny run's CPU."""
    from pneumoscan.training import train as train_mod

    def crash(*args: object) -> Path:
        raise Crash

    with pytest.MonkeyPatch.context() as mp, pytest.raises(Crash):
        mp.setattr(train_mod, "finalize", crash)
        yield


def assert_close_report(reported: Any, again: Any, where: str = "metrics") -> None:
    """Two metrics.json trees agree: the same keys, lengths and integers, every float within SCORE_TOL."""
    if isinstance(reported, dict):
        assert reported.keys() == again.keys(), f"{where}: only in one {sorted(reported.keys() ^ again.keys())}"
        for key in reported:
            assert_close_report(reported[key], again[key], f"{where}.{key}")
    elif isinstance(reported, list):
        assert len(reported) == len(again), where
        for i, (a, b) in enumerate(zip(reported, again)):
            assert_close_report(a, b, f"{where}[{i}]")
    elif isinstance(reported, float) or isinstance(again, float):
        assert abs(reported - again) <= SCORE_TOL, f"{where}: {reported} vs {again}"
    else:
        assert reported == again, where


# what every reading of a bundle without an appearance record says (the tiny test bundles, trained on too few films)
UNCHECKED = CONTENT_UNCHECKED.text()


def trial_copy(run: Path, out: Path, patients: int, seed: int) -> Path:
    """A copy of the run holding ``run``/bundle whose card says it trained on a sample of ``patients`` of the 48
    patients drawn by ``seed`` (train --patients), as that run's card records it: a trial, with its weights."""
    bundle = shutil.copytree(run.parent, out) / run.name
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, train_config={**card.train_config, "patients": patients,
                                                              SAMPLED_FROM: 48, "seed": seed}))
    return bundle


def content_check_on() -> Appearance:
    """An appearance record that turns a bundle's image content check on without a fit, flagging no film's layout:
    its mean half a checkerboard's layout, so that every film's layout (of length 6) lies 5.5 to 6.5 from it under
    the identity precision, and its limit 6.5 the farthest any can lie (a limit beyond it is refused at load), which
    only a layout exactly opposite to the checkerboard reaches; no turn brings a film 1.5 times closer."""
    board = np.indices((LAYOUT_SIDE, LAYOUT_SIDE)).sum(axis=0) % 2 * 2.0 - 1  # +-1, zero mean: length 6
    mean, precision = board.ravel() / 12, np.eye(LAYOUT_SIDE**2)
    return Appearance(mean, precision, farthest_layout(mean, precision), (-3.0, -1.0), 60.0)


def with_appearance_of(bundle: Path, data: Path) -> Appearance:
    """Record in ``bundle`` (a copy of a tiny one) the appearance of every film under ``data`` and their mirror
    images (the tiny dataset's 64 films alone are too few to fit one), as a run on 100 films or more records its
    own: a bundle with the image content check. Returns it."""
    spec = load_card(bundle).spec
    films = np.stack([spec.read(p) for p in sorted(data.rglob("*.jpeg"))])
    appearance = Appearance.fit(np.concatenate([films, films[:, :, ::-1]]))
    save_appearance(bundle, appearance)
    return appearance


def as_run_split(bundle: Path) -> Path:
    """BUNDLE with the split.csv a test wrote beside it recorded in its card as its run's (``split_checksum``), as
    training records the one it writes: a run whose split lists the films the test gives it. Returns BUNDLE."""
    from pneumoscan.core.digests import file_sha256
    from pneumoscan.models.run_folder import RunFolder

    save_card(bundle, dataclasses.replace(load_card(bundle), split_checksum=file_sha256(RunFolder.of(bundle).split)))
    return bundle


def evaluation_of(evaluation: Path, bundle: Path, out: Path) -> Path:
    """A copy at OUT of EVALUATION (an evaluate folder of a bundle of the same weights, the session's
    tiny_evaluation) recorded as of BUNDLE, a copy of that bundle: what evaluate of BUNDLE on the same films writes
    (the figures are the weights', which the copy holds; only the bundle named differs), without its report drawn
    again for a test that reads metrics.json and predictions.csv alone (compare's). Returns OUT."""
    shutil.copytree(evaluation, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bundle_weights"] == load_card(bundle).files["model.safetensors"], "not the same weights"
    # the bundle's path and weights are all metrics.json says of the bundle: a key evaluate adds of it would be the
    # original's here, not the copy's
    of_bundle = {key for key in metrics if key.startswith("bundle")}
    assert of_bundle == {"bundle", "bundle_weights"}, f"evaluate records more of its bundle: {sorted(of_bundle)}"
    (out / "metrics.json").write_text(json.dumps(metrics | {"bundle": os.path.realpath(bundle)}))
    return out


def nudge_weights(bundle: Path) -> None:
    """Give a copied bundle weights of its own, a little off the original's, as a second run's would differ:
    `ensemble` refuses a plain copy as the same model twice."""
    import torch

    from pneumoscan.models.bundle import load_bundle, save_bundle

    model, card = load_bundle(bundle)
    with torch.no_grad():
        next(model.parameters()).mul_(1.001)
    save_bundle(bundle, model, card)


def overflow_every_film(model: Any) -> None:
    """Make a simple_cnn's weights finite and huge, so that every film's logits overflow to infinity (a training that
    diverged): its scores are NaN though its weights load (weights NaN or infinite are refused at load)."""
    import torch

    with torch.no_grad():
        conv = model.features[0]
        conv.weight.zero_()
        conv.bias.fill_(1.0)  # every feature 1, whatever the film
        model.head[0].weight.fill_(1e30)
        model.get_classifier().weight.fill_(1e30)  # 1e30 x 8192 x 1e30 x 128: infinity, then inf - inf in softmax


def dicom_bytes(
    pixels: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    bits: int = 12,
    frames: int = 1,
    preamble: bool = True,
    **elements: object,
) -> bytes:
    """A DICOM file in memory: ``bits`` stored per pixel, no pixel data when ``pixels`` is None, extra elements
    by keyword (e.g. WindowCenter), without the 128-byte preamble + DICM magic when ``preamble`` is False."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16 if bits > 8 else 8
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.astype(np.uint16 if bits > 8 else np.uint8).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=preamble)
    return buf.getvalue()


def chest_film_dicom(gray: np.ndarray, **elements: object) -> bytes:
    """``gray`` (8-bit) as a 12-bit frontal chest DX of a child, with its own study and series and the facts the
    service shows (age, sex, study date); ``elements`` added by keyword (BurnedInAnnotation)."""
    return dicom_bytes(gray.astype(np.uint16) * 16, BodyPartExamined="CHEST", ViewPosition="PA", PatientAge="004Y",
                       PatientSex="F", StudyDate="20240102", StudyInstanceUID=generate_uid(),
                       SeriesInstanceUID=generate_uid(), **elements)


def count_dicom_reads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """From now on, each read of a DICOM file (``readers.dicom.read_dataset``, which every one goes through: its
    ``header_only``), the real read still done."""
    from pneumoscan.data.readers import dicom

    reads: list[bool] = []
    real = dicom.read_dataset

    def counted(src: Path | bytes, header_only: bool) -> Dataset:
        reads.append(header_only)
        return real(src, header_only)

    monkeypatch.setattr(dicom, "read_dataset", counted)
    return reads


def framed_dicom(frame: bytes, syntax: str, side: int, bits: int = 8, **elements: object) -> bytes:
    """A DICOM film of ``side`` x ``side`` (:func:`dicom_bytes`' header, ``elements`` added) whose pixel data is the
    one compressed ``frame``, encapsulated under ``syntax``; no array of its size is made."""
    ds = dcmread(io.BytesIO(dicom_bytes(np.zeros((1, 1)), bits=bits, **elements)))
    ds.Rows = ds.Columns = side
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


# OpenJPH's encoder (Debian's openjph-tools, `make dicom-tools`): pydicom's plugins encode no HTJ2K
OJPH_COMPRESS = shutil.which("ojph_compress") or "ojph_compress"


def htj2k_frame(pixels: np.ndarray, bits: int, *options: str) -> bytes:
    """Grey ``pixels`` of ``bits`` stored bits as an HTJ2K codestream made by OpenJPH's ``ojph_compress`` with its
    ``options`` (``-reversible true`` for a lossless one, ``-prog_order``, ``-qstep``, ``-block_size``, ...)."""
    rows, cols = pixels.shape
    with tempfile.TemporaryDirectory() as folder:
        pgm, j2c = Path(folder) / "film.pgm", Path(folder) / "film.j2c"
        pgm.write_bytes(b"P5\n%d %d\n%d\n" % (cols, rows, 2**bits - 1)
                        + pixels.astype(">u2" if bits > 8 else np.uint8).tobytes())  # fmt: skip
        subprocess.run([OJPH_COMPRESS, "-i", str(pgm), "-o", str(j2c), *options], check=True, capture_output=True)
        return j2c.read_bytes()


def write_png(path: str | Path, width: int, height: int, bits: int = 8, color: int = 0,
              rows: int | None = None) -> Path:
    """A PNG of ``width x height`` (``bits`` per sample, PNG colour type ``color``) written row by row, so a test can
    make a 100-megapixel file without holding its pixels: every row is the same left-to-right ramp over the full
    value range. ``rows``: store only that many rows of pixel data (the header still says ``height``), enough for
    a check that must refuse the file from its header."""
    samples = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    ramp = np.arange(width, dtype=np.uint64) * (2**bits - 1) // max(1, width - 1)
    row = b"\0" + np.repeat(ramp, samples).astype(">u2" if bits == 16 else "u1").tobytes()
    pack = zlib.compressobj(1)
    data = b"".join([pack.compress(row) for _ in range(height if rows is None else rows)] + [pack.flush()])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bits, color, 0, 0, 0)
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@contextmanager
def running(server: uvicorn.Server) -> Iterator[str]:
    """``server`` (a real uvicorn on loopback) in a background thread; yields its URL, stops it on exit."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def cut_with_eoi(data: bytes) -> bytes:
    """The first half of a JPEG, then an End Of Image marker: a transfer cut short and 'repaired' by a tool."""
    return data[: len(data) // 2] + b"\xff\xd9"


def noise_in_middle(data: bytes) -> bytes:
    """Random bytes in place of the middle of a JPEG's entropy-coded data (a damaged disk block, say): 2,000, or a
    30th of a small file (more, and Pillow itself finds a 224 px file broken)."""
    middle, size = len(data) // 2, min(2000, len(data) // 30)
    noise = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    return data[:middle] + noise + data[middle + size :]


JPEG_DAMAGE = {"cut short, then EOI": cut_with_eoi, "random bytes in the middle": noise_in_middle}


def at_threshold(card: BundleCard, **changes: Any) -> BundleCard:
    """``card`` with ``changes`` (another ``threshold`` or ``tta_threshold``, and any other field), each threshold
    recorded where the command that chooses one records it, which load_card holds the card's to: the newest
    `pneumoscan threshold` record, else (training, `ensemble`) the threshold the validation figures were measured at.
    For a test that needs a bundle labelling at another threshold without scoring films to choose it."""
    chosen = {key: changes[key] for key in ("threshold", "tta_threshold") if key in changes}
    if card.threshold_records:
        changes["threshold_records"] = [*card.threshold_records[:-1], {**card.threshold_records[-1], **chosen}]
    elif "threshold" in chosen and "threshold" in card.val_metrics:
        changes["val_metrics"] = {**card.val_metrics, "threshold": chosen["threshold"]}
    return dataclasses.replace(card, **changes)


def labelled_records(data: Path | str, split: str | None, task: Task,
                     spec: PreprocessSpec) -> tuple[list[Record], np.ndarray, np.ndarray, list[dict[str, str]]]:
    """:func:`~pneumoscan.data.labelled.labelled_films` as (records, images, targets, unreadable files)."""
    films = labelled_films(data, split, task, spec)
    return films.records, films.images, films.targets, films.unreadable


def labelled_images(data: Path | str, split: str | None, task: Task,
                    spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """:func:`labelled_records` without the records."""
    return labelled_records(data, split, task, spec)[1:]


def site_manifest(tiny_dataset: Path, folder: Path, site: str | None = None) -> Path:
    """The tiny dataset's 16 test films as a manifest with a site column: A for 6 films of each class, B for the
    other 2 of each; with ``site``, that site's films alone."""
    rows = []
    for label in ("NORMAL", "PNEUMONIA"):
        films = sorted(r.path for r in discover(tiny_dataset).split("test") if r.label == label)
        rows += [(path, label, "A" if i < 6 else "B") for i, path in enumerate(films)]
    csv_path = folder / f"site-{site or 'all'}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "site"])
        writer.writerows(row for row in rows if site in (None, row[2]))
    return csv_path


def copy_of_cv(cv: tuple[Path, list[str]], to: Path) -> tuple[Path, list[str]]:
    """A copy of a finished cv run at ``to`` and its arguments with ``--out`` pointing there (its files' times kept)."""
    out, args = cv
    shutil.copytree(out, to)
    return to, [str(to) if a == str(out) else a for a in args]


class Clock:
    """A module's clock (its ``time``: the rate-limit store's limits.time, a log filter's), moved by the test alone:
    a back-off or an interval that ends only when the test says, whatever else the machine is doing. ``time()``, the
    limits library's, is the machine's."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    @staticmethod
    def time() -> float:
        return time.time()


class ClockAhead:
    """A module's clock (its ``time``) ``by`` seconds ahead of the machine's: a bound that counts from a moment the
    module took on the machine's clock (a bundle check's last progress) is passed at once, as the test says, not
    waited for in real time with a margin a loaded machine may eat."""

    def __init__(self, by: float) -> None:
        self.by = by

    def monotonic(self) -> float:
        return time.monotonic() + self.by


class ClockRead:
    """A module's clock (its ``time``), the machine's, that keeps each thread's last reading of ``monotonic()``: the
    moment a bound the module computed from it counts from (a listener's report's time left to be sent), which a
    test checks the bound against instead of the wall clock a loaded machine makes late."""

    def __init__(self) -> None:
        self.last: dict[int, float] = {}

    def monotonic(self) -> float:
        self.last[threading.get_ident()] = now = time.monotonic()
        return now

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)
