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
FLAG_BITS = (("fin", 1), ("syn", 2), ("rst", 4), ("psh", 8), ("ack", 16), ("urg", 32))


class DiscriminativeError(ValueError):
    """Too few records to cut enough windows."""


@dataclass(frozen=True)
class DiscriminativeConfig:
    window: int = 50
    max_windows: int = 2000  # per side; more adds little and costs time
    max_records: int = 50_000  # per side, for the record score
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


def labelled_window_features(table: pd.DataFrame, window: int
                              ) -> tuple[list[str], np.ndarray]:
    """(F feature names, (N, F) feature matrix), one row per window of consecutive records."""
    cols: dict[str, np.ndarray] = {}
    ts = table["ts"].to_numpy(float)
    numbers = {"iat": np.log1p(np.maximum(np.diff(ts, prepend=ts[0]), 0))}
    numbers.update({c: np.log1p(np.maximum(table[c].to_numpy(float), 0))
                    for c in ("td", "pkt", "byt") if c in table.columns})
    for name, values in numbers.items():
        w = _windows(values, window)  # (N, W)
        cols.update({f"{name}_mean": w.mean(axis=1), f"{name}_std": w.std(axis=1),
                     f"{name}_median": np.median(w, axis=1)})
    proto = _windows(table["proto"].to_numpy(np.int64), window)  # (N, W)
    cols.update({f"share_{name}": (proto == p).mean(axis=1)
                 for name, p in (("tcp", TCP), ("udp", UDP), ("icmp", ICMP))})
    for c in ("srcip", "dstip", "srcport", "dstport"):
        if c in table.columns:
            w = _windows(table[c].to_numpy(np.int64), window)
            cols[f"{c}_distinct_share"] = _distinct_share(w)
            cols[f"{c}_repeat"] = (w[:, 1:] == w[:, :-1]).mean(axis=1)
            if c.endswith("port"):
                cols[f"{c}_below_1024"] = (w < 1024).mean(axis=1)
    if "flags" in table.columns:
        flags = _windows(table["flags"].to_numpy(np.int64), window)
        cols.update({f"flag_{name}": ((flags & bit) > 0).mean(axis=1)
                     for name, bit in FLAG_BITS[:5]})   # URG: too rare to share per window
    return list(cols), np.column_stack(list(cols.values())).astype(np.float64)  # (N, F)


def window_features(table: pd.DataFrame, window: int) -> np.ndarray:
    """(N, F) feature matrix, one row per window of consecutive records."""
    return labelled_window_features(table, window)[1]


