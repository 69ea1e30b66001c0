"""Self-contained HTML evaluation reports.

One HTML file with inline CSS and plots embedded as base64 PNG data URLs, so a report can be mailed, archived
next to a model bundle, or opened offline without missing pieces. Figures are built with
``matplotlib.figure.Figure`` (Agg canvas) rather than pyplot: no global figure state, so it is safe inside a
web server's threads and never needs a display.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pneumoscan.core.atomic import write_atomic, write_json
from pneumoscan.core.figures import figure_bytes, png_data_url, set_title
from pneumoscan.core.metrics import (BOTH_CLASSES, PATIENT_UNIT, ci_method_sentence, clopper_pearson, format_figure,
                                     format_percent, jsonable, net_benefit_interval, unit_caveat)
from pneumoscan.core.metrics.intervals import FEW_PATIENTS
from pneumoscan.core.names import path_text
from pneumoscan.models.run_folder import METRICS, REPORT

from .model_card import (ECE_NAME, PREVALENCE_BOUND, at_prevalence_note, class_counts, film_counts, one_class,
                         prevalence_note)
from .subgroups import DIFFERENCES_NOTE, differences_said, table_rows

if TYPE_CHECKING:  # matplotlib (0.5 s of CPU) is imported where a figure is drawn, not by every import of evaluate's
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# In print: white, unframed, every figure, table and row whole where it fits a page and a heading with what follows;
# the rows of figures and the gallery are lines of blocks there, which Chromium breaks between (a flex row it moved
# whole to the next page, its heading left behind; a gallery's two 360 px figures, wider than A4, a page each).
_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2733;background:#f5f7fa;
margin:0;padding:24px;line-height:1.45}
main{max-width:1180px;margin:0 auto;background:#fff;border:1px solid #d5dbe3;border-radius:6px;padding:28px 36px}
h1{font-size:1.6em;margin:0 0 4px;color:#0b3c5d}h2{font-size:1.2em;margin:30px 0 10px;color:#0b3c5d;
border-bottom:2px solid #e3e8ee;padding-bottom:4px}.subtitle{color:#52606d;margin:0 0 16px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:.95em}
th,td{border:1px solid #c9d1db;padding:6px 12px;text-align:left}th{background:#eef2f6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}.ci{color:#52606d;font-size:.88em}
.meta th{width:180px}.cm td{text-align:center;min-width:70px;font-variant-numeric:tabular-nums}
.cm .ci{color:inherit}.cm caption{color:inherit;font-size:1em;font-weight:600;padding:4px 0}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
figure{margin:0;flex:1 1 320px;max-width:380px}figure img{width:100%;box-sizing:border-box;border:1px solid #e3e8ee}
figcaption{font-size:.88em;color:#52606d;margin-top:4px}.note{color:#52606d;font-size:.9em}
.block{flex:0 1 auto}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.gallery figure{flex:0 1 360px;max-width:360px}h3{font-size:1em}
.gallery img{width:auto;max-width:100%;max-height:240px}.said{font-size:.9em}
caption{text-align:left;color:#52606d;font-size:.88em;padding-bottom:3px}
.optimistic{border:2px solid #b42318;background:#fef3f2;color:#7a271a;padding:8px 14px;margin:12px 0}
.unchecked{border:2px solid #b54708;background:#fffaeb;color:#7a2e0e;padding:8px 14px;margin:12px 0}
@media print{body{background:#fff;padding:0;font-size:10pt}main{max-width:none;border:0;border-radius:0;padding:0}
h2,h3,h2+.note{break-after:avoid}figure,table,tr,.block,.optimistic,.unchecked{break-inside:avoid}
.row,.gallery{display:block;orphans:1;widows:1}
.row>*,.gallery>*{display:inline-block;vertical-align:top;margin:0 12px 12px 0}.row>figure,.gallery>figure{width:47%}
th,td{padding:3px 6px}.cm td{print-color-adjust:exact;-webkit-print-color-adjust:exact}}
"""
_RESEARCH_USE = "For research use; not a medical device."
MODEL_ID = "model id"  # the header's row (``extra``) of the bundle's model id, which every printed page repeats


def _page_css(title: str, generated: str, running: str) -> str:
    """Every printed page's margins say what it is (the title, ``running``: which bundle; when it was made; its page
    of how many), as a person's own browser prints them (CSS page margin boxes), not only the first page's header:
    a page of a report printed to PDF is often read apart from the others. A browser without margin boxes prints
    none of it: the first page's own text says the same."""
    box = "font:8pt Arial,sans-serif;color:#52606d"
    return (f"@page{{margin:16mm 14mm;@top-left{{content:{_css_string(title)};{box}}}"
            f"@top-right{{content:{_css_string(generated)};{box}}}"
            f"@bottom-left{{content:{_css_string(' · '.join(filter(None, [running, _RESEARCH_USE])))};{box}}}"
            f'@bottom-right{{content:"page " counter(page) " of " counter(pages);{box}}}}}')


def _css_string(text: str) -> str:
    """TEXT as a quoted CSS string, each character but a letter, digit or space escaped, so that no name can end
    the string or the style element (``</style>``)."""
    return '"' + "".join(c if c.isalnum() or c == " " else f"\\{ord(c):x} " for c in path_text(text)) + '"'


_PROPORTIONS = {"accuracy", "sensitivity", "specificity", "precision", "npv", "balanced_accuracy"}
_BINARY_ROWS = (
    ("auc", "ROC AUC"),
    ("pr_auc", "PR AUC (average precision)"),
    ("sensitivity", "Sensitivity (recall)"),
    ("specificity", "Specificity"),
    ("precision", "Precision (PPV)"),
    ("npv", "Negative predictive value (NPV)"),
    ("accuracy", "Accuracy"),
    ("f1", "F1"),
    ("ece", ECE_NAME),
)
_MULTICLASS_ROWS = (
    ("accuracy", "Accuracy"),
    ("balanced_accuracy", "Balanced accuracy (mean sensitivity)"),
    ("macro_auc", "Macro one-vs-rest ROC AUC"),
    ("macro_f1", "Macro F1"),
    # of the probability of the class decided (two stages decide by their thresholds, not the largest probability)
    ("ece", ECE_NAME.replace("(", "(decided class, ")),
)


# the decimals of every threshold the report shows, and so of the probabilities its error gallery shows beside them
THRESHOLD_DIGITS = 4


def _undefined(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, name: str = "") -> str:
    if _undefined(value):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    if name == "threshold":  # 4 decimals wherever a threshold is shown: the header's, a caption's, a table's alike
        return f"{value:.{THRESHOLD_DIGITS}f}"
    return format_percent(value) if name in _PROPORTIONS else format_figure(value)


