"""Stable Audio in diffusers (``StableAudioPipeline`` / ``StableAudioDiTModel``): the second model family.

- :mod:`.adapter`: ``transformer_blocks[i].attn2`` (GQA, no q/k norms, SDPA's default scale, optional boolean key
  mask), the query read from ``to_q`` without the prepended global token, latents at 44100 / 2048 Hz, the
  unconditional half first under CFG.
- :mod:`.layout`: the keys — T5 prompt tokens (``</s>`` as ``prompt_special``), padding, ``seconds_start``,
  ``seconds_total``; a zeroed (``null``) condition for guidance without a negative prompt.
"""

from ...families import register
from .adapter import StableAudioAdapter
from .layout import STABLE_AUDIO_SEGMENTS, StableAudioLayoutRecorder, prompt_item

register(StableAudioAdapter)

__all__ = ["STABLE_AUDIO_SEGMENTS", "StableAudioAdapter", "StableAudioLayoutRecorder", "prompt_item"]
