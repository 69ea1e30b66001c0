"""evaluate --by: each group's films, patients and figures at the bundle's own threshold, by a record's field, a
manifest's own column or a DICOM header's attribute; a field no film records is refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan import cli
from pneumoscan.core.metrics.differences import delong_groups, holm
from pneumoscan.data.layouts import discover
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.evaluation.subgroups import (FIGURE_NAMES, NOT_RECORDED, adjust, difference_said, differences_said,
                                             figure_said, p_said, subgroup_figures)
from tests.builders import dicom_bytes, site_manifest


def test_groups_add_up_and_each_has_the_figures_of_its_own_films_at_the_bundles_threshold(
        tiny_bundle: Path, tiny_dataset: Path, tiny_evaluation_by_site: tuple[Path, Path, str],
        tmp_path: Path) -> None:
    """A manifest's own column (site) and a record's field (subtype) group the figures: the groups' films and
    patients add up to the set's; a site's sensitivity, specificity and AUC with their intervals are those of an
    evaluation of its films alone (at the bundle's threshold, not one of its own), and a site of too few patients
    says so where an interval would stand. The terminal and the report show each field's table, saying what its
    intervals count (films here, as the whole set's). (The session's evaluation: `evaluate --by site --by SUBTYPE`.)"""
    out, _, printed = tiny_evaluation_by_site
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["subgroups"]
    with (out / "predictions.csv").open() as f:
        patients = len({row["patient"] for row in csv.DictReader(f)})
    assert block["threshold"] == metrics["threshold"] and list(block["fields"]) == ["site", "subtype"]
    for groups in block["fields"].values():
        assert sum(g["films"] for g in groups) == metrics["n"] == 16
        assert sum(g["patients"] for g in groups) == patients
        assert sum(g["positive"] for g in groups) == metrics["n_positive"]
    assert [g["value"] for g in block["fields"]["subtype"]] == ["bacteria", "normal", "virus"]
    site_a, site_b = block["fields"]["site"]
    alone = evaluate(tiny_bundle, site_manifest(tiny_dataset, tmp_path, "A"))
    assert (site_a["value"], site_a["films"], site_a["positive"]) == ("A", 12, 6)
    for name in ("sensitivity", "specificity", "auc"):
        assert site_a[name]["value"] == pytest.approx(alone[name]), name
        assert site_a[name]["ci"] == pytest.approx(alone["ci"][name]), name
    assert site_b["value"] == "B" and site_b["sensitivity"]["ci"] is None
    assert site_b["sensitivity"]["too_few"] == "positive films of 2 patients: too few for an interval (it takes 5)"
    said = f"{site_b['sensitivity']['hits']} of 2 (too few patients for a 95% CI)"
    assert f"by site, at threshold {metrics['threshold']:.4f}" in printed and said in printed
    page = (out / "report.html").read_text()
    assert f"<caption>Figures by site, at the bundle threshold {metrics['threshold']:.4f}.</caption>" in page
    # no two of these films share a patient, so every interval counts films, the groups' as the whole set's
    assert metrics["ci_unit"] == "film" and "count each film as an independent case" in printed
    assert f"by site, at threshold {metrics['threshold']:.4f} (95% CIs count films):" in printed
    assert "CIs count patients" not in printed and "with 95% CIs that count films;" in page
    assert f'<tr><th scope="row">B</th><td class="num">4</td><td class="num">4</td><td class="num">{said}</td>' in page
    # each rate's test of a difference across the sites, over the 8 patients with positive films: a p-value and
    # its adjustment over the evaluation's tests, said beneath the table; a rate no film misses has none, saying why
    sensitivity = block["differences"]["site"]["sensitivity"]
    tests = [t for field in block["differences"].values() for t in field.values() if "p" in t]
    assert (sensitivity["groups"], sensitivity["patients"], block["tests"]) == (2, 8, len(tests))
    assert [t["p_holm"] for t in tests] == pytest.approx(holm([t["p"] for t in tests]))
    specificity = block["differences"]["site"]["specificity"]
    right = site_a["specificity"]["hits"] + site_b["specificity"]["hits"]
    if 0 < right < 8:
        assert "p" in specificity
    else:
        assert specificity["none"] == f"all 8 negative films called {'right' if right else 'wrong'}: nothing differs"
    # 8 patients in two groups: every one of their at most 70 assignments counted, which the p says
    assert sensitivity["p_method"] == "exact"
    line = (f"sensitivity p = {sensitivity['p']:.3f} (exact: every shuffle counted), adjusted = "
            f"{sensitivity['p_holm']:.3f} (2 groups, 8 patients)")
    assert line in " ".join(printed.split()) and line in page
    assert "Beneath each table, a permutation test over patients" in " ".join(printed.split())
    # AUC's test: across both sites, over all 16 patients, each site's AUC the table's; by subtype no group has both
    # classes, which it says in place of a p
    auc = block["differences"]["site"]["auc"]
    assert (auc["groups"], auc["patients"], auc["left_out"]) == (2, 16, 0) and "p_holm" in auc
    assert [(c["value"], c["auc"], c["positive"], c["negative"]) for c in auc["compared"]] == [
        (g["value"], pytest.approx(g["auc"]["value"]), g["positive"], g["negative"]) for g in (site_a, site_b)]
    assert auc["p_method"] == "exact"  # the 8 patients of each class dealt between the sites: at most 70 x 70
    line = (f"AUC p = {auc['p']:.3f} (exact: every shuffle counted), adjusted = {auc['p_holm']:.3f} (2 groups, "
            "16 patients)")
    assert line in " ".join(printed.split()) and line in page
    said = "AUC: not tested (fewer than two groups have both positive and negative films)"
    assert block["differences"]["subtype"]["auc"]["one_class"] == ["bacteria", "normal", "virus"]
    assert said in " ".join(printed.split()) and said in page


def test_a_patient_filmed_in_two_groups_is_left_out_of_the_test_as_it_says(
        tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """A patient with films at both sites joins the sites' rates, which no shuffle of patients then keeps apart: the
    test compares the other patients' films, and says so with the films it counts, which are not the table's."""
    with site_manifest(tiny_dataset, tmp_path).open() as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):  # each film a patient of its own, but a pneumonia film at A and one at B
        row["patient"] = "both" if i in (8, 14) else f"p{i}"
    data = tmp_path / "one-patient-two-sites.csv"
    with data.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "site", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    assert [(rows[i]["label"], rows[i]["site"]) for i in (8, 14)] == [("PNEUMONIA", "A"), ("PNEUMONIA", "B")]
    metrics = evaluate(tiny_bundle, data, out_dir=tmp_path / "out", by=["site"])
    with (tmp_path / "out" / "predictions.csv").open() as f:
        scored = {row["path"]: row["correct"] == "True" for row in csv.DictReader(f)}
    test = metrics["subgroups"]["differences"]["site"]["sensitivity"]
    counted = [{"value": site, "hits": sum(scored[r["path"]] for r in rows[8:] if r["site"] == site
                                           and r["patient"] != "both"),
                "of": sum(r["site"] == site and r["patient"] != "both" for r in rows[8:])} for site in ("A", "B")]
    assert (test["groups"], test["patients"], test["left_out"]) == (2, 6, 1)
    hits = sum(c["hits"] for c in counted)
    if 0 < hits < 6:
        assert test["compared"] == counted
        assert (f"1 patient with films in several groups left out, which leaves A {counted[0]['hits']} of 5, "
                f"B {counted[1]['hits']} of 1)") in difference_said("sensitivity", test)
    else:
        assert test["none"] == f"all 6 positive films called {'right' if hits else 'wrong'}: nothing differs"


def test_a_group_that_leaving_patients_out_empties_is_not_tested_saying_why() -> None:
    """Three sites, B's positive films all of patients with films at A too: left out of the tests, they leave B no
    positive film, so sensitivity and AUC are not tested (a p over A and C alone would read as the sites'), each
    saying how many patients were left out and why; specificity, of other patients, is tested. A site of one class
    is named as left out of AUC's test of the others."""
    sites = np.array(list("AAAACCCCBB") + list("AAAACCCCBB"))
    y = np.repeat([1, 0], 10)
    patients = np.array(["a", "b", "c", "d", "e", "f", "g", "h", "a", "c"] + [f"n{i}" for i in range(10)])
    scores = np.linspace(0.05, 0.95, 20)[::-1]
    scores[[1, 12, 15]] = [0.1, 0.8, 0.9]  # some films of each class called wrong at 0.5
    tests = subgroup_figures({"site": sites}, patients, binary=(y, scores, 0.5))["differences"]["site"]
    for name in ("sensitivity", "auc"):
        assert (tests[name]["left_out"], "p" in tests[name]) == (2, False), name
        assert difference_said(name, tests[name]) == (
            f"{FIGURE_NAMES[name]}: not tested (2 patients with films in several groups left out; B has no positive "
            "films of patients in one group)")
    specificity = tests["specificity"]
    assert (specificity["left_out"], specificity["groups"], "p" in specificity) == (0, 3, True)
    # B's positive films of patients of their own, its negative films at C: AUC compares A and C, naming B
    sites[[18, 19]] = "C"
    patients[[8, 9]] = ["i", "j"]
    auc = subgroup_figures({"site": sites}, patients, binary=(y, scores, 0.5))["differences"]["site"]["auc"]
    assert ([c["value"] for c in auc["compared"]], auc["one_class"], auc["left_out"]) == (["A", "C"], ["B"], 0)
    assert difference_said("auc", auc).endswith(
        "(2 groups, 18 patients; B without both positive and negative films: no AUC)")


def test_a_field_no_film_records_is_refused_naming_those_they_do(tiny_bundle: Path, tiny_dataset: Path,
                                                                 tmp_path: Path) -> None:
    """A field misspelt, or one these films lack (a JPEG has no header to give a sex), would give no groups: it is
    refused before the films are scored, naming the fields there are."""
    with pytest.raises(ValueError, match=r"no film of site-all.csv records 'PatientSex' to group the figures by; "
                                         r"they record subtype, format, site \(a DICOM film's header also gives"):
        evaluate(tiny_bundle, site_manifest(tiny_dataset, tmp_path), by=["PatientSex"])


def test_a_dicom_header_groups_films_by_sex_and_age_band(tiny_bundle: Path, tiny_dataset: Path,
                                                         tmp_path: Path) -> None:
    """A DICOM film's PatientSex and PatientAge (in bands) group the figures, read with its scope check; a film whose
    header records neither is in an explicit "(not recorded)" group, never left out. So does BurnedInAnnotation:
    whether the films with text in their pixels, a shortcut a model may read, score otherwise than the rest."""
    heads = [{"PatientSex": "F", "PatientAge": "004Y", "BurnedInAnnotation": "YES"},
             {"PatientSex": "M", "PatientAge": "008M", "BurnedInAnnotation": "NO"}, {}]
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "films" / label).mkdir(parents=True)
        films = sorted(r.path for r in discover(tiny_dataset).split("test") if r.label == label)[:3]
        for i, (path, head) in enumerate(zip(films, heads)):
            gray = np.asarray(Image.open(path).convert("L"), dtype=np.uint16) * 16
            (tmp_path / "films" / label / f"{label}-{i}.dcm").write_bytes(dicom_bytes(gray, **head))
    metrics = evaluate(tiny_bundle, tmp_path / "films", by=["PatientSex", "PatientAge", "format", "burnedinannotation"])
    fields = metrics["subgroups"]["fields"]
    assert [(g["value"], g["films"], g["positive"]) for g in fields["PatientSex"]] == [
        ("F", 2, 1), ("M", 2, 1), (NOT_RECORDED, 2, 1)]
    assert [g["value"] for g in fields["PatientAge"]] == ["under 1 year", "3-5 years", NOT_RECORDED]
    assert [(g["value"], g["films"]) for g in fields["format"]] == [("DICOM", 6)]
    assert [(g["value"], g["films"]) for g in fields["BurnedInAnnotation"]] == [("NO", 2), ("YES", 2),
                                                                              (NOT_RECORDED, 2)]


def test_a_three_class_decision_has_its_accuracy_by_group(tiny_bundle: Path, tiny_etiology_bundle: Path,
                                                          tiny_multiclass_by_subtype: Path, typed_dataset: Path,
                                                          tmp_path: Path) -> None:
    """A three-class bundle's most probable class (the session's evaluation of tiny_multiclass_bundle by subtype), and
    a pneumonia bundle followed by an etiology bundle, are each one decision among normal, bacteria and virus: each
    group's accuracy of it counts the films it called right, as predictions.csv lists them."""
    for out, key, column in ((tiny_multiclass_by_subtype, "multiclass", "most_probable"),
                             (tmp_path / "two_stage", "two_stage", "two_stage_called")):
        if key == "two_stage":
            evaluate(tiny_bundle, typed_dataset, "test", out, etiology=tiny_etiology_bundle, by=["subtype"])
        metrics = json.loads((out / "metrics.json").read_text())
        with (out / "predictions.csv").open() as f:
            rows = list(csv.DictReader(f))
        groups = metrics[key]["subgroups"]["fields"]["subtype"]
        assert [g["value"] for g in groups] == ["bacteria", "normal", "virus"]
        for group in groups:
            right = sum(r[column].casefold() == group["value"] for r in rows if r["subtype"] == group["value"])
            assert (group["accuracy"]["hits"], group["accuracy"]["of"]) == (right, group["films"]), key
        assert "sensitivity" in metrics["subgroups"]["fields"]["subtype"][0], key  # the positive call's too
        # the accuracy's test is adjusted with the positive call's over every test of the evaluation (Holm)
        tests = [t for block in (metrics["subgroups"], metrics[key]["subgroups"])
                 for field in block["differences"].values() for t in field.values() if "p" in t]
        assert "p" in metrics[key]["subgroups"]["differences"]["subtype"]["accuracy"], key
        assert [t["p_holm"] for t in tests] == pytest.approx(holm([t["p"] for t in tests])), key
        assert metrics[key]["subgroups"]["tests"] == metrics["subgroups"]["tests"] == len(tests), key


def test_a_figure_recorded_without_its_interval_or_why_reads_as_one_without_an_interval() -> None:
    """An edited metrics.json's or card's figure without ``ci`` or ``too_few`` is said as measured without an
    interval, not a KeyError."""
    assert figure_said({"value": 0.5}) == "0.500 (no 95% CI)"
    assert figure_said({"value": 1.0, "too_few": "few", "hits": 3, "of": 3}) == "3 of 3 (too few patients for a 95% CI)"


def test_a_field_with_nothing_tested_claims_no_adjustment() -> None:
    """One site of positive films, one of negative: no figure can be tested, so the line under the table says why
    for each and claims no Holm adjustment over "0 tests"."""
    metrics = {"subgroups": subgroup_figures({"site": np.array(list("AABB"))}, np.array(["a", "b", "c", "d"]),
                                             binary=(np.array([1, 1, 0, 0]), np.array([0.9, 0.2, 0.7, 0.4]), 0.5))}
    adjust(metrics)
    said = differences_said(metrics["subgroups"], "site")
    assert metrics["subgroups"]["tests"] == 0 and said.startswith(
        "Do the groups differ by more than chance? (permutation test over patients): "), said
    assert said.count("not tested") == 3, said


def test_delong_tests_the_groups_aucs_where_asked(tiny_bundle: Path, tiny_dataset: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--auc-test delong: AUC's test across the groups is DeLong's of independent AUCs by patient (the rates' stay
    permutation tests), each p saying how it was found and the line beneath the table saying both; a group whose
    AUC has no spread (its classes apart) gets no p, saying why. Without --by the option is refused."""
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(40), 2)  # two films a patient, 20 patients a site
    sites = np.where(patients < 20, "A", "B")
    y = (patients % 2 == 0).astype(int)
    scores = 1 / (1 + np.exp(-(y * np.where(sites == "A", 2.0, 1.0) + rng.normal(0, 1, 80))))
    block = subgroup_figures({"site": sites}, patients, binary=(y, scores, 0.5), auc_test="delong")
    adjust({"subgroups": block})
    tests = block["differences"]["site"]
    assert (tests["auc"]["p"], tests["auc"]["p_method"]) == (
        pytest.approx(delong_groups(y == 1, scores, sites, patients).p), "DeLong")
    assert tests["sensitivity"]["p_method"] in ("exact", "drawn")
    said = differences_said(block, "site")
    assert said.startswith("Do the groups differ by more than chance? (AUC's by DeLong's test of independent AUCs, "
                           "the rates' by a permutation test over patients, adjusted over the 3 tests")
    assert f"AUC p {p_said(tests['auc']['p'])} (DeLong: normal approximation, clustered by patient)" in said
    permuted = subgroup_figures({"site": sites}, patients, binary=(y, scores, 0.5))
    assert permuted["differences"]["site"]["auc"]["p_method"] == "drawn"  # 20 patients of each class: 184,756^2
    assert differences_said(permuted, "site").startswith(
        "Do the groups differ by more than chance? (permutation test over patients): ")
    scores[sites == "B"] = y[sites == "B"] * 0.5 + 0.25  # B's classes apart: no spread to scale its AUC by
    apart = subgroup_figures({"site": sites}, patients, binary=(y, scores, 0.5), auc_test="delong")
    assert "p" not in apart["differences"]["site"]["auc"]
    assert difference_said("auc", apart["differences"]["site"]["auc"]) == (
        "AUC: not tested (DeLong's test cannot scale B's AUC, whose variance is 0 (every film placed alike): use the "
        "permutation test)")
    assert cli.main(["evaluate", str(tiny_bundle), str(tiny_dataset), "--auc-test", "delong"]) != 0
    assert "--auc-test delong only with --by FIELD" in capsys.readouterr().err


def test_an_auc_test_not_known_is_refused_before_a_film_is_read(tiny_bundle: Path, tiny_dataset: Path,
                                                                 tmp_path: Path) -> None:
    """A library caller's "DeLong" (the command line offers only the names it knows) is refused naming the tests,
    never run as the permutation test in its name."""
    with pytest.raises(ValueError, match=r"unknown AUC test 'DeLong'; did you mean 'delong'\?"):
        subgroup_figures({"site": np.array(["A", "B"])}, np.arange(2), binary=(np.array([0, 1]), np.array([.2, .8]),
                                                                                  0.5), auc_test="DeLong")
    with pytest.raises(ValueError, match=r"unknown AUC test 'DeLong'"):
        evaluate(tiny_bundle, tmp_path / "no films here", by=["site"], auc_test="DeLong")
