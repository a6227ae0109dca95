"""WindowDataset: stride-s windows of L steps, split by time, usable as a torch Dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from flowdiff.windows import WindowDataset


def series(n: int = 103, features: int = 4) -> np.ndarray:
    """Step i has every feature equal to i (plus the feature index / 10), so a window's
    content names its position."""
    steps = np.arange(n, dtype=np.float32)[:, None]
    return steps + np.arange(features, dtype=np.float32)[None, :] / 10    # (n, F)


def test_windows_have_length_stride_and_content():
    data = series()
    ds = WindowDataset(data, length=10, stride=7)
    assert len(ds) == (103 - 10) // 7 + 1 == 14
    first, last = ds[0], ds[len(ds) - 1]
    assert isinstance(first, torch.Tensor) and first.dtype == torch.float32
    assert first.shape == (10, 4)
    np.testing.assert_array_equal(first.numpy(), data[0:10])
    np.testing.assert_array_equal(last.numpy(), data[91:101])
    np.testing.assert_array_equal(ds[-1].numpy(), last.numpy())


def test_all_windows_as_an_array_match_getitem():
    ds = WindowDataset(series(), length=10, stride=7)
    windows = ds.windows()
    assert windows.shape == (14, 10, 4)
    for i in range(len(ds)):
        np.testing.assert_array_equal(windows[i], ds[i].numpy())
    assert not windows.flags.writeable


def test_items_are_copies_that_cannot_corrupt_the_data():
    data = series()
    ds = WindowDataset(data, length=5)
    ds[3].fill_(-1.0)
    np.testing.assert_array_equal(ds[3].numpy(), data[3:8])


def test_split_is_by_time_and_no_window_crosses_the_boundary():
    data = series(200)
    train, val = WindowDataset(data, length=16, stride=4).split(val_fraction=0.25)
    assert train.n_steps == 150 and val.n_steps == 50
    train_steps = train.windows()[:, :, 0]
    val_steps = val.windows()[:, :, 0]
    assert train_steps.max() < 150 and val_steps.min() >= 150
    assert (train.length, train.stride) == (16, 4) and (val.length, val.stride) == (16, 4)
    assert len(train) == (150 - 16) // 4 + 1 and len(val) == (50 - 16) // 4 + 1


def test_works_with_a_torch_dataloader():
    ds = WindowDataset(series(64, 3), length=8, stride=8)
    batches = list(DataLoader(ds, batch_size=3, shuffle=False))
    assert [b.shape for b in batches] == [(3, 8, 3), (3, 8, 3), (2, 8, 3)]
    np.testing.assert_array_equal(batches[2][1].numpy(), series(64, 3)[56:64])


def test_short_series_has_no_windows():
    ds = WindowDataset(series(5), length=8)
    assert len(ds) == 0 and ds.windows().shape == (0, 8, 4)
    with pytest.raises(IndexError, match="window 0 out of range for 0 windows"):
        ds[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"length": 0}, "window length must be a positive integer, got 0"),
    ({"length": 4, "stride": 1.5}, "window stride must be a positive integer, got 1.5"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WindowDataset(series(), **kwargs)


def test_bad_shape_and_split_are_refused():
    with pytest.raises(ValueError, match=r"shape \(n, F\), got shape \(10,\)"):
        WindowDataset(np.zeros(10), length=2)
    ds = WindowDataset(series(40), length=16)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ds.split(1.0)
    with pytest.raises(ValueError, match="validation part has 4 steps, fewer than one window"):
        ds.split(0.1)


def test_windows_over_an_encoded_ugr16_slice(ugr16_sample):
    """The model's real input: codec output of UGR'16 records, windowed and split by time."""
    from flowdiff.codec import CodecConfig, FlowCodec
    from flowdiff.ingest import read_flows
    table, _ = read_flows(ugr16_sample)
    table = table.iloc[:2000]
    train_table = table.iloc[:1600]                                   # fit on training only
    codec = FlowCodec.fit(train_table, CodecConfig(), seed=0)
    encoded = codec.encode(table)                                     # (2000, F)
    train, val = WindowDataset(encoded, length=32, stride=16).split(val_fraction=0.2)
    assert train.n_steps == 1600 and val.n_steps == 400
    assert train[0].shape == (32, codec.width)
    np.testing.assert_array_equal(val[0].numpy(), encoded[1600:1632])
    windows = train.windows()
    assert windows.shape == ((1600 - 32) // 16 + 1, 32, codec.width)
    assert windows.min() >= 0.0 and windows.max() <= 1.0
    np.testing.assert_array_equal(windows[-1], encoded[1568:1600])
