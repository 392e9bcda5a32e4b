"""The embedded demo model: a small ACE-Step pipeline trained on the "tiny songs" task.

Same classes as the real model (``AceStepTransformer1DModel``, ``AceStepConditionEncoder``, a Qwen3 text encoder,
``AutoencoderOobleck``, ``FlowMatchEulerDiscreteScheduler``, turbo), at a small size (:data:`DEMO_CONFIG`: 4 DiT
layers, hidden 128, 8 query heads sharing 4 KV heads, head_dim 16). It was trained with flow matching on
:class:`attnlens.demo.task.TinySongs` (``scripts/train_demo.py``) and "sings" lines written with
:func:`attnlens.models.demo_vocabulary` in latent space; decode its latents with
:class:`attnlens.demo.decoder.WordDecoder` (``output_type="latent"``: the VAE's audio is not meaningful).

The weights ship in ``attnlens/models/data/demo/`` (``model.safetensors``, float16, and ``config.json`` with the
architecture, the task settings and the training record). :func:`demo_pipeline` builds the pipeline offline.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from functools import lru_cache
from importlib import resources
from typing import Any

import torch

from ..files import atomic_write
from .tiny import TinyConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "attnlens.demo_model/1"
COMPONENTS = ("transformer", "condition_encoder", "text_encoder", "vae")
# buffers rebuilt on construction rather than shipped (the silence latent is zeros: uncoloured silence)
_NOT_SHIPPED = ("condition_encoder.silence_latent",)

DEMO_CONFIG = TinyConfig(
    dit_layers=4,
    dit_hidden=128,
    heads=8,
    kv_heads=4,
    head_dim=16,
    intermediate=384,
    acoustic_dim=8,  # = TinySongs channels
    sliding_window=128,  # covers a whole 4 s clip (50 DiT frames)
    text_hidden=32,
    text_layers=1,
    lyric_layers=2,
    timbre_layers=1,
    timbre_dim=8,
    vae_channels=4,
    is_turbo=True,
)


def data_dir() -> str:
    """The folder holding the shipped weights."""
    return str(resources.files("attnlens.models").joinpath("data", "demo"))


def build_demo_components(config: TinyConfig = DEMO_CONFIG, seed: int = 0) -> dict[str, Any]:
    """The pipeline's components with fresh (random, seeded) weights: the starting point of training."""
    from .tiny import build_components

    comps = build_components(config, seed)
    with torch.no_grad():
        comps["condition_encoder"].silence_latent.zero_()
    return comps


def component_state(components: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``{"<component>.<param>": tensor}`` for every shipped tensor (float32, contiguous, CPU)."""
    out = {}
    for name in COMPONENTS:
        for k, v in components[name].state_dict().items():
            key = f"{name}.{k}"
            if key not in _NOT_SHIPPED:
                out[key] = v.detach().float().cpu().contiguous()
    return out


def save_demo_model(
    components: dict[str, Any],
    out_dir: str,
    meta: dict[str, Any],
    config: TinyConfig = DEMO_CONFIG,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write ``model.safetensors`` (``dtype``) and ``config.json`` (``{"format", "model", **meta}``) atomically."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.to(dtype) for k, v in component_state(components).items()}
    doc = {"format": FORMAT, "model": asdict(config), **meta}
    for fname, write in (
        (WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": FORMAT})),
        (CONFIG_FILE, lambda p: open(p, "w", encoding="utf-8").write(json.dumps(doc, indent=1) + "\n")),
    ):
        atomic_write(os.path.join(out_dir, fname), write)


def read_demo_config(path: str | None = None) -> dict[str, Any]:
    """The shipped ``config.json`` (or the one in folder ``path``)."""
    p = os.path.join(path or data_dir(), CONFIG_FILE)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"no demo model config at {p}; run scripts/train_demo.py to build the weights")
    with open(p, encoding="utf-8") as f:
        doc = json.load(f)
    if doc.get("format") != FORMAT:
        raise ValueError(f"{p} has format {doc.get('format')!r}; expected {FORMAT!r}")
    return doc


def _tiny_config(doc: dict[str, Any]) -> TinyConfig:
    known = {f.name for f in fields(TinyConfig)}
    unknown = sorted(set(doc["model"]) - known)
    if unknown:
        raise ValueError(f"demo model config has unknown architecture fields {unknown}")
    return TinyConfig(**doc["model"])


@lru_cache(maxsize=4)
def _state(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(path, WEIGHTS_FILE))


def demo_task(path: str | None = None):
    """The :class:`~attnlens.demo.task.TinySongs` task the demo model was trained on (test split included)."""
    from attnlens.demo.task import TinySongs

    doc = read_demo_config(path)
    cfg = dict(doc["task"])
    for k in ("n_words_range", "word_frames", "gap_frames", "lead_in_frames"):
        cfg[k] = tuple(cfg[k])
    task = TinySongs(**cfg)
    want = doc.get("task_fingerprint")
    if want and task.fingerprint() != want:
        raise RuntimeError(
            "the tiny-songs task rebuilt from the demo config differs from the one the model was trained on "
            f"(fingerprint {task.fingerprint()[:12]} != {want[:12]}): word patterns or voices changed"
        )
    return task


def demo_pipeline(path: str | None = None, device: str | torch.device = "cpu", progress: bool = False):
    """The trained demo model as a ``diffusers.AceStepPipeline`` (float32, eval mode), fully offline.

    ``path``: a folder with ``model.safetensors`` + ``config.json`` (default: the shipped weights). Generate with
    ``output_type="latent"`` and decode the ``[B, T, 8]`` latents with :class:`attnlens.demo.decoder.WordDecoder`::

        pipe = al.models.demo_pipeline()
        lat = pipe(prompt="warm voice, pop", lyrics="[verse]\\nsun moon star sky", audio_duration=4.0,
                   num_inference_steps=8, guidance_scale=1.0, output_type="latent").audios
    """
    from diffusers import AceStepPipeline

    path = os.path.abspath(path or data_dir())
    doc = read_demo_config(path)
    config = _tiny_config(doc)
    comps = build_demo_components(config, seed=0)
    state = _state(path)
    for name in COMPONENTS:
        prefix = name + "."
        sub = {k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)}
        missing, unexpected = comps[name].load_state_dict(sub, strict=False)
        missing = [m for m in missing if f"{name}.{m}" not in _NOT_SHIPPED]
        if missing or unexpected:
            raise RuntimeError(
                f"demo weights at {path} do not fit the {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    pipe = AceStepPipeline(**comps)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress)
    pipe.attnlens_config = asdict(config)
    pipe.attnlens_demo = {k: v for k, v in doc.items() if k != "model"}
    return pipe
