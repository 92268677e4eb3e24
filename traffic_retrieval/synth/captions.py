"""Caption grammar of the synthetic generator, modelled on the challenge's real texts.

The real pedestrian captions (written by a language model from the flags) follow
one template with a small vocabulary (about 80 words):

    <subject> <age><orientation>[ and <carried item>]. <Pronoun> <second sentence>.

- one carried item at most, even when several are flagged;
- the second sentence names the worn accessories when there are any
  ("He is wearning a hat,glasses." with the real typo and no space after commas),
  otherwise the upper clothing: sleeves, at most one pattern, and a skirt or dress;
- "boots" is a PA-100K attribute the challenge removed from ATTR but not from the
  captions, so a caption can name it although no flag says so.

Every phrase below occurs in the real captions; the tables are data, the code only
joins them. Vehicle texts are ``This is a <ATTR>.`` or ``A <ATTR>.`` with "an"
before a lower-case vowel (``An orange BMW.``, but ``A SUV.`` as in the real data).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from ..data.schema import PEDESTRIAN_FLAGS

# Not a flag of ATTR, but named by real captions; the generator draws it per image.
BOOTS = "Boots"

SUBJECTS: dict[str, list[str]] = {
    "male": [
        "A male pedestrian who",
        "A pedestrian who is male",
        "A walking man who",
        "A male pedestrian is someone who walks on foot,",
    ],
    "female": [
        "A female pedestrian who",
        "A pedestrian who is female",
        "A walking woman who",
        "A female pedestrian is someone who walks on foot,",
    ],
}

PRONOUNS: dict[str, tuple[str, str]] = {"male": ("He", "his"), "female": ("She", "her")}

AGES: dict[str, list[str]] = {
    "AgeOver60": [
        "is aged 60 or older",
        "is aged over 60",
        "is an elderly person over 60 years old",
        "is at least 60 years old",
    ],
    "Age18-60": [
        "is between 18 and 60 years old",
        "is an adult person aged 18-60",
    ],
    "AgeLess18": [
        "is age 18 or younger",
        "is less than 18 years old",
        "is not an adult",
        "is a minor",
    ],
}

# "{his}" is replaced by the possessive pronoun.
ORIENTATIONS: dict[str, list[str]] = {
    "Front": [", with {his} body facing the camera"],
    "Side": [", and is standing sideways"],
    "Back": [", with {his} body back to the camera"],
}

CARRIED: dict[str, list[str]] = {
    "HandBag": ["with a handbag", "carrying a handbag", "holding a handbag", "clutching a handbag"],
    "ShoulderBag": [
        "with a shoulderbag",
        "is carrying a shoulder bag",
        "has a shoulderbag",
        "has a bag over the shoulder",
    ],
    "Backpack": ["with a backpack", "carrying a backpack"],
    "HoldObjectsInFront": ["holds objects in front"],
}

# Listed in this order, joined by a bare comma.
WORN: dict[str, list[str]] = {
    "Hat": ["a hat"],
    "Glasses": ["glasses"],
    "LongCoat": ["a longcoat", "a coat that is long"],
    BOOTS: ["boots"],
}

SLEEVES: dict[str, list[str]] = {
    "ShortSleeve": ["a short sleeve shirt", "a shirt with short sleeves", "a tee shirt with short sleeves"],
    "LongSleeve": ["a long sleeve shirt", "a shirt with long sleeves", "a tee shirt with long sleeves"],
}

UPPER_PATTERNS: dict[str, list[str]] = {
    "UpperStride": ["an upper stripe"],
    "UpperLogo": ["an upper logo", "a logo on the upper"],
    "UpperPlaid": ["an upper plaid", "a plaid on the upper"],
    "UpperSplice": ["an upper splice", "a splice on the upper"],
}

SKIRT: dict[str, list[str]] = {"Skirt&Dress": ["in a skirt or dress", "wearing skirt or dress"]}

VEHICLE_PREFIXES: tuple[str, ...] = ("This is ", "")


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _present(flags: Mapping[str, int], names) -> list[str]:
    return [name for name in names if flags.get(name)]


def flags_to_dict(flag_values: Sequence[int]) -> dict[str, int]:
    """21 flag values in PEDESTRIAN_FLAGS order -> ``{name: 0/1}``."""
    return dict(zip(PEDESTRIAN_FLAGS, (int(v) for v in flag_values)))


def pedestrian_caption(flags: Mapping[str, int], rng: np.random.Generator, boots: bool = False) -> str:
    """One random paraphrase of a pedestrian flag set (names of PEDESTRIAN_FLAGS -> 0/1)."""
    gender = "female" if flags.get("Female") else "male"
    subject_pronoun, possessive = PRONOUNS[gender]
    age = next((name for name in AGES if flags.get(name)), "Age18-60")
    orientation = next((name for name in ORIENTATIONS if flags.get(name)), "Front")

    first = f"{_pick(SUBJECTS[gender], rng)} {_pick(AGES[age], rng)}"
    first += _pick(ORIENTATIONS[orientation], rng).format(his=possessive)
    carried = _present(flags, CARRIED)
    if carried:
        first += " and " + _pick(CARRIED[_pick(carried, rng)], rng)

    worn = _present({**flags, BOOTS: int(boots)}, WORN)
    if worn:
        second = "is wearning " + ",".join(_pick(WORN[name], rng) for name in worn)
    else:
        sleeve = "ShortSleeve" if flags.get("ShortSleeve") or not flags.get("LongSleeve") else "LongSleeve"
        second = "is in " + _pick(SLEEVES[sleeve], rng)
        patterns = _present(flags, UPPER_PATTERNS)
        if patterns:
            second += " with " + _pick(UPPER_PATTERNS[_pick(patterns, rng)], rng)
        if flags.get("Skirt&Dress"):
            second += " and " + _pick(SKIRT["Skirt&Dress"], rng)
    return f"{first}. {subject_pronoun} {second}."


def _alternation(options) -> str:
    return "(?:" + "|".join(re.escape(o) for o in sorted(set(options), key=len, reverse=True)) + ")"


def pedestrian_caption_regex() -> re.Pattern:
    """A regex matching exactly the captions this grammar can produce, with named
    groups ``subject``, ``age``, ``orientation``, ``carried``, ``pronoun``, ``worn``,
    ``sleeve``, ``pattern`` and ``skirt``."""
    subjects = _alternation(s for options in SUBJECTS.values() for s in options)
    ages = _alternation(a for options in AGES.values() for a in options)
    orientations = _alternation(
        o.format(his=p[1]) for options in ORIENTATIONS.values() for o in options for p in PRONOUNS.values()
    )
    carried = _alternation(c for options in CARRIED.values() for c in options)
    worn_item = _alternation(w for options in WORN.values() for w in options)
    sleeves = _alternation(s for options in SLEEVES.values() for s in options)
    patterns = _alternation(p for options in UPPER_PATTERNS.values() for p in options)
    skirts = _alternation(SKIRT["Skirt&Dress"])
    pronouns = _alternation(p[0] for p in PRONOUNS.values())
    return re.compile(
        rf"(?P<subject>{subjects}) (?P<age>{ages})(?P<orientation>{orientations})"
        rf"(?: and (?P<carried>{carried}))?\. (?P<pronoun>{pronouns}) "
        rf"(?:is wearning (?P<worn>{worn_item}(?:,{worn_item})*)"
        rf"|is in (?P<sleeve>{sleeves})(?: with (?P<pattern>{patterns}))?(?: and (?P<skirt>{skirts}))?)\."
    )


def _article(attr_body: str) -> str:
    # The real texts write "An orange BMW" but "A SUV": only a lower-case vowel takes "an".
    return "an" if attr_body[:1] in "aeiou" else "a"


def vehicle_text_variants(attr: str) -> list[str]:
    """All texts a vehicle ATTR (``'white Audi.'``) can get: ``'This is a white Audi.'``, ``'A white Audi.'``."""
    body = attr.strip().rstrip(".")
    article = _article(body)
    texts = []
    for prefix in VEHICLE_PREFIXES:
        phrase = f"{prefix}{article} {body}."
        texts.append(phrase[:1].upper() + phrase[1:])
    return texts


def vehicle_text(attr: str, rng: np.random.Generator) -> str:
    """One random text for a vehicle ATTR."""
    return _pick(vehicle_text_variants(attr), rng)
