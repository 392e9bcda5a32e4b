"""Faults during a capture leave the model exactly as it was.

Exceptions raised inside the model at every (layer, step) of the tiny pipeline, inside the text and condition
encoders, inside the reducer, inside a user's ``callback_on_step_end``, ``KeyboardInterrupt`` mid-run, and a
failure while the hooks are being registered. After each: no attnlens hook anywhere in the transformer, the text
encoder and the condition encoder (and no other hook left behind either), no ``_attnlens_capture_active``
attribute, the components' outputs bitwise equal to the uncaptured ones, and a new capture works and gives the
reference statistics bitwise. The same for the differentiable :class:`EntropyTap`.
"""

from __future__ import annotations

import pytest
import torch

import attnlens as al
import attnlens.captures.session as session_mod
from attnlens.reducers.differentiable import EntropyTap
from attnlens.taps import attnlens_hooks
from attnlens.train.conditioning import context_latents, encode_condition

ACTIVE_ATTR = "_attnlens_capture_active"
KW = dict(
    prompt="folk, warm vocals",
    lyrics="[verse]\nwalking down the morning road",
    audio_duration=0.4,
    num_inference_steps=8,
    guidance_scale=1.0,
    output_type="latent",
)
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


class Injected(Exception):
    pass


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread is ~5x faster than two fighting
    yield
    torch.set_num_threads(n)


def components(pipe) -> dict[str, torch.nn.Module]:
    return {
        "transformer": pipe.transformer,
        "text_encoder": pipe.text_encoder,
        "condition_encoder": pipe.condition_encoder,
    }


def hook_census(pipe) -> dict[str, int]:
    """Number of entries in every hook table of every module, per component (attnlens or not)."""
    return {
        name: sum(len(getattr(m, d, {}) or {}) for m in comp.modules() for d in HOOK_DICTS)
        for name, comp in components(pipe).items()
    }


def gen(pipe, **kw):
    return pipe(**{**KW, **kw}, generator=torch.Generator().manual_seed(0)).audios


class Rig:
    """One pipeline, fixed probe inputs for each component and their uncaptured outputs."""

    def __init__(self) -> None:
        self.pipe = pipe = al.models.tiny_pipeline(seed=0)
        self.census = hook_census(pipe)
        self.ids = pipe.tokenizer(["a quiet folk song"], return_tensors="pt").input_ids
        self.cond = encode_condition(pipe, ["folk, warm vocals"], ["[verse]\nwalking down the road"], 0.4)
        T = 10
        g = torch.Generator().manual_seed(1)
        self.tr_kw = dict(
            hidden_states=torch.randn(1, T, 8, generator=g),
            timestep=torch.full((1,), 0.75),
            timestep_r=torch.full((1,), 0.75),
            encoder_hidden_states=self.cond.encoder_hidden_states,
            context_latents=context_latents(pipe, 1, T, "cpu", torch.float32),
            return_dict=False,
        )
        self.ref_probe = self.probe()
        self.ref_bare = self.bare_capture()
        self.ref_out = gen(pipe)
        with al.capture(pipe) as cap:
            out = gen(pipe)
        assert torch.equal(out, self.ref_out)
        self.ref_cap = cap

    @torch.no_grad()
    def probe(self, encoders: bool = True) -> dict[str, torch.Tensor]:
        p = self.pipe
        out = {"transformer": p.transformer(**self.tr_kw)[0]}
        if encoders:
            out["text_encoder"] = p.text_encoder(input_ids=self.ids).last_hidden_state
            out["condition"] = encode_condition(
                p, ["folk, warm vocals"], ["[verse]\nwalking down the road"], 0.4
            ).encoder_hidden_states
        return out

    def bare_capture(self):
        with al.capture(self.pipe.transformer, layout=self.cond.layout) as cap:
            with torch.no_grad():
                self.pipe.transformer(**self.tr_kw)
        return cap

    def assert_clean(self, full: bool = False) -> None:
        """No hook or attribute left; outputs bitwise as before; a new capture gives the reference numbers.
        ``full`` also runs both encoders and the whole captured pipeline against the reference."""
        pipe = self.pipe
        for name, comp in components(pipe).items():
            assert attnlens_hooks(comp) == [], name
            leftovers = [n for n, m in comp.named_modules() if any(a.startswith("_attnlens") for a in vars(m))]
            assert leftovers == [], (name, leftovers)
        assert not hasattr(pipe.transformer, ACTIVE_ATTR)
        assert hook_census(pipe) == self.census
        now = self.probe(encoders=full)
        for k, v in now.items():
            assert torch.equal(v, self.ref_probe[k]), k
        cap = self.bare_capture()  # a new capture works and gives the same numbers
        for k, v in self.ref_bare.stats.items():
            assert torch.equal(cap.stats[k], v), k
        if full:
            assert torch.equal(gen(pipe), self.ref_out)
            with al.capture(pipe) as cap:
                out = gen(pipe)
            assert torch.equal(out, self.ref_out)
            assert cap.steps == list(range(8)) and cap.layout.to_json() == self.ref_cap.layout.to_json()
            for k, v in self.ref_cap.stats.items():
                assert torch.equal(cap.stats[k], v), k


