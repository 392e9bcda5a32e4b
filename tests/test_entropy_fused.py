"""The fused Triton entropy kernels (forward, dq, dk) equal the naive entropy of the materialized softmax.

Without CUDA, tests/conftest.py sets TRITON_INTERPRET=1 (before Triton is imported) and the kernels run in Triton's
CPU interpreter; with CUDA they run on the GPU. Reference: :func:`attention_entropy_naive` in fp64 on the same
(rounded) inputs. Errors measured in the CPU interpreter (B=2, T=37, H=4, KVH=2, D=16, S=45, |q|, |k| ~ N(0, 4),
scale 0.3, three seeds):

    fp32  values  <= 1.3e-6 (not normalized), gradients <= 4.3e-6 of max|grad|   (the recompute path: 2.2e-5, 2.4e-5)
    bf16  values  <= 5.6e-7,                  gradients <= 1.2e-2 of max|grad|   (recompute: 2.1e-2, 2.4e-2)
    fp16  values  <= 1.4e-6,                  gradients <= 5.7e-4 of max|grad|

bf16/fp16 gradient error comes from rounding ``∂L/∂s`` to the input dtype before the gradient products (as the
recompute path and flash-attention backward kernels do) and from rounding ``dq``/``dk`` to it.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (CUDA builds of torch bring it)")

import attnlens.captures  # noqa: E402,F401  (import order)
from attnlens.reducers.differentiable import (  # noqa: E402
    EntropyTap,
    attention_entropy,
    attention_entropy_naive,
    resolve_impl,
)
from attnlens.reducers.fused_entropy import (  # noqa: E402
    fused_attention_entropy,
    fused_attention_entropy_layers,
    fused_entropy_supported,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
FUSED_HERE = DEV == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not FUSED_HERE, reason="needs CUDA or TRITON_INTERPRET=1")

SCALE = 0.3
SMALL_BLOCKS = {"fwd": (16, 16, 4), "dq": (16, 32, 4), "dk": (32, 16, 4)}  # several blocks, ragged tails
# (values, gradients relative to max|grad|) tolerances: a few times the measured errors (module docstring)
TOL = {torch.float32: (1e-5, 2e-5), torch.bfloat16: (1e-5, 4e-2), torch.float16: (1e-5, 3e-3)}


def _case(B=2, T=37, H=4, KVH=2, D=16, S=45, dtype=torch.float32, seed=0, masked=False):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, T, H, D, generator=g) * 2).to(DEV, dtype)
    k = (torch.randn(B, S, KVH, D, generator=g) * 2).to(DEV, dtype)
    w = torch.randn(B, H, T, generator=g).to(DEV)  # loss weights: every frame gets its own gradient
    mask = None
    if masked:
        mask = torch.rand(B, S, generator=g) > 0.5
        mask[1, : S // 2] = False  # ragged: item 1 takes fewer keys than item 0
        mask = mask.to(DEV)
    return q, k, w, mask


def _grads(fn, q, k, w):
    qa, ka = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    h = fn(qa, ka)
    gq, gk = torch.autograd.grad((h * w.to(h.dtype)).sum(), (qa, ka))
    return h.detach(), gq, gk


def _naive64(q, k, w, mask, normalize):
    return _grads(
        lambda a, b: attention_entropy_naive(a, b, SCALE, mask, normalize=normalize), q.double(), k.double(), w
    )


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).abs().max() / ref.abs().max())


def _assert_close(got, ref, dtype):
    tv, tg = TOL[dtype]
    (h, gq, gk), (nh, nq, nk) = got, ref
    assert h.dtype == torch.float32 and h.shape == nh.shape
    err = float((h.double() - nh).abs().max())
    assert err < tv, f"values: {err:.2e}"
    assert gq.dtype == dtype and gk.dtype == dtype
    assert _rel(gq, nq) < tg, f"dq: {_rel(gq, nq):.2e}"
    assert _rel(gk, nk) < tg, f"dk: {_rel(gk, nk):.2e}"


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_fused_fp32_equals_naive_fp64(masked, normalize):
    q, k, w, mask = _case(masked=masked)
    got = _grads(lambda a, b: attention_entropy(a, b, SCALE, mask, normalize=normalize, impl="fused"), q, k, w)
    _assert_close(got, _naive64(q, k, w, mask, normalize), torch.float32)


@pytest.mark.parametrize("heads", [(4, 4), (4, 1), (8, 2)])
def test_fused_gqa_groups(heads):
    H, KVH = heads
    q, k, w, _ = _case(H=H, KVH=KVH, seed=1)
    got = _grads(lambda a, b: attention_entropy(a, b, SCALE, impl="fused"), q, k, w)
    _assert_close(got, _naive64(q, k, w, None, True), torch.float32)


@pytest.mark.parametrize("masked", [False, True])
def test_small_blocks_and_ragged_tails(masked):
    """T=37, S=45 over 16/32-wide blocks: several blocks per program, last blocks partly out of range; the mask
    goes to the kernels directly (no gathering of the taken keys)."""
    q, k, w, mask = _case(masked=masked, seed=2)
    got = _grads(lambda a, b: fused_attention_entropy(a, b, SCALE, mask, SMALL_BLOCKS), q, k, w)
    _assert_close(got, _naive64(q, k, w, mask, False), torch.float32)
    if masked:  # keys left out get no gradient at all
        assert torch.all(got[2][~mask] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_half_precision(dtype, masked):
    q, k, w, mask = _case(dtype=dtype, masked=masked, seed=3)
    got = _grads(lambda a, b: attention_entropy(a, b, SCALE, mask, impl="fused"), q, k, w)
    _assert_close(got, _naive64(q, k, w, mask, True), dtype)


def test_fused_equals_recompute_fp32():
    q, k, w, mask = _case(masked=True, seed=4)
    a = _grads(lambda x, y: attention_entropy(x, y, SCALE, mask, impl="fused"), q, k, w)
    b = _grads(lambda x, y: attention_entropy(x, y, SCALE, mask, impl="recompute"), q, k, w)
    assert float((a[0] - b[0]).abs().max()) < 2e-5
    assert _rel(a[1], b[1].double()) < 1e-4 and _rel(a[2], b[2].double()) < 1e-4


def test_strided_inputs_and_expanded_gradient():
    """q a head slice of a wider tensor, k with a non-unit stride along D, loss = mean (stride-0 gradient)."""
    q, k, w, _ = _case(H=6, seed=5)
    q = q[:, :, 1:5]  # [B, T, 4, D], not contiguous
    kt = k.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, stride(-1) = KVH
    assert not q.is_contiguous() and kt.stride(-1) != 1
    one = torch.ones((), device=DEV)
    got = _grads(lambda a, b: fused_attention_entropy(a, b, SCALE, blocks=SMALL_BLOCKS).mean(), q, kt, one)
    ref = _grads(lambda a, b: attention_entropy_naive(a, b, SCALE, normalize=False).mean(), q.double(), k.double(), one)
    assert abs(float(got[0]) - float(ref[0])) < 1e-6
    assert _rel(got[1], ref[1]) < 2e-5 and _rel(got[2], ref[2]) < 2e-5


def test_key_index_reads_keys_in_place_and_weights_items():
    """key_index walks a shuffled subset of k's rows (item 1 takes fewer: the rest masked), weights scale each item:
    equal to the weighted naive entropy over those keys; rows of k outside the index get exactly 0 gradient."""
    q, k, w, _ = _case(seed=8)
    B, S = k.shape[0], k.shape[1]
    g = torch.Generator().manual_seed(8)
    taken = [torch.randperm(S, generator=g)[:n] for n in (19, 11)]  # distinct rows, in no particular order
    n_max = max(len(t) for t in taken)
    index = torch.zeros(B, n_max, dtype=torch.long)
    mask = torch.zeros(B, n_max, dtype=torch.bool)
    key_mask = torch.zeros(B, S, dtype=torch.bool)  # the same keys as a mask over k, for the reference
    for b, t in enumerate(taken):
        rest = [j for j in range(S) if j not in set(t.tolist())][: n_max - len(t)]
        index[b] = torch.cat([t, torch.tensor(rest, dtype=torch.long)])  # padding rows: real rows, masked out
        mask[b, : len(t)] = True
        key_mask[b, t] = True
    weight = torch.tensor([0.5, 2.0], dtype=torch.float64)
    index, mask, key_mask, weight = index.to(DEV), mask.to(DEV), key_mask.to(DEV), weight.to(DEV)
    got = _grads(
        lambda a, c: fused_attention_entropy(
            a, c, SCALE, mask, SMALL_BLOCKS, key_index=index, weight=weight, weight_all=3.0
        ),
        q,
        k,
        w,
    )
    ref = _grads(
        lambda a, c: attention_entropy_naive(a, c, SCALE, key_mask, normalize=False) * 3.0 * weight[:, None, None],
        q.double(),
        k.double(),
        w,
    )
    _assert_close(got, ref, torch.float32)
    assert torch.all(got[2][~key_mask] == 0) and torch.all(got[2][key_mask].abs().sum(-1) > 0)


@pytest.mark.parametrize("packed", ["separate", "unaligned"])
def test_layers_in_one_launch_equal_one_launch_per_layer(packed):
    """Three layers in one launch (offset table over separately allocated tensors, or, for tensors 3 elements
    apart from a 16-element boundary, the stacked fallback) equal three single-layer launches, values and every
    layer's gradients; with a key index, weights and a ragged mask."""
    cases = [_case(seed=20 + i) for i in range(3)]
    qs = [c[0] for c in cases]
    ks = [c[1] for c in cases]
    if packed == "unaligned":  # layer 1 lives at an odd offset inside a larger buffer
        buf = torch.zeros(qs[1].numel() + 3, device=DEV, dtype=qs[1].dtype)
        buf[3:] = qs[1].flatten()
        qs[1] = buf[3:].view(qs[1].shape)
    w = torch.randn(3, *cases[0][2].shape, generator=torch.Generator().manual_seed(9)).to(DEV)
    S = ks[0].shape[1]
    index = torch.stack([torch.arange(S - 1, -1, -1)[:20], torch.arange(0, 40, 2)]).to(DEV)  # [2, 20]
    mask = torch.ones(2, 20, dtype=torch.bool, device=DEV)
    mask[1, 15:] = False
    weight = torch.tensor([0.25, 4.0], device=DEV, dtype=torch.float64)
    opts = dict(key_index=index, weight=weight, weight_all=0.5)

    def grads(fn):
        xs = [t.detach().clone().requires_grad_() for t in qs + ks]
        h = fn(xs[:3], xs[3:])
        return h.detach(), torch.autograd.grad((h * w).sum(), xs)

    one = grads(lambda a, b: fused_attention_entropy_layers(a, b, SCALE, mask, SMALL_BLOCKS, **opts))
    each = grads(
        lambda a, b: torch.stack(
            [fused_attention_entropy(x, y, SCALE, mask, SMALL_BLOCKS, **opts) for x, y in zip(a, b)]
        )
    )
    assert one[0].shape == (3, *cases[0][2].shape)
    assert torch.equal(one[0], each[0])  # same kernels, same order of operations: bitwise
    for ga, gb in zip(one[1], each[1]):
        assert torch.equal(ga, gb)
    with pytest.raises(ValueError, match="layer 1"):
        fused_attention_entropy_layers([qs[0], qs[1][:, :5]], ks[:2], SCALE)
    # saved tensors handed back as copies at new addresses (as offloading hooks do): the same gradients
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        moved = grads(lambda a, b: fused_attention_entropy_layers(a, b, SCALE, mask, SMALL_BLOCKS, **opts))
    for ga, gb in zip(moved[1], one[1]):
        assert torch.equal(ga, gb)


