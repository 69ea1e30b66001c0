"""methods.md, the draft methods and results that `evaluate` writes for a paper: every count and figure in it is the
run's own (metrics.json, predictions.csv), with the flow of films, the intervals' method and the software."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pneumoscan
from pneumoscan import cli
from pneumoscan.core.metrics import net_benefit_ci, with_ci
from pneumoscan.evaluation.methods import METHODS
from pneumoscan.models.card import load_card
from tests.builders import site_manifest


def _site(tiny_dataset: Path, folder: Path) -> Path:
    """The tiny dataset's 16 test films as a site's folder, with a file that cannot be read and one training film
    copied under a name of the site's (a copy the check finds by its picture, not its name)."""
    site = shutil.copytree(tiny_dataset / "test", folder)
    (site / "NORMAL" / "broken.jpeg").write_bytes(b"not a film")
    shutil.copyfile(next((tiny_dataset / "train" / "NORMAL").glob("*.jpeg")), site / "NORMAL" / "IM-0900-0001.jpeg")
    return site


def _section(text: str, title: str) -> str:
    """The text of methods.md's section TITLE, up to the next heading."""
    return text.split(f"## {title}\n", 1)[1].split("\n#", 1)[0]


def _own_data_row(text: str) -> str:
    """The flow's count of films scored that the check found among the model's own data."""
    return re.search(r"\| \.\.\. of which among the model's own data[^|]*\| (\d+) \|", text)[1]


def _read(out: Path) -> tuple[str, dict, list[dict]]:
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    return (out / METHODS).read_text(), json.loads((out / "metrics.json").read_text()), rows


