# ruff: noqa: B018  (a bare expression at the end of a cell is what the notebook displays)
# %% [markdown]
# # Quickstart: capture, analyze, plot
#
# attnlens records the cross-attention of an ACE-Step pipeline while it generates: for every step, layer and
# head, how much each audio frame attends to each lyric, caption and timbre key. This notebook runs the
# whole loop on the embedded demo model (`al.models.demo_pipeline()`): the real diffusers classes at a small
# size (4 DiT layers, 8 heads), trained on a synthetic singing task that lives in latent space, so it needs no
# download and no GPU. Its latents are decoded into words by the task's decoder.

# %%
# %matplotlib inline
import attnlens as al
from attnlens.demo.decoder import WordDecoder
from attnlens.models.demo import demo_task

pipe = al.models.demo_pipeline()
decoder = WordDecoder(demo_task())
prompt, lyrics = "warm voice, folk", "[verse]\nsun moon star sky road"

# %% [markdown]
# ## Capture
#
# `al.capture(pipe)` hooks the cross-attention of every layer for the duration of the `with` block. By
# default it keeps per-frame statistics only (entropy, segment masses, argmax), not the full maps.

# %%
with al.capture(pipe) as cap:
    out = pipe(
        prompt=prompt,
        lyrics=lyrics,
        audio_duration=4.0,
        num_inference_steps=8,
        guidance_scale=1.0,
        output_type="latent",
    )
print(cap.summary())
print("timesteps:", [round(t, 4) for t in cap.timesteps])
print("the decoder hears:", decoder.decode(out.audios[0].float().numpy()).text)

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
# Maps need `maps=True`; keep only what you will look at (here the last step of layers 1 and 2).

# %%
with al.capture(pipe, layers=[1, 2], steps=[-1], maps=True) as cap_maps:
    pipe(
        prompt=prompt,
        lyrics=lyrics,
        audio_duration=4.0,
        num_inference_steps=8,
        guidance_scale=1.0,
        output_type="latent",
    )
P = cap_maps.attention(step=-1, layer=2, head=5)  # [frames, keys], rows sum to 1
print(tuple(P.shape), float(P.sum(-1).min()), float(P.sum(-1).max()))

# %%
al.plot.map(cap_maps, step=-1, layer=2, head=5)

# %%
al.plot.heads(cap_maps, step=-1, layers=[2], normalize="lyric")  # each panel over the sung words only

# %%
al.plot.scores(df[df.step == df.step.max()], "lyric_mass")

# %% [markdown]
# ## Save and load
#
# A capture is one safetensors file with a JSON header: no pickle.

# %%
cap_maps.save("quickstart.attn")
again = al.load_capture("quickstart.attn")
assert (again.attention(step=-1, layer=2, head=5) == P).all()
