"""Per-field marginal distances with NetShare's definitions.

* JSD is the squared Jensen-Shannon distance, ``scipy.spatial.distance.jensenshannon(p, q)
  ** 2`` with SciPy's default natural log: 0 for identical distributions, ln 2 ~ 0.693 for
  disjoint supports.
* EMD is the 1-D Wasserstein distance in the field's raw units.
* The scale-free EMD maps both samples through the real sample's (mid-point) empirical CDF
  and takes W1 of the results: 0 for identical samples, 0.5 for disjoint ones.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

JSD_MAX = float(np.log(2.0))


def jsd_from_counts(p: np.ndarray, q: np.ndarray) -> float:
    """Squared JS distance of two aligned count vectors (normalised here)."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if p.sum() == 0 or q.sum() == 0:
        return JSD_MAX if p.sum() != q.sum() else 0.0
    return float(jensenshannon(p / p.sum(), q / q.sum()) ** 2)


def jsd_categorical(real: np.ndarray, synthetic: np.ndarray) -> float:
    """JSD over the values themselves (ports, protocol numbers)."""
    real = np.asarray(real)
    synthetic = np.asarray(synthetic)
    values, codes = np.unique(np.concatenate([real, synthetic]), return_inverse=True)
    p = np.bincount(codes[:len(real)], minlength=len(values))
    q = np.bincount(codes[len(real):], minlength=len(values))
    return jsd_from_counts(p, q)


def rank_frequency(values: np.ndarray) -> np.ndarray:
    """Counts of each distinct value, largest first."""
    _, counts = np.unique(np.asarray(values), return_counts=True)
    return np.sort(counts)[::-1]


def jsd_rank_frequency(real: np.ndarray, synthetic: np.ndarray) -> float:
    """JSD between rank-frequency distributions (NetShare's metric for IP addresses)."""
    p, q = rank_frequency(real), rank_frequency(synthetic)
    size = max(len(p), len(q))
    return jsd_from_counts(np.pad(p, (0, size - len(p))), np.pad(q, (0, size - len(q))))


def emd_raw(real: np.ndarray, synthetic: np.ndarray) -> float:
    """W1 in raw units."""
    return float(wasserstein_distance(np.asarray(real, float), np.asarray(synthetic, float)))


def real_cdf(real: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mid-point empirical CDF of ``real`` evaluated at ``values`` (ties count half)."""
    ordered = np.sort(np.asarray(real, float))
    values = np.asarray(values, float)
    below = np.searchsorted(ordered, values, side="left")
    at_or_below = np.searchsorted(ordered, values, side="right")
    return (below + at_or_below) / (2.0 * len(ordered))


def emd_scale_free(real: np.ndarray, synthetic: np.ndarray) -> float:
    """W1 after mapping both samples through the real empirical CDF (0 .. 0.5)."""
    return float(wasserstein_distance(real_cdf(real, real), real_cdf(real, synthetic)))
