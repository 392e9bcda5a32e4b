"""The training loop on the tiny pipeline: loss goes down, exact resume (in-process and after SIGKILL),
the saved adapter reproduces the trainer's model, the entropy penalty lowers entropy, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import attnlens.captures  # noqa: F401  (import order)
from attnlens.train.data import AudioLyricsDataset
from attnlens.train.lora import LoraConfig
from attnlens.train.trainer import Trainer, _step_generator

torch.set_num_threads(1)
T = 24  # latent frames (12 DiT frames)


@pytest.fixture(scope="module")
def base():
    import attnlens as al

    pipe = al.models.tiny_pipeline(seed=0)
    return pipe, {k: v.clone() for k, v in pipe.transformer.state_dict().items()}


def _pipe(base):
    """The module's pipeline with a fresh copy of the base transformer (no adapters)."""
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel

    pipe, sd = base
    tr = AceStepTransformer1DModel.from_config(pipe.transformer.config)
    tr.load_state_dict(sd)
    pipe.transformer = tr.eval()
    return pipe


def _items(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randn(T, 8, generator=g)
    return [
        {
            "key": f"s{i}",
            "latents": pattern * (1 + 0.1 * i),
            "lyrics": f"[verse]\nsing number {i} tonight",
            "caption": "bright pop",
        }  # fmt: skip
        for i in range(n)
    ]


def _eval_loss(trainer, n=6):
    trainer.model.eval()
    with torch.no_grad():
        losses = [float(trainer._micro_step([trainer.data[i % len(trainer.data)]], [_step_generator(123, i)])["fm_loss"])
                  for i in range(n)]  # fmt: skip
    return sum(losses) / n


def test_loss_goes_down_and_gradients_only_on_lora(base, tmp_path):
    pipe = _pipe(base)
    ds = AudioLyricsDataset.from_latents(_items())
    tr = Trainer(pipe, LoraConfig(rank=8, alpha=8), ds, out_dir=str(tmp_path), steps=25, lr=3e-3, save_every=25,
                 progress=False, time_sampling="uniform")  # fmt: skip
    before = _eval_loss(tr)
    tr.fit()
    after = _eval_loss(tr)
    assert after < 0.7 * before, (before, after)
    trainable = {n for n, p in pipe.transformer.named_parameters() if p.requires_grad}
    assert trainable == set(tr.params) and all(".lora_" in n for n in trainable)
    assert all(not p.requires_grad for p in pipe.condition_encoder.parameters())
    rows = open(tmp_path / "metrics.csv").read().strip().splitlines()
    assert len(rows) == 26 and rows[0].startswith("step,loss,fm_loss")
    assert (tmp_path / "loss.png").stat().st_size > 1000


def _final_adapter(path):
    return load_file(os.path.join(path, "adapter", "pytorch_lora_weights.safetensors"))


def test_resume_is_bitwise_equal_and_adapter_reproduces_outputs(base, tmp_path):
    kw = dict(steps=6, save_every=2, lr=2e-3, progress=False, entropy_weight=0.05, entropy_keys="lyrics",
              grad_accum=2, batch_size=2, warmup_steps=2, lr_schedule="cosine", seed=7)  # fmt: skip
    lora = LoraConfig(rank=4, alpha=8, dropout=0.1)  # dropout draws from the global RNG: restored on resume
    ds = AudioLyricsDataset.from_latents(_items(4))
    full = Trainer(_pipe(base), lora, ds, out_dir=str(tmp_path / "full"), **kw)
    full.fit()
    ref = _final_adapter(str(tmp_path / "full"))

    cut = Trainer(_pipe(base), lora, ds, out_dir=str(tmp_path / "cut"), **kw)
    torch.manual_seed(999)  # a different global RNG state before the "crash"
    assert cut.fit(stop_at=3) == ""  # killed after step 3; the newest checkpoint is step 2
    assert sorted(os.listdir(tmp_path / "cut" / "checkpoints")) == ["latest", "step_00000002"]
    pipe = _pipe(base)
    again = Trainer(pipe, lora, ds, out_dir=str(tmp_path / "cut"), **kw)
    out = again.fit()
    got = _final_adapter(str(tmp_path / "cut"))
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    steps = [int(r.split(",")[0]) for r in open(tmp_path / "cut" / "metrics.csv").read().strip().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]

    # the saved adapter, loaded the standard diffusers way, reproduces the trainer's model
    fresh = _pipe(base)
    fresh.transformer.load_lora_adapter(out, adapter_name="loaded", use_safetensors=True)
    g = torch.Generator().manual_seed(5)
    t = torch.full((1,), 0.5)
    inp = dict(hidden_states=torch.randn(1, T, 8, generator=g), timestep=t, timestep_r=t,
               encoder_hidden_states=torch.randn(1, 10, 64, generator=g),
               context_latents=torch.randn(1, T, 16, generator=g), return_dict=False)  # fmt: skip
    pipe.transformer.eval()
    with torch.no_grad():
        assert torch.equal(fresh.transformer(**inp)[0], pipe.transformer(**inp)[0])


def test_accumulation_equals_one_big_batch(base, tmp_path):
    """Item j's noise and time depend only on (seed, j): batch 4 equals 2 accumulated batches of 2 (the same
    split DDP makes across processes), up to the order of floating-point sums."""
    kw = dict(steps=3, save_every=3, lr=2e-3, progress=False, entropy_weight=0.05, entropy_keys="lyrics",
              warmup_steps=1, seed=3)  # fmt: skip
    ds = AudioLyricsDataset.from_latents(_items(5))
    lora = LoraConfig(rank=4, alpha=8)
    Trainer(_pipe(base), lora, ds, out_dir=str(tmp_path / "big"), batch_size=4, grad_accum=1, **kw).fit()
    Trainer(_pipe(base), lora, ds, out_dir=str(tmp_path / "acc"), batch_size=2, grad_accum=2, **kw).fit()
    Trainer(_pipe(base), lora, ds, out_dir=str(tmp_path / "other"), batch_size=4, grad_accum=1,
            **{**kw, "seed": 4}).fit()  # fmt: skip
    a, b, c = (_final_adapter(str(tmp_path / n)) for n in ("big", "acc", "other"))
    same = max(float((a[k] - b[k]).abs().max()) for k in a)
    other = max(float((a[k] - c[k]).abs().max()) for k in a)
    assert same < 1e-5 and other > 1e-3, (same, other)


def test_entropy_penalty_lowers_entropy(base, tmp_path):
    KEYS = "all"
    from attnlens.reducers.differentiable import EntropyTap

    ds = AudioLyricsDataset.from_latents(_items(2))

    def lyric_entropy(trainer):
        it = trainer.data[0]
        with (
            torch.no_grad(),
            EntropyTap(trainer.pipe.transformer, keys=KEYS, lyric_positions=[it.lyric_positions]) as tap,
        ):
            trainer._micro_step([it], [_step_generator(0, 0)])
            return float(tap.mean())

    def run(weight, out):
        tr = Trainer(_pipe(base), LoraConfig(rank=4, alpha=8, targets=("cross_attn",)), ds, out_dir=str(out),
                     steps=15, lr=3e-2, entropy_weight=weight, entropy_keys=KEYS, save_every=15, progress=False)  # fmt: skip
        before = lyric_entropy(tr)
        tr.fit()
        return before, lyric_entropy(tr)

    # the tiny random model's keys are nearly alike (entropy ~0.999): effects are small but clear
    before, penalized = run(100.0, tmp_path / "pen")
    _, control = run(0.0, tmp_path / "ctrl")
    assert penalized < before - 2e-4 and penalized < control - 2e-4, (before, penalized, control)


def test_lyric_entropy_gradient_step_through_the_model(base, tmp_path):
    """A small step along -∂(lyric entropy)/∂(LoRA) lowers the lyric-only entropy of the whole model by about
    lr·|grad|² (first order): the penalty's gradient reaches the LoRA through the hooks with the right sign."""
    from attnlens.reducers.differentiable import EntropyTap

    ds = AudioLyricsDataset.from_latents(_items(1))
    tr = Trainer(_pipe(base), LoraConfig(rank=4, alpha=8), ds, out_dir=str(tmp_path), steps=1, progress=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tr.params.values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    it = tr.data[0]

    def value():
        with EntropyTap(tr.pipe.transformer, keys="lyrics", lyric_positions=[it.lyric_positions]) as tap:
            tr._micro_step([it], [_step_generator(0, 0)])
            return tap.mean()

    tr.model.eval()
    h0 = value()
    grads = torch.autograd.grad(h0, list(tr.params.values()), allow_unused=True)
    grads = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(tr.params.values(), grads)]
    sq = sum(float((gr * gr).sum()) for gr in grads)
    lr = 2e-5 / max(sq, 1e-30)  # predicted decrease 2e-5
    with torch.no_grad():
        for p, gr in zip(tr.params.values(), grads):
            p -= lr * gr
        h1 = value()
    predicted = lr * sq
    assert sq > 0
    assert abs((float(h0) - float(h1)) - predicted) < 0.2 * predicted, (float(h0) - float(h1), predicted)


def test_attention_summary_is_logged(base, tmp_path):
    ds = AudioLyricsDataset.from_latents(_items(1))
    tr = Trainer(_pipe(base), LoraConfig(rank=2, alpha=2), ds, out_dir=str(tmp_path), steps=2, val_every=2,
                 val_seconds=1.0, save_every=2, progress=False)  # fmt: skip
    tr.fit()
    import json

    row = json.loads((tmp_path / "attention.jsonl").read_text().strip())
    assert row["step"] == 2 and len(row["lyric_mass_per_layer"]) == 8
    assert 0 < row["val_lyric_mass"] < 1 and 0 < row["val_entropy"] <= 1


def _latent_folder(path, items, lyrics=None):
    path.mkdir(parents=True, exist_ok=True)
    for it in items:
        save_file({"latents": it["latents"].contiguous()}, str(path / f"{it['key']}.latents.safetensors"))
        (path / f"{it['key']}.lyrics.txt").write_text(lyrics if lyrics is not None else it["lyrics"])
        (path / f"{it['key']}.caption.txt").write_text(it["caption"])


def test_cli_refuses_tag_only_lyrics(tmp_path, capsys):
    from attnlens.cli import main

    _latent_folder(tmp_path / "data", _items(2), lyrics="[verse]\n[chorus]")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: tiny\ndata:\n  folder: {tmp_path / 'data'}\ntrain:\n  out_dir: {tmp_path / 'out'}\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "2 of 2 samples have no sung words" in err


@pytest.mark.slow
def test_sigkill_and_resume_via_cli(tmp_path):
    """Kill a CLI run with SIGKILL mid-way, resume it, and compare with an uninterrupted CLI run (bitwise)."""
    _latent_folder(tmp_path / "data", _items(3))

    def cfg(name):
        p = tmp_path / f"{name}.yaml"
        p.write_text(
            f"model: tiny\ndata:\n  folder: {tmp_path / 'data'}\nlora: {{rank: 4, alpha: 8, dropout: 0.1}}\n"
            f"train: {{out_dir: {tmp_path / name}, steps: 40, save_every: 5, lr: 0.002, progress: false,"
            " entropy_weight: 0.05}\n"
        )
        return str(p)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "attnlens", "train", "--config"]
    subprocess.run(cmd + [cfg("full")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd + [cfg("cut")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "cut" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline:
        if latest.exists() and latest.read_text().strip() >= "step_00000010":
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "adapter").exists()
    subprocess.run(cmd + [cfg("cut")], check=True, env=env, capture_output=True)
    a, b = _final_adapter(str(tmp_path / "full")), _final_adapter(str(tmp_path / "cut"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
