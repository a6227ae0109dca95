"""Each fidelity metric on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from flowdiff import schema
from flowdiff.eval import marginals, structure, temporal, validity
from flowdiff.eval.compare import EvalConfig, RealReference, compare, headline
from flowdiff.eval.discriminative import (DiscriminativeConfig, DiscriminativeError,
                                          discriminative_score, labelled_record_features,
                                          labelled_window_features, record_score,
                                          window_features)
from flowdiff.eval.drift import drift, segment_bounds
from flowdiff.eval.temporal import conversation_port_rates, host_pair_error, host_pair_rates

LN2 = math.log(2)


def synthetic_trace(n: int, seed: int, hosts: int = 20, burst: int = 5) -> pd.DataFrame:
    """A trace with temporal dependence: each host pair sends a burst of ``burst`` records."""
    rng = np.random.default_rng(seed)
    pairs = n // burst + 1
    src = np.repeat(rng.integers(1, hosts, pairs), burst)[:n]
    dst = np.repeat(rng.integers(100, 100 + hosts, pairs), burst)[:n]
    proto = np.repeat(rng.choice([6, 17], pairs, p=[0.7, 0.3]), burst)[:n]
    pkt = rng.integers(1, 50, n)
    return schema.conform(pd.DataFrame({
        "ts": 1.46e9 + np.cumsum(rng.exponential(0.01, n)),
        "td": rng.exponential(2.0, n),
        "srcip": src, "dstip": dst,
        "srcport": rng.integers(1024, 1100, n), "dstport": rng.choice([53, 80, 443], n),
        "proto": proto, "pkt": pkt, "byt": pkt * rng.integers(40, 1500, n),
        "flags": np.where(proto == 6, 0x1B, 0x10),
    }))


def shuffled(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Records in random order, start times kept in place: same marginals, no dependence."""
    out = table.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    out["ts"] = table["ts"].to_numpy()
    return out


# ----------------------------------------------------------------------------- marginals
def test_jsd_identical_is_zero_and_disjoint_is_ln2():
    a = np.array([80, 80, 443, 53])
    assert marginals.jsd_categorical(a, a[::-1]) == pytest.approx(0.0, abs=1e-12)
    assert marginals.jsd_categorical(a, a + 1000) == pytest.approx(LN2)


def test_jsd_known_value():
    # p = (1, 0), q = (1/2, 1/2): JSD = 1/2 KL(p||m) + 1/2 KL(q||m), m = (3/4, 1/4)
    expected = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75)
                                                  + 0.5 * math.log(0.5 / 0.25))
    assert marginals.jsd_categorical([1, 1], [1, 2]) == pytest.approx(expected)


def test_rank_frequency_ignores_addresses_but_not_shape():
    real = np.array([1, 1, 1, 2, 3])
    renamed = np.array([9, 9, 9, 7, 8])  # other addresses, same counts
    assert marginals.jsd_rank_frequency(real, renamed) == pytest.approx(0.0, abs=1e-12)
    flat = np.array([1, 2, 3, 4, 5])
    assert marginals.jsd_rank_frequency(real, flat) > 0.05
    assert list(marginals.rank_frequency(real)) == [3, 1, 1]


def test_emd_raw_is_the_shift_and_scale_free_spans_0_to_half():
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000)
    assert marginals.emd_raw(x, x + 3.0) == pytest.approx(3.0)
    assert marginals.emd_scale_free(x, rng.permutation(x)) == pytest.approx(0.0, abs=1e-12)
    assert marginals.emd_scale_free(x, x + 100.0) == pytest.approx(0.5)
    assert marginals.emd_scale_free(x, x - 100.0) == pytest.approx(0.5)
    # scale-free: the same relative shape at another scale gives the same figure
    y = rng.exponential(size=1000)
    assert marginals.emd_scale_free(y, y * 2) == pytest.approx(
        marginals.emd_scale_free(y * 1000, y * 2000))


