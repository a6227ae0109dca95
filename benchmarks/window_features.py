"""Which window features tell a synthetic trace from the real one: the discriminative
score's classifier (flowdiff.eval.discriminative) trained on each feature alone.

    python benchmarks/window_features.py --real heldout.parquet --synthetic synthetic.parquet

Prints, per feature, the held-out accuracy of a classifier that sees only that feature
(0.5 = no help) and the feature's median over real and synthetic windows, strongest first;
then the accuracy with all features (what ``flowdiff eval`` reports as 0.5 + score).
Same windows, split and classifier as the score.
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
    args = p.parse_args(argv)

    from sklearn.ensemble import HistGradientBoostingClassifier

    from flowdiff.eval.discriminative import (DiscriminativeConfig, _common_columns, _pick,
                                              window_feature_names, window_features)
    from flowdiff.eval.inputs import read_table

    config = DiscriminativeConfig()
    real, synthetic = read_table(args.real), read_table(args.synthetic)
    columns = _common_columns(real, synthetic)
    x_real = window_features(real[columns], config.window)
    x_syn = window_features(synthetic[columns], config.window)
    n = min(len(x_real), len(x_syn), config.max_windows)
    x_real, x_syn = _pick(x_real, n, config.seed), _pick(x_syn, n, config.seed)
    n_train = int(round(n * (1 - config.test_fraction)))
    y_train = np.r_[np.zeros(n_train), np.ones(n_train)]
    y_test = np.r_[np.zeros(n - n_train), np.ones(n - n_train)]

    def accuracy(features) -> float:
        clf = HistGradientBoostingClassifier(max_iter=100, random_state=config.seed)
        clf.fit(np.vstack([x_real[:n_train, features], x_syn[:n_train, features]]), y_train)
        test = np.vstack([x_real[n_train:, features], x_syn[n_train:, features]])
        return float((clf.predict(test) == y_test).mean())

    names = window_feature_names(columns)
    rows = sorted(((accuracy([i]), name, np.median(x_real[:, i]), np.median(x_syn[:, i]))
                   for i, name in enumerate(names)), reverse=True)
    print(f"{n} windows of {config.window} records per side; accuracy with one feature:")
    print(f"{'feature':<24} {'accuracy':>8} {'real median':>12} {'synthetic median':>17}")
    for acc, name, r, s in rows[:args.top]:
        print(f"{name:<24} {acc:8.3f} {r:12.4g} {s:17.4g}")
    print(f"all {len(names)} features: accuracy {accuracy(list(range(len(names)))):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
