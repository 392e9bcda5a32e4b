"""Decode "tiny songs" latents back into words: the demo task's stand-in for Whisper.

The decoder reads a latent sequence ``X`` ``[T, C]`` with no access to the lyrics. For each known voice
``v`` (gain ``g``, offset ``o``) it finds the cheapest explanation of the clip as silence frames and
words, by a segmental dynamic programme over time (connected-word recognition with whole-word
templates)::

    Y[t]            = X[t] - o                                   (remove the voice's offset)
    sil(t)          = ||Y[t]||^2                                 (frame t is silence)
    G_{w,d}         = g * stretch(P_w, d)                        (word w sung in d frames, coloured)
    seg(w, d, t)    = min_{a in [a_lo, a_hi]} ||Y[t-d:t] - a G_{w,d}||^2      (word w ends at t)
    B(0) = 0,  B(t) = min( B(t-1) + min(sil(t-1), garbage),
                           min_{w,d} B(t-d) + seg(w, d, t) + word_penalty + dur_penalty(w, d) )

``d`` ranges over ``round(L_w (1 - tolerance)) .. round(L_w (1 + tolerance))``;
``dur_penalty = duration_weight * max(0, |d / L_w - 1| - free_stretch)^2 * d`` charges only stretch
beyond what the task itself produces. ``garbage = garbage_level * C`` is the price of a frame that is
neither silence nor part of a word (a filler model): a stretch that no word template fits to a mean
squared residual below ``garbage_level`` per value is left unrecognized (deletions) instead of being
forced into spurious words, so garbage in gives WER near 1, not far above it. The voice with the lowest ``B(T)`` wins (or the one given).
Backtracking gives the words and their start/end latent frames. ``align`` runs the same programme
restricted to a known word sequence (forced alignment), for the timing of known lyrics.

Ground-truth renders fall on an exact template (same duration, same interpolation), so they decode
with cost ~ noise; the free amplitude ``a`` absorbs loudness jitter and a model's amplitude errors,
and the duration tolerance absorbs timing errors. The segment costs and the programme are compiled
with numba and use no BLAS (whose thread pool stalls on small matrices on a busy machine).

The demo's word decoder (segment costs, the forced and free dynamic programs) is one algorithm; hence over 400
lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from attnlens.demo.task import LATENT_FRAME_RATE, TinySongs, Voice, stretch


@dataclass(frozen=True)
class Transcript:
    """What the decoder heard in one clip."""

    text: str  # words joined by single spaces ("" when nothing was sung)
    words: tuple[str, ...]
    start_frames: tuple[int, ...]  # latent frames, inclusive
    end_frames: tuple[int, ...]  # latent frames, exclusive
    starts_s: tuple[float, ...]
    ends_s: tuple[float, ...]
    voice: str  # the voice whose colouring explained the clip best
    cost: float  # B(T) / (T * C): mean squared residual per latent value (penalties included)
    garbage_frames: int = 0  # frames explained as neither silence nor a word (unintelligible)
    voice_costs: dict[str, float] = field(default_factory=dict)  # same, per voice tried


SILENCE, GARBAGE = -1, -2  # back-pointer codes for a frame explained without a word


@numba.njit(cache=True)
def _segment_dp(sil, seg, durs, pen, garbage):  # pragma: no cover - compiled
    """Free word loop. sil [T], seg [T + 1, K], durs [K], pen [K], garbage: per-frame cost.

    B(t) = min(B(t-1) + min(sil[t-1], garbage), min_k B(t - d_k) + seg[t, k] + pen[k]).
    Returns (B [T + 1], back [T + 1]): back[t] = template index ending at t, SILENCE or GARBAGE.
    """
    n = sil.shape[0]
    n_templates = durs.shape[0]
    best = np.empty(n + 1)
    back = np.full(n + 1, SILENCE, dtype=np.int64)
    best[0] = 0.0
    for t in range(1, n + 1):
        if sil[t - 1] <= garbage:
            b = best[t - 1] + sil[t - 1]
            arg = SILENCE
        else:
            b = best[t - 1] + garbage
            arg = GARBAGE
        for k in range(n_templates):
            d = durs[k]
            if d <= t:
                c = best[t - d] + seg[t, k] + pen[k]
                if c < b:
                    b = c
                    arg = k
        best[t] = b
        back[t] = arg
    return best, back


@numba.njit(cache=True)
def _forced_dp(sil, seg, durs, pen, garbage, word_of, n_words):  # pragma: no cover - compiled
    """Forced alignment: B[t, i] = best cost of frames [0, t) having sung the first i words of the line.

    Template k can only be line word word_of[k]. back[t, i] = template that ended word i - 1 at t,
    or SILENCE / GARBAGE for a frame without a word. Returns (B [T + 1, n + 1], back).
    """
    n = sil.shape[0]
    n_templates = durs.shape[0]
    best = np.full((n + 1, n_words + 1), np.inf)
    back = np.full((n + 1, n_words + 1), SILENCE, dtype=np.int64)
    best[0, 0] = 0.0
    for t in range(1, n + 1):
        step = min(sil[t - 1], garbage)
        code = SILENCE if sil[t - 1] <= garbage else GARBAGE
        for i in range(n_words + 1):
            best[t, i] = best[t - 1, i] + step
            back[t, i] = code
        for k in range(n_templates):
            d = durs[k]
            if d <= t:
                i = word_of[k]
                c = best[t - d, i] + seg[t, k] + pen[k]
                if c < best[t, i + 1]:
                    best[t, i + 1] = c
                    back[t, i + 1] = k
    return best, back


@numba.njit(cache=True, fastmath=True)
def _segment_costs(
    x, sil, bank, norms, corr, durs, pens, ks, slot, n_slots, voices, lo, hi
):  # pragma: no cover - compiled
    """Cheapest template per (voice, end frame, slot).

    x [T, C] (C-contiguous), sil [V, T], bank [V, K, maxd * C] coloured flat templates (zero padded),
    norms/corr [V, K] (``||G||^2`` and ``<tiled offset, G>``), durs/pens [K]; ks [M] templates to score,
    slot [M] the output column of each; voices [U] the voice rows to score (output row u is voices[u]).
    For template k of duration d ending at t, with dot = <X[t-d:t], G_k> - corr_k = <Y[t-d:t], G_k> and
    a = clip(dot / norm_k, lo, hi): cost = sum(sil[t-d:t]) - 2 a dot + a^2 norm_k + pen_k.
    Returns (seg [U, T + 1, n_slots], arg [U, T + 1, n_slots]); arg is -1 where no template fits.
    """
    n, c = x.shape
    n_voices = voices.shape[0]
    xf = x.reshape(-1)
    seg = np.full((n_voices, n + 1, n_slots), np.inf)
    arg = np.full((n_voices, n + 1, n_slots), -1, dtype=np.int64)
    csum = np.zeros(n + 1)
    for u in range(n_voices):
        v = voices[u]
        for t in range(n):
            csum[t + 1] = csum[t] + sil[v, t]
        for m in range(ks.shape[0]):
            k = ks[m]
            d = durs[k]
            length = d * c
            g = bank[v, k, :length]
            nrm = norms[v, k]
            cr = corr[v, k]
            pen = pens[k]
            s = slot[m]
            for t in range(d, n + 1):
                xs = xf[(t - d) * c : (t - d) * c + length]
                dot = 0.0
                for j in range(length):
                    dot += xs[j] * g[j]
                dot -= cr
                a = dot / nrm
                if a < lo:
                    a = lo
                elif a > hi:
                    a = hi
                cost = csum[t] - csum[t - d] + a * (a * nrm - 2.0 * dot) + pen
                if cost < seg[u, t, s]:
                    seg[u, t, s] = cost
                    arg[u, t, s] = k
    return seg, arg


class WordDecoder:
    """Turn latents ``[T, C]`` into words and word times (see the module docstring for the model).

    ``WordDecoder(task)`` takes the patterns and voices from a ``TinySongs``; ``WordDecoder(patterns=...,
    voices=...)`` from explicit arrays.
    """

    def __init__(
        self,
        task: TinySongs | None = None,
        *,
        patterns: Mapping[str, np.ndarray] | None = None,
        voices: Mapping[str, Voice] | None = None,
        frame_rate: float = LATENT_FRAME_RATE,
        tolerance: float = 0.3,
        free_stretch: float | None = None,
        duration_weight: float = 4.0,
        word_penalty: float = 1.0,
        gain_range: tuple[float, float] = (0.5, 1.6),
        garbage_level: float = 0.3,
    ) -> None:
        if task is not None:
            if patterns is not None or voices is not None:
                raise ValueError("give either task or patterns/voices, not both")
            patterns, voices = task.patterns, task.voices
            if free_stretch is None:
                free_stretch = task.stretch
        if patterns is None or voices is None:
            raise ValueError("WordDecoder needs a TinySongs task, or both patterns= and voices=")
        if not patterns or not voices:
            raise ValueError("patterns and voices must not be empty")
        if free_stretch is None:
            free_stretch = 0.15
        if not 0 <= tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
        if not 0 < gain_range[0] <= gain_range[1]:
            raise ValueError(f"gain_range must be (lo, hi) with 0 < lo <= hi, got {gain_range}")
        self.words = list(patterns)
        self.voices = {name: v for name, v in voices.items()}
        self.frame_rate = float(frame_rate)
        self.tolerance = float(tolerance)
        self.free_stretch = float(free_stretch)
        self.duration_weight = float(duration_weight)
        self.word_penalty = float(word_penalty)
        self.gain_range = (float(gain_range[0]), float(gain_range[1]))
        if not garbage_level > 0:
            raise ValueError(f"garbage_level must be > 0, got {garbage_level}")
        self.garbage_level = float(garbage_level)
        channels = {np.asarray(p).shape[1] for p in patterns.values()}
        if len(channels) != 1:
            raise ValueError(f"all patterns must have the same number of channels, got {sorted(channels)}")
        self.channels = channels.pop()
        self._garbage = self.garbage_level * self.channels  # per-frame cost of an unintelligible frame

        # template bank: one row per (word, duration), grouped by duration for the sliding dot products
        word_idx, durs, pens = [], [], []
        raw: list[np.ndarray] = []
        for wi, w in enumerate(self.words):
            p = np.asarray(patterns[w], dtype=np.float64)
            n = p.shape[0]
            lo = max(2, int(np.floor(n * (1 - self.tolerance) + 0.5)))
            hi = max(lo, int(np.floor(n * (1 + self.tolerance) + 0.5)))
            for d in range(lo, hi + 1):
                excess = max(0.0, abs(d / n - 1.0) - self.free_stretch - 1e-9)
                word_idx.append(wi)
                durs.append(d)
                pens.append(self.word_penalty + self.duration_weight * excess**2 * d)
                raw.append(stretch(p, d))
        self._word_idx = np.asarray(word_idx, dtype=np.int64)  # [K]
        self._durs = np.asarray(durs, dtype=np.int64)  # [K]
        self._pens = np.asarray(pens, dtype=np.float64)  # [K]
        self._raw = raw  # K arrays [d_k, C], uncoloured
        self._dur_values = np.unique(self._durs)  # [D]
        self._dur_slot = np.searchsorted(self._dur_values, self._durs)  # [K]
        self._voice_list = list(self.voices)
        n_voices, n_templates = len(self._voice_list), len(raw)
        # coloured flat templates per voice, zero padded: bank [V, K, maxd * C]; norms, corr [V, K]
        self._offsets = np.zeros((n_voices, self.channels))  # [V, C]
        self._bank = np.zeros((n_voices, n_templates, int(self._durs.max()) * self.channels))
        self._norms = np.zeros((n_voices, n_templates))
        self._corr = np.zeros((n_voices, n_templates))
        for vi, name in enumerate(self._voice_list):
            v = self.voices[name]
            gain = np.asarray(v.gain, dtype=np.float64)
            offset = np.asarray(v.offset, dtype=np.float64)
            if gain.shape != (self.channels,) or offset.shape != (self.channels,) or not (gain > 0).all():
                raise ValueError(f"voice {name!r} must have gain > 0 and offset, both of shape ({self.channels},)")
            self._offsets[vi] = offset
            for k, r in enumerate(raw):
                flat = (r * gain).reshape(-1)  # [d * C]
                self._bank[vi, k, : flat.size] = flat
                self._norms[vi, k] = flat @ flat
                self._corr[vi, k] = flat @ np.tile(offset, r.shape[0])

    # ------------------------------------------------------------------ costs
    def _check_latents(self, latents: Any) -> np.ndarray:
        x = np.asarray(latents, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f"latents must be [frames, {self.channels}], got shape {x.shape}")
        if x.shape[0] < 1:
            raise ValueError("latents must have at least one frame")
        if not np.isfinite(x).all():
            raise ValueError("latents contain NaN or inf")
        return x

    def _silence(self, x: np.ndarray) -> np.ndarray:
        """sil [V, T]: squared distance of each frame to each voice's offset."""
        y = x[None, :, :] - self._offsets[:, None, :]  # [V, T, C]
        return np.einsum("vtc,vtc->vt", y, y)

    def _segments(
        self, x: np.ndarray, sil: np.ndarray, ks: np.ndarray, slot: np.ndarray, n_slots: int, voices: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(seg [U, T + 1, n_slots], arg): cheapest of templates ``ks`` per output slot, for voice rows ``voices``."""
        lo, hi = self.gain_range
        return _segment_costs(
            np.ascontiguousarray(x), sil, self._bank, self._norms, self._corr, self._durs, self._pens,
            ks, slot, n_slots, np.asarray(voices, dtype=np.int64), lo, hi,
        )  # fmt: skip

    def _transcript(
        self,
        spans: list[tuple[int, int, int]],
        garbage_frames: int,
        voice: str,
        total: float,
        n: int,
        voice_costs: dict[str, float],
    ) -> Transcript:
        words = tuple(self.words[self._word_idx[k]] for k, _, _ in spans)
        starts = tuple(int(s) for _, s, _ in spans)
        ends = tuple(int(e) for _, _, e in spans)
        return Transcript(
            text=" ".join(words),
            words=words,
            start_frames=starts,
            end_frames=ends,
            starts_s=tuple(s / self.frame_rate for s in starts),
            ends_s=tuple(e / self.frame_rate for e in ends),
            voice=voice,
            cost=total / (n * self.channels),
            garbage_frames=garbage_frames,
            voice_costs=voice_costs,
        )

    def _voice_indices(self, voice: str | None) -> list[int]:
        if voice is None:
            return list(range(len(self._voice_list)))
        if voice not in self.voices:
            raise ValueError(f"unknown voice {voice!r}; expected one of {self._voice_list}")
        return [self._voice_list.index(voice)]

    # ------------------------------------------------------------------ public
    def decode(self, latents: Any, voice: str | None = None) -> Transcript:
        """Words sung in ``latents`` ``[T, C]``; ``voice`` fixes the colouring instead of trying all."""
        x = self._check_latents(latents)
        n = x.shape[0]
        sil = self._silence(x)  # [V, T]
        # the programme only needs, per (end frame, duration), the cheapest template of that duration
        all_k = np.arange(self._durs.shape[0])
        vis = self._voice_indices(voice)
        seg, arg = self._segments(x, sil, all_k, self._dur_slot, len(self._dur_values), vis)  # [U, T + 1, D]
        durs = self._dur_values
        zero_pen = np.zeros(len(durs))
        best: tuple[float, int, int, np.ndarray] | None = None
        voice_costs: dict[str, float] = {}
        for u, vi in enumerate(vis):
            b, back = _segment_dp(sil[vi], seg[u], durs, zero_pen, self._garbage)
            voice_costs[self._voice_list[vi]] = float(b[n]) / (n * self.channels)
            if best is None or b[n] < best[0]:
                best = (float(b[n]), u, vi, back)
        assert best is not None
        total, u, vi, back = best
        spans, garbage_frames = [], 0
        t = n
        while t > 0:
            j = int(back[t])
            if j < 0:
                garbage_frames += j == GARBAGE
                t -= 1
            else:
                d = int(durs[j])
                spans.append((int(arg[u, t, j]), t - d, t))
                t -= d
        spans.reverse()
        return self._transcript(spans, garbage_frames, self._voice_list[vi], total, n, voice_costs)

    def __call__(self, latents: Any, voice: str | None = None) -> Transcript:
        return self.decode(latents, voice)

    def decode_batch(self, latents: Any, voices: Sequence[str | None] | None = None) -> list[Transcript]:
        """Decode ``[B, T, C]`` latents (or a list of ``[T, C]``); ``voices`` optionally one per item."""
        items = list(latents)
        if voices is not None and len(voices) != len(items):
            raise ValueError(f"voices has {len(voices)} entries for {len(items)} clips")
        return [self.decode(x, None if voices is None else voices[i]) for i, x in enumerate(items)]

    def align(self, latents: Any, words: Sequence[str], voice: str | None = None) -> Transcript:
        """Forced alignment: where each of the known ``words`` (in order) is sung in ``latents``.

        Every word is placed exactly once, in order, with silence or unintelligible frames allowed
        between; ``voice`` as in ``decode``. Useful for timing a generated clip whose lyrics are known.
        """
        x = self._check_latents(latents)
        words = list(words)
        if not words:
            raise ValueError("words must not be empty")
        unknown = [w for w in words if w not in self.words]
        if unknown:
            raise ValueError(f"words not in the decoder's vocabulary: {unknown}")
        index = {w: i for i, w in enumerate(self.words)}
        cols = [np.flatnonzero(self._word_idx == index[w]) for w in words]  # template columns per line position
        cols_all = np.concatenate(cols)
        word_of = np.concatenate([np.full(len(c), i, dtype=np.int64) for i, c in enumerate(cols)])
        durs = self._durs[cols_all]
        n = x.shape[0]
        sil = self._silence(x)  # [V, T]
        vis = self._voice_indices(voice)
        seg, _ = self._segments(x, sil, cols_all, np.arange(len(cols_all)), len(cols_all), vis)  # [U, T + 1, M]
        zero_pen = np.zeros(len(cols_all))
        best = None
        voice_costs: dict[str, float] = {}
        for u, vi in enumerate(vis):
            b, back = _forced_dp(sil[vi], seg[u], durs, zero_pen, self._garbage, word_of, len(words))
            cost = float(b[n, len(words)])
            voice_costs[self._voice_list[vi]] = cost / (n * self.channels)
            if best is None or cost < best[0]:
                best = (cost, vi, back)
        assert best is not None
        total, vi, back = best
        if not np.isfinite(total):
            raise ValueError(f"{len(words)} words cannot fit in {n} latent frames")
        spans, garbage_frames = [], 0
        t, i = n, len(words)
        while t > 0:
            k = int(back[t, i])
            if k < 0:
                garbage_frames += k == GARBAGE
                t -= 1
            else:
                spans.append((int(cols_all[k]), t - int(durs[k]), t))
                t -= int(durs[k])
                i -= 1
        spans.reverse()
        return self._transcript(spans, garbage_frames, self._voice_list[vi], total, n, voice_costs)


def degrade(
    latents: np.ndarray,
    rng: np.random.Generator,
    *,
    noise: float = 0.0,
    blur: float = 0.0,
    scale: float = 1.0,
    channel_gain: float = 0.0,
    channel_offset: float = 0.0,
) -> np.ndarray:
    """A model-like corruption of ``latents`` ``[T, C]``.

    ``out = scale * exp(channel_gain * z1) * gaussian_filter1d(latents, blur, axis=0, mode="nearest")
    + channel_offset * z2 + noise * N(0, 1)``, with ``z1, z2 ~ N(0, 1)`` drawn once per channel (a
    slightly wrong voice colouring). ``blur`` is the Gaussian's standard deviation in latent frames (0
    skips it); ``noise`` is drawn per value.
    """
    from scipy.ndimage import gaussian_filter1d

    x = np.asarray(latents, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"latents must be [frames, channels], got shape {x.shape}")
    if min(blur, noise, channel_gain, channel_offset) < 0:
        raise ValueError(
            f"blur, noise, channel_gain and channel_offset must be >= 0, got {blur}, {noise}, {channel_gain}, "
            f"{channel_offset}"
        )
    if blur > 0:
        x = gaussian_filter1d(x, blur, axis=0, mode="nearest")
    x = scale * x
    if channel_gain > 0:
        x = x * np.exp(channel_gain * rng.standard_normal(x.shape[1]))
    if channel_offset > 0:
        x = x + channel_offset * rng.standard_normal(x.shape[1])
    if noise > 0:
        x = x + noise * rng.standard_normal(x.shape)
    return x.astype(np.float32)


def corpus_wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus word error rate with jiwer: (S + D + I) / N over all lines (an empty hypothesis counts as deletions)."""
    import jiwer

    if len(refs) != len(hyps):
        raise ValueError(f"refs ({len(refs)}) and hyps ({len(hyps)}) differ in length")
    if not refs:
        raise ValueError("corpus_wer needs at least one line")
    return float(jiwer.wer(list(refs), list(hyps)))


