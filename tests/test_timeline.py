"""``python -m src.drill --timeline DIR`` draws a non-trivial PNG for each scenario run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import image

from src.drill.cli import main
from src.drill.timeline import COLORS

PNG = b"\x89PNG\r\n\x1a\n"


def share_of(pixels: np.ndarray, color: str) -> float:
    """Fraction of the image's pixels drawn in ``color`` (``#rrggbb``)."""
    rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    close = np.all(np.abs(pixels[..., :3] - rgb) < 0.02, axis=-1)
    return float(close.mean())


def test_timeline_writes_a_png_of_the_scenario(tmp_path: Path, capsys: object) -> None:
    assert main(["--scenario", "amplitude-503", "--timeline", str(tmp_path)]) == 0
    [png] = list(tmp_path.iterdir())
    assert png.name == "amplitude-503.png"
    data = png.read_bytes()
    assert data.startswith(PNG)
    assert 10_000 < len(data) < 200_000
    pixels = image.imread(png)
    height, width = pixels.shape[:2]
    assert width >= 600 and height >= 200
    colors = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colors) > 50  # text, bars, shading: not a blank canvas
    # The tool span (the usage lookup and its retries) and the caller's wait are drawn.
    assert share_of(pixels, COLORS["tool"]) > 0.001
    assert share_of(pixels, COLORS["answer"]) > 0.0001
