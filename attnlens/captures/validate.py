"""What a capture file must be before :func:`~attnlens.captures.io.load_capture` returns it.

Three stages, each refusing with :class:`CaptureFileError` and a message that says what was found and what was
expected:

1. the file (:func:`read_capture_file`): a regular file (never a device or FIFO, which could be read without end),
   not a pickle, a safetensors length prefix no larger than the file and :data:`HEADER_LIMIT`, read before the rest;
2. the JSON header (:func:`parse_header`, :func:`header_fields`): the type of every level (the safetensors header
   an object, its ``__metadata__`` an object of strings, the ``attnlens`` entry a string holding an object) and of
   every field (lists of integers, finite numbers, strings, objects), the format name and version;
3. the arrays (:func:`validate_capture`): names, dims, dtypes and sizes against the header and the layout (the
   ``mass`` statistic has one entry per segment of the layout's own vocabulary), unique layer/head/step indices, and
   cheap value checks: probabilities, masses and normalized entropies within ``[0, 1]``, masses adding to 1 on
   items whose keys are all known (at most 1 otherwise), map rows adding to 1, argmax indices within the item's keys
   and lyric indices within its lyric set. NaN passes (a capture flags non-finite attention in
   ``meta["nonfinite"]``, and :func:`attnlens.analyze` refuses it by name); rows whose entropy is NaN are not
   range-checked.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import torch

from ..files import NotARegularFileError, json_kind, looks_like_pickle, open_regular
from .layout import Layout
from .result import STAT_NAMES, Capture

FORMAT_NAME = "attnlens.capture"
FORMAT_VERSION = 1
HEADER_LIMIT = 100 << 20
"""Largest safetensors JSON header read (bytes); a capture's header is kilobytes."""
TOLERANCE = 1e-3
"""Slack of the value checks (float32 sums of up to thousands of probabilities are within 1e-5)."""

# what the statistics must look like: name -> (ndim, dtype)
EXPECTED = {
    "entropy": (5, torch.float32),
    "mass": (6, torch.float32),
    "argmax": (5, torch.int32),
    "entropy_lyric": (5, torch.float32),
    "lyric_argmax": (5, torch.int32),
}


class CaptureFileError(ValueError):
    """A file that is not a valid attnlens capture."""


# ------------------------------------------------------------------------------------------------- the file


def read_capture_file(path: str) -> tuple[bytes, dict[str, Any]]:
    """``(whole file, attnlens header)`` of the capture at ``path``; the header is read and checked before the
    tensor data."""
    try:
        f = open_regular(path)
    except NotARegularFileError as e:
        raise CaptureFileError(f"{e}; a capture is a regular file written by Capture.save()") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if looks_like_pickle(head + f.read(1), size):
            raise CaptureFileError(
                f"{path} looks like a pickle / torch.save file; attnlens never loads pickles (they can run code). "
                "Captures are safetensors files written by Capture.save()"
            )
        if len(head) < 8:
            raise CaptureFileError(f"{path} is too short to be a capture ({len(head)} bytes); it may be truncated")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > HEADER_LIMIT:
            raise CaptureFileError(
                f"{path} is not a safetensors file (header length {n} exceeds the file size {size} or the limit "
                f"{HEADER_LIMIT}); it is truncated or of another format"
            )
        f.seek(8)
        text = f.read(n)
        header = parse_header(text, path)
        rest = f.read(max(0, size - 8 - n))
    return head + text + rest, header


