"""Search by an example image and combined queries (docs/queries.md): the expression
parser (valid forms, weights, negatives, errors naming the column), the vector
arithmetic, ``Retriever.search_image`` / ``search_images`` / ``search_combined``,
and ``search --image`` / ``search --expr``.

The index is 40 synthetic test-split images encoded in fp32 by a randomly
initialised TR-Tiny-ViT: unlike the random TR-Tiny-RN of the other tests (whose
image embeddings all agree to 1e-6), it tells images apart (different images
below 0.999 cosine), so an image's own search finds it by similarity alone.
"""

import json
import math
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

from tiny_gallery import make_tiny_gallery
from traffic_retrieval.cli import main
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.index import Retriever
from traffic_retrieval.retrieval.compose import (MAX_EXPRESSION_CHARS, MAX_TERMS, Term, combine, format_terms, image_uint8,
                                                 parse_expression, rgb_image)

AUDI = "This is a white Audi."
MAN = "A walking man between 18 and 60 years old with a backpack."


# -- the parser -------------------------------------------------------------------------------
def kinds(terms: list[Term]) -> list[tuple]:
    return [(t.kind, t.value, t.weight) for t in terms]


@pytest.mark.parametrize("expression, expected", [
    ('"red car"', [("text", "red car", 1.0)]),
    ("'red car'", [("text", "red car", 1.0)]),
    ('"red car" + img.jpg - "truck"', [("text", "red car", 1.0), ("path", "img.jpg", 1.0), ("text", "truck", -1.0)]),
    ('0.5*"red car" + 2*#123', [("text", "red car", 0.5), ("id", 123, 2.0)]),
    ('0.5 * "red car"+2*#123-.25*/data/cams/A-01.PNG', [("text", "red car", 0.5), ("id", 123, 2.0), ("path", "/data/cams/A-01.PNG", -0.25)]),
    ('#0', [("id", 0, 1.0)]),
    ('+ "a" - #7', [("text", "a", 1.0), ("id", 7, -1.0)]),
    ('-"truck" + "car"', [("text", "truck", -1.0), ("text", "car", 1.0)]),
    ('1e-1*"a"', [("text", "a", 0.1)]),
    ('0001.jpg - 2*0002.webp + 3*"x"', [("path", "0001.jpg", 1.0), ("path", "0002.webp", -2.0), ("text", "x", 3.0)]),
    (r'"say \"hi\" \\ bye" + "it\'s"', [("text", 'say "hi" \\ bye', 1.0), ("text", "it's", 1.0)]),
    ('"a+b - c*2"', [("text", "a+b - c*2", 1.0)]),
    ('  "padded"  ', [("text", "padded", 1.0)]),
])
def test_valid_expressions(expression, expected):
    terms = parse_expression(expression)
    assert kinds(terms) == expected
    assert kinds(parse_expression(format_terms(terms))) == expected  # written back in the syntax, it reads the same


def test_terms_remember_their_columns():
    terms = parse_expression('0.5*"red car" + 2*#123 - "truck"')
    assert [t.column for t in terms] == [1, 15, 24]


@pytest.mark.parametrize("expression, column, reason", [
    ("red car", 1, "'red' is not a term: quote texts"),
    ('"red car" + car', 13, "'car' is not a term"),
    ('"a" "b"', 5, "expected + or - between two terms"),
    ('"a" #1', 5, "expected + or - between two terms"),
    ('"red car', 1, "is never closed"),
    ('"a" + \'b', 7, "is never closed"),
    ('"a\\nb"', 3, "unknown escape"),
    ("#x", 1, "an indexed image is # and its id"),
    ("#12a", 1, "an indexed image is # and its id"),
    ("#", 1, "an indexed image is # and its id"),
    ("#99999999999999999999", 1, "out of range"),
    ('"a" +', 6, "a term is missing at the end"),
    ('"a" + ', 6, "a term is missing at the end"),
    ("2*", 3, "a term is missing at the end"),
    ('"a" + - "b"', 7, "a term is missing before -"),
    ('* "a"', 1, "a weight goes before *"),
    ('"a" * 2', 5, "a weight goes before *"),
    ('2**"a"', 3, "a weight goes before *"),
    ('0*"a"', 1, "must be above 0"),
    ('1e999*"a"', 1, "not a finite number"),
    ('101*"a"', 1, "is over 100"),
    ('""', 1, "the text is empty"),
    ('"a" + "   "', 7, "the text is empty"),
    ('-"truck"', 1, "at least one term added"),
    ('-"a" - #3', 1, "at least one term added"),
    ('a.jpg+"b"', 1, "is not a term"),  # a path runs to the next space
])
def test_errors_name_the_column(expression, column, reason):
    with pytest.raises(TrafficRetrievalError) as caught:
        parse_expression(expression)
    message = str(caught.value)
    assert message.startswith(f"combined query, column {column}: ") and reason in message and "\n" not in message, message


