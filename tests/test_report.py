import base64
import json
import re

import numpy as np
from matplotlib.figure import Figure

from pneumoscan.core.metrics import AUC_INTERVAL, evaluate_binary, evaluate_multiclass, softmax
from pneumoscan.evaluation.report import figure_png, plot_training_curves, write_report
from pneumoscan.inference.explain import png_data_url

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
    assert "At threshold 0.500" in page and "At bundle threshold 0.35" in page
    assert "95% CI" in page and "PNEUMONIA" in page


def test_write_report_binary_with_one_class(tmp_path):
    write_report(_binary_metrics(), tmp_path, "two classes", figures=True)
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
    assert page.count("exact Clopper-Pearson") == 2 and page.count("independent case") == 2
    assert "no 95% CI" not in page and "exact one-sided bound" not in page


def test_report_says_the_intervals_count_patients_when_they_do(tmp_path):
    rng = np.random.default_rng(4)
    y = np.repeat(rng.integers(0, 3, 100), 3)  # 100 patients with 3 films each
    patients = np.repeat(np.arange(100), 3)
    probs = softmax(rng.normal(size=(300, 3)) + 2 * np.eye(3)[y])
    metrics = evaluate_binary(y > 0, 1 - probs[:, 0], 0.5, n_boot=100, class_names=("normal", "pneumonia"),
                              groups=patients)
    metrics["two_stage"] = evaluate_multiclass(y, probs, ["normal", "bacteria", "virus"], n_boot=100, groups=patients)
    assert metrics["ci_unit"] == metrics["two_stage"]["ci_unit"] == "patient"
    page = write_report(metrics, tmp_path, "By patient").read_text()
    assert page.count("95% CIs count patients, not films") == 2 and page.count("Korn-Graubard") == 2
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
    url = png_data_url(figure_png(fig))
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]).startswith(PNG_SIGNATURE)


def test_plot_training_curves_writes_png(tmp_path):
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": 1.2 / e,
            "train_acc": 1 - 1 / (e + 1),
            "val_acc": 0.9 - 1 / (e + 2),
            "val_auc": None if e == 1 else 0.8 + 0.02 * e,
            "lr": 1e-3,
        }
        for e in range(1, 6)
    ]
    out = tmp_path / "plots" / "training.png"
    plot_training_curves(history, out)
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_the_confusion_matrix_never_shows_a_missed_film_as_100_percent(tmp_path) -> None:
    """2,499 of 2,500 pneumonia films called is 99.96 %: the matrix's share says 99.9%, as the figures' row does."""
    y = np.array([1] * 2500 + [0] * 20)
    p = np.where(y == 1, 0.9, 0.1)
    p[0] = 0.2  # the one missed pneumonia film
    write_report(evaluate_binary(y, p, 0.5, n_boot=50), tmp_path, "t", figures=True)
    page = (tmp_path / "report.html").read_text()
    assert "99.9%" in page and "2499" in page and not re.search(r"2499\D{0,40}100\.0%", page)
