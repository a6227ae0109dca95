"""Explicit random streams: one torch.Generator for the batch, or one per batch row.

With a list of generators, row i's noise comes only from generator i, so a stream's output
does not depend on which other streams share the batch. Every sampler and the trainer draw
noise through ``randn_like_rows``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence, Union

import torch

Generators = Union[torch.Generator, Sequence[torch.Generator]]


def check_generators(generators: Generators, batch: int) -> None:
    """Raise a clear error when ``generators`` cannot drive a batch of ``batch`` rows."""
    if isinstance(generators, torch.Generator):
        return
    if not isinstance(generators, (list, tuple)) or not all(
            isinstance(g, torch.Generator) for g in generators):
        raise TypeError("generator: expected a torch.Generator or a list of torch.Generator "
                        f"(one per batch row), got {type(generators).__name__}")
    if len(generators) != batch:
        raise ValueError(f"generator: got {len(generators)} generators for a batch of {batch} "
                         "rows (expected one per row)")


def randn_like_rows(shape: Sequence[int], generators: Generators,
                    device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, ...) drawn from ``generators``.

    A single generator draws the whole tensor; a list draws row i from generators[i].
    Noise is drawn on each generator's own device and then moved to ``device``.
    """
    shape = tuple(shape)
    check_generators(generators, shape[0])
    if isinstance(generators, torch.Generator):
        noise = torch.randn(shape, generator=generators, device=generators.device, dtype=dtype)
    else:
        noise = torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype)
                             for g in generators])                  # (B, ...)
    return noise.to(device)


def randint_rows(batch: int, high: int, generators: Generators,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Integers U{0..high-1} of shape (B,), row i from generators[i] when a list is given."""
    check_generators(generators, batch)
    if isinstance(generators, torch.Generator):
        values = torch.randint(0, high, (batch,), generator=generators, device=generators.device)
    else:
        values = torch.cat([torch.randint(0, high, (1,), generator=g, device=g.device)
                            for g in generators])
    return values.to(device)


def seeded_generators(seeds: Sequence[int], device: str = "cpu") -> list[torch.Generator]:
    """One generator per seed (e.g. one per daemon stream)."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


@contextmanager
def scoped_torch_seed(seed: int) -> Iterator[None]:
    """torch's global RNG seeded with ``seed`` inside the block and restored after it, for
    code that can only draw from the global RNG (``nn.Module`` initialisation, dropout,
    third-party fitters): library calls are reproducible and leave the caller's random
    state as it was (no global ``torch.manual_seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
