"""Reproduce the Diffusion-TS benchmark numbers (window 24) on Stocks and ETTh, on CPU.

Phases (run one long job at a time; each phase can be re-run on its own):
  train  train with the reference config (configs/dts-<dataset>.yaml) into --out;
         --resume continues an interrupted run from out/checkpoint.pt
  eval   load out/checkpoint.pt, sample as many windows as there are training windows
         (EMA weights), then compute Context-FID, correlational, discriminative and
         predictive scores over --repeats repeats (mean +- 95 % CI) beside the paper's.
  all    train then eval

Example:
  nice -n 10 python3 benchmarks/reproduce_dts.py --dataset stocks --phase all --out /tmp/dts-stocks
Figures are printed and written to out/results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

PAPER = {  # Diffusion-TS, ICLR 2024, Table 1 (window 24): mean, +-
    "stocks": {"context_fid": (0.147, 0.025), "correlational": (0.004, 0.001),
               "discriminative": (0.067, 0.015), "predictive": (0.036, 0.000)},
    "etth": {"context_fid": (0.116, 0.010), "correlational": (0.049, 0.008),
             "discriminative": (0.061, 0.009), "predictive": (0.119, 0.002)},
}
TARGETS = {"stocks": {"discriminative": 0.10, "predictive": 0.040},
           "etth": {"discriminative": 0.10, "predictive": 0.125}}

log = logging.getLogger("reproduce_dts")


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and 95 % confidence half-width (Student t) of repeated scores."""
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    if len(arr) < 2:
        return float(arr.mean()), float("nan")
    half = stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / np.sqrt(len(arr))
    return float(arr.mean()), float(half)


def sample_windows(model, n: int, kind: str, steps: int | None, batch: int, seed: int,
                   eta: float = 0.0, churn: float = 0.0) -> tuple[np.ndarray, float]:
    """n windows (n, L, F) in [0, 1] from the EMA model; returns (windows, windows per second)."""
    from flowdiff.model import make_sampler

    sampler = make_sampler(kind, steps=steps, eta=eta, churn=churn)
    parts = []
    started = time.perf_counter()
    for i, start in enumerate(range(0, n, batch)):
        size = min(batch, n - start)
        generator = torch.Generator().manual_seed(seed * 100003 + i)
        parts.append(model.sample(size, sampler, generator).cpu().numpy())
        log.info("sampled %d / %d windows", start + size, n)
    seconds = time.perf_counter() - started
    return np.concatenate(parts), n / seconds


def run_train(config_path: Path, out: Path, resume: bool) -> dict:
    from flowdiff.timeseries.run_config import load_run_config
    from flowdiff.timeseries.series import train_on_csv

    run = load_run_config(config_path)
    csv = run.csv if run.csv.is_absolute() else (REPO / run.csv)
    result = train_on_csv(csv, run.model, run.train, out, run.train_fraction, resume=resume)
    figures = {"train_steps": result.steps, "start_step": result.start_step,
               "train_seconds": result.seconds, "train_seconds_total": result.total_seconds,
               "train_steps_per_s": result.steps_per_s,
               "final_loss": result.final_loss, "val_loss": result.val_loss,
               "nan_skipped": result.nan_skipped}
    resumed = (f"; resumed at step {result.start_step}, {result.total_seconds:.0f} s in all"
               if result.start_step else "")
    print(f"trained steps {result.start_step}..{result.steps} in {result.seconds:.0f} s "
          f"({result.steps_per_s:.2f} steps/s{resumed}), final loss {result.final_loss:.4f}, "
          f"val loss {result.val_loss}")
    return figures


METRICS = ("context_fid", "correlational", "discriminative", "predictive")


