"""Run a suite over variants x seeds: generate, save, transcribe, score; one durable row per (prompt, variant, seed).

Work is cut into *units*: one unit = one generation call = ``batch_size`` prompts of the suite (in suite order)
for one (variant, seed). Batch composition is fixed by the suite and ``batch_size`` alone and recorded in every
row (``batch_size``, ``batch_index``, ``batch_ids``), because ACE-Step's cross-attention has no mask and an item's
output depends on its batch mates. A unit with any row missing is regenerated whole (same mates, same output);
only the missing rows are written.

Several processes share the work by unit: unit ``i`` belongs to rank ``i % world_size``; each rank appends to its
own ``results.rank{r}.csv`` and :func:`merge` combines them. ``rank``/``world_size`` default to the ``RANK`` /
``WORLD_SIZE`` environment variables set by torchrun and accelerate.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .asr import to_mono_float32
from .store import RowStore, atomic_write_bytes, atomic_write_text, merge_shards, read_results
from .suite import PromptEntry, Suite
from .text import Normalizer, error_rates

Scorer = Callable[[Any, PromptEntry, int], Mapping[str, float]]

CONFIG_KEYS: tuple[str, ...] = ("batch_size", "normalize", "output", "generate_kwargs", "audio_format")


@dataclass(frozen=True)
class Variant:
    """A model variant: no adapter (``path=None``), a LoRA adapter loaded into ``pipe.transformer``, or a router
    (:class:`~attnlens.eval.Router`; ``path`` is its JSON file if it came from one) that picks one per prompt."""

    name: str
    path: str | None = None
    scale: float = 1.0
    router: Any = None


def parse_variants(variants: Mapping[str, Any] | None) -> list[Variant]:
    """``{"baseline": None, "lora": "runs/x/adapter", "half": {"path": ..., "scale": 0.5}}`` -> validated list.

    Adapter paths must exist (checked here, before any generation). A :class:`~attnlens.eval.Router` or the path of
    one saved as JSON (``.json``) makes a routed variant.
    """
    from .router import Router

    if variants is None:
        variants = {"baseline": None}
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants must be a non-empty mapping of name -> adapter path (or None for no adapter)")
    out = []
    for name, spec in variants.items():
        if not isinstance(name, str) or not name or any(c in name for c in "/\\,\n"):
            raise ValueError(f"variant name {name!r} must be a non-empty string without '/', '\\\\', ',' or newline")
        scale = 1.0
        if isinstance(spec, Router) or (isinstance(spec, (str, os.PathLike)) and os.fspath(spec).endswith(".json")):
            router = spec if isinstance(spec, Router) else Router.load(spec)
            out.append(Variant(name, None if isinstance(spec, Router) else os.fspath(spec), 1.0, router))
            continue
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"path", "scale"}
            if unknown:
                raise ValueError(f"variant {name!r}: unknown keys {sorted(unknown)} (expected 'path', 'scale')")
            scale = float(spec.get("scale", 1.0))
            spec = spec.get("path")
        if spec is not None:
            spec = os.fspath(spec)
            if not os.path.exists(spec):
                raise FileNotFoundError(f"variant {name!r}: adapter path {spec!r} does not exist")
            _refuse_pickled_adapter(name, spec)
        out.append(Variant(name, spec, scale))
    return out


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _refuse_pickled_adapter(name: str, path: str) -> None:
    """diffusers' ``load_lora_adapter`` falls back to ``torch.load`` (pickle) when a folder holds no safetensors
    file; attnlens never loads pickles, so such an adapter is refused here, before any generation."""
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ValueError(
                f"variant {name!r}: adapter file {path!r} is not a .safetensors file (pickles are refused)"
            )
        return
    names = os.listdir(path)
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles and not any(n.endswith(".safetensors") for n in names):
        raise ValueError(
            f"variant {name!r}: adapter folder {path!r} holds pickle weights {pickles[:3]} and no .safetensors file; "
            "attnlens never loads pickles (they can run code): save the adapter as safetensors"
        )


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


class AdapterSwitch:
    """Loads each adapter once into ``pipe.transformer`` and activates the one a variant needs."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.loaded: dict[str, str] = {}  # variant name -> adapter name in the model

    def deactivate(self) -> None:
        """No adapter active (the base model)."""
        tr = getattr(self.pipe, "transformer", None)
        if self.loaded and tr is not None:
            tr.disable_lora()

    def close(self) -> None:
        """Delete the adapters this switch loaded, so that the pipeline is left as it was found (a later run may load
        adapters of the same names). LoRA is enabled first, as on a fresh model: an adapter loaded afterwards is
        active, not silently disabled."""
        tr = getattr(self.pipe, "transformer", None)
        if not self.loaded or tr is None:
            return
        tr.enable_lora()
        tr.delete_adapters(sorted(self.loaded.values()))
        self.loaded.clear()

    def activate(self, v: Variant) -> None:
        tr = getattr(self.pipe, "transformer", None)
        if v.path is None:
            self.deactivate()
            return
        if tr is None or not hasattr(tr, "load_lora_adapter"):
            raise TypeError(f"variant {v.name!r} needs pipe.transformer.load_lora_adapter (a diffusers model)")
        if v.name not in self.loaded:
            name = base = v.name.replace(".", "_")  # a module name of torch holds no "."
            while name in self.loaded.values():
                name = f"{base}_{len(self.loaded)}"
            tr.load_lora_adapter(v.path, adapter_name=name, use_safetensors=True)
            self.loaded[v.name] = name
        tr.enable_lora()
        tr.set_adapters([self.loaded[v.name]], weights=[v.scale])


