import base64
import html
import io
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image
from pypdf import PdfReader
from playwright.sync_api import Browser, Page, expect

from pneumoscan.core.metrics import (AUC_INTERVAL, FILM_UNIT_CAVEAT, clopper_pearson, evaluate_binary,
                                     evaluate_multiclass, softmax)
from pneumoscan.core.figures import FIGURE_DPI, figure_bytes, png_data_url, set_title
from pneumoscan.evaluation.report import Curve, decision_curves_figure, roc_figure, write_report
from pneumoscan.evaluation.subgroups import subgroup_figures
from pneumoscan.models.card import load_card
from pneumoscan.training.callbacks import plot_training_curves
from tests.test_browser import TIMEOUT_MS, serious_violations

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URL = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in DATA_URL.findall(page)]


def _binary_metrics(n: int = 300, labels=None) -> dict:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n) if labels is None else np.asarray(labels)
    prob = 1 / (1 + np.exp(-(rng.normal(size=y.size) + 1.5 * (2 * y - 1))))
    return evaluate_binary(y, prob, 0.35, n_boot=100, class_names=("NORMAL", "PNEUMONIA"))


@pytest.fixture(scope="module")
def binary_report(module_tmp: Callable[[str], Path]) -> tuple[dict, Path]:
    """``_binary_metrics()`` and its report written with its figure files, for the tests that read a plain binary
    report (each write draws its five figures: 0.4 s of CPU)."""
    metrics = _binary_metrics()
    return metrics, write_report(metrics, module_tmp("binary") / "out", "t", figures=True)


def test_write_report_binary(tmp_path):
    metrics = _binary_metrics()
    path = write_report(
        metrics,
        tmp_path / "out",
        "Pneumonia <script>alert(1)</script>",
        "test set",
        extra={"model": "resnet18 & friends", "n images": 300},
    )
    assert path == tmp_path / "out" / "report.html"
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    page = path.read_text()
    pngs = _embedded_pngs(page)
    assert len(pngs) == 3 and all(png.startswith(PNG_SIGNATURE) for png in pngs)  # ROC, PR, reliability
    assert not EXTERNAL.search(page)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "resnet18 &amp; friends" in page
    assert "At threshold 0.5000" in page and "At bundle threshold 0.3500" in page
    assert "95% CI" in page and "PNEUMONIA" in page


def test_write_report_binary_with_one_class(binary_report: tuple[dict, Path], tmp_path: Path):
    shutil.copytree(binary_report[1].parent, tmp_path, dirs_exist_ok=True)  # a report of two classes, its figures
    assert (tmp_path / "roc.png").exists() and (tmp_path / "pr.png").exists()
    path = write_report(_binary_metrics(labels=[1] * 20), tmp_path, "one class", figures=True)
    page = path.read_text()
    assert "only one class is present" in page
    assert len(_embedded_pngs(page)) == 1  # the reliability diagram still exists
    # the same folder again: the curves of the earlier data are gone, not left beside a report without them
    assert not (tmp_path / "roc.png").exists() and not (tmp_path / "pr.png").exists()
    assert (tmp_path / "reliability.png").exists() and (tmp_path / "confusion_matrix.png").exists()


def test_write_report_multiclass(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    probs = softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[y])
    metrics = evaluate_multiclass(y, probs, ["normal", "bacteria", "virus"], n_boot=100)
    path = write_report(metrics, tmp_path, "Three classes", extra={"task": "subtype"})
    page = path.read_text()
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    pngs = _embedded_pngs(page)
    assert len(pngs) == 2 and all(png.startswith(PNG_SIGNATURE) for png in pngs)  # ROC per class, reliability
    assert not EXTERNAL.search(page)
    for name in ("normal", "bacteria", "virus"):
        assert f"<th>True {name}</th>" in page and f"<th>{name}</th>" in page
    # the page names the method that made each interval: macro AUC's is the score interval (it had said a bootstrap)
    assert f"for macro AUC, {AUC_INTERVAL}" in page and "and macro AUC" not in page


def test_write_report_binary_with_multiclass_part(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    probs = softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[y])
    metrics = evaluate_binary(y == 2, probs[:, 2], 0.4, n_boot=100, class_names=("bacteria", "virus"))
    metrics["multiclass"] = evaluate_multiclass(y, probs, ["normal", "bacteria", "virus"], n_boot=100)
    page = write_report(metrics, tmp_path, "Etiology").read_text()
    assert "All classes: Per class" in page and "<th>True normal</th>" in page
    assert len(_embedded_pngs(page)) == 5  # binary ROC, PR, reliability + per-class ROC, top-label reliability


def _row(page: str, label: str) -> str:
    """A summary row's text without tags, e.g. 'F1 0.912 (95% CI 0.88–0.94) ...'."""
    return " ".join(re.sub("<[^>]+>", " ", re.search(rf"<tr><th>{re.escape(label)}.*?</tr>", page).group(0)).split())


def test_report_shows_balanced_accuracy_with_its_ci_and_says_how_intervals_were_made(tmp_path):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    probs = softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[y])
    metrics = evaluate_binary(y > 0, 1 - probs[:, 0], 0.5, n_boot=100, class_names=("normal", "pneumonia"))
    metrics["two_stage"] = evaluate_multiclass(y, probs, ["normal", "bacteria", "virus"], n_boot=100,
                                               decision="two stages")
    page = write_report(metrics, tmp_path, "Two stages").read_text()
    lo, hi = metrics["two_stage"]["ci"]["balanced_accuracy"]
    assert f"(95% CI {100 * lo:.1f}%–{100 * hi:.1f}%)" in _row(page, "Balanced accuracy")
    assert page.count("exact Clopper-Pearson") == 2 and page.count(FILM_UNIT_CAVEAT) == 2  # the CLI's and card's words
    summaries = page.split("Per class")[0]  # no intervals by design: the per-class figures, PR AUC, ECE, macro F1
    computed = re.sub(r"<tr><th>(PR AUC|Expected calibration error|Macro F1).*?</tr>", "", summaries)
    assert "no 95% CI" not in computed and "exact one-sided bound" not in page


def _by_patient(seed: int, n_boot: int) -> dict:
    """Binary figures of 100 patients with 3 films each, with a three-class block, their intervals by patient."""
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 3, 100), 3)
    patients = np.repeat(np.arange(100), 3)
    probs = softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[y])
    metrics = evaluate_binary(y > 0, 1 - probs[:, 0], 0.5, n_boot=n_boot, class_names=("normal", "pneumonia"),
                              groups=patients)
    metrics["two_stage"] = evaluate_multiclass(y, probs, ["normal", "bacteria", "virus"], n_boot=n_boot,
                                               groups=patients)
    return metrics


