#!/usr/bin/env python3
"""Foreign renderer: an independent synthetic dataset for checking camera-domain transfer.

The project's own synthetic generator (``traffic_retrieval/synth``) renders the data the
training recipes were developed on. A recipe that only works on that renderer's pixels
proves little, so this script is a *second, independent* renderer, written without
looking at the first one: its own figures, its own vehicles, its own caption grammar,
its own camera degradations. Train on its clean "web" look (train / val), score on its
camera-look gallery (test) and compare with the project's renderer to see whether a
recipe transfers.

    python benchmarks/foreign_renderer.py --out /tmp/foreign_dev
    python benchmarks/foreign_renderer.py --out /tmp/foreign_holdout --look holdout
    python benchmarks/foreign_renderer.py --out /tmp/foreign_holdout2 --look holdout2

Three camera looks exist for the test split only:

* ``dev``     - daytime street camera: street clutter, border occluders, perspective
                squeeze / shear, down-and-up scaling, blur, sensor noise, green/blue
                white balance, low contrast, JPEG quality 15-45.
* ``holdout`` - a different camera: night / dusk exposure and gamma, sodium-lamp cast,
                headlight glare, motion blur, interlacing or vignetting, an OSD time
                stamp, chroma bleeding, small rotation, partial desaturation, JPEG 20-60.
* ``holdout2`` - a third camera: overcast / rainy / foggy day seen by a high-mounted
                wide-angle dome. Grey-blue haze, wet darker ground, rain streaks, drops or
                a smudge on the dome, an occasional near cable; top-down keystone and
                barrel distortion; the object is only 44-125 native pixels, so the crop is
                upscaled; column noise, a cheap sensor's muted magenta-leaning colour
                matrix or an IR-cut-filter-off dawn look (washed out, never greyscale), a
                flat WDR tone curve, in-camera sharpening halos, low-bitrate flattened
                16 x 16 macro-blocks and a native JPEG 35-69 "I-frame", export JPEG 66-89.
                It was written later as a second never-tuned check, by someone who had
                not seen the training augmentations (nor the training recipe's notes).

Use ``dev`` while developing. The ``holdout`` and ``holdout2`` looks must NEVER be used to
choose a recipe, a hyper-parameter or a switch; they are only for final, once-only transfer
checks.

Layout written (the challenge's): ``train/train_label.txt`` + ``train/train_images/``,
``val/val_label.txt`` + ``val/val_images/``, ``test/test_text.txt`` + ``test/test_images/``,
``ground_truth/test_gt.txt`` and ``ground_truth/test_label.txt``. Label lines are
``IMAGE$ATTR$TEXT``. Every gallery image's own caption is one query; its relevant images
are all gallery images with the same ATTR.

Only the standard library, numpy and Pillow are used. Output is byte-identical for a given
``--seed`` and sizes whatever ``--workers`` is: every image draws from its own
``numpy.random.default_rng([seed, split, index, stream])``. The folder is filled under a
temporary sibling name and renamed into place at the end.

With the same seed and sizes, ``--look dev``, ``--look holdout`` and ``--look holdout2``
write identical train / val splits and the same gallery (same labels, captions, figures and
vehicles); only the test pixels differ. So the two looks can be compared image for image. The
train pedestrian lines drop ".jpg" from about half the names, as the real data does.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

# --------------------------------------------------------------------------------------
# Constants: label schema and vocabulary
# --------------------------------------------------------------------------------------

SS = 2  # figures and vehicles are drawn at SS x the final size, then reduced (anti-aliasing)
SPLITS = (("train", 0), ("val", 1), ("test", 2))
PEDESTRIAN_SHARE = 0.65

PED_FLAGS = (
    "Female", "AgeOver60", "Age18-60", "AgeLess18", "Front", "Side", "Back", "Hat",
    "Glasses", "HandBag", "ShoulderBag", "Backpack", "HoldObjectsInFront", "ShortSleeve",
    "LongSleeve", "UpperStride", "UpperLogo", "UpperPlaid", "UpperSplice", "LongCoat",
    "Skirt&Dress",
)

# label colour -> (weight, list of base RGB variants)
VEHICLE_COLORS = {
    "white": (26, [(236, 236, 234), (244, 243, 238), (228, 230, 232)]),
    "black": (21, [(22, 22, 25), (30, 30, 34), (18, 20, 24)]),
    "grey": (17, [(150, 152, 156), (178, 180, 184), (118, 120, 124), (195, 196, 198)]),
    "red": (9, [(188, 28, 32), (160, 20, 28), (205, 45, 40)]),
    "blue": (9, [(28, 72, 168), (20, 50, 120), (50, 100, 190)]),
    "brown": (4, [(112, 70, 40), (130, 88, 52), (92, 58, 36)]),
    "yellow": (4, [(236, 200, 28), (240, 214, 60)]),
    "green": (3.5, [(36, 128, 62), (28, 96, 48), (70, 150, 70)]),
    "orange": (2.5, [(238, 122, 28), (228, 100, 20)]),
    "purple": (1.5, [(104, 46, 138), (86, 40, 112)]),
    "pink": (1.5, [(236, 140, 172), (226, 120, 160)]),
}

VEHICLE_TYPES = {  # label type -> (weight, body shape)
    "Sedan": (30, "sedan"), "SUV": (20, "suv"), "Truck": (20, "truck"),
    "Bus": (10, "bus"), "Minivan": (10, "van"), "Microbus": (10, "microbus"),
}

# Brand -> (popularity, body shape, visual signature). Each brand has its own grille, and
# a logo / light / accent combination no other brand shares, so the brand is in the pixels.
BRANDS = {
    "Volkswagen": (14, "sedan", dict(grille="wide_bar", logo="vw", light="rect", drl=None, tail="rect")),
    "Toyota": (11, "sedan", dict(grille="toyota", logo="oval3", light="angular", drl=None, tail="angular")),
    "Honda": (9, "sedan", dict(grille="wing", logo="h_box", light="angular", drl=(120, 170, 255), tail="l_shape")),
    "Buick": (8, "sedan", dict(grille="waterfall", logo="tri_shield", light="angular", drl=None, tail="slit")),
    "Nissan": (7, "suv", dict(grille="vmotion", logo="circle_bar", light="l_shape", drl=(255, 255, 255), tail="l_shape")),
    "Audi": (7, "sedan", dict(grille="single_frame", logo="rings4", light="angular", drl=(255, 255, 255), tail="bar")),
    "Benz": (6, "sedan", dict(grille="wide_rect", logo="star", light="rect", drl=(255, 255, 255), tail="angular")),
    "BMW": (6, "sedan", dict(grille="kidney", logo="roundel", light="quad", drl=None, tail="l_shape")),
    "Hyundai": (5, "sedan", dict(grille="cascade", logo="slant_h", light="l_shape", drl=None, tail="rect")),
    "Ford": (5, "suv", dict(grille="hex_bars", logo="oval_blue", light="rect", drl=None, tail="vertical")),
    "Chevrolet": (5, "sedan", dict(grille="split", logo="bowtie", light="rect", drl=None, tail="round")),
    "Kia": (4, "sedan", dict(grille="tiger", logo="oval_red", light="angular", drl=None, tail="rect")),
    "BYD": (4, "sedan", dict(grille="dragon", logo="oval_text", light="slit", drl=None, tail="bar")),
    "Geely": (4, "sedan", dict(grille="ripple", logo="shield", light="slit", drl=(255, 255, 255), tail="slit")),
    "Mazda": (3, "sedan", dict(grille="pentagon", logo="wing", light="slit", drl=None, tail="round")),
    "PEUGEOT": (3, "sedan", dict(grille="frameless", logo="lion", light="fang", drl=(255, 255, 255), tail="fang")),
    "Jeep": (3, "suv", dict(grille="slots7", logo="none", light="round", drl=None, tail="vertical")),
    "Volvo": (3, "suv", dict(grille="iron", logo="circle_arrow", light="thor", drl=(255, 255, 255), tail="vertical")),
    "Iveco": (2, "van", dict(grille="van_hex", logo="letters_blue", light="angular", drl=None, tail="vertical")),
    "Dongfeng": (3, "truck", dict(grille="truck_hbars", logo="swallow", light="rect", drl=None, tail="rect", stripe=None)),
    "FAW": (3, "truck", dict(grille="truck_vbars", logo="eagle", light="round", drl=None, tail="round", stripe=None)),
    "Isuzu": (2, "truck", dict(grille="truck_mesh", logo="letters_red", light="rect", drl=None, tail="rect",
                               stripe=((200, 30, 30), "band"))),
    "Shacman": (2, "truck", dict(grille="truck_chrome", logo="triangle", light="quad", drl=None, tail="round",
                                 stripe=((40, 140, 80), "chevron"))),
    "Balong Heavy Truck": (1.5, "truck", dict(grille="truck_cross", logo="diamond", light="angular", drl=None,
                                              tail="rect", stripe=((240, 140, 20), "band"))),
    "Yutong": (3, "bus", dict(grille="bus_slot", logo="letters_chrome", light="vertical", drl=None, tail="vertical",
                              stripe=((210, 30, 40), "swoosh"))),
    "KINGLONG": (2, "bus", dict(grille="bus_mesh", logo="wing", light="quad", drl=None, tail="round",
                                stripe=((30, 80, 200), "band"))),
}
GENERIC_SIGNATURE = dict(grille="generic", logo="none", light="rect", drl=None, tail="rect")
HEAVY_BRANDS = ("Balong Heavy Truck", "Shacman", "Dongfeng", "FAW", "Isuzu", "Yutong", "KINGLONG", "Iveco")

# Vehicle box proportions (fractions of the box height) and width / height ranges per body.
BODY = {
    "sedan": dict(cabin=0.36, face=0.30, bumper=0.17, roof=0.70, aspect=(1.55, 1.9)),
    "suv": dict(cabin=0.40, face=0.29, bumper=0.15, roof=0.80, aspect=(1.35, 1.6)),
    "van": dict(cabin=0.46, face=0.26, bumper=0.15, roof=0.84, aspect=(1.2, 1.45)),
    "microbus": dict(cabin=0.50, face=0.24, bumper=0.14, roof=0.94, aspect=(1.05, 1.3)),
    "bus": dict(cabin=0.55, face=0.23, bumper=0.12, roof=0.98, aspect=(0.95, 1.2)),
    "truck": dict(cabin=0.33, face=0.36, bumper=0.15, roof=0.95, aspect=(1.0, 1.25)),
}

CLOTHES = [  # (rgb, weight) for upper garments, coats, skirts
    ((22, 22, 25), 6), ((238, 238, 232), 4), ((126, 126, 130), 3.5), ((30, 40, 82), 3.5),
    ((48, 92, 172), 3), ((172, 30, 36), 2), ((232, 150, 172), 1.5), ((204, 184, 142), 2),
    ((118, 78, 48), 2), ((50, 102, 62), 1.5), ((232, 200, 44), 1), ((112, 60, 132), 1),
    ((236, 122, 40), 1), ((122, 172, 222), 1.5), ((92, 92, 52), 1),
]
TROUSERS = [
    ((24, 24, 28), 6), ((40, 56, 96), 4), ((62, 92, 140), 3), ((118, 118, 122), 2.5),
    ((184, 168, 128), 1.5), ((226, 224, 216), 1), ((90, 62, 40), 1),
]
SKIN = [(241, 203, 170), (224, 178, 140), (198, 146, 104), (150, 102, 70), (232, 196, 160)]
HAIR = [((20, 16, 14), 6), ((56, 36, 24), 3), ((96, 64, 36), 1.5), ((176, 140, 80), 0.6), ((120, 44, 30), 0.5)]
GREY_HAIR = [(178, 178, 176), (204, 204, 200), (226, 226, 222), (150, 150, 148)]


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------

def weighted_choice(rng, items, weights):
    p = np.asarray(weights, dtype=np.float64)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def pick(rng, options):
    return options[int(rng.integers(len(options)))]


def pick_weighted_rgb(rng, table, spread=14):
    rgb = weighted_choice(rng, [c for c, _ in table], [w for _, w in table])
    return jitter(rgb, rng, spread)


def jitter(rgb, rng, spread):
    return clamp_rgb([v + rng.uniform(-spread, spread) for v in rgb])


def clamp_rgb(values):
    return tuple(int(max(0, min(255, round(v)))) for v in values)


def shade(rgb, k):
    return clamp_rgb([v * k for v in rgb])


def mix(a, b, t):
    return clamp_rgb([x * (1 - t) + y * t for x, y in zip(a, b)])


def luminance(rgb):
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def contrasting(rgb, rng, table=CLOTHES, min_diff=70):
    """A colour from ``table`` whose luminance differs from ``rgb`` by at least ``min_diff``."""
    for _ in range(12):
        c = pick_weighted_rgb(rng, table, 10)
        if abs(luminance(c) - luminance(rgb)) >= min_diff:
            return c
    return (245, 245, 245) if luminance(rgb) < 128 else (20, 20, 20)


def outline_of(rgb):
    return shade(rgb, 0.55) if luminance(rgb) > 60 else mix(rgb, (0, 0, 0), 0.6)


def ellipse(d, cx, cy, rx, ry, **kw):
    rx, ry = max(abs(rx), 0.5), max(abs(ry), 0.5)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], **kw)


def rect(d, x0, y0, x1, y1, **kw):
    d.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], **kw)


def rrect(d, x0, y0, x1, y1, r, **kw):
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    r = max(0, min(r, (x1 - x0) / 2 - 0.5, (y1 - y0) / 2 - 0.5))
    d.rounded_rectangle([x0, y0, x1, y1], radius=r, **kw)


def limb(d, pts, width, color, ol=SS):
    """A thick rounded poly-line with a darker outline (arms, legs, straps)."""
    w = max(1, int(round(width)))
    out = outline_of(color)
    d.line(pts, fill=out, width=w + 2 * ol, joint="curve")
    for x, y in (pts[0], pts[-1]):
        ellipse(d, x, y, w / 2 + ol, w / 2 + ol, fill=out)
    d.line(pts, fill=color, width=w, joint="curve")
    for x, y in (pts[0], pts[-1]):
        ellipse(d, x, y, w / 2, w / 2, fill=color)


def poly(d, pts, color, ol=SS):
    d.polygon(pts, fill=color, outline=outline_of(color), width=ol)


def polygon_mask(size, pts):
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    return mask


def a_an(word):
    """'a' or 'an' for the spoken form of ``word`` (acronyms read letter by letter)."""
    spoken_vowel_acronyms = {"SUV", "FAW"}
    if word in spoken_vowel_acronyms:
        return "an"
    return "an" if word[:1].lower() in "aeiou" else "a"


# --------------------------------------------------------------------------------------
# Attribute sampling (the labels)
# --------------------------------------------------------------------------------------

def sample_pedestrian_flags(rng):
    """21 flags with skewed, correlated marginals (so common combinations repeat)."""
    f = dict.fromkeys(PED_FLAGS, 0)
    female = rng.random() < 0.45
    age = weighted_choice(rng, ["AgeOver60", "Age18-60", "AgeLess18"], [0.055, 0.875, 0.07])
    orient = weighted_choice(rng, ["Front", "Side", "Back"], [0.36, 0.28, 0.36])
    f["Female"], f[age], f[orient] = int(female), 1, 1
    old, child = age == "AgeOver60", age == "AgeLess18"
    f["Hat"] = int(rng.random() < (0.24 if old else 0.09))
    f["Glasses"] = int(rng.random() < (0.30 if old else 0.04 if child else 0.12))
    f["HandBag"] = int(rng.random() < (0.02 if child else 0.17 if female else 0.05))
    f["ShoulderBag"] = int(rng.random() < (0.08 if child else 0.26 if female else 0.13))
    f["Backpack"] = int(rng.random() < (0.40 if child else 0.13))
    f["HoldObjectsInFront"] = int(rng.random() < 0.06)
    f["LongCoat"] = int(rng.random() < (0.06 + 0.05 * female + 0.08 * old))
    long_sleeve = f["LongCoat"] or rng.random() < (0.42 + 0.3 * old)
    f["LongSleeve"], f["ShortSleeve"] = int(long_sleeve), int(not long_sleeve)
    pattern = weighted_choice(rng, [None, "UpperStride", "UpperLogo", "UpperPlaid", "UpperSplice"],
                              [0.72, 0.08, 0.12, 0.03, 0.05])
    if pattern:
        f[pattern] = 1
    f["Skirt&Dress"] = int(rng.random() < ((0.30 if not f["LongCoat"] else 0.15) if female else 0.004))
    return f


def flags_to_attr(f):
    return ",".join(str(f[name]) for name in PED_FLAGS)


def sample_vehicle(rng):
    """(ATTR, description for the painter). Colour+brand 85 %, type 12 %, brand only 3 %."""
    kind = weighted_choice(rng, ["color_brand", "type", "brand"], [0.85, 0.12, 0.03])
    color_names = list(VEHICLE_COLORS)
    color = weighted_choice(rng, color_names, [VEHICLE_COLORS[c][0] for c in color_names])
    if kind == "type":
        names = list(VEHICLE_TYPES)
        vtype = weighted_choice(rng, names, [VEHICLE_TYPES[t][0] for t in names])
        return f"{vtype}.", dict(color=color, brand=None, body=VEHICLE_TYPES[vtype][1], label=vtype)
    names = list(BRANDS)
    if kind == "brand":
        weights = [BRANDS[b][0] * (6 if b in HEAVY_BRANDS else 1) for b in names]
        brand = weighted_choice(rng, names, weights)
        return f"{brand}.", dict(color=color, brand=brand, body=BRANDS[brand][1], label=brand)
    brand = weighted_choice(rng, names, [BRANDS[b][0] for b in names])
    return f"{color} {brand}.", dict(color=color, brand=brand, body=BRANDS[brand][1], label=f"{color} {brand}")


# --------------------------------------------------------------------------------------
# Caption grammar
# --------------------------------------------------------------------------------------

SUBJECTS = {
    (1, "adult"): ["A female pedestrian", "A woman", "A walking woman", "A lady", "A female walker"],
    (0, "adult"): ["A male pedestrian", "A man", "A walking man", "A gentleman", "A male walker"],
    (1, "old"): ["A female pedestrian", "An old woman", "An elderly lady", "A woman", "A grandmother"],
    (0, "old"): ["A male pedestrian", "An old man", "An elderly man", "A man", "A grandfather"],
    (1, "child"): ["A female pedestrian", "A girl", "A young girl", "A little girl"],
    (0, "child"): ["A male pedestrian", "A boy", "A young boy", "A little boy"],
}
AGE_PHRASES = {  # each follows "is"
    "adult": ["an adult person aged 18-60", "between 18 and 60 years old", "an adult aged between 18 and 60",
              "aged 18 to 60", "in the 18-60 age range"],
    "old": ["an elderly person over 60", "older than 60 years", "a senior aged over 60", "over 60 years old",
            "more than 60 years of age"],
    "child": ["a young person under 18", "younger than 18 years old", "a minor under the age of 18",
              "under 18 years old", "a kid less than 18 years old"],
}
ORIENT_PHRASES = {  # (phrase, can follow "is")
    "Back": [("with {his} body back to the camera", False), ("with {his} back facing the camera", False),
             ("walking away from the camera", True), ("seen from behind", True),
             ("facing away from the camera", True)],
    "Front": [("facing the camera", True), ("with {his} face toward the camera", False),
              ("seen from the front", True), ("walking towards the camera", True),
              ("with {his} body facing the camera", False)],
    "Side": [("standing sideways", True), ("seen from the side", True), ("in profile to the camera", True),
             ("with {his} side to the camera", False), ("walking sideways across the view", True)],
}
BAG_PHRASES = {
    "HandBag": ["a handbag", "a hand bag", "a handbag in {his} hand", "a purse"],
    "ShoulderBag": ["a shoulderbag", "a shoulder bag", "a bag over {his} shoulder", "a single-shoulder bag"],
    "Backpack": ["a backpack", "a rucksack", "a backpack on {his} back", "a bag on {his} back"],
}
HOLD_PHRASES = ["holding something in front of {him}", "holding objects in front", "holding an object in front of {his} body"]
CARRY_VERBS = ["has", "carries", "is carrying", "carrying", "with"]
WEAR_VERBS = ["is in", "is wearing", "wears", "is dressed in", "has on"]
HAT_PHRASES = ["a hat", "a cap", "a hat on {his} head"]
GLASSES_PHRASES = ["glasses", "a pair of glasses", "eyeglasses", "spectacles"]
SLEEVE_PHRASES = {
    "ShortSleeve": ["a tee shirt with short sleeves", "a short sleeve shirt", "a short-sleeved top",
                    "a T-shirt with short sleeves"],
    "LongSleeve": ["a long sleeve shirt", "a long-sleeved top", "a jacket with long sleeves", "a top with long sleeves"],
}
PATTERN_PHRASES = {
    "UpperStride": ["with stripes", "with stride on the upper", "with a striped pattern"],
    "UpperLogo": ["with a logo on the upper", "with a logo", "with a printed logo on it"],
    "UpperPlaid": ["with a plaid pattern", "with plaid on the upper", "with a checked pattern"],
    "UpperSplice": ["with a splice pattern", "with spliced colors", "with a color-block splice design"],
}
COAT_PHRASES = ["a longcoat", "a long coat", "a long overcoat"]
SKIRT_PHRASES = ["a skirt", "a dress", "a skirt or dress", "a long dress"]
TROUSER_PHRASES = ["trousers", "pants", "long pants"]


def join_items(rng, items):
    if len(items) == 1:
        return items[0]
    if rng.random() < 0.15:
        return ",".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def pedestrian_caption(f, rng):
    """One English caption stating every positive flag, in one of many wordings."""
    female = f["Female"]
    he, his, him = ("she", "her", "her") if female else ("he", "his", "him")
    fill = lambda s: s.format(his=his, him=him)  # noqa: E731
    age = "old" if f["AgeOver60"] else "child" if f["AgeLess18"] else "adult"
    orient = "Front" if f["Front"] else "Side" if f["Side"] else "Back"

    subject = pick(rng, SUBJECTS[(female, age)])
    age_phrase = pick(rng, AGE_PHRASES[age])
    intro = pick(rng, ["{s} who is {a}", "{s} is someone who walks on foot, is {a}", "{s} that is {a}",
                       "{s} who is {a}"]).format(s=subject, a=age_phrase)
    phrase, takes_is = pick(rng, ORIENT_PHRASES[orient])
    orient_part = (", and is " if takes_is and rng.random() < 0.4 else ", ") + fill(phrase)

    bags = [fill(pick(rng, BAG_PHRASES[k])) for k in ("HandBag", "ShoulderBag", "Backpack") if f[k]]
    hold = fill(pick(rng, HOLD_PHRASES)) if f["HoldObjectsInFront"] else None
    first = intro + orient_part
    extra_sentence = ""
    if bags and rng.random() < 0.65:
        first += " and " + pick(rng, CARRY_VERBS) + " " + join_items(rng, bags)
        if hold:
            first += (", " if rng.random() < 0.5 else " and ") + hold
    elif bags or hold:
        parts = []
        if bags:
            parts.append(pick(rng, ["carries", "has", "is carrying"]) + " " + join_items(rng, bags))
        if hold:
            parts.append("is " + hold)
        extra_sentence = he.capitalize() + " " + " and ".join(parts) + "."

    wear = []
    if f["Hat"]:
        wear.append(fill(pick(rng, HAT_PHRASES)))
    if f["Glasses"]:
        wear.append(pick(rng, GLASSES_PHRASES))
    sleeve_key = "ShortSleeve" if f["ShortSleeve"] else "LongSleeve"
    upper = pick(rng, SLEEVE_PHRASES[sleeve_key])
    for key, phrases in PATTERN_PHRASES.items():
        if f[key]:
            upper += " " + pick(rng, phrases)
    if f["LongCoat"]:
        coat = pick(rng, COAT_PHRASES)
        wear.extend([coat, upper] if rng.random() < 0.5 else [upper, coat])
    else:
        wear.append(upper)
    if f["Skirt&Dress"]:
        wear.append(pick(rng, SKIRT_PHRASES))
    elif rng.random() < 0.3:
        wear.append(pick(rng, TROUSER_PHRASES))
    verb = pick(rng, WEAR_VERBS)
    if verb == "is wearing" and rng.random() < 0.05:
        verb = "is wearning"  # the real captions have typos too
    second = he.capitalize() + " " + verb + " " + join_items(rng, wear) + "."

    sentences = [first + ".", second] + ([extra_sentence] if extra_sentence else [])
    if extra_sentence and rng.random() < 0.5:
        sentences = [first + ".", extra_sentence, second]
    return " ".join(sentences)


def vehicle_caption(label, rng):
    article = a_an(label.split(" ")[0])
    if rng.random() < 0.5:
        return f"This is {article} {label}."
    return f"{article.capitalize()} {label}."


# --------------------------------------------------------------------------------------
# Pedestrians: geometry, colours and drawing (right-facing side view, flipped at random)
# --------------------------------------------------------------------------------------

def person_size(f, rng):
    """Final crop size (width, height) in pixels."""
    h = rng.uniform(140, 260) if not f["AgeLess18"] else rng.uniform(120, 210)
    ratio = rng.uniform(0.36, 0.48) + 0.05 * (f["HandBag"] or f["HoldObjectsInFront"]) + 0.04 * f["Side"] * f["Backpack"]
    w = float(np.clip(h * ratio, 50, 110))
    return int(round(w)), int(round(h))


def person_geometry(f, rng, W, H):
    age = "old" if f["AgeOver60"] else "child" if f["AgeLess18"] else "adult"
    female = bool(f["Female"])
    mt, mb = H * rng.uniform(0.02, 0.06), H * rng.uniform(0.02, 0.05)
    fh = H - mt - mb
    if age == "child":
        fh *= rng.uniform(0.82, 0.93)
    elif age == "old":
        fh *= rng.uniform(0.90, 0.97)
    y_top = H - mb - fh
    heads = {"adult": 7.4, "old": 7.1, "child": 5.5}[age] * rng.uniform(0.96, 1.04)
    hh = fh / heads
    hw = hh * rng.uniform(0.74, 0.82)
    y_chin = y_top + hh
    neck = 0.18 if age == "old" else 0.32
    y_sh = y_chin + hh * neck
    y_hip = y_top + fh * (0.57 if age == "child" else 0.53)
    y_g = y_top + fh
    if age == "child":
        sw = fh * 0.112
    else:
        sw = fh * (0.100 if female else 0.122)
    sw *= rng.uniform(0.92, 1.08)
    return dict(
        age=age, female=female, fh=fh, y_top=y_top, hh=hh, hw=hw, y_chin=y_chin, y_sh=y_sh,
        y_w=y_sh + (y_hip - y_sh) * 0.72, y_hip=y_hip, y_knee=y_hip + (y_g - y_hip) * 0.5, y_g=y_g,
        sw=sw, waist=sw * (0.72 if female else 0.86), hip=sw * (1.0 if female else 0.88),
        arm_w=fh * rng.uniform(0.038, 0.046), leg_w=fh * rng.uniform(0.050, 0.060),
        ua=fh * 0.165, fa=fh * 0.15, cx=W / 2 + rng.uniform(-0.05, 0.05) * W,
    )


def person_colors(f, g, rng):
    upper = pick_weighted_rgb(rng, CLOTHES)
    if g["age"] == "old":
        hair = jitter(pick(rng, GREY_HAIR), rng, 8) if rng.random() < 0.85 else pick_weighted_rgb(rng, HAIR, 8)
    else:
        hair = pick_weighted_rgb(rng, HAIR, 8)
    skirt = upper if rng.random() < 0.45 else pick_weighted_rgb(rng, CLOTHES)
    return dict(
        upper=upper, second=contrasting(upper, rng), third=pick_weighted_rgb(rng, CLOTHES),
        coat=pick_weighted_rgb(rng, CLOTHES), trousers=pick_weighted_rgb(rng, TROUSERS), skirt=skirt,
        legs=jitter(pick(rng, SKIN), rng, 8) if rng.random() < 0.6 else (30, 28, 30),
        skin=jitter(pick(rng, SKIN), rng, 8), hair=hair,
        shoes=pick(rng, [(20, 20, 20), (40, 30, 25), (230, 230, 230), (90, 90, 95)]),
        hat=pick_weighted_rgb(rng, CLOTHES), bag=pick(rng, [(30, 24, 20), (120, 70, 40), (170, 40, 50),
                                                           (200, 180, 150), (40, 50, 90), (25, 25, 30)]),
        backpack=pick(rng, [(30, 30, 34), (40, 60, 120), (170, 40, 40), (60, 90, 60), (210, 130, 40), (90, 90, 96)]),
        obj=pick(rng, [(150, 110, 70), (240, 240, 240), (30, 30, 30), (60, 120, 200), (200, 60, 60)]),
        cane=pick(rng, [(90, 60, 35), (25, 25, 25), (150, 150, 150)]),
        long_hair=(rng.random() < 0.85) if g["female"] else (rng.random() < 0.05),
        sunglasses=rng.random() < 0.3, hat_kind=pick(rng, ["cap", "brim", "beanie"]),
        pattern_kind=pick(rng, ["circle", "star", "block", "triangle"]),
        splice_kind=pick(rng, ["vertical", "diagonal", "yoke"]),
    )


def upper_pattern_layer(f, c, size, bbox, view, rng, base):
    """The upper garment's fabric: plain, stripes, plaid, splice or a logo (RGBA, canvas size)."""
    img = Image.new("RGBA", size, base + (255,))
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = bbox
    w, h = x1 - x0, y1 - y0
    second = c["second"]
    if f["UpperStride"]:
        period = h / rng.uniform(4.5, 7.0)
        y = y0 + rng.uniform(0, period)
        while y < y1:
            rect(d, 0, y, size[0], y + period * 0.45, fill=second)
            y += period
    elif f["UpperPlaid"]:
        period = max(w, h) / rng.uniform(4.0, 6.0)
        lw = max(2.0, period * 0.28)
        third = c["third"] if abs(luminance(c["third"]) - luminance(base)) > 40 else second
        for k in range(-1, int(size[0] / period) + 2):
            x = x0 % period + k * period
            rect(d, x, 0, x + lw, size[1], fill=second)
        for k in range(-1, int(size[1] / period) + 2):
            y = y0 % period + k * period
            rect(d, 0, y, size[0], y + lw, fill=third)
            rect(d, 0, y + lw * 1.8, size[0], y + lw * 2.2, fill=second)
    elif f["UpperSplice"]:
        kind = c["splice_kind"]
        if kind == "vertical":
            rect(d, x0 + w / 2, 0, size[0], size[1], fill=second)
        elif kind == "diagonal":
            d.polygon([(x0, y1), (x1, y0 + h * 0.2), (x1, y1)], fill=second)
        else:
            rect(d, 0, 0, size[0], y0 + h * 0.38, fill=second)
    elif f["UpperLogo"]:
        cx = x0 + w * (0.5 if view != "side" else 0.7)
        cy = y0 + h * (0.32 if view != "back" else 0.36)
        s = w * (0.22 if view == "front" else 0.28 if view == "back" else 0.2)
        kind = c["pattern_kind"]
        if kind == "circle":
            ellipse(d, cx, cy, s, s, fill=second)
            ellipse(d, cx, cy, s * 0.45, s * 0.45, fill=base)
        elif kind == "star":
            pts = [(cx + s * (1.0 if k % 2 == 0 else 0.45) * math.sin(k * math.pi / 5),
                    cy - s * (1.0 if k % 2 == 0 else 0.45) * math.cos(k * math.pi / 5)) for k in range(10)]
            d.polygon(pts, fill=second)
        elif kind == "triangle":
            d.polygon([(cx, cy - s), (cx + s, cy + s * 0.8), (cx - s, cy + s * 0.8)], fill=second)
        else:
            rect(d, cx - s * 1.2, cy - s * 0.6, cx + s * 1.2, cy + s * 0.6, fill=second)
            for k in range(3):
                rect(d, cx - s * 0.9 + k * s * 0.65, cy - s * 0.3, cx - s * 0.55 + k * s * 0.65, cy + s * 0.3, fill=base)
    return img


