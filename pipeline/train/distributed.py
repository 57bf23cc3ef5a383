"""torchrun support: the same `technogan train` command trains with DistributedDataParallel.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them training is one process.
Backend: nccl on CUDA, gloo on CPU. Only rank 0 logs to MLflow and writes checkpoints.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

from pipeline.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a user error."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device_preference: str = "auto") -> Dist:
    """Join the torchrun process group when launched by torchrun; a one-process Dist otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world > 1 and not tdist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def wrap(module: nn.Module, dist: Dist) -> nn.Module:
    """DDP around ``module`` when distributed. Buffers are not broadcast: the critic runs
    several forwards per step (real, fake, interpolates) and a broadcast between them
    would modify BatchNorm buffers in place under autograd's feet."""
    if not dist.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    with warnings.catch_warnings():
        # torch 2.13 renames the flag; the old one keeps exactly the behaviour wanted here
        warnings.simplefilter("ignore", FutureWarning)
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def rank_max(values: list[float], dist: Dist) -> list[float]:
    """Each value's largest over the ranks (one all-reduce): a flag set on any rank stops all
    of them at the same step (or DDP hangs), and the slowest clock sets everyone's."""
    if not dist.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return t.tolist()


def teardown(dist: Dist) -> None:
    if dist.enabled and tdist.is_initialized():
        tdist.destroy_process_group()
