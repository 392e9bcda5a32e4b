"""Build an openai-whisper model from a CTranslate2 Whisper folder (as used by faster-whisper), without pickle.

CTranslate2's ``model.bin`` is a flat binary: version, spec name, revision, then for each variable its name,
shape, dtype id, byte count and raw little-endian data (see ``ctranslate2/specs/model_spec.py``). Only float
weights (float32/float16) are supported here; int8-quantized folders are refused with a clear error.

Name mapping (CTranslate2 -> openai-whisper), per block ``i``::

    encoder/conv{1,2}                          -> encoder.conv{1,2}
    encoder/position_encodings/encodings       -> encoder.positional_embedding
    */layer_i/self_attention/layer_norm        -> *.blocks.i.attn_ln
    */layer_i/self_attention/linear_0 (q|k|v)  -> *.blocks.i.attn.{query,key,value}   (key has no bias)
    */layer_i/self_attention/linear_1          -> *.blocks.i.attn.out
    decoder/layer_i/attention/layer_norm       -> decoder.blocks.i.cross_attn_ln
    decoder/layer_i/attention/linear_0         -> decoder.blocks.i.cross_attn.query
    decoder/layer_i/attention/linear_1 (k|v)   -> decoder.blocks.i.cross_attn.{key,value}
    decoder/layer_i/attention/linear_2         -> decoder.blocks.i.cross_attn.out
    */layer_i/ffn/layer_norm, linear_0, linear_1 -> *.blocks.i.mlp_ln, mlp.0, mlp.2
    encoder/layer_norm, decoder/layer_norm     -> encoder.ln_post, decoder.ln
    decoder/embeddings/weight                  -> decoder.token_embedding.weight
    decoder/position_encodings/encodings       -> decoder.positional_embedding
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2_variables(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 ``model.bin`` as numpy arrays (aliases are skipped)."""
    buf = Path(path).read_bytes()
    off = 0

    def take(fmt: str) -> Any:
        nonlocal off
        (v,) = struct.unpack_from("<" + fmt, buf, off)
        off += struct.calcsize("<" + fmt)
        return v

    def string() -> str:
        nonlocal off
        n = take("H")
        s = buf[off : off + n - 1].decode("utf-8")
        off += n
        return s

    version = take("I")
    if version < 5:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported (need >= 5)")
    string()  # spec name
    take("I")  # revision
    out: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        rank = take("B")
        shape = [take("I") for _ in range(rank)]
        dtype_id = take("B")
        nbytes = take("I")
        if dtype_id not in _DTYPES:
            raise ValueError(f"{path}: variable {name!r} has an unsupported dtype id {dtype_id}")
        arr = np.frombuffer(
            buf, dtype=_DTYPES[dtype_id], count=nbytes // np.dtype(_DTYPES[dtype_id]).itemsize, offset=off
        )
        out[name] = arr.reshape(shape)
        off += nbytes
    return out


def openai_whisper_state_dict(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map CTranslate2 Whisper variables to an openai-whisper ``state_dict`` (float32 numpy arrays)."""
    if any(k.endswith("weight_scale") for k in v):
        raise ValueError("int8-quantized CTranslate2 weights are not supported; convert a float16/float32 model")
    sd: dict[str, np.ndarray] = {}

    def lin(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = v[f"{src}/weight"]
        if bias:
            sd[f"{dst}.bias"] = v[f"{src}/bias"]

    def ln(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def split(dst: str, names: list[str], src: str) -> None:
        w, b = v[f"{src}/weight"], v[f"{src}/bias"]
        d = w.shape[0] // len(names)
        for i, n in enumerate(names):
            sd[f"{dst}.{n}.weight"] = w[i * d : (i + 1) * d]
            if n != "key":
                sd[f"{dst}.{n}.bias"] = b[i * d : (i + 1) * d]
            elif np.any(b[i * d : (i + 1) * d] != 0):
                raise ValueError(f"{src}: nonzero key bias; openai-whisper's key projection has no bias")

    for part in ("encoder", "decoder"):
        n_layers = 1 + max(int(m.group(1)) for k in v if (m := re.match(rf"{part}/layer_(\d+)/", k)))
        for i in range(n_layers):
            s, d = f"{part}/layer_{i}", f"{part}.blocks.{i}"
            ln(f"{d}.attn_ln", f"{s}/self_attention/layer_norm")
            split(f"{d}.attn", ["query", "key", "value"], f"{s}/self_attention/linear_0")
            lin(f"{d}.attn.out", f"{s}/self_attention/linear_1")
            ln(f"{d}.mlp_ln", f"{s}/ffn/layer_norm")
            lin(f"{d}.mlp.0", f"{s}/ffn/linear_0")
            lin(f"{d}.mlp.2", f"{s}/ffn/linear_1")
            if part == "decoder":
                ln(f"{d}.cross_attn_ln", f"{s}/attention/layer_norm")
                lin(f"{d}.cross_attn.query", f"{s}/attention/linear_0")
                split(f"{d}.cross_attn", ["key", "value"], f"{s}/attention/linear_1")
                lin(f"{d}.cross_attn.out", f"{s}/attention/linear_2")
    lin("encoder.conv1", "encoder/conv1")
    lin("encoder.conv2", "encoder/conv2")
    sd["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
    ln("encoder.ln_post", "encoder/layer_norm")
    sd["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    sd["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    ln("decoder.ln", "decoder/layer_norm")
    return {k: np.asarray(a, dtype=np.float32) for k, a in sd.items()}


def openai_whisper_from_ctranslate2(model_dir: str | os.PathLike, alignment_heads: str | None = None) -> Any:
    """An ``whisper.model.Whisper`` (fp32, CPU) with the weights of a CTranslate2 Whisper folder.

    ``alignment_heads`` is openai-whisper's base85 string (e.g. ``whisper._ALIGNMENT_HEADS["tiny.en"]``); by default
    the folder's ``config.json`` ``alignment_heads`` list is used (needed for word timings).
    """
    import torch
    import whisper
    from whisper.model import ModelDimensions, Whisper

    model_dir = Path(model_dir)
    v = read_ctranslate2_variables(model_dir / "model.bin")
    sd = openai_whisper_state_dict(v)
    n_audio_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.blocks."))
    n_text_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.blocks."))
    dims = ModelDimensions(
        n_mels=sd["encoder.conv1.weight"].shape[1],
        n_audio_ctx=sd["encoder.positional_embedding"].shape[0],
        n_audio_state=sd["encoder.positional_embedding"].shape[1],
        n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=n_audio_layer,
        n_vocab=sd["decoder.token_embedding.weight"].shape[0],
        n_text_ctx=sd["decoder.positional_embedding"].shape[0],
        n_text_state=sd["decoder.positional_embedding"].shape[1],
        n_text_head=int(v["decoder/num_heads"]),
        n_text_layer=n_text_layer,
    )
    model = Whisper(dims)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(a) for k, a in sd.items()}, strict=False)
    missing = [k for k in missing if k not in ("decoder.mask", "alignment_heads")]
    if missing or unexpected:
        raise ValueError(f"weights do not fit openai-whisper's model: missing {missing}, unexpected {unexpected}")
    if alignment_heads is not None:
        model.set_alignment_heads(alignment_heads.encode() if isinstance(alignment_heads, str) else alignment_heads)
    else:
        cfg = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").exists() else {}
        heads = cfg.get("alignment_heads")
        if heads:
            mask = torch.zeros(n_text_layer, dims.n_text_head, dtype=torch.bool)
            for layer, head in heads:
                mask[layer, head] = True
            model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    del whisper
    return model.eval()
