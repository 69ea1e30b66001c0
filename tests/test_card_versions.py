"""A bundle written by a newer pneumoscan, read by this one: every card records the pneumoscan that wrote it, and a
card with fields or a format this one does not know is refused saying which pneumoscan wrote it and to upgrade, not
as if it had been edited (a field whose meaning this one does not know, such as a new threshold rule, is never
ignored); an edited card keeps its own refusal."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan import __version__, cli
from pneumoscan.models import card as card_module
from pneumoscan.models.card import CARD, CHECKSUM, TRAINED_BY, load_card, save_card

UPGRADE = "upgrade pneumoscan (`pip install -U pneumoscan`) to use it"


def forged(tiny_bundle: Path, tmp_path: Path, change: Callable[[dict], None]) -> Path:
    """A copy of ``tiny_bundle`` whose card ``change`` rewrote, sealed with the checksum its writer would record."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    fields = json.loads((bundle / CARD).read_text())
    del fields[CHECKSUM]
    change(fields)
    (bundle / CARD).write_text(json.dumps({**fields, CHECKSUM: card_module._card_digest(fields)}, indent=2))
    return bundle


def written_by(version: str | None, new_field: str | None = None, form: int | None = None,
               package_version: str | None = None) -> Callable[[dict], None]:
    """A card as ``version`` of pneumoscan wrote it (None: one that records no writer), with ``new_field`` (a field
    this pneumoscan does not know), of format ``form``, made by ``package_version`` (None: no such record)."""
    def change(fields: dict) -> None:
        fields["versions"].pop("pneumoscan", None)
        if version is not None:
            fields["versions"]["pneumoscan"] = version
        fields.pop("package_version")
        fields["train_config"].pop(TRAINED_BY, None)  # a record the card's writer is not known to keep
        if package_version is not None:
            fields["package_version"] = package_version
        if new_field is not None:
            fields[new_field] = {"rule": "sensitivity at least 0.97 in every age group"}
        if form is not None:
            fields["format_version"] = form
    return change


def test_every_card_records_the_pneumoscan_that_wrote_it(tiny_bundle: Path, tmp_path: Path) -> None:
    """Training records it, a rewrite records its own in place of the one before, and the record is under the
    card's checksum like every other field."""
    assert load_card(tiny_bundle).versions["pneumoscan"] == __version__
    assert {"torch", "numpy"} <= load_card(tiny_bundle).versions.keys()  # beside the libraries' versions
    bundle = forged(tiny_bundle, tmp_path, written_by("0.0.1", package_version="0.0.1"))
    card = load_card(bundle)
    assert card.versions["pneumoscan"] == "0.0.1"
    save_card(bundle, card)  # as `threshold`, `export --int8` and `evaluate --add-to-card` rewrite it
    assert json.loads((bundle / CARD).read_text())["versions"]["pneumoscan"] == __version__
    assert load_card(bundle).versions["pneumoscan"] == __version__ and load_card(bundle).package_version == "0.0.1"
    text = (bundle / CARD).read_text()
    (bundle / CARD).write_text(text.replace(f'"pneumoscan": "{__version__}"', '"pneumoscan": "99.0"'))
    with pytest.raises(ValueError, match="bundle.json is damaged"):
        load_card(bundle)


@pytest.mark.parametrize(("writer", "package_version"), [("99.0", __version__), (None, "99.0.1")],
                         ids=["the last writer", "only the maker (a card older than the writer's record)"])
def test_a_field_from_a_newer_pneumoscan_is_refused_with_the_upgrade(
    tiny_bundle: Path, tmp_path: Path, writer: str | None, package_version: str
) -> None:
    newer = writer or package_version
    bundle = forged(tiny_bundle, tmp_path, written_by(writer, "threshold_rule", package_version=package_version))
    with pytest.raises(ValueError) as refused:
        load_card(bundle)
    assert str(refused.value) == (f"{bundle / CARD}: this bundle was written by pneumoscan {newer}, newer than this "
                                  f"one ({__version__}), with fields this one does not know ('threshold_rule'): "
                                  f"{UPGRADE}")


