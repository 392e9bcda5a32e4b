"""A complete, offline ``diffusers.StableAudioPipeline`` with tiny configs and random weights.

Same classes as the real model (``StableAudioDiTModel``, ``StableAudioProjectionModel``, a T5 encoder,
``AutoencoderOobleck``, ``CosineDPMSolverMultistepScheduler``), the real time base (44.1 kHz audio, VAE hop 2048 →
latents at 44100 / 2048 ≈ 21.53 Hz, one cross-attention query per latent) and the real head ratio (GQA: twice as
many query heads as KV heads), with 2 layers and small widths so it runs on a CPU in seconds. The tokenizer is an
offline T5-style unigram model (:mod:`attnlens.models.t5_tokenizer`: ``▁``-marked words, ``<pad>`` 0, a closing
``</s>`` 1, ``<unk>`` 2) with a short ``model_max_length`` (16; the real one is 128) so that prompts are padded.

For real weights use the documented diffusers path::

    from diffusers import StableAudioPipeline
    pipe = StableAudioPipeline.from_pretrained("<a Stable Audio Open diffusers checkpoint>", torch_dtype=torch.float16)
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch

from .t5_tokenizer import t5_style_tokenizer, tiny_t5_encoder

SAMPLE_RATE = 44100
DOWNSAMPLING = (2, 4, 4, 8, 8)  # product 2048: Stable Audio Open's VAE hop


@dataclass(frozen=True)
class TinyStableAudioConfig:
    """Sizes of the tiny Stable Audio pipeline (the real model's values in comments)."""

    layers: int = 2  # 24
    heads: int = 4  # 24
    kv_heads: int = 2  # 12
    head_dim: int = 16  # 64 (a power of two >= 16: the statistics kernel's smallest)
    latent_channels: int = 4  # 64
    sample_size: int = 64  # 1024 latents (47.5 s); 64 latents ≈ 2.97 s
    conditioning_dim: int = 32  # 768: the cross-attention keys' width, kv_heads x head_dim as in the real model
    text_hidden: int = 32  # 768 (T5-base; equal to conditioning_dim, so the text projection is the identity)
    text_layers: int = 1  # 12
    vae_channels: int = 4  # 128
    max_tokens: int = 16  # 128 (T5's model_max_length in the real pipeline)


def build_stable_audio_components(config: TinyStableAudioConfig | None = None, seed: int = 0) -> dict:
    """The pipeline's components (random weights, deterministic for ``seed``, the global RNG left as it was)."""
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioProjectionModel,
    )

    c = config or TinyStableAudioConfig()
    tokenizer = t5_style_tokenizer(c.max_tokens)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        transformer = StableAudioDiTModel(
            sample_size=c.sample_size,
            in_channels=c.latent_channels,
            num_layers=c.layers,
            attention_head_dim=c.head_dim,
            num_attention_heads=c.heads,
            num_key_value_attention_heads=c.kv_heads,
            out_channels=c.latent_channels,
            cross_attention_dim=c.conditioning_dim,
            time_proj_dim=8,
            global_states_input_dim=2 * c.conditioning_dim,  # seconds_start and seconds_end embeddings, side by side
            cross_attention_input_dim=c.conditioning_dim,
        )
        text_encoder = tiny_t5_encoder(tokenizer, c.text_hidden, c.text_layers)
        projection_model = StableAudioProjectionModel(
            text_encoder_dim=c.text_hidden, conditioning_dim=c.conditioning_dim, min_value=0, max_value=512
        )
        with warnings.catch_warnings():  # diffusers' Oobleck still uses the deprecated weight_norm helper
            warnings.simplefilter("ignore", FutureWarning)
            vae = AutoencoderOobleck(
                encoder_hidden_size=2 * c.latent_channels,  # the encoder emits mean and scale of each latent
                downsampling_ratios=list(DOWNSAMPLING),
                channel_multiples=[1, 1, 1, 1, 1],
                decoder_channels=c.vae_channels,
                decoder_input_channels=c.latent_channels,
                audio_channels=2,
                sampling_rate=SAMPLE_RATE,
            )
    finally:
        torch.random.set_rng_state(state)
    scheduler = CosineDPMSolverMultistepScheduler(
        sigma_min=0.3, sigma_max=500, sigma_data=1.0, solver_order=2, prediction_type="v_prediction"
    )
    for m in (transformer, text_encoder, projection_model, vae):
        m.eval()
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "projection_model": projection_model,
        "tokenizer": tokenizer,
        "transformer": transformer,
        "scheduler": scheduler,
    }


def tiny_stable_audio_pipeline(seed: int = 0, config: TinyStableAudioConfig | None = None, progress: bool = False):
    """A real ``diffusers.StableAudioPipeline`` with tiny configs and random weights, fully offline.

    Deterministic for ``seed``. Latents at 44100 / 2048 Hz (``config.sample_size`` of them: about 3 s by default);
    ``guidance_scale > 1`` doubles the transformer's batch (unconditional half first, as the real pipeline does)::

        pipe = al.models.tiny_stable_audio_pipeline(seed=0)
        pipe(prompt="warm piano", audio_end_in_s=2.0, num_inference_steps=4, guidance_scale=1.0)
    """
    from diffusers import StableAudioPipeline

    pipe = StableAudioPipeline(**build_stable_audio_components(config, seed))
    pipe.set_progress_bar_config(disable=not progress)
    pipe.attnlens_config = asdict(config or TinyStableAudioConfig())
    return pipe


def stable_audio_transformer(full_size: bool = True, dtype: torch.dtype = torch.bfloat16, device: str = "cpu"):
    """A ``StableAudioDiTModel`` with random weights: diffusers' default config (Stable Audio Open's size: 24 layers,
    24 query / 12 KV heads of 64, ~1.05 B parameters) or the tiny one (``full_size=False``), for benchmarks."""
    if not full_size:
        return build_stable_audio_components()["transformer"].to(device=device, dtype=dtype)
    from diffusers import StableAudioDiTModel

    with torch.device(device):
        model = StableAudioDiTModel()
    return model.to(dtype).eval()
