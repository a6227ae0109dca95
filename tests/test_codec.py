"""Codec on real UGR'16 records: exact round trip, valid decoding, repairs, persistence.

``codec`` is the default codec (quantile numbers, reuse fields, port tokens with ranges);
``netshare_codec`` is flowdiff 0.1's (log-min-max numbers, plain bits, NetShare's word2vec
with nearest-neighbour decoding), still a config choice and what old artifacts load as;
``pair_codec`` the default with ``reuse_pair_bits`` addresses (codes into both fields)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest

from flowdiff import schema
from flowdiff.codec import (CodecConfig, CodecFileError, CodecVersionError,
                            FlowCodec)
from flowdiff.codec.repair import ProtocolProfile
from flowdiff.config import ConfigError

DISCRETE = ("srcip", "dstip", "srcport", "dstport", "proto", "pkt", "flags", "tos", "label")
NETSHARE = {"fields": {"ts": "log_minmax", "td": "log_minmax", "pkt": "log_minmax",
                       "byt": "log_minmax", "srcip": "bits", "dstip": "bits",
                       "srcport": "word2vec_nearest", "dstport": "word2vec_nearest",
                       "proto": "word2vec_nearest"}}
PAIR = {"fields": {"srcip": "reuse_pair_bits", "dstip": "reuse_pair_bits"}}
CONV = {"fields": {**PAIR["fields"], "srcport": "word2vec_follow", "dstport": "word2vec_follow"},
        "conversations": True}


def load_ugr16(path, nrows=None) -> pd.DataFrame:
    """UGR'16 CSV -> canonical table (a small local reader: ts = te - td, sorted by ts)."""
    raw = pd.read_csv(path, nrows=nrows)
    end_time = pd.to_datetime(raw["te"], format="%Y-%m-%d %H:%M:%S").to_numpy()
    end = end_time.astype("datetime64[ms]").astype(np.int64) / 1e3        # epoch seconds
    table = pd.DataFrame({
        "ts": np.round(end - raw["td"].to_numpy(), 3), "td": raw["td"],
        "srcip": schema.ip_to_int(raw["sa"]), "dstip": schema.ip_to_int(raw["da"]),
        "srcport": raw["sp"], "dstport": raw["dp"], "proto": schema.proto_to_int(raw["pr"]),
        "pkt": raw["pkt"], "byt": raw["byt"], "flags": schema.flags_to_int(raw["flg"]),
        "tos": raw["stos"], "label": raw["label"].astype(object)})
    return schema.conform(table.sort_values("ts", kind="stable").reset_index(drop=True))


@functools.lru_cache(maxsize=1)
def _sample(path) -> pd.DataFrame:
    return load_ugr16(path)


@functools.lru_cache(maxsize=4)
def _codec(path, netshare: bool, pair: bool = False, follow: bool = False) -> FlowCodec:
    """Fit once per test session (each test gets table copies it cannot spoil)."""
    config = NETSHARE if netshare else CONV if follow else PAIR if pair else {}
    return FlowCodec.fit(_sample(path), CodecConfig.from_dict(config), seed=0)


@pytest.fixture
def table(ugr16_sample) -> pd.DataFrame:
    return _sample(ugr16_sample).copy()


@pytest.fixture
def codec(ugr16_sample) -> FlowCodec:
    return _codec(ugr16_sample, False)


@pytest.fixture
def netshare_codec(ugr16_sample) -> FlowCodec:
    return _codec(ugr16_sample, True)


@pytest.fixture
def pair_codec(ugr16_sample) -> FlowCodec:
    return _codec(ugr16_sample, False, True)


@pytest.fixture
def conv_codec(ugr16_sample) -> FlowCodec:
    return _codec(ugr16_sample, False, True, True)


FIXTURES = {"default": "codec", "netshare": "netshare_codec", "pair": "pair_codec",
            "conv": "conv_codec"}


def assert_valid(decoded: pd.DataFrame, codec: FlowCodec) -> None:
    """The domain rules every decoded table must satisfy."""
    assert list(decoded.columns) == [c for c in schema.COLUMNS if c in codec.fields]
    assert decoded["srcport"].between(0, 65535).all() and decoded["dstport"].between(0, 65535).all()
    assert (decoded["pkt"] >= 1).all()
    assert (decoded["byt"] >= 20 * decoded["pkt"]).all()
    assert (decoded["byt"] <= 65535 * decoded["pkt"]).all()
    assert (np.diff(decoded["ts"].to_numpy()) >= 0).all() and (decoded["td"] >= 0).all()
    icmp = decoded[decoded["proto"] == schema.ICMP]
    assert (icmp["srcport"] == 0).all()
    assert icmp["dstport"].isin(codec.profile.ports["dstport"][schema.ICMP]).all()
    for proto, group in decoded[decoded["proto"] != schema.TCP].groupby("proto"):
        assert group["flags"].isin(codec.profile.flags.get(int(proto), [0])).all()
        if int(proto) not in schema.PORTED_PROTOS:
            assert group["srcport"].isin(codec.profile.ports["srcport"].get(int(proto), [0])).all()


