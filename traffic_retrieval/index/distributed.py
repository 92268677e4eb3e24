"""Running ``index`` under torchrun: each rank encodes its share of the planned
shards; rank 0 alone touches SQLite and FAISS. Process groups use gloo on the CPU
and NCCL on GPUs (one GPU per rank, ``cuda:LOCAL_RANK``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta


@dataclass
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group (and destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env() -> Ranks:
    """torchrun's WORLD_SIZE / RANK / LOCAL_RANK, or a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return Ranks()
    return Ranks(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: str, ranks: Ranks) -> str:
    """``cuda`` becomes this rank's GPU; anything else is used as given."""
    if ranks.distributed and device == "cuda":
        return f"cuda:{ranks.local_rank}"
    return device


def start(ranks: Ranks, device: str) -> Ranks:
    """Join (or reuse) the default process group."""
    if not ranks.distributed:
        return ranks
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return ranks
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    # generous timeout: the other ranks wait while rank 0 scans and checksums the gallery
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(hours=2))
    return Ranks(ranks.rank, ranks.world_size, ranks.local_rank, owns_group=True)


def finish(ranks: Ranks) -> None:
    if ranks.owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()


def scatter(per_rank: list | None, ranks: Ranks):
    """Rank 0's ``per_rank[r]`` delivered to rank r."""
    if not ranks.distributed:
        return per_rank[0]
    import torch.distributed as dist

    received = [None]
    dist.scatter_object_list(received, per_rank if ranks.is_main else None, src=0)
    return received[0]


def all_gather(value, ranks: Ranks) -> list:
    if not ranks.distributed:
        return [value]
    import torch.distributed as dist

    gathered = [None] * ranks.world_size
    dist.all_gather_object(gathered, value)
    return gathered
