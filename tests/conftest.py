"""Shared fixtures: paths to the real data in ../shared/data (skipped with a reason if absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """Path to a file in ../shared/data, or skip the test saying which file is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (tests use ../shared/data when present)")
    return path


def generate_twice(model: Path, tmp_path: Path, records: int) -> list[bytes]:
    """The bytes of two seeded ``flowdiff generate`` runs of ``model`` (3 conditional
    steps), to check that generation reproduces."""
    from flowdiff.cli import main

    runs = []
    for name in ("x", "y"):
        path = tmp_path / f"{name}.jsonl"
        assert main(["generate", "--model", str(model), "--records", str(records), "--seed", "3",
                     "--start-ts", "1460390400", "--sampler", "conditional", "--steps", "3",
                     "--out", str(path)]) == 0
        runs.append(path.read_bytes())
    return runs


def assert_restore_continues(art, start_ts: float = 1_700_000_000.0) -> None:
    """Two streams of ``art`` (a loaded artifact): snapshot after two turns and restore
    into a fresh generator; its next two turns must equal the uninterrupted run's."""
    import pandas as pd

    from flowdiff.daemon.generator import StreamGenerator
    from flowdiff.model import make_sampler

    def generator():
        return StreamGenerator(art.model, art.codec, make_sampler("replacement", steps=2),
                               context=art.context, horizon=art.horizon, streams=2, seed=3)

    whole = generator()
    whole.start_unconditional(make_sampler("ddim", steps=2), start_ts=start_ts)
    turns = [whole.step().records for _ in range(4)]
    first = generator()
    first.start_unconditional(make_sampler("ddim", steps=2), start_ts=start_ts)
    first.step(), first.step()
    snapshot = first.snapshot({})
    resumed = generator()
    resumed.restore(snapshot, rebase_to=0.0)
    for expected in turns[2:]:
        pd.testing.assert_frame_equal(resumed.step().records, expected)


@pytest.fixture
def ugr16_sample() -> Path:
    return shared_file("ugr16/ugr16_sample_20k.csv")


@pytest.fixture
def ugr16_day1() -> Path:
    return shared_file("ugr16/ugr16_day1_train.csv.gz")


@pytest.fixture
def netshare_small() -> Path:
    return shared_file("netshare/ugr16-small.csv")


@pytest.fixture
def caida_pcap() -> Path:
    return shared_file("caida/caida-small-v1.pcap")


@pytest.fixture
def stock_csv() -> Path:
    return shared_file("timeseries/stock_data.csv")


@pytest.fixture
def etth_csv() -> Path:
    return shared_file("timeseries/ETTh.csv")


@pytest.fixture(scope="session")
def one_torch_thread():
    """The CI machine has 2 shared cores: multi-threaded torch kernels thrash under load
    (a tiny forward took 142 ms with 2 threads vs 4 ms with 1)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """THE tiny model of the suite: a real artifact trained once per session, through
    ``flowdiff train`` (the command's own code path), with configs/tiny-test.yaml on the
    first 1,500 UGR'16 records (a few seconds on one core; quality irrelevant). Every test
    that needs a trained model uses this one; none trains its own."""
    import torch

    from flowdiff.cli import main

    data = shared_file("ugr16/ugr16_sample_20k.csv")
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("train") / "model"
    assert main(["train", "--data", str(data), "--config",
                 str(REPO / "configs" / "tiny-test.yaml"), "--out", str(out)]) == 0
    return out


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 256 KiB tmpfs, so writes fail with ENOSPC like a full disk."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); needs root/CAP_SYS_ADMIN")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_fs(mount: Path, leave: int) -> Path:
    """A filler file taking all but about ``leave`` bytes of the file system at ``mount``."""
    import os

    stat = os.statvfs(mount)
    filler = mount / "filler"
    filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler
