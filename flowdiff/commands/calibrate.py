"""``flowdiff calibrate``: fit a trained artifact's output calibration (docs/model.md).

    flowdiff calibrate --model MODEL_DIR --data TRACE [--sampler conditional --steps 10]
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="fit a trained model's output calibration (marginals, reuse rates)",
        description="Roll the model out as the daemon runs it, compare its raw outputs with "
                    "the encoded training records of TRACE (split as the artifact's training "
                    "config split it) and store, in the artifact's codec, the quantile maps "
                    "and arg-max biases that bring each field's output distribution onto the "
                    "training one. Fit it for the sampler you serve with.")
    parser.add_argument("--model", required=True, metavar="DIR", help="artifact directory")
    parser.add_argument("--data", required=True, metavar="TRACE",
                        help="the trace the artifact was trained on")
    parser.add_argument("--sampler", choices=("conditional", "replacement", "guided", "ddim", "ddpm"),
                        help="sampler to calibrate for (default: serve's)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: serve's)")
    parser.add_argument("--streams", type=int, default=16, help="streams of the rollout (16)")
    parser.add_argument("--turns", type=int, default=30,
                        help="predict turns of the rollout (30: streams x turns x horizon "
                             "output steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from flowdiff.config import SamplerConfig

    bad = [f"--{n}: expected an integer >= 1, got {v}" for n, v in
           (("streams", args.streams), ("turns", args.turns), ("steps", args.steps))
           if v is not None and v < 1]
    if bad:
        print("\n".join(bad), file=sys.stderr)
        return 2
    default = SamplerConfig()
    torch.set_num_threads(1)
    from flowdiff.calibrate import calibrate_artifact

    report = calibrate_artifact(args.model, args.data, sampler_kind=args.sampler or default.kind,
                                sampler_steps=args.steps or default.steps,
                                streams=args.streams, turns=args.turns, seed=args.seed)
    print(f"calibrated {report.artifact}: {report.outputs} model output steps against "
          f"{report.reference} training records, {report.seconds:.0f} s")
    for field, freq in report.argmax_frequencies.items():
        print(f"  {field}: class frequencies training {freq['training']} model "
              f"{freq['model']} calibrated {freq['calibrated']}")
    return 0
