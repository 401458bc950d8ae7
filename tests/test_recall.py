"""Recall@k: a hand-worked example, a brute-force reference, torchmetrics, blocking, validation and the table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate

from mmd2v2.retrieval import first_hit_ranks, format_recall_table, recall_at_k, recall_curve, rsum
from mmd2v2.retrieval.recall import RankStats, hit_probabilities, rank_statistics, tied_counts

# Three images and five captions in 2-D (captions 0, 1 belong to image 0; 2 to image 1; 3, 4 to image 2).
IMAGES = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
TEXTS = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]], dtype=np.float32)
OWNER = np.array([0, 0, 1, 2, 2])


def test_hand_worked_example() -> None:
    # image 0 scores texts [1, 0, .6, .8, -1]: its caption 0 is first → rank 0
    # image 1 scores texts [0, 1, .8, .6, 0]: caption 1 (image 0's) first, its own caption 2 second → rank 1
    # image 2 scores texts [.6, .8, 1, .96, -.6]: caption 2 (image 1's) first, its caption 3 second → rank 1
    # caption 0 scores images [1, 0, .6]: own image 0 first → rank 0; caption 1 → [0, 1, .8]: image 0 third → 2
    # caption 2 → [.6, .8, 1]: image 1 second → 1; caption 3 → [.8, .6, .96]: image 2 first → 0
    # caption 4 → [-1, 0, -.6]: image 2 second → 1
    i2t, t2i = first_hit_ranks(IMAGES, TEXTS, OWNER, max_k=50)  # max_k is clipped to the 3 images / 5 texts
    assert i2t.tolist() == [0, 1, 1] and t2i.tolist() == [0, 2, 1, 0, 1]
    # with max_k=1 every rank beyond the top 1 reads as 1 ("not in the top max_k")
    i2t, t2i = first_hit_ranks(IMAGES, TEXTS, OWNER, max_k=1)
    assert i2t.tolist() == [0, 1, 1] and t2i.tolist() == [0, 1, 1, 0, 1]
    # R@k = share of ranks < k: i2t 1/3, 3/3, 3/3; t2i 2/5, 4/5, 5/5
    recalls = recall_at_k(IMAGES, TEXTS, OWNER, ks=(1, 2, 3))
    assert list(recalls) == ["image_to_text", "text_to_image"] and list(recalls["text_to_image"]) == [
        "R@1",
        "R@2",
        "R@3",
    ]
    assert recalls["image_to_text"] == pytest.approx({"R@1": 100 / 3, "R@2": 100.0, "R@3": 100.0})
    assert recalls["text_to_image"] == pytest.approx({"R@1": 40.0, "R@2": 80.0, "R@3": 100.0})


def _random_set(
    seed: int, images: int = 200, per_image: int = 5, dim: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(images, dim)).astype(np.float32)
    owner = np.repeat(np.arange(images), per_image)
    text = image[owner] + rng.normal(scale=1.5, size=(len(owner), dim)).astype(np.float32)
    return _normalise(image), _normalise(text), owner


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force_ranks(image: np.ndarray, text: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of the first correct item from full score matrices sorted with argsort."""
    scores = image.astype(np.float64) @ text.T.astype(np.float64)
    text_order = np.argsort(-scores, axis=1)
    i2t = np.array([np.flatnonzero(owner[text_order[i]] == i)[0] for i in range(len(image))])
    image_order = np.argsort(-scores.T, axis=1)
    t2i = np.array([np.flatnonzero(image_order[j] == owner[j])[0] for j in range(len(text))])
    return i2t, t2i


