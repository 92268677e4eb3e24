import pytest

from traffic_retrieval.data.vocabulary import QueryRouter
from traffic_retrieval.retrieval.queries import SEED_PROMPT_SUFFIX, QueryConfig, strip_vehicle_query, text_to_encode


@pytest.mark.parametrize(
    "query, stripped",
    [
        ("This is a white Audi.", "white Audi"),
        ("This is an orange BMW.", "orange BMW"),
        ("A white Audi.", "white Audi"),
        ("An orange Honda.", "orange Honda"),
        ("A SUV.", "SUV"),
        ("this is a Truck", "Truck"),
        ("white Audi", "white Audi"),
        ("  A Balong Heavy Truck. ", "Balong Heavy Truck"),
    ],
)
def test_strip_vehicle_query(query, stripped):
    assert strip_vehicle_query(query) == stripped


def test_text_to_encode_changes_only_vehicle_queries():
    pedestrian = "A walking woman who is between 18 and 60 years old."
    assert text_to_encode(pedestrian, "pedestrian", QueryConfig(strip_vehicle_prefix=True, prompt=True)) == pedestrian
    assert text_to_encode("This is a white Audi.", "vehicle", QueryConfig()) == "This is a white Audi."
    assert text_to_encode("This is a white Audi.", "vehicle", QueryConfig(strip_vehicle_prefix=True)) == "white Audi"
    assert text_to_encode("This is a white Audi.", "vehicle", QueryConfig(prompt=True)) == "white Audi" + SEED_PROMPT_SUFFIX
    assert text_to_encode("A Truck.", "vehicle", QueryConfig(prompt=True, prompt_suffix=" photo")) == "Truck photo"


def test_prompted_real_vehicle_texts_still_route_to_vehicle(challenge_text):
    route = QueryRouter()
    lines = (challenge_text / "val_vehicle_labels_augmented.txt").read_text(encoding="utf-8").splitlines()
    for line in lines:
        text = line.split("$")[2] + "."
        assert route(text_to_encode(text, "vehicle", QueryConfig(prompt=True))) == "vehicle"
