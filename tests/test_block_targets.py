"""Block targets (flowdiff.codec.block_targets): each block of a stream's horizon decodes
to the make-up of its bank block, the walk depends only on (seed, turn), ports are copied
along the lag codes, the bank round-trips through the codec directory, and `flowdiff
calibrate` fits it into a real artifact that then generates reproducibly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import assert_restore_continues, generate_twice

from flowdiff.artifact import load_artifact
from flowdiff.cli import main
from flowdiff.codec import FlowCodec
import flowdiff.codec.block_targets as block_targets
from flowdiff.codec.block_targets import (DEPTH, FAR, FAR_CODE, NUMBER_SMOOTHING, SEVEN_KNOTS,
                                          WALK_TURNS, BlockTargets, copy_fields, lag_codes,
                                          number_profile, tree_sizes)
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


def _walks(seeds, turn):
    """Streams with their own walks (seed, turn), as on separate timelines."""
    return [(seed, turn) for seed in seeds]


def _decode(codec, outputs, seeds, turn, history=None):
    steps = outputs[:len(seeds) * HORIZON].reshape(len(seeds), HORIZON, -1)
    rngs = [np.random.default_rng(100 + s) for s in seeds]
    history = codec.empty_history(len(seeds)) if history is None else history
    return codec.decode_streams(steps, np.zeros(len(seeds)), rngs, history, walk=_walks(seeds, turn))


def test_each_block_decodes_to_its_bank_blocks_make_up(fitted):
    codec, table, outputs = fitted
    targets = codec.block_targets
    assert targets.blocks == 4000 // 25 and targets.length == 25
    seeds = [7, 8]
    records = _decode(codec, outputs, seeds, turn=3).result.table
    positions = targets.positions(_walks(seeds, 3), HORIZON)               # (2, 4)
    assert positions.shape == (2, 4) and len(set(positions[:, 0])) == 2
    far = []
    for s in range(2):
        for j, b in enumerate(positions[s]):
            mine = records.iloc[s * HORIZON + j * 25:s * HORIZON + (j + 1) * 25]
            real = table.iloc[b * 25:(b + 1) * 25]
            # protocol, flag mask, ToS and label: the real block's, record by record (a
            # record takes the ToS of the real record whose skeleton it is given)
            columns = ["proto", "flags", "tos", "label"]
            assert (mine[columns].to_numpy() == real[columns].to_numpy()).all(), (s, j)
            # which TCP / UDP ports are below 1024: the real record's side (copies keep the
            # side; ICMP's dstport is its type and code, set by the protocol's repair)
            for port in ("srcport", "dstport"):
                tcp_udp = real["proto"].isin([6, 17]).to_numpy()
                assert ((mine[port].to_numpy() < 1024) == (real[port].to_numpy() < 1024))[tcp_udp].all()
            # numbers: the block's spread is the real block's (min and max packet counts)
            assert mine["pkt"].min() == real["pkt"].min() and \
                abs(np.log(mine["pkt"].max()) - np.log(real["pkt"].max())) < 0.1, (s, j)
        # hosts and ports repeat where the real stretch repeats them: each field whose real
        # lag code points inside the stream's decoded records (own field or peer) holds
        # that record's value, and a new address is not among the last DEPTH of either field
        start = positions[s, 0] * 25
        real, mine = table.iloc[start:start + HORIZON], records.iloc[s * HORIZON:(s + 1) * HORIZON]
        fresh = []
        for name, peer in (("srcip", "dstip"), ("dstip", "srcip"), ("srcport", "dstport"),
                           ("dstport", "srcport")):
            codes = lag_codes(real[name].to_numpy(), real[peer].to_numpy(), far=name.endswith("ip"))
            own, other = mine[name].to_numpy(), mine[peer].to_numpy()
            tcp_udp = mine["proto"].isin([6, 17]).to_numpy()
            for i, code in enumerate(codes):
                if 0 < code <= 2 * DEPTH:
                    lag = code if code <= DEPTH else code - DEPTH
                    if lag <= i:
                        assert own[i] == (own if code <= DEPTH else other)[i - lag], (s, name, i)
                elif code == 0 and i >= DEPTH and (name.endswith("ip") or tcp_udp[i]):
                    fresh.append(own[i] not in set(own[i - DEPTH:i]) | set(other[i - DEPTH:i]))
                elif code == FAR_CODE and i >= FAR:   # an address seen DEPTH < k <= FAR back
                    far.append(own[i] in set(own[i - FAR:i - DEPTH]) | set(other[i - FAR:i - DEPTH]))
        assert len(fresh) > 50 and np.mean(fresh) > 0.95, np.mean(fresh)
    assert len(far) >= 5 and np.mean(far) > 0.9, far
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


def test_a_blocks_packet_counts_are_the_real_blocks_at_every_kept_quantile(fitted):
    """The bank keeps 13 quantiles per block (every other of 25 records): each decoded
    block's sorted packet counts equal the real block's at those places (with 7 knots,
    0.79 of them and a mean log error of 0.07)."""
    codec, table, outputs = fitted
    assert len(codec.block_targets.knot_positions) == 13
    seeds = [7, 8]
    records = _decode(codec, outputs, seeds, turn=3).result.table
    exact, error = [], []
    for s, blocks in enumerate(codec.block_targets.positions(_walks(seeds, 3), HORIZON)):
        for j, b in enumerate(blocks):
            start = s * HORIZON + j * 25
            mine = np.sort(records["pkt"].to_numpy()[start:start + 25]).astype(float)
            real = np.sort(table["pkt"].to_numpy()[b * 25:(b + 1) * 25]).astype(float)
            exact.append(np.mean(mine[::2] == real[::2]))
            error.append(np.mean(np.abs(np.log1p(mine) - np.log1p(real))))
    assert np.mean(exact) > 0.9 and np.mean(error) < 0.05, (np.mean(exact), np.mean(error))


def test_number_profile_is_the_smoothed_share_of_each_keys_records_in_each_bin():
    keys = np.array([[6, 27, 0, 1]] * 30 + [[17, 0, 1, 0]] * 10)
    bins = np.array([2] * 20 + [0] * 10 + [1] * 10)
    unique, logp = number_profile(keys, bins, 3)
    assert unique.tolist() == [[6, 27, 0, 1], [17, 0, 1, 0]]
    marginal = (np.array([10, 10, 20]) + 1) / (40 + 3)
    tcp = (np.array([10, 0, 20]) + NUMBER_SMOOTHING * marginal) / (30 + NUMBER_SMOOTHING)
    udp = (np.array([0, 10, 0]) + NUMBER_SMOOTHING * marginal) / (10 + NUMBER_SMOOTHING)
    np.testing.assert_allclose(np.exp(logp), [tcp, udp])
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0)


def test_a_class_takes_the_records_whose_numbers_its_real_records_have(fitted, monkeypatch):
    """Each block's numbers are set before its classes are assigned; the number profile
    gives a flag mask the records whose packet counts, bytes and durations its real records
    have (SYN-only flows are short, full conversations long). Without it the pairing is
    the model's scores alone, and the fixture's noised outputs barely pair them."""
    codec, table, outputs = fitted
    real = table.assign(lp=np.log1p(table["pkt"])).groupby("flags")["lp"].mean()

    def error(weight):   # mean |mean log pkt per flag mask - real|, weighted by records
        monkeypatch.setattr(block_targets, "NUMBER_WEIGHT", weight)
        records = pd.concat([_decode(codec, outputs, list(range(8)), turn=t).result.table
                             for t in range(0, 20, 5)])
        mine = records.assign(lp=np.log1p(records["pkt"])).groupby("flags")["lp"]
        common = mine.mean().index.intersection(real.index)
        return np.average(np.abs(mine.mean()[common] - real[common]), weights=mine.size()[common])

    default = block_targets.NUMBER_WEIGHT
    without, with_profile = error(0.0), error(default)
    assert with_profile < 0.75 * without and with_profile < 0.2, (without, with_profile)


def test_records_move_to_the_place_of_the_skeleton_they_are_given(fitted):
    """Outputs that are the walked real blocks' own records, shuffled within each block:
    the assignment gives each its own skeleton and moves it back to its real place, with
    its numbers and address bits (fails if records stay where the model put them)."""
    codec, table, _outputs = fitted
    seeds, turn = [5], 7
    positions = codec.block_targets.positions(_walks(seeds, turn), HORIZON)[0]
    rows = np.concatenate([np.arange(b * 25, (b + 1) * 25) for b in positions])
    real = table.iloc[rows].reset_index(drop=True)
    encoded = codec.encode(real).astype(np.float64)
    shuffle = np.concatenate([j * 25 + np.random.default_rng(j).permutation(25) for j in range(4)])
    decoded = _decode(codec, encoded[shuffle], seeds, turn).result.table
    from scipy.stats import spearmanr

    # (the shuffled records themselves: about 0 against their places)
    correlations = [spearmanr(decoded["pkt"][j * 25:(j + 1) * 25],
                              real["pkt"][j * 25:(j + 1) * 25]).statistic for j in range(4)]
    assert np.mean(correlations) > 0.6, correlations
    new = lag_codes(real["srcip"].to_numpy(), real["dstip"].to_numpy(), far=True) == 0
    # a new srcip is the record's own (0.52-0.77 over walks; records left in place: ~0.03)
    assert new.sum() >= 10 and (decoded["srcip"].to_numpy()[new] == real["srcip"].to_numpy()[new]).mean() > 0.4


def test_the_walk_depends_only_on_seed_and_turn_and_moves_on(fitted):
    targets = fitted[0].block_targets
    a = targets.positions(_walks([3, 4, 5], 10), HORIZON)
    assert (targets.positions(_walks([4], 10), HORIZON)[0] == a[1]).all()  # other streams do not matter
    nxt = targets.positions(_walks([3, 4, 5], 11), HORIZON)
    assert ((nxt - a) % targets.blocks == 4).all()                       # consecutive blocks ...
    far = targets.positions(_walks([3, 4, 5], 50), HORIZON)                # ... until the walk jumps
    assert ((far - a) % targets.blocks != 160).any()
    # a stream's first twenty places spread over the whole bank: no gap between them is
    # wider than 0.09 of it (twenty random places leave 0.18 on average)
    for seed in (3, 4):
        places = np.sort([targets.positions(_walks([seed], e * WALK_TURNS), HORIZON)[0, 0]
                          for e in range(20)]) / targets.blocks
        assert np.diff(np.r_[places, places[0] + 1]).max() <= 0.095, places
    # walks with consecutive seeds (streams on their own timelines) start spread over the
    # bank too: sixteen origins leave no gap wider than 0.11 of it (sixteen random ones: 0.21 on average)
    for base in (0, 7, 1000):
        starts = np.sort(targets.positions(_walks(list(range(base, base + 16)), 0), HORIZON)[:, 0]) / targets.blocks
        assert np.diff(np.r_[starts, starts[0] + 1]).max() <= 0.11, starts
    # and no two of them walk the same places: stream 8's first place is not stream 7's second
    assert targets.positions(_walks([8], 0), HORIZON)[0, 0] != targets.positions(_walks([7], WALK_TURNS), HORIZON)[0, 0]


def test_on_one_timeline_the_streams_are_slices_of_one_walk_also_across_shards(fitted, tiny_model):
    """The merged output of a daemon's streams reads the bank in order, one place at a time,
    as a single stream does (each stream walking its own places laid sixteen hours of the
    training day side by side in every turn); a shard's streams are the same slices of it
    as in one daemon with all the shards' streams; per_stream timelines walk their own."""
    from flowdiff.daemon.generator import StreamGenerator
    from flowdiff.model import make_sampler

    artifact = load_artifact(tiny_model)

    def walks(**kwargs):
        return StreamGenerator(artifact.model, artifact.codec, make_sampler("conditional", steps=2),
                               context=artifact.context, horizon=artifact.horizon, **kwargs).walks

    daemon = walks(streams=4, seed=7)
    assert daemon(0) == [(7, 0), (7, 1), (7, 2), (7, 3)] and daemon(5) == [(7, s) for s in range(20, 24)]
    shard = walks(streams=2, seed=7 + 2, first_stream=2, walk_streams=4)     # shard 1 of 2
    assert shard(5) == daemon(5)[2:]
    assert walks(streams=4, seed=7, timeline="per_stream")(5) == [(s, 5) for s in range(7, 11)]

    targets = fitted[0].block_targets
    merged = np.concatenate([targets.positions(daemon(turn), HORIZON).ravel() for turn in range(13)])
    steps = np.diff(merged) % targets.blocks                    # 13 turns x 4 streams x 4 blocks
    assert (steps[:WALK_TURNS * 4 - 1] == 1).all()              # in order for WALK_TURNS steps ...
    assert steps[WALK_TURNS * 4 - 1] != 1                       # ... then the next place


