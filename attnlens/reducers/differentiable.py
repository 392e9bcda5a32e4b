"""Differentiable attention entropy for training losses, without storing the attention map.

For one (batch item, query head, frame) with logits ``s_j = scale · q · k_j`` over a key set ``K`` (all packed
keys, or the sung lyric tokens ``L``) and ``p = softmax(s)`` over ``K``::

    H        = -Σ_j p_j log p_j = logsumexp(s) - Σ_j p_j s_j
    H_norm   = H / log |K|                                   (in [0, 1])
    ∂H/∂s_j  = -p_j (s_j - Σ_i p_i s_i)

:class:`_EntropyFn` evaluates ``H`` with the identity above and its gradient with the closed form, chunk by
chunk over frames, recomputing ``s`` and ``p`` in the backward pass: only ``q`` and ``k`` are saved (the same
tensors the model's attention already keeps), never ``P``. Products ``q·k`` run in the inputs' dtype (bf16/fp16
with fp32 accumulation, as the attention kernel; fp32; fp64), softmax and entropy in fp32 (fp64 for fp64).

Grouped-query attention: query head ``h`` reads KV head ``h // (H / KVH)``; keys are never expanded.

Two implementations of the same function (``impl`` of :func:`attention_entropy`):

- ``"fused"``: :mod:`attnlens.reducers.fused_entropy`, one Triton kernel for the forward (online softmax over key
  blocks, keeping ``m``, ``Σ e^{s-m}``, ``Σ e^{s-m} (s-m)``) and two for the backward (``dq`` per frame block,
  ``dk`` per key block over the group's heads; no atomics). Saved: ``q``, ``k``, the key mask and per frame
  ``lse`` and ``mean_s = Σ_j p_j s_j`` (fp32 ``[B, H, T]``), never ``P``; the backward recomputes
  ``p_j = e^{s_j - lse}`` and ``∂L/∂s_j = -g p_j (s_j - mean_s)``.
- ``"recompute"``: :class:`_EntropyFn`, chunked PyTorch matmuls (below); also the fp64 path.

``"auto"`` (the default) takes ``"fused"`` for CUDA tensors when Triton is importable, the dtype is
bf16/fp16/fp32 and ``head_dim`` is a power of 2 in [16, 256], else ``"recompute"``.

:class:`EntropyTap` hooks ``cross_attn.norm_q`` / ``norm_k`` of the selected layers through the model adapter,
so the penalty sees exactly the query and key the attention kernel sees, and hands back one mean normalized
entropy per layer, with gradient.

The differentiable entropy's implementations (fused kernels, chunked recompute, naive) and the tap that feeds them
stay together: they share one key plan, one set of input checks and one choice of implementation; hence over 400
lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from ..devices import upload
from ..families import resolve as adapter_for
from ..taps.hooks import HookScope, HookSet
from ..taps.query_key import tap_query_key
from .fused_entropy import fused_attention_entropy, fused_attention_entropy_layers, fused_entropy_supported

KeysMode = Literal["all", "lyrics"]
EntropyImpl = Literal["auto", "fused", "recompute"]
IMPLS = ("auto", "fused", "recompute")

DEFAULT_CHUNK_BYTES = 256 << 20


def _chunk_frames(B: int, H: int, S: int, T: int, itemsize: int, budget: int) -> int:
    per_frame = max(1, B * H * S * itemsize * 4)  # logits, p, p*s, grad temporaries
    return max(1, min(T, budget // per_frame))


def _dtypes(x: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(matmul dtype, softmax dtype): bf16/fp16 inputs multiply in their own dtype (fp32 accumulation, as the
    attention kernel does) and take the softmax in fp32; fp32 stays fp32, fp64 stays fp64."""
    if x.dtype in (torch.bfloat16, torch.float16):
        return x.dtype, torch.float32
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    return work, work


