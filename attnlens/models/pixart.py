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


def plant_word_region(
    pipe,
    word: str,
    rows: tuple[int, int],
    cols: tuple[int, int],
    alpha: float = 2.0,
    beta: float = 10.0,
    mark: float = 10.0,
    seed: int = 0,
) -> torch.Tensor:
    """Hand-set the weights of a tiny PixArt pipeline (in place) so that layer 0's cross-attention sends the patches
    of ``rows × cols`` (half-open patch ranges) to ``word``'s token; returns the initial latents to pass as
    ``latents=`` (at the pipeline's default size), which mark the region. A case whose answer is known, for tests
    and the gallery.

    How: the T5 blocks add nothing and every token embedding but the word's is zero, so every key of layer 0's
    ``attn2`` is 0 but the word's (biases zeroed along the way); layer 0's self-attention adds nothing, so its
    ``attn2`` reads the patch embedding, whose channel 0 is made the patch's mean of latent channel 0 (``mark`` in
    the region, 0 elsewhere) plus the position embedding's channel 0, ``pos``; its queries give the logit
    ``alpha · (mark · in_region + pos) − beta`` with the word's key and 0 with every other. At the first step the
    word's probability at a patch is therefore ``e^z / (e^z + m − 1)`` over the ``m`` keys the prompt's mask keeps.
    ``word`` must be one token of the pipeline's tokenizer."""
    ids = pipe.tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"{word!r} is {len(ids)} tokens of this tokenizer; plant a word that is one token")
    tr, te = pipe.transformer, pipe.text_encoder
    attn = tr.transformer_blocks[0].attn2
    heads, head_dim = attn.heads, attn.to_q.out_features // attn.heads
    with torch.no_grad():
        for blk in te.encoder.block:  # the encoder's output is its RMS-normed input embedding
            blk.layer[0].SelfAttention.o.weight.zero_()
            blk.layer[1].DenseReluDense.wo.weight.zero_()
        keep = te.shared.weight[ids[0]].clone()
        te.shared.weight.zero_()
        te.shared.weight[ids[0]] = keep
        cp = tr.caption_projection
        cp.linear_1.bias.zero_()
        cp.linear_2.bias.zero_()
        attn.to_k.bias.zero_()
        self_out = tr.transformer_blocks[0].attn1.to_out[0]
        self_out.weight.zero_()
        self_out.bias.zero_()
        proj = tr.pos_embed.proj
        p = proj.kernel_size[0]
        proj.weight.zero_()
        proj.bias.zero_()
        proj.weight[0, 0] = 1.0 / (p * p)  # channel 0: the patch's mean of latent channel 0
        k = attn.to_k(cp(te(torch.tensor([ids])).last_hidden_state))[0, 0]  # the word's key [heads · head_dim]
        attn.to_q.weight.zero_()
        attn.to_q.bias.zero_()
        for h in range(heads):
            part = slice(h * head_dim, (h + 1) * head_dim)
            u = k[part] / (k[part] @ k[part]) * head_dim**0.5  # q = c · u gives the logit c (SDPA divides by √D)
            attn.to_q.weight[part, 0] = alpha * u
            attn.to_q.bias[part] = -beta * u
    size = tr.config.sample_size
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, tr.config.in_channels, size, size, generator=g)
    latents[:, 0] = 0.0
    latents[:, 0, rows[0] * p : rows[1] * p, cols[0] * p : cols[1] * p] = mark
    return latents
