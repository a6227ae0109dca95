"""Data-parallel training with PyTorch's own engine (torch.distributed + DDP), and the
device switches of the GPU path (bf16 autocast, torch.compile).

    torchrun --nproc_per_node 2 -m flowdiff train --config CFG --out MODEL_DIR
    torchrun --nnodes 2 --node_rank R --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
             --nproc_per_node 4 -m flowdiff train --config CFG --out MODEL_DIR

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; ``setup`` joins the
process group (gloo on CPU, NCCL on CUDA, from ``train.device``). Without those variables
everything runs as one process (world size 1) through the same code.

How the ranks stay one run:

* ``train.batch_size`` is the GLOBAL batch per micro-batch. Each epoch permutes all windows
  with ``DistributedSampler(seed=train.seed + 1)`` and ``set_epoch(epoch)``; rank r reads
  only its shard, the permutation positions r, r + N, r + 2N, ... of each global batch.
  The global batch of step k is the same set of windows for every number of ranks N (N must
  divide batch_size), so one process and N ranks see the same data.
* The diffusion noise (t and the Gaussian noise) is drawn for the whole global batch from
  one generator seeded alike on every rank; rank r keeps the rows of its windows. With
  dropout 0 an N-rank step equals a one-process step up to float summation order.
* DDP averages the gradients; one all-reduce per optimiser step carries the loss and a
  "not finite" flag, so the lr schedule sees the global loss and a NaN on any rank makes
  every rank skip (or restore) the same step.
* The data position (epoch, batch in epoch) and the noise generator are global, so a
  checkpoint resumes with any number of ranks. Only rank 0 writes checkpoints, logs, the
  loss curve and the artifact.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in the run: rank of world_size; local_rank on its node."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()
_joined_here = False  # this module called init_process_group (so finish() destroys it)


def launched_by_torchrun(environ: dict | None = None) -> bool:
    env = os.environ if environ is None else environ
    return "RANK" in env and "WORLD_SIZE" in env


def backend_for(device: str) -> str:
    """gloo for CPU, nccl for CUDA (``device`` as resolved: cpu | cuda | cuda:N)."""
    return "nccl" if device.startswith("cuda") else "gloo"


def setup(device: str) -> tuple[Ranks, str]:
    """Join torchrun's process group (once per process) -> (ranks, device for this rank).

    ``device`` is the resolved ``train.device`` (cpu or cuda); on CUDA each rank takes the
    GPU of its LOCAL_RANK. Without torchrun's variables: (SINGLE, device)."""
    import torch.distributed as dist

    global _joined_here
    if not launched_by_torchrun():
        return SINGLE, device
    ranks = Ranks(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                  local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        device = f"cuda:{ranks.local_rank}"
        torch.cuda.set_device(ranks.local_rank)
    if ranks.rank:  # rank 0 tells the story; the others only warn
        logging.getLogger("flowdiff").setLevel(logging.WARNING)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend_for(device))
        _joined_here = True
        log.info("rank %d of %d joined the process group (%s, device %s)", ranks.rank,
                 ranks.world_size, dist.get_backend(), device)
    return ranks, device


