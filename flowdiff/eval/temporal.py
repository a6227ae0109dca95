"""Time structure: inter-arrivals, flows per second, and temporal dependence.

Temporal dependence is how often a record repeats a key of the records just before it:
``lag1`` = share of records whose key equals the previous record's; ``within_k`` = share
whose key occurs among the previous k records. Keys: dstip, srcip and the five-tuple.
A trace that is shuffled keeps every marginal but loses these repeats; the error is the
mean absolute difference of the real and synthetic rates over keys and both measures.
Host pairs (``host_pair_rates``) measure whether consecutive records share a conversation:
the same two hosts, in the same or the swapped direction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowdiff.eval import fields, marginals

DEPENDENCE_KEYS = {"dstip": ("dstip",), "srcip": ("srcip",), "five_tuple": fields.FIVE_TUPLE}


def key_codes(table: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray | None:
    """(n,) int64 code per record, equal iff all ``columns`` are equal; None if absent."""
    if not fields.has(table, *columns):
        return None
    if len(columns) == 1:
        return table[columns[0]].to_numpy(np.int64)
    codes, _ = pd.MultiIndex.from_frame(table[list(columns)]).factorize()
    return codes.astype(np.int64)


def repeat_rate(codes: np.ndarray, k: int) -> float:
    """Share of records (from the k-th on) whose code occurs among the previous k records."""
    if len(codes) <= k:
        return float("nan")
    seen = np.zeros(len(codes) - k, dtype=bool)
    for lag in range(1, k + 1):
        seen |= codes[k:] == codes[k - lag:len(codes) - lag]
    return float(seen.mean())


def dependence_rates(table: pd.DataFrame, k: int) -> dict[str, dict[str, float]]:
    rates = {}
    for name, columns in DEPENDENCE_KEYS.items():
        codes = key_codes(table, columns)
        if codes is not None:
            rates[name] = {"lag1": repeat_rate(codes, 1), "within_k": repeat_rate(codes, k)}
    return rates


def dependence_error(real_rates: dict, synthetic_rates: dict) -> float | None:
    diffs = [abs(real_rates[key][m] - synthetic_rates[key][m])
             for key in real_rates if key in synthetic_rates for m in ("lag1", "within_k")]
    diffs = [d for d in diffs if np.isfinite(d)]
    return float(np.mean(diffs)) if diffs else None


def host_pair_rates(table: pd.DataFrame) -> dict[str, float] | None:
    """How consecutive records share their hosts (None without srcip and dstip):
    ``dst_given_src``: of the records that repeat the previous srcip, the share that also
    repeat its dstip (real traffic repeats the conversation, not one end of it);
    ``reversed``: share of records that are the previous record's hosts swapped (srcip =
    previous dstip, dstip = previous srcip: the two directions of one conversation);
    ``pair``: share whose unordered host pair equals the previous record's."""
    if not fields.has(table, "srcip", "dstip") or len(table) < 2:
        return None
    src, dst = table["srcip"].to_numpy(np.int64), table["dstip"].to_numpy(np.int64)
    same_src, same_dst = src[1:] == src[:-1], dst[1:] == dst[:-1]
    swapped = (src[1:] == dst[:-1]) & (dst[1:] == src[:-1])
    return {"dst_given_src": float(same_dst[same_src].mean()) if same_src.any() else float("nan"),
            "reversed": float(swapped.mean()),
            "pair": float(((same_src & same_dst) | swapped).mean())}


def host_pair_error(real_rates: dict | None, synthetic_rates: dict | None) -> float | None:
    """Mean absolute difference of the rates of ``host_pair_rates`` (or of
    ``conversation_port_rates``), ignoring those undefined on either side."""
    if not real_rates or not synthetic_rates:
        return None
    diffs = [abs(real_rates[k] - synthetic_rates[k]) for k in real_rates]
    diffs = [d for d in diffs if np.isfinite(d)]
    return float(np.mean(diffs)) if diffs else None


