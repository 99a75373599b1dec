"""torchrun support: process group setup, rank-0-only writing, a replica agreement check.

Launched by `torchrun --nproc_per_node=K`, every process reads RANK / WORLD_SIZE / LOCAL_RANK
from the environment; gloo is used on the CPU and nccl on GPUs. Launched plainly, everything
here degrades to a single process (rank 0 of 1) and no process group is created.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int  # this process's global rank
    world: int  # number of processes
    local_rank: int  # rank on this machine (selects the GPU)
    device: torch.device  # device this rank trains on

    @property
    def is_main(self) -> bool:
        """Only the main rank writes checkpoints, bundles, logs and summaries."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> DistInfo:
    """Join the torchrun process group if launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local, device=dev)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def shutdown(info: DistInfo, drain_s: float = 0.25) -> None:
    """Leave the process group. Drop every DDP module first (they hold the group too).

    The gloo worker thread frees each finished collective a moment after the caller has been
    released, and freeing one that holds Python tensors needs the GIL. Destroying the group joins
    that thread, from a Python deallocation that holds the GIL: if the thread is still freeing,
    both wait forever (seen in about 1 run in 10 of the two-rank test on a loaded 2-core machine,
    gdb: ~ProcessGroupGloo joining pt_gloo_runloop, which waits in decref_pyobject). Sleeping
    releases the GIL and lets it finish first."""
    if info.distributed and dist.is_initialized():
        gc.collect()  # a DDP module kept by a reference cycle goes now, while the group is still registered
        time.sleep(drain_s)
        dist.destroy_process_group()


@torch.no_grad()
def replica_max_difference(module: nn.Module, info: DistInfo) -> float:
    """Largest |w_rank - w_0| over every parameter and rank (0.0 when replicas agree bitwise)."""
    if not info.distributed:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())