@pytest.fixture(scope="module")
def by_patient_report(module_tmp: Callable[[str], Path]) -> tuple[dict, Path]:
    """``_by_patient(4, 100)`` and its report, for the tests that read a report whose intervals count patients."""
    metrics = _by_patient(4, 100)
    return metrics, write_report(metrics, module_tmp("by-patient"), "By patient")


def test_report_says_the_intervals_count_patients_when_they_do(by_patient_report: tuple[dict, Path],
                                                               tmp_path: Path) -> None:
    metrics, report = by_patient_report
    assert metrics["ci_unit"] == metrics["two_stage"]["ci_unit"] == "patient"
    page = report.read_text()
    assert page.count("95% CIs count patients, not films") == 2 and page.count("Korn-Graubard") == 2
    assert page.count("count patients") == 2, "once a block: the table's caption, not the note beside it again"
    assert "bootstrap of the patients" in page and "independent case" not in page
    separated = np.r_[np.linspace(0.6, 0.9, 20), np.linspace(0.1, 0.4, 50)]
    page = write_report(evaluate_binary(np.r_[np.ones(20, int), np.zeros(50, int)], separated, 0.5, n_boot=100,
                                        groups=np.arange(70) // 2), tmp_path, "separated").read_text()
    assert "exact one-sided bound from disjoint pairs of patients" in page


def test_report_of_perfectly_separated_classes_shows_no_certain_interval(tmp_path):
    """Every resample separates the classes: the AUC's interval is the exact bound (and the note says so), the
    proportions' are exact, and F1, whose resamples are all 1, gets the bound of its recall and precision instead of
    [1, 1]."""
    y = np.r_[np.ones(20, int), np.zeros(50, int)]
    prob = np.r_[np.linspace(0.6, 0.9, 20), np.linspace(0.1, 0.4, 50)]
    page = write_report(evaluate_binary(y, prob, 0.5, n_boot=100), tmp_path, "separated").read_text()
    assert f"1.000 (95% CI {0.025 ** (1 / 20):.3f}–1.000)" in _row(page, "ROC AUC")
    assert "(95% CI 83.2%–100.0%)" in _row(page, "Sensitivity")
    assert f"1.000 (95% CI {0.0125 ** (1 / 20):.3f}–1.000)" in _row(page, "F1")
    assert "exact one-sided bound from disjoint pairs of films" in page
    assert "CI 100.0%–100.0%" not in page and "CI 1.000–1.000" not in page


def test_a_figure_embeds_as_a_png_data_url():
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    url = png_data_url(figure_bytes(fig, tight=True))
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]).startswith(PNG_SIGNATURE)


def _savefig_tight(fig: Figure) -> np.ndarray:
    """FIG as matplotlib's own tight box saves it (RGB)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    return np.asarray(Image.open(buffer).convert("RGB"), float)


def _inked(picture: np.ndarray) -> np.ndarray:
    """The first and last rows and columns that are not white: where the drawing lies in a picture."""
    rows, columns = np.nonzero((picture < 250).any(axis=2))
    return np.array([rows.min(), rows.max(), columns.min(), columns.max()])


def _same_picture(png: bytes, fig: Figure | np.ndarray) -> bool:
    """PNG shows what FIG saved with a tight box shows (or FIG is that picture, :func:`_savefig_tight`'s, saved
    once for several PNGs): the drawing of the same size within a pixel and, put over savefig's within a pixel, the
    same pixels up to where the antialiasing of a box that began a fraction of a pixel away falls (a picture cut
    elsewhere, cut short or flipped is far), with savefig's padding around it, and the picture's size within the few
    pixels by which a text's or a legend's box, which savefig's box takes in, is larger than what it draws."""
    ours = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), float)
    theirs = fig if isinstance(fig, np.ndarray) else _savefig_tight(fig)
    (top, bottom, left, right), (top_, bottom_, left_, right_) = _inked(ours), _inked(theirs)
    height, width = min(bottom - top, bottom_ - top_) - 1, min(right - left, right_ - left_) - 1
    pad = round(matplotlib.rcParams["savefig.pad_inches"] * FIGURE_DPI)
    drawing = ours[top + 1:top + 1 + height, left + 1:left + 1 + width]
    return (np.abs(np.subtract(ours.shape, theirs.shape)).max() <= 10
            and abs((bottom - top) - (bottom_ - top_)) <= 1 and abs((right - left) - (right_ - left_)) <= 1
            and np.abs(np.array([top, left, ours.shape[0] - 1 - bottom, ours.shape[1] - 1 - right]) - pad).max() <= 1
            and min(np.abs(drawing - theirs[top_ + down:top_ + down + height, left_ + across:left_ + across + width])
                    .mean() for down in range(3) for across in range(3)) < 10)