def test_decoding_with_block_targets_is_seeded_and_round_trips_through_the_codec_dir(fitted, tmp_path):
    codec, _table, outputs = fitted
    first = _decode(codec, outputs, [1, 2], turn=0)
    again = _decode(codec, outputs, [1, 2], turn=0)
    pd.testing.assert_frame_equal(first.result.table, again.result.table)
    loaded = FlowCodec.load(codec.save(tmp_path / "codec"))
    assert (tmp_path / "codec" / "block_targets.npz").is_file()
    # both kinds of port (heads of big copy trees and the rest) have their own offsets
    assert set(loaded.block_targets.classes[:, 8]) == {0, 1}
    offsets = loaded.block_targets.side_offsets["dstport"]
    assert offsets.shape[0] == 2 and not np.array_equal(offsets[0], offsets[1])
    assert json.loads((tmp_path / "codec" / "codec.json").read_text())["block_targets"]["blocks"] == 160
    pd.testing.assert_frame_equal(_decode(loaded, outputs, [1, 2], turn=0).result.table,
                                  first.result.table)
    # the next turn continues each stream's port history
    assert set(first.history) >= {"block.srcip", "block.dstip", "block.srcport", "block.dstport",
                                  "block.proto"}
    assert (first.history["block.srcport"] >= 0).all()
    # a bank saved before the knot positions were (seven per block) still loads, as seven
    bank = tmp_path / "codec" / "block_targets.npz"
    with np.load(bank) as data:
        arrays = {key: data[key] for key in data.files if key != "knot_positions"}
    arrays.update({key: value[:, [0, 1, 3, 6, 9, 11, 12]] for key, value in arrays.items()
                   if key.startswith("knots.")})
    np.savez_compressed(bank, **arrays)
    assert loaded.block_targets.number_profile is not None
    arrays = {key: value for key, value in arrays.items() if not key.startswith("numbers.")}
    np.savez_compressed(bank, **arrays)
    seven = FlowCodec.load(tmp_path / "codec")      # and without the number profile
    assert list(seven.block_targets.knot_positions) == list(SEVEN_KNOTS)
    assert seven.block_targets.number_profile is None
    assert len(_decode(seven, outputs, [1, 2], turn=0).result.table) == 200
    # a codec directory whose bank file is gone is refused, naming the file
    (tmp_path / "codec" / "block_targets.npz").unlink()
    with pytest.raises(Exception, match="block_targets.npz: missing"):
        FlowCodec.load(tmp_path / "codec")


