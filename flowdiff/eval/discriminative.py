"""Discriminative score: can a classifier tell windows of real records from synthetic ones?

Both traces are cut into non-overlapping windows of ``window`` consecutive records; each
window becomes a vector of summary features (below). A scikit-learn
``HistGradientBoostingClassifier`` is trained on the earlier 70 % of each side's windows
(equal numbers from each side, at most ``max_windows``, picked at random but kept in time
order) and scored on the later 30 %, which it never saw. The score is
``|accuracy - 0.5|``: 0 = indistinguishable, 0.5 = perfectly separable. Splitting by time
rather than at random keeps a window and its near-copies on one side of the split, so two
identical traces score 0 instead of being "told apart" by memorised labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from flowdiff.schema import ICMP, TCP, UDP

MIN_WINDOWS = 10


class DiscriminativeError(ValueError):
    """Too few records to cut enough windows."""


@dataclass(frozen=True)
class DiscriminativeConfig:
    window: int = 50
    max_windows: int = 2000  # per side; more adds little and costs time
    test_fraction: float = 0.3
    seed: int = 0
    threads: int = 1


def _windows(values: np.ndarray, window: int) -> np.ndarray:
    """(n,) -> (N, window), dropping the incomplete tail."""
    n = (len(values) // window) * window
    return values[:n].reshape(-1, window)


def _distinct_share(w: np.ndarray) -> np.ndarray:
    """(N, W) -> (N,) number of distinct values per row / W."""
    s = np.sort(w, axis=1)
    return (1 + (s[:, 1:] != s[:, :-1]).sum(axis=1)) / w.shape[1]


def window_features(table: pd.DataFrame, window: int) -> np.ndarray:
    """(N, F) feature matrix, one row per window of consecutive records."""
    cols: list[np.ndarray] = []
    ts = table["ts"].to_numpy(float)
    iat = np.log1p(np.maximum(np.diff(ts, prepend=ts[0]), 0))
    for values in [iat] + [np.log1p(np.maximum(table[c].to_numpy(float), 0))
                           for c in ("td", "pkt", "byt") if c in table.columns]:
        w = _windows(values, window)  # (N, W)
        cols += [w.mean(axis=1), w.std(axis=1), np.median(w, axis=1)]
    proto = _windows(table["proto"].to_numpy(np.int64), window)  # (N, W)
    cols += [(proto == p).mean(axis=1) for p in (TCP, UDP, ICMP)]
    for c in ("srcip", "dstip", "srcport", "dstport"):
        if c in table.columns:
            w = _windows(table[c].to_numpy(np.int64), window)
            cols += [_distinct_share(w), (w[:, 1:] == w[:, :-1]).mean(axis=1)]
            if c.endswith("port"):
                cols.append((w < 1024).mean(axis=1))
    if "flags" in table.columns:
        flags = _windows(table["flags"].to_numpy(np.int64), window)
        cols += [((flags & bit) > 0).mean(axis=1) for bit in (1, 2, 4, 8, 16)]
    return np.column_stack(cols).astype(np.float64)  # (N, F)


def window_feature_names(columns) -> list[str]:
    """The names of ``window_features``' columns, in order, for a table with ``columns``."""
    names = []
    for values in ["iat"] + [c for c in ("td", "pkt", "byt") if c in columns]:
        names += [f"{values}_mean", f"{values}_std", f"{values}_median"]
    names += ["share_tcp", "share_udp", "share_icmp"]
    for c in ("srcip", "dstip", "srcport", "dstport"):
        if c in columns:
            names += [f"{c}_distinct_share", f"{c}_repeat"]
            if c.endswith("port"):
                names.append(f"{c}_below_1024")
    if "flags" in columns:
        names += [f"flag_{name}" for name in ("fin", "syn", "rst", "psh", "ack")]
    return names


def _common_columns(real: pd.DataFrame, synthetic: pd.DataFrame) -> list[str]:
    return [c for c in real.columns if c in synthetic.columns]


def _pick(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n rows of x chosen at random (seeded), kept in their original (time) order."""
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), n, replace=False))]


def discriminative_score(real: pd.DataFrame, synthetic: pd.DataFrame,
                         config: DiscriminativeConfig = DiscriminativeConfig()) -> dict:
    columns = _common_columns(real, synthetic)
    x_real = window_features(real[columns], config.window)
    x_syn = window_features(synthetic[columns], config.window)
    n = min(len(x_real), len(x_syn), config.max_windows)
    if n < MIN_WINDOWS:
        raise DiscriminativeError(
            f"discriminative score needs at least {MIN_WINDOWS} windows of {config.window} "
            f"records per trace; got {len(x_real)} real and {len(x_syn)} synthetic")
    x_real, x_syn = _pick(x_real, n, config.seed), _pick(x_syn, n, config.seed)
    n_train = int(round(n * (1 - config.test_fraction)))
    if n_train < 1 or n_train >= n:
        raise DiscriminativeError(f"test_fraction {config.test_fraction} leaves no windows "
                                  f"to train or to test on ({n} per side)")
    x_train = np.vstack([x_real[:n_train], x_syn[:n_train]])  # (2 n_train, F)
    x_test = np.vstack([x_real[n_train:], x_syn[n_train:]])  # (2 (n - n_train), F)
    y_train = np.r_[np.zeros(n_train), np.ones(n_train)]
    y_test = np.r_[np.zeros(n - n_train), np.ones(n - n_train)]
    try:  # the eval extra (pip install 'flowdiff[eval]'): the base install serves without it
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ModuleNotFoundError as exc:
        raise DiscriminativeError("the discriminative score needs scikit-learn: pip install "
                                  "'flowdiff[eval]'") from exc
    classifier = HistGradientBoostingClassifier(max_iter=100, random_state=config.seed)
    # A few thousand windows: one thread is faster than OpenMP's start-up and spinning,
    # and leaves the other cores to the daemon.
    with threadpool_limits(limits=config.threads, user_api="openmp"):
        classifier.fit(x_train, y_train)
        accuracy = float((classifier.predict(x_test) == y_test).mean())
    return {"score": abs(accuracy - 0.5), "accuracy": accuracy,
            "classifier": "HistGradientBoostingClassifier", "window": config.window,
            "windows_per_side": int(n), "test_windows": int(len(y_test))}
