"""Abuse test of `pneumoscan serve` on loopback: what 64 concurrent worst-case uploads do to the server's memory
and to its health probe, and what 16 well-behaved clients get meanwhile-free.

Run: ``python benchmarks/bench_abuse.py [BUNDLE] [--backend onnx] [-- SERVE OPTIONS...]``. Without a bundle a
tiny one is trained first (simple_cnn, 32 px, synthetic images: seconds); give a real one for real figures.
Measured, per kind of upload (each just under the 20 MB upload limit, or at the decoder's pixel limit):

* peak RSS of the server process above its idle RSS while ``--uploads`` (64) of them are sent at once
  (goal: under 2 GB), sampled every 20 ms and read from the kernel's high-water mark (VmHWM, reset first);
* /healthz latency, probed every 50 ms during that load (goal: p99 under 1 s; the flood starts once a first
  probe has been answered, and a flood without a probe misses the goal: health was not measured);
* the answers: 200, 503 (load shed by the queue bound, with Retry-After), other 5xx (goal: 0), dropped.

Before the floods, the throughput of ``--clients`` (16) clients posting real X-rays ($PNEUMOSCAN_DATA) for
``--seconds`` (goal: no 5xx, nothing dropped); after them, how long a plain prediction then waits (the work the
flood left behind: decodes already running finish, queued work whose client gave up is dropped).
Everything is bounded in count and time; the server listens on 127.0.0.1 only. Exit status 1 when a goal is
missed. Figures move with whatever else runs on the machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.synchronize
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_serve import free_port, post_xrays, start_server  # noqa: E402  (this folder: the script's own path entry)

DATA = Path(os.environ.get("PNEUMOSCAN_DATA") or ROOT / "../shared/data/chest_xray")
MB = 2**20
GOAL_PEAK_MB, GOAL_HEALTH_P99_S = 2048, 1.0
PROBER_START_S = 120  # the prober process imports this script (and torch) before its first probe


# ---------------------------------------------------------------- inputs


def tiny_bundle(directory: Path) -> Path:
    """A simple_cnn bundle trained for one epoch on 48 synthetic 64 px images."""
    from pneumoscan.training.config import TrainConfig
    from pneumoscan.training.train import train

    rng = np.random.default_rng(0)
    for label in ("NORMAL", "PNEUMONIA"):
        folder = directory / "data" / "train" / label
        folder.mkdir(parents=True)
        for i in range(24):
            img = rng.normal(120 + 40 * (label == "PNEUMONIA"), 30, (64, 64)).clip(0, 255).astype(np.uint8)
            name = f"IM-{i:04d}-0001.jpeg" if label == "NORMAL" else f"person{i}_bacteria_{i}.jpeg"
            Image.fromarray(img).save(folder / name)
    cfg = TrainConfig(task="pneumonia", model="simple_cnn", pretrained=False, image_size=32, epochs=1, batch_size=8,
                      val_fraction=0.25)
    return train(directory / "data", cfg, directory / "run")


def png_bytes(array: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def worst_uploads(limit_mb: float) -> dict[str, bytes]:
    """Kinds of upload that cost the server most: the largest file (incompressible 8-bit noise PNG just under
    the limit, decoded at full size) and the largest decode the decoder accepts (a 16-bit PNG just under its
    pixel and decoded-byte limits, 2 bytes a pixel, that compresses to a few MB)."""
    from pneumoscan.data.pixels import MAX_DECODED_BYTES, MAX_PIXELS

    rng = np.random.default_rng(1)
    side = int(np.sqrt(limit_mb * MB * 0.97))
    noise = png_bytes(rng.integers(0, 256, (side, side), dtype=np.uint8), 1)
    big = int(np.sqrt(min(MAX_PIXELS, MAX_DECODED_BYTES / 2) * 0.98))
    ramp = (np.arange(big, dtype=np.uint32) * 4095 // big).astype(np.uint16)
    wide = png_bytes(np.broadcast_to(ramp, (big, big)).copy(), 9)
    assert len(noise) < limit_mb * MB and len(wide) < limit_mb * MB
    return {f"8-bit noise PNG {side}x{side} ({len(noise) / MB:.1f} MB)": noise,
            f"16-bit PNG {big}x{big} ({len(wide) / MB:.1f} MB)": wide}


def xrays(n: int = 32) -> list[bytes]:
    paths = (sorted((DATA / "train" / "PNEUMONIA").glob("*.jpeg"))[: n // 2]
             + sorted((DATA / "val").rglob("*.jpeg"))[: n // 2])
    assert paths, f"no X-rays under {DATA}"
    return [p.read_bytes() for p in paths]


# ---------------------------------------------------------------- the server and its memory


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakRSS:
    """Largest RSS of ``pid`` while in use: sampled every 20 ms, and the kernel's own high-water mark (VmHWM)
    after resetting it, which catches spikes between samples."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb, self.stop = pid, 0, threading.Event()
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.hwm = True
        except OSError:
            self.hwm = False
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        if self.hwm:
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmHWM"))


