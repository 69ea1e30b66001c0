"""`pneumoscan threshold`: a new operating threshold chosen on labelled data, written as a new bundle; policies the
data cannot meet are refused with a one-line reason."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from pneumoscan import cli
from pneumoscan.core.metrics import binary_metrics, choose_threshold, choose_thresholds
from tests.builders import as_run_split, labelled_records
from pneumoscan.data.layouts import discover, make_record, write_manifest
from pneumoscan.data.tasks import binary_targets, get_task
from pneumoscan.evaluation.compare import compare_runs, format_table
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.evaluation.held_out import CALIBRATION_FILMS
from pneumoscan.evaluation.operating_point import OperatingPoint, int8_figures
from pneumoscan.evaluation.model_card import MODEL_CARD
from pneumoscan.evaluation.rethreshold import rethreshold
from pneumoscan.inference.export import ONNX_NAME
from pneumoscan.inference.onnx_runtime import INT8_NAME, spec_path
from pneumoscan.inference.predict import Predictor
from pneumoscan.models.card import load_card, save_card


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def scores(bundle: Path, data: Path, split: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scores ``threshold`` chooses on: ONNX Runtime's, as predict and serve score (torch's differ in late
    digits, which move a threshold chosen between two films' scores)."""
    predictor = Predictor(bundle, backend="onnx")
    _, images, targets, _ = labelled_records(data, split, get_task("pneumonia"), predictor.card.spec)
    plain = predictor.positive_probability(predictor.probabilities(images))
    return binary_targets(targets), plain, predictor.positive_probability(predictor.probabilities(images, tta=True))


@pytest.fixture(scope="module")
def site(tiny_dataset: Path, module_tmp: Callable[[str], Path]) -> Path:
    """A site's own labelled films (the tiny dataset's test films, listed without a split): what a threshold is
    chosen on. The official test split itself is refused."""
    path = module_tmp("site") / "site.csv"
    write_manifest([make_record(r.path, r.label) for r in discover(tiny_dataset).split("test")], path)
    return path


def test_a_threshold_that_calls_every_film_positive_records_its_undefined_npv_as_none() -> None:
    # no film is called negative, so the NPV is undefined: the sidecar and card must still be JSON, NaN-free
    y, scores = np.array([0, 0, 1, 1, 1]), np.array([0.6, 0.7, 0.8, 0.9, 0.95])
    point = OperatingPoint(0.5, 0.5, [0.4, 0.6], [0.4, 0.6], "")
    probs = np.stack([1 - scores, scores], axis=1)
    figures = int8_figures(probs, y, get_task("pneumonia"), point, "youden", "films", 1.0, None, 0.0, None, [])
    assert figures["int8_val_metrics"]["npv"] is None
    assert figures["int8_val_metrics"]["specificity"] == 0.0
    json.dumps(figures, allow_nan=False)


def test_max_false_positive_rate_is_the_most_sensitive_threshold_within_the_ceiling() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        y = rng.integers(0, 2, 40)
        y[:2] = (0, 1)
        p = np.round(rng.random(40) * 0.9, 2)  # ties included
        p[np.argmax(p)] = 1.0  # keep the top score a positive's, so every ceiling can be met
        y[np.argmax(p)] = 1
        ceiling = float(rng.choice([0.0, 0.1, 0.25, 0.5]))
        t = choose_threshold(y, p, None, max_false_positive_rate=ceiling)
        m = binary_metrics(y, p, t)
        assert m["fp"] <= ceiling * (y == 0).sum()
        lower = p[p < t]
        if lower.size:  # the next score down would break the ceiling
            assert binary_metrics(y, p, lower.max())["fp"] > ceiling * (y == 0).sum()


def test_a_ceiling_no_useful_threshold_meets_is_refused() -> None:
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6])  # a negative holds the top score
    with pytest.raises(ValueError, match="no threshold finds any positive case"):
        choose_threshold(y, p, None, max_false_positive_rate=0.0)
    assert choose_threshold(y, p, None, max_false_positive_rate=0.5) == pytest.approx((0.6 + 0.2) / 2)
    with pytest.raises(ValueError, match="not both"):
        choose_threshold(y, p, 0.9, max_false_positive_rate=0.5)


