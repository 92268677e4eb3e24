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
TextForm = Literal["sentence", "a3r"]
"""How captions and queries become the text the model encodes. sentence: as written; a3r: the seed's
(vehicle training captions are the bare phrase "white Audi Sedan"; every query loses its last character,
vehicle queries also their "A "/"An "/"This is a "/"This is an " prefix)."""

RouterKind = Literal["vocabulary", "a3r"]
"""How a query is routed to a category. vocabulary: whole words of the vocabulary or a generic vehicle
word, case-insensitive; a3r: the seed's (a type or brand occurs in the text, case-sensitive substring)."""

GalleryScope = Literal["routed", "all", "soft"]
"""Which gallery images a query is ranked against: routed (its category's), all (the seed's), or soft (all of
them, images outside the query's routed category scored ``routing_penalty`` lower: a misrouted image stays reachable)."""

RerankMethod = Literal["ours", "a3r"]
SoupCriterion = Literal["official", "r10"]
"""official: val official mAP@10; r10: val text-to-image R@10, one caption per image (open_clip's, the seed's)."""

CaptionForm = Literal["sentence", "bare"]
"""Augmented vehicle captions: sentence keeps the label's frame ("This is a white Audi Sedan."); bare is the seed's ("white Audi Sedan")."""

SaveOptimizer = Literal["last", "none"]
"""last: last.pt carries the optimizer state (exact --resume); none: no file does (resume restarts the optimizer)."""

GalleryNorm = Literal["none", "center"]
"""Inference-time adaptation of the gallery embeddings before ranking. none: as encoded; center: the gallery's
mean embedding (one global mean over the whole gallery) subtracted, then each re-normalised to unit length."""

GalleryBn = Literal["none", "adapt"]
"""The image tower's BatchNorm statistics when encoding a gallery. none: the training images'; adapt: re-estimated on the
gallery (AdaBN; a model without BatchNorm is unchanged)."""

ImageTta = Literal["none", "flip", "exposure", "flip+exposure"]
"""Test-time handling of every image the tower encodes for retrieval (gallery, image queries). none: the image as it is;
flip: the mean of the image's and its mirror image's embeddings, re-normalised (twice the image-tower compute); exposure:
an under-exposed image (a night frame) first brightened to middle grey in linear light, hues kept (data/exposure.py);
flip+exposure: both."""

QueryBank = Literal["none", "captions"]
"""Query-bank normalisation of the ranking (QB-Norm with an inverted softmax). none: rank by cosine; captions: each gallery image's
score is lowered by how strongly it matches a bank of typical queries, the training captions the checkpoint stores, so an image
that is near every query (a hub; camera galleries have many) stops winning by it."""

AugmentLevel = Literal["surveillance", "camera", "camera-wide", "camera-night"]
"""Training augmentations (train.augment.AUGMENT_LEVELS). surveillance: the mild set; camera: stronger, plus Gaussian blur, JPEG, gamma,
desaturation and border occluders; camera-wide: camera, plus motion blur and night exposures (darkness, a lamp's colour, amplified sensor
noise), resolution loss and shifts drawn per image; camera-night: camera, plus a quarter of the images as night frames after automatic
exposure (2-5 stops under, sensor noise, 8 bits, lifted to middle grey: what image_tta exposure makes of a night gallery)."""

AugmentSchedule = Literal["constant", "ramp"]
"""How the augmentations' probabilities change over a run (train.augment.augment_strength)."""
