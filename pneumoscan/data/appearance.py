"""Whether a film looks like the films a model was trained on, from its pixels alone.

A classifier answers for any picture: random noise tagged as a chest film, a scanned request form, a film turned on
its side or inverted all read "pneumonia" at 0.94-0.997, while the DICOM header checks of :mod:`.scope` were content.
So a bundle records what its training films look like at the model's input, and a film is checked six ways:

- its contrast: the grey levels between its 1st and 99th percentiles at the model's input (where fine noise is
  averaged away: uniform noise over 0-255 keeps about 20 at 32 x 32 px, and its warning says where it was
  measured), at least :data:`CONTRAST_FACTOR` times the training films' 0.1th percentile. The checks below see every
  film brought to unit spread, so a washed-out film (stored in a narrow band of a 12-bit range, a window fault)
  passed them, and a normal one read pneumonia at 0.996.
- its layout: the film shrunk to 6 x 6 and brought to zero mean and unit spread, compared with the training films'
  by Mahalanobis distance (scikit-learn's Ledoit-Wolf covariance). Turned, inverted and non-chest images are
  1.2-3 times the limit, the training films' 99.9th percentile; real films of the same source up to 0.6 times (a
  crop of the chest is not caught).
- its orientation: a film that, turned a quarter, a half or three quarters or flipped top to bottom, comes
  :data:`TURNED_RATIO` times closer to the training films' layout than as it is was most likely stored turned
  (upside-down films keep most of their 6 x 6 statistics: the layout limit alone caught 18 % of them, both 91 %;
  none of 1,047 real validation films is flagged by it).
- its white: the share of the film at grey level :data:`WHITE_LEVEL` or above at the model's input, at most the
  training films' 99.9th percentile plus :data:`WHITE_MARGIN`. A window that clips the film's bright half to white
  (a narrow or shifted DICOM window, an export that saturates) keeps its spread and its layout, and the checks above
  passed it: a normal film read pneumonia at 0.95 to 0.99. Tripling the contrast about the film's mean is caught on
  95 % of validation films, doubling it on 58 %; 0.2 % at 1.3 times, which the model reads as well as its own films,
  and no film as it is (benchmarks/bench_appearance.py). A bent tone curve (a gamma) that clips nothing is not
  caught.
- its black: the share of the film's middle (the central half of each side) at grey level :data:`BLACK_LEVEL` or
  below, at most the training films' 99.9th percentile plus :data:`BLACK_MARGIN`. A window raised from below
  blacks out the lungs, the darkest part of a chest film, first, and keeps the film's spread and layout. Only the
  middle is counted: the training films hold black borders of every width (up to a third of a film), and none
  holds black in its middle. A window that blacks out the darkest 30 % of a film is caught on 80 % of validation
  films, 40 % on 98 %; contrast raised 1.3 times about the mean on 0.1 %, and no film as it is.
- its sharpness: the log of the mean absolute Laplacian over the spread, which blur lowers and noise raises; the
  limits are the training films' 0.1th and 99.9th percentiles widened by :data:`SHARPNESS_MARGINS`, so that what a
  model reads as well as its own films (blur of 1 px, 96 px and back, grain of 10 grey levels: bench_shift) passes,
  and a blur of 4 px, noise or a typed page does not (benchmarks/bench_appearance.py).

Out of any of these, the film gets a warning of a kind that puts it out of scope (:class:`.scope.WarningKind`): it is
still scored (a reader may know better), but no coded finding is filed for it. About one film in three hundred like
the training films is flagged too: when in doubt, the tool says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .scope import BLURRED, CLIPPED_BLACK, CLIPPED_WHITE, LOW_CONTRAST, NOISY, TURNED, UNLIKE_LAYOUT

LAYOUT_SIDE = 6
QUANTILE = 0.999
TURNED_RATIO = 1.5
TURNS = (lambda x: np.rot90(x, 1), lambda x: np.rot90(x, 2), lambda x: np.rot90(x, 3), np.flipud)
SHARPNESS_MARGINS = (0.45, 1.5)  # below and above the training films' range, in log units
CONTRAST_FACTOR = 0.6  # of the training films' 0.1th percentile of contrast: below it, a window or export fault
MIN_FILMS = 100  # fewer training films describe too little of the source to flag others by
WHITE_LEVEL = 253  # a pixel this bright at the model's input is white, clipped or burnt out
WHITE_MARGIN = 0.1  # of a film, above the training films' 99.9th percentile: a contrast of 1.3 times clips a little
BLACK_LEVEL = 2  # a pixel this dark at the model's input is black, clipped by a window
BLACK_MARGIN = 0.05  # of a film's middle, above the training films' 99.9th percentile: as WHITE_MARGIN, for black
# the least layout limit a fit gives: Mahalanobis distances are in the training films' own units, a film's from a fit
# that did not see it about the square root of the 36 dimensions (6), and the limit the 99.9th percentile of at least
# 100 of them (8.5 on the Kermany films); a record's limit near 0 flagged every film, "inf times the limit". The most
# is the record's own: :func:`farthest_layout`
LEAST_LAYOUT_LIMIT = 1.0
# what :func:`_sharpness` can measure: its floor of 1e-6 over the widest spread of grey levels (127.5), to the largest
# mean absolute Laplacian (4 x 255) over the floor; a limit beyond it flags no film
SHARPNESS_RANGE = (math.log(1e-6 / 127.5), math.log(4 * 255 / 1e-6))


def _layout(images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 -> (N, 36): each film shrunk to 6 x 6 (area average), zero mean and unit spread."""
    small = np.stack([np.asarray(Image.fromarray(x).resize((LAYOUT_SIDE, LAYOUT_SIDE), Image.BOX), np.float64).ravel()
                      for x in images])
    small -= small.mean(axis=1, keepdims=True)
    return small / np.maximum(small.std(axis=1, keepdims=True), 1e-6)


