"""``attnlens demo`` end to end on the built-in model: files written, figures not blank, summary printed."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from attnlens.cli import main as cli_main


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli_main(["demo", "--out", str(out)])
    return out, rc, buf.getvalue()


def test_exit_code_and_files(demo_out):
    out, rc, _ = demo_out
    assert rc == 0
    for name in ("report.html", "explore.html", "capture.attn", "heads.csv"):
        assert (out / name).stat().st_size > 0, name


def test_report_figures_are_not_blank(demo_out):
    out, _, _ = demo_out
    page = (out / "report.html").read_text(encoding="utf-8")
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pngs) == 4
    for b64 in pngs:
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"), dtype=np.float64)
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 10.0  # pixel variance: drawn content, not an empty canvas
    assert 'href="explore.html"' in page or "href='explore.html'" in page
    for word in ("sun", "rise", "over", "blue", "sea", "home"):
        assert f">{word}<" in page  # the word-timestamp table


def test_heads_csv_ranks_every_head(demo_out):
    import pandas as pd

    out, _, _ = demo_out
    df = pd.read_csv(out / "heads.csv")
    assert len(df) == 4 * 8 and set(df["layer"]) == {0, 1, 2, 3}
    m = df["monotonic_alignment_sung"].to_numpy()
    assert (np.diff(m) <= 1e-12).all()  # sorted, best first


def test_terminal_summary(demo_out):
    _, _, text = demo_out
    assert "layer" in text and "top heads" in text and "report:" in text
    assert len(re.findall(r"^\s+[0-3]\s+[0-9.]+\s+[0-9.]+", text, flags=re.M)) == 4  # one row per layer
