"""Headless Chromium for the tests that look at a page (the sweep report, the MLflow run page)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import require_programs


def screenshot(url: str, out: Path, profile: Path, *, size: str = "1400,2400", budget_ms: int = 5000,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Render ``url`` in headless Chromium into ``out`` (PNG); returns the process (its stderr
    carries the page's console lines: --enable-logging=stderr)."""
    require_programs("chromium", why="Debian's chromium: the page is opened in a headless browser")
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}",
         f"--screenshot={out}", f"--window-size={size}", url],
        capture_output=True, text=True, timeout=timeout)


def pixel_variance(png: Path) -> float:
    """Grey-level variance of a screenshot: a blank (one-colour) page gives ~0."""
    return float(np.asarray(Image.open(png).convert("L"), dtype=np.float64).var())