# ---------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("which", ["default", "netshare", "pair", "conv"])
def test_round_trip_is_exact_on_training_data(table, which, request):
    codec = request.getfixturevalue(FIXTURES[which])
    x = codec.encode(table)
    assert x.dtype == np.float32 and x.shape == (len(table), codec.width)
    result = codec.decode(x, start_ts=float(table["ts"].iloc[0]))
    decoded = result.table
    repairs = dict(result.repairs)
    if which == "netshare":  # log-min-max bytes above the float32 bound may come back a
        # byte off; one at the edge of the training bytes-per-packet range is clamped back
        above = int((table["byt"] > codec.transforms["byt"].exact_integer_bound()).sum())
        assert repairs.pop("bytes_per_packet_outside_training") <= above
    assert sum(repairs.values()) == 0, result.repairs
    for name in DISCRETE:
        np.testing.assert_array_equal(decoded[name].to_numpy(), table[name].to_numpy(), name)
    # ts: cumulative sum of ms-rounded inter-arrivals, rounded to the training resolution
    np.testing.assert_allclose(decoded["ts"], table["ts"], rtol=0, atol=1e-6)
    # td: UGR'16 stores some durations with float noise (312.92400000000004); decoding
    # gives the millisecond value
    np.testing.assert_allclose(decoded["td"], table["td"], rtol=0, atol=1e-9)
    if which != "netshare":  # quantile numbers: every training value exactly, bytes too
        np.testing.assert_array_equal(decoded["byt"].to_numpy(), table["byt"].to_numpy())
        np.testing.assert_array_equal(decoded["td"].to_numpy(), np.round(table["td"], 3))
    expected = schema.conform(table).dtypes
    assert (decoded.dtypes == expected).all(), decoded.dtypes


def test_bytes_exact_below_the_float32_bound(table, netshare_codec):
    codec = netshare_codec
    byt = codec.transforms["byt"]
    bound = byt.exact_integer_bound()
    assert 100_000 < bound < float(table["byt"].max())  # the bound matters on this data
    decoded = codec.decode(codec.encode(table), float(table["ts"].iloc[0])).table
    original, back = table["byt"].to_numpy(), decoded["byt"].to_numpy()
    small = original <= bound
    np.testing.assert_array_equal(back[small], original[small])
    # above the bound: within float32 rounding of the log scale
    relative = np.abs(back - original) / original
    assert relative.max() <= byt.max_relative_error()


def test_encoded_values_lie_in_unit_interval_with_one_slice_per_field(table, codec):
    x = codec.encode(table)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert codec.fields == tuple(c for c in schema.COLUMNS if c in table.columns)
    slices = list(codec.feature_slices.values())
    assert slices[0].start == 0 and slices[-1].stop == codec.width
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    widths = {f: s.stop - s.start for f, s in codec.feature_slices.items()}
    depth = codec.config.reuse_depth
    assert widths["srcip"] == depth + 1 + 32 and widths["srcport"] == 10 + 16
    assert widths["proto"] == 10 and widths["pkt"] == 1
    assert widths["flags"] == 8 and widths["label"] == 2 and widths["ts"] == 1


def test_chunked_encoding_continues_time_with_prev_ts(table, codec):
    first, second = table.iloc[:1000], table.iloc[1000:2000].reset_index(drop=True)
    prev = float(first["ts"].iloc[-1])
    x = codec.encode(second, prev_ts=prev)
    decoded = codec.decode(x, start_ts=prev).table
    np.testing.assert_allclose(decoded["ts"], second["ts"], rtol=0, atol=1e-6)
    for name in DISCRETE:
        np.testing.assert_array_equal(decoded[name].to_numpy(), second[name].to_numpy(), name)
    # the same records encode the same way every time (the dequantising jitter is seeded)
    np.testing.assert_array_equal(codec.encode(second, prev_ts=prev), x)


