"""Output calibration (flowdiff.codec.calibration): each part against what it must do on
crafted model outputs, the round trip through codec.json, the `flowdiff calibrate` command
on a real tiny artifact; plus the daemon's shared timeline and the training hold-out."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import generate_twice

from flowdiff.cli import main
from flowdiff.codec import FlowCodec
from flowdiff.codec.calibration import (AddressVocabulary, OutputCalibration, address_bits,
                                        TOKEN_TOLERANCE, fit_biases, fit_token_offsets,
                                        fit_tokens)
from flowdiff.codec.kernel import KernelDecoder


def test_bias_fit_brings_argmax_frequencies_to_the_target():
    rng = np.random.default_rng(0)
    outputs = rng.random((20_000, 4)) * np.array([1.0, 0.6, 0.5, 0.4])  # class 0 wins 60%+
    target = np.array([0.25, 0.3, 0.25, 0.2])
    before = np.bincount(outputs.argmax(1), minlength=4) / len(outputs)
    bias = fit_biases(outputs, target)
    after = np.bincount((outputs + bias).argmax(1), minlength=4) / len(outputs)
    assert np.abs(before - target).sum() > 0.3
    assert np.abs(after - target).sum() < 0.01


def test_bias_fit_splits_outputs_at_the_one_hot_corners():
    # a trained model's one-hot outputs: each row a corner plus a little noise, so every
    # class wins by about the same margin (~0.98) on every row; the fit must land inside it
    rng = np.random.default_rng(2)
    classes = rng.choice(4, size=20_000, p=[0.7, 0.2, 0.07, 0.03])
    outputs = np.eye(4)[classes] + rng.uniform(-0.01, 0.01, size=(20_000, 4))
    target = np.array([0.5, 0.3, 0.15, 0.05])
    bias = fit_biases(np.clip(outputs, 0, 1), target)
    after = np.bincount((np.clip(outputs, 0, 1) + bias).argmax(1), minlength=4) / len(outputs)
    assert np.abs(after - target).sum() < 0.01
    assert bias[0] == 0.0                        # the most frequent target class is the anchor


def test_address_snapping_draws_what_the_dense_kernel_draws():
    """snap draws over the addresses within the kernel's reach only; the draw must be the
    one the dense weights over all V addresses give (``log_weights``, cumulative sum)."""
    rng = np.random.default_rng(3)
    addresses = rng.choice(2**32, size=300, replace=False)
    vocabulary = AddressVocabulary(addresses, rng.integers(10, 1000, 300), threshold=50.0,
                                   offsets=rng.normal(0, 1, 300))
    # model-like bits: vocabulary addresses with a few bits off and noise
    bits = address_bits(addresses[rng.integers(0, 300, 2000)]).astype(np.float64)
    bits = np.abs(bits - (rng.random(bits.shape) < 0.1)) + rng.normal(0, 0.15, bits.shape)
    uniforms = rng.random(len(bits))
    logw = vocabulary.log_weights(bits)                                       # (n, V)
    cumulative = np.cumsum(np.exp(logw - logw.max(axis=1, keepdims=True)), axis=1)
    dense = np.minimum((cumulative <= uniforms[:, None] * cumulative[:, -1:]).sum(axis=1), 299)
    known, margin = vocabulary.margins(bits)
    snapped = ~known & (margin <= vocabulary.threshold)
    assert snapped.sum() > 1000
    out = vocabulary.snap(bits, uniforms)
    np.testing.assert_array_equal(out[snapped], vocabulary.vectors[dense[snapped]])
    np.testing.assert_array_equal(out[~snapped], bits[~snapped])


def test_token_offsets_match_expected_frequencies():
    vectors = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    decoder = KernelDecoder(vectors, counts=np.array([10, 10, 10]), temperature=0.5)
    rng = np.random.default_rng(1)
    queries = np.clip(rng.normal([0.3, 0.3], 0.3, size=(5_000, 2)), 0, 1)
    target = np.array([0.2, 0.5, 0.3])
    offset = fit_token_offsets(decoder, queries, target)
    logw = decoder.log_weights(queries, offset)
    weights = np.exp(logw - logw.max(1, keepdims=True))
    expected = (weights / weights.sum(1, keepdims=True)).mean(0)
    assert np.abs(expected - target).sum() < 0.01
    drawn = decoder.decode(queries.astype(np.float32), rng.random(len(queries)), offset)
    assert np.abs(np.bincount(drawn, minlength=3) / len(drawn) - target).sum() < 0.05


def test_token_fit_reaches_a_far_token_the_model_never_comes_near():
    # UGR'16's protocols: UDP's vector lies at squared distance 2.4 from TCP's, and a model
    # crowding TCP writes queries next to TCP's vector; at kernel width 0.4 UDP is beyond the
    # decoder's cutoff for every such query (2 * 0.4**2 * ln 1e3 = 2.2), so no offset brings
    # it back; the fit must widen the kernel until the target frequencies are reached
    vectors = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, np.sqrt(0.4)], [1.0, 1.0, 1.0]])
    decoder = KernelDecoder(vectors, counts=np.array([800, 170, 30]), temperature=0.05)
    rng = np.random.default_rng(4)
    queries = np.clip(rng.normal(0.0, 0.03, size=(5_000, 3)), 0, 1)
    target = np.array([0.8, 0.17, 0.03])
    offset, temperature, error = fit_tokens(decoder, queries, target)
    assert error <= TOKEN_TOLERANCE
    assert temperature > 0.4
    drawn = decoder.decode(queries.astype(np.float32), rng.random(len(queries)), offset,
                           temperature)
    assert np.abs(np.bincount(drawn, minlength=3) / len(drawn) - target).sum() < 0.12


@pytest.fixture(scope="module", params=["reuse_bits", "reuse_pair_bits"])
def codec_and_records(request):
    from conftest import shared_file

    from flowdiff.codec import CodecConfig
    from flowdiff.ingest import read_flows

    table, _ = read_flows(shared_file("ugr16/ugr16_sample_20k.csv"))
    table = table.iloc[:4000].reset_index(drop=True)
    config = CodecConfig(fields={"srcip": request.param, "dstip": request.param})
    return FlowCodec.fit(table, config), table


def _skewed_outputs(codec, reference, seed=0):
    """Model-like outputs: the reference rows with the number fields squeezed toward the
    top and every reuse code pushed to 'new' (what an uncalibrated model does)."""
    rng = np.random.default_rng(seed)
    outputs = reference.astype(np.float64).copy()
    for name in ("td", "pkt", "byt", "ts"):
        col = codec.feature_slices[name].start
        outputs[:, col] = np.clip(0.5 + 0.5 * outputs[:, col] + rng.normal(0, 0.02, len(outputs)), 0, 1)
        outputs[rng.random(len(outputs)) < 0.05, col] = 1.0          # a mass on the edge
    for name in codec.reuse_fields:
        start = codec.feature_slices[name].start
        stop = start + codec.transforms[name].code_width
        block = 0.4 * outputs[:, start:stop] + rng.uniform(0, 0.1, (len(outputs), stop - start))
        block[:, 0] += 0.45                                          # 'new' mostly wins
        repeated = outputs[:, start:stop].argmax(1) > 0
        outputs[:, start:stop] = block
        # a repeat's own address bits carry nothing (the model need not write them)
        bits = slice(stop, codec.feature_slices[name].stop)
        outputs[repeated, bits] = rng.random((int(repeated.sum()), 32))
    return outputs


def test_calibration_maps_numbers_and_reuse_codes_onto_the_training_distribution(codec_and_records):
    codec, table = codec_and_records
    reference = codec.encode(table)
    outputs = _skewed_outputs(codec, reference)
    calibration = OutputCalibration.fit(codec, outputs, reference)
    uniforms = np.random.default_rng(2).random((len(outputs), calibration.draws))
    mapped = calibration.apply(outputs, uniforms)
    marginal = calibration.subset(["numbers"]).apply(outputs, uniforms)
    for name in ("td", "pkt", "byt", "ts"):
        col = codec.feature_slices[name].start
        raw_gap = np.abs(np.sort(outputs[:, col]) - np.sort(reference[:, col])).mean()
        gap = np.abs(np.sort(mapped[:, col]) - np.sort(reference[:, col])).mean()
        assert gap < 0.01 < raw_gap, (name, gap, raw_gap)
        # ranks are kept: off the tied edge the marginal map is monotone in the output
        # (td and byt are then mapped within their packet count, monotone within it)
        untied = outputs[:, col] < 1.0
        order = np.argsort(outputs[untied, col], kind="stable")
        assert (np.diff(marginal[untied, col][order]) >= -1e-12).all(), name
    for name in codec.reuse_fields:
        start = codec.feature_slices[name].start
        stop = start + codec.transforms[name].code_width
        real = (reference[:, start:stop].argmax(1) == 0).mean()
        assert (outputs[:, start:stop].argmax(1) == 0).mean() > real + 0.2
        assert abs((mapped[:, start:stop].argmax(1) == 0).mean() - real) < 0.01


def _conversation_codec(records: int):
    """The conversation codec (pair reuse codes, following ports, the conversation code)
    fitted on the first ``records`` UGR'16 sample records -> (codec, their encodings)."""
    from conftest import shared_file

    from flowdiff.codec import CodecConfig
    from flowdiff.ingest import read_flows

    table, _ = read_flows(shared_file("ugr16/ugr16_sample_20k.csv"))
    table = table.iloc[:records].reset_index(drop=True)
    codec = FlowCodec.fit(table, CodecConfig(fields={
        "srcip": "reuse_pair_bits", "dstip": "reuse_pair_bits",
        "srcport": "word2vec_follow", "dstport": "word2vec_follow"}, conversations=True))
    return codec, codec.encode(table)


def test_follow_and_conversation_codes_are_fitted_to_the_training_share():
    """word2vec_follow and conversations: the ports' follow codes and the pair's conversation
    code are arg-max blocks of their own ("srcport.follow", "srcip.conversation"); outputs
    that rarely say "follow" or "conversation" are biased back to the training share."""
    from flowdiff.codec.calibration import FOLLOW_CLASSES, argmax_blocks, follow_classes, follow_spans

    codec, reference = _conversation_codec(4000)
    outputs = reference.astype(np.float64).copy()
    rng = np.random.default_rng(0)
    blocks = argmax_blocks(codec)
    assert {"srcport.follow", "dstport.follow", "srcip.conversation"} <= set(blocks)
    for name in ("srcport.follow", "dstport.follow", "srcip.conversation"):
        start, stop = blocks[name]
        assert stop - start == (2 if name.endswith("follow") else 33)
        outputs[:, start:stop] = 0.4 * outputs[:, start:stop] + rng.uniform(0, 0.1, (len(outputs), stop - start))
        outputs[:, start] += 0.45                              # 'own port' / 'no pair' mostly wins
    # a model that writes srcip's own code independently of the conversation code: the
    # training codes of the records in a shuffled order (the overall marginal everywhere)
    start, stop = blocks["srcip"]
    outputs[:, start:stop] = (0.9 * reference[rng.permutation(len(reference)), start:stop]
                              + rng.uniform(0, 0.05, (len(outputs), stop - start)))
    calibration = OutputCalibration.fit(codec, outputs, reference)
    mapped = calibration.apply(outputs, rng.random((len(outputs), calibration.draws)))
    for name in ("srcport.follow", "dstport.follow", "srcip.conversation"):
        start, stop = blocks[name]
        real = (reference[:, start:stop].argmax(1) >= 1).mean()
        assert real > 0.3 and (outputs[:, start:stop].argmax(1) >= 1).mean() < real - 0.2
        assert abs((mapped[:, start:stop].argmax(1) >= 1).mean() - real) < 0.01
    # the addresses' own codes decide only outside conversations: fitted to the training
    # share among the records whose conversation code is 0 (there, "repeat srcip 1 back" is
    # much rarer than over all records)
    start, stop = blocks["srcip.conversation"]
    outside, reference_outside = mapped[:, start:stop].argmax(1) == 0, reference[:, start:stop].argmax(1) == 0
    start, stop = blocks["srcip"]
    within = (reference[reference_outside, start:stop].argmax(1) == 1).mean()
    assert abs(within - (reference[:, start:stop].argmax(1) == 1).mean()) > 0.02
    assert abs((mapped[outside, start:stop].argmax(1) == 1).mean() - within) < 0.02
    # the follow codes are fitted within each class of the record's address (new, own code,
    # same pair, reversed pair): the outputs say "follow" at one rate everywhere, the
    # training records do not (a reversed pair swaps its ports far more often)
    for name, (span, code, conversation, depth) in follow_spans(codec).items():
        (start, stop), mine = span, follow_classes(mapped, code, conversation, depth)
        theirs = follow_classes(reference, code, conversation, depth)
        shares = []
        for c in range(len(FOLLOW_CLASSES)):
            if min((mine == c).sum(), (theirs == c).sum()) < 200:
                continue
            real = (reference[theirs == c, start:stop].argmax(1) == 1).mean()
            shares.append(real)
            assert abs((mapped[mine == c, start:stop].argmax(1) == 1).mean() - real) < 0.02, (name, c)
        assert len(shares) >= 3 and max(shares) - min(shares) > 0.2, (name, shares)