def farthest_layout(mean: np.ndarray, precision: np.ndarray) -> float:
    """The farthest any film's layout can lie from ``mean`` under ``precision``, by Mahalanobis distance, or more:
    the upper bound of a layout limit a record may hold. A film's layout (:func:`_layout`) has zero mean and unit
    spread, so a length of sqrt(36) = 6 (0 for a flat film); its offset from ``mean`` is at most 6 plus the mean's
    length, and the distance at most that times the square root of the precision's largest eigenvalue. A limit at
    or beyond it flags no film whatever it shows (noise, a form, a turned film), the layout check off while the
    record says it is on. A fit's limit, the 99.9th percentile of films' distances, lies far within it: 13.3 against
    110 for 300 Kermany training films at 64 px, 14.0 against 173 for 800 at 32 px."""
    return float((math.sqrt(LAYOUT_SIDE * LAYOUT_SIDE) + np.linalg.norm(mean))
                 * math.sqrt(np.linalg.eigvalsh(precision).max()))


def _laplacian(x: np.ndarray) -> np.ndarray:
    """The 5-point Laplacian, edges mirrored (``scipy.ndimage.laplace``'s default): in numpy, so that scoring a film
    loads neither SciPy's image module nor, for :meth:`Appearance.fit`, scikit-learn (0.8 s and 70 MB a process)."""
    p = np.pad(x, 1, mode="symmetric")
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * x


