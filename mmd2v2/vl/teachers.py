"""Frozen teachers for multimodal distillation: a vision teacher and a text teacher, chosen independently.

kind `hf`: the image teacher of mmd2v2 (BEiT-2 or any Hugging Face image family, its CLS) or any Hugging Face
text encoder family of mmd2v2.models.unimodal (its CLS and per-word features, with its own tokenizer).
kind `mmd2v2`: a trained MM-D2V2 dual encoder export; its features are its embedding space (the image embedding;
the projected shared-block output of every text token, whose CLS is the text embedding), and image-text cosine
similarities give zero-shot logits for confidence weighting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmd2v2.config import EncoderConfig, TeacherConfig
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.tokenization import load_tokenizer
from mmd2v2.models.pretrained import PretrainedMMD2V2, load_pretrained
from mmd2v2.models.teacher import ImageTeacher
from mmd2v2.models.unimodal import load_hf_model
from mmd2v2.vl.config import TeacherSpec
from mmd2v2.vl.student import TEXT, export_folder
from mmd2v2.vl.words import pool_words, tokenize_with_words


@dataclass
class TextFeatures:
    """A text teacher's output: its CLS/eos feature and one feature per whitespace word."""

    cls: Tensor  # (N, D)
    words: Tensor  # (N, W, D)
    word_mask: Tensor  # (N, W) bool


