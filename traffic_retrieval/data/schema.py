"""The challenge's label schema: attribute names, their order, and the vehicle vocabulary.

These are facts of the data format (docs/data-format.md), shared by the parser, the
synthetic generator, augmentation and the attribute heads.
"""

# Pedestrian ATTR: 21 comma-separated 0/1 flags in exactly this order (PA-100K minus 5).
PEDESTRIAN_FLAGS: tuple[str, ...] = (
    "Female",
    "AgeOver60",
    "Age18-60",
    "AgeLess18",
    "Front",
    "Side",
    "Back",
    "Hat",
    "Glasses",
    "HandBag",
    "ShoulderBag",
    "Backpack",
    "HoldObjectsInFront",
    "ShortSleeve",
    "LongSleeve",
    "UpperStride",
    "UpperLogo",
    "UpperPlaid",
    "UpperSplice",
    "LongCoat",
    "Skirt&Dress",
)
NUM_PEDESTRIAN_FLAGS = len(PEDESTRIAN_FLAGS)

# The published vehicle vocabulary of the challenge (colors, types, brands).
# `prepare` re-derives the vocabulary from the user's own labels; these lists are
# what the synthetic generator draws from.
VEHICLE_COLORS: tuple[str, ...] = (
    "black", "blue", "brown", "green", "grey", "orange",
    "pink", "purple", "red", "white", "yellow",
)
VEHICLE_TYPES: tuple[str, ...] = ("Bus", "Microbus", "Minivan", "SUV", "Sedan", "Truck")
VEHICLE_BRANDS: tuple[str, ...] = (
    "Audi", "BAOJUN", "BESTUNE", "BMW", "BYD", "Balong Heavy Truck", "Bentley", "Benz",
    "Buick", "Cadillac", "Chana", "Chery", "Chevrolet", "China-Moto", "Citroen", "Dongfeng",
    "FAW", "FORLAND", "FOTON", "Ford", "Geely", "Golden Dragon", "GreatWall", "HAFEI",
    "Haima", "Honda", "Hongyan", "Hyundai", "Infiniti", "Isuzu", "Iveco", "JAC", "JMC",
    "Jeep", "Jinbei", "KINGLONG", "Karma", "Kia", "LEOPAARD", "Landrover", "Lexus",
    "Luxgen", "MORRIS-GARAGE", "Mazda", "Mini", "Mitsubishi", "Nissan", "OPEL", "PEUGEOT",
    "Porsche", "ROEWE", "SGMW", "SKODA", "Shacman", "Shuanghuan", "Soueast", "Style",
    "Subaru", "Suzuki", "Toyota", "Volkswagen", "Volvo", "XIALI", "Yutong", "ZXAUTO",
)

PEDESTRIAN = "pedestrian"
VEHICLE = "vehicle"
CATEGORIES: tuple[str, ...] = (PEDESTRIAN, VEHICLE)
