"""The capture under misuse: copies of a hooked model, steps that never ran, interrupted calls, compiled models."""

from __future__ import annotations

import copy

import pytest
import torch

import attnlens as al
from attnlens.captures.session import CaptureError
from attnlens.taps.hooks import HookedModuleCopyError, attnlens_hooks

KW = dict(prompt="folk", lyrics="[verse]\nwalking down", audio_duration=2.0, num_inference_steps=3, guidance_scale=1.0)


@pytest.fixture()
def pipe():
    return al.models.tiny_pipeline(seed=0)


def test_a_hooked_model_refuses_to_be_copied_and_the_capture_goes_on(pipe):
    with al.capture(pipe) as cap:
        for target in (pipe.transformer, pipe.transformer.layers[1].cross_attn):
            with pytest.raises(HookedModuleCopyError, match="before or after"):
                copy.deepcopy(target)
        pipe(**KW)
    assert cap.stats["entropy"].shape[:2] == (3, 8)
    assert attnlens_hooks(pipe.transformer) == []
    twin = copy.deepcopy(pipe.transformer)  # after the block: a clean copy, capturable on its own
    assert attnlens_hooks(twin) == [] and not [k for k in vars(twin) if "attnlens" in k]
    with al.capture(twin, num_steps=1) as cap2:
        pipe.transformer = twin
        pipe(**{**KW, "num_inference_steps": 1})
    assert cap2.stats["entropy"].shape[:2] == (1, 8)


@pytest.mark.parametrize("steps", [[100], [-9], [0, 5]])
def test_steps_that_never_ran_are_an_error_naming_the_steps_that_did(pipe, steps):
    with (
        pytest.raises(CaptureError, match=r"did not run: the generation ran 3 step\(s\) \(0\.\.2"),
        al.capture(pipe, steps=steps),
    ):
        pipe(**KW)


def test_an_interrupt_caught_inside_the_block_is_named(pipe):
    calls = {"n": 0}

    def interrupt(module, args, output):
        calls["n"] += 1
        if calls["n"] == 2:  # the second step, mid-way through its layers
            raise KeyboardInterrupt

    h = pipe.transformer.layers[3].cross_attn.norm_k.register_forward_hook(interrupt)
    try:
        with pytest.raises(CaptureError, match=r"step\(s\) \[1\] did not finish"), al.capture(pipe):
            try:
                pipe(**KW)
            except KeyboardInterrupt:
                pass
    finally:
        h.remove()
    assert attnlens_hooks(pipe.transformer) == []


@pytest.mark.slow  # compiling takes ~15 s on a 2-core CPU
def test_a_model_compiled_before_the_capture_is_named(pipe):
    pytest.importorskip("torch._dynamo")
    tr = pipe.transformer
    tr.compile(backend="eager")
    try:
        pipe(**{**KW, "num_inference_steps": 1})
        with pytest.raises(CaptureError, match=r"compiled.*torch._dynamo.reset\(\)"), al.capture(pipe):
            pipe(**{**KW, "num_inference_steps": 1})
        torch._dynamo.reset()  # the advice in the message works
        with al.capture(pipe) as cap:
            pipe(**{**KW, "num_inference_steps": 1})
        assert cap.stats["entropy"].shape[:2] == (1, 8)
    finally:
        torch._dynamo.reset()
