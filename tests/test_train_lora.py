"""LoRA: target selection and the seed's 5.5M count, gradients only on LoRA, adapter-off identity, diffusers
loading, and exact weight-space combination."""

from __future__ import annotations

import pytest
import torch

import attnlens.captures  # noqa: F401  (import order)
from attnlens.train.lora import (
    LoraConfig,
    add_lora,
    combine_adapters,
    delta_weights,
    lora_parameter_count,
    lora_parameters,
    read_adapter,
    save_adapter,
    target_modules,
)

torch.set_num_threads(1)


def test_full_size_count_is_the_seed_figure():
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel

    with torch.device("meta"):
        tr = AceStepTransformer1DModel()  # full-size defaults: 24 blocks, hidden 2048, 16/8 heads of 128
    cfg = LoraConfig(rank=8, alpha=16)
    names = target_modules(tr, cfg)
    assert len(names) == 24 * 2 * 4
    # analytic: per attention r·((2048+2048) + 2·(2048+1024) + (2048+2048)) = 8 · 14336
    assert lora_parameter_count(tr, cfg) == 5_505_024 == 24 * 2 * 8 * 14336
    add_lora(tr, cfg, name="x", seed=None)  # peft builds the layers on the meta device
    trainable = sum(p.numel() for p in tr.parameters() if p.requires_grad)
    assert trainable == 5_505_024


def test_target_selection():
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel

    with torch.device("meta"):
        tr = AceStepTransformer1DModel()
    cross_qk = LoraConfig(rank=4, targets=("cross_attn",), projections=("q", "k"))
    names = target_modules(tr, cross_qk)
    assert names[:2] == ["layers.0.cross_attn.to_q", "layers.0.cross_attn.to_k"] and len(names) == 48
    assert lora_parameter_count(tr, cross_qk) == 24 * 4 * ((2048 + 2048) + (2048 + 1024))
    mlp = LoraConfig(rank=2, targets=(), projections=(), mlp=True, layers=(0, 23))
    assert target_modules(tr, mlp) == [
        f"layers.{i}.mlp.{p}" for i in (0, 23) for p in ("gate_proj", "up_proj", "down_proj")
    ]
    assert lora_parameter_count(tr, mlp) == 2 * 2 * 3 * (2048 + 6144)
    with pytest.raises(ValueError, match="targets"):
        LoraConfig(targets=("attn",))
    with pytest.raises(IndexError, match="out of range"):
        target_modules(tr, LoraConfig(layers=(24,)))


@pytest.fixture(scope="module")
def base():
    import attnlens as al

    pipe = al.models.tiny_pipeline(seed=0)
    return pipe.transformer.config, {k: v.clone() for k, v in pipe.transformer.state_dict().items()}


def _fresh(base):
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel

    config, sd = base
    tr = AceStepTransformer1DModel.from_config(config)
    tr.load_state_dict(sd)
    return tr.eval()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.full((1,), 0.75)
    return dict(hidden_states=torch.randn(1, 20, 8, generator=g), timestep=t, timestep_r=t,
                encoder_hidden_states=torch.randn(1, 12, 64, generator=g),
                context_latents=torch.randn(1, 20, 16, generator=g), return_dict=False)  # fmt: skip


