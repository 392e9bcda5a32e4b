"""The fused statistics kernel equals the reference path (run through Triton's interpreter on the CPU)."""

from __future__ import annotations

import math
import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (CUDA builds of torch bring it)")


DEV = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# tests/conftest.py sets TRITON_INTERPRET=1 (before Triton is imported) when no CUDA device is present, so the
# kernel runs in Triton's CPU interpreter here. The interpreter evaluates masked-off lanes too, and numpy warns about
# them: exp of a non-lyric key relative to the lyric maximum may overflow (then masked to 0), and padded lanes may
# multiply 0 · -inf (then masked). The results are checked below.
pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning"),
]


@pytest.fixture
def bf16_dot():
    """Triton's interpreter multiplies bf16 operands of ``tl.dot`` as their raw 16-bit patterns (it keeps bf16 as
    uint16): widen them to fp32 (exact) for the duration of a test. Nothing to do on a GPU."""
    from attnlens.reducers.fused import interpreter_bf16_dot

    with interpreter_bf16_dot():
        yield


# kernel configurations under test: the plain formulas, one switch at a time, all switches (the library's default
# is "all_nogqa"); with gqa a program holds 2 heads of a KV group
_ALLSW = dict(exp2=True, lyric="share", order=True, argmax="eq")
CONFIGS = {
    "plain": {},
    "exp2": dict(exp2=True),
    "gqa": dict(gqa=True, num_warps=8),
    "gather": dict(lyric="gather"),
    "share": dict(lyric="share"),
    "order_gather": dict(lyric="gather", order=True),
    "order_share": dict(lyric="share", order=True),
    "pair": dict(argmax="pair"),
    "eq": dict(argmax="eq"),
    "all": dict(_ALLSW, gqa=True, block_t=32),
    "all_nogqa": dict(_ALLSW),
    "all_noorder": dict(_ALLSW, gqa=True, block_t=32, order=False),
}


def _config(name, **kw):
    from attnlens.reducers.fused import FusedConfig

    return FusedConfig(**{**CONFIGS[name], **kw})


def _case(B=2, T=70, H=4, KVH=2, D=16, S=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g) * 2
    k = torch.randn(B, S, KVH, D, generator=g) * 2
    seg = torch.randint(0, 5, (B, S), generator=g)
    seg[1, :] = 3  # item 1 has no lyric token
    lidx = torch.full((B, S), -1, dtype=torch.long)
    pos = (seg[0] == 0).nonzero().flatten()
    lidx[0, pos] = torch.arange(len(pos))
    return q, k, seg, lidx, (lidx >= 0).sum(1)


def _runs(lines: int, n_keys: int) -> list[int]:
    """Segment codes of a realistic packed layout: a header, sung lines (4 tokens) each ended by a line break
    (lyric_meta), a closing token, one timbre key, a caption, then padding."""
    codes = [1, 1]
    for _ in range(lines):
        codes += [0, 0, 0, 0, 1]
    codes += [1, 2] + [3] * 12
    return codes + [4] * (n_keys - len(codes))


