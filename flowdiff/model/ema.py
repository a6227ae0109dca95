"""Exponential moving average of the weights (the weights used for sampling).

Like the reference (ema_pytorch): updated every ``every`` steps; the first 100 steps copy
the weights, then the decay warms up as 1 - (1 + n)^(-2/3), capped at ``decay``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

COPY_STEPS = 100
WARMUP_POWER = 2.0 / 3.0


class EMA:
    def __init__(self, model: nn.Module, decay: float, every: int):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.every = every
        self.step_count = 0

    def current_decay(self) -> float:
        n = self.step_count - COPY_STEPS - 1
        if n <= 0:
            return 0.0
        return min(self.decay, 1 - (1 + n) ** -WARMUP_POWER)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.step_count += 1
        if self.step_count % self.every != 0:
            return
        decay = self.current_decay()
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - decay)

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.model.load_state_dict(state["weights"])
