"""Small tables and layouts on the device: offset tables of several layers, the table arena, shared layouts."""

from __future__ import annotations

import pytest
import torch

from attnlens.devices import TableArena
from attnlens.reducers.layer_table import UNIT, layer_offsets, layer_tables


def _layers_in(buf: torch.Tensor, starts: list[int], shape: tuple[int, ...]) -> list[torch.Tensor]:
    n = 1
    for s in shape:
        n *= s
    return [buf[s : s + n].view(shape) for s in starts]


def test_layer_tables_gives_each_group_its_offsets_and_keeps_tables_aligned():
    buf = torch.arange(4096, dtype=torch.float32)
    qs = _layers_in(buf, [0, 320, 96], (2, 3, 16))  # 96 elements each, at multiples of 16
    ks = _layers_in(buf, [1024, 2048], (4, 16))
    (qb, kb), (qt, kt) = layer_tables([qs, ks])
    assert qb is qs[0] and kb is ks[0]  # read in place: nothing copied
    assert qt.tolist() == [0, 320 // UNIT, 96 // UNIT]
    assert kt.tolist() == [0, (2048 - 1024) // UNIT]
    assert kt.data_ptr() % 16 == 0  # three int64 entries padded to four: the second table starts 16-byte aligned
    for base, tab, xs in ((qb, qt, qs), (kb, kt, ks)):
        flat = base.reshape(-1)
        for x, off in zip(xs, tab.tolist()):
            got = torch.as_strided(flat, x.shape, x.stride(), base.storage_offset() + off * UNIT)
            assert torch.equal(got, x)


def test_layer_offsets_stacks_layers_it_cannot_reach_in_units_of_16():
    buf = torch.arange(1024, dtype=torch.float32)
    xs = _layers_in(buf, [0, 200, 40], (2, 16))  # 40 and 200 are not multiples of 16
    base, offs = layer_offsets(xs)
    assert base.data_ptr() != buf.data_ptr()
    assert offs == [0, 2, 4]  # a new block, layer l at l * 32 elements
    for x, off in zip(xs, offs):
        got = torch.as_strided(base, x.shape, x.stride(), base.storage_offset() + off * UNIT)
        assert torch.equal(got, x)
    _, tables = layer_tables([xs[:1]])
    assert tables == [None]  # one layer needs no table


def test_layer_tables_refuses_groups_on_different_devices():
    cpu = [torch.zeros(2, 16), torch.zeros(2, 16)]
    meta = [torch.empty(2, 16, device="meta")] * 2
    with pytest.raises(ValueError, match=r"one device; got \['cpu', 'meta'\]"):
        layer_tables([cpu, meta])
    with pytest.raises(ValueError, match="needs them on one device"):
        layer_tables([[cpu[0], meta[0]]])


def test_layer_tables_takes_tables_from_an_arena_of_the_same_device_only():
    buf = torch.arange(512, dtype=torch.float32)
    xs = _layers_in(buf, [0, 64], (4, 16))
    put = []

    class Recording(TableArena):
        def put(self, values):
            put.append(list(values))
            return super().put(values)

    _, (tab,) = layer_tables([xs], Recording("cpu"))
    assert put == [[0, 4]] and tab.tolist() == [0, 4]
    _, (tab,) = layer_tables([xs], Recording("meta"))  # an arena for another device is passed over
    assert put == [[0, 4]] and tab.device.type == "cpu" and tab.tolist() == [0, 4]


def test_device_layout_is_shared_by_captures_of_one_layout():
    from attnlens.captures import ItemLayout
    from attnlens.captures.device_tables import device_layout as _device_layout

    a = ItemLayout.from_segment_lengths(lyric=3, lyric_meta=2, timbre=1, caption=2)
    b = ItemLayout.from_segment_lengths(lyric=2, lyric_meta=3, timbre=1, caption=2)
    dev = torch.device("cpu")
    first = _device_layout([a, b], 5, dev)
    again = _device_layout([ItemLayout.from_segment_lengths(lyric=3, lyric_meta=2, timbre=1, caption=2), b], 5, dev)
    assert all(x is y for x, y in zip(first, again))  # same content: the same tensors (launch plans are reused)
    other = _device_layout([b, a], 5, dev)
    assert other[0] is not first[0]
    codes, onehot, lidx, n_l, codes32, lidx32, n_l32 = first
    assert torch.equal(codes.int(), codes32)
    assert onehot.shape == (2, 8, 5) and torch.equal(onehot.sum(-1), torch.ones(2, 8))
    assert lidx.tolist() == [[0, 1, 2, -1, -1, -1, -1, -1], [0, 1, -1, -1, -1, -1, -1, -1]]
    assert n_l.tolist() == [3, 2] and torch.equal(n_l32, n_l.int()) and torch.equal(lidx32, lidx.int())
    assert torch.equal(onehot.argmax(-1).int(), codes32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_table_arena_uploads_without_waiting_and_rolls_over():
    arena = TableArena("cuda", size=8)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tabs = [arena.put([i, i + 1, i + 2]) for i in range(5)]  # 3 values take 4 places: two tables per slab
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert [t.tolist() for t in tabs] == [[i, i + 1, i + 2] for i in range(5)]
    assert all(t.is_cuda and t.data_ptr() % 16 == 0 for t in tabs)
    assert len({t.untyped_storage().data_ptr() for t in tabs}) == 3  # slabs of 8: 2 + 2 + 1 tables
    assert arena.uploads == 5
    # a table already in the current slab is not written again; one from a slab since replaced is
    assert arena.put([4, 5, 6]) is tabs[4] and arena.uploads == 5
    again = arena.put([0, 1, 2])
    assert again.tolist() == [0, 1, 2] and arena.uploads == 6
    assert again.untyped_storage().data_ptr() == tabs[4].untyped_storage().data_ptr()  # the slab of [4, 5, 6]
