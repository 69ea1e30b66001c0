"""The Huffman walk of JPEG frames (``check_huffman_scans``, which every 12-bit JPEG Extended and JPEG Lossless
DICOM frame goes through before it is decoded): CPU seconds, each frame's best of 5 walks, in all and the least and
most a frame, for the 16 full-size val/ films (8-bit baseline JPEGs, 1,201 restart intervals in all, walked as a
12-bit frame is); the first of them saved
again by Pillow with a restart marker every MCU, grey and colour (4:2:0), where the walk meets the most intervals;
and, where dcmtk's dcmcjpeg is installed (``make dicom-tools``), the first 4 as 12-bit JPEG Extended DICOM frames
(``dcmcjpeg +ee``, one interval each; 12-bit values: each 8-bit level times 16, plus the column's low 4 bits).

Run: ``python benchmarks/bench_huffman.py [--data DATA] [--repo CHECKOUT]`` (DATA defaults to $PNEUMOSCAN_DATA,
else data/chest_xray; CHECKOUT, whose pneumoscan is timed, to this one: another, such as a git worktree of an
earlier commit, times its walk on the same films).
"""

from __future__ import annotations

import argparse
import importlib
import io
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_frames

ROOT = Path(__file__).resolve().parents[1]


def best_of(n: int, check: Callable[[bytes], None], frames: list[bytes]) -> str:
    """The least CPU seconds of ``n`` walks (``check``) of each frame: in all, and the least and most a frame."""
    times = [math.inf] * len(frames)
    for _ in range(n):
        for i, frame in enumerate(frames):
            start = time.process_time()
            check(frame)
            times[i] = min(times[i], time.process_time() - start)
    return f"{sum(times):.3f} CPU s" + (f" ({min(times):.3f}-{max(times):.3f} a frame)" if len(frames) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PNEUMOSCAN_DATA", "data/chest_xray")))
    parser.add_argument("--repo", type=Path, default=ROOT)
    args = parser.parse_args()
    sys.path[:0] = [str(args.repo.resolve()), str(ROOT)]  # the DICOM writer is the tests' (tests.builders)
    jpeg = importlib.import_module("pneumoscan.data.readers.jpeg")
    root = args.data / "val"
    films = sorted(root.rglob("*.jpeg"))
    if not films:
        sys.exit(f"{root}: no .jpeg film to time (give the dataset with --data or $PNEUMOSCAN_DATA)")
    frames = [film.read_bytes() for film in films]
    print(f"pneumoscan from {Path(jpeg.__file__).parents[3]}")
    megabytes = sum(map(len, frames)) / 1e6
    print(f"{len(frames)} val/ films, {megabytes:.1f} MB: {best_of(5, jpeg.check_huffman_scans, frames)}")
    gray = Image.open(io.BytesIO(frames[0])).convert("L")
    for mode in ("L", "RGB"):
        buffer = io.BytesIO()
        gray.convert(mode).save(buffer, "JPEG", quality=90, restart_marker_blocks=1)
        print(f"{films[0].name} {gray.width} x {gray.height}, {mode}, a restart marker every MCU: "
              f"{best_of(5, jpeg.check_huffman_scans, [buffer.getvalue()])}")
    if not shutil.which("dcmcjpeg"):
        print("12-bit JPEG Extended frames left out: no dcmcjpeg (make dicom-tools)")
        return
    extended = [_extended_frame(frame) for frame in frames[:4]]
    print(f"{len(extended)} films as 12-bit JPEG Extended frames, {sum(map(len, extended)) / 1e6:.1f} MB: "
          f"{best_of(5, jpeg.check_frame, extended)}")


def _extended_frame(film: bytes) -> bytes:
    """``film`` as a 12-bit JPEG Extended DICOM frame, by dcmcjpeg."""
    from tests.builders import dicom_bytes

    gray = np.asarray(Image.open(io.BytesIO(film)).convert("L"), np.uint16)
    with tempfile.TemporaryDirectory() as folder:
        plain, coded = Path(folder, "plain.dcm"), Path(folder, "extended.dcm")
        plain.write_bytes(dicom_bytes(gray * 16 + np.arange(gray.shape[1], dtype=np.uint16) % 16))
        subprocess.run(["dcmcjpeg", "+ee", str(plain), str(coded)], check=True)
        return next(generate_frames(pydicom.dcmread(coded).PixelData, number_of_frames=1))


if __name__ == "__main__":
    main()
