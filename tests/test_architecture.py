"""The package layout is a contract: import-linter checks pyproject.toml's [tool.importlinter] contracts (each
package imports only the packages below it, no import cycle inside a package, the web stack and the
hospital-interop libraries stay in their package), and a copy of the package with one bad import is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the package under ``root`` (its pyproject.toml's contracts), that package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", "--no-logo", "--config", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_import_contracts() -> None:
    contracts = (ROOT / "pyproject.toml").read_text().count("[[tool.importlinter.contracts]]")
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert contracts >= 4 and f"Contracts: {contracts} kept, 0 broken." in result.stdout


@pytest.mark.parametrize(("module", "code", "reported"), [
    ("data/decode.py", "from pneumoscan.inference import predict", "pneumoscan.data is not allowed to import pneumoscan.inference"),
    ("core/names.py", "def late():\n    from pneumoscan.cli import main\n", "pneumoscan.core is not allowed to import pneumoscan.cli"),
    ("inference/export.py", "import fastapi", "pneumoscan.inference is not allowed to import fastapi"),
    ("models/bundle.py", "import highdicom", "pneumoscan.models is not allowed to import highdicom"),
    ("helpers.py", "X = 1", "The following modules are not listed as layers"),
    ("data/pixels.py", "def late():\n    from pneumoscan.data import decode\n", "No cycles are allowed in pneumoscan.data"),
], ids=["upward", "upward-lazy", "web-outside-serving", "interop-lib-outside-interop", "module-outside-layers", "cycle"])
def test_a_bad_import_breaks_the_contract(tmp_path: Path, module: str, code: str, reported: str) -> None:
    shutil.copytree(ROOT / "pneumoscan", tmp_path / "pneumoscan", ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "pneumoscan" / module
    with target.open("a") as f:
        f.write("\n" + code + "\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert reported in result.stdout, result.stdout + result.stderr
    assert ", 0 broken" not in result.stdout