def test_methods_md_gives_the_flow_of_films_and_each_figure_from_the_run(tiny_bundle: Path, tiny_dataset: Path,
                                                                         tmp_path: Path) -> None:
    """18 files given, 1 unreadable, 17 scored: the flow's counts are those of the folder, predictions.csv and
    metrics.json; each figure with its CI is metrics.json's, the confusion counts predictions.csv's, and no figure in
    the text comes from elsewhere; what the check against the training films found is said; the versions are the
    ones that ran."""
    site = _site(tiny_dataset, tmp_path / "site")
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(tiny_bundle), str(site), "--out", str(out), "--by", "subtype"]) == 0
    text, m, rows = _read(out)

    files = [p for p in site.rglob("*") if p.is_file()]
    assert len(files) == 18 and len(rows) == m["n"] == 17
    assert f"| Files given | {len(files)} |" in text
    assert "| Left out: could not be read | 1 |" in text
    positive = sum(r["label"] == "PNEUMONIA" for r in rows)
    scored = f"17 films ({positive} PNEUMONIA, {17 - positive} NORMAL)"
    assert f"| Scored, the films of every figure below | {scored} |" in text
    outside = sum(r["in_scope"] == "False" for r in rows)
    assert f"scope (scored and counted all the same; predictions.csv marks them) | {outside} |" in text

    for key, label in (("auc", "ROC AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
                       ("npv", "NPV"), ("accuracy", "accuracy"), ("f1", "F1")):
        assert f"{label} {with_ci(m[key], m['ci'][key])}" in text, key
    tp = sum(r["label"] == r["called"] == "PNEUMONIA" for r in rows)
    fp = sum(r["label"] == "NORMAL" and r["called"] == "PNEUMONIA" for r in rows)
    fn = sum(r["label"] == "PNEUMONIA" and r["called"] == "NORMAL" for r in rows)
    tn = 17 - positive - fp
    assert f"{tp} true positive, {fp} false positive, {tn} true negative and {fn} false negative" in text

    card = load_card(tiny_bundle)
    run = {f"{v:.3f}" for v in (m[k] for k in ("auc", "sensitivity", "specificity", "precision", "npv", "accuracy",
                                               "f1")) if v is not None}
    run |= {f"{bound:.3f}" for ci in m["ci"].values() if ci for bound in ci}
    run |= {f"{g[k]['value']:.3f}" for g in m["subgroups"]["fields"]["subtype"] for k in ("sensitivity",
                                                                                          "specificity") if g[k]}
    run |= {f"{b:.3f}" for g in m["subgroups"]["fields"]["subtype"] for k in ("sensitivity", "specificity")
            if g[k] and g[k]["ci"] for b in g[k]["ci"]}
    run |= {f"{t['p']:.3f}" for t in m["subgroups"]["differences"]["subtype"].values() if "p" in t}
    run |= {f"{t['p_holm']:.3f}" for t in m["subgroups"]["differences"]["subtype"].values() if "p" in t}
    run |= {f"{card.temperature:.3f}", f"{m['threshold']:.4f}"}
    run |= {f"{abs(m['net_benefit'][k]):.3f}" for k in ("net_benefit", "treat_all")}  # the decision curve's
    run |= {f"{abs(bound):.3f}" for bound in m["net_benefit"]["ci"]}  # and its interval
    figures = set(re.findall(r"(?<![\d.])\d\.\d{3,4}(?![\d.])", text))
    assert figures and figures <= run, figures - run
    assert f"{m['threshold']:.4f}" in text and f"{100 * m['prevalence']:.1f}%" in text

    assert m["optimistic"] and all(said in text for said in m["optimistic"])  # the training film's copy
    copy = str(site / "NORMAL" / "IM-0900-0001.jpeg")
    assert m["optimistic_films"] == [copy] and _own_data_row(text) == "1"  # scored, and counted in the flow
    assert [r["path"] for r in rows if r["optimistic"] == "True"] == [copy]  # marked beside its score, as the flow says
    assert re.search(r"\| \.\.\. of which among the model's own data[^|]*predictions\.csv marks them \(optimistic "
                     r"true\)", text)
    for title in ("Operating point", "Results"):  # a paragraph copied alone still says its figures are flattered
        said = _section(text, title)
        assert "Not an independent evaluation." in said and all(c in said for c in m["optimistic"]), title
    assert m["software"]["pneumoscan"] == pneumoscan.__version__ and m["software"]["torch"] == torch.__version__
    assert f"pneumoscan {pneumoscan.__version__}" in text and f"torch {torch.__version__}" in text
    assert "| bacteria |" in text and "| normal |" in text  # the figures by subtype

    report = (out / "report.html").read_text()  # the report names methods.md, and both pneumoscans
    assert f'<a href="{METHODS}">{METHODS}</a>' in report
    assert (f"<th>bundle made with</th><td>pneumoscan {card.package_version}</td>" in report
            and f"<th>films scored with</th><td>pneumoscan {pneumoscan.__version__}</td>" in report)


def test_methods_md_says_the_films_were_checked_new_only_where_they_were(tiny_bundle: Path, tiny_evaluation: Path,
                                                                         tiny_dataset: Path, tmp_path: Path) -> None:
    """Test films of other patients, checked against the run's split: said to be new to the model. The same bundle
    copied away from its run's split.csv cannot be checked: the text says why, not that they are new."""
    checked = (tiny_evaluation / METHODS).read_text()
    assert "and none was among them or of their patients" in checked
    assert _own_data_row(checked) == "0" and "independent" not in _section(checked, "Results")

    alone = shutil.copytree(tiny_bundle, tmp_path / "alone" / "bundle")
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(alone), str(tiny_dataset), "--split", "test", "--out", str(out)]) == 0
    text, m, _ = _read(out)
    assert m["unchecked"] and all(said in text for said in m["unchecked"])
    assert all("Not checked to be independent." in _section(text, title) for title in ("Operating point", "Results"))
    assert "none was among them" not in text


def test_methods_md_escapes_a_name_in_a_table_cell(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """A group named ``a|b`` is one cell of its row, as the model card writes it: a bare "|" split the row, every
    figure then a column off."""
    manifest = site_manifest(tiny_dataset, tmp_path)
    with manifest.open(newline="") as f:
        rows = [row | {"site": "a|b" if row["site"] == "B" else row["site"]} for row in csv.DictReader(f)]
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(tiny_bundle), str(manifest), "--out", str(out), "--by", "site"]) == 0
    text = (out / METHODS).read_text()
    table = text.split("### By site", 1)[1].split("\n\n")[1].splitlines()
    assert any(line.startswith("| a\\|b |") for line in table), table
    cells = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
    assert len(cells) == 1, table  # every row as many cells as the header