def _sharpness(images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 -> (N,): log of the mean absolute Laplacian over the film's spread."""
    out = []
    for film in images:  # one film in float at a time: the training films' float copy would be 4 times the cache
        x = film.astype(np.float32)
        out.append(np.log(max(float(np.abs(_laplacian(x)).mean()), 1e-6) / max(float(x.std()), 1e-6)))
    return np.array(out)


def _contrast(images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 -> (N,): the grey levels between the 1st and 99th percentiles of each film."""
    low, high = np.percentile(images.reshape(len(images), -1), (1, 99), axis=1)
    return high - low


def _white(images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 -> (N,): the share of each film at :data:`WHITE_LEVEL` or above."""
    return (images.reshape(len(images), -1) >= WHITE_LEVEL).mean(axis=1)


def _black(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N,): the share of each film's middle (the central half of each side) at
    :data:`BLACK_LEVEL` or below; a film's black borders lie outside it."""
    height, width = images.shape[1:]
    middle = images[:, height // 4 : height - height // 4, width // 4 : width - width // 4]
    return (middle.reshape(len(images), -1) <= BLACK_LEVEL).mean(axis=1)


@dataclass(frozen=True)
class Appearance:
    """The training films' layout (mean and precision of :func:`_layout`) and the limits a film must keep."""

    mean: np.ndarray
    precision: np.ndarray
    layout_limit: float
    sharpness: tuple[float, float]
    contrast: float  # the least a film may have (:func:`_contrast`)
    white: float | None = None  # the most of a film that may be white (:func:`_white`); None: a record made before
    black: float | None = None  # the most of a film's middle that may be black (:func:`_black`); None: made before

    @classmethod
    def fit(cls, images: np.ndarray) -> Appearance:
        """From the training films as the model reads them, (N, S, S) uint8; ValueError under :data:`MIN_FILMS`."""
        from sklearn.covariance import LedoitWolf  # training only: scoring reads the stored precision

        if len(images) < MIN_FILMS:
            raise ValueError(f"{len(images)} training films, fewer than {MIN_FILMS}")
        layouts = _layout(images)
        # the limit from distances of films the fit did not see (each half measured by the other's fit): a film's
        # distance from a fit that included it is short, and a limit from those flagged 5 % of new films, not 0.1 %
        halves = np.arange(len(layouts)) % 2 == 0
        distance = np.concatenate([np.sqrt(LedoitWolf().fit(layouts[~half]).mahalanobis(layouts[half]))
                                   for half in (halves, ~halves)])
        fitted = LedoitWolf().fit(layouts)
        sharp = _sharpness(images)
        return cls(fitted.location_, fitted.precision_, float(np.quantile(distance, QUANTILE)),
                   (float(np.quantile(sharp, 1 - QUANTILE)) - SHARPNESS_MARGINS[0],
                    float(np.quantile(sharp, QUANTILE)) + SHARPNESS_MARGINS[1]),
                   CONTRAST_FACTOR * float(np.quantile(_contrast(images), 1 - QUANTILE)),
                   float(np.quantile(_white(images), QUANTILE)) + WHITE_MARGIN,
                   float(np.quantile(_black(images), QUANTILE)) + BLACK_MARGIN)

    def _distances(self, images: np.ndarray) -> np.ndarray:
        centred = _layout(images) - self.mean
        return np.sqrt(np.einsum("ij,jk,ik->i", centred, self.precision, centred))

    def warnings(self, images: np.ndarray) -> list[list[str]]:
        """Per film of (N, S, S) uint8 at the size the appearance was fitted at: why it does not look like the
        training films (an empty list when it does)."""
        distances = self._distances(images)
        turned = np.min([self._distances(np.stack([np.ascontiguousarray(turn(x)) for x in images]))
                         for turn in TURNS], axis=0)
        low, high = self.sharpness
        out = []
        for distance, closer, sharp, spread, white, black in zip(distances, turned, _sharpness(images),
                                                                 _contrast(images), _white(images), _black(images)):
            reasons = []
            if spread < self.contrast:  # both tests below see a film brought to unit spread: a flat one looks fine
                reasons.append(LOW_CONTRAST.text(spread=spread, width=images.shape[2], height=images.shape[1],
                                                  least=self.contrast))
            if self.white is not None and white > self.white:  # clipped: spread and layout look fine
                reasons.append(CLIPPED_WHITE.text(share=100 * white, width=images.shape[2], height=images.shape[1],
                                                   most=100 * self.white))
            if self.black is not None and black > self.black:  # the lungs blacked out: spread and layout look fine
                reasons.append(CLIPPED_BLACK.text(share=100 * black, width=images.shape[2], height=images.shape[1],
                                                  most=100 * self.black))
            if distance > self.layout_limit:
                reasons.append(UNLIKE_LAYOUT.text(times=distance / self.layout_limit))
            elif closer * TURNED_RATIO < distance:
                reasons.append(TURNED.text(closer=distance / closer))
            if sharp < low:
                reasons.append(BLURRED.text())
            elif sharp > high:
                reasons.append(NOISY.text())
            out.append(reasons)
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        shares = [share for share in (self.white, self.black) if share is not None]  # older: no black, or neither
        return {"mean": self.mean, "precision": self.precision,
                "limits": np.array([self.layout_limit, *self.sharpness, self.contrast, *shares])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Appearance:
        """As :meth:`to_arrays` wrote them (four limits: a record made before the white check, five: one made before
        the black check, which it then leaves out); ValueError for arrays of other shapes, or values no fit gives (a
        precision that is not symmetric positive definite, a limit outside what :meth:`fit` can give, by name, or
        limits out of order), which would flag every film or none: a record damaged and sealed again passes its
        digest check."""
        mean, precision, limits = arrays.get("mean"), arrays.get("precision"), arrays.get("limits")
        n = LAYOUT_SIDE * LAYOUT_SIDE
        if (mean is None or precision is None or limits is None or mean.shape != (n,) or precision.shape != (n, n)
                or limits.shape not in ((4,), (5,), (6,))
                or not all(np.isfinite(a).all() for a in (mean, precision, limits))):
            raise ValueError("not an appearance record of this version")
        precision = precision.astype(np.float64)
        if not np.allclose(precision, precision.T) or np.linalg.eigvalsh(precision).min() <= 0:
            raise ValueError("its precision matrix is not symmetric positive definite")
        low, high = SHARPNESS_RANGE
        # what fit gives for each limit, in to_arrays' order
        fitted = {"layout": (LEAST_LAYOUT_LIMIT, farthest_layout(mean, precision)),
                  "sharpness low": (low - SHARPNESS_MARGINS[0], high - SHARPNESS_MARGINS[0]),
                  "sharpness high": (low + SHARPNESS_MARGINS[1], high + SHARPNESS_MARGINS[1]),
                  "contrast": (0.0, CONTRAST_FACTOR * 255),  # of grey levels, 0-255
                  "white": (WHITE_MARGIN, 1 + WHITE_MARGIN), "black": (BLACK_MARGIN, 1 + BLACK_MARGIN)}  # shares
        for (name, (least, most)), value in zip(fitted.items(), limits.tolist()):
            if not least <= value <= most:
                raise ValueError(f"its {name} limit {value!r} is outside {least:g} to {most:g}, what a fit of "
                                 "training films gives")
        if limits[1] >= limits[2]:
            raise ValueError(f"its sharpness limits {limits[1:3].tolist()} are out of order")
        return cls(mean.astype(np.float64), precision, float(limits[0]), (float(limits[1]), float(limits[2])),
                   float(limits[3]), *(float(share) for share in limits[4:]))