def paint_garment(layer, pts, fabric):
    layer.paste(fabric, (0, 0), polygon_mask(layer.size, pts))
    ImageDraw.Draw(layer).polygon(pts, outline=(20, 20, 20), width=SS)


def draw_arm(d, shoulder, elbow, hand, g, c, f, sleeve_color, dim=1.0):
    arm_w = g["arm_w"]
    skin = shade(c["skin"], dim)
    sleeve = shade(sleeve_color, dim)
    if f["LongSleeve"]:
        limb(d, [shoulder, elbow, hand], arm_w * 1.1, sleeve)
        ellipse(d, hand[0], hand[1], arm_w * 0.6, arm_w * 0.6, fill=skin, outline=outline_of(skin), width=1)
    else:
        limb(d, [shoulder, elbow, hand], arm_w * 0.9, skin)
        mid = (shoulder[0] + (elbow[0] - shoulder[0]) * 0.55, shoulder[1] + (elbow[1] - shoulder[1]) * 0.55)
        limb(d, [shoulder, mid], arm_w * 1.3, sleeve)


def draw_handbag(d, hand, g, c, rng):
    s = g["fh"] * rng.uniform(0.075, 0.10)
    x, y = hand
    d.arc([x - s * 0.45, y - s * 0.3, x + s * 0.45, y + s * 0.6], 180, 360, fill=outline_of(c["bag"]), width=2 * SS)
    poly(d, [(x - s * 0.6, y + s * 0.2), (x + s * 0.6, y + s * 0.2), (x + s * 0.8, y + s * 1.1),
             (x - s * 0.8, y + s * 1.1)], c["bag"])
    rect(d, x - s * 0.15, y + s * 0.35, x + s * 0.15, y + s * 0.5, fill=(200, 190, 120))


