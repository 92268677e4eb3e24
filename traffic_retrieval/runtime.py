"""Where and how tensors run: device resolution, precision -> autocast dtype, the
autocast context, and the one distributed context (torchrun) used by training and
indexing. Every command reaches the hardware through these functions."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .errors import TrafficRetrievalError


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; anything else is checked, one-line error if unusable."""
    import re

    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise TrafficRetrievalError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise TrafficRetrievalError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise TrafficRetrievalError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return name


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: str):
    """The autocast dtype for a precision setting (``options.Precision``), or None for full fp32."""
    import torch

    if precision == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise TrafficRetrievalError(f"precision must be one of auto, fp32, bf16, fp16, got {precision!r}")
    return dtypes[precision]


def autocast(device: str, dtype):
    """``torch.autocast`` for ``device`` to ``dtype``; a no-op context for ``dtype`` None (fp32)."""
    import torch

    return torch.autocast(device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None)


@contextmanager
def inference(device: str, dtype):
    """No gradients, autocast: how every encoder runs a model."""
    import torch

    with torch.no_grad(), autocast(device, dtype):
        yield


@dataclass(frozen=True)
class Runtime:
    """A resolved device and its autocast dtype (None: fp32)."""

    device: str
    dtype: object = None

    def autocast(self):
        return autocast(self.device, self.dtype)


def resolve_runtime(device: str, precision: str) -> Runtime:
    device = resolve_device(device)
    return Runtime(device, autocast_dtype(precision, device))


# -- distributed (torchrun) --------------------------------------------------------
@dataclass
class DistributedContext:
    """This process's place among torchrun's processes (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # in a process group (launched by torchrun), even with one process
    owns_group: bool = False  # this context initialised the group, so it destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK for every process it starts."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(device: str, timeout_hours: float | None = None) -> DistributedContext:
    """Join (or reuse) the process group when launched by torchrun, whatever the number of
    processes (``--nproc_per_node 1`` runs the same code path as 8 GPUs); gloo on the CPU,
    NCCL on CUDA. A plain ``python -m traffic_retrieval ...`` runs without one."""
    if not launched_by_torchrun():
        return DistributedContext()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local_device(device, DistributedContext(local_rank=local_rank, enabled=True)))
    owns = False
    if not dist.is_initialized():
        kwargs = {"timeout": timedelta(hours=timeout_hours)} if timeout_hours else {}
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", **kwargs)
        owns = True
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, enabled=True, owns_group=owns)


def local_device(device: str, context: DistributedContext) -> str:
    """``cuda`` becomes this rank's GPU under torchrun; anything else is used as given."""
    return f"cuda:{context.local_rank}" if device == "cuda" and context.enabled else device


def cleanup(context: DistributedContext) -> None:
    if context.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        import torch.distributed as dist

        dist.barrier()


def gather_features(features, context: DistributedContext):
    """All ranks' features in rank order, differentiable (``torch.distributed.nn``), so every
    rank computes the contrastive loss over the whole global batch."""
    if not context.enabled:
        return features
    import torch
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features.contiguous()), dim=0)


def scatter_objects(per_rank: list | None, context: DistributedContext):
    """Rank 0's ``per_rank[r]`` delivered to rank r."""
    if not context.enabled:
        return per_rank[0]
    import torch.distributed as dist

    received = [None]
    dist.scatter_object_list(received, per_rank if context.is_main else None, src=0)
    return received[0]


def all_gather_objects(value, context: DistributedContext) -> list:
    """Every rank's ``value``, in rank order."""
    if not context.enabled:
        return [value]
    import torch.distributed as dist

    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered
