"""ACE-Step 1.5 in diffusers (``AceStepPipeline`` / ``AceStepTransformer1DModel``): the first model family.

- :mod:`.adapter`: where cross-attention lives (``layers[i].cross_attn``, post-norm ``norm_q`` / ``norm_k``), heads
  and KV heads, 25 Hz latents patched by 2 into 12.5 Hz frames, the ``timestep`` argument, CFG order.
- :mod:`.layout`: the packed key layout (sung lyric tokens, lyric header/tags, timbre, caption, padding) rebuilt
  from the ids and masks the condition encoder saw.
"""

from ...families import register
from .adapter import AceStepAdapter, dit_frames, frames_to_seconds
from .layout import ACE_STEP_SEGMENTS, LayoutRecorder, build_layout

register(AceStepAdapter)

__all__ = ["ACE_STEP_SEGMENTS", "AceStepAdapter", "LayoutRecorder", "build_layout", "dit_frames", "frames_to_seconds"]
