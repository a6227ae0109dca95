"""Sampling speed of Diffusion-TS on this machine: windows per second by sampler and batch.

Modes: unconditional ancestral DDPM over all T steps, DDIM with S = 50 and S = 10, and
predict mode (context L - H observed, H steps generated) with the guided and the
replacement-only conditional samplers. Batch rows use one generator each (as the daemon's
streams do). Speed does not depend on the weights, so an untrained model of the
reference Stocks size is used unless --checkpoint is given.

  nice -n 10 python3 benchmarks/sampling_speed.py --batches 1 64 512 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def modes(conditional_steps: int) -> list[tuple[str, str, int | None, bool]]:
    """(label, kind, steps, predict?)"""
    return [("DDPM (all T)", "ddpm", None, False),
            ("DDIM S=50", "ddim", 50, False),
            ("DDIM S=10", "ddim", 10, False),
            (f"predict guided S={conditional_steps}", "guided", conditional_steps, True),
            (f"predict replacement S={conditional_steps}", "replacement", conditional_steps, True)]


def windows_per_second(model, kind: str, steps: int | None, predict: bool, batch: int,
                       horizon: int) -> float:
    from flowdiff.model import make_sampler, seeded_generators

    sampler = make_sampler(kind, steps=steps)
    generators = seeded_generators(range(batch))
    cfg = model.cfg
    started = time.perf_counter()
    if predict:
        context = torch.rand(batch, cfg.seq_len - horizon, cfg.feature_size,
                             generator=torch.Generator().manual_seed(0))
        model.predict(context, horizon, sampler, generators)
    else:
        model.sample(batch, sampler, generators)
    return batch / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    from flowdiff.model import DiffusionTS, ModelConfig, load_checkpoint, make_sampler

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="model to time (default: reference Stocks size, T=500)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--horizon", type=int, default=6, help="predicted steps in predict mode")
    parser.add_argument("--conditional-steps", type=int, default=50,
                        help="grid size S of the guided/replacement samplers")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="labels' first word to run, e.g. DDIM predict")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, "cpu")
    else:
        torch.manual_seed(0)
        model = DiffusionTS(ModelConfig()).eval()
    model.sample(2, make_sampler("ddim", steps=5), torch.Generator().manual_seed(0))  # warm-up
    cfg = model.cfg
    print(f"model: L={cfg.seq_len} F={cfg.feature_size} d={cfg.d_model} enc={cfg.n_layer_enc} "
          f"dec={cfg.n_layer_dec} T={cfg.timesteps} ({model.num_parameters()} parameters), "
          f"CPU threads={args.threads}, predict horizon={args.horizon}")
    header = f"{'mode':<32}" + "".join(f"{f'batch {b}':>14}" for b in args.batches)
    print(header + "\n" + "-" * len(header))
    for label, kind, steps, predict in modes(args.conditional_steps):
        if args.only and label.split()[0] not in args.only:
            continue
        cells = []
        for batch in args.batches:
            rate = windows_per_second(model, kind, steps, predict, batch, args.horizon)
            cells.append(f"{rate:>14.2f}")
        print(f"{label:<32}" + "".join(cells), flush=True)
    print("(windows/s; one window = L steps; predict mode yields `horizon` new steps per window)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
