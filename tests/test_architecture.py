"""The package layout is a contract: import-linter checks pyproject.toml's [tool.importlinter] contracts (each
package imports only the packages below it, no import cycle inside a package, the web stack and the
hospital-interop libraries stay in their package), and a copy of the package with one bad import is refused.
So is the style: ruff checks [tool.ruff] (lines of at most 120 characters, pyflakes' rules) over the code, tests,
benchmarks and notebooks, and a file breaking either rule is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"
CHECKED = ["pneumoscan", "tests", "benchmarks", "notebooks"]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the package under ``root`` (its pyproject.toml's contracts), that package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", "--no-logo", "--config",
                           str(root / "pyproject.toml")], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_package_keeps_its_import_contracts() -> None:
    contracts = (ROOT / "pyproject.toml").read_text().count("[[tool.importlinter.contracts]]")
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert contracts >= 4 and f"Contracts: {contracts} kept, 0 broken." in result.stdout


@pytest.mark.parametrize(("module", "code", "reported"), [
    ("data/decode.py", "from pneumoscan.inference import predict",
     "pneumoscan.data is not allowed to import pneumoscan.inference"),
    ("core/names.py", "def late():\n    from pneumoscan.cli import main\n",
     "pneumoscan.core is not allowed to import pneumoscan.cli"),
    ("inference/export.py", "import fastapi", "pneumoscan.inference is not allowed to import fastapi"),
    ("models/bundle.py", "import highdicom", "pneumoscan.models is not allowed to import highdicom"),
    ("helpers.py", "X = 1", "The following modules are not listed as layers"),
    ("data/pixels.py", "def late():\n    from pneumoscan.data import decode\n",
     "No cycles are allowed in pneumoscan.data"),
], ids=["upward", "upward-lazy", "web-outside-serving", "interop-lib-outside-interop", "module-outside-layers",
        "cycle"])
def test_a_bad_import_breaks_the_contract(tmp_path: Path, module: str, code: str, reported: str) -> None:
    shutil.copytree(ROOT / "pneumoscan", tmp_path / "pneumoscan",
                    ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "pneumoscan" / module
    with target.open("a") as f:
        f.write("\n" + code + "\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert reported in result.stdout, result.stdout + result.stderr
    assert ", 0 broken" not in result.stdout


def ruff(root: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    """``ruff check`` of ``paths`` under ``root`` with its pyproject.toml's [tool.ruff] settings, no cache."""
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           "--config", str(root / "pyproject.toml"), *paths], cwd=root, capture_output=True,
                          text=True, timeout=120)


def test_the_code_keeps_its_style() -> None:
    result = ruff(ROOT, *CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("code", "reported"), [
    ("X = " + repr("x" * 114) + "\n", None),  # 120 characters: the limit itself
    ("X = " + repr("x" * 115) + "\n", "E501"),  # 121
    ("import json\n", "F401"),
    ("def f():\n    return undefined_name\n", "F821"),
], ids=["at-the-limit", "long-line", "unused-import", "undefined-name"])
def test_a_file_breaking_the_style_is_refused(tmp_path: Path, code: str, reported: str | None) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "module.py").write_text(code)
    result = ruff(tmp_path, "module.py")
    if reported is None:
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert result.returncode == 1 and f": {reported} " in result.stdout, result.stdout + result.stderr


# what the repository may hold of pictures and models: the docs' own figures, nothing from a dataset or a run
FILM_SUFFIXES = (".dcm", ".dicom", ".jpeg", ".jpg", ".png", ".npy", ".npz", ".safetensors", ".onnx", ".pt")
MAX_TRACKED_BYTES = 2 * 1024 * 1024


def test_no_film_model_or_large_file_is_committed() -> None:
    """Films come from PNEUMOSCAN_DATA and bundles from a run, never from the repository (a 37 MB DICOM a scratch script
    left at the root was committed once): only docs/ holds pictures, and no tracked file is over 2 MiB."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    paths = [Path(name.decode()) for name in tracked if name]
    assert paths, "git lists no tracked file: run the suite from a git checkout"
    assert [p for p in paths if p.suffix.lower() in FILM_SUFFIXES and p.parts[0] != "docs"] == []
    assert [p for p in paths if (ROOT / p).is_file() and (ROOT / p).stat().st_size > MAX_TRACKED_BYTES] == []
