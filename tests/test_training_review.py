"""Settings a run could not honour, found in a review of the training loop: refused before anything is trained or
rewritten."""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.cli import main
from pneumoscan.core.metrics import softmax
from pneumoscan.data.tasks import get_task
from pneumoscan.evaluation.operating_point import check_better_than_chance
from pneumoscan.models.bundle import load_bundle, save_bundle
from pneumoscan.models.card import load_card
from pneumoscan.training.config import TrainConfig, load_config
from pneumoscan.training.distributed import Dist
from pneumoscan.training.train import check_validation_scores, prepare_run_dir, train
from tests.builders import overflow_every_film
from tests.conftest import _xray_like
from tests.engine_stubs import stub_state

TINY = dict(model="simple_cnn", pretrained=False, image_size=32, batch_size=8, lr=3e-3, val_fraction=0.25)


@pytest.mark.parametrize("setting, reason", [
    ("time_budget=.inf", "time_budget must be finite and > 0 minutes, got inf"),
    ("weight_decay=.inf", "weight_decay must be finite and >= 0, got inf"),
])  # fmt: skip
def test_an_infinite_budget_or_weight_decay_is_refused_before_training(setting: str, reason: str) -> None:
    """`--set time_budget=.inf` (or a config file's) trained every epoch and then failed at the bundle with "Out of
    range float values are not JSON compliant"; `weight_decay=.inf` made the second step's loss NaN, refused as a
    divergence that told the user to lower the learning rate. The flags refuse infinity; the config did not."""
    with pytest.raises(ValueError) as refused:
        load_config(None, [setting])
    assert str(refused.value) == reason
    key = setting.partition("=")[0]
    with pytest.raises(ValueError, match=f"^{key} must be finite"):
        TrainConfig(**{key: math.inf})  # a library caller's config, as a file's


