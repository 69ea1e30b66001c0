"""Load test of `pneumoscan serve` on loopback: requests/s answered 200 and their p50/p95 latency at 1, 4 and 16
concurrent clients, with a count of other answers, 5xx and dropped requests (timeouts, connection errors); no
heatmaps.

Run: ``python benchmarks/bench_serve.py`` (X-rays from $PNEUMOSCAN_DATA, default data/chest_xray, as the Makefile).
The model is efficientnet_lite0 (the project's default) with random weights, saved as a bundle in a temp
dir: weights do not change the speed. It is measured at 224 and at 192 px, with the torch and the ONNX Runtime
backend (exported into the bundle first, as `pneumoscan export` does, so the server starts at once). Each level is
bounded in time (--seconds) and count (--max-requests). ``--scrape SECONDS`` also reads /metrics every SECONDS while
the clients post, as Prometheus does (typically every 15 to 60 s: more often here, to show what scrapes cost them),
and prints how many scrapes were answered and their latency. The server runs in its own process, but the clients
share the same cores, and on a shared machine every figure moves with whatever else is running: the load average is
printed next to each row. Exit status 1 when any request was dropped or answered other than 200.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pneumoscan.inference.export import export_onnx  # noqa: E402
from pneumoscan.models import registry as models  # noqa: E402
from pneumoscan.models.bundle import save_bundle  # noqa: E402
from pneumoscan.models.card import BundleCard  # noqa: E402

DATA = Path(os.environ.get("PNEUMOSCAN_DATA") or ROOT / "data/chest_xray")
MODEL = "efficientnet_lite0"
TARGET_RPS, TARGET_P95_MS = 30.0, 300.0


def make_bundle(directory: Path, size: int) -> Path:
    model = models.create(MODEL, num_classes=2, in_chans=1, pretrained=False)
    mean, std = models.normalization(MODEL)
    card = BundleCard(MODEL, "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", size, "squash", mean, std)
    return save_bundle(directory, model, card)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, backend: str, port: int, log: Path,
                 extra: tuple[str, ...] | list[str] = ()) -> subprocess.Popen:
    """`pneumoscan serve` of this checkout on 127.0.0.1 (``extra``: more serve options), once /healthz answers."""
    command = [sys.executable, "-m", "pneumoscan", "serve", str(bundle), "--host", "127.0.0.1", "--port", str(port),
               "--backend", backend, *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)


async def post_xrays(http: httpx.AsyncClient, images: list[bytes], clients: int, seconds: float,
                     max_requests: int) -> tuple[list[int | str], list[float], float]:
    """``clients`` concurrent loops posting X-rays until the time or the request budget runs out: each request's
    status (the exception's name when no answer came), the latency of each 200, and the seconds it all took."""
    statuses: list[int | str] = []
    latencies: list[float] = []
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal issued
        while time.perf_counter() < deadline and issued < max_requests:
            data = images[(issued + k) % len(images)]
            issued += 1
            start = time.perf_counter()
            try:
                r = await http.post("/v1/predict", files={"file": ("x.jpeg", data, "image/jpeg")})
            except httpx.HTTPError as e:
                statuses.append(type(e).__name__)
                continue
            statuses.append(r.status_code)
            if r.status_code == 200:
                latencies.append(time.perf_counter() - start)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return statuses, latencies, time.perf_counter() - t0


async def scrape_metrics(url: str, every: float, done: asyncio.Event) -> list[float]:
    """The latency of each GET /metrics answered 200, one every ``every`` seconds until ``done``, on a connection
    of its own."""
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while not done.is_set():
            start = time.perf_counter()
            if (await http.get("/metrics")).status_code == 200:
                latencies.append(time.perf_counter() - start)
            try:
                await asyncio.wait_for(done.wait(), every)
            except TimeoutError:
                pass
    return latencies


async def load(url: str, images: list[bytes], clients: int, seconds: float, max_requests: int,
               scrape: float = 0) -> dict:
    """Requests/s and latency of the 200s at ``clients`` concurrent clients, after a warm-up; with ``scrape``,
    /metrics read every ``scrape`` seconds meanwhile."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        for data in images[:3]:  # warm-up, not counted
            await http.post("/v1/predict", files={"file": ("x.jpeg", data, "image/jpeg")})
        done = asyncio.Event()
        scrapes = asyncio.ensure_future(scrape_metrics(url, scrape, done)) if scrape else None
        statuses, latencies, elapsed = await post_xrays(http, images, clients, seconds, max_requests)
        done.set()
        scraped = np.array(await scrapes) * 1000 if scrapes else np.array([])
    answered = [s for s in statuses if isinstance(s, int)]
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "clients": clients, "requests": len(latencies), "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
        "non_200": sum(s != 200 for s in answered), "5xx": sum(s >= 500 for s in answered),
        "dropped": len(statuses) - len(answered), "scrapes": len(scraped),
        "scrape_p50": float(np.median(scraped)) if len(scraped) else np.nan,
        "scrape_max": float(scraped.max()) if len(scraped) else np.nan,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 192])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=("torch", "onnx"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    parser.add_argument("--max-requests", type=int, default=1000, help="per concurrency level")
    parser.add_argument("--scrape", type=float, default=0, metavar="SECONDS",
                        help="read /metrics every SECONDS during the load (default: never)")
    args = parser.parse_args()

    files = (sorted((DATA / "train" / "NORMAL").glob("*.jpeg"))[:8]
             + sorted((DATA / "train" / "PNEUMONIA").glob("*.jpeg"))[:8])
    if not files:
        raise SystemExit(f"no X-rays under {DATA}/train (set PNEUMOSCAN_DATA)")
    images = [f.read_bytes() for f in files]
    print(f"{MODEL}, random weights; {len(images)} real JPEG X-rays; {os.cpu_count()} CPUs shared by server, "
          f"clients and anything else running; loopback only; no heatmaps")
    print(f"{'size':>4} {'backend':>7} {'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'non-200':>7} {'5xx':>4} {'dropped':>7} {'load avg':>8}")
    failures = 0
    met: dict[tuple[int, str], list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            bundle = make_bundle(Path(tmp) / f"bundle-{size}", size)
            if "onnx" in args.backends:
                export_onnx(bundle)
            for backend in args.backends:
                port = free_port()
                server = start_server(bundle, backend, port, Path(tmp) / f"server-{size}-{backend}.log")
                try:
                    for clients in args.clients:
                        url = f"http://127.0.0.1:{port}"
                        row = asyncio.run(load(url, images, clients, args.seconds, args.max_requests, args.scrape))
                        failures += row["non_200"] + row["dropped"]
                        if row["rps"] >= TARGET_RPS and row["p95"] < TARGET_P95_MS:
                            met.setdefault((size, backend), []).append(clients)
                        print(f"{size:>4} {backend:>7} {clients:>7} {row['requests']:>8} {row['rps']:>7.1f} "
                              f"{row['p50']:>7.0f} {row['p95']:>7.0f} {row['non_200']:>7} {row['5xx']:>4} "
                              f"{row['dropped']:>7} {os.getloadavg()[0]:>8.2f}", flush=True)
                        if args.scrape:
                            print(f"{'':>12} /metrics answered {row['scrapes']} times meanwhile, p50 "
                                  f"{row['scrape_p50']:.1f} ms, max {row['scrape_max']:.1f} ms", flush=True)
                finally:
                    server.terminate()
                    server.wait(timeout=30)
    for size in args.sizes:
        for backend in args.backends:
            where = ", ".join(map(str, met.get((size, backend), []))) or "none"
            print(f"target >= {TARGET_RPS:g} req/s at p95 < {TARGET_P95_MS:g} ms, {size} px {backend}: "
                  f"met at clients = {where}")
    print("all answered 200: zero 5xx, zero dropped" if not failures
          else f"FAILED: {failures} requests not answered 200")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
