# ruff: noqa: B018  (a bare expression at the end of a cell is what the notebook displays)
# %% [markdown]
# # Per-head analysis: which heads follow the lyrics?
#
# The study behind attnlens compared five model variants head by head. This notebook does the same on the
# embedded demo model: several captures of the same lyrics side by side with `al.plot.compare` (here
# different seeds and voices stand in for model variants), then head rankings with
# `al.find_alignment_heads` and `al.head_report`.

# %%
# %matplotlib inline
import pandas as pd
import torch

import attnlens as al

pipe = al.models.demo_pipeline()
lyrics = "[verse]\nsun moon star sky road"
runs = {
    "seed 0": ("warm voice, folk", 0),
    "seed 1": ("warm voice, folk", 1),
    "seed 2": ("warm voice, folk", 2),
    "bright": ("bright voice, rock", 0),
    "airy": ("airy voice, jazz", 0),
}
caps = {}
for name, (prompt, seed) in runs.items():
    with al.capture(pipe, steps=[-1], maps=True) as cap:
        pipe(
            prompt=prompt,
            lyrics=lyrics,
            audio_duration=4.0,
            num_inference_steps=8,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
        )
    caps[name] = cap

# %% [markdown]
# ## Five-way panels
#
# One map per variant on one colour scale; with `reference=` a second row shows each variant minus the
# reference. The token axis must match, so compare captures of the same lyrics.

# %%
al.plot.compare(caps, step=-1, layer=2, head=5, normalize="lyric", reference="seed 0")

# %%
al.plot.compare(caps, step=-1, layer=None, head=None, normalize="lyric")  # mean over every layer and head

# %% [markdown]
# ## Ranking heads
#
# `al.find_alignment_heads` ranks (layer, head) pairs by `monotonic_alignment_sung` (docs/metrics). It needs
# only per-frame statistics; the result can be passed to `al.align` as `heads=`.

# %%
best = al.find_alignment_heads(caps["seed 0"], top_k=5)
best

# %%
aln = al.align(caps["seed 0"], heads=best, step=-1)
[(w.word, round(w.start, 2), round(w.end, 2)) for w in aln.words]

# %% [markdown]
# `al.head_report` adds the top heads by several metrics, the most collapsed heads and the sink tokens.

# %%
rep = al.head_report(caps["seed 0"], step=-1, top_k=3)
print(rep.meta)
print("sinks:", rep.sink_tokens)
rep.to_dataframe().sort_values("dominant_fraction", ascending=False).head()

# %% [markdown]
# The same table for every variant, and the heads on which the variants disagree most:

# %%
tables = {n: al.analyze(c).set_index(["layer", "head"])["monotonic_alignment_sung"] for n, c in caps.items()}
wide = pd.DataFrame(tables)
wide.assign(spread=wide.max(axis=1) - wide.min(axis=1)).sort_values("spread", ascending=False).head()
