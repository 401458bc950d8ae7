"""MD / MAD equations, token selection and word pooling against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mmd2v2.data.tokenization import build_word_tokenizer
from mmd2v2.vl.distillation import (
    DistillTerms,
    combine_losses,
    confidence_ratio,
    confidence_weights,
    l1_distance,
    selected_words_l1,
)
from mmd2v2.vl.token_selection import (
    keyword_scores,
    keyword_word_scores,
    random_words,
    selection_scores,
    top_words,
    visual_relevance,
)
from mmd2v2.vl.words import pool_words, tokenize_with_words


def test_l1_is_the_mean_absolute_difference_per_instance_and_the_teacher_gets_no_gradient() -> None:
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 4.0], [1.0, -1.0]], requires_grad=True)
    loss = l1_distance(student, teacher)
    assert loss.tolist() == [1.5, 1.0]  # (|1| + |-2|) / 2, (|-1| + |1|) / 2
    loss.sum().backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ValueError, match="shapes differ"):
        l1_distance(student, teacher[:, :1])


def test_the_papers_literal_l1_is_the_sum_so_w_on_the_mean_is_w_over_d_on_the_sum() -> None:
    student, teacher = torch.tensor([[1.0, 2.0, 0.0, 3.0]]), torch.tensor([[0.0, 4.0, 0.0, 0.0]])
    assert l1_distance(student, teacher, "sum").tolist() == [6.0]  # |1| + |-2| + |0| + |3|
    assert l1_distance(student, teacher, "mean").tolist() == [1.5]  # 6 / 4 dimensions
    _, mean_terms = combine_losses(torch.tensor(0.0), DistillTerms(l1_distance(student, teacher, "mean")), 0.05)
    _, sum_terms = combine_losses(torch.tensor(0.0), DistillTerms(l1_distance(student, teacher, "sum")), 0.05 / 4)
    assert mean_terms["loss"].item() == pytest.approx(sum_terms["loss"].item())  # 0.05 * 1.5 = 0.0125 * 6


def test_selected_words_l1_averages_over_the_selected_words_only() -> None:
    student = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]], [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]]])
    teacher = torch.zeros(2, 3, 2)
    selected = torch.tensor([[True, False, True], [False, False, False]])
    assert selected_words_l1(student, teacher, selected).tolist() == [0.5, 0.0]  # (1 + 0) / 2; nothing selected
    assert selected_words_l1(student, teacher, selected, "sum").tolist() == [1.0, 0.0]  # (2 + 0) / 2


def test_confidence_ratio_and_weights() -> None:
    teacher = torch.tensor([[math.log(4.0), 0.0], [0.0, 0.0]])  # max softmax 0.8 and 0.5
    student = torch.tensor([[0.0, 0.0], [math.log(9.0), 0.0]])  # max softmax 0.5 and 0.9
    assert confidence_ratio(teacher, student).tolist() == pytest.approx([1.6, 0.5 / 0.9])
    assert confidence_weights(teacher, student).tolist() == [1.0, 0.0]
    # r = 1 exactly is not distilled (distil only where r > 1)
    assert confidence_weights(torch.zeros(1, 3), torch.zeros(1, 3)).tolist() == [0.0]


def test_combined_loss_md_and_mad() -> None:
    task = torch.tensor(2.0)
    vision, text, words = torch.tensor([1.5, 1.0]), torch.tensor([0.5, 0.5]), torch.tensor([1.0, 3.0])
    loss, terms = combine_losses(task, DistillTerms(vision, text), 0.05)
    assert float(loss) == pytest.approx(2.0 + 0.05 * (2.0 + 1.5) / 2)  # MD: L_t + w (L_dv + L_dt)
    assert float(terms["distill_vision"]) == 1.25 and float(terms["distill"]) == 1.75
    loss, terms = combine_losses(task, DistillTerms(vision, text, words, torch.tensor([1.0, 0.0])), 0.1)
    assert float(loss) == pytest.approx(2.0 + 0.1 * (3.0 + 0.0) / 2)  # MAD: only the instance with r > 1
    assert float(terms["distilled_fraction"]) == 0.5
    loss, terms = combine_losses(task, DistillTerms(), 0.05)
    assert float(loss) == 2.0 and "distill" not in terms


def test_keyword_scores_are_reciprocal_ranks_of_matching_ngrams() -> None:
    words = ["What", "color", "is", "the", "big", "circle?"]
    assert keyword_word_scores(words, ["circle", "color is", "missing phrase"]) == [0, 0.5, 0.5, 0, 0, 1.0]
    assert keyword_word_scores(words, ["big circle", "circle"]) == [0, 0, 0, 0, 1.0, 1.0]


def test_yake_scores_content_words_above_stopwords() -> None:
    scores = keyword_scores("what color is the large circle at the top left")
    words = ["what", "color", "is", "the", "large", "circle", "at", "the", "top", "left"]
    assert len(scores) == len(words)
    assert scores[words.index("the")] == 0.0 and scores[words.index("circle")] > 0.0
    assert max(scores) == 1.0  # the best keyword's words


def test_selection_scores_sum_l1_normalised_parts_and_pick_the_top_m() -> None:
    relevance = torch.tensor([[0.6, -0.2, 0.2]])
    keywords = torch.tensor([[0.0, 1.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    scores = selection_scores(relevance, keywords, mask)
    assert scores.tolist()[0] == pytest.approx([0.6, -0.2 + 0.5, 0.2 + 0.5])  # |S_vr|_1 = 1, |S_kw|_1 = 2
    assert top_words(scores, mask, 2).tolist() == [[True, False, True]]
    masked = torch.tensor([[True, True, False]])  # padding is neither scored nor chosen
    assert selection_scores(relevance, keywords, masked).tolist()[0] == pytest.approx([0.75, -0.25 + 1.0, 0.0])
    assert top_words(scores, torch.tensor([[True, False, False]]), 2).tolist() == [[True, False, False]]


def test_random_selection_takes_m_valid_words() -> None:
    mask = torch.tensor([[True] * 5 + [False] * 3] * 20)
    chosen = random_words(mask, 2, torch.Generator().manual_seed(0))
    assert chosen.sum(-1).tolist() == [2] * 20 and not bool((chosen & ~mask).any())
    assert len({tuple(row.tolist()) for row in chosen}) > 1


def test_visual_relevance_is_the_cosine_with_the_image_feature() -> None:
    image = torch.tensor([[2.0, 0.0]])
    words = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]]])
    assert visual_relevance(image, words).tolist()[0] == pytest.approx([1.0, 0.0, -1.0, math.sqrt(0.5)])


def test_tokens_map_to_whitespace_words_and_pool_by_mean() -> None:
    tokenizer = build_word_tokenizer(["the", "red", "circle"])
    tokens = tokenize_with_words(tokenizer, ["the red circle?", "red"], 16)
    assert tokens.word_index[0].tolist() == [-1, 0, 1, 2, 2, -1]  # [CLS] the red circle ? [SEP]
    assert tokens.word_index[1].tolist() == [-1, 0, -1, -1, -1, -1]
    assert tokens.num_words == 3
    features = torch.arange(6, dtype=torch.float).view(1, 6, 1).repeat(2, 1, 1)
    pooled, mask = pool_words(features, tokens.word_index, 3)
    assert pooled[0, :, 0].tolist() == [1.0, 2.0, 3.5] and mask.tolist() == [[True] * 3, [True, False, False]]


def test_subword_tokens_map_to_their_whitespace_word_and_truncation_is_counted() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "the": 4, "red": 5, "circ": 6, "##le": 7, "?": 8}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    texts = ["the red circle? red", "  red   circle"]
    tokens = tokenize_with_words(tokenizer, texts, 16)
    assert tokens.word_index.tolist() == [
        [-1, 0, 1, 2, 2, 2, 3, -1],  # [CLS] the red circ ##le ? red [SEP]
        [-1, 0, 1, 1, -1, -1, -1, -1],
    ]  # [CLS] red circ ##le [SEP] + padding
    assert tokens.num_words == 4 and tokens.truncated == 0
    short = tokenize_with_words(tokenizer, texts, 5)
    assert short.word_index.tolist() == [[-1, 0, 1, 2, -1], [-1, 0, 1, 1, -1]]  # [CLS] the red circ [SEP]
    assert short.truncated == 1
