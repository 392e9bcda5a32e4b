"""The keys of Stable Audio's cross-attention, rebuilt from the token ids the pipeline's T5 encoder saw.

``StableAudioPipeline`` conditions cross-attention on ``cat(prompt embeddings, seconds_start, seconds_end)``: the
T5 encoder's output over ``model_max_length`` positions (padding positions zeroed by the text mask, so their keys
are ``to_k(0)``, still in the softmax: the pipeline passes no mask), then one embedding for the start time and one
for the total time. Under classifier-free guidance the batch is doubled, unconditional half first: the negative
prompt's tokens when one is given, else an all-zero (``null``) condition. ``num_waveforms_per_prompt`` repeats
each row in place.
"""

from __future__ import annotations

from typing import Any

from ...captures.layout import ItemLayout
from ...segments import Segments
from ..t5_prompt import PromptRecorder, prompt_keys

STABLE_AUDIO_SEGMENTS = Segments(
    names=("prompt", "prompt_special", "padding", "seconds_start", "seconds_total", "null"),
    sequence="prompt",
    sequence_meta="prompt_special",
    family="stable-audio",
)
"""Stable Audio's keys: prompt tokens (the sequence ``L``), the prompt's special tokens (``</s>``), padding, the
start-time and total-time embeddings, and the zeroed condition of guidance without a negative prompt."""

TIMING = ("seconds_start", "seconds_total")


def prompt_item(tokenizer: Any, ids: list[int], mask: list[int]) -> ItemLayout:
    """Layout of one row: its ``len(ids)`` text positions (valid tokens labelled and mapped to the prompt's words,
    special tokens as ``prompt_special``, masked positions as ``padding``), then ``seconds_start``, ``seconds_total``."""
    return prompt_keys(tokenizer, ids, mask, STABLE_AUDIO_SEGMENTS, tail=TIMING)


def null_item(n_keys: int) -> ItemLayout:
    """A zeroed condition (guidance without a negative prompt): every key ``null``."""
    return ItemLayout(segments=["null"] * n_keys, vocabulary=STABLE_AUDIO_SEGMENTS)


class StableAudioLayoutRecorder(PromptRecorder):
    """Hooks on a ``StableAudioPipeline`` that record the ids and masks of each T5 encoder call (the prompts, then
    the negative prompts when given) and match them to the transformer's batch (:meth:`rows`); guidance without a
    negative prompt has the zeroed (``null``) condition first."""

    def __init__(self, pipeline: Any):
        super().__init__(pipeline, lambda ids, mask: prompt_item(pipeline.tokenizer, ids, mask))

    def unconditional(self, n: int, positive: list[ItemLayout], batch: int, args: tuple, kwargs: dict) -> Any:
        """The null condition when the first half of the call's conditioning rows is all zeros."""
        ehs = self.conditioning(batch, args, kwargs)
        if ehs is None or not bool((ehs[: batch // 2] == 0).all()):
            return None
        return [null_item(positive[0].n_keys)] * n
