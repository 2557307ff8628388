"""Differentiable binary weight masks for any nn.Module (Csordás et al., ICLR 2021, Section 2)."""

from models.masking.config import MaskConfig, ParameterFilter
from models.masking.masked_model import MaskedModel
from models.masking.masks import Masks, applied, iou, keep_probability_histogram, sharing, sharing_per_layer, union
from models.masking.training import continual_logits, make_optimizer, reinitialize_free_weights, training_step

__all__ = [
    "MaskConfig", "ParameterFilter", "MaskedModel", "Masks", "applied", "iou", "keep_probability_histogram",
    "sharing", "sharing_per_layer", "union", "make_optimizer", "training_step", "continual_logits",
    "reinitialize_free_weights",
]
