"""``flowdiff codec fit|encode|decode``: fit the codec on a trace, encode records to an
``.npy`` array of float32 steps, decode such an array back to flow records."""

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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowdiff.codec import CodecVersionError

    action = {"fit": _fit, "encode": _encode, "decode": _decode}[args.codec_action]
    try:
        return action(args)
    except CodecVersionError as err:
        print(f"flowdiff codec {args.codec_action}: {err}", file=sys.stderr)
        return 3
    except (ValueError, OSError) as err:  # includes SchemaError, config and codec file errors
        print(f"flowdiff codec {args.codec_action}: {err}", file=sys.stderr)
        return 2


def load_codec_config(path: str | None):
    """A CodecConfig from a YAML file holding a ``codec:`` section or just the section."""
    from pathlib import Path

    import yaml

    from flowdiff.codec import CodecConfig

    if path is None:
        return CodecConfig()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err
    if isinstance(data, dict) and "codec" in data:
        data = data["codec"]
    return CodecConfig.from_dict(data, source=str(path))


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
    result = codec.decode(array, start_ts=args.start_ts)
    write_flows(result.table, args.out)
    print(f"decoded {len(result.table)} records -> {args.out}")
    print(f"repairs: {result.total_repairs} {result.repairs}")
    return 0