def run_eval(dataset: str, config_path: Path, out: Path, repeats: int, kind: str,
             steps: int | None, batch: int, max_windows: int | None, eta: float = 0.0,
             churn: float = 0.0, metrics: tuple[str, ...] = METRICS) -> dict:
    from flowdiff.model import load_checkpoint
    from flowdiff.timeseries.metrics import (context_fid, correlational_score, discriminative_score,
                                        predictive_score)
    from flowdiff.timeseries.run_config import load_run_config
    from flowdiff.timeseries.series import prepare_series

    run = load_run_config(config_path)
    csv = run.csv if run.csv.is_absolute() else (REPO / run.csv)
    model, extra = load_checkpoint(out / "checkpoint.pt", "cpu")
    real = prepare_series(csv, run.model.seq_len, run.train_fraction).train_windows
    if max_windows:
        real = real[:max_windows]
    trained_steps = extra["train_state"]["step"]
    fake, windows_per_s = sample_windows(model, len(real), kind, steps, batch, seed=7, eta=eta,
                                         churn=churn)
    np.save(out / "samples.npy", fake)
    score_fns = {"context_fid": context_fid, "correlational": correlational_score,
                 "discriminative": discriminative_score, "predictive": predictive_score}
    scores: dict[str, list[float]] = {name: [] for name in metrics}
    for repeat in range(repeats):
        started = time.perf_counter()
        for name in metrics:
            scores[name].append(score_fns[name](real, fake, seed=repeat))
        log.info("repeat %d: %s (%.0f s)", repeat, {k: v[-1] for k, v in scores.items()},
                 time.perf_counter() - started)
    real_predictive = ([predictive_score(real, real, seed=r) for r in range(min(repeats, 2))]
                       if "predictive" in metrics else [float("nan")])
    summary = {name: mean_ci(values) for name, values in scores.items()}
    print(f"\n{dataset}: {len(real)} real windows, {len(fake)} generated with {kind}"
          f"{'' if steps is None else f' S={steps}'} eta={eta} churn={churn} "
          f"from a model trained {trained_steps} steps; "
          f"sampling {windows_per_s:.1f} windows/s")
    print(f"{'metric':<16}{'ours (mean +- 95% CI)':<26}{'paper':<18}{'target':<8}")
    for name, (mean, half) in summary.items():
        paper = PAPER[dataset][name]
        target = TARGETS[dataset].get(name)
        verdict = "" if target is None else ("ok" if mean <= target else "MISSED")
        print(f"{name:<16}{f'{mean:.3f} +- {half:.3f}':<26}{f'{paper[0]:.3f} +- {paper[1]:.3f}':<18}"
              f"{'' if target is None else f'<= {target}':<9}{verdict}")
    print(f"predictive on real data (train-on-real): {np.mean(real_predictive):.3f}")
    return {"dataset": dataset, "trained_steps": trained_steps, "sampler": kind, "sampler_steps": steps,
            "eta": eta, "churn": churn,
            "windows": len(fake), "sampling_windows_per_s": windows_per_s,
            "scores": scores, "summary": summary, "paper": PAPER[dataset],
            "predictive_real": float(np.mean(real_predictive))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("stocks", "etth"), required=True)
    parser.add_argument("--phase", choices=("train", "eval", "all"), default="all")
    parser.add_argument("--config", type=Path, help="default configs/dts-<dataset>.yaml")
    parser.add_argument("--out", type=Path, required=True, help="artifact directory")
    parser.add_argument("--resume", action="store_true", help="continue training from out/checkpoint.pt")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm",
                        help="reference: ddpm over all T=500 steps")
    parser.add_argument("--sampler-steps", type=int, default=None, help="sampler steps S")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    parser.add_argument("--churn", type=float, default=0.0, help="EDM S_churn (0 = off)")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS))
    parser.add_argument("--batch", type=int, default=512, help="sampling batch size")
    parser.add_argument("--max-windows", type=int, default=None,
                        help="evaluate on the first N training windows only (quick check)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config = args.config or REPO / "configs" / f"dts-{args.dataset}.yaml"
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if args.phase in ("train", "all"):
        results["train"] = run_train(config, args.out, args.resume)
        results_path.write_text(json.dumps(results, indent=2))
    if args.phase in ("eval", "all"):
        results["eval"] = run_eval(args.dataset, config, args.out, args.repeats, args.sampler,
                                   args.sampler_steps, args.batch, args.max_windows, args.eta,
                                   args.churn, tuple(args.metrics))
        results_path.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
