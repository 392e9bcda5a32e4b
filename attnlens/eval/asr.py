"""Speech recognition back ends behind one small interface.

``Transcriber("faster-whisper", model=...)`` (CTranslate2) or ``Transcriber("openai-whisper", model=...)``; both
return a :class:`Transcription` with the text and word timings in seconds. Input audio is mono float32 at any
sample rate; it is resampled to Whisper's 16 kHz with ``scipy.signal.resample_poly`` (polyphase, anti-aliased).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WHISPER_SAMPLE_RATE = 16_000
BACKENDS: tuple[str, ...] = ("faster-whisper", "openai-whisper")


@dataclass(frozen=True)
class Word:
    """One recognized word; times in seconds from the start of the clip."""

    word: str
    start: float
    end: float
    probability: float = float("nan")


@dataclass
class Transcription:
    """What a transcriber heard."""

    text: str
    words: list[Word] = field(default_factory=list)
    language: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def to_mono_float32(audio: Any) -> np.ndarray:
    """Mono float32 ``[time]`` from ``[time]``, ``[channels, time]`` or ``[time, channels]`` (numpy or torch).

    For 2-D input the shorter axis is the channel axis (at most 8 channels); channels are averaged.
    """
    if hasattr(audio, "detach"):
        audio = audio.detach().float().cpu().numpy()
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 2:
        ch_axis = int(np.argmin(a.shape))
        if a.shape[ch_axis] > 8:
            raise ValueError(f"audio of shape {a.shape}: expected mono [time] or [channels<=8, time]")
        a = a.mean(axis=ch_axis)
    if a.ndim != 1:
        raise ValueError(f"audio must be 1-D mono (or 2-D with a channel axis), got shape {a.shape}")
    if a.size == 0:
        raise ValueError("audio is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError("audio contains NaN or Inf samples")
    return np.ascontiguousarray(a)


def resample_to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Resample mono float32 audio to 16 kHz with ``scipy.signal.resample_poly`` (up/down = reduced ratio)."""
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    sample_rate = int(sample_rate)
    if sample_rate == WHISPER_SAMPLE_RATE:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(sample_rate, WHISPER_SAMPLE_RATE)
    return resample_poly(audio, WHISPER_SAMPLE_RATE // g, sample_rate // g).astype(np.float32)


class Transcriber:
    """Whisper speech recognition with word timings.

    Args:
        backend: ``"faster-whisper"`` or ``"openai-whisper"``.
        model: a model size/name (``"tiny.en"``, ``"large-v3"``), a local path (a CTranslate2 folder for
            faster-whisper, a ``.pt`` checkpoint for openai-whisper), or an already-built model object of that backend.
        device: ``"cpu"`` or ``"cuda"``.
        compute_type: faster-whisper's CTranslate2 compute type (``"int8"``, ``"float16"``, ...); ignored by
            openai-whisper, which runs fp32 on CPU and fp16 on CUDA.
        language: spoken language code (``"en"``) or None to detect.
        beam_size, temperature, initial_prompt: decoding options passed to the backend.
        word_timestamps: also return word timings (default True).
        **options: further backend keyword arguments for ``transcribe`` (e.g. ``vad_filter`` for faster-whisper,
            ``condition_on_previous_text`` for both).
    """

    def __init__(
        self,
        backend: str = "faster-whisper",
        model: Any = "large-v3",
        device: str = "cpu",
        compute_type: str = "default",
        *,
        language: str | None = "en",
        beam_size: int = 5,
        temperature: float | tuple[float, ...] = 0.0,
        initial_prompt: str | None = None,
        word_timestamps: bool = True,
        cpu_threads: int = 0,
        **options: Any,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown ASR backend {backend!r}; expected one of {BACKENDS}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.backend = backend
        self.device = device
        self.compute_type = compute_type
        self.language = language
        self.beam_size = int(beam_size)
        self.temperature = temperature
        self.initial_prompt = initial_prompt
        self.word_timestamps = word_timestamps
        self.options = options
        self.model_name = model if isinstance(model, (str, os.PathLike)) else type(model).__name__
        if backend == "faster-whisper":
            self._model = self._load_faster_whisper(model, device, compute_type, cpu_threads)
        else:
            self._model = self._load_openai_whisper(model, device)

    # -- loading -----------------------------------------------------------------------------------------------
    @staticmethod
    def _load_faster_whisper(model: Any, device: str, compute_type: str, cpu_threads: int) -> Any:
        try:
            import faster_whisper
        except ImportError as e:
            raise ImportError("backend 'faster-whisper' needs `pip install faster-whisper`") from e
        if isinstance(model, faster_whisper.WhisperModel):
            return model
        return faster_whisper.WhisperModel(
            str(model), device=device, compute_type=compute_type, cpu_threads=cpu_threads
        )

    @staticmethod
    def _load_openai_whisper(model: Any, device: str) -> Any:
        try:
            import whisper
        except ImportError as e:
            raise ImportError(
                "backend 'openai-whisper' needs `pip install openai-whisper` (on CPU-only machines "
                "`pip install --no-deps openai-whisper more-itertools tiktoken` avoids the triton wheel)"
            ) from e
        if isinstance(model, whisper.model.Whisper):
            return model.to(device)
        name = str(model)
        if name not in whisper.available_models() and not os.path.isfile(name):
            raise FileNotFoundError(
                f"openai-whisper model {name!r} is neither a known size {whisper.available_models()} "
                "nor an existing checkpoint file"
            )
        return whisper.load_model(name, device=device)

    def __repr__(self) -> str:
        return f"Transcriber({self.backend!r}, model={self.model_name!r}, device={self.device!r})"

    # -- transcription -------------------------------------------------------------------------------------------
    def transcribe(self, audio: Any, sample_rate: int) -> Transcription:
        """Transcribe one clip (mono float32, any rate; resampled to 16 kHz)."""
        x = resample_to_16k(to_mono_float32(audio), sample_rate)
        if self.backend == "faster-whisper":
            return self._transcribe_faster(x)
        return self._transcribe_openai(x)

    __call__ = transcribe

    def _transcribe_faster(self, x: np.ndarray) -> Transcription:
        segments, info = self._model.transcribe(
            x,
            language=self.language,
            beam_size=self.beam_size,
            temperature=self.temperature,
            initial_prompt=self.initial_prompt,
            word_timestamps=self.word_timestamps,
            **self.options,
        )
        texts: list[str] = []
        words: list[Word] = []
        for seg in segments:  # a generator: decoding happens here
            texts.append(seg.text.strip())
            for w in seg.words or []:
                words.append(Word(w.word.strip(), float(w.start), float(w.end), float(w.probability)))
        return Transcription(
            " ".join(t for t in texts if t), words, info.language, {"duration_s": float(info.duration)}
        )

    def _transcribe_openai(self, x: np.ndarray) -> Transcription:
        opts = dict(self.options)
        if self.beam_size > 1:
            opts.setdefault("beam_size", self.beam_size)
        out = self._model.transcribe(
            x,
            language=self.language,
            temperature=self.temperature,
            initial_prompt=self.initial_prompt,
            word_timestamps=self.word_timestamps,
            fp16=self.device != "cpu",
            verbose=None,
            **opts,
        )
        words = [
            Word(w["word"].strip(), float(w["start"]), float(w["end"]), float(w.get("probability", float("nan"))))
            for seg in out["segments"]
            for w in seg.get("words", [])
        ]
        return Transcription(out["text"].strip(), words, out.get("language"), {})
