"""The packed key layout of ACE-Step's cross-attention, rebuilt from what the pipeline really did.

``AceStepConditionEncoder`` packs ``[lyric | timbre]`` then ``[that | caption]`` with a stable argsort of the
masks (``_pack_sequences``): per batch item, valid lyric tokens, valid timbre embeddings, valid caption tokens,
then all padding. Token ids are not returned by the pipeline, so they are read by hooks (the lyric ids go through
the text encoder's embedding table outside the text encoder's own forward; the caption ids are the text
encoder's ``input_ids``) and labelled from their bytes: each token's span is the characters its bytes belong to.

The lyric string the pipeline encodes is ``"# Languages\\n{lang}\\n\\n# Lyric\\n{lyrics}<|endoftext|>"``: the
header, structure tags (``[verse]``), whitespace-only tokens and ``<|endoftext|>`` are labelled ``lyric_meta``;
the remaining lyric tokens are the sung set ``L``. Tokens are labelled with the characters their bytes belong to
(:mod:`attnlens.text.labels`); the sung units are words, or characters in CJK scripts (:mod:`attnlens.text.units`).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ...captures.layout import KIND_END, KIND_HEADER, KIND_SPACE, KIND_SUNG, KIND_TAG, ItemLayout, Layout
from ...segments import DEFAULT_SEGMENTS
from ...taps.hooks import HookSet
from ...text.labels import token_labels
from ...text.units import merge_units_by_tokens, unit_spans

ACE_STEP_SEGMENTS = DEFAULT_SEGMENTS
"""ACE-Step's keys: sung lyric tokens (the sequence ``L``), lyric header/tag tokens, timbre, caption, padding."""

LYRIC_MARK = "# Lyric\n"
CAPTION_MARK = "# Caption\n"
METAS_MARK = "\n\n# Metas"
ENDOFTEXT = "<|endoftext|>"
TAG_RE = re.compile(r"\[[^\]]*\]")