@pytest.fixture(scope="module")
def rig():
    return Rig()


def _step_counter(pipe):
    state = {"step": -1}

    def on_step(m, a, kw):
        state["step"] += 1

    return state, pipe.transformer.register_forward_pre_hook(on_step, with_kwargs=True)


@pytest.mark.parametrize("step", range(8))
@pytest.mark.parametrize("layer", range(8))
def test_exception_at_every_layer_and_step(rig, layer, step):
    """Raise between the capture's query hook and key hook of one layer (the capture holds a query, no key)."""
    pipe = rig.pipe
    state, h1 = _step_counter(pipe)

    def boom(m, a):
        if state["step"] == step:
            raise Injected(f"layer {layer} step {step}")

    h2 = pipe.transformer.layers[layer].cross_attn.norm_k.register_forward_pre_hook(boom)
    try:
        with pytest.raises(Injected, match=f"layer {layer} step {step}"):
            with al.capture(pipe, maps=(layer + step) % 2 == 0) as cap:
                gen(pipe)
    finally:
        h1.remove()
        h2.remove()
    assert state["step"] == step  # it really stopped there
    assert cap.stats == {} and cap.maps is None  # an aborted capture keeps nothing half-made
    rig.assert_clean(full=layer == step and layer % 3 == 0)


@pytest.mark.parametrize(
    "where",
    ["text_encoder", "condition_encoder", "lyric_encoder", "self_attn", "mlp", "cross_attn_out", "transformer_out"],
)
def test_exception_elsewhere_in_the_model(rig, where):
    pipe = rig.pipe
    module = {
        "text_encoder": pipe.text_encoder,
        "condition_encoder": pipe.condition_encoder,
        "lyric_encoder": getattr(pipe.condition_encoder, "lyric_encoder", pipe.condition_encoder),
        "self_attn": pipe.transformer.layers[3].self_attn,
        "mlp": pipe.transformer.layers[5].mlp,
        "cross_attn_out": pipe.transformer.layers[6].cross_attn,
        "transformer_out": pipe.transformer,
    }[where]
    calls = {"n": 0}

    def boom(m, a, out):
        calls["n"] += 1
        if calls["n"] == (3 if m is pipe.transformer or where in ("self_attn", "mlp", "cross_attn_out") else 1):
            raise Injected(where)

    h = module.register_forward_hook(boom)
    try:
        with pytest.raises(Injected, match=where):
            with al.capture(pipe, layers=[0, 6, 7]):
                gen(pipe)
    finally:
        h.remove()
    rig.assert_clean()


@pytest.mark.parametrize("nth", [1, 29, 64])
def test_exception_from_the_reducer(rig, monkeypatch, nth):
    real = session_mod.reduce_reference
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == nth:
            raise Injected(f"reducer call {nth}")
        return real(*a, **k)

    monkeypatch.setattr(session_mod, "reduce_reference", failing)
    with pytest.raises(Injected, match=f"reducer call {nth}"):
        with al.capture(pipe := rig.pipe, reducer="reference"):
            gen(pipe)
    assert calls["n"] == nth
    monkeypatch.undo()
    rig.assert_clean(full=nth == 29)