def _ci_text(block: dict[str, Any], name: str) -> str:
    """The figure's interval as the report writes it ("95% CI 0.880–0.940"), or why there is none; "" for an
    undefined figure."""
    cis = block.get("ci", {})
    lo, hi = cis.get(name) or (None, None)
    if lo is not None and hi is not None:
        return f"95% CI {_fmt(lo, name)}–{_fmt(hi, name)}"
    if _undefined(block.get(name)):
        return ""
    return "no 95% CI" + (": too few patients or films, or no spread to measure" if name in cis else "")


def _with_ci(block: dict[str, Any], name: str) -> str:
    """The figure and its interval in words, as a figure's text alternative gives them."""
    ci = _ci_text(block, name)
    return _fmt(block.get(name), name) + (f" ({ci})" if ci else "")


def _value_cell(block: dict[str, Any], name: str, absent: str | None = None) -> str:
    """The figure with its CI; a defined figure without one says so, lest a bare 1.000 read as certain: one whose
    CI is null (saying why), and one no interval is computed for (PR AUC, ECE, macro F1, the per-class figures).
    On films of one class (``absent``, the class without films) precision, NPV and F1 are n/a, saying why, not a
    100 % that describes no model."""
    if absent and name in BOTH_CLASSES:
        return f'<td class="num">n/a <span class="ci">(no {_esc(absent)} films: it depends on both classes)</span></td>'
    ci = _ci_text(block, name)
    return f'<td class="num">{_fmt(block.get(name), name)}' + (f' <span class="ci">({ci})</span>' if ci else "") + (
        "</td>")


def _ci_caption(m: dict[str, Any], name: str) -> str:
    """The table's ``name`` (a screen reader's list of tables gives it) and the unit its intervals count, on the
    table itself (its n counts films either way), and why where it is patients: the note above the table
    (:func:`ci_note`) does not say it again."""
    unit = PATIENT_UNIT if m.get("ci_unit") == "patient" else "count films"
    return f"<caption>{_esc(name)}. 95% CIs {unit}.</caption>"


def ci_note(m: Mapping[str, Any], proportions: str, others: Sequence[str], auc_key: str, auc_name: str,
            unit_said: bool = False) -> str:
    """How a block's 95% CIs were made (:func:`~pneumoscan.core.metrics.ci_method_sentence`), by the unit its
    ``ci_unit`` records (a result without one: films), whose unit the table's caption says (:func:`_ci_caption`),
    or the note itself with ``unit_said`` (text without the table: methods.md); ``others``: the figures with other
    intervals than the PROPORTIONS'."""
    unit = "patient" if m.get("ci_unit") == "patient" else "film"
    note = (ci_method_sentence(unit, proportions, others, unit_said=unit_said)
            + _auc_bound_note(m[auc_key], auc_name, f"{unit}s"))
    return " ".join(filter(None, [note, unit_caveat(m)]))


def _auc_bound_note(auc: Any, what: str, unit: str) -> str:
    """Why a perfect (or perfectly reversed) AUC still has an interval: it is an exact bound."""
    if auc in (0, 1):
        return (f" The classes are ordered {'perfectly' if auc == 1 else 'in reverse'}, so the {what}'s interval is "
                f"an exact one-sided bound from disjoint pairs of {unit}.")
    return ""


def _esc(value: Any) -> str:
    """VALUE as text of the page, never markup, and valid UTF-8 whatever a file name's bytes (:func:`path_text`)."""
    return html.escape(path_text(str(value)))


def _meta_table(extra: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in extra.items())
    return f'<table class="meta" aria-label="About this evaluation">{rows}</table>'


def _confusion_table(cm: dict[str, Any], names: Sequence[str], caption: str) -> str:
    """Counts with the row-normalised share beneath, shaded by that share so the diagonal stands out; the share is
    written in the text's own colour, which stands out from the darkest shade (the grey of a note did not)."""
    head = "".join(f"<th>Pred. {_esc(n)}</th>" for n in names)
    body = ""
    for name, counts, shares in zip(names, cm["counts"], cm["normalized"]):
        cells = ""
        for count, share in zip(counts, shares):
            alpha = 0.0 if share is None else 0.05 + 0.45 * share
            pct = "n/a" if share is None else format_percent(share)
            cells += (
                f'<td style="background:rgba(44,123,182,{alpha:.2f})">{count}<br><span class="ci">{pct}</span></td>'
            )
        body += f"<tr><th>True {_esc(name)}</th>{cells}</tr>"
    return (
        f'<div class="block"><table class="cm"><caption>Confusion matrix: {_esc(caption)}</caption>'
        f"<thead><tr><td></td>{head}</tr></thead><tbody>{body}</tbody></table>"
        '<div class="note">Counts; row-normalised share (of each true class) beneath.</div></div>'
    )


def _image_html(png: bytes, caption: str, alt: str, said: str = "") -> str:
    """The picture with its visible ``caption`` and its text alternative ``alt``: what it shows, with its key
    numbers, for a reader who does not see it (the caption alone says what it is, not what it shows); ``said``, a
    gallery overlay's words, beneath the caption."""
    return (f'<figure><img src="{png_data_url(png)}" alt="{_esc(alt)}"><figcaption>{_esc(caption)}'
            + (f'<br><span class="said">{_esc(said)}</span>' if said else "") + "</figcaption></figure>")


def _figure_html(fig: Figure, caption: str, alt: str, pngs: dict[str, bytes] | None = None, name: str = "") -> str:
    """The figure as an inline image; with ``pngs``, its PNG is also kept there under ``name`` (for a file)."""
    png = figure_bytes(fig, tight=True)
    if pngs is not None:
        pngs[name] = png
    return _image_html(png, caption, alt)


def _drawn(text: str) -> str:
    """TEXT as a figure shows it, never as mathtext: matplotlib reads text between two dollar signs as a formula,
    so a run folder named ``a$b$`` would be drawn in italics, and one named ``x$\\foo$`` end the figure in a parse
    error; a name's bytes that are not UTF-8 as ``\\xNN`` (:func:`path_text`)."""
    return path_text(text).replace("$", r"\$")


def _confusion_figure(cm: dict[str, Any], names: Sequence[str], title: str) -> Figure:
    """The confusion matrix as a picture: row-normalised shading, counts and shares written in the cells."""
    fig, ax = _sized_axes((1.2 * len(names), 1.2 * len(names)), (1.3, 0.3, 0.75, 0.5))
    shares = [[math.nan if v is None else v for v in row] for row in cm["normalized"]]
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i, (counts, row) in enumerate(zip(cm["counts"], shares)):
        for j, (count, share) in enumerate(zip(counts, row)):
            text = f"{count}" + ("" if math.isnan(share) else f"\n{format_percent(share)}")
            ax.text(j, i, text, ha="center", va="center", color="white" if share > 0.6 else "#1d2733")
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="Predicted", ylabel="True")
    ax.set_xticklabels(map(_drawn, names))
    ax.set_yticklabels(map(_drawn, names))
    set_title(ax, _drawn(title))
    return fig


