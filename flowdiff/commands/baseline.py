"""``flowdiff baseline``: reference generators (iid marginals, CTGAN) to compare with."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "baseline", help="generate records with a reference generator (iid, ctgan)",
        description="Train a reference generator on a trace and write N synthetic records "
                    "(.csv, .csv.gz or .parquet) for 'flowdiff eval'.")
    parser.add_argument("--kind", required=True, choices=("iid", "ctgan"),
                        help="iid: independent per-column sampling with real inter-arrival "
                             "times; ctgan: CTGAN on the record table")
    parser.add_argument("--data", required=True, metavar="TRAIN", help="training trace")
    parser.add_argument("--records", required=True, type=int, metavar="N",
                        help="records to generate")
    parser.add_argument("--out", required=True, metavar="FILE", help="output file")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--epochs", type=int, default=10, help="ctgan: epochs (default 10)")
    parser.add_argument("--batch-size", type=int, default=500,
                        help="ctgan: batch size, a multiple of 10 (default 500)")
    parser.add_argument("--train-records", type=int, default=50_000,
                        help="ctgan: fit on the last N training records (default 50000)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from flowdiff.baselines import BaselineError
    from flowdiff.ingest import write_flows
    from flowdiff.eval import read_table

    log = logging.getLogger("flowdiff.baseline")
    try:
        train = read_table(args.data)
        if args.kind == "iid":
            from flowdiff.baselines.iid import sample_iid
            table = sample_iid(train, args.records, args.seed)
        else:
            from flowdiff.baselines.ctgan import CtganConfig, sample_ctgan
            config = CtganConfig(epochs=args.epochs, batch_size=args.batch_size,
                                 train_records=args.train_records, seed=args.seed)
            table = sample_ctgan(train, args.records, config)
        path = write_flows(table, args.out)
    except (BaselineError, ValueError) as exc:  # EvalInputError, IngestError too
        log.error("%s", exc)
        return 2
    print(f"wrote {len(table)} {args.kind} records to {path}")
    return 0
