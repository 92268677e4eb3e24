import torch

from traffic_retrieval.retrieval.rank import topk_similar
from traffic_retrieval.retrieval.search import topk_by_category
from traffic_retrieval.train.losses import clip_loss, multi_positive_loss


def normalized(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)


def test_blockwise_topk_equals_full_ranking():
    queries, gallery = normalized(37, 16, seed=1), normalized(501, 16, seed=2)
    scores, indices = topk_similar(queries, gallery, k=10, query_block=8, gallery_block=64)
    full_scores, full_indices = (queries @ gallery.T).topk(10, dim=1)
    assert torch.equal(indices, full_indices)
    assert torch.allclose(scores, full_scores, atol=1e-6)


def test_topk_with_fewer_gallery_images_than_k_and_ties_by_index():
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    scores, indices = topk_similar(torch.tensor([[1.0, 0.0]]), gallery, k=10, gallery_block=1)
    assert indices.tolist() == [[0, 1, 2]] and scores.shape == (1, 3)


def test_topk_by_category_ranks_only_within_the_routed_category():
    gallery = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    gallery = torch.nn.functional.normalize(gallery, dim=-1)
    categories = ["vehicle", "pedestrian", "pedestrian", "vehicle"]
    results = topk_by_category(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), ["pedestrian", "vehicle"], gallery, categories, k=10)
    assert [i for i, _ in results[0]] == [1, 2]
    assert [i for i, _ in results[1]] == [0, 3]


def test_multi_positive_equals_clip_loss_when_all_attrs_differ():
    image, text = normalized(8, 16, seed=3), normalized(8, 16, seed=4)
    scale = torch.tensor(10.0)
    assert torch.allclose(multi_positive_loss(image, text, scale, torch.arange(8)), clip_loss(image, text, scale))


def test_multi_positive_prefers_equal_attr_images_together_clip_prefers_them_apart():
    # Two captions of one ATTR (texts 0, 1) and one of another (text 2). "apart": each image
    # sits on its own caption; "together": images 0 and 1 both sit between the two captions.
    # The CLIP loss calls image 1 a negative of text 0 and prefers apart; the multi-positive
    # loss treats both as positives and prefers together.
    unit = lambda rows: torch.nn.functional.normalize(torch.tensor(rows), dim=-1)
    texts = unit([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    apart = texts.clone()
    middle = unit([[0.8, 0.4, 0.0]])[0]
    together = torch.stack([middle, middle, texts[2]])
    scale, attrs = torch.tensor(20.0), torch.tensor([0, 0, 1])
    assert clip_loss(apart, texts, scale) < clip_loss(together, texts, scale)
    assert multi_positive_loss(together, texts, scale, attrs) < multi_positive_loss(apart, texts, scale, attrs)
