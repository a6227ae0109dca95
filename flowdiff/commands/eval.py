"""``flowdiff eval``: fidelity of one or more synthetic traces against a real one."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="compare synthetic traces with a real one (NetShare metrics and more)",
        description="Compute NetShare's fidelity metrics plus structure, validity, temporal, "
                    "discriminative and drift metrics of each synthetic trace against the "
                    "real one; write metrics.json, summary.md/.html and PNG plots.")
    parser.add_argument("--real", required=True, metavar="REAL",
                        help="real (held-out) trace, any supported input format")
    parser.add_argument("--synthetic", required=True, action="append", metavar="[NAME=]FILE",
                        help="synthetic trace; repeat for side-by-side columns (the column "
                             "is NAME, or the file name)")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="report directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the classifier split")
    parser.add_argument("--segment-records", type=int, default=100_000,
                        help="drift view: records per synthetic segment (default 100000)")
    parser.add_argument("--window", type=int, default=50,
                        help="records per window for the discriminative score (default 50)")
    parser.add_argument("--k", type=int, default=10,
                        help="temporal dependence: look-back in records (default 10)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.set_defaults(func=run)


def parse_synthetic(spec: str) -> tuple[str, str]:
    """``NAME=FILE`` or ``FILE`` -> (name, path)."""
    from pathlib import Path

    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        if not name or not path:
            raise ValueError(f"--synthetic {spec!r}: expected NAME=FILE or FILE")
        return name, path
    return Path(spec).name, spec


def run(args: argparse.Namespace) -> int:
    import logging

    from flowdiff.eval import (DiscriminativeConfig, EvalConfig, EvalInputError, evaluate,
                               read_table, write_report)
    from flowdiff.eval.report import summary_table, to_markdown

    log = logging.getLogger("flowdiff.eval")
    for option, value in (("--segment-records", args.segment_records),
                          ("--window", args.window), ("--k", args.k)):
        if value < 1:
            log.error("%s must be >= 1, got %d", option, value)
            return 2
    try:
        specs = [parse_synthetic(s) for s in args.synthetic]
        names = [n for n, _ in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"--synthetic names must differ; repeated: {duplicates} "
                             f"(use NAME=FILE)")
        real = read_table(args.real)
        synthetics = {name: read_table(path) for name, path in specs}
        config = EvalConfig(seed=args.seed, dependence_k=args.k,
                            segment_records=args.segment_records,
                            discriminative=DiscriminativeConfig(window=args.window,
                                                                seed=args.seed))
        result = evaluate(real, synthetics, config)
    except (EvalInputError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    files = write_report(result, real, synthetics, args.out, plots=not args.no_plots)
    print(to_markdown(summary_table(result)))
    print(f"\nreport: {files['markdown']} {files['html']} {files['json']}")
    return 0