def _logits(qc: torch.Tensor, k: torch.Tensor, scale: float, kmask: torch.Tensor | None, work) -> torch.Tensor:
    """qc ``[B, KVH, G, c, D]``, k ``[B, KVH, S, D]`` -> masked logits ``[B, KVH, G, c, S]`` in ``work``."""
    s = torch.matmul(qc, k.transpose(-1, -2)[:, :, None]).to(work) * scale
    if kmask is not None:
        s = s.masked_fill(~kmask[:, None, None, None, :], float("-inf"))
    return s


def _entropy_of_logits(s: torch.Tensor, masked: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(H, p, s_zeroed)`` for logits ``s`` (``-inf`` = key left out); ``H = lse - Σ p s``."""
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    p = torch.exp(s - lse)
    s0 = torch.where(torch.isfinite(s), s, torch.zeros_like(s)) if masked else s  # p = 0 there; avoid 0 · -inf
    h = lse.squeeze(-1) - (p * s0).sum(-1)
    return h, p, s0


class _EntropyFn(torch.autograd.Function):
    """Per-frame entropy ``[B, H, T]`` of ``softmax(scale · q kᵀ)`` with recomputation in backward."""

    @staticmethod
    def forward(ctx, q, k, kmask, scale, kv_heads, chunk):  # q [B,T,H,D], k [B,S,KVH,D], kmask [B,S] | None
        B, T, H, D = q.shape
        G = H // kv_heads
        mm, work = _dtypes(q)
        with torch.autocast(q.device.type, enabled=False):
            qg = q.to(mm).permute(0, 2, 1, 3).reshape(B, kv_heads, G, T, D)
            kg = k.to(mm).permute(0, 2, 1, 3)  # [B, KVH, S, D]
            out = torch.empty(B, kv_heads, G, T, dtype=work, device=q.device)
            for t0 in range(0, T, chunk):
                s = _logits(qg[:, :, :, t0 : t0 + chunk], kg, scale, kmask, work)
                out[..., t0 : t0 + chunk] = _entropy_of_logits(s, kmask is not None)[0]
        ctx.save_for_backward(q, k, kmask if kmask is not None else torch.empty(0))
        ctx.has_mask = kmask is not None
        ctx.scale, ctx.kv_heads, ctx.chunk = scale, kv_heads, chunk
        return out.reshape(B, H, T)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out [B, H, T]
        q, k, kmask = ctx.saved_tensors
        kmask = kmask if ctx.has_mask else None
        B, T, H, D = q.shape
        n, chunk, scale = ctx.kv_heads, ctx.chunk, ctx.scale
        G = H // n
        mm, work = _dtypes(q)
        with torch.autocast(q.device.type, enabled=False):
            qg = q.to(mm).permute(0, 2, 1, 3).reshape(B, n, G, T, D)
            kg = k.to(mm).permute(0, 2, 1, 3)
            go = grad_out.to(work).reshape(B, n, G, T)
            gq = torch.zeros(qg.shape, dtype=work, device=q.device) if ctx.needs_input_grad[0] else None
            gk = torch.zeros(kg.shape, dtype=work, device=q.device) if ctx.needs_input_grad[1] else None
            for t0 in range(0, T, chunk):
                qc = qg[:, :, :, t0 : t0 + chunk]
                s = _logits(qc, kg, scale, kmask, work)
                _, p, s0 = _entropy_of_logits(s, kmask is not None)
                mean_s = (p * s0).sum(-1, keepdim=True)
                gs = (-p * (s0 - mean_s) * go[..., t0 : t0 + chunk, None]).to(mm)  # dL/ds [B, n, G, c, S]
                if gq is not None:
                    gq[:, :, :, t0 : t0 + chunk] = torch.matmul(gs, kg[:, :, None]).to(work) * scale
                if gk is not None:
                    gk += torch.matmul(gs.transpose(-1, -2), qc).sum(2).to(work) * scale
        if gq is not None:
            gq = gq.reshape(B, H, T, D).permute(0, 2, 1, 3).to(q.dtype)
        if gk is not None:
            gk = gk.permute(0, 2, 1, 3).to(k.dtype)
        return gq, gk, None, None, None, None


def resolve_impl(q: torch.Tensor, impl: str = "auto") -> str:
    """The implementation :func:`attention_entropy` runs for queries ``q``: ``"fused"`` or ``"recompute"``.

    ``"auto"`` gives ``"fused"`` for CUDA queries the Triton kernels support (bf16/fp16/fp32, power-of-2
    ``head_dim`` in [16, 256]), else ``"recompute"``; ``"fused"`` and ``"recompute"`` are taken as asked.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    if impl == "auto":
        return "fused" if q.is_cuda and fused_entropy_supported(q) else "recompute"
    return impl


def _check_qk(q: torch.Tensor, k: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"expected q [B, T, H, D] and k [B, S, KVH, D]; got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, D = q.shape
    if k.shape[0] != B or k.shape[3] != D or H % k.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not fit (batch, head_dim, GQA groups)")


KeyPlan = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]


def _key_plan(key_mask: torch.Tensor, B: int, S: int, device: Any) -> KeyPlan:
    """Validate a bool ``[B, S]`` key mask; returns ``(order, mask, n_keys, inv_log_n)`` on ``device``.

    ``order`` ``[B, n_max]`` puts every item's taken keys first (``None`` when some item takes all ``S``), ``mask``
    ``[B, n_max]`` marks the taken keys after that gather (``None`` when all are taken), ``n_keys`` ``[B]`` counts
    them and ``inv_log_n`` (float64 ``[B]``) is ``1 / log n_keys``, the normalization. The fused kernels read keys
    through ``order`` in place; the PyTorch path gathers them. The bookkeeping runs on the mask's own device: a CPU
    mask costs no GPU synchronization.
    """
    if key_mask.shape != (B, S) or key_mask.dtype != torch.bool:
        raise ValueError(f"key_mask must be bool [B, S] = [{B}, {S}]; got {key_mask.dtype} {tuple(key_mask.shape)}")
    n = key_mask.sum(dim=1)
    if bool((n < 2).any()):
        raise ValueError(
            f"entropy over a key set needs at least 2 keys per item; got {n.tolist()} keys (an item without "
            "sung lyric tokens cannot take a lyric-only entropy penalty)"
        )
    nmax = int(n.max())
    order = None
    if nmax < S:  # gather the taken keys: the work scales with |K|, not S
        order = key_mask.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :nmax]  # [B, nmax]
        key_mask = torch.gather(key_mask, 1, order)
        order = upload(order, device)
    mask = None if bool(key_mask.all()) else upload(key_mask, device)
    return order, mask, upload(n, device), upload(1.0 / torch.log(n.to(torch.float64)), device)