def draw_held_object(d, cx, cy, w, h, c):
    poly(d, [(cx - w / 2, cy - h / 2), (cx + w / 2, cy - h / 2), (cx + w / 2, cy + h / 2), (cx - w / 2, cy + h / 2)],
         c["obj"])
    rect(d, cx - w / 2, cy - h * 0.1, cx + w / 2, cy + h * 0.05, fill=shade(c["obj"], 0.8))


def draw_shoes(d, x, y, g, c, forward=0.0):
    lw = g["leg_w"]
    if forward:
        rrect(d, x - lw * 0.45, y - lw * 0.5, x + lw * 1.25, y + lw * 0.2, lw * 0.3, fill=c["shoes"],
              outline=outline_of(c["shoes"]), width=SS)
    else:
        ellipse(d, x, y - lw * 0.15, lw * 0.62, lw * 0.38, fill=c["shoes"], outline=outline_of(c["shoes"]), width=SS)


def draw_hat(d, hx, top, g, c, view):
    hw, hh = g["hw"], g["hh"]
    col = c["hat"]
    kind = c["hat_kind"]
    if kind == "beanie":
        d.chord([hx - hw * 0.58, top - hh * 0.12, hx + hw * 0.58, top + hh * 0.75], 180, 360, fill=col,
                outline=outline_of(col), width=SS)
        rect(d, hx - hw * 0.58, top + hh * 0.28, hx + hw * 0.58, top + hh * 0.4, fill=shade(col, 0.8))
        return
    d.chord([hx - hw * 0.56, top - hh * 0.14, hx + hw * 0.56, top + hh * 0.7], 180, 360, fill=col,
            outline=outline_of(col), width=SS)
    if kind == "brim":
        ellipse(d, hx, top + hh * 0.26, hw * 0.85, hh * 0.09, fill=shade(col, 0.85), outline=outline_of(col), width=SS)
    elif view == "side":
        d.polygon([(hx, top + hh * 0.18), (hx + hw * 0.95, top + hh * 0.26), (hx + hw * 0.9, top + hh * 0.32),
                   (hx, top + hh * 0.3)], fill=shade(col, 0.85), outline=outline_of(col))
    elif view == "front":
        d.chord([hx - hw * 0.6, top + hh * 0.14, hx + hw * 0.6, top + hh * 0.42], 0, 180, fill=shade(col, 0.8),
                outline=outline_of(col), width=SS)
    else:
        rect(d, hx - hw * 0.5, top + hh * 0.22, hx + hw * 0.5, top + hh * 0.3, fill=shade(col, 0.8))


def draw_head_front(d, g, c, f, hx):
    hh, hw, top = g["hh"], g["hw"], g["y_top"]
    cy = top + hh / 2
    skin, hair = c["skin"], c["hair"]
    if c["long_hair"]:
        rrect(d, hx - hw * 0.62, top + hh * 0.1, hx + hw * 0.62, g["y_sh"] + hh * 0.7, hw * 0.35, fill=hair,
              outline=outline_of(hair), width=SS)
    limb(d, [(hx, g["y_chin"] - hh * 0.1), (hx, g["y_sh"] + hh * 0.05)], hw * 0.38, skin)
    ellipse(d, hx, cy, hw / 2, hh / 2, fill=skin, outline=outline_of(skin), width=SS)
    d.chord([hx - hw * 0.53, top - hh * 0.03, hx + hw * 0.53, top + hh * (0.62 if c["long_hair"] else 0.55)],
            170, 370, fill=hair)
    ey = top + hh * 0.56
    r = max(1.2, hh * 0.05)
    for sgn in (-1, 1):
        ellipse(d, hx + sgn * hw * 0.2, ey, r, r, fill=(25, 20, 20))
    d.line([(hx - hw * 0.12, top + hh * 0.8), (hx + hw * 0.12, top + hh * 0.8)], fill=shade(skin, 0.6), width=SS)
    if f["Glasses"]:
        lw = max(SS, int(hh * 0.04))
        for sgn in (-1, 1):
            box = [hx + sgn * hw * 0.2 - hw * 0.17, ey - hh * 0.09, hx + sgn * hw * 0.2 + hw * 0.17, ey + hh * 0.09]
            d.rectangle(box, outline=(15, 15, 15), width=lw, fill=(30, 30, 40) if c["sunglasses"] else None)
        d.line([(hx - hw * 0.05, ey), (hx + hw * 0.05, ey)], fill=(15, 15, 15), width=lw)
    if f["Hat"]:
        draw_hat(d, hx, top, g, c, "front")


def draw_head_back(d, g, c, f, hx):
    hh, hw, top = g["hh"], g["hw"], g["y_top"]
    cy = top + hh / 2
    skin, hair = c["skin"], c["hair"]
    limb(d, [(hx, g["y_chin"] - hh * 0.1), (hx, g["y_sh"] + hh * 0.05)], hw * 0.4, skin)
    for sgn in (-1, 1):
        ellipse(d, hx + sgn * hw * 0.5, cy + hh * 0.05, hw * 0.1, hh * 0.13, fill=skin, outline=outline_of(skin))
    ellipse(d, hx, cy, hw / 2, hh / 2, fill=hair, outline=outline_of(hair), width=SS)
    if f["Glasses"]:
        for sgn in (-1, 1):
            d.line([(hx + sgn * hw * 0.4, cy - hh * 0.02), (hx + sgn * hw * 0.56, cy - hh * 0.06)], fill=(10, 10, 10),
                   width=max(SS, int(hh * 0.05)))
    if f["Hat"]:
        draw_hat(d, hx, top, g, c, "back")


def draw_head_side(d, g, c, f, hx, hy):
    hh, hw = g["hh"], g["hw"]
    top = hy - hh / 2
    skin, hair = c["skin"], c["hair"]
    rx = hw * 0.56
    if c["long_hair"]:
        d.polygon([(hx - rx * 0.2, top + hh * 0.1), (hx - rx * 1.1, hy), (hx - rx * 1.05, g["y_sh"] + hh * 0.8),
                   (hx - rx * 0.1, g["y_sh"] + hh * 0.6)], fill=hair, outline=outline_of(hair))
    ellipse(d, hx, hy, rx, hh / 2, fill=skin, outline=outline_of(skin), width=SS)
    d.polygon([(hx + rx * 0.92, hy - hh * 0.06), (hx + rx * 1.2, hy + hh * 0.1), (hx + rx * 0.9, hy + hh * 0.14)],
              fill=skin, outline=outline_of(skin))
    d.chord([hx - rx * 1.08, top - hh * 0.04, hx + rx * 0.9, hy + hh * 0.5], 125, 335, fill=hair)
    ellipse(d, hx - rx * 0.02, hy + hh * 0.04, rx * 0.16, hh * 0.12, fill=skin, outline=outline_of(skin))
    ex, ey = hx + rx * 0.6, hy - hh * 0.02
    ellipse(d, ex, ey, max(1.2, hh * 0.045), max(1.2, hh * 0.045), fill=(25, 20, 20))
    if f["Glasses"]:
        lw = max(SS, int(hh * 0.04))
        d.rectangle([ex - rx * 0.2, ey - hh * 0.08, ex + rx * 0.22, ey + hh * 0.08], outline=(15, 15, 15), width=lw,
                    fill=(30, 30, 40) if c["sunglasses"] else None)
        d.line([(ex - rx * 0.2, ey), (hx - rx * 0.05, hy + hh * 0.0)], fill=(15, 15, 15), width=lw)
    if f["Hat"]:
        draw_hat(d, hx, top, g, c, "side")


def draw_person_frontback(layer, f, g, c, rng, back):
    d = ImageDraw.Draw(layer)
    cx, sw, fh = g["cx"], g["sw"], g["fh"]
    view = "back" if back else "front"
    y_sh, y_w, y_hip, y_knee, y_g = g["y_sh"], g["y_w"], g["y_hip"], g["y_knee"], g["y_g"]
    lw = g["leg_w"]
    hold_w, hold_h = sw * rng.uniform(1.0, 1.5), sw * rng.uniform(0.6, 0.9)

    # behind the body: the backpack's sides (front view) and a held object's ends (back view)
    if f["Backpack"] and not back:
        rrect(d, cx - sw * 1.08, y_sh + fh * 0.01, cx + sw * 1.08, y_w, sw * 0.2, fill=c["backpack"],
              outline=outline_of(c["backpack"]), width=SS)
    if f["HoldObjectsInFront"] and back:
        draw_held_object(d, cx, y_w - fh * 0.02, sw * 2.6, hold_h, c)

    # legs and the lower garment
    spread = rng.uniform(0.0, 0.35) * lw
    lift = rng.uniform(0, 0.04) * fh
    skirt = bool(f["Skirt&Dress"])
    leg_col = c["legs"] if skirt else c["trousers"]
    for sgn, dy in ((-1, 0.0), (1, -lift)):
        hip_pt = (cx + sgn * g["hip"] * 0.5, y_hip - lw * 0.3)
        foot = (cx + sgn * (g["hip"] * 0.5 + spread), y_g + dy - lw * 0.35)
        knee = ((hip_pt[0] + foot[0]) / 2, y_knee + dy / 2)
        limb(d, [hip_pt, knee, foot], lw, leg_col)
        draw_shoes(d, foot[0], foot[1] + lw * 0.3, g, c)
    if not skirt:
        d.polygon([(cx - g["hip"], y_hip - fh * 0.02), (cx + g["hip"], y_hip - fh * 0.02), (cx + g["hip"] * 0.9, y_hip + fh * 0.05),
                   (cx - g["hip"] * 0.9, y_hip + fh * 0.05)], fill=c["trousers"])
    else:
        hem = y_knee + fh * rng.uniform(-0.02, 0.08)
        poly(d, [(cx - g["waist"], y_w), (cx + g["waist"], y_w), (cx + g["hip"] * 1.35, hem),
                 (cx - g["hip"] * 1.35, hem)], c["skirt"])

    # torso (or long coat) with its fabric
    neck_x = sw * 0.38
    torso = [(cx - neck_x, y_sh - g["hh"] * 0.08), (cx + neck_x, y_sh - g["hh"] * 0.08), (cx + sw, y_sh + g["hh"] * 0.12),
             (cx + g["waist"] * 1.02, y_w), (cx + g["hip"] * 1.02, y_hip + fh * 0.02),
             (cx - g["hip"] * 1.02, y_hip + fh * 0.02), (cx - g["waist"] * 1.02, y_w), (cx - sw, y_sh + g["hh"] * 0.12)]
    sleeve_color = c["upper"]
    if f["LongCoat"]:
        hem = y_knee + fh * rng.uniform(0.0, 0.07)
        coat = torso[:3] + [(cx + g["waist"] * 1.1, y_w), (cx + g["hip"] * 1.3, hem), (cx - g["hip"] * 1.3, hem),
                            (cx - g["waist"] * 1.1, y_w), torso[-1]]
        fabric = upper_pattern_layer(f, c, layer.size, (cx - sw, y_sh, cx + sw, hem), view, rng, c["coat"])
        paint_garment(layer, coat, fabric)
        if not back:
            d.line([(cx, y_sh + g["hh"] * 0.3), (cx, hem)], fill=outline_of(c["coat"]), width=SS)
            d.polygon([(cx - neck_x, y_sh - g["hh"] * 0.05), (cx, y_sh + g["hh"] * 0.7), (cx + neck_x, y_sh - g["hh"] * 0.05)],
                      fill=c["upper"])
        d.line([(cx - g["waist"] * 1.1, y_w), (cx + g["waist"] * 1.1, y_w)], fill=shade(c["coat"], 0.7), width=SS)
        sleeve_color = c["coat"]
    else:
        fabric = upper_pattern_layer(f, c, layer.size, (cx - sw, y_sh, cx + sw, y_hip), view, rng, c["upper"])
        paint_garment(layer, torso, fabric)

    # long hair down the back, then what hangs on the back / across the body
    if back and c["long_hair"]:
        rrect(d, cx - g["hw"] * 0.62, g["y_top"] + g["hh"] * 0.4, cx + g["hw"] * 0.62, y_sh + g["hh"] * rng.uniform(0.6, 1.3),
              g["hw"] * 0.35, fill=c["hair"], outline=outline_of(c["hair"]), width=SS)
    if f["Backpack"]:
        if back:
            rrect(d, cx - sw * 0.78, y_sh + fh * 0.015, cx + sw * 0.78, y_w + fh * 0.02, sw * 0.25, fill=c["backpack"],
                  outline=outline_of(c["backpack"]), width=SS)
            rrect(d, cx - sw * 0.55, y_sh + (y_w - y_sh) * 0.55, cx + sw * 0.55, y_w, sw * 0.15,
                  fill=shade(c["backpack"], 0.8), outline=outline_of(c["backpack"]), width=SS)
        else:
            for sgn in (-1, 1):
                limb(d, [(cx + sgn * sw * 0.55, y_sh - g["hh"] * 0.02), (cx + sgn * sw * 0.6, y_w - fh * 0.03)],
                     sw * 0.16, shade(c["backpack"], 0.85))
    bag_side = pick(rng, [-1, 1])
    if f["ShoulderBag"]:
        bx, by = cx + bag_side * (g["hip"] * 1.05), y_hip - fh * 0.02
        limb(d, [(cx - bag_side * sw * 0.55, y_sh - g["hh"] * 0.02), (bx, by - fh * 0.03)], max(SS, sw * 0.09),
             shade(c["bag"], 0.9))
        s = fh * 0.075
        poly(d, [(bx - s * 0.7, by - s * 0.5), (bx + s * 0.7, by - s * 0.5), (bx + s * 0.75, by + s * 0.7),
                 (bx - s * 0.75, by + s * 0.7)], c["bag"])

    # arms (hold: forearms towards the middle), hand-held things
    for sgn in (-1, 1):
        shoulder = (cx + sgn * (sw - g["arm_w"] * 0.5), y_sh + g["arm_w"] * 0.6)
        if f["HoldObjectsInFront"]:
            elbow = (shoulder[0] + sgn * g["ua"] * 0.15, shoulder[1] + g["ua"] * 0.95)
            hand = (cx + sgn * hold_w * 0.45, elbow[1] - g["fa"] * (0.1 if not back else 0.25))
            if back:
                hand = (elbow[0] - sgn * g["arm_w"] * 0.3, elbow[1] + g["fa"] * 0.05)
        else:
            out = math.sin(rng.uniform(0.04, 0.22)) * g["ua"]
            elbow = (shoulder[0] + sgn * out, shoulder[1] + g["ua"])
            hand = (elbow[0] + sgn * out * rng.uniform(0.2, 0.8), elbow[1] + g["fa"])
            if f["HandBag"] and sgn == -bag_side:
                hand = (elbow[0] + sgn * g["arm_w"] * 0.8, elbow[1] + g["fa"])
        draw_arm(d, shoulder, elbow, hand, g, c, f, sleeve_color)
        if f["HandBag"] and sgn == -bag_side and not f["HoldObjectsInFront"]:
            draw_handbag(d, hand, g, c, rng)
        if f["HandBag"] and f["HoldObjectsInFront"] and sgn == -bag_side:
            draw_handbag(d, (shoulder[0] + sgn * g["arm_w"] * 0.9, y_w), g, c, rng)  # bag hanging from the forearm
        if g["age"] == "old" and c.get("cane") and sgn == bag_side and not f["HoldObjectsInFront"]:
            d.line([hand, (hand[0] + sgn * fh * 0.05, y_g)], fill=c["cane"], width=max(SS, int(fh * 0.013)))
    if f["HoldObjectsInFront"] and not back:
        draw_held_object(d, cx, y_w - fh * 0.015, hold_w, hold_h, c)
        for sgn in (-1, 1):
            ellipse(d, cx + sgn * hold_w * 0.45, y_w - fh * 0.03, g["arm_w"] * 0.6, g["arm_w"] * 0.6, fill=c["skin"],
                    outline=outline_of(c["skin"]))

    # head
    hx = cx + rng.uniform(-0.04, 0.04) * sw
    if back:
        draw_head_back(d, g, c, f, hx)
    else:
        draw_head_front(d, g, c, f, hx)


