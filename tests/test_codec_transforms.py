"""The codec's diffusion-friendly transforms, each against hand-made cases: quantile numbers,
host reuse, port tokens decoded as a distribution; and the codec quality check."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from flowdiff.codec import CodecConfig, FlowCodec
from flowdiff.codec.kernel import KernelDecoder
from flowdiff.codec.quantile import QuantileTransform
from flowdiff.codec.reuse import (UNKNOWN, ReuseBitsTransform, ReusePairBitsTransform,
                                  conversation_codes, decode_reuse, effective_codes,
                                  follow_flags, reuse_pointers)


# ---------------------------------------------------------------------------- quantile
def test_quantile_round_trip_is_exact_and_ties_are_spread():
    pkt = np.array([1] * 600 + [2] * 300 + [3] * 90 + [371_653] * 10)       # (1000,)
    q = QuantileTransform(seed=0).fit(pkt)
    z = q.encode(pkt)[:, 0]
    assert z.dtype == np.float32 and 0.0 <= z.min() and z.max() < 1.0
    back, outside = q.decode(z[:, None])
    np.testing.assert_array_equal(back, pkt)
    assert outside == 0
    # pkt = 1 is 60% of the records: its positions fill the middle of [0, 0.6), not a point
    ones = z[pkt == 1]
    assert 0.15 <= ones.min() and ones.max() <= 0.45 and len(np.unique(ones)) == 600
    # the largest value keeps its share of the range (1%): the tail is not squeezed
    assert z[pkt == 371_653].min() >= 0.99


def test_quantile_decodes_any_float_to_a_training_value_in_order():
    values = np.array([0.0, 0.0, 0.5, 1.25, 7.0, 300.0])
    q = QuantileTransform(seed=1).fit(values)
    grid = np.linspace(-0.5, 1.5, 201)[:, None]
    decoded, outside = q.decode(grid)
    assert set(decoded) <= set(values)
    assert (np.diff(decoded) >= 0).all()                    # monotone: order is kept
    assert outside == int(((grid < 0) | (grid > 1)).sum())
    assert decoded[0] == 0.0 and decoded[-1] == 300.0


def test_quantile_unseen_values_go_to_the_nearest_and_are_counted():
    q = QuantileTransform(seed=0).fit(np.array([1.0, 2.0, 10.0, 10.0]))
    column = np.array([1.4, 9.0, 1e9, -5.0, 2.0])
    assert q.decimals == 0          # integers: 1.4 is 1 at the column's resolution
    assert q.unknown(column) == 3
    decoded, _ = q.decode(q.encode(column))
    np.testing.assert_array_equal(decoded, [1.0, 10.0, 10.0, 1.0, 2.0])


def test_quantile_state_round_trip_and_seeded_jitter():
    column = np.random.default_rng(3).integers(1, 50, 500)
    q = QuantileTransform(seed=7).fit(column)
    again = QuantileTransform.from_state(q.state())
    np.testing.assert_array_equal(again.encode(column), q.encode(column))
    other = QuantileTransform(seed=8).fit(column)
    assert not np.array_equal(other.encode(column), q.encode(column))


# ---------------------------------------------------------------------------- reuse
def test_reuse_codes_name_the_nearest_earlier_record():
    ips = np.array([10, 20, 10, 10, 30, 20, 40, 50, 60, 30])
    reuse = ReuseBitsTransform(depth=3)
    #               10 20 10 10 30 20 40 50 60 30
    expected = [0, 0, 2, 1, 0, 0, 0, 0, 0, 0]  # 20 at 5 is 4 back, 30 at 9 is 5 back: > K
    np.testing.assert_array_equal(reuse.codes(ips), expected)
    block = reuse.encode(ips)
    assert block.shape == (10, 3 + 1 + 32)
    np.testing.assert_array_equal(block[:, :4].argmax(axis=1), expected)
    decoded, fallbacks = reuse.decode(block)
    np.testing.assert_array_equal(decoded, ips)
    assert fallbacks == 0


def test_reuse_resolves_to_the_referenced_address_not_the_bits():
    """Decoding follows the reuse code even when the bits say otherwise, through chains."""
    reuse = ReuseBitsTransform(depth=4)
    block = reuse.encode(np.array([111, 222, 333, 444, 555]))
    block[:, :5] = 0.0
    block[:, 0] = 1.0                       # all "new" ...
    block[2, :5] = np.eye(5)[2]             # ... but record 2 = record 0 (2 back)
    block[4, :5] = np.eye(5)[2]             # record 4 = record 2 = record 0 (a chain)
    block[3, :5] = np.eye(5)[1]             # record 3 = record 2 = 111
    decoded, _ = reuse.decode(block)
    np.testing.assert_array_equal(decoded, [111, 222, 111, 111, 111])


def test_reuse_continues_across_blocks_with_history():
    """The daemon decodes block by block: codes pointing into the previous block resolve
    through the stream's history; before any known history they fall back to the bits."""
    reuse = ReuseBitsTransform(depth=3)
    ips = np.array([7, 8, 9, 8, 7, 7])
    block = reuse.encode(ips)[None]                                         # (1, 6, W)
    first, history, fallbacks = reuse.decode_streams(block[:, :3], None)
    assert fallbacks == 0 and first.tolist() == [[7, 8, 9]]
    np.testing.assert_array_equal(history, [[7, 8, 9]])
    second, history, fallbacks = reuse.decode_streams(block[:, 3:], history)
    assert second.tolist() == [[8, 7, 7]] and fallbacks == 0
    np.testing.assert_array_equal(history, [[8, 7, 7]])
    # the same second block without history: codes 2 and 3 point nowhere -> own bits
    alone, _, fallbacks = reuse.decode_streams(block[:, 3:],
                                               np.full((1, 3), UNKNOWN, dtype=np.int64))
    assert alone.tolist() == [[8, 7, 7]] and fallbacks == 1
    # two streams at once keep their histories apart
    two = np.concatenate([block[:, :3], reuse.encode(np.array([5, 5, 5]))[None]])
    decoded, history, _ = reuse.decode_streams(two, None)
    assert decoded.tolist() == [[7, 8, 9], [5, 5, 5]]


