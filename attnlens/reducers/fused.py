"""Fused per-frame statistics: one Triton kernel per layer, the probability map is never written to memory.

For a block of query frames of one (batch item, head) the kernel streams over the keys in blocks and keeps, in
fp32 registers, the online-softmax state (running max ``m``, ``l = Σ e^{s-m}``) and the sums it needs::

    entropy      H = log l + m - (Σ e^{s-m} s) / l                   (then / log S)
    mass[g]      = (Σ_{j in g} e^{s-m}) / l
    argmax       first index of the running maximum
    lyric-only   the same over keys in L: H_L = log l_L + m_L - (Σ_L e^{s-m_L} s) / l_L  (then / log n), argmax_L

These are exact rewrites of the reference definitions (:mod:`attnlens.reducers.stats`); only the summation order
differs. Logits use ``tl.dot`` with fp32 accumulation (IEEE fp32 products for fp32 inputs, exact products for
bf16/fp16 inputs). Needs CUDA, Triton and ``head_dim >= 16``; elsewhere the reference path runs.
"""

from __future__ import annotations

import math

import torch

try:  # Triton is optional: CUDA builds of torch bring it
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAVE_TRITON = False


def fused_available(q: torch.Tensor) -> bool:
    """True when the fused kernel can run for this query tensor."""
    import os

    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    return HAVE_TRITON and (q.is_cuda or interpret) and q.shape[-1] >= 16 and q.shape[-1] & (q.shape[-1] - 1) == 0


