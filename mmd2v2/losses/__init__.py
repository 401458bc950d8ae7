"""Training losses: contrastive InfoNCE, memory banks, distillation, and the combined objective."""

from mmd2v2.losses.contrastive import (
    ContrastiveLoss,
    LearnableLogitScale,
    excluded_columns,
    keys_with_bank,
    masked_cross_entropy,
)
from mmd2v2.losses.distillation import ContrastiveDistillation, regression_distillation
from mmd2v2.losses.memory_bank import FeatureQueue

__all__ = [
    "ContrastiveDistillation",
    "ContrastiveLoss",
    "FeatureQueue",
    "LearnableLogitScale",
    "keys_with_bank",
    "excluded_columns",
    "masked_cross_entropy",
    "regression_distillation",
]
