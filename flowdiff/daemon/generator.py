"""Endless generation: S parallel streams, each with a rolling context of C encoded steps.

Each ``step()`` runs the model's predict mode on all streams at once (the batch dimension),
decodes the H new steps of every stream to flow records (``codec.decode_streams``, with
each stream's history of recent addresses for the codec's reuse fields), stamps
``stream_id`` and a per-stream ``seq``, appends the new steps to the contexts and slides
them. Time (``TIMELINES``): by default the streams are slices of one network, their blocks
laid one after the other on one clock; ``per_stream`` gives each stream its own clock.
Stream i draws all its noise from its own ``torch.Generator`` seeded with ``seed + i`` —
the model's noise and, through a seed drawn from it each turn, the codec's sampled
decoding — and a saved generator state resumes it exactly.
A shard's generator runs the global streams ``first_stream .. first_stream + S - 1``
(``seed`` is then the base seed plus ``first_stream``; see ``flowdiff.daemon.shard``).
Block targets (``flowdiff.codec.block_targets``) and a block-conditioned model
(``flowdiff.model.blocks``) read banks of training blocks along a walk (``walks``): on the
shared timeline the streams are slices of one walk (global stream g's horizon at turn k is
its step k * G + g), per_stream each stream walks its own; either way a stream's blocks
depend only on the seed, its global id, the stream count of all shards and the turn count
(already in the state), so a shard's stream reads what it would in one daemon running all
the shards' streams.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from flowdiff.daemon.state import StreamState
from flowdiff.model.blocks import WALK_TURNS, expand_blocks

log = logging.getLogger(__name__)


# How the streams' records share time. "shared": one timeline, the streams' blocks of H
# records follow each other in every turn (stream 0's, then stream 1's, ...), so the merged
# output has one network's flow rate and each block keeps its own host reuse and bursts;
# "per_stream": every stream has its own clock from the same start, so the merged output
# interleaves S networks at S times the rate.
TIMELINES = ("shared", "per_stream")


@dataclass
class Turn:
    """What one ``step()`` produced."""
    records: pd.DataFrame  # S*H-ish records (canonical columns + stream_id, seq)
    stream_counts: np.ndarray  # (S,) records per stream
    repairs: dict  # field -> values the codec repaired in this turn
    predict_seconds: float
    decode_seeds: list[int]  # per stream: seed of the codec's sampled decoding this turn


def horizon_noise(codec, regimes: dict | None):
    """``regimes`` ({"correlation" / "persistence": {codec part: value}}, as a calibration
    stores them) as a ``HorizonNoise`` over the codec's features; None when empty."""
    if not regimes:
        return None
    from flowdiff.model.regimes import HorizonNoise

    return HorizonNoise.from_parts(regimes, codec.feature_parts, codec.width)


