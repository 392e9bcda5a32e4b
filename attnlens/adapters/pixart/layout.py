"""The keys of PixArt's cross-attention, rebuilt from the token ids the pipeline's T5 encoder saw.

``PixArtSigmaPipeline`` / ``PixArtAlphaPipeline`` encode the prompt with T5 over ``max_sequence_length`` positions
(300 for Σ, 120 for α; padded on the right, closed by ``</s>``) and pass the tokenizer's attention mask to the
transformer, which turns it into a bias of −10000 on the padding keys: padding takes no part in the softmax (its
probability underflows to exactly 0). The pipeline lowercases the prompt (or cleans it, ``clean_caption=True``)
before tokenizing: the recorded words are the text the encoder saw. Under classifier-free guidance the batch is
doubled, the negative prompt's rows first (``""`` by default, so its keys are one ``</s>`` and padding);
``num_images_per_prompt`` repeats each row in place.
"""

from __future__ import annotations

from typing import Any

from ...captures.layout import ItemLayout
from ...segments import Segments
from ..t5_prompt import PromptRecorder, prompt_keys

PIXART_SEGMENTS = Segments(
    names=("prompt", "prompt_special", "padding"),
    sequence="prompt",
    sequence_meta="prompt_special",
    family="pixart",
)
"""PixArt's keys: prompt tokens (the sequence ``L``), the prompt's special tokens (``</s>``), padding (masked out of
the softmax by the pipeline)."""


def pixart_item(tokenizer: Any, ids: list[int], mask: list[int]) -> ItemLayout:
    """Layout of one row of T5 positions: valid tokens labelled and mapped to the prompt's words, ``</s>`` as
    ``prompt_special``, masked positions as ``padding``."""
    return prompt_keys(tokenizer, ids, mask, PIXART_SEGMENTS)


class PixArtLayoutRecorder(PromptRecorder):
    """Hooks on a PixArt pipeline's T5 encoder that record the prompts' and negative prompts' ids and masks and
    match them to the transformer's batch (negative rows first under guidance). Rows whose embeddings were passed in
    (``prompt_embeds`` / ``negative_prompt_embeds``) are not known: the layout is then unknown."""

    def __init__(self, pipeline: Any):
        super().__init__(
            pipeline, lambda ids, mask: pixart_item(pipeline.tokenizer, ids, mask), ("encoder_hidden_states", 1)
        )
