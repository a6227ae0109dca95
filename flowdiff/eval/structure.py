"""Joint structure: pairwise correlations, bytes per packet, dstport given the protocol."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowdiff.eval import fields, marginals
from flowdiff.schema import TCP, UDP

# Heavy-tailed fields enter the correlation on a log1p scale so a few elephants do not
# dominate it; ports and protocol numbers as they are.
CORRELATION_FIELDS = ("td", "pkt", "byt", "srcport", "dstport", "proto", "tos")
LOG_SCALED = frozenset({"td", "pkt", "byt"})


def correlation_matrix(table: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """(F, F) Pearson correlations; a constant column correlates 0 with everything."""
    data = np.column_stack([
        np.log1p(np.maximum(table[c].to_numpy(float), 0)) if c in LOG_SCALED
        else table[c].to_numpy(float) for c in columns])  # (n, F)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(data, rowvar=False)  # (F, F)
    return np.nan_to_num(np.atleast_2d(corr), nan=0.0)


def correlation_difference(real: pd.DataFrame, synthetic: pd.DataFrame) -> float | None:
    """Frobenius norm of the difference of the two correlation matrices."""
    columns = [c for c in CORRELATION_FIELDS if c in real.columns and c in synthetic.columns]
    if len(columns) < 2:
        return None
    diff = correlation_matrix(real, columns) - correlation_matrix(synthetic, columns)
    return float(np.sqrt((diff ** 2).sum()))


def conditional_port_jsd(real: pd.DataFrame, synthetic: pd.DataFrame, proto: int) -> float | None:
    """JSD of dstport among records of one protocol (ln 2 if only one side has any)."""
    if not (fields.has(real, "dstport") and fields.has(synthetic, "dstport")):
        return None
    r = real.loc[real["proto"].to_numpy() == proto, "dstport"].to_numpy()
    s = synthetic.loc[synthetic["proto"].to_numpy() == proto, "dstport"].to_numpy()
    if len(r) == 0 and len(s) == 0:
        return None
    if len(r) == 0 or len(s) == 0:
        return marginals.JSD_MAX
    return marginals.jsd_categorical(r, s)


def structure_metrics(real: pd.DataFrame, synthetic: pd.DataFrame) -> dict:
    out = {"correlation_diff": correlation_difference(real, synthetic),
           "dstport_jsd_tcp": conditional_port_jsd(real, synthetic, TCP),
           "dstport_jsd_udp": conditional_port_jsd(real, synthetic, UDP),
           "bpp_emd": None, "bpp_emd_scale_free": None}
    if fields.has(real, "byt", "pkt") and fields.has(synthetic, "byt", "pkt"):
        r, s = fields.bytes_per_packet(real), fields.bytes_per_packet(synthetic)
        out["bpp_emd"] = marginals.emd_raw(r, s)
        out["bpp_emd_scale_free"] = marginals.emd_scale_free(r, s)
    return out
