"""``flowdiff ingest INPUT --out OUT``: read a trace in any supported format, write the
canonical flow table (CSV, CSV.gz or Parquet) sorted by time, print a summary."""

from __future__ import annotations

import argparse
import sys

# the same as flowdiff.ingest.FORMATS, spelled out so that register() imports nothing heavy
FORMAT_CHOICES = ("auto", "ugr16", "netshare", "generic", "canonical", "jsonl", "pcap")
OUT_SUFFIXES = (".csv", ".csv.gz", ".parquet")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest", help="trace file (UGR'16, NetShare, generic CSV/Parquet, pcap) -> "
                       "canonical flow table",
        description="Read flow records (or packets, grouped into flows) and write the "
                    "canonical flow table sorted by start time. Bad rows stop the run with "
                    "an error naming file, line and field, unless --skip-bad is given.")
    parser.add_argument("input", metavar="INPUT",
                        help="trace file: .csv, .csv.gz, .parquet, .pcap or .pcapng")
    parser.add_argument("--format", choices=FORMAT_CHOICES, default="auto",
                        help="input format (default: auto-detect from magic bytes, "
                             "extension and header)")
    parser.add_argument("--mapping", metavar="MAP.yaml",
                        help="column mapping for --format generic (implies it with auto)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="drop bad rows and count them in the summary instead of "
                             "stopping at the first one")
    parser.add_argument("--chunk-rows", type=int, default=200_000, metavar="N",
                        help="rows parsed per chunk (memory vs. speed; default 200000)")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="output file: .csv, .csv.gz or .parquet")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowdiff.ingest import IngestError, read_flows, write_flows

    if not args.out.lower().endswith(OUT_SUFFIXES):
        print(f"flowdiff ingest: error: --out {args.out}: expected a name ending in "
              f"{', '.join(OUT_SUFFIXES)}", file=sys.stderr)
        return 2
    if args.chunk_rows < 1:
        print(f"flowdiff ingest: error: --chunk-rows must be >= 1, got {args.chunk_rows}",
              file=sys.stderr)
        return 2
    problem = output_problem(args.out)  # before a long read, not after it
    if problem:
        print(f"flowdiff ingest: error: --out {args.out}: {problem}", file=sys.stderr)
        return 2
    with _ProgressBar(args.input) as progress:
        try:
            table, summary = read_flows(args.input, format=args.format, mapping=args.mapping,
                                        skip_bad=args.skip_bad, chunk_rows=args.chunk_rows,
                                        progress=progress)
        except IngestError as exc:
            print(f"flowdiff ingest: error: {exc}", file=sys.stderr)
            return 2
    try:
        write_flows(table, args.out)
    except OSError as exc:  # disk full, permissions changed meanwhile, ...
        print(f"flowdiff ingest: error: --out {args.out}: cannot write: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    print(f"written:      {args.out} ({len(table)} records)")
    return 0


def output_problem(out: str) -> str | None:
    """Why ``out`` cannot be written (its directory missing or not writable, or it is a
    directory), or None."""
    import os
    from pathlib import Path

    path = Path(out)
    parent = path.parent
    if path.is_dir():
        return "is a directory"
    if not parent.is_dir():
        return f"directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent} is not writable"
    return None


class _ProgressBar:
    """A tqdm bar over the input's bytes when stderr is a terminal; else no bar."""

    def __init__(self, path: str):
        self.path = path
        self.bar = None

    def __enter__(self):
        if not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        self.bar = tqdm(desc="ingest", unit="B", unit_scale=True, leave=False)
        return self.update

    def update(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
