"""Training-time calibration losses for 2D and 3D multi-class segmentation."""

from calibmonai.losses.ce import CrossEntropyLoss, TargetFormatAdapter
from calibmonai.losses.confidence_penalty import ConfidencePenaltyLoss, LabelSmoothingLoss, mean_class_entropy, uniform_cross_entropy
from calibmonai.losses.fused import FusedTerms, fused_disabled, fused_enabled, fused_softmax_loss, set_fused_enabled
from calibmonai.losses.mbls import MarginLabelSmoothingLoss, margin_penalty
from calibmonai.losses.meep import ErroneousEntropyLoss, erroneous_regularizer
from calibmonai.losses.registry import METHODS, Method, get_loss, loss_parameters
from calibmonai.losses.svls import SpatiallyVaryingLabelSmoothingLoss, svls_kernel, svls_soft_labels

__all__ = [
    "CrossEntropyLoss",
    "TargetFormatAdapter",
    "ConfidencePenaltyLoss",
    "LabelSmoothingLoss",
    "mean_class_entropy",
    "uniform_cross_entropy",
    "FusedTerms",
    "fused_disabled",
    "fused_enabled",
    "fused_softmax_loss",
    "set_fused_enabled",
    "MarginLabelSmoothingLoss",
    "margin_penalty",
    "ErroneousEntropyLoss",
    "erroneous_regularizer",
    "METHODS",
    "Method",
    "get_loss",
    "loss_parameters",
    "SpatiallyVaryingLabelSmoothingLoss",
    "svls_kernel",
    "svls_soft_labels",
]