def _sized_axes(size: tuple[float, float], margins: tuple[float, float, float, float]) -> tuple[Figure, Axes]:
    """Axes of ``size`` inches with ``margins`` (left, right, bottom, top) around them, room for what is drawn
    outside them (labels, ticks, a title, a legend below): drawn all on the figure, which figure_bytes then cuts
    out of one draw."""
    from matplotlib.figure import Figure

    (width, height), (left, right, bottom, top) = size, margins
    fig = Figure(figsize=(left + width + right, bottom + height + top))
    fig.subplots_adjust(left=left / fig.get_figwidth(), right=1 - right / fig.get_figwidth(),
                        bottom=bottom / fig.get_figheight(), top=1 - top / fig.get_figheight())
    return fig, fig.add_subplot()


def _new_axes(title: str, xlabel: str, ylabel: str, below: float = 0.0, xlim: tuple[float, float] = (-0.02, 1.02),
              ylim: tuple[float, float] = (-0.02, 1.02)) -> tuple[Figure, Axes]:
    """The axes of a curve, the unit square's unless ``xlim`` and ``ylim`` say otherwise, ``below`` inches more
    beneath them for a legend there, which is wider than the axes (two columns of the longest entries: 0.7 inch on
    either side)."""
    beside = 0.85 if below else 0.0
    fig, ax = _sized_axes((3.25, 2.925), (max(0.75, beside), max(0.45, beside), 0.6 + below, 0.5))
    ax.set(xlabel=_drawn(xlabel), ylabel=_drawn(ylabel), xlim=xlim, ylim=ylim)
    set_title(ax, _drawn(title))
    ax.grid(alpha=0.3)
    return fig, ax


def roc_figure(curves: dict[str, dict[str, list]], label_of: dict[str, str], points: dict[str, tuple],
               curve_of_point: dict[str, str] | None = None, title: str = "ROC curve") -> Figure:
    """ROC curves (``curves[key]`` with fpr/tpr lists, labelled ``label_of[key]``) on one axes, with operating
    points as dots (``points[label] = (fpr, tpr)``); a point named in ``curve_of_point`` takes its curve's colour
    and is told apart by it, so the legend lists the curves and only the points of no curve. A legend of more than
    four entries goes beside the axes, where it hides no curve."""
    fig, ax = _new_axes(title, "1 - specificity (false positive rate)", "Sensitivity (true positive rate)")
    ax.plot([0, 1], [0, 1], ls="--", color="#9aa5b1", lw=1)
    colour, shown = {}, []
    for key, curve in curves.items():
        (line,) = ax.plot(curve["fpr"], curve["tpr"], lw=2, label=_drawn(label_of[key]))
        colour[key] = line.get_color()
        shown.append(line)
    for label, (x, y) in points.items():
        key = (curve_of_point or {}).get(label)
        style = {"color": colour[key], "mec": "black"} if key else {}
        (dot,) = ax.plot([x], [y], "o", ms=7, label=_drawn(label), **style)
        if not key:
            shown.append(dot)
    if len(shown) > 4:
        ax.legend(handles=shown, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    else:
        ax.legend(handles=shown, loc="lower right", fontsize=8)
    return fig


def forest_figure(rows: Sequence[tuple[str, dict[str, tuple[float, float | None, float | None] | None]]],
                  figures: Sequence[str], title: str) -> Figure:
    """Figures by subgroup as a forest plot, a panel a figure (``figures``: their names as shown), a line a row
    (``rows``: a label, and each figure's value with its 95% CI's ends, None where the row has none), top to bottom:
    a figure without an interval (too few patients) as an open circle, never a bar that looks precise."""
    height = 0.22 * len(rows)
    fig, first = _sized_axes((1.9 * len(figures) + 0.25 * (len(figures) - 1), height), (2.4, 0.2, 0.8, 0.45))
    axes = [first]
    box = first.get_position()
    width = box.width / (len(figures) + 0.13 * (len(figures) - 1))
    first.set_position((box.x0, box.y0, width, box.height))
    axes += [fig.add_axes((box.x0 + i * 1.13 * width, box.y0, width, box.height), sharey=first)
             for i in range(1, len(figures))]
    y = -np.arange(len(rows), dtype=float)
    for ax, name in zip(axes, figures):
        for (_, entries), at in zip(rows, y):
            if (entry := entries.get(name)) is None:
                continue
            value, low, high = entry
            if low is None or high is None:
                ax.plot([value], [at], "o", mfc="none", mec="black", ms=5)
            else:
                ax.errorbar([value], [at], xerr=[[value - low], [high - value]], fmt="o", color="#1f77b4", ms=4,
                            capsize=2, lw=1)
        ax.set(xlim=(-0.02, 1.02), xlabel=_drawn(name), ylim=(y[-1] - 0.7, 0.7) if len(y) else None)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="y", left=ax is first, labelleft=ax is first)
    first.set_yticks(y, [_drawn(label) for label, _ in rows], fontsize=8)
    fig.text(box.x0, 1 - 0.08 / fig.get_figheight(), _drawn(title), va="top", fontsize=10)
    fig.text(box.x0, 0.1 / fig.get_figheight(), "dots: value with its 95% CI; open circles: too few patients for "
             "a CI", fontsize=7, va="bottom")
    return fig