def packed_sources(lyric_mask: torch.Tensor, timbre_mask: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Source of every packed key, per batch item: ``[B, S]`` indices into the concatenation
    ``[lyric (Ll) | timbre (Lm) | text (Lt)]``, applying the same two stable packs as the condition encoder."""
    B = lyric_mask.shape[0]
    Ll, Lm, Lt = lyric_mask.shape[1], timbre_mask.shape[1], text_mask.shape[1]
    idx = torch.arange(Ll + Lm + Lt).unsqueeze(0).expand(B, -1)
    # first pack: lyric + timbre
    m1 = torch.cat([lyric_mask.long(), timbre_mask.long().to(lyric_mask.device)], dim=1).cpu()
    order1 = m1.argsort(dim=1, descending=True, stable=True)
    src1 = torch.gather(idx[:, : Ll + Lm], 1, order1)
    mask1 = torch.arange(Ll + Lm).unsqueeze(0) < m1.sum(dim=1, keepdim=True)
    # second pack: (lyric+timbre) + text
    m2 = torch.cat([mask1.long(), text_mask.long().cpu()], dim=1)
    order2 = m2.argsort(dim=1, descending=True, stable=True)
    src_all = torch.cat([src1, idx[:, Ll + Lm :]], dim=1)
    return torch.gather(src_all, 1, order2), m2.sum(dim=1)


def _label_lyric_tokens(tokenizer: Any, ids: list[int]) -> dict[str, Any]:
    """Kinds, char spans (in the user's lyrics), word and line indices for the valid lyric ids of one item."""
    full, tokens, offsets = token_labels(tokenizer, ids)  # readable labels: split characters shown whole
    n = len(ids)
    start = full.find(LYRIC_MARK)
    body_start = start + len(LYRIC_MARK) if start >= 0 else 0
    end = full.rfind(ENDOFTEXT)
    body_end = end if end >= body_start else len(full)
    lyrics = full[body_start:body_end]
    tag_spans = [(m.start(), m.end()) for m in TAG_RE.finditer(lyrics)]

    def in_tag(s: int, e: int) -> bool:
        return any(s < te and e > ts for ts, te in tag_spans)

    # sung units outside tags: words, or characters of CJK scripts, merged where one token covers several
    masked = list(lyrics)
    for ts, te in tag_spans:
        masked[ts:te] = [" "] * (te - ts)
    masked_s = "".join(masked)
    in_body = [(max(s, body_start) - body_start, min(e, body_end) - body_start) for s, e in offsets]
    units = merge_units_by_tokens(unit_spans(masked_s), [sp for sp in in_body if sp[1] > sp[0]])
    word_spans = [(u.start, u.end) for u in units]
    line_starts = [0] + [i + 1 for i, ch in enumerate(lyrics) if ch == "\n"]

    def line_of(pos: int) -> int:
        lo = 0
        for i, ls in enumerate(line_starts):
            if ls <= pos:
                lo = i
        return lo

    raw_lines = [line_of(s) for s, _ in word_spans]
    line_ids = sorted(set(raw_lines))
    line_map = {raw: i for i, raw in enumerate(line_ids)}
    all_lines = lyrics.split("\n")
    lines = [all_lines[r].strip() for r in line_ids]
    word_line = [line_map[r] for r in raw_lines]

    kinds: list[str] = []
    spans: list[tuple[int, int] | None] = []
    word_index: list[int] = []
    line_index: list[int] = []
    for j in range(n):
        s, e = offsets[j]
        tok = tokens[j]
        if tok == ENDOFTEXT or s >= body_end:
            kinds.append(KIND_END)
            spans.append(None)
        elif e <= body_start:
            kinds.append(KIND_HEADER)
            spans.append(None)
        else:
            ls, le = max(s, body_start) - body_start, min(e, body_end) - body_start
            spans.append((ls, le))
            if in_tag(ls, le):
                kinds.append(KIND_TAG)
            elif not lyrics[ls:le].strip():
                kinds.append(KIND_SPACE)
            else:
                kinds.append(KIND_SUNG)
        w = -1
        if kinds[-1] == KIND_SUNG:
            ls, le = spans[-1]
            for wi, (ws, we) in enumerate(word_spans):
                if ls < we and le > ws:
                    w = wi
                    break
        word_index.append(w)
        line_index.append(word_line[w] if w >= 0 else -1)
    return {
        "tokens": tokens,
        "kinds": kinds,
        "char_spans": spans,
        "word_index": word_index,
        "line_index": line_index,
        "lyrics": lyrics,
        "words": [lyrics[s:e] for s, e in word_spans],
        "word_spans": word_spans,
        "word_line": word_line,
        "lines": lines,
    }


def _caption_of(tokenizer: Any, ids: list[int]) -> tuple[list[str], str]:
    full, tokens, _ = token_labels(tokenizer, ids)
    s = full.find(CAPTION_MARK)
    caption = full
    if s >= 0:
        e = full.find(METAS_MARK, s)
        caption = full[s + len(CAPTION_MARK) : e if e >= 0 else len(full)]
    return tokens, caption


def build_layout(
    tokenizer: Any,
    lyric_ids: torch.Tensor,
    lyric_mask: torch.Tensor,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    timbre_mask: torch.Tensor,
) -> Layout:
    """Layout of every batch item from the ids and masks the condition encoder saw."""
    sources, valid = packed_sources(lyric_mask, timbre_mask, text_mask)
    Ll, Lm = lyric_mask.shape[1], timbre_mask.shape[1]
    items = []
    for b in range(lyric_mask.shape[0]):
        l_valid = [int(i) for i, m in zip(lyric_ids[b].tolist(), lyric_mask[b].tolist()) if m]
        lyr = _label_lyric_tokens(tokenizer, l_valid)
        t_valid = [int(i) for i, m in zip(text_ids[b].tolist(), text_mask[b].tolist()) if m]
        cap_tokens, caption = _caption_of(tokenizer, t_valid)
        # position of each valid source token among the valid tokens of its segment
        l_pos = {j: k for k, j in enumerate(i for i, m in enumerate(lyric_mask[b].tolist()) if m)}
        m_pos = {j: k for k, j in enumerate(i for i, m in enumerate(timbre_mask[b].tolist()) if m)}
        t_pos = {j: k for k, j in enumerate(i for i, m in enumerate(text_mask[b].tolist()) if m)}
        segs, toks, kinds, spans, widx, lidx = [], [], [], [], [], []
        for p, src in enumerate(sources[b].tolist()):
            if p >= int(valid[b]):
                segs.append("padding")
                toks.append(None)
                kinds.append(None)
                spans.append(None)
                widx.append(-1)
                lidx.append(-1)
                continue
            if src < Ll:
                k = l_pos[src]
                kind = lyr["kinds"][k]
                segs.append("lyric" if kind == KIND_SUNG else "lyric_meta")
                toks.append(lyr["tokens"][k])
                kinds.append(kind)
                spans.append(lyr["char_spans"][k])
                widx.append(lyr["word_index"][k])
                lidx.append(lyr["line_index"][k])
            elif src < Ll + Lm:
                segs.append("timbre")
                toks.append(None)
                kinds.append(None)
                spans.append(None)
                widx.append(-1)
                lidx.append(-1)
                _ = m_pos[src - Ll]
            else:
                k = t_pos[src - Ll - Lm]
                segs.append("caption")
                toks.append(cap_tokens[k])
                kinds.append(None)
                spans.append(None)
                widx.append(-1)
                lidx.append(-1)
        items.append(
            ItemLayout(
                segments=segs,
                tokens=toks,
                kinds=kinds,
                char_spans=spans,
                word_index=widx,
                line_index=lidx,
                lyrics=lyr["lyrics"],
                caption=caption,
                words=lyr["words"],
                word_spans=lyr["word_spans"],
                word_line=lyr["word_line"],
                lines=lyr["lines"],
                vocabulary=ACE_STEP_SEGMENTS,
            )
        )
    return Layout(items=items, source="pipeline")


class LayoutRecorder:
    """Hooks on an ``AceStepPipeline`` that record the ids and masks of each condition-encoder call."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline
        self.layout: Layout | None = None
        self._inside_text_encoder = 0
        self._text_ids: torch.Tensor | None = None
        self._lyric_ids: torch.Tensor | None = None
        self._timbre_mask: torch.Tensor | None = None

    def attach(self, hooks: HookSet) -> None:
        p = self.pipeline
        te = p.text_encoder
        hooks.forward_pre(te, self._te_pre, with_kwargs=True)
        hooks.forward(te, self._te_post, always_call=True)
        hooks.forward_pre(te.get_input_embeddings(), self._emb_pre)
        hooks.forward(p.condition_encoder.timbre_encoder, self._timbre_post)
        hooks.forward(p.condition_encoder, self._cond_post, with_kwargs=True)

    def _te_pre(self, module, args, kwargs):
        self._inside_text_encoder += 1
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self._text_ids = ids.detach().cpu()

    def _te_post(self, module, args, output):
        self._inside_text_encoder = max(0, self._inside_text_encoder - 1)

    def _emb_pre(self, module, args):
        if self._inside_text_encoder == 0 and args:
            self._lyric_ids = args[0].detach().cpu()

    def _timbre_post(self, module, args, output):
        self._timbre_mask = output[1].detach().cpu()

    def _cond_post(self, module, args, kwargs, output):
        text_mask = kwargs.get("text_attention_mask")
        lyric_mask = kwargs.get("lyric_attention_mask")
        if text_mask is None or lyric_mask is None or self._text_ids is None or self._lyric_ids is None:
            return
        self.layout = build_layout(
            self.pipeline.tokenizer,
            self._lyric_ids,
            lyric_mask.detach().cpu(),
            self._text_ids,
            text_mask.detach().cpu(),
            self._timbre_mask if self._timbre_mask is not None else torch.ones(lyric_mask.shape[0], 1),
        )
