"""The seed's (A3R's) adaption re-ranking: ``rerank_a3r`` and ``rerank``'s dispatch to it (docs/rerank.md)."""

import math

import pytest
import torch

from traffic_retrieval.config import config_from_dict
from traffic_retrieval.errors import TrafficRetrievalError
from traffic_retrieval.retrieval.rerank import (RerankConfig, a3r_adapted_query, flip_max_similarity, reciprocal_features, rerank, rerank_a3r,
                                                rerank_hits)

DIM = 32


def unit(vectors):
    return torch.nn.functional.normalize(vectors, dim=-1)


def cluster_scene(num_candidates=20, cluster_ranks=(0, 2, 4, 6, 8, 10), seed=0):
    """One query's candidates in text order (column j has text rank j + 1): the columns in
    ``cluster_ranks`` are near-identical images of the true label, the rest random
    directions orthogonal to the cluster."""
    generator = torch.Generator().manual_seed(seed)
    centre = unit(torch.randn(DIM, generator=generator))
    noise = torch.randn(num_candidates, DIM, generator=generator)
    embeddings = unit(noise - (noise @ centre)[:, None] * centre)
    for column in cluster_ranks:
        embeddings[column] = unit(centre + 0.02 * noise[column])
    text_scores = torch.linspace(0.35, 0.30, num_candidates)
    return text_scores, embeddings, centre


def test_cluster_ranked_1_3_5_7_9_11_fills_the_top_6():
    cluster = {0, 2, 4, 6, 8, 10}
    text_scores, embeddings, _ = cluster_scene()
    new_scores, order = rerank_a3r(text_scores[None], embeddings[None])
    assert set(order[0, :6].tolist()) == cluster
    assert torch.all(new_scores[:, :-1] >= new_scores[:, 1:])
    assert sorted(order[0].tolist()) == list(range(20))


def test_cluster_is_found_in_shuffled_columns_too():
    text_scores, embeddings, _ = cluster_scene(seed=1)
    permutation = torch.randperm(20, generator=torch.Generator().manual_seed(2))
    scores, order = rerank_a3r(text_scores[None], embeddings[None])
    shuffled_scores, shuffled_order = rerank_a3r(text_scores[permutation][None], embeddings[permutation][None])
    assert torch.equal(permutation[shuffled_order[0]], order[0])
    assert torch.allclose(shuffled_scores, scores)


def test_adapted_query_of_identical_embeddings_is_their_weighted_mean_direction():
    direction = unit(torch.randn(DIM, generator=torch.Generator().manual_seed(3)))
    embeddings = direction.expand(1, 12, DIM).clone()
    embeddings[0, 10:] = -direction  # outside the top k = 10: no influence
    text_scores = torch.linspace(0.4, 0.2, 12)[None]
    adapted = a3r_adapted_query(text_scores, embeddings, neighbours=10)
    weighted_mean = unit((text_scores[0, :10, None] * embeddings[0, :10]).sum(dim=0))
    assert torch.allclose(adapted[0], weighted_mean, atol=1e-6)
    assert torch.allclose(adapted[0], direction, atol=1e-6)


def test_adapted_query_is_the_uncentred_leading_singular_vector_turned_towards_the_weighted_mean():
    generator = torch.Generator().manual_seed(4)
    embeddings = unit(torch.randn(5, 10, DIM, generator=generator) + 2.0 * unit(torch.randn(5, 1, DIM, generator=generator)))
    text_scores = torch.rand(5, 10, generator=generator).sort(dim=1, descending=True).values
    adapted = a3r_adapted_query(text_scores, embeddings, neighbours=10)
    weights = (text_scores - text_scores.amin(1, keepdim=True)) / (text_scores.amax(1, keepdim=True) - text_scores.amin(1, keepdim=True))
    weighted = weights[..., None] * embeddings
    leading = torch.linalg.svd(weighted.double(), full_matrices=False).Vh[:, 0].float()
    assert torch.allclose((adapted * leading).sum(-1).abs(), torch.ones(5), atol=1e-5)
    assert torch.all((adapted * weighted.sum(1)).sum(-1) >= 0)
    assert torch.allclose(adapted.norm(dim=-1), torch.ones(5), atol=1e-6)