def test_matches_brute_force_reference() -> None:
    image, text, owner = _random_set(0)
    ref_i2t, ref_t2i = _brute_force_ranks(image, text, owner)
    i2t, t2i = first_hit_ranks(image, text, owner, max_k=10)
    assert np.array_equal(i2t, np.minimum(ref_i2t, 10)) and np.array_equal(t2i, np.minimum(ref_t2i, 10))
    recalls = recall_at_k(image, text, owner)
    for k in (1, 5, 10):
        assert recalls["image_to_text"][f"R@{k}"] == pytest.approx(100 * np.mean(ref_i2t < k), abs=1e-9)
        assert recalls["text_to_image"][f"R@{k}"] == pytest.approx(100 * np.mean(ref_t2i < k), abs=1e-9)
    assert 0 < recalls["text_to_image"]["R@1"] < 100  # the set is neither trivial nor hopeless


def test_matches_torchmetrics_hit_rate() -> None:
    # RetrievalHitRate@k is 1 for a query if ANY relevant item is in its top k: exactly the protocol's
    # "any caption" definition for image→text (RetrievalRecall would be the fraction of captions found).
    # For text→image each caption has one relevant image, so hit rate and recall coincide.
    image, text, owner = _random_set(1, images=60)
    recalls = recall_at_k(image, text, owner)
    scores = torch.from_numpy(image @ text.T)
    relevant = torch.from_numpy(owner[None, :] == np.arange(len(image))[:, None])
    image_query = torch.arange(len(image))[:, None].expand_as(scores).flatten()
    text_query = torch.arange(len(text))[:, None].expand_as(scores.T).flatten()
    for k in (1, 5, 10):
        i2t = RetrievalHitRate(top_k=k)(scores.flatten(), relevant.flatten(), indexes=image_query).item()
        t2i = RetrievalHitRate(top_k=k)(scores.T.flatten(), relevant.T.flatten(), indexes=text_query).item()
        # torchmetrics averages in float32, so compare fractions rather than percent
        assert recalls["image_to_text"][f"R@{k}"] / 100 == pytest.approx(i2t, abs=1e-6)
        assert recalls["text_to_image"][f"R@{k}"] / 100 == pytest.approx(t2i, abs=1e-6)


def _clip_benchmark_recall(image: np.ndarray, text: np.ndarray, owner: np.ndarray, k: int) -> tuple[float, float]:
    """CLIP_benchmark's definition, written independently: a text x image score matrix, a positive-pair mask,
    torch.topk per query, a hit when the top k holds at least one positive; mean over queries."""
    scores = torch.from_numpy(text) @ torch.from_numpy(image).T  # (texts, images)
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(text)), torch.from_numpy(owner)] = True
    t2i = positive.gather(1, scores.topk(k, dim=1).indices).any(dim=1).float().mean().item()
    i2t = positive.T.gather(1, scores.T.topk(k, dim=1).indices).any(dim=1).float().mean().item()
    return 100 * i2t, 100 * t2i


def test_matches_clip_benchmark_definition_with_ties() -> None:
    # 5 captions per image; the last caption of every image duplicates its fourth, so scores tie exactly.
    # Ties only between captions of one image cannot change a hit, so any tie-breaking must agree.
    image, text, owner = _random_set(3, images=120)
    text = text.reshape(120, 5, -1)
    text[:, 4] = text[:, 3]
    text = np.ascontiguousarray(text.reshape(600, -1))
    recalls = recall_at_k(image, text, owner, ks=(1, 5, 10))
    for k in (1, 5, 10):
        i2t, t2i = _clip_benchmark_recall(image, text, owner, k)
        assert recalls["image_to_text"][f"R@{k}"] == pytest.approx(i2t, abs=1e-4)
        assert recalls["text_to_image"][f"R@{k}"] == pytest.approx(t2i, abs=1e-4)
    assert 0 < recalls["text_to_image"]["R@1"] < 100


