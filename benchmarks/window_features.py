"""Which window features tell a synthetic trace from the real one: the discriminative
score's classifier (flowdiff.eval.discriminative) trained on each feature alone.

    python benchmarks/window_features.py --real heldout.parquet --synthetic synthetic.parquet

Prints, per feature, the held-out accuracy of a classifier that sees only that feature
(0.5 = no help) and the feature's median over the real and synthetic training windows,
strongest first;
then the accuracy with all features (what ``flowdiff eval`` reports as 0.5 + score).
Same windows, split and classifier as the score.

``--spread`` adds, per feature over all windows of each trace, the standard deviation across
windows and the correlation of consecutive windows (lag 1) and of windows two apart
(lag 2): how much, and how persistently, window composition varies (regimes), with the
median ratio synthetic / real over the features.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True)
    p.add_argument("--synthetic", required=True)
    p.add_argument("--top", type=int, default=15, help="features to print")
    p.add_argument("--spread", action="store_true",
                   help="also print each feature's spread and persistence across windows")
    args = p.parse_args(argv)

    from flowdiff.eval.discriminative import (DiscriminativeConfig, classifier_accuracy,
                                              window_split)
    from flowdiff.eval.inputs import read_table

    config = DiscriminativeConfig()
    split = window_split(read_table(args.real), read_table(args.synthetic), config)
    n_train = len(split["y_train"]) // 2
    real_windows = split["x_train"][:n_train]
    synthetic_windows = split["x_train"][n_train:]
    rows = sorted(((classifier_accuracy(split, config, [i]), name,
                    np.median(real_windows[:, i]), np.median(synthetic_windows[:, i]))
                   for i, name in enumerate(split["names"])), reverse=True)
    print(f"{split['windows']} windows of {config.window} records per side; accuracy with "
          f"one feature:")
    print(f"{'feature':<24} {'accuracy':>8} {'real median':>12} {'synthetic median':>17}")
    for acc, name, r, s in rows[:args.top]:
        print(f"{name:<24} {acc:8.3f} {r:12.4g} {s:17.4g}")
    print(f"all {len(split['names'])} features: accuracy {classifier_accuracy(split, config):.3f}")
    if args.spread:
        print_spread(read_table(args.real), read_table(args.synthetic), config.window)
    return 0


def _lag_correlation(values: np.ndarray, lag: int) -> float:
    a, b = values[lag:], values[:-lag]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def print_spread(real, synthetic, window: int) -> None:
    from flowdiff.eval.discriminative import labelled_window_features

    columns = [c for c in real.columns if c in synthetic.columns]
    names, x_real = labelled_window_features(real[columns], window)
    _names, x_syn = labelled_window_features(synthetic[columns], window)
    print(f"\nspread across windows ({len(x_real)} real, {len(x_syn)} synthetic windows):")
    print(f"{'feature':<24} {'sd real':>9} {'sd synth':>9} {'lag1 real':>10} {'lag1 synth':>11} "
          f"{'lag2 real':>10} {'lag2 synth':>11}")
    ratios = []
    for i, name in enumerate(names):
        r, s = x_real[:, i], x_syn[:, i]
        if r.std() > 0:
            ratios.append(s.std() / r.std())
        print(f"{name:<24} {r.std():9.4g} {s.std():9.4g} {_lag_correlation(r, 1):10.3f} "
              f"{_lag_correlation(s, 1):11.3f} {_lag_correlation(r, 2):10.3f} "
              f"{_lag_correlation(s, 2):11.3f}")
    lag1 = [(_lag_correlation(x_real[:, i], 1), _lag_correlation(x_syn[:, i], 1))
            for i in range(len(names))]
    lag1 = np.array([pair for pair in lag1 if not np.isnan(pair).any()])
    print(f"median sd ratio synthetic / real {np.median(ratios):.2f}; median lag-1 correlation "
          f"real {np.median(lag1[:, 0]):.3f}, synthetic {np.median(lag1[:, 1]):.3f}")


if __name__ == "__main__":
    sys.exit(main())
