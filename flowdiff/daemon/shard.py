"""Sharded serving: N daemons (on N hosts, or N units on one) write one Kafka topic.

Shard i of N with ``serve.streams`` = S owns the global stream ids ``i*S .. i*S + S - 1``;
global stream g draws from a generator seeded ``serve.seed + g`` (and, with ``start: real``,
its seed window is the one stream g of a single N*S-stream daemon would get; on the shared
timeline its steps of the walk over the training blocks are stream g's of that daemon's one
walk, ``StreamGenerator.walks``). A stream does
not depend on which other streams share its process, the shards' id ranges are disjoint and
each stream's ``seq`` counts on its own, so no two records of N shards share
``(stream_id, seq)``.

    serve: {shard: {index: 0, count: 2}}     # or: flowdiff serve --shard 0/2 (or 0-of-2)

A shard's state lives in ``serve.state_dir/<i>-of-<N>`` and its fingerprint names the shard,
so a restarted shard resumes its own streams and never another shard's. The systemd
template ``flowdiff@.service`` takes the shard as the instance name: ``flowdiff@0-of-2``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_SHARD = re.compile(r"^\s*(\d+)\s*(?:/|-of-)\s*(\d+)\s*$")


@dataclass
class ShardConfig:
    """This daemon's shard: ``index`` in 0..count-1 of ``count`` shards (1 = not sharded)."""
    index: int = field(default=0, metadata={"low": 0, "high": None, "low_open": False})
    count: int = field(default=1, metadata={"low": 1, "high": 4096, "low_open": False})

    def __post_init__(self):
        if isinstance(self.count, int) and self.count < 1:
            raise ValueError(f"shard count must be >= 1, got {self.count}")
        if isinstance(self.index, int) and isinstance(self.count, int) \
                and not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} is not in 0..{self.count - 1} "
                             f"(count {self.count})")

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def name(self) -> str:
        """``<index>-of-<count>``: the systemd instance name and the state subdirectory."""
        return f"{self.index}-of-{self.count}"

    def first_stream(self, streams: int) -> int:
        """Global id of this shard's first stream (each shard runs ``streams`` streams)."""
        return self.index * streams

    def state_dir(self, state_dir: str | None) -> str | None:
        """Where this shard keeps its state: ``state_dir/<i>-of-<N>`` when sharded."""
        if state_dir is None or not self.sharded:
            return state_dir
        return str(Path(state_dir) / self.name)

    def describe(self, streams: int) -> str:
        first = self.first_stream(streams)
        return f"shard {self.index} of {self.count}: streams {first}..{first + streams - 1}"


def parse_shard(text: str) -> ShardConfig:
    """``i/N`` or ``i-of-N`` (a systemd instance name) -> ShardConfig; ValueError says why."""
    match = _SHARD.match(text or "")
    if not match:
        raise ValueError(f"expected INDEX/COUNT or INDEX-of-COUNT (e.g. 0/2 or 0-of-2), "
                         f"got {text!r}")
    return ShardConfig(index=int(match.group(1)), count=int(match.group(2)))
