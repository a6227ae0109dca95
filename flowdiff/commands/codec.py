"""``flowdiff codec fit|encode|decode|check``: fit the codec on a trace, encode records to
an ``.npy`` array of float32 steps, decode such an array back to flow records, and check how
gracefully decoding degrades when the encoded values are off."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "codec", help="fit / apply the record <-> vector codec",
        description="Fit the codec on training records, encode records to float32 vectors "
                    "(one record per row, .npy), decode vectors back to records.")
    actions = parser.add_subparsers(dest="codec_action", metavar="ACTION", required=True)

    fit = actions.add_parser("fit", help="fit a codec on a trace and save it to a directory")
    fit.add_argument("--data", required=True, metavar="TRACE", help="training trace file")
    fit.add_argument("--config", metavar="CODEC.yaml",
                     help="codec config (a 'codec:' section or the section itself); "
                          "default: built-in defaults")
    fit.add_argument("--out", required=True, metavar="CODEC_DIR", help="output directory")
    fit.add_argument("--seed", type=int, default=0, help="word2vec seed (default 0)")

    encode = actions.add_parser("encode", help="encode a trace to an (n, F) float32 .npy")
    encode.add_argument("--codec", required=True, metavar="DIR", help="fitted codec directory")
    encode.add_argument("--data", required=True, metavar="TRACE", help="trace file to encode")
    encode.add_argument("--out", required=True, metavar="X.npy", help="output array")
    encode.add_argument("--prev-ts", type=float, default=None, metavar="T",
                        help="ts of the record before the first one (default: none, the "
                             "first inter-arrival time is 0)")

    decode = actions.add_parser("decode", help="decode an (n, F) .npy back to flow records")
    decode.add_argument("--codec", required=True, metavar="DIR", help="fitted codec directory")
    decode.add_argument("--input", required=True, metavar="X.npy", help="encoded array")
    decode.add_argument("--start-ts", required=True, type=float, metavar="T",
                        help="epoch seconds: ts of the record before the first one")
    decode.add_argument("--out", required=True, metavar="FLOWS.csv", help="output flow file")
    decode.add_argument("--seed", type=int, default=None,
                        help="seed of the sampled fields (ports, protocol); default: the "
                             "codec's own seed, so the same array decodes the same way")

    check = actions.add_parser(
        "check", help="encode held-out records, add noise, decode, score against the records",
        description="Codec quality check: encode the records of TRACE (held-out traffic the "
                    "codec was not fitted on), add Gaussian noise of each --noise size to "
                    "the encoded values (the error of an imperfect model), also blend each "
                    "record half-and-half with a random other one, decode, and score the "
                    "decoded records against the real ones (port JSD, top-20 port shares, "
                    "scale-free EMD of td/pkt/byt/inter-arrival, address repeat rates). "
                    "A good codec keeps every figure near its noise-0 value.")
    check.add_argument("--codec", required=True, metavar="DIR", help="fitted codec directory")
    check.add_argument("--data", required=True, metavar="TRACE",
                       help="records to check with (held out from the codec's fit)")
    check.add_argument("--noise", default="0,0.02,0.1", metavar="S1,S2,...",
                       help="noise standard deviations in encoded units (default 0,0.02,0.1)")
    check.add_argument("--records", type=int, default=100_000, metavar="N",
                       help="use the first N records of TRACE (default 100000)")
    check.add_argument("--seed", type=int, default=0, help="noise and decoding seed")
    check.add_argument("--json", metavar="OUT.json", help="also write the figures as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowdiff.codec import CodecVersionError

    action = {"fit": _fit, "encode": _encode, "decode": _decode,
              "check": _check}[args.codec_action]
    try:
        return action(args)
    except CodecVersionError as err:
        print(f"flowdiff codec {args.codec_action}: {err}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as err:  # includes SchemaError, config and codec file errors
        print(f"flowdiff codec {args.codec_action}: {err}", file=sys.stderr)
        return 2


def load_codec_config(path: str | None):
    """A CodecConfig from a YAML file holding a ``codec:`` section or just the section
    (the config engine's errors: ``file:line: key: message``)."""
    from flowdiff.codec import CodecConfig
    from flowdiff.config import read_yaml

    if path is None:
        return CodecConfig()
    data, lines = read_yaml(path)
    if isinstance(data, dict) and "codec" in data:
        return CodecConfig.from_dict(data["codec"], "codec", source=str(path), lines=lines)
    return CodecConfig.from_dict(data, source=str(path), lines=lines)


def _fit(args: argparse.Namespace) -> int:
    from flowdiff.codec import FlowCodec
    from flowdiff.ingest import read_flows

    config = load_codec_config(args.config)
    table, _summary = read_flows(args.data)
    codec = FlowCodec.fit(table, config, seed=args.seed)
    codec.save(args.out)
    print(f"codec fitted on {len(table)} records of {args.data}: {codec.width} features")
    for name, part in codec.feature_slices.items():
        kind = codec.transforms[name].name
        print(f"  {name:<8} {kind:<11} features {part.start}..{part.stop - 1}")
    print(f"saved to {args.out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    import numpy as np

    from flowdiff.codec import FlowCodec
    from flowdiff.ingest import read_flows

    codec = FlowCodec.load(args.codec)
    table, _summary = read_flows(args.data)
    result = codec.encode_report(table, prev_ts=args.prev_ts)
    np.save(args.out, result.array)
    print(f"encoded {len(table)} records -> {args.out} shape {result.array.shape} float32")
    unseen = {f: n for f, n in result.unknown.items() if n}
    if unseen:
        print(f"values not seen in training, mapped to known ones: {unseen}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    import numpy as np

    from flowdiff.codec import FlowCodec
    from flowdiff.ingest import write_flows

    codec = FlowCodec.load(args.codec)
    array = np.load(args.input, allow_pickle=False)
    rng = None if args.seed is None else np.random.default_rng(args.seed)
    result = codec.decode(array, start_ts=args.start_ts, rng=rng)
    write_flows(result.table, args.out)
    print(f"decoded {len(result.table)} records -> {args.out}")
    print(f"repairs: {result.total_repairs} {result.repairs}")
    return 0


def _check(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from flowdiff.codec import FlowCodec
    from flowdiff.eval.codec_check import codec_check, to_markdown
    from flowdiff.ingest import read_flows

    try:
        noise = [float(x) for x in args.noise.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"--noise: expected comma-separated numbers, got {args.noise!r}") \
            from err
    if not noise or any(x < 0 for x in noise):
        raise ValueError(f"--noise: expected numbers >= 0, got {args.noise!r}")
    if args.records < 2:
        raise ValueError(f"--records: expected at least 2, got {args.records}")
    codec = FlowCodec.load(args.codec)
    table, _summary = read_flows(args.data)
    table = table.iloc[:args.records].reset_index(drop=True)
    rows = codec_check(codec, table, noise, seed=args.seed)
    print(f"codec {args.codec} on {len(table)} records of {args.data}")
    print(to_markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")
    return 0