def test_resume_refuses_fewer_epochs_than_the_checkpoint_has_trained(tiny_dataset: Path, tmp_path: Path) -> None:
    """A checkpoint of 2 epochs resumed with --epochs 1 shipped a bundle whose card and config.yaml said 1 epoch
    while its history and report said 2. --epochs may stay at the epochs trained (finish now) or rise."""
    run, cfg = tmp_path / "run", TrainConfig(**{**TINY, "epochs": 2, "patience": 10})

    def killed_before_the_bundle(epoch: int) -> None:
        if epoch == 1:
            raise KilledBeforeTheBundle

    with pytest.raises(KilledBeforeTheBundle):
        train(tiny_dataset, cfg, run, on_epoch_end=killed_before_the_bundle)
    kept = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"it has trained 2 epochs, more than epochs \(--epochs\) 1, which its "
                                         r"bundle would record: give 2 epochs to finish it now, or more to train on$"):
        train(tiny_dataset, dataclasses.replace(cfg, epochs=1), run, resume=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == kept, "refused before RUN is rewritten"
    bundle = train(tiny_dataset, cfg, run, resume=True)
    assert load_card(bundle).train_config["epochs"] == 2
    assert len((run / "history.csv").read_text().splitlines()) == 1 + 2


class KilledBeforeTheBundle(RuntimeError):
    pass


@pytest.mark.parametrize("lr, batch_size, seen", [
    (1e3, 8, r"the model scores all 12 validation films alike \(P\(PNEUMONIA\) = [01], logits up to "),
    (1e8, 16, r"the validation logits of 12 of 12 films are not finite"),
])  # fmt: skip
def test_a_run_whose_model_collapsed_or_diverged_at_validation_ships_no_bundle(
    tiny_dataset: Path, tmp_path: Path, lr: float, batch_size: int, seen: str
) -> None:
    """lr 1e3 blew the logits up to ~1e17-1e22 with every training loss finite: every validation film scored
    PNEUMONIA 0 (or 1), and the run shipped a bundle at threshold 0 (every film PNEUMONIA, specificity 0) and
    temperature 20 after a warning. lr 1e8 left the weights of the epoch's last step infinite: validation failed in
    the metrics' words (12 of 12 scores are not finite), which named neither the epoch nor the learning rate."""
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"^training diverged at epoch 1 \(validation after step \d+\): {seen}"
                                         r".*: lower the learning rate lr \(--lr\) and train again$") as refused:
        train(tiny_dataset, TrainConfig(**{**TINY, "epochs": 1, "batch_size": batch_size, "lr": lr}), run)
    assert not (run / "bundle").exists()
    assert (run / "refused.txt").read_text(encoding="utf-8") == f"{refused.value}\n", "the folder says why, days later"


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_started_or_resumed_in_a_refused_runs_folder_clears_the_reason(tmp_path: Path, resume: bool) -> None:
    """RUN/refused.txt says why the run in RUN has no bundle. A run started there, or resumed from its checkpoint, is
    tried again: it ends in a bundle or says its own reason, and the earlier one must not stay beside its bundle."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "refused.txt").write_text("training diverged at epoch 2, step 37 (loss nan): ...\n", encoding="utf-8")
    (run / "checkpoint.pt").write_bytes(b"")  # what --resume goes on from
    prepare_run_dir(run, TrainConfig(**TINY), resume, Dist())
    assert not (run / "refused.txt").exists()
    assert (run / "checkpoint.pt").exists() == resume


@pytest.mark.parametrize("task", ["pneumonia", "multiclass"])
@pytest.mark.parametrize("first_loss, advice", [
    (0.69, r"lower the learning rate lr \(--lr\) and train again"),
    (1.2e11, r"the loss before the first step was already 1\.2e\+11, so the weights of --init B started out of "
             r"scale, not the learning rate: start from another bundle"),
])  # fmt: skip
def test_validation_scores_certain_of_every_film_are_refused_as_a_divergence(task: str, first_loss: float,
                                                                              advice: str) -> None:
    """A run started from a backbone whose features are 1e12 (`--init` of a badly scaled bundle, with
    `warm_start=false`) trained one epoch at losses of 1e11 and scored every validation film exactly 0 or 1: not one
    probability for every film, so it shipped a bundle (threshold 0.5000, temperature 20 at its bound, specificity
    0.71 from two ties). Certain of every film is refused as one probability for every film is; certain of some
    films is a model's own business. The refusal advised a lower learning rate whatever the first step's loss; a
    first loss of 1e11 says the weights started out of scale, and names where they started."""
    task_ = get_task(task)
    logits = np.random.default_rng(0).normal(0, 1e11, (12, len(task_.classes))).astype(np.float32)
    formula = re.escape(task_.positive_formula)
    state = stub_state()
    state.step, state.first_loss, state.start = 4, first_loss, ("the weights of --init B", "start from another bundle")
    with pytest.raises(ValueError, match=r"^training diverged at epoch 1 \(validation after step 4\): the model "
                                         rf"scores every one of the 12 validation films 0 or 1 \({formula}, logits "
                                         rf"up to \d\.\d+e\+11\), .*: {advice}$"):
        check_validation_scores(logits, task_, state)
    logits[0] /= 1e11  # one film the model is not certain of
    check_validation_scores(logits, task_, state)


def test_a_run_that_diverges_before_its_first_step_names_its_init_bundle(tiny_bundle: Path, tiny_dataset: Path,
                                                                         tmp_path: Path) -> None:
    """`--init` of a bundle whose scores are NaN (a diverged run's, sealed as any other) stopped at step 1 with
    "lower the learning rate", which had not acted yet. The refusal names the bundle."""
    shutil.copytree(tiny_bundle.parent, tmp_path / "start", ignore=shutil.ignore_patterns("checkpoint.pt", "best"))
    start = tmp_path / "start" / "bundle"
    model, card = load_bundle(start)
    overflow_every_film(model)
    save_bundle(start, model, card)
    with pytest.raises(ValueError, match=r"^training diverged at epoch 1, step 1 \(loss nan\): no step had moved the "
                                         r"weights yet, so the weights of init \(--init\) "
                                         rf"{re.escape(str(start))} gave it, not the learning rate: start from another "
                                         r"bundle$"):
        train(tiny_dataset, TrainConfig(**{**TINY, "epochs": 1, "init": str(start)}), tmp_path / "run")
    assert not (tmp_path / "run" / "bundle").exists()


@pytest.fixture(scope="module")
def taught_backwards(module_tmp: Callable[[str], Path]) -> Path:
    """Films whose training labels are swapped (every film that looks sick under NORMAL, every clear one under
    PNEUMONIA) and whose val/ folder is labelled right: a model that learns train/ ranks val/ backwards."""
    root = module_tmp("backwards") / "chest_xray"
    rng = np.random.default_rng(0)
    for split, first, n in (("train", 0, 24), ("val", 100, 8)):
        for i in range(first, first + n):
            swapped = split == "train"
            for path, sick in ((root / split / "NORMAL" / f"IM-{i:04d}-0001.jpeg", swapped),
                               (root / split / "PNEUMONIA" / f"person{i}_bacteria_{i}.jpeg", not swapped)):
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_xray_like(rng, 64, sick)).save(path, quality=95)
    return root


def test_a_run_no_better_than_chance_on_its_validation_films_ships_no_bundle(
    taught_backwards: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A run whose best validation AUC was 0.0000 (its training labels swapped) shipped a bundle (exit 0, "validation
    AUC 0.0000, threshold 0.2496") that predict and serve loaded. Refused (exit 2) naming the AUC, with no bundle and
    no RUN/best (a bundle predict loads, at threshold 0.5); the history, curves and checkpoint stay, and
    RUN/refused.txt keeps the reason, which was only printed: the folder alone looked like a run still training."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(taught_backwards), "--out", str(run), "--val-folder", "--model", "simple_cnn",
                 "--no-pretrained", "--image-size", "32", "--epochs", "1", "--batch-size", "8"]) == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(r"pneumoscan train: error: no bundle written: the best epoch's weights \(epoch 1 of 1\) rank "
                        r"the 16 validation films no better than chance \(AUC 0\.\d{4}, where 0\.5 is chance; every "
                        rf"epoch's figures are in {re.escape(str(run / 'history.csv'))}\): check the training films' "
                        r"labels, then train longer, raising epochs \(--epochs\) or time_budget "
                        r"\(--time-budget\), or on more films", said), said
    assert float(re.search(r"AUC (\S+),", said)[1]) <= 0.5
    assert {p.name for p in run.iterdir()} == {"config.yaml", "split.csv", "history.csv", "curves.png", "checkpoint.pt",
                                               "refused.txt"}
    assert (run / "refused.txt").read_text(encoding="utf-8") == said.removeprefix("pneumoscan train: error: ") + "\n"


def test_a_run_at_chance_after_training_losses_out_of_scale_is_told_to_lower_the_rate(tiny_dataset: Path,
                                                                                      tmp_path: Path) -> None:
    """At lr 0.1 the tiny run's first epoch had a training loss of about 370 (every loss finite, the validation scores
    not all alike) and its best epoch ranked the validation films no better than chance: it was told to check the
    training films' labels and train longer, which neither the labels (right) nor more epochs at that rate mend. A
    loss above 100 (a film's own class at e^-100) says the steps took the weights out of scale: as a divergence, it
    is told to lower the learning rate."""
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"^no bundle written: the best epoch's weights \(epoch \d of 2\) rank the 12 "
                                         r"validation films no better than chance \(.*\): the training loss reached "
                                         r"\d+, out of scale: lower the learning rate lr \(--lr\) and train again$"):
        train(tiny_dataset, TrainConfig(**{**TINY, "epochs": 2, "lr": 0.1}), run)


@pytest.mark.parametrize("task, refused, taken, said", [
    ("pneumonia", [[0, 1], [0, 2], [0, 0], [0, 3]], [[0, 0], [0, 1], [0, 2], [0, 3]], r"AUC 0\.5000"),
    # pneumonia told from normal (AUC 1), bacteria and virus each scored below every other film: macro (1 + 0 + 0) / 3
    ("multiclass", [[3, 1, 1], [3, 1, 1.5], [0, -5, 3], [0, -4, 3], [0, 3, -5], [0, 3, -4]],
     [[3, 1, 1], [3, 1, 1.5], [0, 3, -5], [0, 3, -4], [0, -5, 3], [0, -4, 3]],
     r"AUC 1\.0000, macro AUC over the 3 classes 0\.3333"),
])  # fmt: skip
def test_validation_figures_no_better_than_chance_are_refused(task: str, refused: list, taken: list, said: str
                                                              ) -> None:
    """An AUC of 0.5 exactly is chance; a three-class model is refused on its macro AUC too, which sees classes told
    apart backwards where the AUC of its positive call (any pneumonia) cannot."""
    task_ = get_task(task)
    targets = np.arange(len(refused)) * len(task_.classes) // len(refused)  # two films a class
    words = ("the weights", "validation films", "train again", "; more in history.csv")
    with pytest.raises(ValueError, match=rf"^no bundle written: the weights rank the {len(targets)} validation "
                                         rf"films no better than chance \({said}, where 0\.5 is chance; more in "
                                         r"history\.csv\): train again$"):
        check_better_than_chance(softmax(np.array(refused, np.float32)), targets, task_, *words)
    check_better_than_chance(softmax(np.array(taken, np.float32)), targets, task_, *words)


def test_a_batch_the_training_films_cannot_fill_is_refused_before_the_run_folder_is_touched(
    tiny_dataset: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """--batch-size 64 on 36 training films (each epoch drops its last partial batch) took no step: the earlier
    run's bundle, best weights and checkpoint in --out were deleted, a warm start would have run, and then "no epoch
    was validated" blamed the batch or the time budget, either of the two."""
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle.parent, run)  # a finished run: bundle, best weights, checkpoint, reports
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    with pytest.raises(ValueError, match=r"^the \d+ training films fill no batch of 64 in each of 1 process\(es\) "
                                         r"\(an epoch drops its last partial batch\), so no step would be taken: give "
                                         r"a batch_size \(--batch-size\) of \d+ or less, or more films$"):
        train(tiny_dataset, TrainConfig(**{**TINY, "epochs": 1, "batch_size": 64}), run)
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before
