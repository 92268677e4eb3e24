"""A run's log: RUN/train.log (one timestamped line per event; epoch records are JSON,
which ``curves.py`` reads back) and TensorBoard events in RUN/tensorboard."""

from __future__ import annotations

import time
from pathlib import Path


class RunLog:
    """Appends to RUN/train.log and TensorBoard at once."""

    def __init__(self, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(run_dir) / "train.log"
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def line(self, message: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(time.strftime("%Y-%m-%d %H:%M:%S ") + message + "\n")

    def scalars(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()