# ----------------------------------------------------------------------------- structure
def test_structure_identical_zero_and_conditional_ports():
    t = synthetic_trace(2000, seed=1)
    m = structure.structure_metrics(t, t)
    assert m["correlation_diff"] == pytest.approx(0.0, abs=1e-9)
    assert m["bpp_emd"] == 0.0 and m["bpp_emd_scale_free"] == 0.0
    assert m["dstport_jsd_tcp"] == pytest.approx(0.0, abs=1e-12)
    other = t.copy()
    other.loc[other["proto"] == 6, "dstport"] = 9999  # TCP ports disjoint, UDP unchanged
    m = structure.structure_metrics(t, other)
    assert m["dstport_jsd_tcp"] == pytest.approx(LN2)
    assert m["dstport_jsd_udp"] == pytest.approx(0.0, abs=1e-12)


def test_correlation_difference_sees_broken_dependence():
    t = synthetic_trace(3000, seed=2)
    t["byt"] = t["pkt"] * 100  # byt fully determined by pkt
    broken = t.copy()
    broken["byt"] = np.random.default_rng(0).permutation(t["byt"].to_numpy())
    assert structure.correlation_difference(t, broken) > 1.0


# ----------------------------------------------------------------------------- validity
def test_validity_counts_each_rule():
    t = schema.conform(pd.DataFrame({
        "ts": [0.0, 1.0, 2.0, 1.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        "td": [1.0, -1.0, 0, 0, 0, 0, 0, 0, 0, 0],
        "srcip": [1] * 10, "dstip": [2] * 10,
        "srcport": [1, 1, 1, 1, 5, 0, 0, 1, 1, 1],
        "dstport": [80, 80, 80, 80, 0, 771, 60000, 80, 80, 80],
        "proto": [6, 6, 6, 6, 1, 1, 1, 17, 17, 6],
        "pkt": [1, 1, 1, 1, 1, 1, 1, 0, 1, 1],
        "byt": [40, 40, 40, 40, 40, 40, 40, 40, 40, 10],
        "flags": [2, 2, 2, 2, 0, 16, 0, 0, 2, 2],
    }))
    # record 1 td<0; 3 time goes back; 4 ICMP srcport; 6 ICMP type 234; 7 pkt 0 (bpp 40 ok);
    # 8 SYN on UDP; 9 bpp 10 < 20. Record 5 carries the filler 16 and is fine.
    m = validity.validity_metrics(t, flag_filler=16)
    assert m["violation_fraction"] == pytest.approx(7 / 10)
    assert m["rules"] == {"bpp_bounds": 0.1, "pkt_min": 0.1, "td_nonneg": 0.1,
                          "flags_tcp": 0.1, "icmp_ports": 0.2, "time_order": 0.1}
    assert validity.non_tcp_flag_filler(t) == 0  # non-TCP: 0, 16, 0, 0, 2 -> 0


def test_validity_clean_trace_has_no_violation():
    t = synthetic_trace(1000, seed=3)
    t["byt"] = t["pkt"] * 100
    assert validity.validity_metrics(t, 0x10)["violation_fraction"] == 0.0
    assert validity.validity_metrics(t, 0)["violation_fraction"] > 0.1  # 0x10 on UDP


# ----------------------------------------------------------------------------- temporal
def test_repeat_rate_by_hand():
    codes = np.array([1, 1, 2, 1, 3, 3])
    assert temporal.repeat_rate(codes, 1) == pytest.approx(2 / 5)  # (1,1) and (3,3)
    assert temporal.repeat_rate(codes, 2) == pytest.approx(2 / 4)  # idx 3 (1 in 1,2), idx 5


def test_shuffle_keeps_marginals_but_loses_temporal_dependence():
    t = synthetic_trace(5000, seed=4)
    s = shuffled(t, seed=0)
    config = EvalConfig(discriminative=DiscriminativeConfig(window=20))
    same = headline(compare(RealReference.of(t, config), t, config))
    shuf = headline(compare(RealReference.of(t, config), s, config))
    for key in ("jsd_mean", "emd_sf_td", "emd_sf_pkt", "emd_sf_byt", "correlation_diff"):
        assert same[key] == pytest.approx(0.0, abs=1e-9)
        assert shuf[key] == pytest.approx(0.0, abs=1e-9), key
    assert same["dependence_error"] == 0.0
    # the real trace repeats dstip in ~4 of 5 consecutive records; shuffled ~1 in 20
    assert shuf["dependence_error"] > 0.3
    assert same["discriminative"] <= 0.05
    assert shuf["discriminative"] > 0.3
    assert same["record_discriminative"] <= 0.05


def test_flows_per_second_and_autocorrelation():
    t = pd.DataFrame({"ts": np.array([0.1, 0.2, 0.3, 1.5, 3.2, 3.3])})
    assert list(temporal.flows_per_second(t)) == [3, 1, 0, 2]
    periodic = np.tile([10.0, 0.0], 50)
    acf = temporal.autocorrelation(periodic, 2)
    assert acf[0] == pytest.approx(-0.99) and acf[1] == pytest.approx(0.98)
    assert not temporal.autocorrelation(np.ones(10), 3).any()


# ----------------------------------------------------------------------------- discriminative
def test_discriminative_needs_enough_windows():
    t = synthetic_trace(100, seed=5)
    with pytest.raises(DiscriminativeError, match="at least 10 windows of 50 records"):
        discriminative_score(t, t)


def test_discriminative_is_seeded():
    a, b = synthetic_trace(3000, seed=6), synthetic_trace(3000, seed=7)
    config = DiscriminativeConfig(window=20, seed=3)
    assert discriminative_score(a, b, config) == discriminative_score(a, b, config)


def test_record_score_sees_which_numbers_go_with_one_flow_where_windows_do_not():
    """Bytes shuffled among the records of each 20-record window: every window's features
    and every marginal are unchanged, so the window score is 0; the record score sees
    bytes no longer follow packets. Another trace of the same kind scores near 0."""
    t = synthetic_trace(6000, seed=4)
    mixed = t.copy()
    rng = np.random.default_rng(0)
    byt = t["byt"].to_numpy().reshape(-1, 20)
    mixed["byt"] = np.take_along_axis(byt, rng.permuted(np.tile(np.arange(20), (len(byt), 1)),
                                                        axis=1), axis=1).reshape(-1)
    config = DiscriminativeConfig(window=20)
    assert discriminative_score(t, mixed, config)["score"] == 0.0
    assert record_score(t, synthetic_trace(6000, seed=5), config)["score"] < 0.05
    scored = record_score(t, mixed, config)
    assert scored["score"] > 0.12, scored
    assert scored["records_per_side"] == 6000 and scored["test_records"] == 2 * 1800
    assert record_score(t, mixed, config) == scored                           # seeded
    names, features = labelled_record_features(t)
    assert features.shape == (6000, len(names))
    assert features[:, names.index("bytes_per_packet")] == pytest.approx(
        np.log1p(t["byt"].to_numpy(float)) - np.log1p(t["pkt"].to_numpy(float)))
    with pytest.raises(DiscriminativeError, match="at least 10 records"):
        record_score(t.iloc[:5], t)


# ----------------------------------------------------------------------------- drift
def test_window_feature_names_follow_the_feature_columns():
    """benchmarks/window_features.py labels each column by these names: one per column, and
    the repeat column of srcip is the share of consecutive equal srcips in the window."""
    table = synthetic_trace(1000, seed=3)
    names, features = labelled_window_features(table, 50)
    assert features.shape == (20, len(names)) and len(set(names)) == len(names)
    assert np.array_equal(features, window_features(table, 50))
    srcip = table["srcip"].to_numpy()[:50]
    assert features[0, names.index("srcip_repeat")] == pytest.approx((srcip[1:] == srcip[:-1]).mean())
    narrow_names, narrow = labelled_window_features(table.drop(columns=["flags", "td"]), 50)
    assert narrow.shape[1] == len(narrow_names) and "td_mean" not in narrow_names


def test_window_features_benchmark_spread_shows_burst_persistence(tmp_path, capsys):
    """benchmarks/window_features.py --spread: a bursty trace's window features correlate
    from one window to the next; the same records shuffled do not."""
    import runpy
    import sys
    from pathlib import Path

    real = synthetic_trace(4000, seed=3, burst=400)             # host pairs in 400-record bursts
    flat = shuffled(real, seed=4)
    real.to_parquet(tmp_path / "real.parquet")
    flat.to_parquet(tmp_path / "flat.parquet")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "window_features.py"
    argv = sys.argv
    sys.argv = [str(script), "--real", str(tmp_path / "real.parquet"), "--synthetic",
                str(tmp_path / "flat.parquet"), "--top", "3", "--spread"]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("share_udp "))
    sd_real, sd_flat, lag1_real, lag1_flat = (float(v) for v in row.split()[1:5])
    assert lag1_real > 0.5 and abs(lag1_flat) < 0.3 and sd_real > 2 * sd_flat
    assert "median sd ratio synthetic / real" in out