def _plan(codes, sides=None, candidates=None):
    """A copy plan for crafted records: codes (n, 4) for srcip, dstip, srcport, dstport."""
    codes = np.asarray(codes, np.int64)
    n = len(codes)
    return {"codes": codes,
            "sides": np.full((n, 2), -1, np.int64) if sides is None else np.asarray(sides, np.int64),
            "candidates": (np.full((n, 4, 2), -2, np.int64) if candidates is None
                           else np.asarray(candidates, np.int64))}


def test_ports_are_copied_along_lag_codes_on_their_side_and_new_ones_are_new():
    proto = np.array([6, 6, 17, 6, 6, 6])
    src = np.array([40000, 80, 53, 40001, 40001, 443])
    codes = np.zeros((6, 4), np.int64)
    codes[:, 2] = [0, 0, 0, 3, 2, 4]     # srcport lags
    sides = np.zeros((6, 2), np.int64)
    sides[:, 0] = [0, 1, 1, 0, 0, 1]     # srcport below 1024
    # 3 back from record 3 is record 0 (TCP, 40000, high side): copied; 2 back from record 4
    # is record 2 (UDP): not copied; 4 back from record 5 is record 1 (TCP 80, low side): copied
    columns = {"proto": proto, "srcip": np.arange(1, 7), "dstip": np.arange(11, 17),
               "srcport": src.copy(), "dstport": np.full(6, 5000)}
    history = {}
    copy_fields(columns, _plan(codes, sides), history, [np.random.default_rng(0)], streams=1)
    out = columns["srcport"]
    assert list(out[:4]) == [40000, 80, 53, 40000] and out[5] == 80
    # record 4 keeps no copy and its port 40001 is not among the last 16: kept
    assert out[4] == 40001
    # dstport: every record is new, TCP/UDP, >= 1024: 5000 repeated is redrawn after the first
    assert columns["dstport"][0] == 5000 and len(set(columns["dstport"])) == 6
    assert history["block.srcport"].shape == (1, FAR) and history["block.srcport"][0, -1] == 80
    # the history carries over: a lag reaching into the previous turn copies from it
    nxt = {"proto": np.array([6]), "srcip": np.array([7]), "dstip": np.array([17]),
           "srcport": np.array([1234]), "dstport": np.array([9999])}
    copy_fields(nxt, _plan([[0, 0, 6, 0]], [[0, 0]]), history, [np.random.default_rng(1)], streams=1)
    assert nxt["srcport"][0] == 40000


