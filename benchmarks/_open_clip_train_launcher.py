"""Run open_clip's training program with our JSON architectures registered.

    python benchmarks/_open_clip_train_launcher.py --model TR-Tiny-RN --train-data train.tsv ...

takes exactly ``python -m open_clip_train.main``'s arguments. open_clip_train only
knows the architectures registered with open_clip, so ours (TR-*) are added first.

With TRB_EPOCH_TIMES=FILE set, the start and end of every ``train_one_epoch``
are appended to FILE as JSON lines (perf_counter seconds): the benchmark's
steady-state measurement, excluding checkpoint saving and evaluation.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _record_epochs(path: str) -> None:
    import open_clip_train.main as train_main

    original = train_main.train_one_epoch

    def timed_train_one_epoch(model, data, loss, epoch, *args, **kwargs):
        started = time.perf_counter()
        result = original(model, data, loss, epoch, *args, **kwargs)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"epoch": int(epoch) + 1, "start": started, "end": time.perf_counter(),
                                     "samples": data["train"].dataloader.num_batches * int(data["train"].dataloader.batch_size)}) + "\n")
        return result

    train_main.train_one_epoch = timed_train_one_epoch


def main(argv: list[str] | None = None) -> None:
    import open_clip

    from traffic_retrieval.model.factory import MODEL_CONFIG_DIR

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    import open_clip_train.main as train_main

    if os.environ.get("TRB_EPOCH_TIMES"):
        _record_epochs(os.environ["TRB_EPOCH_TIMES"])
    train_main.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