def labelled_record_features(table: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """(F feature names, (n, F) feature matrix), one row per record, nothing from its
    neighbours: log duration, packets, bytes and bytes per packet, protocol, ToS, each
    TCP flag, and per port whether it is below 1024 and its service (the port itself below
    1024, else its 1,024-port range)."""
    cols: dict[str, np.ndarray] = {}
    for c in ("td", "pkt", "byt"):
        if c in table.columns:
            cols[c] = np.log1p(np.maximum(table[c].to_numpy(float), 0))
    if "pkt" in cols and "byt" in cols:
        cols["bytes_per_packet"] = cols["byt"] - cols["pkt"]
    for c in ("proto", "tos"):
        if c in table.columns:
            cols[c] = table[c].to_numpy(float)
    if "flags" in table.columns:
        flags = table["flags"].to_numpy(np.int64)
        cols.update({f"flag_{name}": ((flags & bit) > 0).astype(float) for name, bit in FLAG_BITS})
    for c in ("srcport", "dstport"):
        if c in table.columns:
            port = table[c].to_numpy(np.int64)
            cols[f"{c}_below_1024"] = (port < 1024).astype(float)
            cols[f"{c}_service"] = np.where(port < 1024, port, 1024 + port // 1024).astype(float)
    if not cols:
        raise DiscriminativeError("the record score needs at least one of td, pkt, byt, proto, "
                                  "tos, flags, srcport, dstport")
    return list(cols), np.column_stack(list(cols.values()))               # (n, F)


def record_score(real: pd.DataFrame, synthetic: pd.DataFrame,
                 config: DiscriminativeConfig = DiscriminativeConfig()) -> dict:
    """Can a classifier tell a single synthetic record from a real one? The window score's
    classifier on ``labelled_record_features`` (at most ``max_records`` per side, picked
    at random but kept in time order), trained on the earlier 70 % of each side's records
    and scored on the later 30 %. ``|accuracy - 0.5|``: 0 = every record could be real.
    The window score sees a window's make-up, not which numbers go with which flags,
    protocol and ports in one flow; this does (sampling each column independently scores
    near 0.5)."""
    columns = _common_columns(real, synthetic)
    names, x_real = labelled_record_features(real[columns])
    x_syn = labelled_record_features(synthetic[columns])[1]
    n = min(len(x_real), len(x_syn), config.max_records)
    if n < MIN_WINDOWS:
        raise DiscriminativeError(f"the record score needs at least {MIN_WINDOWS} records per "
                                  f"trace; got {len(x_real)} real and {len(x_syn)} synthetic")
    split = _time_split(x_real, x_syn, n, config, "records")
    accuracy = classifier_accuracy(split, config)
    return {"score": abs(accuracy - 0.5), "accuracy": accuracy,
            "classifier": "HistGradientBoostingClassifier", "features": names,
            "records_per_side": int(n), "test_records": int(len(split["y_test"]))}


def _common_columns(real: pd.DataFrame, synthetic: pd.DataFrame) -> list[str]:
    return [c for c in real.columns if c in synthetic.columns]


def _pick(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n rows of x chosen at random (seeded), kept in their original (time) order."""
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), n, replace=False))]


def window_split(real: pd.DataFrame, synthetic: pd.DataFrame,
                 config: DiscriminativeConfig = DiscriminativeConfig()) -> dict:
    """The score's data: both traces' windows (equal numbers, at most ``max_windows``,
    picked at random but kept in time order), the earlier ``1 - test_fraction`` of each
    side to train on, the rest to test on. Keys: names, x_train, y_train, x_test, y_test
    (y = 1: synthetic), windows (per side)."""
    columns = _common_columns(real, synthetic)
    names, x_real = labelled_window_features(real[columns], config.window)
    x_syn = window_features(synthetic[columns], config.window)
    n = min(len(x_real), len(x_syn), config.max_windows)
    if n < MIN_WINDOWS:
        raise DiscriminativeError(
            f"discriminative score needs at least {MIN_WINDOWS} windows of {config.window} "
            f"records per trace; got {len(x_real)} real and {len(x_syn)} synthetic")
    return {"names": names, "windows": n, **_time_split(x_real, x_syn, n, config, "windows")}


def _time_split(x_real: np.ndarray, x_syn: np.ndarray, n: int, config: DiscriminativeConfig,
                unit: str) -> dict:
    """n rows of each side (``_pick``), the earlier ``1 - test_fraction`` to train on, the
    rest to test on: x_train, y_train, x_test, y_test (y = 1: synthetic)."""
    x_real, x_syn = _pick(x_real, n, config.seed), _pick(x_syn, n, config.seed)
    n_train = int(round(n * (1 - config.test_fraction)))
    if n_train < 1 or n_train >= n:
        raise DiscriminativeError(f"test_fraction {config.test_fraction} leaves no {unit} "
                                  f"to train or to test on ({n} per side)")
    return {"x_train": np.vstack([x_real[:n_train], x_syn[:n_train]]),  # (2 n_train, F)
            "x_test": np.vstack([x_real[n_train:], x_syn[n_train:]]),   # (2 (n - n_train), F)
            "y_train": np.r_[np.zeros(n_train), np.ones(n_train)],
            "y_test": np.r_[np.zeros(n - n_train), np.ones(n - n_train)]}


def classifier_accuracy(split: dict, config: DiscriminativeConfig = DiscriminativeConfig(),
                        features: list[int] | None = None) -> float:
    """Held-out accuracy of the score's classifier on ``window_split``'s data (only the
    ``features`` columns, if given)."""
    try:  # the eval extra (pip install 'flowdiff[eval]'): the base install serves without it
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ModuleNotFoundError as exc:
        raise DiscriminativeError("the discriminative score needs scikit-learn: pip install "
                                  "'flowdiff[eval]'") from exc
    chosen = slice(None) if features is None else features
    classifier = HistGradientBoostingClassifier(max_iter=100, random_state=config.seed)
    # A few thousand windows: one thread is faster than OpenMP's start-up and spinning,
    # and leaves the other cores to the daemon.
    with threadpool_limits(limits=config.threads, user_api="openmp"):
        classifier.fit(split["x_train"][:, chosen], split["y_train"])
        predicted = classifier.predict(split["x_test"][:, chosen])
    return float((predicted == split["y_test"]).mean())


def discriminative_score(real: pd.DataFrame, synthetic: pd.DataFrame,
                         config: DiscriminativeConfig = DiscriminativeConfig()) -> dict:
    split = window_split(real, synthetic, config)
    accuracy = classifier_accuracy(split, config)
    return {"score": abs(accuracy - 0.5), "accuracy": accuracy,
            "classifier": "HistGradientBoostingClassifier", "window": config.window,
            "windows_per_side": int(split["windows"]), "test_windows": int(len(split["y_test"]))}
