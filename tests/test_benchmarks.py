"""The benchmark scripts are run rarely and by hand, so an API they use can change under them unseen: each must still
import (doing nothing at import: its work waits for ``__main__``) and answer ``--help``."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import re
import runpy
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from pneumoscan.models.card import load_card

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

def _own(module: object, folders: tuple[str, ...]) -> bool:
    """Whether ``module`` was loaded from under one of ``folders`` (each ending in os.sep): a prefix of its path, as
    Path.parents of the thousands of modules loaded took 0.25 s a script."""
    return f"{getattr(module, '__file__', None) or ''}{os.sep}".startswith(folders)


def _import_and_help(path: Path, clean_path: list[str], own: tuple[str, ...]) -> dict:
    """``path`` imported, then run as ``__main__`` with ``--help`` where it reads its command line, as ``python
    benchmarks/NAME.py`` runs it: the scripts' folder first on sys.path, not the repository root, and no module of
    the benchmarks or tests folders loaded (tests.builders, bench_serve): none another script or the suite loaded
    helps it. What it printed on import, on --help, and how --help ended."""
    sys.path[:] = clean_path
    for name, loaded in list(sys.modules.items()):
        if _own(loaded, own):
            del sys.modules[name]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    entry: dict = {"import_output": out.getvalue()}
    if re.search(r"\.parse_(known_)?args\(", path.read_text()):  # reads its command line: --help is safe to ask
        help_out = io.StringIO()
        sys.argv = [str(path), "--help"]
        try:
            with contextlib.redirect_stdout(help_out):
                runpy.run_path(str(path), run_name="__main__")
            entry["help_exit"] = "returned without exiting"
        except SystemExit as e:
            entry["help_exit"] = e.code
        entry["help"] = help_out.getvalue()
    return entry


def test_every_benchmark_imports_without_running_and_answers_help(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, which has loaded what they import (a fresh interpreter to check them cost seconds of torch's
    and the rest's import); what they leave behind (sys.path, sys.argv, their modules, the tests' modules they
    loaded again) is put back."""
    root = BENCHMARKS.parent
    monkeypatch.chdir(BENCHMARKS)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    clean_path = [str(BENCHMARKS), *(p for p in sys.path if p not in ("", ".") and Path(p).resolve() != root)]
    own = tuple(f"{folder}{os.sep}" for folder in (BENCHMARKS, root / "tests"))
    before = dict(sys.modules)
    report = {}
    try:
        for path in sorted(BENCHMARKS.glob("*.py")):
            report[path.name] = _import_and_help(path, clean_path, own)
    finally:
        for name, loaded in list(sys.modules.items()):
            if _own(loaded, own) and before.get(name) is not loaded:
                del sys.modules[name]
        sys.modules.update({name: loaded for name, loaded in before.items() if _own(loaded, own)})
    scripts = sorted(p.name for p in BENCHMARKS.glob("*.py"))
    assert sorted(report) == scripts
    for name in scripts:
        assert 'if __name__ == "__main__":' in (BENCHMARKS / name).read_text(), f"{name} runs when imported"
        assert report[name]["import_output"] == "", f"{name} printed on import: {report[name]['import_output']!r}"
    for name in scripts:  # every script, with options or only positional ones: its usage, not a traceback
        assert "help" in report[name], f"{name} has no argument parser: --help is read as an argument"
        assert report[name]["help_exit"] == 0, f"{name} --help: {report[name]['help_exit']}"
        assert report[name]["help"].startswith("usage: "), f"{name} --help printed {report[name]['help'][:200]!r}"