def current() -> Ranks:
    """The ranks of the joined process group, SINGLE when there is none."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def finish() -> None:
    """Leave the process group if ``setup`` joined it (end of ``flowdiff train``)."""
    import torch.distributed as dist

    global _joined_here
    if _joined_here and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _joined_here = False


def from_main(ranks: Ranks, make: Callable[[], T]) -> T:
    """``make()`` on rank 0, the result sent to every rank (e.g. the fitted codec, so the
    ranks cannot disagree on it and only one rank spends the time fitting it)."""
    if not ranks.parallel:
        return make()
    import torch.distributed as dist

    box: list[Any] = [make() if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- data
class ShardedBatches:
    """Endless batches of this rank's shard of the windows (N, L, F); see the module doc.

    ``next()`` -> (x (b, L, F) float32 on CPU, rows) where ``rows`` is a slice of the global
    batch's noise rows that belong to this rank. ``position()`` / ``seek()`` are global
    (epoch, batch in epoch), the same for every number of ranks."""

    def __init__(self, data: Dataset | torch.Tensor, global_batch: int, seed: int, ranks: Ranks):
        if global_batch % ranks.world_size:
            raise ValueError(f"train.batch_size {global_batch} is the global batch and must be "
                             f"a multiple of the number of ranks ({ranks.world_size})")
        self.data, self.ranks = data, ranks
        self.sampler = DistributedSampler(data, num_replicas=ranks.world_size, rank=ranks.rank,
                                          shuffle=True, seed=seed, drop_last=True)
        local = len(self.sampler)
        if local == 0:
            raise ValueError(f"{len(data)} windows cannot be shared by {ranks.world_size} ranks")
        self.local_batch = min(global_batch // ranks.world_size, local)  # all of them if fewer
        self.per_epoch = local // self.local_batch
        self.epoch = self.batch = 0
        self._indices: list[int] | None = None

    def position(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def seek(self, position: dict) -> None:
        self.epoch, self.batch = int(position["epoch"]), int(position["batch"])
        if self.batch >= self.per_epoch:  # resumed with another batch geometry
            self.epoch, self.batch = self.epoch + 1, 0
        self._indices = None

    def __iter__(self) -> ShardedBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, slice]:
        if self._indices is None:
            self.sampler.set_epoch(self.epoch)
            self._indices = list(self.sampler)  # this rank's positions r, r + N, ...
        b = self.local_batch
        rows = self._indices[self.batch * b:(self.batch + 1) * b]
        self.batch += 1
        if self.batch == self.per_epoch:
            self.epoch, self.batch, self._indices = self.epoch + 1, 0, None
        if isinstance(self.data, torch.Tensor):
            x = self.data[rows]                                                 # (b, L, F)
        else:
            x = torch.stack([torch.as_tensor(self.data[i]) for i in rows])      # (b, L, F)
        # global batch position of local row j is r + N * j
        return x, slice(self.ranks.rank, None, self.ranks.world_size)


# ---------------------------------------------------------------- model
class LossModule(nn.Module):
    """forward = DiffusionTS.loss, so DDP (which hooks forward) can wrap the training loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                horizon: int | None) -> torch.Tensor:
        return self.model.loss(x0, horizon=horizon, t=t, noise=noise)


def wrap(model: nn.Module, ranks: Ranks, device: str, compile_model: bool) -> nn.Module:
    """The module the training step calls: LossModule, in DDP when parallel, compiled when
    asked (torch.compile on CUDA only; see ``plan``)."""
    module: nn.Module = LossModule(model)
    if ranks.parallel:
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(device).index] if device.startswith("cuda") else None
        # buffers (diffusion schedules) are constants: no per-step broadcast (the option's
        # name changed in torch 2.13)
        import inspect

        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        sync = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
        module = DistributedDataParallel(module, device_ids=ids, **sync)
    if compile_model:
        module = torch.compile(module)
    return module


def no_sync(module: nn.Module, last: bool):
    """DDP's no_sync for all but the last micro-batch of a step (one all-reduce per step)."""
    inner = getattr(module, "_orig_mod", module)  # under torch.compile
    if last or not hasattr(inner, "no_sync"):
        return contextlib.nullcontext()
    return inner.no_sync()


def reduce_step(loss_total: float, bad: bool, ranks: Ranks) -> tuple[float, bool]:
    """(mean loss over ranks, any rank bad): one all-reduce, so every rank decides alike."""
    if not ranks.parallel:
        return loss_total, bad
    import torch.distributed as dist

    backend_cuda = dist.get_backend() == "nccl"
    values = torch.tensor([loss_total if not bad else 0.0, 1.0 if bad else 0.0],
                          dtype=torch.float64,
                          device=f"cuda:{torch.cuda.current_device()}" if backend_cuda else "cpu")
    dist.all_reduce(values)
    return float(values[0]) / ranks.world_size, bool(values[1] > 0)


# ---------------------------------------------------------------- GPU switches
@dataclass(frozen=True)
class DevicePlan:
    """What the trainer does on the resolved device: autocast dtype (None = fp32) and whether
    the loss module is compiled. bf16 and compile apply on CUDA only; on CPU they are off
    (and ``notes`` says so)."""
    device: str
    autocast_dtype: torch.dtype | None
    compile: bool
    notes: tuple[str, ...] = ()

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.autocast_dtype)


def plan(device: str, precision: str, compile_model: bool) -> DevicePlan:
    notes = []
    on_cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if precision == "bf16" and on_cuda else None
    if precision == "bf16" and not on_cuda:
        notes.append("train.precision bf16 applies on CUDA only: training in fp32 on " + device)
    if compile_model and not on_cuda:
        notes.append("train.compile applies on CUDA only: not compiling on " + device)
    return DevicePlan(device=device, autocast_dtype=dtype, compile=compile_model and on_cuda,
                      notes=tuple(notes))
