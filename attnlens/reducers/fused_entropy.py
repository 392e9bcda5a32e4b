"""Fused Triton forward and backward of the per-frame attention entropy (the differentiable training penalty).

For one (batch item, query head ``h``, frame ``i``) with logits ``s_ij = scale · q_i · k_j`` over the taken keys
``j`` (KV head ``h // G``, ``G = H / KVH``) and ``p_ij = softmax_j(s_ij)``::

    H_i       = lse_i - Σ_j p_ij s_ij                       lse_i = log Σ_j e^{s_ij}
    ∂H_i/∂s_ij = -p_ij (s_ij - μ_i)                         μ_i   = Σ_j p_ij s_ij   ("mean_s")

Forward (:func:`_entropy_fwd_kernel`, one program per block of frames of one (batch item, head)): streams over
key blocks with an online softmax and keeps, in fp32, the running maximum ``m``, ``l = Σ e^{s-m}`` and
``u = Σ e^{s-m} (s - m)`` (``u`` is rescaled as ``m`` grows: ``u ← α (u + (m - m') l) + Σ e^{s-m'} (s - m')``,
``α = e^{m - m'}``), then writes ``H = log l - u / l``, ``lse = m + log l`` and ``μ = m + u / l``. Keeping ``s``
relative to ``m`` avoids the cancellation of ``lse - μ`` for large logits.

Backward, given ``g = ∂L/∂H`` ``[B, H, T]``: ``gs_ij = -g_i p_ij (s_ij - μ_i)`` with ``p_ij = e^{s_ij - lse_i}``
recomputed from ``q`` and ``k``, then::

    dq_i = scale · Σ_j gs_ij k_j                             (_entropy_dq_kernel: one program per frame block)
    dk_j = scale · Σ_{h in group} Σ_i gs_hij q_hi            (_entropy_dk_kernel: one program per key block)

Two kernels, so that each output row is owned by one program: no atomics, deterministic results. Saved for
backward: ``q``, ``k``, the key mask and index, the item weights, ``lse`` and ``μ`` (fp32 ``[B, H, T]``), never ``P``.

A key subset (the lyric-only penalty) is read in place through a key index ``[B, n]`` (row ``index[b, j]`` of
``k``): no gathered copy of ``k`` and no scatter of its gradient, whose other rows stay 0. The normalization
``1 / log n_b`` is a per-item weight applied inside the kernels (to ``H`` and to ``g``), so no extra kernels run
for it. :func:`fused_attention_entropy_layers` runs all layers of a training step in one launch per kernel (grid
axis 2 = layer), reading each layer's q and k in place through an offset table
(:mod:`attnlens.reducers.layer_table`): a step bound by kernel launches on the host pays three launches for the
penalty instead of three per layer.

Products use ``tl.dot`` with fp32 accumulation: bf16/fp16 inputs multiply in their own dtype (as the attention
kernel; ``gs`` is rounded to that dtype for the gradient products, as in the PyTorch path), fp32 inputs with IEEE
fp32 products. Needs Triton and a power-of-2 ``head_dim`` in [16, 256]; CUDA tensors, or any tensors under
``TRITON_INTERPRET=1`` (the tests).

The forward and the two backward Triton kernels share their helpers and launch code, and are checked against each
other; hence over 400 lines.
"""

from __future__ import annotations

import os

import torch

from .layer_table import layer_tables

try:  # Triton is optional: CUDA builds of torch bring it
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAVE_TRITON = False

FUSED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# (BLOCK_T, BLOCK_S, num_warps) per kernel; tuned for head_dim 128 on H100 (see benchmarks/profile_entropy.py)
DEFAULT_BLOCKS: dict[str, tuple[int, int, int]] = {"fwd": (64, 64, 4), "dq": (64, 64, 4), "dk": (64, 64, 4)}


def fused_entropy_supported(q: torch.Tensor) -> bool:
    """True when the fused kernels can run for queries ``q [B, T, H, D]``: Triton importable, ``q`` on CUDA (or
    the interpreter switched on), dtype bf16/fp16/fp32, ``D`` a power of 2 in [16, 256]."""
    D = q.shape[-1]
    runs_here = q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return HAVE_TRITON and runs_here and q.dtype in FUSED_DTYPES and 16 <= D <= 256 and D & (D - 1) == 0


