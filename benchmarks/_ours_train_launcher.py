"""Run our trainer with ``traffic-retrieval train``'s flags and record each epoch's
training time through the trainer's public hook (``train/callbacks.py``).

    python benchmarks/_ours_train_launcher.py --work WORK --out RUN ...

With TRB_EPOCH_TIMES=FILE set, one JSON line per epoch is appended to FILE:
``epoch``, ``seconds`` (the epoch's training steps as the trainer times them, from
drawing the epoch's order to its last optimizer step: no validation, no checkpoint
saving, no start-up), ``samples`` and the trainer's own cumulative
``samples_per_second_reported``. That is the span the open_clip_train launcher
measures around ``train_one_epoch``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class EpochTimes:
    """A ``TrainCallback`` appending each finished epoch's timing to a JSON-lines file (rank 0)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_epoch_end(self, event) -> None:
        if event.rank != 0:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"epoch": event.epoch, "seconds": event.train_seconds, "samples": event.samples,
                                     "samples_per_second_reported": event.record["samples_per_second"]}) + "\n")


def main(argv: list[str] | None = None) -> int:
    import logging

    from traffic_retrieval.commands import train
    from traffic_retrieval.config import add_config_arguments, config_from_args
    from traffic_retrieval.errors import TrafficRetrievalError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help=f"YAML file or preset (default {train.PRESET})")
    add_config_arguments(parser, train.Config)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # open_clip's "initialized randomly" warning
    callbacks = [EpochTimes(os.environ["TRB_EPOCH_TIMES"])] if os.environ.get("TRB_EPOCH_TIMES") else []
    try:
        config = config_from_args(train.Config, args, preset=train.PRESET)
        train.print_result(train.run(config, callbacks=callbacks), config)
    except TrafficRetrievalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
