"""Per-frame statistics of cross-attention, computed from post-norm Q and K without keeping the map.

For one (batch item, head) with logits ``s[f, j] = scale · q_f · k_j`` and ``P = softmax(s)`` over the keys the
model attends to (all packed keys, or those its key mask keeps: a masked key has logit -inf, so probability exactly
0, as a False of a boolean mask given to ``scaled_dot_product_attention``)::

    entropy[f]        = -Σ_j P[f,j] log P[f,j] / log S       (S = keys in the softmax of the item; 0 when S <= 1)
    mass[f, g]        = Σ_{j in segment g} P[f,j]             (g over the n_seg segments; Σ_g = 1 when all are known)
    argmax[f]         = argmax_j s[f,j]                       (first of equal maxima; never a masked key)
    A[f, i]           = P[f, L_i] / Σ_i P[f, L_i] = softmax over the lyric set L of s   (lyric-only map)
    entropy_lyric[f]  = -Σ_i A log A / log n   (n = |L|; 0 when n <= 1)
    lyric_argmax[f]   = argmax_i A[f,i]         (-1 when n = 0)

This is the reference path (chunked PyTorch, fp32 arithmetic, any device). Chunking over frames bounds the
temporary ``[B, H, chunk, S]`` tensors.
"""

from __future__ import annotations

import math

import torch


def expand_kv(k: torch.Tensor, kv_index: torch.Tensor) -> torch.Tensor:
    """Key (or value) heads for each selected query head: ``k[B, S, KVH, D]`` -> ``[B, S, h, D]``."""
    return k.index_select(2, kv_index)


def attention_logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · q kᵀ`` in fp32: q ``[B, T, h, D]``, k ``[B, S, h, D]`` -> ``[B, h, T, S]``."""
    return torch.einsum("bthd,bshd->bhts", q.float(), k.float()) * scale


def mask_logits(logits: torch.Tensor, key_valid: torch.Tensor | None, inplace: bool = False) -> torch.Tensor:
    """``logits [..., B, h, T, S]`` with the keys that ``key_valid [B, S]`` marks False at -inf (a new tensor, or
    ``logits`` itself filled when ``inplace``); ``logits`` unchanged when ``key_valid`` is ``None``."""
    if key_valid is None:
        return logits
    masked = ~key_valid[:, None, None, :]  # [B, 1, 1, S]
    return logits.masked_fill_(masked, float("-inf")) if inplace else logits.masked_fill(masked, float("-inf"))


def probabilities(
    q: torch.Tensor, k: torch.Tensor, scale: float, key_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention probabilities ``[B, h, T, S]`` (rows sum to 1): ``softmax(scale · q kᵀ)`` over the keys,
    q ``[B, T, h, D]``, k ``[B, S, h, D]``. ``key_valid``: ``[B, S]`` bool, False for keys the model masks out of its
    softmax (probability exactly 0), or ``None``."""
    return torch.softmax(mask_logits(attention_logits(q, k, scale), key_valid), dim=-1)


