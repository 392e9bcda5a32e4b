"""Static figures render headless (Agg) for a small and a full-size-shaped capture, show what map_data computed,
label seconds and words, share colour scales, and save atomically; the CLI makes the same figures."""

from __future__ import annotations

import os
import time

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.figure import Figure
from test_plot_helpers import full_size_maps_capture, full_size_stats_capture, make_capture, png_pixels

import attnlens.plot as alp
from attnlens.captures.io import save_capture
from attnlens.captures.result import NotCapturedError


def _not_blank(fig: Figure) -> None:
    px = png_pixels(fig)
    assert px.std() > 20, "figure looks blank"


def test_map_shows_words_seconds_and_the_computed_values():
    cap = make_capture()
    fig = alp.map(cap, step=-1, layer=1, head=3)
    ax = fig.axes[0]
    md = alp.map_data(cap, -1, 1, 3)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), md.values, rtol=1e-6)
    assert ax.get_xlabel() == "time (s)"
    assert ax.get_xlim() == (0.0, 4.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["walking", "down", "the", "morning", "road", "the"]
    title = " ".join(ax.get_title().split())  # titles are wrapped to the figure width
    assert "step 1 (t=0.5)" in title and "BPE pieces summed per word" in title
    _not_blank(fig)


def test_map_all_keys_marks_segments_and_sink():
    cap = make_capture()
    fig = alp.map(cap, step=-1, layer=1, head=0, keys="all")
    ax = fig.axes[0]
    # segments are named where tall enough (the one-row timbre segment is not); every boundary is drawn
    assert [t.get_text() for t in ax.texts] == ["lyrics", "caption"]
    bounds = sorted(ln.get_ydata()[0] for ln in ax.lines if ln.get_linestyle() == "--")
    assert bounds == [11.5, 12.5]  # 12 lyric rows | timbre | caption
    sink = [t for t in ax.get_yticklabels() if t.get_text() == "timbre[0]"]
    assert sink and sink[0].get_color() == "red" and sink[0].get_fontweight() == "bold"
    assert "sink: key" in " ".join(ax.get_title().split())
    _not_blank(fig)


def test_heads_grid_average_and_per_layer():
    cap = make_capture(n_layers=3, n_heads=4)
    fig = alp.heads(cap, step=-1)
    panels = [a for a in fig.axes if a.images]
    assert [a.get_title() for a in panels] == ["head 0", "head 1", "head 2", "head 3"]
    md = alp.map_data(cap, -1, None, 2)
    np.testing.assert_allclose(np.asarray(panels[2].images[0].get_array()), md.values, rtol=1e-6)
    # one shared scale: every panel uses the overall max
    top = max(alp.map_data(cap, -1, None, h).values.max() for h in range(4))
    assert all(np.isclose(a.images[0].get_clim()[1], top) for a in panels)
    assert "mean over layers 0..2" in " ".join(fig._suptitle.get_text().split())
    assert [t.get_text() for t in panels[0].get_yticklabels()][:2] == ["walking", "down"]
    _not_blank(fig)
    grid = alp.heads(cap, step=0, layers=[0, 2], normalize="lyric", scale="panel")
    panels = [a for a in grid.axes if a.images]
    assert [a.get_title() for a in panels][:5] == ["L0 H0", "L0 H1", "L0 H2", "L0 H3", "L2 H0"]
    assert len(panels) == 8
    _not_blank(grid)


def test_compare_shares_scale_and_draws_differences():
    a, b = make_capture(seed=0), make_capture(seed=5)
    fig = alp.compare({"baseline": a, "lora": b}, step=-1, layer=0, head=3, reference="baseline")
    imgs = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(imgs) == 3
    ma, mb = alp.map_data(a, -1, 0, 3).values, alp.map_data(b, -1, 0, 3).values
    top = max(ma.max(), mb.max())
    assert np.isclose(imgs[0].get_clim()[1], top) and np.isclose(imgs[1].get_clim()[1], top)
    np.testing.assert_allclose(np.asarray(imgs[2].get_array()), mb - ma, rtol=1e-5, atol=1e-7)
    lo, hi = imgs[2].get_clim()
    assert np.isclose(lo, -hi) and np.isclose(hi, np.abs(mb - ma).max())
    _not_blank(fig)
    other = make_capture()
    other.layout.items[0].words[0] = "running"
    with pytest.raises(ValueError, match="same token axis"):
        alp.compare({"baseline": a, "other": other}, step=-1, layer=0, head=0)


def test_scores_matrix_figure():
    rows = [
        {"step": 0, "batch": 0, "layer": la, "head": h, "diagonal_score": 0.01 * (la * 4 + h)}
        for la in range(3)
        for h in range(4)
    ]
    import pandas as pd

    fig = alp.scores(pd.DataFrame(rows), "diagonal_score")
    ax = fig.axes[0]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), np.arange(12).reshape(3, 4) * 0.01)
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"
    assert "max 0.11 at layer 2 head 3" in ax.get_title()
    _not_blank(fig)