def _pr_figure(pr: dict[str, list], label: str, prevalence: float, points: dict[str, tuple]) -> Figure:
    fig, ax = _new_axes("Precision-recall curve", "Recall (sensitivity)", "Precision (PPV)")
    ax.axhline(prevalence, ls="--", color="#9aa5b1", lw=1, label=f"prevalence = {prevalence:.2f}")
    ax.plot(pr["recall"], pr["precision"], lw=2, label=label)
    for point_label, (x, y) in points.items():
        ax.plot([x], [y], "o", ms=7, label=point_label)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def _decision_figure(curve: dict[str, list], prevalence: float, at: dict[str, float] | None) -> Figure:
    """The decision curve (:func:`~pneumoscan.core.metrics.net_benefit`): the model's net benefit over the threshold
    probabilities with its 95% interval as a band (none where a point has none), with treat-all's and treat-none's,
    and the bundle's threshold as a dot on the model's curve. Net benefit is at most the prevalence, and below a
    little under 0 a strategy is worse than none, as the curves of Vickers and Elkin show it: the axes span that, so
    that treat-all's fall towards -infinity (and a band's, where few false positives weigh much) does not flatten the
    rest. The legend goes below the axes, where it covers no curve."""
    top = max(prevalence, 0.05) * 1.1
    fig, ax = _new_axes("Decision curve", "Threshold probability", "Net benefit", below=0.5,
                        xlim=(curve["threshold"][0], curve["threshold"][-1]), ylim=(-0.1 * top - 0.02, top))
    points = dict(zip(curve["threshold"], curve["net_benefit"]))
    if at is not None and curve["threshold"][0] <= at["threshold"] <= curve["threshold"][-1]:
        points[at["threshold"]] = at["net_benefit"]  # the dot on its curve, which scores between two steps can jump
    line, = ax.plot(sorted(points), [points[t] for t in sorted(points)], lw=2, label="model")
    if "net_benefit_low" in curve:  # a result without intervals (written before they were given) draws none
        _band(ax, curve["threshold"], curve["net_benefit_low"], curve["net_benefit_high"], line.get_color(),
              "model, 95% CI")
    ax.plot(curve["threshold"], curve["treat_all"], ls="--", color="#9aa5b1", lw=1.5, label="treat all")
    ax.plot(curve["threshold"], curve["treat_none"], color="#1d2733", lw=1, label="treat none")
    if at is not None:
        ax.plot([at["threshold"]], [at["net_benefit"]], "o", ms=7, mec="black",
                label=f"bundle threshold {at['threshold']:.{THRESHOLD_DIGITS}f}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, fontsize=8, frameon=False)
    return fig


def _band(ax: Axes, x: Sequence[float], low: Sequence[float | None], high: Sequence[float | None], colour: str,
          label: str | None = None) -> None:
    """A curve's pointwise 95% CI as a band in its colour, left open where a point has none (None or NaN)."""
    low_, high_ = (np.array([np.nan if v is None else v for v in ends], float) for ends in (low, high))
    known = np.isfinite(low_) & np.isfinite(high_)
    ax.fill_between(x, np.where(known, low_, 0), np.where(known, high_, 0), where=known, color=colour, alpha=0.2,
                    lw=0, label=label)


class Curve(NamedTuple):
    """A curve over threshold probabilities as :func:`decision_curves_figure` draws it: its legend entry, colour,
    points and pointwise 95% CI (``low`` and ``high`` None where it has none: an evaluation written before
    intervals were given; an end None where a point has none)."""

    label: str
    colour: str
    threshold: Sequence[float]
    value: Sequence[float]
    low: Sequence[float | None] | None = None
    high: Sequence[float | None] | None = None


def decision_curves_figure(curves: Sequence[Curve], treat_all: Sequence[Curve], differences: Sequence[Curve],
                           notes: Sequence[str], title: str, difference_title: str) -> Figure:
    """Several runs' decision curves on one axes, each with its band, beside treat all (one line for each
    prevalence ``treat_all`` names) and treat none, and where ``differences`` are given a second panel of them
    (each a run's net benefit less the reference's, with its pointwise band) about 0, where the runs do alike.
    ``notes`` go into the first panel's legend (the runs without a curve). As in the report's decision curve
    (:func:`_decision_figure`), the net benefit axis spans from a little under 0 to a little over
    the highest net benefit drawn, so that treat all's fall towards -infinity does not flatten the rest; the
    difference panel spans the differences and their bands, but never more than that either side of 0: at high
    thresholds, where a false positive weighs much, bands widen fast, and are cut where they leave it."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    panels = 2 if differences else 1
    entries = max(len(curves) + len(treat_all) + 1 + len(notes), len(differences) + 2)
    below = 0.3 + 0.17 * entries  # the legends, a line an entry, beneath their panels
    width, height, gap, left, right, bottom, top_margin = 3.6, 2.925, 1.0, 0.75, 0.8, 0.6 + below, 0.5
    from matplotlib.figure import Figure

    fig = Figure(figsize=(left + panels * width + (panels - 1) * gap + right, bottom + height + top_margin))
    size = fig.get_size_inches()
    axes = [fig.add_axes(((left + i * (width + gap)) / size[0], bottom / size[1], width / size[0],
                          height / size[1])) for i in range(panels)]
    ax = axes[0]
    drawn = [v for c in (*curves, *treat_all) for v in c.value]
    top = max(0.05, *drawn) * 1.1
    low_end = min((c.threshold[0] for c in (*curves, *treat_all)), default=0.01)
    high_end = max((c.threshold[-1] for c in (*curves, *treat_all)), default=0.99)
    for c in curves:
        ax.plot(c.threshold, c.value, lw=2, color=c.colour, label=_drawn(c.label))
        if c.low is not None and c.high is not None:
            _band(ax, c.threshold, c.low, c.high, c.colour)
    for c, dashes in zip(treat_all, [(4, 2), (1, 1), (6, 2, 1, 2), (2, 2)] * len(treat_all)):
        ax.plot(c.threshold, c.value, color=c.colour, lw=1.5, dashes=dashes, label=_drawn(c.label))
    ax.plot([low_end, high_end], [0, 0], color="#1d2733", lw=1, label="treat none")
    handles = ax.get_legend_handles_labels()[0]
    if any(c.low is not None for c in curves):
        handles.append(Patch(color="#52606d", alpha=0.2, lw=0, label="95% CI of each run's net benefit"))
    handles += [Line2D([], [], ls="none", label=_drawn(note)) for note in notes]
    ax.set(xlim=(low_end, high_end), ylim=(-0.1 * top - 0.02, top), xlabel="Threshold probability",
           ylabel="Net benefit")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.17), fontsize=8, frameon=False)
    set_title(ax, _drawn(title))
    if differences:
        ax = axes[1]
        ends = np.array([v for c in differences for values in (c.value, c.low or (), c.high or ()) for v in values
                         if v is not None], float)
        span = min(1.1 * top + 0.02, max(0.02, 1.2 * np.abs(ends[np.isfinite(ends)]).max(initial=0)))
        ax.axhline(0, color="#1d2733", lw=1, label="no difference")
        for c in differences:
            ax.plot(c.threshold, c.value, lw=2, color=c.colour, label=_drawn(c.label))
            if c.low is not None and c.high is not None:
                _band(ax, c.threshold, c.low, c.high, c.colour)
        handles = ax.get_legend_handles_labels()[0]
        if any(c.low is not None for c in differences):
            handles.append(Patch(color="#52606d", alpha=0.2, lw=0,
                                 label="pointwise 95% CI at each threshold (not a simultaneous band)"))
        ax.set(xlim=(low_end, high_end), ylim=(-span, span), xlabel="Threshold probability",
               ylabel="Net benefit difference")
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.17), fontsize=8, frameon=False)
        set_title(ax, _drawn(difference_title))
    return fig


def _decision_html(m: dict[str, Any], pos: str, pngs: dict[str, bytes] | None) -> str:
    """The decision curve with its text alternative (the net benefits at the bundle's threshold)."""
    curve, at = m["decision_curve"], m.get("net_benefit")
    low, high = curve["threshold"][0], curve["threshold"][-1]
    said = (f" At the bundle's threshold {_fmt(at['threshold'], 'threshold')}: net benefit "
            f"{at['net_benefit']:.3f} ({net_benefit_interval(at.get('ci'))}), treat all {at['treat_all']:.3f}, "
            "treat none 0."
            if at else "")
    alt = (f"Decision curve of calling {pos} at threshold probabilities {low:.2f} to {high:.2f}: the model's net "
           f"benefit, with its 95% CI as a band, against treating all and none.{said} decision_curve.csv lists every "
           "point with its interval.")
    return _figure_html(_decision_figure(curve, m["prevalence"], at),
                        "Decision curve: net benefit of the model, of treating all and of treating none.", alt, pngs,
                        "decision_curve")


def _at_threshold(at: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json's ``net_benefit`` as a block :func:`_value_cell` reads: its figure and its
    interval (none in a result written before intervals were given)."""
    return {"net_benefit": at.get("net_benefit"), "ci": {"net_benefit": at.get("ci")}}


NET_BENEFIT_INTERVAL = ("its 95% CI is a BCa bootstrap of the patients (all films of a patient resampled together; "
                        "of the films within their class where no patient has two), widened to hold it over the exact "
                        "interval of a sensitivity or specificity of 0 or 1, or, where every resample gives one "
                        f"value or the positive films are fewer than {FEW_PATIENTS} patients', the Bonferroni bound "
                        "from their exact intervals and the prevalence's at 98.3% each")


def decision_note(m: Mapping[str, Any], pos: str) -> str:
    """What a decision curve's net benefit is and that it holds at the films' prevalence: a curated set's is not a
    clinic's, and the clinic's is recomputed from decision_curve.csv's sensitivity and specificity."""
    points = m["decision_curve"]["threshold"]
    return (f"Decision curve (Vickers & Elkin 2006): net benefit = TP/n - FP/n × pt/(1 - pt) of calling {pos} the "
            f"films whose probability is at least the threshold probability pt, for pt from "
            f"{format_percent(points[0])} to {format_percent(points[-1])}, against calling every film "
            f"{pos} (treat all) and none (treat none: 0); pt/(1 - pt) is the harm of a false positive that a clinician "
            f"acting at pt accepts for one true positive. The band is the model's net benefit's 95% CI at each pt: "
            f"{NET_BENEFIT_INTERVAL}; resampled patients carry this set's prevalence with them, so it holds for "
            f"patients drawn as these were. Net benefit holds at this set's prevalence of "
            f"{format_percent(m['prevalence'])} ({pos} films): where that is not the prevalence of the patients the "
            "model will read (a curated or enriched dataset), a clinic sees other net benefits. Measure it on films "
            "at the clinic's prevalence (consecutive patients), or recompute each row of decision_curve.csv at the "
            "clinic's prevalence p as sensitivity × p - (1 - specificity) × (1 - p) × pt/(1 - pt). Read the curve "
            "only over the threshold probabilities a clinician would act at.")


_SPARSE_BIN = 10  # a bin of fewer films has an observed frequency too uncertain to read without its interval
_FULL_BAR = 0.9  # the share of films above which a bar's count is written inside its top, under the title


class _Bin(NamedTuple):
    """A bin of films: what the reliability diagram draws and its table lists."""

    lo: float
    hi: float
    predicted: float  # the films' mean predicted probability
    observed: float  # their observed frequency
    films: int
    ci: tuple[float, float]  # the observed frequency's exact 95% interval (Clopper-Pearson, films)


def _filled_bins(cal: dict[str, Any]) -> list[_Bin]:
    """The calibration's bins that hold films."""
    edges = cal["bin_edges"]
    return [_Bin(lo, hi, p, o, c, clopper_pearson(round(o * c), c)) for lo, hi, p, o, c in zip(
        edges, edges[1:], cal["mean_predicted"], cal["observed_frequency"], cal["counts"]) if c]


def _reliability_figure(cal: dict[str, Any], xlabel: str) -> Figure:
    """Observed frequency per bin of predicted probability with its exact 95% interval (Clopper-Pearson, films)
    and its number of films written on its bar, lest a bin of 3 films read as firmly as one of 300; bins of fewer
    than _SPARSE_BIN films are hollow. The legend goes below the axes, where it covers no point."""
    fig, ax = _new_axes(f"Reliability (ECE = {_fmt(cal['ece'])})", xlabel, "Observed frequency", below=0.5)
    ax.plot([0, 1], [0, 1], ls="--", color="#9aa5b1", lw=1, label="perfect calibration")
    filled = _filled_bins(cal)
    if filled:
        errors = [[b.observed - b.ci[0] for b in filled], [b.ci[1] - b.observed for b in filled]]
        bars = ax.errorbar([b.predicted for b in filled], [b.observed for b in filled], yerr=errors, fmt="o-",
                           lw=2, capsize=3, label="model, 95% CI (Clopper-Pearson)")
        sparse = [(b.predicted, b.observed) for b in filled if b.films < _SPARSE_BIN]
        if sparse:
            # above the errorbar's own filled markers, which matplotlib draws over a plot of the same z-order
            ax.plot(*zip(*sparse), "o", mfc="white", color=bars.lines[0].get_color(), zorder=3,
                    label=f"bin of fewer than {_SPARSE_BIN} films")
    edges = cal["bin_edges"]
    total = max(sum(cal["counts"]), 1)
    shares = [c / total for c in cal["counts"]]
    ax.bar(edges[:-1], shares, width=edges[1] - edges[0], align="edge", color="#0b3c5d", alpha=0.15,
           label="share of films (count on the bar)")
    for left, share, count in zip(edges, shares, cal["counts"]):
        if count:  # above its bar; inside the top of one of nearly every film, whose count above stood in the title
            top = share > _FULL_BAR
            ax.text(left + (edges[1] - edges[0]) / 2, share + (-0.01 if top else 0.01), str(count), ha="center",
                    va="top" if top else "bottom", fontsize=7, color="#0b3c5d")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, fontsize=8, frameon=False)
    return fig


def _reliability_html(cal: dict[str, Any], xlabel: str, caption: str, pngs: dict[str, bytes] | None) -> str:
    """The reliability diagram with a caption that says how far to trust its bins, and its bins' figures as a table
    (:func:`_reliability_table`), which its short text alternative points to."""
    sparse = sum(0 < c < _SPARSE_BIN for c in cal["counts"])
    caption += (" 95% CIs by film (Clopper-Pearson); the number on each bar counts its films."
                + (f" {sparse} bin(s) hold fewer than {_SPARSE_BIN} films (hollow): their observed frequency is "
                   "uncertain, as their intervals show." if sparse else ""))
    filled, of = _filled_bins(cal), xlabel[:1].lower() + xlabel[1:]
    alt = (f"Reliability diagram of {of}: ECE {_fmt(cal['ece'])}, {sum(cal['counts'])} films in {len(filled)} bins, "
           "listed in the table that follows.")
    return (_figure_html(_reliability_figure(cal, xlabel), caption, alt, pngs, "reliability")
            + _reliability_table(filled, of))


def _reliability_table(filled: list[_Bin], of: str) -> str:
    """The reliability diagram's numbers, bin by bin (:func:`_filled_bins`), for every reader: a table read by a
    screen reader cell by cell, where the same figures in the image's text alternative were one 700-character
    sentence, and on paper, where a point's interval cannot be read off the picture to three decimals."""
    rows = "".join(
        f'<tr><th>{lo:.2f}–{hi:.2f}</th><td class="num">{c}</td><td class="num">{_fmt(p)}</td>'
        f'<td class="num">{_fmt(o)} <span class="ci">(95% CI {_fmt(ci_lo)}–{_fmt(ci_hi)})</span></td></tr>'
        for lo, hi, p, o, c, (ci_lo, ci_hi) in filled)
    return (f'<div class="block"><table><caption>Reliability diagram&#x27;s bins of {_esc(of)}. 95% CIs count films '
            "(Clopper-Pearson).</caption><thead><tr><th>Bin</th><th>Films</th><th>Mean predicted</th>"
            f"<th>Observed frequency</th></tr></thead><tbody>{rows}</tbody></table></div>")


def _binary_body(m: dict[str, Any], pngs: dict[str, bytes] | None = None) -> str:
    """A binary result's part of the report: its figures and confusion matrix at the bundle's threshold beside
    the same at 0.5 (the default a reader compares against), its curves, and its threshold table if it has one;
    the figures it defines put in ``pngs`` when given."""
    neg, pos = m.get("class_names", ("negative", "positive"))
    low = m["at_0_5"]
    absent = one_class(m, (neg, pos))
    at_bundle = f"At bundle threshold {_fmt(m['threshold'], 'threshold')}"
    at_low = f"At threshold {_fmt(low['threshold'], 'threshold')}"
    parts = [
        _binary_summary(m, (neg, pos), absent, at_bundle, at_low),
        '<h2>Confusion matrices</h2><div class="row">',
        _confusion_table(m["confusion_matrix"], (neg, pos), at_bundle),
        _confusion_table(low["confusion_matrix"], (neg, pos), at_low),
        '</div><h2>Curves</h2><div class="row">',
        _binary_curves(m, pos, pngs),
        "</div>",
        f'<p class="note">{_esc(decision_note(m, pos))}</p>' if m.get("decision_curve") else "",
    ]
    if pngs is not None:
        title = f"At threshold {_fmt(m['threshold'], 'threshold')}"
        pngs["confusion_matrix"] = figure_bytes(_confusion_figure(m["confusion_matrix"], (neg, pos), title),
                                                tight=True)
    if m.get("threshold_table"):
        parts.append(_threshold_table_html(m["threshold_table"], absent))
    return "".join(parts)


def _binary_summary(m: dict[str, Any], names: tuple[str, str], absent: str | None, at_bundle: str,
                    at_low: str) -> str:
    """The summary: which class is positive, the films of each, every figure with its CI in a column per
    threshold, and the note that marks (†) the figures the test set's prevalence sets, which a population with
    another prevalence would not see."""
    neg, pos = names
    low = m["at_0_5"]
    head = f"<tr><th>Metric</th><th>{at_bundle}</th><th>{at_low}</th></tr>"
    rows = "".join(
        f"<tr><th>{label}{' †' if key in PREVALENCE_BOUND and not absent else ''}</th>"
        f"{_value_cell(m, key, absent)}{_value_cell(low, key, absent)}</tr>" for key, label in _BINARY_ROWS
    )
    return "".join([
        "<h2>Summary</h2>",
        (
            f'<p class="note">Positive class: <b>{_esc(pos)}</b> (called positive when P({_esc(pos)}) &ge; threshold). '
            f"n = {_esc(film_counts(m, (neg, pos)))}. "
            + ci_note(m, "sensitivity, specificity, precision, NPV and accuracy", ("auc", "f1"), "auc", "AUC")
            + "</p>"
        ),
        f"<table>{_ci_caption(m, 'Summary')}<thead>{head}</thead><tbody>{rows}</tbody></table>",
        "" if absent else f'<p class="note">{_esc(prevalence_note(m["prevalence"], pos, "† "))}'
                          + (" The next table gives them at the prevalences asked for." if m.get("at_prevalence")
                             else "") + "</p>",
        _at_prevalence_html(m, pos),
    ])  # fmt: skip


def _at_prevalence_html(m: dict[str, Any], pos: str) -> str:
    """The binary decision's precision, NPV, accuracy and net benefit at the bundle's threshold recomputed at each
    prevalence asked for (metrics.json's ``at_prevalence``), beside the set's own, with what they assume."""
    if not (block := m.get("at_prevalence")):
        return ""
    keys = (("precision", "Precision (PPV)"), ("npv", "NPV"), ("accuracy", "Accuracy"),
            ("net_benefit", "Net benefit"))
    head = "<tr><th>Prevalence</th>" + "".join(f"<th>{label}</th>" for _, label in keys) + "</tr>"

    def row(label: str, figures: dict[str, Any]) -> str:
        return f"<tr><th>{label}</th>" + "".join(_value_cell(figures, key) for key, _ in keys) + "</tr>"

    at = _at_threshold(m.get("net_benefit") or {})
    own = row(f"{_esc(format_percent(m['prevalence']))} (this set)",
              m | at | {"ci": m.get("ci", {}) | at["ci"]})
    rows = "".join(row(_esc(format_percent(b["prevalence"])), b) for b in block["figures"])
    return "".join([
        f"<h2>At a clinic's prevalence of {_esc(pos)}</h2>",
        f"<table><caption>At bundle threshold {_fmt(m['threshold'], 'threshold')}, recomputed from sensitivity "
        f"{_fmt(block['sensitivity'], 'sensitivity')} and specificity {_fmt(block['specificity'], 'specificity')}"
        f".</caption><thead>{head}</thead><tbody>{own}{rows}</tbody></table>",
        f'<p class="note">{_esc(at_prevalence_note(pos))} decision_curve.csv gives the net benefit and treat all '
        "at each prevalence over every threshold probability.</p>",
    ])


def _binary_curves(m: dict[str, Any], pos: str, pngs: dict[str, bytes] | None) -> str:
    """The ROC and precision-recall curves with both operating points marked (a note instead where only one class
    is present, which defines neither), and the reliability diagram of P(``pos``)."""
    curves, low = m["curves"], m["at_0_5"]
    parts: list[str] = []
    if curves["roc"]["fpr"]:
        roc_points = {
            f"t = {_fmt(b['threshold'], 'threshold')}": (1 - b["specificity"], b["sensitivity"]) for b in (m, low)
        }
        pr_points = {
            f"t = {_fmt(b['threshold'], 'threshold')}": (b["sensitivity"], b["precision"])
            for b in (m, low)
            if b["precision"] is not None
        }
        at = [f"threshold {_fmt(b['threshold'], 'threshold')}" for b in (m, low)]
        roc_alt = (f"ROC curve of P({pos}): AUC {_with_ci(m, 'auc')}. Operating points: " + "; ".join(
            f"at {t}, sensitivity {_fmt(b['sensitivity'], 'sensitivity')} and specificity "
            f"{_fmt(b['specificity'], 'specificity')}" for t, b in zip(at, (m, low))) + ".")
        pr_alt = (f"Precision-recall curve of P({pos}): PR AUC {_fmt(m['pr_auc'])}; a classifier without skill lies "
                  f"at the prevalence, {m['prevalence']:.2f}." + "".join(
                      f" At {t}, precision {_fmt(b['precision'], 'precision')} and recall "
                      f"{_fmt(b['sensitivity'], 'sensitivity')}." for t, b in zip(at, (m, low))
                      if b["precision"] is not None))
        parts.append(
            _figure_html(
                roc_figure({"roc": curves["roc"]}, {"roc": f"AUC = {_fmt(m['auc'])}"}, roc_points),
                "ROC curve; dots mark the operating points.", roc_alt, pngs, "roc",
            )
        )
        parts.append(
            _figure_html(
                _pr_figure(curves["pr"], f"PR AUC = {_fmt(m['pr_auc'])}", m["prevalence"], pr_points),
                "Precision-recall curve; dashed line = a classifier without skill.", pr_alt, pngs, "pr",
            )
        )
    else:
        parts.append('<p class="note">ROC and PR curves are undefined: only one class is present.</p>')
    parts.append(_reliability_html(curves["calibration"], f"Predicted P({pos})",
                                   "Reliability diagram: observed frequency per bin of predicted probability.", pngs))
    if m.get("decision_curve"):  # evaluate's: a training run's validation report has none
        parts.append(_decision_html(m, pos, pngs))
    return "".join(parts)


def _threshold_table_html(rows: list[dict[str, Any]], absent: str | None) -> str:
    """Sensitivity and specificity over a range of thresholds, for choosing an operating point (precision and NPV
    n/a on films of one class, as in the summary)."""
    cells = "".join(
        f"<tr><td>{_esc(r['rule'])}</td><td class=\"num\">{_fmt(r['threshold'], 'threshold')}</td>"
        + "".join(f'<td class="num">{"n/a" if absent and k in BOTH_CLASSES else _fmt(r[k], k)}</td>'
                  for k in ("sensitivity", "specificity", "precision", "npv"))
        + "".join(f'<td class="num">{r[k]}</td>' for k in ("tp", "fp", "tn", "fn")) + "</tr>"
        for r in rows
    )
    return (
        "<h2>Sensitivity and specificity by threshold</h2><p class=\"note\">Figures on these images; a threshold "
        "picked from this table and judged on the same images is optimistic (pneumoscan threshold).</p>"
        "<table><caption>Sensitivity and specificity by threshold, with the films of each count.</caption>"
        "<thead><tr><th>Rule</th><th>Threshold</th><th>Sensitivity</th><th>Specificity</th><th>Precision</th>"
        f"<th>NPV</th><th>TP</th><th>FP</th><th>TN</th><th>FN</th></tr></thead><tbody>{cells}</tbody></table>"
        + (f'<p class="note">Precision and NPV are n/a: there are no {_esc(absent)} films, and they depend on both '
           'classes.</p>'
           if absent else "")
    )


def _gallery_html(gallery: dict[str, list[tuple[bytes, str]]]) -> str:
    """Titled rows of thumbnails (PNG bytes, caption), e.g. the most confident errors: a caption's first line names
    the picture (its text alternative, "Film ..."), a second one (an overlay's words) is shown beneath it."""
    parts = ['<h2>Most confident errors</h2><p class="note">A Grad-CAM overlay shows the film, its map (viridis: dark '
             "purple for no evidence, yellow for the top of the scale its caption names) and the two blended.</p>"]
    for title, items in gallery.items():
        parts.append(f"<h3>{_esc(title)}</h3>")
        if not items:
            parts.append('<p class="note">None.</p>')
            continue
        parts.append('<div class="gallery">' + "".join(_thumbnail_html(png, caption) for png, caption in items)
                     + "</div>")
    return "".join(parts)


def _thumbnail_html(png: bytes, caption: str) -> str:
    """A gallery's picture (:func:`_gallery_html`): its caption's first line, then its second beneath."""
    name, _, said = caption.partition("\n")
    return _image_html(png, name, f"Film {name}", said)


def _multiclass_body(m: dict[str, Any], section: str = "", pngs: dict[str, bytes] | None = None) -> str:
    names = m["class_names"]
    rows = "".join(f"<tr><th>{label}</th>{_value_cell(m, key)}</tr>" for key, label in _MULTICLASS_ROWS)
    per_class = "".join(
        f"<tr><th>{_esc(name)}</th>"
        + "".join(_value_cell(c, k) for k in ("auc", "sensitivity", "precision", "f1"))
        + f'<td class="num">{c["support"]}</td></tr>'
        for name, c in m["per_class"].items()
    )
    decision = m.get("decision", "most probable class")
    if pngs is not None:
        pngs["confusion_matrix"] = figure_bytes(_confusion_figure(m["confusion_matrix"], names, decision.capitalize()),
                                                tight=True)
    curves = m["curves"]
    roc = {name: curve for name, curve in curves["roc"].items() if curve["fpr"]}
    labels = {name: f"{name} (AUC = {_fmt(m['per_class'][name]['auc'])})" for name in roc}
    return "".join(
        [
            f"<h2>{section}Summary</h2>",
            (
                f'<p class="note">n = {_esc(class_counts(m))}; decision = {_esc(decision)}. '
                + ci_note(m, "accuracy", ("balanced_accuracy", "macro_auc"), "macro_auc", "macro AUC") + "</p>"
            ),
            (f"<table>{_ci_caption(m, f'{section}Summary')}<thead><tr><th>Metric</th><th>Value</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>"),
            (
                f"<h2>{section}Per class</h2><table><caption>{section}Per-class figures. No 95% "
                "CIs: per-class figures are point estimates, and on a class of few films they can be far from the "
                "truth.</caption><thead><tr><th>Class</th><th>ROC AUC (one vs "
                "rest)</th><th>Sensitivity (recall)</th><th>Precision</th><th>F1</th><th>Films</th></tr></thead>"
                f"<tbody>{per_class}</tbody></table>"
            ),
            f'<h2>{section}Confusion matrix</h2><div class="row">',
            _confusion_table(m["confusion_matrix"], names, decision.capitalize()),
            f'</div><h2>{section}Curves</h2><div class="row">',
            _figure_html(roc_figure(roc, labels, {}), "One-vs-rest ROC curve per class.",
                         "One-vs-rest ROC curves: " + ", ".join(f"{name} AUC {_fmt(m['per_class'][name]['auc'])}"
                                                                for name in roc)
                         + f"; macro AUC {_with_ci(m, 'macro_auc')}.", pngs, "roc") if roc else "",
            _reliability_html(curves["calibration"], "Confidence (probability of the decided class)",
                              "Reliability diagram of the decided class: accuracy per bin of confidence.", pngs),
            "</div>",
            _subgroups_html(m.get("subgroups"), m.get("ci_unit"), section, f"of the decision ({decision})"),
        ]
    )


def _subgroups_html(block: dict[str, Any] | None, ci_unit: str | None, section: str = "", of: str = "") -> str:
    """``evaluate --by``'s tables (:func:`~.subgroups.subgroup_figures`), one a field, each named by its caption: the
    field, the threshold (the bundle's, the whole set's) or the decision its figures are at, what the intervals
    count (``ci_unit``: that of the evaluation they are part of; none: films) and what a figure of too few patients
    says instead of a rate."""
    if not block:
        return ""
    at = f"at the bundle threshold {_fmt(block['threshold'], 'threshold')}" if "threshold" in block else of
    parts = [f"<h2>{section}Figures by subgroup</h2>",
             f'<p class="note">Each group&#x27;s figures on its films alone, {_esc(at)}, with 95% CIs that count '
             f"{ci_unit or 'film'}s; a figure of fewer than {block['smallest']} patients gives its films counted and "
             "no interval. "
             "A group&#x27;s figures differ from the whole set&#x27;s by chance too: compare their intervals.</p>"]
    if block.get("differences"):
        parts.append(f'<p class="note">{_esc(DIFFERENCES_NOTE)}</p>')
    for field, groups in block["fields"].items():
        head, rows = table_rows(groups)
        parts.append(
            f"<table><caption>{_esc(section)}Figures by {_esc(field)}, {_esc(at)}.</caption><thead><tr>"
            + "".join(f'<th scope="col">{_esc(name[:1].upper() + name[1:])}</th>' for name in head)
            + "</tr></thead><tbody>"
            + "".join(f'<tr><th scope="row">{_esc(row[0])}</th>'
                      + "".join(f'<td class="num">{_esc(cell)}</td>' for cell in row[1:]) + "</tr>" for row in rows)
            + "</tbody></table>")
        if said := differences_said(block, field):
            parts.append(f'<p class="note">{_esc(said)}</p>')
    return "".join(parts)


# the figures a report writes as files
_FIGURE_NAMES = ("confusion_matrix", "roc", "pr", "reliability", "decision_curve")
# parts of a binary result decided among three classes: (key, section title, figure file prefix)
_CLASS_PARTS = (("multiclass", "All classes: ", "classes_"), ("two_stage", "Two stages: ", "two_stage_"))
# every figure write_report may write beside the report, by its file's name without .png
_FIGURES = tuple(f"{prefix}{name}" for prefix in ("", *(p for _, _, p in _CLASS_PARTS)) for name in _FIGURE_NAMES)


def report_files(out_dir: Path | str) -> list[Path]:
    """The files :func:`write_report` writes into ``out_dir`` with its figures, those the data may not define
    included: what a run writing its report there clears of an earlier one's first, so that a run failing part-way
    leaves none of that report beside its own new files."""
    return [Path(out_dir) / name for name in (METRICS, REPORT, *(f"{figure}.png" for figure in _FIGURES))]


def write_report(
    metrics: dict[str, Any], out_dir: Path, title: str, subtitle: str = "", extra: dict[str, Any] | None = None,
    figures: bool = False, gallery: dict[str, list[tuple[bytes, str]]] | None = None,
    beside: dict[str, str] | None = None,
) -> Path:
    """Write ``out_dir/metrics.json`` and a self-contained ``out_dir/report.html`` for an evaluate_binary or
    evaluate_multiclass result; ``extra`` is shown as a key/value header table. A binary result carrying an
    evaluate_multiclass block under ``multiclass`` (the 3-class task) or ``two_stage`` (a pneumonia bundle followed
    by an etiology bundle) gets that block as a further part, and a ``threshold_table`` list becomes a table. With
    ``figures``, the main figures are also written beside the report (confusion_matrix.png, roc.png, pr.png,
    reliability.png, decision_curve.png: those the data defines and the result holds; a further part's as
    classes_*.png or two_stage_*.png: confusion_matrix, roc, reliability); ``gallery`` adds titled rows of
    thumbnails; ``beside`` links the files written beside the report (each name with what it holds) that a reader
    would not find otherwise (methods.md). The header's
    :data:`MODEL_ID` (which bundle) is printed on every page beside the title. Returns the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = jsonable(metrics)
    write_json(out_dir / METRICS, metrics)
    pngs: dict[str, bytes] | None = {} if figures else None
    if metrics.get("kind") == "multiclass":
        body = _multiclass_body(metrics, pngs=pngs)
    else:
        body = _binary_body(metrics, pngs) + _subgroups_html(metrics.get("subgroups"), metrics.get("ci_unit"))
        for key, section, prefix in _CLASS_PARTS:
            if metrics.get(key):
                part_pngs: dict[str, bytes] = {}
                body += _multiclass_body(metrics[key], section, part_pngs if pngs is not None else None)
                if pngs is not None:
                    pngs.update({f"{prefix}{name}": png for name, png in part_pngs.items()})
    if gallery:
        body += _gallery_html(gallery)
    if pngs is not None:  # a figure this data does not define must not survive from an earlier report here
        for stale in set(_FIGURES) - set(pngs):
            (out_dir / f"{stale}.png").unlink(missing_ok=True)
    for name, png in (pngs or {}).items():
        write_atomic(out_dir / f"{name}.png", png)
    generated = f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by pneumoscan"
    running = f"{MODEL_ID} {extra[MODEL_ID]}" if extra and MODEL_ID in extra else ""
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}{_page_css(title, generated, running)}</style></head><body><main><h1>{_esc(title)}</h1>"
        + (f'<p class="subtitle">{_esc(subtitle)}</p>' if subtitle else "")
        + f'<p class="note">{generated}. {_RESEARCH_USE}</p>'
        + (_meta_table(extra) if extra else "")
        + "".join(f'<p class="note">Beside this report: <a href="{_esc(name)}">{_esc(name)}</a>, {_esc(what)}.</p>'
                  for name, what in (beside or {}).items())
        + _optimistic_html(metrics)
        + body
        + "</main></body></html>"
    )
    return write_atomic(out_dir / REPORT, page.encode("utf-8"))


def not_independent(metrics: Mapping[str, Any]) -> list[tuple[str, str, list[str]]]:
    """The held-out check's warnings (:func:`pneumoscan.evaluation.held_out.check_held_out`) of an evaluation's
    ``metrics``, each kind with its title, for every text of it to say: (kind, title, texts) of the ``optimistic``
    ones (films the model trained on, or that chose its threshold) and of the ``unchecked`` ones (sources whose
    training films the check could not see), those it has."""
    return [(kind, title, texts) for kind, title in (("optimistic", "Not an independent evaluation."),
                                                     ("unchecked", "Not checked to be independent."))
            if (texts := metrics.get(kind))]


def _optimistic_html(metrics: dict[str, Any]) -> str:
    """The held-out check's warnings (:func:`not_independent`) above every figure: a report read after the terminal
    is closed must not pass for an independent evaluation; nor for a checked one where the check could not see a
    source's training films."""
    return "".join(f'<div class="{kind}"><b>{title}</b><ul>{"".join(f"<li>{_esc(t)}</li>" for t in texts)}</ul></div>'
                   for kind, title, texts in not_independent(metrics))
