""" "Tiny songs": a synthetic singing task in latent space, for the embedded demo model.

A line of lyrics (4-8 words from a 64-word vocabulary) is "sung" by writing each word's fixed acoustic
pattern into a latent sequence ``[T, C]`` (25 latent frames per second, as ACE-Step's VAE), one word
after another with natural jitter, then colouring the whole clip with the voice named in the caption::

    clean[t]   = g_i * stretch(P_w, d_i)[t - s_i]     for t in [s_i, s_i + d_i)   (word i, 0 elsewhere)
    latents[t] = gain_v * clean[t] + offset_v + noise_std * N(0, 1)

- ``P_w`` ``[L_w, C]``: word ``w``'s pattern, a seeded smooth random curve, ``L_w`` in 4..10 frames,
  overall RMS 1, every frame's RMS >= 0.5 (so silence and singing never look alike), and at least
  ``min_distance`` (RMS, at a common length) from every other word's pattern.
- ``d_i = round(L_w * u)``, ``u ~ U(1 - stretch, 1 + stretch)``; ``stretch(P, d)`` resamples ``P`` to
  ``d`` frames by linear interpolation (end points kept), so a duration fixes the stretched pattern.
- ``g_i ~ U(1 - loudness, 1 + loudness)``: per-word loudness.
- ``s_0`` = lead-in (``lead_in_frames``), ``s_{i+1} = s_i + d_i + gap_i``, gap in ``gap_frames``;
  the rest of the clip, at least ``min_tail_frames``, is silence.
- ``gain_v, offset_v`` ``[C]``: the voice's per-channel colouring (``make_voices``).

Word timings are exact: word ``i`` occupies latent frames ``[word_starts[i], word_ends[i])``, i.e.
``word_starts[i] / 25`` to ``word_ends[i] / 25`` seconds (DiT frames are half as many: the DiT
patchifies by 2). Train and test lines are split deterministically by a hash of the word sequence,
so a test line is never seen in training whatever the sampling order.

The demo task (vocabulary, songs, rendering, targets) is one specification; hence over 400 lines.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnlens.demo.vocab import CAPTION_EXTRAS, DEMO_WORDS, VOICE_NAMES

from ..files import atomic_write

LATENT_FRAME_RATE = 25.0  # latent frames per second (48 kHz audio / 1920 samples per latent frame)
DIT_PATCH_SIZE = 2  # the DiT's patch size: one DiT frame (cross-attention query) = 2 latent frames
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Voice:
    """A named global colouring of the latents: ``latents = gain * clean + offset`` (per channel)."""

    name: str
    gain: np.ndarray  # [C], > 0
    offset: np.ndarray  # [C]

    def apply(self, clean: np.ndarray) -> np.ndarray:
        """Colour a clean latent sequence ``[T, C]``."""
        return clean * self.gain + self.offset


def stretch(pattern: np.ndarray, n_frames: int) -> np.ndarray:
    """Resample ``pattern`` ``[L, C]`` to ``n_frames`` frames by linear interpolation along time.

    Output frame ``j`` samples the pattern at position ``j * (L - 1) / (n_frames - 1)`` (first and last
    frames kept); ``n_frames == L`` returns an exact copy.
    """
    pattern = np.asarray(pattern)
    if pattern.ndim != 2 or pattern.shape[0] < 2:
        raise ValueError(f"pattern must be [frames >= 2, channels], got shape {pattern.shape}")
    if int(n_frames) < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames}")
    n_in = pattern.shape[0]
    pos = np.arange(n_frames, dtype=np.float64) * ((n_in - 1) / (n_frames - 1))  # [n_frames]
    lo = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    frac = (pos - lo)[:, None]
    return (pattern[lo] * (1.0 - frac) + pattern[lo + 1] * frac).astype(pattern.dtype)


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _word_rng(seed: int, word: str, stream: int, attempt: int = 0) -> np.random.Generator:
    """A generator for one word: stream 0 draws its length, stream 1 its candidate curves."""
    return np.random.default_rng([int(seed), zlib.crc32(word.encode("utf-8")), int(stream), int(attempt)])


def pattern_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS difference of two patterns after resampling both to the longer one's length."""
    n = max(a.shape[0], b.shape[0])
    return float(np.sqrt(np.mean((stretch(a, n) - stretch(b, n)) ** 2)))