def test_microsecond_timestamps_with_tiny_gaps_round_trip(caida_pcap):
    """CAIDA backbone packets: gaps of microseconds between records (regression: a
    resolution inferred from the gaps rounded them all to 0)."""
    from flowdiff.ingest import read_flows
    table, _ = read_flows(caida_pcap)
    codec = FlowCodec.fit(table, CodecConfig(), seed=0)
    assert codec.transforms["ts"].decimals == 6
    decoded = codec.decode(codec.encode(table), float(table["ts"].iloc[0])).table
    np.testing.assert_allclose(decoded["ts"], table["ts"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.diff(decoded["ts"]), np.diff(table["ts"]), rtol=0, atol=1e-6)
    for name in ("srcip", "dstip", "srcport", "dstport", "proto", "flags", "tos"):
        np.testing.assert_array_equal(decoded[name].to_numpy(), table[name].to_numpy(), name)


@pytest.mark.parametrize("values, decimals", [
    ([0.0, 1.0, 2.0], 0), ([0.004, 312.92400000000004, 6.0], 3),
    ([1460332891.996, 1460332898.0], 3), ([1521118770.000123, 1521118770.25], 6),
    ([3e-5, 6.3e-5], 6), ([1e-7, 2.5e-7], None)])
def test_resolution_is_found_up_to_float_noise(values, decimals):
    from flowdiff.codec.transforms import resolution
    assert resolution(np.array(values)) == decimals


def test_unsorted_table_is_refused_naming_the_row(table, codec):
    shuffled = table.iloc[[0, 2, 1, 3]].reset_index(drop=True)
    with pytest.raises(ValueError, match=r"field ts: ts must not decrease: row 2"):
        codec.encode(shuffled)


# ---------------------------------------------------------------------------- decoding any float
def test_decoding_arbitrary_floats_yields_valid_records(codec):
    rng = np.random.default_rng(7)
    x = rng.normal(0.5, 0.8, size=(3000, codec.width)).astype(np.float32)
    result = codec.decode(x, start_ts=1.46e9)
    assert len(result.table) == 3000
    assert_valid(result.table, codec)
    assert result.repairs["ts_out_of_range"] > 0 and result.repairs["tcp_flags_on_non_tcp"] > 0


def test_repairs_are_counted_on_deliberately_invalid_vectors(table, codec):
    x = codec.encode(table)
    sl = codec.feature_slices
    icmp_row = int(np.flatnonzero(table["proto"].to_numpy() == schema.ICMP)[0])
    udp_row = int(np.flatnonzero(table["proto"].to_numpy() == schema.UDP)[0])
    tcp_row = int(np.flatnonzero(table["proto"].to_numpy() == schema.TCP)[0])
    port80 = x[int(np.flatnonzero(table["srcport"].to_numpy() == 80)[0]), sl["srcport"]]
    bad = x[[icmp_row, udp_row, tcp_row, tcp_row]].copy()                 # (4, F)
    bad[0, sl["srcport"]] = port80                  # ICMP with source port 80
    bad[1, sl["flags"]] = [0, 0, 0, 0, 0, 0, 1, 0]  # UDP with SYN
    bad[2, sl["pkt"]] = 1.0                         # most packets seen ...
    bad[2, sl["byt"]] = 0.0                         # ... with the fewest bytes
    bad[3, sl["td"]] = 7.5                          # far outside [0, 1]
    bad[3, sl["srcip"].start] = np.nan
    result = codec.decode(bad, start_ts=1.46e9)
    assert result.repairs["ports_on_portless_proto"] == 1
    assert result.repairs["tcp_flags_on_non_tcp"] == 1
    assert result.repairs["byt_below_20_per_pkt"] == 1
    assert result.repairs["bytes_per_packet_outside_training"] == 1
    assert result.repairs["td_out_of_range"] == 1
    assert result.repairs["non_finite"] == 1
    assert result.repairs["pkt_below_1"] == 0
    assert_valid(result.table, codec)
    icmp = result.table.iloc[0]
    assert icmp["srcport"] == 0
    assert result.table["flags"].iloc[1] == codec.profile.flags[schema.UDP][0]
    lowest_bpp = codec.profile.bytes_per_packet[0]          # the training data's, >= 20
    assert result.table["byt"].iloc[2] == np.ceil(lowest_bpp * result.table["pkt"].iloc[2])


def test_profile_repairs_packets_and_oversized_bytes():
    profile = ProtocolProfile(ports={"srcport": {}, "dstport": {1: [771, 0]}}, flags={17: [16]})
    columns = {"proto": np.array([6, 1, 17, 47]), "pkt": np.array([0, 2, 1, 1]),
               "byt": np.array([10, 10**6, 5000, 40]), "srcport": np.array([80, 5, 53, 0]),
               "dstport": np.array([443, 80, 53, 0]), "flags": np.array([2, 0, 2, 0])}
    repairs = profile.repair(columns)
    assert repairs == {"pkt_below_1": 1, "byt_below_20_per_pkt": 1,
                       "byt_above_65535_per_pkt": 1, "bytes_per_packet_outside_training": 0,
                       "ports_on_portless_proto": 2,
                       "tcp_flags_on_non_tcp": 1}
    np.testing.assert_array_equal(columns["pkt"], [1, 2, 1, 1])
    np.testing.assert_array_equal(columns["byt"], [20, 131070, 5000, 40])
    np.testing.assert_array_equal(columns["srcport"], [80, 0, 53, 0])   # ICMP -> 0 (none seen)
    np.testing.assert_array_equal(columns["dstport"], [443, 771, 53, 0])  # ICMP -> most frequent
    np.testing.assert_array_equal(columns["flags"], [2, 0, 16, 0])      # GRE unseen -> 0


def test_decode_rejects_wrong_shape(codec):
    with pytest.raises(ValueError, match=rf"shape \(n, {codec.width}\), got \(5, 3\)"):
        codec.decode(np.zeros((5, 3), dtype=np.float32), start_ts=0.0)


# ---------------------------------------------------------------------------- unseen values
def _with_unseen_values(table: pd.DataFrame, port: int) -> pd.DataFrame:
    """The first 3 records; the first gets ``port``, a protocol, a label and a byte count
    that training never saw."""
    rows = table.iloc[:3].copy()
    rows["srcport"] = np.array([port, 80, 80], dtype=np.int32)
    rows["proto"] = np.array([132, 6, 6], dtype=np.uint8)              # SCTP never seen
    rows["label"] = np.array(["scan", "background", "background"], dtype=object)
    rows["byt"] = np.array([10**12, 100, 100], dtype=np.int64)           # beyond the range
    return rows


def test_unseen_values_map_to_known_ones_and_are_counted(table, netshare_codec):
    codec = netshare_codec
    vocabulary = set(codec.transforms["srcport"].table.values.tolist())
    unseen_port = next(p for p in range(40000, 65536) if p not in vocabulary)
    rows = _with_unseen_values(table, unseen_port)
    result = codec.encode_report(rows)
    assert result.unknown["srcport"] == 1 and result.unknown["proto"] == 1
    assert result.unknown["label"] == 1 and result.unknown["byt"] == 1
    decoded = codec.decode(result.array, start_ts=float(rows["ts"].iloc[0])).table
    known = np.array(sorted(vocabulary))
    nearest = known[np.argmin(np.abs(known - unseen_port))]
    assert decoded["srcport"].iloc[0] == nearest
    assert decoded["proto"].iloc[0] == schema.TCP                      # most frequent
    assert decoded["label"].iloc[0] == "background"
    highest_bpp = codec.profile.bytes_per_packet[1]  # the largest byte count, then at most
    assert decoded["byt"].iloc[0] == min(table["byt"].max(),  # the training bytes per packet
                                         np.floor(highest_bpp * decoded["pkt"].iloc[0]))


def test_encode_names_missing_columns(table, codec):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['flags', 'label'\]"):
        codec.encode(table.drop(columns=["flags", "label"]))


def test_unseen_values_in_the_default_codec(table, codec):
    """An unseen ephemeral port keeps its value (its range token + its bits); an unseen
    protocol, label or out-of-range number maps to a known one and is counted."""
    seen = set(table["srcport"]) | set(table["dstport"])
    unseen_port = next(p for p in range(50000, 65536) if p not in seen)
    rows = _with_unseen_values(table, unseen_port)
    result = codec.encode_report(rows)
    assert result.unknown["srcport"] == 0 and result.unknown["proto"] == 1
    assert result.unknown["label"] == 1 and result.unknown["byt"] == 1
    decoded = codec.decode(result.array, start_ts=float(rows["ts"].iloc[0])).table
    assert decoded["srcport"].iloc[0] == unseen_port
    assert decoded["proto"].iloc[0] == schema.TCP                      # most frequent
    highest_bpp = codec.profile.bytes_per_packet[1]  # the largest byte count, then at most
    assert decoded["byt"].iloc[0] == min(table["byt"].max(),  # the training bytes per packet
                                         np.floor(highest_bpp * decoded["pkt"].iloc[0]))


# ---------------------------------------------------------------------------- word2vec
def test_every_vocabulary_token_decodes_to_itself(netshare_codec):
    codec = netshare_codec
    for name in ("srcport", "proto"):
        emb = codec.transforms[name].table
        np.testing.assert_array_equal(emb.decode(emb.scaled), emb.values)
        assert emb.scaled.min() >= 0.0 and emb.scaled.max() <= 1.0


def test_off_token_queries_find_a_near_token(netshare_codec):
    codec = netshare_codec
    """Model output is not on a token: the cell index returns the nearest token of the
    probed cells, which is close to the true nearest (brute force) on real embeddings."""
    emb = codec.transforms["srcport"].table
    rng = np.random.default_rng(5)
    queries = np.clip(emb.scaled[rng.integers(0, len(emb.values), 300)]
                      + rng.normal(0, 0.02, (300, emb.dim)), 0, 1).astype(np.float32)
    got = emb.index.query(queries)
    d_got = np.linalg.norm(emb.scaled[got] - queries, axis=1)
    d_best = np.array([np.linalg.norm(emb.scaled - q, axis=1).min() for q in queries])
    assert (d_got >= d_best - 1e-6).all()
    assert np.mean(d_got / d_best) < 1.05
    assert np.mean(np.isclose(d_got, d_best)) > 0.6


def test_cell_index_is_exact_for_separated_points():
    from flowdiff.codec.nearest import NearestIndex
    rng = np.random.default_rng(2)
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, 5)] * 3), -1).reshape(-1, 3)  # (125, 3)
    index = NearestIndex.build(grid.astype(np.float32), seed=0)
    truth = rng.integers(0, len(grid), 2000)
    queries = grid[truth] + rng.uniform(-0.1, 0.1, (2000, 3))   # spacing 0.25: stays nearest
    np.testing.assert_array_equal(index.query(queries), truth)
    np.testing.assert_array_equal(index.query(grid), np.arange(len(grid)))


