"""Benchmark the preprocessed-image cache on the real data: build speed, peak memory, cached open time.

Run: ``python benchmarks/bench_cache.py`` (data from $PNEUMOSCAN_DATA, default data/chest_xray, as the Makefile).
Each split is measured in a fresh subprocess so its peak-memory figures are its own. Peak memory is given
two ways: getrusage(RUSAGE_SELF).ru_maxrss of the building process, and the peak of the summed RSS of that
process and all its descendants (the decode workers), sampled from /proc every 50 ms. RUSAGE_CHILDREN is not
used: the workers are children of multiprocessing's fork server, which is never waited for, so it reads 0.

``--near-duplicates`` times the search for near duplicates instead (one thread): on the pHashes ``audit`` and
``split`` compute of train/'s and val/'s films, and on those with COPIES copies of each whose bits are flipped
with probability FLIP, the banded search pneumoscan runs (pairs that share a band of bits) against measuring every
pair (the same distances, row block by row block): whether the two find the same groups, in a first run of each
that is not timed, then ROUNDS_SEARCH rounds of the two in turn.

``--headers`` times the header read ``audit`` makes of each JPEG (Pillow's reader: size, mode, format and the JPEG
quality looked up from the luminance table) against the same read without the quality lookup, on HEADER_FILMS films
of train/, ROUNDS_HEADERS rounds of the two in turn: the median microseconds a header, and of what the lookup adds
in a round (min to max over the rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pneumoscan.data.cache import build_cache  # noqa: E402
from pneumoscan.data.layouts import discover  # noqa: E402
from pneumoscan.data.preprocess import PreprocessSpec  # noqa: E402

DATA = Path(os.environ.get("PNEUMOSCAN_DATA") or ROOT / "data/chest_xray")
SPLITS = {"train": 400, "val": 60}  # split -> target images/s (224 px sources / full-size originals)
MEM_LIMIT_MB = 1024
COPIES, FLIP = 3, 0.01
ROUNDS_SEARCH = 5
HEADER_FILMS = 1000
ROUNDS_HEADERS = 15


def header_without_quality(path: Path) -> dict:
    """:meth:`PillowReader.header` less its quality lookup."""
    from pneumoscan.data.readers import pillow

    with pillow._open(path) as im:
        return {"width": im.width, "height": im.height, "mode": im.mode, "format": im.format}


def header_costs(films: list[str]) -> None:
    """Print the microseconds of a JPEG header read with its quality lookup and without it (``--headers``)."""
    from bench_predict import in_turn  # here, not at the top: it loads torch, which the cache's memory must not hold
    from pneumoscan.data.readers.pillow import PillowReader

    reader = PillowReader()
    paths = [Path(f) for f in films]
    for path in paths:  # the files into the page cache
        reader.header(path)

    def read_all(read: Callable[[Path], dict]) -> None:
        for path in paths:
            read(path)

    runs = in_turn(lambda: read_all(reader.header), lambda: read_all(header_without_quality), ROUNDS_HEADERS)
    seconds = [[s / len(paths) * 1e6 for s in t] for t in runs]
    more = [a - b for a, b in zip(*seconds)]
    with_q, without_q, added = (f"{np.median(t):.0f} ({min(t):.0f} to {max(t):.0f})" for t in (*seconds, more))
    print(f"{len(paths)} JPEG headers of train/, {ROUNDS_HEADERS} rounds of both in turn; us a header, median (min to "
          f"max): with the quality lookup {with_q}, without it {without_q}; the lookup adds {added}")


def near_duplicate_search(films: list[str]) -> None:
    """Print, for the films' pHashes and for those with flipped copies, the groups of the banded search and of every
    pair measured, and the seconds of each."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from bench_predict import in_turn
    from pneumoscan.data.copies import _near_among, _near_duplicate_components, scan_file

    def every_pair(rows: np.ndarray) -> np.ndarray:
        i, j = _near_among(rows.view(np.uint64), np.arange(len(rows)))
        graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(len(rows), len(rows)))
        return connected_components(graph, directed=False)[1]

    def groups(labels: np.ndarray) -> int:
        return int((np.bincount(labels) > 1).sum())

    raw = np.stack([np.frombuffer(scan_file(f, header=False)["phash"], np.uint8) for f in films])
    bits = np.unpackbits(raw, axis=1)
    rng = np.random.default_rng(0)
    copies = [np.packbits(bits ^ (rng.random(bits.shape) < FLIP), axis=1) for _ in range(COPIES)]
    print(f"seconds: median (min-max) of {ROUNDS_SEARCH} rounds of both in turn")
    print(f"{'hashes':>7} {'groups':>6} {'banded s':>16} {'every pair s':>18}  same groups")
    for rows in (raw, np.concatenate([raw, *copies])):
        hashes = [r.tobytes() for r in rows]
        banded, every = _near_duplicate_components(hashes), every_pair(rows)  # also the warm-up
        seconds = in_turn(lambda: _near_duplicate_components(hashes), lambda: every_pair(rows), ROUNDS_SEARCH)
        same = len(set(zip(banded, every))) == len(set(banded)) == len(set(every))
        banded_s, every_s = (f"{np.median(t):.2f} ({min(t):.2f}-{max(t):.2f})" for t in seconds)
        print(f"{len(rows):>7} {groups(banded):>6} {banded_s:>16} {every_s:>18}  {'yes' if same else 'NO'}",
              flush=True)


