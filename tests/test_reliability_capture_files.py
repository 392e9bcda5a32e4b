"""Capture files a capture cannot have made, and paths that are not regular files.

- the safetensors JSON header with the wrong JSON type at any level (the header itself, ``__metadata__``, the
  ``attnlens`` entry, the attnlens header, each of its fields) raises ``CaptureFileError``, never ``TypeError`` /
  ``AttributeError``, and a field of the wrong type is never read as something else (a string as a list of
  characters);
- arrays no capture can hold (masses adding to 5, an argmax past the last key, maps of the wrong shape or dtype,
  rows of maps not adding to 1, a layer index twice, a mass axis that does not match the layout's own vocabulary)
  are refused on load, with a message naming the array and the expected value; NaN (flagged non-finite
  attention) still loads;
- ``load_capture`` of a device, a FIFO or a folder is refused before reading (``/dev/zero`` was read until
  ``MemoryError``, a FIFO blocked);
- every writer that goes through ``attnlens.files.atomic_write`` refuses to replace a device, a FIFO or a folder,
  and writes through a symbolic link to its target (the link stays).
"""

from __future__ import annotations

import json
import os
import stat
import struct

import numpy as np
import pytest
import torch
from test_reliability_files import _rewrite_capture, alarm, small_capture

import attnlens as al
from attnlens.analyzers.synthetic import capture_from_maps
from attnlens.captures import CaptureFileError, ItemLayout
from attnlens.files import (
    NotARegularFileError,
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from attnlens.segments import Segments


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return small_capture().save(str(tmp_path_factory.mktemp("good") / "cap.attn"))


def _with_outer(raw: bytes, fn) -> bytes:
    """The file with its safetensors JSON header replaced by ``fn(header)`` (tensor data unchanged)."""
    (n,) = struct.unpack("<Q", raw[:8])
    text = json.dumps(fn(json.loads(raw[8 : 8 + n]))).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def _set_meta(value):
    def fn(outer):
        outer["__metadata__"] = value
        return outer

    return fn


def _set_entry(fn_header):
    def fn(outer):
        header = json.loads(outer["__metadata__"]["attnlens"])
        outer["__metadata__"]["attnlens"] = fn_header(header)
        return outer

    return fn


def _field(path, value):
    def fn(header):
        d = header
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        if isinstance(d, list):
            d[int(keys[-1])] = value
        else:
            d[keys[-1]] = value
        return json.dumps(header)

    return fn


OUTER_CASES = {
    # the safetensors header itself
    "outer-int": (lambda o: 5, "not an object"),
    "outer-list": (lambda o: [o], "not an object"),
    "outer-string": (lambda o: "attnlens", "not an object"),
    # its __metadata__
    "metadata-int": (_set_meta(5), "'__metadata__'.*a number; expected an object of strings"),
    "metadata-list": (_set_meta(["attnlens"]), "'__metadata__'.*a list; expected an object"),
    "metadata-string": (_set_meta("attnlens"), "'__metadata__'.*a string; expected an object"),
    # the attnlens entry
    "entry-list": (_set_entry(lambda h: [h]), "'attnlens' metadata is a list; expected a string"),
    "entry-object": (_set_entry(lambda h: h), "'attnlens' metadata is an object; expected a string"),
    "entry-int": (_set_entry(lambda h: 1), "'attnlens' metadata is a number"),
    # the attnlens header
    "header-list": (_set_entry(lambda h: json.dumps([h])), "attnlens metadata is a list; expected a JSON object"),
    "header-string": (_set_entry(lambda h: json.dumps("x")), "attnlens metadata is a string"),
    "header-null": (_set_entry(lambda h: "null"), "attnlens metadata is null"),
    # its fields
    "layers-string": (_set_entry(_field("layers", "25")), "'layers' must be a list of integers; got '25'"),
    "layers-bools": (_set_entry(_field("layers", [True, False])), "'layers' must be a list of integers"),
    "layers-floats": (_set_entry(_field("layers", [2.5, 5])), "'layers' must be a list of integers"),
    "heads-object": (_set_entry(_field("heads", {"3": 1, "7": 1})), "'heads' must be a list of integers"),
    "steps-int": (_set_entry(_field("steps", 1)), "'steps' must be a list of integers"),
    "timesteps-string": (_set_entry(_field("timesteps", "10")), "'timesteps' must be a list of finite numbers"),
    "timesteps-nan": (_set_entry(_field("timesteps", [1.0, float("nan")])), "'timesteps' must be a list of finite"),
    "labels-string": (_set_entry(_field("batch_labels", "c")), "'batch_labels' must be a list of strings"),
    "labels-ints": (_set_entry(_field("batch_labels", [0])), "'batch_labels' must be a list of strings"),
    "frame-rate-string": (_set_entry(_field("frame_rate", "12.5")), "'frame_rate' must be a positive number"),
    "frame-rate-zero": (_set_entry(_field("frame_rate", 0)), "'frame_rate' must be a positive number"),
    "model-list": (_set_entry(_field("model", [["class", "x"]])), "'model' must be an object"),
    "meta-string": (_set_entry(_field("meta", "ab")), "'meta' must be an object"),
    "layout-list": (_set_entry(_field("layout", [])), "the layout"),
    "layout-items-object": (_set_entry(_field("layout.items", {})), "the layout"),
    "layout-vocabulary-list": (_set_entry(_field("layout.vocabulary", ["lyric"])), "the layout.*vocabulary"),
    "layout-item-list": (_set_entry(_field("layout.items.0", [])), "the layout.*expected an object"),
    "layout-segments-int": (_set_entry(_field("layout.items.0.segments", 7)), "the layout"),
}


@pytest.mark.parametrize("case", sorted(OUTER_CASES))
def test_header_json_types(tmp_path, good, case):
    fn, message = OUTER_CASES[case]
    p = tmp_path / "bad.attn"
    p.write_bytes(_with_outer(open(good, "rb").read(), fn))
    with pytest.raises(CaptureFileError, match=message):
        al.load_capture(p)


# ------------------------------------------------------------------------------------------------ arrays


def _voc3() -> Segments:
    return Segments(names=("prompt", "padding", "timing"), sequence="prompt", family="three")


def _capture3():
    """A capture of a 3-segment family (not ACE-Step's five)."""
    item = ItemLayout(segments=["prompt"] * 4 + ["padding"] * 2 + ["timing"] * 2, vocabulary=_voc3())
    rng = np.random.default_rng(1)
    P = rng.random((1, 2, 1, 2, 3, item.n_keys))
    P /= P.sum(-1, keepdims=True)
    return capture_from_maps(P, [item], layers=[0, 4], heads=[1, 2], steps=[0], timesteps=[1.0])


def _t(name, fn):
    def tensor_fn(t):
        t[name] = fn(t[name])

    return tensor_fn


def _plant(index, value):
    def fn(x):
        x = x.clone()
        x[index] = value
        return x

    return fn


ARRAY_CASES = {
    "mass-adds-to-5": (_t("stats.mass", lambda m: m * 5), r"segment mass|add to 5"),
    "mass-adds-to-2": (
        _t("stats.mass", _plant((0, 0, 0, 0, 0, 0), 1.0)),
        r"segment masses at \(step, layer, batch, head, frame\) \(0, 0, 0, 0, 0\) add to .*they must add to 1",
    ),
    "mass-negative": (_t("stats.mass", _plant((0, 1, 0, 1, 2, 3), -0.5)), "segment mass -0.5 at .*lies in"),
    "mass-4-segments": (
        _t("stats.mass", lambda m: m[..., :4]),
        r"'mass' has 4 segments; the layout's vocabulary \(ace-step\) has 5",
    ),
    "argmax-1e9": (
        _t("stats.argmax", _plant((0, 0, 0, 1, 3), 10**9)),
        r"'argmax' is 1000000000 at .* \(0, 0, 0, 1, 3\); expected a packed key index in \[0, 13\)",
    ),
    "argmax-negative": (_t("stats.argmax", _plant((0, 0, 0, 0, 0), -1)), "'argmax' is -1"),
    "lyric-argmax-past-L": (
        _t("stats.lyric_argmax", _plant((0, 1, 0, 0, 1), 4)),
        r"'lyric_argmax' is 4 .*lyric set L in \[0, 4\), or -1",
    ),
    "entropy-above-1": (_t("stats.entropy", _plant((0, 0, 0, 0, 0), 3.0)), "'entropy' is 3 .*lies in \\[0, 1\\]"),
    "entropy-lyric-negative": (_t("stats.entropy_lyric", _plant((0, 0, 0, 0, 0), -1.0)), "'entropy_lyric' is -1"),
    "maps-int8": (_t("maps", lambda m: (m * 100).to(torch.int8)), "maps are torch.int8; expected torch.float32"),
    "maps-row-adds-to-2": (_t("maps", lambda m: m * 2), "a row of maps adds to 2 .*attention rows add to 1"),
    "maps-above-1": (_t("maps", _plant((0, 0, 0, 0, 0, 0), 7.0)), "maps hold 7 at .*lie in \\[0, 1\\]"),
    "maps-fewer-frames": (_t("maps", lambda m: m[..., :3, :]), "maps have 3 frames; the statistics have 4"),
}


@pytest.mark.parametrize("case", sorted(ARRAY_CASES))
def test_values_no_capture_can_hold(tmp_path, good, case):
    tensor_fn, message = ARRAY_CASES[case]
    p = _rewrite_capture(good, tmp_path / "bad.attn", tensor_fn=tensor_fn)
    with pytest.raises(CaptureFileError, match=message):
        al.load_capture(p)


@pytest.mark.parametrize(
    "header_fn, message",
    [
        (lambda h: h.update(layers=[2, 2]), r"layers \[2\] appear more than once in \[2, 2\]"),
        (lambda h: h.update(heads=[7, 7]), r"heads \[7\] appear more than once"),
        (lambda h: h.update(layers=[-1, 5]), r"negative layers index in \[-1, 5\]"),
    ],
    ids=["layers", "heads", "negative-layer"],
)
def test_duplicate_indices(tmp_path, good, header_fn, message):
    p = _rewrite_capture(good, tmp_path / "bad.attn", header_fn=header_fn)
    with pytest.raises(CaptureFileError, match=message):
        al.load_capture(p)


def test_maps_mean_shape_and_dtype(tmp_path, good):
    def mean(t):
        t["maps_mean"] = t["maps"].mean(0)

    cap = al.load_capture(_rewrite_capture(good, tmp_path / "ok.attn", tensor_fn=mean))
    assert cap.maps_mean.shape == (2, 1, 2, 4, 13)

    def wrong(t):
        t["maps_mean"] = t["maps"].mean(0)[:, :, :1]  # one head where the header says two

    with pytest.raises(CaptureFileError, match=r"maps_mean have shape \(2, 1, 1, 4, 13\); expected \(layer, batch"):
        al.load_capture(_rewrite_capture(good, tmp_path / "a.attn", tensor_fn=wrong))

    def half(t):
        t["maps_mean"] = t["maps"].mean(0).half()

    with pytest.raises(CaptureFileError, match="maps_mean are torch.float16"):
        al.load_capture(_rewrite_capture(good, tmp_path / "b.attn", tensor_fn=half))


def test_segment_count_comes_from_the_files_vocabulary(tmp_path):
    """A family with 3 segments loads; ACE-Step's 5 masses under that vocabulary are refused."""
    p = _capture3().save(str(tmp_path / "three.attn"))
    cap = al.load_capture(p)
    assert cap.layout.vocabulary == _voc3() and cap.stats["mass"].shape[-1] == 3

    def five(t):
        m = t["stats.mass"]
        t["stats.mass"] = torch.cat([m, torch.zeros(*m.shape[:-1], 2)], -1)

    with pytest.raises(CaptureFileError, match=r"'mass' has 5 segments; the layout's vocabulary \(three\) has 3"):
        al.load_capture(_rewrite_capture(p, tmp_path / "five.attn", tensor_fn=five))


def test_nan_flagged_attention_still_loads(tmp_path, good):
    """A capture of non-finite attention (NaN statistics, its argmax meaningless) loads; analysis names it."""

    def nan(t):
        for name in ("stats.entropy", "stats.entropy_lyric"):
            t[name] = _plant((0, 1, 0, 0, 2), float("nan"))(t[name])
        t["stats.mass"] = _plant((0, 1, 0, 0, 2), float("nan"))(t["stats.mass"])
        t["stats.argmax"] = _plant((0, 1, 0, 0, 2), 2**31 - 1)(t["stats.argmax"])
        t["maps"] = _plant((0, 1, 0, 0, 2), float("nan"))(t["maps"])

    cap = al.load_capture(_rewrite_capture(good, tmp_path / "nan.attn", tensor_fn=nan))
    assert torch.isnan(cap.stats["entropy"]).sum() == 1
    with pytest.raises(ValueError, match="step 1, layer 5, batch 0, head 3"):
        al.analyze(cap)


def test_unknown_layout_masses_add_to_at_most_one(tmp_path):
    """Keys of unknown segment count in no mass: such a capture loads with masses adding to 0, not above 1."""
    item = ItemLayout.unknown(6)
    P = np.full((1, 1, 1, 1, 2, 6), 1 / 6)
    p = capture_from_maps(P, [item], steps=[0], timesteps=[1.0]).save(str(tmp_path / "u.attn"))
    cap = al.load_capture(p)
    assert float(cap.stats["mass"].sum()) == 0.0

    def over(t):
        t["stats.mass"] = _plant((0, 0, 0, 0, 0), 0.7)(t["stats.mass"])

    with pytest.raises(CaptureFileError, match=r"add to 3\.5; they must add to at most 1"):
        al.load_capture(_rewrite_capture(p, tmp_path / "over.attn", tensor_fn=over))


# ------------------------------------------------------------------------------------- not regular files


def test_load_refuses_devices_fifos_and_folders(tmp_path, good):
    fifo = tmp_path / "pipe.attn"
    os.mkfifo(fifo)
    with alarm(5):  # opening a FIFO for reading used to block until a writer came
        with pytest.raises(CaptureFileError, match=r"pipe.attn is a FIFO \(named pipe\), not a regular file"):
            al.load_capture(fifo)
    with alarm(5), pytest.raises(CaptureFileError, match="is a folder, not a regular file"):
        al.load_capture(tmp_path)
    if os.path.exists("/dev/zero"):  # read without end until MemoryError
        with alarm(5), pytest.raises(CaptureFileError, match="/dev/zero is a character device, not a regular file"):
            al.load_capture("/dev/zero")
    link = tmp_path / "link.attn"
    link.symlink_to(good)
    assert al.load_capture(link).layers == [2, 5]


def test_header_read_is_capped(tmp_path):
    """A length prefix past the cap is refused before the header is read (a sparse 300 MB file)."""
    p = tmp_path / "big.attn"
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", 200 << 20) + b"{")
        f.truncate(300 << 20)
    with alarm(5), pytest.raises(CaptureFileError, match=r"header length 209715200 exceeds .* limit 104857600"):
        al.load_capture(p)


def _writers():
    cap = small_capture()
    return {
        "Capture.save": lambda p: cap.save(str(p)),
        "atomic_write_text": lambda p: atomic_write_text(p, "x"),
        "atomic_write_bytes": lambda p: atomic_write_bytes(p, b"x"),
        "atomic_write_json": lambda p: atomic_write_json(p, {"x": 1}),
        "atomic_save_safetensors": lambda p: atomic_save_safetensors(p, {"x": torch.ones(2)}),
    }


WRITERS = ["Capture.save", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "atomic_save_safetensors"]


def _char_device(path) -> bool:
    """A character device like /dev/null made in a test folder (needs CAP_MKNOD); False where not allowed."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError):
        return False
    return True


@pytest.mark.parametrize("writer", WRITERS)
def test_writers_never_replace_what_is_not_a_regular_file(tmp_path, writer):
    write = _writers()[writer]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFileError, match=r"refusing to write .*fifo: it is a FIFO \(named pipe\)"):
        write(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(NotARegularFileError, match="it is a folder"):
        write(folder)
    assert folder.is_dir()
    dev = tmp_path / "full"
    if _char_device(dev):  # what happened to /dev/full, without touching /dev
        with pytest.raises(NotARegularFileError, match="it is a character device"):
            write(dev)
        assert stat.S_ISCHR(os.lstat(dev).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fifo", "folder"] + (["full"] if dev.exists() else []))


@pytest.mark.parametrize("writer", WRITERS)
def test_writers_write_through_symlinks(tmp_path, writer):
    write = _writers()[writer]
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "file"
    target.write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to(target)
    write(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() != b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    assert [p.name for p in (tmp_path / "real").iterdir()] == ["file"]  # no temporary file left
    # a link to a FIFO is refused like the FIFO, and stays
    os.mkfifo(tmp_path / "real" / "fifo")
    link2 = tmp_path / "link2"
    link2.symlink_to(tmp_path / "real" / "fifo")
    with pytest.raises(NotARegularFileError, match="the target of the symbolic link"):
        write(link2)
    assert link2.is_symlink()
    # a dangling link: the write creates its target
    link3 = tmp_path / "link3"
    link3.symlink_to(tmp_path / "real" / "new")
    write(link3)
    assert link3.is_symlink() and (tmp_path / "real" / "new").is_file()


def test_saved_capture_through_symlink_loads(tmp_path):
    target = tmp_path / "c.attn"
    target.write_bytes(b"")
    (tmp_path / "l.attn").symlink_to(target)
    small_capture().save(str(tmp_path / "l.attn"))
    assert al.load_capture(target).heads == [3, 7]


def _pad_to_0x80(write, limit=600) -> bytes:
    """``write(padding)`` -> file bytes, for the first padding whose file starts with byte 0x80 (the first byte of
    a pickle) because its header length is 128 modulo 256."""
    for k in range(limit):
        raw = write("x" * k)
        if raw[:1] == b"\x80":
            return raw
    raise AssertionError("no padding gave a header length of 128 modulo 256")


def test_header_length_starting_with_0x80_is_not_a_pickle(tmp_path):
    """One safetensors file in 256 has a header length whose first byte is 0x80: a capture or adapter, not a
    pickle."""
    from safetensors.torch import load_file, save_file

    from attnlens.train.lora import read_adapter

    cap = small_capture()
    p = tmp_path / "c.attn"

    def write_capture(pad):
        cap.meta["pad"] = pad
        cap.save(str(p))
        return p.read_bytes()

    _pad_to_0x80(write_capture)
    assert al.load_capture(p).meta["pad"].startswith("x")

    key = "transformer.blocks.0.attn.to_q.lora_A.weight"
    sd = {key: torch.ones(2, 4), key.replace("lora_A", "lora_B"): torch.ones(4, 2)}
    a = tmp_path / "a.safetensors"

    def write_adapter(pad):
        save_file(sd, str(a), metadata={"lora_adapter_metadata": json.dumps({"r": 2}), "pad": pad})
        return a.read_bytes()

    _pad_to_0x80(write_adapter)
    assert read_adapter(str(a))[1] == {"r": 2} and set(load_file(str(a))) == set(sd)