# name -> degrade() keyword arguments; "shuffled" permutes frames, "gaussian" replaces the clip by N(0, 1)
ROBUSTNESS_CONDITIONS: dict[str, dict[str, float]] = {
    "clean": {},
    "noise 0.1": {"noise": 0.1},
    "noise 0.2": {"noise": 0.2},
    "noise 0.3": {"noise": 0.3},
    "noise 0.4": {"noise": 0.4},
    "noise 0.5": {"noise": 0.5},
    "noise 0.7": {"noise": 0.7},
    "noise 1.0": {"noise": 1.0},
    "blur 1": {"blur": 1.0},
    "blur 1.5": {"blur": 1.5},
    "blur 2": {"blur": 2.0},
    "blur 3": {"blur": 3.0},
    "scale 0.5": {"scale": 0.5},
    "scale 1.6": {"scale": 1.6},
    "voice colour error 0.2": {"channel_gain": 0.2, "channel_offset": 0.2},
    "blur 1.5 + noise 0.3 + scale 0.8": {"blur": 1.5, "noise": 0.3, "scale": 0.8},
    "shuffled": {},
    "gaussian": {},
}


def robustness(
    task: TinySongs,
    decoder: WordDecoder | None = None,
    n: int = 300,
    seed: int = 0,
    conditions: Mapping[str, Mapping[str, float]] | None = None,
    split: str = "test",
) -> list[dict[str, Any]]:
    """Decoder accuracy on ``n`` rendered lines of ``split`` under each corruption in ``conditions``.

    One row per condition: ``wer`` (corpus WER, jiwer), ``voice_accuracy`` (decoded voice == caption's),
    ``start_within_1`` (share of reference words whose forced-aligned start is within 1 latent frame of
    the truth; ``align`` with the true words), ``ms_per_clip`` (median decode time). The conditions
    ``"shuffled"`` (frames permuted) and ``"gaussian"`` (pure N(0, 1) latents) ignore their arguments.
    """
    import time

    decoder = WordDecoder(task) if decoder is None else decoder
    conditions = ROBUSTNESS_CONDITIONS if conditions is None else conditions
    examples = task.make_dataset(n, seed=seed, split=split)
    refs = [" ".join(ex["words"]) for ex in examples]
    rows = []
    for ci, (name, kwargs) in enumerate(conditions.items()):
        rng = np.random.default_rng([seed, ci])
        hyps, voice_ok, near, total, times = [], 0, 0, 0, []
        for ex in examples:
            if name == "shuffled":
                x = ex["latents"][rng.permutation(ex["latents"].shape[0])]
            elif name == "gaussian":
                x = rng.standard_normal(ex["latents"].shape).astype(np.float32)
            else:
                x = degrade(ex["latents"], rng, **kwargs)
            t0 = time.perf_counter()
            tr = decoder.decode(x)
            times.append(time.perf_counter() - t0)
            hyps.append(tr.text)
            voice_ok += tr.voice == ex["voice"]
            al = decoder.align(x, ex["words"])
            near += sum(abs(a - b) <= 1 for a, b in zip(al.start_frames, ex["word_starts"]))
            total += len(ex["words"])
        rows.append(
            {
                "condition": name,
                "wer": corpus_wer(refs, hyps),
                "voice_accuracy": voice_ok / len(examples),
                "start_within_1": near / total,
                "ms_per_clip": 1e3 * float(np.median(times)),
            }
        )
    return rows
