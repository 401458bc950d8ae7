"""Tokenizers: the text encoder's own HF tokenizer, or a word-level one built from a closed vocabulary."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mmd2v2.config import Config
from mmd2v2.errors import UserError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def build_word_tokenizer(vocabulary: list[str]) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over `vocabulary` with BERT-style [CLS] ... [SEP] framing."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + sorted(set(vocabulary) - set(SPECIAL_TOKENS)))}
    return _word_tokenizer(vocab)


def unknown_words(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[str]:
    """The words of `texts` that a word-level tokenizer (build_word_tokenizer's) maps to [UNK], sorted; [] for
    subword tokenizers, which have no unknown words to add."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "WordLevel":
        return []
    vocab = tokenizer.get_vocab()
    words = {
        word
        for text in texts
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))
    }
    return sorted(words - set(vocab))


def extend_word_tokenizer(tokenizer: PreTrainedTokenizerBase, words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with `words` appended after the existing ids (which keep their meaning)."""
    vocab = dict(tokenizer.get_vocab())
    for word in words:
        vocab.setdefault(word, len(vocab))
    return _word_tokenizer(vocab)


def _word_tokenizer(vocab: dict[str, int]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load an HF tokenizer from a local folder (or a hub id when online)."""
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load tokenizer '{name_or_path}': {str(error).splitlines()[0]}") from None


def prepare_tokenizer(config: Config, captions: list[str]) -> tuple[PreTrainedTokenizerBase, Config]:
    """The run's tokenizer; a word-level one over the training captions when no tokenizer is given.

    A randomly initialised text encoder is sized to the tokenizer (vocab_size, pad_token_id).
    """
    source = config.data.tokenizer or config.model.text.pretrained
    if not source and not captions:
        raise UserError(
            "data.tokenizer (or model.text.pretrained) must be set: webdataset shards give no caption "
            "list to build a word vocabulary from"
        )
    tokenizer = (
        load_tokenizer(source) if source else build_word_tokenizer([w for c in captions for w in c.lower().split()])
    )
    if config.model.text.pretrained is None:
        text_cfg = dict(config.model.text.config, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        text = dataclasses.replace(config.model.text, config=text_cfg)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, text=text))
    return tokenizer, config
