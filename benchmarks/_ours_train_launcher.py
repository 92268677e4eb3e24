"""Run ``traffic-retrieval train ...`` and record when each epoch's steps end.

    python benchmarks/_ours_train_launcher.py --work WORK --out RUN ...

takes ``traffic-retrieval train``'s flags. With TRB_EPOCH_TIMES=FILE set, the
start and end of every ``save_epoch`` call (the trainer saves after each epoch's
steps) are appended to FILE as JSON lines (perf_counter seconds), so an epoch's
training time is (this epoch's save start - the previous save's end): the same
span the open_clip_train launcher measures, excluding checkpoint saving.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _record_epochs(path: str) -> None:
    import traffic_retrieval.train.trainer as trainer

    original = trainer.save_epoch

    def timed_save_epoch(model, heads, loaded, optimizer, record, best, config, run_dir, epoch, step, texts_by_category):
        started = time.perf_counter()
        original(model, heads, loaded, optimizer, record, best, config, run_dir, epoch, step, texts_by_category)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"epoch": int(epoch), "save_start": started, "save_end": time.perf_counter(),
                                     "samples_seen": record["step"] * int(config.batch_size) * int(config.grad_accum),
                                     "samples_per_second_reported": record["samples_per_second"]}) + "\n")

    trainer.save_epoch = timed_save_epoch


def main(argv: list[str] | None = None) -> int:
    from traffic_retrieval.cli import main as cli_main

    if os.environ.get("TRB_EPOCH_TIMES"):
        _record_epochs(os.environ["TRB_EPOCH_TIMES"])
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
