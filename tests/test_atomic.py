"""Atomic writes (``flowdiff.atomic``): a writer that fails or is killed mid-write leaves the
previous file whole. The kill test uses a real process and SIGKILL, not a mock: the child
saves a daemon state / a checkpoint over and over, and is killed while a temporary file of
the next version is being written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from flowdiff.atomic import atomic_file, write_atomic_via, write_text_atomic

REPO = Path(__file__).resolve().parents[1]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_file(target, "w", encoding="utf-8") as handle:
            handle.write("half of the new")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    write_atomic_via(target, lambda name: Path(name).write_text("new"))
    assert target.read_text() == "new" and oct(target.stat().st_mode & 0o777) == "0o644"


CHILD = textwrap.dedent("""
    import sys
    import torch
    from pathlib import Path

    kind, directory = sys.argv[1], Path(sys.argv[2])

    # ~24 MB a save, so that one save takes long enough to be caught mid-write
    if kind == "state":
        from flowdiff.daemon.state import StreamState, save_state

        def save(version):
            save_state(directory, StreamState(
                contexts=torch.full((1, 6_000_000, 1), version / 1e6),
                rng_states=[torch.Generator().get_state()], next_seq=torch.tensor([version]),
                clocks=torch.tensor([1e9 + version], dtype=torch.float64), turns=version,
                fingerprint={"streams": 1}))
    else:
        from flowdiff.model.checkpoint import atomic_torch_save

        def save(version):
            atomic_torch_save({"version": version,
                               "weights": torch.full((6_000_000,), float(version))},
                              directory / "checkpoint.pt")

    save(1)
    print("saved", flush=True)
    version = 2
    while True:
        save(version)
        version += 1
""")


def _read(kind: str, directory: Path) -> int:
    """The version in the file, after checking it is whole."""
    if kind == "state":
        from flowdiff.daemon.state import load_state

        state = load_state(directory, {"streams": 1})  # every field checked on load
        assert torch.all(state.contexts == state.contexts.flatten()[0])
        return state.turns
    raw = torch.load(directory / "checkpoint.pt", weights_only=True)
    assert raw["weights"].shape == (6_000_000,)
    assert torch.all(raw["weights"] == float(raw["version"]))
    return raw["version"]


@pytest.mark.parametrize("kind", ["state", "checkpoint"])
def test_sigkill_during_a_save_leaves_the_previous_file_intact(kind, tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert child.stdout.readline().strip() == "saved"
        deadline = time.monotonic() + 60
        temps: list[Path] = []
        while not temps and time.monotonic() < deadline:  # the next version is being written
            temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")
                     and p.stat().st_size > 0]
        assert temps, "no save in progress was seen"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), \
        "the kill did not land mid-write (no temporary file left)"
    version = _read(kind, tmp_path)  # the last complete save, whole
    assert version >= 1
    # the next save of the same file replaces it and removes what the killed writer left
    from flowdiff.daemon.state import STATE_FILE, load_state, save_state
    from flowdiff.model.checkpoint import atomic_torch_save

    if kind == "checkpoint":
        atomic_torch_save({"version": version + 100,
                           "weights": torch.full((6_000_000,), version + 100.0)},
                          tmp_path / "checkpoint.pt")
    else:
        state = load_state(tmp_path, {"streams": 1})
        state.turns = version + 100
        save_state(tmp_path, state)
    assert _read(kind, tmp_path) == version + 100
    final = STATE_FILE if kind == "state" else "checkpoint.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [final]