def test_the_second_ports_follow_is_decided_given_the_firsts():
    """A repeated pair keeps one of its ports, rarely both (here: srcport follows 55 %,
    dstport 54 %, both 10 %); a model whose two follow codes are independent would give both
    about 30 % if each were only fitted to its own share. dstport's biases are fitted per
    srcport decision too, so the joint share comes back."""
    from flowdiff.codec.calibration import follow_classes, follow_spans

    codec, reference = _conversation_codec(8000)
    spans = follow_spans(codec)
    (first, code, conversation, depth), (second, *_) = spans["srcport.follow"], spans["dstport.follow"]
    same_pair = follow_classes(reference, code, conversation, depth) == 2

    def both(array):
        follows = [array[:, span[0] + 1] > array[:, span[0]] for span in (first, second)]
        return float((follows[0] & follows[1])[same_pair].mean())

    real = both(reference)
    # the model: the training codes, except that within the same-pair records dstport's
    # follow code is shuffled (its share kept, its tie to srcport's lost)
    rng = np.random.default_rng(1)
    outputs = reference.astype(np.float64) + rng.uniform(0, 0.05, reference.shape)
    rows = np.flatnonzero(same_pair)
    outputs[rows, second[0]:second[1]] = outputs[rng.permutation(rows), second[0]:second[1]]
    assert real < 0.15 and both(outputs) > real + 0.12
    calibration = OutputCalibration.fit(codec, outputs, reference)
    mapped = calibration.apply(outputs, rng.random((len(outputs), calibration.draws)))
    assert abs(both(mapped) - real) < 0.03
    for span in (first, second):   # and each port's own share stays the training one
        share = lambda a: float((a[:, span[0] + 1] > a[:, span[0]])[same_pair].mean())  # noqa: E731
        assert abs(share(mapped) - share(reference)) < 0.03
    assert calibration.follows["dstport.follow"][5] == tuple(first)
    assert calibration.follows["dstport.follow"][4].shape[0] == 8