def test_backward_is_deterministic():
    q, k, w, mask = _case(masked=True, seed=6)
    a = _grads(lambda x, y: fused_attention_entropy(x, y, SCALE, mask, SMALL_BLOCKS), q, k, w)
    b = _grads(lambda x, y: fused_attention_entropy(x, y, SCALE, mask, SMALL_BLOCKS), q, k, w)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_only_requested_gradients():
    q, k, w, _ = _case(seed=7)
    k = k.detach().requires_grad_()
    h = fused_attention_entropy(q, k, SCALE)  # q without grad: only the dk kernel runs
    (gk,) = torch.autograd.grad((h * w).sum(), (k,))
    ref = _naive64(q, k, w, None, False)
    assert _rel(gk, ref[2]) < 2e-5


def test_impl_resolution_and_errors():
    q, k, _, _ = _case()
    assert resolve_impl(q, "recompute") == "recompute" and resolve_impl(q, "fused") == "fused"
    assert resolve_impl(q, "auto") == ("fused" if DEV == "cuda" else "recompute")  # CPU: never fused by default
    assert resolve_impl(q[..., :12], "auto") == "recompute"  # head_dim not a power of 2
    assert not fused_entropy_supported(q.double()) and not fused_entropy_supported(q[..., :12])
    with pytest.raises(ValueError, match="impl must be one of"):
        attention_entropy(q, k, SCALE, impl="flash")
    with pytest.raises(ValueError, match="fused entropy kernels need"):
        attention_entropy(q.double(), k.double(), SCALE, impl="fused")
    with pytest.raises(ValueError, match="fused entropy kernels need"):
        attention_entropy(q[..., :12], k[..., :12], SCALE, impl="fused")
    mask = torch.zeros(2, k.shape[1], dtype=torch.bool, device=DEV)
    mask[0, :3] = True
    mask[1, 5] = True
    with pytest.raises(ValueError, match="at least 2 keys"):
        attention_entropy(q, k, SCALE, key_mask=mask, impl="fused")
    with pytest.raises(ValueError, match="at least 2 keys"):
        attention_entropy(q, k[:, :1], SCALE, impl="fused")
    with pytest.raises(ValueError, match="do not fit"):
        attention_entropy(q, k[:, :, :, :8], SCALE, impl="fused")


