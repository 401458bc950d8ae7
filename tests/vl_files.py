"""Small task files in the official VQA v2, SNLI-VE and VCR formats, with their images, for the VL tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def write_image(path: Path, index: int, size: int = 32) -> None:
    """A flat-coloured image (the colour depends on `index`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), COLOURS[index % len(COLOURS)]).save(path)


def write_vqa(
    root: Path, subtype: str, questions: list[dict[str, Any]], annotations: list[dict[str, Any]]
) -> tuple[Path, Path]:
    """VQA v2 questions + annotations JSON, and a COCO-named image per image id."""
    root.mkdir(parents=True, exist_ok=True)
    q_path, a_path = root / f"questions_{subtype}.json", root / f"annotations_{subtype}.json"
    q_path.write_text(
        json.dumps(
            {
                "info": {},
                "task_type": "Open-Ended",
                "data_type": "mscoco",
                "data_subtype": subtype,
                "questions": questions,
            }
        )
    )
    a_path.write_text(
        json.dumps({"info": {}, "data_type": "mscoco", "data_subtype": subtype, "annotations": annotations})
    )
    for image_id in {q["image_id"] for q in questions if isinstance(q.get("image_id"), int)}:
        write_image(root / subtype / f"COCO_{subtype}_{image_id:012d}.jpg", image_id)
    return q_path, a_path


def vqa_annotation(question_id: int, image_id: int, answers: list[str]) -> dict[str, Any]:
    """One VQA annotation with its human answers."""
    return {
        "question_id": question_id,
        "image_id": image_id,
        "question_type": "what",
        "answer_type": "other",
        "multiple_choice_answer": max(set(answers), key=answers.count),
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """JSON lines (a str record is written as is, to make malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def snli_ve_record(image_id: str, hypothesis: str, label: str, pair: str) -> dict[str, Any]:
    """One SNLI-VE line."""
    return {
        "Flickr30K_ID": image_id,
        "captionID": f"{image_id}.jpg#0",
        "pairID": pair,
        "sentence1": "a premise",
        "sentence2": hypothesis,
        "gold_label": label,
        "gold_label_ve": label,
    }


def vcr_record(
    annot: str,
    image: str,
    question: list[Any],
    answers: list[list[Any]],
    rationales: list[list[Any]],
    answer_label: int,
    rationale_label: int,
    objects: list[str] | None = None,
) -> dict[str, Any]:
    """One VCR line."""
    return {
        "movie": "demo_movie",
        "objects": objects or ["person", "person", "dog"],
        "img_fn": image,
        "metadata_fn": image.replace(".jpg", ".json"),
        "question": question,
        "answer_choices": answers,
        "rationale_choices": rationales,
        "answer_label": answer_label,
        "rationale_label": rationale_label,
        "annot_id": annot,
        "question_number": 0,
        "img_id": image,
        "match_fold": "train-0",
    }


def save_tiny_clip(folder: Path, words: list[str], image_size: int = 32, logit_scale: float = 100.0) -> Path:
    """A tiny random transformers CLIPModel (save_pretrained) with a word-level tokenizer whose [SEP] is CLIP's eos."""
    import math

    import torch
    from transformers import CLIPConfig, CLIPModel

    from mmd2v2.data.tokenization import build_word_tokenizer

    tokenizer = build_word_tokenizer(words)
    text = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 48,
        "eos_token_id": tokenizer.sep_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": image_size,
        "patch_size": 8,
    }
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