def test_calibrated_codec_round_trips_through_codec_json_and_decodes_reproducibly(codec_and_records, tmp_path):
    codec, table = codec_and_records
    reference = codec.encode(table)
    outputs = _skewed_outputs(codec, reference, seed=3)
    codec_copy = FlowCodec.load(codec.save(tmp_path / "a"))
    codec_copy.set_calibration(OutputCalibration.fit(codec_copy, outputs, reference,
                                                     meta={"sampler": {"kind": "ddim"}}))
    loaded = FlowCodec.load(codec_copy.save(tmp_path / "b"))
    assert loaded.calibration is not None and loaded.draws == codec_copy.draws > codec.draws
    block = outputs[:500].astype(np.float32)
    a = codec_copy.decode(block, 1.46e9, rng=np.random.default_rng(5)).table
    b = loaded.decode(block, 1.46e9, rng=np.random.default_rng(5)).table
    pd.testing.assert_frame_equal(a, b)
    plain = codec.decode(block, 1.46e9, rng=np.random.default_rng(5)).table
    # the calibrated decode repeats hosts about as the training records do; the plain one
    # almost never (the 'new' code wins and a repeat's bits are noise)
    real = (table["srcip"].to_numpy()[1:500] == table["srcip"].to_numpy()[:499]).mean()
    repeats = lambda t: (t["srcip"].to_numpy()[1:] == t["srcip"].to_numpy()[:-1]).mean()  # noqa: E731
    assert real - repeats(plain) > 0.05
    assert abs(repeats(a) - real) < 0.03
    loaded.set_calibration(None)
    pd.testing.assert_frame_equal(loaded.decode(block, 1.46e9, rng=np.random.default_rng(5)).table, plain)