def parse_header(text: bytes, path: str) -> dict[str, Any]:
    """The attnlens header inside the safetensors JSON header ``text``, every level's type checked."""
    try:
        outer = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CaptureFileError(f"{path} is not a safetensors file: its header is not JSON ({e})") from None
    if not isinstance(outer, dict):
        raise CaptureFileError(
            f"{path} is not a safetensors file: its JSON header is {json_kind(outer)}, not an object"
        )
    meta = outer.get("__metadata__")
    if meta is not None and not isinstance(meta, dict):
        raise CaptureFileError(
            f"{path}: the safetensors metadata ('__metadata__') is {json_kind(meta)}; expected an object of strings"
        )
    if not meta or "attnlens" not in meta:
        raise CaptureFileError(f"{path} is a safetensors file but not an attnlens capture (no 'attnlens' metadata)")
    entry = meta["attnlens"]
    if not isinstance(entry, str):
        raise CaptureFileError(
            f"{path}: the 'attnlens' metadata is {json_kind(entry)}; expected a string holding the capture's JSON header"
        )
    try:
        header = json.loads(entry)
    except (ValueError, RecursionError) as e:
        raise CaptureFileError(f"{path}: the attnlens metadata is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CaptureFileError(f"{path}: the attnlens metadata is {json_kind(header)}; expected a JSON object")
    if header.get("format") != FORMAT_NAME:
        raise CaptureFileError(f"{path}: not an attnlens capture (format {header.get('format')!r})")
    version = header.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CaptureFileError(
            f"{path}: capture format version {version!r} is not supported by this attnlens "
            f"(supports {FORMAT_VERSION}); upgrade attnlens or re-save the capture"
        )
    return header


def _malformed(path: str, what: str) -> CaptureFileError:
    return CaptureFileError(f"{path}: malformed capture metadata: {what}")


def _field(header: dict[str, Any], key: str, path: str, default: Any = ...) -> Any:
    if key not in header:
        if default is ...:
            raise _malformed(path, f"the field {key!r} is missing")
        return default
    return header[key]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _short(x: Any) -> str:
    s = repr(x)
    return s if len(s) <= 80 else s[:77] + "..."


def _list_of(header: dict[str, Any], key: str, path: str, ok, what: str) -> list:
    v = _field(header, key, path)
    if not isinstance(v, list) or not all(ok(x) for x in v):
        raise _malformed(path, f"{key!r} must be a list of {what}; got {_short(v)}")
    return v


def header_fields(header: dict[str, Any], path: str) -> dict[str, Any]:
    """The :class:`~attnlens.captures.result.Capture` fields held by the header, each of the type it must have."""
    frame_rate = _field(header, "frame_rate", path)
    if not _is_number(frame_rate) or frame_rate <= 0:
        raise _malformed(path, f"'frame_rate' must be a positive number; got {_short(frame_rate)}")
    out: dict[str, Any] = {
        "layers": _list_of(header, "layers", path, _is_int, "integers"),
        "heads": _list_of(header, "heads", path, _is_int, "integers"),
        "steps": _list_of(header, "steps", path, _is_int, "integers"),
        "timesteps": [float(t) for t in _list_of(header, "timesteps", path, _is_number, "finite numbers")],
        "batch_labels": _list_of(header, "batch_labels", path, lambda x: isinstance(x, str), "strings"),
        "frame_rate": float(frame_rate),
    }
    for key in ("model", "meta"):
        v = _field(header, key, path, {})
        if not isinstance(v, dict):
            raise _malformed(path, f"{key!r} must be an object; got {_short(v)}")
        out[key] = dict(v)
    layout = _field(header, "layout", path)
    try:
        out["layout"] = Layout.from_json(layout)
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError, IndexError, RecursionError) as e:
        # OverflowError: int(inf) from JSON "Infinity"
        raise _malformed(path, f"the layout: {e!r}") from None
    return out


# ----------------------------------------------------------------------------------------------- the arrays


def validate_capture(cap: Capture, path: str) -> None:
    """Refuse a capture whose arrays do not fit its header and layout, or hold values no capture can hold."""
    _check_indices(cap, path)
    frames = _check_stats(cap, path)
    frames = _check_maps(cap, path, frames)
    _check_values(cap, path)


def _check_indices(cap: Capture, path: str) -> None:
    for name in ("layers", "heads", "steps"):
        xs = getattr(cap, name)
        dup = sorted({x for x in xs if xs.count(x) > 1})
        if dup:
            raise CaptureFileError(f"{path}: {name} {dup} appear more than once in {xs}; each index must be unique")
        if any(x < 0 for x in xs):
            raise CaptureFileError(f"{path}: negative {name} index in {xs}")
    if any(not 0 <= s < len(cap.timesteps) for s in cap.steps):
        raise CaptureFileError(f"{path}: kept steps {cap.steps} out of range of {len(cap.timesteps)} timesteps")
    n_items = len(cap.layout.items)
    if n_items not in (0, len(cap.batch_labels)) and 2 * n_items != len(cap.batch_labels):
        raise CaptureFileError(f"{path}: layout has {n_items} items for batch {cap.batch_labels}")


def _dims(cap: Capture) -> tuple[int, int, int, int]:
    return (len(cap.steps), len(cap.layers), len(cap.batch_labels), len(cap.heads))


def _check_stats(cap: Capture, path: str) -> int | None:
    if cap.stats and set(cap.stats) != set(STAT_NAMES):
        raise CaptureFileError(f"{path}: statistics {sorted(cap.stats)} do not match the expected {list(STAT_NAMES)}")
    dims = _dims(cap)
    frames = None
    for name, t in cap.stats.items():
        nd, dt = EXPECTED[name]
        if t.ndim != nd or t.dtype != dt or tuple(t.shape[:4]) != dims:
            raise CaptureFileError(
                f"{path}: statistic {name!r} has shape {tuple(t.shape)} {t.dtype}; expected {nd} dims {dt} starting "
                f"with (step, layer, batch, head) = {dims}"
            )
        frames = t.shape[4] if frames is None else frames
        if t.shape[4] != frames:
            raise CaptureFileError(f"{path}: statistic {name!r} has {t.shape[4]} frames, others {frames}")
    if "mass" in cap.stats:
        voc = cap.layout.vocabulary
        if cap.stats["mass"].shape[5] != len(voc):
            raise CaptureFileError(
                f"{path}: statistic 'mass' has {cap.stats['mass'].shape[5]} segments; the layout's vocabulary "
                f"({voc.family or 'unnamed'}) has {len(voc)}: {list(voc.names)}"
            )
    return frames