def test_limits_and_refused_paths():
    parse_expression(" + ".join(['"a"'] * MAX_TERMS))
    with pytest.raises(TrafficRetrievalError, match=f"column {8 * 6 - 1}: more than {MAX_TERMS} terms"):
        parse_expression(" + ".join(['"a"'] * (MAX_TERMS + 1)))
    with pytest.raises(TrafficRetrievalError, match=f"longer than {MAX_EXPRESSION_CHARS} characters"):
        parse_expression('"' + "a" * MAX_EXPRESSION_CHARS + '"')
    with pytest.raises(TrafficRetrievalError, match="the expression is empty"):
        parse_expression("   ")
    with pytest.raises(TrafficRetrievalError, match="is a string"):
        parse_expression(["a"])
    assert kinds(parse_expression('"a" + #3', allow_paths=False)) == [("text", "a", 1.0), ("id", 3, 1.0)]
    with pytest.raises(TrafficRetrievalError, match=r"column 7: image file paths \('/etc/x.png'\) are not accepted here: use #ID"):
        parse_expression('"a" + /etc/x.png', allow_paths=False)
    with pytest.raises(TrafficRetrievalError) as caught:
        parse_expression('"\x1b[31m" + \x1b[2Jx.txt')  # what an error quotes from the input is escaped
    assert "\x1b" not in str(caught.value) and "\\x1b" in str(caught.value)


# -- the vector arithmetic -------------------------------------------------------------------
def test_combine_is_the_normalised_weighted_sum_of_normalised_vectors():
    torch.manual_seed(0)
    vectors = torch.randn(3, 16)
    weights = [0.5, 2.0, -1.0]
    expected = sum(w * v / v.norm() for w, v in zip(weights, vectors))
    combined = combine(vectors, weights)
    assert torch.allclose(combined, expected / expected.norm(), atol=1e-6) and math.isclose(float(combined.norm()), 1.0, abs_tol=1e-6)
    assert torch.allclose(combine(vectors * 7, weights), combined, atol=1e-6)  # the inputs' lengths do not matter
    assert torch.allclose(combine(vectors, [2 * w for w in weights]), combined, atol=1e-6)  # nor a common scale of the weights
    assert torch.allclose(combine(vectors[:1], [1.0]), vectors[0] / vectors[0].norm(), atol=1e-6)


@pytest.mark.parametrize("weights", [[1.0, -1.0], [2.0, -2.0], [0.5, 0.5, -1.0]])
def test_terms_that_cancel_out_are_a_one_line_error(weights):
    vector = torch.randn(16)
    with pytest.raises(TrafficRetrievalError, match="^combined query: the terms cancel out") as caught:
        combine(torch.stack([vector] * len(weights)), weights)
    assert "\n" not in str(caught.value)


def test_images_become_the_models_pixels():
    from traffic_retrieval.data.images import PreprocessConfig

    config = PreprocessConfig(size=32)
    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 0))  # fully transparent: black, as the loader composes it
    assert image_uint8(rgba, config).shape == (3, 32, 32) and int(image_uint8(rgba, config).max()) == 0
    assert rgb_image(Image.new("L", (4, 4), 200)).mode == "RGB" and rgb_image(Image.new("I;16", (4, 4), 51200)).getpixel((0, 0)) == (200,) * 3


# -- the retriever ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from traffic_retrieval.io import atomic_torch_save
    from traffic_retrieval.model.factory import checkpoint_payload, create_model

    root = tmp_path_factory.mktemp("by-image")
    source = make_tiny_gallery(root, seed=5, test_pedestrians=24, test_vehicles=16)
    torch.manual_seed(0)
    atomic_torch_save(checkpoint_payload(create_model("TR-Tiny-ViT")), root / "vit.pt")
    return source | {"checkpoint": root / "vit.pt"}


@pytest.fixture(scope="module")
def index(source):
    from traffic_retrieval.commands.index import IndexConfig
    from traffic_retrieval.commands.index import run as build_index

    out = source["root"] / "INDEX"
    build_index(IndexConfig(images=source["gallery"], checkpoint=source["checkpoint"], out=out, labels=source["labels"], workers=0,
                            progress=False, device="cpu", precision="fp32"))
    return out


