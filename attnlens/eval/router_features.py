"""What a router reads about a prompt: its words, numeric facts of its lyrics, and the base model's attention at the
first sampling step.

Three feature groups, each computable for a prompt a router has never seen:

- ``"text"``: the prompt's words (caption and tags, or the style name of a table without captions), lowercased,
  split on anything that is not a letter or digit (``"latin_pop"`` -> ``latin``, ``pop``); a bag of words.
- ``"facts"``: numeric facts of the lyrics (``n_words``, ``n_lines``, ``mean_word_length`` of the sung words;
  ``duration`` when known) and the language, as the word ``language=<code>``.
- ``"attention"``: one sampling step of the base model (no adapter) under :func:`attnlens.capture`: the mean lyric
  mass and mean normalized entropy over every layer and head, and the mean lyric mass and sung-frame monotonic
  alignment of the alignment heads (``heads=``, or this prompt's own ``top_k`` heads by
  :func:`attnlens.find_alignment_heads`). A one-step call sees exactly the first step of a longer generation with
  the same generator: the first timestep and the initial noise are the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .stats import prompt_column
from .suite import PromptEntry, Suite
from .text import lyrics_to_reference

GROUPS: tuple[str, ...] = ("text", "facts", "attention")
ATTENTION_COLUMNS: tuple[str, ...] = (
    "attn_lyric_mass",
    "attn_entropy",
    "attn_heads_lyric_mass",
    "attn_heads_monotonic",
)
ONE_STEP_DROPPED: tuple[str, ...] = (
    "num_inference_steps",
    "timesteps",
    "output_type",
    "callback",
    "callback_on_step_end",
)

_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class PromptInfo:
    """One prompt as a router sees it."""

    id: str
    text: str
    lyrics: str = ""
    duration: float | None = None
    language: str = "en"

    @classmethod
    def from_entry(cls, e: PromptEntry) -> PromptInfo:
        return cls(e.id, e.prompt, e.lyrics, e.duration, e.language)


def words(text: str) -> list[str]:
    """Lowercased words of ``text`` (letters and digits; ``_`` and punctuation separate words)."""
    return _WORD.findall(text.lower())


def lyric_facts(info: PromptInfo) -> dict[str, float]:
    """``n_words``, ``n_lines``, ``mean_word_length`` of the sung words, and ``duration`` when known."""
    sung = lyrics_to_reference(info.lyrics).split()
    lines = [ln for ln in info.lyrics.splitlines() if lyrics_to_reference(ln)]
    out = {
        "n_words": float(len(sung)),
        "n_lines": float(len(lines)),
        "mean_word_length": float(np.mean([len(w) for w in sung])) if sung else 0.0,
    }
    if info.duration is not None:
        out["duration"] = float(info.duration)
    return out


def prompt_infos(results: pd.DataFrame, prompts: Any = None) -> dict[str, PromptInfo]:
    """The prompts of a results table, by id.

    ``prompts``: a :class:`~attnlens.eval.Suite`, a mapping id -> text / :class:`PromptEntry` / :class:`PromptInfo`,
    or ``None``: then the text is the table's ``caption`` column if it has one, else the prompt's name
    (``"latin_pop"`` reads as ``latin pop``), and the lyrics its ``ground_truth`` column (the sung words).
    """
    pcol = prompt_column(results)
    first = results.drop_duplicates(pcol)
    first = first.set_index(first[pcol].astype(str))
    ids = list(first.index)
    out: dict[str, PromptInfo] = {}
    for pid in ids:
        given = None
        if isinstance(prompts, Suite):
            given = prompts[pid] if pid in prompts.ids else None
        elif prompts is not None:
            given = prompts.get(pid)
        if isinstance(given, PromptEntry):
            out[pid] = PromptInfo.from_entry(given)
        elif isinstance(given, PromptInfo):
            out[pid] = given
        elif isinstance(given, str):
            out[pid] = PromptInfo(pid, given, _column(first, pid, "ground_truth"))
        elif given is None and prompts is not None:
            raise KeyError(f"prompt {pid!r} of the results is not in the prompts given")
        elif given is None:
            text = _column(first, pid, "caption") or pid
            out[pid] = PromptInfo(pid, text, _column(first, pid, "ground_truth"))
        else:
            raise TypeError(f"prompts[{pid!r}] is a {type(given).__name__}; expected a str, PromptEntry or PromptInfo")
    return out


def _column(first: pd.DataFrame, pid: str, col: str) -> str:
    return str(first.loc[pid, col]) if col in first.columns else ""


@dataclass(frozen=True)
class AttentionSpec:
    """How the attention features are read: which heads (``None``: each prompt's own ``top_k`` alignment heads)."""

    heads: tuple[tuple[int, int], ...] | None = None
    top_k: int = 4

    def to_dict(self) -> dict[str, Any]:
        return {"heads": None if self.heads is None else [list(h) for h in self.heads], "top_k": self.top_k}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttentionSpec:
        heads = d.get("heads")
        return cls(None if heads is None else tuple((int(a), int(b)) for a, b in heads), int(d.get("top_k", 4)))


def attention_rows(cap: Any, spec: AttentionSpec) -> list[dict[str, float]]:
    """The attention features of every conditional batch item of a capture (its first kept step)."""
    import attnlens as al

    df = al.analyze(cap)
    df = df[df["step"] == df["step"].min()]
    if "lyric_mass" not in df.columns:
        raise ValueError("attention features need a family with a 'lyric' segment (lyric_mass); this capture has none")
    labels = list(cap.batch_labels)
    items = [i for i, lab in enumerate(labels) if not str(lab).startswith("uncond")]
    rows = []
    for b in items:
        d = df[df["batch"] == b]
        if spec.heads is None:
            top = al.find_alignment_heads(cap, top_k=spec.top_k, batch=b, table=df)
            pairs = set(top.attrs["heads"])
        else:
            pairs = set(spec.heads)
        sel = d[[(int(a), int(h)) in pairs for a, h in zip(d["layer"], d["head"])]]
        if sel.empty:
            raise ValueError(f"none of the heads {sorted(pairs)} is in the capture (layers {sorted(set(d['layer']))})")
        rows.append(
            {
                "attn_lyric_mass": float(d["lyric_mass"].mean()),
                "attn_entropy": float(d["entropy"].mean()),
                "attn_heads_lyric_mass": float(sel["lyric_mass"].mean()),
                "attn_heads_monotonic": float(sel["monotonic_alignment_sung"].mean()),
            }
        )
    return rows


def one_step_call(pipe: Any, call: Mapping[str, Any], spec: AttentionSpec) -> list[dict[str, float]]:
    """Run ``pipe(**call)`` for one sampling step with no adapter active, under a capture of that step; return the
    attention features per batch item. The generator(s) in ``call`` are copied, never advanced, so a generation
    that follows with the same generator starts from the same noise. The caller disables adapters."""
    import torch

    import attnlens as al

    kw = {k: v for k, v in call.items() if k not in ONE_STEP_DROPPED}
    gen = kw.get("generator")
    if isinstance(gen, torch.Generator):
        kw["generator"] = _copy_generator(gen)
    elif isinstance(gen, (list, tuple)):
        kw["generator"] = [_copy_generator(g) for g in gen]
    with torch.random.fork_rng(devices=[]), al.capture(pipe, steps=[0]) as cap:
        pipe(**kw, num_inference_steps=1, output_type="latent")
    return attention_rows(cap, spec)


def _copy_generator(g: Any) -> Any:
    import torch

    c = torch.Generator(device=g.device)
    c.set_state(g.get_state())
    return c


def attention_features(
    pipe: Any,
    prompts: Suite | Iterable[PromptEntry | PromptInfo],
    *,
    heads: Sequence[tuple[int, int]] | None = None,
    top_k: int = 4,
    seed: int | None = None,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Attention features of each prompt from one sampling step of ``pipe`` (adapters off), a row per prompt.

    Each prompt runs alone (batch 1) with ``torch.Generator().manual_seed(seed)`` (default: the entry's own seed,
    else 0), as :func:`attnlens.eval.run` generates it. Columns: ``attn_lyric_mass``, ``attn_entropy`` (means over
    every layer and head), ``attn_heads_lyric_mass``, ``attn_heads_monotonic`` (the alignment heads: ``heads``, or
    each prompt's own ``top_k`` by :func:`attnlens.find_alignment_heads`). Pass the table as a feature to
    :func:`attnlens.eval.fit_router`; it remembers how to compute the features for a new prompt.
    """
    import torch

    spec = AttentionSpec(None if heads is None else tuple((int(a), int(b)) for a, b in heads), int(top_k))
    rows = {}
    tr = getattr(pipe, "transformer", None)
    if tr is not None and getattr(tr, "peft_config", None):
        tr.disable_lora()
    for p in prompts:
        info = PromptInfo.from_entry(p) if isinstance(p, PromptEntry) else p
        s = seed if seed is not None else (getattr(p, "seed", None) or 0)
        call = {
            **dict(generate_kwargs or {}),
            "prompt": info.text,
            "lyrics": info.lyrics,
            "audio_duration": info.duration if info.duration is not None else 30.0,
            "vocal_language": info.language,
            "generator": torch.Generator().manual_seed(int(s)),
        }
        rows[info.id] = one_step_call(pipe, call, spec)[0]
    df = pd.DataFrame.from_dict(rows, orient="index", columns=list(ATTENTION_COLUMNS))
    df.attrs["attnlens_feature"] = {
        "kind": "attention",
        **spec.to_dict(),
        "generate_kwargs": dict(generate_kwargs or {}),
    }
    return df


def finite(x: float) -> float:
    """``x`` as a float, refusing NaN and infinities (a feature must be a number)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"feature value {x} is not finite")
    return x