def test_host_pair_rates_count_repeated_and_reversed_conversations():
    table = schema.conform(pd.DataFrame({
        "ts": 1.46e9 + np.arange(7.0), "td": 0.0, "srcport": 1, "dstport": 2, "proto": 6,
        "pkt": 1, "byt": 60, "flags": 0x10,
        "srcip": [1, 1, 2, 1, 1, 5, 5],
        "dstip": [2, 2, 1, 3, 3, 6, 7]}))
    # pairs of consecutive records: same pair, reversed, new, same pair, new, src only
    rates = host_pair_rates(table)
    assert rates["dst_given_src"] == pytest.approx(2 / 3)    # src repeats 3 times, dst too twice
    assert rates["reversed"] == pytest.approx(1 / 6)
    assert rates["pair"] == pytest.approx(3 / 6)
    assert host_pair_error(rates, rates) == 0.0
    flipped = dict(rates, reversed=rates["reversed"] + 0.3)
    assert host_pair_error(rates, flipped) == pytest.approx(0.1)
    assert host_pair_rates(table.drop(columns=["dstip"])) is None


def test_conversation_port_rates_count_ports_swapped_and_repeated_with_their_hosts():
    table = schema.conform(pd.DataFrame({
        "ts": 1.46e9 + np.arange(6.0), "td": 0.0, "proto": 6, "pkt": 1, "byt": 60, "flags": 0x10,
        "srcip":   [1, 2, 1, 1, 2, 9],
        "dstip":   [2, 1, 2, 2, 1, 8],
        "srcport": [4000, 80, 4001, 4001, 80, 5],
        "dstport": [80, 4000, 80, 80, 4001, 6]}))
    # consecutive pairs: reversed with ports swapped; reversed with ports not swapped
    # (4001 is a new connection); same pair, same ports; reversed, ports swapped; new
    rates = conversation_port_rates(table)
    assert rates["reversed"] == pytest.approx(2 / 3)
    assert rates["repeated"] == pytest.approx(1.0)
    assert conversation_port_rates(table.drop(columns=["srcport"])) is None