def test_sign_follows_the_query_embedding_when_given():
    generator = torch.Generator().manual_seed(5)
    embeddings = unit(torch.randn(1, 10, DIM, generator=generator) + 2.0 * unit(torch.randn(DIM, generator=generator)))
    text_scores = torch.linspace(0.4, 0.3, 10)[None]
    without_query = a3r_adapted_query(text_scores, embeddings, neighbours=10)
    assert torch.equal(a3r_adapted_query(text_scores, embeddings, neighbours=10, query_embeddings=without_query), without_query)
    against = -without_query + 0.1 * unit(torch.randn(1, DIM, generator=generator))
    turned = a3r_adapted_query(text_scores, embeddings, neighbours=10, query_embeddings=against)
    assert torch.allclose(turned, -without_query)
    assert (turned * against).sum() >= 0


def test_query_embeddings_change_the_ranking_only_through_the_sign():
    text_scores, embeddings, centre = cluster_scene(seed=6)
    towards = rerank_a3r(text_scores[None], embeddings[None], query_embeddings=centre[None])
    default = rerank_a3r(text_scores[None], embeddings[None])
    assert torch.equal(towards[1], default[1]) and torch.allclose(towards[0], default[0])
    _, away_order = rerank_a3r(text_scores[None], embeddings[None], query_embeddings=-centre[None])
    assert set(away_order[0, -6:].tolist()) == {0, 2, 4, 6, 8, 10}  # the cluster now points away from q'


def test_flip_max_similarity():
    query = unit(torch.randn(2, DIM, generator=torch.Generator().manual_seed(7)))
    embeddings = unit(torch.randn(2, 4, DIM, generator=torch.Generator().manual_seed(8)))
    flipped = embeddings.clone()
    flipped[:, 1] = query
    assert torch.allclose(flip_max_similarity(query, embeddings, flipped)[:, 1], torch.ones(2))
    plain = torch.einsum("qd,qnd->qn", query, embeddings)
    assert torch.equal(flip_max_similarity(query, embeddings, None), plain)


def test_candidate_whose_flip_is_the_adapted_query_scores_cosine_one():
    direction = unit(torch.randn(DIM, generator=torch.Generator().manual_seed(9)))
    other = unit(torch.randn(DIM, generator=torch.Generator().manual_seed(10)))
    other = unit(other - (other @ direction) * direction)
    embeddings = torch.stack([direction] * 10 + [other])[None]  # q' = direction
    flipped = embeddings.clone()
    flipped[0, 10] = direction  # the mirrored candidate 10 looks like the others
    text_scores = torch.linspace(0.4, 0.3, 11)[None]
    features = reciprocal_features(embeddings, flipped, 10)
    new_scores, order = rerank_a3r(text_scores, embeddings, flipped)
    expected = 1.0 - (1.0 - features[0, 10] @ direction)
    assert math.isclose(new_scores[0, order[0].tolist().index(10)].item(), expected.item(), abs_tol=1e-5)
    without_flips, order_without = rerank_a3r(text_scores, embeddings, None)
    assert order_without[0, -1].item() == 10 and without_flips[0, -1] < 0


def test_reciprocal_features_by_hand():
    e0, e1, e2, e3 = torch.eye(3)[0], torch.tensor([0.8, 0.6, 0.0]), torch.eye(3)[1], torch.eye(3)[2]
    embeddings = torch.stack([e0, e1, e2, e3])[None]
    # k = 1: NN(0) = 1, NN(1) = 0, NN(2) = 1, NN(3) = 0 (a tie, lowest column): only 0 and 1 are reciprocal
    expected = unit(torch.stack([math.e * e0 + math.exp(0.8) * e1, math.exp(0.8) * e0 + math.e * e1, e2, e3]))
    assert torch.allclose(reciprocal_features(embeddings, None, 1)[0], expected, atol=1e-6)
    # k = 2: NN(0) = {1, 2}, NN(1) = {0, 2}, NN(2) = {1, 0}, NN(3) = {0, 1}: 0, 1 and 2 are mutually reciprocal, 3 is alone
    expected = unit(torch.stack([math.e * e0 + math.exp(0.8) * e1 + e2,
                                 math.exp(0.8) * e0 + math.e * e1 + math.exp(0.6) * e2,
                                 e0 + math.exp(0.6) * e1 + math.e * e2,
                                 e3]))
    assert torch.allclose(reciprocal_features(embeddings, None, 2)[0], expected, atol=1e-6)