@pytest.fixture(scope="module")
def gallery(retriever):
    """(id, path, category) of every indexed image."""
    return [(image.id, retriever.image_path(image.id), image.category) for image in retriever._store.indexed_images()]


def ids(results) -> list[int]:
    return [r.id for r in results]


def test_an_images_own_search_returns_it_first_by_id_path_and_pil(retriever, gallery):
    for number, (image_id, path, category) in enumerate(gallery[::5]):
        for query in (image_id, str(path) if number % 2 else path, Image.open(path)):
            results = retriever.search_image(query, k=5)
            assert len(results) == 5 and results[0].id == image_id, (image_id, type(query).__name__, [(r.id, r.score) for r in results])
            assert results[0].score > 0.9999 and [r.rank for r in results] == [1, 2, 3, 4, 5]
            assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
        by_category = retriever.search_image(image_id, k=3, category=category)
        assert by_category[0].id == image_id and {r.category for r in by_category} == {category}


def test_search_images_answers_each_like_search_image(retriever, gallery):
    queries = [gallery[0][0], gallery[5][1], Image.open(gallery[9][1]), gallery[0][0]]
    batches = retriever.search_images(queries, k=4, category="all")
    assert [ids(batch) for batch in batches] == [ids(retriever.search_image(query, k=4)) for query in queries]
    assert [batch[0].id for batch in batches] == [gallery[0][0], gallery[5][0], gallery[9][0], gallery[0][0]]
    assert retriever.search_images([], k=3) == []


def test_image_queries_search_every_category_unless_one_is_given(retriever, gallery):
    pedestrian = next(image_id for image_id, _, category in gallery if category == "pedestrian")
    everything = retriever.search_image(pedestrian, k=40)
    assert len(everything) == 40 and {r.category for r in everything} == {"pedestrian", "vehicle"}
    assert everything == retriever.search_image(pedestrian, k=40, category="all")
    vehicles = retriever.search_image(pedestrian, k=40, category="vehicle")
    assert len(vehicles) == 16 and {r.category for r in vehicles} == {"vehicle"} and pedestrian not in ids(vehicles)


