"""Class probabilities from logits, their temperature scaling (fitted on validation logits), and how well
they are calibrated (the reliability diagram and its expected calibration error)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .inputs import _as_binary, _as_multiclass, _ratio
from .intervals import ALPHA, BOOTSTRAP_SEED

TEMPERATURE_BOUNDS = (0.05, 20.0)  # a fitted T outside this range means the model or the data is broken
ECE_BINS = 10  # the reliability diagram's bins, over which every recorded ECE is measured
# how far, on average over the films, calibrated probabilities may be from how often their films are positive before
# a card says they are not calibrated (BundleCard.calibration_caveat): 5 percentage points
ECE_TOLERANCE = 0.05


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities from logits (last axis), softened by ``temperature`` (T > 1 = less confident): scipy's
    formula (shifted by the row maximum), in numpy alone."""
    z = np.asarray(logits, dtype=float) / temperature
    with np.errstate(invalid="ignore"):  # an infinite logit gives NaN (inf - inf), which every caller refuses by name
        shifted = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return shifted / np.sum(shifted, axis=-1, keepdims=True)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature T minimising the validation NLL of softmax(logits / T) (Guo et al. 2017).

    Searches log T (bounded, see TEMPERATURE_BOUNDS) so T stays positive. One scalar cannot change the argmax,
    and with two classes it keeps the order of P(positive), so accuracy and AUC are unchanged. With three classes
    the order of 1 - P(normal) can change, which is why the threshold is always chosen after calibration.
    Logits that are not finite and labels that are not class indices are refused, as every figure refuses them
    (:func:`~pneumoscan.core.metrics.inputs._as_multiclass`): a NaN logit had given a temperature fitted to nothing,
    an infinite one T = 20 with a warning that blamed the logits' signal, and a label of 0.9 had been cast to 0.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax
    z = np.asarray(logits, dtype=float)
    labels = np.asarray(y_true).ravel()
    if z.ndim != 2 or z.shape[0] != labels.size:
        raise ValueError(f"logits must be (N, C) with N = len(y_true); got {z.shape} and {labels.size} labels")
    y, z, called = _as_multiclass(labels, z, z.shape[1], None)
    rows = np.arange(y.size)
    if np.unique(y).size < 2:
        # films of one class: the NLL only falls as every film leans further to that class, whatever the logits'
        # ranking (T = 20, the bound, had been kept with a warning that blamed the logits' signal)
        warnings.warn(
            "the validation films are all of one class, so no temperature can be fitted on them: T = 1 is kept, and "
            "the probabilities are the model's own, not calibrated; validate on films of every class",
            stacklevel=2,
        )
        return 1.0
    if np.array_equal(called, y):
        # every film on its side: the NLL only falls as T -> 0 (until it underflows, where the search stops short of
        # its bound at T ~ 0.07), and any such T would make every later score look certain
        warnings.warn(
            "the validation films are classified without a single error, so no temperature can be fitted on them: "
            "T = 1 is kept, and the probabilities are the model's own, not calibrated; validate on more films",
            stacklevel=2,
        )
        return 1.0

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / math.exp(log_t), axis=1)[rows, y].mean())

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    t = float(math.exp(result.x))
    if abs(result.x - hi) < 1e-3:
        warnings.warn(
            f"temperature {t:.3g} is at its bound {TEMPERATURE_BOUNDS}: the validation logits carry no signal, "
            "are ranked the wrong way round or all lean to one class (an offset no temperature removes), so the "
            "probabilities are not calibrated",
            stacklevel=2,
        )
    elif abs(result.x - lo) < 1e-3:  # with errors: logits so close together that even T = 0.05 does not spread them
        warnings.warn(
            f"temperature {t:.3g} is at its bound {TEMPERATURE_BOUNDS}: the validation logits are too close together "
            "to calibrate, so the probabilities are not calibrated",
            stacklevel=2,
        )
    return t