def _drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every draw of a figure from here on (the real draw, noted)."""
    drawn: list[Figure] = []
    draw = Figure.draw

    def noted(fig: Figure, renderer) -> None:
        drawn.append(fig)
        draw(fig, renderer)

    monkeypatch.setattr(Figure, "draw", noted)
    return drawn


def test_each_figure_is_drawn_once_whole(tmp_path, monkeypatch) -> None:
    """savefig's tight box draws a figure to measure it and then again: a report's figures took 30-40 % longer.
    Each report figure and the training curves are drawn once and cut to the box the tight savefig gives, the
    legend below the reliability diagram included. The box is measured from the drawn pixels: matplotlib's tight box,
    which lays every tick and text out again (a fifth of a figure's CPU), is never asked for."""
    drawn = _drawn(monkeypatch)
    measured: list[Figure] = []
    tight_box = Figure.get_tightbbox
    monkeypatch.setattr(Figure, "get_tightbbox", lambda fig, *a, **kw: measured.append(fig) or tight_box(fig, *a, **kw))
    write_report(_binary_metrics(), tmp_path / "binary", "t", figures=True)
    y = np.arange(60) % 3
    metrics = evaluate_multiclass(y, softmax(np.eye(3)[y] + np.arange(60)[:, None] % 2),
                                  ["normal", "bacteria", "virus"], n_boot=10)
    write_report(metrics, tmp_path / "multiclass", "t", figures=True)
    plot_training_curves([{"epoch": i, "train_loss": 12345.6 / i, "val_loss": 0.69315 / i, "train_acc": 0.5,
                           "val_acc": 0.6125, "val_auc": 0.7} for i in range(1, 4)], tmp_path / "curves.png")
    figures = list(dict.fromkeys(drawn))
    files = [*(tmp_path / "binary").glob("*.png"), *(tmp_path / "multiclass").glob("*.png"), tmp_path / "curves.png"]
    assert len(files) == 4 + 3 + 1 and len(figures) == len(drawn) == len(files) and not measured
    monkeypatch.undo()
    saved = [_savefig_tight(fig) for fig in figures]  # each once, not once a file it is compared with
    for file in files:
        assert any(_same_picture(file.read_bytes(), picture) for picture in saved), file.name


def test_a_title_stands_where_matplotlib_places_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A figure's axes give their title its height where they can (core.figures.set_title), so that neither the
    draw nor the crop's measure works the y axis's ticks out again to place it: the pictures are those matplotlib's
    own placing draws, a legend beside the axes and one below them and a confusion matrix's included, the training
    curves' Loss panel of an offset text (1e-5+6.931e-1) as their other panels, which have none, and axes whose
    offset text lies under their title, which matplotlib lifts over it."""
    import pneumoscan.training.callbacks as callbacks
    from pneumoscan.core.metrics import calibration
    from pneumoscan.evaluation.report import _confusion_figure, _reliability_figure

    drawn: list[Figure] = []
    monkeypatch.setattr(callbacks, "figure_bytes", lambda fig, **kw: drawn.append(fig) or figure_bytes(fig, **kw))
    plot_training_curves([{"epoch": i, "train_loss": 0.69313 + i / 1e5, "val_loss": 0.6932, "train_acc": 0.5 + i / 10,
                           "val_acc": 0.6125} for i in range(1, 4)], tmp_path / "curves.png")
    roc = {"fpr": [0.0, 0.2, 1.0], "tpr": [0.0, 0.8, 1.0]}
    y = np.arange(40) % 2
    figures = {"curves": (drawn[0], (tmp_path / "curves.png").read_bytes())}
    for name, fig in (("roc", roc_figure({f"run{i}": roc for i in range(5)}, {f"run{i}": f"run{i}" for i in range(5)},
                                         {})),
                      ("reliability", _reliability_figure(calibration(y, np.linspace(0.01, 0.99, 40)), "P")),
                      ("confusion", _confusion_figure({"counts": [[3, 1], [0, 4]], "normalized": [[0.75, 0.25],
                                                                                                   [0, 1]]},
                                                      ["normal", "pneumonia"], "Confusion matrix"))):
        figures[name] = (fig, figure_bytes(fig, tight=True))
    narrow = Figure(figsize=(2, 2))  # an offset text under the title, which matplotlib lifts over it
    ax = narrow.add_subplot()
    ax.plot([0, 1], [0.69314, 0.69316])
    set_title(ax, "a title as wide as the axes")
    figures["narrow"] = (narrow, figure_bytes(narrow, tight=True))
    assert drawn[0].axes[0].yaxis.offsetText.get_text() and not drawn[0].axes[1].yaxis.offsetText.get_text()
    for name, (fig, given) in figures.items():
        for ax in fig.axes:
            ax._autotitlepos = None  # as a title set without its height: matplotlib places it at each draw
        assert figure_bytes(fig, tight=True) == given, name


def test_a_curve_builds_only_the_ticks_it_shows() -> None:
    """The unit square's axes are ticked 0.0 to 1.0 as matplotlib ticks them, without the ticks beyond its limits
    (-0.2, 1.2) that its locator gives and each draw would build and lay out unshown; training curves' axes alike."""
    roc = roc_figure({"roc": {"fpr": [0.0, 0.2, 1.0], "tpr": [0.0, 0.8, 1.0]}}, {"roc": "AUC = 0.900"}, {})
    figure_bytes(roc, tight=True)
    for axis in (roc.axes[0].xaxis, roc.axes[0].yaxis):
        assert [tick.label1.get_text() for tick in axis.get_major_ticks()] == ["0.0", "0.2", "0.4", "0.6", "0.8",
                                                                                "1.0"]
    curves = Figure()
    ax = curves.add_subplot()
    ax.plot([1, 2, 3], [0.69313, 0.69314, 0.69316])
    set_title(ax, "Loss")  # the offset (1e-5+6.931e-1) and the labels it leaves read as the locator's would
    for axis in (ax.xaxis, ax.yaxis):
        low, high = sorted(axis.get_view_interval())
        assert all(low <= loc <= high for loc in axis.get_majorticklocs()), axis.get_majorticklocs()
    assert ax.yaxis.get_major_formatter().get_offset() == "1e\u22125+6.931e\u22121"


def test_a_figure_drawn_near_its_edge_is_padded_not_drawn_again(monkeypatch) -> None:
    """A drawing closer to the figure's edge than savefig's padding lies whole on the figure: its picture is padded
    with the figure's white as savefig pads it, from the one draw."""
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(2, 1))
    fig.add_artist(Rectangle((0.02, 0.1), 0.96, 0.8, color="#1f77b4"))  # 4 pixels from either side
    drawn = _drawn(monkeypatch)
    png = figure_bytes(fig, tight=True)
    assert len(drawn) == 1
    monkeypatch.undo()
    assert _same_picture(png, fig)


def test_a_figure_drawn_past_its_edge_is_saved_whole(monkeypatch) -> None:
    """A legend of many runs beside the ROC axes runs off the figure: it is drawn again, widened to take it in."""
    roc = {"fpr": [0.0, 0.2, 1.0], "tpr": [0.0, 0.8, 1.0]}
    runs = {f"run{i}": roc for i in range(5)}
    fig = roc_figure(runs, {run: f"runs/a-long-name-of-{run} on val (AUC 0.90)" for run in runs}, {})
    drawn = _drawn(monkeypatch)
    png = figure_bytes(fig, tight=True)
    assert len(drawn) == 2  # the draw that found it off the edge, then savefig's on the box it measured
    monkeypatch.undo()
    assert _same_picture(png, fig) and Image.open(io.BytesIO(png)).width > fig.get_figwidth() * FIGURE_DPI


