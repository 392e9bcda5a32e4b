"""Training: LoRA on the DiT attention, flow matching on the turbo schedule, entropy regularization.

::

    cfg = al.train.LoraConfig(rank=8, alpha=16, targets=("self_attn", "cross_attn"), projections=("q", "k", "v", "o"))
    al.train.add_lora(pipe, cfg, name="clean_vocals")
    ds = al.train.AudioLyricsDataset.from_folder("data/")
    trainer = al.train.Trainer(pipe, cfg, ds, entropy_weight=0.02, entropy_keys="lyrics", out_dir="runs/x",
                               adapter_name="clean_vocals")
    trainer.fit()
    pipe.transformer.load_lora_adapter("runs/x/adapter", adapter_name="x", use_safetensors=True)
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_NAMES: dict[str, str] = {
    "LoraConfig": "lora",
    "add_lora": "lora",
    "target_modules": "lora",
    "lora_parameter_count": "lora",
    "lora_parameters": "lora",
    "save_adapter": "lora",
    "read_adapter": "lora",
    "AdapterFileError": "lora",
    "delta_weights": "lora",
    "combine_adapters": "lora",
    "AudioLyricsDataset": "data",
    "Sample": "data",
    "DatasetError": "data",
    "PreparedDataset": "data",
    "prepare": "data",
    "sung_words": "data",
    "gtsinger_words": "data",
    "CheckpointError": "checkpoint",
    "Trainer": "trainer",
    "TrainConfig": "trainer",
    "train_lora": "trainer",
    "turbo_timesteps": "flow",
    "sample_times": "flow",
    "noisy_latents": "flow",
    "velocity_target": "flow",
    "flow_matching_loss": "flow",
    "encode_condition": "conditioning",
    "context_latents": "conditioning",
}

__all__ = sorted(_NAMES)


__getattr__, __dir__ = lazy_attributes(__name__, {name: (f".{mod}", name) for name, mod in _NAMES.items()}, globals())
