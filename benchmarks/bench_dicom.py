"""Compressed DICOM: size and decode time of one full-size val/ film (as 12-bit values) in each lossless transfer
syntax pydicom can write, read through pneumoscan's decoder (best of 3); every syntax must give the same pixels.

Run: ``python benchmarks/bench_dicom.py [--data DATA]`` (the first film of DATA/val; DATA defaults to
$PNEUMOSCAN_DATA, else data/chest_xray).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the DICOM writer is the tests' (tests.builders), run from any folder

from pneumoscan.data.decode import read_gray  # noqa: E402
from tests.builders import dicom_bytes  # noqa: E402


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PNEUMOSCAN_DATA", "data/chest_xray")))
    root = parser.parse_args().data / "val"
    films = sorted(root.rglob("*.jpeg"))
    if not films:
        sys.exit(f"{root}: no .jpeg film to time (give the dataset with --data or $PNEUMOSCAN_DATA)")
    film = films[0]
    pixels = read_gray(film).astype(np.uint16) * 16
    plain = dicom_bytes(pixels)
    reference = read_gray(plain)
    print(f"{film.name}: {pixels.shape[1]} x {pixels.shape[0]}, 12-bit")
    print(f"{'transfer syntax':45s} {'MB':>6s} {'decode ms':>10s} {'encode ms':>10s}")
    print(f"{'Explicit VR Little Endian (uncompressed)':45s} {len(plain) / 1e6:6.2f} "
          f"{best_of(3, lambda: read_gray(plain)) * 1e3:10.0f} {'':>10s}")
    for syntax in (uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless):
        ds = pydicom.dcmread(io.BytesIO(plain))
        encode = best_of(1, lambda: ds.compress(syntax))
        buf = io.BytesIO()
        ds.save_as(buf)
        data = buf.getvalue()
        assert (read_gray(data) == reference).all(), syntax.name
        print(f"{syntax.name[:45]:45s} {len(data) / 1e6:6.2f} {best_of(3, lambda: read_gray(data)) * 1e3:10.0f} "
              f"{encode * 1e3:10.0f}")


if __name__ == "__main__":
    main()
