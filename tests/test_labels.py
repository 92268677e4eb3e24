import json

import pytest

from traffic_retrieval.data.labels import LabelError, canonical_attr, parse_label_line, read_label_file
from traffic_retrieval.data.schema import PEDESTRIAN, VEHICLE
from traffic_retrieval.data.vocabulary import QueryRouter, VehicleVocabulary, extract_vocabulary, parse_vehicle_attr

FLAGS = ",".join(["0", "1", "0"] + ["0"] * 18)


def test_parse_vehicle_and_pedestrian_lines():
    vehicle = parse_label_line("pmitevanhx.jpg$white Audi.$This is a white Audi.", "l.txt", 1)
    assert (vehicle.image_name, vehicle.attr, vehicle.category) == ("pmitevanhx.jpg", "white Audi.", VEHICLE)
    pedestrian = parse_label_line(f"000618${FLAGS}$A walking woman.", "l.txt", 2)
    assert pedestrian.category == PEDESTRIAN and pedestrian.attr == FLAGS
    assert pedestrian.pedestrian_flags[1] == 1 and len(pedestrian.pedestrian_flags) == 21


def test_canonical_attr_normalises_period_spaces_and_flag_spacing():
    assert canonical_attr("white  Audi")[1] == canonical_attr("white Audi.")[1] == "white Audi."
    assert canonical_attr(" 0, 1," + ",".join(["0"] * 19))[1] == "0,1," + ",".join(["0"] * 19)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("a.jpg$white Audi.", "expected 3"),
        ("a.jpg$white Audi.$This is$extra", "expected 3"),
        ("a.jpg$white Audi.$   ", "empty TEXT"),
        ("$white Audi.$This is a white Audi.", "empty IMAGE"),
        ("a.jpg$$text", "empty ATTR"),
        ("a.jpg$" + ",".join(["0"] * 20) + "$text", "21 flags, found 20"),
        ("a.jpg$" + ",".join(["0"] * 22) + "$text", "21 flags, found 22"),
        ("a.jpg$" + ",".join(["2"] + ["0"] * 20) + "$text", "must be 0 or 1"),
        ("../a.jpg$white Audi.$text", "plain file name"),
        ("dir/a.jpg$white Audi.$text", "plain file name"),
        ("a.jpg$white.$text", "no brand or type"),
    ],
)
def test_bad_lines_name_file_line_and_reason(line, reason):
    with pytest.raises(LabelError) as error:
        parse_label_line(line, "labels.txt", 7)
    assert str(error.value).startswith("labels.txt:7: ") and reason in str(error.value)
    assert "\n" not in str(error.value)


def test_read_label_file_skips_and_counts(tmp_path):
    path = tmp_path / "train_label.txt"
    lines = [
        "\ufeffa.jpg$white Audi.$This is a white Audi.\r\n",
        "b.jpg$Truck.$A Truck.\r\n",
        "broken line\n",
        "a.jpg$red BMW.$A red BMW.\n",
    ]
    path.write_bytes("".join(lines).encode("utf-8") + b"c.jpg$red BMW.$caf\xe9\n")
    records, errors = read_label_file(path)
    assert [r.image_name for r in records] == ["a.jpg", "b.jpg"]
    assert [(e.line_number, e.reason.split(" ")[0]) for e in errors] == [(3, "expected"), (4, "duplicate"), (5, "not")]
    with pytest.raises(LabelError, match=r"train_label.txt:3"):
        read_label_file(path, strict=True)


def test_vehicle_attr_forms():
    assert parse_vehicle_attr("white Audi.") == parse_vehicle_attr("white Audi")
    fields = parse_vehicle_attr("white Golden Dragon.")
    assert (fields.color, fields.brand, fields.type) == ("white", "Golden Dragon", None)
    assert parse_vehicle_attr("Truck.").type == "Truck"
    assert parse_vehicle_attr("Balong Heavy Truck.").brand == "Balong Heavy Truck"
    assert parse_vehicle_attr("red Truck.").type == "Truck"


def test_router_on_made_up_queries():
    route = QueryRouter()
    assert route("This is a white Audi.") == VEHICLE
    assert route("a white audi") == VEHICLE
    assert route("A grey car") == VEHICLE
    assert route("A walking woman between 18 and 60 years old with a backpack") == PEDESTRIAN


def test_real_vehicle_labels_reproduce_the_published_vocabulary(challenge_text):
    lines = (challenge_text / "val_vehicle_labels_augmented.txt").read_text(encoding="utf-8").splitlines()
    attrs = []
    for number, line in enumerate(lines, start=1):
        image, attr, text, _augmented = line.split("$")
        record = parse_label_line(f"{image}${attr}${text}", "val", number)
        assert record.category == VEHICLE
        attrs.append(record.attr)
    vocabulary = extract_vocabulary(attrs).to_json_dict()
    published = VehicleVocabulary.from_json_dict(json.loads((challenge_text / "vehicle_vocabulary.json").read_text())).to_json_dict()
    assert vocabulary == published


def test_every_real_text_routes_to_its_category(challenge_text):
    route = QueryRouter()
    vehicle_lines = (challenge_text / "val_vehicle_labels_augmented.txt").read_text(encoding="utf-8").splitlines()
    assert all(route(line.split("$")[2] + ".") == VEHICLE for line in vehicle_lines)
    person_lines = (challenge_text / "val_person_captions.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(person_lines) == 6587
    assert all(route(line.split("\t", 1)[1]) == PEDESTRIAN for line in person_lines)