def test_pair_codes_name_a_reversal_and_prefer_the_own_field():
    src = np.array([1, 2, 1, 5, 9, 9])
    dst = np.array([2, 1, 2, 6, 5, 7])
    pair = ReusePairBitsTransform(depth=3, peer="dstip")
    # record 1 is record 0 reversed: src 2 = dst 1 back (code K + 1 = 4); record 2: src 1
    # is both own 2 back and dst 1 back -> the smaller k wins (peer, 4); record 4: src 9 is
    # nowhere; record 5: src 9 own 1 back (1); record 3: src 5 nowhere
    np.testing.assert_array_equal(pair.codes(src, dst), [0, 4, 4, 0, 0, 1])
    # dst side: record 1's dst 1 = src 1 back (4); record 2's dst 2 = own 2 back and src
    # 1 back -> peer (k = 1 < 2); record 4's dst 5 = src 1 back
    np.testing.assert_array_equal(ReusePairBitsTransform(3, "srcip").codes(dst, src),
                                  [0, 4, 4, 0, 4, 0])
    # a tie at the same k: the own field first
    np.testing.assert_array_equal(pair.codes(np.array([3, 3]), np.array([3, 8])), [0, 1])
    assert pair.encode(src, dst).shape == (6, 2 * 3 + 1 + 32)


