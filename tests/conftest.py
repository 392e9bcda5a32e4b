"""Test-wide settings."""

import os

import matplotlib

matplotlib.use("Agg")

# Without a CUDA device, Triton kernels (if Triton is installed) run in its CPU interpreter. This must be set
# before Triton is first imported.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass
