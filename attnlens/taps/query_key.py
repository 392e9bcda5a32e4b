"""The tap every consumer of attention uses: a layer's query and key, paired, exactly as the softmax sees them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .hooks import HookSet

PairFn = Callable[[int, torch.Tensor, torch.Tensor], None]


def tap_query_key(
    hooks: HookSet,
    adapter: Any,
    layer: int,
    on_pair: PairFn,
    wants: Callable[[], bool],
    pending: dict[int, torch.Tensor],
) -> None:
    """Hook ``layer``'s query and key modules (``adapter.query_key_modules``: ACE-Step's ``norm_q`` / ``norm_k``, Stable
    Audio's ``to_q`` / ``to_k``) into ``hooks``; the family's ``query_of`` / ``key_of`` turn their outputs into the
    canonical query and key (views, no copy).

    The query (``[B, T, H, D]``) is kept in ``pending[layer]`` when ``wants()`` is true at the time it is computed;
    when the layer's key (``[B, S, KVH, D]``) arrives, ``on_pair(layer, q, k)`` runs with both, once per query.
    ``pending`` belongs to the caller, who clears it where a forward call ends (a call that raised between a
    query and its key leaves nothing behind then). Hooks only read: the tensors are handed over as the attention
    receives them and nothing is returned to the model.
    """
    qm, km = adapter.query_key_modules(layer)
    query_of, key_of = adapter.query_of, adapter.key_of

    def on_query(module, args, output):
        if wants():
            pending[layer] = query_of(output)
        else:
            pending.pop(layer, None)

    def on_key(module, args, output):
        q = pending.pop(layer, None)
        if q is not None:
            on_pair(layer, q, key_of(output))

    on_query.__qualname__ = f"attnlens:query[{layer}]"
    on_key.__qualname__ = f"attnlens:key[{layer}]"
    hooks.forward(qm, on_query)
    hooks.forward(km, on_key)
