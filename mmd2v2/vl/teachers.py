"""Frozen teachers for multimodal distillation: a vision teacher and a text teacher, chosen independently.

kind `hf`: the image teacher of mmd2v2 (BEiT-2 or any Hugging Face image family, its CLS) or any Hugging Face
text encoder family of mmd2v2.models.unimodal (its CLS and per-word features, with its own tokenizer); family
`clip`: a transformers CLIPModel, whose CLIP-V feature is the projected image embedding and CLIP-T feature the
projected eos state (per-word features: the projected token states).
kind `mmd2v2`: a trained MM-D2V2 dual encoder export; its features are its embedding space (the image embedding;
the projected shared-block output of every text token, whose CLS is the text embedding).
Both dual encoders (CLIP, mmd2v2) give zero-shot logits, scale x image-text cosine, for confidence weighting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerBase
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from mmd2v2.config import ConfigError, EncoderConfig, TeacherConfig
from mmd2v2.data.preprocessing import ImagePreprocessor
from mmd2v2.data.tokenization import load_tokenizer
from mmd2v2.errors import UserError
from mmd2v2.models.exported import ExportedModel, load_export, resolve_export
from mmd2v2.models.teacher import ImageTeacher
from mmd2v2.models.unimodal import load_hf_model
from mmd2v2.vl.config import TeachersConfig, TeacherSpec, gives_logits, logits_teacher
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


class FrozenDualEncoder(nn.Module):
    """A frozen dual encoder fed the student's pixels: re-normalises and resizes them to its own preprocessing
    (`student_preprocess` None: it is fed pixels preprocessed its own way)."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int

    def __init__(self, student_preprocess: ImagePreprocessor | None, own: ImagePreprocessor) -> None:
        super().__init__()
        self.preprocess = own
        source = student_preprocess or own
        for name, values in (
            ("in_mean", source.mean_values),
            ("in_std", source.std_values),
            ("own_mean", own.mean_values),
            ("own_std", own.std_values),
        ):
            self.register_buffer(name, torch.tensor(values).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenDualEncoder:
        """A teacher stays in eval mode."""
        return super().train(False)

    def _own_pixels(self, pixel_values: Tensor) -> Tensor:
        """Student-normalised pixels re-normalised (and resized) the way this model expects."""
        pixels = (pixel_values.float() * self.in_std + self.in_mean - self.own_mean) / self.own_std
        size = self.preprocess.size
        if pixels.shape[-1] != size or pixels.shape[-2] != size:
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
        return pixels

    @property
    def dim(self) -> int:
        """Width of the features distilled towards."""
        raise NotImplementedError

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """The image feature distilled towards (B, D)."""
        raise NotImplementedError

    def text_features(self, texts: list[str], num_words: int) -> TextFeatures:
        """The text feature distilled towards and its per-word features."""
        raise NotImplementedError

    @torch.no_grad()
    def similarity(self, pixel_values: Tensor, texts: list[str], image_index: Tensor) -> Tensor:
        """Cosine between text i and image `image_index[i]`: (N,)."""
        images = F.normalize(self.image_features(pixel_values), dim=-1)[image_index]
        return (images * self.text_embeddings(texts)).sum(-1)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> Tensor:
        """L2-normalised text embeddings (N, D)."""
        return F.normalize(self.text_features(texts, 1).cls, dim=-1)


class DualEncoderTeacher(FrozenDualEncoder):
    """An mmd2v2 export as teacher: image embeddings, text token embeddings, image-text similarities."""

    def __init__(self, bundle: ExportedModel, student_preprocess: ImagePreprocessor | None, max_length: int) -> None:
        super().__init__(student_preprocess, bundle.preprocess)
        self.model = _frozen(bundle.model)
        self.tokenizer, self.max_length = bundle.tokenizer, max_length

    @property
    def dim(self) -> int:
        """Width of the embedding space."""
        return self.model.embed_dim

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
        projected = self.model.embed(self.model.text_tokens(ids, mask)[0])
        words, word_mask = pool_words(projected, tokens.word_index, num_words)
        return TextFeatures(projected[:, 0], words, word_mask)


def clip_preprocessing(folder: str | None, image_size: int) -> ImagePreprocessor:
    """CLIP's input normalisation: its processor's mean/std where the folder has one, else OpenAI CLIP's."""
    mean, std = list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)
    if folder is not None:
        from transformers import CLIPImageProcessor  # imported where used: it warns when torchvision is missing

        try:
            processor = CLIPImageProcessor.from_pretrained(folder)
            mean, std = list(processor.image_mean), list(processor.image_std)
        except OSError:  # a folder with the model only
            pass
    return ImagePreprocessor(image_size, mean, std)


