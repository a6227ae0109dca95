"""Which window features tell a synthetic trace from the real one: the discriminative
score's classifier (flowdiff.eval.discriminative) trained on each feature alone.

    python benchmarks/window_features.py --real heldout.parquet --synthetic synthetic.parquet

Prints, per feature, the held-out accuracy of a classifier that sees only that feature
(0.5 = no help) and the feature's median over the real and synthetic training windows,
strongest first;
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
