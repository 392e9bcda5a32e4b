"""Draw the per-head figure shown in the README: ``python examples/readme_figure.py`` → ``docs/img/demo-heads.png``.

One panel per head (mean over the pipeline's layers) of the last sampling step, from a capture of the tiny offline
pipeline (random weights: the figure shows what a capture looks like, not a learned alignment).
"""

from __future__ import annotations

import sys
from pathlib import Path

import attnlens as al

OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "demo-heads.png"


def main(out: Path = OUT) -> Path:
    pipe = al.models.tiny_pipeline(seed=0)
    with al.capture(pipe, steps=[-1], maps=True) as cap:
        pipe(
            prompt="folk, warm vocals",
            lyrics="[verse]\nwalking down the morning road",
            audio_duration=4.0,
            num_inference_steps=8,
            guidance_scale=1.0,
            output_type="latent",
        )
    fig = al.plot.heads(cap, step=-1, heads=list(range(8)), dpi=90)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(al.plot.save(fig, str(out)))


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
