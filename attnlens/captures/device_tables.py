"""The device tensors a capture's reducers read: the layout's segment codes and lyric index, the selected heads, the
call's key mask. Built on the host and uploaded without a synchronization, and shared by captures of the same
layout and heads (the statistics kernel's launch plan, cached by these tensors' identity, is then built once)."""

from __future__ import annotations

from typing import Any

import torch

from ..devices import upload
from ..reducers.stats import segment_onehot
from ..segments import MASKED_CODE
from .layout import ItemLayout
from .selection import CaptureError

# The layout's and the heads' device tensors, shared by captures of the same layout and heads on the same device
# (a song generated again, a training run): the kernel's launch plan, cached by the identity of these tensors, is
# then built once, not once per capture (its ~40 small device operations cost the host more than the rest of a
# capture's first step). A few small tensors per entry; the least recently used entries go first.
DEVICE_LAYOUTS: dict[tuple, tuple[torch.Tensor, ...]] = {}
DEVICE_HEADS: dict[tuple, tuple[torch.Tensor, ...]] = {}
DEVICE_CACHE_MAX = 16


def recall(cache: dict[tuple, tuple[torch.Tensor, ...]], key: tuple, build: Any) -> tuple[torch.Tensor, ...]:
    """``cache[key]``, built with ``build()`` when missing; least recently used entries are dropped past
    ``DEVICE_CACHE_MAX``."""
    hit = cache.pop(key, None)
    if hit is None:
        hit = build()
        while len(cache) >= DEVICE_CACHE_MAX:
            cache.pop(next(iter(cache)))
    cache[key] = hit  # (re)inserted last: the most recently used
    return hit


def device_heads(heads: tuple[int, ...], group: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """``(query heads, their KV heads, query heads as int32)`` of a selection on ``dev``."""

    def build() -> tuple[torch.Tensor, ...]:
        q_index = upload(torch.tensor(heads, dtype=torch.long), dev)
        kv_index = upload(torch.tensor([h // group for h in heads], dtype=torch.long), dev)
        return q_index, kv_index, q_index.to(torch.int32)

    return recall(DEVICE_HEADS, (str(dev), heads, group), build)


def device_layout(items: list[ItemLayout], n_seg: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """``(codes, onehot, lyric_index, n_lyric, codes32, lyric_index32, n_lyric32)`` of a batch's items on ``dev``
    (``codes``/``lyric_index`` ``[B, S]``, ``onehot`` ``[B, S, n_seg]``, ``n_lyric`` ``[B]``), built on the host and
    moved without a synchronization (:func:`~attnlens.devices.upload`)."""
    codes_l = [tuple(it.segment_codes().tolist()) for it in items]
    lyric_l = [tuple(int(i) for i in it.lyric_positions()) for it in items]

    def build() -> tuple[torch.Tensor, ...]:
        codes = torch.as_tensor(codes_l, dtype=torch.long)
        lyr_index = torch.full_like(codes, -1)
        for b, pos in enumerate(lyric_l):
            lyr_index[b, list(pos)] = torch.arange(len(pos))
        n_lyric = (lyr_index >= 0).sum(dim=1)
        onehot = segment_onehot(codes, n_seg)
        host = (codes, onehot, lyr_index, n_lyric, codes.int(), lyr_index.int(), n_lyric.int())
        return tuple(upload(x, dev) for x in host)

    return recall(DEVICE_LAYOUTS, (str(dev), n_seg, tuple(codes_l), tuple(lyric_l)), build)


def key_valid(mask: torch.Tensor, B: int, S: int | None, dev: torch.device) -> torch.Tensor:
    """The call's key mask as booleans ``[B, S]`` on ``dev`` (True: the key is in the softmax).

    A boolean mask is used as it is. A float mask is added to the logits by SDPA: only 0 (keep) and -inf (drop) can be
    represented by a capture, which checks it once per mask tensor (a read-back from the device)."""
    if mask.ndim != 2 or mask.shape[0] != B or (S is not None and mask.shape[1] != S):
        raise CaptureError(f"key mask of shape {tuple(mask.shape)}; expected [batch {B}, keys {S}]")
    if mask.dtype == torch.bool:
        return mask.to(dev, non_blocking=True)
    if mask.is_floating_point():
        ok = bool(((mask == 0) | (mask == float("-inf"))).all())
        if not ok:
            raise CaptureError(
                "the call's float attention mask holds values other than 0 and -inf (an additive bias): attnlens "
                "captures masks that keep or drop keys; pass a boolean mask (True: attend)"
            )
        return (mask == 0).to(dev, non_blocking=True)
    raise CaptureError(f"key mask of dtype {mask.dtype}; expected torch.bool (True: attend) or a 0/-inf float mask")


def masked_layout(tensors: tuple[torch.Tensor, ...], valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The device layout with masked keys: segment code ``MASKED_CODE`` (no segment, probability 0), out of ``L``
    (lyric index -1; ``n_lyric`` counts the keys of ``L`` left). Device operations only (no synchronization)."""
    codes, onehot, lyr_index, _n, _c32, _l32, _n32 = tensors
    codes = torch.where(valid, codes, MASKED_CODE)
    onehot = onehot * valid.unsqueeze(-1)
    lyr_index = torch.where(valid, lyr_index, -1)
    n_lyric = (lyr_index >= 0).sum(dim=1)
    return codes, onehot, lyr_index, n_lyric, codes.int(), lyr_index.int(), n_lyric.int()
