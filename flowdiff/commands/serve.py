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


def overrides(args: argparse.Namespace) -> dict:
    """The command-line values as config overrides (dotted key -> (option, value)); the
    config engine checks them with the file's values and names the option in its errors.
    ``--shard I/N`` (or ``I-of-N``) sets serve.shard.index and serve.shard.count."""
    from flowdiff.config import ConfigError

    given = {"serve.model": ("--model", getattr(args, "model", None)),
             "serve.streams": ("--streams", getattr(args, "streams", None)),
             "serve.seed": ("--seed", getattr(args, "seed", None)),
             "serve.pace": ("--pace", getattr(args, "pace", None)),
             "serve.max_records": ("--max-records", getattr(args, "max_records", None)),
             "metrics.listen": ("--listen", getattr(args, "listen", None))}
    shard = getattr(args, "shard", None)
    if shard is not None:
        from flowdiff.daemon.shard import parse_shard

        try:
            parsed = parse_shard(shard)
        except ValueError as exc:
            raise ConfigError("command line", [f"--shard: {exc}"]) from exc
        given["serve.shard.index"] = ("--shard", parsed.index)
        given["serve.shard.count"] = ("--shard", parsed.count)
    return given


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import sys

    from flowdiff.artifact import ArtifactError
    from flowdiff.config import ConfigError
    from flowdiff.daemon.preflight import check_serve_config
    from flowdiff.daemon.service import Service, StopFlag
    from flowdiff.daemon.state import StateError
    from flowdiff.exporters.base import ExporterError

    log = logging.getLogger("flowdiff.serve")
    try:  # Service loads (and checks) the model next
        cfg, errors = check_serve_config(args.config, overrides(args), load_model=False)
        if errors:
            raise ConfigError(cfg.source, errors)
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
        print(f"serve.state_dir: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (ExporterError, ImportError, OSError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    return 0 if result.clean_shutdown else 1