def test_full_size_shaped_capture_renders_in_sane_time():
    cap = full_size_maps_capture()  # 16 heads × 3,000 frames × 512 keys
    t0 = time.perf_counter()
    grid = alp.heads(cap, step=-1, layers=[3])
    px = png_pixels(grid)
    t_grid = time.perf_counter() - t0
    assert px.std() > 20
    text = " ".join(grid._suptitle.get_text().split())
    assert "max-pooled" in text and "3000 →" in text
    t0 = time.perf_counter()
    one = alp.map(cap, step=-1, layer=3, head=11, keys="all")
    px = png_pixels(one)
    t_map = time.perf_counter() - t0
    assert px.std() > 20
    ax = one.axes[0]
    assert ax.get_xlim() == (0.0, 240.0) and ax.get_xlabel() == "time (s)"
    assert ax.images[0].get_array().shape[0] == len(alp.key_rows(cap.layout[0], 512, "all"))
    assert t_grid < 60 and t_map < 30, (t_grid, t_map)
    stats = full_size_stats_capture()
    from attnlens.analyzers.table import analyze

    t0 = time.perf_counter()
    fig = alp.scores(analyze(stats), "monotonic_alignment")
    px = png_pixels(fig)
    t_scores = time.perf_counter() - t0
    assert fig.axes[0].images[0].get_array().shape == (24, 16)
    assert "max 1.00 at layer 5 head 9" in fig.axes[0].get_title()  # the planted staircase
    assert px.std() > 20 and t_scores < 60


def test_save_formats_are_atomic(tmp_path):
    cap = make_capture()
    fig = alp.map(cap, -1, 0, 0)
    for suffix, magic in ((".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF"), (".html", b"<!DOCTYPE")):
        path = alp.save(fig, tmp_path / f"fig{suffix}")
        assert open(path, "rb").read(len(magic)) == magic
    assert sorted(os.listdir(tmp_path)) == ["fig.html", "fig.pdf", "fig.png", "fig.svg"]  # no temp files left
    with pytest.raises(ValueError, match="cannot write a matplotlib figure as 'bmp'"):
        alp.save(fig, tmp_path / "fig.bmp")
    with pytest.raises(TypeError, match="matplotlib or plotly Figure"):
        alp.save(object(), tmp_path / "x.png")


def test_cli_plots_a_saved_capture(tmp_path, capsys):
    from attnlens.cli import main

    cap = make_capture()
    path = save_capture(cap, tmp_path / "cap.attn")
    out = tmp_path / "m.png"
    assert (
        main(["plot", str(path), "--kind", "map", "--step", "-1", "--layer", "1", "--head", "2", "--out", str(out)])
        == 0
    )
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(path), "--kind", "heads", "--layer", "0", "--keys", "lyrics"]) == 0
    assert (tmp_path / "cap.heads.png").exists()
    assert main(["plot", str(path), "--kind", "map", "--layer", "7", "--head", "0"]) == 1
    assert "layers=[7]" in capsys.readouterr().err
    nomaps = make_capture(maps=False)
    p2 = save_capture(nomaps, tmp_path / "stats.attn")
    assert main(["plot", str(p2), "--kind", "map", "--layer", "0", "--head", "0"]) == 1
    assert "maps=True" in capsys.readouterr().err


def test_not_captured_error_reaches_the_figure_functions():
    cap = make_capture(maps=False)
    for call in (lambda: alp.heads(cap), lambda: alp.map(cap, -1, 0, 0), lambda: alp.compare({"a": cap})):
        with pytest.raises(NotCapturedError, match=r"al.capture\(\.\.\., maps=True\)"):
            call()