def test_uneven_captions_blocking_tensors_and_curve() -> None:
    image, text, owner = _random_set(2, images=50)
    keep = np.random.default_rng(3).random(len(owner)) < 0.6
    keep[np.unique(owner, return_index=True)[1]] = True  # every image keeps at least one caption
    text, owner = text[keep], owner[keep]
    assert len(set(np.bincount(owner).tolist())) > 2  # caption counts really are uneven
    small = first_hit_ranks(image, text, owner, max_k=20, query_block=7)
    large = first_hit_ranks(image, text, owner, max_k=20, query_block=4096)
    from_tensors = first_hit_ranks(torch.from_numpy(image), torch.from_numpy(text), torch.from_numpy(owner), max_k=20)
    ref_i2t, ref_t2i = _brute_force_ranks(image, text, owner)
    for ranks in (small, large, from_tensors):
        assert np.array_equal(ranks[0], np.minimum(ref_i2t, 20)) and np.array_equal(ranks[1], np.minimum(ref_t2i, 20))
    curve = recall_curve(image, text, owner, max_k=20)
    assert curve["k"].tolist() == list(range(1, 21))
    assert np.all(np.diff(curve["image_to_text"]) >= 0) and np.all(np.diff(curve["text_to_image"]) >= 0)
    recalls = recall_at_k(image, text, owner)
    for k in (1, 5, 10):
        assert curve["image_to_text"][k - 1] == recalls["image_to_text"][f"R@{k}"]
        assert curve["text_to_image"][k - 1] == recalls["text_to_image"][f"R@{k}"]


