import pytest
import torch

from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.retrieval.rerank import RerankConfig, candidate_similarity, minmax_scale, rerank

DIM = 32


def unit(vectors):
    return torch.nn.functional.normalize(vectors, dim=-1)


def scene(text_order, relevant, seed=0, spread=0.05):
    """One query's candidates: ``relevant`` columns clustered tightly around one
    direction, the rest random directions orthogonal to it. ``text_order`` lists
    columns best first; text scores fall linearly along it."""
    generator = torch.Generator().manual_seed(seed)
    num_candidates = len(text_order)
    centre = unit(torch.randn(DIM, generator=generator))
    noise = torch.randn(num_candidates, DIM, generator=generator)
    distractors = noise - (noise @ centre)[:, None] * centre  # orthogonal to the cluster
    embeddings = unit(distractors)
    for column in relevant:
        embeddings[column] = unit(centre + spread * noise[column])
    text_scores = torch.empty(num_candidates)
    text_scores[torch.tensor(text_order)] = torch.linspace(0.35, 0.30, num_candidates)
    return text_scores, embeddings, centre


def top(order, count):
    return set(order[0, :count].tolist())


# 5 relevant images (columns 10..14) and 25 distractors; the text model ranks a
# distractor first and interleaves distractors with the relevant ones.
INTERLEAVED = [0, 10, 1, 11, 2, 12, 3, 13, 4, 14] + list(range(5, 10)) + list(range(15, 30))
RELEVANT = {10, 11, 12, 13, 14}


@pytest.mark.parametrize(
    "config",
    [
        RerankConfig(),
        # each image-space term alone, at the text term's weight (with 5 of the
        # top 10 relevant the evidence is at most 4/9; the text gap to close is 0.31)
        RerankConfig(adapted_weight=1.0, reciprocal_weight=0.0),
        RerankConfig(adapted_weight=0.0, reciprocal_weight=1.0),
    ],
    ids=["default", "adapted-only", "reciprocal-only"],
)
def test_rerank_repairs_interleaved_text_order(config):
    text_scores, embeddings, _ = scene(INTERLEAVED, RELEVANT)
    assert top(text_scores.argsort(descending=True)[None], 5) != RELEVANT
    new_scores, order = rerank(text_scores[None], embeddings[None], None, config)
    assert top(order, 5) == RELEVANT
    assert torch.all(new_scores[:, :-1] >= new_scores[:, 1:])
    assert sorted(order[0].tolist()) == list(range(30))


def test_text_only_weights_keep_the_text_order():
    text_scores, embeddings, _ = scene(INTERLEAVED, RELEVANT)
    _, order = rerank(text_scores[None], embeddings[None], None, RerankConfig(adapted_weight=0.0, reciprocal_weight=0.0))
    assert order[0].tolist() == INTERLEAVED


def test_correct_text_order_stays_correct():
    relevant = {0, 1, 2, 3, 4}
    text_scores, embeddings, _ = scene(list(range(30)), relevant, seed=1)
    new_scores, order = rerank(text_scores[None], embeddings[None])
    assert top(order, 5) == relevant
    assert not torch.isnan(new_scores).any()


def test_flipped_candidate_is_pulled_in_only_with_flips():
    # Columns 10..13 cluster; column 20 shows the same kind of object mirrored:
    # its own embedding is far from the cluster, its flipped embedding inside it.
    text_order = [0, 10, 1, 11, 2, 12, 13, 3, 4, 20] + [c for c in range(30) if c not in {0, 1, 2, 3, 4, 10, 11, 12, 13, 20}]
    text_scores, embeddings, centre = scene(text_order, {10, 11, 12, 13}, seed=2)
    flipped = embeddings.clone()  # a flip leaves most embeddings nearly unchanged
    flipped[20] = unit(centre + 0.05 * unit(torch.ones(DIM)))
    expected = {10, 11, 12, 13, 20}

    _, order_with_flips = rerank(text_scores[None], embeddings[None], flipped[None])
    _, order_without = rerank(text_scores[None], embeddings[None], None)
    assert top(order_with_flips, 5) == expected
    assert 20 not in top(order_without, 5)
    assert top(order_without, 4) == {10, 11, 12, 13}


def test_flip_similarity_is_symmetric_max():
    embeddings = unit(torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(3)))
    flipped = unit(torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(4)))
    similarity = candidate_similarity(embeddings, flipped)[0]
    e, f = embeddings[0], flipped[0]
    expected = torch.stack([e @ e.T, e @ f.T, (e @ f.T).T]).amax(dim=0)
    assert torch.allclose(similarity, expected)
    assert torch.equal(similarity, similarity.T)


def test_batched_equals_one_query_at_a_time():
    generator = torch.Generator().manual_seed(5)
    num_queries, num_candidates = 7, 40
    embeddings = unit(torch.randn(num_queries, num_candidates, DIM, generator=generator))
    # give every query a cluster so the evidence terms are not trivial
    embeddings[:, :8] = unit(embeddings[:, :1] + 0.3 * embeddings[:, :8])
    flipped = unit(embeddings + 0.2 * torch.randn(num_queries, num_candidates, DIM, generator=generator))
    text_scores = torch.rand(num_queries, num_candidates, generator=generator).sort(dim=1, descending=True).values
    config = RerankConfig(neighbours=6)

    for flips in (None, flipped):
        batch_scores, batch_order = rerank(text_scores, embeddings, flips, config)
        for q in range(num_queries):
            one_flips = None if flips is None else flips[q : q + 1]
            scores, order = rerank(text_scores[q : q + 1], embeddings[q : q + 1], one_flips, config)
            assert torch.equal(order, batch_order[q : q + 1])
            assert torch.allclose(scores, batch_scores[q : q + 1], atol=1e-6)
        again_scores, again_order = rerank(text_scores, embeddings, flips, config)
        assert torch.equal(again_order, batch_order) and torch.equal(again_scores, batch_scores)


