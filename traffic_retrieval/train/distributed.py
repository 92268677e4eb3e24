"""torchrun / DDP support: process-group setup and feature gathering.

Under ``torchrun --nproc_per_node N`` every rank takes its slice of each global
batch. Features are all-gathered *with gradients*, so every rank computes the
contrastive loss over the whole global batch (every image against every text),
exactly as one process would; DDP then averages gradients, which makes a
multi-process step equal to a one-process step with the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # in a process group (launched by torchrun), even with one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK for every process it starts."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(device: str) -> DistributedContext:
    """Join the process group when launched by torchrun, whatever the number of
    processes (``--nproc_per_node 1`` runs the same DDP code path as 8 GPUs); gloo on
    CPU, nccl on CUDA. A plain ``python -m traffic_retrieval train`` runs without one."""
    if not launched_by_torchrun():
        return DistributedContext()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, enabled=True)


def local_device(device: str, context: DistributedContext) -> str:
    return f"cuda:{context.local_rank}" if device == "cuda" and context.enabled else device


def gather_features(features, context: DistributedContext):
    """All ranks' features in rank order, differentiable (torch.distributed.nn)."""
    if not context.enabled:
        return features
    import torch
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features.contiguous()), dim=0)


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        import torch.distributed as dist

        dist.barrier()


def cleanup(context: DistributedContext) -> None:
    if context.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
