"""The losses of one training step: task + (adaptive) multimodal distillation, or stage 1's ITM + MLM + MD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from mmd2v2.vl.batches import VLBatch
from mmd2v2.vl.config import AdaptiveConfig, DistillConfig
from mmd2v2.vl.distillation import DistillTerms, combine_losses, confidence_weights, l1_distance, selected_words_l1
from mmd2v2.vl.student import JointOutput, VLStudent
from mmd2v2.vl.tasks import TaskData
from mmd2v2.vl.teachers import Teachers
from mmd2v2.vl.token_selection import keyword_matrix, random_words, selection_scores, top_words, visual_relevance
from mmd2v2.vl.words import pool_words, tokenize_with_words
from mmd2v2.vl.zero_shot import ZeroShotScorer


class VLObjective:
    """Computes the loss terms of a batch for the configured task, distillation and adaptive finetuning."""

    def __init__(
        self,
        distill: DistillConfig,
        adaptive: AdaptiveConfig,
        task: TaskData,
        student: VLStudent,
        teachers: Teachers,
        scorer: ZeroShotScorer | None,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        seed: int,
    ) -> None:
        self.distill, self.adaptive, self.task = distill, adaptive, task
        self.student, self.teachers, self.scorer = student, teachers, scorer
        self.tokenizer, self.max_length = tokenizer, max_length
        self.generator = torch.Generator().manual_seed(seed)

    def _forward(self, batch: VLBatch) -> JointOutput:
        tokens = batch.tokens
        return self.student(batch.pixel_values, tokens.input_ids, tokens.attention_mask, batch.image_index)

    def task_logits(self, batch: VLBatch, output: JointOutput) -> Tensor:
        """Per-example logits: (B, classes), or (B, 4) choice scores for VCR."""
        logits = self.student.logits(output)
        return logits.view(len(batch.examples), -1) if self.task.texts_per_example > 1 else logits

    def _image_targets(self, batch: VLBatch) -> Tensor:
        assert self.teachers.vision is not None
        return self.teachers.vision.image_features(batch.pixel_values)[batch.image_index]

    def distill_terms(
        self,
        batch: VLBatch,
        output: JointOutput,
        logits: Tensor | None,
        vision: bool,
        text: bool,
        selection: str,
        weighting: bool,
    ) -> DistillTerms:
        """Per-text distillation terms of the switched-on parts (and the confidence weights)."""
        terms = DistillTerms()
        student = self.student
        image_targets = self._image_targets(batch) if vision or selection == "adaptive" else None
        if vision:
            assert student.vision_head is not None and image_targets is not None
            terms.vision = l1_distance(student.vision_head(output.image_token), image_targets, self.distill.l1)
        if text or selection != "none":
            assert self.teachers.text is not None and student.text_head is not None
            num_words = batch.tokens.num_words
            teacher = self.teachers.text.text_features(batch.texts, num_words)
            if text:
                terms.text = l1_distance(
                    student.text_head(output.cls), teacher.cls.to(output.cls.device), self.distill.l1
                )
            if selection != "none":
                words, mask = pool_words(output.text_tokens, batch.tokens.word_index, num_words)
                mask = mask & teacher.word_mask.to(mask.device)
                if selection == "adaptive":
                    assert student.vision_head is not None and image_targets is not None
                    with torch.no_grad():
                        relevance = visual_relevance(image_targets, student.vision_head(words))
                    keywords = keyword_matrix(batch.texts, num_words, self.distill.keyword_ngram).to(mask.device)
                    chosen = top_words(selection_scores(relevance, keywords, mask), mask, self.distill.num_tokens)
                else:
                    chosen = random_words(mask.cpu(), self.distill.num_tokens, self.generator).to(mask.device)
                terms.words = selected_words_l1(
                    student.text_head(words), teacher.words.to(words.device), chosen, self.distill.l1
                )
        if weighting and logits is not None:
            assert self.scorer is not None  # check_teachers refused a config without zero-shot logits
            weights = confidence_weights(self.scorer.logits(batch), logits)
            terms.instance_weight = weights.repeat_interleave(self.task.texts_per_example).to(logits.device)
        return terms

    def task_step(self, batch: VLBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Stage 2 (or plain finetuning): L_task + w * distillation, as configured."""
        output = self._forward(batch)
        logits = self.task_logits(batch, output)
        cfg = self.distill
        terms = self.distill_terms(
            batch, output, logits, cfg.vision, cfg.text, cfg.token_selection, cfg.confidence_weighting
        )
        return combine_losses(self.task.definition.loss(logits, batch.examples), terms, cfg.weight)

    def _paired_batch(self, batch: VLBatch) -> VLBatch:
        """One text per example (VCR: the right choice), for the auxiliary tasks."""
        if self.task.texts_per_example == 1:
            return batch
        texts = [e.texts[e.label] for e in batch.examples]
        tokens = tokenize_with_words(self.tokenizer, texts, self.max_length)
        device = batch.pixel_values.device
        tokens.input_ids, tokens.attention_mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        return VLBatch(batch.examples, batch.pixel_values, texts, torch.arange(len(texts), device=device), tokens, 0)

    def _masked_tokens(self, batch: VLBatch) -> tuple[Tensor, Tensor]:
        """Input ids with a `mlm_probability` share of word tokens masked, and the MLM labels (-100 elsewhere)."""
        ids = batch.tokens.input_ids
        candidates = (batch.tokens.word_index >= 0).to(ids.device)
        draw = torch.rand(ids.shape, generator=self.generator).to(ids.device) < self.adaptive.mlm_probability
        chosen = candidates & draw
        mask_id = (
            self.tokenizer.mask_token_id if self.tokenizer.mask_token_id is not None else self.tokenizer.unk_token_id
        )
        return ids.masked_fill(chosen, int(mask_id)), ids.masked_fill(~chosen, -100)

    def adapt_step(self, batch: VLBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Stage 1: image-text matching + masked language modelling (+ plain MD), on the task's own pairs."""
        student = self.student
        assert student.mlm_head is not None and student.itm_head is not None
        batch = self._paired_batch(batch)
        masked, labels = self._masked_tokens(batch)
        output = student(batch.pixel_values, masked, batch.tokens.attention_mask, batch.image_index)
        mlm_logits = student.mlm_head(output.text_tokens)
        mlm = (
            F.cross_entropy(mlm_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
            if bool((labels != -100).any())
            else mlm_logits.sum() * 0.0
        )
        n = len(batch.texts)
        swap = torch.rand(n, generator=self.generator) < 0.5
        offset = torch.randint(1, max(2, n), (n,), generator=self.generator)
        image_index = torch.where(swap, (torch.arange(n) + offset) % n, torch.arange(n)).to(batch.image_index.device)
        ids = [e.image_id for e in batch.examples]
        matched = torch.tensor([ids[i] == ids[j] for i, j in enumerate(image_index.tolist())], dtype=torch.long)
        itm_output = student(batch.pixel_values, batch.tokens.input_ids, batch.tokens.attention_mask, image_index)
        itm = F.cross_entropy(student.itm_head(itm_output.cls).float(), matched.to(itm_output.cls.device))
        aux = self.adaptive.mlm_weight * mlm + self.adaptive.itm_weight * itm
        on = self.adaptive.distill
        terms = self.distill_terms(
            batch, output, None, on and self.distill.vision, on and self.distill.text, "none", False
        )
        loss, logged = combine_losses(aux, terms, self.distill.weight)
        logged.update({"mlm": mlm.detach(), "itm": itm.detach()})
        logged.pop("task")
        return loss, logged
