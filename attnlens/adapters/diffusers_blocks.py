"""What the families of diffusers models share: which object is the pipeline and which the transformer, and the
cross-attention modules ``transformer_blocks[i].attn2`` checked against the processors a family reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..families import AdapterError


def bind(family: Any, model: Any, is_pipeline: Callable, is_transformer: Callable, expected: str) -> None:
    """Set ``family.pipeline`` and ``family.transformer`` from a pipeline (``model.transformer``) or a bare
    transformer (no pipeline); anything else is an :class:`AdapterError` saying what was ``expected``."""
    if is_pipeline(model):
        family.pipeline, family.transformer = model, model.transformer
    elif is_transformer(model):
        family.pipeline, family.transformer = None, model
    else:
        raise AdapterError(
            f"attnlens cannot capture a {type(model).__module__}.{type(model).__name__}: expected {expected}"
        )


def attn2_blocks(transformer: nn.Module, processors: tuple[str, ...], reads: str, restore: str) -> nn.ModuleList:
    """``transformer.transformer_blocks``, each checked to hold a cross-attention ``attn2`` (``to_q``, ``to_k``,
    ``to_v``, ``heads``) run by one of ``processors``; an :class:`AdapterError` names the first block that does not
    (``reads``: what the family reads from the processor; ``restore``: how to get it back)."""
    blocks = getattr(transformer, "transformer_blocks", None)
    if not blocks:
        raise AdapterError(f"{type(transformer).__name__} has no .transformer_blocks")
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn2", None)
        if attn is None or not all(hasattr(attn, a) for a in ("to_q", "to_k", "to_v", "heads")):
            raise AdapterError(f"block {i} has no cross-attention attn2 with to_q, to_k, to_v and heads")
        proc = type(getattr(attn, "processor", None)).__name__
        if proc not in processors:
            raise AdapterError(
                f"block {i}'s attn2 runs a {proc}; attnlens reads {' or '.join(processors)} ({reads}): {restore}"
            )
    return blocks
