"""``flowdiff generate --model DIR --records N --seed S --out FILE``: one-shot generation
through the daemon's own loop (pace fast, no state), written as JSON lines (``.jsonl``/``-``
for stdout) or, when the file exporter is installed, CSV/Parquet by extension."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate N synthetic records to a file",
                                   description="One-shot generation with the serve loop.")
    parser.add_argument("--model", default="default", metavar="DIR",
                        help="artifact directory (default: the packaged model)")
    parser.add_argument("--records", type=int, required=True, metavar="N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--streams", type=int, default=1, metavar="S",
                        help="parallel streams (records interleave by stream)")
    parser.add_argument("--sampler", choices=("guided", "replacement"), default="replacement")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps")
    parser.add_argument("--start-ts", type=float, metavar="EPOCH",
                        help="timestamp the streams start at (default: now); fixing it makes "
                             "the output byte-identical for the same seed")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output file: .jsonl (or '-' for stdout); .csv/.parquet "
                             "need the file exporter")
    parser.set_defaults(func=run)


def _exporter_entry(out: str) -> dict:
    if out == "-":
        return {"kind": "stdout"}
    if out.endswith((".jsonl", ".json")):
        return {"kind": "jsonl_file"}
    return {"kind": "file", "path": out}


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from prometheus_client import CollectorRegistry

    from flowdiff.config import ConfigError, ExporterConfig, parse_config
    from flowdiff.daemon.service import Service, StopFlag

    errors = [f"--{n}: expected an integer >= 1, got {v}"
              for n, v in (("records", args.records), ("streams", args.streams),
                           ("steps", args.steps)) if v < 1]
    if args.seed < 0:
        errors.append(f"--seed: expected an integer >= 0, got {args.seed}")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 2
    serve = {"model": args.model, "streams": args.streams, "seed": args.seed, "pace": "fast",
             "max_records": args.records,
             "sampler": {"kind": args.sampler, "steps": args.steps}}
    exporters = None
    entry = _exporter_entry(args.out)
    raw = {"serve": serve, "metrics": {"enabled": False}}
    if entry["kind"] != "jsonl_file":
        raw["exporters"] = [entry]
    try:
        cfg = parse_config(raw, "command line")
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    handle = None
    if entry["kind"] == "jsonl_file":
        from flowdiff.exporters.stdout import JsonLinesExporter

        handle = open(args.out, "w", encoding="utf-8")
        exporters = [(ExporterConfig(kind="stdout", name="out"), JsonLinesExporter("out", handle))]
    try:
        clock = (lambda: args.start_ts) if args.start_ts is not None else time.time
        result = Service(cfg, StopFlag(), registry=CollectorRegistry(), exporters=exporters,
                         clock=clock).run()
    finally:
        if handle is not None:
            handle.close()
    print(f"wrote {result.records} records ({args.streams} stream(s), seed {args.seed}) "
          f"to {args.out}", file=sys.stderr)
    return 0 if result.clean_shutdown else 1
