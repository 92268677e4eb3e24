"""The batch arithmetic and learning-rate schedule of a run: how many samples a step
takes, how many steps an epoch has, which rows each micro-batch holds, and the
warmup-then-cosine learning rate of every step."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import TrafficRetrievalError


def cosine_lr(step: int, base_lr: float, warmup: int, total_steps: int) -> float:
    """Linear warmup over ``warmup`` steps, then a cosine decay to 0 at ``total_steps``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass(frozen=True)
class Schedule:
    batch_size: int  # the global batch of one micro-batch, split across the ranks
    grad_accum: int  # micro-batches per optimizer step
    steps_per_epoch: int  # optimizer steps
    epochs: int  # epochs the run trains
    base_lr: float
    warmup: int  # steps
    schedule_epochs: int | None = None  # the cosine's length in epochs (None: ``epochs``); the seed ran 5 of 30

    @property
    def total_steps(self) -> int:
        """The cosine's length in steps: it reaches 0 after ``schedule_epochs`` epochs."""
        return self.steps_per_epoch * (self.schedule_epochs or self.epochs)

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    def lr(self, step: int) -> float:
        return cosine_lr(step, self.base_lr, self.warmup, self.total_steps)

    def micro_batches(self, order, step_in_epoch: int) -> list:
        """The global row indices of each micro-batch of an epoch's ``step_in_epoch``-th step,
        ``order`` being the epoch's permutation of the rows."""
        first = step_in_epoch * self.samples_per_step
        return [order[first + m * self.batch_size : first + (m + 1) * self.batch_size] for m in range(self.grad_accum)]


def plan_schedule(num_samples: int, batch_size: int, grad_accum: int, epochs: int, lr: float, warmup: int, world_size: int = 1,
                  schedule_epochs: int | None = None) -> Schedule:
    """The schedule for ``num_samples`` training rows. A batch larger than the data shrinks to
    it, and so does the accumulation (a micro-batch past the data would be empty), so a tiny
    data set still trains one full step per epoch. ``schedule_epochs`` (at least ``epochs``)
    stretches the cosine beyond the epochs run, as the seed's 30-epoch schedule of which 5 ran."""
    batch_size = min(batch_size, num_samples)
    if batch_size % world_size:
        below, above = batch_size - batch_size % world_size, batch_size + world_size - batch_size % world_size
        nearest = f"{below} or {above}" if below else f"{above}"
        raise TrafficRetrievalError(f"batch_size {batch_size} does not split evenly across {world_size} processes; use {nearest} "
                                    f"(or --grad-accum to reach a larger effective batch)")
    if schedule_epochs is not None and schedule_epochs < epochs:
        raise TrafficRetrievalError(f"schedule_epochs ({schedule_epochs}) must be at least epochs ({epochs}): the cosine would end before the run")
    grad_accum = max(1, min(grad_accum, num_samples // batch_size))
    steps_per_epoch = num_samples // batch_size // grad_accum
    return Schedule(batch_size, grad_accum, steps_per_epoch, epochs, lr, warmup, schedule_epochs)
