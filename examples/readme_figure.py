"""Draw the per-head figure shown in the README: ``python examples/readme_figure.py`` → ``docs/img/demo-heads.png``.

The heads of layer 1 of the embedded demo model (``al.models.demo_pipeline()``) at the last sampling step, singing
a held-out line of its task; each panel renormalized over the sung lyric words (``normalize="lyric"``), because
the demo model gives most of its cross-attention to the caption. Head 0 of layer 1 was trained to follow the sung
word (docs/demo.md); the others were free.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import attnlens as al
from attnlens.models.demo import demo_task

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "demo-heads.png"


def main(out: Path = OUT) -> Path:
    pipe = al.models.demo_pipeline()
    line = demo_task().sample(np.random.default_rng(0), split="test")
    with al.capture(pipe, steps=[-1], maps=True) as cap:
        pipe(
            prompt=line["caption"],
            lyrics=line["lyrics"],
            audio_duration=4.0,
            num_inference_steps=8,
            guidance_scale=1.0,
            output_type="latent",
        )
    fig = al.plot.heads(cap, step=-1, layers=[1], normalize="lyric", dpi=90)
    out.parent.mkdir(parents=True, exist_ok=True)
    lyric_mass = float(al.analyze(cap)["lyric_mass"].mean())
    print(f"{line['caption']!r} {line['lyrics']!r}: mean lyric mass {lyric_mass:.4f}")
    return Path(al.plot.save(fig, str(out)))


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
