"""Start-up time of the command line and of the library's main modules: what a user waits for before a command
does anything, and what it loads for it.

Run: ``python benchmarks/bench_startup.py`` (no data, no bundle). Each case runs ``--runs`` times in a fresh
interpreter of this repository's package, single-threaded (``OMP_NUM_THREADS=1``, pinned to one CPU where the
platform allows it); its median wall and CPU (user + system) seconds are printed, with the heavy packages it loaded.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "sklearn", "scipy", "matplotlib", "onnxruntime", "fastapi", "pydicom")
# each case's code runs after a hook that says, at the interpreter's exit, which of HEAVY it loaded
SAYS_LOADED = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('loaded:', *[m for m in {heavy!r} if m in sys.modules], file=sys.stderr))\n"
)
COMMAND = "import runpy; sys.argv = ['pneumoscan', *{args!r}]; runpy.run_module('pneumoscan', run_name='__main__')"
MODULES = [
    "pneumoscan.cli",
    "pneumoscan.training.config",
    "pneumoscan.data.transforms",
    "pneumoscan.inference.predict",
    "pneumoscan.serving.app",
    "pneumoscan.evaluation.evaluate",
    "pneumoscan.models.registry",
    "pneumoscan.training.train",
]


def commands() -> list[str]:
    """The command line's commands, as its parser has them."""
    sys.path.insert(0, str(ROOT))
    from pneumoscan.cli import build_parser

    return list(build_parser().commands)


def cases() -> list[tuple[str, str]]:
    """(what a user types or a program imports, the code that does it in a fresh interpreter)."""
    said = [
        ("pneumoscan --help", ["--help"]),
        *((f"pneumoscan {c} --help", [c, "--help"]) for c in commands()),
        ("pneumoscan train --print-config", ["train", "--print-config"]),
        ("pneumoscan models", ["models"]),
    ]
    return [(label, COMMAND.format(args=args)) for label, args in said] + [
        (f"import {module}", f"import {module}") for module in MODULES
    ]


def one_cpu() -> None:
    """The child on one CPU, as ``taskset -c N`` puts it (where the platform cannot, it runs where it may)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def run(code: str) -> tuple[float, float, str]:
    """Wall and CPU seconds of ``code`` in a fresh interpreter, and the heavy packages it loaded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", SAYS_LOADED.format(heavy=HEAVY) + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=one_cpu,
    )
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    said = done.stderr.strip().splitlines()
    if done.returncode != 0 or not said or not said[-1].startswith("loaded:"):
        raise SystemExit(f"{code!r} failed (exit status {done.returncode}): {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, said[-1].removeprefix("loaded:").strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", type=int, default=5, help="fresh interpreters per case; the median is printed (default 5)"
    )
    parser.add_argument("--case", default="", help="only the cases whose label holds this text (default: all)")
    args = parser.parse_args()
    print(f"{'case':<42} {'wall s':>7} {'CPU s':>7}  loaded")
    for label, code in [(label, code) for label, code in cases() if args.case in label]:
        runs = [run(code) for _ in range(args.runs)]
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"{label:<42} {wall:>7.2f} {cpu:>7.2f}  {runs[-1][2] or '-'}", flush=True)


if __name__ == "__main__":
    main()
