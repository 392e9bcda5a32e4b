"""Files a user might receive: captures, LoRA adapters, evaluation results.

Each loader reads only safetensors / JSON / CSV. A pickle, a truncated file, a file of the right kind with arrays of
the wrong shape, or an unknown format version each raise the library's own exception class with a message that names
the problem. Fuzzing (hypothesis, ``max_examples`` set explicitly: 100 per strategy by default, 5000 in the slow run):
random bytes, byte flips / truncations / splices of a valid file, and (captures) random JSON put into the header. The
only allowed outcomes are a successful load or ``CaptureFileError`` / ``AdapterFileError`` / ``ResultsFileError``;
never another exception type, never a hang (each load runs under a 10 s alarm).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save, save_file

import attnlens as al
from attnlens.analyzers.synthetic import capture_from_maps, synthetic_layout
from attnlens.captures import CaptureFileError
from attnlens.eval.store import ResultsFileError, RowStore, read_results
from attnlens.train.lora import AdapterFileError, LoraConfig, add_lora, read_adapter, save_adapter

FUZZ_DEFAULT, FUZZ_SLOW = 100, 5000
COUNTS: dict[str, int] = {}


# ------------------------------------------------------------------------------------------- valid files


def small_capture():
    item = synthetic_layout([["hello", "world"]], n_caption=2)
    rng = np.random.default_rng(0)
    P = rng.random((1, 2, 1, 2, 4, item.n_keys))
    P /= P.sum(-1, keepdims=True)
    return capture_from_maps(P, [item], layers=[2, 5], heads=[3, 7], steps=[1], timesteps=[1.0, 0.9])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("valid")
    cap_path = small_capture().save(str(d / "cap.attn"))
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel

    torch.manual_seed(0)
    tr = AceStepTransformer1DModel(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=8, in_channels=24, audio_acoustic_hidden_dim=8, sliding_window=4,
    )  # fmt: skip
    add_lora(tr, LoraConfig(rank=2, targets=("cross_attn",), projections=("q", "k")))
    ad_path = save_adapter(tr, str(d / "adapter"))
    res_path = d / "results.csv"
    store = RowStore(res_path)
    for i in range(4):
        store.add({"prompt_id": f"p{i}", "variant": "base", "seed": 0, "wer": 0.25 * i, "transcription": f"la {i}"})
    return {"capture": cap_path, "adapter": ad_path, "results": str(res_path)}


@pytest.fixture(scope="module")
def loaders():
    return {
        "capture": (al.load_capture, CaptureFileError),
        "adapter": (read_adapter, AdapterFileError),
        "results": (read_results, ResultsFileError),
    }


# ------------------------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize("kind", ["capture", "adapter", "results"])
def test_pickles_are_refused(tmp_path, loaders, kind):
    load, err = loaders[kind]
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps({"a": np.ones(3)}))
    with pytest.raises(err, match="pickle"):
        load(str(p))
    torch.save({"w": torch.ones(3)}, tmp_path / "t.pt")
    with pytest.raises(err, match="pickle"):
        load(str(tmp_path / "t.pt"))


@pytest.mark.parametrize("kind", ["capture", "adapter"])
@pytest.mark.parametrize("frac", [0.0, 0.01, 0.5, 0.99])
def test_truncated_binary_files(tmp_path, files, loaders, kind, frac):
    load, err = loaders[kind]
    raw = open(files[kind], "rb").read()
    p = tmp_path / "cut"
    p.write_bytes(raw[: int(len(raw) * frac)])
    with pytest.raises(err, match="truncated|too short|damaged"):
        load(str(p))


def test_truncated_results_file(tmp_path, files):
    raw = open(files["results"], "rb").read()
    p = tmp_path / "results.csv"
    p.write_bytes(raw[:-7])  # the last row cut short (no line end): never read as a half row
    with pytest.warns(UserWarning, match="cut short"):
        df = read_results(p)
    assert list(df.prompt_id) == ["p0", "p1", "p2"] and list(df.wer) == [0.0, 0.25, 0.5]
    p.write_bytes(b"")
    with pytest.raises(ResultsFileError, match="empty"):
        read_results(p)
    # a row that lost fields in the middle of the file
    lines = raw.decode().splitlines(keepends=True)
    p.write_text(lines[0] + lines[1] + "p9,base\n" + lines[2])
    with pytest.raises(ResultsFileError, match="row 2 has 2 fields but the header has 5"):
        read_results(p)


def _rewrite_capture(path, out, header_fn=None, tensor_fn=None):
    from safetensors.torch import load

    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["attnlens"])
    tensors = load(raw)
    if header_fn:
        header_fn(header)
    if tensor_fn:
        tensor_fn(tensors)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    open(out, "wb").write(save(tensors, metadata={"attnlens": json.dumps(header)}))
    return str(out)


def test_capture_wrong_shapes_and_versions(tmp_path, files):
    good = files["capture"]
    assert al.load_capture(good).stats["entropy"].shape == (1, 2, 1, 2, 4)

    def flat(t):
        t["stats.entropy"] = t["stats.entropy"].reshape(-1)  # right data, wrong ndim

    p = _rewrite_capture(good, tmp_path / "a", tensor_fn=flat)
    with pytest.raises(CaptureFileError, match=r"statistic 'entropy' has shape \(16,\).*expected 5 dims"):
        al.load_capture(p)

    def swap_heads(t):
        t["stats.mass"] = t["stats.mass"][:, :, :, :1]  # one head where the header says two

    p = _rewrite_capture(good, tmp_path / "b", tensor_fn=swap_heads)
    with pytest.raises(CaptureFileError, match=r"statistic 'mass' has shape \(1, 2, 1, 1, 4, 5\)"):
        al.load_capture(p)

    def wrong_keys(t):
        t["maps"] = t["maps"][..., :-1]

    p = _rewrite_capture(good, tmp_path / "c", tensor_fn=wrong_keys)
    with pytest.raises(CaptureFileError, match="maps have .* keys but the layout has"):
        al.load_capture(p)

    def int_entropy(t):
        t["stats.entropy"] = t["stats.entropy"].to(torch.int32)

    p = _rewrite_capture(good, tmp_path / "d", tensor_fn=int_entropy)
    with pytest.raises(CaptureFileError, match="torch.int32.*expected 5 dims torch.float32"):
        al.load_capture(p)

    p = _rewrite_capture(good, tmp_path / "e", header_fn=lambda h: h.update(version=99))
    with pytest.raises(CaptureFileError, match="version 99 is not supported"):
        al.load_capture(p)
    p = _rewrite_capture(good, tmp_path / "f", header_fn=lambda h: h.update(format="other.tool"))
    with pytest.raises(CaptureFileError, match="format 'other.tool'"):
        al.load_capture(p)
    p = _rewrite_capture(good, tmp_path / "g", header_fn=lambda h: h.update(steps=[5]))
    with pytest.raises(CaptureFileError, match=r"kept steps \[5\] out of range"):
        al.load_capture(p)
    p = _rewrite_capture(good, tmp_path / "h", header_fn=lambda h: h.pop("layers"))
    with pytest.raises(CaptureFileError, match="malformed capture metadata.*layers"):
        al.load_capture(p)
    # found by the long fuzz run: JSON "Infinity" where an integer belongs (int(inf) raised OverflowError)
    p = _rewrite_capture(good, tmp_path / "i", header_fn=lambda h: h["layout"]["items"][0].update(word_index=[1e999]))
    with pytest.raises(CaptureFileError, match="malformed capture metadata.*infinity"):
        al.load_capture(p)


def test_adapter_wrong_shapes_and_metadata(tmp_path, files):
    from safetensors import safe_open

    with safe_open(files["adapter"], framework="pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}
    sd0, cfg = read_adapter(files["adapter"])
    assert cfg["r"] == 2 and set(sd0) == set(sd)
    a_key = next(k for k in sd if ".lora_A." in k)

    def write(name, tensors, metadata):
        save_file(tensors, str(tmp_path / name), metadata=metadata)
        return str(tmp_path / name)

    p = write("ndim.safetensors", {**sd, a_key: sd[a_key].reshape(-1)}, meta)
    with pytest.raises(AdapterFileError, match=r"has shape \(\d+,\).*LoRA factors are 2-D"):
        read_adapter(p)
    p = write("rank.safetensors", {**sd, a_key: sd[a_key][:1]}, meta)
    with pytest.raises(AdapterFileError, match="disagree on the rank"):
        read_adapter(p)
    p = write("nometa.safetensors", sd, {"format": "pt"})
    with pytest.raises(AdapterFileError, match="no 'lora_adapter_metadata'"):
        read_adapter(p)
    p = write("badjson.safetensors", sd, {**meta, "lora_adapter_metadata": "{not json"})
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        read_adapter(p)


def test_eval_refuses_pickled_adapter_folder(tmp_path, files):
    """diffusers' load_lora_adapter would fall back to torch.load on a folder with only a .bin: refused up front."""
    from safetensors.torch import load_file

    from attnlens.eval import parse_variants

    d = tmp_path / "pickled"
    d.mkdir()
    torch.save(load_file(files["adapter"]), d / "pytorch_lora_weights.bin")
    with pytest.raises(ValueError, match="holds pickle weights.*never loads pickles"):
        parse_variants({"lora": str(d)})
    with pytest.raises(ValueError, match="not a .safetensors file"):
        parse_variants({"lora": str(d / "pytorch_lora_weights.bin")})
    assert parse_variants({"lora": os.path.dirname(files["adapter"])})[0].path