def _tree_rss_mb(root_pid: int) -> float:
    """Summed VmRSS of ``root_pid`` and every descendant."""
    parent_of, rss = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        pid = int(entry.name)
        parent_of[pid] = int(fields["PPid"])
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
    total = 0.0
    for pid, kb in rss.items():
        p = pid
        while p and p != root_pid:
            p = parent_of.get(p, 0)
        total += kb if p == root_pid else 0
    return total


def measure(split: str) -> dict:
    paths = [r.path for r in discover(DATA / split).records]
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(os.getpid()))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        sampler.start()
        t0 = time.perf_counter()
        cache = build_cache(paths, PreprocessSpec(224), cache_dir=Path(cache_dir))
        build_s = time.perf_counter() - t0
        stop.set()
        sampler.join()
        t0 = time.perf_counter()
        again = build_cache(paths, PreprocessSpec(224), cache_dir=Path(cache_dir))
        open_s = time.perf_counter() - t0
        assert again.key == cache.key and again.images.shape == cache.images.shape
    return {
        "split": split,
        "images": len(paths),
        "errors": len(cache.errors),
        "build_s": build_s,
        "per_s": len(paths) / build_s,
        "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tree_peak_mb": peak[0],
        "open_s": open_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", metavar="SPLIT", help=argparse.SUPPRESS)  # the subprocess that measures one split
    parser.add_argument("--near-duplicates", action="store_true",
                        help="time the banded near-duplicate search against measuring every pair, alone")
    parser.add_argument("--headers", action="store_true",
                        help="time audit's JPEG header read with its quality lookup and without it, alone")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    if not DATA.is_dir():
        sys.exit(f"data not found: {DATA} (set PNEUMOSCAN_DATA)")
    for split in SPLITS:
        if not any((DATA / split).rglob("*.jpeg")):  # the measuring process would end in discovery's traceback
            sys.exit(f"{DATA / split}: no .jpeg film (set PNEUMOSCAN_DATA)")
    if args.near_duplicates:
        near_duplicate_search([r.path for split in SPLITS for r in discover(DATA / split).records])
        return
    if args.headers:
        header_costs([r.path for r in discover(DATA / "train").records][:HEADER_FILMS])
        return
    print(f"data: {DATA.resolve()}   cores: {os.cpu_count()}   workers: default (os.cpu_count())")
    header = (
        f"{'split':<6} {'images':>6} {'errors':>6} {'build s':>8} {'images/s':>9} {'target':>7} "
        f"{'RSS self MB':>11} {'RSS tree MB':>11} {'cached open ms':>14}  verdict"
    )
    print(header)
    print("-" * len(header))
    for split, target in SPLITS.items():
        out = subprocess.run(
            [sys.executable, __file__, "--one", split], check=True, capture_output=True, text=True
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        ok = r["per_s"] >= target and max(r["self_maxrss_mb"], r["tree_peak_mb"]) < MEM_LIMIT_MB
        print(
            f"{r['split']:<6} {r['images']:>6} {r['errors']:>6} {r['build_s']:>8.2f} {r['per_s']:>9.0f} "
            f"{target:>7} {r['self_maxrss_mb']:>11.0f} {r['tree_peak_mb']:>11.0f} {r['open_s'] * 1000:>14.1f}  "
            f"{'ok' if ok else 'MISSED'}"
        )
    print(
        "RSS self = getrusage(RUSAGE_SELF).ru_maxrss of the building process; RSS tree = sampled peak of the "
        f"summed RSS of it and its decode workers; memory target < {MEM_LIMIT_MB} MB."
    )


if __name__ == "__main__":
    main()
