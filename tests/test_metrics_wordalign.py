"""Whisper-style word timestamps on planted maps; LRC formatting; timing error."""

import numpy as np
import pytest
import scipy.ndimage

from attnlens.metrics import align_tokens, alignment_matrix, format_lrc, timing_error
from attnlens.metrics.wordalign import format_lrc_time


def _staircase(token_frames, n_frames, peak=0.7, n_other=5):
    """maps [1, token, frame]: token k takes `peak` of each frame in [token_frames[k], token_frames[k+1])."""
    n = len(token_frames)
    bounds = list(token_frames) + [n_frames]
    P = np.full((n, n_frames), (1 - peak) / (n - 1 + n_other))
    for k in range(n):
        P[k, bounds[k] : bounds[k + 1]] = peak
    return P[None]


def test_planted_staircase_exact_to_one_frame():
    rng = np.random.default_rng(0)
    token_frames = [0, 4, 9, 11, 18, 25, 26, 33, 40, 44]  # 10 tokens, uneven lengths
    word_ids = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5])
    maps = _staircase(token_frames, 50)
    maps = maps * rng.uniform(0.9, 1.1, size=maps.shape)  # mild noise
    ta = align_tokens(maps, word_ids, frame_rate=12.5)
    want_tok = np.array(token_frames)
    assert np.all(np.abs(ta.token_start_frame - want_tok) <= 1)
    want_word = np.array([0, 9, 11, 26, 33, 44])
    assert np.all(np.abs(ta.word_start_frame - want_word) <= 1)
    assert ta.word_end_frame.tolist() == ta.word_start_frame[1:].tolist() + [50]
    assert ta.word_start == pytest.approx(ta.word_start_frame / 12.5)


def test_clean_staircase_is_exact():
    token_frames = [0, 5, 10, 15, 20, 25]
    ta = align_tokens(_staircase(token_frames, 30), np.arange(6), frame_rate=10.0)
    assert ta.token_start_frame.tolist() == token_frames
    assert ta.word_start.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


def test_tokens_outside_words_take_part():
    token_frames = [0, 6, 12, 18]
    ta = align_tokens(_staircase(token_frames, 24), [0, -1, 1, 1], frame_rate=12.5)
    assert ta.word_start_frame.tolist() == [0, 12]


def test_matrix_steps_by_hand():
    rng = np.random.default_rng(1)
    maps = rng.random((2, 4, 20))
    w = maps / maps.sum(-1, keepdims=True)
    z = (w - w.mean(1, keepdims=True)) / w.std(1, keepdims=True)
    mass = maps.sum(1, keepdims=True)  # [head, 1, frame] lyric mass per frame
    zw = z * mass / mass.max(-1, keepdims=True)
    # Whisper pads with torch's reflect mode (edge not repeated) = scipy "mirror"
    import torch

    def med(a):
        t = torch.nn.functional.pad(torch.tensor(a), (3, 3, 0, 0), mode="reflect")
        return t.unfold(-1, 7, 1).sort()[0][..., 3].numpy()

    assert np.allclose(alignment_matrix(maps, lyric_weight=True), med(zw).mean(0), atol=1e-12)
    assert np.allclose(alignment_matrix(maps, medfilt_width=1, lyric_weight=True), zw.mean(0), atol=1e-12)
    assert np.allclose(alignment_matrix(maps), med(z).mean(0), atol=1e-12)  # Whisper's matrix
    assert np.allclose(med(z), scipy.ndimage.median_filter(z, size=(1, 1, 7), mode="mirror"))


def test_bad_word_ids_and_maps():
    maps = _staircase([0, 5, 10], 15)
    with pytest.raises(ValueError, match="word_ids"):
        align_tokens(maps, [0, 2, 1], 12.5)
    with pytest.raises(ValueError, match="one per token"):
        align_tokens(maps, [0, 1], 12.5)
    bad = maps.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match=r"index \(0, 1, 2\)"):
        align_tokens(bad, [0, 1, 2], 12.5)
    with pytest.raises(ValueError, match="frame_rate"):
        align_tokens(maps, [0, 1, 2], 0)


def test_lrc_format():
    assert format_lrc_time(0) == "[00:00.00]"
    assert format_lrc_time(61.234) == "[01:01.23]"
    assert format_lrc_time(59.999) == "[01:00.00]"
    assert format_lrc([(0.8, "walking down"), (125.5, "the road")]) == "[00:00.80]walking down\n[02:05.50]the road"
    with pytest.raises(ValueError):
        format_lrc_time(-1)


