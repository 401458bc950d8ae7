"""CLIP as MAD's teachers (CLIP-V, CLIP-T at the eos token, projected) and its zero-shot logits for confidence
weighting, on a tiny random CLIPModel saved with save_pretrained, against transformers' own CLIPModel outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from vl_files import save_tiny_clip

from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.tokenization import load_tokenizer
from mmd2v2.vl.batches import BatchCollator
from mmd2v2.vl.config import TeacherSpec, load_vl_config
from mmd2v2.vl.tasks import TaskData
from mmd2v2.vl.tasks.base import LoadedSplit, VLExample
from mmd2v2.vl.teachers import CLIPTeacher, build_teachers
from mmd2v2.vl.zero_shot import ZeroShotScorer

WORDS = ["what", "color", "is", "the", "square", "red", "green", "blue", "it", "at", "top", "left", "a"]
STUDENT = ImagePreprocessor(16, [0.5] * 3, [0.25] * 3)  # the student's input: another size and normalisation


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), WORDS)


def _clip_pixels(student_pixels: torch.Tensor) -> torch.Tensor:
    """The student's pixels as CLIP's processor would give them: un-normalised, CLIP-normalised, resized to 32."""
    raw = student_pixels * 0.25 + 0.5
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return F.interpolate((raw - mean) / std, size=(32, 32), mode="bicubic", align_corners=False)


def test_clip_v_and_clip_t_features_are_clips_projected_image_and_eos_embeddings(clip_dir: Path) -> None:
    teacher = CLIPTeacher(
        TeacherSpec(kind="hf", family="clip", pretrained=str(clip_dir)), "teachers.vision", STUDENT, 96
    )
    reference = CLIPModel.from_pretrained(str(clip_dir)).eval()
    assert teacher.dim == 16 and teacher.max_length == 48  # CLIP-T reads at most its 48 positions
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = reference.get_image_features(pixel_values=_clip_pixels(pixels)).pooler_output
        assert torch.allclose(teacher.image_features(pixels), expected, atol=1e-5)
        texts = ["what color is the square", "red at top left"]
        tokens = load_tokenizer(clip_dir)(texts, padding=True, return_tensors="pt")
        features = teacher.text_features(texts, 5)
        text = reference.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        assert torch.allclose(features.cls, text.pooler_output, atol=1e-5)
        # the pooled state is the eos ([SEP]) token's: position 6 of text 0 ([CLS] + 5 words), 5 of text 1
        states = reference.text_model(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
        ).last_hidden_state
        eos = reference.text_projection(states[[0, 1], [6, 5]])
        assert torch.allclose(features.cls, eos, atol=1e-5)
        # one word per token here: word w of text 0 is its token w + 1, projected
        assert torch.allclose(features.words[0], reference.text_projection(states[0, 1:6]), atol=1e-5)
        assert features.word_mask.tolist() == [[True] * 5, [True] * 4 + [False]]


def _vcr_task() -> TaskData:
    example = VLExample(
        "a q2a",
        "a",
        "img",
        Path("img.png"),
        tuple(f"what color is the square {c}" for c in ("red", "green", "blue", "it")),
        0,
        mode="q2a",
        prompts=("red", "green", "blue", "it"),
    )
    return TaskData("vcr", LoadedSplit([example], {}), LoadedSplit([example], {}), ["0", "1", "2", "3"], 1, 4)


@pytest.mark.parametrize("prompt", ["ia", "iqa"])
def test_zero_shot_logits_for_confidence_weighting_are_clips_logits_with_ia_or_iqa_prompts(
    clip_dir: Path, prompt: str
) -> None:
    cfg = load_vl_config(
        None,
        [
            "teachers.vision.kind=hf",
            "teachers.vision.family=clip",
            f"teachers.vision.pretrained={clip_dir}",
            "distill.confidence_weighting=true",
            f"teachers.zero_shot_prompt={prompt}",
        ],
    )
    teachers = build_teachers(cfg.teachers, STUDENT, 32, need_vision=True, need_text=False, need_logits=True)
    assert teachers.dual is teachers.vision and isinstance(teachers.dual, CLIPTeacher)  # one CLIP, loaded once
    task = _vcr_task()
    pixels = torch.randn(1, 3, 16, 16)
    batch = BatchCollator(load_tokenizer(clip_dir), 32)([(task.val.examples[0], pixels[0])])
    scorer = ZeroShotScorer(teachers.dual, task, cfg.teachers.zero_shot_logit_scale, prompt)
    texts = ["red", "green", "blue", "it"] if prompt == "ia" else list(task.val.examples[0].texts)
    assert scorer.prompts(batch) == texts
    reference = CLIPModel.from_pretrained(str(clip_dir)).eval()
    tokens = load_tokenizer(clip_dir)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=_clip_pixels(pixels)
        ).logits_per_image  # exp(logit_scale) = 100 x cosine
        assert torch.allclose(scorer.logits(batch), expected, atol=1e-4)


def test_vqa_confidence_logits_come_from_a_clip_zero_shot_teacher_beside_other_teachers(clip_dir: Path) -> None:
    cfg = load_vl_config(
        None,
        [
            "teachers.vision.kind=hf",
            "teachers.vision.family=beit",
            "teachers.zero_shot.kind=hf",
            f"teachers.zero_shot.pretrained={clip_dir}",
            "distill.confidence_weighting=true",
        ],
    )
    teachers = build_teachers(cfg.teachers, STUDENT, 32, need_vision=False, need_text=False, need_logits=True)
    assert isinstance(teachers.dual, CLIPTeacher) and teachers.vision is None
    answers = ["red", "green", "blue"]
    example = VLExample("q", "q", "img", Path("img.png"), ("what color is the square",), 0)
    task = TaskData("vqa", LoadedSplit([example], {}), LoadedSplit([example], {}), answers, 3, 1)
    pixels = torch.randn(1, 3, 16, 16)
    batch = BatchCollator(load_tokenizer(clip_dir), 32)([(example, pixels[0])])
    reference = CLIPModel.from_pretrained(str(clip_dir)).eval()
    tokens = load_tokenizer(clip_dir)(answers, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=_clip_pixels(pixels)
        ).logits_per_image  # the IA prompt: image vs answers
        assert torch.allclose(ZeroShotScorer(teachers.dual, task, 100.0).logits(batch), expected, atol=1e-4)
