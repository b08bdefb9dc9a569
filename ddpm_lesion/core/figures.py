"""Pictures for files and reports: matplotlib without a display, figures as PNG bytes, and
PNGs embedded in self-contained HTML (one file a reviewer can open anywhere)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (servers and CI have no display).
    Imported lazily so commands that draw nothing don't pay for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(figure: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed, so loops don't leak memory."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()


def html_img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
