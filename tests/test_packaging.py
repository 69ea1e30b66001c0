"""pneumoscan as users get it: the source distribution holds the project with a test suite that can run, and the
wheel built from it (as ``python -m build`` and ``pip install`` build it) is a package that works outside the
repository: the command, its version, the web page's files, the licence, and nothing read or imported from the
repository folder. The suite otherwise runs against the editable install, which would hide all of this."""

from __future__ import annotations

import ast
import configparser
import email.parser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pneumoscan.inference.predict import predict_paths
from tests.builders import SCORE_TOL, free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
# What a source release is made from: every file under these must be in the sdist (MANIFEST.in's job).
SOURCE = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CHANGELOG.md", "Makefile", "mkdocs.yml",
          "pneumoscan", "tests", "docs", "configs", "benchmarks", "notebooks", "deploy")
# Folders of the repository that the installed package must never import from.
REPOSITORY_ONLY = {"tests", "benchmarks", "notebooks", "configs", "docs"}
# A PEP 517 build by the backend pyproject.toml names, offline and in this environment (pip's --no-build-isolation):
# what `python -m build` and `pip install` run in a clean environment of their own. Prints the file it made.
BUILD = "import importlib, sys; print(getattr(importlib.import_module(sys.argv[1]), sys.argv[2])(sys.argv[3]))"


@dataclass(frozen=True)
class Built:
    source: Path  # the copy of the repository the sdist was built from
    sdist: Path
    wheel: Path  # built from the unpacked sdist
    site: Path  # the wheel unpacked, as pip would install it