@pytest.mark.parametrize("exc", [Injected, KeyboardInterrupt])
@pytest.mark.parametrize("at", [0, 4, 7])
def test_exception_from_user_callback(rig, exc, at):
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append(i)
        if i == at:
            raise exc("callback")
        return kwargs

    with pytest.raises(exc):
        with al.capture(rig.pipe, maps=True):
            gen(rig.pipe, callback_on_step_end=callback)
    assert seen == list(range(at + 1))
    rig.assert_clean(full=at == 4 and exc is KeyboardInterrupt)


@pytest.mark.parametrize("layer,step", [(0, 0), (5, 3), (7, 7)])
def test_keyboard_interrupt_inside_the_model(rig, layer, step):
    pipe = rig.pipe
    state, h1 = _step_counter(pipe)

    def interrupt(m, a, out):
        if state["step"] == step:
            raise KeyboardInterrupt

    h2 = pipe.transformer.layers[layer].cross_attn.to_v.register_forward_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            with al.capture(pipe, maps="mean"):
                gen(pipe)
    finally:
        h1.remove()
        h2.remove()
    rig.assert_clean()


def test_failure_while_registering_hooks(rig, monkeypatch):
    """The adapter fails on the 6th layer while the capture is attaching: the 5 layers already hooked are undone."""
    session = al.capture(rig.pipe)
    real = session.adapter.query_key_modules

    def flaky(layer):
        if layer == 5:
            raise Injected("no such module")
        return real(layer)

    monkeypatch.setattr(session.adapter, "query_key_modules", flaky)
    with pytest.raises(Injected):
        with session:
            raise AssertionError("the block must not run")
    rig.assert_clean()


def test_error_raised_by_the_capture_itself(rig):
    """CaptureError raised from inside the capture's own hooks (a second generation in one capture; a layout that
    does not fit the keys) also leaves nothing behind."""
    with pytest.raises(al.captures.CaptureError, match="new generation"):
        with al.capture(rig.pipe, layers=[2]):
            gen(rig.pipe, num_inference_steps=2)
            gen(rig.pipe, num_inference_steps=2)
    rig.assert_clean()
    tr = rig.pipe.transformer
    wrong = al.captures.ItemLayout.from_segment_lengths(lyric=3, caption=2)
    with pytest.raises(al.captures.CaptureError, match="has 5 keys but the transformer got"):
        with al.capture(tr, layout=wrong), torch.no_grad():
            tr(**rig.tr_kw)
    rig.assert_clean()


# --------------------------------------------------------------------------------------------- EntropyTap


@pytest.mark.parametrize("exc", [Injected, KeyboardInterrupt])
@pytest.mark.parametrize("layer", [0, 3, 7])
def test_entropy_tap_fault_inside_forward_and_backward(rig, exc, layer):
    tr = rig.pipe.transformer
    pos = rig.cond.lyric_positions()

    def boom(m, a):
        raise exc("tap")

    h = tr.layers[layer].cross_attn.norm_k.register_forward_pre_hook(boom)
    try:
        with pytest.raises(exc):
            with EntropyTap(tr, keys="lyrics", lyric_positions=pos):
                tr(**rig.tr_kw)
    finally:
        h.remove()
    rig.assert_clean()
    # a fault in the backward pass (after the block) leaves nothing either, and the tap works again
    with EntropyTap(tr, keys="all") as tap:
        tr(**rig.tr_kw)
    loss = tap.mean()
    x = rig.tr_kw["hidden_states"]

    def bad_grad(g):
        raise exc("backward")

    with torch.enable_grad():
        xs = x.clone().requires_grad_(True)
        with EntropyTap(tr, keys="all") as tap2:
            tr(**{**rig.tr_kw, "hidden_states": xs})
        xs.register_hook(bad_grad)
        with pytest.raises(exc):
            tap2.mean().backward()
    for p in tr.parameters():
        p.grad = None
    rig.assert_clean()
    with EntropyTap(tr, keys="all") as tap3:
        tr(**rig.tr_kw)
    assert torch.equal(tap3.mean(), loss)