def test_a_legend_whose_keys_lie_past_the_edge_is_saved_whole(monkeypatch) -> None:
    """compare's decision curves of a run without one: a note in the legend so long that the legend's line keys lie
    wholly past the figure's edge, and a gap between its letters falls on the edge, so no ink touches it; cut to the
    ink, the figure lost the keys that say which line is the model's (a picture 67 pixels narrower)."""
    model = Curve("a", "C0", [0.01, 0.5, 0.99], [0.3, 0.1, -0.05], None, None)
    treat_all = Curve("treat all", "#9aa5b1", [0.01, 0.5, 0.99], [0.3, 0.0, -0.5], None, None)
    note = "fold_seed_i_mixup_run_fold_resnet_efficientnet_fold v2 seed: no decision curve in its metrics.json"
    fig = decision_curves_figure([model], [treat_all], [], [note], "Decision curves", "d")
    drawn = _drawn(monkeypatch)
    png = figure_bytes(fig, tight=True)
    assert len(drawn) == 2  # the draw that found the legend past the edge, then savefig's on the box it measured
    monkeypatch.undo()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), float), _savefig_tight(fig))


def test_the_confusion_matrix_never_shows_a_missed_film_as_100_percent(tmp_path) -> None:
    """2,499 of 2,500 pneumonia films called is 99.96 %: the matrix's share says 99.9%, as the figures' row does."""
    y = np.array([1] * 2500 + [0] * 20)
    p = np.where(y == 1, 0.9, 0.1)
    p[0] = 0.2  # the one missed pneumonia film
    write_report(evaluate_binary(y, p, 0.5, n_boot=50), tmp_path, "t", figures=True)
    page = (tmp_path / "report.html").read_text()
    assert "99.9%" in page and "2499" in page and not re.search(r"2499\D{0,40}100\.0%", page)


def test_every_n_names_its_patients_and_every_table_the_unit_of_its_intervals(
        by_patient_report: tuple[dict, Path], binary_report: tuple[dict, Path]) -> None:
    """n counted films while the intervals counted patients, and no table said which: the summary names both, as
    "n = 300 films of 100 patients (...)", and each table of intervals says what they count."""
    metrics, report = by_patient_report
    page = report.read_text()
    counts = metrics["patients"]
    assert (f"n = 300 films of 100 patients ({metrics['n_positive']} pneumonia films of {counts['positive']} patients, "
            f"{metrics['n_negative']} normal of {counts['negative']}).") in page
    # said once a block, on its table with why (the note beside it said it again): two blocks, two captions
    assert page.count("count patients") == 2
    assert page.count("Summary. 95% CIs count patients, not films, since one patient's films are scored alike."
                      "</caption>") == 2
    # the two stages' summary too: its intervals count patients (metrics.json holds them under two_stage)
    block = metrics["two_stage"]
    assert json.loads((report.parent / "metrics.json").read_text())["two_stage"]["patients"] == block["patients"]
    each = [(name, c["support"], block["patients"]["per_class"][name]) for name, c in block["per_class"].items()]
    assert block["patients"]["all"] == 100 and sum(p for _, _, p in each) == 100
    (first, films, patients), *rest = each
    assert (f"n = 300 films of 100 patients ({films} {first} films of {patients} patients, "
            + ", ".join(f"{k} {name} of {p}" for name, k, p in rest) + "); decision = ") in page
    page = binary_report[1].read_text()
    assert "n = 300 films (" in page and "<caption>Summary. 95% CIs count films.</caption>" in page


def test_a_count_of_one_is_said_in_the_singular(tmp_path) -> None:
    """"2 PNEUMONIA films of 1 patients", "n = 1 films": the summary's counts agree with their numbers."""
    metrics = evaluate_binary([1, 1, 0, 0, 0], [0.7, 0.8, 0.2, 0.3, 0.6], 0.5, n_boot=20,
                              class_names=("NORMAL", "PNEUMONIA"), groups=["a", "a", "b", "c", "d"])
    page = write_report(metrics, tmp_path, "one patient").read_text()
    assert "n = 5 films of 4 patients (2 PNEUMONIA films of 1 patient, 3 NORMAL of 3)." in page
    metrics["two_stage"] = evaluate_multiclass([1, 1], [[0.2, 0.7, 0.1], [0.1, 0.8, 0.1]], ["a", "b", "c"], n_boot=20,
                                               groups=["a", "a"])
    page = write_report(metrics, tmp_path, "one patient").read_text()
    assert "n = 2 films of 1 patient (0 a films of 0 patients, 2 b of 1, 0 c of 0); decision" in page
    one = evaluate_binary([1], [0.7], 0.5, n_boot=20, class_names=("NORMAL", "PNEUMONIA"))
    assert "n = 1 film (1 PNEUMONIA, 0 NORMAL)." in write_report(one, tmp_path, "one film").read_text()


def test_the_summary_shows_npv_with_its_interval_and_the_prevalence_ppv_and_npv_hold_at(
        binary_report: tuple[dict, Path]) -> None:
    metrics, report = binary_report
    page = report.read_text()
    lo, hi = metrics["ci"]["npv"]
    row = _row(page, "Negative predictive value (NPV)")
    assert f"{100 * metrics['npv']:.1f}% (95% CI {100 * lo:.1f}%–{100 * hi:.1f}%)" in row
    assert _row(page, "Precision (PPV)").startswith("Precision (PPV) †")
    assert row.startswith("Negative predictive value (NPV) †")
    assert (f"† At this set's prevalence of {100 * metrics['prevalence']:.1f}% (PNEUMONIA films): at another, PPV and "
            "NPV differ.") in html.unescape(page)


def test_on_films_of_one_class_ppv_npv_and_f1_are_not_applicable(tmp_path) -> None:
    """With pneumonia films only, every film called positive is right: precision read 100.0% with an interval,
    a figure of the data, not of the model. It and NPV and F1 (which depend on the absent class) are n/a, saying why."""
    metrics = _binary_metrics(labels=[1] * 40)
    metrics["threshold_table"] = [{"rule": "fixed", "threshold": 0.5, "sensitivity": 0.9, "specificity": None,
                                   "precision": 1.0, "npv": 0.0, "tp": 36, "fp": 0, "tn": 0, "fn": 4}]
    page = write_report(metrics, tmp_path, "one class").read_text()
    assert metrics["precision"] is None and metrics["ci"]["precision"] is None  # undefined, not 1.0 of the data
    for label in ("Precision (PPV)", "Negative predictive value (NPV)", "F1"):
        row = _row(page, label)
        assert row.count("n/a (no NORMAL films: it depends on both classes)") == 2 and "%" not in row, row
    assert "prevalence" not in page  # no PPV or NPV to hold at it
    assert "<td class=\"num\">100.0%</td>" not in page
    assert "Precision and NPV are n/a: there are no NORMAL films" in page
    assert "<td class=\"num\">0.0%</td>" not in page  # the table's NPV too
    page = write_report(_binary_metrics(labels=[0] * 40), tmp_path, "normal only").read_text()
    assert "n/a (no PNEUMONIA films" in _row(page, "Negative predictive value (NPV)")