@pytest.mark.parametrize(("writer", "upgrade"), [("99.0", True), (__version__, False)])
def test_a_field_inside_a_training_source_from_a_newer_pneumoscan_is_refused_with_the_upgrade(
    tiny_bundle: Path, tmp_path: Path, writer: str, upgrade: bool
) -> None:
    """A key a newer pneumoscan writes inside a record of the card (as a student's ``taught`` in its training_data,
    which a pneumoscan before that record does not know) is refused saying which pneumoscan wrote it and to
    upgrade, as a new field of the card is: it was refused as "extra inputs are not permitted", read as an edit. A
    card its own version wrote with such a key keeps that refusal."""
    def change(fields: dict) -> None:
        written_by(writer, package_version=__version__)(fields)
        fields["training_data"][0]["consent"] = "opt-out"

    bundle = forged(tiny_bundle, tmp_path, change)
    with pytest.raises(ValueError) as refused:
        load_card(bundle)
    assert str(refused.value) == (
        f"{bundle / CARD}: this bundle was written by pneumoscan 99.0, newer than this one ({__version__}), with "
        f"fields this one does not know ('training_data.0.consent'): {UPGRADE}" if upgrade else
        f"{bundle / CARD}: training_data.0.consent: extra inputs are not permitted (found 'opt-out')")