@pytest.mark.parametrize(
    ("images", "texts", "owner", "message"),
    [
        (IMAGES, np.ones((2, 3), np.float32), [0, 1], "embedding dims differ"),
        (IMAGES, TEXTS, [0, 1], "text_image_index has 2 entries for 5 texts"),
        (IMAGES, TEXTS, [0, 0, 1, 2, 3], r"values must lie in \[0, 2\]"),
        (IMAGES, TEXTS, [0, 0, 1, 2, -1], r"values must lie in \[0, 2\]"),
        (IMAGES, TEXTS, [0.0, 0.0, 1.0, 2.0, 2.0], "expected a 1-D integer array"),
        (IMAGES, TEXTS, [0, 0, 1, 1, 1], "every image needs at least one caption"),
        (IMAGES, np.full((5, 2), np.nan, np.float32), OWNER, "text_emb: contains NaN or infinite"),
        (np.full((3, 2), np.inf, np.float32), TEXTS, OWNER, "image_emb: contains NaN or infinite"),
        (IMAGES, np.zeros((0, 2), np.float32), [], "text_emb: expected a non-empty"),
        (np.zeros((0, 2), np.float32), TEXTS, OWNER, "image_emb: expected a non-empty"),
    ],
)
def test_bad_inputs_raise_one_line(images: np.ndarray, texts: np.ndarray, owner: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        recall_at_k(images, texts, np.asarray(owner))
    assert "\n" not in str(error.value)


def test_bad_k_and_block_raise() -> None:
    with pytest.raises(ValueError, match="ks must be a non-empty"):
        recall_at_k(IMAGES, TEXTS, OWNER, ks=())
    with pytest.raises(ValueError, match="max_k and query_block must be >= 1"):
        first_hit_ranks(IMAGES, TEXTS, OWNER, query_block=0)
    with pytest.raises(ValueError, match="max_k and query_block must be >= 1"):
        recall_curve(IMAGES, TEXTS, OWNER, max_k=0)


def test_table_shows_numbers_and_rsum() -> None:
    recalls = recall_at_k(IMAGES, TEXTS, OWNER, ks=(1, 2, 3))
    assert rsum(recalls) == pytest.approx(100 / 3 + 200 + 40 + 80 + 100)
    lines = format_recall_table(recalls).splitlines()
    assert lines[0].split() == ["R@1", "R@2", "R@3"]
    assert lines[1].split() == ["image→text", "33.33", "100.00", "100.00"]
    assert lines[2].split() == ["text→image", "40.00", "80.00", "100.00"]
    assert lines[3].split() == ["rsum", "453.33", "mean", "75.56"]  # 453.33 / 6
    assert len({len(line) for line in lines[:3]}) == 1  # the rows are aligned


# Ties: expected recall under a uniformly random order of exactly tied items (mmd2v2/retrieval/recall.py).


def _enumerated_hit(above: int, wrong: int, right: int, k: int) -> float:
    """Hit probability at k by enumerating every equally likely set of places of the correct items among the tied."""
    from itertools import combinations

    places = list(combinations(range(wrong + right), right))
    return sum(above + min(chosen) < k for chosen in places) / len(places)


def test_hit_probabilities_by_hand_and_by_enumeration() -> None:
    # a = wrong items above, m tied wrong, p tied correct. (0, 2, 2): P(first correct first) = 2/4; in the top 2:
    # 1 - P(both first places wrong) = 1 - (2/4)(1/3) = 5/6; top 3: 1. (1, 2, 2) shifts those by one place.
    stats = RankStats(np.array([0, 1, 0, 3]), np.array([2, 2, 0, 5]), np.array([2, 2, 1, 1]), np.zeros(4, np.int64))
    hits = hit_probabilities(stats, [1, 2, 3])
    assert np.allclose(hits[:3], [[1 / 2, 5 / 6, 1.0], [0.0, 1 / 2, 5 / 6], [1.0, 1.0, 1.0]], atol=1e-12)
    assert hits[3].tolist() == [0.0, 0.0, 0.0]  # three wrong items above: never in the top 3
    for above, wrong, right in [(0, 1, 1), (0, 4, 1), (1, 3, 2), (2, 5, 3), (0, 6, 4), (4, 2, 1)]:
        row = RankStats(*(np.array([v]) for v in (above, wrong, right, 0)))
        expected = [_enumerated_hit(above, wrong, right, k) for k in range(1, 9)]
        assert hit_probabilities(row, range(1, 9))[0].tolist() == pytest.approx(expected, abs=1e-12)


# Image 0 = [1, 0], image 1 = [0, 1]. Caption 0 (image 0) and caption 1 (image 1) are the same text [1, 0];
# caption 2 (image 1) is [0, 1], caption 3 (image 1) is [0.6, 0.8].
TIE_IMAGES = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
TIE_TEXTS = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
TIE_OWNER = np.array([0, 1, 1, 1])


def test_exact_ties_by_hand() -> None:
    # image 0 scores texts [1, 1, 0, .6]: its caption 0 ties with image 1's caption 1 → P(hit@1) = 1/2, then 1
    # image 1 scores texts [0, 0, 1, .8]: its caption 2 first → hit
    # caption 0 scores images [1, 0] → hit; caption 1 (image 1) → [1, 0]: one wrong image above → hit only at 2
    # caption 2 → [0, 1] → hit; caption 3 → [.6, .8] → hit
    recalls = recall_at_k(TIE_IMAGES, TIE_TEXTS, TIE_OWNER, ks=(1, 2))
    assert recalls["image_to_text"] == pytest.approx({"R@1": 75.0, "R@2": 100.0})
    assert recalls["text_to_image"] == pytest.approx({"R@1": 75.0, "R@2": 100.0})
    i2t, t2i = rank_statistics(TIE_IMAGES, TIE_TEXTS, TIE_OWNER)
    assert i2t.above.tolist() == [0, 0] and i2t.tied_wrong.tolist() == [1, 0] and i2t.tied_right.tolist() == [1, 1]
    assert t2i.above.tolist() == [0, 1, 0, 0] and t2i.tied_wrong.tolist() == [0, 0, 0, 0]
    # first_hit_ranks breaks ties by index: caption 0 (correct) is listed before caption 1 → rank 0
    ranks = first_hit_ranks(TIE_IMAGES, TIE_TEXTS, TIE_OWNER)
    assert ranks[0].tolist() == [0, 0] and ranks[1].tolist() == [0, 1, 0, 0]
    swapped = first_hit_ranks(TIE_IMAGES, TIE_TEXTS[[1, 0, 2, 3]], TIE_OWNER[[1, 0, 2, 3]])
    assert swapped[0].tolist() == [1, 0]  # now image 1's identical caption comes first
    assert tied_counts(TIE_IMAGES, TIE_TEXTS, TIE_OWNER) == {"tied_captions": 2, "tied_images": 0}
    report = {**recalls, "num_texts": 4, **tied_counts(TIE_IMAGES, TIE_TEXTS, TIE_OWNER)}
    assert format_recall_table(report).splitlines()[-1].startswith("ties: 2 of 4 captions identical to another image's")


def _with_duplicates(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """200 images with 5 captions each; 120 captions copy a caption of ANOTHER image (exactly, as identical
    captions encoded alike do), and two images are exact copies of each other."""
    image, text, owner = _random_set(seed, images=200)
    rng = np.random.default_rng(seed + 100)
    for target in rng.choice(len(text), size=120, replace=False):
        source = rng.choice(np.flatnonzero(owner != owner[target]))
        text[target] = text[source]
    image[7] = image[3]
    return image, text, owner


def test_ties_are_deterministic_and_between_the_extremes() -> None:
    image, text, owner = _with_duplicates(5)
    recalls = recall_at_k(image, text, owner, ks=(1, 5, 10))
    # independent of the order of the captions and of the blocking
    order = np.random.default_rng(0).permutation(len(text))
    shuffled = recall_at_k(image, text[order], owner[order], ks=(1, 5, 10))
    for direction in recalls:
        assert shuffled[direction] == pytest.approx(recalls[direction], abs=1e-9)
    small_blocks = rank_statistics(image, text, owner, query_block=3)
    for got, want in zip(small_blocks, rank_statistics(image, text, owner)):
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
    # between the pessimistic (every tie lost) and optimistic (every tie won) brute-force rankings
    scores = image.astype(np.float64) @ text.T.astype(np.float64)
    right = owner[None, :] == np.arange(len(image))[:, None]
    best = np.where(right, scores, -np.inf).max(axis=1, keepdims=True)
    optimistic = (~right & (scores > best)).sum(axis=1)
    pessimistic = optimistic + (~right & (scores == best)).sum(axis=1)
    assert (pessimistic > optimistic).sum() > 10  # the duplicates really tie
    for k in (1, 5, 10):
        assert 100 * np.mean(pessimistic < k) <= recalls["image_to_text"][f"R@{k}"] <= 100 * np.mean(optimistic < k)
    assert 100 * np.mean(pessimistic < 1) < recalls["image_to_text"]["R@1"] < 100 * np.mean(optimistic < 1)
    counts = tied_counts(image, text, owner)
    assert counts["tied_images"] == 2 and 200 <= counts["tied_captions"] <= 240  # each copy and (usually) its source
    i2t, t2i = rank_statistics(image, text, owner)
    assert t2i.tied_wrong[owner == 3].tolist() == [1] * 5 and t2i.tied_wrong[owner == 7].tolist() == [1] * 5
    assert np.array_equal(i2t.above, optimistic) and np.array_equal(i2t.above + i2t.tied_wrong, pessimistic)


def test_no_ties_keep_the_plain_definition() -> None:
    image, text, owner = _random_set(6, images=80)
    i2t, t2i = rank_statistics(image, text, owner)
    assert not i2t.tied_wrong.any() and not t2i.tied_wrong.any()
    assert tied_counts(image, text, owner) == {"tied_captions": 0, "tied_images": 0}
    recalls = recall_at_k(image, text, owner, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert recalls["image_to_text"][f"R@{k}"] == pytest.approx(100 * np.mean(i2t.index_rank < k), abs=1e-12)
        assert recalls["text_to_image"][f"R@{k}"] == pytest.approx(100 * np.mean(t2i.index_rank < k), abs=1e-12)