# ---------------------------------------------------------------- load


def probe_loop(url: str, stop: mp.synchronize.Event, out: mp.connection.Connection) -> None:
    """/healthz every 50 ms until told to stop, in its own process, so the figures are the server's and not
    the load generator's event loop. Sends ``"ready"`` once a first probe has been answered (the flood waits for
    it: starting this process takes seconds), then, when stopped, the later probes as (start on the monotonic
    clock, latency or inf for a failure)."""
    probes: list[tuple[float, float]] = []
    ready = False
    with httpx.Client(base_url=url, timeout=10) as http:
        while not stop.is_set():
            start = time.monotonic()
            try:
                ok = http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            if ready:
                probes.append((start, time.monotonic() - start if ok else float("inf")))
            elif ok:
                ready = True
                out.send("ready")
                continue  # the next probe at once, to be in flight when the flood starts
            time.sleep(0.05)
    out.send(probes)


async def flood(url: str, data: bytes, uploads: int, timeout: float) -> dict:
    """``uploads`` concurrent posts of ``data`` while /healthz is probed from another process; the flood starts
    once the prober has had a first answer, and only the probes that overlap the flood are kept."""
    statuses: list[int | str] = []

    async def one(http: httpx.AsyncClient) -> None:
        try:
            r = await http.post("/v1/predict", files={"file": ("upload.png", data, "image/png")})
            statuses.append(r.status_code)
        except httpx.HTTPError as e:
            statuses.append(type(e).__name__)

    ctx = mp.get_context("spawn")
    stop, (receiver, sender) = ctx.Event(), ctx.Pipe(duplex=False)
    prober = ctx.Process(target=probe_loop, args=(url, stop, sender), daemon=True)
    prober.start()
    if not mp.connection.wait([receiver, prober.sentinel], PROBER_START_S) or not receiver.poll():
        died = prober.exitcode
        stop.set()
        prober.join(timeout=30)
        why = f"exited with status {died}" if died is not None else f"had no answer within {PROBER_START_S:g} s"
        return {"statuses": [], "probes": [], "seconds": 0.0, "error": f"the /healthz prober {why}; no flood sent"}
    receiver.recv()  # "ready"
    limits = httpx.Limits(max_connections=uploads, max_keepalive_connections=uploads)
    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        await asyncio.gather(*(one(http) for _ in range(uploads)))
    end = time.monotonic()
    stop.set()
    probes = receiver.recv()
    prober.join(timeout=30)
    during = [latency for begun, latency in probes if begun < end and begun + latency > start]
    return {"statuses": statuses, "probes": during, "seconds": end - start}


