"""methods.md, the draft of a paper's methods and results that ``evaluate`` writes beside its report: the items that
reporting checklists for diagnostic-accuracy and AI studies ask (STARD 2015, CLAIM 2024, TRIPOD+AI) and that the run
can answer (the flow of films, the model and how it reads a film, the operating point and where it was chosen, each
figure with its 95% CI and how that was made, the figures by subgroup, the software), filled in from the run's own
metrics.json and the bundle's card, so that no figure is copied by hand; the rest (the films' source and dates, how
their labels were made) is left in brackets for the researcher, since nothing here can know it."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from typing import Any

from pneumoscan import __version__
from pneumoscan.core.metrics import format_percent, net_benefit_interval, with_ci
from pneumoscan.models.card import TRAINING_FILMS, BundleCard, runtime_versions
from .model_card import (at_prevalence_note, class_counts, counted, film_counts, markdown_table, markdown_text,
                         model_read, one_class, trained_by_said)
from .report import ci_note, decision_note, not_independent
from .subgroups import differences_said, table_rows

METHODS = "methods.md"
_BINARY_FIGURES = (("auc", "ROC AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
                   ("precision", "precision (PPV)"), ("npv", "NPV"), ("accuracy", "accuracy"), ("f1", "F1"))
_CLASS_PARTS = (("multiclass", "Three classes, the most probable class"),
                ("two_stage", "Two stages as three classes"))


def software() -> dict[str, str]:
    """The versions that made an evaluation's figures (metrics.json's ``software``): pneumoscan's and Python's, and
    those of the libraries a model's numbers depend on (:func:`~pneumoscan.models.card.runtime_versions`); the card
    names the versions that trained the weights."""
    return {"pneumoscan": __version__, "python": platform.python_version(), **runtime_versions()}


def methods_text(metrics: Mapping[str, Any], header: Mapping[str, Any], card: BundleCard,
                 second: BundleCard | None = None) -> str:
    """methods.md of an evaluation's ``metrics`` (as written to metrics.json) of the bundle whose ``card`` it is,
    followed by the ``second`` stage's bundle with ``--etiology``; ``header``: the report's, whose thresholds say the
    policy and films that chose them. Every name a user gave (the data's, a class's, a field's, a path in a caveat)
    is written as text, never as Markdown (:func:`markdown_text`), in the prose as in the tables."""
    names = tuple(metrics["class_names"])
    said = tuple(map(markdown_text, names))  # as the prose says them; the tables escape their cells themselves
    data = markdown_text(metrics["data"])
    parts = [
        f"# Methods and results: {markdown_text(card.model_id)} on {data}",
        "A draft for a paper's methods and results, filled in from this evaluation's metrics.json and the bundle's "
        "card (MODEL_CARD.md beside the weights). Check every sentence against your study and fill in the items in "
        "[brackets], which no file here records. Research use only; not a medical device.",
        "## Data and reference standard",
        f"The films of {data}: [their source: site, equipment, dates of acquisition, and whether they are "
        "consecutive patients or selected]. The reference standard is each film's label as given (its folder name or "
        "a manifest's label column): [who assigned the labels, by what means, and blind to what]. pneumoscan scored "
        "the films as labelled; it checks a label only against the film's name and its copies (the flow counts those "
        "contradicted).",
        "## Flow of films",
        _flow(metrics, names),
        _independence(metrics),
        "## Index test: the model",
        _model(card, metrics),
        second and f"Films it calls {said[1]} go to a second stage: {_model(second, metrics)}",
        "## Operating point",
        f"A film is called {said[1]} where the model's probability of {said[1]} is at least the threshold "
        f"{markdown_text(header['threshold'])}: the bundle's own, chosen when it was made, and not changed for these "
        "films." + _not_independent(metrics)
        + "".join(f" Caveat of the card: {markdown_text(c.rstrip('.'))}." for c in metrics.get("caveats") or ()),
        second and (f"The second stage calls {markdown_text(second.positive)} at its own threshold "
                    f"{markdown_text(header['etiology threshold'])}."
                    + "".join(f" Caveat of its card: {markdown_text(c.rstrip('.'))}." for c in second.caveats)),
        "## Statistical analysis",
        _statistics(metrics, said[1]),
        "## Results",
        _results(metrics, said),
        *_parts(metrics),
        *_subgroups(metrics),
        "## Software",
        _software(metrics, card),
    ]
    return "\n\n".join(filter(None, parts)) + "\n"


def _flow(metrics: Mapping[str, Any], names: Sequence[str]) -> str:
    """The films from those given to those the figures are of, a table of counts, as a STARD flow diagram has them:
    each reason films were left out, then the films scored, and among those, the films scored all the same that a
    reader should know of (outside the model's scope, copies of one picture, contradicted labels, films the check
    against the model's own data warned of: scored with a warning, never left out, which ``evaluate`` has no option
    for; a manifest without them measures without them)."""
    left = sum(e["films"] for e in metrics["left_out"])
    rows = [("Files given", str(metrics["n"] + left)),
            *((f"Left out: {e['reason']}", str(e["films"])) for e in metrics["left_out"]),
            ("Scored, the films of every figure below", film_counts(metrics, names)),
            ("... of which outside the model's scope (scored and counted all the same; predictions.csv marks them)",
             str(len(metrics["out_of_scope"]))),
            ("... of which copies of another film given (each counted once in the intervals' patients)",
             str(sum(len(group) - 1 for group in metrics["copies"]))),
            ("... of which labelled against their name or a copy (scored as labelled)",
             str(len(metrics["label_conflicts"]))),
            ("... of which among the model's own data: its training or validation films under other names, other "
             "films of their patients, or films that chose its threshold (scored and counted all the same, the "
             "figures on them optimistic: predictions.csv marks them (optimistic true) and metrics.json lists them "
             "under optimistic_films; leave them out of the films given to measure without them)",
             str(len(metrics["optimistic_films"])))]
    return markdown_table(["step", "films"], rows)


def _independence(metrics: Mapping[str, Any]) -> str:
    """What the check of the films against the bundle's training and validation films found (STARD and CLAIM ask
    whether the test set is independent of the data the model was made with)."""
    found = [*metrics["optimistic"], *metrics["unchecked"]]
    if not found:
        return ("Independence from the model's own data: every film was checked against the training and validation "
                "films of each run its weights come from, by path, by patient id and by the picture itself (copies "
                "under other names, re-encoded or resized), and none was among them or of their patients.")
    listed = "\n".join(f"- {markdown_text(text)}" for text in found)
    return ("Independence from the model's own data: the check against its training and validation films "
            f"found\n\n{listed}")


def _not_independent(metrics: Mapping[str, Any]) -> str:
    """The report's boxes above its figures (:func:`not_independent`), in its words, as sentences that follow the
    threshold and the figures they flatter: a paragraph copied alone must not pass for figures on films new to the
    model."""
    return "".join(f" {title} {'; '.join(markdown_text(text.rstrip('.')) for text in texts)}."
                   for _, title, texts in not_independent(metrics))


def _model(card: BundleCard, metrics: Mapping[str, Any]) -> str:
    """The model as a paper names it: its id and task, how it reads a film as its card's recipe says it
    (:func:`model_read`), its training films and seed, and how it scored these films."""
    training = card.train_config.get(TRAINING_FILMS) or {}
    trained = (f"Trained on {counted(sum(training.values()), 'film')} "
               f"({', '.join(f'{k} {name}' for name, k in training.items())})" if training else "Trained")
    seed = card.train_config.get("seed")
    tta = "the mean of its test-time augmentation views" if metrics["tta"] else "one pass a film"
    return " ".join(filter(None, [
        f"{markdown_text(card.model_id)}, for the {card.task} task ({markdown_text(' vs '.join(card.classes))}). "
        f"{model_read(card)}.",
        f"{trained}{f' with seed {seed}' if seed is not None else ''}; MODEL_CARD.md gives its training data and full "
        "configuration.", trained_by_said(card), f"Scores here: {tta}, backend {metrics['backend']}."]))


def _statistics(metrics: Mapping[str, Any], positive: str) -> str:
    """How the 95% CIs were made, in the words of the report's note (:func:`ci_note`), saying their unit; and the
    decision curve of calling ``positive``, in the words of the report's (:func:`decision_note`)."""
    return ("Figures at the bundle's threshold. "
            + ci_note(metrics, "sensitivity, specificity, precision, NPV and accuracy", ("auc", "f1"), "auc", "AUC",
                      unit_said=True)
            + "\n\nClinical utility. " + decision_note(metrics, positive))


