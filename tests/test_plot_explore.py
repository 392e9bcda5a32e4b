"""The interactive explorer: embedded data equals the maps, pooling is stated, and the page works in a real
headless Chromium (no JavaScript errors, heatmap drawn, switching head redraws).

Test-only dependency: playwright (``pip install playwright``; it drives the system Chromium at /usr/bin/chromium,
never run ``playwright install``). The browser tests skip with the reason when either is missing.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
from test_plot_helpers import full_size_maps_capture, make_capture

import attnlens.plot as alp
from attnlens.captures.result import NotCapturedError

CHROMIUM = os.environ.get("ATTNLENS_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _payload(html: str) -> dict:
    m = re.search(r"var P = (\{.*?\});\n", html, flags=re.S)
    assert m, "payload not found in the page"
    return json.loads(m.group(1))


def _decode(p: dict) -> np.ndarray:
    raw = base64.b64decode(p["data"])
    return np.frombuffer(raw, dtype="<f2").astype(np.float32).reshape(p["shape"])


def test_embedded_maps_equal_map_data():
    cap = make_capture(n_steps=2, n_layers=3, n_heads=4)
    fig = alp.explore(cap)
    assert isinstance(fig, alp.ExplorerFigure)
    p = _payload(fig.to_html())
    vals = _decode(p)
    assert vals.shape == (2 * 3 * 4, 6, 50)
    assert [d["name"] for d in p["dims"]] == ["step", "layer", "head"]
    # order: step, layer, head
    for s, la, h in ((0, 0, 0), (1, 2, 3), (1, 0, 2)):
        want = alp.map_data(cap, s, la, h).values
        np.testing.assert_allclose(vals[(s * 3 + la) * 4 + h], want, rtol=2e-3, atol=1e-6)
    # the figure opens on the last step, first layer, first head
    np.testing.assert_allclose(np.asarray(fig.data[0].z), alp.map_data(cap, 1, 0, 0).values, rtol=2e-3, atol=1e-6)
    notes = fig.layout.annotations[1].text
    assert "all 50 frames shown" in notes and "float16" in notes
    assert fig.layout.xaxis.title.text == "time (s)"
    assert "walking" in fig.layout.yaxis.ticktext
    # repeated words stay separate rows (zero-width marks make the categories unique)
    assert len(set(p["ylabels"])) == 6


def test_pooling_and_budget_are_stated():
    cap = full_size_maps_capture()
    fig = alp.explore(cap, keys="all", merge=False)  # 3,000 frames × 512 keys × 16 heads
    p = _payload(fig.to_html())
    assert p["shape"][1] == 512 and p["shape"][2] <= 800
    assert "max-pooled" in fig.layout.annotations[1].text and "3000 →" in fig.layout.annotations[1].text
    full = alp.map_data(cap, -1, 3, 5, keys="all", merge=False, pool=None).values
    k = -(-3000 // p["shape"][2])
    vals = _decode(p)
    np.testing.assert_allclose(vals[5][:, 0], full[:, :k].max(1), rtol=2e-3, atol=1e-7)
    with pytest.raises(ValueError, match="select fewer"):
        alp.explore(cap, keys="all", merge=False, max_values=100_000)


def test_explore_without_maps_says_what_to_capture():
    with pytest.raises(NotCapturedError, match=r"maps=True"):
        alp.explore(make_capture(maps=False))


def test_write_html_is_standalone_and_atomic(tmp_path):
    fig = alp.explore(make_capture(n_steps=1, n_layers=1, n_heads=2))
    path = fig.write_html(tmp_path / "explore.html")
    text = open(path, encoding="utf-8").read()
    # plotly.js inline (no <script src=...>): the page works offline
    assert not re.search(r"<script[^>]*\bsrc=", text) and len(text) > 3_000_000 and "Plotly.newPlot" in text
    assert os.listdir(tmp_path) == ["explore.html"]
    assert alp.save(fig, tmp_path / "again.html").endswith("again.html")
    assert "var P = " in open(tmp_path / "again.html", encoding="utf-8").read()


# ------------------------------------------------------------------------------------------- real browser
def _browser():
    if not os.path.exists(CHROMIUM) and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    return sync_playwright


def _open(pw, path: str, errors: list[str]):
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.goto(f"file://{path}")
    page.wait_for_selector(".plotly-graph-div[data-attnlens-map]", timeout=120_000)
    return browser, page


def _heat_pixels(page) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    box = page.locator(".nsewdrag").first.bounding_box()  # the plot area
    png = page.screenshot(clip=box)
    return np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.float64)


def test_explorer_in_headless_chromium(tmp_path):
    sync_playwright = _browser()
    cap = make_capture(n_steps=2, n_layers=2, n_heads=4)
    path = str(alp.explore(cap).write_html(tmp_path / "explore.html"))
    errors: list[str] = []
    with sync_playwright() as pw:
        browser, page = _open(pw, path, errors)
        try:
            assert page.get_attribute(".plotly-graph-div", "data-attnlens-map") == str(1 * 2 * 4)  # step 1, L0, H0
            before = _heat_pixels(page)
            assert before.std() > 10, "heatmap area is blank"
            # switch head with the dropdown, as a user would
            page.locator(".updatemenu-header").nth(2).click()
            page.locator(".updatemenu-dropdown-button").nth(3).click()
            page.wait_for_function(
                "document.querySelector('.plotly-graph-div').getAttribute('data-attnlens-map') === '11'"
            )
            state = page.evaluate("document.querySelector('.plotly-graph-div').attnlens.state()")
            assert state == {"step": "1", "layer": "0", "head": "3"}
            z = np.array(page.evaluate("document.querySelector('.plotly-graph-div').data[0].z"), dtype=np.float64)
            np.testing.assert_allclose(z, alp.map_data(cap, 1, 0, 3).values, rtol=2e-3, atol=1e-6)
            after = _heat_pixels(page)
            assert np.abs(after - before).mean() > 1.0, "switching head did not change the drawing"
            # hover names the word, the time and the weight
            box = page.locator(".nsewdrag").first.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.05)
            page.wait_for_selector(".hovertext", timeout=10_000)
            hover = page.locator(".hovertext").first.text_content()
            assert re.fullmatch(r"walkingtime (1\.9[0-9]|2\.0[0-9]) sweight 0\.\d+", hover), hover
        finally:
            browser.close()
    assert errors == []


def test_full_size_explorer_is_responsive(tmp_path):
    sync_playwright = _browser()
    cap = full_size_maps_capture()  # 3,000 frames × 512 keys, 16 heads
    path = str(alp.explore(cap, keys="all", merge=False).write_html(tmp_path / "big.html"))
    errors: list[str] = []
    with sync_playwright() as pw:
        t0 = time.perf_counter()
        browser, page = _open(pw, path, errors)
        t_load = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            page.evaluate("document.querySelector('.plotly-graph-div').attnlens.select('head', 11)")
            page.wait_for_function(
                "document.querySelector('.plotly-graph-div').getAttribute('data-attnlens-map') === '11'"
            )
            t_switch = time.perf_counter() - t0
            assert _heat_pixels(page).std() > 10
        finally:
            browser.close()
    assert errors == []
    print(
        f"full-size explorer: {os.path.getsize(path) / 1e6:.1f} MB, load {t_load:.1f} s, head switch {t_switch:.2f} s"
    )
    assert t_switch < 5.0 and t_load < 90.0