def test_results_not_a_results_file(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ResultsFileError, match="not a results file.*'variant'"):
        read_results(p)
    p.write_text("prompt_id,variant,seed,wer\np0,base,0,0.1\np0,base,0,0.2\n")
    with pytest.raises(ResultsFileError, match="2 rows share a key"):
        read_results(p)
    p.write_bytes(b"prompt_id,variant\n\xff\xfe\n")
    with pytest.raises(ResultsFileError, match="not a UTF-8"):
        read_results(p)


# ------------------------------------------------------------------------------------------------ fuzzing


@contextmanager
def alarm(seconds: float):
    def on_alarm(signum, frame):
        raise TimeoutError(f"a load took more than {seconds} s (a hang?)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_load(kind, loaders, path, data: bytes) -> str:
    load, err = loaders[kind]
    with open(path, "wb") as f:
        f.write(data)
    COUNTS[kind] = COUNTS.get(kind, 0) + 1
    with alarm(10), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            load(path)
            return "ok"
        except err as e:
            assert str(e), "an error without a message"
            return "error"


def mutate(raw: bytes, data) -> bytes:
    n = len(raw)
    how = data.draw(st.sampled_from(["flip", "truncate", "flip+truncate", "splice", "header"]))
    b = bytearray(raw)
    if how in ("flip", "flip+truncate"):
        for pos, val in data.draw(
            st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), min_size=1, max_size=8)
        ):
            b[pos] = val
    if how == "header":  # hit the 8-byte length and the JSON header, where the structure lives
        hi = min(n - 1, 8 + struct.unpack("<Q", raw[:8])[0]) if n >= 8 else n - 1
        for pos, val in data.draw(st.lists(st.tuples(st.integers(0, hi), st.integers(0, 255)), min_size=1, max_size=4)):
            b[pos] = val
    if how == "splice":
        i, j = sorted(data.draw(st.tuples(st.integers(0, n), st.integers(0, n))))
        b[i:j] = data.draw(st.binary(max_size=64))
    if how in ("truncate", "flip+truncate"):
        b = b[: data.draw(st.integers(0, n))]
    return bytes(b)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


