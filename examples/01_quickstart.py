# ruff: noqa: B018  (a bare expression at the end of a cell is what the notebook displays)
# %% [markdown]
# # Quickstart: capture, analyze, plot
#
# attnlens records the cross-attention of an ACE-Step pipeline while it generates: for every step, layer and
# head, how much each audio frame attends to each lyric, caption and timbre key. This notebook runs the
# whole loop on the tiny offline pipeline (the real diffusers classes with a small, randomly initialised
# configuration), so it needs no download and no GPU. With random weights there is no alignment to find;
# the numbers show what the tools do, not what a trained model learned.

# %%
# %matplotlib inline
import attnlens as al

pipe = al.models.tiny_pipeline(seed=0)
prompt, lyrics = "folk, warm vocals", "[verse]\nwalking down the morning road"

# %% [markdown]
# ## Capture
#
# `al.capture(pipe)` hooks the cross-attention of every layer for the duration of the `with` block. By
# default it keeps per-frame statistics only (entropy, segment masses, argmax), not the full maps.

# %%
with al.capture(pipe) as cap:
    pipe(
        prompt=prompt,
        lyrics=lyrics,
        audio_duration=4.0,
        num_inference_steps=8,
        guidance_scale=1.0,
        output_type="latent",
    )
print(cap.summary())
print("timesteps:", [round(t, 4) for t in cap.timesteps])

# %% [markdown]
# ## Analyze
#
# `al.analyze` gives one row per (step, layer, batch item, head) with the metrics of `docs/metrics/`.

# %%
df = al.analyze(cap)
print(df.shape)
last = df[df.step == df.step.max()]
last.sort_values("monotonic_alignment_sung", ascending=False)[
    ["layer", "head", "lyric_mass", "entropy_lyric", "monotonic_alignment_sung", "dominant_token_label"]
].head()

# %%
al.summarize_heads(df).head()

# %% [markdown]
# ## Plot
#
# Maps need `maps=True`; keep only what you will look at (here the last step of two layers).

# %%
with al.capture(pipe, layers=[2, 3], steps=[-1], maps=True) as cap_maps:
    pipe(
        prompt=prompt,
        lyrics=lyrics,
        audio_duration=4.0,
        num_inference_steps=8,
        guidance_scale=1.0,
        output_type="latent",
    )
P = cap_maps.attention(step=-1, layer=3, head=11)  # [frames, keys], rows sum to 1
print(tuple(P.shape), float(P.sum(-1).min()), float(P.sum(-1).max()))

# %%
al.plot.map(cap_maps, step=-1, layer=3, head=11)

# %%
al.plot.heads(cap_maps, step=-1, layers=[3], heads=list(range(8)))

# %%
al.plot.scores(df[df.step == df.step.max()], "lyric_mass")

# %% [markdown]
# ## Save and load
#
# A capture is one safetensors file with a JSON header: no pickle.

# %%
cap_maps.save("quickstart.attn")
again = al.load_capture("quickstart.attn")
assert (again.attention(step=-1, layer=3, head=11) == P).all()
