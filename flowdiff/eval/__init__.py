"""Fidelity evaluation: a real trace against one or more synthetic traces.

    from flowdiff.eval import evaluate, write_report, read_table, EvalConfig
    real = read_table("held_out.csv")
    result = evaluate(real, {"diffusion": read_table("gen.csv"), "iid": read_table("iid.csv")})
    write_report(result, real, synthetics, "report/")

Metric definitions follow NetShare (see docs/eval.md); every synthetic input becomes one
column of the summary so several generators compare side by side.
"""

from __future__ import annotations

import dataclasses
import logging

import pandas as pd

from flowdiff.eval.compare import EvalConfig, RealReference, compare, headline
from flowdiff.eval.discriminative import DiscriminativeConfig
from flowdiff.eval.drift import drift
from flowdiff.eval.inputs import EvalInputError, check_table, read_table
from flowdiff.eval.validity import ValidityConfig, validity_metrics

log = logging.getLogger(__name__)

# Optional fields that, when the real trace has them, every synthetic trace must have too.
COMPARED_FIELDS = ("td", "pkt", "byt", "srcport", "dstport", "flags")

__all__ = ["evaluate", "write_report", "read_table", "EvalConfig", "DiscriminativeConfig",
           "ValidityConfig", "EvalInputError"]


def check_comparable(real: pd.DataFrame, synthetic: pd.DataFrame, name: str) -> None:
    missing = [c for c in COMPARED_FIELDS if c in real.columns and c not in synthetic.columns]
    if missing:
        raise EvalInputError(f"synthetic trace {name!r} lacks field(s) {missing} that the real "
                             f"trace has; both traces must carry the same fields")


def evaluate(real: pd.DataFrame, synthetics: dict[str, pd.DataFrame],
             config: EvalConfig | None = None) -> dict:
    """All metrics of each synthetic trace against ``real``, plus the drift view.

    Returns a JSON-ready dict: ``config``, ``real`` (size and the real trace's own validity
    as a reference) and ``synthetics[name]`` with ``metrics``, ``headline`` and ``drift``.
    """
    config = config or EvalConfig()
    check_table(real, "real trace")
    if not synthetics:
        raise EvalInputError("no synthetic trace given: pass at least one to compare")
    for name, table in synthetics.items():
        check_table(table, f"synthetic trace {name!r}")
        check_comparable(real, table, name)
    reference = RealReference.of(real, config)
    result = {"config": dataclasses.asdict(config),
              "real": {"records": int(len(real)),
                       "validity": validity_metrics(real, reference.flag_filler,
                                                    config.validity)},
              "synthetics": {}}
    for name, table in synthetics.items():
        log.info("evaluating %r (%d records)", name, len(table))
        metrics = compare(reference, table, config)
        result["synthetics"][name] = {"metrics": metrics, "headline": headline(metrics),
                                      "drift": drift(reference, table, config)}
    return result


def write_report(result: dict, real: pd.DataFrame, synthetics: dict[str, pd.DataFrame],
                 out_dir, plots: bool = True) -> dict[str, str]:
    """Write metrics.json, summary.md, summary.html and (optionally) PNG plots."""
    from flowdiff.eval import report
    return report.write(result, real, synthetics, out_dir, plots)
