"""The held-out check's reading of the bundles whose weights a bundle's come from."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumoscan import cli
from pneumoscan.data.cache import build_cache
from pneumoscan.data.layouts import KERMANY, discover, make_record, write_manifest
from pneumoscan.evaluation import held_out
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.evaluation.held_out import HeldOutPolicy, check_held_out
from pneumoscan.models.card import BundleCard, load_card, save_card
from tests.builders import as_run_split


def test_each_card_is_read_once_and_still_names_the_task(tiny_bundle: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle started from another (--init): the check read each card twice, once to find the bundles its weights
    come from and again for the task naming their validation films; now once, and both runs' validation films are
    still said to have chosen their temperature and threshold."""
    bundle = shutil.copytree(tiny_bundle.parent, tmp_path / "run") / "bundle"  # with its run's split.csv
    card = load_card(bundle)
    save_card(bundle, dataclasses.replace(card, train_config={**card.train_config, "init": str(tiny_bundle)}))
    read: list[str] = []

    def counted(path: Path | str) -> BundleCard:  # the real read, counted
        read.append(os.path.realpath(path))
        return load_card(path)

    monkeypatch.setattr(held_out, "load_card", counted)
    validation = [r for r in discover(bundle.parent / "split.csv").records if r.split == "val"]
    caveats = check_held_out([bundle], validation, "evaluate", policy=HeldOutPolicy(validation_warning=True)).caveats
    assert sorted(read) == sorted(os.path.realpath(b) for b in (bundle, tiny_bundle))
    assert [c for c in caveats if "validation films" in c] == [
        f"{len(validation)} film(s) given to evaluate are {run}'s validation films, on which its own temperature and "
        "threshold were chosen: the figures on them are optimistic" for run in (bundle, tiny_bundle)]


def test_an_etiology_runs_normal_films_are_not_its_training_films(tiny_etiology_bundle: Path, tiny_dataset: Path,
                                                                  tmp_path: Path) -> None:
    """An etiology run's split.csv lists the normal films too; its model never read them. A two-stage evaluation
    of them (with a first stage that did not train on them either) was refused as on the etiology bundle's training
    films; its pneumonia training films still are."""
    from tests.test_predict import make_bundle

    first = make_bundle(tmp_path / "first")  # a first stage whose run is not known here: nothing to refuse
    trained = [r for r in discover(tiny_etiology_bundle.parent / "split.csv").records if r.split == "train"]
    normal = [dataclasses.replace(r, split="") for r in trained if r.label == "NORMAL"]
    sick = [dataclasses.replace(r, split="") for r in discover(tiny_dataset).split("test") if r.label == "PNEUMONIA"]
    write_manifest([*normal, *sick], tmp_path / "films.csv")
    metrics = evaluate(first, tmp_path / "films.csv", etiology=tiny_etiology_bundle)  # no report read: none written
    assert metrics["n"] == len(normal) + len(sick)
    assert not any("training split" in c and str(tiny_etiology_bundle) in c for c in metrics.get("caveats", []))
    own = next(dataclasses.replace(r, split="") for r in trained if r.label == "PNEUMONIA")
    write_manifest([*normal, *sick, own], tmp_path / "with-one.csv")
    with pytest.raises(ValueError, match=rf"1 of the films given to evaluate were in {tiny_etiology_bundle}'s "
                                         "training split"):
        evaluate(first, tmp_path / "with-one.csv", etiology=tiny_etiology_bundle)


