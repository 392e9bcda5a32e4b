"""Lyrics in CJK scripts draw as their glyphs, not as boxes: the figures fall back to an installed CJK font, and
figure text and the explorer read as the user's characters (no U+FFFD)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

import attnlens as al
from attnlens.adapters.acestep.layout import build_layout
from attnlens.analyzers.synthetic import capture_from_maps, staircase_maps
from attnlens.plot.fonts import SAMPLE, cjk_font, font_families

LYRICS = "[verse]\n我爱你 中国\n歌声 みんな\n사랑해 hello"


def _cap():
    tok = al.models.offline_tokenizer()  # byte-level: every CJK character is three byte pieces
    ids = tok(f"# Languages\nzh\n\n# Lyric\n{LYRICS}<|endoftext|>", add_special_tokens=False).input_ids
    cids = tok("# Caption\nfolk", add_special_tokens=False).input_ids
    one = lambda n: torch.ones(1, n, dtype=torch.long)  # noqa: E731
    it = build_layout(tok, torch.tensor([ids]), one(len(ids)), torch.tensor([cids]), one(len(cids)), one(1))[0]
    P = staircase_maps(it, list(range(0, 4 * len(it.words) + 1, 4)))
    return capture_from_maps(P[None, None, None, None], [it]), it


def _glyph(ch: str, families: list[str]) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(0.5, 0.5), dpi=60)
    fig.text(0.5, 0.5, ch, fontsize=20, ha="center", va="center", family=families)
    canvas = FigureCanvasAgg(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the box glyph is drawn on purpose below
        canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., 0].copy()


def test_layout_units_and_labels_of_byte_pieces():
    _, it = _cap()
    assert it.words == ["我", "爱", "你", "中", "国", "歌", "声", "み", "ん", "な", "사", "랑", "해", "hello"]
    labels = it.lyric_labels()
    assert not any("\ufffd" in t for t in labels)
    assert [t.strip() for t in labels[:6]] == ["我"] * 3 + ["爱"] * 3  # three byte pieces each, shown whole


needs_font = pytest.mark.skipif(
    cjk_font() is None, reason="no font with CJK glyphs is installed (scripts/setup.sh installs fonts-wqy-microhei)"
)


@needs_font
def test_cjk_glyphs_are_not_boxes():
    fams = font_families()
    box = _glyph("\ue000", fams)  # a private-use character: no font has it, so this is the missing-glyph box
    glyphs = {c: _glyph(c, fams) for c in SAMPLE + "爱"}
    for c, g in glyphs.items():
        assert (g < 128).any(), c  # ink was drawn
        assert not np.array_equal(g, box), f"{c!r} drawn as the missing-glyph box"
    chars = list(glyphs)
    for i, a in enumerate(chars):
        for b in chars[i + 1 :]:
            assert not np.array_equal(glyphs[a], glyphs[b]), (a, b)
    # without the fallback every one of them is the same box
    assert np.array_equal(_glyph("我", ["DejaVu Sans"]), _glyph("爱", ["DejaVu Sans"]))


@needs_font
@pytest.mark.parametrize("kind", ["map", "heads"])
def test_figures_draw_cjk_labels_with_glyphs(kind):
    cap, it = _cap()
    fig = al.plot.map(cap, step=-1, layer=0, head=0) if kind == "map" else al.plot.heads(cap, step=-1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert missing == []
    assert buf.getvalue().startswith(b"\x89PNG")
    texts = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert "我" in texts and "사" in texts and "hello" in texts
    assert not any("\ufffd" in t for t in texts)


def test_explorer_strings_read_as_the_users_characters():
    cap, _ = _cap()
    html = al.plot.explore(cap).to_html(include_plotlyjs=False)  # the page less plotly.js itself
    assert "\ufffd" not in html
    for ch in "我爱你中国歌声みんな사랑해":
        assert ch in html or f"\\u{ord(ch):04x}" in html
