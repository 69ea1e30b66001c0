"""Start-up cost: scoring with an ONNX backend (predict, the service's stages) imports no torch, torchvision or
timm and builds no torch model; torch comes in for what needs it (the torch backend, Grad-CAM), with the same
numbers and the same checks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.special
from PIL import Image

from pneumoscan.core.metrics import softmax
from pneumoscan.data.decode import read_gray
from pneumoscan.inference.onnx_runtime import session
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import ONNX_NAME, WEIGHTS
from pneumoscan.serving.limits import Limits
from pneumoscan.serving.service import Service
from tests.builders import SCORE_TOL

TORCH_STACK = ("torch", "torchvision", "timm")
# and scikit-learn, which only training needs (the content check's fit): 0.8 s and 70 MB a scoring process; and
# scipy, which the service loaded with the held-out check's grouping of copies, which it never runs (0.15 s); and
# pydicom's code dictionary, which a film's scope loaded for a DICOM film's view code, never a PNG's (0.07 s)
HEAVY = (*TORCH_STACK, "sklearn", "scipy", "pydicom.sr.codedict")
ROOT = Path(__file__).parents[1]


def run_python(code: str, *args: str) -> Any:
    """``code`` in a fresh interpreter (this one has torch loaded long ago); it prints one JSON line last."""
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


PREDICT = f"""
import gc, io, json, sys
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from pneumoscan import cli
from pneumoscan.serving.app import create_app
def loaded():
    return [m for m in {HEAVY!r} if m in sys.modules]
said = []
*scoring, heatmaps = json.loads(sys.argv[1])
for args in scoring:  # one command line after another in this process
    said.append({{"code": cli.main(args), "loaded": loaded()}})
buf = io.BytesIO()  # then the service's scoring of a film
Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(buf, "PNG")
with TestClient(create_app(sys.argv[2], backend="onnx")) as client:
    answer = client.post("/v1/predict", files={{"file": ("film.png", buf.getvalue(), "image/png")}})