def _bin_of(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Each probability's bin of :func:`calibration`'s equal-width bins, which :func:`ece_by_chance` bins by too:
    [a, b) bins with edges k / n_bins exactly (np.linspace's 0.30000000000000004 put 0.3 in the bin below); 1.0
    lands in the last bin."""
    return np.clip((p * n_bins).astype(int), 0, n_bins - 1)


def calibration(y_true: Any, prob: Any, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Reliability-diagram data over equal-width bins of ``prob`` plus the expected calibration error
    ECE = sum_b (n_b / n) * |observed_b - predicted_b|. Empty bins have NaN means and count 0. Scores outside
    [0, 1] are refused: they are no probabilities, and a bin would take them silently (-0.2 in the first)."""
    y, p = _as_binary(y_true, prob)
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"calibration needs probabilities in [0, 1], got scores from {p.min():g} to {p.max():g}")
    bins = _bin_of(p, n_bins)
    edges = np.arange(n_bins + 1) / n_bins
    counts = np.bincount(bins, minlength=n_bins)
    sum_pred = np.bincount(bins, weights=p, minlength=n_bins)
    sum_obs = np.bincount(bins, weights=y, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_pred = sum_pred / counts
        observed = sum_obs / counts
    return {
        "bin_edges": edges.tolist(),
        "mean_predicted": mean_pred.tolist(),
        "observed_frequency": observed.tolist(),
        "counts": counts.tolist(),
        "ece": _ratio(np.abs(sum_obs - sum_pred).sum(), y.size),
    }


def ece_by_chance(prob: Any, groups: Sequence[str] | np.ndarray | None = None, n_draws: int = 1000,
                  n_bins: int = ECE_BINS) -> float:
    """The most the ECE of these films comes out by chance alone were ``prob`` calibrated: the (1 - ALPHA) quantile
    of the ECE of ``n_draws`` sets of labels drawn from the probabilities themselves (consistency resampling,
    Broecker and Smith 2007), each film positive with its own probability. ``groups`` (each film's patient; None:
    films alone): a patient's films are drawn together, from one uniform number each, so that they tend to share a
    label as one child's films do; chance then moves the ECE most. The recorded ECE less this is a 95 % lower bound
    of how far off the probabilities are (:attr:`~pneumoscan.models.card.BundleCard.calibration_caveat`), much
    tighter than :func:`ece_chance_margin`'s, since it knows where the films' probabilities lie (near 0 or 1 a label
    varies little). Drawn 100 sets at a time, so that many films take little memory.

    Each bin's positives are counted over its films (ordered by bin) with integer sums, not a product with a films x
    bins matrix: such a small product ran on every thread of BLAS's pool, which on 2 busy cores cost 15 times the
    CPU of the count (90 ms a call on 785 films, where the count takes 5 ms)."""
    p = np.asarray(prob, dtype=float).ravel()
    if not p.size:
        raise ValueError("the ECE by chance needs films")
    units = (np.unique(np.asarray(groups).astype(str), return_inverse=True)[1] if groups is not None
             else np.arange(p.size))
    bins = _bin_of(p, n_bins)
    order = np.argsort(bins, kind="stable")
    p, units = p[order], units[order]
    starts = np.flatnonzero(np.r_[True, np.diff(bins[order]) != 0])  # each bin's first film (empty bins: none)
    expected = np.add.reduceat(p, starts)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    ece = np.concatenate([
        np.abs(np.add.reduceat(rng.random((size, units.max() + 1))[:, units] < p, starts, axis=1, dtype=np.int64)
               - expected).sum(axis=1)
        for size in np.diff(np.r_[0:n_draws:100, n_draws])]) / p.size
    return float(np.quantile(ece, 1 - ALPHA))


def ece_chance_margin(cases: int, n_bins: int = ECE_BINS) -> float:
    """How far above the probabilities' true calibration error the ECE of ``cases`` independent cases can come by
    chance alone, at 95 % (one-sided), whatever the probabilities: the ECE's excess is at most the mean over films
    of each bin's |positives - their expected count|; its expectation is at most sqrt(n_bins / cases) / 2 (a bin's
    count varies by at most a quarter of its films; Cauchy-Schwarz over the bins), and one case moves it by at most
    1 / cases, so McDiarmid's inequality bounds the rest by sqrt(ln(1 / ALPHA) / (2 cases)). Needs only the count,
    so it judges a card that records no :func:`ece_by_chance` (older bundles); wider than that one."""
    if cases < 1:
        raise ValueError(f"the ECE's margin needs at least one case, got {cases}")
    return math.sqrt(n_bins / cases) / 2 + math.sqrt(math.log(1 / ALPHA) / (2 * cases))
