"""``flowdiff serve [--config FILE]``: run the generation daemon until SIGTERM/SIGINT.
Without --config it uses the packaged defaults: the shipped model, streaming to stdout."""

from __future__ import annotations

import argparse

# Exit status for a problem a restart cannot fix (config, model, device, address, state
# directory): systemd's RestartPreventExitStatus=2 then stops retrying.
EXIT_CONFIG = 2


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="stream synthetic flows until stopped",
        description="Run the daemon: N parallel streams, predict mode in a loop, records to "
                    "the configured exporters. Metrics/health on metrics.listen.")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML config (default: packaged model, 16 streams, stdout)")
    parser.add_argument("--model", metavar="DIR", help="override serve.model")
    parser.add_argument("--streams", type=int, metavar="N", help="override serve.streams")
    parser.add_argument("--seed", type=int, help="override serve.seed")
    parser.add_argument("--pace", choices=("realtime", "fast"), help="override serve.pace")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="override metrics.listen (/metrics, /healthz, /readyz)")
    parser.add_argument("--max-records", type=int, metavar="N",
                        help="stop after N records (default: run until stopped)")
    parser.add_argument("--shard", metavar="I/N",
                        help="override serve.shard: this daemon is shard I of N (I/N or I-of-N, "
                             "the systemd instance name); it owns streams I*S..I*S+S-1")
    parser.set_defaults(func=run)


def apply_overrides(cfg, args: argparse.Namespace) -> None:
    """Command-line overrides of serve.* (checked like the file's values)."""
    from flowdiff.config import ConfigError

    s, errors = cfg.serve, []
    for name, low in (("streams", 1), ("seed", 0), ("max_records", 1)):
        value = getattr(args, name, None)
        if value is not None and value < low:
            errors.append(f"--{name.replace('_', '-')}: expected an integer >= {low}, got {value}")
        elif value is not None:
            setattr(s, name, value)
    if getattr(args, "model", None):
        s.model = args.model
    if getattr(args, "pace", None):
        s.pace = args.pace
    listen = getattr(args, "listen", None)
    if listen:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            errors.append(f"--listen: expected HOST:PORT with port 0..65535, got {listen!r}")
        else:
            cfg.metrics.listen = listen
    shard = getattr(args, "shard", None)
    if shard:
        from flowdiff.daemon.shard import parse_shard

        try:
            s.shard = parse_shard(shard)
        except ValueError as exc:
            errors.append(f"--shard: {exc}")
    if errors:
        raise ConfigError("command line", errors)


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys

    from flowdiff.artifact import ArtifactError
    from flowdiff.config import ConfigError, default_config, load_config
    from flowdiff.daemon.preflight import raise_if_unfit
    from flowdiff.daemon.service import Service, StopFlag
    from flowdiff.daemon.state import StateError
    from flowdiff.exporters.base import ExporterError

    log = logging.getLogger("flowdiff.serve")
    try:
        cfg = load_config(args.config) if args.config else default_config()
        apply_overrides(cfg, args)
        raise_if_unfit(cfg, load_model=False)  # Service loads (and checks) the model next
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    stop = StopFlag()
    signal.signal(signal.SIGTERM, stop.set)
    signal.signal(signal.SIGINT, stop.set)
    try:
        result = Service(cfg, stop).run()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except ArtifactError as exc:
        print(f"serve.model: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StateError as exc:  # corrupt or foreign state file, state_dir in use
        text = str(exc)
        print(text if text.startswith("serve.state_dir") else f"serve.state_dir: {text}",
              file=sys.stderr)
        return EXIT_CONFIG
    except (ExporterError, ImportError, OSError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    return 0 if result.clean_shutdown else 1
