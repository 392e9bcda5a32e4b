# ruff: noqa: B018  (a bare expression at the end of a cell is what the notebook displays)
# %% [markdown]
# # An evaluation run with a report
#
# `al.eval.run` generates every (prompt, variant, seed), transcribes the output, scores WER/CER against the
# lyrics and writes each row to `results.csv` as soon as it is done (a rerun resumes). On real audio the
# transcriber is Whisper (`al.eval.Transcriber`); here the embedded demo model generates latents and the demo
# task's word decoder (`attnlens.demo.decoder.WordDecoder`, the demo task's stand-in for Whisper) reads them.

# %%
import pandas as pd
import torch

import attnlens as al
from attnlens.demo.decoder import WordDecoder
from attnlens.models.demo import demo_task

pipe = al.models.demo_pipeline()
decoder = WordDecoder(demo_task())


def transcribe(latents: torch.Tensor) -> str:
    """Latents [time, channels] of one item -> the words the decoder hears."""
    return decoder.decode(latents.float().numpy()).text


suite = al.eval.Suite.from_records(
    [
        {"id": "warm", "caption": "warm voice, folk", "lyrics": "[verse]\nsun moon star sky", "duration": 4},
        {"id": "clear", "caption": "clear voice, jazz", "lyrics": "[verse]\nback sing sweet fast", "duration": 4},
    ],
    name="two-prompts",
)
[(e.id, e.prompt) for e in suite]

# %% [markdown]
# Two variants: the base model, and the same model with a LoRA adapter whose weights we nudge (a freshly added
# adapter is the identity: its `B` factors start at zero). For adapters saved on disk, `al.eval.run` takes
# `variants={"baseline": None, "lora": "runs/x/adapter"}` and switches them itself; here each variant is a pipeline
# of its own, run into its own folder, and the two tables are concatenated.

# %%
nudged = al.models.demo_pipeline()
lora = al.train.LoraConfig(rank=4, alpha=8, targets=("cross_attn",), projections=("q", "k", "v", "o"))
al.train.add_lora(nudged, lora, name="nudged", seed=0)
with torch.no_grad():
    gen = torch.Generator().manual_seed(0)
    for name, p in al.train.lora_parameters(nudged.transformer, "nudged").items():
        if "lora_B" in name:
            p.normal_(0, 0.05, generator=gen)

settings = dict(
    seeds=[0, 1],
    transcriber=transcribe,
    output="latent",
    progress=False,
    generate_kwargs={"num_inference_steps": 8, "guidance_scale": 1.0},
)
res = pd.concat(
    [
        al.eval.run(pipe, suite, variants={"baseline": None}, out_dir="eval-demo/baseline", **settings),
        al.eval.run(nudged, suite, variants={"nudged": None}, out_dir="eval-demo/nudged", **settings),
    ],
    ignore_index=True,
)
res[["prompt_id", "variant", "seed", "wer", "cer", "transcription", "ground_truth"]]

# %% [markdown]
# ## Summaries
#
# Means per variant with a bootstrap interval over prompts, the best variant per prompt, and a paired
# comparison (bootstrap over prompts, Wilcoxon signed-rank test). Two prompts are far too few for real
# conclusions.

# %%
al.eval.summarize(res, n_resamples=1000)

# %%
w = al.eval.winners(res)
w.tally

# %%
al.eval.compare(res, "nudged", "baseline", n_resamples=1000)

# %%
paths = al.eval.write_report(res, "eval-demo", title="two-prompt demo", baseline="baseline")
print(open(paths["markdown"]).read()[:1500])
