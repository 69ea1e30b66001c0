"""Each model proven to run on this machine before its films (:func:`pneumoscan.inference.predict.prove_runs`). A
process refused memory both writable and executable (``prctl(PR_SET_MDWE)``, Linux 6.3 and later; what systemd's
``MemoryDenyWriteExecute=yes`` asks) cannot run torch's oneDNN convolutions at a film's size: ``serve`` started, said
ok on /healthz and answered every reading 500 (with ONNX Runtime scoring, every heatmap), and ``predict`` stopped at
its first batch with a traceback and exit status 1. Each refuses to start with status 2 and the reason."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from pneumoscan import cli
from pneumoscan.inference.predict import NO_WX_MEMORY
from pneumoscan.serving.service import HEATMAPS_OFF, WITHOUT_HEATMAPS
from tests.builders import chest_film_dicom, free_port, wait_healthy

# the pneumoscan command in a process that asks the kernel to refuse it writable-and-executable memory from then on;
# a kernel without PR_SET_MDWE fails the test here, loudly, rather than letting it pass untested
UNDER_MDWE = """import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(f"PR_SET_MDWE refused (errno {ctypes.get_errno()}): this test needs Linux 6.3 or later")
from pneumoscan.cli import run
run()
"""


@pytest.fixture(scope="module")
def film_sized_bundle(module_tmp: Callable[[str], Path]) -> Path:
    """An untrained simple_cnn bundle at 224 px with its model.onnx: oneDNN makes code for its convolution at that
    size (at the test bundles' 32 px it does not, and they run under the policy)."""
    import torch

    from pneumoscan.models import registry as models
    from pneumoscan.models.bundle import save_bundle
    from pneumoscan.models.card import BundleCard

    torch.manual_seed(0)
    card = BundleCard("simple_cnn", "pneumonia", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 224, "squash", 0.5, 0.25,
                      threshold=0.5)
    bundle = save_bundle(module_tmp("film_sized") / "bundle", models.create("simple_cnn", num_classes=2), card)
    assert cli.main(["-q", "export", str(bundle)]) == 0
    return bundle


@pytest.mark.parametrize(("backend", "failing", "way_out"),
                         [("torch", "scoring", ""), ("onnx", "Grad-CAM of", f"; or {WITHOUT_HEATMAPS}")])
def test_serve_refuses_to_start_where_its_model_cannot_run(film_sized_bundle: Path, under_policy: dict, backend: str,
                                                           failing: str, way_out: str) -> None:
    """With torch scoring, the test film's score fails; with ONNX Runtime scoring (which runs), the heatmap, and the
    refusal names the way to serve the readings without heatmaps."""
    status, stderr = under_policy["refused"][f"serve {backend}"]
    assert status == 2, stderr
    error = stderr.splitlines()[-1]
    assert error.startswith(f"pneumoscan serve: error: {film_sized_bundle}: its model cannot run on this machine: "
                            f"{failing} a film-sized test input in torch failed (RuntimeError: "), error
    assert error.endswith(f"; {NO_WX_MEMORY}{way_out}") and "MemoryDenyWriteExecute=yes" in error
    assert "Traceback" not in stderr


def test_serve_without_heatmaps_runs_under_the_policy(film_sized_bundle: Path, tmp_path: Path) -> None:
    """`serve --backend onnx --no-heatmaps`, as the refusal above says, under the policy: it starts, reads films by
    ONNX Runtime, refuses each heatmap with 422 and its reason, and /v1/model says it draws none."""
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", UNDER_MDWE, "-q", "serve", str(film_sized_bundle), "--backend",
                                 "onnx", "--no-heatmaps", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log)
        film = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260), dtype=np.uint8)).save(film, "PNG")
        post = lambda query: httpx.post(f"{url}/v1/predict{query}", timeout=60,  # noqa: E731
                                        files={"file": ("film.png", film.getvalue(), "image/png")})
        reading, overlay, bare = post(""), post("?heatmap=true"), post("?heatmap=map")
        info = httpx.get(f"{url}/v1/model", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert reading.status_code == 200 and 0 <= reading.json()["probability"] <= 1, reading.text
    for refused in (overlay, bare):
        assert refused.status_code == 422, refused.text
        assert refused.json() == {"error": HEATMAPS_OFF, "reason": "heatmap_unavailable"}
    assert info["heatmaps"] is False
    assert "Traceback" not in log.read_text()


def test_predict_refuses_before_its_films_where_its_model_cannot_run(film_sized_bundle: Path,
                                                                    under_policy: dict) -> None:
    """No results file of errors: no file at all, status 2 and the reason, before a film is read."""
    refused = under_policy["refused"]
    status, stderr = refused["predict"]
    assert status == 2, stderr
    assert stderr.splitlines()[-1] == (
        f"pneumoscan predict: error: {film_sized_bundle}: its model cannot run on this machine: scoring a film-sized "
        f"test input in torch failed (RuntimeError: could not create a primitive); {NO_WX_MEMORY}")
    assert not refused["predict's out"]


# a service proven at start where the policy is not yet in force (ONNX Runtime scoring, no heatmap drawn at start),
# then put under it: its first heatmap's Grad-CAM, in torch, fails as it would on a host that refused that memory
# later (or for any other internal error), while its readings, by ONNX Runtime, go on
POLICY_AFTER_START = """import ctypes, gc, io, json, sys
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pneumoscan.serving.app import create_app
app = create_app(sys.argv[1], backend="onnx")
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(f"PR_SET_MDWE refused (errno {ctypes.get_errno()}): this test needs Linux 6.3 or later")
film = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260), dtype=np.uint8)).save(film, "PNG")
dicom = open(sys.argv[2], "rb").read()
with TestClient(app, raise_server_exceptions=False) as c:
    post = lambda query: c.post("/v1/predict" + query, files={"file": ("film.png", film.getvalue(), "image/png")})
    answers = [post(query) for query in ("?heatmap=true", "?heatmap=map", "")]
    sr = [c.post("/v1/predict" + query, files={"file": ("film.dcm", dicom, "application/dicom")})
          for query in ("?format=dicom-sr&heatmap=true", "?format=dicom-sr")]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(c.get("/metrics").text) for s in f.samples}
    print(json.dumps({"answers": [[a.status_code, a.json()] for a in answers], "health": c.get("/healthz").json(),
                      "sr": [[a.status_code, a.headers["content-type"], a.content.hex()] for a in sr],
                      "failed": samples[("pneumoscan_refusals_total", (("reason", "heatmap_failed"),))],
                      "readings": sum(v for (n, _), v in samples.items() if n == "pneumoscan_readings_total")}),
      flush=True)
# then the commands that refuse to start under the policy, one after another: each its status and what it wrote on
# stderr (its traceback too)
import os, tempfile, traceback
from pneumoscan.cli import main
said = []
for args in json.loads(sys.argv[3]):
    with tempfile.TemporaryFile() as err:
        sys.stderr.flush()
        kept = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            status = main(args)
        except BaseException:
            status = None
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os.dup2(kept, 2)
            os.close(kept)
        err.seek(0)
        said.append((status, err.read().decode()))
print(json.dumps(said))
gc.freeze()  # as pneumoscan's entry: its exit walks no torch objects
"""


@pytest.fixture(scope="module")
def under_policy(film_sized_bundle: Path, module_tmp: Callable[[str], Path]) -> dict:
    """One interpreter (each cost its start and torch's import, seconds): a service proven at start, then put under
    the policy, as :data:`POLICY_AFTER_START` says; then under it `serve` with each backend and `predict --backend
    torch`, which must refuse to start, one after another. What the service answered, what it logged, and each
    command's status and stderr; one still running after 120 s (a service that started) fails the tests."""
    folder = module_tmp("under_policy")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260), dtype=np.uint8)).save(folder / "film.png")
    film = folder / "film.dcm"
    film.write_bytes(chest_film_dicom(np.random.default_rng(1).integers(0, 256, (300, 260), dtype=np.uint8)))
    commands = {f"serve {backend}": ["-q", "serve", str(film_sized_bundle), "--backend", backend, "--port",
                                     str(free_port())] for backend in ("torch", "onnx")}
    commands["predict"] = ["-q", "predict", str(film_sized_bundle), str(folder / "film.png"), "--backend", "torch",
                           "--out", str(folder / "results.csv")]
    try:
        done = subprocess.run([sys.executable, "-c", POLICY_AFTER_START, str(film_sized_bundle), str(film),
                               json.dumps(list(commands.values()))], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{list(commands)} were still running after 120 s under the policy: one did not refuse")
    assert done.returncode == 0, done.stderr
    *_, seen, refused = done.stdout.splitlines()
    said = dict(zip(commands, map(tuple, json.loads(refused))))
    said["predict's out"] = (folder / "results.csv").exists()
    return {"seen": json.loads(seen), "stderr": done.stderr, "refused": said}


def test_a_heatmap_that_fails_after_the_start_is_refused_with_its_films_reading(under_policy: dict) -> None:
    """It answered a bare 500 ("internal error") and lost the reading, while /healthz said ok: each heatmap is
    refused (500, heatmap_failed) with the reading of its film, which stands; the failure is logged once with its
    cause, counted in /metrics, and /healthz says degraded. An SR with its overlay is refused without the JSON
    reading (not the report asked for), saying to ask again without the heatmap, which answers the SR."""
    from pneumoscan.serving.service import HEATMAP_FAILED, HEATMAP_FAILED_SR, HEATMAPS_FAILING

    seen, stderr = under_policy["seen"], under_policy["stderr"]
    (with_overlay, its_type, its_body), (alone, sr_type, sr_body) = seen["sr"]
    assert (with_overlay, its_type) == (500, "application/json"), bytes.fromhex(its_body)
    assert json.loads(bytes.fromhex(its_body)) == {"error": HEATMAP_FAILED_SR.format("RuntimeError"),
                                                   "reason": "heatmap_failed"}
    assert (alone, sr_type) == (200, "application/dicom"), bytes.fromhex(sr_body)[:300]
    assert pydicom.dcmread(io.BytesIO(bytes.fromhex(sr_body))).Modality == "SR"
    (overlay, overlay_body), (bare, map_body), (plain, reading) = seen["answers"]
    assert (overlay, bare, plain) == (500, 500, 200), seen["answers"]
    for body in (overlay_body, map_body):
        assert body["error"] == HEATMAP_FAILED.format("RuntimeError") and body["reason"] == "heatmap_failed"
        assert body["reading"]["heatmap"] is None
        assert body["reading"]["label"] == reading["label"]
        assert body["reading"]["probability"] == pytest.approx(reading["probability"], abs=1e-6)
    assert seen["health"]["status"] == "degraded"
    assert seen["health"]["reason"] == HEATMAPS_FAILING.format("RuntimeError")
    assert (seen["failed"], seen["readings"]) == (3, 4)  # the SR refused gave no reading; the SR alone one
    logged = [line for line in stderr.splitlines() if "heatmaps fail: Grad-CAM raised RuntimeError" in line]
    assert len(logged) == 1 and "could not create a primitive" in logged[0], stderr
    assert "internal error" not in stderr
