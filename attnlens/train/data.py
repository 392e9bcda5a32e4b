"""Training data: audio (or latents) with lyrics and a caption, checked, encoded once and cached.

Sources:

- a folder: ``<name>.wav`` (or ``.flac``/``.ogg``/``.mp3``, read with soundfile; or ``<name>.latents.safetensors``
  holding a ``latents`` tensor ``[T, C]``) with ``<name>.lyrics.txt`` and ``<name>.caption.txt`` beside it
  (optional ``<name>.tags.txt``, appended to the caption), or a ``metadata.jsonl`` with ``audio``, ``lyrics``,
  ``caption`` (optional ``tags``, ``language``) per line;
- GTSinger (per-segment ``.wav`` + ``.json`` listing words with ``word``, ``start_time``, ``end_time``; ``<SP>``,
  ``<AP>`` and breath marks skipped, word timings kept);
- in memory: dicts with ``latents`` ``[T, C]``, ``lyrics``, ``caption`` (no VAE needed).

Every builder checks the lyrics: a sample whose lyrics are missing, empty, or only structure tags such as
``[verse]`` has no sung words, and training on it teaches the model to ignore lyrics. The builder counts such
samples and refuses to build unless ``allow_empty_lyrics=True``.

Every dataset source (folders, GTSinger, prepared latents) with the validation that names the bad file and line
lives here, so one DatasetError contract covers them all; hence over 400 lines.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from ..adapters.acestep.layout import TAG_RE
from ..files import NotARegularFileError, atomic_save_safetensors, json_kind, looks_like_pickle, open_regular

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
LATENT_SUFFIX = ".latents.safetensors"
NON_WORDS = {"<sp>", "<ap>", "sp", "ap", "<br>", "br", "breath", "<breath>", "<sil>", "sil", "<pad>"}
_WORD = re.compile(r"\w", re.UNICODE)


class DatasetError(ValueError):
    """The training data cannot be used as given."""


def sung_words(lyrics: str | None) -> list[str]:
    """Words that would be sung: whitespace-separated runs holding a letter or digit, outside ``[...]`` tags."""
    if not lyrics:
        return []
    text = TAG_RE.sub(" ", lyrics)
    return [w for w in text.split() if _WORD.search(w)]


@dataclass
class Sample:
    """One training example (audio file or latents, lyrics, caption)."""

    key: str
    lyrics: str
    caption: str
    audio: str | None = None
    latents: torch.Tensor | None = None  # [T, C]
    language: str = "en"
    words: list[dict[str, Any]] = field(default_factory=list)
    """word timings when known: ``{"word", "start", "end"}`` in seconds."""

    def __post_init__(self) -> None:
        if (self.audio is None) == (self.latents is None):
            raise DatasetError(f"sample {self.key!r}: give exactly one of audio (a path) or latents")
        if self.latents is not None:
            lat = torch.as_tensor(np.asarray(self.latents) if not torch.is_tensor(self.latents) else self.latents)
            if lat.dim() != 2:
                raise DatasetError(f"sample {self.key!r}: latents must be [T, C]; got shape {tuple(lat.shape)}")
            if not torch.isfinite(lat).all():
                raise DatasetError(f"sample {self.key!r}: latents hold NaN or Inf")
            self.latents = lat.float()


class AudioLyricsDataset:
    """A checked list of :class:`Sample` (see the module docstring for the sources)."""

    def __init__(self, samples: Sequence[Sample], allow_empty_lyrics: bool = False, source: str = ""):
        self.samples = list(samples)
        self.source = source
        if not self.samples:
            raise DatasetError(f"no training samples found{f' in {source}' if source else ''}")
        keys = [s.key for s in self.samples]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise DatasetError(f"duplicate sample keys {dup[:5]}")
        empty = [s.key for s in self.samples if not sung_words(s.lyrics)]
        self.n_without_words = len(empty)
        if empty and not allow_empty_lyrics:
            raise DatasetError(
                f"{len(empty)} of {len(self.samples)} samples have no sung words (lyrics missing, empty, or only "
                f"structure tags like [verse]): {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}"
                f"{f' in {source}' if source else ''}. Training on them teaches the model to ignore lyrics; fix "
                "the lyrics, or pass allow_empty_lyrics=True to train on them anyway"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def __repr__(self) -> str:
        return f"AudioLyricsDataset({len(self)} samples, {self.n_without_words} without sung words, {self.source!r})"

    # ---------------------------------------------------------------- builders
    @classmethod
    def from_folder(cls, path: str, allow_empty_lyrics: bool = False, language: str = "en") -> AudioLyricsDataset:
        """``metadata.jsonl`` if present, else ``<name>.<audio>`` + ``<name>.lyrics.txt`` + ``<name>.caption.txt``."""
        if not os.path.isdir(path):
            raise DatasetError(f"{path} is not a folder")
        meta = os.path.join(path, "metadata.jsonl")
        samples: list[Sample] = []
        if os.path.isfile(meta):
            for n, row in _jsonl_rows(meta):
                audio, lyrics, caption, lang = _metadata_row(row, meta, n, language)
                audio = audio if os.path.isabs(audio) else os.path.join(path, audio)
                samples.append(_sample_from_file(audio, lyrics, caption, lang, where=f"{meta} line {n}"))
            return cls(samples, allow_empty_lyrics, source=meta)
        names = sorted(os.listdir(path))
        for fn in names:
            low = fn.lower()
            if low.endswith(LATENT_SUFFIX):
                stem = fn[: -len(LATENT_SUFFIX)]
            elif low.endswith(AUDIO_EXTS):
                stem = os.path.splitext(fn)[0]
            else:
                continue
            base = os.path.join(path, stem)
            cap_file = base + ".caption.txt"
            if not os.path.isfile(cap_file):
                raise DatasetError(f"{fn}: no caption file {os.path.basename(cap_file)} beside it")
            lyrics = _read_text(base + ".lyrics.txt")
            tags = _read_text(base + ".tags.txt")
            caption = _with_tags(_read_text(cap_file) or "", tags)
            samples.append(_sample_from_file(os.path.join(path, fn), lyrics or "", caption, language))
        return cls(samples, allow_empty_lyrics, source=path)

    @classmethod
    def from_latents(
        cls, items: Iterable[Mapping[str, Any]], allow_empty_lyrics: bool = False, language: str = "en"
    ) -> AudioLyricsDataset:
        """In-memory latents: dicts with ``latents`` ``[T, C]``, ``lyrics``, ``caption`` (optional ``key``)."""
        samples = []
        for i, it in enumerate(items):
            miss = [k for k in ("latents", "caption") if k not in it]
            if miss:
                raise DatasetError(f"item {i}: missing {miss} (need latents [T, C], lyrics, caption)")
            words = []
            if "words" in it and "word_starts_s" in it:
                words = [
                    {"word": w, "start": float(s), "end": float(e)}
                    for w, s, e in zip(it["words"], it["word_starts_s"], it["word_ends_s"])
                ]
            samples.append(
                Sample(
                    key=str(it.get("key", f"item{i:05d}")),
                    lyrics=it.get("lyrics") or "",
                    caption=it["caption"],
                    latents=it["latents"],
                    language=it.get("language", language),
                    words=words,
                )
            )
        return cls(samples, allow_empty_lyrics, source="memory")

    @classmethod
    def from_gtsinger(
        cls,
        root: str,
        caption: Callable[[list[str]], str] | str | None = None,
        allow_empty_lyrics: bool = False,
        language: str | None = None,
        limit: int | None = None,
    ) -> AudioLyricsDataset:
        """GTSinger segments under ``root`` (e.g. ``GTSinger/English``): every ``.wav`` with a ``.json`` beside it.

        The JSON lists words (``word``, ``start_time``, ``end_time``); ``<SP>``, ``<AP>`` and breath marks are
        skipped, consecutive entries of one word are merged. ``caption``: a string, or a function of the path
        parts below ``root`` (default: ``"<language> <singer>, <technique>, solo vocal"``).
        """
        if not os.path.isdir(root):
            raise DatasetError(f"{root} is not a folder")
        lang = language or _gtsinger_language(root)
        samples = []
        for dirpath, _, files in sorted(os.walk(root)):
            for fn in sorted(files):
                if not fn.lower().endswith(".wav"):
                    continue
                js = os.path.join(dirpath, os.path.splitext(fn)[0] + ".json")
                if not os.path.isfile(js):
                    continue
                words = gtsinger_words(js)
                parts = os.path.relpath(os.path.join(dirpath, fn), root).split(os.sep)[:-1]
                if callable(caption):
                    cap = caption(parts)
                elif isinstance(caption, str):
                    cap = caption
                else:
                    singer = parts[0].split("-")[1].lower() if parts and "-" in parts[0] else "singer"
                    tech = parts[1].lower().replace("_", " ") if len(parts) > 1 else "natural"
                    cap = f"{os.path.basename(os.path.normpath(root)).lower()} {singer}, {tech}, solo vocal"
                key = os.path.relpath(os.path.join(dirpath, os.path.splitext(fn)[0]), root).replace(os.sep, "/")
                samples.append(
                    Sample(
                        key=key,
                        lyrics=" ".join(w["word"] for w in words),
                        caption=cap,
                        audio=os.path.join(dirpath, fn),
                        language=lang,
                        words=words,
                    )
                )
                if limit is not None and len(samples) >= limit:
                    return cls(samples, allow_empty_lyrics, source=root)
        return cls(samples, allow_empty_lyrics, source=root)


def _gtsinger_language(root: str) -> str:
    name = os.path.basename(os.path.normpath(root)).lower()
    return {"english": "en", "chinese": "zh", "japanese": "ja", "korean": "ko", "french": "fr", "german": "de",
            "spanish": "es", "italian": "it", "russian": "ru"}.get(name, "en")  # fmt: skip


def gtsinger_words(path: str) -> list[dict[str, Any]]:
    """Sung words of one GTSinger segment JSON: ``[{"word", "start", "end"}]`` (seconds), silences skipped."""
    text = _decode(_read_bytes(path), path)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise DatasetError(f"{path}: not JSON ({e})") from None
    if isinstance(data, Mapping):
        data = data.get("words") or data.get("word") or data.get("notes") or []
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of word entries (word, start_time, end_time)")
    out: list[dict[str, Any]] = []
    for i, e in enumerate(data):
        if not isinstance(e, Mapping) or "word" not in e:
            raise DatasetError(f"{path}: entry {i} has no 'word' field")
        w = str(e["word"]).strip()
        if not w or w.lower() in NON_WORDS or not _WORD.search(w):
            continue
        try:
            s, t = float(e["start_time"]), float(e["end_time"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{path}: entry {i} ({w!r}) lacks numeric start_time/end_time") from None
        if out and out[-1]["word"] == w and abs(out[-1]["end"] - s) < 1e-6:
            out[-1]["end"] = t  # one word over several notes
            continue
        out.append({"word": w, "start": s, "end": t})
    return out


def _read_text(path: str) -> str | None:
    if not os.path.lexists(path):
        return None
    return _decode(_read_bytes(path), path).strip()


def _read_bytes(path: str) -> bytes:
    """The bytes of a regular file; a FIFO, device or folder is refused with :class:`DatasetError`."""
    try:
        with open_regular(path) as f:
            return f.read()
    except (NotARegularFileError, OSError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None


def _decode(raw: bytes, path: str, line: int | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"{path} line {line}" if line is not None else path
        raise DatasetError(f"{where} is not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 4]!r})") from None


def _jsonl_rows(path: str) -> Iterable[tuple[int, Any]]:
    """``(line number, JSON value)`` of every non-blank line of a JSON-lines file."""
    for n, raw in enumerate(_read_bytes(path).split(b"\n"), 1):
        line = _decode(raw, path, n)
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise DatasetError(f"{path} line {n}: not JSON ({e})") from None
        yield n, value


def _metadata_row(row: Any, path: str, n: int, language: str) -> tuple[str, str, str, str]:
    """``(audio, lyrics, caption with tags, language)`` of one ``metadata.jsonl`` row, each field's type checked."""
    where = f"{path} line {n}"
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object with audio, lyrics, caption; got {json_kind(row)}")
    miss = [k for k in ("audio", "caption") if not row.get(k)]
    if miss:
        raise DatasetError(f"{where}: missing field(s) {miss} (need audio, lyrics, caption)")
    for key, ok, what in (
        ("audio", lambda v: isinstance(v, str), "a string (a path)"),
        ("caption", lambda v: isinstance(v, str), "a string"),
        ("lyrics", lambda v: v is None or isinstance(v, str), "a string or null"),
        ("language", lambda v: v is None or (isinstance(v, str) and v), "a language code such as 'en'"),
        ("tags", _tags_ok, "a string or a list of strings"),
    ):
        if key in row and not ok(row[key]):
            raise DatasetError(f"{where}: {key!r} must be {what}; got {json_kind(row[key])} {row[key]!r:.60}")
    return (
        row["audio"],
        row.get("lyrics") or "",
        _with_tags(row["caption"], row.get("tags")),
        row.get("language") or language,
    )