def test_pair_decoding_follows_chains_across_the_two_fields():
    src_t, dst_t = ReusePairBitsTransform(4, "dstip"), ReusePairBitsTransform(4, "srcip")
    src, dst = np.array([10, 20, 30, 40]), np.array([50, 60, 70, 80])
    src_block, dst_block = src_t.encode(src, dst), dst_t.encode(dst, src)   # all "new"

    def code(block, row, value):
        block[row, :9] = np.eye(9)[value]

    code(dst_block, 1, 4 + 1)     # dst[1] = src[0] = 10
    code(src_block, 2, 4 + 1)     # src[2] = dst[1] = src[0] = 10 (a chain across fields)
    code(dst_block, 3, 2)         # dst[3] = dst[1] = 10
    code(src_block, 3, 4 + 3)     # src[3] = dst[0] = 50
    values, history, fallbacks = decode_reuse((src_t, dst_t), (src_block[None], dst_block[None]),
                                             (None, None))
    assert values[0].tolist() == [[10, 20, 10, 50]]
    assert values[1].tolist() == [[50, 10, 70, 10]]
    assert fallbacks == [0, 0] and history[0].tolist() == [[10, 20, 10, 50]]
    # the next block's peer codes reach into the other field's history; before it: bits
    nxt_src, nxt_dst = src_t.encode(np.array([1, 2])), dst_t.encode(np.array([3, 4]))
    code(nxt_src, 0, 4 + 1)       # = dst of the last record = 10
    code(nxt_dst, 1, 4 + 4)       # = src 4 back: the previous block's src[1] = 20
    code(nxt_src, 1, 4)           # = own 4 back: the same record's src, 20
    values, _, fallbacks = decode_reuse((src_t, dst_t), (nxt_src[None], nxt_dst[None]), history)
    assert values[0].tolist() == [[10, 20]] and values[1].tolist() == [[3, 20]]
    unknown = np.full((1, 4), UNKNOWN, dtype=np.int64)
    values, _, fallbacks = decode_reuse((src_t, dst_t), (nxt_src[None], nxt_dst[None]),
                                       (unknown, unknown))
    assert values[0].tolist() == [[1, 2]] and values[1].tolist() == [[3, 4]]
    assert fallbacks == [2, 1]


def test_conversation_codes_name_a_whole_pair_and_override_the_field_codes():
    src = np.array([1, 2, 1, 1, 3, 4])
    dst = np.array([2, 1, 2, 5, 3, 3])
    # record 1: record 0 reversed (K + 1); record 2: record 0's pair 2 back and record 1
    # reversed 1 back -> the smaller k (reversed, 4); record 3: srcip repeats, pair new (0);
    # record 4: 3 -> 3 is nowhere; record 5: dst 3 alone (0)
    np.testing.assert_array_equal(conversation_codes(src, dst, 3), [0, 4, 4, 0, 0, 0])
    # a tie at the same k: the same pair first (a host talking to itself)
    np.testing.assert_array_equal(conversation_codes(np.array([7, 7]), np.array([7, 7]), 3), [0, 1])
    np.testing.assert_array_equal(effective_codes(np.array([0, 2, 5]), np.array([4, 0, 1])),
                                  [4, 2, 1])
    leader = ReusePairBitsTransform(3, "dstip", conversation=True)
    other = ReusePairBitsTransform(3, "srcip")
    assert leader.parts == (("code", 7), ("conversation", 7), ("bits", 32))
    assert leader.width == 7 + 7 + 32 and leader.bits_start == 14 and other.bits_start == 7
    assert ReusePairBitsTransform.from_state(leader.state()).width == leader.width
    # decoding: both fields follow the conversation code, whatever their own codes say
    src_block, dst_block = leader.encode(src, dst), other.encode(dst, src)
    src_block[:, :7], dst_block[:, :7] = np.eye(7)[0], np.eye(7)[0]     # own codes: all new
    src_block[1:3, 14:] = 0.0
    dst_block[1:3, 7:] = 0.0                                            # bits say 0.0.0.0
    values, _, fallbacks = decode_reuse((leader, other), (src_block[None], dst_block[None]),
                                        (None, None))
    assert values[0].tolist() == [src.tolist()] and values[1].tolist() == [dst.tolist()]
    assert fallbacks == [0, 0]


def test_follow_flags_name_the_port_of_the_record_the_address_points_at():
    depth = 3
    # srcip codes: 0 new, 1 own 1 back, K + 1 = the previous record's dstip
    codes = np.array([0, 4, 1, 4, 2])
    srcport = np.array([1000, 80, 80, 443, 1000])
    dstport = np.array([80, 1000, 53, 80, 9])
    # record 1 reverses record 0: srcport 80 = dstport 1 back -> follows; record 2 repeats
    # srcip 1 back and its srcport 80 -> follows; record 3 points at dstport of record 2
    # (53) but has 443 -> does not; record 4: own 2 back, srcport 80 != 1000 -> does not
    np.testing.assert_array_equal(follow_flags(codes, depth, srcport, dstport),
                                  [False, True, True, False, False])
    with pytest.raises(ValueError, match="peer codes need"):
        follow_flags(codes, depth, srcport)