def test_segment_bounds():
    assert segment_bounds(250, 100) == [(0, 100), (100, 200), (200, 250)]
    assert segment_bounds(240, 100) == [(0, 100), (100, 240)]
    assert segment_bounds(50, 100) == [(0, 50)]


def test_drift_flags_a_stream_that_degrades():
    real = synthetic_trace(4000, seed=8)
    good = synthetic_trace(4000, seed=9)
    degrading = good.copy()
    degrading.loc[2000:, "dstport"] = 7777  # second half: one port never seen in real
    config = EvalConfig(segment_records=2000, discriminative=DiscriminativeConfig(window=20))
    reference = RealReference.of(real, config)
    stable = drift(reference, good, config)
    bad = drift(reference, degrading, config)
    assert [(s["start"], s["stop"]) for s in bad["segments"]] == [(0, 2000), (2000, 4000)]
    assert stable["relative_change"]["jsd_mean"] < 0.5
    assert bad["relative_change"]["jsd_mean"] > 5
    assert bad["segments"][1]["jsd_mean"] > bad["segments"][0]["jsd_mean"]
    assert bad["max_relative_change"] == max(bad["relative_change"].values())
    assert set(bad["absolute_change"]) == {"violation_fraction", "discriminative",
                                           "record_discriminative"}
    assert bad["absolute_change"]["violation_fraction"] == 0.0