def test_the_reliability_diagram_shows_each_bins_films_and_exact_interval(tmp_path) -> None:
    """Each filled bin: its count written on its bar, a Clopper-Pearson 95% interval, hollow when it holds fewer
    than 10 films (and the caption says how many do), and a legend outside the axes, over no point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.container import ErrorbarContainer

    from pneumoscan.core.metrics import calibration, clopper_pearson
    from pneumoscan.evaluation.report import _reliability_figure

    rng = np.random.default_rng(6)
    prob = np.r_[rng.uniform(0.0, 0.1, 200), rng.uniform(0.5, 0.6, 4), rng.uniform(0.9, 1.0, 100)]
    y = (rng.uniform(size=prob.size) < prob).astype(int)
    cal = calibration(y, prob)
    fig = _reliability_figure(cal, "P")
    ax = fig.axes[0]
    (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    filled = [(o, c) for o, c in zip(cal["observed_frequency"], cal["counts"]) if c]
    segments = bars.lines[2][0].get_segments()  # one vertical bar a filled bin: [(x, low), (x, high)]
    assert len(segments) == len(filled) == 3
    for (o, c), ((_, low), (_, high)) in zip(filled, segments):
        assert [low, high] == pytest.approx(clopper_pearson(round(o * c), c))
    assert {t.get_text() for t in ax.texts} == {str(c) for c in cal["counts"] if c}
    (hollow,) = [line for line in ax.lines if line.get_label() == "bin of fewer than 10 films"]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    # seen hollow: its white centre drawn over the errorbar's filled marker (matplotlib drew that one on top)
    (x, y_), = hollow.get_xydata()
    px, py = ax.transData.transform((x, y_))
    rgba = np.asarray(canvas.buffer_rgba())
    assert tuple(rgba[int(round(rgba.shape[0] - py)), int(round(px))][:3]) == (255, 255, 255)
    assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())
    page = write_report(evaluate_binary(y, prob, 0.5, n_boot=50), tmp_path, "sparse").read_text()
    assert "1 bin(s) hold fewer than 10 films (hollow)" in page
    page = write_report(_binary_metrics(n=2000), tmp_path, "full").read_text()
    assert "fewer than 10 films" not in page and "the number on each bar counts its films" in page


def test_the_count_on_a_bin_of_almost_every_film_stays_clear_of_the_title() -> None:
    """A bin holding almost every film has a bar reaching the top of the axes: the count written above it stood in
    the title's line. Every count is drawn apart from the title (and inside the figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from pneumoscan.core.metrics import calibration
    from pneumoscan.evaluation.report import _reliability_figure

    rng = np.random.default_rng(7)
    for prob in (np.r_[rng.uniform(0.0, 0.1, 995), rng.uniform(0.9, 1.0, 5)], rng.uniform(0.41, 0.49, 16),
                 rng.uniform(0.91, 0.99, 12345)):
        y = (rng.uniform(size=prob.size) < prob).astype(int)
        fig = _reliability_figure(calibration(y, prob), "P")
        renderer = FigureCanvasAgg(fig).get_renderer()
        ax = fig.axes[0]
        title = ax.title.get_window_extent(renderer)
        counts = [t.get_window_extent(renderer) for t in ax.texts]
        assert counts and not any(box.overlaps(title) for box in counts), (title, counts)
        assert all(fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1) for box in counts)


def test_per_class_figures_say_they_have_no_interval(tmp_path) -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 300)
    probs = softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[y])
    metrics = evaluate_binary(y > 0, 1 - probs[:, 0], 0.5, n_boot=50, class_names=("normal", "pneumonia"))
    metrics["two_stage"] = evaluate_multiclass(y, probs, ["normal", "bacteria", "virus"], n_boot=50)
    page = write_report(metrics, tmp_path, "per class").read_text()
    per_class = page.split("Two stages: Per class")[1].split("</table>")[0]
    assert "<caption>Two stages: Per-class figures. No 95% CIs: per-class figures are point estimates" in per_class
    for name in ("normal", "bacteria", "virus"):
        assert _row(per_class, name).count("(no 95% CI)") == 4, name  # AUC, sensitivity, precision, F1


def test_thresholds_read_alike_everywhere_in_the_report(tmp_path) -> None:
    """The header said 0.0627 (4 decimals), the table and captions 0.06274 (4 significant digits): 4 decimals all."""
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 200)
    prob = 1 / (1 + np.exp(-(rng.normal(size=200) + 1.5 * (2 * y - 1))))
    metrics = evaluate_binary(y, prob, 0.06274311513819045, n_boot=50)
    metrics["threshold_table"] = [{"rule": "bundle threshold", "threshold": 0.06274311513819045, "sensitivity": 1.0,
                                   "specificity": 0.1, "precision": 0.5, "npv": 1.0, "tp": 1, "fp": 1, "tn": 1,
                                   "fn": 0}]
    write_report(metrics, tmp_path, "thresholds", figures=True)
    page = (tmp_path / "report.html").read_text()
    # the table's head, the confusion caption, the table, and the operating point in the ROC and PR curves' words
    assert "0.06274" not in page and page.count("0.0627") == 5
    assert "At threshold 0.5000" in page and "0.500<" not in page


def _zlib_level(png: bytes) -> int:
    """The compression level class (0 fastest, 1 fast, 2 default, 3 best) in the zlib header of a PNG's pixels."""
    return png[png.index(b"IDAT") + 5] >> 6


def test_every_figure_is_a_png_encoded_at_the_fast_zlib_level(binary_report: tuple[dict, Path], tmp_path: Path):
    """zlib's default level took a third of the time a report figure took to draw: a report's figures (inline and
    as files) and a run's training curves are encoded at zlib level 1, as the heatmaps are."""
    report = binary_report[1]
    files = [p.read_bytes() for p in report.parent.glob("*.png")]
    plot_training_curves([{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6}], tmp_path / "curves.png")
    pngs = [*files, *_embedded_pngs(report.read_text()),
            (tmp_path / "curves.png").read_bytes()]
    assert len(files) == 4 and len(pngs) == 8
    assert [_zlib_level(png) for png in pngs] == [0] * len(pngs)