if HAVE_TRITON:
    # Layouts: q [B, T, H, D] and k [B, S, KVH, D] with unit stride along D (other strides passed); mask int8
    # [B, n] (nonzero = key taken); h, lse, mean_s fp32 [L, B, H, T] contiguous; g fp32 [L, B, H, T] with any
    # strides (the gradient of a mean is an expanded tensor). Several layers in one launch (grid axis 2 = layer
    # l, LAYERS): layer l's q and k start qoff[l] · 16 and koff[l] · 16 elements after q_ptr and k_ptr (offsets in
    # units of 16 elements keep the pointers' alignment known to the compiler); gradients go to contiguous
    # [L, ...] buffers. Lengths are not specialized: one compiled kernel per dtype and block shape serves every
    # clip length.
    @triton.jit
    def _dot(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
        """``a @ b`` with fp32 accumulation; ``UPCAST``: bf16 operands as exact fp32 (for Triton's interpreter)."""
        if UPCAST:
            out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        elif IEEE:
            out = tl.dot(a, b, input_precision="ieee")
        else:
            out = tl.dot(a, b)
        return out

    @triton.jit
    def _key_rows(idx_ptr, b, sib, offs_s, in_s, HAS_IDX: tl.constexpr):
        """Rows of ``k`` for taken-key positions ``offs_s``: ``idx[b, offs_s]`` with a key index, else themselves."""
        if HAS_IDX:
            rows = tl.load(idx_ptr + b * sib + offs_s, mask=in_s, other=0).to(tl.int64)
        else:
            rows = offs_s.to(tl.int64)
        return rows

    @triton.jit
    def _item_weight(w_ptr, b, w_all, HAS_W: tl.constexpr):
        """The factor on item ``b``'s entropy: ``w_all · w[b]`` (``w_all`` alone without a weight vector)."""
        if HAS_W:
            wt = w_all * tl.load(w_ptr + b).to(tl.float32)
        else:
            wt = w_all
        return wt

    @triton.jit
    def _layer_ptrs(q_ptr, k_ptr, qoff_ptr, koff_ptr, pid_l, LAYERS: tl.constexpr):
        """Layer ``pid_l``'s q and k: ``qoff[l] · 16`` and ``koff[l] · 16`` elements on (with LAYERS)."""
        if LAYERS:
            q_ptr += tl.load(qoff_ptr + pid_l) * 16  # layer_table.UNIT
            k_ptr += tl.load(koff_ptr + pid_l) * 16
        return q_ptr, k_ptr

    @triton.jit
    def _query_block(
        q_ptr, pid_t, pid_bh, T, H, G, sqb, sqt, sqh, D: tl.constexpr, BLOCK_T: tl.constexpr,
    ):  # fmt: skip
        """The prologue of the row kernels: program ``(pid_t, pid_bh)``'s batch item, query head and its KV head,
        frame offsets and their mask, and the query block ``[BLOCK_T, D]``."""
        b = (pid_bh // H).to(tl.int64)
        h = pid_bh % H
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        t_ok = offs_t < T
        offs_d = tl.arange(0, D)
        q = tl.load(q_ptr + b * sqb + offs_t[:, None] * sqt + h * sqh + offs_d[None, :], mask=t_ok[:, None], other=0.0)
        return b, h, h // G, offs_t, t_ok, q

    @triton.jit
    def _key_block_logits(
        q, k_ptr, mask_ptr, idx_ptr, b, kvh, s0, S, scale, skb, sks, skh, smb, sib,
        D: tl.constexpr, BLOCK_S: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
        HAS_IDX: tl.constexpr,
    ):  # fmt: skip
        """One key block of the row kernels: the keys ``[BLOCK_S, D]``, the logits ``scale · q kᵀ`` (fp32) and which
        keys count (inside ``S`` and, with a mask, kept by it)."""
        offs_s = s0 + tl.arange(0, BLOCK_S)
        in_s = offs_s < S
        rows = _key_rows(idx_ptr, b, sib, offs_s, in_s, HAS_IDX)
        k = tl.load(
            k_ptr + b * skb + rows[:, None] * sks + kvh * skh + tl.arange(0, D)[None, :], mask=in_s[:, None], other=0.0
        )
        s = _dot(q, tl.trans(k), IEEE, UPCAST) * scale  # [BLOCK_T, BLOCK_S] fp32
        ok = in_s
        if HAS_MASK:
            ok = ok & (tl.load(mask_ptr + b * smb + offs_s, mask=in_s, other=0) != 0)
        return k, s, ok

    @triton.jit(do_not_specialize=["T", "S", "H", "G", "sl"])
    def _entropy_fwd_kernel(
        q_ptr, k_ptr, qoff_ptr, koff_ptr, mask_ptr, idx_ptr, w_ptr, h_ptr, lse_ptr, mean_ptr,
        T, S, H, G, scale, w_all,
        sqb, sqt, sqh, skb, sks, skh, smb, sib, sl,
        D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
        UPCAST: tl.constexpr, HAS_IDX: tl.constexpr, HAS_W: tl.constexpr, LAYERS: tl.constexpr,
    ):  # fmt: skip
        pid_t = tl.program_id(0)
        pid_bh = tl.program_id(1)
        pid_l = tl.program_id(2).to(tl.int64)
        q_ptr, k_ptr = _layer_ptrs(q_ptr, k_ptr, qoff_ptr, koff_ptr, pid_l, LAYERS)
        b, h, kvh, offs_t, t_ok, q = _query_block(q_ptr, pid_t, pid_bh, T, H, G, sqb, sqt, sqh, D, BLOCK_T)
        # running max from a finite "minus infinity": e^{m - m'} and (m - m') · l stay free of NaN before a key
        m = tl.full([BLOCK_T], -1.0e30, tl.float32)
        lsum = tl.zeros([BLOCK_T], tl.float32)  # Σ e^{s-m}
        u = tl.zeros([BLOCK_T], tl.float32)  # Σ e^{s-m} (s - m)
        for s0 in range(0, S, BLOCK_S):
            k, s, ok = _key_block_logits(
                q, k_ptr, mask_ptr, idx_ptr, b, kvh, s0, S, scale, skb, sks, skh, smb, sib,
                D, BLOCK_S, HAS_MASK, IEEE, UPCAST, HAS_IDX,
            )  # fmt: skip
            s = tl.where(ok[None, :], s, -1.0e30)
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp(m - m_new)
            d = tl.where(ok[None, :], s - m_new[:, None], 0.0)
            e = tl.where(ok[None, :], tl.exp(d), 0.0)
            u = alpha * (u + (m - m_new) * lsum) + tl.sum(e * d, axis=1)
            lsum = alpha * lsum + tl.sum(e, axis=1)
            m = m_new
        log_l = tl.log(lsum)
        ratio = u / lsum
        o = pid_l * sl + pid_bh.to(tl.int64) * T + offs_t
        tl.store(h_ptr + o, (log_l - ratio) * _item_weight(w_ptr, b, w_all, HAS_W), mask=t_ok)
        tl.store(lse_ptr + o, m + log_l, mask=t_ok)
        tl.store(mean_ptr + o, m + ratio, mask=t_ok)

    @triton.jit(do_not_specialize=["T", "S", "H", "G", "sl"])
    def _entropy_dq_kernel(
        q_ptr, k_ptr, qoff_ptr, koff_ptr, mask_ptr, idx_ptr, w_ptr, lse_ptr, mean_ptr, g_ptr, dq_ptr,
        T, S, H, G, scale, w_all,
        sqb, sqt, sqh, skb, sks, skh, smb, sib, sl, sgl, sgb, sgh, sgt, sdl, sdb, sdt, sdh,
        D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
        UPCAST: tl.constexpr, HAS_IDX: tl.constexpr, HAS_W: tl.constexpr, LAYERS: tl.constexpr,
    ):  # fmt: skip
        pid_t = tl.program_id(0)
        pid_bh = tl.program_id(1)
        pid_l = tl.program_id(2).to(tl.int64)
        q_ptr, k_ptr = _layer_ptrs(q_ptr, k_ptr, qoff_ptr, koff_ptr, pid_l, LAYERS)
        g_ptr += pid_l * sgl
        dq_ptr += pid_l * sdl
        b, h, kvh, offs_t, t_ok, q = _query_block(q_ptr, pid_t, pid_bh, T, H, G, sqb, sqt, sqh, D, BLOCK_T)
        offs_d = tl.arange(0, D)
        o = pid_l * sl + pid_bh.to(tl.int64) * T + offs_t
        lse = tl.load(lse_ptr + o, mask=t_ok, other=0.0)
        mean_s = tl.load(mean_ptr + o, mask=t_ok, other=0.0)
        g = tl.load(g_ptr + b * sgb + h * sgh + offs_t * sgt, mask=t_ok, other=0.0)  # rows past T: g = 0
        g = g * _item_weight(w_ptr, b, w_all, HAS_W)
        acc = tl.zeros([BLOCK_T, D], tl.float32)
        for s0 in range(0, S, BLOCK_S):
            k, s, ok = _key_block_logits(
                q, k_ptr, mask_ptr, idx_ptr, b, kvh, s0, S, scale, skb, sks, skh, smb, sib,
                D, BLOCK_S, HAS_MASK, IEEE, UPCAST, HAS_IDX,
            )  # fmt: skip
            p = tl.where(ok[None, :], tl.exp(s - lse[:, None]), 0.0)
            gs = -g[:, None] * p * (s - mean_s[:, None])  # ∂L/∂s [BLOCK_T, BLOCK_S]
            acc += _dot(gs.to(k.dtype), k, IEEE, UPCAST)
        dq = acc * scale
        tl.store(
            dq_ptr + b * sdb + offs_t[:, None] * sdt + h * sdh + offs_d[None, :],
            dq.to(dq_ptr.dtype.element_ty),
            mask=t_ok[:, None],
        )

    @triton.jit(do_not_specialize=["T", "S", "H", "KVH", "G", "sl"])
    def _entropy_dk_kernel(
        q_ptr, k_ptr, qoff_ptr, koff_ptr, mask_ptr, idx_ptr, w_ptr, lse_ptr, mean_ptr, g_ptr, dk_ptr,
        T, S, H, KVH, G, scale, w_all,
        sqb, sqt, sqh, skb, sks, skh, smb, sib, sl, sgl, sgb, sgh, sgt, sdl, sdb, sds, sdh,
        D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
        UPCAST: tl.constexpr, HAS_IDX: tl.constexpr, HAS_W: tl.constexpr, LAYERS: tl.constexpr,
    ):  # fmt: skip
        pid_s = tl.program_id(0)
        pid_bk = tl.program_id(1)
        pid_l = tl.program_id(2).to(tl.int64)
        q_ptr, k_ptr = _layer_ptrs(q_ptr, k_ptr, qoff_ptr, koff_ptr, pid_l, LAYERS)
        g_ptr += pid_l * sgl
        dk_ptr += pid_l * sdl
        lse_ptr += pid_l * sl
        mean_ptr += pid_l * sl
        b = (pid_bk // KVH).to(tl.int64)
        kvh = pid_bk % KVH
        offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
        offs_d = tl.arange(0, D)
        in_s = offs_s < S
        rows = _key_rows(idx_ptr, b, sib, offs_s, in_s, HAS_IDX)
        k = tl.load(k_ptr + b * skb + rows[:, None] * sks + kvh * skh + offs_d[None, :], mask=in_s[:, None], other=0.0)
        wt = _item_weight(w_ptr, b, w_all, HAS_W)
        ok = in_s
        if HAS_MASK:
            ok = ok & (tl.load(mask_ptr + b * smb + offs_s, mask=in_s, other=0) != 0)
        acc = tl.zeros([BLOCK_S, D], tl.float32)
        for hg in range(0, G):
            h = kvh * G + hg
            row0 = (b * H + h) * T
            for t0 in range(0, T, BLOCK_T):
                offs_t = t0 + tl.arange(0, BLOCK_T)
                t_ok = offs_t < T
                q = tl.load(
                    q_ptr + b * sqb + offs_t[:, None] * sqt + h * sqh + offs_d[None, :], mask=t_ok[:, None], other=0.0
                )
                lse = tl.load(lse_ptr + row0 + offs_t, mask=t_ok, other=0.0)
                mean_s = tl.load(mean_ptr + row0 + offs_t, mask=t_ok, other=0.0)
                g = tl.load(g_ptr + b * sgb + h * sgh + offs_t * sgt, mask=t_ok, other=0.0) * wt
                st = _dot(k, tl.trans(q), IEEE, UPCAST)
                st = st * scale  # sᵀ [BLOCK_S, BLOCK_T]
                pt = tl.where(ok[:, None] & t_ok[None, :], tl.exp(st - lse[None, :]), 0.0)
                gst = -g[None, :] * pt * (st - mean_s[None, :])  # (∂L/∂s)ᵀ
                acc += _dot(gst.to(q.dtype), q, IEEE, UPCAST)
        dk = acc * scale
        tl.store(
            dk_ptr + b * sdb + rows[:, None] * sds + kvh * sdh + offs_d[None, :],
            dk.to(dk_ptr.dtype.element_ty),
            mask=in_s[:, None],
        )


def _upcast(q: torch.Tensor) -> bool:
    """bf16 under Triton's interpreter: its ``tl.dot`` multiplies the raw 16-bit storage of bf16 (Triton 3.x), so
    the operands go through fp32 there (exact: bf16 products are exact in fp32, as in the tensor cores)."""
    return q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def _unit_d(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


class _FusedEntropyFn(torch.autograd.Function):
    """Per-frame entropy ``[L, B, H, T]`` (fp32) of L layers in one launch, times ``w_all · w[b]``.

    Inputs after the options: ``q_0 .. q_{L-1}`` ``[B, T, H, D]`` then ``k_0 .. k_{L-1}`` ``[B, S, KVH, D]`` (one
    shape, dtype and set of strides each). Saves the q's and k's, the key mask and index, the weights, lse and μ."""

    @staticmethod
    def forward(ctx, kmask, kidx, w, w_all, scale, blocks, *qk):
        # kmask int8 [B,n] | None; kidx int [B,n] | None; w [B] | None
        L = len(qk) // 2
        qs, ks = [_unit_d(x) for x in qk[:L]], [_unit_d(x) for x in qk[L:]]
        (q, k), (qoff, koff) = layer_tables([qs, ks])  # one upload for both tables
        B, T, H, D = q.shape
        KVH = k.shape[2]
        S = kidx.shape[1] if kidx is not None else k.shape[1]  # keys the kernels walk over
        h = torch.empty(L, B, H, T, device=q.device, dtype=torch.float32)
        lse = torch.empty_like(h)
        mean_s = torch.empty_like(h)
        bt, bs, warps = blocks["fwd"]
        grid = (triton.cdiv(T, bt), B * H, L)
        _entropy_fwd_kernel[grid](
            q, k, _ptr(qoff, h), _ptr(koff, h), _ptr(kmask, h), _ptr(kidx, h), _ptr(w, h), h, lse, mean_s,
            T, S, H, H // KVH, float(scale), float(w_all),
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            _stride0(kmask), _stride0(kidx), h.stride(0),
            D=D, BLOCK_T=bt, BLOCK_S=bs, HAS_MASK=kmask is not None, IEEE=q.dtype == torch.float32, UPCAST=_upcast(q),
            HAS_IDX=kidx is not None, HAS_W=w is not None, LAYERS=qoff is not None, num_warps=warps,
        )  # fmt: skip
        none = torch.empty(0, device=q.device)
        opt = [_ptr(x, none) for x in (kmask, kidx, w)]
        # the layers' own tensors, not the tables: saved-tensor hooks may hand back copies at new addresses (e.g.
        # offloading to the CPU), so the backward builds its tables from what it gets back
        ctx.save_for_backward(*opt, lse, mean_s, *qs, *ks)
        ctx.has = tuple(x is not None for x in (kmask, kidx, w))
        ctx.scale, ctx.w_all, ctx.blocks, ctx.L = float(scale), float(w_all), blocks, L
        return h

    @staticmethod
    def backward(ctx, grad_out):  # grad_out [L, B, H, T]
        kmask, kidx, w, lse, mean_s, *qk = ctx.saved_tensors
        L = ctx.L
        has_mask, has_idx, has_w = ctx.has
        kmask, kidx, w = (kmask if has_mask else None), (kidx if has_idx else None), (w if has_w else None)
        (q, k), (qoff, koff) = layer_tables([qk[:L], qk[L:]])
        layers = qoff is not None
        B, T, H, D = q.shape
        KVH = k.shape[2]
        S = kidx.shape[1] if kidx is not None else k.shape[1]
        g = grad_out if grad_out.dtype == torch.float32 else grad_out.float()
        ieee, upcast = q.dtype == torch.float32, _upcast(q)
        ptrs = (_ptr(qoff, lse), _ptr(koff, lse), _ptr(kmask, lse), _ptr(kidx, lse), _ptr(w, lse), lse, mean_s, g)
        common = (ctx.scale, ctx.w_all, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                  _stride0(kmask), _stride0(kidx), lse.stride(0), g.stride(0), g.stride(1), g.stride(2), g.stride(3))  # fmt: skip
        flags = dict(HAS_MASK=has_mask, IEEE=ieee, UPCAST=upcast, HAS_IDX=has_idx, HAS_W=has_w, LAYERS=layers)
        need_q, need_k = any(ctx.needs_input_grad[6 : 6 + L]), any(ctx.needs_input_grad[6 + L :])
        dqs, dks = [None] * L, [None] * L
        if need_q:
            dq = torch.empty((L, *q.shape), device=q.device, dtype=q.dtype)  # [L, B, T, H, D]
            bt, bs, warps = ctx.blocks["dq"]
            _entropy_dq_kernel[(triton.cdiv(T, bt), B * H, L)](
                q, k, *ptrs, dq, T, S, H, H // KVH, *common, dq.stride(0), dq.stride(1), dq.stride(2), dq.stride(3),
                D=D, BLOCK_T=bt, BLOCK_S=bs, num_warps=warps, **flags,
            )  # fmt: skip
            dqs = list(dq.unbind(0))
        if need_k:
            # [L, B, S, KVH, D]; with a key index the kernel writes the indexed rows only: the others stay 0
            dk = (torch.zeros if has_idx else torch.empty)((L, *k.shape), device=k.device, dtype=k.dtype)
            bt, bs, warps = ctx.blocks["dk"]
            _entropy_dk_kernel[(triton.cdiv(S, bs), B * KVH, L)](
                q, k, *ptrs, dk, T, S, H, KVH, H // KVH, *common, dk.stride(0), dk.stride(1), dk.stride(2),
                dk.stride(3), D=D, BLOCK_T=bt, BLOCK_S=bs, num_warps=warps, **flags,
            )  # fmt: skip
            dks = list(dk.unbind(0))
        return (None,) * 6 + tuple(dqs) + tuple(dks)


def _ptr(x: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    """``x``, or a stand-in for an absent optional tensor (a pointer the kernels never read, an unused slot)."""
    return x if x is not None else dummy


def _stride0(x: torch.Tensor | None) -> int:
    return x.stride(0) if x is not None else 0


def fused_attention_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    key_mask: torch.Tensor | None = None,
    blocks: dict[str, tuple[int, int, int]] | None = None,
    *,
    key_index: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    weight_all: float = 1.0,
) -> torch.Tensor:
    """Per-frame entropy ``w_all · w[b] · H`` ``[B, H, T]`` (fp32, in nats unless weighted) with
    ``H = lse - Σ p s`` of ``softmax(scale · q kᵀ)`` over the taken keys, differentiable in ``q`` and ``k``, with
    the fused Triton kernels.

    No argument checks beyond the kernels' needs: :func:`attnlens.reducers.differentiable.attention_entropy` is
    the public entry (validation, key plans, normalization).

    Args:
        q: ``[B, T, H, D]``, bf16/fp16/fp32 (see :func:`fused_entropy_supported`).
        k: ``[B, S, KVH, D]``; cast to ``q``'s dtype. Query head ``h`` reads KV head ``h // (H / KVH)``.
        key_mask: optional ``[B, n]`` (bool or integer, nonzero = taken); every item needs at least one key.
            Without ``key_index`` it marks keys of ``k`` (``n = S``); with it, entries of ``key_index``.
        blocks: per kernel (``"fwd"``, ``"dq"``, ``"dk"``) ``(BLOCK_T, BLOCK_S, num_warps)``; block sizes powers
            of 2, at least 16. Defaults: :data:`DEFAULT_BLOCKS`.
        key_index: optional integer ``[B, n]``: the kernels walk over keys ``k[b, key_index[b, j]]`` only (no
            gathered copy of ``k``; its gradient lands on those rows, the other rows get 0). An item's indices
            must be distinct.
        weight: optional ``[B]`` factor per item (e.g. ``1 / log n_b`` to normalize), applied inside the kernels
            to the values and their gradients; ``weight_all``: a factor for every item.
    """
    opts = dict(key_index=key_index, weight=weight, weight_all=weight_all)
    return fused_attention_entropy_layers([q], [k], scale, key_mask, blocks, **opts)[0]


def fused_attention_entropy_layers(
    qs: list[torch.Tensor],
    ks: list[torch.Tensor],
    scale: float,
    key_mask: torch.Tensor | None = None,
    blocks: dict[str, tuple[int, int, int]] | None = None,
    *,
    key_index: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    weight_all: float = 1.0,
) -> torch.Tensor:
    """:func:`fused_attention_entropy` of several layers in one launch per kernel: ``[L, B, H, T]``.

    ``qs[l]`` ``[B, T, H, D]`` and ``ks[l]`` ``[B, S, KVH, D]`` are layer ``l``'s queries and keys (all layers
    of one shape and dtype); the other arguments are shared by all layers. The kernels read every layer's tensors
    in place through a table of offsets (no stacked copy); gradients flow to each ``qs[l]`` and ``ks[l]``.
    """
    if not qs or len(qs) != len(ks):
        raise ValueError(f"need one key tensor per query tensor, at least one; got {len(qs)} and {len(ks)}")
    _check_supported(qs[0])
    blocks = {**DEFAULT_BLOCKS, **(blocks or {})}
    dt = qs[0].dtype
    for i, (q, k) in enumerate(zip(qs, ks)):
        if (
            q.shape != qs[0].shape
            or k.shape != ks[0].shape
            or q.dtype != dt
            or q.device != qs[0].device
            or k.device != qs[0].device
        ):
            raise ValueError(
                f"layer {i}: q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)} differ from layer 0's "
                f"q {tuple(qs[0].shape)} {dt}, k {tuple(ks[0].shape)} on {qs[0].device}: one launch needs one shape, "
                "dtype and device"
            )
    ks = [k if k.dtype == dt else k.to(dt) for k in ks]
    kmask, kidx, w = _options(qs[0], key_mask, key_index, weight)
    return _FusedEntropyFn.apply(kmask, kidx, w, float(weight_all), float(scale), blocks, *qs, *ks)


def _check_supported(q: torch.Tensor) -> None:
    if not fused_entropy_supported(q):
        raise ValueError(
            f"the fused entropy kernels need Triton, a CUDA tensor (or TRITON_INTERPRET=1), dtype bf16/fp16/fp32 "
            f"and a power-of-2 head_dim in [16, 256]; got {q.dtype} {tuple(q.shape)} on {q.device} "
            f"(Triton {'found' if HAVE_TRITON else 'missing'})"
        )


def _options(q: torch.Tensor, key_mask, key_index, weight):
    """Key mask (int8), key index and item weights on ``q``'s device, unit stride along the last dim."""
    kmask = kidx = w = None
    if key_mask is not None:
        kmask = key_mask.to(device=q.device, dtype=torch.int8)
        if kmask.stride(1) != 1:
            kmask = kmask.contiguous()
    if key_index is not None:
        kidx = key_index.to(device=q.device)
        if kidx.stride(1) != 1:
            kidx = kidx.contiguous()
    if weight is not None:
        w = weight.to(device=q.device).contiguous()
    return kmask, kidx, w
