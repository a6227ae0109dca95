"""PNG plots of a report: real in black, one colour per synthetic input."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flowdiff.eval import fields, marginals, temporal  # noqa: E402
from flowdiff.eval.drift import DRIFT_METRICS  # noqa: E402

CDF_FIELDS = ("td", "pkt", "byt", "iat", "bpp")
BAR_FIELDS = ("srcport", "dstport", "proto")
TOP_K = 10
CDF_POINTS = 2000


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=80)
    plt.close(fig)
    return name


def _cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and their CDF, thinned to at most CDF_POINTS points."""
    x = np.sort(values)
    idx = np.unique(np.linspace(0, len(x) - 1, min(len(x), CDF_POINTS)).astype(int))
    return x[idx], (idx + 1) / len(x)


def cdf_overlay(real, synthetics, field: str, out: Path) -> str | None:
    r = fields.numeric_field(real, field)
    if r is None or len(r) == 0:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, table in {"real": real, **synthetics}.items():
        v = fields.numeric_field(table, field)
        if v is not None and len(v):
            x, y = _cdf(v)
            ax.plot(np.maximum(x, 1e-6), y, label=name, color="black" if name == "real" else None)
    ax.set_xscale("log")
    ax.set_xlabel(f"{field} (log scale; values <= 0 drawn at 1e-6)")
    ax.set_ylabel("CDF")
    ax.legend()
    return _save(fig, out, f"cdf_{field}.png")


def top_k_bars(real, synthetics, field: str, out: Path) -> str | None:
    if field not in real.columns:
        return None
    counts = real[field].value_counts(normalize=True)
    top = counts.index[:TOP_K]
    tables = {"real": real, **{n: t for n, t in synthetics.items() if field in t.columns}}
    width = 0.8 / len(tables)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, table) in enumerate(tables.items()):
        share = table[field].value_counts(normalize=True).reindex(top).fillna(0).to_numpy()
        ax.bar(np.arange(len(top)) + i * width, share, width, label=name)
    ax.set_xticks(np.arange(len(top)) + 0.4 - width / 2, [str(v) for v in top], rotation=45)
    ax.set_ylabel("share of records")
    ax.set_title(f"top-{len(top)} {field} values of the real trace")
    ax.legend()
    return _save(fig, out, f"top_{field}.png")


def ip_rank_frequency(real, synthetics, out: Path) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, field in zip(axes, ("srcip", "dstip")):
        for name, table in {"real": real, **synthetics}.items():
            counts = marginals.rank_frequency(table[field].to_numpy())
            ax.loglog(np.arange(1, len(counts) + 1), counts / counts.sum(), label=name,
                      color="black" if name == "real" else None)
        ax.set_xlabel(f"{field} rank")
        ax.set_ylabel("share of records")
        ax.legend()
    return _save(fig, out, "ip_rank_frequency.png")


def flows_per_second_series(real, synthetics, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, table in {"real": real, **synthetics}.items():
        ax.plot(temporal.flows_per_second(table), label=name, linewidth=0.6,
                color="black" if name == "real" else None)
    ax.set_xlabel("seconds since the trace's first record")
    ax.set_ylabel("flows per second")
    ax.legend()
    return _save(fig, out, "flows_per_second.png")


def drift_per_segment(result: dict, out: Path) -> str:
    fig, axes = plt.subplots(1, len(DRIFT_METRICS), figsize=(4 * len(DRIFT_METRICS), 3.5))
    for ax, metric in zip(axes, DRIFT_METRICS):
        for name, entry in result["synthetics"].items():
            values = [np.nan if s[metric] is None else s[metric]
                      for s in entry["drift"]["segments"]]
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=name)
        ax.set_title(metric)
        ax.set_xlabel("segment")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].legend()
    return _save(fig, out, "drift.png")


def write_all(result: dict, real: pd.DataFrame, synthetics: dict[str, pd.DataFrame],
              out: Path) -> list[str]:
    """Write every plot into ``out``; return the file names written."""
    names = [cdf_overlay(real, synthetics, f, out) for f in CDF_FIELDS]
    names += [top_k_bars(real, synthetics, f, out) for f in BAR_FIELDS]
    names += [ip_rank_frequency(real, synthetics, out),
              flows_per_second_series(real, synthetics, out),
              drift_per_segment(result, out)]
    return [n for n in names if n is not None]
