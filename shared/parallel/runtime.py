"""Starting and stopping torch.distributed under `torchrun` (hand-written plumbing, not generated).

`torchrun --nproc-per-node N script.py` starts N processes and tells each who it is through environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `init_distributed()` reads them, joins the process group
(gloo on CPU, NCCL on CUDA) with a bounded timeout, so a dead or stuck peer ends the job instead of hanging it,
and picks this rank's device. Run as a plain `python script.py`, it returns a one-process context without
starting anything, so the same script runs on a laptop and on a cluster.
"""
from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from shared.device import pick_device


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    group: dist.ProcessGroup | None = None       # None: a single process, nothing to communicate

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, prints and writes checkpoints; the others stay quiet."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.group is not None


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: float = 300) -> DistributedContext:
    """Join the torchrun job this process belongs to (or return a one-process context when not under torchrun).

    device: "auto" gives each rank its own GPU (cuda:LOCAL_RANK) when there are GPUs, else the CPU.
    backend: default NCCL for CUDA, gloo otherwise. timeout_s bounds every collective: a peer that died or hangs
    makes the others fail after at most this long, with an error naming the collective."""
    if not launched_by_torchrun():
        return DistributedContext(device=pick_device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    chosen = pick_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    backend = backend or ("nccl" if chosen.type == "cuda" else "gloo")
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=chosen if chosen.type == "cuda" else None)
    return DistributedContext(rank, world_size, local_rank, chosen, dist.group.WORLD)


def shutdown_distributed(ctx: DistributedContext) -> None:
    """Leave the process group. Collect garbage first: a DDP/FSDP object freed during the process's exit, after the
    group is gone, sometimes aborts the process ("terminate called without an active exception") after all work is
    done, which torchrun reports as a failure."""
    gc.collect()
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