def _fused_args(plan: KeyPlan | None, S: int, normalize: bool) -> dict[str, Any]:
    """Key and normalization arguments of the fused kernels for a key plan (``None``: all ``S`` keys): the taken
    keys are read in place through the plan's order, and ``1 / log n`` is applied inside the kernels."""
    if plan is None:
        return {"weight_all": 1.0 / math.log(S)} if normalize else {}
    order, key_mask, _, inv_log_n = plan
    return {"key_mask": key_mask, "key_index": order, **({"weight": inv_log_n} if normalize else {})}


def _entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    plan: KeyPlan | None,
    normalize: bool,
    chunk_bytes: int,
    impl: str,
) -> torch.Tensor:
    """:func:`attention_entropy` after validation (``impl`` resolved: ``"fused"`` or ``"recompute"``)."""
    B, T, H, D = q.shape
    S = k.shape[1]
    if impl == "fused":
        return fused_attention_entropy(q, k, scale, **_fused_args(plan, S, normalize))
    order = key_mask = n_keys = None
    if plan is not None:
        order, key_mask, n_keys, _ = plan
    if order is not None:
        k = torch.gather(k, 1, order[:, :, None, None].expand(-1, -1, k.shape[2], k.shape[3]))
        S = order.shape[1]
    work_size = 8 if q.dtype == torch.float64 else 4  # softmax temporaries are fp32 (fp64 for fp64 inputs)
    chunk = _chunk_frames(B, H, S, T, work_size, chunk_bytes)
    h = _EntropyFn.apply(q, k, key_mask, float(scale), int(k.shape[2]), chunk)
    if not normalize:
        return h
    if n_keys is None:
        return h / math.log(S)
    return h / torch.log(n_keys.to(h.dtype))[:, None, None]


