"""Fused per-frame statistics: one Triton kernel per layer, the probability map is never written to memory.

For a block of query frames of one (batch item, head) the kernel streams over the keys in blocks and keeps, in
fp32 registers, the online-softmax state (running max ``m``, ``l = Σ e^{s-m}``) and the sums it needs::

    entropy      H = log l + m - (Σ e^{s-m} s) / l                   (then / log n_b)
    mass[g]      = (Σ_{j in g} e^{s-m}) / l
    argmax       first index of the running maximum
    lyric-only   the same over keys in L: H_L = log l_L + m_L - (Σ_L e^{s-m_L} s) / l_L  (then / log n), argmax_L

with the sums over the keys in the softmax, ``g`` over the layout's ``n_seg`` segments (1 to 16, a compile-time
constant: one column each of a ``[rows, NSEG_P]`` accumulator, ``NSEG_P`` the count rounded up to a power of two;
keys of code -1 are in the softmax and in no segment) and ``n_b`` the number of keys in the softmax of batch item
``b`` (entropy 0 when ``n_b <= 1``). Masked keys (segment code ``MASKED_CODE``, -2: probability exactly 0, as a
False of a boolean SDPA mask) are out of every sum: the key plan leaves them out of the order the kernel reads keys
in, so they are never read, never the argmax and in no segment. These are exact rewrites of the reference
definitions (:mod:`attnlens.reducers.stats`); only the summation order differs. Logits use ``tl.dot`` with fp32
accumulation (IEEE fp32 products for fp32 inputs, exact products for bf16/fp16 inputs). Needs CUDA, Triton and
``head_dim >= 16``; elsewhere the reference path runs.

One kernel, one program per (frame block, batch item, selected head or head group), configured by
:class:`FusedConfig` (``config=`` of :func:`reduce_fused`); its switches are exact rewrites of the formulas above:

  - shifted sums: ``x = s - m`` is the exponent, ``P = Σ e^x x`` (always ``<= 0``) and ``H = log l - P / l``;
    a new maximum ``m' = m + δ`` rescales ``l' = e^{-δ} l`` and ``P' = e^{-δ} (P - δ l)``.
  - ``exp2``: base-2 exponent with ``log2(e)`` folded into the scale: ``x₂ = r · (scale · log2 e) - m · (scale ·
    log2 e)`` on the raw dot ``r`` (one FMA; the maximum of ``r`` is taken before scaling, which commutes with
    the monotone rounding of a positive scale), then ``H = log l - ln 2 · P₂ / l``.
  - ``gqa``: one program takes all selected query heads of one KV group (when the selection covers whole groups),
    their rows stacked, ``[G · BLOCK_T, D] @ [D, BLOCK_S]``: each key block is loaded once per group.
  - ``lyric``: ``"mask"`` (a masked second softmax over each block that holds lyric keys, lyric index by a masked
    sum), ``"gather"`` (the same, but the lyric argmax is kept as a key position and mapped to its lyric
    index once at the end), ``"share"`` (as ``"gather"``, and blocks whose keys are all in L take their exponent
    relative to the lyric maximum ``m_L`` only: ``e^{s-m_L}`` serves both sums, the all-keys sums get the row
    factor ``w = e^{m_L - m}`` and ``P += w (P_L - (m - m_L) l_L)``; a factor that underflows drops only terms
    below ``2^-126`` of ``l >= 1``, so no fallback is needed).
  - ``order``: keys are visited lyric keys first, then the other keys, each run in packed order (:func:`key_plan`):
    with sung tokens interleaved with line breaks and tags, every key block becomes all-lyric or lyric-free (and
    mostly holds one segment). Ties of the all-keys argmax go to the smaller packed index, as in the reference.
  - ``argmax``: ``"pair"`` (one reduction of (value, index) pairs, ties to the left), ``"sep"`` (a max and an
    argmax), ``"eq"`` (the max, then the first position holding it).
  - blocks: the full key blocks come first, in a loop without any mask, then the partial ones (padding masked);
    a host-built descriptor per block says whether it is uniform in segment (one row sum per block) or which
    segments it holds (masked sums only for those), and whether it holds lyric keys, all lyric keys or none.

The statistics kernel, its key plan and its launcher are one unit (the plan's layout is the kernel's contract);
hence over 400 lines.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import torch

from ..devices import TableArena, upload
from ..segments import MASKED_CODE
from .layer_table import layer_tables

try:  # Triton is optional: CUDA builds of torch bring it
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAVE_TRITON = False


@contextlib.contextmanager
def interpreter_bf16_dot() -> Iterator[None]:
    """Within the block, Triton's CPU interpreter multiplies bf16 ``tl.dot`` operands as exact fp32.

    The interpreter keeps bf16 as raw 16-bit patterns and multiplies those; widening to fp32 is exact (a bf16 is the
    upper half of an fp32). For the tests and ``benchmarks/profile_fused.py --smoke``; nothing happens outside the
    interpreter (``TRITON_INTERPRET=1``), and the interpreter is restored when the block ends.
    """
    import os

    if not HAVE_TRITON or os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    import numpy as np
    from triton.runtime import interpreter as ti

    orig = ti.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        def widen(x):
            if x.dtype == tl.bfloat16:
                return ti.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
            return x

        return orig(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    ti.InterpreterBuilder.create_dot = create_dot
    try:
        yield
    finally:
        ti.InterpreterBuilder.create_dot = orig


def fused_available(q: torch.Tensor) -> bool:
    """True when the fused kernel can run for this query tensor."""
    import os

    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    return HAVE_TRITON and (q.is_cuda or interpret) and q.shape[-1] >= 16 and q.shape[-1] & (q.shape[-1] - 1) == 0


LyricMode = Literal["mask", "gather", "share"]
ArgmaxMode = Literal["sep", "pair", "eq"]
_LYRIC_CODE = {"mask": 0, "gather": 1, "share": 2}
_ARGMAX_CODE = {"sep": 0, "pair": 1, "eq": 2}
MAX_SEG = 16
"""The most segments a layout may have (the key plan's block descriptor holds a segment code + 1 in 5 bits)."""


@dataclass(frozen=True)
class FusedConfig:
    """The kernel's switches and launch parameters (see the module docstring). ``None`` keeps Triton's default;
    ``maxnreg`` caps the registers per thread (more programs per SM; spills if too low). The defaults are the plain
    formulas; :data:`DEFAULT_CONFIG` is what the library runs."""

    block_t: int = 64
    block_s: int = 64
    num_warps: int = 4
    num_stages: int | None = None
    maxnreg: int | None = None
    exp2: bool = False
    gqa: bool = False
    lyric: LyricMode = "mask"
    order: bool = False
    argmax: ArgmaxMode = "sep"

    def __post_init__(self) -> None:
        if self.lyric not in _LYRIC_CODE:
            raise ValueError(f"lyric must be one of {tuple(_LYRIC_CODE)}; got {self.lyric!r}")
        if self.argmax not in _ARGMAX_CODE:
            raise ValueError(f"argmax must be one of {tuple(_ARGMAX_CODE)}; got {self.argmax!r}")
        for name in ("block_t", "block_s"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 16; got {v}")

    def label(self) -> str:
        """Short name with every field that differs from the plain defaults."""
        base = FusedConfig()
        parts = [f"t{self.block_t}", f"s{self.block_s}", f"w{self.num_warps}"]
        if self.num_stages is not None:
            parts.append(f"st{self.num_stages}")
        if self.maxnreg is not None:
            parts.append(f"r{self.maxnreg}")
        for name in ("exp2", "gqa", "order"):
            if getattr(self, name):
                parts.append(name)
        if self.lyric != base.lyric:
            parts.append(f"lyr-{self.lyric}")
        if self.argmax != base.argmax:
            parts.append(f"arg-{self.argmax}")
        return "_".join(parts)


DEFAULT_CONFIG = FusedConfig(block_t=64, exp2=True, lyric="share", order=True, argmax="eq")
"""What :func:`reduce_fused` and the capture run: exp2, lyric-first key order, shared lyric exponent, ``eq`` argmax,
64×64 blocks, 4 warps, one head per program (chosen by ``benchmarks/profile_fused.py``; its figures, with the
machine and date, are in docs/performance.md, "The statistics kernel")."""


# ---------------------------------------------------------------------------------------------- host-side plans
@dataclass(frozen=True)
class KeyPlan:
    """The order in which the v2 kernel visits the packed keys of every batch item, in blocks of ``block_s``.

    ``order[b, j]``: packed key at position ``j`` (-1: padding); ``seg`` and ``lid``: segment code and lyric index
    at each position (-1 for padding); ``desc[b, i]``: bit 0 block full (no padding), bit 1 all its keys in L,
    bit 2 some key in L, bits 4-8 lowest segment code + 1, bits 9-13 highest + 1; ``nblk[b] = (full blocks,
    blocks)``: the full blocks come first, then the partial ones (the kernel masks only those).
    """

    order: torch.Tensor  # [B, S_pad] int32
    seg: torch.Tensor  # [B, S_pad] int32
    lid: torch.Tensor  # [B, S_pad] int32
    desc: torch.Tensor  # [B, NB] int32
    nblk: torch.Tensor  # [B, 2] int32
    block_s: int
    lyric_first: bool


def key_plan(seg_codes: torch.Tensor, lyric_index: torch.Tensor, block_s: int, lyric_first: bool) -> KeyPlan:
    """Key order and block descriptors for the v2 kernel (device tensor ops only: no synchronization).

    Masked keys (segment code ``MASKED_CODE``, -2) are left out of the order: the kernel never reads them, so their
    probability is exactly 0. ``lyric_first``: the lyric keys (``lyric_index >= 0``) in packed order, then the other
    keys in packed order, each run cut into whole blocks with its remainder (padded to a block) moved behind all
    whole blocks::

        [lyric whole blocks][other whole blocks][lyric remainder + padding][other remainder + padding]

    so no block mixes lyric keys with others, lyric blocks stay in packed order, and only the last two blocks are
    partial. Else packed order (only the last block partial). seg_codes, lyric_index: ``[B, S]``.
    """
    B, S = seg_codes.shape
    dev = seg_codes.device
    i64 = torch.long
    bs = block_s
    present = seg_codes != MASKED_CODE  # [B, S]
    in_l = (lyric_index >= 0) & present
    n_p = present.sum(1, keepdim=True)  # keys in the softmax [B, 1]
    i = torch.arange(S, device=dev, dtype=i64)[None, :]  # rank in the visiting order
    if lyric_first:
        nb = (S + bs - 1) // bs + 1  # two partial blocks take at most one block more than packed order
        rank = torch.where(in_l, 0, torch.where(present, 1, 2)).to(torch.int32)
        src = torch.sort(rank, dim=1, stable=True).indices  # lyric keys, other keys, masked keys; packed order each
        n_l = in_l.sum(1, keepdim=True)
        l_full = n_l // bs * bs  # lyric keys in whole blocks
        o_full = (n_p - n_l) // bs * bs  # other keys in whole blocks
        l_rest = torch.where(n_l > l_full, bs, 0)  # the lyric remainder's block
        dst = torch.where(
            i < l_full,
            i,
            torch.where(
                i < n_l,
                l_full + o_full + (i - l_full),
                torch.where(i - n_l < o_full, l_full + (i - n_l), l_full + o_full + l_rest + (i - n_l - o_full)),
            ),
        )
        n_full = ((l_full + o_full) // bs)[:, 0]
        n_all = n_full + (n_l > l_full)[:, 0].to(i64) + (n_p - n_l > o_full)[:, 0].to(i64)
    else:
        nb = (S + bs - 1) // bs
        src = torch.sort((~present).to(torch.int32), dim=1, stable=True).indices  # present keys in packed order
        dst = i.expand(B, -1)
        n_full = (n_p // bs)[:, 0]
        n_all = ((n_p + bs - 1) // bs)[:, 0]
    dst = torch.where(i < n_p, dst, nb * bs)  # masked keys go to a spare slot, cut off below
    order = torch.full((B, nb * bs + 1), -1, device=dev, dtype=i64)
    order.scatter_(1, dst, src)
    order = order[:, : nb * bs]
    valid = order >= 0
    oc = order.clamp(min=0)
    seg = torch.where(valid, seg_codes.to(i64).gather(1, oc), -1)
    lid = torch.where(valid, lyric_index.to(i64).gather(1, oc), -1)
    v3, s3, l3 = (x.view(B, nb, bs) for x in (valid, seg, lid))
    in3 = l3 >= 0
    full = v3.all(-1)
    lall = (in3 | ~v3).all(-1) & v3.any(-1)
    lany = in3.any(-1)
    lo = torch.where(v3, s3, 127).amin(-1).clamp(-1, MAX_SEG - 1)
    hi = torch.where(v3, s3, -127).amax(-1).clamp(-1, MAX_SEG - 1)
    desc = full.to(i64) | (lall.to(i64) << 1) | (lany.to(i64) << 2) | ((lo + 1) << 4) | ((hi + 1) << 9)
    i32 = torch.int32
    nblk = torch.stack([n_full, n_all], dim=1)
    return KeyPlan(
        order.to(i32), seg.to(i32), lid.to(i32), desc.to(i32).contiguous(), nblk.to(i32).contiguous(), bs, lyric_first
    )


def head_table(heads: list[int], group: int, gqa: bool) -> tuple[list[int], int]:
    """Programs' heads: ``(table, G)``; program ``i`` takes selected positions ``table[i*G : (i+1)*G]``.

    With ``gqa`` and a selection that covers whole KV groups (every group it touches, all ``group`` heads),
    ``G = group`` (a power of two) and the positions of one group share a program; else ``G = 1``.
    """
    ident = (list(range(len(heads))), 1)
    if not gqa or group <= 1 or group & (group - 1):
        return ident
    by_kv: dict[int, list[int]] = {}
    for pos, h in enumerate(heads):
        by_kv.setdefault(h // group, []).append(pos)
    if any(len(v) != group for v in by_kv.values()):
        return ident
    return [pos for kv in sorted(by_kv) for pos in by_kv[kv]], group


# cache keyed by the identity (and version) of the caller's tensors: the session passes the same layout and head
# tensors every call, so plans are built once (the head table reads ``heads`` on the host once)
_CACHE: dict[tuple, tuple] = {}
_CACHE_MAX = 64


def _cached(tensors: tuple[torch.Tensor, ...], extra: tuple, build):
    key = (extra, *[(id(t), t._version) for t in tensors])
    hit = _CACHE.get(key)
    if hit is not None and all(r() is t for r, t in zip(hit[0], tensors)):
        return hit[1]
    val = build()
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[key] = (tuple(weakref.ref(t) for t in tensors), val)
    return val


if HAVE_TRITON:
    # ------------------------------------------------------------------------------ segment masses (both kernels)
    # One accumulator [rows, NSEG_P] (NSEG_P: the segment count rounded up to a power of two) holds every segment's
    # running sum of e^(s - m); the store writes the NSEG real columns.
    @triton.jit
    def _mass_add_uniform(g, seg, wrs, NSEG_P: tl.constexpr):
        """A key block that lies in one segment ``seg``: its row sums ``wrs [R]`` go to that column."""
        cols = tl.arange(0, NSEG_P)
        return g + tl.where(cols[None, :] == seg, wrs[:, None], 0.0)

    @triton.jit
    def _mass_add_mixed(g, p, seg_row, lo, hi, w, NSEG: tl.constexpr, NSEG_P: tl.constexpr):
        """A key block with several segments (codes ``seg_row [1, BLOCK_S]`` between ``lo`` and ``hi``): masked row
        sums of ``p`` for the segments present only, times ``w``."""
        cols = tl.arange(0, NSEG_P)
        for gi in tl.static_range(NSEG):
            if (lo <= gi) & (hi >= gi):
                part = w * tl.sum(tl.where(seg_row == gi, p, 0.0), axis=1)
                g = g + tl.where(cols[None, :] == gi, part[:, None], 0.0)
        return g

    @triton.jit
    def _store_stats(
        ent_ptr, mass_ptr, arg_ptr, entl_ptr, argl_ptr, o, t_ok, ent, g, inv_l, am, ent_l, aml,
        NSEG: tl.constexpr, NSEG_P: tl.constexpr,
    ):  # fmt: skip
        """The epilogue of both kernels: the five statistics of rows ``o`` (masked by ``t_ok``), the masses as
        ``mass[o, :NSEG] = g / l``."""
        tl.store(ent_ptr + o, ent, mask=t_ok)
        tl.store(arg_ptr + o, am, mask=t_ok)
        tl.store(entl_ptr + o, ent_l, mask=t_ok)
        tl.store(argl_ptr + o, aml, mask=t_ok)
        cols = tl.arange(0, NSEG_P)
        tl.store(
            mass_ptr + o[:, None] * NSEG + cols[None, :],
            g * inv_l[:, None],
            mask=t_ok[:, None] & (cols[None, :] < NSEG),
        )

    # ----------------------------------------------------------------------------------------------- the kernel
    @triton.jit
    def _ex(x, EXP2: tl.constexpr):
        """``2^x`` (exp2) or ``e^x``."""
        if EXP2:
            return tl.exp2(x)
        else:
            return tl.exp(x)

    @triton.jit
    def _u(v, c, EXP2: tl.constexpr):
        """Logit units -> exponent units: ``v · c`` for the raw dot (exp2, ``c = scale · log2 e``), else ``v``."""
        if EXP2:
            return v * c
        else:
            return v

    @triton.jit
    def _max_arg(x, BLOCK_S: tl.constexpr, ARGMAX: tl.constexpr):
        """Row maximum of ``x [R, BLOCK_S]`` and its first column (int32)."""
        if ARGMAX == 1:
            v, i = tl.max(x, axis=1, return_indices=True, return_indices_tie_break_left=True)
        elif ARGMAX == 2:
            v = tl.max(x, axis=1)
            cols = tl.arange(0, BLOCK_S)[None, :]
            i = tl.min(tl.where(x == v[:, None], cols, BLOCK_S), axis=1)
            i = tl.minimum(i, BLOCK_S - 1)  # a NaN row matches nowhere: keep the index in range
        else:
            v = tl.max(x, axis=1)
            i = tl.argmax(x, axis=1)
        return v, i.to(tl.int32)

    @triton.jit
    def _lyric_masked(
        s, s0, lidp, c, ml, ll, psl, aml,
        BLOCK_S: tl.constexpr, EXP2: tl.constexpr, LYR: tl.constexpr, ARGMAX: tl.constexpr,
    ):  # fmt: skip
        """Lyric-only softmax state over the L keys of a block that also holds other keys (or padding)."""
        lid = tl.load(lidp + tl.arange(0, BLOCK_S))  # lyric index at each position, -1 outside L and for padding
        in_l = lid[None, :] >= 0
        sl = tl.where(in_l, s, float("-inf"))
        bmax_l, bpos_l = _max_arg(sl, BLOCK_S, ARGMAX)
        if LYR == 0:  # lyric index of the block maximum, by a masked sum
            bidx = tl.sum(tl.where(tl.arange(0, BLOCK_S)[None, :] == bpos_l[:, None], lid[None, :], 0), axis=1)
        else:  # its position; mapped to the lyric index at the end
            bidx = bpos_l + s0
        aml = tl.where(bmax_l > ml, bidx, aml)
        ml_new = tl.maximum(ml, bmax_l)
        xl = _u(s, c, EXP2) - _u(ml_new, c, EXP2)[:, None]
        pl = tl.where(in_l, _ex(xl, EXP2), 0.0)
        alpha_l = _ex(_u(ml - ml_new, c, EXP2), EXP2)
        shift_l = _u(tl.where(ll > 0, ml_new - ml, 0.0), c, EXP2) * ll
        ll = alpha_l * ll + tl.sum(pl, axis=1)
        psl = alpha_l * (psl - shift_l) + tl.sum(pl * xl, axis=1)
        return ml_new, ll, psl, aml

    @triton.jit
    def _v2_step(
        r, s0, valid, ordp, segp, lidp, d, scale, c,
        m, lsum, ps, am, g, ml, ll, psl, aml,
        BLOCK_S: tl.constexpr, MASK: tl.constexpr, EXP2: tl.constexpr, LYR: tl.constexpr,
        ORDER: tl.constexpr, ARGMAX: tl.constexpr, NSEG: tl.constexpr, NSEG_P: tl.constexpr,
    ):  # fmt: skip
        """Fold one key block (raw dot ``r [R, BLOCK_S]``) into the running state of every row."""
        if EXP2:
            s = r  # raw units: maxima commute with the positive scale; exponents use c = scale · log2 e
        else:
            s = r * scale
        if MASK:
            sm = tl.where(valid[None, :], s, float("-inf"))
        else:
            sm = s
        bmax, bpos = _max_arg(sm, BLOCK_S, ARGMAX)
        if ORDER:  # am is a position; an exact tie with an earlier block goes to the smaller packed index
            tie = bmax == m
            pk_new = tl.load(ordp + bpos, mask=tie, other=0)
            pk_old = tl.load(ordp - s0 + am, mask=tie, other=0)
            am = tl.where((bmax > m) | (tie & (pk_new < pk_old)), bpos + s0, am)
        else:
            am = tl.where(bmax > m, bpos + s0, am)
        m_new = tl.maximum(m, bmax)
        lall = (d & 2) != 0
        lany = (d & 4) != 0
        if LYR == 2:  # all-lyric blocks: exponents relative to the lyric maximum serve both softmaxes
            ml_up = tl.maximum(ml, bmax)
            mb = tl.where(lall, ml_up, m_new)
        else:
            mb = m_new
        x = _u(s, c, EXP2) - _u(mb, c, EXP2)[:, None]
        p = _ex(x, EXP2)
        if MASK:
            p = tl.where(valid[None, :], p, 0.0)
        rs = tl.sum(p, axis=1)
        rx = tl.sum(p * x, axis=1)
        alpha = _ex(_u(m - m_new, c, EXP2), EXP2)
        shift = _u(tl.where(lsum > 0, m_new - m, 0.0), c, EXP2) * lsum  # 0 before the first key (m = -inf)
        if LYR == 2:
            w = _ex(_u(mb - m_new, c, EXP2), EXP2)  # 1 unless the block is all-lyric
            lsum = alpha * lsum + w * rs
            ps = alpha * (ps - shift) + w * (rx - _u(m_new - mb, c, EXP2) * rs)
        else:
            w = 1.0
            lsum = alpha * lsum + rs
            ps = alpha * (ps - shift) + rx
        g = g * alpha[:, None]
        seg_lo = ((d >> 4) & 31) - 1  # (key_plan's descriptor)
        seg_hi = ((d >> 9) & 31) - 1
        if seg_lo == seg_hi:
            g = _mass_add_uniform(g, seg_lo, w * rs, NSEG_P)
        else:  # masked sums for the segments present only
            seg = tl.load(segp + tl.arange(0, BLOCK_S))[None, :]
            g = _mass_add_mixed(g, p, seg, seg_lo, seg_hi, w, NSEG, NSEG_P)
        if LYR == 2:
            if lall:
                aml = tl.where(bmax > ml, bpos + s0, aml)
                alpha_l = _ex(_u(ml - ml_up, c, EXP2), EXP2)
                shift_l = _u(tl.where(ll > 0, ml_up - ml, 0.0), c, EXP2) * ll
                ll = alpha_l * ll + rs
                psl = alpha_l * (psl - shift_l) + rx
                ml = ml_up
            elif not ORDER:  # lyric-first order never mixes lyric keys with others in one block
                if lany:
                    ml, ll, psl, aml = _lyric_masked(s, s0, lidp, c, ml, ll, psl, aml, BLOCK_S, EXP2, LYR, ARGMAX)
        else:
            if lany:
                ml, ll, psl, aml = _lyric_masked(s, s0, lidp, c, ml, ll, psl, aml, BLOCK_S, EXP2, LYR, ARGMAX)
        return m_new, lsum, ps, am, g, ml, ll, psl, aml

    @triton.jit
    def _v2_block(
        q, kp, sks, ordr, segr, lidr, descr, blk, S, scale, c,
        m, lsum, ps, am, g, ml, ll, psl, aml,
        D: tl.constexpr, BLOCK_S: tl.constexpr, MASK: tl.constexpr, IEEE: tl.constexpr, EXP2: tl.constexpr,
        LYR: tl.constexpr, ORDER: tl.constexpr, ARGMAX: tl.constexpr, NSEG: tl.constexpr, NSEG_P: tl.constexpr,
    ):  # fmt: skip
        """Load key block ``blk`` (its keys through the plan's order), take the logits, fold them in."""
        s0 = blk * BLOCK_S
        offs_s = s0 + tl.arange(0, BLOCK_S)
        d = tl.load(descr + blk)
        pk = tl.load(ordr + offs_s)  # keys through the plan's order (masked keys and padding: -1)
        valid = pk >= 0
        krow = tl.maximum(pk, 0)
        k = tl.load(kp + krow[:, None] * sks + tl.arange(0, D)[None, :])  # padding reads a valid key: masked
        if IEEE:
            r = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            r = tl.dot(q, tl.trans(k))
        return _v2_step(
            r, s0, valid, ordr + s0, segr + s0, lidr + s0, d, scale, c,
            m, lsum, ps, am, g, ml, ll, psl, aml,
            BLOCK_S, MASK, EXP2, LYR, ORDER, ARGMAX, NSEG, NSEG_P,
        )  # fmt: skip

    # q [B, T, H, D], k [B, S, KVH, D] (times L layers); plan tensors order/seg/lid [B, S_pad], desc [B, NB], nblk
    # [B, 2]; program (frame block, batch item · head group, layer) takes the G selected heads tab[gi*G : gi*G+G]
    # (positions into heads), its rows stacked head after head.
    @triton.jit(do_not_specialize=["out_off", "B", "T", "S", "S_pad", "NB", "H", "KVH", "n_sel", "n_prog", "group"])
    def _stats_kernel(
        q_ptr, k_ptr, qoff_ptr, koff_ptr, ord_ptr, seg_ptr, lid_ptr, desc_ptr, nblk_ptr, nlyr_ptr, heads_ptr, tab_ptr,
        invlog_ptr, ent_ptr, mass_ptr, arg_ptr, entl_ptr, argl_ptr,
        out_off, B, T, S, S_pad, NB, H, KVH, n_sel, n_prog, group, scale, c,
        D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, G: tl.constexpr, IEEE: tl.constexpr,
        EXP2: tl.constexpr, LYR: tl.constexpr, ORDER: tl.constexpr, ARGMAX: tl.constexpr, LAYERS: tl.constexpr,
        NSEG: tl.constexpr, NSEG_P: tl.constexpr,
    ):  # fmt: skip
        pid_t = tl.program_id(0)
        pid_bh = tl.program_id(1)
        pid_l = tl.program_id(2)
        if LAYERS:  # layer l's q and k in place: offsets in units of 16 elements (layer_table)
            q_ptr += tl.load(qoff_ptr + pid_l) * 16
            k_ptr += tl.load(koff_ptr + pid_l) * 16
        else:  # stacked layers
            q_ptr += pid_l.to(tl.int64) * B * T * H * D
            k_ptr += pid_l.to(tl.int64) * B * S * KVH * D
        out_off += pid_l * B * n_sel * T
        b = pid_bh // n_prog
        gi = pid_bh % n_prog
        rows = tl.arange(0, G * BLOCK_T)  # row i: head tab[gi*G + i // BLOCK_T], frame pid_t*BLOCK_T + i % BLOCK_T
        hs = tl.load(tab_ptr + gi * G + rows // BLOCK_T)
        h = tl.load(heads_ptr + hs)
        kvh = tl.load(heads_ptr + tl.load(tab_ptr + gi * G)) // group
        sqt = H * D
        sks = KVH * D
        offs_t = pid_t * BLOCK_T + rows % BLOCK_T
        offs_d = tl.arange(0, D)
        t_ok = offs_t < T
        q = tl.load(
            q_ptr + b * T * sqt + offs_t[:, None] * sqt + h[:, None] * D + offs_d[None, :],
            mask=t_ok[:, None],
            other=0.0,
        )
        kp = k_ptr + b * S * sks + kvh * D
        ordr = ord_ptr + b * S_pad
        segr = seg_ptr + b * S_pad
        lidr = lid_ptr + b * S_pad
        descr = desc_ptr + b * NB
        m = tl.full([G * BLOCK_T], float("-inf"), tl.float32)
        lsum = tl.zeros([G * BLOCK_T], tl.float32)
        ps = tl.zeros([G * BLOCK_T], tl.float32)
        am = tl.zeros([G * BLOCK_T], tl.int32)
        g = tl.zeros([G * BLOCK_T, NSEG_P], tl.float32)
        ml = tl.full([G * BLOCK_T], float("-inf"), tl.float32)
        ll = tl.zeros([G * BLOCK_T], tl.float32)
        psl = tl.zeros([G * BLOCK_T], tl.float32)
        aml = tl.full([G * BLOCK_T], -1, tl.int32)
        # full blocks first (no masks), then the partial ones (at most two: the lyric run's and the last one)
        n_full = tl.load(nblk_ptr + 2 * b)
        n_all = tl.load(nblk_ptr + 2 * b + 1)
        for blk in range(0, n_full):
            m, lsum, ps, am, g, ml, ll, psl, aml = _v2_block(
                q, kp, sks, ordr, segr, lidr, descr, blk, S, scale, c,
                m, lsum, ps, am, g, ml, ll, psl, aml,
                D, BLOCK_S, False, IEEE, EXP2, LYR, ORDER, ARGMAX, NSEG, NSEG_P,
            )  # fmt: skip
        for blk in range(n_full, n_all):
            m, lsum, ps, am, g, ml, ll, psl, aml = _v2_block(
                q, kp, sks, ordr, segr, lidr, descr, blk, S, scale, c,
                m, lsum, ps, am, g, ml, ll, psl, aml,
                D, BLOCK_S, True, IEEE, EXP2, LYR, ORDER, ARGMAX, NSEG, NSEG_P,
            )  # fmt: skip
        n_l = tl.load(nlyr_ptr + b)
        inv_l = 1.0 / lsum
        inv_log_s = tl.load(invlog_ptr + b)
        if EXP2:
            ent = (tl.log(lsum) - 0.6931471805599453 * ps * inv_l) * inv_log_s
        else:
            ent = (tl.log(lsum) - ps * inv_l) * inv_log_s
        has_l = ll > 0
        ll_safe = tl.where(has_l, ll, 1.0)
        if EXP2:
            ent_l = tl.log(ll_safe) - 0.6931471805599453 * psl / ll_safe
        else:
            ent_l = tl.log(ll_safe) - psl / ll_safe
        log_n = tl.log(tl.maximum(n_l, 2).to(tl.float32))
        ent_l = tl.where(n_l > 1, ent_l / log_n, 0.0)
        am = tl.load(ordr + am)  # position of the maximum -> packed index
        if LYR != 0:  # position of the lyric maximum -> lyric index
            aml = tl.load(lidr + aml, mask=aml >= 0, other=-1)
        aml = tl.where(n_l > 0, aml, -1)
        o = out_off + (b * n_sel + hs) * T + offs_t
        _store_stats(ent_ptr, mass_ptr, arg_ptr, entl_ptr, argl_ptr, o, t_ok, ent, g, inv_l, am, ent_l, aml,
                     NSEG, NSEG_P)  # fmt: skip


def _launch_plan(
    seg_codes: torch.Tensor,
    lyric_index: torch.Tensor,
    heads: torch.Tensor,
    group: int,
    cfg: FusedConfig,
    heads_list: list[int] | None = None,
) -> tuple[KeyPlan, torch.Tensor, int, torch.Tensor]:
    """Key plan, head table, G and the entropy normalizers (:func:`inv_log_keys`) of a launch, built once per
    (layout tensors, heads tensor, config). ``heads_list``: the same heads on the host, when the caller has them
    (else ``heads`` is read back once, a synchronization on CUDA)."""

    def build() -> tuple[KeyPlan, torch.Tensor, int, torch.Tensor]:
        plan = key_plan(seg_codes, lyric_index, cfg.block_s, cfg.order)
        hl = [int(h) for h in (heads_list if heads_list is not None else heads.tolist())]
        tab, G = head_table(hl, group, cfg.gqa)
        return plan, upload(torch.tensor(tab, dtype=torch.int32), heads.device), G, inv_log_keys(seg_codes)

    extra = (tuple(seg_codes.shape), heads.numel(), group, cfg.block_s, cfg.order, cfg.gqa)
    return _cached((seg_codes, lyric_index, heads), extra, build)


def reduce_fused(
    q: torch.Tensor | list[torch.Tensor],
    k: torch.Tensor | list[torch.Tensor],
    scale: float,
    heads: torch.Tensor,
    group: int,
    seg_codes: torch.Tensor,
    lyric_index: torch.Tensor,
    n_lyric: torch.Tensor,
    out: dict[str, torch.Tensor] | None = None,
    slot: int = 0,
    block_t: int | None = None,
    block_s: int | None = None,
    num_warps: int | None = None,
    config: FusedConfig | None = None,
    heads_list: list[int] | None = None,
    tables: TableArena | None = None,
    *,
    n_seg: int,
) -> dict[str, torch.Tensor]:
    """Per-frame statistics with the fused kernel.

    q: ``[B, T, H, D]`` (all heads; ``heads`` selects, int32 ``[h]``), k: ``[B, S, KVH, D]``, seg_codes and
    lyric_index: int32 ``[B, S]`` (segment code of each key in ``0 .. n_seg - 1``, -1: in the softmax but in no
    segment, ``MASKED_CODE`` = -2: masked out of the softmax, with lyric index -1), n_lyric: int32 ``[B]``;
    ``n_seg``: the layout's number of segments (1 to :data:`MAX_SEG`). Several layers in one launch: lists of L
    query and L key tensors of one shape (read in place through a
    :func:`~attnlens.reducers.layer_table.layer_table`), or stacked q ``[L, B, T, H, D]`` and k ``[L, B, S, KVH,
    D]``, written to slots ``slot .. slot + L - 1``. Results go to ``out[name][slot]`` when ``out`` holds contiguous
    buffers ``[n, B, h, T(, n_seg)]`` (a whole step's layers, :func:`new_outputs`), else to new tensors ``[B, h,
    T(, n_seg)]``. Returns the dict of output tensors.

    ``config``: a :class:`FusedConfig`; without it, :data:`DEFAULT_CONFIG` (with ``block_t``, ``block_s``,
    ``num_warps`` when any is given). The kernel needs ``scale > 0`` (it folds the scale into its exponent): any
    other scale is a ``ValueError``; :func:`~attnlens.reducers.stats.reduce_reference` takes any scale.
    ``heads_list``: ``heads`` as a host list, when the caller has it: the launch plan then needs no read-back from
    the device. ``tables``: where the layers' offset tables go (a :class:`~attnlens.devices.TableArena` allocates
    nothing per launch); without it, a small upload per launch.
    """
    if config is None:
        sizes = {"block_t": block_t, "block_s": block_s, "num_warps": num_warps}
        config = replace(DEFAULT_CONFIG, **{k: v for k, v in sizes.items() if v is not None})
    launcher = StatsLauncher(
        scale, heads, group, seg_codes, lyric_index, n_lyric, config, heads_list, tables, n_seg=n_seg
    )
    return launcher(q, k, out, slot)


def _check_lists(q: list | tuple, k: list | tuple) -> None:
    if len(q) != len(k) or not q:
        raise ValueError(f"need one key tensor per query tensor; got {len(q)} and {len(k)}")


def inv_log_keys(seg_codes: torch.Tensor) -> torch.Tensor:
    """``1 / log n`` per batch item ``[B]`` (fp32), ``n`` its keys in the softmax (codes other than ``MASKED_CODE``);
    0 when ``n <= 1``: entropy's normalizer. A device operation (no synchronization)."""
    n = (seg_codes != MASKED_CODE).sum(1).to(torch.float64)
    return torch.where(n > 1, 1.0 / torch.log(n.clamp(min=2)), 0.0).to(torch.float32)


def _launch_options(cfg: FusedConfig) -> dict[str, int]:
    launch = {"num_warps": cfg.num_warps}
    if cfg.num_stages is not None:
        launch["num_stages"] = cfg.num_stages
    if cfg.maxnreg is not None:
        launch["maxnreg"] = cfg.maxnreg
    return launch


def new_outputs(
    dev: torch.device, lead: tuple[int, ...], B: int, h: int, T: int, n_seg: int
) -> dict[str, torch.Tensor]:
    """The five output buffers of the statistics kernel, ``[*lead, B, h, T]`` (``mass``: ``[*lead, B, h, T,
    n_seg]``), as views of one allocation: each view starts 16-byte aligned, ``argmax`` and ``lyric_argmax`` are
    int32 views of fp32 places (a capture moves and frees a step's statistics as one block)."""
    n = math.prod(lead) * B * h * T
    widths = {"entropy": 1, "mass": n_seg, "argmax": 1, "entropy_lyric": 1, "lyric_argmax": 1}
    sizes = {name: -(-n * w // 4) * 4 for name, w in widths.items()}  # whole 16-byte units
    flat = torch.empty(sum(sizes.values()), device=dev, dtype=torch.float32)
    out, at = {}, 0
    for name, w in widths.items():
        part = flat[at : at + n * w]
        if name in ("argmax", "lyric_argmax"):
            part = part.view(torch.int32)
        out[name] = part.view(*lead, B, h, T, *((w,) if name == "mass" else ()))
        at += sizes[name]
    return out


class StatsLauncher:
    """The v2 statistics kernel for one layout, head selection, scale and configuration, resolved once: the launch
    plan, the head table and the constant arguments. A call then costs the host only the layers' offset tables and
    the launch (a capture launches once per run of stashed layers, in a loop bound by the host).

    The arguments are :func:`reduce_fused`'s (``n_seg`` required, 1 to :data:`MAX_SEG`; ``scale <= 0`` is a
    ``ValueError``). ``launcher(q, k, out=None, slot=0)`` takes what :func:`reduce_fused` takes (one layer, stacked
    layers or lists) and returns the dict of outputs.
    """

    def __init__(
        self,
        scale: float,
        heads: torch.Tensor,
        group: int,
        seg_codes: torch.Tensor,
        lyric_index: torch.Tensor,
        n_lyric: torch.Tensor,
        cfg: FusedConfig | None = None,
        heads_list: list[int] | None = None,
        tables: TableArena | None = None,
        *,
        n_seg: int,
    ):
        if not 1 <= n_seg <= MAX_SEG:
            raise ValueError(f"n_seg must be between 1 and {MAX_SEG}; got {n_seg}")
        self.n_seg = n_seg
        cfg = cfg or DEFAULT_CONFIG
        if not scale > 0:
            raise ValueError(
                f"the statistics kernel needs an attention scale > 0; got {scale} (use the reference path)"
            )
        plan, tab, G, inv_log = _launch_plan(seg_codes, lyric_index, heads, group, cfg, heads_list)
        self.tables = tables
        self.h = heads.numel()
        self.n_prog = self.h // G
        self.block_t = cfg.block_t
        # pointer arguments after q, k and the two offset tables; then the outputs
        self._plan_args = (
            plan.order, plan.seg, plan.lid, plan.desc, plan.nblk, n_lyric, heads, tab, inv_log
        )  # fmt: skip
        self._shape_args = (plan.order.shape[1], plan.desc.shape[1])  # s_pad, nb
        self._group, self._scale = group, float(scale)
        self._scale2 = float(scale) * math.log2(math.e)
        self._flags = dict(
            BLOCK_T=cfg.block_t, BLOCK_S=cfg.block_s, G=G, EXP2=cfg.exp2, LYR=_LYRIC_CODE[cfg.lyric],
            ORDER=cfg.order, ARGMAX=_ARGMAX_CODE[cfg.argmax], NSEG=self.n_seg,
            NSEG_P=triton.next_power_of_2(self.n_seg), **_launch_options(cfg),
        )  # fmt: skip

    def __call__(
        self,
        q: torch.Tensor | list[torch.Tensor],
        k: torch.Tensor | list[torch.Tensor],
        out: dict[str, torch.Tensor] | None = None,
        slot: int = 0,
    ) -> dict[str, torch.Tensor]:
        qoff = koff = None
        if isinstance(q, (list, tuple)):  # one launch over several layers' tensors, read in place
            _check_lists(q, k)
            n_layers = len(q)
            # the kernel reads every layer dense: a dense first layer is enough, since the tables accept only
            # layers with its shape and strides (any other is copied into a dense block). `qs` and `ks` keep the
            # layers alive until the launch (the tables point into them).
            qs, ks = q, k
            if not (q[0].is_contiguous() and k[0].is_contiguous()):
                qs, ks = [x.contiguous() for x in q], [x.contiguous() for x in k]
            (q, k), (qoff, koff) = layer_tables([qs, ks], self.tables)
        else:
            n_layers = q.shape[0] if q.ndim == 5 else 1
            q, k = q.contiguous(), k.contiguous()
        B, T, H, D = q.shape[-4:]
        S, KVH = k.shape[-3], k.shape[-2]
        h = self.h
        if out is None:
            lead = (n_layers,) if n_layers > 1 or q.ndim == 5 else ()
            out, slot = new_outputs(q.device, lead, B, h, T, self.n_seg), 0
        elif out["mass"].shape[-1] != self.n_seg:
            raise ValueError(f"the mass buffer holds {out['mass'].shape[-1]} segments; this launcher {self.n_seg}")
        grid = ((T + self.block_t - 1) // self.block_t, B * self.n_prog, n_layers)
        _stats_kernel[grid](
            q, k, q if qoff is None else qoff, k if koff is None else koff, *self._plan_args,
            out["entropy"], out["mass"], out["argmax"], out["entropy_lyric"], out["lyric_argmax"],
            slot * B * h * T, B, T, S, *self._shape_args, H, KVH, h, self.n_prog, self._group,
            self._scale, self._scale2,
            D=D, IEEE=q.dtype == torch.float32, LAYERS=qoff is not None, **self._flags,
        )  # fmt: skip
        return out
