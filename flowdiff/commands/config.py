"""``flowdiff config check FILE...``: validate config files, listing every error.

The kind of file is recognised by its top-level keys and checked by its owner's loader:
daemon/training configs (``serve``, ``exporters``, ``data``/``window``/``codec``/``model``/
``train``) by ``flowdiff.config.load_config``; time-series run configs (``data.csv``) by
``flowdiff.timeseries.run_config``; codec-only files (``fields``, ``word2vec``) by
``flowdiff.codec.CodecConfig``; ingest column mappings (``columns``) by
``flowdiff.ingest.load_mapping``.

A file with a ``serve``, ``metrics`` or ``exporters`` section is then checked the way
``serve`` starts (``flowdiff.daemon.preflight``): listen address and port, device, model,
state directory and its state file, exporter addresses and directories. OK means serve
will not fail before READY for a reason the check could see.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="validate configuration files",
                                   description="Validate YAML configs: unknown keys, wrong "
                                               "types and values out of range, all listed.")
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate one or more config files")
    check.add_argument("files", nargs="+", metavar="FILE", help="YAML config file(s)")
    parser.set_defaults(func=run)


SERVE_SECTIONS = {"serve", "metrics", "exporters"}  # a file with any of them configures serve


def detect_kind(raw) -> str:
    """'flowdiff' | 'timeseries' | 'codec' | 'mapping' from a parsed YAML document."""
    if not isinstance(raw, dict):
        return "flowdiff"
    if isinstance(raw.get("data"), dict) and "csv" in raw["data"]:
        return "timeseries"
    from flowdiff.codec.config import SECTION_KEYS

    if raw and set(raw) <= set(SECTION_KEYS):
        return "codec"
    if "columns" in raw:
        return "mapping"
    return "flowdiff"


def check_file(path: str) -> tuple[str, list[str]]:
    """(summary line, errors) for one file; errors empty when valid."""
    from flowdiff.config import ConfigError, load_config, read_yaml

    try:
        raw, lines = read_yaml(path)
        kind = detect_kind(raw)
        if kind == "timeseries":
            from flowdiff.timeseries.run_config import load_run_config

            run = load_run_config(path)
            return f"time-series run config (csv {run.csv}, window {run.model.seq_len})", []
        if kind == "codec":
            from flowdiff.codec import CodecConfig

            CodecConfig.from_dict(raw, source=path, lines=lines)
            return "codec config", []
        if kind == "mapping":
            from flowdiff.ingest import load_mapping

            load_mapping(path)
            return "ingest column mapping", []
        if isinstance(raw, dict) and raw.keys() & SERVE_SECTIONS:
            from flowdiff.daemon.preflight import check_serve_config

            # the file's problems and what serve checks before READY, in one list
            cfg, errors = check_serve_config(path, load_model=True)
            if errors:
                return "", errors
        else:
            cfg = load_config(path)
    except ConfigError as exc:
        return "", exc.errors
    except ValueError as exc:  # the ingest mapping's own errors (flowdiff.ingest.errors)
        return "", [line.strip() for line in str(exc).splitlines() if line.strip()]
    kinds = ", ".join(f"{e.name}({e.kind})" for e in cfg.exporters)
    return (f"serve: {cfg.serve.streams} streams, sampler {cfg.serve.sampler.kind}/"
            f"{cfg.serve.sampler.steps}, pace {cfg.serve.pace}; exporters: {kinds}"), []


def run(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        summary, errors = check_file(path)
        if errors:
            failed += 1
            print(f"{path}: INVALID ({len(errors)} error(s))")
            for line in errors:
                print(f"  {line}")
        else:
            print(f"{path}: OK ({summary})")
    return 1 if failed else 0
