"""The keys of Stable Audio's cross-attention, rebuilt from the token ids the pipeline's T5 encoder saw.

``StableAudioPipeline`` conditions cross-attention on ``cat(prompt embeddings, seconds_start, seconds_end)``: the
T5 encoder's output over ``model_max_length`` positions (padding positions zeroed by the text mask, so their keys
are ``to_k(0)``, still in the softmax: the pipeline passes no mask), then one embedding for the start time and one
for the total time. Under classifier-free guidance the batch is doubled, unconditional half first: the negative
prompt's tokens when one is given, else an all-zero (``null``) condition. ``num_waveforms_per_prompt`` repeats
each row in place.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ...captures.layout import ItemLayout, Layout
from ...segments import Segments
from ...taps.hooks import HookSet

STABLE_AUDIO_SEGMENTS = Segments(
    names=("prompt", "prompt_special", "padding", "seconds_start", "seconds_total", "null"),
    sequence="prompt",
    sequence_meta="prompt_special",
    family="stable-audio",
)
"""Stable Audio's keys: prompt tokens (the sequence ``L``), the prompt's special tokens (``</s>``), padding, the
start-time and total-time embeddings, and the zeroed condition of guidance without a negative prompt."""

WORD_RE = re.compile(r"\S+")
N_TIMING = 2  # seconds_start, seconds_total


def prompt_item(tokenizer: Any, ids: list[int], mask: list[int]) -> ItemLayout:
    """Layout of one row: its ``len(ids)`` text positions (valid tokens labelled and mapped to the prompt's words,
    special tokens as ``prompt_special``, masked positions as ``padding``), then ``seconds_start``, ``seconds_total``."""
    valid = [i for i, m in zip(ids, mask) if m]
    unk = getattr(tokenizer, "unk_token_id", None)
    special = set(getattr(tokenizer, "all_special_ids", []) or []) - {unk}  # an unknown character is still prompt
    text = tokenizer.decode([i for i in valid if i not in special], skip_special_tokens=True)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    plain = [i for i in valid if i not in special]
    offsets = enc["offset_mapping"] if list(enc["input_ids"]) == plain else None
    words = [(m.start(), m.end()) for m in WORD_RE.finditer(text)]
    segs, toks, spans, widx = [], [], [], []
    k = 0  # index among the plain (non-special) tokens
    for i, m in zip(ids, mask):
        if not m:
            segs.append("padding")
            toks.append(None)
            spans.append(None)
            widx.append(-1)
            continue
        toks.append(tokenizer.decode([i], skip_special_tokens=False))
        if i in special:
            segs.append("prompt_special")
            spans.append(None)
            widx.append(-1)
            continue
        segs.append("prompt")
        span = tuple(offsets[k]) if offsets is not None else None
        spans.append(span)
        w = -1
        if span is not None:
            w = next((wi for wi, (ws, we) in enumerate(words) if span[0] < we and span[1] > ws), -1)
        widx.append(w)
        k += 1
    segs += ["seconds_start", "seconds_total"]
    toks += [None, None]
    spans += [None, None]
    widx += [-1, -1]
    kinds = ["sung" if s == "prompt" else ("end" if s == "prompt_special" else None) for s in segs]
    return ItemLayout(
        segments=segs,
        tokens=toks,
        kinds=kinds,
        char_spans=spans,
        word_index=widx,
        line_index=[0 if w >= 0 else -1 for w in widx],  # a prompt is one line
        lyrics=text,
        caption=text,
        words=[text[s:e] for s, e in words],
        word_spans=words,
        word_line=[0] * len(words),
        lines=[text] if words else [],
        vocabulary=STABLE_AUDIO_SEGMENTS,
    )


def null_item(n_keys: int) -> ItemLayout:
    """A zeroed condition (guidance without a negative prompt): every key ``null``."""
    return ItemLayout(segments=["null"] * n_keys, vocabulary=STABLE_AUDIO_SEGMENTS)


class StableAudioLayoutRecorder:
    """Hooks on a ``StableAudioPipeline`` that record the ids and masks of each T5 encoder call (the prompts, then
    the negative prompts when given) and match them to the transformer's batch (:meth:`rows`)."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (ids [n, L], mask [n, L]) per encoder call
        self.layout: Layout | None = None
        self.labels: list[str] | None = None

    def attach(self, hooks: HookSet) -> None:
        hooks.forward_pre(self.pipeline.text_encoder, self._te_pre, with_kwargs=True)

    def _te_pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if ids is None:
            return
        ids = ids.detach().cpu()
        mask = torch.ones_like(ids) if mask is None else mask.detach().cpu()
        self.calls.append((ids, mask))
        self.layout = self.labels = None

    def rows(self, batch: int, args: tuple, kwargs: dict) -> tuple[Layout, list[str]] | None:
        """The layout and labels of the transformer's ``batch`` rows, or ``None`` when the prompts were not seen
        (embeddings passed in) or do not fit the batch."""
        if self.layout is not None and len(self.layout) == batch:
            return self.layout, self.labels
        if not self.calls:
            return None
        tok = self.pipeline.tokenizer
        pos_ids, pos_mask = self.calls[0]
        n = pos_ids.shape[0]
        pos = [prompt_item(tok, pos_ids[i].tolist(), pos_mask[i].tolist()) for i in range(n)]
        if len(self.calls) >= 2:  # a negative prompt: [negative..., positive...], each row repeated in place
            neg_ids, neg_mask = self.calls[1]
            base = [prompt_item(tok, neg_ids[i].tolist(), neg_mask[i].tolist()) for i in range(n)] + pos
            base_labels = [f"uncond:{i}" for i in range(n)] + [f"cond:{i}" for i in range(n)]
        elif batch % (2 * n) == 0 and _null_first_half(batch, args, kwargs):
            base = [null_item(pos[0].n_keys)] * n + pos
            base_labels = [f"uncond:{i}" for i in range(n)] + [f"cond:{i}" for i in range(n)]
        else:
            base, base_labels = pos, [f"cond:{i}" for i in range(n)]
        if batch % len(base):
            return None
        r = batch // len(base)  # num_waveforms_per_prompt
        items = [it for it in base for _ in range(r)]
        labels = [lab if r == 1 else f"{lab}.{j}" for lab in base_labels for j in range(r)]
        self.layout, self.labels = Layout(items=items, source="pipeline"), labels
        return self.layout, self.labels


def _null_first_half(batch: int, args: tuple, kwargs: dict) -> bool:
    """True when the first half of the call's conditioning rows is all zeros (the pipeline's null condition). Read
    once per capture, at its first step (one read-back from the device)."""
    ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
    if ehs is None or ehs.shape[0] != batch:
        return False
    return bool((ehs[: batch // 2] == 0).all())
