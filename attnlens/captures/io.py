"""Save and load captures: one safetensors file, everything that is not an array as JSON in its metadata.

No pickle anywhere: a file that is not a safetensors file written by attnlens is refused with a clear error.
Writes are atomic (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..files import atomic_write_bytes
from .result import Capture
from .validate import FORMAT_NAME, FORMAT_VERSION, CaptureFileError, header_fields, read_capture_file, validate_capture

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CaptureFileError", "load_capture", "save_capture"]


def save_capture(cap: Capture, path: str | os.PathLike) -> str:
    """Write ``cap`` to ``path`` (safetensors + JSON metadata), atomically. Returns the path."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {f"stats.{k}": v.detach().cpu().contiguous() for k, v in cap.stats.items()}
    if cap.maps is not None:
        tensors["maps"] = cap.maps.detach().cpu().contiguous()
    if cap.maps_mean is not None:
        tensors["maps_mean"] = cap.maps_mean.detach().cpu().contiguous()
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "layers": cap.layers,
        "heads": cap.heads,
        "steps": cap.steps,
        "timesteps": cap.timesteps,
        "frame_rate": cap.frame_rate,
        "batch_labels": cap.batch_labels,
        "model": cap.model,
        "meta": _jsonable(cap.meta),
        "layout": cap.layout.to_json(),
    }
    data = save(tensors, metadata={"attnlens": json.dumps(header)})
    atomic_write_bytes(path, data)
    return str(path)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def load_capture(path: str | os.PathLike) -> Capture:
    """Load a capture written by :meth:`Capture.save`. Refuses pickles, files that are not regular files, and any
    header or array a capture cannot hold (:mod:`attnlens.captures.validate`) with a clear error."""
    from safetensors.torch import load

    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no capture file at {path}")
    raw, header = read_capture_file(path)
    fields = header_fields(header, path)
    try:
        tensors = load(raw)
    except Exception as e:  # SafetensorError and anything else the tensor data provokes
        raise CaptureFileError(f"{path}: the tensor data is damaged or truncated ({e})") from None
    cap = Capture(
        **fields,
        stats={k[len("stats.") :]: v for k, v in tensors.items() if k.startswith("stats.")},
        maps=tensors.get("maps"),
        maps_mean=tensors.get("maps_mean"),
    )
    validate_capture(cap, path)
    return cap