said.append({{"status": answer.status_code, "loaded": loaded()}})
said.append({{"code": cli.main(heatmaps), "loaded": loaded()}})
print(json.dumps(said))
gc.freeze()  # as pneumoscan's entry: its exit walks no torch objects
"""
BACKENDS = ("onnx", "onnx-int8")


@pytest.fixture(scope="module")
def fresh_predicts(fresh_runs: dict) -> dict:
    """`predict` of a film by each ONNX backend, the service's ONNX scoring of a film, then `predict` by ONNX with
    heatmaps, one after the other in one process that has loaded no torch (this one has torch loaded long ago):
    :data:`PREDICT`, forked by :func:`fresh_runs`' interpreter. What a run imports stays in sys.modules, so what is
    loaded after each run counts it and the runs before it."""
    return {"film": fresh_runs["folder"] / "film.png", "folder": fresh_runs["folder"], "ran": fresh_runs["predict"]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_onnx_predict_imports_no_torch_and_gives_the_same_probability(
    int8_bundle: Path, fresh_predicts: dict, backend: str
) -> None:
    ran = fresh_predicts["ran"][BACKENDS.index(backend)]
    assert ran == {"code": 0, "loaded": []}
    [row] = json.loads((fresh_predicts["folder"] / f"{backend}.json").read_text())
    predictor = Predictor(int8_bundle, backend=backend)
    gray = read_gray(fresh_predicts["film"], target=predictor.card.spec.decode_target)
    [expected] = predictor.positive_probability(predictor.probabilities(predictor.preprocess([gray])))
    # the same model and input numbers (test_onnx_inputs_are_to_inputs_numbers), scored in another process, whose
    # thread count may differ from this one's (an xdist worker's): within SCORE_TOL, not bit for bit
    assert row["probability"] == pytest.approx(expected, abs=SCORE_TOL)


def test_torch_is_loaded_for_heatmaps_of_the_onnx_backend(fresh_predicts: dict) -> None:
    """Grad-CAM needs the torch model: a fresh process scoring with ONNX loads torch for the heatmaps (none of it
    before them), and makes them (the torch backend's own fresh process: tests/test_interop.py's report cut
    short). Torch alone: pytorch-grad-cam's import loaded torchvision, scikit-learn, SciPy, OpenCV and pyplot besides
    (4 s of CPU, more than torch's), for the dozen lines of Grad-CAM the heatmaps use; timm is loaded only for a
    model of timm's (the tiny bundle's is simple_cnn)."""
    *before, ran = fresh_predicts["ran"]
    assert before[-1]["loaded"] == [], "the runs before the heatmaps loaded no torch"
    assert ran["code"] == 0 and ran["loaded"] == ["torch"], ran
    assert len(list((fresh_predicts["folder"] / "maps").glob("*.png"))) == 1


def test_the_onnx_backend_builds_the_torch_model_for_gradcam_only_and_checks_its_weights(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    assert Predictor(bundle, backend="torch")._model is not None  # built at once: bad weights refused up front
    predictor = Predictor(bundle, backend="onnx")
    predictor.probabilities(images)
    assert predictor._model is None
    raw = bytearray((bundle / WEIGHTS).read_bytes())
    raw[-1] ^= 1  # the last byte of the last tensor: still loads, other numbers
    (bundle / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="model.safetensors is damaged"):
        predictor.model  # noqa: B018 - the property builds it


def test_onnx_inputs_are_to_inputs_numbers(tiny_bundle: Path) -> None:
    """The ONNX backend normalises in numpy, the torch backend with ``to_input``: the same float32 numbers."""
    predictor = Predictor(tiny_bundle, backend="onnx")
    every_level = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16), dtype=np.uint8)
    for mean, std in ((predictor.card.mean, predictor.card.std), (0.4823, 0.2369), (0.1, 3.7), (0.0, 1.0)):
        predictor.card = dataclasses.replace(predictor.card, mean=mean, std=std)
        for batch in (every_level, images):
            got, expected = predictor.onnx_inputs(batch), predictor.inputs(batch).numpy()
            assert got.dtype == expected.dtype == np.float32 and got.shape == expected.shape
            assert np.array_equal(got, expected)


def test_softmax_is_scipys_bit_for_bit() -> None:
    logits = np.random.default_rng(0).normal(0, 30, (200, 3)).astype(np.float32)
    for temperature in (1.0, 0.37, 2.5):
        expected = scipy.special.softmax(logits.astype(float) / temperature, axis=-1)
        assert np.array_equal(softmax(logits, temperature), expected)


# The scenarios share one interpreter, which imports what a scoring process loads before torch; each runs in a child
# forked from it before torch is loaded (torch's import was most of a fresh interpreter's 2.4 s a scenario): the child
# takes its CPUs (as taskset would) and its environment, then loads torch, which reads both as it loads. A last child
# runs :data:`PREDICT` (``sys.argv[3:]``: its code and arguments), which had cost an interpreter of its own.
THREADS = """
import json, logging, math, os, sys, traceback
from pathlib import Path
import numpy as np
from pneumoscan.core import cpus
from pneumoscan.inference.onnx_runtime import session
from pneumoscan.inference.predict import Predictor


def counts(bundle, cgroup, model):
    if cgroup:
        cpus.CGROUP = Path(cgroup)  # a container's CPU quota, as its own cgroup folder shows it
    said = []
    class Kept(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())
    logging.getLogger("pneumoscan").addHandler(Kept())
    logging.getLogger("pneumoscan").setLevel(logging.INFO)
    before = cpus.model_threads()  # torch not loaded yet: worked out
    import torch
    start = torch.get_num_threads()  # what torch alone would run
    loaded = {}
    if model:
        predictor = Predictor(bundle, backend="torch")  # predict and serve load their torch model so
        predictor.logits(np.zeros((1, predictor.card.size, predictor.card.size), np.uint8))  # and score with it
        loaded["torch backend"] = [m for m in ("torchvision", "sklearn", "matplotlib") if m in sys.modules]
        import pneumoscan.training.train  # a script's imports, as the image cache's worker processes import it again
        loaded["training's import"] = [m for m in ("torchvision", "sklearn", "matplotlib") if m in sys.modules]
    else:
        cpus.cap_torch_threads()  # what that load does first (timm and the model cost seconds a process)
    onnx = session(Path(bundle) / "model.onnx").get_session_options().intra_op_num_threads
    quota = cpus.cpu_quota()
    cores = min(len(os.sched_getaffinity(0)), math.ceil(quota) if quota else os.cpu_count())
    return {"before": before, "start": start, "torch": torch.get_num_threads(), "onnx": onnx, "cores": cores,
            "said": said, "loaded": loaded}


ran = []
for case in json.loads(sys.argv[2]):
    read, write = os.pipe()
    if (pid := os.fork()) == 0:
        try:
            if case["one_cpu"]:
                os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
            os.environ.update(case["env"])
            said = counts(sys.argv[1], case["cgroup"], case["model"])
        except BaseException:
            said = {"error": traceback.format_exc()}
        with os.fdopen(write, "w") as out:
            out.write(json.dumps(said))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as got:
        ran.append(json.loads(got.read() or '{"error": "the child said nothing"}'))
    os.waitpid(pid, 0)
read, write = os.pipe()
if (pid := os.fork()) == 0:
    os.close(read)
    os.dup2(write, 1)
    code, *sys.argv[1:] = sys.argv[3:]
    try:
        exec(code, {"__name__": "__main__"})
        status = 0
    except BaseException:
        traceback.print_exc(file=sys.stdout)  # into what the test shows
        status = 1
    sys.stdout.flush()
    os._exit(status)
os.close(write)
with os.fdopen(read) as got:
    printed = got.read()
status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps({"threads": ran, "predict": json.loads(printed.splitlines()[-1]) if status == 0 else printed}))
"""
SCENARIOS = [
    ({"OMP_NUM_THREADS": "1"}, False, None, False),  # a count given below the cap is honoured
    ({"OMP_NUM_THREADS": ""}, False, None, False),  # one a physical core
    ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "1"}, False, None, False),  # MKL's count wins
    ({"OMP_NUM_THREADS": "1,1"}, False, None, False),  # OpenMP's nested levels: the first
    # taskset to one CPU: torch alone runs one a physical core of the machine; capped by loading a model
    ({"OMP_NUM_THREADS": "64"}, True, None, True),
    ({"OMP_NUM_THREADS": ""}, False, "100000 100000", False),  # docker --cpus 1: torch alone counts the machine's cores
]  # fmt: skip


@pytest.fixture(scope="module")
def fresh_runs(int8_bundle: Path, tiny_bundle: Path, module_tmp: Callable[[str], Path]) -> dict:
    """One interpreter started for :data:`THREADS`' scenarios and :data:`PREDICT`'s runs (each cost seconds of
    CPU): what each scenario counted (``threads``), what PREDICT said (``predict``), and the folder of PREDICT's
    film and results."""
    folder = module_tmp("fresh_runs")
    cases = []
    for i, (env, one_cpu, quota, model) in enumerate(SCENARIOS):
        cgroup = ""
        if quota:
            (folder / str(i)).mkdir()
            (folder / str(i) / "cpu.max").write_text(quota + "\n")
            cgroup = str(folder / str(i))
        cases.append({"env": env, "one_cpu": one_cpu, "cgroup": cgroup, "model": model})
    film = folder / "film.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(film)
    runs = [["predict", str(int8_bundle), str(film), "--backend", backend, "--out", str(folder / f"{backend}.json")]
            for backend in BACKENDS]
    runs.append(["predict", str(tiny_bundle), str(film), "--out", str(folder / "heatmaps.json"), "--backend", "onnx",
                 "--heatmaps", str(folder / "maps")])
    ran = run_python(THREADS, str(tiny_bundle), json.dumps(cases), PREDICT, json.dumps(runs), str(tiny_bundle))
    assert isinstance(ran["predict"], list), f"PREDICT failed:\n{ran['predict']}"
    return {**ran, "folder": folder}


@pytest.fixture(scope="module")
def thread_counts(fresh_runs: dict) -> list[dict]:
    """What each of :data:`SCENARIOS` counted (:data:`THREADS`)."""
    return fresh_runs["threads"]


@pytest.mark.parametrize("env, one_cpu, quota, model", SCENARIOS)
def test_every_model_run_takes_torchs_count_capped_at_the_cores_this_process_may_use(
    thread_counts: list[dict], env: dict[str, str], one_cpu: bool, quota: str | None, model: bool
) -> None:
    """One rule for torch and every ONNX Runtime session: torch's own count (MKL_NUM_THREADS, OMP_NUM_THREADS, the
    physical cores), never more than the cores taskset or a CPU quota leave; in a pod limited to 2 CPUs on a 32-core
    node each session and the torch backend had run 16 threads. Worked out before torch is loaded, it is the count
    torch runs once predict or serve has loaded a model."""
    ran = thread_counts[SCENARIOS.index((env, one_cpu, quota, model))]
    assert "error" not in ran, ran["error"]
    assert ran["before"] == ran["torch"] == ran["onnx"] == min(ran["start"], ran["cores"]), ran
    capped = [line for line in ran["said"] if "intra-op threads capped" in line]
    assert capped == ([f"torch's {ran['start']} intra-op threads capped at the {ran['cores']} cores this process may "
                       "use (affinity, CPU quota)"] if ran["start"] > ran["cores"] else []), ran


def test_the_torch_backend_and_trainings_import_load_no_torchvision_sklearn_or_matplotlib(
    thread_counts: list[dict]
) -> None:
    """torchvision (about 3 s of CPU, most of it torch._dynamo), scikit-learn (1 s) and matplotlib (0.5 s) are for
    training and its figures: `predict --backend torch` and `serve --backend torch` loaded torchvision for the one
    formula that normalises a film, and a script importing ``pneumoscan.training.train`` loaded all three in each of
    the image cache's worker processes, which import the script again to decode films. In a process that scored with
    the torch backend, then imported training's stack, none is loaded."""
    [ran] = [ran for ran, (*_, model) in zip(thread_counts, SCENARIOS) if model]
    assert ran["loaded"] == {"torch backend": [], "training's import": []}, ran