def test_batched_equals_one_query_at_a_time_and_is_deterministic():
    generator = torch.Generator().manual_seed(11)
    num_queries, num_candidates = 7, 40
    embeddings = unit(torch.randn(num_queries, num_candidates, DIM, generator=generator))
    embeddings[:, :8] = unit(embeddings[:, :1] + 0.3 * embeddings[:, :8])
    flipped = unit(embeddings + 0.2 * torch.randn(num_queries, num_candidates, DIM, generator=generator))
    queries = unit(torch.randn(num_queries, DIM, generator=generator))
    text_scores = torch.rand(num_queries, num_candidates, generator=generator)
    for flips in (None, flipped):
        for query_embeddings in (None, queries):
            batch_scores, batch_order = rerank_a3r(text_scores, embeddings, flips, 6, query_embeddings)
            for q in range(num_queries):
                one = slice(q, q + 1)
                scores, order = rerank_a3r(text_scores[one], embeddings[one], None if flips is None else flips[one], 6,
                                           None if query_embeddings is None else query_embeddings[one])
                assert torch.equal(order, batch_order[one])
                assert torch.allclose(scores, batch_scores[one], atol=1e-6)
            again_scores, again_order = rerank_a3r(text_scores, embeddings, flips, 6, query_embeddings)
            assert torch.equal(again_order, batch_order) and torch.equal(again_scores, batch_scores)


@pytest.mark.parametrize("num_candidates", [1, 2, 3, 10, 11])
@pytest.mark.parametrize("with_flips", [False, True])
def test_small_candidate_lists_have_no_nan(num_candidates, with_flips):
    generator = torch.Generator().manual_seed(num_candidates)
    embeddings = unit(torch.randn(3, num_candidates, DIM, generator=generator))
    flipped = unit(torch.randn(3, num_candidates, DIM, generator=generator)) if with_flips else None
    new_scores, order = rerank_a3r(torch.rand(3, num_candidates, generator=generator), embeddings, flipped)
    assert new_scores.shape == order.shape == (3, num_candidates) and order.dtype == torch.long
    assert torch.isfinite(new_scores).all()
    assert torch.equal(order.sort(dim=1).values, torch.arange(num_candidates).expand(3, -1))


def test_single_candidate_scores_one():
    new_scores, order = rerank_a3r(torch.tensor([[0.3]]), unit(torch.ones(1, 1, 4)), unit(torch.ones(1, 1, 4)))
    assert order.tolist() == [[0]] and torch.allclose(new_scores, torch.ones(1, 1))


def test_no_queries_or_no_candidates():
    new_scores, order = rerank_a3r(torch.empty(0, 50), torch.empty(0, 50, DIM), torch.empty(0, 50, DIM), query_embeddings=torch.empty(0, DIM))
    assert new_scores.shape == order.shape == (0, 50) and order.dtype == torch.long
    new_scores, order = rerank_a3r(torch.empty(2, 0), torch.empty(2, 0, DIM))
    assert new_scores.shape == order.shape == (2, 0)


def test_equal_scores_and_identical_images_keep_the_original_order():
    embeddings = unit(torch.ones(2, 12, DIM))
    new_scores, order = rerank_a3r(torch.full((2, 12), 0.25), embeddings, embeddings.clone())
    assert torch.isfinite(new_scores).all()
    assert torch.equal(order, torch.arange(12).expand(2, -1))


