"""A complete, offline ``diffusers.PixArtSigmaPipeline`` with tiny configs and random weights.

Same classes as the real model (``PixArtTransformer2DModel``, a T5 encoder, ``AutoencoderKL``, the
``DPMSolverMultistepScheduler`` PixArt-Σ ships with), the real geometry (a VAE that downsamples by 8, latents cut
into 2 × 2 patches: a 256 × 256 image is a 32 × 32 latent and a 16 × 16 grid of cross-attention queries) and the
real kind of keys (T5 tokens padded on the right, closed by ``</s>``, the padding masked out), with 2 layers and
small widths so it runs on a CPU in a fraction of a second. The tokenizer is the offline T5-style unigram model of
:mod:`attnlens.models.t5_tokenizer`; the pipeline pads prompts to its ``max_sequence_length`` argument (300 by
default, as PixArt-Σ).

Its pictures are noise shaped by random weights: they show where the attention goes, not what a prompt means.
For real weights use the documented diffusers path::

    from diffusers import PixArtSigmaPipeline
    pipe = PixArtSigmaPipeline.from_pretrained("<a PixArt-Sigma diffusers checkpoint>", torch_dtype=torch.float16)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .t5_tokenizer import t5_style_tokenizer, tiny_t5_encoder


@dataclass(frozen=True)
class TinyPixArtConfig:
    """Sizes of the tiny PixArt pipeline (PixArt-Σ-XL-2's values in comments)."""

    layers: int = 2  # 28
    heads: int = 4  # 16
    head_dim: int = 16  # 72 (16: the statistics kernel's smallest power of two)
    sample_size: int = 32  # 128 latents (1024 px); 32 latents = 256 px, a 16 x 16 grid of patches
    patch_size: int = 2  # 2
    latent_channels: int = 4  # 4
    text_hidden: int = 32  # 4096 (T5-XXL's width: the transformer's caption_channels)
    text_layers: int = 1  # 24
    vae_channels: int = 8  # 128 .. 512
    max_tokens: int = 16  # the tokenizer's model_max_length (the pipeline pads to max_sequence_length instead)


def build_pixart_components(config: TinyPixArtConfig | None = None, seed: int = 0) -> dict:
    """The pipeline's components (random weights, deterministic for ``seed``, the global RNG left as it was)."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel

    c = config or TinyPixArtConfig()
    tokenizer = t5_style_tokenizer(c.max_tokens)
    inner = c.heads * c.head_dim
    with torch.random.fork_rng(devices=[]):  # the global RNG left as it was
        torch.manual_seed(seed)
        transformer = PixArtTransformer2DModel(
            num_attention_heads=c.heads,
            attention_head_dim=c.head_dim,
            in_channels=c.latent_channels,
            out_channels=2 * c.latent_channels,  # PixArt learns the variance: noise and variance channels
            num_layers=c.layers,
            cross_attention_dim=inner,  # the caption projection maps T5's width to the transformer's
            sample_size=c.sample_size,
            patch_size=c.patch_size,
            caption_channels=c.text_hidden,
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        )
        text_encoder = tiny_t5_encoder(tokenizer, c.text_hidden, c.text_layers)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,  # 4 blocks: downsampling by 2**3 = 8, as the real VAE
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[c.vae_channels] * 4,
            layers_per_block=1,
            latent_channels=c.latent_channels,
            norm_num_groups=min(4, c.vae_channels),
            sample_size=c.sample_size * 8,
        )
    for m in (transformer, text_encoder, vae):
        m.eval()
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "transformer": transformer,
        "scheduler": DPMSolverMultistepScheduler(),  # PixArt-Σ's scheduler (DPM-Solver++, order 2, linear betas)
    }


def tiny_pixart_pipeline(seed: int = 0, config: TinyPixArtConfig | None = None, progress: bool = False):
    """A real ``diffusers.PixArtSigmaPipeline`` with tiny configs and random weights, fully offline.

    Deterministic for ``seed``. 256 × 256 images by default (a 16 × 16 grid of queries); ``guidance_scale > 1``
    doubles the transformer's batch (the negative prompt's rows first, as the real pipeline does). Pass
    ``clean_caption=False`` (cleaning needs ``bs4`` and ``ftfy``) and a short ``max_sequence_length`` to keep the keys
    few::

        pipe = al.models.tiny_pixart_pipeline(seed=0)
        image = pipe("a red cat on a blue sofa", num_inference_steps=4, clean_caption=False,
                     max_sequence_length=16).images[0]
    """
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline(**build_pixart_components(config, seed))
    pipe.set_progress_bar_config(disable=not progress)
    pipe.attnlens_config = asdict(config or TinyPixArtConfig())
    return pipe
