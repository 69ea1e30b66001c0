"""Shared fixtures: the real data folder (tests that need it fail loudly when it is missing) and tiny datasets."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from pneumoscan.data.layouts import Record


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared Kermany data (PNEUMOSCAN_DATA); a missing folder is a failure, never a skip."""
    root = Path(os.environ.get("PNEUMOSCAN_DATA", Path(__file__).parents[2] / "shared/data/chest_xray"))
    assert (root / "train").is_dir(), f"PNEUMOSCAN_DATA={root} has no train/ folder"
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep every test's preprocessing cache out of the user's home (session-wide, before other fixtures), and a
    service key and a UID root set in the shell out of the tests (those of the key or the root set their own)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNEUMOSCAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        mp.delenv("PNEUMOSCAN_API_KEY", raising=False)
        mp.delenv("PNEUMOSCAN_UID_ROOT", raising=False)  # the tests that set a root set their own
        yield


@pytest.fixture(autouse=True)
def _cache_left_where_it_was() -> Iterator[None]:
    """A test that moved PNEUMOSCAN_CACHE for good (a script's main run in this process sets it) sent every later
    test of its worker to another cache: each image cache and copy search's scan made before it was made again (the
    real train/ folder's 5,216 films: 5 s of CPU). It fails instead, naming where it left it."""
    before = os.environ["PNEUMOSCAN_CACHE"]  # _isolated_cache's, or a test's own monkeypatched one
    yield
    if (after := os.environ.get("PNEUMOSCAN_CACHE")) != before:
        os.environ["PNEUMOSCAN_CACHE"] = before  # one failure, not one for every later test
        pytest.fail(f"PNEUMOSCAN_CACHE was {before} and this test left it {after}", pytrace=False)


@pytest.fixture(scope="module")
def module_tmp(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """``tmp_path_factory.mktemp`` for a module's fixtures, whose folders go once the module's tests are done: pytest
    keeps every factory folder to the end of the run (0.5-1 GB in all), on a disk that the 6.8 GB environment has
    already filled much of. A module with a failed test keeps them, as a failed test keeps its tmp_path."""
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def real_train(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Record], list[list[str]]]:
    """The records of data_root's train/ and its groups of films that are one picture, for the split and fold tests
    on real data. The folder's copies are byte copies (24 groups, 50 films): the groups are those picture_groups
    finds among the films whose bytes another film shares, hashed, not decoded, as test_audit_real_train_folder
    finds them (decoding all 5,216 films to find the same groups took 8 s of CPU a run)."""
    from pneumoscan.data.copies import picture_groups
    from pneumoscan.data.layouts import discover

    records = discover(data_root / "train").records

    def find(folder: Path) -> Path:
        by_bytes: dict[str, list[str]] = {}
        for r in records:
            by_bytes.setdefault(hashlib.sha256(Path(r.path).read_bytes()).hexdigest(), []).append(r.path)
        shared = [path for paths in by_bytes.values() if len(paths) > 1 for path in paths]
        groups = [paths for _, paths in picture_groups(shared)]
        (folder / "groups.json").write_text(json.dumps(groups))
        return folder / "groups.json"

    return records, json.loads(_once_per_run(tmp_path_factory, "real_train", find).read_text())


