"""Memory of predict, evaluate, the image cache, the service and the decoders: how it grows with the number of films
and with a film's size.

Run: ``PNEUMOSCAN_DATA=/path/to/chest_xray python benchmarks/bench_memory.py [--bundle RUN/bundle] [--quick]``.
Without ``--bundle`` a simple_cnn bundle at 192 px is trained first on synthetic films (half a minute); give a real
one for its own figures (its activations set the floor: a batch of 64 films at 192 px is about 0.7 GB for
efficientnet_lite0 with torch). ``--quick`` leaves out the runs over 1,000 films. Films come from
$PNEUMOSCAN_DATA/train.

Each command runs in a process of its own. ``anon``: its peak anonymous resident memory (RssAnon, sampled every 5 ms:
what it allocated, without the shared libraries torch maps, which the page cache may or may not hold);
``maxrss``: the kernel's peak resident size of that process (getrusage of it, libraries included). The decoders'
figure is the peak added by reading one film (VmHWM reset after the imports), and its ratio to the film's pixels.
Memory, unlike time, is measurable on a busy machine: these figures do not move with the load.

``--arena`` measures ONNX Runtime's memory arena instead, on and off (``enable_cpu_mem_arena``, which pneumoscan
leaves on): the peak of ``predict`` of ARENA_FILMS films with the onnx backend, each setting in a process of its own,
and the time of the bundle's ONNX model on one batch of 64 preprocessed films, both settings in one process taken in
turn (which goes first alternates) for ARENA_ROUNDS rounds: each setting's median ms and the ratio of each round's
pair, median (min-max). Without ``--bundle`` the bundle is efficientnet_lite0 at 192 px with random weights (the
arena holds the model's activations, and simple_cnn's are small).

``--first-heatmap`` measures what the service's first ``?heatmap=true`` request loads instead (torch, where the
backend is onnx, and its model for Grad-CAM): in a process of its own per backend, the service's resident
memory after its first prediction of a full-size film of val/, after its first heatmap of it and after HEATMAPS - 1
more, with the seconds of the first heatmap request and of the later ones (median, min-max). Without ``--bundle`` the
bundle is efficientnet_lite0 at 192 px with random weights.

Measured on a 2-core machine with a simple_cnn 192 px bundle (efficientnet_lite0 192 px where said), peak anonymous
MiB; ``onnx`` is predict's and evaluate's default backend:

=================================================  =========================  ==============================
what                                               before                     after
=================================================  =========================  ==============================
predict 50 / 500 / 5,216 films, onnx               386 / 488 / 496            unchanged: flat in the films
predict 50 / 500 / 5,216 films, torch              852 / 1,031 / 1,045        unchanged: a batch of 64 at a time
predict 50 / 500 films, --heatmaps                 868 / 966                  unchanged
predict 500 films, efficientnet_lite0 torch/onnx   1,207 / 913                unchanged
image cache build, 1,000 / 3,000 films (parent)    65 / 68                    unchanged
evaluate 1,000 / 3,000 films                       1,031 / 1,123              unchanged
evaluate 1,000 / 3,000 films, --tta                1,242 / 1,973              1,031 / 1,164
test-time views alone, 250 / 1,000 / 3,000 films   +79 / +316 / +949          +46 / +76 / +142
service, 200 more requests (plain; heatmap+image)  +0; -4                     unchanged: no leak
16-bit PNG 11,000 x 12,000 (252 MiB decoded)       +400 (3.2 bytes a pixel)   unchanged
8-bit PNG / JPEG 12,000 x 12,000                   +137 / +158                unchanged
DICOM 12-bit 5,700 x 5,800, rescale + window       +974 (30.9 bytes a pixel)  +160 (5.1 bytes a pixel)
=================================================  =========================  ==============================

The fix: test-time views (evaluate --tta, threshold, training's TTA threshold, export --int8) were warped over every
film at once, about 9 bytes a pixel of all of them; they are warped 4 Mpx at a time (predict.TTA_BLOCK_PIXELS).
And the DICOM decode: a monochrome film's modality LUT (rescale) and window went through pydicom on every pixel in
float64, with masks of the whole film; they are worked out once a stored value and looked up (readers/dicom_pixels).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.builders makes the DICOM film
DATA = Path(os.environ.get("PNEUMOSCAN_DATA") or ROOT / "data/chest_xray")
CLI = [sys.executable, "-m", "pneumoscan"]


def run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak anonymous MiB, peak resident MiB) of ``command``, which must succeed."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    peak = [0]
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)  # never blocks on a pipe
    reader.start()
    rusage = None
    while rusage is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak[0] = max(peak[0], int(re.search(r"RssAnon:\s+(\d+)", status).group(1)))
        except (OSError, AttributeError):
            pass
        pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            rusage = usage
            proc.returncode = os.waitstatus_to_exitcode(code)
        else:
            time.sleep(0.005)
    reader.join()
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{b''.join(stderr).decode()[-2000:]}")
    return peak[0] / 1024, rusage.ru_maxrss / 1024


def tiny_bundle(folder: Path) -> Path:
    """A simple_cnn bundle at 192 px, one epoch on 48 synthetic films."""
    from PIL import Image

    from pneumoscan.training.config import TrainConfig
    from pneumoscan.training.train import train

    rng = np.random.default_rng(0)
    for label in ("NORMAL", "PNEUMONIA"):
        (folder / "data" / "train" / label).mkdir(parents=True)
        for i in range(24):
            img = rng.normal(120 + 40 * (label == "PNEUMONIA"), 30, (256, 256)).clip(0, 255).astype(np.uint8)
            name = f"IM-{i:04d}-0001.jpeg" if label == "NORMAL" else f"person{i}_bacteria_{i}.jpeg"
            Image.fromarray(img).save(folder / "data" / "train" / label / name)
    cfg = TrainConfig(model="simple_cnn", pretrained=False, image_size=192, epochs=1, batch_size=8)
    return train(folder / "data", cfg, folder / "run")


def films(n: int) -> list[Path]:
    """``n`` films of train/, both classes in turn."""
    normal, pneumonia = (sorted((DATA / "train" / label).glob("*.jpeg")) for label in ("NORMAL", "PNEUMONIA"))
    mixed = [f for pair in zip(normal, pneumonia) for f in pair] + normal[len(pneumonia):] + pneumonia[len(normal):]
    return mixed[:n]


def folder_of(n: int, work: Path) -> Path:
    folder = work / f"films{n}"
    folder.mkdir()
    for film in films(n):
        (folder / film.name).symlink_to(film)
    return folder


def manifest_of(n: int, work: Path) -> Path:
    from pneumoscan.data.layouts import discover

    records = discover(DATA / "train").records
    by_path = {r.path: r for r in records}
    path = work / f"split{n}.csv"
    lines = ["path,label,subtype,patient,split"]
    for film in films(n):
        r = by_path[str(film)]
        lines.append(f"{r.path},{r.label},{r.subtype},{r.patient},test")
    path.write_text("\n".join(lines) + "\n")
    return path


READ_ONE = """
import sys
from pneumoscan.data.decode import read_gray
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
read_gray(sys.argv[1], target=192)
print(status("VmHWM:") - before)
"""


def large_films(work: Path) -> dict[str, tuple[Path, int]]:
    """Films at the decoders' limits: {name: (path, pixels)}."""
    from PIL import Image

    from tests.builders import dicom_bytes

    def film(h: int, w: int, top: float) -> np.ndarray:
        y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
        return (0.3 + 0.4 * y + 0.2 * np.sin(6 * x)) * top

    out = {}
    a = film(11000, 12000, 4000).astype(np.uint16)
    a[::7, ::5] += 37
    Image.fromarray(a).save(work / "big16.png", compress_level=1)
    out["16-bit PNG 11,000 x 12,000"] = work / "big16.png", a.size
    a = film(12000, 12000, 200).astype(np.uint8)
    a[::7, ::5] += 20
    Image.fromarray(a).save(work / "big8.png", compress_level=1)
    Image.fromarray(a).save(work / "big8.jpeg", quality=90)
    out["8-bit PNG 12,000 x 12,000"] = work / "big8.png", a.size
    out["8-bit JPEG 12,000 x 12,000"] = work / "big8.jpeg", a.size
    del a
    a = film(5700, 5800, 4000).astype(np.uint16)
    a[::7, ::5] += 37
    (work / "big.dcm").write_bytes(dicom_bytes(a, bits=12, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=1000,
                                               WindowWidth=3000))
    out["DICOM 12-bit 5,700 x 5,800, rescale + window"] = work / "big.dcm", a.size
    return out


