"""Write a night-time copy of one labelled split of a dataset, to choose night-robust
settings on (a chooser split: the project's own idea of night, never a check).

The camera galleries the project chooses on (our renderer's ``val_camera``, the independent
renderer's ``dev`` look) are day scenes: nothing in them is under-exposed, so no setting that
matters at night can be chosen on them. This script re-exposes every image of a labelled
split as a street camera sees it at night, in linear light (physics, not a look):

* the scene 2-4 stops under a day exposure (a lit street at night), with a white balance
  set for the wrong light (a quarter to a half of the way toward a warm or a cold lamp);
* photon (shot) noise and read noise of the sensor, in linear light;
* the camera's automatic gain brightening it back by 0-2 stops (never all the way: at night
  it runs out of gain), then sRGB encoding and a JPEG at quality 30-70.

The copy has the dataset's layout (``train``, ``val``, ``test``, ``ground_truth`` and
the other splits are symlinks to the source; only ``SPLIT/SPLIT_images`` is re-exposed, with
the same file names), so ``prepare``'s work folder of the source dataset scores it::

    python benchmarks/night_split.py --data DATA --split val_camera --out DATA-night
    python benchmarks/bench_transfer.py ...   # or predict/evaluate with DATA-night's images

Deterministic given ``--seed`` (one random stream per image, keyed by its file name).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from pathlib import Path

import numpy as np

STOPS_UNDER = (2.0, 4.0)  # how far under a day exposure the scene is
GAIN_STOPS = (0.0, 2.0)  # how much of it the camera's gain gives back
WHITE_BALANCE = (0.25, 0.5)  # how far toward the lamp's colour the picture stays
LAMPS = ((1.0, 0.78, 0.5), (1.0, 0.88, 0.72), (0.82, 0.92, 1.0))  # sodium / warm LED / cold LED, linear RGB gains
SHOT_NOISE = (0.0005, 0.003)  # variance per unit of linear signal
READ_NOISE = (0.001, 0.004)  # std in linear units
JPEG_QUALITY = (30, 70)


def night_exposure(rgb_uint8: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(night image as uint8 HxWx3, JPEG quality to save it at)."""
    import torch

    from traffic_retrieval.data.exposure import linear_to_srgb, srgb_to_linear

    linear = srgb_to_linear(torch.from_numpy(rgb_uint8.astype(np.float64) / 255.0)).numpy()
    exposure = 2.0 ** -rng.uniform(*STOPS_UNDER)
    lamp = np.array(LAMPS[rng.integers(len(LAMPS))])
    cast = 1.0 + rng.uniform(*WHITE_BALANCE) * (lamp - 1.0)
    signal = linear * exposure * cast
    shot, read = rng.uniform(*SHOT_NOISE), rng.uniform(*READ_NOISE)
    noisy = signal + rng.standard_normal(signal.shape) * np.sqrt(shot * np.maximum(signal, 0.0) + read ** 2)
    gained = noisy * 2.0 ** rng.uniform(*GAIN_STOPS)
    out = np.round(linear_to_srgb(torch.from_numpy(gained)).numpy() * 255.0).astype(np.uint8)
    return out, int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))


def image_rng(seed: int, name: str) -> np.random.Generator:
    key = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")
    return np.random.default_rng(key)


def write_night_copy(data: Path, split: str, out: Path, seed: int) -> int:
    """Writes ``out`` (the dataset with ``split``'s images re-exposed); returns the images written."""
    from PIL import Image
    from tqdm import tqdm

    source = data / split / f"{split}_images"
    if not source.is_dir():
        raise SystemExit(f"error: {source}: no such folder (is --split a labelled split of --data?)")
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(data.iterdir()):
        if entry.name != split and not (out / entry.name).exists():
            os.symlink(entry.resolve(), out / entry.name)
    (out / split).mkdir(exist_ok=True)
    for entry in sorted((data / split).iterdir()):
        if entry.name != source.name and not (out / split / entry.name).exists():
            os.symlink(entry.resolve(), out / split / entry.name)
    target = out / split / source.name
    target.mkdir(exist_ok=True)
    files = sorted(path for path in source.iterdir() if path.is_file())
    for path in tqdm(files, desc=f"night {split}", unit="img"):
        night, quality = night_exposure(np.asarray(Image.open(path).convert("RGB")), image_rng(seed, path.name))
        buffer = io.BytesIO()
        Image.fromarray(night).save(buffer, format="JPEG", quality=quality)
        temporary = target / f".{path.name}.tmp"
        temporary.write_bytes(buffer.getvalue())
        os.replace(temporary, target / path.name)  # the source's file name, whatever its extension: readers sniff the format
    return len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a dataset in the challenge layout")
    parser.add_argument("--split", default="val_camera", help="the labelled split to re-expose (default: val_camera)")
    parser.add_argument("--out", type=Path, required=True, help="where the copy goes (new, or an earlier copy to complete)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    count = write_night_copy(args.data, args.split, args.out, args.seed)
    print(f"night copy: {count} images of {args.data / args.split} -> {args.out / args.split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