def test_bench_precision_times_a_model_without_stages():
    """``--model simple_cnn``: train trains such a model whole, so the timed step must too (no stages to pick)."""
    spec = importlib.util.spec_from_file_location("bench_precision", BENCHMARKS / "bench_precision.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ms = bench.step_ms("simple_cnn", 32, "fp32", 1)
    assert math.isfinite(ms) and ms > 0


def test_bench_predict_decode_times_the_full_decode_against_a_dct_scaled_one(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--decode`` (results.md's cost of decoding a full-size JPEG in full): its DCT-scaled side decodes the film at a
    reduced scale, to the full decode's shape but not its pixels, and a row of figures is printed for each size."""
    spec = importlib.util.spec_from_file_location("bench_predict", BENCHMARKS / "bench_predict.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    film = np.clip(np.linspace(40, 220, 1024)[None, :] + rng.normal(0, 30, (800, 1024)), 0, 255).astype(np.uint8)
    Image.fromarray(film).save(path := tmp_path / "film.jpeg", quality=90)
    full, scaled = bench.read_gray(str(path), target=192), bench.draft_gray(str(path), 192)
    assert scaled.shape == full.shape == (200, 256) and not np.array_equal(scaled, full)
    bench.decode_costs([str(path)])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] in (["224"], ["192"])]
    assert [row[0] for row in rows] == ["224", "192"] and all(math.isfinite(float(row[1])) for row in rows)


def _bench(name: str, monkeypatch: pytest.MonkeyPatch):
    """The benchmark script ``name`` imported as a module, its folder first on sys.path as when it is run."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_predict_layout_times_the_predictors_model_against_a_contiguous_copy(
        tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--layout`` (results.md's channels-last speed-up): its two models are the Predictor's, channels-last, and a
    copy in the contiguous layout that scores as it does; the Predictor's own is left as it was."""
    import torch

    bench = _bench("bench_predict", monkeypatch)
    predictor = bench.Predictor(tiny_bundle, 8, "torch")
    last, contiguous = bench.layouts(predictor)
    assert last is predictor.model
    x = predictor.inputs(np.random.default_rng(0).integers(0, 256, (4, 32, 32), np.uint8))
    maps = []  # each model's first convolution's output: the layout its convolutions compute in
    for model in (last, contiguous):
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda module, args, out: maps.append(out))
        with torch.inference_mode():
            maps.append(model(x))
        hook.remove()
    (map_last, out_last), (map_contiguous, out_contiguous) = maps[:2], maps[2:]
    assert map_last.shape[1] > 1 and map_last.is_contiguous(memory_format=torch.channels_last)
    assert not map_last.is_contiguous() and map_contiguous.is_contiguous()
    assert torch.allclose(out_last, out_contiguous, atol=1e-4)


def test_in_turn_alternates_which_call_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_predict.in_turn, the benchmarks' comparisons taken in turn: one time per call and round, the first call
    first in even rounds and second in odd ones."""
    bench = _bench("bench_predict", monkeypatch)
    order: list[str] = []
    seconds = bench.in_turn(lambda: order.append("a"), lambda: order.append("b"), 3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert [len(s) for s in seconds] == [3, 3] and all(t >= 0 for s in seconds for t in s)


def test_bench_memory_arena_off_makes_sessions_without_the_arena(tiny_bundle: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``--arena``'s child code (results.md's memory arena figures): the sessions made after it have ONNX Runtime's
    memory arena off, those made before it on, as pneumoscan makes them."""
    from pneumoscan.inference import onnx_runtime

    bench = _bench("bench_memory", monkeypatch)
    monkeypatch.setattr(onnx_runtime, "_options", onnx_runtime._options)  # restored after the test
    model = tiny_bundle / "model.onnx"
    assert onnx_runtime.session(model).get_session_options().enable_cpu_mem_arena
    exec(bench.ARENA_OFF, {})
    assert not onnx_runtime.session(model).get_session_options().enable_cpu_mem_arena


def test_bench_memory_first_heatmap_measures_the_service_around_its_first_heatmap(
        tiny_bundle: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--first-heatmap``'s child code (results.md's memory after the first heatmap, and the sandbox's Grad-CAM
    times): one line of the resident MiB after the first prediction, the first heatmap and the last, then the seconds
    of the first heatmap request and of the later ones (median, min, max)."""
    bench = _bench("bench_memory", monkeypatch)
    film = sorted((data_root / "val").rglob("*.jpeg"))[0]
    monkeypatch.setattr(sys, "argv", ["-c", str(tiny_bundle), "onnx", str(film), "3"])
    exec(bench.FIRST_HEATMAP, {})
    words = capsys.readouterr().out.split()
    assert len(words) == 7, words
    prediction, first, last, first_s, later_s, low, high = map(float, words)
    assert min(prediction, first, last) > 50 and first_s > 0 and 0 < low <= later_s <= high, words


def test_bench_int8_probe_times_passes_from_the_exports_end(int8_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--probe`` (results.md's INT8 speed straight after an export): a pass of PROBE_FILMS films every
    PROBE_EVERY_S seconds from the moment given until SECONDS after it, each printed with its time, then a summary;
    a pass that runs past its interval is followed at once. The probe reads a clock of the test's, which moves only
    as its passes take and its waits ask (0.1, 0.4 then 0.1 s a pass of the real INT8 model), so that the schedule
    is proved whatever else the machine is doing."""
    bench = _bench("bench_int8", monkeypatch)
    monkeypatch.setattr(bench, "PROBE_FILMS", 6)
    monkeypatch.setattr(bench, "PROBE_EVERY_S", 0.3)

    class Clock:
        def __init__(self) -> None:
            self.now, self.waits = 100.0, []

        def perf_counter(self) -> float:
            return self.now

        def sleep(self, seconds: float) -> None:
            self.waits.append(seconds)
            self.now += seconds

    clock, takes, passed = Clock(), iter([0.1, 0.4, 0.1]), []
    real = bench.Predictor.probabilities

    def timed(predictor, films: np.ndarray) -> np.ndarray:
        probabilities = real(predictor, films)
        passed.append((films.shape, probabilities.shape))
        clock.now += next(takes)
        return probabilities

    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setattr(bench.Predictor, "probabilities", timed)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32), np.uint8)  # fewer than a pass: repeated
    bench.probe(int8_bundle, images, 0.8, clock.perf_counter())
    lines = capsys.readouterr().out.splitlines()
    assert [film_shapes for film_shapes, _ in passed] == [(6, 32, 32)] * 3 and all(p[0] == 6 for _, p in passed)
    assert lines[:-1] == [f"{at:6.1f} s after the export: INT8 {rate:6.1f} images/s"
                          for at, rate in ((0.0, 60.0), (0.3, 15.0), (0.7, 60.0))], lines
    assert clock.waits == pytest.approx([0.2, 0.0, 0.2]), clock.waits  # the second pass ran late: no wait after it
    assert lines[-1] == "INT8, 3 passes of 6 films: first 60.0 images/s, median 60.0 (15.0-60.0)", lines


