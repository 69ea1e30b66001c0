"""The model card: BUNDLE/MODEL_CARD.md in the Hugging Face layout (YAML front matter, then sections), written from
the bundle's card (bundle.json), so the people who pick up a bundle read what it is for, what it was trained and
validated on, and where it must not be used.

bundle.json stays the machine-readable record; MODEL_CARD.md is regenerated from it whenever a record is added
(an external evaluation, a new threshold), never edited by hand, and neither ever touches the weights.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from pneumoscan.core.atomic import write_atomic
from pneumoscan.core.metrics import (BOTH_CLASSES, ECE_BINS, FILM_UNIT_CAVEAT, NO_RANGE, ci_method_sentence,
                                     format_figure, format_percent, jsonable, net_benefit_interval, unit_caveat,
                                     with_ci)
from pneumoscan.core.names import shown
from pneumoscan.data.appearance import MIN_FILMS
from pneumoscan.data.layouts import KERMANY, KERMANY_LICENCE
from pneumoscan.inference.onnx_runtime import INT8_NAME, Int8Key, Int8Operating, read_sidecar, spec_path
from pneumoscan.models import PLUGINS_ENV
from pneumoscan.models.card import (APPEARANCE_FROM_INIT, ENSEMBLE, INIT_CARD, INIT_IN_PLACE, INIT_SAMPLE, MACRO_AUC,
                                   MEMBER_SAMPLES, SAMPLED_FROM, TEACHER_SAMPLES, TRAINED_BY, TRAINING_FILMS, WRITER,
                                   BundleCard, TrainingSource, load_card, member_label, out_of_fold_ensemble,
                                   save_card, training_sources)
from .held_out import HeldOutFindings
from .subgroups import DIFFERENCES_NOTE, blocks, differences_said, recorded, table_rows

log = logging.getLogger(__name__)
MODEL_CARD = "MODEL_CARD.md"
# where a bundle's temperature and threshold were chosen (chosen_on): a cv ensemble's films all trained a member
VALIDATION_FILMS = "the validation films"
OUT_OF_FOLD_SCORES = "its cross-validation runs' out-of-fold scores"
# an ensemble's card that records no calibrated_on: its films are not said to be any
FILMS_NOT_RECORDED = "films not recorded on this card"
INTENDED_USE = (  # {films}: chosen_on's; {ece}: ECE_SHOWN, or ECE_NOT_RECORDED for a card without one
    "Research use only; not a medical device. Reads frontal (anterior-posterior) chest X-ray films of pediatric "
    "patients aged 1 to 5 years, as taken at one hospital (Guangzhou Women and Children's Medical Center, "
    "Guangzhou, China), and gives a probability of the positive class, scaled by one temperature fitted on "
    "{films} (which corrects over- or under-confidence, not a shift towards one class: {ece}), with a thresholded "
    "label."
)
# a bundle whose weights learnt from other films than Kermany et al.'s alone: {data}, its training data in words
# (:func:`data_said`); the films it reads are said to be those, whose patients and hospitals the card does not record
OTHER_USE = (
    "Research use only; not a medical device. Reads chest X-ray films like those its weights learnt from ({data}; "
    "*Training data* says what is recorded of them), and gives a probability of the positive class, scaled by one "
    "temperature fitted on {films} (which corrects over- or under-confidence, not a shift towards one class: {ece}), "
    "with a thresholded label."
)
ECE_SHOWN = "its expected calibration error there is among the validation figures"
# a card whose run recorded none (pneumoscan 0.2.0's): how well calibrated the probabilities are is not said there
ECE_NOT_RECORDED = "its expected calibration error there is not recorded on this card"
# plain text: /v1/model gives these to the web page, which shows them as they are (MODEL_CARD.md too)
OUT_OF_SCOPE = (
    "Diagnosis, treatment, triage or any other decision about a patient: the label is a research output.",
    "Adults, infants under 1 year, children over 5 years: the training films hold none.",  # KERMANY_AGES
    "Lateral films, CT, photographs or screenshots of films, and any other modality.",
    "Films from other hospitals, scanners or processing pipelines until the model is evaluated on them "
    "(pneumoscan evaluate BUNDLE DATA --add-to-card); scores shift with the source.",
    "Other findings (tuberculosis, COVID-19, effusion, nodules, devices): the model knows only its classes.",
)
KERMANY_AGES = OUT_OF_SCOPE[1]  # true of Kermany et al.'s films, which the card knows the patients of
# in its place, where the weights learnt from other films too
OTHER_PATIENTS = ("Patients unlike those of the training films: the card records where those films came from, not "
                  "the ages or illnesses of the patients they show.")
# the limitation of a bundle whose threshold training chose; a `threshold` copy's says where its own was chosen
_CHOSEN = ("The threshold and the temperature were chosen on {films}, so the validation figures at that threshold are "
           "optimistic; figures on data the model has never seen are the ones to trust.")
CHOSEN_ON_VALIDATION = _CHOSEN.format(films=VALIDATION_FILMS)
# in place of LIMITATIONS' first two (Kermany et al.'s hospital and gradings), where the weights learnt from other films
UNRECORDED_SOURCE = ("Of the training films, the card records only what *Training data* says: their patients, "
                     "hospitals, equipment and how their labels were given are not recorded here, so how far the "
                     "figures carry to other films is not known.")
LIMITATIONS = (
    "One centre, retrospective: the films come from one hospital's routine care; prevalence, equipment and "
    "patients elsewhere differ.",
    "Labels are expert gradings of the films (two physicians, a third checking the test set), not laboratory "
    "confirmation; bacterial versus viral labels are the least certain.",
    CHOSEN_ON_VALIDATION,
    "Grad-CAM heatmaps show where the score came from, not where the disease is.",
)
# the most common class's training films per film of the least common from which the card calls the classes unbalanced
UNEVEN = 1.5
CITATION = (  # the data's licence is the one its layouts record
    "The data: Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
    "Images for\nClassification. Mendeley Data, V2, 2018. doi:10.17632/rscbjbr9sj.2. Licence: "
    f"{KERMANY_LICENCE} (attribution required).\n" + """
The paper: Kermany DS, Goldbaum M, Cai W, et al. Identifying Medical Diagnoses and Treatable Diseases by
Image-Based Deep Learning. Cell 2018; 172(5): 1122-1131.e9. doi:10.1016/j.cell.2018.02.010.