def layer_probabilities(
    qs: list[torch.Tensor],
    ks: list[torch.Tensor],
    q_index: torch.Tensor,
    kv_index: torch.Tensor,
    scale: float,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probabilities of the selected heads of several layers in one batch: ``softmax(scale · q kᵀ)`` in fp32.

    ``qs[l]``: ``[B, T, H, D]``, ``ks[l]``: ``[B, S, KVH, D]`` (one shape for all layers); ``q_index`` / ``kv_index``:
    ``[h]`` query heads and the key head each one reads. Returns ``[L, B, h, T, S]``, equal to :func:`probabilities`
    layer by layer (same fp32 products and sums; one batched product instead of one per layer, so the kernel
    launches do not grow with the layers). ``key_valid``: ``[B, S]`` bool, False for keys the model masks out of
    its softmax (probability exactly 0), or ``None``.
    """
    q = qs[0].unsqueeze(0) if len(qs) == 1 else torch.stack(qs)  # [L, B, T, H, D]
    k = ks[0].unsqueeze(0) if len(ks) == 1 else torch.stack(ks)  # [L, B, S, KVH, D]
    qh = q.transpose(2, 3).index_select(2, q_index).float()  # [L, B, h, T, D]
    kh = k.transpose(2, 3).index_select(2, kv_index).float()  # [L, B, h, S, D]
    logits = torch.matmul(qh, kh.transpose(-1, -2)).mul_(scale)  # [L, B, h, T, S]
    return torch.softmax(mask_logits(logits, key_valid, inplace=True), dim=-1)


def segment_onehot(seg_codes: torch.Tensor, n_seg: int) -> torch.Tensor:
    """``[B, S]`` segment codes -> float ``[B, S, n_seg]`` one-hot (unknown keys, code -1, and masked keys, code -2,
    are all zero)."""
    known = seg_codes >= 0  # no boolean indexing: that would make a GPU wait for the host
    oh = torch.nn.functional.one_hot(seg_codes.clamp(min=0).long(), n_seg).float()
    return oh * known.unsqueeze(-1)


def frame_stats_from_logits(
    logits: torch.Tensor,
    onehot: torch.Tensor,
    lyric_index: torch.Tensor,
    n_lyric: torch.Tensor,
    key_valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-frame statistics from logits ``[B, h, T, S]`` (see module docstring).

    ``onehot``: ``[B, S, n_seg]``; ``lyric_index``: ``[B, S]`` index into L of each key (-1 if not in L);
    ``n_lyric``: ``[B]``; ``key_valid``: ``[B, S]`` bool (False: masked out of the softmax) or ``None``. Returns
    arrays ``[B, h, T]`` (mass ``[B, h, T, n_seg]``).
    """
    S = logits.shape[-1]
    logits = mask_logits(logits, key_valid)  # (a second fill of -inf is harmless)
    logp = torch.log_softmax(logits, dim=-1)  # [B, h, T, S]
    p = logp.exp()
    ent = -torch.where(p == 0, torch.zeros_like(p), p * logp).sum(-1)  # 0 · log 0 = 0 for masked keys
    if key_valid is None:
        entropy = ent / math.log(S) if S > 1 else torch.zeros_like(ent)
    else:  # normalized by the keys each item attends to
        n_keys = key_valid.sum(-1).to(torch.float64)[:, None, None]  # [B, 1, 1]
        inv = torch.where(n_keys > 1, 1.0 / torch.log(n_keys.clamp(min=2)), 0.0).to(ent.dtype)
        entropy = ent * inv
    mass = torch.einsum("bhts,bsg->bhtg", p, onehot)
    argmax = logits.argmax(dim=-1).to(torch.int32)

    in_l = (lyric_index >= 0)[:, None, None, :]  # [B, 1, 1, S]
    lyr_logits = logits.masked_fill(~in_l, float("-inf"))
    has = (n_lyric > 0)[:, None, None]  # [B, 1, 1]
    # items with no lyric token: avoid all -inf rows (NaN); results are replaced below
    lyr_logits = torch.where(has[..., None], lyr_logits, torch.zeros_like(lyr_logits))
    loga = torch.log_softmax(lyr_logits, dim=-1)
    a = loga.exp()
    # 0·log 0 = 0 for keys outside L (a == 0); a NaN (non-finite logits) stays NaN instead of counting as 0
    ent_l = -(torch.where(a == 0, torch.zeros_like(a), a * loga)).sum(-1)
    logn = torch.log(n_lyric.clamp(min=2).to(ent_l.dtype))[:, None, None]
    entropy_lyric = torch.where((n_lyric > 1)[:, None, None], ent_l / logn, torch.zeros_like(ent_l))
    pos = lyr_logits.argmax(dim=-1)  # [B, h, T] packed positions
    lyric_argmax = torch.gather(lyric_index[:, None, :].expand(-1, pos.shape[1], -1), 2, pos)
    lyric_argmax = torch.where(has, lyric_argmax, torch.full_like(lyric_argmax, -1)).to(torch.int32)
    return {
        "entropy": entropy,
        "mass": mass,
        "argmax": argmax,
        "entropy_lyric": entropy_lyric,
        "lyric_argmax": lyric_argmax,
    }


def chunk_frames(B: int, h: int, S: int, T: int, budget_bytes: int = 256 << 20) -> int:
    """Frames per chunk so that the fp32 ``[B, h, chunk, S]`` temporaries stay under ``budget_bytes``."""
    per_frame = max(1, B * h * S * 4 * 6)  # logits, logp, p, lyric logits, log A, A
    return max(1, min(T, budget_bytes // per_frame))


def reduce_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    kv_index: torch.Tensor,
    onehot: torch.Tensor,
    lyric_index: torch.Tensor,
    n_lyric: torch.Tensor,
    keep_maps: bool = False,
    key_valid: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Statistics (and optionally probabilities) for selected query heads.

    q: ``[B, T, h, D]`` (already the selected heads), k: ``[B, S, KVH, D]``, kv_index: ``[h]`` KV head of each
    selected query head, key_valid: ``[B, S]`` bool (False: masked) or ``None``. Returns stats ``[B, h, T(, n_seg)]``
    and maps ``[B, h, T, S]`` (fp32) or ``None``.
    """
    kx = expand_kv(k, kv_index)
    B, T, h, _ = q.shape
    S = kx.shape[1]
    step = chunk_frames(B, h, S, T)
    parts: list[dict[str, torch.Tensor]] = []
    maps = []
    for t0 in range(0, T, step):
        logits = mask_logits(attention_logits(q[:, t0 : t0 + step], kx, scale), key_valid)  # [B, h, chunk, S]
        parts.append(frame_stats_from_logits(logits, onehot, lyric_index, n_lyric, key_valid))
        if keep_maps:
            maps.append(torch.softmax(logits, dim=-1))
    stats = {name: torch.cat([p[name] for p in parts], dim=2) for name in parts[0]}
    return stats, (torch.cat(maps, dim=2) if keep_maps else None)