def _frozen(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


class DualEncoderTeacher(nn.Module):
    """An mmd2v2 export as teacher: image embeddings, text token embeddings, image-text similarities."""

    def __init__(self, bundle: PretrainedMMD2V2, student_preprocess: ImagePreprocessor, max_length: int) -> None:
        super().__init__()
        self.model = _frozen(bundle.model)
        self.tokenizer, self.preprocess, self.max_length = bundle.tokenizer, bundle.preprocess, max_length
        self.register_buffer("in_mean", torch.tensor(student_preprocess.mean_values).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_std", torch.tensor(student_preprocess.std_values).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("own_mean", torch.tensor(bundle.preprocess.mean_values).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("own_std", torch.tensor(bundle.preprocess.std_values).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        """Width of the embedding space."""
        return int(self.model.projection.out_features)

    def train(self, mode: bool = True) -> DualEncoderTeacher:
        """A teacher stays in eval mode."""
        return super().train(False)

    def _own_pixels(self, pixel_values: Tensor) -> Tensor:
        """Student-normalised pixels re-normalised (and resized) the way this export expects."""
        pixels = (pixel_values.float() * self.in_std + self.in_mean - self.own_mean) / self.own_std
        size = self.preprocess.size
        if pixels.shape[-1] != size or pixels.shape[-2] != size:
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
        return pixels

    @torch.no_grad()
    def image_features(self, pixel_values: Tensor) -> Tensor:
        """L2-normalised image embeddings (B, D)."""
        return self.model.encode_images(self._own_pixels(pixel_values))

    @torch.no_grad()
    def text_features(self, texts: list[str], num_words: int) -> TextFeatures:
        """Normalised projections of every text token; the CLS row is the text embedding."""
        tokens = tokenize_with_words(self.tokenizer, texts, self.max_length)
        device = next(self.model.parameters()).device
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        hidden = self.model.add_modality(self.model.text_in(self.model.text_encoder(ids, mask)), TEXT)
        projected = F.normalize(self.model.projection(self.model.shared(hidden, mask == 0)), dim=-1)
        words, word_mask = pool_words(projected, tokens.word_index, num_words)
        return TextFeatures(projected[:, 0], words, word_mask)

    @torch.no_grad()
    def similarity(self, pixel_values: Tensor, texts: list[str], image_index: Tensor) -> Tensor:
        """Cosine between text i and image `image_index[i]`: (N,)."""
        images = self.image_features(pixel_values)[image_index]
        return (images * self.text_features(texts, 1).cls).sum(-1)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> Tensor:
        """Text embeddings (N, D)."""
        return self.text_features(texts, 1).cls


class HFImageTeacher(nn.Module):
    """mmd2v2's frozen image teacher (BEiT-2 or any HF image family): its CLS is the image token feature."""

    def __init__(self, spec: TeacherSpec) -> None:
        super().__init__()
        self.teacher = ImageTeacher(TeacherConfig(enabled=True, family=spec.family, pretrained=spec.pretrained,
                                                  config=spec.config, target=spec.target))

    @property
    def dim(self) -> int:
        """Width of the teacher's CLS."""
        return self.teacher.dim

    @torch.no_grad()
    def image_features(self, pixel_values: Tensor) -> Tensor:
        """Teacher CLS (B, D)."""
        return self.teacher(pixel_values)


class HFTextTeacher(nn.Module):
    """A frozen Hugging Face text encoder (BERT, RoBERTa, Data2Vec-text, auto) with its own tokenizer."""

    def __init__(self, spec: TeacherSpec, max_length: int) -> None:
        super().__init__()
        source = spec.tokenizer or spec.pretrained
        if source is None:
            raise ValueError("teachers.text.tokenizer: an hf text teacher without pretrained weights needs a tokenizer folder")
        self.model = _frozen(load_hf_model(EncoderConfig(family=spec.family, pretrained=spec.pretrained,
                                                         config=spec.config), "text", "teachers.text"))
        self.tokenizer, self.max_length = load_tokenizer(source), max_length

    @property
    def dim(self) -> int:
        """Width of the teacher's hidden states."""
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> HFTextTeacher:
        """A teacher stays in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def text_features(self, texts: list[str], num_words: int) -> TextFeatures:
        """The CLS hidden state and mean hidden state of each word's tokens."""
        tokens = tokenize_with_words(self.tokenizer, texts, self.max_length)
        device = next(self.model.parameters()).device
        hidden = self.model(input_ids=tokens.input_ids.to(device),
                            attention_mask=tokens.attention_mask.to(device)).last_hidden_state.float()
        words, word_mask = pool_words(hidden, tokens.word_index, num_words)
        return TextFeatures(hidden[:, 0], words, word_mask)


@dataclass
class Teachers:
    """The configured teachers (None where switched off) and the dual encoder giving zero-shot logits, if any."""

    vision: DualEncoderTeacher | HFImageTeacher | None
    text: DualEncoderTeacher | HFTextTeacher | None
    dual: DualEncoderTeacher | None


def build_teachers(vision: TeacherSpec, text: TeacherSpec, preprocess: ImagePreprocessor, max_length: int,
                   need_vision: bool, need_text: bool) -> Teachers:
    """Load the teachers that distillation needs (an export used for both modalities is loaded once)."""
    loaded: dict[str, DualEncoderTeacher] = {}

    def dual(spec: TeacherSpec, key: str) -> DualEncoderTeacher:
        if spec.pretrained is None:
            raise ValueError(f"{key}.pretrained: a teacher of kind mmd2v2 needs an export folder")
        folder = str(export_folder(spec.pretrained))
        if folder not in loaded:
            loaded[folder] = DualEncoderTeacher(load_pretrained(folder), preprocess, max_length)
        return loaded[folder]

    vision_teacher: DualEncoderTeacher | HFImageTeacher | None = None
    text_teacher: DualEncoderTeacher | HFTextTeacher | None = None
    for spec, key in ((vision, "teachers.vision"), (text, "teachers.text")):
        if spec.kind == "mmd2v2":
            dual(spec, key)
    if need_vision:
        if vision.kind == "none":
            raise ValueError("teachers.vision.kind: vision distillation is on but no vision teacher is set")
        vision_teacher = dual(vision, "teachers.vision") if vision.kind == "mmd2v2" else HFImageTeacher(vision)
    if need_text:
        if text.kind == "none":
            raise ValueError("teachers.text.kind: text distillation is on but no text teacher is set")
        text_teacher = dual(text, "teachers.text") if text.kind == "mmd2v2" else HFTextTeacher(text, max_length)
    return Teachers(vision_teacher, text_teacher, next(iter(loaded.values()), None))