def _transcribe(transcriber: Any, x: Any, sr: int | None) -> tuple[str, list[Any]]:
    if hasattr(transcriber, "transcribe"):
        out = transcriber.transcribe(x, sr)
    elif callable(transcriber):
        out = transcriber(x)
    else:
        raise TypeError("transcriber must have .transcribe(audio, sample_rate) or be a callable(audio_or_latents)")
    if isinstance(out, str):
        return out, []
    text = getattr(out, "text", None)
    if not isinstance(text, str):
        raise TypeError(f"transcriber returned {type(out).__name__}; expected a str or an object with .text")
    return text, list(getattr(out, "words", []) or [])


def _save_audio(path: Path, audio: np.ndarray, sr: int, fmt: str) -> None:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    # audio: [channels, time] -> soundfile wants [time, channels]
    sf.write(buf, audio.T if audio.ndim == 2 else audio, sr, format=fmt.upper(), subtype="PCM_24")
    atomic_write_bytes(path, buf.getvalue())


def _save_latents(path: Path, latents: Any) -> None:
    import torch
    from safetensors.torch import save

    atomic_write_bytes(path, save({"latents": torch.as_tensor(latents).detach().float().cpu().contiguous()}))


def _units(suite: Suite, variants: list[Variant], seeds: Sequence[int] | None, batch_size: int) -> list[tuple]:
    """All units (variant, seed, [entries]) in a fixed order: variant, then seed, then suite order."""
    units = []
    for v in variants:
        if seeds is None:
            by_seed: dict[int, list[PromptEntry]] = {}
            for e in suite:
                if e.seed is None:
                    raise ValueError(f"entry {e.id!r} has no seed and run() got seeds=None; pass seeds=[...]")
                by_seed.setdefault(e.seed, []).append(e)
            groups = list(by_seed.items())
        else:
            groups = [(int(s), list(suite)) for s in seeds]
        for seed, entries in groups:
            for i in range(0, len(entries), batch_size):
                units.append((v, seed, entries[i : i + batch_size]))
    return units


def _check_config(out_dir: Path, config: dict[str, Any]) -> None:
    path = out_dir / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), config[k]) for k in CONFIG_KEYS if old.get(k) != config[k]}
        if diff:
            raise ValueError(
                f"{out_dir} holds results made with other settings {diff} (old, new); use a new out_dir "
                "so that rows stay comparable"
            )
    else:
        atomic_write_text(path, json.dumps(config, indent=2, default=str))