def test_methods_md_gives_the_decision_curve_over_the_range_asked_for(tiny_bundle: Path, tiny_dataset: Path,
                                                                      tmp_path: Path) -> None:
    """The statistics say how the decision curve was made, over the range asked for (--decision-range) and at which
    prevalence it holds, and how its band was; the results give the net benefit at the threshold from metrics.json
    with its interval; decision_curve.csv spans that range, each row with the model's net benefit's 95% CI
    (net_benefit_low, net_benefit_high), which are net_benefit_ci's of predictions.csv's scores, as is the one at the
    threshold."""
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(tiny_bundle), str(tiny_dataset), "--split", "test", "--out", str(out),
                     "--decision-range", "0.05", "0.5"]) == 0
    text, m, _ = _read(out)
    with (out / "decision_curve.csv").open() as f:
        reader = csv.DictReader(f)
        rows, fields = list(reader), reader.fieldnames
    thresholds = [float(row["threshold"]) for row in rows]
    assert len(thresholds) == 46 and thresholds[0] == 0.05 and thresholds[-1] == 0.5
    assert fields[:4] == ["threshold", "net_benefit", "net_benefit_low", "net_benefit_high"]
    with (out / "predictions.csv").open() as f:
        films = list(csv.DictReader(f))
    y = [int(film["label"] == "PNEUMONIA") for film in films]
    p = [float(film["probability"]) for film in films]
    at = m["net_benefit"]
    expected = net_benefit_ci(y, p, [*thresholds, at["threshold"]], groups=[film["patient"] for film in films])
    np.testing.assert_allclose([[float(row["net_benefit_low"]), float(row["net_benefit_high"])] for row in rows],
                               expected[:-1], rtol=1e-9, atol=1e-12)
    assert at["ci"] == pytest.approx(expected[-1]) and at["ci"][0] < at["net_benefit"] < at["ci"][1]

    statistics = _section(text, "Statistical analysis")
    assert "Decision curve (Vickers & Elkin 2006)" in statistics and "for pt from 5.0% to 50.0%" in statistics
    assert f"prevalence of {100 * m['prevalence']:.1f}%" in statistics
    assert "The band is the model's net benefit's 95% CI at each pt: its 95% CI is a BCa bootstrap" in statistics
    assert (f"Net benefit at the threshold: {at['net_benefit']:.3f} (true positives a film, net of false positives "
            f"weighed by the threshold's odds, 95% CI {at['ci'][0]:.3f} to {at['ci'][1]:.3f}), against "
            f"{at['treat_all']:.3f} for calling every film PNEUMONIA" in _section(text, "Results"))


def test_methods_md_writes_a_name_given_as_text_in_its_prose(tiny_bundle: Path, tiny_dataset: Path,
                                                               tmp_path: Path) -> None:
    """A data name with Markdown's table bar and an HTML tag in it reads as text in the prose as in the tables, with
    the escape MODEL_CARD.md uses: a bare "<img" became markup in a Markdown viewer."""
    name = 'site <img src=x onerror="alert(1)"> a|b'
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(tiny_bundle), str(tiny_dataset), "--split", "test", "--out", str(out),
                     "--data-name", name]) == 0
    text, m, _ = _read(out)
    assert m["data"] == name and "<img" not in text
    escaped = 'site &lt;img src=x onerror="alert(1)"> a\\|b'
    assert text.startswith(f"# Methods and results: {load_card(tiny_bundle).model_id} on {escaped}\n")
    assert f"The films of {escaped}: [their source" in text


def test_evaluate_refuses_a_decision_range_outside_0_to_1_before_reading_a_film(tiny_bundle: Path, tiny_dataset: Path,
                                                                                tmp_path: Path, capsys) -> None:
    """A decision curve at a threshold probability of 0 or 1 (odds 0 or infinite) says nothing: refused, naming the
    range, and no folder written."""
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(tiny_bundle), str(tiny_dataset), "--split", "test", "--out", str(out),
                     "--decision-range", "0", "0.5"]) == 2
    assert "0 < LOW < HIGH < 1" in capsys.readouterr().err and not out.exists()