def conversation_port_rates(table: pd.DataFrame) -> dict[str, float] | None:
    """How consecutive records of one conversation share their ports (None without both
    addresses and both ports): ``reversed``: of the records that are the previous record's
    hosts swapped, the share whose ports are swapped too (the other direction of the same
    connection); ``repeated``: of the records repeating the previous (srcip, dstip), the
    share repeating both its ports as well."""
    if not fields.has(table, "srcip", "dstip", "srcport", "dstport") or len(table) < 2:
        return None
    src, dst = table["srcip"].to_numpy(np.int64), table["dstip"].to_numpy(np.int64)
    sp, dp = table["srcport"].to_numpy(np.int64), table["dstport"].to_numpy(np.int64)
    swapped = (src[1:] == dst[:-1]) & (dst[1:] == src[:-1])
    repeated = (src[1:] == src[:-1]) & (dst[1:] == dst[:-1])
    ports_swapped = (sp[1:] == dp[:-1]) & (dp[1:] == sp[:-1])
    ports_repeated = (sp[1:] == sp[:-1]) & (dp[1:] == dp[:-1])
    share = lambda hit, of: float(hit[of].mean()) if of.any() else float("nan")  # noqa: E731
    return {"reversed": share(ports_swapped, swapped), "repeated": share(ports_repeated, repeated)}


def flows_per_second(table: pd.DataFrame, bin_seconds: float = 1.0) -> np.ndarray:
    """(T,) record counts per time bin from the first record to the last."""
    t = fields.relative_time(table)
    bins = np.floor(t / bin_seconds).astype(np.int64)
    return np.bincount(bins - bins.min(), minlength=1)


def autocorrelation(series: np.ndarray, max_lag: int) -> np.ndarray:
    """(max_lag,) autocorrelation at lags 1..max_lag (0 where undefined)."""
    x = np.asarray(series, float) - np.mean(series)
    denom = float((x * x).sum())
    out = np.zeros(max_lag)
    if denom == 0:
        return out
    for lag in range(1, min(max_lag, len(x) - 1) + 1):
        out[lag - 1] = float((x[lag:] * x[:-lag]).sum()) / denom
    return out


def temporal_metrics(real: pd.DataFrame, synthetic: pd.DataFrame, k: int = 10,
                     acf_lags: int = 60, real_rates: dict | None = None) -> dict:
    real_rates = real_rates if real_rates is not None else dependence_rates(real, k)
    syn_rates = dependence_rates(synthetic, k)
    out = {"dependence_error": dependence_error(real_rates, syn_rates),
           "dependence": {"real": real_rates, "synthetic": syn_rates, "k": k},
           "iat_emd": None, "iat_emd_scale_free": None}
    pairs_real, pairs_syn = host_pair_rates(real), host_pair_rates(synthetic)
    out["host_pairs"] = {"real": pairs_real, "synthetic": pairs_syn}
    out["host_pair_error"] = host_pair_error(pairs_real, pairs_syn)
    ports_real, ports_syn = conversation_port_rates(real), conversation_port_rates(synthetic)
    out["conversation_ports"] = {"real": ports_real, "synthetic": ports_syn}
    out["conversation_port_error"] = host_pair_error(ports_real, ports_syn)
    if len(real) > 1 and len(synthetic) > 1:
        r, s = fields.inter_arrival(real), fields.inter_arrival(synthetic)
        out["iat_emd"] = marginals.emd_raw(r, s)
        out["iat_emd_scale_free"] = marginals.emd_scale_free(r, s)
    fps_r, fps_s = flows_per_second(real), flows_per_second(synthetic)
    out["fps_mean"] = {"real": float(fps_r.mean()), "synthetic": float(fps_s.mean())}
    out["fps_emd"] = marginals.emd_raw(fps_r, fps_s)
    out["fps_emd_scale_free"] = marginals.emd_scale_free(fps_r, fps_s)
    out["fps_acf_diff"] = float(np.mean(np.abs(autocorrelation(fps_r, acf_lags)
                                               - autocorrelation(fps_s, acf_lags))))
    return out
