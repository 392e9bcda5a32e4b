"""Long jobs killed with SIGKILL at random points resume with no lost and no duplicated work.

A small driver script (written into the test's tmp_path) runs the job in a subprocess; the test kills it with
``os.kill(pid, SIGKILL)`` at a random moment after it has made some progress, several times, then lets a last run
finish, and compares with an uninterrupted run:

- evaluation (``attnlens.eval.run``, a fast fake pipeline and transcriber, batches of 2 so a kill can split a unit;
  2 kills): ``results.csv`` rows unique and complete, equal to the uninterrupted run's (timings aside), every
  artifact present and bitwise equal; a kill inside an atomic write may leave only a hidden temporary file;
- training (``attnlens.train.Trainer`` on the tiny pipeline, checkpoints every 2 steps so kills land in saves too;
  3 kills): the final adapter bitwise equal to the uninterrupted run's, metrics rows for steps 1..N exactly once
  (slow).

(tests/test_eval_runner.py covers in-process interruption and a torn last line; tests/test_train_loop.py covers an
in-process stop and one SIGKILL of the CLI at a fixed point.)
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

EVAL_DRIVER = r'''
"""Evaluation driver: a fake pipeline (audio drawn from the generator) and a fake transcriber, slow enough to kill."""
import sys
import time
import types

import torch

from attnlens.eval import Suite, run

SR = 8000
WORDS = ["alpha beta gamma", "red green blue sky", "one small step", "sun moon stars", "river stone hill",
         "open door", "cold light of day", "seven seas", "paper boat", "quiet room"]


def suite():
    return Suite.from_records([{"id": f"p{i}", "caption": f"genre {i}", "lyrics": f"[verse]\n{w}", "duration": 0.25}
                               for i, w in enumerate(WORDS)])


class Pipe:
    sample_rate = SR

    def __init__(self, s):
        self.lyrics = [e.lyrics for e in s]

    def __call__(self, prompt, lyrics, audio_duration, vocal_language, generator, output_type, **kw):
        time.sleep(0.02)
        lyrics = [lyrics] if isinstance(lyrics, str) else lyrics
        gens = generator if isinstance(generator, list) else [generator]
        items = []
        for ly, g in zip(lyrics, gens):
            x = 0.01 * torch.randn(2, int(audio_duration * SR), generator=g)
            x[:, 0] = (self.lyrics.index(ly) + 1) / 20
            items.append(x)
        return types.SimpleNamespace(audios=torch.stack(items))


class ASR:
    def __init__(self, s):
        self.refs = [e.reference for e in s]

    def transcribe(self, audio, sr):
        time.sleep(0.005)
        words = self.refs[round(float(audio[0]) * 20) - 1].split()
        return " ".join(words[: 1 + int(abs(float(audio[7])) * 1000) % len(words)])  # seed-dependent errors

    def __repr__(self):
        return "ASR()"


def main(out):
    s = suite()
    return run(Pipe(s), s, seeds=[0, 1, 2], transcriber=ASR(s), out_dir=out, batch_size=2, progress=False)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
'''

TRAIN_DRIVER = r'''
"""Training driver: LoRA with dropout and the lyric entropy penalty on the tiny pipeline, checkpoints every 2 steps."""
import sys

import torch

import attnlens as al
from attnlens.train.data import AudioLyricsDataset
from attnlens.train.lora import LoraConfig
from attnlens.train.trainer import Trainer

STEPS = 24


def items():
    g = torch.Generator().manual_seed(0)
    pattern = torch.randn(24, 8, generator=g)
    return [{"key": f"s{i}", "latents": pattern * (1 + 0.1 * i), "lyrics": f"[verse]\nsing number {i} tonight",
             "caption": "bright pop"} for i in range(3)]


def main(out):
    torch.set_num_threads(1)
    pipe = al.models.tiny_pipeline(seed=0)
    t = Trainer(pipe, LoraConfig(rank=4, alpha=8, dropout=0.1), AudioLyricsDataset.from_latents(items()),
                out_dir=out, steps=STEPS, save_every=2, lr=2e-3, progress=False, entropy_weight=0.05,
                entropy_keys="lyrics", grad_accum=2, batch_size=2, warmup_steps=2, lr_schedule="cosine", seed=7)
    return t.fit()


if __name__ == "__main__":
    main(sys.argv[1])
'''


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def kill_at_random_points(cmd, progress, kills: int, total: int, rng: random.Random, timeout: float = 240.0):
    """Start ``cmd`` ``kills`` times; each time wait until ``progress()`` passes a random mark, wait a random few
    milliseconds more, SIGKILL. Returns the marks and the progress seen at each kill."""
    seen = []
    for k in range(kills):
        start = progress()
        mark = rng.randint(start + 1, max(start + 1, start + (total - start) // 2))
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + timeout
        while progress() < mark and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        alive = proc.poll() is None
        if alive:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        err = proc.stderr.read().decode()
        assert alive, f"run {k} ended before it could be killed (rc {proc.returncode}): {err[-2000:]}"
        assert proc.returncode == -signal.SIGKILL
        seen.append((mark, progress()))
    return seen


def _rows(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def _strip(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in df.columns if c not in ("gen_seconds", "asr_seconds")]
    return df[cols].sort_values(["variant", "seed", "prompt_id"]).reset_index(drop=True)


def test_eval_sigkill_at_random_points_resumes_exactly(tmp_path):
    driver = tmp_path / "eval_driver.py"
    driver.write_text(EVAL_DRIVER)
    mod = _load(driver, "eval_driver")
    torch.set_num_threads(1)
    ref = mod.main(str(tmp_path / "ref"))  # uninterrupted, in-process
    total = 30
    assert len(ref) == total

    out = tmp_path / "cut"
    csv = out / "results.csv"
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    seen = kill_at_random_points([sys.executable, str(driver), str(out)], lambda: _rows(csv), 2, total, rng)
    assert 0 < _rows(csv) < total, seen
    res = mod.main(str(out))  # the last run completes it
    assert len(res) == total and not res.duplicated(["prompt_id", "variant", "seed"]).any()
    pd.testing.assert_frame_equal(_strip(res), _strip(ref))
    lines = csv.read_text().splitlines()
    assert len(lines) == total + 1 and len(set(lines)) == total + 1  # one header, every row once
    for rel in res.artifact:  # artifacts (rewritten by whichever run committed the row) equal the reference
        assert (out / rel).read_bytes() == (tmp_path / "ref" / rel).read_bytes(), rel
    # a kill inside an atomic write can leave its hidden temporary file (".<name>.<random>.tmp"), never a partial
    # file under a final name; rows never point at temporaries
    for p in out.rglob("*.tmp"):
        assert p.name.startswith(".") and p.parent.joinpath(p.name[1:].rsplit(".", 2)[0]).exists(), p
    assert not any(a.endswith(".tmp") for a in res.artifact)


@pytest.mark.slow
def test_train_sigkill_at_random_points_resumes_bitwise(tmp_path):
    from safetensors.torch import load_file

    driver = tmp_path / "train_driver.py"
    driver.write_text(TRAIN_DRIVER)
    mod = _load(driver, "train_driver")
    mod.main(str(tmp_path / "ref"))
    ref = load_file(str(tmp_path / "ref" / "adapter" / "pytorch_lora_weights.safetensors"))

    out = tmp_path / "cut"
    latest = out / "checkpoints" / "latest"

    def progress() -> int:
        try:
            return int(latest.read_text().strip().removeprefix("step_"))
        except (FileNotFoundError, ValueError):
            return 0

    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    seen = kill_at_random_points([sys.executable, str(driver), str(out)], progress, 3, mod.STEPS, rng, timeout=600)
    assert not (out / "adapter").exists(), seen
    proc = subprocess.run([sys.executable, str(driver), str(out)], env=_env(), capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    got = load_file(str(out / "adapter" / "pytorch_lora_weights.safetensors"))
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref), seen
    steps = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().strip().splitlines()[1:]]
    assert steps == list(range(1, mod.STEPS + 1)), seen
