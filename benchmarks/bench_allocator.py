"""The service's memory after huge films, and its throughput on normal ones, under three set-ups of glibc's allocator:

* ``none``: glibc's defaults, the service's hand-back switched off (``TRIM_AFTER_PIXELS`` set to infinity in the
  server process): memory freed after a decode stays with the process;
* ``arena2``: the same with ``MALLOC_ARENA_MAX=2`` in the server's environment (two arenas for all its threads);
* ``trim``: the service as it is, ``malloc_trim(0)`` after the decode of a film of over ``TRIM_AFTER_PIXELS``.

Run: ``PNEUMOSCAN_DATA=/path/to/chest_xray python benchmarks/bench_allocator.py [BUNDLE] [--rounds 3]``. Without a
bundle a tiny one is trained first (bench_abuse's: simple_cnn, 32 px, seconds), whose decode-bound throughput shows
an allocator's cost most. Each round starts one server a set-up, in turn (so the machine's load falls on each
alike), warms it with 16 real X-rays, then measures: RSS at rest; images/s of ``--clients`` clients posting real
X-rays for ``--seconds``; RSS after one 16-bit PNG just under the decode limits (11,468 x 11,468, 0.3 MB:
bench_abuse's), after three more, and images/s again after them. The median of each figure over the rounds
is printed at the end, with the load average. The server listens on 127.0.0.1 only.

First, in this process, what handing memory back after every film would cost instead: ms a film to decode those
X-rays as the service does (``decode_upload`` for a 224 px model), alone and followed each by ``malloc_trim(0)``,
in alternating passes (the median pass).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pneumoscan, as the servers it starts run

from bench_abuse import status_kb, tiny_bundle, worst_uploads, xrays  # noqa: E402  (this folder: the script's own)
from bench_serve import free_port, load  # noqa: E402
from pneumoscan.serving.uploads import decode_upload, release_freed_memory  # noqa: E402

SETUPS = {  # set-up: (what the server runs before the command line, its extra environment)
    "none": ("import math, pneumoscan.serving.uploads as u; u.TRIM_AFTER_PIXELS = math.inf\n", {}),
    "arena2": ("import math, pneumoscan.serving.uploads as u; u.TRIM_AFTER_PIXELS = math.inf\n",
               {"MALLOC_ARENA_MAX": "2"}),
    "trim": ("", {}),
}
FIGURES = ("rest MB", "img/s", "after 1 MB", "after 4 MB", "img/s after")


def decode_ms(images: list[bytes], trim: bool, passes: int = 20) -> float:
    """Median ms a film of ``passes`` passes over ``images`` decoded for a 224 px model, each followed by
    ``malloc_trim(0)`` with ``trim``."""
    times = []
    for _ in range(passes):
        start_s = time.perf_counter()
        for data in images:
            decode_upload(data, 224, False)
            if trim:
                release_freed_memory()
        times.append((time.perf_counter() - start_s) / len(images) * 1000)
    return statistics.median(times)


def start(bundle: Path, setup: str, port: int, log: Path) -> subprocess.Popen:
    """`pneumoscan -q serve BUNDLE` of this checkout under ``setup``, once /healthz answers."""
    prelude, env = SETUPS[setup]
    command = [sys.executable, "-c", prelude + "from pneumoscan.cli import run\nrun()", "-q", "serve", str(bundle),
               "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the {setup} server did not start:\n{log.read_text()}")


def measure(url: str, pid: int, images: list[bytes], huge: bytes, clients: int, seconds: float) -> dict[str, float]:
    """One server's figures (see the module's docstring)."""
    def post(data: bytes, name: str, media: str) -> None:
        r = httpx.post(f"{url}/v1/predict", files={"file": (name, data, media)}, timeout=120)
        assert r.status_code == 200, r.text

    def rss_mb() -> float:
        time.sleep(0.5)  # the answer is sent before the request's last frees
        return status_kb(pid, "VmRSS") / 1024

    for data in images:
        post(data, "x.jpeg", "image/jpeg")
    row = {"rest MB": rss_mb(), "img/s": asyncio.run(load(url, images, clients, seconds, 10**6))["rps"]}
    post(huge, "x.png", "image/png")
    row["after 1 MB"] = rss_mb()
    for _ in range(3):
        post(huge, "x.png", "image/png")
    row["after 4 MB"] = rss_mb()
    row["img/s after"] = asyncio.run(load(url, images, clients, seconds, 10**6))["rps"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", help="bundle to serve (default: train a tiny one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="of each throughput measurement")
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    args = parser.parse_args()

    images = xrays(16)
    huge = next(data for kind, (data, _) in worst_uploads(20).items() if kind.startswith("16-bit"))
    for which, films in (("224 px train/", images[:8]), ("full-size val/", images[8:])):
        alone, trimmed = zip(*((decode_ms(films, False, 5), decode_ms(films, True, 5)) for _ in range(4)))
        print(f"decode of {which} X-rays: {statistics.median(alone):.2f} ms a film; followed by malloc_trim(0): "
              f"{statistics.median(trimmed):.2f} ms")
    rows: dict[str, list[dict[str, float]]] = {setup: [] for setup in args.setups}
    print(f"{'round':>5} {'setup':>7} " + " ".join(f"{name:>11}" for name in FIGURES) + f" {'load avg':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else tiny_bundle(Path(tmp))
        for round_ in range(1, args.rounds + 1):
            for setup in args.setups:
                port = free_port()
                server = start(bundle, setup, port, Path(tmp) / f"{setup}.log")
                try:
                    row = measure(f"http://127.0.0.1:{port}", server.pid, images, huge, args.clients, args.seconds)
                finally:
                    server.terminate()
                    server.wait(timeout=30)
                rows[setup].append(row)
                print(f"{round_:>5} {setup:>7} " + " ".join(f"{row[name]:>11.1f}" for name in FIGURES)
                      + f" {os.getloadavg()[0]:>8.2f}", flush=True)
    print("median over the rounds:")
    for setup, measured in rows.items():
        print(f"{'':>5} {setup:>7} " + " ".join(f"{statistics.median(r[name] for r in measured):>11.1f}"
                                              for name in FIGURES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
