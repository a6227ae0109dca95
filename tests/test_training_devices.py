"""The device side of training, covered on CPU (no GPU here; CUDA availability is the one
thing faked): device auto, the gloo/NCCL choice, bf16 autocast and torch.compile as CUDA-only
switches, and the global-batch sharding of the windows over ranks."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from tinymodel import TINY

from flowdiff.daemon.preflight import check_device
from flowdiff.daemon.preflight import resolve_device as serve_device
from flowdiff.model import ConfigError, DiffusionTS, TrainConfig, distributed
from flowdiff.model.config import resolve_device
from flowdiff.model.trainer import train


def test_device_auto_picks_cuda_only_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == serve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="train.device: 'cuda' requested"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == serve_device("auto") == "cuda"
    assert check_device("auto") is None  # serve.device: auto passes the preflight


def test_backend_follows_the_device():
    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.backend_for("cuda") == distributed.backend_for("cuda:1") == "nccl"


def test_bf16_and_compile_apply_on_cuda_only():
    cpu = distributed.plan("cpu", "bf16", True)
    assert cpu.autocast_dtype is None and cpu.compile is False
    assert any("bf16 applies on CUDA only" in n for n in cpu.notes)
    assert any("compile applies on CUDA only" in n for n in cpu.notes)
    assert isinstance(cpu.autocast(), contextlib.nullcontext)
    cuda = distributed.plan("cuda:0", "bf16", True)
    assert cuda.autocast_dtype == torch.bfloat16 and cuda.compile and not cuda.notes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": the object is what counts
        ctx = cuda.autocast()
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda"
    assert ctx.fast_dtype == torch.bfloat16
    fp32 = distributed.plan("cuda:0", "fp32", False)
    assert fp32.autocast_dtype is None and not fp32.compile


def test_precision_is_validated():
    with pytest.raises(ConfigError, match=r"train.precision: one of fp32, bf16, got 'fp16'"):
        TrainConfig.from_dict({"precision": "fp16"})
    with pytest.raises(ConfigError, match=r"train.compile: expected"):
        TrainConfig.from_dict({"compile": "yes"})
    assert TrainConfig.from_dict({"precision": "bf16", "compile": True}).compile is True


def test_cuda_switches_leave_a_cpu_run_unchanged(tmp_path, caplog):
    windows = torch.rand((40, TINY.seq_len, TINY.feature_size),
                         generator=torch.Generator().manual_seed(2))
    base = {"steps": 6, "batch_size": 8, "grad_accum": 1, "warmup": 2, "checkpoint_every": 6,
            "val_every": 0, "log_every": 3, "seed": 4, "device": "cpu"}
    models = []
    for name, extra in (("fp32", {}), ("switches", {"precision": "bf16", "compile": True})):
        torch.manual_seed(0)
        model = DiffusionTS(TINY)
        with caplog.at_level("WARNING"):
            train(model, windows, None, TrainConfig(**base, **extra), tmp_path / name)
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.equal(a, b)
    assert "train.precision bf16 applies on CUDA only" in caplog.text


def test_global_batches_are_the_same_windows_for_any_number_of_ranks():
    data = torch.arange(50, dtype=torch.float32).view(50, 1, 1)  # window i holds the value i
    one = distributed.ShardedBatches(data, 8, seed=3, ranks=distributed.SINGLE)
    two = [distributed.ShardedBatches(data, 8, seed=3, ranks=distributed.Ranks(r, 2, r))
           for r in (0, 1)]
    seen = []
    for _step in range(14):  # more than one epoch (6 global batches of 8 per epoch)
        x, rows = next(one)
        parts = [next(shard) for shard in two]
        assert rows == slice(0, None, 1)
        assert [p[1] for p in parts] == [slice(0, None, 2), slice(1, None, 2)]
        merged = torch.empty_like(x)  # rank r's row j is global row r + 2 j
        merged[0::2], merged[1::2] = parts[0][0], parts[1][0]
        assert torch.equal(merged, x)
        seen.append(x.flatten().tolist())
    assert len({w for batch in seen[:6] for w in batch}) == 48  # an epoch: no window twice
    assert one.position() == two[0].position() == {"epoch": 2, "batch": 2}
    again = distributed.ShardedBatches(data, 8, seed=3, ranks=distributed.SINGLE)
    again.seek({"epoch": 2, "batch": 1})
    assert next(again)[0].flatten().tolist() == seen[-1]
    with pytest.raises(ValueError, match="batch_size 9 is the global batch"):
        distributed.ShardedBatches(data, 9, seed=3, ranks=distributed.Ranks(0, 2, 0))
