"""Reference per-frame statistics of attention maps (the arrays a :class:`~attnlens.captures.result.Capture` keeps).

For one map ``P[f, s]`` (frames x packed keys, rows sum to 1) and the layout of its batch item:

    entropy(f)        = -sum_s P[f,s] log P[f,s] / log K                  K = number of packed keys (0 log 0 = 0)
    mass(f, g)        = sum_{s in segment g} P[f,s]                       g over the layout vocabulary's segments
                                                                          (ACE-Step: lyric, lyric_meta, timbre,
                                                                          caption, padding); they add to 1
    argmax(f)         = argmax_s P[f,s]                                   packed key index (first one on ties)
    A[f, i]           = P[f, L_i] / sum_i P[f, L_i]                       L = keys of the vocabulary's sequence
                                                                          segment (ACE-Step: sung lyric keys), n = |L|
    entropy_lyric(f)  = -sum_i A log A / log n
    lyric_argmax(f)   = argmax_i A[f,i] = argmax_i P[f, L_i]              index into L (first one on ties)

Degenerate cases (all defined, never NaN):

- K == 1: entropy 0. n == 1: entropy_lyric 0, lyric_argmax 0. n == 0 (no sung lyric token): entropy_lyric 0,
  lyric_argmax -1.
- lyric mass exactly 0 in a frame (only possible after underflow): A is taken as uniform, so entropy_lyric = 1 and
  lyric_argmax = 0.
- keys of an ``"unknown"`` segment (layout not known) count in no segment mass.
- NaN/inf, negative values or all-zero rows raise ``ValueError`` naming the first bad position.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..captures.layout import ItemLayout


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(mask)[0].tolist())


def check_map(P: torch.Tensor, name: str = "attention map") -> None:
    """Raise ``ValueError`` naming the first position holding NaN/inf or a negative value, or the first all-zero row."""
    bad = ~torch.isfinite(P)
    if bool(bad.any()):
        idx = _first_index(bad)
        raise ValueError(f"{name} holds a non-finite value ({P[idx].item()}) at index {idx} (shape {tuple(P.shape)})")
    neg = P < 0
    if bool(neg.any()):
        idx = _first_index(neg)
        raise ValueError(f"{name} holds a negative probability ({P[idx].item()}) at index {idx}; expected P >= 0")
    zero = (P == 0).all(dim=-1)
    if bool(zero.any()):
        idx = _first_index(zero)
        raise ValueError(f"{name} has an all-zero row at index {idx} (frame axis last but one); rows must sum to 1")


def frame_stats(
    P: Any, layout_item: ItemLayout, dtype: torch.dtype = torch.float32, key_valid: Any = None
) -> dict[str, Any]:
    """Per-frame statistics of maps ``P[..., frame, key]`` of one batch item (see the module docstring).

    ``key_valid``: a boolean ``[key]`` mask of the keys the model's softmax spans (False: masked, probability 0
    there), or ``None`` for all; then ``K`` (entropy's normalizer) counts the valid keys, and masked keys are left out
    of every segment and of ``L``.

    Returns a dict with ``entropy`` ``[..., frame]``, ``mass`` ``[..., frame, segment]`` (the vocabulary's order),
    ``argmax`` ``[..., frame]`` (int32), ``entropy_lyric`` ``[..., frame]``, ``lyric_argmax`` ``[..., frame]``
    (int32; -1 without sung tokens). NumPy in, NumPy out; torch in, torch out (same device). Sums are done in
    float64 and floats returned as ``dtype`` (float32, as a Capture stores them).
    """
    is_numpy = not isinstance(P, torch.Tensor)
    t = torch.as_tensor(np.asarray(P)) if is_numpy else P
    if t.ndim < 2:
        raise ValueError(f"expected maps [..., frame, key]; got shape {tuple(t.shape)}")
    K = t.shape[-1]
    if K != layout_item.n_keys:
        raise ValueError(f"maps have {K} keys but the layout item describes {layout_item.n_keys}")
    check_map(t)
    x = t.to(torch.float64)
    codes = torch.as_tensor(layout_item.segment_codes(), device=x.device)
    L = torch.as_tensor(layout_item.lyric_positions(), device=x.device)
    if key_valid is not None:
        valid = torch.as_tensor(np.asarray(key_valid), dtype=torch.bool, device=x.device)
        if valid.shape != (K,):
            raise ValueError(f"key_valid has shape {tuple(valid.shape)}; expected ({K},), one flag per key")
        if bool((x[..., ~valid] != 0).any()):
            raise ValueError("maps give probability to keys that key_valid marks as masked")
        codes = torch.where(valid, codes, -2)
        index_in_L = torch.arange(L.numel(), device=x.device)[valid[L]]  # masked keys leave gaps in L's indices
        L = L[valid[L]]
        K = int(valid.sum())
    else:
        index_in_L = None

    # [..., frame, segment]
    mass = torch.stack([x[..., codes == g].sum(-1) for g in range(len(layout_item.vocabulary))], dim=-1)
    plogp = torch.where(x > 0, x * torch.log(torch.where(x > 0, x, 1.0)), 0.0)
    entropy = -plogp.sum(-1) / math.log(K) if K > 1 else torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    argmax = x.argmax(-1).to(torch.int32)

    n = int(L.numel())
    if n == 0:
        ent_l = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        l_arg = torch.full(x.shape[:-1], -1, dtype=torch.int32, device=x.device)
    else:
        X = x[..., L]  # [..., frame, n]
        s = X.sum(-1, keepdim=True)
        A = torch.where(s > 0, X / torch.where(s > 0, s, 1.0), 1.0 / n)
        alogA = torch.where(A > 0, A * torch.log(torch.where(A > 0, A, 1.0)), 0.0)
        ent_l = -alogA.sum(-1) / math.log(n) if n > 1 else torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        l_arg = X.argmax(-1)
        l_arg = (l_arg if index_in_L is None else index_in_L[l_arg]).to(torch.int32)
    out = {
        "entropy": entropy.to(dtype),
        "mass": mass.to(dtype),
        "argmax": argmax,
        "entropy_lyric": ent_l.to(dtype),
        "lyric_argmax": l_arg,
    }
    if is_numpy:
        return {k: v.cpu().numpy() for k, v in out.items()}
    return out