def test_image_query_errors_are_one_line(retriever, gallery, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    largest = max(image_id for image_id, _, _ in gallery)
    for query, reason in ((largest + 1, "no indexed image with id"), (-1, "no indexed image with id"), (2**70, "no indexed image with id"),
                          (True, "a path, a PIL image or an index id"), (1.5, "a path, a PIL image or an index id"),
                          (b"x.jpg", "a path, a PIL image or an index id"), (tmp_path / "missing.jpg", "image not found"),
                          (tmp_path / "notes.txt", "cannot read image"), (tmp_path / "fake.jpg", "cannot read image")):
        with pytest.raises(TrafficRetrievalError, match=reason) as caught:
            retriever.search_image(query, k=3)
        assert "\n" not in str(caught.value)
    for k, category, reason in ((0, None, "k must be"), (3, "bicycle", "category must be")):
        with pytest.raises(TrafficRetrievalError, match=reason):
            retriever.search_image(gallery[0][0], k=k, category=category)
    with pytest.raises(TrafficRetrievalError, match="takes a list"):
        retriever.search_images(gallery[0][0])


def test_an_index_without_the_stored_embedding_encodes_the_file_again(index, gallery, tmp_path):
    copy = tmp_path / "INDEX"
    shutil.copytree(index, copy)
    for shard in (copy / "shards").glob("shard_*.npy"):
        shard.unlink()
    with Retriever.open(copy, device="cpu", precision="fp32") as without:
        for image_id, _, _ in gallery[:3]:
            assert without.search_image(image_id, k=3)[0].id == image_id


def test_combined_queries(retriever, gallery):
    image_id, path, _ = gallery[4]
    assert ids(retriever.search_combined(f"#{image_id}", k=6)) == ids(retriever.search_image(image_id, k=6))
    assert ids(retriever.search_combined(f"{path}", k=6)) == ids(retriever.search_image(path, k=6))
    assert ids(retriever.search_combined(f'"{AUDI}"', k=6, category="vehicle")) == ids(retriever.search(AUDI, k=6, category="vehicle"))
    assert ids(retriever.search_combined(f'"{MAN}"', k=6, category="all")) == ids(retriever.search(MAN, k=6, category="all"))
    mixed = retriever.search_combined(f'0.5*"{AUDI}" + 2*#{image_id}', k=40)
    scaled = retriever.search_combined(f'"{AUDI}" + 4*{path}', k=40)  # the same direction: the same ranking
    assert ids(mixed) == ids(scaled) and all(abs(a.score - b.score) < 1e-4 for a, b in zip(mixed, scaled))
    assert mixed[0].id == image_id  # weighted towards the image
    assert len(retriever.search_combined(f'"{MAN}" - "{AUDI}"', k=5, category="pedestrian")) == 5
    for expression, reason in ((f'"{AUDI}" - "{AUDI}"', "the terms cancel out"), (f"#{image_id} - {path}", "the terms cancel out"),
                               ("#999999", "no indexed image with id 999999"), ('"a" + b', "column 7: 'b' is not a term")):
        with pytest.raises(TrafficRetrievalError, match=reason):
            retriever.search_combined(expression, k=3)
    with pytest.raises(TrafficRetrievalError, match="image file paths"):
        retriever.search_combined(f'"a" + {path}', k=3, allow_paths=False)


def test_image_and_text_searches_from_many_threads_agree_with_one_thread(retriever, gallery):
    queries = [("image", image_id) for image_id, _, _ in gallery[:8]] + [("path", path) for _, path, _ in gallery[8:12]]
    queries += [("text", text) for text in (AUDI, MAN, "a red truck", "a woman in a long coat")]
    queries += [("combined", f'"{AUDI}" + #{gallery[1][0]}'), ("combined", f'2*"{MAN}" - #{gallery[2][0]}')]
    run = {"image": lambda q: retriever.search_image(q, k=5), "path": lambda q: retriever.search_image(q, k=5),
           "text": lambda q: retriever.search(q, k=5, category="all"), "combined": lambda q: retriever.search_combined(q, k=5)}
    expected = [ids(run[kind](query)) for kind, query in queries]
    start = threading.Barrier(len(queries))

    def ask(item):
        start.wait()
        return ids(run[item[0]](item[1]))

    with ThreadPoolExecutor(len(queries)) as pool:
        assert list(pool.map(ask, queries)) == expected


# -- the command --------------------------------------------------------------------------------
def test_search_image_and_expr_commands(index, gallery, capsys):
    common = ["--index", str(index), "-k", "3", "--device", "cpu", "--precision", "fp32"]
    (first, first_path, _), (second, second_path, _) = gallery[2], gallery[7]
    assert main(["search", *common, "--image", str(first_path), str(second_path), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["query"] for line in lines] == [str(first_path), str(second_path)]
    assert [line["results"][0]["id"] for line in lines] == [first, second] and all(len(line["results"]) == 3 for line in lines)
    assert main(["search", *common, "--image", str(first_path), "--category", "vehicle"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and all(line.split()[2] == "vehicle" for line in table)
    expression = f'0.5*"{AUDI}" + 2*#{first}'
    assert main(["search", *common, "--expr", expression, f"#{second}", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["query"] for line in lines] == [expression, f"#{second}"] and lines[1]["results"][0]["id"] == second
    for arguments, reason in (([*common, "--expr", '"a" +'], "error: combined query, column 6: a term is missing at the end"),
                              ([*common, "--expr", '"a"', "red car"], "error: query 2: combined query, column 1: 'red' is not a term"),
                              ([*common, "--expr", "--image", "x.jpg"], "error: search takes --image or --expr, not both"),
                              ([*common, "--image", str(first_path.parent / "missing.jpg")], "missing.jpg: image not found"),
                              ([*common, "--expr", f"#{10**6}"], f"no indexed image with id {10**6}")):
        assert main(["search", *arguments]) == 2
        err = capsys.readouterr().err
        assert reason in err and "Traceback" not in err, err


def test_a_gallery_file_path_is_its_indexed_image_even_with_a_random_model(tmp_path, capsys):
    """With a randomly initialised TR-Tiny-RN all embeddings nearly agree, so similarity alone cannot
    put an image first; a path inside the gallery is its indexed image, which comes first."""
    from tiny_gallery import build_tiny_index

    source = make_tiny_gallery(tmp_path, seed=4, test_pedestrians=4, test_vehicles=4)
    index = build_tiny_index(source, tmp_path / "INDEX")
    paths = sorted(source["gallery"].iterdir())
    with Retriever.open(index, device="cpu") as random_model:
        for path in paths:
            results = random_model.search_image(path, k=3)
            assert results[0].name == path.name and results[0].rank == 1
        outside = tmp_path / "copy.png"
        outside.write_bytes(paths[0].read_bytes())  # outside the gallery: encoded, not looked up
        assert len(random_model.search_image(outside, k=3)) == 3
    assert main(["search", "--index", str(index), "--image", str(paths[3]), "-k", "2", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["name"] == paths[3].name