def draw_person_side(layer, f, g, c, rng):
    d = ImageDraw.Draw(layer)
    fh, sw, lw = g["fh"], g["sw"], g["leg_w"]
    hx_hip = g["cx"] - sw * 0.1
    y_hip, y_g, y_w = g["y_hip"], g["y_g"], g["y_w"]
    tilt = rng.uniform(0.14, 0.26) if g["age"] == "old" else rng.uniform(-0.03, 0.07)
    torso_len = y_hip - g["y_sh"]
    sx = hx_hip + math.sin(tilt) * torso_len
    y_sh = y_hip - math.cos(tilt) * torso_len
    dc, dh = sw * 0.5 * (1.08 if g["female"] else 1.0), sw * 0.5 * (1.1 if g["female"] else 0.95)
    stride = rng.uniform(0.10, 0.36) * (0.6 if g["age"] == "old" else 1.0)
    skirt = bool(f["Skirt&Dress"])
    leg_col = c["legs"] if skirt else c["trousers"]

    def leg(t1, t2, dim):
        top = (hx_hip, y_hip - lw * 0.3)
        length = (y_g - lw * 0.35 - top[1]) / (math.cos(t1) + math.cos(t2))
        knee = (top[0] + length * math.sin(t1), top[1] + length * math.cos(t1))
        foot = (knee[0] + length * math.sin(t2), knee[1] + length * math.cos(t2))
        limb(d, [top, knee, foot], lw, shade(leg_col, dim))
        draw_shoes(d, foot[0], foot[1] + lw * 0.15, g, dict(c, shoes=shade(c["shoes"], dim)), forward=1.0)

    def arm(phi, bend, dim):
        shoulder = (sx, y_sh + g["arm_w"] * 0.5)
        elbow = (shoulder[0] + g["ua"] * math.sin(phi), shoulder[1] + g["ua"] * math.cos(phi))
        hand = (elbow[0] + g["fa"] * math.sin(phi + bend), elbow[1] + g["fa"] * math.cos(phi + bend))
        draw_arm(d, shoulder, elbow, hand, g, c, f, c["coat"] if f["LongCoat"] else c["upper"], dim)
        return hand

    hold = bool(f["HoldObjectsInFront"])
    # far side first (darker), then the backpack, near leg, garments, near arm
    leg(-stride * 0.8, -stride * 1.3, 0.78)
    if hold:
        arm(0.25, 1.25, 0.78)
    else:
        arm(stride * 0.8, 0.25, 0.78)
    if f["Backpack"]:
        back_x = sx - dc * 0.9
        depth = sw * rng.uniform(0.55, 0.75)
        rrect(d, back_x - depth, y_sh + fh * 0.01, back_x + dc * 0.4, y_w + fh * 0.01, depth * 0.3,
              fill=c["backpack"], outline=outline_of(c["backpack"]), width=SS)
        rrect(d, back_x - depth * 1.15, y_sh + (y_w - y_sh) * 0.45, back_x - depth * 0.4, y_w - fh * 0.01, depth * 0.15,
              fill=shade(c["backpack"], 0.8), outline=outline_of(c["backpack"]), width=SS)
    leg(stride, stride * 0.35, 1.0)
    if skirt:
        hem = g["y_knee"] + fh * rng.uniform(-0.02, 0.08)
        poly(d, [(hx_hip - dh * 1.05, y_w), (hx_hip + dh * 1.05, y_w), (hx_hip + dh * 1.9, hem), (hx_hip - dh * 1.7, hem)],
             c["skirt"])
    else:
        d.polygon([(hx_hip - dh, y_hip - fh * 0.03), (hx_hip + dh, y_hip - fh * 0.03), (hx_hip + dh, y_hip + fh * 0.04),
                   (hx_hip - dh, y_hip + fh * 0.04)], fill=c["trousers"])
    chest = (sx + dc * (1.12 if g["female"] else 1.0), y_sh + torso_len * 0.3)
    torso = [(sx - dc * 0.9, y_sh - g["hh"] * 0.05), (sx + dc * 0.7, y_sh - g["hh"] * 0.05), chest,
             (hx_hip + dh * 0.95, y_w), (hx_hip + dh, y_hip + fh * 0.02), (hx_hip - dh, y_hip + fh * 0.02),
             (hx_hip - dh * 0.95, y_w), (sx - dc, y_sh + torso_len * 0.3)]
    if f["LongCoat"]:
        hem = g["y_knee"] + fh * rng.uniform(0.0, 0.07)
        coat = torso[:4] + [(hx_hip + dh * 1.5, hem), (hx_hip - dh * 1.4, hem)] + torso[6:]
        fabric = upper_pattern_layer(f, c, layer.size, (sx - dc, y_sh, sx + dc, hem), "side", rng, c["coat"])
        paint_garment(layer, coat, fabric)
    else:
        fabric = upper_pattern_layer(f, c, layer.size, (sx - dc, y_sh, sx + dc, y_hip), "side", rng, c["upper"])
        paint_garment(layer, torso, fabric)
    if f["Backpack"]:  # strap over the shoulder, visible on the side of the chest
        limb(d, [(sx - dc * 0.7, y_sh + fh * 0.01), (sx + dc * 0.45, y_sh + fh * 0.015), (sx + dc * 0.35, y_w - fh * 0.06)],
             max(SS, sw * 0.13), shade(c["backpack"], 0.85))
    if f["ShoulderBag"]:
        bx, by = hx_hip - dh * rng.uniform(0.1, 0.6), y_hip - fh * 0.01
        limb(d, [(sx + dc * 0.1, y_sh - g["hh"] * 0.05), (bx + fh * 0.02, by - fh * 0.04)], max(SS, sw * 0.09),
             shade(c["bag"], 0.9))
        s = fh * 0.075
        poly(d, [(bx - s * 0.5, by - s * 0.5), (bx + s * 0.6, by - s * 0.5), (bx + s * 0.6, by + s * 0.75),
                 (bx - s * 0.55, by + s * 0.75)], c["bag"])
    if hold:
        obj_w, obj_h = sw * rng.uniform(0.5, 0.8), sw * rng.uniform(0.6, 0.9)
        draw_held_object(d, sx + dc * 1.2 + obj_w * 0.4, y_w - fh * 0.04, obj_w, obj_h, c)
        hand = arm(0.2, 1.3, 1.0)
    elif f["HandBag"]:
        hand = arm(rng.uniform(-0.08, 0.08), 0.05, 1.0)
        draw_handbag(d, hand, g, c, rng)
    else:
        hand = arm(-stride * 0.8, 0.3, 1.0)
    if g["age"] == "old" and c.get("cane") and not hold:
        d.line([hand, (hand[0] + fh * 0.06, y_g)], fill=c["cane"], width=max(SS, int(fh * 0.013)))
    # neck and head (pushed forward when stooping)
    hx = sx + g["hw"] * 0.12 + tilt * g["hh"] * 1.6
    hy = g["y_top"] + g["hh"] / 2 + (y_sh - g["y_sh"]) * 0.6
    limb(d, [(sx, y_sh + g["hh"] * 0.05), (hx - g["hw"] * 0.1, hy + g["hh"] * 0.3)], g["hw"] * 0.36, c["skin"])
    draw_head_side(d, g, c, f, hx, hy)


def render_pedestrian(f, rng):
    """RGBA figure at the final size plus the ground line y (for shadows)."""
    W, H = person_size(f, rng)
    g = person_geometry(f, rng, W * SS, H * SS)
    c = person_colors(f, g, rng)
    if g["age"] != "old" or rng.random() < 0.45:
        c["cane"] = None
    layer = Image.new("RGBA", (W * SS, H * SS), (0, 0, 0, 0))
    if f["Side"]:
        draw_person_side(layer, f, g, c, rng)
        if rng.random() < 0.5:
            layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    else:
        draw_person_frontback(layer, f, g, c, rng, back=bool(f["Back"]))
    layer = layer.resize((W, H), Image.Resampling.LANCZOS)
    layer = light_ramp(layer, rng)
    return layer, g["y_g"] / SS


def light_ramp(layer, rng):
    """Soft directional lighting over an RGBA layer (gives flat fills a gradient)."""
    a = np.asarray(layer).astype(np.float32)
    h, w = a.shape[:2]
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = ((xx / max(w - 1, 1) - 0.5) * math.cos(ang) + (yy / max(h - 1, 1) - 0.5) * math.sin(ang))
    gain = 1.0 + rng.uniform(0.12, 0.25) * t
    a[..., :3] = np.clip(a[..., :3] * gain[..., None], 0, 255)
    return Image.fromarray(a.astype(np.uint8), "RGBA")


# --------------------------------------------------------------------------------------
# Vehicles: body, brand signature, views
# --------------------------------------------------------------------------------------

def vehicle_size(body, view, rng):
    lo, hi = BODY[body]["aspect"]
    aspect = rng.uniform(lo, hi) * (1.25 if view == "three_quarter" else 1.0)
    w = rng.uniform(120, 260)
    h = float(np.clip(w / aspect, 90, 200))
    w = float(np.clip(h * aspect, 120, 260))
    return int(round(w)), int(round(h))


def paint_body(layer, pts, base, rng, y0, y1, dim=1.0):
    """Fill a polygon with the body colour: vertical gradient plus a specular band."""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    bx0, by0 = max(0, int(min(xs))), max(0, int(min(ys)))
    bx1, by1 = min(layer.size[0], int(max(xs)) + 2), min(layer.size[1], int(max(ys)) + 2)
    if bx1 <= bx0 or by1 <= by0:
        return
    yy = (np.arange(by0, by1, dtype=np.float32) - y0) / max(1.0, y1 - y0)
    gain = 1.10 - 0.28 * yy
    band_at = rng.uniform(0.3, 0.45)
    gain += 0.14 * np.exp(-((yy - band_at) / 0.06) ** 2)
    gain *= dim
    base_arr = np.asarray(base, dtype=np.float32)
    lift = 60.0 if luminance(base) < 60 else 0.0  # dark paint shows its shading as a sheen
    col = base_arr[None, :] * gain[:, None] + lift * np.clip(gain[:, None] - 1.0, 0, None)
    tile = np.broadcast_to(np.clip(col, 0, 255)[:, None, :], (by1 - by0, bx1 - bx0, 3)).astype(np.uint8)
    tile_img = Image.fromarray(np.ascontiguousarray(tile), "RGB")
    mask = Image.new("L", (bx1 - bx0, by1 - by0), 0)
    ImageDraw.Draw(mask).polygon([(x - bx0, y - by0) for x, y in pts], fill=255)
    layer.paste(tile_img, (bx0, by0), mask)
    ImageDraw.Draw(layer).polygon(pts, outline=outline_of(base), width=SS)


def draw_glass(layer, pts, rng, rear=False):
    """Dark glass with a diagonal reflection streak."""
    d = ImageDraw.Draw(layer)
    base = (38, 46, 58) if not rear else (30, 34, 42)
    d.polygon(pts, fill=base, outline=(15, 15, 18), width=SS)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    t = rng.uniform(0.15, 0.6)
    w = (x1 - x0) * rng.uniform(0.08, 0.16)
    refl = [(x0 + (x1 - x0) * t, y0 + 2), (x0 + (x1 - x0) * t + w, y0 + 2),
            (x0 + (x1 - x0) * (t - 0.15) + w, y1 - 2), (x0 + (x1 - x0) * (t - 0.15), y1 - 2)]
    clip = polygon_mask((int(x1 - x0) + 4, int(y1 - y0) + 4), [(x - x0 + 2, y - y0 + 2) for x, y in pts])
    shine = Image.new("L", clip.size, 0)
    ImageDraw.Draw(shine).polygon([(x - x0 + 2, y - y0 + 2) for x, y in refl], fill=70)
    layer.paste((120, 140, 160), (int(x0) - 2, int(y0) - 2), ImageChops.multiply(clip, shine))


LIGHT_SHAPES = {  # unit-box polygons for the left lamp (x: 0 = outer edge, 1 = inner edge)
    "rect": [(0, 0.1), (1, 0.1), (1, 0.9), (0, 0.9)],
    "angular": [(0, 0.0), (1, 0.45), (1, 0.9), (0.05, 1.0)],
    "slit": [(0, 0.25), (1, 0.55), (1, 0.8), (0, 0.6)],
    "l_shape": [(0, 0), (1, 0.2), (1, 1), (0, 1)],
    "fang": [(0, 0), (1, 0.25), (1, 0.7), (0, 0.7)],
    "thor": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "vertical": [(0.1, 0), (0.9, 0), (0.9, 1), (0.1, 1)],
    "bar": [(0, 0.3), (1, 0.3), (1, 0.7), (0, 0.7)],
}


