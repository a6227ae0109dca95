"""Denoising-error diagnostic: does the denoiser improve on its own (noisy) input?

For held-out clean windows x0 (model space [-1, 1]) and each timestep t of a list:
x_t = q_sample(x0, t, eps) with one eps per window shared by every t (common random
numbers, so the curve is smooth), x0_hat = model.denoise(x_t, t) (unclipped), and

    x0 error    = mean |x0_hat - x0|
    input error = mean |x_t / sqrt(abar_t) - x0| = sigma_t mean |eps|  (the noisy input mapped back)

per feature group (a mapping name -> slice of the feature axis, e.g. a codec's
``feature_slices``; the model knows nothing about what the features mean). A useful
denoiser has ratio = x0 error / input error < 1, at least at small t. ``clean`` is the error
of x0_hat when the clean window itself is given at t = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from flowdiff.atomic import write_atomic_via, write_text_atomic
from flowdiff.model.diffusion_ts import DiffusionTS, to_data_space, to_model_space

ALL = "all"   # the group of every feature, always reported
DEFAULT_FRACTIONS = (0.0, 0.002, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.9)   # of T
FILES = ("denoise_curve.json", "denoise_curve.txt", "denoise_curve.png")


@dataclass
class DenoiseCurve:
    timesteps: list[int]
    timesteps_total: int                       # T of the model
    x0_error: dict[str, list[float]]           # group -> per timestep
    input_error: dict[str, list[float]]        # group -> per timestep
    clean_error: dict[str, float]              # group -> error on the clean window at t = 0
    windows: int

    @property
    def groups(self) -> list[str]:
        return list(self.x0_error)

    def ratio(self, group: str) -> list[float]:
        return [a / b if b > 0 else float("inf")
                for a, b in zip(self.x0_error[group], self.input_error[group])]

    def to_dict(self) -> dict:
        return {"timesteps": self.timesteps, "timesteps_total": self.timesteps_total,
                "windows": self.windows, "x0_error": self.x0_error,
                "input_error": self.input_error, "clean_error": self.clean_error,
                "ratio": {g: self.ratio(g) for g in self.groups}}

    def table(self) -> str:
        """Text table: one row per group, ratio x0/input at each t, then the clean error."""
        head = f"{'group':<16}" + "".join(f"{f't={t}':>10}" for t in self.timesteps) + f"{'clean':>10}"
        lines = [f"x0 error / input error (L1, model space [-1, 1]; {self.windows} windows, "
                 f"T = {self.timesteps_total})", head]
        for group in self.groups:
            lines.append(f"{group:<16}" + "".join(f"{r:>10.2f}" for r in self.ratio(group))
                         + f"{self.clean_error[group]:>10.4f}")
        lines.append(f"{'input L1 (' + ALL + ')':<16}"
                     + "".join(f"{e:>10.4f}" for e in self.input_error[ALL]))
        lines.append(f"{'x0 L1 (' + ALL + ')':<16}"
                     + "".join(f"{e:>10.4f}" for e in self.x0_error[ALL]))
        return "\n".join(lines)


def _group_means(error: torch.Tensor, groups: Mapping[str, slice]) -> dict[str, float]:
    """error (N, L, F) -> mean over N, L and each group's features."""
    return {name: float(error[:, :, part].mean()) for name, part in groups.items()}


