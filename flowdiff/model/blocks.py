"""Block conditioning: the network is told what each block of steps is like on average.

Real traffic comes in regimes (a scan burst, one host's run of connections, a UDP-heavy
minute): the mix of a 25-record stretch varies from stretch to stretch much more than
independent records would make it, and its fields move together. A model that generates
every window from the same prior averages that away (docs/model.md, "Block conditioning").
So the distribution of a window is factored as

    p(window) = p(block summaries) p(window | block summaries)

- a *block summary* is the mean of the encoded steps over a block of ``length``
  consecutive steps (blocks aligned at the window's first step), centred, projected on the
  first ``dims`` principal directions of the training blocks' means and scaled to unit
  variance: (K,) per block, given to every step of its block;
- the network learns p(window | summaries) (``DiffusionTSNetwork``'s ``block_embed``):
  training computes the summaries of the clean window itself and drops them for a share of
  the rows (the unconditional case, a zero summary);
- p(block summaries) is the *bank*: the summaries of the training records' consecutive
  blocks, in order. A stream walks it (``bank_walk``), so the sequence of regimes it is
  conditioned on is a real one: their mix, persistence and co-movement are the training
  data's. The bank stores K numbers per ``length`` records (means, not records).

Fitted once from the training rows (``BlockConditioning.fit``) and saved in the checkpoint
(``to_state`` / ``from_state``), like the marginal prior.
"""

from __future__ import annotations

import numpy as np
import torch

from flowdiff.codec.block_targets import WALK_TURNS, walk_blocks  # noqa: F401  (one walk for both banks)


def block_means(x: torch.Tensor, length: int) -> torch.Tensor:
    """x (B, L, F) -> (B, ceil(L / length), F): the mean over each block of ``length``
    steps, blocks aligned at step 0 (the last one may be shorter)."""
    batch, steps, width = x.shape
    full = steps // length
    parts = []
    if full:
        parts.append(x[:, :full * length].reshape(batch, full, length, width).mean(dim=2))
    if steps % length:
        parts.append(x[:, full * length:].mean(dim=1, keepdim=True))
    return torch.cat(parts, dim=1)


def expand_blocks(summaries: torch.Tensor, length: int, steps: int) -> torch.Tensor:
    """Per-block summaries (B, nb, K) -> per-step (B, steps, K): step l gets block l // length."""
    index = torch.arange(steps, device=summaries.device) // length                # (steps,)
    return summaries[:, index]


class BlockConditioning:
    """Projection of block means to summaries, and the bank of the training data's."""

    def __init__(self, length: int, center: torch.Tensor, basis: torch.Tensor,
                 scale: torch.Tensor, bank: torch.Tensor):
        if length < 1:
            raise ValueError(f"block conditioning: block length must be >= 1, got {length}")
        if basis.dim() != 2 or center.shape != (basis.shape[0],) or scale.shape != (basis.shape[1],):
            raise ValueError("block conditioning: center (F,), basis (F, K) and scale (K,) "
                             f"do not fit: {tuple(center.shape)}, {tuple(basis.shape)}, "
                             f"{tuple(scale.shape)}")
        if bank.dim() != 2 or bank.shape[1] != basis.shape[1] or bank.shape[0] < 1:
            raise ValueError(f"block conditioning: bank must be (N >= 1, {basis.shape[1]}), "
                             f"got {tuple(bank.shape)}")
        self.length = int(length)
        self.center, self.basis, self.scale = center.float(), basis.float(), scale.float()
        self.bank = bank.float()

    @property
    def width(self) -> int:
        return self.basis.shape[0]

    @property
    def dims(self) -> int:
        return self.basis.shape[1]

    @classmethod
    def fit(cls, rows: np.ndarray, length: int, dims: int) -> "BlockConditioning":
        """rows (n, F): the training records' encodings in [0, 1], in time order."""
        rows = np.asarray(rows, dtype=np.float64)
        n_blocks = rows.shape[0] // length
        if n_blocks < 2:
            raise ValueError(f"block conditioning: {rows.shape[0]} training rows make fewer "
                             f"than two blocks of {length}")
        means = rows[:n_blocks * length].reshape(n_blocks, length, -1).mean(axis=1)  # (N, F)
        center = means.mean(axis=0)
        _, singular, vt = np.linalg.svd(means - center, full_matrices=False)
        dims = min(dims, vt.shape[0])
        basis = vt[:dims].T                                                       # (F, K)
        scale = np.maximum(singular[:dims] / np.sqrt(max(n_blocks - 1, 1)), 1e-6)  # (K,)
        bank = (means - center) @ basis / scale                                   # (N, K)
        return cls(length, torch.as_tensor(center), torch.as_tensor(basis),
                   torch.as_tensor(scale), torch.as_tensor(bank))

    def summarise(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded windows x (B, L, F) in [0, 1] -> per-step summaries (B, L, K)."""
        means = block_means(x.float(), self.length)                              # (B, nb, F)
        blocks = (means - self.center.to(x.device)) @ self.basis.to(x.device) / self.scale.to(x.device)
        return expand_blocks(blocks, self.length, x.shape[1])

    def bank_walk(self, walks: list[tuple[int, int]], first_blocks: list[int],
                  n_blocks: int) -> torch.Tensor:
        """Bank summaries (S, n_blocks, K) for each stream: blocks ``first_blocks[i]`` ..
        ``first_blocks[i] + n_blocks - 1`` from the place of step ``walks[i] = (seed,
        turn)`` of its walk. A walk reads the bank in order from a place set by (seed,
        turn // WALK_TURNS) (``walk_blocks``), so consecutive steps continue one real
        sequence of regimes and every WALK_TURNS steps it moves elsewhere."""
        n_bank = self.bank.shape[0]
        return torch.stack([self.bank[torch.as_tensor(walk_blocks(seed, turn, first, n_blocks, n_bank))]
                            for (seed, turn), first in zip(walks, first_blocks)])                        # (S, nb, K)

    def to_state(self) -> dict:
        return {"length": self.length, "center": self.center, "basis": self.basis,
                "scale": self.scale, "bank": self.bank}

    @classmethod
    def from_state(cls, state: dict) -> "BlockConditioning":
        return cls(int(state["length"]), state["center"], state["basis"], state["scale"],
                   state["bank"])

    def summary(self) -> str:
        return (f"{self.bank.shape[0]} training blocks of {self.length} steps, "
                f"{self.dims} of {self.width} dimensions")