```bibtex
@misc{kermany2018data,
  author = {Kermany, Daniel and Zhang, Kang and Goldbaum, Michael},
  title = {Labeled Optical Coherence Tomography ({OCT}) and Chest X-Ray Images for Classification},
  year = {2018}, publisher = {Mendeley Data}, version = {2}, doi = {10.17632/rscbjbr9sj.2}
}
@article{kermany2018cell,
  author = {Kermany, Daniel S. and Goldbaum, Michael and Cai, Wenjia and others},
  title = {Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning},
  journal = {Cell}, volume = {172}, number = {5}, pages = {1122--1131.e9}, year = {2018},
  doi = {10.1016/j.cell.2018.02.010}
}
```
""")
# an evaluation record's films_checked, in the card's table: False when the bundle's training films were not known
# where it was evaluated (its run's split.csv not beside it), so the films may be ones it trained on
FILMS_CHECKED = {True: "checked", False: "**not checked**", None: "not recorded"}  # None: a record older than it
DATASET = KERMANY
# (key in a metrics block, metric type in the model index, name shown)
CARD_METRICS = (
    ("auc", "roc_auc", "ROC AUC"),
    ("sensitivity", "recall", "Sensitivity"),
    ("specificity", "specificity", "Specificity"),
    ("precision", "precision", "Precision (PPV)"),
    ("npv", "npv", "Negative predictive value (NPV)"),
    ("accuracy", "accuracy", "Accuracy"),
    ("f1", "f1", "F1"),
)

# the figures a card keeps from a validation result (evaluate_probabilities); a multiclass task adds THREE_CLASS_FIGURES
VAL_FIGURES = ("auc", "accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "threshold", "n")
# what the card says of the validation films where the result has it (evaluate_binary's; binary_metrics' has not):
# the expected calibration error checks the probabilities the temperature calibrated (a 1-epoch model's were 0.21 off)
# with the ECE calibrated probabilities give these films by chance (ece_chance, the caveat's yardstick), and a training
# run's left_out: the validation side's files the figures are not of (said among the section's caveats)
VAL_COUNTS = ("prevalence", "patients", "ece", "ece_chance", "left_out")
ECE_NAME = f"Expected calibration error ({ECE_BINS} bins)"
# the validation figures with exact intervals (:func:`ci_method_sentence`); AUC's and F1's are named apart
VALIDATION_PROPORTIONS = "sensitivity, specificity, precision, NPV and accuracy"
PREVALENCE_BOUND = ("precision", "npv")  # figures that hold at the prevalence of the films measured only
RANKING_FIGURES = ("auc", MACRO_AUC)  # figures of the scores' ranking, at no one threshold
MACRO_AUC_NAME = "Macro one-vs-rest ROC AUC, three classes"
THREE_CLASS_FIGURES = (  # (key in the card, key in the multiclass block, name)
    ("three_class_accuracy", "accuracy", "Accuracy, three classes (most probable class)"),
    ("three_class_balanced_accuracy", "balanced_accuracy", "Balanced accuracy, three classes"),
    (MACRO_AUC, "macro_auc", MACRO_AUC_NAME),  # the one whose 95% interval the card records (evaluations too)
)


def validation_figures(metrics: dict) -> dict:
    """What a bundle card records of its validation result: the positive call's figures at the threshold, and for a
    multiclass task how often the most probable class is right (the card's reader asks both). A figure the films
    leave undefined (the NPV of a threshold that calls every film positive) is None: a card holds no NaN."""
    figures = {k: metrics[k] for k in VAL_FIGURES} | {k: metrics[k] for k in VAL_COUNTS if k in metrics}
    if cis := {k: v for k, v in (metrics.get("ci") or {}).items() if k in VAL_FIGURES}:
        figures |= {"ci": cis, "ci_unit": metrics.get("ci_unit", "film")}  # a shipped bundle says its uncertainty
    if block := metrics.get("multiclass"):
        figures |= {key: block[source] for key, source, _ in THREE_CLASS_FIGURES}
        if (interval := (block.get("ci") or {}).get("macro_auc")) and "ci" in figures:  # the card's ranking caveat
            figures["ci"][MACRO_AUC] = interval  # holds it to chance as it holds the AUC (BundleCard.ranking_caveat)
    return jsonable(figures)


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def counted(n: int, noun: str) -> str:
    """"1 film", "2 films": a count with its noun in the number it takes."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def left_out_said(left_out: Sequence[dict]) -> str:
    """What the figures left out of the files given, reason by reason ("1 film could not be read; 8 films of class
    NORMAL, ..."), from a ``left_out`` list (:func:`~pneumoscan.data.labelled.left_out`); "" when nothing was."""
    return "; ".join(f"{counted(e['films'], 'film')} {e['reason']}" for e in left_out)


def left_out_caveat(left_out: Sequence[dict], n: int) -> list[str]:
    """The caveat of a card's record (an evaluation, a threshold) on ``n`` films whose ``left_out`` is not empty:
    figures on the rest of the films given are not figures on the films given."""
    if not (k := sum(e["films"] for e in left_out)):
        return []
    return [f"{k} of the {n + k} films given {'is' if k == 1 else 'are'} left out of the figures, which are of the "
            f"other {n} only: {left_out_said(left_out)}"]


def _left_out_count(record: dict[str, Any]) -> str:
    """"; 11 left out": beside a card's record's n in MODEL_CARD.md's tables, the films given it left out (the
    caveats below say why); "" when none were, or the record is older than ``left_out``."""
    k = sum(e["films"] for e in record.get("left_out", []))
    return f"; {k} left out" if k else ""


def film_counts(m: dict[str, Any], names: Sequence[str]) -> str:
    """"322 films of 172 patients (253 PNEUMONIA films of 108 patients, 69 NORMAL of 64)": every n counts films, so
    where the intervals count patients (``patients`` given) those are named beside them, lest a reader take the films
    for the cases the intervals rest on. ``m``: a binary result or an evaluation record; ``names``: (negative,
    positive)."""
    neg, pos = names
    patients = m.get("patients")
    return _counts(m["n"], [(pos, m["n_positive"]), (neg, m["n_negative"])],
                   patients and (patients["all"], [patients["positive"], patients["negative"]]))


def class_counts(m: dict[str, Any]) -> str:
    """:func:`film_counts` of a result among several classes (an evaluate_multiclass block), class by class."""
    patients = m.get("patients")
    return _counts(m["n"], [(name, c["support"]) for name, c in m["per_class"].items()],
                   patients and (patients["all"], list(patients["per_class"].values())))


def _counts(n: int, films: Sequence[tuple[str, int]], patients: tuple[int, Sequence[int]] | None) -> str:
    """N films (of M patients), then each class's films (of its patients); ``patients``: (M, each class's)."""
    if not patients:
        return f"{counted(n, 'film')} ({', '.join(f'{k} {name}' for name, k in films)})"
    (first, k), *rest = films
    each = [f"{counted(k, f'{first} film')} of {counted(patients[1][0], 'patient')}",
            *(f"{k} {name} of {p}" for (name, k), p in zip(rest, patients[1][1:]))]
    return f"{counted(n, 'film')} of {counted(patients[0], 'patient')} ({', '.join(each)})"


def one_class(m: dict[str, Any], names: Sequence[str]) -> str | None:
    """The class a binary result (or record) has no film of, if any: precision, NPV and F1 (:data:`BOTH_CLASSES`)
    then say nothing of the model (every film called positive is right when there is no negative one: 100 %), so
    they are shown as n/a, or left out."""
    neg, pos = names
    return pos if m["n_positive"] == 0 else neg if m["n_negative"] == 0 else None



def _with_ci(block: dict[str, Any], key: str) -> str:
    """An evaluation record's {key: {"value", "ci"}} figure with its interval (:func:`with_ci`)."""
    entry = block.get(key) or {}
    return with_ci(entry.get("value"), entry.get("ci"))


def chosen_on(card: BundleCard) -> str:
    """The films the card's temperature (and training's threshold) were chosen on: a trained bundle's validation
    films; a cv ensemble's are its runs' out-of-fold scores (:func:`out_of_fold_ensemble`), of films every one of
    which trained a member; another ensemble's, the films its run recorded (``calibrated_on``: those given to
    ``ensemble --data``, none of them validation films of the ensemble), or :data:`FILMS_NOT_RECORDED`."""
    if out_of_fold_ensemble(card):
        return OUT_OF_FOLD_SCORES
    if card.model != ENSEMBLE:
        return VALIDATION_FILMS
    return card.train_config.get("calibrated_on") or FILMS_NOT_RECORDED


def intended_use(card: BundleCard) -> str:
    """:data:`INTENDED_USE` (:data:`OTHER_USE`, with its training data, for weights that learnt from other films than
    Kermany et al.'s alone: :func:`kermany_only`), naming the films its temperature was fitted on (:func:`chosen_on`)
    and where its expected calibration error is, where the card records one."""
    ece = ECE_SHOWN if "ece" in card.val_metrics else ECE_NOT_RECORDED
    if kermany_only(card):
        return INTENDED_USE.format(films=chosen_on(card), ece=ece)
    return OTHER_USE.format(data=data_said(card), films=chosen_on(card), ece=ece)


def kermany_only(card: BundleCard) -> bool:
    """Whether every film the card's weights learnt from is Kermany et al.'s, as the card records it
    (:func:`~pneumoscan.models.card.training_sources`: a card older than the record is): what it says of the
    patients, the hospital and the labels is then that dataset's."""
    return all(source["name"] == KERMANY for source in training_sources(card))


def _named(source: TrainingSource) -> str:
    """A source of training films as the intended use names it."""
    if source["name"] == KERMANY:
        return "Kermany et al.'s films of children aged 1 to 5 years at one hospital in Guangzhou, China"
    return f"films of {source['name']}" if source["name"] else "films whose source was not described"


def _by_origin(card: BundleCard) -> tuple[list[TrainingSource], list[TrainingSource], list[TrainingSource]]:
    """CARD's :func:`~pneumoscan.models.card.training_sources`, split into the run's own films', those its teachers
    (``--teacher``) learnt from (``taught``) and those the weights it started from (``--init``) learnt from
    (``started_from``): what the card says of each differs."""
    sources = training_sources(card)
    return ([s for s in sources if not s["started_from"] and not s.get("taught")],
            [s for s in sources if not s["started_from"] and s.get("taught")],
            [s for s in sources if s["started_from"]])


def data_said(card: BundleCard) -> str:
    """The card's training data in words: the sources of the run's own films, then those the weights it started from
    (``--init``) learnt from."""
    own, taught, start = (" and ".join(dict.fromkeys(map(_named, sources))) for sources in _by_origin(card))
    return (own + (f", distilled from teachers that learnt from {taught}" if taught else "")
            + (f", fine-tuned from weights that learnt from {start}" if start else ""))


def out_of_scope(card: BundleCard) -> tuple[str, ...]:
    """:data:`OUT_OF_SCOPE`, whose ages are Kermany et al.'s patients': for weights that learnt from other films
    (:func:`kermany_only`), :data:`OTHER_PATIENTS` in their place."""
    return OUT_OF_SCOPE if kermany_only(card) else tuple(OTHER_PATIENTS if line == KERMANY_AGES else line
                                                         for line in OUT_OF_SCOPE)


def _training_data(card: BundleCard) -> str:
    """The opening of MODEL_CARD.md's Training data: Kermany et al.'s films and their licence where the weights learnt
    from those alone (a card older than the record too); else each source the card records, the run's own and those
    of its teachers (``--teacher``) and of the weights it started from (``--init``), with its films, layout and licence,
    or that it was not described."""
    if kermany_only(card):
        return (f"Pediatric chest X-ray films of {DATASET}, licensed {KERMANY_LICENCE}: these weights are trained on "
                f"{KERMANY_LICENCE} data, so any use of them must credit the data as under *How to cite the data*. ")
    own, taught, start = _by_origin(card)
    who = "Its members were" if card.model == ENSEMBLE else "It was"
    said = f"{who} trained on these chest X-ray films:\n\n{_bullets(tuple(map(_source_line, own)))}\n\n"
    if taught:
        said += (f"{_taught_who(card)} distilled from teachers "
                 f"(`--teacher`) whose weights learnt from these:\n\n{_bullets(tuple(map(_source_line, taught)))}\n\n")
    if start:
        said += (f"{'Their' if card.model == ENSEMBLE else 'Its'} training started from the weights of a bundle "
                 f"(`--init`) that learnt from these:\n\n{_bullets(tuple(map(_source_line, start)))}\n\n")
    if any(s["name"] == KERMANY for s in training_sources(card)):
        said += (f"Kermany et al.'s films are licensed {KERMANY_LICENCE}: these weights learnt from {KERMANY_LICENCE} "
                 "data, so any use of them must credit the data as under *How to cite the data*. ")
    return said


def _taught_who(card: BundleCard) -> str:
    """Who of CARD was distilled from teachers, as the sentence on their training data opens: the bundle, or each
    member its ensemble records as having learnt from teachers (one that is an ensemble: some of its members), named
    as refusals name a member; an ensemble that does not record which says so."""
    if card.model != ENSEMBLE:
        return "It was"
    members = card.model_kwargs["members"]
    named = [member_label(i, len(members), m.get("source")) + (" (some of its members)" if m["model"] == ENSEMBLE
             else "") for i, m in enumerate(members) if m.get("taught")]
    if not named:
        return "Members of it (which ones, its card does not record) were"
    said = ", ".join(named[:-1]) + (" and " if len(named) > 1 else "") + named[-1]
    return said[0].upper() + said[1:] + (" was" if len(named) == 1 else " were")


def _source_line(source: TrainingSource) -> str:
    """One source of training films in MODEL_CARD.md: its films and the layout that read them, its name and licence,
    or, not described, that where they come from is not recorded."""
    films = f"{source['films']:,} training and validation films" if source["films"] is not None else "Films"
    read = f" (read as the {source['layout']} layout)" if source["layout"] else ""
    if source["name"] == KERMANY:
        return f"{films}{read}: pediatric films of {DATASET}, licensed {source['licence']}."
    if not source["name"]:
        return (f"**{films}{read} whose source was not described** (`train --data-name` names it): where they come "
                "from, and under what licence, is not recorded here.")
    licence = markdown_text(source["licence"]) if source["licence"] else "not stated (`train --data-licence`)"
    return f"{films}{read}: {markdown_text(source['name'])}; licence: {licence}."


def _own_trial(record: dict) -> bool:
    """Whether a :func:`~pneumoscan.models.card.trained_sample` (or a train_config holding one) is of fewer patients
    than there are: a sample of them all is all of them."""
    return (of := record.get(SAMPLED_FROM)) is not None and record["patients"] < of


def _is_trial(record: dict) -> bool:
    """Whether a :func:`~pneumoscan.models.card.trained_sample` learnt from a sample of patients: its own, or one of
    its members', teachers' or starting bundle's at any depth."""
    return _own_trial(record) or any(map(_is_trial, _sources(record)))


def _sources(record: dict) -> list[dict]:
    """The samples a :func:`~pneumoscan.models.card.trained_sample` holds of its members, teachers and starting
    bundle, one not known (None) left out."""
    return [*record.get(MEMBER_SAMPLES, ()), *record.get(TEACHER_SAMPLES, ()), *filter(None, [record.get(INIT_SAMPLE)])]


def _unknown(record: dict) -> bool:
    """Whether a :func:`~pneumoscan.models.card.trained_sample` (or a train_config holding one) learnt in part from
    weights whose sample of patients is not known: a starting bundle's record that is None (its card predates
    :data:`INIT_SAMPLE`), its own or one of its members', teachers' or starting bundle's at any depth."""
    return (INIT_SAMPLE in record and record[INIT_SAMPLE] is None) or any(map(_unknown, _sources(record)))


def _words(s: dict) -> str:
    """A member's, teacher's or starting bundle's sample in words; one that learnt from a trial of its own members,
    teachers or starting bundle says so, which its own card names."""
    said = ([f"a sample of {s['patients']:,} of the {s[SAMPLED_FROM]:,} patients of its data, seed {s.get('seed')}"]
            if _own_trial(s) else [])
    said += [f"{made} some of which learnt from a sample of patients" for key, made in (
        (MEMBER_SAMPLES, "an ensemble of members"), (TEACHER_SAMPLES, "distilled from teachers"))
        if any(map(_is_trial, s.get(key, ())))]
    start = s.get(INIT_SAMPLE) or {}  # None: not known (said below)
    said += ["started from a bundle that learnt from a sample of patients"] if _is_trial(start) else []
    said += ["learnt in part from weights whose sample of patients is not known"] if _unknown(s) else []
    return ", ".join(said) or "all the patients of its data"


def _each(kind: str, records: list[dict]) -> str:
    """Each member's or teacher's sample in words (:func:`_words`), in their order (``kind 1: ...; kind 2: ...``)."""
    return "; ".join(f"{kind} {i}: {_words(s)}" for i, s in enumerate(records, 1))


def _split_sentence(card: BundleCard) -> str:
    """How the card's films were divided: a cv ensemble's validation figures are its runs' out-of-fold scores, of
    films every one of which trained another member, not of a validation split none of them trained on. A trial on
    a sample of patients (train or cv ``--patients``, an ensemble of such runs) says so first, in bold; an ensemble
    whose members' samples differ names each member's. A student of teachers that learnt from a sample says theirs
    before its own, and a run started from a bundle that did (``--init``) says that bundle's: what it learnt from
    them came from those patients alone. An ensemble whose members share such teachers or starting bundle (their one
    record: :func:`~pneumoscan.training.ensemble._members_sample`) says it of its members: it was distilled from
    nothing and started from no weights itself. A run that fine-tuned its own bundle, or whose card predates the
    record of its starting bundle's sample, says so first (:func:`_start_sentence`)."""
    config = card.train_config
    who, they = ("Its members were", "they") if card.model == ENSEMBLE else ("It was", "it")
    if (each := config.get(MEMBER_SAMPLES)) and any(map(_is_trial, each)):
        sample = ("**Not every member trained on the same patients, and some on a sample of them** ("
                  f"{_each('member', each)}; whole patients, each class and subtype in its share), ")
    else:
        sample = ("" if not _own_trial(config) else
                  f"**The films are a sample of {config['patients']:,} of the {config[SAMPLED_FROM]:,} patients of "
                  f"the data** (`patients: {config['patients']}`, seed {config.get('seed')}; whole patients, each "
                  "class and subtype in its share), ")
    teachers = config.get(TEACHER_SAMPLES, [])
    taught = ("" if not any(map(_is_trial, teachers)) else
              f"**{who} distilled from teachers some of which learnt from a sample of patients** ("
              f"{_each('teacher', teachers)}): what {they} learnt from them comes from those patients alone. ")
    if _is_trial(start := config.get(INIT_SAMPLE) or {}):
        taught += (f"**{who} started from the weights of a bundle that learnt from a sample of patients** (`--init`: "
                   f"{_words(start)}): what those weights learnt comes from those patients alone. ")
    trial = ": a trial, whose figures do not show what training on all the films gives" if sample or taught else ""
    taught = _start_sentence(config) + taught
    if out_of_fold_ensemble(card):
        return (f"{taught}{sample or 'The films were '}dealt by patient into cross-validation folds: each member "
                "trained on all folds but one, and each film's validation score is the member's that did not train "
                f"on it (out of fold){trial}.")
    return f"{taught}{sample or 'The films were '}split by patient into training and validation{trial}."


def _start_sentence(config: dict[str, Any]) -> str:
    """What a run started from a bundle (``--init``) says of it before its samples of patients: that it was the
    run's own bundle, which the run replaced (:data:`INIT_IN_PLACE`), so that the path names this bundle, not the
    weights it started from; and, for a run that began before the starting bundle's record of its sample
    (:data:`INIT_SAMPLE`: a card by an earlier version, or one resumed from its checkpoint), that whether those
    weights learnt from a sample of patients is not known (it said nothing, as though they learnt from the run's own
    patients alone); and the same of weights it was made from at any remove that are such a run's (:func:`_unknown`)."""
    said = ""
    if config.get(INIT_IN_PLACE):
        checksum = f", whose bundle.json's checksum was {config[INIT_CARD]}" if config.get(INIT_CARD) else ""
        said += (f"**It was fine-tuned from the bundle it replaced** (`--init {config['init']}`{checksum}): that "
                 "bundle's weights and card are no longer there, and its path holds this bundle. ")
    if config.get("init") and INIT_SAMPLE not in config:
        said += (f"**It was started from the weights of another bundle** (`--init {config['init']}`), and this run "
                 "began before that bundle's sample of patients was recorded: whether those weights learnt from a "
                 "sample of patients, or from which, is not known here. ")
    if _unknown(config):
        said += ("**Some of the weights it was made from (a member's, a teacher's or a starting bundle's, at any "
                 "remove) were started from another bundle by a run that began before that bundle's sample of "
                 "patients was recorded**: whether they learnt from a sample of patients, or from which, is not known "
                 "here. ")
    return said


def _content_check_sentence(config: dict[str, Any]) -> str:
    """Where the image content check of a run on too few films to learn their appearance came from: the bundle it
    started from (:data:`APPEARANCE_FROM_INIT`), with how many of the run's own training films it flags, which are
    read out of scope; empty where the check is the run's own, or there is none."""
    if not (kept := config.get(APPEARANCE_FROM_INIT)):
        return ""
    return (f" **Its image content check is that of the bundle it started from** (`--init`): it trained on "
            f"{kept['films']:,} films, fewer than the {MIN_FILMS} it takes to learn what films look like, so films are "
            f"compared with the training films of that bundle's check, which flags {kept['flagged']:,} of its "
            f"{kept['films']:,} training films as unlike them.")


def _class_balance(card: BundleCard) -> tuple[str, ...]:
    """The limitation of the training films' class balance, as the card counts them (:data:`TRAINING_FILMS`): none
    where they are near even (under :data:`UNEVEN` to 1), and no ratio where the card counts none (an older bundle,
    an ensemble): the films a bundle trained on need not be the dataset's training folder."""
    counts = card.train_config.get(TRAINING_FILMS)
    if not counts:
        return ("The card records no count of the training films by class, so how balanced they were is not known "
                "here.",)
    most, least = max(counts, key=counts.get), min(counts, key=counts.get)
    if counts[most] < UNEVEN * counts[least]:
        return ()
    listed = ", ".join(f"{n:,} {name}" for name, n in counts.items())
    return (f"The classes are unbalanced in the training films ({listed}): about "
            f"{counts[most] / max(counts[least], 1):.1f} {most} films per {least} one.",)


def _limitations(card: BundleCard) -> tuple[str, ...]:
    """LIMITATIONS with the training films' class balance (:func:`_class_balance`), after the card's ranking caveat
    (:attr:`BundleCard.ranking_caveat`: its recorded AUCs do not show it better than chance) and its calibration
    caveat (:attr:`BundleCard.calibration_caveat`: its validation films show its probabilities far off), with the
    threshold's line saying where the threshold in force was chosen when `pneumoscan threshold` chose it on other
    films than the validation ones."""
    first = tuple(f"**{lead}:** {markdown_text(caveat)}." for lead, caveat in (
        ("The model is not shown to rank films better than chance", card.ranking_caveat),
        ("The probabilities are not calibrated", card.calibration_caveat)) if caveat)
    source = LIMITATIONS[:2] if kermany_only(card) else (UNRECORDED_SOURCE,)  # Kermany's hospital and gradings
    limitations = source + _class_balance(card) + LIMITATIONS[2:]
    chosen = (_CHOSEN.format(films=chosen_on(card)) if not card.threshold_records else
              f"The threshold in force ({card.threshold:.4f}) was chosen on {card.threshold_records[-1].get('data')} "
              f"and the temperature on {chosen_on(card)}: figures on either at the threshold that was chosen on "
              "them are optimistic; the validation figures were measured at the earlier threshold; figures on data "
              "the model has never seen are the ones to trust.")
    return first + tuple(chosen if line == CHOSEN_ON_VALIDATION else line for line in limitations)


def _index_name(name: str, key: str, where: list[str], prevalence: float | None,
                threshold: float | None = None) -> str:
    """A model-index figure's name with where it was measured: its threshold (not an AUC's, which ranks the films
    at every threshold and calls none), and for PPV and NPV the prevalence they hold at (at another they differ)."""
    if threshold is not None and key not in RANKING_FIGURES:
        where = [*where, f"at threshold {threshold:.4f}"]
    if key in PREVALENCE_BOUND and prevalence is not None:
        where = [*where, f"at prevalence {format_percent(prevalence)}"]
    return f"{name} ({', '.join(where)})" if where else name


def _macro_index(value: float | None, where: list[str]) -> list[dict[str, Any]]:
    """A three-class bundle's macro one-vs-rest AUC as a model-index entry, beside the positive call's AUC: named
    with where it was measured but no threshold, as it ranks the classes and calls none; none where not recorded."""
    return [] if value is None else [{"type": "roc_auc", "name": _index_name(MACRO_AUC_NAME, MACRO_AUC, where, None),
                                      "value": value}]


def _model_index(card: BundleCard) -> list[dict[str, Any]]:
    """The front matter's model-index: validation figures first, then every external evaluation."""
    task = {"type": "image-classification", "name": f"{card.task}: {' vs '.join(card.classes)}"}
    results = []
    if card.val_metrics:
        # each figure names its threshold: after `pneumoscan threshold` the one in force is another
        val = card.val_metrics
        metrics = [{"type": kind, "name": _index_name(name, key, ["validation"], val.get("prevalence"),
                                                      val.get("threshold")), "value": val[key]}
                   for key, kind, name in CARD_METRICS if val.get(key) is not None]
        metrics += _macro_index(val.get(MACRO_AUC), ["validation"])
        calibrated_on = card.train_config.get("calibrated_on")  # an ensemble's: held-out or out-of-fold films
        dataset = ({"name": calibrated_on, "type": "calibration"} if calibrated_on else
                   {"name": "validation split of the training data",
                    "type": "kermany-chest-xray" if kermany_only(card) else "training-data", "split": "validation"})
        results.append({"task": task, "dataset": dataset, "metrics": metrics})
    for record in card.external_evaluations:
        absent = one_class(record, (card.classes[0], card.positive))  # its 1.0 precision would read as a figure
        metrics = [{"type": kind, "name": _index_name(name, key, [], record.get("prevalence"), record.get("threshold")),
                    "value": record["metrics"][key]["value"]}
                   for key, kind, name in CARD_METRICS if (record["metrics"].get(key) or {}).get("value") is not None
                   and not (absent and key in BOTH_CLASSES)]
        metrics += _macro_index((record["metrics"].get(MACRO_AUC) or {}).get("value"), [])
        unchecked = (" (films not checked against its training films)" if record.get("films_checked") is False
                     else " (checked, with caveats)" if record.get("caveats") or record.get("label_conflicts") else "")
        results.append({"task": task, "dataset": {"name": record["data"] + unchecked, "type": "external"},
                        "metrics": metrics})
    return [{"name": card.model_id, "results": results}] if results else []


# the Hugging Face licence ids (hub-docs' repositories-licenses) of the Creative Commons and open data licences data
# are commonly under, each with the names it goes by besides its id (SPDX's ids are these, in capitals; Creative
# Commons' own are its legal code's, "Attribution-NonCommercial-ShareAlike 4.0 International"): a licence given as
# one of them, whatever its case and the spaces, hyphens or underscores between its words, with or without an
# opening "Creative Commons" and a closing "International", "Universal", "Unported" or "Generic", is that id in
# MODEL_CARD.md's front matter; any other is not
HF_LICENCES: dict[str, tuple[str, ...]] = {
    "cc0-1.0": ("CC0", "Creative Commons Zero v1.0", "Creative Commons Zero 1.0"),
    "cc-by-2.0": ("Creative Commons Attribution 2.0",),
    "cc-by-2.5": ("Creative Commons Attribution 2.5",),
    "cc-by-3.0": ("Creative Commons Attribution 3.0",),
    "cc-by-4.0": ("Creative Commons Attribution 4.0",),
    "cc-by-sa-3.0": ("Creative Commons Attribution Share Alike 3.0", "Attribution-ShareAlike 3.0"),
    "cc-by-sa-4.0": ("Creative Commons Attribution Share Alike 4.0", "Attribution-ShareAlike 4.0"),
    "cc-by-nc-2.0": ("Creative Commons Attribution Non Commercial 2.0", "Attribution-NonCommercial 2.0"),
    "cc-by-nc-3.0": ("Creative Commons Attribution Non Commercial 3.0", "Attribution-NonCommercial 3.0"),
    "cc-by-nc-4.0": ("Creative Commons Attribution Non Commercial 4.0", "Attribution-NonCommercial 4.0"),
    "cc-by-nd-4.0": ("Creative Commons Attribution No Derivatives 4.0", "Attribution-NoDerivatives 4.0"),
    "cc-by-nc-nd-3.0": ("Creative Commons Attribution Non Commercial No Derivatives 3.0",
                        "Attribution-NonCommercial-NoDerivs 3.0"),
    "cc-by-nc-nd-4.0": ("Creative Commons Attribution Non Commercial No Derivatives 4.0",
                        "Attribution-NonCommercial-NoDerivatives 4.0"),
    "cc-by-nc-sa-2.0": ("Creative Commons Attribution Non Commercial Share Alike 2.0",
                        "Attribution-NonCommercial-ShareAlike 2.0"),
    "cc-by-nc-sa-3.0": ("Creative Commons Attribution Non Commercial Share Alike 3.0",
                        "Attribution-NonCommercial-ShareAlike 3.0"),
    "cc-by-nc-sa-4.0": ("Creative Commons Attribution Non Commercial Share Alike 4.0",
                        "Attribution-NonCommercial-ShareAlike 4.0"),
    "odc-by": ("ODC-By 1.0", "Open Data Commons Attribution License"),
    "odbl": ("ODbL 1.0", "Open Database License"),
    "pddl": ("PDDL 1.0", "Open Data Commons Public Domain Dedication and License"),
    "cdla-permissive-1.0": ("Community Data License Agreement Permissive 1.0",),
    "cdla-permissive-2.0": ("Community Data License Agreement Permissive 2.0",),
    "cdla-sharing-1.0": ("Community Data License Agreement Sharing 1.0",),
}


def _licence_key(text: str) -> str:
    """A licence's words as :data:`HF_LICENCES` is looked up by: lower case, joined by hyphens, an opening "creative
    commons" and a closing "international", "universal", "unported" or "generic" (Creative Commons' full names
    begin and end so) left out."""
    key = "-".join(re.split(r"[\s_-]+", text.strip().lower()))
    return re.sub(r"^creative-commons-(?=.)|-(international|universal|unported|generic)$", "", key)


_HF_IDS = {_licence_key(name): hf for hf, names in HF_LICENCES.items() for name in (hf, *names)}


def hf_licence(text: str) -> str | None:
    """The Hugging Face id of the licence ``text`` names (:data:`HF_LICENCES`), or None: not one of them."""
    return _HF_IDS.get(_licence_key(text))


def licence_meta(sources: Sequence[TrainingSource]) -> dict[str, str]:
    """The front matter's licence of weights that learnt from ``sources``: their licence's Hugging Face id where they
    all have one and the same (:func:`hf_licence`: Kermany et al.'s CC BY 4.0, a site's `--data-licence`);
    ``unknown`` where none states one; else ``other``, with ``license_name`` an id made of each licence
    (:func:`licence_slug`: ``mixed-cc-by-4.0-and-not-stated``), as Hugging Face's card spec asks, since one id would
    drop the others; each licence's own words are in the card's Training data."""
    licences: dict[str, str] = {}  # by id (or text where none), the first text given for it
    for source in sources:
        licences.setdefault(hf_licence(source["licence"]) or source["licence"], source["licence"])
    if list(licences) == [""]:
        return {"license": "unknown"}
    if len(licences) == 1 and (only := next(iter(licences))) in HF_LICENCES:
        return {"license": only}
    slugs = list(dict.fromkeys(key if key in HF_LICENCES else licence_slug(key) for key in licences))
    return {"license": "other", "license_name": slugs[0] if len(slugs) == 1 else f"mixed-{'-and-'.join(slugs)}"}


def licence_slug(text: str) -> str:
    """A licence text as an id of the kind Hugging Face's ``license_name`` takes (``my-license-1.0``): its letters
    without accents, lower case, each run of other characters than a-z, 0-9 and "." one hyphen; ``not-stated``
    where none is given, ``unnamed`` where nothing of it is left."""
    if not text.strip():
        return "not-stated"
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9.]+", "-", plain).strip("-.") or "unnamed"


