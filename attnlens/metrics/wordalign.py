"""Whisper-style word timestamps from cross-attention maps.

For lyric maps ``maps[head, token, frame]`` (attention probabilities of the chosen heads, lyric columns only):

1. per head, softmax over frames of the log-probabilities: ``W[h, t, f] = P[h, t, f] / sum_f P[h, t, f]``
   (Whisper applies the softmax to the logits; probabilities keep them only up to a per-frame constant, so the
   log-probabilities stand in for them; a token row that is all zero becomes uniform);
2. z-score across tokens for every (head, frame): ``(W - mean_t W) / std_t W`` (population std; 0 where std is 0),
   then weighted by the frame's lyric mass relative to the clip's largest, ``m_f / max_f m_f`` with
   ``m_f = Σ_t P[h, t, f]`` (``lyric_weight``; recipe ``"song"``): a frame whose attention goes to other keys (caption,
   timbre) is no evidence for any word, where the z-score alone would magnify the noise of near-zero columns;
3. median filter along frames, edges mirrored (Whisper's reflect padding); skipped when ``frames <= width // 2``, as
   Whisper does. Width 7 (Whisper's, at its 50 Hz); recipe ``"song"`` takes Whisper's 140 ms in frames, the odd number ``2·floor(0.07·frame_rate) + 1``:
   7 at Whisper's 50 Hz, 1 (no filter) at ACE-Step's 12.5 Hz, where 7 frames would span 560 ms, longer than many
   sung words;
4. mean over heads -> ``M[token, frame]``;
5. exact DTW on ``-M`` (rows tokens, columns frames). With ``open_ends`` (recipe ``"song"``) the rows are framed by a
   leading and a trailing *silence* row of score ``silence`` (0.5: half a token-standard-deviation at the clip's
   fullest lyric attention) and the columns by one virtual frame at each end that only the silence rows may take:
   leading frames where the first token scores below ``silence`` go to no word (an intro), and likewise trailing
   frames after the last token (an outro); without (recipe ``"whisper"``) the path starts on the first token at frame 0
   and ends on the last token at the last frame (Whisper's rule);
6. token ``k`` starts at the first path frame on row ``k``; word ``w`` starts where its first token starts and ends
   where the next word starts; the last word ends where the trailing silence starts (at the end of the last frame
   without ``open_ends``). Times = frame / frame_rate seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.ndimage import median_filter

from .warping import dtw


@dataclass
class TokenAlignment:
    """Result of :func:`align_tokens`. Frames are DiT frames; seconds = frame / frame_rate."""

    token_start_frame: np.ndarray
    """[token] first frame of every token on the path."""
    word_ids: np.ndarray
    """[token] word index of every token (-1: belongs to no word)."""
    word_start_frame: np.ndarray
    """[word] first frame of every word (words 0..W-1)."""
    word_end_frame: np.ndarray
    """[word] frame where the word ends (exclusive): the next word's start, or the frame count for the last word."""
    frame_rate: float
    path: np.ndarray = field(repr=False)
    """DTW path [2, steps]: token rows, frame columns."""
    matrix: np.ndarray = field(repr=False)
    """M [token, frame] after normalization, filtering and head averaging."""

    @property
    def word_start(self) -> np.ndarray:
        """Word start times in seconds."""
        return self.word_start_frame / self.frame_rate

    @property
    def word_end(self) -> np.ndarray:
        """Word end times in seconds."""
        return self.word_end_frame / self.frame_rate


def _as_maps(maps: Any) -> np.ndarray:
    x = (
        maps.detach().cpu().to(torch.float64).numpy()
        if isinstance(maps, torch.Tensor)
        else np.asarray(maps, dtype=np.float64)
    )
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected maps [head, token, frame] (or one map [token, frame]); got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"empty maps (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        raise ValueError(f"maps hold a non-finite value at index {idx} [head, token, frame]")
    if np.any(x < 0):
        idx = tuple(int(i) for i in np.argwhere(x < 0)[0])
        raise ValueError(f"maps hold a negative probability at index {idx}; expected attention probabilities")
    return x


def default_medfilt_width(frame_rate: float) -> int:
    """Whisper's median filter (7 frames at 50 Hz = 140 ms) in frames at ``frame_rate``: ``2·floor(0.07·fr) + 1``."""
    return 2 * int(np.floor(0.07 * frame_rate + 1e-9)) + 1


RECIPES = ("whisper", "song")


def alignment_matrix(maps: Any, medfilt_width: int = 7, lyric_weight: bool = False) -> np.ndarray:
    """Steps 1-4 of the module docstring: ``M[token, frame]`` from ``maps[head, token, frame]``."""
    x = _as_maps(maps)
    if medfilt_width < 1 or medfilt_width % 2 == 0:
        raise ValueError(f"medfilt_width must be a positive odd number; got {medfilt_width}")
    s = x.sum(-1, keepdims=True)
    w = np.where(s > 0, x / np.where(s > 0, s, 1.0), 1.0 / x.shape[-1])  # softmax over frames of log P
    mean = w.mean(axis=1, keepdims=True)
    std = w.std(axis=1, keepdims=True)
    z = np.where(std > 0, (w - mean) / np.where(std > 0, std, 1.0), 0.0)
    if lyric_weight:
        m = x.sum(axis=1, keepdims=True)  # [head, 1, frame]: lyric mass of every frame
        top = m.max(axis=-1, keepdims=True)
        z = z * np.where(top > 0, m / np.where(top > 0, top, 1.0), 0.0)
    if medfilt_width > 1 and z.shape[-1] > medfilt_width // 2:
        z = median_filter(z, size=(1, 1, medfilt_width), mode="mirror")
    return z.mean(axis=0)