def test_colliding_vectors_are_separated():
    from flowdiff.codec.word2vec import PORT, EmbeddingTable, _separate
    vectors = np.array([[0.1, 0.2], [0.1, 0.2], [0.5, 0.9], [0.1, 0.2], [0.3, 0.3]],
                       dtype=np.float32)
    separated, moved = _separate(vectors, np.random.default_rng(0))
    assert moved == 2
    emb = EmbeddingTable(PORT, np.arange(5), separated, np.ones(5), seed=0)
    np.testing.assert_array_equal(emb.decode(emb.encode(np.arange(5))), np.arange(5))


def test_fit_is_reproducible_for_a_seed(table):
    part = table.iloc[:4000]
    a = FlowCodec.fit(part, CodecConfig(), seed=3).encode(part)
    b = FlowCodec.fit(part, CodecConfig(), seed=3).encode(part)
    c = FlowCodec.fit(part, CodecConfig(), seed=4).encode(part)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---------------------------------------------------------------------------- config choices
def test_per_field_transform_choice(table, tmp_path):
    config = CodecConfig.from_dict({"fields": {"srcport": "bits", "dstport": "bits",
                                               "proto": "onehot", "tos": "bits",
                                               "flags": "onehot", "label": "none",
                                               "td": "minmax"}})
    part = table.iloc[:5000]
    codec = FlowCodec.fit(part, config, seed=0)
    transforms = {f: t.name for f, t in codec.transforms.items()}
    assert transforms == {"ts": "quantile", "td": "minmax", "srcip": "reuse_bits",
                          "dstip": "reuse_bits", "srcport": "bits", "dstport": "bits",
                          "proto": "onehot", "pkt": "quantile", "byt": "quantile",
                          "flags": "onehot", "tos": "bits"}
    assert codec.feature_slices["srcport"].stop - codec.feature_slices["srcport"].start == 16
    assert codec.feature_slices["proto"].stop - codec.feature_slices["proto"].start == \
        part["proto"].nunique()
    codec.save(tmp_path)
    assert not (tmp_path / "word2vec.bin").exists() and not (tmp_path / "tokens.bin").exists()
    loaded = FlowCodec.load(tmp_path)
    decoded = loaded.decode(loaded.encode(part), float(part["ts"].iloc[0])).table
    assert "label" not in decoded.columns
    for name in ("srcip", "dstip", "srcport", "dstport", "proto", "pkt", "flags", "tos"):
        np.testing.assert_array_equal(decoded[name].to_numpy(), part[name].to_numpy(), name)


