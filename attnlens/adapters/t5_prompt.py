"""Keys made of a T5 prompt, shared by the families that condition cross-attention on a T5 encoder (Stable Audio,
PixArt): each key labelled from the token ids the pipeline's encoder saw, and the hooks that record those ids.

A T5 tokenizer pads on the right and closes every prompt with ``</s>``; the pipeline's attention mask marks the
padding. :func:`prompt_keys` labels one row: valid tokens as ``prompt`` (mapped to the prompt's words through the
tokenizer's offsets), special tokens as ``prompt_special``, masked positions as ``padding``, then the family's own
keys after the text (``tail``). :class:`PromptRecorder` matches the encoder calls of one generation to the
transformer's batch: the prompts, and under classifier-free guidance the negative prompts first, each row repeated
in place for several outputs per prompt.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..captures.layout import ItemLayout, Layout
from ..segments import Segments
from ..taps.hooks import HookSet

WORD_RE = re.compile(r"\S+")


def prompt_keys(
    tokenizer: Any, ids: list[int], mask: list[int], vocabulary: Segments, tail: tuple[str, ...] = ()
) -> ItemLayout:
    """Layout of one row: its ``len(ids)`` text positions (valid tokens labelled and mapped to the prompt's words,
    special tokens as ``prompt_special``, masked positions as ``padding``), then one key per name of ``tail``.
    ``vocabulary`` holds ``prompt``, ``prompt_special``, ``padding`` and the ``tail`` names."""
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
    segs += list(tail)
    toks += [None] * len(tail)
    spans += [None] * len(tail)
    widx += [-1] * len(tail)
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
        vocabulary=vocabulary,
    )


class PromptRecorder:
    """Hooks on a pipeline's T5 encoder that record the ids and mask of each call of one generation (the prompts,
    then the negative prompts when guidance encodes them) and match them to the transformer's batch (:meth:`rows`).

    ``item(ids, mask)`` labels one row (:func:`prompt_keys` with the family's vocabulary); ``encoder_arg`` names the
    transformer's conditioning argument (keyword, position). An encoder call after the transformer has run starts the
    records of a new generation."""

    def __init__(self, pipeline: Any, item: Any, encoder_arg: tuple[str, int] = ("encoder_hidden_states", 2)):
        self.pipeline = pipeline
        self.item = item
        self.encoder_arg = encoder_arg
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (ids [n, L], mask [n, L]) per encoder call
        self.layout: Layout | None = None
        self.labels: list[str] | None = None
        self._asked = False  # the transformer asked for rows since the last encoder call

    def attach(self, hooks: HookSet) -> None:
        hooks.forward_pre(self.pipeline.text_encoder, self._te_pre, with_kwargs=True)

    def _te_pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if ids is None:
            return
        if self._asked:  # a new generation inside the same capture
            self.calls.clear()
            self._asked = False
        ids = ids.detach().cpu()
        mask = torch.ones_like(ids) if mask is None else mask.detach().cpu()
        self.calls.append((ids, mask))
        self.layout = self.labels = None

    def unconditional(self, n: int, positive: list[ItemLayout], batch: int, args: tuple, kwargs: dict) -> Any:
        """The ``n`` unconditional rows of a guidance batch whose negative prompts were not encoded (embeddings
        passed in), or ``None`` when they are not known. A family that knows them (Stable Audio's zeroed condition)
        says so here."""
        return None

    def rows(self, batch: int, args: tuple, kwargs: dict) -> tuple[Layout, list[str]] | None:
        """The layout and labels of the transformer's ``batch`` rows, or ``None`` when the prompts were not seen
        (embeddings passed in) or do not fit the batch."""
        self._asked = True
        if self.layout is not None and len(self.layout) == batch:
            return self.layout, self.labels
        if not self.calls:
            return None
        pos_ids, pos_mask = self.calls[0]
        n = pos_ids.shape[0]
        pos = [self.item(pos_ids[i].tolist(), pos_mask[i].tolist()) for i in range(n)]
        uncond_labels = [f"uncond:{i}" for i in range(n)]
        cond_labels = [f"cond:{i}" for i in range(n)]
        if len(self.calls) >= 2:  # a negative prompt: [negative..., positive...], each row repeated in place
            neg_ids, neg_mask = self.calls[1]
            neg = [self.item(neg_ids[i].tolist(), neg_mask[i].tolist()) for i in range(n)]
            base, base_labels = neg + pos, uncond_labels + cond_labels
        elif batch % (2 * n) == 0 and not self._repeats(batch, n, args, kwargs):
            neg = self.unconditional(n, pos, batch, args, kwargs)  # guidance with negative embeddings passed in
            if neg is None:
                return None
            base, base_labels = list(neg) + pos, uncond_labels + cond_labels
        else:
            base, base_labels = pos, cond_labels
        if batch % len(base):
            return None
        r = batch // len(base)  # outputs per prompt
        items = [it for it in base for _ in range(r)]
        labels = [lab if r == 1 else f"{lab}.{j}" for lab in base_labels for j in range(r)]
        self.layout, self.labels = Layout(items=items, source="pipeline"), labels
        return self.layout, self.labels

    def conditioning(self, batch: int, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The call's conditioning (the keys' source, ``encoder_arg``) when it has ``batch`` rows."""
        name, pos = self.encoder_arg
        ehs = kwargs.get(name, args[pos] if len(args) > pos else None)
        return ehs if ehs is not None and ehs.shape[0] == batch else None

    def _repeats(self, batch: int, n: int, args: tuple, kwargs: dict) -> bool:
        """True when the call's ``batch`` rows are ``n`` prompts each repeated in place (every group of
        ``batch // n`` rows holds one conditioning), not a guidance batch whose negative rows were passed in. Read
        once per capture (one read-back from the device)."""
        ehs = self.conditioning(batch, args, kwargs)
        if ehs is None:
            return True
        groups = ehs.reshape(n, batch // n, -1)
        return bool((groups == groups[:, :1]).all())