VIEWS = """
import collections, sys
import numpy as np
from pneumoscan.inference.predict import tta_views
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
images = np.random.default_rng(0).integers(0, 256, (int(sys.argv[1]), 192, 192), np.uint8)
collections.deque(map(np.sum, tta_views(images[:4])), 0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
collections.deque(map(np.sum, tta_views(images)), 0)  # one view at a time, as Predictor.probabilities reads them
print(status("VmHWM:") - before)
"""


SERVICE = """
import glob, re, sys
from fastapi.testclient import TestClient
from pneumoscan.serving.app import create_app
def anon():
    return int(re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
films = [open(f, "rb").read() for f in sorted(glob.glob(sys.argv[2] + "/train/PNEUMONIA/*.jpeg"))[:20]]
params = {"heatmap": "true", "image": "true"} if sys.argv[3] == "heatmap" else {}
with TestClient(create_app(sys.argv[1])) as client:
    def send(n):
        for i in range(n):
            upload = {"file": ("x.jpeg", films[i % len(films)], "image/jpeg")}
            r = client.post("/v1/predict", files=upload, params=params)
            assert r.status_code == 200, r.text
    send(40)
    start = anon()
    send(int(sys.argv[4]))
    print(f"{anon() - start:+.0f}")
"""


ARENA_FILMS = 200
ARENA_ROUNDS = 15
# prepended to a child's code: its ONNX Runtime sessions are made without the memory arena
ARENA_OFF = """
import pneumoscan.inference.onnx_runtime as onnx_runtime
_options = onnx_runtime._options
def _no_arena():
    options = _options()
    options.enable_cpu_mem_arena = False
    return options
onnx_runtime._options = _no_arena
"""
PREDICT = "import sys\nfrom pneumoscan.cli import main\nsys.exit(main(sys.argv[1:]))\n"
ARENA_TIME = """
import statistics, sys, time
import numpy as np
from pneumoscan.data.preprocess import preprocess
from pneumoscan.inference.predict import Predictor
bundle, rounds, films = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
on = Predictor(bundle, len(films), "onnx")
exec(sys.stdin.read())  # ARENA_OFF: the next session is made without the arena
off = Predictor(bundle, len(films), "onnx")
images = np.stack([preprocess(f, on.card.size) for f in films])
seconds = ([], [])
for p in (on, off):  # warm-up: first-call allocations
    p.probabilities(images)
for r in range(rounds):
    for i in (0, 1) if r % 2 == 0 else (1, 0):
        start = time.perf_counter()
        (on, off)[i].probabilities(images)
        seconds[i].append(time.perf_counter() - start)
ratios = [b / a for a, b in zip(*seconds)]
print(f"{statistics.median(seconds[0]) * 1e3:.0f} {statistics.median(seconds[1]) * 1e3:.0f} "
      f"{statistics.median(ratios):.2f} {min(ratios):.2f} {max(ratios):.2f}")
"""