def test_ports_follow_the_address_pointers_across_fields_and_blocks():
    """ReusePointers.follow: a following port copies the port of the slot its address
    copies (own or peer field, history included), chains resolved; a record whose address
    is new, or that points at an unknown port, keeps its own port."""
    src_t, dst_t = ReusePairBitsTransform(4, "dstip"), ReusePairBitsTransform(4, "srcip")
    src, dst = np.array([10, 20, 30, 40]), np.array([50, 60, 70, 80])
    src_block, dst_block = src_t.encode(src, dst), dst_t.encode(dst, src)   # all "new"
    src_block[1, :9], dst_block[1, :9] = np.eye(9)[4 + 1], np.eye(9)[4 + 1]  # 1 = 0 reversed
    src_block[2, :9] = np.eye(9)[1]                                       # src 2 = src 1
    own = np.array([[[1000, 80, 7, 8]], [[80, 1000, 9, 6]]])              # (fields, S, H)
    follows = np.array([[[True, True, True, True]], [[False, True, False, False]]])
    pointers = reuse_pointers((src_t, dst_t), (src_block[None], dst_block[None]), (None, None))
    values, history, nowhere = pointers.follow(own, [None, None], follows)
    # srcport 1 = dstport 0 (80); srcport 2 = srcport 1 = 80 (a chain); srcport 0 and 3:
    # their addresses are new, so their own; dstport 1 = srcport 0 (1000)
    assert values[0].tolist() == [[1000, 80, 80, 8]] and values[1].tolist() == [[80, 1000, 9, 6]]
    assert nowhere == 0 and history[0].tolist() == [[1000, 80, 80, 8]]
    # the next block: srcip points at the previous block's dstip 4 back (record 0)
    nxt_src, nxt_dst = src_t.encode(np.array([1])), dst_t.encode(np.array([2]))
    nxt_src[0, :9] = np.eye(9)[4 + 4]
    addr_history = [h for h in pointers.resolve()[1]]
    nxt = reuse_pointers((src_t, dst_t), (nxt_src[None], nxt_dst[None]), addr_history)
    values, _, nowhere = nxt.follow(np.array([[[5]], [[6]]]), history,
                                    np.array([[[True]], [[True]]]))
    assert values[0].tolist() == [[80]] and values[1].tolist() == [[6]] and nowhere == 0
    # the same with no known ports: the address is known, its port is not -> own, counted
    unknown = np.full((1, 4), UNKNOWN, dtype=np.int64)
    values, _, nowhere = nxt.follow(np.array([[[5]], [[6]]]), [unknown, unknown],
                                    np.array([[[True]], [[True]]]))
    assert values[0].tolist() == [[5]] and nowhere == 1


# ---------------------------------------------------------------------------- port tokens
def _three_tokens() -> KernelDecoder:
    vectors = np.array([[0.2, 0.2], [0.6, 0.2], [0.4, 0.95]], dtype=np.float32)  # A, B, C
    return KernelDecoder(vectors, counts=np.array([100, 300, 5000]), temperature=0.05)


def test_midway_between_two_tokens_gives_both_never_a_third():
    decoder = _three_tokens()
    midway = np.tile([[0.4, 0.2]], (4000, 1)).astype(np.float32)
    rows = decoder.decode(midway, np.random.default_rng(0).random(4000))
    counts = np.bincount(rows, minlength=3)
    assert counts[2] == 0                               # C: far from both, never drawn
    assert counts[0] > 0 and counts[1] > 0              # both neighbours, ...
    assert 0.2 < counts[0] / 4000 < 0.3                 # ... in proportion to frequency
    # a query on a token is that token whatever the uniforms; without uniforms, the most
    # probable one
    exact = decoder.decode(decoder.vectors, np.array([0.999, 0.0, 0.5]))
    np.testing.assert_array_equal(exact, [0, 1, 2])
    assert decoder.decode(midway[:1], None).tolist() == [1]


