"""Drawing of synthetic pedestrian and vehicle crops (PIL), and the surveillance look.

Every labelled attribute is drawn large and in contrasting colours, so that it stays
recognisable after the test split's degradation and after the model's square
padding and resize to 64-96 px. Pictures are drawn at ``SUPERSAMPLE`` times the
output size and reduced, which anti-aliases the shapes.

All randomness comes from the ``numpy.random.Generator`` passed in, so one image
is a pure function of its spec and its generator.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ..data.schema import VEHICLE_BRANDS

SUPERSAMPLE = 3
RGB = tuple[int, int, int]

# --------------------------------------------------------------------------- colours

CLOTHING_COLORS: tuple[RGB, ...] = (
    (30, 30, 34), (236, 236, 230), (125, 125, 130), (30, 40, 95), (40, 95, 195),
    (125, 175, 225), (195, 30, 40), (120, 20, 35), (230, 130, 170), (115, 60, 160),
    (40, 125, 60), (115, 120, 50), (235, 200, 40), (235, 120, 30), (105, 65, 40),
    (160, 140, 95), (30, 135, 135), (200, 200, 80),
)
TROUSER_COLORS: tuple[RGB, ...] = (
    (30, 30, 35), (35, 45, 90), (60, 85, 140), (90, 90, 95), (110, 90, 60),
    (160, 140, 100), (230, 230, 225), (70, 45, 35),
)
BAG_COLORS: tuple[RGB, ...] = (
    (120, 70, 30), (20, 20, 20), (200, 30, 40), (230, 210, 160), (245, 245, 245),
    (230, 120, 170), (40, 80, 200), (240, 190, 30), (30, 140, 70), (150, 40, 150),
)
HAT_COLORS: tuple[RGB, ...] = (
    (220, 30, 30), (245, 245, 245), (30, 60, 200), (245, 200, 20), (240, 120, 20),
    (20, 150, 80), (230, 80, 170),
)
LOGO_COLORS: tuple[RGB, ...] = (
    (255, 230, 0), (255, 40, 40), (0, 220, 255), (255, 255, 255), (60, 255, 60), (255, 120, 0),
)
SKIN_TONES: tuple[RGB, ...] = (
    (242, 208, 182), (228, 182, 148), (200, 150, 110), (160, 112, 76), (118, 80, 54),
)
HAIR_COLORS: tuple[RGB, ...] = ((25, 20, 18), (12, 12, 12), (75, 50, 32), (105, 62, 32))
GREY_HAIR_COLORS: tuple[RGB, ...] = ((238, 238, 234), (215, 215, 212), (188, 188, 190))
GLASSES_COLOR: RGB = (8, 8, 10)

# One distinct RGB per vehicle colour name of the challenge.
VEHICLE_RGB: dict[str, RGB] = {
    "black": (26, 26, 29),
    "blue": (25, 70, 175),
    "brown": (110, 66, 34),
    "green": (32, 130, 55),
    "grey": (128, 130, 133),
    "orange": (240, 122, 18),
    "pink": (238, 135, 180),
    "purple": (108, 45, 150),
    "red": (200, 24, 30),
    "white": (240, 240, 237),
    "yellow": (242, 210, 24),
}
WINDOW_COLOR: RGB = (38, 48, 60)
TIRE_COLOR: RGB = (22, 22, 24)


def _color_distance(a: Sequence[int], b: Sequence[int]) -> float:
    return math.dist(a, b)


def _pick_color(rng: np.random.Generator, palette: Sequence[RGB], avoid: Sequence[Sequence[int]] = (),
                min_distance: float = 90.0) -> RGB:
    """A palette colour far from every colour in ``avoid`` (the farthest one when none is far enough)."""
    order = rng.permutation(len(palette))
    best, best_distance = palette[int(order[0])], -1.0
    for index in order:
        color = palette[int(index)]
        distance = min((_color_distance(color, other) for other in avoid), default=1e9)
        if distance >= min_distance:
            return color
        if distance > best_distance:
            best, best_distance = color, distance
    return best


def _jitter(color: Sequence[int], rng: np.random.Generator, amount: int = 10) -> RGB:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)  # type: ignore


def _shade(color: Sequence[int], factor: float) -> RGB:
    return tuple(int(np.clip(round(c * factor), 0, 255)) for c in color)  # type: ignore[return-value]


def _outline_of(color: Sequence[int]) -> RGB:
    # Dark colours get a lighter rim, light ones a darker rim: either way the shape separates.
    return _shade(color, 0.55) if sum(color) > 150 else tuple(min(255, c + 55) for c in color)  # type: ignore


# ------------------------------------------------------------------------ backgrounds

def street_background(width: int, height: int, rng: np.random.Generator, horizon: float) -> Image.Image:
    """A street-like scene: a building front, trees or a shop row above, road or pavement below."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon_y = int(horizon * height)
    scene = int(rng.integers(3))
    if scene == 0:  # building with a window grid
        wall = _jitter((int(rng.integers(110, 200)),) * 3, rng, 25)
        draw.rectangle([0, 0, width, horizon_y], fill=wall)
        cell_w = int(rng.integers(max(6, width // 8), max(7, width // 3)))
        cell_h = int(cell_w * rng.uniform(0.8, 1.6))
        glass = _shade(wall, rng.uniform(0.35, 0.6))
        for y in range(int(rng.integers(0, cell_h)) - cell_h, horizon_y, cell_h):
            for x in range(int(rng.integers(0, cell_w)) - cell_w, width, cell_w):
                draw.rectangle([x + cell_w * 0.2, y + cell_h * 0.2, x + cell_w * 0.8, y + cell_h * 0.75], fill=glass)
    elif scene == 1:  # sky and trees
        sky = _jitter((170, 195, 220), rng, 25)
        draw.rectangle([0, 0, width, horizon_y], fill=sky)
        for _ in range(int(rng.integers(2, 6))):
            r = rng.uniform(0.15, 0.45) * width
            cx, cy = rng.uniform(0, width), rng.uniform(0.1, 0.9) * horizon_y
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter((55, 105, 50), rng, 25))
    else:  # shop row with a coloured sign band
        wall = _jitter((180, 165, 140), rng, 35)
        draw.rectangle([0, 0, width, horizon_y], fill=wall)
        band_y = rng.uniform(0.1, 0.5) * horizon_y
        draw.rectangle([0, band_y, width, band_y + 0.12 * horizon_y + 2],
                       fill=_jitter(CLOTHING_COLORS[int(rng.integers(len(CLOTHING_COLORS)))], rng, 20))
        door_x = rng.uniform(0, width)
        draw.rectangle([door_x, band_y + 0.2 * horizon_y, door_x + width * 0.3, horizon_y], fill=_shade(wall, 0.5))
    ground = int(rng.integers(3))
    if ground == 0:  # asphalt with a lane marking
        road = _jitter((int(rng.integers(85, 130)),) * 3, rng, 8)
        draw.rectangle([0, horizon_y, width, height], fill=road)
        if rng.random() < 0.7:
            y = rng.uniform(horizon_y, height)
            draw.line([0, y, width, y + rng.uniform(-0.2, 0.2) * height], fill=(225, 225, 215),
                      width=max(2, height // 60))
    else:  # paving tiles
        tile = _jitter((int(rng.integers(140, 200)),) * 3 if ground == 1 else (170, 120, 95), rng, 15)
        draw.rectangle([0, horizon_y, width, height], fill=tile)
        step = max(6, int(rng.integers(width // 8 + 6, width // 4 + 8)))
        seam = _shade(tile, 0.8)
        for y in range(horizon_y, height, max(4, step // 2)):
            draw.line([0, y, width, y], fill=seam, width=max(1, step // 10))
        for x in range(int(rng.integers(0, step)), width, step):
            draw.line([x, horizon_y, x, height], fill=seam, width=max(1, step // 10))
    draw.line([0, horizon_y, width, horizon_y], fill=(70, 70, 70), width=max(2, height // 80))
    return image


# ------------------------------------------------------------------------ pedestrians

class _Canvas:
    """Figure coordinates: x in units from the body centre (mirrored for a figure
    facing left), y in units from the top of the head; one unit is 1/100 of an
    adult figure's height."""

    def __init__(self, image: Image.Image, cx: float, top: float, unit: float, mirror: int = 1):
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.cx, self.top, self.unit, self.mirror = cx, top, unit, mirror

    def point(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + self.mirror * x * self.unit, self.top + y * self.unit

    def box(self, x0, y0, x1, y1):
        (a, b), (c, d) = self.point(x0, y0), self.point(x1, y1)
        return [min(a, c), min(b, d), max(a, c), max(b, d)]

    def rect(self, x0, y0, x1, y1, fill, outline=None, width=0.0):
        self.draw.rectangle(self.box(x0, y0, x1, y1), fill=fill, outline=outline, width=self.px(width))

    def rounded(self, x0, y0, x1, y1, radius, fill, outline=None, width=0.0):
        self.draw.rounded_rectangle(self.box(x0, y0, x1, y1), radius=radius * self.unit, fill=fill,
                                    outline=outline, width=self.px(width))

    def ellipse(self, x0, y0, x1, y1, fill, outline=None, width=0.0):
        self.draw.ellipse(self.box(x0, y0, x1, y1), fill=fill, outline=outline, width=self.px(width))

    def polygon(self, points, fill, outline=None, width=0.0):
        self.draw.polygon([self.point(x, y) for x, y in points], fill=fill, outline=outline, width=self.px(width))

    def line(self, points, fill, width):
        self.draw.line([self.point(x, y) for x, y in points], fill=fill, width=self.px(width), joint="curve")

    def px(self, width_units: float) -> int:
        return max(1, int(round(width_units * self.unit))) if width_units else 0

    def mask(self, points) -> Image.Image:
        mask = Image.new("L", self.image.size, 0)
        ImageDraw.Draw(mask).polygon([self.point(x, y) for x, y in points], fill=255)
        return mask


def _limb(canvas: _Canvas, start, end, width, color, skin, skin_from: float | None, outline):
    """An arm or leg from ``start`` to ``end``; from fraction ``skin_from`` on it is bare skin."""
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    nx, ny = -(y1 - y0) / length * width / 2, (x1 - x0) / length * width / 2

    def quad(t0, t1):
        ax, ay = x0 + (x1 - x0) * t0, y0 + (y1 - y0) * t0
        bx, by = x0 + (x1 - x0) * t1, y0 + (y1 - y0) * t1
        return [(ax + nx, ay + ny), (bx + nx, by + ny), (bx - nx, by - ny), (ax - nx, ay - ny)]

    canvas.polygon(quad(0, 1), fill=color, outline=outline, width=0.5)
    if skin_from is not None:
        canvas.polygon(quad(skin_from, 1), fill=skin, outline=_shade(skin, 0.7), width=0.4)


def _torso_pattern(layer: Image.Image, canvas: _Canvas, flags, box, base, accent, rng,
                   horizontal_splice: bool = False, logo_x: float | None = None):
    """Draws the upper-body pattern inside ``box`` (figure units) onto ``layer``."""
    draw = ImageDraw.Draw(layer)
    x0, y0, x1, y1 = box
    if flags.get("UpperSplice"):
        # Two-tone: one part of the torso in another colour, split across or down the middle
        # (across in a side view, where the arm hides the middle).
        if horizontal_splice:
            split = y0 + (y1 - y0) * rng.uniform(0.4, 0.55)
            draw.rectangle(canvas.box(x0 - 2, split, x1 + 2, y1 + 2), fill=accent)
        else:
            split = (x0 + x1) / 2 + rng.uniform(-1.5, 1.5)
            draw.rectangle(canvas.box(split, y0 - 2, x1 + 2, y1 + 2), fill=accent)
    if flags.get("UpperPlaid"):
        step = 5.2
        for x in np.arange(x0 + 1.5, x1, step):
            draw.rectangle(canvas.box(x, y0 - 2, x + 1.8, y1 + 2), fill=accent)
        line2 = _shade(accent, 0.6) if sum(accent) > 300 else _shade(base, 1.4)
        for y in np.arange(y0 + 1.5, y1, step):
            draw.rectangle(canvas.box(x0 - 2, y, x1 + 2, y + 1.8), fill=line2)
    if flags.get("UpperStride"):
        band = rng.uniform(2.6, 3.4)
        for y in np.arange(y0 + band * 0.6, y1 - 0.5, band * 2):
            draw.rectangle(canvas.box(x0 - 2, y, x1 + 2, y + band), fill=accent)
    if flags.get("UpperLogo"):
        logo = _pick_color(rng, LOGO_COLORS, avoid=[base, accent], min_distance=150)
        size = min(x1 - x0, y1 - y0) * (0.48 if logo_x is None else 0.42)
        cx, cy = (x0 + x1) / 2 if logo_x is None else logo_x, y0 + (y1 - y0) * 0.4
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse(canvas.box(cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2), fill=logo,
                         outline=(0, 0, 0), width=canvas.px(0.5))
        elif shape == 1:
            points = [(cx + size / 2 * math.cos(a), cy - size / 2 * math.sin(a))
                      for a in (math.pi / 2 + k * math.pi * 4 / 5 for k in range(5))]
            draw.polygon([canvas.point(x, y) for x, y in points], fill=logo, outline=(0, 0, 0), width=canvas.px(0.5))
        else:
            draw.rectangle(canvas.box(cx - size / 2, cy - size / 2.6, cx + size / 2, cy + size / 2.6), fill=logo,
                           outline=(0, 0, 0), width=canvas.px(0.5))


def draw_pedestrian(flags: Mapping[str, int], size: tuple[int, int], rng: np.random.Generator,
                    boots: bool = False, top_reserve: float = 0.02) -> Image.Image:
    """A pedestrian crop of ``size`` (width, height) showing every flag of ``flags``.

    ``top_reserve`` is the fraction of the height kept free above the head (room for
    the test split's timestamp overlay).
    """
    width, height = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    image = street_background(width, height, rng, horizon=rng.uniform(0.3, 0.62))

    female = bool(flags.get("Female"))
    child = bool(flags.get("AgeLess18"))
    elderly = bool(flags.get("AgeOver60"))
    orientation = "Back" if flags.get("Back") else "Side" if flags.get("Side") else "Front"
    side = orientation == "Side"

    # Proportions (units; an adult is 100 units from head top to sole).
    head_h, head_w = (18.0, 14.0) if child else (14.5, 12.0)
    head_top = 2.5 if elderly else 0.0  # an old person's head sinks into the shoulders
    shoulder_y = head_top + head_h + (1.5 if child else 2.5)
    hip_y = 56.0 if child else 54.0
    knee_y = 78.0
    torso_w = (13.5 if side else (21.0 if female else 24.5)) * (0.94 if child else 1.0)
    hip_w = (12.5 if side else (23.0 if female else 21.0)) * (0.94 if child else 1.0)
    arm_w = 4.6 if female else 5.2
    lean = 5.0 if elderly and side else 0.0  # stoop: the upper body leans forward
    # Half the figure's width with a bag at the side; it decides the scale in narrow crops.
    half_extent = 24.0 if not side else 21.0

    # Placement: children are visibly smaller in the crop.
    bottom = height * (1.0 - rng.uniform(0.01, 0.04))
    available = bottom - height * (top_reserve + 0.02)
    full_unit = min(available / 100.0, width / 2 / half_extent)
    unit = full_unit * (rng.uniform(0.6, 0.7) if child else rng.uniform(0.9, 1.0))
    slack = max(0.0, width / 2 - half_extent * unit)
    cx = width / 2 + rng.uniform(-0.7, 0.7) * slack
    mirror = 1 if (not side or rng.random() < 0.5) else -1
    canvas = _Canvas(image, cx, bottom - 100.0 * unit, unit, mirror)

    skin = _jitter(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], rng, 6)
    hair_palette = GREY_HAIR_COLORS if elderly else HAIR_COLORS
    hair = _jitter(hair_palette[int(rng.integers(len(hair_palette)))], rng, 6)
    # Seen from behind, long hair must stand out against the shirt.
    upper_avoid = [skin, hair] if female and orientation == "Back" else [skin]
    upper = _jitter(_pick_color(rng, CLOTHING_COLORS, avoid=upper_avoid, min_distance=110), rng, 8)
    accent = _pick_color(rng, CLOTHING_COLORS, avoid=[upper, skin], min_distance=160)
    # A second pattern over a two-tone (spliced) shirt needs a third colour.
    accent2 = _pick_color(rng, CLOTHING_COLORS, avoid=[upper, accent], min_distance=120)
    trousers = _jitter(_pick_color(rng, TROUSER_COLORS, avoid=[upper], min_distance=80), rng, 8)
    skirt = upper if rng.random() < 0.3 else _pick_color(rng, CLOTHING_COLORS, avoid=[skin, upper], min_distance=100)
    shoes = _jitter((35, 30, 28), rng, 10) if rng.random() < 0.7 else (235, 235, 235)
    bag_avoid = [upper, skin, trousers]
    handbag_color = _pick_color(rng, BAG_COLORS, avoid=bag_avoid, min_distance=120)
    shoulderbag_color = _pick_color(rng, BAG_COLORS, avoid=bag_avoid + [handbag_color], min_distance=110)
    backpack_color = _pick_color(rng, BAG_COLORS, avoid=[upper, hair, skin], min_distance=130)
    hat_color = _pick_color(rng, HAT_COLORS, avoid=[hair, upper], min_distance=140)
    box_color = _pick_color(rng, ((205, 160, 100), (245, 245, 240), (220, 60, 40), (60, 140, 220)),
                            avoid=[upper, skin], min_distance=100)
    coat = bool(flags.get("LongCoat"))
    has_skirt = bool(flags.get("Skirt&Dress"))
    short_sleeves = bool(flags.get("ShortSleeve")) and not coat
    shorts = not has_skirt and not coat and short_sleeves and rng.random() < 0.2
    holding = bool(flags.get("HoldObjectsInFront"))
    outline_upper = _outline_of(upper)

    # ---- behind the body: backpack seen from the front or side, long hair behind
    if flags.get("Backpack") and orientation == "Front":
        canvas.rounded(-torso_w / 2 - 1.5, shoulder_y - 4.5, torso_w / 2 + 1.5, hip_y - 8, 3,
                       fill=backpack_color, outline=_outline_of(backpack_color), width=0.6)
    if flags.get("Backpack") and side:
        canvas.rounded(-torso_w / 2 - 11 + lean * 0.6, shoulder_y - 1, -torso_w / 2 + 2 + lean * 0.6, hip_y - 6, 3,
                       fill=backpack_color, outline=_outline_of(backpack_color), width=0.7)
    if female and orientation == "Front":
        canvas.rounded(-head_w / 2 - 3.2, head_top + 3, head_w / 2 + 3.2, shoulder_y + 10, 3, fill=hair)

    # ---- legs, skirt, coat
    leg_w = 7.5 if not side else 7.0
    leg_skin_from = None
    if shorts:
        leg_skin_from = 0.38
    if has_skirt:
        leg_skin_from = 0.0 if rng.random() < 0.85 else None
    legs_color = trousers if not has_skirt else (_shade(trousers, 0.5) if leg_skin_from is None else skin)
    if side:
        stride = rng.uniform(5, 9)
        legs = [((0, hip_y - 2), (stride, 97.0)), ((0, hip_y - 2), (-stride, 97.0))]
    else:
        apart = hip_w / 2 - leg_w / 2 - 0.3
        legs = [((-apart, hip_y - 2), (-apart - 1.0, 97.0)), ((apart, hip_y - 2), (apart + 1.0, 97.0))]
    for start, end in legs:
        _limb(canvas, start, end, leg_w, legs_color, skin, leg_skin_from, _outline_of(legs_color))
        fx, fy = end
        toe = 3.5 if side else 0.0
        canvas.ellipse(fx - leg_w / 2 - 0.6, fy - 2.5, fx + leg_w / 2 + 0.6 + toe, fy + 3.0, fill=shoes,
                       outline=_outline_of(shoes), width=0.4)
        if boots:
            boot = (60, 35, 20) if sum(shoes) > 300 else shoes
            _limb(canvas, (start[0] + (end[0] - start[0]) * 0.7, start[1] + (end[1] - start[1]) * 0.7), end,
                  leg_w + 1.2, boot, skin, None, _outline_of(boot))
    if has_skirt:
        flare = 8.0 if not side else 5.0
        skirt_bottom = knee_y + rng.uniform(-3, 4)
        canvas.polygon([(-hip_w / 2 + 0.5, hip_y - 4), (hip_w / 2 - 0.5, hip_y - 4),
                        (hip_w / 2 + flare, skirt_bottom), (-hip_w / 2 - flare, skirt_bottom)],
                       fill=skirt, outline=_outline_of(skirt), width=0.6)
    if coat:
        coat_bottom = knee_y + rng.uniform(0, 5)
        coat_points = [(-torso_w / 2 + lean, shoulder_y), (torso_w / 2 + lean, shoulder_y),
                       (hip_w / 2 + 4.5, coat_bottom), (-hip_w / 2 - 4.5, coat_bottom)]
        canvas.polygon(coat_points, fill=upper, outline=outline_upper, width=0.7)
        if orientation == "Front":  # open front edge down to the hem
            canvas.line([(0.5, shoulder_y + 8), (0.5, coat_bottom)], fill=_shade(upper, 0.55), width=1.0)
        if orientation == "Back":  # back vent
            canvas.line([(0, hip_y + 4), (0, coat_bottom)], fill=_shade(upper, 0.55), width=0.8)

    # ---- seen from behind, a box held in front shows on both sides of the body
    if holding and orientation == "Back":
        by = shoulder_y + 14.5
        canvas.rect(-torso_w / 2 - 7.5, by, torso_w / 2 + 7.5, by + 12.5, fill=box_color,
                    outline=_outline_of(box_color), width=0.8)

    # ---- torso with its pattern
    if side:
        torso = [(-torso_w / 2 + lean, shoulder_y), (torso_w / 2 + lean, shoulder_y),
                 (hip_w / 2, hip_y), (-hip_w / 2, hip_y)]
    else:
        torso = [(-torso_w / 2 + 2, shoulder_y - (0.5 if not elderly else -1.5)),
                 (torso_w / 2 - 2, shoulder_y - (0.5 if not elderly else -1.5)),
                 (torso_w / 2, shoulder_y + 3.5), (hip_w / 2 - 0.5, hip_y), (-hip_w / 2 + 0.5, hip_y),
                 (-torso_w / 2, shoulder_y + 3.5)]
    layer = Image.new("RGB", image.size, upper)
    pattern_box = (-max(torso_w, hip_w) / 2 - 1 + lean / 2, shoulder_y + 1.5,
                   max(torso_w, hip_w) / 2 + 1 + lean / 2, hip_y - 0.5)
    pattern_options = {"horizontal_splice": side or rng.random() < 0.4,
                       "logo_x": torso_w / 4 + lean / 2 if side else None}
    other_patterns = {name: flags.get(name, 0) for name in ("UpperStride", "UpperLogo", "UpperPlaid")}
    if flags.get("UpperSplice"):
        _torso_pattern(layer, canvas, {"UpperSplice": 1}, pattern_box, upper, accent, rng, **pattern_options)
    _torso_pattern(layer, canvas, other_patterns, pattern_box, upper,
                   accent2 if flags.get("UpperSplice") else accent, rng, **pattern_options)
    image.paste(layer, mask=canvas.mask(torso))
    canvas.polygon(torso, fill=None, outline=outline_upper, width=0.6)
    if coat and orientation == "Front":
        canvas.line([(0.5, shoulder_y + 2), (0.5, hip_y)], fill=_shade(upper, 0.55), width=1.0)
        canvas.polygon([(-4, shoulder_y), (0.5, shoulder_y + 9), (4.5, shoulder_y)], fill=_shade(upper, 0.75))

    # ---- neck and head
    neck_x = lean
    canvas.rect(neck_x - 2.2, head_top + head_h - 2, neck_x + 2.2, shoulder_y + 1, fill=skin)
    head_x = lean * 1.3 + (1.0 if side else 0.0)
    hx0, hy0, hx1, hy1 = head_x - head_w / 2, head_top, head_x + head_w / 2, head_top + head_h
    if side:
        hx0, hx1 = head_x - head_w / 2 + 0.5, head_x + head_w / 2 - 0.5
    eye_y = hy0 + head_h * 0.52
    if orientation == "Back":
        canvas.ellipse(hx0, hy0, hx1, hy1, fill=hair, outline=_outline_of(hair), width=0.5)
        if female:
            canvas.rounded(hx0 - 1.0, hy0 + head_h * 0.35, hx1 + 1.0, shoulder_y + 14, 4, fill=hair,
                           outline=_outline_of(hair), width=0.5)
    else:
        canvas.ellipse(hx0, hy0, hx1, hy1, fill=skin, outline=_shade(skin, 0.7), width=0.5)
        if side:
            # Profile: nose pointing forward, one eye, hair on the back of the head.
            canvas.polygon([(hx1 - 0.6, eye_y), (hx1 + 2.2, eye_y + 2.6), (hx1 - 0.6, eye_y + 3.4)], fill=skin)
            canvas.ellipse(hx0 - 0.3, hy0 - 0.3, hx1 - head_w * 0.45, hy1 - head_h * 0.15, fill=hair)
            canvas.ellipse(hx0 + head_w * 0.1, hy0 - 0.4, hx1 - 0.6, hy0 + head_h * 0.38, fill=hair)
            if female:
                canvas.rounded(hx0 - 1.2, hy0 + head_h * 0.3, hx0 + head_w * 0.4, shoulder_y + 12, 3, fill=hair)
            canvas.ellipse(hx1 - 3.6, eye_y - 1.1, hx1 - 1.4, eye_y + 1.1, fill=(15, 15, 15))
        else:
            canvas.polygon([(hx0 - 0.2, hy0 + head_h * 0.45), (hx0 + 0.5, hy0 + 1.5), (head_x, hy0 - 0.6),
                            (hx1 - 0.5, hy0 + 1.5), (hx1 + 0.2, hy0 + head_h * 0.45),
                            (hx1 - 1.5, hy0 + head_h * 0.3), (hx0 + 1.5, hy0 + head_h * 0.3)], fill=hair)
            if elderly:  # grey hair over the ears too
                for sign in (-1, 1):
                    canvas.ellipse(head_x + sign * head_w / 2 - 1.6, hy0 + head_h * 0.15,
                                   head_x + sign * head_w / 2 + 1.6, hy0 + head_h * 0.62, fill=hair)
            for ex in (head_x - head_w * 0.22, head_x + head_w * 0.22):
                canvas.ellipse(ex - 1.1, eye_y - 1.1, ex + 1.1, eye_y + 1.1, fill=(15, 15, 15))
            canvas.line([(head_x - 1.8, hy0 + head_h * 0.8), (head_x + 1.8, hy0 + head_h * 0.8)],
                        fill=_shade(skin, 0.55), width=0.7)
    if flags.get("Glasses") and orientation != "Back":
        if side:
            canvas.rect(hx1 - 5.0, eye_y - 1.5, hx1 + 0.4, eye_y + 1.5, fill=GLASSES_COLOR)
            canvas.line([(hx1 - 5.0, eye_y), (head_x - 1.5, eye_y - 0.5)], fill=GLASSES_COLOR, width=1.0)
        else:
            canvas.rect(hx0 + 0.6, eye_y - 1.7, hx1 - 0.6, eye_y + 1.6, fill=GLASSES_COLOR)
    if flags.get("Hat"):
        brim_y = hy0 + head_h * 0.34
        canvas.ellipse(hx0 - 0.3, hy0 - 3.5, hx1 + 0.3, brim_y + 2.5, fill=hat_color,
                       outline=_outline_of(hat_color), width=0.5)
        if side:
            canvas.rect(head_x, brim_y, hx1 + 4.5, brim_y + 1.8, fill=hat_color, outline=_outline_of(hat_color),
                        width=0.4)
        else:
            canvas.rect(hx0 - 2.2, brim_y, hx1 + 2.2, brim_y + 1.8, fill=hat_color, outline=_outline_of(hat_color),
                        width=0.4)

    # ---- arms (with or without sleeves) and hands
    sleeve_from = 0.34 if short_sleeves else 0.9
    hand_r = 2.6
    hands = []
    if side:
        if holding:
            arm_end = (torso_w / 2 + 5.5 + lean, shoulder_y + 22)
        else:
            swing = rng.uniform(-6, 2)
            arm_end = (swing + lean * 0.5 - 2.0, hip_y + 4)
        # The arm hangs at the back half of the torso, leaving the chest (logo) visible.
        arm_start = (lean * 0.8 - torso_w / 2 + arm_w / 2 + 1.0, shoulder_y + 1.5)
        _limb(canvas, arm_start, arm_end, arm_w + 0.6, upper, skin, sleeve_from, outline_upper)
        hands.append(arm_end)
    else:
        for sign in (-1, 1):
            start = (sign * (torso_w / 2 + arm_w / 2 - 1.2), shoulder_y + 1.5 + (1.0 if elderly else 0.0))
            if holding and orientation == "Front":
                end = (sign * (torso_w / 2 - 2.5), shoulder_y + 22)
            elif holding:  # from behind: elbows bent forward, forearms hidden by the body
                end = (sign * (torso_w / 2 + arm_w / 2), shoulder_y + 15)
            else:
                end = (sign * (torso_w / 2 + arm_w / 2 + 0.4), hip_y + 3.0)
            _limb(canvas, start, end, arm_w, upper, skin, sleeve_from, outline_upper)
            hands.append(end)
    if not holding:
        for hx, hy in hands:
            canvas.ellipse(hx - hand_r, hy - hand_r, hx + hand_r, hy + hand_r, fill=skin)

    # ---- carried things
    if flags.get("ShoulderBag"):
        bag_side = 1 if orientation != "Back" else -1
        strap = _shade(shoulderbag_color, 0.7) if sum(shoulderbag_color) > 200 else shoulderbag_color
        if side:
            canvas.line([(lean + 3, shoulder_y), (-torso_w / 2 + 1, hip_y - 3)], fill=strap, width=2.0)
            bx = -torso_w / 2 - 3.5
        else:
            canvas.line([(-bag_side * (torso_w / 2 - 3), shoulder_y - 0.2),
                         (bag_side * (hip_w / 2 + 0.5), hip_y - 4)], fill=strap, width=2.2)
            bx = bag_side * (hip_w / 2 + 2.0)
        canvas.rounded(bx - 5.5, hip_y - 6.5, bx + 5.5, hip_y + 4.5, 1.5, fill=shoulderbag_color,
                       outline=_outline_of(shoulderbag_color), width=0.7)
    if flags.get("HandBag"):
        hx, hy = hands[-1]
        if not side and holding:
            hx, hy = torso_w / 2 + arm_w + 1.5, hip_y
        outward = (1 if hx >= 0 else -1) * (0 if side else 2.0)
        bag_x = hx + outward
        canvas.line([(bag_x - 2.8, hy + 3.5), (hx, hy - 1.0), (bag_x + 2.8, hy + 3.5)],
                    fill=_shade(handbag_color, 0.6), width=1.0)
        canvas.rounded(bag_x - 5.2, hy + 2.5, bag_x + 5.2, hy + 11.5, 1.5, fill=handbag_color,
                       outline=_outline_of(handbag_color), width=0.7)
    if holding and orientation != "Back":
        box_w = 15.0 if side else torso_w + 4.0
        box_x = (torso_w / 2 + lean + box_w / 2 - 4.5) if side else 0.0
        by = shoulder_y + 14.5
        canvas.rect(box_x - box_w / 2, by, box_x + box_w / 2, by + 12.5, fill=box_color,
                    outline=_outline_of(box_color), width=0.8)
        canvas.line([(box_x - box_w / 2, by + 4), (box_x + box_w / 2, by + 4)], fill=_outline_of(box_color), width=0.5)
        if orientation == "Front":
            for sign in (-1, 1):
                hx = sign * (torso_w / 2 - 2.5)
                canvas.ellipse(hx - hand_r, by + 5 - hand_r, hx + hand_r, by + 5 + hand_r, fill=skin)
        elif side:
            hx, hy = box_x - box_w / 2 + 3, by + 6
            canvas.ellipse(hx - hand_r, hy - hand_r, hx + hand_r, hy + hand_r, fill=skin)
    if flags.get("Backpack"):
        if orientation == "Back":
            canvas.rounded(-torso_w / 2 + 1.0, shoulder_y - 2.0, torso_w / 2 - 1.0, hip_y - 3.5, 3.5,
                           fill=backpack_color, outline=_outline_of(backpack_color), width=0.8)
            canvas.rounded(-torso_w / 2 + 4.5, hip_y - 15, torso_w / 2 - 4.5, hip_y - 6, 2,
                           fill=_shade(backpack_color, 0.8), outline=_outline_of(backpack_color), width=0.5)
        elif orientation == "Front":
            for sign in (-1, 1):
                canvas.line([(sign * (torso_w / 2 - 4.5), shoulder_y - 1), (sign * (torso_w / 2 - 4.0), hip_y - 8)],
                            fill=backpack_color, width=3.2)
            canvas.line([(-torso_w / 2 + 4.5, shoulder_y + 12), (torso_w / 2 - 4.5, shoulder_y + 12)],
                        fill=backpack_color, width=1.5)
        else:
            canvas.line([(lean + 2.5, shoulder_y), (lean * 0.3 + 1.5, shoulder_y + 16)], fill=backpack_color, width=2.6)
    return image.reduce(SUPERSAMPLE) if SUPERSAMPLE > 1 else image


# --------------------------------------------------------------------------- vehicles

# A vehicle's side view in (x from the front end 0..1, y from the ground 0..1) and its
# front face. Data, not code: a table per part with a row per type, joined into
# VEHICLE_SHAPES below.


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    """The corners of an upright rectangle as a polygon, from bottom front, as the drawing wants them."""
    return [(x0, y0), (x0, y1), (x1, y1), (x1, y0)]


# height: the body's height relative to its drawn width; face: the front face's share of
# that width; face_hood, face_roof: the hood's and the roof's height on the face;
# roof_start: the x of the side outline's vertex where the roof begins.
_PROPORTION_NAMES = ("height", "face", "face_hood", "face_roof", "roof_start")
_PROPORTIONS: dict[str, tuple[float, ...]] = {
    "Sedan": (0.40, 0.42, 0.50, 0.93, 0.22),
    "SUV": (0.52, 0.44, 0.55, 0.95, 0.18),
    "Minivan": (0.55, 0.44, 0.45, 0.95, 0.3),
    "Microbus": (0.62, 0.46, 0.5, 0.97, 0.04),
    "Bus": (0.5, 0.3, 0.42, 0.98, 0.02),
    "Truck": (0.58, 0.38, 0.42, 0.8, 0.03),
}
_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "Sedan": [(0, 0.12), (0, 0.52), (0.22, 0.93), (0.62, 0.93), (0.8, 0.58), (1, 0.55), (1, 0.16)],
    "SUV": [(0, 0.16), (0, 0.57), (0.18, 0.95), (0.96, 0.95), (1, 0.88), (1, 0.18)],
    "Minivan": [(0, 0.12), (0, 0.47), (0.3, 0.95), (0.97, 0.95), (1, 0.85), (1, 0.14)],
    "Microbus": [(0, 0.1), (0, 0.9), (0.04, 0.97), (0.97, 0.97), (1, 0.9), (1, 0.1)],
    "Bus": [(0, 0.08), (0, 0.94), (0.02, 0.98), (0.99, 0.98), (1, 0.94), (1, 0.08)],
    "Truck": [(0, 0.12), (0, 0.75), (0.03, 0.8), (0.26, 0.8), (0.26, 0.12)],
}
# Side windows; the first and last panes of cars slant with the windscreen and the rear window.
_WINDOWS: dict[str, list[list[tuple[float, float]]]] = {
    "Sedan": [[(0.07, 0.56), (0.24, 0.86), (0.42, 0.86), (0.42, 0.56)],
              [(0.45, 0.56), (0.45, 0.86), (0.6, 0.86), (0.74, 0.57)]],
    "SUV": [[(0.05, 0.6), (0.2, 0.88), (0.45, 0.88), (0.45, 0.6)],
            _rectangle(0.48, 0.6, 0.7, 0.88),
            [(0.73, 0.6), (0.73, 0.88), (0.95, 0.88), (0.96, 0.6)]],
    "Minivan": [[(0.12, 0.55), (0.32, 0.88), (0.5, 0.88), (0.5, 0.55)],
                _rectangle(0.53, 0.55, 0.74, 0.88),
                [(0.77, 0.55), (0.77, 0.88), (0.96, 0.88), (0.97, 0.55)]],
    "Microbus": [_rectangle(x0, 0.55, x1, 0.88) for x0, x1 in ((0.06, 0.28), (0.31, 0.53), (0.56, 0.76), (0.79, 0.97))],
    "Bus": [_rectangle(x, 0.5, x + 0.1, 0.86) for x in (0.03, 0.155, 0.28, 0.405, 0.53, 0.655, 0.78)],
    "Truck": [_rectangle(0.04, 0.48, 0.2, 0.74)],
}
# Wheels as (x of the centre, radius relative to the body's height).
_WHEELS: dict[str, list[tuple[float, float]]] = {
    "Sedan": [(0.17, 0.2), (0.84, 0.2)],
    "SUV": [(0.17, 0.23), (0.84, 0.23)],
    "Minivan": [(0.18, 0.18), (0.83, 0.18)],
    "Microbus": [(0.15, 0.15), (0.85, 0.15)],
    "Bus": [(0.12, 0.13), (0.78, 0.13)],
    "Truck": [(0.13, 0.17), (0.7, 0.17), (0.86, 0.17)],
}
# Parts of one type only: the bus's door, the truck's cargo box (polygons like the windows).
_EXTRA_PARTS: dict[str, dict] = {
    "Bus": {"door": _rectangle(0.9, 0.1, 0.98, 0.86)},
    "Truck": {"cargo": _rectangle(0.28, 0.12, 1.0, 1.0)},
}
VEHICLE_SHAPES: dict[str, dict] = {
    vehicle_type: {**dict(zip(_PROPORTION_NAMES, proportions)), "outline": _OUTLINES[vehicle_type],
                   "windows": _WINDOWS[vehicle_type], "wheels": _WHEELS[vehicle_type],
                   **_EXTRA_PARTS.get(vehicle_type, {})}
    for vehicle_type, proportions in _PROPORTIONS.items()
}

# Badge plates, symbols and colours; every brand gets a unique (plate, symbol) pair
# (brand index i -> plate i mod 6, symbol i mod 11: unique for all 66 indices < lcm).
BADGE_PLATES = ("circle", "square", "diamond", "hexagon", "shield", "oval")
BADGE_SYMBOLS = ("dot", "ring", "plus", "hbar", "vbar", "triangle", "star", "cross", "chevron", "twodots", "square")
BADGE_PLATE_COLORS: tuple[RGB, ...] = (
    (205, 205, 212), (15, 15, 18), (20, 70, 200), (210, 20, 30), (230, 175, 20), (252, 252, 252), (20, 140, 60),
)
BADGE_SYMBOL_COLORS: dict[RGB, tuple[RGB, ...]] = {
    (205, 205, 212): ((10, 10, 10), (200, 0, 0), (0, 50, 180)),
    (15, 15, 18): ((255, 255, 255), (255, 210, 0), (255, 40, 40)),
    (20, 70, 200): ((255, 255, 255), (255, 220, 0), (0, 0, 0)),
    (210, 20, 30): ((255, 255, 255), (255, 230, 0), (0, 0, 0)),
    (230, 175, 20): ((0, 0, 0), (170, 0, 0), (0, 40, 150)),
    (252, 252, 252): ((0, 0, 0), (220, 0, 0), (0, 80, 220)),
    (20, 140, 60): ((255, 255, 255), (255, 230, 0), (0, 0, 0)),
}
GRILLE_STYLES = ("hbars", "vbars", "mesh", "dots", "single")


def brand_emblem(brand: str) -> dict:
    """The badge of a brand: plate shape and colour, symbol and colour, grille style."""
    try:
        index = VEHICLE_BRANDS.index(brand)
    except ValueError:
        index = sum(ord(ch) for ch in brand) % 66
    plate_color = BADGE_PLATE_COLORS[index % len(BADGE_PLATE_COLORS)]
    symbol_colors = BADGE_SYMBOL_COLORS[plate_color]
    return {
        "plate": BADGE_PLATES[index % len(BADGE_PLATES)],
        "symbol": BADGE_SYMBOLS[index % len(BADGE_SYMBOLS)],
        "plate_color": plate_color,
        "symbol_color": symbol_colors[(index // len(BADGE_PLATE_COLORS)) % len(symbol_colors)],
        "grille": GRILLE_STYLES[(index // 3) % len(GRILLE_STYLES)],
    }


def _regular_polygon(cx, cy, radius, sides, rotation=0.0):
    return [(cx + radius * math.cos(rotation + 2 * math.pi * k / sides),
             cy + radius * math.sin(rotation + 2 * math.pi * k / sides)) for k in range(sides)]


def _star(cx, cy, radius, points=5):
    coords = []
    for k in range(points * 2):
        r = radius if k % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + math.pi * k / points
        coords.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return coords


def draw_badge(draw: ImageDraw.ImageDraw, cx: float, cy: float, diameter: float, emblem: Mapping) -> None:
    """A brand badge centred at (cx, cy): a coloured plate with a symbol, dark rim."""
    r = diameter / 2
    fill, rim = emblem["plate_color"], (0, 0, 0) if sum(emblem["plate_color"]) > 200 else (235, 235, 235)
    rim_w = max(1, int(diameter * 0.06))
    plate = emblem["plate"]
    if plate == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=rim, width=rim_w)
    elif plate == "square":
        draw.rounded_rectangle([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], radius=r * 0.2,
                               fill=fill, outline=rim, width=rim_w)
    elif plate == "diamond":
        draw.polygon(_regular_polygon(cx, cy, r * 1.1, 4, -math.pi / 2), fill=fill, outline=rim, width=rim_w)
    elif plate == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, r, 6), fill=fill, outline=rim, width=rim_w)
    elif plate == "shield":
        draw.polygon([(cx - r * 0.9, cy - r * 0.85), (cx + r * 0.9, cy - r * 0.85), (cx + r * 0.9, cy + r * 0.1),
                      (cx, cy + r * 1.05), (cx - r * 0.9, cy + r * 0.1)], fill=fill, outline=rim, width=rim_w)
    else:  # oval
        draw.ellipse([cx - r * 1.25, cy - r * 0.75, cx + r * 1.25, cy + r * 0.75], fill=fill, outline=rim, width=rim_w)
    color, s = emblem["symbol_color"], r * 0.55
    symbol = emblem["symbol"]
    thick = max(1, int(r * 0.28))
    if symbol == "dot":
        draw.ellipse([cx - s * 0.7, cy - s * 0.7, cx + s * 0.7, cy + s * 0.7], fill=color)
    elif symbol == "ring":
        draw.ellipse([cx - s, cy - s, cx + s, cy + s], outline=color, width=thick)
    elif symbol == "plus":
        draw.rectangle([cx - s, cy - thick / 2, cx + s, cy + thick / 2], fill=color)
        draw.rectangle([cx - thick / 2, cy - s, cx + thick / 2, cy + s], fill=color)
    elif symbol == "hbar":
        draw.rectangle([cx - s * 1.1, cy - thick * 0.6, cx + s * 1.1, cy + thick * 0.6], fill=color)
    elif symbol == "vbar":
        draw.rectangle([cx - thick * 0.6, cy - s * 1.1, cx + thick * 0.6, cy + s * 1.1], fill=color)
    elif symbol == "triangle":
        draw.polygon(_regular_polygon(cx, cy + s * 0.15, s * 1.05, 3, -math.pi / 2), fill=color)
    elif symbol == "star":
        draw.polygon(_star(cx, cy, s * 1.1), fill=color)
    elif symbol == "cross":
        draw.line([cx - s, cy - s, cx + s, cy + s], fill=color, width=thick)
        draw.line([cx - s, cy + s, cx + s, cy - s], fill=color, width=thick)
    elif symbol == "chevron":
        draw.line([cx - s, cy - s * 0.5, cx, cy + s * 0.6, cx + s, cy - s * 0.5], fill=color, width=thick,
                  joint="curve")
    elif symbol == "twodots":
        for dx in (-s * 0.55, s * 0.55):
            draw.ellipse([cx + dx - s * 0.42, cy - s * 0.42, cx + dx + s * 0.42, cy + s * 0.42], fill=color)
    else:  # square
        draw.rectangle([cx - s * 0.65, cy - s * 0.65, cx + s * 0.65, cy + s * 0.65], fill=color)


def _gradient_fill(image: Image.Image, mask: Image.Image, color: Sequence[int], y0: float, y1: float,
                   top_factor: float, bottom_factor: float) -> None:
    """Pastes ``color`` through ``mask`` with a vertical light gradient (lit roof, darker sills)."""
    height = image.size[1]
    rows = np.arange(height, dtype=np.float32)
    t = np.clip((rows - y0) / max(1.0, y1 - y0), 0.0, 1.0)
    factor = top_factor + (bottom_factor - top_factor) * t
    base = np.asarray(color, dtype=np.float32)
    # Dark paint cannot get lighter by multiplication: add a little light instead.
    column = np.clip(base[None, :] * factor[:, None] + (factor[:, None] - 1.0) * 40.0 * (base.sum() < 150), 0, 255)
    column = column.astype(np.uint8)
    layer = Image.fromarray(np.repeat(column[:, None, :], image.size[0], axis=1))
    image.paste(layer, mask=mask)


def draw_vehicle(color: str, brand: str, vehicle_type: str, size: tuple[int, int], rng: np.random.Generator,
                 top_reserve: float = 0.02) -> Image.Image:
    """A vehicle crop of ``size``: a three-quarter view with the type's silhouette, the
    body in the named colour, and the brand's badge at the centre of the front (or rear)."""
    width, height = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    shape = VEHICLE_SHAPES[vehicle_type]
    body_rgb = _jitter(VEHICLE_RGB[color], rng, 7)
    emblem = brand_emblem(brand)
    rear_view = rng.random() < 0.3

    image = street_background(width, height, rng, horizon=rng.uniform(0.12, 0.4))
    draw = ImageDraw.Draw(image)

    ground = height * (1.0 - rng.uniform(0.03, 0.08))
    available = ground - height * (top_reserve + 0.03)
    vehicle_w = width * rng.uniform(0.82, 0.95)
    vehicle_h = vehicle_w * shape["height"] * rng.uniform(0.95, 1.05)
    if vehicle_h > available:
        vehicle_w *= available / vehicle_h
        vehicle_h = available
    x0 = (width - vehicle_w) / 2 + rng.uniform(-0.5, 0.5) * (width - vehicle_w)
    face_w = vehicle_w * shape["face"]
    side_x0, side_w = x0 + face_w, vehicle_w - face_w

    def face(fx, fy):
        return x0 + fx * face_w, ground - fy * vehicle_h

    def face_box(fx0, fy0, fx1, fy1):
        (a, b), (c, d) = face(fx0, fy0), face(fx1, fy1)
        return [min(a, c), min(b, d), max(a, c), max(b, d)]

    def side(sx, sy):
        # Mild perspective: the far end is a little higher and smaller.
        scale = 1.0 - 0.12 * sx
        return side_x0 + sx * side_w, ground - 0.05 * sx * vehicle_h - sy * vehicle_h * scale

    # Shadow under the vehicle.
    draw.ellipse([x0 - vehicle_w * 0.02, ground - vehicle_h * 0.07, x0 + vehicle_w * 1.02, ground + vehicle_h * 0.05],
                 fill=(40, 40, 42))

    def paint(points, mapper, light):
        pixels = [mapper(x, y) for x, y in points]
        mask = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask).polygon(pixels, fill=255)
        top = min(y for _, y in pixels)
        bottom = max(y for _, y in pixels)
        _gradient_fill(image, mask, body_rgb, top, bottom, 1.15 * light, 0.78 * light)
        draw.polygon(pixels, outline=_shade(body_rgb, 0.5) if sum(body_rgb) > 150 else (90, 90, 95),
                     width=max(1, SUPERSAMPLE))

    # Side: body, the truck's cargo box, windows and wheels.
    if "cargo" in shape:
        paint(shape["cargo"], side, 0.92)
        cargo_x0, cargo_x1 = shape["cargo"][0][0], shape["cargo"][2][0]
        rib = _shade(body_rgb, 0.7) if sum(body_rgb) > 150 else (80, 80, 85)
        for rx in np.linspace(cargo_x0 + 0.06, cargo_x1 - 0.04, 7):
            draw.line([side(rx, 0.16), side(rx, 0.96)], fill=rib, width=max(1, SUPERSAMPLE))
    paint(shape["outline"], side, 0.95)
    for window in shape["windows"]:
        draw.polygon([side(x, y) for x, y in window], fill=WINDOW_COLOR)
    if "door" in shape:
        draw.polygon([side(x, y) for x, y in shape["door"]], fill=(55, 65, 75))
    belt = 0.5 * shape["face_hood"]
    draw.line([side(0.0, belt), side(1.0, belt)], fill=_shade(body_rgb, 0.6), width=max(1, SUPERSAMPLE))
    for wx, radius in shape["wheels"]:
        cx, cy = side(wx, radius * 0.9)
        r_px = radius * vehicle_h
        draw.ellipse([cx - r_px * 0.75, cy - r_px, cx + r_px * 0.75, cy + r_px], fill=TIRE_COLOR)
        draw.ellipse([cx - r_px * 0.38, cy - r_px * 0.5, cx + r_px * 0.38, cy + r_px * 0.5], fill=(150, 150, 155))

    # Roof between the face and the side.
    hood, roof = shape["face_hood"], shape["face_roof"]
    roof_start = shape["roof_start"]
    roof_y = max(y for x, y in shape["outline"] if abs(x - roof_start) < 1e-6)
    bridge = [face(0.9, roof), side(roof_start, roof_y), side(0.0, hood), face(1.0, hood)]
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).polygon(bridge, fill=255)
    _gradient_fill(image, mask, body_rgb, min(y for _, y in bridge), max(y for _, y in bridge), 1.2, 1.0)

    # Front (or rear) face.
    face_outline = [(0.0, 0.1), (0.0, hood), (0.08, roof), (0.92, roof), (1.0, hood), (1.0, 0.1)]
    paint(face_outline, face, 1.05)
    glass = [(0.1, hood + 0.05), (0.15, roof - 0.05), (0.85, roof - 0.05), (0.9, hood + 0.05)]
    if vehicle_type == "Bus":
        glass = [(0.06, hood + 0.04), (0.06, roof - 0.1), (0.94, roof - 0.1), (0.94, hood + 0.04)]
        draw.polygon([face(0.15, roof - 0.08), face(0.15, roof - 0.02), face(0.85, roof - 0.02),
                      face(0.85, roof - 0.08)], fill=(25, 25, 25))
        draw.rectangle(face_box(0.25, roof - 0.065, 0.75, roof - 0.035), fill=(255, 150, 0))
    draw.polygon([face(x, y) for x, y in glass], fill=WINDOW_COLOR)
    # A light reflection across the glass.
    draw.polygon([face(0.55, roof - 0.06), face(0.68, roof - 0.06), face(0.45, hood + 0.06), face(0.32, hood + 0.06)],
                 fill=(70, 82, 96))
    badge_d = vehicle_w * 0.15
    badge_center_y = hood * 0.58
    # Wheels seen from the front.
    for fx in (0.05, 0.8):
        draw.rectangle(face_box(fx, 0.13, fx + 0.15, 0.0), fill=TIRE_COLOR)
    # Lights.
    light_rgb = (200, 20, 25) if rear_view else (250, 246, 215)
    light_y0, light_y1 = hood * 0.72, hood * 0.92
    for fx in (0.03, 0.77):
        draw.rounded_rectangle(face_box(fx, light_y1, fx + 0.2, light_y0), radius=SUPERSAMPLE * 2, fill=light_rgb,
                               outline=(40, 40, 40), width=max(1, SUPERSAMPLE // 2))
    # Grille (front) or trunk line (rear), then the licence plate.
    if not rear_view:
        gx0, gx1 = 0.26, 0.74
        gy0, gy1 = hood * 0.28, hood * 0.88
        grille_box = face_box(gx0, gy1, gx1, gy0)
        draw.rounded_rectangle(grille_box, radius=SUPERSAMPLE * 2, fill=(28, 28, 30))
        chrome = (175, 175, 180)
        bx0, by0, bx1, by1 = grille_box
        step = max(3, int((by1 - by0) / 5))
        style = emblem["grille"]
        if style in ("hbars", "mesh"):
            for y in np.arange(by0 + step / 2, by1, step):
                draw.line([bx0 + 2, y, bx1 - 2, y], fill=chrome, width=max(1, SUPERSAMPLE // 2 + 1))
        if style in ("vbars", "mesh"):
            for x in np.arange(bx0 + step / 2, bx1, step):
                draw.line([x, by0 + 2, x, by1 - 2], fill=chrome, width=max(1, SUPERSAMPLE // 2 + 1))
        if style == "dots":
            for y in np.arange(by0 + step / 2, by1, step):
                for x in np.arange(bx0 + step / 2, bx1, step):
                    draw.ellipse([x - step / 4, y - step / 4, x + step / 4, y + step / 4], fill=chrome)
        if style == "single":
            draw.rectangle([bx0, (by0 + by1) / 2 - step / 3, bx1, (by0 + by1) / 2 + step / 3], fill=chrome)
    else:
        draw.line([face(0.05, hood * 0.95), face(0.95, hood * 0.95)], fill=_shade(body_rgb, 0.55), width=SUPERSAMPLE)
        badge_center_y = hood * 0.62
    plate_rgb = (20, 55, 170) if rng.random() < 0.8 else (230, 190, 20)
    draw.rectangle(face_box(0.36, hood * 0.24, 0.64, hood * 0.07), fill=plate_rgb, outline=(230, 230, 230),
                   width=max(1, SUPERSAMPLE // 2))

    # Face the other way half of the time; the badge is drawn after the flip so it never mirrors.
    badge_x, badge_y = face(0.5, badge_center_y)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        badge_x = width - badge_x
        draw = ImageDraw.Draw(image)
    draw_badge(draw, badge_x, badge_y, badge_d, emblem)
    return image.reduce(SUPERSAMPLE) if SUPERSAMPLE > 1 else image


# -------------------------------------------------------------------- camera looks

@lru_cache(maxsize=1)
def _timestamp_font():
    return ImageFont.load_default()


def _timestamp(rng: np.random.Generator) -> str:
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hour, minute, second = int(rng.integers(0, 24)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
    return f"2023-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}"


def overlay_timestamp(image: Image.Image, rng: np.random.Generator, max_height_fraction: float,
                      max_width_fraction: float = 0.92) -> Image.Image:
    """Burns a camera timestamp into a top corner, scaled to fit the crop."""
    text = _timestamp(rng)
    font = _timestamp_font()
    left, top, right, bottom = font.getbbox(text)
    text_w, text_h = right - left + 2, bottom - top + 2
    mask = Image.new("L", (text_w, text_h), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font)
    scale = min(image.size[0] * max_width_fraction / text_w, image.size[1] * max_height_fraction / text_h, 1.0)
    new_size = (max(1, round(text_w * scale)), max(1, round(text_h * scale)))
    mask = mask.resize(new_size, Image.Resampling.BILINEAR)
    x = 1 if rng.random() < 0.5 else image.size[0] - new_size[0] - 1
    color = (255, 255, 255) if rng.random() < 0.7 else (255, 255, 0)
    shadow = Image.new("RGB", new_size, (0, 0, 0))
    out = image.copy()
    out.paste(shadow, (x + 1, 2), mask)
    out.paste(Image.new("RGB", new_size, color), (x, 1), mask)
    return out


def surveillance_look(image: Image.Image, rng: np.random.Generator, max_text_fraction: float,
                      max_text_width: float = 0.92, min_short_side: int = 36) -> Image.Image:
    """The test and camera val splits' domain shift: lower resolution, blur, a mild colour cast, sensor
    noise and a timestamp; the caller saves it at a low JPEG quality for block artefacts."""
    w, h = image.size
    factor = max(rng.uniform(0.6, 0.85), min(1.0, min_short_side / min(w, h)))
    small = image.resize((max(8, round(w * factor)), max(8, round(h * factor))), Image.Resampling.BILINEAR)
    small = small.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.25, 0.55))))
    array = np.asarray(small, dtype=np.float32)
    cast = 1.0 + rng.uniform(-0.06, 0.06, size=3).astype(np.float32)  # mild: keeps paint colours nameable
    gain, offset = rng.uniform(0.85, 1.05), rng.uniform(-8, 12)
    gray = array.mean(axis=2, keepdims=True)
    array = gray + (array - gray) * rng.uniform(0.8, 0.95)  # slightly washed-out colours
    array = array * cast * gain + offset
    array += rng.normal(0.0, rng.uniform(2.5, 5.0), size=array.shape).astype(np.float32)
    small = Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8))
    return overlay_timestamp(small, rng, max_text_fraction, max_text_width)


def clean_look(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Train/val ("from the web"): only a light exposure change and faint noise."""
    array = np.asarray(image, dtype=np.float32) * rng.uniform(0.92, 1.08) + rng.uniform(-6, 6)
    array += rng.normal(0.0, 1.5, size=array.shape).astype(np.float32)
    return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8))