def json_places(x, prefix=()) -> list[tuple]:
    """Every place inside a JSON value, at every level, as key paths (lists: their first three entries)."""
    if isinstance(x, dict):
        entries = list(x.items())
    elif isinstance(x, list):
        entries = list(enumerate(x[:3]))
    else:
        return []
    out = []
    for k, v in entries:
        out.append(prefix + (k,))
        out += json_places(v, prefix + (k,))
    return out


def _put(d, place, value):
    for k in place[:-1]:
        d = d[k]
    d[place[-1]] = value


def header_places(raw: bytes) -> list[tuple]:
    """Places a header fuzz case replaces: the safetensors JSON header itself and every place in it (tensor
    entries, ``__metadata__``, the ``attnlens`` string), the attnlens header itself and every place in it."""
    (m,) = struct.unpack("<Q", raw[:8])
    outer = json.loads(raw[8 : 8 + m])
    header = json.loads(outer["__metadata__"]["attnlens"])
    return [("outer",) + p for p in [()] + json_places(outer)] + [("attnlens",) + p for p in [()] + json_places(header)]


def with_header_value(raw: bytes, place: tuple, value) -> bytes:
    """The capture file ``raw`` with the JSON value at ``place`` (see :func:`header_places`) replaced."""
    (m,) = struct.unpack("<Q", raw[:8])
    outer = json.loads(raw[8 : 8 + m])
    where, rest = place[0], place[1:]
    if where == "outer":
        if rest:
            _put(outer, rest, value)
        else:
            outer = value
    else:
        header = json.loads(outer["__metadata__"]["attnlens"])
        if rest:
            _put(header, rest, value)
        else:
            header = value
        outer["__metadata__"]["attnlens"] = json.dumps(header)
    text = json.dumps(outer).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + m :]