def test_bits_ports_decode_any_float_to_valid_records(table):
    config = CodecConfig.from_dict({"fields": {"srcport": "bits", "dstport": "bits",
                                               "proto": "bits"}})
    codec = FlowCodec.fit(table.iloc[:3000], config, seed=0)
    x = np.random.default_rng(1).uniform(-1, 2, size=(2000, codec.width))
    result = codec.decode(x, start_ts=0.0)
    decoded = result.table
    assert decoded["srcport"].between(0, 65535).all()
    portless = ~decoded["proto"].isin(list(schema.PORTED_PROTOS))
    seen = set(codec.profile.ports["srcport"])
    unseen_portless = portless & ~decoded["proto"].isin(list(seen))
    assert unseen_portless.any()  # random proto bits produce protocols never seen
    assert (decoded.loc[unseen_portless, ["srcport", "dstport", "flags"]] == 0).all().all()
    assert result.repairs["ports_on_portless_proto"] > 0


def test_fields_absent_from_training_stay_absent(table):
    part = table.iloc[:2000].drop(columns=["tos", "label", "flags"])
    codec = FlowCodec.fit(part, CodecConfig(), seed=0)
    assert codec.fields == ("ts", "td", "srcip", "dstip", "srcport", "dstport", "proto",
                            "pkt", "byt")
    decoded = codec.decode(codec.encode(part), float(part["ts"].iloc[0])).table
    assert list(decoded.columns) == list(codec.fields)


