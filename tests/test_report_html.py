"""The HTML report in a real headless browser: it loads without console messages and its plots
render (the screenshot is not blank and shows the charts' colours).

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped with the reason when it is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pngcheck import colour_stats, read_png
from report_data import synthetic_report

from editgate.report.html import render_html
from editgate.report.svg import PALETTE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(Debian: apt-get install chromium; .ci/run installs it)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


def screenshot(page: Path, png: Path, profile: Path, size: str = "1400,2000") -> list[str]:
    """Open ``page`` in headless Chromium, save a screenshot; return its console messages."""
    done = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
         f"--screenshot={png}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180, env={**os.environ, "LANG": "C.UTF-8"})
    assert png.is_file(), f"chromium wrote no screenshot (exit {done.returncode}):\n{done.stderr[-3000:]}"
    # Console output (script errors, SVG attribute errors, failed loads) is logged as CONSOLE lines.
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def _hex(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def count_pixels(image, rgb: tuple[int, int, int], tolerance: int = 6, step: int = 2) -> int:
    count = 0
    for y in range(0, image.height, step):
        row = image.rows[y]
        for x in range(0, image.width, step):
            i = x * image.channels
            if all(abs(row[i + k] - rgb[k]) <= tolerance for k in range(3)):
                count += 1
    return count


def test_console_errors_are_detected(tmp_path):
    """The check below is not vacuous: a page with a script error does produce CONSOLE lines."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>console.error('boom'); nope();</script>")
    messages = screenshot(page, tmp_path / "bad.png", tmp_path / "profile", "400,300")
    assert any("boom" in m for m in messages) and any("Uncaught" in m for m in messages)


def test_report_renders_in_chromium(tmp_path):
    report = synthetic_report(tmp_path / "items", memit_error=True)
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    png = tmp_path / "report.png"
    messages = screenshot(page, png, tmp_path / "profile")
    assert messages == [], "console messages while loading the report:\n" + "\n".join(messages)

    image = read_png(png.read_bytes())
    assert (image.width, image.height) == (1400, 2000)
    colours, variance = colour_stats(image)
    assert colours > 200 and variance > 100, f"blank-looking page ({colours} colours, var {variance})"
    # The charts drew: heat-map cells of failed gates (−2τ red), the first editor's line colour,
    # and the slate cells of the failed edit.
    assert count_pixels(image, (198, 40, 40)) > 1000
    assert count_pixels(image, _hex(PALETTE[0])) > 100
    assert count_pixels(image, _hex("#455A64")) > 500
    # Not only the top of the page: the lower half (curves) has ink too.
    lower = type(image)(image.width, image.height // 2, image.channels, image.rows[image.height // 2:])
    assert colour_stats(lower)[0] > 50
    if os.environ.get("EDITGATE_SCREENSHOT"):  # keep the picture (e.g. as a CI artifact)
        shutil.copy(png, os.environ["EDITGATE_SCREENSHOT"])
