"""Denoising-error curve of a trained model on held-out windows (issue 11 diagnostic).

For each t: noise held-out clean windows to t, run the denoiser, and compare the L1 error of
x0_hat with that of the noisy input mapped back (x_t / sqrt(abar_t)), per feature group.
Prints a table and writes OUT/denoise_curve.json and OUT/denoise_curve.png.

Windows (pick one):
  --csv CSV --train-fraction F   time series: the windows after the chronological training
  [--split val|train]            split (default), or before it (scaler fitted on the
                                 training rows, as in training)
  --windows FILE.npy             (N, L, F) windows in [0, 1]
Feature groups: one per CSV column, or --artifact DIR (the codec's feature_slices), or one
per feature.

Example:
  nice -n 10 python3 benchmarks/denoise_curve.py --checkpoint /tmp/run/checkpoint.pt \
      --csv ../shared/data/timeseries/stock_data.csv --train-fraction 0.9 --out /tmp/run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def csv_windows(csv: Path, seq_len: int, train_fraction: float, split: str
                ) -> tuple[np.ndarray, dict[str, slice]]:
    """Windows of one side of the chronological split (scaler fitted on the training rows, as
    in training), and one group per column."""
    from flowdiff.timeseries.series import prepare_series

    prepared = prepare_series(csv, seq_len, train_fraction)
    windows = prepared.val_windows if split == "val" else prepared.train_windows
    if windows is None:
        raise SystemExit(f"{csv}: no held-out windows with train fraction {train_fraction}")
    groups = {name: slice(i, i + 1) for i, name in enumerate(prepared.scaler.columns)}
    return windows.astype(np.float32), groups


def artifact_validation_windows(artifact_dir: Path, trace: Path) -> np.ndarray:
    """(N, L, F) windows of the artifact's validation records, stride L / 4."""
    from flowdiff.artifact import load_artifact
    from flowdiff.calibrate import artifact_split
    from flowdiff.windows import WindowDataset

    artifact = load_artifact(artifact_dir)
    train_part, val_part = artifact_split(artifact, trace)
    encoded = artifact.codec.encode(val_part, prev_ts=float(train_part["ts"].iloc[-1]))
    length = artifact.context + artifact.horizon
    return WindowDataset(encoded, length, max(1, length // 4)).windows().astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="model checkpoint (default ARTIFACT/model.pt)")
    parser.add_argument("--artifact", type=Path, help="flowdiff artifact: groups = codec feature_slices")
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--train-fraction", type=float, default=0.9)
    parser.add_argument("--split", choices=("val", "train"), default="val",
                        help="CSV windows after the split (held out) or before it (seen in "
                             "training); a chronological hold-out can lie outside the "
                             "training range (Stocks: prices above the training max clip to 1)")
    parser.add_argument("--windows", type=Path, help=".npy windows (N, L, F) in [0, 1]")
    parser.add_argument("--trace", type=Path,
                        help="with --artifact: the trace it was trained on; the windows are its "
                             "validation records (split as the artifact's config split them)")
    parser.add_argument("--t", type=int, nargs="+",
                        help="timesteps (default: fractions 0, 0.002, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.9 of T)")
    parser.add_argument("--max-windows", type=int, default=1024, help="evenly spaced subset")
    parser.add_argument("--skip-only", action="store_true",
                        help="score the preconditioning's skip alone, with the network's output "
                             "F set to 0: c_skip x~ for edm, the marginal prior's posterior mean "
                             "for edm-prior (what the model gets without its network)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from flowdiff.model import load_checkpoint
    from flowdiff.model.denoise_curve import (default_timesteps, denoising_curve,
                                              plot_denoise_curve, spread_subset)

    checkpoint = args.checkpoint or (args.artifact / "model.pt" if args.artifact else None)
    if checkpoint is None or sum(x is not None for x in (args.csv, args.windows, args.trace)) != 1:
        parser.error("give --checkpoint or --artifact, and exactly one of --csv, --windows, --trace")
    if args.trace is not None and args.artifact is None:
        parser.error("--trace needs --artifact")
    model, extra = load_checkpoint(checkpoint, "cpu")
    groups = None
    if args.trace is not None:
        windows = artifact_validation_windows(args.artifact, args.trace)
    elif args.csv is not None:
        windows, groups = csv_windows(args.csv, model.cfg.seq_len, args.train_fraction, args.split)
    else:
        windows = np.load(args.windows).astype(np.float32)
    if args.artifact is not None:
        from flowdiff.codec import FlowCodec

        groups = dict(FlowCodec.load(args.artifact / "codec").feature_slices)
    windows = spread_subset(windows, args.max_windows)
    if args.skip_only:
        if model.cfg.parameterization == "x0":
            parser.error("--skip-only: an x0 model has no skip (its x0_hat is the network's output)")
        model.network.forward = lambda x, t: torch.zeros_like(x)   # F = 0: the skip alone
    total = model.cfg.timesteps
    timesteps = args.t or default_timesteps(total)
    curve = denoising_curve(model, windows, timesteps, groups, seed=args.seed)
    print(f"{checkpoint}: parameterization {model.cfg.parameterization}"
          f"{' (skip only, F = 0)' if args.skip_only else ''}, trained steps {extra.get('train_state', {}).get('step')}")
    print(curve.table())
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"checkpoint": str(checkpoint), "parameterization": model.cfg.parameterization,
              "split": args.split if args.csv else None, **curve.to_dict()}
    (args.out / "denoise_curve.json").write_text(json.dumps(result, indent=2))
    plot_denoise_curve(curve, args.out / "denoise_curve.png",
                       title=f"{checkpoint.name} ({model.cfg.parameterization})")
    print(f"wrote {args.out / 'denoise_curve.json'} and {args.out / 'denoise_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