def test_bench_cache_near_duplicates_finds_the_same_groups_banded_and_by_every_pair(
        tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--near-duplicates`` (results.md's near-duplicate search): a row for the films' pHashes and one for those with
    COPIES flipped copies of each, whose groups the banded search and every pair measured find alike."""
    bench = _bench("bench_cache", monkeypatch)
    films = sorted(str(f) for f in (tiny_dataset / "train").rglob("*.jpeg"))[:12]
    monkeypatch.setattr(bench, "FLIP", 0.005)  # about one bit of 256 a copy: each copy near its film
    bench.near_duplicate_search(films)
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]  # after the two heading lines
    assert [row[0] for row in rows] == ["12", str(12 * (1 + bench.COPIES))] and all(r[-1] == "yes" for r in rows)
    assert 1 <= int(rows[1][1]) <= 12  # each film with its copies (films near each other join one group)


def test_bench_cache_headers_times_the_header_read_with_and_without_the_quality_lookup(
        tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``--headers`` (results.md's cost of the JPEG quality lookup): its read without the lookup gives the header's
    other fields as audit's reader does, and one line gives both costs."""
    from pneumoscan.data.readers.pillow import PillowReader

    bench = _bench("bench_cache", monkeypatch)
    films = sorted(str(f) for f in (tiny_dataset / "train").rglob("*.jpeg"))[:6]
    header = PillowReader().header(Path(films[0]))
    assert header.pop("quality") is not None and bench.header_without_quality(Path(films[0])) == header
    monkeypatch.setattr(bench, "ROUNDS_HEADERS", 2)
    bench.header_costs(films)
    words = capsys.readouterr().out.replace(",", "").split()
    assert words[:4] == ["6", "JPEG", "headers", "of"] and words[5:7] == ["2", "rounds"]
    assert float(words[words.index("lookup") + 1]) > 0 and float(words[words.index("without") + 2]) > 0
    assert math.isfinite(float(words[words.index("adds") + 1]))


def _cv_candidates():
    spec = importlib.util.spec_from_file_location("cv_candidates", BENCHMARKS / "cv_candidates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cv_candidates_averages_three_class_runs_as_the_ensemble_does(tmp_path: Path) -> None:
    """``CV_A+CV_B`` is said to score runs as ``ensemble --cv`` does: the mean of the calibrated logits. For a
    multiclass run it averaged the log-odds of 1 - P(normal) instead, another combination, whose figures were then
    reported as the ensemble's."""
    import numpy as np

    films = {"a.jpeg": [(0.2, 0.7, 0.1), (0.5, 0.1, 0.4)], "b.jpeg": [(0.6, 0.2, 0.2), (0.3, 0.35, 0.35)]}
    runs = []
    for i in range(2):
        run = tmp_path / f"cv{i}"
        run.mkdir()
        lines = ["path,label,fold,probability,probability_normal,probability_bacteria,probability_virus"]
        lines += [f"{tmp_path / name},bacteria,0,{1 - p[i][0]},{p[i][0]},{p[i][1]},{p[i][2]}"
                  for name, p in films.items()]
        (run / "oof.csv").write_text("\n".join(lines) + "\n")
        runs.append(run)
    scores = _cv_candidates().oof_logits(runs)
    for name, p in films.items():
        mean = np.mean(np.log(p), axis=0)  # the ensemble's mean of calibrated logits, up to a constant per film
        normal = np.exp(mean[0]) / np.exp(mean).sum()
        assert math.isclose(scores[str(tmp_path / name)], math.log((1 - normal) / normal), rel_tol=1e-9)


def test_cv_candidates_averages_two_class_runs_by_their_log_odds(tmp_path: Path) -> None:
    runs = []
    for i, p in enumerate((0.2, 0.9)):
        (run := tmp_path / f"cv{i}").mkdir()
        (run / "oof.csv").write_text(f"path,label,fold,probability\n{tmp_path / 'a.jpeg'},PNEUMONIA,0,{p}\n")
        runs.append(run)
    expected = (math.log(0.2 / 0.8) + math.log(0.9 / 0.1)) / 2
    assert math.isclose(_cv_candidates().oof_logits(runs)[str(tmp_path / "a.jpeg")], expected, rel_tol=1e-9)



def test_bench_models_fine_tunes_every_model_whose_weights_ship_and_counts_its_films(tiny_bundle: Path) -> None:
    """EfficientNet-Lite2's ImageNet weights ship as Lite0's do: its row must fine-tune them, not train from scratch
    (only Lite0 was given its weights); models without weights start from scratch. Every row says on how many
    validation films its figures were measured (the table gave an AUC with no sample size)."""
    spec = importlib.util.spec_from_file_location("bench_models", BENCHMARKS / "bench_models.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert [bench.init_of(name) for name in ("efficientnet_lite0", "efficientnet_lite2", "simple_cnn")] == [
        "ImageNet", "ImageNet", "scratch"]
    header = [c.strip() for c in bench.HEADER.strip("|").split("|")]
    cells = dict(zip(header, (c.strip() for c in bench.row("simple_cnn", "scratch", tiny_bundle, 0.5)
                              .strip("|").split("|")), strict=True))
    assert int(cells["val films"]) == load_card(tiny_bundle).val_metrics["n"] > 0
    assert cells["init"] == "scratch" and cells["train minutes"] == "0.5"


def _run_main(name: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """``python benchmarks/NAME.py ARGS``'s refusal, run in this process: the message it exits with (status 1). The
    environment it leaves is this process's again (bench_memory points PNEUMOSCAN_CACHE at a folder of its own)."""
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])  # its folder first; what it adds goes after
    monkeypatch.setattr(sys, "argv", [name, *args])
    with mock.patch.dict(os.environ), pytest.raises(SystemExit) as exited:
        runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    assert isinstance(exited.value.code, str), f"{name} exited {exited.value.code!r}, not with a reason"
    return exited.value.code


def test_benchmarks_refuse_a_data_folder_without_films_in_one_line(tiny_bundle: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_resample and bench_source pointed at a folder without films ended in a traceback (numpy's median or
    stack of nothing), bench_appearance at one (or at a split.csv of fewer than 100 training films, too few to fit
    the appearance on) too; so did the other benchmarks given an empty folder for their data, cv run or bundle, some
    after minutes of work (a bundle trained, decode bombs built). Each refuses with one line naming what it was
    given, exit status 1, before that work."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PNEUMOSCAN_DATA", str(empty))  # the scripts that read their data from there
    bundle, e = str(tiny_bundle), str(empty)
    no_layout, not_cv = "no dataset layout recognises it", "is not a finished cv run"
    refusals = {
        "bench_resample.py": (["--data", e], "no .jpeg film"),
        "bench_source.py": ([bundle, "--data", e], "no .jpeg film"),
        "bench_appearance.py": ([bundle, e], no_layout),
        "bench_shift.py": ([bundle, e], no_layout),
        "bench_bundles.py": ([e, bundle], no_layout),
        "bench_int8.py": ([bundle, e], no_layout),
        "bench_heatmap_scale.py": ([bundle, e, "--data", e], no_layout),
        "bench_models.py": (["--data", e, "--models", "simple_cnn"], no_layout),
        "bench_near_threshold.py": ([e], not_cv),
        "cv_calibration.py": ([e], not_cv),
        "cv_candidates.py": ([e, e], not_cv),
        "cv_two_stage.py": ([e, e], "is not a bundle folder"),
        "bench_patient_overlap.py": ([e], "no .jpeg film"),
        "bench_abuse.py": ([bundle], "no .jpeg film"),
        "bench_memory.py": ([], "no .jpeg film"),
        "bench_cache.py": ([], "no .jpeg film"),
    }
    for name, (args, said) in refusals.items():
        message = _run_main(name, args, monkeypatch)
        assert e in message and said in message and "\n" not in message, (name, message)
    split_csv = str(tiny_bundle.parent / "split.csv")  # 36 training films
    message = _run_main("bench_appearance.py", [bundle, split_csv], monkeypatch)
    assert message.startswith(f"{split_csv}: 36 training films, fewer than the 100") and "\n" not in message


def test_benchmarks_refuse_a_path_that_holds_no_bundle_in_one_line(tiny_bundle: Path, tiny_dataset: Path,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a missing folder, a file, or a folder whose bundle.json is damaged for the bundle, the benchmarks ended in
    load_card's FileNotFoundError or ValueError traceback (bench_abuse and bench_memory after building their uploads
    or films, bench_bundles after timing the bundles before it). Each refuses with load_card's reason on one line,
    exit status 1, before any other work."""
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "bundle.json").write_text('{"format_version": 1')
    (not_a_bundle := tmp_path / "notes.txt").write_text("not a bundle")
    (root := tmp_path / "chest_xray").mkdir()  # films where every script looks: only the bundle is wrong
    (root / "train").symlink_to(tiny_dataset / "train")
    for label in ("NORMAL", "PNEUMONIA"):
        (root / "val" / label).mkdir(parents=True)
        film = next((tiny_dataset / "test" / label).glob("*.jpeg"))
        (root / "val" / label / film.name).symlink_to(film)
    monkeypatch.setenv("PNEUMOSCAN_DATA", str(root))
    split_csv, data = str(tiny_bundle.parent / "split.csv"), str(root)
    for bundle, said in ((tmp_path / "missing", "is not a bundle folder"), (not_a_bundle, "is not a bundle folder"),
                         (damaged, "is not a readable bundle card")):
        b = str(bundle)
        for name, args in {
            "bench_source.py": [b, "--data", data],
            "bench_shift.py": [b, split_csv],
            "bench_appearance.py": [b, split_csv],
            "bench_heatmap_scale.py": [b, split_csv, "--data", data],
            "bench_int8.py": [b, split_csv],
            "bench_bundles.py": [split_csv, str(tiny_bundle), b],
            "cv_two_stage.py": [str(tiny_bundle), b],
            "bench_abuse.py": [b],
            "bench_memory.py": ["--bundle", b],
        }.items():
            message = _run_main(name, args, monkeypatch)
            assert message.startswith(b) and said in message and "\n" not in message, (name, message)


def test_cv_calibration_refuses_a_cv_run_without_its_folds_bundles_in_one_line(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A cv folder with its oof.csv but no fold-K folder ended cv_calibration in an IndexError; one whose fold has no
    bundle, or a damaged bundle.json, in load_card's traceback. Each is refused on one line, exit status 1."""
    cv = tmp_path / "cv"
    cv.mkdir()
    (cv / "oof.csv").write_text("path,label,fold,probability\n")
    message = _run_main("cv_calibration.py", [str(cv)], monkeypatch)
    assert message == f"{cv} is not a finished cv run (`pneumoscan cv --out`): no fold-K folder"
    bundle = cv / "fold-0" / "bundle"
    bundle.parent.mkdir()
    message = _run_main("cv_calibration.py", [str(cv)], monkeypatch)
    assert message.startswith(f"{bundle} is not a bundle folder") and "\n" not in message
    bundle.mkdir()
    (bundle / "bundle.json").write_text('{"format_version": 1')
    message = _run_main("cv_calibration.py", [str(cv)], monkeypatch)
    assert message.startswith(f"{bundle / 'bundle.json'} is not a readable bundle card") and "\n" not in message


def test_bench_heatmap_scale_gives_a_side_without_films_no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle that called no validation film positive (a small split) ended the table in numpy's IndexError (the
    percentiles of no peak): that row says it has no film."""
    import numpy as np

    monkeypatch.syspath_prepend(str(BENCHMARKS))  # its own folder, as python benchmarks/NAME.py has it (bench_shift)
    spec = importlib.util.spec_from_file_location("bench_heatmap_scale", BENCHMARKS / "bench_heatmap_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.summary("validation, called positive", np.array([]))
    assert row.split() == ["validation,", "called", "positive", "0", *["n/a"] * 5]
    assert bench.summary("one", np.array([0.5])).split()[1:] == ["1", "0.500", "0.500", "0.500", "0%", "0%"]


def _patient_overlap(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("bench_patient_overlap", BENCHMARKS / "bench_patient_overlap.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_patient_overlap_skips_names_out_of_the_pattern_and_pairs_a_partial_release(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file in train/NORMAL or train/PNEUMONIA whose name is not the release's (a .DS_Store, a renamed film) ended
    numbered() and by_child() in an AttributeError on None; they skip it and name it. The pairing of a partial
    release, with no personN of both a bacteria and a virus film, gives that row no pair."""
    bench = _patient_overlap(monkeypatch)
    normal, sick = tmp_path / "NORMAL", tmp_path / "PNEUMONIA"
    names = {normal: ["IM-0001-0001.jpeg", "NORMAL2-IM-0001-0001.jpeg", "IM-0002-0001.jpeg", "IM-0002-0002.jpeg",
                      ".DS_Store", "scan.jpeg"],
             sick: ["person1_bacteria_2.jpeg", "person1_bacteria_1.jpeg", "person447_virus_921_1.jpeg",
                    "person2_virus_3.jpeg", "notes.txt", "person3_bacteria.jpeg"]}
    for folder, files in names.items():
        folder.mkdir()
        for name in files:
            (folder / name).write_bytes(b"")  # only the names are read
    by, odd = bench.numbered(normal)
    assert odd == [".DS_Store", "scan.jpeg"]
    assert {k: [Path(p).name for p in v] for k, v in by.items()} == {
        ("IM", 1): ["IM-0001-0001.jpeg"], ("N2", 1): ["NORMAL2-IM-0001-0001.jpeg"],
        ("IM", 2): ["IM-0002-0001.jpeg", "IM-0002-0002.jpeg"]}
    kind, odd = bench.by_child(sick)
    assert odd == ["notes.txt", "person3_bacteria.jpeg"]
    assert {k: [Path(p).name for p in v] for k, v in kind.items()} == {
        ("person1", "bacteria"): ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg"],
        ("person447", "virus"): ["person447_virus_921_1.jpeg"], ("person2", "virus"): ["person2_virus_3.jpeg"]}
    shared, same, one_study, mixed = bench.pairs_by_name(by, kind)
    name = {str(folder / n): n for folder, files in names.items() for n in files}.get
    assert [tuple(map(name, p)) for p in shared] == [("IM-0001-0001.jpeg", "NORMAL2-IM-0001-0001.jpeg")]
    assert [tuple(map(name, p)) for p in same] == [("person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg")]
    assert [tuple(map(name, p)) for p in one_study] == [("IM-0002-0001.jpeg", "IM-0002-0002.jpeg")]
    assert mixed == []


def test_bench_patient_overlap_says_a_row_without_pairs_has_none(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind of pair a partial release holds none of ended the table in a traceback (retrieval's similarities of no
    film), and one shared-number pair, which no other number can be paired to, never ended (deranged looked for a
    derangement of one). The row says it has no pair; one pair has no others."""
    import numpy as np
    from PIL import Image

    bench = _patient_overlap(monkeypatch)
    rng = np.random.default_rng(0)
    films = []
    for i in range(4):
        films.append(str(path := tmp_path / f"IM-{i:04d}-0001.jpeg"))
        Image.fromarray(rng.integers(0, 256, (48, 48), np.uint8)).save(path)
    measure = bench.Films().corr32  # pixels only: no model is loaded
    row = bench.row("one name", [], 211, measure, 0)
    assert row.split(" | ")[1:] == ["0", "n/a", "n/a", "n/a |"]
    cells = bench.row("pairs", [(films[0], films[0]), (films[1], films[1])], 211, measure, 0).split(" | ")
    assert cells[1:3] == ["2 of 2", "1 (1.5)"]  # each film ranks its own copy first
    assert bench.deranged([(films[0], films[1])], 0) == []
    assert sorted(bench.deranged([(films[0], films[1]), (films[2], films[3])], 0)) == [
        (films[0], films[3]), (films[2], films[1])]


def test_bench_models_lists_a_run_training_refused_and_goes_on(tiny_dataset: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A model whose run training refused (seed_cnn1 from scratch in 3 minutes scored every validation film alike)
    ended the benchmark in a traceback, the rows of the models trained before it lost: each refused run is listed
    under the table with its reason, and the next model trains."""
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])
    monkeypatch.setattr(sys, "argv", ["bench_models.py", "--data", str(tiny_dataset), "--models", "simple_cnn", "mlp",
                                      "--minutes", "0.00001", "--image-size", "32", "--out", str(tmp_path)])
    runpy.run_path(str(BENCHMARKS / "bench_models.py"), run_name="__main__")
    out = capsys.readouterr().out
    refused = out.split("Refused by training, so not in the table:\n")[1].splitlines()
    assert [line.split(" (")[0] for line in refused] == ["- simple_cnn", "- mlp"], out
    assert all("(scratch, " in line and "raise time_budget (--time-budget)" in line for line in refused), refused