@pytest.mark.skipif(DEV != "cuda", reason="auto picks the fused kernels on CUDA only")
def test_auto_is_fused_on_cuda():
    q, k, w, _ = _case(dtype=torch.bfloat16)
    a = _grads(lambda x, y: attention_entropy(x, y, SCALE), q, k, w)
    b = _grads(lambda x, y: fused_attention_entropy(x, y, SCALE) / math.log(45), q, k, w)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def pipe():
    import attnlens as al

    return al.models.tiny_pipeline(seed=0, config=al.models.TinyConfig(head_dim=16, dit_layers=2)).to(DEV)


@pytest.mark.parametrize("keys", ["all", "lyrics"])
def test_tap_fused_equals_recompute(pipe, keys):
    from attnlens.train.conditioning import context_latents, encode_condition

    cond = encode_condition(pipe, ["soft pop"], ["[verse]\nhello there my friend\nsing along"], 2.0)
    T = 24
    tr = pipe.transformer
    x = torch.randn(1, T, 8, generator=torch.Generator().manual_seed(0)).to(DEV)
    t = torch.full((1,), 0.75, device=DEV)
    ehs0 = cond.encoder_hidden_states.to(DEV)
    ctx = context_latents(pipe, 1, T, DEV, torch.float32)
    out = {}
    for impl in ("fused", "recompute", "naive"):
        ehs = ehs0.detach().clone().requires_grad_()
        pos = cond.lyric_positions() if keys == "lyrics" else None
        with EntropyTap(tr, keys=keys, lyric_positions=pos, impl=impl) as tap:
            tr(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=ehs, context_latents=ctx,
               return_dict=False)  # fmt: skip
            per_layer = tap.per_layer()
        assert tap.impl_used == impl
        (g,) = torch.autograd.grad(per_layer.sum(), (ehs,))
        out[impl] = (per_layer.detach(), g)
    for impl in ("fused", "recompute"):
        assert torch.max(torch.abs(out[impl][0] - out["naive"][0])) < 1e-5, impl
        assert _rel(out[impl][1], out["naive"][1].double()) < 1e-4, impl
    with pytest.raises(ValueError, match="impl must be"):
        EntropyTap(tr, impl="flash")
