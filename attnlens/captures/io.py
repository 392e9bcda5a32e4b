"""Save and load captures: one safetensors file, everything that is not an array as JSON in its metadata.

No pickle anywhere: a file that is not a safetensors file written by attnlens is refused with a clear error.
Writes are atomic (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import torch

from ..files import atomic_write_bytes
from .layout import Layout
from .result import STAT_NAMES, Capture

FORMAT_NAME = "attnlens.capture"
FORMAT_VERSION = 1

# what the arrays must look like: name -> (ndim, dtype)
_EXPECTED = {
    "entropy": (5, torch.float32),
    "mass": (6, torch.float32),
    "argmax": (5, torch.int32),
    "entropy_lyric": (5, torch.float32),
    "lyric_argmax": (5, torch.int32),
}


class CaptureFileError(ValueError):
    """A file that is not a valid attnlens capture."""


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


def _sniff(raw: bytes, path: str) -> None:
    if raw[:1] == b"\x80" or raw[:2] == b"PK":
        raise CaptureFileError(
            f"{path} looks like a pickle / torch.save file; attnlens never loads pickles (they can run code). "
            "Captures are safetensors files written by Capture.save()"
        )
    if len(raw) < 8:
        raise CaptureFileError(f"{path} is too short to be a capture ({len(raw)} bytes); it may be truncated")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8 or n > 100 << 20:
        raise CaptureFileError(
            f"{path} is not a safetensors file (header length {n} exceeds the file size {len(raw)}); "
            "it is truncated or of another format"
        )


def load_capture(path: str | os.PathLike) -> Capture:
    """Load a capture written by :meth:`Capture.save`. Refuses pickles and anything else with a clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no capture file at {path}")
    with open(path, "rb") as f:
        raw = f.read()
    _sniff(raw, path)
    try:
        n = struct.unpack("<Q", raw[:8])[0]
        meta = json.loads(raw[8 : 8 + n].decode("utf-8")).get("__metadata__") or {}
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise CaptureFileError(f"{path} is not a safetensors file: its header is not JSON ({e})") from None
    if "attnlens" not in meta:
        raise CaptureFileError(f"{path} is a safetensors file but not an attnlens capture (no 'attnlens' metadata)")
    try:
        header = json.loads(meta["attnlens"])
    except json.JSONDecodeError as e:
        raise CaptureFileError(f"{path}: the attnlens metadata is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CaptureFileError(f"{path}: not an attnlens capture (format {header.get('format')!r})")
    version = header.get("version")
    if version != FORMAT_VERSION:
        raise CaptureFileError(
            f"{path}: capture format version {version!r} is not supported by this attnlens "
            f"(supports {FORMAT_VERSION}); upgrade attnlens or re-save the capture"
        )
    try:
        tensors = load(raw)
    except (SafetensorError, Exception) as e:
        raise CaptureFileError(f"{path}: the tensor data is damaged or truncated ({e})") from None
    try:
        cap = Capture(
            layers=[int(x) for x in header["layers"]],
            heads=[int(x) for x in header["heads"]],
            steps=[int(x) for x in header["steps"]],
            timesteps=[float(x) for x in header["timesteps"]],
            layout=Layout.from_json(header["layout"]),
            stats={k[len("stats.") :]: v for k, v in tensors.items() if k.startswith("stats.")},
            maps=tensors.get("maps"),
            maps_mean=tensors.get("maps_mean"),
            frame_rate=float(header["frame_rate"]),
            batch_labels=[str(x) for x in header["batch_labels"]],
            model=dict(header.get("model", {})),
            meta=dict(header.get("meta", {})),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as e:  # OverflowError: int(inf) from JSON "Infinity"
        raise CaptureFileError(f"{path}: malformed capture metadata ({e!r})") from None
    _validate_shapes(cap, path)
    return cap


def _validate_shapes(cap: Capture, path: str) -> None:
    dims = (len(cap.steps), len(cap.layers), len(cap.batch_labels), len(cap.heads))
    if cap.stats and set(cap.stats) != set(STAT_NAMES):
        raise CaptureFileError(f"{path}: statistics {sorted(cap.stats)} do not match the expected {list(STAT_NAMES)}")
    frames = None
    for name, t in cap.stats.items():
        nd, dt = _EXPECTED[name]
        if t.ndim != nd or t.dtype != dt or tuple(t.shape[:4]) != dims:
            raise CaptureFileError(
                f"{path}: statistic {name!r} has shape {tuple(t.shape)} {t.dtype}; expected {nd} dims {dt} starting "
                f"with (step, layer, batch, head) = {dims}"
            )
        frames = t.shape[4] if frames is None else frames
        if t.shape[4] != frames:
            raise CaptureFileError(f"{path}: statistic {name!r} has {t.shape[4]} frames, others {frames}")
    n_keys = {it.n_keys for it in cap.layout.items}
    if cap.maps is not None:
        if cap.maps.ndim != 6 or tuple(cap.maps.shape[:4]) != dims:
            raise CaptureFileError(f"{path}: maps have shape {tuple(cap.maps.shape)}; expected {dims} + (frame, key)")
        if n_keys and cap.maps.shape[-1] not in n_keys:
            raise CaptureFileError(f"{path}: maps have {cap.maps.shape[-1]} keys but the layout has {sorted(n_keys)}")
    if len(cap.layout.items) not in (0, len(cap.batch_labels)) and 2 * len(cap.layout.items) != len(cap.batch_labels):
        raise CaptureFileError(f"{path}: layout has {len(cap.layout.items)} items for batch {cap.batch_labels}")
    if any(not 0 <= s < len(cap.timesteps) for s in cap.steps):
        raise CaptureFileError(f"{path}: kept steps {cap.steps} out of range of {len(cap.timesteps)} timesteps")