def draw_lamp(d, box, shape, lit, drl, mirror):
    """One lamp in ``box`` (x0, y0, x1, y1); ``mirror`` for the right-hand one."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if mirror:
        tx = lambda u: x1 - u * w  # noqa: E731
    else:
        tx = lambda u: x0 + u * w  # noqa: E731
    ty = lambda v: y0 + v * h  # noqa: E731
    housing = (25, 25, 28)
    if shape in ("round", "quad"):
        n = 2 if shape == "quad" else 1
        r = min(w / (2 * n), h / 2) * 0.95
        for k in range(n):
            cxk = tx((k + 0.5) / n)
            ellipse(d, cxk, ty(0.5), r, r, fill=housing)
            ellipse(d, cxk, ty(0.5), r * 0.75, r * 0.75, fill=lit)
            if drl:
                ellipse(d, cxk, ty(0.5), r * 0.95, r * 0.95, outline=drl, width=SS)
        return
    pts = [(tx(u), ty(v)) for u, v in LIGHT_SHAPES[shape]]
    d.polygon(pts, fill=housing, outline=(10, 10, 10))
    inner = [(tx(0.12 + 0.76 * u), ty(0.2 + 0.6 * v)) for u, v in LIGHT_SHAPES[shape]]
    d.polygon(inner, fill=lit)
    stripe = drl or shade(lit, 1.2)
    if shape == "l_shape":
        d.line([(tx(0.08), ty(0.1)), (tx(0.08), ty(0.92)), (tx(0.9), ty(0.92))], fill=stripe, width=2 * SS)
    elif shape == "fang":
        d.line([(tx(0.55), ty(0.75)), (tx(0.45), ty(1.6))], fill=stripe, width=2 * SS)
    elif shape == "thor":
        d.line([(tx(0.1), ty(0.5)), (tx(0.9), ty(0.5))], fill=stripe, width=2 * SS)
        d.line([(tx(0.5), ty(0.1)), (tx(0.5), ty(0.9))], fill=stripe, width=2 * SS)
    elif drl:
        d.line([(tx(0.05), ty(0.95)), (tx(0.95), ty(0.55))], fill=drl, width=SS * 2)


def pattern_fill(layer, pts, base, line, pattern, spacing, width):
    """A grille: polygon ``pts`` in ``base`` with a clipped bar / mesh / dot pattern."""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, y0 = int(min(xs)) - 1, int(min(ys)) - 1
    w, h = int(max(xs)) - x0 + 2, int(max(ys)) - y0 + 2
    if w < 2 or h < 2:
        return
    tile = Image.new("RGB", (w, h), base)
    td = ImageDraw.Draw(tile)
    spacing = max(2.0, spacing)
    width = max(1, int(round(width)))
    if pattern in ("hbars", "mesh"):
        y = spacing / 2
        while y < h:
            td.line([(0, y), (w, y)], fill=line, width=width)
            y += spacing
    if pattern in ("vbars", "mesh"):
        x = spacing / 2
        while x < w:
            td.line([(x, 0), (x, h)], fill=line, width=width)
            x += spacing
    if pattern in ("dots", "honeycomb"):
        r = max(1.0, spacing * 0.25)
        row = 0
        y = spacing / 2
        while y < h:
            x = spacing / 2 + (spacing / 2 if row % 2 else 0)
            while x < w:
                if pattern == "dots":
                    ellipse(td, x, y, r, r, fill=line)
                else:
                    td.regular_polygon((x, y, spacing * 0.42), 6, outline=line, width=max(1, width // 2))
                x += spacing
            y += spacing * 0.87
            row += 1
    if pattern == "ripple":
        for k in range(1, 6):
            inset = k * min(w, h) * 0.09
            if inset * 2 < min(w, h):
                td.rectangle([inset, inset, w - inset, h - inset], outline=line, width=width)
    mask = polygon_mask((w, h), [(x - x0, y - y0) for x, y in pts])
    layer.paste(tile, (x0, y0), mask)
    ImageDraw.Draw(layer).polygon(pts, outline=(12, 12, 12), width=SS)


CHROME, BLACK_GRILLE = (196, 198, 204), (28, 28, 32)


def draw_grille(layer, kind, box, body_rgb, rng):
    """The brand's grille inside ``box`` (between the headlights, hood line to bumper)."""
    d = ImageDraw.Draw(layer)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    X = lambda u: x0 + u * w  # noqa: E731
    Y = lambda v: y0 + v * h  # noqa: E731
    if kind == "wide_bar":
        for k in range(3):
            rect(d, X(-0.15), Y(0.12 + 0.12 * k), X(1.15), Y(0.17 + 0.12 * k), fill=CHROME)
        pattern_fill(layer, [(X(0.1), Y(0.62)), (X(0.9), Y(0.62)), (X(0.8), Y(1.0)), (X(0.2), Y(1.0))],
                     BLACK_GRILLE, (60, 60, 64), "hbars", h * 0.1, SS)
    elif kind == "toyota":
        pattern_fill(layer, [(X(0.25), Y(0.05)), (X(0.75), Y(0.05)), (X(0.7), Y(0.25)), (X(0.3), Y(0.25))],
                     BLACK_GRILLE, CHROME, "hbars", h * 0.08, SS)
        pattern_fill(layer, [(X(0.05), Y(0.45)), (X(0.95), Y(0.45)), (X(0.8), Y(1.0)), (X(0.2), Y(1.0))],
                     BLACK_GRILLE, (70, 70, 76), "honeycomb", h * 0.14, SS)
    elif kind == "wing":
        pattern_fill(layer, [(X(0.12), Y(0.3)), (X(0.88), Y(0.3)), (X(0.8), Y(0.8)), (X(0.2), Y(0.8))],
                     BLACK_GRILLE, (64, 64, 70), "mesh", h * 0.12, SS)
        d.polygon([(X(-0.2), Y(0.05)), (X(1.2), Y(0.05)), (X(1.0), Y(0.3)), (X(0.0), Y(0.3))], fill=CHROME,
                  outline=(90, 90, 96))
    elif kind == "waterfall":
        pattern_fill(layer, [(X(0.15), Y(0.05)), (X(0.85), Y(0.05)), (X(0.72), Y(0.75)), (X(0.5), Y(0.85)),
                             (X(0.28), Y(0.75))], BLACK_GRILLE, CHROME, "vbars", w * 0.07, SS * 1.5)
    elif kind == "vmotion":
        pattern_fill(layer, [(X(0.15), Y(0.1)), (X(0.85), Y(0.1)), (X(0.7), Y(0.75)), (X(0.3), Y(0.75))],
                     BLACK_GRILLE, (80, 80, 86), "hbars", h * 0.09, SS)
        d.line([(X(0.12), Y(0.08)), (X(0.3), Y(0.8)), (X(0.5), Y(0.95)), (X(0.7), Y(0.8)), (X(0.88), Y(0.08))],
               fill=CHROME, width=3 * SS, joint="curve")
    elif kind == "single_frame":
        pattern_fill(layer, [(X(0.15), Y(0.0)), (X(0.85), Y(0.0)), (X(0.95), Y(0.2)), (X(0.9), Y(1.0)),
                             (X(0.1), Y(1.0)), (X(0.05), Y(0.2))], BLACK_GRILLE, (80, 80, 88), "honeycomb", w * 0.1,
                     SS)
        d.polygon([(X(0.15), Y(0.0)), (X(0.85), Y(0.0)), (X(0.95), Y(0.2)), (X(0.9), Y(1.0)), (X(0.1), Y(1.0)),
                   (X(0.05), Y(0.2))], outline=CHROME, width=2 * SS)
    elif kind == "wide_rect":
        rrect(d, X(0.05), Y(0.05), X(0.95), Y(0.7), h * 0.1, fill=BLACK_GRILLE, outline=CHROME, width=2 * SS)
        rect(d, X(0.05), Y(0.33), X(0.95), Y(0.42), fill=CHROME)
    elif kind == "kidney":
        for a, b in ((0.12, 0.47), (0.53, 0.88)):
            kid = [(X(a), Y(0.1)), (X(b), Y(0.1)), (X(b), Y(0.8)), (X(a), Y(0.8))]
            pattern_fill(layer, kid, BLACK_GRILLE, CHROME, "vbars", w * 0.06, SS)
            rrect(d, X(a), Y(0.05), X(b), Y(0.82), w * 0.08, outline=CHROME, width=2 * SS)
    elif kind == "cascade":
        pattern_fill(layer, [(X(0.2), Y(0.0)), (X(0.8), Y(0.0)), (X(1.0), Y(0.55)), (X(0.85), Y(1.0)),
                             (X(0.15), Y(1.0)), (X(0.0), Y(0.55))], (40, 40, 46), CHROME, "dots", w * 0.09, SS)
    elif kind == "hex_bars":
        pattern_fill(layer, [(X(0.1), Y(0.0)), (X(0.9), Y(0.0)), (X(1.0), Y(0.4)), (X(0.9), Y(0.85)),
                             (X(0.1), Y(0.85)), (X(0.0), Y(0.4))], BLACK_GRILLE, CHROME, "hbars", h * 0.28, 3 * SS)
    elif kind == "split":
        pattern_fill(layer, [(X(0.1), Y(0.0)), (X(0.9), Y(0.0)), (X(0.88), Y(0.22)), (X(0.12), Y(0.22))],
                     BLACK_GRILLE, (70, 70, 76), "mesh", h * 0.08, SS)
        rect(d, X(0.0), Y(0.24), X(1.0), Y(0.38), fill=shade(body_rgb, 1.05), outline=(200, 170, 60), width=SS)
        pattern_fill(layer, [(X(0.08), Y(0.42)), (X(0.92), Y(0.42)), (X(0.85), Y(0.95)), (X(0.15), Y(0.95))],
                     BLACK_GRILLE, (70, 70, 76), "mesh", h * 0.1, SS)
    elif kind == "tiger":
        pattern_fill(layer, [(X(0.15), Y(0.05)), (X(0.4), Y(0.15)), (X(0.6), Y(0.15)), (X(0.85), Y(0.05)),
                             (X(0.8), Y(0.6)), (X(0.6), Y(0.5)), (X(0.4), Y(0.5)), (X(0.2), Y(0.6))],
                     BLACK_GRILLE, (170, 40, 40), "mesh", h * 0.1, SS)
    elif kind == "dragon":
        pattern_fill(layer, [(X(0.05), Y(0.05)), (X(0.95), Y(0.05)), (X(0.8), Y(0.7)), (X(0.2), Y(0.7))],
                     BLACK_GRILLE, CHROME, "hbars", h * 0.11, SS * 1.5)
        rect(d, X(-0.3), Y(0.0), X(1.3), Y(0.05), fill=CHROME)
    elif kind == "ripple":
        pattern_fill(layer, [(X(0.1), Y(0.05)), (X(0.9), Y(0.05)), (X(0.95), Y(0.75)), (X(0.05), Y(0.75))],
                     BLACK_GRILLE, CHROME, "ripple", 0, SS)
    elif kind == "pentagon":
        pattern_fill(layer, [(X(0.1), Y(0.05)), (X(0.9), Y(0.05)), (X(0.85), Y(0.6)), (X(0.5), Y(0.85)),
                             (X(0.15), Y(0.6))], BLACK_GRILLE, (64, 64, 70), "dots", w * 0.07, SS)
        d.line([(X(0.0), Y(0.7)), (X(0.5), Y(0.95)), (X(1.0), Y(0.7))], fill=CHROME, width=2 * SS)
    elif kind == "frameless":
        pattern_fill(layer, [(X(-0.05), Y(0.1)), (X(1.05), Y(0.1)), (X(1.0), Y(0.8)), (X(0.0), Y(0.8))],
                     shade(body_rgb, 0.55), (25, 25, 25), "dots", w * 0.06, SS)
    elif kind == "slots7":
        for k in range(7):
            u = 0.08 + k * 0.125
            rrect(d, X(u), Y(0.1), X(u + 0.08), Y(0.8), w * 0.03, fill=BLACK_GRILLE, outline=CHROME, width=SS)
    elif kind == "iron":
        pattern_fill(layer, [(X(0.15), Y(0.05)), (X(0.85), Y(0.05)), (X(0.85), Y(0.8)), (X(0.15), Y(0.8))],
                     BLACK_GRILLE, CHROME, "vbars", w * 0.05, SS)
        d.line([(X(0.2), Y(0.75)), (X(0.8), Y(0.1))], fill=CHROME, width=3 * SS)
    elif kind == "van_hex":
        pattern_fill(layer, [(X(0.1), Y(0.0)), (X(0.9), Y(0.0)), (X(1.0), Y(0.5)), (X(0.9), Y(0.9)),
                             (X(0.1), Y(0.9)), (X(0.0), Y(0.5))], BLACK_GRILLE, (90, 90, 96), "hbars", h * 0.12, SS)
    elif kind == "truck_hbars":
        pattern_fill(layer, [(X(0.0), Y(0.0)), (X(1.0), Y(0.0)), (X(1.0), Y(0.9)), (X(0.0), Y(0.9))],
                     BLACK_GRILLE, (70, 70, 74), "hbars", h * 0.12, 2 * SS)
    elif kind == "truck_vbars":
        pattern_fill(layer, [(X(0.05), Y(0.0)), (X(0.95), Y(0.0)), (X(0.9), Y(0.9)), (X(0.1), Y(0.9))],
                     BLACK_GRILLE, CHROME, "vbars", w * 0.08, 2 * SS)
    elif kind == "truck_mesh":
        pattern_fill(layer, [(X(0.0), Y(0.05)), (X(1.0), Y(0.05)), (X(1.0), Y(0.9)), (X(0.0), Y(0.9))],
                     BLACK_GRILLE, (90, 90, 96), "mesh", h * 0.09, SS)
    elif kind == "truck_chrome":
        rect(d, X(0.0), Y(0.0), X(1.0), Y(0.9), fill=BLACK_GRILLE, outline=CHROME, width=SS)
        for k in range(4):
            rect(d, X(0.04), Y(0.08 + 0.2 * k), X(0.96), Y(0.16 + 0.2 * k), fill=CHROME)
    elif kind == "truck_cross":
        pattern_fill(layer, [(X(0.0), Y(0.0)), (X(1.0), Y(0.0)), (X(1.0), Y(0.9)), (X(0.0), Y(0.9))],
                     BLACK_GRILLE, (70, 70, 74), "vbars", w * 0.06, SS)
        d.line([(X(0.0), Y(0.0)), (X(1.0), Y(0.9))], fill=CHROME, width=2 * SS)
        d.line([(X(1.0), Y(0.0)), (X(0.0), Y(0.9))], fill=CHROME, width=2 * SS)
    elif kind == "bus_slot":
        pattern_fill(layer, [(X(0.2), Y(0.55)), (X(0.8), Y(0.55)), (X(0.8), Y(0.8)), (X(0.2), Y(0.8))],
                     BLACK_GRILLE, (80, 80, 86), "hbars", h * 0.07, SS)
    elif kind == "bus_mesh":
        pattern_fill(layer, [(X(0.05), Y(0.5)), (X(0.95), Y(0.5)), (X(0.95), Y(0.85)), (X(0.05), Y(0.85))],
                     (50, 50, 56), CHROME, "dots", h * 0.1, SS)
    else:  # generic: a plain dark slot, no logo
        pattern_fill(layer, [(X(0.15), Y(0.15)), (X(0.85), Y(0.15)), (X(0.8), Y(0.7)), (X(0.2), Y(0.7))],
                     (45, 45, 50), (70, 70, 76), "hbars", h * 0.25, SS)


def draw_logo(d, kind, cx, cy, s):
    """A brand badge centred at (cx, cy), about ``s`` pixels tall."""
    if kind == "none":
        return
    lw = max(SS, int(s * 0.14))
    if kind == "rings4":
        r = s * 0.45
        for k in range(4):
            ellipse(d, cx + (k - 1.5) * r * 1.3, cy, r, r, outline=CHROME, width=lw)
    elif kind == "roundel":
        ellipse(d, cx, cy, s * 0.6, s * 0.6, fill=(20, 20, 20), outline=CHROME, width=SS)
        d.pieslice([cx - s * 0.4, cy - s * 0.4, cx + s * 0.4, cy + s * 0.4], 180, 270, fill=(40, 110, 210))
        d.pieslice([cx - s * 0.4, cy - s * 0.4, cx + s * 0.4, cy + s * 0.4], 270, 360, fill=(240, 240, 240))
        d.pieslice([cx - s * 0.4, cy - s * 0.4, cx + s * 0.4, cy + s * 0.4], 0, 90, fill=(40, 110, 210))
        d.pieslice([cx - s * 0.4, cy - s * 0.4, cx + s * 0.4, cy + s * 0.4], 90, 180, fill=(240, 240, 240))
    elif kind == "star":
        r = s * 0.65
        ellipse(d, cx, cy, r, r, outline=CHROME, width=lw)
        for k in range(3):
            a = -math.pi / 2 + k * 2 * math.pi / 3
            d.line([(cx, cy), (cx + r * math.cos(a), cy + r * math.sin(a))], fill=CHROME, width=lw)
    elif kind in ("oval3", "oval_text"):
        ellipse(d, cx, cy, s * 0.8, s * 0.5, outline=CHROME, width=lw)
        if kind == "oval3":
            ellipse(d, cx, cy - s * 0.1, s * 0.5, s * 0.18, outline=CHROME, width=lw)
            ellipse(d, cx, cy + s * 0.05, s * 0.18, s * 0.38, outline=CHROME, width=lw)
        else:
            for k in range(3):
                rect(d, cx - s * 0.5 + k * s * 0.36, cy - s * 0.2, cx - s * 0.3 + k * s * 0.36, cy + s * 0.2, fill=CHROME)
    elif kind == "oval_red":
        ellipse(d, cx, cy, s * 0.85, s * 0.45, fill=(200, 20, 30), outline=CHROME, width=SS)
        ellipse(d, cx, cy, s * 0.6, s * 0.28, fill=(240, 240, 240))
    elif kind == "oval_blue":
        ellipse(d, cx, cy, s * 0.85, s * 0.45, fill=(20, 60, 160), outline=CHROME, width=SS)
        d.line([(cx - s * 0.45, cy), (cx + s * 0.45, cy)], fill=(240, 240, 240), width=lw)
    elif kind == "vw":
        r = s * 0.6
        ellipse(d, cx, cy, r, r, outline=CHROME, width=lw)
        d.line([(cx - r * 0.55, cy - r * 0.6), (cx, cy + r * 0.2), (cx + r * 0.55, cy - r * 0.6)], fill=CHROME, width=lw)
        d.line([(cx - r * 0.75, cy - r * 0.1), (cx - r * 0.35, cy + r * 0.75), (cx, cy + r * 0.1),
                (cx + r * 0.35, cy + r * 0.75), (cx + r * 0.75, cy - r * 0.1)], fill=CHROME, width=lw)
    elif kind == "bowtie":
        d.polygon([(cx - s, cy - s * 0.15), (cx - s * 0.3, cy - s * 0.15), (cx - s * 0.2, cy - s * 0.4),
                   (cx + s * 0.2, cy - s * 0.4), (cx + s * 0.3, cy - s * 0.15), (cx + s, cy - s * 0.15),
                   (cx + s * 0.9, cy + s * 0.2), (cx + s * 0.3, cy + s * 0.2), (cx + s * 0.2, cy + s * 0.4),
                   (cx - s * 0.2, cy + s * 0.4), (cx - s * 0.3, cy + s * 0.2), (cx - s * 0.9, cy + s * 0.2)],
                  fill=(220, 180, 60), outline=CHROME)
    elif kind == "tri_shield":
        ellipse(d, cx, cy, s * 0.6, s * 0.6, outline=CHROME, width=SS)
        for k in (-1, 0, 1):
            d.line([(cx + k * s * 0.28 - s * 0.12, cy - s * 0.25 + k * s * 0.15),
                    (cx + k * s * 0.28 + s * 0.12, cy - s * 0.05 + k * s * 0.15)], fill=(200, 40, 40) if k else CHROME,
                   width=lw)
    elif kind == "h_box":
        rrect(d, cx - s * 0.55, cy - s * 0.45, cx + s * 0.55, cy + s * 0.45, s * 0.15, outline=CHROME, width=lw)
        d.line([(cx - s * 0.25, cy - s * 0.3), (cx - s * 0.25, cy + s * 0.3)], fill=CHROME, width=lw)
        d.line([(cx + s * 0.25, cy - s * 0.3), (cx + s * 0.25, cy + s * 0.3)], fill=CHROME, width=lw)
        d.line([(cx - s * 0.25, cy), (cx + s * 0.25, cy)], fill=CHROME, width=lw)
    elif kind == "slant_h":
        ellipse(d, cx, cy, s * 0.8, s * 0.45, outline=CHROME, width=lw)
        d.line([(cx - s * 0.2, cy + s * 0.3), (cx - s * 0.05, cy - s * 0.3)], fill=CHROME, width=lw)
        d.line([(cx + s * 0.1, cy + s * 0.3), (cx + s * 0.25, cy - s * 0.3)], fill=CHROME, width=lw)
        d.line([(cx - s * 0.12, cy), (cx + s * 0.18, cy)], fill=CHROME, width=lw)
    elif kind == "circle_bar":
        ellipse(d, cx, cy, s * 0.55, s * 0.55, outline=CHROME, width=lw)
        rect(d, cx - s * 0.85, cy - s * 0.15, cx + s * 0.85, cy + s * 0.15, fill=CHROME)
    elif kind == "circle_arrow":
        ellipse(d, cx, cy, s * 0.5, s * 0.5, outline=CHROME, width=lw)
        d.line([(cx + s * 0.3, cy - s * 0.3), (cx + s * 0.7, cy - s * 0.7)], fill=CHROME, width=lw)
    elif kind == "shield":
        d.polygon([(cx - s * 0.45, cy - s * 0.5), (cx + s * 0.45, cy - s * 0.5), (cx + s * 0.45, cy + s * 0.1),
                   (cx, cy + s * 0.55), (cx - s * 0.45, cy + s * 0.1)], fill=(40, 60, 120), outline=CHROME, width=SS)
    elif kind == "wing":
        ellipse(d, cx, cy, s * 0.75, s * 0.5, outline=CHROME, width=lw)
        d.line([(cx - s * 0.55, cy - s * 0.1), (cx, cy + s * 0.35), (cx + s * 0.55, cy - s * 0.1)], fill=CHROME, width=lw)
    elif kind == "lion":
        d.polygon([(cx - s * 0.35, cy - s * 0.55), (cx + s * 0.35, cy - s * 0.55), (cx + s * 0.4, cy + s * 0.2),
                   (cx, cy + s * 0.6), (cx - s * 0.4, cy + s * 0.2)], fill=CHROME, outline=(90, 90, 96))
    elif kind == "swallow":
        ellipse(d, cx, cy, s * 0.6, s * 0.6, outline=(200, 30, 30), width=lw)
        d.arc([cx - s * 0.4, cy - s * 0.4, cx + s * 0.4, cy + s * 0.4], 200, 340, fill=CHROME, width=lw)
    elif kind == "eagle":
        d.polygon([(cx - s, cy - s * 0.3), (cx, cy + s * 0.1), (cx + s, cy - s * 0.3), (cx, cy + s * 0.5)],
                  fill=CHROME, outline=(90, 90, 96))
    elif kind == "triangle":
        d.polygon([(cx, cy - s * 0.6), (cx + s * 0.6, cy + s * 0.45), (cx - s * 0.6, cy + s * 0.45)], outline=CHROME,
                  width=lw)
    elif kind == "diamond":
        d.polygon([(cx, cy - s * 0.6), (cx + s * 0.6, cy), (cx, cy + s * 0.6), (cx - s * 0.6, cy)], fill=(220, 40, 40),
                  outline=CHROME, width=SS)
    elif kind.startswith("letters"):
        col = {"letters_blue": (30, 70, 170), "letters_red": (200, 30, 30)}.get(kind, CHROME)
        for k in range(5):
            rect(d, cx - s * 1.25 + k * s * 0.52, cy - s * 0.25, cx - s * 0.9 + k * s * 0.52, cy + s * 0.25, fill=col)


