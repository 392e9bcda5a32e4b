"""Synthetic captures for the plot tests (imported by tests/test_plot_*.py) and checks of the builders themselves.

Layouts are written out by hand (header, a ``[verse]`` tag in three pieces, sung words in pieces, line breaks,
end token, timbre, caption, padding) so the expected rows of every view are known without running the library.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch

from attnlens.captures.layout import ItemLayout, Layout
from attnlens.captures.result import Capture

WORDS = [["walking", "down", "the"], ["morning", "road", "the"]]


def make_layout(
    lines: list[list[str]] = WORDS, pieces: int = 2, n_caption: int = 5, n_padding: int = 0, n_timbre: int = 1
) -> ItemLayout:
    seg, tok, kind, wid, lid = [], [], [], [], []

    def add(s, t, k=None, w=-1, li=-1):
        seg.append(s)
        tok.append(t)
        kind.append(k)
        wid.append(w)
        lid.append(li)

    add("lyric_meta", "# Languages\n", "header")
    add("lyric_meta", "en\n\n# Lyric\n", "header")
    for t in ("[", "verse", "]"):
        add("lyric_meta", t, "tag")
    add("lyric_meta", "\n", "space")
    words, word_line = [], []
    for li, line in enumerate(lines):
        for w in line:
            cut = np.linspace(0, len(w), pieces + 1).round().astype(int)
            for j in range(pieces):
                add("lyric", (" " if j == 0 else "") + w[cut[j] : cut[j + 1]], "sung", len(words), li)
            words.append(w)
            word_line.append(li)
        add("lyric_meta", "\n", "space")
    add("lyric_meta", "<|endoftext|>", "end")
    for _ in range(n_timbre):
        add("timbre", None)
    caption = ["#", " Ca", "ption", "\n", "f", "olk", ",", " warm", " vocals"][:n_caption]
    for t in caption:
        add("caption", t)
    for _ in range(n_padding):
        add("padding", None)
    return ItemLayout(
        segments=seg,
        tokens=tok,
        kinds=kind,
        word_index=wid,
        line_index=lid,
        words=words,
        word_line=word_line,
        lines=[" ".join(x) for x in lines],
    )


def planted_maps(
    n_steps: int, n_layers: int, n_heads: int, n_frames: int, item: ItemLayout, seed: int = 0
) -> np.ndarray:
    """Maps [step, layer, 1, head, frame, key]: softmax of noise plus a staircase over the sung tokens whose
    strength grows with the head index (head 0 is diffuse, the last head sharp), and a sink on the timbre key for
    odd layers. Every (step, layer, head) differs."""
    rng = np.random.default_rng(seed)
    K = item.n_keys
    L = item.lyric_positions()
    logits = rng.normal(0.0, 1.0, size=(n_steps, n_layers, 1, n_heads, n_frames, K)).astype(np.float32)
    stair = L[np.minimum((np.arange(n_frames) * len(L)) // n_frames, len(L) - 1)]  # [frame]
    for h in range(n_heads):
        logits[:, :, :, h, np.arange(n_frames), stair] += 1.0 + 6.0 * h / max(n_heads - 1, 1)
    timbre = [k for k, s in enumerate(item.segments) if s == "timbre"]
    if timbre:
        logits[:, 1::2, :, :, :, timbre[0]] += 4.0
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)
    return p


def make_capture(
    n_steps: int = 2,
    n_layers: int = 3,
    n_heads: int = 4,
    n_frames: int = 50,
    item: ItemLayout | None = None,
    seed: int = 0,
    maps: bool = True,
) -> Capture:
    item = item or make_layout()
    m = planted_maps(n_steps, n_layers, n_heads, n_frames, item, seed)
    cap = Capture(
        layers=list(range(n_layers)),
        heads=list(range(n_heads)),
        steps=list(range(n_steps)),
        timesteps=[1.0 - i / n_steps for i in range(n_steps)],
        layout=Layout(items=[item], source="user"),
        batch_labels=["cond:0"],
        model={"class": "synthetic"},
    )
    if maps:
        cap.maps = torch.from_numpy(m)
    else:
        shape = (n_steps, n_layers, 1, n_heads, n_frames)
        cap.stats = {
            "entropy": torch.zeros(shape),
            "mass": torch.full(shape + (5,), 0.2),
            "argmax": torch.zeros(shape, dtype=torch.int32),
            "entropy_lyric": torch.zeros(shape),
            "lyric_argmax": torch.zeros(shape, dtype=torch.int32),
        }
    return cap


@functools.lru_cache(maxsize=1)
def full_size_layout() -> ItemLayout:
    """512 keys like a long ACE-Step item: ~100 sung words in 3 pieces, 8 lines, timbre, caption, padding."""
    vocab = ["river", "light", "morning", "road", "singing", "the", "of", "home", "again", "slow", "bright", "we"]
    lines = [[vocab[(i * 5 + j) % len(vocab)] for j in range(12)] for i in range(8)]
    base = make_layout(lines, pieces=3, n_caption=9)
    pad = 512 - base.n_keys
    return make_layout(lines, pieces=3, n_caption=9, n_padding=pad)


@functools.lru_cache(maxsize=1)
def full_size_maps_capture() -> Capture:
    """Full-size shape where it matters for drawing: 3,000 frames, 512 keys, 16 heads; maps of layer 3 at one step
    (the only maps a 24-layer figure of one layer needs)."""
    item = full_size_layout()
    rng = np.random.default_rng(1)
    F, K, H = 3000, item.n_keys, 16
    L = item.lyric_positions()
    maps = np.empty((1, 1, 1, H, F, K), dtype=np.float32)
    stair = L[np.minimum((np.arange(F) * len(L)) // F, len(L) - 1)]
    for h in range(H):
        lg = rng.standard_normal((F, K), dtype=np.float32)
        lg[np.arange(F), stair] += 2.0 + 0.5 * h
        lg[:, (h * 37) % K] += 3.0
        np.exp(lg - lg.max(-1, keepdims=True), out=lg)
        maps[0, 0, 0, h] = lg / lg.sum(-1, keepdims=True)
    return Capture(
        layers=[3],
        heads=list(range(H)),
        steps=[7],
        timesteps=[1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3],
        layout=Layout(items=[item], source="user"),
        maps=torch.from_numpy(maps),
        batch_labels=["cond:0"],
        frame_rate=12.5,
    )


@functools.lru_cache(maxsize=1)
def full_size_stats_capture() -> Capture:
    """24 layers × 16 heads × 3,000 frames of per-frame statistics (no maps), with a clean staircase planted in
    layer 5 head 9 so that its alignment scores stand out."""
    item = full_size_layout()
    rng = np.random.default_rng(2)
    S, Ly, B, H, F = 1, 24, 1, 16, 3000
    n = len(item.lyric_positions())
    mass = rng.dirichlet(np.ones(5), size=(S, Ly, B, H, F)).astype(np.float32)
    la = rng.integers(0, n, size=(S, Ly, B, H, F)).astype(np.int32)
    la[0, 5, 0, 9] = np.minimum(np.arange(F) * n // F, n - 1)
    stats = {
        "entropy": torch.from_numpy(rng.uniform(0.3, 0.9, (S, Ly, B, H, F)).astype(np.float32)),
        "mass": torch.from_numpy(mass),
        "argmax": torch.from_numpy(la.copy()),
        "entropy_lyric": torch.from_numpy(rng.uniform(0.3, 0.9, (S, Ly, B, H, F)).astype(np.float32)),
        "lyric_argmax": torch.from_numpy(la),
    }
    return Capture(
        layers=list(range(Ly)),
        heads=list(range(H)),
        steps=[7],
        timesteps=[1.0, 0.95, 0.9, 0.83, 0.75, 0.64, 0.5, 0.3],
        layout=Layout(items=[item], source="user"),
        stats=stats,
        batch_labels=["cond:0"],
    )


def png_pixels(fig) -> np.ndarray:
    """RGB pixels [h, w, 3] of a matplotlib figure rendered to PNG."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64)


# ---------------------------------------------------------------- checks of the builders
def test_planted_maps_are_distributions_and_differ():
    item = make_layout()
    m = planted_maps(2, 2, 3, 20, item)
    np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-5)
    assert not np.allclose(m[0, 0, 0, 0], m[0, 0, 0, 1])
    L = item.lyric_positions()
    # the sharpest head puts the most weight on the planted staircase token
    f = 10
    stair = L[(f * len(L)) // 20]
    assert m[0, 0, 0, 2, f].argmax() == stair


def test_full_size_layout_shape():
    item = full_size_layout()
    assert item.n_keys == 512
    assert len(item.words) == 96
    assert item.segments.count("padding") > 0