def _tags_ok(v: Any) -> bool:
    return v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(t, str) for t in v))


def _with_tags(caption: str, tags: Any) -> str:
    if not tags:
        return caption.strip()
    if isinstance(tags, (list, tuple)):
        tags = ", ".join(str(t) for t in tags)
    return f"{caption.strip()}, {str(tags).strip()}" if caption.strip() else str(tags).strip()


def _sample_from_file(path: str, lyrics: str, caption: str, language: str, where: str = "") -> Sample:
    at = f" (named by {where})" if where else ""
    if not os.path.lexists(path):
        raise DatasetError(f"audio file {path} not found{at}")
    if not os.path.isfile(path):
        raise DatasetError(f"{path}{at} is not a regular file (a folder, device or FIFO?)")
    name = os.path.basename(path)
    if name.lower().endswith(LATENT_SUFFIX):
        lat = read_latents(path)
        return Sample(key=name[: -len(LATENT_SUFFIX)], lyrics=lyrics, caption=caption, latents=lat, language=language)
    return Sample(key=os.path.splitext(name)[0], lyrics=lyrics, caption=caption, audio=path, language=language)


def read_latents(path: str, name: str = "latents") -> torch.Tensor:
    """The tensor ``name`` of a safetensors file (a ``.latents.safetensors`` file or the latent cache): never a
    pickle; a damaged file, a missing tensor or one that is not a float ``[T, C]`` raises :class:`DatasetError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    raw = _read_bytes(path)
    if looks_like_pickle(raw[:9], len(raw)):
        raise DatasetError(
            f"{path} looks like a pickle / torch.save file; attnlens never loads pickles (they can run code). "
            f"Latents are safetensors files holding a {name!r} tensor [T, C]"
        )
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        raise DatasetError(
            f"{path} is not a readable safetensors file (damaged, truncated or another format): {e}"
        ) from None
    if name not in tensors:
        raise DatasetError(f"{path} holds no {name!r} tensor (found {sorted(tensors)})")
    lat = tensors[name]
    if lat.dim() != 2 or not lat.is_floating_point():
        raise DatasetError(f"{path}: {name!r} is {lat.dtype} of shape {tuple(lat.shape)}; expected float [T, C]")
    return lat


# ------------------------------------------------------------------------------------------- preprocessing


def load_audio(path: str, sample_rate: int, channels: int) -> torch.Tensor:
    """Audio ``[channels, N]`` float32 at ``sample_rate`` (soundfile read; polyphase resampling with scipy)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    try:
        x, sr = sf.read(path, dtype="float32", always_2d=True)  # [N, C]
    except Exception as e:
        raise DatasetError(f"cannot read audio {path}: {e}") from None
    if x.shape[0] == 0:
        raise DatasetError(f"{path} holds no audio samples")
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.argmax(bad.any(axis=1)))
        raise DatasetError(
            f"{path} holds {int(bad.sum())} NaN/Inf sample value(s), the first at sample {i} ({i / sr:.3f} s); "
            "audio samples must be finite numbers (it would encode to non-finite latents)"
        )
    if x.shape[1] == 1 and channels > 1:
        x = np.repeat(x, channels, axis=1)
    elif x.shape[1] != channels:
        raise DatasetError(f"{path} has {x.shape[1]} channels; the VAE takes {channels} (or mono)")
    if sr != sample_rate:
        g = math.gcd(int(sr), int(sample_rate))
        x = resample_poly(x, sample_rate // g, sr // g, axis=0).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.T))


def vae_hop(vae: Any) -> int | None:
    """Audio samples per latent frame of ``vae`` (``hop_length``, or the product of its downsampling ratios)."""
    hop = getattr(vae, "hop_length", None)
    ratios = getattr(getattr(vae, "config", None), "downsampling_ratios", None)
    if hop is None and ratios:
        hop = math.prod(int(r) for r in ratios)
    return int(hop) if hop else None


MIN_LATENT_FRAMES = 2
"""Latent frames a training clip needs at the least."""


def encode_audio(pipe: Any, path: str) -> torch.Tensor:
    """Latents ``[T, C]`` (float32, CPU) of the audio file at ``path``: the mean of the pipeline VAE's latent
    distribution. Refuses audio shorter than :data:`MIN_LATENT_FRAMES` latent frames (naming the minimum), audio
    with NaN/Inf samples, and latents that are not finite or not as wide as the DiT's input."""
    vae = pipe.vae
    sr = int(getattr(pipe, "sample_rate", 48000))
    audio = load_audio(path, sr, int(getattr(vae.config, "audio_channels", 2)))
    hop = vae_hop(vae)
    if hop is not None and audio.shape[-1] < MIN_LATENT_FRAMES * hop:
        n, need = audio.shape[-1], MIN_LATENT_FRAMES * hop
        raise DatasetError(
            f"{path} is too short: {n} samples at {sr} Hz ({n / sr:.4g} s); the minimum is {need} samples "
            f"({need / sr:.4g} s: {MIN_LATENT_FRAMES} latent frames of {hop} samples)"
        )
    audio = audio.to(device=pipe.transformer.device, dtype=vae.dtype)
    lat = vae.encode(audio[None]).latent_dist.mode()[0].transpose(0, 1).float().cpu()  # [T, C]
    want = int(pipe.transformer.config.audio_acoustic_hidden_dim)
    if lat.shape[1] != want:
        raise DatasetError(
            f"the VAE encodes {path} to {lat.shape[1]} latent channels but the DiT takes {want}: "
            "the pipeline's VAE and transformer do not belong together"
        )
    if not torch.isfinite(lat).all():
        raise DatasetError(
            f"the VAE encoded {path} to non-finite latents (NaN/Inf); check the audio and the VAE's dtype"
        )
    return lat


def _read_cache(path: str | None, names: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    """The tensors ``names`` of a cache file, or ``None`` when there is none or it cannot be read (then the entry
    is computed and written again, with a warning)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in names}
    except Exception as e:  # SafetensorError, a missing tensor: a damaged cache entry
        import warnings

        warnings.warn(f"cache file {path} cannot be read ({e}); computing it again", stacklevel=3)
        return None


def model_fingerprint(*modules: torch.nn.Module) -> str:
    """Hash of the classes, configs and parameter checksums (sum, sum of squares) of ``modules``."""
    h = hashlib.sha256()
    for m in modules:
        if m is None:
            continue
        h.update(type(m).__name__.encode())
        cfg = getattr(m, "config", None)
        if cfg is not None:
            d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
            h.update(json.dumps(d, sort_keys=True, default=str).encode())
        with torch.no_grad():
            for name, p in m.named_parameters():
                if ".lora_" in name:
                    continue
                v = p.detach().double()
                h.update(f"{name}:{tuple(p.shape)}:{float(v.sum()):.17g}:{float((v * v).sum()):.17g}".encode())
    return h.hexdigest()[:16]


def _atomic_save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    atomic_save_safetensors(path, tensors, metadata)


@dataclass
class Prepared:
    """One preprocessed example: clean latents and the cached conditioning."""

    key: str
    latents: torch.Tensor  # [T, C] float32
    encoder_hidden_states: torch.Tensor  # [S, hidden] float32
    lyric_positions: list[int]
    lyrics: str
    caption: str
    language: str
    audio_duration: float


class PreparedDataset:
    """Preprocessed examples (latents + conditioning), built by :func:`prepare`."""

    def __init__(self, items: list[Prepared]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Prepared:
        return self.items[i]


@torch.no_grad()
def prepare(
    pipe: Any,
    dataset: AudioLyricsDataset,
    cache_dir: str | None = None,
    max_seconds: float | None = None,
    progress: bool = False,
) -> PreparedDataset:
    """Encode audio with the pipeline's VAE (mean of the latent distribution) and the conditioning with its text
    and condition encoders, once per sample; cache both on disk (safetensors) keyed by a hash of the content
    (audio bytes or latents, lyrics, caption, language, duration) and of the models.

    ``max_seconds`` crops every clip to its first ``max_seconds`` (latent frames ``ceil(max_seconds · 25)``).
    """
    from tqdm.auto import tqdm

    from .conditioning import encode_condition

    device = pipe.transformer.device
    vae = getattr(pipe, "vae", None)
    fp_vae = fp_cond = None
    items = []
    for s in tqdm(dataset.samples, desc="prepare", disable=not progress):
        # ---- latents
        if s.latents is not None:
            lat = s.latents
        else:
            if vae is None:
                raise DatasetError(f"sample {s.key!r} is audio but the pipeline has no VAE to encode it")
            fp_vae = fp_vae or model_fingerprint(vae)
            digest = hashlib.sha256(_read_bytes(s.audio)).hexdigest()
            path = os.path.join(cache_dir, "latents", f"{digest[:24]}-{fp_vae}.safetensors") if cache_dir else None
            cached = _read_cache(path, ("latents",))
            if cached is not None:
                lat = cached["latents"]
            else:
                lat = encode_audio(pipe, s.audio)
                if path:
                    _atomic_save({"latents": lat}, path, {"audio": os.path.basename(s.audio)})
        if max_seconds is not None:
            lat = lat[: math.ceil(max_seconds * pipe.latents_per_second)]
        T = lat.shape[0]
        if T < 2:
            raise DatasetError(f"sample {s.key!r} is too short ({T} latent frames)")
        duration = T / pipe.latents_per_second
        # ---- conditioning
        fp_cond = fp_cond or model_fingerprint(pipe.text_encoder, pipe.condition_encoder)
        ck = hashlib.sha256(json.dumps([s.caption, s.lyrics, s.language, int(duration), fp_cond]).encode()).hexdigest()[
            :32
        ]
        cpath = os.path.join(cache_dir, "condition", f"{ck}.safetensors") if cache_dir else None
        cached = _read_cache(cpath, ("encoder_hidden_states", "lyric_positions"))
        if cached is not None:
            ehs, pos = cached["encoder_hidden_states"], cached["lyric_positions"].tolist()
        else:
            cond = encode_condition(pipe, [s.caption], [s.lyrics], duration, s.language, device=device)
            ehs = cond.encoder_hidden_states[0].float().cpu()
            pos = cond.lyric_positions()[0]
            if cpath:
                _atomic_save(
                    {"encoder_hidden_states": ehs, "lyric_positions": torch.tensor(pos, dtype=torch.long)},
                    cpath,
                    {"layout": json.dumps(cond.layout.to_json())},
                )
        items.append(
            Prepared(
                key=s.key,
                latents=lat.float(),
                encoder_hidden_states=ehs,
                lyric_positions=list(pos),
                lyrics=s.lyrics,
                caption=s.caption,
                language=s.language,
                audio_duration=duration,
            )
        )
    return PreparedDataset(items)