def test_pair_codes_cover_conversations_and_decode_block_by_block(table, codec, pair_codec):
    """reuse_pair_bits: a reversed record (srcip = the previous dstip and dstip = the
    previous srcip) is one peer code per field, far fewer addresses are "new" than with
    per-field codes, and decoding two streams block by block through their histories gives
    the records back exactly."""
    def codes(c, name):
        block = c.encode(table)[:, c.feature_slices[name]]
        return block[:, :c.transforms[name].code_width].argmax(axis=1)

    src, dst = table["srcip"].to_numpy(), table["dstip"].to_numpy()
    reversed_ = np.r_[False, (src[1:] == dst[:-1]) & (dst[1:] == src[:-1]) & (src[1:] != dst[1:])]
    depth = pair_codec.transforms["srcip"].depth
    assert reversed_.sum() > 100
    pair_src, pair_dst = codes(pair_codec, "srcip"), codes(pair_codec, "dstip")
    # reversed and not repeating its own field's previous address: (peer, 1) in both
    own_repeat = np.r_[False, src[1:] == src[:-1]] | np.r_[False, dst[1:] == dst[:-1]]
    assert (pair_src[reversed_ & ~own_repeat] == depth + 1).all()
    assert (pair_dst[reversed_ & ~own_repeat] == depth + 1).all()
    assert (pair_src == 0).mean() < (codes(codec, "srcip") == 0).mean() - 0.1
    streams = pair_codec.encode(table)[:2000].reshape(2, 1000, -1)
    history, decoded = pair_codec.empty_history(2), []
    for start in range(0, 1000, 100):
        out = pair_codec.decode_streams(streams[:, start:start + 100], np.zeros(2),
                                        [np.random.default_rng(0), np.random.default_rng(1)],
                                        history)
        assert "srcip_reuse_before_history" not in out.result.repairs or start == 0
        history = out.history
        decoded.append(out.result.table[["srcip", "dstip"]].to_numpy().reshape(2, 100, 2))
    np.testing.assert_array_equal(np.concatenate(decoded, axis=1).reshape(-1, 2),
                                  table[["srcip", "dstip"]].to_numpy()[:2000])


def test_following_ports_come_back_from_their_address_pointers(table, conv_codec):
    """word2vec_follow: about half the ports of UGR'16 follow their address (the port of the
    record the address repeats); with every follower's own token and bits wiped, the
    decoded ports are still exact, block by block through the histories too."""
    x = conv_codec.encode(table)[:2000]
    wiped = x.copy()
    for port in ("srcport", "dstport"):
        transform, columns = conv_codec.transforms[port], conv_codec.feature_slices[port]
        follows = transform.follows(x[:, columns])
        assert 0.3 < follows.mean() < 0.7
        wiped[follows, columns.start:columns.start + transform.follow_start] = 0.0
    history, decoded = conv_codec.empty_history(1), []
    assert sorted(history) == ["dstip", "dstport", "srcip", "srcport"]
    for start in range(0, 2000, 100):
        out = conv_codec.decode_streams(wiped[None, start:start + 100], np.zeros(1),
                                        [np.random.default_rng(0)], history)
        assert "port_follow_before_history" not in out.result.repairs
        history = out.history
        decoded.append(out.result.table[["srcport", "dstport"]].to_numpy())
    np.testing.assert_array_equal(np.concatenate(decoded),
                                  table[["srcport", "dstport"]].to_numpy()[:2000])
    # without the histories, the block's first records point nowhere: their wiped ports stay
    cut = conv_codec.decode_streams(wiped[None, 1000:1100], np.zeros(1),
                                    [np.random.default_rng(0)], None)
    assert cut.result.repairs["srcip_reuse_before_history"] > 0
    assert (cut.result.table["srcport"].to_numpy() != table["srcport"].to_numpy()[1000:1100]).any()


