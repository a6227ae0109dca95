"""One real trace against one synthetic trace: every metric, then the headline figures."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from flowdiff.eval import fields, marginals, structure, temporal, validity
from flowdiff.eval.discriminative import (DiscriminativeConfig, DiscriminativeError,
                                          discriminative_score, record_score)

log = logging.getLogger(__name__)

JSD_CATEGORICAL = ("srcport", "dstport", "proto")
JSD_RANK_FREQUENCY = ("srcip", "dstip")
EMD_RAW_FIELDS = ("ts", "td", "pkt", "byt")
EMD_SCALE_FREE_FIELDS = ("td", "pkt", "byt", "iat", "bpp")


@dataclass(frozen=True)
class EvalConfig:
    seed: int = 0
    dependence_k: int = 10          # "within the next k records"
    acf_lags: int = 60              # flows-per-second autocorrelation, lags 1..acf_lags s
    segment_records: int = 100_000  # drift view: consecutive synthetic segments
    discriminative: DiscriminativeConfig = field(default_factory=DiscriminativeConfig)
    validity: validity.ValidityConfig = field(default_factory=validity.ValidityConfig)


@dataclass(frozen=True)
class RealReference:
    """What every comparison needs from the real trace, computed once."""
    table: pd.DataFrame
    flag_filler: int
    dependence_rates: dict

    @classmethod
    def of(cls, real: pd.DataFrame, config: EvalConfig) -> "RealReference":
        return cls(real, validity.non_tcp_flag_filler(real),
                   temporal.dependence_rates(real, config.dependence_k))


def marginal_metrics(real: pd.DataFrame, synthetic: pd.DataFrame) -> dict:
    jsd = {}
    for c in JSD_CATEGORICAL:
        if fields.has(real, c) and fields.has(synthetic, c):
            jsd[c] = marginals.jsd_categorical(real[c].to_numpy(), synthetic[c].to_numpy())
    for c in JSD_RANK_FREQUENCY:
        jsd[c] = marginals.jsd_rank_frequency(real[c].to_numpy(), synthetic[c].to_numpy())
    emd, emd_sf = {}, {}
    for c in EMD_RAW_FIELDS:
        r, s = fields.numeric_field(real, c), fields.numeric_field(synthetic, c)
        if r is not None and s is not None:
            emd[c] = marginals.emd_raw(r, s)
    for c in EMD_SCALE_FREE_FIELDS:
        r, s = fields.numeric_field(real, c), fields.numeric_field(synthetic, c)
        if r is not None and s is not None and len(r) and len(s):
            emd_sf[c] = marginals.emd_scale_free(r, s)
    return {"jsd": jsd, "jsd_mean": float(np.mean(list(jsd.values()))),
            "emd": emd, "emd_scale_free": emd_sf,
            "emd_scale_free_max": max(emd_sf.values()) if emd_sf else None}


def compare(reference: RealReference, synthetic: pd.DataFrame, config: EvalConfig) -> dict:
    """All metrics of one synthetic trace against the real reference."""
    real = reference.table
    out = {"records": int(len(synthetic))}
    out["marginals"] = marginal_metrics(real, synthetic)
    out["structure"] = structure.structure_metrics(real, synthetic)
    out["validity"] = validity.validity_metrics(synthetic, reference.flag_filler,
                                                config.validity)
    out["temporal"] = temporal.temporal_metrics(real, synthetic, config.dependence_k,
                                                config.acf_lags, reference.dependence_rates)
    try:
        out["discriminative"] = discriminative_score(real, synthetic, config.discriminative)
    except DiscriminativeError as exc:
        log.warning("discriminative score skipped: %s", exc)
        out["discriminative"] = {"score": None, "skipped": str(exc)}
    try:
        out["record_discriminative"] = record_score(real, synthetic, config.discriminative)
    except DiscriminativeError as exc:
        log.warning("record score skipped: %s", exc)
        out["record_discriminative"] = {"score": None, "skipped": str(exc)}
    return out


def headline(metrics: dict) -> dict[str, float | None]:
    """The flat figures that go into the summary table (lower is better for all)."""
    m, s, t = metrics["marginals"], metrics["structure"], metrics["temporal"]
    row: dict[str, float | None] = {"jsd_mean": m["jsd_mean"]}
    row.update({f"jsd_{k}": v for k, v in m["jsd"].items()})
    row.update({f"emd_{k}": v for k, v in m["emd"].items()})
    row.update({f"emd_sf_{k}": v for k, v in m["emd_scale_free"].items()})
    row["emd_sf_max"] = m["emd_scale_free_max"]
    row["correlation_diff"] = s["correlation_diff"]
    row["dstport_jsd_tcp"] = s["dstport_jsd_tcp"]
    row["dstport_jsd_udp"] = s["dstport_jsd_udp"]
    row["violation_fraction"] = metrics["validity"]["violation_fraction"]
    row["dependence_error"] = t["dependence_error"]
    row["host_pair_error"] = t["host_pair_error"]
    row["conversation_port_error"] = t["conversation_port_error"]
    row["fps_emd_sf"] = t["fps_emd_scale_free"]
    row["fps_acf_diff"] = t["fps_acf_diff"]
    row["discriminative"] = metrics["discriminative"]["score"]
    # metrics written before the record score have none
    row["record_discriminative"] = metrics.get("record_discriminative", {}).get("score")
    return row