class CLIPTeacher(FrozenDualEncoder):
    """A transformers CLIPModel as teacher: CLIP-V (projected image embedding), CLIP-T (projected eos state and
    projected per-word token states, with CLIP's tokenizer) and zero-shot logits."""

    def __init__(
        self, spec: TeacherSpec, key: str, student_preprocess: ImagePreprocessor | None, max_length: int
    ) -> None:
        if spec.pretrained is not None:
            try:
                model = CLIPModel.from_pretrained(spec.pretrained)
            except (OSError, ValueError) as error:
                raise ConfigError(
                    f"config key '{key}.pretrained': cannot load a CLIP model from "
                    f"'{spec.pretrained}' ({str(error).splitlines()[0]})"
                ) from None
        elif spec.config:
            model = CLIPModel(CLIPConfig(**spec.config))
        else:
            raise ConfigError(f"config key '{key}.pretrained': a CLIP teacher needs a CLIPModel folder or hub id")
        super().__init__(student_preprocess, clip_preprocessing(spec.pretrained, model.config.vision_config.image_size))
        self.model = _frozen(model)
        source = spec.tokenizer or spec.pretrained
        if source is None:
            raise ConfigError(
                f"config key '{key}.tokenizer': a randomly initialised CLIP teacher needs a tokenizer folder"
            )
        self.tokenizer = load_tokenizer(source)
        self.max_length = min(max_length, int(model.config.text_config.max_position_embeddings))

    @property
    def dim(self) -> int:
        """Width of CLIP's joint embedding space."""
        return int(self.model.config.projection_dim)

    @torch.no_grad()
    def image_features(self, pixel_values: Tensor) -> Tensor:
        """CLIP-V: the projected image embedding (B, projection_dim)."""
        pooled = self.model.vision_model(pixel_values=self._own_pixels(pixel_values)).pooler_output
        return self.model.visual_projection(pooled).float()

    @torch.no_grad()
    def text_features(self, texts: list[str], num_words: int) -> TextFeatures:
        """CLIP-T: the projected eos state, and the mean projected state of each word's tokens."""
        tokens = tokenize_with_words(self.tokenizer, texts, self.max_length)
        device = next(self.model.parameters()).device
        output = self.model.text_model(
            input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
        )
        projected = self.model.text_projection(output.last_hidden_state).float()
        words, word_mask = pool_words(projected, tokens.word_index, num_words)
        return TextFeatures(self.model.text_projection(output.pooler_output).float(), words, word_mask)


class HFImageTeacher(nn.Module):
    """mmd2v2's frozen image teacher (BEiT-2 or any HF image family): its CLS is the image token feature."""

    def __init__(self, spec: TeacherSpec) -> None:
        super().__init__()
        self.teacher = ImageTeacher(
            TeacherConfig(
                enabled=True, family=spec.family, pretrained=spec.pretrained, config=spec.config, target=spec.target
            )
        )

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
            raise UserError(
                "teachers.text.tokenizer: an hf text teacher without pretrained weights needs a tokenizer folder"
            )
        self.model = _frozen(
            load_hf_model(
                EncoderConfig(family=spec.family, pretrained=spec.pretrained, config=spec.config),
                "text",
                "teachers.text",
            )
        )
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
        hidden = self.model(
            input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
        ).last_hidden_state.float()
        words, word_mask = pool_words(hidden, tokens.word_index, num_words)
        return TextFeatures(hidden[:, 0], words, word_mask)


@dataclass
class Teachers:
    """The configured teachers (None where switched off) and the dual encoder giving zero-shot logits, if needed."""

    vision: FrozenDualEncoder | HFImageTeacher | None
    text: FrozenDualEncoder | HFTextTeacher | None
    dual: FrozenDualEncoder | None


class DualEncoders:
    """Loads each dual-encoder teacher (mmd2v2 export or CLIP) once, however many roles it has."""

    def __init__(self, preprocess: ImagePreprocessor | None, max_length: int) -> None:
        self.preprocess, self.max_length = preprocess, max_length
        self.loaded: dict[str, FrozenDualEncoder] = {}

    def get(self, spec: TeacherSpec, key: str) -> FrozenDualEncoder:
        """The dual encoder of `spec` (`key` names it in errors)."""
        if spec.kind == "mmd2v2":
            if spec.pretrained is None:
                raise ConfigError(f"config key '{key}.pretrained': a teacher of kind mmd2v2 needs an export folder")
            name = f"mmd2v2:{resolve_export(spec.pretrained, f'{key}.pretrained')}"
        else:
            name = f"clip:{spec.pretrained}:{spec.tokenizer}:{sorted(spec.config.items())}"
        if name not in self.loaded:
            self.loaded[name] = (
                CLIPTeacher(spec, key, self.preprocess, self.max_length)
                if spec.kind == "hf"
                else DualEncoderTeacher(
                    load_export(resolve_export(spec.pretrained, f"{key}.pretrained")), self.preprocess, self.max_length
                )
            )
        return self.loaded[name]


def build_teachers(
    cfg: TeachersConfig,
    preprocess: ImagePreprocessor,
    max_length: int,
    need_vision: bool,
    need_text: bool,
    need_logits: bool,
) -> Teachers:
    """Load the teachers that distillation and confidence weighting need (a model in several roles is loaded once)."""
    duals = DualEncoders(preprocess, max_length)
    vision_teacher: FrozenDualEncoder | HFImageTeacher | None = None
    text_teacher: FrozenDualEncoder | HFTextTeacher | None = None
    if need_vision:
        vision_teacher = (
            duals.get(cfg.vision, "teachers.vision") if gives_logits(cfg.vision) else HFImageTeacher(cfg.vision)
        )
    if need_text:
        text_teacher = (
            duals.get(cfg.text, "teachers.text") if gives_logits(cfg.text) else HFTextTeacher(cfg.text, max_length)
        )
    source = logits_teacher(cfg) if need_logits else None
    return Teachers(vision_teacher, text_teacher, duals.get(source[1], source[0]) if source is not None else None)
