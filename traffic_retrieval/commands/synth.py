"""``synth``: generate a deterministic synthetic dataset in the exact challenge layout
(train and val labels, a test gallery in a surveillance look, its queries and their
ground truth, and a camera-domain val split in the test's look, ``val_camera``), so the
whole pipeline runs offline (``synth/``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import option

HELP = "generate a synthetic dataset in the challenge layout"


@dataclass
class SynthCommandConfig:
    out: Path | None = option(None, help="dataset root to write")
    seed: int = option(0, help="random seed: the same seed gives the same files")
    workers: int = option(2, minimum=1, help="drawing processes (the output is the same for any number)")
    overwrite: bool = option(False, help="replace the split folders of an earlier dataset in --out")
    progress: bool = option(True, help="progress bars")
    train_pedestrians: int | None = option(None, minimum=0, metavar="N", help="images per split and category (defaults: the generator's)")
    train_vehicles: int | None = option(None, minimum=0, metavar="N")
    val_pedestrians: int | None = option(None, minimum=0, metavar="N")
    val_vehicles: int | None = option(None, minimum=0, metavar="N")
    test_pedestrians: int | None = option(None, minimum=0, metavar="N")
    test_vehicles: int | None = option(None, minimum=0, metavar="N")
    val_camera_pedestrians: int | None = option(None, minimum=0, metavar="N",
                                                help="camera-domain val split in the test's surveillance look (default: as many as val; 0 and 0: none)")
    val_camera_vehicles: int | None = option(None, minimum=0, metavar="N")


Config = SynthCommandConfig
SIZES = ("train_pedestrians", "train_vehicles", "val_pedestrians", "val_vehicles", "test_pedestrians", "test_vehicles",
         "val_camera_pedestrians", "val_camera_vehicles")


def run(config: SynthCommandConfig) -> dict:
    from ..errors import TrafficRetrievalError
    from ..synth import SynthConfig, generate_dataset

    if config.out is None:
        raise TrafficRetrievalError("synth needs --out DIR")
    sizes = {key: getattr(config, key) for key in SIZES if getattr(config, key) is not None}
    return generate_dataset(SynthConfig(out=config.out, seed=config.seed, workers=config.workers, overwrite=config.overwrite, **sizes),
                            progress=config.progress)


def print_result(summary: dict, config: SynthCommandConfig) -> None:
    print(json.dumps(summary, indent=2))
