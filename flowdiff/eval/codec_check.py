"""Codec quality check: how gracefully decoding degrades when the encoded values are off.

A model's output is never exactly an encoded record. The check encodes real records,
adds Gaussian noise of a few sizes to every encoded value (the residual error of an
imperfect model; values are then clipped to [0, 1] as the daemon clips model output),
decodes, and scores the decoded records against the real ones with the metrics of
``flowdiff eval``: port JSD and the shares of the real top-20 ports, scale-free EMD of the
numbers, and how often a record repeats the previous record's addresses. A good codec
keeps every figure near its noise-0 value: no hub ports, tails kept, repeats kept.

Gaussian noise is the error of a model that is nearly right. A model that cannot decide
between two records and outputs their average fails differently, so the check also
decodes *blends*: each encoded record averaged half-and-half with another record drawn at
random, and reports ``third_<port field>``, the share of decoded ports that are neither
of the two (a codec that decodes an average into an unrelated value invents traffic).

    rows = codec_check(codec, heldout_table, noise_levels=(0.0, 0.02, 0.1), seed=0)
    print(to_markdown(rows))
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowdiff.eval import marginals, temporal
from flowdiff.eval.fields import numeric_field

NOISE_LEVELS = (0.0, 0.02, 0.1)      # none / small / large, in encoded units ([0, 1])
PORT_FIELDS = ("srcport", "dstport")
NUMERIC = ("td", "pkt", "byt", "iat")
TOP_PORTS = 20


def top_share_error(real: np.ndarray, decoded: np.ndarray, top: int = TOP_PORTS) -> float:
    """Sum over the real trace's ``top`` most common values of |decoded share - real share|."""
    real_shares = pd.Series(real).value_counts(normalize=True).head(top)
    decoded_shares = pd.Series(decoded).value_counts(normalize=True)
    aligned = decoded_shares.reindex(real_shares.index, fill_value=0.0)
    return float((aligned - real_shares).abs().sum())


def decoded_metrics(real: pd.DataFrame, decoded: pd.DataFrame,
                    partner: pd.DataFrame | None = None) -> dict:
    """The check's figures for one decoded table against the real one; with ``partner``
    (the records each real record was blended with) also the ``third_`` shares."""
    out: dict[str, float] = {}
    for name in PORT_FIELDS:
        if name in real.columns and name in decoded.columns:
            r, d = real[name].to_numpy(), decoded[name].to_numpy()
            out[f"jsd_{name}"] = marginals.jsd_categorical(r, d)
            out[f"top{TOP_PORTS}_error_{name}"] = top_share_error(r, d)
            out[f"max_share_{name}"] = float(pd.Series(d).value_counts(normalize=True).iloc[0])
            out[f"distinct_{name}"] = int(pd.Series(d).nunique())
            if partner is not None:
                p = partner[name].to_numpy()
                out[f"third_{name}"] = float(((d != r) & (d != p)).mean())
    for name in NUMERIC:
        r, d = numeric_field(real, name), numeric_field(decoded, name)
        if r is not None and d is not None and len(r) and len(d):
            out[f"emd_sf_{name}"] = marginals.emd_scale_free(r, d)
            out[f"max_{name}"] = float(np.max(d))
    for key in ("srcip", "dstip"):
        codes = temporal.key_codes(decoded, (key,))
        out[f"repeat_{key}"] = temporal.repeat_rate(codes, 1)
    return out


def codec_check(codec, table: pd.DataFrame, noise_levels=NOISE_LEVELS,
                seed: int = 0, blend: bool = True) -> list[dict]:
    """One row per noise level: {"noise": sigma, **decoded_metrics}, after a first row
    "real" with the real table's own maxima and repeat rates (JSD/EMD there are 0), and
    with ``blend`` a last row "blend" (half-and-half averages of two records)."""
    encoded = codec.encode(table)                                          # (n, F)
    start_ts = float(table["ts"].iloc[0])
    rows = [{"noise": "real", **decoded_metrics(table, table)}]
    for sigma in noise_levels:
        noise_rng = np.random.default_rng([seed, int(round(sigma * 1e6))])
        noisy = encoded + noise_rng.normal(0.0, sigma, encoded.shape).astype(np.float32)
        noisy = np.clip(noisy, 0.0, 1.0)
        decoded = codec.decode(noisy, start_ts, rng=np.random.default_rng(seed)).table
        rows.append({"noise": sigma, **decoded_metrics(table, decoded)})
    if blend:
        partner = np.random.default_rng([seed, 1]).permutation(len(table))   # (n,)
        blended = 0.5 * encoded + 0.5 * encoded[partner]
        decoded = codec.decode(blended, start_ts, rng=np.random.default_rng(seed)).table
        rows.append({"noise": "blend", **decoded_metrics(
            table, decoded, table.iloc[partner].reset_index(drop=True))})
    return rows


def to_markdown(rows: list[dict], label: str | None = None) -> str:
    """Metrics as table rows, noise levels as columns."""
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "noise"))
    head = ["metric" if label is None else f"{label}: metric"]
    head += [_column_name(r["noise"]) for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        cells = [_cell(r.get(key)) for r in rows]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _column_name(noise) -> str:
    if noise == "real":
        return "real"
    return "blend 50/50" if noise == "blend" else f"noise {noise:g}"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, (int, np.integer)) or float(value).is_integer() and abs(value) > 10:
        return f"{int(value):,}"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