def test_conversation_code_decodes_both_addresses_of_a_pair(table, conv_codec):
    """conversations: about half the records of UGR'16 are the host pair of one of the last
    16 records, or its reverse; with their own codes saying "new" and their address bits
    wiped, the conversation code alone gives both addresses back."""
    leader, other = conv_codec.transforms["srcip"], conv_codec.transforms["dstip"]
    src, dst = conv_codec.feature_slices["srcip"], conv_codec.feature_slices["dstip"]
    x = conv_codec.encode(table)
    conversation = x[:, src.start + leader.code_width:src.start + leader.bits_start].argmax(1)
    assert 0.3 < (conversation > 0).mean() < 0.8
    rows = conversation > 0
    y = x.copy()
    for block, transform in ((src, leader), (dst, other)):
        y[rows, block.start:block.start + transform.code_width] = np.eye(transform.code_width)[0]
        y[rows, block.start + transform.bits_start:block.stop] = 0.0
    decoded = conv_codec.decode(y, float(table["ts"].iloc[0])).table
    np.testing.assert_array_equal(decoded[["srcip", "dstip"]].to_numpy(),
                                  table[["srcip", "dstip"]].to_numpy())


def test_following_ports_need_reused_addresses():
    with pytest.raises(ConfigError, match="fields.srcport: 'word2vec_follow' follows srcip's "
                                          "reuse codes, so srcip must be 'reuse_bits'"):
        CodecConfig.from_dict({"fields": {"srcip": "bits", "srcport": "word2vec_follow"}})
    with pytest.raises(ConfigError, match="fields.dstport: must be 'word2vec_follow'"):
        CodecConfig.from_dict({"fields": {**PAIR["fields"], "srcport": "word2vec_follow"}})
    with pytest.raises(ConfigError, match="conversations: needs 'reuse_pair_bits'"):
        CodecConfig.from_dict({"conversations": True})
    one_side = CodecConfig.from_dict({"fields": {"srcport": "word2vec_follow"}})
    assert one_side.fields["srcip"] == "reuse_bits"


def test_pair_reuse_needs_both_addresses():
    with pytest.raises(ConfigError, match="fields.dstip: must be 'reuse_pair_bits'"):
        CodecConfig.from_dict({"fields": {"srcip": "reuse_pair_bits"}})


def test_config_errors_are_all_listed():
    with pytest.raises(ConfigError) as info:
        CodecConfig.from_dict({"field": {}, "fields": {"srcport": "onehot", "sport": "bits",
                                                       "srcip": "none"},
                               "word2vec": {"vector_size": "ten", "windows": 3}})
    problems = info.value.errors
    assert len(problems) == 6, problems
    text = str(info.value)
    for fragment in ("field: unknown key", "fields.srcport: transform 'onehot' not allowed",
                     "fields.sport: unknown field", "fields.srcip: transform 'none'",
                     "word2vec.vector_size: expected an integer, got 'ten'",
                     "word2vec.windows: unknown key"):
        assert fragment in text


def test_shipped_default_config_matches_built_in_defaults():
    import yaml
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "configs" / "codec-default.yaml"
    assert CodecConfig.from_dict(yaml.safe_load(path.read_text())) == CodecConfig()


# ---------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("which, files", [
    ("default", ["codec.json", "tokens.bin", "tokens.json"]),
    ("netshare", ["codec.json", "word2vec.bin", "word2vec.json", "word2vec_index.npz"]),
    ("pair", ["codec.json", "tokens.bin", "tokens.json"]),
    ("conv", ["codec.json", "tokens.bin", "tokens.json"])])
def test_save_and_load_give_the_same_codec(table, which, files, request, tmp_path):
    codec = request.getfixturevalue(FIXTURES[which])
    codec.save(tmp_path / "codec")
    assert sorted(p.name for p in (tmp_path / "codec").iterdir()) == files
    loaded = FlowCodec.load(tmp_path / "codec")
    assert loaded.feature_slices == codec.feature_slices and loaded.width == codec.width
    x = codec.encode(table)
    np.testing.assert_array_equal(loaded.encode(table), x)
    noisy = x + np.random.default_rng(0).normal(0, 0.05, x.shape).astype(np.float32)
    a = codec.decode(noisy, start_ts=1.46e9, rng=np.random.default_rng(4))
    b = loaded.decode(noisy, start_ts=1.46e9, rng=np.random.default_rng(4))
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.repairs == b.repairs