def test_tta_scores_get_their_own_threshold_and_their_own_refusal() -> None:
    y = np.array([0, 1, 1, 0, 1])
    plain = np.array([0.1, 0.8, 0.7, 0.2, 0.6])
    tta = np.array([0.9, 0.8, 0.7, 0.2, 0.6])  # averaging views lifted a negative above every positive
    assert choose_thresholds(y, plain, plain * 0.5, None, 0.0) == (pytest.approx(0.4), pytest.approx(0.2))
    with pytest.raises(ValueError, match="^with test-time augmentation: no threshold finds any positive case"):
        choose_thresholds(y, plain, tta, None, max_false_positive_rate=0.0)


@pytest.mark.parametrize(("flag", "kwargs", "policy"), [
    (["--target-sensitivity", "0.97"], {"target_sensitivity": 0.97}, "sensitivity >= 0.97"),
    (["--youden"], {"target_sensitivity": None}, "Youden's J"),
    (["--max-false-positive-rate", "0.1"], {"target_sensitivity": None, "max_false_positive_rate": 0.1},
     "false-positive rate <= 0.1"),
])
def test_threshold_writes_a_new_bundle_for_each_policy(
    tiny_bundle: Path, tiny_dataset: Path, site: Path, tmp_path: Path, flag: list[str], kwargs: dict, policy: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = digests(tiny_bundle)
    old = load_card(tiny_bundle)
    out = tmp_path / "retuned"
    assert cli.main(["threshold", str(tiny_bundle), str(site), *flag, "--out", str(out)]) == 0
    # 8 positive films cannot show a sensitivity of 0.97 (one miss is 0.875): said, not hidden
    assert ("only 8 positive films" in caplog.text) == (kwargs.get("target_sensitivity") == 0.97)
    assert digests(tiny_bundle) == before, "the old bundle is never changed"

    after = digests(out)
    changed = {name for name in after if after[name] != before.get(name)}
    assert set(after) == set(before) | {CALIBRATION_FILMS}
    assert changed == {"bundle.json", MODEL_CARD, spec_path(ONNX_NAME).name, CALIBRATION_FILMS}

    y, plain, tta = scores(tiny_bundle, site, None)
    card = load_card(out)
    assert card.threshold == choose_threshold(y, plain, **kwargs)
    assert card.tta_threshold == choose_threshold(y, tta, **kwargs)
    assert card.threshold_policy == f"{policy} on site.csv"
    (record,) = card.threshold_records
    assert (record["previous_threshold"], record["previous_policy"]) == (old.threshold, old.threshold_policy)
    assert record["n"] == 16 and record["sensitivity"] == binary_metrics(y, plain, card.threshold)["sensitivity"]
    assert Predictor(out).threshold() == card.threshold and Predictor(out).threshold(tta=True) == card.tta_threshold
    sidecar = json.loads((out / spec_path(ONNX_NAME).name).read_text())
    assert (sidecar["threshold"], sidecar["tta_threshold"]) == (card.threshold, card.tta_threshold)
    text = (out / MODEL_CARD).read_text()
    assert f"{policy} on site.csv" in text and f"{old.threshold:.4f} -> {card.threshold:.4f}" in text


def test_threshold_refusals_are_one_line_and_write_nothing(
    tiny_bundle: Path, tiny_dataset: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    y, plain, _ = scores(tiny_bundle, site, None)
    records = discover(site).records
    # a manifest whose highest-scored film is labelled normal: no threshold finds a positive at FPR 0 (under a name
    # that does not say pneumonia, which would be warned of as a label conflict)
    top = int(np.argmax(plain))
    renamed = tmp_path.parent / f"{tmp_path.name}-IM-0999-0001.jpeg"
    shutil.copy(records[top].path, renamed)
    flipped = [make_record(renamed, "NORMAL") if i == top else make_record(r.path, r.label)
               for i, r in enumerate(records)]
    write_manifest(flipped, tmp_path / "flipped.csv")
    write_manifest([r for r in records if r.label == "PNEUMONIA"], tmp_path / "one-class.csv")
    (tmp_path / "taken").mkdir()
    cases = [
        ([str(tmp_path / "flipped.csv"), "--max-false-positive-rate", "0"], "no threshold finds any positive case"),
        ([str(tmp_path / "one-class.csv"), "--youden"], "needs both classes"),
        ([str(tiny_dataset), "--split", "train", "--youden"], "were in"),  # films the bundle trained on
        ([str(tiny_dataset), "--split", "test", "--youden"], "the test split measures a bundle and never chooses"),
        ([str(tiny_dataset), "--youden"], "the test split measures a bundle and never chooses"),  # test films inside
        ([str(site), "--youden", "--out", str(tmp_path / "taken")], "exists"),
        ([str(site), "--youden", "--out", str(tiny_bundle)], "exists"),
        ([str(site), "--youden", "--out", str(tiny_bundle / "inner")], "inside the bundle"),
    ]
    for args, reason in cases:
        if "--out" not in args:
            args = [*args, "--out", str(tmp_path / "new")]
        assert cli.main(["-q", "threshold", str(tiny_bundle), *args]) == 2, args  # -q: the error line alone
        err = capsys.readouterr().err.strip()
        assert reason in err and err.startswith("pneumoscan threshold: error:") and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flipped.csv", "one-class.csv", "taken"]
    assert not (tiny_bundle / "inner").exists()
    with pytest.raises(SystemExit) as exit_info:  # a policy is required
        cli.main(["threshold", str(tiny_bundle), str(tiny_dataset), "--out", str(tmp_path / "new")])
    assert exit_info.value.code == 2


def test_a_threshold_on_films_the_bundle_ranks_no_better_than_chance_is_refused(
    tiny_bundle: Path, site: Path, tmp_path: Path
) -> None:
    """Every label of the site's films the other way round: the bundle ranks them backwards (AUC 0.08), and a
    threshold chosen on them met its policy by calling films at random, shipped as a new bundle (exit 0)."""
    other = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}
    write_manifest([make_record(r.path, other[r.label]) for r in discover(site).records], tmp_path / "swapped.csv")
    with pytest.raises(ValueError, match=r"^no bundle written: .*bundle's scores rank the 16 films of swapped\.csv no "
                                         r"better than chance \(AUC 0\.\d{4}, where 0\.5 is chance\): a threshold "
                                         r"cannot mend"):
        rethreshold(tiny_bundle, tmp_path / "swapped.csv", tmp_path / "new", target_sensitivity=0.95)
    assert not (tmp_path / "new").exists()


def test_an_int8_model_gets_its_thresholds_again_by_the_same_policy(
    tiny_bundle: Path, tiny_dataset: Path, site: Path, tmp_path: Path
) -> None:
    bundle, out = tmp_path / "bundle", tmp_path / "retuned"
    shutil.copytree(tiny_bundle, bundle)
    assert cli.main(["export", str(bundle), "--int8", "--data", str(tiny_bundle.parent / "split.csv")]) == 0
    assert cli.main(["threshold", str(bundle), str(site), "--youden", "--out", str(out)]) == 0
    assert (out / INT8_NAME).read_bytes() == (bundle / INT8_NAME).read_bytes()
    int8 = Predictor(out, backend="onnx-int8")
    _, images, targets, _ = labelled_records(site, None, get_task("pneumonia"), int8.card.spec)
    y = binary_targets(targets)
    assert int8.threshold() == choose_threshold(y, int8.positive_probability(int8.probabilities(images)), None)
    assert int8.threshold(tta=True) == choose_threshold(
        y, int8.positive_probability(int8.probabilities(images, tta=True)), None)
    sidecar = json.loads(spec_path(out / INT8_NAME).read_text())
    assert sidecar["threshold_policy"] == load_card(out).threshold_policy == "Youden's J on site.csv"
    # every figure about the films that chose the thresholds is about the site's films, none left from the export
    fp32 = Predictor(out, backend="onnx").positive_probability(Predictor(out, backend="onnx").probabilities(images))
    assert sidecar["int8_thresholds_chosen_on"] == "site.csv" and sidecar["validation_images"] == len(y)
    assert sidecar["val_auc_int8"] == pytest.approx(
        roc_auc_score(y, int8.positive_probability(int8.probabilities(images))))
    assert sidecar["val_auc_fp32"] == pytest.approx(roc_auc_score(y, fp32), abs=1e-6)
    assert load_card(out).threshold_records[-1]["int8_threshold"] == int8.threshold()
    # an INT8 sidecar changed by hand is refused here as --backend onnx-int8 refuses it, not stamped anew
    sidecar_path = spec_path(bundle / INT8_NAME)
    sidecar_path.write_text(sidecar_path.read_text().replace('"threshold_policy": "', '"threshold_policy": "edited '))
    with pytest.raises(ValueError, match="damaged"):
        rethreshold(bundle, site, tmp_path / "again", target_sensitivity=None)


def test_a_pipe_in_place_of_the_copys_int8_sidecar_is_refused_not_waited_on(
    int8_bundle: Path, site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy's INT8 sidecar is read back to get the new thresholds; it had been read with read_text, which waits
    for ever on a pipe (bundle files are refused when they are not regular files): a pipe put there once the copy
    is made (bundle files replaced while threshold runs) now stops it with its reason, and leaves no bundle."""
    from pneumoscan.evaluation import rethreshold as command

    record = command.record_calibration_films

    def then_a_pipe(folder: Path, *args: object) -> None:  # called on the copy just before its sidecar is read
        record(folder, *args)
        spec_path(folder / INT8_NAME).unlink()
        os.mkfifo(spec_path(folder / INT8_NAME))

    monkeypatch.setattr(command, "record_calibration_films", then_a_pipe)
    refused: list[str] = []

    def run() -> None:
        try:
            rethreshold(int8_bundle, site, tmp_path / "new")
        except ValueError as e:
            refused.append(str(e))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "threshold waited on the pipe"
    assert refused and "is not a regular file (FIFO)" in refused[0], refused
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def youden_copy(tiny_bundle: Path, site: Path, module_tmp: Callable[[str], Path]) -> Path:
    """`threshold TINY_BUNDLE SITE --youden`'s new bundle, which the module's tests read and never change: one
    command for them all."""
    out = module_tmp("youden") / "retuned"
    assert cli.main(["threshold", str(tiny_bundle), str(site), "--youden", "--out", str(out)]) == 0
    return out


def test_a_bundle_made_by_threshold_is_checked_against_the_run_that_trained_it(
    tiny_bundle: Path, tiny_dataset: Path, site: Path, youden_copy: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    """The new bundle has the run's weights but no run's split.csv beside it: the run's training films are still
    refused, through a copy of a copy, and other files of its training patients are warned about."""
    first, second = youden_copy, tmp_path / "again"
    assert cli.main(["threshold", str(first), str(site), "--youden", "--out", str(second)]) == 0
    assert [r["source_bundle"] for r in load_card(second).threshold_records] == [str(tiny_bundle.resolve()),
                                                                                 str(first.resolve())]
    # the service shows the records without those paths: its clients are not to learn this machine's folders
    from fastapi.testclient import TestClient

    from pneumoscan.serving.app import create_app

    shown = TestClient(create_app(second)).get("/v1/model").json()
    assert len(shown["threshold_records"]) == 2
    for folder in (tiny_bundle.resolve(), first.resolve()):  # the bundles the records name, and their folders
        assert str(folder.parent) not in json.dumps(shown), folder
    for copy in (first, second):
        with pytest.raises(ValueError, match=f"were in {tiny_bundle.resolve()}'s training split .* is a copy of it "
                                             "with a new threshold"):
            evaluate(copy, tiny_dataset, split="train")
    # other films of the same patients (test films under their ids): not the run's files, so no refusal, but said
    trained = [r for r in discover(tiny_bundle.parent / "split.csv").records if r.split == "train"]
    tested = {label: iter(t.path for t in discover(tiny_dataset).split("test") if t.label == label)
              for label in ("NORMAL", "PNEUMONIA")}
    films = tmp_path / "films"
    for r in trained[:3]:
        name = Path(r.path).name.replace(".jpeg", "_again.jpeg").replace("-0001_again", "-0002")
        (films / r.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(next(tested[r.label]), films / r.label / name)
    caplog.clear()
    kin = evaluate(second, films)["optimistic_films"]
    assert "3 film(s) given to evaluate are other files of patients in" in caplog.text
    assert sorted(kin) == sorted(str(path) for path in films.rglob("*.jpeg"))  # each film named, by its path


def test_the_films_that_chose_a_threshold_are_known_to_the_new_bundle(
    tiny_bundle: Path, site: Path, youden_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """They are not its run's validation films, but the threshold was chosen on them as on those: figures on them
    are optimistic (a warning), and the card's evaluations on other data refuse them."""
    out = youden_copy
    assert sorted(r.path for r in discover(out / CALIBRATION_FILMS).records) == sorted(
        str(Path(r.path).resolve()) for r in discover(site).records)
    caplog.clear()
    metrics = evaluate(out, site, out_dir=tmp_path / "eval")
    assert f"16 film(s) given to evaluate chose {out}'s threshold" in caplog.text
    # the files outlive the terminal: they say it too, and compare marks the run
    assert metrics["optimistic"] == [f"16 film(s) given to evaluate chose {out}'s threshold ({CALIBRATION_FILMS}): "
                                     "the figures on them are optimistic"]
    assert sorted(metrics["optimistic_films"]) == sorted(r.path for r in discover(site).records)  # each film named
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["optimistic"] == metrics["optimistic"]
    assert "Not an independent evaluation" in (tmp_path / "eval" / "report.html").read_text()
    # the report's header names the films of the threshold in force, not the validation films of the original's
    assert "J on site.csv; chosen on 16 films)" in (tmp_path / "eval" / "report.html").read_text()
    table = format_table(compare_runs([tmp_path / "eval"]))
    assert "eval (optimistic *)" in table and table.endswith(f"* eval: {metrics['optimistic'][0]}")
    with pytest.raises(ValueError,
                       match=f"16 of the films given to record an evaluation in the card chose {out}'s threshold"):
        evaluate(out, site, add_to_card=True, data_name="site")
    assert load_card(out).external_evaluations == []
    caplog.clear()
    assert evaluate(tiny_bundle, site)["optimistic"] == []  # the original's threshold was not chosen on them
    assert "chose" not in caplog.text


def test_a_copy_of_a_copy_still_knows_the_films_that_chose_its_source(site: Path, tiny_bundle: Path,
                                                                       tmp_path: Path) -> None:
    """``threshold`` on a bundle whose numbers were chosen on other films (ensemble --data, threshold) keeps them
    listed: the copy keeps their temperature, and figures on them are optimistic (they were reported as
    independent)."""
    films = discover(site).records
    first_films, second_films = tmp_path / "a.csv", tmp_path / "b.csv"
    write_manifest(films[::2], first_films)
    write_manifest(films[1::2], second_films)
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli.main(["threshold", str(tiny_bundle), str(first_films), "--youden", "--out", str(first)]) == 0
    assert cli.main(["threshold", str(first), str(second_films), "--youden", "--out", str(second)]) == 0
    assert sorted(r.path for r in discover(second / CALIBRATION_FILMS).records) == sorted(
        str(Path(r.path).resolve()) for r in films)
    assert evaluate(second, first_films)["optimistic"] == [
        f"{len(films[::2])} film(s) given to evaluate chose {second}'s threshold ({CALIBRATION_FILMS}): "
        "the figures on them are optimistic"]


def test_a_run_whose_split_lists_no_film_where_it_is_cannot_be_checked_and_says_so(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run folder copied or moved away from the relative paths of its split.csv: no listed film is found, so no
    film can be matched against it. That was taken as "none of the given films trained it" (thresholds were chosen
    on its training films, with a warning that called them other files of the same patients)."""
    run = tmp_path / "moved"
    shutil.copytree(tiny_bundle, run / "bundle")
    records = discover(tiny_bundle.parent / "split.csv").records
    write_manifest([dataclasses.replace(r, path=str(tmp_path / "gone" / Path(r.path).name)) for r in records],
                   run / "split.csv")
    as_run_split(run / "bundle")
    caplog.clear()
    figures = evaluate(run / "bundle", tiny_dataset, split="train", out_dir=tmp_path / "eval")
    unchecked = f"none of the films {run / 'split.csv'} lists is where it says (a run folder copied or moved?)"
    assert unchecked in caplog.text
    assert "other files of patients" not in caplog.text
    # the figures say so themselves (metrics.json, the report's box, compare's mark), not only the log: they were
    # saved as an independent evaluation, and --add-to-card filed them under "evaluations on other data"
    [caveat] = figures["optimistic"]
    assert unchecked in caveat and "they may be its training films" in caveat
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["optimistic"] == [caveat]
    with pytest.raises(ValueError, match=r"they may be its training films; run it where the run's split.csv finds"):
        evaluate(run / "bundle", tiny_dataset, split="train", add_to_card=True)


def test_copies_of_training_films_under_other_names_are_warned_about(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A training film copied into test/ under another name escaped every check by path: its figures are
    optimistic. (The tiny run's training films, copied into a copy of its data.)"""
    data = shutil.copytree(tiny_dataset, tmp_path / "data")
    copied = [r for r in discover(tiny_bundle.parent / "split.csv").records
              if r.split == "train" and r.label == "NORMAL"][:4]
    for i, record in enumerate(copied):
        shutil.copy(record.path, data / "test" / "NORMAL" / f"IM-{900 + i}-0001.jpeg")
    with caplog.at_level("WARNING"):
        evaluate(tiny_bundle, data, split="test")
    assert f"{len(copied)} film(s) given to evaluate are copies of training films under other names, byte for byte" \
        in caplog.text


def test_a_threshold_is_not_chosen_on_copies_of_training_films(tiny_bundle: Path, tiny_dataset: Path,
                                                               tmp_path: Path) -> None:
    """Copies of the bundle's own training films under other names had a threshold chosen on them, written into a
    new bundle with exit 0 and no caveat its predictions show: refused, as the training films themselves are, and
    nothing is written."""
    trained = [r for r in discover(tiny_bundle.parent / "split.csv").records if r.split == "train"][:6]
    copies = []
    for i, record in enumerate(trained):
        shutil.copy(record.path, tmp_path / f"site-{i}.jpeg")
        copies.append(dataclasses.replace(record, path=str(tmp_path / f"site-{i}.jpeg"), split="", patient=f"s{i}"))
    films = [dataclasses.replace(r, split="") for r in discover(tiny_dataset).split("test")]
    write_manifest([*films, *copies], tmp_path / "site.csv")
    with pytest.raises(ValueError, match=rf"^{len(copies)} of the films given to choose the threshold are copies of "
                                         "training films under other names, byte for byte"):
        rethreshold(tiny_bundle, tmp_path / "site.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_copies_of_validation_films_under_other_names_are_warned_about(tiny_bundle: Path, tiny_dataset: Path,
                                                                       tmp_path: Path) -> None:
    """A copy of a film that chose the threshold and temperature passed silently, while one of a training film was
    named."""
    val = next(r for r in discover(tiny_bundle.parent / "split.csv").records if r.split == "val")
    copy = tmp_path / f"copy-{Path(val.path).name}"
    shutil.copy(val.path, copy)
    films = [dataclasses.replace(r, split="") for r in discover(tiny_dataset).split("test")]
    write_manifest([*films, dataclasses.replace(val, path=str(copy), split="")], tmp_path / "films.csv")
    figures = evaluate(tiny_bundle, tmp_path / "films.csv")
    assert [c for c in figures["optimistic"] if "copies of validation films" in c] == [
        "1 film(s) given to evaluate are copies of validation films under other names, byte for byte or the picture "
        f"re-encoded or resized (e.g. {copy} of {os.path.realpath(val.path)}), on which its own temperature and "
        "threshold were chosen: the figures on them are optimistic"]


def test_copies_of_the_films_that_chose_a_site_threshold_are_warned_about(tiny_bundle: Path, site: Path,
                                                                           tmp_path: Path) -> None:
    """A site threshold chosen on its films, then measured on the same pictures exported again as PNG under other
    names, gave figures with no warning and a card record "checked": copies of calibration films are warned of, and
    the card's record keeps the warning, as copies of validation films are."""
    chosen = tmp_path / "chosen"
    rethreshold(tiny_bundle, site, chosen)
    again = []
    for i, record in enumerate(discover(site).records):
        Image.open(record.path).save(tmp_path / f"export-{i}.png")
        again.append(make_record(tmp_path / f"export-{i}.png", record.label))
    write_manifest(again, tmp_path / "export.csv")
    figures = evaluate(chosen, tmp_path / "export.csv", add_to_card=True, data_name="export")
    assert [c for c in figures["optimistic"] if "copies of validation films" in c][0].startswith(
        f"{len(again)} film(s) given to record an evaluation in the card are copies of validation films")
    assert load_card(chosen).external_evaluations[-1]["caveats"][0] == figures["optimistic"][0]


def test_other_films_of_the_patients_that_chose_a_site_threshold_are_warned_about(
        tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """A site threshold chosen on one film of each child, measured on the same children's other films (one MRN in
    the manifest's patient column), gave figures with no warning, while other films of the validation patients
    are warned of."""
    films = discover(tiny_dataset).split("test")
    first, later = films[::2], films[1::2]
    write_manifest([make_record(r.path, r.label, patient=f"MRN{i}") for i, r in enumerate(first)], tmp_path / "a.csv")
    write_manifest([make_record(r.path, r.label, patient=f"mrn{i}") for i, r in enumerate(later)], tmp_path / "b.csv")
    chosen = tmp_path / "chosen"
    rethreshold(tiny_bundle, tmp_path / "a.csv", chosen)
    figures = evaluate(chosen, tmp_path / "b.csv")
    assert sorted(figures["optimistic_films"]) == sorted(r.path for r in later)  # each film named, by its path
    assert [c for c in figures["optimistic"] if CALIBRATION_FILMS in c] == [
        f"{len(later)} film(s) given to evaluate are other files of patients in {chosen}'s {CALIBRATION_FILMS}, whose "
        "films chose its threshold (by their patient ids: file names, a manifest's patient column or DICOM headers; "
        "e.g. mrn0): if they are the same patients, the figures are optimistic"]


def test_what_the_threshold_check_warned_of_is_kept_in_the_model_card(tiny_bundle: Path, site: Path,
                                                                      tmp_path: Path) -> None:
    """Films that chose the bundle's own threshold (its validation films) given to `threshold` again are warned of;
    the warning had been logged only, and the new bundle's card did not say its threshold's figures flatter it."""
    records = discover(tiny_bundle.parent / "split.csv").records
    mixed = tmp_path / "mixed.csv"
    write_manifest([make_record(r.path, r.label) for r in records if r.split == "val"] + discover(site).records, mixed)
    out = tmp_path / "retuned"
    assert cli.main(["threshold", str(tiny_bundle), str(mixed), "--youden", "--out", str(out)]) == 0
    [record] = load_card(out).threshold_records
    assert len(record["caveats"]) == 1 and "validation films, on which its own" in record["caveats"][0]
    card = (out / MODEL_CARD).read_text()
    assert "What could not be checked, or was found, when they were chosen:" in card
    assert record["caveats"][0] in card


def test_a_guessed_threshold_and_an_uncalibrated_temperature_are_kept_where_the_bundle_is_used(
        tiny_bundle: Path, site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Training on 6 positive validation films warned that a sensitivity of 0.95 cannot be shown on them, and a
    temperature fitted on no error warned that the probabilities are not calibrated: both only in the run's log,
    while the card, MODEL_CARD.md, the service and predict looked confident."""
    from fastapi.testclient import TestClient

    from pneumoscan.inference.predict import predict_paths
    from pneumoscan.serving.app import create_app

    card = load_card(tiny_bundle)
    assert "so this threshold is a guess" in card.threshold_caveat
    assert f"**Caveat:** {card.threshold_caveat}" in (tiny_bundle / MODEL_CARD).read_text()
    with TestClient(create_app(tiny_bundle)) as client:
        assert client.get("/v1/model").json()["caveats"] == card.caveats
    film = next(iter(discover(site).records)).path
    caplog.clear()
    predict_paths(tiny_bundle, [film])
    assert any(m.endswith(card.threshold_caveat) for m in caplog.messages)
    # a threshold chosen again is the one the caveat is about; a temperature without error to fit is said too
    out = tmp_path / "retuned"
    assert cli.main(["threshold", str(tiny_bundle), str(site), "--target-sensitivity", "0.95", "--out", str(out)]) == 0
    retuned = load_card(out)
    assert "only 8 positive films" in retuned.threshold_caveat
    assert retuned.threshold_records[-1]["caveats"] == [retuned.threshold_caveat]
    from pneumoscan.evaluation.model_card import render
    from pneumoscan.evaluation.operating_point import calibrated_temperature

    logits = np.array([[2.0, -2.0], [-3.0, 3.0], [1.5, -1.5]])  # every film on its side
    temperature, said = calibrated_temperature(logits, np.array([0, 1, 0]))
    assert temperature == 1.0 and "without a single error" in said
    assert f"(**the probabilities are not calibrated:** {said})" in render(
        dataclasses.replace(card, temperature_caveat=said))


def test_other_films_of_a_runs_patients_are_said_whatever_the_spelling_of_their_ids(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A site's manifest typed by another hand (PERSON3 for the training films' person3):
    their patients had been matched case by case, so no warning; and other films of the validation patients, whose
    films chose the temperature and threshold, had not been looked for at all. The films encoded anew are copies
    of the run's films too, which only byte copies had been found as."""
    run = [r for r in discover(tiny_bundle.parent / "split.csv").records if not r.path.endswith("-0001.jpeg")]
    picked = {split: next(r for r in run if r.split == split) for split in ("train", "val")}
    films = tmp_path / "site"
    films.mkdir()
    records = []
    for split, r in picked.items():
        copy = films / f"new_{split}.jpeg"  # a name that gives no patient: the manifest's column does
        Image.open(r.path).save(copy, quality=90)  # the film again, encoded anew: no byte copy, one picture
        records.append(make_record(copy, r.label, patient=r.patient.upper()))
    write_manifest(records, films / "site.csv")
    caplog.clear()
    figures = evaluate(tiny_bundle, films / "site.csv")
    said = "1 film(s) given to evaluate are other files of patients in "
    assert f"{said}{tiny_bundle}'s training split (" in caplog.text
    assert f"{said}{tiny_bundle}'s validation split, whose films chose its temperature and threshold" in caplog.text
    for side in ("training", "validation"):
        assert f"1 film(s) given to evaluate are copies of {side} films under other names, byte for byte or the " \
               "picture re-encoded or resized" in caplog.text
    assert len([c for c in figures["optimistic"] if c.startswith(said)]) == 2


def test_a_film_listed_under_both_labels_is_warned_of_and_its_copies_are_one_patient(
    tiny_bundle: Path, site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A picture listed as NORMAL and, copied under another name, as PNEUMONIA chose a threshold without a word, and
    counted as two patients in its interval, as evaluate and ensemble no longer do."""
    records = discover(site).records
    normal = next(r for r in records if r.label == "NORMAL")
    copy = tmp_path / "person999_bacteria_1.jpeg"
    shutil.copy(normal.path, copy)
    both = tmp_path / "both.csv"
    write_manifest([*records, make_record(copy, "PNEUMONIA")], both)
    with caplog.at_level("WARNING"):
        rethreshold(tiny_bundle, both, tmp_path / "new", target_sensitivity=None)
    assert "2 film(s) of" in caplog.text and "are copies of others in it under other names" in caplog.text
    assert "label conflict(s): a file name or a duplicate (exact or near) contradicts a label" in caplog.text


def test_the_films_a_threshold_left_out_are_in_its_record_its_card_and_its_output(
        tiny_etiology_bundle: Path, films_some_left_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An etiology bundle given 17 files chose its threshold on 6 films: the 8 NORMAL films, 2 pneumonia films of
    no type and an unreadable file were left out with a warning on the terminal only, and the new card's record
    (``unreadable``: 1) read as a threshold chosen on the films given."""
    out = tmp_path / "retuned"
    assert cli.main(["threshold", str(tiny_etiology_bundle), str(films_some_left_out), "--youden",
                     "--out", str(out)]) == 0
    [record] = load_card(out).threshold_records
    assert record["n"] == 6 and record["left_out"] == [
        {"films": 1, "reason": "could not be read"},
        {"films": 8, "reason": "of class NORMAL, which the etiology task does not read (bacteria, virus)"},
        {"films": 2, "reason": "of class PNEUMONIA that say neither bacteria nor virus (in their names or a "
                               "manifest's subtype column), which the etiology task needs"}]
    said = ("11 of the 17 films given are left out of the figures, which are of the other 6 only: 1 film could not be "
            "read; 8 films of class NORMAL, which the etiology task does not read (bacteria, virus); 2 films of class "
            "PNEUMONIA that say neither bacteria nor virus")
    assert any(c.startswith(said) for c in record["caveats"])
    shown = capsys.readouterr().out
    assert said in shown
    # the sensitivity of bacteria or virus? named, as train's closing line names it
    hits = round(record["sensitivity"] * record["n_positive"])
    said_of = f": sensitivity (virus) {record['sensitivity']:.3f} ({hits} of {record['n_positive']}), specificity "
    assert said_of in shown
    card = (out / MODEL_CARD).read_text()
    assert "| films (n = 6; 11 left out) |" in card and f"on films: {said}" in card


def test_the_new_bundles_temperature_caveat_is_said_as_predict_and_evaluate_say_it(
        tiny_bundle: Path, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A bundle whose temperature is at its bound (its probabilities not calibrated) was given a new threshold
    without a word of it, where predict and evaluate say it: the new card keeps that temperature, so its caveat is
    said under the result line, as evaluate says the card's caveats; the threshold's own was warned of as it was
    chosen. The line names the class its sensitivity is of, as train's does."""
    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run")
    said = ("temperature 20 is at its bound (0.05, 20.0): the validation logits carry no signal, so the "
            "probabilities are not calibrated")
    save_card(run / "bundle", dataclasses.replace(load_card(run / "bundle"), temperature_caveat=said))
    capsys.readouterr()
    out = tmp_path / "retuned"
    assert cli.main(["threshold", str(run / "bundle"), str(site), "--target-sensitivity", "0.97",
                     "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    card = load_card(out)
    assert card.temperature_caveat == said and "only 8 positive films" in card.threshold_caveat
    assert f"\n   caveat: {said}\n" in shown
    assert [line[len("   caveat: "):] for line in shown.splitlines() if line.startswith("   caveat: ")] == [
        c for c in card.caveats if c != card.threshold_caveat]
    record = card.threshold_records[-1]
    hits = round(record["sensitivity"] * record["n_positive"]), round(record["specificity"] * record["n_negative"])
    # the films behind each rate, as few as they are (8 positive here)
    assert (f": sensitivity (PNEUMONIA) {record['sensitivity']:.3f} ({hits[0]} of {record['n_positive']}), "
            f"specificity {record['specificity']:.3f} ({hits[1]} of {record['n_negative']}) on {record['n']} "
            "images") in shown