class StreamGenerator:
    def __init__(self, model, codec, sampler, *, context: int, horizon: int, streams: int,
                 seed: int, device: str = "cpu", timeline: str = "shared",
                 first_stream: int = 0, walk_streams: int | None = None, noise=None):
        """noise: the horizon's starting-noise dependence (a ``HorizonNoise``,
        ``flowdiff.model.regimes``); default: the codec calibration's fitted ``regimes``
        (none: independent noise)."""
        self.model = model
        self.codec = codec
        self.sampler = sampler
        self.context = context
        self.horizon = horizon
        self.streams = streams
        self.seed = seed
        self.device = device
        if timeline not in TIMELINES:
            raise ValueError(f"timeline: expected one of {TIMELINES}, got {timeline!r}")
        self.timeline = timeline
        self.first_stream = first_stream  # global id of local stream 0 (sharded serving)
        self.walk_streams = walk_streams or first_stream + streams  # all shards' streams (``walks``)
        self.rngs = [torch.Generator(device=device).manual_seed(seed + i) for i in range(streams)]
        self.contexts: torch.Tensor | None = None  # (S, C, F)
        self.next_seq = torch.zeros(streams, dtype=torch.int64)  # (S,)
        self.clocks = torch.zeros(streams, dtype=torch.float64)  # (S,) last ts per stream
        self.history = codec.empty_history(streams)  # reuse field -> (S, K) recent addresses
        self.turns = 0
        if noise is None:
            noise = horizon_noise(codec, getattr(codec.calibration, "regimes", None))
        self.noise = noise
        # a block-conditioned model: each stream walks the bank of training block summaries
        self._blocks = getattr(model, "blocks", None)
        if self._blocks is not None and (context % self._blocks.length
                                         or horizon % self._blocks.length):
            raise ValueError(f"block conditioning: context {context} and horizon {horizon} "
                             f"must be multiples of the block length {self._blocks.length}")

    # ------------------------------------------------------------ starting points
    def start_unconditional(self, sampler, start_ts: float) -> None:
        """Fill every context with the last C steps of an unconditional sample drawn with
        ``sampler`` (an unconditional kind: ddim or ddpm)."""
        blocks = None
        if self._blocks is not None:  # the first window: blocks 0 .. L/B - 1 of each walk
            length = self.context + self.horizon
            blocks = self._walk(0, 0, length)  # (S, L, K)
        with torch.no_grad():
            window = self.model.sample(self.streams, sampler, self.rngs, blocks)  # (S, L, F)
        self.contexts = window[:, -self.context:, :].clamp(0.0, 1.0).to(self.device)  # (S, C, F)
        self.clocks.fill_(start_ts)

    def start_from_windows(self, windows: np.ndarray, start_ts: float) -> None:
        """Use real encoded windows (S, C, F) as the first contexts."""
        expected = (self.streams, self.context, self.codec.width)
        if windows.shape != expected:
            raise ValueError(f"seed windows have shape {windows.shape}, expected {expected} "
                             "(streams, context, codec width)")
        self.contexts = torch.as_tensor(windows, dtype=torch.float32, device=self.device)
        self.clocks.fill_(start_ts)

    def restore(self, state: StreamState, rebase_to: float) -> None:
        """Continue from a saved state. Clocks behind ``rebase_to`` (the daemon was down)
        move forward to it, so timestamps stay on the wall clock and never go back."""
        self.contexts = state.contexts.to(self.device)
        for rng, saved in zip(self.rngs, state.rng_states):
            rng.set_state(saved)
        self.next_seq = state.next_seq.clone()
        self.clocks = state.clocks.clone()
        self.rebase(rebase_to)
        self.turns = state.turns
        for name in self.history:  # a state saved without history keeps the empty one
            if name in state.history:
                self.history[name] = state.history[name].numpy().astype(np.int64)

    def rebase(self, now: float) -> None:
        """Move clocks that are behind ``now`` forward to it (never back)."""
        self.clocks = torch.clamp(self.clocks, min=now)

    def snapshot(self, fingerprint: dict) -> StreamState:
        return StreamState(contexts=self.contexts.detach().cpu().clone(),
                           rng_states=[g.get_state() for g in self.rngs],
                           next_seq=self.next_seq.clone(), clocks=self.clocks.clone(),
                           turns=self.turns, fingerprint=fingerprint,
                           history={k: torch.from_numpy(v.copy()) for k, v in self.history.items()})

    # ------------------------------------------------------------ one turn
    def step(self) -> Turn:
        if self.contexts is None:
            raise RuntimeError("StreamGenerator.step() before a start_* or restore() call")
        t0 = time.perf_counter()
        new = self.predict()  # (S, H, F)
        return self.decode_turn(new.cpu().numpy(), time.perf_counter() - t0)

    def decode_turn(self, steps: np.ndarray, predict_seconds: float = 0.0) -> Turn:
        """The codec half of a turn: (S, H, F) predicted steps -> the turn's records (draws
        this turn's decoding seeds from the streams' generators, advances clocks and seq)."""
        decode_seeds = self._decode_seeds()
        records, repairs = self._decode(steps, decode_seeds)  # (S, H, F) -> S*H
        self.turns += 1
        counts = np.full(self.streams, self.horizon, dtype=np.int64)
        return Turn(records=records, stream_counts=counts, repairs=repairs,
                    predict_seconds=predict_seconds, decode_seeds=decode_seeds)

    def predict(self) -> torch.Tensor:
        """The model half of a turn: the next H encoded steps of every stream (S, H, F) in
        [0, 1], appended to the contexts (the oldest H steps drop out). Not decoded."""
        horizon_blocks = None
        if self._blocks is not None:  # turn k's horizon continues the walk after its context
            offset = (self.context + self.horizon) // self._blocks.length
            horizon_blocks = self._walk(self.turns, offset, self.horizon)  # (S, H, K)
        new = self.model.predict(self.contexts, self.horizon, self.sampler, self.rngs,
                                 noise=self.noise, horizon_blocks=horizon_blocks)
        new = new.detach().clamp(0.0, 1.0)  # (S, H, F)
        self.contexts = torch.cat([self.contexts, new], dim=1)[:, -self.context:, :]  # (S, C, F)
        return new

    def walks(self, turn: int) -> list[tuple[int, int]]:
        """Each stream's (walk seed, walk turn) at ``turn``: where it reads the banks of
        training blocks (``block_targets.walk_blocks``). On the shared timeline the streams
        are slices of one network, so they are slices of ONE walk: global stream g's
        horizon at turn k is step k * G + g of the walk seeded with the base seed (G: the
        streams of all shards), and the merged output reads one real stretch of the
        training period at a time, place after place, as a single stream does (each
        stream walking its own places would lay 16 different hours of the day side by
        side in every turn). ``per_stream`` (independent networks): stream g walks its
        own, seeded seed + g, one step per turn."""
        if self.timeline == "shared":
            base = self.seed - self.first_stream
            return [(base, turn * self.walk_streams + self.first_stream + i)
                    for i in range(self.streams)]
        return [(self.seed + i, turn) for i in range(self.streams)]

    def _walk(self, turn: int, offset: int, steps: int) -> torch.Tensor:
        """Per-step bank summaries (S, steps, K) of every stream's walk at ``turn``
        (``walks``), from block ``offset`` after the first block of its walk step."""
        length = self._blocks.length
        per_turn = self.horizon // length
        walks = self.walks(turn)
        firsts = [offset + (t % WALK_TURNS) * per_turn for _, t in walks]
        blocks = self._blocks.bank_walk(walks, firsts, -(-steps // length))
        return expand_blocks(blocks, length, steps).to(self.device)

    def _decode(self, steps: np.ndarray, seeds: list[int]) -> tuple[pd.DataFrame, dict]:
        """Decode all streams in ONE codec call (the per-call overhead dominates small
        blocks); stream s's records start at its own clock and continue its history."""
        n_streams, horizon, _ = steps.shape
        rngs = [np.random.default_rng(seed) for seed in seeds]
        shared = self.timeline == "shared"
        start = np.full(n_streams, self.clocks.numpy().max()) if shared else self.clocks.numpy()
        decoded = self.codec.decode_streams(steps, start, rngs, self.history, chain=shared,
                                            walk=self.walks(self.turns))
        table = decoded.result.table
        if len(table) != n_streams * horizon:
            raise RuntimeError(f"codec returned {len(table)} records for "
                               f"{n_streams * horizon} steps")
        ts = table["ts"].to_numpy().reshape(n_streams, horizon)  # (S, H)
        seq = self.next_seq.numpy()[:, None] + np.arange(horizon)  # (S, H)
        ids = np.arange(self.first_stream, self.first_stream + n_streams, dtype=np.int32)
        table = table.assign(stream_id=np.repeat(ids, horizon),
                             seq=seq.reshape(-1).astype(np.int64))
        last = np.full(n_streams, ts.max()) if shared else ts[:, -1]       # (S,)
        self.clocks = torch.from_numpy(np.maximum(last, self.clocks.numpy()))  # (S,)
        self.history = decoded.history
        self.next_seq += horizon
        return table, {k: int(v) for k, v in decoded.result.repairs.items() if v}

    def _decode_seeds(self) -> list[int]:
        """Per stream, the seed of its codec decoding this turn, drawn from the stream's
        torch generator (so its saved state covers decoding too). A codec without sampled
        fields draws nothing, leaving the torch streams as they were."""
        if not self.codec.draws:
            return [0] * len(self.rngs)
        return [int(torch.randint(0, 2 ** 62, (1,), generator=g, device=g.device))
                for g in self.rngs]