def _xray_like(rng: np.random.Generator, size: int, sick: bool, hazy: bool = False) -> np.ndarray:
    """A synthetic grayscale 'chest': two dark lungs; pneumonia adds bright blobs inside them, and ``hazy`` a haze
    over both lungs too (viral pneumonia's, in :func:`typed_dataset`)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-((xx - 0.32) ** 2 + (yy - 0.5) ** 2) / 0.03) + np.exp(-((xx - 0.68) ** 2 + (yy - 0.5) ** 2) / 0.03)
    img = 0.75 - 0.45 * lungs
    if sick:
        for _ in range(3):
            cx, cy = rng.uniform(0.25, 0.75), rng.uniform(0.35, 0.65)
            img += 0.35 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.004)
        if hazy:
            img += 0.3 * lungs
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


# What the shared fixtures below were built into and what each held then ({fixture: (folder, state)})
_SHARED: dict[str, tuple[Path, dict[str, tuple[int, int, int, int]]]] = {}


def _state(folder: Path) -> dict[str, tuple[int, int, int, int]]:
    """Each file and folder under ``folder``: its size, mode, mtime and ctime (a write, a chmod or a new link)."""
    return {str(p.relative_to(folder)): (s.st_size, s.st_mode, s.st_mtime_ns, s.st_ctime_ns)
            for p in folder.rglob("*") for s in [p.lstat()]}


def _once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """The fixture ``name``: ``build(folder)``'s result, built once per run: under pytest-xdist the first worker to
    ask builds it in the run's temporary folder, holding a lock, and the others wait for it (a tiny bundle trains in
    5-10 s a worker). The tests share it across workers, so none may change it: :func:`_shared_left_as_built`."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        built = build(folder)
    else:
        run = tmp_path_factory.getbasetemp().parent  # pytest-N/, whose popen-gwK/ are the workers' own
        with FileLock(run / f"{name}.lock"):
            made = run / f"{name}.built"
            if not made.exists():  # a worker whose build failed left no .built: the next one builds afresh
                folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=run))
                made.write_text(f"{folder}\n{build(folder)}")
            folder, built = map(Path, made.read_text().splitlines())
    _SHARED[name] = folder, _state(folder)
    return built


@pytest.fixture(autouse=True)
def _shared_left_as_built(request: pytest.FixtureRequest):
    """A test that changed a shared fixture would change what the tests after it read, in every worker: it fails
    instead, naming what changed (a test that changes a bundle or a dataset works on its own copy)."""
    yield
    for name in _SHARED.keys() & set(request.fixturenames):
        folder, before = _SHARED[name]
        after = _state(folder)
        if after != before:
            _SHARED[name] = folder, after  # one failure, not one for every later test
            changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
            pytest.fail(f"the shared {name} in {folder} changed during this test (or, under xdist, one running "
                        f"beside it): {', '.join(changed[:5])}; change a copy in tmp_path instead", pytrace=False)


@pytest.fixture(autouse=True)
def _log_rate_limits_forgotten() -> None:
    """The services' log filters (core.logs.OneLineLog: serve's, listen's on its audit log) hold back a warning said
    within 10 s of the same one, and stay on their loggers for the process: a test that asserts a start-up warning
    would fail when another test in its worker said it just before. Each test starts with nothing held back, as a new
    service does."""
    logs = sys.modules.get("pneumoscan.core.logs")  # never imported here
    if logs is None:
        return
    for logger in [*logging.root.manager.loggerDict.values(), logging.root]:
        for limit in getattr(logger, "filters", ()):  # a placeholder of a logger not made yet has none
            if isinstance(limit, logs.OneLineLog):
                with limit.lock:
                    limit.last.clear()
                    limit.held.clear()


# The worker's Chromium while it is kept open (browser), and the modules whose tests use it
_chromium: tuple[contextlib.ExitStack, Browser] | None = None
_CHROMIUM_MODULES: set[str] = set()


@pytest.fixture(scope="module")
def browser() -> Browser:
    """The worker's headless Chromium (tests/test_browser.py's ``chromium``), kept open from one module that drives
    a page to the next (test_page*.py follow one another): a launch and close, with Playwright's driver, cost about
    1.1 s of CPU a module. Each module opens its own contexts on it and closes them. It is closed before a test of
    any other module (pytest_runtest_setup): while Playwright's sync driver runs, its event loop is the thread's
    running one, and asyncio.run and a second driver are refused: so a module that uses it runs
    neither, whose tests would pass or fail with the order of the modules. One that crashed is launched again, as
    each module's own was."""
    global _chromium
    if _chromium is not None and not _chromium[1].is_connected():
        _close_chromium()
    if _chromium is None:
        from tests.test_browser import chromium

        stack = contextlib.ExitStack()
        _chromium = stack, stack.enter_context(chromium())
    return _chromium[1]


def _close_chromium() -> None:
    global _chromium
    if _chromium is not None:
        stack, _chromium = _chromium[0], None
        stack.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _CHROMIUM_MODULES.update(item.nodeid.split("::")[0] for item in items if "browser" in item.fixturenames)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid.split("::")[0] not in _CHROMIUM_MODULES:
        _close_chromium()


