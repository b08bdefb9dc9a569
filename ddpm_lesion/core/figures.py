"""Pictures for files and reports: images and matplotlib figures as PNG bytes (one encoder
for every PNG the project writes), and PNGs embedded in self-contained HTML (one file a
reviewer can open anywhere)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

from PIL import Image, PngImagePlugin


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (servers and CI have no display).
    Imported lazily so commands that draw nothing don't pay for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def encode_png(image: Image.Image, text: Mapping[str, str] | None = None) -> bytes:
    """PNG bytes of `image`, with `text` as tEXt chunks (written before the pixel data, so
    readers get them without decoding the image). Same image and text, same bytes: no
    timestamp is written, which keeps generated folders byte-reproducible."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def figure_png(figure: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed, so loops don't leak memory."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()


def html_img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