HEATMAPS = 11
FIRST_HEATMAP = """
import re, statistics, sys, time
from fastapi.testclient import TestClient
from pneumoscan.serving.app import create_app
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
film = open(sys.argv[3], "rb").read()
with TestClient(create_app(sys.argv[1], backend=sys.argv[2])) as client:
    def post(**params):
        start = time.perf_counter()
        r = client.post("/v1/predict", files={"file": ("x.jpeg", film, "image/jpeg")}, params=params)
        assert r.status_code == 200, r.text
        return time.perf_counter() - start
    post()
    after_prediction = rss()
    first = post(heatmap="true")
    after_first = rss()
    later = [post(heatmap="true") for _ in range(int(sys.argv[4]) - 1)]
    print(f"{after_prediction:.0f} {after_first:.0f} {rss():.0f} {first:.2f} {statistics.median(later):.2f} "
          f"{min(later):.2f} {max(later):.2f}")
"""


def lite0_bundle(bundle: str | None, work: Path) -> str:
    """``bundle``, or efficientnet_lite0 at 192 px with random weights made in ``work``."""
    if bundle is not None:
        return bundle
    import logging

    from bench_predict import make_bundle

    logging.getLogger("pneumoscan").setLevel(logging.ERROR)  # random weights: no appearance, a guessed threshold
    return str(make_bundle(work / "lite0-192", 192))


