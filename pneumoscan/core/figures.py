"""Figures as files: one resolution and one PNG encoding for every figure and picture pneumoscan draws."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.backend_bases import RendererBase
    from matplotlib.figure import Figure
    from matplotlib.transforms import Bbox

FIGURE_DPI = 110
# zlib level of every PNG written: about two thirds of the default level's (6) encoding time, for files 5-14 %
# larger; what a heatmap served over HTTP waits for (a report figure's 5 ms of encoding is little of its 0.1 s draw)
PNG_COMPRESS_LEVEL = 1
# the Software text chunk of every PNG figure: a run folder given to ``predict`` had its ROC curves and training
# curves scored as films; the image readers refuse a PNG so marked as a pneumoscan output
FIGURE_SOFTWARE = "pneumoscan figure"


def figure_bytes(fig: Figure, fmt: str = "png", tight: bool = False) -> bytes:
    """FIG drawn at FIGURE_DPI in format ``fmt`` (a PNG at PNG_COMPRESS_LEVEL); ``tight``: cropped to what it
    draws, a legend beside or below its axes included, with savefig's padding. A PNG is marked as a pneumoscan
    output (:data:`FIGURE_SOFTWARE`), so that it is never read back as a film.

    A tight PNG whose drawing lies on the figure is drawn once and cut out of it, padded where its padding lies
    past the edge (the report's figures are sized so); one that reaches the edge (a long name, a legend of many
    runs) is drawn again by savefig on the box matplotlib measures, sized to take it all in: a second draw, 30-40 %
    of the figure's time."""
    from matplotlib.image import imsave

    buffer = io.BytesIO()
    png = ({"pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}, "metadata": {"Software": FIGURE_SOFTWARE}}
           if fmt == "png" else {})
    box: Bbox | str | None = "tight" if tight else None
    if tight and fmt == "png":
        box = _drawn_within(fig)
        if isinstance(box, np.ndarray):
            imsave(buffer, box, format="png", origin="upper", dpi=FIGURE_DPI, **png)
            return buffer.getvalue()
    fig.savefig(buffer, format=fmt, dpi=FIGURE_DPI, bbox_inches=box, **png)
    return buffer.getvalue()


def _drawn_within(fig: Figure) -> np.ndarray | Bbox:
    """FIG drawn at FIGURE_DPI and cut to what it inks, padded as savefig pads a tight box (RGBA rows, top first),
    or the tight box (inches) where the drawing reaches the figure's edge or a text or legend lies past it
    (:func:`_text_past_edge`): savefig draws the figure on it without measuring it again. Measured from the drawn
    pixels, not by matplotlib's tight box, which lays every tick and text out again (a fifth of a figure's CPU); the
    picture is the same, within the few pixels by which a text's box is taller than its letters."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba_array

    dpi = fig.dpi
    fig.set_dpi(FIGURE_DPI)
    try:
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        rows = np.asarray(canvas.buffer_rgba())
        background = (to_rgba_array(fig.get_facecolor())[0] * 255).round().astype(np.uint8)
        inked = rows.view(np.uint32)[..., 0] != background.view(np.uint32)[0]  # a pixel's 4 bytes compared at once
        across, down = np.flatnonzero(inked.any(axis=0)), np.flatnonzero(inked.any(axis=1))
        if (not len(across) or across[0] == 0 or down[0] == 0 or across[-1] == rows.shape[1] - 1
                or down[-1] == rows.shape[0] - 1 or _text_past_edge(fig, canvas.get_renderer())):
            # it may run off the figure: matplotlib's box takes it all in
            box = fig.get_tightbbox(canvas.get_renderer()).padded(matplotlib.rcParams["savefig.pad_inches"])
            if box.x0 < 0 or box.y0 < 0 or box.x1 > fig.bbox_inches.x1 or box.y1 > fig.bbox_inches.y1:
                return box
            bottom = len(rows) - round(box.y0 * FIGURE_DPI)
            left = round(box.x0 * FIGURE_DPI)
            return rows[bottom - int(box.height * FIGURE_DPI):bottom, left:left + int(box.width * FIGURE_DPI)]
        pad = round(matplotlib.rcParams["savefig.pad_inches"] * FIGURE_DPI)
        drawing = rows[down[0]:down[-1] + 1, across[0]:across[-1] + 1]
        picture = np.empty((drawing.shape[0] + 2 * pad, drawing.shape[1] + 2 * pad, 4), np.uint8)
        picture[...] = background  # savefig's pad, in the figure's colour, also where it lies past the figure
        picture[pad:pad + drawing.shape[0], pad:pad + drawing.shape[1]] = drawing
        return picture
    finally:
        fig.set_dpi(dpi)


def _text_past_edge(fig: Figure, renderer: RendererBase) -> bool:
    """Whether a text or legend of FIG, as just drawn, lies past its edge, wholly or in part: the ink at the edge
    does not tell where a gap between letters falls on it, or where all of it lies beyond (a legend's keys cut off,
    a note cut short). Their boxes are those of the draw (laid out once, about 5 ms a figure)."""
    from matplotlib.legend import Legend
    from matplotlib.text import Text

    def shown(artist: Artist) -> bool:
        return (isinstance(artist, Legend) or (isinstance(artist, Text) and bool(artist.get_text()))) and \
            artist.get_visible() and artist.get_in_layout()

    edge = fig.bbox
    for artist in fig.findobj(shown):
        box = artist.get_window_extent(renderer)
        if box.x0 < edge.x0 or box.y0 < edge.y0 or box.x1 > edge.x1 or box.y1 > edge.y1:
            return True
    return False


def set_title(ax: Axes, title: str) -> None:
    """TITLE over AX at the height matplotlib places it, given where it can be: placed by matplotlib, each draw and
    the crop's measure work the y axis's ticks out again for it (10-35 % of a figure's CPU). Below the x axis's
    ticks, a title is lifted off the axes' top by the y axis's offset text alone (an axis of 0.69314-0.69316 reads
    1e-5+6.931e-1 there), which the ticks AX's limits give tell: without one it is given the top, with one matplotlib
    places it. Set once what AX shows is in it (its limits final): AX's ticks are then fixed at those it shows
    (:func:`_shown_ticks_only`)."""
    _shown_ticks_only(ax)
    formatter = ax.yaxis.get_major_formatter()
    formatter.set_locs(ax.yaxis.get_majorticklocs())
    ax.set_title(title, y=None if formatter.get_offset() else 1.0)


def _shown_ticks_only(ax: Axes) -> None:
    """AX's major ticks fixed at those its locators give within its limits, labelled as they were: a locator gives
    one or two beyond them (-0.2 and 1.2 on the unit square), which each draw builds and lays out unshown (a fifth
    of the axes' ticks). An axis whose labels would read otherwise without them (another offset, more digits) keeps
    its locator."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() != "linear":
            continue
        locs = np.asarray(axis.get_majorticklocs())
        low, high = sorted(axis.get_view_interval())
        slack = 1e-10 * (high - low)  # matplotlib draws a tick within this of a limit
        shown = (locs >= low - slack) & (locs <= high + slack)
        if shown.all() or not shown.any():
            continue
        formatter = axis.get_major_formatter()
        labels, offset = [label for label, s in zip(formatter.format_ticks(locs), shown) if s], formatter.get_offset()
        if formatter.format_ticks(locs[shown]) == labels and formatter.get_offset() == offset:
            axis.set_ticks(locs[shown])


def png_data_url(png: bytes) -> str:
    """A PNG as a ``data:`` URL: a figure or heatmap inside an HTML page or a JSON answer, with no separate file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