def test_timing_error_hand_computed():
    true = [("Walking", 0.0, 0.5), ("down", 0.5, 1.0), ("the", 1.0, 1.2), ("road", 1.2, 2.0)]
    pred = [{"word": "walking", "start": 0.08}, {"word": "down,", "start": 0.35}, {"word": "the", "start": 1.1}, 1.6]
    r = timing_error(pred, true)
    assert r.error_ms == pytest.approx([80.0, -150.0, 100.0, 400.0])
    assert r.within_100 == 0.5 and r.within_200 == 0.75
    assert r.mean_abs_ms == pytest.approx(182.5) and r.median_abs_ms == pytest.approx(125.0)
    with pytest.raises(ValueError, match="word 1 differs"):
        timing_error([("walking", 0.0), ("up", 0.5)], true[:2])
    with pytest.raises(ValueError, match="matched in order"):
        timing_error(pred[:3], true)


def _with_intro_outro(token_frames, n_frames, intro, outro, seed=0):
    """A planted staircase framed by an instrumental intro of `intro` frames and an outro of `outro` frames in
    which the head looks at tokens out of order (the last token during the intro, the first during the outro)."""
    rng = np.random.default_rng(seed)
    maps = _staircase([f + intro for f in token_frames], n_frames + intro)[0]
    n = maps.shape[0]
    out = np.concatenate([maps, np.zeros((n, outro))], axis=1)
    out[:, :intro] = maps[:, -1:]  # an intro frame looks like a frame of the last token
    out[:, -outro:] = maps[:, :1]  # an outro frame looks like a frame of the first token
    return (out * rng.uniform(0.9, 1.1, size=out.shape))[None]


def test_open_ends_find_the_intro_and_outro():
    token_frames = [0, 5, 9, 16, 20]  # last token ends at frame 26 (relative)
    maps = _with_intro_outro(token_frames, 26, intro=6, outro=8)
    ta = align_tokens(maps, np.arange(5), frame_rate=12.5, open_ends=True)
    assert ta.word_start_frame.tolist() == [6, 11, 15, 22, 26]
    assert ta.word_end_frame[-1] == 32  # the outro (frames 32..39) belongs to no word
    pinned = align_tokens(maps, np.arange(5), frame_rate=12.5)
    assert pinned.word_start_frame[0] == 0 and pinned.word_end_frame[-1] == 40  # Whisper's rule: pinned ends


def test_open_ends_change_nothing_without_intro():
    token_frames = [0, 5, 10, 15, 20, 25]
    maps = _staircase(token_frames, 30)
    a = align_tokens(maps, np.arange(6), frame_rate=10.0, open_ends=True)
    b = align_tokens(maps, np.arange(6), frame_rate=10.0)
    assert a.word_start_frame.tolist() == b.word_start_frame.tolist() == token_frames
    assert a.word_end_frame.tolist() == b.word_end_frame.tolist()


def test_intro_that_looks_away_from_the_lyrics():
    """During the intro the head attends to other keys (caption, timbre): the lyric columns hold ~0 mass with noise.
    Unweighted z-scores magnify that noise into evidence for some token; the lyric-mass weighting does not."""
    rng = np.random.default_rng(3)
    intro, token_frames, n_frames = 7, [0, 5, 9, 16, 20], 26
    maps = _staircase([f + intro for f in token_frames], n_frames + intro)[0]
    maps[:, :intro] = rng.uniform(0, 1e-4, size=(maps.shape[0], intro))  # lyric mass ≈ 0 in the intro
    maps[0, :intro] += 2e-4  # ... and the first token slightly ahead of the others there
    ta = align_tokens(maps, np.arange(5), frame_rate=12.5, recipe="song")
    assert ta.word_start_frame.tolist() == [7, 12, 16, 23, 27]
    unweighted = align_tokens(maps, np.arange(5), frame_rate=12.5, recipe="song", lyric_weight=False)
    assert unweighted.word_start_frame[0] == 0  # the noise reads as the first word


def test_recipes():
    """Recipe "whisper" (default) = width 7, unweighted, pinned ends; "song" = width from the frame rate, weighted, open."""
    maps = _with_intro_outro([0, 5, 9, 16, 20], 26, intro=6, outro=8)
    w = align_tokens(maps, np.arange(5), frame_rate=12.5)
    explicit = align_tokens(maps, np.arange(5), frame_rate=12.5, medfilt_width=7, lyric_weight=False, open_ends=False)
    assert w.word_start_frame.tolist() == explicit.word_start_frame.tolist() and w.word_start_frame[0] == 0
    song = align_tokens(maps, np.arange(5), frame_rate=12.5, recipe="song")
    explicit = align_tokens(maps, np.arange(5), frame_rate=12.5, medfilt_width=1, lyric_weight=True, open_ends=True)
    assert song.word_start_frame.tolist() == explicit.word_start_frame.tolist()
    with pytest.raises(ValueError, match="recipe"):
        align_tokens(maps, np.arange(5), frame_rate=12.5, recipe="karaoke")
