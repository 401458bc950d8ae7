"""The VL student starting from an export with a word-level (demo) vocabulary learns the task's new words."""

from __future__ import annotations

from pathlib import Path

import torch
from test_index import _export

from mmd2v2.data.tokenization import build_word_tokenizer, extend_word_tokenizer, unknown_words
from mmd2v2.vl.checkpoint import load_vl_model, save_vl_model
from mmd2v2.vl.config import StudentConfig
from mmd2v2.vl.student import VLStudent, build_backbone


def test_extension_keeps_old_ids_and_adds_the_unknown_words() -> None:
    base = build_word_tokenizer(["red", "circle", "top"])
    assert unknown_words(base, ["What colour is the red circle?"]) == ["?", "colour", "is", "the", "what"]
    extended = extend_word_tokenizer(base, ["colour", "what"])
    assert extended("red circle")["input_ids"] == base("red circle")["input_ids"]
    assert extended.unk_token_id not in extended("what colour")["input_ids"] and len(extended) == len(base) + 2


def test_student_vocabulary_grows_and_the_finetuned_model_reloads(tmp_path: Path) -> None:
    export = _export(tmp_path / "export")
    questions = ["what colour is the circle at the top", "how many squares are there"]
    parts = build_backbone(StudentConfig(init_from=str(export)), questions)
    ids = parts.tokenizer(questions[1])["input_ids"]
    assert parts.tokenizer.unk_token_id not in ids
    embeddings = parts.backbone.text_encoder.model.get_input_embeddings()
    assert embeddings.num_embeddings == len(parts.tokenizer)
    student = VLStudent(parts.backbone, 3, 1.0)
    folder = save_vl_model(
        student, parts, tmp_path / "vl", {"name": "snli_ve", "classes": ["a", "b", "c"], "head_hidden_ratio": 1.0}
    )
    loaded, tokenizer, _, _ = load_vl_model(folder)
    assert tokenizer(questions[1])["input_ids"] == ids
    torch.testing.assert_close(loaded.backbone.text_encoder.model.get_input_embeddings().weight, embeddings.weight)
