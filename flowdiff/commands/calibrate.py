"""``flowdiff calibrate``: fit a trained artifact's output calibration (docs/model.md).

    flowdiff calibrate --model MODEL_DIR --data TRACE [--sampler conditional --steps 10]
"""

from __future__ import annotations

import argparse

from flowdiff.config import SAMPLER_KINDS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="fit a trained model's output calibration (marginals, reuse rates)",
        description="Roll the model out as the daemon runs it, compare its raw outputs with "
                    "the encoded training records of TRACE (split as the artifact's training "
                    "config split it) and store, in the artifact's codec, what brings each "
                    "field's output distribution onto the training one: quantile maps (also "
                    "of bytes and duration within the packet count), flag-mask and arg-max "
                    "biases, token offsets and draw correlations, ephemeral-port and address "
                    "distributions; first, the starting noise's persistence and correlation "
                    "over the horizon per codec part, so that the model's consecutive records "
                    "resemble each other and its windows vary as real ones do (regimes). "
                    "About 10 minutes for the packaged model on one core. Fit it for the "
                    "sampler you serve with.")
    parser.add_argument("--model", required=True, metavar="DIR", help="artifact directory")
    parser.add_argument("--data", required=True, metavar="TRACE",
                        help="the trace the artifact was trained on")
    parser.add_argument("--sampler", choices=SAMPLER_KINDS,
                        help="sampler to calibrate for (default: serve's)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: serve's)")
    parser.add_argument("--streams", type=int, default=16, help="streams of the rollout (16)")
    parser.add_argument("--turns", type=int, default=30,
                        help="predict turns of the rollout (30: streams x turns x horizon "
                             "output steps)")
    parser.add_argument("--regime-windows", type=int, default=200, metavar="N",
                        help="training windows the starting noise's persistence and "
                             "correlation (regimes) are fitted on (200; 0 = independent noise, "
                             "no regimes)")
    parser.add_argument("--block-length", type=int, default=25, metavar="L",
                        help="records per block of the block targets: each block of a "
                             "stream's horizon gets the make-up of a real training block "
                             "(25; 0 = no block targets; docs/model.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from flowdiff.config import ConfigError, load_config

    try:  # the sampler and streams are checked as serve's (the engine names the option)
        cfg = load_config(None, {"serve.sampler.kind": ("--sampler", args.sampler),
                                 "serve.sampler.steps": ("--steps", args.steps),
                                 "serve.streams": ("--streams", args.streams)})
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.turns < 1:
        print(f"--turns: expected an integer >= 1, got {args.turns}", file=sys.stderr)
        return 2
    if args.regime_windows != 0 and args.regime_windows < 2:
        print(f"--regime-windows: expected 0 or an integer >= 2, got {args.regime_windows}",
              file=sys.stderr)
        return 2
    if args.block_length < 0 or args.block_length == 1:
        print(f"--block-length: expected 0 or an integer >= 2, got {args.block_length}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    from flowdiff.calibrate import calibrate_artifact

    report = calibrate_artifact(args.model, args.data, sampler_kind=cfg.serve.sampler.kind,
                                sampler_steps=cfg.serve.sampler.steps,
                                streams=args.streams, turns=args.turns, seed=args.seed,
                                regime_windows=args.regime_windows,
                                block_length=args.block_length)
    print(f"calibrated {report.artifact}: {report.outputs} model output steps against "
          f"{report.reference} training records, {report.seconds:.0f} s")
    print(f"  block targets: {report.block_targets}")
    for kind, values in report.regimes.items():
        print(f"  starting-noise {kind} (regimes): " + ", ".join(
            f"{part} {value:.3f}" for part, value in values.items()))
    for field, freq in report.argmax_frequencies.items():
        if "training" in freq:
            print(f"  {field}: class frequencies training {freq['training']} model "
                  f"{freq['model']} calibrated {freq['calibrated']}")
        elif all(isinstance(value, dict) for value in freq.values()):  # a port's follow classes
            for label, part in freq.items():
                print(f"  {field} ({label}, {part['training_records']:.1%} of training records): "
                      f"class frequencies training {part['training']} model {part['model']} "
                      f"calibrated {part['calibrated']}")
        else:  # the address vocabularies report shares, not class frequencies
            print(f"  {field}: " + ", ".join(f"{key} {value}" for key, value in freq.items()))
    return 0