def _results(metrics: Mapping[str, Any], names: Sequence[str]) -> str:
    """Each figure with its 95% CI, the confusion counts, the net benefit at the threshold and the prevalence its
    precision, NPV and net benefit hold at; ``names`` as the prose says them."""
    absent = one_class(metrics, names)
    figures = "; ".join(f"{label} {with_ci(metrics[key], metrics['ci'].get(key))}" for key, label in _BINARY_FIGURES
                        if metrics.get(key) is not None)
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]["counts"]
    said = (f"On {film_counts(metrics, names)}: {figures}. At the threshold: {tp} true positive, {fp} false positive, "
            f"{tn} true negative and {fn} false negative films.{_not_independent(metrics)}")
    said += " " + _net_benefit(metrics, names[1])
    if absent:
        return said + f" The films hold no {absent} film: precision, NPV and F1 say nothing of the model here."
    return (said + f" Precision, NPV and net benefit hold at this set's prevalence of {names[1]}, "
            f"{format_percent(metrics['prevalence'])}, and differ at another." + _at_prevalence(metrics, names[1]))


def _at_prevalence(metrics: Mapping[str, Any], positive: str) -> str:
    """The figures recomputed at each prevalence asked for (evaluate --prevalence), with what they assume; "" where
    none was."""
    if not (block := metrics.get("at_prevalence")):
        return ""
    said = "; ".join(f"at {format_percent(b['prevalence'])}, " + ", ".join(
        f"{label} {with_ci(b[key], b['ci'][key])}" for key, label in (
            ("precision", "precision (PPV)"), ("npv", "NPV"), ("accuracy", "accuracy"),
            ("net_benefit", "net benefit"))) for b in block["figures"])
    return f" Recomputed at a clinic's prevalence: {said}. {at_prevalence_note(positive)}"


