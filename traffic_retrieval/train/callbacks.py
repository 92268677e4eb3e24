"""The trainer's public hook: code that watches a run (benchmarks, notebooks, a
scheduler) without patching it.

    class Timer(TrainCallback):
        def on_epoch_end(self, event):
            print(event.epoch, event.train_seconds, event.samples / event.train_seconds)

    commands.train.run(config, callbacks=[Timer()])

Every method is optional (``run`` calls only those an object has) and is called
on every rank; epochs are numbered from 1, as in ``train.log``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EpochEnd:
    epoch: int  # the epoch just finished, from 1
    epochs: int  # of the run
    step: int  # optimizer steps taken so far
    record: dict  # the epoch's train.log record: loss, samples_per_second, val (when validated)
    samples: int  # global samples the epoch trained on
    train_seconds: float  # the epoch's training steps only: no validation, no checkpoint saving
    rank: int = 0
    checkpoints: tuple[Path, ...] = field(default=())  # files written for this epoch (rank 0; none elsewhere)


class TrainCallback:
    """No-op base: override the events you want."""

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Before the epoch's first step (``epoch`` from 1)."""

    def on_epoch_end(self, event: EpochEnd) -> None:
        """After the epoch's validation and checkpoints."""

    def on_step(self, step: int, loss: float, lr: float) -> None:
        """After every optimizer step: the steps taken so far (from 1), the step's loss and the learning rate it used."""


def notify(callbacks, event: str, *args) -> None:
    for callback in callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(*args)
