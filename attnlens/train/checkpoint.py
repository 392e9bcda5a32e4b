"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON; written atomically.

Layout of ``<out>/checkpoints/step_00000040/``::

    adapter/pytorch_lora_weights.safetensors   the LoRA (diffusers/peft layout)
    optimizer.safetensors                      optimizer state tensors, keys "<param index>.<name>"
    rng.safetensors                            torch CPU (and CUDA) RNG states (uint8 tensors)
    state.json                                 step, optimizer param groups, scheduler state, Python/NumPy RNG,
                                               the training settings
    manifest.json                              size and SHA-256 of every other file (written last)

The directory is assembled under a temporary name and renamed into place; ``checkpoints/latest`` names the newest.
A checkpoint is read only after its manifest checks out (:func:`verify_checkpoint`): a truncated or bit-flipped
file is :class:`CheckpointError`, and :func:`checkpoints` lists the candidates newest first so that a resume falls
back to the previous complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..files import atomic_write_json, atomic_write_text

MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: damaged (truncated, bit flips, a file missing) or incompatible."""


def write_json_atomic(obj: Any, path: str) -> None:
    atomic_write_json(path, obj, indent=1, sort_keys=True)


def write_text_atomic(text: str, path: str) -> None:
    atomic_write_text(path, text)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch RNG states as tensors; Python and NumPy states as JSON-able lists."""
    tensors = {"torch_cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    py = random.getstate()
    npst = np.random.get_state()
    js = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
    }
    return tensors, js


def set_rng_state(tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
    torch.random.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("cuda_"))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    v, state, gauss = js["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{name}"] = v
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, d in js.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    opt.load_state_dict({"state": state, "param_groups": js["param_groups"]})


def save_checkpoint(
    out_dir: str,
    step: int,
    save_adapter_fn,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict[str, Any],
    keep: int = 2,
) -> str:
    """Write ``<out_dir>/checkpoints/step_<step>`` atomically; keep the newest ``keep`` checkpoints."""
    root = os.path.join(out_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step_{step:08d}")
    tmp = tempfile.mkdtemp(dir=root, prefix=".tmp-")
    try:
        save_adapter_fn(os.path.join(tmp, "adapter"))
        ot, oj = optimizer_state(optimizer)
        save_file({k: v.detach().contiguous().cpu() for k, v in ot.items()}, os.path.join(tmp, "optimizer.safetensors"))
        rt, rj = rng_state()
        save_file(rt, os.path.join(tmp, "rng.safetensors"))
        state = {"step": step, "optimizer": oj, "scheduler": scheduler.state_dict(), "rng": rj, **extra}
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, sort_keys=True, default=_json_default)
        _write_manifest(tmp, step)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(os.path.basename(final), os.path.join(root, "latest"))
    done = sorted(d for d in os.listdir(root) if d.startswith("step_"))
    for d in done[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    return final


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if torch.is_tensor(o):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return None  # e.g. scheduler lr_lambdas (functions): rebuilt from the config


def settings_changes(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, list]:
    """``{name: [old value, new value]}`` for the settings present in both that differ (compared as JSON)."""

    def norm(v: Any) -> Any:
        return json.loads(json.dumps(v, default=_json_default))

    return {
        k: [norm(old[k]), norm(new[k])] for k in new if k in old and k not in ignore and norm(old[k]) != norm(new[k])
    }


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: str) -> list[str]:
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(f for f in out if f != MANIFEST)


def _write_manifest(path: str, step: int) -> None:
    files = {
        f: {"size": os.path.getsize(os.path.join(path, f)), "sha256": _sha256(os.path.join(path, f))}
        for f in _files(path)
    }
    with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as f:
        json.dump({"step": step, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def verify_checkpoint(path: str) -> None:
    """Check every file of the checkpoint at ``path`` against its manifest (present, size, SHA-256); raise
    :class:`CheckpointError` saying which file is missing, truncated or damaged. A checkpoint written before
    manifests were kept has none and is checked when it is read."""
    mpath = os.path.join(path, MANIFEST)
    if not os.path.exists(mpath):
        return
    try:
        with open(mpath, encoding="utf-8") as f:
            files = json.load(f)["files"]
        entries = [(str(name), int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: its {MANIFEST} is damaged ({e!r})") from None
    for name, size, digest in entries:
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        got = os.path.getsize(f)
        if got != size:
            raise CheckpointError(
                f"checkpoint {path}: {name} is truncated or damaged ({got} bytes; {size} were written)"
            )
        if _sha256(f) != digest:
            raise CheckpointError(f"checkpoint {path}: {name} is damaged (its SHA-256 differs from the manifest's)")


def checkpoints(out_dir: str) -> list[str]:
    """Checkpoint folders of ``out_dir``, newest first (the one ``checkpoints/latest`` names leads)."""
    root = os.path.join(out_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    done = sorted(
        (d for d in os.listdir(root) if d.startswith("step_") and os.path.isdir(os.path.join(root, d))), reverse=True
    )
    ptr = os.path.join(root, "latest")
    if os.path.isfile(ptr):
        with open(ptr, encoding="utf-8", errors="replace") as f:
            name = f.read().strip()
        if name in done:
            done.remove(name)
            done.insert(0, name)
    return [os.path.join(root, d) for d in done]


def latest_checkpoint(out_dir: str) -> str | None:
    """The newest checkpoint folder of ``out_dir`` (not verified; see :func:`checkpoints`), or ``None``."""
    found = checkpoints(out_dir)
    return found[0] if found else None


def load_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(state.json, optimizer tensors, rng tensors)`` of a verified checkpoint; :class:`CheckpointError` when a
    file is missing, truncated or damaged."""
    from safetensors import SafetensorError

    verify_checkpoint(path)
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("state.json holds no step")

        def read(name: str) -> dict[str, torch.Tensor]:
            with safe_open(os.path.join(path, name), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}

        return state, read("optimizer.safetensors"), read("rng.safetensors")
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e})") from None