def draw_plate(d, cx, cy, w, heavy, rng):
    h = w / 3.2
    bg, fg = ((228, 188, 30), (20, 20, 20)) if heavy else ((24, 62, 170), (240, 240, 240))
    rect(d, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, fill=bg, outline=fg, width=max(1, SS // 2))
    n = 7
    for k in range(n):
        x = cx - w * 0.42 + k * w * 0.84 / n
        if rng.random() < 0.85:
            rect(d, x + w * 0.02, cy - h * 0.28, x + w * 0.84 / n - w * 0.02, cy + h * 0.28, fill=fg)


def draw_stripe(d, stripe, x0, x1, y_top, y_bot):
    if not stripe:
        return
    col, style = stripe
    h = y_bot - y_top
    if style == "band":
        rect(d, x0, y_top + h * 0.05, x1, y_top + h * 0.2, fill=col)
    elif style == "swoosh":
        d.polygon([(x0, y_top + h * 0.55), (x1, y_top + h * 0.02), (x1, y_top + h * 0.2), (x0, y_top + h * 0.8)], fill=col)
    elif style == "chevron":
        for k in range(3):
            off = (x1 - x0) * 0.05 * k
            d.line([(x0 + off, y_bot), (x0 + off + h * 0.35, y_top + h * 0.55)], fill=col, width=2 * SS)
            d.line([(x1 - off, y_bot), (x1 - off - h * 0.35, y_top + h * 0.55)], fill=col, width=2 * SS)


def vehicle_levels(body, y0, y1):
    p = BODY[body]
    bh = y1 - y0
    y_roof = y0 + (bh * 0.12 if body == "truck" else 0.0)
    y_belt = y_roof + p["cabin"] * bh
    y_face = y_belt + p["face"] * bh
    y_bump = y_face + p["bumper"] * bh
    return y_roof, y_belt, y_face, y_bump


def draw_vehicle_end(layer, spec, box, rng, rear):
    """The front (or rear) of a vehicle inside ``box`` = (x0, y0, x1, y1)."""
    d = ImageDraw.Draw(layer)
    body, sig, base = spec["body"], spec["sig"], spec["rgb"]
    p = BODY[body]
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    half = bw / 2 * 0.93
    roof_half = half * p["roof"]
    y_roof, y_belt, y_face, y_bump = vehicle_levels(body, y0, y1)
    face_h = y_face - y_belt
    heavy = body in ("truck", "bus")

    if body == "truck":  # cargo box behind the cab
        paint_body(layer, [(cx - half, y0), (cx + half, y0), (cx + half, y_roof + bh * 0.15), (cx - half, y_roof + bh * 0.15)],
                   shade(base, 0.92), rng, y0, y1)
    wheel_w = bw * (0.16 if heavy else 0.14)
    for sgn in (-1, 1):
        xa = cx + sgn * (half * 0.9)
        rrect(d, xa - wheel_w / 2, y_bump - bh * 0.06, xa + wheel_w / 2, y1, wheel_w * 0.25, fill=(22, 22, 24))
    r = bw * 0.04
    body_pts = [(cx - roof_half, y_roof + r), (cx - roof_half + r, y_roof), (cx + roof_half - r, y_roof),
                (cx + roof_half, y_roof + r), (cx + half * 0.97, y_belt), (cx + half, y_belt + face_h * 0.15),
                (cx + half, y_bump - bh * 0.03), (cx + half * 0.96, y_bump), (cx - half * 0.96, y_bump),
                (cx - half, y_bump - bh * 0.03), (cx - half, y_belt + face_h * 0.15), (cx - half * 0.97, y_belt)]
    paint_body(layer, body_pts, base, rng, y0, y1)

    # glass
    ins = bw * 0.035
    if rear and body in ("bus", "truck"):
        glass = [(cx - roof_half * 0.6, y_roof + ins), (cx + roof_half * 0.6, y_roof + ins),
                 (cx + roof_half * 0.6, y_roof + (y_belt - y_roof) * 0.45), (cx - roof_half * 0.6, y_roof + (y_belt - y_roof) * 0.45)]
        if body == "truck":
            glass = None
    elif rear:
        glass = [(cx - roof_half + ins, y_roof + ins * 1.4), (cx + roof_half - ins, y_roof + ins * 1.4),
                 (cx + half * 0.85, y_belt - ins), (cx - half * 0.85, y_belt - ins)]
    else:
        glass = [(cx - roof_half + ins * 0.8, y_roof + ins), (cx + roof_half - ins * 0.8, y_roof + ins),
                 (cx + half * 0.9, y_belt - ins * 0.6), (cx - half * 0.9, y_belt - ins * 0.6)]
    if glass:
        draw_glass(layer, glass, rng, rear)
    if body == "bus" and not rear:  # destination sign
        rect(d, cx - roof_half * 0.85, y_roof + ins, cx + roof_half * 0.85, y_roof + ins + bh * 0.07, fill=(15, 15, 15))
        for k in range(int(rng.integers(4, 9))):
            xk = cx - roof_half * 0.7 + k * roof_half * 0.18
            rect(d, xk, y_roof + ins + bh * 0.02, xk + roof_half * 0.1, y_roof + ins + bh * 0.05, fill=(255, 150, 30))
    if rear and body == "truck":  # cargo doors
        for u in (-0.5, 0.0, 0.5):
            d.line([(cx + u * half, y_roof + bh * 0.03), (cx + u * half, y_face)], fill=shade(base, 0.6), width=SS)
        for u in (-0.25, 0.25):
            d.line([(cx + u * half, y_roof + bh * 0.1), (cx + u * half, y_face - bh * 0.05)], fill=(150, 150, 150),
                   width=SS)
    if not rear and body != "bus":  # mirrors
        for sgn in (-1, 1):
            xm = cx + sgn * half
            d.polygon([(xm, y_belt - face_h * 0.35), (xm + sgn * bw * 0.045, y_belt - face_h * 0.45),
                       (xm + sgn * bw * 0.05, y_belt - face_h * 0.05), (xm, y_belt)], fill=shade(base, 0.85),
                      outline=outline_of(base))

    draw_stripe(d, sig.get("stripe"), cx - half, cx + half, y_belt, y_face)

    # lamps, grille, logo, plate, bumper
    light = sig["tail"] if rear else sig["light"]
    lit = (200, 30, 36) if rear else (236, 240, 246)
    lw = half * (0.38 if light not in ("vertical", "round", "quad") else 0.26)
    lh = face_h * (0.9 if light == "vertical" else 0.4)
    ly0 = y_belt + face_h * (0.12 if not heavy else 0.45)
    if heavy and light == "vertical":
        ly0 = y_belt + face_h * 0.05
    if body == "truck":
        ly0, lh = y_face + (y_bump - y_face) * 0.05, (y_bump - y_face) * 0.6
    for sgn in (-1, 1):
        xa = cx + sgn * half * 0.93
        xb = xa - sgn * lw
        draw_lamp(d, (min(xa, xb), ly0, max(xa, xb), ly0 + lh), light, lit, None if rear else sig.get("drl"), mirror=(sgn > 0))
    if rear and light == "bar":
        rect(d, cx - half * 0.55, ly0 + lh * 0.35, cx + half * 0.55, ly0 + lh * 0.6, fill=(170, 24, 30))
    logo_s = max(3.0 * SS, min(face_h * 0.22, bw * 0.08))
    if not rear:
        gx0, gx1 = cx - half * 0.93 + lw + bw * 0.02, cx + half * 0.93 - lw - bw * 0.02
        if body == "truck":
            gx0, gx1 = cx - half * 0.75, cx + half * 0.75
        gy0 = y_belt + face_h * 0.1
        gy1 = y_face + (y_bump - y_face) * (0.1 if body == "truck" else 0.55)
        draw_grille(layer, sig["grille"], (gx0, gy0, gx1, gy1), base, rng)
        logo_y = gy0 + (gy1 - gy0) * (0.37 if sig["grille"] in ("wide_rect", "kidney", "split") else 0.3)
        if sig["grille"] == "kidney":
            logo_y = gy0 - logo_s * 0.3
        if sig["grille"] == "split":
            logo_y = gy0 + (gy1 - gy0) * 0.31
        if body == "bus":
            logo_y = y_belt + face_h * 0.25
        draw_logo(d, sig["logo"], cx, logo_y, logo_s)
    else:
        draw_logo(d, sig["logo"], cx, y_belt + face_h * 0.3, logo_s)
        if body == "bus":
            pattern_fill(layer, [(cx - half * 0.6, y_belt + face_h * 0.1), (cx + half * 0.6, y_belt + face_h * 0.1),
                                 (cx + half * 0.6, y_belt + face_h * 0.1 + bh * 0.15), (cx - half * 0.6, y_belt + face_h * 0.1 + bh * 0.15)],
                         shade(base, 0.6), (20, 20, 20), "hbars", bh * 0.025, SS)
    # bumper, lower intake, plate
    rect(d, cx - half * 0.96, y_face, cx + half * 0.96, y_face + SS, fill=shade(base, 0.7))
    if not rear and body not in ("truck", "bus"):
        d.polygon([(cx - half * 0.6, y_face + (y_bump - y_face) * 0.45), (cx + half * 0.6, y_face + (y_bump - y_face) * 0.45),
                   (cx + half * 0.5, y_bump - bh * 0.015), (cx - half * 0.5, y_bump - bh * 0.015)], fill=(35, 35, 38))
    plate_w = bw * (0.2 if not heavy else 0.16)
    plate_y = y_face + (y_bump - y_face) * (0.55 if not rear else 0.35)
    if rear and body == "truck":
        plate_y = y_face + (y_bump - y_face) * 0.5
    draw_plate(d, cx, plate_y, plate_w, heavy, rng)
    if rear and not heavy and rng.random() < 0.6:
        ellipse(d, cx + half * 0.6, y_bump - bh * 0.01, bw * 0.025, bh * 0.015, fill=(30, 30, 30))


def draw_vehicle_side_panel(layer, spec, face_box, far_x, rng):
    """The visible flank of a three-quarter view: from the front face's right edge back to
    ``far_x``, converging with distance (the far end is lower at the roof, higher at the sill)."""
    d = ImageDraw.Draw(layer)
    body, base = spec["body"], spec["rgb"]
    x0, y0, x1, y1 = face_box
    bh = y1 - y0
    y_roof, y_belt, y_face, y_bump = vehicle_levels(body, y0, y1)
    half = (x1 - x0) / 2 * 0.93
    fcx = (x0 + x1) / 2
    near_x, roof_x = fcx + half, fcx + half * BODY[body]["roof"]
    span = far_x - near_x
    boxy = body in ("bus", "truck", "microbus", "van")
    far_roof = y_roof + bh * (0.05 if boxy else 0.12)
    far_belt, far_sill = y_belt + bh * 0.02, y_bump - bh * 0.07
    far_roof_x = far_x - span * (0.04 if boxy else 0.22)
    outline = [(roof_x, y_roof), (far_roof_x, far_roof), (far_x, far_belt), (far_x, far_sill),
               (near_x, y_bump), (near_x, y_belt + (y_face - y_belt) * 0.15), (near_x - half * 0.03, y_belt)]
    for u in (0.18, 0.8):  # wheels, behind the body's lower edge
        wx = near_x + span * u
        wy = y_bump + (far_sill - y_bump) * u
        ry = bh * (0.1 - 0.02 * u)
        ellipse(d, wx, wy, span * 0.09 * (1 - 0.2 * u), ry, fill=(22, 22, 24))
        ellipse(d, wx, wy, span * 0.04 * (1 - 0.2 * u), ry * 0.5, fill=(150, 150, 156))
    paint_body(layer, outline, base, rng, y0, y1, dim=0.84)
    t = 0.12 * bh
    lerp = lambda a, b, u: a + (b - a) * u  # noqa: E731
    if body == "truck":  # only the cab's door window; the cargo box side is plain
        win = [(roof_x + span * 0.03, y_roof + t * 0.4), (near_x + span * 0.22, lerp(y_roof, far_roof, 0.22) + t * 0.4),
               (near_x + span * 0.22, lerp(y_belt, far_belt, 0.22) - t * 0.1), (near_x + span * 0.03, y_belt - t * 0.1)]
    else:
        win = [(roof_x + span * 0.04, y_roof + t * 0.35), (far_roof_x - span * 0.05, far_roof + t * 0.3),
               (far_x - span * 0.05, far_belt - t * 0.1), (near_x + span * 0.03, y_belt - t * 0.1)]
    draw_glass(layer, win, rng)
    n_pillars = 5 if body in ("bus", "microbus") else 1
    for k in range(1, n_pillars + 1):
        u = k / (n_pillars + 1)
        d.line([(lerp(win[0][0], win[1][0], u), lerp(win[0][1], win[1][1], u)),
                (lerp(win[3][0], win[2][0], u), lerp(win[3][1], win[2][1], u))], fill=shade(base, 0.8), width=2 * SS)
    door_x = near_x + span * 0.45
    d.line([(door_x, lerp(y_belt, far_belt, 0.45)), (door_x, lerp(y_bump, far_sill, 0.45))], fill=outline_of(base), width=SS)
    stripe = spec["sig"].get("stripe")
    if stripe:
        top_n, top_f = lerp(y_belt, y_face, 0.3), lerp(far_belt, far_sill, 0.3)
        bot_n, bot_f = lerp(y_belt, y_face, 0.5), lerp(far_belt, far_sill, 0.45)
        d.polygon([(near_x, top_n), (far_x, top_f), (far_x, bot_f), (near_x, bot_n)], fill=stripe[0])


def render_vehicle(v, rng):
    """RGBA vehicle at the final size plus the ground line y."""
    view = weighted_choice(rng, ["front", "rear", "three_quarter"], [0.5, 0.25, 0.25])
    W, H = vehicle_size(v["body"], view, rng)
    Ws, Hs = W * SS, H * SS
    variants = VEHICLE_COLORS[v["color"]][1]
    spec = dict(body=v["body"], sig=BRANDS[v["brand"]][2] if v["brand"] else GENERIC_SIGNATURE,
                rgb=jitter(pick(rng, variants), rng, 8))
    layer = Image.new("RGBA", (Ws, Hs), (0, 0, 0, 0))
    mx, mt, mb = Ws * rng.uniform(0.02, 0.06), Hs * rng.uniform(0.03, 0.08), Hs * rng.uniform(0.02, 0.05)
    box = (mx, mt, Ws - mx, Hs - mb)
    if view == "three_quarter":
        frac = rng.uniform(0.62, 0.74)
        face_box = (box[0], box[1], box[0] + (box[2] - box[0]) * frac, box[3])
        draw_vehicle_side_panel(layer, spec, face_box, box[2], rng)
        draw_vehicle_end(layer, spec, face_box, rng, rear=False)
    else:
        draw_vehicle_end(layer, spec, box, rng, rear=(view == "rear"))
    if rng.random() < 0.5:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    layer = layer.resize((W, H), Image.Resampling.LANCZOS)
    return layer, (Hs - mb) / SS


# --------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------

def web_background(W, H, rng):
    """Product-photo look: plain or softly graded light backdrop."""
    base = np.array(jitter((rng.uniform(222, 250),) * 3, rng, 6), dtype=np.float32)
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    if kind == 0:
        field = np.zeros((H, W), np.float32)
    elif kind == 1:
        field = -rng.uniform(8, 25) * (yy / H)
    else:
        r = np.sqrt(((xx - W / 2) / W) ** 2 + ((yy - H * 0.4) / H) ** 2)
        field = -rng.uniform(10, 30) * r
    img = base[None, None, :] + field[..., None]
    return np.clip(img, 0, 255)


def add_shadow(bg, ground_y, x0, x1, strength):
    H, W = bg.shape[:2]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cx, rx, ry = (x0 + x1) / 2, max(2.0, (x1 - x0) / 2), max(2.0, H * 0.035)
    e = ((xx - cx) / rx) ** 2 + ((yy - ground_y) / ry) ** 2
    bg *= (1 - strength * np.exp(-e * 1.5))[..., None]
    return bg


def value_noise(shape, rng, cell):
    """Smooth random texture (bilinear-upsampled random grid)."""
    H, W = shape
    gh, gw = max(2, int(H / cell) + 2), max(2, int(W / cell) + 2)
    grid = Image.fromarray((rng.random((gh, gw)) * 255).astype(np.uint8), "L")
    return np.asarray(grid.resize((W, H), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def street_background(W, H, rng, pedestrian, night):
    """Asphalt / pavement with markings and background objects; darker and lamp-lit at night."""
    tone = rng.uniform(35, 70) if night else rng.uniform(85, 130)
    warm = np.array([1.04, 1.0, 0.95] if rng.random() < 0.5 else [0.98, 1.0, 1.03], np.float32)
    grain = (rng.normal(0, 1, (H, W)).astype(np.float32) * (6 if not night else 4)
             + (value_noise((H, W), rng, 14) - 0.5) * 30)
    img = (tone + grain)[..., None] * warm[None, None, :]
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(canvas)
    paint = (int(tone * 2.1 + 40),) * 3
    ground = weighted_choice(rng, ["tiles", "zebra", "lanes"], [0.45, 0.2, 0.35] if pedestrian else [0.0, 0.1, 0.9])
    if ground == "tiles":  # pavement tiles in perspective
        tile_col = clamp_rgb([tone * 1.25] * 3)
        d.rectangle([0, 0, W, H], fill=tile_col)
        y, step = H * rng.uniform(0.0, 0.1), H * 0.05
        while y < H:
            d.line([(0, y), (W, y)], fill=shade(tile_col, 0.75), width=1)
            y += step
            step *= 1.12
        for k in range(-3, 6):
            xb = W * (k / 3.0) + rng.uniform(-3, 3)
            d.line([(xb * 0.8 + W * 0.1, 0), (xb, H)], fill=shade(tile_col, 0.75), width=1)
        img2 = np.asarray(canvas, np.float32) + grain[..., None] * 0.6
        canvas = Image.fromarray(np.clip(img2, 0, 255).astype(np.uint8), "RGB")
        d = ImageDraw.Draw(canvas)
    elif ground == "zebra":  # a zebra crossing, bars widening towards the camera
        zebra = clamp_rgb([tone * 1.5 + 25] * 3)
        y, step = rng.uniform(-0.1, 0.1) * H, H * rng.uniform(0.12, 0.18)
        while y < H:
            d.rectangle([0, y, W, y + step * 0.5], fill=zebra)
            y += step
            step *= 1.15
    else:  # lane markings converging upwards
        yellow = rng.random() < 0.3
        col = (220, 190, 60) if yellow else paint
        for xb in (rng.uniform(-0.1, 0.25) * W, rng.uniform(0.75, 1.1) * W):
            xt = W / 2 + (xb - W / 2) * 0.55
            for t in np.arange(rng.uniform(0, 0.3), 1.0, 0.3):
                ya, yb = H * t, H * min(1.0, t + 0.16)
                xa, xb2 = xt + (xb - xt) * t, xt + (xb - xt) * min(1.0, t + 0.16)
                d.line([(xa, ya), (xb2, yb)], fill=col, width=max(2, int(W * 0.025 * (0.5 + t))))
    # background objects: a building edge, a parked car, a kerb
    if rng.random() < 0.5:
        x = pick(rng, [0, W * rng.uniform(0.75, 0.95)])
        d.rectangle([x, 0, x + W * rng.uniform(0.1, 0.3), H * rng.uniform(0.2, 0.5)],
                    fill=jitter((150, 140, 130) if not night else (50, 48, 46), rng, 20))
    if rng.random() < 0.4:
        y = H * rng.uniform(0.55, 0.9)
        d.line([(0, y), (W, y - H * rng.uniform(-0.1, 0.1))], fill=shade(paint, 0.8), width=max(2, H // 40))
    if rng.random() < 0.4:
        xc, yc = W * rng.uniform(0, 1), H * rng.uniform(0.0, 0.35)
        col = jitter(pick(rng, [(180, 180, 185), (40, 40, 45), (150, 30, 30), (40, 70, 140)]), rng, 15)
        rrect(d, xc - W * 0.2, yc - H * 0.06, xc + W * 0.2, yc + H * 0.08, H * 0.03, fill=shade(col, 0.6 if night else 0.9))
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))  # background is out of focus
    return np.asarray(canvas, np.float32)


def draw_occluders(img, rng, pedestrian, night):
    """Partial foreground objects at the crop border (never over the middle)."""
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(canvas)
    W, H = canvas.size
    max_w = W * (0.14 if pedestrian else 0.2)
    for _ in range(int(rng.integers(0, 3))):
        kind = pick(rng, ["pole", "person", "car", "bush"])
        left = rng.random() < 0.5
        w = rng.uniform(0.4, 1.0) * max_w
        x0, x1 = (0, w) if left else (W - w, W)
        dim = 0.4 if night else 1.0
        if kind == "pole":
            col = shade(jitter((110, 110, 115), rng, 30), dim)
            d.rectangle([x0 + w * 0.3 if left else x0, 0, x1 if not left else x1 - w * 0.3, H], fill=col)
            if rng.random() < 0.4:
                d.rectangle([x0, H * 0.1, x1, H * 0.2], fill=shade((200, 200, 40), dim))
        elif kind == "person":
            col = shade(pick_weighted_rgb(rng, CLOTHES), dim)
            y0 = H * rng.uniform(0.25, 0.5)
            rrect(d, x0 - w * 0.5 if left else x0, y0, x1 if left else x1 + w * 0.5, H + 5, w * 0.3, fill=col)
            ellipse(d, x1 - w * 0.2 if left else x0 + w * 0.2, y0 - H * 0.05, w * 0.4, H * 0.05,
                    fill=shade(pick(rng, SKIN), dim))
        elif kind == "car":
            col = shade(jitter(pick(rng, [(200, 200, 205), (30, 30, 35), (160, 30, 30), (50, 80, 150)]), rng, 15), dim)
            y0 = H * rng.uniform(0.7, 0.85)
            rrect(d, x0 - w if left else x0, y0, x1 if left else x1 + w, H + 5, H * 0.05, fill=col)
            d.rectangle([x0 if left else x0 + w * 0.2, y0 + H * 0.03, x1 - w * 0.2 if left else x1, y0 + H * 0.08],
                        fill=(30, 36, 44))
        else:
            col = shade(jitter((50, 110, 50), rng, 20), dim)
            for _k in range(6):
                ellipse(d, rng.uniform(x0, x1), H - rng.uniform(0, H * 0.2), w * 0.4, H * 0.06, fill=col)
    return np.asarray(canvas, np.float32)


# --------------------------------------------------------------------------------------
# Camera looks (degradation pipelines) and the clean web look
# --------------------------------------------------------------------------------------

def composite(bg, layer, shadow, ground_y):
    """Alpha-blend the object layer over ``bg`` (float RGB), with a soft ground shadow."""
    a = np.asarray(layer, np.float32)
    alpha = a[..., 3:4] / 255.0
    xs = np.nonzero(alpha[..., 0].max(axis=0) > 0.5)[0]
    if shadow and len(xs):
        bg = add_shadow(bg, ground_y, xs[0], xs[-1], shadow)
    return bg * (1 - alpha) + a[..., :3] * alpha


def to_image(arr):
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(img, quality, subsampling):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(quality), subsampling=subsampling)
    return buf.getvalue()


def look_web(layer, ground_y, rng, pedestrian):
    H, W = layer.size[1], layer.size[0]
    bg = web_background(W, H, rng)
    img = composite(bg, layer, rng.uniform(0.08, 0.22), ground_y)
    img += rng.normal(0, 1.2, img.shape).astype(np.float32)
    return jpeg_bytes(to_image(img), rng.integers(88, 96), 0)


def look_dev(layer, ground_y, rng, pedestrian):
    """Daytime street camera: clutter, squeeze/shear, resampling, blur, noise, green/blue WB, flat contrast."""
    W, H = layer.size
    bg = street_background(W, H, rng, pedestrian, night=False)
    img = composite(bg, layer, rng.uniform(0.2, 0.4), ground_y)
    img = draw_occluders(img, rng, pedestrian, night=False)
    im = to_image(img)
    if rng.random() < 0.6:  # top-down-ish squeeze
        im = im.resize((W, max(16, int(H * rng.uniform(0.8, 1.0)))), Image.Resampling.BILINEAR)
    else:  # slight shear
        sh = rng.uniform(-0.12, 0.12)
        im = im.transform(im.size, Image.Transform.AFFINE, (1, sh, -sh * im.size[1] / 2, 0, 1, 0),
                          resample=Image.Resampling.BILINEAR, fillcolor=tuple(int(v) for v in img.mean(axis=(0, 1))))
    w2, h2 = im.size
    f = rng.uniform(0.25, 0.5)
    im = im.resize((max(8, int(w2 * f)), max(8, int(h2 * f))), Image.Resampling.BOX)
    im = im.resize((w2, h2), Image.Resampling.BILINEAR)
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0)))
    a = np.asarray(im, np.float32)
    cast = [rng.uniform(0.84, 0.95), rng.uniform(1.0, 1.08), rng.uniform(0.95, 1.05)]
    if rng.random() < 0.5:
        cast = [rng.uniform(0.84, 0.95), rng.uniform(0.97, 1.03), rng.uniform(1.04, 1.15)]
    a = a * np.array(cast, np.float32)[None, None, :]
    k = rng.uniform(0.6, 0.85)
    a = (a - a.mean()) * k + a.mean() + rng.uniform(5, 25)
    a += rng.normal(0, rng.uniform(3, 9), a.shape[:2])[..., None].astype(np.float32)
    a += rng.normal(0, rng.uniform(1, 4), a.shape).astype(np.float32)
    return jpeg_bytes(to_image(a), rng.integers(15, 46), 2)