def test_zero_weighted_top_candidates_give_finite_scores():
    # the top candidates cancel: the weighted matrix has no direction
    new_scores, order = rerank_a3r(torch.tensor([[0.5, 0.5]]), torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]]))
    assert torch.isfinite(new_scores).all() and sorted(order[0].tolist()) == [0, 1]


@pytest.mark.parametrize("dtype, expected", [(torch.float16, torch.float32), (torch.float64, torch.float64)])
def test_working_dtype(dtype, expected):
    text_scores, embeddings, _ = cluster_scene(seed=12)
    new_scores, order = rerank_a3r(text_scores[None].to(dtype), embeddings[None].to(dtype))
    assert new_scores.dtype == expected
    assert set(order[0, :6].tolist()) == {0, 2, 4, 6, 8, 10}


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(TrafficRetrievalError, match="candidate_embeddings"):
        rerank_a3r(torch.rand(2, 5), unit(torch.randn(2, 4, 8)))
    with pytest.raises(TrafficRetrievalError, match="flipped"):
        rerank_a3r(torch.rand(2, 5), unit(torch.randn(2, 5, 8)), unit(torch.randn(2, 5, 4)))
    with pytest.raises(TrafficRetrievalError, match="query_embeddings"):
        rerank_a3r(torch.rand(2, 5), unit(torch.randn(2, 5, 8)), query_embeddings=torch.randn(2, 7))
    with pytest.raises(TrafficRetrievalError, match="neighbours"):
        rerank_a3r(torch.rand(2, 5), unit(torch.randn(2, 5, 8)), neighbours=0)


def test_rerank_dispatches_on_the_method():
    generator = torch.Generator().manual_seed(13)
    embeddings = unit(torch.randn(3, 20, DIM, generator=generator))
    flipped = unit(torch.randn(3, 20, DIM, generator=generator))
    queries = unit(torch.randn(3, DIM, generator=generator))
    text_scores = torch.rand(3, 20, generator=generator)
    a3r = rerank(text_scores, embeddings, flipped, RerankConfig(method="a3r", neighbours=4), query_embeddings=queries)
    direct = rerank_a3r(text_scores, embeddings, flipped, 4, queries)
    assert torch.equal(a3r[0], direct[0]) and torch.equal(a3r[1], direct[1])
    ours = rerank(text_scores, embeddings, flipped, RerankConfig(neighbours=4), query_embeddings=queries)
    assert torch.equal(ours[1], rerank(text_scores, embeddings, flipped, RerankConfig(neighbours=4))[1])  # ours ignores the queries
    assert not torch.equal(ours[0], a3r[0])


def test_rerank_hits_with_either_method():
    text_scores, embeddings, centre = cluster_scene(seed=14)
    gallery_rows = torch.arange(100, 120)
    gallery = torch.zeros(120, DIM)
    gallery[gallery_rows] = embeddings
    hits = [list(zip(gallery_rows.tolist(), text_scores.tolist())), [(5, 0.9)]]
    queries = torch.stack([centre, centre])
    for method in ("a3r", "ours"):
        reranked = rerank_hits(hits, gallery, None, RerankConfig(method=method), query_embeddings=queries)
        assert len(reranked[0]) == 20 and [row for row, _ in reranked[1]] == [5]
    reranked = rerank_hits(hits, gallery, None, RerankConfig(method="a3r"), query_embeddings=queries)
    assert {row for row, _ in reranked[0][:6]} == {100, 102, 104, 106, 108, 110}
    assert reranked == rerank_hits(hits, gallery, None, RerankConfig(method="a3r"))


def test_method_from_a_dict_and_a_bad_value():
    assert RerankConfig().method == "ours"
    assert config_from_dict(RerankConfig, {"method": "a3r", "neighbours": 5}) == RerankConfig(method="a3r", neighbours=5)
    with pytest.raises(TrafficRetrievalError) as error:
        config_from_dict(RerankConfig, {"method": "pca"})
    assert "\n" not in str(error.value) and "method must be one of ours, a3r" in str(error.value)
    with pytest.raises(TrafficRetrievalError):
        rerank(torch.rand(1, 5), unit(torch.randn(1, 5, 4)), None, RerankConfig(method="pca"))