def _net_benefit(metrics: Mapping[str, Any], positive: str) -> str:
    """The decision curve's figures at the bundle's threshold (metrics.json's ``net_benefit``), or why it has none."""
    if (at := metrics["net_benefit"]) is None:
        return "Net benefit is undefined at a threshold of 0 or 1."
    return (f"Net benefit at the threshold: {at['net_benefit']:.3f} (true positives a film, net of false positives "
            f"weighed by the threshold's odds, {net_benefit_interval(at.get('ci'))}), against "
            f"{at['treat_all']:.3f} for calling every film {positive} and 0 for calling none; decision_curve.csv "
            "gives the curve over every threshold probability with its interval, report.html its figure.")


def _parts(metrics: Mapping[str, Any]) -> list[str]:
    """The three-class figures of a multiclass bundle or of two stages, with their CIs, where an evaluation has them."""
    found = []
    for key, title in _CLASS_PARTS:
        if block := metrics.get(key):
            found += [f"### {title}",
                      f"On {markdown_text(class_counts(block))}: accuracy "
                      f"{with_ci(block['accuracy'], block['ci'].get('accuracy'))}; "
                      f"balanced accuracy {with_ci(block['balanced_accuracy'], block['ci'].get('balanced_accuracy'))}."]
    return found


def _subgroups(metrics: Mapping[str, Any]) -> list[str]:
    """The figures of each field's groups (``--by``), a table a field with the test of a difference beneath it."""
    fields = (metrics.get("subgroups") or {}).get("fields", {})
    found = []
    for field, groups in fields.items():
        found += [f"### By {markdown_text(field)}, at the bundle's threshold", markdown_table(*table_rows(groups)),
                  markdown_text(differences_said(metrics["subgroups"], field))]
    return found


def _software(metrics: Mapping[str, Any], card: BundleCard) -> str:
    """The versions that scored these films, and those that trained the weights."""
    versions = ", ".join(f"{name} {version}" for name, version in metrics["software"].items())
    return f"Scored with {versions}. The bundle was made with pneumoscan {card.package_version}."
