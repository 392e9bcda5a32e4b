"""Draw the gallery's pictures: ``python examples/pixart_gallery.py`` → ``docs/img/pixart-random.png`` and
``docs/img/pixart-planted.png``.

Both come from ``al.models.tiny_pixart_pipeline()``: the real diffusers ``PixArtSigmaPipeline`` classes with tiny
configs and **random weights**, on a CPU in seconds. The first picture is what such a model draws and where its
cross-attention goes; neither means anything about the prompt. The second plants an answer by hand
(``al.models.plant_word_region``): layer 0 sends the patches of one rectangle to the token "cat", so the "cat" map
must light up that rectangle and nothing else. Each figure shows the image, then one panel per word: the attention
on the word's tokens summed, averaged over the chosen steps, layers and heads, upsampled and laid over the image.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import attnlens as al

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
PROMPT = "a red cat on a blue sofa"
RUN = dict(num_inference_steps=8, clean_caption=False, max_sequence_length=16)


def random_weights(out: Path) -> Path:
    pipe = al.models.tiny_pixart_pipeline(seed=0)
    with al.capture(pipe, maps=True) as cap:
        image = pipe(PROMPT, generator=torch.Generator().manual_seed(0), **RUN).images[0]
    words = ["red", "cat", "blue", "sofa"]
    data = al.plot.token_heatmap_data(cap, words=words, step="all")
    print(f"random weights, {data.title}")
    for w, m, (r, c) in zip(data.words, data.mass, data.argmax()):
        print(f"  {w!r}: mean share {m:.3f}, hottest patch (row {r}, col {c})")
    fig = al.plot.token_heatmaps(cap, image, words=words, step="all", dpi=80)
    return Path(al.plot.save(fig, str(out / "pixart-random.png")))


def planted(out: Path) -> Path:
    pipe = al.models.tiny_pixart_pipeline(seed=0)
    latents = al.models.plant_word_region(pipe, "cat", rows=(4, 9), cols=(9, 14))
    with al.capture(pipe, maps=True, steps=[0]) as cap:
        image = pipe("a red cat", latents=latents, **RUN).images[0]
    data = al.plot.token_heatmap_data(cap, words=["a", "red", "cat"], step=0, layers=[0])
    print(f"planted: rows 4..8, columns 9..13; {data.title}")
    for w, m, (r, c) in zip(data.words, data.mass, data.argmax()):
        print(f"  {w!r}: mean share {m:.3f}, hottest patch (row {r}, col {c})")
    print(f"  'cat' above 0.5 on {int((data.values[2] > 0.5).sum())} patches (the rectangle has 25)")
    fig = al.plot.token_heatmaps(cap, image, words=["a", "red", "cat"], step=0, layers=[0], scale="shared", dpi=80)
    return Path(al.plot.save(fig, str(out / "pixart-planted.png")))


def main(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [random_weights(out), planted(out)]


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(p)