def test_codec_of_another_version_is_refused(codec, tmp_path):
    codec.save(tmp_path)
    state = json.loads((tmp_path / "codec.json").read_text())
    state["version"] = 99
    (tmp_path / "codec.json").write_text(json.dumps(state))
    with pytest.raises(CodecVersionError, match=r"codec\.json: codec format version 99, .* "
                                                r"reads versions \[1, 2\]; refit the codec"):
        FlowCodec.load(tmp_path)


def test_version_1_codec_still_loads(tmp_path, ugr16_sample):
    """Artifacts trained by flowdiff 0.1 (codec format version 1) keep working: their
    "word2vec" is NetShare's nearest-neighbour embedding, loaded as word2vec_nearest. The
    version-1 file is written as flowdiff 0.1 wrote it (the packaged model of 0.1 was one;
    the packaged model has since been retrained)."""
    from flowdiff.codec import CodecConfig
    from flowdiff.ingest import read_flows

    table, _ = read_flows(ugr16_sample)
    fields = {"ts": "log_minmax", "td": "log_minmax", "srcip": "bits", "dstip": "bits",
              "srcport": "word2vec_nearest", "dstport": "word2vec_nearest",
              "proto": "word2vec_nearest", "pkt": "log_minmax", "byt": "log_minmax"}
    FlowCodec.fit(table.iloc[:2000], CodecConfig.from_dict({"fields": fields})).save(tmp_path)
    state = json.loads((tmp_path / "codec.json").read_text())
    old_name = lambda t: "word2vec" if t == "word2vec_nearest" else t  # noqa: E731
    state["version"] = 1
    state["config"]["fields"] = {f: old_name(t) for f, t in state["config"]["fields"].items()}
    state["fields"] = [dict(e, transform=old_name(e["transform"])) for e in state["fields"]]
    (tmp_path / "codec.json").write_text(json.dumps(state))
    codec = FlowCodec.load(tmp_path)
    assert codec.transforms["srcport"].name == "word2vec_nearest"
    assert codec.transforms["byt"].name == "log_minmax" and codec.draws == 0
    x = np.random.default_rng(0).uniform(0, 1, (500, codec.width)).astype(np.float32)
    decoded = codec.decode(x, start_ts=1.46e9).table
    assert len(decoded) == 500 and decoded["srcport"].between(0, 65535).all()


def test_missing_or_foreign_codec_files_are_refused(tmp_path):
    with pytest.raises(CodecFileError, match="no codec file here"):
        FlowCodec.load(tmp_path)
    (tmp_path / "codec.json").write_text('{"weights": []}')
    with pytest.raises(CodecFileError, match="not a flowdiff codec file"):
        FlowCodec.load(tmp_path)
    (tmp_path / "codec.json").write_text("{broken")
    with pytest.raises(CodecFileError, match="not valid JSON"):
        FlowCodec.load(tmp_path)


def test_bytes_per_packet_stay_in_the_training_range():
    """byt / pkt of decoded records is clamped into the range seen in training (UGR'16:
    never above an Ethernet MTU); training records are left exactly as they are."""
    train = pd.DataFrame({"proto": np.array([6, 6, 17], np.uint8), "pkt": [1, 3, 10],
                          "byt": [40, 41, 15000]})                 # bpp 40, 13.67 -> 20, 1500
    profile = ProtocolProfile.fit(train)
    assert profile.bytes_per_packet == (20.0, 1500.0)
    columns = {"proto": np.array([6, 6, 6, 17]), "pkt": np.array([3, 2, 10, 10]),
               "byt": np.array([41, 9000, 15000, 15000])}
    repairs = profile.repair(columns)
    assert repairs["bytes_per_packet_outside_training"] == 1
    np.testing.assert_array_equal(columns["byt"], [60, 3000, 15000, 15000])
    again = ProtocolProfile.from_state(json.loads(json.dumps(profile.state())))
    assert again.bytes_per_packet == profile.bytes_per_packet
    old = profile.state()
    del old["bytes_per_packet"]                               # a flowdiff 0.1 codec file
    assert ProtocolProfile.from_state(old).bytes_per_packet == (20.0, 65535.0)