def _perturb(tr, name, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(tr, name).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_gradients_only_on_lora_and_adapter_off_is_bitwise_base(base):
    tr = _fresh(base)
    kw = _inputs()
    with torch.no_grad():
        y_base = tr(**kw)[0]
    add_lora(tr, LoraConfig(rank=4, alpha=8), name="a")
    with torch.no_grad():
        assert torch.equal(tr(**kw)[0], y_base)  # B = 0 at init
    _perturb(tr, "a", 1)
    tr.train()
    out = tr(**kw)[0]
    out.square().mean().backward()
    with_grad = {n for n, p in tr.named_parameters() if p.grad is not None}
    assert with_grad == set(lora_parameters(tr, "a"))
    assert all(float(p.grad.abs().sum()) > 0 for p in lora_parameters(tr, "a").values())
    tr.eval()
    with torch.no_grad():
        y_lora = tr(**kw)[0]
        assert not torch.equal(y_lora, y_base)
        tr.disable_adapters()
        assert torch.equal(tr(**kw)[0], y_base)
        tr.enable_adapters()
        assert torch.equal(tr(**kw)[0], y_lora)


def test_saved_adapter_loads_with_diffusers(base, tmp_path):
    tr = _fresh(base)
    add_lora(tr, LoraConfig(rank=4, alpha=6, targets=("cross_attn",)), name="a")
    _perturb(tr, "a", 2)
    kw = _inputs(1)
    with torch.no_grad():
        y = tr(**kw)[0]
    save_adapter(tr, str(tmp_path / "ad"), "a")
    other = _fresh(base)
    other.load_lora_adapter(str(tmp_path / "ad"), adapter_name="loaded", use_safetensors=True)
    with torch.no_grad():
        assert torch.equal(other(**kw)[0], y)


def test_combine_adapters_is_exact(base, tmp_path):
    tr = _fresh(base)
    add_lora(tr, LoraConfig(rank=4, alpha=8), name="a")
    add_lora(tr, LoraConfig(rank=2, alpha=6, targets=("cross_attn",)), name="b")  # fewer modules, other scale
    _perturb(tr, "a", 3)
    _perturb(tr, "b", 4)
    pa, pb = save_adapter(tr, str(tmp_path / "a"), "a"), save_adapter(tr, str(tmp_path / "b"), "b")
    w = {"a": 0.3, "b": -1.7}
    combine_adapters({"a": pa, "b": pb}, weights=w, out=str(tmp_path / "ab64"), dtype=torch.float64)
    combine_adapters({"a": pa, "b": pb}, weights=w, out=str(tmp_path / "ab"))  # float32 storage
    da, db = delta_weights(pa), delta_weights(pb)
    d64, d32 = delta_weights(str(tmp_path / "ab64")), delta_weights(str(tmp_path / "ab"))
    assert set(d64) == set(da) and set(db) < set(da)
    for m in d64:
        expect = w["a"] * da[m] + (w["b"] * db[m] if m in db else 0)
        scale = float(expect.abs().max())
        assert torch.max(torch.abs(d64[m] - expect)) <= 1e-13 * scale  # exact up to float64 rounding
        assert torch.max(torch.abs(d32[m] - expect)) <= 1e-6 * scale  # B rounded once to float32
    # averaging the factors instead would be wrong: (wa·Ba + wb·Bb)(Aa + Ab)-style mixing has cross terms
    m = next(iter(db))
    sa, sb = read_adapter(pa)[0], read_adapter(pb)[0]
    mixed = (sa[m + ".lora_B.weight"][:, :2].double() + sb[m + ".lora_B.weight"].double()) @ (
        sa[m + ".lora_A.weight"][:2].double() + sb[m + ".lora_A.weight"].double()
    )
    assert torch.max(torch.abs(mixed - (w["a"] * da[m] + w["b"] * db[m]))) > 1e-3
    # peer check: peft's weighted multi-adapter forward computes Σ w_i s_i B_i A_i x
    kw = _inputs(2)
    tr.set_adapters(["a", "b"], [w["a"], w["b"]])
    with torch.no_grad():
        y_peft = tr(**kw)[0]
    other = _fresh(base)
    other.load_lora_adapter(str(tmp_path / "ab"), adapter_name="ab", use_safetensors=True)
    with torch.no_grad():
        y_comb = other(**kw)[0]
    assert torch.max(torch.abs(y_comb - y_peft)) < 1e-5
    assert torch.max(torch.abs(y_comb - _fresh(base)(**kw)[0])) > 1e-3  # the combination did something


def test_combine_rejects_mismatched_weights(tmp_path):
    with pytest.raises(ValueError, match="exactly the adapters"):
        combine_adapters({"a": str(tmp_path)}, weights={"b": 1.0})