def pytest_sessionfinish(session: pytest.Session) -> None:
    _close_chromium()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root in the Kermany layout with a few dozen synthetic 64 px images, named like the originals."""
    return _once_per_run(tmp_path_factory, "tiny_dataset", _write_tiny_dataset)


@pytest.fixture(scope="session")
def typed_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset with a haze over the lungs of its viral pneumonia films (the same random draws: its other films
    are the tiny dataset's), so that etiology and three-class runs learn from its films: in the tiny dataset bacteria
    and virus are drawn alike, and such a run ranks its validation films no better than chance, which is refused."""
    return _once_per_run(tmp_path_factory, "typed_dataset", lambda folder: _write_tiny_dataset(folder, hazy_virus=True))


@pytest.fixture(scope="session")
def films_some_left_out(typed_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The typed dataset's 16 test films as a folder of a site's own (no split), 2 of its pneumonia films renamed to
    say neither bacteria nor virus, and a file that cannot be read: an etiology bundle given it measures 6 films
    and leaves out 11, for three reasons (1 unreadable, 8 NORMAL, 2 without type)."""
    def build(folder: Path) -> Path:
        films = shutil.copytree(typed_dataset / "test", folder / "films")
        for path in sorted((films / "PNEUMONIA").glob("*.jpeg"))[:2]:
            path.rename(path.with_name(path.name.replace("_bacteria_", "_").replace("_virus_", "_")))
        (films / "NORMAL" / "broken.jpeg").write_bytes(b"not a film")
        return films

    return _once_per_run(tmp_path_factory, "films_some_left_out", build)


def _write_tiny_dataset(folder: Path, train: int = 24, hazy_virus: bool = False) -> Path:
    """The tiny dataset's films, ``train`` a class in train/ and 8 in test/ (``hazy_virus``: typed_dataset's)."""
    root = folder / "chest_xray"
    rng = np.random.default_rng(0)
    for split, first, n in (("train", 0, train), ("test", 100, 8)):
        for i in range(first, first + n):
            normal = root / split / "NORMAL" / f"IM-{i:04d}-0001.jpeg"
            kind = "bacteria" if i % 2 else "virus"
            sick = root / split / "PNEUMONIA" / f"person{i}_{kind}_{i}.jpeg"
            for path, is_sick in ((normal, False), (sick, True)):
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_xray_like(rng, 64, is_sick, hazy_virus and kind == "virus")).save(path, quality=95)
    return root


def _tiny_bundle(root: Path, out: Path, task: str) -> Path:
    from pneumoscan.training.config import TrainConfig
    from pneumoscan.training.train import train

    cfg = TrainConfig(task=task, model="simple_cnn", pretrained=False, image_size=32, epochs=2, batch_size=8,
                      val_fraction=0.25)
    return train(root, cfg, out)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained pneumonia bundle (simple_cnn, 32 px) for predict/explain/export/serve tests."""
    return _once_per_run(tmp_path_factory, "tiny_bundle", lambda run: _tiny_bundle(tiny_dataset, run, "pneumonia"))