_FONTS: dict[int, ImageFont.ImageFont] = {}


def osd_font(size):
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def osd_text(rng):
    y, mo, da = int(rng.integers(2019, 2025)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    h, mi, s = int(rng.integers(17, 24)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    cam = int(rng.integers(1, 40))
    return pick(rng, [f"{y}-{mo:02d}-{da:02d} {h:02d}:{mi:02d}:{s:02d}", f"CAM{cam:02d} {h:02d}:{mi:02d}:{s:02d}",
                      f"{mo:02d}/{da:02d}/{y} {h:02d}:{mi:02d}", f"CH{cam:02d}"])


def motion_blur(a, rng):
    length = int(rng.integers(3, 10))
    ang = rng.uniform(-0.5, 0.5) + (0 if rng.random() < 0.7 else math.pi / 2)
    dx, dy = math.cos(ang), math.sin(ang)
    pad = length + 1
    p = np.pad(a, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros_like(a)
    H, W = a.shape[:2]
    for t in range(length):
        ox, oy = int(round((t - length / 2) * dx)), int(round((t - length / 2) * dy))
        out += p[pad + oy:pad + oy + H, pad + ox:pad + ox + W]
    return out / length


def chroma_bleed(im, rng):
    ycc = im.convert("YCbCr")
    yc, cb, cr = ycc.split()
    W, H = im.size
    fx = int(rng.integers(2, 5))
    small = (max(2, W // fx), max(2, H // 2))
    shift = int(rng.integers(1, 3))
    planes = []
    for ch in (cb, cr):
        ch = ch.resize(small, Image.Resampling.BOX).resize((W, H), Image.Resampling.BILINEAR)
        arr = np.asarray(ch)
        arr = np.concatenate([arr[:, :1].repeat(shift, axis=1), arr[:, :-shift]], axis=1)
        planes.append(Image.fromarray(np.ascontiguousarray(arr), "L"))
    return Image.merge("YCbCr", (yc, planes[0], planes[1])).convert("RGB")


def look_holdout(layer, ground_y, rng, pedestrian):
    """Night / dusk camera: exposure, sodium cast, glare, motion blur, interlace / vignette, OSD, chroma bleed."""
    W, H = layer.size
    bg = street_background(W, H, rng, pedestrian, night=True)
    lamp_x, lamp_y = rng.uniform(0, W), rng.uniform(-0.3, 0.4) * H  # a street lamp's pool of light
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    pool = np.exp(-(((xx - lamp_x) / (W * 0.8)) ** 2 + ((yy - lamp_y) / (H * 0.8)) ** 2))
    img = composite(bg, layer, rng.uniform(0.25, 0.45), ground_y)
    if rng.random() < 0.2:
        img = draw_occluders(img, rng, pedestrian, night=True)
    im = to_image(img).rotate(rng.uniform(-4, 4), resample=Image.Resampling.BILINEAR,
                              fillcolor=tuple(int(v * 0.5) for v in img.mean(axis=(0, 1))))
    a = np.asarray(im, np.float32)
    exposure = rng.uniform(0.6, 0.9) * (0.75 + 0.45 * pool)
    a = 255.0 * (np.clip(a * exposure[..., None], 0, 255) / 255.0) ** rng.uniform(1.0, 1.3)
    if rng.random() < 0.5:  # sodium lamp
        t = rng.uniform(0.4, 0.8)
        a = a * (1 - t + t * np.array([1.15, 0.97, 0.68], np.float32))[None, None, :]
    if rng.random() < 0.4:  # headlight glare
        for _ in range(int(rng.integers(1, 3))):
            gx, gy = rng.uniform(-0.1, 1.1) * W, rng.uniform(0.4, 1.1) * H
            r = rng.uniform(0.08, 0.25) * (W if pedestrian else max(W, H))  # never hides a whole figure
            blob = np.exp(-(((xx - gx) ** 2 + (yy - gy) ** 2) / (r * r)))
            a += rng.uniform(70, 180) * blob[..., None] * np.array([1.0, 0.97, 0.85], np.float32)[None, None, :]
    if rng.random() < 0.7:
        a = motion_blur(a, rng)
    if rng.random() < 0.45:  # interlacing: odd fields shifted and dimmer
        s = int(rng.integers(1, 3))
        odd = a[1::2]
        a[1::2] = np.concatenate([odd[:, :1].repeat(s, axis=1), odd[:, :-s]], axis=1) * rng.uniform(0.85, 0.95)
    if rng.random() < 0.6:  # vignetting
        r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
        a *= (1 - rng.uniform(0.2, 0.45) * r2 / 2)[..., None]
    if rng.random() < 0.35:  # weak colour: at most 60 % desaturated
        t = rng.uniform(0.2, 0.6)
        lum = a @ np.array([0.299, 0.587, 0.114], np.float32)
        a = a * (1 - t) + lum[..., None] * t
    noise = Image.fromarray((rng.random((max(2, H // 2), max(2, W // 2), 3)) * 255).astype(np.uint8), "RGB")
    a += (np.asarray(noise.resize((W, H), Image.Resampling.BILINEAR), np.float32) - 127.5) * rng.uniform(0.04, 0.1)
    im = chroma_bleed(to_image(a), rng)
    d = ImageDraw.Draw(im)
    size = int(rng.integers(7, 10))
    font = osd_font(size)
    text = osd_text(rng)
    bottom = rng.random() < (0.8 if pedestrian else 0.5)  # keep a pedestrian's head and hat clear
    x = 2 if rng.random() < 0.5 else max(2, W - 2 - int(d.textlength(text, font=font)))
    y = H - size - 3 if bottom else 1
    d.text((x, y), text, font=font, fill=pick(rng, [(240, 240, 240), (250, 230, 80)]), stroke_width=1,
           stroke_fill=(10, 10, 10))
    return jpeg_bytes(im, rng.integers(20, 61), 2)


# The holdout2 look: written later, as a second never-tuned check, by someone who had not
# seen the training augmentations. An overcast / rainy / foggy day seen by a high-mounted,
# wide-angle dome camera with a cheap sensor, in-camera sharpening and a low-bitrate codec;
# the crop is cut from few native pixels and upscaled.

def remap_bilinear(a, sx, sy):
    """Sample float image ``a`` (H, W, C) at float source coordinates (edge clamped)."""
    H, W = a.shape[:2]
    sx = np.clip(sx, 0, W - 1)
    sy = np.clip(sy, 0, H - 1)
    x0 = np.minimum(np.floor(sx).astype(np.int64), W - 2) if W > 1 else np.zeros(sx.shape, np.int64)
    y0 = np.minimum(np.floor(sy).astype(np.int64), H - 2) if H > 1 else np.zeros(sy.shape, np.int64)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    top = a[y0, x0] * (1 - fx) + a[y0, x1] * fx
    bot = a[y1, x0] * (1 - fx) + a[y1, x1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)


def barrel_distort(a, rng):
    """Wide-angle barrel distortion; the crop lies off the lens centre, so lines bow asymmetrically."""
    H, W = a.shape[:2]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cx, cy = W * rng.uniform(-0.6, 1.6), H * rng.uniform(-0.4, 1.4)  # the frame's centre, relative to the crop
    norm = 1.6 * max(W, H)
    dx, dy = (xx - cx) / norm, (yy - cy) / norm
    k = rng.uniform(0.08, 0.22)
    r2 = dx * dx + dy * dy
    # keep the crop's own centre fixed so the figure does not drift out of frame
    ox, oy = (W / 2 - cx) / norm, (H / 2 - cy) / norm
    g0 = 1 + k * (ox * ox + oy * oy)
    scale = (1 + k * r2) / g0
    sx = cx + dx * scale * norm
    sy = cy + dy * scale * norm
    return remap_bilinear(a, sx, sy)


def rain_streaks(a, rng, strength):
    """Out-of-focus falling rain: thin slanted bright streaks, blurred."""
    H, W = a.shape[:2]
    m = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(m)
    ang = rng.uniform(-0.35, 0.35)
    n = int(W * H / rng.uniform(600, 1500))
    for _ in range(n):
        x, y = rng.uniform(-10, W + 10), rng.uniform(-30, H + 10)
        length = rng.uniform(12, 40)
        a2 = ang + rng.normal(0, 0.04)
        d.line([(x, y), (x + length * math.sin(a2), y + length * math.cos(a2))],
               fill=int(rng.uniform(90, 255)), width=int(rng.integers(1, 4)))
    m = m.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.6)))
    mask = np.asarray(m, np.float32)[..., None] / 255.0 * strength
    return a * (1 - mask) + np.float32(225.0) * mask


def lens_droplets(a, rng):
    """Water drops on the dome: blurred, slightly brighter discs with a faint dark rim."""
    H, W = a.shape[:2]
    blurred = np.asarray(to_image(a).filter(ImageFilter.GaussianBlur(max(1.5, W * 0.02))), np.float32)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        r = rng.uniform(0.04, 0.09) * min(W, H * 0.7)
        d = np.sqrt((xx - cx) ** 2 + ((yy - cy) / rng.uniform(0.8, 1.3)) ** 2) / r
        inside = np.clip((1.0 - d) * 4, 0, 1)[..., None]
        rim = np.exp(-((d - 1.0) / 0.12) ** 2)[..., None]
        a = a * (1 - inside) + (blurred * 1.06 + 6) * inside
        a = a * (1 - 0.25 * rim)
    return a


def lens_smudge(a, rng):
    """A greasy / dusty patch on the dome: local veil, blur and lost contrast."""
    H, W = a.shape[:2]
    blot = value_noise((H, W), rng, max(8, min(W, H) / 3))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    spot = np.exp(-(((xx - cx) / (W * 0.55)) ** 2 + ((yy - cy) / (H * 0.45)) ** 2))
    m = np.clip((blot * spot - 0.2) * 2.0, 0, 1) * rng.uniform(0.25, 0.45)
    m = m[..., None].astype(np.float32)
    blurred = np.asarray(to_image(a).filter(ImageFilter.GaussianBlur(rng.uniform(1.2, 2.5))), np.float32)
    veil = np.array(jitter((150, 140, 120), rng, 15), np.float32)[None, None, :]
    return a * (1 - m) + (blurred * 0.75 + veil * 0.25) * m


def near_wire(a, rng, pedestrian):
    """An out-of-focus cable or thin branch right in front of the dome, crossing the crop."""
    H, W = a.shape[:2]
    m = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(m)
    y_left = H * rng.uniform(0.0, 0.55 if pedestrian else 0.9)
    y_right = y_left + H * rng.uniform(-0.25, 0.25)
    sag = H * rng.uniform(0.0, 0.08)
    pts = [(x, y_left + (y_right - y_left) * x / W + sag * math.sin(math.pi * x / W)) for x in np.linspace(-4, W + 4, 12)]
    d.line(pts, fill=255, width=max(2, int(W * rng.uniform(0.015, 0.035))), joint="curve")
    m = m.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 3.0)))
    mask = np.asarray(m, np.float32)[..., None] / 255.0 * rng.uniform(0.55, 0.85)
    col = np.array(jitter((45, 44, 42), rng, 10), np.float32)[None, None, :]
    return a * (1 - mask) + col * mask


def flatten_macroblocks(a, rng):
    """Low-bitrate codec: low-detail 16 x 16 macro-blocks lose their texture (kept as a flat-ish mean)."""
    H, W = a.shape[:2]
    thr = rng.uniform(5, 12)
    keep = rng.uniform(0.1, 0.35)  # a little residual detail survives in flattened blocks
    out = a.copy()
    for by in range(0, H, 16):
        for bx in range(0, W, 16):
            blk = a[by:by + 16, bx:bx + 16]
            if blk.std() < thr:
                mean = blk.mean(axis=(0, 1), keepdims=True)
                out[by:by + 16, bx:bx + 16] = mean + (blk - mean) * keep
    return out


def look_holdout2(layer, ground_y, rng, pedestrian):
    """Overcast / rainy / foggy day, high wide-angle dome camera, cheap sensor, sharpening, low-bitrate codec."""
    W, H = layer.size
    weather = weighted_choice(rng, ["overcast", "rain", "fog"], [0.35, 0.4, 0.25])
    bg = street_background(W, H, rng, pedestrian, night=False)
    wet = rng.uniform(0.65, 0.85) if weather == "rain" else rng.uniform(0.85, 1.0)  # wet asphalt is darker
    bg = bg * wet + rng.uniform(0, 12)
    img = composite(bg, layer, rng.uniform(0.03, 0.12), ground_y)  # diffuse light: faint shadow
    a = img.astype(np.float32)
    # scene: haze toward a grey-blue airlight, a little stronger at the (farther) top of the crop
    air = np.array(jitter((rng.uniform(165, 200),) * 3, rng, 4), np.float32) + np.array([-4, 2, 10], np.float32)
    t0 = {"overcast": (0.04, 0.14), "rain": (0.1, 0.25), "fog": (0.22, 0.4)}[weather]
    t = rng.uniform(*t0)
    yy = np.mgrid[0:H, 0:W][0].astype(np.float32)
    tmap = (t * (1.15 - 0.3 * yy / max(H - 1, 1)))[..., None]
    a = a * (1 - tmap) + air[None, None, :] * tmap
    if weather == "rain":
        a = rain_streaks(a, rng, rng.uniform(0.2, 0.45))
    if rng.random() < 0.15:
        a = near_wire(a, rng, pedestrian)
    # optics: top-down keystone (the near top of the object looks wider), wide-angle barrel
    if rng.random() < 0.65:
        k = rng.uniform(0.03, 0.1)
        im = to_image(a).transform((W, H), Image.Transform.QUAD,
                                   (W * k, 0, 0, H, W, H, W * (1 - k), 0), resample=Image.Resampling.BILINEAR)
        a = np.asarray(im, np.float32)
    if rng.random() < 0.6:
        a = barrel_distort(a, rng)
    dome = rng.random()  # at most one problem on the dome
    if weather == "rain" and dome < 0.45:
        a = lens_droplets(a, rng)
    elif dome > 0.82:
        a = lens_smudge(a, rng)
    # the object is small in the camera's frame: few native pixels
    if pedestrian:
        f = min(1.0, rng.uniform(44, 95) / H)
    else:
        f = min(1.0, rng.uniform(56, 125) / W)
    nw, nh = max(12, int(round(W * f))), max(12, int(round(H * f)))
    im = to_image(a).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9))).resize((nw, nh), Image.Resampling.BICUBIC)
    n = np.asarray(im, np.float32)
    # sensor: luma noise, a little chroma noise, faint column fixed-pattern noise
    n = n + rng.normal(0, rng.uniform(1.5, 5), (nh, nw))[..., None].astype(np.float32)
    n = n + rng.normal(0, rng.uniform(0.5, 2.5), n.shape).astype(np.float32)
    if rng.random() < 0.4:
        n = n + rng.normal(0, rng.uniform(0.8, 2.5), (1, nw))[..., None].astype(np.float32)
    # colour: a cheap sensor's matrix (muted, magenta-leaning) or IR-cut filter still off at dawn
    lum = n @ np.array([0.299, 0.587, 0.114], np.float32)
    mode = weighted_choice(rng, ["magenta", "yellow", "muted", "ir_dawn"], [0.35, 0.17, 0.3, 0.18])
    if mode == "magenta":
        sat = rng.uniform(0.6, 0.9)
        gain = np.array([rng.uniform(1.02, 1.07), rng.uniform(0.89, 0.96), rng.uniform(1.0, 1.06)], np.float32)
    elif mode == "yellow":  # daylight, slightly yellow-green: a mis-set auto white balance
        sat = rng.uniform(0.65, 0.9)
        gain = np.array([rng.uniform(1.0, 1.05), rng.uniform(1.0, 1.05), rng.uniform(0.84, 0.92)], np.float32)
    elif mode == "muted":
        sat = rng.uniform(0.55, 0.8)
        gain = np.array([rng.uniform(0.97, 1.03), rng.uniform(0.97, 1.03), rng.uniform(0.97, 1.03)], np.float32)
    else:  # IR leaks in: washed out, pinkish-violet, lifted, but colours remain partly visible
        sat = rng.uniform(0.35, 0.55)
        gain = np.array([rng.uniform(1.03, 1.08), rng.uniform(0.93, 0.98), rng.uniform(1.02, 1.08)], np.float32)
        n = n * rng.uniform(0.82, 0.92) + rng.uniform(15, 35)
        lum = n @ np.array([0.299, 0.587, 0.114], np.float32)
    n = lum[..., None] + (n - lum[..., None]) * sat
    # channel cross-talk (hue slightly shifted)
    x = rng.uniform(0.0, 0.08)
    ct = np.array([[1 - x, x * 0.6, x * 0.4], [x * 0.5, 1 - x, x * 0.5], [x * 0.4, x * 0.6, 1 - x]], np.float32)
    n = (n @ ct.T) * gain[None, None, :]
    # flat "WDR" tone curve: lifted shadows, compressed highlights
    n = 255.0 * (np.clip(n, 0, 255) / 255.0) ** rng.uniform(0.78, 0.95)
    n = n * rng.uniform(0.88, 0.97) + rng.uniform(0, 10)
    im = to_image(n)
    if rng.random() < 0.75:  # in-camera sharpening: visible halos
        im = im.filter(ImageFilter.UnsharpMask(radius=rng.uniform(0.8, 1.6), percent=int(rng.integers(120, 260)),
                                               threshold=int(rng.integers(0, 3))))
    # video codec at low bitrate, still at native resolution: flat macro-blocks, then a coarse transform stage
    n = np.asarray(im, np.float32)
    if rng.random() < 0.7:
        n = flatten_macroblocks(n, rng)
    im = Image.open(io.BytesIO(jpeg_bytes(to_image(n), rng.integers(35, 70), 2)))
    im = im.convert("RGB")
    # the crop is cut out and blown up to the gallery size; the export is re-encoded
    im = im.resize((W, H), Image.Resampling.BICUBIC if rng.random() < 0.7 else Image.Resampling.BILINEAR)
    return jpeg_bytes(im, rng.integers(66, 90), 2)


LOOKS = {"web": look_web, "dev": look_dev, "holdout": look_holdout, "holdout2": look_holdout2}


# --------------------------------------------------------------------------------------
# Dataset plan (labels, names, captions) and rendering jobs
# --------------------------------------------------------------------------------------

def unique_names(seed, n_ped, n_veh):
    rng = np.random.default_rng([seed, 1_000_002])
    ped = [f"{int(k):06d}" for k in rng.choice(1_000_000, size=n_ped, replace=False)]
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    veh, seen = [], set()
    while len(veh) < n_veh:
        name = "".join(letters[rng.integers(0, 26, 10)])
        if name not in seen:
            seen.add(name)
            veh.append(name)
    return ped, veh


def plan_split(seed, split, split_id, n, names_ped, names_veh):
    """Records (dicts) for one split: category, names, ATTR, TEXT and what to draw."""
    n_ped = int(round(n * PEDESTRIAN_SHARE))
    order = np.random.default_rng([seed, split_id, 1_000_001]).permutation(n)
    is_ped = np.zeros(n, bool)
    is_ped[order[:n_ped]] = True
    records = []
    for i in range(n):
        rng = np.random.default_rng([seed, split_id, i, 0])
        if is_ped[i]:
            flags = sample_pedestrian_flags(rng)
            name = names_ped.pop()
            records.append(dict(category="pedestrian", file=name + ".jpg", label_name=name + ".jpg",
                                attr=flags_to_attr(flags), text=pedestrian_caption(flags, rng), draw=flags))
            if split == "train" and rng.random() < 0.5:
                records[-1]["label_name"] = name  # the real data drops ".jpg" on some pedestrian lines
        else:
            attr, v = sample_vehicle(rng)
            name = names_veh.pop() + ".jpg"
            records.append(dict(category="vehicle", file=name, label_name=name, attr=attr,
                                text=vehicle_caption(v["label"], rng), draw=v))
    return records


def render_job(job):
    """Worker: draw one image, apply the split's look, write the JPEG. Returns its byte count."""
    seed, split_id, index, category, draw, look, path = job
    rng = np.random.default_rng([seed, split_id, index, 1])
    if category == "pedestrian":
        layer, ground = render_pedestrian(draw, rng)
    else:
        layer, ground = render_vehicle(draw, rng)
    data = LOOKS[look](layer, ground, rng, category == "pedestrian")
    with open(path, "wb") as fh:
        fh.write(data)
    return len(data)


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("".join(line + "\n" for line in lines))


def write_labels(root, split, records):
    if split == "test":
        write_lines(root / "test" / "test_text.txt", [r["text"] for r in records])
        write_lines(root / "ground_truth" / "test_label.txt", [f"{r['label_name']}${r['attr']}${r['text']}" for r in records])
        by_attr: dict[str, list[str]] = {}
        for r in records:
            by_attr.setdefault(r["attr"], []).append(r["file"])
        write_lines(root / "ground_truth" / "test_gt.txt",
                    ["$".join([r["text"]] + by_attr[r["attr"]]) for r in records])
    else:
        write_lines(root / split / f"{split}_label.txt", [f"{r['label_name']}${r['attr']}${r['text']}" for r in records])


def summarize(plans, elapsed, args):
    out = dict(out=str(args.out), seed=args.seed, look=args.look, splits={})
    for split, records in plans.items():
        cats = Counter(r["category"] for r in records)
        out["splits"][split] = dict(
            images=len(records), pedestrian=cats["pedestrian"], vehicle=cats["vehicle"],
            distinct_attrs=len({r["attr"] for r in records}),
            distinct_attrs_pedestrian=len({r["attr"] for r in records if r["category"] == "pedestrian"}),
            distinct_attrs_vehicle=len({r["attr"] for r in records if r["category"] == "vehicle"}),
        )
    test = plans.get("test", [])
    counts = Counter(r["attr"] for r in test)
    out["test_queries"] = len(test)
    out["mean_relevant_per_query"] = round(sum(counts[r["attr"]] for r in test) / max(1, len(test)), 3)
    for cat in ("pedestrian", "vehicle"):
        sub = [r for r in test if r["category"] == cat]
        out[f"mean_relevant_per_query_{cat}"] = round(sum(counts[r["attr"]] for r in sub) / max(1, len(sub)), 3)
    out["seconds"] = round(elapsed, 2)
    return out


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--look", choices=("dev", "holdout", "holdout2"), default="dev",
                    help="camera look of the test gallery; 'holdout' and 'holdout2' are never for choosing a recipe")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--val", type=int, default=400)
    ap.add_argument("--test", type=int, default=1200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error("--seed must be >= 0")
    for name in ("train", "val", "test"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    args.workers = max(1, args.workers)
    return args


def fail(message):
    print(f"foreign_renderer: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    out = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"{out} exists and is not an empty folder; refusing to write into it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    n_ped = sum(int(round(n * PEDESTRIAN_SHARE)) for n in sizes.values())
    names_ped, names_veh = unique_names(args.seed, n_ped, sum(sizes.values()) - n_ped)
    plans = {split: plan_split(args.seed, split, sid, sizes[split], names_ped, names_veh) for split, sid in SPLITS}
    try:
        jobs = []
        for split, sid in SPLITS:
            image_dir = tmp / split / f"{split}_images"
            image_dir.mkdir(parents=True)
            look = args.look if split == "test" else "web"
            for i, r in enumerate(plans[split]):
                jobs.append((args.seed, sid, i, r["category"], r["draw"], look, str(image_dir / r["file"])))
        (tmp / "ground_truth").mkdir()
        if args.workers == 1:
            for job in jobs:
                render_job(job)
        else:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            with ctx.Pool(args.workers) as pool:
                for _ in pool.imap_unordered(render_job, jobs, chunksize=16):
                    pass
        for split, _sid in SPLITS:
            write_labels(tmp, split, plans[split])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        if any(out.iterdir()):
            fail(f"{out} was filled while rendering; the result is left in {tmp}")
        out.rmdir()
    os.rename(tmp, out)
    print(json.dumps(summarize(plans, time.perf_counter() - start, args), indent=1))


if __name__ == "__main__":
    main()