def _fuzz(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _run_fuzz(n, kind, loaders, files, tmp_path_factory, strategy_name):
    d = tmp_path_factory.mktemp(f"fuzz-{kind}-{strategy_name}")
    path = str(d / ("results.csv" if kind == "results" else "f.bin"))
    raw = open(files[kind], "rb").read()
    outcomes = {"ok": 0, "error": 0}
    key = f"{kind}:{strategy_name}"
    start = COUNTS.get(kind, 0)

    if strategy_name == "random":

        @_fuzz(n)
        @given(st.binary(max_size=4096) | st.binary(max_size=64).map(lambda b: raw[:16] + b))
        def run(data):
            outcomes[check_load(kind, loaders, path, data)] += 1

    elif strategy_name == "mutate":

        @_fuzz(n)
        @given(st.data())
        def run(data):
            outcomes[check_load(kind, loaders, path, mutate(raw, data))] += 1

    else:  # capture headers: a random JSON value (any type) at a random place, at every level

        @_fuzz(n)
        @given(st.sampled_from(header_places(raw)), json_values)
        def run(where, value):
            outcomes[check_load(kind, loaders, path, with_header_value(raw, where, value))] += 1

    run()
    tried = COUNTS.get(kind, 0) - start
    print(f"fuzz {key}: {tried} inputs, {outcomes}")
    assert tried >= 0.9 * n, tried
    return outcomes


@pytest.mark.parametrize("strategy_name", ["random", "mutate"])
@pytest.mark.parametrize("kind", ["capture", "adapter", "results"])
def test_fuzz_loaders(kind, strategy_name, loaders, files, tmp_path_factory):
    out = _run_fuzz(FUZZ_DEFAULT, kind, loaders, files, tmp_path_factory, strategy_name)
    assert out["error"] > 0


def test_fuzz_capture_header_json(loaders, files, tmp_path_factory):
    out = _run_fuzz(FUZZ_DEFAULT, "capture", loaders, files, tmp_path_factory, "header")
    assert out["error"] > 0 and out["ok"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("strategy_name", ["random", "mutate", "header"])
@pytest.mark.parametrize("kind", ["capture", "adapter", "results"])
def test_fuzz_loaders_long(kind, strategy_name, loaders, files, tmp_path_factory):
    if strategy_name == "header" and kind != "capture":
        pytest.skip("structured header fuzzing is for captures")
    _run_fuzz(FUZZ_SLOW, kind, loaders, files, tmp_path_factory, strategy_name)