@pytest.fixture(scope="session")
def tiny_etiology_bundle(typed_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained bacteria-vs-virus bundle for the second prediction stage (trained on the typed dataset, whose
    etiology a model can learn)."""
    return _once_per_run(tmp_path_factory, "tiny_etiology_bundle",
                         lambda run: _tiny_bundle(typed_dataset, run, "etiology"))


@pytest.fixture(scope="session")
def tiny_multiclass_bundle(typed_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained three-class bundle (normal, bacteria, virus; trained on the typed dataset), for the tests that
    read a finished three-class run (its bundle, card and reports)."""
    return _once_per_run(tmp_path_factory, "tiny_multiclass_bundle",
                         lambda run: _tiny_bundle(typed_dataset, run, "multiclass"))


@pytest.fixture(scope="session")
def tiny_cv(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A finished two-fold cv of the tiny dataset (simple_cnn, 32 px, one epoch, Youden's thresholds), its OUT and the
    arguments that made it, for the tests that read a cv run or teach with its fold bundles (its two folds cost
    3-6 s of CPU: once a run, not once a module). The data is given through a link, as a linked data disk would be. A
    test that runs cv again into it works on a copy (``tests.builders.copy_of_cv``)."""
    from pneumoscan import cli

    def build(folder: Path) -> Path:
        link = folder / "data-link"
        link.symlink_to(tiny_dataset)
        args = ["cv", "--data", str(link), "--out", str(folder / "cv"), "--folds", "2", "--model", "simple_cnn",
                "--no-pretrained", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--youden"]
        assert cli.main(args) == 0
        (folder / "args.json").write_text(json.dumps(args))
        return folder / "cv"

    out = _once_per_run(tmp_path_factory, "tiny_cv", build)
    return out, json.loads((out.parent / "args.json").read_text())


@pytest.fixture(scope="session")
def tiny_evaluation(tiny_bundle: Path, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """evaluate's report folder of tiny_bundle on the tiny dataset's test films (report.html with its figures, its
    threshold table and its error gallery), for the tests that read a report as a person does."""
    from pneumoscan.evaluation.evaluate import evaluate

    def build(folder: Path) -> Path:
        evaluate(tiny_bundle, tiny_dataset, "test", folder / "eval")
        return folder / "eval"

    return _once_per_run(tmp_path_factory, "tiny_evaluation", build)


@pytest.fixture(scope="session")
def three_class_runs(tiny_bundle: Path, tiny_etiology_bundle: Path, tiny_dataset: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The two three-class routes evaluated on the test split: a multiclass bundle (simple_cnn, weights as built,
    threshold 0.3; its folder beside the evaluation's) and the pneumonia bundle followed by the etiology bundle
    (evaluate --etiology), for test_compare's three-class comparisons and test_evaluate_outputs' predictions.csv of
    a multiclass bundle. Built once a run, not once a worker."""
    import torch

    from pneumoscan.evaluation.evaluate import evaluate
    from pneumoscan.models import registry as models
    from pneumoscan.models.bundle import save_bundle
    from pneumoscan.models.card import BundleCard

    def build(folder: Path) -> Path:
        torch.manual_seed(0)
        card = BundleCard("simple_cnn", "multiclass", ["normal", "bacteria", "virus"], "pneumonia", 32, "squash", 0.5,
                          0.25, threshold=0.3)
        bundle = save_bundle(folder / "bundle", models.create("simple_cnn", num_classes=3), card)
        evaluate(bundle, tiny_dataset, "test", folder / "eval-multiclass")
        evaluate(tiny_bundle, tiny_dataset, "test", folder / "eval-two-stage", etiology=tiny_etiology_bundle)
        return folder

    folder = _once_per_run(tmp_path_factory, "three_class_runs", build)
    return folder / "eval-multiclass", folder / "eval-two-stage"


@pytest.fixture(scope="session")
def tiny_evaluation_by_site(tiny_bundle: Path, tiny_dataset: Path,
                            tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """`evaluate --by site --by SUBTYPE --out` of tiny_bundle on the tiny dataset's 16 test films as two sites
    (tests.builders.site_manifest): its folder, the manifest and what the command printed, for the tests that read
    an evaluation by subgroup (test_subgroups, test_compare: one report drawn a run, not one a test)."""
    import io

    from pneumoscan import cli
    from tests.builders import site_manifest

    def build(folder: Path) -> Path:
        data, printed = site_manifest(tiny_dataset, folder), io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert cli.main(["evaluate", str(tiny_bundle), str(data), "--by", "site", "--by", "SUBTYPE", "--out",
                             str(folder / "eval")]) == 0
        (folder / "printed.txt").write_text(printed.getvalue())
        return folder / "eval"

    out = _once_per_run(tmp_path_factory, "tiny_evaluation_by_site", build)
    return out, out.parent / "site-all.csv", (out.parent / "printed.txt").read_text()


@pytest.fixture(scope="session")
def tiny_multiclass_by_subtype(tiny_multiclass_bundle: Path, typed_dataset: Path,
                               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """evaluate's folder of tiny_multiclass_bundle on the typed dataset's test films by subtype (``--by subtype``:
    each group's three-class accuracy and its test), for the tests that read a three-class evaluation by group (its
    report's six figures: once a run, not once a test)."""
    from pneumoscan.evaluation.evaluate import evaluate

    def build(folder: Path) -> Path:
        evaluate(tiny_multiclass_bundle, typed_dataset, "test", folder / "eval", by=["subtype"])
        return folder / "eval"

    return _once_per_run(tmp_path_factory, "tiny_multiclass_by_subtype", build)


@pytest.fixture(scope="session")
def int8_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of tiny_bundle with its INT8 model (export --int8), for the onnx-int8 backend's tests."""
    import shutil

    from pneumoscan import cli

    def export(folder: Path) -> Path:
        bundle = folder / "bundle"
        shutil.copytree(tiny_bundle, bundle)
        assert cli.main(["export", str(bundle), "--int8", "--data", str(tiny_bundle.parent / "split.csv")]) == 0
        return bundle

    return _once_per_run(tmp_path_factory, "int8_bundle", export)


@pytest.hookimpl(optionalhook=True)  # xdist's hook: without xdist installed, the tests still run one at a time
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``make test`` runs ``pytest -n auto``: one worker per core this process may use (``taskset`` and a container's
    CPU quota count, unlike xdist's own count of the machine's cores); at most 8, since each worker holds torch. More
    cost more than they gain: each worker imports and collects on its own, and the processes the tests start share
    the cores (on 2 cores the suite took 5 min 46 s in 2 workers, 6 min 7 s in 3, 6 min 58 s in 4)."""
    from pneumoscan.core.cpus import usable_cores

    return min(8, usable_cores())


def pytest_configure(config: pytest.Config) -> None:
    """Workers share the CPUs: each trains and scores with its share of them, not with all (torch's default, which
    counts the machine's cores), so do the processes a test starts (the CLI, torchrun's ranks, a notebook's kernel, a
    server), unless OMP_NUM_THREADS is set already (on 2 cores in 4 workers the suite took 6 min 58 s with each such
    process running 2 threads, 6 min 41 s with 1)."""
    if (workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT")) is not None:
        import torch

        from pneumoscan.core.cpus import usable_cores

        share = max(1, usable_cores() // int(workers))
        torch.set_num_threads(share)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
    _temp_folders_in_memory()


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Iterator[object]:
    """Collection imports torch, the package and every test module (about 800,000 objects a worker) and makes
    little garbage: the collector's full passes over the growing heap, about 20 of them, cost 3 s of a worker's CPU
    before its first test. It waits until the tests are collected; what collection made is then frozen, so the full
    passes during the tests walk what the tests made, not the imports (which live to the end)."""
    gc.disable()
    try:
        return (yield)
    finally:
        gc.enable()
        gc.collect()
        gc.freeze()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Every test has run: the interpreter's last collections, which walk every object torch and the test modules
    made (2-3 s of a worker's exit, at the end of the run), are left to the process's end, as pneumoscan's own entry
    does (cli.run)."""
    gc.freeze()


MEMORY_TEMPROOT = Path("/dev/shm")
MEMORY_TEMPROOT_FREE = 4 << 30  # the run's folders peak at about 1 GB; a container's 64 MB /dev/shm is passed over


def _temp_folders_in_memory() -> None:
    """Every tmp_path in memory where the machine has room: the package flushes each file it writes to disk
    (core/atomic.py), about 4,400 times a run, which cost the suite a minute of its six on a virtual disk (7 ms
    a write, 0.03 ms on tmpfs). What is written, and how, is unchanged. PYTEST_DEBUG_TEMPROOT set in the shell
    wins; xdist's workers take their folders under the controller's."""
    if "PYTEST_DEBUG_TEMPROOT" in os.environ or not os.access(MEMORY_TEMPROOT, os.W_OK | os.X_OK):
        return
    room = os.statvfs(MEMORY_TEMPROOT)
    if room.f_bavail * room.f_frsize >= MEMORY_TEMPROOT_FREE:
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(MEMORY_TEMPROOT)


@pytest.fixture
def weight_sources_looked_up(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The bundles (real paths) whose weight sources the held-out check looks up, in order: the real lookup, counted,
    for the tests that a record's check runs once."""
    from pneumoscan.evaluation import held_out

    looked_up: list[str] = []
    real = held_out._weight_sources

    def counted(of: Path, *args: object, **kwargs: object) -> object:
        looked_up.append(os.path.realpath(of))
        return real(of, *args, **kwargs)

    monkeypatch.setattr(held_out, "_weight_sources", counted)
    return looked_up
