"""Text forms (sentence / the seed's a3r), routers (vocabulary / a3r), the query recipe a
checkpoint records, and the ``queries`` command; checked on the real challenge texts
where ../shared is present."""

import csv
import json

import pytest

from traffic_retrieval.cli import main
from traffic_retrieval.data.text_forms import SEED_PROMPT_SUFFIX, bare_vehicle_phrase, query_text, training_caption
from traffic_retrieval.data.vocabulary import A3RQueryRouter, QueryRouter, VehicleVocabulary, make_router
from traffic_retrieval.retrieval.queries import RECIPE_KEY, QueryConfig, resolve_query_config, text_to_encode

PEDESTRIAN = "A walking woman who is between 18 and 60 years old."


@pytest.mark.parametrize(
    "text, bare",
    [
        ("This is a white Audi Sedan.", "white Audi Sedan"),
        ("This is an orange BMW.", "orange BMW"),
        ("A white Audi.", "white Audi"),
        ("An orange Honda.", "orange Honda"),
        ("A SUV.", "SUV"),
        ("this is a Truck", "Truck"),
        ("white Audi Sedan", "white Audi Sedan"),  # already bare: unchanged
        ("  A Balong Heavy Truck. ", "Balong Heavy Truck"),
    ],
)
def test_bare_vehicle_phrase(text, bare):
    assert bare_vehicle_phrase(text) == bare
    assert bare_vehicle_phrase(bare) == bare


def test_training_captions_by_form():
    assert training_caption("This is a white Audi Sedan.", "vehicle", "a3r") == "white Audi Sedan"
    assert training_caption("white Audi Sedan", "vehicle", "a3r") == "white Audi Sedan"
    assert training_caption(PEDESTRIAN, "pedestrian", "a3r") == PEDESTRIAN  # pedestrians as written
    assert training_caption("This is a white Audi.", "vehicle", "sentence") == "This is a white Audi."


@pytest.mark.parametrize(
    "query, category, text",
    [
        ("This is a white Audi.", "vehicle", "white Audi"),
        ("This is an orange BMW.", "vehicle", "orange BMW"),
        ("An orange BMW.", "vehicle", "orange BMW"),
        ("A SUV.", "vehicle", "SUV"),
        ("  A SUV. \t", "vehicle", "SUV"),  # the seed's line.strip()[:-1]
        ("this is a white Audi.", "vehicle", "this is a white Audi"),  # its prefixes are case-sensitive
        ("A white Audi", "vehicle", "white Aud"),  # the last character goes, period or not (the seed's)
        (PEDESTRIAN, "pedestrian", PEDESTRIAN[:-1]),  # pedestrians lose the last character too
        ("A walking man.", "pedestrian", "A walking man"),  # ... but keep "A "
        ("", "pedestrian", ""),
    ],
)
def test_a3r_query_text(query, category, text):
    assert query_text(query, category, "a3r") == text


def test_sentence_form_keeps_queries_and_the_prompt_keeps_the_prefix():
    assert query_text("This is a white Audi.", "vehicle", "sentence") == "This is a white Audi."
    assert query_text(PEDESTRIAN, "pedestrian", "sentence", SEED_PROMPT_SUFFIX) == PEDESTRIAN  # prompts are for vehicles
    # the seed's second variant: the prefix stays, the suffix describes the camera domain
    assert query_text("This is a white Audi.", "vehicle", "a3r", SEED_PROMPT_SUFFIX) == "This is a white Audi" + SEED_PROMPT_SUFFIX
    assert query_text("This is a white Audi.", "vehicle", "sentence", " photo") == "This is a white Audi photo"
    assert text_to_encode("This is a white Audi.", "vehicle", QueryConfig(text_form="a3r", prompt=True, prompt_suffix="!")) == "This is a white Audi!"


def test_a3r_training_caption_equals_a3r_query_for_vehicles():
    """No train/query mismatch: a vehicle caption and the query of the same label encode the same string."""
    for text in ("This is a white Audi.", "A white Audi.", "An orange BMW.", "This is a Truck."):
        assert training_caption(text, "vehicle", "a3r") == query_text(text, "vehicle", "a3r")


def test_routers():
    vocabulary_router, a3r_router = QueryRouter(), A3RQueryRouter()
    assert vocabulary_router("a white car.") == "vehicle" and a3r_router("a white car.") == "pedestrian"  # generic words: ours only
    assert vocabulary_router("a red truck") == "vehicle" and a3r_router("a red truck") == "pedestrian"  # case-sensitive substring
    assert a3r_router("A Truck.") == "vehicle" and a3r_router("TheAudiX") == "vehicle"  # substring, not whole words
    assert vocabulary_router("TheAudiX") == "pedestrian"
    assert isinstance(make_router("a3r"), A3RQueryRouter) and isinstance(make_router("vocabulary"), QueryRouter)
    small = VehicleVocabulary(["red"], ["Truck"], ["Acme"])
    assert A3RQueryRouter(small)("This is an Audi.") == "pedestrian" and A3RQueryRouter(small)("An Acme.") == "vehicle"


