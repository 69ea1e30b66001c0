"""Figures as files: one resolution and one PNG encoding for every figure and picture pneumoscan draws."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_DPI = 110
# zlib level of every PNG written: about two thirds of the default level's (6) encoding time, for files 5-14 %
# larger; what a heatmap served over HTTP waits for (a report figure's 5 ms of encoding is little of its 0.1 s draw)
PNG_COMPRESS_LEVEL = 1
# the Software text chunk of every PNG figure: a run folder given to ``predict`` had its ROC curves and training
# curves scored as films; the image readers refuse a PNG so marked as a pneumoscan output
FIGURE_SOFTWARE = "pneumoscan figure"


def figure_bytes(fig: Figure, fmt: str = "png", tight: bool = False) -> bytes:
    """FIG drawn at FIGURE_DPI in format ``fmt`` (a PNG at PNG_COMPRESS_LEVEL); ``tight``: cropped to what it
    draws, a legend beside or below its axes included. A PNG is marked as a pneumoscan output
    (:data:`FIGURE_SOFTWARE`), so that it is never read back as a film."""
    buffer = io.BytesIO()
    png = ({"pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}, "metadata": {"Software": FIGURE_SOFTWARE}}
           if fmt == "png" else {})
    fig.savefig(buffer, format=fmt, dpi=FIGURE_DPI, bbox_inches="tight" if tight else None, **png)
    return buffer.getvalue()


def png_data_url(png: bytes) -> str:
    """A PNG as a ``data:`` URL: a figure or heatmap inside an HTML page or a JSON answer, with no separate file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
