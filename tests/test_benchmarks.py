"""The benchmark scripts are run rarely and by hand, so an API they use can change under them unseen: each must still
import (doing nothing at import: its work waits for ``__main__``) and, where it has options, answer ``--help``."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# Run as ``python benchmarks/NAME.py`` runs them: the scripts' folder first on sys.path, not the repository root.
CHECK = r"""
import contextlib, importlib.util, io, json, runpy, sys
from pathlib import Path

here = Path(".").resolve()
clean_path, own = list(sys.path), (here, here.parent / "tests")
report = {}
for path in sorted(here.glob("*.py")):
    # each script on its own: no path entry or module another one added (tests.builders, bench_serve) helps it
    sys.path[:] = clean_path
    for name, loaded in list(sys.modules.items()):
        origin = Path(getattr(loaded, "__file__", None) or "/")
        if any(folder in origin.parents for folder in own):
            del sys.modules[name]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    entry = {"import_output": out.getvalue()}
    if "ArgumentParser(" in path.read_text():
        help_out, argv = io.StringIO(), sys.argv
        sys.argv = [str(path), "--help"]
        try:
            with contextlib.redirect_stdout(help_out):
                runpy.run_path(str(path), run_name="__main__")
            entry["help_exit"] = "returned without exiting"
        except SystemExit as e:
            entry["help_exit"] = e.code
        finally:
            sys.argv = argv
        entry["help"] = help_out.getvalue()
    report[path.name] = entry
print(json.dumps(report))
"""


def test_every_benchmark_imports_without_running_and_answers_help():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=BENCHMARKS, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    scripts = sorted(p.name for p in BENCHMARKS.glob("*.py"))
    assert sorted(report) == scripts
    for name in scripts:
        assert 'if __name__ == "__main__":' in (BENCHMARKS / name).read_text(), f"{name} runs when imported"
        assert report[name]["import_output"] == "", f"{name} printed on import: {report[name]['import_output']!r}"
    with_options = [name for name in scripts if "help" in report[name]]
    assert len(with_options) >= 10, with_options
    for name in with_options:
        assert report[name]["help_exit"] == 0, f"{name} --help: {report[name]['help_exit']}"
        assert report[name]["help"].startswith("usage: "), f"{name} --help printed {report[name]['help'][:200]!r}"


def test_bench_precision_times_a_model_without_stages():
    """``--model simple_cnn``: train trains such a model whole, so the timed step must too (no stages to pick)."""
    spec = importlib.util.spec_from_file_location("bench_precision", BENCHMARKS / "bench_precision.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ms = bench.step_ms("simple_cnn", 32, "fp32", 1)
    assert math.isfinite(ms) and ms > 0
