"""The values a setting may take, declared once.

Every config dataclass annotates its fields with these types; the config layer
(``config.py``) checks them when a config is built (from YAML, flags or code) and
turns them into argparse choices, so ``precision``, ``resize_mode`` and ``device``
mean the same thing, with the same error, in every command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal


@dataclass(frozen=True)
class Pattern:
    """A string setting that must match ``regex`` in full; ``describe`` says what fits."""

    regex: str
    describe: str


Precision = Literal["auto", "fp32", "bf16", "fp16"]
"""auto: bf16 autocast where the CPU has it, bf16 or fp16 on CUDA; fp32: none; bf16/fp16: autocast to that type."""

ResizeMode = Literal["pad", "squash", "crop", "longest", "shortest"]
"""pad (= open_clip's longest): scale the longer side, centre on a fill colour (the seed's); squash: resize, ignoring the aspect ratio; crop (= open_clip's shortest): resize the short side, centre-crop."""

Device = Annotated[str, Pattern(r"auto|cpu|cuda(?::\d+)?", "auto, cpu, cuda or cuda:N")]
"""auto: cuda when available, else cpu."""

Loss = Literal["multi-positive", "clip"]
IndexKind = Literal["auto", "flat", "hnsw", "ivf", "ivfpq"]
SoupMethod = Literal["greedy", "uniform"]
SearchCategory = Literal["routed", "pedestrian", "vehicle", "all"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