_BLOCKED = 1e9  # cost of a token on a virtual frame (a finite "never": the DTW needs finite costs)


def _open_ends_cost(M: np.ndarray, silence: float) -> np.ndarray:
    """``-M`` ``[token, frame]`` framed by silence rows (cost ``-silence``) and virtual frames ``[token+2, frame+2]``."""
    n, F = M.shape
    cost = np.full((n + 2, F + 2), _BLOCKED)
    cost[0, :] = -silence
    cost[-1, :] = -silence
    cost[1:-1, 1:-1] = -M
    return cost


def align_tokens(
    maps: Any,
    word_ids: Any,
    frame_rate: float,
    medfilt_width: int | None = None,
    dtw_rule: str = "exact",
    open_ends: bool | None = None,
    lyric_weight: bool | None = None,
    silence: float = 0.5,
    recipe: str = "whisper",
) -> TokenAlignment:
    """Word timestamps from lyric maps ``maps[head, token, frame]`` (see the module docstring).

    ``recipe`` sets the defaults of the three choices below: ``"whisper"`` (default; Whisper's ``timing.py``: median
    filter of 7 frames, unweighted z-scores, pinned ends) or ``"song"`` (filter of Whisper's 140 ms in frames, lyric-
    mass weighting, open ends). ``medfilt_width``, ``lyric_weight`` and ``open_ends`` override it one by one.

    ``word_ids[token]``: word index of each token (0, 1, 2, ... in order, each word's tokens contiguous; -1 for tokens
    that belong to no word, which still take part in the DTW). ``frame_rate``: frames per second (12.5 for ACE-Step).
    ``open_ends``: leading/trailing frames may belong to no word (step 5), scored ``silence``; ``lyric_weight``: step
    2's weighting.
    """
    if not frame_rate > 0:
        raise ValueError(f"frame_rate must be > 0; got {frame_rate}")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}; got {recipe!r}")
    song = recipe == "song"
    if medfilt_width is None:
        medfilt_width = default_medfilt_width(frame_rate) if song else 7
    lyric_weight = song if lyric_weight is None else lyric_weight
    open_ends = song if open_ends is None else open_ends
    M = alignment_matrix(maps, medfilt_width, lyric_weight=lyric_weight)
    n_tok, n_frames = M.shape
    wid = np.asarray(word_ids.cpu() if isinstance(word_ids, torch.Tensor) else word_ids, dtype=np.int64)
    if wid.shape != (n_tok,):
        raise ValueError(f"word_ids has shape {wid.shape}; expected ({n_tok},), one per token row")
    real = wid[wid >= 0]
    n_words = int(real.max()) + 1 if real.size else 0
    if real.size and (np.any(np.diff(real) < 0) or np.any(np.diff(real) > 1) or real[0] != 0):
        raise ValueError("word_ids must number the words 0, 1, 2, ... in token order, each word's tokens contiguous")
    if real.size and len(np.unique(real)) != n_words:
        raise ValueError("word_ids skip a word number")
    end_frame = n_frames
    if open_ends:
        rows, cols = dtw(_open_ends_cost(M, float(silence)), rule=dtw_rule)
        keep = (rows >= 1) & (rows <= n_tok) & (cols >= 1) & (cols <= n_frames)
        if not np.all(np.isin(np.arange(1, n_tok + 1), rows[keep])):
            raise ValueError(f"{n_tok} tokens cannot be aligned to {n_frames} frames (fewer frames than tokens?)")
        end_frame = int(cols[keep & (rows == n_tok)].max())  # last token's last frame + 1 (cols are shifted by 1)
        rows, cols = rows[keep] - 1, cols[keep] - 1
    else:
        rows, cols = dtw(-M, rule=dtw_rule)
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    tok_start = cols[first]  # the path visits every row, in order
    word_start = np.array([tok_start[np.flatnonzero(wid == w)[0]] for w in range(n_words)], dtype=np.int64)
    word_end = np.append(word_start[1:], end_frame).astype(np.int64) if n_words else np.zeros(0, dtype=np.int64)
    return TokenAlignment(
        token_start_frame=tok_start.astype(np.int64),
        word_ids=wid,
        word_start_frame=word_start,
        word_end_frame=word_end,
        frame_rate=float(frame_rate),
        path=np.stack([rows, cols]),
        matrix=M,
    )


def format_lrc_time(seconds: float) -> str:
    """``[mm:ss.xx]`` for a time in seconds (rounded to centiseconds; minutes grow past 99 if needed)."""
    if not np.isfinite(seconds) or seconds < 0:
        raise ValueError(f"LRC time must be a finite non-negative number of seconds; got {seconds}")
    cs = int(round(seconds * 100))
    return f"[{cs // 6000:02d}:{(cs % 6000) // 100:02d}.{cs % 100:02d}]"


def format_lrc(lines: list[tuple[float, str]]) -> str:
    """LRC text: one ``[mm:ss.xx]text`` per ``(start_seconds, text)``."""
    return "\n".join(f"{format_lrc_time(t)}{text}" for t, text in lines)