def front_matter(card: BundleCard) -> dict[str, Any]:
    """MODEL_CARD.md's YAML front matter: its licence that of the data the weights learnt from (:func:`licence_meta`:
    CC BY 4.0 for Kermany et al.'s films); its datasets, those the card names (one not described is none)."""
    sources = training_sources(card)
    datasets = list(dict.fromkeys(s["name"] for s in sources if s["name"]))
    meta: dict[str, Any] = {
        **licence_meta(sources),
        "library_name": "pneumoscan",
        "pipeline_tag": "image-classification",
        "tags": list(dict.fromkeys(["medical-imaging", "chest-x-ray", "radiology", "pediatric", "pneumonia", card.task,
                                    card.model, "research-only"])),
        **({"datasets": datasets} if datasets else {}),
        "metrics": [kind for _, kind, _ in CARD_METRICS],
    }
    index = _model_index(card)
    if index:
        meta["model-index"] = index
    return meta


class _PlainDumper(yaml.SafeDumper):
    """Safe YAML without anchors and aliases (the task block repeats per result): plainer for readers and parsers."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _bullets(items: tuple[str, ...]) -> str:
    return "\n".join(f"- {item}" for item in items)


def prevalence_note(prevalence: float, positive: str, mark: str = "") -> str:
    """Why PPV and NPV are no property of the model alone: they hold at the prevalence of the films measured."""
    return (f"{mark}At this set's prevalence of {format_percent(prevalence)} ({positive} films): at another, PPV "
            "and NPV differ.")


AT_PREVALENCE_FIGURES = (("precision", "PPV"), ("npv", "NPV"), ("accuracy", "accuracy"))  # a card's, as a rate


def at_prevalence_note(positive: str) -> str:
    """How figures at a clinic's prevalence (evaluate --prevalence) were made and what they assume: the report's,
    methods.md's and a card's words."""
    return (f"At a clinic's prevalence P of {positive}: PPV = Se P / (Se P + (1 - Sp)(1 - P)), NPV = Sp (1 - P) / "
            "(Sp (1 - P) + (1 - Se) P), accuracy = Se P + Sp (1 - P) and net benefit = Se P - (1 - Sp)(1 - P) × "
            "pt/(1 - pt), from this set's sensitivity Se and specificity Sp at the threshold (Bayes' rule). They "
            "hold only where the model's sensitivity and specificity carry over to the clinic's films: another case "
            "mix (milder or more advanced disease, other ages, equipment or referral: spectrum effects) changes "
            "them, and only the clinic's own consecutive films measure that. Each 95% CI is the figure at the ends "
            "of sensitivity's and specificity's exact 97.5% intervals (each figure rises with both; Bonferroni), so "
            "it covers at least 95%. Three-class figures are not recomputed: a clinic's three-class case mix is two "
            "shares, and the decision is no threshold on one probability.")


def _validation_section(card: BundleCard) -> str:
    m = card.val_metrics
    if not m:
        return "No validation figures were recorded for this bundle."
    marked = m.get("prevalence") is not None  # a card written before prevalence was recorded has none to name
    cis = m.get("ci") or {}
    rows = "\n".join([f"| {name}{' †' if marked and key in PREVALENCE_BOUND else ''} | "
                      f"{with_ci(m.get(key), cis.get(key), 4) if cis else format_figure(m.get(key), 4)} |"
                      for key, _, name in CARD_METRICS]
                     + [f"| {name} | {with_ci(m[key], cis[key], 4) if key in cis else format_figure(m[key], 4)} |"
                        for key, _, name in THREE_CLASS_FIGURES if key in m]
                     + ([f"| {ECE_NAME} | {format_figure(m['ece'], 4)} |"] if "ece" in m else []))
    policy = card.threshold_records[0]["previous_policy"] if card.threshold_records else card.threshold_policy
    patients = f" of {counted(m['patients']['all'], 'patient')}" if m.get("patients") else ""
    return (
        f"On the {m.get('n')} films{patients} the temperature and threshold were chosen on, at that threshold "
        f"({format_figure(m.get('threshold'), 4)}, {policy}):\n\n"
        f"| metric | value |\n| --- | --- |\n{rows}\n\n"
        + (" ".join(filter(None, [ci_method_sentence(m.get("ci_unit", "film"), VALIDATION_PROPORTIONS,
                                                     ("auc", "f1", *(["macro_auc"] if MACRO_AUC in cis else []))),
                                  unit_caveat(m)])) + "\n\n" if cis else "")
        + (prevalence_note(m["prevalence"], card.positive, "† ") + "\n\n" if marked else "") +
        "**Caveat:** the threshold (and the temperature that calibrates the probabilities) was chosen on these "
        "same films, so sensitivity and specificity here are optimistic. Judge the model by an evaluation on "
        "films it has never seen (below, or `pneumoscan evaluate`)."
        + "".join(f" **Caveat:** {said}." for said in left_out_caveat(m.get("left_out", []), m["n"]))
    )


def _external_section(card: BundleCard) -> str:
    if not card.external_evaluations:
        return ("None recorded. `pneumoscan evaluate BUNDLE DATA --add-to-card --data-name NAME` adds one here "
                "(the weights are not touched).")
    names = (card.classes[0], card.positive)
    head = "| date | data | n | 95% CIs count | scores, threshold | " + " | ".join(
        name for _, _, name in CARD_METRICS[:3]) + " | films new to it |\n|" + " --- |" * 9
    rows = "\n".join(
        f"| {r['date']} | {markdown_text(r['data'])} | {film_counts(r, names)}{_left_out_count(r)} | "
        f"{r.get('ci_unit', 'film')}s | {r['scores']}, {format_figure(r['threshold'], 4)} | "
        + " | ".join(_with_ci(r["metrics"], key) for key, _, _ in CARD_METRICS[:3])
        + f" | {_films_cell(r)} |"
        for r in card.external_evaluations
    )
    # how the intervals were made, by the unit they count, naming the data of each (the table's "95% CIs count")
    by_unit = {unit: list(dict.fromkeys(markdown_text(r["data"]) for r in card.external_evaluations
                                        if r.get("ci_unit", "film") == unit)) for unit in ("patient", "film")}
    notes = [ci_method_sentence(unit, "sensitivity and specificity", ("auc",), f" of {', '.join(data)}")
             for unit, data in by_unit.items() if data]
    checked = ("\n\nFilms new to it: whether the films were checked not to be the training or validation films of the "
               "runs the weights come from (their split.csv, beside the bundle where it was evaluated). Figures on "
               "films it trained on are optimistic; those \"not checked\" may be such figures.")
    caveats = _caveat_lines(card.external_evaluations)
    # a three-class bundle's ranking of its classes, which answers (or raises) a caveat of its validation macro AUC
    macro = [f"{r['date']}, on {markdown_text(r['data'])}: {_with_ci(r['metrics'], MACRO_AUC)}"
             for r in card.external_evaluations if MACRO_AUC in r["metrics"]]
    macro_said = (f"\n\n{MACRO_AUC_NAME}, with its 95% CI: {'; '.join(macro)}."
                  if macro else "")
    # the figures a clinic of another prevalence would see, where the evaluation was asked for them
    at = [f"{r['date']}, on {markdown_text(r['data'])}: " + "; ".join(
        f"at {format_percent(b['prevalence'])}, " + ", ".join(f"{name} {_with_ci(b['metrics'], key)}"
                                                          for key, name in AT_PREVALENCE_FIGURES)
        for b in r["at_prevalence"]) for r in card.external_evaluations if r.get("at_prevalence")]
    at_said = (f"\n\nAt a clinic's prevalence (`evaluate --prevalence`), with 95% CIs: {'; '.join(at)}. "
               + at_prevalence_note(card.positive) + " Net benefit at each is in the evaluation's report."
               if at else "")
    # the decision curve's figure at each evaluation's threshold, beside the two strategies it must beat
    benefit = [f"{r['date']}, on {markdown_text(r['data'])}, at {format_figure(r['threshold'], 4)}: "
               f"{net_benefit_said(r['net_benefit'])}" for r in card.external_evaluations if r.get("net_benefit")]
    benefit_said = (f"\n\nNet benefit at the threshold (decision curve analysis; true positives a film, net of false "
                    f"positives weighed by the threshold's odds), against calling every film {card.positive} (treat "
                    f"all) and none (treat none): {'; '.join(benefit)}. It holds at each set's prevalence; the "
                    "evaluation's decision_curve.csv and report give it over every threshold probability."
                    if benefit else "")
    return (f"{head}\n{rows}\n\n" + " ".join(notes + ([FILM_UNIT_CAVEAT] if by_unit["film"] else [])) + macro_said
            + benefit_said + at_said + checked
            + (f"\n\nWhat could not be checked, or was found, when they were recorded:\n{caveats}" if caveats else "")
            + _subgroups_section(card.external_evaluations))


def _subgroups_section(records: Sequence[dict[str, Any]]) -> str:
    """The figures by subgroup the evaluations recorded (``evaluate --add-to-card --by FIELD``): a table a field of
    each block (:func:`~.subgroups.blocks`: the binary figures at that evaluation's threshold, the card's when it was
    recorded, and each decision among the classes' accuracy), as the report words them
    (:func:`~.subgroups.table_rows`), each field's tests of a difference across its groups beneath; "" where none
    records any."""
    tables, tested = [], False
    for r in records:
        for decision, block in blocks(r):
            at = (f"at threshold {format_figure(block['threshold'], 4)}" if decision is None
                  else f"of the decision ({markdown_text(decision)})")
            tested = tested or bool(block.get("differences"))
            for field, groups in block["fields"].items():
                head, rows = table_rows(groups)
                said = differences_said(block, field)
                tables.append(f"By {markdown_text(field)}, on {markdown_text(r['data'])} ({r['date']}), {at}, 95% CIs "
                              f"counting {r.get('ci_unit', 'film')}s:\n\n"
                              + markdown_table(head, rows)
                              + (f"\n\n{markdown_text(said)}" if said else ""))
    if not tables:
        return ""
    smallest = min(block["smallest"] for r in records for _, block in blocks(r))
    return ("\n\n### Figures by subgroup\n\nEach group's figures on its films alone, at the evaluation's threshold "
            f"(never one chosen per group); a figure of fewer than {smallest} patients gives its films counted and no "
            "interval. A group's figures differ from the whole set's by chance too: compare their intervals."
            + (f" {DIFFERENCES_NOTE}" if tested else "") + "\n\n" + "\n\n".join(tables))


def _films_cell(record: dict[str, Any]) -> str:
    """A record's "films new to it" cell: whether its films were checked, and, where the check or the films left
    caveats (copies of training films, films left unread or outside the scope, label conflicts), a pointer to them:
    a bare "checked" read as a clean bill."""
    cell = FILMS_CHECKED.get(record.get("films_checked"), "not recorded")
    noted = record.get("caveats") or record.get("label_conflicts")
    return f"{cell}, **with caveats** (below)" if record.get("films_checked") and noted else cell


def _caveat_lines(records: Sequence[dict[str, Any]]) -> str:
    """The caveats of a card's records (evaluations, thresholds), then what their label conflicts say
    (:func:`_conflicts_caveat`), a line each, with the record's date and data; a record older than either has none."""
    return "".join(f"\n- {r['date']}, on {markdown_text(r['data'])}: {markdown_text(caveat)}" for r in records
                   for caveat in [*r.get("caveats", []), *_conflicts_caveat(r.get("label_conflicts", []))])


def markdown_text(text: str) -> str:
    """Text a user named (a --data-name, a policy naming it, a path in a caveat) as it reads in a Markdown table
    cell or line (MODEL_CARD.md's, methods.md's prose and tables): a "|" split the evaluations table's row, every
    figure then a column off ("Sensitivity" showing the AUC), and an HTML tag in it was kept as markup."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text.replace("&", "&amp;")).replace("|", "\\|")  # "<=" opens none


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (MODEL_CARD.md's, methods.md's), each cell escaped (:func:`markdown_text`): a "|" in a
    file's or group's name would split its row."""
    return "\n".join(f"| {' | '.join(map(markdown_text, row))} |" for row in (head, ["---"] * len(head), *rows))


def _conflicts_caveat(conflicts: Sequence[dict[str, Any]]) -> list[str]:
    """What a card says of a record's label conflicts (``data.copies.label_conflicts``, as evaluate's and threshold's
    records keep them): none, or one line with the first; a record older than them has none."""
    if not conflicts:
        return []
    first = conflicts[0]
    return [f"{len(conflicts)} label conflict(s) among the films, scored as labelled: a file name or a copy "
            f"contradicts a label (e.g. {' | '.join(map(shown, first['paths']))}: {first['reason']}), so figures on "
            "them may score the model against a wrong label"]


def _threshold_section(card: BundleCard) -> str:
    text = (f"In force: **{format_figure(card.threshold, 4)}** ({markdown_text(card.threshold_policy)}); with "
            f"test-time augmentation (`--tta`): {format_figure(card.tta_threshold, 4)}. A film is called "
            f"{card.positive} when P({card.positive}) is at or above the threshold.")
    if card.threshold_caveat:
        text += f" **Caveat:** {card.threshold_caveat}."
    text += _interval_sentence(card.threshold_interval, card.tta_threshold_interval, card.threshold_policy,
                               card.threshold_caveat)
    if not card.threshold_records:
        return text
    rows = "\n".join(
        f"| {r['date']} | {markdown_text(r['policy'])} | {markdown_text(r['data'])} "
        f"(n = {r['n']}{_left_out_count(r)}) | "
        f"{format_figure(r['previous_threshold'], 4)} -> {format_figure(r['threshold'], 4)} | "
        f"{format_figure(r['tta_threshold'], 4)} | {format_figure(r['sensitivity'])} / "
        f"{format_figure(r['specificity'])} | {_films_cell(r)} |"
        for r in card.threshold_records
    )
    caveats = _caveat_lines(card.threshold_records)
    return (f"{text}\n\nThresholds chosen after training (`pneumoscan threshold`), newest last:\n\n"
            "| date | policy | data | threshold | TTA threshold | sensitivity / specificity there | films new to it |\n"
            f"| --- | --- | --- | --- | --- | --- | --- |\n{rows}\n\n"
            "The sensitivity and specificity of a record are measured on the data the threshold was chosen on, "
            "so they are optimistic in the same way as the validation figures. Films new to it: whether the films "
            "were checked not to be the training or validation films of the runs the weights come from; a threshold "
            "chosen on films it trained on comes out too high for a sensitivity target, and those \"not checked\" "
            "may be such films."
            + (f"\n\nWhat could not be checked, or was found, when they were chosen:\n{caveats}" if caveats else ""))


def _int8_section(figures: dict) -> str:
    """What ``export --int8`` made, from its sidecar: the thresholds ``--backend onnx-int8`` labels at are its own
    (:class:`Int8Operating`, read from the INT8 keys as that backend reads them)."""
    chosen = Int8Operating.from_figures(figures)
    at = chosen.val_metrics or {}
    cis = at.get("ci") or {}  # a sidecar written before the INT8 figures had intervals has none
    counted = f" (95 % CIs counting {at.get('ci_unit', 'film')}s)" if cis else ""
    return (f"`{INT8_NAME}` (`pneumoscan export --int8`): ONNX Runtime static INT8, read by `--backend onnx-int8`. "
            "Quantisation moves the scores, so it labels at its own thresholds: "
            f"**{format_figure(chosen.threshold, 4)}** ({chosen.threshold_policy or 'policy not recorded'}); "
            f"with test-time augmentation {format_figure(chosen.tta_threshold, 4)}. On the "
            f"{figures.get(Int8Key.VALIDATION_IMAGES, '?')} films that chose them: AUC "
            f"{format_figure(figures.get(Int8Key.VAL_AUC_INT8), 4)} (FP32 "
            f"{format_figure(figures.get(Int8Key.VAL_AUC_FP32), 4)}), "
            f"sensitivity {with_ci(at.get('sensitivity'), cis.get('sensitivity'))}, "
            f"specificity {with_ci(at.get('specificity'), cis.get('specificity'))} at its threshold{counted}; "
            + "".join(f"{name[0].lower()}{name[1:]} {format_figure(at[key], 4)}; "
                      for key, _, name in THREE_CLASS_FIGURES if key in at)
            + "probabilities moved by up to "
            f"{format_figure(figures.get(Int8Key.MAX_PROBABILITY_CHANGE), 3)} from FP32's."
            + _interval_sentence(chosen.threshold_interval, chosen.tta_threshold_interval, chosen.threshold_policy,
                                 chosen.threshold_caveat)
            + (f" **Caveat:** {chosen.threshold_caveat}." if chosen.threshold_caveat else "")
            + "".join(f" **Caveat:** {said}." for said in left_out_caveat(
                figures.get(Int8Key.LEFT_OUT, []), figures.get(Int8Key.VALIDATION_IMAGES, 0)))
            + " The other sections describe the FP32 model.")


def _interval_sentence(interval: list[float] | None, tta_interval: list[float] | None, policy: str | None,
                       caveat: str | None) -> str:
    """The 95 % confidence interval of the threshold the policy would choose on the population of films like those
    that chose it (metrics.threshold_range), not where another set's threshold would fall (that scatters more);
    without one, why not, lest a card that is silent on it read as one whose threshold is known: the ``caveat``
    says why where the bundle recorded it, else the reasons there can be. A fixed threshold was chosen on no films:
    nothing to say."""
    if not interval:
        if not policy or policy.startswith("fixed") or NO_RANGE in (caveat or ""):
            return ""
        return (" No range near the threshold is recorded, so predictions mark no reading as near it: the films that "
                "chose it hold fewer than two patients (or films) of the class its policy reads, where nothing shows "
                "how another would score, or too few resamples of them could meet the policy, or the bundle is older "
                "than such ranges.")
    low, high = (format_figure(v, 4) for v in interval)
    tta = (f" (with test-time augmentation {format_figure(tta_interval[0], 4)} to "
           f"{format_figure(tta_interval[1], 4)})" if tta_interval else "")
    return (f" The threshold this policy would choose on all films like those it was chosen on lies between {low} and "
            f"{high}{tta} (a 95 % confidence interval, a bootstrap of those films; a threshold chosen on another set "
            "of films would scatter more widely, with that set's own chance): a reading in that range could have been "
            "called either way, and predictions mark it as near the threshold.")


def _model_description(card: BundleCard, source: str) -> str:
    """The recipe's opening: the model and what it reads. An ensemble's own mean 0 and std 1 only keep its input in
    [0, 1], each member normalising it as it was trained: its members are described, each with its size and
    normalisation, not its ``model_kwargs`` as a dict with a normalisation no member uses."""
    pixels = f"{card.size} x {card.size} px ({card.resize_policy}{source})"
    if card.model != ENSEMBLE:
        kwargs = f" {card.model_kwargs}" if card.model_kwargs else ""
        return (f"Model `{card.model}`{kwargs}, grayscale input of {pixels}, normalised with mean {card.mean:g} and "
                f"std {card.std:g}")
    members = card.model_kwargs["members"]
    kinds: dict[str, int] = {}  # each kind of member (architecture, options, size, normalisation): how many, in order
    for m in members:
        options = f" ({', '.join(f'{k}={v}' for k, v in m['model_kwargs'].items())})" if m["model_kwargs"] else ""
        kind = f"`{m['model']}`{options} at {m['size']} px (mean {m['mean']:g}, std {m['std']:g}"
        kinds[kind] = kinds.get(kind, 0) + 1
    listed = ", ".join(kind + (f"; {n} members)" if n > 1 else ")") for kind, n in kinds.items())
    return (f"Model `{ENSEMBLE}`: an ensemble of {len(members)} members, their calibrated logits averaged (each "
            f"member's divided by its own temperature): {listed}. Grayscale input of {pixels}, pixel values scaled "
            "to [0, 1], which each member resizes to its own size and normalises with its own mean and std")


def _plugins_sentence(card: BundleCard) -> str:
    """" Made with plug-in modules: ..." (:attr:`BundleCard.plugins`), each module with what it registered, and how
    the command line imports them; "" for a bundle made with pneumoscan's own only (or older than the record)."""
    modules: dict[str, list[str]] = {}
    for kind, named in card.plugins.items():
        for name, module in named.items():
            modules.setdefault(module, []).append(f"{kind} `{name}`")
    if not modules:
        return ""
    listed = "; ".join(f"`{module}` ({', '.join(what)})" for module, what in modules.items())
    return (f" Made with plug-in modules: {listed}; a process that reads the bundle imports them first (on the "
            f"command line, `{PLUGINS_ENV}={','.join(modules)}`).")


def trained_by_said(card: BundleCard) -> str | None:
    """The pneumoscans that trained the weights, in words (:data:`~pneumoscan.models.card.TRAINED_BY`, oldest
    first): a run resumed from a checkpoint of a version before 0.3 records None for it, which the settings block
    shows as ``null``. None where the card records none (an ensemble, a card older than the record)."""
    versions = card.train_config.get(TRAINED_BY)
    if not versions:
        return None
    known = ", then by ".join(f"pneumoscan {v}" for v in versions if v)  # the last is the one that finished it
    if None in versions:
        return (f"Its weights were begun by a version of pneumoscan before 0.3, which recorded none, and finished by "
                f"{known}.")
    return f"Its weights were trained by {known}."


def model_read(card: BundleCard) -> str:
    """How the model reads a film (its input and preprocessing: :func:`_model_description`) and the temperature its
    probabilities are scaled by, with the films it was fitted on and its caveat: the recipe's opening in
    MODEL_CARD.md, and the index test's in an evaluation's methods.md."""
    source = (f"; inputs larger than the training files are first brought down to {card.source_size} px JPEG "
              f"quality {card.source_quality}, as those were made" if card.source_size else "")
    return (f"{_model_description(card, source)}; softmax temperature {card.temperature:.3f} fitted on "
            f"{card.train_config.get('calibrated_on') or chosen_on(card)}"
            + (f" (**the probabilities are not calibrated:** {card.temperature_caveat})" if card.temperature_caveat
               else ""))


def render(card: BundleCard, int8: dict | None = None) -> str:
    """The text of MODEL_CARD.md for a bundle's card; ``int8`` the INT8 sidecar's figures, when it has validated
    ones (:meth:`Int8Operating.validated`)."""
    recipe = {k: card.train_config[k] for k in card.train_config if k not in ("split_csv",)}
    # versions[WRITER] is the pneumoscan that last wrote the card (a later `threshold` too), not one that trained
    libraries = {name: v for name, v in card.versions.items() if name != WRITER}
    sections = [
        f"# {card.model_id}\n\n{card.model} classifier for the `{card.task}` task ({' vs '.join(card.classes)}; "
        f"positive class {card.positive}), made with pneumoscan {card.package_version}. "
        "**Research use only; not a medical device.**",
        f"## Intended use\n\n{intended_use(card)}",
        f"## Out of scope\n\n{_bullets(out_of_scope(card))}",
        f"## Training data\n\n{_training_data(card)}{_split_sentence(card)}"
        f"{_content_check_sentence(card.train_config)}\n\n"
        f"Data checksum (the training and validation films' pixels as preprocessed, with their labels, whatever their "
        f"paths): `{card.data_checksum or 'not recorded'}`. Data fingerprint (those files where they were): "
        f"`{card.data_fingerprint or 'not recorded'}`.",
        f"## Recipe\n\n{model_read(card)}. Training configuration:\n\n"
        "```yaml\n" + (yaml.safe_dump(recipe, sort_keys=False) if recipe else "{}\n") + "```\n\n"
        + (f"Trained with {', '.join(f'{name} {v}' for name, v in libraries.items())}."
           if libraries else "Library versions not recorded.")
        + (f" {trained}" if (trained := trained_by_said(card)) else "") + _plugins_sentence(card),
        f"## Operating threshold\n\n{_threshold_section(card)}",
        *([f"## INT8 model\n\n{_int8_section(int8)}"] if int8 else []),
        f"## Validation figures\n\n{_validation_section(card)}",
        f"## Evaluations on other data\n\n{_external_section(card)}",
        f"## Limitations\n\n{_bullets(_limitations(card))}",
        *([f"## How to cite the data\n\n{CITATION}"] if any(s["name"] == KERMANY for s in training_sources(card))
          else []),
    ]
    meta = yaml.dump(front_matter(card), Dumper=_PlainDumper, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{meta}---\n\n" + "\n\n".join(sections).rstrip() + "\n"


def model_card_text(directory: Path | str, card: BundleCard, say: bool = True) -> str:
    """The text of BUNDLE/MODEL_CARD.md for ``card``, with the INT8 model's section where the bundle has one; a
    sidecar that gives none is warned of when ``say`` (the text is being written or printed), not when the text is
    only compared (:func:`stale_model_card`, at each start of predict and serve, whatever their backend)."""
    quantized = Path(directory) / INT8_NAME
    # the INT8 model's own thresholds and figures, when export --int8 made one; a sidecar without them (unreadable,
    # or not written whole by export --int8) describes no model --backend onnx-int8 would run: no section
    int8 = read_sidecar(quantized) if quantized.exists() else None
    if int8 is not None and Int8Operating.validated(int8) is None:
        if say:
            log.warning("%s gives no validated INT8 thresholds (`pneumoscan export --int8` makes them): %s has no "
                        "INT8 section", spec_path(quantized), Path(directory) / MODEL_CARD)
        int8 = None
    return render(card, int8)


def write_model_card(directory: Path | str, card: BundleCard) -> Path:
    """(Re)write BUNDLE/MODEL_CARD.md from ``card``; atomic like bundle.json."""
    path = Path(directory) / MODEL_CARD
    write_atomic(path, model_card_text(directory, card).encode("utf-8"))
    return path


def stale_model_card(directory: Path | str, card: BundleCard | None = None, text: str | None = None) -> str | None:
    """Why BUNDLE/MODEL_CARD.md is not the text this pneumoscan writes of its card, bundle.json (a 0.2.0 bundle's
    keeps 0.2.0's until a command rewrites it, and may say what the card does not record, or leave out what it
    does), with how to rewrite it; None when it is, or there is none. Said, never rewritten here: a bundle is
    written by a command that says so (``pneumoscan card BUNDLE --write``). ``card`` and ``text`` (its
    :func:`model_card_text`) where the caller has them: ``pneumoscan card`` compares the text it prints, rendered
    once."""
    path, card = Path(directory) / MODEL_CARD, card or load_card(directory)
    try:
        if path.read_text(encoding="utf-8") == (model_card_text(directory, card, say=False) if text is None else text):
            return None
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):  # unreadable, or not text: not the card's text either
        pass
    writer = card.versions.get(WRITER) or "a version that records none"
    return (f"{shown(path)} is not the text this pneumoscan writes of the card (bundle.json, by pneumoscan "
            f"{writer}): it may say more or less than the card records, which /v1/model and the web page state; "
            f"`pneumoscan card {shown(directory)} --write` rewrites it from the card")


def say_stale_model_cards(bundles: Iterable[Path | str | None]) -> None:
    """Warn, once a command that reads them (predict, pacs, serve) has read them and checked their files, of each of
    ``bundles`` (None: no such stage) whose MODEL_CARD.md is not its card's text (:func:`stale_model_card`): a
    reader of the file would take a 0.2.0 bundle's text for what the readings' card says."""
    for stale in filter(None, map(stale_model_card, filter(None, bundles))):
        log.warning("%s", stale)


def update_card(directory: Path | str, card: BundleCard) -> None:
    """Save bundle.json, then MODEL_CARD.md from it; the weights are never rewritten."""
    save_card(directory, card)
    write_model_card(directory, card)


def evaluation_record(metrics: dict[str, Any], data_name: str, scores: str, bundle: Path | str,
                      held_out: HeldOutFindings) -> dict[str, Any]:
    """What the card keeps of an evaluate result: the data's name, counts, threshold and metrics with CIs, the
    films whose labels their names or copies contradict (``label_conflicts``, as metrics.json lists them: figures
    on them may score the model against a wrong label), and whether the films were checked to be new to BUNDLE
    (``films_checked``) with what that check (``held_out``, evaluate's) could not check or found (``caveats``): a
    bundle given without its run's split.csv (shipped alone) is evaluated with a logged warning only, and its card
    must not show figures on what may be its training films as other data's. The files the figures left out, and why
    (``left_out``, as metrics.json has it: unreadable files, films of a class the task does not read or without the
    type it needs), and films outside the model's scope (scored and counted) are counted, and said among the
    caveats: figures on the rest of a folder, or on lateral films, are not figures on the films a reader would give
    it."""
    unreadable, outside = len(metrics["unreadable"]), len(metrics["out_of_scope"])
    more = left_out_caveat(metrics["left_out"], metrics["n"]) + (
        [f"{outside} of the {metrics['n']} films are outside the model's scope (evaluate's predictions.csv says why) "
         "and are scored and counted in the figures all the same"] if outside else [])
    if metrics.get("ci_unit") == "patient" and (unknown_ids := unit_caveat(metrics)):  # a film unit: the table says
        more.append(unknown_ids)
    return {
        "data": data_name,
        "date": today(),
        "n": metrics["n"],
        "n_positive": metrics["n_positive"],
        "n_negative": metrics["n_negative"],
        "patients": metrics["patients"],
        "prevalence": metrics["prevalence"],
        "scores": scores,
        "threshold": metrics["threshold"],
        "ci_unit": metrics.get("ci_unit", "film"),
        "metrics": {key: {"value": metrics.get(key), "ci": metrics.get("ci", {}).get(key)}
                    for key, _, _ in CARD_METRICS} | _macro_auc(metrics),
        **recorded(metrics),  # evaluate --by's, at threshold and of each decision among the classes
        **_at_prevalence_record(metrics),
        **_net_benefit_record(metrics),
        "label_conflicts": metrics["label_conflicts"],
        "unreadable": unreadable,
        "left_out": metrics["left_out"],  # the files given the figures are not of, and why (unreadable among them)
        "outside_scope": outside,
        **films_record(bundle, held_out, more),
    }


def _at_prevalence_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """An evaluation record's figures at the prevalences evaluate --prevalence asked for: PPV, NPV and accuracy
    (:data:`AT_PREVALENCE_FIGURES`) with their intervals; net benefit, no rate (below 0 where a model harms), stays
    in the report and metrics.json. Empty where none was asked for."""
    if not (block := metrics.get("at_prevalence")):
        return {}
    return {"at_prevalence": [{"prevalence": b["prevalence"],
                               "metrics": {key: {"value": b[key], "ci": b["ci"][key]} for key, _ in
                                           AT_PREVALENCE_FIGURES}} for b in block["figures"]]}


def _net_benefit_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """An evaluation record's net benefit at its threshold (metrics.json's ``net_benefit``: the decision curve's
    figure at the bundle's threshold, with its interval, beside treating every film as positive and none). Empty
    where the evaluation has none (a threshold of 0 or 1, whose odds are 0 or infinite)."""
    if not (at := metrics.get("net_benefit")):
        return {}
    return {"net_benefit": {"value": at["net_benefit"], "ci": at.get("ci"), "treat_all": at["treat_all"],
                            "treat_none": at["treat_none"]}}


def net_benefit_said(entry: dict[str, Any]) -> str:
    """A net benefit (``{"value", "ci", "treat_all", "treat_none"}``) with its interval beside treat all and treat
    none, in plain text: "to" between the ends, which may be negative."""
    return (f"{entry['value']:.3f} ({net_benefit_interval(entry.get('ci'))}); treat all {entry['treat_all']:.3f}, "
            f"treat none {entry['treat_none']:.3f}")


def _macro_auc(metrics: dict[str, Any]) -> dict[str, Any]:
    """A multiclass bundle's evaluation record of its macro one-vs-rest AUC with its interval (:data:`MACRO_AUC`),
    beside the positive call's AUC: the figure that can answer a ranking caveat of the validation macro AUC
    (:attr:`BundleCard.ranking_caveat`). Empty for a task of two classes."""
    if not (block := metrics.get("multiclass")):
        return {}
    return {MACRO_AUC: {"value": block["macro_auc"], "ci": block["ci"]["macro_auc"]}}


def films_record(bundle: Path | str, held_out: HeldOutFindings, more: Sequence[str] = ()) -> dict[str, Any]:
    """What a card's record (an evaluation, a threshold) says of the films it was made on: ``films_checked``,
    whether they could be checked against the training films of the runs BUNDLE's weights come from (check_held_out
    passes over a run it cannot look at with a logged warning, and says which in ``held_out``), and ``caveats``:
    why not, then what the check found that flatters figures on them (its warnings), then ``more`` of the kind."""
    found = [*held_out.caveats, *more]
    if (unknown := held_out.unknown_source(bundle)) is not None:
        return {"films_checked": False, "caveats": [unknown, *found]}
    return {"films_checked": True, "caveats": found}


def add_evaluation(directory: Path | str, record: dict[str, Any]) -> BundleCard:
    """Append an external evaluation to the bundle's card and regenerate MODEL_CARD.md."""
    card = load_card(directory)
    card.external_evaluations.append(record)
    update_card(directory, card)
    return card


def card_summary(card: BundleCard) -> dict[str, Any]:
    """What the web service shows of the model card: intended use, out of scope, and the recorded figures."""
    return {
        "intended_use": intended_use(card),
        "out_of_scope": list(out_of_scope(card)),
        "trained_by": trained_by_said(card),
        # each with films_checked, without the caveats of its films' check and its label conflicts (paths on the
        # machine that evaluated)
        "external_evaluations": [{k: v for k, v in r.items() if k not in ("caveats", "label_conflicts")}
                                 for r in card.external_evaluations],
        # without the bundle each threshold was chosen for, the caveats of its check and its label conflicts: paths
        # on the machine that chose it (MODEL_CARD.md, beside the weights, says the caveats and conflicts)
        "threshold_records": [{k: v for k, v in r.items() if k not in ("source_bundle", "caveats", "label_conflicts")}
                              for r in card.threshold_records],
    }