def first_heatmap(bundle: str | None, work: Path, env: dict[str, str]) -> None:
    """Print the service's memory and times around its first heatmap, per backend (``--first-heatmap``)."""
    bundle = lite0_bundle(bundle, work)
    film = sorted((DATA / "val").rglob("*.jpeg"))[0]
    print(f"bundle {bundle}; {film.name} posted; resident MiB; load average {os.getloadavg()[0]:.1f} before")
    for backend in ("onnx", "torch"):
        out = subprocess.run([sys.executable, "-c", FIRST_HEATMAP, bundle, backend, str(film), str(HEATMAPS)],
                             env=env, capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
        prediction, first, last, first_s, later_s, low, high = out.stdout.split()
        print(f"{backend:<5} after the first prediction {prediction} MiB, the first heatmap {first} MiB, {HEATMAPS} "
              f"heatmaps {last} MiB; the first heatmap request {first_s} s, a later one {later_s} s ({low}-{high})")


def arena(bundle: str | None, work: Path, env: dict[str, str]) -> None:
    """Print the arena's memory and time figures (``--arena``)."""
    bundle = lite0_bundle(bundle, work)
    folder = folder_of(ARENA_FILMS, work)
    print(f"bundle {bundle}; predict {ARENA_FILMS} films, onnx; MiB: peak anonymous / peak resident")
    for name, prelude in (("arena on (pneumoscan's)", ""), ("arena off", ARENA_OFF)):
        anon, rss = run([sys.executable, "-c", prelude + PREDICT, "-q", "predict", bundle, str(folder),
                         "--backend", "onnx", "--out", str(work / "r.csv")], env)  # fmt: skip
        print(f"{name:<24} {anon:7.0f} / {rss:7.0f}")
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", ARENA_TIME, bundle, str(ARENA_ROUNDS), *map(str, films(64))],
                         input=ARENA_OFF, env=env, capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
    on, off, ratio, low, high = out.stdout.split()
    print(f"a batch of 64, {ARENA_ROUNDS} rounds of both in turn (load average {load:.1f} before): arena on {on} ms, "
          f"off {off} ms (median); off / on {ratio}x ({low}-{high})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--quick", action="store_true", help="no run over more than 1,000 films")
    parser.add_argument("--arena", action="store_true", help="ONNX Runtime's memory arena on and off, alone")
    parser.add_argument("--first-heatmap", action="store_true",
                        help="the service's memory and times around its first heatmap, alone")
    args = parser.parse_args()
    if args.bundle:  # a path that holds no bundle, said before the films are written and measured
        from bench_shift import refusing
        from pneumoscan.models.card import load_card

        refusing(load_card, args.bundle)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "PNEUMOSCAN_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT)}
        os.environ["PNEUMOSCAN_CACHE"] = env["PNEUMOSCAN_CACHE"]
        every = len(films(10**6))
        if not every:  # before a bundle is trained
            sys.exit(f"{DATA / 'train'}: no .jpeg film in NORMAL or PNEUMONIA (set PNEUMOSCAN_DATA)")
        if args.arena:
            arena(str(args.bundle) if args.bundle else None, work, env)
            return
        if args.first_heatmap:
            first_heatmap(str(args.bundle) if args.bundle else None, work, env)
            return
        bundle = str(args.bundle or tiny_bundle(work / "tiny"))
        sizes = [50, 500] if args.quick else [50, 500, every]
        print(f"bundle {bundle}; MiB: peak anonymous / peak resident")
        for n in sizes:
            folder = folder_of(n, work)
            for backend in ("torch", "onnx"):
                anon, rss = run([*CLI, "predict", bundle, str(folder), "--backend", backend,
                                 "--out", str(work / "r.csv")], env)  # fmt: skip
                print(f"predict {n:>5} films, {backend:<5}        {anon:7.0f} / {rss:7.0f}")
        for n in (50, 500):
            anon, rss = run([*CLI, "predict", bundle, str(work / f"films{n}"), "--heatmaps", str(work / f"h{n}"),
                             "--out", str(work / "r.csv")], env)  # fmt: skip
            print(f"predict {n:>5} films, --heatmaps    {anon:7.0f} / {rss:7.0f}")
        for n in [1000] if args.quick else [1000, 3000]:
            split = manifest_of(n, work)
            anon, rss = run([*CLI, "cache", str(split), "--bundle", bundle], env)
            print(f"cache   {n:>5} films (this process) {anon:7.0f} / {rss:7.0f}")
            for tta in ([], ["--tta"]):
                anon, rss = run([*CLI, "evaluate", bundle, str(split), "--split", "test", "--out",
                                 str(work / f"eval{n}{''.join(tta)}"), *tta], env)  # fmt: skip
                print(f"evaluate {n:>4} films {' '.join(tta) or 'plain':<5}        {anon:7.0f} / {rss:7.0f}")
        for n in (250, 1000, 3000):
            out = subprocess.run([sys.executable, "-c", VIEWS, str(n)], env=env, capture_output=True, text=True,
                                 check=True, cwd=ROOT)  # fmt: skip
            print(f"test-time views of {n:>4} films at 192 px: +{int(out.stdout) / 2**20:.0f} MiB at the peak")
        for kind in ("plain", "heatmap"):
            out = subprocess.run([sys.executable, "-c", SERVICE, bundle, str(DATA), kind, "200"], env=env,
                                 capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
            print(f"service: 200 more {kind} requests add {out.stdout.strip()} MiB anonymous")
        for name, (path, pixels) in large_films(work).items():
            out = subprocess.run([sys.executable, "-c", READ_ONE, str(path)], env=env, capture_output=True, text=True,
                                 check=True, cwd=ROOT)  # fmt: skip
            added = int(out.stdout)
            print(f"read {name}: +{added / 2**20:.0f} MiB at the peak, {added / pixels:.1f} bytes a pixel")


if __name__ == "__main__":
    main()