def attention_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    key_mask: torch.Tensor | None = None,
    normalize: bool = True,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    impl: EntropyImpl = "auto",
) -> torch.Tensor:
    """Per-frame entropy ``[B, H, T]`` of ``P = softmax(scale · q kᵀ)`` over the keys, differentiable.

    ``H = logsumexp(s) - Σ_j p_j s_j``; with ``normalize`` divided by ``log n`` where ``n`` is the number of keys
    taken (all ``S``, or ``key_mask.sum()`` per batch item). Gradient ``∂H/∂s_j = -p_j (s_j - Σ_i p_i s_i)`` by
    recomputation: ``P`` is never stored. fp32 result for bf16/fp16/fp32 inputs, fp64 for fp64.

    Args:
        q: post-norm queries ``[B, T, H, D]``.
        k: post-norm keys ``[B, S, KVH, D]`` (``H`` a multiple of ``KVH``; query head ``h`` reads ``h // (H/KVH)``).
        scale: the attention's logit scale (``1/sqrt(D)`` for ACE-Step).
        key_mask: optional bool ``[B, S]``: keys taken (the softmax is renormalized over them); every item needs
            at least 2 (entropy over fewer than 2 keys is undefined after normalization). A CPU mask spares the
            GPU synchronizations its bookkeeping needs.
        chunk_bytes: memory budget of one frame chunk of the ``"recompute"`` path.
        impl: ``"auto"`` (fused Triton kernels for supported CUDA inputs, else ``"recompute"``), ``"fused"``
            (:mod:`attnlens.reducers.fused_entropy`; CUDA or ``TRITON_INTERPRET=1``), ``"recompute"`` (chunked
            PyTorch).
    """
    _check_qk(q, k)
    impl = resolve_impl(q, impl)
    B, S = q.shape[0], k.shape[1]
    plan = None
    if key_mask is not None:
        plan = _key_plan(key_mask, B, S, q.device)
    elif S < 2:
        raise ValueError(f"entropy needs at least 2 keys; got S={S}")
    return _entropy(q, k, scale, plan, normalize, chunk_bytes, impl)


def attention_entropy_naive(
    q: torch.Tensor, k: torch.Tensor, scale: float, key_mask: torch.Tensor | None = None, normalize: bool = True
) -> torch.Tensor:
    """Reference: materializes ``P`` (autograd keeps it for backward). ``-Σ p log p`` over the taken keys."""
    B, T, H, D = q.shape
    G = H // k.shape[2]
    kx = k.repeat_interleave(G, dim=2)  # [B, S, H, D]
    s = torch.einsum("bthd,bshd->bhts", q, kx) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    logp = torch.log_softmax(s, dim=-1)
    p = logp.exp()
    if key_mask is not None:  # left-out keys: p = 0 and log p = -inf; take 0 · 0 there (finite gradients)
        logp = logp.masked_fill(~key_mask[:, None, None, :], 0.0)
    h = -(p * logp).sum(-1)
    if not normalize:
        return h
    n = torch.full((B,), s.shape[-1], device=q.device) if key_mask is None else key_mask.sum(1)
    return h / torch.log(n.to(h.dtype))[:, None, None]