def test_the_refusal_is_one_line_of_the_command(tiny_bundle: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    bundle = forged(tiny_bundle, tmp_path, written_by("99.0", "threshold_rule", package_version=__version__))
    film = tmp_path / "film.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(film)
    assert cli.main(["predict", str(bundle), str(film)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "written by pneumoscan 99.0" in err and "pip install -U pneumoscan" in err, err


@pytest.mark.parametrize("writer", [__version__, "0.0.1", "not a version"])
def test_a_field_no_newer_pneumoscan_wrote_is_refused_as_edited(tiny_bundle: Path, tmp_path: Path,
                                                                 writer: str) -> None:
    """A card whose writer knew every field this pneumoscan knows, with one it does not: misspelt or added by hand."""
    def misspelt(fields: dict) -> None:
        written_by(writer, package_version=writer)(fields)
        fields["treshold"] = fields.pop("threshold")

    with pytest.raises(ValueError, match="unknown .*bundle.json field 'treshold'; did you mean 'threshold'") as refused:
        load_card(forged(tiny_bundle, tmp_path, misspelt))
    assert "upgrade" not in str(refused.value)


def test_a_newer_format_is_refused_with_the_upgrade(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = forged(tiny_bundle, tmp_path, written_by("99.0", form=3, package_version=__version__))
    with pytest.raises(ValueError) as refused:
        load_card(bundle)
    assert str(refused.value) == (f"{bundle}: this bundle was written by pneumoscan 99.0 (bundle format 3), newer "
                                  f"than this one ({__version__}), which reads formats 1, 2: {UPGRADE}")


def test_a_newer_format_recording_no_writer_is_refused_with_the_upgrade(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = forged(tiny_bundle, tmp_path, written_by(None, form=3))
    with pytest.raises(ValueError) as refused:
        load_card(bundle)
    assert str(refused.value) == (f"{bundle}: bundle format 3 was written by a pneumoscan newer than this one "
                                  f"({__version__}), which reads formats 1, 2: {UPGRADE}")


@pytest.mark.parametrize("form", [3, "2", 0, None])
def test_a_format_no_newer_pneumoscan_wrote_keeps_its_refusal(tiny_bundle: Path, tmp_path: Path,
                                                               form: object) -> None:
    """Format 3 from this very version, or a format no pneumoscan writes (text, 0, none): edited, not newer."""
    def change(fields: dict) -> None:
        written_by(__version__, package_version=__version__)(fields)
        fields["format_version"] = form

    bundle = forged(tiny_bundle, tmp_path, change)
    with pytest.raises(ValueError) as refused:
        load_card(bundle)
    assert str(refused.value) == f"{bundle}: bundle format {form!r} is not one this pneumoscan reads (1, 2)"


@pytest.mark.parametrize(("writer", "newer"), [
    ("0.10.0", True), ("0.2.0rc1", True), ("0.1.0+cu130", False), ("0.1.0rc2", False), ("unknown", False),
])
def test_what_counts_as_newer(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str,
                              newer: bool) -> None:
    """Versions compared as PEP 440 orders them (numbers as numbers, a pre-release before its release, a post-release
    after it), read by a pneumoscan 0.1.0; text that is no version is no writer."""
    monkeypatch.setattr(card_module, "__version__", "0.1.0")
    bundle = forged(tiny_bundle, tmp_path, written_by(writer, "threshold_rule", package_version="0.0.1"))
    with pytest.raises(ValueError, match="upgrade pneumoscan" if newer else "unknown .*field 'threshold_rule'"):
        load_card(bundle)


def test_unreleased_code_records_a_version_past_the_last_release() -> None:
    """Every card records the pneumoscan that wrote it (from pyproject.toml's version): code with changes since the
    last release named itself that release, so its bundles read as the release's, and the release, given one with a
    field it does not know (`plugins`), refused it as edited (`unknown ... field 'plugins'`) where a writer newer than
    itself is told to upgrade. While CHANGELOG.md's [Unreleased] lists changes, the version is past the release
    (a dev release of the next one); with none listed, it is that release."""
    import re
    import tomllib

    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    log = (root / "CHANGELOG.md").read_text()
    unreleased, released = re.search(r"^## \[Unreleased\]\n(.*?)^## \[([^\]]+)\]", log, re.M | re.S).groups()
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    if re.search(r"^- ", unreleased, re.M):
        assert Version(version) > Version(released), (version, released)
    else:
        assert Version(version) == Version(released), (version, released)


def test_a_cv_resumed_under_another_pneumoscan_says_its_folds_mix_versions(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cv run stopped under 0.2.0 and resumed under this version keeps the folds 0.2.0 finished and trains the
    others here: cv.json pooled them without a word. Each version is named with its folds (a fold still to train,
    this one; a fold stopped mid-fold, its checkpoint's then this one, a checkpoint of 0.2.0 naming none), with what
    to do; folds all of one version say nothing."""
    from pneumoscan.models.run_folder import RunFolder
    from pneumoscan.training.cv import warn_fold_versions
    from pneumoscan.training.resume import TRAINED_BY, save_checkpoint

    runs = [RunFolder(tmp_path / f"fold-{k}") for k in range(3)]
    old = "0.1.0" if __version__ != "0.1.0" else "0.0.1"  # a release before this one, whatever this one is
    shutil.copytree(forged(tiny_bundle, tmp_path / "old", written_by(old, package_version=old)),
                    runs[0].bundle)
    shutil.copytree(tiny_bundle, runs[1].bundle)
    with caplog.at_level("WARNING", logger="pneumoscan.training.cv"):
        warn_fold_versions(runs)  # fold-2 still to train
        shutil.copytree(tiny_bundle, runs[2].bundle)
        warn_fold_versions(runs)  # all finished, by two versions
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 2 and all(f"fold-0: {old}; fold-1, fold-2: {__version__}" in m and "--out" in m
                                      for m in said), said
        caplog.clear()
        shutil.rmtree(runs[0].bundle)  # fold-0 to train again, here
        warn_fold_versions(runs)
        assert caplog.records == []
        # fold-0 stopped mid-fold under 0.2.0, whose checkpoint records no version: its epochs to come are this
        # one's, and it was said of no version (a fold still to train is this one's)
        save_checkpoint(runs[0].checkpoint, {"epoch": 0})
        warn_fold_versions(runs)
        [said] = [r.getMessage() for r in caplog.records]
        assert (f"fold-0: a version before 0.3 (its checkpoint records none), then {__version__}; fold-1, fold-2: "
                f"{__version__}") in said, said
        caplog.clear()
        save_checkpoint(runs[0].checkpoint, {"epoch": 0, TRAINED_BY: [__version__]})  # this version's
        warn_fold_versions(runs)
    assert caplog.records == []


def test_folds_started_from_a_bundle_of_another_pneumoscan_are_told_as_of_one_version(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cv started from a bundle (--init) that an earlier version trained: each fold's card names that bundle's
    versions first, then this one. Finished or still to train, its folds are of one version for cv, which says
    nothing; a fold finished by another version than the others is named, as without --init."""
    import dataclasses

    from pneumoscan.models.run_folder import RunFolder
    from pneumoscan.training.cv import warn_fold_versions

    old = "0.1.0" if __version__ != "0.1.0" else "0.0.1"
    start = {TRAINED_BY: [None, old]}  # the starting bundle's train_config: begun before 0.3, finished by old
    runs = [RunFolder(tmp_path / f"fold-{k}") for k in range(3)]

    def finished(run: RunFolder, versions: list[str | None]) -> None:
        shutil.copytree(tiny_bundle, run.bundle, dirs_exist_ok=True)
        card = load_card(run.bundle)
        save_card(run.bundle, dataclasses.replace(card, train_config={**card.train_config, TRAINED_BY: versions}))

    for run in runs[:2]:
        finished(run, [None, old, __version__])
    with caplog.at_level("WARNING", logger="pneumoscan.training.cv"):
        warn_fold_versions(runs, start)  # fold-2 still to train, from the same bundle
        assert caplog.records == []
        finished(runs[2], [None, old, __version__])
        warn_fold_versions(runs, start)
        assert caplog.records == []
        finished(runs[2], [None, old, "9.9.9"])  # finished by another version
        warn_fold_versions(runs, start)
    [said] = [r.getMessage() for r in caplog.records]
    before = "a version before 0.3 (the card of init, the bundle it starts from, records none)"  # no checkpoint's
    assert (f"fold-0, fold-1: {before}, then {old}, then {__version__}; fold-2: {before}, then {old}, then 9.9.9"
            in said), said
    assert said.count("fold-0, fold-1: ") == 1, said
