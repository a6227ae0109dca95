"""Daemon state on disk: per-stream contexts, RNG states, next ``seq`` and synthetic clocks.

Saved atomically (temp file in the same directory, fsync, rename) so a crash leaves either
the old or the new file. Loaded with ``torch.load(weights_only=True)``: the file holds only
tensors, numbers, strings, lists and dicts. A ``fingerprint`` (artifact hash, stream count,
base seed, window) guards against resuming a state that belongs to another setup.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
STATE_VERSION = 1


class StateError(RuntimeError):
    """The state file cannot be used (names the file and why)."""


@dataclass
class StreamState:
    contexts: torch.Tensor  # (S, C, F) float32, encoded steps in [0, 1]
    rng_states: list[torch.Tensor]  # S ByteTensors from torch.Generator.get_state()
    next_seq: torch.Tensor  # (S,) int64: seq of the next record of each stream
    clocks: torch.Tensor  # (S,) float64: ts of the last record of each stream (epoch s)
    turns: int
    fingerprint: dict
    # codec reuse field -> (S, K) int64 last K decoded addresses of each stream (-1: none);
    # absent in states saved before the codec had reuse fields
    history: dict[str, torch.Tensor] = field(default_factory=dict)


def save_state(directory: str | Path, state: StreamState) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / STATE_FILE
    tmp = directory / f".{STATE_FILE}.{os.getpid()}.tmp"
    payload = {
        "version": STATE_VERSION,
        "contexts": state.contexts.detach().cpu(),
        "rng_states": [s.clone() for s in state.rng_states],
        "next_seq": state.next_seq.clone(),
        "clocks": state.clocks.clone(),
        "turns": int(state.turns),
        "fingerprint": dict(state.fingerprint),
        "history": {name: h.clone() for name, h in state.history.items()},
    }
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def load_state(directory: str | Path, fingerprint: dict) -> StreamState | None:
    """The saved state, or None when there is none. Raises StateError when the file is
    unreadable or was written for a different setup (fingerprint mismatch)."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises assorted types for corrupt files
        raise StateError(f"{path}: cannot read state file ({exc}); move it away to start fresh") \
            from exc
    if not isinstance(payload, dict) or payload.get("version") != STATE_VERSION:
        raise StateError(f"{path}: expected state version {STATE_VERSION}, "
                         f"got {payload.get('version') if isinstance(payload, dict) else payload!r}")
    saved = payload["fingerprint"]
    diffs = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in fingerprint.items()
             if saved.get(k) != v]
    if diffs:
        raise StateError(f"{path}: state belongs to a different setup ({'; '.join(diffs)}); "
                         "move it away to start fresh or restore the old config")
    return StreamState(contexts=payload["contexts"], rng_states=payload["rng_states"],
                       next_seq=payload["next_seq"], clocks=payload["clocks"],
                       turns=payload["turns"], fingerprint=saved,
                       history=dict(payload.get("history") or {}))