@torch.no_grad()
def denoising_curve(model: DiffusionTS, windows: np.ndarray | torch.Tensor, timesteps: Sequence[int],
                    groups: Mapping[str, slice] | None = None, seed: int = 0,
                    batch_size: int = 256) -> DenoiseCurve:
    """The curve for clean windows (N, L, F) in [0, 1] at ``timesteps`` (each in [0, T-1]).

    groups: name -> slice of the feature axis; default one group per feature (``f0``, ...).
    Always adds the group ``all``. Deterministic for a seed.
    """
    total = model.cfg.timesteps
    bad = [t for t in timesteps if not 0 <= int(t) < total]
    if bad or not timesteps:
        raise ValueError(f"denoising_curve: timesteps must be a non-empty list in [0, {total - 1}], "
                         f"got {list(timesteps)}")
    x0 = to_model_space(torch.as_tensor(np.asarray(windows), dtype=torch.float32))  # (N, L, F)
    model._check_windows(x0, "denoising_curve: windows")
    n_feat = x0.shape[2]
    groups = dict(groups) if groups else {f"f{i}": slice(i, i + 1) for i in range(n_feat)}
    for name, part in groups.items():
        if not isinstance(part, slice) or not range(n_feat)[part]:
            raise ValueError(f"denoising_curve: group {name!r} is not a non-empty slice of "
                             f"{n_feat} features: {part!r}")
    groups[ALL] = slice(0, n_feat)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))   # (N, L, F)
    was_training = model.training
    model.eval()
    device = model.device

    def errors_at(t: int, clean: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """|x0_hat - x0| and |x_t / sqrt(abar) - x0|, each (N, L, F), in batches."""
        out_err, in_err = [], []
        for start in range(0, x0.shape[0], batch_size):
            clean_part = x0[start:start + batch_size].to(device)                    # (b, L, F)
            t_batch = torch.full((clean_part.shape[0],), t, dtype=torch.long, device=device)
            if clean:
                x_t = clean_part
            else:
                x_t = model.process.q_sample(clean_part, t_batch, noise[start:start + batch_size].to(device))
            blocks = model.block_summaries(to_data_space(clean_part))  # as in training
            x0_hat = (model.denoise(x_t, t_batch) if blocks is None
                      else model.denoise(x_t, t_batch, blocks))                     # (b, L, F)
            mapped = x_t / model.process.sqrt_alphas_cumprod[t]                      # x~ = x0 + sigma eps
            out_err.append((x0_hat - clean_part).abs().cpu())
            in_err.append((mapped - clean_part).abs().cpu())
        return torch.cat(out_err), torch.cat(in_err)

    x0_error: dict[str, list[float]] = {name: [] for name in groups}
    input_error: dict[str, list[float]] = {name: [] for name in groups}
    for t in timesteps:
        out_err, in_err = errors_at(int(t), clean=False)
        for name, value in _group_means(out_err, groups).items():
            x0_error[name].append(value)
        for name, value in _group_means(in_err, groups).items():
            input_error[name].append(value)
    clean_error = _group_means(errors_at(0, clean=True)[0], groups)
    model.train(was_training)
    return DenoiseCurve([int(t) for t in timesteps], total, x0_error, input_error, clean_error,
                        int(x0.shape[0]))


def plot_denoise_curve(curve: DenoiseCurve, path: str | Path, title: str = "") -> None:
    """Left: L1 errors per group (solid x0_hat, dashed noisy input); right: their ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_err, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = curve.timesteps
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(curve.groups) > len(colors):
        colors = [plt.cm.tab20(i) for i in range(20)]
    for i, group in enumerate(curve.groups):
        color = "black" if group == ALL else colors[i % len(colors)]
        ax_err.plot(steps, curve.x0_error[group], "-o", ms=3, color=color, label=group)
        ax_err.plot(steps, curve.input_error[group], "--", color=color, alpha=0.6)
        ax_ratio.plot(steps, curve.ratio(group), "-o", ms=3, color=color, label=group)
    ax_ratio.axhline(1.0, color="grey", lw=1)
    for ax in (ax_err, ax_ratio):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(min(steps), max(steps) * 1.2 + 1)
        ax.set_yscale("log")
        ax.set_xlabel(f"t (of T = {curve.timesteps_total})")
        ax.grid(alpha=0.3)
    ax_err.set_ylabel("L1 error vs clean (solid: x0_hat, dashed: input)")
    ax_ratio.set_ylabel("x0_hat error / input error")
    ax_ratio.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_via(path, lambda name: fig.savefig(name, dpi=100))
    plt.close(fig)


def default_timesteps(total: int) -> list[int]:
    """The timesteps at ``DEFAULT_FRACTIONS`` of T (distinct, in [0, T-1])."""
    return sorted({min(int(f * total), total - 1) for f in DEFAULT_FRACTIONS})


def spread_subset(windows, count: int):
    """At most ``count`` windows evenly spaced over the set (every period represented)."""
    if len(windows) <= count:
        return windows
    return windows[np.linspace(0, len(windows) - 1, count).round().astype(int)]


def write_denoise_curve(model: DiffusionTS, windows, groups: Mapping[str, slice] | None,
                        out_dir: str | Path, title: str = "", seed: int = 0) -> DenoiseCurve:
    """Compute the curve at the default timesteps and write ``FILES`` into ``out_dir``
    (JSON, the text table, the plot)."""
    import json

    curve = denoising_curve(model, windows, default_timesteps(model.cfg.timesteps), groups,
                            seed=seed)
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / FILES[0], json.dumps(
        {"parameterization": model.cfg.parameterization, **curve.to_dict()}, indent=1) + "\n")
    write_text_atomic(out_dir / FILES[1], curve.table() + "\n")
    plot_denoise_curve(curve, out_dir / FILES[2], title=title)
    return curve