# ---------------------------------------------------------------- the report as a screen reader and axe-core meet it


@pytest.fixture(scope="module")
def chromium(browser: Browser) -> Iterator[Page]:
    """One page of the worker's Chromium (conftest's browser) that each test loads its documents in."""
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    page.context.close()


def _alts(page: Page) -> dict[str, str]:
    """Each figure's text alternative by its visible caption: the two said the same, which named the figure and none
    of its numbers."""
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('figure')].map(
        (f) => [f.querySelector('figcaption').textContent, f.querySelector('img').alt]))""")


def _read_as_a_reader(page: Page, report: Path) -> dict[str, str]:
    """REPORT loaded once: axe-core finds nothing serious or critical in it (WCAG 2.1 AA: contrast, names, language),
    its headings go down one level at a time from one h1, every table has a name and every image a text alternative
    that is more than its caption; returns the alternatives by caption."""
    page.goto(report.as_uri())
    assert serious_violations(page) == []
    assert page.get_attribute("html", "lang") == "en"
    levels = page.evaluate("() => [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')].map((h) => +h.tagName[1])")
    assert levels[0] == 1 and levels.count(1) == 1 and all(b <= a + 1 for a, b in zip(levels, levels[1:])), levels
    tree = page.locator("body").aria_snapshot()
    named = re.findall(r"^\s*- '?table \"[^\"]+\"", tree, re.MULTILINE)  # quoted whole where a name has ': '
    assert len(named) == page.locator("table").count() > 0, tree
    alts = _alts(page)
    assert alts and all(alt and alt != caption for caption, alt in alts.items()), alts
    return alts


def _pct(block: dict, name: str) -> str:
    return f"{100 * block[name]:.1f}%"


def test_a_binary_report_says_its_figures_numbers_to_a_reader_who_does_not_see_them(chromium: Page,
                                                                                     tmp_path: Path) -> None:
    """Each figure's alt named the figure alone ("ROC curve; dots mark the operating points."): a screen reader heard
    no AUC, no operating point; the confusion matrix was a table of no name under a heading, its shares grey on its
    darkest shade (3.3:1). The ROC curve's words give the AUC with its interval and the sensitivity and specificity
    at each threshold marked, the PR curve's its PR AUC and the prevalence, the reliability diagram's its ECE, films
    and bins in a short alt, each bin's figures in a table beside it; the gallery's thumbnails name their film."""
    m = _binary_metrics()
    thumbnail = figure_bytes(Figure(figsize=(1, 1)))
    report = write_report(m, tmp_path, "Pneumonia", "test set", extra={"model": "resnet18"},
                          gallery={"False positives": [(thumbnail, "a.jpeg  P = 0.91")], "False negatives": []})
    alts = _read_as_a_reader(chromium, report)
    roc = alts["ROC curve; dots mark the operating points."]
    lo, hi = m["ci"]["auc"]
    assert roc.startswith(f"ROC curve of P(PNEUMONIA): AUC {m['auc']:.3f} (95% CI {lo:.3f}–{hi:.3f}). "), roc
    for block in (m, m["at_0_5"]):
        assert (f"at threshold {block['threshold']:.4f}, sensitivity {_pct(block, 'sensitivity')} and specificity "
                f"{_pct(block, 'specificity')}") in roc, roc
    pr = alts["Precision-recall curve; dashed line = a classifier without skill."]
    assert f"PR AUC {m['pr_auc']:.3f}" in pr and f"prevalence, {m['prevalence']:.2f}" in pr, pr
    assert f"At threshold 0.5000, precision {_pct(m['at_0_5'], 'precision')}" in pr, pr
    (reliability,) = [alt for caption, alt in alts.items() if caption.startswith("Reliability diagram")]
    cal = m["curves"]["calibration"]
    edges = cal["bin_edges"]
    filled = [(f"{lo:.2f}–{hi:.2f}", p, o, c) for lo, hi, p, o, c in zip(
        edges, edges[1:], cal["mean_predicted"], cal["observed_frequency"], cal["counts"]) if c]
    assert f"ECE {cal['ece']:.3f}, 300 films in {len(filled)} bins" in reliability, reliability
    assert len(reliability) <= 150, reliability  # an alt is heard whole: the bins' figures were 700 characters of it
    # ... which a table gives, bin by bin, to a screen reader and on paper alike
    bins = chromium.get_by_role("table", name=re.compile("^Reliability diagram's bins of predicted P\\(PNEUMONIA\\)"))
    rows = bins.get_by_role("row").all_inner_texts()
    assert rows[0].split() == ["Bin", "Films", "Mean", "predicted", "Observed", "frequency"], rows
    assert [row.split()[:4] for row in rows[1:]] == [
        [edge, str(c), f"{p:.3f}", f"{o:.3f}"] for edge, p, o, c in filled], rows
    lo, hi = clopper_pearson(round(filled[0][2] * filled[0][3]), filled[0][3])
    assert rows[1].endswith(f"(95% CI {lo:.3f}–{hi:.3f})"), rows
    assert alts["a.jpeg  P = 0.91"] == "Film a.jpeg  P = 0.91"
    # the confusion matrix is a table a screen reader lists by its name, its counts in the rows of each true class
    matrix = chromium.get_by_role("table", name="Confusion matrix: At bundle threshold 0.3500")
    counts = m["confusion_matrix"]["counts"]
    for name, row in zip(("NORMAL", "PNEUMONIA"), counts):
        cells = matrix.get_by_role("row", name=re.compile(f"^True {name}")).get_by_role("cell").all_inner_texts()
        assert [int(cell.split()[0]) for cell in cells] == row, cells
    assert chromium.get_by_role("table", name="About this evaluation").count() == 1


def test_a_multiclass_report_and_a_binary_ones_three_class_part_say_each_class_auc(chromium: Page,
                                                                                    tmp_path: Path) -> None:
    """The one-vs-rest ROC curves' words give each class's AUC and the macro AUC with its interval, in a report of
    three classes and in the three-class part of a binary one; every table is named after its part."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    probs = softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[y])
    names = ["normal", "bacteria", "virus"]
    three = evaluate_multiclass(y, probs, names, n_boot=50)
    binary = evaluate_binary(y == 2, probs[:, 2], 0.4, n_boot=50, class_names=("bacteria", "virus"))
    binary["multiclass"] = three
    lo, hi = three["ci"]["macro_auc"]
    expected = ("One-vs-rest ROC curves: " + ", ".join(f"{n} AUC {three['per_class'][n]['auc']:.3f}" for n in names)
                + f"; macro AUC {three['macro_auc']:.3f} (95% CI {lo:.3f}–{hi:.3f}).")
    for metrics, folder in ((three, "three"), (binary, "part")):
        alts = _read_as_a_reader(chromium, write_report(metrics, tmp_path / folder, "Classes"))
        assert alts["One-vs-rest ROC curve per class."] == expected
        reliability = "Reliability diagram of confidence (probability of the decided class): ECE "
        (alt,) = [alt for alt in alts.values() if alt.startswith(reliability)]
        assert len(alt) <= 150 and alt.endswith("bins, listed in the table that follows."), alt
    for name in ("All classes: Summary. 95% CIs count films.", "All classes: Per-class figures. No 95% CIs",
                 "Confusion matrix: Most probable class"):
        expect(chromium.get_by_role("table", name=re.compile("^" + re.escape(name)))).to_have_count(1)


