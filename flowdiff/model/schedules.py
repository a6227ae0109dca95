"""Learning-rate schedule: linear warm-up, then reduce-on-plateau (reference) or cosine."""

from __future__ import annotations

import math

from flowdiff.model.config import TrainConfig


class WarmupLR:
    """Sets the lr of an optimiser once per step from the step count and the step's loss.

    plateau: after warm-up, halve (``plateau_factor``) when the loss has not improved by
    ``plateau_threshold`` (relative) for ``plateau_patience`` steps, never below ``min_lr``.
    cosine: after warm-up, cosine decay from ``lr`` to ``min_lr`` at ``steps``.
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.step_count = 0
        self.lr = cfg.warmup_start_lr if cfg.warmup > 0 else cfg.lr
        self.best = math.inf
        self.bad_steps = 0

    def step(self, loss: float) -> float:
        """Advance one step; returns the lr to use for the next step."""
        cfg = self.cfg
        self.step_count += 1
        if self.step_count <= cfg.warmup:
            self.lr = cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * self.step_count / cfg.warmup
        elif cfg.scheduler == "cosine":
            span = max(cfg.steps - cfg.warmup, 1)
            progress = min((self.step_count - cfg.warmup) / span, 1.0)
            self.lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        else:
            if loss < self.best * (1 - cfg.plateau_threshold):
                self.best = loss
                self.bad_steps = 0
            else:
                self.bad_steps += 1
            if self.bad_steps > cfg.plateau_patience:
                self.lr = max(self.lr * cfg.plateau_factor, cfg.min_lr)
                self.bad_steps = 0
        return self.lr

    def reduce(self) -> float:
        """Cut the lr by ``plateau_factor`` now (used after a NaN restore)."""
        self.lr = max(self.lr * self.cfg.plateau_factor, self.cfg.min_lr)
        return self.lr

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "lr": self.lr, "best": self.best,
                "bad_steps": self.bad_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.lr = float(state["lr"])
        self.best = float(state["best"])
        self.bad_steps = int(state["bad_steps"])