def lyric_key_mask(lyric_positions: Sequence[Sequence[int]], n_keys: int, device: Any = None) -> torch.Tensor:
    """Bool ``[B, S]`` mask of the sung lyric keys from per-item packed positions (``ItemLayout.lyric_positions``)."""
    mask = torch.zeros(len(lyric_positions), n_keys, dtype=torch.bool, device=device)
    for b, pos in enumerate(lyric_positions):
        pos = [int(p) for p in pos]
        if pos and (min(pos) < 0 or max(pos) >= n_keys):
            raise ValueError(f"lyric positions of item {b} fall outside the {n_keys} keys: {pos[:3]}...")
        mask[b, pos] = True
    return mask


class EntropyTap(HookScope):
    """Collect per-layer mean normalized cross-attention entropy, with gradient, during a transformer forward.

    ::

        with EntropyTap(pipe.transformer, keys="lyrics", lyric_positions=pos) as tap:
            out = pipe.transformer(...)
        penalty = weight * tap.mean()          # mean over layers, heads, frames, batch

    Hooks sit on each selected layer's ``cross_attn.norm_q`` / ``norm_k`` (found through the adapter) and are
    all removed when the block ends. ``keys="lyrics"`` renormalizes over the sung lyric tokens of every batch item
    (``lyric_positions``: per item, packed key positions, e.g. ``layout[b].lyric_positions()``); ``keys="all"``
    takes every packed key (normalized by ``log S``). If the transformer recomputes layers (gradient
    checkpointing), only the first evaluation of a layer in a forward call is recorded.

    ``impl`` is passed to :func:`attention_entropy` (``"auto"``: the fused Triton kernels on CUDA, else the
    chunked PyTorch recomputation; ``"fused"``; ``"recompute"``); ``impl="naive"`` materializes the attention map
    instead (a reference for tests and benchmarks). ``impl_used`` tells what the last layer ran (``"fused"``,
    ``"recompute"`` or ``"naive"``). The lyric key mask is built and validated once per batch shape, on the CPU,
    so the hooks do not synchronize with the GPU.

    The hooks only check and keep each layer's query and key; the entropies are computed when :meth:`per_layer`
    or :meth:`mean` is first called after the forward, on the fused path for all layers at once (one launch per
    kernel: forward, ``dq``, ``dk``, reading every layer's tensors in place). Under gradient checkpointing this
    keeps every selected layer's post-norm query and key until the backward (for a 30 s clip of the full model
    about 3 MB per layer).
    """

    def __init__(
        self,
        model: Any,
        keys: KeysMode = "all",
        layers: Sequence[int] | None = None,
        lyric_positions: Sequence[Sequence[int]] | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        impl: Literal["auto", "fused", "recompute", "naive"] = "auto",
    ):
        if impl not in (*IMPLS, "naive"):
            raise ValueError(f"impl must be 'auto', 'fused', 'recompute' or 'naive'; got {impl!r}")
        self.impl = impl
        self.impl_used: str | None = None
        if keys not in ("all", "lyrics"):
            raise ValueError(f"keys must be 'all' or 'lyrics'; got {keys!r}")
        if keys == "lyrics" and lyric_positions is None:
            raise ValueError("keys='lyrics' needs lyric_positions (per batch item, the packed sung-token positions)")
        self.adapter = adapter_for(model)
        n = self.adapter.facts.n_layers
        self.layers = list(range(n)) if layers is None else [int(layer) % n for layer in layers]
        self.keys = keys
        self.lyric_positions = lyric_positions
        self.chunk_bytes = chunk_bytes
        super().__init__()
        self._qk: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (q, k) of this forward call
        self._pending_q: dict[int, torch.Tensor] = {}  # queries waiting for their keys (taps.query_key)
        self._impl: dict[int, str] = {}  # layer -> implementation resolved for it
        self._result: torch.Tensor | None = None  # per-layer means, computed on first request
        self._mask: torch.Tensor | None = None  # naive impl: lyric key mask [B, S] on the keys' device
        self._plan: KeyPlan | None = None  # otherwise: gather order, mask and key counts (see _key_plan)
        self._plan_for: tuple | None = None  # (B, S, device) the mask / plan were built for

    def _register(self, hooks: HookSet) -> None:
        hooks.forward_pre(self.adapter.transformer, self._on_call)
        for layer in self.layers:  # only the first evaluation of a layer in a forward call is kept
            wants = lambda layer=layer: layer not in self._qk  # noqa: E731
            tap_query_key(hooks, self.adapter, layer, self._on_pair, wants, self._pending_q)

    def _exited(self, exc_type) -> None:
        self._pending_q.clear()

    def _on_call(self, module, args):
        self._qk, self._impl, self._result = {}, {}, None
        self._pending_q.clear()

    def _on_pair(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> None:
        impl = "naive"
        if self.impl != "naive":  # same checks as attention_entropy, in the same order
            _check_qk(q, k)
            impl = resolve_impl(q, self.impl)
        if self.keys == "lyrics":
            self._prepare_lyric_keys(k)
        elif impl != "naive" and k.shape[1] < 2:
            raise ValueError(f"entropy needs at least 2 keys; got S={k.shape[1]}")
        self._qk[layer] = (q, k)  # computed when the values are asked for: all layers at once
        self._impl[layer] = impl
        self._result = None

    def _compute(self) -> torch.Tensor:
        """Mean normalized entropy per selected layer ``[layer]``: the fused kernels take every layer in one launch
        each (forward, dq, dk); the other implementations go layer by layer."""
        scale = self.adapter.facts.scale
        impls = {self._impl[layer] for layer in self.layers}
        qs = [self._qk[layer][0] for layer in self.layers]
        ks = [self._qk[layer][1] for layer in self.layers]
        one_shape = all(q.shape == qs[0].shape and q.dtype == qs[0].dtype for q in qs) and all(
            k.shape == ks[0].shape for k in ks
        )
        if impls == {"fused"} and one_shape:
            h = fused_attention_entropy_layers(qs, ks, scale, **_fused_args(self._plan, ks[0].shape[1], True))
            self.impl_used = "fused"
            return h.mean(dim=(1, 2, 3))  # [layer]
        means = []
        for layer, q, k in zip(self.layers, qs, ks):
            impl = self._impl[layer]
            if impl == "naive":  # reference: materializes P and keeps it for backward
                h = attention_entropy_naive(q, k, scale, key_mask=self._mask)
            else:  # attention_entropy with the lyric key plan built once
                h = _entropy(q, k, scale, self._plan, True, self.chunk_bytes, impl)
            self.impl_used = impl
            means.append(h.mean())
        return torch.stack(means)

    @property
    def values(self) -> dict[int, torch.Tensor]:
        """Mean normalized entropy of each selected layer seen so far (with gradient)."""
        if any(layer not in self._qk for layer in self.layers):
            return {}
        return dict(zip(self.layers, self.per_layer().unbind(0)))

    def _prepare_lyric_keys(self, k: torch.Tensor) -> None:
        """Build (once per batch shape and device) the lyric key mask or key plan for keys ``k [B, S, KVH, D]``."""
        B, S = k.shape[0], k.shape[1]
        if self._plan_for == (B, S, k.device):
            return
        if len(self.lyric_positions) != B:
            raise ValueError(f"lyric_positions describe {len(self.lyric_positions)} item(s) but the batch is {B}")
        mask = lyric_key_mask(self.lyric_positions, S)  # [B, S] on the CPU
        if self.impl == "naive":
            self._mask, self._plan = upload(mask, k.device), None
        else:
            self._mask, self._plan = None, _key_plan(mask, B, S, k.device)
        self._plan_for = (B, S, k.device)

    def per_layer(self) -> torch.Tensor:
        """Mean normalized entropy of every selected layer ``[layer]`` (with gradient)."""
        missing = [layer for layer in self.layers if layer not in self._qk]
        if missing:
            raise RuntimeError(f"no cross-attention seen for layer(s) {missing}: was the transformer called?")
        if self._result is None:
            self._result = self._compute()
        return self._result

    def mean(self) -> torch.Tensor:
        """Mean normalized entropy over layers, heads, frames and batch items (with gradient)."""
        return self.per_layer().mean()