def test_addresses_follow_own_peer_and_far_codes_and_new_ones_are_new():
    n = 40
    src, dst = np.arange(100, 100 + n), np.arange(500, 500 + n)
    codes = np.zeros((n, 4), np.int64)
    codes[1] = [DEPTH + 1, DEPTH + 1, 0, 0]   # the previous record reversed (peer codes)
    codes[2] = [2, 0, 0, 0]                   # srcip of 2 back
    codes[39] = [FAR_CODE, 0, 0, 0]           # an address DEPTH < k <= FAR back, in either field
    src[5] = src[4]                           # a "new" srcip equal to the previous one ...
    candidates = np.full((n, 4, 2), -2, np.int64)
    candidates[5, 0] = [src[3], 7777]         # ... takes its first candidate not among the recent
    columns = {"proto": np.full(n, 6), "srcip": src.copy(), "dstip": dst.copy(),
               "srcport": np.arange(2000, 2000 + n), "dstport": np.arange(3000, 3000 + n)}
    history = {"srcip": np.full((1, DEPTH), -1)}
    copy_fields(columns, _plan(codes, candidates=candidates), history,
                [np.random.default_rng(0)], streams=1)
    s, d = columns["srcip"], columns["dstip"]
    assert (s[1], d[1]) == (500, 100) and s[2] == 100 and s[5] == 7777
    assert s[39] in set(s[39 - FAR:39 - DEPTH]) | set(d[39 - FAR:39 - DEPTH])
    assert s[39] not in set(s[39 - DEPTH:39]) | set(d[39 - DEPTH:39])
    # records without codes keep their own addresses; the codec's reuse history follows
    assert list(s[6:39]) == list(range(106, 139)) and list(history["srcip"][0]) == list(s[-DEPTH:])


