"""Block targets (flowdiff.codec.block_targets): each block of a stream's horizon decodes
to the make-up of its bank block, the walk depends only on (seed, turn), ports are copied
along the lag codes, the bank round-trips through the codec directory, and `flowdiff
calibrate` fits it into a real artifact that then generates reproducibly."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from conftest import assert_restore_continues, generate_twice

from flowdiff.artifact import load_artifact
from flowdiff.cli import main
from flowdiff.codec import FlowCodec
from flowdiff.codec.block_targets import DEPTH, BlockTargets, copy_ports, port_lag_codes
from flowdiff.codec.calibration import OutputCalibration

HORIZON = 100


@pytest.fixture(scope="module")
def fitted():
    """A calibrated codec with block targets, fitted on 4,000 UGR'16 sample records, and
    model-like outputs (the records' encodings, noised)."""
    from conftest import shared_file

    from flowdiff.codec import CodecConfig
    from flowdiff.ingest import read_flows

    table, _ = read_flows(shared_file("ugr16/ugr16_sample_20k.csv"))
    table = table.iloc[:4000].reset_index(drop=True)
    codec = FlowCodec.fit(table, CodecConfig(fields={"srcip": "reuse_bits", "dstip": "reuse_bits"}))
    reference = codec.encode(table).astype(np.float64)
    rng = np.random.default_rng(0)
    outputs = np.clip(reference + rng.normal(0, 0.15, reference.shape), 0, 1)
    calibration = OutputCalibration.fit(codec, outputs, reference, horizon=HORIZON)
    codec.set_calibration(calibration)
    targets = BlockTargets.fit(codec, calibration, reference, table, outputs=outputs)
    codec.set_block_targets(targets)
    return codec, table, outputs


def _decode(codec, outputs, seeds, turn, history=None):
    steps = outputs[:len(seeds) * HORIZON].reshape(len(seeds), HORIZON, -1)
    rngs = [np.random.default_rng(100 + s) for s in seeds]
    history = codec.empty_history(len(seeds)) if history is None else history
    return codec.decode_streams(steps, np.zeros(len(seeds)), rngs, history, walk=(seeds, turn))


def test_each_block_decodes_to_its_bank_blocks_make_up(fitted):
    codec, table, outputs = fitted
    targets = codec.block_targets
    assert targets.blocks == 4000 // 25 and targets.length == 25
    seeds = [7, 8]
    records = _decode(codec, outputs, seeds, turn=3).result.table
    positions = targets.positions(seeds, 3, HORIZON)                       # (2, 4)
    assert positions.shape == (2, 4) and len(set(positions[:, 0])) == 2
    for s in range(2):
        for j, b in enumerate(positions[s]):
            mine = records.iloc[s * HORIZON + j * 25:s * HORIZON + (j + 1) * 25]
            real = table.iloc[b * 25:(b + 1) * 25]
            # protocol with flag mask, tos and label: the real block's counts exactly
            for columns in (["proto", "flags"], ["tos"], ["label"]):
                assert Counter(map(tuple, mine[columns].to_numpy())) == \
                    Counter(map(tuple, real[columns].to_numpy())), (s, j, columns)
            # which TCP / UDP ports are below 1024: the real block's counts (copies keep the
            # side; ICMP's dstport is its type and code, set by the protocol's repair)
            for port in ("srcport", "dstport"):
                low = [((t[port] < 1024) & t["proto"].isin([6, 17])).sum() for t in (mine, real)]
                assert low[0] == low[1], (s, j, port)
            # numbers: the block's spread is the real block's (min and max packet counts)
            assert mine["pkt"].min() == real["pkt"].min() and \
                abs(np.log(mine["pkt"].max()) - np.log(real["pkt"].max())) < 0.1, (s, j)
    # bytes follow the packet count: each record's bytes lie in the training range of its
    # packet count's bin (bytes are mapped within the bin of the block's new packet count)
    _parent, pkt_column, edges, maps = codec.calibration.conditional["byt"]
    encoded = np.concatenate([codec.encode(records.iloc[s * HORIZON:(s + 1) * HORIZON])
                              for s in range(2)])                          # each stream's clock
    bins = np.searchsorted(edges, encoded[:, pkt_column], side="right")
    real_bins = np.searchsorted(edges, codec.encode(table)[:, pkt_column], side="right")
    mapped = [k for k in np.unique(bins) if maps[k] is not None]     # bins with their own map
    assert len(mapped) >= 3
    for k in mapped:
        real = table["byt"].to_numpy()[real_bins == k]
        mine = records["byt"].to_numpy()[bins == k]
        assert real.min() <= mine.min() and mine.max() <= real.max(), k
    # without a walk the same outputs decode with the plain calibration: other make-ups
    plain = codec.decode_streams(outputs[:2 * HORIZON].reshape(2, HORIZON, -1), np.zeros(2),
                                 [np.random.default_rng(100 + s) for s in seeds]).result.table
    assert not plain[["proto", "flags", "srcport", "pkt"]].equals(records[["proto", "flags", "srcport", "pkt"]])


def test_the_walk_depends_only_on_seed_and_turn_and_moves_on(fitted):
    targets = fitted[0].block_targets
    a = targets.positions([3, 4, 5], 10, HORIZON)
    assert (targets.positions([4], 10, HORIZON)[0] == a[1]).all()        # other streams do not matter
    nxt = targets.positions([3, 4, 5], 11, HORIZON)
    assert ((nxt - a) % targets.blocks == 4).all()                       # consecutive blocks ...
    far = targets.positions([3, 4, 5], 50, HORIZON)                       # ... until the walk jumps
    assert ((far - a) % targets.blocks != 160).any()


def test_decoding_with_block_targets_is_seeded_and_round_trips_through_the_codec_dir(fitted, tmp_path):
    codec, _table, outputs = fitted
    first = _decode(codec, outputs, [1, 2], turn=0)
    again = _decode(codec, outputs, [1, 2], turn=0)
    pd.testing.assert_frame_equal(first.result.table, again.result.table)
    loaded = FlowCodec.load(codec.save(tmp_path / "codec"))
    assert (tmp_path / "codec" / "block_targets.npz").is_file()
    assert json.loads((tmp_path / "codec" / "codec.json").read_text())["block_targets"]["blocks"] == 160
    pd.testing.assert_frame_equal(_decode(loaded, outputs, [1, 2], turn=0).result.table,
                                  first.result.table)
    # the next turn continues each stream's port history
    assert set(first.history) >= {"block.srcport", "block.dstport", "block.proto"}
    assert (first.history["block.srcport"] >= 0).all()
    # a codec directory whose bank file is gone is refused, naming the file
    (tmp_path / "codec" / "block_targets.npz").unlink()
    with pytest.raises(Exception, match="block_targets.npz: missing"):
        FlowCodec.load(tmp_path / "codec")


def test_ports_are_copied_along_lag_codes_on_their_side_and_new_ones_are_new():
    proto = np.array([6, 6, 17, 6, 6, 6])
    src = np.array([40000, 80, 53, 40001, 40001, 443])
    # plan: (srcport lag, dstport lag, srcport below 1024, dstport below 1024)
    plan = np.array([[0, 0, 0, 0],
                     [0, 0, 1, 0],
                     [0, 0, 1, 0],
                     [3, 0, 0, 0],     # 3 back is record 0 (TCP, 40000, high side): copied
                     [2, 0, 0, 0],     # 2 back is record 2 (UDP): not copied; 40001 is new?
                     [4, 0, 1, 0]])    # 4 back is record 1 (TCP 80, low side): copied
    columns = {"proto": proto, "srcport": src.copy(), "dstport": np.full(6, 5000)}
    history = {}
    copy_ports(columns, plan, history, [np.random.default_rng(0)], streams=1)
    out = columns["srcport"]
    assert list(out[:4]) == [40000, 80, 53, 40000] and out[5] == 80
    # record 4 keeps no copy and its port 40001 is not among the last 16: kept
    assert out[4] == 40001
    # dstport: every record is new, TCP/UDP, >= 1024: 5000 repeated is redrawn after the first
    assert columns["dstport"][0] == 5000 and len(set(columns["dstport"])) == 6
    assert history["block.srcport"].shape == (1, DEPTH) and history["block.srcport"][0, -1] == 80
    # the history carries over: a lag reaching into the previous turn copies from it
    nxt = {"proto": np.array([6]), "srcport": np.array([1234]), "dstport": np.array([9999])}
    copy_ports(nxt, np.array([[6, 0, 0, 0]]), history, [np.random.default_rng(1)], streams=1)
    assert nxt["srcport"][0] == 40000


def test_lag_codes_name_the_nearest_equal_port():
    assert list(port_lag_codes(np.array([5, 6, 5, 5, 7, 6]))) == [0, 0, 2, 1, 0, 4]


def test_flowdiff_calibrate_fits_block_targets_and_generation_stays_seeded(tiny_model, ugr16_sample,
                                                                            tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    args = ["calibrate", "--model", str(model), "--data", str(ugr16_sample), "--turns", "2",
            "--streams", "2", "--sampler", "conditional", "--steps", "2", "--regime-windows", "0"]
    assert main(args) == 0                                   # the tiny model's horizon is 8
    assert "block targets: none (the horizon (8) is shorter than a block (25))" in capsys.readouterr().out
    assert not (model / "codec" / "block_targets.npz").exists()
    assert main(args + ["--block-length", "4"]) == 0
    assert "block targets: " in capsys.readouterr().out
    state = json.loads((model / "codec" / "codec.json").read_text())
    assert state["block_targets"]["length"] == 4 and (model / "codec" / "block_targets.npz").is_file()
    runs = generate_twice(model, tmp_path, 40)
    assert runs[0] == runs[1] and runs[0].count(b"\n") == 40
    # a restored stream continues exactly: its walk and its port history are in the state
    art = load_artifact(model)
    assert art.codec.block_targets is not None
    assert {"block.srcport", "block.dstport", "block.proto"} <= set(art.codec.empty_history(1))
    assert_restore_continues(art)
    assert main(args + ["--block-length", "1"]) == 2
