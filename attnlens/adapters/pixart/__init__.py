"""PixArt in diffusers (``PixArtSigmaPipeline`` / ``PixArtAlphaPipeline`` / ``PixArtTransformer2DModel``): the first
image family.

- :mod:`.adapter`: ``transformer_blocks[i].attn2`` (as many KV heads as query heads, no q/k norms, SDPA's default
  scale), the 0/1 prompt mask (a −10000 bias inside the model) reported as booleans, queries on the latent's grid
  of patches (``query_grid``), the negative half first under CFG.
- :mod:`.layout`: the keys — T5 prompt tokens (``</s>`` as ``prompt_special``) and padding.
"""

from ...families import register
from .adapter import PixArtAdapter, boolean_key_mask
from .layout import PIXART_SEGMENTS, PixArtLayoutRecorder, pixart_item

register(PixArtAdapter)

__all__ = ["PIXART_SEGMENTS", "PixArtAdapter", "PixArtLayoutRecorder", "boolean_key_mask", "pixart_item"]
