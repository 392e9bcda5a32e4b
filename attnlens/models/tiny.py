"""A complete, offline ``diffusers.AceStepPipeline`` with tiny configs and random weights.

Same classes as the real model (``AceStepTransformer1DModel``, ``AceStepConditionEncoder``, ``AutoencoderOobleck``,
a Qwen3 text encoder, a byte-level BPE tokenizer, ``FlowMatchEulerDiscreteScheduler``), the real time base
(48 kHz audio, VAE hop 1920 -> latents at 25 Hz, DiT patch 2 -> 12.5 Hz cross-attention frames) and the real head
structure per layer (16 query heads, 8 KV heads), with 8 layers and small widths so it runs on a CPU in seconds.

For real weights use the documented diffusers path::

    from diffusers import AceStepPipeline
    pipe = AceStepPipeline.from_pretrained("<ACE-Step 1.5 diffusers checkpoint>", torch_dtype=torch.bfloat16)
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch

from .tokenizer import offline_tokenizer


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the tiny pipeline (the real model's values in comments)."""

    dit_layers: int = 8  # 24
    dit_hidden: int = 64  # 2048
    heads: int = 16  # 16
    kv_heads: int = 8  # 8
    head_dim: int = 8  # 128
    intermediate: int = 128  # 6144
    acoustic_dim: int = 8  # 64
    sliding_window: int = 16  # 128
    text_hidden: int = 32  # 1024 (Qwen3-Embedding-0.6B)
    text_layers: int = 2  # 28
    lyric_layers: int = 2  # 8
    timbre_layers: int = 1  # 4
    timbre_dim: int = 8  # 64
    vae_channels: int = 4  # 128
    is_turbo: bool = True
    encoder_sliding_window: int | None = None  # condition encoder's window (None: same as sliding_window)


def build_components(config: TinyConfig | None = None, seed: int = 0) -> dict:
    """The pipeline's components (random weights, deterministic for ``seed``)."""
    from diffusers import AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import AceStepConditionEncoder
    from transformers import Qwen3Config, Qwen3Model

    c = config or TinyConfig()
    tokenizer = offline_tokenizer()
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        transformer = AceStepTransformer1DModel(
            hidden_size=c.dit_hidden,
            intermediate_size=c.intermediate,
            num_hidden_layers=c.dit_layers,
            num_attention_heads=c.heads,
            num_key_value_heads=c.kv_heads,
            head_dim=c.head_dim,
            in_channels=3 * c.acoustic_dim,  # src latents + chunk mask (context) + noisy latents
            audio_acoustic_hidden_dim=c.acoustic_dim,
            patch_size=2,
            rope_theta=10000.0,
            sliding_window=c.sliding_window,
            encoder_hidden_size=c.dit_hidden,
            is_turbo=c.is_turbo,
            model_version="turbo" if c.is_turbo else "base",
        )
        text_encoder = Qwen3Model(
            Qwen3Config(
                hidden_size=c.text_hidden,
                intermediate_size=2 * c.text_hidden,
                num_hidden_layers=c.text_layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                vocab_size=len(tokenizer),
                max_position_embeddings=2048,
            )
        )
        condition_encoder = AceStepConditionEncoder(
            hidden_size=c.dit_hidden,
            intermediate_size=c.intermediate,
            text_hidden_dim=c.text_hidden,
            timbre_hidden_dim=c.timbre_dim,
            num_lyric_encoder_hidden_layers=c.lyric_layers,
            num_timbre_encoder_hidden_layers=c.timbre_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            rope_theta=10000.0,
            sliding_window=c.sliding_window if c.encoder_sliding_window is None else c.encoder_sliding_window,
        )
        with warnings.catch_warnings():  # diffusers' Oobleck still uses the deprecated weight_norm helper
            warnings.simplefilter("ignore", FutureWarning)
            vae = AutoencoderOobleck(
                encoder_hidden_size=2 * c.acoustic_dim,  # the encoder emits mean and scale: 2 x latent channels
                downsampling_ratios=[2, 4, 4, 6, 10],  # product 1920: 48 kHz / 1920 = 25 latents per second
                channel_multiples=[1, 1, 1, 1, 1],
                decoder_channels=c.vae_channels,
                decoder_input_channels=c.acoustic_dim,
                audio_channels=2,
                sampling_rate=48000,
            )
    finally:
        torch.random.set_rng_state(gen_state)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    for m in (transformer, text_encoder, condition_encoder, vae):
        m.eval()
    return {
        "transformer": transformer,
        "condition_encoder": condition_encoder,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def tiny_pipeline(seed: int = 0, config: TinyConfig | None = None, progress: bool = False):
    """A real ``diffusers.AceStepPipeline`` with tiny configs and random weights, fully offline.

    Deterministic for ``seed`` (weights are drawn without touching the global RNG state). Latents are at a real
    25 Hz and cross-attention frames at 12.5 Hz. Turbo by default (8 steps, shift 3, no CFG).
    """
    from diffusers import AceStepPipeline

    pipe = AceStepPipeline(**build_components(config, seed))
    pipe.set_progress_bar_config(disable=not progress)
    pipe.attnlens_config = asdict(config or TinyConfig())
    return pipe