async def steady(url: str, images: list[bytes], clients: int, seconds: float, max_requests: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as http:
        statuses, latencies, elapsed = await post_xrays(http, images, clients, seconds, max_requests)
    return {"statuses": statuses, "latencies": latencies, "seconds": elapsed}


def tally(statuses: list[int | str]) -> dict[str, int]:
    return {
        "200": sum(s == 200 for s in statuses),
        "503 shed": sum(s == 503 for s in statuses),
        "other 5xx": sum(isinstance(s, int) and s >= 500 and s != 503 for s in statuses),
        "4xx": sum(isinstance(s, int) and 400 <= s < 500 for s in statuses),
        "dropped": sum(isinstance(s, str) for s in statuses),
        **{f"dropped: {name}": statuses.count(name) for name in sorted({s for s in statuses if isinstance(s, str)})},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", nargs="?", help="bundle to serve (default: train a tiny one)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="onnx")
    parser.add_argument("--uploads", type=int, default=64, help="concurrent worst-case uploads per kind")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20, help="duration of the steady-load phase")
    parser.add_argument("--max-requests", type=int, default=2000, help="cap on the steady-load phase")
    parser.add_argument("--timeout", type=float, default=180, help="per upload, in the flood phase")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]  # after --: extra `pneumoscan serve` options

    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else tiny_bundle(Path(tmp))
        print(f"bundle {bundle}  backend {args.backend}  serve options {extra or 'defaults'}", flush=True)
        uploads = worst_uploads(20)
        images = xrays()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "server.log"
        proc = start_server(bundle, args.backend, port, log, extra)
        failures: list[str] = []
        results: dict[str, object] = {}
        try:
            for data in images[:4]:  # warm-up: model, threads, allocator
                httpx.post(f"{url}/v1/predict", files={"file": ("x.jpeg", data, "image/jpeg")}, timeout=120)
            idle_mb = status_kb(proc.pid, "VmRSS") / 1024
            print(f"idle RSS {idle_mb:.0f} MB   load average {os.getloadavg()[0]:.1f}", flush=True)
            got = asyncio.run(steady(url, images, args.clients, args.seconds, args.max_requests))
            lat = np.array(got["latencies"]) if got["latencies"] else np.array([np.nan])
            counts = tally(got["statuses"])
            rps = counts["200"] / got["seconds"]
            results["steady"] = {"clients": args.clients, "rps": rps, "p50_s": float(np.percentile(lat, 50)),
                                 "p95_s": float(np.percentile(lat, 95)), **counts}
            print(f"{args.clients} clients, real X-rays: {rps:.1f} req/s, p50 {np.percentile(lat, 50) * 1e3:.0f} ms "
                  f"p95 {np.percentile(lat, 95) * 1e3:.0f} ms; {counts}; load {os.getloadavg()[0]:.1f}", flush=True)
            if any(counts[k] for k in ("other 5xx", "dropped", "503 shed")):
                failures.append(f"steady load: {counts}")
            for kind, data in uploads.items():
                with PeakRSS(proc.pid) as peak:
                    got = asyncio.run(flood(url, data, args.uploads, args.timeout))
                peak_mb = peak.peak_kb / 1024 - idle_mb
                if "error" in got:
                    failures.append(f"{kind}: {got['error']}")
                    print(f"{args.uploads} x {kind}: {got['error']}", flush=True)
                    continue
                n = len(got["probes"])
                p50, p99, worst = (float(np.percentile(got["probes"], q)) if n else None for q in (50, 99, 100))
                counts = tally(got["statuses"])
                results[kind] = {"peak_above_idle_mb": round(peak_mb), "healthz_p50_s": p50, "healthz_p99_s": p99,
                                 "healthz_max_s": worst, "probes": n, "seconds": got["seconds"], **counts}
                health = (f"/healthz p50 {p50 * 1e3:.0f} ms p99 {p99 * 1e3:.0f} ms max {worst * 1e3:.0f} ms" if n
                          else "/healthz not measured")
                print(f"{args.uploads} x {kind}: peak RSS +{peak_mb:.0f} MB above idle; {health} ({n} probes); "
                      f"{counts}; {got['seconds']:.1f} s; load {os.getloadavg()[0]:.1f}", flush=True)
                if peak_mb > GOAL_PEAK_MB:
                    failures.append(f"{kind}: peak RSS +{peak_mb:.0f} MB (goal < {GOAL_PEAK_MB})")
                if not n:
                    failures.append(f"{kind}: /healthz not measured: no probe during the {got['seconds']:.2f} s flood "
                                    "(more --uploads make it last longer)")
                elif not p99 <= GOAL_HEALTH_P99_S:  # inf (a failed probe) misses the goal
                    failures.append(f"{kind}: /healthz p99 {p99:.2f} s (goal < {GOAL_HEALTH_P99_S:g})")
                if counts["other 5xx"] or counts["dropped"]:
                    failures.append(f"{kind}: {counts['other 5xx']} 5xx other than 503, {counts['dropped']} dropped")
            # what the flood leaves behind: decodes already running finish, queued work of gone clients is dropped
            start = time.perf_counter()
            r = httpx.post(f"{url}/v1/predict", files={"file": ("x.jpeg", images[0], "image/jpeg")}, timeout=600)
            recovery = time.perf_counter() - start
            results["recovery_s"] = recovery
            print(f"after the floods, a plain prediction was answered ({r.status_code}) in {recovery:.1f} s",
                  flush=True)
            log_mb = log.stat().st_size / MB
            print(f"server log: {log_mb:.2f} MB, {sum(1 for _ in log.open('rb'))} lines, "
                  f"{log.read_text(errors='replace').count('Traceback')} tracebacks")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(results, default=float))
    for failure in failures:
        print(f"GOAL MISSED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