def test_recipe_comes_from_flags_then_checkpoint_then_default():
    assert resolve_query_config(QueryConfig()).text_form == "sentence"
    recorded = {RECIPE_KEY: {"text_form": "a3r", "router": "a3r", "gallery_scope": "all"}}
    resolved = resolve_query_config(QueryConfig(), recorded)
    assert (resolved.text_form, resolved.router, resolved.gallery_scope) == ("a3r", "a3r", "all")
    assert resolve_query_config(QueryConfig(text_form="sentence"), recorded).text_form == "sentence"  # a flag wins
    # a recorded value that is not a known choice falls back to the default, never into the pipeline
    assert resolve_query_config(QueryConfig(), {RECIPE_KEY: {"text_form": "<script>", "router": 3}}).text_form == "sentence"
    assert resolve_query_config(QueryConfig(), {RECIPE_KEY: "junk"}).router == "vocabulary"


def _real_texts(challenge_text):
    with open(challenge_text / "val_person_captions.tsv", encoding="utf-8") as handle:
        pedestrians = [row["title"] for row in csv.DictReader(handle, delimiter="\t")]
    vehicles = [line.split("$") for line in (challenge_text / "val_vehicle_labels_augmented.txt").read_text(encoding="utf-8").splitlines()]
    return pedestrians, vehicles


def test_routers_on_the_real_texts(challenge_text):
    """How many real texts the two routers disagree on (reported; 0 on the published val texts),
    and both route every real text to its true category."""
    pedestrians, vehicles = _real_texts(challenge_text)
    vocabulary = VehicleVocabulary.load(challenge_text / "vehicle_vocabulary.json")
    ours, seeds = make_router("vocabulary", vocabulary), make_router("a3r", vocabulary)
    texts = pedestrians + [fields[2] + "." for fields in vehicles]  # the shipped TEXT lost its period
    disagreements = [text for text in texts if ours(text) != seeds(text)]
    print(f"routers disagree on {len(disagreements)} of {len(texts)} real texts")
    assert len(disagreements) == 0, disagreements[:5]
    assert all(seeds(text) == "pedestrian" for text in pedestrians)
    assert all(seeds(fields[2] + ".") == "vehicle" for fields in vehicles)


def test_a3r_queries_on_the_real_texts(challenge_text):
    """The seed's query text: a vehicle query becomes its bare ATTR (the shipped file's 2nd field), a pedestrian one loses its period."""
    pedestrians, vehicles = _real_texts(challenge_text)
    route = make_router("a3r")
    for fields in vehicles:
        query = fields[2] + "."
        assert query_text(query, route(query), "a3r") == fields[1]
    for caption in pedestrians:
        assert query_text(caption, route(caption), "a3r") == caption.strip()[:-1]


def test_prompted_real_vehicle_texts_still_route_to_vehicle(challenge_text):
    route = QueryRouter()
    for fields in _real_texts(challenge_text)[1]:
        assert route(text_to_encode(fields[2] + ".", "vehicle", QueryConfig(prompt=True))) == "vehicle"


def test_queries_command_with_the_a3r_preset(tmp_path, capsys):
    queries = tmp_path / "test_text.txt"
    queries.write_text("This is a white Audi.\nA walking woman with a backpack.\nAn orange BMW.\nThis is a white Audi.\n", encoding="utf-8")
    assert main(["queries", "--queries", str(queries), "--config", "a3r-vit-bigg", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"query": "This is a white Audi.", "category": "vehicle", "text": "white Audi"},
        {"query": "A walking woman with a backpack.", "category": "pedestrian", "text": "A walking woman with a backpack"},
        {"query": "An orange BMW.", "category": "vehicle", "text": "orange BMW"},
        {"query": "This is a white Audi.", "category": "vehicle", "text": "white Audi"},
    ]
    # flags win over the preset; the default recipe leaves texts as written
    assert main(["queries", "--queries", str(queries), "--json", "--gallery-scope", "routed"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first == {"query": "This is a white Audi.", "category": "vehicle", "text": "This is a white Audi."}
    assert main(["queries", "--queries", str(queries), "--text-form", "a3r"]) == 0
    out = capsys.readouterr().out
    assert "white Audi" in out and "text form a3r, router vocabulary, gallery scope routed" in out


def test_queries_command_needs_no_model(tmp_path):
    import subprocess
    import sys

    queries = tmp_path / "q.txt"
    queries.write_text("A Truck.\n", encoding="utf-8")
    code = ("import sys; from traffic_retrieval.cli import main; main(['queries', '--queries', sys.argv[1], '--config', 'a3r-vit-bigg']); "
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code, str(queries)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_queries_command_errors_are_one_line(tmp_path, capsys):
    assert main(["queries"]) == 2
    assert capsys.readouterr().err.strip() == "error: queries needs --queries FILE"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    assert main(["queries", "--queries", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}:2: not valid UTF-8 (byte 0xff)"