def _check_maps(cap: Capture, path: str, frames: int | None) -> int | None:
    n_keys = {it.n_keys for it in cap.layout.items}
    dims = _dims(cap)
    for name, m, lead in (("maps", cap.maps, dims), ("maps_mean", cap.maps_mean, dims[1:])):
        if m is None:
            continue
        what = "(step, layer, batch, head)" if name == "maps" else "(layer, batch, head)"
        if m.ndim != len(lead) + 2 or tuple(m.shape[: len(lead)]) != lead:
            raise CaptureFileError(
                f"{path}: {name} have shape {tuple(m.shape)}; expected {what} = {lead} + (frame, key)"
            )
        if m.dtype != torch.float32:
            raise CaptureFileError(f"{path}: {name} are {m.dtype}; expected torch.float32 probabilities")
        if n_keys and m.shape[-1] not in n_keys:
            raise CaptureFileError(f"{path}: {name} have {m.shape[-1]} keys but the layout has {sorted(n_keys)}")
        if frames is not None and m.shape[-2] != frames:
            raise CaptureFileError(f"{path}: {name} have {m.shape[-2]} frames; the statistics have {frames}")
        frames = m.shape[-2]
    return frames


def _out_of_range(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Positions of ``x`` outside ``[lo, hi]`` (NaN is not out of range)."""
    return (x < lo) | (x > hi)


def _first(bad: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0])


def _check_values(cap: Capture, path: str) -> None:
    tol = TOLERANCE
    st = cap.stats
    for name in ("entropy", "entropy_lyric"):
        if name in st:
            bad = _out_of_range(st[name], -tol, 1 + tol)
            if bad.any():
                i = _first(bad)
                raise CaptureFileError(
                    f"{path}: statistic {name!r} is {float(st[name][i]):g} at (step, layer, batch, head, frame) "
                    f"{i}; a normalized entropy lies in [0, 1]"
                )
    if "mass" in st:
        _check_mass(cap, path)
    if "argmax" in st:
        _check_argmax(cap, path)
    for name in ("maps", "maps_mean"):
        m = getattr(cap, name)
        if m is not None:
            _check_rows(m, name, path)


def _item_of(cap: Capture, b: int):
    return cap.layout.items[b % len(cap.layout.items)] if cap.layout.items else None


def _check_mass(cap: Capture, path: str) -> None:
    tol = TOLERANCE
    mass = cap.stats["mass"]
    bad = _out_of_range(mass, -tol, 1 + tol)
    if bad.any():
        i = _first(bad)
        raise CaptureFileError(f"{path}: segment mass {float(mass[i]):g} at {i}; a mass lies in [0, 1]")
    total = mass.sum(-1)  # [step, layer, batch, head, frame]
    items = [_item_of(cap, b) for b in range(mass.shape[2])]
    known = torch.tensor([it is not None and it.known for it in items])
    low = torch.where(known, 1 - tol, -tol)[None, None, :, None, None]
    bad = (total > 1 + tol) | (total < low)
    if bad.any():
        i = _first(bad)
        need = "add to 1" if bool(known[i[2]]) else "add to at most 1 (keys of unknown segment count in none)"
        raise CaptureFileError(
            f"{path}: the segment masses at (step, layer, batch, head, frame) {i} add to {float(total[i]):g}; "
            f"they must {need}"
        )


def _check_argmax(cap: Capture, path: str) -> None:
    st = cap.stats
    B = st["argmax"].shape[2]
    items = [_item_of(cap, b) for b in range(B)]
    if items and items[0] is not None:
        n_keys = [it.n_keys for it in items]
        n_lyric = [len(it.lyric_positions()) for it in items]
    else:
        keys = cap.maps.shape[-1] if cap.maps is not None else (2**31 - 1)
        n_keys, n_lyric = [keys] * B, [2**31 - 1] * B
    finite = torch.isfinite(st["entropy"])  # a NaN row's argmax means nothing
    for name, lo, his, what in (
        ("argmax", 0, n_keys, "a packed key index in [0, {hi})"),
        ("lyric_argmax", -1, n_lyric, "an index into the item's lyric set L in [0, {hi}), or -1"),
    ):
        x = st[name]
        hi = torch.tensor(his, dtype=torch.int64)[None, None, :, None, None]
        bad = ((x < lo) | (x.long() >= hi)) & finite
        if bad.any():
            i = _first(bad)
            raise CaptureFileError(
                f"{path}: statistic {name!r} is {int(x[i])} at (step, layer, batch, head, frame) {i}; expected "
                + what.format(hi=his[i[2]])
            )


def _check_rows(m: torch.Tensor, name: str, path: str) -> None:
    """Probabilities in [0, 1] whose rows add to 1, checked one leading slice at a time (bounded memory)."""
    tol = TOLERANCE
    for j in range(m.shape[0]):
        part = m[j]
        bad = _out_of_range(part, -tol, 1 + tol)
        if bad.any():
            i = (j, *_first(bad))
            raise CaptureFileError(f"{path}: {name} hold {float(m[i]):g} at {i}; attention probabilities lie in [0, 1]")
        total = part.sum(-1)
        bad = (total - 1).abs() > tol
        if bad.any():
            i = (j, *_first(bad))
            raise CaptureFileError(
                f"{path}: a row of {name} adds to {float(m[i].sum()):g} at {i}; attention rows add to 1"
            )