def test_flowdiff_calibrate_writes_the_calibration_into_the_artifact(tiny_model, ugr16_sample, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    assert main(["calibrate", "--model", str(model), "--data", str(ugr16_sample), "--turns", "3",
                 "--streams", "2", "--sampler", "conditional", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "calibrated" in out and "srcip" in out
    state = json.loads((model / "codec" / "codec.json").read_text())
    calibration = state["calibration"]
    assert calibration["meta"]["sampler"] == {"kind": "conditional", "steps": 3}
    assert calibration["meta"]["records"] == 2 * 3 * 8          # streams x turns x horizon
    assert set(calibration["biases"]) >= {"srcip", "dstip"}
    # every part is fitted on a real artifact: flags patterns, bytes/duration within the
    # packet count, ranged ports, token runs, address offsets
    assert set(calibration["patterns"]) == {"flags"} and set(calibration["conditional"]) == {"byt", "td"}
    assert set(calibration["ports"]) == {"srcport", "dstport"}
    assert set(calibration["runs"]) == {"srcport", "dstport", "proto"}
    assert all(0.0 <= rho < 1.0 for rho in calibration["runs"].values())
    assert {"offsets", "threshold"} <= set(calibration["addresses"]["srcip"][1])
    # generating from the calibrated artifact works and is reproducible
    runs = generate_twice(model, tmp_path, 40)                      # generation stays seeded
    assert runs[0] == runs[1] and runs[0].count(b"\n") == 40
    assert main(["calibrate", "--model", str(model), "--data", str(ugr16_sample),
                 "--turns", "0"]) == 2


def test_streams_on_the_shared_timeline_follow_each_other(tiny_model, tmp_path):
    """Merged output of 3 streams: in time order, each turn's blocks back to back; the
    per-stream timeline interleaves them from one start."""
    shared = tmp_path / "shared.jsonl"
    assert main(["generate", "--model", str(tiny_model), "--records", "48", "--streams", "3",
                 "--seed", "1", "--start-ts", "1460390400", "--out", str(shared)]) == 0
    records = pd.read_json(shared, lines=True)
    assert len(records) == 48
    assert (np.diff(records["ts"].to_numpy()) >= 0).all()          # generation order = time order
    blocks = records["stream_id"].to_numpy().reshape(-1, 8)        # horizon 8
    assert (blocks == blocks[:, :1]).all()
    assert list(blocks[:, 0]) == [0, 1, 2, 0, 1, 2]


def test_holdout_records_are_never_trained_on(ugr16_sample, tmp_path):
    from flowdiff.config import DataConfig
    from flowdiff.training import read_trace, split_trace

    data = DataConfig(max_rows=1000, val_fraction=0.1, holdout_records=200)
    table = read_trace(data, ugr16_sample)
    used, train, val = split_trace(data, table, ugr16_sample)
    assert len(used) == 800 and len(train) == 720 and len(val) == 80
    assert train["ts"].max() <= val["ts"].min() <= table["ts"].iloc[800]
    with pytest.raises(ValueError, match="holdout_records 1000 leaves no records"):
        split_trace(DataConfig(holdout_records=1000), table, "trace.csv")


def test_address_snapping_moves_near_misses_of_frequent_hosts_and_keeps_new_ones():
    from flowdiff.codec.calibration import (ADDRESS_MIN_COUNT, address_bits, bits_address,
                                            fit_address_vocabulary)

    rng = np.random.default_rng(4)
    heavy = np.array([0x0A000001, 0xC0A80102, 0x08080808])
    # training: 90% of the 'new' records on the three heavy hosts, 10% on one-off hosts
    reference = np.concatenate([np.repeat(heavy, [600, 200, 100]),
                                rng.integers(0, 2**32, 100)])
    reference_new = np.ones(len(reference), dtype=bool)
    # model outputs: heavy hosts written with soft, partly wrong bits, and random hosts
    near = address_bits(np.repeat(heavy, 300))
    near = np.clip(near + rng.normal(0, 0.15, near.shape), 0, 1)
    flip = rng.random(near.shape) < 0.04                   # ~1.3 bits off per address
    near[flip] = 1.0 - near[flip]
    far = rng.random((300, 32))
    outputs = np.concatenate([near, far])
    vocabulary, report = fit_address_vocabulary(outputs, np.ones(len(outputs), bool),
                                                reference, reference_new)
    assert len(vocabulary.addresses) == 3 and ADDRESS_MIN_COUNT <= 100
    assert report["training_share"] == 0.9 and report["model_share"] < 0.75
    snapped = bits_address(vocabulary.snap(outputs, rng.random(len(outputs))))
    on_vocabulary = np.isin(snapped, heavy).mean()
    assert abs(on_vocabulary - 0.9) < 0.03                   # the training share
    assert np.isin(snapped[:900], heavy).mean() > 0.95        # near misses come home
    untouched = ~np.isin(snapped[900:], heavy)
    assert (snapped[900:][untouched] == bits_address(far)[untouched]).all()


def test_bit_patterns_decode_flags_to_training_masks_at_training_frequencies(codec_and_records):
    """A model writes flag bits softly and leans toward the common masks: thresholding
    each bit invents masks and loses the rare ones (SYN alone: scans); the pattern part
    decodes the 8 bits jointly as a training mask, at the training frequencies."""
    from flowdiff.codec.calibration import from_bits

    codec, table = codec_and_records
    reference = codec.encode(table)
    start, stop = codec.feature_slices["flags"].start, codec.feature_slices["flags"].stop
    rng = np.random.default_rng(6)
    outputs = reference.astype(np.float64).copy()
    bits = reference[:, start:stop]
    outputs[:, start:stop] = np.clip(0.3 + 0.4 * bits + rng.normal(0, 0.12, bits.shape), 0, 1)
    outputs[:, stop - 5] = np.clip(outputs[:, stop - 5] + 0.15, 0, 1)  # the ACK bit leans on
    calibration = OutputCalibration.fit(codec, outputs, reference).subset(["patterns"])
    mapped = calibration.apply(outputs, None)
    masks, counts = np.unique(table["flags"].to_numpy(), return_counts=True)
    share = lambda values: np.array([(values == m).mean() for m in masks])  # noqa: E731
    plain, decoded = from_bits(outputs[:, start:stop]), from_bits(mapped[:, start:stop])
    assert np.isin(decoded, masks).all() and not np.isin(plain, masks).all()
    target = counts / counts.sum()
    assert np.abs(share(plain) - target).sum() > 0.2
    assert np.abs(share(decoded) - target).sum() < 0.05
    # the output still chooses: the record's own mask comes back more often than by
    # thresholding, far more often than a draw at the training frequencies would give
    true = table["flags"].to_numpy()
    assert (decoded == true).mean() > max((plain == true).mean(), 2 * (target ** 2).sum())


def test_bytes_are_mapped_within_the_packet_count_so_bytes_per_packet_stay_real(codec_and_records):
    """Outputs whose byte position has drifted away from the packet position: mapping each
    number alone gives the right byte marginal but wrong bytes per packet; the conditional
    part maps bytes within flows of the same packet count."""
    from flowdiff.eval.marginals import emd_scale_free

    codec, table = codec_and_records
    reference = codec.encode(table)
    rng = np.random.default_rng(8)
    outputs = reference.astype(np.float64).copy()
    byt = codec.feature_slices["byt"].start
    outputs[:, byt] = np.clip(0.5 * outputs[:, byt] + 0.5 * rng.permutation(outputs[:, byt])
                              + rng.normal(0, 0.02, len(outputs)), 0, 1)
    full = OutputCalibration.fit(codec, outputs, reference)

    def bytes_per_packet(parts):
        mapped = full.subset(parts).apply(outputs, rng.random((len(outputs), full.draws)))
        decoded = codec.decode(mapped.astype(np.float32), 1.46e9).table
        return decoded["byt"].to_numpy() / decoded["pkt"].to_numpy(), decoded["byt"].to_numpy()

    real_bpp = table["byt"].to_numpy() / table["pkt"].to_numpy()
    marginal_bpp, marginal_byt = bytes_per_packet(["numbers"])
    conditional_bpp, conditional_byt = bytes_per_packet(["numbers", "conditional"])
    assert set(full.conditional) == {"byt", "td"}
    assert emd_scale_free(real_bpp, conditional_bpp) < 0.5 * emd_scale_free(real_bpp, marginal_bpp)
    assert emd_scale_free(table["byt"].to_numpy(), conditional_byt) < 0.03
    # one-packet flows last 0 s in UGR'16; mapped within pkt = 1, td keeps that
    decoded = codec.decode(full.subset(["numbers", "conditional"]).apply(outputs, None)
                           .astype(np.float32), 1.46e9).table
    one = decoded["pkt"].to_numpy() == 1
    assert (table["td"][table["pkt"] == 1] == 0).mean() > 0.95
    assert (decoded["td"].to_numpy()[one] == 0).mean() > 0.9


def test_ranged_ports_are_drawn_from_the_training_ports_of_their_range(codec_and_records, tmp_path):
    """The model writes a rare port's 16 bits as a common service port's (80), so every
    ephemeral port decodes to the range start + 80. Calibrated, a range token's port is
    drawn from training's ports of that range: spread like them, in the token's range."""
    from flowdiff.codec.tokens import port_range

    codec, table = codec_and_records
    reference = codec.encode(table)
    outputs = reference.astype(np.float64).copy()
    for name in ("srcport", "dstport"):
        transform = codec.transforms[name]
        start = codec.feature_slices[name].start + transform.dim
        outputs[:, start:start + 16] = np.unpackbits(np.array([[0, 80]], np.uint8), axis=1)
    calibrated = FlowCodec.load(codec.save(tmp_path / "c"))
    calibrated.set_calibration(OutputCalibration.fit(calibrated, outputs, reference).subset(["ports"]))
    block = outputs.astype(np.float32)
    plain = codec.decode(block, 1.46e9, rng=np.random.default_rng(1)).table
    spread = calibrated.decode(block, 1.46e9, rng=np.random.default_rng(1)).table
    for name in ("srcport", "dstport"):
        transform = codec.transforms[name]
        real = table[name].to_numpy()
        real_ranged = real[transform.ranged_ports(real)]
        before, after = plain[name].to_numpy(), spread[name].to_numpy()
        ranged_before = before[transform.ranged_ports(before)]
        ranged_after = after[transform.ranged_ports(after)]
        assert len(np.unique(ranged_before)) <= 10     # low + 80 (and a few repaired values)
        assert len(np.unique(ranged_after)) > 0.5 * len(np.unique(real_ranged))
        assert abs(len(ranged_after) / len(after) - len(real_ranged) / len(real)) < 0.05
        share = lambda v: np.bincount(port_range(v), minlength=4) / len(v)  # noqa: E731
        assert np.abs(share(ranged_after) - share(real_ranged)).sum() < 0.1
    # the same generator gives the same records
    again = calibrated.decode(block, 1.46e9, rng=np.random.default_rng(1)).table
    pd.testing.assert_frame_equal(spread, again)


def test_correlated_token_draws_keep_each_draw_uniform_and_lengthen_runs(codec_and_records):
    """The runs part correlates a token field's consecutive draws (Gaussian AR(1) copula):
    each draw stays uniform (token frequencies do not move) while consecutive records whose
    posteriors agree pick the same token more often."""
    from flowdiff.codec.calibration import ar1_uniforms

    rng = np.random.default_rng(9)
    independent = rng.random((400, 100))
    correlated = ar1_uniforms(independent, 0.9)
    assert abs(correlated.mean() - 0.5) < 0.01 and abs(correlated.var() - 1 / 12) < 0.005
    assert np.histogram(correlated, bins=10, range=(0, 1))[0].min() > 0.09 * correlated.size
    lag1 = lambda u: np.corrcoef(u[:, 1:].ravel(), u[:, :-1].ravel())[0, 1]  # noqa: E731
    assert abs(lag1(independent)) < 0.02 and lag1(correlated) > 0.85
    assert np.allclose(ar1_uniforms(independent, 0.0), independent)

    codec, table = codec_and_records
    reference = codec.encode(table)
    rng = np.random.default_rng(10)
    outputs = reference.astype(np.float64).copy()
    start = codec.feature_slices["dstport"].start
    transform = codec.transforms["dstport"]
    dim = transform.table.dim
    # a model torn between web and DNS on every record: independent draws alternate
    between = (transform.table.scaled[transform.lookup[80]]
               + transform.table.scaled[transform.lookup[53]]) / 2
    outputs[:, start:start + dim] = between
    calibration = OutputCalibration.fit(codec, outputs, reference, horizon=100)
    report = calibration.meta["argmax_frequencies"]["dstport_runs"]
    repeats = {float(k): v for k, v in report["repeat"].items()}
    assert repeats[0.99] > repeats[0.0] + 0.2             # correlation lengthens the runs
    assert calibration.runs["dstport"] == min(repeats, key=lambda r: abs(repeats[r] - report["training_repeat"]))
    uniforms = rng.random((2 * 100, codec.draws + calibration.draws))
    codec_runs = calibration.correlate(uniforms, codec.draw_slices, streams=2)
    column = codec.draw_slices["dstport"].start
    untouched = [c for c in range(uniforms.shape[1]) if c != column and
                 not any(codec.draw_slices[n].start == c for n in calibration.runs)]
    assert np.array_equal(codec_runs[:, untouched], uniforms[:, untouched])
