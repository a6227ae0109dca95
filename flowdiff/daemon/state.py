"""Daemon state on disk: per-stream contexts, RNG states, next ``seq`` and synthetic clocks.

Saved atomically (``flowdiff.atomic``: temp file in the same directory, fsync, rename, fsync
of the directory) so a crash leaves either the old or the new file. Loaded with
``torch.load(weights_only=True)``: the file holds only tensors, numbers, strings, lists and
dicts. A ``fingerprint`` (artifact hash, stream count,
base seed, window) guards against resuming a state that belongs to another setup, and every
field is checked on load (shapes against the fingerprint, finite values, seq and clocks in
range), so a damaged or edited file is refused with a message naming it, never resumed into
records with ``"ts": Infinity`` or negative ``seq``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flowdiff.atomic import atomic_file

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
STATE_VERSION = 1
REQUIRED_KEYS = ("contexts", "rng_states", "next_seq", "clocks", "turns", "fingerprint")
MAX_SEQ = 2 ** 53  # seq stays an exact JSON number
MAX_CLOCK = 4_102_444_800.0  # 2100-01-01 UTC: a later synthetic clock is damage, not time


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
    # The turns whose records may have been emitted when this (acknowledged) state was
    # saved: exact at shutdown, at a periodic save the most a crash before the next save
    # can have generated. > turns: a restart emits turns (turns, generated_turns] again
    # with the same content (clocks not moved) before rebasing the clocks.
    generated_turns: int | None = None


def save_state(directory: str | Path, state: StreamState) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / STATE_FILE
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
    if state.generated_turns is not None:
        payload["generated_turns"] = int(state.generated_turns)
    with atomic_file(final) as handle:
        torch.save(payload, handle)
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
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing or not isinstance(payload["fingerprint"], dict):
        raise StateError(f"{path}: invalid state file: "
                         f"{'missing ' + ', '.join(missing) if missing else 'fingerprint is not a mapping'}"
                         "; move it away to start fresh")
    saved = payload["fingerprint"]
    diffs = [f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in fingerprint.items()
             if saved.get(k) != v]
    if diffs:
        raise StateError(f"{path}: state belongs to a different setup ({'; '.join(diffs)}); "
                         "move it away to start fresh or restore the old config")
    problems = state_problems(payload)
    if problems:
        raise StateError(f"{path}: invalid state file: {'; '.join(problems)}; "
                         "move it away to start fresh")
    return StreamState(contexts=payload["contexts"], rng_states=payload["rng_states"],
                       next_seq=payload["next_seq"], clocks=payload["clocks"],
                       turns=payload["turns"], fingerprint=saved,
                       history=dict(payload.get("history") or {}),
                       generated_turns=payload.get("generated_turns"))


def state_problems(payload: dict) -> list[str]:
    """What is wrong with a loaded payload (empty when usable): types, shapes against the
    fingerprint's streams/context/width, finite values, seq and clocks in range."""
    fp = payload["fingerprint"]
    turns, contexts, next_seq = payload["turns"], payload["contexts"], payload["next_seq"]
    clocks, rng_states = payload["clocks"], payload["rng_states"]
    problems = []
    if not isinstance(turns, int) or isinstance(turns, bool) or turns < 0:
        problems.append(f"turns: expected an integer >= 0, got {turns!r}")
        turns = None
    generated = payload.get("generated_turns")
    if generated is not None and (not isinstance(generated, int) or isinstance(generated, bool)
                                  or turns is None or generated < turns):
        problems.append(f"generated_turns: expected an integer >= turns, got {generated!r}")
    streams = fp.get("streams")
    shape = (streams, fp.get("context"), fp.get("width"))
    if not isinstance(contexts, torch.Tensor) or not contexts.is_floating_point() \
            or contexts.dim() != 3:
        problems.append("contexts: expected a float tensor (streams, context, width)")
    else:
        if any(want is not None and got != want for got, want in zip(contexts.shape, shape)):
            problems.append(f"contexts: shape {tuple(contexts.shape)}, expected {shape}")
        if not torch.isfinite(contexts).all() or contexts.min() < 0 or contexts.max() > 1:
            problems.append("contexts: values outside [0, 1] or not finite")
        streams = contexts.shape[0] if streams is None else streams
    if not isinstance(rng_states, list) or len(rng_states) != streams:
        problems.append(f"rng_states: expected a list of {streams} generator states")
    else:
        for i, rng_state in enumerate(rng_states):
            try:
                torch.Generator().set_state(rng_state)
            except (RuntimeError, TypeError):
                problems.append(f"rng_states[{i}]: not a torch generator state")
                break
    if not isinstance(next_seq, torch.Tensor) or next_seq.dtype != torch.int64 \
            or tuple(next_seq.shape) != (streams,):
        problems.append(f"next_seq: expected an int64 tensor of shape ({streams},)")
    else:
        horizon = fp.get("horizon")
        high = min(MAX_SEQ, turns * horizon) if turns is not None and horizon else MAX_SEQ
        if next_seq.min() < 0 or next_seq.max() > high:
            problems.append(f"next_seq: values {next_seq.min().item()}..{next_seq.max().item()} "
                            f"outside 0..{high} (turns x horizon)")
    if not isinstance(clocks, torch.Tensor) or not clocks.is_floating_point() \
            or tuple(clocks.shape) != (streams,):
        problems.append(f"clocks: expected a float tensor of shape ({streams},)")
    elif not torch.isfinite(clocks).all() or clocks.min() < 0 or clocks.max() > MAX_CLOCK:
        problems.append("clocks: expected finite epoch seconds between 1970 and 2100")
    history = payload.get("history") or {}
    if not isinstance(history, dict) or not all(
            isinstance(h, torch.Tensor) and h.dtype == torch.int64 and h.dim() == 2
            and h.shape[0] == streams for h in history.values()):
        problems.append(f"history: expected a mapping field -> int64 tensor ({streams}, K)")
    return problems