if HAVE_TRITON:
    # All tensors are contiguous: q [B, T, H, D], k [B, S, KVH, D], seg/lidx [B, S], outputs [..., B, h, T(, 5)]
    # starting at element ``out_off`` (the layer's slot in a per-step buffer). Integer arguments are not
    # specialized, so one compiled kernel serves every length (and launching it stays cheap).
    @triton.jit(do_not_specialize=["out_off", "B", "T", "S", "H", "KVH", "n_sel", "group"])
    def _stats_kernel(
        q_ptr, k_ptr, seg_ptr, lidx_ptr, nlyr_ptr, heads_ptr,
        ent_ptr, mass_ptr, arg_ptr, entl_ptr, argl_ptr,
        out_off, B, T, S, H, KVH, n_sel, group, scale, inv_log_s,
        D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        pid_t = tl.program_id(0)
        pid_bh = tl.program_id(1)
        pid_l = tl.program_id(2)  # layer within a batched call (0 for a single layer)
        q_ptr += pid_l.to(tl.int64) * B * T * H * D
        k_ptr += pid_l.to(tl.int64) * B * S * KVH * D
        out_off += pid_l * B * n_sel * T
        b = pid_bh // n_sel
        hs = pid_bh % n_sel
        h = tl.load(heads_ptr + hs)
        kvh = h // group
        sqt = H * D
        sqb = T * sqt
        sks = KVH * D
        skb = S * sks
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_d = tl.arange(0, D)
        t_ok = offs_t < T
        q = tl.load(q_ptr + b * sqb + offs_t[:, None] * sqt + h * D + offs_d[None, :], mask=t_ok[:, None], other=0.0)
        neg_inf = float("-inf")
        m = tl.full([BLOCK_T], neg_inf, tl.float32)
        lsum = tl.zeros([BLOCK_T], tl.float32)
        ps = tl.zeros([BLOCK_T], tl.float32)
        am = tl.zeros([BLOCK_T], tl.int32)
        g0 = tl.zeros([BLOCK_T], tl.float32)
        g1 = tl.zeros([BLOCK_T], tl.float32)
        g2 = tl.zeros([BLOCK_T], tl.float32)
        g3 = tl.zeros([BLOCK_T], tl.float32)
        g4 = tl.zeros([BLOCK_T], tl.float32)
        ml = tl.full([BLOCK_T], neg_inf, tl.float32)
        ll = tl.zeros([BLOCK_T], tl.float32)
        psl = tl.zeros([BLOCK_T], tl.float32)
        aml = tl.full([BLOCK_T], -1, tl.int32)
        for s0 in range(0, S, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            s_ok = offs_s < S
            k = tl.load(
                k_ptr + b * skb + offs_s[:, None] * sks + kvh * D + offs_d[None, :], mask=s_ok[:, None], other=0.0
            )
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = s * scale
            s = tl.where(s_ok[None, :], s, neg_inf)
            seg = tl.load(seg_ptr + b * S + offs_s, mask=s_ok, other=-1)
            lid = tl.load(lidx_ptr + b * S + offs_s, mask=s_ok, other=-1)
            # all keys
            bmax = tl.max(s, axis=1)
            barg = tl.argmax(s, axis=1).to(tl.int32) + s0
            am = tl.where(bmax > m, barg, am)
            m_new = tl.maximum(m, bmax)
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            p = tl.where(s_ok[None, :], p, 0.0)
            rowsum = tl.sum(p, axis=1)
            lsum = lsum * alpha + rowsum
            ps = ps * alpha + tl.sum(tl.where(s_ok[None, :], p * s, 0.0), axis=1)
            g0 = g0 * alpha
            g1 = g1 * alpha
            g2 = g2 * alpha
            g3 = g3 * alpha
            g4 = g4 * alpha
            # packed segments are contiguous runs: most key blocks lie in one segment and need no extra reduction
            seg_lo = tl.min(tl.where(s_ok, seg, 127))
            seg_hi = tl.max(tl.where(s_ok, seg, -127))
            if seg_lo == seg_hi:
                g0 += tl.where(seg_lo == 0, rowsum, 0.0)
                g1 += tl.where(seg_lo == 1, rowsum, 0.0)
                g2 += tl.where(seg_lo == 2, rowsum, 0.0)
                g3 += tl.where(seg_lo == 3, rowsum, 0.0)
                g4 += tl.where(seg_lo == 4, rowsum, 0.0)
            else:
                g0 += tl.sum(tl.where(seg[None, :] == 0, p, 0.0), axis=1)
                g1 += tl.sum(tl.where(seg[None, :] == 1, p, 0.0), axis=1)
                g2 += tl.sum(tl.where(seg[None, :] == 2, p, 0.0), axis=1)
                g3 += tl.sum(tl.where(seg[None, :] == 3, p, 0.0), axis=1)
                g4 += tl.sum(tl.where(seg[None, :] == 4, p, 0.0), axis=1)
            m = m_new
            # lyric keys only (skipped for blocks without any)
            if tl.max(lid) >= 0:
                in_l = lid[None, :] >= 0
                sl = tl.where(in_l, s, neg_inf)
                bmax_l = tl.max(sl, axis=1)
                bpos_l = tl.argmax(sl, axis=1).to(tl.int32)
                bidx_l = tl.sum(tl.where(tl.arange(0, BLOCK_S)[None, :] == bpos_l[:, None], lid[None, :], 0), axis=1)
                aml = tl.where(bmax_l > ml, bidx_l, aml)
                ml_new = tl.maximum(ml, bmax_l)
                alpha_l = tl.where(ml_new == neg_inf, 1.0, tl.exp(ml - ml_new))
                pl = tl.where(in_l, tl.exp(sl - ml_new[:, None]), 0.0)
                ll = ll * alpha_l + tl.sum(pl, axis=1)
                psl = psl * alpha_l + tl.sum(tl.where(in_l, pl * s, 0.0), axis=1)
                ml = ml_new
        n_l = tl.load(nlyr_ptr + b)
        inv_l = 1.0 / lsum
        ent = (tl.log(lsum) + m - ps * inv_l) * inv_log_s
        has_l = ll > 0
        ll_safe = tl.where(has_l, ll, 1.0)
        ent_l = tl.log(ll_safe) + tl.where(has_l, ml, 0.0) - psl / ll_safe
        log_n = tl.log(tl.maximum(n_l, 2).to(tl.float32))
        ent_l = tl.where(n_l > 1, ent_l / log_n, 0.0)
        aml = tl.where(n_l > 0, aml, -1)
        o = out_off + (b * n_sel + hs) * T + offs_t
        tl.store(ent_ptr + o, ent, mask=t_ok)
        tl.store(arg_ptr + o, am, mask=t_ok)
        tl.store(entl_ptr + o, ent_l, mask=t_ok)
        tl.store(argl_ptr + o, aml, mask=t_ok)
        mo = o * 5
        tl.store(mass_ptr + mo + 0, g0 * inv_l, mask=t_ok)
        tl.store(mass_ptr + mo + 1, g1 * inv_l, mask=t_ok)
        tl.store(mass_ptr + mo + 2, g2 * inv_l, mask=t_ok)
        tl.store(mass_ptr + mo + 3, g3 * inv_l, mask=t_ok)
        tl.store(mass_ptr + mo + 4, g4 * inv_l, mask=t_ok)


def reduce_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    heads: torch.Tensor,
    group: int,
    seg_codes: torch.Tensor,
    lyric_index: torch.Tensor,
    n_lyric: torch.Tensor,
    out: dict[str, torch.Tensor] | None = None,
    slot: int = 0,
    block_t: int = 64,
    block_s: int = 64,
    num_warps: int = 4,
) -> dict[str, torch.Tensor]:
    """Per-frame statistics with the fused kernel.

    q: ``[B, T, H, D]`` (all heads; ``heads`` selects, int32 ``[h]``), k: ``[B, S, KVH, D]``, seg_codes and
    lyric_index: int32 ``[B, S]``, n_lyric: int32 ``[B]``. Several layers in one launch: q ``[L, B, T, H, D]`` and
    k ``[L, B, S, KVH, D]``, written to slots ``slot .. slot + L - 1``. Results go to ``out[name][slot]`` when
    ``out`` holds contiguous buffers ``[n, B, h, T(, 5)]`` (a whole step's layers), else to new tensors
    ``[B, h, T(, 5)]``. Returns the dict of output tensors.
    """
    n_layers = q.shape[0] if q.ndim == 5 else 1
    B, T, H, D = q.shape[-4:]
    S, KVH = k.shape[-3], k.shape[-2]
    h = heads.numel()
    if out is None:
        dev, lead = q.device, ((n_layers,) if q.ndim == 5 else ())
        out = {
            "entropy": torch.empty(*lead, B, h, T, device=dev, dtype=torch.float32),
            "mass": torch.empty(*lead, B, h, T, 5, device=dev, dtype=torch.float32),
            "argmax": torch.empty(*lead, B, h, T, device=dev, dtype=torch.int32),
            "entropy_lyric": torch.empty(*lead, B, h, T, device=dev, dtype=torch.float32),
            "lyric_argmax": torch.empty(*lead, B, h, T, device=dev, dtype=torch.int32),
        }
        slot = 0
    if not q.is_contiguous():
        q = q.contiguous()
    if not k.is_contiguous():
        k = k.contiguous()
    grid = ((T + block_t - 1) // block_t, B * h, n_layers)
    _stats_kernel[grid](
        q, k, seg_codes, lyric_index, n_lyric, heads,
        out["entropy"], out["mass"], out["argmax"], out["entropy_lyric"], out["lyric_argmax"],
        slot * B * h * T, B, T, S, H, KVH, h, group, float(scale), 1.0 / math.log(S) if S > 1 else 0.0,
        D=D, BLOCK_T=block_t, BLOCK_S=block_s, IEEE=q.dtype == torch.float32, num_warps=num_warps,
    )  # fmt: skip
    return out
