"""``flowdiff generate --model DIR --records N --seed S --out FILE``: one-shot generation
through the daemon's own loop (``Service``: pace fast, no state, no metrics server).

Output by file name: ``.jsonl`` (or ``-`` for stdout) streams JSON lines; ``.csv``,
``.csv.gz`` and ``.parquet`` are written at the end with ``flowdiff.ingest.write_flows``
(so ``flowdiff ingest``/``eval`` read them back exactly).
"""

from __future__ import annotations

import argparse

from flowdiff.config import SAMPLER_KINDS

TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate N synthetic records to a file",
                                   description="One-shot generation with the serve loop.")
    parser.add_argument("--model", default="default", metavar="DIR",
                        help="artifact directory (default: the packaged model)")
    parser.add_argument("--records", type=int, required=True, metavar="N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--streams", type=int, default=1, metavar="S",
                        help="parallel streams (records interleave by stream)")
    parser.add_argument("--sampler", choices=SAMPLER_KINDS,
                        help="predict-mode sampler (default: serve's, see docs/daemon.md)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: serve's)")
    parser.add_argument("--eta", type=float, help="DDIM stochasticity in [0, 1] (default 0)")
    parser.add_argument("--churn", type=float, help="EDM churn per step, >= 0 (default 0: off)")
    parser.add_argument("--start-ts", type=float, metavar="EPOCH",
                        help="timestamp the streams start at (default: now); fixing it makes "
                             "the output byte-identical for the same seed")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output: .jsonl (or '-' for stdout), .csv, .csv.gz, .parquet")
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> list[str]:
    errors = []
    out = args.out.lower()
    if out != "-" and not out.endswith((".jsonl", *TABLE_SUFFIXES)):
        errors.append(f"--out {args.out}: expected a name ending in .jsonl, "
                      f"{', '.join(TABLE_SUFFIXES)} (or '-' for stdout)")
    return errors


def _exported(registry, exporter: str) -> int:
    """Records the fan-out delivered to ``exporter`` (summed over streams)."""
    return int(sum(sample.value for metric in registry.collect()
                   if metric.name == "flowdiff_records_exported"
                   for sample in metric.samples
                   if sample.name == "flowdiff_records_exported_total"
                   and sample.labels.get("exporter") == exporter))


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from prometheus_client import CollectorRegistry

    from flowdiff.config import ConfigError, ExporterConfig, load_config
    from flowdiff.daemon.service import Service, StopFlag
    from flowdiff.exporters.table import TableSink
    from flowdiff.exporters.stdout import JsonLinesExporter

    errors = _check(args)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 2
    options = {  # checked by the config engine, which names the option in its errors
        "serve.model": ("--model", args.model), "serve.streams": ("--streams", args.streams),
        "serve.seed": ("--seed", args.seed), "serve.max_records": ("--records", args.records),
        "serve.sampler.kind": ("--sampler", args.sampler),
        "serve.sampler.steps": ("--steps", args.steps), "serve.sampler.eta": ("--eta", args.eta),
        "serve.sampler.churn": ("--churn", args.churn),
        "serve.pace": ("generate", "fast"), "metrics.enabled": ("generate", False)}
    try:
        cfg = load_config(None, options)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    table_output = args.out.lower().endswith(TABLE_SUFFIXES)
    handle = None
    if table_output:
        exporter = TableSink("out")
    elif args.out == "-":
        exporter = JsonLinesExporter("out", sys.stdout)
    else:
        handle = open(args.out, "w", encoding="utf-8")
        exporter = JsonLinesExporter("out", handle)
    clock = (lambda: args.start_ts) if args.start_ts is not None else time.time
    registry = CollectorRegistry()
    try:
        result = Service(cfg, StopFlag(), registry=registry, clock=clock,
                         exporters=[(ExporterConfig(kind="generate", name="out"), exporter)]
                         ).run()
    except ConfigError as exc:  # e.g. more sampler steps than the model has (before any record)
        print(str(exc), file=sys.stderr)
        return 2
    finally:
        if handle is not None:
            handle.close()
    exported = _exported(registry, "out")
    if getattr(exporter, "reader_gone", False):  # `generate --out - | head`: as Unix tools do
        return 0
    if table_output and exported:
        exporter.write(args.out)
    if exported != result.records or not result.clean_shutdown:
        print(f"generate failed: {result.records} records generated, {exported} written "
              f"to {args.out} (see the errors above)", file=sys.stderr)
        return 1
    print(f"wrote {exported} records ({args.streams} stream(s), seed {args.seed}) "
          f"to {args.out}", file=sys.stderr)
    return 0