def test_port_decoding_midway_between_two_real_service_ports(codec_on_sample):
    """On the fitted UGR'16 vocabulary: the midpoint of two service-port embeddings with no
    third token near it decodes to those two ports only."""
    codec, _ = codec_on_sample
    transform = codec.transforms["srcport"]
    table = transform.table
    service = [i for i in np.argsort(-table.counts) if transform.port_of[i] >= 0][:12]
    decoder = table.decoder
    for a in service:
        for b in service:
            if a >= b:
                continue
            mid = (table.scaled[a] + table.scaled[b]) / 2
            allowed = np.flatnonzero(np.isfinite(decoder.log_weights(mid[None]))[0])
            if set(allowed) == {a, b}:
                break
        else:
            continue
        break
    else:
        pytest.skip("no pair of frequent service ports with a clean midpoint")
    n = 2000
    block = np.zeros((n, transform.width), dtype=np.float32)
    block[:, :transform.dim] = mid
    ports, _ = transform.decode(block, np.random.default_rng(1).random((n, 1)))
    assert set(ports) == {transform.port_of[a], transform.port_of[b]}


def test_a_seeded_decode_is_reproducible(codec_on_sample):
    codec, table = codec_on_sample
    x = codec.encode(table.iloc[:3000])
    noisy = np.clip(x + np.random.default_rng(2).normal(0, 0.05, x.shape), 0, 1)
    decode = lambda seed: codec.decode(noisy, 1.46e9, rng=np.random.default_rng(seed)).table
    pd.testing.assert_frame_equal(decode(11), decode(11))
    assert not decode(11)["srcport"].equals(decode(12)["srcport"])
    pd.testing.assert_frame_equal(codec.decode(noisy, 1.46e9).table,
                                  codec.decode(noisy, 1.46e9).table)  # default: codec's seed


def test_decode_streams_equals_per_stream_decode(codec_on_sample):
    codec, table = codec_on_sample
    x = codec.encode(table.iloc[:600]).reshape(3, 200, codec.width)
    x = np.clip(x + np.random.default_rng(5).normal(0, 0.03, x.shape), 0, 1)
    starts = np.array([1.46e9, 1.47e9, 1.48e9])
    together = codec.decode_streams(x, starts, [np.random.default_rng(s) for s in range(3)])
    for s in range(3):
        alone = codec.decode(x[s], starts[s], rng=np.random.default_rng(s)).table
        part = together.result.table.iloc[s * 200:(s + 1) * 200].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, alone)
    assert together.history["dstip"].shape == (3, codec.config.reuse_depth)


# ---------------------------------------------------------------------------- codec check
def test_codec_check_degrades_gracefully_on_the_default_codec(codec_on_sample):
    from flowdiff.eval.codec_check import codec_check, to_markdown
    codec, table = codec_on_sample
    rows = codec_check(codec, table.iloc[:5000].reset_index(drop=True), (0.0, 0.02), seed=0)
    real, exact, small, blend = rows
    assert [r["noise"] for r in rows] == ["real", 0.0, 0.02, "blend"]
    assert exact["jsd_srcport"] == 0.0 and exact["emd_sf_byt"] == 0.0
    assert exact["repeat_dstip"] == real["repeat_dstip"] > 0.05
    assert small["repeat_dstip"] == real["repeat_dstip"]          # reuse codes survive
    assert small["max_share_srcport"] < 1.5 * real["max_share_srcport"]  # no hub port
    for name in ("emd_sf_td", "emd_sf_pkt", "emd_sf_byt", "emd_sf_iat"):
        assert small[name] < 0.01, name
    assert 0.0 <= blend["third_srcport"] <= 1.0
    assert "| jsd_srcport |" in to_markdown(rows)


@functools.lru_cache(maxsize=1)
def _fitted(path) -> tuple[FlowCodec, pd.DataFrame]:
    from flowdiff.ingest import read_flows
    table, _ = read_flows(path)
    return FlowCodec.fit(table, CodecConfig(), seed=0), table


@pytest.fixture
def codec_on_sample(ugr16_sample):
    """The default codec fitted on the UGR'16 20k sample (once), and a copy of the table."""
    codec, table = _fitted(ugr16_sample)
    return codec, table.copy()


def test_every_transform_name_the_config_allows_is_registered():
    """One registry of transform names: each one a field may take builds and reloads."""
    from flowdiff.codec.codec import TRANSFORM_KINDS
    from flowdiff.codec.config import ALLOWED_TRANSFORMS

    allowed = {t for choices in ALLOWED_TRANSFORMS.values() for t in choices} - {"none"}
    assert allowed == set(TRANSFORM_KINDS)
