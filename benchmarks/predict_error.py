"""Predict-mode error on held-out time-series windows: context C = L - H steps observed, the
last H predicted; reports MAE of the prediction (data space [0, 1]) and the spread of
several seeded predictions per window (0 = every draw identical).

Example:
  nice -n 10 python3 benchmarks/predict_error.py --checkpoint /tmp/run/checkpoint.pt \
      --csv ../shared/data/timeseries/stock_data.csv --train-fraction 0.9 --horizon 6 \
      --sampler conditional --steps 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--train-fraction", type=float, default=0.9)
    parser.add_argument("--split", choices=("val", "train"), default="val",
                        help="windows after the chronological split (held out) or before it")
    parser.add_argument("--horizon", type=int, required=True)
    parser.add_argument("--sampler", default="conditional",
                        choices=("conditional", "replacement", "guided", "ddim", "ddpm"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--churn", type=float, default=0.0)
    parser.add_argument("--draws", type=int, default=4, help="seeded predictions per window")
    parser.add_argument("--max-windows", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="append the result as one JSON line")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from flowdiff.model import load_checkpoint, make_sampler, seeded_generators
    from flowdiff.timeseries.series import prepare_series

    model, _extra = load_checkpoint(args.checkpoint, "cpu")
    prepared = prepare_series(args.csv, model.cfg.seq_len, args.train_fraction)
    windows = prepared.val_windows if args.split == "val" else prepared.train_windows
    if windows is None:
        raise SystemExit(f"{args.csv}: no held-out windows with train fraction {args.train_fraction}")
    if len(windows) > args.max_windows:                                         # evenly spaced
        windows = windows[np.linspace(0, len(windows) - 1, args.max_windows).round().astype(int)]
    real = torch.from_numpy(windows).float()                                    # (N, L, F)
    n, length, _ = real.shape
    context, truth = real[:, :length - args.horizon], real[:, length - args.horizon:]
    sampler = make_sampler(args.sampler, steps=args.steps, eta=args.eta, churn=args.churn)
    started = time.perf_counter()
    draws = []
    for draw in range(args.draws):
        seeds = [args.seed * 1_000_003 + draw * 100_003 + i for i in range(n)]
        draws.append(model.predict(context, args.horizon, sampler, seeded_generators(seeds)))
    seconds = time.perf_counter() - started
    preds = torch.stack(draws)                                                  # (D, N, H, F)
    mae = float((preds - truth).abs().mean())
    mae_of_mean = float((preds.mean(0) - truth).abs().mean())
    spread = float(preds.std(0).mean()) if args.draws > 1 else 0.0
    naive = float((context[:, -1:] - truth).abs().mean())                      # repeat last step
    result = {"checkpoint": str(args.checkpoint), "parameterization": model.cfg.parameterization,
              "split": args.split, "sampler": args.sampler, "steps": args.steps, "eta": args.eta, "churn": args.churn,
              "windows": n, "horizon": args.horizon, "draws": args.draws, "mae": mae,
              "mae_of_mean": mae_of_mean, "spread": spread, "naive_last_value_mae": naive,
              "seconds": seconds}
    print(f"{args.checkpoint} ({model.cfg.parameterization}), {args.sampler} S={args.steps} "
          f"eta={args.eta} churn={args.churn}: {n} windows x {args.draws} draws, H={args.horizon}: "
          f"MAE {mae:.4f} (of the mean {mae_of_mean:.4f}), spread {spread:.4f}, "
          f"last-value MAE {naive:.4f} ({seconds:.0f} s)")
    if args.json:
        with open(args.json, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