def run(
    pipe: Any,
    suite: Suite,
    variants: Mapping[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    transcriber: Any = None,
    out_dir: str | os.PathLike = "eval",
    *,
    batch_size: int = 1,
    scorer: Scorer | None = None,
    normalize: Normalizer = "auto",
    output: str = "audio",
    generate_kwargs: Mapping[str, Any] | None = None,
    audio_format: str = "flac",
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    alignment_heads: Any = None,
) -> pd.DataFrame:
    """Evaluate ``suite`` x ``variants`` x ``seeds`` with ``pipe``; resumable. Returns the results table.

    Args:
        pipe: an ``AceStepPipeline`` (or anything called like one and returning ``.audios``).
        suite: a validated :class:`Suite`.
        variants: name -> adapter path / None / ``{"path", "scale"}``; default ``{"baseline": None}``.
        seeds: seeds to run every prompt with; None uses each entry's own ``seed``.
        transcriber: a :class:`~attnlens.eval.Transcriber` (anything with ``.transcribe(audio, sr)``) or a
            callable ``decode(audio_or_latents) -> str``.
        out_dir: results.csv (or results.rank{r}.csv), audio/ (or latents/), run.json.
        batch_size: prompts per generation call (default 1: outputs do not depend on batch mates).
        alignment_heads: when given (``"default"`` for ACE-Step's heads, a dict ``{layer: [heads]}`` or (layer, head)
            pairs), each generation runs under ``al.capture`` keeping those heads' maps at the last step, and the row
            gets ``aas``: ACE-Step's lyrics alignment score of that step (4 decimals).
        scorer: optional ``scorer(pipe, entry, seed) -> dict`` called after each generation with the variant's
            adapter active; its keys become columns (name alignment scores ``aas_*`` to have them summarized).
        normalize: text normalization for WER/CER (see :mod:`attnlens.eval.text`); the default ``"auto"`` normalizes
            each prompt by its ``language`` (English: Whisper's English normalizer; others: its basic one), and the
            CER of Chinese, Japanese and Korean prompts ignores spaces (their headline error rate).
        output: ``"audio"`` (decode with the VAE, save audio, transcribe audio) or ``"latent"`` (pass each item's
            latents ``[time, channels]`` to the transcriber; latents saved as safetensors).
        generate_kwargs: extra pipeline arguments (``num_inference_steps``, ``guidance_scale``, ``shift``, ...).
        rank, world_size: share the units between processes (default from ``RANK``/``WORLD_SIZE``).
        on_row: called with each row dict right after it is committed.
    """
    import torch

    if not isinstance(suite, Suite):
        raise TypeError(f"suite must be an attnlens.eval.Suite, got {type(suite).__name__}")
    if transcriber is None:
        raise ValueError("run() needs a transcriber: a Transcriber, an object with .transcribe(), or a callable")
    if output not in ("audio", "latent"):
        raise ValueError(f"output must be 'audio' or 'latent', got {output!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    vlist = parse_variants(variants)
    rank = _env_int("RANK", 0) if rank is None else int(rank)
    world_size = _env_int("WORLD_SIZE", 1) if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    gen_kwargs = dict(generate_kwargs or {})
    reserved = {"prompt", "lyrics", "audio_duration", "generator", "output_type", "vocal_language"} & set(gen_kwargs)
    if reserved:
        raise ValueError(f"generate_kwargs may not set {sorted(reserved)}; they come from the suite and run()")
    units = _units(suite, vlist, seeds, batch_size)
    routes = routed_variants(vlist, batch_size)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "batch_size": batch_size,
        "normalize": normalize if isinstance(normalize, str) else getattr(normalize, "__name__", "callable"),
        "output": output,
        "generate_kwargs": json.loads(json.dumps(gen_kwargs, default=str)),
        "audio_format": audio_format,
        "suite": suite.name,
        "variants": {
            v.name: {"path": v.path, "scale": v.scale, **({"router": True} if v.router is not None else {})}
            for v in vlist
        },
        "transcriber": repr(transcriber),
    }
    _check_config(out, config)
    results_path = out / ("results.csv" if world_size == 1 else f"results.rank{rank}.csv")
    store = RowStore(results_path)
    for key, rec in store.rows.items():  # a resumed run must score the same words
        if key[0] in suite.ids and rec.get("ground_truth") != suite[key[0]].reference:
            raise ValueError(f"{results_path}: row {key} was scored against other lyrics than suite entry {key[0]!r}")

    mine = [(i, *u) for i, u in enumerate(units) if i % world_size == rank]
    total = sum(len(u[3]) for u in mine)
    todo = sum((e.id, v.name, s) not in store.done for _, v, s, es in mine for e in es)
    pending = [u for u in mine if any((e.id, u[1].name, u[2]) not in store.done for e in u[3])]
    switch = AdapterSwitch(pipe)
    sr = int(getattr(pipe, "sample_rate", 48_000))
    pairs = None
    if alignment_heads is not None:
        from ..analyzers.alignment_score import DEFAULT_HEADS
        from ..analyzers.capture_arrays import parse_heads

        pairs = parse_heads(DEFAULT_HEADS if alignment_heads == "default" else alignment_heads)
    bar = _progress(total, total - todo, progress, desc=f"eval rank {rank}/{world_size}" if world_size > 1 else "eval")
    try:
        for batch_index, variant, seed, entries in pending:
            gens = [torch.Generator().manual_seed(seed) for _ in entries]
            call = dict(
                prompt=[e.prompt for e in entries] if len(entries) > 1 else entries[0].prompt,
                lyrics=[e.lyrics for e in entries] if len(entries) > 1 else entries[0].lyrics,
                audio_duration=max(e.duration for e in entries),
                vocal_language=[e.language for e in entries] if len(entries) > 1 else entries[0].language,
                generator=gens if len(entries) > 1 else gens[0],
                output_type="latent" if output == "latent" else "pt",
                **gen_kwargs,
            )
            active, routed_to = variant, ""
            if variant.router is not None:
                from .route import choose_for_call

                routed_to = choose_for_call(pipe, variant.router, call, switch)
                active = routes[variant.name][routed_to]
            switch.activate(active)
            t0 = time.perf_counter()
            cap_ctx = contextlib.nullcontext(None)
            if pairs is not None:
                from ..captures.session import capture

                cap_ctx = capture(
                    pipe,
                    layers=sorted({a for a, _ in pairs}),
                    heads=sorted({b for _, b in pairs}),
                    steps=[-1],
                    maps=True,
                )
            with cap_ctx as cap:
                result = pipe(**call)
            gen_s = (time.perf_counter() - t0) / len(entries)
            items = result.audios if hasattr(result, "audios") else result[0]
            batch_ids = "|".join(e.id for e in entries)
            for j, e in enumerate(entries):
                if (e.id, variant.name, seed) in store.done:
                    continue
                item = items[j]
                if output == "audio":
                    audio = item.detach().float().cpu().numpy() if hasattr(item, "detach") else np.asarray(item)
                    audio = audio[..., : int(round(e.duration * sr))]  # [channels, time]
                    rel = Path("audio") / variant.name / f"{e.id}__seed{seed}.{audio_format}"
                    _save_audio(out / rel, audio, sr, audio_format)
                    t1 = time.perf_counter()
                    text, words = _transcribe(transcriber, to_mono_float32(audio), sr)
                else:
                    rel = Path("latents") / variant.name / f"{e.id}__seed{seed}.safetensors"
                    _save_latents(out / rel, item)
                    t1 = time.perf_counter()
                    text, words = _transcribe(transcriber, item, None)
                asr_s = time.perf_counter() - t1
                scores = error_rates(e.reference, text, normalize, language=e.language)
                row: dict[str, Any] = {
                    "prompt_id": e.id,
                    "genre": e.genre,
                    "variant": variant.name,
                    "seed": seed,
                    "wer": round(scores["wer"], 6),
                    "cer": round(scores["cer"], 6),
                    "language": e.language,
                    "transcription": text,
                    "ground_truth": e.reference,
                    "n_words": len(words),
                    "adapter": active.path or "",
                    "adapter_scale": active.scale if active.path else "",
                    "batch_size": batch_size,
                    "batch_index": batch_index,
                    "batch_ids": batch_ids,
                    "artifact": rel.as_posix(),
                    "gen_seconds": round(gen_s, 4),
                    "asr_seconds": round(asr_s, 4),
                    "rank": rank,
                    "world_size": world_size,
                }
                if routes:
                    row["routed_to"] = routed_to
                if cap is not None:
                    from ..analyzers.alignment_score import lyrics_alignment_score

                    row["aas"] = lyrics_alignment_score(cap, heads=pairs, step=-1, batch=j).score
                if scorer is not None:
                    extra = dict(scorer(pipe, e, seed))
                    clash = set(extra) & set(row)
                    if clash:
                        raise ValueError(f"scorer returned keys {sorted(clash)} that clash with result columns")
                    row.update({k: float(v) for k, v in extra.items()})
                store.add(row)
                bar.update(1)
                if on_row is not None:
                    on_row(row)
    finally:
        bar.close()
        switch.close()
    if not results_path.exists():
        return pd.DataFrame()
    return read_results(results_path)


def routed_variants(vlist: list[Variant], batch_size: int) -> dict[str, dict[str, Variant]]:
    """For each routed variant, the variant behind each of its router's choices: the run's variant of that name,
    else the adapter the router recorded. Routed variants generate one prompt per call."""
    from .route import router_variants

    plain = {
        v.name: (None if v.path is None else {"path": v.path, "scale": v.scale}) for v in vlist if v.router is None
    }
    routes = {v.name: router_variants(v.router, plain) for v in vlist if v.router is not None}
    if routes and batch_size != 1:
        raise ValueError(f"routed variants {sorted(routes)} pick an adapter per prompt: they need batch_size=1")
    return routes


def merge(out_dir: str | os.PathLike) -> pd.DataFrame:
    """Combine the shard files of a multi-process run (``results.rank*.csv``) into ``results.csv``."""
    return merge_shards(out_dir)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="row")
