"""Figures as a report, a log line or metrics.json shows them: never rounded up to a perfect 1.000 (or
100.0%), "n/a" when undefined, an interval beside its value, NaN as JSON null. No scipy or scikit-learn, so
predicting and serving can use them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..names import json_ready


def jsonable(obj: Any) -> Any:
    """A tree of figures for json.dumps (:func:`~pneumoscan.core.names.json_ready`: numpy as Python, strings valid
    UTF-8), an undefined figure (NaN, an infinity) as None."""
    return json_ready(obj, undefined_as_null=True)


def short_of_one(value: float, digits: int) -> float:
    """``value`` as it may be shown at ``digits`` decimals: one that is not 1 but would round to it is cut down
    (0.9996 -> 0.999), so a sensitivity that missed a film never reads as a perfect 1.000 (or 100.0%)."""
    return math.floor(value * 10**digits) / 10**digits if value < 1 <= round(value, digits) else value


def format_figure(value: float | None, digits: int = 3) -> str:
    """A figure for a table or a log line: ``digits`` decimals (:func:`short_of_one`), "n/a" when undefined (None
    or NaN)."""
    return "n/a" if value is None or math.isnan(value) else f"{short_of_one(value, digits):.{digits}f}"


def figure_beside(value: float, threshold: float, digits: int = 3) -> str:
    """A probability ``value`` called at ``threshold``, for a place that shows that threshold at ``digits`` decimals:
    at those decimals where they tell the two apart, else at the fewest that do, with the threshold beside it at as
    many (``0.46258, threshold 0.46260``). A false negative of 0.46258 read "P = 0.463" under a report's threshold of
    0.4626, past it; rounding keeps their order, so told apart, each shows on its own side of the other. The web
    page's probabilityText is the same rule."""
    shown = format_figure(value, digits)
    if value == threshold or shown != format_figure(threshold, digits):
        return shown
    while digits < 20 and format_figure(value, digits) == format_figure(threshold, digits):
        digits += 1
    return f"{format_figure(value, digits)}, threshold {format_figure(threshold, digits)}"


def format_percent(share: float) -> str:
    """A share as a percentage at one decimal, never rounded up to 100.0% (:func:`short_of_one`)."""
    return f"{100 * short_of_one(share, 3):.1f}%"


def with_ci(value: float | None, ci: Sequence[float | None] | None, digits: int = 3) -> str:
    """``0.912 (95% CI 0.880-0.940)`` for plain text, the bounds at the value's decimals; a defined figure without
    an interval says so, lest the bare value read as certain."""
    lo, hi = ci or (None, None)
    if lo is not None and hi is not None:
        return f"{format_figure(value, digits)} (95% CI {format_figure(lo, digits)}-{format_figure(hi, digits)})"
    return format_figure(value, digits) + (" (no 95% CI)" if value is not None and not math.isnan(value) else "")


def net_benefit_interval(ci: Sequence[float | None] | None) -> str:
    """A net benefit's 95% CI in plain text, "95% CI -0.040 to 0.120", or "no 95% CI": "to" between the ends, as
    a dash beside a negative end reads as a minus ("-0.040--0.010"). The one wording of a net benefit's interval in
    reports, model cards, methods and compare."""
    low, high = ci or (None, None)
    return f"95% CI {low:.3f} to {high:.3f}" if low is not None and high is not None else "no 95% CI"