def test_unsorted_input_gives_the_same_ranking_as_sorted_input():
    text_scores, embeddings, _ = scene(INTERLEAVED, RELEVANT, seed=6)
    permutation = torch.randperm(30, generator=torch.Generator().manual_seed(7))
    scores, order = rerank(text_scores[None], embeddings[None])
    shuffled_scores, shuffled_order = rerank(text_scores[permutation][None], embeddings[permutation][None])
    assert torch.equal(permutation[shuffled_order[0]], order[0])
    assert torch.allclose(shuffled_scores, scores)


@pytest.mark.parametrize("num_candidates", [1, 2, 3, 10, 11])
@pytest.mark.parametrize("with_flips", [False, True])
def test_small_candidate_lists_have_no_nan(num_candidates, with_flips):
    generator = torch.Generator().manual_seed(num_candidates)
    embeddings = unit(torch.randn(3, num_candidates, DIM, generator=generator))
    flipped = unit(torch.randn(3, num_candidates, DIM, generator=generator)) if with_flips else None
    text_scores = torch.rand(3, num_candidates, generator=generator)
    new_scores, order = rerank(text_scores, embeddings, flipped, RerankConfig(neighbours=10))
    assert new_scores.shape == order.shape == (3, num_candidates)
    assert order.dtype == torch.long
    assert torch.isfinite(new_scores).all()
    assert torch.equal(order.sort(dim=1).values, torch.arange(num_candidates).expand(3, -1))


def test_single_candidate():
    new_scores, order = rerank(torch.tensor([[0.3]]), unit(torch.ones(1, 1, 4)), unit(torch.ones(1, 1, 4)))
    assert order.tolist() == [[0]] and torch.isfinite(new_scores).all()


def test_no_queries():
    new_scores, order = rerank(torch.empty(0, 50), torch.empty(0, 50, DIM), torch.empty(0, 50, DIM))
    assert new_scores.shape == order.shape == (0, 50)
    new_scores, order = rerank(torch.empty(0, 0), torch.empty(0, 0, DIM), None)
    assert new_scores.shape == order.shape == (0, 0)


def test_all_equal_scores_and_identical_images_keep_the_original_order():
    text_scores = torch.full((2, 12), 0.25)
    embeddings = unit(torch.ones(2, 12, DIM))
    new_scores, order = rerank(text_scores, embeddings, embeddings.clone())
    assert torch.isfinite(new_scores).all()
    assert torch.equal(order, torch.arange(12).expand(2, -1))


def test_all_equal_text_scores_still_use_the_images():
    # candidates arrive best first (column order = INTERLEAVED), with equal scores
    _, embeddings, _ = scene(INTERLEAVED, RELEVANT, seed=8)
    embeddings = embeddings[torch.tensor(INTERLEAVED)]
    new_scores, order = rerank(torch.full((1, 30), 0.3), embeddings[None])
    assert torch.isfinite(new_scores).all()
    assert top(order, 5) == {1, 3, 5, 7, 9}


def test_opposite_embeddings_cancel_without_nan():
    # the weighted sum of the top candidates is the zero vector
    embeddings = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    new_scores, order = rerank(torch.tensor([[0.5, 0.5]]), embeddings)
    assert torch.isfinite(new_scores).all() and order.tolist() == [[0, 1]]


def test_half_precision_inputs_are_scored_in_float32():
    text_scores, embeddings, _ = scene(INTERLEAVED, RELEVANT)
    new_scores, order = rerank(text_scores[None].half(), embeddings[None].half())
    assert new_scores.dtype == torch.float32
    assert top(order, 5) == RELEVANT


def test_minmax_scale_maps_to_unit_interval_and_constant_rows_to_one():
    scaled = minmax_scale(torch.tensor([[2.0, 4.0, 3.0], [7.0, 7.0, 7.0]]))
    assert scaled.tolist() == [[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    "config",
    [RerankConfig(neighbours=0), RerankConfig(candidates=0), RerankConfig(adapted_weight=-1.0), RerankConfig(text_weight=float("nan"))],
)
def test_invalid_config_is_a_one_line_error(config):
    with pytest.raises(TrafficRetrievalError):
        rerank(torch.rand(1, 5), unit(torch.randn(1, 5, 4)), None, config)


def test_mismatched_shapes_are_a_one_line_error():
    with pytest.raises(TrafficRetrievalError, match="candidate_embeddings"):
        rerank(torch.rand(2, 5), unit(torch.randn(2, 4, 8)))
    with pytest.raises(TrafficRetrievalError, match="flipped"):
        rerank(torch.rand(2, 5), unit(torch.randn(2, 5, 8)), unit(torch.randn(2, 5, 4)))