def _build(kind: str, project: Path, out: Path) -> Path:
    backend = tomllib.loads((project / "pyproject.toml").read_text())["build-system"]["build-backend"]
    result = subprocess.run([sys.executable, "-c", BUILD, backend, kind, str(out)], cwd=project, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"{kind} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return out / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def built(module_tmp: Callable[[str], Path]) -> Built:
    """sdist from a copy of the repository's source (the repository's own build/ folder is neither read nor
    written: setuptools ships whatever a stale build/lib holds), then the wheel from that sdist."""
    work = module_tmp("packaging")
    source = work / "source"
    source.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
        elif (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    sdist = _build("build_sdist", source, work / "dist")
    with tarfile.open(sdist) as tar:
        # the "data" filter where this Python has it (3.11.4 on); the archive is the one just built
        tar.extractall(work / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (project,) = (work / "unpacked").iterdir()
    wheel = _build("build_wheel", project, work / "dist")
    site = work / "site"
    with zipfile.ZipFile(wheel) as whl:
        whl.extractall(site)
    return Built(source, sdist, wheel, site)


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_sdist_holds_the_project_and_a_test_suite_that_can_run(built: Built) -> None:
    """setuptools by itself puts tests/test_*.py in the sdist but not conftest.py or builders.py (no test file
    imports from it), and no docs, reference configs or changelog: MANIFEST.in adds them."""
    with tarfile.open(built.sdist) as tar:
        held = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    missing = sorted(_files(built.source) - held)
    assert not missing, f"the sdist lacks {len(missing)} files of the source: {missing[:10]}"
    assert {"tests/conftest.py", "tests/builders.py", "LICENSE", "README.md", "docs/index.md",
            "pneumoscan/py.typed"} <= held


def test_the_wheel_holds_the_package_its_web_page_licence_and_command(built: Built) -> None:
    """The package's files include PEP 561's marker, pneumoscan/py.typed: without it a type checker reads none of
    the package's annotations (mypy refuses its imports as untyped, tests/test_docs.py's type check)."""
    with zipfile.ZipFile(built.wheel) as whl:
        names = set(whl.namelist())
        info = f"pneumoscan-{_version()}.dist-info"
        metadata = email.parser.Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        licence = whl.read(f"{info}/licenses/LICENSE")
        scripts = configparser.ConfigParser()
        scripts.read_string(whl.read(f"{info}/entry_points.txt").decode())
    package = {name for name in _files(built.source) if name.startswith("pneumoscan/")}
    assert {"pneumoscan/serving/static/index.html", "pneumoscan/serving/static/app.js", "pneumoscan/py.typed"} <= names
    # every module and every file the package reads (the page's), and nothing else beside its metadata
    assert {name for name in names if not name.startswith(f"{info}/")} == package
    assert licence == (ROOT / "LICENSE").read_bytes()
    assert (metadata["Version"], metadata["License-Expression"]) == (_version(), "Apache-2.0")
    assert dict(scripts["console_scripts"]) == {"pneumoscan": "pneumoscan.cli:run"}


def test_the_package_imports_nothing_from_the_repository(built: Built) -> None:
    """tests/, benchmarks/ and the like are not installed: an import of them works in a checkout only."""
    imported = set()
    for module in (built.site / "pneumoscan").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {(alias.name.split(".")[0], module.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add((node.module.split(".")[0], module.name))
    assert not {(name, where) for name, where in imported if name in REPOSITORY_ONLY}


def _installed(site: Path) -> dict[str, str]:
    """The environment of a process that sees the unpacked wheel and this environment's dependencies, never the
    repository: run with ``python -S`` (no .pth file runs, so no editable install's finder) from an empty folder."""
    repository = {ROOT, ROOT / "tests"}
    dependencies = [p for p in sys.path if p and Path(p).exists() and Path(p).resolve() not in repository]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *dependencies]), "PYTHONUNBUFFERED": "1"}


def test_the_installed_command_runs_outside_the_repository(built: Built, tmp_path: Path) -> None:
    """The ``pneumoscan`` script pip writes calls the wheel's entry point; ``python -m pneumoscan`` runs the same;
    --version is the wheel's metadata, set once in pyproject.toml."""
    script = ("import contextlib, importlib.metadata, io, json, sys\n"
              "import pneumoscan\n"
              "(entry,) = importlib.metadata.entry_points(group='console_scripts', name='pneumoscan')\n"
              "sys.argv = ['pneumoscan', '--help']\n"
              "with contextlib.redirect_stdout(io.StringIO()) as shown, contextlib.suppress(SystemExit):\n"
              "    entry.load()()\n"
              "print(json.dumps({'module': pneumoscan.__file__, 'version': pneumoscan.__version__,\n"
              "                  'entry_point_from': str(entry.dist.locate_file('')), 'help': shown.getvalue()}))\n")
    env = _installed(built.site)
    ran = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    assert Path(seen["module"]) == built.site / "pneumoscan" / "__init__.py"
    assert Path(seen["entry_point_from"]) == built.site
    assert seen["version"] == _version()
    assert seen["help"].startswith("usage: pneumoscan") and "serve" in seen["help"]
    version = subprocess.run([sys.executable, "-S", "-m", "pneumoscan", "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert (version.returncode, version.stdout.strip()) == (0, f"pneumoscan {_version()}"), version.stderr


@pytest.fixture
def installed_server(built: Built, tiny_bundle: Path, tmp_path: Path) -> Iterator[str]:
    """``python -m pneumoscan serve`` from the unpacked wheel, in an empty folder: its base URL."""
    port, log = free_port(), tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-S", "-m", "pneumoscan", "serve", str(tiny_bundle), "--port",
                                 str(port)], cwd=tmp_path, env=_installed(built.site), stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_installed_service_serves_its_page_and_predicts(built: Built, installed_server: str, tiny_bundle: Path,
                                                            tiny_dataset: Path) -> None:
    film = sorted((tiny_dataset / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    static = built.site / "pneumoscan" / "serving" / "static"
    with httpx.Client(base_url=installed_server, timeout=120) as http:
        assert http.get("/").content == (static / "index.html").read_bytes()
        for page_file in sorted(static.iterdir()):
            answer = http.get(f"/static/{page_file.name}")
            assert (answer.status_code, answer.content) == (200, page_file.read_bytes()), page_file.name
        predicted = http.post("/v1/predict", files={"file": (film.name, film.read_bytes(), "image/jpeg")})
    assert predicted.status_code == 200, predicted.text
    expected = predict_paths(tiny_bundle, [film])[0]["probability"]
    assert abs(predicted.json()["probability"] - expected) <= SCORE_TOL