def _layout_case(B=2, T=20, H=4, KVH=2, D=16, S=45, seed=1, dtype=torch.float32, far=False, ties=False):
    """Runs-shaped layout; item 1 has fewer lyric lines. ``far``: caption logits ~200 above every lyric logit
    (the lyric softmax must not underflow). ``ties``: three keys with equal logits (a header key, a sung key and a
    caption key), often the row maximum: the argmax is the first packed index."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g) * 2
    k = torch.randn(B, S, KVH, D, generator=g) * 2
    seg = torch.tensor([_runs(4, S), _runs(2, S)])
    if far:
        q[..., 0] = 8.0
        k[..., 0] = torch.where(seg == 3, 100.0, 0.0)[:, :, None]
    if ties:
        v = torch.randn(B, 1, KVH, D, generator=g) * 10
        first_sung = int((seg[0] == 0).nonzero()[0])
        for j in (0, first_sung, 30):
            k[:, j : j + 1] = v
    lidx = torch.full((B, S), -1, dtype=torch.long)
    for b in range(B):
        pos = (seg[b] == 0).nonzero().flatten()
        lidx[b, pos] = torch.arange(len(pos))
    return q.to(dtype), k.to(dtype), seg, lidx, (lidx >= 0).sum(1)


def _check(out, ref, prefix=""):
    for name in ref:
        if ref[name].dtype.is_floating_point:
            assert torch.allclose(out[name], ref[name], atol=5e-6), (prefix, name, (out[name] - ref[name]).abs().max())
        else:
            assert torch.equal(out[name], ref[name]), (prefix, name, (out[name] != ref[name]).sum())


def test_fused_equals_reference():
    from attnlens.reducers.fused import reduce_fused
    from attnlens.reducers.stats import reduce_reference, segment_onehot

    q, k, seg, lidx, nl = (t.to(DEV) for t in _case())
    heads = torch.tensor([0, 1, 3], device=DEV)
    out = reduce_fused(q, k, 0.25, heads.int(), 2, seg.int(), lidx.int(), nl.int(), block_t=32, block_s=32, n_seg=5)
    ref, _ = reduce_reference(q[:, :, heads], k, 0.25, heads // 2, segment_onehot(seg, 5), lidx, nl)
    for name in ref:
        if ref[name].dtype.is_floating_point:
            assert torch.allclose(out[name], ref[name], atol=5e-6), name
        else:
            assert torch.equal(out[name], ref[name]), name
    assert torch.all(out["lyric_argmax"][1] == -1) and torch.all(out["entropy_lyric"][1] == 0)


# (case, heads): random segment codes with a lyric-less item and heads splitting a KV group (fp32, ragged T and S);
# a runs layout with whole groups in shuffled order (bf16: G = 2 for gqa); lyric logits far below the maximum;
# exact ties of the maximum between a header, a sung and a caption key.
_CASES = {
    "random_split_group": (dict(T=20, S=40), [0, 1, 3]),
    "runs_bf16_groups": (dict(dtype=torch.bfloat16, T=12), [3, 2, 0, 1]),
    "runs_far": (dict(far=True, T=10), [1, 0, 2]),
    "runs_ties": (dict(ties=True, T=10), [2, 3]),
}
# every variant on two cases; on the others, the variants whose code paths the case is about
_ALL = ["plain", "exp2", "gqa", "gather", "share", "order_share", "pair", "eq",
        "all", "all_noorder"]  # fmt: skip
_PAIRS = (
    [(v, "random_split_group") for v in _ALL]
    + [(v, "runs_bf16_groups") for v in _ALL + ["order_gather"]]
    + [(v, "runs_far") for v in ("plain", "share", "order_share", "all", "all_noorder")]
    + [(v, "runs_ties") for v in ("plain", "pair", "eq", "order_share", "all", "all_noorder")]
)


def _case_tensors(name):
    kw, heads = _CASES[name]
    if name.startswith("random"):
        q, k, seg, lidx, nl = _case(T=kw["T"], S=kw["S"])
    else:
        q, k, seg, lidx, nl = _layout_case(**kw)
    return (*(t.to(DEV) for t in (q, k, seg, lidx, nl)), torch.tensor(heads, device=DEV))


@pytest.mark.parametrize(("variant", "case"), _PAIRS)
def test_fused_variants_equal_reference(case, variant, bf16_dot):

    from attnlens.reducers.fused import reduce_fused
    from attnlens.reducers.stats import reduce_reference, segment_onehot

    q, k, seg, lidx, nl, heads = _case_tensors(case)
    cfg = _config(variant, block_t=16, block_s=16)
    out = reduce_fused(q, k, 0.25, heads.int(), 2, seg.int(), lidx.int(), nl.int(), config=cfg, n_seg=5)
    ref, _ = reduce_reference(q[:, :, heads], k, 0.25, heads // 2, segment_onehot(seg, 5), lidx, nl)
    _check(out, ref, (case, variant))
    if case == "random_split_group":
        assert torch.all(out["lyric_argmax"][1] == -1) and torch.all(out["entropy_lyric"][1] == 0)
    if case == "runs_far":  # the cases test what they claim
        assert float(ref["mass"][..., 0].max()) < 1e-30 and float(ref["entropy_lyric"].mean()) > 0.1
    if case == "runs_ties":
        assert (ref["argmax"] == 0).float().mean() > 0.1


@pytest.mark.parametrize("variant", ["all", "all_noorder"])
def test_fused_whole_blocks_only(variant):
    """Keys that fill whole blocks (16 lyric + 16 others with block_s=16): the masked loop has nothing to do."""

    from attnlens.reducers.fused import key_plan, reduce_fused
    from attnlens.reducers.stats import reduce_reference, segment_onehot

    g = torch.Generator().manual_seed(3)
    q = (torch.randn(1, 7, 2, 16, generator=g) * 2).to(DEV)
    k = (torch.randn(1, 32, 1, 16, generator=g) * 2).to(DEV)
    seg = torch.tensor([[0, 1] * 16], device=DEV)
    lidx = torch.where(seg == 0, torch.cumsum((seg == 0).long(), 1) - 1, -1)
    nl = (lidx >= 0).sum(1)
    heads = torch.tensor([1, 0], device=DEV)
    cfg = _config(variant, block_t=16, block_s=16)
    plan = key_plan(seg.int(), lidx.int(), 16, cfg.order)
    assert plan.nblk.tolist() == [[2, 2]]
    out = reduce_fused(q, k, 0.25, heads.int(), 2, seg.int(), lidx.int(), nl.int(), config=cfg, n_seg=5)
    ref, _ = reduce_reference(q[:, :, heads], k, 0.25, heads // 2, segment_onehot(seg, 5), lidx, nl)
    _check(out, ref, variant)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(block_t=32, block_s=32, num_warps=4),
        dict(block_t=16, block_s=64, num_warps=8, num_stages=1),
        dict(block_t=32, block_s=16, num_warps=4, num_stages=3, maxnreg=128),
    ],
)
def test_fused_block_shapes_and_batched_layers(cfg, bf16_dot):
    """All switches on, other block shapes, several layers in one launch written to slots of step buffers."""

    from attnlens.reducers.fused import reduce_fused
    from attnlens.reducers.stats import reduce_reference, segment_onehot

    L = 3
    cases = [_layout_case(seed=s, dtype=torch.bfloat16, T=21) for s in range(L)]
    q = torch.stack([c[0] for c in cases]).to(DEV)  # [L, B, T, H, D]
    k = torch.stack([c[1] for c in cases]).to(DEV)
    _, _, seg, lidx, nl = (t.to(DEV) for t in cases[0])
    heads = torch.tensor([0, 1, 2, 3], device=DEV)
    B, T, h = q.shape[1], q.shape[2], len(heads)
    out = {
        "entropy": torch.full((L + 1, B, h, T), -7.0, device=DEV),
        "mass": torch.full((L + 1, B, h, T, 5), -7.0, device=DEV),
        "argmax": torch.full((L + 1, B, h, T), -7, device=DEV, dtype=torch.int32),
        "entropy_lyric": torch.full((L + 1, B, h, T), -7.0, device=DEV),
        "lyric_argmax": torch.full((L + 1, B, h, T), -7, device=DEV, dtype=torch.int32),
    }
    config = _config("all", **cfg)
    reduce_fused(q, k, 0.25, heads.int(), 2, seg.int(), lidx.int(), nl.int(), out=out, slot=1, config=config, n_seg=5)
    onehot = segment_onehot(seg, 5)
    for li in range(L):
        ref, _ = reduce_reference(q[li][:, :, heads], k[li], 0.25, heads // 2, onehot, lidx, nl)
        _check({n: v[li + 1] for n, v in out.items()}, ref, (cfg, li))
    assert torch.all(out["entropy"][0] == -7.0) and torch.all(out["argmax"][0] == -7)
    # the layers as separate tensors, read in place through an offset table: bitwise the stacked launch's results
    qs = [c[0].to(DEV) for c in cases]
    ks = [c[1].to(DEV) for c in cases]
    listed = {n: torch.full_like(v, -7) for n, v in out.items()}
    reduce_fused(
        qs, ks, 0.25, heads.int(), 2, seg.int(), lidx.int(), nl.int(), out=listed, slot=1, config=config, n_seg=5
    )
    for n in out:
        assert torch.equal(listed[n], out[n]), n

    # layers that are not dense: all of them (the first one too), or all but the first
    def strided(x):  # same values, frames and heads swapped in memory
        return x.transpose(1, 2).contiguous().transpose(1, 2)

    for name, qx, kx in (
        ("none dense", [strided(x) for x in qs], [strided(x) for x in ks]),
        ("first dense", qs[:1] + [strided(x) for x in qs[1:]], ks[:1] + [strided(x) for x in ks[1:]]),
    ):
        assert not qx[1].is_contiguous()
        got = {n: torch.full_like(v, -7) for n, v in out.items()}
        reduce_fused(
            qx, kx, 0.25, heads.int(), 2, seg.int(), lidx.int(), nl.int(), out=got, slot=1, config=config, n_seg=5
        )
        for n in out:
            assert torch.equal(got[n], out[n]), (name, n)


def _tiny_transformer(layers: int):
    """A tiny ACE-Step transformer (head_dim 16) on DEV and the inputs of one call: 24 frames, 12 keys."""
    import attnlens as al

    pipe = al.models.tiny_pipeline(seed=0, config=al.models.TinyConfig(head_dim=16, dit_layers=layers)).to(DEV)
    g = torch.Generator().manual_seed(0)
    kw = dict(
        hidden_states=torch.randn(1, 24, 8, generator=g),
        timestep=torch.full((1,), 0.5),
        timestep_r=torch.full((1,), 0.5),
        encoder_hidden_states=torch.randn(1, 12, 64, generator=g),
        context_latents=torch.randn(1, 24, 16, generator=g),
    )
    return pipe.transformer, {k: v.to(DEV) for k, v in kw.items()}


def test_key_plan_and_head_table():
    from attnlens.reducers.fused import head_table, key_plan

    seg = torch.tensor([_runs(4, 45), _runs(2, 45), [3] * 45], dtype=torch.int32)
    lidx = torch.where(seg == 0, 0, -1).to(torch.int32)
    for lyric_first in (False, True):
        plan = key_plan(seg, lidx, 16, lyric_first)
        for b in range(3):
            n_full, n_all = plan.nblk[b].tolist()
            o = plan.order[b, : n_all * 16]
            assert sorted(o[o >= 0].tolist()) == list(range(45))  # every key once
            assert torch.all(plan.order[b, n_all * 16 :] == -1)
            valid = plan.order[b] >= 0
            assert torch.equal(plan.seg[b][valid], seg[b][plan.order[b][valid].long()])
            desc = plan.desc[b, :n_all]
            blocks = plan.order[b, : n_all * 16].view(-1, 16)
            full = (blocks >= 0).all(1)
            assert torch.equal((desc & 1).bool(), full) and bool(full[:n_full].all()) and not full[n_full:].any()
            for blk in blocks:  # packed order inside every block
                pk = blk[blk >= 0]
                assert torch.equal(pk, pk.sort().values)
            if lyric_first:  # no block mixes lyric keys with other keys; lyric blocks in packed order
                lall, lany = (desc & 2).bool(), (desc & 4).bool()
                assert torch.equal(lall, lany) and int(lany.sum()) == (int((lidx[b] >= 0).sum()) + 15) // 16
                lyr = blocks[lany]
                lyr = lyr[lyr >= 0]
                assert torch.equal(lyr, lyr.sort().values)
    assert head_table([0, 1, 3], 2, True) == ([0, 1, 2], 1)  # head 3 without head 2: per-head programs
    assert head_table([3, 2, 0, 1], 2, True) == ([2, 3, 0, 1], 2)
    assert head_table([3, 2, 0, 1], 2, False) == ([0, 1, 2, 3], 1)
    assert head_table([0, 1, 2], 3, True) == ([0, 1, 2], 1)  # group not a power of two


def test_capture_fused_equals_reference_on_a_transformer():
    import attnlens as al
    from attnlens.captures import ItemLayout

    tr, kw = _tiny_transformer(2)
    layout = ItemLayout.from_segment_lengths(lyric=5, lyric_meta=2, timbre=1, caption=3, padding=1)
    import attnlens.captures.session as sess

    launches = []
    real = sess.StatsLauncher.__call__

    def counted(self, q, k, *a, **kw):
        launches.append(len(q) if isinstance(q, list) else 1)
        sizes.append(sum(x.nbytes for x in (*q, *k)))
        return real(self, q, k, *a, **kw)

    sizes: list[int] = []

    # (layers, stash budget, layers per launch): one layer; both in one launch (also when listed out of the model's
    # order); a budget of 0 flushes every layer on its own; a step that just fits goes whole, one that does not
    # goes in chunks of half the budget (here: one layer each)
    layer_bytes = None
    cases = [([1], 128 << 20, [1]), (None, 128 << 20, [2]), ([1, 0], 128 << 20, [2]), (None, 0, [1, 1])]
    cases += [(None, "2 layers", [2]), (None, "2 layers - 1", [1, 1])]
    for layers, budget, per_launch in cases:
        if isinstance(budget, str):
            budget = 2 * layer_bytes - (1 if budget.endswith("- 1") else 0)
        caps = {}
        for red in ("reference", "fused"):
            session = al.capture(tr, layers=layers, heads=[0, 7, 15], layout=layout, reducer=red)
            session.stash_budget_bytes = budget
            launches.clear()
            sess.StatsLauncher.__call__ = counted
            try:
                with session as cap, torch.no_grad():
                    tr(**kw)
            finally:
                sess.StatsLauncher.__call__ = real
            caps[red] = cap
            if red == "fused":
                assert launches == per_launch, (layers, budget, launches)
                if layers is None and budget == 128 << 20:
                    layer_bytes = sizes[-1] // 2  # the two layers' q and k of the whole-step launch
        assert caps["fused"].meta["reducer"] == "fused" and caps["reference"].meta["reducer"] == "reference"
        for name, ref in caps["reference"].stats.items():
            got = caps["fused"].stats[name]
            if ref.dtype.is_floating_point:
                assert torch.allclose(got, ref, atol=5e-6), (name, layers, budget)
            else:
                assert torch.equal(got, ref), (name, layers, budget)


@pytest.mark.parametrize("budget", [128 << 20, 1], ids=["one product", "one layer per product"])
def test_fused_statistics_with_maps_equal_reference(budget):
    import attnlens as al

    pipe = al.models.tiny_pipeline(seed=0, config=al.models.TinyConfig(head_dim=16, dit_layers=3)).to(DEV)
    kw = dict(prompt="folk", lyrics="[verse]\nwalking down the road", audio_duration=0.8, num_inference_steps=2)
    caps = {}
    for red, maps in (("reference", True), ("fused", True), ("fused", "mean")):
        session = al.capture(pipe, heads=[1, 9], maps=maps, reducer=red)
        session.stash_budget_bytes = budget
        with session as cap:
            pipe(**kw, output_type="latent", generator=torch.Generator(DEV).manual_seed(0))
        caps[red, maps] = cap
    ref, got, mean = caps["reference", True], caps["fused", True], caps["fused", "mean"]
    assert got.meta["reducer"] == "fused"
    assert got.maps.shape == ref.maps.shape and got.maps.shape[:2] == (2, 3) and got.maps.shape[3] == 2
    assert torch.allclose(got.maps, ref.maps, atol=1e-6)
    assert torch.allclose(got.stats["entropy"], ref.stats["entropy"], atol=5e-6)
    assert torch.equal(got.stats["lyric_argmax"], ref.stats["lyric_argmax"])
    assert not torch.allclose(got.maps[0], got.maps[1], atol=1e-3)  # the steps differ
    assert torch.allclose(mean.maps_mean, got.maps.mean(0), atol=1e-6)


def test_fused_path_reports_nonfinite_activations():
    import warnings

    import attnlens as al
    from attnlens.captures import ItemLayout

    tr, kw = _tiny_transformer(2)
    layout = ItemLayout.from_segment_lengths(lyric=5, lyric_meta=2, timbre=1, caption=4)

    def poison(module, args, out):  # a NaN in one key of layer 1
        out = out.clone()
        out[0, 3] = float("nan")
        return out

    h = tr.layers[1].cross_attn.to_k.register_forward_hook(poison)
    try:
        with warnings.catch_warnings(record=True) as w, torch.no_grad():
            warnings.simplefilter("always")
            with al.capture(tr, layout=layout, reducer="fused") as cap:
                tr(**kw)
    finally:
        h.remove()
    assert cap.meta["reducer"] == "fused"
    assert cap.meta["nonfinite"] == [(0, 1)]
    assert any("non-finite" in str(x.message) for x in w)
    assert torch.isnan(cap.stats["entropy"][0, 1]).all() and torch.isfinite(cap.stats["entropy"][0, 0]).all()


def test_fused_capture_names_only_the_layers_a_step_skipped():
    """A step whose layer 1 skips cross-attention: the layers that ran are reduced (their stash is flushed at the
    step's end) and the error names exactly the layer that did not run."""
    import attnlens as al
    from attnlens.captures import CaptureError, ItemLayout

    tr, kw = _tiny_transformer(3)
    layout = ItemLayout.from_segment_lengths(lyric=5, lyric_meta=2, timbre=1, caption=3, padding=1)
    skipped = tr.layers[1].cross_attn
    skipped.forward = lambda hidden_states, **_: torch.zeros_like(hidden_states)  # no q, no k for layer 1
    try:
        with pytest.raises(CaptureError, match=r"\(step, layer\) \[\(0, 1\)\] \("):
            with al.capture(tr, layout=layout, reducer="fused"), torch.no_grad():
                tr(**kw)
    finally:
        del skipped.forward


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_capture_does_not_synchronize_the_gpu_mid_run():
    """With torch's sync debug mode set to error, a captured forward runs through: layout tensors, launch plans
    and offset tables reach the GPU without a synchronizing copy (attnlens.devices.upload)."""
    import attnlens as al
    from attnlens.captures import ItemLayout

    tr, kw = _tiny_transformer(2)
    layout = ItemLayout.from_segment_lengths(lyric=5, lyric_meta=2, timbre=1, caption=3, padding=1)
    with torch.no_grad():
        torch.cuda.set_sync_debug_mode("error")
        try:
            tr(**kw)  # the model alone
        except RuntimeError:
            pytest.skip("the model's own forward synchronizes")
        finally:
            torch.cuda.set_sync_debug_mode(0)
        with al.capture(tr, layout=layout):  # warm-up: kernels compiled, pinned blocks cached
            tr(**kw)
        from attnlens.captures import session
        from attnlens.reducers import fused

        session._DEVICE_LAYOUTS.clear()  # a first capture of this layout: its tensors and launch plan built anew
        session._DEVICE_HEADS.clear()
        fused._CACHE.clear()
        with al.capture(tr, layout=layout) as cap:
            torch.cuda.set_sync_debug_mode("error")
            try:
                tr(**kw)
            finally:
                torch.cuda.set_sync_debug_mode(0)
    assert cap.meta["reducer"] == "fused" and cap.stats["entropy"].shape[:2] == (1, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_capture_keeps_each_steps_timestep_when_the_loop_refills_one_tensor():
    """Timesteps on the GPU are read when the capture ends; a loop that refills one timestep tensor in place (as a
    CUDA-graph loop does) must still leave every step's own value."""
    import attnlens as al
    from attnlens.captures import ItemLayout

    tr, kw = _tiny_transformer(2)
    layout = ItemLayout.from_segment_lengths(lyric=5, lyric_meta=2, timbre=1, caption=3, padding=1)
    t = kw["timestep"]
    with torch.no_grad(), al.capture(tr, layout=layout) as cap:
        for value in (1.0, 0.75, 0.5):
            t.fill_(value)
            tr(**kw)
    assert cap.timesteps == [1.0, 0.75, 0.5]


def test_capture_builds_the_launch_plan_once_for_captures_of_one_layout():
    """Captures of one layout and heads share its device tensors, so the kernel's launch plan (about 40 small device
    operations) is built by the first capture only."""
    import attnlens as al
    from attnlens.captures import ItemLayout, session
    from attnlens.reducers import fused

    tr, kw = _tiny_transformer(2)
    session._DEVICE_LAYOUTS.clear()
    session._DEVICE_HEADS.clear()
    fused._CACHE.clear()
    builds = []
    real = fused.key_plan

    def counted(*a, **k):
        builds.append(1)
        return real(*a, **k)

    fused.key_plan = counted
    try:
        caps = []
        for _ in range(2):
            layout = ItemLayout.from_segment_lengths(lyric=5, lyric_meta=2, timbre=1, caption=3, padding=1)
            with al.capture(tr, layout=layout, reducer="fused") as cap, torch.no_grad():
                tr(**kw)
            caps.append(cap)
        assert len(builds) == 1
        other = ItemLayout.from_segment_lengths(lyric=4, lyric_meta=3, timbre=1, caption=3, padding=1)
        with al.capture(tr, layout=other, reducer="fused"), torch.no_grad():
            tr(**kw)
        assert len(builds) == 2  # another layout: a plan of its own
    finally:
        fused.key_plan = real
    for name in caps[0].stats:
        assert torch.equal(caps[0].stats[name], caps[1].stats[name]), name


def test_capture_with_a_zero_scale_takes_the_reference_path():
    """The statistics kernel folds a positive scale into its exponent; with scale 0 (every key equally likely) the
    capture takes the reference path, also when the kernel was asked for, and says so."""
    import dataclasses

    import attnlens as al
    from attnlens.captures import ItemLayout

    tr, kw = _tiny_transformer(2)
    layout = ItemLayout.from_segment_lengths(lyric=5, lyric_meta=2, timbre=1, caption=3, padding=1)
    caps = {}
    for red in ("reference", "fused"):
        ses = al.capture(tr, layout=layout, reducer=red)
        ses.adapter.facts = dataclasses.replace(ses.adapter.facts, scale=0.0)
        with ses as cap, torch.no_grad():
            tr(**kw)
        caps[red] = cap
    assert caps["fused"].meta["reducer"] == "reference"
    ent = caps["fused"].stats["entropy"]
    assert torch.allclose(ent, torch.ones_like(ent), atol=1e-6)  # uniform over all keys: normalized entropy 1
    for name, ref in caps["reference"].stats.items():
        got = caps["fused"].stats[name]
        if got.is_floating_point():
            assert torch.allclose(got, ref, atol=1e-5), name


def test_maps_in_flight_are_held_to_twice_the_stash_budget():
    """Copies still running keep their device maps allocated: past twice the budget the host waits for the oldest
    (finished copies are dropped without waiting)."""
    from attnlens.captures.session import CaptureSession

    class Copy:
        def __init__(self, done):
            self.done, self.waited = done, False

        def query(self):
            return self.done

        def synchronize(self):
            self.waited = self.done = True

    from attnlens.captures.host import HostCopies

    pipe_model = _tiny_transformer(1)[0]
    ses = CaptureSession(pipe_model, maps=True)
    ses.stash_budget_bytes = 100
    assert ses._maps.limit_bytes() == 200  # the capture's maps in flight: twice its stash budget
    copies = HostCopies()
    finished, a, b, c = Copy(True), Copy(False), Copy(False), Copy(False)
    copies.bound(finished, 150, 200)
    assert not copies.in_flight  # done: dropped, nothing waited for
    copies.bound(a, 150, 200)
    copies.bound(b, 40, 200)
    assert [x for x, _ in copies.in_flight] == [a, b] and not a.waited  # 190 <= 200
    copies.bound(c, 60, 200)  # 250 > 200: wait for the oldest only
    assert a.waited and not b.waited and not c.waited
    assert [x for x, _ in copies.in_flight] == [b, c]
    assert not finished.waited


# ------------------------------------------------------------------------------ segment counts and key masks
def _independent(q, k, scale, heads, group, codes, lidx, n_seg):
    """Statistics written out from their definitions, in float64: torch's softmax with the masked keys (code -2) at
    -inf, as ``scaled_dot_product_attention`` takes a boolean mask; the mass of segment ``g`` as an explicit sum over
    the keys of code ``g``; entropies normalized by the log of each item's unmasked keys, and of its lyric keys."""
    B, T, _, _ = q.shape
    h = len(heads)
    kv = torch.tensor([hh // group for hh in heads])
    logits = torch.einsum("bthd,bshd->bhts", q[:, :, heads].double(), k[:, :, kv].double()) * scale
    valid = codes != -2  # [B, S]
    logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    P = torch.softmax(logits, dim=-1)  # [B, h, T, S]
    out = {"entropy": torch.zeros(B, h, T, dtype=torch.float64), "entropy_lyric": torch.zeros(B, h, T).double()}
    out["lyric_argmax"] = torch.full((B, h, T), -1, dtype=torch.long)
    out["mass"] = torch.zeros(B, h, T, n_seg, dtype=torch.float64)
    for b in range(B):
        keep = valid[b].nonzero().flatten()
        p = P[b][..., keep]
        out["entropy"][b] = -(p * p.log()).nan_to_num().sum(-1) / math.log(len(keep))
        for g in range(n_seg):
            for j in (codes[b] == g).nonzero().flatten().tolist():
                out["mass"][b, ..., g] += P[b, ..., j]
        pos = (lidx[b] >= 0).nonzero().flatten()
        if len(pos):
            a = torch.softmax(logits[b][..., pos], dim=-1)
            out["entropy_lyric"][b] = -(a * a.log()).nan_to_num().sum(-1) / math.log(max(len(pos), 2))
            out["lyric_argmax"][b] = lidx[b][pos][logits[b][..., pos].argmax(-1)]
    out["argmax"] = logits.argmax(-1)  # the first of equal maxima; a masked key (-inf) only if all are masked
    return out, P


def _masked_case(n_seg, seed):
    """Two items of 45 keys in packed runs of ``n_seg`` segments. Item 0: masked keys at the start (the first key of
    segment 0's run), in the middle of a run and at the start of the last segment's run, one unknown key (code -1:
    in the softmax, in no segment). Item 1: about 70 % of its keys masked, at random."""
    g = torch.Generator().manual_seed(seed)
    B, T, H, KVH, D, S = 2, 12, 4, 2, 16, 45
    q = torch.randn(B, T, H, D, generator=g) * 2
    k = torch.randn(B, S, KVH, D, generator=g) * 2
    codes = torch.sort(torch.randint(0, n_seg, (B, S), generator=g), dim=1).values  # packed runs
    codes[:, -1] = n_seg - 1  # every item reaches the last segment code
    codes[0, 0] = codes[0, 21] = -2
    codes[0, int((codes[0] == codes[0].max()).nonzero()[0])] = -2
    codes[0, 30] = -1
    codes[1, torch.rand(S, generator=g) < 0.7] = -2
    codes[1, :2] = torch.tensor([0, min(1, n_seg - 1)])  # at least two keys in the softmax
    lidx = torch.full((B, S), -1, dtype=torch.long)
    for b in range(B):
        pos = (codes[b] == 0).nonzero().flatten()
        lidx[b, pos] = torch.arange(len(pos))
    return q, k, codes, lidx, (lidx >= 0).sum(1)


def _fused_on_dev(q, k, scale, heads, group, codes, lidx, nl, **kw):
    """reduce_fused on DEV (int32 layout tensors), results back on the CPU."""
    from attnlens.reducers.fused import reduce_fused

    i32 = [torch.as_tensor(x).int().to(DEV) for x in (heads, codes, lidx, nl)]
    out = reduce_fused(q.to(DEV), k.to(DEV), scale, i32[0], group, *i32[1:], **kw)
    return {name: v.cpu() for name, v in out.items()}


def _check_independent(out, want, atol):
    for name in ("entropy", "mass", "entropy_lyric"):
        assert torch.allclose(out[name].double(), want[name], atol=atol), (name, (out[name] - want[name]).abs().max())
    for name in ("argmax", "lyric_argmax"):
        assert torch.equal(out[name].long(), want[name]), name


@pytest.mark.parametrize("n_seg", [1, 3, 5, 7, 16])
def test_reference_takes_any_segment_count_and_masked_keys(n_seg):
    from attnlens.reducers.stats import reduce_reference, segment_onehot

    q, k, codes, lidx, nl = _masked_case(n_seg, seed=n_seg)
    heads = [0, 1, 3]
    want, P = _independent(q, k, 0.25, heads, 2, codes, lidx, n_seg)
    hs = torch.tensor(heads)
    valid = codes != -2
    out, maps = reduce_reference(q[:, :, hs], k, 0.25, hs // 2, segment_onehot(codes, n_seg), lidx, nl, True, valid)
    assert out["mass"].shape == (2, 3, 12, n_seg)
    _check_independent(out, want, 1e-5)
    assert torch.allclose(maps.double(), P, atol=1e-6)
    assert torch.all(maps[~valid[:, None, None, :].expand_as(maps)] == 0)  # masked: exactly 0


@pytest.mark.parametrize("variant", ["plain", "all_nogqa"])
@pytest.mark.parametrize("n_seg", [1, 3, 5, 7, 16])
def test_fused_takes_any_segment_count_and_masked_keys(n_seg, variant):
    """Any segment count (the accumulator's columns, the key plan's descriptor up to code 15) and masked keys,
    against the definitions written out."""

    q, k, codes, lidx, nl = _masked_case(n_seg, seed=n_seg)
    heads = [0, 3]
    want, P = _independent(q, k, 0.25, heads, 2, codes, lidx, n_seg)
    cfg = _config(variant, block_t=16, block_s=16)
    out = _fused_on_dev(q, k, 0.25, heads, 2, codes, lidx, nl, config=cfg, n_seg=n_seg)
    assert out["mass"].shape == (2, 2, 12, n_seg)
    _check_independent(out, want, 2e-5)
    unknown = P[:, :, :, 30].float()  # item 0's key of code -1: in the softmax, in no segment
    assert torch.allclose(out["mass"].sum(-1), torch.stack([1 - unknown[0], torch.ones_like(unknown[1])]), atol=2e-5)
    assert bool((codes != -2).gather(1, out["argmax"].long().flatten(1)).all())  # never a masked key


@pytest.mark.parametrize("variant", ["plain", "all_nogqa"])
def test_argmax_skips_a_masked_maximum_and_breaks_ties_to_the_first_key(variant):
    """A masked key holds the largest logit of every row; three keys tie exactly below it, the first of them masked
    too: the argmax is the first unmasked one of the tie (as on masked logits in torch), on both paths."""
    from attnlens.reducers.stats import reduce_reference, segment_onehot

    g = torch.Generator().manual_seed(5)
    B, T, H, D, S = 1, 10, 2, 16, 40
    q = torch.randn(B, T, H, D, generator=g)
    q[..., 0] = 4.0
    k = torch.randn(B, S, 1, D, generator=g)
    v = torch.randn(1, D, generator=g)
    v[0, 0] = 20.0
    for j in (3, 17, 25):  # 3 masked; 17 (segment 1) and 25 (segment 2) tie
        k[0, j] = v
    k[0, 30, :, 0] = 40.0  # masked, the largest logit of every row
    codes = torch.tensor([[0] * 10 + [1] * 10 + [2] * 20])
    codes[0, [3, 30]] = -2
    lidx = torch.full((B, S), -1)
    lidx[0, [0, 1, 2, 4]] = torch.arange(4)
    nl = (lidx >= 0).sum(1)
    valid = codes != -2
    raw = torch.einsum("bthd,bsd->bts", q, k[:, :, 0])
    assert bool((raw.argmax(-1) == 30).all())  # without the mask the argmax would be the masked key
    want, _ = _independent(q, k, 0.25, [0, 1], 2, codes, lidx, 3)
    assert bool((want["argmax"] == 17).all())
    hs = torch.tensor([0, 1])
    ref, _ = reduce_reference(q, k, 0.25, hs // 2, segment_onehot(codes, 3), lidx, nl, key_valid=valid)
    cfg = _config(variant, block_t=16, block_s=16)
    out = _fused_on_dev(q, k, 0.25, hs, 2, codes, lidx, nl, config=cfg, n_seg=3)
    for got in (ref, out):
        _check_independent(got, want, 2e-5)


def test_entropy_is_normalized_by_each_items_unmasked_keys():
    """Hand-computed: logits (0, log 3) over item 0's two unmasked keys give P = (1/4, 3/4) and H = (-(1/4) log(1/4)
    - (3/4) log(3/4)) / log 2 = 0.8112781; item 1 is uniform over its three unmasked keys: H = log 3 / log 3 = 1 (a
    normalization by log S, S = 4 keys, would give 0.79); item 2 has one key in the softmax: H = 0, P = 1."""
    from attnlens.reducers.stats import reduce_reference, segment_onehot

    B, S, D = 3, 4, 16
    q = torch.zeros(B, 1, 1, D)
    q[..., 0] = 1.0
    k = torch.zeros(B, S, 1, D)
    k[:, :, 0, 0] = torch.tensor([[0.0, math.log(3), 5.0, 7.0], [0.0, 0.0, 0.0, 9.0], [2.0, 1.0, 3.0, 0.0]])
    codes = torch.tensor([[0, 1, -2, -2], [0, 1, 0, -2], [-2, 1, -2, -2]])
    lidx = torch.full((B, S), -1)
    nl = torch.zeros(B, dtype=torch.long)
    h = torch.tensor([0])
    ref, _ = reduce_reference(q, k, 1.0, h, segment_onehot(codes, 2), lidx, nl, key_valid=codes != -2)
    out = _fused_on_dev(q, k, 1.0, h, 1, codes, lidx, nl, block_t=16, block_s=16, n_seg=2)
    for got in (ref, out):
        assert torch.allclose(got["entropy"].flatten(), torch.tensor([0.8112781, 1.0, 0.0]), atol=1e-6)
        assert torch.allclose(got["mass"].flatten(0, 2), torch.tensor([[0.25, 0.75], [2 / 3, 1 / 3], [0.0, 1.0]]))
        assert got["argmax"].flatten().tolist() == [1, 0, 1]
        assert got["lyric_argmax"].flatten().tolist() == [-1, -1, -1]


def test_full_maps_give_masked_keys_exactly_zero_as_sdpa_does():
    """probabilities, layer_probabilities and the reference path's maps with a key mask: masked keys exactly 0, and
    P·V equal to scaled_dot_product_attention's output under the same boolean mask."""
    import torch.nn.functional as F

    from attnlens.reducers.stats import layer_probabilities, probabilities, reduce_reference, segment_onehot

    g = torch.Generator().manual_seed(2)
    B, T, H, KVH, D, S = 2, 5, 4, 2, 8, 9
    q = torch.randn(B, T, H, D, generator=g)
    ks = [torch.randn(B, S, KVH, D, generator=g) for _ in range(2)]
    v = torch.randn(B, S, KVH, D, generator=g)
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[0, [0, 4]] = False  # the first key and one in the middle
    valid[1, 2:] = False  # all but two
    qi, kvi = torch.arange(H), torch.arange(H) // 2
    want = [
        F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k[:, :, kvi].transpose(1, 2),
            v[:, :, kvi].transpose(1, 2),
            attn_mask=valid[:, None, None, :],
            scale=0.3,
        )  # fmt: skip
        for k in ks
    ]  # [B, H, T, D] per layer
    maps = {
        "probabilities": torch.stack([probabilities(q, k[:, :, kvi], 0.3, key_valid=valid) for k in ks]),
        "layer_probabilities": layer_probabilities([q, q], ks, qi, kvi, 0.3, key_valid=valid),
        "reduce_reference": torch.stack(
            [
                reduce_reference(
                    q, k, 0.3, kvi, segment_onehot(~valid * -2, 1), torch.full((B, S), -1), torch.zeros(B), True, valid
                )[1]
                for k in ks
            ]
        ),  # fmt: skip
    }
    for name, P in maps.items():  # [L, B, H, T, S]
        assert torch.all(P.masked_select(~valid[None, :, None, None, :]) == 0), name
        for li in range(2):
            got = torch.einsum("bhts,bshd->bhtd", P[li], v[:, :, kvi])
            assert torch.allclose(got, want[li], atol=1e-5), name


def test_fused_refuses_what_the_kernel_cannot_take():
    """``scale <= 0`` (the reference path takes it), a segment count outside 1..16, a mass buffer of another width."""
    from attnlens.reducers.fused import StatsLauncher, new_outputs, reduce_fused

    q, k, seg, lidx, nl = _case(T=4, S=8)
    args = (torch.tensor([0], dtype=torch.int32), 2, seg.int(), lidx.int(), nl.int())
    with pytest.raises(ValueError, match="scale > 0"):
        reduce_fused(q, k, 0.0, *args, n_seg=5)
    with pytest.raises(ValueError, match="scale > 0"):
        StatsLauncher(-0.1, *args, n_seg=5)
    for n in (0, 17):
        with pytest.raises(ValueError, match="n_seg must be between 1 and 16"):
            StatsLauncher(0.25, *args, n_seg=n)
    with pytest.raises(TypeError):
        StatsLauncher(0.25, *args)  # no default segment count
    with pytest.raises(ValueError, match="mass buffer holds 4 segments"):
        reduce_fused(q, k, 0.25, *args, out=new_outputs(q.device, (), 2, 1, 4, 4), n_seg=5)


def test_key_plan_leaves_masked_keys_out():
    from attnlens.reducers.fused import key_plan

    codes = torch.tensor([[0, 0, -2, 1, 1, -2, 2, 0]])
    lidx = torch.tensor([[0, 1, -1, -1, -1, -1, -1, 2]])
    for first in (True, False):
        plan = key_plan(codes, lidx, 16, first)
        order = [x for x in plan.order[0].tolist() if x >= 0]
        assert sorted(order) == [0, 1, 3, 4, 6, 7]
        assert plan.nblk[0].tolist() == ([0, 2] if first else [0, 1])  # the lyric and the other run; or one block
    assert [x for x in key_plan(codes, lidx, 16, True).order[0].tolist() if x >= 0][:3] == [0, 1, 7]