def test_a_bundle_learnt_from_that_was_trained_again_since_is_not_taken_at_its_word(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """A `threshold` copy and a run started from a bundle (--init) name the bundle by path; trained again there, its
    run's split.csv described another model's films, and the films its first model trained on passed as new. They
    are refused while it holds the weights learnt from, and said to be unknown once it does not."""
    from pneumoscan import cli
    from pneumoscan.training.config import TrainConfig
    from pneumoscan.training.train import train
    from tests.builders import nudge_weights

    origin = shutil.copytree(tiny_bundle.parent, tmp_path / "origin") / "bundle"
    trained = [dataclasses.replace(r, split="") for r in discover(origin.parent / "split.csv").records
               if r.split == "train"]
    write_manifest(trained, tmp_path / "trained.csv")
    (tmp_path / "films").mkdir()
    site = [make_record(shutil.copy(r.path, tmp_path / "films" / f"site_{i}.jpeg"), r.label)  # a site's own names
            for i, r in enumerate(discover(tiny_dataset).split("test"))]
    write_manifest(site, tmp_path / "site.csv")
    assert cli.main(["threshold", str(origin), str(tmp_path / "site.csv"), "--youden", "--out",
                     str(tmp_path / "copy")]) == 0
    started = train(tmp_path / "site.csv", TrainConfig(model="simple_cnn", pretrained=False, image_size=32, epochs=1,
                                                       batch_size=8, init=str(origin), data_name="site A"),
                    tmp_path / "started")
    # its card names the films its weights started from (Kermany's) and its own, not Kermany's alone
    assert [(s["name"], s["films"], s["started_from"]) for s in load_card(started).training_data] == [
        (KERMANY, 48, True), ("site A", 16, False)]
    assert ("Reads chest X-ray films like those its weights learnt from (films of site A, fine-tuned from weights that "
            "learnt from Kermany et al.'s films") in (started / "MODEL_CARD.md").read_text()
    for bundle in (tmp_path / "copy", started):
        with pytest.raises(ValueError, match=rf"were in {re.escape(str(origin))}'s training split"):
            evaluate(bundle, tmp_path / "trained.csv")
    nudge_weights(origin)
    write_manifest([dataclasses.replace(r, split="val") for r in trained], origin.parent / "split.csv")  # its new run
    for bundle in (tmp_path / "copy", started):
        metrics = evaluate(bundle, tmp_path / "trained.csv", out_dir=bundle.parent / f"eval-{bundle.name}")
        assert any(f"its weights come from {origin} (it was trained again since {bundle} learnt from it)" in c
                   for c in metrics["unchecked"]), (bundle, metrics["unchecked"])
        html = (bundle.parent / f"eval-{bundle.name}" / "report.html").read_text()
        assert "Not checked to be independent." in html and "Not an independent evaluation." not in html


def test_films_most_of_which_copy_training_films_are_refused_and_a_few_warned_of(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """evaluate on films that were all byte-for-byte copies of the bundle's training films under other names warned
    and reported figures (exit 0), where the same films under their own paths were refused: figures on them measure
    what the model remembers. More than half of the films given being such copies is refused as those paths are,
    saying how many and which split.csv lists the films they copy, before anything is written; half or fewer stay a
    warning, since a public dataset may hold one film in two of its splits."""
    trained = [r for r in discover(tiny_bundle.parent / "split.csv").records if r.split == "train"]
    new = discover(tiny_dataset).split("test")[:4]

    def site(copies: int) -> Path:
        folder = tmp_path / f"site-{copies}"
        for i, r in enumerate([*new, *trained[:copies]]):
            (folder / r.label).mkdir(parents=True, exist_ok=True)
            shutil.copy(r.path, folder / r.label / (Path(r.path).name if i < len(new) else f"copy-{i}.jpeg"))
        return folder

    findings = check_held_out([tiny_bundle], discover(site(4)).records, "evaluate")
    assert any(c.startswith("4 film(s) given to evaluate are copies of training films under other names")
               for c in findings.caveats), findings.caveats
    capsys.readouterr()
    assert cli.main(["-q", "evaluate", str(tiny_bundle), str(site(5)), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pneumoscan evaluate: error: 5 of the 9 films given to evaluate are copies of films in "
                          f"{tiny_bundle}'s training split under other names, byte for byte"), err
    assert f"; {tiny_bundle.parent / 'split.csv'} lists its training films), more than half: " in err, err
    assert err.endswith(f"evaluate on films {tiny_bundle} did not train on\n") and err.count("\n") == 1, err
    assert not (tmp_path / "e").exists()


def test_evaluate_checks_a_copied_bundle_against_its_runs_split_given(tiny_bundle: Path, tiny_dataset: Path,
                                                                       tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """A bundle copied out of its run, evaluated on that run's split.csv (proved its run's by the card's data
    checksum, as `export --int8` takes it), was said to be unchecked ("cannot be checked that the films given to
    evaluate are new to it"): its films are checked against it, its validation films said to have chosen the
    threshold and its training films refused. Other data is still said to be unchecked (evaluate's own log line,
    said with or without a report: none is written)."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    split, unchecked = tiny_bundle.parent / "split.csv", "cannot be checked that the films given to evaluate"
    assert cli.main(["evaluate", str(bundle), str(split), "--split", "val", "--out", str(tmp_path / "val")]) == 0
    assert unchecked not in caplog.text and "validation films, on which its own temperature" in caplog.text
    assert cli.main(["evaluate", str(bundle), str(split), "--split", "train", "--out", str(tmp_path / "train")]) == 2
    assert "training split" in capsys.readouterr().err
    caplog.clear()
    evaluate(bundle, tiny_dataset, "test")
    assert unchecked in caplog.text


def test_evaluate_from_python_proves_a_copied_bundles_run_split_itself(tiny_bundle: Path, tmp_path: Path) -> None:
    """Only the command line made the proof that a copied bundle's DATA is its run's split (its card's data checksum)
    and passed it to evaluate(run_split=): the same call from Python said the films unchecked, and its card could
    record them as other data. evaluate() makes the proof itself, so Python users get the command line's checks."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    split = tiny_bundle.parent / "split.csv"
    metrics = evaluate(bundle, split, "val")
    assert metrics["unchecked"] == [] and any("validation films" in said for said in metrics["optimistic"])
    with pytest.raises(ValueError, match="training split"):
        evaluate(bundle, split, "train")


def test_the_proof_of_a_copied_bundles_run_split_reads_data_once(tiny_bundle: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The proof that DATA is a copied bundle's run split (its card's data checksum) listed DATA's films again after
    evaluate had read them, and decoded or opened their pixels again where evaluate had read every split: it takes
    what evaluate read. With --split val it still reads the training films' pixels, which the checksum covers. The
    held-out check, given DATA as the proven run split, lists it from what evaluate read too (it listed it a third
    time)."""
    from pneumoscan.models import card as card_module

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    split = tiny_bundle.parent / "split.csv"
    listed, cached = [], []
    for module in (card_module, held_out):
        monkeypatch.setattr(module, "discover", lambda *a, **k: listed.append(a) or discover(*a, **k))
    monkeypatch.setattr(card_module, "build_cache",
                        lambda paths, *a, **k: cached.append(len(paths)) or build_cache(paths, *a, **k))
    with pytest.raises(ValueError, match="training split"):  # proved the run's: its training films are refused
        evaluate(bundle, split)
    assert (listed, cached) == ([], [])
    metrics = evaluate(bundle, split, "val")
    assert metrics["unchecked"] == [] and any("validation films" in said for said in metrics["optimistic"])
    assert listed == [] and cached == [len(discover(split).records)]


def _flipped(source: str, path: str) -> None:
    """``source``'s picture mirrored, written over ``path`` in place (the same inode), a second later."""
    from PIL import Image

    Image.open(source).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path, format="JPEG", quality=95)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))


def test_the_copy_search_scans_a_training_film_once_until_it_changes(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The held-out check looks for copies of the bundle's training films among the films given by their pHashes:
    every evaluate (and `export --int8`) decoded all of its run's films again for it. Decoded once, by an earlier
    process (another evaluate's), counted at the reader the registry hands each film to; a training film changed
    in place since is hashed again, so that a copy of what it held is no longer one, and a film given, changed in
    place into a copy of a training film, is found to be one."""
    import subprocess
    import sys

    from pneumoscan.data import readers
    from pneumoscan.data.copies import PHASH_TARGET

    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    run = shutil.copytree(tiny_bundle.parent, tmp_path / "run", ignore=shutil.ignore_patterns("*.csv"))
    films = []
    for i, r in enumerate(discover(tiny_bundle.parent / "split.csv").records):  # films this test may change
        films.append(dataclasses.replace(r, path=str(shutil.copyfile(r.path, tmp_path / f"{i}-{Path(r.path).name}"))))
    write_manifest(films, run / "split.csv")
    as_run_split(run / "bundle")
    trained = [r.path for r in films if r.split == "train"]
    site = tmp_path / "site"
    for r in discover(tiny_dataset).split("test")[:4]:
        (site / r.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(r.path, site / r.label / Path(r.path).name)
    copy = shutil.copy(trained[0], site / "NORMAL" / "copy.jpeg")
    given = discover(site).records
    code = ("import sys; from pneumoscan.data.copies import picture_groups; "
            "picture_groups(sorted(sys.argv[1:]))")  # as the check groups them, in a process of its own
    subprocess.run([sys.executable, "-c", code, *(os.path.realpath(p) for p in [r.path for r in given + films])],
                   check=True, cwd=Path(__file__).parents[1])
    pillow = next(r for r in readers.registered() if r.name == "Pillow")
    decoded, gray = [], pillow.gray

    def counted(src: Path | bytes, at: int | None) -> np.ndarray:
        if at == PHASH_TARGET:  # a film decoded for the copy search
            decoded.append(os.path.realpath(src))
        return gray(src, at)

    monkeypatch.setattr(pillow, "gray", counted)
    copies = "film(s) given to evaluate are copies of training films under other names"
    assert any(copies in c for c in check_held_out([run / "bundle"], given, "evaluate").caveats)
    assert decoded == []
    _flipped(trained[0], trained[0])  # no longer the picture copy.jpeg holds
    _flipped(trained[1], given[0].path)  # the picture trained[1] holds from now on
    _flipped(trained[1], trained[1])
    caveats = check_held_out([run / "bundle"], given, "evaluate").caveats
    assert sorted(decoded) == sorted(os.path.realpath(p) for p in (*trained[:2], given[0].path))
    assert [c for c in caveats if copies in c] == [
        f"1 {copies}, byte for byte or the picture re-encoded or resized (e.g. {os.path.realpath(given[0].path)} of "
        f"{os.path.realpath(trained[1])}): the figures on them are optimistic"], (caveats, copy)


def _beside_a_strangers_split(tiny_bundle: Path, tiny_dataset: Path, folder: Path) -> Path:
    """tiny_bundle copied into FOLDER, which holds a split.csv of other films, as `pneumoscan split` writes one
    into the folder it runs in: the tiny dataset's test films, as train and val films."""
    bundle = shutil.copytree(tiny_bundle, folder / "bundle")
    strangers = discover(tiny_dataset).split("test")
    write_manifest([dataclasses.replace(r, split=("train", "val")[i % 2]) for i, r in enumerate(strangers)],
                   folder / "split.csv")
    return bundle


def _added_on_its_training_films(bundle: Path, run_bundle: Path, tmp_path: Path) -> dict:
    """The record `evaluate --add-to-card` adds to BUNDLE's card on the training films of RUN_BUNDLE's run (its
    weights'), given as a site's manifest (tmp_path/site.csv). The record is made from the figures, which are the
    same with a report and without: none is written (its figures cost about 1 s of CPU; the command line's
    --add-to-card beside its report is tests/test_model_card.py's)."""
    trained = [dataclasses.replace(r, split="") for r in discover(run_bundle.parent / "split.csv").records
               if r.split == "train"]
    write_manifest(trained, tmp_path / "site.csv")
    evaluate(bundle, tmp_path / "site.csv", add_to_card=True)
    return load_card(bundle).external_evaluations[-1]


def test_a_bundle_beside_another_runs_split_is_taken_as_copied_out_of_its_run(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A bundle copied into a folder holding another split.csv had that split read as its run's: evaluate on the
    bundle's own training films was taken without a word, and --add-to-card wrote the figures into its card as an
    evaluation of other data, its films "checked". The split beside it is its run's only when it is the file its
    card recorded at training: here the bundle is one copied out of its run, its evaluation unchecked, and the
    reason names both files. predict's warning of training films read that other split too."""
    bundle = _beside_a_strangers_split(tiny_bundle, tiny_dataset, tmp_path / "elsewhere")
    record = _added_on_its_training_films(bundle, tiny_bundle, tmp_path)
    assert record["films_checked"] is False, record
    split = tmp_path / "elsewhere" / "split.csv"
    assert f"the split.csv beside it ({split}) is not its run's" in record["caveats"][0], record["caveats"]
    assert f"{bundle / 'bundle.json'} recorded " in record["caveats"][0], record["caveats"]
    caplog.clear()
    strangers = [r.path for r in discover(split).records if r.split == "train"]
    assert held_out.trained_among([bundle], strangers, "predict") == []
    assert f"{split}) is not its run's" in caplog.text


def test_a_bundle_in_its_run_and_a_card_older_than_the_splits_record_take_the_split_beside_it(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The split.csv its run wrote is read as the run's, wherever the run folder is copied; a card that records no
    checksum of its run's split (written before pneumoscan kept one) takes the split beside it, with a warning that
    it could not be proved its run's, where its films' image cache is not at hand to prove it (no cache here),
    rather than decoding every film of the run to prove it at each command."""
    bundle = shutil.copytree(tiny_bundle.parent, tmp_path / "run") / "bundle"
    trained = [r for r in discover(bundle.parent / "split.csv").records if r.split == "train"]
    with pytest.raises(ValueError, match="training split"):
        check_held_out([bundle], trained, "evaluate")
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "no-cache"))
    old = _beside_a_strangers_split(tiny_bundle, tiny_dataset, tmp_path / "old")
    save_card(old, dataclasses.replace(load_card(old), split_checksum=""))
    strangers = [r for r in discover(old.parent / "split.csv").records if r.split == "train"]
    with pytest.raises(ValueError, match="training split"):
        check_held_out([old], strangers, "evaluate")
    assert f"so {old.parent / 'split.csv'} is taken as its run's split without proof" in caplog.text


def _older_card(bundle: Path) -> Path:
    """BUNDLE's card as one written before cards recorded their run's split (0.2.0's, an early 0.3.0.dev0's)."""
    save_card(bundle, dataclasses.replace(load_card(bundle), split_checksum=""))
    return bundle


def test_a_card_older_than_the_splits_record_has_the_split_beside_it_proved_by_its_films_cache(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """An older card took any split.csv beside it as its run's with a warning, and evaluate --add-to-card on its own
    training films beside a stranger's split marked them "checked". Where the split's films are in the image cache
    (its run's, built at training; `pneumoscan cache SPLIT --bundle B`), the card's data checksum tells it from that
    cache with no film decoded: its own run's split is taken without a warning; a stranger's is not the films it
    trained on, and an evaluation of others is unchecked for that reason."""
    run = _older_card(shutil.copytree(tiny_bundle.parent, tmp_path / "run") / "bundle")
    trained = [r for r in discover(run.parent / "split.csv").records if r.split == "train"]
    with pytest.raises(ValueError, match="training split"):
        check_held_out([run], trained, "evaluate")
    assert "without proof" not in caplog.text
    bundle = _older_card(_beside_a_strangers_split(tiny_bundle, tiny_dataset, tmp_path / "elsewhere"))
    split = bundle.parent / "split.csv"
    build_cache([r.path for r in discover(split).records], load_card(bundle).spec)  # `pneumoscan cache` would
    record = _added_on_its_training_films(bundle, run, tmp_path)
    assert record["films_checked"] is False, record
    assert f"the films of the split.csv beside it ({split}) are not the ones" in record["caveats"][0]


def test_export_int8_says_a_split_unproved_only_once_its_films_have_been_checked_and_left_it_so(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """export --int8 of an older card in its run, given the split beside it or a copy of it: the split was said to
    be taken without proof before the films read proved it by the card's data checksum (a copy where no image cache
    of the split's films proved it first). Proved, nothing is said; a card without a data checksum (0.1.0's) leaves
    it unproved, said once, after the checks."""
    run = _older_card(shutil.copytree(tiny_bundle.parent, tmp_path / "run") / "bundle")
    export = ["export", str(run), "--int8", "--data", str(run.parent / "split.csv")]
    with caplog.at_level("WARNING"):
        assert cli.main(export) == 0
        monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "no-cache"))  # none holds the split's films
        copy = shutil.copyfile(run.parent / "split.csv", tmp_path / "copy.csv")
        assert cli.main(["export", str(run), "--int8", "--data", str(copy)]) == 0
    assert "without proof" not in caplog.text
    save_card(run, dataclasses.replace(load_card(run), data_checksum=""))
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert cli.main(export) == 0
    said = [r.getMessage() for r in caplog.records]
    assert sum(f"so nothing can prove {run.parent / 'split.csv'} its run's split" in m for m in said) == 1, said


def test_evaluate_add_to_card_says_a_split_it_could_not_prove_its_runs(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An older card whose split's films are in no image cache takes the split beside it as its run's unproved:
    --add-to-card recorded its figures as checked, with nothing but a log line to say that the split might be a
    stranger's. The record's caveats say it, and MODEL_CARD.md shows it; a threshold's record alike."""
    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "no-cache"))
    bundle = _older_card(_beside_a_strangers_split(tiny_bundle, tiny_dataset, tmp_path / "elsewhere"))
    record = _added_on_its_training_films(bundle, tiny_bundle, tmp_path)
    said = f"so {bundle.parent / 'split.csv'} is taken as its run's split without proof"
    assert [c for c in record["caveats"] if said in c], record["caveats"]
    assert said in (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert cli.main(["threshold", str(bundle), str(tmp_path / "site.csv"), "--youden", "--out",
                     str(tmp_path / "thresholded")]) == 0
    assert [c for c in load_card(tmp_path / "thresholded").threshold_records[-1]["caveats"] if said in c]


def _run_on_films_of_its_own(tiny_bundle: Path, tiny_dataset: Path, folder: Path, split_checksum: bool) -> Path:
    """A copy of tiny_bundle's run whose split.csv lists a copy of the tiny dataset's films (in FOLDER/data), which
    a test may change without touching the session's; ``split_checksum``: its card records its split as a run of
    this version's does, else none (0.2.0's). Returns its bundle."""
    films = shutil.copytree(tiny_dataset, folder / "data")
    bundle = shutil.copytree(tiny_bundle.parent, folder / "run") / "bundle"
    split = bundle.parent / "split.csv"
    write_manifest([dataclasses.replace(r, path=r.path.replace(str(tiny_dataset), str(films)))
                    for r in discover(split).records], split)
    return as_run_split(bundle) if split_checksum else _older_card(bundle)


def _exported_again(paths: list[str]) -> None:
    """A site's films exported again under the same paths: brighter, saved at another quality."""
    from PIL import Image, ImageEnhance

    for path in paths:
        with Image.open(path) as film:
            ImageEnhance.Brightness(film.convert("L")).enhance(1.2).save(path, format="JPEG", quality=90)


def test_an_older_cards_split_whose_films_were_exported_again_keeps_its_training_films_refused(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A card older than the split's record (0.2.0's) in its run, its films exported again in place since training:
    the image cache of the films as they are now disproves the split beside it, and it was taken as another run's,
    so that evaluate on the bundle's own training films measured them, unchecked, and --add-to-card recorded them.
    The card cannot tell films changed from another run's split: the message says both, with the check and the
    count of films, the films the split lists are refused as its training films all the same, and an evaluation on
    others stays unchecked, for the reason."""
    bundle = _run_on_films_of_its_own(tiny_bundle, tiny_dataset, tmp_path, split_checksum=False)
    split = bundle.parent / "split.csv"
    records = discover(split).records
    build_cache([r.path for r in records], load_card(bundle).spec)
    with pytest.raises(ValueError, match="training split"):  # as trained: the cache proves it its run's
        check_held_out([bundle], [r for r in records if r.split == "train"], "evaluate")
    assert "not the ones" not in caplog.text and "without proof" not in caplog.text
    _exported_again([r.path for r in records])
    build_cache([r.path for r in records], load_card(bundle).spec)  # `pneumoscan cache SPLIT --bundle B` would
    trained = [r for r in records if r.split == "train"]
    with pytest.raises(ValueError, match=r"training split .*its films are not the ones its card records"):
        check_held_out([bundle], trained, "evaluate")
    said = (f"the films of the split.csv beside it ({split}) are not the ones {bundle / 'bundle.json'} records it "
            f"was trained and validated on: their data checksum (pixels, labels and sides of the {len(records)} "
            "films it lists, read from the image cache) is another")
    assert said in caplog.text
    assert "changed since training" in caplog.text and "or it is another run's split.csv" in caplog.text
    assert "is not its run's" not in caplog.text
    findings = check_held_out([bundle], discover(tiny_dataset).split("test"), "evaluate")
    assert said in findings.unknown_source(bundle), findings


def test_a_card_without_a_data_checksum_says_nothing_can_prove_its_split_and_what_to_do(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path,
) -> None:
    """A card that records neither its run's split nor its training films (0.1.0's) has nothing to prove the split
    beside it by: the caveat told its user to cache the split's films, whereby the card's data checksum would prove
    it, and the cache built changed nothing. It says once that nothing can, and what the user can do."""
    bundle = _older_card(shutil.copytree(tiny_bundle.parent, tmp_path / "run") / "bundle")
    save_card(bundle, dataclasses.replace(load_card(bundle), data_checksum=""))
    split = bundle.parent / "split.csv"
    build_cache([r.path for r in discover(split).records], load_card(bundle).spec)
    caveats = check_held_out([bundle], discover(tiny_dataset).split("test"), "evaluate").caveats
    said = [c for c in caveats if "without proof" in c]
    assert len(said) == 1, caveats
    assert f"nothing can prove {split} its run's split" in said[0], said
    assert "Keep the bundle in its run folder" in said[0] and "trained again" in said[0], said
    assert "pneumoscan cache" not in said[0], said


def test_a_copied_bundle_given_its_runs_split_whose_films_were_exported_again_says_so(
    tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A bundle copied out of its run, given its run's split.csv (the file its card recorded) whose films were
    exported again in place since training: the proof by the data checksum failed, and the split was taken as no
    run's, its films unchecked, so that --add-to-card recorded its own validation films. The split is its run's by
    its checksum: its films are checked as the run's (validation films refused for a card's record), and the log
    says its films changed since training, with the check and the count of films."""
    run = _run_on_films_of_its_own(tiny_bundle, tiny_dataset, tmp_path, split_checksum=True)
    split = run.parent / "split.csv"
    _exported_again([r.path for r in discover(split).records])
    bundle = shutil.copytree(run, tmp_path / "elsewhere" / "bundle")
    with pytest.raises(ValueError, match="validation films"):
        evaluate(bundle, split, "val", add_to_card=True)
    assert (f"{split} is the split {bundle}'s run wrote (its SHA-256 is the one {bundle / 'bundle.json'} recorded), "
            "but its films are not the ones it was trained and validated on: their data checksum (pixels, labels "
            "and sides of the 48 films it lists) is another") in caplog.text