def _smooth_curve(rng: np.random.Generator, n_frames: int, channels: int) -> np.ndarray:
    """A random smooth curve ``[n_frames, channels]``: per channel a level plus two low harmonics."""
    x = np.linspace(0.0, 1.0, n_frames)[:, None]  # [L, 1]
    level = rng.normal(0.0, 1.0, size=channels)
    curve = np.broadcast_to(level, (n_frames, channels)).copy()
    for k in (1, 2):
        a, b = rng.normal(0.0, 0.8 / k, size=(2, channels))
        curve += a * np.cos(np.pi * k * x) + b * np.sin(np.pi * k * x)
    return curve / np.sqrt(np.mean(curve**2))


def make_word_patterns(
    words: Sequence[str],
    channels: int = 8,
    seed: int = 0,
    frames: tuple[int, int] = (4, 10),
    min_distance: float = 1.0,
    min_frame_rms: float = 0.5,
    max_tries: int = 2000,
) -> dict[str, np.ndarray]:
    """One fixed pattern ``[L_w, channels]`` (float32) per word, seeded and well separated.

    ``L_w`` is drawn uniformly in ``frames`` (inclusive) from the word's own seed, so adding a word
    never changes another word's length. Words are placed greedily in the given order: a candidate
    curve is accepted when every frame's RMS is >= ``min_frame_rms`` and its ``pattern_distance`` to
    every accepted pattern is >= ``min_distance``; otherwise the next candidate is tried.
    """
    words = list(words)
    if len(set(words)) != len(words):
        raise ValueError(f"words must be unique, got duplicates: {sorted({w for w in words if words.count(w) > 1})}")
    lo, hi = int(frames[0]), int(frames[1])
    if not 2 <= lo <= hi:
        raise ValueError(f"frames must be (lo, hi) with 2 <= lo <= hi, got {frames}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    patterns: dict[str, np.ndarray] = {}
    for word in words:
        n_frames = int(_word_rng(seed, word, 0).integers(lo, hi + 1))
        for attempt in range(max_tries):
            cand = _smooth_curve(_word_rng(seed, word, 1, attempt), n_frames, channels)
            if np.sqrt(np.mean(cand**2, axis=1)).min() < min_frame_rms:
                continue
            if all(pattern_distance(cand, p) >= min_distance for p in patterns.values()):
                patterns[word] = cand.astype(np.float32)
                break
        else:
            raise RuntimeError(
                f"could not place a pattern for {word!r} at min_distance={min_distance} in {max_tries} tries; "
                f"lower min_distance or use more channels (have {channels})"
            )
    return patterns


def make_voices(names: Sequence[str], channels: int = 8, seed: int = 0) -> dict[str, Voice]:
    """Named voices: per-channel gain ``exp(N(0, 0.3))`` and offset ``N(0, 0.3)``, seeded by name."""
    voices = {}
    for name in names:
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8")), 7])
        gain = np.exp(rng.normal(0.0, 0.3, size=channels)).astype(np.float32)
        offset = rng.normal(0.0, 0.3, size=channels).astype(np.float32)
        voices[name] = Voice(name, gain, offset)
    return voices


def _check_range(name: str, value: Sequence[int], minimum: int) -> tuple[int, int]:
    if len(value) != 2 or int(value[0]) != value[0] or int(value[1]) != value[1]:
        raise ValueError(f"{name} must be a pair of integers (lo, hi), got {value!r}")
    lo, hi = int(value[0]), int(value[1])
    if not minimum <= lo <= hi:
        raise ValueError(f"{name} must satisfy {minimum} <= lo <= hi, got {value!r}")
    return lo, hi


class TinySongs:
    """The "tiny songs" task: seeded lyric lines rendered to latents with exact word timings.

    ``sample(rng)`` draws one example, ``make_dataset(n, seed)`` a reproducible list. Each example is a
    dict with ``lyrics`` (``"[verse]\\nword word ..."``), ``caption`` (``"<voice> voice, <extra>"``),
    ``voice``, ``extra``, ``latents`` (float32 ``[T, C]``), ``words``, ``word_starts``/``word_ends``
    (latent frames, end exclusive), ``word_starts_s``/``word_ends_s`` (seconds), ``word_gains``,
    ``split`` and ``frame_rate``.
    """

    def __init__(
        self,
        seed: int = 0,
        n_words_range: tuple[int, int] = (4, 8),
        duration_s: float = 4.0,
        voices: Sequence[str] = VOICE_NAMES,
        *,
        words: Sequence[str] = DEMO_WORDS,
        extras: Sequence[str] = CAPTION_EXTRAS,
        channels: int = 8,
        word_frames: tuple[int, int] = (4, 10),
        stretch: float = 0.15,
        loudness: float = 0.1,
        gap_frames: tuple[int, int] = (1, 4),
        lead_in_frames: tuple[int, int] = (2, 6),
        min_tail_frames: int = 2,
        noise_std: float = 0.05,
        min_distance: float = 1.0,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        patterns: Mapping[str, np.ndarray] | None = None,
        voice_params: Mapping[str, Voice] | None = None,
    ) -> None:
        self.seed = int(seed)
        self.n_words_range = _check_range("n_words_range", n_words_range, 1)
        self.word_frames = _check_range("word_frames", word_frames, 2)
        self.gap_frames = _check_range("gap_frames", gap_frames, 0)
        self.lead_in_frames = _check_range("lead_in_frames", lead_in_frames, 0)
        if not duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        self.duration_s = float(duration_s)
        # as the pipeline does: ceil(duration * 25) latent frames (rounded first against float noise)
        self.n_frames = math.ceil(round(self.duration_s * LATENT_FRAME_RATE, 6))
        self.words = list(words)
        self.voice_names = list(voices)
        self.extras = list(extras)
        for name, seq in (("words", self.words), ("voices", self.voice_names), ("extras", self.extras)):
            if not seq:
                raise ValueError(f"{name} must not be empty")
            if len(set(seq)) != len(seq):
                raise ValueError(f"{name} must be unique, got {seq}")
            bad = [s for s in seq if not s or not s.isalpha() or s != s.lower()]
            if bad:
                raise ValueError(f"{name} must be non-empty lowercase letters only, got {bad}")
        if self.n_words_range[1] > len(self.words):
            raise ValueError(
                f"n_words_range {self.n_words_range} needs up to {self.n_words_range[1]} distinct words, "
                f"vocabulary has {len(self.words)}"
            )
        self.channels = int(channels)
        if not 0 <= stretch < 1:
            raise ValueError(f"stretch must be in [0, 1), got {stretch}")
        if not 0 <= loudness < 1:
            raise ValueError(f"loudness must be in [0, 1), got {loudness}")
        if not 0 <= test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if min_tail_frames < 0:
            raise ValueError(f"min_tail_frames must be >= 0, got {min_tail_frames}")
        self.stretch = float(stretch)
        self.loudness = float(loudness)
        self.min_tail_frames = int(min_tail_frames)
        self.noise_std = float(noise_std)
        self.min_distance = float(min_distance)
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)

        if patterns is None:
            patterns = make_word_patterns(self.words, self.channels, self.seed, self.word_frames, self.min_distance)
        self.patterns = self._checked_patterns(patterns)
        if voice_params is None:
            voice_params = make_voices(self.voice_names, self.channels, self.seed)
        self.voices = self._checked_voices(voice_params)

        # the shortest possible line must fit, or sampling could never succeed
        shortest = sorted(self.min_frames(w) for w in self.words)[: self.n_words_range[0]]
        need = self.lead_in_frames[0] + sum(shortest) + (len(shortest) - 1) * self.gap_frames[0] + self.min_tail_frames
        if need > self.n_frames:
            raise ValueError(
                f"duration_s={self.duration_s} ({self.n_frames} latent frames) cannot hold even the shortest "
                f"{self.n_words_range[0]}-word line ({need} frames); use a longer clip or fewer words"
            )

    # ------------------------------------------------------------------ validation helpers
    def _checked_patterns(self, patterns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [w for w in self.words if w not in patterns]
        if missing:
            raise ValueError(f"patterns lack words {missing}")
        out = {}
        for w in self.words:
            p = np.asarray(patterns[w], dtype=np.float32)
            if p.ndim != 2 or p.shape[1] != self.channels or p.shape[0] < 2 or not np.isfinite(p).all():
                raise ValueError(f"pattern for {w!r} must be finite [frames >= 2, {self.channels}], got {p.shape}")
            out[w] = p
        return out

    def _checked_voices(self, voices: Mapping[str, Voice]) -> dict[str, Voice]:
        missing = [v for v in self.voice_names if v not in voices]
        if missing:
            raise ValueError(f"voice_params lack voices {missing}")
        out = {}
        for name in self.voice_names:
            v = voices[name]
            gain = np.asarray(v.gain, dtype=np.float32)
            offset = np.asarray(v.offset, dtype=np.float32)
            if gain.shape != (self.channels,) or offset.shape != (self.channels,) or not (gain > 0).all():
                raise ValueError(f"voice {name!r} needs gain > 0 and offset of shape ({self.channels},)")
            out[name] = Voice(name, gain, offset)
        return out

    # ------------------------------------------------------------------ facts
    @property
    def frame_rate(self) -> float:
        """Latent frames per second (25)."""
        return LATENT_FRAME_RATE

    def min_frames(self, word: str) -> int:
        """Fewest latent frames ``word`` can take (its pattern length at the largest compression)."""
        return max(2, _round_half_up(self.patterns[word].shape[0] * (1.0 - self.stretch)))

    def max_frames(self, word: str) -> int:
        """Most latent frames ``word`` can take (its pattern length at the largest expansion)."""
        return max(2, _round_half_up(self.patterns[word].shape[0] * (1.0 + self.stretch)))

    def split_of(self, words: Sequence[str]) -> str:
        """``"test"`` or ``"train"``: a fixed hash of the word sequence (and ``split_seed``) decides."""
        key = f"{self.split_seed}|{' '.join(words)}".encode()
        u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2.0**64
        return "test" if u < self.test_fraction else "train"

    @staticmethod
    def format_lyrics(words: Sequence[str]) -> str:
        """``"[verse]\\nw1 w2 ..."``: the lyric string the pipeline is given."""
        return "[verse]\n" + " ".join(words)

    @staticmethod
    def format_caption(voice: str, extra: str) -> str:
        """``"<voice> voice, <extra>"``."""
        return f"{voice} voice, {extra}"

    # ------------------------------------------------------------------ sampling
    def sample_line(self, rng: np.random.Generator, split: str = "train", max_tries: int = 10_000) -> list[str]:
        """Distinct words (no repeats within a line) whose line belongs to ``split``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split == "test" and self.test_fraction == 0:
            raise ValueError("split='test' needs test_fraction > 0")
        lo, hi = self.n_words_range
        for _ in range(max_tries):
            n = int(rng.integers(lo, hi + 1))
            idx = rng.choice(len(self.words), size=n, replace=False)
            line = [self.words[i] for i in idx]
            if self.split_of(line) == split:
                return line
        raise RuntimeError(f"no {split!r} line found in {max_tries} draws (test_fraction={self.test_fraction})")

    def _draw_timing(
        self, rng: np.random.Generator, words: Sequence[str], tries: int
    ) -> tuple[int, list[int], list[int]] | None:
        """(lead-in, durations, gaps) that fit the clip, or None after ``tries`` draws."""
        lengths = np.array([self.patterns[w].shape[0] for w in words], dtype=np.float64)
        budget = self.n_frames - self.min_tail_frames
        for _ in range(tries):
            lead = int(rng.integers(self.lead_in_frames[0], self.lead_in_frames[1] + 1))
            factors = rng.uniform(1.0 - self.stretch, 1.0 + self.stretch, size=len(words))
            durs = [max(2, _round_half_up(x)) for x in lengths * factors]
            gaps = [int(g) for g in rng.integers(self.gap_frames[0], self.gap_frames[1] + 1, size=len(words) - 1)]
            if lead + sum(durs) + sum(gaps) <= budget:
                return lead, durs, gaps
        return None

    def render(
        self,
        words: Sequence[str],
        voice: str,
        rng: np.random.Generator,
        extra: str | None = None,
        tries: int = 1000,
    ) -> dict[str, Any]:
        """Render a given line with ``voice``; timing, loudness and noise come from ``rng``."""
        words = list(words)
        unknown = [w for w in words if w not in self.patterns]
        if unknown:
            raise ValueError(f"words not in the vocabulary: {unknown}")
        if not words:
            raise ValueError("words must not be empty")
        if voice not in self.voices:
            raise ValueError(f"unknown voice {voice!r}; expected one of {self.voice_names}")
        if extra is None:
            extra = self.extras[int(rng.integers(len(self.extras)))]
        timing = self._draw_timing(rng, words, tries)
        if timing is None:
            raise ValueError(
                f"line of {len(words)} words does not fit {self.n_frames} latent frames in {tries} timing draws: {words}"
            )
        return self._render_timed(words, voice, extra, timing, rng)

    def _render_timed(
        self,
        words: list[str],
        voice: str,
        extra: str,
        timing: tuple[int, list[int], list[int]],
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        lead, durs, gaps = timing
        gains = rng.uniform(1.0 - self.loudness, 1.0 + self.loudness, size=len(words))
        clean = np.zeros((self.n_frames, self.channels), dtype=np.float64)  # [T, C]
        starts, ends = [], []
        t = lead
        for i, (w, d) in enumerate(zip(words, durs)):
            clean[t : t + d] = gains[i] * stretch(self.patterns[w].astype(np.float64), d)
            starts.append(t)
            ends.append(t + d)
            t += d + (gaps[i] if i < len(gaps) else 0)
        v = self.voices[voice]
        latents = clean * v.gain + v.offset + self.noise_std * rng.standard_normal(clean.shape)
        fr = LATENT_FRAME_RATE
        return {
            "lyrics": self.format_lyrics(words),
            "caption": self.format_caption(voice, extra),
            "voice": voice,
            "extra": extra,
            "latents": latents.astype(np.float32),  # [T, C]
            "words": list(words),
            "word_starts": starts,
            "word_ends": ends,
            "word_starts_s": [s / fr for s in starts],
            "word_ends_s": [e / fr for e in ends],
            "word_gains": [float(g) for g in gains],
            "split": self.split_of(words),
            "frame_rate": fr,
        }

    def sample(self, rng: np.random.Generator, split: str = "train") -> dict[str, Any]:
        """One random example of ``split``: a line, a voice, an extra, timings, loudness and noise."""
        for _ in range(1000):
            words = self.sample_line(rng, split)
            timing = self._draw_timing(rng, words, tries=20)
            if timing is not None:
                break
        else:
            raise RuntimeError("no line fitted the clip in 1000 draws; use a longer duration_s or fewer words")
        voice = self.voice_names[int(rng.integers(len(self.voice_names)))]
        extra = self.extras[int(rng.integers(len(self.extras)))]
        return self._render_timed(words, voice, extra, timing, rng)

    def make_dataset(self, n: int, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
        """``n`` examples of ``split``, reproducible from (task seed, ``seed``, ``split``)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        rng = np.random.default_rng([self.seed, int(seed), SPLITS.index(split)])
        return [self.sample(rng, split) for _ in range(n)]

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings (patterns and voices are saved separately by ``save``)."""
        return {
            "seed": self.seed,
            "n_words_range": list(self.n_words_range),
            "duration_s": self.duration_s,
            "voices": self.voice_names,
            "words": self.words,
            "extras": self.extras,
            "channels": self.channels,
            "word_frames": list(self.word_frames),
            "stretch": self.stretch,
            "loudness": self.loudness,
            "gap_frames": list(self.gap_frames),
            "lead_in_frames": list(self.lead_in_frames),
            "min_tail_frames": self.min_tail_frames,
            "noise_std": self.noise_std,
            "min_distance": self.min_distance,
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
        }

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the config, patterns and voices: changes if any generated array changes."""
        h = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode())
        for w in self.words:
            h.update(np.ascontiguousarray(self.patterns[w], dtype="<f4").tobytes())
        for name in self.voice_names:
            h.update(np.ascontiguousarray(self.voices[name].gain, dtype="<f4").tobytes())
            h.update(np.ascontiguousarray(self.voices[name].offset, dtype="<f4").tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write config, patterns and voices to one safetensors file (atomically)."""
        from safetensors.numpy import save_file

        tensors = {f"pattern/{w}": self.patterns[w] for w in self.words}
        for name, v in self.voices.items():
            tensors[f"voice/{name}/gain"] = v.gain
            tensors[f"voice/{name}/offset"] = v.offset
        meta = {"format": "attnlens.demo.TinySongs/1", "config": json.dumps(self.config())}
        atomic_write(os.fspath(path), lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TinySongs:
        """Read a task written by ``save`` (arrays as saved, not regenerated)."""
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "attnlens.demo.TinySongs/1":
                raise ValueError(f"{path}: not a TinySongs file (format={meta.get('format')!r})")
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        cfg = json.loads(meta["config"])
        patterns = {w: arrays[f"pattern/{w}"] for w in cfg["words"]}
        voices = {n: Voice(n, arrays[f"voice/{n}/gain"], arrays[f"voice/{n}/offset"]) for n in cfg["voices"]}
        cfg["n_words_range"] = tuple(cfg["n_words_range"])
        for k in ("word_frames", "gap_frames", "lead_in_frames"):
            cfg[k] = tuple(cfg[k])
        return cls(**cfg, patterns=patterns, voice_params=voices)


def lines_of(examples: Iterable[Mapping[str, Any]]) -> set[tuple[str, ...]]:
    """The distinct word sequences in ``examples``."""
    return {tuple(ex["words"]) for ex in examples}
