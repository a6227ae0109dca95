"""``flowdiff train``: trace -> self-contained model artifact.

    flowdiff train --data TRACE --config configs/train-ugr16-cpu.yaml --out MODEL_DIR
    flowdiff train --data TRACE --config configs/finetune-low-noise.yaml --init-from MODEL_DIR --out MODEL_DIR
    flowdiff train --kind timeseries --data stock_data.csv --config CFG --out DIR
    torchrun --nproc_per_node 2 -m flowdiff train --data TRACE --config CFG --out MODEL_DIR
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model on a trace (or a generic time-series CSV)",
        description="Ingest, fit the codec on the training part, train Diffusion-TS on "
                    "windows of the encoded records, write one artifact directory.")
    parser.add_argument("--data", metavar="TRACE",
                        help="trace file (default: data.path of the config)")
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML training config")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="artifact directory")
    parser.add_argument("--kind", choices=("flows", "timeseries"), default="flows",
                        help="flows: flow records (default); timeseries: numeric CSV "
                             "(Diffusion-TS benchmarks)")
    parser.add_argument("--work", metavar="DIR",
                        help="training work directory with the resumable checkpoint "
                             "(default: MODEL_DIR.work)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the work directory's checkpoint")
    parser.add_argument("--init-from", metavar="MODEL_DIR",
                        help="continue training this artifact: keep its data split, window, "
                             "codec and model, start from its weights, and take only the train "
                             "section of --config (steps, learning rate, low-noise share). The "
                             "output is uncalibrated: run flowdiff calibrate on it after. "
                             "--out may be the same directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowdiff.model import distributed

    if args.kind == "timeseries" and args.init_from:
        import sys

        print("--init-from: continues a flow artifact; not with --kind timeseries", file=sys.stderr)
        return 2
    try:
        if args.kind == "timeseries":
            return _train_timeseries(args)
        return _train_flows(args)
    finally:
        distributed.finish()  # leave torchrun's process group, if joined


def _train_flows(args: argparse.Namespace) -> int:
    import sys

    from flowdiff.artifact import ArtifactError
    from flowdiff.config import ConfigError, load_config
    from flowdiff.model import distributed

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    data = args.data or cfg.data.path
    if not data:
        print(f"no training data: pass --data TRACE or set data.path in {args.config}",
              file=sys.stderr)
        return 2
    from flowdiff.training import train_flows

    try:
        report = train_flows(cfg, data, args.out, work_dir=args.work, resume=args.resume,
                             init_from=args.init_from)
    except ArtifactError as exc:
        print(f"--init-from: {exc}", file=sys.stderr)
        return 2
    if not distributed.current().is_main:
        return 0
    val = "n/a" if report.val_loss is None else f"{report.val_loss:.4f}"
    print(f"artifact {report.artifact}: {report.train_records} training records "
          f"({report.windows} windows), {report.steps} steps, loss {report.final_loss:.4f}, "
          f"val {val}, {report.seconds:.0f} s")
    return 0


def _train_timeseries(args: argparse.Namespace) -> int:
    """Time-series run configs (configs/dts-*.yaml) belong to flowdiff.timeseries.run_config."""
    import sys

    from flowdiff.model import ConfigError
    from flowdiff.timeseries.run_config import load_run_config
    from flowdiff.timeseries.series import train_on_csv

    try:
        run_cfg = load_run_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    data = args.data or str(run_cfg.csv)
    result = train_on_csv(data, run_cfg.model, run_cfg.train, args.out,
                          train_fraction=run_cfg.train_fraction, resume=args.resume)
    print(f"time-series model written to {args.out}: {result.steps} steps, "
          f"loss {result.final_loss:.4f}, checkpoint {result.checkpoint}")
    return 0
