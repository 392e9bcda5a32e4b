"""Unit tests of the capture's parts (no model): batch rows, steps, selections, device tables, key masks."""

from __future__ import annotations

import pytest
import torch

from attnlens.captures import ItemLayout, Layout
from attnlens.captures.batch import BatchLayoutError, batch_layout
from attnlens.captures.device_tables import device_layout, key_valid, masked_layout
from attnlens.captures.selection import CaptureError, as_layout, normalize_selection
from attnlens.captures.steps import StepClock
from attnlens.segments import DEFAULT_SEGMENTS, MASKED_CODE, Segments

TWO = Segments(names=("text", "pad"), sequence="text", family="two")


def _items(n, keys=4, voc=TWO):
    return [ItemLayout(segments=["text"] * (keys - 1) + ["pad"], vocabulary=voc) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ batch rows
def test_batch_rows_follow_the_family_cfg_order():
    lay = Layout(items=_items(2), source="pipeline")
    cond_first = batch_layout(lay, 4, 4, TWO, ("cond", "uncond"))
    assert cond_first.labels == ["cond:0", "cond:1", "uncond:0", "uncond:1"] and len(cond_first.layout) == 4
    uncond_first = batch_layout(lay, 4, 4, TWO, ("uncond", "cond"))
    assert uncond_first.labels == ["uncond:0", "uncond:1", "cond:0", "cond:1"]
    same = batch_layout(lay, 2, 4, TWO)
    assert same.labels == ["cond:0", "cond:1"] and same.layout is lay and same.known


def test_batch_rows_take_the_recorders_labels_and_repeat_a_users_single_item():
    lay = Layout(items=_items(2), source="pipeline")
    assert batch_layout(lay, 2, 4, TWO, labels=["uncond:0", "cond:0"]).labels == ["uncond:0", "cond:0"]
    one = Layout(items=_items(1), source="user")
    rows = batch_layout(one, 3, 4, TWO, from_user=True)
    assert len(rows.layout) == 3 and rows.labels == ["cond:0", "cond:1", "cond:2"]
    with pytest.raises(BatchLayoutError, match="batch is 3"):
        batch_layout(one, 3, 4, TWO)  # one recorded item for three rows: nothing fits


def test_batch_rows_without_a_layout_are_unknown_in_the_family_vocabulary():
    rows = batch_layout(None, 2, 5, TWO)
    assert not rows.known and rows.layout.vocabulary == TWO
    assert all(it.segments == ["unknown"] * 5 for it in rows.layout.items)


def test_batch_rows_refuse_wrong_key_counts_and_other_vocabularies():
    lay = Layout(items=_items(2), source="user")
    with pytest.raises(BatchLayoutError, match="has 4 keys but the transformer got 6"):
        batch_layout(lay, 2, 6, TWO)
    with pytest.raises(BatchLayoutError, match="not the model family"):
        batch_layout(lay, 2, 4, DEFAULT_SEGMENTS)


# --------------------------------------------------------------------------------------------------- steps
def test_step_clock_keeps_requested_steps_counted_from_the_end():
    ts, kept = [], []
    clock = StepClock([0, -1], lambda: 4, ts, kept)
    pos = [clock.begin(t) for t in (1.0, 0.75, 0.5, 0.25)]
    assert pos == [0, None, None, 1] and kept == [0, 3] and ts == [1.0, 0.75, 0.5, 0.25]
    assert clock.expected() == 2


def test_step_clock_refuses_a_second_generation_and_unknown_totals():
    clock = StepClock(None, lambda: None, [], [])
    clock.begin(1.0)
    with pytest.raises(CaptureError, match="new generation"):
        clock.begin(1.0 + 1e-3)
    with pytest.raises(CaptureError, match="negative steps"):
        StepClock([-1], lambda: None, [], []).begin(1.0)
    late = StepClock([-9, 2], lambda: 8, [], [])
    assert late.begin(1.0) is None and late.resolved_requests() == [-1, 2]  # reported when the capture ends


def test_step_clock_reads_device_times_once_at_the_end():
    ts = []
    clock = StepClock(None, lambda: None, ts, [])
    clock.begin(torch.tensor(0.9))
    clock.begin(torch.tensor(0.4))
    assert all(t != t for t in ts)  # NaN until read
    clock.resolve_timesteps()
    assert ts == pytest.approx([0.9, 0.4]) and not clock.pending
    clock2 = StepClock(None, lambda: None, [], [])
    clock2.begin(torch.tensor(0.4))
    clock2.begin(torch.tensor(0.9))
    with pytest.raises(CaptureError, match="new generation"):
        clock2.resolve_timesteps()


# ----------------------------------------------------------------------------------------------- selections
def test_selections_are_normalized_with_clear_errors():
    assert normalize_selection("layers", None, 4) is None
    assert normalize_selection("layers", -1, 4) == [3]
    assert normalize_selection("heads", [0, -2], 8) == [0, 6]
    with pytest.raises(IndexError, match=r"layers \[4\] out of range: the model has 4"):
        normalize_selection("layers", [4], 4)
    with pytest.raises(ValueError, match="duplicates"):
        normalize_selection("heads", [1, 1], 8)
    with pytest.raises(TypeError, match="list of ints"):
        normalize_selection("steps", "all", None)
    item = _items(1)[0]
    assert as_layout(item).items == [item] and as_layout(None) is None
    with pytest.raises(TypeError, match="layout must be"):
        as_layout({"segments": []})


# ------------------------------------------------------------------------------------- device tables, masks
def test_device_layout_and_a_key_mask_give_masked_codes_and_recounted_sequence():
    items = [ItemLayout(segments=["text", "text", "text", "pad"], vocabulary=TWO)] * 2
    tables = device_layout(items, len(TWO), torch.device("cpu"))
    mask = torch.tensor([[True, False, True, True], [True, True, True, False]])
    codes, onehot, lidx, n_l, codes32, lidx32, n_l32 = masked_layout(tables, key_valid(mask, 2, 4, torch.device("cpu")))
    assert codes.tolist() == [[0, MASKED_CODE, 0, 1], [0, 0, 0, MASKED_CODE]]
    assert lidx.tolist() == [[0, -1, 2, -1], [0, 1, 2, -1]] and n_l.tolist() == [2, 3]
    assert onehot[0, 1].sum() == 0 and onehot[1, 3].sum() == 0 and onehot.sum().item() == 6
    assert torch.equal(codes32, codes.int()) and torch.equal(lidx32, lidx.int()) and torch.equal(n_l32, n_l.int())


def test_key_masks_other_than_keep_or_drop_are_refused():
    cpu = torch.device("cpu")
    f = torch.tensor([[0.0, float("-inf"), 0.0]])
    assert key_valid(f, 1, 3, cpu).tolist() == [[True, False, True]]
    with pytest.raises(CaptureError, match="additive bias"):
        key_valid(torch.tensor([[0.0, 1.0, 0.0]]), 1, 3, cpu)
    with pytest.raises(CaptureError, match=r"expected \[batch 2, keys 3\]"):
        key_valid(torch.ones(1, 3, dtype=torch.bool), 2, 3, cpu)
    with pytest.raises(CaptureError, match="dtype torch.int64"):
        key_valid(torch.ones(1, 3, dtype=torch.long), 1, 3, cpu)