def test_the_thread_count_is_worked_out_where_the_platform_cannot_say_which_cpus_are_allowed(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS has no os.sched_getaffinity: usable_cores went without it, model_threads (before torch is loaded)
    raised AttributeError there. Every CPU of the machine is then allowed."""
    from pneumoscan.core import cpus

    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    for name in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert 1 <= cpus.model_threads() <= cpus.usable_cores() <= (os.cpu_count() or 1)


def test_onnx_sessions_follow_torchs_thread_count_once_it_is_loaded(tiny_bundle: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        options = session(tiny_bundle / ONNX_NAME).get_session_options()
    finally:
        torch.set_num_threads(threads)
    assert options.intra_op_num_threads == 1


def test_the_service_builds_a_torch_model_only_for_its_first_heatmap(tiny_bundle: Path) -> None:
    service = Service(tiny_bundle, None, 20, "onnx", Limits())
    try:
        gray = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
        assert asyncio.run(service.main.predict(service.main.prepare(gray))).label
        assert service.main.predictor._model is None
        service._heatmap_png(gray, gray, raw=False, label="NORMAL", warnings=[])
        model = service.main.predictor._model
        assert model is not None and service.heat_predictor is service.main.predictor
        service._heatmap_png(gray, gray, raw=True, label="NORMAL", warnings=[])
        assert service.main.predictor._model is model, "built once"
    finally:
        service.close()


def test_a_bundle_replaced_after_start_up_draws_no_heatmap_of_other_weights(tiny_bundle: Path, tmp_path: Path) -> None:
    """Scores from the weights loaded at start-up, a heatmap from those found later: refused with the reason."""
    import dataclasses
    import shutil

    import torch

    from pneumoscan.models.bundle import load_bundle, save_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    predictor = Predictor(bundle, backend="onnx")
    model, card = load_bundle(bundle)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_bundle(bundle, model, dataclasses.replace(card))  # another model under the same name
    with pytest.raises(ValueError, match="its weights are not those it was loaded with"):
        predictor.model


def test_the_services_onnx_scoring_imports_no_torch(fresh_predicts: dict) -> None:
    """After the ONNX predicts (which load none of it), the service's ONNX scoring answers and loads none either."""
    assert fresh_predicts["ran"][len(BACKENDS)] == {"status": 200, "loaded": []}
