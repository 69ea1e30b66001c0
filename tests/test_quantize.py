"""INT8 export: a quantised graph calibrated on training films, scores near FP32's, and its own thresholds."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from pneumoscan import cli
from pneumoscan.core.metrics import binary_metrics, choose_threshold
from pneumoscan.data.decode import read_gray
from tests.builders import labelled_images
from pneumoscan.data.layouts import discover, make_record, write_manifest
from pneumoscan.data.tasks import binary_targets, get_task
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.inference.export import ONNX_NAME
from pneumoscan.inference.onnx_runtime import INT8_NAME, model_version, spec_path
from pneumoscan.inference.predict import Predictor, predict_paths
from pneumoscan.interop.reports import write_reports
from pneumoscan.models.card import load_card
from pneumoscan.serving.app import create_app
from pneumoscan.training.quantize import quantize_bundle
from tests.builders import SCORE_TOL, as_run_split, dicom_bytes
from tests.conftest import _xray_like


def test_int8_graph_is_quantised_and_scores_near_fp32(int8_bundle: Path, tiny_dataset: Path) -> None:
    graph = onnx.load(str(int8_bundle / INT8_NAME))
    onnx.checker.check_model(graph)
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    fp32, int8 = (Predictor(int8_bundle, backend=b) for b in ("onnx", "onnx-int8"))
    files = sorted((tiny_dataset / "test").rglob("*.jpeg"))
    images = fp32.preprocess([read_gray(f) for f in files])
    p32, p8 = (p.positive_probability(p.probabilities(images)) for p in (fp32, int8))
    assert np.abs(p32 - p8).max() < 0.05, "INT8 approximates FP32"
    assert not np.allclose(p32, p8, atol=1e-7), "the INT8 backend really runs the quantised graph"


def test_int8_thresholds_are_chosen_on_int8_validation_scores(int8_bundle: Path, tiny_bundle: Path) -> None:
    sidecar = json.loads(spec_path(int8_bundle / INT8_NAME).read_text())
    int8 = Predictor(int8_bundle, backend="onnx-int8")
    assert int8.card.threshold == sidecar["int8_threshold"] and int8.card.tta_threshold == sidecar["int8_tta_threshold"]
    images, targets, _ = labelled_images(tiny_bundle.parent / "split.csv", "val", get_task("pneumonia"), int8.card.spec)
    y = binary_targets(targets)
    floor = int8.card.train_config["target_sensitivity"]
    expected = choose_threshold(y, int8.positive_probability(int8.probabilities(images)), floor)
    assert sidecar["int8_threshold"] == pytest.approx(expected, abs=SCORE_TOL)
    assert sidecar["validation_images"] == len(y) and 0 <= sidecar["val_auc_int8"] <= 1
    rows = predict_paths(int8_bundle, [tiny_bundle.parent.parent], backend="onnx-int8")
    assert rows and all(r["threshold"] == sidecar["int8_threshold"] for r in rows if "error" not in r)
    # its readings are near its own threshold by its own interval, from the INT8 scores too
    low, high = sidecar["int8_threshold_interval"]
    assert int8.card.threshold_interval == [low, high] and 0 <= low <= high <= 1
    assert all(r["near_threshold"] is (low <= r["probability"] <= high) for r in rows if "error" not in r)
    # where a reader of the sidecar reads them, and in MODEL_CARD.md's INT8 section: the INT8 intervals, not FP32's
    assert sidecar["threshold_interval"] == [low, high]
    assert sidecar["tta_threshold_interval"] == sidecar["int8_tta_threshold_interval"]
    int8_section = (int8_bundle / "MODEL_CARD.md").read_text().split("## INT8 model")[1].split("\n## ")[0]
    assert f"between {low:.4f} and {high:.4f}" in int8_section


def test_the_int8_validation_figures_carry_intervals_as_the_fp32_ones_do(int8_bundle: Path) -> None:
    """`--backend onnx-int8` shows its own validation figures (/v1/model's val_metrics, the web page's card): they
    came without ``ci``, ``ci_unit``, ``patients``, ``prevalence`` and ``ece``, which the FP32 model's carry and
    docs/api.md lists, so an INT8 sensitivity read as certain. They hold the same fields, at the INT8 threshold,
    on the same val films (here the run's, which chose the FP32 figures too), their intervals counting alike."""
    fp32, int8 = (Predictor(int8_bundle, backend=b).card.val_metrics for b in ("onnx", "onnx-int8"))
    assert set(int8) == set(fp32) and set(int8["ci"]) == set(fp32["ci"])
    assert [int8[key] for key in ("n", "patients", "prevalence", "ci_unit")] == [
        fp32[key] for key in ("n", "patients", "prevalence", "ci_unit")]
    sidecar = json.loads(spec_path(int8_bundle / INT8_NAME).read_text())
    assert int8["threshold"] == sidecar["int8_threshold"] and int8["auc"] == sidecar["val_auc_int8"]
    for key in ("sensitivity", "specificity"):
        low, high = int8["ci"][key]
        assert low <= int8[key] <= high
    int8_section = (int8_bundle / "MODEL_CARD.md").read_text().split("## INT8 model")[1].split("\n## ")[0]
    assert f"sensitivity {int8['sensitivity']:.3f} (95% CI {int8['ci']['sensitivity'][0]:.3f}-" in int8_section


def test_the_int8_sidecar_gives_the_int8_thresholds_where_onnx_users_read_them(int8_bundle: Path) -> None:
    """An ONNX user reads ``threshold``: it must be the one validated for the INT8 scores, not FP32's, at which a film
    between the two thresholds gets the other label."""
    sidecar = json.loads(spec_path(int8_bundle / INT8_NAME).read_text())
    card = load_card(int8_bundle)
    assert (sidecar["threshold"], sidecar["tta_threshold"]) == (sidecar["int8_threshold"],
                                                                sidecar["int8_tta_threshold"])
    assert sidecar["threshold"] != card.threshold and sidecar["tta_threshold"] != card.tta_threshold
    fp32 = json.loads(spec_path(int8_bundle / ONNX_NAME).read_text())
    assert (fp32["threshold"], fp32["tta_threshold"]) == (card.threshold, card.tta_threshold)
    int8 = Predictor(int8_bundle, backend="onnx-int8")
    assert (int8.threshold(), int8.threshold(tta=True)) == (sidecar["threshold"], sidecar["tta_threshold"])


def test_int8_backend_refuses_a_missing_or_stale_model(int8_bundle: Path, tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(int8_bundle, plain, ignore=shutil.ignore_patterns("model.int8.onnx*"))
    assert cli.main(["predict", str(plain), str(plain), "--backend", "onnx-int8"]) == 2
    assert "has no validated model.int8.onnx" in capsys.readouterr().err
    stale = tmp_path / "stale"
    shutil.copytree(int8_bundle, stale)
    sidecar = spec_path(stale / INT8_NAME)
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "weights_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="other weights"):
        Predictor(stale, backend="onnx-int8")
    figureless = tmp_path / "figureless"  # no INT8 validation figures: the service would show the FP32 model's
    shutil.copytree(int8_bundle, figureless)
    sidecar = spec_path(figureless / INT8_NAME)
    sidecar.write_text(json.dumps({k: v for k, v in json.loads(sidecar.read_text()).items()
                                   if k != "int8_val_metrics"}))
    with pytest.raises(ValueError, match="has no validated model.int8.onnx"):
        Predictor(figureless, backend="onnx-int8")
    listed = tmp_path / "listed"  # a sidecar that is JSON but not an object had crashed with an AttributeError
    shutil.copytree(int8_bundle, listed)
    spec_path(listed / INT8_NAME).write_text("[]")
    with pytest.raises(ValueError, match="has no validated model.int8.onnx"):
        Predictor(listed, backend="onnx-int8")


def test_the_int8_remedy_names_the_runs_own_split(int8_bundle: Path, tmp_path: Path) -> None:
    """A bundle in its run folder (RUN/bundle beside RUN/split.csv) is told the command with that split, not a
    placeholder to fill in; elsewhere the placeholder stays."""
    run = tmp_path / "run"
    shutil.copytree(int8_bundle, run / "bundle", ignore=shutil.ignore_patterns("model.int8.onnx*"))
    with pytest.raises(ValueError, match=r"--int8 --data RUN/split.csv`$"):
        Predictor(run / "bundle", backend="onnx-int8")
    (run / "split.csv").write_text("path,label,split\n")
    with pytest.raises(ValueError, match=f"--int8 --data {re.escape(str(run / 'split.csv'))}`$"):
        Predictor(run / "bundle", backend="onnx-int8")


def test_int8_needs_labelled_train_and_val_films(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    assert cli.main(["export", str(bundle), "--int8"]) == 2
    assert "give labelled films with train and val splits (--data) or the cv runs" in capsys.readouterr().err
    assert cli.main(["export", str(bundle), "--int8", "--data", str(tiny_dataset / "test")]) == 2
    # a folder of NORMAL/ and PNEUMONIA/ films: said to have no splits, not to hold "no images"
    err = capsys.readouterr().err
    assert "needs labelled films in train and val splits" in err and "has no train or val split" in err
    assert not (bundle / INT8_NAME).exists()
    elsewhere = tmp_path / "model.int8.onnx"  # --out would be silently ignored: the INT8 model lives in the bundle
    assert cli.main(["export", str(bundle), "--int8", "--data", str(tiny_bundle.parent / "split.csv"),
                     "--out", str(elsewhere)]) == 2
    assert "--int8 writes BUNDLE/model.int8.onnx" in capsys.readouterr().err
    assert not elsewhere.exists() and not (bundle / INT8_NAME).exists()


def test_int8_thresholds_follow_the_policy_in_force(tiny_bundle: Path, tmp_path: Path) -> None:
    """A bundle whose threshold `pneumoscan threshold` chose by a false-positive ceiling gets its INT8 thresholds by
    that ceiling too, not by training's sensitivity target."""
    split = tiny_bundle.parent / "split.csv"
    new = tmp_path / "fpr"
    assert cli.main(["threshold", str(tiny_bundle), str(split), "--split", "val", "--max-false-positive-rate", "0.5",
                     "--out", str(new)]) == 0
    assert cli.main(["export", str(new), "--int8", "--data", str(split)]) == 0
    int8 = Predictor(new, backend="onnx-int8")
    assert int8.card.threshold_targets == (None, 0.5)
    images, targets, _ = labelled_images(split, "val", get_task("pneumonia"), int8.card.spec)
    expected = choose_threshold(binary_targets(targets), int8.positive_probability(int8.probabilities(images)),
                                None, 0.5)
    assert int8.card.threshold == pytest.approx(expected, abs=SCORE_TOL)


def test_int8_thresholds_are_not_chosen_on_other_films_than_the_sites_threshold(tiny_bundle: Path, tiny_dataset: Path,
                                                                                tmp_path: Path, capsys) -> None:
    """`threshold` on a site's films, then `export --int8 --data` the run's split: the INT8 thresholds came from the
    run's val films, another population, and on the site missed twice the pneumonia films. Refused with the order
    that works: quantise, then choose the threshold, which chooses the INT8 ones on the same films."""
    site = tmp_path / "site.csv"
    write_manifest([dataclasses.replace(r, split="") for r in discover(tiny_dataset).split("test")], site)
    new = tmp_path / "site-bundle"
    assert cli.main(["threshold", str(tiny_bundle), str(site), "--youden", "--out", str(new)]) == 0
    assert cli.main(["export", str(new), "--int8", "--data", str(tiny_bundle.parent / "split.csv")]) == 2
    assert "its INT8 thresholds would be chosen on the val films of" in capsys.readouterr().err
    assert not (new / INT8_NAME).exists()


def test_the_model_card_gives_the_int8_models_own_thresholds(int8_bundle: Path, tiny_bundle: Path,
                                                              tmp_path: Path) -> None:
    """MODEL_CARD.md had stayed byte for byte as before export --int8: "In force" named the FP32 threshold only,
    while --backend onnx-int8 labelled at its own; `threshold` chooses both again, and the card follows."""
    for bundle in (int8_bundle, tmp_path / "fpr"):
        if bundle != int8_bundle:
            assert cli.main(["threshold", str(int8_bundle), str(tiny_bundle.parent / "split.csv"), "--split", "val",
                             "--max-false-positive-rate", "0.5", "--out", str(bundle)]) == 0
        sidecar = json.loads(spec_path(bundle / INT8_NAME).read_text())
        card = (bundle / "MODEL_CARD.md").read_text()
        assert "## INT8 model" in card and f"**{sidecar['threshold']:.4f}** ({sidecar['threshold_policy']})" in card
    assert "false-positive rate <= 0.5" in sidecar["threshold_policy"]


def test_quantising_leaves_the_root_logger_as_it_was(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's quantiser gave the root logger a stderr handler of its own: with the command line's, every
    message after quantisation was printed twice (pytest's own handlers hide it, so the root starts bare here)."""
    import logging

    from pneumoscan.training.quantize import _int8_graph

    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    # activations this small make the quantiser widen bias scales, which it reports through logging.info()
    batch = np.random.default_rng(0).normal(0, 1e-6, (4, 1, *[load_card(tiny_bundle).size] * 2)).astype(np.float32)
    assert _int8_graph(tiny_bundle / ONNX_NAME, [batch])
    assert logging.getLogger().handlers == []


def test_the_calibration_runs_with_the_threads_of_every_other_session(tiny_bundle: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """quantize_static calibrated in a session of its own with ONNX Runtime's default threads (one a physical core
    of the machine, whatever affinity or a CPU quota allow), not model_threads() as every other session: in a pod
    limited to 2 CPUs on a 32-core node, 16 threads. Every session that scores films while quantising takes it, and
    so does every session made while quantising: quant_pre_process optimised the graph in one of ONNX Runtime's
    default threads (under ``taskset -c 0`` on 2 cores it started a second thread)."""
    import onnxruntime as ort

    from pneumoscan.core.cpus import model_threads
    from pneumoscan.training.quantize import _int8_graph

    ran, run, made, make = [], ort.InferenceSession.run, [], ort.InferenceSession.__init__

    def counted(self: ort.InferenceSession, *args: object, **kwargs: object) -> object:
        ran.append(self.get_session_options().intra_op_num_threads)
        return run(self, *args, **kwargs)

    def sized(self: ort.InferenceSession, *args: object, **kwargs: object) -> None:
        make(self, *args, **kwargs)
        made.append(self.get_session_options().intra_op_num_threads)

    monkeypatch.setattr(ort.InferenceSession, "run", counted)
    monkeypatch.setattr(ort.InferenceSession, "__init__", sized)
    batch = np.random.default_rng(0).normal(0, 1, (4, 1, *[load_card(tiny_bundle).size] * 2)).astype(np.float32)
    assert _int8_graph(tiny_bundle / ONNX_NAME, [batch, batch])
    assert ran and set(ran) == {model_threads()}, ran
    assert len(made) >= 2 and set(made) == {model_threads()}, made


@pytest.mark.parametrize("flags", [["--data", "split.csv"], ["--cv", "cv"], ["--calibration-images", "50"]])
def test_int8_settings_without_int8_are_refused(tiny_bundle: Path, flags: list[str], tmp_path: Path, capsys) -> None:
    """They had been ignored: the plain export was written, exit 0, and no INT8 model."""
    out = tmp_path / "unused.onnx"
    assert cli.main(["export", str(tiny_bundle), *flags, "--out", str(out)]) == 2
    assert f"{flags[0]} only with --int8" in capsys.readouterr().err and not out.exists()


def test_int8_thresholds_on_too_few_positives_are_said_to_be_guesses(
        tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`threshold` warned that a sensitivity of 0.95 cannot be shown on fewer than 20 positive films; export --int8
    chose the thresholds in force for onnx-int8 by the same policy on as few, and said nothing."""
    split = tiny_bundle.parent / "split.csv"
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    positives = sum(1 for line in split.read_text().splitlines() if ",PNEUMONIA," in line and line.endswith(",val"))
    assert 0 < positives < 20
    with caplog.at_level("WARNING"):
        assert cli.main(["export", str(bundle), "--int8", "--data", str(split)]) == 0
    assert f"only {positives} positive films: a sensitivity of 0.95 cannot be shown on fewer than 20" in caplog.text


def test_figures_on_the_films_that_chose_the_int8_thresholds_are_said_to_be_optimistic(int8_bundle: Path,
                                                                                       tiny_bundle: Path,
                                                                                       tmp_path: Path) -> None:
    """`export --int8 --data` lists the films that chose the INT8 thresholds: `evaluate --backend onnx-int8` on them
    says its figures are optimistic (they had been reported as independent, sensitivity exactly its target)."""
    val = [r for r in discover(tiny_bundle.parent / "split.csv").records if r.split == "val"]
    write_manifest([dataclasses.replace(r, split="") for r in val], tmp_path / "val.csv")
    sidecar = json.loads(spec_path(int8_bundle / INT8_NAME).read_text())
    assert sidecar["threshold_policy"].endswith("on the val films of split.csv")  # no path: the service shows it
    assert sidecar["int8_thresholds_chosen_on"] == f"the val films of {tiny_bundle.parent / 'split.csv'}"
    optimistic = evaluate(int8_bundle, tmp_path / "val.csv", backend="onnx-int8")["optimistic"]
    assert (f"{len(val)} film(s) given to evaluate chose {int8_bundle}'s INT8 threshold (int8_calibration_films.csv): "
            "the figures on them are optimistic") in optimistic, optimistic


def test_int8_thresholds_are_chosen_on_the_films_that_chose_the_fp32_ones(tiny_bundle: Path, tiny_dataset: Path,
                                                                           tmp_path: Path, capsys) -> None:
    """A trained bundle's FP32 thresholds were chosen on its run's val films; `export --int8 --data` took any val
    split (films the model never saw, or half of its own), so the INT8 thresholds, which replace the FP32 ones for
    onnx-int8, came from another population. Refused, naming the run's split.csv; the same films are accepted."""
    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run")  # the bundle with its run's split.csv beside it
    records = discover(run / "split.csv").records
    trained, val = [r for r in records if r.split == "train"], [r for r in records if r.split == "val"]
    new = [dataclasses.replace(r, split="val") for r in discover(tiny_dataset).split("test")]
    for name, given in (("new", new), ("half", val[::2])):
        write_manifest([*trained, *given], tmp_path / f"{name}.csv")
        assert cli.main(["export", str(run / "bundle"), "--int8", "--data", str(tmp_path / f"{name}.csv")]) == 2
        err = capsys.readouterr().err
        assert "thresholds were chosen on the val films of its run's" in err and f"--data {run / 'split.csv'}" in err
        assert not (run / "bundle" / INT8_NAME).exists()
    write_manifest([*reversed(val), *trained], tmp_path / "same.csv")  # the same films, listed otherwise
    assert cli.main(["export", str(run / "bundle"), "--int8", "--data", str(tmp_path / "same.csv")]) == 0


def test_int8_thresholds_are_refused_on_films_the_model_trained_on(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    """A manifest whose val split is the run's training films would choose the INT8 threshold on scores that are
    too good: refused before anything is quantised, naming a film."""
    import dataclasses

    from pneumoscan.data.layouts import discover, write_manifest

    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run")  # the bundle with its run's split.csv beside it
    swapped = [dataclasses.replace(r, split={"train": "val", "val": "train"}.get(r.split, r.split))
               for r in discover(run / "split.csv").records]
    write_manifest(swapped, tmp_path / "swapped.csv")
    assert cli.main(["-q", "export", str(run / "bundle"), "--int8", "--data", str(tmp_path / "swapped.csv")]) == 2
    err = capsys.readouterr().err
    assert "films given to choose the INT8 thresholds were in" in err and "training split" in err, err
    assert not (run / "bundle" / INT8_NAME).exists()


def test_results_read_with_the_int8_model_name_it(int8_bundle: Path, tiny_bundle: Path, tiny_dataset: Path,
                                                  data_root: Path, tmp_path: Path) -> None:
    """Its scores and thresholds are its own: a web answer and a report say which model made them."""
    plain, int8 = model_version(int8_bundle), model_version(int8_bundle, "onnx-int8")
    assert int8.startswith(plain + "+int8:") and len(int8) == len(plain) + len("+int8:") + 12
    # predict's rows too: a results file parted from its command line still says which model scored it
    film = next((data_root / "val" / "NORMAL").glob("*.jpeg"))
    rows = [predict_paths(int8_bundle, [film], backend=b)[0] for b in ("onnx", "onnx-int8")]
    assert [(r["model_id"], r["model_version"]) for r in rows] == [(load_card(int8_bundle).model_id, v)
                                                                   for v in (plain, int8)]
    with TestClient(create_app(int8_bundle, backend="onnx-int8")) as client:
        info = client.get("/v1/model").json()
    assert info["version"] == int8
    # the figures beside its threshold are its own, at that threshold: not FP32's, at FP32's threshold
    predictor = Predictor(int8_bundle, backend="onnx-int8")
    images, targets, _ = labelled_images(tiny_bundle.parent / "split.csv", "val", get_task("pneumonia"),
                                         predictor.card.spec)
    y, scores = binary_targets(targets), predictor.positive_probability(predictor.probabilities(images))
    at = binary_metrics(y, scores, info["threshold"])
    assert info["val_metrics"]["threshold"] == info["threshold"] != load_card(int8_bundle).threshold
    for key in ("sensitivity", "specificity", "accuracy", "n"):
        assert info["val_metrics"][key] == pytest.approx(at[key]), key
    assert info["val_metrics"]["auc"] == pytest.approx(roc_auc_score(y, scores))
    evaluated = tmp_path / "evaluated"
    shutil.copytree(int8_bundle, evaluated)
    evaluate(evaluated, tiny_dataset, "test", add_to_card=True, data_name="test")
    assert load_card(evaluated).external_evaluations, "recorded for the FP32 model"
    assert Predictor(evaluated, backend="onnx-int8").card.external_evaluations == [], "not shown as the INT8 model's"
    film = tmp_path / "film.dcm"  # a DICOM radiograph: an Observation needs the film's study and instance
    gray = read_gray(sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0])
    film.write_bytes(dicom_bytes(gray.astype(np.uint16) * 16, StudyInstanceUID=generate_uid(),
                                 SeriesInstanceUID=generate_uid(), PatientID="P1"))
    rows = predict_paths(int8_bundle, [film], backend="onnx-int8")
    write_reports(rows, int8_bundle, fhir_dir=tmp_path / "fhir", backend="onnx-int8")
    assert f'"{int8}"' in Path(rows[0]["fhir"]).read_text()


def test_evaluate_scores_the_int8_model_at_its_own_threshold(int8_bundle: Path, tiny_dataset: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    """`evaluate --backend onnx-int8` measures what `predict --backend onnx-int8` serves, in its own folder, and
    never records it in the card (whose figures are the FP32 model's)."""
    int8_bundle = shutil.copytree(int8_bundle, tmp_path / "bundle")  # evaluate writes its folder beside the bundle
    assert cli.main(["evaluate", str(int8_bundle), str(tiny_dataset), "--split", "test", "--backend", "onnx-int8"]) == 0
    out = int8_bundle.parent / "eval-chest_xray-test-int8"
    metrics = json.loads((out / "metrics.json").read_text())
    int8 = Predictor(int8_bundle, backend="onnx-int8")
    images, targets, _ = labelled_images(tiny_dataset, "test", get_task("pneumonia"), int8.card.spec)
    y, scores = binary_targets(targets), int8.positive_probability(int8.probabilities(images))
    assert (metrics["backend"] == "onnx-int8"
            and metrics["threshold"] == int8.threshold() != load_card(int8_bundle).threshold)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, scores))
    at = binary_metrics(y, scores, int8.threshold())
    assert [metrics[k] for k in ("sensitivity", "specificity")] == pytest.approx([at["sensitivity"], at["specificity"]])
    capsys.readouterr()
    assert cli.main(["evaluate", str(int8_bundle), str(tiny_dataset), "--split", "test", "--backend", "onnx-int8",
                     "--add-to-card"]) == 2
    assert "FP32 model" in capsys.readouterr().err and not load_card(int8_bundle).external_evaluations


def test_heatmaps_are_refused_with_the_int8_backend(int8_bundle: Path, data_root: Path, tmp_path: Path) -> None:
    """Grad-CAM draws the FP32 model, which read a validation film NORMAL that the INT8 model read PNEUMONIA: a map
    beside an INT8 reading would explain another model than the reading."""
    film = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]
    with pytest.raises(ValueError, match="heatmaps come from the FP32 model"):
        predict_paths(int8_bundle, [film], backend="onnx-int8", heatmap_dir=tmp_path / "maps")
    assert not (tmp_path / "maps").exists()
    with TestClient(create_app(int8_bundle, backend="onnx-int8")) as client:
        post = lambda **q: client.post("/v1/predict", params=q,
                                       files={"file": ("f.jpeg", film.read_bytes(), "image/jpeg")})
        refused = post(heatmap="true")
        assert refused.status_code == 422 and "heatmaps come from the FP32 model" in refused.json()["error"]
        assert post().status_code == 200  # the reading itself is the INT8 model's, as ever


def test_an_interrupted_int8_export_leaves_the_earlier_one_whole(int8_bundle: Path, tiny_bundle: Path,
                                                                   tiny_dataset: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The INT8 graph had been written under its name before its thresholds were chosen or its AUC checked: an
    interruption between the two left a graph no figure was measured on beside the earlier export's sidecar."""
    from pneumoscan.training import quantize

    bundle = tmp_path / "bundle"
    shutil.copytree(int8_bundle, bundle)
    before = {name: (bundle / name).read_bytes() for name in (INT8_NAME, spec_path(bundle / INT8_NAME).name)}

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "choose_operating_point", interrupted)  # Ctrl-C while the thresholds are chosen
    with pytest.raises(KeyboardInterrupt):
        # fewer calibration films than the earlier export: another graph, which must not replace that one
        quantize.quantize_bundle(bundle, tiny_bundle.parent / "split.csv", calibration_images=4)
    assert {name: (bundle / name).read_bytes() for name in before} == before
    film = next((tiny_dataset / "test").rglob("*.jpeg"))
    [row] = predict_paths(bundle, [film], backend="onnx-int8")  # the earlier export still reads
    assert "label" in row, row


def test_a_touched_int8_bundle_stays_ok_in_the_health_probe(int8_bundle: Path, tmp_path: Path) -> None:
    """/healthz compared the card on disk with the one the INT8 Predictor carries (the sidecar's threshold and
    figures), so a chmod or a backup tool's touch of bundle.json read as a bundle replaced."""
    bundle = tmp_path / "bundle"
    shutil.copytree(int8_bundle, bundle)
    with TestClient(create_app(bundle, backend="onnx-int8")) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        (bundle / "bundle.json").chmod(0o600)
        (bundle / "bundle.json").touch()
        assert client.get("/healthz").json()["status"] == "ok"


def _typed_chest(rng: np.random.Generator, kind: str) -> np.ndarray:
    """tiny_dataset's synthetic chest, with consolidation in the left lung for bacteria and in the right for virus:
    tiny_dataset's pneumonia films differ in neither, so a model of it cannot tell them apart at all, and an INT8
    model that swaps the two would lose nothing that a macro AUC could see."""
    img = _xray_like(rng, 64, sick=False) / 255.0
    if kind != "normal":
        yy, xx = np.mgrid[0:64, 0:64] / 64
        low, high = (0.22, 0.42) if kind == "bacteria" else (0.58, 0.78)
        for _ in range(3):
            cx, cy = rng.uniform(low, high), rng.uniform(0.35, 0.65)
            img += 0.8 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.01)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def multiclass_run(tiny_multiclass_bundle: Path) -> Path:
    """The session's tiny multiclass run (simple_cnn, 32 px, on the typed dataset, whose bacteria and virus differ):
    the tests export into a copy of it."""
    return tiny_multiclass_bundle.parent


@pytest.fixture(scope="module")
def multiclass_int8(tiny_multiclass_bundle: Path, module_tmp: Callable[[str], Path]) -> Path:
    """A copy of the session's tiny multiclass run whose bundle has its INT8 model (`export --int8 --data` its
    split.csv), for the tests that only read it: one export, not one a test."""
    run = shutil.copytree(tiny_multiclass_bundle.parent, module_tmp("multiclass-int8") / "run")
    assert cli.main(["export", str(run / "bundle"), "--int8", "--data", str(run / "split.csv")]) == 0
    return run


def _swap_bacteria_and_virus(graph: bytes) -> bytes:
    """The graph with its bacteria and virus outputs exchanged: P(normal), and so the AUC of pneumonia against
    normal, stay as they were."""
    model = onnx.load_from_string(graph)
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{out}_unswapped" if name == out else name for name in node.output]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0, 2, 1], np.int64), "swapped_classes"))
    model.graph.node.append(onnx.helper.make_node("Gather", [f"{out}_unswapped", "swapped_classes"], [out], axis=1))
    return model.SerializeToString()


def test_a_multiclass_int8_model_is_checked_on_its_macro_auc_too(multiclass_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """The sidecar holds the FP32 and INT8 macro AUC of the three classes on the val films, as evaluate measures
    it, and the command prints it beside the AUC of pneumonia against normal."""
    from sklearn.metrics import roc_auc_score

    run = shutil.copytree(multiclass_run, tmp_path / "run")
    assert cli.main(["export", str(run / "bundle"), "--int8", "--data", str(run / "split.csv")]) == 0
    sidecar = json.loads(spec_path(run / "bundle" / INT8_NAME).read_text())
    three = sidecar["int8_three_class"]
    fp32, int8 = (Predictor(run / "bundle", backend=b) for b in ("onnx", "onnx-int8"))
    images, targets, _ = labelled_images(run / "split.csv", "val", get_task("multiclass"), fp32.card.spec)
    expected = [roc_auc_score(targets, p.probabilities(images), multi_class="ovr", average="macro")
                for p in (fp32, int8)]
    assert [three["macro_auc_fp32"], three["macro_auc_int8"]] == pytest.approx(expected, abs=SCORE_TOL)
    assert (three["n"], three["films"]) == (sidecar["validation_images"], f"the val films of {run / 'split.csv'}")
    assert (f"macro AUC {three['macro_auc_int8']:.4f} (FP32 {three['macro_auc_fp32']:.4f})"
            in capsys.readouterr().out)


def test_an_int8_model_that_mixes_up_bacteria_and_virus_is_refused(multiclass_run: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """A damaged INT8 graph that swaps bacteria and virus keeps the AUC of pneumonia against normal, which was all
    export --int8 checked: it was written, and onnx-int8 would have served its swapped classes."""
    from pneumoscan.training import quantize

    run = shutil.copytree(multiclass_run, tmp_path / "run")
    quantized = quantize._int8_graph
    monkeypatch.setattr(quantize, "_int8_graph", lambda *args: _swap_bacteria_and_virus(quantized(*args)))
    assert cli.main(["export", str(run / "bundle"), "--int8", "--data", str(run / "split.csv")]) == 2
    err = capsys.readouterr().err
    # the AUC of pneumonia against normal, checked first, let it through: the three classes' macro AUC did not
    assert "INT8 validation macro AUC (normal, bacteria, virus) " in err and "below FP32's" in err, err
    assert "--backend onnx" in err and not (run / "bundle" / INT8_NAME).exists()


def test_int8_threshold_intervals_count_copies_of_a_film_as_one_patient(int8_bundle: Path, tiny_bundle: Path,
                                                                        tmp_path: Path) -> None:
    """Validation films filed again under other patient ids are one child's each: the INT8 thresholds' intervals
    count a film and its copy as one patient, as the FP32 thresholds' do (they counted two). An export takes no val
    films but its run's, so the copies go to the scoring it runs on them (``_int8_scores_on_val``)."""
    from pneumoscan.core.metrics import threshold_interval
    from pneumoscan.data.labelled import labelled_films
    from pneumoscan.training import quantize

    records = discover(tiny_bundle.parent / "split.csv").records
    (tmp_path / "again").mkdir()
    again = []
    for i, film in enumerate(r for r in records if r.split == "val"):
        copy = shutil.copyfile(film.path, tmp_path / "again" / f"{i}-{Path(film.path).name}")
        again.append(dataclasses.replace(film, path=str(copy), patient=f"again-{i}"))
    manifest = tmp_path / "split.csv"
    write_manifest([*records, *again], manifest)
    int8 = Predictor(int8_bundle, backend="onnx-int8")
    val = labelled_films(manifest, "val", int8.task, int8.card.spec)
    films = val.records
    reference = Predictor(int8_bundle, backend="onnx").probabilities(val.images)
    scored = quantize._int8_scores_on_val(int8, reference, manifest, val)
    assert len(set(scored.groups)) == len(films) // 2 == len(again)
    y, scores, policy = scored.y, int8.positive_probability(scored.probs), int8.card.threshold_targets
    # the films counted alone give another interval here: the test tells the two apart
    assert threshold_interval(y, scores, *policy, scored.groups) != pytest.approx(
        threshold_interval(y, scores, *policy, [r.patient for r in films]), abs=SCORE_TOL)


def test_a_bundle_copied_out_of_its_run_takes_only_its_runs_films(tiny_bundle: Path, tiny_dataset: Path,
                                                                  tmp_path: Path) -> None:
    """A bundle copied without its run's split.csv was only warned of, and its INT8 thresholds were chosen on any
    val split: its own training films (AUC 1.0, a threshold for a sensitivity target too high) or another
    population's. Refused unless --data is its run's split, told by the card's data checksum (int8_bundle, a copy
    given its run's split.csv, is taken)."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    trained = [r for r in discover(tiny_bundle.parent / "split.csv").records if r.split == "train"]
    new = [dataclasses.replace(r, split="val") for r in discover(tiny_dataset).split("test")]
    own = [dataclasses.replace(r, split="val" if i % 3 == 0 else "train") for i, r in enumerate(trained)]
    for name, films in (("own-training-films", own), ("new", [*trained, *new])):
        write_manifest(films, tmp_path / "data" / f"{name}.csv")
        with pytest.raises(ValueError, match=r"has no split.csv of its run beside it \(copied out of its run "
                                             r"folder\?\), and the films of .* are not the ones it was trained and "
                                             r"validated on"):
            quantize_bundle(bundle, tmp_path / "data" / f"{name}.csv")
        assert not (bundle / INT8_NAME).exists()


def test_a_bundle_beside_another_runs_split_takes_its_own_runs_split(tiny_bundle: Path, tiny_dataset: Path,
                                                                      tmp_path: Path) -> None:
    """A bundle copied into a folder holding another split.csv (one `pneumoscan split` wrote there) took that split for
    its run's: given its own run's split.csv, it was refused as chosen "on the val films of its run's" other split,
    which it was told to give instead. The split beside it is not the file its card recorded, so --data its run's
    split, proved by the card's data checksum, is taken, and the other split is refused as not its run's."""
    from tests.test_held_out import _beside_a_strangers_split

    bundle = _beside_a_strangers_split(tiny_bundle, tiny_dataset, tmp_path / "elsewhere")
    quantize_bundle(bundle, tiny_bundle.parent / "split.csv")
    assert (bundle / INT8_NAME).exists()
    with pytest.raises(ValueError, match=r"has no split.csv of its run beside it"):
        quantize_bundle(bundle, bundle.parent / "split.csv")


def test_int8_lists_data_once(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`export --int8 --data` of a bundle copied out of its run, given its run's split.csv, listed DATA five times:
    for its sides, its val films, the proof that it is the run's split, the held-out check against that split and
    its train films. It lists it once, and the INT8 model is made as before. Of a bundle in its run, given the
    split.csv beside it, it listed it six times (the check that its val films chose the FP32 thresholds twice, not
    the proof), then twice (the held-out check listing the split beside the bundle): once."""
    from pneumoscan.data import labelled
    from pneumoscan.evaluation import held_out
    from pneumoscan.models import card as card_module
    from pneumoscan.training import quantize

    bundle, split = shutil.copytree(tiny_bundle, tmp_path / "bundle"), tiny_bundle.parent / "split.csv"
    listed = []
    for module in (quantize, labelled, card_module, held_out):
        monkeypatch.setattr(module, "discover", lambda data, *a, **k: listed.append(Path(data))
                            or discover(data, *a, **k))
    quantize_bundle(bundle, split)
    assert (bundle / INT8_NAME).exists() and listed.count(split) == 1, listed
    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run")
    listed.clear()
    quantize_bundle(run / "bundle", run / "split.csv")
    assert (run / "bundle" / INT8_NAME).exists() and listed.count(run / "split.csv") == 1, listed


@pytest.mark.parametrize("where", ["run", "copied"])
def test_int8_decodes_each_film_once(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     where: str) -> None:
    """`export --int8 --data RUN/split.csv` decoded each film of the run twice for its image caches: its val films
    for their cache and again for the check that they are the films the bundle was made on (all of the run's films,
    by the card's data checksum: the proof that DATA is a copied bundle's run split, or the check of the split
    beside a bundle in its run), its train films for theirs and again for that check. Once, into one cache of the
    run's films (the one its training built, on the machine it trained on), counted at the reader the registry
    hands each film to, from an empty image cache."""
    from pneumoscan.data import readers

    bundle = (shutil.copytree(tiny_bundle.parent, tmp_path / "run") / "bundle" if where == "run"
              else shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    split = bundle.parent / "split.csv" if where == "run" else tiny_bundle.parent / "split.csv"
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    target, pillow = load_card(bundle).spec.decode_target, next(r for r in readers.registered() if r.name == "Pillow")
    decoded, gray = [], pillow.gray

    def counted(src: Path | bytes, at: int | None) -> np.ndarray:
        if at == target:  # a film decoded for the model's input (a copy's check decodes it at its own side)
            decoded.append(str(src))
        return gray(src, at)

    monkeypatch.setattr(pillow, "gray", counted)
    quantize_bundle(bundle, split)
    films = [r.path for r in discover(split).records]
    assert (bundle / INT8_NAME).exists() and Counter(decoded) == Counter(films)


def test_int8_thresholds_are_refused_on_run_films_rewritten_in_place(tiny_bundle: Path, tmp_path: Path) -> None:
    """The run's split.csv names its films by path: a val film rewritten in place (or another machine's file under
    the same path) passed the check, and the INT8 thresholds were chosen on other films than the FP32 ones."""
    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run")
    records = discover(run / "split.csv").records
    moved = []
    for i, r in enumerate(records):  # the run's films copied where this test may change them
        moved.append(dataclasses.replace(r, path=str(shutil.copyfile(r.path, tmp_path / f"{i}-{Path(r.path).name}"))))
    write_manifest(moved, run / "split.csv")  # the same films elsewhere: still the ones it was made on
    as_run_split(run / "bundle")
    val = next(r for r in moved if r.split == "val")
    Image.open(val.path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(val.path)
    with pytest.raises(ValueError, match=r"lists have other pixels or labels than .* was trained and validated on"):
        quantize_bundle(run / "bundle", run / "split.csv")
    assert not (run / "bundle" / INT8_NAME).exists()


def test_int8_thresholds_are_refused_on_copies_of_training_films(tiny_bundle: Path, tmp_path: Path) -> None:
    """A training film copied under another name into the val split was only warned of, and the INT8 thresholds
    were chosen on its too-good score, as `threshold` and `ensemble --data` refuse to choose theirs: refused
    before anything is quantised, as they refuse it."""
    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run")
    records = discover(run / "split.csv").records
    trained = next(r for r in records if r.split == "train")
    copy = tmp_path / "elsewhere" / "copy.png"
    copy.parent.mkdir()
    shutil.copy(trained.path, copy)
    write_manifest([*records, dataclasses.replace(trained, path=str(copy), patient="other", split="val")],
                   tmp_path / "copied.csv")
    with pytest.raises(ValueError, match=r"1 of the films given to choose the INT8 thresholds are copies of training "
                                         r"films under other names"):
        quantize_bundle(run / "bundle", tmp_path / "copied.csv")
    assert not (run / "bundle" / INT8_NAME).exists()


def test_a_multiclass_int8_model_shows_its_three_class_figures_as_fp32_does(multiclass_int8: Path) -> None:
    """`--backend onnx-int8`'s validation figures (/v1/model's val_metrics, MODEL_CARD.md's INT8 section) lacked the
    ``three_class_*`` figures the FP32 model's carry: a reader of the INT8 card learnt only the positive call's,
    never how often the most probable of the three classes was right. They are the INT8 model's, on its val films."""
    from pneumoscan.core.metrics import evaluate_multiclass

    run = multiclass_int8
    bundle = run / "bundle"
    with TestClient(create_app(bundle, backend="onnx-int8")) as client:
        shown = client.get("/v1/model").json()["val_metrics"]
    fp32 = load_card(bundle).val_metrics
    three = [key for key in fp32 if key.startswith("three_class_")]
    assert three and set(shown) == set(fp32), set(fp32) ^ set(shown)
    int8 = Predictor(bundle, backend="onnx-int8")
    images, targets, _ = labelled_images(run / "split.csv", "val", int8.task, int8.card.spec)
    block = evaluate_multiclass(targets, int8.probabilities(images), int8.task.classes)
    assert [shown[key] for key in three] == pytest.approx([block[key.removeprefix("three_class_")] for key in three],
                                                          abs=SCORE_TOL)
    sidecar = json.loads(spec_path(bundle / INT8_NAME).read_text())
    assert shown["three_class_macro_auc"] == pytest.approx(sidecar["int8_three_class"]["macro_auc_int8"])
    section = (bundle / "MODEL_CARD.md").read_text().split("## INT8 model")[1].split("\n## ")[0]
    assert f"balanced accuracy, three classes {shown['three_class_balanced_accuracy']:.4f};" in section, section
    assert f"macro one-vs-rest ROC AUC, three classes {shown['three_class_macro_auc']:.4f};" in section, section


def test_threshold_measures_a_multiclass_int8_models_macro_auc_on_its_own_films(multiclass_int8: Path,
                                                                                  tmp_path: Path) -> None:
    """`threshold` chose the INT8 thresholds and measured the INT8 figures again on its films, but left the sidecar's
    ``int8_three_class`` block (both models' macro AUC of the three classes) as export had measured it, on the val
    films: a figure that named other films, beside figures on these. It is measured on the films that chose the
    thresholds, as the AUC of the positive call is."""
    from PIL import Image

    from pneumoscan.core.metrics import macro_auc

    run = multiclass_int8  # read: threshold writes its copy into --out
    site, rng = tmp_path / "site", np.random.default_rng(7)
    kinds = ["normal", "bacteria", "virus"] * 4
    for i, (kind, drawn) in enumerate(zip(kinds, ["virus", "bacteria"] + kinds[2:])):  # two films labelled wrong:
        folder = site / ("NORMAL" if kind == "normal" else "PNEUMONIA")  # a macro AUC below export's 1 on its films
        folder.mkdir(parents=True, exist_ok=True)
        name = f"IM-{900 + i:04d}-0001.jpeg" if kind == "normal" else f"person{900 + i}_{kind}_{i}.jpeg"
        Image.fromarray(_typed_chest(rng, drawn)).save(folder / name, quality=95)
    new = tmp_path / "site-bundle"
    assert cli.main(["threshold", str(run / "bundle"), str(site), "--youden", "--out", str(new)]) == 0
    sidecar = json.loads(spec_path(new / INT8_NAME).read_text())
    fp32, int8 = (Predictor(new, backend=b) for b in ("onnx", "onnx-int8"))
    images, targets, _ = labelled_images(site, None, fp32.task, fp32.card.spec)
    three, expected = sidecar["int8_three_class"], [macro_auc(targets, p.probabilities(images)) for p in (fp32, int8)]
    assert max(expected) < 0.99 and [three["macro_auc_fp32"], three["macro_auc_int8"]] == pytest.approx(
        expected, abs=SCORE_TOL)
    assert (three["n"], three["films"]) == (sidecar["validation_images"], sidecar["int8_thresholds_chosen_on"]) == (
        12, "site")
    assert three["macro_auc_int8"] == pytest.approx(sidecar["int8_val_metrics"]["three_class_macro_auc"])


def test_the_int8_sidecar_records_the_files_its_val_films_left_out(tiny_etiology_bundle: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """An etiology run's val split holds NORMAL films, which chose none of its INT8 thresholds: `export --int8 --data`
    said so only in the log, where evaluate, `threshold` and `ensemble` record what their figures left out and why.
    The sidecar holds ``left_out`` as theirs (the one implementation), and the command and MODEL_CARD.md's INT8
    section say the caveat."""
    run = shutil.copytree(tiny_etiology_bundle.parent, tmp_path / "run")
    assert cli.main(["export", str(run / "bundle"), "--int8", "--data", str(run / "split.csv")]) == 0
    sidecar = json.loads(spec_path(run / "bundle" / INT8_NAME).read_text())
    val = [r for r in discover(run / "split.csv").records if r.split == "val"]
    normal, n = sum(r.label == "NORMAL" for r in val), sidecar["validation_images"]
    assert normal and n == len(val) - normal
    assert sidecar["left_out"] == [{"films": normal, "reason": "of class NORMAL, which the etiology task does not "
                                                               "read (bacteria, virus)"}]
    said = f"{normal} of the {len(val)} films given are left out of the figures, which are of the other {n} only"
    assert f"   {said}" in capsys.readouterr().out
    assert said in " ".join((run / "bundle" / "MODEL_CARD.md").read_text().split())


def test_a_copied_bundle_given_its_runs_split_is_not_said_to_be_unchecked(tiny_bundle: Path, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A bundle copied out of its run is quantised with --data its run's split.csv, proved so by the card's data
    checksum, yet the held-out check warned that the films "cannot be checked" to be new to it: the split proved its
    run's is checked against as one beside it. Where nothing proves it, the warning stays (and the export is
    refused)."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    unchecked = "so it cannot be checked that the films given to choose the INT8 thresholds are new to it"
    own = tmp_path / "own.csv"  # the run's films, its validation split made of training films
    write_manifest([dataclasses.replace(r, split="val" if r.split == "train" else "train")
                    for r in discover(tiny_bundle.parent / "split.csv").records], own)
    with pytest.raises(ValueError, match="not the ones it was trained and validated on"):
        quantize_bundle(bundle, own)
    assert unchecked in caplog.text
    caplog.clear()
    quantize_bundle(bundle, tiny_bundle.parent / "split.csv")
    assert (bundle / INT8_NAME).is_file() and unchecked not in caplog.text, caplog.text


def test_int8_thresholds_are_chosen_on_the_runs_val_films_that_can_be_read(tiny_bundle: Path, tmp_path: Path) -> None:
    """A run's split.csv lists the files its training could not read too, and its thresholds were chosen on the
    others: `export --int8 --data RUN/split.csv` compared the val films it could read with every one listed, and
    refused the run's own split ("only 12 of the 13 val films: give --data RUN/split.csv"). The INT8 thresholds are
    chosen on the same films as the FP32 ones, the file left out recorded as such."""
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle, run / "bundle")
    broken = tmp_path / "films" / "IM-0999-0001.jpeg"
    broken.parent.mkdir()
    broken.write_bytes(b"not a film")
    records = discover(tiny_bundle.parent / "split.csv").records
    write_manifest([*records, make_record(broken, "NORMAL", split="val")], run / "split.csv")
    quantize_bundle(run / "bundle", run / "split.csv")
    sidecar = json.loads(spec_path(run / "bundle" / INT8_NAME).read_text())
    assert sidecar["validation_images"] == sum(r.split == "val" for r in records)
    assert sidecar["left_out"] == [{"films": 1, "reason": "could not be read"}]


def test_int8_reads_only_the_training_films_it_calibrates_on(tiny_bundle: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`export --int8 --data` copied every training film out of the image cache and then sampled the few it
    calibrates on (256 of 4,447 of the data's): it reads those alone, the same ones for the seed, counted at the
    cache's row look-up every read of its images goes through."""
    from pneumoscan.data.cache import ImageCache
    from pneumoscan.data.labelled import labelled_films
    from pneumoscan.training.quantize import _sample

    bundle = shutil.copytree(tiny_bundle.parent, tmp_path / "run") / "bundle"
    split, card = bundle.parent / "split.csv", load_card(bundle)
    trained = [r.path for r in labelled_films(split, "train", get_task(card.task), card.spec).records]
    asked, rows = [], ImageCache.rows

    def counted(cache: ImageCache, paths: list[str]) -> np.ndarray:
        asked.extend(map(str, paths))
        return rows(cache, paths)

    monkeypatch.setattr(ImageCache, "rows", counted)
    quantize_bundle(bundle, split, calibration_images=4)
    assert [p for p in asked if p in set(trained)] == [trained[i] for i in _sample(len(trained), 4)]
