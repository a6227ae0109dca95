"""Benchmark metrics on real Stocks windows: each separates a faithful copy from noise."""

from __future__ import annotations

import numpy as np
import pytest

from flowdiff.timeseries.metrics import (MetricError, context_fid, correlational_score,
                                         discriminative_score, frechet_distance, predictive_score)
from flowdiff.timeseries.series import prepare_series

from conftest import shared_file


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stock_sets():
    windows = prepare_series(shared_file("timeseries/stock_data.csv"), 24, 1.0).train_windows
    rng = np.random.default_rng(0)
    order = rng.permutation(len(windows))
    real, same = windows[order[:600]], windows[order[600:1200]]
    noise = rng.random(real.shape).astype(np.float32)
    return real, same, noise


@pytest.mark.slow
def test_discriminative_separates_noise_from_real(stock_sets):
    real, same, noise = stock_sets
    similar = discriminative_score(real, same, seed=0, iterations=300)
    different = discriminative_score(real, noise, seed=0, iterations=300)
    assert 0.0 <= similar < 0.15
    assert different > 0.35
    assert discriminative_score(real, noise, seed=0, iterations=300) == different  # seeded


@pytest.mark.slow
def test_predictive_tstr_is_worse_on_noise(stock_sets):
    real, same, noise = stock_sets
    on_real = predictive_score(real, same, seed=0, iterations=400)
    on_noise = predictive_score(real, noise, seed=0, iterations=400)
    assert on_real < 0.1 and on_noise > 2 * on_real


def test_correlational_score(stock_sets):
    real, same, noise = stock_sets
    assert correlational_score(real, same, seed=1) < 0.05
    # Stock prices are almost perfectly correlated; independent noise is not.
    assert correlational_score(real, noise, seed=1) > 0.5


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    shifted = a + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, shifted) == pytest.approx(5.0, rel=1e-6)


@pytest.mark.slow
def test_context_fid_small_for_same_distribution(stock_sets):
    real, same, noise = stock_sets
    close = context_fid(real, same, seed=0, iterations=30)
    far = context_fid(real, noise, seed=0, iterations=30)
    assert close < far and far > 1.0


def test_metrics_reject_mismatched_inputs():
    with pytest.raises(MetricError, match="differ in"):
        correlational_score(np.zeros((4, 24, 6)), np.zeros((4, 24, 5)), seed=0)
    with pytest.raises(MetricError, match="NaN"):
        discriminative_score(np.full((4, 24, 6), np.nan), np.zeros((4, 24, 6)), seed=0)


def test_scores_are_seeded_without_touching_the_global_rng():
    """Model init and dropout inside the scores draw from a scoped seed, not the caller's
    global torch RNG: same seed, same score; the caller's random state is left as it was."""
    import torch

    rng = np.random.default_rng(1)
    real, fake = (rng.random((40, 8, 3)).astype(np.float32) for _ in range(2))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = predictive_score(real, fake, seed=4, iterations=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert discriminative_score(real, fake, seed=4, iterations=3) == \
        discriminative_score(real, fake, seed=4, iterations=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert predictive_score(real, fake, seed=4, iterations=3) == first