def test_on_one_timeline_a_streams_first_records_copy_the_stream_before_it():
    """chain: stream s's records follow stream s - 1's in the merged output, and stream 0's
    the last stream's of the previous turn; without chain each copies its own history."""
    codes = np.zeros((6, 4), np.int64)
    codes[[0, 3], 0] = 1                     # each stream's first srcip: the previous record's

    def columns():
        return {"proto": np.full(6, 6), "srcip": np.arange(1, 7), "dstip": np.arange(11, 17),
                "srcport": np.arange(2001, 2007), "dstport": np.arange(3001, 3007)}

    history = {"block.srcip": np.array([[-1] * (FAR - 1) + [70], [-1] * (FAR - 1) + [80]])}
    chained = columns()
    copy_fields(chained, _plan(codes), dict(history), [np.random.default_rng(s) for s in range(2)],
                streams=2, chain=True)
    assert chained["srcip"][0] == 80 and chained["srcip"][3] == chained["srcip"][2] == 3
    apart = columns()
    copy_fields(apart, _plan(codes), dict(history), [np.random.default_rng(s) for s in range(2)],
                streams=2)
    assert apart["srcip"][0] == 70 and apart["srcip"][3] == 80


def test_lag_codes_name_the_nearest_equal_value_in_the_field_or_its_peer():
    assert list(lag_codes(np.array([5, 6, 5, 5, 7, 6]))) == [0, 0, 2, 1, 0, 4]
    src, dst = np.array([1, 2, 3, 2]), np.array([2, 1, 9, 8])
    # record 1 is record 0 reversed; record 3's srcip is its own field 2 back (before the
    # peer field 3 back)
    assert list(lag_codes(src, dst)) == [0, DEPTH + 1, 0, 2]
    # copy trees: record 0's srcport 5 is copied by records 2 and 3 (a chain), record 1's
    # dstport 9 by every later dstport; a peer copy joins the other field's tree
    ports = np.stack([lag_codes(np.array([5, 6, 5, 5, 7, 6]), np.full(6, 9)),
                      lag_codes(np.full(6, 9), np.array([5, 6, 5, 5, 7, 6]))], axis=1)
    assert tree_sizes(ports)[:, 0].tolist() == [3, 2, 2, 1, 1, 1]
    assert tree_sizes(ports)[:, 1].tolist() == [6, 5, 4, 3, 2, 1]
    assert tree_sizes(np.array([[0, 0], [DEPTH + 1, 0]]))[0].tolist() == [1, 2]
    far = np.arange(100)
    far[60] = far[60 - DEPTH - 5]
    assert lag_codes(far, far + 1000, far=True)[60] == FAR_CODE and lag_codes(far)[60] == 0


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
    out = capsys.readouterr().out
    assert "block targets: " in out and "number profile of " in out
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