def test_the_figures_by_subgroup_are_a_named_table_a_field_in_each_part(chromium: Page, tmp_path: Path) -> None:
    """evaluate --by's figures: one table a field, named by its caption (the field, the threshold or the decision
    they are at), a group a row headed by its value, in the binary part and in its three-class part alike; the page
    passes axe-core and keeps one heading level under another."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 120)
    probs = softmax(rng.normal(size=(120, 3)) + 2 * np.eye(3)[y])
    m = evaluate_binary(y > 0, 1 - probs[:, 0], 0.4, n_boot=50, class_names=("normal", "pneumonia"))
    m["multiclass"] = evaluate_multiclass(y, probs, ["normal", "bacteria", "virus"], n_boot=50)
    sites = {"site": np.where(np.arange(120) < 110, "A", "B")}
    m["subgroups"] = subgroup_figures(sites, np.arange(120), binary=(y > 0, 1 - probs[:, 0], 0.4))
    m["multiclass"]["subgroups"] = subgroup_figures(sites, np.arange(120), decision=(y, probs.argmax(axis=1)))
    _read_as_a_reader(chromium, write_report(m, tmp_path, "Classes"))
    binary = chromium.get_by_role("table", name="Figures by site, at the bundle threshold 0.4000.")
    rows = binary.get_by_role("row").all_inner_texts()
    assert rows[0].split("\t") == ["Group", "Films", "Patients", "Sensitivity", "Specificity", "AUC"], rows
    assert rows[1].startswith("A\t110\t110\t") and "(95% CI" in rows[1], rows
    assert "(too few patients for a 95% CI)" in rows[2], rows
    three = chromium.get_by_role("table", name=re.compile(r"^All classes: Figures by site, of the decision"))
    assert three.get_by_role("row").all_inner_texts()[0].split("\t") == ["Group", "Films", "Patients", "Accuracy"]


# ---------------------------------------------------------------- the report printed, as a person prints it to PDF

PAPERS = {"A4": (8.27, 11.69), "Letter": (8.5, 11.0)}  # inches, as Page.printToPDF takes a paper's size
CSS_PX = {"mm": 96 / 25.4, "in": 96.0, "px": 1.0}


def _gallery_boxes(page: Page) -> list[dict]:
    """Each gallery picture's box as the page lays it out (CSS px) with its caption's words."""
    return page.evaluate("""() => [...document.querySelectorAll('.gallery figure')].map((f) => {
        const box = f.querySelector('img').getBoundingClientRect();
        return {width: box.width, height: box.height, caption: f.querySelector('figcaption').textContent};
    })""")


def test_the_error_gallery_shows_thumbnails_whatever_the_films_size_and_aspect(
        chromium: Page, tiny_evaluation: Path, evaluation_printed: Callable[[str], list[str]], tmp_path: Path) -> None:
    """A 64 px film's overlay came out a tall strip (its three panels over a caption burnt into the picture, eight
    lines of it), stretched to the figure's width: 360 x 590 px, one a printed page, its words unread by a screen
    reader. A thumbnail is the three panels alone, its caption's words text beside it, and fits a thumbnail's box
    whatever the picture's size and aspect (a tall film, a wide one, a tiny one); printed, thumbnails stand side by
    side (a flex row of two 360 px figures was wider than A4's text and broke onto a page each)."""
    _read_as_a_reader(chromium, tiny_evaluation / "report.html")
    shown = _gallery_boxes(chromium)
    assert shown and all(box["height"] <= 240 and box["width"] <= 360 for box in shown), shown
    assert all("Grad-CAM" in box["caption"] for box in shown), shown  # the overlay's words, as text
    names = [box["caption"].split()[0] for box in shown]  # printed side by side, where a page holds them
    assert any(all(name in text for name in names) for text in evaluation_printed("A4")), names
    page = (tiny_evaluation / "report.html").read_text()
    for png in _embedded_pngs(page[page.index("Most confident errors"):]):
        with Image.open(io.BytesIO(png)) as picture:  # the tiny films are square: three panels side by side
            assert picture.width == 3 * picture.height, picture.size
    pictures = [Image.new("L", size, 128) for size in ((60, 600), (2000, 50), (20, 20), (1024, 1024))]
    thumbnails = [(_png(picture), f"{i}.jpeg  P = 0.9") for i, picture in enumerate(pictures)]
    report = write_report(_binary_metrics(), tmp_path, "Gallery", gallery={"False positives": thumbnails})
    chromium.goto(report.as_uri())
    shown = _gallery_boxes(chromium)
    assert len(shown) == 4 and all(0 < box["height"] <= 240 and 0 < box["width"] <= 360 for box in shown), shown


def _png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _printed(page: Page, paper: str) -> list[str]:
    """The loaded report printed on PAPER as Chromium prints it for a person (Page.printToPDF: the page's own
    margins, no background graphics), each page's text."""
    width, height = PAPERS[paper]
    pdf = page.context.new_cdp_session(page).send("Page.printToPDF", {"paperWidth": width, "paperHeight": height})
    return [p.extract_text() for p in PdfReader(io.BytesIO(base64.b64decode(pdf["data"]))).pages]


@pytest.fixture(scope="module")
def evaluation_printed(chromium: Page, tiny_evaluation: Path) -> Callable[[str], list[str]]:
    """tiny_evaluation's report as ``_printed`` gives it on a paper, printed once a paper for the tests that read it
    (the gallery's and the running heads'), the report left loaded."""
    printed: dict[str, list[str]] = {}

    def on(paper: str) -> list[str]:
        if paper not in printed:
            chromium.goto((tiny_evaluation / "report.html").as_uri())
            printed[paper] = _printed(chromium, paper)
        return printed[paper]

    return on


def _overflowing(page: Page, paper: str) -> list[str]:
    """What of the loaded report reaches past the printed page's right margin on PAPER: laid out for print at the
    width between the page's own margins (its @page rule's, else Chromium's default 0.4 inch)."""
    margins = page.evaluate("""() => {
        const rule = [...document.styleSheets].flatMap((s) => [...s.cssRules]).find((r) => r instanceof CSSPageRule);
        return rule ? [rule.style.marginLeft, rule.style.marginRight] : ['0.4in', '0.4in'];
    }""")
    lost = sum(float(m[:-2]) * CSS_PX[m[-2:]] for m in margins)
    page.emulate_media(media="print")
    page.set_viewport_size({"width": int(PAPERS[paper][0] * 96 - lost), "height": 1000})
    try:
        return page.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5)
            .map((e) => `${e.tagName} ${e.textContent.slice(0, 40)}`)""")
    finally:
        page.emulate_media(media="null")  # not "screen", which Chromium would then print with
        page.set_viewport_size({"width": 1280, "height": 720})


@pytest.mark.parametrize("paper", PAPERS)
def test_a_printed_report_names_itself_on_every_page_and_cuts_no_table_or_figure(
        chromium: Page, tiny_evaluation: Path, evaluation_printed: Callable[[str], list[str]], tiny_bundle: Path,
        tiny_dataset: Path, paper: str) -> None:
    """Printed to PDF, only the first page said what it was, and the date only the last; a heading ended a page
    whose content began the next ("Curves" over a page of its figures); the threshold table ran past the right
    margin, and its rows on a second page came without their head. Every page names its report (title, model id,
    date, its page of how many) by CSS page margins, which a person's own browser prints too; the first page gives
    the bundle, the data and the date; no heading, nor the note or caption that introduces a table, ends a page; a
    table's head is repeated on each page it spans; nothing reaches past the right margin."""
    # the report as a reader meets it (axe-core, headings, names): the gallery's test reads it so
    chromium.goto((tiny_evaluation / "report.html").as_uri())
    card = load_card(tiny_bundle)
    assert _overflowing(chromium, paper) == []
    leads = chromium.evaluate("""() => [...document.querySelectorAll('h2, h3, h2 + .note, caption')]
        .map((e) => e.textContent.split(/\\s+/).join(' '))""")  # a heading, a note or caption that introduces a table
    title = chromium.title()
    pages = evaluation_printed(paper)
    assert len(pages) > 2, pages  # a report of more than two pages, whose later pages are read apart from the first
    generated = re.search(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", pages[0])
    assert generated, pages[0]
    first = "".join(pages[0].split())  # a long path wraps in its cell
    for said in (str(tiny_bundle), f"{tiny_dataset}, split test", card.model_id):
        assert "".join(said.split()) in first, (said, pages[0])
    for number, text in enumerate(pages, 1):
        running = (title, f"model id {card.model_id}", generated.group(0), f"page {number} of {len(pages)}",
                   "For research use; not a medical device.")
        lines = [line for line in text.splitlines() if not any(said in line for said in running)]
        assert all(said in text for said in running), (number, text)
        if number < len(pages):
            assert not any(lead.endswith(" ".join(lines[-1].split())) for lead in leads), (number, lines[-1])
        if " fixed 0." in text or "\nfixed 0." in text:  # a page of the threshold table has its head
            assert "Rule Threshold Sensitivity Specificity Precision NPV TP FP TN FN" in text, (number, text)


def test_a_report_printed_without_page_margin_boxes_still_names_itself_on_its_first_page(
        chromium: Page, tiny_evaluation: Path, tiny_bundle: Path) -> None:
    """Only Chromium 131 and later print CSS page margin boxes (the running title, model id, date and page of
    pages): an engine without them (Firefox's) prints the page alone, so the first page's own text says what the
    report is, of which model, when, and that it is for research use, as the screen shows it."""
    page = (tiny_evaluation / "report.html").read_text()
    bare = re.sub(r"@(top|bottom)-(left|right)\{[^}]*\}", "", page)
    assert bare != page and "@top-" not in bare
    chromium.set_content(bare)
    title, card = chromium.title(), load_card(tiny_bundle)
    first = _printed(chromium, "A4")[0]
    generated = re.search(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", first)
    assert generated and first.startswith(title), first
    for said in (f"model id {card.model_id}", "For research use; not a medical device."):
        assert said in first, (said, first)


def test_a_training_runs_report_names_its_model_on_screen_as_on_paper(chromium: Page, tiny_bundle: Path) -> None:
    """A training run's report gave its bundle's model id only in the printed pages' margins (CSS page margin boxes,
    which no screen shows and a browser without them does not print): it is in the header's table, as evaluate's
    report has it, and the margins take it from there."""
    card = load_card(tiny_bundle)
    chromium.goto((tiny_bundle.parent / "report.html").as_uri())
    about = chromium.get_by_role("table", name="About this evaluation").inner_text()
    assert f"model id\t{card.model_id}" in about, about


def test_a_printed_report_is_dark_on_white_whatever_the_colour_scheme(chromium: Page, tiny_evaluation: Path) -> None:
    """Printed, the report kept the screen's grey page and its framed card (toner, with background graphics on) and
    the confusion matrices lost their shading (without): in print it is dark text on white, unframed, whether the
    reader's system is light or dark, and a confusion matrix keeps its shading."""
    chromium.goto((tiny_evaluation / "report.html").as_uri())
    for scheme in ("light", "dark"):
        chromium.emulate_media(media="print", color_scheme=scheme)
        try:
            body = chromium.evaluate("""() => {
                const style = (selector) => getComputedStyle(document.querySelector(selector));
                return [style('body').backgroundColor, style('main').backgroundColor, style('main').borderTopWidth,
                        style('body').color, style('.cm td').printColorAdjust];
            }""")
        finally:
            chromium.emulate_media(media="null", color_scheme="null")
        assert body == ["rgb(255, 255, 255)", "rgb(255, 255, 255)", "0px", "rgb(29, 39, 51)", "exact"], (scheme, body)
